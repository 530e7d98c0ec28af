//! Function bundles: what an OpenFaaS `image` names in Nimbus, and how one is built.
//!
//! A bundle is a directory (or a `.tar`/`.tar.gz` of one) holding the user's code under
//! `function/` and its language in `nimbus.json` (`{"lang": "python3-http"}`) or in an OpenFaaS
//! `template.yml` (`language: python3-http`). Dependencies live beside it: `packages/` (pip
//! `--target`) for Python, `function/node_modules/` for Node.js. At deploy time the gateway turns
//! a bundle into an action: a zip of the bundle plus the language's adapter
//! (`nimbus_runtime::openfaas`) as entry point, and the deployment's environment.
//!
//! Building (`nimbus up`, and `POST /build` from `faas-cli --remote-builder`) starts from a
//! handler directory or an OpenFaaS shrinkwrapped build context (`function/` + template files),
//! copies the code and installs `requirements.txt` with pip / `package.json` with npm. Those
//! install steps run other people's code (setup.py, npm lifecycle scripts), so a [`Builder`]
//! runs them in the function sandbox (see docs/security.md, "Builds").

use crate::error::{GatewayError, Result};
use base64::Engine;
use nimbus_sandbox::sandbox::DEFAULT_PATH;
use nimbus_sandbox::{CODE_DIR, Job, JobEnd, Network, Sandbox, SandboxSpec, run_job};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The languages (OpenFaaS template names) Nimbus bundles, with their Nimbus kind.
pub const LANGS: &[(&str, &str)] = &[
    ("python3-http", "python:3.11"),
    ("python3", "python:3.11"),
    ("node20", "nodejs:20"),
    ("exec", "python:3.11"),
    ("rust-wasm", "wasm:http"),
];

/// Nimbus kind of an OpenFaaS language.
pub fn kind_of(lang: &str) -> Option<&'static str> {
    let lang = match lang {
        "python3-http-debian" | "python3-flask" | "python3-http" => "python3-http",
        "python" | "python3" | "python3-debian" => "python3",
        "node" | "node18" | "node20" | "node22" => "node20",
        other => other,
    };
    LANGS.iter().find(|(l, _)| *l == lang).map(|(_, k)| *k)
}

fn canonical_lang(lang: &str) -> &str {
    match lang {
        "python3-http-debian" | "python3-flask" => "python3-http",
        "python" | "python3-debian" => "python3",
        "node" | "node18" | "node22" => "node20",
        other => other,
    }
}

/// What an action is made of: its kind and its code (base64 zip).
#[derive(Debug, Clone)]
pub struct ActionCode {
    pub lang: String,
    pub kind: String,
    pub code_base64: String,
}

/// Largest bundle zip (the action code limit, 48 MB).
const MAX_ZIP: usize = nimbus_model::exec::MAX_CODE_BYTES / 4 * 3;

/// Reads the language of a bundle or build context directory.
pub fn read_lang(dir: &Path) -> Option<String> {
    if let Ok(s) = std::fs::read_to_string(dir.join("nimbus.json"))
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&s)
        && let Some(l) = v.get("lang").and_then(|l| l.as_str())
    {
        return Some(l.to_string());
    }
    let yml = std::fs::read_to_string(dir.join("template.yml")).ok()?;
    yml.lines().find_map(|l| {
        l.strip_prefix("language:")
            .map(|v| v.trim().trim_matches('"').to_string())
    })
}

/// A bundle directory from an `image` reference: `file:///dir`, `file:///x.tar[.gz]`, or the
/// name of a bundle built by `POST /build` (kept under `built`).
pub fn resolve_image(image: &str, built: &Path) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    if let Some(p) = image.strip_prefix("file://") {
        let path = PathBuf::from(p);
        if path.is_dir() {
            return Ok((path, None));
        }
        if path.is_file() {
            let tmp = tempfile::tempdir().map_err(|e| GatewayError::io("temporary dir", e))?;
            let data = std::fs::read(&path).map_err(|e| GatewayError::io("reading bundle", e))?;
            unpack_tar(&data, tmp.path())?;
            let root = tmp.path().to_path_buf();
            return Ok((root, Some(tmp)));
        }
        return Err(GatewayError::BadRequest(format!(
            "image '{image}': no such bundle directory or tarball on the server"
        )));
    }
    let dir = built.join(image_dir_name(image));
    if dir.is_dir() {
        return Ok((dir, None));
    }
    Err(GatewayError::BadRequest(format!(
        "image '{image}' is not a Nimbus function bundle: use file:///path/to/bundle (a directory or tarball built by `nimbus up`), or build it first with faas-cli --remote-builder (POST /build); container images are not run"
    )))
}

