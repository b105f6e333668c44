//! End-to-end tests of the installed Docker plugin against the test SSH server, through the
//! `docker` CLI exactly as users drive it. Run with `tests/run.sh` (it builds and installs the
//! plugin, starts the server and sets SSHFS_E2E=1); without SSHFS_E2E=1 every test skips.
//!
//! Remote files are checked on the server side: its /data is `$SSHFS_TEST_DIR/data` on this host.

mod e2e;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use e2e::{
    DOCKER_TIMEOUT, DockerdLog, Kind, NewFuseMounts, Out, assert_all, assert_mentions,
    assert_not_mentions, docker, run_cmd_env, setup, volume_listed, volume_state, wait_until,
};

// ---------------------------------------------------------------------------------------------
// Basic data path

/// vieux's CI scenario: write from one container, read from a second one.
#[test]
fn write_then_read_from_second_container() {
    let Some(ctx) = setup("write_then_read_from_second_container", Kind::Shared) else {
        return;
    };
    let (vol, dir) = ctx.password_volume("rw");
    ctx.run_ok(vol.as_str(), &[], "echo hello > /data/world");
    let read = ctx.run_ok(vol.as_str(), &[], "cat /data/world");
    assert_eq!(
        read, "hello\n",
        "second container reads what the first wrote"
    );
    ctx.assert_server_file(&dir, "world", "hello\n");

    // Subdirectories, rename over an existing file, removal.
    ctx.run_ok(
        vol.as_str(),
        &[],
        "mkdir -p /data/d/e && echo one > /data/d/e/f && echo two > /data/d/g && mv /data/d/g /data/d/e/f && rm /data/world",
    );
    ctx.assert_server_file(&dir, "d/e/f", "two\n");
    assert!(
        !dir.host.join("world").exists(),
        "rm in the container removes the file on the server"
    );
    // Docker's own view of the volume.
    ctx.assert_volume_driver(vol.as_str(), "volume driver");
}

/// vieux's CI scenario: allow_other, and a container running as nobody writes and reads.
#[test]
fn allow_other_with_user_nobody() {
    let Some(ctx) = setup("allow_other_with_user_nobody", Kind::Shared) else {
        return;
    };
    let dir = ctx.remote_dir("allowother");
    let mut opts = ctx.password_opts(&dir);
    opts.push("allow_other".into());
    let vol = ctx.volume("allowother", &opts);
    ctx.run_ok(vol.as_str(), &["-u", "nobody"], "echo hello > /data/world");
    let read = ctx.run_ok(
        vol.as_str(),
        &["-u", "nobody"],
        "grep -Fx hello /data/world",
    );
    assert_eq!(read, "hello\n");
    ctx.assert_server_file(&dir, "world", "hello\n");
}

/// vieux's CI scenario: extra ssh options are accepted and the volume works.
#[test]
fn extra_ssh_options_ciphers_compression() {
    let Some(ctx) = setup("extra_ssh_options_ciphers_compression", Kind::Shared) else {
        return;
    };
    let dir = ctx.remote_dir("sshopts");
    let mut opts = ctx.password_opts(&dir);
    opts.push("Ciphers=aes128-ctr".into());
    opts.push("Compression=no".into());
    let vol = ctx.volume("sshopts", &opts);
    ctx.run_ok(vol.as_str(), &[], "seq 1 20000 > /data/numbers");
    let out = ctx.run_ok(
        vol.as_str(),
        &[],
        "wc -l < /data/numbers; tail -n 1 /data/numbers",
    );
    assert_eq!(out, "20000\n20000\n");
    let server = ctx.server_file(&dir, "numbers").expect("file on server");
    assert_eq!(server.lines().count(), 20000);
}

// ---------------------------------------------------------------------------------------------
// Sharing, docker cp, parallel containers

