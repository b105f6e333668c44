//! `latency-proxy LISTEN_ADDR TARGET_ADDR DELAY_MS`: a TCP proxy that emulates a network
//! round-trip time of DELAY_MS (this kernel has no netem) for the benchmark.
//!
//! Every chunk read from one side is stamped with `now + DELAY_MS/2` and written to the other
//! side when that time comes. Reading never waits for writing (a queue sits in between), so the
//! delay adds latency without capping bandwidth: a full bandwidth-delay product can be in flight.
//! Half-closes are forwarded after the delayed data. Prints `listening on ADDR` once ready.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Chunks queued per direction before reading pauses (memory bound: CHUNK * QUEUE).
const QUEUE: usize = 2048;
const CHUNK: usize = 256 * 1024;

fn usage() -> ! {
    eprintln!(
        "usage: latency-proxy LISTEN_ADDR TARGET_ADDR DELAY_MS   (e.g. 127.0.0.1:0 127.0.0.1:22 10)"
    );
    std::process::exit(2);
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        usage();
    }
    let listen: SocketAddr = args[1].parse().unwrap_or_else(|_| usage());
    let target: SocketAddr = args[2].parse().unwrap_or_else(|_| usage());
    let rtt_ms: f64 = args[3].parse().unwrap_or_else(|_| usage());
    if !rtt_ms.is_finite() || rtt_ms < 0.0 {
        usage();
    }
    let one_way = Duration::from_secs_f64(rtt_ms / 2000.0);
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("latency-proxy: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on {}", listener.local_addr().unwrap());
    loop {
        let (client, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("latency-proxy: accept: {e}");
                continue;
            }
        };
        tokio::spawn(async move {
            let server = match TcpStream::connect(target).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("latency-proxy: cannot connect to {target}: {e}");
                    return;
                }
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let a = tokio::spawn(pipe(cr, sw, one_way));
            let b = tokio::spawn(pipe(sr, cw, one_way));
            let _ = tokio::join!(a, b);
        });
    }
}

/// Forwards `from` to `to`, each chunk `delay` after it was read.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE);
    let reader = async move {
        loop {
            let mut buf = vec![0u8; CHUNK];
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break, // dropping tx ends the writer after the queued data
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send((Instant::now() + delay, buf)).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, buf)) = rx.recv().await {
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            if to.write_all(&buf).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
