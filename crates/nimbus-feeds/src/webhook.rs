//! `/whisk.system/webhook`: a per-trigger HTTP endpoint, `POST /api/v1/webhooks/{id}`.
//!
//! CREATE generates the endpoint id and (unless given, ≥ 16 characters) a secret; both are in
//! the CREATE/READ answer. `verify` chooses how requests prove they know the secret:
//! * `hmac` (default): `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>` (GitHub);
//! * `token`: `Authorization: Bearer <secret>` or `X-Webhook-Token: <secret>`.
//!
//! Missing proof is 401, a wrong one 403. The fired event is a CloudEvent in JSON form:
//! a structured-mode request (`Content-Type: application/cloudevents+json`) is taken as is; a
//! binary-mode request (`ce-*` headers) gives the attributes and the body becomes `data`; any
//! other request becomes `data` of an event with a generated id (GitHub's `X-GitHub-Delivery`
//! and `X-GitHub-Event` become `id` and `type` `com.github.<event>`). This module is free of HTTP
//! types: the API layer passes lower-cased header names and the body.

use crate::SYSTEM_NAMESPACE;
use crate::error::{FeedResult, invalid};
use crate::event::{CloudEvent, SPEC_VERSION, parse_body, rfc3339};
use crate::fire::{Fired, Firer};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
use sha2::Sha256;

pub const ROUTE_PREFIX: &str = "/api/v1/webhooks/";

/// Largest accepted body (the platform's payload limit).
const MAX_BODY: usize = 1024 * 1024;

/// One request to a webhook endpoint.
#[derive(Debug, Clone, Default)]
pub struct HookRequest {
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HookRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How the API layer answers.
#[derive(Debug, Clone, PartialEq)]
pub enum HookOutcome {
    /// 202 with this body.
    Accepted(Value),
    NotFound,
    /// 401: no signature or token.
    Unauthorized(String),
    /// 403: a wrong signature or token.
    Forbidden(String),
    /// 400: not a valid CloudEvent.
    BadRequest(String),
    TooLarge(String),
    /// 503.
    Unavailable(String),
}

pub(crate) fn configure(
    mut params: Map<String, Value>,
    existing: Option<&Value>,
) -> FeedResult<Value> {
    let verify = match params.get("verify").and_then(Value::as_str) {
        None => "hmac",
        Some("hmac") => "hmac",
        Some("token") => "token",
        Some(o) => {
            return Err(invalid(format!(
                "'verify' must be hmac or token, not '{o}'."
            )));
        }
    };
    params.insert("verify".into(), json!(verify));
    match params.get("secret") {
        Some(Value::String(s)) if s.len() >= 16 => {}
        Some(_) => {
            return Err(invalid(
                "'secret' must be a string of at least 16 characters.",
            ));
        }
        None => {
            let kept = existing.and_then(|e| e.get("secret")).cloned();
            let secret = kept.unwrap_or_else(|| {
                let bytes: [u8; 32] = rand::random();
                json!(hex::encode(bytes))
            });
            params.insert("secret".into(), secret);
        }
    }
    let id = existing
        .and_then(|e| e.get("id"))
        .cloned()
        .unwrap_or_else(|| json!(uuid::Uuid::new_v4().simple().to_string()));
    params.insert("id".into(), id);
    Ok(Value::Object(params))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn verify(cfg: &Value, req: &HookRequest) -> Result<(), HookOutcome> {
    let secret = cfg
        .get("secret")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if secret.is_empty() {
        return Err(HookOutcome::Unavailable("the webhook has no secret".into()));
    }
    if cfg.get("verify").and_then(Value::as_str) == Some("token") {
        let given = req
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| req.header("x-webhook-token"))
            .ok_or_else(|| {
                HookOutcome::Unauthorized(
                    "Missing token: send 'Authorization: Bearer <secret>' or 'X-Webhook-Token'."
                        .into(),
                )
            })?;
        if !constant_time_eq(given.trim().as_bytes(), secret.as_bytes()) {
            return Err(HookOutcome::Forbidden("The token does not match.".into()));
        }
        return Ok(());
    }
    let sig = req.header("x-hub-signature-256").ok_or_else(|| {
        HookOutcome::Unauthorized(
            "Missing signature: send 'X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>'."
                .into(),
        )
    })?;
    let hex_sig = sig.trim().strip_prefix("sha256=").ok_or_else(|| {
        HookOutcome::Forbidden("The signature must look like sha256=<hex>.".into())
    })?;
    let raw = hex::decode(hex_sig)
        .map_err(|_| HookOutcome::Forbidden("The signature is not hexadecimal.".into()))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|_| HookOutcome::Unavailable("invalid secret".into()))?;
    mac.update(&req.body);
    mac.verify_slice(&raw)
        .map_err(|_| HookOutcome::Forbidden("The signature does not match the body.".into()))
}

