//! The remote side of a mount: SFTP requests over one SSH connection, with reconnects.
//!
//! `Sftp` hides three limits of russh-sftp and of the network from the filesystem above it:
//! at most 127 open handles per SFTP session (more are spread over extra sessions on the same
//! connection), a cap on the bytes one read or write packet may carry (larger calls are split
//! and pipelined), and a dropped connection (re-established with backoff; open files are reopened
//! by path and flags). Every call returns an [`Error`] that maps to an errno.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::Packet;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

pub use russh_sftp::extensions::Statvfs;
pub use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};

use crate::options::{MountOptions, StrictHostKeyChecking};
use crate::ssh::{self, ConnectError};

/// Bytes per read or write packet when the server does not announce its limits: every SFTP
/// server takes 64 KiB (sshfs sends no more either).
const DEFAULT_IO: usize = 64 * 1024;
/// Bytes per packet when the server's `limits@openssh.com` allows it. Half as many requests
/// as 64 KiB cost sftp-server a quarter less CPU per byte; 256 KiB would not do: OpenSSH caps
/// reads at 255 KiB and russh-sftp drops the session on an incoming packet over 256 KiB.
const LARGE_IO: usize = 128 * 1024;

/// The packet size to use for reads or writes given what the server says it accepts.
fn io_len(limit: Option<u64>) -> usize {
    match limit {
        None | Some(0) => DEFAULT_IO,
        Some(n) if n >= LARGE_IO as u64 => LARGE_IO,
        Some(n) if n >= DEFAULT_IO as u64 => DEFAULT_IO,
        // A server with smaller packets: whole pages of what it takes.
        Some(n) => (n as usize / 4096).max(1) * 4096,
    }
}

/// Why a remote call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server answered with an error status.
    #[error("{code:?}: {message}")]
    Status { code: StatusCode, message: String },
    /// The connection is gone and did not come back within `reconnect_timeout`.
    #[error("connection to the SSH server lost: {0}")]
    Disconnected(String),
    /// The server did not answer in time.
    #[error("the SSH server did not answer in time")]
    Timeout,
    /// Anything else the client library reported.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// The errno a filesystem call should fail with (as sshfs maps SFTP status codes).
    pub fn errno(&self) -> i32 {
        match self {
            Error::Status { code, .. } => match code {
                StatusCode::Ok => 0,
                StatusCode::Eof => libc::EIO,
                StatusCode::NoSuchFile => libc::ENOENT,
                StatusCode::PermissionDenied => libc::EACCES,
                StatusCode::Failure => libc::EPERM,
                StatusCode::BadMessage => libc::EBADMSG,
                StatusCode::NoConnection => libc::ENOTCONN,
                StatusCode::ConnectionLost => libc::ECONNABORTED,
                StatusCode::OpUnsupported => libc::EOPNOTSUPP,
            },
            Error::Disconnected(_) | Error::Timeout | Error::Other(_) => libc::EIO,
        }
    }

    /// True for a status the server sent (as opposed to a transport problem).
    pub fn is_status(&self, code: StatusCode) -> bool {
        matches!(self, Error::Status { code: c, .. } if *c == code)
    }
}

/// One entry of a directory listing, with the attributes the server sent alongside.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: String,
    pub attrs: FileAttributes,
    /// The link count, from the `ls -l` style long name OpenSSH sends (SFTP v3 attributes
    /// carry none); `None` when the long name does not look like one.
    pub nlink: Option<u32>,
}

/// The link count in an `ls -l` style line ("-rw-r--r--    2 user group ..."), the format
/// OpenSSH's sftp-server uses for READDIR long names.
pub fn longname_nlink(longname: &str) -> Option<u32> {
    let mut fields = longname.split_ascii_whitespace();
    let mode = fields.next()?;
    let kinds = "-dlcbps";
    let mode_like = mode.len() >= 10
        && mode.starts_with(|c| kinds.contains(c))
        && mode[1..10].chars().all(|c| "rwxsStT-".contains(c));
    if !mode_like {
        return None;
    }
    fields.next()?.parse().ok().filter(|n| *n >= 1)
}

/// READDIRs sent at once: OpenSSH answers each with the next batch of up to 100 names, or EOF,
/// so a directory of up to 300 names is read in one round trip after the OPENDIR.
const READDIR_PIPELINE: usize = 4;

/// Counters and state for `docker volume inspect`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub reconnects: u64,
    /// "connected" or "reconnecting".
    pub state: String,
    pub last_error: Option<String>,
}

/// A file written through one channel gets at most the server's channel window (OpenSSH: 2 MiB)
/// per round trip: ~150 MB/s at 13 ms. Past this many bytes written, a file also gets handles on
/// other channels, and its writes are spread over all of them.
const STRIPE_AFTER: u64 = 4 * 1024 * 1024;
/// Channels one file's writes are spread over, at most.
const STRIPES: usize = 4;

