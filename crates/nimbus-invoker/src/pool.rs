//! The instance pool of one node.
//!
//! - **Warm instances** per action version (the pool key), reused while idle and stopped after the
//!   idle timeout, but never below a function's `min_instances`.
//! - **A memory budget**: every live instance reserves its function's memory limit. When a new
//!   instance would not fit, idle instances of other functions are stopped (longest idle first);
//!   if that is not enough the request *waits*. Waiters are woken round-robin across the calling
//!   namespaces, so one namespace's burst cannot starve the others.
//! - **`max_instances`** per function: over it, requests wait for one of its instances.
//! - **Stem cells**: per kind, pre-started runtime processes without code, so a cold start only
//!   loads the function. A background task keeps as many as recent cold starts of that kind asked
//!   for (at least one, at most `stem_cells_per_kind`) and replaces the ones used.
//! - **Concurrency**: an instance whose runtime multiplexes (Node.js) serves up to the action's
//!   `limits.concurrency` activations at once before another instance is started.

use nimbus_runtime::{
    ConcurrentRunner, Instance, InstanceSpec, RunOutcome, RunRequest, Runtime, RuntimeError,
    StemCell,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, oneshot};

#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// An idle instance older than this is stopped (scale to zero).
    pub idle_timeout: Duration,
    /// Live instances (starting + idle + busy) on this node.
    pub max_instances: usize,
    /// Memory the node's function instances may reserve together, in MB.
    pub memory_budget_mb: u64,
    /// Upper bound of pre-started instances kept per kind (0 disables stem cells).
    pub stem_cells_per_kind: usize,
    /// Kinds to keep stem cells for.
    pub stem_kinds: Vec<String>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            idle_timeout: Duration::from_secs(600),
            max_instances: 64,
            memory_budget_mb: 4096,
            stem_cells_per_kind: 4,
            stem_kinds: vec!["nodejs:20".into(), "python:3.11".into()],
        }
    }
}

/// The function an instance serves, as the pool needs to know it.
#[derive(Debug, Clone)]
pub struct FunctionRef {
    /// Action version identity: instances are only reused for the same key.
    pub key: String,
    /// `/ns/[pkg/]name`.
    pub action: String,
    pub version: String,
    /// The namespace owning the action (for listings).
    pub namespace: String,
    /// The namespace the work is done for (for fair queuing).
    pub caller: String,
    pub memory_mb: u64,
    pub min_instances: usize,
    pub max_instances: Option<usize>,
    /// Activations one instance may run at once (`limits.concurrency`).
    pub concurrency: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    Starting,
    Idle,
    Busy,
}

impl InstanceState {
    pub fn as_str(&self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Idle => "idle",
            InstanceState::Busy => "busy",
        }
    }
}

/// One live instance, for the instances endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    pub id: u64,
    pub action: String,
    pub version: String,
    pub namespace: String,
    pub state: InstanceState,
    pub memory_mb: u64,
    /// Epoch ms of the last state change.
    pub since: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub starting: usize,
    pub idle: usize,
    pub busy: usize,
    pub stem_cells: BTreeMap<String, usize>,
    pub memory_used_mb: u64,
    pub memory_budget_mb: u64,
    /// Requests waiting for memory or for an instance slot.
    pub waiting: usize,
}

/// How an instance was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Warm,
    /// Started for this request; `stem` when a stem cell was specialised.
    Cold {
        init_ms: u64,
        stem: bool,
    },
}

struct Live {
    f: FunctionRef,
    state: InstanceState,
    since: i64,
    last_used: Instant,
    /// Set for an instance that runs several activations at once.
    runner: Option<Arc<dyn ConcurrentRunner>>,
    in_flight: usize,
    /// While starting: requests waiting to share this instance (concurrency > 1).
    pending: usize,
}

#[derive(Default)]
struct State {
    live: HashMap<u64, Live>,
    /// Instances not checked out: every idle one-at-a-time instance, and every concurrent
    /// instance (whose runs go through its shared runner).
    parked: HashMap<u64, Box<dyn Instance>>,
    used_mb: u64,
    next_id: u64,
    /// Waiting requests per calling namespace, and the order namespaces are served in.
    waiters: HashMap<String, VecDeque<oneshot::Sender<()>>>,
    turn: VecDeque<String>,
    /// Functions with `min_instances > 0`, by action name (the newest version wins).
    mins: HashMap<String, (FunctionRef, InstanceSpec)>,
    stems: HashMap<String, Vec<Box<dyn StemCell>>>,
    /// Cold starts per kind in the last minute: the stem-cell demand signal.
    cold_starts: HashMap<String, VecDeque<Instant>>,
}

impl State {
    fn count(&self, key: &str) -> usize {
        self.live.values().filter(|l| l.f.key == key).count()
    }

