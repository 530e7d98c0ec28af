//! WebAssembly runtime of Nimbus: a wasmtime host for the `wasm:wasi` and `wasm:http` kinds.
//!
//! One [`wasmtime::Engine`] per [`WasmRuntime`] (pooling allocator with copy-on-write memory
//! images when the address space allows it, epoch interruption driven by a ticker thread).
//! Modules are compiled once, at deploy time ([`WasmRuntime::prepare`]), and the compiled
//! artifact is cached on disk under the sha256 of the module bytes, so neither a restart nor the
//! first invocation recompiles. Every activation gets a fresh store and instance from a cached
//! `InstancePre`, so nothing leaks between invocations.
//!
//! - `wasm:wasi`: a WASI command (preview 1 module or preview 2 component). Parameters as JSON on
//!   stdin, the JSON on stdout is the result, stderr lines are logs.
//! - `wasm:http`: a `wasi:http/proxy` component (with `wasi:cli` linked, as `wasmtime serve -S
//!   cli`). Invoked with parameters it receives a `POST` whose body is the JSON parameters; the
//!   JSON response body is the result.
//!
//! Capabilities are denied by default: no preopened directories, no environment, no sockets,
//! outbound HTTP refused. Clocks and randomness are available.

mod bundle;
mod caps;
mod config;
mod io;
mod limits;
mod run;
mod web;

pub use caps::{Capabilities, HostPattern};
pub use config::{Allocation, WasmConfig};

use crate::limits::MemoryLimiter;
use async_trait::async_trait;
use base64::Engine as _;
use nimbus_runtime::{
    ConcurrentRunner, Instance, InstanceSpec, RunOutcome, RunRequest, Runtime, RuntimeError,
};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Semaphore;
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, InstancePre, Module,
    PoolingAllocationConfig,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// The kind of a WASI command (module or component).
pub const KIND_WASI: &str = nimbus_model::wasm::KIND_WASI;
/// The kind of a `wasi:http/proxy` component.
pub const KIND_HTTP: &str = nimbus_model::wasm::KIND_HTTP;
/// The generic kind of a deploy request; [`WasmRuntime`]'s `check` resolves it.
pub const KIND_INFER: &str = nimbus_model::wasm::KIND_INFER;

/// The two kinds this runtime serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WasmKind {
    Wasi,
    Http,
}

impl WasmKind {
    pub fn from_kind(kind: &str) -> Option<WasmKind> {
        match kind {
            KIND_WASI => Some(WasmKind::Wasi),
            KIND_HTTP => Some(WasmKind::Http),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WasmKind::Wasi => KIND_WASI,
            WasmKind::Http => KIND_HTTP,
        }
    }
}

/// A compiled (or cache-loaded) module or component.
#[derive(Clone)]
pub enum Artifact {
    /// A core (preview 1) module.
    Module(Module),
    /// A component (preview 2).
    Component(Component),
}

/// The result of [`WasmRuntime::prepare`]: validated and compiled code, keyed by content hash.
#[derive(Clone)]
pub struct Prepared {
    /// Hex sha256 of the wasm bytes.
    pub sha256: String,
    pub artifact: Artifact,
    /// Size of the uploaded wasm in bytes.
    pub size: usize,
}

impl Prepared {
    pub fn is_component(&self) -> bool {
        matches!(self.artifact, Artifact::Component(_))
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("sha256", &self.sha256)
            .field("component", &self.is_component())
            .field("size", &self.size)
            .finish()
    }
}

/// Counters, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WasmStats {
    /// Modules/components compiled with Cranelift by this runtime.
    pub compilations: u64,
    /// Artifacts loaded from the on-disk cache.
    pub cache_loads: u64,
    /// Whether the pooling allocator is in use.
    pub pooling: bool,
}

/// Store data of a preview 1 module.
pub(crate) struct P1State {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) limiter: MemoryLimiter,
}

