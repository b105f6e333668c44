//! The per-volume journal of changes not yet on the server: a directory holding segment files of
//! framed records and one small progress file.
//!
//! Durability. [`Journal::append`] returns once the record was handed to write(2): the record
//! then survives `kill -9` of the process (it is in the kernel's page cache). A flusher thread
//! fsyncs the active segment at most [`FSYNC_WINDOW`] after a record was appended, and
//! [`Journal::sync`] forces it at once: a host crash loses at most the last window of appends,
//! and only a tail of them (records are written in order; recovery stops at the first record
//! that does not check). A segment is fsynced before the next one is started, so a torn record
//! can only be the last one.
//!
//! Record frame, little endian: payload length u32, crc32 u32 (of everything after it), seq
//! u64, append time in ms since the epoch u64, then the encoded [`Op`]. Seqs start at 1 and go
//! up by one without gaps, across segments. Segment `seg-<first seq>.log` grows to
//! [`SEGMENT_BYTES`], then a new one is started.
//!
//! Progress (`applied`): 13-byte records (kind u8, seq u64, crc32 u32): `Begun` before a record
//! is sent to the server, `Done` once it is applied (or skipped as a conflict), `Checkpoint`:
//! every seq up to it is done. A segment whose records are all at or below the checkpoint is
//! deleted. After a crash, a record that was begun and not done may or may not be on the server
//! ([`Record::maybe_applied`]): the replayer then accepts what such a first attempt leaves. The
//! progress file is written by write(2) for every change and fsynced with the segments.
//!
//! Bound: [`Journal::append`] waits while the records not yet applied take more than
//! `max_bytes`: it never fails for lack of room and never drops a change.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use super::Op;

/// Longest a record appended waits before it is fsynced (unless `sync` asks sooner).
pub const FSYNC_WINDOW: Duration = Duration::from_millis(100);
/// A segment file is closed (fsynced) and a new one started past this size.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// The progress file is rewritten compactly past this size.
const PROGRESS_COMPACT_BYTES: u64 = 1024 * 1024;
const HEADER: usize = 24;
/// A record longer than this is taken as garbage (the filesystem writes at most 1 MiB at once).
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;
const PROGRESS_RECORD: usize = 13;

/// Why the journal cannot be used: always with the path and what to check.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "write-back journal {path}: {what}: {source} (check that the plugin's state directory is writable and not full)"
    )]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
}

fn io_err<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// A change waiting to be applied on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub op: Op,
    /// When it was appended (ms since the epoch).
    pub appended_ms: u64,
    /// Found begun and not done when the journal was opened: a first attempt may have reached
    /// the server before the crash.
    pub maybe_applied: bool,
}

impl Record {
    /// Bytes the record takes in its segment (what `max_bytes` counts).
    fn size(&self) -> u64 {
        (HEADER + 64 + self.op.data_len()) as u64
    }
}

/// What the journal holds, for Status.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct JournalStats {
    pub pending_ops: u64,
    pub pending_bytes: u64,
    /// Age of the oldest change not yet applied.
    pub oldest_age: Option<Duration>,
    /// The newest seq appended (0: none yet).
    pub last_seq: u64,
    /// Every seq up to this one is applied.
    pub applied_through: u64,
}

/// A journal directory, open. Cheap to clone; all clones share it.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    /// Woken when pending records were applied (room for `append`).
    room: Notify,
    /// Woken when a record was appended (work for the replayer).
    appended: Notify,
    /// The newest seq known to be on disk.
    synced: watch::Sender<u64>,
    /// The checkpoint: every seq up to it is applied.
    applied: watch::Sender<u64>,
    /// Wakes the flusher early (`sync`).
    flush: (std::sync::Mutex<bool>, Condvar),
}

