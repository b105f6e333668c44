//! The SFTP channels of one SSH connection: each channel with the handle permits it has left,
//! picking a live channel for a request, replacing channels that died (sshd's `ChannelTimeout`,
//! a killed sftp-server) while the connection lives, waiting (bounded, without a lock) for a
//! free handle, and the rule that gives up a connection whose channels keep dying.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use russh_sftp::client::RawSftpSession;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use super::REQUEST_TIMEOUT;
use super::error::{Ended, RawResult, channel_ended};
use crate::ssh;

/// Handles per SFTP channel: russh-sftp decodes handles lossily as UTF-8, and OpenSSH's handles
/// are a 4-byte big-endian index, so its 129th simultaneous handle (index 128: a 0x80 byte)
/// comes back corrupted. Stay well below.
const HANDLES_PER_CHANNEL: usize = 120;
/// Of those, the ones open files may not take: a listing holds its handle for a round trip or
/// two, so with every file handle taken, listings still find one at once.
const LISTING_RESERVE: usize = 8;
/// Channels per connection, at most, while the server accepts more (OpenSSH: `MaxSessions`,
/// 10 by default; a refused channel lowers the count for that connection).
const MAX_CHANNELS: usize = 16;
/// "Keeps dying": this many channels died with requests in flight on them within
/// `DEATH_WINDOW` on one connection. The connection is then replaced as a whole. A channel
/// found dead while idle (`ChannelTimeout`, an idle sftp-server killed) does not count: it is
/// replaced, however often that happens.
const DEATHS_BEFORE_RECONNECT: usize = 3;
const DEATH_WINDOW: Duration = Duration::from_secs(60);

/// What a handle is for: open files leave `LISTING_RESERVE` handles per channel to listings.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Use {
    File,
    Listing,
}

/// The channel deaths of one connection, and whether they condemned it.
#[derive(Default)]
struct DeathLog {
    recent: VecDeque<Instant>,
}

impl DeathLog {
    /// Records a death at `now`; true if the connection's channels keep dying.
    fn died(&mut self, now: Instant) -> bool {
        self.recent.push_back(now);
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > DEATH_WINDOW)
        {
            self.recent.pop_front();
        }
        self.recent.len() >= DEATHS_BEFORE_RECONNECT
    }
}

/// What a connection's channels share: the wake-up for callers waiting for a handle, and the
/// death count.
#[derive(Default)]
struct Health {
    /// Notified whenever a handle is returned, a channel is added or one dies.
    freed: Notify,
    deaths: Mutex<DeathLog>,
    /// Set once channels kept dying: the supervisor replaces the connection.
    condemned: AtomicBool,
    /// Requests and round trips, counted for the whole mount (it outlives the connection).
    traffic: Arc<Traffic>,
}

/// What a mount sent over all its connections: Status shows it, and the benchmark divides it
/// by files. A round trip is counted when a request goes out while none is waiting for its
/// answer: requests sent while others are in flight (pipelined, or from other callers) share
/// their round trip, so at a link's latency L a workload takes at least `round_trips` x L.
#[derive(Debug, Default)]
pub(super) struct Traffic {
    pub(super) requests: AtomicU64,
    pub(super) round_trips: AtomicU64,
    in_flight: AtomicU64,
}

/// One request waiting for its answer; counted out when dropped (answered, failed or given up).
struct InFlight<'a>(&'a Traffic);

impl Traffic {
    fn sent(&self) -> InFlight<'_> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if self.in_flight.fetch_add(1, Ordering::SeqCst) == 0 {
            self.round_trips.fetch_add(1, Ordering::Relaxed);
        }
        InFlight(self)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One SFTP channel (a separate sftp-server process on the far side) and the handle permits
/// it has left.
pub(super) struct Channel {
    pub(super) raw: RawSftpSession,
    /// Which channel of its connection (1 = the first), for the logs.
    number: usize,
    handles: Arc<Semaphore>,
    file_handles: Arc<Semaphore>,
    /// Its stream ended: no request sent on it will ever be answered.
    dead: AtomicBool,
    /// Turns true with `dead`, waking the requests still waiting on the channel (`guard`).
    ended: watch::Sender<bool>,
    health: Arc<Health>,
}

