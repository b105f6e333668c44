//! Volume semantics behind the Docker calls: create/remove records, count container mounts per
//! mount ID, mount on the first Mount and unmount a moment (`LINGER`) after the last Unmount,
//! and report status.
//!
//! Concurrency: each volume has its own async lock that serialises Create/Mount/Unmount/Remove
//! of that volume only, so a slow connect never blocks other volumes. Get/List/Path never take
//! it: they read the store and a small synchronous snapshot of the live mount.
//!
//! Restarts: mount counts are persisted. When the plugin starts after a crash or restart, every
//! FUSE mount left under the volumes dir is dead (its serving process is gone), so all of them
//! are lazily unmounted and the counts are KEPT. Containers that were running keep a dead mount
//! ("Transport endpoint is not connected") until they are restarted; their later Unmounts still
//! balance the kept counts, and the next Mount of the volume (any container) mounts it afresh
//! because nothing is live. A volume whose counts can no longer balance (its containers vanished
//! without Unmount, e.g. dockerd was killed) stays removable: Remove only refuses while a
//! counted container mount is live (a lingering mount is unmounted first).
//!
//! Write-back volumes (`-o writeback=yes`) keep their journal in the state directory
//! (`Store::writeback_path`), never under the volumes dir. Remove refuses while the journal
//! holds changes not on the server (remote data is never the driver's to drop, and neither is
//! a change the user made), and deletes the journal when it is empty. Status shows the live
//! replayer's figures, or what an idle volume's journal still holds.
//!
//! One file because every call goes through the same per-volume lock and mount state; split by
//! call, that invariant would be spread over several. The last seventh is unit tests.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::mount::{self, JournalLock, MountError, Mounted};
use crate::options::{self, Context, MountOptions, OptionError, StrictHostKeyChecking};
use crate::sftp::{Counters, LinkState};
use crate::state::{NewerRecord, StateError, Store, VolumeRecord};
use crate::writeback::{Journal, JournalStats, ReplayStats};

/// dockerd gives Mount two minutes; answering a little earlier means a timed-out mount is
/// cleaned up by us rather than left counted after dockerd stopped waiting.
const MOUNT_DEADLINE: Duration = Duration::from_secs(110);

/// How long an Unmount waits for a busy mount to finish before leaving it detached.
const UNMOUNT_WAIT: Duration = Duration::from_secs(5);

/// What the last Unmount gives a write-back volume's journal to drain (at most; less with a
/// smaller `reconnect_timeout`): dockerd gives Unmount one minute, and what does not drain
/// stays journaled for the next mount.
const UNMOUNT_REPLAY: Duration = Duration::from_secs(45);

/// How long a volume stays mounted after its last Unmount. dockerd mounts a fresh volume twice
/// to start one container (once to copy the image's files up into it, then for the container),
/// and scripts start containers one after another: a Mount within this time takes the mount
/// back instead of connecting again. A connection costs 0.2 s on a fast link (mostly the server
/// starting a session and an sftp-server) and a few round trips more on a slow one.
const LINGER: Duration = Duration::from_secs(5);

/// A lingering mount is taken back only if its connection answers a stat within this.
const LINGER_PROBE: Duration = Duration::from_secs(2);

/// Of the shutdown budget, the part kept for unmounting after the drain.
const UNMOUNT_RESERVE: Duration = Duration::from_secs(2);

/// Longest volume name accepted (a single path component on Linux).
const MAX_NAME: usize = 255;

/// What went wrong. The message reaches the user verbatim after
/// "Error response from daemon: ... VolumeDriver.<Call>:", so each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("invalid volume name {shown}: {why}")]
    BadName { shown: String, why: &'static str },
    #[error(
        "volume '{0}' is not known to the sshfs plugin: create it with \
         docker volume create -d <plugin> -o sshcmd=user@host:/path {0}. If the plugin was just \
         upgraded: docker plugin upgrade resets its settings, set state.source again"
    )]
    NotFound(String),
    #[error("volume '{name}': {source}")]
    Options { name: String, source: OptionError },
    #[error("volume '{name}': {source}")]
    SshConfig {
        name: String,
        source: crate::ssh_config::ConfigError,
    },
    #[error(
        "volume '{name}': password_stdin works only with the mount command; use -o password=... \
         or -o password_file=/root/.ssh/FILE (a file in the plugin's sshkey mount)"
    )]
    PasswordStdin { name: String },
    #[error(
        "volume '{0}' already exists with different options: remove it first \
         (docker volume rm {0}) or choose another name"
    )]
    Exists(String),
    #[error(
        "volume '{0}' cannot get its own mount directory (name clash after encoding): choose \
         another volume name"
    )]
    DirClash(String),
    #[error(
        "volume '{name}' is mounted ({count} container mount(s) counted): stop and remove the \
         containers using it (docker ps -a --filter volume={name}), then retry. Remote files are \
         never deleted by docker volume rm"
    )]
    InUse { name: String, count: u64 },
    #[error(
        "volume {name} has {ops} changes ({bytes} bytes) not yet on the server (write-back \
         mode): mount it once so they are replayed, for example \
         docker run --rm -v {name}:/v busybox true, then remove it"
    )]
    Pending { name: String, ops: u64, bytes: u64 },
    #[error(
        "volume '{0}' is still served by a detached mount (files were open when it was \
         unmounted), which holds its write-back journal: stop the processes using those files \
         (or wait until they close them), then retry"
    )]
    JournalBusy(String),
    #[error("volume '{name}': {reason}")]
    Journal { name: String, reason: String },
    #[error("cannot mount volume '{name}' from {remote}: {reason}")]
    Mount {
        name: String,
        remote: String,
        reason: String,
    },
    #[error("cannot prepare the mount directory {path}: {reason}")]
    Mountpoint { path: PathBuf, reason: String },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(
        "internal error in the sshfs plugin while handling volume '{0}' (see the plugin's log in \
         dockerd's log): retry, and report it if it persists"
    )]
    Internal(String),
}

/// A volume as Get and List report it.
#[derive(Debug, Serialize)]
pub struct VolumeInfo {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Mountpoint")]
    pub mountpoint: String,
    #[serde(rename = "CreatedAt", skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(rename = "Status", skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

/// What `docker volume inspect` shows under Status. Never a secret.
#[derive(Debug, Serialize)]
pub struct Status {
    pub remote: String,
    /// The effective host, port and user (after the ssh_config file, if one applies).
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The ssh_config file read for this volume, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_config: Option<String>,
    /// Its Host/Match lines that applied (`FILE:LINE: Host alias`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ssh_config_matched: Vec<String>,
    pub state: VolumeState,
    pub active_mounts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<String>,
    /// Named like the option that pins a key explicitly.
    #[serde(rename = "hostkey", skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
    /// Where known_hosts marks the pinned key `@revoked` ("FILE line N"): it cannot connect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostkey_revoked: Option<String>,
    /// The jump hosts (`ProxyJump`), first hop first, with their pinned keys.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub jump_hosts: Vec<JumpHostStatus>,
    /// Totals since the plugin started, over every mount of the volume.
    #[serde(flatten)]
    pub totals: Counters,
    /// Write-back: the replayer's figures while mounted, or what the journal of an idle
    /// volume still holds (only when it holds something).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writeback: Option<WriteBackStatus>,
    /// The plugin's version (`docker-volume-sshfs --version`).
    pub plugin_version: &'static str,
}

/// The `writeback` object of Status: `pending_ops`, `pending_bytes`, `oldest_age`, `last_seq`
/// and `applied_through` either way; a mounted volume adds what its replayer did.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum WriteBackStatus {
    Mounted(ReplayStats),
    Idle(JournalStats),
}

