//! Engine knobs, all overridable by the embedder (the server maps its configuration onto this).

use std::path::PathBuf;
use std::time::Duration;

/// How the engine allocates instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// Pooling allocator when its address space can be reserved, else on-demand (the default).
    Auto,
    /// Pooling allocator; creating the runtime fails when the pool cannot be reserved.
    Pooling,
    /// On-demand allocation (mmap per instance), no reservation up front.
    OnDemand,
}

/// Configuration of a [`crate::WasmRuntime`].
#[derive(Debug, Clone)]
pub struct WasmConfig {
    /// Where precompiled artifacts (`<sha256>.cwasm`) are kept, one subdirectory per engine
    /// compatibility hash. Created when missing.
    pub cache_dir: PathBuf,
    pub allocation: Allocation,
    /// Instances running at once; further activations wait (queue) for a slot.
    pub max_concurrent_instances: usize,
    /// Pool slots (component instances); also sizes memories, tables, stacks and core instances.
    /// Never below `max_concurrent_instances`.
    pub pool_instances: u32,
    /// Engine-wide hard cap on one linear memory (the per-function limit is `limits.memory`).
    pub max_memory_bytes: usize,
    /// Memory a pooled slot keeps resident (zeroed) after use, to make reuse cheaper.
    pub memory_keep_resident_bytes: usize,
    /// Per-instance metadata caps for the pool (large components such as componentize-py need more).
    pub max_core_instance_size: usize,
    pub max_component_instance_size: usize,
    pub max_memories_per_component: u32,
    pub max_tables_per_component: u32,
    pub max_core_instances_per_component: u32,
    /// Epoch tick: how often the ticker increments the engine epoch. Deadlines are enforced to
    /// within about one tick.
    pub epoch_tick: Duration,
    /// Largest stdout (the JSON result of `wasm:wasi`) or response body (`wasm:http`) kept.
    pub max_result_bytes: usize,
    /// Wasm stack limit of one instance.
    pub max_wasm_stack: usize,
    /// Host stack of one async call (must exceed `max_wasm_stack`).
    pub async_stack_size: usize,
}

impl WasmConfig {
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        WasmConfig {
            cache_dir: cache_dir.into(),
            allocation: Allocation::Auto,
            max_concurrent_instances: 256,
            pool_instances: 1000,
            max_memory_bytes: 2048 << 20,
            memory_keep_resident_bytes: 1 << 20,
            max_core_instance_size: 10 << 20,
            max_component_instance_size: 10 << 20,
            max_memories_per_component: 16,
            max_tables_per_component: 16,
            max_core_instances_per_component: 64,
            epoch_tick: Duration::from_millis(10),
            max_result_bytes: 5 << 20,
            max_wasm_stack: 1 << 20,
            async_stack_size: 2 << 20,
        }
    }
}
