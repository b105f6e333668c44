//! The `mount` command with the SSH setups people already have, against a real OpenSSH server:
//! a Host alias from `~/.ssh/config` (through Include) or `-o ssh_config=FILE`, options over
//! the file, an unsupported `Match exec` refused by file:line, a key held only by an ssh-agent
//! (SSH_AUTH_SOCK), and a user certificate signed by a CA the server trusts
//! (`TrustedUserCAKeys`), with no plain key authorised.

#[path = "common/agent.rs"]
mod agent;
mod common;

use std::fs;

use agent::Agent;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Mount, Sshd, TempDir, mount_expect_failure_env, run};

const FAIL_TIMEOUT: Duration = Duration::from_secs(30);

/// A home directory with nothing in it but what a test writes (no default keys, no config).
fn empty_home() -> TempDir {
    let h = TempDir::new("home");
    fs::create_dir_all(h.path().join(".ssh")).unwrap();
    h
}

/// A new unencrypted ed25519 key pair at `path` (and `path.pub`).
fn keygen(path: &Path) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "dvs-sshcfg", "-f"])
        .arg(path));
}

fn write_private(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// The file written through `m` is on the server.
fn assert_roundtrip(m: &Mount, on_server: &Path, what: &str) {
    fs::write(m.path("f"), what).unwrap();
    assert_eq!(fs::read_to_string(m.path("f")).unwrap(), what);
    assert_eq!(fs::read_to_string(on_server.join("f")).unwrap(), what);
}

/// `sshcmd=alias:/path` with HostName, Port, User and IdentityFile from `~/.ssh/config`, the
/// block in a file the config Includes by a glob; then the same from `-o ssh_config=FILE`; and a
/// port given on the command line wins over the file's.
#[test]
fn alias_from_ssh_config() {
    let sshd = Sshd::start();
    fs::create_dir(sshd.data.join("a")).unwrap();
    let home = empty_home();
    let ssh = home.path().join(".ssh");
    write_private(
        &ssh.join("config"),
        "# as people write them\nInclude config.d/*.conf\n\nHost *\n    StrictHostKeyChecking no\n    ServerAliveInterval 10\n",
    );
    let block = format!(
        "Host dvs-alias other-alias\n    HostName 127.0.0.1\n    Port {}\n    User root\n    \
         IdentityFile {}\n    UserKnownHostsFile ~/.ssh/known_hosts_%h_%p\n",
        sshd.port,
        sshd.key.display()
    );
    write_private(&ssh.join("config.d/10-dvs.conf"), &block);
    let home_s = home.path().to_str().unwrap();
    let remote = format!("dvs-alias:{}", sshd.data.join("a").display());
    let m = Mount::with_env(&[], &remote, &[("HOME", Some(home_s))]);
    assert_roundtrip(&m, &sshd.data.join("a"), "via the alias\n");
    // The host key went where the file's UserKnownHostsFile (with its tokens) says.
    let kh = ssh.join(format!("known_hosts_127.0.0.1_{}", sshd.port));
    assert!(
        kh.exists(),
        "{} missing; stderr: {}",
        kh.display(),
        m.stderr()
    );
    drop(m);

    // Another file, named with -o ssh_config=, HOME without any config.
    let other = TempDir::new("cfg");
    let file = other.path().join("ssh_config");
    write_private(&file, &format!("{block}    StrictHostKeyChecking no\n"));
    let bare = empty_home();
    let opt = format!("ssh_config={}", file.display());
    let m = Mount::with_env(
        &["-o", &opt],
        &format!("other-alias:{}", sshd.data.join("a").display()),
        &[("HOME", Some(bare.path().to_str().unwrap()))],
    );
    assert_roundtrip(&m, &sshd.data.join("a"), "via -o ssh_config\n");
    drop(m);

    // A volume option beats the file: -p with a closed port fails on that port.
    let closed = common::free_port();
    let f = mount_expect_failure_env(
        &["-p", &closed.to_string()],
        &remote,
        None,
        &[("HOME", Some(home_s))],
        FAIL_TIMEOUT,
    );
    assert!(!f.status.success());
    assert!(
        f.stderr.contains(&format!("127.0.0.1:{closed}")),
        "expected a failure on the -p port {closed}: {}",
        f.stderr
    );
}

/// A keyword we read but cannot honour: refused before connecting, with file:line.
#[test]
fn unsupported_config_is_refused_with_file_and_line() {
    let home = empty_home();
    let cfg = home.path().join(".ssh/config");
    write_private(
        &cfg,
        "Host *\n  Port 22\nMatch exec \"test -e /tmp\"\n  User x\n",
    );
    let f = mount_expect_failure_env(
        &[],
        "somehost:/x",
        None,
        &[("HOME", Some(home.path().to_str().unwrap()))],
        FAIL_TIMEOUT,
    );
    assert_eq!(f.status.code(), Some(2), "{}", f.stderr);
    let at = format!("{}:3", cfg.display());
    assert!(
        f.stderr.contains("Match exec") && f.stderr.contains(&at),
        "expected Match exec and {at}: {}",
        f.stderr
    );
    write_private(&cfg, "Host somehost\n  ProxyCommand nc %h %p\n");
    let f = mount_expect_failure_env(
        &[],
        "somehost:/x",
        None,
        &[("HOME", Some(home.path().to_str().unwrap()))],
        FAIL_TIMEOUT,
    );
    assert!(
        f.stderr.contains("ProxyCommand") && f.stderr.contains(&format!("{}:2", cfg.display())),
        "{}",
        f.stderr
    );
}

/// A key that exists only in an ssh-agent (loaded with ssh-add, then the file deleted) logs in
/// through SSH_AUTH_SOCK; with the agent gone or SSH_AUTH_SOCK unset the same mount fails with
/// a message naming the agent.
#[test]
fn agent_key_via_ssh_auth_sock() {
    let sshd = Sshd::start();
    fs::create_dir(sshd.data.join("ag")).unwrap();
    let scratch = TempDir::new("agent");
    let mut agent = Agent::start(scratch.path());
    let key = scratch.path().join("only_in_agent");
    fs::copy(&sshd.key, &key).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    agent.add(&key);
    fs::remove_file(&key).unwrap();

    let home = empty_home();
    let home_s = home.path().to_str().unwrap().to_string();
    let kh = format!(
        "StrictHostKeyChecking=no,UserKnownHostsFile={}",
        sshd.dir.path().join("known_hosts").display()
    );
    let port = sshd.port.to_string();
    let remote = sshd.remote("ag");
    let sock = agent.socket.to_str().unwrap().to_string();
    let args = ["-p", port.as_str(), "-o", kh.as_str()];
    let m = Mount::with_env(
        &args,
        &remote,
        &[("HOME", Some(&home_s)), ("SSH_AUTH_SOCK", Some(&sock))],
    );
    assert_roundtrip(&m, &sshd.data.join("ag"), "agent\n");
    drop(m);
    assert!(
        sshd.log().contains("Accepted publickey for root"),
        "{}",
        sshd.log()
    );

    let f = mount_expect_failure_env(
        &args,
        &remote,
        None,
        &[("HOME", Some(&home_s)), ("SSH_AUTH_SOCK", None)],
        FAIL_TIMEOUT,
    );
    assert!(
        f.stderr.contains("SSH_AUTH_SOCK is not set") && f.stderr.contains("ssh-agent"),
        "{}",
        f.stderr
    );
    agent.kill();
    let f = mount_expect_failure_env(
        &args,
        &remote,
        None,
        &[("HOME", Some(&home_s)), ("SSH_AUTH_SOCK", Some(&sock))],
        FAIL_TIMEOUT,
    );
    assert!(
        f.stderr.contains("cannot reach the ssh-agent") && f.stderr.contains(&sock),
        "{}",
        f.stderr
    );
}

/// A CA, a user key the server does not authorise and its certificate for principal root.
struct Cert {
    _dir: TempDir,
    key: PathBuf,
    cert: PathBuf,
    ca_pub: PathBuf,
}

fn make_cert(dir_tag: &str) -> Cert {
    let dir = TempDir::new(dir_tag);
    let ca = dir.path().join("user_ca");
    keygen(&ca);
    let key = dir.path().join("id_user");
    keygen(&key);
    run(Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(&ca)
        .args(["-I", "dvs-cert-id", "-n", "root", "-V", "-5m:+1h"])
        .arg(key.with_extension("pub")));
    let cert = dir.path().join("id_user-cert.pub");
    assert!(cert.exists(), "ssh-keygen -s wrote no certificate");
    Cert {
        key,
        cert,
        ca_pub: ca.with_extension("pub"),
        _dir: dir,
    }
}

/// A user certificate signed by a CA the server trusts logs in; the same key without its
/// certificate is refused (it is not in authorized_keys). `KEY-cert.pub` beside the key is
/// found by itself; `CertificateFile` names one elsewhere; and an agent holding key and
/// certificate (ssh-add loads both) works with the key file deleted.
#[test]
fn user_certificate_from_a_trusted_ca() {
    let mut sshd = Sshd::start();
    let c = make_cert("cert");
    sshd.reconfigure(&format!("TrustedUserCAKeys {}", c.ca_pub.display()));
    fs::create_dir(sshd.data.join("c")).unwrap();
    let home = empty_home();
    let home_s = home.path().to_str().unwrap().to_string();
    let port = sshd.port.to_string();
    let remote = sshd.remote("c");
    let kh = format!(
        "StrictHostKeyChecking=no,UserKnownHostsFile={}",
        sshd.dir.path().join("known_hosts").display()
    );
    let env = [("HOME", Some(home_s.as_str())), ("SSH_AUTH_SOCK", None)];

    let o = format!("{kh},IdentityFile={}", c.key.display());
    let m = Mount::with_env(&["-p", &port, "-o", &o], &remote, &env);
    assert_roundtrip(&m, &sshd.data.join("c"), "certificate\n");
    drop(m);
    let log = sshd.log();
    assert!(
        log.contains("ED25519-CERT") && log.contains("dvs-cert-id"),
        "sshd did not log a certificate login: {log}"
    );

    // The certificate moved elsewhere: the plain key alone is refused ...
    let elsewhere = TempDir::new("certfile");
    let moved = elsewhere.path().join("my.cert");
    fs::rename(&c.cert, &moved).unwrap();
    let f = mount_expect_failure_env(&["-p", &port, "-o", &o], &remote, None, &env, FAIL_TIMEOUT);
    assert!(f.stderr.contains("rejected the key"), "{}", f.stderr);
    // ... and CertificateFile names it.
    let o2 = format!("{o},CertificateFile={}", moved.display());
    let m = Mount::with_env(&["-p", &port, "-o", &o2], &remote, &env);
    assert_roundtrip(&m, &sshd.data.join("c"), "CertificateFile\n");
    drop(m);

    // The agent holds key and certificate; the key file is gone.
    fs::rename(&moved, &c.cert).unwrap();
    let scratch = TempDir::new("cagent");
    let agent = Agent::start(scratch.path());
    agent.add(&c.key);
    fs::remove_file(&c.key).unwrap();
    let sock = agent.socket.to_str().unwrap().to_string();
    let m = Mount::with_env(
        &["-p", &port, "-o", &kh],
        &remote,
        &[("HOME", Some(&home_s)), ("SSH_AUTH_SOCK", Some(&sock))],
    );
    assert_roundtrip(&m, &sshd.data.join("c"), "certificate in the agent\n");
}
