//! Mount options: one parser for `docker volume create -o ...` and `docker-volume-sshfs mount -o ...`.
//!
//! The names follow vieux/docker-volume-sshfs and sshfs(1) so existing compose files keep working.
//! Every option is either honoured or accepted as a documented no-op; anything else is an error
//! that lists what is supported.
//!
//! One file because the table of names, the parser and each value's range are one contract:
//! an option is added in all three or in none. The last fifth is unit tests.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::secret::Secret;

/// Where the files live: `[user@]host[:path]`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Remote {
    /// Login name; `None` means the local user's name (as ssh does) or `root` in the plugin.
    pub user: Option<String>,
    /// Host name or address, IPv6 without brackets.
    pub host: String,
    /// Remote directory. Empty means the login's home directory; a relative path is relative to it.
    pub path: String,
}

impl Remote {
    /// Parses `user@host:/path`, `host:path`, `user@host`, `[::1]:/path`, `user@[fe80::1]`.
    /// The user part may itself contain `@` (`me@corp.com@host`): the last `@` before the host wins.
    pub fn parse(s: &str) -> Result<Remote, OptionError> {
        let bad = |why: &str| OptionError::BadRemote {
            given: s.to_string(),
            why: why.to_string(),
        };
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if s.contains('\0') || s.contains('\n') {
            return Err(bad("it contains a NUL or newline character"));
        }
        // The host starts after the last '@' that precedes any '[' or ':'.
        let host_area_end = s.find(['[', ':']).unwrap_or(s.len());
        let (user, rest) = match s[..host_area_end].rfind('@') {
            Some(at) => (Some(&s[..at]), &s[at + 1..]),
            None => (None, s),
        };
        if let Some(u) = user
            && u.is_empty()
        {
            return Err(bad("the user name before '@' is empty"));
        }
        let (host, path) = if let Some(after) = rest.strip_prefix('[') {
            let close = after
                .find(']')
                .ok_or_else(|| bad("an IPv6 address opened with '[' has no closing ']'"))?;
            let host = &after[..close];
            let tail = &after[close + 1..];
            let path = match tail.strip_prefix(':') {
                Some(p) => p,
                None if tail.is_empty() => "",
                None => return Err(bad("expected ':' after the closing ']'")),
            };
            (host, path)
        } else {
            match rest.find(':') {
                Some(colon) => (&rest[..colon], &rest[colon + 1..]),
                None => (rest, ""),
            }
        };
        if host.is_empty() {
            return Err(bad("the host name is empty"));
        }
        if host
            .chars()
            .any(|c| c.is_whitespace() || c == '/' || c == '@')
        {
            return Err(bad("the host name contains a space, '/' or '@'"));
        }
        Ok(Remote {
            user: user.map(str::to_string),
            host: host.to_string(),
            path: path.to_string(),
        })
    }

    /// The login name used to connect.
    pub fn login(&self, default_user: &str) -> String {
        self.user
            .clone()
            .unwrap_or_else(|| default_user.to_string())
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        write!(f, ":{}", self.path)
    }
}

/// `StrictHostKeyChecking`, as in ssh_config(5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StrictHostKeyChecking {
    /// Only keys already known (pinned or in known_hosts) are accepted.
    Yes,
    /// The first key seen is pinned; a different key later is refused. The default.
    AcceptNew,
    /// Any key is accepted (logged). For throwaway test servers only.
    No,
}

/// `ssh_config` / `F`: which ssh_config(5) file completes the options (see `ssh_config`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SshConfigFile {
    /// `~/.ssh/config` if it exists (in the plugin: the sshkey mount's `config`).
    #[default]
    Default,
    /// `none`: no file.
    None,
    /// This file (a relative name is taken in `~/.ssh`).
    Path(PathBuf),
}

/// `IdentityAgent`: where the ssh-agent listens.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum IdentityAgent {
    /// `none`: no agent.
    None,
    /// The socket named by this environment variable (`SSH_AUTH_SOCK`, the command's default).
    Env(String),
    /// A socket, or a directory holding one.
    Path(PathBuf),
    /// The plugin's `sshagent` mount (the plugin's default): a socket or a directory holding one.
    PluginMount,
}

