//! The mount's view in write-back mode: the server's state with the journal's pending changes
//! laid over it, so that reads through the mount see what it wrote (read-your-writes) before
//! the replayer has put it on the server.
//!
//! Each change the filesystem makes is appended to the journal and recorded in the view at
//! once, under one lock, so the view and the journal agree on the order. The view holds, by
//! volume path, what a pending change made of that name ([`Node`]): gone, or a directory, a
//! file (its size and attributes, and the bytes written that may not be on the server yet),
//! a symlink. A name the view does not hold is answered by the server, at the path it has
//! there while renames of it (or of a directory above it) are pending. A node is forgotten
//! once every change of its own is applied; the server answers for it from then on.
//!
//! Checks a change needs are made against the view and what the filesystem already looked up
//! (the kernel looks a name up before it creates or removes one): a create or mkdir of a name
//! the view does not hold is taken as the kernel found it missing, with no round trip. If
//! another client made the name meanwhile, the replay meets a conflict (the replayer's rule:
//! skipped and counted, never forced).
//!
//! What is not laid over: a hard link waits until it (and everything before it) is on the
//! server, and the other name of a hard-linked file shows writes through one name once they
//! are applied.
//!
//! A file the mount created and wrote (up to `KEPT_FILE_MAX`) keeps its bytes for the cache
//! timeout once it is on the server ([`View::kept`]): reading it back then costs no round trip.
//! Another client's change to such a file shows once that time is over, as its attributes do
//! (the same `cache_timeout` bounds both).

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;

use super::extents::{Extents, Piece};
use super::{Attrs, Journal, JournalError, Op, below_or_at};
use crate::kept::Kept;
use crate::sftp::{DirEntry, Error, File, FileAttributes, OpenFlags, Sftp, StatusCode};

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
/// Tries of a server call whose path mapping changed under it (a rename applied meanwhile).
const MAPPING_TRIES: usize = 4;
/// How long the pruner lets applied records gather before it walks the view.
const PRUNE_BATCH: Duration = Duration::from_millis(20);
/// Longest a server call waits for the replayer to mark a rename it went through done.
const MOVED_WAIT: Duration = Duration::from_secs(10);
/// Biggest file whose bytes are kept once applied (small files are where a round trip costs
/// the most against the bytes).
const KEPT_FILE_MAX: u64 = 1 << 20;
/// Bytes, and files, kept in all.
const KEPT_BYTES_MAX: usize = 64 << 20;
const KEPT_FILES_MAX: usize = 16_384;
/// Directory listings kept for an rmdir (`View::listed`), in count and in bytes of names.
const LISTED_MAX: usize = 4096;
const LISTED_BYTES_MAX: usize = 8 << 20;

/// What a pending change made of a name.
#[derive(Debug, Clone)]
struct Node {
    /// The newest record that changed this name itself (not its children).
    seq: u64,
    state: State,
    /// Open files written through (or to be): the node stays (and answers for the file,
    /// with no round trip) while any is open. Moves with the node on a rename.
    pins: usize,
}

#[derive(Debug, Clone)]
enum State {
    Gone,
    Here { attrs: FileAttributes, kind: Kind },
}

#[derive(Debug, Clone)]
enum Kind {
    /// `complete`: every name in it is in the view (it was made here, and nothing in it has
    /// been forgotten since), so a name the view does not hold is not there.
    Dir {
        complete: bool,
    },
    File(Content),
    Symlink(String),
}

/// A file's bytes as the pending changes leave them: `extents` over the server's bytes, except
/// that from `zeros.offset` on (a create or a truncate not yet applied) there are none.
#[derive(Debug, Clone, Default)]
struct Content {
    extents: Extents,
    zeros: Option<Zeros>,
    /// Created here: every byte is in `extents` (or a zero), none only on the server, so the
    /// whole file can be kept once applied (`View::kept`).
    whole: bool,
}

impl Content {
    /// The first `size` bytes of a `whole` file: what is not written reads as zeros.
    fn bytes(&self, size: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(size as usize);
        for p in self.extents.read(0, size) {
            match p {
                Piece::Data(d) => out.extend_from_slice(&d),
                Piece::Gap { len, .. } => out.resize(out.len() + len as usize, 0),
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy)]
struct Zeros {
    offset: u64,
    /// The newest create or truncate that put them there.
    seq: u64,
}

/// A rename not yet known to be applied: names below `to` are at `from` on the server.
#[derive(Debug, Clone)]
struct Moved {
    seq: u64,
    from: String,
    to: String,
}

struct View {
    nodes: BTreeMap<String, Node>,
    /// Oldest first.
    moved: Vec<Moved>,
    /// Bytes of files created here, as they are on the server, since `KeptFile::at`: a read
    /// of one needs no round trip while it is fresh. Dropped by any change to the name or
    /// its bytes through the mount.
    kept: Kept<KeptFile>,
    /// The server's names of directories as last listed, while only removals were made in
    /// them through the mount: an rmdir after an `rm -r` of their entries needs no second
    /// listing. Another client's name made there meanwhile makes the rmdir a conflict at
    /// replay (skipped: the directory stays, with it).
    listed: Kept<Listed>,
    /// Bumped by every name made in a directory: a listing taken across one is not kept.
    additions: u64,
    /// How long kept bytes and listings are served (the mount's cache timeout).
    fresh_for: Duration,
}

struct Listed {
    at: Instant,
    names: Vec<String>,
}

struct KeptFile {
    at: Instant,
    data: Bytes,
}

/// What the view says of a name.
enum Found<'a> {
    Here(&'a FileAttributes, &'a Kind),
    Missing,
    /// Not in the view: the server knows.
    Server,
}

struct Inner {
    journal: Journal,
    sftp: Sftp,
    view: Mutex<View>,
    /// Changes go into the journal in the order they were asked for, also while they wait
    /// for room (a fair lock: waiters are served first come, first served).
    order: tokio::sync::Mutex<()>,
    /// Owner the server gives what the login creates (learned at start; the root's until
    /// then).
    owner: Mutex<(u32, u32)>,
}

/// The pending changes of one mount over its server. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct Overlay {
    inner: Arc<Inner>,
}

fn no_such(path: &str) -> Error {
    Error::Status {
        code: StatusCode::NoSuchFile,
        message: format!("{path}: no such file (write-back view)"),
    }
}

fn failure(path: &str, why: &str) -> Error {
    Error::Status {
        code: StatusCode::Failure,
        message: format!("{path}: {why} (write-back view)"),
    }
}

fn journal_error(e: JournalError) -> Error {
    tracing::error!("write-back journal: {e}");
    Error::Other(e.to_string())
}

fn now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

fn file_type(a: &FileAttributes) -> u32 {
    a.permissions.unwrap_or(0) & S_IFMT
}

