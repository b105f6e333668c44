//! The background writer: replays a volume's journal to the server through [`Sftp`], several
//! batches in flight as [`Schedule`] allows, and marks records done (the journal advances its
//! checkpoint over the prefix that is done).
//!
//! Conflict rule: last writer wins at replay, within what the user did. Our pending change is
//! applied over whatever the server has now (a write lands in the file that is there, a rename
//! replaces its target, a chmod is applied); a change that cannot be applied because the server
//! changed under it is logged, counted as a conflict (its error kept for Status) and skipped,
//! never retried forever and never forced:
//! - an unlink or rmdir of a name already gone, an rmdir of a directory that is not empty, a
//!   write to a file that is gone: skipped (nothing the user did not delete is deleted);
//! - a create where the server already has a non-empty file, a directory or a symlink, a mkdir
//!   over a non-directory, a symlink or link over an existing name, a rename that fails: skipped,
//!   and the name is *poisoned*: later changes through it (writes, setattrs, a rename or unlink
//!   of it) are skipped as conflicts too, so that they never change or delete what someone else
//!   put there; a later unlink/rmdir/rename away of the name ends that. A create over an empty
//!   regular file takes it (nothing is lost), as does a mkdir over an existing directory.
//! - never through a symlink: a change by path to something the server now has as a symlink is
//!   a conflict (a create never follows one, opening with O_EXCL; writes check with LSTAT beside
//!   the OPEN; attributes are set by handle, or `lsetstat` for owner and times).
//!
//! A record that may already be on the server after a crash (`maybe_applied`) accepts what that
//! first attempt leaves: its file there (taken over and truncated: its data follows in the same
//! batch), its rename done, its name gone.
//!
//! Transient errors (the connection is down past `reconnect_timeout`, the server does not
//! answer) keep the batch: it is tried again after a pause, as a maybe-applied one, until the
//! server is back or the replayer is stopped. The journal keeps it either way.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::journal::{Journal, JournalStats};
use super::schedule::{Batch, Schedule};
use super::{Attrs, Op, below_or_at};
use crate::sftp::{Error, File, FileAttributes, OpenFlags, Sftp, StatusCode};

/// Batches sent at once: each is a few requests, so this keeps the pipe full at real latencies
/// without holding too many handles (the SFTP layer spreads them over channels).
const MAX_IN_FLIGHT: usize = 64;
/// Writes of one batch (each at most 1 MiB) in flight at once: 16 MiB, more than a link of
/// 50 ms round trip carries at 300 MB/s.
const WRITES_IN_FLIGHT: usize = 16;
/// Pause before a batch that failed on the transport is tried again (doubling to the max).
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Tries of a batch failing with an error that is neither the server's answer nor the link's.
const OTHER_ERROR_TRIES: u32 = 5;
/// Conflicts kept for Status.
const RECENT_CONFLICTS: usize = 10;
/// The replay rate is measured over this window.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// What the replayer did, for Status.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReplayStats {
    #[serde(flatten)]
    pub journal: JournalStats,
    /// Records done since the replayer started (applied, cancelled out or skipped).
    pub replayed_ops: u64,
    /// Records done per second over the last few seconds.
    pub replay_rate: f64,
    pub conflicts: u64,
    /// The latest conflicts, newest last: what was skipped and why.
    pub recent_conflicts: Vec<String>,
    /// The latest transient error (cleared by the next batch that succeeds).
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Counts {
    replayed: u64,
    conflicts: u64,
    recent: VecDeque<String>,
    last_error: Option<String>,
    /// (when, records done then), for the rate.
    window: VecDeque<(Instant, u64)>,
}

struct Shared {
    journal: Journal,
    counts: Mutex<Counts>,
}

