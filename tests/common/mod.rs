//! Test harness for the real-filesystem tests: a throwaway OpenSSH server on a loopback port
//! (the settings all test servers share, tests/sshd/sshd_config.common, plus its own port, host
//! key, user keys and password user), mounts made with the built `docker-volume-sshfs mount`
//! command, and the [`Mounted`] fixture most tests start from. All is cleaned up on drop, so a
//! failing test never leaves a running sshd or a dead FUSE mount behind.
//!
//! Needs root, /dev/fuse, /usr/sbin/sshd, ssh-keygen and /usr/lib/openssh/sftp-server.

#![allow(dead_code)] // each test file uses a different part of the harness

pub mod proxy;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use docker_volume_sshfs::mount::mount_table;

/// The built command under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_docker-volume-sshfs");

/// Local account used for password authentication (root logs in with keys).
pub const TEST_USER: &str = "dvstest";
/// Its password, set by [`ensure_test_user`].
pub const TEST_PASSWORD: &str = "dvs-Test-pw-4711";
/// Passphrase of the encrypted user key.
pub const KEY_PASSPHRASE: &str = "correct horse battery";

/// How long a mount may take to appear before the test fails.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);

/// A directory removed (recursively) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = std::env::temp_dir().join(format!(
            "dvs-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Never recurse into a still-mounted FUSE directory (that would delete remote files
        // through the mount, or hang on a dead one).
        if mounts_below(&self.0).is_empty() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Creates the local password-test account once (idempotent across processes and runs).
pub fn ensure_test_user() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let exists = Command::new("id")
            .arg(TEST_USER)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !exists {
            let out = Command::new("useradd")
                .args(["-m", "-s", "/bin/sh", TEST_USER])
                .output()
                .expect("run useradd");
            // 9: the user already exists (another test binary created it meanwhile).
            assert!(
                out.status.success() || out.status.code() == Some(9),
                "useradd {TEST_USER} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut child = Command::new("chpasswd")
            .stdin(Stdio::piped())
            .spawn()
            .expect("run chpasswd");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{TEST_USER}:{TEST_PASSWORD}\n").as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "chpasswd failed");
    });
}

/// uid and gid of [`TEST_USER`].
pub fn test_user_ids() -> (u32, u32) {
    ensure_test_user();
    let u = run(Command::new("id").args(["-u", TEST_USER]));
    let g = run(Command::new("id").args(["-g", TEST_USER]));
    (u.trim().parse().unwrap(), g.trim().parse().unwrap())
}

/// A free TCP port on 127.0.0.1 (free when asked; callers retry if it is taken meanwhile).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A throwaway OpenSSH server. Killed on drop.
pub struct Sshd {
    pub dir: TempDir,
    pub port: u16,
    child: Child,
    /// sshd_config lines added to the shared settings (see [`Sshd::reconfigure`]).
    extra: Vec<String>,
    /// Unencrypted ed25519 user key (in authorized_keys).
    pub key: PathBuf,
    /// Passphrase-protected ed25519 user key (in authorized_keys), see [`KEY_PASSPHRASE`].
    pub encrypted_key: PathBuf,
    /// `SHA256:...` fingerprint of the host key.
    pub host_fingerprint: String,
    /// Root of the files the tests mount (owned by root, mode 0755).
    pub data: PathBuf,
    /// A directory owned by [`TEST_USER`] for password logins.
    pub user_data: PathBuf,
}

