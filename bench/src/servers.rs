//! The two servers under comparison, started fresh for each run: Hermes
//! (`hermes-gateway standalone`, release build) and Centrifugo (built from its Go module by
//! `scripts/bench/centrifugo.sh`), with real auth on both.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::process::{Child, Command};

pub const ADMIN_KEY: &str = "bench-admin-key-0123456789";
/// `HERMES_INTERNAL_SECRET` of the Hermes processes (P5 reads the registry through it).
pub const INTERNAL_SECRET: &str = "bench-internal-secret-0123456789";
/// The Hermes room / Centrifugo channel every benchmark socket joins.
pub const HERMES_ROOM: &str = "bench";
pub const CENTRIFUGO_CHANNEL: &str = "bench:room";
pub const USER: &str = "bench-user";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Hermes,
    Centrifugo,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hermes => "hermes",
            Kind::Centrifugo => "centrifugo",
        }
    }
}

/// What a socket needs to join (passed to the holder processes on their command line).
#[derive(Clone, Debug)]
pub struct Target {
    pub kind: Kind,
    /// Full WebSocket URL (Hermes: with `?token=`).
    pub url: String,
    /// Centrifugo: the connection JWT (Hermes carries it in the URL).
    pub token: String,
    pub channel: String,
}

pub struct Server {
    pub kind: Kind,
    pub pid: u32,
    pub target: Target,
    /// Hermes: `POST /v1/publish`; Centrifugo: `POST /api/publish`.
    publish_url: String,
    api_key: String,
    http: reqwest::Client,
    /// Hermes: the child (killed on drop); Centrifugo: stopped through the script.
    child: Option<Child>,
    script: String,
}

pub struct Options {
    pub hermes_bin: String,
    pub centrifugo_script: String,
    pub heartbeat_seconds: u64,
}

impl Server {
    pub async fn start(kind: Kind, o: &Options) -> Result<Self> {
        match kind {
            Kind::Hermes => start_hermes(o).await,
            Kind::Centrifugo => start_centrifugo(o).await,
        }
    }

    /// Hermes: the internal listener's base URL (admin API, `/internal/v1/*`).
    pub fn hermes_internal_url(&self) -> Option<&str> {
        match self.kind {
            Kind::Hermes => self.publish_url.strip_suffix("/v1/publish"),
            Kind::Centrifugo => None,
        }
    }

    pub fn publisher(&self) -> Publisher {
        Publisher {
            http: self.http.clone(),
            kind: self.kind,
            url: self.publish_url.clone(),
            key: self.api_key.clone(),
        }
    }