/// Directory name of a built image (`registry/name:tag` → safe characters only).
pub fn image_dir_name(image: &str) -> String {
    let image = if image.rsplit('/').next().is_some_and(|l| !l.contains(':')) {
        format!("{image}:latest")
    } else {
        image.to_string()
    };
    image
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Extracts a tar (optionally gzip-compressed) into `dir`, refusing paths that leave it.
pub fn unpack_tar(data: &[u8], dir: &Path) -> Result<()> {
    let reader: Box<dyn Read> = if data.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(data))
    } else {
        Box::new(data)
    };
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(false);
    let entries = ar
        .entries()
        .map_err(|e| GatewayError::BadRequest(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| GatewayError::BadRequest(format!("bad tar entry: {e}")))?;
        // Files and directories only: links could point out of the bundle, and devices or
        // FIFOs have no place in one.
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            continue;
        }
        // unpack_in refuses `..` and absolute paths.
        entry
            .unpack_in(dir)
            .map_err(|e| GatewayError::BadRequest(format!("cannot extract tar entry: {e}")))?;
    }
    normalise_modes(dir).map_err(|e| GatewayError::io("extracting the tar archive", e))
}

/// Directories 0755, files 0755 when any execute bit is set and 0644 otherwise: the sandbox
/// user, which owns none of it, must read it all, whatever modes the archive stored.
fn normalise_modes(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let meta = std::fs::symlink_metadata(e.path())?;
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() {
                let mode = nimbus_runtime::process::normal_mode(Some(meta.permissions().mode()));
                std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode))?;
            }
        }
    }
    Ok(())
}

/// Zips a bundle into an action's code, with the adapter of its language and the environment.
pub fn package(bundle: &Path, env: &BTreeMap<String, String>) -> Result<ActionCode> {
    let lang = read_lang(bundle).ok_or_else(|| {
        GatewayError::BadRequest(
            "the bundle names no language: it needs nimbus.json {\"lang\": ...} or template.yml"
                .into(),
        )
    })?;
    let lang = canonical_lang(&lang).to_string();
    let kind = kind_of(&lang).ok_or_else(|| {
        GatewayError::BadRequest(format!(
            "language '{lang}' is not supported; supported: {}",
            LANGS.iter().map(|l| l.0).collect::<Vec<_>>().join(", ")
        ))
    })?;
    if kind.starts_with("wasm:") {
        return Err(GatewayError::BadRequest(format!(
            "language '{lang}' needs the WebAssembly kinds, which this build does not include yet"
        )));
    }
    let function = bundle.join("function");
    if !function.is_dir() {
        return Err(GatewayError::BadRequest(
            "the bundle has no function/ directory".into(),
        ));
    }
    let adapter: &[(&str, &str)] = match lang.as_str() {
        "python3-http" => &[("__main__.py", nimbus_runtime::openfaas::PYTHON_HTTP)],
        "python3" => &[("__main__.py", nimbus_runtime::openfaas::PYTHON_CLASSIC)],
        "exec" => &[("__main__.py", nimbus_runtime::openfaas::EXEC_FORK)],
        _ => &[
            ("index.js", nimbus_runtime::openfaas::NODE_HTTP),
            ("package.json", "{\"main\": \"index.js\"}\n"),
        ],
    };
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = |mode: u32| {
        zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(mode)
    };
    let zerr = |e: zip::result::ZipError| GatewayError::io("building the bundle zip", e);
    let werr = |e: std::io::Error| GatewayError::io("building the bundle zip", e);
    for (name, text) in adapter {
        w.start_file(*name, opts(0o644)).map_err(zerr)?;
        w.write_all(text.as_bytes()).map_err(werr)?;
    }
    let env_json = serde_json::to_vec(env).map_err(|e| GatewayError::io("environment", e))?;
    w.start_file("openfaas.env.json", opts(0o644))
        .map_err(zerr)?;
    w.write_all(&env_json).map_err(werr)?;
    if kind.starts_with("python") && !function.join("__init__.py").exists() {
        w.start_file("function/__init__.py", opts(0o644))
            .map_err(zerr)?;
    }
    let mut total = 0usize;
    for top in ["function", "packages"] {
        let root = bundle.join(top);
        if root.is_dir() {
            add_dir(&mut w, bundle, &root, &mut total)?;
        }
    }
    let bytes = w.finish().map_err(zerr)?.into_inner();
    if bytes.len() > MAX_ZIP {
        return Err(GatewayError::TooLarge(format!(
            "the bundle is {} bytes zipped, over the limit of {MAX_ZIP} bytes",
            bytes.len()
        )));
    }
    Ok(ActionCode {
        lang,
        kind: kind.to_string(),
        code_base64: base64::engine::general_purpose::STANDARD.encode(bytes),
    })
}

