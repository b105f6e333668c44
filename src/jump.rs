//! Jump hosts (`proxyjump`, ssh's `ProxyJump`): the hop list's syntax, and connecting through
//! it. Each hop is an SSH connection of its own, with its own host-key check and pin and its own
//! authentication, opened over a `direct-tcpip` channel of the hop before it (the first over
//! TCP); the target's SSH session runs over a channel of the last hop. No `ssh` binary.
//!
//! Each hop logs in with its own ssh_config entry where it has one (HostName, User, Port and
//! IdentityFile of the `Host` block matching the hop's name: `ssh_config::apply`), and with the
//! volume's own credentials (password, keys), as ssh does for a hop with no configuration of its
//! own. A hop that drops takes the target session with it, and the
//! reconnect supervision dials the whole chain again.

use std::fmt;

use crate::options::{MountOptions, Remote};
use crate::ssh::{self, ConnectError, Connection, display_addr};

/// At most this many hops: a longer chain is a typo more often than a network.
pub const MAX_HOPS: usize = 8;

/// One hop of `proxyjump`: `[user@]host[:port]`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JumpHost {
    /// Login name; `None` means the local user's name, as ssh uses for a hop.
    pub user: Option<String>,
    /// Host name or address, IPv6 without brackets.
    pub host: String,
    pub port: u16,
    /// `SHA256:...` the hop's key must have: pinned at the first connection (the plugin keeps
    /// it in the volume's state), never given as an option.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostkey: Option<String>,
    /// Key files from the hop's own ssh_config entry (`IdentityFile` in its `Host` block), tried
    /// before the volume's; filled in when the options meet the file, never stored.
    #[serde(skip)]
    pub identity_files: Vec<std::path::PathBuf>,
}

impl JumpHost {
    /// `host:port` (`[v6]:port`): what the hop's pin is filed under.
    pub fn endpoint(&self) -> String {
        display_addr(&self.host, self.port)
    }
}

impl fmt::Display for JumpHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user = self.user.clone().unwrap_or_else(ssh::default_user);
        write!(f, "{user}@{}", self.endpoint())
    }
}

/// What the value should look like, for error messages.
pub const EXPECTED: &str = "a comma-separated list of jump hosts [user@]host[:port], first hop \
    first, e.g. admin@bastion.example.com:2222,10.0.0.7 (IPv6 as [fe80::1]:22; none for no jump \
    host)";

/// Parses `proxyjump`: hops separated by commas, each `[user@]host[:port]` or
/// `ssh://[user@]host[:port]` as ssh takes them; `none` is no hop. The error says what is wrong
/// with which hop.
pub fn parse_list(value: &str) -> Result<Vec<JumpHost>, String> {
    if value.trim().eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let hops = value
        .split(',')
        .map(str::trim)
        .enumerate()
        .map(|(i, hop)| parse_hop(hop).map_err(|why| format!("hop {} '{hop}' {why}", i + 1)))
        .collect::<Result<Vec<_>, _>>()?;
    if hops.len() > MAX_HOPS {
        return Err(format!(
            "{} hops given, at most {MAX_HOPS} are supported",
            hops.len()
        ));
    }
    Ok(hops)
}

fn parse_hop(s: &str) -> Result<JumpHost, String> {
    if s.is_empty() {
        return Err("is empty (two commas in a row, or one at an end?)".into());
    }
    let s = s.strip_prefix("ssh://").unwrap_or(s);
    let s = s.strip_suffix('/').unwrap_or(s);
    // The host starts after the last '@' before any '[' (as in sshcmd).
    let host_area_end = s.find('[').unwrap_or(s.len());
    let (user, rest) = match s[..host_area_end].rfind('@') {
        Some(at) => (Some(&s[..at]), &s[at + 1..]),
        None => (None, s),
    };
    if user.is_some_and(str::is_empty) {
        return Err("has an empty user name before '@'".into());
    }
    let (host, port) = if let Some(after) = rest.strip_prefix('[') {
        let close = after
            .find(']')
            .ok_or("opens an IPv6 address with '[' but has no closing ']'")?;
        let tail = &after[close + 1..];
        let port = match tail.strip_prefix(':') {
            Some(p) => Some(p),
            None if tail.is_empty() => None,
            None => return Err("has something other than ':port' after the closing ']'".into()),
        };
        (&after[..close], port)
    } else {
        match rest.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err(
                    "looks like an IPv6 address: put it in brackets, as [fe80::1]:22".into(),
                );
            }
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err("has no host name".into());
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c == '/' || c == '@')
    {
        return Err("has a space, '/' or '@' in its host name".into());
    }
    let port = match port {
        None => 22,
        Some(p) => match p.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => n as u16,
            _ => return Err(format!("has port '{p}': use a TCP port from 1 to 65535")),
        },
    };
    Ok(JumpHost {
        user: user.map(str::to_string),
        host: host.to_string(),
        port,
        hostkey: None,
        identity_files: Vec::new(),
    })
}

/// A connected jump host, kept alive by the connection that runs through it.
pub(crate) struct Hop {
    pub(crate) host: JumpHost,
    pub(crate) conn: Connection,
}

/// The options a hop connects with: the volume's (credentials, known_hosts, algorithms,
/// keepalives, StrictHostKeyChecking), with the hop's user, host, port and pin.
fn hop_options(opts: &MountOptions, hop: &JumpHost) -> MountOptions {
    let mut o = opts.clone();
    o.remote = Remote {
        user: hop.user.clone(),
        host: hop.host.clone(),
        path: String::new(),
    };
    o.port = hop.port;
    o.hostkey = hop.hostkey.clone();
    // The target's entry in the config is not the hop's.
    o.config_identity_files = hop.identity_files.clone();
    o.proxy_jump = Vec::new();
    o
}

