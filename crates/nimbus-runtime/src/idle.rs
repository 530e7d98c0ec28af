//! Freezing idle instances.
//!
//! Between activations an instance is idle and nobody is billed, yet a function may have left
//! processes or timers running (a busy loop in a thread, a child process). Like OpenWhisk,
//! which pauses a container once it is idle, an instance's cgroup is frozen a short grace after
//! its last activation ended (so back-to-back activations pay nothing) and thawed before the
//! next one starts. Frozen processes get no CPU time; their memory stays where it is.
//! Concurrent instances freeze only when no activation is in flight.

use nimbus_sandbox::{CgroupHandle, CgroupManager};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

/// Default grace between an instance going idle and being frozen.
pub const DEFAULT_FREEZE_AFTER: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
struct State {
    /// Activations in flight.
    busy: usize,
    frozen: bool,
    /// Bumped at every change of `busy`: a pending freeze only applies to the idle period it
    /// was scheduled in.
    generation: u64,
    /// The instance is being stopped: never freeze again.
    stopped: bool,
}

/// The freezer of one instance's cgroup.
#[derive(Debug)]
pub(crate) struct IdleFreezer {
    manager: Arc<dyn CgroupManager>,
    cgroup: CgroupHandle,
    grace: Duration,
    state: Mutex<State>,
}

impl IdleFreezer {
    /// `None` when the manager cannot freeze.
    pub(crate) fn new(
        manager: Arc<dyn CgroupManager>,
        cgroup: CgroupHandle,
        grace: Duration,
    ) -> Option<Arc<Self>> {
        manager.controllers().freezer.then(|| {
            Arc::new(IdleFreezer {
                manager,
                cgroup,
                grace,
                state: Mutex::new(State::default()),
            })
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An activation starts: thaws the instance if it is frozen. Returns how long the thaw
    /// took, if there was one.
    pub(crate) fn busy(&self) -> Option<Duration> {
        let mut st = self.lock();
        st.busy += 1;
        st.generation += 1;
        if !st.frozen {
            return None;
        }
        let started = Instant::now();
        match self.manager.freeze(&self.cgroup, false) {
            Ok(_) => st.frozen = false,
            Err(e) => {
                tracing::warn!(cgroup = %self.cgroup.name(), error = %e, "cannot thaw the instance")
            }
        }
        let took = started.elapsed();
        tracing::trace!(cgroup = %self.cgroup.name(), thaw_us = took.as_micros() as u64, "instance thawed");
        Some(took)
    }

    /// An activation ended: once none is in flight, the instance is frozen after the grace
    /// (unless an activation starts first).
    pub(crate) fn idle(self: &Arc<Self>) {
        let generation = {
            let mut st = self.lock();
            st.busy = st.busy.saturating_sub(1);
            st.generation += 1;
            if st.busy > 0 || st.stopped {
                return;
            }
            st.generation
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        let grace = self.grace;
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            tokio::time::sleep(grace).await;
            if let Some(me) = weak.upgrade() {
                me.freeze_if_still_idle(generation);
            }
        });
    }

    fn freeze_if_still_idle(&self, generation: u64) {
        let mut st = self.lock();
        if st.busy > 0 || st.frozen || st.stopped || st.generation != generation {
            return;
        }
        match self.manager.freeze(&self.cgroup, true) {
            Ok(true) => {
                st.frozen = true;
                tracing::trace!(cgroup = %self.cgroup.name(), "idle instance frozen");
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(cgroup = %self.cgroup.name(), error = %e, "cannot freeze the idle instance")
            }
        }
    }

    /// The instance is being stopped: no freeze any more, and thawed (a frozen cgroup v1
    /// process would not die of its SIGKILL).
    pub(crate) fn stop(&self) {
        let mut st = self.lock();
        st.stopped = true;
        if st.frozen {
            if let Err(e) = self.manager.freeze(&self.cgroup, false) {
                tracing::warn!(cgroup = %self.cgroup.name(), error = %e, "cannot thaw the instance");
            }
            st.frozen = false;
        }
    }
}
