//! Faults injected for real against a real OpenSSH server and a real FUSE mount (issue 4):
//! dropped connections, a server that goes away and comes back, a changed host key. Each test
//! checks that nothing written was lost and that nothing hangs.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use common::*;

/// Options for a mount that notices a dead link quickly.
const FAST: &str = "ServerAliveInterval=1,ServerAliveCountMax=2";

/// Runs `write` in a thread while the server's established connections are dropped `drops`
/// times, `every` apart; panics if the writer failed.
fn write_through_drops(
    sshd: &Sshd,
    drops: usize,
    every: Duration,
    write: impl FnOnce() + Send + 'static,
) {
    let writer = std::thread::spawn(write);
    for _ in 0..drops {
        std::thread::sleep(every);
        sshd.kill_sessions();
    }
    writer
        .join()
        .expect("the writer carried on through the drops");
}

#[test]
fn writer_in_a_loop_survives_dropped_connections() {
    let sshd = Sshd::start();
    fs::create_dir(sshd.data.join("loop")).unwrap();
    let m = Mount::root(&sshd, "loop", FAST);
    let path = m.path("log.txt");
    write_through_drops(&sshd, 3, Duration::from_millis(700), move || {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        for i in 0..150 {
            writeln!(f, "line {i}").unwrap_or_else(|e| panic!("write {i} failed: {e}"));
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        f.sync_all().expect("fsync after the drops");
    });
    drop(m);
    let expected: String = (0..150).map(|i| format!("line {i}\n")).collect();
    assert_eq!(
        fs::read_to_string(sshd.data.join("loop/log.txt")).unwrap(),
        expected,
        "every line reached the server, in order"
    );
}

/// A big sequential write is spread over several SFTP channels; dropped connections in the
/// middle of it lose nothing (the extra handles are dropped and the main one reopened).
#[test]
fn a_write_spread_over_channels_survives_dropped_connections() {
    const MIB: usize = 1024 * 1024;
    let sshd = Sshd::start();
    let m = Mount::root(&sshd, "", FAST);
    let path = m.path("big.bin");
    let block: Vec<u8> = (0..MIB).map(|i| (i % 253) as u8).collect();
    write_through_drops(&sshd, 2, Duration::from_millis(800), move || {
        let mut f = fs::File::create(&path).unwrap();
        for i in 0..160u32 {
            let mut b = block.clone();
            b[..4].copy_from_slice(&i.to_be_bytes());
            f.write_all(&b)
                .unwrap_or_else(|e| panic!("write {i} failed: {e}"));
            std::thread::sleep(Duration::from_millis(10));
        }
        f.sync_all().expect("fsync after the drops");
    });
    drop(m);
    let got = fs::read(sshd.data.join("big.bin")).unwrap();
    assert_eq!(got.len(), 160 * MIB);
    for (i, b) in got.chunks(MIB).enumerate() {
        assert_eq!(b[..4], (i as u32).to_be_bytes(), "block {i} in its place");
        assert!(
            b[4..]
                .iter()
                .enumerate()
                .all(|(j, v)| *v == ((j + 4) % 253) as u8),
            "block {i} intact"
        );
    }
}

#[test]
fn open_file_keeps_its_offsets_across_a_reconnect() {
    let sshd = Sshd::start();
    fs::create_dir(sshd.data.join("re")).unwrap();
    fs::write(sshd.data.join("re/f"), b"0123456789").unwrap();
    let m = Mount::root(&sshd, "re", FAST);
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("f"))
        .unwrap();
    let mut buf = [0u8; 4];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"0123");
    sshd.kill_sessions();
    // The handle was on the dropped connection: it must be reopened transparently.
    f.seek(SeekFrom::Start(6)).unwrap();
    f.write_all(b"XY").unwrap();
    f.sync_all().unwrap();
    f.seek(SeekFrom::Start(4)).unwrap();
    let mut rest = String::new();
    f.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "45XY89");
    drop(f);
    assert_eq!(fs::read(sshd.data.join("re/f")).unwrap(), b"012345XY89");
}