/// Originator of the forwarded connections, as ssh -J sends it.
const ORIGINATOR: (&str, u32) = ("127.0.0.1", 65535);

/// Connects to the target through every hop of `opts.proxy_jump`, each step bounded by
/// `ConnectTimeout`. Errors of a hop name it.
pub(crate) async fn connect(opts: &MountOptions) -> Result<Connection, ConnectError> {
    let mut via: Vec<Hop> = Vec::with_capacity(opts.proxy_jump.len());
    for (i, hop) in opts.proxy_jump.iter().enumerate() {
        let hop_opts = hop_options(opts, hop);
        let named = |e: ConnectError| hop_error(i, hop, e);
        let conn = match via.last() {
            None => {
                ssh::within(opts.connect_timeout, async {
                    let socket = ssh::tcp_connect(&hop_opts).await?;
                    ssh::handshake(socket, &hop_opts, true).await
                })
                .await
            }
            Some(prev) => {
                ssh::within(opts.connect_timeout, async {
                    let stream = forward(prev, &hop.host, hop.port).await?;
                    ssh::handshake(stream, &hop_opts, true).await
                })
                .await
            }
        }
        .map_err(named)?;
        tracing::debug!(hop = %hop, "jump host connected");
        via.push(Hop {
            host: hop.clone(),
            conn,
        });
    }
    let last = via.last().expect("connect is only called with hops");
    let mut conn = ssh::within(opts.connect_timeout, async {
        let stream = forward(last, &opts.remote.host, opts.port).await?;
        ssh::handshake(stream, opts, false).await
    })
    .await?;
    conn.via = via;
    Ok(conn)
}

/// A `direct-tcpip` channel from `hop` to `host`:`port`, as a byte stream.
async fn forward(
    hop: &Hop,
    host: &str,
    port: u16,
) -> Result<russh::ChannelStream<russh::client::Msg>, ConnectError> {
    let channel = hop
        .conn
        .handle
        .channel_open_direct_tcpip(host, u32::from(port), ORIGINATOR.0, ORIGINATOR.1)
        .await
        .map_err(|e| ConnectError::Jump {
            hop: hop.host.to_string(),
            detail: format!(
                "cannot open a connection from it to {}: {}. Check that the jump host can reach \
                 that address and allows TCP forwarding (sshd_config AllowTcpForwarding yes)",
                display_addr(host, port),
                describe_open_failure(&e)
            ),
        })?;
    Ok(channel.into_stream())
}

fn describe_open_failure(e: &russh::Error) -> String {
    match e {
        russh::Error::ChannelOpenFailure(reason) => format!("the jump host refused ({reason:?})"),
        other => other.to_string(),
    }
}

/// Names hop `i` in its error; the hints of errors written for the target (sshcmd, port) are
/// replaced by ones about `proxyjump`.
fn hop_error(i: usize, hop: &JumpHost, e: ConnectError) -> ConnectError {
    let detail = match e {
        // Already names a hop: a later hop could not be reached through this one's channel.
        ConnectError::Jump { .. } => return e,
        ConnectError::Resolve { host, reason } => format!(
            "cannot resolve host '{host}': {reason}. Check the host name of hop {} in proxyjump",
            i + 1
        ),
        ConnectError::Tcp { addr, reason } => format!(
            "cannot connect to {addr}: {reason}. Check that an SSH server listens there and \
             the host and port of hop {} in proxyjump",
            i + 1
        ),
        other => other.to_string(),
    };
    ConnectError::Jump {
        hop: hop.to_string(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(user: Option<&str>, host: &str, port: u16) -> JumpHost {
        JumpHost {
            user: user.map(str::to_string),
            host: host.to_string(),
            port,
            hostkey: None,
            identity_files: Vec::new(),
        }
    }

    #[test]
    fn hop_forms() {
        assert_eq!(
            parse_list("admin@bastion.example.com:2222,10.0.0.7").unwrap(),
            [
                hop(Some("admin"), "bastion.example.com", 2222),
                hop(None, "10.0.0.7", 22)
            ]
        );
        assert_eq!(
            parse_list("ssh://root@[fe80::1]:2200, [::1] ,me@corp@gw").unwrap(),
            [
                hop(Some("root"), "fe80::1", 2200),
                hop(None, "::1", 22),
                hop(Some("me@corp"), "gw", 22)
            ]
        );
        assert_eq!(parse_list("none").unwrap(), []);
        assert_eq!(parse_list("NONE").unwrap(), []);
        assert_eq!(hop(Some("u"), "::1", 22).endpoint(), "[::1]:22");
        assert_eq!(hop(Some("u"), "h", 2222).to_string(), "u@h:2222");
    }

    #[test]
    fn hop_errors_say_which_hop_and_what_to_fix() {
        for (bad, says) in [
            ("", "hop 1 '' is empty"),
            ("a,,b", "hop 2 '' is empty"),
            ("a,", "hop 2"),
            ("bastion:0", "port '0': use a TCP port from 1 to 65535"),
            ("bastion:70000", "1 to 65535"),
            ("bastion:ssh", "port 'ssh'"),
            (
                "h,fe80::1",
                "hop 2 'fe80::1' looks like an IPv6 address: put it in brackets",
            ),
            ("[::1", "no closing ']'"),
            ("[::1]x", "after the closing ']'"),
            ("@h", "empty user name"),
            ("u@", "no host name"),
            ("u@:22", "no host name"),
            ("a b", "space"),
            ("1,2,3,4,5,6,7,8,9", "9 hops given, at most 8"),
        ] {
            let e = parse_list(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
