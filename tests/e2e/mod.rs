//! Helpers for the end-to-end tests that drive a real Docker engine with the installed plugin.
//!
//! The environment (plugin, test SSH server, images) is prepared by `tests/run.sh`; settings come
//! from the variables `tests/docker/env.sh` exports (the one home of their defaults: none here).
//! The tests skip themselves unless `SSHFS_E2E=1`, so a bare `cargo test` on a machine without
//! Docker still passes.
//!
//! Everything a test creates is named `sshfs-e2e-*` (volumes, services, compose projects) or
//! labelled `org.sshfs-test.e2e` (containers), and removed by Drop guards even when the test fails;
//! `tests/run.sh` removes leftovers of aborted runs.
//!
//! Serialisation: tests that disable the plugin, change its settings or the swarm state take the
//! global lock exclusively ([`Kind::Exclusive`]); all others share it and run in parallel.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread;
use std::time::{Duration, Instant};

use docker_volume_sshfs::mount::mount_table;

pub mod registry;

/// Longer than dockerd's own 2-minute Create/Mount timeout, so dockerd's error is what we see.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(150);
/// The label every container started by these tests carries (for cleanup by tests/run.sh).
pub const LABEL: &str = "org.sshfs-test.e2e=1";
/// Prefix of every volume, service and compose project name the tests create.
pub const PREFIX: &str = "sshfs-e2e";

/// Settings from the environment, as tests/docker/env.sh exports them.
#[derive(Clone, Debug)]
pub struct Config {
    pub plugin: String,
    pub host: String,
    pub port: u16,
    pub password: String,
    pub root_password: String,
    /// Host dir with data/ (the server's /data), hostkeys/, client/ (key pair).
    pub dir: PathBuf,
    pub image: String,
    pub sshd_container: String,
}

/// A setting tests/docker/env.sh exports; panics with what to do when it is missing.
fn setting(name: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not set: run the e2e tests through tests/run.sh, which sources \
                 tests/docker/env.sh"
            )
        })
}

impl Config {
    pub fn from_env() -> Config {
        let port = setting("SSHFS_TEST_PORT");
        Config {
            plugin: setting("SSHFS_PLUGIN"),
            host: setting("SSHFS_TEST_HOST"),
            port: port
                .parse()
                .unwrap_or_else(|_| panic!("SSHFS_TEST_PORT={port} is not a port number")),
            password: setting("SSHFS_TEST_PASSWORD"),
            root_password: setting("SSHFS_TEST_ROOT_PASSWORD"),
            dir: PathBuf::from(setting("SSHFS_TEST_DIR")),
            image: setting("SSHFS_TEST_BUSYBOX_IMAGE"),
            sshd_container: setting("SSHFS_TEST_SSHD_CONTAINER"),
        }
    }

    /// Where the server's /data is on the host.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The client key pair (also usable as the plugin's sshkey.source).
    pub fn client_key_dir(&self) -> PathBuf {
        self.dir.join("client")
    }
}

// ---------------------------------------------------------------------------------------------
// Running commands