    fn waiting(&self) -> usize {
        self.waiters.values().map(VecDeque::len).sum()
    }

    /// Wakes the next waiter, taking namespaces in turn.
    fn wake_one(&mut self) {
        while let Some(ns) = self.turn.pop_front() {
            let Some(q) = self.waiters.get_mut(&ns) else {
                continue;
            };
            let mut woke = false;
            while let Some(tx) = q.pop_front() {
                if tx.send(()).is_ok() {
                    woke = true;
                    break;
                }
            }
            if q.is_empty() {
                self.waiters.remove(&ns);
            } else {
                self.turn.push_back(ns);
            }
            if woke {
                return;
            }
        }
    }

    fn wait(&mut self, ns: &str, front: bool) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let q = self.waiters.entry(ns.to_string()).or_default();
        if front {
            q.push_front(tx);
        } else {
            q.push_back(tx);
        }
        if !self.turn.iter().any(|n| n == ns) {
            self.turn.push_back(ns.to_string());
        }
        rx
    }

    /// Picks idle instances to stop so that `need_mb` more fits, longest idle first, never
    /// taking a function below its `min_instances` nor touching `keep_key`.
    fn evict_for(
        &mut self,
        need_mb: u64,
        budget: u64,
        keep_key: &str,
    ) -> Option<Vec<Box<dyn Instance>>> {
        let mut candidates: Vec<(u64, Instant)> = self
            .live
            .iter()
            .filter(|(_, l)| l.state == InstanceState::Idle && l.f.key != keep_key)
            .map(|(id, l)| (*id, l.last_used))
            .collect();
        candidates.sort_by_key(|(_, t)| *t);
        let mut freed = 0;
        let mut chosen = Vec::new();
        let mut per_key: HashMap<String, usize> = HashMap::new();
        for (id, _) in candidates {
            if self.used_mb - freed + need_mb <= budget {
                break;
            }
            let Some(l) = self.live.get(&id) else {
                continue;
            };
            let left = per_key
                .entry(l.f.key.clone())
                .or_insert_with(|| self.count(&l.f.key));
            if *left <= l.f.min_instances {
                continue;
            }
            *left -= 1;
            freed += l.f.memory_mb;
            chosen.push(id);
        }
        if self.used_mb - freed + need_mb > budget {
            return None;
        }
        let mut out = Vec::new();
        for id in chosen {
            if let Some(l) = self.live.remove(&id) {
                self.used_mb -= l.f.memory_mb;
            }
            if let Some(i) = self.parked.remove(&id) {
                out.push(i);
            }
        }
        Some(out)
    }

    fn reserve(&mut self, f: &FunctionRef) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.used_mb += f.memory_mb;
        self.live.insert(
            id,
            Live {
                f: f.clone(),
                state: InstanceState::Starting,
                since: nimbus_model::now_millis(),
                last_used: Instant::now(),
                runner: None,
                in_flight: 0,
                pending: 0,
            },
        );
        id
    }

    fn release(&mut self, id: u64) {
        if let Some(l) = self.live.remove(&id) {
            self.used_mb -= l.f.memory_mb;
        }
        self.parked.remove(&id);
        self.wake_one();
    }
}

/// An instance checked out of the pool for one run: the instance itself, or a share of a
/// concurrent one.
pub(crate) enum Lease {
    Owned {
        id: u64,
        instance: Box<dyn Instance>,
    },
    Shared {
        id: u64,
        runner: Arc<dyn ConcurrentRunner>,
    },
}

impl Lease {
    fn id(&self) -> u64 {
        match self {
            Lease::Owned { id, .. } | Lease::Shared { id, .. } => *id,
        }
    }

    pub(crate) async fn run(&mut self, req: RunRequest) -> RunOutcome {
        match self {
            Lease::Owned { instance, .. } => instance.run(req).await,
            Lease::Shared { runner, .. } => runner.run(req).await,
        }
    }
}

struct Inner {
    runtimes: Vec<Arc<dyn Runtime>>,
    cfg: PoolConfig,
    state: Mutex<State>,
    /// Pokes the maintenance task (stem refill, minimum instances).
    maintain: Notify,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the state itself stays consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn runtime_for(&self, kind: &str) -> Option<Arc<dyn Runtime>> {
        self.runtimes.iter().find(|r| r.supports(kind)).cloned()
    }
}

