//! Which pending changes may go to the server now, and what they coalesce into. Pure logic: the
//! replayer feeds records in with [`Schedule::push`], takes [`Batch`]es with
//! [`Schedule::ready`] and hands them back with [`Schedule::complete`].
//!
//! Order. A change may go when no earlier change still waiting or in flight touches the same
//! path, an ancestor or a descendant of it (a rename or a link touches both its names). Changes
//! that pass that test touch disjoint subtrees, so they commute: any completion order gives the
//! state the journal's order gives. Hard links break "disjoint paths, disjoint files": every
//! name that was ever one side of a link in this schedule (and where renames took it) counts as
//! one shared path, so changes to such names go one at a time, in order.
//!
//! Coalescing, within the changes to one file path `p` that may be taken together (later ones
//! join the first as long as nothing between them touches `p`; what is between touches other
//! subtrees, so moving them earlier is the same as above):
//! - writes that overlap or touch become one write;
//! - a create and the setattr right after it become one create (mode and owner), setattrs
//!   right after each other become one; not when a mode has setuid/setgid bits, which a chown
//!   or a write clears on the server, so their order matters;
//! - a truncate right after a longer one replaces it;
//! - a file created and then unlinked, with only data changes to it between (no link, no
//!   rename, nothing on its directory), is never sent: the batch has no ops, only seqs. Not when
//!   a record may already be on the server after a crash (`maybe_applied`).
//!
//! A write is never moved past a setattr or the other way round: a write changes the mtime and
//! clears setuid bits, and a setattr's mode can refuse the reopen of a file after a reconnect.

use std::collections::{HashMap, HashSet, VecDeque};

use super::{Attrs, Op, related};

/// Entries looked at per [`Schedule::ready`] call: bounds the work of one call; changes further
/// back wait for the ones ahead.
const SCAN_WINDOW: usize = 2048;
/// Most changes to one file taken into one batch.
const MAX_GROUP_OPS: usize = 512;
/// Most data bytes in one batch.
const MAX_GROUP_BYTES: usize = 64 * 1024 * 1024;
/// Longest write made by merging writes.
const MAX_MERGED_WRITE: usize = 1024 * 1024;

/// Changes sent together: one change, or the coalesced changes to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub id: u64,
    /// Every journal seq the batch stands for (done together when it completes).
    pub seqs: Vec<u64>,
    /// What to send, in order; empty when the changes cancel out.
    pub ops: Vec<Op>,
    /// One of its records may be on the server already (see `Record::maybe_applied`).
    pub maybe_applied: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    op: Op,
    maybe_applied: bool,
}

#[derive(Debug, Default)]
pub struct Schedule {
    queue: VecDeque<Entry>,
    /// Batches sent and not completed: the paths they touch, and whether one is a linked name.
    in_flight: HashMap<u64, (Vec<String>, bool)>,
    /// Names that were ever a side of a hard link (see the module comment).
    linked: HashSet<String>,
    next_id: u64,
}

/// Paths, and every ancestor of each, for the "related to any of these" test in O(depth).
#[derive(Default)]
struct PathSet {
    exact: HashSet<String>,
    ancestors: HashSet<String>,
}

/// The proper ancestors of `p`: `""` then each directory on the way down.
fn ancestors(p: &str) -> impl Iterator<Item = &str> {
    let root = (!p.is_empty()).then_some("");
    root.into_iter()
        .chain(p.match_indices('/').map(move |(i, _)| &p[..i]))
}

impl PathSet {
    fn insert(&mut self, p: &str) {
        for a in ancestors(p) {
            self.ancestors.insert(a.to_string());
        }
        self.exact.insert(p.to_string());
    }

    fn hits(&self, p: &str) -> bool {
        self.exact.contains(p)
            || self.ancestors.contains(p)
            || ancestors(p).any(|a| self.exact.contains(a))
    }
}

/// Changes to a file's data or attributes by its path (what a batch for one file holds).
fn is_file_change(op: &Op) -> bool {
    matches!(
        op,
        Op::Create { .. } | Op::Write { .. } | Op::Truncate { .. } | Op::SetAttr { .. }
    )
}

fn setuid_bits(mode: Option<u32>) -> bool {
    mode.is_some_and(|m| m & 0o6000 != 0)
}

impl Schedule {
    pub fn new() -> Schedule {
        Schedule::default()
    }

