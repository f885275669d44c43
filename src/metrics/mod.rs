//! The `[metrics]` HTTP server (SPEC §10): `GET /metrics`, `/healthz`, `/readyz`.
//!
//! ## Design constraints
//! - **Never in the way of a poll.** The server is one tokio task (plus one per connection)
//!   that only *reads* the [`Registry`]: atomics and short copies under `std` mutexes the core
//!   holds for one update at a time. It never calls SQLite (the core refreshes the outbox
//!   numbers into the registry) and never waits on the core.
//! - **Bounded.** At most [`MAX_CONNECTIONS`] connections are served at once; one more is
//!   accepted and closed at once (no queue behind a slow client). Every connection has a header
//!   read deadline ([`HEADER_TIMEOUT`]) and a whole-connection deadline
//!   ([`CONNECTION_TIMEOUT`]); keep-alive is off, so a connection carries one request.
//! - **Reads no request body.** Only `GET` (and `HEAD`) are served; any other method gets 405
//!   without its body being read; the connection closes after the response.
//! - HTTP/1 parsing is hyper's; nothing here parses bytes.
//!
//! Responses: `/metrics` the text exposition ([`expo`]); `/healthz` 200 `ok` while every loop
//! makes progress (the watchdog's rule, [`Registry::liveness`]), else 503 with the reasons;
//! `/readyz` 200 `{"ready":true}` or 503 `{"ready":false,"reasons":[…]}`
//! ([`Registry::readiness`]); any other path 404.

pub mod expo;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::clock::Clock;
use crate::health::Registry;

/// Connections served at once, at most; one more is accepted and closed.
pub const MAX_CONNECTIONS: usize = 16;
/// A client must have sent its request headers within this long.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this long, whatever it is doing.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum MetricsError {
    #[error("metrics.listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds `addr` (before the daemon says it is ready, so a port in use fails the start).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves until `shutdown` becomes true.
pub async fn serve(listener: TcpListener, reg: Arc<Registry>, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut refused_logged = false;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        if *shutdown.borrow() {
            return;
        }
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and the like: pause briefly instead of spinning on the error.
                tracing::debug!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            if !refused_logged {
                tracing::warn!(%peer, max = MAX_CONNECTIONS, "metrics: too many connections; closing new ones until some end");
                refused_logged = true;
            }
            drop(stream);
            continue;
        };
        refused_logged = false;
        let reg = reg.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let reg = reg.clone();
                async move { Ok::<_, Infallible>(respond(&reg, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics: connection ended"),
                Err(_) => tracing::debug!(%peer, "metrics: connection timed out"),
            }
        });
    }
}

fn response(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// The response to one request; never reads its body.
fn respond(reg: &Registry, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET\n".into(),
        );
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    let now = Instant::now();
    let now_ms = Clock::system().now_ms();
    match req.uri().path() {
        "/metrics" => response(
            StatusCode::OK,
            expo::CONTENT_TYPE,
            expo::render(reg, now, now_ms),
        ),
        "/healthz" => match reg.liveness(now) {
            Ok(()) => response(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
            Err(e) => response(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                format!("{}\n", e.0.join("\n")),
            ),
        },
        "/readyz" => match reg.readiness(now_ms) {
            Ok(()) => response(
                StatusCode::OK,
                "application/json",
                serde_json::json!({"ready": true}).to_string(),
            ),
            Err(e) => response(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                serde_json::json!({"ready": false, "reasons": e.0}).to_string(),
            ),
        },
        _ => response(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}