struct State {
    active: Segment,
    /// Closed segments: (first seq, path), oldest first.
    closed: Vec<(u64, PathBuf)>,
    next_seq: u64,
    pending: BTreeMap<u64, Arc<Record>>,
    pending_bytes: u64,
    checkpoint: u64,
    /// Done above the checkpoint (out of order).
    done: BTreeSet<u64>,
    /// Begun and not done: kept through a compaction of the progress file.
    begun: BTreeSet<u64>,
    progress: File,
    progress_len: u64,
}

struct Segment {
    first_seq: u64,
    path: PathBuf,
    file: File,
    len: u64,
}

fn segment_name(first_seq: u64) -> String {
    format!("seg-{first_seq:020}.log")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The frame of one record.
pub(crate) fn frame(seq: u64, appended_ms: u64, op: &Op) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER];
    op.encode(&mut buf);
    let payload = (buf.len() - HEADER) as u32;
    buf[0..4].copy_from_slice(&payload.to_le_bytes());
    buf[8..16].copy_from_slice(&seq.to_le_bytes());
    buf[16..24].copy_from_slice(&appended_ms.to_le_bytes());
    let crc = crc32fast::hash(&buf[8..]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// The records at the start of `buf` that check, and the length they take: recovery keeps
/// those and cuts the rest.
/// Each record comes with the offset where it ends.
pub(crate) fn parse_frames(buf: &[u8]) -> (Vec<(u64, u64, Op, usize)>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() - at >= HEADER {
        let h = &buf[at..at + HEADER];
        let payload = u32::from_le_bytes(h[0..4].try_into().unwrap()) as usize;
        if payload > MAX_PAYLOAD || buf.len() - at - HEADER < payload {
            break;
        }
        let crc = u32::from_le_bytes(h[4..8].try_into().unwrap());
        let body = &buf[at + 8..at + HEADER + payload];
        if crc32fast::hash(body) != crc {
            break;
        }
        let seq = u64::from_le_bytes(h[8..16].try_into().unwrap());
        let ms = u64::from_le_bytes(h[16..24].try_into().unwrap());
        let Some(op) = Op::decode(&buf[at + HEADER..at + HEADER + payload]) else {
            break;
        };
        at += HEADER + payload;
        out.push((seq, ms, op, at));
    }
    (out, at)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Checkpoint = 1,
    Begun = 2,
    Done = 3,
}

fn progress_record(kind: Progress, seq: u64) -> [u8; PROGRESS_RECORD] {
    let mut r = [0u8; PROGRESS_RECORD];
    r[0] = kind as u8;
    r[1..9].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&r[..9]);
    r[9..].copy_from_slice(&crc.to_le_bytes());
    r
}

/// What the progress file says: (checkpoint, done above it, begun and not done).
fn read_progress(buf: &[u8]) -> (u64, BTreeSet<u64>, BTreeSet<u64>) {
    let mut checkpoint = 0;
    let mut done = BTreeSet::new();
    let mut begun = BTreeSet::new();
    for r in buf.chunks_exact(PROGRESS_RECORD) {
        if crc32fast::hash(&r[..9]).to_le_bytes() != r[9..] {
            break;
        }
        let seq = u64::from_le_bytes(r[1..9].try_into().unwrap());
        match r[0] {
            1 => checkpoint = checkpoint.max(seq),
            2 => {
                begun.insert(seq);
            }
            3 => {
                done.insert(seq);
            }
            _ => break,
        }
    }
    advance(&mut checkpoint, &mut done);
    done.retain(|&s| s > checkpoint);
    begun.retain(|&s| s > checkpoint && !done.contains(&s));
    (checkpoint, done, begun)
}

