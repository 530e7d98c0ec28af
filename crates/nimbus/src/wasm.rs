//! The WebAssembly runtime of `nimbus serve` (kinds `wasm:wasi` and `wasm:http`, see
//! `docs/wasm.md`): its engine knobs come from flags and `NIMBUS_WASM_*` variables, and its
//! compiled-artifact cache lives in the data directory, so a restart does not recompile.

use clap::Args;
use nimbus_wasm::{WasmConfig, WasmRuntime};
use std::path::Path;

#[derive(Args, Clone, Debug)]
pub struct WasmArgs {
    /// WebAssembly instances running at once on this node; more activations queue for a slot.
    #[arg(long, env = "NIMBUS_WASM_MAX_CONCURRENT", default_value_t = 256)]
    pub wasm_max_concurrent: usize,
    /// Instance allocation: auto (pooling when the address space allows it), pooling, on-demand.
    #[arg(long, env = "NIMBUS_WASM_ALLOCATION", default_value = "auto", value_parser = ["auto", "pooling", "on-demand"])]
    pub wasm_allocation: String,
    /// Do not serve the wasm kinds (no engine, no address-space reservation).
    #[arg(long)]
    pub no_wasm: bool,
}

/// Builds the runtime (`None` with `--no-wasm`). Other knobs: `NIMBUS_WASM_POOL_INSTANCES`,
/// `NIMBUS_WASM_MAX_MEMORY_MB`, `NIMBUS_WASM_KEEP_RESIDENT_KB`, `NIMBUS_WASM_EPOCH_TICK_MS`,
/// `NIMBUS_WASM_MAX_RESULT_KB`.
pub fn runtime(
    a: &WasmArgs,
    data_dir: &Path,
    egress: nimbus_egress::EgressPolicy,
) -> anyhow::Result<Option<WasmRuntime>> {
    if a.no_wasm {
        return Ok(None);
    }
    let mut cfg = WasmConfig::new(data_dir.join("wasm"));
    cfg.egress = egress;
    cfg.apply_env().map_err(|e| anyhow::anyhow!(e))?;
    // Flags (which also read their own variables) win over the environment defaults.
    cfg.max_concurrent_instances = a.wasm_max_concurrent.max(1);
    cfg.pool_instances = cfg
        .pool_instances
        .max(u32::try_from(cfg.max_concurrent_instances).unwrap_or(u32::MAX));
    cfg.apply_vars(|n| (n == "ALLOCATION").then(|| a.wasm_allocation.clone()))
        .map_err(|e| anyhow::anyhow!(e))?;
    let rt = WasmRuntime::new(cfg).map_err(|e| anyhow::anyhow!("wasm runtime: {e}"))?;
    Ok(Some(rt))
}
