//! Open files: write-behind (writes are acknowledged once queued, many run at once, and a
//! failure is reported by the next write, flush, fsync or release) and adaptive read-ahead
//! (sequential readers get the following chunks fetched in parallel before they ask).
//!
//! Metadata changes (chmod, chown, utimes) to a file that is open are deferred the same way and
//! sent behind its queued writes (so an explicit mtime is not overwritten by a late write): GNU
//! `tar` and `cp -a` set times, owner and mode on every file before closing it. When those
//! writes are already on the wire on the same handle, the fsetstats follow them at once
//! instead of a round trip later: sftp-server handles one channel's requests in order.
//!
//! Consistency rules: anything that reads file content or size from the server first waits
//! until the inode's queued writes are done (`InodeIo::drain`; `settle` also applies deferred
//! metadata), and every write or truncate bumps the inode's generation so prefetched data from
//! before it is never served.
//!
//! One file because both halves share `OpenFile` and the inode's generation: a write must drop
//! what read-ahead fetched before it, and a read must wait for the writes queued before it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, watch};
use tokio::task::AbortHandle;

use super::attr;
use super::remote::RemoteFile as File;
use crate::sftp::{Error, FileAttributes};

/// Read-ahead unit: one SFTP read where the server takes 128 KiB (two elsewhere), and the
/// size of the kernel's read requests, so a request is answered from one chunk without a copy.
const CHUNK: u64 = 128 * 1024;
/// The most bytes one sequential reader keeps in flight ahead of itself: enough to fill a
/// 100 MB/s link at 50 ms round trip.
const MAX_WINDOW: u64 = 8 * 1024 * 1024;
const MIN_WINDOW: u64 = 1024 * 1024;

/// Writes queued but not yet acknowledged by the server, per mount: bounds memory.
pub const WRITE_BEHIND_BYTES: usize = 32 * 1024 * 1024;

/// I/O state shared by all open handles of one inode.
pub struct InodeIo {
    inflight: watch::Sender<usize>,
    /// Writes in flight: id, byte range (an overlapping write waits instead of racing) and the
    /// handle it goes through (`handle_id`).
    ranges: Mutex<Vec<(u64, u64, u64, usize)>>,
    /// Writes in flight that may not be on the wire yet (the connection was down when they
    /// were queued).
    unsent: AtomicUsize,
    /// One settle at a time, so a second waits for the fsetstat the first is sending.
    settling: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    /// Bumped whenever the content changes through us.
    generation: AtomicU64,
    /// Changes set while the file is open, not yet sent.
    deferred: Mutex<Option<Deferred>>,
    /// A deferred chown was refused by the server (and ignored, as without `strict_chown`):
    /// the owner shown for the file is not the server's.
    owner_refused: AtomicBool,
    /// A failure of deferred work found outside flush (e.g. by a getattr), for the next flush.
    error: Mutex<Option<Error>>,
    /// Where the next O_APPEND write goes, shared by every handle of the inode so two append
    /// handles never write over each other. Set from the server's size when an append handle
    /// opens (after our queued writes landed), advanced by every write through us, reset by
    /// truncation. The server's own O_APPEND is not used: it ignores offsets, so pipelined or
    /// retried writes of one writer would land in arrival order.
    end: Mutex<Option<u64>>,
}

/// Attribute changes made while a file is open, not yet sent, and the handle to send them with.
struct Deferred {
    /// A chown, sent as its own fsetstat so that a refusal (a login that may not give files
    /// away) loses nothing else. Never deferred together with a set-user/group-ID mode: a
    /// chown clears those bits, so there the order of the two would matter.
    owner: Option<(u32, u32)>,
    /// Mode and times: one fsetstat.
    attrs: FileAttributes,
    file: Arc<File>,
}

/// Tells handles apart for `InodeIo::ranges`.
fn handle_id(file: &Arc<File>) -> usize {
    Arc::as_ptr(file) as usize
}

impl Default for InodeIo {
    fn default() -> Self {
        InodeIo {
            inflight: watch::Sender::new(0),
            ranges: Mutex::new(Vec::new()),
            unsent: AtomicUsize::new(0),
            settling: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            deferred: Mutex::new(None),
            owner_refused: AtomicBool::new(false),
            error: Mutex::new(None),
            end: Mutex::new(None),
        }
    }
}

