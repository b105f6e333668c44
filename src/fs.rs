//! The FUSE filesystem: kernel requests in, SFTP calls out.
