//! The face to the kernel: `SshFs` implements `fuser::Filesystem` by turning each request into
//! a task on the tokio runtime that calls the matching `Fs` operation and replies when it is
//! done, so the FUSE event loop never waits on the network and many requests are in flight at
//! once. Nothing else happens here: which requests count as a change (`Fs::mutated`), what the
//! kernel is asked for at init, and how a negative entry is sent. It is long only because the
//! trait has a method per request kind, each a few lines of the same spawn-and-reply shape.
//!
//! A panic (a bug) ends only the request it happens in: the reply, dropped while unwinding,
//! answers EIO (fuser does that for any reply not sent). In a task the runtime catches it; on
//! the FUSE loop thread, which fuser does not protect and whose death is the mount's, the
//! work a callback does there (building its task, or the few callbacks answered at once) runs
//! inside `contain`. Our locks are parking_lot's, which are not poisoned by a panic, so the
//! filesystem serves on.

use std::ffi::OsStr;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, MountOption, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, SessionACL, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use super::Fs;
use super::inodes::Trimmer;
use super::namespace::Entry;
use super::open::Undrained;
use super::readdir::{Listing, dir_attr};
use super::setattr::Change;
use crate::options::MountOptions;
use crate::sftp::Sftp;
use crate::writeback::Overlay;

/// Largest FUSE write we ask for: fewer, bigger requests on sequential writes.
const MAX_WRITE: u32 = 1024 * 1024;

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

/// The mount's queued writes, seen from outside the FUSE session (see `SshFs::write_behind`).
#[derive(Clone)]
pub struct WriteBehind {
    fs: Arc<Fs>,
}

impl WriteBehind {
    /// Waits until `deadline` for every queued write and deferred metadata change to reach the
    /// server; returns the files that did not.
    pub async fn drain(&self, deadline: std::time::Instant) -> Vec<Undrained> {
        self.fs.drain(deadline).await
    }
}

/// The two replies a listing is sent in: names only (readdir) or names with attributes
/// (readdirplus, which also counts kernel lookups).
trait ListingReply: Send + 'static {
    fn fill(&mut self, fs: &Fs, ino: u64, list: &Listing, offset: u64);
    fn done(self);
    fn failed(self, e: Errno);
}

impl ListingReply for ReplyDirectory {
    fn fill(&mut self, fs: &Fs, ino: u64, list: &Listing, offset: u64) {
        fs.fill(ino, list, offset, self);
    }
    fn done(self) {
        self.ok();
    }
    fn failed(self, e: Errno) {
        self.error(e);
    }
}

impl ListingReply for ReplyDirectoryPlus {
    fn fill(&mut self, fs: &Fs, ino: u64, list: &Listing, offset: u64) {
        fs.fill_plus(ino, list, offset, self);
    }
    fn done(self) {
        self.ok();
    }
    fn failed(self, e: Errno) {
        self.error(e);
    }
}

/// Runs work on the FUSE loop thread so that a panic in it ends only that request (its reply
/// is dropped: EIO) and the loop goes on serving.
fn contain(request: &str, f: impl FnOnce()) {
    // Unwind safety: what a callback touches is `Fs`, behind parking_lot locks (never
    // poisoned) and atomics; a request cut short leaves them as a failed request would.
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        tracing::error!("a {request} request panicked (a bug); it failed with EIO");
    }
}

/// The filesystem handed to `fuser::Session`.
pub struct SshFs {
    fs: Arc<Fs>,
}

impl SshFs {
    /// The filesystem of `sftp`'s root; with `overlay` (write-back mode), changes go to its
    /// journal and reads see them at once.
    pub fn new(sftp: Sftp, opts: &MountOptions, rt: Handle, overlay: Option<Overlay>) -> SshFs {
        SshFs {
            fs: Arc::new(Fs::new(sftp, opts, rt, overlay)),
        }
    }

    /// A handle on this mount's write-behind, kept by the owner of the mount while the
    /// filesystem itself is moved into the FUSE session.
    pub fn write_behind(&self) -> WriteBehind {
        WriteBehind {
            fs: Arc::clone(&self.fs),
        }
    }

    /// What keeps this mount's inode table bounded, to be started with the FUSE session's
    /// notifier once the session (which takes the filesystem) exists.
    pub fn trimmer(&self) -> Trimmer {
        Trimmer {
            fs: Arc::downgrade(&self.fs),
        }
    }

    /// readdir and readdirplus: the open directory's listing, from `offset` on.
    fn spawn_listing<R: ListingReply>(&self, ino: u64, fh: u64, offset: u64, reply: R) {
        self.spawn(move |fs| async move {
            match fs.listing(ino, fh, offset).await {
                Ok(list) => {
                    let mut reply = reply;
                    reply.fill(&fs, ino, &list, offset);
                    reply.done();
                }
                Err(e) => reply.failed(e),
            }
        });
    }

