//! The FUSE filesystem: kernel requests in, SFTP calls out. (Placeholder until the fs branch lands.)

use crate::options::MountOptions;
use crate::sftp::Sftp;

pub struct SshFs {
    _sftp: Sftp,
}

impl SshFs {
    pub fn new(sftp: Sftp, _opts: &MountOptions, _rt: tokio::runtime::Handle) -> SshFs {
        SshFs { _sftp: sftp }
    }
}

impl fuser::Filesystem for SshFs {}

pub fn fuse_config(_opts: &MountOptions) -> fuser::Config {
    fuser::Config::default()
}