/// The body as CloudEvents `data`: JSON when it parses, else text, else `data_base64`.
fn data_of(body: &[u8], m: &mut Map<String, Value>) {
    if body.is_empty() {
        return;
    }
    match parse_body(body) {
        Some(v) => {
            m.insert("data".into(), v);
        }
        None => {
            m.insert(
                "data_base64".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(body)),
            );
        }
    }
}

fn check_time(m: &Map<String, Value>) -> Result<(), HookOutcome> {
    match m.get("time") {
        None => Ok(()),
        Some(Value::String(t)) if chrono::DateTime::parse_from_rfc3339(t).is_ok() => Ok(()),
        Some(_) => Err(HookOutcome::BadRequest(
            "CloudEvents 'time' must be an RFC 3339 timestamp.".into(),
        )),
    }
}

fn check_required(m: &Map<String, Value>, mode: &str) -> Result<(), HookOutcome> {
    if m.get("specversion").and_then(Value::as_str) != Some(SPEC_VERSION) {
        return Err(HookOutcome::BadRequest(format!(
            "Only CloudEvents specversion 1.0 is accepted ({mode} mode)."
        )));
    }
    for k in ["id", "source", "type"] {
        match m.get(k) {
            Some(Value::String(s)) if !s.is_empty() => {}
            _ => {
                return Err(HookOutcome::BadRequest(format!(
                    "A CloudEvent needs a non-empty '{k}' ({mode} mode)."
                )));
            }
        }
    }
    check_time(m)
}

/// Turns the request into the event to fire.
fn to_event(firer: &Firer, req: &HookRequest) -> Result<Map<String, Value>, HookOutcome> {
    let content_type = req
        .header("content-type")
        .unwrap_or_default()
        .to_ascii_lowercase();
    if content_type.starts_with("application/cloudevents+json") {
        let mut m = match serde_json::from_slice::<Value>(&req.body) {
            Ok(Value::Object(o)) => o,
            _ => {
                return Err(HookOutcome::BadRequest(
                    "A structured-mode CloudEvent must be a JSON object.".into(),
                ));
            }
        };
        check_required(&m, "structured")?;
        if !m.contains_key("time") {
            m.insert("time".into(), json!(rfc3339(chrono::Utc::now())));
        }
        return Ok(m);
    }
    if req.header("ce-specversion").is_some() {
        let mut m = Map::new();
        for (k, v) in &req.headers {
            if let Some(attr) = k.strip_prefix("ce-")
                && !attr.is_empty()
            {
                m.insert(attr.to_string(), json!(v));
            }
        }
        if !content_type.is_empty() {
            m.insert("datacontenttype".into(), json!(content_type));
        }
        check_required(&m, "binary")?;
        if !m.contains_key("time") {
            m.insert("time".into(), json!(rfc3339(chrono::Utc::now())));
        }
        data_of(&req.body, &mut m);
        return Ok(m);
    }
    let reg = firer.registration();
    let (id, ty) = match (
        req.header("x-github-delivery"),
        req.header("x-github-event"),
    ) {
        (d, Some(e)) => (
            d.map(str::to_string).unwrap_or_else(CloudEvent::random_id),
            format!("com.github.{e}"),
        ),
        (Some(d), None) => (d.to_string(), "nimbus.webhook.request".into()),
        (None, None) => (CloudEvent::random_id(), "nimbus.webhook.request".into()),
    };
    let mut m = Map::new();
    if !content_type.is_empty() {
        m.insert("datacontenttype".into(), json!(content_type));
    }
    data_of(&req.body, &mut m);
    Ok(CloudEvent::new(
        id,
        format!(
            "/{SYSTEM_NAMESPACE}/webhook/{}/{}",
            reg.namespace, reg.trigger
        ),
        ty,
    )
    .stamp(m))
}

pub(crate) async fn handle(firer: Firer, req: HookRequest) -> HookOutcome {
    if req.body.len() > MAX_BODY {
        return HookOutcome::TooLarge(format!(
            "The body is {} bytes, over the limit of {MAX_BODY} bytes.",
            req.body.len()
        ));
    }
    if let Err(o) = verify(&firer.registration().config, &req) {
        return o;
    }
    let ev = match to_event(&firer, &req) {
        Ok(e) => e,
        Err(o) => return o,
    };
    let id = ev.get("id").cloned().unwrap_or(Value::Null);
    match firer.fire(ev).await {
        Fired::Accepted(a) => {
            HookOutcome::Accepted(json!({"id": id, "activationId": a.map(|a| a.to_string())}))
        }
        Fired::DeadLettered => HookOutcome::Accepted(json!({"id": id, "deadLettered": true})),
        Fired::Gone => {
            firer.inner().retire(firer.registration()).await;
            HookOutcome::NotFound
        }
    }
}

/// `sha256=<hex>` for `body` (what a sender puts in `X-Hub-Signature-256`).
pub fn sign(secret: &str, body: &[u8]) -> String {
    match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(body);
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        }
        Err(_) => String::new(),
    }
}