/// Moves the checkpoint over the seqs done right after it.
fn advance(checkpoint: &mut u64, done: &mut BTreeSet<u64>) {
    while done.remove(&(*checkpoint + 1)) {
        *checkpoint += 1;
    }
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync of the directory"))
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, recovering what a crash left: every record up
    /// to the first one torn or corrupt, which is cut off with everything after it.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Journal, JournalError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir, "create the directory"))?;
        let progress_path = dir.join("applied");
        let buf = fs::read(&progress_path).or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(Vec::new()),
            _ => Err(io_err(&progress_path, "read")(e)),
        })?;
        let (mut checkpoint, mut done, begun) = read_progress(&buf);

        let mut segments: Vec<(u64, PathBuf)> = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir, "list"))? {
            let entry = entry.map_err(io_err(dir, "list"))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name
                .strip_prefix("seg-")
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                segments.push((first, entry.path()));
            }
        }
        segments.sort();

        let mut pending = BTreeMap::new();
        let mut pending_bytes = 0;
        let mut last_seq: Option<u64> = None;
        let mut kept: Vec<(u64, PathBuf, u64)> = Vec::new();
        let mut cut = false;
        for (first, path) in segments {
            if cut {
                fs::remove_file(&path)
                    .map_err(io_err(&path, "remove a segment after a torn one"))?;
                continue;
            }
            let buf = fs::read(&path).map_err(io_err(&path, "read"))?;
            let (records, _) = parse_frames(&buf);
            let mut len = 0u64;
            for (seq, ms, op, end) in records {
                // Seqs go up by one; a jump means what follows is not ours to trust.
                if last_seq.is_some_and(|l| seq != l + 1) || (last_seq.is_none() && seq < first) {
                    cut = true;
                    break;
                }
                last_seq = Some(seq);
                len = end as u64;
                if seq > checkpoint && !done.contains(&seq) {
                    let r = Record {
                        seq,
                        op,
                        appended_ms: ms,
                        maybe_applied: begun.contains(&seq),
                    };
                    pending_bytes += r.size();
                    pending.insert(seq, Arc::new(r));
                }
            }
            if cut || (len as usize) < buf.len() {
                tracing::warn!(segment = %path.display(), kept = len, size = buf.len(),
                    "write-back journal: cutting a torn or corrupt tail");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path, "open to cut a torn tail"))?;
                f.set_len(len).map_err(io_err(&path, "cut a torn tail"))?;
                f.sync_all().map_err(io_err(&path, "fsync"))?;
                cut = true;
            }
            kept.push((first, path, len));
        }
        let next_seq = last_seq
            .map_or(checkpoint + 1, |l| l + 1)
            .max(checkpoint + 1);
        // With nothing pending, every record is applied: the checkpoint covers them all.
        if pending.is_empty() {
            checkpoint = checkpoint.max(next_seq - 1);
            done.clear();
        }

        // The last segment stays active unless it is full; fully applied ones go.
        let mut closed = Vec::new();
        let mut active = None;
        let n = kept.len();
        for (i, (first, path, len)) in kept.into_iter().enumerate() {
            if i + 1 == n && len < SEGMENT_BYTES {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(io_err(&path, "open for appending"))?;
                active = Some(Segment {
                    first_seq: first,
                    path,
                    file,
                    len,
                });
            } else {
                closed.push((first, path));
            }
        }
        let active = match active {
            Some(a) => a,
            None => new_segment(dir, next_seq)?,
        };
        let (progress, progress_len) = write_progress(dir, checkpoint, &done, &begun)?;
        let mut state = State {
            active,
            closed,
            next_seq,
            pending,
            pending_bytes,
            checkpoint,
            done,
            begun,
            progress,
            progress_len,
        };
        state.drop_applied_segments()?;

        let (synced, _) = watch::channel(next_seq - 1);
        let (applied, _) = watch::channel(checkpoint);
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            max_bytes,
            state: Mutex::new(state),
            room: Notify::new(),
            appended: Notify::new(),
            synced,
            applied,
            flush: (std::sync::Mutex::new(false), Condvar::new()),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("wb-journal-fsync".into())
            .spawn(move || flusher(weak))
            .map_err(io_err(dir, "start the fsync thread"))?;
        Ok(Journal { inner })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Appends `op` and returns its seq once it is written (see the module comment for what
    /// survives what). Waits while the journal holds more than `max_bytes` not yet applied.
    pub async fn append(&self, op: Op) -> Result<u64, JournalError> {
        self.wait_for_room().await;
        self.append_now(op)
    }

    /// Waits while the records not yet applied take more than `max_bytes`.
    pub async fn wait_for_room(&self) {
        loop {
            let room = self.inner.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let st = self.inner.state.lock();
                if st.pending.is_empty() || st.pending_bytes < self.inner.max_bytes {
                    break;
                }
            }
            room.await;
        }
    }

    /// `append` without waiting for room: for callers that cannot wait (and tests).
    pub fn append_now(&self, op: Op) -> Result<u64, JournalError> {
        let appended_ms = now_ms();
        let mut st = self.inner.state.lock();
        let seq = st.next_seq;
        let buf = frame(seq, appended_ms, &op);
        if st.active.len > 0 && st.active.len + buf.len() as u64 > SEGMENT_BYTES {
            st.rotate(&self.inner.dir, seq)?;
        }
        let seg = &mut st.active;
        if let Err(e) = seg.file.write_all(&buf) {
            // A partial write would be cut at recovery; cut it now so later records follow a
            // whole one.
            let _ = seg.file.set_len(seg.len);
            return Err(io_err(&seg.path, "append")(e));
        }
        seg.len += buf.len() as u64;
        st.next_seq += 1;
        let r = Record {
            seq,
            op,
            appended_ms,
            maybe_applied: false,
        };
        st.pending_bytes += r.size();
        st.pending.insert(seq, Arc::new(r));
        drop(st);
        self.inner.appended.notify_waiters();
        Ok(seq)
    }

    /// Returns once every record appended before the call is fsynced.
    pub async fn sync(&self) -> Result<(), JournalError> {
        let target = self.inner.state.lock().next_seq - 1;
        let mut rx = self.inner.synced.subscribe();
        {
            let (flag, cv) = &self.inner.flush;
            *flag.lock().unwrap() = true;
            cv.notify_one();
        }
        rx.wait_for(|&s| s >= target)
            .await
            .map(drop)
            .map_err(|_| JournalError::Io {
                path: self.inner.dir.clone(),
                what: "fsync",
                source: std::io::Error::other("the journal was closed"),
            })
    }

    /// Records not yet applied with a seq above `after`, in order.
    pub fn pending_after(&self, after: u64) -> Vec<Arc<Record>> {
        let st = self.inner.state.lock();
        st.pending
            .range(after + 1..)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Waits until a record above `after` is pending (returns at once if one is).
    pub async fn wait_for_after(&self, after: u64) {
        loop {
            let woken = self.inner.appended.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.inner.state.lock().next_seq > after + 1 {
                return;
            }
            woken.await;
        }
    }

    /// Notes that `seqs` are about to be sent to the server (see `Record::maybe_applied`).
    pub fn begin(&self, seqs: &[u64]) -> Result<(), JournalError> {
        let mut st = self.inner.state.lock();
        let mut buf = Vec::with_capacity(seqs.len() * PROGRESS_RECORD);
        for &s in seqs {
            buf.extend_from_slice(&progress_record(Progress::Begun, s));
            st.begun.insert(s);
        }
        st.write_progress(&self.inner.dir, &buf)
    }

    /// Notes that `seqs` are applied (or skipped for good): they leave the pending set, and
    /// segments wholly below the checkpoint are deleted.
    pub fn done(&self, seqs: &[u64]) -> Result<(), JournalError> {
        let mut st = self.inner.state.lock();
        let mut buf = Vec::with_capacity(seqs.len() * PROGRESS_RECORD);
        for &s in seqs {
            buf.extend_from_slice(&progress_record(Progress::Done, s));
            st.begun.remove(&s);
            if let Some(r) = st.pending.remove(&s) {
                st.pending_bytes -= r.size();
            }
            if s > st.checkpoint {
                st.done.insert(s);
            }
        }
        st.write_progress(&self.inner.dir, &buf)?;
        let before = st.checkpoint;
        let State {
            checkpoint, done, ..
        } = &mut *st;
        advance(checkpoint, done);
        let checkpoint = st.checkpoint;
        if checkpoint != before {
            st.drop_applied_segments()?;
            if st.progress_len > PROGRESS_COMPACT_BYTES {
                let (f, len) = write_progress(&self.inner.dir, checkpoint, &st.done, &st.begun)?;
                st.progress = f;
                st.progress_len = len;
            }
        }
        drop(st);
        self.inner.applied.send_replace(checkpoint);
        self.inner.room.notify_waiters();
        Ok(())
    }

    /// Waits until every seq up to `seq` is applied on the server (fsync of the mount).
    pub async fn wait_applied(&self, seq: u64) {
        let mut rx = self.inner.applied.subscribe();
        let _ = rx.wait_for(|&a| a >= seq).await;
    }

    /// Every seq up to this one is applied (or skipped for good).
    pub fn applied_through(&self) -> u64 {
        *self.inner.applied.borrow()
    }

    /// True once `seq` is applied (or skipped for good), in order or not.
    pub fn is_applied(&self, seq: u64) -> bool {
        let st = self.inner.state.lock();
        seq <= st.checkpoint || st.done.contains(&seq)
    }

    /// Waits until `seq` is applied (or skipped for good).
    pub async fn wait_done(&self, seq: u64) {
        loop {
            let woken = self.inner.room.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.is_applied(seq) {
                return;
            }
            woken.await;
        }
    }

    /// Changes each time the checkpoint moves (`applied_through`).
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.inner.applied.subscribe()
    }

    /// The newest seq appended (0: none).
    pub fn last_seq(&self) -> u64 {
        self.inner.state.lock().next_seq - 1
    }

    pub fn stats(&self) -> JournalStats {
        let st = self.inner.state.lock();
        let oldest_age = st
            .pending
            .values()
            .next()
            .map(|r| Duration::from_millis(now_ms().saturating_sub(r.appended_ms)));
        JournalStats {
            pending_ops: st.pending.len() as u64,
            pending_bytes: st.pending_bytes,
            oldest_age,
            last_seq: st.next_seq - 1,
            applied_through: st.checkpoint,
        }
    }
}