fn parent_of(rel: &str) -> Option<&str> {
    if rel.is_empty() {
        return None;
    }
    Some(rel.rsplit_once('/').map_or("", |(p, _)| p))
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// `path` with its leading `from` replaced by `to` (`path` is at or below `from`).
fn rebase(path: &str, from: &str, to: &str) -> String {
    if from.is_empty() {
        return join(to, path);
    }
    format!("{to}{}", &path[from.len()..])
}

impl View {
    fn new(fresh_for: Duration) -> View {
        View {
            nodes: BTreeMap::new(),
            moved: Vec::new(),
            kept: Kept::new(KEPT_FILES_MAX, KEPT_BYTES_MAX),
            listed: Kept::new(LISTED_MAX, LISTED_BYTES_MAX),
            additions: 0,
            fresh_for,
        }
    }

    /// A name is made in `dir` (or moved or linked there): its listing is no longer enough.
    fn added_in(&mut self, dir: &str) {
        self.additions += 1;
        self.listed.remove(dir);
    }

    /// Whether `dir` is known empty without asking the server: listed a moment ago, and
    /// every name the server had there is gone in the view since, none made.
    fn known_empty(&self, dir: &str) -> bool {
        let Some(l) = self.listed.get(dir).filter(|l| self.fresh(l.at)) else {
            return false;
        };
        l.names
            .iter()
            .all(|n| matches!(self.found(&join(dir, n)), Found::Missing))
            && !self
                .children(dir)
                .any(|(_, n)| matches!(n.state, State::Here { .. }))
    }

    /// Whether what was kept `at` may still be served.
    fn fresh(&self, at: Instant) -> bool {
        at.elapsed() < self.fresh_for
    }

    /// The kept bytes of `rel`, while they are fresh.
    fn kept(&self, rel: &str) -> Option<Bytes> {
        self.kept
            .get(rel)
            .filter(|k| self.fresh(k.at))
            .map(|k| k.data.clone())
    }

    /// `rel` (and what is below it) changes through the mount: its kept bytes and listings
    /// are no more.
    fn forget_cached(&mut self, rel: &str) {
        self.kept.remove_prefixed(rel, |k| below_or_at(k, rel));
        self.listed.remove_prefixed(rel, |k| below_or_at(k, rel));
    }

    fn found(&self, rel: &str) -> Found<'_> {
        if let Some(n) = self.nodes.get(rel) {
            return match &n.state {
                State::Gone => Found::Missing,
                State::Here { attrs, kind } => Found::Here(attrs, kind),
            };
        }
        let mut p = rel;
        while let Some(parent) = parent_of(p) {
            if let Some(n) = self.nodes.get(parent) {
                return match &n.state {
                    State::Here {
                        kind: Kind::Dir { complete: false },
                        ..
                    } => Found::Server,
                    _ => Found::Missing,
                };
            }
            p = parent;
        }
        Found::Server
    }

    /// The names directly in `dir` that the view holds.
    fn children<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a str, &'a Node)> + 'a {
        let start = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let skip = start.len();
        self.nodes
            .range(start.clone()..)
            .take_while(move |(k, _)| k.starts_with(&start))
            .filter(move |(k, _)| !k[skip..].contains('/') && !k[skip..].is_empty())
            .map(move |(k, n)| (&k[skip..], n))
    }

    /// Where `rel` is on the server now, and the renames that mapping went through.
    /// `applied`: whether a rename is on the server already (those are not mapped back).
    fn server_path(&self, rel: &str, applied: impl Fn(u64) -> bool) -> (String, Vec<u64>) {
        let mut p = rel.to_string();
        let mut used = Vec::new();
        for m in self.moved.iter().rev() {
            if below_or_at(&p, &m.to) && !applied(m.seq) {
                p = rebase(&p, &m.to, &m.from);
                used.push(m.seq);
            }
        }
        (p, used)
    }

    /// A name gone: it and what the view held below it.
    fn remove_subtree(&mut self, rel: &str) {
        self.forget_cached(rel);
        let below: Vec<String> = self
            .nodes
            .range(rel.to_string()..)
            .take_while(|(k, _)| k.starts_with(rel))
            .filter(|(k, _)| below_or_at(k, rel))
            .map(|(k, _)| k.clone())
            .collect();
        for k in below {
            self.nodes.remove(&k);
        }
    }

    /// The view no longer holds every name of `dir` (one is the server's to answer now).
    fn incomplete(&mut self, dir: &str) {
        if let Some(Node {
            state:
                State::Here {
                    kind: Kind::Dir { complete },
                    ..
                },
            ..
        }) = self.nodes.get_mut(dir)
        {
            *complete = false;
        }
    }

    fn set(&mut self, rel: &str, seq: u64, state: State) {
        self.forget_cached(rel);
        if matches!(state, State::Here { .. })
            && let Some(p) = parent_of(rel)
        {
            self.added_in(p);
        }
        let pins = match self.nodes.get(rel) {
            // The same file changing: its open files keep it.
            Some(n) if matches!(state, State::Here { .. }) => n.pins,
            _ => 0,
        };
        self.nodes
            .insert(rel.to_string(), Node { seq, state, pins });
    }

    fn pin(&mut self, rel: &str) {
        if let Some(n) = self.nodes.get_mut(rel) {
            n.pins += 1;
        }
    }

    fn unpin(&mut self, rel: &str) {
        if let Some(n) = self.nodes.get_mut(rel) {
            n.pins = n.pins.saturating_sub(1);
        }
    }

    fn touch_dir(&mut self, dir: &str) {
        if let Some(Node {
            state: State::Here { attrs, .. },
            ..
        }) = self.nodes.get_mut(dir)
        {
            let t = now();
            attrs.mtime = Some(t);
        }
    }

    /// Forgets what the server has now: nodes whose own changes are all applied, renames
    /// applied, and written bytes applied where nothing pending zeroes them. A directory made
    /// here goes with everything below it, once all of that is applied: until then it keeps
    /// answering for the names it does not hold (no round trip for them, and none needed
    /// while the server is away).
    fn prune(&mut self, through: u64) {
        let done = |n: &Node| n.seq <= through && n.pins == 0;
        self.keep_applied(done);
        let complete = |n: &Node| {
            matches!(
                n.state,
                State::Here {
                    kind: Kind::Dir { complete: true },
                    ..
                }
            )
        };
        let under_complete = |nodes: &BTreeMap<String, Node>, k: &str| {
            let mut p = k;
            while let Some(parent) = parent_of(p) {
                if nodes.get(parent).is_some_and(complete) {
                    return true;
                }
                p = parent;
            }
            false
        };
        let roots: Vec<String> = self
            .nodes
            .iter()
            .filter(|(k, n)| complete(n) && !under_complete(&self.nodes, k))
            .map(|(k, _)| k.clone())
            .collect();
        let mut gone: Vec<String> = Vec::new();
        for r in &roots {
            let subtree: Vec<(&String, &Node)> = self
                .nodes
                .range(r.clone()..)
                .take_while(|(k, _)| k.starts_with(r.as_str()))
                .filter(|(k, _)| below_or_at(k, r))
                .collect();
            if subtree.iter().all(|(_, n)| done(n)) {
                gone.extend(subtree.into_iter().map(|(k, _)| k.clone()));
            }
        }
        gone.extend(
            self.nodes
                .iter()
                .filter(|(k, n)| done(n) && !complete(n) && !under_complete(&self.nodes, k))
                .map(|(k, _)| k.clone()),
        );
        for k in &gone {
            self.nodes.remove(k);
        }
        for k in &gone {
            if let Some(p) = parent_of(k) {
                self.incomplete(p);
            }
        }
        for n in self.nodes.values_mut() {
            if let State::Here {
                attrs,
                kind: Kind::File(c),
            } = &mut n.state
            {
                if c.zeros.is_some_and(|z| z.seq <= through) {
                    c.zeros = None;
                }
                // A file created here keeps all its bytes until all are applied (then they
                // are kept, above), unless it grows past what would be kept.
                c.whole &= attrs.size.unwrap_or(0) <= KEPT_FILE_MAX;
                if !c.whole {
                    let below = c.zeros.map_or(u64::MAX, |z| z.offset);
                    c.extents.prune(through, below);
                }
            }
        }
        self.moved.retain(|m| m.seq > through);
    }

    /// Moves the bytes of files created here that are all on the server now (`done`) to
    /// `kept`: from then on their nodes' bytes are pruned as any other's.
    fn keep_applied(&mut self, done: impl Fn(&Node) -> bool) {
        let mut applied = Vec::new();
        for (k, n) in self.nodes.iter_mut() {
            let is_done = done(n);
            if let State::Here {
                attrs,
                kind: Kind::File(c),
            } = &mut n.state
                && c.whole
                && is_done
            {
                c.whole = false;
                let size = attrs.size.unwrap_or(0);
                if !self.fresh_for.is_zero() && size <= KEPT_FILE_MAX {
                    applied.push((k.clone(), c.bytes(size)));
                }
            }
        }
        let at = Instant::now();
        for (k, data) in applied {
            let (bytes, ticket) = (data.len(), self.kept.ticket());
            let file = KeptFile {
                at,
                data: data.into(),
            };
            self.kept.insert(k, file, bytes, ticket);
        }
    }
}

