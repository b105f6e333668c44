//! The SSH connection: TCP connect, algorithm choice, host-key verification (via `hostkey`),
//! authentication, keepalives, and SFTP channels on top.
//!
//! One file because it is one handshake, in order: each step's failure becomes the one message
//! that names what to fix. The last quarter is unit tests.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use russh::client::{self, Handle};
use russh::keys::PublicKeyOrCertificate;
use russh::{MethodSet, cipher, compression};
use russh_sftp::client::RawSftpSession;

use crate::hostkey::{self, Verdict};
use crate::options::{KNOWN_CIPHERS, MountOptions};
use crate::secret::Secret;

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
    #[error("cannot read the password file {path}: {reason}")]
    PasswordFile { path: String, reason: String },
    #[error("the remote path '{path}' {reason}. Create it on the server or fix the path in sshcmd")]
    RemotePath { path: String, reason: String },
    #[error("SSH protocol error: {0}")]
    Protocol(String),
    /// A jump host (`proxyjump`) failed: names the hop, then what went wrong there.
    #[error("jump host {hop}: {detail}")]
    Jump { hop: String, detail: String },
}

/// Window and packet sizes: throughput over a long link is bounded by window / RTT, so the
/// window is large (16 MiB: ~1.6 GB/s at 10 ms). Packets: the most russh accepts without
/// logging an error; the server splits larger SFTP answers (128 KiB reads) across several.
const WINDOW: u32 = 16 * 1024 * 1024;
const MAX_PACKET: u32 = 65535;
/// Bytes taken from the socket per read: several packets.
const READ_BUFFER: usize = 256 * 1024;

/// The russh client handler: checks the host key and remembers what it saw.
pub(crate) struct Client {
    policy: hostkey::Policy,
    seen: Arc<Mutex<HostKeySeen>>,
}

#[derive(Default)]
struct HostKeySeen {
    fingerprint: Option<String>,
    refused: Option<String>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // A certificate (offered only where known_hosts trusts a CA, see `handshake`) is
        // pinned and shown by the key it certifies.
        let mut seen = self.seen.lock();
        seen.fingerprint = Some(hostkey::fingerprint(&key.public_key()));
        match hostkey::check(&self.policy, key) {
            Verdict::Known | Verdict::New => Ok(true),
            Verdict::Refused(msg) => {
                seen.refused = Some(msg);
                Ok(false)
            }
        }
    }
}

/// An authenticated SSH connection.
pub struct Connection {
    pub(crate) handle: Handle<Client>,
    fingerprint: String,
    /// The jump hosts this connection runs through, first hop first (see `jump`): kept open
    /// as long as it is.
    pub(crate) via: Vec<crate::jump::Hop>,
}

impl Connection {
    /// SHA256 fingerprint of the server's host key.
    pub fn host_key_fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// `(host:port, SHA256 fingerprint)` of each jump host's key, first hop first.
    pub fn jump_host_keys(&self) -> Vec<(String, String)> {
        self.via
            .iter()
            .map(|h| (h.host.endpoint(), h.conn.fingerprint.clone()))
            .collect()
    }

    /// True once the transport is gone (server closed it, keepalives unanswered, a jump host
    /// dropped, ...).
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed() || self.via.iter().any(|h| h.conn.is_closed())
    }

    /// Opens a channel running the `sftp` subsystem and completes the SFTP handshake.
    /// Also returns the extensions the server announced (name -> version).
    pub async fn open_sftp(
        &self,
        request_timeout: Duration,
    ) -> Result<(RawSftpSession, HashMap<String, String>), String> {
        let channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| format!("cannot open an SSH channel: {e}"))?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| format!("the server refused the sftp subsystem: {e}"))?;
        let cfg = russh_sftp::client::Config {
            request_timeout_secs: request_timeout.as_secs().max(1),
            ..Default::default()
        };
        let session = RawSftpSession::new_with_config(channel.into_stream(), cfg);
        let version = session.init().await.map_err(|e| {
            format!("the SFTP handshake failed: {e}. Is the sftp subsystem enabled on the server?")
        })?;
        Ok((session, version.extensions))
    }

    pub async fn disconnect(&self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "unmounted", "en")
            .await;
        for hop in self.via.iter().rev() {
            Box::pin(hop.conn.disconnect()).await;
        }
    }
}

