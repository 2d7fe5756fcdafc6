//! AWS Signature Version 4 on the `@connections` management API, so that the AWS SDKs'
//! `ApiGatewayManagementApi` clients work by changing only their endpoint.
//!
//! A request is accepted when its `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=...,
//! Signature=...` names a configured access key id (`HERMES_SIGV4_CREDENTIALS`), its scope is
//! `<date>/<HERMES_SIGV4_REGION>/execute-api/aws4_request`, its `X-Amz-Date` is within five
//! minutes of this clock, its `x-amz-content-sha256` (when sent) is the body's hash, `host` is
//! signed, and the signature over the canonical request ([`canonical`]) equals the one sent,
//! compared in constant time. Every refusal is a [`Refusal`]: API Gateway's error type and a
//! message that never contains the signature or a secret.

pub mod canonical;
pub mod config;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use subtle::ConstantTimeEq;

pub use canonical::{ALGORITHM, Request};
pub use config::SigV4Config;

/// The service name of API Gateway's execute and management APIs.
pub const SERVICE: &str = "execute-api";

/// How far `X-Amz-Date` may be from this clock, either way (AWS's bound): a captured
/// request cannot be replayed later than this.
pub const MAX_SKEW: Duration = Duration::from_secs(5 * 60);

/// Why a signed request is refused: API Gateway's `x-amzn-ErrorType` and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub aws_type: &'static str,
    pub message: String,
}

impl Refusal {
    fn incomplete(message: impl Into<String>) -> Self {
        Self {
            aws_type: "IncompleteSignatureException",
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self {
            aws_type: "InvalidSignatureException",
            message: message.into(),
        }
    }

    fn unknown_key() -> Self {
        Self {
            aws_type: "UnrecognizedClientException",
            message: "The security token included in the request is invalid.".into(),
        }
    }
}

/// Whether an `Authorization` header value is a SigV4 one.
pub fn is_sigv4(authorization: &str) -> bool {
    authorization
        .split_whitespace()
        .next()
        .is_some_and(|word| word == ALGORITHM)
}

/// The parts of a SigV4 `Authorization` header.
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    terminator: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, Refusal> {
    let rest = value.trim_start().strip_prefix(ALGORITHM).ok_or_else(|| {
        Refusal::incomplete(format!(
            "the Authorization header must start with {ALGORITHM}"
        ))
    })?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed_headers = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => {}
        }
    }
    let missing: Vec<&str> = [
        ("Credential", credential.is_none()),
        ("SignedHeaders", signed_headers.is_none()),
        ("Signature", signature.is_none()),
    ]
    .iter()
    .filter(|(_, missing)| *missing)
    .map(|(name, _)| *name)
    .collect();
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(Refusal::incomplete(format!(
            "Authorization header requires {} parameter(s).",
            missing.join(", ")
        )));
    };
    let parts: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminator] = parts[..] else {
        return Err(Refusal::incomplete(
            "Credential must be <access key id>/<date>/<region>/<service>/aws4_request.",
        ));
    };
    Ok(Authorization {
        access_key_id,
        date,
        region,
        service,
        terminator,
        signed_headers: signed_headers.split(';').collect(),
        signature,
    })
}