/// Store data of a component (WASI command or `wasi:http/proxy`).
pub(crate) struct CompState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) http: WasiHttpCtx,
    pub(crate) hooks: caps::OutboundHooks,
    pub(crate) limiter: MemoryLimiter,
}

impl WasiView for CompState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for CompState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// A function ready to instantiate: the linked, type-checked `InstancePre` for its kind.
#[derive(Clone)]
pub(crate) enum Pre {
    Module(InstancePre<P1State>),
    Command(CommandPre<CompState>),
    Http(ProxyPre<CompState>),
}

pub(crate) struct Inner {
    pub(crate) engine: Engine,
    pub(crate) config: WasmConfig,
    pooling: bool,
    module_linker: wasmtime::Linker<P1State>,
    component_linker: wasmtime::component::Linker<CompState>,
    pub(crate) slots: Arc<Semaphore>,
    cache_dir: PathBuf,
    /// Where bundled directories of zip uploads are unpacked.
    bundle_dir: PathBuf,
    artifacts: Mutex<HashMap<String, Arc<Prepared>>>,
    /// Code strings already prepared, by address: the invoker hands the same `Arc<str>` for
    /// every start of one action version, so a start after deploy skips base64 and sha256.
    /// Each entry keeps its `Arc` alive, so an address cannot be reused while it is indexed.
    code_index: Mutex<HashMap<usize, CodeEntry>>,
    /// Per-hash gates serialising the compilation of one module.
    inflight: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    pres: Mutex<HashMap<(String, WasmKind), Pre>>,
    compilations: AtomicU64,
    cache_loads: AtomicU64,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An error and its causes on one line.
pub(crate) fn error_chain(e: &wasmtime::Error) -> String {
    let mut out = String::new();
    for (i, cause) in e.chain().enumerate() {
        if i > 0 {
            out.push_str(": ");
        }
        out.push_str(&cause.to_string());
    }
    out
}

fn init_error(message: impl Into<String>) -> RuntimeError {
    RuntimeError::Init {
        message: message.into(),
        logs: Vec::new(),
    }
}

fn engine_config(c: &WasmConfig, pooling: bool) -> Config {
    let mut cfg = Config::new();
    cfg.wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        .parallel_compilation(true)
        .max_wasm_stack(c.max_wasm_stack)
        .async_stack_size(c.async_stack_size);
    if pooling {
        let n = c
            .pool_instances
            .max(u32::try_from(c.max_concurrent_instances).unwrap_or(u32::MAX));
        let mut p = PoolingAllocationConfig::new();
        p.total_component_instances(n)
            .total_core_instances(n.saturating_mul(4))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(2))
            .total_stacks(n)
            .max_memory_size(c.max_memory_bytes)
            .linear_memory_keep_resident(c.memory_keep_resident_bytes)
            .table_keep_resident(c.memory_keep_resident_bytes.min(1 << 20))
            .pagemap_scan(if c.pagemap_scan {
                Enabled::Auto
            } else {
                Enabled::No
            })
            .decommit_batch_size(c.decommit_batch_size)
            .max_core_instance_size(c.max_core_instance_size)
            .max_component_instance_size(c.max_component_instance_size)
            .max_memories_per_component(c.max_memories_per_component)
            .max_tables_per_component(c.max_tables_per_component)
            .max_core_instances_per_component(c.max_core_instances_per_component);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
    }
    cfg
}

fn build_engine(c: &WasmConfig) -> Result<(Engine, bool), RuntimeError> {
    let platform =
        |e: wasmtime::Error| RuntimeError::Platform(format!("wasm engine: {}", error_chain(&e)));
    match c.allocation {
        Allocation::OnDemand => Ok((
            Engine::new(&engine_config(c, false)).map_err(platform)?,
            false,
        )),
        Allocation::Pooling => Ok((
            Engine::new(&engine_config(c, true)).map_err(platform)?,
            true,
        )),
        Allocation::Auto => match Engine::new(&engine_config(c, true)) {
            Ok(engine) => Ok((engine, true)),
            Err(e) => {
                tracing::warn!(
                    error = %error_chain(&e),
                    "pooling allocator unavailable (address space too small?); using on-demand allocation"
                );
                Ok((
                    Engine::new(&engine_config(c, false)).map_err(platform)?,
                    false,
                ))
            }
        },
    }
}