impl Overlay {
    /// The view of `sftp`'s root with `journal`'s pending changes over it. The journal's
    /// replayer runs apart (`Replayer::start`); the view forgets what it has applied. Needs a
    /// tokio runtime.
    /// `keep`: how long the bytes of a file created here are served once applied (the
    /// cache timeout; zero keeps none).
    pub fn new(journal: Journal, sftp: Sftp, keep: Duration) -> Overlay {
        let inner = Arc::new(Inner {
            journal,
            sftp,
            view: Mutex::new(View::new(keep)),
            order: tokio::sync::Mutex::new(()),
            owner: Mutex::new((0, 0)),
        });
        tokio::spawn(learn_owner(Arc::downgrade(&inner)));
        tokio::spawn(prune(Arc::downgrade(&inner)));
        Overlay { inner }
    }

    fn rel<'a>(&self, full: &'a str) -> Result<&'a str, Error> {
        let root = self.inner.sftp.root();
        let rest = full
            .strip_prefix(root)
            .ok_or_else(|| failure(full, "outside the volume"))?;
        let rest = if root.ends_with('/') || rest.is_empty() {
            rest
        } else {
            rest.strip_prefix('/')
                .ok_or_else(|| failure(full, "outside the volume"))?
        };
        Ok(rest)
    }

    fn full(&self, rel: &str) -> String {
        let root = self.inner.sftp.root();
        match (rel.is_empty(), root.ends_with('/')) {
            (true, _) => root.to_string(),
            (false, true) => format!("{root}{rel}"),
            (false, false) => format!("{root}/{rel}"),
        }
    }

    /// Calls the server at where `rel` is there now; again if a rename it went through was
    /// applied meanwhile (the answer may then be of another file).
    async fn on_server<T, F, Fut>(&self, rel: &str, call: F) -> Result<T, Error>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let mut tries = 0;
        loop {
            let (path, used) = self.server_path(rel);
            let r = call(self.full(&path)).await;
            tries += 1;
            if tries >= MAPPING_TRIES || !self.mapping_moved(&used, &r).await {
                return r;
            }
        }
    }

    /// True if a server call by a name mapped through pending renames `used` must be made
    /// again: one of them was applied while it was under way. A name missing there may be
    /// one the replayer has just moved and not yet marked done: that is waited for (briefly).
    async fn mapping_moved<T>(&self, used: &[u64], r: &Result<T, Error>) -> bool {
        let journal = &self.inner.journal;
        if used.iter().any(|&s| journal.is_applied(s)) {
            return true;
        }
        if used.is_empty() || !matches!(r, Err(e) if e.is_status(StatusCode::NoSuchFile)) {
            return false;
        }
        let all = futures::future::join_all(used.iter().map(|&s| journal.wait_done(s)));
        tokio::time::timeout(MOVED_WAIT, all).await.is_ok()
    }

    /// Where `rel` is on the server now (see `View::server_path`).
    fn server_path(&self, rel: &str) -> (String, Vec<u64>) {
        let journal = &self.inner.journal;
        self.inner
            .view
            .lock()
            .server_path(rel, |s| journal.is_applied(s))
    }

    fn new_attrs(&self, type_bits: u32, mode: u32, size: u64) -> FileAttributes {
        let (uid, gid) = *self.inner.owner.lock();
        let t = now();
        FileAttributes {
            size: Some(size),
            uid: Some(uid),
            gid: Some(gid),
            permissions: Some(type_bits | (mode & 0o7777)),
            atime: Some(t),
            mtime: Some(t),
            ..FileAttributes::empty()
        }
    }

    /// Appends `op` once there is room, then lets `apply` record it in the view, under the
    /// view's lock (so the view and the journal see changes in one order). `check` runs
    /// under the same lock first and may refuse the change.
    async fn change(
        &self,
        check: impl FnOnce(&View) -> Result<Op, Error>,
        apply: impl FnOnce(&mut View, u64),
    ) -> Result<u64, Error> {
        let _turn = self.turn().await;
        self.change_in_turn(check, apply).await
    }

    /// This caller's turn to change the volume: held from before a change looks anything up
    /// until it is journaled, so changes keep the order they were asked for in (a write's
    /// first poll takes its place in line, as `RemoteFile::sends_now` promises).
    async fn turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.order.lock().await
    }

    /// `change`, with the turn already held.
    async fn change_in_turn(
        &self,
        check: impl FnOnce(&View) -> Result<Op, Error>,
        apply: impl FnOnce(&mut View, u64),
    ) -> Result<u64, Error> {
        self.inner.journal.wait_for_room().await;
        let mut view = self.inner.view.lock();
        let op = check(&view)?;
        let seq = self.inner.journal.append_now(op).map_err(journal_error)?;
        apply(&mut view, seq);
        Ok(seq)
    }

    pub async fn lstat(&self, full: &str) -> Result<FileAttributes, Error> {
        let rel = self.rel(full)?;
        match self.inner.view.lock().found(rel) {
            Found::Here(a, _) => return Ok(a.clone()),
            Found::Missing => return Err(no_such(full)),
            Found::Server => {}
        }
        let sftp = &self.inner.sftp;
        self.on_server(rel, |p| async move { sftp.lstat(&p).await })
            .await
    }

    /// stat(2), following a symlink: one the view holds is followed on the server once
    /// everything before is applied.
    pub async fn stat(&self, full: &str) -> Result<FileAttributes, Error> {
        let rel = self.rel(full)?;
        let symlink = match self.inner.view.lock().found(rel) {
            Found::Here(_, Kind::Symlink(_)) => true,
            Found::Here(a, _) => return Ok(a.clone()),
            Found::Missing => return Err(no_such(full)),
            Found::Server => false,
        };
        if symlink {
            self.settle().await?;
        }
        let sftp = &self.inner.sftp;
        self.on_server(rel, |p| async move { sftp.stat(&p).await })
            .await
    }

    /// Waits until every change made so far is on the server.
    async fn settle(&self) -> Result<(), Error> {
        let last = self.inner.journal.last_seq();
        self.inner.journal.wait_applied(last).await;
        Ok(())
    }

    /// fsync(2) and syncfs(2): returns once every change made so far is on the server (which
    /// covers the file's own).
    pub async fn sync(&self) -> Result<(), Error> {
        self.inner.journal.sync().await.map_err(journal_error)?;
        self.settle().await
    }

    pub async fn read_dir(&self, full: &str) -> Result<Vec<DirEntry>, Error> {
        let rel = self.rel(full)?;
        let (complete, here, additions) = {
            let v = self.inner.view.lock();
            match v.found(rel) {
                Found::Here(_, Kind::Dir { complete }) => (*complete, true, v.additions),
                Found::Here(..) => return Err(failure(full, "not a directory")),
                Found::Missing => return Err(no_such(full)),
                Found::Server => (false, false, v.additions),
            }
        };
        let mut entries = if complete {
            Vec::new()
        } else {
            let sftp = &self.inner.sftp;
            match self
                .on_server(rel, |p| async move { sftp.read_dir(&p).await })
                .await
            {
                Ok(e) => e,
                // Made here and not yet on the server.
                Err(e) if here && e.is_status(StatusCode::NoSuchFile) => Vec::new(),
                Err(e) => return Err(e),
            }
        };
        let mut view = self.inner.view.lock();
        if !complete && view.additions == additions && !view.fresh_for.is_zero() {
            let names: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
            let (bytes, ticket) = (
                names.iter().map(|n| n.len() + 32).sum(),
                view.listed.ticket(),
            );
            let listed = Listed {
                at: Instant::now(),
                names,
            };
            view.listed.insert(rel.to_string(), listed, bytes, ticket);
        }
        let mut ours: BTreeMap<&str, &Node> = view.children(rel).collect();
        entries.retain_mut(|e| match ours.remove(e.name.as_str()) {
            None => true,
            Some(Node {
                state: State::Gone, ..
            }) => false,
            Some(Node {
                state: State::Here { attrs, .. },
                ..
            }) => {
                e.attrs = attrs.clone();
                true
            }
        });
        for (name, n) in ours {
            if let State::Here { attrs, .. } = &n.state {
                entries.push(DirEntry {
                    name: name.to_string(),
                    attrs: attrs.clone(),
                    nlink: None,
                });
            }
        }
        Ok(entries)
    }

    /// Checks that `rel` may be made: its name is not taken in the view, its parent is a
    /// directory there (or the server's to say).
    fn may_create(view: &View, rel: &str, full: &str) -> Result<(), Error> {
        if let Found::Here(..) = view.found(rel) {
            return Err(failure(full, "exists"));
        }
        match parent_of(rel).map(|p| view.found(p)) {
            Some(Found::Missing) => Err(no_such(full)),
            Some(Found::Here(_, k)) if !matches!(k, Kind::Dir { .. }) => {
                Err(failure(full, "parent is not a directory"))
            }
            _ => Ok(()),
        }
    }

    pub async fn mkdir(&self, full: &str, mode: u32) -> Result<(), Error> {
        let rel = self.rel(full)?;
        let attrs = self.new_attrs(S_IFDIR, mode, 4096);
        self.change(
            |v| {
                Self::may_create(v, rel, full)?;
                Ok(Op::Mkdir {
                    path: rel.to_string(),
                    mode: mode & 0o7777,
                })
            },
            |v, seq| {
                v.remove_subtree(rel);
                v.set(
                    rel,
                    seq,
                    State::Here {
                        attrs,
                        kind: Kind::Dir { complete: true },
                    },
                );
                if let Some(p) = parent_of(rel) {
                    v.touch_dir(p);
                }
            },
        )
        .await
        .map(drop)
    }

    pub async fn symlink(&self, target: &str, full: &str) -> Result<(), Error> {
        let rel = self.rel(full)?;
        let attrs = self.new_attrs(S_IFLNK, 0o777, target.len() as u64);
        self.change(
            |v| {
                Self::may_create(v, rel, full)?;
                Ok(Op::Symlink {
                    target: target.to_string(),
                    path: rel.to_string(),
                })
            },
            |v, seq| {
                v.set(
                    rel,
                    seq,
                    State::Here {
                        attrs,
                        kind: Kind::Symlink(target.to_string()),
                    },
                );
            },
        )
        .await
        .map(drop)
    }

    pub async fn readlink(&self, full: &str) -> Result<String, Error> {
        let rel = self.rel(full)?;
        match self.inner.view.lock().found(rel) {
            Found::Here(_, Kind::Symlink(t)) => return Ok(t.clone()),
            Found::Here(..) => return Err(failure(full, "not a symlink")),
            Found::Missing => return Err(no_such(full)),
            Found::Server => {}
        }
        let sftp = &self.inner.sftp;
        self.on_server(rel, |p| async move { sftp.readlink(&p).await })
            .await
    }

    /// unlink(2) of a file or symlink.
    pub async fn remove(&self, full: &str) -> Result<(), Error> {
        let rel = self.rel(full)?;
        self.change(
            |v| match v.found(rel) {
                Found::Missing => Err(no_such(full)),
                Found::Here(_, Kind::Dir { .. }) => Err(failure(full, "is a directory")),
                _ => Ok(Op::Unlink {
                    path: rel.to_string(),
                }),
            },
            |v, seq| {
                v.set(rel, seq, State::Gone);
                if let Some(p) = parent_of(rel) {
                    v.touch_dir(p);
                }
            },
        )
        .await
        .map(drop)
    }

    /// True if the directory `rel` has no entry in the view over the server.
    async fn is_empty_dir(&self, full: &str) -> Result<bool, Error> {
        let entries = self.read_dir(full).await?;
        Ok(entries.is_empty())
    }

    pub async fn rmdir(&self, full: &str) -> Result<(), Error> {
        let rel = self.rel(full)?;
        if rel.is_empty() {
            return Err(failure(full, "the volume's root"));
        }
        match self.inner.view.lock().found(rel) {
            Found::Missing => return Err(no_such(full)),
            Found::Here(_, k) if !matches!(k, Kind::Dir { .. }) => {
                return Err(failure(full, "not a directory"));
            }
            _ => {}
        }
        let known_empty = self.inner.view.lock().known_empty(rel);
        if !known_empty && !self.is_empty_dir(full).await? {
            return Err(failure(full, "directory not empty"));
        }
        self.change(
            |v| {
                // Something may have been made in it since the look above.
                if v.children(rel)
                    .any(|(_, n)| matches!(n.state, State::Here { .. }))
                {
                    return Err(failure(full, "directory not empty"));
                }
                if let Found::Missing = v.found(rel) {
                    return Err(no_such(full));
                }
                Ok(Op::Rmdir {
                    path: rel.to_string(),
                })
            },
            |v, seq| {
                v.remove_subtree(rel);
                v.set(rel, seq, State::Gone);
                if let Some(p) = parent_of(rel) {
                    v.touch_dir(p);
                }
            },
        )
        .await
        .map(drop)
    }

    /// rename(2), replacing `to`.
    pub async fn rename(&self, from_full: &str, to_full: &str) -> Result<(), Error> {
        let from = self.rel(from_full)?;
        let to = self.rel(to_full)?;
        if from == to {
            return Ok(());
        }
        if from.is_empty() || below_or_at(to, from) {
            return Err(failure(to_full, "a directory cannot be moved into itself"));
        }
        // The types decide what may replace what; a server-only name's type costs a look.
        let type_of = |rel: &'_ str| -> Option<Option<u32>> {
            match self.inner.view.lock().found(rel) {
                Found::Here(a, _) => Some(Some(file_type(a))),
                Found::Missing => Some(None),
                Found::Server => None,
            }
        };
        let from_type = match type_of(from) {
            Some(Some(t)) => t,
            Some(None) => return Err(no_such(from_full)),
            None => file_type(&self.lstat(from_full).await?),
        };
        let to_type = match type_of(to) {
            Some(t) => t,
            None => match self.lstat(to_full).await {
                Ok(a) => Some(file_type(&a)),
                Err(e) if e.is_status(StatusCode::NoSuchFile) => None,
                Err(e) => return Err(e),
            },
        };
        match (from_type == S_IFDIR, to_type) {
            (true, Some(t)) if t != S_IFDIR => return Err(failure(to_full, "not a directory")),
            (false, Some(S_IFDIR)) => return Err(failure(to_full, "is a directory")),
            (true, Some(_)) if !self.is_empty_dir(to_full).await? => {
                return Err(failure(to_full, "directory not empty"));
            }
            _ => {}
        }
        self.change(
            |v| {
                if let Found::Missing = v.found(from) {
                    return Err(no_such(from_full));
                }
                if let Some(p) = parent_of(to)
                    && let Found::Missing = v.found(p)
                {
                    return Err(no_such(to_full));
                }
                Ok(Op::Rename {
                    from: from.to_string(),
                    to: to.to_string(),
                })
            },
            |v, seq| {
                let moving: Vec<(String, Node)> = v
                    .nodes
                    .range(from.to_string()..)
                    .take_while(|(k, _)| k.starts_with(from))
                    .filter(|(k, _)| below_or_at(k, from))
                    .map(|(k, n)| (k.clone(), n.clone()))
                    .collect();
                v.remove_subtree(to);
                v.remove_subtree(from);
                let held = !moving.is_empty();
                for (k, mut n) in moving {
                    if k == from {
                        n.seq = seq;
                    }
                    v.nodes.insert(rebase(&k, from, to), n);
                }
                v.set(from, seq, State::Gone);
                if let Some(p) = parent_of(to) {
                    v.added_in(p);
                    if !held {
                        // The server answers for the moved name (at `from` until the rename
                        // is applied).
                        v.incomplete(p);
                    }
                }
                v.moved.push(Moved {
                    seq,
                    from: from.to_string(),
                    to: to.to_string(),
                });
                for d in [parent_of(from), parent_of(to)].into_iter().flatten() {
                    v.touch_dir(d);
                }
            },
        )
        .await
        .map(drop)
    }

    /// link(2): waits until it is on the server (see the module comment).
    pub async fn hardlink(&self, existing_full: &str, new_full: &str) -> Result<(), Error> {
        let existing = self.rel(existing_full)?;
        let new = self.rel(new_full)?;
        let seq = self
            .change(
                |v| {
                    match v.found(existing) {
                        Found::Missing => return Err(no_such(existing_full)),
                        Found::Here(_, Kind::Dir { .. }) => {
                            return Err(failure(existing_full, "is a directory"));
                        }
                        _ => {}
                    }
                    Self::may_create(v, new, new_full)?;
                    Ok(Op::Link {
                        existing: existing.to_string(),
                        new: new.to_string(),
                    })
                },
                |v, _| {
                    v.remove_subtree(new);
                    if let Some(p) = parent_of(new) {
                        v.incomplete(p);
                        v.added_in(p);
                    }
                    // Writes through the other name change these bytes on the server, out
                    // of this name's sight: none of them is kept.
                    v.forget_cached(existing);
                    if let Some(Node {
                        state:
                            State::Here {
                                kind: Kind::File(c),
                                ..
                            },
                        ..
                    }) = v.nodes.get_mut(existing)
                    {
                        c.whole = false;
                    }
                },
            )
            .await?;
        self.inner.journal.wait_applied(seq).await;
        // The replayer skips a link it cannot make (a conflict): the server says.
        self.lstat(new_full).await.map(drop)
    }

    /// setstat by path (chmod, chown, utimes, truncate), never following a symlink for owner
    /// and times (the replayer's rule).
    pub async fn setstat(&self, full: &str, attrs: FileAttributes) -> Result<(), Error> {
        let rel = self.rel(full)?;
        self.set_attrs(rel, full, attrs).await
    }

    /// Makes sure the view holds `rel` (to change it there), from the server if need be.
    async fn current(&self, rel: &str, full: &str) -> Result<(), Error> {
        if !matches!(self.inner.view.lock().found(rel), Found::Server) {
            return Ok(());
        }
        let attrs = self.lstat(full).await?;
        self.hold(rel, attrs, full).await
    }

    /// Puts the server's `attrs` of `rel` in the view, if it does not hold `rel` yet.
    async fn hold(&self, rel: &str, attrs: FileAttributes, full: &str) -> Result<(), Error> {
        let kind = match file_type(&attrs) {
            S_IFDIR => Kind::Dir { complete: false },
            S_IFLNK => Kind::Symlink(self.readlink(full).await?),
            _ => Kind::File(Content::default()),
        };
        let mut v = self.inner.view.lock();
        if let Found::Server = v.found(rel) {
            // seq 0: forgotten at the next prune unless a change of its own follows.
            v.set(rel, 0, State::Here { attrs, kind });
        }
        Ok(())
    }

    async fn set_attrs(&self, rel: &str, full: &str, attrs: FileAttributes) -> Result<(), Error> {
        let _turn = self.turn().await;
        self.current(rel, full).await?;
        if let Some(size) = attrs.size {
            self.truncate_in_turn(rel, full, size).await?;
        }
        let change = Attrs {
            mode: attrs.permissions.map(|m| m & 0o7777),
            uid: attrs.uid,
            gid: attrs.gid,
            atime: attrs.atime,
            mtime: attrs.mtime,
        };
        if change.is_empty() {
            return Ok(());
        }
        self.change_in_turn(
            |v| match v.found(rel) {
                Found::Here(..) => Ok(Op::SetAttr {
                    path: rel.to_string(),
                    attrs: change,
                }),
                _ => Err(no_such(full)),
            },
            |v, seq| {
                if let Some(Node {
                    seq: s,
                    state: State::Here { attrs: a, .. },
                    ..
                }) = v.nodes.get_mut(rel)
                {
                    *s = seq;
                    if let Some(m) = change.mode {
                        a.permissions = Some(a.permissions.unwrap_or(0) & S_IFMT | m);
                    }
                    if change.uid.is_some() {
                        a.uid = change.uid;
                    }
                    if change.gid.is_some() {
                        a.gid = change.gid;
                    }
                    if change.atime.is_some() {
                        a.atime = change.atime;
                    }
                    if change.mtime.is_some() {
                        a.mtime = change.mtime;
                    }
                }
            },
        )
        .await
        .map(drop)
    }

    async fn truncate_in_turn(&self, rel: &str, full: &str, size: u64) -> Result<(), Error> {
        self.change_in_turn(
            |v| match v.found(rel) {
                Found::Here(_, Kind::File(_)) => Ok(Op::Truncate {
                    path: rel.to_string(),
                    size,
                }),
                Found::Here(..) => Err(failure(full, "not a regular file")),
                _ => Err(no_such(full)),
            },
            |v, seq| {
                v.forget_cached(rel);
                if let Some(Node {
                    seq: s,
                    state:
                        State::Here {
                            attrs,
                            kind: Kind::File(c),
                        },
                    ..
                }) = v.nodes.get_mut(rel)
                {
                    *s = seq;
                    let old = attrs.size.unwrap_or(0);
                    c.extents.truncate(size);
                    let from = c.zeros.map_or(old.min(size), |z| z.offset.min(size));
                    c.zeros = Some(Zeros { offset: from, seq });
                    attrs.size = Some(size);
                    attrs.mtime = Some(now());
                }
            },
        )
        .await
        .map(drop)
    }

    /// Opens `full` as open(2) with `flags` would (`attrs`: a create's permissions).
    pub async fn open(
        &self,
        full: &str,
        flags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<PendingFile, Error> {
        let rel = self.rel(full)?.to_string();
        let create = flags.contains(OpenFlags::CREATE);
        let exclusive = flags.contains(OpenFlags::EXCLUDE);
        let found = match self.inner.view.lock().found(&rel) {
            Found::Here(a, k) => Some(Some((a.clone(), matches!(k, Kind::File(_))))),
            Found::Missing => Some(None),
            Found::Server => None,
        };
        let existing = match found {
            Some(Some((a, regular))) => {
                if !regular {
                    return Err(failure(full, "not a regular file"));
                }
                Some(a)
            }
            Some(None) => None,
            // A name the kernel found missing is created without a look: see the module
            // comment. One to open as it is needs its attributes anyway.
            None if create => None,
            // Only to read: opened on the server now, as without write-back (its errors are
            // the open's, and the handle serves the reads).
            None if !flags.intersects(OpenFlags::WRITE | OpenFlags::TRUNCATE) => {
                let file = PendingFile::new(self, &rel, false);
                if self.inner.view.lock().kept(&rel).is_some() {
                    // Its reads are served from the kept bytes (or, once those are gone,
                    // by a handle opened then).
                    return Ok(file);
                }
                let (path, _) = self.server_path(&rel);
                file.open_server(&mut *file.server.lock().await, self.full(&path))
                    .await?;
                return Ok(file);
            }
            None => {
                let a = self.lstat(full).await?;
                if file_type(&a) != S_IFREG {
                    return Err(failure(full, "not a regular file"));
                }
                Some(a)
            }
        };
        let writes = flags.intersects(OpenFlags::WRITE | OpenFlags::TRUNCATE);
        match existing {
            Some(_) if create && exclusive => Err(failure(full, "exists")),
            Some(a) => {
                let _turn = self.turn().await;
                let file = PendingFile::new(self, &rel, writes);
                if writes {
                    self.hold(&rel, a, full).await?;
                    self.inner.view.lock().pin(&rel);
                }
                // Linux truncates on O_TRUNC even when opening read-only.
                if flags.contains(OpenFlags::TRUNCATE) {
                    self.truncate_in_turn(&rel, full, 0).await?;
                }
                Ok(file)
            }
            None if !create => Err(no_such(full)),
            None => {
                let mode = attrs.permissions.unwrap_or(0o644) & 0o7777;
                let new = self.new_attrs(S_IFREG, mode, 0);
                let rel2 = rel.clone();
                let _turn = self.turn().await;
                let file = PendingFile::new(self, &rel, writes);
                self.change_in_turn(
                    |v| {
                        Self::may_create(v, &rel2, full)?;
                        Ok(Op::Create {
                            path: rel2.clone(),
                            mode,
                            uid: attrs.uid,
                            gid: attrs.gid,
                        })
                    },
                    |v, seq| {
                        let mut a = new;
                        if attrs.uid.is_some() {
                            a.uid = attrs.uid;
                        }
                        if attrs.gid.is_some() {
                            a.gid = attrs.gid;
                        }
                        v.set(
                            &rel2,
                            seq,
                            State::Here {
                                attrs: a,
                                kind: Kind::File(Content {
                                    extents: Extents::default(),
                                    zeros: Some(Zeros { offset: 0, seq }),
                                    whole: true,
                                }),
                            },
                        );
                        if writes {
                            v.pin(&rel2);
                        }
                        if let Some(p) = parent_of(&rel2) {
                            v.touch_dir(p);
                        }
                    },
                )
                .await?;
                Ok(file)
            }
        }
    }

    async fn write(&self, rel: &str, offset: u64, data: &[u8]) -> Result<(), Error> {
        let full = self.full(rel);
        let data = Bytes::copy_from_slice(data);
        let _turn = self.turn().await;
        self.current(rel, &full).await?;
        self.change_in_turn(
            |v| match v.found(rel) {
                Found::Here(_, Kind::File(_)) => Ok(Op::Write {
                    path: rel.to_string(),
                    offset,
                    data: data.clone(),
                }),
                Found::Here(..) => Err(failure(&full, "not a regular file")),
                _ => Err(no_such(&full)),
            },
            |v, seq| {
                v.forget_cached(rel);
                if let Some(Node {
                    seq: s,
                    state:
                        State::Here {
                            attrs,
                            kind: Kind::File(c),
                        },
                    ..
                }) = v.nodes.get_mut(rel)
                {
                    *s = seq;
                    c.extents.write(offset, data.clone(), seq);
                    let end = offset + data.len() as u64;
                    attrs.size = Some(attrs.size.unwrap_or(0).max(end));
                    attrs.mtime = Some(now());
                }
            },
        )
        .await
        .map(drop)
    }

    /// What a read of `rel` at `offset` gets from the view (or its kept bytes): `None` when
    /// the view has no say (the server's bytes, all of them), else the pieces, gaps to be
    /// read from the server, and where the file ends.
    fn pieces(&self, rel: &str, offset: u64, len: u64) -> Option<(Vec<Piece>, Option<u64>, u64)> {
        let v = self.inner.view.lock();
        if let Some(data) = v.kept(rel) {
            // Bytes the server has, kept since they were applied: no gap to read.
            let from = offset.min(data.len() as u64) as usize;
            let to = offset.saturating_add(len).min(data.len() as u64) as usize;
            return Some((
                vec![Piece::Data(data.slice(from..to))],
                None,
                data.len() as u64,
            ));
        }
        let Found::Here(attrs, Kind::File(c)) = v.found(rel) else {
            return None;
        };
        let size = attrs.size.unwrap_or(0);
        if offset >= size {
            return Some((Vec::new(), None, size));
        }
        let len = len.min(size - offset);
        let zeros = c.zeros.map(|z| z.offset);
        Some((c.extents.read(offset, len), zeros, size))
    }
}