/// A jump host as Status shows it.
#[derive(Debug, Serialize)]
pub struct JumpHostStatus {
    /// `user@host:port`.
    pub host: String,
    #[serde(rename = "hostkey", skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostkey_revoked: Option<String>,
}

/// A volume's state as Status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeState {
    /// Not mounted (no container uses it), and the last mount did not fail.
    Idle,
    /// The first Mount is connecting.
    Mounting,
    Mounted,
    /// Mounted, and the connection is being re-established.
    Reconnecting,
    /// The last mount or unmount failed, or the stored options are no longer valid.
    Failed,
}

/// What the plugin holds for one volume while it runs: the lock that serialises its
/// state-changing calls, and the mount state Get and List may read without that lock.
struct VolumeRuntime {
    calls: Arc<tokio::sync::Mutex<()>>,
    mount: Mutex<MountState>,
}

/// A volume's mount, as far as this process knows.
#[derive(Default)]
struct MountState {
    mounted: Option<Arc<Mounted>>,
    /// Watches for the mount ending on its own (external umount, fatal error).
    watcher: Option<JoinHandle<()>>,
    /// Bumped on every mount/unmount so a late watcher never tears down a newer mount.
    generation: u64,
    /// While the mount lingers after the last Unmount (`LINGER`): the task that unmounts it when
    /// the time is over. Set and cancelled under the volume's call lock (or at shutdown), which
    /// the task takes before it looks here, so a timer cancelled by a call never runs.
    lingering: Option<JoinHandle<()>>,
    mounting: bool,
    failed: bool,
    last_error: Option<(String, String)>,
    /// What earlier mounts of the volume (since the plugin started) transferred.
    earlier: Counters,
    /// What the journal held when Status last opened it, and when: only a mount of this
    /// process changes an idle volume's journal, so this holds until the next Mount (opening
    /// a journal reads its segments and fsyncs, too much for every Get).
    idle_journal: Option<(Instant, Option<JournalStats>)>,
}

impl Status {
    /// The Status of an idle volume of `remote`, before what the options and the mount add.
    fn idle(remote: String) -> Status {
        Status {
            remote,
            host: String::new(),
            port: 0,
            user: String::new(),
            ssh_config: None,
            ssh_config_matched: Vec::new(),
            state: VolumeState::Idle,
            active_mounts: 0,
            last_error: None,
            last_error_at: None,
            host_key: None,
            hostkey_revoked: None,
            jump_hosts: Vec::new(),
            totals: Counters::default(),
            writeback: None,
            plugin_version: crate::version::VERSION,
        }
    }
}

impl MountState {
    /// Takes the live mount and its watcher out (for unmounting), so that a late watcher never
    /// tears down a newer mount.
    fn take_mounted(&mut self) -> (Option<Arc<Mounted>>, Option<JoinHandle<()>>) {
        self.stop_lingering();
        (self.take_mount(), self.watcher.take())
    }

    /// Cancels the linger timer, if any (the mount is taken back, or unmounted now).
    fn stop_lingering(&mut self) {
        if let Some(timer) = self.lingering.take() {
            timer.abort();
        }
    }

    /// Takes the live mount out, keeping what it counted in the volume's totals.
    fn take_mount(&mut self) -> Option<Arc<Mounted>> {
        self.generation += 1;
        let m = self.mounted.take()?;
        self.earlier.add(&m.stats().counters);
        Some(m)
    }

    fn record_error(&mut self, msg: &str) {
        self.failed = true;
        self.last_error = Some((msg.to_string(), now_rfc3339()));
    }
}

pub struct Driver {
    store: Store,
    volumes_dir: PathBuf,
    volumes: Mutex<HashMap<String, Arc<VolumeRuntime>>>,
    ready_tx: watch::Sender<bool>,
}

impl Driver {
    pub fn new(store: Store, volumes_dir: PathBuf) -> Arc<Driver> {
        Arc::new(Driver {
            store,
            volumes_dir,
            volumes: Mutex::new(HashMap::new()),
            ready_tx: watch::channel(false).0,
        })
    }

    /// Slow start-up work, run after the socket listens: detach the dead FUSE mounts a previous
    /// run left behind. Mounts wait for this (it would otherwise detach their fresh mount).
    pub async fn startup(&self) {
        if let Err(e) = mount::create_dir_0755(&self.volumes_dir) {
            tracing::error!(dir = %self.volumes_dir.display(), "cannot create the volumes dir: {e}");
        }
        let dir = self.volumes_dir.clone();
        match tokio::task::spawn_blocking(move || mount::unmount_stale_below(&dir)).await {
            Ok(Ok(paths)) => {
                for p in paths {
                    tracing::info!(path = %p.display(), "detached a stale mount left by an earlier run");
                }
            }
            Ok(Err(e)) => tracing::warn!("cannot detach stale mounts: {e}"),
            Err(e) => tracing::error!("detaching stale mounts failed: {e}"),
        }
        match self.store.list() {
            Ok(vols) => {
                for v in vols.iter().filter(|v| !v.mounts.is_empty()) {
                    tracing::warn!(
                        volume = %v.name,
                        counted = v.mounts.total(),
                        "volume was mounted before the plugin restarted: containers still running \
                         with it see 'Transport endpoint is not connected' and must be restarted; \
                         the next Mount mounts it again"
                    );
                }
                tracing::info!(volumes = vols.len(), "state restored");
            }
            Err(e) => tracing::error!("cannot read the state: {e}"),
        }
        self.ready_tx.send_replace(true);
    }

    /// Unmounts everything on SIGTERM, by `deadline`: first the queued writes of every mount
    /// reach the server (all mounts at once; what cannot be written in time is logged per
    /// file), then every mount is detached. No volume's call lock is taken: a call still in
    /// flight (a Mount stuck on a server that never answers) must not hold up the others, and
    /// the process exits right after, which ends it. Counts stay in the store (module comment).
    pub async fn shutdown(&self, deadline: Instant) {
        let runtimes: Vec<(String, Arc<VolumeRuntime>)> = self
            .volumes
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut mounted = Vec::new();
        for (name, runtime) in runtimes {
            let (m, watcher) = runtime.mount.lock().take_mounted();
            if let Some(w) = watcher {
                w.abort();
            }
            if let Some(m) = m {
                mounted.push((name, m));
            }
        }
        let drain_until = deadline
            .checked_sub(UNMOUNT_RESERVE)
            .filter(|t| *t > Instant::now())
            .unwrap_or_else(Instant::now);
        let drains = mounted.iter().map(|(name, m)| async move {
            let left = m.drain(drain_until).await;
            if left > 0 {
                tracing::warn!(volume = %name, files = left, "stopping with changes not on the server");
            }
        });
        futures::future::join_all(drains).await;
        let unmounts = mounted.into_iter().map(|(name, m)| async move {
            let wait = deadline.saturating_duration_since(Instant::now());
            // The write-back replayer drained above; after the session ends it gets what is
            // left of the budget, and the rest stays journaled for the next start.
            let replay = deadline.saturating_duration_since(Instant::now());
            match unmount_mounted(m, wait, Some(replay)).await {
                Ok(()) => tracing::info!(volume = %name, "unmounted"),
                Err(e) => tracing::warn!(volume = %name, "unmount failed: {e}"),
            }
        });
        futures::future::join_all(unmounts).await;
    }

