//! `hermes-bench floor`: what one fan-out costs this box with no server at all.
//!
//! N loopback TCP pairs, no WebSocket, no framework, no epoll: `--writers` threads write a
//! 64-byte message to every server-side socket (one `write` each, what any server must do
//! at the least), another thread reads it from every client-side socket (one blocking
//! `read` each, less than any real client does). The time from the first write to the last
//! read is the floor under P2's "publish → last receipt" on this machine with the generator
//! on the same cores; the kernel's loopback TCP path is the whole of it.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::measure::ms;

const MESSAGE: usize = 64;

pub async fn run(
    pairs: usize,
    rounds: usize,
    writers: usize,
    sources: Vec<IpAddr>,
) -> Result<Value> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut clients = Vec::with_capacity(pairs);
    let mut servers = Vec::with_capacity(pairs);
    for i in 0..pairs {
        let source = sources
            .get(i % sources.len().max(1))
            .copied()
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let (client, accepted) = tokio::join!(socket.connect(addr), listener.accept());
        clients.push(blocking(client?)?);
        servers.push(blocking(accepted?.0)?);
    }
    tokio::task::spawn_blocking(move || rounds_of(clients, servers, rounds, writers.max(1)))
        .await
        .context("the measuring thread panicked")?
}

fn blocking(stream: tokio::net::TcpStream) -> Result<TcpStream> {
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn rounds_of(
    mut clients: Vec<TcpStream>,
    mut servers: Vec<TcpStream>,
    rounds: usize,
    writers: usize,
) -> Result<Value> {
    let pairs = clients.len();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<Instant>();
    let reader = std::thread::spawn(move || -> Result<()> {
        let mut buf = [0u8; MESSAGE];
        while go_rx.recv().is_ok() {
            for c in &mut clients {
                c.read_exact(&mut buf).context("read")?;
            }
            if done_tx.send(Instant::now()).is_err() {
                break;
            }
        }
        Ok(())
    });
    let payload = [b'x'; MESSAGE];
    let mut histogram = Histogram::<u64>::new(3)?;
    let mut write_only = Histogram::<u64>::new(3)?;
    for _ in 0..rounds {
        let start = Instant::now();
        go_tx.send(()).context("reader gone")?;
        // The server side's share of the work, split over `writers` threads.
        std::thread::scope(|scope| -> Result<()> {
            let share = servers.len().div_ceil(writers);
            let handles: Vec<_> = servers
                .chunks_mut(share.max(1))
                .map(|chunk| {
                    scope.spawn(move || -> Result<()> {
                        for s in chunk {
                            s.write_all(&payload).context("write")?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a writer panicked"))??;
            }
            Ok(())
        })?;
        write_only.record(start.elapsed().as_micros() as u64)?;
        let end = done_rx.recv().context("reader gone")?;
        histogram.record(end.duration_since(start).as_micros() as u64)?;
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(go_tx);
    let _ = reader.join();
    Ok(json!({
        "scenario": "floor",
        "pairs": pairs,
        "writer_threads": writers,
        "rounds": rounds,
        "message_bytes": MESSAGE,
        "fanout_p50_ms": ms(&histogram, 0.5),
        "fanout_p99_ms": ms(&histogram, 0.99),
        "writes_only_p50_ms": ms(&write_only, 0.5),
        "us_per_delivery_p50": histogram.value_at_quantile(0.5) as f64 / pairs as f64,
    }))
}
