//! The FUSE filesystem: kernel requests in, SFTP calls out.
//!
//! The FUSE event loop never waits on the network: every request that needs the server becomes
//! a task on the tokio runtime, which replies when the answer arrives, so many requests are in
//! flight at once. What we know is cached for `cache_timeout` (attributes, and which names a
//! directory holds) and kept in step with every change made through this mount, so such a
//! change is visible through it at once.
//!
//! Round trips are what small-file work costs at real latencies, so some things are fetched
//! before they are asked for: the listings of subdirectories of a directory being read, and the
//! content (with an open handle) of the next small files of a directory being read file by
//! file. Anything fetched ahead is dropped by any change made through the mount (a removal
//! drops only what shows the removed name), and expires like the other caches (listings) or
//! after 2 s (file content).
//!
//! SFTP v3 reports most failures as a bare FAILURE; where POSIX callers care which errno they
//! get (EEXIST, ENOTEMPTY, ...), the failing call is followed by a look at the server's state.

mod attr;
mod file;
mod inodes;

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, MountOption, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, SessionACL, TimeOrNow, WriteFlags,
};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::options::MountOptions;
use crate::sftp::{DirEntry, Error, FileAttributes, OpenFlags, Sftp, StatusCode};

use attr::{Creator, Presentation, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, S_ISGID};
use file::{InodeIo, OpenFile, WRITE_BEHIND_BYTES};
use inodes::{Inodes, child_path};

/// Longest file name most servers accept; longer ones fail locally with ENAMETOOLONG instead
/// of a vague FAILURE from the server.
const NAME_MAX: usize = 255;

/// Largest FUSE write we ask for: fewer, bigger requests on sequential writes.
const MAX_WRITE: u32 = 1024 * 1024;

/// Longest time a listing answers "no such name" (see `Inner::neg_ttl`).
const NEGATIVE_TTL: Duration = Duration::from_secs(1);

/// Directory listings fetched ahead at once, mount-wide.
const PREFETCH_PARALLEL: usize = 16;
/// Most listings kept fetched ahead and not yet used.
const PREFETCH_MAX: usize = 512;
/// How many levels below a directory being read are listed ahead (`ls -R`, `find`, `du`
/// descend next; listing a whole level at once turns a round trip per directory into one per
/// level).
const PREFETCH_DEPTH: u32 = 2;

/// Small files whose content is read ahead when a file of their directory is opened for
/// reading: the next ones in listing order, each opened and read in parallel, so a reader going
/// through a directory (`cat *`, `find -exec cat`, `grep -r`, backups) finds them open and
/// loaded (an open plus a read are two round trips that cannot be pipelined otherwise).
const PRELOAD_AHEAD: usize = 8;
/// Largest file read ahead that way.
const PRELOAD_MAX_SIZE: u64 = 64 * 1024;
/// Most files read ahead and not used yet (each holds a remote handle).
const PRELOAD_MAX: usize = 32;
/// How long content read ahead is served: an open shortly after.
const PRELOAD_FRESH: Duration = Duration::from_secs(2);

/// A small file opened and read ahead of its open (see `PRELOAD_AHEAD`).
struct Preloaded {
    file: Mutex<Option<crate::sftp::File>>,
    data: Arc<Vec<u8>>,
}

struct Preload {
    ready: Shared<BoxFuture<'static, Option<Arc<Preloaded>>>>,
    mutations: u64,
    valid_until: Instant,
}

/// A directory listing and when it was fetched.
pub(crate) struct Listing {
    entries: Vec<DirEntry>,
    fetched: Instant,
}

type SharedListing = Shared<BoxFuture<'static, Option<Arc<Listing>>>>;

/// A listing being (or already) fetched ahead of use.
struct Prefetch {
    listing: SharedListing,
    /// `Inner::mutations` when it started: a change made since may not be in it.
    mutations: u64,
    valid_until: Instant,
}

/// The mount options the kernel sees for this filesystem.
pub fn fuse_config(opts: &MountOptions) -> fuser::Config {
    let mut config = fuser::Config::default();
    let mut mo = vec![
        MountOption::FSName(opts.remote.to_string()),
        MountOption::Subtype("sshfs".to_string()),
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    mo.push(if opts.read_only {
        MountOption::RO
    } else {
        MountOption::RW
    });
    if opts.default_permissions {
        mo.push(MountOption::DefaultPermissions);
    }
    config.mount_options = mo;
    if opts.allow_other {
        config.acl = SessionACL::All;
    }
    config
}

/// The filesystem handed to `fuser::Session`.
pub struct SshFs {
    inner: Arc<Inner>,
}

struct Inner {
    sftp: Sftp,
    rt: Handle,
    present: Presentation,
    follow_symlinks: bool,
    strict_chown: bool,
    /// Attribute and entry lifetime; zero with `cache=no`.
    ttl: Duration,
    nodes: Mutex<Inodes>,
    files: Mutex<Files>,
    /// How long a listing's word that a name does not exist is trusted: short, since files
    /// other clients create on the server should show up soon (sshfs caches no negatives).
    neg_ttl: Duration,
    /// Open directories: the listing taken at the first readdir (offset 0).
    dirs: Mutex<HashMap<u64, Option<Arc<Listing>>>>,
    /// Directory listings fetched ahead of use (see `prefetch_children`), by path.
    prefetched: Mutex<HashMap<String, Prefetch>>,
    /// Small files opened and read ahead, by path (see `PRELOAD_AHEAD`).
    preloads: Mutex<HashMap<String, Preload>>,
    /// The latest listings by directory path, for the order files are read ahead in.
    recent: Mutex<HashMap<String, Arc<Listing>>>,
    /// Per directory (of those in `recent`), the listing position of the file opened last.
    last_opened: Mutex<HashMap<String, usize>>,
    /// Bounds how many listings are fetched ahead at once.
    prefetch_slots: Arc<Semaphore>,
    /// Bumped by every change made through the mount: anything fetched ahead before a change
    /// is not served after it.
    mutations: AtomicU64,
    next_fh: AtomicU64,
    /// Bytes of write-behind in flight, mount-wide.
    budget: Arc<Semaphore>,
    creator: Mutex<Creator>,
}

#[derive(Default)]
struct Files {
    open: HashMap<u64, Arc<OpenFile>>,
    /// Per inode: the I/O state its handles share, and how many handles are open.
    io: HashMap<u64, (Arc<InodeIo>, usize)>,
}

fn errno(e: &Error) -> Errno {
    Errno::from_i32(e.errno())
}

/// Data writes failing with a bare FAILURE are most often a full disk or quota; EPERM (what
/// FAILURE means elsewhere) would mislead there.
fn io_errno(e: &Error) -> Errno {
    if e.is_status(StatusCode::Failure) {
        Errno::EIO
    } else {
        errno(e)
    }
}

fn is_enoent(e: &Error) -> bool {
    e.errno() == libc::ENOENT
}

fn name_str(name: &OsStr) -> Result<&str, Errno> {
    // The SFTP client speaks UTF-8 paths only.
    let s = name.to_str().ok_or(Errno::EINVAL)?;
    if s.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(s)
}

fn resolve_time(t: TimeOrNow) -> u32 {
    match t {
        TimeOrNow::SpecificTime(t) => attr::to_secs(t),
        TimeOrNow::Now => attr::to_secs(SystemTime::now()),
    }
}

impl SshFs {
    pub fn new(sftp: Sftp, opts: &MountOptions, rt: Handle) -> SshFs {
        let ttl = if opts.cache {
            opts.cache_timeout
        } else {
            Duration::ZERO
        };
        SshFs {
            inner: Arc::new(Inner {
                sftp,
                rt,
                present: Presentation {
                    uid: opts.uid,
                    gid: opts.gid,
                    umask: opts.umask.unwrap_or(0),
                },
                follow_symlinks: opts.follow_symlinks,
                strict_chown: opts.strict_chown,
                ttl,
                nodes: Mutex::new(Inodes::new()),
                files: Mutex::new(Files::default()),
                neg_ttl: ttl.min(NEGATIVE_TTL),
                dirs: Mutex::new(HashMap::new()),
                prefetched: Mutex::new(HashMap::new()),
                preloads: Mutex::new(HashMap::new()),
                recent: Mutex::new(HashMap::new()),
                last_opened: Mutex::new(HashMap::new()),
                prefetch_slots: Arc::new(Semaphore::new(PREFETCH_PARALLEL)),
                mutations: AtomicU64::new(0),
                next_fh: AtomicU64::new(1),
                budget: Arc::new(Semaphore::new(WRITE_BEHIND_BYTES)),
                creator: Mutex::new(Creator::default()),
            }),
        }
    }

    /// Runs `f` as a task: the FUSE loop goes straight back to reading requests.
    fn spawn<F, Fut>(&self, f: F)
    where
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let fut = f(Arc::clone(&self.inner));
        self.inner.rt.spawn(fut);
    }
}

