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
