//! Mount lifecycle: connect, mount the FUSE filesystem at a directory, serve it, unmount lazily.
//!
//! Used by both the plugin driver (one `Mounted` per mounted volume) and the `mount` command.
//!
//! In write-back mode (`MountOptions::writeback`) a mount also owns its journal's replayer: the
//! changes an earlier mount left journaled are replayed before FUSE is mounted (so they reach the
//! server before any new change), and after the session ends the replayer gets its budget to
//! drain before the connection is closed. What does not drain stays journaled for the next
//! mount. One process (and one mount in it) at a time uses a journal: see [`JournalLock`].

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::fs::{SshFs, WriteBehind, fuse_config};
use crate::options::MountOptions;
use crate::sftp::{Sftp, Stats};
use crate::writeback::{Journal, JournalError, Overlay, ReplayStats, Replayer};

/// Why a mount failed. The message is shown to the user verbatim.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(transparent)]
    Connect(#[from] crate::ssh::ConnectError),
    #[error("cannot mount FUSE at {path}: {reason}")]
    Fuse { path: PathBuf, reason: String },
    #[error(
        "write-back mode was asked for without a journal directory: this is a bug in the \
         program that called mount (the plugin sets it per volume, the mount command takes \
         -o writeback_dir=PATH); please report it"
    )]
    NoJournalDir,
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(
        "the write-back journal {dir} is in use by another mount: an earlier mount of the same \
         volume that is detached but still serving open files (close them, or wait, then retry), \
         or another process with the same writeback_dir (stop it, or give another directory)"
    )]
    JournalBusy { dir: PathBuf },
    #[error(
        "{pending} change(s) ({bytes} bytes) made by an earlier mount are still not on the \
         server after {secs} s ({why}). Nothing was mounted, so that they reach the server \
         before any new change; they stay journaled in {dir}. Check that the server is \
         reachable and can take them (free space, permissions), then mount again"
    )]
    Unreplayed {
        pending: u64,
        bytes: u64,
        secs: u64,
        why: String,
        dir: PathBuf,
    },
}

/// Name of the lock file in a journal directory (the journal itself only reads its `seg-*`
/// and `applied` files).
const JOURNAL_LOCK: &str = "lock";

/// The exclusive lock of a journal directory (flock(2) on its `lock` file). Two open
/// `Journal`s of one directory would each rewrite its progress and segments: whoever opens
/// one holds this for as long as it (and its replayer) can touch the files. flock is per open
/// file, so it also keeps apart two mounts in one process (a detached mount still serving
/// open files and a new mount of the same volume). The kernel drops it with the process.
pub struct JournalLock {
    _file: nix::fcntl::Flock<std::fs::File>,
}

impl JournalLock {
    /// Takes the lock of the journal in `dir`, creating the directory (root-only) if needed.
    pub fn take(dir: &Path) -> Result<JournalLock, MountError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let io_err = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| JournalError::Io { path, what, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("create the directory", dir))?;
        let path = dir.join(JOURNAL_LOCK);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("open the lock file", &path))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(f) => Ok(JournalLock { _file: f }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(MountError::JournalBusy {
                dir: dir.to_path_buf(),
            }),
            Err((_, e)) => Err(io_err("lock", &path)(io::Error::from(e)).into()),
        }
    }
}

/// A mount's write-back: its replayer, the journal's lock, how long it may take to drain.
struct WriteBackRun {
    replayer: Replayer,
    lock: JournalLock,
    /// `reconnect_timeout`: what an unmount gives the replayer once the session ended.
    budget: Duration,
}