fn add_dir<W: Write + std::io::Seek>(
    w: &mut zip::ZipWriter<W>,
    base: &Path,
    dir: &Path,
    total: &mut usize,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| GatewayError::io("reading the bundle", e))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| GatewayError::io("reading the bundle", e))?;
        let Ok(rel) = path.strip_prefix(base) else {
            continue;
        };
        let name = rel.to_string_lossy().to_string();
        if meta.is_dir() {
            if name.ends_with("__pycache__") {
                continue;
            }
            add_dir(w, base, &path, total)?;
        } else if meta.is_file() {
            let data =
                std::fs::read(&path).map_err(|e| GatewayError::io("reading the bundle", e))?;
            *total += data.len();
            if *total > 4 * MAX_ZIP {
                return Err(GatewayError::TooLarge(
                    "the bundle is too large (over 144 MB unpacked)".into(),
                ));
            }
            let mode = meta.permissions().mode() & 0o777;
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .unix_permissions(mode | 0o444);
            w.start_file(name, opts)
                .map_err(|e| GatewayError::io("building the bundle zip", e))?;
            w.write_all(&data)
                .map_err(|e| GatewayError::io("building the bundle zip", e))?;
        }
        // Symlinks are skipped: a bundle must not point outside itself.
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let ft = e.file_type()?;
        let dest = to.join(e.file_name());
        if ft.is_dir() {
            if e.file_name() == "node_modules" || e.file_name() == "__pycache__" {
                continue;
            }
            copy_dir(&e.path(), &dest)?;
        } else if ft.is_file() {
            std::fs::copy(e.path(), &dest)?;
        }
    }
    Ok(())
}

/// One step of a build, for progress reporting.
pub trait BuildProgress {
    fn step(&mut self, message: &str);
}

impl<F: FnMut(&str)> BuildProgress for F {
    fn step(&mut self, message: &str) {
        self(message)
    }
}

/// Limits of every install step of a build (`pip install`, `npm install`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildLimits {
    /// Wall-clock time of one step.
    pub timeout: Duration,
    /// Memory of the step's processes (cgroup), MB.
    pub memory_mb: u64,
    /// CPU cap, thousandths of a CPU (cgroup CFS quota).
    pub cpu_millicores: u64,
    /// Processes and threads (cgroup `pids.max`).
    pub pids: u64,
    /// The step's private `/tmp` (RAM, counted against `memory_mb`), MB. pip and npm work in
    /// `TMPDIR` on disk instead (inside the build directory, removed afterwards).
    pub tmp_mb: u64,
}

impl Default for BuildLimits {
    fn default() -> Self {
        BuildLimits {
            timeout: Duration::from_secs(300),
            memory_mb: 1024,
            cpu_millicores: 1000,
            pids: 512,
            tmp_mb: 64,
        }
    }
}