/// The right to hold one open handle on a channel; returned when dropped.
pub(super) struct HandlePermit {
    handle: Option<OwnedSemaphorePermit>,
    file: Option<OwnedSemaphorePermit>,
    health: Arc<Health>,
}

impl Drop for HandlePermit {
    fn drop(&mut self) {
        // Released before the wake-up, so the woken caller finds the permit free.
        drop(self.handle.take());
        drop(self.file.take());
        self.health.freed.notify_waiters();
    }
}

impl Channel {
    fn new(raw: RawSftpSession, number: usize, health: Arc<Health>) -> Arc<Channel> {
        Arc::new(Channel {
            raw,
            number,
            handles: Arc::new(Semaphore::new(HANDLES_PER_CHANNEL)),
            file_handles: Arc::new(Semaphore::new(HANDLES_PER_CHANNEL - LISTING_RESERVE)),
            dead: AtomicBool::new(false),
            ended: watch::Sender::new(false),
            health,
        })
    }

    pub(super) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Marks the channel dead; true for the call that did.
    fn mark_dead(&self) -> bool {
        if self.dead.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.ended.send_replace(true);
        true
    }

    /// Runs one request of this channel and looks at its failure (`saw`). Once the channel is
    /// known dead, a request still waiting fails as one whose stream ended in flight (and is
    /// resent by the caller's retry) instead of waiting for `REQUEST_TIMEOUT`: russh-sftp
    /// never answers a request registered in the instant its stream ended (it clears its
    /// table of waiting requests when the stream ends, and a request added just after stays),
    /// which held a write for two minutes after a reconnect and then failed it.
    pub(super) async fn guard<T>(
        &self,
        request: impl Future<Output = RawResult<T>>,
    ) -> RawResult<T> {
        let _in_flight = self.health.traffic.sent();
        let mut ended = self.ended.subscribe();
        let result = tokio::select! {
            biased;
            r = request => r,
            _ = ended.wait_for(|e| *e) => Err(russh_sftp::client::error::Error::UnexpectedBehavior(
                "sender dropped".into(),
            )),
        };
        result.inspect_err(|e| self.saw(e))
    }

    fn try_permit(&self, purpose: Use) -> Option<HandlePermit> {
        if self.is_dead() {
            return None;
        }
        let file = match purpose {
            Use::File => Some(self.file_handles.clone().try_acquire_owned().ok()?),
            Use::Listing => None,
        };
        let handle = self.handles.clone().try_acquire_owned().ok()?;
        Some(HandlePermit {
            handle: Some(handle),
            file,
            health: self.health.clone(),
        })
    }

    /// Looks at a failed request on this channel: an error saying its stream ended marks the
    /// channel dead (it is then left out and replaced). Deaths with requests in flight count
    /// towards giving up the connection.
    pub(super) fn saw(&self, e: &russh_sftp::client::error::Error) {
        let Some(ended) = channel_ended(e) else {
            return;
        };
        if !self.mark_dead() {
            return;
        }
        tracing::debug!(channel = self.number, error = %e, "SFTP channel ended");
        if ended == Ended::InFlight && self.health.deaths.lock().died(Instant::now()) {
            self.health.condemned.store(true, Ordering::SeqCst);
        }
        self.health.freed.notify_waiters();
    }
}

/// One SSH connection and its SFTP channels. Replaced as a whole on reconnect.
pub(super) struct Conn {
    /// Which connection attempt this is (see `Remote::generations`).
    pub(super) generation: u64,
    pub(super) ssh: ssh::Connection,
    /// The live channels (dead ones are dropped when next looked at).
    channels: Mutex<Vec<Arc<Channel>>>,
    /// Channels are opened one at a time; nobody waits for a free handle holding this.
    opening: tokio::sync::Mutex<()>,
    next: AtomicUsize,
    /// Channels opened so far, for their numbers.
    opened: AtomicUsize,
    /// Channels the server takes: `MAX_CHANNELS`, lowered when it refuses one.
    room: AtomicUsize,
    health: Arc<Health>,
    /// How long an open waits for a free handle when every channel is full.
    handle_wait: Duration,
}

