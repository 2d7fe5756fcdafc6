//! The pieces of a Signature Version 4 signature, exactly as AWS defines them for services
//! other than S3: the canonical request (method, canonical URI, canonical query string,
//! canonical headers, signed headers, payload hash), the string to sign and the signing key.
//! Pure functions over a [`Request`], tested against AWS's published test suite.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The signing algorithm, the first word of the `Authorization` header.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// A request as it arrived, before any decoding: what the signature covers.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as sent on the wire (still percent-encoded).
    pub path: &'a str,
    /// The query string as sent, without `?`.
    pub query: &'a str,
    /// Every header line: lowercase name, value as received, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: &'a [u8],
}

impl Request<'_> {
    /// The values of a header (lowercase name), in the order received.
    pub fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of a header (lowercase name).
    pub fn header<'s>(&'s self, name: &'s str) -> Option<&'s str> {
        self.header_values(name).next()
    }
}

/// Percent-encodes everything but the unreserved characters (`A-Z a-z 0-9 - . _ ~`), and
/// `/` too when `keep_slash`, with upper-case hex digits: AWS's `UriEncode`.
pub fn uri_encode(input: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(input.len());
    for byte in input.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(byte));
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The canonical URI of a path as sent. For every service but S3 the path is normalized
/// (empty, `.` and `..` segments removed, as the SDKs do before signing) and URI-encoded
/// once more: a client encodes each segment to send it and again to sign it, so the
/// server encodes the path it received once.
pub fn canonical_uri(raw_path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in raw_path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut path = String::from("/");
    path.push_str(&segments.join("/"));
    if raw_path.ends_with('/') && !segments.is_empty() {
        path.push('/');
    }
    uri_encode(&path, true)
}