/// Identifies artifacts this engine can load (wasmtime version and compilation settings).
fn compat_tag(engine: &Engine) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    env!("CARGO_PKG_VERSION").hash(&mut h);
    format!("{:016x}", h.finish())
}

fn spawn_ticker(
    engine: &Engine,
    tick: Duration,
    stop: Arc<AtomicBool>,
) -> Result<(), RuntimeError> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("nimbus-wasm-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .map(|_| ())
        .map_err(|e| RuntimeError::Platform(format!("could not start the epoch ticker: {e}")))
}

/// What one action's code string prepared to.
struct CodeInfo {
    prepared: Arc<Prepared>,
    /// The upload was a zip archive (holding the module, maybe a bundled directory).
    zip: bool,
    /// Bundled directories already unpacked, by `wasm-dir`.
    bundles: Mutex<HashMap<String, PathBuf>>,
}

/// A code string (kept alive) and what it prepared to.
type CodeEntry = (Arc<str>, Arc<CodeInfo>);

/// Most code strings remembered by [`WasmRuntime::prepare_code`] (cleared when full).
const CODE_INDEX_CAPACITY: usize = 4096;

/// The header of a core module (version 1) and of a component (layer 1).
const MODULE_HEADER: [u8; 8] = [0, b'a', b's', b'm', 1, 0, 0, 0];
const COMPONENT_VERSION: [u8; 4] = [0x0d, 0, 1, 0];

/// Whether `bytes` look like a component (`Some(true)`), a core module (`Some(false)`), or
/// neither (`None`).
pub fn detect_component(bytes: &[u8]) -> Option<bool> {
    if bytes.len() < 8 || bytes[..4] != MODULE_HEADER[..4] {
        return None;
    }
    if bytes[4..8] == MODULE_HEADER[4..] {
        Some(false)
    } else if bytes[4..8] == COMPONENT_VERSION {
        Some(true)
    } else {
        None
    }
}

/// Decodes an action's `code` (base64 when `binary`, as the actions API stores binary code): the
/// wasm bytes or a zip archive holding them.
pub fn decode_code(code: &str, binary: bool) -> Result<Vec<u8>, RuntimeError> {
    if !binary {
        return Err(init_error(
            "WebAssembly code must be uploaded as binary (base64) code",
        ));
    }
    let compact: String = code.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| init_error(format!("the code is not valid base64: {e}")))
}

impl Inner {
    fn cache_path(&self, sha: &str) -> PathBuf {
        self.cache_dir.join(format!("{sha}.cwasm"))
    }

