//! An open remote file ([`File`]): its handles, reopening them after a reconnect or the death
//! of their channel, reads and
//! writes split into the server's packet size and pipelined, and big writes spread over
//! several channels. One piece because every part works on the same handle state: the main
//! handle, the extra write handles and the generation they belong to.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use tokio::time::Instant;

use super::Sftp;
use super::channel::{Channel, Conn, HandlePermit, Use};
use super::error::{Error, RawResult, from_raw, transport_error};
use super::ops::{resent_over, took_effect};

/// A file written through one channel gets at most the server's channel window (OpenSSH: 2 MiB)
/// per round trip: ~150 MB/s at 13 ms. Past this many bytes written, a file also gets handles on
/// other channels, and its writes are spread over all of them.
const STRIPE_AFTER: u64 = 4 * 1024 * 1024;
/// Channels one file's writes are spread over, at most.
const STRIPES: usize = 4;

/// A handle on one connection generation; its handle permit is returned when the last clone
/// is dropped.
#[derive(Clone)]
struct OpenHandle {
    generation: u64,
    channel: Arc<Channel>,
    handle: String,
    _permit: Arc<HandlePermit>,
}

/// An open remote file. Survives reconnects: it is reopened by its current path (without
/// CREATE, TRUNCATE or EXCLUDE) on the new connection and keeps its place in the caller's
/// offsets.
pub struct File {
    sftp: Sftp,
    /// Where the file is on the server now: the path it was opened by until whoever renames
    /// it says otherwise (`set_path`); `None` once it has no name we know. Reopens and extra
    /// write handles go by it, so they never open whatever took the old name.
    path: Mutex<Option<String>>,
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
        if self.open.lock().is_none() {
            return Err(russh_sftp::client::error::Error::Status(
                russh_sftp::protocol::Status {
                    id: 0,
                    status_code: StatusCode::Failure,
                    error_message: "file already closed".into(),
                    language_tag: String::new(),
                },
            ));
        }
        loop {
            let path = self.path.lock().clone().ok_or_else(no_name)?;
            tracing::debug!(%path, "reopening file after reconnect");
            let h = open_on(conn, &path, self.reopen_flags, FileAttributes::empty()).await?;
            if self.still_at(&path) {
                *self.open.lock() = Some(h.clone());
                return Ok(h);
            }
            discard(h);
        }
    }

    /// True if the file is still known at `path`: a handle opened by it while it was there is
    /// on the file itself. The filesystem hands on a rename's new name before the rename
    /// returns to its caller, so before anything through the mount can take the old name; a
    /// handle opened by a name that changed meanwhile may be on such a newcomer: not used.
    fn still_at(&self, path: &str) -> bool {
        self.path.lock().as_deref() == Some(path)
    }

    /// The file's current path on the server (it was renamed), or `None` (it was removed, or
    /// replaced by another file): later reopens and extra write handles use it.
    pub fn set_path(&self, path: Option<String>) {
        *self.path.lock() = path;
    }

    /// Counts connection attempts: unchanged between two moments means no request was resent
    /// on a new connection in between.
    pub fn generation(&self) -> u64 {
        self.sftp.remote.generations.load(Ordering::SeqCst)
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
        matches!(&*self.open.lock(), Some(h) if Some(h.generation) == live && !h.channel.is_dead())
    }

    /// Opens the extra write handles (best effort: a channel or open refused means fewer).
    async fn open_stripes(&self) {
        let Ok(conn) = self.sftp.conn(Instant::now()).await else {
            return;
        };
        let Some(primary) = self.current(&conn) else {
            return;
        };
        let Some(path) = self.path.lock().clone() else {
            return;
        };
        let permits = conn.permits_elsewhere(&primary.channel, STRIPES - 1).await;
        let opens = permits.into_iter().map(|(channel, permit)| {
            let (path, attrs) = (path.as_str(), FileAttributes::empty());
            open_in(
                conn.generation,
                channel,
                permit,
                path,
                OpenFlags::WRITE,
                attrs,
            )
        });
        let mut opened: Vec<_> = futures::future::join_all(opens)
            .await
            .into_iter()
            .filter_map(Result::ok)
            .collect();
        if !self.still_at(&path) {
            opened.drain(..).for_each(discard);
        }
        tracing::debug!(%path, channels = opened.len() + 1, "spreading writes");
        *self.stripes.lock() = opened;
    }

    /// The extra write handles still valid (none after a reconnect; none on a dead channel).
    fn live_stripes(&self) -> Vec<OpenHandle> {
        let live = self.sftp.live_generation();
        let mut stripes = self.stripes.lock();
        stripes.retain(|h| Some(h.generation) == live && !h.channel.is_dead());
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
            h.channel
                .raw
                .write(h.handle.as_str(), at, chunk.to_vec())
                .await
                .map(drop)
        };
        if let Some(h) = stripe {
            // `call` guards (and counts) the main handle's requests; a stripe's is guarded here.
            let channel = h.channel.clone();
            match channel.guard(send(h)).await {
                Ok(()) => return Ok(()),
                Err(e) if transport_error(&e) => self.sftp.remote.trouble.notify_one(),
                Err(e) => return Err(from_raw(e)),
            }
        }
        self.call(send).await
    }

    /// The main handle if it is valid on `conn`: opened on it, on a channel still alive.
    fn current(&self, conn: &Conn) -> Option<OpenHandle> {
        match &*self.open.lock() {
            Some(h) if h.generation == conn.generation && !h.channel.is_dead() => Some(h.clone()),
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
                async move {
                    let h = self.handle_on(&conn).await?;
                    let channel = h.channel.clone();
                    channel.guard(f(h)).await
                }
            })
            .await
    }

    /// Reads up to `len` bytes at `offset` (split into pipelined requests of the server's
    /// packet size). Returns fewer bytes only at end of file.
    pub async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, Error> {
        let len = len as u64;
        let max = self.sftp.remote.read_len.load(Ordering::Relaxed);
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
            .remote
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
                    match h.channel.raw.read(h.handle.as_str(), at, want).await {
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
        let before = self.written.fetch_add(data.len() as u64, Ordering::Relaxed);
        let spread_now = before + data.len() as u64 >= STRIPE_AFTER
            && !self.striping.swap(true, Ordering::SeqCst);
        let sent = self.send(offset, data, self.live_stripes());
        if spread_now {
            // A channel the connection does not have yet costs the server a new sftp-server
            // (150 ms on a fast link): this write and the ones after it go on the handles
            // there are meanwhile, rather than wait.
            let ((), sent) = futures::join!(self.open_stripes(), sent);
            sent?;
        } else {
            sent.await?;
        }
        self.sftp
            .remote
            .bytes_written
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// `data` at `offset` in pipelined packets of the server's size, spread over the main
    /// handle and `stripes`.
    async fn send(&self, offset: u64, data: &[u8], stripes: Vec<OpenHandle>) -> Result<(), Error> {
        let max = self.sftp.remote.write_len.load(Ordering::Relaxed);
        let chunks = data.chunks(max).enumerate().map(|(i, chunk)| {
            let at = offset + (i * max) as u64;
            // By position, so each channel gets every n-th packet of a sequential writer.
            let k = (at / max as u64) as usize % (stripes.len() + 1);
            self.write_on(k.checked_sub(1).map(|k| stripes[k].clone()), at, chunk)
        });
        for r in futures::future::join_all(chunks).await {
            r?;
        }
        Ok(())
    }

    pub async fn fstat(&self) -> Result<FileAttributes, Error> {
        self.call(|h| async move {
            h.channel
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
                h.channel
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
        self.call(|h| async move { h.channel.raw.fsync(h.handle.as_str()).await.map(drop) })
            .await
    }

    /// Closes the remote handles. Errors the server reports on close are returned.
    pub async fn close(&self) -> Result<(), Error> {
        let mut handles = std::mem::take(&mut *self.stripes.lock());
        handles.extend(self.open.lock().take());
        let closes = handles.into_iter().map(|h| async move {
            // A handle from a dead connection or channel is gone with it; nothing to close.
            if self.sftp.live_generation() != Some(h.generation) || h.channel.is_dead() {
                return Ok(());
            }
            h.channel
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
        let mut handles = std::mem::take(self.stripes.get_mut());
        handles.extend(self.open.get_mut().take());
        if handles.is_empty() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for h in handles {
                    let _ = h.channel.raw.close(h.handle.as_str()).await;
                }
            });
        }
    }
}

impl Sftp {
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
        let attrs = &attrs;
        let open = |flags: OpenFlags| {
            self.retry_noting(move |conn| {
                let attrs = attrs.clone();
                async move { open_on(&conn, path, flags, attrs).await }
            })
        };
        let handle = match open(flags).await {
            (Err(e), resent)
                if flags.contains(OpenFlags::EXCLUDE)
                    && resent_over(&e, resent, StatusCode::Failure) =>
            {
                // An exclusive create resent and refused: the first attempt's file if it is
                // there as that attempt left it (see `Sftp::retry_noting`).
                let perm = attrs.permissions.unwrap_or(0o7777) & 0o7777;
                let ours = matches!(self.lstat(path).await, Ok(a)
                    if a.is_regular() && a.size == Some(0)
                        && a.permissions.is_some_and(|m| m & 0o7777 & !perm == 0));
                took_effect("exclusive create", path, ours, e)?;
                let again = flags.difference(OpenFlags::CREATE | OpenFlags::EXCLUDE);
                open(again).await.0?
            }
            (r, _) => r?,
        };
        Ok(File {
            sftp: self.clone(),
            path: Mutex::new(Some(path.to_string())),
            reopen_flags: flags
                .difference(OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::EXCLUDE),
            open: Mutex::new(Some(handle)),
            reopening: tokio::sync::Mutex::new(()),
            stripes: Mutex::new(Vec::new()),
            striping: AtomicBool::new(false),
            written: AtomicU64::new(0),
        })
    }
}

/// Closes a handle that is not used, in the background.
fn discard(h: OpenHandle) {
    tokio::spawn(async move {
        let _ = h.channel.raw.close(h.handle.as_str()).await;
    });
}

/// Why a file with no name left cannot be reopened (see `File::path`).
fn no_name() -> russh_sftp::client::error::Error {
    russh_sftp::client::error::Error::Status(russh_sftp::protocol::Status {
        id: 0,
        status_code: StatusCode::NoSuchFile,
        error_message: "the file was removed or replaced since it was opened, and the \
                        connection it was open on is gone"
            .into(),
        language_tag: String::new(),
    })
}

async fn open_on(
    conn: &Arc<Conn>,
    path: &str,
    flags: OpenFlags,
    attrs: FileAttributes,
) -> RawResult<OpenHandle> {
    let (channel, permit) = conn.permit(Use::File).await?;
    open_in(conn.generation, channel, permit, path, flags, attrs).await
}

/// Opens `path` on `channel` of connection `generation`, the handle held by `permit`.
async fn open_in(
    generation: u64,
    channel: Arc<Channel>,
    permit: HandlePermit,
    path: &str,
    flags: OpenFlags,
    attrs: FileAttributes,
) -> RawResult<OpenHandle> {
    let handle = channel
        .guard(channel.raw.open(path, flags, attrs))
        .await?
        .handle;
    Ok(OpenHandle {
        generation,
        channel,
        handle,
        _permit: Arc::new(permit),
    })
}
