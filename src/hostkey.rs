//! Host-key policy: the one place that decides whether a server's key is trusted.
//!
//! Order, as ssh(1) decides (known_hosts lines are read by `known_hosts`):
//! 1. a key marked `@revoked` for the host is refused, pinned or not; so is a certificate whose
//!    CA is marked `@revoked`;
//! 2. a host certificate whose CA a `@cert-authority` line trusts for the host is accepted when
//!    it is valid (a host certificate, its signature, its validity period, its principals, no
//!    critical options) and refused when not; a certificate from a CA no line trusts counts as
//!    its bare key from here on;
//! 3. an explicit or pinned fingerprint (`hostkey=`, the plugin's pin of the first key seen);
//! 4. plain known_hosts lines;
//! 5. `StrictHostKeyChecking` for keys seen for the first time. The plugin pins the first key it
//!    accepts in the volume's state; the `mount` command records it in known_hosts like ssh does.
//!
//! The last third is unit tests.

use std::path::{Path, PathBuf};

use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::{Algorithm, Certificate, EcdsaCurve, HashAlg, PublicKey, PublicKeyOrCertificate};

use crate::known_hosts::{Entry, KnownHosts, Marker};
use crate::options::StrictHostKeyChecking;
use crate::ssh::display_addr;

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
    /// The server is a jump host (`proxyjump`), not the target: only the advice differs.
    pub jump_host: bool,
}

/// The outcome for a key the server presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Matches a pinned fingerprint or a known_hosts entry, or carries a valid certificate
    /// of a trusted CA.
    Known,
    /// Not known before; accepted under accept-new (or `no`). The caller may pin it.
    New,
    /// Refused, with a message telling the user what to do.
    Refused(String),
}

/// Host-key certificate types offered when known_hosts trusts a CA for the host: every key
/// type russh verifies, as ssh offers them.
pub const CERTIFICATE_ALGORITHMS: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP256,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP384,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP521,
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha512),
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha256),
    },
];

/// `SHA256:<base64>`, as `ssh-keygen -lf` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn key_fingerprint(key: &KeyData) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The known_hosts file of the policy, read; `None` when there is none or it cannot be read
/// (logged: the checks that need it then fall through to the pin and StrictHostKeyChecking).
fn load(policy: &Policy) -> Option<(&Path, KnownHosts)> {
    let path = policy.known_hosts.as_deref()?;
    match KnownHosts::read(path) {
        Ok(kh) => Some((path, kh)),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read known_hosts file");
            None
        }
    }
}

/// Whether a `@cert-authority` line applies to the host: then the server is asked for a host
/// certificate (a server without one still presents its plain key).
pub fn trusts_a_certificate_authority(policy: &Policy) -> bool {
    load(policy).is_some_and(|(_, kh)| {
        kh.matching(&policy.host, policy.port)
            .any(|e| e.marker == Marker::CertAuthority)
    })
}

/// Where known_hosts marks the key with fingerprint `pinned` `@revoked` for the host, as
/// "FILE line N"; for Status, which shows a pin that can no longer connect.
pub fn revoked_pin(known_hosts: &Path, host: &str, port: u16, pinned: &str) -> Option<String> {
    let kh = KnownHosts::read(known_hosts).ok()?;
    kh.matching(host, port)
        .find(|e| e.marker == Marker::Revoked && fingerprint(&e.key) == pinned)
        .map(|e| format!("{} line {}", known_hosts.display(), e.line))
}