/// The canonical query string: each parameter decoded and URI-encoded again (name and
/// value, `=` always present), sorted by name, then value.
pub fn canonical_query(raw_query: &str) -> String {
    let mut pairs: Vec<(String, String)> = raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                uri_encode(&percent_decode(name), false),
                uri_encode(&percent_decode(value), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// A header's canonical value: each of its values trimmed, runs of spaces inside folded
/// to one, then joined with `,` in the order received.
fn canonical_value<'v>(values: impl Iterator<Item = &'v str>) -> String {
    values
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(",")
}

/// The canonical request. `signed_headers` are the lowercase names the client listed
/// (sorted, as it signed them); `payload_hash` is the hex SHA-256 of the body.
pub fn canonical_request(req: &Request, signed_headers: &[&str], payload_hash: &str) -> String {
    let mut out = String::new();
    out.push_str(req.method);
    out.push('\n');
    out.push_str(&canonical_uri(req.path));
    out.push('\n');
    out.push_str(&canonical_query(req.query));
    out.push('\n');
    for name in signed_headers {
        out.push_str(name);
        out.push(':');
        out.push_str(&canonical_value(req.header_values(name)));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    out
}

/// `AWS4-HMAC-SHA256 \n <amz date> \n <scope> \n hex(sha256(canonical request))`.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// The signing key: `HMAC("AWS4" + secret, date)`, then region, service, `aws4_request`.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// The hex signature of a string to sign.
pub fn signature(key: &[u8; 32], string_to_sign: &str) -> String {
    hex::encode(hmac(key, string_to_sign.as_bytes()))
}

/// Hex SHA-256 (the payload hash).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length: the error branch cannot happen.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return [0; 32];
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    // AWS's Signature Version 4 test suite: its credentials, date, region and service.
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20150830T123600Z";
    const SCOPE: &str = "20150830/us-east-1/service/aws4_request";
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// A request of the suite: `host` and `x-amz-date` plus `extra` headers, signed
    /// over every header it has (sorted), with an empty body.
    fn suite_request<'a>(
        method: &'a str,
        target: &'a str,
        extra: &[(&str, &str)],
    ) -> (Request<'a>, Vec<String>) {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut headers = vec![
            ("host".to_owned(), "example.amazonaws.com".to_owned()),
            ("x-amz-date".to_owned(), DATE.to_owned()),
        ];
        headers.extend(
            extra
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), (*v).to_owned())),
        );
        let mut signed: Vec<String> = headers.iter().map(|(n, _)| n.clone()).collect();
        signed.sort();
        signed.dedup();
        let req = Request {
            method,
            path,
            query,
            headers,
            body: b"",
        };
        (req, signed)
    }

    fn suite_signature(req: &Request, signed: &[String]) -> String {
        let signed: Vec<&str> = signed.iter().map(String::as_str).collect();
        let canonical = canonical_request(req, &signed, &sha256_hex(req.body));
        let key = signing_key(SECRET, "20150830", "us-east-1", "service");
        signature(&key, &string_to_sign(DATE, SCOPE, &canonical))
    }

    #[test]
    fn signatures_match_the_aws_test_suite() {
        /// Name, method, path and query, headers besides `host` and `x-amz-date`, signature.
        type Vector<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: [Vector; 15] = [
            (
                "get-vanilla",
                "GET",
                "/",
                &[],
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "post-vanilla",
                "POST",
                "/",
                &[],
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            ),
            (
                "get-vanilla-query-order-key-case",
                "GET",
                "/?Param2=value2&Param1=value1",
                &[],
                "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
            ),
            (
                "post-vanilla-query",
                "POST",
                "/?Param1=value1",
                &[],
                "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11",
            ),
            (
                "get-header-value-trim",
                "GET",
                "/",
                &[("My-Header1", " value1"), ("My-Header2", " \"a   b   c\"")],
                "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
            ),
            (
                "get-header-value-order",
                "GET",
                "/",
                &[
                    ("My-Header1", "value4"),
                    ("My-Header1", "value1"),
                    ("My-Header1", "value3"),
                    ("My-Header1", "value2"),
                ],
                "08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01",
            ),
            (
                "get-header-key-duplicate",
                "GET",
                "/",
                &[
                    ("My-Header1", "value2"),
                    ("My-Header1", "value2"),
                    ("My-Header1", "value1"),
                ],
                "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea",
            ),
            (
                "post-header-key-case",
                "POST",
                "/",
                &[("MY-HEADER1", "value1")],
                "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c",
            ),
            (
                "post-header-value-case",
                "POST",
                "/",
                &[("My-Header1", "VALUE1")],
                "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d",
            ),
            (
                "get-unreserved",
                "GET",
                "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                &[],
                "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f",
            ),
            (
                "get-utf8",
                "GET",
                "/ሴ",
                &[],
                "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85",
            ),
            // The normalized-path cases all sign the path `/`, like get-vanilla.
            (
                "get-relative",
                "GET",
                "/example/..",
                &[],
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "get-relative-relative",
                "GET",
                "/example1/example2/../..",
                &[],
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "get-slash",
                "GET",
                "//",
                &[],
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "get-slash-dot-slash",
                "GET",
                "/./",
                &[],
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
        ];
        for (name, method, target, extra, expected) in cases {
            let (req, signed) = suite_request(method, target, extra);
            assert_eq!(suite_signature(&req, &signed), expected, "{name}");
        }
    }

    #[test]
    fn the_canonical_request_of_trimmed_headers_is_the_suites() {
        let (req, signed) = suite_request(
            "GET",
            "/",
            &[("My-Header1", " value1"), ("My-Header2", " \"a   b   c\"")],
        );
        let signed: Vec<&str> = signed.iter().map(String::as_str).collect();
        let canonical = canonical_request(&req, &signed, EMPTY_SHA256);
        assert_eq!(
            canonical,
            "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value1\nmy-header2:\"a b c\"\n\
             x-amz-date:20150830T123600Z\n\nhost;my-header1;my-header2;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            string_to_sign(DATE, SCOPE, &canonical),
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n\
             a726db9b0df21c14f559d0a978e563112acb1b9e05476f0a6a1c7d68f28605c7"
        );
    }

    /// What the SDKs send for `@connections`: a path percent-encoded once (botocore may
    /// send `@` as `%40`, an id's `=` as `%3D`), signed encoded twice.
    #[test]
    fn a_path_is_encoded_once_more_than_it_was_sent() {
        assert_eq!(
            canonical_uri("/production/@connections/abc%3D"),
            "/production/%40connections/abc%253D"
        );
        assert_eq!(
            canonical_uri("/production/%40connections/abc%3D"),
            "/production/%2540connections/abc%253D"
        );
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_uri("/a//b/./c/"), "/a/b/c/");
        assert_eq!(canonical_uri("/example space/"), "/example%20space/");
    }

    #[test]
    fn query_parameters_are_encoded_and_sorted_by_name_then_value() {
        assert_eq!(
            canonical_query("b=2&a=%7e&a=1&Param1&c=x%20y&d=%2F"),
            "Param1=&a=1&a=~&b=2&c=x%20y&d=%2F"
        );
        assert_eq!(canonical_query(""), "");
    }
}