/// Learns who owns what the login creates, as the server sets it: the owner of the login's
/// home directory (sftp-server's starting directory), or the root's if that fails.
async fn learn_owner(inner: Weak<Inner>) {
    let Some(i) = inner.upgrade() else { return };
    let root = i.sftp.root().to_string();
    let sftp = i.sftp.clone();
    drop(i);
    let home = sftp.home().await.ok();
    let mut owner = None;
    for p in home.iter().map(String::as_str).chain([root.as_str()]) {
        if let Ok(a) = sftp.lstat(p).await
            && let (Some(u), Some(g)) = (a.uid, a.gid)
        {
            owner = Some((u, g));
            break;
        }
    }
    if let (Some(o), Some(i)) = (owner, inner.upgrade()) {
        *i.owner.lock() = o;
    }
}

/// Forgets what the replayer has applied, a little after each step of the checkpoint.
async fn prune(inner: Weak<Inner>) {
    let Some(mut rx) = inner.upgrade().map(|i| i.journal.watch_applied()) else {
        return;
    };
    while rx.changed().await.is_ok() {
        tokio::time::sleep(PRUNE_BATCH).await;
        let Some(i) = inner.upgrade() else { return };
        let through = *rx.borrow_and_update();
        i.view.lock().prune(through);
    }
}

