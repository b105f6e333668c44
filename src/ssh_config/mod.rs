//! ssh_config(5): which settings of a config file apply to a host, as `ssh` decides it.
//!
//! `resolve` walks the file (and what it includes) once, top to bottom, keeping the first value
//! obtained for each keyword; `Host` and `Match` lines switch the lines below them on or off for
//! this host. Only the keywords this implementation acts on are read (see [`HostConfig`]);
//! every other keyword is ignored, since users' files are full of them. A keyword we read but
//! cannot honour (ProxyCommand, `Match exec`, a Ciphers list with nothing we speak) is an
//! error naming it and its file:line. How the result meets the volume options is `apply`.
//!
//! parse.rs: lines and Include; pattern.rs: Host/Match patterns; expand.rs: %-tokens and `~`.

pub mod apply;
pub mod expand;
pub mod parse;
pub mod pattern;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::options::{self, KNOWN_CIPHERS, StrictHostKeyChecking};

/// ssh's limit on nested Include (READCONF_MAX_DEPTH).
const MAX_DEPTH: usize = 16;

/// Where a setting came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A value and the line that set it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    pub origin: Origin,
}

/// A `Host` or `Match` line that applied to the host, as shown in `docker volume inspect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matched {
    pub origin: Origin,
    /// The line as written, e.g. `Host myalias`.
    pub line: String,
}

impl fmt::Display for Matched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.line)
    }
}

/// How the host is reached, from whichever of ProxyJump/ProxyCommand came first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proxy {
    /// `ProxyJump none` / `ProxyCommand none`: directly.
    Direct,
    /// `ProxyJump [user@]host[:port][,...]`, kept as written.
    Jump(String),
}

/// The settings a config file gives one host. Paths are still unexpanded: tokens such as `%p`
/// stand for the final values, which the volume options may still change (see `apply`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostConfig {
    pub hostname: Option<Setting<String>>,
    pub user: Option<Setting<String>>,
    pub port: Option<Setting<u16>>,
    /// Every IdentityFile line, in order (they accumulate, as in ssh).
    pub identity_files: Vec<Setting<String>>,
    pub identities_only: Option<Setting<bool>>,
    pub identity_agent: Option<Setting<String>>,
    /// Every CertificateFile line, in order.
    pub certificate_files: Vec<Setting<String>>,
    pub proxy: Option<Setting<Proxy>>,
    /// `UserKnownHostsFile` words (`none` means no file).
    pub user_known_hosts_files: Option<Setting<Vec<String>>>,
    pub strict_host_key_checking: Option<Setting<StrictHostKeyChecking>>,
    /// Resolved against our own cipher list (`+`, `-`, `^` forms), never empty.
    pub ciphers: Option<Setting<Vec<String>>>,
    pub server_alive_interval: Option<Setting<Duration>>,
    pub server_alive_count_max: Option<Setting<u32>>,
    /// `None` inside: `ConnectTimeout none`/`0`, i.e. our default.
    pub connect_timeout: Option<Setting<Option<Duration>>>,
    /// The Host/Match lines that applied, in order.
    pub matched: Vec<Matched>,
}

/// Who is connecting where: what `Host` and `Match` lines are matched against.
#[derive(Clone, Debug)]
pub struct Query {
    /// The host as given in sshcmd (an alias, or a real name).
    pub host: String,
    /// The login given in sshcmd (`user@`), which beats `User` in the file.
    pub user: Option<String>,
    /// The local user name (`Match localuser`, the default for `Match user`).
    pub local_user: String,
    /// The local home directory (`~`, relative Include paths).
    pub home: PathBuf,
}

/// A config file that cannot be used, with where and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the ssh_config file {file}: {reason}")]
    Read { file: PathBuf, reason: String },
    #[error("ssh_config {origin}: {message}")]
    At { origin: Origin, message: String },
}

fn at(file: &Path, line: usize, message: impl Into<String>) -> ConfigError {
    ConfigError::At {
        origin: Origin {
            file: file.to_path_buf(),
            line,
        },
        message: message.into(),
    }
}

