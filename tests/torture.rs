//! The torture test (issue 11): thousands of random file operations run on a real mount (ours,
//! over a real OpenSSH server) and, identically, on a local reference directory, with SSH
//! sessions killed and the server restarted at random steps. The local filesystem is the
//! model: every outcome (bytes, counts, errnos) must be the same on both sides, and after every
//! step the mount must show the reference's names, sizes and content and the server's disk
//! must hold what was closed or fsynced.
//!
//! A few file names in two directories, so operations collide: several handles on one file,
//! renames over open files, unlinks of open files, writes across 128 KiB boundaries and past
//! the end, O_APPEND, truncation both ways, mmap reads, fsync, close and reopen.
//!
//! A divergence stops the run and prints the seed, the step, the operation and the log before
//! it, and the command that replays it:
//! `TORTURE_SEED=... TORTURE_STEPS=... cargo test --release --test torture -- --nocapture`.
//! Settings (environment): `TORTURE_SEED` (default fixed; `random` picks one), `TORTURE_STEPS`
//! (default 2000), `TORTURE_FAULT_EVERY` (mean steps between faults; 0 = none),
//! `TORTURE_OPS` (comma-separated operation kinds to run, default all: see `Kind`).
//!
//! Two tests, both in CI: one without faults and one with a fault every ~100 steps (2,000 steps
//! each by default). The long run, documented in tests/README.md:
//! `TORTURE_SEED=random TORTURE_STEPS=6000 cargo test --release --test torture -- --exact
//! random_operations_with_faults_match_a_local_reference --nocapture`.

mod common;

use std::collections::{BTreeSet, VecDeque};
use std::ffi::CString;
use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

/// Mount options: a dead link is noticed within ~2 s, and no outage the test makes (at most
/// ~2 s of server downtime plus reconnect backoff) comes near `reconnect_timeout`, so no
/// operation may fail with EIO.
const OPTIONS: &str = "ServerAliveInterval=1,ServerAliveCountMax=2,reconnect_timeout=60";

const DIRS: [&str; 2] = ["a", "b"];
/// The only names operations use: few, so they collide.
const NAMES: [&str; 6] = ["a/x", "a/y", "a/z", "b/x", "b/y", "b/z"];

const DEFAULT_SEED: u64 = 0x7047_7572_6521;
const DEFAULT_STEPS: u64 = 2000;
const DEFAULT_FAULT_EVERY: u64 = 100;

/// The read and read-ahead unit of the mount: offsets near its multiples are favoured.
const CHUNK: u64 = 128 * 1024;
/// Writes and extensions stay below this size (files stay cheap to compare).
const MAX_FILE: u64 = 4 * 1024 * 1024;
/// Open handles at most (per side).
const MAX_HANDLES: usize = 8;
/// Every this many steps everything is compared, not only what the step touched.
const FULL_CHECK_EVERY: u64 = 100;
/// Lines of the operation log printed with a divergence.
const LOG_TAIL: usize = 40;
/// A step that takes longer than this is stuck: the mount is killed so the step fails.
const STUCK: Duration = Duration::from_secs(150);

/// The operation kinds, as `TORTURE_OPS` names them. `append` lets opens use O_APPEND.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Open,
    Close,
    Reopen,
    Write,
    Read,
    Truncate,
    Rename,
    Unlink,
    Mmap,
    Fsync,
    Append,
}

impl Kind {
    const ALL: [Kind; 11] = [
        Kind::Open,
        Kind::Close,
        Kind::Reopen,
        Kind::Write,
        Kind::Read,
        Kind::Truncate,
        Kind::Rename,
        Kind::Unlink,
        Kind::Mmap,
        Kind::Fsync,
        Kind::Append,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Open => "open",
            Kind::Close => "close",
            Kind::Reopen => "reopen",
            Kind::Write => "write",
            Kind::Read => "read",
            Kind::Truncate => "truncate",
            Kind::Rename => "rename",
            Kind::Unlink => "unlink",
            Kind::Mmap => "mmap",
            Kind::Fsync => "fsync",
            Kind::Append => "append",
        }
    }

    /// Relative frequency among the kinds that apply.
    fn weight(self) -> u64 {
        match self {
            Kind::Write => 22,
            Kind::Read => 12,
            Kind::Open => 12,
            Kind::Close => 8,
            Kind::Truncate => 7,
            Kind::Rename => 6,
            Kind::Mmap => 5,
            Kind::Fsync => 5,
            Kind::Reopen => 4,
            Kind::Unlink => 4,
            Kind::Append => 0,
        }
    }
}

/// The run's settings, from the environment.
struct Settings {
    seed: u64,
    steps: u64,
    fault_every: u64,
    kinds: Vec<Kind>,
}

impl Settings {
    /// `fault_every` is the default of `TORTURE_FAULT_EVERY`.
    fn from_env(fault_every: u64) -> Settings {
        let number = |var: &str, default: u64| -> u64 {
            match std::env::var(var) {
                Err(_) => default,
                Ok(v) => parse_u64(&v)
                    .unwrap_or_else(|| panic!("{var}={v}: expected a number (decimal or 0x hex)")),
            }
        };
        let seed = match std::env::var("TORTURE_SEED") {
            Ok(v) if v == "random" => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
            _ => number("TORTURE_SEED", DEFAULT_SEED),
        };
        let kinds = match std::env::var("TORTURE_OPS") {
            Err(_) => Kind::ALL.to_vec(),
            Ok(list) => list
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    Kind::ALL
                        .into_iter()
                        .find(|k| k.name() == s.trim())
                        .unwrap_or_else(|| {
                            let all: Vec<_> = Kind::ALL.iter().map(|k| k.name()).collect();
                            panic!("TORTURE_OPS: unknown kind '{s}'; kinds: {}", all.join(","))
                        })
                })
                .collect(),
        };
        Settings {
            seed,
            steps: number("TORTURE_STEPS", DEFAULT_STEPS),
            fault_every: number("TORTURE_FAULT_EVERY", fault_every),
            kinds,
        }
    }

    fn enabled(&self, k: Kind) -> bool {
        self.kinds.contains(&k)
    }
}

fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim().replace('_', "");
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// splitmix64: small, fast, and the same sequence everywhere for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True `percent` times in a hundred.
    fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// An errno, shown by name.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Errno(i32);

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", nix::errno::Errno::from_raw(self.0))
    }
}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Errno {
        Errno(e.raw_os_error().unwrap_or(-1))
    }
}

type Sys<T> = Result<T, Errno>;

fn last_errno() -> Errno {
    std::io::Error::last_os_error().into()
}

fn c_path(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("test paths have no NUL")
}