    pub async fn stop(mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        if self.kind == Kind::Centrifugo {
            let s = Command::new(&self.script).arg("stop").status().await?;
            if !s.success() {
                bail!("{} stop failed", self.script);
            }
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct Publisher {
    http: reqwest::Client,
    kind: Kind,
    url: String,
    key: String,
}

impl Publisher {
    /// A publisher to `url` (Hermes: an admin `/v1/publish`; Centrifugo: an `/api/publish`)
    /// with `key` (Hermes: the admin key; Centrifugo: the HTTP API key).
    pub fn new(kind: Kind, url: String, key: String) -> Self {
        // Idle connections are dropped before the server's keep-alive (actix: 5 s) ends
        // them: a request on a connection the server is closing fails with a reset.
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        Publisher {
            http,
            kind,
            url,
            key,
        }
    }

    /// Publishes `data` to the benchmark room / channel; errors on a refusal.
    pub async fn publish(&self, data: Value) -> Result<()> {
        publish(&self.http, self.kind, &self.url, &self.key, data).await
    }

    /// Centrifugo: publishes `data` to `channel` (P3: a user's own channel).
    pub async fn publish_to_channel(&self, channel: &str, data: Value) -> Result<()> {
        if self.kind != Kind::Centrifugo {
            bail!("publish_to_channel is Centrifugo's");
        }
        centrifugo_publish(&self.http, &self.url, &self.key, channel, data).await
    }
}

async fn publish(
    http: &reqwest::Client,
    kind: Kind,
    url: &str,
    key: &str,
    data: Value,
) -> Result<()> {
    match kind {
        Kind::Hermes => {
            let r = http
                .post(url)
                .bearer_auth(key)
                .json(&json!({"user_id": USER, "room_id": HERMES_ROOM, "data": data}))
                .send()
                .await?;
            if r.status() != 202 {
                bail!("hermes publish answered {}", r.status());
            }
        }
        Kind::Centrifugo => {
            centrifugo_publish(http, url, key, CENTRIFUGO_CHANNEL, data).await?;
        }
    }
    Ok(())
}

/// `POST /api/publish` of `data` to `channel`; errors on a refusal (Centrifugo answers 200
/// with an `error` object).
async fn centrifugo_publish(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    channel: &str,
    data: Value,
) -> Result<()> {
    let r = http
        .post(url)
        .header("X-API-Key", key)
        .json(&json!({"channel": channel, "data": data}))
        .send()
        .await?;
    if r.status() != 200 {
        bail!("centrifugo publish answered {}", r.status());
    }
    let v: Value = r.json().await?;
    if v.get("error").is_some() {
        bail!("centrifugo publish refused: {v}");
    }
    Ok(())
}

/// A Hermes token for `user_id` in `room_id` from the admin API (`POST /v1/tokens` on the
/// internal listener at `internal`).
pub async fn issue_token(
    http: &reqwest::Client,
    internal: &str,
    user_id: &str,
    room_id: &str,
) -> Result<String> {
    request_token(http, internal, user_id, room_id)
        .await?
        .context("POST /v1/tokens answered 503 Service Unavailable")
}

/// One `POST /v1/tokens`: the token on 201, `None` on 503 (the gateway's bcrypt queue is
/// full: the caller may retry), an error on any other answer.
pub async fn request_token(
    http: &reqwest::Client,
    internal: &str,
    user_id: &str,
    room_id: &str,
) -> Result<Option<String>> {
    let r = http
        .post(format!("{internal}/v1/tokens"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"user_id": user_id, "room_id": room_id}))
        .send()
        .await?;
    match r.status().as_u16() {
        201 => {
            let v: Value = r.json().await?;
            Ok(Some(v["token"].as_str().context("no token")?.to_owned()))
        }
        503 => Ok(None),
        _ => bail!("POST /v1/tokens answered {}", r.status()),
    }
}

async fn start_hermes(o: &Options) -> Result<Server> {
    let mut cmd = Command::new(&o.hermes_bin);
    cmd.arg("standalone")
        .env("HERMES_LISTEN", "127.0.0.1:0")
        .env("HERMES_INTERNAL_LISTEN", "127.0.0.1:0")
        .env("HERMES_ADMIN_KEY", ADMIN_KEY)
        .env("HERMES_INTERNAL_SECRET", INTERNAL_SECRET)
        .env(
            "HERMES_PING_INTERVAL_SECONDS",
            o.heartbeat_seconds.to_string(),
        )
        .env("HERMES_LOG", "warn");
    let (child, banner, _logs) =
        hermes_e2e::spawn_announced(cmd, "hermes-gateway listening ").await;
    let field = |n: &str| banner_field(&banner, n);
    let public = field("public")?.replace("http://", "ws://");
    let internal = field("internal")?;
    let pid = child.id().context("the gateway's pid")?;
    let http = reqwest::Client::new();
    // Ready, then one token for the benchmark user and room (JWT + bcrypt second layer).
    wait_ready(
        &http,
        &format!("{internal}/readyz"),
        Duration::from_secs(20),
    )
    .await?;
    let token = issue_token(&http, &internal, USER, HERMES_ROOM).await?;
    Ok(Server {
        kind: Kind::Hermes,
        pid,
        target: Target {
            kind: Kind::Hermes,
            url: format!("{public}/production?token={token}"),
            token,
            channel: HERMES_ROOM.into(),
        },
        publish_url: format!("{internal}/v1/publish"),
        api_key: ADMIN_KEY.into(),
        http,
        child: Some(child),
        script: String::new(),
    })
}

async fn start_centrifugo(o: &Options) -> Result<Server> {
    let run = |arg: &'static str| {
        let script = o.centrifugo_script.clone();
        let hb = o.heartbeat_seconds;
        async move {
            let out = Command::new(&script)
                .arg(arg)
                .env("HERMES_CENTRIFUGO_PING_INTERVAL", hb.to_string())
                .env(
                    "HERMES_CENTRIFUGO_PONG_TIMEOUT",
                    (hb / 3).clamp(1, 8).to_string(),
                )
                .stderr(std::process::Stdio::inherit())
                .output()
                .await
                .with_context(|| format!("run {script} {arg}"))?;
            if !out.status.success() {
                bail!("{script} {arg} failed");
            }
            anyhow::Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }
    };
    // A fresh process for every run: its baseline RSS is measured before any socket.
    run("stop").await?;
    let started = run("start").await?;
    let pid: u32 = started
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .context("no pid from centrifugo.sh start")?;
    let env = run("env").await?;
    let var = |n: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{n}=")))
            .map(str::to_owned)
            .with_context(|| format!("no {n} from centrifugo.sh env"))
    };
    let secret = var("CENTRIFUGO_TOKEN_HMAC_SECRET")?;
    let token = hs256_jwt(&secret, USER, 3600)?;
    Ok(Server {
        kind: Kind::Centrifugo,
        pid,
        target: Target {
            kind: Kind::Centrifugo,
            url: var("CENTRIFUGO_WS_URL")?,
            token,
            channel: CENTRIFUGO_CHANNEL.into(),
        },
        publish_url: format!("{}/publish", var("CENTRIFUGO_API_URL")?),
        api_key: var("CENTRIFUGO_API_KEY")?,
        http: reqwest::Client::new(),
        child: None,
        script: o.centrifugo_script.clone(),
    })
}

