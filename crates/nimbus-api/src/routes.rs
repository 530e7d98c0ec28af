//! The OpenWhisk v1 REST routes.
//!
//! The four entity collections share one handler per operation (list, get, put, delete), with
//! the collection's [`EntityKind`] bound where the route is declared; only the POSTs differ
//! (invoke an action, fire a trigger, switch a rule).

use crate::AppState;
use crate::context::Ctx;
use crate::error::ApiError;
use crate::parse::{self, Query};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query as Q, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use nimbus_controller::{ActivationListQuery, ControllerError, InvokeRequest, InvokeResponse};
use nimbus_model::{Activation, EntityKind, EntityPath, FullyQualifiedName, ResponseStatus};
use serde_json::{Value, json};
use std::time::Duration;

type ApiResult = Result<Response, ApiError>;

pub fn routes() -> Router<AppState> {
    use EntityKind::{Action, Package, Rule, Trigger};
    let ns = "/api/v1/namespaces/{ns}";
    Router::new()
        .route("/api/v1/namespaces", get(list_namespaces))
        .route("/api/v1/namespaces/{ns}/limits", get(limits))
        .route(&format!("{ns}/actions"), collection(Action))
        .route(&format!("{ns}/actions/"), collection(Action))
        .route(
            &format!("{ns}/actions/{{*path}}"),
            item(Action).post(invoke_action),
        )
        .route(&format!("{ns}/packages"), collection(Package))
        .route(&format!("{ns}/packages/{{name}}"), item(Package))
        .route(&format!("{ns}/triggers"), collection(Trigger))
        .route(
            &format!("{ns}/triggers/{{name}}"),
            item(Trigger).post(fire_trigger),
        )
        .route(&format!("{ns}/rules"), collection(Rule))
        .route(
            &format!("{ns}/rules/{{name}}"),
            item(Rule).post(set_rule_status),
        )
        .route(&format!("{ns}/instances"), get(list_instances))
        .route(&format!("{ns}/activations"), get(list_activations))
        .route(
            &format!("{ns}/activations/{{id}}"),
            get(get_activation).delete(delete_activation),
        )
        .route(
            &format!("{ns}/activations/{{id}}/result"),
            get(activation_result),
        )
        .route(
            &format!("{ns}/activations/{{id}}/logs"),
            get(activation_logs),
        )
}

/// `GET /{collection}`.
fn collection(kind: EntityKind) -> MethodRouter<AppState> {
    get(
        move |s: State<AppState>, ctx: Ctx, Path(ns): Path<String>, Q(q): Q<Query>| {
            list(s, ctx, ns, q, kind)
        },
    )
}

/// `GET`, `PUT` and `DELETE` of `/{collection}/{name}`.
fn item(kind: EntityKind) -> MethodRouter<AppState> {
    get(
        move |s: State<AppState>, ctx: Ctx, Path(p): Path<(String, String)>, Q(q): Q<Query>| {
            get_one(s, ctx, p, q, kind)
        },
    )
    .put(
        move |s: State<AppState>,
              ctx: Ctx,
              Path(p): Path<(String, String)>,
              Q(q): Q<Query>,
              body: Result<Bytes, BytesRejection>| { put_one(s, ctx, p, q, body, kind) },
    )
    .delete(
        move |s: State<AppState>, ctx: Ctx, Path(p): Path<(String, String)>, Q(q): Q<Query>| {
            delete_one(s, ctx, p, q, kind)
        },
    )
}

fn ok(v: Value) -> ApiResult {
    Ok(Json(v).into_response())
}

fn ctl(tid: &str) -> impl Fn(ControllerError) -> ApiError + '_ {
    move |e| ApiError::from_controller(e, tid)
}

async fn list(
    State(s): State<AppState>,
    ctx: Ctx,
    ns: String,
    q: Query,
    kind: EntityKind,
) -> ApiResult {
    let tid = &ctx.tid;
    let paging = parse::paging(&q, tid)?;
    if parse::flag_or(&q, "count", tid)? {
        let n = s
            .controller
            .count(&ctx.who, &ns, kind)
            .await
            .map_err(ctl(tid))?;
        return ok(json!({ kind.collection(): n }));
    }
    let public = parse::flag_or(&q, "public", tid)?;
    let list = s
        .controller
        .list_entities(&ctx.who, &ns, kind, paging, public)
        .await
        .map_err(ctl(tid))?;
    ok(Value::Array(list))
}

async fn get_one(
    State(s): State<AppState>,
    ctx: Ctx,
    (ns, path): (String, String),
    q: Query,
    kind: EntityKind,
) -> ApiResult {
    let tid = &ctx.tid;
    if kind == EntityKind::Action
        && let Some(pkg) = path.strip_suffix('/')
    {
        // `actions/{pkg}/`: the actions of a package or binding.
        let paging = parse::paging(&q, tid)?;
        let list = s
            .controller
            .list_package_actions(&ctx.who, &ns, pkg, paging)
            .await
            .map_err(ctl(tid))?;
        return ok(Value::Array(list));
    }
    // `code` defaults to true (OpenWhisk); it only matters for actions.
    let with_code = !q.contains_key("code") || parse::flag_or(&q, "code", tid)?;
    ok(s.controller
        .get_entity(&ctx.who, &ns, kind, &path, with_code)
        .await
        .map_err(ctl(tid))?)
}