/// open(2) with any flag combination (std refuses some, e.g. O_RDONLY|O_CREAT).
fn sys_open(p: &Path, flags: i32) -> Sys<File> {
    // SAFETY: a valid C string; the returned descriptor is owned by the File alone.
    let fd = unsafe { libc::open(c_path(p).as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// close(2), with its result (dropping a File ignores it, and close reports write-behind).
fn sys_close(f: File) -> Sys<()> {
    // SAFETY: into_raw_fd gives up ownership, so the descriptor is closed exactly once.
    if unsafe { libc::close(f.into_raw_fd()) } < 0 {
        return Err(last_errno());
    }
    Ok(())
}

fn sys_truncate(p: &Path, size: u64) -> Sys<()> {
    // SAFETY: a valid C string.
    if unsafe { libc::truncate(c_path(p).as_ptr(), size as libc::off_t) } < 0 {
        return Err(last_errno());
    }
    Ok(())
}

/// The whole content through a descriptor, with pread from 0 to end of file.
fn read_all_at(f: &File) -> Sys<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read_at(&mut buf, out.len() as u64)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// A read-only shared mapping of the first `len` bytes of a file, unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(f: &File, len: usize) -> Sys<Mapping> {
        // SAFETY: a fresh mapping chosen by the kernel; only read through `read`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(last_errno());
        }
        Ok(Mapping { ptr, len })
    }

    /// Copies `n` bytes at `off` out of the mapping. Through process_vm_readv, which faults
    /// the pages in as a load does but turns a page the file does not back (the mount served
    /// less than the size it shows) into a short copy instead of a SIGBUS that would kill the
    /// test before it reports.
    fn read(&self, off: usize, n: usize) -> Sys<Vec<u8>> {
        assert!(off + n <= self.len, "read within the mapping");
        let mut out = vec![0u8; n];
        let local = libc::iovec {
            iov_base: out.as_mut_ptr().cast(),
            iov_len: n,
        };
        let remote = libc::iovec {
            // SAFETY: within the mapping (asserted above).
            iov_base: unsafe { self.ptr.cast::<u8>().add(off) }.cast(),
            iov_len: n,
        };
        // SAFETY: both ranges are valid for `n` bytes; the kernel checks the remote one.
        let got = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
        if got < 0 {
            return Err(last_errno());
        }
        out.truncate(got as usize);
        Ok(out)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// One of `NAMES`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Name(usize);

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(NAMES[self.0])
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
}

/// How a file is opened.
#[derive(Clone, Copy)]
struct OpenSpec {
    access: Access,
    create: bool,
    exclusive: bool,
    truncate: bool,
    append: bool,
}

impl OpenSpec {
    fn flags(self) -> i32 {
        let mut f = match self.access {
            Access::Read => libc::O_RDONLY,
            Access::Write => libc::O_WRONLY,
            Access::ReadWrite => libc::O_RDWR,
        };
        for (on, flag) in [
            (self.create, libc::O_CREAT),
            (self.exclusive, libc::O_EXCL),
            (self.truncate, libc::O_TRUNC),
            (self.append, libc::O_APPEND),
        ] {
            if on {
                f |= flag;
            }
        }
        f
    }

    fn readable(self) -> bool {
        self.access != Access::Write
    }

    fn writable(self) -> bool {
        self.access != Access::Read
    }

    /// What a program reopening the file it had open would ask for.
    fn reopen(self) -> OpenSpec {
        OpenSpec {
            create: false,
            exclusive: false,
            truncate: false,
            ..self
        }
    }
}

impl fmt::Display for OpenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.access {
            Access::Read => "RDONLY",
            Access::Write => "WRONLY",
            Access::ReadWrite => "RDWR",
        })?;
        for (on, flag) in [
            (self.create, "CREAT"),
            (self.exclusive, "EXCL"),
            (self.truncate, "TRUNC"),
            (self.append, "APPEND"),
        ] {
            if on {
                write!(f, "|{flag}")?;
            }
        }
        Ok(())
    }
}

/// One file opened the same way on both sides.
struct Handle {
    id: u64,
    /// The name it was opened by (it may have been renamed or unlinked since).
    name: Name,
    spec: OpenSpec,
    mount: File,
    reference: File,
    /// The reference file's inode number: which name (if any) the file has now.
    ino: u64,
    /// Written through since its last fsync or close: the server may not have it yet.
    dirty: bool,
    /// Bytes written through it (past 4 MiB the mount spreads its writes over channels).
    written: u64,
}

impl Handle {
    fn label(&self) -> String {
        format!("h{}[{} {}]", self.id, self.name, self.spec)
    }
}

/// Where a read or write goes.
#[derive(Clone, Copy)]
enum Pos {
    /// pread/pwrite.
    At(u64),
    /// lseek, then read/write.
    SeekTo(u64),
    /// read/write at the descriptor's position.
    Current,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pos::At(o) => write!(f, "at {o}"),
            Pos::SeekTo(o) => write!(f, "seek {o}"),
            Pos::Current => f.write_str("at the position"),
        }
    }
}

enum Op {
    Open {
        name: Name,
        spec: OpenSpec,
    },
    Close {
        h: u64,
    },
    Reopen {
        h: u64,
    },
    Write {
        h: u64,
        pos: Pos,
        len: usize,
        seed: u64,
    },
    /// A sequential writer rewriting a region (`total` bytes in `piece`s at `start`, wrapping
    /// every `span` bytes): takes the handle past the mount's striping threshold.
    Burst {
        h: u64,
        start: u64,
        span: u64,
        piece: usize,
        total: u64,
        seed: u64,
    },
    Read {
        h: u64,
        pos: Pos,
        len: usize,
    },
    Ftruncate {
        h: u64,
        size: u64,
    },
    Truncate {
        name: Name,
        size: u64,
    },
    Rename {
        from: Name,
        to: Name,
    },
    Unlink {
        name: Name,
    },
    Mmap {
        h: u64,
        off: u64,
        len: u64,
    },
    Fsync {
        h: u64,
    },
}

/// What a step touched: compared in full after it.
#[derive(Default)]
struct Touched {
    names: BTreeSet<Name>,
    /// Files by reference inode (open handles; those a close or fsync made clean).
    inos: BTreeSet<u64>,
    handles: BTreeSet<u64>,
}

/// Counts for the summary line.
#[derive(Default)]
struct Stats {
    ops: u64,
    kills: u64,
    restarts: u64,
    opens: u64,
    bytes_written: u64,
    bytes_read: u64,
    unlinked_while_open: u64,
    renamed_while_open: u64,
    renamed_over_existing: u64,
    mmap_reads: u64,
    fsyncs: u64,
    striped_handles: u64,
    full_checks: u64,
    content_checks: u64,
    server_checks: u64,
}

/// The operations of one run and the state both sides share.
struct World {
    mount: PathBuf,
    reference: PathBuf,
    server: PathBuf,
    handles: Vec<Handle>,
    next_handle: u64,
    stats: Stats,
}

fn join(root: &Path, name: Name) -> PathBuf {
    root.join(NAMES[name.0])
}

