//! `latency-proxy` between a mount and its server: every byte is delayed by half the round trip
//! (an emulated link), and the proxy can be cut to drop what is in flight.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub struct Proxy {
    /// Where mounts connect (127.0.0.1).
    pub port: u16,
    upstream: u16,
    rtt_ms: u32,
    child: Child,
}

impl Proxy {
    /// A proxy to 127.0.0.1:`upstream` with a round trip of `rtt_ms`.
    pub fn start(upstream: u16, rtt_ms: u32) -> Proxy {
        let port = free_port();
        let child = Proxy::spawn(port, upstream, rtt_ms);
        Proxy {
            port,
            upstream,
            rtt_ms,
            child,
        }
    }

    fn spawn(port: u16, upstream: u16, rtt_ms: u32) -> Child {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = Command::new(env!("CARGO_BIN_EXE_latency-proxy"))
                .arg(format!("127.0.0.1:{port}"))
                .arg(format!("127.0.0.1:{upstream}"))
                .arg(rtt_ms.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start latency-proxy");
            let mut line = String::new();
            let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
            if line.starts_with("listening on") {
                return child;
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(Instant::now() < deadline, "latency-proxy did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Cuts every connection through the proxy at once, dropping the bytes in flight (the
    /// reply on its way back is lost), and listens again.
    pub fn cut(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Proxy::spawn(self.port, self.upstream, self.rtt_ms);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
