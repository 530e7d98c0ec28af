//! Unauthenticated endpoints: `/`, `/api/v1`, `/ping`.

use crate::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

/// What the server reports about itself.
#[derive(Debug, Clone, Default)]
pub struct ServerInfo {
    pub build: String,
    /// Warnings about missing isolation layers etc., shown in `GET /api/v1`.
    pub warnings: Vec<String>,
    /// Which isolation layers function instances run with (shown in `GET /api/v1`).
    pub isolation: Value,
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(root))
        .route("/ping", get(|| async { "pong" }))
        .route("/api/v1", get(api_v1))
        .route("/api/v1/", get(api_v1))
}

async fn root(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // Browsers get the web console; API clients the OpenWhisk description.
    if crate::console::wants_html(&headers) {
        return crate::console::index();
    }
    description(&s).into_response()
}

fn description(s: &AppState) -> Json<Value> {
    let l = s.controller.limits();
    let runtimes: Vec<Value> = nimbus_model::kinds::KINDS
        .iter()
        .map(|(k, _, default)| json!({"kind": k, "default": default}))
        .collect();
    Json(json!({
        "description": "Nimbus: a serverless platform speaking the OpenWhisk API",
        "support": {"github": "nimbus"},
        "api_paths": ["/api/v1"],
        "limits": {
            "actions_per_minute": l.invocations_per_minute,
            "triggers_per_minute": l.fires_per_minute,
            "concurrent_actions": l.concurrent_invocations,
            "sequence_length": l.sequence_max_length,
            "min_action_duration": l.min_action_timeout,
            "max_action_duration": l.max_action_timeout,
            "min_action_memory": l.min_action_memory * 1024 * 1024,
            "max_action_memory": l.max_action_memory * 1024 * 1024,
            "min_action_logs": l.min_action_logs * 1024 * 1024,
            "max_action_logs": l.max_action_logs * 1024 * 1024,
        },
        "runtimes": {"nodejs": [runtimes[0].clone()], "python": [runtimes[1].clone()], "exec": [runtimes[2].clone()], "wasm": [runtimes[3].clone(), runtimes[4].clone()]},
    }))
}

async fn api_v1(State(s): State<AppState>) -> Json<Value> {
    Json(json!({
        "description": "OpenWhisk API",
        "api_version": "1.0.0",
        "api_version_path": "v1",
        "build": s.info.build,
        "buildno": s.info.build,
        "swagger_paths": {"ui": "/docs", "api-docs": "/api/v1/api-docs"},
        "server": "nimbus",
        "warnings": s.info.warnings,
        "isolation": s.info.isolation,
    }))
}
