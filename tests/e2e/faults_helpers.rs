//! Helpers for tests/plugin_faults.rs: finding the plugin's process and socket, injecting faults
//! into the test SSH server and dockerd, reading the plugin's log. Everything that breaks
//! something has a Drop guard that puts it back, even when the test fails.

#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use docker_volume_sshfs::mount::parse_mountinfo;
use serde_json::Value;

use crate::e2e::{Config, Ctx, docker, run_cmd, wait_until};

// ---------------------------------------------------------------------------------------------
// The plugin process

fn cmdline(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn ppid(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may contain spaces, so split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The host PID of this plugin's `docker-volume-sshfs serve` process: the child of the
/// containerd shim started for the plugin's ID (other instances of the plugin may run here).
pub fn plugin_pid(id: &str) -> Option<u32> {
    let pids = all_pids();
    let shims: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|&p| {
            let c = cmdline(p);
            c.first().is_some_and(|a| a.contains("containerd-shim")) && c.iter().any(|a| a == id)
        })
        .collect();
    pids.into_iter().find(|&p| {
        ppid(p).is_some_and(|pp| shims.contains(&pp)) && {
            let c = cmdline(p);
            c.first()
                .is_some_and(|a| a.ends_with("docker-volume-sshfs"))
                && c.get(1).map(String::as_str) == Some("serve")
        }
    })
}

/// Waits until the plugin runs as a process other than `not` and answers `docker volume ls`.
pub fn wait_plugin_running(ctx: &Ctx, id: &str, not: Option<u32>, timeout: Duration) -> u32 {
    let mut found = None;
    let ok = wait_until(timeout, || {
        found = plugin_pid(id).filter(|p| Some(*p) != not);
        found.is_some() && docker(&["volume", "ls", "-q"]).success()
    });
    assert!(
        ok,
        "the plugin {} did not come back (new process answering docker volume ls) within {timeout:?}",
        ctx.cfg.plugin
    );
    found.unwrap()
}

/// FUSE mount points in the mount namespace of process `pid` (e.g. the plugin's /mnt/volumes/*).
pub fn fuse_mounts_of(pid: u32) -> Vec<PathBuf> {
    let info = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    parse_mountinfo(&info)
        .into_iter()
        .filter(|m| m.fs_type.starts_with("fuse"))
        .map(|m| m.mount_point)
        .collect()
}

/// Resident memory (KiB), thread count and open fds of a process.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub rss_kib: u64,
    pub threads: u64,
    pub fds: u64,
}

pub fn usage(pid: u32) -> Usage {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("listing /proc/{pid}/fd: {e}"))
        .count() as u64;
    Usage {
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
        fds,
    }
}

// ---------------------------------------------------------------------------------------------
// Talking to the plugin socket directly

/// The plugin's socket on the host: /run/docker/plugins/<id>/<interface.socket>.
pub fn plugin_socket(id: &str) -> PathBuf {
    Path::new("/run/docker/plugins").join(id).join("sshfs.sock")
}

/// `POST /<method>` with a JSON body, as dockerd sends it; returns the decoded answer.
pub fn plugin_call(socket: &Path, method: &str, body: &Value) -> Value {
    let body = body.to_string();
    let mut s = UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
    s.set_read_timeout(Some(Duration::from_secs(150))).unwrap();
    write!(
        s,
        "POST /{method} HTTP/1.1\r\nHost: plugin\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .unwrap_or_else(|e| panic!("reading the answer to {method}: {e}"));
    let resp = String::from_utf8_lossy(&resp);
    let (head, rest) = resp
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method}: no HTTP header in {resp:?}"));
    let payload = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    serde_json::from_str(&payload).unwrap_or_else(|e| panic!("{method}: answer {payload:?}: {e}"))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The `Err` of an answer, if any.
pub fn err_of(v: &Value) -> Option<String> {
    v.get("Err")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
}

// ---------------------------------------------------------------------------------------------
// docker volume inspect

/// `docker volume inspect NAME` as JSON (the single object).
pub fn inspect(name: &str) -> Value {
    let out = docker(&["volume", "inspect", name]).ok(&format!("docker volume inspect {name}"));
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("inspect output of {name}: {e}\n{}", out.stdout));
    v.get(0).cloned().unwrap_or(Value::Null)
}

// ---------------------------------------------------------------------------------------------
// The test SSH server

