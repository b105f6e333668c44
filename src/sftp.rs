//! The remote side of a mount: SFTP requests over one SSH connection, with reconnects.
//!
//! `Sftp` hides three limits of russh-sftp and of the network from the filesystem above it:
//! at most 127 open handles per SFTP session (more are spread over extra sessions on the same
//! connection), reads and writes capped at 64 KiB per packet (larger calls are split and
//! pipelined), and a dropped connection (re-established with backoff; open files are reopened
//! by path and flags). Every call returns an [`Error`] that maps to an errno.

use std::sync::Arc;

pub use russh_sftp::extensions::Statvfs;
pub use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};

use crate::options::MountOptions;

/// Largest read or write sent in one SFTP packet: russh-sftp drops the session on an incoming
/// packet over 256 KiB and OpenSSH caps reads at 255 KiB, so 64 KiB keeps a wide margin.
pub const MAX_IO: usize = 64 * 1024;

/// Why a remote call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server answered with an error status.
    #[error("{code:?}: {message}")]
    Status { code: StatusCode, message: String },
    /// The connection is gone and did not come back within `reconnect_timeout`.
    #[error("connection to the SSH server lost: {0}")]
    Disconnected(String),
    /// The server did not answer in time.
    #[error("the SSH server did not answer in time")]
    Timeout,
    /// Anything else the client library reported.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// The errno a filesystem call should fail with (as sshfs maps SFTP status codes).
    pub fn errno(&self) -> i32 {
        match self {
            Error::Status { code, .. } => match code {
                StatusCode::Ok => 0,
                StatusCode::Eof => libc::EIO,
                StatusCode::NoSuchFile => libc::ENOENT,
                StatusCode::PermissionDenied => libc::EACCES,
                StatusCode::Failure => libc::EPERM,
                StatusCode::BadMessage => libc::EBADMSG,
                StatusCode::NoConnection => libc::ENOTCONN,
                StatusCode::ConnectionLost => libc::ECONNABORTED,
                StatusCode::OpUnsupported => libc::EOPNOTSUPP,
            },
            Error::Disconnected(_) | Error::Timeout | Error::Other(_) => libc::EIO,
        }
    }

    /// True for a status the server sent (as opposed to a transport problem).
    pub fn is_status(&self, code: StatusCode) -> bool {
        matches!(self, Error::Status { code: c, .. } if *c == code)
    }
}

/// One entry of a directory listing, with the attributes the server sent alongside.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: String,
    pub attrs: FileAttributes,
}

/// Counters and state for `docker volume inspect`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub reconnects: u64,
    /// "connected" or "reconnecting".
    pub state: String,
    pub last_error: Option<String>,
}

/// A connected remote. Cheap to clone; all clones share the connection.
#[derive(Clone)]
pub struct Sftp {
    inner: Arc<Inner>,
}

struct Inner {}

/// An open remote file. Survives reconnects: it is reopened by path (without CREATE, TRUNCATE
/// or EXCLUDE) on the new connection and keeps its place in the caller's offsets.
pub struct File {}

impl Sftp {
    /// Connects, authenticates, checks the host key and resolves the remote root directory.
    /// Fails with a message that says what to fix (wrong password, unknown host key, ...).
    pub async fn connect(_opts: &MountOptions) -> Result<Sftp, crate::ssh::ConnectError> {
        todo!()
    }

    /// The absolute remote directory this mount shows as its root (no trailing slash unless `/`).
    pub fn root(&self) -> &str {
        todo!()
    }

    /// The SHA256 fingerprint of the server's host key, as pinned.
    pub fn host_key_fingerprint(&self) -> &str {
        todo!()
    }

    pub fn stats(&self) -> Stats {
        todo!()
    }

    pub async fn lstat(&self, _path: &str) -> Result<FileAttributes, Error> {
        todo!()
    }

    pub async fn stat(&self, _path: &str) -> Result<FileAttributes, Error> {
        todo!()
    }

    pub async fn setstat(&self, _path: &str, _attrs: FileAttributes) -> Result<(), Error> {
        todo!()
    }

    /// The whole listing (without `.` and `..`), in server order.
    pub async fn read_dir(&self, _path: &str) -> Result<Vec<DirEntry>, Error> {
        todo!()
    }

    pub async fn mkdir(&self, _path: &str, _mode: u32) -> Result<(), Error> {
        todo!()
    }

    pub async fn rmdir(&self, _path: &str) -> Result<(), Error> {
        todo!()
    }

    pub async fn remove(&self, _path: &str) -> Result<(), Error> {
        todo!()
    }

    /// Renames, replacing `to` if it exists (posix-rename@openssh.com).
    pub async fn rename(&self, _from: &str, _to: &str) -> Result<(), Error> {
        todo!()
    }

    /// Creates `link` pointing at `target` (argument order handled for OpenSSH).
    pub async fn symlink(&self, _target: &str, _link: &str) -> Result<(), Error> {
        todo!()
    }

    pub async fn readlink(&self, _path: &str) -> Result<String, Error> {
        todo!()
    }

    /// hardlink@openssh.com: `new` becomes another name for `existing`.
    pub async fn hardlink(&self, _existing: &str, _new: &str) -> Result<(), Error> {
        todo!()
    }

    pub async fn statvfs(&self, _path: &str) -> Result<Statvfs, Error> {
        todo!()
    }

    pub async fn open(
        &self,
        _path: &str,
        _flags: OpenFlags,
        _attrs: FileAttributes,
    ) -> Result<File, Error> {
        todo!()
    }

    /// Closes the connection; later calls fail with `Disconnected`.
    pub async fn disconnect(&self) {
        todo!()
    }
}

impl File {
    /// Reads up to `len` bytes at `offset` (split into pipelined MAX_IO requests). Returns fewer
    /// bytes only at end of file.
    pub async fn read(&self, _offset: u64, _len: u32) -> Result<Vec<u8>, Error> {
        todo!()
    }

    /// Writes all of `data` at `offset` (split into pipelined MAX_IO requests).
    pub async fn write(&self, _offset: u64, _data: &[u8]) -> Result<(), Error> {
        todo!()
    }

    pub async fn fstat(&self) -> Result<FileAttributes, Error> {
        todo!()
    }

    pub async fn fsetstat(&self, _attrs: FileAttributes) -> Result<(), Error> {
        todo!()
    }

    /// fsync@openssh.com.
    pub async fn fsync(&self) -> Result<(), Error> {
        todo!()
    }

    /// Closes the remote handle. Errors the server reports on close are returned.
    pub async fn close(&self) -> Result<(), Error> {
        todo!()
    }
}