impl WriteBackRun {
    /// After the session ended (nothing appends any more): lets the replayer drain for its
    /// budget, stops it and only then lets the journal go.
    async fn finish(self, mountpoint: &Path) {
        let drained = self.replayer.drain(self.budget).await;
        let left = self.replayer.stats();
        self.replayer.stop().await;
        if !drained && left.journal.pending_ops > 0 {
            tracing::info!(
                mountpoint = %mountpoint.display(),
                changes = left.journal.pending_ops,
                bytes = left.journal.pending_bytes,
                last_error = left.last_error.as_deref().unwrap_or(""),
                "write-back: changes left journaled, not on the server yet; the next mount replays them first"
            );
        }
        drop(self.lock);
    }
}

/// A live mount: the FUSE session plus its SSH connection.
pub struct Mounted {
    mountpoint: PathBuf,
    /// What it was mounted with (the driver takes a lingering mount back only for the same).
    options: MountOptions,
    sftp: Sftp,
    write_behind: WriteBehind,
    /// Becomes true when the FUSE event loop has returned (unmounted, by us or by someone else).
    ended: watch::Receiver<bool>,
    writeback: Option<WriteBackRun>,
}

impl Mounted {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// SHA256 fingerprint of the server's host key (to pin it on first use).
    pub fn host_key_fingerprint(&self) -> String {
        self.sftp.host_key_fingerprint().to_string()
    }

    /// `(host:port, SHA256 fingerprint)` of each jump host's key (to pin them on first use).
    pub fn jump_host_keys(&self) -> Vec<(String, String)> {
        self.sftp.jump_host_keys().to_vec()
    }

    pub fn stats(&self) -> Stats {
        self.sftp.stats()
    }

    pub fn options(&self) -> &MountOptions {
        &self.options
    }

    /// What an unmount gives the write-back replayer to drain (`reconnect_timeout`); `None`
    /// without write-back.
    pub fn replay_budget(&self) -> Option<Duration> {
        self.writeback.as_ref().map(|w| w.budget)
    }

    /// True if the connection is up and the server answers a stat of the mounted directory
    /// within `timeout`.
    pub async fn answers(&self, timeout: Duration) -> bool {
        self.sftp.stats().state == crate::sftp::LinkState::Connected
            && tokio::time::timeout(timeout, self.sftp.stat(self.sftp.root()))
                .await
                .is_ok_and(|r| r.is_ok())
    }

    /// What the write-back replayer did and what the journal holds; `None` without write-back.
    pub fn writeback_stats(&self) -> Option<ReplayStats> {
        self.writeback.as_ref().map(|w| w.replayer.stats())
    }

    /// Resolves when the filesystem stopped being served (for example after an external
    /// `umount`), so the caller can clean up.
    pub async fn ended(&self) {
        let mut rx = self.ended.clone();
        let _ = rx.wait_for(|ended| *ended).await;
    }

    /// Waits until `deadline` for the writes queued in this mount (and metadata deferred behind
    /// them) to reach the server, all files at once, and logs each file that did not make it;
    /// then, in write-back mode, for the journal's changes (until the same deadline), and logs
    /// how many are left journaled. Returns how many files did not make it.
    pub async fn drain(&self, deadline: Instant) -> usize {
        let left = self.write_behind.drain(deadline).await;
        for u in &left {
            let path = u.path.as_deref().unwrap_or("(unlinked while open)");
            tracing::warn!(
                mountpoint = %self.mountpoint.display(),
                file = %path,
                ino = u.ino,
                "queued changes not on the server: {}",
                u.problem
            );
        }
        if let Some(wb) = &self.writeback {
            let budget = deadline.saturating_duration_since(Instant::now());
            if !wb.replayer.drain(budget).await {
                let s = wb.replayer.stats();
                tracing::warn!(
                    mountpoint = %self.mountpoint.display(),
                    changes = s.journal.pending_ops,
                    bytes = s.journal.pending_bytes,
                    last_error = s.last_error.as_deref().unwrap_or(""),
                    "write-back: changes not on the server yet stay journaled; the next mount replays them first"
                );
            }
        }
        left.len()
    }

