//! The remote side of a mount: SFTP requests over one SSH connection, with reconnects.
//!
//! `Sftp` hides three limits of russh-sftp and of the network from the filesystem above it:
//! a cap on open handles per SFTP channel (more are spread over extra channels on the same
//! connection), a cap on the bytes one read or write packet may carry (larger calls are split
//! and pipelined), and a dropped connection (re-established with backoff; open files are reopened
//! by path and flags). Every call returns an [`Error`] that maps to an errno. A dead channel on a
//! live connection is replaced on its own (`channel`); a request that is not idempotent is not
//! blindly repeated after a failure (`ops`, `file`: see [`Sftp::retry_noting`]).
//!
//! This file holds the handle itself: connecting, the state all its clones share, and running a
//! request on the live connection with retries. The rest, by job:
//! - `error`: [`Error`] and the SFTP status → errno table;
//! - `channel`: the SFTP channels of one connection and their handle permits;
//! - `supervisor`: opening a connection and replacing it when it dies;
//! - `ops`: requests by path (stat, listings, rename, links, ...);
//! - `file`: [`File`], an open file with split, pipelined and striped reads and writes.

mod channel;
mod error;
mod file;
mod ops;
mod supervisor;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

pub use error::Error;
pub use file::File;
pub use ops::{DirEntry, longname_nlink};
pub use russh_sftp::extensions::Statvfs;
pub use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};

use crate::options::{MountOptions, StrictHostKeyChecking};
use crate::ssh::ConnectError;
use channel::{Channel, Conn, Traffic};
use error::{RawResult, from_raw, may_have_reached, transport_error};
use supervisor::{ConnState, establish_at_root, supervise};

/// A single request that gets no answer for this long is treated as a dead link.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The state of the link to the server, as `docker volume inspect` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    Connected,
    /// The connection died; requests wait (up to `reconnect_timeout`) for a new one.
    Reconnecting,
    /// Unmounted.
    Closed,
}

/// What a mount transferred and sent; the driver sums them over a volume's mounts.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Counters {
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// SFTP requests sent.
    pub requests: u64,
    /// Requests sent while none was in flight: at latency L the mount spent at least this
    /// many times L waiting (the benchmark's round trips per file).
    pub round_trips: u64,
    pub reconnects: u64,
}

impl Counters {
    pub fn add(&mut self, other: &Counters) {
        self.bytes_read += other.bytes_read;
        self.bytes_written += other.bytes_written;
        self.requests += other.requests;
        self.round_trips += other.round_trips;
        self.reconnects += other.reconnects;
    }
}

/// Counters and state for `docker volume inspect`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stats {
    pub counters: Counters,
    pub state: LinkState,
    pub last_error: Option<String>,
}

/// Whether a request was sent again after an attempt that may have been carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resent {
    No,
    MaybeDone,
}

/// A connected remote. Cheap to clone; all clones share the connection.
#[derive(Clone)]
pub struct Sftp {
    remote: Arc<Remote>,
}

/// One remote as every clone of its `Sftp` sees it: how to reach it, the connection in use,
/// what the server supports and the counters. Dropped with the last clone, which stops the
/// supervisor.
struct Remote {
    /// Options for reconnecting, with the host key pinned to the one first seen.
    opts: MountOptions,
    root: String,
    fingerprint: String,
    /// `(host:port, fingerprint)` of each jump host, as pinned.
    jump_keys: Vec<(String, String)>,
    state: watch::Sender<ConnState>,
    /// Callers that saw the transport fail wake the supervisor at once.
    trouble: Arc<Notify>,
    /// Connection attempts so far; each connection carries its number as its generation.
    generations: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    reconnects: AtomicU64,
    /// Requests and round trips over every connection (each channel counts into it).
    traffic: Arc<Traffic>,
    last_error: Mutex<Option<String>>,
    posix_rename: bool,
    /// The server announced `lsetstat@openssh.com` (see `Sftp::lsetstat`).
    lsetstat: bool,
    /// Bytes per READ and per WRITE packet, from the latest connection.
    read_len: AtomicUsize,
    write_len: AtomicUsize,
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.state.send_replace(ConnState::Closed);
    }
}

