//! The mount's view in write-back mode: the server's state with the journal's pending changes
//! laid over it, so that reads through the mount see what it wrote (read-your-writes) before
//! the replayer has put it on the server.

use super::Journal;
use crate::sftp::Sftp;

/// The pending changes of one mount over its server. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct Overlay {
    #[allow(dead_code)]
    journal: Journal,
    #[allow(dead_code)]
    sftp: Sftp,
}

impl Overlay {
    /// The view of `sftp`'s root with `journal`'s pending changes over it. The journal's
    /// replayer runs apart (`Replayer::start`).
    pub fn new(journal: Journal, sftp: Sftp) -> Overlay {
        Overlay { journal, sftp }
    }
}