/// A reply to a lookup-like request: an entry, or (with caching) a cached "no such name".
enum Entry {
    Found(FileAttr),
    Absent,
}

impl Inner {
    fn full(&self, rel: &str) -> String {
        let root = self.sftp.root();
        if rel.is_empty() {
            root.to_string()
        } else if root.ends_with('/') {
            format!("{root}{rel}")
        } else {
            format!("{root}/{rel}")
        }
    }

    /// The errno for a failed data write: a bare FAILURE on a full disk becomes ENOSPC.
    async fn write_errno(&self, e: &Error) -> Errno {
        if e.is_status(StatusCode::Failure)
            && let Ok(s) = self.sftp.statvfs(self.sftp.root()).await
            && s.blocks_avail == 0
        {
            return Errno::ENOSPC;
        }
        io_errno(e)
    }

    fn caching(&self) -> bool {
        !self.ttl.is_zero()
    }

    fn fresh_until(&self) -> Option<Instant> {
        self.caching().then(|| Instant::now() + self.ttl)
    }

    fn path_of(&self, ino: u64) -> Result<String, Errno> {
        self.nodes.lock().unwrap().path(ino).ok_or(Errno::ENOENT)
    }

    /// (parent path, name, child path) for a name in directory `parent`.
    fn child_of(&self, parent: u64, name: &OsStr) -> Result<(String, String, String), Errno> {
        let name = name_str(name)?;
        let ppath = self.path_of(parent)?;
        let cpath = child_path(&ppath, name);
        Ok((ppath, name.to_string(), cpath))
    }

    fn file_attr(&self, ino: u64, a: &FileAttributes) -> FileAttr {
        let (floor, nlink) = self
            .nodes
            .lock()
            .unwrap()
            .get(ino)
            .map_or((None, None), |n| (n.ctime_floor, n.nlink));
        attr::to_file_attr(ino, a, &self.present, floor, nlink)
    }

    fn handle(&self, fh: u64) -> Result<Arc<OpenFile>, Errno> {
        self.files
            .lock()
            .unwrap()
            .open
            .get(&fh)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    fn io_of(&self, ino: u64) -> Option<Arc<InodeIo>> {
        self.files
            .lock()
            .unwrap()
            .io
            .get(&ino)
            .map(|(io, _)| Arc::clone(io))
    }

    /// Lets queued writes and deferred metadata of `ino` reach the server before its
    /// attributes are read from there. A failure is kept for the next flush.
    async fn settle(&self, ino: u64) {
        if let Some(io) = self.io_of(ino)
            && io.has_pending()
            && let Err(e) = io.settle().await
        {
            io.keep_error(e);
        }
    }

    /// An open handle of `ino` still in use, to defer attribute changes to. A handle that was
    /// flushed and not written since is most likely closed already: the kernel sends RELEASE
    /// some time after close(2) returns, and a utimensat by path made after close(2) must reach
    /// the server before it returns, not with that late release.
    fn active_handle(&self, ino: u64) -> Option<Arc<OpenFile>> {
        self.files
            .lock()
            .unwrap()
            .open
            .values()
            .find(|of| of.ino == ino && !of.flushed())
            .cloned()
    }

    fn register(&self, ino: u64, make: impl FnOnce(Arc<InodeIo>) -> OpenFile) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let mut files = self.files.lock().unwrap();
        let entry = files.io.entry(ino).or_default();
        entry.1 += 1;
        let of = make(Arc::clone(&entry.0));
        files.open.insert(fh, Arc::new(of));
        fh
    }

    fn unregister(&self, fh: u64) -> Option<Arc<OpenFile>> {
        let mut files = self.files.lock().unwrap();
        let of = files.open.remove(&fh)?;
        if let Some(entry) = files.io.get_mut(&of.ino) {
            entry.1 -= 1;
            if entry.1 == 0 {
                files.io.remove(&of.ino);
            }
        }
        Some(of)
    }

    /// The attributes of a path as shown: lstat, or stat with `follow_symlinks` (a dangling
    /// link still shows as a link).
    async fn stat_remote(&self, rel: &str) -> Result<FileAttributes, Error> {
        let full = self.full(rel);
        let a = self.sftp.lstat(&full).await?;
        if self.follow_symlinks && attr::is_symlink(&a) {
            return Ok(self.sftp.stat(&full).await.unwrap_or(a));
        }
        Ok(a)
    }

    async fn exists(&self, rel: &str) -> bool {
        self.sftp.lstat(&self.full(rel)).await.is_ok()
    }

    /// Records a freshly learned entry, counting the kernel's lookup.
    fn remember(&self, path: &str, a: FileAttributes) -> FileAttr {
        let ino = self
            .nodes
            .lock()
            .unwrap()
            .looked_up(path, a.clone(), self.fresh_until());
        self.file_attr(ino, &a)
    }

    fn parent_attrs(&self, parent: u64) -> Option<FileAttributes> {
        self.nodes.lock().unwrap().get(parent)?.attrs.clone()
    }

    fn touch_ctime(&self, ino: u64) {
        if let Some(n) = self.nodes.lock().unwrap().get_mut(ino) {
            n.ctime_floor = Some(SystemTime::now());
        }
    }

