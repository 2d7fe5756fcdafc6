//! `GET /hermes.js` and `GET /hermes.mjs`: the `@hermes/client` package's files, byte for
//! byte, in every mode, unless `HERMES_SERVE_CLIENT=off`.

use std::path::PathBuf;

use hermes_e2e::*;

/// A file of the package, read from the checkout at test time.
fn package_file(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../clients/js")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn get(gw: &Gateway, path: &str) -> reqwest::Response {
    reqwest::get(format!("{}{path}", gw.public))
        .await
        .expect("GET on the public listener")
}

async fn assert_serves_the_package(gw: &Gateway) {
    for (path, file) in [("/hermes.js", "hermes.js"), ("/hermes.mjs", "hermes.mjs")] {
        let res = get(gw, path).await;
        assert_eq!(res.status(), 200, "GET {path}");
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("text/javascript"),
            "GET {path}: content-type {content_type}"
        );
        // A module script from another origin needs CORS; a classic one does not mind.
        assert_eq!(
            res.headers()
                .get("access-control-allow-origin")
                .and_then(|v| v.to_str().ok()),
            Some("*"),
            "GET {path}"
        );
        let body = res.bytes().await.expect("body");
        assert!(
            body.as_ref() == package_file(file).as_slice(),
            "GET {path} is not clients/js/{file} byte for byte ({} bytes served)",
            body.len()
        );
    }
}

#[tokio::test]
async fn a_serve_mode_gateway_serves_the_package_client_byte_for_byte() {
    let gw = Gateway::start(&[]).await;
    assert_serves_the_package(&gw).await;
    // The demo page stays a standalone thing.
    assert_eq!(get(&gw, "/").await.status(), 404);
}

#[tokio::test]
async fn a_standalone_gateway_serves_the_package_client_byte_for_byte() {
    let gw = Gateway::start_mode("standalone", &[]).await;
    assert_serves_the_package(&gw).await;
    assert_eq!(get(&gw, "/").await.status(), 200, "and the demo page");
}

#[tokio::test]
async fn hermes_serve_client_off_serves_no_client_in_either_mode() {
    for mode in ["serve", "standalone"] {
        let gw = Gateway::start_mode(mode, &[("HERMES_SERVE_CLIENT", "off")]).await;
        for path in ["/hermes.js", "/hermes.mjs"] {
            assert_eq!(get(&gw, path).await.status(), 404, "{mode}: GET {path}");
        }
    }
}
