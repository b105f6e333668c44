//! The Docker plugin protocol: HTTP over the plugin's unix socket (Plugin.Activate and every
//! VolumeDriver endpoint), decoded here and handed to `driver`.

use std::path::PathBuf;
use std::process::ExitCode;

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

/// Runs the plugin until SIGTERM.
pub fn serve_main(_args: ServeArgs) -> ExitCode {
    todo!()
}
