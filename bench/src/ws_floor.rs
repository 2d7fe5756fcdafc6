//! `hermes-bench ws-floor`: P2 against the least a WebSocket server can do on this box.
//!
//! A child process (`hermes-bench ws-floor-server`) accepts the holders' WebSocket upgrades
//! (no auth, no room, no per-socket task), and for every `POST /v1/publish` encodes the
//! published `data` once as a text frame and hands it to `--writers` threads, each of which
//! `write`s that frame to its share of the sockets with blocking calls — no epoll, no queue
//! per socket, no wake-ups. The same holders, publisher and ramp as P2 measure it, so its
//! lowest step's p99 is the floor under P2's "publish → last receipt" with this generator
//! on this machine: what any server, however lean, would add its own work to.

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::mpsc;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::scenarios::{P2Args, p2_room};
use crate::servers::{ADMIN_KEY, HERMES_ROOM, Kind, Publisher, Target, banner_field};

/// The server's announcement on stdout (the Hermes gateway's shape).
const BANNER: &str = "ws-floor listening";
/// Largest request head or publish body accepted.
const MAX_REQUEST: usize = 64 * 1024;

enum Cmd {
    Add(TcpStream),
    Frame(Arc<Vec<u8>>),
}

/// The driver: starts the floor server, then runs P2's room and ramp against it.
pub async fn run(writers: usize, a: &P2Args) -> Result<Value> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("ws-floor-server")
        .arg("--writers")
        .arg(writers.to_string());
    let (child, banner, _logs) = hermes_e2e::spawn_announced(cmd, BANNER).await;
    let public = banner_field(&banner, "public")?.replace("http://", "ws://");
    let internal = banner_field(&banner, "internal")?;
    // The holders and the publisher speak to it as to Hermes: a plain socket, no protocol.
    let target = Target {
        kind: Kind::Hermes,
        url: format!("{public}/production"),
        token: "none".into(),
        channel: HERMES_ROOM.into(),
    };
    let publisher = Publisher::new(
        Kind::Hermes,
        format!("{internal}/v1/publish"),
        ADMIN_KEY.into(),
    );
    let mut v = p2_room("ws-floor", &target, &publisher, a).await?;
    drop(child);
    v["scenario"] = "ws_floor".into();
    v["writer_threads"] = writers.into();
    Ok(v)
}

/// The server process: WebSocket upgrades on one listener, publishes on the other.
pub async fn serve(writers: usize) -> Result<()> {
    let public = TcpListener::bind("127.0.0.1:0").await?;
    let internal = TcpListener::bind("127.0.0.1:0").await?;
    let mut shards = Vec::new();
    for _ in 0..writers.max(1) {
        let (tx, rx) = mpsc::channel::<Cmd>();
        std::thread::spawn(move || write_loop(rx));
        shards.push(tx);
    }
    let shards = Arc::new(shards);
    println!(
        "{BANNER} public=http://{} internal=http://{}",
        public.local_addr()?,
        internal.local_addr()?
    );
    std::io::stdout().flush()?;
    let publish_shards = shards.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = internal.accept().await {
            let shards = publish_shards.clone();
            tokio::spawn(async move {
                if let Err(e) = http(stream, &shards).await {
                    eprintln!("ws-floor: publish connection: {e:#}");
                }
            });
        }
    });
    let mut next = 0usize;
    loop {
        let (stream, _) = public.accept().await?;
        match upgrade(stream).await {
            Ok(socket) => {
                // Round robin: each writer thread owns its share of the sockets.
                let _ = shards[next % shards.len()].send(Cmd::Add(socket));
                next += 1;
            }
            Err(e) => eprintln!("ws-floor: upgrade: {e:#}"),
        }
    }
}

/// One writer thread: a blocking `write` of each frame to every socket it owns.
fn write_loop(rx: mpsc::Receiver<Cmd>) {
    let mut sockets: Vec<TcpStream> = Vec::new();
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Cmd::Add(s) => sockets.push(s),
            // A closed socket (its holder stopped) leaves the set.
            Cmd::Frame(frame) => sockets.retain_mut(|s| s.write_all(&frame).is_ok()),
        }
    }
}