    pub async fn create(
        &self,
        name: &str,
        opts: BTreeMap<String, String>,
    ) -> Result<(), DriverError> {
        validate_name(name)?;
        let parsed = options::parse(&options::from_docker_opts(&opts), None, Context::Plugin)
            .map_err(|source| DriverError::Options {
                name: name.to_string(),
                source,
            })?;
        if parsed.wants_password_stdin {
            return Err(DriverError::PasswordStdin {
                name: name.to_string(),
            });
        }
        let (_slot, _guard) = self.lock_volume(name).await;
        if let Some(existing) = self.store.get(name)? {
            // dockerd may repeat a Create (e.g. a compose file re-applied): same options is fine.
            return if self.store.options_with_secrets(&existing)? == opts {
                Ok(())
            } else {
                Err(DriverError::Exists(name.to_string()))
            };
        }
        let dir = mount_dir_name(name);
        if self.store.dir_taken(&dir, name)? {
            return Err(DriverError::DirClash(name.to_string()));
        }
        // `put` keeps the secret values out of the database (see `state`).
        let rec = VolumeRecord::new(name, dir, now_rfc3339(), opts);
        self.store.put(&rec)?;
        Ok(())
    }

    /// Forgets the volume. Never touches remote data: at most the empty local mount directory
    /// is removed (rmdir, which cannot delete anything inside a live mount).
    pub async fn remove(&self, name: &str) -> Result<(), DriverError> {
        validate_name(name)?;
        let (runtime, _guard) = self.lock_volume(name).await;
        let Some(rec) = self.store.get(name)? else {
            // Answering an error here would make the volume impossible to remove in Docker.
            tracing::info!(volume = %name, "Remove of a volume the plugin does not know: nothing to do");
            self.forget(name, &runtime);
            return Ok(());
        };
        if rec.mounts.is_empty() {
            // Lingering after the last Unmount, if mounted at all: unmount it now.
            self.stop(name, &runtime).await;
        }
        if runtime.mount.lock().mounted.is_some() {
            return Err(DriverError::InUse {
                name: name.to_string(),
                count: rec.mounts.total(),
            });
        }
        // Held until the journal is deleted: no mount can open it in between.
        let journal = self.check_journal_empty(&rec).await?;
        if !rec.mounts.is_empty() {
            tracing::warn!(
                volume = %name,
                counted = rec.mounts.total(),
                "removing a volume with mount counts left from before a restart (nothing is mounted)"
            );
        }
        self.store.remove(name)?;
        let mp = self.mountpoint(&rec);
        match std::fs::remove_dir(&mp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %mp.display(), "left the mount directory in place: {e}")
            }
        }
        if let Some((dir, lock)) = journal {
            // Local files only (segments, progress, lock), and no pending change among them.
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(path = %dir.display(), "left the empty write-back journal in place: {e}");
            }
            drop(lock);
        }
        self.forget(name, &runtime);
        Ok(())
    }

    /// The volume's write-back journal, locked, if it has one, after checking that it holds no
    /// change that is not on the server yet (refused with what to do if it does).
    async fn check_journal_empty(
        &self,
        rec: &VolumeRecord,
    ) -> Result<Option<(PathBuf, JournalLock)>, DriverError> {
        let dir = self.journal_dir(rec)?;
        if !dir.exists() {
            return Ok(None);
        }
        let journal_err = |e: MountError| match e {
            MountError::JournalBusy { .. } => DriverError::JournalBusy(rec.name.clone()),
            e => DriverError::Journal {
                name: rec.name.clone(),
                reason: e.to_string(),
            },
        };
        let lock = JournalLock::take(&dir).map_err(journal_err)?;
        let stats = mount::open_journal(&dir, options::WRITEBACK_MAX_DEFAULT)
            .await
            .map_err(journal_err)?
            .stats();
        if stats.pending_ops > 0 {
            return Err(DriverError::Pending {
                name: rec.name.clone(),
                ops: stats.pending_ops,
                bytes: stats.pending_bytes,
            });
        }
        Ok(Some((dir, lock)))
    }

    /// Where the volume's write-back journal lives: `STATE/writeback/<mount dir name>`.
    fn journal_dir(&self, rec: &VolumeRecord) -> Result<PathBuf, DriverError> {
        self.store
            .writeback_path(&rec.dir)
            // A state directory inside the volumes dir would put journals under a mount.
            .filter(|p| !p.starts_with(&self.volumes_dir))
            .ok_or_else(|| DriverError::Journal {
                name: rec.name.clone(),
                reason: format!(
                    "no place for its write-back journal: its directory name {:?} is not a \
                     plain file name, or the state directory is inside the volumes directory \
                     {}; recreate the volume, or move the state directory",
                    rec.dir,
                    self.volumes_dir.display()
                ),
            })
    }

    /// Counts the mount and returns the mountpoint; the first Mount connects and mounts.
    pub async fn mount(self: &Arc<Self>, name: &str, id: &str) -> Result<PathBuf, DriverError> {
        validate_name(name)?;
        // Start-up detaches every mount under the volumes dir; never race it.
        let _ = self.ready_tx.subscribe().wait_for(|ready| *ready).await;
        let (runtime, _guard) = self.lock_volume(name).await;
        let Some(mut rec) = self.store.get(name)? else {
            self.forget(name, &runtime);
            return Err(DriverError::NotFound(name.to_string()));
        };
        let mp = self.mountpoint(&rec);
        let live = runtime.mount.lock().mounted.is_some();
        if live && (!rec.mounts.is_empty() || self.take_back(name, &rec, &runtime).await) {
            rec.mounts.add(id);
            self.store.put(&rec)?;
            return Ok(mp);
        }

        let opts = self.mount_options(&rec)?;
        {
            let mut state = runtime.mount.lock();
            state.mounting = true;
            state.idle_journal = None;
        }
        let result = self.connect(name, &opts, &mp).await;
        runtime.mount.lock().mounting = false;
        let mounted = match result {
            Ok(m) => m,
            Err(e) => {
                runtime.mount.lock().record_error(&e.to_string());
                return Err(e);
            }
        };

        if rec.host_key.is_none() && opts.strict_host_key_checking != StrictHostKeyChecking::No {
            let fp = mounted.host_key_fingerprint();
            tracing::info!(volume = %name, host_key = %fp, "pinned the server's host key");
            rec.host_key = Some(fp);
        }
        if opts.strict_host_key_checking != StrictHostKeyChecking::No {
            for (endpoint, fp) in mounted.jump_host_keys() {
                if let std::collections::btree_map::Entry::Vacant(pin) =
                    rec.jump_host_keys.entry(endpoint)
                {
                    tracing::info!(volume = %name, jump_host = %pin.key(), host_key = %fp,
                        "pinned the jump host's key");
                    pin.insert(fp);
                }
            }
        }
        rec.mounts.add(id);
        if let Err(e) = self.store.put(&rec) {
            // A mount nobody counted would never be unmounted: undo it.
            if let Err(ue) = mounted.unmount().await {
                tracing::warn!(volume = %name, "unmount after a state error failed: {ue}");
            }
            runtime.mount.lock().record_error(&e.to_string());
            return Err(e.into());
        }

        let mounted = Arc::new(mounted);
        {
            let mut state = runtime.mount.lock();
            state.generation += 1;
            state.failed = false;
            state.watcher =
                Some(self.watch(name, &runtime, mounted.clone(), state.generation, &mp));
            state.mounted = Some(mounted);
        }
        tracing::info!(volume = %name, mountpoint = %mp.display(), "mounted");
        Ok(mp)
    }

    /// A Mount while the volume lingers: keeps its mount if a fresh one would be the same (the
    /// same options, ssh_config included; no pinned key revoked since) and its connection still
    /// answers. Otherwise unmounts it, so that the caller mounts afresh and reports what that
    /// finds (a changed host key, a server that is gone).
    async fn take_back(&self, name: &str, rec: &VolumeRecord, runtime: &VolumeRuntime) -> bool {
        let Some(m) = runtime.mount.lock().mounted.clone() else {
            return false;
        };
        let same = self.mount_options(rec).is_ok_and(|fresh| {
            let mut st = Status::idle(String::new());
            revocations(&fresh, rec, &mut st);
            let revoked = st.hostkey_revoked.is_some()
                || st.jump_hosts.iter().any(|j| j.hostkey_revoked.is_some());
            !revoked && without_pins(fresh) == without_pins(m.options().clone())
        });
        let keep = same && m.answers(LINGER_PROBE).await;
        // `stop` takes the mount back by value: no clone may be held then.
        drop(m);
        if keep {
            runtime.mount.lock().stop_lingering();
            tracing::debug!(volume = %name, "took the lingering mount back");
        } else {
            tracing::info!(volume = %name, "the lingering mount is not what a new mount would be, or does not answer: mounting afresh");
            self.stop(name, runtime).await;
        }
        keep
    }

    /// Keeps the last mount for `LINGER` once what the containers wrote is on the server (the
    /// queued writes and, in write-back mode, the journal, within the Unmount budgets); the
    /// timer then unmounts it unless a Mount took it back.
    async fn linger(self: &Arc<Self>, name: &str, runtime: &Arc<VolumeRuntime>) {
        let Some(m) = runtime.mount.lock().mounted.clone() else {
            return;
        };
        let budget = m
            .replay_budget()
            .map_or(UNMOUNT_WAIT, |b| b.min(UNMOUNT_REPLAY));
        m.drain(Instant::now() + budget).await;
        drop(m);
        let mut state = runtime.mount.lock();
        if state.mounted.is_none() {
            return;
        }
        state.stop_lingering();
        let (driver, name, rt) = (self.clone(), name.to_string(), runtime.clone());
        let timer = tokio::spawn(async move {
            tokio::time::sleep(LINGER).await;
            let _guard = rt.calls.lock().await;
            // Taken out, not aborted (this task is the timer); gone if the mount went meanwhile.
            let timer = rt.mount.lock().lingering.take();
            if timer.is_some() {
                driver.stop(&name, &rt).await;
            }
        });
        state.lingering = Some(timer);
    }

    /// Uncounts the mount; after the last one the mount lingers (`LINGER`), then is unmounted
    /// (lazily) and disconnected.
    pub async fn unmount(self: &Arc<Self>, name: &str, id: &str) -> Result<(), DriverError> {
        validate_name(name)?;
        let (runtime, _guard) = self.lock_volume(name).await;
        let Some(mut rec) = self.store.get(name)? else {
            self.forget(name, &runtime);
            return Err(DriverError::NotFound(name.to_string()));
        };
        if rec.mounts.remove(id) {
            self.store.put(&rec)?;
        } else {
            tracing::warn!(volume = %name, id = %id, "Unmount of a mount ID that is not counted: ignored");
        }
        if rec.mounts.is_empty() {
            self.linger(name, &runtime).await;
        } else {
            tracing::debug!(volume = %name, remaining = rec.mounts.total(), "still in use");
        }
        Ok(())
    }

    pub fn path(&self, name: &str) -> Result<PathBuf, DriverError> {
        Ok(self.mountpoint(&self.record(name)?))
    }

    /// The stored record of a known volume.
    fn record(&self, name: &str) -> Result<VolumeRecord, DriverError> {
        validate_name(name)?;
        self.store
            .get(name)?
            .ok_or_else(|| DriverError::NotFound(name.to_string()))
    }

    /// From local state only: dockerd forgets a volume whose Get fails after it restarts.
    pub fn get(&self, name: &str) -> Result<VolumeInfo, DriverError> {
        let rec = match self.record(name) {
            // A volume a newer plugin version stored (after a downgrade): answered, with why it
            // cannot be used in Status. A failed Get makes dockerd forget the volume, and a
            // later `-v NAME:/path` would then silently create a local volume of that name.
            Err(DriverError::State(e @ StateError::NewerSchema { .. })) => {
                if let Some(newer) = self
                    .store
                    .list_newer()?
                    .into_iter()
                    .find(|r| r.name == name)
                {
                    let mut info = self.newer_info(newer);
                    info.status = Some(self.newer_status(&e));
                    return Ok(info);
                }
                return Err(e.into());
            }
            r => r?,
        };
        let mut info = self.info(&rec);
        info.status = Some(self.status(&rec));
        Ok(info)
    }

    pub fn list(&self) -> Result<Vec<VolumeInfo>, DriverError> {
        let mut out: Vec<VolumeInfo> = self.store.list()?.iter().map(|r| self.info(r)).collect();
        // Records of a newer plugin (a downgrade) stay visible; Mount says to upgrade.
        out.extend(
            self.store
                .list_newer()?
                .into_iter()
                .map(|r| self.newer_info(r)),
        );
        Ok(out)
    }

    fn newer_info(&self, rec: NewerRecord) -> VolumeInfo {
        VolumeInfo {
            mountpoint: self
                .volumes_dir
                .join(&rec.dir)
                .to_string_lossy()
                .into_owned(),
            created_at: rec
                .created_at
                .filter(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()),
            name: rec.name,
            status: None,
        }
    }

    fn newer_status(&self, why: &StateError) -> Status {
        Status {
            state: VolumeState::Failed,
            last_error: Some(why.to_string()),
            ..Status::idle("(stored by a newer version of the plugin)".into())
        }
    }

    fn info(&self, rec: &VolumeRecord) -> VolumeInfo {
        VolumeInfo {
            name: rec.name.clone(),
            mountpoint: self.mountpoint(rec).to_string_lossy().into_owned(),
            // An unparsable time would fail dockerd's decoding of the whole answer.
            created_at: chrono::DateTime::parse_from_rfc3339(&rec.created_at)
                .ok()
                .map(|_| rec.created_at.clone()),
            status: None,
        }
    }

    fn status(&self, rec: &VolumeRecord) -> Status {
        let mut st = self.status_of_mount(rec);
        if st.writeback.is_none() && st.state != VolumeState::Mounting {
            st.writeback = self.idle_journal(rec).map(WriteBackStatus::Idle);
        }
        st
    }

    /// What the journal of a volume that is not mounted still holds, if anything. Looked at
    /// only while no call of the volume runs (a Mount opens the journal itself) and nothing
    /// else holds the journal; `None` then, or when there is nothing pending.
    fn idle_journal(&self, rec: &VolumeRecord) -> Option<JournalStats> {
        let dir = self.journal_dir(rec).ok().filter(|d| d.exists())?;
        let runtime = self.runtime(&rec.name);
        let _guard = runtime.calls.try_lock().ok()?;
        {
            let state = runtime.mount.lock();
            if state.mounted.is_some() {
                return None;
            }
            if let Some((at, seen)) = &state.idle_journal {
                return seen.clone().map(|mut st| {
                    st.oldest_age = st.oldest_age.map(|a| a + at.elapsed());
                    st
                });
            }
        }
        let _lock = JournalLock::take(&dir).ok()?;
        let stats = match Journal::open(&dir, options::WRITEBACK_MAX_DEFAULT) {
            Ok(j) => j.stats(),
            Err(e) => {
                tracing::warn!(volume = %rec.name, "cannot read the write-back journal for Status: {e}");
                return None;
            }
        };
        let pending = (stats.pending_ops > 0).then_some(stats);
        runtime.mount.lock().idle_journal = Some((Instant::now(), pending.clone()));
        pending
    }

    /// Status from the options and the live mount, if any.
    fn status_of_mount(&self, rec: &VolumeRecord) -> Status {
        let opts = resolved_options_of(&rec.public_options());
        let (remote, port, host, user) = match &opts {
            Ok((o, _)) => (
                remote_string(o),
                o.port,
                o.remote.host.clone(),
                o.remote.login("root"),
            ),
            Err(_) => (
                "(options not usable, see last_error)".to_string(),
                0,
                String::new(),
                String::new(),
            ),
        };
        let (ssh_config, ssh_config_matched) = match &opts {
            Ok((_, r)) => (
                r.file.as_ref().map(|f| f.display().to_string()),
                r.matched.iter().map(|m| m.to_string()).collect(),
            ),
            Err(_) => (None, Vec::new()),
        };
        let mut st = Status {
            host,
            port,
            user,
            ssh_config,
            ssh_config_matched,
            active_mounts: rec.mounts.total(),
            host_key: rec.host_key.clone(),
            ..Status::idle(remote)
        };
        match &opts {
            Ok((o, _)) => revocations(o, rec, &mut st),
            Err(e) => {
                st.state = VolumeState::Failed;
                st.last_error = Some(e.to_string());
            }
        }
        let Some(runtime) = self.volumes.lock().get(&rec.name).cloned() else {
            return st;
        };
        let state = runtime.mount.lock();
        let mut totals = state.earlier;
        if let Some((msg, at)) = &state.last_error {
            st.last_error = Some(msg.clone());
            st.last_error_at = Some(at.clone());
        }
        if let Some(m) = &state.mounted {
            // Read under the lock on purpose: holding no clone of the Arc keeps `stop` able
            // to take the mount back by value.
            let s = m.stats();
            st.state = if s.state == LinkState::Reconnecting {
                VolumeState::Reconnecting
            } else {
                VolumeState::Mounted
            };
            totals.add(&s.counters);
            if let Some(e) = s.last_error {
                st.last_error = Some(e);
                st.last_error_at = None;
            }
            if st.host_key.is_none() {
                st.host_key = Some(m.host_key_fingerprint());
            }
            st.writeback = m.writeback_stats().map(WriteBackStatus::Mounted);
        } else if state.mounting {
            st.state = VolumeState::Mounting;
        } else if state.failed {
            st.state = VolumeState::Failed;
        }
        st.totals = totals;
        st
    }

    fn mountpoint(&self, rec: &VolumeRecord) -> PathBuf {
        self.volumes_dir.join(&rec.dir)
    }

    /// `effective_options` with the volume's journal directory: what a Mount mounts with.
    fn mount_options(&self, rec: &VolumeRecord) -> Result<MountOptions, DriverError> {
        let mut opts = self.effective_options(rec)?;
        if let Some(wb) = &mut opts.writeback {
            wb.dir = Some(self.journal_dir(rec)?);
        }
        Ok(opts)
    }

    /// The options to connect with: re-validated from what the user gave, plus the pinned host
    /// key (accept-new: the first key seen is the only one accepted afterwards).
    fn effective_options(&self, rec: &VolumeRecord) -> Result<MountOptions, DriverError> {
        let all = self.store.options_with_secrets(rec)?;
        let parsed = options::parse(&options::from_docker_opts(&all), None, Context::Plugin)
            .map_err(|source| DriverError::Options {
                name: rec.name.clone(),
                source,
            })?;
        let (mut o, res) =
            crate::ssh_config::apply::effective(&parsed, Context::Plugin).map_err(|source| {
                DriverError::SshConfig {
                    name: rec.name.clone(),
                    source,
                }
            })?;
        if let Some(f) = &res.file {
            let matched: Vec<String> = res.matched.iter().map(|m| m.to_string()).collect();
            tracing::info!(volume = %rec.name, ssh_config = %f.display(), matched = ?matched,
                host = %o.remote.host, port = o.port, "ssh_config applied");
        }
        if o.strict_host_key_checking != StrictHostKeyChecking::No {
            if o.hostkey.is_none() {
                o.hostkey = rec.host_key.clone();
            }
            for hop in &mut o.proxy_jump {
                hop.hostkey = rec.jump_host_keys.get(&hop.endpoint()).cloned();
            }
        }
        Ok(o)
    }

    /// Prepares the directory and mounts, bounded by `MOUNT_DEADLINE`. On failure nothing is
    /// left mounted or connected.
    async fn connect(
        &self,
        name: &str,
        opts: &MountOptions,
        mp: &Path,
    ) -> Result<Mounted, DriverError> {
        let prep = mount::prepare_mountpoint(&self.volumes_dir, mp).map_err(|e| {
            DriverError::Mountpoint {
                path: mp.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        if prep {
            tracing::info!(volume = %name, "detached a stale mount at its mount directory");
        }
        let remote = remote_string(opts);
        tracing::info!(volume = %name, remote = %remote, port = opts.port, "connecting");
        // Spawned so that a panic in the mount code becomes an error for this call only.
        let task = {
            let opts = opts.clone();
            let mp = mp.to_path_buf();
            tokio::spawn(async move {
                tokio::time::timeout(MOUNT_DEADLINE, mount::mount(&opts, &mp)).await
            })
        };
        let fail = |reason: String| DriverError::Mount {
            name: name.to_string(),
            remote: format!("{remote} (port {})", opts.port),
            reason,
        };
        match task.await {
            Ok(Ok(Ok(m))) => Ok(m),
            Ok(Ok(Err(e))) => Err(fail(e.to_string())),
            Ok(Err(_elapsed)) => {
                let _ = mount::lazy_unmount(mp);
                Err(fail(format!(
                    "gave up after {} s; check that the server answers and the network path to it",
                    MOUNT_DEADLINE.as_secs()
                )))
            }
            Err(e) => {
                let _ = mount::lazy_unmount(mp);
                tracing::error!(volume = %name, "the mount task failed: {e}");
                Err(DriverError::Internal(name.to_string()))
            }
        }
    }

    /// Unmounts the live mount, if any. Failures are logged and recorded, not returned: the
    /// count is already gone and dockerd cannot do anything useful with an Unmount error.
    async fn stop(&self, name: &str, runtime: &VolumeRuntime) {
        let (mounted, watcher) = runtime.mount.lock().take_mounted();
        if let Some(w) = watcher {
            w.abort();
            let _ = w.await;
        }
        let Some(mounted) = mounted else { return };
        match unmount_mounted(mounted, UNMOUNT_WAIT, Some(UNMOUNT_REPLAY)).await {
            Ok(()) => tracing::info!(volume = %name, "unmounted"),
            Err(e) => {
                tracing::warn!(volume = %name, "unmount failed: {e}");
                runtime
                    .mount
                    .lock()
                    .record_error(&format!("unmount failed: {e}"));
            }
        }
    }

    /// Cleans up when a mount ends by itself (say, someone ran umount on the host). The counts
    /// stay, so the next Mount mounts again.
    fn watch(
        self: &Arc<Self>,
        name: &str,
        runtime: &Arc<VolumeRuntime>,
        mounted: Arc<Mounted>,
        generation: u64,
        mp: &Path,
    ) -> JoinHandle<()> {
        let (name, runtime, mp) = (name.to_string(), runtime.clone(), mp.to_path_buf());
        tokio::spawn(async move {
            mounted.ended().await;
            let _guard = runtime.calls.lock().await;
            let taken = {
                let mut state = runtime.mount.lock();
                if state.generation != generation {
                    return;
                }
                // This task is the watcher: detach its own handle rather than abort itself.
                state.watcher = None;
                state.record_error(
                    "the mount ended outside the plugin; the next Mount mounts again",
                );
                state.take_mount()
            };
            drop(mounted);
            tracing::warn!(volume = %name, "the mount ended unexpectedly");
            let result = match taken {
                Some(m) => unmount_mounted(m, UNMOUNT_WAIT, None).await,
                None => mount::lazy_unmount(&mp),
            };
            if let Err(e) = result {
                tracing::debug!(volume = %name, "cleanup after the mount ended: {e}");
            }
        })
    }

    /// Takes the volume's lock. Retries if the runtime was replaced (the volume was removed and
    /// re-created while we waited), so two runtimes can never mount the same volume.
    async fn lock_volume(
        &self,
        name: &str,
    ) -> (Arc<VolumeRuntime>, tokio::sync::OwnedMutexGuard<()>) {
        loop {
            let runtime = self.runtime(name);
            let guard = runtime.calls.clone().lock_owned().await;
            let current = self
                .volumes
                .lock()
                .get(name)
                .is_some_and(|s| Arc::ptr_eq(s, &runtime));
            if current {
                return (runtime, guard);
            }
        }
    }

    /// The volume's runtime, created on first use.
    fn runtime(&self, name: &str) -> Arc<VolumeRuntime> {
        self.volumes
            .lock()
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(VolumeRuntime {
                    calls: Arc::new(tokio::sync::Mutex::new(())),
                    mount: Mutex::new(MountState::default()),
                })
            })
            .clone()
    }

    /// Drops the runtime of a volume that no longer exists (keeps the map from growing with names
    /// that were only ever asked about).
    fn forget(&self, name: &str, runtime: &Arc<VolumeRuntime>) {
        let mut volumes = self.volumes.lock();
        if volumes.get(name).is_some_and(|s| Arc::ptr_eq(s, runtime))
            && runtime.mount.lock().mounted.is_none()
        {
            volumes.remove(name);
        }
    }
}

