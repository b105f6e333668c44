//! setattr: chmod, chown, truncate and utimes.
//!
//! SFTP v3 sets uid and gid together and atime and mtime together, so a change of one of a pair
//! needs the current value of the other. Three shortcuts save round trips: a change to what the
//! file already has is answered at once (tar and `cp -p` chown every file to its owner); mode,
//! times and (unless `strict_chown`) owner of a file that is open and being written are
//! deferred and sent behind its queued writes (`file::InodeIo::defer`); and the attributes after
//! a change are computed rather than fetched when what they were is fresh (after a chown too,
//! unless set-ID bits, which a chown clears, are involved). A chown the server refuses is
//! ignored unless `strict_chown` (Docker's copy-up chowns every file it copies).
//!
//! Never a symlink's target: SFTP SETSTAT follows symlinks on the server, so `touch -h` or
//! `lchown` on a link (Docker's copy-up lchowns and lutimes every link it copies) would change
//! what the link points to, possibly outside the volume's remote path, and fail with ENOENT on
//! a dangling link. The rule for a setattr by path (one through an open handle cannot meet a
//! link):
//! - an inode shown as a symlink: ownership and times go through `lsetstat@openssh.com`; a
//!   server without it gets nothing (the call succeeds and the attributes stay as they are:
//!   never the target's). A mode is EOPNOTSUPP and a size EINVAL, as Linux answers for a link.
//! - any other inode: size and mode by SETSTAT (SFTP has no mode change that does not follow);
//!   ownership and times by `lsetstat` when offered, so a file that another client replaced
//!   with a symlink since we looked is not followed either; without it, SETSTAT.
//! - with `follow_symlinks` the mount shows a link as its target, so SETSTAT (following) is
//!   what the caller asks for; a dangling link still shows as a link and takes the first rule.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use fuser::{Errno, FileAttr, TimeOrNow};

use super::Fs;
use super::attr::{self, S_IFMT};
use super::errno::errno;
use super::file::{InodeIo, OpenFile};
use crate::sftp::{Error, FileAttributes, StatusCode};

/// What one setattr asks for, as the kernel sent it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Change {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
}

impl Change {
    /// Forgets an ownership change to the owner the file has (`base`): also half of a pair
    /// where the other half is not asked for.
    fn drop_unchanged_owner(&mut self, base: &FileAttributes) {
        if self.uid.or(base.uid) == base.uid && self.gid.or(base.gid) == base.gid {
            self.uid = None;
            self.gid = None;
        }
    }

    /// Forgets a chmod to the mode the file has (`base`): busybox `tar` chmods every file it
    /// made to the mode it was just created with, a round trip each at real latencies.
    fn drop_unchanged_mode(&mut self, base: &FileAttributes) {
        if let (Some(m), Some(p)) = (self.mode, base.permissions)
            && m & 0o7777 == p & 0o7777
        {
            self.mode = None;
        }
    }

    fn nothing_left(&self) -> bool {
        self.mode.is_none()
            && self.size.is_none()
            && self.atime.is_none()
            && self.mtime.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
    }

    /// What can wait for the open file's queued writes: mode and times, and the owner when
    /// `chown_ok` (the server is known to take chowns, and a refusal would be ignored anyway:
    /// a deferred chown's answer comes after the call returned) and the file's mode has no
    /// set-ID bits (a chown would clear them, so the attributes it leaves are not known
    /// without asking). `base` is what the file has, `fresh` whether that is known for sure.
    fn deferrable(&self, chown_ok: bool, base: &FileAttributes, fresh: bool) -> bool {
        let owner = self.uid.is_some() || self.gid.is_some();
        self.size.is_none() && (!owner || (chown_ok && fresh && !attr::has_setid(base)))
    }

    /// One of a pair without the other: its current value must be known.
    fn needs_base(&self) -> bool {
        self.uid.is_some() != self.gid.is_some() || self.atime.is_some() != self.mtime.is_some()
    }