/// Everything needed to connect and mount, after validation.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MountOptions {
    pub remote: Remote,
    pub port: u16,
    pub password: Option<Secret>,
    /// A file holding the password (first line), e.g. under the plugin's sshkey mount.
    pub password_file: Option<PathBuf>,
    pub identity_files: Vec<PathBuf>,
    pub passphrase: Option<Secret>,
    pub allow_other: bool,
    pub default_permissions: bool,
    /// Present every file as owned by this uid/gid (sshfs's `uid=`/`gid=`).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Bits cleared from every presented mode (sshfs's `umask=`).
    pub umask: Option<u32>,
    pub read_only: bool,
    /// Ciphers in order of preference; empty means ours (fastest first).
    pub ciphers: Vec<String>,
    pub compression: bool,
    pub server_alive_interval: Duration,
    pub server_alive_count_max: u32,
    pub strict_host_key_checking: StrictHostKeyChecking,
    /// An explicit `SHA256:...` fingerprint the server must present.
    pub hostkey: Option<String>,
    pub known_hosts_file: Option<PathBuf>,
    /// `follow_symlinks`: present symlinks as what they point to.
    pub follow_symlinks: bool,
    /// Attribute/entry/directory caches on (`cache=yes`, the default) or off.
    pub cache: bool,
    /// How long cached metadata is trusted: 20 s by default, as sshfs, so the attributes a
    /// listing brings are still good when tools stat or open each entry right after.
    pub cache_timeout: Duration,
    /// How long an operation waits for a lost connection to come back before it fails with EIO.
    pub reconnect_timeout: Duration,
    pub connect_timeout: Duration,
    /// Copy-up and `chown` of files the login may not give away: fail (`strict_chown`) or ignore.
    pub strict_chown: bool,
    /// Record newly accepted host keys in `known_hosts_file` (the `mount` command does, like
    /// ssh; the plugin pins them in its own state instead of writing to the user's files).
    #[serde(default)]
    pub learn_host_keys: bool,
    /// The ssh_config file to read (`ssh_config=` / `F=`).
    #[serde(default)]
    pub ssh_config: SshConfigFile,
    /// User certificates (`CertificateFile`, repeatable); `KEY-cert.pub` beside a key is found
    /// without it.
    #[serde(default)]
    pub certificate_files: Vec<PathBuf>,
    /// `IdentitiesOnly`: offer only the IdentityFile/CertificateFile keys, agent or not.
    #[serde(default)]
    pub identities_only: bool,
    /// Where the ssh-agent is.
    #[serde(default = "default_agent")]
    pub identity_agent: IdentityAgent,
    /// IdentityFile lines of the ssh_config file: unlike the option, a missing file is skipped
    /// (as ssh does).
    #[serde(default)]
    pub config_identity_files: Vec<PathBuf>,
    /// `ProxyJump`: the jump hosts to connect through, first hop first (see `jump`).
    #[serde(default)]
    pub proxy_jump: Vec<crate::jump::JumpHost>,
    /// `writeback=yes`: changes are journaled locally and replayed to the server in the
    /// background (`crate::writeback`). Off by default.
    #[serde(default)]
    pub writeback: Option<WriteBack>,
}

/// The write-back settings of a mount.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WriteBack {
    /// `writeback_max`: bytes of changes the journal holds before writes wait.
    pub max_bytes: u64,
    /// Where the journal lives: the plugin puts it under its state directory (one per volume);
    /// the `mount` command takes `writeback_dir=PATH`.
    pub dir: Option<PathBuf>,
}

fn default_agent() -> IdentityAgent {
    IdentityAgent::PluginMount
}

/// Defaults that differ between the plugin and the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    /// `docker volume create -o ...`: `sshcmd` is an option, `allow_other` is on by default.
    Plugin,
    /// `docker-volume-sshfs mount`: the remote is a positional argument.
    Command,
}

/// What went wrong with the options. Each message says what to change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("missing option sshcmd: give the remote directory as -o sshcmd=user@host:/path")]
    MissingSshcmd,
    #[error("invalid remote '{given}': {why}; expected user@host:/path (IPv6 as user@[::1]:/path)")]
    BadRemote { given: String, why: String },
    #[error("invalid value '{value}' for option {name}: {expected}")]
    BadValue {
        name: String,
        value: String,
        expected: String,
    },
    #[error("option {name} needs a value: {expected}")]
    MissingValue { name: String, expected: String },
    #[error("unknown option '{name}'. Supported options: {}", supported().collect::<Vec<_>>().join(", "))]
    Unknown { name: String },
    #[error("options {0} and {1} cannot be used together")]
    Conflict(String, String),
    #[error("option {0} is for write-back mode only: add -o writeback=yes (or remove {0})")]
    NeedsWriteback(String),
    #[error("option {name} cannot be used {place}: {why}")]
    NotHere {
        name: String,
        place: &'static str,
        why: &'static str,
    },
}

/// Options this implementation acts on.
const HONOURED: &[&str] = &[
    "sshcmd",
    "port",
    "password",
    "password_file",
    "password_stdin",
    "IdentityFile",
    "passphrase",
    "allow_other",
    "default_permissions",
    "uid",
    "gid",
    "umask",
    "ro",
    "rw",
    "Ciphers",
    "Compression",
    "ServerAliveInterval",
    "ServerAliveCountMax",
    "StrictHostKeyChecking",
    "UserKnownHostsFile",
    "hostkey",
    "ProxyJump",
    "ConnectTimeout",
    "reconnect_timeout",
    "follow_symlinks",
    "cache",
    "cache_timeout",
    "strict_chown",
    "writeback",
    "writeback_max",
    "writeback_dir",
    "idmap",
    "ssh_config",
    "F",
    "CertificateFile",
    "IdentityAgent",
    "IdentitiesOnly",
    "ssh_command",
    "sftp_server",
];

