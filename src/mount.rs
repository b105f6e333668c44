//! Mount lifecycle: connect, mount the FUSE filesystem at a directory, serve it, unmount lazily.
//!
//! Used by both the plugin driver (one `Mounted` per mounted volume) and the `mount` command.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::fs::{SshFs, WriteBehind, fuse_config};
use crate::options::MountOptions;
use crate::sftp::{Sftp, Stats};

/// Why a mount failed. The message is shown to the user verbatim.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(transparent)]
    Connect(#[from] crate::ssh::ConnectError),
    #[error("cannot mount FUSE at {path}: {reason}")]
    Fuse { path: PathBuf, reason: String },
}

/// A live mount: the FUSE session plus its SSH connection.
pub struct Mounted {
    mountpoint: PathBuf,
    sftp: Sftp,
    write_behind: WriteBehind,
    /// Becomes true when the FUSE event loop has returned (unmounted, by us or by someone else).
    ended: watch::Receiver<bool>,
}

impl Mounted {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// SHA256 fingerprint of the server's host key (to pin it on first use).
    pub fn host_key_fingerprint(&self) -> String {
        self.sftp.host_key_fingerprint().to_string()
    }

    /// `(host:port, SHA256 fingerprint)` of each jump host's key (to pin them on first use).
    pub fn jump_host_keys(&self) -> Vec<(String, String)> {
        self.sftp.jump_host_keys().to_vec()
    }

    pub fn stats(&self) -> Stats {
        self.sftp.stats()
    }

    /// Resolves when the filesystem stopped being served (for example after an external
    /// `umount`), so the caller can clean up.
    pub async fn ended(&self) {
        let mut rx = self.ended.clone();
        let _ = rx.wait_for(|ended| *ended).await;
    }

    /// Waits until `deadline` for the writes queued in this mount (and metadata deferred behind
    /// them) to reach the server, all files at once, and logs each file that did not make it.
    /// Returns how many did not.
    pub async fn drain(&self, deadline: Instant) -> usize {
        let left = self.write_behind.drain(deadline).await;
        for u in &left {
            let path = u.path.as_deref().unwrap_or("(unlinked while open)");
            tracing::warn!(
                mountpoint = %self.mountpoint.display(),
                file = %path,
                ino = u.ino,
                "queued changes not on the server: {}",
                u.problem
            );
        }
        left.len()
    }

    /// Unmounts (lazily, so busy mounts detach instead of failing), stops serving and
    /// disconnects. A detached mount that still has open files keeps being served until the
    /// last one is closed; the connection is closed after that.
    pub async fn unmount(self) -> io::Result<()> {
        self.unmount_waiting(Duration::from_secs(5)).await
    }

    /// `unmount`, waiting at most `wait` for a busy mount to finish before going on in the
    /// background.
    pub async fn unmount_waiting(self, wait: Duration) -> io::Result<()> {
        let detached = match lazy_unmount(&self.mountpoint) {
            Ok(()) => Ok(()),
            // Not mounted any more (an external umount got there first).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            Err(e) => Err(e),
        };
        let mut ended = self.ended.clone();
        let finished = tokio::time::timeout(wait, ended.wait_for(|e| *e))
            .await
            .is_ok();
        if finished {
            self.sftp.disconnect().await;
        } else {
            tracing::info!(mountpoint = %self.mountpoint.display(),
                "mount is busy; detached, serving open files until they are closed");
            let sftp = self.sftp.clone();
            tokio::spawn(async move {
                let _ = ended.wait_for(|e| *e).await;
                sftp.disconnect().await;
            });
        }
        detached
    }
}

/// Connects to the server and mounts it at `mountpoint` (an existing directory).
pub async fn mount(opts: &MountOptions, mountpoint: &Path) -> Result<Mounted, MountError> {
    let sftp = Sftp::connect(opts).await?;
    let fs = SshFs::new(sftp.clone(), opts, tokio::runtime::Handle::current(), None);
    let write_behind = fs.write_behind();
    let trimmer = fs.trimmer();
    let config = fuse_config(opts);
    let path = mountpoint.to_path_buf();
    let fuse_err = |reason: String| MountError::Fuse {
        path: mountpoint.to_path_buf(),
        reason,
    };
    // mount(2) and the event loop are blocking: keep them off the async workers.
    let session = tokio::task::spawn_blocking(move || fuser::Session::new(fs, &path, &config))
        .await
        .map_err(|e| fuse_err(e.to_string()))?;
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            sftp.disconnect().await;
            return Err(fuse_err(explain_mount_error(&e)));
        }
    };
    if let Err(e) = trimmer.start(session.notifier()) {
        // The mount works without it; only its inode table is then unbounded.
        tracing::warn!(mountpoint = %mountpoint.display(), "cannot start the inode trimmer: {e}");
    }
    let (tx, ended) = watch::channel(false);
    let shown = mountpoint.display().to_string();
    std::thread::Builder::new()
        .name("fuse".into())
        .spawn(move || {
            if let Err(e) = session.run() {
                tracing::warn!(mountpoint = %shown, error = %e, "FUSE session ended with an error");
            }
            let _ = tx.send(true);
        })
        .map_err(|e| fuse_err(e.to_string()))?;
    Ok(Mounted {
        mountpoint: mountpoint.to_path_buf(),
        sftp,
        write_behind,
        ended,
    })
}

