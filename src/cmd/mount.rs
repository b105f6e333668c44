//! The `mount` command: one remote directory mounted in the foreground with the same code the
//! plugin uses, until SIGINT/SIGTERM or an external `umount`. Reads the password from stdin when
//! asked (`password_stdin`), so it need not appear on the command line. With `writeback=yes`
//! the journal is in `writeback_dir` (outside the mountpoint); the stop drains it for as long
//! as `reconnect_timeout` and leaves the rest there for the next run.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::mount;
use crate::options::{self, Context, MountOptions};
use crate::secret::Secret;

/// The `mount` command: mounts in the foreground until SIGINT/SIGTERM or an external umount.
/// Exit codes: 0 after a clean unmount, 2 for bad options, 1 for anything else.
pub fn run(port: Option<u16>, options: &[String], remote: &str, mountpoint: &Path) -> ExitCode {
    let opts = match options_from_cli(port, options, remote)
        .and_then(|o| check_journal_place(&o, mountpoint).map(|()| o))
    {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("docker-volume-sshfs: {msg}");
            return ExitCode::from(2);
        }
    };
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(msg) => {
            eprintln!("docker-volume-sshfs: {msg}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve_until_stopped(&opts, mountpoint)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("docker-volume-sshfs: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// The mount options from `-p` and `-o` (and the password from stdin with `password_stdin`).
fn options_from_cli(
    port: Option<u16>,
    options: &[String],
    remote: &str,
) -> Result<MountOptions, String> {
    let mut raw: options::RawOptions = options
        .iter()
        .flat_map(|o| options::split_cli_options(o))
        .collect();
    if let Some(p) = port {
        raw.push(("port".into(), Some(p.to_string())));
    }
    let parsed = options::parse(&raw, Some(remote), Context::Command).map_err(|e| e.to_string())?;
    // Before any thread starts: `-o password=...` no longer shows in /proc/PID/cmdline.
    crate::secret::scrub_process_args();
    // The ssh_config file (~/.ssh/config, or -o ssh_config=PATH) fills what -o did not give.
    let (mut opts, res) = crate::ssh_config::apply::effective(&parsed, Context::Command)
        .map_err(|e| e.to_string())?;
    if let Some(f) = &res.file {
        let matched: Vec<String> = res.matched.iter().map(|m| m.to_string()).collect();
        tracing::info!(ssh_config = %f.display(), matched = ?matched, host = %opts.remote.host,
            port = opts.port, "ssh_config applied");
    }
    // Like ssh: keys accepted for the first time are recorded in known_hosts.
    opts.learn_host_keys = true;
    if parsed.wants_password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
        opts.password = Some(Secret::new(line.trim_end_matches(['\r', '\n'])));
    }
    Ok(opts)
}

/// A journal under the mountpoint would be written through the mount it journals (and be
/// hidden by it).
fn check_journal_place(opts: &MountOptions, mountpoint: &Path) -> Result<(), String> {
    let Some(dir) = opts.writeback.as_ref().and_then(|w| w.dir.as_deref()) else {
        return Ok(());
    };
    let full = |p: &Path| {
        std::fs::canonicalize(p)
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    if full(dir).starts_with(full(mountpoint)) {
        return Err(format!(
            "writeback_dir {} is inside the mountpoint {}: give a local directory outside the \
             mount, for example -o writeback_dir=$HOME/.local/state/sshfs-journal",
            dir.display(),
            mountpoint.display()
        ));
    }
    Ok(())
}

/// Mounts and serves until a stop signal or an external umount, then unmounts.
async fn serve_until_stopped(opts: &MountOptions, mountpoint: &Path) -> Result<(), String> {
    let mounted = mount::mount(opts, mountpoint)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(remote = %opts.remote, mountpoint = %mountpoint.display(), "mounted");
    let mut signals = match super::StopSignals::watch() {
        Ok(s) => s,
        Err(e) => {
            let _ = mounted.unmount().await;
            return Err(format!("cannot watch SIGTERM/SIGINT: {e}"));
        }
    };
    let external = tokio::select! {
        _ = signals.received() => false,
        _ = mounted.ended() => {
            // Every file was closed (released, so flushed) before the session could end; in
            // write-back mode the journal still drains below.
            tracing::info!("unmounted externally");
            true
        }
    };
    // Files may still be open with writes queued: they reach the server before we go (for as
    // long as an operation would wait for a lost server), and what cannot is named. The
    // write-back journal drains within the same time; what does not stays for the next run.
    let deadline = Instant::now() + opts.reconnect_timeout;
    let left = mounted.drain(deadline).await;
    if left > 0 {
        tracing::warn!(files = left, "stopping with changes not on the server");
    }
    log_counters(&mounted);
    let replay = deadline.saturating_duration_since(Instant::now());
    if external {
        mounted.close_ended(replay).await;
        return Ok(());
    }
    mounted
        .unmount_within(Duration::from_secs(5), replay)
        .await
        .map_err(|e| format!("unmount failed: {e}"))
}

/// What the mount sent, as Status shows it for the plugin's volumes (the benchmark and the
/// round-trip tests read this line).
fn log_counters(mounted: &mount::Mounted) {
    let c = mounted.stats().counters;
    tracing::info!(
        requests = c.requests,
        round_trips = c.round_trips,
        bytes_read = c.bytes_read,
        bytes_written = c.bytes_written,
        reconnects = c.reconnects,
        "traffic"
    );
    if let Some(wb) = mounted.writeback_stats() {
        tracing::info!(
            replayed_ops = wb.replayed_ops,
            pending_ops = wb.journal.pending_ops,
            pending_bytes = wb.journal.pending_bytes,
            conflicts = wb.conflicts,
            last_error = wb.last_error.as_deref().unwrap_or(""),
            "write-back"
        );
    }
}
