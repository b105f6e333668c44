//! Getting and keeping a connection: opening one (SSH, the first SFTP channel, what the server
//! supports), the state every request looks at, and the task that replaces a dead connection
//! (or one whose channels keep dying, see `channel`), with backoff, until the volume is
//! unmounted.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use russh_sftp::client::RawSftpSession;

use super::channel::{Conn, Traffic};
use super::{REQUEST_TIMEOUT, Remote};
use crate::options::MountOptions;
use crate::ssh::{self, ConnectError};

/// How often the supervisor looks at the transport when nobody reports trouble.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes per read or write packet when the server does not announce its limits: every SFTP
/// server takes 64 KiB (sshfs sends no more either).
const DEFAULT_IO: usize = 64 * 1024;
/// Bytes per packet when the server's `limits@openssh.com` allows it. Half as many requests
/// as 64 KiB cost sftp-server a quarter less CPU per byte; 256 KiB would not do: OpenSSH caps
/// reads at 255 KiB and russh-sftp drops the channel on an incoming packet over 256 KiB.
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

/// The connection requests go to, as the supervisor last set it.
pub(super) enum ConnState {
    /// In use; its transport may have died since (requests then wake the supervisor).
    Up(Arc<Conn>),
    /// Lost; the supervisor is reconnecting.
    Down,
    /// Unmounted: no more connections.
    Closed,
}

/// What the server's sftp-server supports, from its version packet and limits.
#[derive(Clone, Copy)]
pub(super) struct Features {
    pub(super) posix_rename: bool,
    /// `lsetstat@openssh.com`: attributes set on a symlink itself (see `Sftp::lsetstat`).
    pub(super) lsetstat: bool,
    pub(super) read_len: usize,
    pub(super) write_len: usize,
}

/// Opens the connection and its first SFTP channel (a reconnect: the root is known).
pub(super) async fn establish(
    opts: &MountOptions,
    generation: u64,
    traffic: Arc<Traffic>,
) -> Result<(Conn, Features), ConnectError> {
    let (ssh, raw, extensions) = open_first_channel(opts).await?;
    let features = features(&raw, &extensions).await;
    let conn = Conn::new(generation, ssh, raw, opts.reconnect_timeout, traffic);
    Ok((conn, features))
}

/// The first connect: `establish`, and the mount's directory resolved (`ops::resolve_root`)
/// in the same round trip as the limits.
pub(super) async fn establish_at_root(
    opts: &MountOptions,
    traffic: Arc<Traffic>,
) -> Result<(Conn, Features, String), ConnectError> {
    let (ssh, raw, extensions) = open_first_channel(opts).await?;
    let (features, root) = tokio::join!(
        features(&raw, &extensions),
        super::ops::resolve_root(&raw, &opts.remote.path)
    );
    let root = root?;
    let conn = Conn::new(1, ssh, raw, opts.reconnect_timeout, traffic);
    Ok((conn, features, root))
}

async fn open_first_channel(
    opts: &MountOptions,
) -> Result<(ssh::Connection, RawSftpSession, HashMap<String, String>), ConnectError> {
    let ssh = ssh::connect(opts).await?;
    let (raw, extensions) = ssh
        .open_sftp(REQUEST_TIMEOUT)
        .await
        .map_err(ConnectError::Protocol)?;
    Ok((ssh, raw, extensions))
}

/// What the server supports: its version packet's extensions, and its limits, asked for.
async fn features(raw: &RawSftpSession, extensions: &HashMap<String, String>) -> Features {
    let posix_rename = extensions.contains_key("posix-rename@openssh.com");
    if !posix_rename {
        tracing::warn!("server lacks posix-rename@openssh.com; rename over a file may fail");
    }
    let lsetstat = extensions.contains_key(super::ops::LSETSTAT);
    // Only asked when announced: a server that does not know the request may not answer it.
    let limits = if extensions.contains_key("limits@openssh.com") {
        raw.limits().await.ok()
    } else {
        None
    };
    let features = Features {
        posix_rename,
        lsetstat,
        read_len: io_len(limits.as_ref().map(|l| l.max_read_len)),
        write_len: io_len(limits.as_ref().map(|l| l.max_write_len)),
    };
    tracing::debug!(
        posix_rename,
        lsetstat,
        read_len = features.read_len,
        write_len = features.write_len,
        "sftp-server features"
    );
    features
}

/// Watches the connection and replaces it when it dies, with backoff, until unmounted.
pub(super) async fn supervise(remote: Weak<Remote>) {
    loop {
        // Wait for trouble on the current connection.
        loop {
            let Some(strong) = remote.upgrade() else {
                return;
            };
            let dead = match &*strong.state.borrow() {
                ConnState::Up(c) => !c.is_usable(),
                ConnState::Down => true,
                ConnState::Closed => return,
            };
            if dead {
                break;
            }
            let trouble = strong.trouble.clone();
            drop(strong);
            let _ = tokio::time::timeout(WATCH_INTERVAL, trouble.notified()).await;
        }

        let Some(strong) = remote.upgrade() else {
            return;
        };
        if matches!(&*strong.state.borrow(), ConnState::Closed) {
            return;
        }
        let old = strong.state.send_replace(ConnState::Down);
        let target = strong.opts.remote.to_string();
        match &old {
            ConnState::Up(c) if !c.ssh.is_closed() && c.condemned() => tracing::warn!(
                remote = %target,
                "SFTP channels keep dying on this connection; replacing the connection"
            ),
            _ => tracing::warn!(remote = %target, "connection lost; reconnecting"),
        }
        drop(strong);
        // Nothing queued on the old connection may reach the server after what is resent
        // on the new one: close it first.
        if let ConnState::Up(old) = old {
            old.shutdown().await;
        }

        let mut backoff = Duration::from_millis(200);
        loop {
            let Some(strong) = remote.upgrade() else {
                return;
            };
            if matches!(&*strong.state.borrow(), ConnState::Closed) {
                return;
            }
            let generation = strong.generations.fetch_add(1, Ordering::Relaxed) + 1;
            let opts = strong.opts.clone();
            let traffic = strong.traffic.clone();
            drop(strong);
            let result = establish(&opts, generation, traffic).await;
            let Some(strong) = remote.upgrade() else {
                return;
            };
            match result {
                Ok((conn, features)) => {
                    // The same server, possibly upgraded: packet sizes follow it.
                    strong.read_len.store(features.read_len, Ordering::Relaxed);
                    strong
                        .write_len
                        .store(features.write_len, Ordering::Relaxed);
                    let was_closed = matches!(&*strong.state.borrow(), ConnState::Closed);
                    if was_closed {
                        conn.ssh.disconnect().await;
                        return;
                    }
                    strong.reconnects.fetch_add(1, Ordering::Relaxed);
                    strong.state.send_replace(ConnState::Up(Arc::new(conn)));
                    tracing::info!(remote = %target, generation, "reconnected");
                    break;
                }
                Err(e) => {
                    tracing::warn!(remote = %target, error = %e, "reconnect failed; retrying in {backoff:?}");
                    *strong.last_error.lock() = Some(e.to_string());
                    // A refused host key will not fix itself by retrying fast.
                    drop(strong);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::io_len;

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
}
