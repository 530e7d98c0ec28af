//! OpenFaaS-style commands: `nimbus new`, `up`, `list`, `invoke`, `logs`, `remove`, talking to
//! the gateway routes of a Nimbus server (docs/openfaas.md, docs/cli.md).

mod templates;

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where the gateway is and how to log in.
#[derive(Args, Clone, Debug)]
pub struct GatewayOpts {
    /// Gateway URL (the Nimbus server).
    #[arg(
        short = 'g',
        long,
        env = "OPENFAAS_URL",
        default_value = "http://127.0.0.1:3233"
    )]
    pub gateway: String,
    /// Admin user of /system/*.
    #[arg(long, env = "OPENFAAS_USER", default_value = "admin")]
    pub user: String,
    /// Admin password; default: read from DATA_DIR/openfaas/basic-auth-password (or the
    /// `--dev` password when that file does not exist).
    #[arg(long, env = "OPENFAAS_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// The server's data directory (to read the generated admin password).
    #[arg(long, env = "NIMBUS_DATA_DIR", default_value = ".nimbus")]
    pub data_dir: PathBuf,
    /// OpenFaaS namespace (default openfaas-fn).
    #[arg(short = 'n', long = "openfaas-namespace", value_name = "NS")]
    pub namespace: Option<String>,
}

#[derive(Args)]
pub struct NewArgs {
    /// Function name (also its directory).
    pub name: String,
    /// Template: python3-http, python3, node20, rust-wasm, exec.
    #[arg(long)]
    pub lang: String,
    /// Stack file to create or add the function to.
    #[arg(short = 'f', long, default_value = "stack.yml")]
    pub file: PathBuf,
}

#[derive(Args)]
pub struct UpArgs {
    #[arg(short = 'f', long, default_value = "stack.yml")]
    pub file: PathBuf,
    /// Only this function of the stack file.
    #[arg(long)]
    pub filter: Option<String>,
    #[command(flatten)]
    pub gw: GatewayOpts,
    /// Run pip/npm install scripts unsandboxed even as root (see docs/security.md, "Builds").
    #[arg(long)]
    pub no_sandbox: bool,
    #[command(flatten)]
    pub build: BuildArgs,
}

/// Limits of the install steps (pip, npm) of a build.
#[derive(Args, Debug, Clone)]
pub struct BuildArgs {
    /// Seconds one install step (pip or npm) may take.
    #[arg(long, default_value_t = 300)]
    pub build_timeout: u64,
    /// Memory (MB) of one install step.
    #[arg(long, default_value_t = 1024)]
    pub build_memory: u64,
    /// CPUs one install step may use (e.g. 0.5, 2).
    #[arg(long, default_value_t = 1.0)]
    pub build_cpus: f64,
}

impl BuildArgs {
    pub fn limits(&self) -> nimbus_openfaas::bundle::BuildLimits {
        nimbus_openfaas::bundle::BuildLimits {
            timeout: std::time::Duration::from_secs(self.build_timeout.max(1)),
            memory_mb: self.build_memory.max(64),
            cpu_millicores: ((self.build_cpus * 1000.0) as u64).max(10),
            ..Default::default()
        }
    }

    /// Sandboxed builds in `sandbox`; unsandboxed when it is `None` (`--no-sandbox`).
    pub fn builder(
        &self,
        sandbox: Option<std::sync::Arc<nimbus_sandbox::Sandbox>>,
    ) -> nimbus_openfaas::bundle::Builder {
        match sandbox {
            Some(sb) => nimbus_openfaas::bundle::Builder::sandboxed(sb, self.limits()),
            None => nimbus_openfaas::bundle::Builder::unsandboxed(self.limits()),
        }
    }
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub gw: GatewayOpts,
}

#[derive(Args)]
pub struct InvokeArgs {
    pub name: String,
    /// Queue the call (202) instead of waiting.
    #[arg(long = "async")]
    pub is_async: bool,
    /// Extra header, `Name=Value` (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    #[arg(long, default_value = "POST")]
    pub method: String,
    #[arg(long, default_value = "text/plain")]
    pub content_type: String,
    #[command(flatten)]
    pub gw: GatewayOpts,
}