/// Two running containers share a volume; stopping one leaves the other working.
#[test]
fn two_containers_share_a_volume() {
    let Some(ctx) = setup("two_containers_share_a_volume", Kind::Shared) else {
        return;
    };
    let (vol, dir) = ctx.password_volume("share");
    let a = ctx.start(vol.as_str());
    let b = ctx.start(vol.as_str());
    a.exec("echo from-a > /data/a").ok("write in container a");
    let seen = b.exec("cat /data/a").ok("read in container b");
    assert_eq!(seen.stdout, "from-a\n");

    docker(&["stop", "-t", "1", a.name.as_str()]).ok("stop container a");
    b.exec("echo from-b > /data/b && cat /data/a /data/b")
        .ok("container b keeps working after a stopped");
    ctx.assert_server_file(&dir, "b", "from-b\n");
    drop(a);
    let again = b.exec("ls /data").ok("container b after a was removed");
    assert_mentions(&again.stdout, "b", "listing in b");
}

/// `docker cp` into a running container: Docker mounts the volume again with the same mount ID
/// and unmounts twice; the container must keep its working mount.
#[test]
fn docker_cp_into_running_container() {
    let Some(ctx) = setup("docker_cp_into_running_container", Kind::Shared) else {
        return;
    };
    let (vol, dir) = ctx.password_volume("cp");
    let c = ctx.start(vol.as_str());
    c.exec("echo before > /data/before")
        .ok("write before docker cp");

    let local = std::env::temp_dir().join(format!("{}.txt", ctx.unique("cpsrc")));
    fs::write(&local, "copied in\n").unwrap();
    let cp = docker(&[
        "cp",
        local.to_str().unwrap(),
        &format!("{}:/data/copied.txt", c.name),
    ]);
    let _ = fs::remove_file(&local);
    cp.ok("docker cp into the volume");
    ctx.assert_server_file(&dir, "copied.txt", "copied in\n");

    // The container's mount survived the extra Mount/Unmount pair.
    let out = c
        .exec("cat /data/copied.txt /data/before && echo after > /data/after")
        .ok("container keeps using the volume after docker cp");
    assert_eq!(out.stdout, "copied in\nbefore\n");
    ctx.assert_server_file(&dir, "after", "after\n");

    // docker cp out of it too.
    let out_file = std::env::temp_dir().join(ctx.unique("cpdst"));
    docker(&[
        "cp",
        &format!("{}:/data/after", c.name),
        out_file.to_str().unwrap(),
    ])
    .ok("docker cp out of the volume");
    assert_eq!(fs::read_to_string(&out_file).unwrap(), "after\n");
    let _ = fs::remove_file(&out_file);
    c.exec("cat /data/after")
        .ok("still mounted after docker cp out");

    // When the container is gone, counts are back to zero: the volume can be removed.
    drop(c);
    ctx.rm_volume(vol.as_str())
        .ok("volume rm after docker cp and container exit");
}

/// 20 containers started at once on one volume all see it and write to it.
#[test]
fn twenty_containers_in_parallel() {
    let Some(ctx) = setup("twenty_containers_in_parallel", Kind::Shared) else {
        return;
    };
    let (vol, dir) = ctx.password_volume("par");
    let jobs: Vec<_> = (0..20)
        .map(|i| {
            let script = format!("echo {i} > /data/c{i} && cat /data/c{i} && ls /data > /dev/null");
            (vol.as_str(), script)
        })
        .collect();
    assert_all(&ctx.run_parallel(&jobs), "container", Out::success);
    for i in 0..20 {
        ctx.assert_server_file(&dir, &format!("c{i}"), &format!("{i}\n"));
    }
    let ls = ctx.run_ok(vol.as_str(), &[], "ls /data | wc -l");
    assert_eq!(ls.trim(), "20");
}

// ---------------------------------------------------------------------------------------------
// Remove never touches remote data

/// `docker volume rm` keeps the remote files (vieux/sshfs ran RemoveAll on the mountpoint).
#[test]
fn volume_rm_keeps_remote_files() {
    let Some(ctx) = setup("volume_rm_keeps_remote_files", Kind::Shared) else {
        return;
    };
    let (vol, dir) = ctx.password_volume("rmkeep");
    ctx.run_ok(
        vol.as_str(),
        &[],
        "mkdir /data/sub && echo keep > /data/sub/me && echo top > /data/top",
    );
    ctx.rm_volume(vol.as_str()).ok("docker volume rm");
    assert!(
        !volume_listed(vol.as_str()),
        "volume is gone from docker volume ls"
    );
    ctx.assert_server_file(&dir, "sub/me", "keep\n");
    ctx.assert_server_file(&dir, "top", "top\n");
}

