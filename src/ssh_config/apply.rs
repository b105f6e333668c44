//! Volume options meet the ssh_config file: which file is read (`-o ssh_config=PATH`, else
//! `~/.ssh/config`), and the file's settings for the host filled into the options the user did
//! not give. Volume options always win, as ssh's command line wins over its files. Used by the
//! plugin (at Mount, and for `docker volume inspect`) and by the `mount` command alike.

use std::path::{Path, PathBuf};

use super::{ConfigError, HostConfig, Matched, Origin, Proxy, Query, expand};
use crate::options::{Context, IdentityAgent, MountOptions, ParsedOptions, SshConfigFile};

/// What the file contributed, for Status and the logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    /// The file read, if any.
    pub file: Option<PathBuf>,
    /// The Host/Match lines that applied.
    pub matched: Vec<Matched>,
    /// `ProxyJump` from the file, when no volume option gave one (kept as written; parsed
    /// into the options' `proxy_jump` hops).
    pub proxy_jump: Option<String>,
}

/// The local side's identity: home directory, user name and uid (in the plugin: root, whose
/// home holds the sshkey mount).
pub fn local_identity(ctx: Context) -> (PathBuf, String, u32) {
    let uid = nix::unistd::getuid().as_raw();
    let pw = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten();
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| pw.as_ref().map(|u| u.dir.clone()))
        .unwrap_or_else(|| PathBuf::from("/root"));
    let user = match ctx {
        Context::Plugin => "root".to_string(),
        Context::Command => std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .or_else(|| pw.map(|u| u.name))
            .unwrap_or_else(|| "root".to_string()),
    };
    (home, user, uid)
}

/// The ssh_config file the options ask for, or `None`. The default (`~/.ssh/config`) may be
/// missing; a file named with `-o ssh_config=` must exist. A relative name is taken in ~/.ssh.
pub fn config_file(opts: &MountOptions, home: &Path) -> Result<Option<PathBuf>, ConfigError> {
    match &opts.ssh_config {
        SshConfigFile::None => Ok(None),
        SshConfigFile::Default => {
            let p = home.join(".ssh").join("config");
            Ok(p.is_file().then_some(p))
        }
        SshConfigFile::Path(p) => {
            let p = if p.is_absolute() {
                p.clone()
            } else {
                home.join(".ssh").join(p)
            };
            if !p.is_file() {
                return Err(ConfigError::Read {
                    file: p,
                    reason: "no such file (in the plugin, put it in the sshkey mount, i.e. the \
                             sshkey.source directory, and name it /root/.ssh/NAME)"
                        .into(),
                });
            }
            Ok(Some(p))
        }
    }
}

/// The options to connect with: the volume's, completed by the config file's settings for its
/// host.
pub fn effective(
    parsed: &ParsedOptions,
    ctx: Context,
) -> Result<(MountOptions, Resolution), ConfigError> {
    let (home, _, _) = local_identity(ctx);
    effective_in(parsed, ctx, &home)
}

/// [`effective`] with the given home directory (`~`, `%d`, the default file's place).
pub fn effective_in(
    parsed: &ParsedOptions,
    ctx: Context,
    home: &Path,
) -> Result<(MountOptions, Resolution), ConfigError> {
    let mut o = parsed.options.clone();
    let (_, local_user, uid) = local_identity(ctx);
    let home = home.to_path_buf();
    let Some(file) = config_file(&o, &home)? else {
        return Ok((o, Resolution::default()));
    };
    let query = Query {
        host: o.remote.host.clone(),
        user: o.remote.user.clone(),
        local_user: local_user.clone(),
        home: home.clone(),
    };
    let cfg = super::resolve(&file, &query)?;
    // Case-insensitive: option names are (`proxyjump` and `ProxyJump` are one option).
    let given = |name: &str| parsed.given.iter().any(|g| g.eq_ignore_ascii_case(name));
    let mut res = Resolution {
        file: Some(file.clone()),
        matched: cfg.matched.clone(),
        proxy_jump: None,
    };
    fill(&mut o, &cfg, &given, &mut res);
    if let Some(hops) = &res.proxy_jump
        && let Some(p) = &cfg.proxy
    {
        o.proxy_jump = crate::jump::parse_list(hops).map_err(|why| ConfigError::At {
            origin: p.origin.clone(),
            message: format!("ProxyJump {why}; expected {}", crate::jump::EXPECTED),
        })?;
    }

    for hop in &mut o.proxy_jump {
        resolve_hop(hop, &file, &query)?;
    }

    // Paths last: their tokens stand for the final host, user and port.
    let tokens = expand::Tokens {
        home,
        local_user: local_user.clone(),
        local_uid: uid,
        host: o.remote.host.clone(),
        original_host: query.host.clone(),
        remote_user: o.remote.login(&local_user),
        port: o.port,
        proxy_jump: res.proxy_jump.clone().unwrap_or_default(),
    };
    let path = |value: &str, origin: &Origin, keyword: &str| {
        expand::path(value, &tokens).map_err(|message| ConfigError::At {
            origin: origin.clone(),
            message: format!("{keyword} {message}"),
        })
    };
    for s in &cfg.identity_files {
        o.config_identity_files
            .push(path(&s.value, &s.origin, "IdentityFile")?);
    }
    for s in &cfg.certificate_files {
        let p = path(&s.value, &s.origin, "CertificateFile")?;
        if !o.certificate_files.contains(&p) {
            o.certificate_files.push(p);
        }
    }
    if let Some(s) = &cfg.identity_agent
        && !given("IdentityAgent")
    {
        o.identity_agent = match s.value.as_str() {
            v if v.eq_ignore_ascii_case("none") => IdentityAgent::None,
            "SSH_AUTH_SOCK" => IdentityAgent::Env("SSH_AUTH_SOCK".into()),
            v if v.starts_with('$') && !v.starts_with("${") => IdentityAgent::Env(v[1..].into()),
            v => IdentityAgent::Path(path(v, &s.origin, "IdentityAgent")?),
        };
    }
    if let Some(s) = &cfg.user_known_hosts_files
        && !given("UserKnownHostsFile")
    {
        // hostkey.rs consults one file: the first, as ssh writes new keys to the first.
        let first = s.value.first().map(String::as_str).unwrap_or("none");
        o.known_hosts_file = Some(if first.eq_ignore_ascii_case("none") {
            PathBuf::from("/dev/null")
        } else {
            path(first, &s.origin, "UserKnownHostsFile")?
        });
        if s.value.len() > 1 {
            tracing::info!(origin = %s.origin, file = %first,
                "UserKnownHostsFile lists several files; only the first is consulted");
        }
    }
    Ok((o, res))
}

