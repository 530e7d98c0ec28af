//! HTTP requests under the policy (reqwest). hyper-util's connector skips the DNS resolver for
//! IP-literal hosts, so a resolver alone cannot enforce anything: [`EgressPolicy::http_client`]
//! checks the URL's host itself (literal or resolved) and returns a client pinned to the
//! checked addresses, with no redirects and no proxy from the environment.

use crate::policy::{EgressError, EgressPolicy};
use std::net::SocketAddr;
use std::time::Duration;

impl EgressPolicy {
    /// A client for requests to `url` only: its host is resolved and checked now, and the
    /// client connects to those addresses (no second resolution, so no DNS rebinding).
    /// Redirects are not followed and `HTTP(S)_PROXY` is ignored; `timeout` bounds each request.
    pub async fn http_client(
        &self,
        url: &reqwest::Url,
        timeout: Duration,
    ) -> Result<reqwest::Client, EgressError> {
        let host = url
            .host_str()
            .ok_or_else(|| EgressError::InvalidHost(url.to_string()))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| EgressError::InvalidHost(url.to_string()))?;
        let addrs = self.resolve(host, port).await?;
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.connect_timeout())
            .timeout(timeout)
            // Names other than `host` (there should be none) go through the policy too.
            .dns_resolver(std::sync::Arc::new(PolicyResolver(self.clone())));
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok();
        if !literal {
            b = b.resolve_to_addrs(host, &addrs);
        }
        b.build().map_err(|e| EgressError::Connect {
            target: crate::policy::host_port(host, port),
            detail: e.to_string(),
        })
    }
}

/// A reqwest resolver that drops every address the policy refuses on every port (reqwest does
/// not tell a resolver the port). A fallback only: [`EgressPolicy::http_client`] pins the
/// checked addresses of the URL's host.
#[derive(Debug, Clone)]
pub struct PolicyResolver(pub EgressPolicy);

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            // Port 0: only entries without a port open an address here.
            let addrs: Vec<SocketAddr> = policy
                .resolve(&host, 0)
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}
