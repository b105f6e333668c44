//! The inode table: which remote path each inode number stands for, how many lookups the kernel
//! holds on it, and what we cache about it (attributes, and for directories which names exist).
//!
//! Inode numbers are never reused. A rename moves the entry (and everything below it) so open
//! files and cached dentries keep their inode; an unlinked or replaced entry stays as an orphan
//! without a path until the kernel forgets it. An entry unlinked while open keeps a path: the
//! reserved name it was hidden under (`hidden`), until its last release removes it.
//!
//! Bounded: the kernel holds a lookup on every name it has seen (readdirplus entries count)
//! and forgets them only under memory pressure, so an `ls -lR` of millions of names would
//! keep a node for each. Past `NODES_MAX` nodes, a thread of the mount (`Trimmer`) asks the
//! kernel to drop the least recently looked-up entries that nothing needs (FUSE_NOTIFY_INVAL_
//! ENTRY); the kernel then sends FORGET for them and `forget` drops them. Recency is a stamp
//! per node from one counter, set on lookup and getattr; a trim finds the oldest with one
//! partial selection (`select_nth_unstable`) over the table, and trims a tenth of the budget at
//! once, so the scan costs a few steps per inserted name.
//!
//! Ours before the server's: what a write, truncate or setattr through the mount did to an
//! inode's attributes is known before the server has it, and a server answer (a stat, a
//! listing) taken while such a change was on its way shows the file as it was. So a server
//! answer replaces cached attributes only if nothing changed them locally since it was asked
//! for and the inode had no write in flight then or now (`AttrTicket`); otherwise ours are
//! kept and shown. Without this a listing fetched across a reconnect, before the resent
//! writes landed, shrank the size an appender had just given the file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use fuser::{INodeNo, Notifier};

use crate::sftp::FileAttributes;

pub const ROOT: u64 = 1;

/// Nodes the table holds before the oldest are trimmed (README, limits: ~1 KiB each with
/// 200-byte names, so ~100 MiB at most).
pub const NODES_MAX: usize = 100_000;
/// A trim brings the table down to this many nodes (one trim per `NODES_MAX / 10` names).
const NODES_AFTER_TRIM: usize = NODES_MAX - NODES_MAX / 10;
/// How often the trimmer looks at the table's size.
const TRIM_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct Node {
    /// Path relative to the mount root ("" for the root); `None` once unlinked or replaced.
    pub path: Option<String>,
    pub nlookup: u64,
    /// Raw attributes as the server last reported them (or as our own changes made them).
    pub attrs: Option<FileAttributes>,
    /// Until when `attrs` may be served without asking the server.
    pub fresh_until: Option<Instant>,
    /// Set when we changed the inode's metadata: shown ctime is at least this.
    pub ctime_floor: Option<SystemTime>,
    /// For directories: the complete set of names, valid until the instant (answers negative
    /// lookups without a round trip, e.g. while unpacking into a directory we just listed or
    /// created).
    pub listing: Option<(HashSet<String>, Instant)>,
    /// Link count, when a listing or our own link() told us (SFTP v3 attributes have none).
    pub nlink: Option<u32>,
    /// `path` is a reserved name this entry was hidden under when it was unlinked while open:
    /// it goes at the last release.
    pub hidden: bool,
    /// When the kernel last looked the entry up or asked for its attributes (`Inodes::clock`).
    stamp: u64,
    /// `Inodes::epoch` at our last change to `attrs` (see `AttrTicket`).
    changed: u64,
}

/// Taken before asking the server for attributes: the answer may replace an inode's cached
/// attributes only if `AttrTicket::trusts` it (the module's rule).
#[derive(Clone, Debug, Default)]
pub struct AttrTicket {
    epoch: u64,
    /// Inodes with writes in flight when the question was sent.
    busy: HashSet<u64>,
}

impl Node {
    fn new(path: String) -> Node {
        Node {
            path: Some(path),
            nlookup: 0,
            attrs: None,
            fresh_until: None,
            ctime_floor: None,
            listing: None,
            nlink: None,
            hidden: false,
            stamp: 0,
            changed: 0,
        }
    }

