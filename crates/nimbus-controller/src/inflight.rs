//! Activations running right now, so a shutdown can wait for them or record them as interrupted.

use nimbus_model::ActivationId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub(crate) struct InflightEntry {
    pub namespace: String,
    pub name: String,
    pub path: String,
    pub start: i64,
    /// Came from the durable queue: on an interrupted shutdown it goes back to the queue.
    pub queued: bool,
}

#[derive(Default)]
pub(crate) struct Inflight {
    map: Arc<Mutex<HashMap<ActivationId, InflightEntry>>>,
}

pub(crate) struct InflightGuard {
    id: ActivationId,
    map: Arc<Mutex<HashMap<ActivationId, InflightEntry>>>,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Inflight {
    pub(crate) fn enter(&self, id: &ActivationId, e: InflightEntry) -> InflightGuard {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), e);
        InflightGuard {
            id: id.clone(),
            map: self.map.clone(),
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<(ActivationId, InflightEntry)> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