/// The background writer of one journal. Stopping it (or dropping it) leaves what is not
/// applied in the journal.
pub struct Replayer {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Replayer {
    /// Starts replaying `journal` (from its oldest pending record) to `sftp`'s root. Needs a
    /// tokio runtime.
    pub fn start(journal: Journal, sftp: Sftp) -> Replayer {
        let shared = Arc::new(Shared {
            journal,
            counts: Mutex::new(Counts::default()),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(shared.clone(), sftp, stopped));
        Replayer {
            shared,
            stop,
            task: Some(task),
        }
    }

    pub fn journal(&self) -> &Journal {
        &self.shared.journal
    }

    pub fn stats(&self) -> ReplayStats {
        let journal = self.shared.journal.stats();
        let mut c = self.shared.counts.lock();
        let now = Instant::now();
        while c
            .window
            .front()
            .is_some_and(|(t, _)| now - *t > RATE_WINDOW)
        {
            c.window.pop_front();
        }
        let done: u64 = c.window.iter().map(|(_, n)| n).sum();
        let span = c
            .window
            .front()
            .map_or(RATE_WINDOW, |(t, _)| (now - *t).max(Duration::from_secs(1)));
        ReplayStats {
            journal,
            replayed_ops: c.replayed,
            replay_rate: done as f64 / span.as_secs_f64(),
            conflicts: c.conflicts,
            recent_conflicts: c.recent.iter().cloned().collect(),
            last_error: c.last_error.clone(),
        }
    }

    /// Waits until every change appended before the call is on the server, or `budget` has
    /// passed; true if everything got there.
    pub async fn drain(&self, budget: Duration) -> bool {
        let last = self.shared.journal.last_seq();
        tokio::time::timeout(budget, self.shared.journal.wait_applied(last))
            .await
            .is_ok()
    }

    /// Stops sending. Batches in flight are abandoned where they are (their records stay in
    /// the journal, marked begun: the next replayer accepts what they left).
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Replayer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// The end of one batch.
enum Outcome {
    Applied,
    Conflict(String),
}

/// Why a step failed: the server refused (a conflict) or the link did (try again later).
enum Fail {
    Conflict(String),
    Transient(String),
    /// Neither: tried a few times, then a conflict.
    Other(String),
}

fn fail(what: &str, path: &str, e: Error) -> Fail {
    let msg = format!("{what} {path}: {e}");
    match e {
        Error::Status { .. } => Fail::Conflict(msg),
        Error::Disconnected(_) | Error::Timeout => Fail::Transient(msg),
        Error::Other(_) => Fail::Other(msg),
    }
}

async fn run(shared: Arc<Shared>, sftp: Sftp, mut stopped: watch::Receiver<bool>) {
    let ctx = Ctx {
        sftp,
        poisoned: Mutex::new(HashSet::new()),
    };
    let journal = &shared.journal;
    let mut schedule = Schedule::new();
    let mut seen = 0;
    let mut running = FuturesUnordered::new();
    loop {
        if *stopped.borrow() {
            return;
        }
        for r in journal.pending_after(seen) {
            schedule.push(r.seq, r.op.clone(), r.maybe_applied);
            seen = r.seq;
        }
        loop {
            let room = MAX_IN_FLIGHT - running.len();
            let batches = schedule.ready(room);
            if batches.is_empty() {
                break;
            }
            for b in batches {
                if b.ops.is_empty() {
                    // Cancelled out: nothing to send.
                    finish(&shared, &mut schedule, &b, Outcome::Applied);
                    continue;
                }
                if let Err(e) = journal.begin(&b.seqs) {
                    tracing::warn!("write-back: {e}");
                }
                running.push(run_batch(&ctx, &shared, b, stopped.clone()));
            }
        }
        tokio::select! {
            Some((b, outcome)) = running.next(), if !running.is_empty() => {
                finish(&shared, &mut schedule, &b, outcome);
            }
            _ = journal.wait_for_after(seen) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// Records a batch's end: done in the journal, counted, and off the schedule.
fn finish(shared: &Shared, schedule: &mut Schedule, b: &Batch, outcome: Outcome) {
    if let Err(e) = shared.journal.done(&b.seqs) {
        // Applied but not noted: after a restart it is replayed again as a maybe-applied one.
        tracing::warn!("write-back: {e}");
    }
    schedule.complete(b.id);
    let mut c = shared.counts.lock();
    c.replayed += b.seqs.len() as u64;
    c.window.push_back((Instant::now(), b.seqs.len() as u64));
    if c.window.len() > 4096 {
        c.window.pop_front();
    }
    match outcome {
        Outcome::Applied => c.last_error = None,
        Outcome::Conflict(msg) => {
            tracing::warn!(seqs = ?b.seqs, "write-back conflict, change skipped: {msg}");
            c.conflicts += 1;
            c.recent.push_back(msg);
            if c.recent.len() > RECENT_CONFLICTS {
                c.recent.pop_front();
            }
        }
    }
}

/// Runs `b` until it is applied or refused, through any number of reconnects.
async fn run_batch(
    ctx: &Ctx,
    shared: &Shared,
    b: Batch,
    mut stopped: watch::Receiver<bool>,
) -> (Batch, Outcome) {
    let mut maybe = b.maybe_applied;
    let mut pause = RETRY_FIRST;
    let mut others = 0;
    loop {
        let msg = match ctx.apply(&b.ops, maybe).await {
            Ok(()) => return (b, Outcome::Applied),
            Err(Fail::Conflict(m)) => return (b, Outcome::Conflict(m)),
            Err(Fail::Other(m)) if others + 1 >= OTHER_ERROR_TRIES => {
                return (b, Outcome::Conflict(m));
            }
            Err(Fail::Other(m)) => {
                others += 1;
                m
            }
            Err(Fail::Transient(m)) => m,
        };
        tracing::debug!("write-back: will try again: {msg}");
        shared.counts.lock().last_error = Some(msg);
        // Part of it may have reached the server.
        maybe = true;
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopped.changed() => std::future::pending::<()>().await,
        }
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// What batches share while they run: the connection and the poisoned names.
struct Ctx {
    sftp: Sftp,
    /// Names whose change was skipped because the server holds something else there (see the
    /// module comment). Changes to one name run one at a time, in order, so this is exact.
    poisoned: Mutex<HashSet<String>>,
}

/// The server's path of volume path `rel`.
fn join(root: &str, rel: &str) -> String {
    match (rel.is_empty(), root.ends_with('/')) {
        (true, _) => root.to_string(),
        (false, true) => format!("{root}{rel}"),
        (false, false) => format!("{root}/{rel}"),
    }
}

/// The writes `ops` starts with, up to the first that overlaps an earlier one: they may go in
/// any order.
fn disjoint_writes(ops: &[Op]) -> Vec<(u64, Bytes)> {
    let mut writes: Vec<(u64, Bytes)> = Vec::new();
    for op in ops {
        let Op::Write { offset, data, .. } = op else {
            break;
        };
        let end = offset + data.len() as u64;
        if writes
            .iter()
            .any(|(o, d)| *offset < o + d.len() as u64 && *o < end)
        {
            break;
        }
        writes.push((*offset, data.clone()));
    }
    writes
}

fn is_file_change(op: &Op) -> bool {
    matches!(
        op,
        Op::Create { .. } | Op::Write { .. } | Op::Truncate { .. } | Op::SetAttr { .. }
    )
}

impl Ctx {
    fn full(&self, rel: &str) -> String {
        join(self.sftp.root(), rel)
    }

    fn poison(&self, rel: &str) {
        self.poisoned.lock().insert(rel.to_string());
    }

    /// The poisoned name `op` goes through, if any; an unlink, rmdir or rename away of a
    /// poisoned name also ends its poisoning (and a rename passes it on to the new name).
    fn through_poisoned(&self, op: &Op) -> Option<String> {
        let mut p = self.poisoned.lock();
        if p.is_empty() {
            return None;
        }
        let hit = |path: &str| p.iter().find(|q| below_or_at(path, q)).cloned();
        let found = op.paths().into_iter().find_map(hit)?;
        match op {
            Op::Unlink { path } | Op::Rmdir { path } if *path == found => {
                p.remove(&found);
            }
            Op::Rename { from, to } if below_or_at(from, &found) => {
                if *from == found {
                    p.remove(&found);
                }
                p.insert(to.clone());
            }
            _ => {}
        }
        Some(found)
    }

    async fn apply(&self, ops: &[Op], maybe: bool) -> Result<(), Fail> {
        let Some(first) = ops.first() else {
            return Ok(());
        };
        if let Some(p) = self.through_poisoned(first) {
            return Err(Fail::Conflict(format!(
                "{} not applied: an earlier change to {p} was skipped as a conflict",
                first.describe()
            )));
        }
        if is_file_change(first) {
            self.file_batch(ops, maybe).await
        } else {
            self.single(first, maybe).await
        }
    }

    /// Changes to one file's data and attributes, through one handle when data changes.
    async fn file_batch(&self, ops: &[Op], maybe: bool) -> Result<(), Fail> {
        let rel = ops[0].paths()[0];
        let full = self.full(rel);
        let data = ops.iter().any(|o| {
            matches!(
                o,
                Op::Create { .. } | Op::Write { .. } | Op::Truncate { .. }
            )
        });
        if !data {
            for op in ops {
                if let Op::SetAttr { attrs, .. } = op {
                    self.set_by_path(rel, &full, attrs).await?;
                }
            }
            return Ok(());
        }
        let (file, rest) = match &ops[0] {
            Op::Create { mode, uid, gid, .. } => (
                self.create(rel, &full, *mode, *uid, *gid, maybe).await?,
                &ops[1..],
            ),
            _ => (self.open_existing(rel, &full).await?, ops),
        };
        let mut r = Ok(());
        let mut rest = rest;
        while let Some(op) = rest.first() {
            let writes = disjoint_writes(rest);
            r = if writes.is_empty() {
                rest = &rest[1..];
                match op {
                    Op::Truncate { size, .. } => {
                        let set = FileAttributes {
                            size: Some(*size),
                            ..FileAttributes::empty()
                        };
                        file.fsetstat(set)
                            .await
                            .map_err(|e| fail("truncate", rel, e))
                    }
                    Op::SetAttr { attrs, .. } => self.set_on_handle(rel, &file, attrs).await,
                    _ => Ok(()),
                }
            } else {
                // Disjoint writes commute: many in flight at once, not one round trip
                // after another; bounded, as each is copied into packets when it is sent.
                rest = &rest[writes.len()..];
                let file = &file;
                futures::stream::iter(writes)
                    .map(|(offset, data)| async move { file.write(offset, &data).await })
                    .buffer_unordered(WRITES_IN_FLIGHT)
                    .try_collect::<()>()
                    .await
                    .map_err(|e| fail("write", rel, e))
            };
            if r.is_err() {
                break;
            }
        }
        let closed = file.close().await.map_err(|e| fail("close", rel, e));
        r.and(closed)
    }

    /// Creates `rel` for writing, never through a symlink; see the module comment for what an
    /// existing file means.
    async fn create(
        &self,
        rel: &str,
        full: &str,
        mode: u32,
        uid: Option<u32>,
        gid: Option<u32>,
        maybe: bool,
    ) -> Result<File, Fail> {
        let perm = mode & 0o7777;
        let attrs = FileAttributes {
            permissions: Some(perm),
            ..FileAttributes::empty()
        };
        let flags = OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::WRITE;
        let file = match self.sftp.open(full, flags, attrs).await {
            Ok(f) => f,
            // OpenSSH answers an O_EXCL create of an existing name with FAILURE.
            Err(e) if e.is_status(StatusCode::Failure) => {
                let a = self
                    .sftp
                    .lstat(full)
                    .await
                    .map_err(|e| fail("create (lstat)", rel, e))?;
                if !(a.is_regular() && (a.size == Some(0) || maybe)) {
                    self.poison(rel);
                    return Err(Fail::Conflict(format!(
                        "create {rel}: the server already has {} there; left as it is",
                        describe(&a)
                    )));
                }
                self.sftp
                    .open(
                        full,
                        OpenFlags::WRITE | OpenFlags::TRUNCATE,
                        FileAttributes::empty(),
                    )
                    .await
                    .map_err(|e| fail("create (reopen)", rel, e))?
            }
            Err(e) => return Err(fail("create", rel, e)),
        };
        // The server's umask applied to the OPEN's mode: set it as asked, with the owner.
        let mut set = FileAttributes {
            permissions: Some(perm),
            ..FileAttributes::empty()
        };
        if uid.is_some() || gid.is_some() {
            let base = if uid.is_none() || gid.is_none() {
                Some(
                    file.fstat()
                        .await
                        .map_err(|e| fail("create (fstat)", rel, e))?,
                )
            } else {
                None
            };
            set.uid = uid.or(base.as_ref().and_then(|b| b.uid));
            set.gid = gid.or(base.as_ref().and_then(|b| b.gid));
        }
        if let Err(e) = file.fsetstat(set).await {
            let _ = file.close().await;
            return Err(fail("create (set mode and owner)", rel, e));
        }
        Ok(file)
    }

    /// Opens an existing regular file for writing; one that is a symlink now is not written
    /// through (the LSTAT goes beside the OPEN, so it costs no round trip).
    async fn open_existing(&self, rel: &str, full: &str) -> Result<File, Fail> {
        let (st, f) = tokio::join!(
            self.sftp.lstat(full),
            self.sftp
                .open(full, OpenFlags::WRITE, FileAttributes::empty())
        );
        match (st, f) {
            (Ok(a), Ok(f)) if a.is_regular() => Ok(f),
            (Ok(a), Ok(f)) => {
                let _ = f.close().await;
                Err(Fail::Conflict(format!(
                    "write {rel}: the server has {} there now; not written through",
                    describe(&a)
                )))
            }
            (Err(e), Ok(f)) => {
                let _ = f.close().await;
                Err(fail("write (lstat)", rel, e))
            }
            (_, Err(e)) => Err(fail("write (open)", rel, e)),
        }
    }

    /// Setattr through an open handle: never a symlink's target.
    async fn set_on_handle(&self, rel: &str, file: &File, attrs: &Attrs) -> Result<(), Fail> {
        let base = if pair_partial(attrs) {
            Some(
                file.fstat()
                    .await
                    .map_err(|e| fail("setattr (fstat)", rel, e))?,
            )
        } else {
            None
        };
        let set = sftp_attrs(attrs, base.as_ref());
        owner_then_rest(rel, set, |a| file.fsetstat(a)).await
    }

    /// Setattr by path (a directory, a symlink, or a file with no data change in the batch):
    /// the mode by SETSTAT only on what LSTAT shows is not a symlink, the rest by
    /// `Sftp::setstat_nofollow`, the rule `fs::setattr` uses too.
    async fn set_by_path(&self, rel: &str, full: &str, attrs: &Attrs) -> Result<(), Fail> {
        let a = self
            .sftp
            .lstat(full)
            .await
            .map_err(|e| fail("setattr (lstat)", rel, e))?;
        let set = sftp_attrs(attrs, Some(&a));
        if a.is_symlink() {
            if set.permissions.is_some() {
                return Err(Fail::Conflict(format!(
                    "chmod {rel}: the server has a symlink there now; not followed"
                )));
            }
            if !self.sftp.has_lsetstat() {
                return Err(Fail::Conflict(format!(
                    "setattr {rel}: a symlink's owner and times need lsetstat@openssh.com, \
                     which the server lacks"
                )));
            }
            // lsetstat sends only the owner and times.
            return self
                .sftp
                .lsetstat(full, &set)
                .await
                .map_err(|e| fail("setattr", rel, e));
        }
        owner_then_rest(rel, set, |a| self.sftp.setstat_nofollow(full, a)).await
    }

    /// A change to names: mkdir, rename, unlink, rmdir, symlink, link.
    async fn single(&self, op: &Op, maybe: bool) -> Result<(), Fail> {
        let s = &self.sftp;
        match op {
            Op::Mkdir { path, mode } => {
                let full = self.full(path);
                match s.mkdir(&full, *mode).await {
                    Ok(()) => {}
                    Err(e) if e.is_status(StatusCode::Failure) => {
                        let a = s
                            .lstat(&full)
                            .await
                            .map_err(|e| fail("mkdir (lstat)", path, e))?;
                        if !a.is_dir() {
                            self.poison(path);
                            return Err(Fail::Conflict(format!(
                                "mkdir {path}: the server already has {} there; left as it is",
                                describe(&a)
                            )));
                        }
                    }
                    Err(e) => return Err(fail("mkdir", path, e)),
                }
                // The server's umask applied to MKDIR's mode: set it as asked.
                let set = FileAttributes {
                    permissions: Some(mode & 0o7777),
                    ..FileAttributes::empty()
                };
                s.setstat(&full, set)
                    .await
                    .map_err(|e| fail("mkdir (chmod)", path, e))
            }
            Op::Rename { from, to } => {
                let (f, t) = (self.full(from), self.full(to));
                match s.rename(&f, &t).await {
                    Ok(()) => Ok(()),
                    Err(e) if maybe && e.is_status(StatusCode::NoSuchFile) => {
                        let gone = matches!(s.lstat(&f).await,
                            Err(e) if e.is_status(StatusCode::NoSuchFile));
                        if gone && s.lstat(&t).await.is_ok() {
                            return Ok(());
                        }
                        self.poison(to);
                        Err(fail("rename", &format!("{from} -> {to}"), e))
                    }
                    Err(e) => {
                        if matches!(e, Error::Status { .. }) {
                            self.poison(to);
                        }
                        Err(fail("rename", &format!("{from} -> {to}"), e))
                    }
                }
            }
            Op::Unlink { path } => match s.remove(&self.full(path)).await {
                Err(e) if maybe && e.is_status(StatusCode::NoSuchFile) => Ok(()),
                r => r.map_err(|e| fail("unlink", path, e)),
            },
            Op::Rmdir { path } => match s.rmdir(&self.full(path)).await {
                Err(e) if maybe && e.is_status(StatusCode::NoSuchFile) => Ok(()),
                r => r.map_err(|e| fail("rmdir", path, e)),
            },
            Op::Symlink { target, path } => {
                let full = self.full(path);
                match s.symlink(target, &full).await {
                    Err(e) if e.is_status(StatusCode::Failure) => {
                        if matches!(s.readlink(&full).await, Ok(t) if t == *target) {
                            return Ok(());
                        }
                        self.poison(path);
                        Err(fail("symlink", path, e))
                    }
                    r => r.map_err(|e| fail("symlink", path, e)),
                }
            }
            Op::Link { existing, new } => {
                match s.hardlink(&self.full(existing), &self.full(new)).await {
                    Err(e) => {
                        if matches!(e, Error::Status { .. }) {
                            self.poison(new);
                        }
                        Err(fail("link", &format!("{existing} -> {new}"), e))
                    }
                    Ok(()) => Ok(()),
                }
            }
            Op::Create { .. } | Op::Write { .. } | Op::Truncate { .. } | Op::SetAttr { .. } => {
                self.file_batch(std::slice::from_ref(op), maybe).await
            }
        }
    }
}

/// True if a setattr gives one of a pair SFTP v3 sets together (uid/gid, atime/mtime).
/// Sets `set` by `send`: the owner first on its own (a chown clears set-ID bits, so the mode
/// goes after it), and a refused chown is ignored, as the default mode ignores one (the login
/// may not give files away): the mode and times still go.
async fn owner_then_rest<F, Fut>(rel: &str, set: FileAttributes, send: F) -> Result<(), Fail>
where
    F: Fn(FileAttributes) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let rest = FileAttributes {
        uid: None,
        gid: None,
        ..set.clone()
    };
    let has_rest = rest.permissions.is_some() || rest.atime.is_some() || rest.size.is_some();
    if set.uid.is_some() {
        let owner = FileAttributes {
            uid: set.uid,
            gid: set.gid,
            ..FileAttributes::empty()
        };
        match send(owner).await {
            Ok(()) => {}
            Err(e)
                if e.is_status(StatusCode::PermissionDenied)
                    || e.is_status(StatusCode::Failure) =>
            {
                tracing::debug!(path = rel, "chown refused by the server at replay; ignored");
            }
            Err(e) => return Err(fail("chown", rel, e)),
        }
    }
    if has_rest {
        send(rest).await.map_err(|e| fail("setattr", rel, e))?;
    }
    Ok(())
}

fn pair_partial(a: &Attrs) -> bool {
    (a.uid.is_some() != a.gid.is_some()) || (a.atime.is_some() != a.mtime.is_some())
}

/// The SETSTAT attributes of `a`, each pair completed from `base` (dropped if it cannot be).
fn sftp_attrs(a: &Attrs, base: Option<&FileAttributes>) -> FileAttributes {
    let mut f = FileAttributes {
        permissions: a.mode.map(|m| m & 0o7777),
        ..FileAttributes::empty()
    };
    if a.uid.is_some() || a.gid.is_some() {
        let uid = a.uid.or(base.and_then(|b| b.uid));
        let gid = a.gid.or(base.and_then(|b| b.gid));
        if uid.is_some() && gid.is_some() {
            (f.uid, f.gid) = (uid, gid);
        }
    }
    if a.atime.is_some() || a.mtime.is_some() {
        let atime = a.atime.or(base.and_then(|b| b.atime));
        let mtime = a.mtime.or(base.and_then(|b| b.mtime));
        if atime.is_some() && mtime.is_some() {
            (f.atime, f.mtime) = (atime, mtime);
        }
    }
    f
}

fn describe(a: &FileAttributes) -> String {
    if a.is_dir() {
        "a directory".into()
    } else if a.is_symlink() {
        "a symlink".into()
    } else if a.is_regular() {
        format!("a file of {} bytes", a.size.unwrap_or(0))
    } else {
        "a special file".into()
    }
}

#[cfg(test)]
mod tests {
    use super::{Op, disjoint_writes};

    fn write(offset: u64, len: usize) -> Op {
        Op::Write {
            path: "f".into(),
            offset,
            data: vec![1; len].into(),
        }
    }

    #[test]
    fn writes_go_together_up_to_the_first_overlap_or_other_change() {
        let ops = [write(0, 10), write(20, 10), write(10, 10), write(25, 1)];
        assert_eq!(
            disjoint_writes(&ops).len(),
            3,
            "touching is not overlapping"
        );
        let ops = [
            write(0, 10),
            Op::Truncate {
                path: "f".into(),
                size: 0,
            },
            write(20, 1),
        ];
        assert_eq!(disjoint_writes(&ops).len(), 1);
        assert_eq!(disjoint_writes(&[write(5, 0), write(5, 3)]).len(), 2);
    }
}