    /// Loads `path` if it holds a usable artifact of the right flavour.
    fn load_cached(&self, path: &Path, component: bool) -> Option<Artifact> {
        if !path.is_file() {
            return None;
        }
        // SAFETY: the file was written by `store_artifact` with `Engine::precompile_*` of an
        // engine with the same compatibility tag (it lives in that tag's directory), and the
        // cache directory belongs to this runtime. wasmtime still checks the header and the
        // engine settings on load.
        let loaded = if component {
            unsafe { Component::deserialize_file(&self.engine, path) }.map(Artifact::Component)
        } else {
            unsafe { Module::deserialize_file(&self.engine, path) }.map(Artifact::Module)
        };
        match loaded {
            Ok(a) => {
                self.cache_loads.fetch_add(1, Ordering::Relaxed);
                Some(a)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %error_chain(&e), "discarding unusable cached artifact");
                let _ = std::fs::remove_file(path);
                None
            }
        }
    }

    fn compile(&self, bytes: &[u8], component: bool, sha: &str) -> Result<Artifact, RuntimeError> {
        let what = if component { "component" } else { "module" };
        let compiled = if component {
            self.engine.precompile_component(bytes)
        } else {
            self.engine.precompile_module(bytes)
        }
        .map_err(|e| init_error(format!("invalid WebAssembly {what}: {}", error_chain(&e))))?;
        self.compilations.fetch_add(1, Ordering::Relaxed);
        let path = self.cache_path(sha);
        match write_atomically(&path, &compiled) {
            Ok(()) => {
                if let Some(a) = self.load_cached(&path, component) {
                    // Loaded from our own fresh file: not a cache hit.
                    self.cache_loads.fetch_sub(1, Ordering::Relaxed);
                    return Ok(a);
                }
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not cache compiled artifact");
            }
        }
        // SAFETY: `compiled` was produced just above by this engine's `precompile_*`.
        let artifact = if component {
            unsafe { Component::deserialize(&self.engine, &compiled) }.map(Artifact::Component)
        } else {
            unsafe { Module::deserialize(&self.engine, &compiled) }.map(Artifact::Module)
        };
        artifact.map_err(|e| {
            RuntimeError::Platform(format!("loading compiled {what}: {}", error_chain(&e)))
        })
    }

    fn prepare_sync(&self, bytes: &[u8]) -> Result<Arc<Prepared>, RuntimeError> {
        let component = detect_component(bytes).ok_or_else(|| {
            if bytes.starts_with(&MODULE_HEADER[..4]) {
                init_error("unsupported WebAssembly binary version (expected a core module or a component)")
            } else {
                init_error("the code is not a WebAssembly binary (no \\0asm header)")
            }
        })?;
        let sha = hex::encode(Sha256::digest(bytes));
        if let Some(p) = lock(&self.artifacts).get(&sha) {
            return Ok(p.clone());
        }
        // One compilation per module at a time: concurrent cold starts of the same function
        // wait for the first instead of compiling it again.
        let gate = lock(&self.inflight).entry(sha.clone()).or_default().clone();
        let _compiling = lock(&gate);
        if let Some(p) = lock(&self.artifacts).get(&sha) {
            return Ok(p.clone());
        }
        let result = self.load_or_compile(bytes, component, &sha);
        lock(&self.inflight).remove(&sha);
        result
    }

    fn load_or_compile(
        &self,
        bytes: &[u8],
        component: bool,
        sha: &str,
    ) -> Result<Arc<Prepared>, RuntimeError> {
        let sha = sha.to_string();
        let artifact = match self.load_cached(&self.cache_path(&sha), component) {
            Some(a) => a,
            None => self.compile(bytes, component, &sha)?,
        };
        let prepared = Arc::new(Prepared {
            sha256: sha.clone(),
            artifact,
            size: bytes.len(),
        });
        lock(&self.artifacts).insert(sha, prepared.clone());
        Ok(prepared)
    }

    fn pre_for(&self, prepared: &Prepared, kind: WasmKind) -> Result<Pre, RuntimeError> {
        let key = (prepared.sha256.clone(), kind);
        if let Some(pre) = lock(&self.pres).get(&key) {
            return Ok(pre.clone());
        }
        let link = |e: wasmtime::Error| {
            init_error(format!("cannot link the function: {}", error_chain(&e)))
        };
        let pre = match (&prepared.artifact, kind) {
            (Artifact::Module(m), WasmKind::Wasi) => {
                match m.get_export("_start") {
                    Some(wasmtime::ExternType::Func(_)) => {}
                    _ => {
                        return Err(init_error(
                            "a wasm:wasi module must be a WASI command exporting `_start`",
                        ));
                    }
                }
                Pre::Module(self.module_linker.instantiate_pre(m).map_err(link)?)
            }
            (Artifact::Module(_), WasmKind::Http) => {
                return Err(init_error(
                    "wasm:http needs a component exporting wasi:http/incoming-handler, not a core module",
                ));
            }
            (Artifact::Component(c), WasmKind::Wasi) => {
                let pre = self.component_linker.instantiate_pre(c).map_err(link)?;
                Pre::Command(CommandPre::new(pre).map_err(|e| {
                    init_error(format!(
                        "a wasm:wasi component must export wasi:cli/run: {}",
                        error_chain(&e)
                    ))
                })?)
            }
            (Artifact::Component(c), WasmKind::Http) => {
                let pre = self.component_linker.instantiate_pre(c).map_err(link)?;
                Pre::Http(ProxyPre::new(pre).map_err(|e| {
                    init_error(format!(
                        "a wasm:http component must export wasi:http/incoming-handler: {}",
                        error_chain(&e)
                    ))
                })?)
            }
        };
        lock(&self.pres).insert(key, pre.clone());
        Ok(pre)
    }
}

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The wasmtime runtime. Cheap to clone.
#[derive(Clone)]
pub struct WasmRuntime {
    inner: Arc<Inner>,
}

