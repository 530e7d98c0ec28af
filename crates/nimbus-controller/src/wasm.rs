//! Deploy-time checks of WebAssembly actions (kinds `wasm:wasi`, `wasm:http`, and the generic
//! `wasm` the server resolves from the binary). See `docs/wasm.md`.

use crate::{Controller, ControllerError, Result};
use nimbus_model::entity::Action;
use nimbus_model::exec::Exec;
use nimbus_model::wasm::WasmCaps;
use nimbus_runtime::RuntimeError;
use serde_json::json;

impl Controller {
    /// Validates a wasm action before it is stored: the capability annotations, then the binary
    /// (compiled and linked for its kind by the wasm runtime, so a corrupt, non-wasm or
    /// wrong-kind upload is a 400 now rather than a failure at invoke). A generic `wasm` kind is
    /// replaced by the kind the runtime reads from the binary.
    pub(crate) async fn check_wasm(&self, action: &mut Action) -> Result<()> {
        WasmCaps::from_annotations(&action.annotations)?;
        let (_, spec) = self
            .instance_of(action, &action.namespace)
            .ok_or_else(|| ControllerError::BadRequest("a wasm action needs code".into()))?;
        let kind = match self.invoker.check(&spec).await {
            Ok(k) => k,
            Err(RuntimeError::Init { message, .. }) => {
                return Err(ControllerError::BadRequest(format!(
                    "The WebAssembly code cannot run as kind '{}': {message}",
                    spec.kind
                )));
            }
            Err(RuntimeError::UnsupportedKind(k)) => {
                return Err(ControllerError::BadRequest(format!(
                    "kind '{k}' has no runtime on this server"
                )));
            }
            Err(RuntimeError::Platform(m)) => return Err(ControllerError::Internal(m)),
        };
        if let Exec::Code { kind: k, .. } = &mut action.exec
            && *k != kind
        {
            *k = kind.clone();
            action.annotations.set("exec", json!(kind));
        }
        Ok(())
    }
}
