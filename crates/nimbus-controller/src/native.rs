//! Actions implemented inside the server (the built-in feed providers of `/whisk.system`).
//!
//! The OpenWhisk clients manage feeds by invoking the feed action (`lifecycleEvent`,
//! `triggerName`, `authKey`, parameters). For the built-in providers that action is native
//! code: an implementation of [`NativeActions`] registered with
//! [`Controller::set_native_actions`] receives those invocations before the normal action lookup,
//! and each one still leaves an activation record, as a user feed action would.

use crate::{Controller, ControllerError, Identity, InvokeRequest, InvokeResponse, Result};
use async_trait::async_trait;
use nimbus_model::{
    Activation, ActivationId, ActivationResponse, FullyQualifiedName, KeyValues, ResponseStatus,
    Version, now_millis,
};
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// What a native action answered.
#[derive(Debug, Clone)]
pub enum NativeOutcome {
    /// The action succeeded with this result.
    Success(Value),
    /// The action failed for a reason the caller can fix (bad parameters, unknown trigger):
    /// recorded as an application error, as a failing user action would be.
    Failed(String),
    /// The request is refused before anything happens (e.g. a destination the egress policy
    /// refuses): answered 403 with the message, and no activation is recorded.
    Refused(String),
}

#[async_trait]
pub trait NativeActions: Send + Sync {
    /// Whether this fully qualified action is served natively.
    fn handles(&self, action: &FullyQualifiedName) -> bool;
    /// Runs it for `who` with the caller's parameters.
    async fn invoke(
        &self,
        who: &Identity,
        action: &FullyQualifiedName,
        params: Map<String, Value>,
    ) -> NativeOutcome;
}

impl Controller {
    /// Registers the server's native actions (once, at start-up; later calls are ignored).
    pub fn set_native_actions(&self, native: Arc<dyn NativeActions>) {
        let _ = self.native.set(native);
    }

    /// The native implementation of `action`, if any.
    pub(crate) fn native_for(&self, action: &FullyQualifiedName) -> Option<Arc<dyn NativeActions>> {
        self.native.get().filter(|n| n.handles(action)).cloned()
    }

    /// Runs a native action and records its activation like any other.
    pub(crate) async fn invoke_native(
        &self,
        native: Arc<dyn NativeActions>,
        who: &Identity,
        req: InvokeRequest,
    ) -> Result<InvokeResponse> {
        self.check_native_payload(&req.params)?;
        let id = ActivationId::generate();
        let start = now_millis();
        let outcome = native.invoke(who, &req.action, req.params).await;
        let end = now_millis();
        let response = match outcome {
            NativeOutcome::Success(v) => ActivationResponse::success(v),
            NativeOutcome::Failed(m) => {
                ActivationResponse::error(ResponseStatus::ApplicationError, m)
            }
            NativeOutcome::Refused(m) => return Err(ControllerError::Forbidden(m)),
        };
        let mut annotations = KeyValues::new();
        annotations.set(
            "path",
            json!(req.action.to_string().trim_start_matches('/')),
        );
        annotations.set("kind", json!("native"));
        let record = Activation {
            namespace: who.namespace.clone(),
            name: req.action.path.name.clone(),
            subject: who.namespace.clone(),
            activation_id: id.clone(),
            version: Version::default(),
            publish: false,
            start,
            end,
            duration: Some(end - start),
            cause: req.cause,
            logs: vec![],
            annotations,
            response,
        };
        self.store.put_activation(&record).await?;
        if req.blocking {
            Ok(InvokeResponse::Done(Box::new(record)))
        } else {
            Ok(InvokeResponse::Accepted(id))
        }
    }

    fn check_native_payload(&self, params: &Map<String, Value>) -> Result<()> {
        let size = serde_json::to_vec(params).map(|b| b.len()).unwrap_or(0);
        if size > self.cfg.max_payload_bytes {
            return Err(ControllerError::TooLarge(format!(
                "The request payload is {size} bytes, over the limit of {} bytes.",
                self.cfg.max_payload_bytes
            )));
        }
        Ok(())
    }
}
