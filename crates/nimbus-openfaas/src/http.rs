//! The thin HTTP layer: parse, call [`Gateway`], map errors. Mounted on Nimbus's listener.

use crate::error::GatewayError;
use crate::gateway::{Caller, FunctionRequest, Gateway};
use crate::types::*;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum_extra::headers::authorization::Basic;
use axum_extra::headers::{Authorization, HeaderMapExt};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

type S = Arc<Gateway>;

/// Largest request body accepted by the gateway (function bodies and build contexts).
const MAX_BODY: usize = 50 * 1024 * 1024;

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(error = %self, "openfaas gateway error");
        }
        (
            status,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("{self}\n"),
        )
            .into_response()
    }
}

/// Every OpenFaaS route except `/metrics` (see [`metrics_router`]).
pub fn router(gw: Arc<Gateway>) -> Router {
    let system = Router::new()
        .route(
            "/system/functions",
            get(list_functions)
                .post(deploy_post)
                .put(deploy_put)
                .delete(delete_function),
        )
        .route("/system/function/{name}", get(get_function))
        .route("/system/scale-function/{name}", post(scale_function))
        .route("/system/info", get(info))
        .route("/system/namespaces", get(namespaces))
        .route(
            "/system/secrets",
            get(list_secrets)
                .post(create_secret)
                .put(update_secret)
                .delete(delete_secret),
        )
        .route("/system/logs", get(logs))
        .route_layer(axum::middleware::from_fn_with_state(gw.clone(), basic_auth));
    Router::new()
        .merge(system)
        .route("/healthz", get(healthz).head(healthz))
        .route("/function/{name}", any(invoke_root))
        .route("/function/{name}/", any(invoke_root))
        .route("/function/{name}/{*path}", any(invoke_path))
        .route("/async-function/{name}", post(async_root))
        .route("/async-function/{name}/", post(async_root))
        .route("/async-function/{name}/{*path}", post(async_path))
        .route("/build", post(build))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(gw)
}

/// `GET /metrics` with the OpenFaaS gateway metrics alone. A server that also exposes its own
/// Prometheus metrics should instead serve `own + gateway.metrics.render()` on one route (after
/// `Gateway::refresh_service_count`).
pub fn metrics_router(gw: Arc<Gateway>) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(gw)
}

async fn metrics(State(gw): State<S>) -> Response {
    gw.refresh_service_count().await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        gw.metrics.render(),
    )
        .into_response()
}

/// Whether Basic `user:pass` is the gateway's admin credential (compared in constant time).
fn is_gateway_credential(gw: &Gateway, basic: &Authorization<Basic>) -> bool {
    let (au, ap) = gw.admin_credentials();
    let user = basic.username().as_bytes().ct_eq(au.as_bytes());
    let pass = basic.password().as_bytes().ct_eq(ap.as_bytes());
    bool::from(user & pass)
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"Restricted\"")],
        "invalid credentials\n",
    )
        .into_response()
}

/// Basic auth with the gateway credential on `/system/*`. Anything else (no header, an empty
/// `Bearer ` as faas-cli sends when not logged in, a wrong password) gets 401, never 400.
async fn basic_auth(State(gw): State<S>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .typed_get::<Authorization<Basic>>()
        .is_some_and(|b| is_gateway_credential(&gw, &b));
    if ok {
        next.run(req).await
    } else {
        unauthorized()
    }
}

/// Who calls `/function` or `/async-function`: no `Authorization` (or a non-Basic one, such
/// as the empty `Bearer` faas-cli sends) is anonymous; Basic is either the gateway credential
/// or an OpenWhisk `uuid:key`, and a Basic credential that is neither is refused (401).
async fn caller(gw: &Gateway, headers: &HeaderMap) -> Result<Caller, Response> {
    let Some(basic) = headers.typed_get::<Authorization<Basic>>() else {
        return Ok(Caller::Anonymous);
    };
    if is_gateway_credential(gw, &basic) {
        return Ok(Caller::Gateway);
    }
    match gw
        .controller
        .authenticate(basic.username(), basic.password())
        .await
    {
        Ok(who) => Ok(Caller::Namespace(who)),
        Err(nimbus_controller::ControllerError::Unauthorized) => Err(unauthorized()),
        Err(e) => Err(GatewayError::from(e).into_response()),
    }
}