/// Decides whether to trust what the server presented.
pub fn check(policy: &Policy, presented: &PublicKeyOrCertificate) -> Verdict {
    let key = presented.public_key();
    let seen = fingerprint(&key);
    let target = display_addr(&policy.host, policy.port);
    let refused =
        |why: String| Verdict::Refused(format!("host key verification failed for {target}: {why}"));
    let file = load(policy);
    let entries: Vec<&Entry> = match &file {
        Some((_, kh)) => kh.matching(&policy.host, policy.port).collect(),
        None => Vec::new(),
    };
    let at = |e: &Entry| match &file {
        Some((path, _)) => format!("{} line {}", path.display(), e.line),
        None => format!("line {}", e.line),
    };
    let certificate = presented.certificate();

    // 1. Revocation beats everything, a pin included.
    for e in entries.iter().filter(|e| e.marker == Marker::Revoked) {
        if e.key.key_data() == key.key_data() {
            return refused(format!(
                "its key {seen} is marked @revoked in {}. The server needs a new host key (and \
                 the volume a new pin: recreate it, with -o hostkey=<new key> if you pin it)",
                at(e)
            ));
        }
        if let Some(cert) = certificate
            && e.key.key_data() == cert.signature_key()
        {
            return refused(format!(
                "its host certificate is signed by the certificate authority {}, which is marked \
                 @revoked in {}. Re-sign the host key with a CA that is not revoked",
                key_fingerprint(cert.signature_key()),
                at(e)
            ));
        }
    }

    // 2. A certificate of a trusted CA decides by itself.
    let mut untrusted_ca = None;
    if let Some(cert) = certificate {
        let ca = entries.iter().find(|e| {
            e.marker == Marker::CertAuthority && e.key.key_data() == cert.signature_key()
        });
        match ca {
            Some(e) => {
                return match validate_host_certificate(cert, &policy.host, now()) {
                    Ok(()) => {
                        tracing::debug!(%target, key = %seen, ca = %at(e), "host certificate accepted");
                        Verdict::Known
                    }
                    Err(why) => refused(format!(
                        "its host certificate (for key {seen}, signed by the CA of {}) {why}",
                        at(e)
                    )),
                };
            }
            None => untrusted_ca = Some(key_fingerprint(cert.signature_key())),
        }
    }

    // 3. The pin.
    if let Some(expected) = &policy.pinned {
        if *expected == seen {
            return Verdict::Known;
        }
        if policy.strict == StrictHostKeyChecking::No {
            tracing::warn!(%target, expected = %expected, seen = %seen,
                "host key differs from the pinned one; accepted because StrictHostKeyChecking=no");
            return Verdict::New;
        }
        let fix = if policy.jump_host {
            "remove the volume and create it again: each jump host's key is pinned at the first \
             mount"
                .to_string()
        } else {
            format!("recreate the volume with -o hostkey={seen}")
        };
        return refused(format!(
            "expected {expected} but the server presented {seen}. The server's key changed or \
             someone is intercepting the connection. If the change is legitimate, {fix}"
        ));
    }

    // 4. Plain known_hosts lines: any line with this key will do; a line of the same type
    //    with another key means the key changed.
    let plain: Vec<&&Entry> = entries.iter().filter(|e| e.marker == Marker::Key).collect();
    if plain.iter().any(|e| e.key.key_data() == key.key_data()) {
        return Verdict::Known;
    }
    if let Some(e) = plain.iter().find(|e| e.key.algorithm() == key.algorithm()) {
        if policy.strict == StrictHostKeyChecking::No {
            return Verdict::New;
        }
        return refused(format!(
            "{} records a different key than the one the server presented ({seen}). Remove that \
             line if the server's key really changed",
            at(e)
        ));
    }

    // 5. A key seen for the first time.
    match policy.strict {
        StrictHostKeyChecking::Yes => {
            let trusted_ca = entries.iter().any(|e| e.marker == Marker::CertAuthority);
            let why = match (&untrusted_ca, trusted_ca) {
                (Some(ca), _) => format!(
                    "the server presented a host certificate signed by {ca}, a certificate \
                     authority no @cert-authority line of known_hosts trusts for this host"
                ),
                (None, true) => "the server presented no certificate signed by the certificate \
                     authority known_hosts trusts for this host"
                    .to_string(),
                (None, false) => "it is not known".to_string(),
            };
            let fix = if policy.jump_host {
                "Add the jump host's key to known_hosts"
            } else {
                "Add it to known_hosts or pass -o hostkey=<fingerprint>"
            };
            refused(format!(
                "the server's key {seen} is not trusted: {why}, and StrictHostKeyChecking=yes. {fix}"
            ))
        }
        StrictHostKeyChecking::AcceptNew | StrictHostKeyChecking::No => {
            if policy.learn
                && let Some(path) = &policy.known_hosts
                && let Err(e) = russh::keys::known_hosts::learn_known_hosts_path(
                    &policy.host,
                    policy.port,
                    &key,
                    path,
                )
            {
                tracing::warn!(file = %path.display(), error = %e, "cannot record the host key");
            }
            Verdict::New
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What ssh's `check_host_cert` checks of a host certificate whose CA is trusted (the CA
/// match itself is the caller's): it is a host certificate, its signature verifies, `now` is
/// inside its validity period, `host` is one of its principals (any host when it lists none, as
/// ssh), and it has no critical options (none are defined for host certificates).
fn validate_host_certificate(cert: &Certificate, host: &str, now: u64) -> Result<(), String> {
    if cert.cert_type() != CertType::Host {
        return Err(
            "is a user certificate, not a host certificate (sign it with ssh-keygen -h)".into(),
        );
    }
    let ca = cert.signature_key().fingerprint(HashAlg::Sha256);
    let shown = |t: u64| {
        i64::try_from(t)
            .ok()
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            .map_or_else(|| t.to_string(), |d| d.to_rfc3339())
    };
    if now < cert.valid_after() {
        return Err(format!("is not valid before {}", shown(cert.valid_after())));
    }
    if now >= cert.valid_before() {
        return Err(format!(
            "expired at {}: sign the host key again (ssh-keygen -s CA -h -V ...)",
            shown(cert.valid_before())
        ));
    }
    if cert.validate_at(now, [&ca]).is_err() {
        return Err("has a signature that does not verify against its CA key".into());
    }
    let principals = cert.valid_principals();
    let host = host.to_ascii_lowercase();
    if !principals.is_empty() && !principals.contains(&host) {
        return Err(format!(
            "is valid for {}, not for {host}: connect by one of those names or sign the key \
             with -n {host}",
            principals.join(", ")
        ));
    }
    if !cert.critical_options().is_empty() {
        let names: Vec<&str> = cert.critical_options().keys().map(String::as_str).collect();
        return Err(format!(
            "has critical options ({}), which host certificates do not support",
            names.join(", ")
        ));
    }
    Ok(())
}

/// `~/.ssh/known_hosts` of the user running us (in the plugin: the `sshkey` mount).
pub fn default_known_hosts() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".ssh").join("known_hosts"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::PrivateKey;
    use russh::keys::ssh_key::certificate::Builder;

    fn ed25519() -> PrivateKey {
        PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519).unwrap()
    }

    struct Cert {
        host_key: PrivateKey,
        ca: PrivateKey,
        kind: CertType,
        principals: Vec<&'static str>,
        valid: (u64, u64),
        critical: Option<(&'static str, &'static str)>,
    }

    impl Cert {
        fn new() -> Cert {
            Cert {
                host_key: ed25519(),
                ca: ed25519(),
                kind: CertType::Host,
                principals: vec!["files.example.com"],
                valid: (1_000, 2_000),
                critical: None,
            }
        }

        fn sign(&self) -> Certificate {
            let mut b = Builder::new_with_random_nonce(
                &mut russh::keys::key::safe_rng(),
                self.host_key.public_key().key_data().clone(),
                self.valid.0,
                self.valid.1,
            )
            .unwrap();
            b.cert_type(self.kind).unwrap();
            b.key_id("test").unwrap();
            if self.principals.is_empty() {
                b.all_principals_valid().unwrap();
            }
            for p in &self.principals {
                b.valid_principal(*p).unwrap();
            }
            if let Some((k, v)) = self.critical {
                b.critical_option(k, v).unwrap();
            }
            b.sign(&self.ca).unwrap()
        }
    }

    #[test]
    fn host_certificate_checks() {
        let ok = |c: &Cert, host: &str, now: u64| validate_host_certificate(&c.sign(), host, now);
        let c = Cert::new();
        assert_eq!(ok(&c, "files.example.com", 1_500), Ok(()));
        assert_eq!(ok(&c, "FILES.example.com", 1_000), Ok(()));
        let e = ok(&c, "files.example.com", 999).unwrap_err();
        assert!(e.contains("not valid before"), "{e}");
        let e = ok(&c, "files.example.com", 2_000).unwrap_err();
        assert!(e.contains("expired"), "{e}");
        let e = ok(&c, "other.example.com", 1_500).unwrap_err();
        assert!(
            e.contains("files.example.com") && e.contains("other.example.com"),
            "{e}"
        );
        let any = Cert {
            principals: vec![],
            ..Cert::new()
        };
        assert_eq!(ok(&any, "whatever", 1_500), Ok(()));
        let user = Cert {
            kind: CertType::User,
            ..Cert::new()
        };
        assert!(
            ok(&user, "files.example.com", 1_500)
                .unwrap_err()
                .contains("user certificate")
        );
        let crit = Cert {
            critical: Some(("force-command", "/bin/true")),
            ..Cert::new()
        };
        assert!(
            ok(&crit, "files.example.com", 1_500)
                .unwrap_err()
                .contains("force-command")
        );
        // A certificate whose signed fields were changed after signing.
        let mut forged = Cert::new().sign().to_bytes().unwrap();
        let pos = forged
            .windows(b"files.example.com".len())
            .position(|w| w == b"files.example.com")
            .unwrap();
        forged[pos] = b'F';
        let forged = Certificate::from_bytes(&forged).unwrap();
        let e = validate_host_certificate(&forged, "Files.example.com", 1_500).unwrap_err();
        assert!(e.contains("signature"), "{e}");
    }

    fn policy(dir: &Path, known_hosts: &str, strict: StrictHostKeyChecking) -> Policy {
        let path = dir.join("known_hosts");
        std::fs::write(&path, known_hosts).unwrap();
        Policy {
            host: "files.example.com".into(),
            port: 22,
            strict,
            pinned: None,
            known_hosts: Some(path),
            learn: false,
            jump_host: false,
        }
    }

    fn line(prefix: &str, key: &PublicKey) -> String {
        format!("{prefix} {}\n", key.to_openssh().unwrap())
    }

    #[test]
    fn revoked_certified_pinned_and_known() {
        let dir = std::env::temp_dir().join(format!("dvs-hostkey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = Cert {
            valid: (0, u64::MAX),
            ..Cert::new()
        };
        let cert: PublicKeyOrCertificate = c.sign().into();
        let plain: PublicKeyOrCertificate = c.host_key.public_key().clone().into();
        let ca = c.ca.public_key();
        let host = c.host_key.public_key();
        let yes = StrictHostKeyChecking::Yes;

        // Trusted CA: accepted with an empty pin under StrictHostKeyChecking=yes.
        let p = policy(&dir, &line("@cert-authority *.example.com", ca), yes);
        assert!(trusts_a_certificate_authority(&p));
        assert_eq!(check(&p, &cert), Verdict::Known);
        // The same server's bare key is not trusted by the CA line.
        let Verdict::Refused(m) = check(&p, &plain) else {
            panic!()
        };
        assert!(
            m.contains("no certificate signed by the certificate authority"),
            "{m}"
        );
        // A CA for other hosts only: its certificate counts as the bare key.
        let p = policy(&dir, &line("@cert-authority *.other.com", ca), yes);
        assert!(!trusts_a_certificate_authority(&p));
        let Verdict::Refused(m) = check(&p, &cert) else {
            panic!()
        };
        assert!(m.contains("no @cert-authority line"), "{m}");
        // ... which a pin or plain line still accepts, as ssh falls back to the plain key.
        let p = policy(&dir, &line("files.example.com", host), yes);
        assert_eq!(check(&p, &cert), Verdict::Known);

        // Revoked: the key, even pinned; a certificate's CA.
        let mut p = policy(
            &dir,
            &line("@revoked *", host),
            StrictHostKeyChecking::AcceptNew,
        );
        p.pinned = Some(fingerprint(host));
        let Verdict::Refused(m) = check(&p, &plain) else {
            panic!()
        };
        assert!(m.contains("@revoked") && m.contains("line 1"), "{m}");
        assert!(matches!(check(&p, &cert), Verdict::Refused(_)));
        let kh = p.known_hosts.clone().unwrap();
        assert!(revoked_pin(&kh, "files.example.com", 22, &fingerprint(host)).is_some());
        assert!(revoked_pin(&kh, "files.example.com", 22, &fingerprint(ca)).is_none());
        let both = line("@cert-authority *", ca) + &line("@revoked *", ca);
        let p = policy(&dir, &both, yes);
        let Verdict::Refused(m) = check(&p, &cert) else {
            panic!()
        };
        assert!(
            m.contains("certificate authority") && m.contains("line 2"),
            "{m}"
        );

        // A CA that matches but a certificate that is not valid: refused, no fallback.
        let stale = Cert {
            valid: (0, 1),
            ..Cert::new()
        };
        let p = policy(
            &dir,
            &(line("@cert-authority *", stale.ca.public_key())
                + &line("files.example.com", stale.host_key.public_key())),
            yes,
        );
        let Verdict::Refused(m) = check(&p, &stale.sign().into()) else {
            panic!()
        };
        assert!(m.contains("expired"), "{m}");

        // Plain lines: another key of the same type is a changed key, even after a match
        // of another type would have been possible.
        let other = ed25519();
        let p = policy(&dir, &line("files.example.com", other.public_key()), yes);
        let Verdict::Refused(m) = check(&p, &plain) else {
            panic!()
        };
        assert!(m.contains("records a different key"), "{m}");
        let two = line("files.example.com", other.public_key()) + &line("files.example.com", host);
        assert_eq!(check(&policy(&dir, &two, yes), &plain), Verdict::Known);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