    /// The owner, mode and times of the request, each pair completed from `base`.
    fn owner_mode_and_times(&self, base: &FileAttributes) -> FileAttributes {
        let mut set = self.mode_and_times(base);
        if self.uid.is_some() || self.gid.is_some() {
            set.uid = self.uid.or(base.uid);
            set.gid = self.gid.or(base.gid);
        }
        set
    }

    /// The mode and times part of the request, with the missing half of the times from `base`.
    fn mode_and_times(&self, base: &FileAttributes) -> FileAttributes {
        let mut set = FileAttributes {
            permissions: self.mode.map(|m| m & 0o7777),
            ..Default::default()
        };
        if self.atime.is_some() || self.mtime.is_some() {
            set.atime = self.atime.map(resolve_time).or(base.atime);
            set.mtime = self.mtime.map(resolve_time).or(base.mtime);
        }
        set
    }
}

fn resolve_time(t: TimeOrNow) -> u32 {
    match t {
        TimeOrNow::SpecificTime(t) => attr::to_secs(t),
        TimeOrNow::Now => attr::to_secs(SystemTime::now()),
    }
}

/// The attributes `base` has after `set` was applied to it (what the server would answer).
fn applied(base: &FileAttributes, set: &FileAttributes) -> FileAttributes {
    let mut a = base.clone();
    if let Some(s) = set.size {
        a.size = Some(s);
        // Truncation updates the mtime on the server.
        a.mtime = Some(attr::to_secs(SystemTime::now()));
    }
    if let Some(p) = set.permissions {
        a.permissions = Some((attr::mode_of(base) & S_IFMT) | p);
    }
    if set.atime.is_some() {
        a.atime = set.atime;
        a.mtime = set.mtime;
    }
    if set.uid.is_some() {
        a.uid = set.uid;
        a.gid = set.gid;
    }
    a
}

fn has_any(s: &FileAttributes) -> bool {
    s.size.is_some()
        || s.permissions.is_some()
        || s.uid.is_some()
        || s.atime.is_some()
        || s.mtime.is_some()
}

impl Fs {
    pub(super) async fn setattr(
        &self,
        ino: u64,
        change: Change,
        fh: Option<u64>,
    ) -> Result<FileAttr, Errno> {
        let (path, base, base_fresh) = {
            let t = self.nodes.lock();
            let node = t.get(ino).ok_or(Errno::ENOENT)?;
            (
                node.path.clone(),
                node.attrs.clone(),
                node.fresh_attrs(Instant::now()).is_some(),
            )
        };
        let handle = fh.and_then(|fh| self.handle(fh).ok());
        if path.is_none() && handle.is_none() {
            return Err(Errno::ENOENT);
        }
        let mut change = change;
        if base_fresh && let Some(b) = &base {
            change.drop_unchanged_owner(b);
            change.drop_unchanged_mode(b);
            if change.nothing_left() {
                return Ok(self.file_attr(ino, b));
            }
        }
        let io = self.io_of(ino);
        if self.caching()
            && let (Some(io), Some(base)) = (&io, &base)
            && change.deferrable(self.chown_deferrable(), base, base_fresh)
            && let Some(of) = self.active_handle(ino)
        {
            let set = change.owner_mode_and_times(base);
            if io.can_defer(&set) {
                return Ok(self.defer(ino, set, io, &of, base));
            }
        }
        // Queued writes must not land after a truncate or overwrite the mtime we set.
        if let Some(io) = &io {
            let settled = io.settle().await;
            self.check_owner(ino, io);
            settled.map_err(|e| errno(&e))?;
            if change.size.is_some() {
                io.invalidate();
            }
        }
        let (base, base_fresh) = match base {
            Some(b) if base_fresh || !change.needs_base() => (b, base_fresh),
            _ if change.needs_base() => (self.fetch(path.as_deref(), handle.as_ref()).await?, true),
            _ => (FileAttributes::default(), false),
        };

        let mut set = change.mode_and_times(&base);
        set.size = change.size;
        let want_uid = change.uid.or(base.uid);
        let want_gid = change.gid.or(base.gid);
        let chown = (change.uid.is_some() || change.gid.is_some())
            && !(base_fresh && want_uid == base.uid && want_gid == base.gid);
        if chown {
            set.uid = want_uid;
            set.gid = want_gid;
        }

        let link = handle.is_none() && self.link_rule(path.as_deref(), &base, &mut set).await?;
        let target = Target {
            handle: handle.as_ref(),
            path: path.as_deref(),
            link,
        };
        let chown_ignored = self
            .apply_allowing_refused_chown(&target, set.clone(), chown, ino)
            .await?;
        if chown_ignored {
            set.uid = None;
            set.gid = None;
        }

        if chown_ignored {
            self.chown_refused.store(true, Ordering::Relaxed);
        } else if chown {
            self.chown_accepted.store(true, Ordering::Relaxed);
        }
        // A chown clears set-ID bits: with them the result is the server's to tell.
        let ids_changed = chown && !chown_ignored;
        let new = if base_fresh && !(ids_changed && attr::has_setid(&base)) && self.caching() {
            applied(&base, &set)
        } else {
            self.fetch(path.as_deref(), handle.as_ref()).await?
        };
        if let Some(s) = change.size {
            if let Some(io) = &io {
                io.truncated(s);
            }
            for of in self.handles.of_inode(ino) {
                of.set_size_hint(s);
            }
        }
        self.changed_attrs(ino, &new);
        Ok(self.file_attr(ino, &new))
    }

