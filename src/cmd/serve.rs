//! The `serve` command: the plugin process (the bundle's entrypoint). It owns the process-level
//! order that dockerd relies on: listen on the socket first (dockerd gives a new plugin ~12.5 s),
//! open the state, do the slow start-up work (detaching dead mounts) in the background, serve
//! until SIGTERM, then unmount within dockerd's 10 s before SIGKILL.

use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::driver::Driver;
use crate::protocol;
use crate::state::Store;

/// Where the plugin listens and keeps its data (defaults match the bundle's config.json).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Unix socket Docker dials.
    #[arg(long, default_value = "/run/docker/plugins/sshfs.sock")]
    pub socket: PathBuf,
    /// Directory of the sled state database (the `state` mount).
    #[arg(long, default_value = "/mnt/state")]
    pub state_dir: PathBuf,
    /// Parent of the per-volume mountpoints (the propagated mount).
    #[arg(long, default_value = "/mnt/volumes")]
    pub volumes_dir: PathBuf,
}

/// dockerd SIGKILLs a stopping plugin 10 s after SIGTERM; drain and unmount within this.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(8);

/// How long to wait for the state database at start-up: a previous instance that is still
/// exiting holds its lock for a moment.
const STATE_OPEN_RETRY: Duration = Duration::from_secs(6);

/// Runs the plugin until SIGTERM.
pub fn run(args: ServeArgs) -> ExitCode {
    // sled keeps creating files (snapshots, blobs) after start-up, from its own threads: a
    // process-wide umask is the only way to keep every one of them root-only. Directories that
    // others must traverse (mountpoints) get their mode set explicitly.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let runtime = match super::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(serve(args));
    // Calls still in flight (a Mount waiting on a dead server) end here, without waiting.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    // Listen first: dockerd dials a new plugin for only ~12.5 s. Connections wait in the
    // backlog until the state is open, which takes milliseconds.
    let listener = bind(&args.socket)?;
    // Before any mount can look for an agent.
    crate::agent_mount::take();
    let store = match open_store(&args.state_dir).await {
        Ok(s) => s,
        Err(e) => {
            // Exiting (rather than answering every call with this error) keeps dockerd from
            // forgetting the volumes: it only drops a volume whose Get answers an error.
            let _ = std::fs::remove_file(&args.socket);
            return Err(e);
        }
    };
    let driver = Driver::new(store, args.volumes_dir.clone());
    tracing::info!(
        socket = %args.socket.display(),
        state = %args.state_dir.display(),
        volumes = %args.volumes_dir.display(),
        version = %crate::version::VERSION,
        "listening"
    );
    tokio::spawn({
        let driver = driver.clone();
        async move { driver.startup().await }
    });
    let app = protocol::router(driver.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .into_future(),
    );
    tokio::select! {
        _ = stop_requested() => {}
        result = &mut server => {
            let _ = std::fs::remove_file(&args.socket);
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("the plugin socket failed: {e}")),
                Err(e) => Err(format!("the plugin socket failed: {e}")),
            };
        }
    }
    // Stop taking calls, but do not wait for those in flight: one Mount stuck on a server that
    // never answers would hold up every other volume until dockerd's SIGKILL.
    let _ = stop_tx.send(());
    let started = Instant::now();
    tracing::info!("stopping: draining and unmounting volumes (mount counts are kept)");
    driver.shutdown(started + SHUTDOWN_BUDGET).await;
    tracing::info!(
        ms = started.elapsed().as_millis() as u64,
        "stopped: every volume drained and unmounted"
    );
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}

fn bind(socket: &Path) -> Result<tokio::net::UnixListener, String> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the socket directory {}: {e}", dir.display()))?;
    }
    // A socket file left by a crashed run makes bind fail with EADDRINUSE.
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(format!(
                "cannot replace the old socket {}: {e}",
                socket.display()
            ));
        }
    }
    tokio::net::UnixListener::bind(socket)
        .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))
}

async fn open_store(dir: &Path) -> Result<Store, String> {
    let deadline = Instant::now() + STATE_OPEN_RETRY;
    loop {
        let d = dir.to_path_buf();
        let result = tokio::task::spawn_blocking(move || Store::open(&d))
            .await
            .map_err(|e| format!("opening the state database failed: {e}"))?;
        match result {
            Ok(store) => return Ok(store),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("state database not ready, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Resolves when the plugin is asked to stop.
async fn stop_requested() {
    match super::StopSignals::watch() {
        Ok(mut signals) => signals.received().await,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM/SIGINT ({e}); stop the plugin with SIGKILL");
            std::future::pending().await
        }
    }
}
