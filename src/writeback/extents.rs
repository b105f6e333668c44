//! The bytes of a file written through the mount and not yet known to be on the server: pure
//! logic, a map of non-overlapping ranges, each with the journal seq of the write it came from
//! (so that a range can be dropped once that write is applied).

use std::collections::BTreeMap;

use bytes::Bytes;

/// One written range.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Extent {
    seq: u64,
    /// Shared with the write's journal record: slices of it, never copies.
    data: Bytes,
}

/// Written ranges of one file, by offset; they never overlap (a later write replaces what it
/// covers of earlier ones).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extents {
    map: BTreeMap<u64, Extent>,
}

/// What a read of a range is made of, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Bytes written through the mount.
    Data(Bytes),
    /// `len` bytes not written through the mount: from the server (or zeros, as the caller
    /// knows).
    Gap { offset: u64, len: u64 },
}

impl Extents {
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.map.values().map(|e| e.data.len() as u64).sum()
    }

    /// Records a write of `data` at `offset` by journal record `seq`.
    pub fn write(&mut self, offset: u64, data: Bytes, seq: u64) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        self.cut(offset, end);
        self.map.insert(offset, Extent { seq, data });
    }

    /// Forgets everything at or past `size` (a truncate).
    pub fn truncate(&mut self, size: u64) {
        self.cut(size, u64::MAX);
    }

    /// Drops the ranges whose write is applied (`seq <= through`) and that end at or before
    /// `below` (bytes past it are not the server's to answer yet).
    pub fn prune(&mut self, through: u64, below: u64) {
        self.map
            .retain(|&off, e| !(e.seq <= through && off + e.data.len() as u64 <= below));
    }

    /// Removes `[start, end)` from every extent, keeping the parts outside it.
    fn cut(&mut self, start: u64, end: u64) {
        let touching: Vec<u64> = self
            .map
            .range(..end)
            .rev()
            .take_while(|(off, e)| *off + e.data.len() as u64 > start)
            .map(|(off, _)| *off)
            .collect();
        for off in touching {
            let e = self.map.remove(&off).expect("listed above");
            let e_end = off + e.data.len() as u64;
            if off < start {
                let keep = (start - off) as usize;
                self.map.insert(
                    off,
                    Extent {
                        seq: e.seq,
                        data: e.data.slice(..keep),
                    },
                );
            }
            if e_end > end {
                let skip = (end - off) as usize;
                self.map.insert(
                    end,
                    Extent {
                        seq: e.seq,
                        data: e.data.slice(skip..),
                    },
                );
            }
        }
    }

    /// `[offset, offset + len)` as written data and gaps between it, in order.
    pub fn read(&self, offset: u64, len: u64) -> Vec<Piece> {
        let end = offset + len;
        let mut out = Vec::new();
        let mut at = offset;
        // The extent that starts before `offset` may reach into the range.
        let first = self
            .map
            .range(..=offset)
            .next_back()
            .filter(|(off, e)| *off + e.data.len() as u64 > offset)
            .map(|(off, _)| *off);
        let start_key = first.unwrap_or(offset);
        for (&off, e) in self.map.range(start_key..end) {
            let e_end = off + e.data.len() as u64;
            if e_end <= at {
                continue;
            }
            if off > at {
                out.push(Piece::Gap {
                    offset: at,
                    len: off - at,
                });
                at = off;
            }
            let from = (at - off) as usize;
            let to = (e_end.min(end) - off) as usize;
            out.push(Piece::Data(e.data.slice(from..to)));
            at = off + to as u64;
        }
        if at < end {
            out.push(Piece::Gap {
                offset: at,
                len: end - at,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Write(u64, Vec<u8>),
        Truncate(u64),
        Prune(u64, u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u64..200, proptest::collection::vec(any::<u8>(), 0..60))
                .prop_map(|(o, d)| Step::Write(o, d)),
            1 => (0u64..250).prop_map(Step::Truncate),
            1 => (0u64..40, 0u64..260).prop_map(|(t, b)| Step::Prune(t, b)),
        ]
    }

    proptest! {
        /// Against a model (per byte: the seq and value of the newest write, or nothing): what
        /// a read returns is the model's, a gap exactly where the model has no byte, and a
        /// prune drops only bytes whose write is applied and below the bound.
        #[test]
        fn reads_match_a_byte_model(steps in proptest::collection::vec(step(), 1..40),
                                    at in 0u64..260, len in 0u64..120) {
            let mut ext = Extents::default();
            let mut model: Vec<Option<(u64, u8)>> = vec![None; 400];
            for (i, s) in steps.iter().enumerate() {
                let seq = i as u64 + 1;
                match s {
                    Step::Write(o, d) => {
                        ext.write(*o, Bytes::copy_from_slice(d), seq);
                        for (k, b) in d.iter().enumerate() {
                            model[*o as usize + k] = Some((seq, *b));
                        }
                    }
                    Step::Truncate(size) => {
                        ext.truncate(*size);
                        for m in model.iter_mut().skip(*size as usize) {
                            *m = None;
                        }
                    }
                    Step::Prune(through, below) => {
                        // Bytes may be dropped only as whole extents; the model drops the same
                        // ones: compute them from the extents before pruning.
                        let before = ext.clone();
                        ext.prune(*through, *below);
                        for (off, e) in &before.map {
                            if !ext.map.contains_key(off) {
                                prop_assert!(e.seq <= *through);
                                prop_assert!(off + e.data.len() as u64 <= *below);
                                for k in 0..e.data.len() {
                                    model[*off as usize + k] = None;
                                }
                            }
                        }
                    }
                }
            }
            let mut got: Vec<Option<u8>> = Vec::new();
            for p in ext.read(at, len) {
                match p {
                    Piece::Data(d) => got.extend(d.into_iter().map(Some)),
                    Piece::Gap { offset, len: l } => {
                        prop_assert_eq!(offset, at + got.len() as u64);
                        prop_assert!(l > 0);
                        got.extend(std::iter::repeat_n(None, l as usize));
                    }
                }
            }
            let want: Vec<Option<u8>> =
                model[at as usize..(at + len) as usize].iter().map(|m| m.map(|(_, b)| b)).collect();
            prop_assert_eq!(got, want);
            // Never overlapping.
            let mut last_end = 0;
            for (off, e) in &ext.map {
                prop_assert!(*off >= last_end);
                prop_assert!(!e.data.is_empty());
                last_end = off + e.data.len() as u64;
            }
        }
    }
}