/// The jump hosts and their pins for Status, and where known_hosts revokes a pinned key
/// (read from the local known_hosts file only, like everything Get shows).
fn revocations(o: &MountOptions, rec: &VolumeRecord, st: &mut Status) {
    let known_hosts = o
        .known_hosts_file
        .clone()
        .or_else(crate::hostkey::default_known_hosts);
    let revoked = |host: &str, port: u16, pin: Option<&String>| {
        let (kh, pin) = (known_hosts.as_ref()?, pin?);
        crate::hostkey::revoked_pin(kh, host, port, pin)
    };
    st.hostkey_revoked = revoked(&o.remote.host, o.port, rec.host_key.as_ref());
    st.jump_hosts = o
        .proxy_jump
        .iter()
        .map(|hop| {
            let pin = rec.jump_host_keys.get(&hop.endpoint());
            JumpHostStatus {
                host: hop.to_string(),
                host_key: pin.cloned(),
                hostkey_revoked: revoked(&hop.host, hop.port, pin),
            }
        })
        .collect();
}
/// The options completed by the ssh_config file, as a Mount would use them (for Status; the
/// error is the message to show).
fn resolved_options_of(
    opts: &BTreeMap<String, String>,
) -> Result<(MountOptions, crate::ssh_config::apply::Resolution), String> {
    let parsed = options::parse(&options::from_docker_opts(opts), None, Context::Plugin)
        .map_err(|e| e.to_string())?;
    crate::ssh_config::apply::effective(&parsed, Context::Plugin).map_err(|e| e.to_string())
}

