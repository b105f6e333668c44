//! Public-key authentication sources, in ssh's order: keys held by an ssh-agent first, then key
//! files (IdentityFile options, then the ssh_config file's, else ssh's default names), each
//! preceded by its user certificate (`KEY-cert.pub` beside it, or a CertificateFile). An
//! agent-held key is used through the agent only: it never touches our memory or disk.
//! `ssh.rs` calls [`try_keys`] and turns what was tried into its error messages.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::MethodSet;
use russh::client::{AuthResult, Handle, Handler};
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::{Certificate, HashAlg, PrivateKeyWithHashAlg, PublicKey};

use crate::options::{IdentityAgent, MountOptions};
use crate::secret::Secret;
use crate::ssh::ConnectError;

/// Where the plugin sees its `sshagent` mount (config.json): a socket, or a directory with one.
pub const PLUGIN_AGENT_MOUNT: &str = "/run/sshfs-agent";

/// What the key attempts came to, when none was accepted.
#[derive(Debug, Default)]
pub struct Attempts {
    /// Each key or certificate offered, as the messages name it.
    pub tried: Vec<String>,
    /// What the server said it accepts, after the last refusal.
    pub methods: Option<MethodSet>,
    /// Why a source gave nothing (no agent, a skipped key file, ...), for the error message.
    pub notes: Vec<String>,
}

impl Attempts {
    /// The notes as a sentence to append to an error message (empty when there are none).
    pub fn notes_suffix(&self) -> String {
        if self.notes.is_empty() {
            String::new()
        } else {
            format!(" [{}]", self.notes.join("; "))
        }
    }
}

/// The outcome of [`try_keys`].
pub enum KeyOutcome {
    Accepted,
    NotAccepted(Attempts),
}

/// A key file to try, and whether failing to load it is an error (an IdentityFile option) or
/// skipped with a note (the config file's, ssh's default names).
struct KeyFile {
    path: PathBuf,
    required: bool,
}

/// Offers every key source in order until the server accepts one.
pub async fn try_keys<H: Handler>(
    handle: &mut Handle<H>,
    opts: &MountOptions,
    user: &str,
) -> Result<KeyOutcome, ConnectError> {
    let mut att = Attempts::default();
    let files = key_files(opts);
    let certs = certificates(opts, &files, &mut att)?;
    let rsa_hash = handle
        .best_supported_rsa_hash()
        .await
        .map_err(|e| ConnectError::Protocol(e.to_string()))?
        .flatten();

    // Public halves of the configured keys, to pair with the agent's (IdentitiesOnly, and to
    // skip a key file whose key the agent already offered).
    let wanted: Vec<PublicKey> = files
        .iter()
        .filter_map(|f| russh::keys::load_public_key(pub_path(&f.path)).ok())
        .chain(
            certs
                .iter()
                .map(|(_, c)| PublicKey::new(c.public_key().clone(), "")),
        )
        .collect();
    let mut offered: Vec<PublicKey> = Vec::new();

    if let Some(mut agent) = connect_agent(&opts.identity_agent, &mut att).await {
        let identities = match agent.request_identities().await {
            Ok(ids) => ids,
            Err(e) => {
                att.notes
                    .push(format!("the ssh-agent did not list its keys: {e}"));
                Vec::new()
            }
        };
        if identities.is_empty() {
            att.notes
                .push("the ssh-agent holds no keys (ssh-add)".into());
        }
        for id in identities {
            let key = id.public_key().into_owned();
            if opts.identities_only && !wanted.iter().any(|w| same_key(w, &key)) {
                continue;
            }
            let name = format!("agent key {} ({})", fingerprint(&key), id.comment());
            // A certificate file for an agent-held key: the agent signs for the certificate.
            let cert = certs
                .iter()
                .find(|(_, c)| same_key(&PublicKey::new(c.public_key().clone(), ""), &key));
            if let (AgentIdentity::PublicKey { .. }, Some((path, cert))) = (&id, cert) {
                let r = handle
                    .authenticate_certificate_with(user, cert.clone(), rsa_hash, &mut agent)
                    .await;
                if record(&mut att, r, format!("certificate {}", path.display()))? {
                    return Ok(KeyOutcome::Accepted);
                }
            }
            let r = match &id {
                AgentIdentity::Certificate { certificate, .. } => {
                    handle
                        .authenticate_certificate_with(
                            user,
                            certificate.clone(),
                            rsa_hash,
                            &mut agent,
                        )
                        .await
                }
                AgentIdentity::PublicKey { key, .. } => {
                    handle
                        .authenticate_publickey_with(user, key.clone(), rsa_hash, &mut agent)
                        .await
                }
            };
            if record(&mut att, r, name)? {
                return Ok(KeyOutcome::Accepted);
            }
            offered.push(key);
        }
    }

    for f in &files {
        let key = match russh::keys::load_secret_key(
            &f.path,
            opts.passphrase.as_ref().map(Secret::expose),
        ) {
            Ok(k) => Arc::new(k),
            Err(e) => {
                if f.required {
                    return Err(crate::ssh::key_error(
                        &f.path,
                        &e,
                        opts.passphrase.is_some(),
                    ));
                }
                tracing::debug!(key = %f.path.display(), error = %e, "skipping key file");
                if !matches!(&e, russh::keys::Error::IO(io) if io.kind() == std::io::ErrorKind::NotFound)
                {
                    att.notes.push(format!(
                        "skipped {}: {}",
                        f.path.display(),
                        short_key_error(&e)
                    ));
                }
                continue;
            }
        };
        let public = key.public_key().clone();
        if offered.iter().any(|o| same_key(o, &public)) {
            continue; // the agent offered it already
        }
        for (path, cert) in certs
            .iter()
            .filter(|(_, c)| same_key(&PublicKey::new(c.public_key().clone(), ""), &public))
        {
            let r = handle
                .authenticate_openssh_cert(user, key.clone(), cert.clone())
                .await
                .map_err(|e| ConnectError::Protocol(e.to_string()))?;
            if record_result(&mut att, r, format!("certificate {}", path.display())) {
                return Ok(KeyOutcome::Accepted);
            }
        }
        let r = handle
            .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, rsa_hash))
            .await
            .map_err(|e| ConnectError::Protocol(e.to_string()))?;
        if record_result(&mut att, r, f.path.display().to_string()) {
            return Ok(KeyOutcome::Accepted);
        }
        offered.push(public);
    }

    for (path, cert) in &certs {
        let key = PublicKey::new(cert.public_key().clone(), "");
        if !offered.iter().any(|o| same_key(o, &key)) {
            att.notes.push(format!(
                "certificate {} has no private key here (no IdentityFile and no agent key \
                 matches it)",
                path.display()
            ));
        }
    }
    Ok(KeyOutcome::NotAccepted(att))
}

