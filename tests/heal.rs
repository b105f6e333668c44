//! Healing at every level and retries that never repeat a call blindly (issue 11), against a
//! real OpenSSH server and a real FUSE mount: channels closed by sshd's `ChannelTimeout` or by a
//! killed sftp-server are replaced on the live connection; 961 files open at once spread over
//! channels while listings keep answering; mkdir, rename, unlink and exclusive create whose
//! reply is lost with the connection succeed exactly once from the caller's view.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::*;

/// Long enough that a request's effect shows on the server well before its reply reaches the
/// mount (the proxy is then cut to lose the reply).
const HEAL_RTT_MS: u32 = 200;

/// Uncached, so every `ls`, stat and open goes to the server; a short reconnect_timeout so a
/// call that cannot heal fails within seconds instead of a minute.
const UNCACHED: &str = "cache=no,reconnect_timeout=8";

/// Parent pid and command name of every process.
fn processes() -> HashMap<u32, (u32, String)> {
    let mut out = HashMap::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split at the last ')'.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map(|x| x.1).unwrap_or("").to_string();
        let ppid = tail.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if let Some(ppid) = ppid {
            out.insert(pid, (ppid, comm));
        }
    }
    out
}

/// The sftp-server processes serving connections of `sshd` (and of no other server).
fn sftp_servers(sshd: &Sshd) -> Vec<u32> {
    let listener: u32 = fs::read_to_string(sshd.dir.path().join("sshd.pid"))
        .expect("sshd.pid")
        .trim()
        .parse()
        .unwrap();
    let procs = processes();
    let below = |mut pid: u32| {
        while let Some((ppid, _)) = procs.get(&pid) {
            if *ppid == listener {
                return true;
            }
            pid = *ppid;
        }
        false
    };
    procs
        .iter()
        .filter(|(pid, (_, comm))| comm == "sftp-server" && below(**pid))
        .map(|(pid, _)| *pid)
        .collect()
}

/// `ls`, a read and a write through `m`, each checked against the server, each timed.
fn ls_read_write(sshd: &Sshd, m: &Mount, dir: &str, round: &str) {
    let t = Instant::now();
    let names: Vec<String> = fs::read_dir(m.path(dir))
        .unwrap_or_else(|e| panic!("{round}: ls: {e}; mount log: {}", m.stderr()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&"seed".to_string()),
        "{round}: ls shows {names:?}"
    );
    let got = fs::read_to_string(m.path(&format!("{dir}/seed")))
        .unwrap_or_else(|e| panic!("{round}: read: {e}; mount log: {}", m.stderr()));
    assert_eq!(got, "seed content\n", "{round}: read");
    let name = format!("{dir}/written-{round}");
    fs::write(m.path(&name), round)
        .unwrap_or_else(|e| panic!("{round}: write: {e}; mount log: {}", m.stderr()));
    assert_eq!(fs::read_to_string(sshd.data.join(&name)).unwrap(), round);
    eprintln!("{round}: ls + read + write took {:?}", t.elapsed());
}

/// A file held open across the fault: written before, read and written after.
fn open_file(m: &Mount, dir: &str) -> fs::File {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path(&format!("{dir}/held")))
        .unwrap();
    f.write_all(b"before;").unwrap();
    f.sync_all().unwrap();
    f
}

fn use_open_file(sshd: &Sshd, m: &Mount, dir: &str, f: &mut fs::File) {
    f.write_all(b"after")
        .unwrap_or_else(|e| panic!("write on the held file: {e}; mount log: {}", m.stderr()));
    f.sync_all()
        .unwrap_or_else(|e| panic!("fsync of the held file: {e}; mount log: {}", m.stderr()));
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "before;after", "the held file through its descriptor");
    assert_eq!(
        fs::read_to_string(sshd.data.join(format!("{dir}/held"))).unwrap(),
        "before;after"
    );
}

#[test]
fn channels_closed_for_idleness_are_replaced() {
    let mut sshd = Sshd::start();
    // OpenSSH 9.2 names channel types `session:command`, `session:subsystem:sftp`, ...
    sshd.reconfigure("ChannelTimeout session:*=3s");
    fs::create_dir(sshd.data.join("idle")).unwrap();
    fs::write(sshd.data.join("idle/seed"), "seed content\n").unwrap();
    let m = Mount::root(&sshd, "", UNCACHED);
    ls_read_write(&sshd, &m, "idle", "fresh");
    let mut held = open_file(&m, "idle");
    for round in ["idle-1", "idle-2"] {
        std::thread::sleep(Duration::from_millis(4500));
        assert!(
            sftp_servers(&sshd).is_empty(),
            "sshd should have closed the idle SFTP channels (ChannelTimeout)"
        );
        ls_read_write(&sshd, &m, "idle", round);
    }
    std::thread::sleep(Duration::from_millis(4500));
    use_open_file(&sshd, &m, "idle", &mut held);
}

