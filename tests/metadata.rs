//! Metadata never lands in the wrong place (issue 11), through a real mount on a throwaway
//! OpenSSH server: times and ownership set on a symlink (`touch -h`, `chown -h`) change the link
//! itself on the server, never the file it points to, whether that lies outside the mounted
//! remote path (absolute link), inside it (relative link) or nowhere (dangling link), as root
//! and as a login that may not give files away; and a change of the group alone is not taken
//! for a no-op.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The times the targets start with, and the ones set through the mount.
const OLD: i64 = 1_000_000_000;
const GNU_TIME: i64 = 1_577_836_800; // 2020-01-01 UTC
const BUSYBOX_TIME: i64 = 1_600_000_000;

/// Three links in a remote directory and the files they point to.
struct Links {
    /// Absolute link to a file outside the mounted remote path.
    abs: String,
    /// Relative link to a file in the same remote directory.
    rel: String,
    /// Link to a name that does not exist.
    dangling: String,
    outside: PathBuf,
    inside: PathBuf,
}

impl Links {
    fn names(&self) -> [&str; 3] {
        [&self.abs, &self.rel, &self.dangling]
    }

    /// Files the links reach (the dangling one reaches none).
    fn targets(&self) -> [&Path; 2] {
        [&self.outside, &self.inside]
    }
}

/// Creates the targets (times [`OLD`], owned by `owner`) in `dir` and `outside_dir`, and the
/// links in `dir` directly on the server's disk, so the mount learns them by lookup.
fn server_links(dir: &Path, outside_dir: &Path, tag: &str, owner: (u32, u32)) -> Links {
    let outside = outside_dir.join(format!("{tag}-outside.txt"));
    let inside = dir.join(format!("{tag}-inside.txt"));
    for t in [&outside, &inside] {
        fs::write(t, b"target").unwrap();
        std::os::unix::fs::chown(t, Some(owner.0), Some(owner.1)).unwrap();
        set_times(t, OLD);
    }
    let links = Links {
        abs: format!("{tag}-abs"),
        rel: format!("{tag}-rel"),
        dangling: format!("{tag}-dangling"),
        outside,
        inside,
    };
    symlink(&links.outside, dir.join(&links.abs)).unwrap();
    symlink(format!("{tag}-inside.txt"), dir.join(&links.rel)).unwrap();
    symlink(format!("{tag}-missing"), dir.join(&links.dangling)).unwrap();
    links
}

/// The directory the root mounts show (`vol` under the server's data), created empty.
fn remote_dir(sshd: &Sshd) -> PathBuf {
    let vol = sshd.data.join("vol");
    fs::create_dir(&vol).unwrap();
    vol
}

fn set_times(path: &Path, secs: i64) {
    run(Command::new("touch")
        .arg("-h")
        .arg("-d")
        .arg(format!("@{secs}"))
        .arg(path));
}

/// (mtime, atime) of `path` itself on the server.
fn link_times(path: &Path) -> (i64, i64) {
    let md = fs::symlink_metadata(path).unwrap();
    (md.mtime(), md.atime())
}

fn assert_targets_untouched(links: &Links, owner: (u32, u32), what: &str) {
    for t in links.targets() {
        let md = fs::metadata(t).unwrap();
        assert_eq!(
            (md.mtime(), md.atime()),
            (OLD, OLD),
            "{what}: the times of {} (a link's target) changed on the server",
            t.display()
        );
        assert_eq!(
            (md.uid(), md.gid()),
            owner,
            "{what}: the owner of {} (a link's target) changed on the server",
            t.display()
        );
    }
}

