//! The write-back journal and replayer (issue 13, part 2) against a real OpenSSH server: a tree
//! of changes journaled, replayed, and the server's directory compared with the same changes
//! made to a local directory, byte for byte, with modes, owners, link counts and mtimes; the
//! same through a replay interrupted by killed SSH sessions and resumed from the reopened
//! journal; a journal dropped without sync and reopened; and the conflict rule.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use docker_volume_sshfs::options::{self, Context};
use docker_volume_sshfs::sftp::Sftp;
use docker_volume_sshfs::writeback::{Attrs, Journal, Op, Replayer};

async fn connect(sshd: &Sshd, sub: &str) -> Sftp {
    let opts = format!(
        "{},port={},ssh_config=none,IdentityAgent=none,ServerAliveInterval=1,\
         ServerAliveCountMax=2,reconnect_timeout=5",
        sshd.key_options(),
        sshd.port
    );
    let raw = options::split_cli_options(&opts);
    let parsed = options::parse(&raw, Some(&sshd.remote(sub)), Context::Command).unwrap();
    Sftp::connect(&parsed.options).await.unwrap()
}

/// The changes an untar, some renames and deletes make: `files` files of about `size` bytes.
fn tree_ops(files: usize, size: usize) -> Vec<Op> {
    let s = |p: &str| p.to_string();
    let mut ops = vec![
        Op::Mkdir {
            path: s("d"),
            mode: 0o755,
        },
        Op::Mkdir {
            path: s("d/sub"),
            mode: 0o700,
        },
        Op::Mkdir {
            path: s("gone"),
            mode: 0o755,
        },
    ];
    for i in 0..files {
        let path = format!("d/f{i}");
        // busybox tar's pattern: unlink (nothing there), create, write, chown, chmod, utimes.
        ops.push(Op::Create {
            path: path.clone(),
            mode: 0o644,
            uid: None,
            gid: None,
        });
        let data = pseudo_random(i as u64, size + i);
        for (k, chunk) in data.chunks(4096).enumerate() {
            ops.push(Op::Write {
                path: path.clone(),
                offset: (k * 4096) as u64,
                data: chunk.to_vec().into(),
            });
        }
        ops.push(Op::SetAttr {
            path: path.clone(),
            attrs: Attrs {
                uid: Some(1000 + i as u32 % 3),
                gid: Some(100),
                ..Attrs::default()
            },
        });
        ops.push(Op::SetAttr {
            path: path.clone(),
            attrs: Attrs {
                mode: Some([0o644, 0o600, 0o755][i % 3]),
                ..Attrs::default()
            },
        });
        ops.push(Op::SetAttr {
            path,
            attrs: Attrs {
                atime: Some(1_600_000_000 + i as u32),
                mtime: Some(1_500_000_000 + i as u32),
                ..Attrs::default()
            },
        });
    }
    ops.extend([
        Op::Rename {
            from: s("d/f0"),
            to: s("d/sub/moved"),
        },
        Op::Unlink { path: s("d/f1") },
        Op::Symlink {
            target: s("f2"),
            path: s("d/link"),
        },
        Op::Truncate {
            path: s("d/f3"),
            size: 3,
        },
        Op::Link {
            existing: s("d/f4"),
            new: s("d/hard"),
        },
        Op::Write {
            path: s("d/hard"),
            offset: 1,
            data: b"XY".to_vec().into(),
        },
        // Created and deleted before it reached the server: never sent.
        Op::Create {
            path: s("d/tmp"),
            mode: 0o600,
            uid: None,
            gid: None,
        },
        Op::Write {
            path: s("d/tmp"),
            offset: 0,
            data: b"scratch".to_vec().into(),
        },
        Op::Unlink { path: s("d/tmp") },
        Op::Rmdir { path: s("gone") },
        Op::Rename {
            from: s("d/f5"),
            to: s("d/f6"),
        },
    ]);
    for (p, t) in [("d/f3", 1_400_000_000), ("d/hard", 1_400_000_001)] {
        ops.push(Op::SetAttr {
            path: s(p),
            attrs: Attrs {
                atime: Some(t),
                mtime: Some(t),
                ..Attrs::default()
            },
        });
    }
    // Directory times last: every change inside moves them.
    for (p, t) in [("d/sub", 1_300_000_000), ("d", 1_300_000_001)] {
        ops.push(Op::SetAttr {
            path: s(p),
            attrs: Attrs {
                atime: Some(t),
                mtime: Some(t),
                ..Attrs::default()
            },
        });
    }
    ops
}