#[derive(Args)]
pub struct LogsArgs {
    pub name: String,
    /// Keep streaming new lines.
    #[arg(long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<i64>,
    #[command(flatten)]
    pub gw: GatewayOpts,
}

#[derive(Args)]
pub struct RemoveArgs {
    pub name: String,
    #[command(flatten)]
    pub gw: GatewayOpts,
}

/// The OpenFaaS stack file (the fields Nimbus uses).
#[derive(Debug, Deserialize)]
pub struct Stack {
    #[serde(default)]
    pub provider: Option<Provider>,
    pub functions: BTreeMap<String, StackFunction>,
}

#[derive(Debug, Deserialize)]
pub struct Provider {
    #[serde(default)]
    pub gateway: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct StackFunction {
    pub lang: String,
    pub handler: String,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub fprocess: Option<String>,
    #[serde(default)]
    pub environment: BTreeMap<String, serde_yaml_ng::Value>,
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, serde_yaml_ng::Value>,
    #[serde(default)]
    pub annotations: BTreeMap<String, serde_yaml_ng::Value>,
    #[serde(default)]
    pub limits: Option<BTreeMap<String, serde_yaml_ng::Value>>,
    #[serde(default)]
    pub requests: Option<BTreeMap<String, serde_yaml_ng::Value>>,
    #[serde(default)]
    pub namespace: Option<String>,
}

fn scalar(v: &serde_yaml_ng::Value) -> String {
    match v {
        serde_yaml_ng::Value::String(s) => s.clone(),
        serde_yaml_ng::Value::Number(n) => n.to_string(),
        serde_yaml_ng::Value::Bool(b) => b.to_string(),
        serde_yaml_ng::Value::Null => String::new(),
        other => serde_yaml_ng::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

fn strings(m: &BTreeMap<String, serde_yaml_ng::Value>) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), scalar(v))).collect()
}

/// `${VAR}` and `${VAR:-default}` substitution, as faas-cli applies to stack files.
fn envsubst(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let Some(j) = rest[i..].find('}') else {
            out.push_str(&rest[i..]);
            return out;
        };
        let expr = &rest[i + 2..i + j];
        let (name, default) = expr.split_once(":-").unwrap_or((expr, ""));
        out.push_str(&std::env::var(name).unwrap_or_else(|_| default.to_string()));
        rest = &rest[i + j + 1..];
    }
    out.push_str(rest);
    out
}

pub fn load_stack(path: &Path) -> anyhow::Result<Stack> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml_ng::from_str(&envsubst(&text)).with_context(|| format!("parsing {}", path.display()))
}

