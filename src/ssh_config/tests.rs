//! The ssh_config(5) cases: patterns and negation, first value wins, accumulating keywords,
//! Include (globs, relative paths, conditional inclusion), Match, errors with file:line, and
//! the volume options winning over the file. Plus a property: no input makes the reader panic.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::*;
use crate::options::{self, Context, IdentityAgent, MountOptions, SshConfigFile};

/// A throwaway home with `.ssh/config` holding `text` (and other files written with `file`).
struct Home(PathBuf);

impl Home {
    fn new(text: &str) -> Home {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "dvs-sshcfg-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join(".ssh")).unwrap();
        let h = Home(p);
        h.file("config", text);
        h
    }

    fn file(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.0.join(".ssh").join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    fn config(&self) -> PathBuf {
        self.0.join(".ssh/config")
    }

    fn query(&self, host: &str, user: Option<&str>) -> Query {
        Query {
            host: host.into(),
            user: user.map(str::to_string),
            local_user: "me".into(),
            home: self.0.clone(),
        }
    }

    fn resolve(&self, host: &str) -> HostConfig {
        resolve(&self.config(), &self.query(host, None)).unwrap()
    }

    fn error(&self, host: &str) -> String {
        resolve(&self.config(), &self.query(host, None))
            .unwrap_err()
            .to_string()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn val<T: Clone>(s: &Option<Setting<T>>) -> Option<T> {
    s.as_ref().map(|s| s.value.clone())
}

#[test]
fn host_patterns_and_first_value_wins() {
    // The layout ssh_config(5) recommends: specific blocks first, defaults under `Host *`.
    let h = Home::new(
        "# comment\n\
         Host files\n\
         \x20 HostName files.example.com\n\
         \x20 User backup\n\
         \x20 Port 2222\n\
         Host *.example.com !bad.example.com\n\
         \x20 User web\n\
         \x20 Port 2200\n\
         Host *\n\
         \x20 User fallback\n\
         \x20 Port 22\n\
         \x20 ServerAliveInterval 30\n",
    );
    let c = h.resolve("files");
    assert_eq!(val(&c.hostname).as_deref(), Some("files.example.com"));
    assert_eq!(val(&c.user).as_deref(), Some("backup"));
    assert_eq!(val(&c.port), Some(2222));
    assert_eq!(val(&c.server_alive_interval), Some(Duration::from_secs(30)));
    assert_eq!(c.matched.len(), 2);
    assert_eq!(c.matched[0].line, "Host files");
    assert_eq!(c.matched[0].origin.line, 2);
    assert_eq!(c.port.as_ref().unwrap().origin.line, 5);

    // Host matches the name as given, not the HostName it became.
    let c = h.resolve("good.example.com");
    assert_eq!(val(&c.user).as_deref(), Some("web"));
    assert_eq!(val(&c.hostname), None);
    let c = h.resolve("bad.example.com");
    assert_eq!(val(&c.user).as_deref(), Some("fallback"));
    assert_eq!(val(&c.port), Some(22));
    // Case-insensitive, as ssh lowercases host names.
    assert_eq!(val(&h.resolve("FILES").user).as_deref(), Some("backup"));
    // Lines before the first Host apply to every host.
    let h = Home::new("Port 99\nHost a\nPort 1\n");
    assert_eq!(val(&h.resolve("a").port), Some(99));
}

#[test]
fn hostname_token_and_accumulating_keywords() {
    let h = Home::new(
        "Host web?\n\
         \x20 HostName %h.internal\n\
         \x20 IdentityFile ~/.ssh/web\n\
         \x20 CertificateFile ~/.ssh/web-cert.pub\n\
         Host *\n\
         \x20 IdentityFile ~/.ssh/id_%r\n\
         \x20 IdentityFile ~/.ssh/web\n\
         \x20 IdentitiesOnly yes\n",
    );
    let c = h.resolve("web1");
    assert_eq!(val(&c.hostname).as_deref(), Some("web1.internal"));
    let ids: Vec<&str> = c.identity_files.iter().map(|s| s.value.as_str()).collect();
    assert_eq!(
        ids,
        ["~/.ssh/web", "~/.ssh/id_%r"],
        "accumulate, without duplicates"
    );
    assert_eq!(c.certificate_files.len(), 1);
    assert_eq!(val(&c.identities_only), Some(true));
}

#[test]
fn match_criteria() {
    let h = Home::new(
        "Host alias\n\
         \x20 HostName real.example.com\n\
         Match host real.example.com user admin\n\
         \x20 Port 2201\n\
         Match host real.example.com\n\
         \x20 IdentityFile ~/.ssh/real\n\
         Match originalhost alias !user admin\n\
         \x20 Port 2202\n\
         Match localuser me !host *.example.com\n\
         \x20 User local-me\n\
         Match all\n\
         \x20 ConnectTimeout 5\n",
    );
    // Match host sees the HostName set above it; Match originalhost the alias.
    let c = resolve(&h.config(), &h.query("alias", Some("admin"))).unwrap();
    assert_eq!(val(&c.port), Some(2201));
    assert_eq!(c.identity_files.len(), 1);
    let c = resolve(&h.config(), &h.query("alias", Some("bob"))).unwrap();
    assert_eq!(val(&c.port), Some(2202));
    assert_eq!(val(&c.connect_timeout), Some(Some(Duration::from_secs(5))));
    // `Match user` without user@ in sshcmd: the local user.
    let c = h.resolve("other");
    assert_eq!(val(&c.user).as_deref(), Some("local-me"));
    assert_eq!(val(&c.port), None);
    assert!(c.matched.iter().any(|m| m.line == "Match all"));
}

#[test]
fn match_final_rereads() {
    let h = Home::new("Match final host x\n  Port 7\nHost x\n  User u\n");
    let c = h.resolve("x");
    assert_eq!(val(&c.port), Some(7));
    assert_eq!(val(&c.user).as_deref(), Some("u"));
}

#[test]
fn unsupported_things_are_errors_with_file_and_line() {
    let h = Home::new("Host a\n  Port 1\nMatch exec \"true\"\n  Port 2\n");
    let e = h.error("a");
    assert!(
        e.contains("Match exec") && e.contains(&format!("{}:3", h.config().display())),
        "{e}"
    );
    // `exec` after a criterion that failed is never reached, as in ssh.
    let h = Home::new("Match host other exec \"true\"\n  Port 2\n");
    assert_eq!(val(&h.resolve("a").port), None);

    let h = Home::new("Host a\n  ProxyCommand ssh -W %h:%p bastion\n");
    let e = h.error("a");
    assert!(e.contains("ProxyCommand") && e.contains(":2"), "{e}");
    // ... only for the hosts it applies to, and `none` is fine.
    assert_eq!(h.resolve("b"), HostConfig::default());
    let h = Home::new("Host a\n  ProxyCommand none\n  ProxyJump j\n");
    assert_eq!(val(&h.resolve("a").proxy), Some(Proxy::Direct));
    let h = Home::new("Host a\n  ProxyJump me@bastion:2200,other\n  ProxyCommand nc %h %p\n");
    assert_eq!(
        val(&h.resolve("a").proxy),
        Some(Proxy::Jump("me@bastion:2200,other".into()))
    );

    let h = Home::new("Host *\n  Ciphers aes128-cbc,3des-cbc\n");
    let e = h.error("a");
    assert!(
        e.contains("Ciphers") && e.contains("aes256-gcm@openssh.com"),
        "{e}"
    );
    let h = Home::new("Host *\n  Port 70000\n");
    assert!(h.error("a").contains("Port '70000'"));
    let h = Home::new("Host *\n  Port\n");
    assert!(h.error("a").contains("no value after Port"));
    let h = Home::new("Host *\n  IdentityFile \"unclosed\n");
    assert!(h.error("a").contains("quote"));
    let h = Home::new("Host *\n  StrictHostKeyChecking maybe\n");
    assert!(h.error("a").contains("StrictHostKeyChecking"));
}

#[test]
fn unknown_keywords_are_ignored() {
    let h = Home::new(
        "Host *\n  ForwardAgent yes\n  AddKeysToAgent yes\n  UseKeychain yes\n  \
         LocalForward 8080 localhost:80\n  SomethingNew 1\n  Port 2022\n",
    );
    assert_eq!(val(&h.resolve("x").port), Some(2022));
}

#[test]
fn ciphers_forms() {
    let ciphers = |v: &str| {
        let h = Home::new(&format!("Ciphers {v}\n"));
        val(&h.resolve("x").ciphers).unwrap()
    };
    assert_eq!(ciphers("aes128-ctr,aes256-cbc"), ["aes128-ctr"]);
    assert_eq!(
        ciphers("-aes*-ctr"),
        [
            "aes256-gcm@openssh.com",
            "aes128-gcm@openssh.com",
            "chacha20-poly1305@openssh.com"
        ]
    );
    assert_eq!(ciphers("^aes128-ctr")[0], "aes128-ctr");
    assert_eq!(ciphers("+aes128-ctr").len(), KNOWN_CIPHERS.len());
}

#[test]
fn include_globs_relative_and_conditional() {
    let h = Home::new(
        "Include conf.d/*.conf\n\
         Host inc\n\
         \x20 Include ~/.ssh/only-for-inc\n\
         Host other\n\
         \x20 Include only-for-other\n\
         Host *\n\
         \x20 Port 22\n",
    );
    h.file("conf.d/10-a.conf", "Host a\n  Port 1001\n");
    h.file("conf.d/20-b.conf", "Host a b\n  Port 1002\n  User from-b\n");
    h.file("conf.d/not-included.txt", "Port 9\n");
    // A Host line in an included file ends with that file: the including block goes on.
    h.file("only-for-inc", "Port 3000\nHost zzz\n  User never\n");
    h.file(
        "only-for-other",
        "User other-user\nHost *\n  User included-star\n",
    );

    let c = h.resolve("a");
    assert_eq!(val(&c.port), Some(1001));
    assert_eq!(val(&c.user).as_deref(), Some("from-b"));
    assert!(c.matched[0].origin.file.ends_with("conf.d/10-a.conf"));
    let c = h.resolve("inc");
    assert_eq!(val(&c.port), Some(3000));
    assert_eq!(val(&c.user), None);
    // An Include in a block that does not apply brings nothing, not even its `Host *`.
    let c = h.resolve("inc");
    assert_ne!(val(&c.user).as_deref(), Some("included-star"));
    let c = h.resolve("other");
    assert_eq!(val(&c.user).as_deref(), Some("other-user"));

    // A file including itself: an error, not a stack overflow.
    let h = Home::new("Include config\n");
    assert!(h.error("x").contains("nested"), "{}", h.error("x"));
    // A file that is not there is none (ssh ignores it); a directory neither.
    let h = Home::new("Include missing-file conf.d\nPort 5\n");
    assert_eq!(val(&h.resolve("x").port), Some(5));
}

/// Options as the plugin would parse them, with this home's config file.
fn effective(h: &Home, items: &[(&str, &str)]) -> Result<MountOptions, ConfigError> {
    let raw: options::RawOptions = items
        .iter()
        .map(|(k, v)| (k.to_string(), Some(v.to_string())))
        .collect();
    let mut parsed = options::parse(&raw, None, Context::Plugin).unwrap();
    parsed.options.ssh_config = SshConfigFile::Path(h.config());
    apply::effective_in(&parsed, Context::Plugin, &h.0).map(|(o, _)| o)
}

#[test]
fn volume_options_win_over_the_file() {
    let h = Home::new(
        "Host alias\n\
         \x20 HostName 127.0.0.9\n\
         \x20 User cfguser\n\
         \x20 Port 2222\n\
         \x20 IdentityFile %d/.ssh/key_%r_%p\n\
         \x20 CertificateFile ~/.ssh/c-cert.pub\n\
         \x20 IdentityAgent ~/agent.sock\n\
         \x20 StrictHostKeyChecking yes\n\
         \x20 UserKnownHostsFile ~/.ssh/kh_%h other\n\
         \x20 ServerAliveInterval 5\n\
         \x20 Ciphers aes128-ctr\n",
    );
    let o = effective(&h, &[("sshcmd", "alias:/data")]).unwrap();
    assert_eq!(o.remote.host, "127.0.0.9");
    assert_eq!(o.remote.user.as_deref(), Some("cfguser"));
    assert_eq!(o.remote.path, "/data");
    assert_eq!(o.port, 2222);
    let ssh = h.0.join(".ssh");
    assert_eq!(o.config_identity_files, [ssh.join("key_cfguser_2222")]);
    assert!(o.identity_files.is_empty());
    assert_eq!(o.certificate_files, [ssh.join("c-cert.pub")]);
    assert_eq!(
        o.identity_agent,
        IdentityAgent::Path(h.0.join("agent.sock"))
    );
    assert_eq!(
        o.strict_host_key_checking,
        options::StrictHostKeyChecking::Yes
    );
    assert_eq!(o.known_hosts_file, Some(ssh.join("kh_127.0.0.9")));
    assert_eq!(o.server_alive_interval, Duration::from_secs(5));
    assert_eq!(o.ciphers, ["aes128-ctr"]);

    // Everything given as a volume option beats the file; tokens see the final values.
    let o = effective(
        &h,
        &[
            ("sshcmd", "root@alias:/data"),
            ("port", "2022"),
            ("IdentityAgent", "none"),
            ("StrictHostKeyChecking", "no"),
            ("UserKnownHostsFile", "/tmp/kh"),
            ("ServerAliveInterval", "0"),
            ("Ciphers", "aes256-ctr"),
            ("IdentityFile", "/k"),
        ],
    )
    .unwrap();
    assert_eq!(o.remote.user.as_deref(), Some("root"));
    assert_eq!(o.port, 2022);
    assert_eq!(o.identity_files, [PathBuf::from("/k")]);
    assert_eq!(o.config_identity_files, [ssh.join("key_root_2022")]);
    assert_eq!(o.identity_agent, IdentityAgent::None);
    assert_eq!(
        o.strict_host_key_checking,
        options::StrictHostKeyChecking::No
    );
    assert_eq!(o.known_hosts_file, Some(PathBuf::from("/tmp/kh")));
    assert_eq!(o.server_alive_interval, Duration::ZERO);
    assert_eq!(o.ciphers, ["aes256-ctr"]);

    // A host the file does not mention is untouched.
    let o = effective(&h, &[("sshcmd", "elsewhere:/x")]).unwrap();
    assert_eq!((o.remote.host.as_str(), o.port), ("elsewhere", 22));
    assert_eq!(o.remote.user, None);

    // UserKnownHostsFile none: no file at all (not the default one).
    let h = Home::new("UserKnownHostsFile none\n");
    let o = effective(&h, &[("sshcmd", "x:/")]).unwrap();
    assert_eq!(o.known_hosts_file, Some(PathBuf::from("/dev/null")));
}

#[test]
fn config_file_choice() {
    let h = Home::new("Port 1\n");
    let home: &Path = &h.0;
    let mut o = options::parse(
        &vec![("sshcmd".into(), Some("x:/".into()))],
        None,
        Context::Plugin,
    )
    .unwrap()
    .options;
    assert_eq!(apply::config_file(&o, home).unwrap(), Some(h.config()));
    o.ssh_config = SshConfigFile::None;
    assert_eq!(apply::config_file(&o, home).unwrap(), None);
    o.ssh_config = SshConfigFile::Path("other".into());
    let e = apply::config_file(&o, home).unwrap_err().to_string();
    assert!(e.contains("other") && e.contains("sshkey"), "{e}");
    let other = h.file("other", "");
    assert_eq!(apply::config_file(&o, home).unwrap(), Some(other));
    std::fs::remove_file(h.config()).unwrap();
    o.ssh_config = SshConfigFile::Default;
    assert_eq!(
        apply::config_file(&o, home).unwrap(),
        None,
        "a missing default is no file"
    );
    // The option forms.
    for (name, value) in [("F", "/x/cfg"), ("ssh_config", "/x/cfg")] {
        let o = options::parse(
            &vec![
                ("sshcmd".into(), Some("x:/".into())),
                (name.into(), Some(value.into())),
            ],
            None,
            Context::Plugin,
        )
        .unwrap()
        .options;
        assert_eq!(o.ssh_config, SshConfigFile::Path("/x/cfg".into()));
    }
}

proptest::proptest! {
    /// Whatever the file holds, reading it answers (a config or an error), never a panic.
    #[test]
    fn never_panics(text in "(([ \\t]*[A-Za-z=\"'\\\\#%!*?,~${}]{0,12}[ \\t=]*){0,6}\n){0,12}",
                    host in "[a-z.*?!]{0,8}") {
        let h = Home::new(&text);
        let _ = resolve(&h.config(), &h.query(&host, None));
        let _ = parse::directives(&text);
    }

    #[test]
    fn never_panics_on_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let _ = parse::directives(&text);
        let h = Home::new(&text);
        let _ = resolve(&h.config(), &h.query("host", Some("u")));
    }
}

/// `ProxyJump` in the file becomes the hops the connection goes through (the option wins);
/// a bad hop is an error naming the file and line.
#[test]
fn proxy_jump_from_the_file_becomes_the_hops() {
    let h = Home::new("Host a\n  ProxyJump me@bastion:2200,[::1]\n");
    let o = effective(&h, &[("sshcmd", "a:/x")]).unwrap();
    let hops: Vec<String> = o.proxy_jump.iter().map(|j| j.endpoint()).collect();
    assert_eq!(hops, ["bastion:2200", "[::1]:22"]);
    assert_eq!(o.proxy_jump[0].user.as_deref(), Some("me"));
    let o = effective(&h, &[("sshcmd", "a:/x"), ("proxyjump", "gw")]).unwrap();
    assert_eq!(o.proxy_jump[0].endpoint(), "gw:22", "the option wins");
    let o = effective(&h, &[("sshcmd", "b:/x")]).unwrap();
    assert!(o.proxy_jump.is_empty(), "other hosts go direct");

    let h = Home::new("Host a\n  ProxyJump bastion:99999\n");
    let e = effective(&h, &[("sshcmd", "a:/x")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(":2") && e.contains("ProxyJump hop 1 'bastion:99999'"),
        "{e}"
    );
}