impl Conn {
    /// A connection with its first channel open.
    pub(super) fn new(
        generation: u64,
        ssh: ssh::Connection,
        first: RawSftpSession,
        handle_wait: Duration,
        traffic: Arc<Traffic>,
    ) -> Conn {
        let health = Arc::new(Health {
            traffic,
            ..Health::default()
        });
        Conn {
            generation,
            ssh,
            channels: Mutex::new(vec![Channel::new(first, 1, health.clone())]),
            opening: tokio::sync::Mutex::new(()),
            next: AtomicUsize::new(0),
            opened: AtomicUsize::new(1),
            room: AtomicUsize::new(MAX_CHANNELS),
            health,
            handle_wait,
        }
    }

    /// False once the SSH transport is gone or its channels kept dying: time to reconnect.
    pub(super) fn is_usable(&self) -> bool {
        !self.ssh.is_closed() && !self.condemned()
    }

    /// True once its channels kept dying (see `DEATHS_BEFORE_RECONNECT`).
    pub(super) fn condemned(&self) -> bool {
        self.health.condemned.load(Ordering::SeqCst)
    }

    /// The live channels, dropping the dead ones.
    fn live(&self) -> Vec<Arc<Channel>> {
        let mut channels = self.channels.lock();
        channels.retain(|c| !c.is_dead());
        channels.clone()
    }

    fn pick_live(&self) -> Option<Arc<Channel>> {
        let live = self.live();
        if live.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % live.len();
        Some(live[i].clone())
    }

    /// A live channel for a request that needs no handle, round-robin (each is a separate
    /// sftp-server process on the far side); opens a replacement when every channel died.
    pub(super) async fn channel(&self) -> RawResult<Arc<Channel>> {
        if let Some(c) = self.pick_live() {
            return Ok(c);
        }
        let _one_at_a_time = self.opening.lock().await;
        if let Some(c) = self.pick_live() {
            return Ok(c);
        }
        let raw = self.open_channel().await?;
        Ok(self.add_channel(raw))
    }

    /// Opens one more channel on this connection.
    async fn open_channel(&self) -> RawResult<RawSftpSession> {
        match self.ssh.open_sftp(REQUEST_TIMEOUT).await {
            Ok((raw, _)) => Ok(raw),
            Err(e) => {
                // Callers waiting for this channel look again.
                self.health.freed.notify_waiters();
                if !self.ssh.is_closed() {
                    // A server allowing fewer channels (MaxSessions): make do with those open.
                    let live = self.live().len();
                    self.room.store(live.max(1), Ordering::SeqCst);
                    tracing::debug!("no more SFTP channels than {live} ({e})");
                }
                Err(russh_sftp::client::error::Error::IO(e))
            }
        }
    }

    fn add_channel(&self, raw: RawSftpSession) -> Arc<Channel> {
        let number = self.opened.fetch_add(1, Ordering::Relaxed) + 1;
        let channel = Channel::new(raw, number, self.health.clone());
        let replaced = {
            let mut channels = self.channels.lock();
            channels.push(channel.clone());
            number > channels.len()
        };
        if replaced {
            tracing::info!(
                channel = number,
                "opened an SFTP channel in place of one that ended"
            );
        }
        self.health.freed.notify_waiters();
        channel
    }

