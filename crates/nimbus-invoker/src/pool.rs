//! Warm instances per action version, with idle eviction and a node-wide instance bound.

use nimbus_runtime::{Instance, InstanceSpec, Runtime, RuntimeError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// An idle instance older than this is stopped (scale to zero).
    pub idle_timeout: Duration,
    /// Live instances (idle + busy + starting) on this node.
    pub max_instances: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            idle_timeout: Duration::from_secs(600),
            max_instances: 64,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub idle: usize,
    pub busy: usize,
}

struct Idle {
    key: String,
    instance: Box<dyn Instance>,
    since: Instant,
}

#[derive(Default)]
struct State {
    idle: Vec<Idle>,
    /// Instances checked out or starting.
    busy: usize,
}

/// An instance checked out of the pool for one run.
pub(crate) struct Lease {
    key: String,
    instance: Box<dyn Instance>,
}

impl Lease {
    pub(crate) fn instance_mut(&mut self) -> &mut dyn Instance {
        self.instance.as_mut()
    }
}

pub(crate) struct Pool {
    runtimes: Vec<Arc<dyn Runtime>>,
    cfg: PoolConfig,
    state: Arc<Mutex<State>>,
    freed: Arc<Notify>,
}

impl Pool {
    pub(crate) fn new(runtimes: Vec<Arc<dyn Runtime>>, cfg: PoolConfig) -> Pool {
        Pool {
            runtimes,
            cfg,
            state: Arc::new(Mutex::new(State::default())),
            freed: Arc::new(Notify::new()),
        }
    }

