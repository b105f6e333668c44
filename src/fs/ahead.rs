//! Everything fetched ahead of use, and when it is dropped.
//!
//! Round trips are what small-file work costs at real latencies, so two things are fetched
//! before they are asked for: the listings of the subdirectories of a directory being read (two
//! levels down: `ls -R`, `find`, `du` descend next), and the content, with an open handle, of
//! the next small files of a directory being read file by file. A listing just read is also
//! kept a moment for the next opendir of the same directory (`rm -r` and `find` read each
//! directory twice in a row).
//!
//! What was fetched ahead is never served across a change: every change made through the mount
//! bumps `Ahead::mutations`, and anything started before the bump is dropped (a removal drops
//! only what shows the removed name: `removing`). It also expires: listings with the cache
//! timeout, file content after `PRELOAD_FRESH`.
//!
//! Memory is bounded in count and in bytes (a listing's bytes are estimated from its entries:
//! `Listing::bytes`): at most `LISTINGS_KEPT_MAX` of listings fetched ahead or kept for reuse,
//! `RECENT_KEPT_MAX` of latest listings, `PRELOAD_MAX` x `PRELOAD_MAX_SIZE` of file content,
//! plus the listings being fetched (`PREFETCH_PARALLEL` at once). The oldest go first; a listing
//! bigger than its whole bound is served to the reader that asked for it but never kept.
//!
//! One file because both kinds share the change counter and the rules for when what was
//! fetched is dropped; a rule written in two places would drift.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use super::Fs;
use super::attr::{self, S_IFMT, S_IFREG};
use super::inodes::child_path;
use super::readdir::Listing;
use crate::kept::Kept;
use crate::sftp::{FileAttributes, OpenFlags};

/// Directory listings fetched ahead at once, mount-wide.
const PREFETCH_PARALLEL: usize = 16;
/// Most listings kept fetched ahead and not yet used.
const PREFETCH_MAX: usize = 512;
/// Bytes of listings kept fetched ahead of use or kept for the next opendir (README, limits).
pub(super) const LISTINGS_KEPT_MAX: usize = 32 << 20;
/// Bytes of the latest listings kept for the order files are read ahead in (README, limits).
pub(super) const RECENT_KEPT_MAX: usize = 16 << 20;
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

/// What was fetched ahead, mount-wide.
pub(super) struct Ahead {
    /// Directory listings fetched ahead of use (see `prefetch_children`), by path.
    listings: Mutex<Kept<Prefetch>>,
    /// Small files opened and read ahead, by path (see `PRELOAD_AHEAD`).
    files: Mutex<HashMap<String, Preload>>,
    /// The latest listings by directory path, for the order files are read ahead in.
    recent: Mutex<Kept<Arc<Listing>>>,
    /// Per directory (of those in `recent`), the listing position of the file opened last.
    last_opened: Mutex<HashMap<String, usize>>,
    /// Bounds how many listings are fetched ahead at once.
    listing_permits: Arc<Semaphore>,
    /// Bumped by every change made through the mount: anything fetched ahead before a change
    /// is not served after it.
    mutations: AtomicU64,
}

impl Default for Ahead {
    fn default() -> Self {
        Ahead {
            listings: Mutex::new(Kept::new(PREFETCH_MAX, LISTINGS_KEPT_MAX)),
            files: Mutex::new(HashMap::new()),
            recent: Mutex::new(Kept::new(PREFETCH_MAX, RECENT_KEPT_MAX)),
            last_opened: Mutex::new(HashMap::new()),
            listing_permits: Arc::new(Semaphore::new(PREFETCH_PARALLEL)),
            mutations: AtomicU64::new(0),
        }
    }
}

impl Ahead {
    /// The change counter now: what is fetched from now on is good until it moves.
    pub fn mutations(&self) -> u64 {
        self.mutations.load(Ordering::SeqCst)
    }
}

/// A small file opened and read ahead of its open (see `PRELOAD_AHEAD`).
struct Preloaded {
    file: Mutex<Option<super::remote::RemoteFile>>,
    data: Arc<Vec<u8>>,
}