#[test]
fn server_down_fails_with_eio_in_bounded_time_then_recovers() {
    let mut sshd = Sshd::start();
    fs::create_dir(sshd.data.join("down")).unwrap();
    let m = Mount::root(&sshd, "down", &format!("{FAST},reconnect_timeout=3"));
    fs::write(m.path("before"), b"written before the outage").unwrap();

    sshd.stop();
    let started = Instant::now();
    let err = fs::metadata(m.path("never-looked-up"))
        .expect_err("a lookup while the server is down must fail");
    let waited = started.elapsed();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EIO),
        "expected EIO, got {err}"
    );
    assert!(
        waited < Duration::from_secs(15),
        "the failing call took {waited:?}: it must give up after about reconnect_timeout"
    );

    sshd.restart();
    // The mount reconnects by itself: the next calls work again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match fs::write(m.path("after"), b"written after the outage") {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not back yet: {e}");
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(e) => panic!("the mount did not recover after the server came back: {e}"),
        }
    }
    assert_eq!(
        fs::read(m.path("before")).unwrap(),
        b"written before the outage"
    );
    assert_eq!(
        fs::read(sshd.data.join("down/after")).unwrap(),
        b"written after the outage"
    );
}

#[test]
fn fsynced_data_is_on_the_server_before_a_crash() {
    let mut sshd = Sshd::start();
    fs::create_dir(sshd.data.join("sync")).unwrap();
    let m = Mount::root(&sshd, "sync", FAST);
    let data = pseudo_random(7, 3 * 1024 * 1024 + 17);
    let mut f = fs::File::create(m.path("blob")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    // The server dies right after fsync returned: the bytes must already be there.
    sshd.stop();
    assert_eq!(
        fs::read(sshd.data.join("sync/blob")).unwrap(),
        data,
        "fsync returned before the data reached the server"
    );
    drop(f);
    drop(m);
}

#[test]
fn a_write_that_cannot_reach_the_server_is_reported() {
    let mut sshd = Sshd::start();
    fs::create_dir(sshd.data.join("lost")).unwrap();
    let m = Mount::root(&sshd, "lost", &format!("{FAST},reconnect_timeout=2"));
    let mut f = fs::File::create(m.path("doomed")).unwrap();
    sshd.stop();
    let data = pseudo_random(9, 4 * 1024 * 1024);
    // Write-behind may accept the bytes at first, but one of write, fsync or close must fail:
    // an application must never believe data is stored when it is not.
    let write = f.write_all(&data);
    let sync = f.sync_all();
    let close = nix::unistd::close(std::os::fd::IntoRawFd::into_raw_fd(f));
    assert!(
        write.is_err() || sync.is_err() || close.is_err(),
        "write, fsync and close all succeeded although the server was down"
    );
    drop(m);
}

#[test]
fn changed_host_key_is_refused_with_both_fingerprints() {
    let mut sshd = Sshd::start();
    fs::create_dir(sshd.data.join("hk")).unwrap();
    let known_hosts = sshd.dir.path().join("pinned_known_hosts");
    let opts = format!(
        "IdentityFile={},StrictHostKeyChecking=accept-new,UserKnownHostsFile={}",
        sshd.key.display(),
        known_hosts.display()
    );
    let old = sshd.host_fingerprint.clone();
    // First contact: accepted and recorded.
    let m = Mount::new(&sshd, &sshd.remote("hk"), &opts);
    drop(m);
    assert!(
        fs::read_to_string(&known_hosts)
            .unwrap_or_default()
            .contains("ssh-ed25519"),
        "accept-new records the key like ssh does"
    );

    sshd.stop();
    let new = sshd.new_host_key();
    sshd.restart();
    let port = sshd.port.to_string();
    let failed = mount_expect_failure(
        &["-p", &port, "-o", &opts],
        &sshd.remote("hk"),
        None,
        Duration::from_secs(30),
    );
    assert!(!failed.status.success() && !failed.mounted);
    assert!(
        failed.stderr.contains("host key verification failed"),
        "{}",
        failed.stderr
    );
    assert!(
        failed.stderr.contains(&new),
        "names the new key: {}",
        failed.stderr
    );

    // An explicit pin names both fingerprints.
    let pinned = format!(
        "IdentityFile={},hostkey={old},UserKnownHostsFile=/dev/null",
        sshd.key.display()
    );
    let failed = mount_expect_failure(
        &["-p", &port, "-o", &pinned],
        &sshd.remote("hk"),
        None,
        Duration::from_secs(30),
    );
    assert!(!failed.mounted);
    assert!(
        failed.stderr.contains(&old) && failed.stderr.contains(&new),
        "both fingerprints: {}",
        failed.stderr
    );
}
