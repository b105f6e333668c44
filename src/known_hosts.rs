//! The known_hosts file format, read the way ssh(1) reads it (sshd(8) "SSH_KNOWN_HOSTS FILE
//! FORMAT"): `@cert-authority` and `@revoked` markers, comma-separated host patterns with `*`,
//! `?` and `!` negation, hashed names (`|1|salt|hash`, HMAC-SHA1 of the name) and `[host]:port`
//! names for ports other than 22. What the entries mean for a connection is `hostkey`'s call.
//!
//! A line that does not parse is skipped, as ssh skips it, so one bad line never hides the
//! others. The last third is unit tests.

use std::path::Path;

use data_encoding::BASE64;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::PublicKey;
use sha1::Sha1;

/// The marker a line starts with, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// A plain host key line.
    Key,
    /// `@cert-authority`: the key is a CA whose host certificates are trusted for the hosts.
    CertAuthority,
    /// `@revoked`: the key must never be accepted for the hosts.
    Revoked,
}

/// The host field of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hosts {
    /// `pattern,pattern,...`, lowercased.
    Patterns(Vec<String>),
    /// `|1|base64(salt)|base64(hmac-sha1(salt, name))`, as `ssh-keygen -H` writes.
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
}

/// One usable line.
#[derive(Debug, Clone)]
pub struct Entry {
    /// 1-based line number, for messages.
    pub line: usize,
    pub marker: Marker,
    hosts: Hosts,
    pub key: PublicKey,
}

/// The parsed lines of one file.
#[derive(Debug, Clone, Default)]
pub struct KnownHosts {
    entries: Vec<Entry>,
}

/// The name a host is looked up by: `host` on port 22, `[host]:port` otherwise, lowercased.
pub fn lookup_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

impl KnownHosts {
    /// Reads `path`; a missing file has no entries.
    pub fn read(path: &Path) -> std::io::Result<KnownHosts> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(KnownHosts::parse(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KnownHosts::default()),
            Err(e) => Err(e),
        }
    }

    pub fn parse(text: &str) -> KnownHosts {
        let entries = text
            .lines()
            .enumerate()
            .filter_map(|(i, l)| {
                let entry = parse_line(i + 1, l);
                if entry.is_none() && !is_blank_or_comment(l) {
                    tracing::debug!(
                        line = i + 1,
                        "skipping a known_hosts line that does not parse"
                    );
                }
                entry
            })
            .collect();
        KnownHosts { entries }
    }

    /// The entries whose host field matches `host` on `port`, in file order.
    pub fn matching<'a>(&'a self, host: &str, port: u16) -> impl Iterator<Item = &'a Entry> {
        let name = lookup_name(host, port);
        self.entries.iter().filter(move |e| e.hosts.matches(&name))
    }
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty() || t.starts_with('#')
}

/// `[marker] hosts keytype base64 [comment]`.
fn parse_line(line: usize, text: &str) -> Option<Entry> {
    if is_blank_or_comment(text) {
        return None;
    }
    let mut fields = text.split_whitespace();
    let mut first = fields.next()?;
    let marker = match first {
        "@cert-authority" => Marker::CertAuthority,
        "@revoked" => Marker::Revoked,
        m if m.starts_with('@') => return None, // a marker we do not know: ssh skips it too
        _ => Marker::Key,
    };
    if marker != Marker::Key {
        first = fields.next()?;
    }
    let hosts = parse_hosts(first)?;
    let key_type = fields.next()?;
    let blob = fields.next()?;
    let key = PublicKey::from_openssh(&format!("{key_type} {blob}")).ok()?;
    Some(Entry {
        line,
        marker,
        hosts,
        key,
    })
}

fn parse_hosts(field: &str) -> Option<Hosts> {
    if let Some(rest) = field.strip_prefix("|1|") {
        let (salt, hash) = rest.split_once('|')?;
        let salt = BASE64.decode(salt.as_bytes()).ok()?;
        let hash = BASE64.decode(hash.as_bytes()).ok()?;
        return Some(Hosts::Hashed { salt, hash });
    }
    let patterns: Vec<String> = field
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    (!patterns.is_empty()).then_some(Hosts::Patterns(patterns))
}

impl Hosts {
    /// ssh's `match_hostname`: a negated pattern that matches excludes the name whatever else
    /// matches; otherwise any positive pattern that matches includes it.
    fn matches(&self, name: &str) -> bool {
        match self {
            Hosts::Hashed { salt, hash } => {
                let Ok(mac) = Hmac::<Sha1>::new_from_slice(salt) else {
                    return false;
                };
                mac.chain_update(name.as_bytes()).verify_slice(hash).is_ok()
            }
            Hosts::Patterns(patterns) => {
                let mut hit = false;
                for p in patterns {
                    match p.strip_prefix('!') {
                        Some(neg) if wildcard(neg.as_bytes(), name.as_bytes()) => return false,
                        Some(_) => {}
                        None => hit |= wildcard(p.as_bytes(), name.as_bytes()),
                    }
                }
                hit
            }
        }
    }
}

