//! Which process holds which TCP connection, from /proc (no `ss` needed): how the jump-host
//! tests prove that the traffic went through the jump host, on a loopback where the target is
//! reachable directly too. Used with `#[path = "common/sockets.rs"] mod sockets;`.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeSet;
use std::fs;

/// One established TCP connection as /proc/net/tcp{,6} lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tcp {
    pub local_port: u16,
    pub remote_port: u16,
    pub inode: u64,
}

/// Every established TCP connection of this network namespace.
pub fn established() -> Vec<Tcp> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "01" {
                continue;
            }
            let port = |addr: &str| {
                addr.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            if let (Some(local_port), Some(remote_port), Ok(inode)) =
                (port(f[1]), port(f[2]), f[9].parse())
            {
                out.push(Tcp {
                    local_port,
                    remote_port,
                    inode,
                });
            }
        }
    }
    out
}

/// Socket inodes open in process `pid`.
pub fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BTreeSet::new();
    };
    dir.flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// Remote ports of the established TCP connections process `pid` holds.
pub fn peer_ports(pid: u32) -> BTreeSet<u16> {
    let mine = socket_inodes(pid);
    established()
        .into_iter()
        .filter(|t| mine.contains(&t.inode))
        .map(|t| t.remote_port)
        .collect()
}

/// The processes holding the established connection whose local port is `port`.
pub fn owners_of_local_port(port: u16) -> Vec<u32> {
    let inodes: BTreeSet<u64> = established()
        .into_iter()
        .filter(|t| t.local_port == port)
        .map(|t| t.inode)
        .collect();
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !socket_inodes(*pid).is_disjoint(&inodes))
        .collect()
}

/// `pid`'s parent.
pub fn parent(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is `ancestor` or runs below it.
pub fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    for _ in 0..64 {
        if pid == ancestor {
            return true;
        }
        match parent(pid) {
            Some(p) if p != 0 && p != pid => pid = p,
            _ => return false,
        }
    }
    false
}

/// The client ports of the connections an OpenSSH server logged (`Connection from ADDR port
/// N on ...`, LogLevel VERBOSE or more), in order.
pub fn logged_client_ports(sshd_log: &str) -> Vec<u16> {
    sshd_log
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("Connection from ")? + "Connection from ".len()..];
            let mut words = rest.split_whitespace();
            let _addr = words.next()?;
            (words.next()? == "port").then_some(())?;
            words.next()?.parse().ok()
        })
        .collect()
}
