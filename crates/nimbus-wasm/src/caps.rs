//! Capabilities a function may be granted beyond the deny-by-default sandbox, and the outbound
//! HTTP policy that enforces its host allowlist.

use http_body_util::BodyExt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
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
/// refused with `HTTP-request-denied`.
pub(crate) struct OutboundHooks {
    pub(crate) caps: Arc<Capabilities>,
}

type ResponseFuture = Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>;
type SendFuture = Box<
    dyn Future<Output = wasmtime_wasi_http::Result<(http::Response<WasiBody>, ResponseFuture)>>
        + Send,
>;

impl OutboundHooks {
    fn allowed(&self, uri: &http::Uri) -> bool {
        let Some(host) = uri.host() else {
            return false;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme() == Some(&http::uri::Scheme::HTTP) {
                80
            } else {
                443
            });
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
        Box::new(async move {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as ResponseFuture,
            ))
        })
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
