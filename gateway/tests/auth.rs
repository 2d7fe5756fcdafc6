//! The `$connect` authorizer, end to end against the real binary: every refusal reason
//! with its status, tokens made exactly as the original Ruby code makes them, the
//! bounded bcrypt queue, and no token in any log line.

use std::time::{SystemTime, UNIX_EPOCH};

use hermes_e2e::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn jwt(alg: Algorithm, claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

/// Stores a token row the way the original system's table holds it, through the
/// embedded registry's internal API.
async fn put_token_row(gw: &Gateway, user: &str, room: &str, hash: &str) {
    let r = reqwest::Client::new()
        .post(format!("{}/internal/v1/registry", gw.internal))
        .header("x-hermes-internal-secret", INTERNAL_SECRET)
        .json(&json!({"op": "put_token", "token": {
            "user_id": user, "room_id": room, "token_hash": hash, "fast_verifier": null, "created_at": 0
        }}))
        .send()
        .await
        .expect("registry call");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn every_refusal_has_its_own_status_and_reason() {
    let gw = Gateway::start(&[("HERMES_ALLOWED_ORIGINS", "https://app.example.com")]).await;
    let url = gw.ws_url();
    let future = now() + 600;
    let claims = json!({"user_id": "u1", "room_id": "r1", "token": "t", "exp": future});

    /// URL, extra headers, expected status, expected code.
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (url.clone(), vec![], 401, "token_missing"),
        (
            format!("{url}?token=not-a-jwt"),
            vec![],
            401,
            "token_malformed",
        ),
        (
            format!(
                "{url}?token={}",
                jwt(Algorithm::HS512, &claims, "some-other-secret-entirely")
            ),
            vec![],
            401,
            "token_signature",
        ),
        (
            format!(
                "{url}?token={}",
                jwt(
                    Algorithm::HS512,
                    &json!({"user_id":"u1","room_id":"r1","token":"t","exp": now() - 3600}),
                    JWT_SECRET
                )
            ),
            vec![],
            401,
            "token_expired",
        ),
        (
            format!("{url}?token={}", jwt(Algorithm::HS256, &claims, JWT_SECRET)),
            vec![],
            401,
            "token_algorithm",
        ),
        (
            format!(
                "{url}?token={}",
                jwt(
                    Algorithm::HS512,
                    &json!({"user_id":"u1","room_id":"r1","token":"t"}),
                    JWT_SECRET
                )
            ),
            vec![],
            401,
            "token_no_exp",
        ),
        (
            format!("{url}?token={}", jwt(Algorithm::HS512, &claims, JWT_SECRET)),
            vec![],
            403,
            "token_not_registered",
        ),
        (
            format!("{url}?token={}", gw.token("u2", "r1").await),
            vec![("Origin", "https://evil.example.com")],
            403,
            "origin_not_allowed",
        ),
    ];
    for (url, headers, status, code) in cases {
        let (got_status, body, _) = gw.refused(url, &headers).await;
        assert_eq!(
            (got_status, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.len() > 10),
            "{body}"
        );
    }

    // A registered user presenting a token other than the registered one.
    let _registered = gw.token("u1", "r1").await;
    let forged = jwt(Algorithm::HS512, &claims, JWT_SECRET);
    let (status, body, _) = gw.refused(format!("{url}?token={forged}"), &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("token_mismatch"))
    );

    // alg=none
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none"}"#),
        b64.encode(claims.to_string())
    );
    let (status, body, _) = gw.refused(format!("{url}?token={none}"), &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("token_algorithm"))
    );

    // Wrong stage.
    let token = gw.token("u1", "r1").await;
    let other = url.replace("/production", "/staging");
    let (status, body, _) = gw.refused(format!("{other}?token={token}"), &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_stage"))
    );

    // The allowed origin and no origin at all both connect.
    let mut ok = gw.connect(&token).await;
    ok.close(None).await.expect("close");
}

#[tokio::test]
async fn tokens_made_like_the_original_ruby_code_are_accepted() {
    let gw = Gateway::start(&[]).await;
    // token = hex(SHA-256(user_id + passcode + room_id)); bcrypt(token) at cost 12 is
    // stored; the JWT is HS512 over {user_id, room_id, token, exp}.
    for (user, prefix) in [("ruby-user-2a", "$2a$"), ("ruby-user-2b", "$2b$")] {
        let room = "company-42";
        let token = hex::encode(Sha256::digest(
            format!("{user}s3cret-passcode{room}").as_bytes(),
        ));
        let hash = bcrypt::hash(&token, 12).expect("bcrypt");
        let hash = hash.replacen("$2b$", prefix, 1);
        put_token_row(&gw, user, room, &hash).await;
        let claims = json!({"user_id": user, "room_id": room, "token": token, "exp": now() + 3600});
        let jwt = jwt(Algorithm::HS512, &claims, JWT_SECRET);
        let mut ws = gw.connect(&jwt).await;
        // It receives notifications for its room in the original format.
        let (status, _) = gw.publish(json!({"user_id": "backend", "room_id": room, "to_user_id": user, "data": {"type": "hello"}})).await;
        assert_eq!(status, 202);
        assert_eq!(
            recv_json(&mut ws).await,
            json!({"user_id": "backend", "data": {"type": "hello"}})
        );
    }
    assert_eq!(
        gw.metric("hermes_auth_duration_seconds_count{path=\"bcrypt\"}")
            .await,
        2.0
    );
}