    pub(crate) fn supports(&self, kind: &str) -> bool {
        self.runtimes.iter().any(|r| r.supports(kind))
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        self.cfg.idle_timeout
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the state itself stays consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns a warm instance for `key`, or starts one (reporting the init time).
    pub(crate) async fn checkout(
        &self,
        key: &str,
        spec: &InstanceSpec,
    ) -> Result<(Lease, Option<u64>), RuntimeError> {
        loop {
            let evicted;
            {
                let mut st = self.lock();
                // Most recently used first: it is the one most likely still hot in caches.
                if let Some(pos) = st.idle.iter().rposition(|i| i.key == key) {
                    let idle = st.idle.remove(pos);
                    st.busy += 1;
                    return Ok((
                        Lease {
                            key: idle.key,
                            instance: idle.instance,
                        },
                        None,
                    ));
                }
                let live = st.idle.len() + st.busy;
                if live < self.cfg.max_instances {
                    st.busy += 1;
                    break;
                }
                if st.idle.is_empty() {
                    evicted = None;
                } else {
                    // At the bound: make room by stopping the longest-idle instance of another action.
                    let oldest = st
                        .idle
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, i)| i.since)
                        .map(|(n, _)| n)
                        .unwrap_or(0);
                    evicted = Some(st.idle.remove(oldest));
                    st.busy += 1;
                }
            }
            match evicted {
                Some(old) => {
                    old.instance.shutdown().await;
                    break;
                }
                None => self.freed.notified().await,
            }
        }
        let started = Instant::now();
        let runtime = self
            .runtimes
            .iter()
            .find(|r| r.supports(&spec.kind))
            .cloned();
        let result = match runtime {
            Some(rt) => {
                rt.start(spec, Duration::from_millis(spec.limits.timeout))
                    .await
            }
            None => Err(RuntimeError::UnsupportedKind(spec.kind.clone())),
        };
        match result {
            Ok(instance) => Ok((
                Lease {
                    key: key.to_string(),
                    instance,
                },
                Some(started.elapsed().as_millis() as u64),
            )),
            Err(e) => {
                self.lock().busy -= 1;
                self.freed.notify_one();
                Err(e)
            }
        }
    }

    pub(crate) fn checkin(&self, lease: Lease) {
        let mut st = self.lock();
        st.busy -= 1;
        st.idle.push(Idle {
            key: lease.key,
            instance: lease.instance,
            since: Instant::now(),
        });
        drop(st);
        self.freed.notify_one();
    }

    pub(crate) async fn discard(&self, lease: Lease) {
        lease.instance.shutdown().await;
        self.lock().busy -= 1;
        self.freed.notify_one();
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let st = self.lock();
        PoolStats {
            idle: st.idle.len(),
            busy: st.busy,
        }
    }

    pub(crate) async fn shutdown(&self) {
        let all: Vec<Idle> = std::mem::take(&mut self.lock().idle);
        for i in all {
            i.instance.shutdown().await;
        }
    }

    fn take_expired(state: &Mutex<State>, idle_timeout: Duration) -> Vec<Idle> {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (expired, keep): (Vec<Idle>, Vec<Idle>) = std::mem::take(&mut st.idle)
            .into_iter()
            .partition(|i| now.duration_since(i.since) >= idle_timeout);
        st.idle = keep;
        expired
    }

    /// Periodically stops instances idle for longer than the idle timeout.
    pub(crate) fn spawn_reaper(pool: &Pool) {
        let state: Weak<Mutex<State>> = Arc::downgrade(&pool.state);
        let freed = pool.freed.clone();
        let idle_timeout = pool.cfg.idle_timeout;
        let tick = (idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                let Some(state) = state.upgrade() else { return };
                let expired = Pool::take_expired(&state, idle_timeout);
                drop(state);
                if !expired.is_empty() {
                    tracing::debug!(count = expired.len(), "stopping idle instances");
                    for i in expired {
                        i.instance.shutdown().await;
                    }
                    freed.notify_waiters();
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use nimbus_model::ActionLimits;
    use nimbus_runtime::{RunOutcome, RunRequest, RunResult};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A runtime double: counts starts and live instances, runs instantly.
    #[derive(Default)]
    struct Counting {
        started: AtomicUsize,
        live: Arc<AtomicUsize>,
    }

    struct Fake {
        live: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl Runtime for Counting {
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
            Ok(Box::new(Fake {
                live: self.live.clone(),
            }))
        }
    }

    #[async_trait]
    impl Instance for Fake {
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
        }
    }

    #[tokio::test]
    async fn warm_instances_are_reused_per_key() {
        let rt = Arc::new(Counting::default());
        let pool = Pool::new(vec![rt.clone()], PoolConfig::default());
        let (lease, init) = pool.checkout("a", &spec()).await.unwrap();
        assert!(init.is_some(), "first checkout is a cold start");
        pool.checkin(lease);
        let (lease, init) = pool.checkout("a", &spec()).await.unwrap();
        assert!(init.is_none(), "second checkout is warm");
        pool.checkin(lease);
        let (lease, _) = pool.checkout("b", &spec()).await.unwrap();
        pool.checkin(lease);
        assert_eq!(rt.started.load(Ordering::SeqCst), 2);
        assert_eq!(pool.stats(), PoolStats { idle: 2, busy: 0 });
    }

    #[tokio::test]
    async fn the_instance_bound_evicts_idle_instances_of_other_actions() {
        let rt = Arc::new(Counting::default());
        let pool = Pool::new(
            vec![rt.clone()],
            PoolConfig {
                max_instances: 2,
                ..Default::default()
            },
        );
        for key in ["a", "b", "c"] {
            let (lease, _) = pool.checkout(key, &spec()).await.unwrap();
            pool.checkin(lease);
        }
        assert_eq!(
            rt.live.load(Ordering::SeqCst),
            2,
            "never more than the bound"
        );
        assert_eq!(pool.stats().idle, 2);
    }

    #[tokio::test]
    async fn at_the_bound_with_nothing_idle_a_request_waits_for_a_free_slot() {
        let rt = Arc::new(Counting::default());
        let pool = Arc::new(Pool::new(
            vec![rt.clone()],
            PoolConfig {
                max_instances: 1,
                ..Default::default()
            },
        ));
        let (busy, _) = pool.checkout("a", &spec()).await.unwrap();
        let p2 = pool.clone();
        let waiter =
            tokio::spawn(async move { p2.checkout("b", &spec()).await.map(|(l, _)| l.key) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "no slot yet");
        pool.discard(busy).await;
        assert_eq!(waiter.await.unwrap().unwrap(), "b");
    }

    #[tokio::test]
    async fn idle_instances_are_stopped_after_the_idle_timeout() {
        let rt = Arc::new(Counting::default());
        let pool = Pool::new(
            vec![rt.clone()],
            PoolConfig {
                idle_timeout: Duration::from_millis(100),
                max_instances: 4,
            },
        );
        Pool::spawn_reaper(&pool);
        let (lease, _) = pool.checkout("a", &spec()).await.unwrap();
        pool.checkin(lease);
        assert_eq!(pool.stats().idle, 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.stats().idle > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(pool.stats().idle, 0, "scaled to zero");
        assert_eq!(rt.live.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn unsupported_kinds_fail_without_leaking_a_slot() {
        let pool = Pool::new(
            vec![Arc::new(Counting::default())],
            PoolConfig {
                max_instances: 1,
                ..Default::default()
            },
        );
        let mut s = spec();
        s.kind = "other".into();
        assert!(matches!(
            pool.checkout("x", &s).await,
            Err(RuntimeError::UnsupportedKind(_))
        ));
        assert!(
            pool.checkout("y", &spec()).await.is_ok(),
            "the slot was released"
        );
    }
}