fn same<T: PartialEq + fmt::Debug>(
    what: &str,
    mount: &Sys<T>,
    reference: &Sys<T>,
) -> Result<(), String> {
    if mount == reference {
        Ok(())
    } else {
        Err(format!(
            "{what}: the mount gave {mount:?}, the reference {reference:?}"
        ))
    }
}

/// Where two contents differ, for the report.
fn describe_difference(a_name: &str, a: &[u8], b_name: &str, b: &[u8]) -> String {
    let common = a.len().min(b.len());
    let first = (0..common).find(|&i| a[i] != b[i]);
    let last = (0..common).rev().find(|&i| a[i] != b[i]);
    let mut s = format!("{a_name} has {} bytes, {b_name} {} bytes", a.len(), b.len());
    match (first, last) {
        (Some(f), Some(l)) => {
            let differing = (f..=l).filter(|&i| a[i] != b[i]).count();
            let zeros = (f..=l).filter(|&i| a[i] != b[i]).all(|i| a[i] == 0);
            let show = |d: &[u8]| format!("{:02x?}", &d[f..(f + 12).min(d.len())]);
            s += &format!(
                "; {differing} bytes differ between offsets {f} and {l} (first: {a_name} {} vs \
                 {b_name} {}){}",
                show(a),
                show(b),
                if zeros {
                    format!("; {a_name} has zeros at every differing byte")
                } else {
                    String::new()
                }
            );
        }
        _ => s += "; the common part is equal",
    }
    s
}

fn compare_content(what: &str, mount: &[u8], reference: &[u8]) -> Result<(), String> {
    if mount == reference {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}",
            describe_difference("the mount", mount, "the reference", reference)
        ))
    }
}

fn listing(dir: &Path) -> Sys<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    Ok(names)
}

impl World {
    fn handle(&self, id: u64) -> &Handle {
        self.handles
            .iter()
            .find(|h| h.id == id)
            .expect("a live handle")
    }

    fn handle_mut(&mut self, id: u64) -> &mut Handle {
        self.handles
            .iter_mut()
            .find(|h| h.id == id)
            .expect("a live handle")
    }

    fn take_handle(&mut self, id: u64) -> Handle {
        let i = self
            .handles
            .iter()
            .position(|h| h.id == id)
            .expect("a live handle");
        self.handles.remove(i)
    }

    /// The reference's size and inode of each name.
    fn reference_names(&self) -> [Option<(u64, u64)>; NAMES.len()] {
        std::array::from_fn(|i| {
            fs::symlink_metadata(join(&self.reference, Name(i)))
                .ok()
                .map(|m| (m.ino(), m.len()))
        })
    }

    fn names_of(&self, ino: u64) -> Vec<Name> {
        self.reference_names()
            .iter()
            .enumerate()
            .filter(|(_, n)| n.is_some_and(|(i, _)| i == ino))
            .map(|(i, _)| Name(i))
            .collect()
    }

    fn open_handles_of(&self, name: Name) -> bool {
        match self.reference_names()[name.0] {
            Some((ino, _)) => self.handles.iter().any(|h| h.ino == ino),
            None => false,
        }
    }

    /// Each name's size on the three sides, for a report.
    fn state(&self) -> String {
        let size = |root: &Path, name: Name| match fs::symlink_metadata(join(root, name)) {
            Ok(m) => format!("{} (ino {})", m.len(), m.ino()),
            Err(e) => format!("{:?}", Errno::from(e)),
        };
        (0..NAMES.len())
            .map(|i| {
                let name = Name(i);
                format!(
                    "    {name}: {} / {} / {}\n",
                    size(&self.reference, name),
                    size(&self.mount, name),
                    size(&self.server, name)
                )
            })
            .collect()
    }

    // ---- choosing the next operation ----

    fn choose(&self, rng: &mut Rng, settings: &Settings) -> Op {
        let has_handles = !self.handles.is_empty();
        let applies = |k: Kind| match k {
            Kind::Open => self.handles.len() < MAX_HANDLES,
            Kind::Append => false,
            Kind::Rename | Kind::Unlink | Kind::Truncate => true,
            _ => has_handles,
        };
        let kinds: Vec<Kind> = settings
            .kinds
            .iter()
            .copied()
            .filter(|&k| applies(k) && k.weight() > 0)
            .collect();
        let kind = if kinds.is_empty() {
            // Only handle operations enabled and no handle yet, or the table is full.
            if has_handles { Kind::Close } else { Kind::Open }
        } else {
            let total: u64 = kinds.iter().map(|k| k.weight()).sum();
            let mut x = rng.below(total);
            *kinds
                .iter()
                .find(|k| {
                    if x < k.weight() {
                        true
                    } else {
                        x -= k.weight();
                        false
                    }
                })
                .expect("a kind")
        };
        let sizes = self.reference_names();
        let size_of = |h: &Handle| h.reference.metadata().map(|m| m.len()).unwrap_or_default();
        match kind {
            Kind::Open | Kind::Append => Op::Open {
                name: Name(rng.below(NAMES.len() as u64) as usize),
                spec: self.open_spec(rng, settings),
            },
            Kind::Close => Op::Close {
                h: self.pick_handle(rng, |_| true),
            },
            Kind::Reopen => Op::Reopen {
                h: self.pick_handle(rng, |_| true),
            },
            Kind::Write => {
                let h = self.handle(self.pick_handle(rng, |h| h.spec.writable()));
                if !h.spec.append && rng.percent(4) {
                    return burst(rng, h.id);
                }
                let size = size_of(h);
                let mut len = write_len(rng);
                if h.spec.append && size + len as u64 > MAX_FILE {
                    len = 1 + rng.below(16) as usize;
                }
                let off = offset(rng, size).min(MAX_FILE.saturating_sub(len as u64));
                Op::Write {
                    h: h.id,
                    pos: position(rng, off),
                    len,
                    seed: rng.next(),
                }
            }
            Kind::Read => {
                let h = self.handle(self.pick_handle(rng, |h| h.spec.readable()));
                let off = offset(rng, size_of(h));
                Op::Read {
                    h: h.id,
                    pos: position(rng, off),
                    len: read_len(rng),
                }
            }
            Kind::Truncate => {
                if has_handles && rng.percent(50) {
                    let h = self.handle(self.pick_handle(rng, |h| h.spec.writable()));
                    Op::Ftruncate {
                        h: h.id,
                        size: truncate_size(rng, size_of(h)),
                    }
                } else {
                    let name = self.pick_name(rng, true);
                    let size = sizes[name.0].map_or(0, |(_, s)| s);
                    Op::Truncate {
                        name,
                        size: truncate_size(rng, size),
                    }
                }
            }
            Kind::Rename => {
                let from = self.pick_name(rng, true);
                let to = if rng.percent(60) {
                    self.pick_name(rng, false)
                } else {
                    Name(rng.below(NAMES.len() as u64) as usize)
                };
                Op::Rename { from, to }
            }
            Kind::Unlink => Op::Unlink {
                name: self.pick_name(rng, true),
            },
            Kind::Mmap => {
                let h = self.handle(self.pick_handle(rng, |h| h.spec.readable()));
                let size = size_of(h);
                let off = rng.below(size + 1);
                let len = rng.below(size - off + 1).min(4 * CHUNK);
                Op::Mmap { h: h.id, off, len }
            }
            Kind::Fsync => Op::Fsync {
                h: self.pick_handle(rng, |_| true),
            },
        }
    }

