//! Real-filesystem tests of `docker-volume-sshfs mount`: a throwaway OpenSSH server on loopback,
//! a real FUSE mount made by the built command, POSIX operations through the mount checked
//! against the server's files on the local disk, and the command's error messages.
//!
//! Every test starts its own sshd and mount (unique port and directories), so tests run in
//! parallel. Needs root and /dev/fuse. Run with `cargo test --test fs`.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

#[test]
fn create_write_read_both_ways() {
    let mnt = Mounted::root("");

    fs::write(mnt.path("hello.txt"), b"hello through the mount\n").expect("write via mount");
    assert_eq!(
        fs::read(mnt.server("hello.txt")).expect("file on the server"),
        b"hello through the mount\n",
        "a file written and closed through the mount must be on the server"
    );
    assert_eq!(
        fs::read(mnt.path("hello.txt")).expect("read back via mount"),
        b"hello through the mount\n"
    );

    fs::write(mnt.server("from-server.txt"), b"made on the server").unwrap();
    assert_eq!(
        fs::read(mnt.path("from-server.txt")).expect("read a server-made file via mount"),
        b"made on the server"
    );

    fs::create_dir(mnt.path("sub")).expect("mkdir via mount");
    assert!(
        mnt.server("sub").is_dir(),
        "mkdir must create the remote dir"
    );
    fs::write(mnt.path("sub/inner"), b"x").unwrap();
    fs::remove_file(mnt.path("sub/inner")).expect("unlink via mount");
    assert!(
        !mnt.server("sub/inner").exists(),
        "unlink must remove the remote file"
    );
    fs::remove_dir(mnt.path("sub")).expect("rmdir of an empty dir");
    assert!(
        !mnt.server("sub").exists(),
        "rmdir must remove the remote dir"
    );
    assert_eq!(
        fs::metadata(mnt.path("nope"))
            .map_err(|e| e.kind())
            .unwrap_err(),
        ErrorKind::NotFound,
        "a missing file must give ENOENT"
    );
}

#[test]
fn large_file_round_trips_byte_for_byte() {
    const SIZE: usize = 100 * 1024 * 1024 + 12345; // 100 MiB + an odd tail
    let mnt = Mounted::root("");
    let scratch = TempDir::new("big");

    // Local file -> through the mount -> server disk.
    let src = scratch.path().join("src.bin");
    write_random_file(&src, 42, SIZE);
    let want = sha256(&src);
    {
        let mut from = File::open(&src).unwrap();
        let mut to = File::create(mnt.path("up.bin")).expect("create via mount");
        let n = std::io::copy(&mut from, &mut to).expect("copy 100 MiB into the mount");
        assert_eq!(n as usize, SIZE);
        to.sync_all().expect("fsync via mount");
    }
    assert_eq!(
        fs::metadata(mnt.server("up.bin")).unwrap().len() as usize,
        SIZE,
        "server-side size after writing through the mount"
    );
    assert_eq!(
        sha256(&mnt.server("up.bin")),
        want,
        "server-side sha256 differs from what was written through the mount"
    );
    assert_eq!(
        sha256(&mnt.path("up.bin")),
        want,
        "reading back through the mount differs"
    );

    // Server disk -> read through the mount (never seen by the mount before).
    write_random_file(&mnt.server("down.bin"), 7, SIZE);
    let want = sha256(&mnt.server("down.bin"));
    assert_eq!(
        fs::metadata(mnt.path("down.bin")).unwrap().len() as usize,
        SIZE,
        "size through the mount"
    );
    assert_eq!(
        sha256(&mnt.path("down.bin")),
        want,
        "a server file read through the mount differs byte-wise"
    );
}

#[test]
fn rename_overwrites_existing_file() {
    let mnt = Mounted::root("");
    fs::write(mnt.path("a"), b"AAA").unwrap();
    fs::write(mnt.path("b"), b"BB").unwrap();
    fs::rename(mnt.path("a"), mnt.path("b")).expect("rename over an existing file must succeed");
    assert_eq!(
        fs::read(mnt.path("b")).unwrap(),
        b"AAA",
        "target content via mount"
    );
    assert!(!mnt.path("a").exists(), "source must be gone via mount");
    assert_eq!(
        fs::read(mnt.server("b")).unwrap(),
        b"AAA",
        "target on server"
    );
    assert!(
        !mnt.server("a").exists(),
        "source must be gone on the server"
    );

    // Directories too, and a plain rename to a new name.
    fs::create_dir(mnt.path("d1")).unwrap();
    fs::write(mnt.path("d1/f"), b"in d1").unwrap();
    fs::rename(mnt.path("d1"), mnt.path("d2")).expect("rename a directory");
    assert_eq!(fs::read(mnt.path("d2/f")).unwrap(), b"in d1");
    assert_eq!(fs::read(mnt.server("d2/f")).unwrap(), b"in d1");
}

