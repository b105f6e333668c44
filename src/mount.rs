//! Mount lifecycle: connect, mount the FUSE filesystem at a directory, serve it, unmount lazily.
//!
//! Used by both the plugin driver (one `Mounted` per mounted volume) and the `mount` command.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use tokio::sync::watch;

use crate::fs::{SshFs, fuse_config};
use crate::options::{self, Context, MountOptions};
use crate::secret::Secret;
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

    pub fn stats(&self) -> Stats {
        self.sftp.stats()
    }

    /// Resolves when the filesystem stopped being served (for example after an external
    /// `umount`), so the caller can clean up.
    pub async fn ended(&self) {
        let mut rx = self.ended.clone();
        let _ = rx.wait_for(|ended| *ended).await;
    }

    /// Unmounts (lazily, so busy mounts detach instead of failing), stops serving and
    /// disconnects. A detached mount that still has open files keeps being served until the
    /// last one is closed; the connection is closed after that.
    pub async fn unmount(self) -> io::Result<()> {
        let detached = match lazy_unmount(&self.mountpoint) {
            Ok(()) => Ok(()),
            // Not mounted any more (an external umount got there first).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            Err(e) => Err(e),
        };
        let mut ended = self.ended.clone();
        let finished = tokio::time::timeout(Duration::from_secs(5), ended.wait_for(|e| *e))
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
    let fs = SshFs::new(sftp.clone(), opts, tokio::runtime::Handle::current());
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
pub fn mountinfo_path(field: &str) -> PathBuf {
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

/// The `mount` command: mounts in the foreground until SIGINT/SIGTERM or an external umount.
pub fn mount_main(
    port: Option<u16>,
    options: &[String],
    remote: &str,
    mountpoint: &Path,
) -> ExitCode {
    let mut raw: options::RawOptions = options
        .iter()
        .flat_map(|o| options::split_cli_options(o))
        .collect();
    if let Some(p) = port {
        raw.push(("port".into(), Some(p.to_string())));
    }
    let parsed = match options::parse(&raw, Some(remote), Context::Command) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("docker-volume-sshfs: {e}");
            return ExitCode::from(2);
        }
    };
    crate::secret::scrub_process_args();
    let mut opts = parsed.options;
    opts.learn_host_keys = true;
    if parsed.wants_password_stdin {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().read_line(&mut line) {
            eprintln!("docker-volume-sshfs: cannot read the password from stdin: {e}");
            return ExitCode::from(2);
        }
        opts.password = Some(Secret::new(line.trim_end_matches(['\r', '\n'])));
    }

    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("docker-volume-sshfs: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let mounted = match mount(&opts, mountpoint).await {
            Ok(m) => m,
            Err(e) => {
                eprintln!("docker-volume-sshfs: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(remote = %opts.remote, mountpoint = %mountpoint.display(), "mounted");
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("docker-volume-sshfs: cannot watch SIGTERM: {e}");
                    let _ = mounted.unmount().await;
                    return ExitCode::FAILURE;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = mounted.ended() => {
                tracing::info!("unmounted externally");
                return ExitCode::SUCCESS;
            }
        }
        match mounted.unmount().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("docker-volume-sshfs: unmount failed: {e}");
                ExitCode::FAILURE
            }
        }
    })
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