/// Two volumes with the same sshcmd both work; removing one leaves the other and the data.
#[test]
fn two_volumes_same_sshcmd() {
    let Some(ctx) = setup("two_volumes_same_sshcmd", Kind::Shared) else {
        return;
    };
    let dir = ctx.remote_dir("same");
    let opts = ctx.password_opts(&dir);
    let a = ctx.volume("samea", &opts);
    let b = ctx.volume("sameb", &opts);
    ctx.run_ok(a.as_str(), &[], "echo via-a > /data/shared");
    assert_eq!(ctx.run_ok(b.as_str(), &[], "cat /data/shared"), "via-a\n");

    // Both mounted at once, from one container.
    let both = docker(&[
        "run",
        "--rm",
        "--label",
        e2e::LABEL,
        "--network",
        "none",
        "-v",
        &format!("{}:/a", a.name),
        "-v",
        &format!("{}:/b", b.name),
        &ctx.cfg.image,
        "sh",
        "-c",
        "echo both > /a/both && cat /b/both",
    ])
    .ok("one container with both volumes");
    assert_eq!(both.stdout, "both\n");

    // b in use while a is removed.
    let c = ctx.start(b.as_str());
    ctx.rm_volume(a.as_str()).ok("remove volume a");
    c.exec("cat /data/shared /data/both")
        .ok("volume b still works after a was removed");
    drop(c);
    assert_eq!(ctx.run_ok(b.as_str(), &[], "cat /data/shared"), "via-a\n");
    ctx.assert_server_file(&dir, "shared", "via-a\n");
    ctx.assert_server_file(&dir, "both", "both\n");
}

// ---------------------------------------------------------------------------------------------
// User-facing errors

#[test]
fn error_missing_sshcmd() {
    let Some(ctx) = setup("error_missing_sshcmd", Kind::Shared) else {
        return;
    };
    let name = ctx.unique("e1");
    let _guard = e2e::Volume { name: name.clone() };
    let out = ctx
        .try_create_volume(&name, &[format!("password={}", ctx.cfg.password)])
        .fails("volume create without sshcmd");
    assert_mentions(&without(&out.stderr, &name), "sshcmd", "missing sshcmd");
    assert_not_mentions(&out.text(), &ctx.cfg.password, "missing sshcmd");
}

#[test]
fn error_bad_port() {
    let Some(ctx) = setup("error_bad_port", Kind::Shared) else {
        return;
    };
    let dir = ctx.remote_dir("e2");
    for bad in ["70000", "0", "ssh"] {
        let name = ctx.unique("e2");
        let _guard = e2e::Volume { name: name.clone() };
        let opts = vec![
            format!("sshcmd={}", ctx.sshcmd(&dir.remote)),
            format!("port={bad}"),
        ];
        let out = ctx
            .try_create_volume(&name, &opts)
            .fails(&format!("volume create with port={bad}"));
        let msg = without(&out.stderr, &name);
        assert_mentions(&msg, "port", &format!("port={bad}"));
        if bad == "70000" {
            assert_mentions(&msg, bad, "port=70000 (the value given)");
        }
    }
}

#[test]
fn error_unknown_option_lists_supported() {
    let Some(ctx) = setup("error_unknown_option_lists_supported", Kind::Shared) else {
        return;
    };
    let dir = ctx.remote_dir("e3");
    let name = ctx.unique("e3");
    let _guard = e2e::Volume { name: name.clone() };
    let mut opts = ctx.password_opts(&dir);
    opts.push("no_such_option=1".into());
    let out = ctx
        .try_create_volume(&name, &opts)
        .fails("volume create with an unknown option");
    let msg = without(&out.stderr, &name);
    assert_mentions(&msg, "no_such_option", "unknown option");
    assert_mentions(
        &msg,
        "IdentityFile",
        "unknown option error lists the supported ones",
    );
}

