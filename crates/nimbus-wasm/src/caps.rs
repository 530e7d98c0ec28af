//! Capabilities a function may be granted beyond the deny-by-default sandbox, and the outbound
//! HTTP policy that enforces its host allowlist and, when connecting, the server's egress
//! policy (`nimbus-egress`).

use crate::io::Logs;
use http_body_util::BodyExt;
use nimbus_egress::{EgressError, EgressPolicy};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

/// What one function may reach. The default grants nothing: no files, no environment, no
/// outbound HTTP. Clocks and randomness are always available.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    /// A host directory bundled with the function, visible read-only at `/` in the guest.
    pub bundled_dir: Option<PathBuf>,
    /// Environment variables, fixed for every run.
    pub env: Vec<(String, String)>,
    /// Parameters whose values become environment variables of each run (annotation
    /// `wasm-env`): a string value as is, any other JSON value as JSON text; absent ones are
    /// not set.
    pub env_params: Vec<String>,
    /// Hosts the function may call with `wasi:http/outgoing-handler`.
    pub allowed_outbound_hosts: Vec<HostPattern>,
}

/// One entry of an outbound allowlist: `example.com`, `*.example.com` (subdomains only),
/// `example.com:8080` (that port only), optionally written as a URL (`https://example.com`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Lower-case host; for a wildcard the suffix after `*.`.
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

impl HostPattern {
    pub fn parse(pattern: &str) -> Result<HostPattern, String> {
        let p = pattern.trim();
        let p = p
            .strip_prefix("https://")
            .or_else(|| p.strip_prefix("http://"))
            .unwrap_or(p);
        let p = p.trim_end_matches('/');
        let (host, port) = match p.rsplit_once(':') {
            Some((h, port)) if !h.contains(']') || h.ends_with(']') => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("invalid port in outbound host {pattern:?}"))?;
                (h, Some(port))
            }
            _ => (p, None),
        };
        let (host, wildcard) = match host.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (host, false),
        };
        if host.is_empty() || host.contains(['/', '*', ' ', '@']) {
            return Err(format!("invalid outbound host {pattern:?}"));
        }
        Ok(HostPattern {
            host: host.to_ascii_lowercase(),
            wildcard,
            port,
        })
    }

    /// Whether a request to `host:port` is allowed by this entry.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        let host_ok = if self.wildcard {
            host.strip_suffix(&self.host)
                .is_some_and(|prefix| prefix.ends_with('.') && prefix.len() > 1)
        } else {
            host == self.host
        };
        host_ok && self.port.is_none_or(|p| p == port)
    }
}

/// The `wasi:http` hooks of one activation: requests to allowlisted hosts are sent, all others
/// refused with `HTTP-request-denied`; the server's egress policy applies on top when
/// connecting (see [`send_checked`]).
pub(crate) struct OutboundHooks {
    pub(crate) caps: Arc<Capabilities>,
    pub(crate) egress: EgressPolicy,
    /// The activation's logs: a refusal by the egress policy is noted there, since the guest
    /// only gets an error code.
    pub(crate) logs: Option<Logs>,
}

type ResponseFuture = Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>;
type SendFuture = Box<
    dyn Future<Output = wasmtime_wasi_http::Result<(http::Response<WasiBody>, ResponseFuture)>>
        + Send,
>;

fn default_port(uri: &http::Uri) -> u16 {
    uri.port_u16()
        .unwrap_or(if uri.scheme() == Some(&http::uri::Scheme::HTTP) {
            80
        } else {
            443
        })
}

impl OutboundHooks {
    fn allowed(&self, uri: &http::Uri) -> bool {
        let Some(host) = uri.host() else {
            return false;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = default_port(uri);
        self.caps
            .allowed_outbound_hosts
            .iter()
            .any(|p| p.matches(host, port))
    }
}

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: ResponseFuture,
    ) -> SendFuture {
        if !self.allowed(request.uri()) {
            tracing::debug!(uri = %request.uri(), "outbound HTTP request denied");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let request = detach_unsent_body(request);
        let egress = self.egress.clone();
        let logs = self.logs.clone();
        Box::new(async move {
            let (response, io) = send_checked(&egress, logs.as_ref(), request, options).await?;
            Ok((response.map(BodyExt::boxed_unsync), io))
        })
    }
}

/// The guest's error code for an egress failure. Every connect failure reads the same
/// (`destination-unavailable`), so a closed port cannot be told from a filtered one.
fn egress_code(e: &EgressError) -> wasmtime_wasi_http::Error {
    use wasmtime_wasi_http::Error;
    match e {
        EgressError::Refused { .. } => Error::DestinationIpProhibited,
        EgressError::Resolve { .. } => Error::DnsError {
            rcode: None,
            info_code: None,
        },
        EgressError::Connect { .. } => Error::DestinationUnavailable,
        EgressError::InvalidHost(_) => Error::HttpRequestUriInvalid,
    }
}

