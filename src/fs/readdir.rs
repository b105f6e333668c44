//! Reading directories: the open-directory table, a listing per open directory (taken at the
//! first read, reused for later offsets), and the replies for readdir and readdirplus. Listings
//! also feed the caches (a complete listing answers negative lookups) and start the listings
//! of subdirectories ahead (`ahead`). Reserved names (`hidden`) never show.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fuser::{Errno, FileAttr, FileType, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus};
use parking_lot::Mutex;

use super::Fs;
use super::attr::{self, Presentation, S_IFDIR};
use super::errno::errno;
use super::inodes::child_path;
use crate::sftp::{DirEntry, FileAttributes};

/// A directory listing and when it was fetched.
pub(super) struct Listing {
    pub entries: Vec<DirEntry>,
    pub fetched: Instant,
}

/// Open directories: the listing taken at the first readdir (offset 0), by handle.
#[derive(Default)]
pub(super) struct OpenDirs {
    open: Mutex<HashMap<u64, Option<Arc<Listing>>>>,
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
        if self.caching()
            && let Some(n) = self.nodes.lock().get_mut(ino)
        {
            n.listing = Some((
                list.entries.iter().map(|e| e.name.clone()).collect(),
                list.fetched + self.neg_ttl,
            ));
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
        let mut list = self
            .sftp
            .read_dir(&self.full(path))
            .await
            .map_err(|e| errno(&e))?;
        list.retain(|e| e.name != "." && e.name != ".." && !e.name.contains('/'));
        // Files unlinked while open are not there as far as anyone using the mount can tell.
        self.hiding
            .skip_hidden(&self.sftp, &self.full(path), &mut list);
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

    pub(super) fn fill_plus(
        &self,
        ino: u64,
        list: &Listing,
        offset: u64,
        reply: &mut ReplyDirectoryPlus,
    ) {
        let busy = self.handles.busy_inodes();
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