/// A wrong password fails the mount with a message about authentication, never the password.
#[test]
fn error_wrong_password() {
    let Some(ctx) = setup("error_wrong_password", Kind::Shared) else {
        return;
    };
    let dir = ctx.remote_dir("e4");
    let wrong = "definitely-Wrong-pw-1234";
    let opts = vec![
        format!("sshcmd={}", ctx.sshcmd(&dir.remote)),
        format!("password={wrong}"),
        format!("port={}", ctx.cfg.port),
    ];
    // Create does not need the server; the mount fails.
    let vol = ctx.volume("e4", &opts);
    let out = ctx
        .run(vol.as_str(), &[], "true")
        .fails("mount with a wrong password");
    assert_mentions(
        &without(&out.stderr, &vol.name),
        "authentication",
        "wrong password",
    );
    assert_not_mentions(&out.text(), wrong, "wrong password");
    assert_not_mentions(&out.text(), "Connection reset by peer", "wrong password");
    // A failed mount leaves no count behind: the volume can be removed.
    ctx.rm_volume(vol.as_str())
        .ok("volume rm after a failed mount");
}

/// A remote path that does not exist fails the mount with a message naming it.
#[test]
fn error_missing_remote_path() {
    let Some(ctx) = setup("error_missing_remote_path", Kind::Shared) else {
        return;
    };
    let dir = ctx.remote_dir("e5");
    let missing = format!("{}/does-not-exist", dir.remote);
    let opts = vec![
        format!("sshcmd={}", ctx.sshcmd(&missing)),
        format!("password={}", ctx.cfg.password),
        format!("port={}", ctx.cfg.port),
    ];
    let vol = ctx.volume("e5", &opts);
    let out = ctx
        .run(vol.as_str(), &[], "true")
        .fails("mount of a missing remote path");
    assert_mentions(&out.stderr, &missing, "missing remote path");
    assert_not_mentions(&out.text(), &ctx.cfg.password, "missing remote path");
    ctx.rm_volume(vol.as_str())
        .ok("volume rm after a failed mount");
    assert!(
        !Path::new(&dir.host).join("does-not-exist").exists(),
        "a failed mount must not create the remote path"
    );
}

// ---------------------------------------------------------------------------------------------
// Mount lifecycle (exclusive: counts all of the plugin's FUSE mounts)

/// The FUSE mount exists while a container uses the volume and is gone after the last one exits.
#[test]
fn no_fuse_mount_left_after_last_container() {
    let Some(ctx) = setup("no_fuse_mount_left_after_last_container", Kind::Exclusive) else {
        return;
    };
    let fuse = NewFuseMounts::under(ctx.propagated_mount_root());

    let (vol, _dir) = ctx.password_volume("leak");
    let a = ctx.start(vol.as_str());
    let b = ctx.start(vol.as_str());
    let mounted = fuse.list();
    assert!(
        !mounted.is_empty(),
        "no FUSE mount under {} while two containers use the volume: the check below would prove nothing",
        fuse.root.display()
    );
    docker(&["rm", "-f", a.name.as_str()]).ok("remove first container");
    assert_eq!(
        fuse.list(),
        mounted,
        "mount stays while a container still uses the volume"
    );
    b.exec("ls /data").ok("second container still reads");
    docker(&["rm", "-f", b.name.as_str()]).ok("remove last container");
    fuse.assert_gone_within(
        Duration::from_secs(10),
        "FUSE mount left behind after the last container exited",
    );

    // Same with `docker run --rm` and a failing command.
    let _ = ctx.run(vol.as_str(), &[], "ls /data; exit 3");
    fuse.assert_gone_within(
        Duration::from_secs(10),
        "FUSE mount left behind after a failed container",
    );
    if !fuse.before.is_empty() {
        eprintln!(
            "note: FUSE mounts of other volumes existed before this test: {:?}",
            fuse.before
        );
    }
}