    /// After the session ended by itself (an external `umount`): gives the write-back replayer
    /// at most `replay_cap` to drain, then disconnects. Nothing is unmounted (the path may be
    /// someone else's mount now).
    pub async fn close_ended(self, replay_cap: Duration) {
        let mut ended = self.ended.clone();
        let _ = ended.wait_for(|e| *e).await;
        if let Some(mut w) = self.writeback {
            w.budget = w.budget.min(replay_cap);
            w.finish(&self.mountpoint).await;
        }
        self.sftp.disconnect().await;
    }

    /// Unmounts (lazily, so busy mounts detach instead of failing), stops serving and
    /// disconnects. A detached mount that still has open files keeps being served until the
    /// last one is closed; the connection is closed after that.
    pub async fn unmount(self) -> io::Result<()> {
        self.unmount_waiting(Duration::from_secs(5)).await
    }

    /// `unmount`, waiting at most `wait` for a busy mount to finish before going on in the
    /// background. In write-back mode the replayer then has `reconnect_timeout` to drain.
    pub async fn unmount_waiting(self, wait: Duration) -> io::Result<()> {
        let budget = self.writeback.as_ref().map_or(Duration::ZERO, |w| w.budget);
        self.unmount_within(wait, budget).await
    }

    /// `unmount_waiting`, giving the write-back replayer at most `replay_cap` (less than
    /// `reconnect_timeout` if smaller) to drain after the session ended: dockerd gives an
    /// Unmount one minute, and the plugin's shutdown has drained already (`drain`) and has
    /// seconds left.
    pub async fn unmount_within(self, wait: Duration, replay_cap: Duration) -> io::Result<()> {
        let Mounted {
            mountpoint,
            sftp,
            ended,
            mut writeback,
            ..
        } = self;
        if let Some(w) = &mut writeback {
            w.budget = w.budget.min(replay_cap);
        }
        let detached = match lazy_unmount(&mountpoint) {
            Ok(()) => Ok(()),
            // Not mounted any more (an external umount got there first).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            Err(e) => Err(e),
        };
        let mut ended = ended;
        let finished = tokio::time::timeout(wait, ended.wait_for(|e| *e))
            .await
            .is_ok();
        if finished {
            if let Some(w) = writeback {
                w.finish(&mountpoint).await;
            }
            sftp.disconnect().await;
        } else {
            tracing::info!(mountpoint = %mountpoint.display(),
                "mount is busy; detached, serving open files until they are closed");
            tokio::spawn(async move {
                let _ = ended.wait_for(|e| *e).await;
                if let Some(w) = writeback {
                    w.finish(&mountpoint).await;
                }
                sftp.disconnect().await;
            });
        }
        detached
    }
}

