//! Round trips per file of what real images run on a volume (busybox `tar` and `rm`, GNU `tar`,
//! `cp -a`), counted by our client and printed by the mount command when it stops (its
//! `traffic` line): at a link's latency L a workload takes at least round trips x L, so these
//! counts are the small-file speed on a real link, and the machine's noise hardly moves them.
//! They run through a proxy that adds 10 ms: how requests overlap depends on the latency (at
//! none, a write is answered before the close that would have shared its round trip).
//! Each workload also checks what landed on the server (content, owner, mode, mtime), since
//! the round trips are saved by deferring and predicting metadata.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::proxy::Proxy;
use common::{Mount, Sshd, TempDir, pseudo_random};

const RTT_MS: u32 = 10;

const FILES: usize = 300;
const DIRS: usize = 15;

/// Counters from the mount command's `traffic` line.
#[derive(Debug)]
struct Traffic {
    /// Shown with the round trips: how many requests shared them.
    requests: u64,
    round_trips: u64,
}

/// A tree of `FILES` files of 0-16 KiB in `DIRS` directories, owned by `owner`, one of them
/// set-user-ID, and a tar of it: returns (tree root, tarball).
fn make_tree(work: &Path, owner: (u32, u32)) -> (std::path::PathBuf, std::path::PathBuf) {
    let root = work.join("src");
    for i in 0..FILES {
        let dir = root.join(format!("tree/dir{:02}", i % DIRS));
        fs::create_dir_all(&dir).unwrap();
        let len = (i * 7919) % 16384;
        let f = dir.join(format!("file{i:04}"));
        fs::write(&f, pseudo_random(i as u64, len)).unwrap();
        let mode = if i == 7 { 0o4755 } else { 0o644 };
        fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
    }
    run_ok(
        Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", owner.0, owner.1))
            .arg(&root),
    );
    // chown cleared the set-user-ID bit: set it again, as the tar should carry it.
    let suid = root.join(format!("tree/dir{:02}/file0007", 7 % DIRS));
    fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).unwrap();
    let tar = work.join("tree.tar");
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("tree"),
    );
    (root, tar)
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("run a command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `cmd` in a fresh mount of the server's data directory, through a link of `RTT_MS`, and
/// returns what the mount sent.
fn counted(sshd: &Sshd, cmd: &mut Command) -> Traffic {
    counted_with(sshd, &sshd.key_options(), cmd)
}

/// `counted`, with the mount's `options`.
fn counted_with(sshd: &Sshd, options: &str, cmd: &mut Command) -> Traffic {
    let proxy = Proxy::start(sshd.port, RTT_MS);
    let mut mount = Mount::with_stdin(proxy.port, &sshd.remote(""), options, None);
    run_ok(cmd.current_dir(&mount.mountpoint));
    mount.signal(nix::sys::signal::Signal::SIGTERM);
    mount
        .wait_exit(Duration::from_secs(30))
        .expect("mount command stops");
    let log = mount.stderr();
    let line = log
        .lines()
        .rfind(|l| l.contains(" traffic"))
        .unwrap_or_else(|| panic!("no traffic line in the mount's log: {log}"));
    let field = |name: &str| -> u64 {
        let at = line.find(&format!(" {name}=")).expect(name) + name.len() + 2;
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    Traffic {
        requests: field("requests"),
        round_trips: field("round_trips"),
    }
}

fn per(t: &Traffic, n: usize) -> f64 {
    t.round_trips as f64 / n as f64
}

/// Every file and directory of `want` is in `got` with the same content, owner, mode and mtime
/// (for directories only with `dir_mtimes`: busybox tar sets them before filling them).
fn assert_same_tree(want: &Path, got: &Path, dir_mtimes: bool) {
    let mut n = 0;
    for entry in walk(want) {
        let rel = entry.strip_prefix(want).unwrap();
        let (w, g) = (
            fs::symlink_metadata(&entry).unwrap(),
            fs::symlink_metadata(got.join(rel))
                .unwrap_or_else(|e| panic!("{} missing on the server: {e}", rel.display())),
        );
        let what = rel.display();
        assert_eq!((g.uid(), g.gid()), (w.uid(), w.gid()), "owner of {what}");
        assert_eq!(g.mode(), w.mode(), "mode of {what}");
        if dir_mtimes || !w.is_dir() {
            assert_eq!(g.mtime(), w.mtime(), "mtime of {what}");
        }
        if w.is_file() {
            assert_eq!(
                fs::read(got.join(rel)).unwrap(),
                fs::read(&entry).unwrap(),
                "{what}"
            );
        }
        n += 1;
    }
    assert!(n > FILES, "walked only {n} entries");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

fn entries() -> usize {
    FILES + DIRS + 1
}

#[test]
fn busybox_tar_and_rm_take_few_round_trips_per_file() {
    let sshd = Sshd::start();
    let work = TempDir::new("rt-busybox");
    let (src, tar) = make_tree(work.path(), (0, 0));

    let t = counted(
        &sshd,
        Command::new("busybox").arg("tar").arg("xf").arg(&tar),
    );
    eprintln!(
        "busybox tar x: {t:?}, {:.2} round trips per file",
        per(&t, FILES)
    );
    assert_same_tree(&src.join("tree"), &sshd.data.join("tree"), false);
    // create, the data, utimensat: the chown and chmod to what the file has are answered
    // locally. Before: 5 and more.
    assert!(per(&t, FILES) <= 3.5, "{t:?}");

    let t = counted(&sshd, Command::new("busybox").args(["rm", "-rf", "tree"]));
    eprintln!("busybox rm -rf: {t:?}, {:.2} per entry", per(&t, entries()));
    assert!(!sshd.data.join("tree").exists());
    assert!(per(&t, entries()) <= 1.1, "{t:?}");
}

/// A big write is one WRITE per packet of the server's size (OpenSSH announces 255 KiB; we send
/// 128 KiB), and each is counted once: the benchmark's requests per MiB come from this count.
/// The main handle's writes used to be counted twice (16 per MiB).
#[test]
fn a_sequential_write_is_one_request_per_packet() {
    let sshd = Sshd::start();
    const MIB: usize = 2; // below the size at which writes spread over more channels
    let t = counted(
        &sshd,
        Command::new("busybox").args([
            "dd",
            "if=/dev/zero",
            "of=big",
            "bs=1M",
            &format!("count={MIB}"),
            "conv=fsync",
        ]),
    );
    eprintln!("dd {MIB} MiB: {t:?}");
    assert_eq!(
        fs::metadata(sshd.data.join("big")).unwrap().len(),
        (MIB << 20) as u64
    );
    let writes = MIB as u64 * 8;
    // The writes, and the few around them: lookup, open, fsync, fstat, close.
    assert!(
        t.requests >= writes && t.requests <= writes + 12,
        "{t:?}: want {writes} writes and a few more"
    );
}

#[test]
fn busybox_tar_of_files_another_user_owns() {
    let sshd = Sshd::start();
    let work = TempDir::new("rt-owner");
    let (src, tar) = make_tree(work.path(), (1000, 1000));
    let t = counted(
        &sshd,
        Command::new("busybox").arg("tar").arg("xf").arg(&tar),
    );
    eprintln!(
        "busybox tar x (uid 1000): {t:?}, {:.2} per file",
        per(&t, FILES)
    );
    assert_same_tree(&src.join("tree"), &sshd.data.join("tree"), false);
    // The chown by path is a round trip of its own; the attributes after it are not asked
    // for (they were: 5).
    assert!(per(&t, FILES) <= 4.3, "{t:?}");
}

#[test]
fn gnu_tar_and_cp_a_take_two_round_trips_per_file() {
    let sshd = Sshd::start();
    let work = TempDir::new("rt-gnu");
    // Another owner than the login, so each file's fchown is a real change: it is deferred
    // behind the file's writes with its utimes and chmod (the set-ID file too, chmod last).
    let (src, tar) = make_tree(work.path(), (1000, 1000));

    let t = counted(&sshd, Command::new("tar").arg("xf").arg(&tar));
    eprintln!("GNU tar x: {t:?}, {:.2} per file", per(&t, FILES));
    assert_same_tree(&src.join("tree"), &sshd.data.join("tree"), true);
    // create, then the data with the metadata behind it; the directories' mkdir and
    // utimensat add the rest. Before: 5.3.
    assert!(per(&t, FILES) <= 2.3, "{t:?}");

    let t = counted(&sshd, Command::new("rm").args(["-rf", "tree"]));
    eprintln!("GNU rm -rf: {t:?}, {:.2} per entry", per(&t, entries()));
    assert!(!sshd.data.join("tree").exists());
    // 1.2 at 10 ms (1.0 at 0 ms, where busybox rm is at 1.0 either way): GNU rm opens each
    // directory twice and some listings fetched ahead are not back when it asks.
    assert!(per(&t, entries()) <= 1.25, "{t:?}");

    let t = counted(
        &sshd,
        Command::new("cp")
            .arg("-a")
            .arg(src.join("tree"))
            .arg("copy"),
    );
    eprintln!("cp -a: {t:?}, {:.2} per file", per(&t, FILES));
    assert_same_tree(&src.join("tree"), &sshd.data.join("copy"), true);
    assert!(per(&t, FILES) <= 2.3, "{t:?}");
}

#[test]
fn write_back_rm_rf_lists_each_directory_once() {
    let sshd = Sshd::start();
    let work = TempDir::new("rt-wb-rm");
    let (_, tar) = make_tree(work.path(), (0, 0));
    run_ok(
        Command::new("tar")
            .arg("xf")
            .arg(&tar)
            .current_dir(&sshd.data),
    );
    let options = format!(
        "{},writeback=yes,writeback_dir={}",
        sshd.key_options(),
        work.path().join("journal").display()
    );
    let t = counted_with(
        &sshd,
        &options,
        Command::new("busybox").args(["rm", "-rf", "tree"]),
    );
    let dirs = DIRS + 1;
    eprintln!(
        "busybox rm -rf, write-back: {t:?}, {:.2} per directory",
        per(&t, dirs)
    );
    assert!(!sshd.data.join("tree").exists(), "drained at unmount");
    // rm lists each directory (the mount lists subdirectories ahead, together), the unlinks
    // are journaled and sent many to a round trip, and the rmdir after them needs no second
    // listing of its own: 0.25 per directory here. Before, each rmdir listed again: 2.06.
    assert!(per(&t, dirs) <= 1.0, "{t:?}");
}
