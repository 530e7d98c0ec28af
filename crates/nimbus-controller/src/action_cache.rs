//! Parsed actions kept between invocations.
//!
//! A warm invocation must not re-read and re-parse an action document (its code can be tens of
//! megabytes). Each entry carries the store revision it was read at; a lookup first asks the
//! store for the current revision (a cheap indexed read), so an update made through any node that
//! shares the store is seen at once. A store that knows its entity generation (the embedded one,
//! sole writer of its file) spares even that read while no entity was written since the entry was
//! last checked.

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
    map: HashMap<(String, String), Entry>,
    code_bytes: usize,
}

struct Entry {
    rev: i64,
    /// The entity generation at which `rev` was last confirmed current.
    confirmed: Option<u64>,
    action: Arc<Action>,
}

fn code_len(a: &Action) -> usize {
    match &a.exec {
        Exec::Code { code, .. } => code.len(),
        Exec::Sequence { .. } => 0,
    }
}

impl ActionCache {
    /// The entry, if it was confirmed at generation `generation` (nothing written since).
    fn get_unchanged(&self, ns: &str, key: &str, generation: u64) -> Option<Arc<Action>> {
        let e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        e.map
            .get(&(ns.to_string(), key.to_string()))
            .filter(|e| e.confirmed == Some(generation))
            .map(|e| e.action.clone())
    }

    /// The entry if it is at revision `rev`; it is then marked confirmed at `generation` (read
    /// before the revision was, so a write in between leaves the mark behind).
    fn get(&self, ns: &str, key: &str, rev: i64, generation: Option<u64>) -> Option<Arc<Action>> {
        let mut e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let entry = e.map.get_mut(&(ns.to_string(), key.to_string()))?;
        if entry.rev != rev {
            return None;
        }
        entry.confirmed = generation;
        Some(entry.action.clone())
    }

    /// Caches `a` at revision `rev`, confirmed at `generation` (`None`: check the revision on
    /// the next lookup).
    pub(crate) fn put(
        &self,
        ns: &str,
        key: &str,
        rev: i64,
        generation: Option<u64>,
        a: Arc<Action>,
    ) {
        let mut e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let len = code_len(&a);
        if e.code_bytes + len > MAX_CACHED_CODE_BYTES {
            e.map.clear();
            e.code_bytes = 0;
        }
        let entry = Entry {
            rev,
            confirmed: generation,
            action: a,
        };
        if let Some(old) = e.map.insert((ns.to_string(), key.to_string()), entry) {
            e.code_bytes -= code_len(&old.action);
        }
        e.code_bytes += len;
    }

    fn remove(&self, ns: &str, key: &str) {
        let mut e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = e.map.remove(&(ns.to_string(), key.to_string())) {
            e.code_bytes -= code_len(&old.action);
        }
    }
}

impl Controller {
    /// The action stored at `ns`/`key`, from the cache when its revision is current.
    pub(crate) async fn load_action(&self, ns: &str, key: &str) -> Result<Option<Arc<Action>>> {
        let generation = self.store.entity_generation();
        if let Some(g) = generation
            && let Some(a) = self.action_cache.get_unchanged(ns, key, g)
        {
            return Ok(Some(a));
        }
        let Some(rev) = self.store.entity_rev(ns, EntityKind::Action, key).await? else {
            self.action_cache.remove(ns, key);
            return Ok(None);
        };
        if let Some(a) = self.action_cache.get(ns, key, rev, generation) {
            return Ok(Some(a));
        }
        let Some((a, rev)) = self.load::<Action>(ns, EntityKind::Action, key).await? else {
            return Ok(None);
        };
        let a = Arc::new(a);
        self.action_cache.put(ns, key, rev, generation, a.clone());
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
        c.put("ns", "a", 1, None, action("one"));
        assert!(c.get("ns", "a", 1, None).is_some());
        assert!(
            c.get("ns", "a", 2, None).is_none(),
            "a newer revision is a miss"
        );
        c.put("ns", "a", 2, None, action("two!"));
        assert_eq!(c.inner.lock().unwrap().code_bytes, 4);
        c.remove("ns", "a");
        assert!(c.get("ns", "a", 2, None).is_none());
        assert_eq!(c.inner.lock().unwrap().code_bytes, 0);
    }

    #[test]
    fn entries_skip_the_revision_read_only_at_the_generation_they_were_confirmed() {
        let c = ActionCache::default();
        c.put("ns", "a", 1, None, action("one"));
        assert!(
            c.get_unchanged("ns", "a", 7).is_none(),
            "never confirmed: read the revision"
        );
        assert!(c.get("ns", "a", 1, Some(7)).is_some());
        assert!(c.get_unchanged("ns", "a", 7).is_some());
        assert!(
            c.get_unchanged("ns", "a", 8).is_none(),
            "something was written since: read the revision again"
        );
        assert!(c.get("ns", "a", 2, Some(8)).is_none());
        assert!(
            c.get_unchanged("ns", "a", 8).is_none(),
            "a stale revision is not confirmed"
        );
    }
}
