//! Mount lifecycle: connect, mount the FUSE filesystem at a directory, serve it, unmount lazily.