async fn put_one(
    State(s): State<AppState>,
    ctx: Ctx,
    (ns, path): (String, String),
    q: Query,
    body: Result<Bytes, BytesRejection>,
    kind: EntityKind,
) -> ApiResult {
    let tid = &ctx.tid;
    let body: Value = parse::json(&parse::body(body, tid)?, tid)?;
    let overwrite = parse::flag_or(&q, "overwrite", tid)?;
    ok(s.controller
        .put_entity(&ctx.who, &ns, kind, &path, body, overwrite)
        .await
        .map_err(ctl(tid))?)
}

async fn delete_one(
    State(s): State<AppState>,
    ctx: Ctx,
    (ns, path): (String, String),
    q: Query,
    kind: EntityKind,
) -> ApiResult {
    let tid = &ctx.tid;
    let force = parse::flag_or(&q, "force", tid)?;
    ok(s.controller
        .delete_entity(&ctx.who, &ns, kind, &path, force)
        .await
        .map_err(ctl(tid))?)
}

async fn list_instances(
    State(s): State<AppState>,
    ctx: Ctx,
    Path(ns): Path<String>,
    Q(q): Q<Query>,
) -> ApiResult {
    let name = q.get("name").filter(|n| !n.is_empty()).map(String::as_str);
    ok(s.controller
        .list_instances(&ctx.who, &ns, name)
        .await
        .map_err(ctl(&ctx.tid))?)
}

async fn list_namespaces(ctx: Ctx) -> ApiResult {
    ok(json!([ctx.who.namespace]))
}

async fn limits(State(s): State<AppState>, ctx: Ctx, Path(ns): Path<String>) -> ApiResult {
    if ctx.who.resolve_ns(&ns) != ctx.who.namespace {
        return Err(ApiError::from_controller(
            nimbus_controller::ControllerError::forbidden(),
            &ctx.tid,
        ));
    }
    let l = s.controller.limits();
    let storage = s
        .controller
        .storage(&ctx.who, &ns)
        .await
        .map_err(ctl(&ctx.tid))?;
    ok(json!({
        "storage": storage,
        "invocationsPerMinute": l.invocations_per_minute,
        "concurrentInvocations": l.concurrent_invocations,
        "firesPerMinute": l.fires_per_minute,
        "maxParameterSize": l.max_parameter_size,
        "minActionMemory": l.min_action_memory,
        "maxActionMemory": l.max_action_memory,
        "minActionTimeout": l.min_action_timeout,
        "maxActionTimeout": l.max_action_timeout,
        "minActionLogs": l.min_action_logs,
        "maxActionLogs": l.max_action_logs,
        "minActionConcurrency": l.min_action_concurrency,
        "maxActionConcurrency": l.max_action_concurrency,
        "maxActionInstances": l.max_action_instances,
        "sequenceMaxLength": l.sequence_max_length,
    }))
}

fn with_activation_header(mut r: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        r.headers_mut().insert("x-openwhisk-activation-id", v);
    }
    r
}