/// Options that sshfs users carry over and that need nothing from us: this implementation
/// already behaves the way the option asks (or the option only tuned the `ssh` binary we do not use).
const ACCEPTED_NO_OPS: &[&str] = &[
    "reconnect",          // we always reconnect
    "workaround",         // rename overwrites via posix-rename; no server quirks to work around
    "transform_symlinks", // symlink targets are passed through unchanged
    "delay_connect",      // the plugin connects on Mount anyway
    "no_check_root",
    "nonempty",
    "big_writes", // always on
    "large_read",
    "kernel_cache",
    "auto_cache",
    "direct_io",
    "noatime",
    "atime",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "debug", // use DEBUG=1 / RUST_LOG instead
    "sshfs_debug",
    "LogLevel",
    "BatchMode", // we never prompt
    "PasswordAuthentication",
    "PreferredAuthentications",
    "allow_root",
];

/// Every option name we accept, for error messages and the README.
pub fn supported() -> impl Iterator<Item = &'static str> {
    HONOURED.iter().chain(ACCEPTED_NO_OPS).copied()
}

/// One `name[=value]` item as given by the user; `value` is `None` for a bare flag.
pub type RawOptions = Vec<(String, Option<String>)>;

/// Splits `-o a=b,c,d=e` into items. A comma inside a value can be escaped as `\,` (sshfs style).
pub fn split_cli_options(s: &str) -> RawOptions {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&',') => {
                cur.push(',');
                chars.next();
            }
            ',' => {
                push_item(&mut out, &cur);
                cur.clear();
            }
            _ => cur.push(c),
        }
    }
    push_item(&mut out, &cur);
    out
}

fn push_item(out: &mut RawOptions, item: &str) {
    if item.is_empty() {
        return;
    }
    match item.split_once('=') {
        Some((k, v)) => out.push((k.to_string(), Some(v.to_string()))),
        None => out.push((item.to_string(), None)),
    }
}

/// Docker sends `-o allow_other` as `{"allow_other": ""}`: an empty value means a bare flag.
pub fn from_docker_opts(opts: &BTreeMap<String, String>) -> RawOptions {
    opts.iter()
        .map(|(k, v)| (k.clone(), (!v.is_empty()).then(|| v.clone())))
        .collect()
}

/// The canonical name of an option, matched case-insensitively like ssh_config(5) keywords.
fn canonical(name: &str) -> Option<&'static str> {
    supported().find(|s| s.eq_ignore_ascii_case(name))
}

