//! Names and their attributes: lookup, getattr, readlink, and the calls that add or remove a
//! name (mkdir, mknod, unlink, rmdir, symlink, rename, link). Each keeps the inode table and the
//! cached listings in step with what it did, so the change shows through the mount at once.
//!
//! A file keeps its identity through rename and unlink: open files are told their new remote
//! path (`sync_names`), and a file unlinked while open is hidden under a reserved name until
//! its last release (`hidden`), so it can still be reopened after a reconnect.
//!
//! One file because every call here changes a directory's names and keeps the same caches in
//! step the same way (`dir_changed`, `removing`, `sync_names`).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use fuser::{Errno, FileAttr, RenameFlags};

use super::Fs;
use super::attr::{self, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, S_ISGID};
use super::errno::{errno, is_enoent};
use super::file::OpenFile;
use super::hidden::is_reserved;
use super::inodes::AttrTicket;
use super::inodes::child_path;
use super::open::remove_hidden;
use crate::sftp::{Error, FileAttributes, OpenFlags};

/// A reply to a lookup-like request: an entry, or (with caching) a cached "no such name".
pub(super) enum Entry {
    Found(FileAttr),
    Absent,
}

impl Fs {
    /// The attributes of a path as shown: lstat, or stat with `follow_symlinks` (a dangling
    /// link still shows as a link).
    pub(super) async fn stat_remote(&self, rel: &str) -> Result<FileAttributes, Error> {
        let full = self.full(rel);
        let a = self.remote.lstat(&full).await?;
        if self.follow_symlinks && attr::is_symlink(&a) {
            return Ok(self.remote.stat(&full).await.unwrap_or(a));
        }
        Ok(a)
    }

    /// A ticket for a question about attributes sent now (see `inodes::AttrTicket`).
    pub(super) fn attr_ticket(&self) -> AttrTicket {
        let busy = self.handles.busy_inodes();
        self.nodes.lock().ticket(busy)
    }

    /// Records the server's answer to a lookup (asked with `ticket`), counting the kernel's
    /// lookup; shows ours where ours are newer.
    fn remember_answer(&self, path: &str, a: FileAttributes, ticket: &AttrTicket) -> FileAttr {
        let busy = self.handles.busy_inodes();
        let (ino, shown) =
            self.nodes
                .lock()
                .looked_up_answer(path, a, self.fresh_until(), ticket, &busy);
        self.file_attr(ino, &shown)
    }

    /// Records an entry we made or moved, counting the kernel's lookup.
    pub(super) fn remember(&self, path: &str, a: FileAttributes) -> FileAttr {
        let ino = self
            .nodes
            .lock()
            .looked_up(path, a.clone(), self.fresh_until());
        self.file_attr(ino, &a)
    }

    pub(super) fn parent_attrs(&self, parent: u64) -> Option<FileAttributes> {
        self.nodes.lock().get(parent)?.attrs.clone()
    }

    pub(super) fn touch_ctime(&self, ino: u64) {
        if let Some(n) = self.nodes.lock().get_mut(ino) {
            n.ctime_floor = Some(SystemTime::now());
        }
    }

    pub(super) async fn lookup(&self, parent: u64, name: &OsStr) -> Result<Entry, Errno> {
        let (_, name, cpath) = self.child_of(parent, name)?;
        if is_reserved(&name) {
            return Ok(Entry::Absent);
        }
        let existing = {
            let mut t = self.nodes.lock();
            let now = Instant::now();
            if self.caching() {
                if let Some(ino) = t.ino_of(&cpath)
                    && let Some(node) = t.get_mut(ino)
                    && let Some(a) = node.fresh_attrs(now).cloned()
                {
                    node.nlookup += 1;
                    drop(t);
                    return Ok(Entry::Found(self.file_attr(ino, &a)));
                }
                if t.known_absent(parent, &name, now) {
                    return Ok(Entry::Absent);
                }
            }
            t.ino_of(&cpath)
        };
        if let Some(ino) = existing {
            self.settle(ino).await;
        }
        let ticket = self.attr_ticket();
        match self.stat_remote(&cpath).await {
            Ok(a) => Ok(Entry::Found(self.remember_answer(&cpath, a, &ticket))),
            Err(e) if is_enoent(&e) => Ok(Entry::Absent),
            Err(e) => Err(errno(&e)),
        }
    }

    /// Current attributes, from the path if it still has one, else from an open handle.
    pub(super) async fn fetch(
        &self,
        path: Option<&str>,
        handle: Option<&Arc<OpenFile>>,
    ) -> Result<FileAttributes, Errno> {
        if let Some(p) = path {
            match self.stat_remote(p).await {
                Ok(a) => return Ok(a),
                Err(e) if handle.is_none() || !is_enoent(&e) => return Err(errno(&e)),
                Err(_) => {}
            }
        }
        match handle {
            Some(h) => h.file.fstat().await.map_err(|e| errno(&e)),
            None => Err(Errno::ENOENT),
        }
    }

