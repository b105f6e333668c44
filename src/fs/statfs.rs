//! statfs: the server's free space (statvfs@openssh.com), or a large empty disk where the server
//! cannot tell.

use fuser::Errno;

use super::errno::errno;
use super::{Fs, NAME_MAX};
use crate::sftp::StatusCode;

/// What statfs(2) answers, field by field as the kernel wants them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Statfs {
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_avail: u64,
    pub files: u64,
    pub files_free: u64,
    pub block_size: u32,
    pub name_max: u32,
    pub fragment_size: u32,
}

impl Statfs {
    /// Without the statvfs extension: a large empty disk (as sshfs shows), so tools that check
    /// free space before writing still work.
    fn unknown() -> Statfs {
        let big = 1_000_000_000;
        Statfs {
            blocks: big,
            blocks_free: big,
            blocks_avail: big,
            files: big,
            files_free: big,
            block_size: 4096,
            name_max: NAME_MAX as u32,
            fragment_size: 4096,
        }
    }
}

impl Fs {
    pub(super) async fn statfs(&self) -> Result<Statfs, Errno> {
        match self.remote.statvfs(self.remote.root()).await {
            Ok(s) => Ok(Statfs {
                blocks: s.blocks,
                blocks_free: s.blocks_free,
                blocks_avail: s.blocks_avail,
                files: s.inodes,
                files_free: s.inodes_free,
                block_size: s.block_size.min(u64::from(u32::MAX)) as u32,
                name_max: NAME_MAX as u32,
                fragment_size: s.fragment_size.min(u64::from(u32::MAX)) as u32,
            }),
            Err(e) if e.is_status(StatusCode::OpUnsupported) => Ok(Statfs::unknown()),
            Err(e) => Err(errno(&e)),
        }
    }
}