/// Validates options. `remote` is the positional remote of the command line (the plugin passes
/// `None` and takes `sshcmd` from the options). Reading `password_stdin` is the caller's job:
/// it is reported through `wants_password_stdin` so the parser stays pure.
pub fn parse(
    raw: &RawOptions,
    remote: Option<&str>,
    ctx: Context,
) -> Result<ParsedOptions, OptionError> {
    let mut o = MountOptions {
        remote: Remote {
            user: None,
            host: String::new(),
            path: String::new(),
        },
        port: 22,
        password: None,
        password_file: None,
        identity_files: Vec::new(),
        passphrase: None,
        allow_other: ctx == Context::Plugin,
        default_permissions: false,
        uid: None,
        gid: None,
        umask: None,
        read_only: false,
        ciphers: Vec::new(),
        compression: false,
        server_alive_interval: Duration::from_secs(15),
        server_alive_count_max: 3,
        strict_host_key_checking: StrictHostKeyChecking::AcceptNew,
        hostkey: None,
        known_hosts_file: None,
        follow_symlinks: false,
        cache: true,
        cache_timeout: Duration::from_secs(20),
        reconnect_timeout: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(15),
        strict_chown: false,
        learn_host_keys: false,
        proxy_jump: Vec::new(),
        writeback: None,
        ssh_config: SshConfigFile::Default,
        certificate_files: Vec::new(),
        identities_only: false,
        identity_agent: match ctx {
            Context::Plugin => IdentityAgent::PluginMount,
            Context::Command => IdentityAgent::Env("SSH_AUTH_SOCK".into()),
        },
        config_identity_files: Vec::new(),
    };
    let mut given = std::collections::BTreeSet::new();
    let mut sshcmd: Option<String> = remote.map(str::to_string);
    let mut password_stdin = false;
    // Write-back is settled after the loop: its options may come in any order.
    let mut writeback = false;
    let mut writeback_max: Option<u64> = None;
    let mut writeback_dir: Option<PathBuf> = None;

    for (name, value) in raw {
        let Some(key) = canonical(name.trim()) else {
            return Err(OptionError::Unknown { name: name.clone() });
        };
        let v = value.as_deref();
        // `F` is ssh's own flag for the same thing.
        let key = if key == "F" { "ssh_config" } else { key };
        given.insert(key);
        match key {
            "sshcmd" => {
                if ctx == Context::Command {
                    return Err(OptionError::Conflict(
                        "sshcmd".into(),
                        "the positional user@host:/path argument".into(),
                    ));
                }
                sshcmd = Some(need(key, v, "user@host:/path")?.to_string());
            }
            "port" => o.port = parse_port(need(key, v, "a TCP port from 1 to 65535")?)?,
            "password" => o.password = Some(Secret::new(need(key, v, "the SSH password")?)),
            "password_file" => {
                o.password_file = Some(PathBuf::from(need(key, v, "a path to a file")?))
            }
            "password_stdin" => password_stdin = flag(key, v)?,
            "IdentityFile" => {
                o.identity_files
                    .push(PathBuf::from(need(key, v, "a path to a private key")?))
            }
            "passphrase" => {
                o.passphrase = Some(Secret::new(need(key, v, "the private key's passphrase")?))
            }
            "allow_other" => o.allow_other = flag(key, v)?,
            "default_permissions" => o.default_permissions = flag(key, v)?,
            "uid" => o.uid = Some(ID.parse(key, need(key, v, ID.expected)?)? as u32),
            "gid" => o.gid = Some(ID.parse(key, need(key, v, ID.expected)?)? as u32),
            "umask" => o.umask = Some(parse_umask(need(key, v, "an octal mask like 022")?)?),
            "ro" => o.read_only = flag(key, v)?,
            "rw" => o.read_only = !flag(key, v)?,
            "Ciphers" => {
                o.ciphers = parse_ciphers(need(key, v, "a comma-separated cipher list")?)?;
            }
            "Compression" => o.compression = yes_no(key, v)?,
            "ServerAliveInterval" => {
                o.server_alive_interval = KEEPALIVE.seconds(key, v)?;
            }
            "ServerAliveCountMax" => {
                let count = KEEPALIVE_COUNT.parse(key, need(key, v, KEEPALIVE_COUNT.expected)?)?;
                o.server_alive_count_max = count as u32;
            }
            "StrictHostKeyChecking" => {
                let val = need(key, v, "yes, accept-new or no")?;
                o.strict_host_key_checking = match val.to_ascii_lowercase().as_str() {
                    "yes" | "true" => StrictHostKeyChecking::Yes,
                    "accept-new" => StrictHostKeyChecking::AcceptNew,
                    "no" | "off" | "false" => StrictHostKeyChecking::No,
                    _ => return Err(bad_value(key, val, "yes, accept-new or no")),
                }
            }
            "UserKnownHostsFile" => {
                let val = need(key, v, "a path to a known_hosts file")?;
                // `/dev/null` is how people turned checking off with vieux/sshfs; honour the intent
                // of "no file" without disabling verification of the pinned key.
                o.known_hosts_file = (val != "/dev/null").then(|| PathBuf::from(val));
            }
            "hostkey" => {
                let val = need(key, v, "a fingerprint like SHA256:abc... (ssh-keygen -lf)")?;
                if !val.starts_with("SHA256:") || val.len() < 12 {
                    return Err(bad_value(
                        key,
                        val,
                        "a SHA256 fingerprint like SHA256:abc... as printed by ssh-keygen -lf",
                    ));
                }
                o.hostkey = Some(val.to_string());
            }
            "ProxyJump" => {
                let val = need(key, v, crate::jump::EXPECTED)?;
                o.proxy_jump = crate::jump::parse_list(val).map_err(|why| {
                    bad_value(
                        key,
                        val,
                        &format!("{why}; expected {}", crate::jump::EXPECTED),
                    )
                })?;
            }
            "ConnectTimeout" => o.connect_timeout = TIMEOUT.seconds(key, v)?,
            "reconnect_timeout" => o.reconnect_timeout = TIMEOUT.seconds(key, v)?,
            "follow_symlinks" => o.follow_symlinks = flag(key, v)?,
            "cache" => o.cache = yes_no(key, v)?,
            "cache_timeout" => o.cache_timeout = CACHE_TIMEOUT.seconds(key, v)?,
            "strict_chown" => o.strict_chown = flag(key, v)?,
            "writeback" => writeback = flag(key, v)?,
            "writeback_max" => {
                writeback_max = Some(parse_size(
                    key,
                    need(key, v, WRITEBACK_MAX_EXPECTED)?,
                    WRITEBACK_MAX_MIN,
                    WRITEBACK_MAX_EXPECTED,
                )?)
            }
            "writeback_dir" => {
                if ctx == Context::Plugin {
                    return Err(OptionError::NotHere {
                        name: key.into(),
                        place: "with the plugin",
                        why: "the plugin keeps each volume's write-back journal under its state \
                              directory (state.source, in writeback/); remove the option",
                    });
                }
                writeback_dir = Some(PathBuf::from(need(
                    key,
                    v,
                    "a local directory for the write-back journal",
                )?));
            }
            "idmap" => {
                // sshfs's idmap=user shows the login's files as the local user's; uid=/gid= does
                // the same here, and "none" is the default.
                let val = need(key, v, "none or user")?;
                if !matches!(val, "none" | "user") {
                    return Err(bad_value(
                        key,
                        val,
                        "none or user (use uid=/gid= for a fixed owner)",
                    ));
                }
            }
            "ssh_config" => {
                let val = need(key, v, "a path to an ssh_config file, or none")?;
                o.ssh_config = if val.eq_ignore_ascii_case("none") {
                    SshConfigFile::None
                } else {
                    SshConfigFile::Path(PathBuf::from(val))
                };
            }
            "CertificateFile" => o.certificate_files.push(PathBuf::from(need(
                key,
                v,
                "a path to a certificate (KEY-cert.pub)",
            )?)),
            "IdentitiesOnly" => o.identities_only = flag(key, v)?,
            "IdentityAgent" => {
                let val = need(key, v, "a socket path, SSH_AUTH_SOCK or none")?;
                o.identity_agent = if val.eq_ignore_ascii_case("none") {
                    IdentityAgent::None
                } else if val == "SSH_AUTH_SOCK" {
                    IdentityAgent::Env(val.to_string())
                } else if let Some(var) = val.strip_prefix('$') {
                    IdentityAgent::Env(var.to_string())
                } else {
                    IdentityAgent::Path(PathBuf::from(val))
                };
            }
            "ssh_command" | "sftp_server" => {
                return Err(bad_value(
                    key,
                    v.unwrap_or(""),
                    "not supported: this plugin speaks SSH itself and runs no ssh binary; \
                     remove the option",
                ));
            }
            k if ACCEPTED_NO_OPS.contains(&k) => {}
            _ => unreachable!("every supported name is handled: {key}"),
        }
    }

    let sshcmd = sshcmd.ok_or(OptionError::MissingSshcmd)?;
    o.remote = Remote::parse(&sshcmd)?;
    if o.password.is_some() && password_stdin {
        return Err(OptionError::Conflict(
            "password".into(),
            "password_stdin".into(),
        ));
    }
    if o.password.is_some() && o.password_file.is_some() {
        return Err(OptionError::Conflict(
            "password".into(),
            "password_file".into(),
        ));
    }
    o.writeback = write_back(writeback, writeback_max, writeback_dir, o.read_only, ctx)?;
    Ok(ParsedOptions {
        options: o,
        wants_password_stdin: password_stdin,
        given,
    })
}

