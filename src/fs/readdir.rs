//! Reading directories: the open-directory table, a listing per open directory (taken at the
//! first read, reused for later offsets), and the replies for readdir and readdirplus. Listings
//! also feed the caches (a complete listing answers negative lookups) and start the listings
//! of subdirectories ahead (`ahead`). Reserved names (`hidden`) never show.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fuser::{Errno, FileAttr, FileType, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus};
use parking_lot::Mutex;

use super::Fs;
use super::attr::{self, Presentation, S_IFDIR};
use super::errno::errno;
use super::inodes::{AttrTicket, child_path};
use crate::sftp::{DirEntry, FileAttributes};

/// A directory listing and when it was fetched.
pub(super) struct Listing {
    pub entries: Vec<DirEntry>,
    pub fetched: Instant,
    /// Taken when the fetch started: an entry's attributes replace ours only if it trusts
    /// them (they may predate a write made through the mount: `inodes::AttrTicket`).
    pub ticket: AttrTicket,
}

// --- listing-size accounting (memory bounds, README limits) ---

/// What keeping one entry costs besides its name's bytes: the entry with its attributes, and
/// the allocator's overhead on the name.
const ENTRY_BYTES: usize = std::mem::size_of::<DirEntry>() + 32;
/// Bytes of directory name sets kept on inodes for negative lookups (`Node::listing`), over
/// all directories (README, limits).
pub(super) const NAMES_KEPT_MAX: usize = 16 << 20;

impl Listing {
    /// The bytes this listing holds, estimated from its entries: what the memory bounds count.
    pub fn bytes(&self) -> usize {
        self.entries
            .iter()
            .map(|e| e.name.len() + ENTRY_BYTES)
            .sum()
    }
}

/// The directories whose name sets are kept (`Node::listing`), oldest first: inode, the
/// instant its set expires (which tells it from a newer set), estimated bytes.
#[derive(Default)]
struct NamesKept {
    dirs: VecDeque<(u64, Instant, usize)>,
    bytes: usize,
}

impl Fs {
    /// Keeps the names of `list` on the inode of its directory (negative lookups), within
    /// `NAMES_KEPT_MAX` over all directories: expired sets and the oldest go first, and a
    /// listing bigger than the whole bound keeps no set.
    fn keep_names(&self, ino: u64, list: &Listing) {
        let bytes = list.bytes();
        let until = list.fetched + self.neg_ttl;
        let mut t = self.nodes.lock();
        let Some(n) = t.get_mut(ino) else {
            return;
        };
        if bytes > NAMES_KEPT_MAX {
            n.listing = None;
            return;
        }
        n.listing = Some((list.entries.iter().map(|e| e.name.clone()).collect(), until));
        let mut kept = self.dirs.names.lock();
        kept.dirs.push_back((ino, until, bytes));
        kept.bytes += bytes;
        let now = Instant::now();
        while let Some(&(old, old_until, b)) = kept.dirs.front() {
            if kept.bytes <= NAMES_KEPT_MAX && old_until > now {
                break;
            }
            kept.dirs.pop_front();
            kept.bytes -= b;
            if let Some(n) = t.get_mut(old)
                && n.listing.as_ref().is_some_and(|(_, u)| *u == old_until)
            {
                n.listing = None;
            }
        }
    }
}

// --- end of listing-size accounting ---

/// Open directories: the listing taken at the first readdir (offset 0), by handle.
#[derive(Default)]
pub(super) struct OpenDirs {
    open: Mutex<HashMap<u64, Option<Arc<Listing>>>>,
    /// Name sets kept on directory inodes (`keep_names`).
    names: Mutex<NamesKept>,
}

