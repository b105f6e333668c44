//! Memory bounds of a real mount: a walk of a tree of big directories must not grow the mount
//! process's memory past the bound documented in the README (limits), `src/fs/ahead.rs` and
//! `src/fs/inodes.rs` (the inode table is trimmed past `NODES_MAX`, so the bound does not grow
//! with the number of names).
//!
//! The tree is made on the server's side directly (in the sshd's data directory on local
//! disk), then walked through the mount as `ls -lR` does (list each directory, stat each
//! entry) while the mount process's peak RSS (`VmHWM`) is read from `/proc`.

mod common;

use std::fs;
use std::path::Path;
use std::time::Instant;

use common::*;

/// Directories in the tree, as in issue 11.
const DIRS: usize = 300;
/// Files per directory. Issue 11 asks for 20,000 (run by hand: `BOUNDS_FILES=20000`, 14 minutes,
/// peak 346 MiB against a bound of 393 MiB); 6 million files take minutes to make and walk
/// on a 2-core machine, so the test makes fewer, with long names to keep the bytes large
/// (`BOUNDS_FILES` overrides it).
const FILES: usize = 4000;
/// Length of each file name: long names are what makes a listing big.
const NAME_LEN: usize = 200;

/// What the listings and what was fetched ahead of use may hold at once (README, limits):
/// `ahead::LISTINGS_KEPT_MAX` + `ahead::RECENT_KEPT_MAX` + `readdir::NAMES_KEPT_MAX`.
const LISTING_CACHES_MAX: u64 = (32 + 16 + 16) << 20;
/// Listings being fetched ahead at once (`ahead::PREFETCH_PARALLEL`), each held whole until
/// it is measured, plus the one being read.
const LISTINGS_IN_FLIGHT: u64 = 16 + 1;
/// What one name the kernel holds costs in the inode table besides twice its path (README,
/// limits): the node, the two indexes and their growth.
const INODE_BYTES_PER_NAME: u64 = 640;
/// Names the inode table holds at most (`inodes::NODES_MAX`), plus what a walk adds while a
/// trim's FORGETs come back: the bound does not grow with the names walked.
const NAMES_HELD_MAX: u64 = 100_000 + 50_000;
/// Allocator slack and the walk's own noise on top of the mount's RSS before the walk.
const SLACK: u64 = 48 << 20;

fn name(i: usize) -> String {
    let mut n = format!("{i:06}-");
    n.push_str(&"n".repeat(NAME_LEN - n.len()));
    n
}

/// Makes `dirs` x `files` empty files under `root`, two threads at a time. The files of a
/// directory are hard links of one (a link is one system call and allocates no inode: fast,
/// and light on the disk), which changes nothing for a listing.
fn make_tree(root: &Path, dirs: usize, files: usize) {
    fs::create_dir_all(root).unwrap();
    std::thread::scope(|s| {
        for part in 0..2 {
            s.spawn(move || {
                for d in (part..dirs).step_by(2) {
                    let dir = root.join(format!("d{d:03}"));
                    fs::create_dir(&dir).unwrap();
                    let first = dir.join(name(0));
                    fs::File::create(&first).unwrap();
                    for f in 1..files {
                        fs::hard_link(&first, dir.join(name(f))).unwrap();
                    }
                }
            });
        }
    });
}

#[test]
fn walking_big_directories_stays_within_the_memory_bound() {
    let files: usize = std::env::var("BOUNDS_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(FILES);
    let sshd = Sshd::start();
    let t = Instant::now();
    make_tree(&sshd.data.join("tree"), DIRS, files);
    eprintln!("made {DIRS} x {files} files in {:?}", t.elapsed());

    let m = Mount::root(&sshd, "tree", "");
    let pid = m.pid().expect("mount process");
    fs::metadata(m.path("")).unwrap();
    let before = status_kib(pid, "VmRSS:") << 10;

    let t = Instant::now();
    let mut seen = 0usize;
    let mut dirs: Vec<_> = fs::read_dir(m.path(""))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    assert_eq!(dirs.len(), DIRS);
    for d in &dirs {
        for e in fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            fs::symlink_metadata(e.path()).unwrap();
            seen += 1;
        }
    }
    assert_eq!(seen, DIRS * files);
    let peak = status_kib(pid, "VmHWM:") << 10;
    let after = status_kib(pid, "VmRSS:") << 10;
    eprintln!("walked {seen} names in {:?}", t.elapsed());

    let names = (DIRS * files) as u64;
    // Paths are `dNNN/<name>`.
    let path_len = NAME_LEN as u64 + 5;
    let listing_bytes = files as u64 * (NAME_LEN as u64 + 170);
    let bound = before
        + SLACK
        + LISTING_CACHES_MAX
        + LISTINGS_IN_FLIGHT * listing_bytes
        + names.min(NAMES_HELD_MAX) * (2 * path_len + INODE_BYTES_PER_NAME);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "mount RSS: {:.1} MiB before the walk, peak {:.1} MiB, {:.1} MiB after; bound {:.1} MiB \
         ({names} names; listings {:.1} MiB each)",
        mib(before),
        mib(peak),
        mib(after),
        mib(bound),
        mib(listing_bytes),
    );
    assert!(
        peak <= bound,
        "the mount's peak RSS {:.1} MiB is above the bound {:.1} MiB",
        mib(peak),
        mib(bound)
    );
}
