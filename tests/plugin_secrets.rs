//! End-to-end: what the plugin keeps of a volume's secrets on the host (issue 11, "Secrets").
//! After `docker volume rm`, no byte of a password or passphrase may remain anywhere in the
//! plugin's state directory (the host side of `state.source`).
//!
//! Run with SSHFS_E2E=1 against an installed plugin (see tests/README.md); skips without it.

mod e2e;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::{Kind, run_cmd, setup};

/// Files under `dir` that contain `needle` (`grep -r -a -l`): an empty list means no match.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let out = run_cmd(
        "grep",
        &["-r", "-a", "-l", "-F", needle, dir.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert!(
        matches!(out.code, Some(0) | Some(1)),
        "grep of {} failed: {}",
        dir.display(),
        out.stderr
    );
    out.stdout.lines().map(str::to_string).collect()
}

/// A volume with a password and a key passphrase, both unique markers, is mounted once by a
/// container and removed: neither marker is left in any file of the state directory. The
/// login uses the test key (tried before the password, so the marker password is never
/// needed; the passphrase of an unencrypted key is unused). While the volume exists, the sled
/// database holds neither marker either: secrets live outside it. (That Mount reads a password
/// back from where it is kept, every password volume of the other e2e tests shows.)
#[test]
fn volume_rm_leaves_no_secret_in_the_state_dir() {
    let Some(ctx) = setup("secrets_gone_after_rm", Kind::Exclusive) else {
        return;
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let pid = std::process::id();
    let password = format!("PwMarker-{pid}-{nanos:08x}-q9");
    let passphrase = format!("PpMarker-{pid}-{nanos:08x}-k4");

    let _settings = ctx.plugin_settings(&[(
        "sshkey.source",
        ctx.cfg.client_key_dir().display().to_string(),
    )]);

    let state = ctx.plugin_mount_source("state");
    assert!(!state.is_empty(), "the plugin has no state mount source");
    let state = Path::new(&state);
    let dir = ctx.remote_dir("secrets-rm");
    let vol = ctx.volume(
        "secrets-rm",
        &[
            format!("sshcmd={}", ctx.sshcmd(&dir.remote)),
            format!("port={}", ctx.cfg.port),
            "IdentityFile=/root/.ssh/id_ed25519".to_string(),
            // Names are case-insensitive: a secret is one whatever its spelling.
            format!("Password={password}"),
            format!("passphrase={passphrase}"),
        ],
    );
    ctx.run_ok(vol.as_str(), &[], "echo kept > /data/kept.txt");
    ctx.assert_server_file(&dir, "kept.txt", "kept\n");

    // Every finding is collected first, so that one run shows all of them.
    let mut problems = Vec::new();
    let sled = state.join("docker-volume-sshfs.sled");
    let secrets = [("password", &password), ("passphrase", &passphrase)];
    for (what, marker) in secrets {
        let found = files_containing(&sled, marker);
        if !found.is_empty() {
            problems.push(format!(
                "the {what} of the existing volume is in the sled database: {found:?}"
            ));
        }
    }

    ctx.rm_volume(vol.as_str()).ok("docker volume rm");
    for (what, marker) in secrets {
        let found = files_containing(state, marker);
        if !found.is_empty() {
            problems.push(format!(
                "the {what} of the removed volume is still in the state directory {}: {found:?}",
                state.display()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The remote files are never touched by rm.
    ctx.assert_server_file(&dir, "kept.txt", "kept\n");
}
