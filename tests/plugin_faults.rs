//! Issue 4 at the Docker level: faults injected for real into a running plugin setup (SSH
//! sessions killed, the SSH server stopped or given a new host key, the plugin killed with
//! SIGKILL, dockerd restarted), secrets, copy-up with a non-root login, and load. Each test
//! checks what users see through `docker` and what arrived on the server.
//!
//! Run with `tests/run.sh --test plugin_faults` (SSHFS_E2E=1; without it every test skips).
//! Almost every test here disturbs the plugin, the test SSH server or dockerd, so they take the
//! harness lock exclusively and never overlap with each other; each puts back what it broke
//! (Drop guards) so the plugin stays enabled, sshd runs and dockerd answers afterwards.

mod e2e;
#[path = "e2e/faults_helpers.rs"]
mod faults_helpers;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use e2e::{
    Container, DockerdLog, Kind, LABEL, NewFuseMounts, RemoveDir, assert_all, assert_mentions,
    assert_not_mentions, docker, run_cmd, setup, volume_listed, wait_until,
};
use faults_helpers::*;

/// Lines in a server-side file (0 if missing).
fn server_lines(p: &Path) -> usize {
    fs::read_to_string(p)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// `docker wait` with a bound; returns the exit code.
fn wait_exit(c: &Container, timeout: Duration) -> i64 {
    let out = run_cmd("docker", &["wait", c.name.as_str()], timeout);
    assert!(
        !out.timed_out,
        "container {} still running after {timeout:?} (a write hung?); logs:\n{}",
        c.name,
        docker(&["logs", c.name.as_str()]).text()
    );
    out.ok("docker wait").stdout.trim().parse().unwrap()
}

fn status_u64(status: &Value, key: &str) -> u64 {
    status.get(key).and_then(Value::as_u64).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// 1. Connection loss

/// A container appends a line every 50 ms (once through a file descriptor kept open, once by
/// reopening the file each time) while the server's SSH sessions are killed and then the whole
/// server container is restarted. The loop carries on without a single failed write and every
/// line is on the server, in order.
#[test]
fn writer_carries_on_through_dropped_sessions_and_sshd_restart() {
    let Some(ctx) = setup("writer_carries_on", Kind::Exclusive) else {
        return;
    };
    let _sshd = SshdGuard::new(&ctx.cfg);
    let (vol, dir) = ctx.password_volume("drop");
    const N: usize = 200;
    let script = format!(
        "exec 3>>/data/kept.log
         i=0
         while [ $i -lt {N} ]; do
           echo \"line $i\" >> /data/reopened.log || {{ echo \"write $i failed (reopened)\" >&2; exit 1; }}
           echo \"line $i\" >&3 || {{ echo \"write $i failed (kept fd)\" >&2; exit 2; }}
           i=$((i+1))
           sleep 0.05
         done
         exec 3>&- || exit 3
         echo finished"
    );
    let c = ctx.start_cmd(vol.as_str(), &["sh", "-c", &script]);
    let log = dir.host.join("reopened.log");
    let t0 = Instant::now();

    // Fault 1: the established sessions die (like a dropped link).
    assert!(
        wait_until(Duration::from_secs(30), || server_lines(&log) >= 20),
        "the writer did not get going"
    );
    let at_kill = server_lines(&log);
    let killed = kill_ssh_sessions(&ctx.cfg);
    assert!(
        killed >= 1,
        "no SSH session to kill: is the volume mounted over SSH?"
    );
    eprintln!(
        "killed {killed} SSH session(s) at line {at_kill} ({:?})",
        t0.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(30), || server_lines(&log)
            >= at_kill + 30),
        "the writer made no progress after its SSH session was killed (stuck at {} lines)",
        server_lines(&log)
    );

    // Fault 2: the server goes away entirely for a moment (container restart).
    let at_restart = server_lines(&log);
    let t = Instant::now();
    docker(&["restart", "-t", "1", ctx.cfg.sshd_container.as_str()])
        .ok("restart the sshd container");
    assert!(
        wait_sshd_ready(&ctx.cfg, Duration::from_secs(30)),
        "sshd did not come back"
    );
    eprintln!(
        "restarted sshd at line {at_restart} (down for {:?}, at {:?})",
        t.elapsed(),
        t0.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(60), || server_lines(&log)
            >= at_restart + 30),
        "the writer made no progress after the server restarted (stuck at {} lines)",
        server_lines(&log)
    );
    let status = inspect(vol.as_str())["Status"].clone();
    eprintln!("status while writing: {status}");
    assert!(
        status_u64(&status, "reconnects") >= 2,
        "the plugin should have reconnected twice: {status}"
    );

    let code = wait_exit(&c, Duration::from_secs(120));
    let logs = docker(&["logs", c.name.as_str()]);
    assert_eq!(code, 0, "the writing loop failed: {}", logs.text());
    assert_mentions(&logs.stdout, "finished", "writer output");
    eprintln!("writer finished after {:?}", t0.elapsed());
    drop(c);
    let expected: String = (0..N).map(|i| format!("line {i}\n")).collect();
    ctx.assert_server_file(&dir, "reopened.log", &expected);
    ctx.assert_server_file(&dir, "kept.log", &expected);
}