/// Lines of pip/npm output a failed step reports.
pub const LOG_TAIL_LINES: usize = 40;
/// Output kept per step (the end of it).
const OUTPUT_TAIL_BYTES: usize = 64 << 10;
/// Scratch space of a build inside its directory (pip's and npm's temporary files, npm's
/// cache); removed after the build and never packaged.
const SCRATCH: &str = ".nimbus-build";
/// Registry settings taken from the environment of the process that builds (the operator's
/// choice of package index, its CA bundle, an HTTP proxy); nothing else of that environment
/// reaches a build.
pub const REGISTRY_ENV: &[&str] = &[
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_TRUSTED_HOST",
    "PIP_CERT",
    "PIP_DEFAULT_TIMEOUT",
    "NPM_CONFIG_REGISTRY",
    "NODE_EXTRA_CA_CERTS",
    "npm_config_registry",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// How a build runs its install steps: in the function sandbox (the default), or directly as
/// this process's user.
#[derive(Debug, Clone)]
pub struct Builder {
    sandbox: Option<Arc<Sandbox>>,
    limits: BuildLimits,
    python: PathBuf,
    node: PathBuf,
    /// npm's JavaScript entry point (run with `node`), or an `npm` executable.
    npm: PathBuf,
    /// Interpreter installations outside `/usr` (pyenv, nvm), bound read-only.
    extra_ro: Vec<PathBuf>,
    registry_env: Vec<(String, String)>,
}

static NEXT_JOB: AtomicU64 = AtomicU64::new(0);

impl Builder {
    /// Install steps run in `sandbox`, as its unprivileged user, with the build directory as
    /// the only writable bind and outbound network; refused when bubblewrap does not work.
    pub fn sandboxed(sandbox: Arc<Sandbox>, limits: BuildLimits) -> Self {
        Self::new(Some(sandbox), limits)
    }

    /// Install steps run directly as this process's user, with the same clean environment and
    /// timeout but no isolation: a server started with `--no-sandbox`, or `nimbus up` run by an
    /// unprivileged user on their own machine.
    pub fn unsandboxed(limits: BuildLimits) -> Self {
        Self::new(None, limits)
    }

    fn new(sandbox: Option<Arc<Sandbox>>, limits: BuildLimits) -> Self {
        use nimbus_runtime::process::{interpreter_prefix, resolve_in_path, resolve_python};
        let python = resolve_python(&resolve_in_path(Path::new("python3")));
        let node = resolve_in_path(Path::new("node"));
        let npm = resolve_in_path(Path::new("npm"));
        let npm = std::fs::canonicalize(&npm).unwrap_or(npm);
        let mut extra_ro: Vec<PathBuf> = Vec::new();
        for p in [&python, &node, &npm]
            .into_iter()
            .filter_map(|b| interpreter_prefix(b))
        {
            if !extra_ro.iter().any(|d| p.starts_with(d)) {
                extra_ro.push(p);
            }
        }
        let registry_env = REGISTRY_ENV
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect();
        Builder {
            sandbox,
            limits,
            python,
            node,
            npm,
            extra_ro,
            registry_env,
        }
    }

    pub fn limits(&self) -> BuildLimits {
        self.limits
    }

    /// Whether install steps run sandboxed.
    pub fn is_sandboxed(&self) -> bool {
        self.sandbox.is_some()
    }

    /// Refuses a build this machine cannot run safely: the sandbox is required but bubblewrap
    /// does not work, or dependencies must be downloaded but the sandbox has no outbound
    /// network.
    pub fn check(&self, needs_network: bool) -> Result<()> {
        let Some(sb) = &self.sandbox else {
            return Ok(());
        };
        let layers = sb.layers();
        if layers.bwrap.is_none() {
            return Err(GatewayError::Forbidden(format!(
                "builds run their install scripts in the function sandbox, which does not work on this machine ({}); install bubblewrap, or build with --no-sandbox (nimbus serve or nimbus up) to run install scripts unsandboxed (trusted code only)",
                sb.warnings().join("; ")
            )));
        }
        if needs_network && !layers.outbound {
            return Err(GatewayError::Forbidden(
                "installing dependencies needs the sandbox's outbound network, which this machine cannot provide (slirp4netns must be installed and the builder must run as root); vendor the dependencies into the handler instead, or build with --no-sandbox (trusted code only)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Runs one install step with `out` (the bundle directory) as its writable directory.
    /// `args` may name host paths under `out`; they are translated.
    async fn install(
        &self,
        out: &Path,
        step: &str,
        program: &Path,
        args: Vec<OsString>,
        cwd: &Path,
    ) -> Result<()> {
        let scratch = out.join(SCRATCH);
        let dirs = [scratch.join("tmp"), scratch.join("npm-cache")];
        for d in &dirs {
            std::fs::create_dir_all(d).map_err(|e| GatewayError::io("build scratch space", e))?;
        }
        let mut spec = SandboxSpec::new(out);
        spec.code_writable = true;
        spec.network = Network::Outbound;
        spec.extra_ro = self.extra_ro.clone();
        spec.tmp_mb = self.limits.tmp_mb;
        spec.pids_max = self.limits.pids;
        spec.nofile = 4096;
        // As seen inside; mapped back to the host path where nothing is mounted.
        spec.cwd_inside = Path::new(CODE_DIR).join(cwd.strip_prefix(out).unwrap_or(Path::new("")));
        let inside = |p: &Path| -> String {
            match &self.sandbox {
                Some(sb) => sb.path_inside(&spec, p),
                None => p.to_path_buf(),
            }
            .to_string_lossy()
            .into_owned()
        };
        let mut path = String::new();
        if let Some(bin) = self.node.parent().filter(|_| self.node.is_absolute())
            && !DEFAULT_PATH.split(':').any(|d| Path::new(d) == bin)
        {
            path = format!("{}:", bin.display());
        }
        path.push_str(DEFAULT_PATH);
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), path),
            ("HOME".into(), "/tmp".into()),
            ("LANG".into(), "C.UTF-8".into()),
            ("TMPDIR".into(), inside(&dirs[0])),
            ("npm_config_cache".into(), inside(&dirs[1])),
            ("npm_config_update_notifier".into(), "false".into()),
            ("npm_config_fund".into(), "false".into()),
            ("npm_config_audit".into(), "false".into()),
            ("PIP_DISABLE_PIP_VERSION_CHECK".into(), "1".into()),
            ("PIP_NO_INPUT".into(), "1".into()),
        ];
        env.extend(self.registry_env.iter().cloned());
        spec.env = env;
        let job = Job {
            spec,
            program: program.to_path_buf(),
            args,
            name: format!(
                "build-{}-{}",
                std::process::id(),
                NEXT_JOB.fetch_add(1, Ordering::Relaxed)
            ),
            memory_bytes: self.limits.memory_mb.saturating_mul(1 << 20),
            cpu_millicores: Some(self.limits.cpu_millicores),
            timeout: self.limits.timeout,
            output_tail: OUTPUT_TAIL_BYTES,
        };
        let sandbox = self.sandbox.as_deref();
        if let Some(sb) = sandbox {
            sb.lend_dir(out, &job.spec)
                .map_err(|e| GatewayError::io("preparing the build directory", e))?;
        }
        let result = run_job(sandbox, &job).await;
        // Taken back even after a failure: nothing in the server's data stays owned by the
        // uid all sandboxes share.
        if let Some(sb) = &self.sandbox {
            let (sb2, out2) = (sb.clone(), out.to_path_buf());
            let reclaimed = tokio::task::spawn_blocking(move || sb2.reclaim_dir(&out2))
                .await
                .map_err(|e| GatewayError::io("taking back the build directory", e))
                .and_then(|r| {
                    r.map_err(|e| GatewayError::io("taking back the build directory", e))
                });
            if let Err(e) = reclaimed {
                let _ = std::fs::remove_dir_all(out);
                return Err(e);
            }
        }
        let _ = std::fs::remove_dir_all(&scratch);
        let output = result.map_err(|e| GatewayError::Internal(format!("{step}: {e}")))?;
        let tail = || {
            let lines = output.last_lines(LOG_TAIL_LINES);
            if lines.is_empty() {
                " (no output)".to_string()
            } else {
                format!("; last output:\n{}", lines.join("\n"))
            }
        };
        match output.end {
            JobEnd::Exited(s) if s.success() => Ok(()),
            JobEnd::Exited(s) => Err(GatewayError::BadRequest(format!(
                "{step} failed ({s}){}",
                tail()
            ))),
            JobEnd::TimedOut => Err(GatewayError::BadRequest(format!(
                "{step} exceeded the build time limit of {} s{}",
                self.limits.timeout.as_secs(),
                tail()
            ))),
            JobEnd::MemoryExceeded => Err(GatewayError::BadRequest(format!(
                "{step} exceeded the build memory limit of {} MB{}",
                self.limits.memory_mb,
                tail()
            ))),
        }
    }

    async fn pip_install(&self, out: &Path) -> Result<()> {
        let args: Vec<OsString> = [
            "-m",
            "pip",
            "install",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--progress-bar",
            "off",
            "-r",
        ]
        .iter()
        .map(OsString::from)
        .chain([
            out.join("function")
                .join("requirements.txt")
                .into_os_string(),
            "--target".into(),
            out.join("packages").into_os_string(),
        ])
        .collect();
        self.install(out, "pip install", &self.python, args, out)
            .await
    }

    async fn npm_install(&self, out: &Path) -> Result<()> {
        let mut args: Vec<OsString> = Vec::new();
        let program = if self.npm.extension().is_some_and(|e| e == "js") {
            args.push(self.npm.clone().into_os_string());
            self.node.clone()
        } else {
            self.npm.clone()
        };
        // In the package's directory, not `--prefix`: that would also move npm's global
        // configuration (`<prefix>/etc/npmrc`, where an operator sets registry and CA).
        args.extend(
            ["install", "--omit=dev", "--no-audit", "--no-fund"]
                .iter()
                .map(OsString::from),
        );
        self.install(out, "npm install", &program, args, &out.join("function"))
            .await
    }
}

/// Builds a bundle in `out` (emptied first) from `handler` (the function's code, which becomes
/// `function/`) for `lang`, installing its dependencies with `builder`.
pub async fn build(
    lang: &str,
    handler: &Path,
    out: &Path,
    builder: &Builder,
    progress: &mut (dyn BuildProgress + Send),
) -> Result<()> {
    let lang = canonical_lang(lang).to_string();
    if kind_of(&lang).is_none() {
        return Err(GatewayError::BadRequest(format!(
            "language '{lang}' is not supported; supported: {}",
            LANGS.iter().map(|l| l.0).collect::<Vec<_>>().join(", ")
        )));
    }
    if !handler.is_dir() {
        return Err(GatewayError::BadRequest(format!(
            "handler directory {} does not exist",
            handler.display()
        )));
    }
    progress.step("copying the handler");
    let (h, o, l) = (handler.to_path_buf(), out.to_path_buf(), lang.clone());
    let (pip, npm) = tokio::task::spawn_blocking(move || prepare(&l, &h, &o))
        .await
        .map_err(|e| GatewayError::io("preparing the build", e))??;
    // A build that installs nothing runs no code of its own: nothing to refuse.
    if pip || npm {
        builder.check(true)?;
    }
    if pip {
        progress.step("pip install -r requirements.txt");
        builder.pip_install(out).await?;
    }
    if npm {
        progress.step("npm install");
        builder.npm_install(out).await?;
    }
    if lang == "exec" {
        use std::os::unix::fs::PermissionsExt;
        let h = out.join("function").join("handler");
        if h.is_file() {
            let _ = std::fs::set_permissions(&h, std::fs::Permissions::from_mode(0o755));
        }
    }
    progress.step("done");
    Ok(())
}

/// Empties `out`, copies the handler into `out/function` and writes `nimbus.json`. Returns
/// whether pip and npm have something to install.
fn prepare(lang: &str, handler: &Path, out: &Path) -> Result<(bool, bool)> {
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| GatewayError::io("cleaning the bundle", e))?;
    }
    copy_dir(handler, &out.join("function")).map_err(|e| GatewayError::io("copying", e))?;
    std::fs::write(
        out.join("nimbus.json"),
        serde_json::json!({ "lang": lang }).to_string(),
    )
    .map_err(|e| GatewayError::io("writing nimbus.json", e))?;
    let req = out.join("function").join("requirements.txt");
    let pip = lang.starts_with("python")
        && std::fs::read_to_string(&req).is_ok_and(|s| {
            s.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        });
    let npm = lang == "node20" && out.join("function").join("package.json").is_file();
    Ok((pip, npm))
}

