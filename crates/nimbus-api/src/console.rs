//! The web console's routes: its embedded assets, `/metrics`, and the JSON/SSE endpoints it
//! reads (usage, recent series, live log tail). Handlers parse, call the controller, and format.

use crate::AppState;
use crate::context::Ctx;
use crate::error::ApiError;
use crate::parse::Query;
use axum::Json;
use axum::Router;
use axum::extract::{Path, Query as Q, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use nimbus_metrics::MetricsSource;
use nimbus_model::{Activation, now_millis};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// What `nimbus serve` configures for the console and `/metrics`.
#[derive(Clone, Default)]
pub struct ConsoleOptions {
    /// Extra Prometheus text appended to `/metrics` (e.g. a gateway's own metrics).
    pub metrics_sources: Vec<Arc<dyn MetricsSource>>,
    /// `Authorization: Bearer <token>` opens `/metrics` when set.
    pub metrics_token: Option<String>,
    /// `/metrics` needs no token (the server listens on loopback only).
    pub metrics_open: bool,
}

type ApiResult = Result<Response, ApiError>;

pub fn routes() -> Router<AppState> {
    let ns = "/api/v1/namespaces/{ns}";
    Router::new()
        .route("/console/{file}", get(asset))
        .route("/metrics", get(metrics))
        .route(&format!("{ns}/usage"), get(usage))
        .route(&format!("{ns}/series"), get(series))
        .route(&format!("{ns}/logs/stream"), get(log_stream))
}

// ----- assets -----

const INDEX: &str = include_str!("../console/index.html");
const APP_JS: &str = include_str!("../console/app.js");
const CHARTS_JS: &str = include_str!("../console/charts.js");
const STYLE: &str = include_str!("../console/style.css");
const ICON: &str = include_str!("../console/icon.svg");

/// Only same-origin resources: the console makes no external request.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

fn page(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `GET /` for browsers (`Accept: text/html`); API clients keep getting the JSON description.
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

pub fn index() -> Response {
    page(INDEX, "text/html; charset=utf-8")
}

async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => page(APP_JS, "text/javascript; charset=utf-8"),
        "charts.js" => page(CHARTS_JS, "text/javascript; charset=utf-8"),
        "style.css" => page(STYLE, "text/css; charset=utf-8"),
        "icon.svg" => page(ICON, "image/svg+xml"),
        _ => (StatusCode::NOT_FOUND, "no such console file").into_response(),
    }
}

// ----- /metrics -----

async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let o = &s.console;
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let allowed = match (&o.metrics_token, bearer) {
        (Some(t), Some(b)) => constant_time_eq(t.as_bytes(), b.trim().as_bytes()),
        (Some(_), None) => o.metrics_open,
        (None, _) => o.metrics_open,
    };
    if !allowed {
        let msg = if o.metrics_token.is_some() {
            "/metrics requires 'Authorization: Bearer <token>' with the --metrics-token of the server"
        } else {
            "/metrics is closed: the server listens beyond loopback; start it with --metrics-token"
        };
        return (StatusCode::UNAUTHORIZED, msg).into_response();
    }
    let mut out = String::with_capacity(16 * 1024);
    s.controller.render_metrics(&mut out).await;
    for src in &o.metrics_sources {
        src.render(&mut out);
    }
    let mut r = out.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ----- usage -----

fn epoch(q: &Query, name: &str, tid: &str) -> Result<Option<i64>, ApiError> {
    match q.get(name).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
            ApiError::bad_request(
                format!("Parameter '{name}' is not a valid value for epoch milliseconds: '{v}'."),
                tid,
            )
        }),
    }
}

/// GB-seconds from MB·ms: 1 GB = 1024 MB, 1 s = 1000 ms.
pub fn gb_seconds(mb_ms: u64) -> f64 {
    mb_ms as f64 / 1_024_000.0
}