fn explain_mount_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => "the mountpoint does not exist; create the directory first".into(),
        Some(libc::EPERM) | Some(libc::EACCES) => {
            format!("{e}: mounting FUSE needs root (or CAP_SYS_ADMIN) and access to /dev/fuse")
        }
        Some(libc::ENOTCONN) => format!(
            "{e}: a dead mount from an earlier run is still there; run `umount -l` on it first"
        ),
        _ => e.to_string(),
    }
}

/// `umount2(path, MNT_DETACH)`: detaches even when busy or when the serving process is gone.
pub fn lazy_unmount(path: &Path) -> io::Result<()> {
    nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).map_err(io::Error::from)
}

/// Lazily unmounts every mount at or below `dir` (left by a crashed earlier run), deepest first.
pub fn unmount_stale_below(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = mount_table()?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    let mut done = Vec::new();
    for p in found {
        match lazy_unmount(&p) {
            Ok(()) => done.push(p),
            Err(e) => tracing::warn!(path = %p.display(), error = %e, "cannot unmount stale mount"),
        }
    }
    Ok(done)
}

/// True if `path` is a mount point according to /proc/self/mountinfo.
pub fn is_mounted(path: &Path) -> bool {
    mount_table().is_ok_and(|t| t.iter().any(|m| m.mount_point == path))
}

/// One line of /proc/PID/mountinfo: where something is mounted and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The mount point (5th field), unescaped.
    pub mount_point: PathBuf,
    /// The filesystem type after the ` - ` separator, e.g. `fuse.sshfs`.
    pub fs_type: String,
}

/// The mounts this process sees.
pub fn mount_table() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// Decodes the text of a /proc/PID/mountinfo file (the one decoder, shared with the tests).
/// Lines that do not have the documented shape are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mount_point = mountinfo_path(pre.split(' ').nth(4)?);
            let fs_type = post.split(' ').next()?.to_string();
            Some(MountEntry {
                mount_point,
                fs_type,
            })
        })
        .collect()
}

/// A path field of /proc/*/mountinfo with its octal escapes (`\040` for a space) decoded.
fn mountinfo_path(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c));
        if escaped {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            // \ooo above \377 is not an escape mountinfo writes; keep it as text.
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Creates `dir` (and parents) traversable by everyone, whatever the process umask (0077 in
/// `serve`); an existing directory is left as it is.
pub fn create_dir_0755(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
}

/// Makes `mp` an empty directory we can mount on. Returns true if a stale mount had to be
/// detached first (left by a crashed run: stat fails with ENOTCONN, or it is still a mountpoint
/// although we hold no mount for it).
pub fn prepare_mountpoint(volumes_dir: &Path, mp: &Path) -> io::Result<bool> {
    create_dir_0755(volumes_dir)?;
    let mut detached = false;
    match std::fs::symlink_metadata(mp) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir(mp)?;
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            lazy_unmount(mp)?;
            detached = true;
        }
        Err(e) => return Err(e),
        Ok(meta) => {
            if !meta.is_dir() {
                return Err(io::Error::other(
                    "it exists and is not a directory; remove it on the host",
                ));
            }
            let parent = std::fs::metadata(volumes_dir)?;
            if meta.dev() != parent.dev() {
                lazy_unmount(mp)?;
                detached = true;
            }
        }
    }
    // Containers may run as any user; the mounted filesystem sets its own root permissions.
    std::fs::set_permissions(mp, std::fs::Permissions::from_mode(0o755))?;
    Ok(detached)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        let info = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 0:5 / /mnt/volumes/x rw - fuse.sshfs h:/ rw\n\
                    38 35 0:6 / /mnt/tail\\134 rw - tmpfs none rw\n\
                    garbage\n";
        let t = parse_mountinfo(info);
        let points: Vec<_> = t.iter().map(|m| m.mount_point.clone()).collect();
        assert_eq!(
            points,
            vec![
                PathBuf::from("/mnt/a b"),
                PathBuf::from("/mnt/volumes/x"),
                PathBuf::from("/mnt/tail\\"),
            ]
        );
        assert_eq!(t[1].fs_type, "fuse.sshfs");
    }
}
