//! The `mount` command keeps secrets given on its command line out of `/proc/PID/cmdline`
//! (issue 11, "Secrets"), against a real OpenSSH server and FUSE mount.

mod common;

use std::fs;

use common::{Mount, Sshd, TEST_PASSWORD, TEST_USER};

/// The NUL-separated arguments `/proc/<pid>/cmdline` shows for the mount process.
fn cmdline(pid: u32) -> Vec<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).expect("read the mount's cmdline");
    raw.split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// A password given as `-o password=...` (mixed in with other options, one of them after it)
/// logs in, and is then blanked in the process's own argv: other users can read every
/// process's cmdline.
#[test]
fn password_option_is_blanked_in_proc_cmdline() {
    let sshd = Sshd::start();
    let remote = format!("{TEST_USER}@127.0.0.1:{}", sshd.user_data.display());
    let known_hosts = sshd.dir.path().join("known_hosts");
    let m = Mount::with_stdin(
        sshd.port,
        &remote,
        &format!(
            "StrictHostKeyChecking=no,password={TEST_PASSWORD},UserKnownHostsFile={}",
            known_hosts.display()
        ),
        None,
    );
    fs::write(m.path("pw.txt"), b"by password").expect("write as the password user");
    let args = cmdline(m.pid().expect("the mount process runs"));
    let joined = args.join(" ");
    assert!(
        !joined.contains(TEST_PASSWORD),
        "the password is visible in /proc/PID/cmdline: {joined}"
    );
    // Only the value is blanked: the rest of the command line still reads as given.
    assert!(
        args.iter()
            .any(|a| a.starts_with("StrictHostKeyChecking=no,password=")
                && a.ends_with(&format!("UserKnownHostsFile={}", known_hosts.display()))),
        "the other options are kept: {joined}"
    );
    assert!(
        !m.stderr().contains(TEST_PASSWORD),
        "the password must never be printed"
    );
}
