//! The plugin shipped the way Docker users get plugins (issue 14): built and pushed to a
//! registry with `build-rootfs.sh --push`, installed with the README's `docker plugin install`,
//! then upgraded with the README's `docker plugin upgrade` steps from version N to N+1 with
//! volumes created under N; and state written by a newer plugin refused clearly, not lost.
//!
//! Two builds of the same sources report different versions: N is the build tests/run.sh
//! installed (cargo has nothing to do), N+1 the same sources with SSHFS_BUILD_VERSION set, which
//! costs one release build of this crate (its dependencies are built already). So this is one
//! test, in a binary of its own. The registry is a local `docker-registry`
//! (`e2e::registry`); the plugin is installed under its own alias, next to the one under test.

mod e2e;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::registry::{Registry, build_and_push};
use e2e::{Kind, Volume, assert_mentions, docker, setup, volume_listed};

/// Removes the installed plugin on drop, with any volume of it the guards could not remove (a
/// failure may leave it disabled). Declared before the volumes, so dropped after them.
struct InstalledPlugin(String);

impl Drop for InstalledPlugin {
    fn drop(&mut self) {
        let plugin = self.0.as_str();
        let _ = docker(&["plugin", "enable", plugin]);
        let filter = format!("driver={plugin}");
        let left = docker(&["volume", "ls", "-q", "--filter", filter.as_str()]);
        for v in left.stdout.lines().filter(|v| !v.is_empty()) {
            let _ = docker(&["volume", "rm", "-f", v]);
        }
        let _ = docker(&["plugin", "rm", "-f", plugin]);
    }
}

/// `docker volume inspect -f '{{json .Status}}'`, parsed.
fn status(volume: &str) -> serde_json::Value {
    let out = docker(&["volume", "inspect", "-f", "{{json .Status}}", volume])
        .ok(&format!("docker volume inspect {volume}"));
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("Status of {volume} is not JSON ({e}): {}", out.stdout))
}

/// The plugin's own binary, as dockerd unpacked it.
fn plugin_binary(plugin: &str) -> PathBuf {
    let id = docker(&["plugin", "inspect", "-f", "{{.Id}}", plugin]).ok("plugin id");
    let root = docker(&["info", "-f", "{{.DockerRootDir}}"]).ok("docker root dir");
    Path::new(root.stdout.trim())
        .join("plugins")
        .join(id.stdout.trim())
        .join("rootfs/docker-volume-sshfs")
}

/// What `--version` of the installed plugin's binary prints.
fn plugin_version(plugin: &str) -> String {
    let bin = plugin_binary(plugin);
    let out = e2e::run_cmd(
        bin.to_str().unwrap(),
        &["--version"],
        Duration::from_secs(10),
    )
    .ok("the plugin's --version");
    out.stdout.trim().to_string()
}

/// The mount sources the plugin starts with, `name=source` each. `docker plugin set` writes
/// them into the plugin's config (moby's `Plugin.Set`), which is what `enable` uses; the
/// `Settings` that `docker plugin inspect` also shows are not updated by an upgrade.
fn mount_settings(plugin: &str) -> String {
    docker(&[
        "plugin",
        "inspect",
        "-f",
        "{{range .Config.Mounts}}{{.Name}}={{.Source}} {{end}}",
        plugin,
    ])
    .ok("plugin settings")
    .stdout
    .trim()
    .to_string()
}

fn step(started: Instant, what: &str) {
    eprintln!("[{:>6.1?}] {what}", started.elapsed());
}

/// Inserts a raw record into the (disabled) plugin's sled database, as a newer plugin would
/// have written it; `None` removes it. Returns what was stored under `name` before.
fn poke_record(state: &Path, name: &str, value: Option<&serde_json::Value>) -> Option<Vec<u8>> {
    let db = sled::open(state.join("docker-volume-sshfs.sled")).expect("open the plugin's state");
    let tree = db.open_tree("volumes").unwrap();
    let before = tree.get(name).unwrap().map(|v| v.to_vec());
    match value {
        Some(v) => tree.insert(name, serde_json::to_vec(v).unwrap()).unwrap(),
        None => tree.remove(name).unwrap(),
    };
    db.flush().unwrap();
    before
}

