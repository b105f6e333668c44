//! Write-back mode's promises, through the `mount` command against a real OpenSSH server
//! (behind a latency proxy where the test needs the server to lag): nothing acknowledged is
//! lost to `kill -9`; changes made while the server is down arrive, in order, once it is back;
//! fsync returns once the file is on the server; reads see the mount's own pending changes;
//! a full journal makes writes wait, never fail.
//!
//! Each test first shows that the server does NOT have the change yet when the promise is
//! checked through the mount, so none of them would pass against a mount that writes through.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::*;

/// A write-back mount of the whole data directory through `port` (the server or a proxy in
/// front of it), its journal in `journal`.
fn mount_wb(sshd: &Sshd, port: u16, journal: &Path, extra: &str) -> Mount {
    let mut o = format!(
        "{},writeback=yes,writeback_dir={}",
        sshd.key_options(),
        journal.display()
    );
    if !extra.is_empty() {
        o.push(',');
        o.push_str(extra);
    }
    Mount::with_stdin(port, &sshd.remote(""), &o, None)
}

/// Files of a tree to untar: (relative path, content).
fn tree(files: usize) -> Vec<(String, Vec<u8>)> {
    (0..files)
        .map(|i| {
            let len = 100 + (i * 7919) % 20_000;
            (
                format!("tree/d{}/f{i}", i % 12),
                pseudo_random(i as u64 + 1, len),
            )
        })
        .collect()
}

fn make_tarball(dir: &Path, files: &[(String, Vec<u8>)]) -> std::path::PathBuf {
    let src = dir.join("src");
    for (p, data) in files {
        let path = src.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data).unwrap();
    }
    let tarball = dir.join("tree.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("-cf")
        .arg(&tarball)
        .arg("tree"));
    tarball
}

fn fsync_dir(dir: &Path) {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .unwrap_or_else(|e| panic!("fsync of {}: {e}", dir.display()));
}