/// Makes `op` in the local directory `root`: the reference the server must match.
fn apply_local(root: &Path, op: &Op) {
    let p = |rel: &str| root.join(rel);
    match op {
        Op::Create {
            path,
            mode,
            uid,
            gid,
        } => {
            fs::File::create_new(p(path)).unwrap();
            fs::set_permissions(p(path), fs::Permissions::from_mode(*mode)).unwrap();
            std::os::unix::fs::chown(p(path), *uid, *gid).unwrap();
        }
        Op::Write { path, offset, data } => {
            let f = fs::OpenOptions::new().write(true).open(p(path)).unwrap();
            f.write_all_at(data, *offset).unwrap();
        }
        Op::Truncate { path, size } => {
            let f = fs::OpenOptions::new().write(true).open(p(path)).unwrap();
            f.set_len(*size).unwrap();
        }
        Op::SetAttr { path, attrs } => {
            if let Some(m) = attrs.mode {
                fs::set_permissions(p(path), fs::Permissions::from_mode(m)).unwrap();
            }
            if attrs.uid.is_some() || attrs.gid.is_some() {
                std::os::unix::fs::lchown(p(path), attrs.uid, attrs.gid).unwrap();
            }
            if let (Some(a), Some(m)) = (attrs.atime, attrs.mtime) {
                use nix::sys::stat::{UtimensatFlags, utimensat};
                use nix::sys::time::TimeSpec;
                let ts = |s: u32| TimeSpec::new(i64::from(s), 0);
                utimensat(
                    nix::fcntl::AT_FDCWD,
                    &p(path),
                    &ts(a),
                    &ts(m),
                    UtimensatFlags::NoFollowSymlink,
                )
                .unwrap();
            }
        }
        Op::Mkdir { path, mode } => {
            fs::create_dir(p(path)).unwrap();
            fs::set_permissions(p(path), fs::Permissions::from_mode(*mode)).unwrap();
        }
        Op::Rename { from, to } => fs::rename(p(from), p(to)).unwrap(),
        Op::Unlink { path } => fs::remove_file(p(path)).unwrap(),
        Op::Rmdir { path } => fs::remove_dir(p(path)).unwrap(),
        Op::Symlink { target, path } => std::os::unix::fs::symlink(target, p(path)).unwrap(),
        Op::Link { existing, new } => fs::hard_link(p(existing), p(new)).unwrap(),
    }
}

/// Everything compared below `root`, by relative path: type, mode, owner, link count, content
/// (or link target), and mtime for files and directories.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let m = fs::symlink_metadata(&path).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("link -> {}", fs::read_link(&path).unwrap().display())
            } else if m.is_dir() {
                stack.push(path.clone());
                format!("dir mtime {}", m.mtime())
            } else {
                let data = fs::read(&path).unwrap();
                format!(
                    "file {} bytes sha {} nlink {} mtime {}",
                    data.len(),
                    sha256(&path),
                    m.nlink(),
                    m.mtime()
                )
            };
            let mode = if m.file_type().is_symlink() {
                0
            } else {
                m.mode() & 0o7777
            };
            out.insert(
                rel,
                format!("{what} mode {mode:o} owner {}:{}", m.uid(), m.gid()),
            );
        }
    }
    out
}

/// Panics with the entries that differ (the whole trees are too long to read).
fn assert_same(got: BTreeMap<String, String>, want: &BTreeMap<String, String>) {
    let mut diff = Vec::new();
    for k in got
        .keys()
        .chain(want.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        if got.get(k) != want.get(k) {
            diff.push(format!(
                "{k}:\n  server: {:?}\n  wanted: {:?}",
                got.get(k),
                want.get(k)
            ));
        }
    }
    let n = diff.len();
    diff.truncate(10);
    assert!(
        n == 0,
        "{n} entries differ, first ones:\n{}",
        diff.join("\n")
    );
}

fn reference(ops: &[Op]) -> (TempDir, BTreeMap<String, String>) {
    let dir = TempDir::new("wb-ref");
    for op in ops {
        apply_local(dir.path(), op);
    }
    let snap = snapshot(dir.path());
    (dir, snap)
}

fn journal_of(dir: &Path, ops: &[Op]) -> Journal {
    let j = Journal::open(dir, u64::MAX).unwrap();
    for op in ops {
        j.append_now(op.clone()).unwrap();
    }
    j
}