    /// Runs `f` as a task: the FUSE loop goes straight back to reading requests.
    fn spawn<F, Fut>(&self, f: F)
    where
        F: FnOnce(Arc<Fs>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        contain("request", || {
            let fut = f(Arc::clone(&self.fs));
            self.fs.rt.spawn(fut);
        });
    }
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
        contain("forget", || self.fs.nodes.lock().forget(ino.0, nlookup));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.spawn(move |fs| async move {
            reply_attr(reply, &fs.ttl, fs.getattr(ino.0, fh.map(|f| f.0)).await);
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
        self.fs.mutated();
        let change = Change {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        self.spawn(move |fs| async move {
            reply_attr(
                reply,
                &fs.ttl,
                fs.setattr(ino.0, change, fh.map(|f| f.0)).await,
            );
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
        self.fs.mutated();
        let name = name.to_owned();
        self.spawn(move |fs| async move {
            reply_entry(reply, &fs.ttl, fs.mknod(parent.0, &name, mode).await);
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
        self.fs.mutated();
        let name = name.to_owned();
        self.spawn(move |fs| async move {
            reply_entry(reply, &fs.ttl, fs.mkdir(parent.0, &name, mode).await);
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        // Not `mutated`: see `removing`.
        let name = name.to_owned();
        self.spawn(move |fs| async move {
            reply_empty(reply, fs.unlink(parent.0, &name).await);
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        // Not `mutated`: see `removing`.
        let name = name.to_owned();
        self.spawn(move |fs| async move {
            reply_empty(reply, fs.rmdir(parent.0, &name).await);
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
        self.fs.mutated();
        let name = link_name.to_owned();
        let target = target.to_owned();
        self.spawn(move |fs| async move {
            reply_entry(reply, &fs.ttl, fs.symlink(parent.0, &name, &target).await);
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
        self.fs.mutated();
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
        self.fs.mutated();
        let newname = newname.to_owned();
        self.spawn(move |fs| async move {
            reply_entry(reply, &fs.ttl, fs.link(ino.0, newparent.0, &newname).await);
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: fuser::OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_TRUNC != 0 {
            self.fs.mutated();
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
        let of = match self.fs.handle(fh.0) {
            Ok(of) => of,
            Err(e) => return reply.error(e),
        };
        self.spawn(move |fs| async move {
            match fs.read(ino.0, &of, offset, size).await {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(e),
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
        self.fs.mutated();
        let of = match self.fs.handle(fh.0) {
            Ok(of) => of,
            Err(e) => return reply.error(e),
        };
        let data = data.to_vec();
        self.spawn(move |fs| async move {
            match fs.write(ino.0, &of, offset, data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e),
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
        let of = match self.fs.handle(fh.0) {
            Ok(of) => of,
            Err(e) => return reply.error(e),
        };
        self.spawn(move |fs| async move {
            reply_empty(reply, fs.flush(&of).await);
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
            reply_empty(reply, fs.release(fh.0).await);
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
        let of = match self.fs.handle(fh.0) {
            Ok(of) => of,
            Err(e) => return reply.error(e),
        };
        self.spawn(move |fs| async move {
            reply_empty(reply, fs.fsync(&of).await);
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: fuser::OpenFlags, reply: ReplyOpen) {
        contain("opendir", || match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.spawn_listing(ino.0, fh.0, offset, reply);
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        self.spawn_listing(ino.0, fh.0, offset, reply);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: fuser::OpenFlags,
        reply: ReplyEmpty,
    ) {
        contain("releasedir", || {
            self.fs.releasedir(fh.0);
            reply.ok();
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // A directory's changes are on the server when its call returned, except in
        // write-back mode: there fsync of a directory waits for every change made so far.
        self.spawn(move |fs| async move {
            match fs.remote.sync().await {
                Ok(()) => reply.ok(),
                Err(_) => reply.error(Errno::EIO),
            }
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.spawn(move |fs| async move {
            match fs.statfs().await {
                Ok(s) => reply.statfs(
                    s.blocks,
                    s.blocks_free,
                    s.blocks_avail,
                    s.files,
                    s.files_free,
                    s.block_size,
                    s.name_max,
                    s.fragment_size,
                ),
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
        self.fs.mutated();
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

fn reply_entry(reply: ReplyEntry, ttl: &Duration, r: Result<FileAttr, Errno>) {
    match r {
        Ok(a) => reply.entry(ttl, &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_attr(reply: ReplyAttr, ttl: &Duration, r: Result<FileAttr, Errno>) {
    match r {
        Ok(a) => reply.attr(ttl, &a),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use parking_lot::Mutex;

    use super::contain;

    /// Stands for a fuser reply: dropping it unsent is what answers EIO.
    struct Reply(Arc<AtomicBool>);
    impl Drop for Reply {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_panicking_callback_fails_only_its_request() {
        let table = Arc::new(Mutex::new(0u32));
        let dropped = Arc::new(AtomicBool::new(false));
        let reply = Reply(Arc::clone(&dropped));
        let t = Arc::clone(&table);
        contain("test", move || {
            let _reply = reply;
            let mut g = t.lock();
            *g += 1;
            panic!("hostile input");
        });
        assert!(
            dropped.load(Ordering::SeqCst),
            "the reply went out (as EIO)"
        );
        // The lock held while panicking is free and usable: nothing is poisoned.
        *table.lock() += 1;
        assert_eq!(*table.lock(), 2);
    }

    #[test]
    fn a_panicking_task_fails_only_its_request() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let dropped = Arc::new(AtomicBool::new(false));
        let reply = Reply(Arc::clone(&dropped));
        let failed = rt.block_on(rt.spawn(async move {
            let _reply = reply;
            panic!("hostile input");
        }));
        assert!(failed.is_err_and(|e| e.is_panic()));
        assert!(
            dropped.load(Ordering::SeqCst),
            "the reply went out (as EIO)"
        );
        // The runtime goes on serving requests.
        assert_eq!(rt.block_on(rt.spawn(async { 7 })).unwrap(), 7);
    }
}
