//! `hermes-bench smoke`: one standalone gateway, quick figures (see the crate's docs).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;

use crate::measure::{ms, now_micros, rss_kib};
use crate::servers;

const ADMIN_KEY: &str = "bench-admin-key-0123456789";

pub async fn smoke(bin: String, sockets: usize, messages: usize) -> Result<()> {
    let mut child = Command::new(&bin)
        .arg("standalone")
        .env("HERMES_LISTEN", "127.0.0.1:0")
        .env("HERMES_INTERNAL_LISTEN", "127.0.0.1:0")
        .env("HERMES_ADMIN_KEY", ADMIN_KEY)
        .env("HERMES_AUTH_CACHE_TTL_SECONDS", "0")
        .env("HERMES_PING_INTERVAL_SECONDS", "2")
        .env("HERMES_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start the gateway")?;
    let pid = child.id().context("pid")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let banner = loop {
        match lines.next_line().await? {
            Some(l) if l.starts_with("hermes-gateway listening") => break l,
            Some(_) => continue,
            None => bail!("the gateway exited"),
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let field = |n: &str| {
        banner
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{n}=")))
            .map(str::to_owned)
    };
    let public = field("public")
        .context("public")?
        .replace("http://", "ws://");
    let internal = field("internal").context("internal")?;
    let http = reqwest::Client::new();
    let token = |user: &'static str, room: &'static str| {
        let http = http.clone();
        let internal = internal.clone();
        async move { servers::issue_token(&http, &internal, user, room).await }
    };
    // Let the process settle before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_kib(pid)?;

    let bulk = token("bench", "bulk").await?;
    let url = format!("{public}/production?token={bulk}");
    let mut connect = Histogram::<u64>::new(3)?;
    let mut readers = Vec::with_capacity(sockets);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    for _ in 0..sockets {
        let started = Instant::now();
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
        connect.record(started.elapsed().as_micros() as u64)?;
        let done = done_tx.clone();
        readers.push(tokio::spawn(async move {
            let (_, mut read) = ws.split();
            while let Some(Ok(m)) = read.next().await {
                if let Message::Text(_) = m {
                    let _ = done.send(now_micros());
                }
            }
        }));
    }
    // One heartbeat cycle (pings every 2 s, answered by the readers).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = rss_kib(pid)?;

    // Publish → receipt, one socket, sequential.
    let single = token("bench", "single").await?;
    let (ws, _) =
        tokio_tungstenite::connect_async(format!("{public}/production?token={single}")).await?;
    let (_, mut read) = ws.split();
    let mut latency = Histogram::<u64>::new(3)?;
    for i in 0..messages {
        let sent = Instant::now();
        let r = http
            .post(format!("{internal}/v1/publish"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"user_id": "bench", "room_id": "single", "data": {"n": i}}))
            .send()
            .await?;
        if r.status() != 202 {
            bail!("publish answered {}", r.status());
        }
        loop {
            match read.next().await {
                Some(Ok(Message::Text(_))) => break,
                Some(Ok(_)) => continue,
                other => bail!("socket ended: {other:?}"),
            }
        }
        latency.record(sent.elapsed().as_micros() as u64)?;
    }

    // One message to the room of every idle socket: time to the last receipt.
    let started_us = now_micros();
    let r = http
        .post(format!("{internal}/v1/publish"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"user_id": "bench", "room_id": "bulk", "data": {"fan": "out"}}))
        .send()
        .await?;
    if r.status() != 202 {
        bail!("publish answered {}", r.status());
    }
    let mut last = started_us;
    for _ in 0..sockets {
        last = last.max(done_rx.recv().await.context("receipt")?);
    }

    println!("sockets                         {sockets}");
    println!(
        "connect latency (full auth)     p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        ms(&connect, 0.5),
        ms(&connect, 0.99),
        connect.max() as f64 / 1000.0
    );
    println!(
        "gateway RSS                     {rss_before} KiB before, {rss_after} KiB with {sockets} sockets: {:.1} KiB per socket",
        (rss_after.saturating_sub(rss_before)) as f64 / sockets as f64
    );
    println!(
        "publish -> receipt (1 socket)   p50 {:.2} ms  p99 {:.2} ms  over {messages} sequential publishes (HTTP admin API included)",
        ms(&latency, 0.5),
        ms(&latency, 0.99)
    );
    println!(
        "fan-out to {sockets} sockets        {:.2} ms from publish to the last receipt",
        (last - started_us) as f64 / 1000.0
    );
    let _ = child.kill().await;
    Ok(())
}
