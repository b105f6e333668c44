//! Issue 11 through Docker: copy-up of an image directory full of symlinks (busybox's applet
//! links, absolute, relative and dangling ones), hard links and nested directories into an empty
//! volume, as root and as a non-root login. Docker lchowns and lutimes every link it copies: that
//! must set the link on the server, never what it points to (the server's own /etc/passwd here).
//!
//! Run with SSHFS_E2E=1 and the plugin and test SSH server set up as for tests/plugin_e2e.rs.

mod e2e;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::{Container, Ctx, Kind, LABEL, RemoteDir, RemoveDir, docker, setup};

/// The time every file of the image carries: Docker's copy-up sets it on each copy.
const IMAGE_TIME: i64 = 1_000_000_000;
/// The owner the image gives its absolute link to /etc/passwd (lchowned at copy-up).
const LINK_OWNER: u32 = 4321;

/// An image built for one test, removed on drop.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", self.0.as_str()]);
    }
}

fn sh(script: &str) {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A /bin as an image has it: static busybox and a relative link per applet (as busybox images
/// have), `sh` as an absolute link, plus a link out to /etc/passwd (named to be copied first), a dangling link, nested
/// directories with a relative link into them, and a file with two names. Everything is dated
/// [`IMAGE_TIME`]. `docker import`ed from a tarball: no registry.
fn build_image(ctx: &Ctx) -> Image {
    let work = RemoveDir(std::env::temp_dir().join(ctx.unique("copyup-image")));
    let root = work.0.join("root");
    let bin = root.join("bin");
    fs::create_dir_all(bin.join("nested/a/b/c")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    let script = format!(
        "set -e; cd {bin}; cp /bin/busybox busybox; \
         for a in $(./busybox --list); do [ -e \"$a\" ] || ln -s busybox \"$a\"; done; \
         rm sh; ln -s /bin/busybox sh; \
         ln -s /etc/passwd A-passwd; chown -h {LINK_OWNER}:{LINK_OWNER} A-passwd; \
         ln -s /nonexistent/target zz-dangling; \
         echo deep > nested/a/b/c/file; ln -s a/b/c/file nested/rel; \
         echo hard > nested/hard1; ln nested/hard1 hard2; \
         find {root} -exec touch -h -d @{IMAGE_TIME} {{}} +; \
         tar --numeric-owner -C {root} -cf {tar} .",
        bin = bin.display(),
        root = root.display(),
        tar = work.0.join("rootfs.tar").display(),
    );
    sh(&script);
    let image = Image(format!("{}-copyup:{}", e2e::PREFIX, std::process::id()));
    docker(&[
        "import",
        "--change",
        &format!("LABEL {LABEL}"),
        work.0.join("rootfs.tar").to_str().unwrap(),
        image.0.as_str(),
    ])
    .ok("docker import of the copy-up test image");
    image
}

/// mtime and owner of /etc/passwd inside the test SSH server.
fn server_passwd(ctx: &Ctx) -> String {
    docker(&[
        "exec",
        ctx.cfg.sshd_container.as_str(),
        "stat",
        "-c",
        "%Y %u:%g",
        "/etc/passwd",
    ])
    .ok("stat of the server's /etc/passwd")
    .stdout
    .trim()
    .to_string()
}

/// The applets of the host's busybox, the one the image has.
fn applets() -> Vec<String> {
    let out = Command::new("/bin/busybox").arg("--list").output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|a| *a != "busybox") // it lists itself
        .map(str::to_string)
        .collect()
}

fn link_at(dir: &Path, rel: &str) -> PathBuf {
    fs::read_link(dir.join(rel))
        .unwrap_or_else(|e| panic!("{rel} is not a symlink on the server: {e}"))
}

/// Runs a container with an empty volume over the image's /bin, checks what reached the server.
fn copy_up(ctx: &Ctx, image: &Image, dir: &RemoteDir, opts: &[String], login_uid: u32) {
    let vol = ctx.volume("copyup", opts);
    let passwd_before = server_passwd(ctx);
    let name = ctx.unique("c");
    let _guard = Container { name: name.clone() };
    let out = docker(&[
        "run",
        "--rm",
        "--name",
        name.as_str(),
        "--label",
        LABEL,
        "--network",
        "none",
        "-v",
        &format!("{}:/bin", vol.as_str()),
        image.0.as_str(),
        // The volume's own sh and cat run this.
        "/bin/sh",
        "-c",
        "cat /bin/nested/rel /bin/hard2 && /bin/ls /bin | /bin/wc -l",
    ]);
    assert_eq!(
        server_passwd(ctx),
        passwd_before,
        "the copy-up changed the server's /etc/passwd (mtime, owner) through a link to it"
    );
    let out = out.ok("copy-up of /bin into an empty volume, then running the volume's sh");
    let applets = applets();
    let mut lines = out.stdout.lines();
    assert_eq!(lines.next(), Some("deep"), "{}", out.stdout);
    assert_eq!(lines.next(), Some("hard"), "{}", out.stdout);
    // busybox, A-passwd, zz-dangling, nested and hard2 besides the applets.
    let listed = applets.len() + 5;
    assert_eq!(
        lines.next(),
        Some(listed.to_string().as_str()),
        "entries in the volume's /bin"
    );

    let host = &dir.host;
    for a in applets.iter().filter(|a| *a != "sh") {
        assert_eq!(link_at(host, a), Path::new("busybox"), "applet link {a}");
    }
    assert_eq!(link_at(host, "sh"), Path::new("/bin/busybox"));
    assert_eq!(link_at(host, "A-passwd"), Path::new("/etc/passwd"));
    assert_eq!(
        link_at(host, "zz-dangling"),
        Path::new("/nonexistent/target")
    );
    assert_eq!(link_at(host, "nested/rel"), Path::new("a/b/c/file"));
    assert_eq!(fs::read(host.join("nested/a/b/c/file")).unwrap(), b"deep\n");
    let (h1, h2) = (
        fs::metadata(host.join("nested/hard1")).unwrap(),
        fs::metadata(host.join("hard2")).unwrap(),
    );
    assert_eq!(
        h1.ino(),
        h2.ino(),
        "hard links share one inode on the server"
    );
    assert_eq!(h1.nlink(), 2);
    assert_eq!(
        fs::read(host.join("busybox")).unwrap(),
        fs::read("/bin/busybox").unwrap(),
        "busybox copied whole"
    );
    // The links got their own times (lutimes) and, where the login may, owner (lchown).
    for l in ["A-passwd", "zz-dangling", "nested/rel", "ls"] {
        let md = fs::symlink_metadata(host.join(l)).unwrap();
        assert_eq!(
            md.mtime(),
            IMAGE_TIME,
            "{l}: the link's own mtime on the server"
        );
    }
    let owner = fs::symlink_metadata(host.join("A-passwd")).unwrap().uid();
    let want = if login_uid == 0 {
        LINK_OWNER
    } else {
        login_uid
    };
    assert_eq!(
        owner, want,
        "owner of the copied link A-passwd on the server"
    );
}

#[test]
fn copy_up_of_links_hard_links_and_dirs_as_root_and_non_root() {
    let Some(ctx) = setup("copy_up_links", Kind::Shared) else {
        return;
    };
    let image = build_image(&ctx);

    let dir = ctx.remote_dir("copyup-root");
    let opts = vec![
        format!("sshcmd=root@{}:{}", ctx.cfg.host, dir.remote),
        format!("password={}", ctx.cfg.root_password),
        format!("port={}", ctx.cfg.port),
    ];
    copy_up(&ctx, &image, &dir, &opts, 0);

    let dir = ctx.remote_dir("copyup-tester");
    let opts = ctx.password_opts(&dir);
    copy_up(&ctx, &image, &dir, &opts, 1000);
}