/// The write-back settings from `writeback`, `writeback_max` and `writeback_dir`.
fn write_back(
    on: bool,
    max: Option<u64>,
    dir: Option<PathBuf>,
    read_only: bool,
    ctx: Context,
) -> Result<Option<WriteBack>, OptionError> {
    if !on {
        return match (max, dir) {
            (Some(_), _) => Err(OptionError::NeedsWriteback("writeback_max".into())),
            (_, Some(_)) => Err(OptionError::NeedsWriteback("writeback_dir".into())),
            (None, None) => Ok(None),
        };
    }
    if read_only {
        // A read-only mount makes no changes to journal.
        return Err(OptionError::Conflict("writeback".into(), "ro".into()));
    }
    if ctx == Context::Command && dir.is_none() {
        // The journal must outlive the process (what is pending is replayed by the next mount
        // of the same directory), so its place is the user's choice, not a temporary one.
        return Err(OptionError::MissingValue {
            name: "writeback_dir".into(),
            expected: "writeback=yes needs -o writeback_dir=PATH with the mount command: a \
                       local directory that keeps the journal between runs (not inside the \
                       mountpoint)"
                .into(),
        });
    }
    Ok(Some(WriteBack {
        max_bytes: max.unwrap_or(WRITEBACK_MAX_DEFAULT),
        dir,
    }))
}

/// The result of [`parse`].
#[derive(Debug)]
pub struct ParsedOptions {
    pub options: MountOptions,
    pub wants_password_stdin: bool,
    /// The options the user gave (canonical names): an ssh_config file fills in only the rest.
    pub given: std::collections::BTreeSet<&'static str>,
}

fn need<'a>(name: &str, v: Option<&'a str>, expected: &str) -> Result<&'a str, OptionError> {
    match v {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(OptionError::MissingValue {
            name: name.to_string(),
            expected: expected.to_string(),
        }),
    }
}