impl Sshd {
    pub fn start() -> Sshd {
        ensure_test_user();
        let dir = TempDir::new("sshd");
        let d = dir.path().to_path_buf();
        // Let the test user traverse into its own data directory.
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        let _ = fs::create_dir_all("/run/sshd"); // privilege separation directory

        let host_fingerprint = make_host_key(&d);
        let key = d.join("id_ed25519");
        keygen(&key, "");
        let encrypted_key = d.join("id_ed25519_enc");
        keygen(&encrypted_key, KEY_PASSPHRASE);
        let mut auth = fs::read_to_string(key.with_extension("pub")).unwrap();
        auth.push_str(&fs::read_to_string(d.join("id_ed25519_enc.pub")).unwrap());
        fs::write(d.join("authorized_keys"), auth).unwrap();
        fs::set_permissions(d.join("authorized_keys"), fs::Permissions::from_mode(0o644)).unwrap();

        let data = d.join("data");
        fs::create_dir(&data).unwrap();
        let user_data = d.join("userdata");
        fs::create_dir(&user_data).unwrap();
        let (uid, gid) = test_user_ids();
        std::os::unix::fs::chown(&user_data, Some(uid), Some(gid)).unwrap();

        let mut last_err = String::new();
        for _attempt in 0..10 {
            let port = free_port();
            let log = fs::File::create(d.join("sshd.log")).unwrap();
            let mut child = spawn_sshd(&d, port, &[], log);
            match wait_for_banner(port, &mut child) {
                Ok(()) => {
                    return Sshd {
                        dir,
                        port,
                        child,
                        extra: Vec::new(),
                        key,
                        encrypted_key,
                        host_fingerprint,
                        data,
                        user_data,
                    };
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_err = format!(
                        "{e}; sshd log: {}",
                        fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
                    );
                }
            }
        }
        panic!("could not start sshd: {last_err}");
    }

    /// `root@127.0.0.1:<data>/<sub>`.
    pub fn remote(&self, sub: &str) -> String {
        format!("root@127.0.0.1:{}", self.data.join(sub).display())
    }