/// Handles per SFTP session: russh-sftp decodes handles lossily as UTF-8, so OpenSSH's 129th
/// simultaneous handle is corrupted (REFERENCE §4). Stay well below.
const HANDLES_PER_SESSION: usize = 120;
/// OpenSSH allows 10 channels per connection by default (MaxSessions); leave two spare.
const MAX_SESSIONS: usize = 8;
/// How often the supervisor looks at the transport when nobody reports trouble.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// A single request that gets no answer for this long is treated as a dead link.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

type RawResult<T> = Result<T, russh_sftp::client::error::Error>;

/// One SFTP channel and the open-handle slots it has left.
struct Session {
    raw: RawSftpSession,
    slots: Arc<Semaphore>,
}

impl Session {
    fn new(raw: RawSftpSession) -> Arc<Session> {
        Arc::new(Session {
            raw,
            slots: Arc::new(Semaphore::new(HANDLES_PER_SESSION)),
        })
    }
}

/// One SSH connection and its SFTP channels. Replaced as a whole on reconnect.
struct Conn {
    generation: u64,
    ssh: ssh::Connection,
    sessions: Mutex<Vec<Arc<Session>>>,
    /// Extra channels are opened one at a time.
    opening: tokio::sync::Mutex<()>,
    next: AtomicUsize,
}

impl Conn {
    /// Round-robin over channels: each is a separate sftp-server process on the far side.
    fn pick(&self) -> Arc<Session> {
        let sessions = self.sessions.lock().unwrap();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % sessions.len();
        sessions[i].clone()
    }

    /// A channel with a free handle slot, opening another channel when all are full.
    async fn slot(&self) -> RawResult<(Arc<Session>, OwnedSemaphorePermit)> {
        if let Some(found) = self.try_slot() {
            return Ok(found);
        }
        let _one_at_a_time = self.opening.lock().await;
        if let Some(found) = self.try_slot() {
            return Ok(found);
        }
        let count = self.sessions.lock().unwrap().len();
        if count < MAX_SESSIONS {
            match self.ssh.open_sftp(REQUEST_TIMEOUT).await {
                Ok((raw, _)) => return Ok(self.add_session(raw)),
                // A server allowing fewer channels (MaxSessions): make do with those open.
                Err(e) if !self.ssh.is_closed() => {
                    tracing::debug!("no more SFTP channels ({e}); waiting for a free handle");
                }
                Err(e) => return Err(russh_sftp::client::error::Error::IO(e)),
            }
        }
        // Every channel is full: wait for a handle to close.
        let session = self.pick();
        let permit = session
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        Ok((session, permit))
    }

    /// Free handle slots on up to `n` channels other than `avoid`'s, opening channels (all
    /// at once) while there is room.
    async fn slots_elsewhere(
        &self,
        avoid: &Arc<Session>,
        n: usize,
    ) -> Vec<(Arc<Session>, OwnedSemaphorePermit)> {
        let _one_at_a_time = self.opening.lock().await;
        let mut found: Vec<_> = self
            .sessions
            .lock()
            .unwrap()
            .iter()
            .filter(|s| !Arc::ptr_eq(s, avoid))
            .filter_map(|s| Some((s.clone(), s.slots.clone().try_acquire_owned().ok()?)))
            .take(n)
            .collect();
        let room = MAX_SESSIONS.saturating_sub(self.sessions.lock().unwrap().len());
        let more = (n - found.len()).min(room);
        let opened = (0..more).map(|_| self.ssh.open_sftp(REQUEST_TIMEOUT));
        for (raw, _) in futures::future::join_all(opened)
            .await
            .into_iter()
            .flatten()
        {
            found.push(self.add_session(raw));
        }
        found
    }

    /// Adds a newly opened channel, with one of its handle slots taken for the caller.
    fn add_session(&self, raw: RawSftpSession) -> (Arc<Session>, OwnedSemaphorePermit) {
        let session = Session::new(raw);
        let permit = session
            .slots
            .clone()
            .try_acquire_owned()
            .expect("fresh session");
        self.sessions.lock().unwrap().push(session.clone());
        (session, permit)
    }

    fn try_slot(&self) -> Option<(Arc<Session>, OwnedSemaphorePermit)> {
        let sessions = self.sessions.lock().unwrap();
        sessions.iter().find_map(|s| {
            s.slots
                .clone()
                .try_acquire_owned()
                .ok()
                .map(|p| (s.clone(), p))
        })
    }
}

enum Slot {
    Up(Arc<Conn>),
    Down,
    Closed,
}

/// A connected remote. Cheap to clone; all clones share the connection.
#[derive(Clone)]
pub struct Sftp {
    inner: Arc<Inner>,
}