    /// Queues a change behind the open file's writes and answers with what it will be.
    fn defer(
        &self,
        ino: u64,
        set: FileAttributes,
        io: &InodeIo,
        of: &OpenFile,
        base: &FileAttributes,
    ) -> FileAttr {
        io.defer(set.clone(), Arc::clone(&of.file));
        let a = applied(base, &set);
        self.changed_attrs(ino, &a);
        self.file_attr(ino, &a)
    }

    /// Sends `set`. A chown the server refuses (a login that may not give files away, the usual
    /// case) is ignored unless `strict_chown`, and the rest is sent without it: Docker's copy-up
    /// "chown" then succeeds and the files keep the owner the server gave them. Returns whether
    /// the ownership change was dropped.
    async fn apply_allowing_refused_chown(
        &self,
        target: &Target<'_>,
        mut set: FileAttributes,
        chown: bool,
        ino: u64,
    ) -> Result<bool, Errno> {
        if !has_any(&set) {
            return Ok(false);
        }
        let Err(e) = self.send_attrs(target, set.clone()).await else {
            return Ok(false);
        };
        let refused = matches!(e.errno(), libc::EPERM | libc::EACCES);
        if !(chown && refused && !self.strict_chown) {
            return Err(errno(&e));
        }
        tracing::debug!(ino, "server refused chown; ignored (strict_chown is off)");
        set.uid = None;
        set.gid = None;
        if has_any(&set) {
            self.send_attrs(target, set).await.map_err(|e| errno(&e))?;
        }
        Ok(true)
    }

    /// Through the open handle when there is one (works for unlinked files and is what
    /// ftruncate means), else by path.
    async fn send_attrs(&self, target: &Target<'_>, set: FileAttributes) -> Result<(), Error> {
        match (target.handle, target.path) {
            (Some(h), _) => h.file.fsetstat(set).await,
            (None, Some(p)) => self.setstat_by_path(&self.full(p), set, target.link).await,
            (None, None) => Err(Error::Status {
                code: StatusCode::NoSuchFile,
                message: String::new(),
            }),
        }
    }

