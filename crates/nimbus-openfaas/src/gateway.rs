//! The gateway's use cases over the controller: deploy/list/get/delete/scale functions,
//! synchronous and queued invocations, logs, secrets and async callbacks. No HTTP types here
//! beyond plain status codes and header lists.

use crate::bundle;
use crate::error::{GatewayError, Result};
use crate::metrics::GatewayMetrics;
use crate::secrets::SecretStore;
use crate::types::*;
use base64::Engine;
use nimbus_controller::{ActivationListQuery, Controller, Identity, InvokeRequest, InvokeResponse};
use nimbus_model::{Activation, EntityKind, FullyQualifiedName};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The OpenFaaS name of the default namespace.
pub const DEFAULT_NAMESPACE: &str = "openfaas-fn";
/// Labels that size the warm pool.
const SCALE_MIN: &str = "com.openfaas.scale.min";
const SCALE_MAX: &str = "com.openfaas.scale.max";

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `<data dir>/openfaas`: credentials, secrets, mounts, built bundles, pending callbacks.
    pub dir: PathBuf,
    /// Where `<ns>/<function>` secret mounts live; must equal the controller's `function_mounts`.
    pub mounts: PathBuf,
    /// The Nimbus namespace that `openfaas-fn` maps to.
    pub default_namespace: String,
    /// `--dev`: fixed, documented credentials instead of generated ones.
    pub dev: bool,
    /// Where callbacks (`X-Callback-Url`) may be sent.
    pub egress: nimbus_egress::EgressPolicy,
    /// How `POST /build` runs pip and npm (sandboxed unless the server runs `--no-sandbox`).
    pub builder: crate::bundle::Builder,
}

/// An HTTP request handed to a function.
#[derive(Debug, Clone, Default)]
pub struct FunctionRequest {
    pub method: String,
    /// The path after `/function/<name>`, starting with `/`.
    pub path: String,
    pub query: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A function's answer.
#[derive(Debug, Clone)]
pub struct FunctionResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub call_id: String,
    pub duration: f64,
}

/// One line of `/system/logs`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogLine {
    pub name: String,
    pub namespace: String,
    pub instance: String,
    pub timestamp: String,
    pub text: String,
}

/// Who calls a function through `/function` or `/async-function`.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No credentials: only functions their owner made public.
    Anonymous,
    /// The gateway's admin credential: every function.
    Gateway,
    /// An OpenWhisk credential (`uuid:key`): the functions of its own namespace.
    Namespace(Identity),
}

/// A queued call whose result must be POSTed to a callback URL (kept on disk until delivered).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct PendingCallback {
    activation_id: String,
    namespace: String,
    function: String,
    call_id: String,
    url: String,
}

pub struct Gateway {
    pub(crate) controller: Arc<Controller>,
    pub(crate) cfg: GatewayConfig,
    pub metrics: GatewayMetrics,
    pub(crate) secrets: SecretStore,
    pub(crate) admin: (String, String),
    pub(crate) payload_secret: Vec<u8>,
    callbacks: tokio::sync::Notify,
}

/// How long a callback POST may take.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(60);

fn write_secret_file(path: &Path, value: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| GatewayError::io("writing credentials", e))?;
    f.write_all(value.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| GatewayError::io("writing credentials", e))
}

fn random_token(n: usize) -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// Reads `name` in `dir`, or writes `fresh()` there (0600) first.
fn load_or_create(dir: &Path, name: &str, fresh: impl FnOnce() -> String) -> Result<String> {
    let p = dir.join(name);
    match std::fs::read_to_string(&p) {
        Ok(s) => Ok(s.trim().to_string()),
        Err(_) => {
            let v = fresh();
            write_secret_file(&p, &v)?;
            Ok(v)
        }
    }
}