/// A small file being (or already) read ahead.
struct Preload {
    ready: Shared<BoxFuture<'static, Option<Arc<Preloaded>>>>,
    /// `Ahead::mutations` when it started.
    mutations: u64,
    valid_until: Instant,
}

pub(super) type SharedListing = Shared<BoxFuture<'static, Option<Arc<Listing>>>>;

/// A listing being (or already) fetched ahead of use.
struct Prefetch {
    listing: SharedListing,
    /// `Ahead::mutations` when it started: a change made since may not be in it.
    mutations: u64,
    valid_until: Instant,
}

impl Fs {
    /// A listing was just read through an open directory: keep it for the next opendir, note
    /// it for the order files are read ahead in, and list its subdirectories ahead.
    pub(super) fn listed(self: &Arc<Self>, path: &str, list: &Arc<Listing>, mutations: u64) {
        self.keep_for_reuse(path, list, mutations);
        if self.caching() {
            let mut recent = self.ahead.recent.lock();
            let ticket = recent.ticket();
            let dropped = recent.insert(path.to_string(), Arc::clone(list), list.bytes(), ticket);
            let mut last_opened = self.ahead.last_opened.lock();
            for d in dropped {
                last_opened.remove(&d);
            }
        }
        self.prefetch_children(path, list, PREFETCH_DEPTH);
    }

    /// Keeps a listing just read for `neg_ttl`, for the next opendir of the same directory if
    /// nothing changes through the mount meanwhile: `rm -r` and `find` read each directory
    /// twice in a row.
    fn keep_for_reuse(&self, path: &str, list: &Arc<Listing>, mutations: u64) {
        if !self.caching() {
            return;
        }
        let mut ahead = self.ahead.listings.lock();
        let ready: Option<Arc<Listing>> = Some(Arc::clone(list));
        let ticket = ahead.ticket();
        ahead.insert(
            path.to_string(),
            Prefetch {
                listing: futures::future::ready(ready).boxed().shared(),
                mutations,
                valid_until: list.fetched + self.neg_ttl,
            },
            list.bytes(),
            ticket,
        );
    }

    /// The handle and content of `path` read ahead, if still good: nothing changed through the
    /// mount since it was read, it is recent, and it has the size we show for the file.
    pub(super) async fn take_preloaded(
        &self,
        path: &str,
    ) -> Option<(super::remote::RemoteFile, Arc<Vec<u8>>)> {
        let p = self.ahead.files.lock().remove(path)?;
        if p.mutations != self.ahead.mutations() || p.valid_until <= Instant::now() {
            return None;
        }
        let ready = p.ready.await?;
        if p.mutations != self.ahead.mutations() {
            return None;
        }
        let size = {
            let t = self.nodes.lock();
            t.ino_of(path)
                .and_then(|i| t.get(i))
                .and_then(|n| n.attrs.as_ref()?.size)
        };
        if size != Some(ready.data.len() as u64) {
            return None;
        }
        let f = ready.file.lock().take()?;
        Some((f, Arc::clone(&ready.data)))
    }

    /// Opens and reads ahead the small regular files that follow `path` in its directory's
    /// listing (see `PRELOAD_AHEAD`), once files are being opened in that order (`hit`: this
    /// one was read ahead). What is not used in time is closed.
    pub(super) fn preload_next(self: &Arc<Self>, path: &str, hit: bool) {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (d.to_string(), n),
            None => (String::new(), path),
        };
        let Some(list) = self.ahead.recent.lock().get(&dir).map(Arc::clone) else {
            return;
        };
        if list.fetched + self.ttl <= Instant::now() || !self.handles.busy_inodes().is_empty() {
            return;
        }
        let Some(at) = list.entries.iter().position(|e| e.name == name) else {
            return;
        };
        // Random opens in a big directory would only waste requests: wait for a pattern (or
        // the first entry, where a scan in listing order starts).
        let before = self.ahead.last_opened.lock().insert(dir.clone(), at);
        let in_order = before.is_some_and(|b| at > b && at <= b + PRELOAD_AHEAD);
        if !hit && !in_order && at != 0 {
            return;
        }
        let mutations = self.ahead.mutations();
        let now = Instant::now();
        let mut preloads = self.ahead.files.lock();
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
            let ready = run_shared(&self.rt, async move {
                let f = me
                    .remote
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
            });
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
    pub(super) fn mutated(&self) {
        self.ahead.mutations.fetch_add(1, Ordering::SeqCst);
    }