    /// The options every key-authenticated root mount uses: the plain key, host key accepted
    /// into a known_hosts file of this server's own (never the user's).
    pub fn key_options(&self) -> String {
        format!(
            "IdentityFile={},StrictHostKeyChecking=no,UserKnownHostsFile={}",
            self.key.display(),
            self.dir.path().join("known_hosts").display()
        )
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The settings every test server shares (also the Docker test server's and the benchmark's).
const SSHD_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sshd/sshd_config.common");

/// Runs /usr/sbin/sshd in the foreground on 127.0.0.1:`port` with the shared settings plus this
/// server's own files in `d` (host key, pid file, authorized_keys), logging to `log`.
fn spawn_sshd(d: &Path, port: u16, extra: &[String], log: fs::File) -> Child {
    let own = [
        format!("Port={port}"),
        "ListenAddress=127.0.0.1".to_string(),
        format!("HostKey={}", host_key_path(d).display()),
        format!("PidFile={}", d.join("sshd.pid").display()),
        format!("AuthorizedKeysFile={}", d.join("authorized_keys").display()),
        "Subsystem=sftp /usr/lib/openssh/sftp-server".to_string(),
    ];
    let mut cmd = Command::new("/usr/sbin/sshd");
    cmd.args(["-D", "-e", "-f", SSHD_CONFIG]);
    for o in own.iter().chain(extra) {
        cmd.arg("-o").arg(o);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start /usr/sbin/sshd")
}

/// The host key of the server whose files are in `d`.
fn host_key_path(d: &Path) -> PathBuf {
    d.join("ssh_host_ed25519_key")
}

/// Generates the host key in `d` and returns its `SHA256:...` fingerprint.
fn make_host_key(d: &Path) -> String {
    let hostkey = host_key_path(d);
    keygen(&hostkey, "");
    let fp = run(Command::new("ssh-keygen").arg("-lf").arg(&hostkey));
    fp.split_whitespace()
        .nth(1)
        .expect("ssh-keygen -lf output")
        .to_string()
}

fn keygen(path: &Path, passphrase: &str) {
    run(Command::new("ssh-keygen")
        .args([
            "-q", "-t", "ed25519", "-N", passphrase, "-C", "dvs-test", "-f",
        ])
        .arg(path));
}

fn wait_for_banner(port: u16, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait().unwrap() {
            return Err(format!("sshd exited with {st}"));
        }
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 64];
            if let Ok(n) = s.read(&mut buf)
                && buf[..n].starts_with(b"SSH-2.0")
            {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    Err("sshd did not answer with an SSH banner within 10 s".into())
}

/// Mount points (from /proc/self/mountinfo) equal to or below `dir`.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    mount_table()
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// The filesystem type of the mount exactly at `dir`, if any.
pub fn mount_fstype(dir: &Path) -> Option<String> {
    mount_table()
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.mount_point == dir)
        .map(|m| m.fs_type)
}

pub fn is_mounted(dir: &Path) -> bool {
    mount_fstype(dir).is_some()
}

/// `DVS_TEST_MOUNT_IMPL=sshfs` runs the mounting tests against the C sshfs instead of ours
/// (a reference run: a test that fails there too tests something sshfs does not do either).
/// `SSHFS_TEST_WRITEBACK=1`: the filesystem tests mount in write-back mode (each mount with
/// its own journal), and look at the server only once the changes made through it are there.
pub fn writeback_tests() -> bool {
    std::env::var_os("SSHFS_TEST_WRITEBACK").is_some_and(|v| v == "1")
}

pub fn reference_sshfs() -> bool {
    std::env::var("DVS_TEST_MOUNT_IMPL").is_ok_and(|v| v == "sshfs")
}

/// A running `docker-volume-sshfs mount` process and its mount point.
pub struct Mount {
    pub dir: TempDir,
    pub mountpoint: PathBuf,
    child: Option<Child>,
    stderr_path: PathBuf,
}

impl Mount {
    /// Mounts `remote` with `-p PORT -o OPTIONS`; panics (with the command's stderr) if the mount
    /// does not appear within [`MOUNT_TIMEOUT`].
    pub fn new(sshd: &Sshd, remote: &str, options: &str) -> Mount {
        Self::with_stdin(sshd.port, remote, options, None)
    }

    /// Like [`Mount::new`] with the standard key options plus `extra` (may be empty).
    pub fn root(sshd: &Sshd, sub: &str, extra: &str) -> Mount {
        let mut o = sshd.key_options();
        if !extra.is_empty() {
            o.push(',');
            o.push_str(extra);
        }
        Self::new(sshd, &sshd.remote(sub), &o)
    }

    /// [`TEST_USER`]'s own directory (`sshd.user_data`), logged in with its password read from
    /// stdin (`password_stdin`): a login that may not give files away.
    pub fn password_user(sshd: &Sshd) -> Mount {
        let remote = format!("{TEST_USER}@127.0.0.1:{}", sshd.user_data.display());
        let options = format!(
            "password_stdin,StrictHostKeyChecking=no,UserKnownHostsFile={}",
            sshd.dir.path().join("known_hosts").display()
        );
        Self::with_stdin(
            sshd.port,
            &remote,
            &options,
            Some(&format!("{TEST_PASSWORD}\n")),
        )
    }

    pub fn with_stdin(port: u16, remote: &str, options: &str, stdin: Option<&str>) -> Mount {
        let dir = TempDir::new("mnt");
        let mountpoint = dir.path().join("m");
        fs::create_dir(&mountpoint).unwrap();
        let stderr_path = dir.path().join("mount.stderr");
        let mut cmd;
        if reference_sshfs() {
            // Same test against the C sshfs, to check the tests themselves.
            cmd = Command::new("sshfs");
            cmd.arg("-f").arg("-p").arg(port.to_string());
            let kept: Vec<&str> = options
                .split(',')
                .filter(|o| {
                    !o.is_empty() && !o.starts_with("passphrase=") && !o.starts_with("hostkey=")
                })
                .collect();
            if !kept.is_empty() {
                cmd.arg("-o").arg(kept.join(","));
            }
        } else {
            cmd = Command::new(BIN);
            cmd.arg("mount").arg("-p").arg(port.to_string());
            if !options.is_empty() {
                cmd.arg("-o").arg(options);
            }
            let read_only = options.split(',').any(|o| o == "ro" || o == "read_only");
            if writeback_tests() && !options.contains("writeback") && !read_only {
                let journal = dir.path().join("journal");
                cmd.arg("-o")
                    .arg(format!("writeback=yes,writeback_dir={}", journal.display()));
            }
        }
        cmd.arg(remote).arg(&mountpoint);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr_path).unwrap());
        let mut child = cmd.spawn().expect("spawn the mount command");
        if let Some(s) = stdin {
            let mut si = child.stdin.take().unwrap();
            si.write_all(s.as_bytes()).unwrap();
            // stdin is closed here (dropped), as a pipe would be after one line.
        }
        Mount {
            dir,
            mountpoint,
            child: Some(child),
            stderr_path,
        }
        .wait_mounted(remote)
    }