struct Inner {
    /// Options for reconnecting, with the host key pinned to the one first seen.
    opts: MountOptions,
    root: String,
    fingerprint: String,
    slot: watch::Sender<Slot>,
    /// Callers that saw the transport fail wake the supervisor at once.
    trouble: Arc<Notify>,
    generations: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    reconnects: AtomicU64,
    last_error: Mutex<Option<String>>,
    posix_rename: bool,
    /// Bytes per READ and per WRITE packet (see `io_len`), from the latest connection.
    read_len: AtomicUsize,
    write_len: AtomicUsize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.slot.send_replace(Slot::Closed);
    }
}

fn transport_error(e: &russh_sftp::client::error::Error) -> bool {
    use russh_sftp::client::error::Error as E;
    matches!(e, E::IO(_) | E::Timeout | E::UnexpectedBehavior(_))
}

fn from_raw(e: russh_sftp::client::error::Error) -> Error {
    use russh_sftp::client::error::Error as E;
    match e {
        E::Status(st) => Error::Status {
            code: st.status_code,
            message: st.error_message,
        },
        E::Timeout => Error::Timeout,
        E::IO(m) | E::UnexpectedBehavior(m) => Error::Disconnected(m),
        other => Error::Other(other.to_string()),
    }
}

fn status_ok(packet: Packet) -> RawResult<()> {
    match packet {
        Packet::Status(st) if st.status_code == StatusCode::Ok => Ok(()),
        Packet::Status(st) => Err(russh_sftp::client::error::Error::Status(st)),
        _ => Err(russh_sftp::client::error::Error::UnexpectedPacket),
    }
}

