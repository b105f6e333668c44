//! Jump hosts through Docker (issue 12): a volume with `-o ProxyJump=...` reaches the test SSH
//! server through a second OpenSSH server (a container of the same image on
//! `$SSHFS_TEST_JUMP_PORT`, logging each forwarded connection); the traffic provably takes that
//! path; a container's writes resume after the jump host is killed and started again; and once
//! the jump host's key changes, the next mount is refused with the hop named.
//!
//! Run with `tests/run.sh --test plugin_jump` (SSHFS_E2E=1; without it the test skips).

mod e2e;
#[path = "e2e/faults_helpers.rs"]
mod faults_helpers;
#[path = "common/sockets.rs"]
mod sockets;

use std::fs;
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use e2e::{Kind, LABEL, RemoveDir, assert_mentions, docker, setup, wait_until};
use faults_helpers::{inspect, plugin_pid};

/// A jump host: the test server's image in a container of its own on the host network,
/// tester's password the same as on the target (every hop logs in with the volume's
/// credentials), LogLevel DEBUG1 so that its log shows each direct-tcpip channel. Removed on
/// drop.
struct JumpHost {
    name: String,
    port: u16,
    dir: PathBuf,
    _cleanup: RemoveDir,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run through tests/run.sh, which sources tests/docker/env.sh")
    })
}

impl JumpHost {
    fn start(ctx: &e2e::Ctx) -> JumpHost {
        let port: u16 = env("SSHFS_TEST_JUMP_PORT")
            .parse()
            .expect("SSHFS_TEST_JUMP_PORT is a port number");
        let name = ctx.unique("jumphost");
        let dir = std::env::temp_dir().join(&name);
        fs::create_dir_all(dir.join("hostkeys")).unwrap();
        let common = fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/sshd/sshd_config.common"
        ))
        .unwrap();
        // First: in sshd_config the first value of a keyword wins.
        fs::write(
            dir.join("sshd_config"),
            format!("LogLevel DEBUG1\nAllowTcpForwarding yes\n{common}"),
        )
        .unwrap();
        let j = JumpHost {
            name: name.clone(),
            port,
            dir: dir.clone(),
            _cleanup: RemoveDir(dir.clone()),
        };
        docker(&[
            "run".to_string(),
            "-d".into(),
            "--name".into(),
            name,
            "--label".into(),
            LABEL.into(),
            "--network".into(),
            "host".into(),
            "-e".into(),
            format!("SSHD_PORT={port}"),
            "-e".into(),
            "SSHD_LISTEN=127.0.0.1".into(),
            "-e".into(),
            format!("TESTER_PASSWORD={}", ctx.cfg.password),
            "-v".into(),
            format!("{}:/etc/ssh/hostkeys", dir.join("hostkeys").display()),
            "-v".into(),
            format!(
                "{}:/etc/ssh/sshd_config:ro",
                dir.join("sshd_config").display()
            ),
            env("SSHFS_TEST_SSHD_IMAGE"),
        ])
        .ok("starting the jump host container");
        j.wait_ready();
        j
    }

    fn wait_ready(&self) {
        let ok = wait_until(Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok_and(|mut s| {
                use std::io::Read;
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut b = [0u8; 8];
                s.read_exact(&mut b).is_ok() && b.starts_with(b"SSH-2.0")
            })
        });
        assert!(
            ok,
            "the jump host did not answer on port {}: {}",
            self.port,
            self.log()
        );
    }

    fn hop(&self) -> String {
        format!("tester@127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        docker(&["logs", self.name.as_str()]).stderr
    }

    /// The host pid of its sshd listener.
    fn pid(&self) -> u32 {
        docker(&["inspect", "-f", "{{.State.Pid}}", self.name.as_str()])
            .stdout
            .trim()
            .parse()
            .unwrap()
    }

    fn kill(&self) {
        docker(&["kill", self.name.as_str()]).ok("docker kill of the jump host");
    }

    fn start_again(&self) {
        docker(&["start", self.name.as_str()]).ok("docker start of the jump host");
        self.wait_ready();
    }

    /// Stops it, deletes its host keys (new ones are made at start) and starts it again.
    fn rekey(&self) {
        docker(&["stop", "-t", "2", self.name.as_str()]).ok("docker stop of the jump host");
        for e in fs::read_dir(self.dir.join("hostkeys")).unwrap().flatten() {
            fs::remove_file(e.path()).unwrap();
        }
        self.start_again();
    }
}