fn new_segment(dir: &Path, first_seq: u64) -> Result<Segment, JournalError> {
    let path = dir.join(segment_name(first_seq));
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err(&path, "create a segment"))?;
    let len = file
        .metadata()
        .map_err(io_err(&path, "stat"))
        .map(|m| m.len())?;
    sync_dir(dir)?;
    Ok(Segment {
        first_seq,
        path,
        file,
        len,
    })
}

/// Writes a compact progress file (through a temporary and a rename, so a crash leaves the old
/// or the new one) and opens it for appending.
fn write_progress(
    dir: &Path,
    checkpoint: u64,
    done: &BTreeSet<u64>,
    begun: &BTreeSet<u64>,
) -> Result<(File, u64), JournalError> {
    let path = dir.join("applied");
    let tmp = dir.join("applied.tmp");
    let mut buf = progress_record(Progress::Checkpoint, checkpoint).to_vec();
    for &s in done {
        buf.extend_from_slice(&progress_record(Progress::Done, s));
    }
    for &s in begun {
        buf.extend_from_slice(&progress_record(Progress::Begun, s));
    }
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp, "create"))?;
    f.write_all(&buf).map_err(io_err(&tmp, "write"))?;
    f.sync_all().map_err(io_err(&tmp, "fsync"))?;
    fs::rename(&tmp, &path).map_err(io_err(&path, "replace"))?;
    sync_dir(dir)?;
    let mut f = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(io_err(&path, "open for appending"))?;
    f.seek(SeekFrom::End(0)).map_err(io_err(&path, "seek"))?;
    Ok((f, buf.len() as u64))
}

