//! A throwaway Docker registry on loopback, for the tests that install the plugin the way users
//! do: Debian's `docker-registry` (distribution 2.8) with a config and storage of its own under
//! `$SSHFS_TEST_DIR/registry-<port>`, listening on 127.0.0.1:`$SSHFS_TEST_REGISTRY_PORT`.
//! dockerd reaches it as `localhost:PORT`, the one registry address it speaks plain HTTP to
//! (`127.0.0.1:PORT` would need HTTPS). Stopped, and its storage removed, on drop.
//!
//! Also here: building and pushing a plugin with `build-rootfs.sh --push`, as a release does.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Out, run_cmd, run_cmd_env, setting};

/// A full release build of the crate can take this long on a busy 2-core machine.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(1800);

pub struct Registry {
    pub port: u16,
    dir: PathBuf,
    child: Child,
}

impl Registry {
    /// Starts the registry and waits until it answers `/v2/`.
    pub fn start() -> Registry {
        let port = setting("SSHFS_TEST_REGISTRY_PORT");
        let port: u16 = port
            .parse()
            .unwrap_or_else(|_| panic!("SSHFS_TEST_REGISTRY_PORT={port} is not a port number"));
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} (SSHFS_TEST_REGISTRY_PORT) is taken: a registry left by an aborted run? \
             (ss -ltnp 'sport = :{port}'), or choose another port"
        );
        let dir = PathBuf::from(setting("SSHFS_TEST_DIR")).join(format!("registry-{port}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("storage")).unwrap();
        let config = dir.join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                dir.join("storage").display()
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run docker-registry ({e}): apt-get install docker-registry")
            });
        let mut reg = Registry { port, dir, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let probe = run_cmd(
                "curl",
                &["-sf", &format!("http://127.0.0.1:{port}/v2/")],
                Duration::from_secs(5),
            );
            if probe.success() {
                return reg;
            }
            if let Ok(Some(st)) = reg.child.try_wait() {
                panic!("docker-registry exited with {st}: {}", reg.log());
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on 127.0.0.1:{port} within 20 s: {}",
                reg.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The registry as dockerd must name it: `localhost:PORT`.
    pub fn host(&self) -> String {
        format!("localhost:{}", self.port)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `[SSHFS_BUILD_VERSION=<version>] ./build-rootfs.sh [--arch A] --push <reference>`: builds the
/// bundle (reporting `version` if given), creates the plugin under `reference`, pushes it and
/// removes the local copy. Returns the script's output (build time and bundle size included).
pub fn build_and_push(version: Option<&str>, arch: Option<&str>, reference: &str) -> Out {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("build-rootfs.sh");
    let mut args: Vec<&str> = Vec::new();
    if let Some(a) = arch {
        args.extend(["--arch", a]);
    }
    args.extend(["--push", reference]);
    let envs: Vec<(&str, &str)> = version
        .map(|v| ("SSHFS_BUILD_VERSION", v))
        .into_iter()
        .collect();
    run_cmd_env(script.to_str().unwrap(), &args, &envs, BUILD_TIMEOUT)
}
