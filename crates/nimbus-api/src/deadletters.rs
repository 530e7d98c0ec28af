//! The dead-letter routes (Nimbus extension, not in OpenWhisk):
//! `GET/DELETE /api/v1/namespaces/{ns}/deadletters`, `GET/DELETE …/deadletters/{id}` and
//! `POST …/deadletters/{id}/redrive`.

use crate::AppState;
use crate::context::Ctx;
use crate::error::ApiError;
use crate::parse::{self, Query};
use axum::Json;
use axum::Router;
use axum::extract::{Path, Query as Q, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

type ApiResult = Result<Response, ApiError>;

pub fn routes() -> Router<AppState> {
    let base = "/api/v1/namespaces/{ns}/deadletters";
    Router::new()
        .route(base, get(list).delete(purge))
        .route(&format!("{base}/{{id}}"), get(get_one).delete(delete_one))
        .route(&format!("{base}/{{id}}/redrive"), post(redrive))
}

fn ok(v: Value) -> ApiResult {
    Ok(Json(v).into_response())
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

async fn list(
    State(s): State<AppState>,
    ctx: Ctx,
    Path(ns): Path<String>,
    Q(q): Q<Query>,
) -> ApiResult {
    let tid = &ctx.tid;
    let c = &s.controller;
    if parse::flag_or(&q, "count", tid)? {
        let n = c
            .count_dead_letters(&ctx.who, &ns)
            .await
            .map_err(|e| ApiError::from_controller(e, tid))?;
        return ok(json!({ "deadletters": n }));
    }
    let paging = parse::paging(&q, tid)?;
    let list = c
        .list_dead_letters(&ctx.who, &ns, &paging)
        .await
        .map_err(|e| ApiError::from_controller(e, tid))?;
    ok(to_json(&list))
}

async fn get_one(
    State(s): State<AppState>,
    ctx: Ctx,
    Path((ns, id)): Path<(String, String)>,
) -> ApiResult {
    let dl = s
        .controller
        .get_dead_letter(&ctx.who, &ns, &id)
        .await
        .map_err(|e| ApiError::from_controller(e, &ctx.tid))?;
    ok(to_json(&dl))
}

async fn delete_one(
    State(s): State<AppState>,
    ctx: Ctx,
    Path((ns, id)): Path<(String, String)>,
) -> ApiResult {
    s.controller
        .delete_dead_letter(&ctx.who, &ns, &id)
        .await
        .map_err(|e| ApiError::from_controller(e, &ctx.tid))?;
    ok(json!({ "purged": 1 }))
}

async fn purge(State(s): State<AppState>, ctx: Ctx, Path(ns): Path<String>) -> ApiResult {
    let n = s
        .controller
        .purge_dead_letters(&ctx.who, &ns)
        .await
        .map_err(|e| ApiError::from_controller(e, &ctx.tid))?;
    ok(json!({ "purged": n }))
}

async fn redrive(
    State(s): State<AppState>,
    ctx: Ctx,
    Path((ns, id)): Path<(String, String)>,
) -> ApiResult {
    let out = s
        .controller
        .redrive_dead_letter(&ctx.who, &ns, &id)
        .await
        .map_err(|e| ApiError::from_controller(e, &ctx.tid))?;
    Ok((StatusCode::ACCEPTED, Json(out)).into_response())
}