async fn drained(r: &Replayer) {
    assert!(
        r.drain(Duration::from_secs(120)).await,
        "replay did not finish: {:?}",
        r.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journaled_tree_arrives_as_made_locally() {
    let sshd = Sshd::start();
    fs::create_dir(sshd.data.join("wb")).unwrap();
    let ops = tree_ops(200, 5000);
    let (_ref_dir, want) = reference(&ops);
    let state = TempDir::new("wb-journal");
    let j = journal_of(&state.path().join("j"), &ops);
    let started = Instant::now();
    let r = Replayer::start(j.clone(), connect(&sshd, "wb").await);
    drained(&r).await;
    let stats = r.stats();
    eprintln!("replayed {} records in {:?}", ops.len(), started.elapsed());
    assert_eq!(stats.conflicts, 0, "{:?}", stats.recent_conflicts);
    assert_eq!(stats.journal.pending_ops, 0);
    assert_same(snapshot(&sshd.data.join("wb")), &want);
    r.stop().await;
    // Everything applied: the segments are gone, a reopened journal has nothing to replay.
    drop(j);
    let j = Journal::open(&state.path().join("j"), u64::MAX).unwrap();
    assert_eq!(j.stats().pending_ops, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_cut_by_dropped_sessions_resumes_from_the_reopened_journal() {
    let sshd = Sshd::start();
    fs::create_dir(sshd.data.join("wb")).unwrap();
    let ops = tree_ops(300, 60_000);
    let (_ref_dir, want) = reference(&ops);
    let state = TempDir::new("wb-journal");
    let dir = state.path().join("j");
    let j = journal_of(&dir, &ops);
    let r = Replayer::start(j.clone(), connect(&sshd, "wb").await);
    let total = ops.len() as u64;
    let wait_past = |n: u64| {
        let r = &r;
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while r.stats().replayed_ops < n {
                assert!(Instant::now() < deadline, "replay stuck: {:?}", r.stats());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    // Cut once and let the same replayer carry on through the reconnect...
    wait_past(total / 4).await;
    sshd.kill_sessions();
    // ...then cut again and stop it there, as a plugin killed mid-replay.
    wait_past(total / 2).await;
    sshd.kill_sessions();
    r.stop().await;
    drop(j);
    let left = Journal::open(&dir, u64::MAX).unwrap();
    let pending = left.stats().pending_ops;
    assert!(
        pending > 0 && pending < total,
        "stopped midway ({pending} of {total} left)"
    );
    let r = Replayer::start(left, connect(&sshd, "wb").await);
    drained(&r).await;
    let stats = r.stats();
    assert_eq!(stats.conflicts, 0, "{:?}", stats.recent_conflicts);
    assert_same(snapshot(&sshd.data.join("wb")), &want);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_dropped_without_sync_replays_what_was_appended() {
    let sshd = Sshd::start();
    fs::create_dir(sshd.data.join("wb")).unwrap();
    let ops = tree_ops(20, 3000);
    let (_ref_dir, want) = reference(&ops);
    let state = TempDir::new("wb-journal");
    let dir = state.path().join("j");
    {
        // The process "dies": no sync, no replay; what write(2) took is in the files.
        let j = journal_of(&dir, &ops);
        drop(j);
    }
    let j = Journal::open(&dir, u64::MAX).unwrap();
    let got: Vec<Op> = j.pending_after(0).iter().map(|r| r.op.clone()).collect();
    assert_eq!(got, ops);
    let r = Replayer::start(j, connect(&sshd, "wb").await);
    drained(&r).await;
    assert_same(snapshot(&sshd.data.join("wb")), &want);
    r.stop().await;
}

/// The conflict rule: what the server changed under pending changes is never deleted or
/// overwritten by a create, each skipped change is counted with its reason, and the rest goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_are_skipped_and_counted_never_forced() {
    let sshd = Sshd::start();
    let root = sshd.data.join("wb");
    fs::create_dir_all(root.join("full")).unwrap();
    fs::write(root.join("full/theirs"), b"someone else's").unwrap();
    fs::write(root.join("taken"), b"their file").unwrap();
    let s = |p: &str| p.to_string();
    let ops = vec![
        // Someone else already made "taken": our create and what follows through it skip.
        Op::Create {
            path: s("taken"),
            mode: 0o644,
            uid: None,
            gid: None,
        },
        Op::Write {
            path: s("taken"),
            offset: 0,
            data: b"ours".to_vec().into(),
        },
        Op::Rename {
            from: s("taken"),
            to: s("ours-renamed"),
        },
        Op::Write {
            path: s("ours-renamed"),
            offset: 0,
            data: b"more".to_vec().into(),
        },
        // A directory that is not empty on the server stays.
        Op::Rmdir { path: s("full") },
        // Already gone on the server.
        Op::Unlink {
            path: s("never-there"),
        },
        // And an ordinary change still goes.
        Op::Mkdir {
            path: s("new"),
            mode: 0o750,
        },
    ];
    let state = TempDir::new("wb-journal");
    let j = journal_of(&state.path().join("j"), &ops);
    let r = Replayer::start(j, connect(&sshd, "wb").await);
    drained(&r).await;
    let stats = r.stats();
    assert_eq!(
        fs::read(root.join("taken")).unwrap(),
        b"their file",
        "{stats:?}"
    );
    assert!(!root.join("ours-renamed").exists());
    assert_eq!(
        fs::read(root.join("full/theirs")).unwrap(),
        b"someone else's"
    );
    assert!(root.join("new").is_dir());
    assert_eq!(
        fs::metadata(root.join("new")).unwrap().mode() & 0o7777,
        0o750
    );
    // The write through the renamed name is skipped either way: as a conflict of its own, or
    // with the rename it depends on (which one depends on when the replayer sees it).
    assert!(
        (4..=5).contains(&stats.conflicts),
        "{} conflicts: {:?}",
        stats.conflicts,
        stats.recent_conflicts
    );
    assert_eq!(stats.journal.pending_ops, 0);
    let all = stats.recent_conflicts.join("\n");
    for what in [
        "create taken",
        "earlier change to taken",
        "rmdir full",
        "unlink never-there",
    ] {
        assert!(all.contains(what), "{what} in {all}");
    }
    r.stop().await;
}