/// What a finished (or killed) command produced.
#[derive(Debug)]
pub struct Out {
    pub cmdline: String,
    pub code: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    /// stdout and stderr together, for assertions on messages.
    pub fn text(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    fn describe(&self) -> String {
        format!(
            "`{}` {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            if self.timed_out {
                "TIMED OUT".to_string()
            } else {
                format!("exited with {:?}", self.code)
            },
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    /// Panics with the full output unless the command succeeded; `what` says what it was for.
    #[track_caller]
    pub fn ok(self, what: &str) -> Out {
        if !self.success() {
            panic!("{what}: command failed: {}", self.describe());
        }
        self
    }

    /// Panics unless the command failed (and did not just time out).
    #[track_caller]
    pub fn fails(self, what: &str) -> Out {
        if self.timed_out {
            panic!(
                "{what}: expected a clear failure, but it hung: {}",
                self.describe()
            );
        }
        if self.success() {
            panic!("{what}: expected the command to fail: {}", self.describe());
        }
        self
    }
}

/// Runs a command with stdin closed, capturing output, killing it after `timeout`.
pub fn run_cmd<S: AsRef<str>>(program: &str, args: &[S], timeout: Duration) -> Out {
    run_cmd_env(program, args, &[], timeout)
}

/// [`run_cmd`] with extra environment variables.
pub fn run_cmd_env<S: AsRef<str>>(
    program: &str,
    args: &[S],
    envs: &[(&str, &str)],
    timeout: Duration,
) -> Out {
    let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
    let cmdline = std::iter::once(program.to_string())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(program)
        .args(&args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{cmdline}`: {e}"));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = so.read_to_end(&mut b);
        b
    });
    let t_err = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = se.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().ok();
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for `{cmdline}`: {e}"),
        }
    };
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    Out {
        cmdline,
        code: status.and_then(|s| s.code()),
        timed_out,
        stdout,
        stderr,
    }
}

/// `docker ARGS...` with the default timeout.
pub fn docker<S: AsRef<str>>(args: &[S]) -> Out {
    run_cmd("docker", args, DOCKER_TIMEOUT)
}

/// Whether `docker volume ls` lists a volume called `name`.
pub fn volume_listed(name: &str) -> bool {
    docker(&["volume", "ls", "-q"])
        .ok("docker volume ls")
        .stdout
        .lines()
        .any(|l| l == name)
}

/// Polls `f` every 200 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Asserts that every one of `results` (say, of [`Ctx::run_parallel`]) passes `ok`; the failure
/// message lists each one that does not, by its index, with its output.
#[track_caller]
pub fn assert_all(results: &[Out], what: &str, ok: impl Fn(&Out) -> bool) {
    let failed: Vec<String> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| !ok(r))
        .map(|(i, r)| format!("{what} {i}: {:?}\n{}", r.code, r.text().trim()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed ({what}):\n{}",
        failed.len(),
        results.len(),
        failed.join("\n")
    );
}

/// Case-insensitive substring assertion with the whole text in the failure message.
#[track_caller]
pub fn assert_mentions(text: &str, needle: &str, what: &str) {
    assert!(
        text.to_lowercase().contains(&needle.to_lowercase()),
        "{what}: expected the message to mention {needle:?}, got:\n{text}"
    );
}

/// The opposite: e.g. secrets that must never be printed.
#[track_caller]
pub fn assert_not_mentions(text: &str, needle: &str, what: &str) {
    assert!(
        !text.contains(needle),
        "{what}: the message must not contain {needle:?}, got:\n{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Test context, serialisation

static LOCK: RwLock<()> = RwLock::new(());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Whether a test may run alongside others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Uses its own volumes only.
    Shared,
    /// Disables the plugin, changes its settings, joins a swarm or counts all of the plugin's mounts.
    Exclusive,
}

enum Held {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

/// One test's context: configuration and its place in the serialisation. Declare it first in a
/// test so that it is dropped last (after the volumes and containers it guards).
pub struct Ctx {
    pub cfg: Config,
    pub name: String,
    _held: Held,
}

/// Starts a test, or returns `None` (the test then returns) when e2e tests are not enabled.
pub fn setup(name: &str, kind: Kind) -> Option<Ctx> {
    if std::env::var("SSHFS_E2E").ok().as_deref() != Some("1") {
        eprintln!(
            "skipping {name}: end-to-end tests need Docker and the plugin; run tests/run.sh (sets SSHFS_E2E=1)"
        );
        return None;
    }
    // A panicking test poisons the lock; the others must still run.
    let held = match kind {
        Kind::Shared => Held::Shared(LOCK.read().unwrap_or_else(|e| e.into_inner())),
        Kind::Exclusive => Held::Exclusive(LOCK.write().unwrap_or_else(|e| e.into_inner())),
    };
    let cfg = Config::from_env();
    let ctx = Ctx {
        cfg,
        name: name.to_string(),
        _held: held,
    };
    if ctx.inspect_plugin("{{.Enabled}}").stdout.trim() != "true" {
        // An earlier test may have failed between disable and enable.
        docker(&["plugin", "enable", ctx.cfg.plugin.as_str()]);
    }
    Some(ctx)
}

impl Ctx {
    /// A name unique in this run and across runs: sshfs-e2e-<tag>-<pid>-<n>.
    pub fn unique(&self, tag: &str) -> String {
        format!(
            "{PREFIX}-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A fresh directory on the test server, owned by tester (uid 1000).
    pub fn remote_dir(&self, tag: &str) -> RemoteDir {
        let name = self.unique(tag);
        let host = self.cfg.data_dir().join(&name);
        fs::create_dir_all(&host).unwrap_or_else(|e| panic!("creating {}: {e}", host.display()));
        std::os::unix::fs::chown(&host, Some(1000), Some(1000))
            .unwrap_or_else(|e| panic!("chown {}: {e}", host.display()));
        fs::set_permissions(&host, fs::Permissions::from_mode(0o755)).unwrap();
        RemoteDir {
            host,
            remote: format!("/data/{name}"),
        }
    }

    /// `tester@127.0.0.1:<path>`
    pub fn sshcmd(&self, remote_path: &str) -> String {
        format!("tester@{}:{}", self.cfg.host, remote_path)
    }

    /// The usual options: password login as tester to `dir`.
    pub fn password_opts(&self, dir: &RemoteDir) -> Vec<String> {
        vec![
            format!("sshcmd={}", self.sshcmd(&dir.remote)),
            format!("password={}", self.cfg.password),
            format!("port={}", self.cfg.port),
        ]
    }

    /// `docker volume create -d <plugin> -o OPT... NAME`, returning the raw output.
    pub fn try_create_volume(&self, name: &str, opts: &[String]) -> Out {
        let mut args = vec![
            "volume".to_string(),
            "create".into(),
            "-d".into(),
            self.cfg.plugin.clone(),
        ];
        for o in opts {
            args.push("-o".into());
            args.push(o.clone());
        }
        args.push(name.to_string());
        docker(&args)
    }

    /// Creates a volume that must succeed; removed when the guard drops.
    pub fn volume(&self, tag: &str, opts: &[String]) -> Volume {
        let name = self.unique(tag);
        let guard = Volume { name: name.clone() };
        self.try_create_volume(&name, opts)
            .ok(&format!("{}: docker volume create {name}", self.name));
        guard
    }

    /// `docker volume rm NAME`. Retries for a few seconds while dockerd itself still counts a
    /// just-exited `--rm` container as a user ("volume is in use"); an error from the plugin is
    /// returned at once.
    pub fn rm_volume(&self, name: &str) -> Out {
        let mut out = docker(&["volume", "rm", name]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !out.success()
            && out.stderr.contains("volume is in use")
            && !out.stderr.contains("VolumeDriver")
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(300));
            out = docker(&["volume", "rm", name]);
        }
        out
    }

    /// Password volume on a fresh remote dir.
    pub fn password_volume(&self, tag: &str) -> (Volume, RemoteDir) {
        let dir = self.remote_dir(tag);
        let vol = self.volume(tag, &self.password_opts(&dir));
        (vol, dir)
    }

    /// `docker run --rm --network none -v VOL:/data [extra] busybox sh -c SCRIPT`.
    pub fn run(&self, vol: &str, extra: &[&str], script: &str) -> Out {
        let name = self.unique("c");
        let _guard = Container { name: name.clone() };
        let mut args: Vec<String> = vec![
            "run".into(),
            "--rm".into(),
            "--name".into(),
            name,
            "--label".into(),
            LABEL.into(),
            "--network".into(),
            "none".into(),
            "-v".into(),
            format!("{vol}:/data"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend([
            self.cfg.image.clone(),
            "sh".into(),
            "-c".into(),
            script.into(),
        ]);
        docker(&args)
    }

    /// One container per job (volume, script), all at the same time, each as [`Ctx::run`] without
    /// extra arguments; the results in the order of `jobs`.
    pub fn run_parallel(&self, jobs: &[(&str, String)]) -> Vec<Out> {
        thread::scope(|s| {
            let handles: Vec<_> = jobs
                .iter()
                .map(|(vol, script)| s.spawn(move || self.run(vol, &[], script)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// Same as [`Ctx::run`], but must succeed; returns stdout.
    #[track_caller]
    pub fn run_ok(&self, vol: &str, extra: &[&str], script: &str) -> String {
        self.run(vol, extra, script)
            .ok(&format!(
                "{}: container on {vol} running `{script}`",
                self.name
            ))
            .stdout
    }

    /// A container left running (`sleep`) with the volume at /data; removed on drop.
    pub fn start(&self, vol: &str) -> Container {
        self.start_cmd(vol, &["sleep", "3600"])
    }

    /// `docker run -d` of `cmd` in the test image with the volume at /data; removed on drop.
    pub fn start_cmd(&self, vol: &str, cmd: &[&str]) -> Container {
        let name = self.unique("bg");
        let guard = Container { name: name.clone() };
        let volume = format!("{vol}:/data");
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            LABEL,
            "--network",
            "none",
            "-v",
            &volume,
            &self.cfg.image,
        ];
        args.extend_from_slice(cmd);
        docker(&args).ok(&format!(
            "{}: starting a background container on {vol}",
            self.name
        ));
        guard
    }

    /// Reads a file the server has (via the bind-mounted /data), if present.
    pub fn server_file(&self, dir: &RemoteDir, rel: &str) -> Option<String> {
        fs::read_to_string(dir.host.join(rel)).ok()
    }

    /// Asserts the server has `rel` in `dir` with exactly `content`.
    #[track_caller]
    pub fn assert_server_file(&self, dir: &RemoteDir, rel: &str, content: &str) {
        let got = self.server_file(dir, rel);
        assert_eq!(
            got.as_deref(),
            Some(content),
            "{}: server file {}/{rel}",
            self.name,
            dir.host.display()
        );
    }

    /// The host directory under which the plugin's mounts appear.
    pub fn propagated_mount_root(&self) -> PathBuf {
        let id = self.plugin_id();
        let root = docker(&["info", "-f", "{{.DockerRootDir}}"])
            .ok("docker root dir")
            .stdout
            .trim()
            .to_string();
        Path::new(&root)
            .join("plugins")
            .join(id)
            .join("propagated-mount")
    }

    /// Asserts that Docker names the plugin under test as `volume`'s driver.
    #[track_caller]
    pub fn assert_volume_driver(&self, volume: &str, what: &str) {
        let driver = docker(&["volume", "inspect", "-f", "{{.Driver}}", volume])
            .ok(&format!("{what}: docker volume inspect {volume}"));
        assert_mentions(
            &driver.stdout,
            self.cfg.plugin.trim_end_matches(":latest"),
            what,
        );
    }

    /// `docker plugin inspect -f FORMAT <plugin under test>`.
    pub fn inspect_plugin(&self, format: &str) -> Out {
        docker(&["plugin", "inspect", "-f", format, self.cfg.plugin.as_str()])
    }

    /// Current value of a plugin mount setting (`state`, `sshkey`): its host source.
    pub fn plugin_mount_source(&self, mount: &str) -> String {
        self.inspect_plugin(&format!(
            "{{{{range .Settings.Mounts}}}}{{{{if eq .Name \"{mount}\"}}}}{{{{.Source}}}}{{{{end}}}}{{{{end}}}}"
        ))
        .ok(&format!("reading the plugin's {mount}.source"))
        .stdout
        .trim()
        .to_string()
    }

    /// Current value of a plugin environment setting (`DEBUG`).
    pub fn plugin_env(&self, name: &str) -> String {
        let out = self
            .inspect_plugin("{{range .Settings.Env}}{{println .}}{{end}}")
            .ok(&format!("reading the plugin's {name}"));
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_string))
            .unwrap_or_else(|| panic!("the plugin has no setting {name}: {}", out.stdout))
    }

    /// The plugin's id (dockerd tags the plugin's log lines with `plugin=<id>`).
    pub fn plugin_id(&self) -> String {
        self.inspect_plugin("{{.Id}}")
            .ok("plugin id")
            .stdout
            .trim()
            .to_string()
    }

    /// Disables the plugin (forced: our volumes may exist), applies `settings` (`key=value`),
    /// enables it again. The returned guard restores the previous values the same way.
    pub fn plugin_settings(&self, settings: &[(&str, String)]) -> PluginSettings {
        let mut restore = Vec::new();
        for (key, _) in settings {
            let old = match key.strip_suffix(".source") {
                Some(mount) => self.plugin_mount_source(mount),
                None => self.plugin_env(key),
            };
            restore.push((key.to_string(), old));
        }
        let guard = PluginSettings {
            plugin: self.cfg.plugin.clone(),
            restore,
        };
        apply_settings(
            &self.cfg.plugin,
            &settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<Vec<_>>(),
        );
        guard
    }
}

fn apply_settings(plugin: &str, settings: &[(String, String)]) {
    docker(&["plugin", "disable", "-f", plugin]).ok("docker plugin disable -f");
    let mut args = vec!["plugin".to_string(), "set".into(), plugin.to_string()];
    args.extend(settings.iter().map(|(k, v)| format!("{k}={v}")));
    let set = docker(&args);
    // Enable even if set failed, so later tests find the plugin working.
    let enable = docker(&["plugin", "enable", plugin]);
    set.ok("docker plugin set");
    enable.ok("docker plugin enable");
}

/// Restores plugin settings on drop.
pub struct PluginSettings {
    plugin: String,
    restore: Vec<(String, String)>,
}

impl Drop for PluginSettings {
    fn drop(&mut self) {
        let restore = std::mem::take(&mut self.restore);
        let plugin = self.plugin.clone();
        // Don't panic while already panicking (it would abort and hide the first failure).
        let r = std::panic::catch_unwind(move || apply_settings(&plugin, &restore));
        if let Err(e) = r
            && !thread::panicking()
        {
            std::panic::resume_unwind(e);
        }
    }
}

/// A directory on the test server: `host` is the same directory seen on this machine.
#[derive(Clone, Debug)]
pub struct RemoteDir {
    pub host: PathBuf,
    pub remote: String,
}

/// Removes a host directory (recursively) on drop.
pub struct RemoveDir(pub PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Removes the volume on drop (`docker volume rm -f`), failures ignored.
pub struct Volume {
    pub name: String,
}

impl Volume {
    pub fn as_str(&self) -> &str {
        &self.name
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let out = docker(&["volume", "rm", "-f", self.name.as_str()]);
        if !out.success() {
            eprintln!("cleanup: {}", out.describe());
        }
    }
}

/// Removes the container on drop (`docker rm -f`), failures ignored.
pub struct Container {
    pub name: String,
}

impl Container {
    /// `docker exec NAME sh -c SCRIPT`
    pub fn exec(&self, script: &str) -> Out {
        docker(&["exec", self.name.as_str(), "sh", "-c", script])
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = run_cmd(
            "docker",
            &["rm", "-f", self.name.as_str()],
            Duration::from_secs(60),
        );
    }
}

/// Waits until the volume is no longer mounted: its mount lingers for a moment after the last
/// container (README, "When the mount goes away"), and a container started meanwhile would take
/// it back rather than connect afresh.
#[track_caller]
pub fn wait_unmounted(vol: &str) {
    if !wait_until(Duration::from_secs(20), || {
        !["mounted", "reconnecting"].contains(&volume_state(vol).as_str())
    }) {
        panic!("volume {vol} still {} after 20 s", volume_state(vol));
    }
}

/// The volume's Status `state` (`idle`, `mounted`, ...), as `docker volume inspect` shows it.
pub fn volume_state(vol: &str) -> String {
    docker(&["volume", "inspect", "-f", "{{.Status.state}}", vol])
        .stdout
        .trim()
        .to_string()
}

/// FUSE mount points under `root` in this process's mount namespace, in mountinfo order (a mount
/// that propagated to two peers is listed twice).
pub fn fuse_mounts_under(root: &Path) -> Vec<PathBuf> {
    mount_table()
        .expect("reading /proc/self/mountinfo")
        .into_iter()
        .filter(|m| m.fs_type.starts_with("fuse") && m.mount_point.starts_with(root))
        .map(|m| m.mount_point)
        .collect()
}

/// The FUSE mounts a test adds under a directory: those that were not there when it was made.
pub struct NewFuseMounts {
    pub root: PathBuf,
    pub before: Vec<PathBuf>,
}

impl NewFuseMounts {
    pub fn under(root: PathBuf) -> NewFuseMounts {
        let before = fuse_mounts_under(&root);
        NewFuseMounts { root, before }
    }

    /// The new ones, in mountinfo order (with repeats, see [`fuse_mounts_under`]).
    pub fn list(&self) -> Vec<PathBuf> {
        fuse_mounts_under(&self.root)
            .into_iter()
            .filter(|m| !self.before.contains(m))
            .collect()
    }

    /// The new mount points, each once.
    pub fn distinct(&self) -> BTreeSet<PathBuf> {
        self.list().into_iter().collect()
    }

    /// Waits up to `timeout` for every new mount to be gone; panics with `what` and the ones
    /// left otherwise.
    #[track_caller]
    pub fn assert_gone_within(&self, timeout: Duration, what: &str) {
        if !wait_until(timeout, || self.list().is_empty()) {
            panic!("{what}: {:?}", self.list());
        }
    }
}

/// dockerd's log, read from a point on: the plugin's output lands there, each line tagged
/// `plugin=<id>`. The file is SSHFS_DOCKERD_LOG (tests/run.sh sets it), else dockerd's stderr
/// when that is a regular file.
pub struct DockerdLog {
    pub file: PathBuf,
    from: u64,
}

impl DockerdLog {
    /// The log from its current end; `None` when dockerd's log is not a file we can find.
    pub fn from_now() -> Option<DockerdLog> {
        let file = std::env::var("SSHFS_DOCKERD_LOG")
            .ok()
            .filter(|f| !f.is_empty())
            .map(PathBuf::from)
            .or_else(dockerd_stderr_file)?;
        let from = fs::metadata(&file).map_or(0, |m| m.len());
        Some(DockerdLog { file, from })
    }

    /// The plugin's lines written since, after a moment for dockerd to write them out.
    pub fn plugin_lines(&self, plugin_id: &str) -> String {
        thread::sleep(Duration::from_secs(1));
        let bytes =
            fs::read(&self.file).unwrap_or_else(|e| panic!("reading {}: {e}", self.file.display()));
        let new = &bytes[(self.from as usize).min(bytes.len())..];
        let tag = format!("plugin={plugin_id}");
        String::from_utf8_lossy(new)
            .lines()
            .filter(|l| l.contains(&tag))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Where the running dockerd's stderr goes, when that is a regular file.
fn dockerd_stderr_file() -> Option<PathBuf> {
    let pid = fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|p| {
            fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "dockerd")
        })?;
    fs::read_link(format!("/proc/{pid}/fd/2"))
        .ok()
        .filter(|p| p.is_file())
}