#[test]
fn symlink_and_readlink() {
    let mnt = Mounted::root("");
    fs::write(mnt.path("target.txt"), b"pointed at").unwrap();
    std::os::unix::fs::symlink("target.txt", mnt.path("link")).expect("symlink via mount");
    assert_eq!(
        fs::read_link(mnt.path("link")).expect("readlink via mount"),
        Path::new("target.txt")
    );
    assert_eq!(
        fs::read_link(mnt.server("link")).expect("the server must have a symlink"),
        Path::new("target.txt"),
        "server-side symlink target (OpenSSH takes SYMLINK arguments reversed)"
    );
    assert!(
        fs::symlink_metadata(mnt.path("link"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "lstat via mount must report a symlink"
    );
    assert_eq!(
        fs::read(mnt.path("link")).unwrap(),
        b"pointed at",
        "follow via mount"
    );

    // A dangling absolute link made on the server reads back unchanged.
    std::os::unix::fs::symlink("/nonexistent/abs", mnt.server("dangling")).unwrap();
    assert_eq!(
        fs::read_link(mnt.path("dangling")).unwrap(),
        Path::new("/nonexistent/abs")
    );
}

#[test]
fn hard_link_shares_content() {
    let mnt = Mounted::root("");
    fs::write(mnt.path("orig"), b"shared bytes").unwrap();
    fs::hard_link(mnt.path("orig"), mnt.path("alias")).expect("link() via mount");
    assert_eq!(fs::read(mnt.path("alias")).unwrap(), b"shared bytes");
    assert_eq!(
        fs::metadata(mnt.path("alias")).unwrap().nlink(),
        2,
        "nlink of the new name via mount"
    );
    let so = fs::metadata(mnt.server("orig")).unwrap();
    let sa = fs::metadata(mnt.server("alias")).unwrap();
    assert_eq!(
        (so.ino(), so.nlink()),
        (sa.ino(), 2),
        "server: one inode, two links"
    );
}

/// Small files are opened and read ahead while a directory is read file by file: what was read
/// ahead must never hide a change made through the mount, nor a different size.
#[test]
fn files_read_ahead_follow_changes_through_the_mount() {
    let mnt = Mounted::prepared("", |data| {
        fs::create_dir(data.join("d")).unwrap();
        for i in 0..12 {
            fs::write(data.join(format!("d/f{i}")), format!("old {i}")).unwrap();
        }
    });
    let names: Vec<String> = fs::read_dir(mnt.path("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 12);
    let content = |n: &str| format!("old {}", &n[1..]).into_bytes();
    // Reading files in listing order starts reading the next ones ahead.
    for n in &names[..2] {
        assert_eq!(fs::read(mnt.path("d").join(n)).unwrap(), content(n), "{n}");
    }
    std::thread::sleep(Duration::from_millis(200));
    fs::write(mnt.path("d").join(&names[2]), b"new, and longer").unwrap();
    assert_eq!(
        fs::read(mnt.path("d").join(&names[2])).unwrap(),
        b"new, and longer",
        "a file changed through the mount after it was read ahead"
    );
    for n in &names[3..] {
        assert_eq!(fs::read(mnt.path("d").join(n)).unwrap(), content(n), "{n}");
    }
    // Appending through an open handle: reads through another handle see it at once.
    let mut w = OpenOptions::new()
        .append(true)
        .open(mnt.path("d").join(&names[0]))
        .unwrap();
    let mut r = File::open(mnt.path("d").join(&names[0])).unwrap();
    w.write_all(b"+").unwrap();
    w.flush().unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    let mut want = content(&names[0]);
    want.push(b'+');
    assert_eq!(got, want);
}

#[test]
fn rmdir_non_empty_is_enotempty() {
    let mnt = Mounted::root("");
    fs::create_dir(mnt.path("full")).unwrap();
    fs::write(mnt.path("full/f"), b"x").unwrap();
    let e = fs::remove_dir(mnt.path("full")).expect_err("rmdir of a non-empty dir must fail");
    assert_eq!(errno(&e), libc::ENOTEMPTY, "rmdir of a non-empty dir: {e}");
    assert!(mnt.server("full/f").exists(), "nothing may be deleted");
    let e = fs::remove_dir(mnt.path("missing")).expect_err("rmdir of a missing dir");
    assert_eq!(errno(&e), libc::ENOENT, "rmdir of a missing dir: {e}");
}

/// An rmdir after the directory was listed and some of it removed: what is left, or made or
/// moved there after the listing, keeps it from going (write-back mode answers an rmdir from
/// the last listing when only removals followed it).
#[test]
fn rmdir_after_a_listing_sees_what_is_left_and_what_came_since() {
    let mnt = Mounted::root("");
    fs::create_dir_all(mnt.server("d")).unwrap();
    for n in ["a", "b"] {
        fs::write(mnt.server(format!("d/{n}")), n).unwrap();
    }
    fs::write(mnt.server("elsewhere"), b"e").unwrap();
    let listed = |p: &str| fs::read_dir(mnt.path(p)).unwrap().count();
    assert_eq!(listed("d"), 2);
    fs::remove_file(mnt.path("d/a")).unwrap();
    let e = fs::remove_dir(mnt.path("d")).expect_err("b is left");
    assert_eq!(errno(&e), libc::ENOTEMPTY, "{e}");
    assert_eq!(listed("d"), 1);
    fs::write(mnt.path("d/c"), b"c").unwrap();
    // On the server, and (in write-back mode) forgotten by the mount's view of pending
    // changes: only the listing could say what is in d now.
    assert!(mnt.server("d/c").exists());
    std::thread::sleep(Duration::from_millis(200));
    fs::remove_file(mnt.path("d/b")).unwrap();
    let e = fs::remove_dir(mnt.path("d")).expect_err("c was made after the listing");
    assert_eq!(errno(&e), libc::ENOTEMPTY, "{e}");
    assert_eq!(listed("d"), 1);
    fs::rename(mnt.path("elsewhere"), mnt.path("d/moved")).unwrap();
    assert!(mnt.server("d/moved").exists());
    std::thread::sleep(Duration::from_millis(200));
    fs::remove_file(mnt.path("d/c")).unwrap();
    let e = fs::remove_dir(mnt.path("d")).expect_err("a name was moved in after the listing");
    assert_eq!(errno(&e), libc::ENOTEMPTY, "{e}");
    fs::remove_file(mnt.path("d/moved")).unwrap();
    fs::remove_dir(mnt.path("d")).unwrap();
    assert!(!mnt.server("d").exists());
}

#[test]
fn truncate_shrinks_and_grows() {
    let mnt = Mounted::root("");
    let data = pseudo_random(1, 10_000);
    fs::write(mnt.path("t"), &data).unwrap();

    let f = OpenOptions::new().write(true).open(mnt.path("t")).unwrap();
    f.set_len(100).expect("ftruncate shrink");
    drop(f);
    assert_eq!(
        fs::metadata(mnt.path("t")).unwrap().len(),
        100,
        "size via mount"
    );
    assert_eq!(
        fs::read(mnt.server("t")).unwrap(),
        &data[..100],
        "server after shrink"
    );

    // truncate(2) by path, growing: the new bytes read as zeros.
    nix::unistd::truncate(&mnt.path("t"), 5000).expect("truncate grow");
    let got = fs::read(mnt.path("t")).unwrap();
    assert_eq!(got.len(), 5000, "size after growing");
    assert_eq!(&got[..100], &data[..100], "kept bytes after growing");
    assert!(
        got[100..].iter().all(|&b| b == 0),
        "grown part must be zeros"
    );
    assert_eq!(
        fs::metadata(mnt.server("t")).unwrap().len(),
        5000,
        "server size"
    );

    // O_TRUNC on open.
    fs::write(mnt.path("t"), b"short").unwrap();
    assert_eq!(
        fs::read(mnt.server("t")).unwrap(),
        b"short",
        "O_TRUNC rewrite"
    );
}

/// Linux truncates on open(O_RDONLY|O_TRUNC) when the caller may write the file (the access
/// check asks for write permission); the mount must do the same, not only for writers.
#[test]
fn read_only_open_with_o_trunc_truncates_as_linux_does() {
    let mnt = Mounted::root("");
    let local = TempDir::new("otrunc");
    for dir in [local.path(), mnt.path("").as_path()] {
        fs::write(dir.join("r"), b"some bytes").unwrap();
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_TRUNC)
            .open(dir.join("r"))
            .expect("open O_RDONLY|O_TRUNC");
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        assert_eq!(
            (got.len(), f.metadata().unwrap().len()),
            (0, 0),
            "{}: content and size after open(O_RDONLY|O_TRUNC)",
            dir.display()
        );
    }
    assert_eq!(
        fs::read(mnt.server("r")).unwrap(),
        b"",
        "server after O_RDONLY|O_TRUNC"
    );
}

#[test]
fn chmod_files_and_dirs() {
    let mnt = Mounted::root("");
    fs::write(mnt.path("f"), b"x").unwrap();
    for mode in [0o640, 0o755, 0o600, 0o4755] {
        fs::set_permissions(mnt.path("f"), fs::Permissions::from_mode(mode)).expect("chmod");
        assert_eq!(
            fs::metadata(mnt.path("f")).unwrap().mode() & 0o7777,
            mode,
            "mode via mount after chmod {mode:o}"
        );
        assert_eq!(
            fs::metadata(mnt.server("f")).unwrap().mode() & 0o7777,
            mode,
            "mode on the server after chmod {mode:o}"
        );
    }
    fs::create_dir(mnt.path("d")).unwrap();
    fs::set_permissions(mnt.path("d"), fs::Permissions::from_mode(0o711)).unwrap();
    assert_eq!(
        fs::metadata(mnt.server("d")).unwrap().mode() & 0o7777,
        0o711
    );
    assert!(fs::metadata(mnt.path("d")).unwrap().is_dir());
}

#[test]
fn set_mtime() {
    let mnt = Mounted::root("");
    fs::write(mnt.path("f"), b"x").unwrap();
    let t = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    // utimensat by path (no open handle).
    let ts = nix::sys::time::TimeSpec::new(1_600_000_000, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &mnt.path("f"),
        &ts,
        &ts,
        nix::sys::stat::UtimensatFlags::FollowSymlink,
    )
    .expect("utimensat via mount");
    assert_eq!(
        fs::metadata(mnt.path("f")).unwrap().modified().unwrap(),
        t,
        "mtime via mount"
    );
    assert_eq!(
        fs::metadata(mnt.server("f")).unwrap().modified().unwrap(),
        t,
        "mtime on the server"
    );
    // futimens on an open handle.
    let t2 = UNIX_EPOCH + Duration::from_secs(1_234_567_890);
    let f = OpenOptions::new().write(true).open(mnt.path("f")).unwrap();
    f.set_times(fs::FileTimes::new().set_modified(t2).set_accessed(t2))
        .expect("futimens via mount");
    drop(f);
    assert_eq!(fs::metadata(mnt.path("f")).unwrap().modified().unwrap(), t2);
    assert_eq!(
        fs::metadata(mnt.server("f")).unwrap().modified().unwrap(),
        t2
    );
    // Writing afterwards moves mtime to about now.
    fs::write(mnt.path("f"), b"later").unwrap();
    let now = SystemTime::now();
    let mt = fs::metadata(mnt.server("f")).unwrap().modified().unwrap();
    assert!(
        now.duration_since(mt).unwrap_or_default() < Duration::from_secs(60),
        "a write must update the server mtime"
    );
}

/// tar's pattern: write, then fchmod and futimens on the same handle, then close. The
/// metadata is sent right behind writes still in flight and must land after them: the
/// server's file keeps the explicit mtime, not the time of the last write.
#[test]
fn times_and_mode_set_before_close_survive_queued_writes() {
    let mnt = Mounted::root("");
    let t = UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    let data: Vec<u8> = (0..24 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    for name in ["one-handle", "two-handles"] {
        let mut f = File::create(mnt.path(name)).unwrap();
        f.write_all(&data).unwrap();
        // A second handle's writes are on another request stream: the metadata must wait.
        let other = (name == "two-handles").then(|| {
            let mut g = OpenOptions::new().write(true).open(mnt.path(name)).unwrap();
            g.seek(SeekFrom::End(0)).unwrap();
            g.write_all(b"tail").unwrap();
            g
        });
        f.set_permissions(fs::Permissions::from_mode(0o640))
            .unwrap();
        f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
            .unwrap();
        drop(f);
        drop(other);
        let on_server = mnt.server(name);
        let meta = fs::metadata(&on_server).unwrap();
        assert_eq!(meta.modified().unwrap(), t, "{name}: server mtime");
        assert_eq!(meta.mode() & 0o7777, 0o640, "{name}: server mode");
        let mut want = data.clone();
        if name == "two-handles" {
            want.extend_from_slice(b"tail");
        }
        assert!(
            fs::read(&on_server).unwrap() == want,
            "{name}: server content"
        );
        assert_eq!(fs::metadata(mnt.path(name)).unwrap().modified().unwrap(), t);
    }
}

/// `tar -x` through the mount restores every file's content, mode and mtime.
#[test]
fn untar_restores_content_modes_and_times() {
    let mnt = Mounted::root("");
    let scratch = TempDir::new("tar");
    let src = scratch.path().join("tree");
    for i in 0..60u64 {
        let dir = src.join(format!("d{}", i % 6));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join(format!("f{i}"));
        let len = (i * i * 997) % (300 * 1024) as u64;
        fs::write(&f, (0..len).map(|b| (b * 7 + i) as u8).collect::<Vec<u8>>()).unwrap();
        fs::set_permissions(
            &f,
            fs::Permissions::from_mode(0o600 + (i % 2) as u32 * 0o155),
        )
        .unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(1_400_000_000 + i * 3600);
        File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
            .unwrap();
    }
    let tarball = scratch.path().join("tree.tar");
    run(std::process::Command::new("tar")
        .arg("-C")
        .arg(scratch.path())
        .arg("-cf")
        .arg(&tarball)
        .arg("tree"));
    run(std::process::Command::new("tar")
        .arg("-C")
        .arg(mnt.path(""))
        .arg("-xpf")
        .arg(&tarball));
    for i in 0..60u64 {
        let rel = format!("d{}/f{i}", i % 6);
        let (a, b) = (src.join(&rel), mnt.server("tree").join(&rel));
        let (ma, mb) = (fs::metadata(&a).unwrap(), fs::metadata(&b).unwrap());
        assert_eq!(
            mb.modified().unwrap(),
            ma.modified().unwrap(),
            "{rel}: mtime"
        );
        assert_eq!(mb.mode() & 0o7777, ma.mode() & 0o7777, "{rel}: mode");
        assert!(
            fs::read(&a).unwrap() == fs::read(&b).unwrap(),
            "{rel}: content"
        );
    }
}

#[test]
fn statfs_reports_server_disk() {
    let mnt = Mounted::root("");
    let ours = nix::sys::statvfs::statvfs(&mnt.mount.mountpoint).expect("statvfs via mount");
    let theirs = nix::sys::statvfs::statvfs(&mnt.sshd.data).unwrap();
    assert!(ours.blocks() > 0, "f_blocks must be non-zero");
    assert!(
        ours.block_size() > 0 && ours.fragment_size() > 0,
        "block sizes"
    );
    assert!(ours.files() > 0, "f_files must be non-zero");
    assert!(ours.name_max() >= 255, "f_namemax {}", ours.name_max());
    let total = |s: &nix::sys::statvfs::Statvfs| s.blocks() as f64 * s.fragment_size() as f64;
    let avail =
        |s: &nix::sys::statvfs::Statvfs| s.blocks_available() as f64 * s.fragment_size() as f64;
    let (to, tt) = (total(&ours), total(&theirs));
    assert!(
        (to - tt).abs() / tt < 0.01,
        "total size via mount {to} vs server disk {tt}"
    );
    let (ao, at) = (avail(&ours), avail(&theirs));
    assert!(
        (ao - at).abs() / tt < 0.05,
        "available via mount {ao} vs server disk {at}"
    );
}

#[test]
fn list_500_entries_with_sizes() {
    let mnt = Mounted::root("");
    fs::create_dir(mnt.server("many")).unwrap();
    let mut want = Vec::new();
    for i in 0..500usize {
        let name = format!("entry-{i:04}-{}", "n".repeat(i % 40));
        fs::write(mnt.server("many").join(&name), vec![b'z'; i * 3]).unwrap();
        want.push((name, (i * 3) as u64));
    }
    let mut got = Vec::new();
    for e in fs::read_dir(mnt.path("many")).expect("readdir via mount") {
        let e = e.expect("readdir entry");
        let md = e.metadata().expect("lstat of a listed entry");
        assert!(md.is_file(), "{:?} must be a file", e.file_name());
        got.push((e.file_name().into_string().unwrap(), md.len()));
    }
    got.sort();
    assert_eq!(got.len(), 500, "entry count (without . and ..)");
    assert_eq!(got, want, "names and sizes of 500 entries");
}

#[test]
fn three_hundred_files_open_at_once() {
    let mnt = Mounted::root("");
    fs::create_dir(mnt.path("open")).unwrap();
    let mut files: Vec<File> = (0..300)
        .map(|i| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(mnt.path(&format!("open/f{i}")))
                .unwrap_or_else(|e| panic!("open file #{i} of 300 at once: {e}"))
        })
        .collect();
    for (i, f) in files.iter_mut().enumerate() {
        f.write_all(format!("content of file {i}\n").as_bytes())
            .unwrap_or_else(|e| panic!("write to open file #{i}: {e}"));
    }
    for (i, f) in files.iter_mut().enumerate() {
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s)
            .unwrap_or_else(|e| panic!("read back open file #{i}: {e}"));
        assert_eq!(
            s,
            format!("content of file {i}\n"),
            "file #{i} via its open handle"
        );
    }
    // A second round of 300 read-only handles while the first 300 are still open.
    let readers: Vec<File> = (0..300)
        .map(|i| File::open(mnt.path(&format!("open/f{i}"))).expect("open for reading"))
        .collect();
    for (i, mut f) in readers.into_iter().enumerate() {
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(
            s,
            format!("content of file {i}\n"),
            "file #{i} via a second handle"
        );
    }
    for (i, f) in files.into_iter().enumerate() {
        f.sync_all()
            .unwrap_or_else(|e| panic!("fsync file #{i}: {e}"));
    }
    for i in 0..300 {
        assert_eq!(
            fs::read_to_string(mnt.server(format!("open/f{i}"))).unwrap(),
            format!("content of file {i}\n"),
            "server copy of file #{i}"
        );
    }
}

#[test]
fn parallel_readers_and_writers() {
    const WRITE: usize = 8 << 20;
    let mnt = Mounted::root("");
    write_random_file(&mnt.server("shared.bin"), 99, 16 << 20);
    let shared_sum = sha256(&mnt.server("shared.bin"));
    let shared = fs::read(mnt.server("shared.bin")).unwrap();

    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for w in 0..4u64 {
            let path = mnt.path(&format!("w{w}.bin"));
            handles.push(s.spawn(move || {
                let data = pseudo_random(1000 + w, WRITE);
                let mut f = File::create(&path).unwrap();
                for c in data.chunks(64 * 1024 + 17 * w as usize) {
                    f.write_all(c).expect("parallel write");
                }
                f.sync_all().expect("parallel fsync");
                drop(f);
                assert!(
                    fs::read(&path).unwrap() == data,
                    "writer {w} read back differs"
                );
            }));
        }
        for r in 0..4usize {
            let path = mnt.path("shared.bin");
            let shared = &shared;
            handles.push(s.spawn(move || {
                for round in 0..2 {
                    let mut f = File::open(&path).unwrap();
                    // Each reader walks the file with a different chunk size.
                    let mut buf = vec![0u8; 4096 * (r + 1) + 13];
                    let mut off = 0;
                    loop {
                        let n = f.read(&mut buf).expect("parallel read");
                        if n == 0 {
                            break;
                        }
                        assert!(
                            buf[..n] == shared[off..off + n],
                            "reader {r} round {round}: bytes at {off} differ"
                        );
                        off += n;
                    }
                    assert_eq!(off, shared.len(), "reader {r} round {round} length");
                }
            }));
        }
        for h in handles {
            h.join().expect("a reader or writer thread failed");
        }
    });
    for w in 0..4u64 {
        assert!(
            fs::read(mnt.server(format!("w{w}.bin"))).unwrap() == pseudo_random(1000 + w, WRITE),
            "server copy of writer {w}'s file differs"
        );
    }
    assert_eq!(
        sha256(&mnt.server("shared.bin")),
        shared_sum,
        "readers must not modify"
    );
}