/// `128Mi`, `1Gi`, `256M`, `200000000` → MB.
fn memory_mb(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().ok()?;
    let bytes = match unit {
        "" => n,
        "k" | "K" => n * 1000,
        "Ki" => n << 10,
        "M" => n * 1_000_000,
        "Mi" => n << 20,
        "G" => n * 1_000_000_000,
        "Gi" => n << 30,
        _ => return None,
    };
    Some(bytes.div_ceil(1 << 20))
}

impl Gateway {
    /// Opens (creating on first start) the gateway's directory and credentials.
    pub fn new(controller: Arc<Controller>, cfg: GatewayConfig) -> Result<Arc<Gateway>> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&cfg.dir).map_err(|e| GatewayError::io("creating dir", e))?;
        std::fs::set_permissions(&cfg.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| GatewayError::io("creating dir", e))?;
        for d in ["callbacks", "bundles"] {
            std::fs::create_dir_all(cfg.dir.join(d))
                .map_err(|e| GatewayError::io("creating dir", e))?;
        }
        let admin = if cfg.dev {
            ("admin".to_string(), "nimbus-dev".to_string())
        } else {
            let user = load_or_create(&cfg.dir, "basic-auth-user", || "admin".into())?;
            let pass = load_or_create(&cfg.dir, "basic-auth-password", || random_token(40))?;
            (user, pass)
        };
        let payload_secret = load_or_create(&cfg.dir, "payload-secret", || random_token(48))?;
        let secrets = SecretStore::new(cfg.dir.join("secrets"), cfg.mounts.clone())?;
        Ok(Arc::new(Gateway {
            controller,
            cfg,
            metrics: GatewayMetrics::default(),
            secrets,
            admin,
            payload_secret: payload_secret.into_bytes(),
            callbacks: tokio::sync::Notify::new(),
        }))
    }

    /// The admin credential for `/system/*` (user, password).
    pub fn admin_credentials(&self) -> (&str, &str) {
        (&self.admin.0, &self.admin.1)
    }

    /// Path of the files holding the admin credential (not written in `--dev`).
    pub fn credential_files(&self) -> (PathBuf, PathBuf) {
        (
            self.cfg.dir.join("basic-auth-user"),
            self.cfg.dir.join("basic-auth-password"),
        )
    }

    pub fn payload_secret_file(&self) -> PathBuf {
        self.cfg.dir.join("payload-secret")
    }

    // ----- namespaces -----

    /// Nimbus namespace of an OpenFaaS namespace (`openfaas-fn` / none → the default one).
    pub fn nimbus_ns(&self, ns: Option<&str>) -> String {
        match ns {
            None | Some("") | Some(DEFAULT_NAMESPACE) => self.cfg.default_namespace.clone(),
            Some(n) => n.to_string(),
        }
    }

    /// OpenFaaS name of a Nimbus namespace.
    pub fn openfaas_ns(&self, ns: &str) -> String {
        if ns == self.cfg.default_namespace {
            DEFAULT_NAMESPACE.to_string()
        } else {
            ns.to_string()
        }
    }

    /// The identity the gateway acts as in `ns` (its first credential usable in this mode).
    async fn identity(&self, ns: &str) -> Result<Identity> {
        self.controller
            .namespace_identity(ns)
            .await?
            .ok_or_else(|| {
                GatewayError::NotFound(format!("namespace {} not found", self.openfaas_ns(ns)))
            })
    }

    /// Whether `caller` may call function `name` of namespace `ns`: the gateway credential
    /// and the namespace's own credentials may call any of its functions; anyone else only
    /// those its owner made public (see [`Controller::openfaas_public`]). A refusal reads
    /// exactly like a missing function, so the URL space reveals nothing about private ones.
    async fn authorize(
        &self,
        caller: &Caller,
        ns: &str,
        name: &str,
        label: &str,
    ) -> Result<Identity> {
        let not_found =
            || GatewayError::NotFound(format!("error finding function {label}: not found"));
        let who = match self.identity(ns).await {
            Ok(w) => w,
            Err(GatewayError::NotFound(_)) => return Err(not_found()),
            Err(e) => return Err(e),
        };
        let allowed = match caller {
            Caller::Gateway => true,
            Caller::Namespace(id) => id.namespace == ns,
            Caller::Anonymous => false,
        } || self.controller.openfaas_public(ns, name).await?;
        if allowed { Ok(who) } else { Err(not_found()) }
    }

    pub async fn namespaces(&self) -> Result<Vec<String>> {
        let all = self
            .controller
            .store()
            .list_namespaces()
            .await
            .map_err(|e| GatewayError::Internal(e.to_string()))?;
        let mut out = vec![DEFAULT_NAMESPACE.to_string()];
        for n in all {
            if n != self.cfg.default_namespace && n != "whisk.system" && !out.contains(&n) {
                out.push(n);
            }
        }
        Ok(out)
    }

    // ----- functions -----

    /// POST (`update` false) or PUT (`update` true: 404 when missing) of a deployment.
    pub async fn deploy(&self, d: FunctionDeployment, update: bool) -> Result<()> {
        nimbus_model::names::validate_name(&d.service)
            .map_err(|e| GatewayError::BadRequest(e.to_string()))?;
        if d.service.contains('.') {
            return Err(GatewayError::BadRequest(
                "function names may not contain '.' (it separates the namespace in /function/NAME.NAMESPACE)".into(),
            ));
        }
        let ns = self.nimbus_ns(d.namespace.as_deref());
        let who = self.identity(&ns).await?;
        let existing = self.stored(&who, &d.service).await?;
        if update && existing.is_none() {
            return Err(GatewayError::NotFound(format!(
                "function {} not found in namespace {}",
                d.service,
                self.openfaas_ns(&ns)
            )));
        }
        if d.image.is_empty() {
            return Err(GatewayError::BadRequest("image is required".into()));
        }
        let mut env = d.env_vars.clone().unwrap_or_default();
        if let Some(fp) = &d.env_process {
            env.insert("fprocess".into(), fp.clone());
        }
        let (dir, _tmp) = bundle::resolve_image(&d.image, &self.cfg.dir.join("bundles"))?;
        let code = tokio::task::spawn_blocking(move || bundle::package(&dir, &env))
            .await
            .map_err(|e| GatewayError::Internal(e.to_string()))??;
        let secrets = d.secrets.clone().unwrap_or_default();
        self.secrets.mount_for(&ns, &d.service, &secrets)?;
        let labels = d.labels.clone().unwrap_or_default();
        let mut limits = serde_json::Map::new();
        let min = match labels.get(SCALE_MIN) {
            Some(v) => v.parse::<u64>().map_err(|_| {
                GatewayError::BadRequest(format!("label {SCALE_MIN} must be a number"))
            })?,
            None => 0,
        };
        limits.insert("minInstances".into(), json!(min));
        if let Some(v) = labels.get(SCALE_MAX) {
            let max = v.parse::<u64>().map_err(|_| {
                GatewayError::BadRequest(format!("label {SCALE_MAX} must be a number"))
            })?;
            limits.insert("maxInstances".into(), json!(max.max(1)));
        }
        if let Some(m) = d.limits.as_ref().and_then(|l| l.memory.as_deref()) {
            let mb = memory_mb(m).ok_or_else(|| {
                GatewayError::BadRequest(format!(
                    "limits.memory '{m}' is not a quantity like 128Mi"
                ))
            })?;
            limits.insert("memory".into(), json!(mb));
        }
        let stored = StoredDeployment {
            image: d.image.clone(),
            lang: code.lang.clone(),
            env_process: d.env_process.clone(),
            env_vars: d.env_vars.clone().unwrap_or_default(),
            secrets,
            labels,
            annotations: d.annotations.clone().unwrap_or_default(),
            limits: d.limits.clone(),
            requests: d.requests.clone(),
            created_at: existing
                .and_then(|s| s.created_at)
                .or_else(|| Some(chrono::Utc::now().to_rfc3339())),
        };
        let body = json!({
            "exec": {"kind": code.kind, "code": code.code_base64, "binary": true, "main": "main"},
            "limits": limits,
            "annotations": [
                {"key": "openfaas", "value": stored},
                {"key": "web-export", "value": false},
            ],
        });
        self.controller
            .put_entity(&who, &ns, EntityKind::Action, &d.service, body, true)
            .await?;
        tracing::info!(function = %d.service, namespace = %ns, image = %d.image, "openfaas function deployed");
        Ok(())
    }

    /// The `openfaas` annotation of an action, `Some(default)` for a plain Nimbus action, `None`
    /// when there is no such action.
    async fn stored(&self, who: &Identity, name: &str) -> Result<Option<StoredDeployment>> {
        match self
            .controller
            .get_entity(who, &who.namespace, EntityKind::Action, name, false)
            .await
        {
            Ok(v) => Ok(Some(stored_of(&v))),
            Err(nimbus_controller::ControllerError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn status_of(&self, ns: &str, v: &Value) -> FunctionStatus {
        let s = stored_of(v);
        let name = v["name"].as_str().unwrap_or_default().to_string();
        let min = v["limits"]["minInstances"].as_u64().unwrap_or(0);
        let of_ns = self.openfaas_ns(ns);
        let created = s.created_at.clone().or_else(|| {
            v["updated"]
                .as_i64()
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339())
        });
        FunctionStatus {
            invocation_count: self.metrics.invocations(&format!("{name}.{of_ns}")) as f64,
            image: if s.image.is_empty() {
                format!("nimbus:{}", v["exec"]["kind"].as_str().unwrap_or("action"))
            } else {
                s.image
            },
            name,
            namespace: of_ns,
            env_process: s.env_process,
            env_vars: Some(s.env_vars),
            secrets: Some(s.secrets),
            labels: Some(s.labels),
            annotations: Some(s.annotations),
            limits: s.limits,
            requests: s.requests,
            replicas: min.max(1),
            // Nimbus starts instances on demand (scale from zero), so a function is always ready.
            available_replicas: min.max(1),
            created_at: created,
        }
    }

    pub async fn list(&self, ns: Option<&str>) -> Result<Vec<FunctionStatus>> {
        let ns = self.nimbus_ns(ns);
        let who = self.identity(&ns).await?;
        let list = self
            .controller
            .list_entities(
                &who,
                &ns,
                EntityKind::Action,
                nimbus_controller::Paging {
                    skip: 0,
                    limit: 200,
                },
                false,
            )
            .await?;
        let mut out = Vec::new();
        for item in list {
            let Some(name) = item["name"].as_str() else {
                continue;
            };
            // Packaged actions are not OpenFaaS functions.
            if item["namespace"].as_str().is_some_and(|n| n.contains('/')) {
                continue;
            }
            match self
                .controller
                .get_entity(&who, &ns, EntityKind::Action, name, false)
                .await
            {
                Ok(v) if v["exec"]["kind"] != "sequence" => out.push(self.status_of(&ns, &v)),
                _ => {}
            }
        }
        Ok(out)
    }

    pub async fn get(&self, name: &str, ns: Option<&str>) -> Result<FunctionStatus> {
        let ns = self.nimbus_ns(ns);
        let who = self.identity(&ns).await?;
        let v = self
            .controller
            .get_entity(&who, &ns, EntityKind::Action, name, false)
            .await
            .map_err(|e| match e {
                nimbus_controller::ControllerError::NotFound(_) => {
                    GatewayError::NotFound(format!("function {name} not found"))
                }
                e => e.into(),
            })?;
        Ok(self.status_of(&ns, &v))
    }

    pub async fn delete(&self, name: &str, ns: Option<&str>) -> Result<()> {
        let ns = self.nimbus_ns(ns);
        let who = self.identity(&ns).await?;
        self.controller
            .delete_entity(&who, &ns, EntityKind::Action, name, false)
            .await
            .map_err(|e| match e {
                nimbus_controller::ControllerError::NotFound(_) => {
                    GatewayError::NotFound(format!("function {name} not found"))
                }
                e => e.into(),
            })?;
        self.secrets.unmount(&ns, name);
        Ok(())
    }

    /// Sets the warm instances (`replicas` → `minInstances`).
    pub async fn scale(&self, name: &str, ns: Option<&str>, replicas: u64) -> Result<()> {
        let ns = self.nimbus_ns(ns);
        let who = self.identity(&ns).await?;
        if self.stored(&who, name).await?.is_none() {
            return Err(GatewayError::NotFound(format!("function {name} not found")));
        }
        let body = json!({"limits": {"minInstances": replicas.min(64)}});
        self.controller
            .put_entity(&who, &ns, EntityKind::Action, name, body, true)
            .await?;
        Ok(())
    }

    /// Refreshes `gateway_service_count` from the deployed functions of every namespace.
    pub async fn refresh_service_count(&self) {
        let mut services = BTreeMap::new();
        for ns in self.namespaces().await.unwrap_or_default() {
            for f in self.list(Some(&ns)).await.unwrap_or_default() {
                services.insert(format!("{}.{}", f.name, f.namespace), f.replicas);
            }
        }
        self.metrics.set_services(services);
    }

    // ----- secrets -----

    pub fn secret_names(&self, ns: Option<&str>) -> Vec<String> {
        self.secrets.list(&self.nimbus_ns(ns))
    }

    pub async fn put_secret(&self, s: Secret, create: bool) -> Result<()> {
        let ns = self.nimbus_ns(s.namespace.as_deref());
        self.identity(&ns).await?;
        let value = match (s.raw_value, s.value) {
            (Some(raw), _) if !raw.is_empty() => base64::engine::general_purpose::STANDARD
                .decode(raw.as_bytes())
                .map_err(|_| GatewayError::BadRequest("rawValue must be base64".into()))?,
            (_, Some(v)) => v.into_bytes(),
            _ => Vec::new(),
        };
        self.secrets.put(&ns, &s.name, &value, create)
    }

    pub fn delete_secret(&self, name: &str, ns: Option<&str>) -> Result<()> {
        self.secrets.delete(&self.nimbus_ns(ns), name)
    }

    // ----- invocation -----

    /// Splits `name[.namespace]` at the last `.`.
    pub fn split_name<'a>(&self, full: &'a str) -> (&'a str, Option<&'a str>) {
        match full.rsplit_once('.') {
            Some((n, ns)) if !n.is_empty() && !ns.is_empty() => (n, Some(ns)),
            _ => (full, None),
        }
    }

    fn params(req: &FunctionRequest) -> Map<String, Value> {
        let mut headers = Map::new();
        for (k, v) in &req.headers {
            headers.insert(k.clone(), Value::String(v.clone()));
        }
        let mut p = Map::new();
        p.insert("__ow_method".into(), json!(req.method));
        p.insert("__ow_path".into(), json!(req.path));
        p.insert("__ow_query".into(), json!(req.query));
        p.insert("__ow_headers".into(), Value::Object(headers));
        p.insert(
            "__ow_body".into(),
            json!(base64::engine::general_purpose::STANDARD.encode(&req.body)),
        );
        p
    }

    /// A synchronous call of `/function/<name>[.<ns>]` by `caller`.
    pub async fn invoke(
        &self,
        full_name: &str,
        req: FunctionRequest,
        call_id: Option<String>,
        caller: &Caller,
    ) -> Result<FunctionResponse> {
        let (name, ns) = self.split_name(full_name);
        let ns = self.nimbus_ns(ns);
        let label = format!("{name}.{}", self.openfaas_ns(&ns));
        // Authorised before anything is counted: metric labels are only ever names of
        // functions the caller may reach.
        let who = self.authorize(caller, &ns, name, &label).await?;
        let action = FullyQualifiedName::parse(&format!("/{ns}/{name}"), &ns)
            .map_err(|e| GatewayError::BadRequest(e.to_string()))?;
        let started = Instant::now();
        self.metrics.started(&label);
        let request_ct = req
            .headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| v.clone());
        let out = self
            .controller
            .invoke(
                &who,
                InvokeRequest {
                    action,
                    params: Self::params(&req),
                    blocking: true,
                    wait: None,
                    cause: None,
                },
            )
            .await;
        let duration = started.elapsed().as_secs_f64();
        let res = match out {
            Ok(InvokeResponse::Done(a)) => {
                let mut r = response_of(&a, duration);
                if !r
                    .headers
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                {
                    r.headers.push((
                        "Content-Type".into(),
                        request_ct.unwrap_or_else(|| "text/plain".into()),
                    ));
                }
                if let Some(c) = call_id {
                    r.call_id = c;
                }
                if a.annotations
                    .get(nimbus_controller::RECORD_NOT_STORED)
                    .is_some()
                {
                    r.headers
                        .push(("X-Nimbus-Record".into(), "not-stored".into()));
                }
                Ok(r)
            }
            Ok(InvokeResponse::Accepted(id)) => Ok(FunctionResponse {
                status: 504,
                headers: vec![("X-OpenFaaS-Internal".into(), "gateway".into())],
                body: b"Function timed out.\n".to_vec(),
                call_id: call_id.unwrap_or_else(|| id.to_string()),
                duration,
            }),
            Err(nimbus_controller::ControllerError::NotFound(_)) => Err(GatewayError::NotFound(
                format!("error finding function {label}: not found"),
            )),
            Err(e) => Err(e.into()),
        };
        let code = match &res {
            Ok(r) => r.status,
            Err(e) => e.status(),
        };
        self.metrics.completed(&label, code, duration);
        res
    }

    /// `/async-function/<name>` by `caller`: durably queued; the call id is the activation id.
    pub async fn invoke_async(
        &self,
        full_name: &str,
        mut req: FunctionRequest,
        callback: Option<String>,
        caller: &Caller,
    ) -> Result<String> {
        if let Some(url) = &callback {
            self.check_callback(url)?;
        }
        let (name, ns) = self.split_name(full_name);
        let ns = self.nimbus_ns(ns);
        let label = format!("{name}.{}", self.openfaas_ns(&ns));
        let who = self.authorize(caller, &ns, name, &label).await?;
        let action = FullyQualifiedName::parse(&format!("/{ns}/{name}"), &ns)
            .map_err(|e| GatewayError::BadRequest(e.to_string()))?;
        // The queue-worker always POSTs.
        req.method = "POST".into();
        let out = self
            .controller
            .invoke(
                &who,
                InvokeRequest {
                    action,
                    params: Self::params(&req),
                    blocking: false,
                    wait: None,
                    cause: None,
                },
            )
            .await
            .map_err(|e| match e {
                nimbus_controller::ControllerError::NotFound(_) => {
                    GatewayError::NotFound(format!("error finding function {label}: not found"))
                }
                e => e.into(),
            })?;
        let id = match out {
            InvokeResponse::Accepted(id) => id.to_string(),
            InvokeResponse::Done(a) => a.activation_id.to_string(),
        };
        self.metrics.started(&label);
        if let Some(url) = callback {
            let call_id = req
                .headers
                .iter()
                .find(|(k, _)| k == "x-call-id")
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| id.clone());
            let p = PendingCallback {
                activation_id: id.clone(),
                namespace: ns,
                function: label,
                call_id,
                url,
            };
            let data = serde_json::to_string(&p).map_err(|e| GatewayError::io("callback", e))?;
            write_secret_file(
                &self.cfg.dir.join("callbacks").join(format!("{id}.json")),
                &data,
            )?;
            self.callbacks.notify_one();
        }
        Ok(id)
    }

    /// Delivers pending callbacks as their activations complete; resumes the ones left on disk
    /// by an earlier run. Runs until the process ends.
    pub async fn run_callbacks(self: Arc<Self>) {
        loop {
            let dir = self.cfg.dir.join("callbacks");
            let mut pending = Vec::new();
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if let Ok(s) = std::fs::read_to_string(e.path())
                    && let Ok(p) = serde_json::from_str::<PendingCallback>(&s)
                {
                    pending.push((e.path(), p));
                }
            }
            for (path, p) in pending {
                let Ok(who) = self.identity(&p.namespace).await else {
                    let _ = std::fs::remove_file(&path);
                    continue;
                };
                match self
                    .controller
                    .get_activation(&who, &p.namespace, &p.activation_id)
                    .await
                {
                    Ok(a) => {
                        let duration = a.duration.unwrap_or(0) as f64 / 1000.0;
                        let r = response_of(&a, duration);
                        self.metrics.completed(&p.function, r.status, duration);
                        self.deliver(&p, r).await;
                        let _ = std::fs::remove_file(&path);
                    }
                    Err(nimbus_controller::ControllerError::NotFound(_)) => {}
                    Err(e) => tracing::warn!(error = %e, "callback: cannot read the activation"),
                }
            }
            let _ =
                tokio::time::timeout(Duration::from_millis(100), self.callbacks.notified()).await;
        }
    }

    /// A callback URL must be http(s), and a literal address in it must pass the egress
    /// policy now (a host name is checked when the callback is sent, once resolved).
    fn check_callback(&self, url: &str) -> Result<()> {
        let bad =
            || GatewayError::BadRequest(format!("X-Callback-Url '{url}' is not an http(s) URL"));
        let u = reqwest::Url::parse(url).map_err(|_| bad())?;
        if u.scheme() != "http" && u.scheme() != "https" {
            return Err(bad());
        }
        let (Some(host), Some(port)) = (u.host_str(), u.port_or_known_default()) else {
            return Err(bad());
        };
        if let Some(Err(e)) = self.cfg.egress.check_literal(host, port) {
            return Err(GatewayError::BadRequest(format!("X-Callback-Url: {e}")));
        }
        Ok(())
    }

    async fn deliver(&self, p: &PendingCallback, r: FunctionResponse) {
        // Checked again (a name resolved now, every address) and sent only to the checked
        // addresses, without redirects: a refusal is logged and counted, never sent.
        let client = match reqwest::Url::parse(&p.url) {
            Ok(url) => self.cfg.egress.http_client(&url, CALLBACK_TIMEOUT).await,
            Err(_) => Err(nimbus_egress::EgressError::InvalidHost(p.url.clone())),
        };
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(call_id = %p.call_id, error = %e, detail = e.detail(), "callback not sent");
                return;
            }
        };
        let mut req = client.post(&p.url);
        for (k, v) in &r.headers {
            req = req.header(k, v);
        }
        req = req
            .header("X-Function-Status", r.status.to_string())
            .header("X-Function-Name", &p.function)
            .header("X-Call-Id", &p.call_id)
            .header("X-Duration-Seconds", format!("{:.6}", r.duration))
            .body(r.body);
        match req.send().await {
            Ok(resp) => {
                tracing::info!(call_id = %p.call_id, status = %resp.status(), "callback delivered")
            }
            // As in OpenFaaS, the callback's own result is only logged.
            Err(e) => tracing::warn!(call_id = %p.call_id, error = %e, "callback failed"),
        }
    }

    // ----- logs -----

    /// Log lines of a function's activations since `since_ms`, oldest first, and the newest
    /// activation start seen.
    pub async fn logs(
        &self,
        name: &str,
        ns: Option<&str>,
        since_ms: Option<i64>,
    ) -> Result<Vec<(i64, String, LogLine)>> {
        let nns = self.nimbus_ns(ns);
        let who = self.identity(&nns).await?;
        if self.stored(&who, name).await?.is_none() {
            return Err(GatewayError::NotFound(format!("function {name} not found")));
        }
        let list = self
            .controller
            .list_activations(
                &who,
                &nns,
                &ActivationListQuery {
                    name: Some(name.to_string()),
                    since: since_ms,
                    upto: None,
                    skip: 0,
                    limit: 200,
                    docs: true,
                },
            )
            .await?;
        let of_ns = self.openfaas_ns(&nns);
        let mut out = Vec::new();
        for a in list.iter().rev() {
            let start = a["start"].as_i64().unwrap_or(0);
            let id = a["activationId"].as_str().unwrap_or_default().to_string();
            for l in a["logs"].as_array().into_iter().flatten() {
                let Some(l) = l.as_str() else { continue };
                // `2024-01-01T00:00:00.000Z stdout: text`
                let (ts, rest) = l.split_once(' ').unwrap_or(("", l));
                let text = rest
                    .strip_prefix("stdout: ")
                    .or_else(|| rest.strip_prefix("stderr: "))
                    .unwrap_or(rest);
                out.push((
                    start,
                    id.clone(),
                    LogLine {
                        name: name.to_string(),
                        namespace: of_ns.clone(),
                        instance: id.clone(),
                        timestamp: ts.to_string(),
                        text: text.to_string(),
                    },
                ));
            }
        }
        Ok(out)
    }
}