/// Logins the test server accepted so far (one per SSH connection; sshd logs to `docker logs`).
fn server_logins(ctx: &e2e::Ctx) -> usize {
    let out = docker(&["logs", ctx.cfg.sshd_container.as_str()]);
    out.text()
        .lines()
        .filter(|l| l.contains("Accepted password for"))
        .count()
}

/// The mount outlives the last container for a moment: dockerd's second Mount of a fresh volume
/// (after copying the image's files up) and a container started right after another take it
/// back instead of connecting again; a while later nothing is mounted, and `docker volume rm`
/// right after a container does not wait for it.
#[test]
fn the_next_container_takes_the_mount_back() {
    let Some(ctx) = setup("the_next_container_takes_the_mount_back", Kind::Exclusive) else {
        return;
    };
    let fuse = NewFuseMounts::under(ctx.propagated_mount_root());
    let (vol, dir) = ctx.password_volume("linger");
    let before = server_logins(&ctx);
    ctx.run_ok(vol.as_str(), &[], "echo one > /data/one");
    ctx.run_ok(vol.as_str(), &[], "cat /data/one && echo two > /data/two");
    let logins = server_logins(&ctx) - before;
    assert_eq!(
        logins, 1,
        "two containers one after the other on a fresh volume: one SSH login expected"
    );
    ctx.assert_server_file(&dir, "two", "two\n");
    assert!(
        !fuse.list().is_empty(),
        "the mount lingers after the last container"
    );

    fuse.assert_gone_within(
        Duration::from_secs(20),
        "the mount is still there well after the last container left",
    );
    assert_eq!(volume_state(vol.as_str()), "idle");
    // A later container connects again and sees everything.
    assert_eq!(
        ctx.run_ok(vol.as_str(), &[], "cat /data/one /data/two"),
        "one\ntwo\n"
    );
    assert_eq!(
        server_logins(&ctx) - before,
        2,
        "a new login once the mount was gone"
    );

    // Removing the volume right after its container unmounts at once, and deletes nothing.
    docker(&["volume", "rm", vol.as_str()]).ok("volume rm right after the container");
    assert!(
        !volume_listed(vol.as_str()),
        "volume rm right after the container"
    );
    assert!(
        fuse.list().is_empty(),
        "no mount left after volume rm: {:?}",
        fuse.list()
    );
    ctx.assert_server_file(&dir, "one", "one\n");
}

// ---------------------------------------------------------------------------------------------
// Plugin settings and lifecycle (exclusive: they disable the plugin)

/// Disable (forced, volumes exist) and enable keep the volumes, their options and data.
#[test]
fn disable_enable_keeps_volumes() {
    let Some(ctx) = setup("disable_enable_keeps_volumes", Kind::Exclusive) else {
        return;
    };
    let (vol, dir) = ctx.password_volume("disen");
    ctx.run_ok(vol.as_str(), &[], "echo before > /data/f");

    // Docker refuses a plain disable while the plugin has volumes.
    docker(&["plugin", "disable", ctx.cfg.plugin.as_str()]).fails("plain disable with volumes");
    // If the restore below fails midway, setup() of the next test re-enables the plugin.
    docker(&["plugin", "disable", "-f", ctx.cfg.plugin.as_str()]).ok("plugin disable -f");
    docker(&["plugin", "enable", ctx.cfg.plugin.as_str()]).ok("plugin enable");

    let ls = docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("name={}", vol.name),
    ])
    .ok("volume ls after enable");
    assert!(
        ls.stdout.lines().any(|l| l == vol.as_str()),
        "volume listed after disable/enable"
    );
    docker(&["volume", "inspect", vol.as_str()]).ok("volume inspect after disable/enable");
    let out = ctx.run_ok(vol.as_str(), &[], "cat /data/f && echo after > /data/g");
    assert_eq!(out, "before\n");
    ctx.assert_server_file(&dir, "g", "after\n");
}

