//! The HTTP face of Nimbus: OpenWhisk v1 routes and web actions over axum.
//!
//! Handlers only parse (path, query, body, credentials), call the controller and map its answer
//! or [`ControllerError`](nimbus_controller::ControllerError) to a response. No state lives here.

mod context;
mod cors;
mod error;
mod hooks;
mod info;
mod parse;
mod routes;
mod web;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use nimbus_controller::Controller;
use std::sync::Arc;

pub use error::ApiError;
pub use info::ServerInfo;

/// Largest request body (OpenWhisk: 50 MB; code itself is capped at 48 MB by the model).
pub const MAX_BODY_BYTES: usize = 50 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub controller: Arc<Controller>,
    pub info: Arc<ServerInfo>,
}

/// The whole router: API, web actions, info endpoints.
pub fn router(controller: Arc<Controller>, info: ServerInfo) -> Router {
    let state = AppState {
        controller,
        info: Arc::new(info),
    };
    routes::routes()
        .merge(web::routes())
        .merge(info::routes())
        .merge(hooks::routes())
        .layer(axum::middleware::from_fn(cors::cors))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
