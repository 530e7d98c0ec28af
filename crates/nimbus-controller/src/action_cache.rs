//! Parsed actions kept between invocations.
//!
//! A warm invocation must not re-read and re-parse an action document (its code can be tens of
//! megabytes). Each entry carries the store revision it was read at; a lookup first asks the
//! store for the current revision (a cheap indexed read), so an update made through any node that
//! shares the store is seen at once.

use crate::{Controller, Result};
use nimbus_model::EntityKind;
use nimbus_model::entity::Action;
use nimbus_model::exec::Exec;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Above this much cached code the cache starts over (a simple bound; entries refill on use).
const MAX_CACHED_CODE_BYTES: usize = 256 * 1024 * 1024;

#[derive(Default)]
pub(crate) struct ActionCache {
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    map: HashMap<(String, String), (i64, Arc<Action>)>,
    code_bytes: usize,
}

fn code_len(a: &Action) -> usize {
    match &a.exec {
        Exec::Code { code, .. } => code.len(),
        Exec::Sequence { .. } => 0,
    }
}

impl ActionCache {
    fn get(&self, ns: &str, key: &str, rev: i64) -> Option<Arc<Action>> {
        let e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        e.map
            .get(&(ns.to_string(), key.to_string()))
            .filter(|(r, _)| *r == rev)
            .map(|(_, a)| a.clone())
    }

    pub(crate) fn put(&self, ns: &str, key: &str, rev: i64, a: Arc<Action>) {
        let mut e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let len = code_len(&a);
        if e.code_bytes + len > MAX_CACHED_CODE_BYTES {
            e.map.clear();
            e.code_bytes = 0;
        }
        if let Some((_, old)) = e.map.insert((ns.to_string(), key.to_string()), (rev, a)) {
            e.code_bytes -= code_len(&old);
        }
        e.code_bytes += len;
    }

    fn remove(&self, ns: &str, key: &str) {
        let mut e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, old)) = e.map.remove(&(ns.to_string(), key.to_string())) {
            e.code_bytes -= code_len(&old);
        }
    }
}

impl Controller {
    /// The action stored at `ns`/`key`, from the cache when its revision is current.
    pub(crate) async fn load_action(&self, ns: &str, key: &str) -> Result<Option<Arc<Action>>> {
        let Some(rev) = self.store.entity_rev(ns, EntityKind::Action, key).await? else {
            self.action_cache.remove(ns, key);
            return Ok(None);
        };
        if let Some(a) = self.action_cache.get(ns, key, rev) {
            return Ok(Some(a));
        }
        let Some((a, rev)) = self.load::<Action>(ns, EntityKind::Action, key).await? else {
            return Ok(None);
        };
        let a = Arc::new(a);
        self.action_cache.put(ns, key, rev, a.clone());
        Ok(Some(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_model::entity::{EntityPathDoc, Version};
    use nimbus_model::{ActionLimits, KeyValues};

    fn action(code: &str) -> Arc<Action> {
        Arc::new(Action {
            namespace: "ns".into(),
            path: EntityPathDoc {
                package: None,
                name: "a".into(),
            },
            version: Version::default(),
            publish: false,
            annotations: KeyValues::new(),
            exec: Exec::Code {
                kind: "nodejs:20".into(),
                code: code.into(),
                binary: false,
                main: None,
            },
            parameters: KeyValues::new(),
            limits: ActionLimits::default(),
            updated: 0,
        })
    }

    #[test]
    fn entries_are_served_only_at_their_revision() {
        let c = ActionCache::default();
        c.put("ns", "a", 1, action("one"));
        assert!(c.get("ns", "a", 1).is_some());
        assert!(c.get("ns", "a", 2).is_none(), "a newer revision is a miss");
        c.put("ns", "a", 2, action("two!"));
        assert_eq!(c.inner.lock().unwrap().code_bytes, 4);
        c.remove("ns", "a");
        assert!(c.get("ns", "a", 2).is_none());
        assert_eq!(c.inner.lock().unwrap().code_bytes, 0);
    }
}
