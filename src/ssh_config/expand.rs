//! ssh_config(5) TOKENS and ENVIRONMENT VARIABLES in values: `%h`, `%r`, `%p`, `%u`, `%d` and
//! friends, `${VAR}`, and a leading `~`. Each keyword takes its own set of tokens; an unknown
//! one is an error that names it (ssh refuses them too).

use std::path::{Path, PathBuf};

use super::parse::tilde;

/// The values tokens stand for, as known once the whole configuration has been read.
#[derive(Clone, Debug)]
pub struct Tokens {
    /// `%d`: the local user's home directory.
    pub home: PathBuf,
    /// `%u`: the local user name.
    pub local_user: String,
    /// `%i`: the local user id.
    pub local_uid: u32,
    /// `%h`: the remote host name (after `HostName`).
    pub host: String,
    /// `%n`, `%k`: the host as given (the alias).
    pub original_host: String,
    /// `%r`: the remote user name.
    pub remote_user: String,
    /// `%p`: the remote port.
    pub port: u16,
    /// `%j`: ProxyJump, or empty.
    pub proxy_jump: String,
}

/// Every token the path keywords take (IdentityFile, CertificateFile, IdentityAgent,
/// UserKnownHostsFile); `%C` (a hash ssh computes) and `%l`/`%L` (local host name) are not.
const PATH_TOKENS: &str = "%dhiknprju";

/// Expands `%x` tokens in `value`; `allowed` lists the token letters this keyword takes.
pub fn percent(value: &str, t: &Tokens, allowed: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(tok) = chars.next() else {
            return Err(format!(
                "'{value}' ends with a lone '%' (write %% for a percent sign)"
            ));
        };
        if !allowed.contains(tok) {
            return Err(format!(
                "'{value}': the token %{tok} is not supported here (supported: {})",
                allowed
                    .chars()
                    .map(|c| format!("%{c}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        match tok {
            '%' => out.push('%'),
            'd' => out.push_str(&t.home.to_string_lossy()),
            'h' => out.push_str(&t.host),
            'i' => out.push_str(&t.local_uid.to_string()),
            'k' | 'n' => out.push_str(&t.original_host),
            'p' => out.push_str(&t.port.to_string()),
            'r' => out.push_str(&t.remote_user),
            'u' => out.push_str(&t.local_user),
            'j' => out.push_str(&t.proxy_jump),
            _ => unreachable!("every allowed token is handled"),
        }
    }
    Ok(out)
}

/// `${NAME}` from the environment; an unset variable is an error naming it.
pub fn env_vars(value: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("'{value}': '${{' without a closing '}}'"));
        };
        let name = &after[..end];
        match std::env::var(name) {
            Ok(v) => out.push_str(&v),
            Err(_) => {
                return Err(format!(
                    "'{value}': the environment variable {name} is not set"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A path value as ssh expands IdentityFile and its kin: `~`, `${VAR}`, then tokens. A
/// relative result is taken relative to `~/.ssh` (the plugin has no meaningful working
/// directory; see the README).
pub fn path(value: &str, t: &Tokens) -> Result<PathBuf, String> {
    let v = env_vars(value)?;
    let v = percent(&v, t, PATH_TOKENS)?;
    let p = tilde(&v, &t.home)?;
    Ok(if p.is_absolute() {
        p
    } else {
        t.home.join(".ssh").join(p)
    })
}

/// `HostName` takes `%h` (the name as given) and `%%` only.
pub fn hostname(value: &str, original_host: &str) -> Result<String, String> {
    let t = Tokens {
        home: Path::new("/").to_path_buf(),
        local_user: String::new(),
        local_uid: 0,
        host: original_host.to_string(),
        original_host: original_host.to_string(),
        remote_user: String::new(),
        port: 0,
        proxy_jump: String::new(),
    };
    percent(value, &t, "%h")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens {
            home: PathBuf::from("/home/me"),
            local_user: "me".into(),
            local_uid: 1000,
            host: "files.example.com".into(),
            original_host: "files".into(),
            remote_user: "backup".into(),
            port: 2222,
            proxy_jump: String::new(),
        }
    }

    #[test]
    fn tokens_expand() {
        let t = tokens();
        assert_eq!(
            path("~/.ssh/id_%r@%h:%p", &t).unwrap(),
            PathBuf::from("/home/me/.ssh/id_backup@files.example.com:2222")
        );
        assert_eq!(
            path("%d/keys/%u-%n-%i%%", &t).unwrap(),
            PathBuf::from("/home/me/keys/me-files-1000%")
        );
        assert_eq!(
            path("id_rsa", &t).unwrap(),
            PathBuf::from("/home/me/.ssh/id_rsa")
        );
        let e = path("~/.ssh/%C", &t).unwrap_err();
        assert!(e.contains("%C") && e.contains("not supported"), "{e}");
        assert!(path("50%", &t).unwrap_err().contains("%%"));
        assert_eq!(
            hostname("%h.example.com", "web").unwrap(),
            "web.example.com"
        );
        assert!(hostname("%r.example.com", "web").is_err());
    }

    #[test]
    fn environment() {
        // SAFETY: unit tests in this module are the only ones touching this variable.
        unsafe { std::env::set_var("DVS_TEST_KEYDIR", "/keys") };
        assert_eq!(env_vars("${DVS_TEST_KEYDIR}/a").unwrap(), "/keys/a");
        let e = env_vars("${DVS_NO_SUCH_VARIABLE}/a").unwrap_err();
        assert!(e.contains("DVS_NO_SUCH_VARIABLE"), "{e}");
        assert!(env_vars("${open").is_err());
    }
}