fn bad_value(name: &str, value: &str, expected: &str) -> OptionError {
    OptionError::BadValue {
        name: name.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

/// A bare flag means on; `=yes/no/true/false/1/0` is also accepted.
fn flag(name: &str, v: Option<&str>) -> Result<bool, OptionError> {
    match v {
        None | Some("") => Ok(true),
        Some(_) => yes_no(name, v),
    }
}

fn yes_no(name: &str, v: Option<&str>) -> Result<bool, OptionError> {
    let val = need(name, v, "yes or no")?;
    match val.to_ascii_lowercase().as_str() {
        "yes" | "true" | "1" | "on" => Ok(true),
        "no" | "false" | "0" | "off" => Ok(false),
        _ => Err(bad_value(name, val, "yes or no")),
    }
}

fn parse_port(v: &str) -> Result<u16, OptionError> {
    match v.trim().parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(bad_value("port", v, "a TCP port from 1 to 65535")),
    }
}

/// The values a numeric option takes. Every number has one: a time far in the future
/// overflows `Instant` arithmetic (a panic), and ids and counts have their own limits.
#[derive(Clone, Copy, Debug)]
pub struct Range {
    pub min: u64,
    pub max: u64,
    /// What the error says is expected, with the range in it.
    pub expected: &'static str,
}

/// `ConnectTimeout`, `reconnect_timeout`: a day at most.
pub const TIMEOUT: Range = Range {
    min: 1,
    max: 86_400,
    expected: "seconds from 1 to 86400",
};
/// `cache_timeout`: 0 trusts nothing cached.
pub const CACHE_TIMEOUT: Range = Range {
    min: 0,
    max: 86_400,
    expected: "seconds from 0 to 86400",
};
/// `ServerAliveInterval`: 0 turns keepalives off.
pub const KEEPALIVE: Range = Range {
    min: 0,
    max: 86_400,
    expected: "seconds from 0 to 86400 (0 turns keepalives off)",
};
/// `ServerAliveCountMax`.
pub const KEEPALIVE_COUNT: Range = Range {
    min: 1,
    max: 1000,
    expected: "a count from 1 to 1000",
};
/// `uid`, `gid`: any u32 but u32::MAX, which chown(2) reserves as -1 ("leave unchanged").
pub const ID: Range = Range {
    min: 0,
    max: u32::MAX as u64 - 1,
    expected: "a numeric id from 0 to 4294967294",
};

impl Range {
    /// Parses a whole number within the range; anything else is refused naming the option,
    /// the range and the value.
    pub fn parse(&self, name: &str, v: &str) -> Result<u64, OptionError> {
        match v.trim().parse::<u64>() {
            Ok(n) if (self.min..=self.max).contains(&n) => Ok(n),
            _ => Err(bad_value(name, v, self.expected)),
        }
    }

    /// A duration in whole seconds within the range.
    fn seconds(&self, name: &str, v: Option<&str>) -> Result<Duration, OptionError> {
        Ok(Duration::from_secs(
            self.parse(name, need(name, v, self.expected)?)?,
        ))
    }
}

/// `writeback_max` when not given: 1 GiB of changes not yet on the server.
pub const WRITEBACK_MAX_DEFAULT: u64 = 1 << 30;
/// Below this the journal would make writes wait on every few records.
pub const WRITEBACK_MAX_MIN: u64 = 1 << 20;
const WRITEBACK_MAX_EXPECTED: &str = "a size of at least 1M (1048576 bytes), like 256M or 4G \
     (a number of bytes, or with K, M, G or T: powers of 1024, KiB or KB alike)";

/// A byte count: a whole number, optionally followed by K, M, G or T (powers of 1024), with or
/// without `iB`/`B`, in any case (`512M`, `4GiB`, `1tb`, `1048576`). At least `min`.
fn parse_size(name: &str, v: &str, min: u64, expected: &str) -> Result<u64, OptionError> {
    let t = v.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let shift = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad_value(name, v, expected)),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|n| *n >= min)
        .ok_or_else(|| bad_value(name, v, expected))
}

fn parse_umask(v: &str) -> Result<u32, OptionError> {
    match u32::from_str_radix(v.trim(), 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(bad_value(
            "umask",
            v,
            "an octal mask from 000 to 777, like 022",
        )),
    }
}

/// Ciphers russh implements, fastest first on x86_64 with AES-NI.
pub const KNOWN_CIPHERS: &[&str] = &[
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
];