#[test]
fn o_excl_on_existing_file_is_eexist() {
    let mnt = Mounted::root("");
    fs::write(mnt.server("exists"), b"keep me").unwrap();
    let e = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(mnt.path("exists"))
        .expect_err("O_CREAT|O_EXCL on an existing file must fail");
    assert_eq!(errno(&e), libc::EEXIST, "O_EXCL on an existing file: {e}");
    assert_eq!(
        fs::read(mnt.server("exists")).unwrap(),
        b"keep me",
        "must not truncate"
    );
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(mnt.path("fresh"))
        .expect("O_EXCL on a new name must succeed");
    f.write_all(b"new").unwrap();
    drop(f);
    assert_eq!(fs::read(mnt.server("fresh")).unwrap(), b"new");
    assert_eq!(
        fs::metadata(mnt.server("fresh")).unwrap().mode() & 0o777,
        0o600,
        "create mode must reach the server"
    );
}

#[test]
fn o_append_always_writes_at_end() {
    let mnt = Mounted::root("");
    fs::write(mnt.path("log"), b"abc").unwrap();
    let mut f = OpenOptions::new()
        .append(true)
        .open(mnt.path("log"))
        .unwrap();
    f.write_all(b"def").unwrap();
    drop(f);
    assert_eq!(
        fs::read(mnt.server("log")).unwrap(),
        b"abcdef",
        "first append"
    );

    // Two append handles interleaving; a seek does not defeat O_APPEND.
    let mut a = OpenOptions::new()
        .read(true)
        .append(true)
        .open(mnt.path("log"))
        .unwrap();
    let mut b = OpenOptions::new()
        .append(true)
        .open(mnt.path("log"))
        .unwrap();
    a.write_all(b"1").unwrap();
    a.flush().unwrap();
    a.sync_all().unwrap();
    b.write_all(b"2").unwrap();
    b.sync_all().unwrap();
    a.seek(SeekFrom::Start(0)).unwrap();
    a.write_all(b"3").unwrap();
    drop(a);
    drop(b);
    assert_eq!(
        fs::read(mnt.path("log")).unwrap(),
        b"abcdef123",
        "via mount"
    );
    assert_eq!(
        fs::read(mnt.server("log")).unwrap(),
        b"abcdef123",
        "on the server"
    );

    // Server-side growth is honoured by a later append through the mount.
    std::thread::sleep(Duration::from_millis(1100));
    fs::OpenOptions::new()
        .append(true)
        .open(mnt.server("log"))
        .unwrap()
        .write_all(b"S")
        .unwrap();
    let mut c = OpenOptions::new()
        .append(true)
        .open(mnt.path("log"))
        .unwrap();
    c.write_all(b"M").unwrap();
    drop(c);
    assert_eq!(fs::read(mnt.server("log")).unwrap(), b"abcdef123SM");
}

