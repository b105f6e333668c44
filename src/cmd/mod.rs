//! The two commands of the binary: `serve` (the Docker plugin) and `mount` (one directory in
//! the foreground). `main.rs` parses the command line and calls one of them; what both need
//! from the process (a runtime, the stop signals) is here.

pub mod mount;
pub mod serve;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// The multi-threaded runtime both commands run on.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// SIGTERM (dockerd stopping the plugin, `kill`) and SIGINT (Ctrl-C) ask a command to stop.
struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    /// Starts watching; must be called on the runtime.
    fn watch() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves at the first of the two signals.
    async fn received(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}