    /// A channel with a free handle permit for `purpose`, opening another channel when all
    /// are full and the server takes more, else waiting (at most `handle_wait`) for a handle
    /// to be returned. Fails with `Limited` when none came.
    pub(super) async fn permit(&self, purpose: Use) -> RawResult<(Arc<Channel>, HandlePermit)> {
        let deadline = Instant::now() + self.handle_wait;
        loop {
            // Registered before looking, so a handle returned in between still wakes us.
            let freed = self.health.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(found) = self.try_permit(purpose) {
                return Ok(found);
            }
            if self.live().len() < self.room.load(Ordering::SeqCst)
                && let Ok(_one_at_a_time) = self.opening.try_lock()
            {
                if let Some(found) = self.try_permit(purpose) {
                    return Ok(found);
                }
                match self.open_channel().await {
                    Ok(raw) => {
                        let channel = self.add_channel(raw);
                        if let Some(permit) = channel.try_permit(purpose) {
                            return Ok((channel, permit));
                        }
                    }
                    Err(e) if self.ssh.is_closed() => return Err(e),
                    Err(_) => {}
                }
                continue;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                let channels = self.live().len();
                tracing::warn!(
                    "every SFTP handle is in use ({channels} channels of {HANDLES_PER_CHANNEL} \
                     handles, the server takes no more channels); gave up waiting for one \
                     after {:?} (reconnect_timeout). Close files or raise the server's \
                     MaxSessions",
                    self.handle_wait
                );
                return Err(russh_sftp::client::error::Error::Limited(format!(
                    "no free SFTP handle within {:?}: {channels} channels full",
                    self.handle_wait
                )));
            }
        }
    }

    /// Free file handle permits on up to `n` channels other than `avoid`, opening channels
    /// (all at once) while there is room.
    pub(super) async fn permits_elsewhere(
        &self,
        avoid: &Arc<Channel>,
        n: usize,
    ) -> Vec<(Arc<Channel>, HandlePermit)> {
        let mut found: Vec<_> = self
            .live()
            .into_iter()
            .filter(|c| !Arc::ptr_eq(c, avoid))
            .filter_map(|c| Some((c.clone(), c.try_permit(Use::File)?)))
            .take(n)
            .collect();
        if found.len() == n {
            return found;
        }
        let _one_at_a_time = self.opening.lock().await;
        let room = self
            .room
            .load(Ordering::SeqCst)
            .saturating_sub(self.live().len());
        let more = (n - found.len()).min(room);
        let opened = (0..more).map(|_| self.ssh.open_sftp(REQUEST_TIMEOUT));
        for (raw, _) in futures::future::join_all(opened)
            .await
            .into_iter()
            .flatten()
        {
            let channel = self.add_channel(raw);
            if let Some(permit) = channel.try_permit(Use::File) {
                found.push((channel, permit));
            }
        }
        found
    }

    fn try_permit(&self, purpose: Use) -> Option<(Arc<Channel>, HandlePermit)> {
        self.live()
            .into_iter()
            .find_map(|c| c.try_permit(purpose).map(|p| (c, p)))
    }

    /// Closes every channel and the SSH connection: whatever is still queued on them is not
    /// sent after this (requests are resent on the next connection only once this returned).
    pub(super) async fn shutdown(&self) {
        let channels = std::mem::take(&mut *self.channels.lock());
        for c in &channels {
            c.mark_dead();
            let _ = c.raw.close_session();
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ssh.disconnect()).await;
        self.health.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request the server never answers (as one russh-sftp registered just after its stream
    /// ended) is failed as "ended in flight" as soon as its channel is marked dead, not after
    /// `REQUEST_TIMEOUT`.
    #[tokio::test]
    async fn a_dead_channel_wakes_its_waiting_requests() {
        let (ours, _silent_server) = tokio::io::duplex(64 * 1024);
        let channel = Channel::new(RawSftpSession::new(ours), 1, Arc::default());
        let waiting = {
            let channel = Arc::clone(&channel);
            tokio::spawn(async move { channel.guard(channel.raw.stat("x")).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "nobody answered: still waiting");
        assert!(channel.mark_dead());
        let got = tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("woken when the channel died")
            .unwrap();
        let e = got.expect_err("no answer");
        assert_eq!(channel_ended(&e), Some(Ended::InFlight), "{e}");
        assert!(channel.is_dead());
        assert!(!channel.mark_dead(), "marked once");
    }

    #[test]
    fn channels_keep_dying_only_when_deaths_come_close_together() {
        let t0 = Instant::now();
        let mut log = DeathLog::default();
        assert!(!log.died(t0));
        assert!(!log.died(t0 + Duration::from_secs(30)));
        // The first death has left the window: still two.
        assert!(!log.died(t0 + Duration::from_secs(61)));
        assert!(log.died(t0 + Duration::from_secs(62)));
    }
}