/// `docker plugin set state.source=DIR`: the plugin keeps its state there, root-only, and it
/// survives disable/enable.
#[test]
fn state_source_changed() {
    let Some(ctx) = setup("state_source_changed", Kind::Exclusive) else {
        return;
    };
    let state = ctx.cfg.dir.join(format!("state-{}", std::process::id()));
    let _ = fs::remove_dir_all(&state);
    fs::create_dir_all(&state).unwrap();
    // World-readable on purpose: the plugin must protect its own files.
    fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
    // Declared before the settings guard: removed after the plugin went back to its old state dir.
    let _state_dir = e2e::RemoveDir(state.clone());
    let _settings = ctx.plugin_settings(&[("state.source", state.display().to_string())]);

    let (vol, dir) = ctx.password_volume("state");
    ctx.run_ok(vol.as_str(), &[], "echo state > /data/s");
    ctx.assert_server_file(&dir, "s", "state\n");
    let files = walk(&state);
    assert!(
        !files.is_empty(),
        "the plugin wrote nothing to its new state.source {}",
        state.display()
    );
    let leaks = world_readable(&state);
    assert!(
        leaks.is_empty(),
        "state files readable by other users: {leaks:?}"
    );

    docker(&["plugin", "disable", "-f", ctx.cfg.plugin.as_str()]).ok("disable");
    docker(&["plugin", "enable", ctx.cfg.plugin.as_str()]).ok("enable");
    docker(&["volume", "inspect", vol.as_str()]).ok("volume inspect after re-enable");
    assert_eq!(ctx.run_ok(vol.as_str(), &[], "cat /data/s"), "state\n");
    drop(vol);
}

/// Key authentication: `docker plugin set sshkey.source=DIR` + `-o IdentityFile=/root/.ssh/KEY`.
#[test]
fn key_auth_via_sshkey_source() {
    let Some(ctx) = setup("key_auth_via_sshkey_source", Kind::Exclusive) else {
        return;
    };
    let keys = ctx.cfg.client_key_dir();
    assert!(
        keys.join("id_ed25519").exists(),
        "client key {} missing (tests/docker/sshd.sh up creates it)",
        keys.join("id_ed25519").display()
    );
    let _settings = ctx.plugin_settings(&[("sshkey.source", keys.display().to_string())]);
    let dir = ctx.remote_dir("key");
    let opts = vec![
        format!("sshcmd={}", ctx.sshcmd(&dir.remote)),
        format!("port={}", ctx.cfg.port),
        "IdentityFile=/root/.ssh/id_ed25519".to_string(),
    ];
    let vol = ctx.volume("key", &opts);
    ctx.run_ok(vol.as_str(), &[], "echo key > /data/k");
    assert_eq!(ctx.run_ok(vol.as_str(), &[], "cat /data/k"), "key\n");
    ctx.assert_server_file(&dir, "k", "key\n");

    // A key file that is not there: a clear error naming it.
    let missing = ctx.volume(
        "nokey",
        &[
            format!("sshcmd={}", ctx.sshcmd(&dir.remote)),
            format!("port={}", ctx.cfg.port),
            "IdentityFile=/root/.ssh/no_such_key".to_string(),
        ],
    );
    let out = ctx
        .run(missing.as_str(), &[], "true")
        .fails("mount with a missing key file");
    assert_mentions(&out.stderr, "no_such_key", "missing IdentityFile");
    drop(missing);
    drop(vol);
}