impl WasmRuntime {
    /// Creates the engine (probing the pooling allocator), the linkers, the artifact cache
    /// directory and the epoch ticker.
    pub fn new(config: WasmConfig) -> Result<Self, RuntimeError> {
        let (engine, pooling) = build_engine(&config)?;
        let platform = |e: wasmtime::Error| {
            RuntimeError::Platform(format!("wasm linker: {}", error_chain(&e)))
        };

        let mut module_linker = wasmtime::Linker::<P1State>::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut module_linker, |s| &mut s.wasi)
            .map_err(platform)?;

        let mut component_linker = wasmtime::component::Linker::<CompState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut component_linker).map_err(platform)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut component_linker)
            .map_err(platform)?;

        let bundle_dir = config.cache_dir.join("bundles");
        let cache_dir = config.cache_dir.join(compat_tag(&engine));
        std::fs::create_dir_all(&cache_dir).map_err(|e| {
            RuntimeError::Platform(format!(
                "cannot create the wasm cache directory {}: {e}",
                cache_dir.display()
            ))
        })?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_ticker(&engine, config.epoch_tick, ticker_stop.clone())?;
        tracing::info!(pooling, cache = %cache_dir.display(), "wasm runtime ready");

        Ok(WasmRuntime {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(config.max_concurrent_instances.max(1))),
                engine,
                config,
                pooling,
                module_linker,
                component_linker,
                cache_dir,
                bundle_dir,
                artifacts: Mutex::new(HashMap::new()),
                inflight: Mutex::new(HashMap::new()),
                code_index: Mutex::new(HashMap::new()),
                pres: Mutex::new(HashMap::new()),
                compilations: AtomicU64::new(0),
                cache_loads: AtomicU64::new(0),
                ticker_stop,
            }),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub fn stats(&self) -> WasmStats {
        WasmStats {
            compilations: self.inner.compilations.load(Ordering::Relaxed),
            cache_loads: self.inner.cache_loads.load(Ordering::Relaxed),
            pooling: self.inner.pooling,
        }
    }

    /// Validates, compiles (or loads from the on-disk cache) and remembers `bytes`. A non-wasm
    /// or corrupt upload is a [`RuntimeError::Init`] with a message fit for a 400 at deploy.
    /// Compilation runs on the blocking pool.
    pub async fn prepare(&self, bytes: Vec<u8>) -> Result<Arc<Prepared>, RuntimeError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.prepare_sync(&bytes))
            .await
            .map_err(|e| RuntimeError::Platform(format!("wasm compilation task failed: {e}")))?
    }

    /// [`WasmRuntime::prepare`] of an action's code string (the module, or a zip archive holding
    /// it), remembered by identity.
    async fn code_info(
        &self,
        code: &Arc<str>,
        binary: bool,
    ) -> Result<Arc<CodeInfo>, RuntimeError> {
        let key = Arc::as_ptr(code).cast::<u8>() as usize;
        if let Some((known, info)) = lock(&self.inner.code_index).get(&key)
            && Arc::ptr_eq(known, code)
        {
            return Ok(info.clone());
        }
        let bytes = decode_code(code, binary)?;
        let zip = bundle::is_zip(&bytes);
        let bytes = if zip {
            tokio::task::spawn_blocking(move || bundle::wasm_of_zip(&bytes))
                .await
                .map_err(|e| RuntimeError::Platform(format!("zip task failed: {e}")))??
        } else {
            bytes
        };
        let info = Arc::new(CodeInfo {
            prepared: self.prepare(bytes).await?,
            zip,
            bundles: Mutex::new(HashMap::new()),
        });
        let mut index = lock(&self.inner.code_index);
        if index.len() >= CODE_INDEX_CAPACITY {
            index.clear();
        }
        index.insert(key, (code.clone(), info.clone()));
        Ok(info)
    }

    /// The unpacked directory `dir` of the zip upload `code` (unpacked on first use).
    async fn bundle(
        &self,
        info: &CodeInfo,
        code: &str,
        binary: bool,
        dir: &str,
    ) -> Result<PathBuf, RuntimeError> {
        if let Some(p) = lock(&info.bundles).get(dir) {
            return Ok(p.clone());
        }
        if !info.zip {
            return Err(init_error(format!(
                "annotation {} needs the code uploaded as a zip archive holding the .wasm and the directory",
                nimbus_model::wasm::ANNOTATION_DIR
            )));
        }
        let bytes = decode_code(code, binary)?;
        let root = self.inner.bundle_dir.clone();
        let d = dir.to_string();
        let path = tokio::task::spawn_blocking(move || {
            let target = bundle::bundle_path(&root, &bytes, &d);
            bundle::extract_dir(&bytes, &d, &target).map(|()| target)
        })
        .await
        .map_err(|e| RuntimeError::Platform(format!("unzip task failed: {e}")))??;
        lock(&info.bundles).insert(dir.to_string(), path.clone());
        Ok(path)
    }

    /// The capabilities an instance spec grants (see `nimbus_model::wasm`), unpacking the
    /// bundled directory if one is declared.
    async fn capabilities(
        &self,
        spec: &InstanceSpec,
        info: &CodeInfo,
    ) -> Result<Capabilities, RuntimeError> {
        let Some(raw) = spec.env.get(nimbus_model::wasm::CAPS_ENV_KEY) else {
            return Ok(Capabilities::default());
        };
        let granted: nimbus_model::wasm::WasmCaps = serde_json::from_str(raw)
            .map_err(|e| init_error(format!("unreadable wasm capabilities: {e}")))?;
        let allowed_outbound_hosts = granted
            .allowed_hosts
            .iter()
            .map(|p| {
                HostPattern::parse(p).map_err(|e| {
                    init_error(format!(
                        "annotation {}: {e}",
                        nimbus_model::wasm::ANNOTATION_ALLOWED_HOSTS
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bundled_dir = match &granted.dir {
            Some(d) => Some(self.bundle(info, &spec.code, spec.binary, d).await?),
            None => None,
        };
        Ok(Capabilities {
            bundled_dir,
            env: Vec::new(),
            env_params: granted.env,
            allowed_outbound_hosts,
        })
    }

    /// Deploy-time check: prepares `bytes` and links them for `kind` (imports satisfiable,
    /// required exports present), caching the `InstancePre`.
    pub async fn validate(
        &self,
        kind: &str,
        bytes: Vec<u8>,
    ) -> Result<Arc<Prepared>, RuntimeError> {
        let k = WasmKind::from_kind(kind)
            .ok_or_else(|| RuntimeError::UnsupportedKind(kind.to_string()))?;
        let prepared = self.prepare(bytes).await?;
        self.inner.pre_for(&prepared, k)?;
        Ok(prepared)
    }

    /// The kind of a prepared artifact when the user gave none: `wasm:http` for a component
    /// exporting `wasi:http/incoming-handler`, else `wasm:wasi`.
    pub fn infer_kind(&self, prepared: &Prepared) -> &'static str {
        match &prepared.artifact {
            Artifact::Module(_) => KIND_WASI,
            Artifact::Component(c) => {
                let ty = c.component_type();
                let http = ty
                    .exports(&self.inner.engine)
                    .any(|(name, _)| name.starts_with("wasi:http/incoming-handler"));
                if http { KIND_HTTP } else { KIND_WASI }
            }
        }
    }
}

#[async_trait]
impl Runtime for WasmRuntime {
    fn supports(&self, kind: &str) -> bool {
        // The generic kind only for `check`, which resolves it before anything is stored.
        WasmKind::from_kind(kind).is_some() || kind == KIND_INFER
    }

    /// Starts with the capabilities the spec carries (from the action's annotations).
    async fn start(
        &self,
        spec: &InstanceSpec,
        _timeout: Duration,
    ) -> Result<Box<dyn Instance>, RuntimeError> {
        let info = self.code_info(&spec.code, spec.binary).await?;
        let caps = self.capabilities(spec, &info).await?;
        self.start_with_capabilities(spec, caps).await
    }

    /// Deploy-time check: decodes and compiles the module (cached on disk, so the first invoke
    /// does not compile), links it for its kind (resolving the generic `wasm` from the binary),
    /// checks the capabilities and unpacks a bundled directory.
    async fn check(&self, spec: &InstanceSpec) -> Result<String, RuntimeError> {
        let info = self.code_info(&spec.code, spec.binary).await?;
        let kind = if spec.kind == KIND_INFER {
            self.infer_kind(&info.prepared)
        } else {
            WasmKind::from_kind(&spec.kind)
                .ok_or_else(|| RuntimeError::UnsupportedKind(spec.kind.clone()))?
                .as_str()
        };
        let k = WasmKind::from_kind(kind)
            .ok_or_else(|| RuntimeError::UnsupportedKind(kind.to_string()))?;
        self.inner.pre_for(&info.prepared, k)?;
        self.capabilities(spec, &info).await?;
        Ok(kind.to_string())
    }
}

impl WasmRuntime {
    /// [`Runtime::start`] with capabilities beyond the deny-by-default sandbox (a read-only
    /// bundled directory, environment variables, outbound HTTP hosts).
    pub async fn start_with_capabilities(
        &self,
        spec: &InstanceSpec,
        caps: Capabilities,
    ) -> Result<Box<dyn Instance>, RuntimeError> {
        let kind = WasmKind::from_kind(&spec.kind)
            .ok_or_else(|| RuntimeError::UnsupportedKind(spec.kind.clone()))?;
        if let Some(dir) = &caps.bundled_dir
            && !dir.is_dir()
        {
            return Err(RuntimeError::Platform(format!(
                "the bundled directory {} does not exist",
                dir.display()
            )));
        }
        let info = self.code_info(&spec.code, spec.binary).await?;
        let pre = self.inner.pre_for(&info.prepared, kind)?;
        let memory_limit =
            usize::try_from(spec.limits.memory.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        let runner = Arc::new(run::Runner {
            inner: self.inner.clone(),
            pre,
            memory_limit,
            action_name: spec.action_name.clone(),
            caps: Arc::new(caps),
        });
        Ok(Box::new(WasmInstance { runner }))
    }
}

/// An instance of one function: a handle on its `InstancePre`. Each run instantiates afresh, so
/// runs are independent and may always overlap (see [`Instance::concurrent`]); the runtime's
/// slots bound how many run at once.
struct WasmInstance {
    runner: Arc<run::Runner>,
}

#[async_trait]
impl Instance for WasmInstance {
    fn concurrent(&self) -> Option<Arc<dyn ConcurrentRunner>> {
        Some(self.runner.clone())
    }

    async fn run(&mut self, req: RunRequest) -> RunOutcome {
        self.runner.run(req).await
    }

    async fn shutdown(self: Box<Self>) {}
}

#[async_trait]
impl ConcurrentRunner for run::Runner {
    async fn run(&self, req: RunRequest) -> RunOutcome {
        run::Runner::run(self, req).await
    }
}
