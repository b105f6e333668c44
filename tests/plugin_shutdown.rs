//! Issue 11, "shutdown drains every volume, whatever else is in flight", through a real Docker
//! engine: `docker plugin disable -f` while one volume's Mount hangs on a server that accepts
//! TCP and never answers, and another volume has a container holding a file open with 8 MiB
//! written. The plugin must stop taking calls, drain and unmount within dockerd's 10 s (no
//! SIGKILL), and the second volume's bytes must all be on its server.
//!
//! Run with `tests/run.sh --test plugin_shutdown` (SSHFS_E2E=1; without it the test skips).

mod e2e;

use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use e2e::{DockerdLog, Kind, docker, setup, wait_until};

/// A TCP server that accepts connections and never sends a byte (an SSH server that hangs).
fn black_hole() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    port
}

/// Puts the plugin back to enabled whatever happens in the test.
struct Reenable(String);

impl Drop for Reenable {
    fn drop(&mut self) {
        let _ = docker(&["plugin", "enable", self.0.as_str()]);
    }
}

#[test]
fn disable_drains_every_volume_while_a_mount_hangs() {
    let Some(ctx) = setup("disable_drains_every_volume", Kind::Exclusive) else {
        return;
    };
    let log = DockerdLog::from_now();
    let id = ctx.plugin_id();

    // A volume whose server never answers: its Mount hangs (ConnectTimeout far beyond 10 s).
    let hang_port = black_hole();
    let stuck = ctx.volume(
        "hang",
        &[
            "sshcmd=tester@127.0.0.1:/data/never".to_string(),
            format!("port={hang_port}"),
            format!("password={}", ctx.cfg.password),
            "ConnectTimeout=100".to_string(),
        ],
    );
    // A volume with a container holding a file open after writing 8 MiB to it.
    let (vol, dir) = ctx.password_volume("drain");
    let holder = ctx.start_cmd(
        vol.as_str(),
        &[
            "sh",
            "-c",
            "(yes 0123456789abcdef | head -c 8388608; sleep 3600) > /data/open.bin",
        ],
    );
    let written = wait_until(Duration::from_secs(60), || {
        holder
            .exec("wc -c < /data/open.bin")
            .stdout
            .trim()
            .parse::<u64>()
            .is_ok_and(|n| n == 8 * 1024 * 1024)
    });
    assert!(written, "the container wrote its 8 MiB");

    // Start the Mount that hangs, and give the plugin time to be inside it.
    thread::scope(|scope| {
        let hanging = scope.spawn(|| ctx.run(stuck.as_str(), &[], "true"));
        thread::sleep(Duration::from_secs(3));

        let reenable = Reenable(ctx.cfg.plugin.clone());
        let started = Instant::now();
        docker(&["plugin", "disable", "-f", ctx.cfg.plugin.as_str()])
            .ok("docker plugin disable -f");
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(9),
            "disable took {took:?}: the plugin did not stop by itself within dockerd's 10 s \
             (a hanging Mount held up the shutdown, and dockerd had to SIGKILL it)"
        );
        let on_server = std::fs::read(dir.host.join("open.bin")).unwrap_or_default();
        assert_eq!(on_server.len(), 8 * 1024 * 1024, "bytes on the server");
        assert!(
            on_server
                .chunks(17)
                .all(|c| b"0123456789abcdef\n".starts_with(c)),
            "the server's copy is what the container wrote"
        );
        if let Some(log) = &log {
            let lines = log.plugin_lines(&id);
            assert!(
                lines.contains("stopped: every volume drained and unmounted"),
                "the plugin's log shows a complete shutdown:\n{lines}"
            );
        } else {
            eprintln!("note: dockerd's log is not a file here: the plugin's log was not checked");
        }
        drop(reenable);
        let out = hanging.join().unwrap();
        assert!(
            !out.success(),
            "the Mount on a dead server cannot have succeeded"
        );
    });
    drop(holder);
}