/// Centrifugo's connection-token HMAC secret (`centrifugo.sh env`).
pub async fn centrifugo_secret(script: &str) -> Result<String> {
    let out = Command::new(script)
        .arg("env")
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .with_context(|| format!("run {script} env"))?;
    if !out.status.success() {
        bail!("{script} env failed");
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("CENTRIFUGO_TOKEN_HMAC_SECRET="))
        .map(str::to_owned)
        .context("no CENTRIFUGO_TOKEN_HMAC_SECRET from centrifugo.sh env")
}

/// A Centrifugo connection token: HS256 over `claims` (with `sub` and `exp` in them).
pub fn hs256_jwt_claims(secret: &str, claims: &Value) -> Result<String> {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{claims}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|e| anyhow::anyhow!("hmac key: {e}"))?;
    mac.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    Ok(format!("{signing_input}.{sig}"))
}

/// A Centrifugo connection token: HS256 over `{"sub", "exp"}`.
pub fn hs256_jwt(secret: &str, sub: &str, ttl_seconds: u64) -> Result<String> {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + ttl_seconds;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(json!({"sub": sub, "exp": exp}).to_string());
    let signing_input = format!("{header}.{claims}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|e| anyhow::anyhow!("hmac key: {e}"))?;
    mac.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    Ok(format!("{signing_input}.{sig}"))
}

/// A `name=value` word of a process's banner line (`hermes-gateway listening public=...`).
pub fn banner_field(banner: &str, name: &str) -> Result<String> {
    banner
        .split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .map(str::to_owned)
        .with_context(|| format!("no {name}= in the banner {banner:?}"))
}

/// Polls `url` until it answers 200 (readiness has no other signal).
pub async fn wait_ready(http: &reqwest::Client, url: &str, limit: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if http.get(url).send().await.is_ok_and(|r| r.status() == 200) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{url} did not answer 200 within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