pub(crate) struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    pub(crate) fn new(runtimes: Vec<Arc<dyn Runtime>>, cfg: PoolConfig) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                runtimes,
                cfg,
                state: Mutex::new(State::default()),
                maintain: Notify::new(),
            }),
        }
    }

    pub(crate) fn supports(&self, kind: &str) -> bool {
        self.inner.runtime_for(kind).is_some()
    }

    pub(crate) fn runtime_for(&self, kind: &str) -> Option<Arc<dyn Runtime>> {
        self.inner.runtime_for(kind)
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        self.inner.cfg.idle_timeout
    }

    /// Returns a warm instance for `f`, or starts one (from a stem cell when there is one).
    pub(crate) async fn checkout(
        &self,
        f: &FunctionRef,
        spec: &InstanceSpec,
    ) -> Result<(Lease, Start), RuntimeError> {
        let inner = &self.inner;
        let budget = inner.cfg.memory_budget_mb;
        if f.memory_mb > budget {
            return Err(RuntimeError::Platform(format!(
                "the action's memory limit ({} MB) exceeds this node's memory budget ({budget} MB)",
                f.memory_mb
            )));
        }
        let mut front = false;
        let id = loop {
            let (rx, evicted) = {
                let mut st = inner.lock();
                // A concurrent instance with room first (it is running anyway), the busiest one,
                // so that the others can drain and idle out.
                let shared = st
                    .live
                    .iter_mut()
                    .filter(|(_, l)| l.f.key == f.key && l.state != InstanceState::Starting)
                    .filter(|(_, l)| l.runner.is_some() && l.in_flight < l.f.concurrency)
                    .max_by_key(|(_, l)| l.in_flight);
                if let Some((id, l)) = shared
                    && let Some(runner) = l.runner.clone()
                {
                    l.in_flight += 1;
                    l.state = InstanceState::Busy;
                    l.since = nimbus_model::now_millis();
                    return Ok((Lease::Shared { id: *id, runner }, Start::Warm));
                }
                // Most recently used first: the one most likely still hot in caches.
                let warm = st
                    .live
                    .iter()
                    .filter(|(id, l)| {
                        l.f.key == f.key && l.runner.is_none() && st.parked.contains_key(id)
                    })
                    .max_by_key(|(_, l)| l.last_used)
                    .map(|(id, _)| *id);
                if let Some(id) = warm
                    && let Some(instance) = st.parked.remove(&id)
                {
                    if let Some(l) = st.live.get_mut(&id) {
                        l.state = InstanceState::Busy;
                        l.since = nimbus_model::now_millis();
                    }
                    return Ok((Lease::Owned { id, instance }, Start::Warm));
                }
                // A concurrent function's instance that is still starting has room for this
                // request too: wait for it rather than start another (a cold burst then starts
                // one instance per `concurrency` requests, not one per request).
                let share_starting = if f.concurrency > 1
                    && let Some(l) = st.live.values_mut().find(|l| {
                        l.f.key == f.key
                            && l.state == InstanceState::Starting
                            && l.pending + 1 < f.concurrency
                    }) {
                    l.pending += 1;
                    true
                } else {
                    false
                };
                let at_max = f.max_instances.is_some_and(|m| st.count(&f.key) >= m);
                let mut evicted = None;
                if !share_starting && !at_max && st.live.len() < inner.cfg.max_instances {
                    if st.used_mb + f.memory_mb <= budget {
                        break st.reserve(f);
                    }
                    evicted = st.evict_for(f.memory_mb, budget, &f.key);
                }
                match evicted {
                    Some(e) => (None, e),
                    None => (Some(st.wait(&f.caller, front)), Vec::new()),
                }
            };
            for i in evicted {
                i.shutdown().await;
            }
            if let Some(rx) = rx {
                let _ = rx.await;
                // Woken: keep our place at the head of our namespace's queue.
                front = true;
            }
        };
        match self.start_instance(spec).await {
            Ok((instance, start)) => {
                let runner = if f.concurrency > 1 {
                    instance.concurrent()
                } else {
                    None
                };
                let mut st = inner.lock();
                let pending = st.live.get(&id).map_or(0, |l| l.pending);
                if let Some(l) = st.live.get_mut(&id) {
                    l.pending = 0;
                    l.state = InstanceState::Busy;
                    l.since = nimbus_model::now_millis();
                    if runner.is_some() {
                        l.runner = runner.clone();
                        l.in_flight = 1;
                    }
                }
                match runner {
                    Some(runner) => {
                        st.parked.insert(id, instance);
                        // The requests that waited for this instance can share it now.
                        for _ in 0..pending.max(1) {
                            st.wake_one();
                        }
                        Ok((Lease::Shared { id, runner }, start))
                    }
                    None => {
                        // It cannot be shared after all: the waiters try on their own.
                        for _ in 0..pending {
                            st.wake_one();
                        }
                        Ok((Lease::Owned { id, instance }, start))
                    }
                }
            }
            Err(e) => {
                let mut st = inner.lock();
                let pending = st.live.get(&id).map_or(0, |l| l.pending);
                st.release(id);
                // Those waiting to share it must try on their own.
                for _ in 0..pending {
                    st.wake_one();
                }
                Err(e)
            }
        }
    }

    /// Starts an instance: from a stem cell of the kind if one is ready, else from scratch.
    async fn start_instance(
        &self,
        spec: &InstanceSpec,
    ) -> Result<(Box<dyn Instance>, Start), RuntimeError> {
        let inner = &self.inner;
        let started = Instant::now();
        let timeout = Duration::from_millis(spec.limits.timeout);
        let stem = {
            let mut st = inner.lock();
            let q = st.cold_starts.entry(spec.kind.clone()).or_default();
            q.push_back(started);
            // Stem cells start without network or extra binds; functions with outbound access
            // or mounted secrets start afresh.
            if spec.outbound_network || !spec.ro_binds.is_empty() {
                None
            } else {
                st.stems.get_mut(&spec.kind).and_then(Vec::pop)
            }
        };
        inner.maintain.notify_one();
        if let Some(cell) = stem {
            match cell.specialize(spec, timeout).await {
                Ok(i) => {
                    let init_ms = started.elapsed().as_millis() as u64;
                    return Ok((
                        i,
                        Start::Cold {
                            init_ms,
                            stem: true,
                        },
                    ));
                }
                // A dead stem cell is the platform's problem, not the function's: start afresh.
                Err(RuntimeError::Platform(m)) => {
                    tracing::warn!(error = %m, "stem cell unusable; starting a fresh instance")
                }
                Err(e) => return Err(e),
            }
        }
        let rt = inner
            .runtime_for(&spec.kind)
            .ok_or_else(|| RuntimeError::UnsupportedKind(spec.kind.clone()))?;
        let i = rt.start(spec, timeout).await?;
        Ok((
            i,
            Start::Cold {
                init_ms: started.elapsed().as_millis() as u64,
                stem: false,
            },
        ))
    }

    pub(crate) fn checkin(&self, lease: Lease) {
        let mut st = self.inner.lock();
        let id = lease.id();
        let Some(l) = st.live.get_mut(&id) else {
            // Not tracked any more (shut down, or a shared instance already retired).
            drop(st);
            if let Lease::Owned { instance, .. } = lease {
                tokio::spawn(async move { instance.shutdown().await });
            }
            return;
        };
        l.in_flight = l.in_flight.saturating_sub(1);
        if l.in_flight == 0 {
            l.state = InstanceState::Idle;
            l.since = nimbus_model::now_millis();
        }
        l.last_used = Instant::now();
        if let Lease::Owned { instance, .. } = lease {
            st.parked.insert(id, instance);
        }
        st.wake_one();
    }

    /// Stops the lease's instance (it died or broke the protocol). For a shared instance, the
    /// runs still in flight on it end on their own and their check-ins are ignored.
    pub(crate) async fn discard(&self, lease: Lease) {
        let id = lease.id();
        let instance = match lease {
            Lease::Owned { instance, .. } => Some(instance),
            Lease::Shared { .. } => self.inner.lock().parked.remove(&id),
        };
        if let Some(i) = instance {
            i.shutdown().await;
        }
        self.inner.lock().release(id);
        self.inner.maintain.notify_one();
    }

    /// Keeps `f.min_instances` instances of `f` warm from now on (0 forgets it).
    pub(crate) fn ensure_min(&self, f: FunctionRef, spec: InstanceSpec) {
        let mut st = self.inner.lock();
        if f.min_instances == 0 {
            st.mins.remove(&f.action);
        } else {
            st.mins.insert(f.action.clone(), (f, spec));
        }
        drop(st);
        self.inner.maintain.notify_one();
    }

    pub(crate) fn instances(
        &self,
        namespace: Option<&str>,
        action: Option<&str>,
    ) -> Vec<InstanceInfo> {
        let st = self.inner.lock();
        let mut v: Vec<InstanceInfo> = st
            .live
            .iter()
            .filter(|(_, l)| namespace.is_none_or(|n| l.f.namespace == n))
            .filter(|(_, l)| action.is_none_or(|a| l.f.action == a))
            .map(|(id, l)| InstanceInfo {
                id: *id,
                action: l.f.action.clone(),
                version: l.f.version.clone(),
                namespace: l.f.namespace.clone(),
                state: l.state,
                memory_mb: l.f.memory_mb,
                since: l.since,
            })
            .collect();
        v.sort_by_key(|i| i.id);
        v
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let st = self.inner.lock();
        let by = |s: InstanceState| st.live.values().filter(|l| l.state == s).count();
        PoolStats {
            starting: by(InstanceState::Starting),
            idle: by(InstanceState::Idle),
            busy: by(InstanceState::Busy),
            stem_cells: st.stems.iter().map(|(k, v)| (k.clone(), v.len())).collect(),
            memory_used_mb: st.used_mb,
            memory_budget_mb: self.inner.cfg.memory_budget_mb,
            waiting: st.waiting(),
        }
    }

    pub(crate) async fn shutdown(&self) {
        let (idle, stems) = {
            let mut st = self.inner.lock();
            let ids: Vec<u64> = st.parked.keys().copied().collect();
            for id in &ids {
                if let Some(l) = st.live.remove(id) {
                    st.used_mb -= l.f.memory_mb;
                }
            }
            st.mins.clear();
            let idle: Vec<Box<dyn Instance>> =
                std::mem::take(&mut st.parked).into_values().collect();
            let stems: Vec<Box<dyn StemCell>> = std::mem::take(&mut st.stems)
                .into_values()
                .flatten()
                .collect();
            (idle, stems)
        };
        for i in idle {
            i.shutdown().await;
        }
        for s in stems {
            s.shutdown().await;
        }
    }

    /// Starts the background task: idle eviction, minimum instances, stem-cell refill.
    pub(crate) fn spawn_maintenance(&self) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let tick = (self.inner.cfg.idle_timeout / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                maintain(&inner).await;
                let _ = tokio::time::timeout(tick, inner.maintain.notified()).await;
            }
        });
    }
}