impl Fs {
    /// opendir: a handle whose listing is taken at its first read.
    pub(super) fn opendir(&self, ino: u64) -> Result<u64, Errno> {
        if self.nodes.lock().path(ino).is_none() {
            return Err(Errno::ENOENT);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.open.lock().insert(fh, None);
        Ok(fh)
    }

    pub(super) fn releasedir(&self, fh: u64) {
        self.dirs.open.lock().remove(&fh);
    }

    /// The listing of an open directory: fetched at offset 0 (first read or rewinddir),
    /// reused for later offsets. Also feeds the caches, and starts listing subdirectories ahead.
    pub(super) async fn listing(
        self: &Arc<Self>,
        ino: u64,
        fh: u64,
        offset: u64,
    ) -> Result<Arc<Listing>, Errno> {
        if offset != 0
            && let Some(Some(l)) = self.dirs.open.lock().get(&fh)
        {
            return Ok(Arc::clone(l));
        }
        let path = self.path_of(ino)?;
        let mutations = self.ahead.mutations();
        let ahead = self.take_prefetched(&path);
        let list = match ahead {
            Some(f) => match f.await {
                Some(l) => l,
                None => self.fetch_listing(&path).await?,
            },
            None => self.fetch_listing(&path).await?,
        };
        if self.caching() {
            self.keep_names(ino, &list);
        }
        if let Some(taken) = self.dirs.open.lock().get_mut(&fh) {
            *taken = Some(Arc::clone(&list));
        }
        self.listed(&path, &list, mutations);
        Ok(list)
    }

    /// Lists `path` from the server.
    pub(super) async fn fetch_listing(&self, path: &str) -> Result<Arc<Listing>, Errno> {
        let fetched = Instant::now();
        let ticket = self.attr_ticket();
        let mut list = self
            .remote
            .read_dir(&self.full(path))
            .await
            .map_err(|e| errno(&e))?;
        list.retain(|e| e.name != "." && e.name != ".." && !e.name.contains('/'));
        // Files unlinked while open are not there as far as anyone using the mount can tell.
        self.hiding
            .skip_hidden(self.remote.sftp(), &self.full(path), &mut list);
        if self.follow_symlinks {
            let links: Vec<usize> = (0..list.len())
                .filter(|i| attr::is_symlink(&list[*i].attrs))
                .collect();
            let stats = futures::future::join_all(links.iter().map(|&i| {
                let full = self.full(&child_path(path, &list[i].name));
                async move { self.remote.stat(&full).await }
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
            ticket,
        }))
    }

    pub(super) fn fill_plus(
        &self,
        ino: u64,
        list: &Listing,
        offset: u64,
        reply: &mut ReplyDirectoryPlus,
    ) {
        let busy = self.handles.busy_inodes();
        let ticket = &list.ticket;
        // Entries are as fresh as the listing, which may have been fetched ahead.
        let fresh = self.caching().then(|| list.fetched + self.ttl);
        let ttl = fresh.map_or(Duration::ZERO, |f| {
            f.saturating_duration_since(Instant::now())
        });
        let list = &list.entries;
        let mut t = self.nodes.lock();
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
            // After a change through the mount, what we know of an entry may be newer than
            // the listing (a size a write has given it since): ours wins where we have it.
            let trusted = t.trusts(cino, ticket, &busy);
            let node = t
                .get_mut(cino)
                .expect("ensure() made it, under this same lock");
            if trusted {
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
            t.get_mut(cino)
                .expect("kept: nothing dropped it, under this same lock")
                .nlookup += 1;
        }
    }

    pub(super) fn fill(&self, ino: u64, list: &Listing, offset: u64, reply: &mut ReplyDirectory) {
        let list = &list.entries;
        let t = self.nodes.lock();
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
}

/// Placeholder attributes for "." and ".." in readdirplus replies (and the negative entry).
pub(super) fn dir_attr(ino: u64) -> FileAttr {
    let a = FileAttributes {
        permissions: Some(S_IFDIR | 0o755),
        ..Default::default()
    };
    attr::to_file_attr(ino, &a, &Presentation::default(), None, None)
}