/// The server stays away longer than reconnect_timeout (3 s): a write fails with EIO in
/// bounded time instead of hanging; once the server is back, the running container and new
/// containers work again.
#[test]
fn server_outage_beyond_reconnect_timeout_fails_with_eio_then_recovers() {
    let Some(ctx) = setup("server_outage_eio", Kind::Exclusive) else {
        return;
    };
    let _sshd = SshdGuard::new(&ctx.cfg);
    let dir = ctx.remote_dir("outage");
    let mut opts = ctx.password_opts(&dir);
    opts.push("reconnect_timeout=3".into());
    let vol = ctx.volume("outage", &opts);
    let c = ctx.start(vol.as_str());
    c.exec("echo before > /data/before")
        .ok("write before the outage");

    stop_sshd(&ctx.cfg);
    let t = Instant::now();
    let out = c.exec("echo during > /data/during");
    let took = t.elapsed();
    eprintln!(
        "write during the outage: {:?} after {took:?}: {}",
        out.code,
        out.text().trim()
    );
    let out = out.fails("a write while the server is down");
    assert!(
        took < Duration::from_secs(30),
        "the failing write took {took:?}; reconnect_timeout=3 should bound it"
    );
    assert_mentions(
        &out.stderr,
        "Input/output error",
        "write while the server is down",
    );
    // A read of something not cached fails the same way.
    let t = Instant::now();
    let ls = c.exec("ls /data/no-such-dir-yet/");
    assert!(
        !ls.success() && t.elapsed() < Duration::from_secs(30),
        "ls during outage: {ls:?}"
    );
    let status = inspect(vol.as_str())["Status"].clone();
    eprintln!("status during the outage: {status}");

    start_sshd(&ctx.cfg);
    let t = Instant::now();
    let recovered = wait_until(Duration::from_secs(60), || {
        c.exec("echo again > /data/again").success()
    });
    assert!(
        recovered,
        "the running container's mount did not recover within 60 s of the server's return"
    );
    eprintln!(
        "running container writes again {:?} after the server came back",
        t.elapsed()
    );
    let out = ctx.run_ok(
        vol.as_str(),
        &[],
        "cat /data/before /data/again && echo new > /data/new",
    );
    assert_eq!(out, "before\nagain\n");
    ctx.assert_server_file(&dir, "new", "new\n");
    assert!(
        ctx.server_file(&dir, "during").is_none_or(|s| s.is_empty()),
        "the failed write must not have arrived"
    );
    drop(c);
    // And a fresh mount after the last container left.
    assert_eq!(ctx.run_ok(vol.as_str(), &[], "cat /data/new"), "new\n");
}

// ---------------------------------------------------------------------------------------------
// 2. Plugin crash