#[test]
fn killed_sftp_servers_are_replaced() {
    let sshd = Sshd::start();
    fs::create_dir(sshd.data.join("kill")).unwrap();
    fs::write(sshd.data.join("kill/seed"), "seed content\n").unwrap();
    let m = Mount::root(&sshd, "", UNCACHED);
    ls_read_write(&sshd, &m, "kill", "fresh");
    let mut held = open_file(&m, "kill");
    for round in ["killed-1", "killed-2", "killed-3"] {
        let victims = sftp_servers(&sshd);
        assert!(!victims.is_empty(), "no sftp-server to kill");
        for pid in &victims {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        std::thread::sleep(Duration::from_millis(200));
        ls_read_write(&sshd, &m, "kill", round);
    }
    for pid in sftp_servers(&sshd) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    std::thread::sleep(Duration::from_millis(200));
    use_open_file(&sshd, &m, "kill", &mut held);
    let log = m.stderr();
    assert!(
        log.contains("in place of one that ended"),
        "channels replaced: {log}"
    );
    assert!(
        !log.contains("reconnecting"),
        "idle channels that died are replaced without a reconnect: {log}"
    );
}

#[test]
fn channels_that_keep_dying_replace_the_connection() {
    const SIZE: usize = 4 << 20;
    let sshd = Sshd::start();
    fs::create_dir(sshd.data.join("busy")).unwrap();
    let want = pseudo_random(11, SIZE);
    fs::write(sshd.data.join("busy/big"), &want).unwrap();
    let m = Mount::root(&sshd, "", "cache=no,reconnect_timeout=20");
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, path) = (stop.clone(), m.path("busy/big"));
        std::thread::spawn(move || {
            let mut rounds = 0;
            while !stop.load(Ordering::SeqCst) {
                let got = fs::read(&path).unwrap_or_else(|e| panic!("read #{rounds}: {e}"));
                assert!(got == want, "read #{rounds} returned other bytes");
                rounds += 1;
            }
            rounds
        })
    };
    let t = Instant::now();
    let mut kills = 0;
    while kills < 12 && !m.stderr().contains("replacing the connection") {
        std::thread::sleep(Duration::from_millis(150));
        for pid in sftp_servers(&sshd) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        kills += 1;
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let rounds = reader
        .join()
        .expect("reads stay correct while channels die");
    eprintln!("{kills} kills, {rounds} reads of 4 MiB, {:?}", t.elapsed());
    assert!(
        m.stderr().contains("replacing the connection"),
        "channels that died under load {kills} times should replace the connection: {}",
        m.stderr()
    );
    assert_eq!(
        fs::read_dir(m.path("busy")).unwrap().count(),
        1,
        "ls afterwards"
    );
}

/// Raises this process's open-file limit to at least `n`.
fn allow_open_files(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < n {
            lim.rlim_cur = n.max(lim.rlim_cur);
            lim.rlim_max = lim.rlim_max.max(n);
            assert_eq!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim),
                0,
                "setrlimit NOFILE {n}"
            );
        }
    }
}

#[test]
fn nine_hundred_sixty_one_files_open_while_listings_keep_answering() {
    const FILES: usize = 961;
    /// A listing may take this long at most while files are opened.
    const LISTING_BOUND: Duration = Duration::from_secs(5);
    allow_open_files(4096);
    let sshd = Sshd::start();
    fs::create_dir(sshd.data.join("many")).unwrap();
    fs::create_dir(sshd.data.join("listed")).unwrap();
    for i in 0..50 {
        fs::write(sshd.data.join(format!("listed/e{i}")), "x").unwrap();
    }
    let m = Mount::root(&sshd, "", "cache=no");
    let stop = Arc::new(AtomicBool::new(false));
    let listed = m.path("listed");
    let lister = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            let mut count = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                let n = fs::read_dir(&listed).map(|d| d.count());
                worst = worst.max(t.elapsed());
                assert_eq!(n.ok(), Some(50), "listing #{count}");
                count += 1;
            }
            (count, worst)
        })
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = m.path("many");
    let opener = std::thread::spawn(move || {
        let mut files = Vec::with_capacity(FILES);
        for i in 0..FILES {
            let mut f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(dir.join(format!("f{i}")))
                .unwrap_or_else(|e| panic!("open file #{i} of {FILES} at once: {e}"));
            f.write_all(format!("content of file {i}\n").as_bytes())
                .unwrap_or_else(|e| panic!("write to open file #{i}: {e}"));
            files.push(f);
            tx.send(i).unwrap();
        }
        for (i, f) in files.iter_mut().enumerate() {
            f.seek(SeekFrom::Start(0)).unwrap();
            let mut s = String::new();
            f.read_to_string(&mut s)
                .unwrap_or_else(|e| panic!("read back open file #{i}: {e}"));
            assert_eq!(s, format!("content of file {i}\n"), "file #{i}");
        }
        files
    });
    let t = Instant::now();
    let mut opened = 0;
    while opened < FILES {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(i) => opened = i + 1,
            Err(_) => panic!(
                "stuck after {opened} of {FILES} files open ({:?}); mount log: {}",
                t.elapsed(),
                m.stderr()
            ),
        }
    }
    eprintln!("{FILES} files open after {:?}", t.elapsed());
    let files = opener.join().expect("read back every open file");
    // Listings while every file is still open.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let (count, worst) = lister.join().expect("listings");
    eprintln!("{count} listings, the slowest {worst:?}");
    assert!(count > 0, "no listing finished");
    assert!(
        worst < LISTING_BOUND,
        "a listing took {worst:?} while files were opened"
    );
    for (i, f) in files.into_iter().enumerate() {
        f.sync_all().unwrap_or_else(|e| panic!("fsync #{i}: {e}"));
        drop(f);
    }
    for i in 0..FILES {
        assert_eq!(
            fs::read_to_string(sshd.data.join(format!("many/f{i}"))).unwrap(),
            format!("content of file {i}\n"),
            "server copy of file #{i}"
        );
    }
}