/// Reads until `buf` holds one request head; its length through the blank line, or `None`
/// when the peer closes between requests.
async fn read_head(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Result<Option<usize>> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            return Ok(Some(end + 4));
        }
        if buf.len() > MAX_REQUEST {
            bail!("request head over {MAX_REQUEST} bytes");
        }
        if read_more(stream, buf).await? == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            bail!("connection closed inside a request");
        }
    }
}

/// Appends what one `read` gives to `buf`; 0 at the end of the stream.
async fn read_more(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Result<usize> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of header `name` (lower case) in a request head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The WebSocket handshake, answered by hand; the socket is then a blocking std one.
async fn upgrade(mut stream: tokio::net::TcpStream) -> Result<TcpStream> {
    let mut buf = Vec::new();
    let end = read_head(&mut stream, &mut buf)
        .await?
        .context("closed before a request")?;
    let head = std::str::from_utf8(&buf[..end])?;
    let key = header(head, "sec-websocket-key").context("no Sec-WebSocket-Key")?;
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(answer.as_bytes()).await?;
    stream.set_nodelay(true)?;
    let std = stream.into_std()?;
    std.set_nonblocking(false)?;
    Ok(std)
}

/// The publish connection: `GET /readyz` and `POST /v1/publish` (keep-alive).
async fn http(mut stream: tokio::net::TcpStream, shards: &[mpsc::Sender<Cmd>]) -> Result<()> {
    let mut buf = Vec::new();
    while let Some(end) = read_head(&mut stream, &mut buf).await? {
        let head = std::str::from_utf8(&buf[..end])?.to_owned();
        let length: usize = header(&head, "content-length")
            .map(str::parse)
            .transpose()?
            .unwrap_or(0);
        if length > MAX_REQUEST {
            bail!("body over {MAX_REQUEST} bytes");
        }
        while buf.len() < end + length {
            if read_more(&mut stream, &mut buf).await? == 0 {
                bail!("connection closed inside a body");
            }
        }
        let body: Vec<u8> = buf.drain(..end + length).skip(end).collect();
        let request_line = head.lines().next().unwrap_or_default();
        let status = if request_line.starts_with("POST /v1/publish ") {
            let message: Value = serde_json::from_slice(&body).context("publish body")?;
            let frame = Arc::new(text_frame(&serde_json::to_vec(&message["data"])?));
            for shard in shards {
                let _ = shard.send(Cmd::Frame(frame.clone()));
            }
            "202 Accepted"
        } else if request_line.starts_with("GET /readyz ") {
            "200 OK"
        } else {
            "404 Not Found"
        };
        let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
        stream.write_all(answer.as_bytes()).await?;
    }
    Ok(())
}

/// An unmasked, final text frame holding `payload` (server → client).
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x81);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_frames_carry_their_length_in_the_shortest_form() {
        assert_eq!(text_frame(b"hi"), b"\x81\x02hi");
        let medium = text_frame(&[b'x'; 300]);
        assert_eq!(&medium[..4], &[0x81, 126, 0x01, 0x2c]);
        assert_eq!(medium.len(), 304);
        let large = text_frame(&vec![b'x'; 70_000]);
        assert_eq!(&large[..2], &[0x81, 127]);
        assert_eq!(
            u64::from_be_bytes(large[2..10].try_into().expect("8 bytes")),
            70_000
        );
    }

    #[test]
    fn headers_are_found_whatever_their_case() {
        let head = "GET / HTTP/1.1\r\nHost: x\r\nsec-WebSocket-KEY: abc==\r\nContent-Length: 12";
        assert_eq!(header(head, "sec-websocket-key"), Some("abc=="));
        assert_eq!(header(head, "content-length"), Some("12"));
        assert_eq!(header(head, "upgrade"), None);
    }
}
