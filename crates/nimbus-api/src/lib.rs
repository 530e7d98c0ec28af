//! The HTTP face of Nimbus: OpenWhisk v1 routes and web actions over axum.
//!
//! Handlers only parse (path, query, body, credentials), call the controller and map its answer
//! or [`ControllerError`](nimbus_controller::ControllerError) to a response. No state lives here.

pub mod access;
mod console;
mod context;
mod cors;
mod deadletters;
mod error;
mod hooks;
mod info;
mod parse;
mod request_id;
mod routes;
pub mod server;
mod web;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use nimbus_controller::Controller;
use std::sync::Arc;

pub use console::ConsoleOptions;
pub use error::ApiError;
pub use info::ServerInfo;
pub use nimbus_metrics::MetricsSource;

/// Largest request body (OpenWhisk: 50 MB; code itself is capped at 48 MB by the model).
pub const MAX_BODY_BYTES: usize = 50 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub controller: Arc<Controller>,
    pub info: Arc<ServerInfo>,
    pub console: Arc<ConsoleOptions>,
}

/// The whole router: API, web actions, info endpoints.
pub fn router(controller: Arc<Controller>, info: ServerInfo) -> Router {
    router_with(controller, info, ConsoleOptions::default())
}

/// The whole router, with the console's and `/metrics`' options.
pub fn router_with(
    controller: Arc<Controller>,
    info: ServerInfo,
    console: ConsoleOptions,
) -> Router {
    let state = AppState {
        controller,
        info: Arc::new(info),
        console: Arc::new(console),
    };
    routes::routes()
        .merge(web::routes())
        .merge(info::routes())
        .merge(deadletters::routes())
        .merge(console::routes())
        .merge(hooks::routes())
        .layer(axum::middleware::from_fn(cors::cors))
        .layer(axum::middleware::from_fn(request_id::request_id))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
