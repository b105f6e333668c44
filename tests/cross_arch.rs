//! The foreign-architecture binaries of the plugin bundles (`build-rootfs.sh --arch arm64`,
//! `--arch armv7`: the very files the bundles carry) run for real under Debian's
//! qemu-user-static: `--version`, then the `mount` command against a throwaway OpenSSH server
//! with a write / read / rename / sha256 round trip through FUSE, once with a key and AES-GCM,
//! once with a password and ChaCha20-Poly1305 (aws-lc has per-architecture code for both).
//!
//! FUSE from a qemu-user binary: fuser (no features) opens /dev/fuse and calls mount(2) itself
//! (no fusermount), and qemu-user forwards both the syscall and the /dev/fuse reads and writes
//! to the host kernel unchanged (`strace -f -e trace=mount,execve qemu-aarch64-static ...`
//! shows one `mount(REMOTE, MP, "fuse", MS_NOSUID|MS_NODEV, "fd=12,rootmode=40755,...")` and no
//! execve of fusermount).
//!
//! Skipped when a bundle is missing, unless SSHFS_CROSS=1 (tests/run.sh builds the bundles and
//! sets it), which makes a missing bundle or qemu a failure.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Sshd, TEST_PASSWORD, TEST_USER, TempDir, is_mounted, sha256, write_random_file};

/// A foreign architecture: its bundle directory, its qemu-user binary and ELF machine number.
struct Arch {
    name: &'static str,
    qemu: &'static str,
    elf_machine: u16,
}

const ARM64: Arch = Arch {
    name: "arm64",
    qemu: "qemu-aarch64-static",
    elf_machine: 183, // EM_AARCH64
};
const ARMV7: Arch = Arch {
    name: "armv7",
    qemu: "qemu-arm-static",
    elf_machine: 40, // EM_ARM
};

/// qemu-user runs the whole SSH stack in emulation: allow for it.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(90);

/// The bundle's binary, or None when the test should be skipped (it was never built).
fn bundle_binary(arch: &Arch) -> Option<PathBuf> {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("plugin")
        .join(arch.name)
        .join("rootfs/docker-volume-sshfs");
    let required = std::env::var("SSHFS_CROSS").is_ok_and(|v| v == "1");
    let qemu_found = Command::new(arch.qemu)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    match (bin.exists(), qemu_found) {
        (true, true) => Some(bin),
        _ if required => panic!(
            "SSHFS_CROSS=1 but {} (bundle built: {}) or {} (found: {qemu_found}) is missing: \
             ./build-rootfs.sh --arch {}; apt-get install qemu-user-static",
            bin.display(),
            bin.exists(),
            arch.qemu,
            arch.name
        ),
        _ => {
            eprintln!(
                "skipping: no {} bundle or no {} (./build-rootfs.sh --arch {})",
                arch.name, arch.qemu, arch.name
            );
            None
        }
    }
}

/// e_machine of an ELF file (little-endian: every architecture here is).
fn elf_machine(bin: &Path) -> u16 {
    let head = fs::read(bin).unwrap();
    assert_eq!(
        &head[..4],
        b"\x7fELF",
        "{} is not an ELF file",
        bin.display()
    );
    u16::from_le_bytes([head[18], head[19]])
}

/// The `mount` command of a foreign binary, run under qemu-user. Unmounted on drop.
struct QemuMount {
    dir: TempDir,
    mountpoint: PathBuf,
    child: Option<Child>,
}