/// The original Ruby code with an Integer `current_user.id`:
/// `token = Digest::SHA256.hexdigest("#{user_id}#{passcode}#{room_id}")`, the token table
/// holds `user_id.to_s` and `BCrypt::Password.create(token)` (`$2a$`, cost 12), and the JWT
/// is `JWT.encode({user_id: 42, room_id: ..., token:, exp:}, secret, 'HS512')`, the id a
/// JSON number. Its backend publishes with integer ids too.
#[tokio::test]
async fn tokens_with_integer_ids_made_like_the_original_ruby_code_connect() {
    let gw = Gateway::start(&[]).await;
    let passcode = "s3cret-passcode";
    for (user_id, room_id) in [(json!(42), json!("company-42")), (json!(43), json!(7))] {
        let (user, room) = (decimal(&user_id), decimal(&room_id));
        let token = hex::encode(Sha256::digest(format!("{user}{passcode}{room}").as_bytes()));
        let hash = bcrypt::hash_with_result(&token, 12)
            .expect("bcrypt")
            .format_for_version(bcrypt::Version::TwoA);
        assert!(hash.starts_with("$2a$12$"), "{hash}");
        put_token_row(&gw, &user, &room, &hash).await;
        let claims =
            json!({"user_id": user_id, "room_id": room_id, "token": token, "exp": now() + 3600});
        let mut ws = gw
            .connect(&jwt(Algorithm::HS512, &claims, JWT_SECRET))
            .await;
        let (status, outcome) = gw
            .publish(json!({"user_id": 1, "room_id": room_id, "to_user_id": user_id, "data": {"type": "hello"}}))
            .await;
        assert_eq!(
            (status, outcome["delivered"].as_u64()),
            (202, Some(1)),
            "{outcome}"
        );
        assert_eq!(
            recv_json(&mut ws).await,
            json!({"user_id": "1", "data": {"type": "hello"}})
        );
    }
}

/// A JSON string or integer as the decimal string the original stored (`to_s`).
fn decimal(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[tokio::test]
async fn a_second_connect_of_a_token_skips_bcrypt() {
    let gw = Gateway::start(&[("HERMES_AUTH_CACHE_TTL_SECONDS", "0")]).await;
    let token = "a-token-from-the-original-system";
    put_token_row(&gw, "u", "r", &bcrypt::hash(token, 10).expect("bcrypt")).await;
    let jwt = jwt(
        Algorithm::HS512,
        &json!({"user_id":"u","room_id":"r","token":token,"exp":now()+600}),
        JWT_SECRET,
    );
    for _ in 0..3 {
        let mut ws = gw.connect(&jwt).await;
        ws.close(None).await.expect("close");
    }
    assert_eq!(
        gw.metric("hermes_auth_duration_seconds_count{path=\"bcrypt\"}")
            .await,
        1.0
    );
    assert_eq!(
        gw.metric("hermes_auth_duration_seconds_count{path=\"fast_verifier\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn a_full_bcrypt_queue_answers_503_with_retry_after() {
    let gw = Gateway::start(&[("HERMES_BCRYPT_WORKERS", "1"), ("HERMES_BCRYPT_QUEUE", "1")]).await;
    let token = "shared-token-of-many-users";
    let hash = bcrypt::hash(token, 12).expect("bcrypt");
    let mut attempts = Vec::new();
    for i in 0..8 {
        let user = format!("storm-{i}");
        put_token_row(&gw, &user, "r", &hash).await;
        let jwt = jwt(
            Algorithm::HS512,
            &json!({"user_id":user,"room_id":"r","token":token,"exp":now()+600}),
            JWT_SECRET,
        );
        let url = format!("{}?token={jwt}", gw.ws_url());
        attempts.push(async move { tokio_tungstenite::connect_async(url).await });
    }
    let results = futures_util::future::join_all(attempts).await;
    let mut accepted = 0;
    let mut overloaded = 0;
    for r in results {
        match r {
            Ok(_) => accepted += 1,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 503);
                assert!(resp.headers().get("retry-after").is_some());
                overloaded += 1;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(accepted >= 1, "some connects get through");
    assert!(overloaded >= 1, "a full queue refuses instead of piling up");
    assert_eq!(
        gw.metric("hermes_connects_total{result=\"overloaded\"}")
            .await,
        overloaded as f64
    );
}

#[tokio::test]
async fn the_probe_reports_the_verdict_without_upgrading() {
    let gw = Gateway::start(&[]).await;
    let token = gw.token("u", "r").await;
    let http = reqwest::Client::new();
    let ok = http
        .get(format!("{}/production?token={token}", gw.public))
        .send()
        .await
        .expect("probe");
    assert_eq!(ok.status(), 426);
    let bad = http
        .get(format!("{}/production", gw.public))
        .bearer_auth("x.y.z")
        .send()
        .await
        .expect("probe");
    assert_eq!(bad.status(), 401);
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let gw = Gateway::start(&[("HERMES_LOG", "trace")]).await;
    let token = gw.token("log-user", "log-room").await;
    let mut ws = gw.connect(&token).await;
    ws.close(None).await.expect("close");
    let expired = jwt(
        Algorithm::HS512,
        &json!({"user_id":"u","room_id":"r","token":"secret-layer-two","exp":1}),
        JWT_SECRET,
    );
    let _ = gw
        .refused(format!("{}?token={expired}", gw.ws_url()), &[])
        .await;
    // Wait until the access log has recorded both requests, then search every line.
    eventually(|| async { gw.logs().matches("path=\"/production\"").count() >= 2 }).await;
    let logs = gw.logs();
    for secret in [
        token.as_str(),
        expired.as_str(),
        "secret-layer-two",
        ADMIN_KEY,
    ] {
        assert!(!logs.contains(secret), "a secret appeared in the logs");
    }
    let sig = token.rsplit('.').next().expect("signature");
    assert!(!logs.contains(sig));
}