/// Sends one request over a connection made by the egress policy: the host is resolved, every
/// address checked, and the checked address dialled; TLS verifies (and sends SNI for) the
/// host name of the URL. The default timeouts are the policy's connect timeout and 600 s for
/// the first byte and between bytes (the activation's own timeout ends it sooner).
async fn send_checked(
    egress: &EgressPolicy,
    logs: Option<&Logs>,
    mut req: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> wasmtime_wasi_http::Result<(http::Response<TimedBody>, ResponseFuture)> {
    use wasmtime_wasi_http::Error;
    let uri = req.uri().clone();
    let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = default_port(&uri);
    let tls = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let opt = |f: fn(&RequestOptions) -> Option<Duration>| options.as_ref().and_then(f);
    let connect_timeout = opt(|o| o.connect_timeout).map_or(egress.connect_timeout(), |t| {
        t.min(egress.connect_timeout())
    });
    let first_byte = opt(|o| o.first_byte_timeout).unwrap_or(Duration::from_secs(600));
    let between_bytes = opt(|o| o.between_bytes_timeout)
        .unwrap_or(Duration::from_secs(600))
        .max(Duration::from_millis(1));

    let stream = match tokio::time::timeout(connect_timeout, egress.connect_tcp(&host, port)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            if let Some(logs) = logs {
                logs.note("stderr", &format!("outbound HTTP request to {uri}: {e}"));
            }
            return Err(egress_code(&e));
        }
        Err(_) => return Err(Error::DestinationUnavailable),
    };
    let io: Box<dyn Stream> = if tls {
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|_| Error::HttpRequestUriInvalid)?;
        let tls = tokio::time::timeout(connect_timeout, tls_connector()?.connect(name, stream))
            .await
            .map_err(|_| Error::ConnectionTimeout)?
            .map_err(Error::Tls)?;
        Box::new(tls)
    } else {
        Box::new(stream)
    };
    let (mut sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::handshake(TokioIo::new(io)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;

    // The request line carries only the path: scheme and authority are for proxies.
    let path = uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    *req.uri_mut() = http::Uri::try_from(path).map_err(|_| Error::HttpRequestUriInvalid)?;

    // The connection is driven while waiting for the response head, then handed back for the
    // caller to drive while the body streams.
    let mut conn = Box::pin(conn);
    let mut conn_done = false;
    let send = tokio::time::timeout(first_byte, sender.send_request(req));
    tokio::pin!(send);
    let response = loop {
        tokio::select! {
            r = &mut send => break r.map_err(|_| Error::ConnectionReadTimeout)??,
            c = &mut conn, if !conn_done => {
                conn_done = true;
                c?;
            }
        }
    };
    let response = response.map(|incoming| TimedBody {
        incoming,
        idle: between_bytes,
        timer: Box::pin(tokio::time::sleep(between_bytes)),
    });
    let io: ResponseFuture = Box::new(async move {
        if !conn_done {
            conn.await.map_err(|e| {
                if e.is_timeout() {
                    Error::HttpResponseTimeout
                } else {
                    Error::from(e)
                }
            })?;
        }
        Ok(())
    });
    Ok((response, io))
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// TLS with the Mozilla roots (webpki-roots), as wasmtime's default sender.
fn tls_connector() -> wasmtime_wasi_http::Result<tokio_rustls::TlsConnector> {
    static CONFIG: OnceLock<Option<Arc<rustls::ClientConfig>>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        match rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
        {
            Ok(b) => Some(Arc::new(
                b.with_root_certificates(roots).with_no_client_auth(),
            )),
            Err(e) => {
                tracing::error!(error = %e, "no TLS client configuration for outbound HTTPS");
                None
            }
        }
    });
    config
        .clone()
        .map(tokio_rustls::TlsConnector::from)
        .ok_or(wasmtime_wasi_http::Error::ConfigurationError)
}

/// A response body that fails when no frame arrives within `idle`.
pub(crate) struct TimedBody {
    incoming: hyper::body::Incoming,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for TimedBody {
    type Data = bytes::Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let deadline = tokio::time::Instant::now() + self.idle;
                self.timer.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(if e.is_timeout() {
                wasmtime_wasi_http::Error::HttpResponseTimeout
            } else {
                e.into()
            }))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Some(Err(wasmtime_wasi_http::Error::ConnectionReadTimeout)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.incoming.size_hint()
    }
}

/// A GET or HEAD without a length sends no body: hyper drops the request's body as soon as the
/// head is written. The guest may still be finishing that (empty) body, and its write then finds
/// the stream closed — wstd reports "connection reset" on a request that actually succeeded
/// (more often the busier the machine). Such a body is therefore taken off the request and
/// drained on its own until the guest finishes it; what goes on the wire is unchanged.
fn detach_unsent_body(request: http::Request<WasiBody>) -> http::Request<WasiBody> {
    let (parts, body) = request.into_parts();
    let unsent = matches!(parts.method, http::Method::GET | http::Method::HEAD)
        && !parts.headers.contains_key(http::header::CONTENT_LENGTH)
        && !parts.headers.contains_key(http::header::TRANSFER_ENCODING);
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return http::Request::from_parts(parts, body);
    };
    if !unsent {
        return http::Request::from_parts(parts, body);
    }
    rt.spawn(async move {
        let mut body = body;
        while let Some(Ok(_)) = body.frame().await {}
    });
    let empty = http_body_util::Empty::<bytes::Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync();
    http::Request::from_parts(parts, empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn host_patterns() {
        assert!(p("example.com").matches("EXAMPLE.com", 443));
        assert!(!p("example.com").matches("api.example.com", 443));
        assert!(p("*.example.com").matches("api.example.com", 80));
        assert!(!p("*.example.com").matches("example.com", 80));
        assert!(!p("*.example.com").matches("badexample.com", 80));
        assert!(p("https://127.0.0.1:8080/").matches("127.0.0.1", 8080));
        assert!(!p("127.0.0.1:8080").matches("127.0.0.1", 8081));
        assert!(HostPattern::parse("*").is_err());
        assert!(HostPattern::parse("a.com:http").is_err());
    }
}