/// Verifies a signed request against the configured credentials and region as of `now`;
/// answers the access key id that signed it.
pub fn verify(config: &SigV4Config, req: &Request, now: SystemTime) -> Result<String, Refusal> {
    let authorization = req
        .header("authorization")
        .ok_or_else(|| Refusal::incomplete("the request has no Authorization header"))?;
    let auth = parse_authorization(authorization)?;
    let secret = config
        .secret(auth.access_key_id)
        .ok_or_else(Refusal::unknown_key)?;

    let amz_date = req.header("x-amz-date").ok_or_else(|| {
        Refusal::incomplete("Authorization header requires existence of a 'X-Amz-Date' header.")
    })?;
    let signed_at = parse_amz_date(amz_date).ok_or_else(|| {
        Refusal::incomplete(format!(
            "X-Amz-Date {amz_date:?} must be in the form 20150830T123600Z."
        ))
    })?;
    check_skew(amz_date, signed_at, now)?;

    if auth.date != &amz_date[..8] {
        return Err(Refusal::invalid(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'.",
            auth.date,
            &amz_date[..8]
        )));
    }
    if auth.region != config.region {
        return Err(Refusal::invalid(format!(
            "Credential should be scoped to a valid region, not '{}'.",
            auth.region
        )));
    }
    if auth.service != SERVICE {
        return Err(Refusal::invalid(format!(
            "Credential should be scoped to correct service: '{SERVICE}'."
        )));
    }
    if auth.terminator != "aws4_request" {
        return Err(Refusal::invalid(format!(
            "Credential should be scoped with a valid terminator: 'aws4_request', not '{}'.",
            auth.terminator
        )));
    }
    if auth.signed_headers.contains(&"authorization") {
        // A signature cannot cover itself; and the canonical request a refusal shows would
        // carry the signature back.
        return Err(Refusal::invalid(
            "'Authorization' cannot be a 'SignedHeader': a signature cannot cover itself.",
        ));
    }
    if !auth.signed_headers.contains(&"host") {
        return Err(Refusal::invalid(
            "'Host' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }

    let payload_hash = canonical::sha256_hex(req.body);
    if let Some(sent) = req.header("x-amz-content-sha256")
        && sent != payload_hash
    {
        return Err(Refusal::invalid(
            "The x-amz-content-sha256 header is not the SHA-256 of the body (unsigned payloads are not accepted).",
        ));
    }

    let canonical_request = canonical::canonical_request(req, &auth.signed_headers, &payload_hash);
    let scope = format!("{}/{}/{SERVICE}/aws4_request", auth.date, config.region);
    let string_to_sign = canonical::string_to_sign(amz_date, &scope, &canonical_request);
    let key = canonical::signing_key(secret, auth.date, &config.region, SERVICE);
    let expected = canonical::signature(&key, &string_to_sign);
    let matches = auth.signature.len() == expected.len()
        && bool::from(auth.signature.as_bytes().ct_eq(expected.as_bytes()));
    if !matches {
        return Err(Refusal::invalid(format!(
            "The request signature we calculated does not match the signature you provided. \
                 Check your AWS Secret Access Key and signing method. Consult the service documentation for details.\n\n\
                 The Canonical String for this request should have been\n'{canonical_request}'\n\n\
                 The String-to-Sign should have been\n'{string_to_sign}'\n"
        )));
    }
    Ok(auth.access_key_id.to_owned())
}

/// Refuses a date more than [`MAX_SKEW`] away from `now`, in AWS's words.
fn check_skew(amz_date: &str, signed_at: u64, now: SystemTime) -> Result<(), Refusal> {
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let skew = MAX_SKEW.as_secs();
    if signed_at + skew < now_secs {
        return Err(Refusal::invalid(format!(
            "Signature expired: {amz_date} is now earlier than {} ({} - 5 min.)",
            format_amz_date(now_secs.saturating_sub(skew)),
            format_amz_date(now_secs)
        )));
    }
    if signed_at > now_secs + skew {
        return Err(Refusal::invalid(format!(
            "Signature not yet current: {amz_date} is still later than {} ({} + 5 min.)",
            format_amz_date(now_secs + skew),
            format_amz_date(now_secs)
        )));
    }
    Ok(())
}

/// Seconds since the epoch of an `X-Amz-Date` (`20150830T123600Z`).
pub fn parse_amz_date(value: &str) -> Option<u64> {
    let b = value.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u64> {
        let s = value.get(range)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    };
    let (y, mo, d) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (h, mi, s) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y % 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + h * 3600 + mi * 60 + s)
}

/// `20150830T123600Z` of seconds since the epoch.
pub fn format_amz_date(secs: u64) -> String {
    hermes_shared::wire::rfc3339_millis(secs * 1000)
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .take(15)
        .chain(std::iter::once('Z'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_ID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20150830T123600Z";

    fn config() -> SigV4Config {
        SigV4Config::new(vec![(KEY_ID.into(), SECRET.into())], "us-east-1".into())
    }

    fn at(amz_date: &str) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(parse_amz_date(amz_date).expect("date"))
    }

    /// A request signed as an SDK signs it: `POST /production/@connections/{id}` with a
    /// body, `host`, `x-amz-date` and `x-amz-content-sha256` signed.
    fn signed(
        key_id: &str,
        secret: &str,
        amz_date: &str,
        region: &str,
        service: &str,
        body: &[u8],
    ) -> Vec<(String, String)> {
        let mut headers = vec![
            ("host".to_owned(), "127.0.0.1:8081".to_owned()),
            ("x-amz-date".to_owned(), amz_date.to_owned()),
            (
                "x-amz-content-sha256".to_owned(),
                canonical::sha256_hex(body),
            ),
        ];
        let req = request(&headers, body);
        let signed = ["host", "x-amz-content-sha256", "x-amz-date"];
        let canonical = canonical::canonical_request(&req, &signed, &canonical::sha256_hex(body));
        let date = &amz_date[..8];
        let scope = format!("{date}/{region}/{service}/aws4_request");
        let sts = canonical::string_to_sign(amz_date, &scope, &canonical);
        let signature =
            canonical::signature(&canonical::signing_key(secret, date, region, service), &sts);
        headers.push((
            "authorization".to_owned(),
            format!(
                "{ALGORITHM} Credential={key_id}/{scope}, SignedHeaders={}, Signature={signature}",
                signed.join(";")
            ),
        ));
        headers
    }

    fn request<'b>(headers: &[(String, String)], body: &'b [u8]) -> Request<'b> {
        Request {
            method: "POST",
            path: "/production/@connections/abc%3D",
            query: "",
            headers: headers.to_vec(),
            body,
        }
    }

    fn good() -> Vec<(String, String)> {
        signed(KEY_ID, SECRET, DATE, "us-east-1", SERVICE, b"{\"a\":1}")
    }

    #[test]
    fn a_request_signed_with_a_configured_key_is_accepted() {
        let req = request(&good(), b"{\"a\":1}");
        assert_eq!(verify(&config(), &req, at(DATE)), Ok(KEY_ID.to_owned()));
        // Four minutes either way is within the skew.
        for now in ["20150830T124000Z", "20150830T123200Z"] {
            assert!(verify(&config(), &req, at(now)).is_ok(), "{now}");
        }
    }

    fn refusal(headers: &[(String, String)], body: &'static [u8], now: &str) -> Refusal {
        verify(&config(), &request(headers, body), at(now)).expect_err("refused")
    }

    #[test]
    fn an_unknown_access_key_id_is_unrecognized() {
        let headers = signed("AKIDOTHER", SECRET, DATE, "us-east-1", SERVICE, b"x");
        assert_eq!(refusal(&headers, b"x", DATE), Refusal::unknown_key());
    }

    #[test]
    fn a_wrong_secret_or_a_changed_request_is_an_invalid_signature() {
        let wrong_secret = signed(KEY_ID, "not-the-secret", DATE, "us-east-1", SERVICE, b"x");
        let r = refusal(&wrong_secret, b"x", DATE);
        assert_eq!(r.aws_type, "InvalidSignatureException");
        assert!(
            r.message.starts_with("The request signature we calculated"),
            "{}",
            r.message
        );
        // The body changed after signing (and its hash header with it).
        let mut changed = signed(KEY_ID, SECRET, DATE, "us-east-1", SERVICE, b"x");
        for (name, value) in &mut changed {
            if name == "x-amz-content-sha256" {
                *value = canonical::sha256_hex(b"y");
            }
        }
        let r = refusal(&changed, b"y", DATE);
        assert_eq!(r.aws_type, "InvalidSignatureException");
        // The body changed, its hash header left as signed.
        let r = refusal(&good(), b"{\"a\":2}", DATE);
        assert!(r.message.contains("x-amz-content-sha256"), "{}", r.message);
    }

    #[test]
    fn a_date_outside_the_skew_is_expired_or_not_yet_current() {
        let r = refusal(&good(), b"{\"a\":1}", "20150830T124101Z");
        assert_eq!(r.aws_type, "InvalidSignatureException");
        assert_eq!(
            r.message,
            "Signature expired: 20150830T123600Z is now earlier than 20150830T123601Z (20150830T124101Z - 5 min.)"
        );
        let r = refusal(&good(), b"{\"a\":1}", "20150830T123059Z");
        assert!(
            r.message.starts_with("Signature not yet current"),
            "{}",
            r.message
        );
    }

    #[test]
    fn a_scope_of_another_region_service_or_date_is_invalid() {
        for (headers, words) in [
            (
                signed(KEY_ID, SECRET, DATE, "eu-west-1", SERVICE, b"x"),
                "valid region",
            ),
            (
                signed(KEY_ID, SECRET, DATE, "us-east-1", "s3", b"x"),
                "correct service",
            ),
        ] {
            let r = refusal(&headers, b"x", DATE);
            assert_eq!(r.aws_type, "InvalidSignatureException");
            assert!(r.message.contains(words), "{}", r.message);
        }
        let mut other_day = good();
        for (name, value) in &mut other_day {
            if name == "authorization" {
                *value = value.replace("/20150830/", "/20150831/");
            }
        }
        let r = refusal(&other_day, b"{\"a\":1}", DATE);
        assert!(
            r.message.starts_with("Date in Credential scope"),
            "{}",
            r.message
        );
    }

    #[test]
    fn malformed_authorizations_are_incomplete() {
        for value in [
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/execute-api/aws4_request",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830, SignedHeaders=host, Signature=00",
        ] {
            let headers = vec![
                ("host".to_owned(), "h".to_owned()),
                ("x-amz-date".to_owned(), DATE.to_owned()),
                ("authorization".to_owned(), value.to_owned()),
            ];
            let r = refusal(&headers, b"", DATE);
            assert_eq!(r.aws_type, "IncompleteSignatureException", "{value}");
        }
        let mut no_date = good();
        no_date.retain(|(name, _)| name != "x-amz-date");
        let r = refusal(&no_date, b"{\"a\":1}", DATE);
        assert_eq!(r.aws_type, "IncompleteSignatureException");
    }

    #[test]
    fn refusals_never_contain_the_signature_or_the_secret() {
        let headers = signed(KEY_ID, "not-the-secret", DATE, "us-east-1", SERVICE, b"x");
        let sent = headers
            .iter()
            .find(|(n, _)| n == "authorization")
            .and_then(|(_, v)| v.rsplit('=').next())
            .unwrap_or_default()
            .to_owned();
        let r = refusal(&headers, b"x", DATE);
        assert!(!r.message.contains(&sent));
        assert!(!r.message.contains(SECRET) && !r.message.contains("not-the-secret"));
    }

    #[test]
    fn amz_dates_parse_and_format() {
        assert_eq!(parse_amz_date(DATE), Some(1_440_938_160));
        assert_eq!(format_amz_date(1_440_938_160), DATE);
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20240229T235959Z"), Some(1_709_251_199));
        for bad in [
            "2015-08-30T12:36:00Z",
            "20151330T123600Z",
            "20150830T123600",
            "+0150830T123600Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A header value an attacker or a broken client might send as `Authorization`:
        /// anything, or SigV4's shape with any parts, lists and signature in it.
        fn authorization() -> impl Strategy<Value = (String, String)> {
            // Most often the configured scope, else one part of it changed or one added.
            let credential = (any::<bool>(), any::<prop::sample::Index>(), "\\PC{0,12}").prop_map(
                |(keep, at, other)| {
                    let mut parts: Vec<String> =
                        [KEY_ID, "20150830", "us-east-1", SERVICE, "aws4_request"]
                            .map(str::to_owned)
                            .to_vec();
                    if !keep {
                        match at.index(parts.len() + 1) {
                            i if i == parts.len() => parts.push(other),
                            i => parts[i] = other,
                        }
                    }
                    parts.join("/")
                },
            );
            let signed_headers = prop::collection::vec(
                prop_oneof![
                    Just("host"),
                    Just("x-amz-date"),
                    Just("authorization"),
                    Just("x-amz-content-sha256"),
                    Just(""),
                ],
                0..5,
            )
            .prop_map(|h| h.join(";"));
            let signature = "[0-9a-f]{64}";
            prop_oneof![
                ("\\PC{0,80}", signature).prop_map(|(v, sig)| (format!("{v}{sig}"), sig)),
                (credential, signed_headers, signature).prop_map(|(c, h, sig)| {
                    (
                        format!("{ALGORITHM} Credential={c}, SignedHeaders={h}, Signature={sig}"),
                        sig,
                    )
                }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            /// Whatever is sent, the answer is a refusal of a known type whose message
            /// holds neither the secret nor the signature sent.
            #[test]
            fn a_request_not_signed_with_the_secret_is_refused_without_echoing_secrets(
                (authorization, sent) in authorization(),
                amz_date in prop_oneof![
                    3 => Just(DATE.to_owned()),
                    1 => "[0-9TZ]{14,17}",
                    1 => "\\PC{0,20}",
                ],
                path in "\\PC{0,24}",
                query in "\\PC{0,24}",
                body in prop::collection::vec(any::<u8>(), 0..32),
            ) {
                let headers = vec![
                    ("host".to_owned(), "127.0.0.1:8081".to_owned()),
                    ("x-amz-date".to_owned(), amz_date),
                    ("authorization".to_owned(), authorization),
                ];
                let req = Request { method: "POST", path: &path, query: &query, headers, body: &body };
                let refusal = verify(&config(), &req, at(DATE))
                    .expect_err("no signature made without the secret verifies");
                prop_assert!([
                    "IncompleteSignatureException",
                    "InvalidSignatureException",
                    "UnrecognizedClientException",
                ].contains(&refusal.aws_type));
                prop_assert!(!refusal.message.is_empty());
                prop_assert!(!refusal.message.contains(SECRET));
                prop_assert!(!refusal.message.contains(&sent), "{}", refusal.message);
            }

            /// A request signed with the secret is accepted, and any change to its body is
            /// refused as an invalid signature.
            #[test]
            fn a_signed_body_verifies_and_any_change_to_it_is_refused(
                body in prop::collection::vec(any::<u8>(), 1..64),
                flip in any::<prop::sample::Index>(),
                bit in 0u8..8,
            ) {
                let headers = signed(KEY_ID, SECRET, DATE, "us-east-1", SERVICE, &body);
                prop_assert_eq!(
                    verify(&config(), &request(&headers, &body), at(DATE)),
                    Ok(KEY_ID.to_owned())
                );
                let mut changed = body.clone();
                changed[flip.index(body.len())] ^= 1 << bit;
                let refusal = verify(&config(), &request(&headers, &changed), at(DATE))
                    .expect_err("a changed body is refused");
                prop_assert_eq!(refusal.aws_type, "InvalidSignatureException");
            }
        }
    }
}
