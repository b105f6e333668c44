//! Where the filesystem's calls go: straight to the server ([`Sftp`]), or in write-back mode
//! through the overlay, which journals changes and answers reads with them laid over the
//! server's state. The filesystem calls one surface either way; `hidden` and `statfs` talk to
//! the server itself (free space, and leftovers of other mounts, are the server's alone).

use crate::sftp::{DirEntry, Error, File, FileAttributes, OpenFlags, Sftp, Statvfs};
use crate::writeback::Overlay;
use crate::writeback::overlay::PendingFile;

/// The server as the filesystem sees it.
#[derive(Clone)]
pub(super) struct Remote {
    sftp: Sftp,
    overlay: Option<Overlay>,
}

/// An open file: a handle on the server, or a write-back file.
pub(super) enum RemoteFile {
    Sftp(File),
    Pending(PendingFile),
}

/// Calls `$call` on the overlay when there is one, else on the SFTP client.
macro_rules! either {
    ($self:ident, $name:ident ( $($arg:expr),* )) => {
        match &$self.overlay {
            Some(o) => o.$name($($arg),*).await,
            None => $self.sftp.$name($($arg),*).await,
        }
    };
}

impl Remote {
    pub fn new(sftp: Sftp, overlay: Option<Overlay>) -> Remote {
        Remote { sftp, overlay }
    }

    /// The SFTP client itself, for what only the server answers.
    pub fn sftp(&self) -> &Sftp {
        &self.sftp
    }

    /// Waits until every change made through the mount is on the server: at once without
    /// write-back (each call returned only then).
    pub async fn sync(&self) -> Result<(), Error> {
        match &self.overlay {
            Some(o) => o.sync().await,
            None => Ok(()),
        }
    }

    pub fn root(&self) -> &str {
        self.sftp.root()
    }

    pub fn has_lsetstat(&self) -> bool {
        self.sftp.has_lsetstat()
    }

    pub async fn lstat(&self, path: &str) -> Result<FileAttributes, Error> {
        either!(self, lstat(path))
    }

    pub async fn stat(&self, path: &str) -> Result<FileAttributes, Error> {
        either!(self, stat(path))
    }

    pub async fn setstat(&self, path: &str, attrs: FileAttributes) -> Result<(), Error> {
        either!(self, setstat(path, attrs))
    }

    /// Owner and times of `path` itself (see `Sftp::lsetstat`); the write-back replayer
    /// never follows a symlink for those.
    pub async fn lsetstat(&self, path: &str, attrs: &FileAttributes) -> Result<(), Error> {
        match &self.overlay {
            Some(o) => o.setstat(path, attrs.clone()).await,
            None => self.sftp.lsetstat(path, attrs).await,
        }
    }

    pub async fn setstat_nofollow(&self, path: &str, attrs: FileAttributes) -> Result<(), Error> {
        match &self.overlay {
            Some(o) => o.setstat(path, attrs).await,
            None => self.sftp.setstat_nofollow(path, attrs).await,
        }
    }

    pub async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, Error> {
        either!(self, read_dir(path))
    }

    pub async fn mkdir(&self, path: &str, mode: u32) -> Result<(), Error> {
        either!(self, mkdir(path, mode))
    }

    pub async fn rmdir(&self, path: &str) -> Result<(), Error> {
        either!(self, rmdir(path))
    }

    pub async fn remove(&self, path: &str) -> Result<(), Error> {
        either!(self, remove(path))
    }

    pub async fn rename(&self, from: &str, to: &str) -> Result<(), Error> {
        either!(self, rename(from, to))
    }

    pub async fn symlink(&self, target: &str, link: &str) -> Result<(), Error> {
        either!(self, symlink(target, link))
    }

    pub async fn readlink(&self, path: &str) -> Result<String, Error> {
        either!(self, readlink(path))
    }

    pub async fn hardlink(&self, existing: &str, new: &str) -> Result<(), Error> {
        either!(self, hardlink(existing, new))
    }

    pub async fn statvfs(&self, path: &str) -> Result<Statvfs, Error> {
        self.sftp.statvfs(path).await
    }

    pub async fn open(
        &self,
        path: &str,
        flags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<RemoteFile, Error> {
        match &self.overlay {
            Some(o) => o.open(path, flags, attrs).await.map(RemoteFile::Pending),
            None => self
                .sftp
                .open(path, flags, attrs)
                .await
                .map(RemoteFile::Sftp),
        }
    }
}

macro_rules! on_file {
    ($self:ident, $name:ident ( $($arg:expr),* )) => {
        match $self {
            RemoteFile::Sftp(f) => f.$name($($arg),*).await,
            RemoteFile::Pending(f) => f.$name($($arg),*).await,
        }
    };
}

impl RemoteFile {
    pub async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, Error> {
        on_file!(self, read(offset, len))
    }

    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        on_file!(self, write(offset, data))
    }

    pub async fn fstat(&self) -> Result<FileAttributes, Error> {
        on_file!(self, fstat())
    }

    pub async fn fsetstat(&self, attrs: FileAttributes) -> Result<(), Error> {
        on_file!(self, fsetstat(attrs))
    }

    pub async fn fsync(&self) -> Result<(), Error> {
        on_file!(self, fsync())
    }

    pub async fn close(&self) -> Result<(), Error> {
        on_file!(self, close())
    }

    pub fn set_path(&self, path: Option<String>) {
        match self {
            RemoteFile::Sftp(f) => f.set_path(path),
            RemoteFile::Pending(f) => f.set_path(path),
        }
    }

    /// See `File::generation`: a write-back file is never reopened.
    pub fn generation(&self) -> u64 {
        match self {
            RemoteFile::Sftp(f) => f.generation(),
            RemoteFile::Pending(_) => 0,
        }
    }

    /// See `File::sends_now`: a write-back change is in the journal, in order, once its first
    /// poll returns.
    pub fn sends_now(&self) -> bool {
        match self {
            RemoteFile::Sftp(f) => f.sends_now(),
            RemoteFile::Pending(_) => true,
        }
    }
}