/// `*` (any run, also empty) and `?` (any one character) against the whole name.
fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    // Iterative with one backtrack point: linear enough for host names, never recursive.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const K2: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA6rWI3G1sz07DnfFlrouTcysQlj2P+jpNSOEWD9OJ3X";

    fn key(s: &str) -> PublicKey {
        PublicKey::from_openssh(s).unwrap()
    }

    fn lines(kh: &KnownHosts, host: &str, port: u16) -> Vec<(usize, Marker)> {
        kh.matching(host, port)
            .map(|e| (e.line, e.marker))
            .collect()
    }

    #[test]
    fn markers_patterns_and_ports() {
        let text = format!(
            "# comment\n\
             \n\
             files.example.com,10.0.0.5 {K1}\n\
             @cert-authority *.example.com {K2} ca@example\n\
             @revoked * {K1}\n\
             [files.example.com]:2222 {K2}\n\
             @cert-authority *.example.com,!bad.example.com {K1}\n\
             @unknown-marker * {K1}\n\
             broken-line-without-key\n\
             host ssh-ed25519 not-base64!!\n\
             [*.example.com]:* {K1}\n"
        );
        let kh = KnownHosts::parse(&text);
        assert_eq!(
            lines(&kh, "files.example.com", 22),
            [
                (3, Marker::Key),
                (4, Marker::CertAuthority),
                (5, Marker::Revoked),
                (7, Marker::CertAuthority),
            ]
        );
        // Another port: only `[host]:port` names, and patterns that match those.
        assert_eq!(
            lines(&kh, "files.example.com", 2222),
            [(5, Marker::Revoked), (6, Marker::Key), (11, Marker::Key)]
        );
        // Negation wins over a positive match in the same line.
        assert_eq!(
            lines(&kh, "bad.example.com", 22),
            [(4, Marker::CertAuthority), (5, Marker::Revoked)]
        );
        // Case-insensitive, like ssh.
        assert_eq!(lines(&kh, "FILES.example.COM", 22).len(), 4);
        assert_eq!(
            lines(&kh, "10.0.0.5", 22),
            [(3, Marker::Key), (5, Marker::Revoked)]
        );
        assert_eq!(kh.matching("10.0.0.5", 22).next().unwrap().key, key(K1));
    }

    #[test]
    fn hashed_names_match_as_ssh_keygen_writes_them() {
        // `ssh-keygen -H` of "localhost" and of "[localhost]:13265" lines (salt, hmac-sha1).
        let salt = b"0123456789abcdefghij";
        let hashed = |name: &str| {
            let mac = Hmac::<Sha1>::new_from_slice(salt)
                .unwrap()
                .chain_update(name.as_bytes())
                .finalize()
                .into_bytes();
            format!("|1|{}|{}", BASE64.encode(salt), BASE64.encode(&mac))
        };
        let text = format!(
            "{} {K1}\n@revoked {} {K2}\n",
            hashed("localhost"),
            hashed("[localhost]:13265")
        );
        let kh = KnownHosts::parse(&text);
        assert_eq!(lines(&kh, "localhost", 22), [(1, Marker::Key)]);
        assert_eq!(lines(&kh, "localhost", 13265), [(2, Marker::Revoked)]);
        assert!(lines(&kh, "otherhost", 22).is_empty());
        // A hashed line of russh's own test file (made by OpenSSH).
        let real = format!("|1|O33ESRMWPVkMYIwJ1Uw+n877jTo=|nuuC5vEqXlEZ/8BXQR7m619W6Ak= {K1}");
        let kh = KnownHosts::parse(&real);
        assert_eq!(lines(&kh, "example.com", 22).len(), 1, "{real}");
    }

    #[test]
    fn wildcards() {
        for (p, n, want) in [
            ("*", "", true),
            ("*", "anything", true),
            ("?", "a", true),
            ("?", "ab", false),
            ("*.example.com", "a.b.example.com", true),
            ("*.example.com", "example.com", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("10.0.0.?", "10.0.0.7", true),
            ("10.0.0.?", "10.0.0.17", false),
            ("[h]:2222", "[h]:2222", true),
            ("[*]:2222", "[h]:2222", true),
            ("[*]:2222", "[h]:22", false),
        ] {
            assert_eq!(wildcard(p.as_bytes(), n.as_bytes()), want, "{p} vs {n}");
        }
    }
}