/// The settings `file` gives `query.host`.
pub fn resolve(file: &Path, query: &Query) -> Result<HostConfig, ConfigError> {
    let mut walk = Walk {
        query,
        cfg: HostConfig::default(),
        final_pass: false,
        wants_final: false,
    };
    walk.file(file, 0, false)?;
    if walk.wants_final {
        // `Match final`/`canonical`: ssh reads the files again with those criteria true,
        // keeping what the first pass obtained (first value still wins).
        walk.final_pass = true;
        walk.file(file, 0, false)?;
    }
    Ok(walk.cfg)
}

/// One reading of the files.
struct Walk<'q> {
    query: &'q Query,
    cfg: HostConfig,
    final_pass: bool,
    wants_final: bool,
}

impl Walk<'_> {
    /// Reads one file. `never` is set for a file included from a block that does not apply:
    /// nothing in it applies either, whatever its own Host lines say (ssh's NEVERMATCH).
    fn file(&mut self, path: &Path, depth: usize, never: bool) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            file: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let lines = parse::directives(&text).map_err(|(line, msg)| at(path, line, msg))?;
        let mut active = !never;
        for d in lines {
            let err = |msg: String| at(path, d.line, msg);
            match d.keyword.as_str() {
                "host" => {
                    if d.args.is_empty() {
                        return Err(err("Host needs at least one pattern".into()));
                    }
                    active = !never && pattern::host_words(&self.query.host, &d.args).matched();
                    if active {
                        self.matched(path, &d, "Host");
                    }
                }
                "match" => {
                    let m = self.match_line(&d.args).map_err(err)?;
                    active = !never && m;
                    if active {
                        self.matched(path, &d, "Match");
                    }
                }
                "include" => {
                    if d.args.is_empty() {
                        return Err(err("Include needs a file name".into()));
                    }
                    if depth + 1 > MAX_DEPTH {
                        return Err(err(format!(
                            "Include nested more than {MAX_DEPTH} deep (a file including itself?)"
                        )));
                    }
                    for arg in &d.args {
                        let files = parse::include_paths(arg, &self.query.home)
                            .map_err(|e| err(format!("Include {e}")))?;
                        for f in files {
                            // A Host/Match inside the included file ends with that file.
                            self.file(&f, depth + 1, !active)?;
                        }
                    }
                }
                _ if active => self.keyword(path, &d).map_err(err)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn matched(&mut self, path: &Path, d: &parse::Directive, word: &str) {
        let m = Matched {
            origin: Origin {
                file: path.to_path_buf(),
                line: d.line,
            },
            line: format!("{word} {}", d.args.join(" ")),
        };
        if !self.cfg.matched.contains(&m) {
            self.cfg.matched.push(m);
        }
    }

    /// Evaluates a `Match` line's criteria, left to right, all of which must hold.
    fn match_line(&mut self, args: &[String]) -> Result<bool, String> {
        if args.is_empty() {
            return Err("Match needs criteria (e.g. Match host NAME, Match all)".into());
        }
        let mut result = true;
        let mut i = 0;
        while i < args.len() {
            let raw = args[i].to_ascii_lowercase();
            let (negate, crit) = match raw.strip_prefix('!') {
                Some(c) => (true, c.to_string()),
                None => (false, raw.clone()),
            };
            i += 1;
            let value = |i: usize| {
                args.get(i)
                    .cloned()
                    .ok_or_else(|| format!("Match {crit} needs a pattern list after it"))
            };
            let hit = match crit.as_str() {
                "all" => true,
                "canonical" | "final" => {
                    self.wants_final = true;
                    self.final_pass
                }
                "host" => {
                    let v = value(i)?;
                    i += 1;
                    let target = self
                        .cfg
                        .hostname
                        .as_ref()
                        .map_or(self.query.host.clone(), |h| h.value.clone());
                    pattern::comma_list(&target, &v, true).matched()
                }
                "originalhost" => {
                    let v = value(i)?;
                    i += 1;
                    pattern::comma_list(&self.query.host, &v, true).matched()
                }
                "user" => {
                    let v = value(i)?;
                    i += 1;
                    let user = self
                        .query
                        .user
                        .clone()
                        .or_else(|| self.cfg.user.as_ref().map(|u| u.value.clone()))
                        .unwrap_or_else(|| self.query.local_user.clone());
                    pattern::comma_list(&user, &v, false).matched()
                }
                "localuser" => {
                    let v = value(i)?;
                    i += 1;
                    pattern::comma_list(&self.query.local_user, &v, false).matched()
                }
                other => {
                    // ssh only runs `exec` when everything before it matched: so do we
                    // refuse it only then, and a Match for other hosts is harmless.
                    if !result {
                        i += 1;
                        continue;
                    }
                    return Err(format!(
                        "Match {other} is not supported (this plugin runs no commands and only \
                         knows Match host, originalhost, user, localuser, all, canonical and \
                         final): rewrite that block with Host or Match host, or point the \
                         volume at another file with -o ssh_config=PATH"
                    ));
                }
            };
            result &= hit != negate;
        }
        Ok(result)
    }

    /// One keyword in a block that applies: the first value obtained wins.
    fn keyword(&mut self, path: &Path, d: &parse::Directive) -> Result<(), String> {
        let origin = Origin {
            file: path.to_path_buf(),
            line: d.line,
        };
        let kw = d.keyword.as_str();
        // Keywords we do not act on are ignored before their arguments are looked at.
        const READ: &[&str] = &[
            "hostname",
            "user",
            "port",
            "identityfile",
            "identitiesonly",
            "identityagent",
            "certificatefile",
            "proxyjump",
            "proxycommand",
            "userknownhostsfile",
            "stricthostkeychecking",
            "ciphers",
            "serveraliveinterval",
            "serveralivecountmax",
            "connecttimeout",
        ];
        if !READ.contains(&kw) {
            return Ok(());
        }
        let Some(first) = d.args.first() else {
            return Err(format!("no value after {}", name_of(kw)));
        };
        let first = first.clone();
        let c = &mut self.cfg;
        match kw {
            "hostname" => {
                if c.hostname.is_none() {
                    let h = expand::hostname(&first, &self.query.host)
                        .map_err(|e| format!("HostName {e}"))?;
                    c.hostname = Some(setting(h, &origin));
                }
            }
            "user" => {
                if c.user.is_none() {
                    c.user = Some(setting(first, &origin));
                }
            }
            "port" => {
                if c.port.is_none() {
                    let p = match first.parse::<u32>() {
                        Ok(p) if (1..=65535).contains(&p) => p as u16,
                        _ => return Err(format!("Port '{first}' is not a port from 1 to 65535")),
                    };
                    c.port = Some(setting(p, &origin));
                }
            }
            "identityfile" => {
                if !c.identity_files.iter().any(|s| s.value == first) {
                    c.identity_files.push(setting(first, &origin));
                }
            }
            "certificatefile" => {
                if !c.certificate_files.iter().any(|s| s.value == first) {
                    c.certificate_files.push(setting(first, &origin));
                }
            }
            "identitiesonly" => {
                if c.identities_only.is_none() {
                    c.identities_only = Some(setting(yes_no("IdentitiesOnly", &first)?, &origin));
                }
            }
            "identityagent" => {
                if c.identity_agent.is_none() {
                    c.identity_agent = Some(setting(first, &origin));
                }
            }
            "proxyjump" => {
                if c.proxy.is_none() {
                    let p = if first.eq_ignore_ascii_case("none") {
                        Proxy::Direct
                    } else {
                        Proxy::Jump(first)
                    };
                    c.proxy = Some(setting(p, &origin));
                }
            }
            "proxycommand" => {
                if c.proxy.is_none() {
                    if !first.eq_ignore_ascii_case("none") {
                        return Err(
                            "ProxyCommand is not supported (this plugin runs no commands): use \
                             ProxyJump for a bastion, or ProxyCommand none for this host"
                                .into(),
                        );
                    }
                    c.proxy = Some(setting(Proxy::Direct, &origin));
                }
            }
            "userknownhostsfile" => {
                if c.user_known_hosts_files.is_none() {
                    c.user_known_hosts_files = Some(setting(d.args.clone(), &origin));
                }
            }
            "stricthostkeychecking" => {
                if c.strict_host_key_checking.is_none() {
                    let v = match first.to_ascii_lowercase().as_str() {
                        // No one to ask: as ssh without a terminal, unknown keys are refused.
                        "yes" | "ask" | "true" => StrictHostKeyChecking::Yes,
                        "accept-new" => StrictHostKeyChecking::AcceptNew,
                        "no" | "off" | "false" => StrictHostKeyChecking::No,
                        _ => {
                            return Err(format!(
                                "StrictHostKeyChecking '{first}': expected yes, ask, accept-new or no"
                            ));
                        }
                    };
                    c.strict_host_key_checking = Some(setting(v, &origin));
                }
            }
            "ciphers" => {
                if c.ciphers.is_none() {
                    c.ciphers = Some(setting(cipher_list(&first)?, &origin));
                }
            }
            "serveraliveinterval" => {
                if c.server_alive_interval.is_none() {
                    let n = number("ServerAliveInterval", &first, options::KEEPALIVE)?;
                    c.server_alive_interval = Some(setting(Duration::from_secs(n), &origin));
                }
            }
            "serveralivecountmax" => {
                if c.server_alive_count_max.is_none() {
                    let n = number("ServerAliveCountMax", &first, options::KEEPALIVE_COUNT)?;
                    c.server_alive_count_max = Some(setting(n as u32, &origin));
                }
            }
            "connecttimeout" => {
                if c.connect_timeout.is_none() {
                    let t = if first.eq_ignore_ascii_case("none") || first == "0" {
                        None
                    } else {
                        let n = number("ConnectTimeout", &first, options::TIMEOUT)?;
                        Some(Duration::from_secs(n))
                    };
                    c.connect_timeout = Some(setting(t, &origin));
                }
            }
            _ => unreachable!("every keyword in READ is handled: {kw}"),
        }
        Ok(())
    }
}

fn setting<T>(value: T, origin: &Origin) -> Setting<T> {
    Setting {
        value,
        origin: origin.clone(),
    }
}

/// The keyword as ssh_config(5) spells it, for messages.
fn name_of(kw: &str) -> &'static str {
    const NAMES: &[&str] = &[
        "HostName",
        "User",
        "Port",
        "IdentityFile",
        "IdentitiesOnly",
        "IdentityAgent",
        "CertificateFile",
        "ProxyJump",
        "ProxyCommand",
        "UserKnownHostsFile",
        "StrictHostKeyChecking",
        "Ciphers",
        "ServerAliveInterval",
        "ServerAliveCountMax",
        "ConnectTimeout",
    ];
    NAMES
        .iter()
        .find(|n| n.eq_ignore_ascii_case(kw))
        .copied()
        .unwrap_or("the keyword")
}