#[test]
fn server_side_changes_visible_after_cache_timeout() {
    let mnt = Mounted::root("cache_timeout=1");
    fs::create_dir(mnt.server("d")).unwrap();
    fs::write(mnt.server("d/f"), b"version one").unwrap();
    assert_eq!(fs::read(mnt.path("d/f")).unwrap(), b"version one");
    assert_eq!(fs::read_dir(mnt.path("d")).unwrap().count(), 1);

    fs::write(mnt.server("d/f"), b"version two, longer").unwrap();
    fs::write(mnt.server("d/new"), b"n").unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        fs::metadata(mnt.path("d/f")).unwrap().len(),
        19,
        "size of a file changed on the server, after the cache timeout"
    );
    assert_eq!(
        fs::read(mnt.path("d/f")).unwrap(),
        b"version two, longer",
        "content of a file changed on the server, after the cache timeout"
    );
    let mut names: Vec<String> = fs::read_dir(mnt.path("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["f", "new"],
        "a file created on the server appears in the listing"
    );

    fs::remove_file(mnt.server("d/new")).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        !mnt.path("d/new").exists(),
        "a file deleted on the server must disappear after the cache timeout"
    );
}

#[test]
fn cache_off_sees_server_changes_at_once() {
    let mnt = Mounted::root("cache=no");
    fs::write(mnt.server("f"), b"one").unwrap();
    assert_eq!(fs::read(mnt.path("f")).unwrap(), b"one");
    fs::write(mnt.server("f"), b"two!").unwrap();
    assert_eq!(
        fs::metadata(mnt.path("f")).unwrap().len(),
        4,
        "cache=no: size at once"
    );
    assert_eq!(
        fs::read(mnt.path("f")).unwrap(),
        b"two!",
        "cache=no: content at once"
    );
}