/// An open file in write-back mode: writes go to the journal, reads see them over the server's
/// bytes (read through a handle opened when first needed).
pub struct PendingFile {
    overlay: Overlay,
    /// The file's volume path now (`None`: unlinked, no name).
    rel: Mutex<Option<String>>,
    /// Opened to write: its node is pinned in the view until it is dropped.
    pinned: bool,
    /// A handle on the server's file, and the server path it was opened by.
    server: tokio::sync::Mutex<Option<(String, Arc<File>)>>,
}

impl PendingFile {
    fn rel(&self) -> Result<String, Error> {
        self.rel
            .lock()
            .clone()
            .ok_or_else(|| failure("(unlinked)", "the file has no name any more"))
    }

    fn new(overlay: &Overlay, rel: &str, pinned: bool) -> PendingFile {
        PendingFile {
            overlay: overlay.clone(),
            rel: Mutex::new(Some(rel.to_string())),
            pinned,
            server: tokio::sync::Mutex::new(None),
        }
    }

    /// The file's new full path after a rename, or `None`.
    pub fn set_path(&self, full: Option<String>) {
        let rel = full.and_then(|f| self.overlay.rel(&f).ok().map(str::to_string));
        *self.rel.lock() = rel;
    }

    /// Server bytes of the file: by a handle opened on where the file is there now. The slot
    /// is held only to find or open the handle, never across a read: read-ahead asks for
    /// several chunks at once, and they must be in flight together.
    async fn server_read(&self, rel: &str, offset: u64, len: u32) -> Result<Vec<u8>, Error> {
        let mut tries = 0;
        loop {
            let (path, used) = self.overlay.server_path(rel);
            let full = self.overlay.full(&path);
            let file = {
                let mut slot = self.server.lock().await;
                if slot.as_ref().is_none_or(|(p, _)| *p != full) {
                    let opened = self.open_server(&mut slot, full).await;
                    if opened.is_err() {
                        tries += 1;
                        if tries >= MAPPING_TRIES
                            || !self.overlay.mapping_moved(&used, &opened).await
                        {
                            opened?;
                        }
                        continue;
                    }
                }
                Arc::clone(&slot.as_ref().expect("opened above").1)
            };
            let r = file.read(offset, len).await;
            tries += 1;
            if tries >= MAPPING_TRIES || !self.overlay.mapping_moved(&used, &r).await {
                return r;
            }
            let mut slot = self.server.lock().await;
            if slot.as_ref().is_some_and(|(_, f)| Arc::ptr_eq(f, &file)) {
                *slot = None;
                drop(slot);
                let _ = file.close().await;
            }
        }
    }

