//! Command line: `serve` runs the Docker plugin (the bundle's entrypoint); `mount` mounts one
//! remote directory in the foreground with the same code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Docker volume plugin and mount command for remote directories over SSH"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Docker volume plugin (listens on the plugin socket).
    Serve(docker_volume_sshfs::protocol::ServeArgs),
    /// Mount user@host:/path at MOUNTPOINT until SIGINT/SIGTERM or an external umount.
    Mount {
        /// SSH port.
        #[arg(short = 'p', long = "port")]
        port: Option<u16>,
        /// Options, comma-separated: -o IdentityFile=~/.ssh/id_ed25519,allow_other,...
        #[arg(short = 'o', action = clap::ArgAction::Append)]
        options: Vec<String>,
        /// The remote directory: user@host:/path (user@host alone: the login's home).
        remote: String,
        /// Where to mount it (an existing directory).
        mountpoint: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Serve(args) => docker_volume_sshfs::protocol::serve_main(args),
        Command::Mount {
            port,
            options,
            remote,
            mountpoint,
        } => docker_volume_sshfs::mount::mount_main(port, &options, &remote, &mountpoint),
    }
}

/// Logs go to stderr (dockerd's log for the plugin). DEBUG=1/true (the plugin setting) adds
/// detail; RUST_LOG, if set, overrides everything. Secrets are never logged at any level.
fn init_logging() {
    let debug = std::env::var("DEBUG").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    });
    // fuser warns "Failed to umount" after every unmount we already did lazily ourselves.
    let default = if debug {
        "info,docker_volume_sshfs=debug,fuser::session=error"
    } else {
        "info,fuser::session=error"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(debug)
        .try_init();
}