/// Connects and authenticates, within `connect_timeout` (per hop, through jump hosts). The
/// host key must pass the policy built from the options (`hostkey`, known_hosts,
/// `StrictHostKeyChecking`).
pub async fn connect(opts: &MountOptions) -> Result<Connection, ConnectError> {
    if !opts.proxy_jump.is_empty() {
        return crate::jump::connect(opts).await;
    }
    within(opts.connect_timeout, async {
        let socket = tcp_connect(opts).await?;
        handshake(socket, opts, false).await
    })
    .await
}

/// `step` bounded by `timeout`.
pub(crate) async fn within<T>(
    timeout: Duration,
    step: impl Future<Output = Result<T, ConnectError>>,
) -> Result<T, ConnectError> {
    match tokio::time::timeout(timeout, step).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout(timeout)),
    }
}

/// `host:port`, IPv6 in brackets, for messages.
pub(crate) fn display_addr(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The TCP connection to `opts.remote.host`:`opts.port`.
pub(crate) async fn tcp_connect(
    opts: &MountOptions,
) -> Result<tokio::net::TcpStream, ConnectError> {
    let host = opts.remote.host.clone();
    let addr = display_addr(&host, opts.port);
    let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), opts.port))
        .await
        .map_err(|e| ConnectError::Resolve {
            host: host.clone(),
            reason: e.to_string(),
        })?
        .collect();
    let mut last_err = None;
    let mut socket = None;
    for a in addrs {
        match tokio::net::TcpStream::connect(a).await {
            Ok(s) => {
                socket = Some(s);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let socket = socket.ok_or_else(|| ConnectError::Tcp {
        addr: addr.clone(),
        reason: last_err.map_or("no address found".into(), |e| e.to_string()),
    })?;
    let _ = socket.set_nodelay(true);
    Ok(socket)
}

/// The SSH handshake and authentication over `socket` (a TCP connection, or a jump host's
/// forwarded channel), as `opts.remote`'s user on `opts.remote.host`:`opts.port`.
pub(crate) async fn handshake<S>(
    socket: S,
    opts: &MountOptions,
    jump_host: bool,
) -> Result<Connection, ConnectError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let host = opts.remote.host.clone();
    let addr = display_addr(&host, opts.port);
    let policy = hostkey::Policy {
        host: host.clone(),
        port: opts.port,
        strict: opts.strict_host_key_checking,
        pinned: opts.hostkey.clone(),
        known_hosts: opts
            .known_hosts_file
            .clone()
            .or_else(hostkey::default_known_hosts),
        learn: opts.learn_host_keys,
        jump_host,
    };
    let mut config = client_config(opts);
    if hostkey::trusts_a_certificate_authority(&policy) {
        config.preferred.host_key_certificates = Cow::Borrowed(hostkey::CERTIFICATE_ALGORITHMS);
    }
    let seen = Arc::new(Mutex::new(HostKeySeen::default()));
    let handler = Client {
        policy,
        seen: seen.clone(),
    };
    let config = Arc::new(config);
    // russh reads each packet with two reads (its length, then the rest); a buffer turns the
    // 16-byte ones into copies and takes many packets per system call. Writes pass through.
    let socket = tokio::io::BufReader::with_capacity(READ_BUFFER, socket);
    let mut handle = match client::connect_stream(config, socket, handler).await {
        Ok(h) => h,
        Err(e) => {
            if let Some(msg) = seen.lock().refused.take() {
                return Err(ConnectError::HostKey(msg));
            }
            return Err(ConnectError::Protocol(format!(
                "{e} (while talking to {addr}; is it an SSH server?)"
            )));
        }
    };
    let fingerprint = seen.lock().fingerprint.clone().unwrap_or_default();

    let user = opts.remote.login(&default_user());
    authenticate(&mut handle, opts, &user).await?;
    Ok(Connection {
        handle,
        fingerprint,
        via: Vec::new(),
    })
}

fn client_config(opts: &MountOptions) -> client::Config {
    let ciphers: Vec<cipher::Name> = if opts.ciphers.is_empty() {
        KNOWN_CIPHERS.to_vec()
    } else {
        opts.ciphers.iter().map(String::as_str).collect()
    }
    .into_iter()
    .filter_map(|c| cipher::Name::try_from(c).ok())
    .collect();
    let compression: Vec<compression::Name> = if opts.compression {
        vec![
            compression::ZLIB_LEGACY,
            compression::ZLIB,
            compression::NONE,
        ]
    } else {
        vec![compression::NONE]
    };
    let keepalive = (!opts.server_alive_interval.is_zero()).then_some(opts.server_alive_interval);
    client::Config {
        window_size: WINDOW,
        maximum_packet_size: MAX_PACKET,
        keepalive_interval: keepalive,
        keepalive_max: opts.server_alive_count_max as usize,
        nodelay: true,
        preferred: russh::Preferred {
            cipher: Cow::Owned(ciphers),
            compression: Cow::Owned(compression),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The local login name, as ssh uses when sshcmd has no `user@`.
pub(crate) fn default_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| "root".to_string())
}

/// Keys first (explicit ones, or ssh's default key files), then the password, like ssh.
async fn authenticate(
    handle: &mut Handle<Client>,
    opts: &MountOptions,
    user: &str,
) -> Result<(), ConnectError> {
    let auth_err = |detail: String| ConnectError::Auth {
        user: user.to_string(),
        host: opts.remote.host.clone(),
        detail,
    };
    let password = match (&opts.password, &opts.password_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(path)) => Some(read_password_file(path)?),
        (None, None) => None,
    };

    // Agent, certificates and key files: ssh_auth.rs.
    let keys = match crate::ssh_auth::try_keys(handle, opts, user).await? {
        crate::ssh_auth::KeyOutcome::Accepted => return Ok(()),
        crate::ssh_auth::KeyOutcome::NotAccepted(a) => a,
    };
    let notes = keys.notes_suffix();
    let tried = keys.tried;
    let mut methods = keys.methods;

    if let Some(pw) = &password {
        let res = handle
            .authenticate_password(user, pw.expose())
            .await
            .map_err(|e| ConnectError::Protocol(e.to_string()))?;
        if res.success() {
            return Ok(());
        }
        // Servers with PAM often only offer keyboard-interactive for passwords.
        if keyboard_interactive(handle, user, pw).await? {
            return Ok(());
        }
        let what = if tried.is_empty() {
            String::new()
        } else {
            format!(" (and the key(s) {} were not accepted)", tried.join(", "))
        };
        return Err(auth_err(format!(
            "the server rejected the password{what}. Check the password option and the user name"
        )));
    }

    if tried.is_empty() {
        if methods.is_none() {
            // Ask what the server accepts so the message can be specific.
            if let Ok(russh::client::AuthResult::Failure {
                remaining_methods, ..
            }) = handle.authenticate_none(user).await
            {
                methods = Some(remaining_methods);
            } else if handle.is_closed() {
                return Err(auth_err("the server closed the connection".into()));
            } else {
                return Ok(()); // "none" succeeded: the server needs no credentials.
            }
        }
        return Err(auth_err(format!(
            "no password or key given (the server accepts: {}). Add -o password=..., \
             -o password_file=... or -o IdentityFile=/path/to/key{notes}",
            describe(methods)
        )));
    }
    Err(auth_err(format!(
        "the server rejected the key(s) {} (it accepts: {}). Add the public key to the user's \
         authorized_keys, or give -o password=...{notes}",
        tried.join(", "),
        describe(methods)
    )))
}

/// Keyboard-interactive with the password: the server may ask anything (an OTP, a verification
/// code, a new password), so a round is answered only when every prompt in it is a password
/// prompt (see `is_password_prompt`), and with the password at most once: a second round of
/// password prompts means it was refused. Anything else gives up this method (Ok(false)). A
/// round with no prompts (OpenSSH's PAM sends one before success) is answered with no answers.
async fn keyboard_interactive(
    handle: &mut Handle<Client>,
    user: &str,
    pw: &Secret,
) -> Result<bool, ConnectError> {
    use russh::client::KeyboardInteractiveAuthResponse as R;
    let proto = |e: russh::Error| ConnectError::Protocol(e.to_string());
    let mut res = handle
        .authenticate_keyboard_interactive_start(user, None::<String>)
        .await
        .map_err(proto)?;
    let mut answered = false;
    for _ in 0..4 {
        let answers = match res {
            R::Success => return Ok(true),
            R::Failure { .. } => return Ok(false),
            R::InfoRequest { prompts, .. } => {
                if prompts.is_empty() {
                    Vec::new()
                } else if !answered
                    && prompts
                        .iter()
                        .all(|p| is_password_prompt(&p.prompt, p.echo))
                {
                    answered = true;
                    prompts.iter().map(|_| pw.expose().to_string()).collect()
                } else {
                    tracing::debug!(
                        "keyboard-interactive asked for more than the password once; not answered"
                    );
                    return Ok(false);
                }
            }
        };
        res = handle
            .authenticate_keyboard_interactive_respond(answers)
            .await
            .map_err(proto)?;
    }
    Ok(false)
}

/// Words that make a prompt mentioning "password" ask for something else: a password change
/// (`New password:`, `Retype ...`), which must never receive the current one, or a second
/// factor (`One-time password`, `OTP`, a token or code).
const NOT_THE_PASSWORD: &[&str] = &[
    "new",
    "retype",
    "repeat",
    "again",
    "confirm",
    "one",
    "time",
    "otp",
    "token",
    "code",
    "verification",
    "pin",
];

/// A prompt the password may answer: it asks for a password or passphrase, hides the answer
/// (a password is never echoed), and has none of the `NOT_THE_PASSWORD` words outside the
/// `user@host` or host name it may show (`(me@new.example.com) Password:` is one).
fn is_password_prompt(prompt: &str, echo: bool) -> bool {
    let p = prompt.to_lowercase();
    let asks = p.contains("password") || p.contains("passphrase");
    let other = p
        .split_whitespace()
        .filter(|token| !token.contains(['@', '.']))
        .flat_map(|token| token.split(|c: char| !c.is_alphanumeric()))
        .any(|word| NOT_THE_PASSWORD.contains(&word));
    !echo && asks && !other
}

fn describe(methods: Option<MethodSet>) -> String {
    match methods {
        Some(m) => {
            let names: Vec<String> = m.iter().map(|x| String::from(<&str>::from(x))).collect();
            if names.is_empty() {
                "nothing".into()
            } else {
                names.join(", ")
            }
        }
        None => "unknown".into(),
    }
}

pub(crate) fn key_error(
    path: &Path,
    e: &russh::keys::Error,
    have_passphrase: bool,
) -> ConnectError {
    let reason = match e {
        russh::keys::Error::KeyIsEncrypted => {
            "the key is encrypted: give its passphrase with -o passphrase=...".to_string()
        }
        russh::keys::Error::IO(io) if io.kind() == std::io::ErrorKind::NotFound => {
            "no such file (in the plugin, keys live in the sshkey mount: \
             docker plugin set vendor/sshfs sshkey.source=/path/to/.ssh)"
                .to_string()
        }
        _ if have_passphrase => format!("{e} (is the passphrase right?)"),
        _ => e.to_string(),
    };
    ConnectError::Key {
        path: path.display().to_string(),
        reason,
    }
}

fn read_password_file(path: &Path) -> Result<Secret, ConnectError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConnectError::PasswordFile {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(ConnectError::PasswordFile {
            path: path.display().to_string(),
            reason: "the file is empty; put the password on its first line".into(),
        });
    }
    Ok(Secret::new(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_password_prompts_get_the_password() {
        for p in [
            "Password: ",
            "password:",
            "Password for tester@files: ",
            "(tester@host) Password: ",
            "(me@new.code.example) Password: ",
            "Password for pin.example.com: ",
            "Enter passphrase for key: ",
            "PASSWORD",
        ] {
            assert!(is_password_prompt(p, false), "{p}");
            assert!(!is_password_prompt(p, true), "echoed: {p}");
        }
        for p in [
            "Verification code: ",
            "One-time password (OATH) for `tester': x",
            "Enter PASSCODE: ",
            "OTP: ",
            "New password: ",
            "Retype new password: ",
            "Confirm password: ",
            "Password again: ",
            "Password + OTP code: ",
            "",
        ] {
            assert!(!is_password_prompt(p, false), "{p}");
        }
    }

    /// An SSH server (russh's) whose keyboard-interactive asks the given rounds of prompts and
    /// records every answer it gets; it accepts when the last round was answered with
    /// `password` alone. OpenSSH offers keyboard-interactive only through PAM, which the test
    /// servers do not use, so this is how the client is tested against real prompts.
    struct Prompter {
        rounds: Vec<Vec<(&'static str, bool)>>,
        password: &'static str,
        answers: Arc<Mutex<Vec<Vec<String>>>>,
    }

    impl russh::server::Handler for Prompter {
        type Error = russh::Error;

        async fn auth_keyboard_interactive<'a>(
            &'a mut self,
            _user: &str,
            _submethods: &str,
            response: Option<russh::server::Response<'a>>,
        ) -> Result<russh::server::Auth, Self::Error> {
            use russh::server::Auth;
            let mut answers = self.answers.lock();
            if let Some(r) = response {
                answers.push(
                    r.map(|b| String::from_utf8_lossy(&b).into_owned())
                        .collect(),
                );
            }
            if let Some(round) = self.rounds.get(answers.len()) {
                let prompts: Vec<_> = round
                    .iter()
                    .map(|&(p, echo)| (Cow::Borrowed(p), echo))
                    .collect();
                return Ok(Auth::Partial {
                    name: Cow::Borrowed(""),
                    instructions: Cow::Borrowed(""),
                    prompts: Cow::Owned(prompts),
                });
            }
            let done = answers.last().is_some_and(|a| a == &[self.password]);
            Ok(if done { Auth::Accept } else { Auth::reject() })
        }
    }

    /// Connects with `password` to a `Prompter` asking `rounds`; returns whether the login
    /// worked and every answer the server received.
    async fn login_through(rounds: Vec<Vec<(&'static str, bool)>>) -> (bool, Vec<Vec<String>>) {
        const PASSWORD: &str = "kbd-Secret-4711";
        static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("dvs-kbd-{}-{run}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("host_key");
        let made = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(made.success(), "ssh-keygen");
        let config = Arc::new(russh::server::Config {
            keys: vec![russh::keys::load_secret_key(&key, None).unwrap()],
            auth_rejection_time: Duration::from_millis(1),
            auth_rejection_time_initial: Some(Duration::ZERO),
            ..Default::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let answers = Arc::new(Mutex::new(Vec::new()));
        let handler = Prompter {
            rounds,
            password: PASSWORD,
            answers: answers.clone(),
        };
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            if let Ok(session) = russh::server::run_stream(config, socket, handler).await {
                let _ = session.await;
            }
        });
        let raw: crate::options::RawOptions = [
            ("sshcmd", "tester@127.0.0.1:/"),
            ("password", PASSWORD),
            ("StrictHostKeyChecking", "no"),
            ("UserKnownHostsFile", "/dev/null"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), Some(v.to_string())))
        .chain([("port".to_string(), Some(port.to_string()))])
        .collect();
        // Keys of the machine's user (ssh's default files) may be tried first: the server
        // refuses every key, and the plain password method, by default.
        let opts = crate::options::parse(&raw, None, crate::options::Context::Plugin)
            .unwrap()
            .options;
        let result = connect(&opts).await;
        let ok = match &result {
            Ok(_) => true,
            Err(ConnectError::Auth { .. }) => false,
            Err(e) => panic!("unexpected failure: {e}"),
        };
        drop(result);
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
        let got = answers.lock().clone();
        (ok, got)
    }

    #[tokio::test]
    async fn keyboard_interactive_gives_the_password_to_password_prompts_only() {
        const PW: &str = "kbd-Secret-4711";
        let (ok, got) = login_through(vec![vec![("Password: ", false)]]).await;
        assert!(ok, "a password prompt is answered");
        assert_eq!(got, [vec![PW.to_string()]]);

        // OpenSSH's PAM sends a round without prompts: answered with no answers.
        let (ok, got) = login_through(vec![vec![], vec![("(tester@h) Password: ", false)]]).await;
        assert!(ok, "an empty round, then the password");
        assert_eq!(got, [vec![], vec![PW.to_string()]]);

        // Anything else is never given the password: the method is given up.
        let password_then_otp = vec![
            vec![("Password: ", false)],
            vec![("One-time password: ", false)],
        ];
        let cases = [
            (vec![vec![("Verification code: ", false)]], vec![]),
            (vec![vec![("Password: ", false), ("OTP: ", false)]], vec![]),
            (vec![vec![("Password: ", true)]], vec![]),
            (password_then_otp, vec![vec![PW.to_string()]]),
        ];
        for (rounds, answered) in cases {
            let shown = format!("{rounds:?}");
            let (ok, got) = login_through(rounds).await;
            assert!(!ok, "{shown}");
            assert_eq!(got, answered, "{shown}");
        }
    }
}