    /// `docker-volume-sshfs mount ARGS... REMOTE MOUNTPOINT` with changes to the environment
    /// (`None` removes a variable: HOME, SSH_AUTH_SOCK); panics like [`Mount::new`].
    pub fn with_env(args: &[&str], remote: &str, env: &[(&str, Option<&str>)]) -> Mount {
        let dir = TempDir::new("mnt");
        let mountpoint = dir.path().join("m");
        fs::create_dir(&mountpoint).unwrap();
        let stderr_path = dir.path().join("mount.stderr");
        let mut cmd = Command::new(BIN);
        cmd.arg("mount").args(args).arg(remote).arg(&mountpoint);
        set_env(&mut cmd, env);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr_path).unwrap());
        let child = cmd.spawn().expect("spawn the mount command");
        Mount {
            dir,
            mountpoint,
            child: Some(child),
            stderr_path,
        }
        .wait_mounted(remote)
    }

    /// Waits for the mount to appear; panics with the command's stderr if it exits or times out.
    fn wait_mounted(mut self, remote: &str) -> Mount {
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if is_mounted(&self.mountpoint) {
                return self;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let err = self.stderr();
                self.child = None;
                panic!("mount command exited with {st} before mounting {remote}: {err}");
            }
            if Instant::now() > deadline {
                panic!(
                    "mount of {remote} did not appear at {} within {MOUNT_TIMEOUT:?}; stderr: {}",
                    self.mountpoint.display(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every change made through the mount is on the server (fsync of its root
    /// directory: immediate without write-back, where every call returned only then).
    pub fn settle(&self) {
        if let Ok(d) = fs::File::open(self.path("")) {
            d.sync_all()
                .expect("fsync of the mount's root (write-back settle)");
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends `sig` to the mount process.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig).unwrap();
        }
    }

    /// Waits up to `timeout` for the mount process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal(nix::sys::signal::Signal::SIGTERM);
            if self.wait_exit(Duration::from_secs(10)).is_none()
                && let Some(mut c) = self.child.take()
            {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for _ in 0..3 {
            if !is_mounted(&self.mountpoint) {
                break;
            }
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// What most filesystem tests start from: a throwaway server and one key-authenticated root
/// mount of its whole data directory. The mount is dropped before the server.
pub struct Mounted {
    pub mount: Mount,
    pub sshd: Sshd,
}

impl Mounted {
    /// A fresh server, mounted with the standard key options plus `extra` (may be empty).
    pub fn root(extra: &str) -> Mounted {
        Self::prepared(extra, |_| {})
    }

    /// Like [`Mounted::root`], with `prepare` making server-side files (it gets the data
    /// directory) before the mount exists, so the mount has never seen them.
    pub fn prepared(extra: &str, prepare: impl FnOnce(&Path)) -> Mounted {
        let sshd = Sshd::start();
        prepare(&sshd.data);
        let mount = Mount::root(&sshd, "", extra);
        Mounted { mount, sshd }
    }

    /// `rel` seen through the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mount.path(rel)
    }

    /// `rel` on the server's disk (the same file, not through the mount). In write-back
    /// runs, once every change made through the mount is there.
    pub fn server(&self, rel: impl AsRef<Path>) -> PathBuf {
        if writeback_tests() {
            self.mount.settle();
        }
        self.sshd.data.join(rel)
    }
}

/// The outcome of a `mount` command that is expected to fail.
pub struct Failed {
    pub status: ExitStatus,
    pub stderr: String,
    /// Whether something was mounted at the mount point at any time we looked.
    pub mounted: bool,
}

/// Runs `docker-volume-sshfs mount ARGS... REMOTE MOUNTPOINT` expecting it to exit on its own
/// within `timeout`; if it mounts or hangs instead, cleans up and panics.
pub fn mount_expect_failure(
    args: &[&str],
    remote: &str,
    stdin: Option<&str>,
    timeout: Duration,
) -> Failed {
    mount_expect_failure_env(args, remote, stdin, &[], timeout)
}

/// Sets (`Some`) or removes (`None`) environment variables of a command.
fn set_env(cmd: &mut Command, env: &[(&str, Option<&str>)]) {
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
}

/// [`mount_expect_failure`] with changes to the environment (see [`Mount::with_env`]).
pub fn mount_expect_failure_env(
    args: &[&str],
    remote: &str,
    stdin: Option<&str>,
    env: &[(&str, Option<&str>)],
    timeout: Duration,
) -> Failed {
    let dir = TempDir::new("fail");
    let mountpoint = dir.path().join("m");
    fs::create_dir(&mountpoint).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("mount").args(args).arg(remote).arg(&mountpoint);
    set_env(&mut cmd, env);
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the mount command");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    let mut stderr_pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let mut mounted = false;
    let status = loop {
        mounted |= is_mounted(&mountpoint);
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        let _ = nix::mount::umount2(&mountpoint, nix::mount::MntFlags::MNT_DETACH);
        panic!(
            "mount {args:?} {remote} was expected to fail but was still running after {timeout:?} \
             (mounted: {mounted}); stderr: {}",
            reader.join().unwrap()
        );
    };
    mounted |= is_mounted(&mountpoint);
    if is_mounted(&mountpoint) {
        let _ = nix::mount::umount2(&mountpoint, nix::mount::MntFlags::MNT_DETACH);
    }
    Failed {
        status,
        stderr: reader.join().unwrap(),
        mounted,
    }
}

/// A `/proc/PID/status` field in KiB (`VmRSS:`, `VmHWM:`).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).expect("mount process status");
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Deterministic pseudo-random bytes (xorshift64*), so large files are not trivially compressible.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `len` pseudo-random bytes to `path` in 1 MiB chunks (streaming, for big files).
pub fn write_random_file(path: &Path, seed: u64, len: usize) {
    let mut f = fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let chunk = 1 << 20;
    let mut done = 0;
    let mut s = seed;
    while done < len {
        let n = chunk.min(len - done);
        f.write_all(&pseudo_random(s, n))
            .unwrap_or_else(|e| panic!("write {} at {done}: {e}", path.display()));
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        done += n;
    }
    f.sync_all()
        .unwrap_or_else(|e| panic!("fsync {}: {e}", path.display()));
}

/// `sha256sum FILE` (reads the file through whatever filesystem it is on).
pub fn sha256(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    out.split_whitespace().next().unwrap().to_string()
}

/// Fault injection on the throwaway server (issue 4's tests).
impl Sshd {
    /// Drops every established SSH connection (kills the per-connection sshd processes) while the
    /// listener keeps accepting: what a network blip or a server-side idle kill looks like.
    pub fn kill_sessions(&self) {
        let _ = Command::new("pkill")
            .arg("-KILL")
            .arg("-P")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Stops the server completely: listener and established connections.
    pub fn stop(&mut self) {
        self.kill_sessions();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port with the same configuration (and host key,
    /// unless [`Sshd::new_host_key`] replaced it).
    /// Stops the server and starts it again with `lines` (sshd_config lines, e.g.
    /// `ChannelTimeout session:*=3s`) added to its settings.
    pub fn reconfigure(&mut self, lines: &str) {
        self.extra.extend(
            lines
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        );
        self.stop();
        self.restart();
    }

    pub fn restart(&mut self) {
        let d = self.dir.path().to_path_buf();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(d.join("sshd.log"))
                .unwrap();
            let mut child = spawn_sshd(&d, self.port, &self.extra, log);
            match wait_for_banner(self.port, &mut child) {
                Ok(()) => {
                    self.child = child;
                    return;
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    // The port may linger in TIME_WAIT users for a moment; try again.
                    assert!(Instant::now() < deadline, "sshd did not restart: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Replaces the host key (takes effect at the next restart) and returns the new fingerprint.
    pub fn new_host_key(&mut self) -> String {
        let hostkey = host_key_path(self.dir.path());
        let _ = fs::remove_file(&hostkey);
        let _ = fs::remove_file(hostkey.with_extension("pub"));
        self.host_fingerprint = make_host_key(self.dir.path());
        self.host_fingerprint.clone()
    }
}
