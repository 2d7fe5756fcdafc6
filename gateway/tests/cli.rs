//! The command line: configuration errors exit 64 with one line; `token` prints a JWT
//! that a gateway sharing the registry accepts.

use std::process::Command;

use hermes_e2e::*;
use serde_json::json;

fn gateway_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hermes-gateway"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

#[test]
fn a_bad_configuration_value_prints_one_line_and_exits_64() {
    let out = gateway_cmd()
        .args(["serve"])
        .env("HERMES_JWT_SECRET", JWT_SECRET)
        .env("HERMES_ADMIN_KEY", ADMIN_KEY)
        .env("HERMES_INTERNAL_SECRET", INTERNAL_SECRET)
        .env("HERMES_MAX_MESSAGE_BYTES", "big")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("HERMES_MAX_MESSAGE_BYTES"), "{stderr}");

    let out = gateway_cmd().args(["serve"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HERMES_JWT_SECRET: required"));
}

/// With a shared registry the rows of sockets still open during a drain must not outlive
/// their TTL on the heartbeat alone: a drain as long as the TTL is refused before anything
/// is bound or connected.
#[test]
fn a_drain_as_long_as_the_shared_registry_ttl_exits_64_naming_both_variables() {
    let out = gateway_cmd()
        .args(["serve"])
        .env("HERMES_JWT_SECRET", JWT_SECRET)
        .env("HERMES_ADMIN_KEY", ADMIN_KEY)
        .env("HERMES_INTERNAL_SECRET", INTERNAL_SECRET)
        .env("HERMES_REGISTRY", "remote")
        .env("HERMES_REGISTRY_URL", "http://127.0.0.1:9")
        .env("HERMES_REGISTRY_TTL_SECONDS", "10")
        .env("HERMES_DRAIN_SECONDS", "10")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    assert!(out.stdout.is_empty(), "nothing was started");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("HERMES_DRAIN_SECONDS") && stderr.contains("HERMES_REGISTRY_TTL_SECONDS"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_token_command_prints_a_jwt_the_cluster_accepts() {
    let gw = Gateway::start(&[]).await;
    let out = gateway_cmd()
        .args(["token", "--user", "ops-user", "--room", "ops-room"])
        .env("HERMES_JWT_SECRET", JWT_SECRET)
        .env("HERMES_INTERNAL_SECRET", INTERNAL_SECRET)
        .env("HERMES_REGISTRY", "remote")
        .env("HERMES_REGISTRY_URL", &gw.internal)
        .env("HERMES_BCRYPT_COST", "4")
        .output()
        .expect("runs");
    let jwt = printed_token(out);
    assert_eq!(jwt.split('.').count(), 3);
    let mut ws = gw.connect(&jwt).await;
    gw.publish(json!({"user_id": "ops", "room_id": "ops-room", "data": {"type": "cli"}}))
        .await;
    assert_eq!(recv_json(&mut ws).await["data"]["type"], "cli");
}

/// The token a successful `hermes-gateway token` printed.
fn printed_token(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}

/// A unique path under the system's temporary directory for a config file.
fn config_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(unique(name));
    std::fs::write(&path, text).expect("write the config file");
    path
}

#[tokio::test]
async fn the_token_command_reads_its_secret_from_the_config_file() {
    let gw = Gateway::start(&[]).await;
    let file = config_file(
        "token-config",
        &format!("# the secret lives only here\nHERMES_JWT_SECRET=\"{JWT_SECRET}\"\n"),
    );
    let out = gateway_cmd()
        .args(["token", "--user", "file-user", "--room", "file-room"])
        .env("HERMES_CONFIG_FILE", &file)
        .env("HERMES_INTERNAL_SECRET", INTERNAL_SECRET)
        .env("HERMES_REGISTRY", "remote")
        .env("HERMES_REGISTRY_URL", &gw.internal)
        .env("HERMES_BCRYPT_COST", "4")
        .output()
        .expect("runs");
    let _ = std::fs::remove_file(&file);
    let jwt = printed_token(out);
    // The gateway, which has the same secret, accepts it.
    let mut ws = gw.connect(&jwt).await;
    gw.publish(json!({"user_id": "ops", "room_id": "file-room", "data": {"type": "file"}}))
        .await;
    assert_eq!(recv_json(&mut ws).await["data"]["type"], "file");
}

#[test]
fn the_token_command_without_a_secret_exits_64_naming_it() {
    let empty_in_file = config_file("token-empty", "HERMES_JWT_SECRET=\n");
    let runs = [
        gateway_cmd()
            .args(["token", "--user", "u", "--room", "r"])
            .env("HERMES_JWT_SECRET", "")
            .output()
            .expect("runs"),
        gateway_cmd()
            .args(["token", "--user", "u", "--room", "r"])
            .env("HERMES_CONFIG_FILE", &empty_in_file)
            .output()
            .expect("runs"),
    ];
    let _ = std::fs::remove_file(&empty_in_file);
    for out in runs {
        assert_eq!(out.status.code(), Some(64));
        assert!(out.stdout.is_empty(), "no token is printed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("HERMES_JWT_SECRET: required to sign a token"),
            "{stderr}"
        );
    }
}

/// The original's token table as `aws dynamodb scan` prints it (an Integer `user_id` stored
/// as a number, a string one, and a row without its hash on line 13), and one data file of
/// an S3 export, gzipped: the rows land in the tokens table, the original's JWTs connect,
/// and a second import changes nothing.
#[tokio::test]
async fn import_tokens_copies_a_dynamodb_export_that_the_gateway_then_accepts() {
    use std::io::Write as _;

    let gw = Gateway::start(&[]).await;
    let ruby_token = |user: &str, room: &str| {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(format!("{user}app-passcode{room}")))
    };
    let hash = |token: &str| {
        bcrypt::hash_with_result(token, 4)
            .expect("bcrypt")
            .format_for_version(bcrypt::Version::TwoA)
    };
    let scan = format!(
        r#"{{
    "Items": [
        {{
            "user_id": {{"N": "42"}},
            "room_id": {{"S": "acme"}},
            "token": {{"S": "{}"}}
        }},
        {{
            "user_id": {{"S": "u-7"}},
            "room_id": {{"S": "acme"}},
            "token": {{"S": "{}"}}
        }},
        {{
            "user_id": {{"S": "u-8"}},
            "room_id": {{"S": "acme"}}
        }}
    ],
    "Count": 3,
    "ScannedCount": 3,
    "ConsumedCapacity": null
}}"#,
        hash(&ruby_token("42", "acme")),
        hash(&ruby_token("u-7", "acme")),
    );
    let scan_file = config_file("scan.json", &scan);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    writeln!(
        gz,
        r#"{{"Item":{{"user_id":{{"N":"43"}},"room_id":{{"S":"acme"}},"token":{{"S":"{}"}}}}}}"#,
        hash(&ruby_token("43", "acme"))
    )
    .expect("gzip");
    let export_file = std::env::temp_dir()
        .join(unique("export"))
        .with_extension("json.gz");
    std::fs::write(&export_file, gz.finish().expect("gzip")).expect("write the export");

    let import = || {
        gateway_cmd()
            .arg("import-tokens")
            .args([&scan_file, &export_file])
            .env("HERMES_REGISTRY", "remote")
            .env("HERMES_REGISTRY_URL", &gw.internal)
            .env("HERMES_INTERNAL_SECRET", INTERNAL_SECRET)
            .output()
            .expect("runs")
    };
    let out = import();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout.trim(),
        "import-tokens: 4 rows read: 3 written, 0 unchanged, 0 kept, 1 bad (skipped)"
    );
    assert!(
        stderr.contains(&format!(
            "{}:13: the attribute `token` is missing; skipped",
            scan_file.display()
        )),
        "{stderr}"
    );

    // The original's JWTs, an Integer id included, connect on the imported rows.
    for (user_id, user) in [(json!(42), "42"), (json!("u-7"), "u-7"), (json!(43), "43")] {
        let claims = json!({"user_id": user_id, "room_id": "acme", "token": ruby_token(user, "acme"), "exp": 4_102_444_800u64});
        let jwt = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        )
        .expect("jwt");
        let mut ws = gw.connect(&jwt).await;
        ws.close(None).await.expect("close");
    }

    let again = import();
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        "import-tokens: 4 rows read: 0 written, 3 unchanged, 0 kept, 1 bad (skipped)"
    );
    for file in [scan_file, export_file] {
        let _ = std::fs::remove_file(file);
    }
}

#[test]
fn import_tokens_into_the_memory_registry_exits_64() {
    let out = gateway_cmd()
        .args(["import-tokens", "-"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HERMES_REGISTRY"));
}
