//! How remote attributes are shown to the kernel: SFTP v3 attributes in, `FileAttr` out, with the
//! `uid=`/`gid=`/`umask=` presentation options applied, plus what we can predict about files we
//! create ourselves (so a create needs no extra stat round trip).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use crate::sftp::FileAttributes;

pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
const S_IFIFO: u32 = 0o010000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;
const S_IFSOCK: u32 = 0o140000;
pub const S_ISGID: u32 = 0o2000;
const S_ISUID: u32 = 0o4000;

/// `st_blksize`: cp and stdio size their buffers from it, and bigger FUSE writes mean fewer
/// requests; 256 KiB keeps stdio buffers of many open files modest.
const BLKSIZE: u32 = 256 * 1024;

/// The presentation options (sshfs's `uid=`, `gid=`, `umask=`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Presentation {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub umask: u32,
}

pub fn mode_of(a: &FileAttributes) -> u32 {
    a.permissions.unwrap_or(S_IFREG | 0o644)
}

/// Whether the mode has set-user-ID or set-group-ID bits (a chown clears them).
pub fn has_setid(a: &FileAttributes) -> bool {
    mode_of(a) & (S_ISUID | S_ISGID) != 0
}

pub fn kind_of(mode: u32) -> FileType {
    match mode & S_IFMT {
        S_IFDIR => FileType::Directory,
        S_IFLNK => FileType::Symlink,
        S_IFIFO => FileType::NamedPipe,
        S_IFCHR => FileType::CharDevice,
        S_IFBLK => FileType::BlockDevice,
        S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

pub fn is_dir(a: &FileAttributes) -> bool {
    mode_of(a) & S_IFMT == S_IFDIR
}

pub fn is_symlink(a: &FileAttributes) -> bool {
    mode_of(a) & S_IFMT == S_IFLNK
}

fn secs(t: Option<u32>) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::from(t.unwrap_or(0)))
}

/// SFTP v3 carries times as 32-bit whole seconds.
pub fn to_secs(t: SystemTime) -> u32 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs().min(u64::from(u32::MAX)) as u32)
        .unwrap_or(0)
}

/// Converts what the server sent into what `stat` shows. SFTP v3 has no ctime: it is the
/// mtime, or later if we changed the inode's metadata ourselves (`ctime_floor`), so that
/// chmod/chown/rename/link visibly update it as POSIX requires. It has no link count either:
/// `nlink` is what a directory listing's long names said (or what a link() made it), else 1.
/// Directories always show 1, which tells tools like find that the count is not maintained
/// (a stale count there would make them skip subdirectories).
pub fn to_file_attr(
    ino: u64,
    a: &FileAttributes,
    p: &Presentation,
    ctime_floor: Option<SystemTime>,
    nlink: Option<u32>,
) -> FileAttr {
    let mode = mode_of(a);
    let size = a.size.unwrap_or(0);
    let mtime = secs(a.mtime);
    let ctime = match ctime_floor {
        Some(f) if f > mtime => f,
        _ => mtime,
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: secs(a.atime),
        mtime,
        ctime,
        crtime: mtime,
        kind: kind_of(mode),
        perm: (mode & 0o7777 & !p.umask) as u16,
        nlink: match kind_of(mode) {
            FileType::Directory => 1,
            _ => nlink.unwrap_or(1),
        },
        uid: p.uid.or(a.uid).unwrap_or(0),
        gid: p.gid.or(a.gid).unwrap_or(0),
        rdev: 0,
        blksize: BLKSIZE,
        flags: 0,
    }
}

/// What the server does to files this login creates, learned from the first creations: the
/// owner it gives them and the permission bits its umask removes. Once known, creates and
/// mkdirs build their attributes locally instead of asking for them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Creator {
    ids: Option<(u32, u32)>,
    /// Permission bits (of 0o777) whose fate under the server's umask we have observed.
    known: u32,
    /// Of the known bits, those the server's umask removes.
    umask: u32,
}

impl Creator {
    /// Records the attributes a freshly created object got for the requested permissions
    /// (only call it for objects made in a directory without the set-group-id bit).
    pub fn learn(&mut self, requested: u32, actual: &FileAttributes) {
        let (Some(uid), Some(gid), Some(mode)) = (actual.uid, actual.gid, actual.permissions)
        else {
            return;
        };
        self.ids = Some((uid, gid));
        let req = requested & 0o777;
        self.umask = (self.umask & !req) | (req & !mode);
        self.known |= req;
    }