/// Host PID of the sshd listener (the container's main process), if it runs.
pub fn sshd_pid(cfg: &Config) -> Option<u32> {
    let out = docker(&[
        "inspect",
        "-f",
        "{{.State.Pid}}",
        cfg.sshd_container.as_str(),
    ]);
    out.stdout.trim().parse().ok().filter(|&p| p != 0)
}

/// Kills every established SSH session of the test server (the per-connection sshd processes
/// are the listener's children), like a dropped network. Returns how many were killed.
pub fn kill_ssh_sessions(cfg: &Config) -> usize {
    let pid = sshd_pid(cfg).expect("the test sshd is not running");
    // All descendants: with privilege separation the per-connection monitor ("sshd: u [priv]")
    // has a child ("sshd: u@notty") that holds the TCP connection and serves SFTP by itself.
    let pids = all_pids();
    let mut family = vec![pid];
    let mut i = 0;
    while i < family.len() {
        let parent = family[i];
        family.extend(pids.iter().copied().filter(|&p| ppid(p) == Some(parent)));
        i += 1;
    }
    let children: Vec<u32> = family[1..].to_vec();
    for &c in &children {
        // SAFETY: plain kill(2) on a PID we just found as the test sshd's child.
        unsafe {
            libc::kill(c as i32, libc::SIGKILL);
        }
    }
    children.len()
}

/// Until the server sends its SSH banner.
pub fn wait_sshd_ready(cfg: &Config, timeout: Duration) -> bool {
    let addr = format!("{}:{}", cfg.host, cfg.port);
    wait_until(timeout, || {
        let Ok(mut s) = TcpStream::connect(&addr) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut b = [0u8; 8];
        s.read_exact(&mut b).is_ok() && b.starts_with(b"SSH-2.0")
    })
}

pub fn stop_sshd(cfg: &Config) {
    docker(&["stop", "-t", "2", cfg.sshd_container.as_str()]).ok("docker stop of the test sshd");
}

pub fn start_sshd(cfg: &Config) {
    docker(&["start", cfg.sshd_container.as_str()]).ok("docker start of the test sshd");
    assert!(
        wait_sshd_ready(cfg, Duration::from_secs(30)),
        "the test sshd did not answer within 30 s after docker start"
    );
}

/// Makes sure the test SSH server runs (with its original host keys, if they were swapped)
/// when the test ends, whatever happened.
pub struct SshdGuard {
    cfg: Config,
    saved_keys: Option<(PathBuf, PathBuf)>,
}

impl SshdGuard {
    pub fn new(cfg: &Config) -> SshdGuard {
        assert!(
            wait_sshd_ready(cfg, Duration::from_secs(10)),
            "the test sshd {} does not answer on {}:{} (tests/docker/sshd.sh up)",
            cfg.sshd_container,
            cfg.host,
            cfg.port
        );
        SshdGuard {
            cfg: cfg.clone(),
            saved_keys: None,
        }
    }

    fn hostkeys(&self) -> PathBuf {
        self.cfg.dir.join("hostkeys")
    }

    /// Stops the server, deletes its host keys (kept aside for the restore) and starts it: it
    /// generates and presents new ones.
    pub fn swap_host_keys(&mut self) {
        let keys = self.hostkeys();
        let backup = self
            .cfg
            .dir
            .join(format!("hostkeys-backup-{}", std::process::id()));
        let _ = fs::remove_dir_all(&backup);
        fs::create_dir_all(&backup).unwrap();
        for e in fs::read_dir(&keys).unwrap().flatten() {
            fs::copy(e.path(), backup.join(e.file_name())).unwrap();
        }
        self.saved_keys = Some((keys.clone(), backup));
        stop_sshd(&self.cfg);
        for e in fs::read_dir(&keys).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                fs::remove_file(e.path()).unwrap();
            }
        }
        start_sshd(&self.cfg);
    }

    fn restore(&mut self) {
        if let Some((keys, backup)) = self.saved_keys.take() {
            let _ = docker(&["stop", "-t", "2", self.cfg.sshd_container.as_str()]);
            if let Ok(rd) = fs::read_dir(&keys) {
                for e in rd.flatten() {
                    let _ = fs::remove_file(e.path());
                }
            }
            if let Ok(rd) = fs::read_dir(&backup) {
                for e in rd.flatten() {
                    let _ = fs::copy(e.path(), keys.join(e.file_name()));
                }
            }
            let _ = fs::remove_dir_all(&backup);
        }
        if !wait_sshd_ready(&self.cfg, Duration::from_secs(1)) {
            let _ = docker(&["start", self.cfg.sshd_container.as_str()]);
            if !wait_sshd_ready(&self.cfg, Duration::from_secs(30)) {
                eprintln!("cleanup: the test sshd did not come back");
            }
        }
    }
}

