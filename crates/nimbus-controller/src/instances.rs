//! What the invoker needs to know about an action, and the live-instance views.

use crate::{Controller, Identity, Result};
use nimbus_invoker::{FunctionRef, InstanceInfo, PoolStats};
use nimbus_model::EntityKind;
use nimbus_model::entity::Action;
use nimbus_model::exec::Exec;
use nimbus_runtime::InstanceSpec;
use nimbus_store::EntityQuery;
use serde_json::{Value, json};

/// Activations one wasm function handle of the pool serves at once (see `instance_of`).
const WASM_SHARED_RUNS: usize = 1 << 20;

impl Controller {
    /// The pool identity and start-up spec of a code action (`None` for sequences).
    pub(crate) fn instance_of(
        &self,
        a: &Action,
        caller: &str,
    ) -> Option<(FunctionRef, InstanceSpec)> {
        let Exec::Code {
            kind,
            code,
            binary,
            main,
        } = &a.exec
        else {
            return None;
        };
        let action = format!("/{}/{}", a.namespace, a.path.to_path());
        let mut env = std::collections::BTreeMap::new();
        env.insert("__OW_API_HOST".to_string(), self.cfg.api_host.clone());
        let wasm = nimbus_model::wasm::is_wasm_kind(kind);
        if wasm {
            // The wasm runtime reads the granted capabilities from here (never the guest's
            // environment). Annotations were checked at deploy; a bad one grants nothing.
            let caps =
                nimbus_model::wasm::WasmCaps::from_annotations(&a.annotations).unwrap_or_default();
            if !caps.is_empty()
                && let Ok(j) = serde_json::to_string(&caps)
            {
                env.insert(nimbus_model::wasm::CAPS_ENV_KEY.to_string(), j);
            }
        }
        let spec = InstanceSpec {
            kind: kind.clone(),
            code: code.clone(),
            binary: *binary,
            main: main.clone().unwrap_or_else(|| "main".into()),
            action_name: action.clone(),
            env,
            limits: a.limits,
            // `network: outbound` (annotation) opens outbound connections; none by default.
            outbound_network: a.annotations.get("network").and_then(|v| v.as_str())
                == Some("outbound"),
            // Sandbox binds are for process functions; a wasm function's only directory is its
            // bundle (and this spares a stat per invocation).
            ro_binds: if wasm {
                Vec::new()
            } else {
                self.function_binds(a)
            },
        };
        let f = FunctionRef {
            // A new version or any update never reuses instances of the old code.
            key: format!("{action}@{}#{}", a.version, a.updated),
            action,
            version: a.version.to_string(),
            namespace: a.namespace.clone(),
            caller: caller.to_string(),
            memory_mb: a.limits.memory,
            min_instances: a.limits.min_instances as usize,
            max_instances: a.limits.max_instances.map(|m| m as usize),
            // A wasm "instance" is a handle on the compiled function: every activation gets a
            // fresh wasm instance of its own, so one handle serves any number at once (the wasm
            // runtime bounds the instances running together).
            concurrency: if wasm {
                WASM_SHARED_RUNS
            } else {
                a.limits.concurrency.max(1) as usize
            },
        };
        Some((f, spec))
    }

    /// Tells the pool how many instances of this action to keep warm.
    pub(crate) fn apply_min_instances(&self, a: &Action) {
        if let Some((f, spec)) = self.instance_of(a, &a.namespace) {
            self.invoker.ensure_min(f, spec);
        }
    }

    /// At start-up: registers every action that asks for warm instances.
    pub async fn restore_min_instances(&self) -> Result<usize> {
        let mut n = 0;
        for ns in self.store.list_namespaces().await? {
            for d in self
                .store
                .list_entities(&ns, EntityKind::Action, &EntityQuery::default())
                .await?
            {
                let Ok(a) = serde_json::from_value::<Action>(d.doc) else {
                    continue;
                };
                if a.limits.min_instances > 0 {
                    self.apply_min_instances(&a);
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// `GET /namespaces/{ns}/instances[?name=…]`: the namespace's live instances and the node's pool.
    pub async fn list_instances(
        &self,
        who: &Identity,
        ns: &str,
        name: Option<&str>,
    ) -> Result<Value> {
        self.ensure_own(who, ns)?;
        let action = name.map(|n| format!("/{}/{}", who.namespace, n.trim_start_matches('/')));
        let list: Vec<Value> = self
            .invoker
            .instances(Some(&who.namespace), action.as_deref())
            .iter()
            .map(instance_json)
            .collect();
        Ok(json!({ "instances": list, "pool": pool_json(&self.invoker.stats()) }))
    }
}

fn instance_json(i: &InstanceInfo) -> Value {
    json!({
        "id": i.id,
        "action": i.action,
        "version": i.version,
        "state": i.state.as_str(),
        "memory": i.memory_mb,
        "since": i.since,
    })
}

fn pool_json(s: &PoolStats) -> Value {
    json!({
        "starting": s.starting,
        "idle": s.idle,
        "busy": s.busy,
        "stemCells": s.stem_cells,
        "memoryUsedMB": s.memory_used_mb,
        "memoryBudgetMB": s.memory_budget_mb,
        "waiting": s.waiting,
    })
}

impl Controller {
    /// Read-only binds of an action: its OpenFaaS secrets directory, when the gateway made one
    /// (`<function_mounts>/<namespace>/<action>`, see nimbus-openfaas). The path is derived from
    /// the action's own name only, so no request can bind an arbitrary host path.
    fn function_binds(&self, a: &Action) -> Vec<(std::path::PathBuf, std::path::PathBuf)> {
        let Some(root) = &self.cfg.function_mounts else {
            return Vec::new();
        };
        if a.path.package.is_some() {
            return Vec::new();
        }
        let dir = root.join(&a.namespace).join(&a.path.name);
        if dir.is_dir() {
            vec![(dir, std::path::PathBuf::from("/var/openfaas/secrets"))]
        } else {
            Vec::new()
        }
    }
}
