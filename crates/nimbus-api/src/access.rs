//! The authentication rule of every route, in one table, and a layer that refuses any request
//! whose route is not in it.
//!
//! The handlers enforce their rule (the `Ctx` extractor, the gateway's credential check, the
//! webhook secret, …); this table is the inventory that docs/security.md publishes and the
//! tests walk. A route added without an entry answers 500 "no access rule" instead of being
//! silently open, so it cannot ship unnoticed.

use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Anyone: server description, health, the console's static files.
    Public,
    /// A credential of the namespace in the path (`_` = the caller's own), or of a namespace
    /// the resource is shared with (`publish: true` packages, read-only).
    NamespaceKey,
    /// Web actions: only actions annotated `web-export: true` are reachable; with
    /// `require-whisk-auth` the owner's secret (or a namespace key) is required.
    WebAction,
    /// OpenFaaS function calls: the gateway credential, a credential of the function's
    /// namespace, or no credential for functions their owner made public (deployed through
    /// the gateway, or annotated `openfaas-public: true`); anything else reads as "not found".
    FunctionCall,
    /// The OpenFaaS gateway's admin credential (Basic).
    GatewayAdmin,
    /// The OpenFaaS remote builder: an HMAC-SHA256 signature of the body with the payload
    /// secret (`X-Build-Signature`).
    BuildSignature,
    /// The webhook's own secret (HMAC signature or token), set when its feed was created.
    WebhookSecret,
    /// `Authorization: Bearer` with `--metrics-token`; open without a token only while the
    /// server listens on loopback.
    MetricsToken,
}

impl Rule {
    /// The text docs/security.md uses for the rule.
    pub fn describe(self) -> &'static str {
        match self {
            Rule::Public => "public",
            Rule::NamespaceKey => "namespace key",
            Rule::WebAction => "web-export (+ require-whisk-auth)",
            Rule::FunctionCall => "gateway or namespace key; public functions anonymous",
            Rule::GatewayAdmin => "gateway credential",
            Rule::BuildSignature => "build payload signature",
            Rule::WebhookSecret => "webhook secret",
            Rule::MetricsToken => "metrics token (or loopback)",
        }
    }
}

/// Every route of both API faces (axum path syntax) and its rule.
pub const ROUTES: &[(&str, Rule)] = &[
    // Server description and health.
    ("/", Rule::Public),
    ("/ping", Rule::Public),
    ("/api/v1", Rule::Public),
    ("/api/v1/", Rule::Public),
    ("/healthz", Rule::Public),
    ("/console/{file}", Rule::Public),
    ("/metrics", Rule::MetricsToken),
    // OpenWhisk API.
    ("/api/v1/namespaces", Rule::NamespaceKey),
    ("/api/v1/namespaces/{ns}/limits", Rule::NamespaceKey),
    ("/api/v1/namespaces/{ns}/actions", Rule::NamespaceKey),
    ("/api/v1/namespaces/{ns}/actions/", Rule::NamespaceKey),
    (
        "/api/v1/namespaces/{ns}/actions/{*path}",
        Rule::NamespaceKey,
    ),
    ("/api/v1/namespaces/{ns}/packages", Rule::NamespaceKey),
    (
        "/api/v1/namespaces/{ns}/packages/{name}",
        Rule::NamespaceKey,
    ),
    ("/api/v1/namespaces/{ns}/triggers", Rule::NamespaceKey),
    (
        "/api/v1/namespaces/{ns}/triggers/{name}",
        Rule::NamespaceKey,
    ),
    ("/api/v1/namespaces/{ns}/rules", Rule::NamespaceKey),
    ("/api/v1/namespaces/{ns}/rules/{name}", Rule::NamespaceKey),
    ("/api/v1/namespaces/{ns}/activations", Rule::NamespaceKey),
    (
        "/api/v1/namespaces/{ns}/activations/{id}",
        Rule::NamespaceKey,
    ),
    (
        "/api/v1/namespaces/{ns}/activations/{id}/result",
        Rule::NamespaceKey,
    ),
    (
        "/api/v1/namespaces/{ns}/activations/{id}/logs",
        Rule::NamespaceKey,
    ),
    // Nimbus extensions of the OpenWhisk API (console, dead letters, instances).
    ("/api/v1/namespaces/{ns}/instances", Rule::NamespaceKey),
    ("/api/v1/namespaces/{ns}/deadletters", Rule::NamespaceKey),
    (
        "/api/v1/namespaces/{ns}/deadletters/{id}",
        Rule::NamespaceKey,
    ),
    (
        "/api/v1/namespaces/{ns}/deadletters/{id}/redrive",
        Rule::NamespaceKey,
    ),
    ("/api/v1/namespaces/{ns}/usage", Rule::NamespaceKey),
    ("/api/v1/namespaces/{ns}/series", Rule::NamespaceKey),
    ("/api/v1/namespaces/{ns}/logs/stream", Rule::NamespaceKey),
    // Code reachable from outside.
    ("/api/v1/web/{ns}/{*rest}", Rule::WebAction),
    ("/api/v1/webhooks/{id}", Rule::WebhookSecret),
    // OpenFaaS gateway API.
    ("/function/{name}", Rule::FunctionCall),
    ("/function/{name}/", Rule::FunctionCall),
    ("/function/{name}/{*path}", Rule::FunctionCall),
    ("/async-function/{name}", Rule::FunctionCall),
    ("/async-function/{name}/", Rule::FunctionCall),
    ("/async-function/{name}/{*path}", Rule::FunctionCall),
    ("/system/functions", Rule::GatewayAdmin),
    ("/system/function/{name}", Rule::GatewayAdmin),
    ("/system/scale-function/{name}", Rule::GatewayAdmin),
    ("/system/info", Rule::GatewayAdmin),
    ("/system/namespaces", Rule::GatewayAdmin),
    ("/system/secrets", Rule::GatewayAdmin),
    ("/system/logs", Rule::GatewayAdmin),
    ("/build", Rule::BuildSignature),
];

/// The rule of a matched route, if it has one.
pub fn rule_of(matched: &str) -> Option<Rule> {
    ROUTES.iter().find(|(p, _)| *p == matched).map(|(_, r)| *r)
}

/// Refuses requests to routes missing from [`ROUTES`] (fail closed). Apply it with
/// `Router::layer` on the complete router so it runs after route matching.
pub async fn require_rule(req: Request, next: Next) -> Response {
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    match matched {
        Some(p) if rule_of(&p).is_none() => {
            tracing::error!(route = %p, "route has no access rule; refusing it");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "this route has no access rule; it is refused until one is declared\n",
            )
                .into_response()
        }
        _ => next.run(req).await,
    }
}