#[test]
fn own_changes_visible_at_once() {
    let mnt = Mounted::root("cache_timeout=60");
    fs::create_dir(mnt.path("d")).unwrap();
    assert_eq!(fs::read_dir(mnt.path("d")).unwrap().count(), 0);
    fs::write(mnt.path("d/a"), b"1").unwrap();
    assert_eq!(
        fs::read_dir(mnt.path("d")).unwrap().count(),
        1,
        "listing after create"
    );
    fs::write(mnt.path("d/a"), b"123456").unwrap();
    assert_eq!(
        fs::metadata(mnt.path("d/a")).unwrap().len(),
        6,
        "size after rewrite"
    );
    fs::rename(mnt.path("d/a"), mnt.path("d/b")).unwrap();
    assert!(!mnt.path("d/a").exists(), "old name after rename");
    assert_eq!(fs::read(mnt.path("d/b")).unwrap(), b"123456");
    fs::remove_file(mnt.path("d/b")).unwrap();
    assert_eq!(
        fs::read_dir(mnt.path("d")).unwrap().count(),
        0,
        "listing after unlink"
    );
}

/// Removing names keeps the listings fetched ahead for other directories (so `rm -r` does not
/// list each directory twice) but never shows a removed name or a stale directory.
#[test]
fn removals_keep_other_listings_and_show_none_of_the_removed() {
    let mnt = Mounted::prepared("cache_timeout=60", |data| {
        for d in ["t/a/x", "t/b/y", "t/c"] {
            fs::create_dir_all(data.join(d)).unwrap();
        }
        for f in ["t/a/1", "t/a/x/2", "t/b/3", "t/b/y/4", "t/c/5"] {
            fs::write(data.join(f), f).unwrap();
        }
    });
    let names = |d: &str| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(mnt.path(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    // Listing t starts listing a, b, c (and their subdirectories) ahead.
    assert_eq!(names("t"), ["a", "b", "c"]);
    fs::remove_file(mnt.path("t/a/1")).unwrap();
    fs::remove_file(mnt.path("t/a/x/2")).unwrap();
    fs::remove_dir(mnt.path("t/a/x")).unwrap();
    assert_eq!(names("t/a"), Vec::<String>::new(), "a after its removals");
    assert!(!mnt.path("t/a/x").exists());
    assert_eq!(names("t/b"), ["3", "y"], "b untouched");
    assert_eq!(names("t/b/y"), ["4"]);
    fs::remove_file(mnt.path("t/c/5")).unwrap();
    fs::remove_dir(mnt.path("t/c")).unwrap();
    assert_eq!(names("t"), ["a", "b"], "t after removing c");
    fs::remove_dir_all(mnt.path("t")).unwrap();
    assert!(!mnt.server("t").exists(), "rm -r through the mount");
}

#[test]
fn read_only_mount_refuses_writes() {
    let mnt = Mounted::prepared("ro", |data| {
        fs::write(data.join("f"), b"ro data").unwrap();
    });
    assert_eq!(fs::read(mnt.path("f")).unwrap(), b"ro data");
    let e = fs::write(mnt.path("g"), b"x").expect_err("creating a file on a ro mount");
    assert_eq!(errno(&e), libc::EROFS, "ro mount: {e}");
    assert!(!mnt.server("g").exists());
}

#[test]
fn uid_gid_umask_presentation() {
    let mnt = Mounted::prepared("uid=1234,gid=4321,umask=027", |data| {
        fs::write(data.join("f"), b"x").unwrap();
        fs::set_permissions(data.join("f"), fs::Permissions::from_mode(0o666)).unwrap();
    });
    let md = fs::metadata(mnt.path("f")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 4321), "uid=/gid= presentation");
    assert_eq!(md.mode() & 0o777, 0o640, "umask=027 applied to 0666");
}

#[test]
fn password_login_via_stdin() {
    let sshd = Sshd::start();
    let m = Mount::password_user(&sshd);
    fs::write(m.path("pw.txt"), b"by password").expect("write as the password user");
    m.settle();
    let md = fs::metadata(sshd.user_data.join("pw.txt")).unwrap();
    assert_eq!(
        md.uid(),
        test_user_ids().0,
        "file owned by the SSH login on the server"
    );
    assert!(
        !m.stderr().contains(TEST_PASSWORD),
        "the password must never be printed"
    );
}

#[test]
fn encrypted_key_with_passphrase() {
    let sshd = Sshd::start();
    let m = Mount::new(
        &sshd,
        &sshd.remote(""),
        &format!(
            "IdentityFile={},passphrase={KEY_PASSPHRASE},StrictHostKeyChecking=no,\
             UserKnownHostsFile={}",
            sshd.encrypted_key.display(),
            sshd.dir.path().join("known_hosts").display()
        ),
    );
    fs::write(m.path("k"), b"key").unwrap();
    m.settle();
    assert_eq!(fs::read(sshd.data.join("k")).unwrap(), b"key");
}

#[test]
fn pinned_host_key_is_checked() {
    let sshd = Sshd::start();
    // The right fingerprint mounts.
    let m = Mount::new(
        &sshd,
        &sshd.remote(""),
        &format!(
            "IdentityFile={},hostkey={}",
            sshd.key.display(),
            sshd.host_fingerprint
        ),
    );
    drop(m);
    // A wrong one is refused, naming both fingerprints.
    let wrong = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let f = mount_expect_failure(
        &[
            "-p",
            &sshd.port.to_string(),
            "-o",
            &format!("IdentityFile={},hostkey={wrong}", sshd.key.display()),
        ],
        &sshd.remote(""),
        None,
        Duration::from_secs(30),
    );
    assert!(
        !f.status.success() && !f.mounted,
        "a wrong pinned host key must not mount"
    );
    assert!(
        f.stderr.contains(&sshd.host_fingerprint) && f.stderr.contains(wrong),
        "the error must name the expected and the offered fingerprint: {}",
        f.stderr
    );
}

#[test]
fn sigterm_unmounts_and_exits_zero() {
    let mut mnt = Mounted::root("");
    fs::write(mnt.path("f"), b"x").unwrap();
    mnt.mount.signal(nix::sys::signal::Signal::SIGTERM);
    let st = mnt
        .mount
        .wait_exit(Duration::from_secs(15))
        .expect("the mount command must exit after SIGTERM");
    assert!(
        st.success(),
        "exit status after SIGTERM: {st}; stderr: {}",
        mnt.mount.stderr()
    );
    assert!(!is_mounted(&mnt.mount.mountpoint), "SIGTERM must unmount");
}

#[test]
fn sigint_while_busy_unmounts_and_exits_zero() {
    let mut mnt = Mounted::root("");
    fs::write(mnt.path("f"), b"x").unwrap();
    // Hold a file open: the unmount must be lazy instead of failing with EBUSY.
    let busy = File::open(mnt.path("f")).unwrap();
    mnt.mount.signal(nix::sys::signal::Signal::SIGINT);
    let st = mnt
        .mount
        .wait_exit(Duration::from_secs(15))
        .expect("the mount command must exit after SIGINT even while busy");
    assert!(
        st.success(),
        "exit status after SIGINT: {st}; stderr: {}",
        mnt.mount.stderr()
    );
    assert!(
        !is_mounted(&mnt.mount.mountpoint),
        "SIGINT must (lazily) unmount"
    );
    drop(busy);
}

#[test]
fn external_umount_ends_the_command() {
    let mut mnt = Mounted::root("");
    run(std::process::Command::new("umount").arg(&mnt.mount.mountpoint));
    let st = mnt
        .mount
        .wait_exit(Duration::from_secs(15))
        .expect("the mount command must exit after an external umount");
    assert!(
        st.success(),
        "exit status after umount: {st}; stderr: {}",
        mnt.mount.stderr()
    );
}

// ---- error cases: exit status and a message that says what to fix ----

#[test]
fn wrong_password_says_authentication_failed() {
    let sshd = Sshd::start();
    let remote = format!("{TEST_USER}@127.0.0.1:{}", sshd.user_data.display());
    let f = mount_expect_failure(
        &[
            "-p",
            &sshd.port.to_string(),
            "-o",
            "password_stdin,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null",
        ],
        &remote,
        Some("not-the-Password-123\n"),
        Duration::from_secs(60),
    );
    let low = f.stderr.to_lowercase();
    assert!(
        !f.status.success() && !f.mounted,
        "wrong password must fail: {}",
        f.stderr
    );
    assert!(
        low.contains("authentication"),
        "the message must mention authentication: {}",
        f.stderr
    );
    assert!(
        f.stderr.contains(TEST_USER),
        "the message must name the login that was refused: {}",
        f.stderr
    );
    assert!(
        low.contains("password"),
        "the message must point at the password to fix: {}",
        f.stderr
    );
    assert!(
        !f.stderr.contains("not-the-Password-123"),
        "the password must never be printed: {}",
        f.stderr
    );
}

#[test]
fn wrong_key_says_authentication_failed() {
    let sshd = Sshd::start();
    let other = TempDir::new("otherkey");
    let key = other.path().join("k");
    run(std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key));
    let f = mount_expect_failure(
        &[
            "-p",
            &sshd.port.to_string(),
            "-o",
            &format!(
                "IdentityFile={},StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null",
                key.display()
            ),
        ],
        &sshd.remote(""),
        None,
        Duration::from_secs(60),
    );
    assert!(
        !f.status.success() && !f.mounted,
        "unknown key must fail: {}",
        f.stderr
    );
    assert!(
        f.stderr.to_lowercase().contains("authentication") && f.stderr.contains("root"),
        "the message must say authentication failed for root: {}",
        f.stderr
    );
}

