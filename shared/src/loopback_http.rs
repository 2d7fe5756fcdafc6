//! Stand-in HTTP/1.1 peers on loopback for tests and the bench: a reader of requests (head
//! and announced body, pipelined requests kept for the next read) and a server that answers
//! every request alike. Only behind `test` and the `test-support` feature.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// One request: its head (request line and headers, up to the blank line) and its body (as
/// many bytes as `content-length` announces; none without it).
pub type Request = (String, Vec<u8>);

/// Reads the requests of one connection in turn. What arrives beyond one request (a
/// pipelined next one) is kept for the next [`RequestReader::next`].
#[derive(Debug, Default)]
pub struct RequestReader {
    seen: Vec<u8>,
}

impl RequestReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next request, `Ok(None)` once the peer closed the connection between requests
    /// or in the middle of one.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        socket: &mut R,
    ) -> std::io::Result<Option<Request>> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(request) = self.take() {
                return Ok(Some(request));
            }
            let n = socket.read(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            self.seen.extend_from_slice(&buf[..n]);
        }
    }

    /// A whole request from what was read so far, removed from it.
    fn take(&mut self) -> Option<Request> {
        let head_end = self.seen.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&self.seen[..head_end]).into_owned();
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let end = head_end + 4 + length;
        if self.seen.len() < end {
            return None;
        }
        let body = self.seen[head_end + 4..end].to_vec();
        self.seen.drain(..end);
        Some((head, body))
    }
}

/// An HTTP server on loopback answering every request with `status` (e.g. `"401
/// Unauthorized"`) and `body` (plain text), then closing the connection. Returns its base
/// URL; the server lives as long as the runtime.
pub async fn answering(status: &'static str, body: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let url = format!(
        "http://{}",
        listener.local_addr().expect("a bound listener's address")
    );
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                if !matches!(RequestReader::new().next(&mut socket).await, Ok(Some(_))) {
                    return;
                }
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pipelined_requests_are_read_one_by_one_with_their_bodies() {
        let bytes: &[u8] = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nhost: x\r\n\r\nPOST /c HTTP/1.1\r\ncontent-length: 2\r\n\r\nx";
        let mut socket = bytes;
        let mut reader = RequestReader::new();
        let mut next = async || reader.next(&mut socket).await.expect("reading a slice");
        let (head, body) = next().await.expect("the first request");
        assert!(head.starts_with("POST /a "), "{head}");
        assert_eq!(body, b"abc");
        let (head, body) = next().await.expect("the second request");
        assert!(head.starts_with("GET /b "), "{head}");
        assert!(body.is_empty());
        // The third request's body is one byte short: the connection ended inside it.
        assert!(next().await.is_none());
    }

    #[tokio::test]
    async fn the_answering_server_answers_with_its_status_and_body() {
        let url = answering("403 Forbidden", "no").await;
        let response = reqwest::Client::new()
            .post(format!("{url}/anything"))
            .body("payload")
            .send()
            .await
            .expect("an answer");
        assert_eq!(response.status().as_u16(), 403);
        assert_eq!(response.text().await.expect("a body"), "no");
    }
}