impl Sftp {
    /// Connects, authenticates, checks the host key and resolves the remote root directory.
    /// Fails with a message that says what to fix (wrong password, unknown host key, ...).
    pub async fn connect(opts: &MountOptions) -> Result<Sftp, ConnectError> {
        let traffic = Arc::new(Traffic::default());
        let (conn, features, root) = establish_at_root(opts, traffic.clone()).await?;
        let fingerprint = conn.ssh.host_key_fingerprint().to_string();
        let jump_keys = conn.ssh.jump_host_keys();

        let mut reconnect_opts = opts.clone();
        if opts.strict_host_key_checking != StrictHostKeyChecking::No {
            reconnect_opts.hostkey = Some(fingerprint.clone());
            // Each jump host is pinned the same way: a reconnect goes through the same hops.
            for (hop, (_, fp)) in reconnect_opts.proxy_jump.iter_mut().zip(&jump_keys) {
                hop.hostkey = Some(fp.clone());
            }
        }
        reconnect_opts.learn_host_keys = false;
        let (state, _) = watch::channel(ConnState::Up(Arc::new(conn)));
        let remote = Arc::new(Remote {
            opts: reconnect_opts,
            root,
            fingerprint,
            jump_keys,
            state,
            trouble: Arc::new(Notify::new()),
            generations: AtomicU64::new(1),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            traffic,
            last_error: Mutex::new(None),
            posix_rename: features.posix_rename,
            lsetstat: features.lsetstat,
            read_len: AtomicUsize::new(features.read_len),
            write_len: AtomicUsize::new(features.write_len),
        });
        tokio::spawn(supervise(Arc::downgrade(&remote)));
        Ok(Sftp { remote })
    }

    /// The generation of the connection in use, if it is up.
    fn live_generation(&self) -> Option<u64> {
        match &*self.remote.state.borrow() {
            ConnState::Up(c) if c.is_usable() => Some(c.generation),
            _ => None,
        }
    }

    /// The absolute remote directory this mount shows as its root (no trailing slash unless `/`).
    pub fn root(&self) -> &str {
        &self.remote.root
    }

    /// The SHA256 fingerprint of the server's host key, as pinned.
    pub fn host_key_fingerprint(&self) -> &str {
        &self.remote.fingerprint
    }

    /// `(host:port, SHA256 fingerprint)` of each jump host's key, first hop first.
    pub fn jump_host_keys(&self) -> &[(String, String)] {
        &self.remote.jump_keys
    }

    pub fn stats(&self) -> Stats {
        let state = match &*self.remote.state.borrow() {
            ConnState::Up(c) if c.is_usable() => LinkState::Connected,
            ConnState::Up(_) | ConnState::Down => LinkState::Reconnecting,
            ConnState::Closed => LinkState::Closed,
        };
        Stats {
            counters: Counters {
                bytes_read: self.remote.bytes_read.load(Ordering::Relaxed),
                bytes_written: self.remote.bytes_written.load(Ordering::Relaxed),
                requests: self.remote.traffic.requests.load(Ordering::Relaxed),
                round_trips: self.remote.traffic.round_trips.load(Ordering::Relaxed),
                reconnects: self.remote.reconnects.load(Ordering::Relaxed),
            },
            state,
            last_error: self.remote.last_error.lock().clone(),
        }
    }

    /// The live connection, waiting for a reconnect until `deadline`.
    async fn conn(&self, deadline: Instant) -> Result<Arc<Conn>, Error> {
        let mut rx = self.remote.state.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                ConnState::Up(c) if c.is_usable() => return Ok(c.clone()),
                ConnState::Up(_) => self.remote.trouble.notify_one(),
                ConnState::Down => {}
                ConnState::Closed => {
                    return Err(Error::Disconnected("the volume was unmounted".into()));
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(Error::Disconnected("the volume was unmounted".into())),
                Err(_) => {
                    let why = self.remote.last_error.lock().clone();
                    return Err(Error::Disconnected(why.unwrap_or_else(|| {
                        "the SSH server is unreachable; gave up waiting for it to come back".into()
                    })));
                }
            }
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.remote.opts.reconnect_timeout
    }