/// One maintenance pass.
async fn maintain(inner: &Arc<Inner>) {
    // 1. Idle eviction, never below a function's minimum.
    let expired: Vec<Box<dyn Instance>> = {
        let mut st = inner.lock();
        let now = Instant::now();
        let mut ids: Vec<(u64, Instant)> = st
            .live
            .iter()
            .filter(|(_, l)| {
                l.state == InstanceState::Idle
                    && now.duration_since(l.last_used) >= inner.cfg.idle_timeout
            })
            .map(|(id, l)| (*id, l.last_used))
            .collect();
        ids.sort_by_key(|(_, t)| *t);
        let mut out = Vec::new();
        for (id, _) in ids {
            let Some(l) = st.live.get(&id) else { continue };
            let (key, min) = (
                l.f.key.clone(),
                st.mins
                    .get(&l.f.action)
                    .filter(|(m, _)| m.key == l.f.key)
                    .map_or(0, |(m, _)| m.min_instances),
            );
            if st.count(&key) <= min {
                continue;
            }
            if let Some(l) = st.live.remove(&id) {
                st.used_mb -= l.f.memory_mb;
            }
            if let Some(i) = st.parked.remove(&id) {
                out.push(i);
            }
        }
        for _ in 0..out.len() {
            st.wake_one();
        }
        out
    };
    if !expired.is_empty() {
        tracing::debug!(count = expired.len(), "stopping idle instances");
    }
    for i in expired {
        i.shutdown().await;
    }

    // 2. Minimum instances: start what is missing, within the budget.
    let missing: Vec<(u64, InstanceSpec)> = {
        let mut st = inner.lock();
        let mins: Vec<(FunctionRef, InstanceSpec)> = st.mins.values().cloned().collect();
        let mut out = Vec::new();
        for (f, spec) in mins {
            let have = st.count(&f.key);
            for _ in have..f.min_instances {
                if st.used_mb + f.memory_mb > inner.cfg.memory_budget_mb
                    || st.live.len() >= inner.cfg.max_instances
                {
                    break;
                }
                out.push((st.reserve(&f), spec.clone()));
            }
        }
        out
    };
    for (id, spec) in missing {
        let pool = Pool {
            inner: inner.clone(),
        };
        match pool.start_instance(&spec).await {
            Ok((instance, _)) => pool.checkin(Lease::Owned { id, instance }),
            Err(e) => {
                tracing::warn!(error = %e, action = %spec.action_name, "could not start a minimum instance");
                inner.lock().release(id);
            }
        }
    }

    // 3. Stem cells: as many per kind as cold starts in the last minute, at least one.
    let cap = inner.cfg.stem_cells_per_kind;
    if cap == 0 {
        return;
    }
    for kind in &inner.cfg.stem_kinds {
        let want = {
            let mut st = inner.lock();
            let now = Instant::now();
            let q = st.cold_starts.entry(kind.clone()).or_default();
            while q
                .front()
                .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
            {
                q.pop_front();
            }
            let target = q.len().clamp(1, cap);
            target.saturating_sub(st.stems.get(kind).map_or(0, Vec::len))
        };
        let Some(rt) = inner.runtime_for(kind) else {
            continue;
        };
        for _ in 0..want {
            match rt.prestart(kind).await {
                Ok(Some(cell)) => inner
                    .lock()
                    .stems
                    .entry(kind.clone())
                    .or_default()
                    .push(cell),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, kind = %kind, "could not pre-start a stem cell");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use nimbus_model::ActionLimits;
    use nimbus_runtime::{RunOutcome, RunRequest, RunResult};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A runtime double: counts starts, stem cells and live processes; runs instantly.
    #[derive(Default)]
    struct Fake {
        started: AtomicUsize,
        prestarted: AtomicUsize,
        live: Arc<AtomicUsize>,
    }

    struct FakeInstance {
        live: Arc<AtomicUsize>,
    }

    struct FakeStem {
        live: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl Runtime for Fake {
        fn supports(&self, kind: &str) -> bool {
            kind == "fake"
        }
        async fn start(
            &self,
            _: &InstanceSpec,
            _: Duration,
        ) -> Result<Box<dyn Instance>, RuntimeError> {
            self.started.fetch_add(1, Ordering::SeqCst);
            self.live.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(FakeInstance {
                live: self.live.clone(),
            }))
        }
        async fn prestart(&self, _: &str) -> Result<Option<Box<dyn StemCell>>, RuntimeError> {
            self.prestarted.fetch_add(1, Ordering::SeqCst);
            self.live.fetch_add(1, Ordering::SeqCst);
            Ok(Some(Box::new(FakeStem {
                live: self.live.clone(),
            })))
        }
    }

    #[async_trait]
    impl StemCell for FakeStem {
        fn kind(&self) -> &str {
            "fake"
        }
        async fn specialize(
            self: Box<Self>,
            _: &InstanceSpec,
            _: Duration,
        ) -> Result<Box<dyn Instance>, RuntimeError> {
            Ok(Box::new(FakeInstance {
                live: self.live.clone(),
            }))
        }
        async fn shutdown(self: Box<Self>) {
            self.live.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A runtime double whose instances multiplex: every run goes through one shared runner.
    #[derive(Default)]
    struct Multiplexing {
        started: AtomicUsize,
    }

    struct SharedInstance(Arc<FakeRunner>);

    struct FakeRunner;

    #[async_trait]
    impl ConcurrentRunner for FakeRunner {
        async fn run(&self, _: RunRequest) -> RunOutcome {
            RunOutcome {
                result: RunResult::Ok(serde_json::json!({})),
                logs: vec![],
                reusable: true,
            }
        }
    }

    #[async_trait]
    impl Runtime for Multiplexing {
        fn supports(&self, kind: &str) -> bool {
            kind == "fake"
        }
        async fn start(
            &self,
            _: &InstanceSpec,
            _: Duration,
        ) -> Result<Box<dyn Instance>, RuntimeError> {
            self.started.fetch_add(1, Ordering::SeqCst);
            // Long enough for a burst to arrive while it is still starting.
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(Box::new(SharedInstance(Arc::new(FakeRunner))))
        }
    }

    #[async_trait]
    impl Instance for SharedInstance {
        fn concurrent(&self) -> Option<Arc<dyn ConcurrentRunner>> {
            Some(self.0.clone())
        }
        async fn run(&mut self, req: RunRequest) -> RunOutcome {
            self.0.run(req).await
        }
        async fn shutdown(self: Box<Self>) {}
    }

    #[tokio::test]
    async fn concurrent_instances_are_shared_up_to_the_actions_concurrency() {
        let rt = Arc::new(Multiplexing::default());
        let pool = Pool::new(vec![rt.clone()], config(4096));
        let mut c = f("a", "ns", 256);
        c.concurrency = 3;
        let mut leases = Vec::new();
        for _ in 0..3 {
            leases.push(pool.checkout(&c, &spec()).await.unwrap().0);
        }
        assert!(leases.iter().all(|l| matches!(l, Lease::Shared { .. })));
        assert_eq!(
            rt.started.load(Ordering::SeqCst),
            1,
            "three runs share one instance"
        );
        let (fourth, _) = pool.checkout(&c, &spec()).await.unwrap();
        assert_eq!(
            rt.started.load(Ordering::SeqCst),
            2,
            "the fourth needs another"
        );
        assert_eq!(pool.stats().memory_used_mb, 512);
        for l in leases {
            pool.checkin(l);
        }
        let s = pool.stats();
        assert_eq!((s.idle, s.busy), (1, 1));
        // A broken run retires its whole instance.
        pool.discard(fourth).await;
        assert_eq!(pool.stats().memory_used_mb, 256);
        // Concurrency 1 never shares, even on a runtime that could.
        let (one, _) = pool.checkout(&f("b", "ns", 256), &spec()).await.unwrap();
        assert!(matches!(one, Lease::Owned { .. }));
    }

    #[async_trait]
    impl Instance for FakeInstance {
        async fn run(&mut self, _: RunRequest) -> RunOutcome {
            RunOutcome {
                result: RunResult::Ok(serde_json::json!({})),
                logs: vec![],
                reusable: true,
            }
        }
        async fn shutdown(self: Box<Self>) {
            self.live.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn spec() -> InstanceSpec {
        InstanceSpec {
            kind: "fake".into(),
            code: "".into(),
            binary: false,
            main: "main".into(),
            action_name: "/ns/a".into(),
            env: Default::default(),
            limits: ActionLimits::default(),
            outbound_network: false,
            ro_binds: Vec::new(),
        }
    }

    fn f(key: &str, caller: &str, memory_mb: u64) -> FunctionRef {
        FunctionRef {
            key: key.into(),
            action: format!("/ns/{key}"),
            version: "0.0.1".into(),
            namespace: "ns".into(),
            caller: caller.into(),
            memory_mb,
            min_instances: 0,
            max_instances: None,
            concurrency: 1,
        }
    }

    fn config(budget: u64) -> PoolConfig {
        PoolConfig {
            memory_budget_mb: budget,
            stem_cells_per_kind: 0,
            ..Default::default()
        }
    }

    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn warm_instances_are_reused_per_key() {
        let rt = Arc::new(Fake::default());
        let pool = Pool::new(vec![rt.clone()], config(4096));
        let (lease, start) = pool.checkout(&f("a", "ns", 256), &spec()).await.unwrap();
        assert!(matches!(start, Start::Cold { stem: false, .. }));
        pool.checkin(lease);
        let (lease, start) = pool.checkout(&f("a", "ns", 256), &spec()).await.unwrap();
        assert_eq!(start, Start::Warm);
        pool.checkin(lease);
        let (lease, _) = pool.checkout(&f("b", "ns", 256), &spec()).await.unwrap();
        pool.checkin(lease);
        assert_eq!(rt.started.load(Ordering::SeqCst), 2);
        let s = pool.stats();
        assert_eq!((s.idle, s.busy, s.memory_used_mb), (2, 0, 512));
        let listed = pool.instances(Some("ns"), Some("/ns/a"));
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, InstanceState::Idle);
        assert!(pool.instances(Some("other"), None).is_empty());
    }

    #[tokio::test]
    async fn the_memory_budget_evicts_idle_instances_of_other_functions() {
        let rt = Arc::new(Fake::default());
        let pool = Pool::new(vec![rt.clone()], config(512));
        for key in ["a", "b", "c"] {
            let (lease, _) = pool.checkout(&f(key, "ns", 256), &spec()).await.unwrap();
            pool.checkin(lease);
        }
        assert_eq!(
            rt.live.load(Ordering::SeqCst),
            2,
            "never more than the budget holds"
        );
        assert_eq!(pool.stats().memory_used_mb, 512);
        assert!(
            pool.instances(None, Some("/ns/a")).is_empty(),
            "the longest idle was stopped"
        );
    }

    #[tokio::test]
    async fn over_the_budget_work_waits_instead_of_failing() {
        let rt = Arc::new(Fake::default());
        let pool = Arc::new(Pool::new(vec![rt.clone()], config(256)));
        let (busy, _) = pool.checkout(&f("a", "ns", 256), &spec()).await.unwrap();
        let p2 = pool.clone();
        let waiter = tokio::spawn(async move {
            p2.checkout(&f("b", "ns", 256), &spec())
                .await
                .map(|(l, _)| l.id())
        });
        until("the request queues", || pool.stats().waiting == 1).await;
        assert!(!waiter.is_finished());
        pool.checkin(busy); // idle now, so it can be evicted for b
        assert!(waiter.await.unwrap().is_ok());
        assert_eq!(pool.stats().memory_used_mb, 256);
    }

    #[tokio::test]
    async fn waiters_are_served_round_robin_across_namespaces() {
        let rt = Arc::new(Fake::default());
        let pool = Arc::new(Pool::new(vec![rt.clone()], config(256)));
        let (first, _) = pool.checkout(&f("x", "hog", 256), &spec()).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Three queued requests from "hog", then one from "fair".
        for (n, caller) in ["hog", "hog", "hog", "fair"].into_iter().enumerate() {
            let (p, o) = (pool.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let (lease, _) = p
                    .checkout(&f(&format!("k{n}"), caller, 256), &spec())
                    .await
                    .unwrap();
                o.lock().unwrap().push(caller);
                tokio::time::sleep(Duration::from_millis(5)).await;
                p.discard(lease).await;
            }));
            until("queued", || pool.stats().waiting == n + 1).await;
        }
        pool.discard(first).await;
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(order[0], "hog");
        assert_eq!(
            order[1], "fair",
            "the other namespace goes next, not after the whole burst: {order:?}"
        );
    }

    #[tokio::test]
    async fn max_instances_makes_requests_wait_for_the_functions_own_instance() {
        let rt = Arc::new(Fake::default());
        let pool = Arc::new(Pool::new(vec![rt.clone()], config(4096)));
        let mut one = f("a", "ns", 128);
        one.max_instances = Some(1);
        let (busy, _) = pool.checkout(&one, &spec()).await.unwrap();
        let (p2, one2) = (pool.clone(), one.clone());
        let waiter = tokio::spawn(async move { p2.checkout(&one2, &spec()).await.map(|(_, s)| s) });
        until("the second request waits", || pool.stats().waiting == 1).await;
        pool.checkin(busy);
        assert_eq!(waiter.await.unwrap().unwrap(), Start::Warm);
        assert_eq!(rt.started.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn idle_instances_scale_to_zero_but_not_below_the_minimum() {
        let rt = Arc::new(Fake::default());
        let cfg = PoolConfig {
            idle_timeout: Duration::from_millis(100),
            ..config(4096)
        };
        let pool = Pool::new(vec![rt.clone()], cfg);
        pool.spawn_maintenance();
        let (l1, _) = pool.checkout(&f("a", "ns", 128), &spec()).await.unwrap();
        pool.checkin(l1);
        until("scaled to zero", || pool.stats().idle == 0).await;
        assert_eq!(rt.live.load(Ordering::SeqCst), 0);

        let mut kept = f("b", "ns", 128);
        kept.min_instances = 2;
        pool.ensure_min(kept.clone(), spec());
        until("two minimum instances started", || {
            pool.instances(None, Some("/ns/b")).len() == 2
        })
        .await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            pool.instances(None, Some("/ns/b")).len(),
            2,
            "kept warm past the idle timeout"
        );
        kept.min_instances = 0;
        pool.ensure_min(kept, spec());
        until("released once the minimum is gone", || {
            pool.instances(None, Some("/ns/b")).is_empty()
        })
        .await;
    }

    #[tokio::test]
    async fn cold_starts_use_stem_cells_which_are_replaced() {
        let rt = Arc::new(Fake::default());
        let cfg = PoolConfig {
            stem_cells_per_kind: 2,
            stem_kinds: vec!["fake".into()],
            ..config(4096)
        };
        let pool = Pool::new(vec![rt.clone()], cfg);
        pool.spawn_maintenance();
        until("a stem cell is ready", || {
            pool.stats().stem_cells.get("fake") == Some(&1)
        })
        .await;
        let (lease, start) = pool.checkout(&f("a", "ns", 128), &spec()).await.unwrap();
        assert!(matches!(start, Start::Cold { stem: true, .. }), "{start:?}");
        assert_eq!(
            rt.started.load(Ordering::SeqCst),
            0,
            "no start from scratch"
        );
        pool.checkin(lease);
        until("the stem cell is replaced", || {
            pool.stats().stem_cells.get("fake").is_some_and(|n| *n >= 1)
        })
        .await;
        assert!(rt.prestarted.load(Ordering::SeqCst) >= 2);
        pool.shutdown().await;
        assert_eq!(
            rt.live.load(Ordering::SeqCst),
            0,
            "shutdown stops instances and stem cells"
        );
    }

    #[tokio::test]
    async fn failures_release_their_reservation() {
        let pool = Pool::new(vec![Arc::new(Fake::default())], config(256));
        let mut s = spec();
        s.kind = "other".into();
        assert!(matches!(
            pool.checkout(&f("x", "ns", 256), &s).await,
            Err(RuntimeError::UnsupportedKind(_))
        ));
        assert_eq!(pool.stats().memory_used_mb, 0);
        assert!(pool.checkout(&f("y", "ns", 256), &spec()).await.is_ok());
        assert!(matches!(
            pool.checkout(&f("z", "ns", 8192), &spec()).await,
            Err(RuntimeError::Platform(_))
        ));
    }

    #[tokio::test]
    async fn a_cold_burst_shares_the_starting_instance() {
        let rt = Arc::new(Multiplexing::default());
        let pool = Arc::new(Pool::new(vec![rt.clone()], config(4096)));
        let mut c = f("a", "ns", 256);
        c.concurrency = 4;
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let (p, c) = (pool.clone(), c.clone());
                tokio::spawn(async move { p.checkout(&c, &spec()).await.map(|(l, _)| l) })
            })
            .collect();
        let mut leases = Vec::new();
        for t in calls {
            leases.push(t.await.unwrap().unwrap());
        }
        assert!(leases.iter().all(|l| matches!(l, Lease::Shared { .. })));
        assert_eq!(
            rt.started.load(Ordering::SeqCst),
            2,
            "8 requests, concurrency 4: two instances"
        );
    }
}