/// Waits until `done` sees the call's effect on the server, then loses its reply: cuts the
/// connection while the answer is in the proxy.
fn lose_the_reply(sshd: &Sshd, proxy: &mut Proxy, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what} never reached the server");
        std::thread::sleep(Duration::from_millis(1));
    }
    proxy.cut();
    sshd.kill_sessions();
}

/// Runs `call` on a thread, loses its reply once its effect shows, and returns its result.
fn call_losing_reply<T: Send + 'static>(
    sshd: &Sshd,
    proxy: &mut Proxy,
    what: &str,
    call: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    done: impl Fn() -> bool,
) -> std::io::Result<T> {
    let t = Instant::now();
    let worker = std::thread::spawn(call);
    lose_the_reply(sshd, proxy, what, done);
    let r = worker.join().unwrap();
    eprintln!(
        "{what}: {:?} after {:?}",
        r.as_ref().map(|_| ()),
        t.elapsed()
    );
    r
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

#[test]
fn calls_whose_reply_is_lost_succeed_exactly_once() {
    let sshd = Sshd::start();
    let mut proxy = Proxy::start(sshd.port, HEAL_RTT_MS);
    let opts = format!("{},{UNCACHED}", sshd.key_options());
    let m = Mount::with_stdin(proxy.port, &sshd.remote(""), &opts, None);
    let server = |rel: &str| -> PathBuf { sshd.data.join(rel) };
    let mut failures = Vec::new();
    for round in 0..3 {
        // mkdir
        let (d, sd) = (
            m.path(&format!("dir{round}")),
            server(&format!("dir{round}")),
        );
        let r = call_losing_reply(&sshd, &mut proxy, "mkdir", move || fs::create_dir(d), {
            let sd = sd.clone();
            move || sd.is_dir()
        });
        if let Err(e) = r {
            failures.push(format!("round {round}: mkdir: {e}"));
        }
        assert!(sd.is_dir(), "the directory is on the server");

        // rename
        let (a, b) = (format!("a{round}"), format!("b{round}"));
        fs::write(server(&a), "renamed").unwrap();
        let (ma, mb) = (m.path(&a), m.path(&b));
        let (sa, sb) = (server(&a), server(&b));
        let r = call_losing_reply(&sshd, &mut proxy, "rename", move || fs::rename(ma, mb), {
            let (sa, sb) = (sa.clone(), sb.clone());
            move || !exists(&sa) && exists(&sb)
        });
        if let Err(e) = r {
            failures.push(format!("round {round}: rename: {e}"));
        }
        assert!(!exists(&sa), "the source is gone");
        assert_eq!(fs::read_to_string(&sb).unwrap(), "renamed");

        // unlink
        let u = format!("u{round}");
        fs::write(server(&u), "doomed").unwrap();
        let (mu, su) = (m.path(&u), server(&u));
        let r = call_losing_reply(&sshd, &mut proxy, "unlink", move || fs::remove_file(mu), {
            let su = su.clone();
            move || !exists(&su)
        });
        if let Err(e) = r {
            failures.push(format!("round {round}: unlink: {e}"));
        }
        assert!(!exists(&su), "the file is gone");

        // exclusive create (a lock file)
        let l = format!("lock{round}");
        let (ml, sl) = (m.path(&l), server(&l));
        let r = call_losing_reply(
            &sshd,
            &mut proxy,
            "exclusive create",
            move || {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(ml)?;
                f.write_all(b"pid 42\n")?;
                f.sync_all()
            },
            {
                let sl = sl.clone();
                move || exists(&sl)
            },
        );
        if let Err(e) = r {
            failures.push(format!("round {round}: exclusive create: {e}"));
        } else {
            assert_eq!(fs::read_to_string(&sl).unwrap(), "pid 42\n");
        }
    }
    assert!(
        failures.is_empty(),
        "calls that took effect failed for the caller:\n{}\nmount log: {}",
        failures.join("\n"),
        m.stderr()
    );
    // A second exclusive create of an existing name still fails as it must.
    let again = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.path("lock0"));
    assert_eq!(
        again.map(drop).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::AlreadyExists)
    );
}