#[test]
fn connection_refused_names_the_port() {
    let port = free_port(); // nothing listens there
    let f = mount_expect_failure(
        &[
            "-p",
            &port.to_string(),
            "-o",
            "StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null",
        ],
        "root@127.0.0.1:/tmp",
        None,
        Duration::from_secs(60),
    );
    let low = f.stderr.to_lowercase();
    assert!(
        !f.status.success() && !f.mounted,
        "nothing listens, must fail"
    );
    assert!(
        f.stderr.contains(&port.to_string()),
        "the message must name the port {port}: {}",
        f.stderr
    );
    assert!(
        low.contains("refused") || low.contains("connect"),
        "the message must say the connection failed: {}",
        f.stderr
    );
    assert!(
        low.contains("port") || low.contains("server"),
        "the message must say what to check (server/port): {}",
        f.stderr
    );
}

/// Mounts `path` of the server, which must fail without mounting.
fn mount_remote_path_expect_failure(sshd: &Sshd, path: &Path) -> Failed {
    let f = mount_expect_failure(
        &["-p", &sshd.port.to_string(), "-o", &sshd.key_options()],
        &format!("root@127.0.0.1:{}", path.display()),
        None,
        Duration::from_secs(60),
    );
    assert!(
        !f.status.success() && !f.mounted,
        "{} must not mount: {}",
        path.display(),
        f.stderr
    );
    f
}