fn yes_no(name: &str, v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" => Ok(true),
        "no" | "false" => Ok(false),
        _ => Err(format!("{name} '{v}': expected yes or no")),
    }
}

fn number(name: &str, v: &str, range: options::Range) -> Result<u64, String> {
    range
        .parse(name, v)
        .map_err(|_| format!("{name} '{v}': expected {}", range.expected))
}

/// A `Ciphers` value against the ciphers we speak: a list replaces ours (unknown names are
/// dropped, since files name ciphers other clients have); `+list` appends, `-list` removes
/// (wildcards allowed), `^list` puts first. Nothing left is an error naming what we speak.
fn cipher_list(v: &str) -> Result<Vec<String>, String> {
    let ours: Vec<String> = KNOWN_CIPHERS.iter().map(|c| c.to_string()).collect();
    let names = |s: &str| -> Vec<String> {
        s.split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    };
    let known = |c: &String| KNOWN_CIPHERS.contains(&c.as_str());
    let list: Vec<String> = if let Some(rest) = v.strip_prefix('+') {
        let mut l = ours.clone();
        l.extend(
            names(rest)
                .into_iter()
                .filter(known)
                .filter(|c| !ours.contains(c)),
        );
        l
    } else if let Some(rest) = v.strip_prefix('-') {
        let drop = names(rest);
        ours.into_iter()
            .filter(|c| !drop.iter().any(|p| pattern::wildcard(c, p)))
            .collect()
    } else if let Some(rest) = v.strip_prefix('^') {
        let first: Vec<String> = names(rest).into_iter().filter(known).collect();
        let others: Vec<String> = ours.into_iter().filter(|c| !first.contains(c)).collect();
        first.into_iter().chain(others).collect()
    } else {
        names(v).into_iter().filter(known).collect()
    };
    if list.is_empty() {
        return Err(format!(
            "Ciphers '{v}' leaves no cipher this plugin speaks (it speaks {}): add one of them",
            KNOWN_CIPHERS.join(",")
        ));
    }
    Ok(list)
}

#[cfg(test)]
mod tests;