/// `x-nimbus-record: not-stored` on the answer of a blocking invoke whose record could not be
/// stored (the store's disk was full): the caller has the only copy.
pub(crate) fn with_record_header(mut r: Response, a: &Activation) -> Response {
    if a.annotations
        .get(nimbus_controller::RECORD_NOT_STORED)
        .is_some()
    {
        r.headers_mut()
            .insert("x-nimbus-record", HeaderValue::from_static("not-stored"));
    }
    r
}
pub fn activation_status(a: &Activation) -> StatusCode {
    match a.response.status() {
        ResponseStatus::Success => StatusCode::OK,
        ResponseStatus::ApplicationError | ResponseStatus::DeveloperError => {
            StatusCode::BAD_GATEWAY
        }
        ResponseStatus::WhiskError => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn invoke_action(
    State(s): State<AppState>,
    ctx: Ctx,
    Path((ns, path)): Path<(String, String)>,
    Q(q): Q<Query>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let tid = ctx.tid.clone();
    let body = parse::body(body, &tid)?;
    let blocking = parse::flag_or(&q, "blocking", &tid)?;
    let result_only = parse::flag_or(&q, "result", &tid)?;
    let wait = match q.get("timeout") {
        None => None,
        Some(t) => {
            let max = s.controller.config().max_blocking_wait.as_millis() as u64;
            match t.parse::<u64>() {
                Ok(ms) if ms <= max => Some(Duration::from_millis(ms)),
                _ => {
                    return Err(ApiError::bad_request(
                        format!("Timeout must be number of milliseconds up to {max}."),
                        &tid,
                    ));
                }
            }
        }
    };
    let params = parse::object(&body, &tid)?;
    let fqn = FullyQualifiedName::new(
        ctx.who.resolve_ns(&ns),
        EntityPath::parse(&path).map_err(|e| ApiError::bad_request(e.to_string(), &tid))?,
    );
    let req = InvokeRequest {
        action: fqn,
        params,
        blocking,
        wait,
        cause: None,
    };
    match s
        .controller
        .invoke(&ctx.who, req)
        .await
        .map_err(ctl(&tid))?
    {
        InvokeResponse::Accepted(id) => {
            let r = (StatusCode::ACCEPTED, Json(json!({"activationId": id}))).into_response();
            Ok(with_activation_header(r, id.as_str()))
        }
        InvokeResponse::Done(a) => {
            let status = activation_status(&a);
            let id = a.activation_id.to_string();
            let body = if result_only || a.response.result.is_array() {
                a.response.result.clone()
            } else {
                serde_json::to_value(&*a).unwrap_or(Value::Null)
            };
            Ok(with_record_header(
                with_activation_header((status, Json(body)).into_response(), &id),
                &a,
            ))
        }
    }
}

async fn fire_trigger(
    State(s): State<AppState>,
    ctx: Ctx,
    Path((ns, name)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = parse::body(body, &ctx.tid)?;
    let payload = parse::object(&body, &ctx.tid)?;
    match s
        .controller
        .fire_trigger(&ctx.who, &ns, &name, payload)
        .await
        .map_err(ctl(&ctx.tid))?
    {
        Some(id) => {
            let r = (StatusCode::ACCEPTED, Json(json!({"activationId": id}))).into_response();
            Ok(with_activation_header(r, id.as_str()))
        }
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

async fn set_rule_status(
    State(s): State<AppState>,
    ctx: Ctx,
    Path((ns, name)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = parse::body(body, &ctx.tid)?;
    let v = parse::object(&body, &ctx.tid)?;
    let status = v
        .get("status")
        .and_then(|s| s.as_str())
        .unwrap_or_default()
        .to_string();
    s.controller
        .set_rule_status(&ctx.who, &ns, &name, &status)
        .await
        .map_err(ctl(&ctx.tid))?;
    Ok(StatusCode::OK.into_response())
}

async fn list_activations(
    State(s): State<AppState>,
    ctx: Ctx,
    Path(ns): Path<String>,
    Q(q): Q<Query>,
) -> ApiResult {
    let tid = &ctx.tid;
    let paging = parse::paging(&q, tid)?;
    let docs = parse::flag_or(&q, "docs", tid)?;
    let count = parse::flag_or(&q, "count", tid)?;
    if docs && count {
        return Err(ApiError::bad_request(
            "The parameters 'docs' and 'count' cannot be used together.",
            tid,
        ));
    }
    let epoch = |name: &str| -> Result<Option<i64>, ApiError> {
        match q.get(name) {
            None => Ok(None),
            Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
                ApiError::bad_request(
                    format!(
                        "Parameter '{name}' is not a valid value for epoch milliseconds: '{v}'."
                    ),
                    tid,
                )
            }),
        }
    };
    let name = q.get("name").filter(|n| !n.is_empty()).cloned();
    let query = ActivationListQuery {
        name,
        since: epoch("since")?,
        upto: epoch("upto")?,
        skip: paging.skip,
        limit: paging.limit,
        docs,
    };
    if count {
        let n = s
            .controller
            .count_activations(&ctx.who, &ns, &query)
            .await
            .map_err(ctl(tid))?;
        return ok(json!({"activations": n}));
    }
    ok(Value::Array(
        s.controller
            .list_activations(&ctx.who, &ns, &query)
            .await
            .map_err(ctl(tid))?,
    ))
}

async fn get_activation(
    State(s): State<AppState>,
    ctx: Ctx,
    Path((ns, id)): Path<(String, String)>,
) -> ApiResult {
    let a = s
        .controller
        .get_activation(&ctx.who, &ns, &id)
        .await
        .map_err(ctl(&ctx.tid))?;
    ok(serde_json::to_value(&a).unwrap_or(Value::Null))
}

/// `DELETE /activations/{id}` (a Nimbus extension: frees the record's bytes of the quota).
async fn delete_activation(
    State(s): State<AppState>,
    ctx: Ctx,
    Path((ns, id)): Path<(String, String)>,
) -> ApiResult {
    s.controller
        .delete_activation(&ctx.who, &ns, &id)
        .await
        .map_err(ctl(&ctx.tid))?;
    ok(json!({"activationId": id}))
}

async fn activation_result(
    State(s): State<AppState>,
    ctx: Ctx,
    Path((ns, id)): Path<(String, String)>,
) -> ApiResult {
    ok(s.controller
        .activation_result(&ctx.who, &ns, &id)
        .await
        .map_err(ctl(&ctx.tid))?)
}

async fn activation_logs(
    State(s): State<AppState>,
    ctx: Ctx,
    Path((ns, id)): Path<(String, String)>,
) -> ApiResult {
    ok(s.controller
        .activation_logs(&ctx.who, &ns, &id)
        .await
        .map_err(ctl(&ctx.tid))?)
}
