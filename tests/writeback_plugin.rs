//! A write-back volume through the plugin's socket (a `serve` process of its own with its own
//! state and volumes directories, no Docker) against a real OpenSSH server: the journal in the
//! state directory, Status of an idle volume with changes pending, Remove refused while they
//! are, the Mount replaying them before it answers, Status of the mounted volume, and Remove
//! deleting the empty journal afterwards.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Sshd, TempDir};
use docker_volume_sshfs::driver::mount_dir_name;
use docker_volume_sshfs::writeback::{Journal, Op};
use serde_json::{Value, json};

struct Plugin {
    dir: TempDir,
    socket: PathBuf,
    child: Child,
}

impl Plugin {
    fn start() -> Plugin {
        let dir = TempDir::new("wb-plugin");
        let socket = dir.path().join("sshfs.sock");
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--volumes-dir")
            .arg(dir.path().join("volumes"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("plugin.log")).unwrap())
            .spawn()
            .expect("start the plugin");
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "plugin socket did not appear");
            std::thread::sleep(Duration::from_millis(20));
        }
        Plugin { dir, socket, child }
    }

    /// One call; the answer's JSON (the plugin answers `Connection: close`, unchunked or not).
    fn call(&self, call: &str, body: Value) -> Value {
        let body = body.to_string();
        let mut s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        write!(
            s,
            "POST /{call} HTTP/1.1\r\nHost: plugin\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        let (head, payload) = resp.split_once("\r\n\r\n").unwrap();
        let payload = if head.to_ascii_lowercase().contains("chunked") {
            let (_, rest) = payload.split_once("\r\n").unwrap();
            rest.rsplit_once("\r\n0\r\n").map_or(rest, |(p, _)| p)
        } else {
            payload
        };
        serde_json::from_str(payload.trim())
            .unwrap_or_else(|e| panic!("{call}: not JSON ({e}): {payload:?}; log: {}", self.log()))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("plugin.log")).unwrap_or_default()
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for m in common::mounts_below(self.dir.path()) {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[test]
fn a_write_back_volume_replays_on_mount_and_is_removable_only_when_empty() {
    let sshd = Sshd::start();
    let plugin = Plugin::start();
    let name = "wb vol";
    let created = plugin.call(
        "VolumeDriver.Create",
        json!({"Name": name, "Opts": {
            "sshcmd": sshd.remote(""),
            "port": sshd.port.to_string(),
            "IdentityFile": sshd.key.display().to_string(),
            "StrictHostKeyChecking": "no",
            "UserKnownHostsFile": sshd.dir.path().join("known_hosts").display().to_string(),
            "ssh_config": "none",
            "IdentityAgent": "none",
            "writeback": "yes",
            "writeback_max": "64M",
        }}),
    );
    assert_eq!(created, json!({}), "{}", plugin.log());
    let refused = plugin.call(
        "VolumeDriver.Create",
        json!({"Name": "other", "Opts": {"sshcmd": "h:/x", "writeback": "yes",
            "writeback_dir": "/tmp/j"}}),
    );
    assert!(
        refused["Err"]
            .as_str()
            .unwrap()
            .contains("option writeback_dir cannot be used with the plugin"),
        "{refused}"
    );

    // What a mount that stopped before replaying leaves, in the state directory.
    let jdir = plugin
        .dir
        .path()
        .join("state/writeback")
        .join(mount_dir_name(name));
    {
        let j = Journal::open(&jdir, 1 << 20).unwrap();
        for op in [
            Op::Mkdir {
                path: "earlier".into(),
                mode: 0o755,
            },
            Op::Create {
                path: "earlier/f".into(),
                mode: 0o644,
                uid: None,
                gid: None,
            },
            Op::Write {
                path: "earlier/f".into(),
                offset: 0,
                data: b"journaled".to_vec().into(),
            },
        ] {
            j.append_now(op).unwrap();
        }
    }
    let status =
        |p: &Plugin| p.call("VolumeDriver.Get", json!({"Name": name}))["Volume"]["Status"].clone();
    let st = status(&plugin);
    assert_eq!(st["writeback"]["pending_ops"], 3, "{st}");
    assert_eq!(st["state"], "idle", "{st}");

    let e = plugin.call("VolumeDriver.Remove", json!({"Name": name}));
    let e = e["Err"].as_str().unwrap_or_default().to_string();
    assert!(
        e.starts_with("volume wb vol has 3 changes (")
            && e.contains("docker run --rm -v wb vol:/v busybox true"),
        "{e}"
    );
    assert!(jdir.join("applied").exists(), "nothing deleted");

    let mounted = plugin.call("VolumeDriver.Mount", json!({"Name": name, "ID": "c1"}));
    assert!(mounted.get("Err").is_none(), "{mounted}; {}", plugin.log());
    // Replayed before Mount answered.
    assert_eq!(
        std::fs::read(sshd.data.join("earlier/f")).unwrap(),
        b"journaled"
    );
    let st = status(&plugin);
    let wb = &st["writeback"];
    assert_eq!(st["state"], "mounted", "{st}");
    assert_eq!(wb["pending_ops"], 0, "{st}");
    assert!(wb["replayed_ops"].as_u64().unwrap() >= 1, "{st}");
    for key in ["replay_rate", "conflicts", "recent_conflicts", "last_seq"] {
        assert!(wb.get(key).is_some(), "{key}: {st}");
    }
    let e = plugin.call("VolumeDriver.Remove", json!({"Name": name}));
    assert!(e["Err"].as_str().unwrap().contains("is mounted"), "{e}");

    let unmounted = plugin.call("VolumeDriver.Unmount", json!({"Name": name, "ID": "c1"}));
    assert_eq!(unmounted, json!({}), "{}", plugin.log());
    // The mount lingers a moment after the last Unmount, which drained the journal first.
    assert_eq!(
        status(&plugin)["writeback"]["pending_ops"],
        0,
        "{}",
        plugin.log()
    );
    let removed = plugin.call("VolumeDriver.Remove", json!({"Name": name}));
    assert_eq!(removed, json!({}), "{}", plugin.log());
    assert!(!jdir.exists(), "the empty journal is deleted");
    // Remote files stay.
    assert!(sshd.data.join("earlier/f").exists());
}
