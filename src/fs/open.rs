//! Open files: the handle table (which handles are open, and the I/O state the handles of one
//! inode share), open, create, read, write, flush, fsync and release. What happens to the bytes
//! of an open file (write-behind, read-ahead) is `file`'s.
//!
//! One file because every call on a handle starts from the same table, and the table's
//! invariants (one I/O state per inode, gone with its last handle) are kept only here.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use fuser::{Errno, FileAttr};
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::Fs;
use super::attr::{self, S_IFREG};
use super::errno::{errno, io_errno};
use super::file::{InodeIo, OpenFile, WRITE_BEHIND_BYTES};
use crate::sftp::{FileAttributes, OpenFlags, StatusCode};

/// A file whose queued changes did not reach the server before a drain's deadline.
#[derive(Debug, Clone)]
pub struct Undrained {
    pub ino: u64,
    /// Relative to the mount root; `None` for a file unlinked while open.
    pub path: Option<String>,
    pub problem: String,
}

/// The open files of a mount.
pub(super) struct Handles {
    table: Mutex<Table>,
    /// Bytes of write-behind in flight, mount-wide.
    budget: Arc<Semaphore>,
}

#[derive(Default)]
struct Table {
    open: HashMap<u64, Arc<OpenFile>>,
    /// Per inode with open handles: the I/O state they share.
    inodes: HashMap<u64, InodeHandles>,
}

/// The handles of one inode: their shared I/O state and how many are open (the state goes
/// with the last one).
#[derive(Default)]
struct InodeHandles {
    io: Arc<InodeIo>,
    open: usize,
}

impl Default for Handles {
    fn default() -> Self {
        Handles {
            table: Mutex::new(Table::default()),
            budget: Arc::new(Semaphore::new(WRITE_BEHIND_BYTES)),
        }
    }
}

impl Handles {
    pub fn get(&self, fh: u64) -> Result<Arc<OpenFile>, Errno> {
        self.table.lock().open.get(&fh).cloned().ok_or(Errno::EBADF)
    }

    /// The I/O state of `ino`, if it has open handles.
    pub fn io_of(&self, ino: u64) -> Option<Arc<InodeIo>> {
        self.table
            .lock()
            .inodes
            .get(&ino)
            .map(|h| Arc::clone(&h.io))
    }

    /// An open handle of `ino` still in use, to defer attribute changes to. A handle that was
    /// flushed and not written since is most likely closed already: the kernel sends RELEASE
    /// some time after close(2) returns, and a utimensat by path made after close(2) must reach
    /// the server before it returns, not with that late release.
    pub fn active(&self, ino: u64) -> Option<Arc<OpenFile>> {
        self.table
            .lock()
            .open
            .values()
            .find(|of| of.ino == ino && !of.flushed())
            .cloned()
    }

    /// Every open handle of `ino`.
    pub fn of_inode(&self, ino: u64) -> Vec<Arc<OpenFile>> {
        self.table
            .lock()
            .open
            .values()
            .filter(|of| of.ino == ino)
            .cloned()
            .collect()
    }

    /// Every open handle.
    pub fn all(&self) -> Vec<Arc<OpenFile>> {
        self.table.lock().open.values().cloned().collect()
    }

    /// Inodes with writes in flight: the server's size for them is behind ours.
    pub fn busy_inodes(&self) -> HashSet<u64> {
        self.pending().into_iter().map(|(ino, _)| ino).collect()
    }

    /// Every inode with queued writes or deferred metadata, and its I/O state.
    pub fn pending(&self) -> Vec<(u64, Arc<InodeIo>)> {
        self.table
            .lock()
            .inodes
            .iter()
            .filter(|(_, h)| h.io.has_pending())
            .map(|(ino, h)| (*ino, Arc::clone(&h.io)))
            .collect()
    }

    fn register(&self, fh: u64, ino: u64, make: impl FnOnce(Arc<InodeIo>) -> OpenFile) {
        let mut table = self.table.lock();
        let entry = table.inodes.entry(ino).or_default();
        entry.open += 1;
        let of = make(Arc::clone(&entry.io));
        table.open.insert(fh, Arc::new(of));
    }