    pub(super) async fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<FileAttr, Errno> {
        let path = {
            let mut t = self.nodes.lock();
            t.touch(ino);
            let node = t.get(ino).ok_or(Errno::ENOENT)?;
            if let Some(a) = node.fresh_attrs(Instant::now()) {
                let a = a.clone();
                drop(t);
                return Ok(self.file_attr(ino, &a));
            }
            node.path.clone()
        };
        self.settle(ino).await;
        let handle = fh.and_then(|fh| self.handle(fh).ok());
        let ticket = self.attr_ticket();
        let a = self.fetch(path.as_deref(), handle.as_ref()).await?;
        let busy = self.handles.busy_inodes();
        let shown = self
            .nodes
            .lock()
            .offer(ino, a, self.fresh_until(), &ticket, &busy);
        Ok(self.file_attr(ino, &shown))
    }

    pub(super) async fn readlink(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let path = self.path_of(ino)?;
        let target = self
            .remote
            .readlink(&self.full(&path))
            .await
            .map_err(|e| errno(&e))?;
        Ok(target.into_bytes())
    }

    /// Attributes for a new object: predicted from what earlier creations taught us when
    /// possible (no round trip), else fetched — and then learned from. Also forces the exact
    /// requested permissions when the server's own umask removed some (local semantics: the
    /// caller's umask has already been applied by the kernel).
    pub(super) async fn new_object_attrs(
        &self,
        parent: u64,
        rel: &str,
        kind: u32,
        perm: u32,
        handle: Option<&super::remote::RemoteFile>,
    ) -> Result<FileAttributes, Errno> {
        let parent_attrs = self.parent_attrs(parent);
        let predicted = self
            .creator
            .lock()
            .predict(perm, parent_attrs.as_ref(), kind == S_IFDIR);
        let full = self.full(rel);
        let fix = |p: u32| {
            let full = full.clone();
            async move {
                let s = FileAttributes {
                    permissions: Some(p),
                    ..Default::default()
                };
                match handle {
                    Some(f) => f.fsetstat(s).await,
                    None => self.remote.setstat(&full, s).await,
                }
                .map_err(|e| errno(&e))
            }
        };
        if let Some((got, uid, gid)) = predicted {
            if got != perm {
                fix(perm).await?;
            }
            let size = if kind == S_IFDIR { 4096 } else { 0 };
            return Ok(attr::created(kind, perm, uid, gid, size));
        }
        let mut a = match handle {
            Some(f) => f.fstat().await,
            None => self.remote.lstat(&full).await,
        }
        .map_err(|e| errno(&e))?;
        let parent_sgid = parent_attrs
            .as_ref()
            .is_none_or(|p| attr::mode_of(p) & S_ISGID != 0);
        if !parent_sgid {
            self.creator.lock().learn(perm, &a);
        }
        let mode = attr::mode_of(&a);
        let inherited = if kind == S_IFDIR { mode & S_ISGID } else { 0 };
        if (mode & 0o777) != (perm & 0o777) || (perm & 0o7000 & !mode) != 0 {
            let want = perm | inherited;
            fix(want).await?;
            a.permissions = Some((mode & S_IFMT) | want);
        }
        Ok(a)
    }

