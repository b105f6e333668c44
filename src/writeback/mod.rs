//! Write-back mode (issue 13, part 2): changes are made durable in a local journal and answered
//! at once, then replayed to the server in the background.
//!
//! This file owns the change itself, [`Op`], and its byte encoding in the journal. By job:
//! - `journal`: the per-volume journal on local disk (segments of framed records, the applied
//!   checkpoint, recovery after a crash, the `writeback_max` bound);
//! - `schedule`: pure logic: which pending records may go to the server now, and what they
//!   coalesce into;
//! - `replay`: the background writer that sends them through [`crate::sftp::Sftp`].
//!
//! Paths are relative to the volume root, without a leading `/` (`""` is the root itself), as
//! the filesystem knows them when the change is made. The journal stores them as given; the
//! replayer joins them to the remote root.

pub mod extents;
pub mod journal;
pub mod overlay;
pub mod replay;
pub mod schedule;

use bytes::Bytes;

pub use journal::{Journal, JournalError, JournalStats, Record};
pub use overlay::Overlay;
pub use replay::{ReplayStats, Replayer};

/// A time as SETSTAT takes it: seconds since the epoch. The filesystem resolves "now" when the
/// change is made, not when it is replayed.
pub type Seconds = u32;

/// Attributes a setattr changes; `None` leaves one as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attrs {
    /// Permission bits (`& 0o7777`).
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<Seconds>,
    pub mtime: Option<Seconds>,
}

impl Attrs {
    pub fn is_empty(&self) -> bool {
        *self == Attrs::default()
    }

    /// `self` then `later`, as one change: the later value of each field wins.
    pub fn then(self, later: Attrs) -> Attrs {
        Attrs {
            mode: later.mode.or(self.mode),
            uid: later.uid.or(self.uid),
            gid: later.gid.or(self.gid),
            atime: later.atime.or(self.atime),
            mtime: later.mtime.or(self.mtime),
        }
    }
}

/// One change to the volume, as the filesystem made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A new regular file where there was none (O_CREAT on a name that did not exist).
    /// `uid`/`gid`: an ownership to give it, when the filesystem asks for one.
    Create {
        path: String,
        mode: u32,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    /// `data` is shared, not copied, by the journal's pending record, the replayer's batches
    /// and the mount's view of the file: pending bytes are in memory once.
    Write {
        path: String,
        offset: u64,
        data: Bytes,
    },
    Truncate {
        path: String,
        size: u64,
    },
    SetAttr {
        path: String,
        attrs: Attrs,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    /// Replaces `to` if it exists, as rename(2).
    Rename {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    Rmdir {
        path: String,
    },
    /// `path` becomes a symlink holding `target` (any text: it is not a path of the volume).
    Symlink {
        target: String,
        path: String,
    },
    /// `new` becomes another name of `existing`.
    Link {
        existing: String,
        new: String,
    },
}

impl Op {
    /// The volume paths this change touches: both names of a rename or a link.
    pub fn paths(&self) -> Vec<&str> {
        match self {
            Op::Create { path, .. }
            | Op::Write { path, .. }
            | Op::Truncate { path, .. }
            | Op::SetAttr { path, .. }
            | Op::Mkdir { path, .. }
            | Op::Unlink { path }
            | Op::Rmdir { path }
            | Op::Symlink { path, .. } => vec![path],
            Op::Rename { from, to } => vec![from, to],
            Op::Link { existing, new } => vec![existing, new],
        }
    }

    /// What the change is, for logs and Status: its kind and paths, never file data.
    pub fn describe(&self) -> String {
        let kind = match self {
            Op::Create { .. } => "create",
            Op::Write { .. } => "write",
            Op::Truncate { .. } => "truncate",
            Op::SetAttr { .. } => "setattr",
            Op::Mkdir { .. } => "mkdir",
            Op::Rename { .. } => "rename",
            Op::Unlink { .. } => "unlink",
            Op::Rmdir { .. } => "rmdir",
            Op::Symlink { .. } => "symlink",
            Op::Link { .. } => "link",
        };
        format!("{kind} {}", self.paths().join(" -> "))
    }

    /// Bytes of file data the change carries (what `writeback_max` is mostly about).
    pub fn data_len(&self) -> usize {
        match self {
            Op::Write { data, .. } => data.len(),
            _ => 0,
        }
    }

    /// The encoding stored in a journal record.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Op::Create {
                path,
                mode,
                uid,
                gid,
            } => {
                out.push(1);
                put_str(out, path);
                put_u32(out, *mode);
                put_opt(out, *uid);
                put_opt(out, *gid);
            }
            Op::Write { path, offset, data } => {
                out.push(2);
                put_str(out, path);
                out.extend_from_slice(&offset.to_le_bytes());
                put_bytes(out, data);
            }
            Op::Truncate { path, size } => {
                out.push(3);
                put_str(out, path);
                out.extend_from_slice(&size.to_le_bytes());
            }
            Op::SetAttr { path, attrs } => {
                out.push(4);
                put_str(out, path);
                for v in [attrs.mode, attrs.uid, attrs.gid, attrs.atime, attrs.mtime] {
                    put_opt(out, v);
                }
            }
            Op::Mkdir { path, mode } => {
                out.push(5);
                put_str(out, path);
                put_u32(out, *mode);
            }
            Op::Rename { from, to } => {
                out.push(6);
                put_str(out, from);
                put_str(out, to);
            }
            Op::Unlink { path } => {
                out.push(7);
                put_str(out, path);
            }
            Op::Rmdir { path } => {
                out.push(8);
                put_str(out, path);
            }
            Op::Symlink { target, path } => {
                out.push(9);
                put_str(out, target);
                put_str(out, path);
            }
            Op::Link { existing, new } => {
                out.push(10);
                put_str(out, existing);
                put_str(out, new);
            }
        }
    }

    /// The inverse of [`Op::encode`]; `None` for bytes it did not produce.
    pub fn decode(buf: &[u8]) -> Option<Op> {
        let mut r = Reader(buf);
        let op = match r.u8()? {
            1 => Op::Create {
                path: r.str()?,
                mode: r.u32()?,
                uid: r.opt()?,
                gid: r.opt()?,
            },
            2 => Op::Write {
                path: r.str()?,
                offset: r.u64()?,
                data: Bytes::copy_from_slice(r.bytes()?),
            },
            3 => Op::Truncate {
                path: r.str()?,
                size: r.u64()?,
            },
            4 => Op::SetAttr {
                path: r.str()?,
                attrs: Attrs {
                    mode: r.opt()?,
                    uid: r.opt()?,
                    gid: r.opt()?,
                    atime: r.opt()?,
                    mtime: r.opt()?,
                },
            },
            5 => Op::Mkdir {
                path: r.str()?,
                mode: r.u32()?,
            },
            6 => Op::Rename {
                from: r.str()?,
                to: r.str()?,
            },
            7 => Op::Unlink { path: r.str()? },
            8 => Op::Rmdir { path: r.str()? },
            9 => Op::Symlink {
                target: r.str()?,
                path: r.str()?,
            },
            10 => Op::Link {
                existing: r.str()?,
                new: r.str()?,
            },
            _ => return None,
        };
        r.0.is_empty().then_some(op)
    }
}