    /// Adds the next record, in journal order.
    pub fn push(&mut self, seq: u64, op: Op, maybe_applied: bool) {
        match &op {
            Op::Link { existing, new } => {
                self.linked.insert(existing.clone());
                self.linked.insert(new.clone());
            }
            Op::Rename { from, to } => {
                let moved: Vec<String> = self
                    .linked
                    .iter()
                    .filter(|l| super::below_or_at(l, from))
                    .map(|l| format!("{to}{}", &l[from.len()..]))
                    .collect();
                self.linked.extend(moved);
            }
            _ => {}
        }
        self.queue.push_back(Entry {
            seq,
            op,
            maybe_applied,
        });
    }

    /// True when nothing waits and nothing is in flight.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.in_flight.is_empty()
    }

    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn touches_linked(&self, paths: &[&str]) -> bool {
        !self.linked.is_empty()
            && paths
                .iter()
                .any(|p| self.linked.iter().any(|l| related(l, p)))
    }

    /// Up to `limit` batches that may be sent now; they count as in flight until `complete`.
    pub fn ready(&mut self, limit: usize) -> Vec<Batch> {
        let mut blocked = PathSet::default();
        let mut linked_blocked = false;
        for (paths, linked) in self.in_flight.values() {
            for p in paths {
                blocked.insert(p);
            }
            linked_blocked |= linked;
        }
        let window = self.queue.len().min(SCAN_WINDOW);
        let mut taken = vec![false; window];
        let mut out = Vec::new();
        for i in 0..window {
            if out.len() >= limit {
                break;
            }
            if taken[i] {
                continue;
            }
            let e = &self.queue[i];
            let paths = e.op.paths();
            let linked = self.touches_linked(&paths);
            if paths.iter().any(|p| blocked.hits(p)) || (linked && linked_blocked) {
                for p in paths {
                    blocked.insert(p);
                }
                linked_blocked |= linked;
                continue;
            }
            let (members, cancelled) = self.group(i, linked, &taken, window);
            let mut batch = Batch {
                id: self.next_id,
                seqs: Vec::with_capacity(members.len() + 1),
                ops: Vec::new(),
                maybe_applied: false,
            };
            self.next_id += 1;
            for &m in members.iter().chain(cancelled.iter()) {
                taken[m] = true;
                batch.seqs.push(self.queue[m].seq);
                batch.maybe_applied |= self.queue[m].maybe_applied;
            }
            batch.seqs.sort_unstable();
            if cancelled.is_none() {
                batch.ops = coalesce(members.iter().map(|&m| self.queue[m].op.clone()));
            }
            let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
            for p in &paths {
                blocked.insert(p);
            }
            linked_blocked |= linked;
            self.in_flight.insert(batch.id, (paths, linked));
            out.push(batch);
        }
        let mut i = 0;
        self.queue.retain(|_| {
            let keep = !taken.get(i).copied().unwrap_or(false);
            i += 1;
            keep
        });
        out
    }

    /// The entries that go with entry `i` (itself first), and the unlink that cancels them all.
    fn group(
        &self,
        i: usize,
        linked: bool,
        taken: &[bool],
        window: usize,
    ) -> (Vec<usize>, Option<usize>) {
        let lead = &self.queue[i];
        let mut members = vec![i];
        if !is_file_change(&lead.op) {
            return (members, None);
        }
        let p = lead.op.paths()[0];
        let creates = matches!(lead.op, Op::Create { .. });
        let mut maybe = lead.maybe_applied;
        let mut bytes = lead.op.data_len();
        for (j, e) in self.queue.iter().enumerate().take(window).skip(i + 1) {
            if taken[j] {
                continue;
            }
            let paths = e.op.paths();
            let touches =
                paths.iter().any(|q| related(q, p)) || (linked && self.touches_linked(&paths));
            if !touches {
                continue;
            }
            if is_file_change(&e.op)
                && paths[0] == p
                && members.len() < MAX_GROUP_OPS
                && bytes + e.op.data_len() <= MAX_GROUP_BYTES
            {
                members.push(j);
                bytes += e.op.data_len();
                maybe |= e.maybe_applied;
                continue;
            }
            let unlinks = matches!(&e.op, Op::Unlink { path } if path == p);
            if creates && unlinks && !maybe && !e.maybe_applied {
                return (members, Some(j));
            }
            break;
        }
        (members, None)
    }

    /// Batch `id` is done (applied, or skipped for good): what waited on it may go.
    pub fn complete(&mut self, id: u64) {
        self.in_flight.remove(&id);
    }
}