fn parse_ciphers(v: &str) -> Result<Vec<String>, OptionError> {
    let mut out = Vec::new();
    for c in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        if !KNOWN_CIPHERS.contains(&c) {
            return Err(bad_value(
                "Ciphers",
                c,
                &format!("one or more of {}", KNOWN_CIPHERS.join(",")),
            ));
        }
        out.push(c.to_string());
    }
    if out.is_empty() {
        return Err(bad_value("Ciphers", v, "at least one cipher name"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(items: &[(&str, &str)]) -> Result<MountOptions, OptionError> {
        let raw: BTreeMap<String, String> = items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(&from_docker_opts(&raw), None, Context::Plugin).map(|p| p.options)
    }

    #[test]
    fn remote_forms() {
        let r = Remote::parse("user@host:/data").unwrap();
        assert_eq!(
            (r.user.as_deref(), r.host.as_str(), r.path.as_str()),
            (Some("user"), "host", "/data")
        );
        let r = Remote::parse("host").unwrap();
        assert_eq!(
            (r.user, r.host.as_str(), r.path.as_str()),
            (None, "host", "")
        );
        let r = Remote::parse("me@corp.com@host:rel/dir").unwrap();
        assert_eq!(r.user.as_deref(), Some("me@corp.com"));
        assert_eq!(r.host, "host");
        assert_eq!(r.path, "rel/dir");
        let r = Remote::parse("u@[::1]:/srv").unwrap();
        assert_eq!((r.host.as_str(), r.path.as_str()), ("::1", "/srv"));
        let r = Remote::parse("[fe80::1]").unwrap();
        assert_eq!((r.host.as_str(), r.path.as_str()), ("fe80::1", ""));
        assert_eq!(
            Remote::parse("u@[::1]:/srv").unwrap().to_string(),
            "u@[::1]:/srv"
        );
        // Colons inside the path are fine.
        assert_eq!(Remote::parse("h:/a:b").unwrap().path, "/a:b");
    }

    #[test]
    fn remote_errors_say_what_is_wrong() {
        for bad in [
            "", "@host:/x", "u@:/x", ":/x", "u@[::1", "u@[::1]x", "a b:/x",
        ] {
            let e = Remote::parse(bad).unwrap_err().to_string();
            assert!(e.contains("expected user@host:/path"), "{bad}: {e}");
        }
    }

    #[test]
    fn vieux_options_work_unchanged() {
        let o = plugin(&[
            ("sshcmd", "alice@example.com:/home/alice"),
            ("password", "s3cret"),
            ("port", "2222"),
            ("allow_other", ""),
            ("Ciphers", "aes128-ctr"),
            ("Compression", "no"),
            ("reconnect", ""),
            ("workaround", "rename"),
        ])
        .unwrap();
        assert_eq!(o.port, 2222);
        assert_eq!(o.password.as_ref().unwrap().expose(), "s3cret");
        assert!(o.allow_other);
        assert_eq!(o.ciphers, vec!["aes128-ctr"]);
        assert!(!o.compression);
    }

    #[test]
    fn defaults() {
        let o = plugin(&[("sshcmd", "h:/x")]).unwrap();
        assert!(o.allow_other, "plugin mounts default to allow_other");
        assert_eq!(o.server_alive_interval, Duration::from_secs(15));
        assert_eq!(o.server_alive_count_max, 3);
        assert_eq!(o.strict_host_key_checking, StrictHostKeyChecking::AcceptNew);
        let cli = parse(&vec![], Some("h:/x"), Context::Command)
            .unwrap()
            .options;
        assert!(!cli.allow_other);
    }

    #[test]
    fn errors_name_the_fix() {
        assert_eq!(plugin(&[]).unwrap_err(), OptionError::MissingSshcmd);
        let e = plugin(&[("sshcmd", "h:/x"), ("port", "70000")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("port") && e.contains("1 to 65535"), "{e}");
        let e = plugin(&[("sshcmd", "h:/x"), ("frobnicate", "1")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown option 'frobnicate'") && e.contains("IdentityFile"),
            "{e}"
        );
        let e = plugin(&[("sshcmd", "h:/x"), ("Ciphers", "rot13")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("aes256-gcm@openssh.com"), "{e}");
    }

    #[test]
    fn numbers_have_ranges() {
        let one = |name: &str, v: &str| plugin(&[("sshcmd", "h:/x"), (name, v)]);
        // A timeout past what `Instant` can add used to panic inside the mount.
        for name in ["reconnect_timeout", "ConnectTimeout", "cache_timeout"] {
            for v in [
                "86401",
                "18446744073709551615",
                "99999999999999999999",
                "-1",
            ] {
                let e = one(name, v).unwrap_err().to_string();
                assert!(
                    e.contains(name) && e.contains("86400") && e.contains(v),
                    "{e}"
                );
            }
        }
        assert_eq!(
            one("reconnect_timeout", "86400").unwrap().reconnect_timeout,
            Duration::from_secs(86400)
        );
        assert!(one("reconnect_timeout", "0").is_err());
        assert_eq!(
            one("cache_timeout", "0").unwrap().cache_timeout,
            Duration::ZERO
        );
        assert_eq!(
            one("ServerAliveInterval", "0")
                .unwrap()
                .server_alive_interval,
            Duration::ZERO
        );
        let e = one("ServerAliveCountMax", "1001").unwrap_err().to_string();
        assert!(
            e.contains("ServerAliveCountMax") && e.contains("1 to 1000"),
            "{e}"
        );
        assert!(one("ServerAliveCountMax", "0").is_err());
        assert_eq!(one("uid", "4294967294").unwrap().uid, Some(u32::MAX - 1));
        let e = one("uid", "4294967295").unwrap_err().to_string();
        assert!(e.contains("uid") && e.contains("4294967294"), "{e}");
        assert!(one("gid", "-1").is_err());
        assert!(one("umask", "1000").is_err());
    }

    #[test]
    fn writeback_is_off_unless_asked_and_defaults_to_1_gib() {
        assert_eq!(plugin(&[("sshcmd", "h:/x")]).unwrap().writeback, None);
        assert_eq!(
            plugin(&[("sshcmd", "h:/x"), ("writeback", "no")])
                .unwrap()
                .writeback,
            None
        );
        for on in ["", "yes", "true", "1", "on"] {
            let o = plugin(&[("sshcmd", "h:/x"), ("writeback", on)]).unwrap();
            assert_eq!(
                o.writeback,
                Some(WriteBack {
                    max_bytes: 1 << 30,
                    dir: None
                }),
                "writeback={on}"
            );
        }
        let cli = parse(
            &split_cli_options("writeback,writeback_dir=/var/tmp/j"),
            Some("h:/x"),
            Context::Command,
        )
        .unwrap()
        .options;
        assert_eq!(
            cli.writeback,
            Some(WriteBack {
                max_bytes: 1 << 30,
                dir: Some(PathBuf::from("/var/tmp/j"))
            })
        );
    }

    #[test]
    fn writeback_max_takes_sizes_with_binary_suffixes() {
        let max = |v: &str| {
            plugin(&[
                ("sshcmd", "h:/x"),
                ("writeback", "yes"),
                ("writeback_max", v),
            ])
            .map(|o| o.writeback.unwrap().max_bytes)
        };
        for (v, want) in [
            ("1048576", 1u64 << 20),
            ("1M", 1 << 20),
            ("1m", 1 << 20),
            ("1MiB", 1 << 20),
            ("1mib", 1 << 20),
            ("1MB", 1 << 20),
            ("2048K", 2 << 20),
            ("2048kib", 2 << 20),
            ("256M", 256 << 20),
            (" 4G ", 4 << 30),
            ("4 GiB", 4 << 30),
            ("4gb", 4 << 30),
            ("2T", 2 << 40),
            ("1TiB", 1 << 40),
            ("5000000B", 5_000_000),
        ] {
            assert_eq!(max(v), Ok(want), "writeback_max={v}");
        }
        for v in [
            "1048575",
            "1023K",
            "0",
            "0G",
            "1.5G",
            "G",
            "iB",
            "4iB",
            "4P",
            "4 G B",
            "-1G",
            "+1G",
            "lots",
            "99999999999999999999",
            "20000000T",
        ] {
            let e = max(v).unwrap_err().to_string();
            assert!(
                e.contains("writeback_max") && e.contains(v) && e.contains("at least 1M"),
                "writeback_max={v}: {e}"
            );
        }
        let e = max("").unwrap_err().to_string();
        assert!(e.contains("writeback_max needs a value"), "{e}");
    }

    #[test]
    fn writeback_options_need_writeback_and_their_context() {
        for (name, v) in [("writeback_max", "64M"), ("writeback_dir", "/j")] {
            for wb in [None, Some("no")] {
                let mut items = vec![(name, v)];
                if let Some(wb) = wb {
                    items.push(("writeback", wb));
                }
                let raw: RawOptions = items
                    .iter()
                    .map(|(k, v)| (k.to_string(), Some(v.to_string())))
                    .collect();
                let e = parse(&raw, Some("h:/x"), Context::Command)
                    .unwrap_err()
                    .to_string();
                assert!(
                    e.contains(name) && e.contains("add -o writeback=yes"),
                    "{name} with writeback={wb:?}: {e}"
                );
            }
        }
        let e = plugin(&[
            ("sshcmd", "h:/x"),
            ("writeback", ""),
            ("writeback_dir", "/j"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("writeback_dir") && e.contains("state directory") && e.contains("remove"),
            "{e}"
        );
        for ro in [("ro", ""), ("rw", "no")] {
            let e = plugin(&[("sshcmd", "h:/x"), ("writeback", "yes"), ro])
                .unwrap_err()
                .to_string();
            assert_eq!(e, "options writeback and ro cannot be used together");
        }
        // The command has no state directory: the journal's place must be given.
        let e = parse(
            &split_cli_options("writeback=yes"),
            Some("h:/x"),
            Context::Command,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("writeback_dir=PATH"), "{e}");
        assert!(
            OptionError::Unknown { name: "x".into() }
                .to_string()
                .contains("writeback_max")
        );
    }

    #[test]
    fn proxy_jump_in_either_spelling() {
        for name in ["proxyjump", "ProxyJump"] {
            let o = plugin(&[("sshcmd", "h:/x"), (name, "admin@gw:2222,[::1]")]).unwrap();
            let hops: Vec<String> = o.proxy_jump.iter().map(|h| h.endpoint()).collect();
            assert_eq!(hops, ["gw:2222", "[::1]:22"]);
            assert_eq!(o.proxy_jump[0].user.as_deref(), Some("admin"));
        }
        let e = plugin(&[("sshcmd", "h:/x"), ("proxyjump", "gw:99999")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ProxyJump") && e.contains("hop 1 'gw:99999'") && e.contains("1 to 65535"),
            "{e}"
        );
        let e = plugin(&[("sshcmd", "h:/x"), ("proxyjump", "")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("[user@]host[:port]"), "{e}");
    }

    #[test]
    fn secrets_never_print() {
        let o = plugin(&[("sshcmd", "h:/x"), ("password", "hunter2")]).unwrap();
        assert!(!format!("{o:?}").contains("hunter2"));
    }

    #[test]
    fn cli_splitting() {
        let raw = split_cli_options("allow_other,uid=1000,,IdentityFile=/k\\,x");
        assert_eq!(
            raw,
            vec![
                ("allow_other".to_string(), None),
                ("uid".to_string(), Some("1000".to_string())),
                ("IdentityFile".to_string(), Some("/k,x".to_string())),
            ]
        );
        // Keywords are case-insensitive, like ssh_config.
        let o = parse(
            &split_cli_options("ciphers=aes128-ctr,serveraliveinterval=5"),
            Some("h:/x"),
            Context::Command,
        )
        .unwrap()
        .options;
        assert_eq!(o.server_alive_interval, Duration::from_secs(5));
    }
}