/// Key files in order: IdentityFile options, then the config file's; ssh's default names only
/// when neither gives one.
fn key_files(opts: &MountOptions) -> Vec<KeyFile> {
    let mut out: Vec<KeyFile> = opts
        .identity_files
        .iter()
        .map(|p| KeyFile {
            path: p.clone(),
            required: true,
        })
        .collect();
    for p in &opts.config_identity_files {
        if !out.iter().any(|k| &k.path == p) {
            out.push(KeyFile {
                path: p.clone(),
                required: false,
            });
        }
    }
    if out.is_empty() {
        out = default_key_files()
            .into_iter()
            .map(|path| KeyFile {
                path,
                required: false,
            })
            .collect();
    }
    out
}

/// ssh's default key names in `~/.ssh` that exist.
fn default_key_files() -> Vec<PathBuf> {
    let Some(home) = std::env::var_os("HOME") else {
        return Vec::new();
    };
    let ssh = Path::new(&home).join(".ssh");
    ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|n| ssh.join(n))
        .filter(|p| p.exists())
        .collect()
}

/// `KEY.pub`.
fn pub_path(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// `KEY-cert.pub`, where ssh looks for a key's certificate.
fn cert_path(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push("-cert.pub");
    PathBuf::from(s)
}

/// The certificates to present: CertificateFile entries, then `KEY-cert.pub` beside each key
/// file. A named certificate that cannot be parsed is an error; a missing one is a note.
fn certificates(
    opts: &MountOptions,
    files: &[KeyFile],
    att: &mut Attempts,
) -> Result<Vec<(PathBuf, Certificate)>, ConnectError> {
    let mut out: Vec<(PathBuf, Certificate)> = Vec::new();
    let named = opts.certificate_files.iter().map(|p| (p.clone(), true));
    let beside = files.iter().map(|f| (cert_path(&f.path), false));
    for (path, named) in named.chain(beside) {
        if out.iter().any(|(p, _)| *p == path) {
            continue;
        }
        if !path.exists() {
            if named {
                att.notes
                    .push(format!("certificate {} does not exist", path.display()));
            }
            continue;
        }
        match russh::keys::load_openssh_certificate(&path) {
            Ok(cert) => {
                if let Some(note) = validity_note(&path, &cert) {
                    att.notes.push(note);
                }
                out.push((path, cert));
            }
            Err(e) => {
                return Err(ConnectError::Key {
                    path: path.display().to_string(),
                    reason: format!(
                        "not an OpenSSH certificate ({e}); give the KEY-cert.pub file that \
                         ssh-keygen -s wrote"
                    ),
                });
            }
        }
    }
    Ok(out)
}

/// A note when a certificate is not valid now (the server would refuse it without saying why).
fn validity_note(path: &Path, cert: &Certificate) -> Option<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if now < cert.valid_after() {
        Some(format!(
            "certificate {} is not valid before {}",
            path.display(),
            show_time(cert.valid_after())
        ))
    } else if now >= cert.valid_before() {
        Some(format!(
            "certificate {} expired at {}",
            path.display(),
            show_time(cert.valid_before())
        ))
    } else {
        None
    }
}

fn show_time(secs: u64) -> String {
    chrono::DateTime::from_timestamp(secs.min(i64::MAX as u64) as i64, 0)
        .map_or_else(|| secs.to_string(), |t| t.to_rfc3339())
}

