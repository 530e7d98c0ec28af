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
    /// Memory a pooled slot keeps resident (reset with `memset`) after use, to make reuse cheaper:
    /// every slot released otherwise costs an `madvise` and a TLB shootdown on every core.
    pub memory_keep_resident_bytes: usize,
    /// Find the pages an instance dirtied with Linux's `PAGEMAP_SCAN` (kernel 6.7+) and reset only
    /// those, instead of `memset`ting the whole resident prefix. Used when the kernel has it.
    pub pagemap_scan: bool,
    /// Released slots whose memory must be decommitted are flushed in batches of this many (one
    /// TLB shootdown per batch instead of one per slot).
    pub decommit_batch_size: usize,
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
    /// The server's egress policy, applied to outbound `wasi:http` connections on top of each
    /// function's allowed hosts. The default refuses the deny table and opens nothing.
    pub egress: nimbus_egress::EgressPolicy,
}

impl WasmConfig {
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        WasmConfig {
            cache_dir: cache_dir.into(),
            allocation: Allocation::Auto,
            max_concurrent_instances: 256,
            pool_instances: 1000,
            max_memory_bytes: 2048 << 20,
            memory_keep_resident_bytes: 2 << 20,
            pagemap_scan: true,
            decommit_batch_size: 16,
            max_core_instance_size: 10 << 20,
            max_component_instance_size: 10 << 20,
            max_memories_per_component: 16,
            max_tables_per_component: 16,
            max_core_instances_per_component: 64,
            epoch_tick: Duration::from_millis(10),
            max_result_bytes: 5 << 20,
            max_wasm_stack: 1 << 20,
            async_stack_size: 2 << 20,
            egress: nimbus_egress::EgressPolicy::default(),
        }
    }

    /// Overrides knobs from `NIMBUS_WASM_*` environment variables (read by the server at
    /// start-up): `ALLOCATION` (`auto`, `pooling`, `on-demand`), `MAX_CONCURRENT`,
    /// `POOL_INSTANCES`, `MAX_MEMORY_MB`, `KEEP_RESIDENT_KB`, `PAGEMAP_SCAN` (`auto` or `off`),
    /// `DECOMMIT_BATCH`, `EPOCH_TICK_MS`, `MAX_RESULT_KB`.
    pub fn apply_env(&mut self) -> Result<(), String> {
        self.apply_vars(|name| std::env::var(format!("NIMBUS_WASM_{name}")).ok())
    }

    /// [`WasmConfig::apply_env`] over any lookup (testable without touching the environment).
    pub fn apply_vars(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        fn num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
            v.trim()
                .parse()
                .map_err(|_| format!("NIMBUS_WASM_{name}: not a number: {v:?}"))
        }
        if let Some(v) = get("ALLOCATION") {
            self.allocation = match v.trim() {
                "auto" => Allocation::Auto,
                "pooling" => Allocation::Pooling,
                "on-demand" | "ondemand" => Allocation::OnDemand,
                other => {
                    return Err(format!(
                        "NIMBUS_WASM_ALLOCATION: expected auto, pooling or on-demand, got {other:?}"
                    ));
                }
            };
        }
        if let Some(v) = get("MAX_CONCURRENT") {
            self.max_concurrent_instances = num::<usize>("MAX_CONCURRENT", &v)?.max(1);
        }
        if let Some(v) = get("POOL_INSTANCES") {
            self.pool_instances = num("POOL_INSTANCES", &v)?;
        }
        if let Some(v) = get("MAX_MEMORY_MB") {
            self.max_memory_bytes = num::<usize>("MAX_MEMORY_MB", &v)?.saturating_mul(1 << 20);
        }
        if let Some(v) = get("KEEP_RESIDENT_KB") {
            self.memory_keep_resident_bytes =
                num::<usize>("KEEP_RESIDENT_KB", &v)?.saturating_mul(1 << 10);
        }
        if let Some(v) = get("PAGEMAP_SCAN") {
            self.pagemap_scan = match v.trim() {
                "auto" | "on" | "1" | "true" => true,
                "off" | "0" | "false" => false,
                other => {
                    return Err(format!(
                        "NIMBUS_WASM_PAGEMAP_SCAN: expected auto or off, got {other:?}"
                    ));
                }
            };
        }
        if let Some(v) = get("DECOMMIT_BATCH") {
            self.decommit_batch_size = num::<usize>("DECOMMIT_BATCH", &v)?.max(1);
        }
        if let Some(v) = get("EPOCH_TICK_MS") {
            self.epoch_tick = Duration::from_millis(num::<u64>("EPOCH_TICK_MS", &v)?.max(1));
        }
        if let Some(v) = get("MAX_RESULT_KB") {
            self.max_result_bytes = num::<usize>("MAX_RESULT_KB", &v)?.saturating_mul(1 << 10);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides() {
        let mut c = WasmConfig::new("/tmp/x");
        c.apply_vars(|n| match n {
            "ALLOCATION" => Some("on-demand".into()),
            "MAX_CONCURRENT" => Some("12".into()),
            "EPOCH_TICK_MS" => Some("5".into()),
            "PAGEMAP_SCAN" => Some("off".into()),
            "DECOMMIT_BATCH" => Some("0".into()),
            _ => None,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.allocation, Allocation::OnDemand);
        assert_eq!(c.max_concurrent_instances, 12);
        assert_eq!(c.epoch_tick, Duration::from_millis(5));
        assert!(!c.pagemap_scan);
        assert_eq!(
            c.decommit_batch_size, 1,
            "a batch of zero means no batching"
        );
        assert!(
            c.apply_vars(|n| (n == "POOL_INSTANCES").then(|| "lots".into()))
                .is_err()
        );
    }
}
