//! Values kept by path for a while, bounded in count and in bytes: what the filesystem fetched
//! ahead of use, and in write-back mode the bytes of files the mount wrote. The oldest go first
//! when a bound is reached.

use std::collections::BTreeMap;

/// Values kept by path, bounded in count and in estimated bytes: the oldest go first.
pub struct Kept<V> {
    entries: BTreeMap<String, KeptEntry<V>>,
    /// Key by ticket: oldest first.
    order: BTreeMap<u64, String>,
    bytes: usize,
    next_ticket: u64,
    max_count: usize,
    max_bytes: usize,
}

struct KeptEntry<V> {
    value: V,
    /// Order of insertion (older is smaller), and which insertion a later `measured` means.
    ticket: u64,
    bytes: usize,
}

impl<V> Kept<V> {
    pub fn new(max_count: usize, max_bytes: usize) -> Kept<V> {
        Kept {
            entries: BTreeMap::new(),
            order: BTreeMap::new(),
            bytes: 0,
            next_ticket: 0,
            max_count,
            max_bytes,
        }
    }

    /// The ticket of the next insertion, taken first where a value must know its own.
    pub fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// Whether nothing more fits without dropping something.
    pub fn full(&self) -> bool {
        self.entries.len() >= self.max_count || self.bytes >= self.max_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.entries.get(key).map(|e| &e.value)
    }

    /// Keeps `value` (replacing what `key` held), dropping the oldest entries until the bounds
    /// hold. A value bigger than the whole byte bound is not kept. Returns the keys dropped.
    pub fn insert(&mut self, key: String, value: V, bytes: usize, ticket: u64) -> Vec<String> {
        self.remove(&key);
        if bytes > self.max_bytes {
            return Vec::new();
        }
        let mut dropped = Vec::new();
        while self.entries.len() >= self.max_count || self.bytes + bytes > self.max_bytes {
            match self.oldest() {
                Some(k) => {
                    self.remove(&k);
                    dropped.push(k);
                }
                None => break,
            }
        }
        self.bytes += bytes;
        self.order.insert(ticket, key.clone());
        self.entries.insert(
            key,
            KeptEntry {
                value,
                ticket,
                bytes,
            },
        );
        dropped
    }

    /// The size of what the insertion `ticket` under `key` holds is known now (a listing being
    /// fetched was counted as nothing): count it, dropping the oldest others (or it) to fit.
    pub fn measured(&mut self, key: &str, ticket: u64, bytes: usize) {
        let Some(e) = self.entries.get_mut(key).filter(|e| e.ticket == ticket) else {
            return;
        };
        if bytes > self.max_bytes {
            self.remove(key);
            return;
        }
        self.bytes = self.bytes - e.bytes + bytes;
        e.bytes = bytes;
        while self.bytes > self.max_bytes {
            match self.oldest() {
                Some(k) => {
                    self.remove(&k);
                }
                None => break,
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        let e = self.entries.remove(key)?;
        self.order.remove(&e.ticket);
        self.bytes -= e.bytes;
        Some(e.value)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&str, &V) -> bool) {
        let gone: Vec<String> = self
            .entries
            .iter()
            .filter(|(k, e)| !keep(k, &e.value))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.remove(&k);
        }
    }

    /// Drops the keys that start with `prefix` and that `drop` picks (only those are looked
    /// at: the keys are in order).
    pub fn remove_prefixed(&mut self, prefix: &str, drop: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self
            .entries
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| drop(k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.remove(&k);
        }
    }

    fn oldest(&self) -> Option<String> {
        self.order.values().next().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::Kept;

    #[test]
    fn kept_is_bounded_in_bytes_and_drops_the_oldest_first() {
        let mut k: Kept<u32> = Kept::new(100, 1000);
        for i in 0..10 {
            let t = k.ticket();
            k.insert(format!("d{i}"), i, 300, t);
            assert!(k.bytes <= 1000);
        }
        // The three newest fit in 1000 bytes.
        assert_eq!(k.entries.len(), 3);
        assert!(k.contains_key("d9") && k.contains_key("d7") && !k.contains_key("d6"));
        // Bigger than the whole bound: not kept, and nothing else is dropped for it.
        let t = k.ticket();
        k.insert("huge".into(), 0, 5000, t);
        assert!(!k.contains_key("huge") && k.contains_key("d7"));
    }

    #[test]
    fn a_listing_measured_late_is_counted_then() {
        let mut k: Kept<u32> = Kept::new(100, 1000);
        let (a, b) = (k.ticket(), k.ticket());
        k.insert("a".into(), 1, 0, a);
        k.insert("b".into(), 2, 0, b);
        k.measured("a", a, 600);
        k.measured("b", b, 600);
        // The oldest went to make room for the newer one.
        assert!(!k.contains_key("a") && k.contains_key("b"));
        assert_eq!(k.bytes, 600);
        // A stale ticket (the entry was replaced since) changes nothing.
        k.measured("b", a, 10_000);
        assert_eq!(k.bytes, 600);
        // One bigger than the whole bound is dropped once measured.
        let c = k.ticket();
        k.insert("c".into(), 3, 0, c);
        k.measured("c", c, 5000);
        assert!(!k.contains_key("c"));
        assert!(k.contains_key("b"));
        k.retain(|_, _| false);
        assert_eq!((k.bytes, k.entries.len()), (0, 0));
    }

    #[test]
    fn kept_is_bounded_in_count() {
        let mut k: Kept<u32> = Kept::new(2, usize::MAX);
        for i in 0..5 {
            let t = k.ticket();
            let dropped = k.insert(format!("d{i}"), i, 1, t);
            assert!(i < 2 || dropped == vec![format!("d{}", i - 2)]);
        }
        assert_eq!(k.entries.len(), 2);
    }

    #[test]
    fn removing_by_prefix_touches_only_what_is_picked() {
        let mut k: Kept<u32> = Kept::new(100, usize::MAX);
        for (i, key) in ["a", "a/b", "a/b/c", "ab", "b"].into_iter().enumerate() {
            let t = k.ticket();
            k.insert(key.into(), i as u32, 10, t);
        }
        k.remove_prefixed("a", |key| key == "a" || key.starts_with("a/"));
        assert!(!k.contains_key("a") && !k.contains_key("a/b") && !k.contains_key("a/b/c"));
        assert!(k.contains_key("ab") && k.contains_key("b"));
        assert_eq!(k.bytes, 20);
        // The order forgets them too: the oldest left is "ab".
        assert_eq!(k.oldest().as_deref(), Some("ab"));
    }
}