pub fn new(a: NewArgs) -> anyhow::Result<()> {
    let Some(files) = templates::files(&a.lang) else {
        bail!(
            "unknown template '{}'; available: {}",
            a.lang,
            templates::LANGS.join(", ")
        );
    };
    nimbus_model_name_check(&a.name)?;
    let dir = PathBuf::from(&a.name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    for (rel, text, exec) in files {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, text)?;
        if *exec {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    let entry = format!(
        "  {name}:\n    lang: {lang}\n    handler: ./{name}\n    image: {name}:latest\n    labels:\n      com.openfaas.scale.min: \"1\"\n      com.openfaas.scale.max: \"10\"\n      com.openfaas.scale.zero: \"true\"\n",
        name = a.name,
        lang = a.lang
    );
    if a.file.exists() {
        let mut text = std::fs::read_to_string(&a.file)?;
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&entry);
        std::fs::write(&a.file, text)?;
    } else {
        let text = format!(
            "version: 1.0\nprovider:\n  name: openfaas\n  gateway: http://127.0.0.1:3233\nfunctions:\n{entry}"
        );
        std::fs::write(&a.file, text)?;
    }
    println!(
        "Function created in folder: {}\nStack file written: {}",
        dir.display(),
        a.file.display()
    );
    if a.lang == "rust-wasm" {
        println!(
            "Note: rust-wasm needs the WebAssembly kinds (wasm:http); `nimbus up` reports whether this server has them."
        );
    }
    Ok(())
}

fn nimbus_model_name_check(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok {
        bail!("invalid function name '{name}': use letters, digits, '-' and '_'");
    }
    Ok(())
}

struct Gw {
    base: String,
    user: String,
    pass: String,
    ns: Option<String>,
    http: reqwest::Client,
}

impl Gw {
    fn new(o: &GatewayOpts, stack_gateway: Option<&str>) -> Gw {
        let base = if o.gateway == "http://127.0.0.1:3233" {
            stack_gateway.unwrap_or(&o.gateway).to_string()
        } else {
            o.gateway.clone()
        };
        let pass = o.password.clone().unwrap_or_else(|| {
            std::fs::read_to_string(o.data_dir.join("openfaas").join("basic-auth-password"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "nimbus-dev".into())
        });
        Gw {
            base: base.trim_end_matches('/').to_string(),
            user: o.user.clone(),
            pass,
            ns: o.namespace.clone(),
            http: reqwest::Client::new(),
        }
    }

    fn system(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(m, format!("{}{path}", self.base))
            .basic_auth(&self.user, Some(&self.pass))
    }
}

async fn check(r: reqwest::Response, what: &str) -> anyhow::Result<reqwest::Response> {
    let s = r.status();
    if s.is_success() {
        return Ok(r);
    }
    let text = r.text().await.unwrap_or_default();
    if s == 401 {
        bail!(
            "{what}: unauthorized (401): pass --password or OPENFAAS_PASSWORD, or --data-dir of the server"
        );
    }
    bail!("{what}: {s}: {}", text.trim())
}

pub async fn up(a: UpArgs) -> anyhow::Result<()> {
    let stack = load_stack(&a.file)?;
    let base_dir = a
        .file
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let base_dir = std::fs::canonicalize(&base_dir)?;
    let gw = Gw::new(
        &a.gw,
        stack.provider.as_ref().and_then(|p| p.gateway.as_deref()),
    );
    // Builds run here, on the CLI's machine. As root, install scripts run in the function
    // sandbox (as on the server); as any other user they run as that user, who is already who
    // they would run as by hand (see docs/security.md, "Builds").
    let root = nimbus_sandbox::HostOps::euid(&nimbus_sandbox::RealHost) == 0;
    let builder = if root && !a.no_sandbox {
        let sb = nimbus_sandbox::Sandbox::detect(std::sync::Arc::new(nimbus_sandbox::RealHost));
        a.build.builder(Some(std::sync::Arc::new(sb)))
    } else {
        a.build.builder(None)
    };
    for (name, f) in &stack.functions {
        if a.filter.as_deref().is_some_and(|x| x != name) {
            continue;
        }
        let handler = base_dir.join(&f.handler);
        let out = base_dir.join("build").join(name);
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed}] {prefix}: {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.set_prefix(name.clone());
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        let b2 = bar.clone();
        let mut progress = move |m: &str| b2.set_message(m.to_string());
        nimbus_openfaas::bundle::build(&f.lang, &handler, &out, &builder, &mut progress)
            .await
            .map_err(|e| anyhow::anyhow!("building {name}: {e}"))?;
        bar.set_message("deploying");
        let mut annotations = strings(&f.annotations);
        if let Some(image) = &f.image {
            // The stack's registry image has no meaning here; kept for reference.
            annotations.insert("com.nimbus.stack.image".into(), image.clone());
        }
        let mut env = strings(&f.environment);
        if let Some(fp) = &f.fprocess {
            env.insert("fprocess".into(), fp.clone());
        }
        let res = |m: &Option<BTreeMap<String, serde_yaml_ng::Value>>| {
            m.as_ref()
                .map(|m| serde_json::to_value(strings(m)).unwrap_or_default())
        };
        let body = serde_json::json!({
            "service": name,
            "image": format!("file://{}", out.display()),
            "namespace": f.namespace.clone().or_else(|| gw.ns.clone()),
            "envProcess": f.fprocess,
            "envVars": env,
            "secrets": f.secrets,
            "labels": strings(&f.labels),
            "annotations": annotations,
            "limits": res(&f.limits),
            "requests": res(&f.requests),
        });
        let r = gw
            .system(reqwest::Method::PUT, "/system/functions")
            .json(&body)
            .send()
            .await?;
        let r = if r.status() == 404 {
            gw.system(reqwest::Method::POST, "/system/functions")
                .json(&body)
                .send()
                .await?
        } else {
            r
        };
        check(r, &format!("deploying {name}")).await?;
        bar.finish_with_message(format!("deployed: {}/function/{name}", gw.base));
    }
    Ok(())
}

pub async fn list(a: ListArgs) -> anyhow::Result<()> {
    let gw = Gw::new(&a.gw, None);
    let mut path = "/system/functions".to_string();
    if let Some(ns) = &gw.ns {
        path.push_str(&format!("?namespace={ns}"));
    }
    let r = check(
        gw.system(reqwest::Method::GET, &path).send().await?,
        "listing",
    )
    .await?;
    let list: Vec<serde_json::Value> = r.json().await?;
    println!(
        "{:<30} {:>12} {:>9}  Image",
        "Function", "Invocations", "Replicas"
    );
    for f in list {
        println!(
            "{:<30} {:>12} {:>9}  {}",
            f["name"].as_str().unwrap_or_default(),
            f["invocationCount"].as_f64().unwrap_or(0.0),
            f["replicas"].as_u64().unwrap_or(0),
            f["image"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

pub async fn invoke(a: InvokeArgs) -> anyhow::Result<()> {
    let gw = Gw::new(&a.gw, None);
    let ns = gw.ns.clone().unwrap_or_else(|| "openfaas-fn".into());
    let prefix = if a.is_async {
        "async-function"
    } else {
        "function"
    };
    let mut body = Vec::new();
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        std::io::stdin().read_to_end(&mut body)?;
    }
    let method = reqwest::Method::from_bytes(a.method.as_bytes())?;
    let mut req = gw
        .http
        .request(method, format!("{}/{prefix}/{}.{ns}", gw.base, a.name))
        .header("Content-Type", &a.content_type)
        .body(body);
    for h in &a.headers {
        let (k, v) = h
            .split_once('=')
            .or_else(|| h.split_once(':'))
            .context("header must be Name=Value")?;
        req = req.header(k.trim(), v.trim());
    }
    let r = req.send().await?;
    let status = r.status();
    if a.is_async {
        if status == 202 {
            let id = r
                .headers()
                .get("x-call-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            eprintln!("Function submitted asynchronously (call id {id}).");
            return Ok(());
        }
        bail!("{status}: {}", r.text().await.unwrap_or_default());
    }
    let bytes = r.bytes().await?;
    use std::io::Write;
    std::io::stdout().write_all(&bytes)?;
    if !status.is_success() {
        bail!("server returned {status}");
    }
    Ok(())
}

pub async fn logs(a: LogsArgs) -> anyhow::Result<()> {
    let gw = Gw::new(&a.gw, None);
    let mut q = vec![("name", a.name.clone()), ("follow", a.follow.to_string())];
    q.push(("tail", a.tail.unwrap_or(-1).to_string()));
    if let Some(ns) = &gw.ns {
        q.push(("namespace", ns.clone()));
    }
    let mut r = check(
        gw.system(reqwest::Method::GET, "/system/logs")
            .query(&q)
            .send()
            .await?,
        "logs",
    )
    .await?;
    let mut buf = Vec::new();
    while let Some(chunk) = r.chunk().await? {
        buf.extend_from_slice(&chunk);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) {
                println!(
                    "{} {}",
                    v["timestamp"].as_str().unwrap_or_default(),
                    v["text"].as_str().unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

pub async fn remove(a: RemoveArgs) -> anyhow::Result<()> {
    let gw = Gw::new(&a.gw, None);
    let r = gw
        .system(reqwest::Method::DELETE, "/system/functions")
        .json(&serde_json::json!({"functionName": a.name, "namespace": gw.ns}))
        .send()
        .await?;
    check(r, &format!("removing {}", a.name)).await?;
    println!("Removed {}", a.name);
    Ok(())
}