    // ---- requests ----

    async fn lookup(&self, parent: u64, name: &OsStr) -> Result<Entry, Errno> {
        let (_, name, cpath) = self.child_of(parent, name)?;
        let existing = {
            let mut t = self.nodes.lock().unwrap();
            let now = Instant::now();
            if self.caching() {
                if let Some(ino) = t.ino_of(&cpath)
                    && let Some(node) = t.get_mut(ino)
                    && let Some(a) = node.fresh_attrs(now).cloned()
                {
                    node.nlookup += 1;
                    drop(t);
                    return Ok(Entry::Found(self.file_attr(ino, &a)));
                }
                if t.known_absent(parent, &name, now) {
                    return Ok(Entry::Absent);
                }
            }
            t.ino_of(&cpath)
        };
        if let Some(ino) = existing {
            self.settle(ino).await;
        }
        match self.stat_remote(&cpath).await {
            Ok(a) => Ok(Entry::Found(self.remember(&cpath, a))),
            Err(e) if is_enoent(&e) => Ok(Entry::Absent),
            Err(e) => Err(errno(&e)),
        }
    }

    /// Current attributes, from the path if it still has one, else from an open handle.
    async fn fetch(
        &self,
        path: Option<&str>,
        handle: Option<&Arc<OpenFile>>,
    ) -> Result<FileAttributes, Errno> {
        if let Some(p) = path {
            match self.stat_remote(p).await {
                Ok(a) => return Ok(a),
                Err(e) if handle.is_none() || !is_enoent(&e) => return Err(errno(&e)),
                Err(_) => {}
            }
        }
        match handle {
            Some(h) => h.file.fstat().await.map_err(|e| errno(&e)),
            None => Err(Errno::ENOENT),
        }
    }

    async fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<FileAttr, Errno> {
        let path = {
            let t = self.nodes.lock().unwrap();
            let node = t.get(ino).ok_or(Errno::ENOENT)?;
            if let Some(a) = node.fresh_attrs(Instant::now()) {
                let a = a.clone();
                drop(t);
                return Ok(self.file_attr(ino, &a));
            }
            node.path.clone()
        };
        self.settle(ino).await;
        let handle = fh.and_then(|fh| self.handle(fh).ok());
        let a = self.fetch(path.as_deref(), handle.as_ref()).await?;
        if let Some(n) = self.nodes.lock().unwrap().get_mut(ino) {
            n.attrs = Some(a.clone());
            n.fresh_until = self.fresh_until();
        }
        Ok(self.file_attr(ino, &a))
    }