    /// A handle, mostly one `fits` (the rest test what the other kinds give, e.g. EBADF).
    fn pick_handle(&self, rng: &mut Rng, fits: impl Fn(&Handle) -> bool) -> u64 {
        let fitting: Vec<u64> = self
            .handles
            .iter()
            .filter(|h| fits(h))
            .map(|h| h.id)
            .collect();
        if !fitting.is_empty() && rng.percent(85) {
            return rng.pick(&fitting);
        }
        let all: Vec<u64> = self.handles.iter().map(|h| h.id).collect();
        rng.pick(&all)
    }

    /// A name; with `busy`, mostly one that exists and is open (renames and unlinks of open
    /// files are the interesting ones), else mostly one that exists (renames over a file).
    fn pick_name(&self, rng: &mut Rng, busy: bool) -> Name {
        let names = self.reference_names();
        let existing: Vec<Name> = (0..NAMES.len())
            .filter(|&i| names[i].is_some())
            .map(Name)
            .collect();
        let open: Vec<Name> = existing
            .iter()
            .copied()
            .filter(|&n| self.open_handles_of(n))
            .collect();
        if busy && !open.is_empty() && rng.percent(60) {
            return rng.pick(&open);
        }
        if !existing.is_empty() && rng.percent(80) {
            return rng.pick(&existing);
        }
        Name(rng.below(NAMES.len() as u64) as usize)
    }

    fn open_spec(&self, rng: &mut Rng, settings: &Settings) -> OpenSpec {
        let access = rng.pick(&[
            Access::Read,
            Access::Write,
            Access::ReadWrite,
            Access::ReadWrite,
        ]);
        let create = rng.percent(60);
        OpenSpec {
            access,
            create,
            exclusive: create && rng.percent(10),
            // O_RDONLY|O_TRUNC included: Linux truncates then too.
            truncate: rng.percent(15),
            append: settings.enabled(Kind::Append) && rng.percent(25),
        }
    }

    // ---- running an operation on both sides ----

    /// Runs `op` on the mount and on the reference, compares the outcomes and returns a
    /// description of what happened (for the log) and what it touched.
    fn apply(&mut self, op: &Op) -> Result<(String, Touched), (String, String)> {
        let mut touched = Touched::default();
        let desc;
        let result = match *op {
            Op::Open { name, spec } => {
                desc = format!("open {name} {spec}");
                touched.names.insert(name);
                self.open(name, spec).map(|id| {
                    if let Some(id) = id {
                        touched.handles.insert(id);
                    }
                    match id {
                        Some(id) => format!("h{id}"),
                        None => "failed on both sides".into(),
                    }
                })
            }
            Op::Close { h } => {
                let handle = self.handle(h);
                desc = format!("close {}", handle.label());
                touched.inos.insert(handle.ino);
                self.close(h).map(|()| "ok".into())
            }
            Op::Reopen { h } => {
                let handle = self.handle(h);
                let (name, spec) = (handle.name, handle.spec.reopen());
                desc = format!("reopen {} as {spec}", handle.label());
                touched.inos.insert(handle.ino);
                touched.names.insert(name);
                self.close(h).and_then(|()| {
                    self.open(name, spec).map(|id| match id {
                        Some(id) => {
                            touched.handles.insert(id);
                            format!("h{id}")
                        }
                        None => "reopen failed on both sides".into(),
                    })
                })
            }
            Op::Write { h, pos, len, seed } => {
                let handle = self.handle(h);
                desc = format!("write {} {pos} len {len}", handle.label());
                touched.handles.insert(h);
                touched.inos.insert(handle.ino);
                self.write(h, pos, &pseudo_random(seed, len))
            }
            Op::Burst {
                h,
                start,
                span,
                piece,
                total,
                seed,
            } => {
                let handle = self.handle(h);
                desc = format!(
                    "burst {} of {total} bytes at {start} in pieces of {piece}, wrapping every {span}",
                    handle.label()
                );
                touched.handles.insert(h);
                touched.inos.insert(handle.ino);
                let mut done = 0;
                let mut outcome = Ok(String::new());
                while done < total && outcome.is_ok() {
                    let at = start + done % span;
                    let data = pseudo_random(seed.wrapping_add(done), piece);
                    outcome = self.write(h, Pos::At(at), &data);
                    done += piece as u64;
                }
                outcome.map(|_| format!("{done} bytes"))
            }
            Op::Read { h, pos, len } => {
                let handle = self.handle(h);
                desc = format!("read {} {pos} len {len}", handle.label());
                touched.handles.insert(h);
                self.read(h, pos, len)
            }
            Op::Ftruncate { h, size } => {
                let handle = self.handle(h);
                desc = format!("ftruncate {} to {size}", handle.label());
                touched.handles.insert(h);
                touched.inos.insert(handle.ino);
                let m = handle.mount.set_len(size).map_err(Errno::from);
                let r = handle.reference.set_len(size).map_err(Errno::from);
                same("ftruncate", &m, &r).map(|()| format!("{r:?}"))
            }
            Op::Truncate { name, size } => {
                desc = format!("truncate {name} to {size}");
                touched.names.insert(name);
                let m = sys_truncate(&join(&self.mount, name), size);
                let r = sys_truncate(&join(&self.reference, name), size);
                same("truncate", &m, &r).map(|()| format!("{r:?}"))
            }
            Op::Rename { from, to } => {
                desc = format!("rename {from} -> {to}");
                touched.names.extend([from, to]);
                let names = self.reference_names();
                let moves = from != to;
                let (busy, over) = (
                    moves && self.open_handles_of(from),
                    moves && names[to.0].is_some(),
                );
                let m =
                    fs::rename(join(&self.mount, from), join(&self.mount, to)).map_err(Errno::from);
                let r = fs::rename(join(&self.reference, from), join(&self.reference, to))
                    .map_err(Errno::from);
                if r.is_ok() {
                    self.stats.renamed_while_open += u64::from(busy);
                    self.stats.renamed_over_existing += u64::from(over);
                }
                same("rename", &m, &r).map(|()| {
                    format!(
                        "{r:?}{}{}",
                        if busy { " (open)" } else { "" },
                        if over { " (over an existing file)" } else { "" }
                    )
                })
            }
            Op::Unlink { name } => {
                desc = format!("unlink {name}");
                touched.names.insert(name);
                let busy = self.open_handles_of(name);
                let m = fs::remove_file(join(&self.mount, name)).map_err(Errno::from);
                let r = fs::remove_file(join(&self.reference, name)).map_err(Errno::from);
                if r.is_ok() && busy {
                    self.stats.unlinked_while_open += 1;
                }
                same("unlink", &m, &r)
                    .map(|()| format!("{r:?}{}", if busy { " (open)" } else { "" }))
            }
            Op::Mmap { h, off, len } => {
                let handle = self.handle(h);
                desc = format!("mmap read {} at {off} len {len}", handle.label());
                touched.handles.insert(h);
                self.mmap_read(h, off as usize, len as usize)
            }
            Op::Fsync { h } => {
                let handle = self.handle(h);
                desc = format!("fsync {}", handle.label());
                touched.inos.insert(handle.ino);
                let m = handle.mount.sync_all().map_err(Errno::from);
                let r = handle.reference.sync_all().map_err(Errno::from);
                let ino = handle.ino;
                same("fsync", &m, &r).map(|()| {
                    if r.is_ok() {
                        self.stats.fsyncs += 1;
                        // fsync is per file: every handle's writes are on the server now.
                        for h in self.handles.iter_mut().filter(|h| h.ino == ino) {
                            h.dirty = false;
                        }
                    }
                    format!("{r:?}")
                })
            }
        };
        match result {
            Ok(outcome) => Ok((format!("{desc} -> {outcome}"), touched)),
            Err(divergence) => Err((desc, divergence)),
        }
    }