/// SSH wire encoding of a string: u32 length, then the bytes.
fn put_string(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// What the server's sftp-server supports, from its version packet and limits.
#[derive(Clone, Copy)]
struct Features {
    posix_rename: bool,
    read_len: usize,
    write_len: usize,
}

/// Opens the connection and its first SFTP channel.
async fn establish(opts: &MountOptions, generation: u64) -> Result<(Conn, Features), ConnectError> {
    let ssh = ssh::connect(opts).await?;
    let (raw, extensions) = ssh
        .open_sftp(REQUEST_TIMEOUT)
        .await
        .map_err(ConnectError::Protocol)?;
    let posix_rename = extensions.contains_key("posix-rename@openssh.com");
    if !posix_rename {
        tracing::warn!("server lacks posix-rename@openssh.com; rename over a file may fail");
    }
    // Only asked when announced: a server that does not know the request may not answer it.
    let limits = if extensions.contains_key("limits@openssh.com") {
        raw.limits().await.ok()
    } else {
        None
    };
    let features = Features {
        posix_rename,
        read_len: io_len(limits.as_ref().map(|l| l.max_read_len)),
        write_len: io_len(limits.as_ref().map(|l| l.max_write_len)),
    };
    tracing::debug!(
        posix_rename,
        read_len = features.read_len,
        write_len = features.write_len,
        "sftp-server features"
    );
    let conn = Conn {
        generation,
        ssh,
        sessions: Mutex::new(vec![Session::new(raw)]),
        opening: tokio::sync::Mutex::new(()),
        next: AtomicUsize::new(0),
    };
    Ok((conn, features))
}

impl Sftp {
    /// Connects, authenticates, checks the host key and resolves the remote root directory.
    /// Fails with a message that says what to fix (wrong password, unknown host key, ...).
    pub async fn connect(opts: &MountOptions) -> Result<Sftp, ConnectError> {
        let (conn, features) = establish(opts, 1).await?;
        let fingerprint = conn.ssh.host_key_fingerprint().to_string();
        let root = resolve_root(&conn, &opts.remote.path).await?;

        let mut reconnect_opts = opts.clone();
        if opts.strict_host_key_checking != StrictHostKeyChecking::No {
            reconnect_opts.hostkey = Some(fingerprint.clone());
        }
        reconnect_opts.learn_host_keys = false;
        let (slot, _) = watch::channel(Slot::Up(Arc::new(conn)));
        let inner = Arc::new(Inner {
            opts: reconnect_opts,
            root,
            fingerprint,
            slot,
            trouble: Arc::new(Notify::new()),
            generations: AtomicU64::new(1),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            last_error: Mutex::new(None),
            posix_rename: features.posix_rename,
            read_len: AtomicUsize::new(features.read_len),
            write_len: AtomicUsize::new(features.write_len),
        });
        tokio::spawn(supervise(Arc::downgrade(&inner)));
        Ok(Sftp { inner })
    }

    /// The generation of the connection in use, if it is up.
    fn live_generation(&self) -> Option<u64> {
        match &*self.inner.slot.borrow() {
            Slot::Up(c) if !c.ssh.is_closed() => Some(c.generation),
            _ => None,
        }
    }

    /// The absolute remote directory this mount shows as its root (no trailing slash unless `/`).
    pub fn root(&self) -> &str {
        &self.inner.root
    }

    /// The SHA256 fingerprint of the server's host key, as pinned.
    pub fn host_key_fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    pub fn stats(&self) -> Stats {
        let state = match &*self.inner.slot.borrow() {
            Slot::Up(c) if !c.ssh.is_closed() => "connected",
            Slot::Up(_) | Slot::Down => "reconnecting",
            Slot::Closed => "closed",
        };
        Stats {
            bytes_read: self.inner.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.inner.bytes_written.load(Ordering::Relaxed),
            reconnects: self.inner.reconnects.load(Ordering::Relaxed),
            state: state.to_string(),
            last_error: self.inner.last_error.lock().unwrap().clone(),
        }
    }

    /// The live connection, waiting for a reconnect until `deadline`.
    async fn conn(&self, deadline: Instant) -> Result<Arc<Conn>, Error> {
        let mut rx = self.inner.slot.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Slot::Up(c) if !c.ssh.is_closed() => return Ok(c.clone()),
                Slot::Up(_) => self.inner.trouble.notify_one(),
                Slot::Down => {}
                Slot::Closed => return Err(Error::Disconnected("the volume was unmounted".into())),
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(Error::Disconnected("the volume was unmounted".into())),
                Err(_) => {
                    let why = self.inner.last_error.lock().unwrap().clone();
                    return Err(Error::Disconnected(why.unwrap_or_else(|| {
                        "the SSH server is unreachable; gave up waiting for it to come back".into()
                    })));
                }
            }
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.inner.opts.reconnect_timeout
    }

    /// Runs `f` on the live connection; on a transport failure waits for the reconnect and
    /// runs it again, until `reconnect_timeout` has passed.
    async fn retry<T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        F: Fn(Arc<Conn>) -> Fut,
        Fut: Future<Output = RawResult<T>>,
    {
        let deadline = self.deadline();
        loop {
            let conn = self.conn(deadline).await?;
            match f(conn.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if transport_error(&e) => {
                    tracing::debug!(error = %e, "SFTP transport failed; waiting for reconnect");
                    self.inner.trouble.notify_one();
                    if Instant::now() >= deadline {
                        return Err(from_raw(e));
                    }
                    // Let the supervisor see the dead transport before we look again.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(from_raw(e)),
            }
        }
    }

    /// `retry` for a request that needs no handle: any channel will do.
    async fn simple<T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        F: Fn(Arc<Session>) -> Fut,
        Fut: Future<Output = RawResult<T>>,
    {
        self.retry(|conn| f(conn.pick())).await
    }

    pub async fn lstat(&self, path: &str) -> Result<FileAttributes, Error> {
        self.simple(|s| async move { s.raw.lstat(path).await.map(|a| a.attrs) })
            .await
    }

    pub async fn stat(&self, path: &str) -> Result<FileAttributes, Error> {
        self.simple(|s| async move { s.raw.stat(path).await.map(|a| a.attrs) })
            .await
    }

    pub async fn setstat(&self, path: &str, attrs: FileAttributes) -> Result<(), Error> {
        self.simple(|s| {
            let attrs = attrs.clone();
            async move { s.raw.setstat(path, attrs).await.map(drop) }
        })
        .await
    }

    /// The whole listing (without `.` and `..`), in server order: OPENDIR, then READDIRs
    /// pipelined `READDIR_PIPELINE` at a time; the CLOSE is not waited for.
    pub async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, Error> {
        self.retry(|conn| async move {
            let (session, slot) = conn.slot().await?;
            let handle = session.raw.opendir(path).await?.handle;
            let mut entries = Vec::new();
            let result = 'listing: loop {
                // join_all polls in order, so the requests go out (and are answered) in order.
                let batch = futures::future::join_all(
                    (0..READDIR_PIPELINE).map(|_| session.raw.readdir(handle.as_str())),
                )
                .await;
                for r in batch {
                    match r {
                        Ok(name) => entries.extend(
                            name.files
                                .into_iter()
                                .filter(|f| f.filename != "." && f.filename != "..")
                                .map(|f| DirEntry {
                                    nlink: longname_nlink(&f.longname),
                                    name: f.filename,
                                    attrs: f.attrs,
                                }),
                        ),
                        Err(russh_sftp::client::error::Error::Status(st))
                            if st.status_code == StatusCode::Eof =>
                        {
                            break 'listing Ok(entries);
                        }
                        Err(e) => break 'listing Err(e),
                    }
                }
            };
            // Nobody needs the answer to the CLOSE: send it in the background. The handle slot
            // is held until the server has answered, so the server never holds more handles
            // than we count.
            let closing = Arc::clone(&session);
            tokio::spawn(async move {
                let _ = closing.raw.close(handle).await;
                drop(slot);
            });
            result
        })
        .await
    }

    pub async fn mkdir(&self, path: &str, mode: u32) -> Result<(), Error> {
        self.simple(|s| async move {
            let attrs = FileAttributes {
                permissions: Some(mode & 0o7777),
                ..FileAttributes::empty()
            };
            s.raw.mkdir(path, attrs).await.map(drop)
        })
        .await
    }

    pub async fn rmdir(&self, path: &str) -> Result<(), Error> {
        self.simple(|s| async move { s.raw.rmdir(path).await.map(drop) })
            .await
    }

    pub async fn remove(&self, path: &str) -> Result<(), Error> {
        self.simple(|s| async move { s.raw.remove(path).await.map(drop) })
            .await
    }

    /// Renames, replacing `to` if it exists (posix-rename@openssh.com).
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), Error> {
        if !self.inner.posix_rename {
            return self
                .simple(|s| async move { s.raw.rename(from, to).await.map(drop) })
                .await;
        }
        let mut data = Vec::with_capacity(from.len() + to.len() + 8);
        put_string(&mut data, from);
        put_string(&mut data, to);
        self.simple(|s| {
            let data = data.clone();
            async move { status_ok(s.raw.extended("posix-rename@openssh.com", data).await?) }
        })
        .await
    }

    /// Creates `link` pointing at `target` (argument order handled for OpenSSH).
    pub async fn symlink(&self, target: &str, link: &str) -> Result<(), Error> {
        // OpenSSH takes SSH_FXP_SYMLINK's arguments reversed (its PROTOCOL §4.1): target first.
        // russh-sftp sends its first argument first.
        self.simple(|s| async move { s.raw.symlink(target, link).await.map(drop) })
            .await
    }

    pub async fn readlink(&self, path: &str) -> Result<String, Error> {
        self.simple(|s| async move {
            let name = s.raw.readlink(path).await?;
            name.files
                .into_iter()
                .next()
                .map(|f| f.filename)
                .ok_or(russh_sftp::client::error::Error::UnexpectedPacket)
        })
        .await
    }

    /// hardlink@openssh.com: `new` becomes another name for `existing`.
    pub async fn hardlink(&self, existing: &str, new: &str) -> Result<(), Error> {
        self.simple(|s| async move { s.raw.hardlink(existing, new).await.map(drop) })
            .await
    }

    pub async fn statvfs(&self, path: &str) -> Result<Statvfs, Error> {
        self.simple(|s| async move { s.raw.statvfs(path).await })
            .await
    }

    /// Opens `path`. `File::write` is positional, so APPEND is not passed on: a server-side
    /// O_APPEND ignores offsets and would put pipelined or retried writes in arrival order.
    /// Callers that append compute the offset (the remote size) themselves.
    pub async fn open(
        &self,
        path: &str,
        flags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<File, Error> {
        let flags = flags.difference(OpenFlags::APPEND);
        let handle = self
            .retry(|conn| {
                let attrs = attrs.clone();
                async move { open_on(&conn, path, flags, attrs).await }
            })
            .await?;
        Ok(File {
            sftp: self.clone(),
            path: path.to_string(),
            reopen_flags: flags
                .difference(OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::EXCLUDE),
            open: Mutex::new(Some(handle)),
            reopening: tokio::sync::Mutex::new(()),
            stripes: Mutex::new(Vec::new()),
            striping: AtomicBool::new(false),
            written: AtomicU64::new(0),
        })
    }

    /// Closes the connection; later calls fail with `Disconnected`.
    pub async fn disconnect(&self) {
        let old = self.inner.slot.send_replace(Slot::Closed);
        if let Slot::Up(conn) = old {
            conn.ssh.disconnect().await;
        }
    }
}