#[test]
fn acknowledged_changes_survive_kill_9_and_reach_the_server_at_the_next_mount() {
    let sshd = Sshd::start();
    let work = TempDir::new("wb-kill");
    let journal = work.path().join("journal");
    let files = tree(400);
    let tarball = make_tarball(work.path(), &files);
    // A slow link, so the replay is far behind the untar when the mount is killed.
    let proxy = Proxy::start(sshd.port, 100);
    let mut m = mount_wb(&sshd, proxy.port, &journal, "");
    let out = Command::new("busybox")
        .arg("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(m.path(""))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "busybox tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    m.signal(nix::sys::signal::Signal::SIGKILL);
    m.wait_exit(Duration::from_secs(10))
        .expect("the mount process dies");
    let on_server = files
        .iter()
        .filter(|(p, d)| fs::read(sshd.data.join(p)).is_ok_and(|got| got == *d))
        .count();
    assert!(
        on_server < files.len(),
        "every file was already on the server when the mount was killed: the test shows nothing"
    );
    drop(m);

    // The next mount of the same journal puts everything there before it appears.
    let m2 = mount_wb(&sshd, sshd.port, &journal, "");
    for (p, data) in &files {
        let got = fs::read(sshd.data.join(p)).unwrap_or_else(|e| panic!("{p} on the server: {e}"));
        assert!(got == *data, "{p}: content on the server differs");
    }
    // And through the mount.
    let (p, data) = &files[files.len() - 1];
    assert_eq!(fs::read(m2.path(p)).unwrap(), *data);
    eprintln!(
        "kill -9 after untar: {on_server} of {} files on the server at the kill, all after the remount",
        files.len()
    );
}

#[test]
fn changes_made_while_the_server_is_down_30s_arrive_in_order() {
    let mut sshd = Sshd::start();
    let work = TempDir::new("wb-down");
    let journal = work.path().join("journal");
    // Latency keeps the replay behind the writer, so the directory it writes in stays the
    // mount's to answer for (nothing in it needs the server while it is down).
    let proxy = Proxy::start(sshd.port, 20);
    let m = mount_wb(&sshd, proxy.port, &journal, "");
    fs::create_dir(m.path("d")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicUsize::new(0));
    let root = m.path("d");
    let writer = {
        let (stop, made) = (stop.clone(), made.clone());
        std::thread::spawn(move || {
            let mut log = fs::File::create(root.join("log")).unwrap();
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                fs::write(root.join(format!("f{i}")), format!("file {i}\n")).unwrap();
                // Each name rewritten: the last write must win on the server.
                fs::write(root.join(format!("v{}", i % 10)), format!("version {i}\n")).unwrap();
                writeln!(log, "line {i}").unwrap();
                i += 1;
                made.store(i, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
            i
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    sshd.stop();
    let at_stop = made.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(30));
    let during = made.load(Ordering::SeqCst) - at_stop;
    assert!(
        during > 100,
        "writes went on while the server was down ({during} rounds in 30 s)"
    );
    assert!(
        !sshd.data.join(format!("d/f{}", at_stop + 10)).exists(),
        "the server had a file made while it was down"
    );
    sshd.restart();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let n = writer.join().unwrap();
    let t = Instant::now();
    fsync_dir(&m.path(""));
    eprintln!(
        "server down 30 s: {during} rounds of writes made meanwhile; all {n} on the server {:.1} s after the fsync began",
        t.elapsed().as_secs_f64()
    );
    for i in 0..n {
        assert_eq!(
            fs::read_to_string(sshd.data.join(format!("d/f{i}"))).unwrap(),
            format!("file {i}\n")
        );
    }
    for k in 0..10 {
        let last = (0..n).filter(|i| i % 10 == k).max().unwrap();
        assert_eq!(
            fs::read_to_string(sshd.data.join(format!("d/v{k}"))).unwrap(),
            format!("version {last}\n"),
            "the last version of v{k} wins"
        );
    }
    let log = fs::read_to_string(sshd.data.join("d/log")).unwrap();
    let want: String = (0..n).map(|i| format!("line {i}\n")).collect();
    assert!(log == want, "the log on the server has its lines in order");
}

#[test]
fn fsync_returns_once_the_file_is_on_the_server() {
    let sshd = Sshd::start();
    let work = TempDir::new("wb-fsync");
    let proxy = Proxy::start(sshd.port, 50);
    let m = mount_wb(&sshd, proxy.port, &work.path().join("journal"), "");
    let data = pseudo_random(7, 1 << 20);
    let mut f = fs::File::create(m.path("f")).unwrap();
    f.write_all(&data).unwrap();
    let before = fs::read(sshd.data.join("f")).unwrap_or_default();
    assert!(
        before != data,
        "the server had the file before fsync: nothing shows fsync waits"
    );
    f.sync_all().unwrap();
    assert!(
        fs::read(sshd.data.join("f")).unwrap() == data,
        "after fsync(2) the server has the file"
    );
    // A rename is covered by an fsync of its directory.
    fs::rename(m.path("f"), m.path("g")).unwrap();
    fsync_dir(&m.path(""));
    assert!(!sshd.data.join("f").exists());
    assert!(fs::read(sshd.data.join("g")).unwrap() == data);
}

#[test]
fn reads_see_the_mounts_own_pending_changes() {
    let sshd = Sshd::start();
    let old = pseudo_random(3, 256 * 1024);
    fs::write(sshd.data.join("old"), &old).unwrap();
    fs::create_dir(sshd.data.join("od")).unwrap();
    fs::write(sshd.data.join("od/a"), b"server a").unwrap();
    fs::write(sshd.data.join("od/keep"), b"server keep").unwrap();
    let work = TempDir::new("wb-ryw");
    // Slow enough that none of the changes below is on the server when they are read back.
    let proxy = Proxy::start(sshd.port, 300);
    let m = mount_wb(&sshd, proxy.port, &work.path().join("journal"), "");

    fs::rename(m.path("od"), m.path("nd")).unwrap();
    fs::write(m.path("nd/b"), b"made here").unwrap();
    fs::remove_file(m.path("nd/a")).unwrap();
    fs::create_dir(m.path("nd/sub")).unwrap();
    std::os::unix::fs::symlink("some/target", m.path("nd/link")).unwrap();

    // The file's changes last, read back at once: the server is still far behind then.
    let mut want = old.clone();
    {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(m.path("old"))
            .unwrap();
        f.write_all_at(b"PATCHED", 1000).unwrap();
        want[1000..1007].copy_from_slice(b"PATCHED");
        f.set_len(200 * 1024).unwrap();
        want.truncate(200 * 1024);
        f.write_all_at(b"tail", 210 * 1024).unwrap();
        want.resize(210 * 1024, 0);
        want.extend_from_slice(b"tail");
    }
    fs::set_permissions(m.path("old"), fs::Permissions::from_mode(0o600)).unwrap();
    // Through the mount: every change, at once.
    let mut got = Vec::new();
    fs::File::open(m.path("old"))
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert!(
        got == want,
        "content of old: pending patch, truncate and extension"
    );
    // The server was still behind while that was read.
    assert_eq!(
        fs::metadata(sshd.data.join("old")).unwrap().len(),
        old.len() as u64,
        "the server already had the truncate: the reads above show nothing"
    );

    let md = fs::metadata(m.path("old")).unwrap();
    assert_eq!(md.len(), want.len() as u64);
    assert_eq!(md.mode() & 0o777, 0o600);
    let mut names: Vec<String> = fs::read_dir(m.path("nd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["b", "keep", "link", "sub"]);
    assert!(!m.path("od").exists(), "the old name is gone");
    assert_eq!(fs::read(m.path("nd/keep")).unwrap(), b"server keep");
    assert_eq!(fs::read(m.path("nd/b")).unwrap(), b"made here");
    assert_eq!(
        fs::read_link(m.path("nd/link")).unwrap().to_str(),
        Some("some/target")
    );
    let mut seek = fs::File::open(m.path("old")).unwrap();
    seek.seek(SeekFrom::Start(205 * 1024)).unwrap();
    let mut hole = [1u8; 16];
    seek.read_exact(&mut hole).unwrap();
    assert_eq!(hole, [0u8; 16], "the extension reads as zeros");

    // And it ends up with the same.
    fsync_dir(&m.path(""));
    assert!(fs::read(sshd.data.join("old")).unwrap() == want);
    assert_eq!(
        fs::metadata(sshd.data.join("old")).unwrap().mode() & 0o777,
        0o600
    );
    assert!(!sshd.data.join("od").exists());
    assert!(!sshd.data.join("nd/a").exists());
    assert_eq!(fs::read(sshd.data.join("nd/b")).unwrap(), b"made here");
    assert_eq!(fs::read(sshd.data.join("nd/keep")).unwrap(), b"server keep");
    assert!(sshd.data.join("nd/sub").is_dir());
}

#[test]
fn a_full_journal_makes_writes_wait_never_fail() {
    let sshd = Sshd::start();
    let work = TempDir::new("wb-bound");
    let journal = work.path().join("journal");
    // A slow link: the replay cannot keep up, so the 1 MiB journal fills and writes wait.
    let proxy = Proxy::start(sshd.port, 50);
    let m = mount_wb(&sshd, proxy.port, &journal, "writeback_max=1M");
    let data = pseudo_random(11, 48 << 20);
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (data, done, path) = (data.clone(), done.clone(), m.path("big"));
        std::thread::spawn(move || {
            let r = (|| {
                let mut f = fs::File::create(path)?;
                for chunk in data.chunks(256 * 1024) {
                    f.write_all(chunk)?;
                }
                f.sync_all()
            })();
            done.store(true, Ordering::SeqCst);
            r
        })
    };
    let journal_bytes = || -> u64 {
        fs::read_dir(&journal)
            .map(|d| d.map(|e| e.unwrap().metadata().unwrap().len()).sum())
            .unwrap_or(0)
    };
    let mut most = 0;
    while !done.load(Ordering::SeqCst) {
        most = most.max(journal_bytes());
        std::thread::sleep(Duration::from_millis(20));
    }
    writer
        .join()
        .unwrap()
        .expect("every write and the fsync succeed: a full journal makes them wait");
    assert!(fs::read(sshd.data.join("big")).unwrap() == data);
    assert!(
        most >= 900 << 10,
        "the journal never filled ({most} bytes at most): the test shows nothing"
    );
    // On disk: the changes not yet applied (at most writeback_max, plus the record being
    // appended) and the applied ones of the current segment (up to 16 MiB), which goes once
    // all of it is applied. Without the bound all 48 MiB would be there at once.
    assert!(
        most < 20 << 20,
        "the journal held {most} bytes on disk with writeback_max=1M"
    );
    eprintln!("bound: the journal held at most {most} bytes on disk with writeback_max=1M");
}

/// Bytes not yet on the server are in memory once, shared by the journal's record, the
/// replayer's batches and the mount's view of the file (README, write-back: memory). 64 MiB
/// written behind a slow link, so that nearly all of it is pending at once, grow the mount's
/// peak RSS by about 64 MiB. Each used to hold its own copy: about 3x.
#[test]
fn pending_bytes_are_held_in_memory_once() {
    const LEN: usize = 64 << 20;
    let sshd = Sshd::start();
    let work = TempDir::new("wb-memory");
    let proxy = Proxy::start(sshd.port, 200);
    let m = mount_wb(&sshd, proxy.port, &work.path().join("journal"), "");
    let pid = m.pid().expect("mount process");
    fs::metadata(m.path("")).unwrap();
    let before = status_kib(pid, "VmRSS:") << 10;
    let data = pseudo_random(64, LEN);
    let mut f = fs::File::create(m.path("big.bin")).unwrap();
    for chunk in data.chunks(1 << 20) {
        f.write_all(chunk).unwrap();
    }
    drop(f);
    let peak = status_kib(pid, "VmHWM:") << 10;
    let on_server = fs::metadata(sshd.data.join("big.bin")).map_or(0, |m| m.len());
    assert!(
        on_server < LEN as u64 / 2,
        "most of it is pending at the close ({on_server} bytes on the server)"
    );
    fsync_dir(&m.path(""));
    assert!(fs::read(sshd.data.join("big.bin")).unwrap() == data);
    let grew = peak.saturating_sub(before);
    eprintln!(
        "peak RSS grew by {} MiB for {} MiB written",
        grew >> 20,
        LEN >> 20
    );
    // The bytes once, plus the queue of writes each open file has (32 MiB at most, drained
    // as fast as the journal takes it) and the allocator's slack.
    assert!(
        grew <= LEN as u64 + (48 << 20),
        "peak RSS grew by {} MiB for {} MiB pending",
        grew >> 20,
        LEN >> 20
    );
}

#[test]
fn files_the_mount_wrote_read_back_with_the_server_gone() {
    let mut sshd = Sshd::start();
    let work = TempDir::new("wb-kept");
    // A short reconnect budget: a read that needs the server fails in seconds, not minutes.
    let m = mount_wb(
        &sshd,
        sshd.port,
        &work.path().join("journal"),
        "reconnect_timeout=3",
    );
    let files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| {
            (
                format!("d{}/f{i}", i % 4),
                pseudo_random(i + 50, 100 + i as usize * 997),
            )
        })
        .collect();
    for d in 0..4 {
        fs::create_dir(m.path(&format!("d{d}"))).unwrap();
    }
    for (p, data) in &files {
        fs::write(m.path(p), data).unwrap();
    }
    fsync_dir(&m.path(""));
    for (p, data) in &files {
        assert!(
            fs::read(sshd.data.join(p)).unwrap() == *data,
            "{p} on the server"
        );
    }
    // Nothing in the kernel's page cache: every read below reaches the mount.
    run(Command::new("sh").args(["-c", "sync; echo 1 >/proc/sys/vm/drop_caches"]));
    sshd.stop();
    let (tx, rx) = std::sync::mpsc::channel();
    let root = m.path("");
    let reader = std::thread::spawn(move || {
        for (p, data) in files {
            let got = fs::read(root.join(&p));
            let ok = got.as_ref().is_ok_and(|g| *g == data);
            tx.send((p, ok, got.err())).unwrap();
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut read = 0;
    while let Ok((p, ok, err)) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        assert!(ok, "{p} read back with the server gone: {err:?}");
        read += 1;
    }
    assert_eq!(
        read, 40,
        "reads of what the mount wrote hung with the server gone"
    );
    reader.join().unwrap();
    sshd.restart();
}
