//! AWS Signature Version 4 on `@connections`, end to end against the real binary: what
//! the SDKs may send on the wire (a percent-encoded `@`), API Gateway's refusals, and a
//! gateway without SigV4 credentials. The SDKs themselves run in tests/sdk/.

use std::time::{SystemTime, UNIX_EPOCH};

use hermes_e2e::*;
use hermes_gateway::sigv4::{self, canonical};
use reqwest::Method;

const KEY_ID: &str = "AKIAGATEWAYTEST";
const SECRET: &str = "gateway/test+secret/0123456789abcdef";
const CREDENTIALS: &str = "AKIAGATEWAYTEST:gateway/test+secret/0123456789abcdef";

async fn gateway() -> Gateway {
    Gateway::start(&[("HERMES_SIGV4_CREDENTIALS", CREDENTIALS)]).await
}

/// A request to the internal listener signed as the SDKs sign it, with our signer pieces:
/// `path` exactly as sent, `host` and `x-amz-date` signed.
fn signed(
    gw: &Gateway,
    method: Method,
    path: &str,
    body: &'static [u8],
    secret: &str,
) -> reqwest::RequestBuilder {
    let host = gw.internal.trim_start_matches("http://").to_owned();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let amz_date = sigv4::format_amz_date(now);
    let headers = vec![
        ("host".to_owned(), host),
        ("x-amz-date".to_owned(), amz_date.clone()),
    ];
    let request = canonical::Request {
        method: method.as_str(),
        path,
        query: "",
        headers: headers.clone(),
        body,
    };
    let signed_headers = ["host", "x-amz-date"];
    let creq =
        canonical::canonical_request(&request, &signed_headers, &canonical::sha256_hex(body));
    let date = &amz_date[..8];
    let scope = format!("{date}/us-east-1/execute-api/aws4_request");
    let sts = canonical::string_to_sign(&amz_date, &scope, &creq);
    let key = canonical::signing_key(secret, date, "us-east-1", "execute-api");
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={KEY_ID}/{scope}, SignedHeaders=host;x-amz-date, Signature={}",
        canonical::signature(&key, &sts)
    );
    reqwest::Client::new()
        .request(method, format!("{}{path}", gw.internal))
        .header("x-amz-date", amz_date)
        .header("authorization", authorization)
        .body(body)
}

/// Sends a request and reads the answer in API Gateway's error shape: status,
/// `x-amzn-ErrorType`, `message`.
async fn aws_refusal(request: reqwest::RequestBuilder) -> (u16, String, String) {
    let r = request.send().await.expect("request");
    let status = r.status().as_u16();
    let aws_type = r
        .headers()
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    let message = body["message"].as_str().unwrap_or_default().to_owned();
    (status, aws_type, message)
}

#[tokio::test]
async fn a_signed_call_with_a_percent_encoded_at_sign_reaches_the_connection() {
    let gw = gateway().await;
    let (mut ws, id) = gw.connect_modern(&gw.token("u", "r").await).await;
    let r = signed(
        &gw,
        Method::POST,
        &format!("/production/%40connections/{id}"),
        b"encoded",
        SECRET,
    )
    .send()
    .await
    .expect("post");
    assert_eq!(r.status(), 200);
    assert_eq!(recv_text(&mut ws).await, "encoded");
}

#[tokio::test]
async fn signed_refusals_are_api_gateways_403_with_its_error_type() {
    let gw = gateway().await;
    let (status, aws_type, message) = aws_refusal(signed(
        &gw,
        Method::GET,
        "/production/@connections/abc",
        b"",
        "not-the-secret-at-all",
    ))
    .await;
    assert_eq!(
        (status, aws_type.as_str()),
        (403, "InvalidSignatureException")
    );
    assert!(
        message.starts_with("The request signature we calculated"),
        "{message}"
    );
    // Without a signature and without the admin key: the admin key's 401, as before.
    let r = reqwest::Client::new()
        .get(format!("{}/production/@connections/abc", gw.internal))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn a_gateway_without_sigv4_credentials_refuses_signed_calls_naming_the_variable() {
    let gw = Gateway::start(&[]).await;
    let (status, aws_type, message) =
        aws_refusal(signed(&gw, Method::GET, "/@connections/abc", b"", SECRET)).await;
    assert_eq!(
        (status, aws_type.as_str()),
        (403, "UnrecognizedClientException")
    );
    assert!(message.contains("HERMES_SIGV4_CREDENTIALS"), "{message}");
    // The admin key still works there.
    let r = gw
        .admin(Method::GET, "/@connections/abc")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 410);
}