    /// Opens `name` on both sides: `Some(id)` if both opened it, `None` if both failed alike.
    fn open(&mut self, name: Name, spec: OpenSpec) -> Result<Option<u64>, String> {
        let m = sys_open(&join(&self.mount, name), spec.flags());
        let r = sys_open(&join(&self.reference, name), spec.flags());
        match (m, r) {
            (Ok(mount), Ok(reference)) => {
                let ino = reference
                    .metadata()
                    .map_err(|e| format!("fstat reference: {e}"))?
                    .ino();
                let id = self.next_handle;
                self.next_handle += 1;
                self.stats.opens += 1;
                self.handles.push(Handle {
                    id,
                    name,
                    spec,
                    mount,
                    reference,
                    ino,
                    dirty: false,
                    written: 0,
                });
                Ok(Some(id))
            }
            (Err(a), Err(b)) if a == b => Ok(None),
            (m, r) => Err(format!(
                "open: the mount gave {:?}, the reference {:?}",
                m.map(drop),
                r.map(drop)
            )),
        }
    }

    fn close(&mut self, id: u64) -> Result<(), String> {
        let h = self.take_handle(id);
        if h.written >= 4 * 1024 * 1024 {
            self.stats.striped_handles += 1;
        }
        let m = sys_close(h.mount);
        let r = sys_close(h.reference);
        same("close", &m, &r)
    }

    fn write(&mut self, id: u64, pos: Pos, data: &[u8]) -> Result<String, String> {
        let h = self.handle(id);
        let on = |f: &File| -> Sys<usize> {
            match pos {
                Pos::At(o) => Ok(f.write_at(data, o)?),
                Pos::SeekTo(o) => {
                    let mut f = f;
                    f.seek(SeekFrom::Start(o))?;
                    Ok(f.write(data)?)
                }
                Pos::Current => {
                    let mut f = f;
                    Ok(f.write(data)?)
                }
            }
        };
        let m = on(&h.mount);
        let r = on(&h.reference);
        same("write", &m, &r)?;
        if let Ok(n) = r {
            let h = self.handle_mut(id);
            h.dirty |= n > 0;
            h.written += n as u64;
            self.stats.bytes_written += n as u64;
        }
        Ok(format!("{r:?}"))
    }

    fn read(&mut self, id: u64, pos: Pos, len: usize) -> Result<String, String> {
        let h = self.handle(id);
        let on = |f: &File| -> Sys<Vec<u8>> {
            let mut buf = vec![0u8; len];
            let n = match pos {
                Pos::At(o) => f.read_at(&mut buf, o)?,
                Pos::SeekTo(o) => {
                    let mut f = f;
                    f.seek(SeekFrom::Start(o))?;
                    f.read(&mut buf)?
                }
                Pos::Current => {
                    let mut f = f;
                    f.read(&mut buf)?
                }
            };
            buf.truncate(n);
            Ok(buf)
        };
        let m = on(&h.mount);
        let r = on(&h.reference);
        match (&m, &r) {
            (Ok(a), Ok(b)) => compare_content("read", a, b)?,
            _ => same(
                "read",
                &m.map(|d| d.len()),
                &r.as_ref().map(|d| d.len()).map_err(|e| *e),
            )?,
        }
        if let Ok(d) = &r {
            self.stats.bytes_read += d.len() as u64;
        }
        Ok(match r {
            Ok(d) => format!("{} bytes", d.len()),
            Err(e) => format!("{e:?}"),
        })
    }

    fn mmap_read(&mut self, id: u64, off: usize, len: usize) -> Result<String, String> {
        let h = self.handle(id);
        let sizes = (
            h.mount.metadata().map(|m| m.len()),
            h.reference.metadata().map(|m| m.len()),
        );
        let size = match sizes {
            (Ok(a), Ok(b)) if a == b => b as usize,
            (a, b) => {
                return Err(format!(
                    "mmap: fstat sizes differ: the mount {:?}, the reference {:?}",
                    a.map_err(Errno::from),
                    b.map_err(Errno::from)
                ));
            }
        };
        let on = |f: &File| -> Sys<Vec<u8>> {
            let map = Mapping::new(f, size)?;
            map.read(off.min(size), len.min(size - off.min(size)))
        };
        let m = on(&h.mount);
        let r = on(&h.reference);
        match (&m, &r) {
            (Ok(a), Ok(b)) => compare_content("mmap read", a, b)?,
            _ => same(
                "mmap",
                &m.map(|d| d.len()),
                &r.as_ref().map(|d| d.len()).map_err(|e| *e),
            )?,
        }
        if r.is_ok() {
            self.stats.mmap_reads += 1;
        }
        Ok(match r {
            Ok(d) => format!("{} bytes of {size}", d.len()),
            Err(e) => format!("{e:?}"),
        })
    }

    // ---- comparing the two sides (and the server) ----