    fn unregister(&self, fh: u64) -> Option<Arc<OpenFile>> {
        let mut table = self.table.lock();
        let of = table.open.remove(&fh)?;
        if let Some(entry) = table.inodes.get_mut(&of.ino) {
            entry.open -= 1;
            if entry.open == 0 {
                table.inodes.remove(&of.ino);
            }
        }
        Some(of)
    }
}

impl Fs {
    pub(super) fn handle(&self, fh: u64) -> Result<Arc<OpenFile>, Errno> {
        self.handles.get(fh)
    }

    pub(super) fn io_of(&self, ino: u64) -> Option<Arc<InodeIo>> {
        self.handles.io_of(ino)
    }

    pub(super) fn active_handle(&self, ino: u64) -> Option<Arc<OpenFile>> {
        self.handles.active(ino)
    }

    /// Lets queued writes and deferred metadata of `ino` reach the server before its
    /// attributes are read from there. A failure is kept for the next flush.
    pub(super) async fn settle(&self, ino: u64) {
        if let Some(io) = self.io_of(ino)
            && io.has_pending()
        {
            if let Err(e) = io.settle().await {
                io.keep_error(e);
            }
            self.check_owner(ino, &io);
        }
    }

    /// After `ino`'s deferred changes were sent: if the server refused the chown among them,
    /// the owner we showed is forgotten (the server's is asked for again), and later chowns
    /// are not deferred.
    pub(super) fn check_owner(&self, ino: u64, io: &InodeIo) {
        if io.take_owner_refused() {
            self.chown_refused.store(true, Ordering::Relaxed);
            if let Some(n) = self.nodes.lock().get_mut(ino) {
                n.stale();
            }
        }
    }

