//! The SSH connection: TCP connect, algorithm choice, host-key verification (via `hostkey`),
//! authentication, keepalives, and SFTP channels on top.

use std::time::Duration;

/// Why a connection could not be made. Each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve host '{host}': {reason}. Check the host name in sshcmd")]
    Resolve { host: String, reason: String },
    #[error(
        "cannot connect to {addr}: {reason}. Check that an SSH server listens there and that the port option is right"
    )]
    Tcp { addr: String, reason: String },
    #[error("timed out after {0:?} connecting to the SSH server. Check the host, port and network")]
    Timeout(Duration),
    #[error("{0}")]
    HostKey(String),
    #[error("authentication failed for user '{user}' on {host}: {detail}")]
    Auth {
        user: String,
        host: String,
        detail: String,
    },
    #[error("cannot use the private key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("the remote path '{path}' {reason}. Create it on the server or fix the path in sshcmd")]
    RemotePath { path: String, reason: String },
    #[error("SSH protocol error: {0}")]
    Protocol(String),
}