impl Drop for JumpHost {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", self.name.as_str()]);
    }
}

/// Numbered lines a container appended to `path` on the server ("line 0", "line 1", ...).
fn lines(path: &std::path::Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn plugin_mounts_through_a_jump_host_that_restarts_and_refuses_its_changed_key() {
    let Some(ctx) = setup("jump_host", Kind::Shared) else {
        return;
    };
    let jump = JumpHost::start(&ctx);
    let dir = ctx.remote_dir("jump");
    let mut opts = ctx.password_opts(&dir);
    opts.extend([
        format!("ProxyJump={}", jump.hop()),
        "ServerAliveInterval=1".into(),
        "ServerAliveCountMax=2".into(),
    ]);
    let vol = ctx.volume("jump", &opts);
    let writer = ctx.start_cmd(
        vol.as_str(),
        &[
            "sh",
            "-c",
            "i=0; while true; do echo \"line $i\" >> /data/log || exit 1; i=$((i+1)); sleep 0.1; done",
        ],
    );
    let log = dir.host.join("log");
    assert!(
        wait_until(Duration::from_secs(30), || lines(&log).len() >= 10),
        "the container writes through the jump host"
    );

    // The path: the jump host opened a channel to the target; the target has a connection
    // from one of the jump host's processes; the plugin holds one to the jump host.
    let target = ctx.cfg.port;
    assert_mentions(
        &jump.log(),
        &format!("target 127.0.0.1 port {target}"),
        "the jump host's direct-tcpip log",
    );
    let jump_pid = jump.pid();
    let from_jump_host = sockets::established().into_iter().any(|t| {
        t.remote_port == target
            && sockets::owners_of_local_port(t.local_port)
                .iter()
                .any(|p| sockets::descends_from(*p, jump_pid))
    });
    assert!(
        from_jump_host,
        "a connection to the target belongs to the jump host"
    );
    let plugin = plugin_pid(&ctx.plugin_id()).expect("the plugin's process");
    assert!(
        sockets::peer_ports(plugin).contains(&jump.port),
        "the plugin is connected to the jump host"
    );

    // Status names the hop and its pinned key.
    let status = &inspect(vol.as_str())["Status"];
    assert_eq!(
        status["jump_hosts"][0]["host"],
        jump.hop().as_str(),
        "{status}"
    );
    let pin = status["jump_hosts"][0]["hostkey"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(pin.starts_with("SHA256:"), "{status}");

    // The jump host dies and comes back: the writer carries on, losing no line.
    jump.kill();
    std::thread::sleep(Duration::from_secs(3));
    let before = lines(&log).len();
    jump.start_again();
    assert!(
        wait_until(Duration::from_secs(60), || lines(&log).len() >= before + 20),
        "writes resumed after the jump host came back ({} lines, {before} before): {}",
        lines(&log).len(),
        inspect(vol.as_str())["Status"]
    );
    let running = docker(&["inspect", "-f", "{{.State.Running}}", writer.name.as_str()]);
    assert_eq!(
        running.stdout.trim(),
        "true",
        "the writer never saw an error"
    );
    let got = lines(&log);
    let expected: Vec<String> = (0..got.len()).map(|i| format!("line {i}")).collect();
    assert_eq!(got, expected, "every line once, in order");
    let status = &inspect(vol.as_str())["Status"];
    assert!(status["reconnects"].as_u64() >= Some(1), "{status}");
    drop(writer);

    // A new key on the jump host: the next mount is refused, naming the hop and both keys.
    jump.rekey();
    let out = ctx
        .run(vol.as_str(), &[], "true")
        .fails("a mount through a jump host whose key changed");
    assert_mentions(
        &out.stderr,
        &format!(
            "jump host {}: host key verification failed for 127.0.0.1:{}: expected {pin}",
            jump.hop(),
            jump.port
        ),
        "the refusal",
    );
    drop(vol);
}