/// True if `a` is `b`, or one is an ancestor directory of the other (`""` is the root).
pub fn related(a: &str, b: &str) -> bool {
    below_or_at(a, b) || below_or_at(b, a)
}

/// True if `path` is `dir` or inside it.
pub fn below_or_at(path: &str, dir: &str) -> bool {
    dir.is_empty()
        || path == dir
        || (path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/')
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_opt(out: &mut Vec<u8>, v: Option<u32>) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put_u32(out, v);
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// Reads what the `put_*` functions wrote; every read checks the bounds.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    }

    fn opt(&mut self) -> Option<Option<u32>> {
        match self.u8()? {
            0 => Some(None),
            1 => self.u32().map(Some),
            _ => None,
        }
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u64()?).ok()?;
        self.take(n)
    }

    fn str(&mut self) -> Option<String> {
        std::str::from_utf8(self.bytes()?).ok().map(str::to_string)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn any_attrs() -> impl Strategy<Value = Attrs> {
        (
            proptest::option::of(0u32..0o7777),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>()),
        )
            .prop_map(|(mode, uid, gid, atime, mtime)| Attrs {
                mode,
                uid,
                gid,
                atime,
                mtime,
            })
    }

    pub fn any_op() -> impl Strategy<Value = Op> {
        let p = "[a-z/é]{0,12}";
        prop_oneof![
            (
                p,
                any::<u32>(),
                proptest::option::of(any::<u32>()),
                proptest::option::of(any::<u32>())
            )
                .prop_map(|(path, mode, uid, gid)| Op::Create {
                    path,
                    mode,
                    uid,
                    gid
                }),
            (
                p,
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(path, offset, data)| Op::Write {
                    path,
                    offset,
                    data: data.into()
                }),
            (p, any::<u64>()).prop_map(|(path, size)| Op::Truncate { path, size }),
            (p, any_attrs()).prop_map(|(path, attrs)| Op::SetAttr { path, attrs }),
            (p, any::<u32>()).prop_map(|(path, mode)| Op::Mkdir { path, mode }),
            (p, p).prop_map(|(from, to)| Op::Rename { from, to }),
            p.prop_map(|path| Op::Unlink { path }),
            p.prop_map(|path| Op::Rmdir { path }),
            (p, p).prop_map(|(target, path)| Op::Symlink { target, path }),
            (p, p).prop_map(|(existing, new)| Op::Link { existing, new }),
        ]
    }

    proptest! {
        #[test]
        fn ops_round_trip(op in any_op()) {
            let mut buf = Vec::new();
            op.encode(&mut buf);
            prop_assert_eq!(Op::decode(&buf), Some(op));
            // A truncated encoding is refused, never misread.
            for cut in 0..buf.len() {
                prop_assert_eq!(Op::decode(&buf[..cut]), None);
            }
        }
    }

    #[test]
    fn related_paths() {
        assert!(related("a", "a/b"));
        assert!(related("a/b", "a"));
        assert!(related("", "x"));
        assert!(!related("a", "ab"));
        assert!(!related("a/b", "a/c"));
    }
}