async fn healthz() -> &'static str {
    "OK"
}

#[derive(Deserialize)]
struct NsQuery {
    namespace: Option<String>,
}

fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, GatewayError> {
    serde_json::from_slice(body)
        .map_err(|e| GatewayError::BadRequest(format!("invalid JSON body: {e}")))
}

async fn list_functions(
    State(gw): State<S>,
    Query(q): Query<NsQuery>,
) -> Result<Response, GatewayError> {
    Ok(axum::Json(gw.list(q.namespace.as_deref()).await?).into_response())
}

async fn deploy_post(State(gw): State<S>, body: Bytes) -> Result<Response, GatewayError> {
    gw.deploy(json_body(&body)?, false).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn deploy_put(State(gw): State<S>, body: Bytes) -> Result<Response, GatewayError> {
    gw.deploy(json_body(&body)?, true).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn delete_function(State(gw): State<S>, body: Bytes) -> Result<Response, GatewayError> {
    let r: DeleteFunctionRequest = json_body(&body)?;
    if r.function_name.is_empty() {
        return Err(GatewayError::BadRequest("functionName is required".into()));
    }
    gw.delete(&r.function_name, r.namespace.as_deref()).await?;
    Ok(StatusCode::OK.into_response())
}

async fn get_function(
    State(gw): State<S>,
    Path(name): Path<String>,
    Query(q): Query<NsQuery>,
) -> Result<Response, GatewayError> {
    Ok(axum::Json(gw.get(&name, q.namespace.as_deref()).await?).into_response())
}

async fn scale_function(
    State(gw): State<S>,
    Path(name): Path<String>,
    Query(q): Query<NsQuery>,
    body: Bytes,
) -> Result<Response, GatewayError> {
    let r: ScaleServiceRequest = json_body(&body)?;
    let ns = q.namespace.or(r.namespace);
    gw.scale(&name, ns.as_deref(), r.replicas).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn info() -> Response {
    let v = env!("CARGO_PKG_VERSION");
    axum::Json(serde_json::json!({
        "provider": {"provider": "nimbus", "orchestration": "nimbus", "version": {"release": v, "sha": ""}},
        "version": {"release": v, "sha": "", "commit_message": ""},
        "arch": std::env::consts::ARCH,
    }))
    .into_response()
}

async fn namespaces(State(gw): State<S>) -> Result<Response, GatewayError> {
    Ok(axum::Json(gw.namespaces().await?).into_response())
}

async fn list_secrets(State(gw): State<S>, Query(q): Query<NsQuery>) -> Response {
    let ns = gw.openfaas_ns(&gw.nimbus_ns(q.namespace.as_deref()));
    let list: Vec<_> = gw
        .secret_names(q.namespace.as_deref())
        .into_iter()
        .map(|name| serde_json::json!({"name": name, "namespace": ns}))
        .collect();
    axum::Json(list).into_response()
}

async fn create_secret(State(gw): State<S>, body: Bytes) -> Result<Response, GatewayError> {
    gw.put_secret(json_body(&body)?, true).await?;
    Ok(StatusCode::CREATED.into_response())
}

async fn update_secret(State(gw): State<S>, body: Bytes) -> Result<Response, GatewayError> {
    gw.put_secret(json_body(&body)?, false).await?;
    Ok(StatusCode::OK.into_response())
}

async fn delete_secret(State(gw): State<S>, body: Bytes) -> Result<Response, GatewayError> {
    let s: Secret = json_body(&body)?;
    gw.delete_secret(&s.name, s.namespace.as_deref())?;
    // faas-cli `secret remove` accepts only 200/202.
    Ok(StatusCode::OK.into_response())
}

#[derive(Deserialize)]
struct LogsQuery {
    name: Option<String>,
    namespace: Option<String>,
    tail: Option<String>,
    follow: Option<String>,
    since: Option<String>,
}

async fn logs(State(gw): State<S>, Query(q): Query<LogsQuery>) -> Result<Response, GatewayError> {
    let unprocessable =
        |m: String| Ok((StatusCode::UNPROCESSABLE_ENTITY, format!("{m}\n")).into_response());
    let Some(name) = q.name.filter(|n| !n.is_empty()) else {
        return unprocessable("name is required".into());
    };
    let tail: i64 = match q.tail.as_deref() {
        None | Some("") => -1,
        Some(t) => match t.parse() {
            Ok(n) => n,
            Err(_) => return unprocessable(format!("tail '{t}' is not a number")),
        },
    };
    let follow = match q.follow.as_deref() {
        None | Some("") | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(f) => return unprocessable(format!("follow '{f}' is not a boolean")),
    };
    let since = match q.since.as_deref() {
        None | Some("") => None,
        Some(s) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) => Some(t.timestamp_millis()),
            Err(_) => return unprocessable(format!("since '{s}' is not an RFC3339 time")),
        },
    };
    let ns = q.namespace;
    let mut lines = gw.logs(&name, ns.as_deref(), since).await?;
    if tail >= 0 && lines.len() > tail as usize {
        lines.drain(..lines.len() - tail as usize);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let mut seen: std::collections::HashSet<String> = Default::default();
        let mut newest = since.unwrap_or(0);
        let send = |batch: Vec<(i64, String, crate::gateway::LogLine)>,
                    seen: &mut std::collections::HashSet<String>,
                    newest: &mut i64| {
            let mut out = Vec::new();
            let mut ids = Vec::new();
            for (start, id, l) in batch {
                *newest = (*newest).max(start);
                if seen.contains(&id) {
                    continue;
                }
                ids.push(id);
                if let Ok(mut j) = serde_json::to_vec(&l) {
                    j.push(b'\n');
                    out.push(Bytes::from(j));
                }
            }
            seen.extend(ids);
            out
        };
        // Every activation already listed counts as seen, also the ones cut by `tail`.
        let first = send(lines, &mut seen, &mut newest);
        for b in first {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        if !follow {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if tx.is_closed() {
                return;
            }
            let Ok(batch) = gw.logs(&name, ns.as_deref(), Some(newest)).await else {
                return;
            };
            for b in send(batch, &mut seen, &mut newest) {
                if tx.send(b).await.is_err() {
                    return;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<Bytes, std::io::Error>(b), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Request headers a function sees: everything but hop-by-hop headers, names in lower case.
fn function_headers(h: &HeaderMap) -> Vec<(String, String)> {
    const HOP: [&str; 7] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
    ];
    h.iter()
        .filter(|(k, _)| !HOP.contains(&k.as_str()))
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

fn function_request(
    method: &Method,
    path: String,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> FunctionRequest {
    FunctionRequest {
        method: method.as_str().to_string(),
        path,
        query: uri.query().unwrap_or_default().to_string(),
        headers: function_headers(headers),
        body: body.to_vec(),
    }
}

async fn invoke_root(
    State(gw): State<S>,
    Path(name): Path<String>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    call(gw, name, "/".into(), method, uri, headers, body).await
}

async fn invoke_path(
    State(gw): State<S>,
    Path((name, path)): Path<(String, String)>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    call(gw, name, format!("/{path}"), method, uri, headers, body).await
}

async fn call(
    gw: S,
    name: String,
    path: String,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !matches!(
        method,
        Method::GET
            | Method::POST
            | Method::PUT
            | Method::PATCH
            | Method::DELETE
            | Method::OPTIONS
            | Method::HEAD
    ) {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let given_call_id = headers
        .get("x-call-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let who = match caller(&gw, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    // Credentials used to authorise the call are not the function's to see.
    let mut headers = headers;
    if !matches!(who, Caller::Anonymous) {
        headers.remove(header::AUTHORIZATION);
    }
    let req = function_request(&method, path, &uri, &headers, body);
    match gw.invoke(&name, req, given_call_id, &who).await {
        Ok(r) => {
            let mut resp = Response::builder()
                .status(StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK));
            for (k, v) in &r.headers {
                if let (Ok(k), Ok(v)) = (
                    axum::http::HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    resp = resp.header(k, v);
                }
            }
            resp = resp
                .header("X-Call-Id", r.call_id)
                .header("X-Start-Time", start.to_string())
                .header("X-Duration-Seconds", format!("{:.6}", r.duration));
            resp.body(Body::from(r.body))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        Err(e) => e.into_response(),
    }
}

async fn async_root(
    State(gw): State<S>,
    Path(name): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    queue(gw, name, "/".into(), uri, headers, body).await
}

async fn async_path(
    State(gw): State<S>,
    Path((name, path)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    queue(gw, name, format!("/{path}"), uri, headers, body).await
}

async fn queue(
    gw: S,
    name: String,
    path: String,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let callback = headers
        .get("x-callback-url")
        .map(|v| v.to_str().map(str::to_string).unwrap_or_default());
    let who = match caller(&gw, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    // Credentials used to authorise the call are not the function's to see.
    let mut headers = headers;
    if !matches!(who, Caller::Anonymous) {
        headers.remove(header::AUTHORIZATION);
    }
    let req = function_request(&Method::POST, path, &uri, &headers, body);
    match gw.invoke_async(&name, req, callback, &who).await {
        Ok(id) => (StatusCode::ACCEPTED, [("X-Call-Id", id)]).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /build`, the OpenFaaS remote-builder contract: a tar of `context/…` plus
/// `com.openfaas.docker.config` (`{"image", …}`), signed with `X-Build-Signature:
/// sha256=<hex HMAC-SHA256(payload secret, body)>`. Answers NDJSON build results; the built
/// bundle is then deployable under that image name.
async fn build(State(gw): State<S>, headers: HeaderMap, body: Bytes) -> Response {
    let sig = headers
        .get("x-build-signature")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .and_then(|h| hex::decode(h).ok());
    let valid = sig.is_some_and(|sig| {
        Hmac::<Sha256>::new_from_slice(&gw.payload_secret)
            .map(|mut m| {
                m.update(&body);
                m.verify_slice(&sig).is_ok()
            })
            .unwrap_or(false)
    });
    if !valid {
        return (
            StatusCode::UNAUTHORIZED,
            "invalid or missing X-Build-Signature\n",
        )
            .into_response();
    }
    let (status, line) = match build_bundle(&gw, body).await {
        Ok((image, log)) => (
            StatusCode::OK,
            serde_json::json!({"log": log, "image": image, "status": "success"}),
        ),
        Err((image, log, e)) => (
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
            serde_json::json!({"log": log, "image": image, "status": "failed", "error": e.to_string()}),
        ),
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        format!("{line}\n"),
    )
        .into_response()
}

type BuildFailure = (String, Vec<String>, GatewayError);

/// Unpacks the context, reads the image name, and builds the bundle under `bundles/` (the
/// install steps through the gateway's [`crate::bundle::Builder`]).
async fn build_bundle(gw: &Gateway, body: Bytes) -> Result<(String, Vec<String>), BuildFailure> {
    let tmp = tempfile::tempdir().map_err(|e| {
        (
            String::new(),
            Vec::new(),
            GatewayError::io("temporary dir", e),
        )
    })?;
    let dir = tmp.path().to_path_buf();
    let image = tokio::task::spawn_blocking(move || -> crate::error::Result<String> {
        crate::bundle::unpack_tar(&body, &dir)?;
        let config: serde_json::Value = std::fs::read(dir.join("com.openfaas.docker.config"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Ok(config["image"].as_str().unwrap_or_default().to_string())
    })
    .await
    .map_err(|e| GatewayError::io("unpacking the build context", e))
    .and_then(|r| r)
    .map_err(|e| (String::new(), Vec::new(), e))?;
    if image.is_empty() {
        return Err((
            image,
            Vec::new(),
            GatewayError::BadRequest("com.openfaas.docker.config names no image".into()),
        ));
    }
    let out = gw
        .cfg
        .dir
        .join("bundles")
        .join(crate::bundle::image_dir_name(&image));
    let mut log = Vec::new();
    let mut progress = |m: &str| log.push(m.to_string());
    let built = crate::bundle::build_from_context(
        &tmp.path().join("context"),
        &out,
        &gw.cfg.builder,
        &mut progress,
    )
    .await;
    match built {
        Ok(lang) => {
            log.push(format!("built {image} ({lang}) as a Nimbus bundle"));
            Ok((image, log))
        }
        Err(e) => Err((image, log, e)),
    }
}
