//! The HTTP listener: an accept loop over hyper with the limits `axum::serve` does not have.
//!
//! * A header-read timeout (hyper's, which needs a timer): a client that sends its request
//!   head too slowly — or a keep-alive connection idle between requests for that long — is
//!   closed, so slow or idle connections cannot pile up.
//! * A cap on open connections, overall and per client address. A connection over a cap gets
//!   a `503` and is closed at once.
//! * Shutdown in two phases ([`Phase`]): while draining, every new request is answered `503`
//!   with `Retry-After` (the listener keeps accepting, so clients see a clear answer rather than
//!   a refused connection) and responses close their connection; once stopped, the loop stops
//!   accepting and open connections finish their current exchange.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// Limits of the listener.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Longest wait for a complete request head, and longest idle time of a keep-alive
    /// connection between requests.
    pub header_read_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
    /// Open connections per client IP at most (0: no per-client cap).
    pub max_connections_per_ip: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Duration::from_secs(15),
            max_connections: 8192,
            max_connections_per_ip: 1024,
        }
    }
}

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Serving,
    /// New requests get 503; in-flight ones finish.
    Draining,
    /// No new connections; open ones finish their current exchange.
    Stopped,
}

/// Counts connections per client address; a slot is given back when its guard drops.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut t = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = t.entry(ip).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut t = self.table.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = t.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.ip);
            }
        }
    }
}

/// How long a connection over a cap may take to send the request it is refused.
const BUSY_READ_TIMEOUT: Duration = Duration::from_secs(2);

fn busy_response() -> Response<Body> {
    let mut r = Response::new(Body::from(
        "{\"error\":\"Too many open connections; retry in a moment.\",\"code\":\"busy\"}",
    ));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Answers one request on a connection over a cap with 503 and closes it. Reading the request
/// first (for a short while) lets the client see the answer instead of a reset.
async fn refuse(stream: tokio::net::TcpStream) {
    let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
        Ok::<_, std::convert::Infallible>(busy_response())
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(BUSY_READ_TIMEOUT)
        .keep_alive(false);
    let _ = tokio::time::timeout(
        BUSY_READ_TIMEOUT * 2,
        builder.serve_connection(TokioIo::new(stream), service),
    )
    .await;
}

fn draining_response() -> Response<Body> {
    let mut r = Response::new(Body::from(
        "{\"error\":\"The server is shutting down; retry on another node or after it restarted.\",\"code\":\"shutdown\"}",
    ));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Serves `app` on `listener` until `phase` becomes [`Phase::Stopped`], then waits up to
/// `finish` for open connections to complete their current exchange.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    mut phase: watch::Receiver<Phase>,
    finish: Duration,
) {
    let conns = Arc::new(Semaphore::new(limits.max_connections));
    // Refusals are answered by short tasks of their own; past this many at once, a connection
    // over a cap is simply closed.
    let refusals = Arc::new(Semaphore::new(256));
    let per_ip = Arc::new(PerIp::default());
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = phase.wait_for(|p| *p == Phase::Stopped) => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (Ok(permit), Some(slot)) = (
            conns.clone().try_acquire_owned(),
            per_ip.take(peer.ip(), limits.max_connections_per_ip),
        ) else {
            tracing::debug!(%peer, "connection refused: over the connection cap");
            if let Ok(p) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream).await;
                    drop(p);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let phase = phase.clone();
        let timeout = limits.header_read_timeout;
        tasks.spawn(async move {
            connection(stream, peer, app, phase, timeout).await;
            drop((permit, slot));
        });
        // Reap finished connection tasks so the set does not grow without bound.
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    let _ =
        tokio::time::timeout(finish, async { while tasks.join_next().await.is_some() {} }).await;
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    mut phase: watch::Receiver<Phase>,
    header_read_timeout: Duration,
) {
    let draining = phase.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let app = app.clone();
        let serving = *draining.borrow() == Phase::Serving;
        async move {
            if !serving {
                return Ok::<_, std::convert::Infallible>(draining_response());
            }
            let mut req = req.map(Body::new);
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            app.oneshot(req).await
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            return;
        }
        // While draining, requests are answered 503 with `connection: close` (see the service),
        // so connections end by themselves.
        _ = phase.wait_for(|p| *p == Phase::Stopped) => {}
    }
    // Stopped: finish the exchange in progress, then close.
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