    #[allow(clippy::too_many_arguments)]
    async fn setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<u64>,
    ) -> Result<FileAttr, Errno> {
        let (path, base, base_fresh) = {
            let t = self.nodes.lock().unwrap();
            let node = t.get(ino).ok_or(Errno::ENOENT)?;
            (
                node.path.clone(),
                node.attrs.clone(),
                node.fresh_attrs(Instant::now()).is_some(),
            )
        };
        let handle = fh.and_then(|fh| self.handle(fh).ok());
        if path.is_none() && handle.is_none() {
            return Err(Errno::ENOENT);
        }
        // A chown to the owner it already has (tar and cp -p do this for every file) is a
        // no-op; the same goes for half of a pair where the other half is not asked for.
        let (mut uid, mut gid) = (uid, gid);
        if base_fresh && let Some(b) = &base {
            if uid.or(b.uid) == b.uid && gid.or(b.gid) == b.gid {
                uid = None;
                gid = None;
            }
            if mode.is_none()
                && size.is_none()
                && atime.is_none()
                && mtime.is_none()
                && uid.is_none()
            {
                let b = b.clone();
                return Ok(self.file_attr(ino, &b));
            }
        }
        let io = self.io_of(ino);
        // Mode and times of an open file (with what we know of it) are sent later, together
        // and after its queued writes.
        let deferrable = size.is_none() && uid.is_none() && gid.is_none() && self.caching();
        if deferrable
            && let (Some(io), Some(base)) = (&io, &base)
            && let Some(of) = self.active_handle(ino)
        {
            let mut set = FileAttributes {
                permissions: mode.map(|m| m & 0o7777),
                ..Default::default()
            };
            if atime.is_some() || mtime.is_some() {
                set.atime = atime.map(resolve_time).or(base.atime);
                set.mtime = mtime.map(resolve_time).or(base.mtime);
            }
            io.defer(set.clone(), Arc::clone(&of.file));
            let mut a = base.clone();
            if let Some(p) = set.permissions {
                a.permissions = Some((attr::mode_of(base) & S_IFMT) | p);
            }
            if set.atime.is_some() {
                a.atime = set.atime;
                a.mtime = set.mtime;
            }
            if let Some(n) = self.nodes.lock().unwrap().get_mut(ino) {
                n.attrs = Some(a.clone());
                n.fresh_until = self.fresh_until();
                n.ctime_floor = Some(SystemTime::now());
            }
            return Ok(self.file_attr(ino, &a));
        }
        // Queued writes must not land after a truncate or overwrite the mtime we set.
        if let Some(io) = &io {
            io.settle().await.map_err(|e| errno(&e))?;
            if size.is_some() {
                io.invalidate();
            }
        }
        // SFTP sets uid and gid together, and atime and mtime together: a request for one of
        // a pair needs the current value of the other.
        let need_base = uid.is_some() != gid.is_some() || atime.is_some() != mtime.is_some();
        let (base, base_fresh) = match base {
            Some(b) if base_fresh || !need_base => (b, base_fresh),
            _ if need_base => (self.fetch(path.as_deref(), handle.as_ref()).await?, true),
            _ => (FileAttributes::default(), false),
        };

        let mut set = FileAttributes {
            size,
            permissions: mode.map(|m| m & 0o7777),
            ..Default::default()
        };
        let want_uid = uid.or(base.uid);
        let want_gid = gid.or(base.gid);
        let chown = (uid.is_some() || gid.is_some())
            && !(base_fresh && want_uid == base.uid && want_gid == base.gid);
        if chown {
            set.uid = want_uid;
            set.gid = want_gid;
        }
        if atime.is_some() || mtime.is_some() {
            set.atime = atime.map(resolve_time).or(base.atime);
            set.mtime = mtime.map(resolve_time).or(base.mtime);
        }

        let mut chown_ignored = false;
        let has_any = |s: &FileAttributes| {
            s.size.is_some()
                || s.permissions.is_some()
                || s.uid.is_some()
                || s.atime.is_some()
                || s.mtime.is_some()
        };
        if has_any(&set) {
            let apply = |s: FileAttributes| {
                let handle = handle.clone();
                let full = path.as_deref().map(|p| self.full(p));
                async move {
                    match (&handle, full) {
                        // Through the handle when we have one: works for unlinked files and
                        // is what ftruncate means.
                        (Some(h), _) => h.file.fsetstat(s).await,
                        (None, Some(full)) => self.sftp.setstat(&full, s).await,
                        (None, None) => Err(Error::Status {
                            code: StatusCode::NoSuchFile,
                            message: String::new(),
                        }),
                    }
                }
            };
            if let Err(e) = apply(set.clone()).await {
                let refused = matches!(e.errno(), libc::EPERM | libc::EACCES);
                if !(chown && refused && !self.strict_chown) {
                    return Err(errno(&e));
                }
                // A login that may not give files away (the usual case) still lets Docker's
                // copy-up "chown" succeed: the files keep the owner the server gave them.
                tracing::debug!(ino, "server refused chown; ignored (strict_chown is off)");
                chown_ignored = true;
                set.uid = None;
                set.gid = None;
                if has_any(&set) {
                    apply(set.clone()).await.map_err(|e| errno(&e))?;
                }
            }
        }

        let ids_changed = chown && !chown_ignored;
        let new = if base_fresh && !ids_changed && self.caching() {
            let mut a = base.clone();
            if let Some(s) = set.size {
                a.size = Some(s);
                // Truncation updates the mtime on the server.
                a.mtime = Some(attr::to_secs(SystemTime::now()));
            }
            if let Some(p) = set.permissions {
                a.permissions = Some((attr::mode_of(&base) & S_IFMT) | p);
            }
            if set.atime.is_some() {
                a.atime = set.atime;
                a.mtime = set.mtime;
            }
            a
        } else {
            self.fetch(path.as_deref(), handle.as_ref()).await?
        };
        if let Some(s) = size {
            if let Some(io) = &io {
                io.truncated(s);
            }
            for of in self.files.lock().unwrap().open.values() {
                if of.ino == ino {
                    of.set_size_hint(s);
                }
            }
        }
        if let Some(n) = self.nodes.lock().unwrap().get_mut(ino) {
            n.attrs = Some(new.clone());
            n.fresh_until = self.fresh_until();
            n.ctime_floor = Some(SystemTime::now());
        }
        Ok(self.file_attr(ino, &new))
    }

    async fn readlink(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let path = self.path_of(ino)?;
        let target = self
            .sftp
            .readlink(&self.full(&path))
            .await
            .map_err(|e| errno(&e))?;
        Ok(target.into_bytes())
    }

    /// Attributes for a new object: predicted from what earlier creations taught us when
    /// possible (no round trip), else fetched — and then learned from. Also forces the exact
    /// requested permissions when the server's own umask removed some (local semantics: the
    /// caller's umask has already been applied by the kernel).
    async fn new_object_attrs(
        &self,
        parent: u64,
        rel: &str,
        kind: u32,
        perm: u32,
        handle: Option<&crate::sftp::File>,
    ) -> Result<FileAttributes, Errno> {
        let parent_attrs = self.parent_attrs(parent);
        let predicted =
            self.creator
                .lock()
                .unwrap()
                .predict(perm, parent_attrs.as_ref(), kind == S_IFDIR);
        let full = self.full(rel);
        let fix = |p: u32| {
            let full = full.clone();
            async move {
                let s = FileAttributes {
                    permissions: Some(p),
                    ..Default::default()
                };
                match handle {
                    Some(f) => f.fsetstat(s).await,
                    None => self.sftp.setstat(&full, s).await,
                }
                .map_err(|e| errno(&e))
            }
        };
        if let Some((got, uid, gid)) = predicted {
            if got != perm {
                fix(perm).await?;
            }
            let size = if kind == S_IFDIR { 4096 } else { 0 };
            return Ok(attr::created(kind, perm, uid, gid, size));
        }
        let mut a = match handle {
            Some(f) => f.fstat().await,
            None => self.sftp.lstat(&full).await,
        }
        .map_err(|e| errno(&e))?;
        let parent_sgid = parent_attrs
            .as_ref()
            .is_none_or(|p| attr::mode_of(p) & S_ISGID != 0);
        if !parent_sgid {
            self.creator.lock().unwrap().learn(perm, &a);
        }
        let mode = attr::mode_of(&a);
        let inherited = if kind == S_IFDIR { mode & S_ISGID } else { 0 };
        if (mode & 0o777) != (perm & 0o777) || (perm & 0o7000 & !mode) != 0 {
            let want = perm | inherited;
            fix(want).await?;
            a.permissions = Some((mode & S_IFMT) | want);
        }
        Ok(a)
    }

    async fn mkdir(&self, parent: u64, name: &OsStr, mode: u32) -> Result<FileAttr, Errno> {
        let (ppath, name, cpath) = self.child_of(parent, name)?;
        let perm = mode & 0o7777;
        if let Err(e) = self.sftp.mkdir(&self.full(&cpath), perm).await {
            if e.is_status(StatusCode::Failure) && self.exists(&cpath).await {
                return Err(Errno::EEXIST);
            }
            return Err(errno(&e));
        }
        self.nodes
            .lock()
            .unwrap()
            .dir_changed(&ppath, Some(&name), None);
        let a = self
            .new_object_attrs(parent, &cpath, S_IFDIR, perm, None)
            .await?;
        let fa = self.remember(&cpath, a);
        // A directory we just made is empty: lookups in it need not ask the server.
        if let Some(until) = self.fresh_until()
            && let Some(n) = self.nodes.lock().unwrap().get_mut(fa.ino.0)
        {
            n.listing = Some((HashSet::new(), until));
        }
        Ok(fa)
    }

    async fn mknod(&self, parent: u64, name: &OsStr, mode: u32) -> Result<FileAttr, Errno> {
        if mode & S_IFMT != S_IFREG && mode & S_IFMT != 0 {
            // SFTP can create regular files, directories and symlinks only.
            return Err(Errno::EPERM);
        }
        let (ppath, name, cpath) = self.child_of(parent, name)?;
        let perm = mode & 0o7777;
        let attrs = FileAttributes {
            permissions: Some(perm),
            ..Default::default()
        };
        let flags = OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::WRITE;
        let f = match self.sftp.open(&self.full(&cpath), flags, attrs).await {
            Ok(f) => f,
            Err(e) if e.is_status(StatusCode::Failure) && self.exists(&cpath).await => {
                return Err(Errno::EEXIST);
            }
            Err(e) => return Err(errno(&e)),
        };
        self.nodes
            .lock()
            .unwrap()
            .dir_changed(&ppath, Some(&name), None);
        let a = self
            .new_object_attrs(parent, &cpath, S_IFREG, perm, Some(&f))
            .await;
        if let Err(e) = f.close().await {
            tracing::debug!("close after mknod: {e}");
        }
        Ok(self.remember(&cpath, a?))
    }

    async fn unlink(&self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let (ppath, name, cpath) = self.child_of(parent, name)?;
        self.removing(&ppath, &cpath);
        let removed = self.sftp.remove(&self.full(&cpath)).await;
        self.removing(&ppath, &cpath);
        if let Err(e) = removed {
            if e.is_status(StatusCode::Failure)
                && let Ok(a) = self.sftp.lstat(&self.full(&cpath)).await
                && attr::is_dir(&a)
            {
                return Err(Errno::EISDIR);
            }
            return Err(errno(&e));
        }
        let mut t = self.nodes.lock().unwrap();
        t.detach(&cpath);
        t.dir_changed(&ppath, None, Some(&name));
        Ok(())
    }

    async fn rmdir(&self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let (ppath, name, cpath) = self.child_of(parent, name)?;
        let full = self.full(&cpath);
        self.removing(&ppath, &cpath);
        let removed = self.sftp.rmdir(&full).await;
        self.removing(&ppath, &cpath);
        if let Err(e) = removed {
            if e.is_status(StatusCode::Failure) {
                match self.sftp.read_dir(&full).await {
                    Ok(list) if !list.is_empty() => return Err(Errno::ENOTEMPTY),
                    Err(e2) if e2.is_status(StatusCode::Failure) => {
                        // Not listable as a directory: probably not one.
                        if let Ok(a) = self.sftp.lstat(&full).await
                            && !attr::is_dir(&a)
                        {
                            return Err(Errno::ENOTDIR);
                        }
                    }
                    _ => {}
                }
            }
            return Err(errno(&e));
        }
        let mut t = self.nodes.lock().unwrap();
        t.detach(&cpath);
        t.dir_changed(&ppath, None, Some(&name));
        Ok(())
    }

    async fn symlink(&self, parent: u64, name: &OsStr, target: &Path) -> Result<FileAttr, Errno> {
        let (ppath, name, cpath) = self.child_of(parent, name)?;
        let target = target.to_str().ok_or(Errno::EINVAL)?;
        if let Err(e) = self.sftp.symlink(target, &self.full(&cpath)).await {
            if e.is_status(StatusCode::Failure) && self.exists(&cpath).await {
                return Err(Errno::EEXIST);
            }
            return Err(errno(&e));
        }
        self.nodes
            .lock()
            .unwrap()
            .dir_changed(&ppath, Some(&name), None);
        let parent_attrs = self.parent_attrs(parent);
        // Symlink permissions are always 0777; only the owner needs predicting.
        let predicted = self
            .creator
            .lock()
            .unwrap()
            .predict(0o644, parent_attrs.as_ref(), false);
        let a = match predicted {
            Some((_, uid, gid)) => attr::created(S_IFLNK, 0o777, uid, gid, target.len() as u64),
            None => self
                .sftp
                .lstat(&self.full(&cpath))
                .await
                .map_err(|e| errno(&e))?,
        };
        Ok(self.remember(&cpath, a))
    }

    async fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            // Atomic exchange and whiteouts have no SFTP equivalent.
            return Err(Errno::EINVAL);
        }
        let (ppath, name, from) = self.child_of(parent, name)?;
        let (npath, newname, to) = self.child_of(newparent, newname)?;
        let (ffrom, fto) = (self.full(&from), self.full(&to));
        if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            match self.sftp.lstat(&fto).await {
                Ok(_) => return Err(Errno::EEXIST),
                Err(e) if is_enoent(&e) => {}
                Err(e) => return Err(errno(&e)),
            }
        }
        if let Err(e) = self.sftp.rename(&ffrom, &fto).await {
            if e.is_status(StatusCode::Failure) {
                let (src, dst) = tokio::join!(self.sftp.lstat(&ffrom), self.sftp.lstat(&fto));
                if let (Ok(src), Ok(dst)) = (src, dst) {
                    match (attr::is_dir(&src), attr::is_dir(&dst)) {
                        (true, true) => {
                            if matches!(self.sftp.read_dir(&fto).await, Ok(l) if !l.is_empty()) {
                                return Err(Errno::ENOTEMPTY);
                            }
                        }
                        (true, false) => return Err(Errno::ENOTDIR),
                        (false, true) => return Err(Errno::EISDIR),
                        (false, false) => {}
                    }
                }
            }
            return Err(errno(&e));
        }
        let mut t = self.nodes.lock().unwrap();
        t.rename(&from, &to);
        if let Some(n) = t.node_at(&to) {
            n.ctime_floor = Some(SystemTime::now());
        }
        t.dir_changed(&ppath, None, Some(&name));
        t.dir_changed(&npath, Some(&newname), None);
        Ok(())
    }

    async fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<FileAttr, Errno> {
        let from = self.path_of(ino)?;
        let (npath, newname, to) = self.child_of(newparent, newname)?;
        if let Err(e) = self.sftp.hardlink(&self.full(&from), &self.full(&to)).await {
            if e.is_status(StatusCode::Failure) && self.exists(&to).await {
                return Err(Errno::EEXIST);
            }
            return Err(errno(&e));
        }
        self.touch_ctime(ino);
        self.nodes
            .lock()
            .unwrap()
            .dir_changed(&npath, Some(&newname), None);
        let known = self
            .nodes
            .lock()
            .unwrap()
            .get(ino)
            .and_then(|n| n.attrs.clone());
        let a = match known {
            Some(a) => a,
            None => self.stat_remote(&to).await.map_err(|e| errno(&e))?,
        };
        let fa = self.remember(&to, a.clone());
        self.touch_ctime(fa.ino.0);
        // Both names now count one more link (SFTP v3 cannot tell us; listings refresh it).
        {
            let mut t = self.nodes.lock().unwrap();
            let links = t.get(ino).and_then(|n| n.nlink).unwrap_or(1) + 1;
            for i in [ino, fa.ino.0] {
                if let Some(n) = t.get_mut(i) {
                    n.nlink = Some(links);
                }
            }
        }
        Ok(self.file_attr(fa.ino.0, &a))
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
        if flags & libc::O_TRUNC != 0 && f.contains(OpenFlags::WRITE) {
            f |= OpenFlags::TRUNCATE;
        }
        f
    }

    async fn open(self: &Arc<Self>, ino: u64, flags: i32) -> Result<u64, Errno> {
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
                self.sftp
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
            let mut t = self.nodes.lock().unwrap();
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

    async fn create(
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
        let f = match self.sftp.open(&self.full(&cpath), sflags, attrs).await {
            Ok(f) => f,
            Err(e)
                if exclusive && e.is_status(StatusCode::Failure) && self.exists(&cpath).await =>
            {
                return Err(Errno::EEXIST);
            }
            Err(e) => return Err(errno(&e)),
        };
        self.nodes
            .lock()
            .unwrap()
            .dir_changed(&ppath, Some(&name), None);
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

    async fn release(&self, fh: u64) -> Result<(), Errno> {
        let Some(of) = self.unregister(fh) else {
            return Ok(());
        };
        of.stop();
        let flushed = of.flush().await;
        if !of.written() {
            // Nothing was written through this handle: the server's answer to the close
            // changes nothing, so nobody waits for it (the handle slot stays taken until then).
            tokio::spawn(async move {
                if let Err(e) = of.file.close().await {
                    tracing::debug!(ino = of.ino, "close: {e}");
                }
            });
            return flushed.map_err(|e| io_errno(&e));
        }
        let closed = of.file.close().await;
        if let Err(e) = &flushed {
            // Nobody is left to tell: the kernel ignores release errors.
            tracing::warn!(
                ino = of.ino,
                "write failed and was not reported before close: {e}"
            );
        }
        flushed.and(closed).map_err(|e| io_errno(&e))
    }

    /// The listing of an open directory: fetched at offset 0 (first read or rewinddir),
    /// reused for later offsets. Also feeds the caches, and starts listing subdirectories ahead.
    async fn listing(
        self: &Arc<Self>,
        ino: u64,
        fh: u64,
        offset: u64,
    ) -> Result<Arc<Listing>, Errno> {
        if offset != 0
            && let Some(Some(l)) = self.dirs.lock().unwrap().get(&fh)
        {
            return Ok(Arc::clone(l));
        }
        let path = self.path_of(ino)?;
        let mutations = self.mutations.load(Ordering::SeqCst);
        let ahead = self.take_prefetched(&path);
        let list = match ahead {
            Some(f) => match f.await {
                Some(l) => l,
                None => self.fetch_listing(&path).await?,
            },
            None => self.fetch_listing(&path).await?,
        };
        if self.caching()
            && let Some(n) = self.nodes.lock().unwrap().get_mut(ino)
        {
            n.listing = Some((
                list.entries.iter().map(|e| e.name.clone()).collect(),
                list.fetched + self.neg_ttl,
            ));
        }
        if let Some(slot) = self.dirs.lock().unwrap().get_mut(&fh) {
            *slot = Some(Arc::clone(&list));
        }
        self.keep_for_reuse(&path, &list, mutations);
        if self.caching() {
            let mut recent = self.recent.lock().unwrap();
            if recent.len() >= PREFETCH_MAX {
                recent.clear();
                self.last_opened.lock().unwrap().clear();
            }
            recent.insert(path.clone(), Arc::clone(&list));
        }
        self.prefetch_children(&path, &list, PREFETCH_DEPTH);
        Ok(list)
    }

    /// Lists `path` from the server.
    async fn fetch_listing(&self, path: &str) -> Result<Arc<Listing>, Errno> {
        let fetched = Instant::now();
        let mut list = self
            .sftp
            .read_dir(&self.full(path))
            .await
            .map_err(|e| errno(&e))?;
        list.retain(|e| e.name != "." && e.name != ".." && !e.name.contains('/'));
        if self.follow_symlinks {
            let links: Vec<usize> = (0..list.len())
                .filter(|i| attr::is_symlink(&list[*i].attrs))
                .collect();
            let stats = futures::future::join_all(links.iter().map(|&i| {
                let full = self.full(&child_path(path, &list[i].name));
                async move { self.sftp.stat(&full).await }
            }))
            .await;
            for (i, s) in links.into_iter().zip(stats) {
                if let Ok(a) = s {
                    list[i].attrs = a;
                }
            }
        }
        Ok(Arc::new(Listing {
            entries: list,
            fetched,
        }))
    }

    /// Keeps a listing just read for `neg_ttl`, for the next opendir of the same directory if
    /// nothing changes through the mount meanwhile: `rm -r` and `find` read each directory
    /// twice in a row.
    fn keep_for_reuse(&self, path: &str, list: &Arc<Listing>, mutations: u64) {
        if !self.caching() {
            return;
        }
        let mut ahead = self.prefetched.lock().unwrap();
        if ahead.len() >= PREFETCH_MAX {
            return;
        }
        let ready: Option<Arc<Listing>> = Some(Arc::clone(list));
        ahead.insert(
            path.to_string(),
            Prefetch {
                listing: futures::future::ready(ready).boxed().shared(),
                mutations,
                valid_until: list.fetched + self.neg_ttl,
            },
        );
    }

    /// The handle and content of `path` read ahead, if still good: nothing changed through the
    /// mount since it was read, it is recent, and it has the size we show for the file.
    async fn take_preloaded(&self, path: &str) -> Option<(crate::sftp::File, Arc<Vec<u8>>)> {
        let p = self.preloads.lock().unwrap().remove(path)?;
        if p.mutations != self.mutations.load(Ordering::SeqCst) || p.valid_until <= Instant::now() {
            return None;
        }
        let ready = p.ready.await?;
        if p.mutations != self.mutations.load(Ordering::SeqCst) {
            return None;
        }
        let size = {
            let t = self.nodes.lock().unwrap();
            t.ino_of(path)
                .and_then(|i| t.get(i))
                .and_then(|n| n.attrs.as_ref()?.size)
        };
        if size != Some(ready.data.len() as u64) {
            return None;
        }
        let f = ready.file.lock().unwrap().take()?;
        Some((f, Arc::clone(&ready.data)))
    }

    /// Opens and reads ahead the small regular files that follow `path` in its directory's
    /// listing (see `PRELOAD_AHEAD`), once files are being opened in that order (`hit`: this
    /// one was read ahead). What is not used in time is closed.
    fn preload_next(self: &Arc<Self>, path: &str, hit: bool) {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (d.to_string(), n),
            None => (String::new(), path),
        };
        let Some(list) = self.recent.lock().unwrap().get(&dir).cloned() else {
            return;
        };
        if list.fetched + self.ttl <= Instant::now() || !self.busy_inodes().is_empty() {
            return;
        }
        let Some(at) = list.entries.iter().position(|e| e.name == name) else {
            return;
        };
        // Random opens in a big directory would only waste requests: wait for a pattern (or
        // the first entry, where a scan in listing order starts).
        let before = self.last_opened.lock().unwrap().insert(dir.clone(), at);
        let in_order = before.is_some_and(|b| at > b && at <= b + PRELOAD_AHEAD);
        if !hit && !in_order && at != 0 {
            return;
        }
        let mutations = self.mutations.load(Ordering::SeqCst);
        let now = Instant::now();
        let mut preloads = self.preloads.lock().unwrap();
        preloads.retain(|_, p| p.mutations == mutations && p.valid_until > now);
        let next = list.entries[at + 1..]
            .iter()
            .filter(|e| {
                attr::mode_of(&e.attrs) & S_IFMT == S_IFREG
                    && e.attrs.size.is_some_and(|s| s <= PRELOAD_MAX_SIZE)
            })
            .take(PRELOAD_AHEAD);
        for e in next {
            if preloads.len() >= PRELOAD_MAX {
                break;
            }
            let cpath = child_path(&dir, &e.name);
            if preloads.contains_key(&cpath) {
                continue;
            }
            let size = e.attrs.size.unwrap_or(0);
            let me = Arc::clone(self);
            let full = self.full(&cpath);
            let ready = async move {
                let f = me
                    .sftp
                    .open(&full, OpenFlags::READ, FileAttributes::default())
                    .await
                    .ok()?;
                let data = if size == 0 {
                    Vec::new()
                } else {
                    f.read(0, size as u32).await.ok()?
                };
                Some(Arc::new(Preloaded {
                    file: Mutex::new(Some(f)),
                    data: Arc::new(data),
                }))
            }
            .boxed()
            .shared();
            self.rt.spawn(ready.clone().map(drop));
            preloads.insert(
                cpath,
                Preload {
                    ready,
                    mutations,
                    valid_until: now + PRELOAD_FRESH,
                },
            );
        }
    }

    /// A change is being made through the mount.
    fn mutated(&self) {
        self.mutations.fetch_add(1, Ordering::SeqCst);
    }

    /// A change confined to one name: `cpath` in the directory `ppath` is being removed. Only
    /// what shows them is dropped (the listings of `ppath`, of its parent, which shows its
    /// times, and of `cpath`; content read ahead for `cpath`), so `rm -r` keeps the listings
    /// of the directories it has yet to visit. Called before the request and again after it,
    /// which drops a listing taken in between.
    fn removing(&self, ppath: &str, cpath: &str) {
        let grandparent = ppath.rsplit_once('/').map_or("", |(d, _)| d);
        let under = format!("{cpath}/");
        self.prefetched
            .lock()
            .unwrap()
            .retain(|k, _| k != ppath && k != grandparent && k != cpath && !k.starts_with(&under));
        self.preloads.lock().unwrap().remove(cpath);
    }

    /// The listing of `path` fetched ahead, if it is still as good as a fresh one: started
    /// after the last change made through the mount, and within the cache timeout.
    fn take_prefetched(&self, path: &str) -> Option<SharedListing> {
        let p = self.prefetched.lock().unwrap().remove(path)?;
        let unchanged = p.mutations == self.mutations.load(Ordering::SeqCst);
        (unchanged && p.valid_until > Instant::now()).then_some(p.listing)
    }

    /// Starts listing the subdirectories of `dir` (and theirs, `depth` levels down) in the
    /// background, bounded in parallelism and in how many unused listings are kept.
    fn prefetch_children(self: &Arc<Self>, dir: &str, list: &Listing, depth: u32) {
        if depth == 0 || !self.caching() || !list.entries.iter().any(|e| attr::is_dir(&e.attrs)) {
            return;
        }
        // Listings taken while writes are in flight would carry sizes about to change.
        if !self.busy_inodes().is_empty() {
            return;
        }
        let mutations = self.mutations.load(Ordering::SeqCst);
        let now = Instant::now();
        let mut ahead = self.prefetched.lock().unwrap();
        ahead.retain(|_, p| p.mutations == mutations && p.valid_until > now);
        for e in list.entries.iter().filter(|e| attr::is_dir(&e.attrs)) {
            if ahead.len() >= PREFETCH_MAX {
                break;
            }
            let path = child_path(dir, &e.name);
            if ahead.contains_key(&path) {
                continue;
            }
            let me = Arc::clone(self);
            let p = path.clone();
            let listing = async move {
                let _slot = me.prefetch_slots.clone().acquire_owned().await.ok()?;
                if me.mutations.load(Ordering::SeqCst) != mutations {
                    return None;
                }
                let l = me.fetch_listing(&p).await.ok()?;
                me.prefetch_children(&p, &l, depth - 1);
                Some(l)
            }
            .boxed()
            .shared();
            // Runs now, whether or not anybody asks for it.
            self.rt.spawn(listing.clone().map(drop));
            ahead.insert(
                path,
                Prefetch {
                    listing,
                    mutations,
                    valid_until: now + self.ttl,
                },
            );
        }
    }

    /// Inodes with writes in flight: the server's size for them is behind ours.
    fn busy_inodes(&self) -> HashSet<u64> {
        self.files
            .lock()
            .unwrap()
            .io
            .iter()
            .filter(|(_, (io, _))| io.has_pending())
            .map(|(ino, _)| *ino)
            .collect()
    }

    fn fill_plus(&self, ino: u64, list: &Listing, offset: u64, reply: &mut ReplyDirectoryPlus) {
        let busy = self.busy_inodes();
        // Entries are as fresh as the listing, which may have been fetched ahead.
        let fresh = self.caching().then(|| list.fetched + self.ttl);
        let ttl = fresh.map_or(Duration::ZERO, |f| {
            f.saturating_duration_since(Instant::now())
        });
        let list = &list.entries;
        let mut t = self.nodes.lock().unwrap();
        let dir_path = t.path(ino).unwrap_or_default();
        let dot = dir_attr(ino);
        for i in offset as usize..list.len() + 2 {
            let next = i as u64 + 1;
            if i < 2 {
                // The kernel makes no dentries for these two; their attributes do not matter.
                let name = if i == 0 { "." } else { ".." };
                if reply.add(
                    INodeNo(ino),
                    next,
                    name,
                    &Duration::ZERO,
                    &dot,
                    Generation(0),
                ) {
                    break;
                }
                continue;
            }
            let e = &list[i - 2];
            let cpath = child_path(&dir_path, &e.name);
            let cino = t.ensure(&cpath);
            let node = t.get_mut(cino).expect("just ensured");
            if !busy.contains(&cino) {
                node.attrs = Some(e.attrs.clone());
                node.fresh_until = fresh;
                node.nlink = e.nlink;
            }
            let a = node.attrs.clone().unwrap_or_else(|| e.attrs.clone());
            let fa = attr::to_file_attr(cino, &a, &self.present, node.ctime_floor, node.nlink);
            if reply.add(INodeNo(cino), next, &e.name, &ttl, &fa, Generation(0)) {
                t.drop_if_unused(cino);
                break;
            }
            // Each entry handed over counts as a lookup the kernel will forget later.
            t.get_mut(cino).expect("still there").nlookup += 1;
        }
    }

    fn fill(&self, ino: u64, list: &Listing, offset: u64, reply: &mut ReplyDirectory) {
        let list = &list.entries;
        let t = self.nodes.lock().unwrap();
        for i in offset as usize..list.len() + 2 {
            let next = i as u64 + 1;
            let full = if i < 2 {
                let name = if i == 0 { "." } else { ".." };
                reply.add(INodeNo(ino), next, FileType::Directory, name)
            } else {
                let e = &list[i - 2];
                let dir_path = t.path(ino).unwrap_or_default();
                // Plain readdir makes no lookups; an unknown entry gets a placeholder number
                // (the kernel replaces it by the real one on lookup).
                let cino = t
                    .ino_of(&child_path(&dir_path, &e.name))
                    .unwrap_or(u64::MAX);
                let kind = attr::kind_of(attr::mode_of(&e.attrs));
                reply.add(INodeNo(cino), next, kind, &e.name)
            };
            if full {
                break;
            }
        }
    }

    async fn statfs(&self) -> Result<(u64, u64, u64, u64, u64, u32, u32, u32), Errno> {
        match self.sftp.statvfs(self.sftp.root()).await {
            Ok(s) => Ok((
                s.blocks,
                s.blocks_free,
                s.blocks_avail,
                s.inodes,
                s.inodes_free,
                s.block_size.min(u64::from(u32::MAX)) as u32,
                NAME_MAX as u32,
                s.fragment_size.min(u64::from(u32::MAX)) as u32,
            )),
            // Without the statvfs extension, show a large empty disk (as sshfs does) so tools
            // that check free space before writing still work.
            Err(e) if e.is_status(StatusCode::OpUnsupported) => {
                let big = 1_000_000_000;
                Ok((big, big, big, big, big, 4096, NAME_MAX as u32, 4096))
            }
            Err(e) => Err(errno(&e)),
        }
    }
}

