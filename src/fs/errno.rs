//! The one SFTP status -> errno policy of the filesystem.
//!
//! SFTP v3 has eight status codes, and OpenSSH answers most failures with a bare FAILURE. The
//! table in `sftp::Error::errno` maps what the code says; here is what the filesystem adds:
//! a failed data write is EIO (or ENOSPC on a full disk), and where POSIX callers care which
//! errno they get (EEXIST for lock files and mkstemp, ENOTEMPTY for `rm -r`, EISDIR, ENOTDIR),
//! a bare FAILURE is followed by one look at the server's state to tell which it was.

use fuser::Errno;

use super::Fs;
use super::attr;
use crate::sftp::{Error, StatusCode};

/// The errno the status code stands for.
pub(super) fn errno(e: &Error) -> Errno {
    Errno::from_i32(e.errno())
}

/// Data reads and writes failing with a bare FAILURE are most often a full disk or quota;
/// EPERM (what FAILURE means elsewhere) would mislead there.
pub(super) fn io_errno(e: &Error) -> Errno {
    if e.is_status(StatusCode::Failure) {
        Errno::EIO
    } else {
        errno(e)
    }
}

pub(super) fn is_enoent(e: &Error) -> bool {
    e.errno() == libc::ENOENT
}

/// A bare FAILURE, the status that needs a second look.
fn bare_failure(e: &Error) -> bool {
    e.is_status(StatusCode::Failure)
}

impl Fs {
    /// The errno for a failed data write: a bare FAILURE on a full disk becomes ENOSPC.
    pub(super) async fn write_errno(&self, e: &Error) -> Errno {
        if bare_failure(e)
            && let Ok(s) = self.remote.statvfs(self.remote.root()).await
            && s.blocks_avail == 0
        {
            return Errno::ENOSPC;
        }
        io_errno(e)
    }

    /// A call that creates the name `rel` (mkdir, exclusive create, mknod, symlink, link)
    /// failed: a bare FAILURE while the name exists means it was already there.
    pub(super) async fn creation_errno(&self, e: &Error, rel: &str) -> Errno {
        if bare_failure(e) && self.remote.lstat(&self.full(rel)).await.is_ok() {
            return Errno::EEXIST;
        }
        errno(e)
    }

    /// unlink of `full` failed: a bare FAILURE on a directory is EISDIR.
    pub(super) async fn unlink_errno(&self, e: &Error, full: &str) -> Errno {
        if bare_failure(e)
            && let Ok(a) = self.remote.lstat(full).await
            && attr::is_dir(&a)
        {
            return Errno::EISDIR;
        }
        errno(e)
    }

    /// rmdir of `full` failed: a bare FAILURE is ENOTEMPTY when it still lists names, ENOTDIR
    /// when it is no directory at all.
    pub(super) async fn rmdir_errno(&self, e: &Error, full: &str) -> Errno {
        if bare_failure(e) {
            match self.remote.read_dir(full).await {
                Ok(list) if !list.is_empty() => return Errno::ENOTEMPTY,
                Err(e2) if bare_failure(&e2) => {
                    // Not listable as a directory: probably not one.
                    if let Ok(a) = self.remote.lstat(full).await
                        && !attr::is_dir(&a)
                    {
                        return Errno::ENOTDIR;
                    }
                }
                _ => {}
            }
        }
        errno(e)
    }

    /// rename of `from` over `to` failed: a bare FAILURE between two directories is
    /// ENOTEMPTY when the target has names; a directory over a file ENOTDIR, a file over a
    /// directory EISDIR.
    pub(super) async fn rename_errno(&self, e: &Error, from: &str, to: &str) -> Errno {
        if bare_failure(e) {
            let (src, dst) = tokio::join!(self.remote.lstat(from), self.remote.lstat(to));
            if let (Ok(src), Ok(dst)) = (src, dst) {
                match (attr::is_dir(&src), attr::is_dir(&dst)) {
                    (true, true) => {
                        if matches!(self.remote.read_dir(to).await, Ok(l) if !l.is_empty()) {
                            return Errno::ENOTEMPTY;
                        }
                    }
                    (true, false) => return Errno::ENOTDIR,
                    (false, true) => return Errno::EISDIR,
                    (false, false) => {}
                }
            }
        }
        errno(e)
    }
}