impl QemuMount {
    fn start(arch: &Arch, bin: &Path, port: u16, remote: &str, opts: &str, stdin: &str) -> Self {
        let dir = TempDir::new(&format!("qemu-{}", arch.name));
        let mountpoint = dir.path().join("m");
        fs::create_dir(&mountpoint).unwrap();
        let stderr = fs::File::create(dir.path().join("stderr")).unwrap();
        let mut child = Command::new(arch.qemu)
            .arg(bin)
            .args(["mount", "-p", &port.to_string(), "-o", opts, remote])
            .arg(&mountpoint)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", arch.qemu));
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let mut m = QemuMount {
            dir,
            mountpoint,
            child: Some(child),
        };
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        while !is_mounted(&m.mountpoint) {
            if let Some(st) = m.child.as_mut().unwrap().try_wait().unwrap() {
                m.child = None;
                panic!("{} mount exited with {st}: {}", arch.name, m.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "{} mount did not appear within {MOUNT_TIMEOUT:?}: {}",
                arch.name,
                m.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// SIGTERM, as a user's Ctrl-C would: the command unmounts and exits 0.
    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "the mount command did not exit after SIGTERM: {}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "exit {status}: {}", self.stderr());
        assert!(!is_mounted(&self.mountpoint), "still mounted after exit");
    }
}

impl Drop for QemuMount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.mountpoint) {
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Write through the mount, read back, rename, and compare checksums on both sides.
fn round_trip(m: &QemuMount, server: &Path, tag: &str) {
    let big = m.path(&format!("{tag}-big"));
    write_random_file(&big, 0x5EED ^ tag.len() as u64, 3 << 20);
    let sum = sha256(&big);
    assert_eq!(
        sha256(&server.join(format!("{tag}-big"))),
        sum,
        "server copy"
    );
    fs::rename(&big, m.path(&format!("{tag}-renamed"))).unwrap();
    assert!(!server.join(format!("{tag}-big")).exists());
    assert_eq!(sha256(&m.path(&format!("{tag}-renamed"))), sum, "read back");
    assert_eq!(sha256(&server.join(format!("{tag}-renamed"))), sum);

    // And the other way: a file made on the server, read through the mount.
    fs::write(
        server.join(format!("{tag}-from-server")),
        b"made on the server\n",
    )
    .unwrap();
    assert_eq!(
        fs::read(m.path(&format!("{tag}-from-server"))).unwrap(),
        b"made on the server\n"
    );
    fs::create_dir(m.path(&format!("{tag}-dir"))).unwrap();
    fs::write(m.path(&format!("{tag}-dir/small")), b"small").unwrap();
    let mut names: Vec<String> = fs::read_dir(m.path(&format!("{tag}-dir")))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["small"]);
    assert_eq!(
        fs::read(server.join(format!("{tag}-dir/small"))).unwrap(),
        b"small"
    );
}

fn check_arch(arch: &Arch) {
    let Some(bin) = bundle_binary(arch) else {
        return;
    };
    assert_eq!(
        elf_machine(&bin),
        arch.elf_machine,
        "{} is not an {} binary",
        bin.display(),
        arch.name
    );
    let started = Instant::now();
    let out = Command::new(arch.qemu)
        .arg(&bin)
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && version.starts_with("docker-volume-sshfs "),
        "{} --version: {out:?}",
        arch.name
    );
    eprintln!("{}: {version}", arch.name);

    let sshd = Sshd::start();
    let known_hosts = sshd.dir.path().join("known_hosts");
    let key = QemuMount::start(
        arch,
        &bin,
        sshd.port,
        &sshd.remote(""),
        // accept-new records the key; the password mount below then insists on it.
        &format!(
            "IdentityFile={},StrictHostKeyChecking=accept-new,UserKnownHostsFile={},\
             Ciphers=aes256-gcm@openssh.com",
            sshd.key.display(),
            known_hosts.display()
        ),
        "",
    );
    round_trip(&key, &sshd.data, "key");
    key.stop();

    let remote = format!("{TEST_USER}@127.0.0.1:{}", sshd.user_data.display());
    let pw = QemuMount::start(
        arch,
        &bin,
        sshd.port,
        &remote,
        &format!(
            "password_stdin,Ciphers=chacha20-poly1305@openssh.com,StrictHostKeyChecking=yes,UserKnownHostsFile={}",
            known_hosts.display()
        ),
        &format!("{TEST_PASSWORD}\n"),
    );
    round_trip(&pw, &sshd.user_data, "pw");
    pw.stop();
    eprintln!("{}: passed in {:.1?}", arch.name, started.elapsed());
}

#[test]
fn arm64_binary_mounts_under_qemu() {
    check_arch(&ARM64);
}

#[test]
fn armv7_binary_mounts_under_qemu() {
    check_arch(&ARMV7);
}
