//! docker-volume-sshfs: a Docker volume plugin (and a standalone `mount` command) that serves a
//! remote directory over one SSH connection as a FUSE filesystem.
//!
//! Data flows one way: `cmd` (the two commands) -> `protocol` (Docker's HTTP calls) -> `driver`
//! (volume semantics) -> `state` (sled) and `mount` (mount lifecycle) -> `fs` (FUSE operations)
//! -> `sftp` (remote calls) -> `ssh` (the connection, through `jump` hosts if any) -> `hostkey`
//! (which keys to trust, from pins and `known_hosts`).
//! `options` is shared by the plugin and the command line; `secret` keeps passwords out of logs.

pub mod agent_mount;
pub mod cmd;
pub mod driver;
pub mod fs;
pub mod hostkey;
pub mod jump;
pub mod kept;
pub mod known_hosts;
pub mod mount;
pub mod options;
pub mod protocol;
pub mod secret;
pub mod sftp;
pub mod ssh;
pub mod ssh_auth;
pub mod ssh_config;
pub mod state;
pub mod version;
pub mod writeback;