#[test]
fn missing_remote_path_is_named() {
    let sshd = Sshd::start();
    let missing = sshd.data.join("no/such/dir");
    let f = mount_remote_path_expect_failure(&sshd, &missing);
    assert!(
        f.stderr.contains(&missing.display().to_string()),
        "the message must name the path: {}",
        f.stderr
    );
    let low = f.stderr.to_lowercase();
    assert!(
        low.contains("exist") || low.contains("no such"),
        "the message must say the path does not exist: {}",
        f.stderr
    );
}

/// A remote path that is a file, not a directory, fails the mount and says so (the stat goes
/// out with the realpath: its answer must still be looked at).
#[test]
fn remote_path_that_is_a_file_fails_clearly() {
    let sshd = Sshd::start();
    let file = sshd.data.join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let f = mount_remote_path_expect_failure(&sshd, &file);
    assert!(
        f.stderr.contains(&file.display().to_string()) && f.stderr.contains("is not a directory"),
        "the message must name the path and say it is not a directory: {}",
        f.stderr
    );
}

#[test]
fn unknown_option_lists_supported_ones() {
    let f = mount_expect_failure(
        &["-o", "frobnicate=1"],
        "root@127.0.0.1:/tmp",
        None,
        Duration::from_secs(30),
    );
    assert!(
        !f.status.success() && !f.mounted,
        "an unknown option must fail"
    );
    assert!(
        f.stderr.contains("frobnicate"),
        "name the bad option: {}",
        f.stderr
    );
    for opt in [
        "IdentityFile",
        "password",
        "allow_other",
        "StrictHostKeyChecking",
        "ServerAliveInterval",
    ] {
        assert!(
            f.stderr.contains(opt),
            "the message must list supported option {opt}: {}",
            f.stderr
        );
    }
}

