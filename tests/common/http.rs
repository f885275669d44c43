//! A bare HTTP/1.1 client for the daemon's `[metrics]` server: one request per connection,
//! `Connection: close`, read to the end. Deliberately not a client library: the tests check
//! the server's framing as a scraper sees it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP response: status code, headers (lowercase names), body.
pub struct Http {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// `METHOD path` over a fresh TCP connection, read to its end (the server closes it), within
/// 5 s; panics when the server closed it without an answer.
pub async fn request(addr: SocketAddr, method: &str, path: &str) -> Http {
    try_request(addr, method, path)
        .await
        .unwrap_or_else(|| panic!("{method} {path}: connection closed without a response"))
}

/// Like [`request`]; `None` when the server closed the connection without an answer (it does
/// that to connections over its bound).
pub async fn try_request(addr: SocketAddr, method: &str, path: &str) -> Option<Http> {
    tokio::time::timeout(Duration::from_secs(5), async {
        // Refused: not listening (yet).
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("send request");
        let mut raw = Vec::new();
        if s.read_to_end(&mut raw).await.is_err() || raw.is_empty() {
            return None;
        }
        let text = String::from_utf8(raw).expect("utf-8 response");
        let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .expect("status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Some(Http {
            status,
            headers,
            body: body.to_string(),
        })
    })
    .await
    .unwrap_or_else(|_| panic!("{method} {path}: no response within 5 s"))
}

/// `GET path` ([`request`]).
pub async fn get(addr: SocketAddr, path: &str) -> Http {
    request(addr, "GET", path).await
}