/// Builds from an OpenFaaS shrinkwrapped context (`function/` + template files; the language in
/// `template.yml`), as `faas-cli build --shrinkwrap` / `--remote-builder` sends it.
pub async fn build_from_context(
    context: &Path,
    out: &Path,
    builder: &Builder,
    progress: &mut (dyn BuildProgress + Send),
) -> Result<String> {
    let lang = read_lang(context).unwrap_or_else(|| {
        // Templates without template.yml in the context: guess from the entry file.
        if context.join("index.js").is_file() {
            "node20".into()
        } else if context.join("function").join("handler.py").is_file() {
            if std::fs::read_to_string(context.join("index.py"))
                .is_ok_and(|s| s.contains("statusCode") || s.contains("waitress"))
            {
                "python3-http".into()
            } else {
                "python3".into()
            }
        } else {
            "exec".into()
        }
    });
    build(&lang, &context.join("function"), out, builder, progress).await?;
    Ok(canonical_lang(&lang).to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use nimbus_sandbox::{CgroupManager, Entry, HostOps};
    use std::os::fd::RawFd;

    /// A root machine where bubblewrap works or not, and slirp4netns is installed or not.
    #[derive(Debug)]
    struct Host {
        bwrap: bool,
        slirp: bool,
    }

    impl HostOps for Host {
        fn euid(&self) -> u32 {
            0
        }
        fn which(&self, name: &str) -> Option<PathBuf> {
            let have = match name {
                "bwrap" => self.bwrap,
                "slirp4netns" => self.slirp,
                "setpriv" => true,
                _ => false,
            };
            have.then(|| PathBuf::from("/usr/bin").join(name))
        }
        fn entry(&self, path: &Path) -> Entry {
            if path == Path::new("/usr") {
                Entry::Dir
            } else {
                Entry::Missing
            }
        }
        fn probe(&self, _: &Path, _: &[OsString]) -> std::result::Result<(), String> {
            Ok(())
        }
        fn cgroups(&self) -> Option<Arc<dyn CgroupManager>> {
            None
        }
        fn spawn_helper(
            &self,
            _: &Path,
            _: &[OsString],
            _: &[RawFd],
        ) -> std::io::Result<std::process::Child> {
            Err(std::io::Error::other("not in tests"))
        }
    }

    async fn build_with(host: Host, requirements: &str) -> Result<()> {
        let tmp = tempfile::tempdir().unwrap();
        let handler = tmp.path().join("handler");
        std::fs::create_dir(&handler).unwrap();
        std::fs::write(
            handler.join("handler.py"),
            "def handle(e, c):\n    return 1\n",
        )
        .unwrap();
        std::fs::write(handler.join("requirements.txt"), requirements).unwrap();
        let sb = Sandbox::detect(Arc::new(host));
        let builder = Builder::sandboxed(Arc::new(sb), BuildLimits::default());
        let mut steps = Vec::new();
        let mut progress = |m: &str| steps.push(m.to_string());
        build(
            "python3-http",
            &handler,
            &tmp.path().join("out"),
            &builder,
            &mut progress,
        )
        .await
    }

    #[tokio::test]
    async fn builds_with_dependencies_are_refused_without_the_sandbox() {
        let e = build_with(
            Host {
                bwrap: false,
                slirp: true,
            },
            "six\n",
        )
        .await
        .unwrap_err();
        assert_eq!(e.status(), 403);
        let m = e.to_string();
        assert!(
            m.contains("bubblewrap") && m.contains("--no-sandbox"),
            "{m}"
        );

        let e = build_with(
            Host {
                bwrap: true,
                slirp: false,
            },
            "six\n",
        )
        .await
        .unwrap_err();
        assert_eq!(e.status(), 403);
        assert!(e.to_string().contains("outbound network"), "{e}");

        // Nothing to install: no install step runs, nothing to refuse.
        build_with(
            Host {
                bwrap: false,
                slirp: false,
            },
            "# nothing\n",
        )
        .await
        .unwrap();
    }

    #[test]
    fn tar_entries_get_readable_modes_and_links_are_skipped() {
        use std::os::unix::fs::PermissionsExt;
        let mut tar = tar::Builder::new(Vec::new());
        for (path, mode) in [("a/secret.py", 0o600), ("a/run.sh", 0o700)] {
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_mode(mode);
            h.set_cksum();
            tar.append_data(&mut h, path, &b"x"[..]).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_cksum();
        tar.append_link(&mut h, "a/link", "/etc/passwd").unwrap();
        let data = tar.into_inner().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        unpack_tar(&data, tmp.path()).unwrap();
        let mode = |p: &str| {
            std::fs::metadata(tmp.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("a/secret.py"), 0o644);
        assert_eq!(mode("a/run.sh"), 0o755);
        assert_eq!(mode("a"), 0o755);
        assert!(std::fs::symlink_metadata(tmp.path().join("a/link")).is_err());
    }
}
