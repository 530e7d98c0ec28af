//! Per-namespace throttles: invocations and fires per minute (sliding window) and concurrent
//! activations, answered with OpenWhisk's 429 messages.

use crate::{ControllerError, Result};
use nimbus_model::SystemLimits;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Counters {
    invokes: VecDeque<Instant>,
    fires: VecDeque<Instant>,
    concurrent: u64,
}

pub(crate) struct Throttles {
    limits: SystemLimits,
    per_ns: Arc<Mutex<HashMap<String, Counters>>>,
}

/// Holds one concurrent-activation slot of a namespace until dropped.
pub(crate) struct ConcurrencySlot {
    ns: String,
    per_ns: Arc<Mutex<HashMap<String, Counters>>>,
}

impl Drop for ConcurrencySlot {
    fn drop(&mut self) {
        let mut m = self.per_ns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = m.get_mut(&self.ns) {
            c.concurrent = c.concurrent.saturating_sub(1);
        }
    }
}

fn prune(q: &mut VecDeque<Instant>, now: Instant) {
    while q
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
    {
        q.pop_front();
    }
}

impl Throttles {
    pub(crate) fn new(limits: SystemLimits) -> Self {
        Throttles {
            limits,
            per_ns: Default::default(),
        }
    }

    /// Admits one invocation of `ns` or says which limit it hit.
    pub(crate) fn admit_invoke(&self, ns: &str) -> Result<ConcurrencySlot> {
        let now = Instant::now();
        let mut m = self.per_ns.lock().unwrap_or_else(|p| p.into_inner());
        let c = m.entry(ns.to_string()).or_default();
        prune(&mut c.invokes, now);
        let rate = c.invokes.len() as u64;
        if rate >= self.limits.invocations_per_minute {
            return Err(ControllerError::Throttled(format!(
                "Too many requests in the last minute (count: {rate}, allowed: {}).",
                self.limits.invocations_per_minute
            )));
        }
        if c.concurrent >= self.limits.concurrent_invocations {
            return Err(ControllerError::Throttled(format!(
                "Too many concurrent requests in flight (count: {}, allowed: {}).",
                c.concurrent, self.limits.concurrent_invocations
            )));
        }
        c.invokes.push_back(now);
        c.concurrent += 1;
        Ok(ConcurrencySlot {
            ns: ns.to_string(),
            per_ns: self.per_ns.clone(),
        })
    }

    /// A slot that bypasses the checks (work accepted before a restart, rule-fired activations
    /// already admitted by their trigger) but still counts toward concurrency.
    pub(crate) fn occupy(&self, ns: &str) -> ConcurrencySlot {
        let mut m = self.per_ns.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(ns.to_string()).or_default().concurrent += 1;
        ConcurrencySlot {
            ns: ns.to_string(),
            per_ns: self.per_ns.clone(),
        }
    }

    pub(crate) fn admit_fire(&self, ns: &str) -> Result<()> {
        let now = Instant::now();
        let mut m = self.per_ns.lock().unwrap_or_else(|p| p.into_inner());
        let c = m.entry(ns.to_string()).or_default();
        prune(&mut c.fires, now);
        let rate = c.fires.len() as u64;
        if rate >= self.limits.fires_per_minute {
            return Err(ControllerError::Throttled(format!(
                "Too many triggers fired in the last minute (count: {rate}, allowed: {}).",
                self.limits.fires_per_minute
            )));
        }
        c.fires.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_concurrency_limits_name_count_and_allowed() {
        let t = Throttles::new(SystemLimits {
            invocations_per_minute: 3,
            concurrent_invocations: 2,
            ..Default::default()
        });
        let a = t.admit_invoke("ns").unwrap();
        let _b = t.admit_invoke("ns").unwrap();
        let err = t.admit_invoke("ns").err().unwrap().to_string();
        assert_eq!(
            err,
            "Too many concurrent requests in flight (count: 2, allowed: 2)."
        );
        drop(a);
        let _c = t.admit_invoke("ns").unwrap();
        drop(_c);
        let err = t.admit_invoke("ns").err().unwrap().to_string();
        assert_eq!(
            err,
            "Too many requests in the last minute (count: 3, allowed: 3)."
        );
        // Another namespace is not affected.
        assert!(t.admit_invoke("other").is_ok());
    }
}