impl Drop for SshdGuard {
    fn drop(&mut self) {
        self.restore();
    }
}

/// `ssh-keygen -lf FILE`: the SHA256 fingerprint of a public key file.
pub fn fingerprint_of(pubkey: &Path) -> String {
    let out = run_cmd(
        "ssh-keygen",
        &["-l", "-E", "sha256", "-f", pubkey.to_str().unwrap()],
        Duration::from_secs(10),
    )
    .ok("ssh-keygen -lf");
    out.stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no fingerprint in {:?}", out.stdout))
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// dockerd: its process, its log, restarting it

#[derive(Clone, Debug)]
pub struct Dockerd {
    pub pid: u32,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// Where its stderr goes (plugin output is logged there), when that is a regular file.
    pub log: Option<PathBuf>,
}

pub fn dockerd() -> Dockerd {
    let pid = all_pids()
        .into_iter()
        .find(|&p| {
            fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "dockerd")
        })
        .expect("no dockerd process on this machine");
    let env = fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|&c| c == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect();
    let log = fs::read_link(format!("/proc/{pid}/fd/2"))
        .ok()
        .filter(|p| p.is_file());
    Dockerd {
        pid,
        argv: cmdline(pid),
        env,
        cwd: fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_else(|_| "/".into()),
        log,
    }
}

impl Dockerd {
    /// Starts dockerd as tests/docker/dockerd.sh does (`nohup dockerd >LOG 2>&1 &`, but appending
    /// to the log), detached from us, with the command line, environment and directory the
    /// previous one had.
    fn spawn(&self) {
        let log = self
            .log
            .clone()
            .unwrap_or_else(|| PathBuf::from("/tmp/dockerd-restarted-by-tests.log"));
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        // SAFETY: setsid() and fcntl() are async-signal-safe. setsid detaches dockerd from the
        // test's session so that a test timeout killing our process group leaves it running.
        // Every inherited descriptor is closed on exec: dockerd (and its containerd) would
        // otherwise keep them open for their whole life, e.g. the `flock` lock a test run is
        // wrapped in, blocking every later run.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                for fd in 3..4096 {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags >= 0 {
                        libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                    }
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", self.argv));
        // Reap it from a thread if it ever exits while we run (no zombie).
        thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
    }

    /// SIGTERM, wait for it to exit, start it again, wait for `docker info`.
    pub fn restart(&self) -> Duration {
        let t0 = Instant::now();
        // SAFETY: kill(2) on dockerd's PID.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        let gone = wait_until(Duration::from_secs(60), || {
            !Path::new(&format!("/proc/{}", self.pid)).exists()
                || fs::read_to_string(format!("/proc/{}/stat", self.pid))
                    .is_ok_and(|s| s.contains(") Z "))
        });
        assert!(
            gone,
            "dockerd (pid {}) did not stop within 60 s of SIGTERM",
            self.pid
        );
        self.spawn();
        assert!(
            wait_docker_info(Duration::from_secs(90)),
            "dockerd did not answer `docker info` within 90 s after the restart"
        );
        t0.elapsed()
    }
}

pub fn wait_docker_info(timeout: Duration) -> bool {
    wait_until(timeout, || {
        run_cmd(
            "docker",
            &["info", "-f", "{{.ID}}"],
            Duration::from_secs(10),
        )
        .success()
    })
}

/// Starts dockerd again on drop if it does not answer (a test failed between stop and start).
pub struct DockerdGuard(pub Dockerd);

impl Drop for DockerdGuard {
    fn drop(&mut self) {
        if !wait_docker_info(Duration::from_secs(5)) {
            eprintln!("cleanup: dockerd does not answer; starting it again");
            let alive = dockerd_alive();
            if !alive {
                self.0.spawn();
            }
            if !wait_docker_info(Duration::from_secs(90)) {
                eprintln!("cleanup: dockerd did not come back");
            }
        }
    }
}

fn dockerd_alive() -> bool {
    all_pids()
        .into_iter()
        .any(|p| fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "dockerd"))
}

// ---------------------------------------------------------------------------------------------
// Misc

/// A local image built for one test (`docker build`), removed on drop.
pub struct Image(pub String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = run_cmd(
            "docker",
            &["rmi", "-f", self.0.as_str()],
            Duration::from_secs(60),
        );
    }
}