    /// Registers a new handle of `ino`, its remote file renamed to where the inode table says
    /// the inode is now (it may have moved while the file was being opened).
    fn register(&self, ino: u64, make: impl FnOnce(Arc<InodeIo>) -> OpenFile) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.register(fh, ino, make);
        if let Ok(of) = self.handle(fh) {
            let path = self.nodes.lock().path(ino);
            of.file.set_path(path.map(|p| self.full(&p)));
        }
        fh
    }

    /// Tells every open file its current remote path (after a rename, unlink or rmdir): a
    /// reopen after a reconnect, or an extra write handle, must find the file itself, never
    /// whatever took its old name. The table stays locked throughout, so a rename cannot
    /// slip in between reading a path and handing it on.
    pub(super) fn sync_names(&self) {
        let t = self.nodes.lock();
        for of in self.handles.all() {
            of.file.set_path(t.path(of.ino).map(|p| self.full(&p)));
        }
    }

    /// The remote path to remove once `ino`'s last handle is gone, if it was unlinked while
    /// open (hidden under a reserved name); taken once.
    pub(super) fn take_hidden(&self, ino: u64) -> Option<String> {
        if self.io_of(ino).is_some() {
            return None;
        }
        let path = self.nodes.lock().take_hidden(ino)?;
        Some(self.full(&path))
    }

    fn unregister(&self, fh: u64) -> Option<Arc<OpenFile>> {
        self.handles.unregister(fh)
    }

    fn sftp_flags(flags: i32) -> OpenFlags {
        let mut f = match flags & libc::O_ACCMODE {
            libc::O_WRONLY => OpenFlags::WRITE,
            libc::O_RDWR => OpenFlags::READ | OpenFlags::WRITE,
            _ => OpenFlags::READ,
        };
        if flags & libc::O_APPEND != 0 {
            f |= OpenFlags::APPEND;
        }
        // Also for O_RDONLY: Linux truncates then too (the open is checked for write access),
        // and so does the server's open(2) that sftp-server makes of it.
        if flags & libc::O_TRUNC != 0 {
            f |= OpenFlags::TRUNCATE;
        }
        f
    }

    pub(super) async fn open(self: &Arc<Self>, ino: u64, flags: i32) -> Result<u64, Errno> {
        let path = self.path_of(ino)?;
        let sflags = Self::sftp_flags(flags);
        let truncate = sflags.contains(OpenFlags::TRUNCATE);
        if truncate && let Some(io) = self.io_of(ino) {
            io.settle().await.map_err(|e| errno(&e))?;
            io.invalidate();
        }
        let read_only = flags & libc::O_ACCMODE == libc::O_RDONLY && !truncate;
        let preloaded = if read_only {
            self.take_preloaded(&path).await
        } else {
            None
        };
        let (f, data) = match preloaded {
            Some((f, data)) => (f, Some(data)),
            None => (
                self.remote
                    .open(&self.full(&path), sflags, FileAttributes::default())
                    .await
                    .map_err(|e| errno(&e))?,
                None,
            ),
        };
        if read_only && self.caching() {
            self.preload_next(&path, data.is_some());
        }
        let append = sflags.contains(OpenFlags::APPEND);
        let size_hint = {
            let mut t = self.nodes.lock();
            if truncate {
                t.changed_locally(ino);
            }
            let node = t.get_mut(ino);
            match node {
                Some(n) if truncate => {
                    if let Some(a) = n.attrs.as_mut() {
                        a.size = Some(0);
                    }
                    n.stale();
                    0
                }
                Some(n) => n.attrs.as_ref().and_then(|a| a.size).unwrap_or(u64::MAX),
                None => u64::MAX,
            }
        };
        let fh = self.register(ino, |io| OpenFile::new(ino, f, io, append, size_hint));
        if let Some(data) = data
            && let Ok(of) = self.handle(fh)
        {
            of.preload(data);
        }
        if truncate && let Some(io) = self.io_of(ino) {
            io.truncated(0);
        }
        if append {
            // Appends go at the end as the server sees it (once our own queued writes have
            // landed), not as the kernel last saw it: the file may have grown on the server.
            let of = self.handle(fh)?;
            of.io.drain().await;
            match of.file.fstat().await {
                Ok(a) => {
                    let size = a.size.unwrap_or(0);
                    of.io.append_from(size);
                    of.set_size_hint(size);
                }
                Err(e) => {
                    if let Some(of) = self.unregister(fh) {
                        let _ = of.file.close().await;
                    }
                    return Err(errno(&e));
                }
            }
        }
        Ok(fh)
    }

    pub(super) async fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64), Errno> {
        let (ppath, name, cpath) = self.child_of(parent, name)?;
        let perm = mode & 0o7777;
        let exclusive = flags & libc::O_EXCL != 0;
        let mut sflags = Self::sftp_flags(flags) | OpenFlags::CREATE;
        if exclusive {
            sflags |= OpenFlags::EXCLUDE;
        }
        let attrs = FileAttributes {
            permissions: Some(perm),
            ..Default::default()
        };
        let f = match self.remote.open(&self.full(&cpath), sflags, attrs).await {
            Ok(f) => f,
            Err(e) if exclusive => return Err(self.creation_errno(&e, &cpath).await),
            Err(e) => return Err(errno(&e)),
        };
        self.nodes.lock().dir_changed(&ppath, Some(&name), None);
        // Without O_EXCL the file may have existed: ask rather than predict.
        let a = if exclusive {
            self.new_object_attrs(parent, &cpath, S_IFREG, perm, Some(&f))
                .await
        } else {
            f.fstat().await.map_err(|e| errno(&e))
        };
        let a = match a {
            Ok(a) => a,
            Err(e) => {
                let _ = f.close().await;
                return Err(e);
            }
        };
        let fa = self.remember(&cpath, a.clone());
        let ino = fa.ino.0;
        let append = sflags.contains(OpenFlags::APPEND);
        let size = a.size.unwrap_or(0);
        let fh = self.register(ino, |io| OpenFile::new(ino, f, io, append, size));
        if append && let Some(io) = self.io_of(ino) {
            io.append_from(size);
        }
        Ok((fa, fh))
    }

    pub(super) async fn release(&self, fh: u64) -> Result<(), Errno> {
        let Some(of) = self.unregister(fh) else {
            return Ok(());
        };
        of.stop();
        let flushed = of.flush().await;
        self.check_owner(of.ino, &of.io);
        let hidden = self.take_hidden(of.ino);
        if !of.written() {
            // Nothing was written through this handle: the server's answer to the close
            // changes nothing, so nobody waits for it (the handle slot stays taken until then).
            let sftp = self.remote.clone();
            tokio::spawn(async move {
                if let Err(e) = of.file.close().await {
                    tracing::debug!(ino = of.ino, "close: {e}");
                }
                remove_hidden(&sftp, hidden).await;
            });
            return flushed.map_err(|e| io_errno(&e));
        }
        let closed = of.file.close().await;
        remove_hidden(&self.remote, hidden).await;
        if let Err(e) = &flushed {
            // Nobody is left to tell: the kernel ignores release errors.
            tracing::warn!(
                ino = of.ino,
                "write failed and was not reported before close: {e}"
            );
        }
        flushed.and(closed).map_err(|e| io_errno(&e))
    }

    /// Waits, until `deadline`, for every queued write and deferred metadata change of the mount
    /// to reach the server (all files at once), and names what did not: files whose writes were
    /// still in flight, or failed. Used before a shutdown unmounts.
    pub(super) async fn drain(&self, deadline: Instant) -> Vec<Undrained> {
        let pending = self.handles.pending();
        let settles = pending.into_iter().map(|(ino, io)| async move {
            let outcome = tokio::time::timeout_at(deadline.into(), io.settle()).await;
            let problem = match outcome {
                Ok(Ok(())) => return None,
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("{} bytes not yet acknowledged", io.pending_bytes()),
            };
            let path = self.nodes.lock().path(ino);
            Some(Undrained { ino, path, problem })
        });
        futures::future::join_all(settles)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Reads for the kernel, from what `of` has fetched ahead where it can.
    pub(super) async fn read(
        &self,
        ino: u64,
        of: &Arc<OpenFile>,
        offset: u64,
        size: u32,
    ) -> Result<Bytes, Errno> {
        let known = self
            .nodes
            .lock()
            .get(ino)
            .and_then(|n| n.attrs.as_ref()?.size);
        of.read(&self.rt, offset, size, known)
            .await
            .map_err(|e| io_errno(&e))
    }

    /// Queues a write; answers once it is queued (write-behind), with the bytes taken.
    pub(super) async fn write(
        &self,
        ino: u64,
        of: &Arc<OpenFile>,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<u32, Errno> {
        let len = data.len() as u64;
        match of.write(&self.rt, &self.handles.budget, offset, data).await {
            Ok(at) => {
                let mut t = self.nodes.lock();
                if let Some(n) = t.get_mut(ino) {
                    // What the write does to the attributes is known: size and mtime are
                    // updated here, so a stat right after (tar does one per file) is
                    // answered without waiting for the write to land and asking the server.
                    match n.attrs.as_mut() {
                        Some(a) => {
                            a.size = Some(a.size.unwrap_or(0).max(at + len));
                            a.mtime = Some(attr::to_secs(SystemTime::now()));
                        }
                        None => n.stale(),
                    }
                    t.changed_locally(ino);
                }
                Ok(len as u32)
            }
            Err(e) => Err(self.write_errno(&e).await),
        }
    }

    /// close(2): the handle's queued writes and deferred metadata reach the server.
    pub(super) async fn flush(&self, of: &OpenFile) -> Result<(), Errno> {
        let flushed = of.flush().await;
        self.check_owner(of.ino, &of.io);
        match flushed {
            Ok(()) => Ok(()),
            Err(e) => Err(self.write_errno(&e).await),
        }
    }

    pub(super) async fn fsync(&self, of: &OpenFile) -> Result<(), Errno> {
        self.flush(of).await?;
        match of.file.fsync().await {
            Ok(()) => Ok(()),
            // A server without fsync@openssh.com cannot do better than having the data.
            Err(e) if e.is_status(StatusCode::OpUnsupported) => Ok(()),
            Err(e) => Err(io_errno(&e)),
        }
    }
}

/// Removes the reserved name a file unlinked while open was hidden under, at its last release.
/// A failure leaves a leftover for a later mount to clean (see `hidden`).
pub(super) async fn remove_hidden(remote: &super::remote::Remote, path: Option<String>) {
    if let Some(p) = path
        && let Err(e) = remote.remove(&p).await
    {
        tracing::warn!(path = %p, "could not remove a file unlinked while open: {e}");
    }
}