impl InodeIo {
    /// Waits until every queued write of this inode has been answered by the server.
    pub async fn drain(&self) {
        if *self.inflight.borrow() == 0 {
            return;
        }
        let mut rx = self.inflight.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Waits for queued writes and sends deferred metadata.
    pub async fn settle(&self) -> Result<(), Error> {
        let _one = self.settling.lock().await;
        let deferred = self.deferred.lock().take();
        let Some(d) = deferred else {
            self.drain().await;
            return Ok(());
        };
        if self.writes_sent_on(&d.file) {
            let generation = d.file.generation();
            let (_, set) = tokio::join!(self.drain(), self.send(&d));
            if d.file.generation() == generation {
                return set;
            }
            // A reconnect in between: a write may have been resent after the fsetstat.
        } else {
            self.drain().await;
        }
        self.send(&d).await
    }

    /// Sends deferred changes: the chown and the mode and times at once (their order does not
    /// matter without set-ID bits, see `Deferred::owner`).
    async fn send(&self, d: &Deferred) -> Result<(), Error> {
        let owner = d.owner.map(|(uid, gid)| FileAttributes {
            uid: Some(uid),
            gid: Some(gid),
            ..FileAttributes::default()
        });
        let attrs =
            (d.attrs.permissions.is_some() || d.attrs.mtime.is_some()).then(|| d.attrs.clone());
        let send = |a: Option<FileAttributes>| async move {
            match a {
                Some(a) => d.file.fsetstat(a).await,
                None => Ok(()),
            }
        };
        let (owned, set) = tokio::join!(send(owner), send(attrs));
        match owned {
            Err(e) if matches!(e.errno(), libc::EPERM | libc::EACCES) => {
                self.owner_refused.store(true, Ordering::SeqCst);
            }
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        set
    }

    /// Whether a deferred chown was refused since last asked.
    pub fn take_owner_refused(&self) -> bool {
        self.owner_refused.swap(false, Ordering::SeqCst)
    }

    /// Whether every write in flight is already on the wire through `file`'s handle, so a
    /// request sent on it now is handled after them.
    fn writes_sent_on(&self, file: &Arc<File>) -> bool {
        self.unsent.load(Ordering::SeqCst) == 0
            && file.sends_now()
            && self.ranges.lock().iter().all(|r| r.3 == handle_id(file))
    }

    /// Whether `set` can join what is deferred: a chown and a set-ID mode never wait together
    /// (see `Deferred::owner`).
    pub fn can_defer(&self, set: &FileAttributes) -> bool {
        let d = self.deferred.lock();
        let owner = set.uid.is_some() || d.as_ref().is_some_and(|d| d.owner.is_some());
        let setid = attr::has_setid(set) || d.as_ref().is_some_and(|d| attr::has_setid(&d.attrs));
        !(owner && setid)
    }

    /// Queues a mode, owner and/or times change, merged with any already queued. An owner
    /// comes as both uid and gid.
    pub fn defer(&self, set: FileAttributes, file: Arc<File>) {
        let mut d = self.deferred.lock();
        let d = d.get_or_insert_with(|| Deferred {
            owner: None,
            attrs: FileAttributes::default(),
            file,
        });
        if let (Some(uid), Some(gid)) = (set.uid, set.gid) {
            d.owner = Some((uid, gid));
        }
        if set.permissions.is_some() {
            d.attrs.permissions = set.permissions;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            d.attrs.atime = set.atime;
            d.attrs.mtime = set.mtime;
        }
    }

    pub fn keep_error(&self, e: Error) {
        let mut slot = self.error.lock();
        if slot.is_none() {
            *slot = Some(e);
        }
    }

    pub fn has_pending(&self) -> bool {
        *self.inflight.borrow() != 0 || self.deferred.lock().is_some()
    }

    /// Bytes queued and not yet acknowledged by the server.
    pub fn pending_bytes(&self) -> u64 {
        self.ranges.lock().iter().map(|r| r.2 - r.1).sum()
    }

    /// An append handle opened and the server says the file has `size` bytes (with all our
    /// queued writes landed): appends go there, or past writes queued since.
    pub fn append_from(&self, size: u64) {
        let mut end = self.end.lock();
        *end = Some(end.unwrap_or(0).max(size));
    }

    /// The file was truncated (or created empty) through us.
    pub fn truncated(&self, size: u64) {
        *self.end.lock() = Some(size);
    }

    /// Content changed (or is about to): prefetched data is stale.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

type ChunkFuture = Shared<BoxFuture<'static, Result<Bytes, Error>>>;

struct Chunk {
    /// Bytes asked for: fewer back means end of file.
    len: u64,
    data: ChunkFuture,
    abort: AbortHandle,
}

#[derive(Default)]
struct ReadAhead {
    generation: u64,
    /// Where the next sequential read is expected.
    next: u64,
    /// Bytes to keep fetched ahead of `next`; 0 while the access pattern is not sequential.
    window: u64,
    streak: u32,
    chunks: BTreeMap<u64, Chunk>,
}

impl ReadAhead {
    fn clear(&mut self) {
        for c in self.chunks.values() {
            c.abort.abort();
        }
        self.chunks.clear();
    }
}

pub struct OpenFile {
    pub ino: u64,
    pub file: Arc<File>,
    pub io: Arc<InodeIo>,
    /// O_APPEND: writes go to the inode's end (`InodeIo::end`), whatever offset the kernel says.
    append: bool,
    /// The first write-behind failure not yet reported.
    error: Mutex<Option<Error>>,
    ra: Mutex<ReadAhead>,
    /// What we believe the size is; read-ahead does not fetch beyond it.
    size_hint: AtomicU64,
    /// Flushed and not written since (see `flushed`).
    flushed: AtomicBool,
    /// Anything was ever written through this handle.
    written: AtomicBool,
    /// The whole content, read ahead together with the handle before the open (see
    /// `PRELOAD_AHEAD` in `fs`), and the inode's generation then.
    preloaded: Mutex<Option<(Arc<Vec<u8>>, u64)>>,
}

impl OpenFile {
    pub fn new(ino: u64, file: File, io: Arc<InodeIo>, append: bool, size_hint: u64) -> OpenFile {
        OpenFile {
            ino,
            file: Arc::new(file),
            io,
            append,
            error: Mutex::new(None),
            ra: Mutex::new(ReadAhead::default()),
            size_hint: AtomicU64::new(size_hint),
            flushed: AtomicBool::new(false),
            written: AtomicBool::new(false),
            preloaded: Mutex::new(None),
        }
    }

    /// True once the kernel flushed this handle (close(2) does) and it was not written since:
    /// it is most likely on its way to release.
    pub fn flushed(&self) -> bool {
        self.flushed.load(Ordering::SeqCst)
    }

    pub fn written(&self) -> bool {
        self.written.load(Ordering::SeqCst)
    }

    /// Serves reads of this handle from `data` (the first `data.len()` bytes of a file of that
    /// size) until the content changes through us.
    pub fn preload(&self, data: Arc<Vec<u8>>) {
        let generation = self.io.generation.load(Ordering::SeqCst);
        *self.preloaded.lock() = Some((data, generation));
    }

    pub fn set_size_hint(&self, size: u64) {
        self.size_hint.store(size, Ordering::Relaxed);
    }

    /// Takes the pending write-behind error, if any, so it is reported exactly once.
    pub fn take_error(&self) -> Option<Error> {
        self.error.lock().take()
    }

    fn record_error(&self, e: Error) {
        let mut slot = self.error.lock();
        if slot.is_none() {
            *slot = Some(e);
        }
    }

    /// Queues a write and returns once it is queued (not once it is on the server), with the
    /// offset it goes to (for O_APPEND handles, the end of the file, not `offset`).
    pub async fn write(
        self: &Arc<Self>,
        rt: &Handle,
        budget: &Arc<Semaphore>,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<u64, Error> {
        if let Some(e) = self.take_error() {
            return Err(e);
        }
        // A write after a deferred utimes must land after it (the write sets mtime to now).
        if self.io.deferred.lock().is_some() {
            self.io.settle().await?;
        }
        let len = data.len() as u64;
        self.flushed.store(false, Ordering::SeqCst);
        self.written.store(true, Ordering::SeqCst);
        let permits = budget
            .clone()
            .acquire_many_owned(data.len().clamp(1, WRITE_BEHIND_BYTES) as u32)
            .await
            .map_err(|_| Error::Other("filesystem is shutting down".into()))?;
        let offset = {
            let mut end = self.io.end.lock();
            let at = match *end {
                Some(e) if self.append => e,
                _ => offset,
            };
            *end = Some(end.unwrap_or(0).max(at + len));
            at
        };
        let id = self.io.next_id.fetch_add(1, Ordering::Relaxed);
        loop {
            {
                let mut ranges = self.io.ranges.lock();
                let overlaps = ranges
                    .iter()
                    .any(|&(_, s, e, _)| s < offset + len && offset < e);
                if !overlaps {
                    ranges.push((id, offset, offset + len, handle_id(&self.file)));
                    self.io.inflight.send_modify(|n| *n += 1);
                    break;
                }
            }
            // Two writes to the same bytes must land in order: let the earlier one finish.
            self.io.drain().await;
        }
        self.io.invalidate();
        self.size_hint.fetch_max(offset + len, Ordering::Relaxed);
        // Counted unsent until known otherwise, and uncounted exactly once.
        self.io.unsent.fetch_add(1, Ordering::SeqCst);
        let counted = Arc::new(AtomicBool::new(true));
        let me = Arc::clone(self);
        let uncount = Arc::clone(&counted);
        let mut task = Box::pin(async move {
            if let Err(e) = me.file.write(offset, &data).await {
                tracing::warn!(ino = me.ino, offset, len, "write failed: {e}");
                me.record_error(e);
            }
            if uncount.swap(false, Ordering::SeqCst) {
                me.io.unsent.fetch_sub(1, Ordering::SeqCst);
            }
            me.io.ranges.lock().retain(|r| r.0 != id);
            me.io.inflight.send_modify(|n| *n -= 1);
            drop(permits);
        });
        // The first poll puts the packets on the wire now, in the order writes were queued,
        // if the connection is up; the rest (waiting for the answer) runs as its own task.
        let generation = self.file.generation();
        let ready = self.file.sends_now();
        if futures::poll!(task.as_mut()).is_pending() {
            rt.spawn(task);
        }
        if ready && self.file.generation() == generation && counted.swap(false, Ordering::SeqCst) {
            self.io.unsent.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(offset)
    }

    /// Waits for this inode's queued writes and deferred metadata and returns (once) any
    /// failure among this handle's.
    pub async fn flush(&self) -> Result<(), Error> {
        // Before settling: a write racing with this flush clears it again.
        self.flushed.store(true, Ordering::SeqCst);
        let settled = self.io.settle().await;
        if let Some(e) = self.take_error() {
            return Err(e);
        }
        if let Some(e) = self.io.error.lock().take() {
            return Err(e);
        }
        settled
    }

    /// Reads for the kernel. `known_size` is the size we last reported: the kernel does not
    /// ask beyond it (rounded up to a page), and asking the server for exactly the bytes that
    /// exist saves the extra round trip a short answer costs (the SFTP layer would ask again
    /// for the missing tail to tell a short read from end of file).
    pub async fn read(
        self: &Arc<Self>,
        rt: &Handle,
        offset: u64,
        size: u32,
        known_size: Option<u64>,
    ) -> Result<Bytes, Error> {
        self.io.drain().await;
        if let Some(k) = known_size {
            self.size_hint.store(k, Ordering::Relaxed);
        }
        // Content read ahead with the handle, valid while the size we show is the size it was
        // read at and nothing was written through us since.
        if let Some((data, generation)) = &*self.preloaded.lock()
            && *generation == self.io.generation.load(Ordering::SeqCst)
            && known_size == Some(data.len() as u64)
        {
            let len = data.len() as u64;
            let from = offset.min(len) as usize;
            let to = (offset + u64::from(size)).min(len) as usize;
            return Ok(Bytes::copy_from_slice(&data[from..to]));
        }
        let size64 = u64::from(size);
        // Past the size we know, the file may have grown: ask for everything requested.
        let want = match known_size {
            Some(k) if offset < k && offset + size64 > k => k - offset,
            _ => size64,
        };
        let chunks = self.plan(rt, offset, want);
        if let Some(chunks) = chunks {
            let mut parts = Vec::with_capacity(chunks.len());
            let end = offset + want;
            let mut complete = true;
            for (start, len, fut) in chunks {
                match fut.await {
                    Ok(data) => {
                        let from = offset.max(start) - start;
                        let to = (end.min(start + CHUNK) - start).min(data.len() as u64);
                        if from < to {
                            parts.push(data.slice(from as usize..to as usize));
                        }
                        if (data.len() as u64) < len {
                            // The chunk met the end of the file as it was then.
                            break;
                        }
                    }
                    Err(_) => {
                        complete = false;
                        break;
                    }
                }
            }
            // A short answer from read-ahead may be stale (the file may have grown since the
            // chunk was fetched), and a failed chunk may be transient: ask directly instead.
            let got: usize = parts.iter().map(Bytes::len).sum();
            if complete && got as u64 == want {
                // A request within one chunk (the usual case) is answered without a copy.
                return Ok(match parts.len() {
                    1 => parts.pop().expect("one part"),
                    _ => parts
                        .iter()
                        .fold(BytesMut::with_capacity(got), |mut b, p| {
                            b.extend_from_slice(p);
                            b
                        })
                        .freeze(),
                });
            }
        }
        let data = self.file.read(offset, want as u32).await?;
        self.size_hint
            .fetch_max(offset + data.len() as u64, Ordering::Relaxed);
        Ok(Bytes::from(data))
    }

    /// Updates the access-pattern detector; for sequential access, makes sure the chunks
    /// covering this read and the window ahead are being fetched, and returns those covering
    /// this read. `None` means read directly.
    fn plan(&self, rt: &Handle, offset: u64, size: u64) -> Option<Vec<(u64, u64, ChunkFuture)>> {
        let generation = self.io.generation.load(Ordering::SeqCst);
        let mut ra = self.ra.lock();
        if ra.generation != generation {
            ra.clear();
            ra.generation = generation;
        }
        // The kernel issues read-ahead requests concurrently, so they may arrive slightly out
        // of order: "near the expected offset" counts as sequential.
        let near = offset.abs_diff(ra.next) <= 2 * CHUNK
            || ra.chunks.contains_key(&(offset - offset % CHUNK));
        if near {
            ra.streak = ra.streak.saturating_add(1);
            ra.next = ra.next.max(offset + size);
        } else {
            ra.streak = 0;
            ra.window = 0;
            ra.next = offset + size;
            ra.clear();
        }
        if ra.streak < 2 {
            return None;
        }
        ra.window = (ra.window * 2).clamp(MIN_WINDOW, MAX_WINDOW);
        let first = offset - offset % CHUNK;
        let hint = self.size_hint.load(Ordering::Relaxed);
        // Chunks for this read are always fetched; chunks ahead only within the known size.
        let ahead_end = (ra.next + ra.window).min(hint.max(offset + size));
        let want_end = (offset + size).max(ahead_end);
        // Drop what the reader has moved past (keeping one chunk for stragglers).
        let keep_from = first.saturating_sub(CHUNK);
        let old: Vec<u64> = ra.chunks.range(..keep_from).map(|(k, _)| *k).collect();
        for k in old {
            if let Some(c) = ra.chunks.remove(&k) {
                c.abort.abort();
            }
        }
        let mut start = first;
        while start < want_end {
            if let std::collections::btree_map::Entry::Vacant(slot) = ra.chunks.entry(start) {
                let file = Arc::clone(&self.file);
                // Up to the known end only (see `read`); the chunks this read needs are
                // fetched whole even past it.
                let len = if start + CHUNK > hint && hint > start {
                    hint - start
                } else {
                    CHUNK
                };
                let task =
                    rt.spawn(async move { file.read(start, len as u32).await.map(Bytes::from) });
                let abort = task.abort_handle();
                let data = async move {
                    task.await
                        .unwrap_or_else(|_| Err(Error::Other("read-ahead cancelled".into())))
                }
                .boxed()
                .shared();
                slot.insert(Chunk { len, data, abort });
            }
            start += CHUNK;
        }
        let end = offset + size;
        Some(
            ra.chunks
                .range(first..end)
                .map(|(k, c)| (*k, c.len, c.data.clone()))
                .collect(),
        )
    }

    /// Stops read-ahead (on release).
    pub fn stop(&self) {
        self.ra.lock().clear();
    }
}
