//! End-to-end: what the plugin keeps of a volume's secrets on the host (issue 11, "Secrets").
//! After `docker volume rm`, no byte of a password or passphrase may remain anywhere in the
//! plugin's state directory (the host side of `state.source`).
//!
//! Run with SSHFS_E2E=1 against an installed plugin (see tests/README.md); skips without it.

mod e2e;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::{Kind, RemoveDir, run_cmd, setup};

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
/// login uses an encrypted copy of the test key, so the mount itself proves that the plugin
/// reads the passphrase back from wherever it keeps it; the password (not the server's) is
/// never needed, because keys are tried first. While the volume exists, the sled database
/// holds neither marker either (secrets live outside it).
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

    let keys = RemoveDir(ctx.cfg.dir.join(format!("sshkey-secrets-{pid}")));
    let _ = fs::remove_dir_all(&keys.0);
    fs::create_dir_all(&keys.0).unwrap();
    fs::set_permissions(&keys.0, fs::Permissions::from_mode(0o700)).unwrap();
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
    let _settings = ctx.plugin_settings(&[("sshkey.source", keys.0.display().to_string())]);

    let state = ctx.plugin_mount_source("state");
    assert!(!state.is_empty(), "the plugin has no state mount source");
    let state = Path::new(&state);
    let dir = ctx.remote_dir("secrets-rm");
    let vol = ctx.volume(
        "secrets-rm",
        &[
            format!("sshcmd={}", ctx.sshcmd(&dir.remote)),
            format!("port={}", ctx.cfg.port),
            "IdentityFile=/root/.ssh/id_encrypted".to_string(),
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