async fn open_on(
    conn: &Arc<Conn>,
    path: &str,
    flags: OpenFlags,
    attrs: FileAttributes,
) -> RawResult<OpenHandle> {
    let (session, permit) = conn.slot().await?;
    open_in(conn.generation, session, permit, path, flags, attrs).await
}

/// Opens `path` on the channel `session` of connection `generation`, in the slot `permit`.
async fn open_in(
    generation: u64,
    session: Arc<Session>,
    permit: OwnedSemaphorePermit,
    path: &str,
    flags: OpenFlags,
    attrs: FileAttributes,
) -> RawResult<OpenHandle> {
    let handle = session.raw.open(path, flags, attrs).await?.handle;
    Ok(OpenHandle {
        generation,
        session,
        handle,
        _slot: Arc::new(permit),
    })
}

/// `realpath` of the configured path, which must be a directory.
async fn resolve_root(conn: &Conn, path: &str) -> Result<String, ConnectError> {
    let session = conn.pick();
    let shown = if path.is_empty() { "~" } else { path };
    let remote_err = |reason: String| ConnectError::RemotePath {
        path: shown.to_string(),
        reason,
    };
    let describe = |e: russh_sftp::client::error::Error| match e {
        russh_sftp::client::error::Error::Status(st) => match st.status_code {
            StatusCode::NoSuchFile => "does not exist".to_string(),
            StatusCode::PermissionDenied => "is not accessible to this user".to_string(),
            _ => format!("cannot be opened ({})", st.error_message),
        },
        other => format!("cannot be checked ({other})"),
    };
    let target = if path.is_empty() { "." } else { path };
    let name = session
        .raw
        .realpath(target)
        .await
        .map_err(|e| remote_err(describe(e)))?;
    let root = name
        .files
        .into_iter()
        .next()
        .map(|f| f.filename)
        .ok_or_else(|| remote_err("cannot be resolved".into()))?;
    let attrs = session
        .raw
        .stat(root.as_str())
        .await
        .map_err(|e| remote_err(describe(e)))?
        .attrs;
    if !attrs.is_dir() {
        return Err(remote_err("is not a directory".into()));
    }
    Ok(root)
}