    /// After a step: listings, every name's existence and size, every handle's size, the
    /// server's names; the content of what the step touched (through the mount only when
    /// `content`: a read waits for queued writes, and some must stay in flight when a fault
    /// hits); everything with `full`.
    fn check(&mut self, touched: &Touched, content: bool, full: bool) -> Result<(), String> {
        if writeback_tests() {
            // Write-back: a change is journaled when its call returns; an fsync of a directory
            // waits until everything journaled is on the server, which the checks below see.
            fs::File::open(&self.mount)
                .and_then(|d| d.sync_all())
                .map_err(|e| format!("fsync of the mount (write-back settle): {e}"))?;
        }
        for dir in DIRS {
            let m = listing(&self.mount.join(dir));
            let r = listing(&self.reference.join(dir));
            same(&format!("listing of {dir}/"), &m, &r)?;
        }
        let refs = self.reference_names();
        for (i, r) in refs.iter().enumerate() {
            let name = Name(i);
            let m = fs::symlink_metadata(join(&self.mount, name))
                .map(|m| m.len())
                .map_err(Errno::from);
            let r = r.map(|(_, size)| size).ok_or(Errno(libc::ENOENT));
            same(&format!("size of {name}"), &m, &r)?;
            let s = fs::symlink_metadata(join(&self.server, name))
                .map(drop)
                .map_err(Errno::from);
            if s.is_ok() != r.is_ok() {
                return Err(format!(
                    "{name} on the server: {s:?}, but the reference {}",
                    if r.is_ok() { "has it" } else { "does not" }
                ));
            }
        }
        for h in &self.handles {
            let m = h.mount.metadata().map(|m| m.len()).map_err(Errno::from);
            let r = h.reference.metadata().map(|m| m.len()).map_err(Errno::from);
            same(&format!("fstat size of {}", h.label()), &m, &r)?;
        }

        let mut names = touched.names.clone();
        for &ino in &touched.inos {
            names.extend(self.names_of(ino));
        }
        for h in self
            .handles
            .iter()
            .filter(|h| touched.handles.contains(&h.id))
        {
            names.extend(self.names_of(h.ino));
        }
        if full {
            names.extend((0..NAMES.len()).map(Name));
            self.stats.full_checks += 1;
        }
        let dirty: BTreeSet<u64> = self
            .handles
            .iter()
            .filter(|h| h.dirty)
            .map(|h| h.ino)
            .collect();
        for &name in &names {
            let Some((ino, _)) = refs[name.0] else {
                continue;
            };
            let want = fs::read(join(&self.reference, name))
                .map_err(|e| format!("reference {name}: {e}"))?;
            if content || full {
                let got = fs::read(join(&self.mount, name))
                    .map_err(|e| format!("read {name} through the mount: {e}"))?;
                compare_content(&format!("content of {name} through the mount"), &got, &want)?;
                self.stats.content_checks += 1;
            }
            // Written and then closed or fsynced by every handle: the server must have it.
            if !dirty.contains(&ino) {
                let server = fs::read(join(&self.server, name))
                    .map_err(|e| format!("{name} on the server: {e}"))?;
                if server != want {
                    return Err(format!(
                        "{name} on the server (all writes to it closed or fsynced): {}",
                        describe_difference("the server", &server, "the reference", &want)
                    ));
                }
                self.stats.server_checks += 1;
            }
        }
        if content || full {
            for h in &self.handles {
                if !(full || touched.handles.contains(&h.id)) || !h.spec.readable() {
                    continue;
                }
                let m = read_all_at(&h.mount);
                let r = read_all_at(&h.reference);
                match (&m, &r) {
                    (Ok(a), Ok(b)) => {
                        compare_content(&format!("content through {}", h.label()), a, b)?
                    }
                    _ => same(
                        &format!("pread through {}", h.label()),
                        &m.map(|d| d.len()),
                        &r.as_ref().map(|d| d.len()).map_err(|e| *e),
                    )?,
                }
                self.stats.content_checks += 1;
            }
        }
        Ok(())
    }

    /// Closes every handle (compared) and checks the server once nothing is open.
    fn close_all(&mut self) -> Result<(), String> {
        let ids: Vec<u64> = self.handles.iter().map(|h| h.id).collect();
        for id in ids {
            let label = self.handle(id).label();
            self.close(id)
                .map_err(|e| format!("closing {label} at the end: {e}"))?;
        }
        self.check(&Touched::default(), true, true)
    }

    /// With nothing open and the mount gone: the server's directories hold exactly the
    /// reference's files (no file left behind under another name), byte for byte.
    fn final_server_check(&self) -> Result<(), String> {
        for dir in DIRS {
            let s = listing(&self.server.join(dir));
            let r = listing(&self.reference.join(dir));
            same(&format!("the server's {dir}/ after unmount"), &s, &r)?;
        }
        for i in 0..NAMES.len() {
            let name = Name(i);
            let Ok(want) = fs::read(join(&self.reference, name)) else {
                continue;
            };
            let got = fs::read(join(&self.server, name))
                .map_err(|e| format!("{name} on the server: {e}"))?;
            if got != want {
                return Err(format!(
                    "{name} on the server after unmount: {}",
                    describe_difference("the server", &got, "the reference", &want)
                ));
            }
        }
        Ok(())
    }
}

// ---- what operations ask for ----

fn offset(rng: &mut Rng, size: u64) -> u64 {
    match rng.below(7) {
        0 => 0,
        1 => size,
        2 => rng.below(size + 1),
        // Past the end: a hole.
        3 => size + 1 + rng.below(2 * CHUNK),
        // Around a chunk boundary.
        4 | 5 => {
            let k = 1 + rng.below(MAX_FILE / CHUNK / 2);
            (k * CHUNK + rng.below(128)).saturating_sub(64)
        }
        _ => rng.below(MAX_FILE / 2),
    }
}

fn write_len(rng: &mut Rng) -> usize {
    (match rng.below(20) {
        0..=3 => 1 + rng.below(16),
        4..=7 => 1 + rng.below(4096),
        8..=11 => 1 + rng.below(64 * 1024),
        12..=14 => CHUNK + rng.below(4096) - 2048,
        15..=18 => 1 + rng.below(3 * CHUNK),
        // A big one: several of these take a handle past the mount's striping threshold.
        _ => 1024 * 1024 + rng.below(1024 * 1024),
    }) as usize
}

fn burst(rng: &mut Rng, h: u64) -> Op {
    let piece = (64 * 1024 + rng.below(192 * 1024)) as usize;
    let span = (piece as u64 * (2 + rng.below(12))).min(MAX_FILE / 2);
    Op::Burst {
        h,
        start: rng.below(MAX_FILE / 2),
        span,
        piece,
        total: 2 * 1024 * 1024 + rng.below(4 * 1024 * 1024),
        seed: rng.next(),
    }
}

fn read_len(rng: &mut Rng) -> usize {
    (match rng.below(4) {
        0 => 1 + rng.below(64),
        1 => 1 + rng.below(8192),
        2 => CHUNK + rng.below(256) - 128,
        _ => 1 + rng.below(3 * CHUNK),
    }) as usize
}

fn truncate_size(rng: &mut Rng, size: u64) -> u64 {
    match rng.below(6) {
        0 => 0,
        1 => rng.below(size + 1),
        2 => size + 1 + rng.below(2 * CHUNK),
        3 => (rng.below(8) * CHUNK + rng.below(64)).saturating_sub(32),
        4 => size.saturating_sub(1 + rng.below(4096)),
        _ => size + rng.below(16),
    }
    .min(MAX_FILE)
}

