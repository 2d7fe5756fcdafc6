//! `hermes-gateway standalone`: ready when its banner says it is running.

use std::process::Stdio;
use std::time::Duration;

use hermes_e2e::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn the_first_upgrade_after_the_standalone_banner_succeeds() {
    // Signed here, before the process starts, so that nothing stands between the banner
    // and the upgrade.
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &json!({"user_id": "first", "room_id": "demo", "token": "t", "exp": exp}),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("sign");
    let mut child = Command::new(binary("hermes-gateway"))
        .arg("standalone")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HERMES_LISTEN", "127.0.0.1:0")
        .env("HERMES_INTERNAL_LISTEN", "127.0.0.1:0")
        .env("HERMES_JWT_SECRET", JWT_SECRET)
        .env("HERMES_TOKEN_CHECK", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut public = None;
    tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.expect("stdout") {
            if let Some(addr) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("public=http://"))
            {
                public = Some(addr.to_owned());
            }
            if line.contains("Hermes standalone is running") {
                return;
            }
        }
        panic!("stdout ended before the banner");
    })
    .await
    .expect("the banner before the deadline");
    let public = public.expect("the listening line comes before the banner");

    let url = format!("ws://{public}/production?token={token}");
    match tokio_tungstenite::connect_async(url).await {
        Ok((_ws, response)) => assert_eq!(response.status(), 101),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => panic!(
            "the first upgrade after the banner was refused with {}: {}",
            response.status(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
        ),
        Err(error) => panic!("the first upgrade after the banner failed: {error}"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), child.kill()).await;
}