impl State {
    fn write_progress(&mut self, dir: &Path, buf: &[u8]) -> Result<(), JournalError> {
        self.progress
            .write_all(buf)
            .map_err(io_err(&dir.join("applied"), "append"))?;
        self.progress_len += buf.len() as u64;
        Ok(())
    }

    /// Closes the active segment (fsynced, so that a torn record can only be in the last one)
    /// and starts one at `first_seq`.
    fn rotate(&mut self, dir: &Path, first_seq: u64) -> Result<(), JournalError> {
        self.active
            .file
            .sync_data()
            .map_err(io_err(&self.active.path, "fsync"))?;
        let next = new_segment(dir, first_seq)?;
        let old = std::mem::replace(&mut self.active, next);
        self.closed.push((old.first_seq, old.path));
        Ok(())
    }

    /// Deletes the closed segments whose records are all applied: those followed by a segment
    /// starting at or below the checkpoint + 1.
    fn drop_applied_segments(&mut self) -> Result<(), JournalError> {
        while !self.closed.is_empty() {
            let next_first = self
                .closed
                .get(1)
                .map_or(self.active.first_seq, |(f, _)| *f);
            if next_first > self.checkpoint + 1 {
                break;
            }
            let (_, path) = self.closed.remove(0);
            fs::remove_file(&path).map_err(io_err(&path, "remove an applied segment"))?;
        }
        Ok(())
    }
}