/// Connects to the server and mounts it at `mountpoint` (an existing directory). In write-back
/// mode, first replays what an earlier mount left in the journal (for `reconnect_timeout` at
/// most; failing the mount, journal kept, if it does not get through).
pub async fn mount(opts: &MountOptions, mountpoint: &Path) -> Result<Mounted, MountError> {
    // The journal is local: a bad directory fails before anything is sent to the server.
    let journal = match &opts.writeback {
        None => None,
        Some(wb) => {
            let dir = wb.dir.as_deref().ok_or(MountError::NoJournalDir)?;
            let lock = JournalLock::take(dir)?;
            let journal = open_journal(dir, wb.max_bytes).await?;
            Some((journal, lock))
        }
    };
    let sftp = Sftp::connect(opts).await?;
    let (overlay, mut writeback) = match journal {
        None => (None, None),
        Some((journal, lock)) => {
            let run = WriteBackRun {
                replayer: Replayer::start(journal.clone(), sftp.clone()),
                lock,
                budget: opts.reconnect_timeout,
            };
            if let Err(e) = replay_earlier(&run, opts.reconnect_timeout).await {
                run.replayer.stop().await;
                sftp.disconnect().await;
                return Err(e);
            }
            (
                Some(Overlay::new(journal, sftp.clone(), opts.cache_timeout)),
                Some(run),
            )
        }
    };
    let fs = SshFs::new(
        sftp.clone(),
        opts,
        tokio::runtime::Handle::current(),
        overlay,
    );
    let write_behind = fs.write_behind();
    let trimmer = fs.trimmer();
    let config = fuse_config(opts);
    let path = mountpoint.to_path_buf();
    let fuse_err = |reason: String| MountError::Fuse {
        path: mountpoint.to_path_buf(),
        reason,
    };
    // mount(2) and the event loop are blocking: keep them off the async workers.
    let session = tokio::task::spawn_blocking(move || fuser::Session::new(fs, &path, &config))
        .await
        .map_err(|e| fuse_err(e.to_string()))?;
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            // Nothing was appended: what the replayer has not sent stays for the next mount.
            if let Some(w) = writeback.take() {
                w.replayer.stop().await;
            }
            sftp.disconnect().await;
            return Err(fuse_err(explain_mount_error(&e)));
        }
    };
    if let Err(e) = trimmer.start(session.notifier()) {
        // The mount works without it; only its inode table is then unbounded.
        tracing::warn!(mountpoint = %mountpoint.display(), "cannot start the inode trimmer: {e}");
    }
    let (tx, ended) = watch::channel(false);
    let shown = mountpoint.display().to_string();
    std::thread::Builder::new()
        .name("fuse".into())
        .spawn(move || {
            if let Err(e) = session.run() {
                tracing::warn!(mountpoint = %shown, error = %e, "FUSE session ended with an error");
            }
            let _ = tx.send(true);
        })
        .map_err(|e| fuse_err(e.to_string()))?;
    Ok(Mounted {
        mountpoint: mountpoint.to_path_buf(),
        options: opts.clone(),
        sftp,
        write_behind,
        ended,
        writeback,
    })
}

/// `Journal::open` (which reads every segment: off the async workers).
pub async fn open_journal(dir: &Path, max_bytes: u64) -> Result<Journal, MountError> {
    let d = dir.to_path_buf();
    match tokio::task::spawn_blocking(move || Journal::open(&d, max_bytes)).await {
        Ok(r) => Ok(r?),
        Err(e) => Err(JournalError::Io {
            path: dir.to_path_buf(),
            what: "open",
            source: io::Error::other(e.to_string()),
        }
        .into()),
    }
}

/// Waits for the changes an earlier mount left journaled to reach the server, before this
/// mount adds any (the order the user made them in).
async fn replay_earlier(run: &WriteBackRun, budget: Duration) -> Result<(), MountError> {
    let earlier = run.replayer.journal().stats();
    if earlier.pending_ops == 0 {
        return Ok(());
    }
    let dir = run.replayer.journal().dir().to_path_buf();
    tracing::info!(journal = %dir.display(), changes = earlier.pending_ops,
        bytes = earlier.pending_bytes, "write-back: replaying the changes an earlier mount left, before mounting");
    if run.replayer.drain(budget).await {
        tracing::info!(journal = %dir.display(), "write-back: the earlier changes are on the server");
        return Ok(());
    }
    let s = run.replayer.stats();
    Err(MountError::Unreplayed {
        pending: s.journal.pending_ops,
        bytes: s.journal.pending_bytes,
        secs: budget.as_secs(),
        why: match s.last_error {
            Some(e) => format!("last error: {e}"),
            None => "no error reported: the server is slow to take them; a larger \
                     reconnect_timeout gives it longer"
                .into(),
        },
        dir,
    })
}

fn explain_mount_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => "the mountpoint does not exist; create the directory first".into(),
        Some(libc::EPERM) | Some(libc::EACCES) => {
            format!("{e}: mounting FUSE needs root (or CAP_SYS_ADMIN) and access to /dev/fuse")
        }
        Some(libc::ENOTCONN) => format!(
            "{e}: a dead mount from an earlier run is still there; run `umount -l` on it first"
        ),
        _ => e.to_string(),
    }
}