/// `docker plugin set DEBUG=1`: the plugin keeps working, logs the volume's Docker calls, and
/// never logs the password. The log check needs dockerd's log file (SSHFS_DOCKERD_LOG, which
/// tests/run.sh finds); without it only the first part is checked.
#[test]
fn debug_setting_logs_without_secrets() {
    let Some(ctx) = setup("debug_setting_logs_without_secrets", Kind::Exclusive) else {
        return;
    };
    let log = DockerdLog::from_now();
    let _settings = ctx.plugin_settings(&[("DEBUG", "1".to_string())]);
    let id = ctx.plugin_id();

    let (vol, dir) = ctx.password_volume("debug");
    ctx.run_ok(vol.as_str(), &[], "echo debug > /data/d");
    ctx.assert_server_file(&dir, "d", "debug\n");
    // A failing mount too: error paths must not leak the secret either.
    let secret = "Secret-Debug-Pw-9f3e1";
    let bad = ctx.volume(
        "debugbad",
        &[
            format!("sshcmd={}", ctx.sshcmd(&dir.remote)),
            format!("password={secret}"),
            format!("port={}", ctx.cfg.port),
        ],
    );
    let out = ctx
        .run(bad.as_str(), &[], "true")
        .fails("mount with a wrong password");
    assert_not_mentions(&out.text(), secret, "mount error with DEBUG=1");
    let inspect =
        docker(&["volume", "inspect", "-f", "{{json .Status}}", bad.as_str()]).ok("volume inspect");
    assert_not_mentions(&inspect.stdout, secret, "Status with DEBUG=1");

    let Some(log) = log else {
        eprintln!("note: dockerd's log is not a file here: the plugin's log was not checked");
        return;
    };
    let joined = log.plugin_lines(&id);
    let ours: Vec<&str> = joined.lines().collect();
    assert!(
        ours.iter().any(|l| l.contains(vol.as_str())),
        "with DEBUG=1 the plugin's log (in {}, tagged {id}) should name the volume {}; got {} lines:\n{}",
        log.file.display(),
        vol.name,
        ours.len(),
        ours.iter()
            .rev()
            .take(30)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_not_mentions(&joined, secret, "plugin log with DEBUG=1");
    assert_not_mentions(&joined, &ctx.cfg.password, "plugin log with DEBUG=1");
}

// ---------------------------------------------------------------------------------------------
// Compose and swarm (issue 6)

/// A compose file whose volume uses `driver:` + `driver_opts`; `down -v` keeps the remote data.
#[test]
fn compose_driver_opts() {
    let Some(ctx) = setup("compose_driver_opts", Kind::Shared) else {
        return;
    };
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compose/e2e.yml");
    let dir = ctx.remote_dir("compose");
    let project = ctx.unique("compose");
    let volume = ctx.unique("composevol");
    let _vol_guard = e2e::Volume {
        name: volume.clone(),
    };
    let port = ctx.cfg.port.to_string();
    let envs = [
        ("E2E_VOLUME", volume.as_str()),
        ("E2E_REMOTE_PATH", dir.remote.as_str()),
        ("SSHFS_PLUGIN", ctx.cfg.plugin.as_str()),
        ("SSHFS_TEST_PASSWORD", ctx.cfg.password.as_str()),
        ("SSHFS_TEST_PORT", port.as_str()),
        ("SSHFS_TEST_BUSYBOX_IMAGE", ctx.cfg.image.as_str()),
    ];
    let compose = |args: &[&str]| {
        let mut all = vec!["-p", project.as_str(), "-f", file.to_str().unwrap()];
        all.extend_from_slice(args);
        run_cmd_env("docker-compose", &all, &envs, DOCKER_TIMEOUT)
    };
    struct Down<F: Fn()>(F);
    impl<F: Fn()> Drop for Down<F> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    let _down = Down(|| {
        let _ = compose(&["down", "-v", "--remove-orphans", "--timeout", "1"]);
    });

    let up = compose(&["up", "--no-color", "--exit-code-from", "writer"]).ok("docker-compose up");
    assert_mentions(&up.text(), "written by compose", "compose service output");
    ctx.assert_server_file(&dir, "compose.txt", "written by compose\n");
    ctx.assert_volume_driver(&volume, "compose volume driver");

    compose(&["down", "-v", "--timeout", "1"]).ok("docker-compose down -v");
    assert!(!volume_listed(&volume), "down -v removed the volume");
    ctx.assert_server_file(&dir, "compose.txt", "written by compose\n");
}

/// A single-node swarm service with a volume-driver mount writes to the server.
#[test]
fn swarm_service_with_volume_driver() {
    let Some(ctx) = setup("swarm_service_with_volume_driver", Kind::Exclusive) else {
        return;
    };
    let state = docker(&["info", "-f", "{{.Swarm.LocalNodeState}}"]).ok("docker info");
    let created_swarm = state.stdout.trim() == "inactive";
    let marker = ctx.cfg.dir.join("swarm-created-by-e2e");
    struct Leave {
        marker: std::path::PathBuf,
        active: bool,
    }
    impl Drop for Leave {
        fn drop(&mut self) {
            if self.active {
                let _ = docker(&["swarm", "leave", "--force"]);
                // The bridge swarm created; left alone it would outlive the swarm.
                let _ = docker(&["network", "rm", "docker_gwbridge"]);
                let _ = fs::remove_file(&self.marker);
            }
        }
    }
    let _leave = Leave {
        marker: marker.clone(),
        active: created_swarm,
    };
    if created_swarm {
        fs::write(&marker, "tests/plugin_e2e.rs swarm test\n").unwrap();
        docker(&[
            "swarm",
            "init",
            "--advertise-addr",
            "127.0.0.1",
            "--listen-addr",
            "127.0.0.1:2377",
        ])
        .ok("docker swarm init on loopback");
    } else {
        eprintln!(
            "swarm already {}: using it, not leaving it",
            state.stdout.trim()
        );
    }

    let dir = ctx.remote_dir("swarm");
    let service = ctx.unique("svc");
    let volume = ctx.unique("swarmvol");
    struct Service(String);
    impl Drop for Service {
        fn drop(&mut self) {
            let _ = docker(&["service", "rm", self.0.as_str()]);
            // Task containers go away asynchronously; the volume is in use until they do.
            wait_until(Duration::from_secs(30), || {
                docker(&[
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=com.docker.swarm.service.name={}", self.0),
                ])
                .stdout
                .trim()
                .is_empty()
            });
        }
    }
    // Declared before the service guard, so the volume is removed after the service.
    let _vol_guard = e2e::Volume {
        name: volume.clone(),
    };
    let _svc_guard = Service(service.clone());
    let mount = format!(
        "type=volume,source={volume},target=/data,volume-driver={},volume-opt=sshcmd={},volume-opt=password={},volume-opt=port={}",
        ctx.cfg.plugin,
        ctx.sshcmd(&dir.remote),
        ctx.cfg.password,
        ctx.cfg.port
    );
    docker(&[
        "service",
        "create",
        "--detach",
        "--name",
        &service,
        "--restart-condition",
        "none",
        // Local image: don't ask a registry for its digest.
        "--no-resolve-image",
        "--container-label",
        e2e::LABEL,
        "--mount",
        &mount,
        &ctx.cfg.image,
        "sh",
        "-c",
        "echo from-swarm > /data/swarm.txt",
    ])
    .ok("docker service create with a volume-driver mount");

    let arrived = wait_until(Duration::from_secs(120), || {
        ctx.server_file(&dir, "swarm.txt").as_deref() == Some("from-swarm\n")
    });
    if !arrived {
        let ps = docker(&["service", "ps", "--no-trunc", service.as_str()]);
        panic!(
            "the swarm task's write did not reach the server within 120 s; service ps:\n{}\n{}",
            ps.stdout, ps.stderr
        );
    }
    ctx.assert_volume_driver(&volume, "service volume driver");
}

// ---------------------------------------------------------------------------------------------

/// `text` with the volume name blanked out, so an assertion on a word can't be satisfied by the
/// name Docker echoes back.
fn without(text: &str, volume: &str) -> String {
    text.replace(volume, "<volume>")
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

/// Files under `root` that another user could read: world-readable, and reachable through
/// directories that are world-searchable (`root` itself is world-searchable on purpose).
fn world_readable(root: &Path) -> Vec<String> {
    fn go(dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(md) = fs::symlink_metadata(&p) else {
                continue;
            };
            let mode = md.permissions().mode();
            if md.is_dir() {
                if mode & 0o001 != 0 {
                    go(&p, out);
                }
            } else if md.is_file() && mode & 0o004 != 0 {
                out.push(format!("{} ({:o})", p.display(), mode & 0o777));
            }
        }
    }
    let mut out = Vec::new();
    go(root, &mut out);
    out
}
