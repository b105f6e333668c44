//! A real `ssh-agent` for the agent tests of the mount command (`ssh_config.rs`) and the plugin
//! (`plugin_ssh_setups.rs`). Used with `#[path = "common/agent.rs"] mod agent;` beside
//! `mod common;`.

#![allow(dead_code)] // each test binary uses a different part

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `ssh-agent -D -a DIR/agent.sock`, killed on drop.
pub struct Agent {
    child: Option<Child>,
    pub socket: PathBuf,
}

impl Agent {
    pub fn start(dir: &Path) -> Agent {
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ssh-agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "ssh-agent made no socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        Agent {
            child: Some(child),
            socket,
        }
    }

    /// `ssh-add KEY` (also loads `KEY-cert.pub` when it is there, as ssh-add does).
    pub fn add(&self, key: &Path) {
        crate::common::run(
            Command::new("ssh-add")
                .arg(key)
                .env("SSH_AUTH_SOCK", &self.socket)
                .stderr(Stdio::null()),
        );
    }

    /// Loads a copy of `key` and deletes the copy: the key lives in the agent only.
    pub fn add_and_delete(&self, key: &Path) {
        let copy = self.socket.with_file_name("loaded_key");
        fs::copy(key, &copy).unwrap();
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o600)).unwrap();
        self.add(&copy);
        fs::remove_file(&copy).unwrap();
    }

    /// SIGKILL: the socket stays behind, nobody answers on it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM: the agent removes its socket and exits.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}
