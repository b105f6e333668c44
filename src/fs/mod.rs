//! The FUSE filesystem: kernel requests in, SFTP calls out.
//!
//! The FUSE event loop never waits on the network: every request that needs the server becomes
//! a task on the tokio runtime, which replies when the answer arrives, so many requests are in
//! flight at once (`kernel`). What we know is cached for `cache_timeout` (attributes, and which
//! names a directory holds: `inodes`) and kept in step with every change made through this
//! mount, so such a change is visible through it at once.
//!
//! Round trips are what small-file work costs at real latencies, so some things are fetched
//! before they are asked for (`ahead`): the listings of subdirectories of a directory being
//! read, and the content (with an open handle) of the next small files of a directory being
//! read file by file. Open files queue their writes and read ahead of sequential readers
//! (`file`).
//!
//! SFTP v3 reports most failures as a bare FAILURE; where POSIX callers care which errno they
//! get (EEXIST, ENOTEMPTY, ...), the failing call is followed by a look at the server's state
//! (`errno`).
//!
//! The files, by job:
//! - `kernel`: the `fuser::Filesystem` adapter: spawn a task per request and reply.
//! - `namespace`: names and their attributes: lookup, getattr, mkdir, create-by-mknod, unlink,
//!   rmdir, symlink, rename, link, readlink.
//! - `setattr`: chmod, chown, truncate and utimes, deferred or sent.
//! - `open`: the open-handle table, open, create, read, write, flush, fsync, release.
//! - `readdir`: open directories and their listings.
//! - `ahead`: everything fetched ahead of use, and when it is dropped.
//! - `errno`: the one SFTP status -> errno policy.
//! - `statfs`: free space.
//! - `file`, `inodes`, `attr`: an open file's I/O, the inode table, how attributes are shown.
//! - `hidden`: reserved names for files unlinked while open, and leftovers of earlier mounts.

mod ahead;
mod attr;
mod errno;
mod file;
mod hidden;
mod inodes;
mod kernel;
mod namespace;
mod open;
mod readdir;
mod remote;
mod setattr;
mod statfs;

use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fuser::{Errno, FileAttr};
use parking_lot::Mutex;
use tokio::runtime::Handle;

use crate::options::MountOptions;
use crate::sftp::{FileAttributes, Sftp};
use crate::writeback::Overlay;

use attr::{Creator, Presentation};
use inodes::{Inodes, child_path};

pub use inodes::Trimmer;
pub use kernel::{SshFs, WriteBehind, fuse_config};
pub use open::Undrained;

/// Longest file name most servers accept; longer ones fail locally with ENAMETOOLONG instead
/// of a vague FAILURE from the server.
const NAME_MAX: usize = 255;

/// Longest time a listing answers "no such name" (see `Fs::neg_ttl`).
const NEGATIVE_TTL: Duration = Duration::from_secs(1);

/// The filesystem's state, shared by every request task (`SshFs` is its face to the kernel).
/// Lives as long as the mount; everything in it is per mount.
struct Fs {
    /// The server, or in write-back mode the journal's view over it.
    remote: remote::Remote,
    rt: Handle,
    present: Presentation,
    follow_symlinks: bool,
    strict_chown: bool,
    /// The server took a chown, and refused none (ignored then): only then are chowns on open
    /// files deferred. A deferred chown is answered before the server saw it, and the kernel
    /// keeps that answer for the attribute timeout, so it is only predicted where the login
    /// is known to be allowed to give files away.
    chown_accepted: AtomicBool,
    chown_refused: AtomicBool,
    /// Attribute and entry lifetime; zero with `cache=no`.
    ttl: Duration,
    /// How long a listing's word that a name does not exist is trusted: short, since files
    /// other clients create on the server should show up soon (sshfs caches no negatives).
    neg_ttl: Duration,
    nodes: Mutex<Inodes>,
    /// Open files (`open`).
    handles: open::Handles,
    /// Open directories (`readdir`).
    dirs: readdir::OpenDirs,
    /// What was fetched ahead of use (`ahead`).
    ahead: ahead::Ahead,
    /// File and directory handle numbers, from one counter.
    next_fh: AtomicU64,
    creator: Mutex<Creator>,
    /// Names for files unlinked while open (`hidden`).
    hiding: hidden::Hiding,
}

impl Fs {
    fn new(sftp: Sftp, opts: &MountOptions, rt: Handle, overlay: Option<Overlay>) -> Fs {
        let ttl = if opts.cache {
            opts.cache_timeout
        } else {
            Duration::ZERO
        };
        let hiding = hidden::Hiding::new();
        rt.spawn(hiding.clean_root(sftp.clone()));
        Fs {
            remote: remote::Remote::new(sftp, overlay),
            rt,
            present: Presentation {
                uid: opts.uid,
                gid: opts.gid,
                umask: opts.umask.unwrap_or(0),
            },
            follow_symlinks: opts.follow_symlinks,
            strict_chown: opts.strict_chown,
            chown_accepted: AtomicBool::new(false),
            chown_refused: AtomicBool::new(false),
            ttl,
            neg_ttl: ttl.min(NEGATIVE_TTL),
            nodes: Mutex::new(Inodes::new()),
            handles: open::Handles::default(),
            dirs: readdir::OpenDirs::default(),
            ahead: ahead::Ahead::default(),
            next_fh: AtomicU64::new(1),
            creator: Mutex::new(Creator::default()),
            hiding,
        }
    }

    /// The server's path of a path relative to the mount root.
    fn full(&self, rel: &str) -> String {
        Self::join(self.remote.root(), rel)
    }

    /// `rel` (relative, "" for itself) below the server directory `root`.
    fn join(root: &str, rel: &str) -> String {
        if rel.is_empty() {
            root.to_string()
        } else if root.ends_with('/') {
            format!("{root}{rel}")
        } else {
            format!("{root}/{rel}")
        }
    }

    /// Whether a chown on an open file may be deferred (see `chown_accepted`).
    fn chown_deferrable(&self) -> bool {
        !self.strict_chown
            && self.chown_accepted.load(Ordering::Relaxed)
            && !self.chown_refused.load(Ordering::Relaxed)
    }

    fn caching(&self) -> bool {
        !self.ttl.is_zero()
    }

    fn fresh_until(&self) -> Option<Instant> {
        self.caching().then(|| Instant::now() + self.ttl)
    }

    fn path_of(&self, ino: u64) -> Result<String, Errno> {
        self.nodes.lock().path(ino).ok_or(Errno::ENOENT)
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
            .get(ino)
            .map_or((None, None), |n| (n.ctime_floor, n.nlink));
        attr::to_file_attr(ino, a, &self.present, floor, nlink)
    }
}

fn name_str(name: &OsStr) -> Result<&str, Errno> {
    // The SFTP client speaks UTF-8 paths only.
    let s = name.to_str().ok_or(Errno::EINVAL)?;
    if s.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(s)
}