/// `umount2(path, MNT_DETACH)`: detaches even when busy or when the serving process is gone.
pub fn lazy_unmount(path: &Path) -> io::Result<()> {
    nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).map_err(io::Error::from)
}

/// Lazily unmounts every mount at or below `dir` (left by a crashed earlier run), deepest first.
pub fn unmount_stale_below(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = mount_table()?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    let mut done = Vec::new();
    for p in found {
        match lazy_unmount(&p) {
            Ok(()) => done.push(p),
            Err(e) => tracing::warn!(path = %p.display(), error = %e, "cannot unmount stale mount"),
        }
    }
    Ok(done)
}

/// True if `path` is a mount point according to /proc/self/mountinfo.
pub fn is_mounted(path: &Path) -> bool {
    mount_table().is_ok_and(|t| t.iter().any(|m| m.mount_point == path))
}

/// One line of /proc/PID/mountinfo: where something is mounted and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The mount point (5th field), unescaped.
    pub mount_point: PathBuf,
    /// The filesystem type after the ` - ` separator, e.g. `fuse.sshfs`.
    pub fs_type: String,
}

/// The mounts this process sees.
pub fn mount_table() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// Decodes the text of a /proc/PID/mountinfo file (the one decoder, shared with the tests).
/// Lines that do not have the documented shape are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mount_point = mountinfo_path(pre.split(' ').nth(4)?);
            let fs_type = post.split(' ').next()?.to_string();
            Some(MountEntry {
                mount_point,
                fs_type,
            })
        })
        .collect()
}

/// A path field of /proc/*/mountinfo with its octal escapes (`\040` for a space) decoded.
fn mountinfo_path(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c));
        if escaped {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            // \ooo above \377 is not an escape mountinfo writes; keep it as text.
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Creates `dir` (and parents) traversable by everyone, whatever the process umask (0077 in
/// `serve`); an existing directory is left as it is.
pub fn create_dir_0755(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
}

/// Makes `mp` an empty directory we can mount on. Returns true if a stale mount had to be
/// detached first (left by a crashed run: stat fails with ENOTCONN, or it is still a mountpoint
/// although we hold no mount for it).
pub fn prepare_mountpoint(volumes_dir: &Path, mp: &Path) -> io::Result<bool> {
    create_dir_0755(volumes_dir)?;
    let mut detached = false;
    match std::fs::symlink_metadata(mp) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir(mp)?;
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            lazy_unmount(mp)?;
            detached = true;
        }
        Err(e) => return Err(e),
        Ok(meta) => {
            if !meta.is_dir() {
                return Err(io::Error::other(
                    "it exists and is not a directory; remove it on the host",
                ));
            }
            let parent = std::fs::metadata(volumes_dir)?;
            if meta.dev() != parent.dev() {
                lazy_unmount(mp)?;
                detached = true;
            }
        }
    }
    // Containers may run as any user; the mounted filesystem sets its own root permissions.
    std::fs::set_permissions(mp, std::fs::Permissions::from_mode(0o755))?;
    Ok(detached)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        let info = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 0:5 / /mnt/volumes/x rw - fuse.sshfs h:/ rw\n\
                    38 35 0:6 / /mnt/tail\\134 rw - tmpfs none rw\n\
                    garbage\n";
        let t = parse_mountinfo(info);
        let points: Vec<_> = t.iter().map(|m| m.mount_point.clone()).collect();
        assert_eq!(
            points,
            vec![
                PathBuf::from("/mnt/a b"),
                PathBuf::from("/mnt/volumes/x"),
                PathBuf::from("/mnt/tail\\"),
            ]
        );
        assert_eq!(t[1].fs_type, "fuse.sshfs");
    }
}