/// Fsyncs the active segment and the progress file every `FSYNC_WINDOW` when they have
/// unsynced appends, or at once when `sync` asks. Ends with the journal.
fn flusher(inner: Weak<Inner>) {
    loop {
        let Some(j) = inner.upgrade() else { return };
        {
            let (flag, cv) = &j.flush;
            let guard = flag.lock().unwrap();
            let (mut guard, _) = cv
                .wait_timeout_while(guard, FSYNC_WINDOW, |asked| !*asked)
                .unwrap();
            *guard = false;
        }
        let (seg, progress, through) = {
            let st = j.state.lock();
            let seg = st.active.file.try_clone();
            let progress = st.progress.try_clone();
            (seg, progress, st.next_seq - 1)
        };
        if through > *j.synced.borrow() {
            let ok = seg.and_then(|f| f.sync_data()).is_ok();
            let _ = progress.and_then(|f| f.sync_data());
            if ok {
                j.synced.send_replace(through);
            } else {
                tracing::warn!(dir = %j.dir.display(), "write-back journal: fsync failed; will try again");
            }
        }
        drop(j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writeback::tests::any_op;
    use proptest::prelude::*;

    fn tmpdir(tag: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("wb-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn ops_of(j: &Journal) -> Vec<Op> {
        j.pending_after(0).iter().map(|r| r.op.clone()).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn round_trip_through_reopen(ops in proptest::collection::vec(any_op(), 0..40)) {
            let d = tmpdir("rt");
            {
                let j = Journal::open(&d, u64::MAX).unwrap();
                for op in &ops {
                    j.append_now(op.clone()).unwrap();
                }
                prop_assert_eq!(ops_of(&j), ops.clone());
            }
            let j = Journal::open(&d, u64::MAX).unwrap();
            prop_assert_eq!(ops_of(&j), ops);
            fs::remove_dir_all(&d).unwrap();
        }
    }

    /// The last record cut at every byte: reopening recovers exactly the earlier ones, and
    /// appends after that are recovered too.
    #[test]
    fn torn_tail_recovers_every_earlier_record() {
        let ops: Vec<Op> = (0..5)
            .map(|i| Op::Write {
                path: format!("f{i}"),
                offset: i,
                data: vec![i as u8; 10 + i as usize].into(),
            })
            .collect();
        let d = tmpdir("torn");
        {
            let j = Journal::open(&d, u64::MAX).unwrap();
            for op in &ops {
                j.append_now(op.clone()).unwrap();
            }
        }
        let seg = d.join(segment_name(1));
        let whole = fs::read(&seg).unwrap();
        let last = frame(5, 0, &ops[4]).len();
        for cut in whole.len() - last..whole.len() {
            fs::write(&seg, &whole[..cut]).unwrap();
            let _ = fs::remove_file(d.join("applied"));
            let j = Journal::open(&d, u64::MAX).unwrap();
            assert_eq!(ops_of(&j), ops[..4], "cut at {cut}");
            let extra = Op::Unlink { path: "x".into() };
            assert_eq!(j.append_now(extra.clone()).unwrap(), 5);
            drop(j);
            let j = Journal::open(&d, u64::MAX).unwrap();
            let mut want = ops[..4].to_vec();
            want.push(extra);
            assert_eq!(ops_of(&j), want, "appended after the cut at {cut}");
        }
        // A flipped byte in the middle cuts there.
        let mut bad = whole.clone();
        bad[frame(1, 0, &ops[0]).len() + HEADER + 3] ^= 0x40;
        fs::write(&seg, &bad).unwrap();
        let _ = fs::remove_file(d.join("applied"));
        let j = Journal::open(&d, u64::MAX).unwrap();
        assert_eq!(ops_of(&j), ops[..1]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn progress_survives_reopen_and_drops_segments() {
        let d = tmpdir("progress");
        let big = vec![7u8; 1024 * 1024];
        {
            let j = Journal::open(&d, u64::MAX).unwrap();
            for i in 0..40u64 {
                j.append_now(Op::Write {
                    path: "f".into(),
                    offset: i * big.len() as u64,
                    data: big.clone().into(),
                })
                .unwrap();
            }
            let segs = || {
                fs::read_dir(&d)
                    .unwrap()
                    .filter(|e| {
                        e.as_ref()
                            .unwrap()
                            .file_name()
                            .to_string_lossy()
                            .starts_with("seg-")
                    })
                    .count()
            };
            assert!(segs() >= 3, "40 MiB spans several segments");
            j.begin(&[1, 2, 3, 30]).unwrap();
            j.done(&[2, 30]).unwrap();
            assert_eq!(j.stats().applied_through, 0);
            j.done(&(1..=20).collect::<Vec<_>>()).unwrap();
            assert_eq!(j.stats().applied_through, 20);
            assert_eq!(j.stats().pending_ops, 19);
            assert!(segs() < 3, "the applied segment is gone");
        }
        let j = Journal::open(&d, u64::MAX).unwrap();
        let p = j.pending_after(0);
        let seqs: Vec<u64> = p.iter().map(|r| r.seq).collect();
        let want: Vec<u64> = (21..=40).filter(|&s| s != 30).collect();
        assert_eq!(seqs, want);
        assert!(p.iter().all(|r| !r.maybe_applied));
        j.begin(&[21]).unwrap();
        drop(j);
        let j = Journal::open(&d, u64::MAX).unwrap();
        let p = j.pending_after(0);
        assert!(p[0].maybe_applied && !p[1].maybe_applied);
        // Everything done: reopened empty, and new seqs continue after the old ones.
        j.done(&(21..=40).collect::<Vec<_>>()).unwrap();
        drop(j);
        let j = Journal::open(&d, u64::MAX).unwrap();
        assert_eq!(j.stats().pending_ops, 0);
        assert_eq!(j.append_now(Op::Rmdir { path: "d".into() }).unwrap(), 41);
        fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn append_waits_for_room_and_sync_returns() {
        let d = tmpdir("bound");
        let j = Journal::open(&d, 100).unwrap();
        let w = |n: u64| Op::Write {
            path: "f".into(),
            offset: n,
            data: vec![1; 200].into(),
        };
        j.append(w(0)).await.unwrap();
        let j2 = j.clone();
        let blocked = tokio::spawn(async move { j2.append(w(1)).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!blocked.is_finished(), "over the bound, append waits");
        assert_eq!(j.stats().pending_ops, 1);
        j.done(&[1]).unwrap();
        assert_eq!(blocked.await.unwrap(), 2);
        tokio::time::timeout(Duration::from_secs(5), j.sync())
            .await
            .expect("sync returns within the window")
            .unwrap();
        fs::remove_dir_all(&d).unwrap();
    }
}
