//! The plugin's `sshagent` mount (config.json): reached through a descriptor, with its
//! placeholder removed from the rootfs.
//!
//! Why: runc creates a bind mount's destination in the plugin's rootfs as a file or a
//! directory, after the source's type, and that placeholder stays in the rootfs. A later
//! `docker plugin set sshagent.source=` of the other type (a socket after a directory, or the
//! default /dev/null before a directory) then fails `docker plugin enable` with "not a
//! directory". So at start-up the plugin keeps an `O_PATH` descriptor of what is mounted
//! there, detaches the mount (in its own mount namespace only) and removes the placeholder:
//! the next start creates it afresh with the type of whatever the source is then. The agent is
//! then reached as `/proc/self/fd/N` (a socket) or `/proc/self/fd/N/NAME` (a directory).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::ssh_auth::PLUGIN_AGENT_MOUNT;

static TAKEN: OnceLock<Option<OwnedFd>> = OnceLock::new();

/// Takes the mount as described above; once, early in `serve`. Anything that does not work
/// leaves the mount where it is (it is then used by its path).
pub fn take() {
    TAKEN.get_or_init(|| {
        let path = Path::new(PLUGIN_AGENT_MOUNT);
        let meta = std::fs::symlink_metadata(path).ok()?;
        let fd = nix::fcntl::open(
            path,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()?;
        // Not a mount point (EINVAL): no placeholder of ours to remove; keep using the path.
        if let Err(e) = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
            tracing::debug!(error = %e, "sshagent mount not detached; using it by its path");
            return None;
        }
        let removed = if meta.is_dir() {
            std::fs::remove_dir(path)
        } else {
            std::fs::remove_file(path)
        };
        if let Err(e) = removed {
            tracing::warn!(path = PLUGIN_AGENT_MOUNT, error = %e,
                "cannot remove the sshagent mount's placeholder: changing sshagent.source between \
                 a socket and a directory may then fail at docker plugin enable");
        }
        Some(fd)
    });
}

/// Where the plugin's agent mount is reached now.
pub fn path() -> PathBuf {
    match TAKEN.get() {
        Some(Some(fd)) => PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
        _ => PathBuf::from(PLUGIN_AGENT_MOUNT),
    }
}