    /// (Re)opens the server handle in `slot` on `full`, read-only.
    async fn open_server(
        &self,
        slot: &mut Option<(String, Arc<File>)>,
        full: String,
    ) -> Result<(), Error> {
        if let Some((_, old)) = slot.take() {
            let _ = old.close().await;
        }
        let f = self
            .overlay
            .inner
            .sftp
            .open(&full, OpenFlags::READ, FileAttributes::empty())
            .await?;
        *slot = Some((full, Arc::new(f)));
        Ok(())
    }

    pub async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, Error> {
        let rel = self.rel()?;
        let Some((pieces, zeros, size)) = self.overlay.pieces(&rel, offset, u64::from(len)) else {
            return self.server_read(&rel, offset, len).await;
        };
        let mut out = Vec::with_capacity(pieces.len().max(1) * 4096);
        for p in pieces {
            match p {
                Piece::Data(d) => out.extend_from_slice(&d),
                Piece::Gap { offset: at, len: l } => {
                    let end = at + l;
                    // Below the zeroed part the server has the bytes; what it has not
                    // (a file shorter there until pending writes land) reads as zeros.
                    let server_end = zeros.map_or(end, |z| z.clamp(at, end));
                    if server_end > at {
                        let mut got = Vec::new();
                        while (got.len() as u64) < server_end - at {
                            let chunk = self
                                .server_read(
                                    &rel,
                                    at + got.len() as u64,
                                    (server_end - at - got.len() as u64) as u32,
                                )
                                .await;
                            match chunk {
                                Ok(c) if !c.is_empty() => got.extend_from_slice(&c),
                                Ok(_) => break,
                                Err(e) if e.is_status(StatusCode::Eof) => break,
                                Err(e) => return Err(e),
                            }
                        }
                        got.resize((server_end - at) as usize, 0);
                        out.extend_from_slice(&got);
                    }
                    out.resize(out.len() + (end - server_end) as usize, 0);
                }
            }
        }
        debug_assert!(offset + out.len() as u64 <= size);
        Ok(out)
    }

    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        let rel = self.rel()?;
        self.overlay.write(&rel, offset, data).await
    }

    pub async fn fstat(&self) -> Result<FileAttributes, Error> {
        let rel = self.rel()?;
        self.overlay.lstat(&self.overlay.full(&rel)).await
    }

    pub async fn fsetstat(&self, attrs: FileAttributes) -> Result<(), Error> {
        let rel = self.rel()?;
        let full = self.overlay.full(&rel);
        self.overlay.set_attrs(&rel, &full, attrs).await
    }

    pub async fn fsync(&self) -> Result<(), Error> {
        self.overlay.sync().await
    }

    pub async fn close(&self) -> Result<(), Error> {
        if let Some((_, f)) = self.server.lock().await.take() {
            let _ = f.close().await;
        }
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if self.pinned
            && let Some(rel) = self.rel.get_mut().as_deref()
        {
            self.overlay.inner.view.lock().unpin(rel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn here_dir(complete: bool) -> State {
        State::Here {
            attrs: FileAttributes::empty(),
            kind: Kind::Dir { complete },
        }
    }

    #[test]
    fn a_name_is_answered_by_the_nearest_held_ancestor() {
        let mut v = View::new(Duration::from_secs(20));
        v.set("new", 5, here_dir(true));
        v.set("old", 6, here_dir(false));
        v.set("gone", 7, State::Gone);
        assert!(matches!(v.found("new"), Found::Here(..)));
        assert!(matches!(v.found("new/x"), Found::Missing), "complete dir");
        assert!(matches!(v.found("old/x"), Found::Server));
        assert!(matches!(v.found("gone/x/y"), Found::Missing));
        assert!(matches!(v.found("other/x"), Found::Server));
        // A directory made here keeps what is below it until all of it is applied...
        v.set("new/f", 3, here_dir(false));
        v.prune(4);
        assert!(v.nodes.contains_key("new/f"));
        assert!(matches!(v.found("new/x"), Found::Missing));
        v.prune(5);
        assert!(!v.nodes.contains_key("new") && !v.nodes.contains_key("new/f"));
        // ...elsewhere a name goes alone, and its parent is the server's to answer for then.
        v.set("old/f", 3, State::Gone);
        v.prune(5);
        assert!(v.nodes.contains_key("old"));
        assert!(!v.nodes.contains_key("old/f"));
        assert!(matches!(v.found("old/f"), Found::Server));
    }

    #[test]
    fn pending_renames_map_names_back_to_where_the_server_has_them() {
        let mut v = View::new(Duration::from_secs(20));
        v.moved.push(Moved {
            seq: 3,
            from: "a".into(),
            to: "b".into(),
        });
        v.moved.push(Moved {
            seq: 4,
            from: "b/c".into(),
            to: "d".into(),
        });
        assert_eq!(v.server_path("d/x", |_| false).0, "a/c/x");
        assert_eq!(v.server_path("d/x", |_| false).1, vec![4, 3]);
        assert_eq!(v.server_path("b", |_| false).0, "a");
        assert_eq!(v.server_path("bx", |_| false).0, "bx");
        v.prune(3);
        assert_eq!(v.server_path("d/x", |_| false).0, "b/c/x");
    }

    #[test]
    fn children_are_the_direct_ones_only() {
        let mut v = View::new(Duration::from_secs(20));
        for k in ["a", "a/b", "a/b/c", "a/d", "ab", "z"] {
            v.set(k, 1, State::Gone);
        }
        let root: Vec<&str> = v.children("").map(|(n, _)| n).collect();
        assert_eq!(root, vec!["a", "ab", "z"]);
        let a: Vec<&str> = v.children("a").map(|(n, _)| n).collect();
        assert_eq!(a, vec!["b", "d"]);
    }

    /// A file created at `seq` with `data` written at `offset` by `seq + 1`.
    fn created(v: &mut View, rel: &str, seq: u64, offset: u64, data: &[u8]) {
        let mut c = Content {
            extents: Extents::default(),
            zeros: Some(Zeros { offset: 0, seq }),
            whole: true,
        };
        c.extents
            .write(offset, Bytes::copy_from_slice(data), seq + 1);
        let attrs = FileAttributes {
            size: Some(offset + data.len() as u64),
            permissions: Some(S_IFREG | 0o644),
            ..FileAttributes::empty()
        };
        v.set(
            rel,
            seq + 1,
            State::Here {
                attrs,
                kind: Kind::File(c),
            },
        );
    }

    #[test]
    fn a_file_created_here_is_kept_whole_once_applied_until_it_changes() {
        let mut v = View::new(Duration::from_secs(20));
        created(&mut v, "d/f", 1, 2, b"xy");
        v.prune(1);
        assert!(
            v.kept("d/f").is_none(),
            "not all of it is on the server yet"
        );
        v.prune(2);
        assert!(!v.nodes.contains_key("d/f"));
        assert_eq!(v.kept("d/f").unwrap().as_ref(), b"\0\0xy");
        // A change of the name, or of a directory above it, drops it.
        v.set("d/f", 3, State::Gone);
        assert!(v.kept("d/f").is_none());
        created(&mut v, "d/g", 4, 0, b"g");
        v.prune(5);
        assert!(v.kept("d/g").is_some());
        v.remove_subtree("d");
        assert!(v.kept("d/g").is_none());
    }

    #[test]
    fn only_small_files_are_kept_and_only_while_fresh() {
        let mut v = View::new(Duration::from_secs(20));
        created(&mut v, "big", 1, 0, &vec![7; KEPT_FILE_MAX as usize + 1]);
        v.prune(2);
        assert!(v.kept("big").is_none());
        let mut v = View::new(Duration::ZERO);
        created(&mut v, "f", 1, 0, b"f");
        v.prune(2);
        assert!(v.kept("f").is_none(), "a zero cache timeout keeps nothing");
    }

    #[test]
    fn a_file_from_the_server_is_never_kept() {
        let mut v = View::new(Duration::from_secs(20));
        created(&mut v, "f", 1, 0, b"f");
        if let Some(Node {
            state:
                State::Here {
                    kind: Kind::File(c),
                    ..
                },
            ..
        }) = v.nodes.get_mut("f")
        {
            c.whole = false;
        }
        v.prune(2);
        assert!(v.kept("f").is_none());
    }
}