    /// A change confined to one name: `cpath` in the directory `ppath` is being removed. Only
    /// what shows them is dropped (the listings of `ppath`, of its parent, which shows its
    /// times, and of `cpath`; content read ahead for `cpath`), so `rm -r` keeps the listings
    /// of the directories it has yet to visit. Called before the request and again after it,
    /// which drops a listing taken in between.
    pub(super) fn removing(&self, ppath: &str, cpath: &str) {
        let grandparent = ppath.rsplit_once('/').map_or("", |(d, _)| d);
        let under = format!("{cpath}/");
        self.ahead
            .listings
            .lock()
            .retain(|k, _| k != ppath && k != grandparent && k != cpath && !k.starts_with(&under));
        self.ahead.files.lock().remove(cpath);
    }

    /// The listing of `path` fetched ahead, if it is still as good as a fresh one: started
    /// after the last change made through the mount, and within the cache timeout.
    pub(super) fn take_prefetched(&self, path: &str) -> Option<SharedListing> {
        let p = self.ahead.listings.lock().remove(path)?;
        let unchanged = p.mutations == self.ahead.mutations();
        (unchanged && p.valid_until > Instant::now()).then_some(p.listing)
    }

    /// Starts listing the subdirectories of `dir` (and theirs, `depth` levels down) in the
    /// background, bounded in parallelism and in how many unused listings are kept.
    fn prefetch_children(self: &Arc<Self>, dir: &str, list: &Listing, depth: u32) {
        if depth == 0 || !self.caching() || !list.entries.iter().any(|e| attr::is_dir(&e.attrs)) {
            return;
        }
        // Listings taken while writes are in flight would carry sizes about to change.
        if !self.handles.busy_inodes().is_empty() {
            return;
        }
        let mutations = self.ahead.mutations();
        let now = Instant::now();
        let mut ahead = self.ahead.listings.lock();
        ahead.retain(|_, p| p.mutations == mutations && p.valid_until > now);
        for e in list.entries.iter().filter(|e| attr::is_dir(&e.attrs)) {
            if ahead.full() {
                break;
            }
            let path = child_path(dir, &e.name);
            if ahead.contains_key(&path) {
                continue;
            }
            let me = Arc::clone(self);
            let p = path.clone();
            let ticket = ahead.ticket();
            let listing = run_shared(&self.rt, async move {
                let _permit = me
                    .ahead
                    .listing_permits
                    .clone()
                    .acquire_owned()
                    .await
                    .ok()?;
                if me.ahead.mutations() != mutations {
                    return None;
                }
                let l = me.fetch_listing(&p).await.ok()?;
                // Counted from now on; one bigger than the whole bound is not kept.
                me.ahead.listings.lock().measured(&p, ticket, l.bytes());
                me.prefetch_children(&p, &l, depth - 1);
                Some(l)
            });
            ahead.insert(
                path,
                Prefetch {
                    listing,
                    mutations,
                    valid_until: now + self.ttl,
                },
                0,
                ticket,
            );
        }
    }
}

/// Runs `fetch` now as a task of its own, whether or not anybody asks for the result, and
/// shares the result. A panic in it (a bug) reads as nothing fetched: awaited directly, a
/// shared future that panicked would panic again in every request that awaits it.
fn run_shared<T: Clone + Send + Sync + 'static>(
    rt: &Handle,
    fetch: impl Future<Output = Option<T>> + Send + 'static,
) -> Shared<BoxFuture<'static, Option<T>>> {
    let task = rt.spawn(fetch);
    async move { task.await.ok().flatten() }.boxed().shared()
}

#[cfg(test)]
mod tests {
    use super::run_shared;

    #[test]
    fn a_panic_while_fetching_ahead_reads_as_nothing_fetched() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let shared = run_shared(rt.handle(), async {
            panic!("hostile listing") as Option<u32>
        });
        assert_eq!(rt.block_on(shared.clone()), None);
        assert_eq!(rt.block_on(shared), None, "every later reader too");
    }
}
