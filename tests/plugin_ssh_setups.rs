//! End-to-end: the plugin with the SSH setups people already have (issue 12): a Host alias in
//! the `sshkey` directory's `config` (`sshcmd=alias:/path`, port, user and key from the file,
//! shown in `docker volume inspect`), `-o ssh_config=` for another file there, a key held only
//! by an ssh-agent reached through the `sshagent` mount (its directory or the socket itself),
//! failing with a message naming the agent once it is gone, and a user certificate signed by a
//! CA the server trusts with no plain key authorised (a throwaway sshd on loopback, which the
//! plugin reaches through its host network).
//!
//! Every test changes plugin settings: all are `Kind::Exclusive`.
//! Run with SSHFS_E2E=1 against an installed plugin (see tests/README.md); skips without it.

#[path = "common/agent.rs"]
mod agent;
mod common;
mod e2e;

use std::fs;

use agent::Agent;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::{Ctx, Kind, RemoveDir, assert_mentions, docker, setup, wait_unmounted};

/// A fresh host directory under the test dir, removed on drop: a plugin mount's source.
fn host_dir(ctx: &Ctx, tag: &str) -> (PathBuf, RemoveDir) {
    let d = ctx.cfg.dir.join(ctx.unique(tag));
    fs::create_dir_all(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
    (d.clone(), RemoveDir(d))
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// `docker volume inspect`'s Status as JSON.
fn status(vol: &str) -> serde_json::Value {
    let out = docker(&["volume", "inspect", "-f", "{{json .Status}}", vol]).ok("volume inspect");
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// `sshcmd=e2ealias:/data/...` with HostName, Port, User and IdentityFile from
/// /root/.ssh/config (the sshkey mount); Status names the effective host, port, user, file and
/// Host line. `-o ssh_config=/root/.ssh/other` reads another file of the mount.
#[test]
fn host_alias_in_the_sshkey_config() {
    let Some(ctx) = setup("host_alias_in_the_sshkey_config", Kind::Exclusive) else {
        return;
    };
    let (keys, _rm) = host_dir(&ctx, "sshkey");
    fs::copy(
        ctx.cfg.client_key_dir().join("id_ed25519"),
        keys.join("id_e2e"),
    )
    .unwrap();
    fs::set_permissions(keys.join("id_e2e"), fs::Permissions::from_mode(0o600)).unwrap();
    let block = |alias: &str| {
        format!(
            "Host {alias}\n    HostName {}\n    Port {}\n    User tester\n    IdentityFile ~/.ssh/id_e2e\n",
            ctx.cfg.host, ctx.cfg.port
        )
    };
    write(
        &keys.join("config"),
        &format!(
            "# vieux users' config\nHost unrelated\n    Port 1\n\n{}",
            block("e2ealias")
        ),
    );
    write(&keys.join("other"), &block("otheralias"));
    let _settings = ctx.plugin_settings(&[("sshkey.source", keys.display().to_string())]);

    let dir = ctx.remote_dir("alias");
    let vol = ctx.volume("alias", &[format!("sshcmd=e2ealias:{}", dir.remote)]);
    let st = status(vol.as_str());
    assert_eq!(st["host"], ctx.cfg.host.as_str(), "{st}");
    assert_eq!(st["port"], ctx.cfg.port, "{st}");
    assert_eq!(st["user"], "tester", "{st}");
    assert_eq!(st["ssh_config"], "/root/.ssh/config", "{st}");
    assert_eq!(
        st["ssh_config_matched"][0], "/root/.ssh/config:5: Host e2ealias",
        "{st}"
    );
    ctx.run_ok(vol.as_str(), &[], "echo alias > /data/a");
    ctx.assert_server_file(&dir, "a", "alias\n");

    let other = ctx.volume(
        "other",
        &[
            format!("sshcmd=otheralias:{}", dir.remote),
            "ssh_config=/root/.ssh/other".to_string(),
        ],
    );
    assert_eq!(ctx.run_ok(other.as_str(), &[], "cat /data/a"), "alias\n");
    assert_eq!(status(other.as_str())["ssh_config"], "/root/.ssh/other");

    // Not in the sshkey mount: a clear error at mount time, and in Status.
    let missing = ctx.volume(
        "missing",
        &[
            format!("sshcmd=otheralias:{}", dir.remote),
            "ssh_config=/root/.ssh/no-such-config".to_string(),
        ],
    );
    let out = ctx
        .run(missing.as_str(), &[], "true")
        .fails("missing ssh_config");
    assert_mentions(
        &out.stderr,
        "/root/.ssh/no-such-config",
        "missing ssh_config",
    );
    assert_mentions(&out.stderr, "sshkey", "missing ssh_config");
}

/// `docker plugin set sshagent.source=SOCKET`, then `=DIR` (the directory holding it): a key
/// that exists only in the agent logs in, with no key file and no password anywhere. With the
/// agent gone the same volume fails, naming the agent; an agent started again in the directory
/// is found without touching the plugin.
#[test]
fn agent_through_the_sshagent_mount() {
    let Some(ctx) = setup("agent_through_the_sshagent_mount", Kind::Exclusive) else {
        return;
    };
    let key = ctx.cfg.client_key_dir().join("id_ed25519");
    // No key files the plugin could fall back to.
    let (empty_keys, _rm) = host_dir(&ctx, "nokeys");
    let dir = ctx.remote_dir("agent");
    let opts = vec![
        format!("sshcmd={}", ctx.sshcmd(&dir.remote)),
        format!("port={}", ctx.cfg.port),
    ];
    let vol = ctx.volume("agent", &opts);

    let (sock_dir, _rm2) = host_dir(&ctx, "agent-sock");
    let mut agent = Agent::start(&sock_dir);
    agent.add_and_delete(&key);
    {
        let _settings = ctx.plugin_settings(&[
            ("sshkey.source", empty_keys.display().to_string()),
            ("sshagent.source", agent.socket.display().to_string()),
        ]);
        ctx.run_ok(vol.as_str(), &[], "echo agent > /data/a");
        ctx.assert_server_file(&dir, "a", "agent\n");
        // SIGKILL leaves the socket file behind: nobody answers on it.
        agent.kill();
        wait_unmounted(vol.as_str());
        let out = ctx
            .run(vol.as_str(), &[], "true")
            .fails("mount with the agent gone");
        assert_mentions(&out.stderr, "cannot reach the ssh-agent", "agent gone");
        assert_mentions(&out.stderr, "/run/sshfs-agent", "agent gone");
    }

    let (agent_dir, _rm3) = host_dir(&ctx, "agent-dir");
    let mut agent = Agent::start(&agent_dir);
    agent.add_and_delete(&key);
    let _settings = ctx.plugin_settings(&[
        ("sshkey.source", empty_keys.display().to_string()),
        ("sshagent.source", agent_dir.display().to_string()),
    ]);
    assert_eq!(ctx.run_ok(vol.as_str(), &[], "cat /data/a"), "agent\n");
    // SIGTERM: ssh-agent removes its socket; the directory holds none.
    agent.terminate();
    wait_unmounted(vol.as_str());
    let out = ctx
        .run(vol.as_str(), &[], "true")
        .fails("mount with no agent socket");
    assert_mentions(&out.stderr, "no ssh-agent", "no agent socket");
    assert_mentions(&out.stderr, "sshagent.source", "no agent socket");
    // A new agent in the same directory is used at the next mount.
    let agent = Agent::start(&agent_dir);
    agent.add_and_delete(&key);
    assert_eq!(ctx.run_ok(vol.as_str(), &[], "cat /data/a"), "agent\n");
}

/// A user certificate signed by a CA the server trusts (`TrustedUserCAKeys`), its key not in
/// authorized_keys: `IdentityFile=/root/.ssh/id_user` finds `id_user-cert.pub` beside it.
#[test]
fn user_certificate_through_the_plugin() {
    let Some(ctx) = setup("user_certificate_through_the_plugin", Kind::Exclusive) else {
        return;
    };
    let mut sshd = common::Sshd::start();
    let (keys, _rm) = host_dir(&ctx, "certkeys");
    let ca = keys.join("ca");
    let key = keys.join("id_user");
    for k in [&ca, &key] {
        common::run(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "dvs-e2e", "-f"])
                .arg(k),
        );
    }
    common::run(
        Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(&ca)
            .args(["-I", "dvs-e2e-cert", "-n", "root", "-V", "-5m:+1h"])
            .arg(key.with_extension("pub")),
    );
    // The CA's private half has no business in the plugin's sshkey directory.
    let ca_pub = sshd.dir.path().join("user_ca.pub");
    fs::copy(ca.with_extension("pub"), &ca_pub).unwrap();
    fs::remove_file(&ca).unwrap();
    sshd.reconfigure(&format!("TrustedUserCAKeys {}", ca_pub.display()));
    let _settings = ctx.plugin_settings(&[("sshkey.source", keys.display().to_string())]);

    let sub = sshd.data.join("cert");
    fs::create_dir(&sub).unwrap();
    let opts = vec![
        format!("sshcmd=root@127.0.0.1:{}", sub.display()),
        format!("port={}", sshd.port),
        "IdentityFile=/root/.ssh/id_user".to_string(),
    ];
    let vol = ctx.volume("cert", &opts);
    ctx.run_ok(vol.as_str(), &[], "echo cert > /data/c");
    assert_eq!(fs::read_to_string(sub.join("c")).unwrap(), "cert\n");
    let log = sshd.log();
    assert!(
        log.contains("ED25519-CERT") && log.contains("dvs-e2e-cert"),
        "sshd logged no certificate login: {log}"
    );

    // Without the certificate the key alone is refused.
    fs::remove_file(keys.join("id_user-cert.pub")).unwrap();
    let plain = ctx.volume("plain", &opts);
    let out = ctx
        .run(plain.as_str(), &[], "true")
        .fails("key without its certificate");
    assert_mentions(&out.stderr, "rejected the key", "no certificate");
}
