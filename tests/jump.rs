//! Jump hosts and known_hosts trust, for real, with the `mount` command (issue 12): mounts
//! through one and two OpenSSH jump hosts (and proof that the traffic took that path), a jump
//! host's changed key refused with the hop named, writes that resume after the jump host
//! restarts; host certificates accepted through `@cert-authority` and refused when the CA did
//! not sign them (or signed them for another name, or long ago), `@revoked` keys refused even
//! when known or pinned, hashed known_hosts lines. Where it matters, OpenSSH's own `ssh`
//! is asked the same question with the same known_hosts file, and must agree.

mod common;
#[path = "common/sockets.rs"]
mod sockets;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Keepalives that notice a dead link quickly.
const FAST: &str = "ServerAliveInterval=1,ServerAliveCountMax=2";

/// A server to jump through: it logs each forwarded connection (LogLevel DEBUG1) and accepts
/// the target's key, the credentials every hop uses.
fn jump_host(target: &Sshd) -> Sshd {
    jump_host_with(target, "AllowTcpForwarding yes")
}

/// [`jump_host`] with `config` (sshd_config lines) in place of allowing forwarding.
fn jump_host_with(target: &Sshd, config: &str) -> Sshd {
    let mut b = Sshd::start();
    fs::copy(
        target.dir.path().join("authorized_keys"),
        b.dir.path().join("authorized_keys"),
    )
    .unwrap();
    b.reconfigure(&format!("LogLevel DEBUG1\n{config}"));
    b
}

fn hop(b: &Sshd) -> String {
    format!("root@127.0.0.1:{}", b.port)
}

/// Key login with the target's key, host keys learned into `known_hosts` (accept-new, as ssh).
fn jump_options(target: &Sshd, known_hosts: &Path, hops: &[&Sshd], extra: &str) -> String {
    let hops: Vec<String> = hops.iter().map(|b| hop(b)).collect();
    let mut o = format!(
        "IdentityFile={},UserKnownHostsFile={},ProxyJump={}",
        target.key.display(),
        known_hosts.display(),
        // One -o item holds all the hops: its commas are escaped.
        hops.join("\\,")
    );
    if !extra.is_empty() {
        o.push(',');
        o.push_str(extra);
    }
    o
}