#[test]
fn install_from_registry_then_upgrade_keeps_volumes() {
    let Some(mut ctx) = setup("install_from_registry_then_upgrade", Kind::Exclusive) else {
        return;
    };
    let started = Instant::now();
    let registry = Registry::start();
    // Our own names: the repository of the plugin under test (vendor/sshfs-<session> on a
    // shared machine), installed under an alias of its own.
    let repo = ctx.cfg.plugin.trim_end_matches(":latest").to_string();
    let alias = format!("{repo}-registry:latest");
    // N: what this checkout builds (as the test binary was, in the same environment).
    let v1 = docker_volume_sshfs::version::VERSION.to_string();
    let v2 = format!("{v1}-e2e.next");
    let (ref1, ref2) = (
        format!("{}/{repo}:{v1}", registry.host()),
        format!("{}/{repo}:{v2}", registry.host()),
    );
    for (version, reference) in [(None, &ref1), (Some(v2.as_str()), &ref2)] {
        let out = build_and_push(version, None, reference).ok(&format!("push {reference}"));
        let size = out
            .stdout
            .lines()
            .find(|l| l.contains("rootfs:"))
            .unwrap_or("");
        step(started, &format!("built and pushed {reference}: {size}"));
        assert!(
            docker(&["plugin", "inspect", reference.as_str()])
                .stderr
                .contains("not found"),
            "--push must leave no local {reference}"
        );
    }

    // README, "Install": docker plugin install --grant-all-permissions --alias NAME REF [settings]
    let _ = docker(&["plugin", "rm", "-f", alias.as_str()]);
    let state = ctx.cfg.dir.join("state-registry");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state).unwrap();
    let keys = ctx.cfg.client_key_dir();
    let _installed = InstalledPlugin(alias.clone());
    docker(&[
        "plugin",
        "install",
        "--grant-all-permissions",
        "--alias",
        alias.as_str(),
        ref1.as_str(),
        &format!("state.source={}", state.display()),
        &format!("sshkey.source={}", keys.display()),
    ])
    .ok("docker plugin install from the registry");
    step(started, &format!("installed {ref1} as {alias}"));
    // Everything below runs against the installed copy.
    ctx.cfg.plugin = alias.clone();
    assert_eq!(plugin_version(&alias), format!("docker-volume-sshfs {v1}"));
    let settings = mount_settings(&alias);

    // Volumes under N: a password one, a key one with options whose effect shows (uid, a
    // cipher, keepalives), a read-only one. Each mounted once, so its host key is pinned.
    let pw_dir = ctx.remote_dir("reg-pw");
    let pw = ctx.volume("reg-pw", &ctx.password_opts(&pw_dir));
    let key_dir = ctx.remote_dir("reg-key");
    let key = ctx.volume(
        "reg-key",
        &[
            format!("sshcmd={}", ctx.sshcmd(&key_dir.remote)),
            format!("port={}", ctx.cfg.port),
            "IdentityFile=/root/.ssh/id_ed25519".into(),
            "uid=4321".into(),
            "Ciphers=aes128-gcm@openssh.com".into(),
            "ServerAliveInterval=7".into(),
        ],
    );
    let ro_dir = ctx.remote_dir("reg-ro");
    std::fs::write(ro_dir.host.join("kept"), "read-only data\n").unwrap();
    let mut ro_opts = ctx.password_opts(&ro_dir);
    ro_opts.push("ro".into());
    let ro = ctx.volume("reg-ro", &ro_opts);
    let volumes: [(&Volume, &e2e::RemoteDir); 3] =
        [(&pw, &pw_dir), (&key, &key_dir), (&ro, &ro_dir)];
    for (v, _) in &volumes[..2] {
        ctx.run_ok(v.as_str(), &[], "echo 'written by N' > /data/from-n");
    }
    assert_eq!(
        ctx.run_ok(ro.as_str(), &[], "cat /data/kept"),
        "read-only data\n"
    );
    let mut pinned = Vec::new();
    for (v, _) in &volumes {
        let st = status(v.as_str());
        assert_eq!(st["plugin_version"], v1.as_str(), "{st}");
        let hostkey = st["hostkey"].as_str().map(str::to_string);
        assert!(
            hostkey.as_deref().is_some_and(|k| k.starts_with("SHA256:")),
            "{st}"
        );
        pinned.push(hostkey);
    }
    let options_before: Vec<String> = volumes
        .iter()
        .map(|(v, _)| {
            docker(&["volume", "inspect", "-f", "{{json .Options}}", v.as_str()])
                .ok("options")
                .stdout
        })
        .collect();
    step(started, "volumes created and mounted under N");

    // README, "Upgrade": stop the containers, then disable, upgrade, enable.
    let log = e2e::DockerdLog::from_now();
    docker(&["plugin", "disable", "-f", alias.as_str()]).ok("docker plugin disable -f");
    docker(&[
        "plugin",
        "upgrade",
        "--grant-all-permissions",
        "--skip-remote-check",
        alias.as_str(),
        ref2.as_str(),
    ])
    .ok("docker plugin upgrade");
    // The upgrade replaces the config, and with it the mount sources set at install, by the new
    // version's defaults (the plugin would start on an empty state directory): the README says
    // to set them again before enabling.
    eprintln!(
        "mount sources right after the upgrade: {}",
        mount_settings(&alias)
    );
    docker(&[
        "plugin",
        "set",
        alias.as_str(),
        &format!("state.source={}", state.display()),
        &format!("sshkey.source={}", keys.display()),
    ])
    .ok("docker plugin set after the upgrade");
    docker(&["plugin", "enable", alias.as_str()]).ok("docker plugin enable after upgrade");
    step(started, &format!("upgraded {alias} to {ref2}"));

    assert_eq!(plugin_version(&alias), format!("docker-volume-sshfs {v2}"));
    assert_eq!(
        mount_settings(&alias),
        settings,
        "mount sources as set again after the upgrade"
    );
    if let Some(log) = log {
        let id = docker(&["plugin", "inspect", "-f", "{{.Id}}", alias.as_str()]).ok("id");
        let lines = log.plugin_lines(id.stdout.trim());
        assert_mentions(&lines, &format!("version={v2}"), "the start log line");
    }
    for (i, (v, _)) in volumes.iter().enumerate() {
        assert!(
            volume_listed(v.as_str()),
            "{} listed after the upgrade",
            v.name
        );
        let st = status(v.as_str());
        assert_eq!(st["plugin_version"], v2.as_str(), "{st}");
        assert_eq!(
            st["hostkey"].as_str().map(str::to_string),
            pinned[i],
            "pinned key kept: {st}"
        );
        let options = docker(&["volume", "inspect", "-f", "{{json .Options}}", v.as_str()])
            .ok("options")
            .stdout;
        assert_eq!(options, options_before[i]);
    }
    assert_eq!(
        ctx.run_ok(
            pw.as_str(),
            &[],
            "cat /data/from-n; echo 'written by N+1' > /data/from-n1"
        ),
        "written by N\n"
    );
    ctx.assert_server_file(&pw_dir, "from-n1", "written by N+1\n");
    // The key volume's options still apply: files shown as uid 4321.
    assert_eq!(
        ctx.run_ok(
            key.as_str(),
            &[],
            "cat /data/from-n; stat -c %u /data/from-n"
        ),
        "written by N\n4321\n"
    );
    let denied = ctx.run(ro.as_str(), &[], "cat /data/kept; echo x > /data/new");
    assert!(!denied.success(), "ro still applies: {}", denied.text());
    assert_mentions(&denied.stdout, "read-only data", "ro volume readable");
    assert_mentions(&denied.stderr, "read-only", "ro volume refuses writes");
    step(
        started,
        "every volume mounts under N+1 with its options and pinned key",
    );

    // A volume whose record a newer plugin rewrote in a schema this one does not know (as if
    // N+2 had run and the user went back to N+1): refused with a message saying so, still
    // listed, left untouched; the other volumes unaffected.
    let future_dir = ctx.remote_dir("future");
    let future = ctx.volume("future", &ctx.password_opts(&future_dir));
    docker(&["plugin", "disable", "-f", alias.as_str()]).ok("disable");
    let original = poke_record(&state, future.as_str(), None).expect("the volume's record");
    let mut newer: serde_json::Value = serde_json::from_slice(&original).unwrap();
    newer["schema"] = 99.into();
    newer["shape_of_v99"] = serde_json::json!({"unknown": true});
    poke_record(&state, future.as_str(), Some(&newer));
    docker(&["plugin", "enable", alias.as_str()]).ok("enable with a newer record");
    assert!(
        volume_listed(future.as_str()),
        "a newer volume stays listed"
    );
    // Get answers (dockerd forgets a volume whose Get fails), with the reason in Status.
    let st = status(future.as_str());
    assert_eq!(st["state"], "failed", "{st}");
    assert_mentions(&st.to_string(), "newer version of the plugin", "Status");
    let used = ctx.run(future.as_str(), &[], "touch /data/must-not-be-local");
    assert!(
        !used.success(),
        "a newer record must not mount: {}",
        used.text()
    );
    assert_mentions(&used.stderr, "newer version of the plugin", "newer schema");
    assert_mentions(&used.stderr, "docker plugin upgrade", "newer schema");
    assert_eq!(
        ctx.run_ok(pw.as_str(), &[], "cat /data/from-n1"),
        "written by N+1\n"
    );
    docker(&["plugin", "disable", "-f", alias.as_str()]).ok("disable");
    let kept = poke_record(
        &state,
        future.as_str(),
        Some(&serde_json::from_slice(&original).unwrap()),
    )
    .expect("the newer record is still there");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&kept).unwrap(),
        newer,
        "never overwritten"
    );
    docker(&["plugin", "enable", alias.as_str()]).ok("enable");
    assert_eq!(
        ctx.run_ok(future.as_str(), &[], "ls /data; stat -c %u /data"),
        "1000\n",
        "the same volume again once its record is readable (no local stand-in was made)"
    );
    step(
        started,
        "a newer schema is refused, listed and left untouched",
    );
}