/// SIGKILL the plugin while a container uses a volume. dockerd restarts it; it answers, the
/// dead FUSE mount is detached, a new container mounts and uses the volume, and once every
/// container is gone nothing is mounted and the volume can be removed.
#[test]
fn plugin_killed_with_sigkill_recovers() {
    let Some(ctx) = setup("plugin_killed_with_sigkill_recovers", Kind::Exclusive) else {
        return;
    };
    let id = ctx.plugin_id();
    let fuse = NewFuseMounts::under(ctx.propagated_mount_root());
    // distinct(): each mount shows twice in mountinfo (the propagated-mount bind and the
    // filesystem under it are peers, so the mount propagates to both).
    let (vol, dir) = ctx.password_volume("crash");
    let a = ctx.start(vol.as_str());
    a.exec("echo from-a > /data/a").ok("write before the crash");
    assert_eq!(
        fuse.distinct().len(),
        1,
        "one FUSE mount while a container uses the volume"
    );

    let old = plugin_pid(&id).expect("the plugin's process");
    // SAFETY: kill(2) on the plugin's PID.
    unsafe {
        libc::kill(old as i32, libc::SIGKILL);
    }
    let t = Instant::now();
    let new = wait_plugin_running(&ctx, &id, Some(old), Duration::from_secs(60));
    eprintln!(
        "plugin pid {old} killed; pid {new} answers after {:?}",
        t.elapsed()
    );
    let info = inspect(vol.as_str());
    eprintln!("after the crash: {}", info["Status"]);
    assert_eq!(
        status_u64(&info["Status"], "active_mounts"),
        1,
        "the running container's mount is still counted"
    );
    fuse.assert_gone_within(
        Duration::from_secs(20),
        "the dead FUSE mount was not detached on the host",
    );
    let in_plugin = fuse_mounts_of(new);
    assert!(
        in_plugin.is_empty(),
        "FUSE mounts left in the new plugin's namespace: {in_plugin:?}"
    );

    // What the container that was running sees (README: restart it).
    let seen = a.exec("ls /data; echo x > /data/x");
    eprintln!(
        "the running container now sees: {:?} {}",
        seen.code,
        seen.text().trim()
    );
    assert!(
        !seen.success(),
        "a's FUSE server died; it cannot work: {seen:?}"
    );
    assert_mentions(
        &seen.text(),
        "Transport endpoint is not connected",
        "running container",
    );

    // A new container mounts afresh.
    let b = ctx.start(vol.as_str());
    let out = b
        .exec("cat /data/a && echo from-b > /data/b")
        .ok("new container after the crash");
    assert_eq!(out.stdout, "from-a\n");
    ctx.assert_server_file(&dir, "b", "from-b\n");
    assert_eq!(fuse.distinct().len(), 1, "exactly one live mount again");
    assert_eq!(
        status_u64(&inspect(vol.as_str())["Status"], "active_mounts"),
        2
    );

    // Counts balance: b leaves (a still counted, mount stays), then a leaves.
    drop(b);
    assert_eq!(
        fuse.distinct().len(),
        1,
        "still mounted while the old container is counted"
    );
    docker(&["restart", "-t", "1", a.name.as_str()])
        .ok("restart the old container (README advice)");
    a.exec("cat /data/b").ok("the restarted container works");
    drop(a);
    fuse.assert_gone_within(
        Duration::from_secs(15),
        "a FUSE mount is left after every container exited",
    );
    assert_eq!(
        status_u64(&inspect(vol.as_str())["Status"], "active_mounts"),
        0
    );
    docker(&["volume", "rm", vol.as_str()]).ok("volume rm once all containers are gone");
}

// ---------------------------------------------------------------------------------------------
// 3. dockerd restart

/// Stop dockerd and start it again (like .ci/run starts it): volumes, their options and their
/// Status (remote, pinned host key) survive, and mounting works afterwards.
#[test]
fn dockerd_restart_keeps_volumes() {
    let Some(ctx) = setup("dockerd_restart_keeps_volumes", Kind::Exclusive) else {
        return;
    };
    let dockerd = dockerd();
    let _sshd = SshdGuard::new(&ctx.cfg);
    let (vol, dir) = ctx.password_volume("dockerd");
    let dir2 = ctx.remote_dir("dockerd2");
    let mut opts2 = ctx.password_opts(&dir2);
    opts2.extend([
        "reconnect_timeout=7".to_string(),
        "Ciphers=aes128-ctr".into(),
        "cache=no".into(),
    ]);
    let vol2 = ctx.volume("dockerd2", &opts2);
    ctx.run_ok(vol.as_str(), &[], "echo before > /data/f");
    let before = inspect(vol.as_str());
    let before2 = inspect(vol2.as_str());
    assert!(
        before["Status"]["hostkey"]
            .as_str()
            .is_some_and(|k| k.starts_with("SHA256:")),
        "host key pinned at the first mount: {before}"
    );

    // Declared last so that it is dropped first: the other guards need a running dockerd.
    let _dockerd_guard = DockerdGuard(dockerd.clone());
    let took = dockerd.restart();
    eprintln!("dockerd restarted in {took:?}");
    let id = ctx.plugin_id();
    wait_plugin_running(&ctx, &id, None, Duration::from_secs(60));
    // dockerd stopped every container, the test sshd among them.
    start_sshd(&ctx.cfg);

    for v in [&vol, &vol2] {
        assert!(
            volume_listed(v.as_str()),
            "{} listed after the restart",
            v.name
        );
    }
    for (b, v) in [(&before, &vol), (&before2, &vol2)] {
        let after = inspect(v.as_str());
        for key in ["Driver", "Options", "CreatedAt", "Mountpoint", "Scope"] {
            assert_eq!(
                after[key], b[key],
                "{key} of {} after the dockerd restart",
                v.name
            );
        }
        for key in ["remote", "port", "hostkey"] {
            assert_eq!(
                after["Status"][key], b["Status"][key],
                "Status.{key} of {} after the dockerd restart",
                v.name
            );
        }
        assert_eq!(status_u64(&after["Status"], "active_mounts"), 0);
    }
    let out = ctx.run_ok(vol.as_str(), &[], "cat /data/f && echo after > /data/g");
    assert_eq!(out, "before\n");
    ctx.assert_server_file(&dir, "g", "after\n");
    ctx.run_ok(vol2.as_str(), &[], "echo two > /data/two");
    ctx.assert_server_file(&dir2, "two", "two\n");
}