/// The pid of the listening sshd of `s` (from its PidFile).
fn listener_pid(s: &Sshd) -> u32 {
    fs::read_to_string(s.dir.path().join("sshd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Whether `log` (sshd at DEBUG1) shows a direct-tcpip channel opened to 127.0.0.1:`port`.
fn forwarded_to(log: &str, port: u16) -> bool {
    log.lines().any(|l| {
        l.contains("server_request_direct_tcpip")
            && l.contains(&format!("target 127.0.0.1 port {port}"))
    })
}

#[test]
fn mounts_through_two_jump_hosts_and_the_traffic_takes_that_path() {
    let target = Sshd::start();
    let first = jump_host(&target);
    let second = jump_host(&target);
    let kh_dir = TempDir::new("jump-kh");
    let known_hosts = kh_dir.path().join("known_hosts");
    let opts = jump_options(&target, &known_hosts, &[&first, &second], "");
    fs::create_dir(target.data.join("j")).unwrap();

    let m = Mount::new(&target, &target.remote("j"), &opts);
    fs::write(m.path("through"), "two hops\n").unwrap();
    assert_eq!(
        fs::read_to_string(target.data.join("j/through")).unwrap(),
        "two hops\n"
    );

    // The mount's only TCP connection is to the first jump host.
    let peers = sockets::peer_ports(m.pid().unwrap());
    assert!(
        peers.contains(&first.port),
        "connected to the first hop: {peers:?}"
    );
    assert!(
        !peers.contains(&second.port) && !peers.contains(&target.port),
        "no direct connection to the second hop or the target: {peers:?}"
    );
    // Each hop forwarded to the next one.
    assert!(
        forwarded_to(&first.log(), second.port),
        "the first hop opened a channel to the second: {}",
        first.log()
    );
    assert!(
        forwarded_to(&second.log(), target.port),
        "the second hop opened a channel to the target: {}",
        second.log()
    );
    // The target's client is a process of the second jump host's sshd.
    let client_port = *sockets::logged_client_ports(&target.log())
        .last()
        .expect("the target logged a connection");
    let owners = sockets::owners_of_local_port(client_port);
    let second_pid = listener_pid(&second);
    assert!(
        !owners.is_empty()
            && owners
                .iter()
                .all(|p| sockets::descends_from(*p, second_pid)),
        "the connection from port {client_port} belongs to the second hop's sshd ({second_pid}): {owners:?}"
    );

    // Every hop's key was checked and recorded under its own host:port, as ssh records them.
    let recorded = fs::read_to_string(&known_hosts).unwrap();
    for s in [&first, &second, &target] {
        assert!(
            recorded.contains(&format!("[127.0.0.1]:{} ssh-ed25519", s.port)),
            "{} recorded: {recorded}",
            s.port
        );
    }
}

#[test]
fn a_jump_hosts_changed_key_is_refused_naming_the_hop() {
    let target = Sshd::start();
    let mut bastion = jump_host(&target);
    let kh_dir = TempDir::new("jump-kh");
    let known_hosts = kh_dir.path().join("known_hosts");
    let opts = jump_options(&target, &known_hosts, &[&bastion], FAST);
    fs::create_dir(target.data.join("k")).unwrap();
    let old = bastion.host_fingerprint.clone();

    // A live mount pinned the jump host's key: its reconnect refuses the new one.
    let m = Mount::new(&target, &target.remote("k"), &opts);
    bastion.stop();
    let new = bastion.new_host_key();
    bastion.restart();
    let refusal = format!(
        "jump host {}: host key verification failed for 127.0.0.1:{}: expected {old} but the \
         server presented {new}",
        hop(&bastion),
        bastion.port
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !m.stderr().contains(&refusal) {
        assert!(
            Instant::now() < deadline,
            "the reconnect names the hop and both keys ({refusal}): {}",
            m.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(m);

    // A new mount (-J, as with ssh) finds the old key in known_hosts.
    let failed = mount_expect_failure(
        &[
            "-p",
            &target.port.to_string(),
            "-J",
            &hop(&bastion),
            "-o",
            &format!(
                "IdentityFile={},UserKnownHostsFile={}",
                target.key.display(),
                known_hosts.display()
            ),
        ],
        &target.remote("k"),
        None,
        Duration::from_secs(30),
    );
    assert!(!failed.status.success() && !failed.mounted);
    let line = fs::read_to_string(&known_hosts)
        .unwrap()
        .lines()
        .position(|l| l.starts_with(&format!("[127.0.0.1]:{} ", bastion.port)))
        .unwrap()
        + 1;
    let named = format!(
        "jump host {}: host key verification failed for 127.0.0.1:{}: {} line {line} records a \
         different key than the one the server presented ({new})",
        hop(&bastion),
        bastion.port,
        known_hosts.display()
    );
    assert!(failed.stderr.contains(&named), "{named}: {}", failed.stderr);
}

/// `mount -J HOP ...` expected to fail; its stderr.
/// A hop's own entry in the ssh_config file (HostName, Port, User, IdentityFile of its `Host`
/// block) is what it dials and logs in with: this jump host accepts only its own key, not the
/// target's, and is named only by its alias.
#[test]
fn a_hop_dials_and_logs_in_with_its_own_ssh_config_entry() {
    let target = Sshd::start();
    let mut bastion = Sshd::start();
    bastion.reconfigure("LogLevel DEBUG1\nAllowTcpForwarding yes");
    let dir = TempDir::new("jump-cfg");
    let known_hosts = dir.path().join("known_hosts");
    // Without the entry: the hop refuses the volume's (the target's) key.
    let refused = jump_failure(
        &target,
        &format!("root@127.0.0.1:{}", bastion.port),
        &known_hosts,
    );
    assert!(
        refused.contains("jump host") && refused.contains("authentication failed"),
        "{refused}"
    );
    let config = dir.path().join("config");
    fs::write(
        &config,
        format!(
            "Host bastion\n  HostName 127.0.0.1\n  Port {}\n  User root\n  IdentityFile {}\n\
             Host *\n  User nobody-here\n",
            bastion.port,
            bastion.key.display()
        ),
    )
    .unwrap();
    let opts = format!(
        "IdentityFile={},UserKnownHostsFile={},ProxyJump=bastion,ssh_config={}",
        target.key.display(),
        known_hosts.display(),
        config.display()
    );
    fs::create_dir(target.data.join("c")).unwrap();
    let m = Mount::new(&target, &target.remote("c"), &opts);
    fs::write(m.path("f"), "through the hop's own entry\n").unwrap();
    assert_eq!(
        fs::read_to_string(target.data.join("c/f")).unwrap(),
        "through the hop's own entry\n"
    );
    assert!(
        forwarded_to(&bastion.log(), target.port),
        "the bastion forwarded to the target: {}",
        bastion.log()
    );
    let recorded = fs::read_to_string(&known_hosts).unwrap();
    assert!(
        recorded.contains(&format!("[127.0.0.1]:{} ssh-ed25519", bastion.port)),
        "the hop's key is recorded under the address its entry gives: {recorded}"
    );
}

fn jump_failure(target: &Sshd, hop: &str, known_hosts: &Path) -> String {
    let failed = mount_expect_failure(
        &[
            "-p",
            &target.port.to_string(),
            "-J",
            hop,
            "-o",
            &format!(
                "IdentityFile={},UserKnownHostsFile={}",
                target.key.display(),
                known_hosts.display()
            ),
        ],
        &target.remote(""),
        None,
        Duration::from_secs(30),
    );
    assert!(
        !failed.status.success() && !failed.mounted,
        "{}",
        failed.stderr
    );
    failed.stderr
}

#[test]
fn a_hop_that_refuses_the_login_or_the_forwarding_is_named() {
    let target = Sshd::start();
    let kh_dir = TempDir::new("jump-kh");
    let known_hosts = kh_dir.path().join("known_hosts");

    // A jump host that does not know the volume's key.
    let stranger = Sshd::start();
    let e = jump_failure(&target, &hop(&stranger), &known_hosts);
    let named = format!(
        "jump host {}: authentication failed for user 'root' on 127.0.0.1: the server rejected \
         the key(s) {}",
        hop(&stranger),
        target.key.display()
    );
    assert!(e.contains(&named), "{named}: {e}");

    // One that forbids forwarding.
    let closed = jump_host_with(&target, "AllowTcpForwarding no");
    let e = jump_failure(&target, &hop(&closed), &known_hosts);
    let named = format!(
        "jump host {}: cannot open a connection from it to 127.0.0.1:{}: the jump host refused",
        hop(&closed),
        target.port
    );
    assert!(
        e.contains(&named) && e.contains("AllowTcpForwarding"),
        "{named}: {e}"
    );

    // Nothing listening where the hop should be: the hop and proxyjump are named.
    let port = free_port();
    let e = jump_failure(&target, &format!("root@127.0.0.1:{port}"), &known_hosts);
    assert!(
        e.contains(&format!(
            "jump host root@127.0.0.1:{port}: cannot connect to 127.0.0.1:{port}"
        )) && e.contains("hop 1 in proxyjump"),
        "{e}"
    );
}

#[test]
fn writes_resume_after_the_jump_host_is_killed_and_restarted() {
    let target = Sshd::start();
    let mut bastion = jump_host(&target);
    let kh_dir = TempDir::new("jump-kh");
    let opts = jump_options(
        &target,
        &kh_dir.path().join("known_hosts"),
        &[&bastion],
        FAST,
    );
    fs::create_dir(target.data.join("w")).unwrap();
    let m = Mount::new(&target, &target.remote("w"), &opts);
    // The writer is a process of its own, as a container's would be: a thread of this one
    // blocked in the mount stalls this process's own fork/exec of the restarted sshd.
    let mut writer = Command::new("sh")
        .arg("-c")
        .arg("i=0; while [ $i -lt 200 ]; do echo \"line $i\" || exit 1; i=$((i+1)); sleep 0.02; done >> \"$1\"")
        .arg("sh")
        .arg(m.path("log.txt"))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    // The jump host goes away completely (listener and sessions), then comes back.
    bastion.stop();
    std::thread::sleep(Duration::from_secs(2));
    bastion.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = writer.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the writer still runs after 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "the writer carried on through the jump host's restart"
    );
    assert!(
        m.stderr().contains("reconnected"),
        "it reconnected through the hop: {}",
        m.stderr()
    );
    drop(m);
    let expected: String = (0..200).map(|i| format!("line {i}\n")).collect();
    assert_eq!(
        fs::read_to_string(target.data.join("w/log.txt")).unwrap(),
        expected,
        "every line reached the server, in order"
    );
}

// ---------------------------------------------------------------------------------------------
// Host certificates, @revoked, hashed names

/// A certificate authority: an ed25519 key pair in `dir`.
struct Ca {
    key: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let key = dir.join(name);
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key));
        Ca { key }
    }

    fn public(&self) -> String {
        fs::read_to_string(self.key.with_extension("pub"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Signs `sshd`'s host key as a host certificate for `principals` valid `validity`
    /// (ssh-keygen -V), into the file the server presents (see `certified`).
    fn sign_host(&self, sshd: &Sshd, principals: &str, validity: &str) {
        let public = host_key(sshd).with_extension("pub");
        run(Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(&self.key)
            .args(["-I", "test-host", "-h", "-n", principals, "-V", validity])
            .arg(&public));
    }
}

fn host_key(sshd: &Sshd) -> PathBuf {
    sshd.dir.path().join("ssh_host_ed25519_key")
}

/// A server presenting a host certificate (signed by `ca` for 127.0.0.1 unless re-signed).
fn certified(ca: &Ca) -> Sshd {
    let mut sshd = Sshd::start();
    ca.sign_host(&sshd, "127.0.0.1", "-5m:+1h");
    let cert = sshd.dir.path().join("ssh_host_ed25519_key-cert.pub");
    sshd.reconfigure(&format!("HostCertificate {}", cert.display()));
    sshd
}

/// Mounts with StrictHostKeyChecking=yes, nothing pinned, trust from `known_hosts` only.
fn strict_options(sshd: &Sshd, known_hosts: &Path) -> String {
    format!(
        "IdentityFile={},StrictHostKeyChecking=yes,UserKnownHostsFile={}",
        sshd.key.display(),
        known_hosts.display()
    )
}

fn strict_failure(sshd: &Sshd, known_hosts: &Path) -> String {
    let failed = mount_expect_failure(
        &[
            "-p",
            &sshd.port.to_string(),
            "-o",
            &strict_options(sshd, known_hosts),
        ],
        &sshd.remote(""),
        None,
        Duration::from_secs(30),
    );
    assert!(
        !failed.status.success() && !failed.mounted,
        "{}",
        failed.stderr
    );
    failed.stderr
}

/// Whether OpenSSH's client, with the same known_hosts file and StrictHostKeyChecking=yes,
/// trusts the server (a command runs only after the host key was accepted).
fn openssh_trusts(sshd: &Sshd, known_hosts: &Path) -> bool {
    Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-o", "GlobalKnownHostsFile=/dev/null", "-i"])
        .arg(&sshd.key)
        .args(["-p", &sshd.port.to_string(), "root@127.0.0.1", "true"])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn host_certificate_accepted_through_cert_authority_with_strict_checking() {
    let dir = TempDir::new("certs");
    let ca = Ca::new(dir.path(), "ca");
    let sshd = certified(&ca);
    let known_hosts = dir.path().join("known_hosts");
    // Patterns as people write them: the CA for every host of this port.
    fs::write(
        &known_hosts,
        format!("@cert-authority [127.0.0.1]:* {}\n", ca.public()),
    )
    .unwrap();
    assert!(openssh_trusts(&sshd, &known_hosts), "ssh accepts it too");

    let m = Mount::new(
        &sshd,
        &sshd.remote(""),
        &strict_options(&sshd, &known_hosts),
    );
    fs::write(m.path("certified"), "ok").unwrap();
    assert_eq!(
        fs::read_to_string(sshd.data.join("certified")).unwrap(),
        "ok"
    );
    drop(m);
    assert_eq!(
        fs::read_to_string(&known_hosts).unwrap().lines().count(),
        1,
        "nothing was added to known_hosts"
    );
}

#[test]
fn host_keys_the_ca_did_not_sign_for_this_host_now_are_refused() {
    let dir = TempDir::new("certs");
    let ca = Ca::new(dir.path(), "ca");
    let other_ca = Ca::new(dir.path(), "other-ca");
    let known_hosts = dir.path().join("known_hosts");
    fs::write(&known_hosts, format!("@cert-authority * {}\n", ca.public())).unwrap();

    // A plain key, no certificate.
    let plain = Sshd::start();
    assert!(!openssh_trusts(&plain, &known_hosts));
    let e = strict_failure(&plain, &known_hosts);
    assert!(
        e.contains("host key verification failed")
            && e.contains("presented no certificate signed by the certificate authority"),
        "{e}"
    );
    drop(plain);

    // A certificate of a CA known_hosts does not trust.
    let mut sshd = certified(&other_ca);
    assert!(!openssh_trusts(&sshd, &known_hosts));
    let e = strict_failure(&sshd, &known_hosts);
    assert!(e.contains("no @cert-authority line"), "{e}");

    // The trusted CA, but for another name, and then expired: refused (ssh refuses too).
    for (principals, validity, says) in [
        (
            "files.example.com",
            "-5m:+1h",
            "is valid for files.example.com, not for 127.0.0.1",
        ),
        ("127.0.0.1", "20000101:20010101", "expired at 2001-01-01"),
    ] {
        ca.sign_host(&sshd, principals, validity);
        sshd.stop();
        sshd.restart();
        assert!(
            !openssh_trusts(&sshd, &known_hosts),
            "{principals} {validity}"
        );
        let e = strict_failure(&sshd, &known_hosts);
        assert!(e.contains(says), "{says}: {e}");
    }
}

#[test]
fn revoked_keys_are_refused_even_when_known_or_pinned() {
    let dir = TempDir::new("revoked");
    let sshd = Sshd::start();
    let public = fs::read_to_string(host_key(&sshd).with_extension("pub")).unwrap();
    let public = public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let known_hosts = dir.path().join("known_hosts");
    fs::write(
        &known_hosts,
        format!("[127.0.0.1]:{} {public}\n@revoked * {public}\n", sshd.port),
    )
    .unwrap();
    assert!(!openssh_trusts(&sshd, &known_hosts), "ssh refuses it too");
    let e = strict_failure(&sshd, &known_hosts);
    assert!(
        e.contains("is marked @revoked in") && e.contains("line 2"),
        "{e}"
    );

    // Pinned explicitly: still refused.
    let failed = mount_expect_failure(
        &[
            "-p",
            &sshd.port.to_string(),
            "-o",
            &format!(
                "IdentityFile={},hostkey={},UserKnownHostsFile={}",
                sshd.key.display(),
                sshd.host_fingerprint,
                known_hosts.display()
            ),
        ],
        &sshd.remote(""),
        None,
        Duration::from_secs(30),
    );
    assert!(failed.stderr.contains("@revoked"), "{}", failed.stderr);

    // A revoked CA revokes its certificates.
    let ca = Ca::new(dir.path(), "ca");
    let certified = certified(&ca);
    fs::write(
        &known_hosts,
        format!("@cert-authority * {0}\n@revoked * {0}\n", ca.public()),
    )
    .unwrap();
    assert!(!openssh_trusts(&certified, &known_hosts));
    let e = strict_failure(&certified, &known_hosts);
    assert!(
        e.contains("certificate authority") && e.contains("@revoked"),
        "{e}"
    );
}

/// `line` (`host key...`) with its host name hashed, as `ssh-keygen -H` hashes it.
fn hashed(dir: &Path, line: &str) -> String {
    let file = dir.join("to-hash");
    fs::write(&file, format!("{line}\n")).unwrap();
    run(Command::new("ssh-keygen").arg("-H").arg("-f").arg(&file));
    let out = fs::read_to_string(&file).unwrap().trim().to_string();
    assert!(
        out.starts_with("|1|") && !out.contains("127.0.0.1"),
        "{out}"
    );
    out
}

#[test]
fn hashed_known_hosts_lines_match() {
    let dir = TempDir::new("hashed");
    let ca = Ca::new(dir.path(), "ca");
    let plain = Sshd::start();
    let certified = certified(&ca);
    let public = fs::read_to_string(host_key(&plain).with_extension("pub")).unwrap();
    let known_hosts = dir.path().join("known_hosts");
    // ssh-keygen -H leaves marker lines alone; ssh matches a hashed name in them all the same.
    let text = format!(
        "{}\n@cert-authority {}\n",
        hashed(
            dir.path(),
            &format!("[127.0.0.1]:{} {}", plain.port, public.trim())
        ),
        hashed(
            dir.path(),
            &format!("[127.0.0.1]:{} {}", certified.port, ca.public())
        ),
    );
    fs::write(&known_hosts, text).unwrap();
    for s in [&plain, &certified] {
        assert!(
            openssh_trusts(s, &known_hosts),
            "ssh matches the hashed line"
        );
        let m = Mount::new(s, &s.remote(""), &strict_options(s, &known_hosts));
        drop(m);
    }
    // The hashed name of another port does not match.
    let other = Sshd::start();
    assert!(!openssh_trusts(&other, &known_hosts));
    let e = strict_failure(&other, &known_hosts);
    assert!(e.contains("is not trusted: it is not known"), "{e}");
}