/// Merges what may be merged in a run of changes to one file (see the module comment).
pub fn coalesce(ops: impl IntoIterator<Item = Op>) -> Vec<Op> {
    let mut out: Vec<Op> = Vec::new();
    for op in ops {
        let rest = match out.last_mut() {
            Some(prev) => merge(prev, op),
            None => Some(op),
        };
        out.extend(rest);
    }
    out
}

/// Folds `next` into `prev` where that changes nothing; returns what is left of `next`.
fn merge(prev: &mut Op, next: Op) -> Option<Op> {
    match (prev, next) {
        (
            Op::Write {
                offset: o1,
                data: d1,
                ..
            },
            Op::Write {
                path,
                offset: o2,
                data: d2,
            },
        ) => {
            let (e1, e2) = (*o1 + d1.len() as u64, o2 + d2.len() as u64);
            let start = (*o1).min(o2);
            let end = e1.max(e2);
            if o2 > e1 || e2 < *o1 || (end - start) as usize > MAX_MERGED_WRITE {
                return Some(Op::Write {
                    path,
                    offset: o2,
                    data: d2,
                });
            }
            let mut merged = vec![0u8; (end - start) as usize];
            let a = (*o1 - start) as usize;
            merged[a..a + d1.len()].copy_from_slice(d1);
            let b = (o2 - start) as usize;
            merged[b..b + d2.len()].copy_from_slice(&d2);
            *o1 = start;
            *d1 = merged.into();
            None
        }
        (Op::SetAttr { attrs: a1, .. }, Op::SetAttr { path, attrs: a2 }) => {
            if setuid_bits(a1.mode) || setuid_bits(a2.mode) {
                return Some(Op::SetAttr { path, attrs: a2 });
            }
            *a1 = a1.then(a2);
            None
        }
        (Op::Create { mode, uid, gid, .. }, Op::SetAttr { path, attrs }) => {
            if setuid_bits(Some(*mode)) || setuid_bits(attrs.mode) {
                return Some(Op::SetAttr { path, attrs });
            }
            *mode = attrs.mode.unwrap_or(*mode);
            *uid = attrs.uid.or(*uid);
            *gid = attrs.gid.or(*gid);
            let times = Attrs {
                atime: attrs.atime,
                mtime: attrs.mtime,
                ..Attrs::default()
            };
            (!times.is_empty()).then_some(Op::SetAttr { path, attrs: times })
        }
        (Op::Truncate { size: s1, .. }, Op::Truncate { path, size: s2 }) => {
            if s2 > *s1 {
                return Some(Op::Truncate { path, size: s2 });
            }
            *s1 = s2;
            None
        }
        (_, next) => Some(next),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// What a file, directory or symlink carries that the tests compare.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Meta {
        pub mode: u32,
        pub uid: u32,
        pub gid: u32,
        pub atime: u32,
        pub mtime: u32,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Node {
        File(u64),
        Dir(Meta),
        Symlink(String, Meta),
    }

    /// An in-memory filesystem with POSIX semantics close enough to sftp-server's for ordering:
    /// names, hard-linked inodes, and what a write or a chown does to setuid bits.
    #[derive(Debug, Clone, Default)]
    pub struct Model {
        pub names: BTreeMap<String, Node>,
        pub inodes: BTreeMap<u64, (Vec<u8>, Meta)>,
        next_ino: u64,
    }

    fn parent(p: &str) -> &str {
        p.rfind('/').map_or("", |i| &p[..i])
    }

    impl Model {
        fn is_dir(&self, p: &str) -> bool {
            p.is_empty() || matches!(self.names.get(p), Some(Node::Dir(_)))
        }

        fn free(&self, p: &str) -> bool {
            !p.is_empty() && self.is_dir(parent(p)) && !self.names.contains_key(p)
        }

        fn file(&mut self, p: &str) -> Option<&mut (Vec<u8>, Meta)> {
            match self.names.get(p) {
                Some(Node::File(ino)) => self.inodes.get_mut(ino),
                _ => None,
            }
        }

        fn children(&self, p: &str) -> Vec<String> {
            self.names
                .keys()
                .filter(|k| k.len() > p.len() && super::super::below_or_at(k, p))
                .cloned()
                .collect()
        }

        /// Applies `op` as the server would; `Err` where the filesystem would have refused it.
        pub fn apply(&mut self, op: &Op) -> Result<(), String> {
            let bad = || Err(format!("refused: {op:?}"));
            match op {
                Op::Create {
                    path,
                    mode,
                    uid,
                    gid,
                } => {
                    if !self.free(path) {
                        return bad();
                    }
                    self.next_ino += 1;
                    let meta = Meta {
                        mode: *mode,
                        uid: uid.unwrap_or(0),
                        gid: gid.unwrap_or(0),
                        ..Meta::default()
                    };
                    self.inodes.insert(self.next_ino, (Vec::new(), meta));
                    self.names.insert(path.clone(), Node::File(self.next_ino));
                }
                Op::Write { path, offset, data } => {
                    let Some((d, meta)) = self.file(path) else {
                        return bad();
                    };
                    let end = *offset as usize + data.len();
                    if d.len() < end {
                        d.resize(end, 0);
                    }
                    d[*offset as usize..end].copy_from_slice(data);
                    meta.mode &= !0o6000;
                }
                Op::Truncate { path, size } => {
                    let Some((d, _)) = self.file(path) else {
                        return bad();
                    };
                    d.resize(*size as usize, 0);
                }
                Op::SetAttr { path, attrs } => {
                    let is_link = matches!(self.names.get(path), Some(Node::Symlink(..)));
                    let is_file = matches!(self.names.get(path), Some(Node::File(_)));
                    if (is_link && attrs.mode.is_some()) || !self.names.contains_key(path) {
                        return bad();
                    }
                    let meta = match self.names.get(path).cloned() {
                        Some(Node::File(ino)) => &mut self.inodes.get_mut(&ino).unwrap().1,
                        _ => match self.names.get_mut(path) {
                            Some(Node::Dir(m)) | Some(Node::Symlink(_, m)) => m,
                            _ => return bad(),
                        },
                    };
                    // sftp-server's order: mode, times, then owner (which clears setuid bits).
                    if let Some(m) = attrs.mode {
                        meta.mode = m;
                    }
                    meta.atime = attrs.atime.unwrap_or(meta.atime);
                    meta.mtime = attrs.mtime.unwrap_or(meta.mtime);
                    if attrs.uid.is_some() || attrs.gid.is_some() {
                        meta.uid = attrs.uid.unwrap_or(meta.uid);
                        meta.gid = attrs.gid.unwrap_or(meta.gid);
                        if is_file {
                            meta.mode &= !0o6000;
                        }
                    }
                }
                Op::Mkdir { path, mode } => {
                    if !self.free(path) {
                        return bad();
                    }
                    let meta = Meta {
                        mode: *mode,
                        ..Meta::default()
                    };
                    self.names.insert(path.clone(), Node::Dir(meta));
                }
                Op::Rename { from, to } => {
                    let Some(node) = self.names.get(from).cloned() else {
                        return bad();
                    };
                    if from == to {
                        return Ok(());
                    }
                    if to.is_empty()
                        || super::super::below_or_at(to, from)
                        || !self.is_dir(parent(to))
                    {
                        return bad();
                    }
                    match (&node, self.names.get(to)) {
                        (_, None) => {}
                        (Node::Dir(_), Some(Node::Dir(_))) if self.children(to).is_empty() => {}
                        (
                            Node::File(_) | Node::Symlink(..),
                            Some(Node::File(_) | Node::Symlink(..)),
                        ) => {}
                        _ => return bad(),
                    }
                    let moved: Vec<String> = self.children(from);
                    self.names.remove(to);
                    self.names.remove(from);
                    self.names.insert(to.clone(), node);
                    for k in moved {
                        let n = self.names.remove(&k).unwrap();
                        self.names.insert(format!("{to}{}", &k[from.len()..]), n);
                    }
                }
                Op::Unlink { path } => match self.names.get(path) {
                    Some(Node::File(_) | Node::Symlink(..)) => {
                        self.names.remove(path);
                    }
                    _ => return bad(),
                },
                Op::Rmdir { path } => {
                    if path.is_empty()
                        || !matches!(self.names.get(path), Some(Node::Dir(_)))
                        || !self.children(path).is_empty()
                    {
                        return bad();
                    }
                    self.names.remove(path);
                }
                Op::Symlink { target, path } => {
                    if !self.free(path) {
                        return bad();
                    }
                    self.names
                        .insert(path.clone(), Node::Symlink(target.clone(), Meta::default()));
                }
                Op::Link { existing, new } => {
                    let Some(Node::File(ino)) = self.names.get(existing).cloned() else {
                        return bad();
                    };
                    if !self.free(new) {
                        return bad();
                    }
                    self.names.insert(new.clone(), Node::File(ino));
                }
            }
            Ok(())
        }

        /// The state by name: what each name holds, and which names share a file.
        pub fn view(&self) -> (BTreeMap<String, String>, Vec<Vec<String>>) {
            let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
            let names = self
                .names
                .iter()
                .map(|(k, n)| {
                    let v = match n {
                        Node::File(ino) => {
                            by_ino.entry(*ino).or_default().push(k.clone());
                            format!("{:?}", self.inodes[ino])
                        }
                        other => format!("{other:?}"),
                    };
                    (k.clone(), v)
                })
                .collect();
            let mut links: Vec<Vec<String>> = by_ino.into_values().collect();
            links.sort();
            (names, links)
        }
    }

    const NAMES: [&str; 8] = ["a", "b", "a/b", "a/c", "b/a", "b/c", "a/b/c", "c"];

    /// A raw op choice; turned into a valid change (one the filesystem would make) or dropped.
    fn any_choice() -> impl Strategy<Value = (u8, usize, usize, u16, u8, u8)> {
        (
            0u8..10,
            0..NAMES.len(),
            0..NAMES.len(),
            0u16..40,
            0u8..8,
            0u8..4,
        )
    }

    fn make_op((kind, i, j, n, len, m): (u8, usize, usize, u16, u8, u8)) -> Op {
        let p = NAMES[i].to_string();
        let q = NAMES[j].to_string();
        let modes = [0o644, 0o755, 0o4755, 0o600];
        let mode = modes[m as usize];
        match kind {
            0 => Op::Create {
                path: p,
                mode,
                uid: (m == 1).then_some(7),
                gid: None,
            },
            1 | 2 => Op::Write {
                path: p,
                offset: u64::from(n % 12),
                data: vec![n as u8; len as usize].into(),
            },
            3 => Op::Truncate {
                path: p,
                size: u64::from(n % 10),
            },
            4 => Op::SetAttr {
                path: p,
                attrs: Attrs {
                    mode: (m != 0).then_some(mode),
                    uid: (n % 3 == 0).then_some(u32::from(n)),
                    gid: None,
                    atime: None,
                    mtime: (n % 2 == 0).then_some(u32::from(n)),
                },
            },
            5 => Op::Mkdir { path: p, mode },
            6 => Op::Rename { from: p, to: q },
            7 => Op::Unlink { path: p },
            8 => {
                if n % 2 == 0 {
                    Op::Rmdir { path: p }
                } else {
                    Op::Symlink { target: q, path: p }
                }
            }
            _ => Op::Link {
                existing: p,
                new: q,
            },
        }
    }

    /// The changes among `choices` that are valid in order from an empty volume.
    fn valid_ops(choices: Vec<(u8, usize, usize, u16, u8, u8)>) -> (Vec<Op>, Model) {
        let mut model = Model::default();
        let mut ops = Vec::new();
        for c in choices {
            let op = make_op(c);
            if model.apply(&op).is_ok() {
                ops.push(op);
            }
        }
        (ops, model)
    }

    /// Runs `ops` through a schedule, pushing, dispatching and completing in the order `rng`
    /// picks, applying each batch to a model when it completes.
    fn scheduled(ops: &[Op], mut rng: u64) -> Result<Model, String> {
        let mut next = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            rng >> 33
        };
        let mut s = Schedule::new();
        let mut model = Model::default();
        let mut pushed = 0;
        let mut in_flight: Vec<Batch> = Vec::new();
        let mut seen: Vec<u64> = Vec::new();
        loop {
            match next() % 3 {
                0 if pushed < ops.len() => {
                    pushed += 1;
                    s.push(pushed as u64, ops[pushed - 1].clone(), false);
                }
                1 => {
                    let limit = 1 + (next() % 4) as usize;
                    in_flight.extend(s.ready(limit));
                }
                _ if !in_flight.is_empty() => {
                    let k = (next() % in_flight.len() as u64) as usize;
                    let b = in_flight.swap_remove(k);
                    for op in &b.ops {
                        model.apply(op).map_err(|e| format!("{e} in {b:?}"))?;
                    }
                    seen.extend(&b.seqs);
                    s.complete(b.id);
                }
                _ => {
                    if pushed == ops.len() && in_flight.is_empty() {
                        in_flight.extend(s.ready(usize::MAX));
                        if in_flight.is_empty() {
                            break;
                        }
                    }
                }
            }
        }
        if !s.is_idle() {
            return Err("changes left behind".into());
        }
        seen.sort_unstable();
        if seen != (1..=ops.len() as u64).collect::<Vec<_>>() {
            return Err(format!("seqs done: {seen:?}"));
        }
        Ok(model)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any completion order gives the state of applying the changes one by one.
        #[test]
        fn schedule_matches_applying_in_order(
            choices in proptest::collection::vec(any_choice(), 0..60),
            seed in any::<u64>(),
        ) {
            let (ops, want) = valid_ops(choices);
            let got = scheduled(&ops, seed).map_err(TestCaseError::fail)?;
            prop_assert_eq!(got.view(), want.view(), "ops: {:#?}", ops);
        }

        /// Coalescing alone keeps the result of a run of changes to one file.
        #[test]
        fn coalescing_keeps_the_result(
            choices in proptest::collection::vec((0u8..5, 0u16..40, 0u8..8, 0u8..4), 0..30),
        ) {
            let mut ops = vec![Op::Create { path: "a".into(), mode: 0o644, uid: None, gid: None }];
            ops.extend(choices.into_iter().map(|(k, n, l, m)| make_op((k, 0, 0, n, l, m))));
            ops.retain(is_file_change);
            ops.truncate(1 + ops.iter().skip(1).take_while(|o| !matches!(o, Op::Create { .. })).count());
            let mut want = Model::default();
            for op in &ops {
                want.apply(op).unwrap();
            }
            let merged = coalesce(ops.clone());
            prop_assert!(merged.len() <= ops.len());
            let mut got = Model::default();
            for op in &merged {
                got.apply(op).unwrap();
            }
            prop_assert_eq!(got.view(), want.view());
        }
    }

    #[test]
    fn untar_pattern_coalesces() {
        let mut s = Schedule::new();
        let p = || "d/f".to_string();
        s.push(
            1,
            Op::Mkdir {
                path: "d".into(),
                mode: 0o755,
            },
            false,
        );
        s.push(
            2,
            Op::Create {
                path: p(),
                mode: 0o644,
                uid: None,
                gid: None,
            },
            false,
        );
        s.push(
            3,
            Op::Write {
                path: p(),
                offset: 0,
                data: b"abc".to_vec().into(),
            },
            false,
        );
        s.push(
            4,
            Op::Write {
                path: p(),
                offset: 3,
                data: b"def".to_vec().into(),
            },
            false,
        );
        let own = Attrs {
            uid: Some(1),
            gid: Some(2),
            ..Attrs::default()
        };
        s.push(
            5,
            Op::SetAttr {
                path: p(),
                attrs: own,
            },
            false,
        );
        let mode = Attrs {
            mode: Some(0o600),
            ..Attrs::default()
        };
        s.push(
            6,
            Op::SetAttr {
                path: p(),
                attrs: mode,
            },
            false,
        );
        let times = Attrs {
            atime: Some(5),
            mtime: Some(6),
            ..Attrs::default()
        };
        s.push(
            7,
            Op::SetAttr {
                path: p(),
                attrs: times,
            },
            false,
        );
        s.push(
            8,
            Op::Create {
                path: "e".into(),
                mode: 0o644,
                uid: None,
                gid: None,
            },
            false,
        );
        s.push(
            9,
            Op::Write {
                path: "e".into(),
                offset: 0,
                data: b"x".to_vec().into(),
            },
            false,
        );
        s.push(10, Op::Unlink { path: "e".into() }, false);
        let b = s.ready(10);
        // d first; d/f waits for it; e cancels out.
        assert_eq!(b.len(), 2);
        assert_eq!(
            b[0].ops,
            vec![Op::Mkdir {
                path: "d".into(),
                mode: 0o755
            }]
        );
        assert_eq!(b[1].seqs, vec![8, 9, 10]);
        assert!(b[1].ops.is_empty());
        assert!(s.ready(10).is_empty(), "d/f waits for its directory");
        s.complete(b[0].id);
        let b = s.ready(10);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].seqs, vec![2, 3, 4, 5, 6, 7]);
        let all = Attrs {
            mode: Some(0o600),
            uid: Some(1),
            gid: Some(2),
            atime: Some(5),
            mtime: Some(6),
        };
        assert_eq!(
            b[0].ops,
            vec![
                Op::Create {
                    path: p(),
                    mode: 0o644,
                    uid: None,
                    gid: None
                },
                Op::Write {
                    path: p(),
                    offset: 0,
                    data: b"abcdef".to_vec().into()
                },
                Op::SetAttr {
                    path: p(),
                    attrs: all
                },
            ]
        );
    }
}