fn stored_of(v: &Value) -> StoredDeployment {
    v["annotations"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["key"] == "openfaas")
        .and_then(|a| serde_json::from_value(a["value"].clone()).ok())
        .unwrap_or_default()
}

/// The HTTP answer of a finished activation: the adapter's `{statusCode, headers, body}` for
/// OpenFaaS functions, the JSON result for plain Nimbus actions, 500 for failures.
fn response_of(a: &Activation, duration: f64) -> FunctionResponse {
    let call_id = a.activation_id.to_string();
    let result = &a.response.result;
    if a.response.success {
        if result.get("isBase64Encoded") == Some(&Value::Bool(true))
            && let Some(code) = result.get("statusCode").and_then(|c| c.as_u64())
        {
            let body = result["body"]
                .as_str()
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .unwrap_or_default();
            let headers = result["headers"]
                .as_object()
                .map(|h| {
                    h.iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                v.as_str()
                                    .map(str::to_string)
                                    .unwrap_or_else(|| v.to_string()),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            return FunctionResponse {
                status: code.clamp(100, 599) as u16,
                headers,
                body,
                call_id,
                duration,
            };
        }
        return FunctionResponse {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: serde_json::to_vec(result).unwrap_or_default(),
            call_id,
            duration,
        };
    }
    let msg = result
        .get("error")
        .map(|e| {
            e.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| e.to_string())
        })
        .unwrap_or_else(|| a.response.status.clone());
    let timed_out = a
        .annotations
        .get("timeout")
        .is_some_and(|v| v == &json!(true));
    FunctionResponse {
        status: if timed_out { 504 } else { 500 },
        headers: vec![
            ("Content-Type".into(), "text/plain".into()),
            ("X-OpenFaaS-Internal".into(), "nimbus".into()),
        ],
        body: format!("{msg}\n").into_bytes(),
        call_id,
        duration,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_quantities() {
        assert_eq!(memory_mb("128Mi"), Some(128));
        assert_eq!(memory_mb("1Gi"), Some(1024));
        assert_eq!(memory_mb("256M"), Some(245));
        assert_eq!(memory_mb("lots"), None);
    }
}