    /// The permission bits the server will give a new object asked to have `requested`, and
    /// the owner, if everything about it is known. Set-id and sticky bits are never predicted.
    /// A set-group-id parent passes its group on, as on any Unix server (and, to a new
    /// directory, the set-group-id bit too: not predicted).
    pub fn predict(
        &self,
        requested: u32,
        parent: Option<&FileAttributes>,
        is_dir: bool,
    ) -> Option<(u32, u32, u32)> {
        let (uid, mut gid) = self.ids?;
        if requested & 0o7000 != 0 || (requested & 0o777 & !self.known) != 0 {
            return None;
        }
        let parent = parent?;
        if mode_of(parent) & S_ISGID != 0 {
            if is_dir {
                return None;
            }
            gid = parent.gid?;
        }
        Some((requested & 0o777 & !self.umask, uid, gid))
    }
}

/// Attributes of an object we just created, built without asking the server.
pub fn created(kind_bits: u32, perm: u32, uid: u32, gid: u32, size: u64) -> FileAttributes {
    let now = to_secs(SystemTime::now());
    FileAttributes {
        size: Some(size),
        uid: Some(uid),
        gid: Some(gid),
        permissions: Some(kind_bits | perm),
        atime: Some(now),
        mtime: Some(now),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(mode: u32, uid: u32, gid: u32) -> FileAttributes {
        FileAttributes {
            size: Some(1000),
            uid: Some(uid),
            gid: Some(gid),
            permissions: Some(mode),
            atime: Some(10),
            mtime: Some(20),
            ..Default::default()
        }
    }

    #[test]
    fn conversion_and_presentation() {
        let a = attrs(S_IFREG | 0o4755, 1000, 100);
        let f = to_file_attr(7, &a, &Presentation::default(), None, Some(3));
        assert_eq!(f.nlink, 3);
        assert_eq!(f.kind, FileType::RegularFile);
        assert_eq!(f.perm, 0o4755);
        assert_eq!((f.uid, f.gid, f.size, f.blocks), (1000, 100, 1000, 2));
        assert_eq!(f.ctime, UNIX_EPOCH + Duration::from_secs(20));
        let p = Presentation {
            uid: Some(1),
            gid: Some(2),
            umask: 0o027,
        };
        let f = to_file_attr(7, &a, &p, Some(UNIX_EPOCH + Duration::from_secs(30)), None);
        assert_eq!(f.nlink, 1);
        assert_eq!((f.uid, f.gid, f.perm), (1, 2, 0o4750));
        assert_eq!(f.ctime, UNIX_EPOCH + Duration::from_secs(30));
        assert_eq!(kind_of(S_IFDIR | 0o755), FileType::Directory);
        assert_eq!(kind_of(S_IFLNK | 0o777), FileType::Symlink);
    }

    #[test]
    fn creator_learns_umask_per_bit() {
        let mut c = Creator::default();
        let parent = attrs(S_IFDIR | 0o755, 0, 0);
        assert!(
            c.predict(0o644, Some(&parent), false).is_none(),
            "nothing learned yet"
        );
        c.learn(0o644, &attrs(S_IFREG | 0o644, 5, 6));
        assert_eq!(c.predict(0o644, Some(&parent), false), Some((0o644, 5, 6)));
        assert_eq!(c.predict(0o600, Some(&parent), false), Some((0o600, 5, 6)));
        assert!(
            c.predict(0o666, Some(&parent), false).is_none(),
            "group/other write not seen yet"
        );
        c.learn(0o777, &attrs(S_IFDIR | 0o755, 5, 6));
        assert_eq!(c.predict(0o777, Some(&parent), false), Some((0o755, 5, 6)));
        assert!(c.predict(0o4755, Some(&parent), false).is_none());
        let sgid_parent = attrs(S_IFDIR | 0o2775, 0, 50);
        assert_eq!(
            c.predict(0o644, Some(&sgid_parent), false),
            Some((0o644, 5, 50))
        );
        assert!(c.predict(0o644, None, false).is_none());
        assert!(c.predict(0o755, Some(&sgid_parent), true).is_none());
    }
}
