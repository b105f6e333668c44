//! Mount lifecycle: connect, mount the FUSE filesystem at a directory, serve it, unmount lazily.
//!
//! Used by both the plugin driver (one `Mounted` per mounted volume) and the `mount` command.

use std::io;
use std::path::{Path, PathBuf};

use crate::options::MountOptions;
use crate::sftp::Stats;

/// Why a mount failed. The message is shown to the user verbatim.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(transparent)]
    Connect(#[from] crate::ssh::ConnectError),
    #[error("cannot mount FUSE at {path}: {reason}")]
    Fuse { path: PathBuf, reason: String },
}

/// A live mount: the FUSE session plus its SSH connection.
pub struct Mounted {}

impl Mounted {
    pub fn mountpoint(&self) -> &Path {
        todo!()
    }

    /// SHA256 fingerprint of the server's host key (to pin it on first use).
    pub fn host_key_fingerprint(&self) -> String {
        todo!()
    }

    pub fn stats(&self) -> Stats {
        todo!()
    }

    /// Resolves when the filesystem stopped being served (for example after an external
    /// `umount`), so the caller can clean up.
    pub async fn ended(&self) {
        todo!()
    }

    /// Unmounts (lazily, so busy mounts detach instead of failing), stops serving and
    /// disconnects.
    pub async fn unmount(self) -> io::Result<()> {
        todo!()
    }
}

/// Connects to the server and mounts it at `mountpoint` (an existing empty directory).
pub async fn mount(_opts: &MountOptions, _mountpoint: &Path) -> Result<Mounted, MountError> {
    todo!()
}

/// `umount2(path, MNT_DETACH)`: detaches even when busy or when the serving process is gone.
pub fn lazy_unmount(path: &Path) -> io::Result<()> {
    nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).map_err(io::Error::from)
}

/// Lazily unmounts every mount at or below `dir` (left by a crashed earlier run), deepest first.
pub fn unmount_stale_below(_dir: &Path) -> io::Result<Vec<PathBuf>> {
    todo!()
}

/// The `mount` command: mounts in the foreground until SIGINT/SIGTERM or an external umount.
pub fn mount_main(
    _port: Option<u16>,
    _options: &[String],
    _remote: &str,
    _mountpoint: &Path,
) -> std::process::ExitCode {
    todo!()
}