/// A jump host's own entry in the file, as ssh reads one for each `-J` hop: its HostName, its
/// User where the hop names none, its Port where the hop gives the default 22, and its
/// IdentityFile lines. (A `ProxyJump` in the hop's own entry, a chain of chains, is not
/// followed.)
fn resolve_hop(
    hop: &mut crate::jump::JumpHost,
    file: &Path,
    target: &Query,
) -> Result<(), ConfigError> {
    let query = Query {
        host: hop.host.clone(),
        user: hop.user.clone(),
        local_user: target.local_user.clone(),
        home: target.home.clone(),
    };
    let cfg = super::resolve(file, &query)?;
    if let Some(h) = &cfg.hostname {
        hop.host = h.value.clone();
    }
    if hop.user.is_none()
        && let Some(u) = &cfg.user
    {
        hop.user = Some(u.value.clone());
    }
    if hop.port == 22
        && let Some(p) = &cfg.port
    {
        hop.port = p.value;
    }
    let (_, _, uid) = local_identity(Context::Command);
    let tokens = expand::Tokens {
        home: query.home.clone(),
        local_user: query.local_user.clone(),
        local_uid: uid,
        host: hop.host.clone(),
        original_host: query.host.clone(),
        remote_user: hop.user.clone().unwrap_or_else(|| query.local_user.clone()),
        port: hop.port,
        proxy_jump: String::new(),
    };
    for s in &cfg.identity_files {
        let p = expand::path(&s.value, &tokens).map_err(|message| ConfigError::At {
            origin: s.origin.clone(),
            message: format!("IdentityFile {message}"),
        })?;
        hop.identity_files.push(p);
    }
    Ok(())
}

/// The plain values: each from the file only where the volume gave none.
fn fill(
    o: &mut MountOptions,
    cfg: &HostConfig,
    given: &dyn Fn(&str) -> bool,
    res: &mut Resolution,
) {
    if let Some(h) = &cfg.hostname {
        o.remote.host = h.value.clone();
    }
    if o.remote.user.is_none()
        && let Some(u) = &cfg.user
    {
        o.remote.user = Some(u.value.clone());
    }
    if !given("port")
        && let Some(p) = &cfg.port
    {
        o.port = p.value;
    }
    if !given("IdentitiesOnly")
        && let Some(v) = &cfg.identities_only
    {
        o.identities_only = v.value;
    }
    if !given("StrictHostKeyChecking")
        && let Some(v) = &cfg.strict_host_key_checking
    {
        o.strict_host_key_checking = v.value;
    }
    if !given("Ciphers")
        && let Some(v) = &cfg.ciphers
    {
        o.ciphers = v.value.clone();
    }
    if !given("ServerAliveInterval")
        && let Some(v) = &cfg.server_alive_interval
    {
        o.server_alive_interval = v.value;
    }
    if !given("ServerAliveCountMax")
        && let Some(v) = &cfg.server_alive_count_max
    {
        o.server_alive_count_max = v.value;
    }
    if !given("ConnectTimeout")
        && let Some(Some(v)) = cfg.connect_timeout.as_ref().map(|s| s.value)
    {
        o.connect_timeout = v;
    }
    if !given("ProxyJump")
        && let Some(p) = &cfg.proxy
        && let Proxy::Jump(j) = &p.value
    {
        res.proxy_jump = Some(j.clone());
    }
}
