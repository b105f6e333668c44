//! The write-back mount lifecycle through the `mount` command, against a real OpenSSH server:
//! changes an earlier run left journaled are on the server before the mount appears, and the
//! journal is empty after a clean stop; changes that cannot get there in time fail the mount
//! and stay journaled; one journal serves one mount at a time; `writeback_dir` is required
//! and kept out of the mountpoint. (What the filesystem journals is the overlay's part and is
//! tested with it.)

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::proxy::Proxy;
use common::*;
use docker_volume_sshfs::writeback::{Journal, Op};

/// What a run that stopped before replaying leaves: `ops` in a journal at `dir`.
fn leave_journaled(dir: &Path, ops: &[Op]) {
    let j = Journal::open(dir, 1 << 20).unwrap();
    for op in ops {
        j.append_now(op.clone()).unwrap();
    }
}

fn pending_in(dir: &Path) -> u64 {
    Journal::open(dir, 1 << 20).unwrap().stats().pending_ops
}

fn some_changes() -> Vec<Op> {
    vec![
        Op::Mkdir {
            path: "earlier".into(),
            mode: 0o750,
        },
        Op::Create {
            path: "earlier/f".into(),
            mode: 0o640,
            uid: None,
            gid: None,
        },
        Op::Write {
            path: "earlier/f".into(),
            offset: 0,
            data: b"written before the last stop".to_vec().into(),
        },
    ]
}

#[test]
fn changes_left_by_an_earlier_run_are_on_the_server_before_the_mount_appears() {
    let sshd = Sshd::start();
    let journal = TempDir::new("wb-journal");
    let jdir = journal.path().join("j");
    leave_journaled(&jdir, &some_changes());
    let mut m = Mount::root(
        &sshd,
        "",
        &format!("writeback=yes,writeback_dir={}", jdir.display()),
    );
    // Checked on the server's disk the moment the mount exists: replayed before it.
    assert_eq!(
        fs::read(sshd.data.join("earlier/f")).unwrap(),
        b"written before the last stop"
    );
    assert!(sshd.data.join("earlier").is_dir());
    assert!(
        m.stderr()
            .contains("replaying the changes an earlier mount left")
    );

    // One journal, one mount: a second mount of the same writeback_dir is refused.
    let other = mount_expect_failure(
        &[
            "-p",
            &sshd.port.to_string(),
            "-o",
            &format!(
                "{},writeback=yes,writeback_dir={}",
                sshd.key_options(),
                jdir.display()
            ),
        ],
        &sshd.remote(""),
        None,
        Duration::from_secs(30),
    );
    assert!(
        !other.mounted && !other.status.success(),
        "{}",
        other.stderr
    );
    assert!(
        other.stderr.contains("is in use by another mount"),
        "{}",
        other.stderr
    );

    m.signal(nix::sys::signal::Signal::SIGTERM);
    let st = m.wait_exit(Duration::from_secs(30)).expect("mount exits");
    assert!(st.success(), "{}", m.stderr());
    let log = m.stderr();
    assert!(
        log.contains("write-back") && log.contains("pending_ops=0"),
        "{log}"
    );
    assert_eq!(pending_in(&jdir), 0);
}

#[test]
fn earlier_changes_that_do_not_get_through_fail_the_mount_and_stay_journaled() {
    let sshd = Sshd::start();
    // Nested directories go one after the other: at 400 ms a round trip they take seconds,
    // longer than reconnect_timeout=1 gives them.
    let proxy = Proxy::start(sshd.port, 400);
    let journal = TempDir::new("wb-journal");
    let jdir = journal.path().join("j");
    let ops: Vec<Op> = (1..=30)
        .map(|depth| Op::Mkdir {
            path: vec!["d"; depth].join("/"),
            mode: 0o755,
        })
        .collect();
    leave_journaled(&jdir, &ops);
    let failed = mount_expect_failure(
        &[
            "-p",
            &proxy.port.to_string(),
            "-o",
            &format!(
                "{},writeback=yes,writeback_dir={},reconnect_timeout=1,ConnectTimeout=60",
                sshd.key_options(),
                jdir.display()
            ),
        ],
        &sshd.remote(""),
        None,
        Duration::from_secs(90),
    );
    assert!(
        !failed.mounted && !failed.status.success(),
        "{}",
        failed.stderr
    );
    let e = &failed.stderr;
    eprintln!("mount error: {}", e.trim());
    assert!(
        e.contains("made by an earlier mount are still not on the server after 1 s")
            && e.contains("Nothing was mounted")
            && e.contains(&jdir.display().to_string()),
        "{e}"
    );
    let left = pending_in(&jdir);
    assert!(left > 0 && left < 30 + 1, "{left} pending: {e}");
    assert!(e.contains(&format!("{left} change(s)")), "{left}: {e}");
}

#[test]
fn the_journal_must_be_given_and_outside_the_mountpoint() {
    let sshd = Sshd::start();
    let port = sshd.port.to_string();
    let opts = |extra: &str| format!("{},{extra}", sshd.key_options());
    let missing = mount_expect_failure(
        &["-p", &port, "-o", &opts("writeback=yes")],
        &sshd.remote(""),
        None,
        Duration::from_secs(30),
    );
    assert_eq!(missing.status.code(), Some(2), "{}", missing.stderr);
    assert!(
        missing.stderr.contains("writeback_dir=PATH"),
        "{}",
        missing.stderr
    );

    let dir = TempDir::new("wb-inside");
    let mp = dir.path().join("m");
    fs::create_dir(&mp).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["mount", "-p", &port, "-o"])
        .arg(opts(&format!(
            "writeback=yes,writeback_dir={}",
            mp.join("journal").display()
        )))
        .arg(sshd.remote(""))
        .arg(&mp)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is inside the mountpoint"), "{err}");
    assert!(!mp.join("journal").exists());
}