/// `touch -h -d @SECS` of each link through the mount, with the given touch (GNU or busybox);
/// the failures, to check after the targets (which tell more when they changed).
fn touch_h(touch: &[&str], mount: &Mount, links: &Links, secs: i64) -> Vec<String> {
    let mut failed = Vec::new();
    for name in links.names() {
        let out = Command::new(touch[0])
            .args(&touch[1..])
            .arg("-h")
            .arg("-d")
            .arg(format!("@{secs}"))
            .arg(mount.path(name))
            .output()
            .unwrap();
        if !out.status.success() {
            failed.push(format!(
                "{touch:?} -h on the link {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    failed
}

fn chown_h(mount: &Mount, name: &str, owner: (u32, u32)) -> std::process::Output {
    Command::new("chown")
        .arg("-h")
        .arg(format!("{}:{}", owner.0, owner.1))
        .arg(mount.path(name))
        .output()
        .unwrap()
}

#[test]
fn touch_h_sets_the_link_never_its_target() {
    let sshd = Sshd::start();
    let vol = remote_dir(&sshd);
    let links = server_links(&vol, sshd.dir.path(), "t", (0, 0));
    let m = Mount::root(&sshd, "vol", "");

    for (touch, secs) in [
        (&["touch"][..], GNU_TIME),
        (&["/bin/busybox", "touch"][..], BUSYBOX_TIME),
    ] {
        let failed = touch_h(touch, &m, &links, secs);
        assert_targets_untouched(&links, (0, 0), &format!("{touch:?} -h"));
        assert!(failed.is_empty(), "touch -h failed: {failed:#?}");
        for name in links.names() {
            assert_eq!(
                link_times(&vol.join(name)),
                (secs, secs),
                "{touch:?} -h: the link {name} itself did not get the times on the server"
            );
            let through = fs::symlink_metadata(m.path(name)).unwrap();
            assert_eq!(
                through.mtime(),
                secs,
                "{name}: the mount shows the link's time"
            );
        }
    }
}

#[test]
fn chown_h_sets_the_link_never_its_target() {
    let sshd = Sshd::start();
    let vol = remote_dir(&sshd);
    let links = server_links(&vol, sshd.dir.path(), "c", (0, 0));
    let m = Mount::root(&sshd, "vol", "");

    let owner = (1234, 5678);
    let failed: Vec<String> = links
        .names()
        .into_iter()
        .map(|name| (name, chown_h(&m, name, owner)))
        .filter(|(_, out)| !out.status.success())
        .map(|(name, out)| format!("{name}: {}", String::from_utf8_lossy(&out.stderr).trim()))
        .collect();
    assert_targets_untouched(&links, (0, 0), "chown -h");
    assert!(failed.is_empty(), "chown -h failed: {failed:#?}");
    for name in links.names() {
        let md = fs::symlink_metadata(vol.join(name)).unwrap();
        assert_eq!(
            (md.uid(), md.gid()),
            owner,
            "the link {name} itself is not owned as asked on the server"
        );
    }
}

#[test]
fn non_root_login_lchown_is_ignored_and_touch_h_works() {
    let sshd = Sshd::start();
    let user = test_user_ids();
    // Links the server's root owns, to root's files: the login may not give them away.
    let root_links = server_links(&sshd.user_data, sshd.dir.path(), "r", (0, 0));
    for name in root_links.names() {
        std::os::unix::fs::lchown(sshd.user_data.join(name), Some(0), Some(0)).unwrap();
    }
    // Links the login owns, to files it owns (one outside its remote path), where a time
    // change that followed the link would succeed.
    let own_links = server_links(&sshd.user_data, sshd.dir.path(), "u", user);
    for name in own_links.names() {
        std::os::unix::fs::lchown(sshd.user_data.join(name), Some(user.0), Some(user.1)).unwrap();
    }
    let m = Mount::password_user(&sshd);

    for name in root_links.names() {
        let out = chown_h(&m, name, user);
        assert!(
            out.status.success(),
            "chown -h of {name} by a login that may not chown must be ignored, not fail: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let md = fs::symlink_metadata(sshd.user_data.join(name)).unwrap();
        assert_eq!((md.uid(), md.gid()), (0, 0), "{name} keeps its owner");
    }
    assert_targets_untouched(&root_links, (0, 0), "refused chown -h");

    let failed = touch_h(&["touch"], &m, &own_links, GNU_TIME);
    assert_targets_untouched(&own_links, user, "touch -h by the login");
    assert!(failed.is_empty(), "touch -h failed: {failed:#?}");
    for name in own_links.names() {
        assert_eq!(
            link_times(&sshd.user_data.join(name)),
            (GNU_TIME, GNU_TIME),
            "touch -h: the link {name} itself did not get the times on the server"
        );
    }
}

#[test]
fn a_file_replaced_by_a_symlink_on_the_server_is_not_followed() {
    let sshd = Sshd::start();
    let vol = remote_dir(&sshd);
    let outside = sshd.dir.path().join("swapped-outside.txt");
    fs::write(&outside, b"outside").unwrap();
    set_times(&outside, OLD);
    fs::write(vol.join("f"), b"file").unwrap();
    let m = Mount::root(&sshd, "vol", "");
    // The mount learns `f` as a regular file and trusts that for cache_timeout ...
    assert!(fs::metadata(m.path("f")).unwrap().is_file());
    // ... while another client of the server replaces it with a link out of the volume.
    fs::remove_file(vol.join("f")).unwrap();
    symlink(&outside, vol.join("f")).unwrap();

    run(Command::new("touch")
        .arg("-d")
        .arg(format!("@{GNU_TIME}"))
        .arg(m.path("f")));
    let md = fs::metadata(&outside).unwrap();
    assert_eq!(
        (md.mtime(), md.atime()),
        (OLD, OLD),
        "times set on a cached file reached the file a link now there points to"
    );
    let link = fs::symlink_metadata(vol.join("f")).unwrap();
    assert_eq!(link.mtime(), GNU_TIME, "the times went to the link itself");

    // The chown's answer may be EIO: the attributes fetched after it show a symlink where the
    // kernel knows a file, and the kernel refuses an inode that changed its type. What matters
    // is where the ownership went.
    let _ = Command::new("chown")
        .arg("4321:4321")
        .arg(m.path("f"))
        .output()
        .unwrap();
    let md = fs::metadata(&outside).unwrap();
    assert_eq!(
        (md.uid(), md.gid()),
        (0, 0),
        "ownership reached the link's target"
    );
    let link = fs::symlink_metadata(vol.join("f")).unwrap();
    assert_eq!(
        (link.uid(), link.gid()),
        (4321, 4321),
        "ownership went to the link itself"
    );
}

/// `chgrp` alone (the owner left as it is) of a file whose attributes are cached reaches the
/// server: a change of the group only is not a no-op.
#[test]
fn chgrp_alone_reaches_the_server() {
    let t = Mounted::root("");
    fs::write(t.path("g"), b"x").unwrap();
    let before = fs::metadata(t.path("g")).unwrap();
    assert_ne!(before.gid(), 4242);
    std::os::unix::fs::chown(t.path("g"), None, Some(4242)).unwrap();
    let server = fs::metadata(t.server("g")).unwrap();
    assert_eq!(
        (server.uid(), server.gid()),
        (before.uid(), 4242),
        "the server's owner and group"
    );
    assert_eq!(fs::metadata(t.path("g")).unwrap().gid(), 4242, "as shown");
}

#[test]
fn a_refused_fchown_on_an_open_file_is_ignored_and_the_servers_owner_shown() {
    // GNU tar and cp -a fchown each file before closing it; that chown is sent behind the
    // file's writes, after fchown(2) returned. A login that may not give files away gets it
    // refused then: the call was already answered (ignored, as by path), and what the mount
    // shows afterwards must be the server's owner, not the one asked for.
    let sshd = Sshd::start();
    let user = test_user_ids();
    let m = Mount::password_user(&sshd);
    for i in 0..3 {
        let name = format!("f{i}");
        let mut f = fs::File::create(m.path(&name)).unwrap();
        f.write_all(b"data").unwrap();
        std::os::unix::fs::fchown(&f, Some(0), Some(0))
            .expect("a refused chown is ignored, not failed");
        fs::set_permissions(m.path(&name), fs::Permissions::from_mode(0o640)).unwrap();
        drop(f);
        let server = fs::metadata(sshd.user_data.join(&name)).unwrap();
        assert_eq!((server.uid(), server.gid()), user, "{name} on the server");
        assert_eq!(
            server.mode() & 0o7777,
            0o640,
            "{name}: the chmod after it still landed"
        );
        let shown = fs::metadata(m.path(&name)).unwrap();
        assert_eq!(
            (shown.uid(), shown.gid()),
            user,
            "{name} as the mount shows it"
        );
        assert_eq!(fs::read(sshd.user_data.join(&name)).unwrap(), b"data");
    }
}