/// Connects to the agent the options name; `None` (with a note saying why) when there is none.
async fn connect_agent(
    agent: &IdentityAgent,
    att: &mut Attempts,
) -> Option<AgentClient<tokio::net::UnixStream>> {
    let (candidates, what) = match agent {
        IdentityAgent::None => return None,
        IdentityAgent::Env(var) => match std::env::var_os(var) {
            Some(v) if !v.is_empty() => (
                sockets_at(Path::new(&v)),
                format!("{var}={}", Path::new(&v).display()),
            ),
            _ => {
                att.notes.push(format!(
                    "no ssh-agent: {var} is not set (start one with eval $(ssh-agent) and ssh-add)"
                ));
                return None;
            }
        },
        IdentityAgent::Path(p) => (sockets_at(p), format!("IdentityAgent {}", p.display())),
        IdentityAgent::PluginMount => {
            let found = sockets_at(&crate::agent_mount::path());
            if found.is_empty() {
                att.notes.push(format!(
                    "no ssh-agent: the plugin's sshagent mount ({PLUGIN_AGENT_MOUNT}) holds no \
                     socket; set it with docker plugin set <plugin> sshagent.source=/dir/of/agent \
                     (the agent socket, or the directory holding it)"
                ));
                return None;
            }
            (
                found,
                format!("the plugin's sshagent mount ({PLUGIN_AGENT_MOUNT})"),
            )
        }
    };
    if candidates.is_empty() {
        att.notes.push(format!(
            "no ssh-agent: {what} is not a socket or a directory holding one"
        ));
        return None;
    }
    let mut errors = Vec::new();
    for sock in &candidates {
        match AgentClient::connect_uds(sock).await {
            Ok(c) => return Some(c),
            Err(e) => errors.push(format!("{}: {e}", sock.display())),
        }
    }
    att.notes.push(format!(
        "cannot reach the ssh-agent of {what} ({}): is ssh-agent running?",
        errors.join(", ")
    ));
    None
}

/// A socket path itself, or the sockets directly inside a directory (newest first).
fn sockets_at(p: &Path) -> Vec<PathBuf> {
    let Ok(meta) = std::fs::metadata(p) else {
        return Vec::new();
    };
    if meta.file_type().is_socket() {
        return vec![p.to_path_buf()];
    }
    if !meta.is_dir() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(p) else {
        return Vec::new();
    };
    let mut socks: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let m = std::fs::metadata(e.path()).ok()?;
            m.file_type()
                .is_socket()
                .then(|| (m.modified().unwrap_or(std::time::UNIX_EPOCH), e.path()))
        })
        .collect();
    socks.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    socks.into_iter().map(|(_, p)| p).collect()
}

/// Records an agent-signed attempt; a signing failure is a note, not the end.
fn record<E: std::fmt::Display>(
    att: &mut Attempts,
    r: Result<AuthResult, E>,
    name: String,
) -> Result<bool, ConnectError> {
    match r {
        Ok(res) => Ok(record_result(att, res, name)),
        Err(e) => {
            att.notes
                .push(format!("the ssh-agent could not sign with {name}: {e}"));
            Ok(false)
        }
    }
}

fn record_result(att: &mut Attempts, r: AuthResult, name: String) -> bool {
    match r {
        AuthResult::Success => true,
        AuthResult::Failure {
            remaining_methods, ..
        } => {
            att.tried.push(name);
            att.methods = Some(remaining_methods);
            false
        }
    }
}

fn same_key(a: &PublicKey, b: &PublicKey) -> bool {
    a.key_data() == b.key_data()
}

fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn short_key_error(e: &russh::keys::Error) -> String {
    match e {
        russh::keys::Error::KeyIsEncrypted => {
            "the key is encrypted (give -o passphrase=..., or load it into an ssh-agent)".into()
        }
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn companion_file_names() {
        assert_eq!(pub_path(Path::new("/k/id")), PathBuf::from("/k/id.pub"));
        assert_eq!(
            cert_path(Path::new("/k/id")),
            PathBuf::from("/k/id-cert.pub")
        );
    }

    #[test]
    fn agent_sockets_in_a_directory_or_itself() {
        let dir = std::env::temp_dir().join(format!("dvs-socks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(sockets_at(&dir).is_empty(), "an empty directory holds none");
        std::fs::write(dir.join("not-a-socket"), "").unwrap();
        let old = std::os::unix::net::UnixListener::bind(dir.join("old.sock")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let new = std::os::unix::net::UnixListener::bind(dir.join("new.sock")).unwrap();
        assert_eq!(
            sockets_at(&dir),
            vec![dir.join("new.sock"), dir.join("old.sock")],
            "newest first, files that are no sockets left out"
        );
        assert_eq!(
            sockets_at(&dir.join("old.sock")),
            vec![dir.join("old.sock")]
        );
        assert!(sockets_at(&dir.join("not-a-socket")).is_empty());
        assert!(sockets_at(Path::new("/dev/null")).is_empty());
        assert!(sockets_at(&dir.join("missing")).is_empty());
        drop((old, new));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