/// `YYYY-MM-DD` of a day number since the epoch (proleptic Gregorian, UTC).
fn civil(days: i64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

async fn usage(
    State(s): State<AppState>,
    ctx: Ctx,
    Path(ns): Path<String>,
    Q(q): Q<Query>,
) -> ApiResult {
    let tid = &ctx.tid;
    let since = epoch(&q, "since", tid)?;
    let upto = epoch(&q, "upto", tid)?;
    if let (Some(a), Some(b)) = (since, upto)
        && a > b
    {
        return Err(ApiError::bad_request(
            format!("'since' ({a}) is after 'upto' ({b})."),
            tid,
        ));
    }
    let u = s
        .controller
        .usage(&ctx.who, &ns, since, upto)
        .await
        .map_err(|e| ApiError::from_controller(e, tid))?;
    let functions: Vec<Value> = u
        .functions
        .iter()
        .map(|f| {
            json!({
                "name": f.name,
                "kind": f.kind,
                "invocations": f.invocations,
                "errors": f.errors,
                "durationMs": f.duration_ms,
                "mbMs": f.mb_ms,
                "gbSeconds": gb_seconds(f.mb_ms),
            })
        })
        .collect();
    let days: Vec<Value> = u
        .days
        .iter()
        .map(|d| {
            json!({
                "day": civil(d.day),
                "start": d.day * 86_400_000,
                "invocations": d.invocations,
                "errors": d.errors,
                "durationMs": d.duration_ms,
                "mbMs": d.mb_ms,
                "gbSeconds": gb_seconds(d.mb_ms),
            })
        })
        .collect();
    let (inv, err, dur, mb_ms) = u.functions.iter().fold((0, 0, 0, 0), |a, f| {
        (
            a.0 + f.invocations,
            a.1 + f.errors,
            a.2 + f.duration_ms,
            a.3 + f.mb_ms,
        )
    });
    Ok(Json(json!({
        "namespace": ctx.who.namespace,
        "since": since,
        "upto": upto,
        "functions": functions,
        "days": days,
        "total": {
            "invocations": inv,
            "errors": err,
            "durationMs": dur,
            "mbMs": mb_ms,
            "gbSeconds": gb_seconds(mb_ms),
        },
    }))
    .into_response())
}

// ----- recent series -----

async fn series(
    State(s): State<AppState>,
    ctx: Ctx,
    Path(ns): Path<String>,
    Q(q): Q<Query>,
) -> ApiResult {
    let name = q.get("name").filter(|n| !n.is_empty()).map(String::as_str);
    let list = s
        .controller
        .series(&ctx.who, &ns, name)
        .map_err(|e| ApiError::from_controller(e, &ctx.tid))?;
    Ok(Json(json!({
        "bucketMs": s.controller.metrics().series().bucket_ms(),
        "now": now_millis(),
        "functions": list,
    }))
    .into_response())
}

// ----- live log tail -----

/// One finished activation as the tail sends it.
fn tail_event(a: &Activation) -> Value {
    json!({
        "activationId": a.activation_id,
        "name": nimbus_controller::function_of(a),
        "start": a.start,
        "duration": a.duration,
        "statusCode": a.response.status_code,
        "status": a.response.status,
        "cold": a.annotations.get("start").and_then(|v| v.as_str()) == Some("cold"),
        "requestId": a.annotations.get("requestId"),
        "logs": a.logs,
    })
}

/// `GET /namespaces/{ns}/logs/stream[?name=fn]`: server-sent events, one `activation` event per
/// finished activation of the namespace (of the function named), with its log lines. A `ready`
/// event says the subscription is live; `lagged` says how many records a slow reader missed.
async fn log_stream(
    State(s): State<AppState>,
    ctx: Ctx,
    Path(ns): Path<String>,
    Q(q): Q<Query>,
) -> ApiResult {
    s.controller
        .ensure_namespace(&ctx.who, &ns)
        .map_err(|e| ApiError::from_controller(e, &ctx.tid))?;
    let rx = s.controller.subscribe_activations();
    let namespace = ctx.who.namespace.clone();
    let name = q.get("name").filter(|n| !n.is_empty()).cloned();
    struct St {
        rx: broadcast::Receiver<Arc<Activation>>,
        ready: bool,
    }
    let stream = futures_util::stream::unfold(St { rx, ready: false }, move |mut st| {
        let namespace = namespace.clone();
        let name = name.clone();
        async move {
            if !st.ready {
                st.ready = true;
                let ev = Event::default().event("ready").data("{}");
                return Some((Ok::<Event, Infallible>(ev), st));
            }
            loop {
                match st.rx.recv().await {
                    Ok(a) => {
                        if a.namespace != namespace {
                            continue;
                        }
                        if let Some(n) = &name
                            && nimbus_controller::function_of(&a) != *n
                            && a.name != *n
                        {
                            continue;
                        }
                        let ev = Event::default()
                            .event("activation")
                            .id(a.activation_id.to_string())
                            .data(tail_event(&a).to_string());
                        return Some((Ok(ev), st));
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let ev = Event::default().event("lagged").data(n.to_string());
                        return Some((Ok(ev), st));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_and_gb_seconds() {
        assert_eq!(civil(0), "1970-01-01");
        assert_eq!(civil(20_779), "2026-11-22");
        assert_eq!(civil(-1), "1969-12-31");
        // 512 MB for 500 ms = 0.25 GB-s.
        assert!((gb_seconds(512 * 500) - 0.25).abs() < 1e-12);
    }
}