/// Unmounts a mount taken out of its volume's state, waiting up to `wait` for a busy mount;
/// `replay`: at most what the write-back replayer gets to drain after it (default and most:
/// `reconnect_timeout`).
async fn unmount_mounted(
    mounted: Arc<Mounted>,
    wait: Duration,
    replay: Option<Duration>,
) -> std::io::Result<()> {
    match Arc::try_unwrap(mounted) {
        Ok(m) => match replay {
            Some(budget) => m.unmount_within(wait, budget).await,
            None => m.unmount_waiting(wait).await,
        },
        // Nobody else should hold it; if someone does, detach the mount and let the
        // connection close when the last holder drops it.
        Err(m) => mount::lazy_unmount(m.mountpoint()),
    }
}

/// The options without the pins the plugin adds to them: a mount made before its first pin
/// (the copy-up mount of a fresh volume) is the same as one made after.
fn without_pins(mut o: MountOptions) -> MountOptions {
    o.hostkey = None;
    for hop in &mut o.proxy_jump {
        hop.hostkey = None;
    }
    o
}

/// `user@host:path` with the login the plugin uses when none is given.
fn remote_string(o: &MountOptions) -> String {
    let mut r = o.remote.clone();
    r.user = Some(r.login("root"));
    r.to_string()
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Refuses names that could not be a single directory entry or that look like path tricks.
/// Accepted names are never used as paths directly (see `mount_dir_name`).
pub fn validate_name(name: &str) -> Result<(), DriverError> {
    let bad = |why| DriverError::BadName {
        shown: shown_name(name),
        why,
    };
    if name.is_empty() {
        return Err(bad("it is empty; give the volume a name"));
    }
    if name.len() > MAX_NAME {
        return Err(bad("it is longer than 255 bytes; use a shorter name"));
    }
    if name.contains('/') {
        return Err(bad(
            "it contains '/'; use letters, digits, '_', '.' and '-'",
        ));
    }
    if name.contains("..") {
        return Err(bad(
            "it contains '..'; use letters, digits, '_', '.' and '-'",
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(bad(
            "it contains a NUL or other control character; use letters, digits, '_', '.' and '-'",
        ));
    }
    Ok(())
}

/// A short, quoted, escaped form of a name for error messages (names can be 4 KiB of junk).
fn shown_name(name: &str) -> String {
    let short: String = name.chars().take(64).collect();
    let more = if short.len() < name.len() { "..." } else { "" };
    format!("{:?}{more}", short)
}

/// The mount directory of a volume: a readable, sanitised prefix of the name plus a hash of the
/// full name, so that different names never share a directory and any name is a safe path
/// component.
pub fn mount_dir_name(name: &str) -> String {
    let mut prefix: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if prefix.starts_with('.') {
        prefix.replace_range(..1, "_");
    }
    let hash = hex::encode(Sha256::digest(name.as_bytes()));
    format!("{prefix}-{}", &hash[..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Status shows each jump host with its pin, and a pin known_hosts now marks `@revoked`.
    #[test]
    fn status_shows_jump_host_pins_and_revoked_pins() {
        const K1: &str =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
        const K2: &str =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA6rWI3G1sz07DnfFlrouTcysQlj2P+jpNSOEWD9OJ3X";
        let fp = |k: &str| {
            crate::hostkey::fingerprint(&russh::keys::PublicKey::from_openssh(k).unwrap())
        };
        let dir = std::env::temp_dir().join(format!("dvs-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kh = dir.join("known_hosts");
        std::fs::write(
            &kh,
            format!("# revoked\n@revoked [gw]:2222 {K2}\n@revoked * {K1}\n"),
        )
        .unwrap();
        let raw: BTreeMap<String, String> = [
            ("sshcmd", "files:/srv"),
            ("ProxyJump", "admin@gw:2222,10.0.0.7"),
            ("UserKnownHostsFile", kh.to_str().unwrap()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let o = options::parse(&options::from_docker_opts(&raw), None, Context::Plugin)
            .unwrap()
            .options;
        let mut rec = VolumeRecord::new("v", "v-1".into(), now_rfc3339(), raw);
        rec.host_key = Some(fp(K1));
        rec.jump_host_keys.insert("gw:2222".into(), fp(K2));
        let mut st = Status {
            port: 22,
            host_key: rec.host_key.clone(),
            ..Status::idle(String::new())
        };
        revocations(&o, &rec, &mut st);
        assert_eq!(st.hostkey_revoked, Some(format!("{} line 3", kh.display())));
        let shown: Vec<(&str, Option<&str>, Option<&str>)> = st
            .jump_hosts
            .iter()
            .map(|h| {
                (
                    h.host.as_str(),
                    h.host_key.as_deref(),
                    h.hostkey_revoked.as_deref(),
                )
            })
            .collect();
        let line2 = format!("{} line 2", kh.display());
        let gw_pin = fp(K2);
        assert_eq!(
            shown[0],
            ("admin@gw:2222", Some(gw_pin.as_str()), Some(line2.as_str()))
        );
        assert_eq!(
            (shown[1].1, shown[1].2),
            (None, None),
            "not pinned yet: {shown:?}"
        );
        assert!(shown[1].0.ends_with("@10.0.0.7:22"), "{shown:?}");
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["jump_hosts"][0]["hostkey"], gw_pin.as_str());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn status_shows_the_counters_at_top_level() {
        // Scripts read `.Status.bytes_read` etc.: the counters keep their names and place.
        let mut st = Status::idle(String::new());
        st.totals.add(&Counters {
            bytes_read: 1,
            bytes_written: 2,
            requests: 3,
            round_trips: 5,
            reconnects: 4,
        });
        let json = serde_json::to_value(&st).unwrap();
        let keys = [
            "bytes_read",
            "bytes_written",
            "requests",
            "round_trips",
            "reconnects",
        ];
        let shown: Vec<_> = keys.iter().map(|k| json[k].as_u64()).collect();
        assert_eq!(shown, [1, 2, 3, 5, 4].map(Some), "{json}");
    }

    #[test]
    fn names_are_checked() {
        for ok in ["v", "my-vol_1.x", "ünïcode", "with space", "a@b:c"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(4096);
        for bad in ["", "a/b", "..", "a..b", "nul\0", "nl\n", long.as_str()] {
            let e = validate_name(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid volume name"), "{e}");
            assert!(e.len() < 300, "error stays short: {e}");
        }
    }

    #[test]
    fn mount_dirs_are_distinct_safe_components() {
        let names = [
            "vol",
            "vol_",
            "vol?",
            "VOL",
            ".hidden",
            "ünï",
            &"y".repeat(255),
        ];
        let dirs: Vec<String> = names.iter().map(|n| mount_dir_name(n)).collect();
        for (i, d) in dirs.iter().enumerate() {
            assert!(
                !d.contains('/') && !d.starts_with('.') && d.len() <= 100,
                "{d}"
            );
            assert!(d.is_ascii());
            for e in &dirs[i + 1..] {
                assert_ne!(d, e);
            }
        }
        assert_eq!(mount_dir_name("vol"), mount_dir_name("vol"), "stable");
        assert!(mount_dir_name("vol").starts_with("vol-"));
    }

    fn temp_driver(tag: &str) -> (Arc<Driver>, PathBuf) {
        let d = std::env::temp_dir().join(format!("dvs-driver-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let store = Store::open(&d.join("state")).unwrap();
        (Driver::new(store, d.join("volumes")), d)
    }

    fn opts(items: &[(&str, &str)]) -> BTreeMap<String, String> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn create_get_list_remove_without_a_server() {
        let (drv, dir) = temp_driver("lifecycle");
        let o = opts(&[
            ("sshcmd", "u@h:/srv"),
            ("password", "hunter2"),
            ("port", "2222"),
        ]);
        drv.create("v", o.clone()).await.unwrap();
        drv.create("v", o).await.unwrap();
        let e = drv
            .create("v", opts(&[("sshcmd", "u@h:/other")]))
            .await
            .unwrap_err();
        assert!(matches!(e, DriverError::Exists(_)), "{e}");

        let info = drv.get("v").unwrap();
        let shown = serde_json::to_string(&info).unwrap();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains(r#""remote":"u@h:/srv""#) && shown.contains(r#""state":"idle""#));
        assert!(info.created_at.is_some());
        assert_eq!(drv.list().unwrap().len(), 1);
        assert_eq!(
            drv.path("v").unwrap(),
            dir.join("volumes").join(mount_dir_name("v"))
        );

        // Unmounting an ID that was never counted changes nothing and does not fail.
        drv.unmount("v", "never-mounted").await.unwrap();
        drv.remove("v").await.unwrap();
        assert!(matches!(drv.get("v"), Err(DriverError::NotFound(_))));
        // Removing again (dockerd and the plugin disagree) is not an error.
        drv.remove("v").await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// After a downgrade: Get answers from what every schema keeps (a failed Get makes dockerd
    /// forget the volume), Status and Mount say to upgrade, Remove refuses.
    #[tokio::test]
    async fn a_volume_of_a_newer_schema_is_listed_and_refused() {
        let d = std::env::temp_dir().join(format!("dvs-driver-newer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        {
            let db = sled::open(d.join("state/docker-volume-sshfs.sled")).unwrap();
            let record = serde_json::json!({"schema": crate::state::SCHEMA + 1, "name": "nv",
                "dir": "nv-dir", "created_at": "2030-01-01T00:00:00Z", "new_shape": [1]});
            let tree = db.open_tree("volumes").unwrap();
            tree.insert("nv", serde_json::to_vec(&record).unwrap())
                .unwrap();
            db.flush().unwrap();
        }
        let drv = Driver::new(Store::open(&d.join("state")).unwrap(), d.join("volumes"));
        drv.startup().await; // Mount waits for it
        let listed: Vec<String> = drv.list().unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(listed, ["nv"]);
        let info = drv.get("nv").expect("Get must answer");
        assert_eq!(info.mountpoint, d.join("volumes/nv-dir").to_string_lossy());
        let status = serde_json::to_string(&info.status).unwrap();
        assert!(status.contains(r#""state":"failed""#), "{status}");
        assert!(status.contains("newer version of the plugin"), "{status}");
        for e in [
            drv.mount("nv", "c1").await.unwrap_err(),
            drv.remove("nv").await.unwrap_err(),
        ] {
            assert!(e.to_string().contains("docker plugin upgrade"), "{e}");
        }
        drop(drv);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn remove_never_deletes_files_in_the_mount_directory() {
        let (drv, dir) = temp_driver("rmdir");
        drv.create("v", opts(&[("sshcmd", "h:/x")])).await.unwrap();
        let mp = drv.path("v").unwrap();
        std::fs::create_dir_all(&mp).unwrap();
        std::fs::write(mp.join("keep"), b"data").unwrap();
        drv.remove("v").await.unwrap();
        assert_eq!(std::fs::read(mp.join("keep")).unwrap(), b"data");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A write-back volume's journal with `ops` mkdirs appended (as a mount that stopped before
    /// replaying them leaves it); returns the journal directory.
    fn leave_journaled(drv: &Driver, name: &str, ops: usize) -> PathBuf {
        let rec = drv.store.get(name).unwrap().unwrap();
        let dir = drv.journal_dir(&rec).unwrap();
        let j = Journal::open(&dir, 1 << 20).unwrap();
        for i in 0..ops {
            j.append_now(crate::writeback::Op::Mkdir {
                path: format!("x{i}"),
                mode: 0o755,
            })
            .unwrap();
        }
        dir
    }

    /// Marks every pending change of the journal in `dir` as on the server.
    fn replay_all(dir: &Path) {
        let j = Journal::open(dir, 1 << 20).unwrap();
        let seqs: Vec<u64> = j.pending_after(0).iter().map(|r| r.seq).collect();
        j.begin(&seqs).unwrap();
        j.done(&seqs).unwrap();
        assert_eq!(j.stats().pending_ops, 0);
    }

    #[tokio::test]
    async fn the_journal_lives_in_the_state_dir_never_under_the_volumes_dir() {
        let (drv, dir) = temp_driver("wbdir");
        drv.create("my vol", opts(&[("sshcmd", "h:/x"), ("writeback", "yes")]))
            .await
            .unwrap();
        let rec = drv.store.get("my vol").unwrap().unwrap();
        let jdir = drv.journal_dir(&rec).unwrap();
        assert_eq!(
            jdir,
            dir.join("state/writeback").join(mount_dir_name("my vol"))
        );
        assert!(!jdir.starts_with(dir.join("volumes")));
        // A state dir inside the volumes dir would put journals under a mount: refused.
        let store = Store::open(&dir.join("volumes/state")).unwrap();
        let inside = Driver::new(store, dir.join("volumes"));
        let e = inside.journal_dir(&rec).unwrap_err().to_string();
        assert!(e.contains("inside the volumes directory"), "{e}");
        drop(inside);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn remove_refuses_while_changes_are_journaled_and_then_deletes_the_journal() {
        let (drv, dir) = temp_driver("wbrm");
        drv.create("v", opts(&[("sshcmd", "h:/x"), ("writeback", "yes")]))
            .await
            .unwrap();
        let jdir = leave_journaled(&drv, "v", 3);
        let e = drv.remove("v").await.unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, DriverError::Pending { ops: 3, .. }), "{msg}");
        let bytes = match e {
            DriverError::Pending { bytes, .. } => bytes,
            _ => unreachable!(),
        };
        assert_eq!(
            msg,
            format!(
                "volume v has 3 changes ({bytes} bytes) not yet on the server (write-back mode): \
                 mount it once so they are replayed, for example docker run --rm -v v:/v \
                 busybox true, then remove it"
            )
        );
        // Nothing deleted: the volume, and every journaled change.
        assert!(drv.get("v").is_ok());
        assert_eq!(
            Journal::open(&jdir, 1 << 20).unwrap().stats().pending_ops,
            3
        );

        // A detached mount still holding the journal: refused too, saying why.
        let held = JournalLock::take(&jdir).unwrap();
        let e = drv.remove("v").await.unwrap_err();
        assert!(matches!(e, DriverError::JournalBusy(_)), "{e}");
        drop(held);

        replay_all(&jdir);
        let mp = drv.path("v").unwrap();
        std::fs::create_dir_all(&mp).unwrap();
        std::fs::write(mp.join("keep"), b"data").unwrap();
        drv.remove("v").await.unwrap();
        assert!(!jdir.exists(), "the empty journal is deleted");
        assert_eq!(std::fs::read(mp.join("keep")).unwrap(), b"data");
        assert!(matches!(drv.get("v"), Err(DriverError::NotFound(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn status_shows_what_an_idle_volumes_journal_holds() {
        let (drv, dir) = temp_driver("wbstatus");
        drv.create("v", opts(&[("sshcmd", "h:/x"), ("writeback", "yes")]))
            .await
            .unwrap();
        let status = |drv: &Driver| serde_json::to_value(drv.get("v").unwrap().status).unwrap();
        assert!(status(&drv).get("writeback").is_none(), "no journal yet");
        let jdir = leave_journaled(&drv, "v", 2);
        let st = status(&drv);
        let wb = &st["writeback"];
        assert_eq!(wb["pending_ops"], 2, "{st}");
        assert!(wb["pending_bytes"].as_u64().unwrap() > 0, "{st}");
        assert_eq!(wb["last_seq"], 2, "{st}");
        assert_eq!(wb["applied_through"], 0, "{st}");
        assert!(!wb["oldest_age"].is_null(), "{st}");
        assert_eq!(st["state"], "idle");
        // Only a Mount changes an idle journal: what Get saw holds until then.
        assert_eq!(status(&drv)["writeback"]["pending_ops"], 2);
        let mounted = || drv.runtime("v").mount.lock().idle_journal = None;
        // While something holds the journal (a detached mount), Get does not open it.
        mounted();
        let held = JournalLock::take(&jdir).unwrap();
        assert!(status(&drv).get("writeback").is_none());
        drop(held);
        replay_all(&jdir);
        mounted();
        assert!(status(&drv).get("writeback").is_none(), "nothing pending");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn status_shows_the_replayers_figures_under_writeback() {
        let mut stats = ReplayStats {
            replayed_ops: 7,
            conflicts: 1,
            recent_conflicts: vec!["unlink gone: no such file".into()],
            last_error: Some("connection lost".into()),
            ..ReplayStats::default()
        };
        stats.journal.pending_ops = 4;
        stats.journal.pending_bytes = 4096;
        let st = Status {
            writeback: Some(WriteBackStatus::Mounted(stats)),
            ..Status::idle(String::new())
        };
        let json = serde_json::to_value(&st).unwrap();
        let wb = &json["writeback"];
        for key in [
            "pending_ops",
            "pending_bytes",
            "oldest_age",
            "last_seq",
            "applied_through",
            "replayed_ops",
            "replay_rate",
            "conflicts",
            "recent_conflicts",
            "last_error",
        ] {
            assert!(wb.get(key).is_some(), "{key} missing: {json}");
        }
        assert_eq!(
            (&wb["pending_ops"], &wb["replayed_ops"], &wb["last_error"]),
            (&4.into(), &7.into(), &"connection lost".into())
        );
        let plain = serde_json::to_value(Status::idle(String::new())).unwrap();
        assert!(plain.get("writeback").is_none(), "{plain}");
    }

    #[tokio::test]
    async fn bad_options_and_names_are_refused_at_create() {
        let (drv, dir) = temp_driver("refuse");
        let e = drv.create("v", opts(&[])).await.unwrap_err().to_string();
        assert!(e.contains("missing option sshcmd"), "{e}");
        let e = drv
            .create("v", opts(&[("sshcmd", "h:/x"), ("password_stdin", "")]))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("password_file"), "{e}");
        let e = drv
            .create("../x", opts(&[("sshcmd", "h:/x")]))
            .await
            .unwrap_err();
        assert!(matches!(e, DriverError::BadName { .. }));
        assert!(drv.list().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn remote_shows_the_login_used() {
        let raw = options::from_docker_opts(&[("sshcmd".to_string(), "h:/x".to_string())].into());
        let o = options::parse(&raw, None, Context::Plugin).unwrap().options;
        assert_eq!(remote_string(&o), "root@h:/x");
    }
}
