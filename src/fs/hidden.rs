//! Reserved names for files unlinked while open (NFS's "silly rename"): what they look like,
//! which are ours, and which are leftovers to remove.
//!
//! sftp-server keeps an unlinked file's descriptor only as long as the connection lasts, so a
//! file unlinked while it has open handles is renamed instead, to a reserved name in its own
//! directory, and removed at its last release; reopens after a reconnect find it there. The
//! names never show through the mount (listings skip them, a lookup of one is ENOENT).
//!
//! A crash (or a kill) before the last release leaves the hidden file behind. Cleanup rule: a
//! reserved name made by another mount before this one started is a leftover. They are removed
//! from the root when the mount starts, and from any other directory when a listing of it
//! shows one: finding them all at mount would mean walking the whole tree.

use std::hash::BuildHasher;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::sftp::{DirEntry, Sftp};

use super::Fs;

const PREFIX: &str = ".sshfs-unlinked-";

/// Tells this mount's reserved names from those of other (or earlier) mounts.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hiding {
    /// Random per mount.
    mount: u32,
    /// When this mount started, in seconds since the epoch.
    started: u64,
}

/// True for a name that is reserved for hidden files.
pub(super) fn is_reserved(name: &str) -> bool {
    name.starts_with(PREFIX)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Hiding {
    pub fn new() -> Hiding {
        let random = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        Hiding {
            mount: random as u32,
            started: now_secs(),
        }
    }

    /// The reserved name for inode `ino` of this mount, hidden now:
    /// `.sshfs-unlinked-<seconds since the epoch>-<mount>-<inode>`, in hex.
    pub fn name(&self, ino: u64) -> String {
        format!("{PREFIX}{:x}-{:08x}-{ino:x}", now_secs(), self.mount)
    }

    /// A reserved name another mount made before this one started. A name that does not
    /// parse is never removed: it is not one we made.
    pub fn is_leftover(&self, name: &str) -> bool {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            return false;
        };
        let mut parts = rest.split('-');
        let (Some(secs), Some(mount), Some(ino), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let parsed = (
            u64::from_str_radix(secs, 16),
            u32::from_str_radix(mount, 16),
            u64::from_str_radix(ino, 16),
        );
        matches!(parsed, (Ok(secs), Ok(mount), Ok(_)) if mount != self.mount && secs < self.started)
    }

    /// Takes the reserved names out of a listing of the server directory `dir`, and removes
    /// the leftovers among them in the background (best effort: the next listing tries again).
    pub fn skip_hidden(&self, sftp: &Sftp, dir: &str, list: &mut Vec<DirEntry>) {
        let mut leftovers = Vec::new();
        list.retain(|e| {
            if self.is_leftover(&e.name) {
                leftovers.push(Fs::join(dir, &e.name));
            }
            !is_reserved(&e.name)
        });
        if leftovers.is_empty() {
            return;
        }
        let sftp = sftp.clone();
        tokio::spawn(async move {
            for p in leftovers {
                match sftp.remove(&p).await {
                    Ok(()) => tracing::info!(path = %p, "removed a file an earlier mount hid"),
                    Err(e) => tracing::debug!(path = %p, "leftover not removed: {e}"),
                }
            }
        });
    }

    /// At mount: removes the leftovers in the root directory.
    pub async fn clean_root(self, sftp: Sftp) {
        let root = sftp.root().to_string();
        match sftp.read_dir(&root).await {
            Ok(mut list) => self.skip_hidden(&sftp, &root, &mut list),
            Err(e) => tracing::debug!("listing the root for leftovers: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_names_are_never_leftovers() {
        let h = Hiding::new();
        let n = h.name(42);
        assert!(is_reserved(&n));
        assert!(!h.is_leftover(&n));
        let earlier = Hiding {
            mount: h.mount.wrapping_add(1),
            started: h.started,
        };
        let old = format!("{PREFIX}{:x}-{:08x}-2a", h.started - 10, earlier.mount);
        assert!(h.is_leftover(&old), "another mount's, from before ours");
        let new = format!("{PREFIX}{:x}-{:08x}-2a", h.started + 10, earlier.mount);
        assert!(!h.is_leftover(&new), "another mount's, made while we run");
        assert!(!h.is_leftover(".sshfs-unlinked-junk"));
        assert!(!h.is_leftover("plain"));
        assert!(!is_reserved("plain"));
    }
}