    /// Whether a path-based setattr acts on a symlink, from the attributes shown for the inode
    /// (`known`; no mode means nothing is known) or else a fresh look. For a link, trims `set`
    /// to what is applied to the link itself, or fails as Linux does.
    async fn link_rule(
        &self,
        path: Option<&str>,
        known: &FileAttributes,
        set: &mut FileAttributes,
    ) -> Result<bool, Errno> {
        let link = match (known.permissions, path) {
            (Some(_), _) => attr::is_symlink(known),
            (None, Some(p)) => match self.stat_remote(p).await {
                Ok(a) => attr::is_symlink(&a),
                Err(e) => return Err(errno(&e)),
            },
            (None, None) => false,
        };
        if !link {
            return Ok(false);
        }
        if set.permissions.is_some() {
            return Err(Errno::EOPNOTSUPP);
        }
        if set.size.is_some() {
            return Err(Errno::EINVAL);
        }
        if !self.remote.has_lsetstat() && (set.uid.is_some() || set.atime.is_some()) {
            tracing::debug!(
                path,
                "server lacks lsetstat@openssh.com: ownership and times of a symlink not set"
            );
            *set = FileAttributes::default();
        }
        Ok(true)
    }

    /// SETSTAT by path, or the part of it that must not follow a symlink by `lsetstat` (the
    /// module's rule). `link` and `set` come from `link_rule`.
    async fn setstat_by_path(
        &self,
        full: &str,
        set: FileAttributes,
        link: bool,
    ) -> Result<(), Error> {
        if link {
            return self.remote.lsetstat(full, &set).await;
        }
        if self.follow_symlinks {
            return self.remote.setstat(full, set).await;
        }
        self.remote.setstat_nofollow(full, set).await
    }

    /// Records attributes we changed (fresh, and ctime moved).
    fn changed_attrs(&self, ino: u64, a: &FileAttributes) {
        let mut t = self.nodes.lock();
        if let Some(n) = t.get_mut(ino) {
            n.attrs = Some(a.clone());
            n.fresh_until = self.fresh_until();
            n.ctime_floor = Some(SystemTime::now());
            t.changed_locally(ino);
        }
    }
}

/// What a setattr is applied to: the open handle it came with, or the inode's path.
struct Target<'a> {
    handle: Option<&'a Arc<OpenFile>>,
    path: Option<&'a str>,
    /// The path is a symlink (see the module's rule).
    link: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> FileAttributes {
        FileAttributes {
            uid: Some(1000),
            gid: Some(100),
            permissions: Some(0o100644),
            ..FileAttributes::default()
        }
    }

    #[test]
    fn a_change_to_what_the_file_has_is_nothing() {
        let mut c = Change {
            mode: Some(0o100644),
            uid: Some(1000),
            gid: Some(100),
            ..Change::default()
        };
        c.drop_unchanged_owner(&base());
        c.drop_unchanged_mode(&base());
        assert!(c.nothing_left(), "{c:?}");
        // Only half of the owner pair given: the other half is the file's.
        let mut c = Change {
            gid: Some(100),
            ..Change::default()
        };
        c.drop_unchanged_owner(&base());
        assert!(c.nothing_left(), "{c:?}");
    }

    #[test]
    fn a_real_change_is_kept() {
        for mode in [0o100600, 0o104644, 0o100645] {
            let mut c = Change {
                mode: Some(mode),
                ..Change::default()
            };
            c.drop_unchanged_mode(&base());
            assert_eq!(c.mode, Some(mode), "mode {mode:o}");
        }
        let mut c = Change {
            uid: Some(0),
            gid: Some(100),
            ..Change::default()
        };
        c.drop_unchanged_owner(&base());
        assert_eq!((c.uid, c.gid), (Some(0), Some(100)));
        // Nothing known of the file's mode: sent.
        let mut c = Change {
            mode: Some(0o644),
            ..Change::default()
        };
        c.drop_unchanged_mode(&FileAttributes::default());
        assert_eq!(c.mode, Some(0o644));
    }
}