fn position(rng: &mut Rng, off: u64) -> Pos {
    match rng.below(10) {
        0..=6 => Pos::At(off),
        7 | 8 => Pos::SeekTo(off),
        _ => Pos::Current,
    }
}

// ---- the server and its faults ----

/// Set in the environment of the helper process (see [`Server`]).
const HELPER_ENV: &str = "TORTURE_SSHD_HELPER";
/// Prefix of the helper's answers on its stdout (the test harness prints there too).
const HELPER_SAYS: &str = "torture-helper: ";
const TEST_NAME: &str = "random_operations_with_faults_match_a_local_reference";

/// The throwaway sshd, owned by a helper process: this test binary run again in helper mode,
/// started before any file on the mount is open. Faults must not be injected from the test
/// process itself: a process that spawns another (pkill, sshd) while holding files open on a
/// FUSE mount flushes every one of them when the child execs (close-on-exec closes the
/// inherited descriptors, and each close is a FUSE FLUSH). That would drain every queued
/// write just before each fault, and with the server down the exec of the new sshd would
/// wait for flushes that wait for the server.
struct Server {
    helper: std::process::Child,
    commands: std::process::ChildStdin,
    answers: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    port: u16,
    /// Mount options for the helper's sshd: its key, its own known_hosts.
    key_options: String,
    /// Its data directory on the local disk.
    data: PathBuf,
    log: PathBuf,
    /// An outage is under way: the helper says "up" once the server is back.
    restarting: bool,
}

impl Server {
    fn start() -> Server {
        let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                TEST_NAME,
                "--exact",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HELPER_ENV, "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the sshd helper (this test binary)");
        let commands = helper.stdin.take().unwrap();
        let answers =
            std::io::BufRead::lines(std::io::BufReader::new(helper.stdout.take().unwrap()));
        let mut server = Server {
            helper,
            commands,
            answers,
            port: 0,
            key_options: String::new(),
            data: PathBuf::new(),
            log: PathBuf::new(),
            restarting: false,
        };
        let hello = server.answer();
        let fields: Vec<&str> = hello.split('\t').collect();
        let [port, key_options, data, log] = fields[..] else {
            panic!("the sshd helper said {hello:?}");
        };
        server.port = port.parse().unwrap();
        server.key_options = key_options.to_string();
        server.data = PathBuf::from(data);
        server.log = PathBuf::from(log);
        server
    }

    /// The helper's next answer (other lines on its stdout are the test harness's).
    fn answer(&mut self) -> String {
        for line in self.answers.by_ref() {
            let line = line.expect("read from the sshd helper");
            // The harness may have begun the line ("test NAME ... ").
            if let Some((_, a)) = line.split_once(HELPER_SAYS) {
                return a.to_string();
            }
        }
        panic!("the sshd helper exited: {:?}", self.helper.try_wait());
    }

    fn command(&mut self, cmd: &str, expect: &str) {
        writeln!(self.commands, "{cmd}").expect("write to the sshd helper");
        let a = self.answer();
        assert_eq!(a, expect, "the sshd helper's answer to {cmd}");
    }

    fn kill_sessions(&mut self) {
        self.wait_up();
        self.command("kill", "killed");
    }

    /// Stops the server; it comes back after `down` while the test goes on.
    fn outage(&mut self, down: Duration) {
        self.wait_up();
        self.command(&format!("outage {}", down.as_millis()), "down");
        self.restarting = true;
    }

    fn wait_up(&mut self) {
        if std::mem::take(&mut self.restarting) {
            let a = self.answer();
            assert_eq!(a, "up", "the sshd helper restarts the server");
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // End of input: the helper drops its sshd and exits.
        let _ = writeln!(self.commands, "quit");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.helper.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.helper.kill();
        let _ = self.helper.wait();
    }
}

/// The helper's side: runs an sshd and injects what the test asks for, until "quit" or the
/// end of its input (the test is gone).
fn serve_sshd() {
    let say = |what: &str| {
        println!("{HELPER_SAYS}{what}");
        std::io::stdout().flush().unwrap();
    };
    let mut sshd = Sshd::start();
    say(&format!(
        "{}\t{}\t{}\t{}",
        sshd.port,
        sshd.key_options(),
        sshd.data.display(),
        sshd.dir.path().join("sshd.log").display()
    ));
    for line in std::io::stdin().lines() {
        let Ok(line) = line else { break };
        match line.split_once(' ').unwrap_or((line.as_str(), "")) {
            ("kill", _) => {
                sshd.kill_sessions();
                say("killed");
            }
            ("outage", ms) => {
                sshd.stop();
                say("down");
                std::thread::sleep(Duration::from_millis(ms.parse().unwrap()));
                sshd.restart();
                say("up");
            }
            _ => break,
        }
    }
}

/// Kills SSH sessions and restarts the server at steps drawn from its own random stream (so
/// turning faults off or changing the step count leaves the operations as they were).
struct Faults {
    rng: Rng,
    every: u64,
    next: u64,
}

impl Faults {
    fn new(seed: u64, every: u64) -> Faults {
        let mut f = Faults {
            rng: Rng(seed ^ 0xFA17_FA17_FA17_FA17),
            every,
            next: u64::MAX,
        };
        if every > 0 {
            f.next = f.gap();
        }
        f
    }

    fn gap(&mut self) -> u64 {
        self.every / 2 + self.rng.below(self.every + 1)
    }

    fn due(&self, step: u64) -> bool {
        step == self.next
    }

    /// Injects the fault of this step and says what it was.
    fn inject(&mut self, server: &mut Server, stats: &mut Stats) -> String {
        self.next += self.gap().max(1);
        if self.rng.percent(65) {
            server.kill_sessions();
            stats.kills += 1;
            "FAULT: SSH sessions killed".into()
        } else {
            let down = Duration::from_millis(200 + self.rng.below(1300));
            server.outage(down);
            stats.restarts += 1;
            format!("FAULT: sshd stopped, back in {} ms", down.as_millis())
        }
    }
}

/// Kills the mount process if one step takes longer than [`STUCK`], so the step fails (with
/// ENOTCONN) and the run reports instead of hanging.
struct Watchdog {
    origin: Instant,
    /// When the current step started, in ms since `origin`.
    step_started: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    fn start(mount_pid: Option<u32>) -> Watchdog {
        let origin = Instant::now();
        let step_started = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (started, stop) = (Arc::clone(&step_started), Arc::clone(&done));
        let thread = std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(500));
                let now = origin.elapsed().as_millis() as u64;
                let since = Duration::from_millis(now - started.load(Ordering::SeqCst));
                if since > STUCK {
                    eprintln!("torture: a step has taken {since:?}: killing the mount so it fails");
                    if let Some(pid) = mount_pid {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    return;
                }
            }
        });
        Watchdog {
            origin,
            step_started,
            done,
            thread: Some(thread),
        }
    }

    fn step(&self) {
        let now = self.origin.elapsed().as_millis() as u64;
        self.step_started.store(now, Ordering::SeqCst);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The operation log, for the report.
struct Log(VecDeque<String>);

impl Log {
    fn push(&mut self, line: String) {
        if self.0.len() == 200 {
            self.0.pop_front();
        }
        self.0.push_back(line);
    }

    fn tail(&self) -> String {
        let skip = self.0.len().saturating_sub(LOG_TAIL);
        self.0
            .iter()
            .skip(skip)
            .map(|l| format!("    {l}\n"))
            .collect()
    }
}

/// The ends of the mount's and the server's logs, for a report.
fn logs(mount_log: &str, server: &Server) -> String {
    format!(
        "  mount log (tail):\n{}  sshd log (tail):\n{}",
        tail_lines(mount_log, 30),
        tail_lines(&server.log(), 15)
    )
}

fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("    {l}\n"))
        .collect()
}