#[test]
fn wrong_passphrase_names_the_key() {
    let sshd = Sshd::start();
    let f = mount_expect_failure(
        &[
            "-p",
            &sshd.port.to_string(),
            "-o",
            &format!(
                "IdentityFile={},passphrase=wrong-phrase,StrictHostKeyChecking=no,\
                 UserKnownHostsFile=/dev/null",
                sshd.encrypted_key.display()
            ),
        ],
        &sshd.remote(""),
        None,
        Duration::from_secs(60),
    );
    assert!(
        !f.status.success() && !f.mounted,
        "a wrong passphrase must not mount"
    );
    assert!(
        f.stderr.contains(&sshd.encrypted_key.display().to_string()),
        "the message must name the key file: {}",
        f.stderr
    );
    assert!(
        f.stderr.to_lowercase().contains("passphrase"),
        "the message must point at the passphrase: {}",
        f.stderr
    );
    assert!(
        !f.stderr.contains("wrong-phrase"),
        "never print the passphrase"
    );
}

#[test]
fn no_path_means_the_login_home() {
    let sshd = Sshd::start();
    let (uid, gid) = test_user_ids();
    let home = std::path::PathBuf::from(
        run(std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("getent passwd {TEST_USER} | cut -d: -f6")))
        .trim(),
    );
    let marker = format!("marker-{}", sshd.port);
    fs::write(home.join(&marker), b"home").unwrap();
    std::os::unix::fs::chown(home.join(&marker), Some(uid), Some(gid)).unwrap();
    let m = Mount::with_stdin(
        sshd.port,
        &format!("{TEST_USER}@127.0.0.1"),
        &format!(
            "password_stdin,StrictHostKeyChecking=no,UserKnownHostsFile={}",
            sshd.dir.path().join("known_hosts").display()
        ),
        Some(&format!("{TEST_PASSWORD}\n")),
    );
    let got = fs::read(m.path(&marker));
    drop(m);
    let _ = fs::remove_file(home.join(&marker));
    assert_eq!(
        got.expect("a file in the login's home via user@host without a path"),
        b"home"
    );
}