    pub fn fresh_attrs(&self, now: Instant) -> Option<&FileAttributes> {
        match (self.fresh_until, &self.attrs) {
            (Some(until), Some(a)) if until > now => Some(a),
            _ => None,
        }
    }

    /// Forgets that the cached attributes are current (their values stay, to fill in fields a
    /// partial setattr must still send).
    pub fn stale(&mut self) {
        self.fresh_until = None;
    }
}

pub fn child_path(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

#[derive(Debug)]
pub struct Inodes {
    nodes: HashMap<u64, Node>,
    by_path: BTreeMap<String, u64>,
    next: u64,
    /// Recency counter for `Node::stamp`.
    clock: u64,
    /// Counts our own attribute changes (`Node::changed`, `AttrTicket`).
    epoch: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        Self::new()
    }
}

impl Inodes {
    pub fn new() -> Inodes {
        let mut nodes = HashMap::new();
        let mut root = Node::new(String::new());
        root.nlookup = 1;
        nodes.insert(ROOT, root);
        let mut by_path = BTreeMap::new();
        by_path.insert(String::new(), ROOT);
        Inodes {
            nodes,
            by_path,
            next: ROOT + 1,
            clock: 0,
            epoch: 0,
        }
    }

    /// A ticket for a question about attributes sent now; `busy`: the inodes with writes in
    /// flight now.
    pub fn ticket(&self, busy: HashSet<u64>) -> AttrTicket {
        AttrTicket {
            epoch: self.epoch,
            busy,
        }
    }