// ---------------------------------------------------------------------------------------------
// 4. Copy-up with a non-root login

/// `docker run -v newvol:/etc/somedir IMAGE` where the image has files there, owned by various
/// uids: Docker copies them into the empty volume and chowns them. As `tester` the server
/// refuses the chowns; by default that is ignored and the copy succeeds; with strict_chown the
/// run fails with a clear error.
#[test]
fn copy_up_into_empty_volume_with_non_root_login() {
    let Some(ctx) = setup("copy_up_non_root", Kind::Shared) else {
        return;
    };
    let image = Image(format!("{}-copyup:{}", e2e::PREFIX, std::process::id()));
    let context = RemoveDir(std::env::temp_dir().join(ctx.unique("copyup-ctx")));
    fs::create_dir_all(&context.0).unwrap();
    fs::write(
        context.0.join("Dockerfile"),
        format!(
            "FROM {}\n\
             RUN mkdir -p /etc/somedir/sub \\\n\
              && echo alpha > /etc/somedir/a \\\n\
              && echo beta > /etc/somedir/b \\\n\
              && echo gamma > /etc/somedir/sub/c \\\n\
              && ln -s a /etc/somedir/link \\\n\
              && chown 1234:5678 /etc/somedir/b && chmod 0640 /etc/somedir/b \\\n\
              && chown -R 1000:1000 /etc/somedir/sub \\\n\
              && chown -h 4321:4321 /etc/somedir/link \\\n\
              && chown 65534:65534 /etc/somedir\n",
            ctx.cfg.image
        ),
    )
    .unwrap();
    docker(&[
        "build",
        "-q",
        "--network",
        "none",
        "--label",
        LABEL,
        "-t",
        image.0.as_str(),
        context.0.to_str().unwrap(),
    ])
    .ok("docker build of the copy-up image (local base image, no pulls)");

    let run = |vol: &str| {
        docker(&[
            "run",
            "--rm",
            "--label",
            LABEL,
            "--network",
            "none",
            "-v",
            &format!("{vol}:/etc/somedir"),
            image.0.as_str(),
            "sh",
            "-c",
            "cat /etc/somedir/a /etc/somedir/b /etc/somedir/sub/c /etc/somedir/link && ls -ln /etc/somedir",
        ])
    };

    let (vol, dir) = ctx.password_volume("copyup");
    let out = run(vol.as_str()).ok("copy-up into an empty volume as a non-root SSH user");
    eprintln!("copy-up listing:\n{}", out.stdout);
    assert!(
        out.stdout.starts_with("alpha\nbeta\ngamma\nalpha\n"),
        "{}",
        out.stdout
    );
    ctx.assert_server_file(&dir, "a", "alpha\n");
    ctx.assert_server_file(&dir, "b", "beta\n");
    ctx.assert_server_file(&dir, "sub/c", "gamma\n");
    let link = fs::read_link(dir.host.join("link")).expect("the symlink arrived on the server");
    assert_eq!(link, Path::new("a"));
    let mode = fs::metadata(dir.host.join("b"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o640, "modes are copied even though ownership is not");
    // What is done instead of the refused chown: files belong to the SSH login (tester).
    use std::os::unix::fs::MetadataExt;
    for f in ["a", "b", "sub/c"] {
        let uid = fs::metadata(dir.host.join(f)).unwrap().uid();
        assert_eq!(uid, 1000, "{f} on the server belongs to the SSH login");
    }

    let sdir = ctx.remote_dir("copyupstrict");
    let mut opts = ctx.password_opts(&sdir);
    opts.push("strict_chown".into());
    let strict = ctx.volume("copyupstrict", &opts);
    let out = run(strict.as_str()).fails("copy-up with strict_chown");
    eprintln!("strict_chown error: {}", out.stderr.trim());
    let msg = out.stderr.replace(strict.as_str(), "<volume>");
    assert_mentions(&msg, "chown", "strict_chown copy-up error");
    let lower = msg.to_lowercase();
    assert!(
        lower.contains("operation not permitted") || lower.contains("permission denied"),
        "strict_chown copy-up error says the server refused: {msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Host key swap

/// The server presents a new host key after the volume pinned the old one: the mount is refused
/// and docker's error names both fingerprints. The original key is restored afterwards.
#[test]
fn changed_host_key_is_refused_with_both_fingerprints() {
    let Some(ctx) = setup("changed_host_key_is_refused", Kind::Exclusive) else {
        return;
    };
    let mut sshd = SshdGuard::new(&ctx.cfg);
    let (vol, dir) = ctx.password_volume("hostkey");
    ctx.run_ok(vol.as_str(), &[], "echo pinned > /data/p");
    let pinned = inspect(vol.as_str())["Status"]["hostkey"]
        .as_str()
        .expect("docker volume inspect shows the pinned host key")
        .to_string();
    let keys = ctx.cfg.dir.join("hostkeys");
    let key_type = ["ed25519", "ecdsa", "rsa"]
        .into_iter()
        .find(|t| fingerprint_of(&keys.join(format!("ssh_host_{t}_key.pub"))) == pinned)
        .unwrap_or_else(|| panic!("pinned {pinned} is none of the server's host keys"));

    sshd.swap_host_keys();
    let presented = fingerprint_of(&keys.join(format!("ssh_host_{key_type}_key.pub")));
    assert_ne!(presented, pinned, "the server has a new {key_type} key");

    let out = ctx
        .run(vol.as_str(), &[], "cat /data/p")
        .fails("mount with a changed host key");
    eprintln!("host key error: {}", out.stderr.trim());
    assert_mentions(
        &out.stderr,
        &pinned,
        "error names the pinned (expected) key",
    );
    assert_mentions(&out.stderr, &presented, "error names the presented key");
    assert_mentions(&out.stderr, "host key", "changed host key error");
    assert_eq!(
        inspect(vol.as_str())["Status"]["hostkey"].as_str(),
        Some(pinned.as_str()),
        "the pin is kept"
    );
    // A volume created afresh pins the new key and works (the refusal is per volume).
    let (fresh, _) = ctx.password_volume("hostkeyfresh");
    ctx.run_ok(fresh.as_str(), &[], "true");
    assert_eq!(
        inspect(fresh.as_str())["Status"]["hostkey"].as_str(),
        Some(presented.as_str())
    );
    drop(fresh);

    drop(sshd); // original keys back
    assert_eq!(
        ctx.run_ok(vol.as_str(), &[], "cat /data/p"),
        "pinned\n",
        "works again with the original key"
    );
    ctx.assert_server_file(&dir, "p", "pinned\n");
}

// ---------------------------------------------------------------------------------------------
// 6. Secrets

/// With DEBUG=1: passwords and passphrases never appear in the plugin's log, in Status or in
/// error messages; the state files are root-only; password_file and an encrypted key with a
/// passphrase work.
#[test]
fn secrets_stay_secret_with_debug_logging() {
    let Some(ctx) = setup("secrets_stay_secret", Kind::Exclusive) else {
        return;
    };
    let id = ctx.plugin_id();
    let log = DockerdLog::from_now();
    if log.is_none() {
        eprintln!("note: dockerd's stderr is not a file here; the plugin log is not checked");
    }

    let pid = std::process::id();
    let wrong = format!("Wrong-Pw-{pid}-zq7");
    let passphrase = format!("Pass-Phrase-{pid}-kx3");
    let wrong_passphrase = format!("Bad-Phrase-{pid}-mm1");
    let password = ctx.cfg.password.clone();

    // The sshkey dir: a password file and the test key, re-encrypted with a passphrase.
    let keys = RemoveDir(ctx.cfg.dir.join(format!("sshkey-{pid}")));
    let _ = fs::remove_dir_all(&keys.0);
    fs::create_dir_all(&keys.0).unwrap();
    fs::set_permissions(&keys.0, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(keys.0.join("server.pw"), format!("{password}\n")).unwrap();
    fs::set_permissions(keys.0.join("server.pw"), fs::Permissions::from_mode(0o600)).unwrap();
    let enc = keys.0.join("id_encrypted");
    fs::copy(ctx.cfg.client_key_dir().join("id_ed25519"), &enc).unwrap();
    fs::set_permissions(&enc, fs::Permissions::from_mode(0o600)).unwrap();
    run_cmd(
        "ssh-keygen",
        &[
            "-q",
            "-p",
            "-P",
            "",
            "-N",
            passphrase.as_str(),
            "-f",
            enc.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    )
    .ok("encrypting a copy of the test key");

    let settings = ctx.plugin_settings(&[
        ("DEBUG", "1".to_string()),
        ("sshkey.source", keys.0.display().to_string()),
    ]);
    let root_dir = ctx.remote_dir("secrets");
    let base = |dir: &e2e::RemoteDir| {
        vec![
            format!("sshcmd={}", ctx.sshcmd(&dir.remote)),
            format!("port={}", ctx.cfg.port),
        ]
    };
    let with = |extra: &[String]| {
        let mut o = base(&root_dir);
        o.extend(extra.iter().cloned());
        o
    };
    let mut outputs = Vec::new();

    // Password option: mount, use, unmount.
    let v_pw = ctx.volume("secpw", &with(&[format!("password={password}")]));
    ctx.run_ok(v_pw.as_str(), &[], "echo pw > /data/pw.txt");
    // Wrong password: fails, says why, never echoes it.
    let v_wrong = ctx.volume("secwrong", &with(&[format!("password={wrong}")]));
    let out = ctx
        .run(v_wrong.as_str(), &[], "true")
        .fails("mount with a wrong password");
    assert_mentions(&out.stderr, "authentication", "wrong password");
    outputs.push(out.text());
    // Right password, missing remote path: the error must not carry the password either.
    let v_missing = ctx.volume(
        "secmissing",
        &[
            format!(
                "sshcmd={}",
                ctx.sshcmd(&format!("{}/missing", root_dir.remote))
            ),
            format!("port={}", ctx.cfg.port),
            format!("password={password}"),
        ],
    );
    outputs.push(
        ctx.run(v_missing.as_str(), &[], "true")
            .fails("missing remote path")
            .text(),
    );
    // password_file in the sshkey mount.
    let v_file = ctx.volume(
        "secfile",
        &with(&["password_file=/root/.ssh/server.pw".to_string()]),
    );
    assert_eq!(
        ctx.run_ok(v_file.as_str(), &[], "cat /data/pw.txt"),
        "pw\n",
        "password_file works"
    );
    // Encrypted key + passphrase.
    let v_key = ctx.volume(
        "seckey",
        &with(&[
            "IdentityFile=/root/.ssh/id_encrypted".to_string(),
            format!("passphrase={passphrase}"),
        ]),
    );
    assert_eq!(
        ctx.run_ok(v_key.as_str(), &[], "cat /data/pw.txt"),
        "pw\n",
        "encrypted key works"
    );
    // The same key without its passphrase, and with a wrong one: clear errors.
    let v_nopp = ctx.volume(
        "secnopp",
        &with(&["IdentityFile=/root/.ssh/id_encrypted".to_string()]),
    );
    let out = ctx
        .run(v_nopp.as_str(), &[], "true")
        .fails("encrypted key without passphrase");
    assert_mentions(
        &out.stderr,
        "passphrase",
        "encrypted key without passphrase",
    );
    outputs.push(out.text());
    let v_badpp = ctx.volume(
        "secbadpp",
        &with(&[
            "IdentityFile=/root/.ssh/id_encrypted".to_string(),
            format!("passphrase={wrong_passphrase}"),
        ]),
    );
    let out = ctx
        .run(v_badpp.as_str(), &[], "true")
        .fails("encrypted key with a wrong passphrase");
    eprintln!("wrong passphrase error: {}", out.stderr.trim());
    assert_mentions(
        &out.stderr,
        "passphrase",
        "encrypted key with a wrong passphrase",
    );
    outputs.push(out.text());

    // Status of every volume: no secret.
    let vols = [
        &v_pw, &v_wrong, &v_missing, &v_file, &v_key, &v_nopp, &v_badpp,
    ];
    for v in vols {
        let status = inspect(v.as_str())["Status"].to_string();
        outputs.push(status);
    }
    // The password_file volume's whole inspect output has no password at all.
    let file_inspect = docker(&["volume", "inspect", v_file.as_str()])
        .ok("inspect")
        .stdout;
    assert_not_mentions(
        &file_inspect,
        &password,
        "inspect of the password_file volume",
    );

    for text in &outputs {
        for secret in [&password, &wrong, &passphrase, &wrong_passphrase] {
            assert_not_mentions(text, secret, "error output or Status");
        }
    }

    // The plugin's log at DEBUG level.
    if let Some(log) = &log {
        let lines = log.plugin_lines(&id);
        assert!(
            lines.contains("DEBUG") || lines.contains("debug"),
            "DEBUG=1 should produce debug lines in {}; got:\n{}",
            log.file.display(),
            lines.lines().rev().take(20).collect::<Vec<_>>().join("\n")
        );
        assert!(
            lines.contains(v_wrong.as_str()),
            "the log covers the failed mount"
        );
        for secret in [&password, &wrong, &passphrase, &wrong_passphrase] {
            if let Some(line) = lines.lines().find(|l| l.contains(secret.as_str())) {
                panic!(
                    "a secret appears in the plugin's log ({}): {line}",
                    log.file.display()
                );
            }
        }
        eprintln!(
            "checked {} plugin log lines at DEBUG level",
            lines.lines().count()
        );
    }

    // State files: root-only.
    let state = ctx.plugin_mount_source("state");
    let mut checked = 0;
    let mut bad = Vec::new();
    fn walk(p: &Path, bad: &mut Vec<String>, checked: &mut usize) {
        let Ok(md) = fs::symlink_metadata(p) else {
            return;
        };
        *checked += 1;
        let mode = md.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bad.push(format!("{} ({mode:o})", p.display()));
        }
        if md.is_dir() {
            for e in fs::read_dir(p).into_iter().flatten().flatten() {
                walk(&e.path(), bad, checked);
            }
        }
    }
    let db = Path::new(&state).join("docker-volume-sshfs.sled");
    walk(&db, &mut bad, &mut checked);
    assert!(checked > 1, "no state database under {}", db.display());
    assert!(
        bad.is_empty(),
        "state files with group/other permissions: {bad:?}"
    );
    eprintln!(
        "{checked} state files/dirs under {} are root-only",
        db.display()
    );
    drop(settings);
}

// ---------------------------------------------------------------------------------------------
// 7. Load

/// 50 containers mount one volume at once; 20 volumes are mounted at once; 200 mount/unmount
/// cycles through the plugin socket. No mount, fd, thread or memory is leaked.
#[test]
fn load_many_mounts_no_leaks() {
    let Some(ctx) = setup("load_many_mounts_no_leaks", Kind::Exclusive) else {
        return;
    };
    let id = ctx.plugin_id();
    let pid = plugin_pid(&id).expect("the plugin's process");
    let fuse = NewFuseMounts::under(ctx.propagated_mount_root());
    let socket = plugin_socket(&id);

    let (vol, dir) = ctx.password_volume("load");
    fs::write(dir.host.join("shared"), "same for everyone\n").unwrap();
    // Warm up (thread pools, allocator arenas) before the baseline.
    ctx.run_ok(vol.as_str(), &[], "cat /data/shared");
    fuse.assert_gone_within(Duration::from_secs(10), "mount left after the warm-up");
    let u0 = usage(pid);
    eprintln!("baseline: {u0:?}");

    // 50 containers on one volume at once.
    let t = Instant::now();
    let jobs: Vec<_> = (0..50)
        .map(|i| {
            (
                vol.as_str(),
                format!("cat /data/shared && echo {i} > /data/c{i}"),
            )
        })
        .collect();
    assert_all(&ctx.run_parallel(&jobs), "container", |r| {
        r.success() && r.stdout == "same for everyone\n"
    });
    for i in 0..50 {
        ctx.assert_server_file(&dir, &format!("c{i}"), &format!("{i}\n"));
    }
    eprintln!("50 containers on one volume: {:?}", t.elapsed());
    fuse.assert_gone_within(Duration::from_secs(15), "mount left");
    let u1 = usage(pid);
    eprintln!("after 50 containers: {u1:?}");

    // 20 volumes at once, one container each.
    let t = Instant::now();
    let vols: Vec<_> = (0..20)
        .map(|i| ctx.password_volume(&format!("load{i}")))
        .collect();
    let jobs: Vec<_> = vols
        .iter()
        .enumerate()
        .map(|(i, (v, _))| {
            (
                v.as_str(),
                format!("echo vol{i} > /data/me && cat /data/me"),
            )
        })
        .collect();
    let results = ctx.run_parallel(&jobs);
    for (i, r) in results.iter().enumerate() {
        assert!(
            r.success() && r.stdout == format!("vol{i}\n"),
            "volume {i}: {r:?}"
        );
        ctx.assert_server_file(&vols[i].1, "me", &format!("vol{i}\n"));
    }
    eprintln!("20 volumes at once: {:?}", t.elapsed());
    drop(vols);
    fuse.assert_gone_within(Duration::from_secs(15), "mount left");
    let u2 = usage(pid);
    eprintln!("after 20 volumes: {u2:?}");

    // 200 mount/unmount cycles straight through the socket, each with its own mount ID; every
    // 25th one also reads through the mount on the host.
    let cycle_call = |i: usize, method: &str| -> Value {
        let mid = format!("sshfs-e2e-cycle-{i}");
        let answer = plugin_call(
            &socket,
            &format!("VolumeDriver.{method}"),
            &json!({"Name": vol.name, "ID": mid}),
        );
        if let Some(e) = err_of(&answer) {
            panic!("cycle {i}: {method} failed: {e}");
        }
        answer
    };
    let t = Instant::now();
    for i in 0..200 {
        let m = cycle_call(i, "Mount");
        if i % 25 == 0 {
            let mp = m["Mountpoint"].as_str().expect("Mountpoint");
            let host = fuse.root.join(mp.trim_start_matches("/mnt/volumes/"));
            let got = fs::read_to_string(host.join("shared"))
                .unwrap_or_else(|e| panic!("cycle {i}: reading via {}: {e}", host.display()));
            assert_eq!(got, "same for everyone\n");
        }
        cycle_call(i, "Unmount");
        if i % 50 == 49 {
            eprintln!("after {} cycles: {:?}", i + 1, usage(pid));
        }
    }
    let cycles = t.elapsed();
    fuse.assert_gone_within(Duration::from_secs(15), "mount left");
    // Idle blocking-pool threads end after 10 s; give them the chance before measuring.
    let mut u3 = usage(pid);
    wait_until(Duration::from_secs(15), || {
        u3 = usage(pid);
        u3.fds <= u0.fds + 5 && u3.threads <= u0.threads + 4
    });
    eprintln!(
        "200 mount/unmount cycles: {cycles:?} ({:.0} ms per cycle)",
        cycles.as_secs_f64() * 1000.0 / 200.0
    );
    eprintln!("after the cycles: {u3:?}");
    eprintln!(
        "PLUGIN USAGE before -> after: RSS {} -> {} KiB, fds {} -> {}, threads {} -> {}",
        u0.rss_kib, u3.rss_kib, u0.fds, u3.fds, u0.threads, u3.threads
    );
    assert_eq!(
        status_u64(&inspect(vol.as_str())["Status"], "active_mounts"),
        0,
        "every cycle's count is gone"
    );
    assert!(
        u3.fds <= u0.fds + 5,
        "file descriptors leaked: {} -> {}",
        u0.fds,
        u3.fds
    );
    assert!(
        u3.threads <= u0.threads + 4,
        "threads leaked: {} -> {}",
        u0.threads,
        u3.threads
    );
    assert!(
        u3.rss_kib < u0.rss_kib + 30 * 1024,
        "RSS grew by more than 30 MiB: {} -> {} KiB",
        u0.rss_kib,
        u3.rss_kib
    );
    docker(&["volume", "rm", vol.as_str()]).ok("volume rm after the load");
}
