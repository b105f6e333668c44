//! Host-key policy: the one place that decides whether a server's key is trusted.
//!
//! Order of trust: an explicit or pinned fingerprint (`hostkey=`), then a known_hosts file, then
//! `StrictHostKeyChecking` for keys seen for the first time. The plugin pins the first key it
//! accepts in the volume's state; the `mount` command records it in known_hosts like ssh does.

use std::path::{Path, PathBuf};

use russh::keys::{HashAlg, PublicKey};

use crate::options::StrictHostKeyChecking;

/// What the connect path knows about the server it is talking to.
#[derive(Debug, Clone)]
pub struct Policy {
    pub host: String,
    pub port: u16,
    pub strict: StrictHostKeyChecking,
    /// `SHA256:...` the key must have (explicit option or pinned on first use).
    pub pinned: Option<String>,
    /// known_hosts file to consult (and, with `learn`, to append new keys to).
    pub known_hosts: Option<PathBuf>,
    pub learn: bool,
}

/// The outcome for a key the server presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Matches a pinned fingerprint or a known_hosts entry.
    Known,
    /// Not known before; accepted under accept-new (or `no`). The caller may pin it.
    New,
    /// Refused, with a message telling the user what to do.
    Refused(String),
}

/// `SHA256:<base64>`, as `ssh-keygen -lf` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Decides whether to trust `key`.
pub fn check(policy: &Policy, key: &PublicKey) -> Verdict {
    let seen = fingerprint(key);
    let target = display_target(&policy.host, policy.port);

    if let Some(expected) = &policy.pinned {
        if *expected == seen {
            return Verdict::Known;
        }
        if policy.strict == StrictHostKeyChecking::No {
            tracing::warn!(%target, expected = %expected, seen = %seen,
                "host key differs from the pinned one; accepted because StrictHostKeyChecking=no");
            return Verdict::New;
        }
        return Verdict::Refused(format!(
            "host key verification failed for {target}: expected {expected} but the server presented \
             {seen}. The server's key changed or someone is intercepting the connection. If the \
             change is legitimate, recreate the volume with -o hostkey={seen}"
        ));
    }

    if let Some(path) = &policy.known_hosts
        && path.exists()
    {
        match russh::keys::check_known_hosts_path(&policy.host, policy.port, key, path) {
            Ok(true) => return Verdict::Known,
            Ok(false) => {}
            Err(russh::keys::Error::KeyChanged { line }) => {
                if policy.strict == StrictHostKeyChecking::No {
                    return Verdict::New;
                }
                return Verdict::Refused(format!(
                    "host key verification failed for {target}: {} line {line} records a different \
                     key than the one the server presented ({seen}). Remove that line if the server's \
                     key really changed",
                    path.display()
                ));
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read known_hosts file");
            }
        }
    }

    match policy.strict {
        StrictHostKeyChecking::Yes => Verdict::Refused(format!(
            "host key verification failed for {target}: the server's key {seen} is not known and \
             StrictHostKeyChecking=yes. Add it to known_hosts or pass -o hostkey={seen}"
        )),
        StrictHostKeyChecking::AcceptNew | StrictHostKeyChecking::No => {
            if policy.learn
                && let Some(path) = &policy.known_hosts
                && let Err(e) = russh::keys::known_hosts::learn_known_hosts_path(
                    &policy.host,
                    policy.port,
                    key,
                    path,
                )
            {
                tracing::warn!(file = %path.display(), error = %e, "cannot record the host key");
            }
            Verdict::New
        }
    }
}

fn display_target(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `~/.ssh/known_hosts` of the user running us (in the plugin: the `sshkey` mount).
pub fn default_known_hosts() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".ssh").join("known_hosts"))
}