    /// Runs `f` on the live connection; on a transport failure waits for the reconnect (or
    /// the channel's replacement) and runs it again, until `reconnect_timeout` has passed.
    /// For idempotent requests only: see `retry_noting` for the others.
    async fn retry<T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        F: Fn(Arc<Conn>) -> Fut,
        Fut: Future<Output = RawResult<T>>,
    {
        self.retry_noting(f).await.0
    }

    /// `retry`, also telling whether an attempt before the last one may have been carried out
    /// by the server ([`Resent::MaybeDone`]): it failed on the transport after the request was
    /// handed over (the connection or channel died before the answer came).
    ///
    /// The rule for requests that are not idempotent (mkdir, exclusive create, rename, unlink,
    /// rmdir, link, symlink): when the last attempt fails with the error the first one would
    /// have caused had it taken effect (EEXIST, i.e. FAILURE from OpenSSH, for a name we create;
    /// ENOENT for one we remove or rename), and the first attempt may have reached the server,
    /// the server's state decides: if it is exactly what our call produces (the directory
    /// exists; the name is gone; source gone and target present; the link points at our
    /// target; the new name has the same type, size, mtime, mode and owner as the old; the
    /// created file is empty with no mode bit we did not ask for), the call succeeded. Someone
    /// else doing the very same thing in the same instant cannot be told apart; SFTP v3 gives
    /// no request ids that outlive a connection and no inode numbers.
    async fn retry_noting<T, F, Fut>(&self, f: F) -> (Result<T, Error>, Resent)
    where
        F: Fn(Arc<Conn>) -> Fut,
        Fut: Future<Output = RawResult<T>>,
    {
        let deadline = self.deadline();
        let mut resent = Resent::No;
        loop {
            let conn = match self.conn(deadline).await {
                Ok(c) => c,
                Err(e) => return (Err(e), resent),
            };
            match f(conn.clone()).await {
                Ok(v) => return (Ok(v), resent),
                Err(e) if transport_error(&e) => {
                    tracing::debug!(error = %e, "SFTP transport failed; waiting for reconnect");
                    if may_have_reached(&e) {
                        resent = Resent::MaybeDone;
                    }
                    self.remote.trouble.notify_one();
                    if Instant::now() >= deadline {
                        return (Err(from_raw(e)), resent);
                    }
                    // Let the supervisor see the dead transport before we look again; a dead
                    // channel on a live connection is left out at once, so look again sooner.
                    let pause = if conn.is_usable() { 10 } else { 50 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Err(e) => return (Err(from_raw(e)), resent),
            }
        }
    }

    /// `retry` for a request that needs no handle: any live channel will do.
    async fn on_any_channel<T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        F: Fn(Arc<Channel>) -> Fut,
        Fut: Future<Output = RawResult<T>>,
    {
        self.on_any_channel_noting(f).await.0
    }

    /// `retry_noting` for a request that needs no handle.
    async fn on_any_channel_noting<T, F, Fut>(&self, f: F) -> (Result<T, Error>, Resent)
    where
        F: Fn(Arc<Channel>) -> Fut,
        Fut: Future<Output = RawResult<T>>,
    {
        self.retry_noting(|conn| {
            let f = &f;
            async move {
                let channel = conn.channel().await?;
                channel.guard(f(channel.clone())).await
            }
        })
        .await
    }

    /// Closes the connection; later calls fail with `Disconnected`.
    pub async fn disconnect(&self) {
        let old = self.remote.state.send_replace(ConnState::Closed);
        if let ConnState::Up(conn) = old {
            conn.ssh.disconnect().await;
        }
    }
}