    pub(super) async fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
    ) -> Result<FileAttr, Errno> {
        let (ppath, name, cpath) = self.child_of(parent, name)?;
        let perm = mode & 0o7777;
        if let Err(e) = self.remote.mkdir(&self.full(&cpath), perm).await {
            return Err(self.creation_errno(&e, &cpath).await);
        }
        self.nodes.lock().dir_changed(&ppath, Some(&name), None);
        let a = self
            .new_object_attrs(parent, &cpath, S_IFDIR, perm, None)
            .await?;
        let fa = self.remember(&cpath, a);
        // A directory we just made is empty: lookups in it need not ask the server.
        if let Some(until) = self.fresh_until()
            && let Some(n) = self.nodes.lock().get_mut(fa.ino.0)
        {
            n.listing = Some((HashSet::new(), until));
        }
        Ok(fa)
    }

    pub(super) async fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
    ) -> Result<FileAttr, Errno> {
        if mode & S_IFMT != S_IFREG && mode & S_IFMT != 0 {
            // SFTP can create regular files, directories and symlinks only.
            return Err(Errno::EPERM);
        }
        let (ppath, name, cpath) = self.child_of(parent, name)?;
        let perm = mode & 0o7777;
        let attrs = FileAttributes {
            permissions: Some(perm),
            ..Default::default()
        };
        let flags = OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::WRITE;
        let f = match self.remote.open(&self.full(&cpath), flags, attrs).await {
            Ok(f) => f,
            Err(e) => return Err(self.creation_errno(&e, &cpath).await),
        };
        self.nodes.lock().dir_changed(&ppath, Some(&name), None);
        let a = self
            .new_object_attrs(parent, &cpath, S_IFREG, perm, Some(&f))
            .await;
        if let Err(e) = f.close().await {
            tracing::debug!("close after mknod: {e}");
        }
        Ok(self.remember(&cpath, a?))
    }

    pub(super) async fn unlink(&self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let (ppath, name, cpath) = self.child_of(parent, name)?;
        self.removing(&ppath, &cpath);
        let open = self.nodes.lock().ino_of(&cpath);
        let open = open.filter(|&ino| self.io_of(ino).is_some());
        let hidden = match open {
            Some(ino) => self.hide(ino, &ppath, &cpath).await,
            None => false,
        };
        if !hidden {
            let full = self.full(&cpath);
            let removed = self.remote.remove(&full).await;
            if let Err(e) = removed {
                self.removing(&ppath, &cpath);
                return Err(self.unlink_errno(&e, &full).await);
            }
            self.nodes.lock().detach(&cpath);
        }
        self.removing(&ppath, &cpath);
        self.nodes.lock().dir_changed(&ppath, None, Some(&name));
        self.sync_names();
        Ok(())
    }

    /// Unlinks `cpath`, whose inode `ino` has open handles, by renaming it to a reserved name
    /// in the same directory (see `hidden`): sftp-server keeps an unlinked file's descriptor
    /// only while the connection lasts, and a hidden file can be reopened after a reconnect.
    /// False if the server refused the rename (the caller removes the file instead).
    async fn hide(&self, ino: u64, ppath: &str, cpath: &str) -> bool {
        let hpath = child_path(ppath, &self.hiding.name(ino));
        if let Err(e) = self
            .remote
            .rename(&self.full(cpath), &self.full(&hpath))
            .await
        {
            tracing::debug!(
                path = cpath,
                "could not hide a file unlinked while open: {e}"
            );
            return false;
        }
        self.nodes.lock().hide(cpath, &hpath);
        self.sync_names();
        // The last handle may have been released while the rename was on its way.
        remove_hidden(&self.remote, self.take_hidden(ino)).await;
        true
    }

    pub(super) async fn rmdir(&self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let (ppath, name, cpath) = self.child_of(parent, name)?;
        let full = self.full(&cpath);
        self.removing(&ppath, &cpath);
        let removed = match self.remote.rmdir(&full).await {
            Err(_) if self.only_hidden_removed(&full).await => self.remote.rmdir(&full).await,
            r => r,
        };
        self.removing(&ppath, &cpath);
        if let Err(e) = removed {
            return Err(self.rmdir_errno(&e, &full).await);
        }
        {
            let mut t = self.nodes.lock();
            t.detach(&cpath);
            t.dir_changed(&ppath, None, Some(&name));
        }
        self.sync_names();
        Ok(())
    }

    /// A directory that looks empty through the mount may still hold hidden files (unlinked
    /// while open, or leftovers): if those are all it holds, they are removed so rmdir works as
    /// on a local filesystem. Files of ours still open then work until the next reconnect only.
    async fn only_hidden_removed(&self, full: &str) -> bool {
        let Ok(list) = self.remote.read_dir(full).await else {
            return false;
        };
        let names: Vec<&str> = list
            .iter()
            .map(|e| e.name.as_str())
            .filter(|n| *n != "." && *n != "..")
            .collect();
        if names.is_empty() || !names.iter().all(|n| is_reserved(n)) {
            return false;
        }
        for n in names {
            if let Err(e) = self.remote.remove(&Self::join(full, n)).await {
                tracing::debug!(name = n, "removing a hidden file before rmdir: {e}");
            }
        }
        true
    }

    pub(super) async fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &Path,
    ) -> Result<FileAttr, Errno> {
        let (ppath, name, cpath) = self.child_of(parent, name)?;
        let target = target.to_str().ok_or(Errno::EINVAL)?;
        if let Err(e) = self.remote.symlink(target, &self.full(&cpath)).await {
            return Err(self.creation_errno(&e, &cpath).await);
        }
        self.nodes.lock().dir_changed(&ppath, Some(&name), None);
        let parent_attrs = self.parent_attrs(parent);
        // Symlink permissions are always 0777; only the owner needs predicting.
        let predicted = self
            .creator
            .lock()
            .predict(0o644, parent_attrs.as_ref(), false);
        let a = match predicted {
            Some((_, uid, gid)) => attr::created(S_IFLNK, 0o777, uid, gid, target.len() as u64),
            None => self
                .remote
                .lstat(&self.full(&cpath))
                .await
                .map_err(|e| errno(&e))?,
        };
        Ok(self.remember(&cpath, a))
    }

    pub(super) async fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            // Atomic exchange and whiteouts have no SFTP equivalent.
            return Err(Errno::EINVAL);
        }
        let (ppath, name, from) = self.child_of(parent, name)?;
        let (npath, newname, to) = self.child_of(newparent, newname)?;
        let (ffrom, fto) = (self.full(&from), self.full(&to));
        if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            match self.remote.lstat(&fto).await {
                Ok(_) => return Err(Errno::EEXIST),
                Err(e) if is_enoent(&e) => {}
                Err(e) => return Err(errno(&e)),
            }
        }
        let aside = self.set_aside(&from, &npath, &to).await;
        if let Err(e) = self.remote.rename(&ffrom, &fto).await {
            if let Some(aside) = &aside {
                self.put_back(aside, &to).await;
            }
            return Err(self.rename_errno(&e, &ffrom, &fto).await);
        }
        if let Some(aside) = aside {
            // Its last handle may have been released while the rename was on its way.
            remove_hidden(&self.remote, self.take_hidden(aside.ino)).await;
        }
        {
            let mut t = self.nodes.lock();
            t.rename(&from, &to);
            if let Some(n) = t.node_at(&to) {
                n.ctime_floor = Some(SystemTime::now());
            }
            t.dir_changed(&ppath, None, Some(&name));
            t.dir_changed(&npath, Some(&newname), None);
        }
        self.sync_names();
        Ok(())
    }

    /// Before a rename replaces `to`: when the file there is open, it is moved to a reserved
    /// name first, as unlink does (see `hidden`), so that its handles keep their file, across
    /// reconnects too, until the last one is closed. Other clients see `to` missing for that
    /// moment (NFS does the same). Only for a regular file with open handles, and only when the
    /// source is there (a rename that would fail must not move the target away).
    async fn set_aside(&self, from: &str, npath: &str, to: &str) -> Option<SetAside> {
        let ino = {
            let t = self.nodes.lock();
            let ino = t.ino_of(to)?;
            (t.ino_of(from) != Some(ino)).then_some(ino)?
        };
        self.io_of(ino)?;
        self.remote.lstat(&self.full(from)).await.ok()?;
        let hpath = child_path(npath, &self.hiding.name(ino));
        if let Err(e) = self.remote.rename(&self.full(to), &self.full(&hpath)).await {
            tracing::debug!(
                path = to,
                "could not set aside a file replaced while open: {e}"
            );
            return None;
        }
        self.nodes.lock().hide(to, &hpath);
        self.sync_names();
        Some(SetAside { ino, hidden: hpath })
    }

    /// Undoes `set_aside` after the rename failed: the file goes back to its name.
    async fn put_back(&self, aside: &SetAside, to: &str) {
        let (hidden, back) = (self.full(&aside.hidden), self.full(to));
        if let Err(e) = self.remote.rename(&hidden, &back).await {
            tracing::warn!(path = to, hidden = %hidden, "could not put back a file set aside: {e}");
            return;
        }
        self.nodes.lock().unhide(&aside.hidden, to);
        self.sync_names();
    }

    pub(super) async fn link(
        &self,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
    ) -> Result<FileAttr, Errno> {
        let from = self.path_of(ino)?;
        let (npath, newname, to) = self.child_of(newparent, newname)?;
        if let Err(e) = self
            .remote
            .hardlink(&self.full(&from), &self.full(&to))
            .await
        {
            return Err(self.creation_errno(&e, &to).await);
        }
        self.touch_ctime(ino);
        self.nodes.lock().dir_changed(&npath, Some(&newname), None);
        let known = self.nodes.lock().get(ino).and_then(|n| n.attrs.clone());
        let a = match known {
            Some(a) => a,
            None => self.stat_remote(&to).await.map_err(|e| errno(&e))?,
        };
        let fa = self.remember(&to, a.clone());
        self.touch_ctime(fa.ino.0);
        // Both names now count one more link (SFTP v3 cannot tell us; listings refresh it).
        {
            let mut t = self.nodes.lock();
            let links = t.get(ino).and_then(|n| n.nlink).unwrap_or(1) + 1;
            for i in [ino, fa.ino.0] {
                if let Some(n) = t.get_mut(i) {
                    n.nlink = Some(links);
                }
            }
        }
        Ok(self.file_attr(fa.ino.0, &a))
    }
}

/// A file moved to a reserved name so that a rename could replace its name (`set_aside`).
struct SetAside {
    ino: u64,
    /// Its reserved path, relative to the mount root.
    hidden: String,
}