/// Watches the connection and replaces it when it dies, with backoff, until unmounted.
async fn supervise(inner: Weak<Inner>) {
    loop {
        // Wait for trouble on the current connection.
        loop {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            let dead = match &*strong.slot.borrow() {
                Slot::Up(c) => c.ssh.is_closed(),
                Slot::Down => true,
                Slot::Closed => return,
            };
            if dead {
                break;
            }
            let trouble = strong.trouble.clone();
            drop(strong);
            let _ = tokio::time::timeout(WATCH_INTERVAL, trouble.notified()).await;
        }

        let Some(strong) = inner.upgrade() else {
            return;
        };
        if matches!(&*strong.slot.borrow(), Slot::Closed) {
            return;
        }
        strong.slot.send_replace(Slot::Down);
        let target = strong.opts.remote.to_string();
        tracing::warn!(remote = %target, "connection lost; reconnecting");
        drop(strong);

        let mut backoff = Duration::from_millis(200);
        loop {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            if matches!(&*strong.slot.borrow(), Slot::Closed) {
                return;
            }
            let generation = strong.generations.fetch_add(1, Ordering::Relaxed) + 1;
            let opts = strong.opts.clone();
            drop(strong);
            let result = establish(&opts, generation).await;
            let Some(strong) = inner.upgrade() else {
                return;
            };
            match result {
                Ok((conn, features)) => {
                    // The same server, possibly upgraded: packet sizes follow it.
                    strong.read_len.store(features.read_len, Ordering::Relaxed);
                    strong
                        .write_len
                        .store(features.write_len, Ordering::Relaxed);
                    let was_closed = matches!(&*strong.slot.borrow(), Slot::Closed);
                    if was_closed {
                        conn.ssh.disconnect().await;
                        return;
                    }
                    strong.reconnects.fetch_add(1, Ordering::Relaxed);
                    strong.slot.send_replace(Slot::Up(Arc::new(conn)));
                    tracing::info!(remote = %target, generation, "reconnected");
                    break;
                }
                Err(e) => {
                    tracing::warn!(remote = %target, error = %e, "reconnect failed; retrying in {backoff:?}");
                    *strong.last_error.lock().unwrap() = Some(e.to_string());
                    // A refused host key will not fix itself by retrying fast.
                    drop(strong);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// A handle on one connection generation; its slot is freed when the last clone is dropped.
#[derive(Clone)]
struct OpenHandle {
    generation: u64,
    session: Arc<Session>,
    handle: String,
    _slot: Arc<OwnedSemaphorePermit>,
}

/// An open remote file. Survives reconnects: it is reopened by path (without CREATE, TRUNCATE
/// or EXCLUDE) on the new connection and keeps its place in the caller's offsets.
pub struct File {
    sftp: Sftp,
    path: String,
    reopen_flags: OpenFlags,
    open: Mutex<Option<OpenHandle>>,
    reopening: tokio::sync::Mutex<()>,
    /// More write handles on other channels (see `STRIPE_AFTER`); dropped on reconnect.
    stripes: Mutex<Vec<OpenHandle>>,
    /// Set once the stripes were asked for: writes may then be on several channels.
    striping: AtomicBool,
    written: AtomicU64,
}

impl File {
    /// The handle valid on `conn`, reopening the file if the connection was replaced.
    async fn handle_on(&self, conn: &Arc<Conn>) -> RawResult<OpenHandle> {
        if let Some(h) = self.current(conn) {
            return Ok(h);
        }
        let _one = self.reopening.lock().await;
        if let Some(h) = self.current(conn) {
            return Ok(h);
        }
        if self.open.lock().unwrap().is_none() {
            return Err(russh_sftp::client::error::Error::Status(
                russh_sftp::protocol::Status {
                    id: 0,
                    status_code: StatusCode::Failure,
                    error_message: "file already closed".into(),
                    language_tag: String::new(),
                },
            ));
        }
        tracing::debug!(path = %self.path, "reopening file after reconnect");
        let h = open_on(conn, &self.path, self.reopen_flags, FileAttributes::empty()).await?;
        *self.open.lock().unwrap() = Some(h.clone());
        Ok(h)
    }

    /// Counts connection attempts: unchanged between two moments means no request was resent
    /// on a new connection in between.
    pub fn generation(&self) -> u64 {
        self.sftp.inner.generations.load(Ordering::SeqCst)
    }

    /// True if a request on this handle would go out at once: the connection is up and the
    /// handle is open on it. A request started then is on the wire, behind every request
    /// started before it on the same handle, by the time its first poll returns.
    /// Never for a file whose writes are spread over several channels.
    pub fn sends_now(&self) -> bool {
        if self.striping.load(Ordering::SeqCst) {
            return false;
        }
        let live = self.sftp.live_generation();
        matches!(&*self.open.lock().unwrap(), Some(h) if Some(h.generation) == live)
    }

    /// Opens the extra write handles (best effort: a channel or open refused means fewer).
    async fn open_stripes(&self) {
        let Ok(conn) = self.sftp.conn(Instant::now()).await else {
            return;
        };
        let Some(primary) = self.current(&conn) else {
            return;
        };
        let slots = conn.slots_elsewhere(&primary.session, STRIPES - 1).await;
        let opens = slots.into_iter().map(|(session, permit)| {
            let (path, attrs) = (self.path.as_str(), FileAttributes::empty());
            open_in(
                conn.generation,
                session,
                permit,
                path,
                OpenFlags::WRITE,
                attrs,
            )
        });
        let opened: Vec<_> = futures::future::join_all(opens)
            .await
            .into_iter()
            .filter_map(Result::ok)
            .collect();
        tracing::debug!(path = %self.path, channels = opened.len() + 1, "spreading writes");
        *self.stripes.lock().unwrap() = opened;
    }

    /// The extra write handles still valid (none after a reconnect).
    fn live_stripes(&self) -> Vec<OpenHandle> {
        let live = self.sftp.live_generation();
        let mut stripes = self.stripes.lock().unwrap();
        stripes.retain(|h| Some(h.generation) == live);
        stripes.clone()
    }

    /// One write packet on `stripe`, or on the main handle (with reconnects) if there is none
    /// or its connection failed.
    async fn write_on(
        &self,
        stripe: Option<OpenHandle>,
        at: u64,
        chunk: &[u8],
    ) -> Result<(), Error> {
        let send = |h: OpenHandle| async move {
            h.session
                .raw
                .write(h.handle.as_str(), at, chunk.to_vec())
                .await
                .map(drop)
        };
        if let Some(h) = stripe {
            match send(h).await {
                Ok(()) => return Ok(()),
                Err(e) if transport_error(&e) => self.sftp.inner.trouble.notify_one(),
                Err(e) => return Err(from_raw(e)),
            }
        }
        self.call(send).await
    }

    fn current(&self, conn: &Conn) -> Option<OpenHandle> {
        match &*self.open.lock().unwrap() {
            Some(h) if h.generation == conn.generation => Some(h.clone()),
            _ => None,
        }
    }

    async fn call<T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        F: Fn(OpenHandle) -> Fut,
        Fut: Future<Output = RawResult<T>>,
    {
        self.sftp
            .retry(|conn| {
                let f = &f;
                async move { f(self.handle_on(&conn).await?).await }
            })
            .await
    }

    /// Reads up to `len` bytes at `offset` (split into pipelined requests of the server's
    /// packet size). Returns fewer bytes only at end of file.
    pub async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, Error> {
        let len = len as u64;
        let max = self.sftp.inner.read_len.load(Ordering::Relaxed);
        let chunks = (0..len.div_ceil(max as u64)).map(|i| {
            let start = i * max as u64;
            let n = (len - start).min(max as u64) as u32;
            self.read_chunk(offset + start, n)
        });
        let mut parts = futures::future::join_all(chunks).await.into_iter();
        // One request's answer is returned as it came, without a copy.
        let mut out = parts.next().transpose()?.unwrap_or_default();
        let mut full = out.len() == max;
        for part in parts {
            if !full {
                break; // end of file
            }
            let part = part?;
            full = part.len() == max;
            out.extend_from_slice(&part);
        }
        self.sftp
            .inner
            .bytes_read
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }

    /// One chunk, topped up if the server answers short before end of file.
    async fn read_chunk(&self, offset: u64, len: u32) -> Result<Vec<u8>, Error> {
        let mut buf = Vec::new();
        while buf.len() < len as usize {
            let at = offset + buf.len() as u64;
            let want = len - buf.len() as u32;
            let data = self
                .call(|h| async move {
                    match h.session.raw.read(h.handle.as_str(), at, want).await {
                        Ok(d) => Ok(d.data),
                        Err(russh_sftp::client::error::Error::Status(st))
                            if st.status_code == StatusCode::Eof =>
                        {
                            Ok(Vec::new())
                        }
                        Err(e) => Err(e),
                    }
                })
                .await?;
            if data.is_empty() {
                break;
            }
            if buf.is_empty() && data.len() == len as usize {
                return Ok(data);
            }
            buf.extend_from_slice(&data);
        }
        Ok(buf)
    }

    /// Writes all of `data` at `offset` (split into pipelined requests of the server's packet
    /// size).
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        let max = self.sftp.inner.write_len.load(Ordering::Relaxed);
        let before = self.written.fetch_add(data.len() as u64, Ordering::Relaxed);
        if before + data.len() as u64 >= STRIPE_AFTER && !self.striping.swap(true, Ordering::SeqCst)
        {
            self.open_stripes().await;
        }
        let stripes = self.live_stripes();
        let chunks = data.chunks(max).enumerate().map(|(i, chunk)| {
            let at = offset + (i * max) as u64;
            // By position, so each channel gets every n-th packet of a sequential writer.
            let k = (at / max as u64) as usize % (stripes.len() + 1);
            self.write_on(k.checked_sub(1).map(|k| stripes[k].clone()), at, chunk)
        });
        for r in futures::future::join_all(chunks).await {
            r?;
        }
        self.sftp
            .inner
            .bytes_written
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    pub async fn fstat(&self) -> Result<FileAttributes, Error> {
        self.call(|h| async move {
            h.session
                .raw
                .fstat(h.handle.as_str())
                .await
                .map(|a| a.attrs)
        })
        .await
    }

    pub async fn fsetstat(&self, attrs: FileAttributes) -> Result<(), Error> {
        self.call(|h| {
            let attrs = attrs.clone();
            async move {
                h.session
                    .raw
                    .fsetstat(h.handle.as_str(), attrs)
                    .await
                    .map(drop)
            }
        })
        .await
    }

    /// fsync@openssh.com.
    pub async fn fsync(&self) -> Result<(), Error> {
        self.call(|h| async move { h.session.raw.fsync(h.handle.as_str()).await.map(drop) })
            .await
    }

    /// Closes the remote handles. Errors the server reports on close are returned.
    pub async fn close(&self) -> Result<(), Error> {
        let mut handles = std::mem::take(&mut *self.stripes.lock().unwrap());
        handles.extend(self.open.lock().unwrap().take());
        let closes = handles.into_iter().map(|h| async move {
            // A handle from a dead connection is gone with it; nothing to close.
            if self.sftp.live_generation() != Some(h.generation) {
                return Ok(());
            }
            h.session
                .raw
                .close(h.handle.as_str())
                .await
                .map(drop)
                .map_err(from_raw)
        });
        futures::future::join_all(closes)
            .await
            .into_iter()
            .collect()
    }
}

impl Drop for File {
    fn drop(&mut self) {
        // A File dropped without close() still frees its remote handles.
        let mut handles = std::mem::take(self.stripes.get_mut().unwrap());
        handles.extend(self.open.get_mut().unwrap().take());
        if handles.is_empty() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for h in handles {
                    let _ = h.session.raw.close(h.handle.as_str()).await;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{io_len, longname_nlink};

    #[test]
    fn packet_size_follows_the_server_limits() {
        assert_eq!(io_len(None), 64 * 1024);
        assert_eq!(io_len(Some(0)), 64 * 1024);
        // OpenSSH 8.6+: 255 KiB.
        assert_eq!(io_len(Some(261_120)), 128 * 1024);
        assert_eq!(io_len(Some(100_000)), 64 * 1024);
        assert_eq!(io_len(Some(32_768)), 32 * 1024);
        assert_eq!(io_len(Some(10_000)), 8192);
        assert_eq!(io_len(Some(100)), 4096);
    }

    #[test]
    fn link_count_from_long_names() {
        let line = "-rw-r--r--    2 user     group        12 Nov 22 00:03 orig";
        assert_eq!(longname_nlink(line), Some(2));
        assert_eq!(
            longname_nlink("drwxr-sr-x   17 0 0 4096 Jan  1  2024 d"),
            Some(17)
        );
        assert_eq!(longname_nlink("orig"), None);
        assert_eq!(longname_nlink(""), None);
        assert_eq!(longname_nlink("-rw-r--r-- x user"), None);
    }
}
