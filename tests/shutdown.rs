//! Issue 11, "shutdown drains every volume": the `mount` command asked to stop (SIGTERM) or
//! unmounted from outside while a file is open with writes still queued gets every byte to
//! the server before it exits. The server is made slow on purpose: its sftp-server processes
//! are stopped (SIGSTOP) while writes queue, and resumed only after the old 5 s unmount wait.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const MIB: usize = 1024 * 1024;

/// The processes below `root` (children, grandchildren, ...) whose name is `comm`.
fn descendants_named(root: u32, comm: &str) -> Vec<u32> {
    let parent_of = |pid: u32| -> Option<u32> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        rest.split(' ').nth(1)?.parse().ok()
    };
    let pids: Vec<u32> = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.into_iter()
        .filter(|&p| fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm))
        .filter(|&p| {
            let mut cur = p;
            for _ in 0..16 {
                match parent_of(cur) {
                    Some(pp) if pp == root => return true,
                    Some(pp) if pp > 1 => cur = pp,
                    _ => return false,
                }
            }
            false
        })
        .collect()
}

/// The listening sshd's pid, from the pid file its config names.
fn sshd_pid(sshd: &Sshd) -> u32 {
    fs::read_to_string(sshd.dir.path().join("sshd.pid"))
        .expect("sshd pid file")
        .trim()
        .parse()
        .unwrap()
}

/// Stops this server's sftp-server processes until dropped (then resumes them).
struct Frozen(Vec<u32>);

impl Frozen {
    fn sftp_servers(sshd: &Sshd) -> Frozen {
        let pids = descendants_named(sshd_pid(sshd), "sftp-server");
        assert!(!pids.is_empty(), "no sftp-server process found to stop");
        for &p in &pids {
            kill(Pid::from_raw(p as i32), Signal::SIGSTOP).unwrap();
        }
        Frozen(pids)
    }

    fn thaw(&mut self) {
        for p in std::mem::take(&mut self.0) {
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGCONT);
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.thaw();
    }
}

/// Writes `first` bytes (so the file's writes are spread over several channels), stops the
/// server's sftp-servers, queues `more` bytes behind them, and returns the open file and
/// everything written.
fn write_then_freeze(
    sshd: &Sshd,
    path: &Path,
    first: usize,
    more: usize,
) -> (fs::File, Frozen, Vec<u8>) {
    let data = pseudo_random(11, first + more);
    let mut f = fs::File::create(path).unwrap();
    f.write_all(&data[..first]).unwrap();
    f.sync_all().unwrap();
    let frozen = Frozen::sftp_servers(sshd);
    // Write-behind takes these at once (they fit its 32 MiB budget); they are queued in the
    // mount process, most of them not even on the wire.
    f.write_all(&data[first..]).unwrap();
    (f, frozen, data)
}

#[test]
fn sigterm_drains_writes_queued_for_an_open_file() {
    let sshd = Sshd::start();
    let mut m = Mount::root(&sshd, "", "");
    let (f, mut frozen, data) = write_then_freeze(&sshd, &m.path("queued.bin"), 6 * MIB, 18 * MIB);
    m.signal(Signal::SIGTERM);
    // Longer than the 5 s an unmount waits for a busy mount before it goes on regardless.
    std::thread::sleep(Duration::from_secs(7));
    assert!(
        m.wait_exit(Duration::from_millis(10)).is_none(),
        "the mount command exited while its queued writes could not reach the server"
    );
    frozen.thaw();
    let status = m
        .wait_exit(Duration::from_secs(60))
        .expect("the mount command exits once its writes are on the server");
    assert!(
        status.success(),
        "exit status {status}; stderr: {}",
        m.stderr()
    );
    drop(f);
    let got = fs::read(sshd.data.join("queued.bin")).unwrap();
    assert_eq!(got.len(), data.len(), "bytes on the server");
    assert!(
        got == data,
        "the server's copy differs from what was written"
    );
}

#[test]
fn external_lazy_umount_keeps_serving_open_files_until_closed() {
    let sshd = Sshd::start();
    let mut m = Mount::root(&sshd, "", "");
    let (mut f, mut frozen, mut data) =
        write_then_freeze(&sshd, &m.path("detached.bin"), 6 * MIB, 10 * MIB);
    nix::mount::umount2(&m.mountpoint, nix::mount::MntFlags::MNT_DETACH).unwrap();
    assert!(!is_mounted(&m.mountpoint), "detached");
    std::thread::sleep(Duration::from_secs(2));
    frozen.thaw();
    // The open descriptor keeps working after the detach.
    let tail = pseudo_random(12, MIB);
    f.write_all(&tail).unwrap();
    data.extend_from_slice(&tail);
    f.sync_all().unwrap();
    drop(f);
    let status = m
        .wait_exit(Duration::from_secs(30))
        .expect("the mount command exits after the last file of a detached mount is closed");
    assert!(
        status.success(),
        "exit status {status}; stderr: {}",
        m.stderr()
    );
    let got = fs::read(sshd.data.join("detached.bin")).unwrap();
    assert_eq!(got.len(), data.len(), "bytes on the server");
    assert!(
        got == data,
        "the server's copy differs from what was written"
    );
}