/// Placeholder attributes for "." and ".." in readdirplus replies.
fn dir_attr(ino: u64) -> FileAttr {
    let a = FileAttributes {
        permissions: Some(S_IFDIR | 0o755),
        ..Default::default()
    };
    attr::to_file_attr(ino, &a, &Presentation::default(), None, None)
}

impl Filesystem for SshFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Ask for what helps; the kernel grants the subset it supports.
        let wanted = [
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_BIG_WRITES,
            InitFlags::FUSE_MAX_PAGES,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_CACHE_SYMLINKS,
        ];
        for flag in wanted {
            let _ = config.add_capabilities(flag);
        }
        if let Err(max) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(max);
        }
        // The kernel caps this at what it offered (usually 128 KiB); our own read-ahead in
        // `file` covers the rest.
        if let Err(max) = config.set_max_readahead(4 * MAX_WRITE) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_owned();
        self.spawn(move |fs| async move {
            match fs.lookup(parent.0, &name).await {
                Ok(Entry::Found(a)) => reply.entry(&fs.ttl, &a, Generation(0)),
                Ok(Entry::Absent) if fs.caching() => {
                    // Node id 0 is a negative entry the kernel may cache for a while.
                    let mut a = dir_attr(0);
                    a.ino = INodeNo(0);
                    reply.entry(&fs.neg_ttl, &a, Generation(0));
                }
                Ok(Entry::Absent) => reply.error(Errno::ENOENT),
                Err(e) => reply.error(e),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inner.nodes.lock().unwrap().forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.spawn(move |fs| async move {
            match fs.getattr(ino.0, fh.map(|f| f.0)).await {
                Ok(a) => reply.attr(&fs.ttl, &a),
                Err(e) => reply.error(e),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.inner.mutated();
        self.spawn(move |fs| async move {
            let r = fs
                .setattr(ino.0, mode, uid, gid, size, atime, mtime, fh.map(|f| f.0))
                .await;
            match r {
                Ok(a) => reply.attr(&fs.ttl, &a),
                Err(e) => reply.error(e),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn(move |fs| async move {
            match fs.readlink(ino.0).await {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(e),
            }
        });
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        self.inner.mutated();
        let name = name.to_owned();
        self.spawn(move |fs| async move {
            match fs.mknod(parent.0, &name, mode).await {
                Ok(a) => reply.entry(&fs.ttl, &a, Generation(0)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.inner.mutated();
        let name = name.to_owned();
        self.spawn(move |fs| async move {
            match fs.mkdir(parent.0, &name, mode).await {
                Ok(a) => reply.entry(&fs.ttl, &a, Generation(0)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        // Not `mutated`: see `removing`.
        let name = name.to_owned();
        self.spawn(move |fs| async move {
            match fs.unlink(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        // Not `mutated`: see `removing`.
        let name = name.to_owned();
        self.spawn(move |fs| async move {
            match fs.rmdir(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.inner.mutated();
        let name = link_name.to_owned();
        let target = target.to_owned();
        self.spawn(move |fs| async move {
            match fs.symlink(parent.0, &name, &target).await {
                Ok(a) => reply.entry(&fs.ttl, &a, Generation(0)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.inner.mutated();
        let (name, newname) = (name.to_owned(), newname.to_owned());
        self.spawn(move |fs| async move {
            match fs
                .rename(parent.0, &name, newparent.0, &newname, flags)
                .await
            {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.inner.mutated();
        let newname = newname.to_owned();
        self.spawn(move |fs| async move {
            match fs.link(ino.0, newparent.0, &newname).await {
                Ok(a) => reply.entry(&fs.ttl, &a, Generation(0)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: fuser::OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_TRUNC != 0 {
            self.inner.mutated();
        }
        self.spawn(move |fs| async move {
            match fs.open(ino.0, flags.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(e),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: fuser::OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let of = match self.inner.handle(fh.0) {
            Ok(of) => of,
            Err(e) => return reply.error(e),
        };
        self.spawn(move |fs| async move {
            let known = fs
                .nodes
                .lock()
                .unwrap()
                .get(ino.0)
                .and_then(|n| n.attrs.as_ref()?.size);
            match of.read(&fs.rt, offset, size, known).await {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(io_errno(&e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: fuser::OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.inner.mutated();
        let of = match self.inner.handle(fh.0) {
            Ok(of) => of,
            Err(e) => return reply.error(e),
        };
        let data = data.to_vec();
        self.spawn(move |fs| async move {
            let len = data.len() as u64;
            match of.write(&fs.rt, &fs.budget, offset, data).await {
                Ok(at) => {
                    if let Some(n) = fs.nodes.lock().unwrap().get_mut(ino.0) {
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
                    }
                    reply.written(len as u32);
                }
                Err(e) => reply.error(fs.write_errno(&e).await),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let of = match self.inner.handle(fh.0) {
            Ok(of) => of,
            Err(e) => return reply.error(e),
        };
        self.spawn(move |fs| async move {
            match of.flush().await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(fs.write_errno(&e).await),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: fuser::OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(move |fs| async move {
            match fs.release(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let of = match self.inner.handle(fh.0) {
            Ok(of) => of,
            Err(e) => return reply.error(e),
        };
        self.spawn(move |fs| async move {
            if let Err(e) = of.flush().await {
                return reply.error(fs.write_errno(&e).await);
            }
            match of.file.fsync().await {
                Ok(()) => reply.ok(),
                // A server without fsync@openssh.com cannot do better than having the data.
                Err(e) if e.is_status(StatusCode::OpUnsupported) => reply.ok(),
                Err(e) => reply.error(io_errno(&e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: fuser::OpenFlags, reply: ReplyOpen) {
        if self.inner.nodes.lock().unwrap().path(ino.0).is_none() {
            return reply.error(Errno::ENOENT);
        }
        let fh = self.inner.next_fh.fetch_add(1, Ordering::Relaxed);
        self.inner.dirs.lock().unwrap().insert(fh, None);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.spawn(move |fs| async move {
            match fs.listing(ino.0, fh.0, offset).await {
                Ok(list) => {
                    let mut reply = reply;
                    fs.fill(ino.0, &list, offset, &mut reply);
                    reply.ok();
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        self.spawn(move |fs| async move {
            match fs.listing(ino.0, fh.0, offset).await {
                Ok(list) => {
                    let mut reply = reply;
                    fs.fill_plus(ino.0, &list, offset, &mut reply);
                    reply.ok();
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: fuser::OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.inner.dirs.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.spawn(move |fs| async move {
            match fs.statfs().await {
                Ok((b, bf, ba, f, ff, bs, nl, fr)) => reply.statfs(b, bf, ba, f, ff, bs, nl, fr),
                Err(e) => reply.error(e),
            }
        });
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.inner.mutated();
        let name = name.to_owned();
        self.spawn(move |fs| async move {
            match fs.create(parent.0, &name, mode, flags).await {
                Ok((a, fh)) => reply.created(
                    &fs.ttl,
                    &a,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(e),
            }
        });
    }
}