/// Prints what diverged, with what is needed to replay it, and fails the test.
fn diverged(
    settings: &Settings,
    step: u64,
    op: &str,
    what: &str,
    log: &Log,
    world: &World,
    logs: &str,
) -> ! {
    let report = format!(
        "torture: DIVERGENCE at step {step} (seed {seed:#x})\n  op: {op}\n  {what}\n  \
         open handles (* = written since the last fsync/close): {handles}\n  \
         names (reference / mount / server size):\n{state}  \
         last operations:\n{tail}{logs}  \
         replay: TORTURE_SEED={seed:#x} TORTURE_STEPS={steps} TORTURE_FAULT_EVERY={every} cargo \
         test --release --test torture -- --include-ignored --nocapture\n",
        seed = settings.seed,
        steps = step + 1,
        every = settings.fault_every,
        handles = world
            .handles
            .iter()
            .map(|h| {
                // Which file each side's descriptor is on, and its size there: a name that
                // shows another inode than a handle opened by it is told apart from a stale size.
                let on = |m: std::io::Result<fs::Metadata>| {
                    m.map_or_else(
                        |e| e.to_string(),
                        |m| format!("ino {} size {}", m.ino(), m.len()),
                    )
                };
                format!(
                    "{}{} (reference {}, mount {})",
                    h.label(),
                    if h.dirty { "*" } else { "" },
                    on(h.reference.metadata()),
                    on(h.mount.metadata())
                )
            })
            .collect::<Vec<_>>()
            .join(" "),
        state = world.state(),
        tail = log.tail(),
    );
    eprintln!("{report}");
    panic!(
        "torture: divergence at step {step}, seed {:#x} (details above)",
        settings.seed
    );
}

/// The run CI makes: thousands of operations, no faults. Divergence-free in every run so far.
#[test]
fn random_operations_match_a_local_reference() {
    if std::env::var_os(HELPER_ENV).is_some() {
        return;
    }
    run(Settings::from_env(0));
}

/// With SSH session kills and sshd restarts (a fault every ~`DEFAULT_FAULT_EVERY` steps).
#[test]
fn random_operations_with_faults_match_a_local_reference() {
    if std::env::var_os(HELPER_ENV).is_some() {
        serve_sshd();
        return;
    }
    run(Settings::from_env(DEFAULT_FAULT_EVERY));
}

fn run(settings: Settings) {
    let started = Instant::now();
    eprintln!(
        "torture: seed {:#x}, {} steps, a fault every ~{} steps, kinds {}",
        settings.seed,
        settings.steps,
        settings.fault_every,
        settings
            .kinds
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(",")
    );

    let mut server = Server::start();
    let root = server.data.join("torture");
    let reference = TempDir::new("torture-ref");
    for dir in DIRS {
        fs::create_dir_all(root.join(dir)).unwrap();
        fs::create_dir_all(reference.path().join(dir)).unwrap();
    }
    // Mount::root's mount, made from what the helper's sshd told.
    let remote = format!("root@127.0.0.1:{}", root.display());
    let options = format!("{},{OPTIONS}", server.key_options);
    let mount = Mount::with_stdin(server.port, &remote, &options, None);
    let mut world = World {
        mount: mount.mountpoint.clone(),
        reference: reference.path().to_path_buf(),
        server: root,
        handles: Vec::new(),
        next_handle: 1,
        stats: Stats::default(),
    };
    let mut faults = Faults::new(settings.seed, settings.fault_every);
    let mut rng = Rng(settings.seed);
    let mut checks = Rng(settings.seed ^ 0xC4EC_C4EC_C4EC_C4EC);
    let mut log = Log(VecDeque::new());
    let watchdog = Watchdog::start(mount.pid());

    for step in 0..settings.steps {
        watchdog.step();
        if faults.due(step) {
            let what = faults.inject(&mut server, &mut world.stats);
            log.push(format!("#{step} {what}"));
        }
        let op = world.choose(&mut rng, &settings);
        let (line, touched) = match world.apply(&op) {
            Ok(done) => done,
            Err((desc, what)) => diverged(
                &settings,
                step,
                &desc,
                &what,
                &log,
                &world,
                &logs(&mount.stderr(), &server),
            ),
        };
        world.stats.ops += 1;
        log.push(format!("#{step} {line}"));
        let full = (step + 1) % FULL_CHECK_EVERY == 0;
        // Leave the writes of the step before a fault in flight: not read back through the mount.
        let content = !faults.due(step + 1) && checks.percent(50);
        if let Err(what) = world.check(&touched, content, full) {
            diverged(
                &settings,
                step,
                &format!("check after: {line}"),
                &what,
                &log,
                &world,
                &logs(&mount.stderr(), &server),
            );
        }
    }
    server.wait_up();
    let step = settings.steps;
    if let Err(what) = world.close_all() {
        diverged(
            &settings,
            step,
            "closing every handle",
            &what,
            &log,
            &world,
            &logs(&mount.stderr(), &server),
        );
    }
    drop(watchdog);
    let mount_log = mount.stderr();
    drop(mount);
    if let Err(what) = world.final_server_check() {
        diverged(
            &settings,
            step,
            "unmount",
            &what,
            &log,
            &world,
            &logs(&mount_log, &server),
        );
    }

    let s = &world.stats;
    eprintln!(
        "torture: {} operations, {} faults ({} session kills, {} sshd restarts), 0 divergences \
         in {:.1} s (seed {:#x})\n  {} opens, {} bytes written, {} read, {} mmap reads, {} \
         fsyncs, {} unlinks and {} renames of open files, {} renames over a file, {} handles \
         past 4 MiB written; {} content, {} server and {} full checks",
        s.ops,
        s.kills + s.restarts,
        s.kills,
        s.restarts,
        started.elapsed().as_secs_f64(),
        settings.seed,
        s.opens,
        s.bytes_written,
        s.bytes_read,
        s.mmap_reads,
        s.fsyncs,
        s.unlinked_while_open,
        s.renamed_while_open,
        s.renamed_over_existing,
        s.striped_handles,
        s.content_checks,
        s.server_checks,
        s.full_checks,
    );
}
