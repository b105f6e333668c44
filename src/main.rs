//! Command line: `serve` runs the Docker plugin (the bundle's entrypoint); `mount` mounts one
//! remote directory in the foreground with the same code (`cmd`). Process-wide settings live
//! here, each with its reason: logging, and the allocator tuning of the plugin process.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use docker_volume_sshfs::cmd;

#[derive(Parser)]
#[command(
    version = docker_volume_sshfs::version::VERSION,
    about = "Docker volume plugin and mount command for remote directories over SSH"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Docker volume plugin (listens on the plugin socket).
    Serve(cmd::serve::ServeArgs),
    /// Mount user@host:/path at MOUNTPOINT until SIGINT/SIGTERM or an external umount.
    Mount {
        /// SSH port.
        #[arg(short = 'p', long = "port")]
        port: Option<u16>,
        /// Options, comma-separated: -o IdentityFile=~/.ssh/id_ed25519,allow_other,...
        #[arg(short = 'o', action = clap::ArgAction::Append)]
        options: Vec<String>,
        /// Jump hosts, as ssh -J: [user@]host[:port][,...] (the ProxyJump option).
        #[arg(short = 'J', long = "jump")]
        jump: Option<String>,
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
        Command::Serve(args) => {
            tune_allocator();
            cmd::serve::run(args)
        }
        Command::Mount {
            port,
            mut options,
            jump,
            remote,
            mountpoint,
        } => {
            // As one -o item: its commas separate hops, not options.
            if let Some(j) = jump {
                options.push(format!("ProxyJump={}", j.replace(',', "\\,")));
            }
            cmd::mount::run(port, &options, &remote, &mountpoint)
        }
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

/// The plugin process mounts and unmounts volumes for as long as it runs. Every FUSE session
/// allocates a 16 MiB request buffer (fuser's). glibc raises its mmap
/// threshold once such a block is freed, so the next ones come from a malloc arena, are zeroed
/// (touched) there and stay resident after the unmount: up to 16 MiB per arena, RSS that only
/// grows with mount/unmount cycles. A fixed threshold keeps big blocks mmapped, so an unmount
/// gives them back to the kernel. It sits above what a busy mount allocates and frees for every
/// request (a FUSE write's copy, up to `MAX_WRITE` = 1 MiB, and the SFTP packets made of it):
/// mmapped, those would be faulted in and zeroed again each time (at 1 MiB the plugin spent half
/// as much CPU again per GiB written).
const MMAP_THRESHOLD: i32 = 4 * 1024 * 1024;

/// Fixes malloc's mmap threshold at `MMAP_THRESHOLD` (why: see there).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a malloc tunable; called from main before the runtime or any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}