    /// Our own change to `ino`'s attributes: answers asked for before it are older.
    pub fn changed_locally(&mut self, ino: u64) {
        self.epoch += 1;
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.changed = self.epoch;
        }
    }

    /// Whether a server answer about `ino` taken with `ticket` may replace what we hold;
    /// `busy_now`: the inodes with writes in flight now.
    pub fn trusts(&self, ino: u64, ticket: &AttrTicket, busy_now: &HashSet<u64>) -> bool {
        let changed = self.nodes.get(&ino).map_or(0, |n| n.changed);
        changed <= ticket.epoch && !busy_now.contains(&ino) && !ticket.busy.contains(&ino)
    }

    /// Records a server answer about `ino` if `trusts` allows, and returns the attributes to
    /// show: the answer, or ours when ours are newer.
    pub fn offer(
        &mut self,
        ino: u64,
        answer: FileAttributes,
        fresh: Option<Instant>,
        ticket: &AttrTicket,
        busy_now: &HashSet<u64>,
    ) -> FileAttributes {
        let trusted = self.trusts(ino, ticket, busy_now);
        let Some(node) = self.nodes.get_mut(&ino) else {
            return answer;
        };
        match &node.attrs {
            Some(ours) if !trusted => ours.clone(),
            _ => {
                node.attrs = Some(answer.clone());
                node.fresh_until = fresh;
                answer
            }
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    pub fn path(&self, ino: u64) -> Option<String> {
        self.nodes.get(&ino)?.path.clone()
    }

    pub fn ino_of(&self, path: &str) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    pub fn node_at(&mut self, path: &str) -> Option<&mut Node> {
        let ino = *self.by_path.get(path)?;
        self.nodes.get_mut(&ino)
    }

    /// The inode for `path`, created (with no lookups counted) if needed.
    pub fn ensure(&mut self, path: &str) -> u64 {
        if let Some(ino) = self.by_path.get(path) {
            return *ino;
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(ino, Node::new(path.to_string()));
        self.by_path.insert(path.to_string(), ino);
        ino
    }

    /// Counts one kernel lookup of `path` and records its attributes; returns the inode.
    /// For an object we just made or moved: these attributes are ours (see `changed_locally`).
    pub fn looked_up(&mut self, path: &str, attrs: FileAttributes, fresh: Option<Instant>) -> u64 {
        let ino = self.count_lookup(path);
        let node = self.nodes.get_mut(&ino).expect("counted");
        node.attrs = Some(attrs);
        node.fresh_until = fresh;
        self.changed_locally(ino);
        ino
    }

    /// Counts one kernel lookup of `path` answered by the server (`answer`, asked for with
    /// `ticket`); returns the inode and the attributes to show (see `offer`).
    pub fn looked_up_answer(
        &mut self,
        path: &str,
        answer: FileAttributes,
        fresh: Option<Instant>,
        ticket: &AttrTicket,
        busy_now: &HashSet<u64>,
    ) -> (u64, FileAttributes) {
        let ino = self.count_lookup(path);
        let shown = self.offer(ino, answer, fresh, ticket, busy_now);
        (ino, shown)
    }

    fn count_lookup(&mut self, path: &str) -> u64 {
        let ino = self.ensure(path);
        let node = self.nodes.get_mut(&ino).expect("just ensured");
        node.nlookup += 1;
        self.clock += 1;
        node.stamp = self.clock;
        ino
    }

    /// The kernel used the entry (e.g. asked for its attributes): it is recent.
    pub fn touch(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            self.clock += 1;
            node.stamp = self.clock;
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Up to `want` of the least recently used entries the kernel may be asked to forget:
    /// looked up, with a path in a known parent, not the root, not hidden (its reserved name
    /// must stay until its release), and not a directory with known entries below it (those go
    /// first; a directory's subtree is never cut from under its children).
    pub fn stale_entries(&self, want: usize) -> Vec<StaleEntry> {
        if want == 0 {
            return Vec::new();
        }
        let mut old: Vec<(u64, u64)> = self
            .nodes
            .iter()
            .filter(|(ino, n)| **ino != ROOT && n.nlookup > 0 && !n.hidden && n.path.is_some())
            .map(|(ino, n)| (n.stamp, *ino))
            .collect();
        // Twice what is wanted: some of the oldest are directories still holding children.
        let keep = (want * 2).min(old.len());
        if keep < old.len() {
            old.select_nth_unstable(keep);
            old.truncate(keep);
        }
        old.sort_unstable();
        old.into_iter()
            .filter_map(|(_, ino)| self.entry(ino))
            .take(want)
            .collect()
    }

    fn entry(&self, ino: u64) -> Option<StaleEntry> {
        let path = self.nodes.get(&ino)?.path.as_deref()?;
        let below = format!("{path}/");
        if self
            .by_path
            .range(below.clone()..)
            .next()
            .is_some_and(|(p, _)| p.starts_with(&below))
        {
            return None;
        }
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        Some(StaleEntry {
            ino,
            parent: self.ino_of(parent)?,
            name: name.to_string(),
        })
    }

    /// Drops a node nobody holds (e.g. made for a readdirplus entry that did not fit).
    pub fn drop_if_unused(&mut self, ino: u64) {
        if ino != ROOT && self.nodes.get(&ino).is_some_and(|n| n.nlookup == 0) {
            self.remove(ino);
        }
    }

    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.nlookup = node.nlookup.saturating_sub(n);
        if node.nlookup == 0 {
            self.remove(ino);
        }
    }

    fn remove(&mut self, ino: u64) {
        if let Some(node) = self.nodes.remove(&ino)
            && let Some(p) = node.path
            && self.by_path.get(&p) == Some(&ino)
        {
            self.by_path.remove(&p);
        }
    }

    /// The entry at `path` is gone (unlinked, removed, or replaced by a rename): its inode, and
    /// those of anything below it, become orphans.
    pub fn detach(&mut self, path: &str) {
        for p in self.subtree(path) {
            if let Some(ino) = self.by_path.remove(&p)
                && let Some(node) = self.nodes.get_mut(&ino)
            {
                node.path = None;
                if node.nlookup == 0 {
                    self.nodes.remove(&ino);
                }
            }
        }
    }

    /// Moves `from` (and everything below it) to `to`, replacing whatever was at `to`.
    pub fn rename(&mut self, from: &str, to: &str) {
        if from == to {
            return;
        }
        self.detach(to);
        for old in self.subtree(from) {
            let new = format!("{to}{}", &old[from.len()..]);
            if let Some(ino) = self.by_path.remove(&old) {
                if let Some(node) = self.nodes.get_mut(&ino) {
                    node.path = Some(new.clone());
                }
                self.by_path.insert(new, ino);
            }
        }
    }

    /// The entry at `from` was unlinked while open and renamed to the reserved name `to`.
    pub fn hide(&mut self, from: &str, to: &str) {
        self.rename(from, to);
        if let Some(n) = self.node_at(to) {
            n.hidden = true;
            n.nlink = Some(0);
            n.stale();
        }
    }

    /// Undoes `hide`: the entry at the reserved path `from` is back at `to`.
    pub fn unhide(&mut self, from: &str, to: &str) {
        self.rename(from, to);
        if let Some(n) = self.node_at(to) {
            n.hidden = false;
            n.nlink = None;
            n.stale();
        }
    }

    /// For an entry hidden by `hide` whose last handle was released: forgets its reserved
    /// name and returns it, to be removed (once: a second call returns `None`).
    pub fn take_hidden(&mut self, ino: u64) -> Option<String> {
        let node = self.nodes.get_mut(&ino)?;
        if !std::mem::take(&mut node.hidden) {
            return None;
        }
        let path = node.path.clone()?;
        self.detach(&path);
        Some(path)
    }

    /// `path` and every known path below it.
    fn subtree(&self, path: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.by_path.contains_key(path) {
            out.push(path.to_string());
        }
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        out.extend(
            self.by_path
                .range(prefix.clone()..)
                .take_while(|(p, _)| p.starts_with(&prefix))
                .filter(|(p, _)| !p.is_empty())
                .map(|(p, _)| p.clone()),
        );
        out
    }

    /// Whether a fresh complete listing of the directory `dir` says `name` does not exist.
    pub fn known_absent(&self, dir: u64, name: &str, now: Instant) -> bool {
        match self.nodes.get(&dir).and_then(|n| n.listing.as_ref()) {
            Some((names, until)) if *until > now => !names.contains(name),
            _ => false,
        }
    }

    /// Keeps a directory's cached listing (if any) in step with a change we made: a name
    /// appeared or disappeared. The directory's mtime moves to now, as the server's does, and
    /// its attributes stay as fresh as they were: marking them stale cost a round trip per
    /// file unpacked, since the kernel looks the directory up again for every `mkdir -p` of
    /// it (busybox `tar` does one per entry; an exclusive lookup always reaches us).
    pub fn dir_changed(&mut self, dir_path: &str, added: Option<&str>, removed: Option<&str>) {
        let Some(ino) = self.ino_of(dir_path) else {
            return;
        };
        self.changed_locally(ino);
        let node = self.nodes.get_mut(&ino).expect("indexed by path");
        if let Some(a) = node.attrs.as_mut() {
            a.mtime = Some(super::attr::to_secs(SystemTime::now()));
        }
        if let Some((names, _)) = node.listing.as_mut() {
            if let Some(r) = removed {
                names.remove(r);
            }
            if let Some(a) = added {
                names.insert(a.to_string());
            }
        }
    }
}

/// An entry the kernel may be asked to forget: `name` in the directory `parent`.
#[derive(Debug, PartialEq, Eq)]
pub struct StaleEntry {
    pub ino: u64,
    pub parent: u64,
    pub name: String,
}

/// Keeps the mount's inode table within `NODES_MAX` (see the module doc). Made before the
/// FUSE session takes the filesystem; started with the session's notifier.
pub struct Trimmer {
    pub(super) fs: Weak<super::Fs>,
}

impl Trimmer {
    /// Starts the trimming thread. It is its own thread, never the FUSE loop or a lock holder:
    /// the kernel handles a notification while it is written, and may need the loop to answer
    /// requests (FORGET, a lookup in the same directory) meanwhile. It ends with the mount
    /// (the filesystem gone, or the kernel refusing notifications).
    pub fn start(self, notifier: Notifier) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("inode-trim".into())
            .spawn(move || {
                // A pause after every look, trim or not: the kernel's FORGETs for a trim come
                // asynchronously, and entries it cannot drop must not be asked for in a loop.
                while self.trim_once(&notifier).is_some() {
                    std::thread::sleep(TRIM_EVERY);
                }
            })
            .map(drop)
    }

    /// One look at the table: how many entries the kernel was asked to forget, or `None` when
    /// the mount is gone.
    fn trim_once(&self, notifier: &Notifier) -> Option<usize> {
        let fs: Arc<super::Fs> = self.fs.upgrade()?;
        let victims = {
            let t = fs.nodes.lock();
            if t.len() <= NODES_MAX {
                return Some(0);
            }
            t.stale_entries(t.len() - NODES_AFTER_TRIM)
        };
        // An open file's entry stays: the kernel would keep its inode anyway.
        let victims: Vec<StaleEntry> = victims
            .into_iter()
            .filter(|e| fs.io_of(e.ino).is_none())
            .collect();
        drop(fs);
        let mut sent = 0;
        for e in &victims {
            match notifier.inval_entry(INodeNo(e.parent), OsStr::new(&e.name)) {
                Ok(()) => sent += 1,
                Err(err) => {
                    tracing::debug!(error = %err, "the kernel takes no more notifications");
                    return None;
                }
            }
        }
        Some(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a() -> FileAttributes {
        FileAttributes::default()
    }

    fn sized(n: u64) -> FileAttributes {
        FileAttributes {
            size: Some(n),
            ..FileAttributes::default()
        }
    }

    fn size_of(t: &Inodes, ino: u64) -> Option<u64> {
        t.get(ino)?.attrs.as_ref()?.size
    }

    #[test]
    fn server_answers_older_than_our_changes_do_not_replace_them() {
        let none = HashSet::new();
        let mut t = Inodes::new();
        let f = t.looked_up("f", sized(10), None);
        // Asked before our write gave the file 20 bytes: the answer still says 10.
        let before = t.ticket(HashSet::new());
        t.get_mut(f).unwrap().attrs = Some(sized(20));
        t.changed_locally(f);
        assert_eq!(t.offer(f, sized(10), None, &before, &none).size, Some(20));
        assert_eq!(size_of(&t, f), Some(20));
        let (ino, shown) = t.looked_up_answer("f", sized(10), None, &before, &none);
        assert_eq!((ino, shown.size, size_of(&t, f)), (f, Some(20), Some(20)));
        // Asked after it: the server's word (another client truncated the file, say) wins.
        let after = t.ticket(HashSet::new());
        assert_eq!(t.offer(f, sized(5), None, &after, &none).size, Some(5));
        assert_eq!(size_of(&t, f), Some(5));
    }

    #[test]
    fn server_answers_taken_while_writes_were_in_flight_do_not_replace_ours() {
        let none = HashSet::new();
        let busy: HashSet<u64> = [2].into();
        let mut t = Inodes::new();
        let f = t.looked_up("f", sized(20), None);
        assert_eq!(f, 2);
        // In flight when asked (the write may land after the server answered)...
        let asked = t.ticket(busy.clone());
        assert_eq!(t.offer(f, sized(10), None, &asked, &none).size, Some(20));
        // ... or in flight now.
        let asked = t.ticket(HashSet::new());
        assert_eq!(t.offer(f, sized(10), None, &asked, &busy).size, Some(20));
        assert!(!t.trusts(f, &asked, &busy));
        assert!(t.trusts(f, &asked, &none));
        // Nothing of ours to keep: the answer is what we have.
        let g = t.ensure("g");
        assert_eq!(t.offer(g, sized(7), None, &asked, &busy).size, Some(7));
    }

    #[test]
    fn lookup_forget_cycle() {
        let mut t = Inodes::new();
        let x = t.looked_up("x", a(), None);
        assert_eq!(t.looked_up("x", a(), None), x);
        assert_eq!(t.get(x).unwrap().nlookup, 2);
        t.forget(x, 1);
        assert_eq!(t.ino_of("x"), Some(x));
        t.forget(x, 1);
        assert_eq!(t.ino_of("x"), None);
        assert!(t.get(x).is_none());
        let y = t.looked_up("x", a(), None);
        assert_ne!(x, y, "inode numbers are not reused");
        t.forget(ROOT, 100);
        assert!(t.get(ROOT).is_some());
    }

    #[test]
    fn rename_moves_subtree_and_orphans_target() {
        let mut t = Inodes::new();
        let d = t.looked_up("d", a(), None);
        let f = t.looked_up("d/f", a(), None);
        let g = t.looked_up("d/sub/g", a(), None);
        let other = t.looked_up("dx", a(), None);
        let target = t.looked_up("e", a(), None);
        t.rename("d", "e");
        assert_eq!(t.path(d).as_deref(), Some("e"));
        assert_eq!(t.path(f).as_deref(), Some("e/f"));
        assert_eq!(t.path(g).as_deref(), Some("e/sub/g"));
        assert_eq!(
            t.path(other).as_deref(),
            Some("dx"),
            "siblings sharing a prefix stay"
        );
        assert_eq!(t.path(target), None, "the replaced entry is an orphan");
        assert_eq!(t.ino_of("e"), Some(d));
        assert_eq!(t.ino_of("d/f"), None);
        t.forget(target, 1);
        assert!(t.get(target).is_none());
        // Forgetting an orphan must not remove the new owner of its old path.
        assert_eq!(t.ino_of("e"), Some(d));
    }

    #[test]
    fn detach_keeps_inode_until_forgotten() {
        let mut t = Inodes::new();
        let f = t.looked_up("f", a(), None);
        t.detach("f");
        assert!(t.get(f).is_some());
        assert_eq!(t.ino_of("f"), None);
        let f2 = t.looked_up("f", a(), None);
        assert_ne!(f, f2);
        t.forget(f, 1);
        assert_eq!(t.ino_of("f"), Some(f2));
    }

    #[test]
    fn hidden_entries_move_with_their_directory_and_go_once() {
        let mut t = Inodes::new();
        let d = t.looked_up("d", a(), None);
        let f = t.looked_up("d/f", a(), None);
        t.hide("d/f", "d/.h");
        assert_eq!(t.ino_of("d/f"), None);
        t.rename("d", "e");
        assert_eq!(t.path(f).as_deref(), Some("e/.h"));
        assert_eq!(t.get(f).unwrap().nlink, Some(0));
        assert_eq!(t.take_hidden(f).as_deref(), Some("e/.h"));
        assert_eq!(t.take_hidden(f), None);
        assert_eq!(t.path(f), None);
        assert_eq!(t.take_hidden(d), None, "never hidden");
    }

    #[test]
    fn unused_nodes_are_dropped() {
        let mut t = Inodes::new();
        let x = t.ensure("x");
        t.drop_if_unused(x);
        assert!(t.get(x).is_none());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn listings_answer_negative_lookups() {
        let mut t = Inodes::new();
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(5);
        t.get_mut(ROOT).unwrap().listing = Some((HashSet::from(["a".to_string()]), later));
        assert!(t.known_absent(ROOT, "b", now));
        assert!(!t.known_absent(ROOT, "a", now));
        t.dir_changed("", Some("b"), Some("a"));
        assert!(!t.known_absent(ROOT, "b", now));
        assert!(t.known_absent(ROOT, "a", now));
        assert!(
            !t.known_absent(ROOT, "a", later),
            "expired listings say nothing"
        );
    }

    #[test]
    fn stale_entries_are_the_oldest_leaves() {
        let mut t = Inodes::new();
        let d = t.looked_up("d", a(), None);
        let f = t.looked_up("d/f", a(), None);
        let g = t.looked_up("g", a(), None);
        let h = t.looked_up("h", a(), None);
        t.touch(f);
        let got = t.stale_entries(2);
        // `d` is the oldest but holds `d/f`; `f` was used last.
        assert_eq!(
            got,
            vec![
                StaleEntry {
                    ino: g,
                    parent: ROOT,
                    name: "g".into()
                },
                StaleEntry {
                    ino: h,
                    parent: ROOT,
                    name: "h".into()
                },
            ]
        );
        t.forget(f, 1);
        assert_eq!(
            t.stale_entries(1)[0].ino,
            d,
            "an emptied directory goes too"
        );
        assert_eq!(t.stale_entries(9).len(), 3, "never the root");
        assert_eq!(t.stale_entries(1)[0].parent, ROOT);
        let e = t.stale_entries(9);
        assert!(e.iter().all(|e| e.ino != ROOT));
        assert!(t.stale_entries(0).is_empty());
    }

    #[test]
    fn paths() {
        assert_eq!(child_path("", "a"), "a");
        assert_eq!(child_path("a", "b"), "a/b");
    }
}
