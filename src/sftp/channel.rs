//! The SFTP channels of one SSH connection: each channel with the handle permits it has left,
//! and picking a channel for a request or opening another one when every handle is taken.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use russh_sftp::client::RawSftpSession;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::REQUEST_TIMEOUT;
use super::error::RawResult;
use crate::ssh;

/// Handles per SFTP channel: russh-sftp decodes handles lossily as UTF-8, and OpenSSH's handles
/// are a 4-byte big-endian index, so its 129th simultaneous handle (index 128: a 0x80 byte)
/// comes back corrupted. Stay well below.
const HANDLES_PER_CHANNEL: usize = 120;
/// OpenSSH allows 10 channels per connection by default (MaxSessions); leave two spare.
const MAX_CHANNELS: usize = 8;

/// One SFTP channel (a separate sftp-server process on the far side) and the handle permits
/// it has left.
pub(super) struct Channel {
    pub(super) raw: RawSftpSession,
    handles: Arc<Semaphore>,
}

/// The right to hold one open handle on a channel; returned when dropped.
pub(super) struct HandlePermit {
    _permit: OwnedSemaphorePermit,
}

impl Channel {
    fn new(raw: RawSftpSession) -> Arc<Channel> {
        Arc::new(Channel {
            raw,
            handles: Arc::new(Semaphore::new(HANDLES_PER_CHANNEL)),
        })
    }

    fn try_permit(&self) -> Option<HandlePermit> {
        let permit = self.handles.clone().try_acquire_owned().ok()?;
        Some(HandlePermit { _permit: permit })
    }

    async fn permit(&self) -> HandlePermit {
        let permit = self
            .handles
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        HandlePermit { _permit: permit }
    }
}

/// One SSH connection and its SFTP channels. Replaced as a whole on reconnect.
pub(super) struct Conn {
    /// Which connection attempt this is (see `Remote::generations`).
    pub(super) generation: u64,
    pub(super) ssh: ssh::Connection,
    channels: Mutex<Vec<Arc<Channel>>>,
    /// Extra channels are opened one at a time.
    opening: tokio::sync::Mutex<()>,
    next: AtomicUsize,
}

impl Conn {
    /// A connection with its first channel open.
    pub(super) fn new(generation: u64, ssh: ssh::Connection, first: RawSftpSession) -> Conn {
        Conn {
            generation,
            ssh,
            channels: Mutex::new(vec![Channel::new(first)]),
            opening: tokio::sync::Mutex::new(()),
            next: AtomicUsize::new(0),
        }
    }

    /// Round-robin over channels: each is a separate sftp-server process on the far side.
    pub(super) fn pick(&self) -> Arc<Channel> {
        let channels = self.channels.lock();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % channels.len();
        channels[i].clone()
    }

    /// A channel with a free handle permit, opening another channel when all are full.
    pub(super) async fn permit(&self) -> RawResult<(Arc<Channel>, HandlePermit)> {
        if let Some(found) = self.try_permit() {
            return Ok(found);
        }
        let _one_at_a_time = self.opening.lock().await;
        if let Some(found) = self.try_permit() {
            return Ok(found);
        }
        let count = self.channels.lock().len();
        if count < MAX_CHANNELS {
            match self.ssh.open_sftp(REQUEST_TIMEOUT).await {
                Ok((raw, _)) => return Ok(self.add_channel(raw)),
                // A server allowing fewer channels (MaxSessions): make do with those open.
                Err(e) if !self.ssh.is_closed() => {
                    tracing::debug!("no more SFTP channels ({e}); waiting for a free handle");
                }
                Err(e) => return Err(russh_sftp::client::error::Error::IO(e)),
            }
        }
        // Every channel is full: wait for a handle to close.
        let channel = self.pick();
        let permit = channel.permit().await;
        Ok((channel, permit))
    }

    /// Free handle permits on up to `n` channels other than `avoid`, opening channels (all
    /// at once) while there is room.
    pub(super) async fn permits_elsewhere(
        &self,
        avoid: &Arc<Channel>,
        n: usize,
    ) -> Vec<(Arc<Channel>, HandlePermit)> {
        let _one_at_a_time = self.opening.lock().await;
        let mut found: Vec<_> = self
            .channels
            .lock()
            .iter()
            .filter(|c| !Arc::ptr_eq(c, avoid))
            .filter_map(|c| Some((c.clone(), c.try_permit()?)))
            .take(n)
            .collect();
        let room = MAX_CHANNELS.saturating_sub(self.channels.lock().len());
        let more = (n - found.len()).min(room);
        let opened = (0..more).map(|_| self.ssh.open_sftp(REQUEST_TIMEOUT));
        for (raw, _) in futures::future::join_all(opened)
            .await
            .into_iter()
            .flatten()
        {
            found.push(self.add_channel(raw));
        }
        found
    }

    /// Adds a newly opened channel, with one of its handle permits taken for the caller.
    fn add_channel(&self, raw: RawSftpSession) -> (Arc<Channel>, HandlePermit) {
        let channel = Channel::new(raw);
        let permit = channel.try_permit().expect("fresh channel");
        self.channels.lock().push(channel.clone());
        (channel, permit)
    }

    fn try_permit(&self) -> Option<(Arc<Channel>, HandlePermit)> {
        let channels = self.channels.lock();
        channels
            .iter()
            .find_map(|c| c.try_permit().map(|p| (c.clone(), p)))
    }
}
