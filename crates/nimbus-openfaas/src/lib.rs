//! Nimbus's OpenFaaS gateway: the OpenFaaS REST API (`/system/*`, `/function/*`,
//! `/async-function/*`, `/healthz`, `/build`) on Nimbus's own listener, over the same controller
//! as the OpenWhisk API. An OpenFaaS function *is* a Nimbus action: deployed here, it is listed
//! by `GET /api/v1/namespaces/{ns}/actions` too, and a plain action is callable through
//! `/function/NAME`. See docs/openfaas.md.
//!
//! [`gateway::Gateway`] holds the use cases (HTTP-free); [`http::router`] is the thin axum layer;
//! [`metrics::GatewayMetrics::render`] gives the OpenFaaS metrics as Prometheus text.

pub mod bundle;
pub mod error;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod secrets;
pub mod types;

pub use error::GatewayError;
pub use gateway::{DEFAULT_NAMESPACE, Gateway, GatewayConfig};
