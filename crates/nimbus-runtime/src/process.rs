//! Process runtimes: Node.js, Python and `exec` actions as long-lived child processes speaking
//! the ActionLoop protocol.
//!
//! **Channels.** The child reads one JSON request per line on **stdin** and writes exactly one
//! JSON line per request on **fd 3** (a pipe we `dup2` onto fd 3 between fork and exec). Results
//! get their own descriptor so whatever the function prints cannot be mistaken for one;
//! **stdout/stderr** are pipes that carry nothing but the function's logs.
//!
//! **Ack.** With `__OW_WAIT_FOR_ACK` set, the child writes `{"ok":true}` on fd 3 once its code is
//! loaded, or `{"ok":false,"error":…}` and exits. So a syntax error, a missing module or a missing
//! `main` is reported by `start` as [`RuntimeError::Init`] with the launcher's message and the
//! output so far, instead of surfacing at the first activation.
//!
//! **Logs without sentinels.** OpenWhisk's proxies print marker lines after each activation and
//! read logs up to them, which races and leaks markers. Here the protocol makes the child flush
//! stdout and stderr *before* it writes the result line (our launchers await the streams' write
//! callbacks in Node, and flush in Python). So when we read the result line, every byte the
//! function printed during the activation is already in the pipes. We then read each pipe
//! non-blockingly until `EAGAIN`, at most its capacity (`F_GETPIPE_SZ`) in bytes: what the pipe
//! held when we started is at most its capacity, so this provably collects it all, and a process
//! that keeps printing cannot hold us there. While waiting for the result the pipes are drained
//! continuously, so a function printing megabytes never blocks on a full pipe. Output written
//! between activations is discarded at the start of the next one.
//!
//! **Process groups.** Each instance is its own process group (`setpgid(0, 0)`), so a timeout or
//! shutdown SIGKILLs the function and everything it spawned with one `kill(-pgid)`.
//!
//! **Memory.** When a [`CgroupManager`] is available, each instance gets a cgroup limited to
//! `limits.memory` MB (swap included). The child moves *itself* in before `exec`: we open the
//! cgroup's `cgroup.procs` in the parent and, in `pre_exec`, write `getpid()` to it with
//! `write(2)` (async-signal-safe, no allocation). So the interpreter start and the code load are
//! accounted too, with no extra handshake. When a child dies without answering and the cgroup
//! reports an OOM kill, the outcome is [`RunResult::MemoryExceeded`]. `RLIMIT_AS` is not used: it
//! limits address space, not memory, and breaks V8.
//!
//! **Environment.** The child starts from an empty environment plus `PATH`, `HOME` (its private
//! instance directory), `LANG`, `__OW_WAIT_FOR_ACK` and the spec's `env`. Nothing of the server's
//! environment leaks in.
//!
//! **Stem cells.** [`Runtime::prestart`] starts a Node.js or Python launcher in *stem mode*
//! (`<launcher> --stem <codedir>`) with an empty code dir, the same environment minus the spec's
//! `env`, and a cgroup limited to [`STEM_MEMORY_MB`]. It answers `{"ok":true,"stem":true}` on
//! fd 3 once its interpreter and modules are loaded. [`StemCell::specialize`] writes the code
//! into that same directory (in place, so the path the launcher got stays valid, also through a
//! sandbox's bind mount), sets the cgroup's limit to the action's, and sends one line on stdin,
//! `{"init":{"main":…,"action_name":…,"env":{…}}}`; the launcher applies `env`, loads the code
//! and acks exactly as after a normal start, which it then is. Both paths share the spawn
//! ([`build_command`], the single place a sandbox wrapper goes) and the ack handling.
//!
//! **Concurrency.** A Node.js instance with `limits.concurrency` N > 1 (told by a third launcher
//! argument, or `"concurrency"` in the init line) runs up to N activations at once; it is a
//! [`ConcurrentInstance`] whose [`ConcurrentProcess`] runner writes request lines under a lock,
//! while one reader task owns the process, demultiplexes fd-3 envelopes
//! `{"activation_id":…,"result":…}` and tagged log lines (`\x1e<id>\x1f`; untagged lines go
//! to every run in flight) and enforces each run's deadline by killing the process. Python and
//! `exec` instances, and N = 1, stay sequential. See docs/runtimes.md, "Concurrency".

use crate::idle::IdleFreezer;
use crate::{
    ConcurrentRunner, Instance, InstanceSpec, RunOutcome, RunRequest, RunResult, Runtime,
    RuntimeError, StemCell,
};
use async_trait::async_trait;
use base64::Engine;
use nimbus_model::activation::log_line;
use nimbus_sandbox::{
    CgroupHandle, CgroupManager, CgroupVersion, NetHandle, Network, Sandbox, SandboxSpec,
};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

const LAUNCHER_JS: &str = include_str!("../launchers/launcher.js");
const LAUNCHER_PY: &str = include_str!("../launchers/launcher.py");

/// The only `PATH` a function sees.
const CHILD_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Cap on what a zip may expand to.
pub const MAX_EXTRACTED_BYTES: u64 = 512 << 20;
const MAX_ZIP_ENTRIES: usize = 100_000;
/// Cap on one result line; the invoker applies the (much smaller) OpenWhisk result limit.
pub const MAX_RESULT_BYTES: usize = 32 << 20;
/// Longer log lines are split, so a function printing without newlines cannot grow a buffer.
const MAX_LINE_BYTES: usize = 256 << 10;
const READ_CHUNK: usize = 64 << 10;
/// Log bytes read per wake-up before the result pipe and the deadline are looked at again.
const PUMP_BUDGET: usize = 1 << 20;
/// How long a child whose result pipe closed gets to exit by itself before it is killed.
const EXIT_GRACE: Duration = Duration::from_millis(500);
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// Memory limit (MB) of a stem cell until [`StemCell::specialize`] sets the action's own: the
/// largest limit an action may have by default (`SystemLimits::max_action_memory`). An idle
/// launcher needs a few tens of MB; the placeholder only has to be generous, and since
/// specialisation then normally *lowers* the limit, it never has to grow a cgroup that is in use.
pub const STEM_MEMORY_MB: u64 = 2048;
/// How long [`Runtime::prestart`] waits for a stem cell's readiness line.
const STEM_READY_TIMEOUT: Duration = Duration::from_secs(30);

const MSG_EXITED: &str = "The action did not produce a valid response and exited unexpectedly.";
const MSG_NOT_DICT: &str = "The action did not return a dictionary or array.";
const MSG_NOT_JSON: &str =
    "The action did not return a dictionary or array: its response was not valid JSON.";

#[derive(Debug, Clone)]
pub struct ProcessRuntimeConfig {
    /// Where launchers and per-instance directories live.
    pub work_dir: PathBuf,
    /// Node.js binary; a bare name is looked up in `PATH` when the runtime is built.
    pub node_bin: PathBuf,
    /// Python 3 binary; a bare name is looked up in `PATH`, and shims (pyenv) are resolved to
    /// the real interpreter, which must work in the function's empty environment.
    pub python_bin: PathBuf,
    /// Enforce memory limits with cgroups when the machine lets us (see [`nimbus_sandbox::detect`]).
    pub cgroups: bool,
    /// Run every instance inside this Linux sandbox (namespaces, read-only root, seccomp,
    /// unprivileged uid, cgroup memory/pids/cpu). Its cgroup manager replaces `cgroups`.
    pub sandbox: Option<Arc<Sandbox>>,
    /// Freeze an instance's cgroup this long after its last activation ended, and thaw it
    /// before the next (see [`crate::idle`]); `None` leaves idle instances running.
    pub freeze_idle_after: Option<Duration>,
}

impl Default for ProcessRuntimeConfig {
    fn default() -> Self {
        ProcessRuntimeConfig {
            work_dir: std::env::temp_dir().join("nimbus-runtime"),
            node_bin: PathBuf::from("node"),
            python_bin: PathBuf::from("python3"),
            cgroups: true,
            sandbox: None,
            freeze_idle_after: Some(crate::idle::DEFAULT_FREEZE_AFTER),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lang {
    Node,
    Python,
    Exec,
}

impl Lang {
    fn from_kind(kind: &str) -> Option<Lang> {
        match kind {
            "nodejs:20" => Some(Lang::Node),
            "python:3.11" => Some(Lang::Python),
            "exec" => Some(Lang::Exec),
            _ => None,
        }
    }

    /// The file text code is written to.
    fn source_file(self) -> &'static str {
        match self {
            Lang::Node => "index.js",
            Lang::Python => "__main__.py",
            Lang::Exec => "exec",
        }
    }
}

/// Runs `nodejs:20`, `python:3.11` and `exec` actions as local processes.
#[derive(Debug)]
pub struct ProcessRuntime {
    instances_dir: PathBuf,
    node_bin: PathBuf,
    python_bin: PathBuf,
    launcher_js: PathBuf,
    launcher_py: PathBuf,
    cgroups: Option<Arc<dyn CgroupManager>>,
    sandbox: Option<Arc<Sandbox>>,
    launchers_dir: PathBuf,
    /// Interpreter installations outside the system directories (e.g. a pyenv Python under
    /// `/root`), bound read-only into the sandbox at their own paths.
    interpreter_dirs: Vec<PathBuf>,
    freeze_after: Option<Duration>,
}

/// The installation prefix of an interpreter that lives outside the system directories the
/// sandbox binds anyway (`/usr`, `/bin`, `/lib`, ...): `<prefix>/bin/<binary>` gives `<prefix>`.
pub fn interpreter_prefix(bin: &Path) -> Option<PathBuf> {
    let real = fs::canonicalize(bin).ok()?;
    let system = ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc"];
    if system.iter().any(|d| real.starts_with(d)) {
        return None;
    }
    let bin_dir = real.parent()?;
    Some(if bin_dir.ends_with("bin") {
        bin_dir.parent()?.to_path_buf()
    } else {
        bin_dir.to_path_buf()
    })
}

fn platform(what: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Platform(format!("{what}: {e}"))
}

fn init_error(message: impl Into<String>) -> RuntimeError {
    RuntimeError::Init {
        message: message.into(),
        logs: Vec::new(),
    }
}

impl ProcessRuntime {
    /// Writes the launchers into `work_dir`, resolves the interpreters and, when `cfg.cgroups`,
    /// detects a cgroup manager (none found only means memory limits are not enforced).
    pub fn new(cfg: ProcessRuntimeConfig) -> Result<Self, RuntimeError> {
        let cgroups = match (&cfg.sandbox, cfg.cgroups) {
            (Some(sb), _) => sb.cgroups().cloned(),
            (None, true) => nimbus_sandbox::detect(),
            (None, false) => None,
        };
        Self::with_cgroup_manager(cfg, cgroups)
    }

    /// Like [`ProcessRuntime::new`] with an explicit cgroup manager (`cfg.cgroups` is ignored).
    pub fn with_cgroup_manager(
        cfg: ProcessRuntimeConfig,
        cgroups: Option<Arc<dyn CgroupManager>>,
    ) -> Result<Self, RuntimeError> {
        // Instances run with their code directory as cwd: a relative work dir would break them.
        let work_dir = std::path::absolute(&cfg.work_dir)
            .map_err(|e| platform(&format!("cannot resolve {}", cfg.work_dir.display()), e))?;
        let launchers = work_dir.join("launchers");
        let instances_dir = work_dir.join("instances");
        for d in [&launchers, &instances_dir] {
            fs::create_dir_all(d)
                .map_err(|e| platform(&format!("cannot create {}", d.display()), e))?;
        }
        // Instance directories left by a previous process (a crash or kill -9) are garbage: no
        // instance survives its server (launchers exit when their stdin closes).
        if let Ok(entries) = fs::read_dir(&instances_dir) {
            let stale: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            if !stale.is_empty() {
                tracing::info!(
                    count = stale.len(),
                    "removing instance directories of a previous run"
                );
            }
            for p in stale {
                if let Err(e) = fs::remove_dir_all(&p) {
                    tracing::warn!(path = %p.display(), error = %e, "cannot remove a stale instance directory");
                }
            }
        }
        let launcher_js = launchers.join("launcher.js");
        let launcher_py = launchers.join("launcher.py");
        write_atomically(&launcher_js, LAUNCHER_JS.as_bytes())?;
        write_atomically(&launcher_py, LAUNCHER_PY.as_bytes())?;
        let node_bin = resolve_in_path(&cfg.node_bin);
        let python_bin = resolve_python(&resolve_in_path(&cfg.python_bin));
        tracing::debug!(node = %node_bin.display(), python = %python_bin.display(), cgroups = cgroups.is_some(), "process runtime ready");
        let interpreter_dirs = [&node_bin, &python_bin]
            .iter()
            .filter_map(|b| interpreter_prefix(b))
            .collect();
        Ok(ProcessRuntime {
            instances_dir,
            node_bin,
            python_bin,
            launcher_js,
            launcher_py,
            cgroups,
            sandbox: cfg.sandbox,
            launchers_dir: launchers,
            interpreter_dirs,
            freeze_after: cfg.freeze_idle_after,
        })
    }

    /// The cgroup manager in use, if memory limits are enforced.
    pub fn cgroup_manager(&self) -> Option<&Arc<dyn CgroupManager>> {
        self.cgroups.as_ref()
    }

    /// Program and arguments: `<launcher> <codedir> <main>` normally, `<launcher> --stem
    /// <codedir>` for a stem cell; an `exec` action is its own program.
    fn command(&self, lang: Lang, mode: Mode<'_>, code_dir: &Path) -> (PathBuf, Vec<OsString>) {
        let dir = code_dir.as_os_str().to_os_string();
        let tail: Vec<OsString> = match mode {
            Mode::Normal(spec) => {
                let mut t = vec![dir, spec.main.as_str().into()];
                if let Some(n) = concurrency(lang, spec) {
                    t.push(n.to_string().into());
                }
                t
            }
            Mode::Stem => vec!["--stem".into(), dir],
        };
        match lang {
            Lang::Node => (
                self.node_bin.clone(),
                std::iter::once(self.launcher_js.clone().into())
                    .chain(tail)
                    .collect(),
            ),
            Lang::Python => (
                self.python_bin.clone(),
                // -S: no `site` at start-up (see launcher.py), the biggest part of a cold start.
                ["-S".into(), "-u".into(), self.launcher_py.clone().into()]
                    .into_iter()
                    .chain(tail)
                    .collect(),
            ),
            Lang::Exec => (code_dir.join("exec"), Vec::new()),
        }
    }

    /// Makes `instances/<id>` with a fresh id.
    fn new_instance_dir(&self) -> Result<(String, PathBuf), RuntimeError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let id = format!(
                "{}-{}-{:x}",
                std::process::id(),
                n,
                nimbus_model::now_millis() & 0xffff_ffff
            );
            let dir = self.instances_dir.join(&id);
            match fs::create_dir(&dir) {
                Ok(()) => return Ok((id, dir)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(platform(&format!("cannot create {}", dir.display()), e)),
            }
        }
    }
}

fn write_atomically(path: &Path, data: &[u8]) -> Result<(), RuntimeError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, data)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| platform(&format!("cannot write {}", path.display()), e))
}

/// A bare program name is looked up in the server's `PATH`; not found, it is kept as is (and
/// starting an instance of that kind will fail with a platform error).
pub fn resolve_in_path(bin: &Path) -> PathBuf {
    if bin.components().count() != 1 || bin.is_absolute() {
        return bin.to_path_buf();
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(bin))
            .find(|p| {
                p.metadata()
                    .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false)
            })
    });
    found.unwrap_or_else(|| {
        tracing::warn!(bin = %bin.display(), "not found in PATH");
        bin.to_path_buf()
    })
}

/// Asks the interpreter for its real path: a pyenv shim is a script that needs the server's
/// environment, which functions do not get.
pub fn resolve_python(bin: &Path) -> PathBuf {
    let out = std::process::Command::new(bin)
        .args(["-I", "-c", "import sys; print(sys.executable)"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            match text.lines().last().map(PathBuf::from) {
                Some(p) if p.is_absolute() && p.is_file() => p,
                _ => bin.to_path_buf(),
            }
        }
        Ok(o) => {
            tracing::warn!(bin = %bin.display(), status = %o.status, "python interpreter check failed");
            bin.to_path_buf()
        }
        Err(e) => {
            tracing::warn!(bin = %bin.display(), error = %e, "python interpreter not runnable");
            bin.to_path_buf()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Code materialisation

/// Writes the action's code into `code_dir`, an existing (empty) directory: a stem cell's
/// launcher already runs with it as cwd and has its path, so it is filled in place, never
/// replaced (a sandbox bind mount of it then sees the files too). Blocking.
fn materialise(lang: Lang, code: &str, binary: bool, code_dir: &Path) -> Result<(), RuntimeError> {
    if code.trim().is_empty() {
        return Err(init_error("Missing main/no code to execute."));
    }
    if !binary {
        let file = code_dir.join(lang.source_file());
        write_file(
            &file,
            code.as_bytes(),
            if lang == Lang::Exec { 0o755 } else { 0o644 },
        )?;
        return Ok(());
    }
    let cleaned: Vec<u8> = code.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&cleaned)
        .map_err(|e| init_error(format!("The action code is not valid base64: {e}")))?;
    if !bytes.starts_with(b"PK\x03\x04") {
        return match lang {
            Lang::Exec => write_file(&code_dir.join("exec"), &bytes, 0o755),
            Lang::Node | Lang::Python => Err(init_error("Binary code must be a zip archive.")),
        };
    }
    extract_zip(&bytes, code_dir)?;
    match lang {
        Lang::Node => {
            if !code_dir.join("package.json").is_file() && !code_dir.join("index.js").is_file() {
                return Err(init_error(
                    "The zip archive must contain package.json (with a \"main\" field) or index.js at its top level.",
                ));
            }
        }
        Lang::Python => {
            if !code_dir.join("__main__.py").is_file() {
                return Err(init_error(
                    "The zip archive must contain __main__.py at its top level.",
                ));
            }
        }
        Lang::Exec => {
            let exec = code_dir.join("exec");
            if !exec.is_file() {
                return Err(init_error(
                    "The zip archive must contain an executable named 'exec' at its top level.",
                ));
            }
            fs::set_permissions(&exec, fs::Permissions::from_mode(0o755))
                .map_err(|e| platform("cannot make 'exec' executable", e))?;
        }
    }
    Ok(())
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), RuntimeError> {
    let mut f = fs::File::create(path)
        .map_err(|e| platform(&format!("cannot write {}", path.display()), e))?;
    f.write_all(data)
        .map_err(|e| platform(&format!("cannot write {}", path.display()), e))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| platform(&format!("cannot chmod {}", path.display()), e))
}

/// A zip entry name as a relative path, or `None` if it is unsafe (absolute, `..`, NUL, drive
/// letter). `Some(empty)` means the entry names the root itself.
fn safe_entry_path(name: &str) -> Option<PathBuf> {
    if name.starts_with('/') || name.starts_with('\\') || name.contains('\0') {
        return None;
    }
    let mut out = PathBuf::new();
    for part in name.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return None,
            p if p.len() >= 2 && p.as_bytes()[1] == b':' && out.as_os_str().is_empty() => {
                return None;
            }
            p => out.push(p),
        }
    }
    // Belt and braces: only normal components may remain.
    out.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then_some(out)
}

fn extract_zip(bytes: &[u8], dir: &Path) -> Result<(), RuntimeError> {
    let bad = |e: &dyn std::fmt::Display| {
        init_error(format!("The zip archive could not be extracted: {e}"))
    };
    let mut archive = zip::ZipArchive::new(io::Cursor::new(bytes)).map_err(|e| bad(&e))?;
    if archive.len() > MAX_ZIP_ENTRIES {
        return Err(init_error(format!(
            "The zip archive has more than {MAX_ZIP_ENTRIES} entries."
        )));
    }
    let mut total: u64 = 0;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| bad(&e))?;
        let name = entry.name().map_err(|e| bad(&e))?.into_owned();
        let rel = safe_entry_path(&name).ok_or_else(|| {
            init_error(format!(
                "The zip archive contains an unsafe path: '{name}'."
            ))
        })?;
        if entry.is_symlink() {
            return Err(init_error(format!(
                "The zip archive contains a symbolic link ('{name}'), which is not supported; \
                 create the archive without -y/--symlinks."
            )));
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = dir.join(&rel);
        if entry.is_dir() {
            create_dirs(dir, &rel).map_err(|e| bad(&e))?;
            continue;
        }
        if let Some(parent) = rel.parent() {
            create_dirs(dir, parent).map_err(|e| bad(&e))?;
        }
        let mut out = fs::File::create(&target).map_err(|e| bad(&e))?;
        let room = MAX_EXTRACTED_BYTES - total;
        // Count what is actually inflated, never the sizes the archive claims.
        let n = io::copy(&mut (&mut entry).take(room + 1), &mut out).map_err(|e| bad(&e))?;
        total += n;
        if total > MAX_EXTRACTED_BYTES {
            return Err(init_error(format!(
                "The zip archive expands to more than {} MB.",
                MAX_EXTRACTED_BYTES >> 20
            )));
        }
        // The sandbox user is not the owner: whatever the archive says (Python's
        // `zipfile.writestr` stores 0600), files are readable by all, and executable by all when
        // any execute bit is set; never setuid/setgid/sticky.
        out.set_permissions(fs::Permissions::from_mode(normal_mode(entry.unix_mode())))
            .map_err(|e| bad(&e))?;
    }
    Ok(())
}

/// The mode an extracted file gets: 0755 when the archive marks it executable for anyone,
/// else 0644.
pub fn normal_mode(archived: Option<u32>) -> u32 {
    match archived {
        Some(m) if m & 0o111 != 0 => 0o755,
        _ => 0o644,
    }
}

/// Creates `base/rel` and its missing parents as 0755 directories (traversable by the sandbox
/// user whatever the server's umask).
fn create_dirs(base: &Path, rel: &Path) -> io::Result<()> {
    let mut dir = base.to_path_buf();
    for c in rel.components() {
        dir.push(c);
        match fs::create_dir(&dir) {
            Ok(()) => fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Pipes and logs

fn pipe_pair() -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| platform("cannot create a pipe", e))
}

fn receiver(fd: OwnedFd) -> Result<pipe::Receiver, RuntimeError> {
    pipe::Receiver::from_owned_fd(fd).map_err(|e| platform("cannot register a pipe", e))
}

/// `read(2)` straight on the descriptor, bypassing tokio's readiness cache: the final drain must
/// see what is in the pipe, not what the reactor has been told about so far.
fn read_raw(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match nix::unistd::read(fd, buf) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e)),
        }
    }
}

/// Log lines of one activation, with the byte budget.
struct LogSink {
    lines: Vec<String>,
    used: usize,
    limit: usize,
    truncated: bool,
    /// Drop everything (used to discard output written between activations).
    discard: bool,
}

impl LogSink {
    fn new(limit: usize) -> Self {
        LogSink {
            lines: Vec::new(),
            used: 0,
            limit,
            truncated: false,
            discard: false,
        }
    }

    fn discarding() -> Self {
        LogSink {
            discard: true,
            ..LogSink::new(0)
        }
    }

    fn accepting(&self) -> bool {
        !self.truncated && !self.discard
    }

    fn push(&mut self, stream: &str, line: &[u8]) {
        if !self.accepting() {
            return;
        }
        let size = line.len() + 1;
        if self.used + size > self.limit {
            self.truncated = true;
            self.lines.push(log_line(
                nimbus_model::now_millis(),
                "stderr",
                &format!("Logs were truncated because the total bytes size exceeds the limit of {} bytes.", self.limit),
            ));
            return;
        }
        self.used += size;
        self.lines.push(log_line(
            nimbus_model::now_millis(),
            stream,
            &String::from_utf8_lossy(line),
        ));
    }
}

/// Where a [`LogPipe`] delivers lines: one activation's [`LogSink`], or the demultiplexer of a
/// concurrent instance.
trait LineSink {
    /// One line of `stream` without its newline. `whole` is false for a piece of a line longer
    /// than [`MAX_LINE_BYTES`] whose rest follows.
    fn line(&mut self, stream: &'static str, line: &[u8], whole: bool);
    /// False once nothing more is kept (a partial line can then be dropped).
    fn accepting(&self) -> bool;
}

impl LineSink for LogSink {
    fn line(&mut self, stream: &'static str, line: &[u8], _whole: bool) {
        self.push(stream, line);
    }

    fn accepting(&self) -> bool {
        LogSink::accepting(self)
    }
}

/// stdout or stderr of the child.
struct LogPipe {
    rx: pipe::Receiver,
    stream: &'static str,
    partial: Vec<u8>,
    eof: bool,
}

impl LogPipe {
    fn new(rx: pipe::Receiver, stream: &'static str) -> Self {
        LogPipe {
            rx,
            stream,
            partial: Vec::new(),
            eof: false,
        }
    }

    fn feed(&mut self, data: &[u8], sink: &mut impl LineSink) {
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            let line = &rest[..pos];
            rest = &rest[pos + 1..];
            if self.partial.is_empty() {
                sink.line(self.stream, line, true);
            } else {
                self.partial.extend_from_slice(line);
                sink.line(self.stream, &self.partial, true);
                self.partial.clear();
            }
        }
        if !sink.accepting() {
            self.partial.clear();
            return;
        }
        self.partial.extend_from_slice(rest);
        if self.partial.len() >= MAX_LINE_BYTES {
            sink.line(self.stream, &self.partial, false);
            self.partial.clear();
        }
    }

    /// Reads what tokio knows to be readable, up to `budget` bytes.
    fn pump(&mut self, sink: &mut impl LineSink, scratch: &mut [u8], budget: usize) {
        let mut read = 0;
        while !self.eof && read < budget {
            match self.rx.try_read(scratch) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    read += n;
                    self.feed(&scratch[..n], sink);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(stream = self.stream, error = %e, "log pipe read failed");
                    self.eof = true;
                }
            }
        }
    }

    /// Reads whatever the pipe holds right now (see the module docs for why this is complete).
    fn drain(&mut self, sink: &mut impl LineSink, scratch: &mut [u8]) {
        if self.eof {
            return;
        }
        let capacity = fcntl(self.rx.as_fd(), FcntlArg::F_GETPIPE_SZ)
            .ok()
            .and_then(|c| usize::try_from(c).ok())
            .unwrap_or(1 << 20);
        let mut read = 0;
        while read < capacity {
            let want = scratch.len().min(capacity - read);
            match read_raw(self.rx.as_fd(), &mut scratch[..want]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => {
                    read += n;
                    self.feed(&scratch[..n], sink);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(stream = self.stream, error = %e, "log pipe read failed");
                    self.eof = true;
                    break;
                }
            }
        }
    }

    /// A partial trailing line is a line.
    fn finish(&mut self, sink: &mut impl LineSink) {
        if !self.partial.is_empty() {
            sink.line(self.stream, &self.partial, true);
            self.partial.clear();
        }
    }
}

/// fd 3 of the child.
struct ResultPipe {
    rx: pipe::Receiver,
    buf: Vec<u8>,
    eof: bool,
}

impl ResultPipe {
    fn read_available(&mut self, scratch: &mut [u8], raw: bool) {
        while !self.eof && self.buf.len() <= MAX_RESULT_BYTES {
            let r = if raw {
                read_raw(self.rx.as_fd(), scratch)
            } else {
                self.rx.try_read(scratch)
            };
            match r {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(error = %e, "result pipe read failed");
                    self.eof = true;
                }
            }
        }
    }

    fn take_line(&mut self) -> Option<Vec<u8>> {
        let pos = self.buf.iter().position(|&b| b == b'\n')?;
        let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
        line.pop();
        Some(line)
    }
}

struct Pipes {
    stdin: Option<ChildStdin>,
    stdout: LogPipe,
    stderr: LogPipe,
    result: ResultPipe,
}

impl Pipes {
    fn drain_logs(&mut self, sink: &mut impl LineSink) {
        let mut scratch = vec![0u8; READ_CHUNK];
        self.stdout.drain(sink, &mut scratch);
        self.stderr.drain(sink, &mut scratch);
        self.stdout.finish(sink);
        self.stderr.finish(sink);
    }
}

/// How waiting for one line on fd 3 ended.
enum Exchange {
    Line(Vec<u8>),
    /// The child exited, or closed fd 3, without a line.
    Gone,
    TimedOut,
    TooLarge,
}

/// Sends `request` (if any) and waits for one line on fd 3, draining logs all along.
async fn exchange(
    child: &mut Child,
    pipes: &mut Pipes,
    request: Option<Vec<u8>>,
    deadline: Instant,
    sink: &mut LogSink,
) -> Exchange {
    let Pipes {
        stdin,
        stdout,
        stderr,
        result,
    } = pipes;
    let mut scratch = vec![0u8; READ_CHUNK];
    let mut written = request.is_none();
    let write = async {
        let Some(req) = request else { return Ok(()) };
        let Some(w) = stdin.as_mut() else {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "stdin is closed"));
        };
        w.write_all(&req).await?;
        w.flush().await
    };
    tokio::pin!(write);
    let sleep = tokio::time::sleep_until(deadline);
    tokio::pin!(sleep);
    let mut exited = false;
    loop {
        // Wake on anything, then service every pipe in a fixed order: no branch can starve
        // another, and logs are read before the result they precede.
        tokio::select! {
            biased;
            _ = &mut sleep => return Exchange::TimedOut,
            r = stdout.rx.readable(), if !stdout.eof => {
                if r.is_err() {
                    stdout.eof = true;
                }
            }
            r = stderr.rx.readable(), if !stderr.eof => {
                if r.is_err() {
                    stderr.eof = true;
                }
            }
            r = result.rx.readable(), if !result.eof => {
                if r.is_err() {
                    result.eof = true;
                }
            }
            r = &mut write, if !written => {
                written = true;
                if let Err(e) = r {
                    tracing::debug!(error = %e, "could not send the request");
                }
            }
            st = child.wait(), if !exited => {
                exited = true;
                tracing::debug!(status = ?st, "instance process exited");
            }
        }
        stdout.pump(sink, &mut scratch, PUMP_BUDGET);
        stderr.pump(sink, &mut scratch, PUMP_BUDGET);
        result.read_available(&mut scratch, exited);
        if let Some(line) = result.take_line() {
            return Exchange::Line(line);
        }
        if result.buf.len() > MAX_RESULT_BYTES {
            return Exchange::TooLarge;
        }
        if result.eof || exited {
            return Exchange::Gone;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Instances

/// The instance directory and cgroup, released exactly once.
struct Resources {
    dir: PathBuf,
    cgroup: Option<(Arc<dyn CgroupManager>, CgroupHandle)>,
    /// slirp4netns of an instance with outbound network; stopped when dropped.
    net: Option<NetHandle>,
    released: bool,
}

impl Resources {
    fn cleanup_job(&mut self) -> impl FnOnce() + Send + 'static {
        self.released = true;
        let dir = std::mem::take(&mut self.dir);
        let cgroup = self.cgroup.take();
        move || {
            if !dir.as_os_str().is_empty()
                && let Err(e) = fs::remove_dir_all(&dir)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove instance directory");
            }
            if let Some((m, cg)) = cgroup
                && let Err(e) = m.remove(&cg)
            {
                tracing::warn!(cgroup = %cg.path().display(), error = %e, "cannot remove instance cgroup");
            }
        }
    }

    async fn release(&mut self) {
        if self.released {
            return;
        }
        let job = self.cleanup_job();
        if let Err(e) = tokio::task::spawn_blocking(job).await {
            tracing::warn!(error = %e, "instance cleanup task failed");
        }
    }

    fn memory_exceeded(&self) -> bool {
        match &self.cgroup {
            Some((m, cg)) => m.memory_exceeded(cg).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the cgroup's OOM counter");
                false
            }),
            None => false,
        }
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let job = self.cleanup_job();
        // The cgroup may stay busy for a moment while killed processes exit: retry off-thread.
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(job);
            }
            Err(_) => job(),
        }
    }
}

struct ProcessInstance {
    id: String,
    child: Child,
    pgid: Option<Pid>,
    pipes: Pipes,
    resources: Resources,
    /// False once the instance died, timed out or broke the protocol.
    usable: bool,
    killed: bool,
    memory_mb: u64,
    /// The code directory (the child's cwd); a stem cell's code is written here.
    code_dir: PathBuf,
    /// Grace before an idle instance is frozen (`None`: never).
    freeze_after: Option<Duration>,
    /// Set once the instance serves activations (not while it is a stem cell).
    freezer: Option<Arc<IdleFreezer>>,
}

impl ProcessInstance {
    /// Kills the process group and releases the directory and cgroup.
    async fn stop(&mut self) {
        self.usable = false;
        self.pipes.stdin = None;
        self.kill().await;
        self.resources.release().await;
    }

    /// Drops whatever the child wrote since the last answer (late async output, stray fd-3
    /// bytes): it belongs to no activation.
    fn discard_unsolicited(&mut self) {
        let mut junk = LogSink::discarding();
        self.pipes.drain_logs(&mut junk);
        let mut scratch = vec![0u8; READ_CHUNK];
        self.pipes.result.read_available(&mut scratch, true);
        if !self.pipes.result.buf.is_empty() {
            tracing::warn!(instance = %self.id, bytes = self.pipes.result.buf.len(), "discarding unsolicited fd-3 output");
            self.pipes.result.buf.clear();
        }
    }

    /// SIGKILLs the process group (and, with a cgroup, anything that left the group), then reaps.
    async fn kill(&mut self) {
        if !self.killed {
            self.killed = true;
            if let Some(pgid) = self.pgid
                && let Err(e) = killpg(pgid, Signal::SIGKILL)
                && e != Errno::ESRCH
            {
                tracing::warn!(instance = %self.id, error = %e, "cannot kill the process group");
            }
            // Frozen processes only die once thawed; their SIGKILL is already pending.
            if let Some(f) = &self.freezer {
                f.stop();
            }
            if let Some((m, cg)) = &self.resources.cgroup
                && let Err(e) = m.kill_all(cg)
            {
                tracing::warn!(instance = %self.id, error = %e, "cannot kill the cgroup's processes");
            }
        }
        if tokio::time::timeout(REAP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(instance = %self.id, "instance process did not exit after SIGKILL");
        }
    }

    /// After fd 3 closed: give the child a moment to exit on its own (so an OOM kill is fully
    /// accounted), then make sure the whole group is gone.
    async fn finish_dead(&mut self) {
        let _ = tokio::time::timeout(EXIT_GRACE, self.child.wait()).await;
        self.kill().await;
    }

    fn unusable_outcome(&self) -> RunOutcome {
        RunOutcome {
            result: RunResult::DeveloperError(MSG_EXITED.to_string()),
            logs: Vec::new(),
            reusable: false,
        }
    }
}

impl Drop for ProcessInstance {
    fn drop(&mut self) {
        if !self.killed
            && let Some(pgid) = self.pgid
        {
            let _ = killpg(pgid, Signal::SIGKILL);
            if let Some(f) = &self.freezer {
                f.stop();
            }
        }
    }
}

fn request_line(req: &RunRequest) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("value".into(), Value::Object(req.value.clone()));
    m.insert("namespace".into(), Value::String(req.namespace.clone()));
    m.insert("action_name".into(), Value::String(req.action_name.clone()));
    m.insert(
        "action_version".into(),
        Value::String(req.action_version.clone()),
    );
    m.insert(
        "activation_id".into(),
        Value::String(req.activation_id.clone()),
    );
    m.insert(
        "transaction_id".into(),
        Value::String(req.transaction_id.clone()),
    );
    m.insert("deadline".into(), Value::String(req.deadline.to_string()));
    if let Some(k) = &req.api_key {
        m.insert("api_key".into(), Value::String(k.clone()));
    }
    // Serialising a `Value` cannot fail; compact JSON has no raw newlines.
    let mut line = serde_json::to_vec(&Value::Object(m)).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

/// The key of a result line `{"__nimbus_developer_error": message}`: the function crashed.
pub const DEVELOPER_ERROR_KEY: &str = "__nimbus_developer_error";

/// The result line as a run result, and whether the protocol still holds.
fn classify(line: &[u8]) -> (RunResult, bool) {
    match serde_json::from_slice::<Value>(line) {
        Ok(v) => (classify_value(v), true),
        Err(_) => (RunResult::DeveloperError(MSG_NOT_JSON.into()), false),
    }
}

/// A well-formed result as a run result (the instance stays usable).
fn classify_value(v: Value) -> RunResult {
    match v {
        // Launchers report a crash of the function itself (not of the protocol) this way.
        Value::Object(o) if o.len() == 1 && o.contains_key(DEVELOPER_ERROR_KEY) => {
            let msg = o
                .get(DEVELOPER_ERROR_KEY)
                .and_then(|m| m.as_str())
                .unwrap_or("The action failed.");
            RunResult::DeveloperError(msg.to_string())
        }
        v @ (Value::Object(_) | Value::Array(_)) => RunResult::Ok(v),
        _ => RunResult::DeveloperError(MSG_NOT_DICT.into()),
    }
}

#[async_trait]
impl Instance for ProcessInstance {
    async fn run(&mut self, req: RunRequest) -> RunOutcome {
        if !self.usable {
            return self.unusable_outcome();
        }
        let freezer = self.freezer.clone();
        if let Some(f) = &freezer {
            f.busy();
        }
        let outcome = self.run_thawed(req).await;
        if let Some(f) = &freezer
            && outcome.reusable
        {
            f.idle();
        }
        outcome
    }

    async fn shutdown(mut self: Box<Self>) {
        self.stop().await;
    }
}

impl ProcessInstance {
    async fn run_thawed(&mut self, req: RunRequest) -> RunOutcome {
        self.discard_unsolicited();
        let mut sink = LogSink::new(req.log_limit_bytes);
        let deadline = Instant::now() + req.timeout;
        let ex = exchange(
            &mut self.child,
            &mut self.pipes,
            Some(request_line(&req)),
            deadline,
            &mut sink,
        )
        .await;
        let (result, mut reusable) = match ex {
            Exchange::Line(line) => {
                let (r, protocol_ok) = classify(&line);
                (r, protocol_ok && self.pipes.result.buf.is_empty())
            }
            Exchange::TimedOut => {
                self.kill().await;
                (RunResult::Timeout, false)
            }
            Exchange::TooLarge => {
                self.kill().await;
                let msg = format!(
                    "The action produced a response larger than {} MB.",
                    MAX_RESULT_BYTES >> 20
                );
                (RunResult::DeveloperError(msg), false)
            }
            Exchange::Gone => {
                self.finish_dead().await;
                if self.resources.memory_exceeded() {
                    (RunResult::MemoryExceeded, false)
                } else {
                    (RunResult::DeveloperError(MSG_EXITED.into()), false)
                }
            }
        };
        self.pipes.drain_logs(&mut sink);
        if reusable && !matches!(self.child.try_wait(), Ok(None)) {
            reusable = false;
        }
        if !reusable {
            self.usable = false;
            self.kill().await;
        }
        if result == RunResult::MemoryExceeded {
            tracing::info!(instance = %self.id, memory_mb = self.memory_mb, "instance exceeded its memory limit");
        }
        RunOutcome {
            result,
            logs: sink.lines,
            reusable,
        }
    }
}

/// `pid` as decimal digits in `buf`, without allocating (runs between fork and exec).
fn pid_digits(mut pid: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (pid % 10) as u8;
        pid /= 10;
        if pid == 0 || i == 0 {
            break;
        }
    }
    &buf[i..]
}

// ---------------------------------------------------------------------------------------------
// Starting processes

/// What the launcher is asked to do.
#[derive(Clone, Copy)]
enum Mode<'a> {
    /// Load this spec's code (already in the code dir) and acknowledge.
    Normal(&'a InstanceSpec),
    /// Pre-start without code: acknowledge `{"ok":true,"stem":true}`, then wait for the init line.
    Stem,
}

/// The child to start. Everything that decides what runs, and where, is here, and
/// [`build_command`] is the one place that turns it into a process: a sandbox wrapper
/// (bubblewrap-style, bind-mounting `code_dir` read-only at a fixed path) goes there.
struct Launch<'a> {
    program: PathBuf,
    args: Vec<OsString>,
    /// The spec's environment (`None` for a stem cell, which gets it with the init line).
    env: Option<&'a BTreeMap<String, String>>,
    /// The instance's private directory (`HOME`).
    home: &'a Path,
    /// The code directory: the child's cwd, and the directory named in `args`.
    code_dir: &'a Path,
}

/// Program, arguments, environment and cwd of the child; stdio, process group and the fd-3 /
/// cgroup hook are added by [`ProcessRuntime::spawn`]. The environment is `PATH`, `HOME`,
/// `LANG`, then the spec's env (which may override those), then `__OW_WAIT_FOR_ACK`.
fn build_command(launch: &Launch<'_>) -> Command {
    let mut cmd = Command::new(&launch.program);
    cmd.args(&launch.args)
        .current_dir(launch.code_dir)
        .env_clear()
        .env("PATH", CHILD_PATH)
        .env("HOME", launch.home)
        .env("LANG", "C.UTF-8")
        .envs(launch.env.into_iter().flatten())
        .env("__OW_WAIT_FOR_ACK", "1");
    cmd
}

/// The line that turns a stem cell into an instance of `spec` (with `"concurrency"` only for a
/// concurrent Node.js instance).
fn init_line(lang: Lang, spec: &InstanceSpec) -> Vec<u8> {
    let mut init = serde_json::json!({
        "main": spec.main,
        "action_name": spec.action_name,
        "env": spec.env,
    });
    if let (Some(n), Some(o)) = (concurrency(lang, spec), init.as_object_mut()) {
        o.insert("concurrency".into(), Value::from(n));
    }
    let init = serde_json::json!({ "init": init });
    // Serialising a `Value` cannot fail; compact JSON has no raw newlines.
    let mut line = serde_json::to_vec(&init).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

/// The size of an instance's private `/tmp` (MB): its memory limit, since tmpfs pages are
/// memory charged to the instance's cgroup.
pub fn tmp_mb(memory_mb: u64) -> u64 {
    memory_mb.max(1)
}

fn log_limit(spec: &InstanceSpec) -> usize {
    usize::try_from(spec.limits.logs.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
}

/// Changes the memory limit of an existing cgroup (swap included, as at creation).
// TODO: belongs in `CgroupManager` (nimbus-sandbox) next to `create`; done here until it has it.
fn set_memory_limit(m: &dyn CgroupManager, cg: &CgroupHandle, bytes: u64) -> io::Result<()> {
    let value = bytes.to_string();
    match m.version() {
        CgroupVersion::V2 => fs::write(cg.path().join("memory.max"), &value),
        CgroupVersion::V1 => {
            let mem = cg.path().join("memory.limit_in_bytes");
            let memsw = cg.path().join("memory.memsw.limit_in_bytes");
            if !memsw.exists() {
                return fs::write(&mem, &value);
            }
            // memsw may never be below the memory limit: lowering sets memory first, raising
            // sets memsw first.
            let current = fs::read_to_string(&mem)?
                .trim()
                .parse::<u64>()
                .unwrap_or(u64::MAX);
            if bytes <= current {
                fs::write(&mem, &value)?;
                fs::write(&memsw, &value)
            } else {
                fs::write(&memsw, &value)?;
                fs::write(&mem, &value)
            }
        }
    }
}

/// Why no ack came.
struct AckFailure {
    /// In the words of an init failure.
    message: String,
    /// How the process ended, when it died by itself (not by its memory limit, not killed by
    /// us) before acknowledging.
    died: Option<std::process::ExitStatus>,
}

/// Waits for the launcher's acknowledgement on fd 3 (after sending `request`, e.g. a stem cell's
/// init line), collecting what it prints into `sink`. Returns the ack object; on any failure the
/// instance is killed and released, and the rest of its output drained into `sink`.
async fn await_ack(
    inst: &mut ProcessInstance,
    request: Option<Vec<u8>>,
    deadline: Instant,
    timeout: Duration,
    sink: &mut LogSink,
) -> Result<Map<String, Value>, AckFailure> {
    let ex = exchange(&mut inst.child, &mut inst.pipes, request, deadline, sink).await;
    let mut died = None;
    let message = match ex {
        Exchange::Line(line) => match serde_json::from_slice::<Value>(&line) {
            Ok(Value::Object(o)) if o.get("ok") == Some(&Value::Bool(true)) => return Ok(o),
            Ok(v) if v.get("ok") == Some(&Value::Bool(false)) => match v.get("error") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => "The action did not initialize properly.".to_string(),
            },
            _ => format!(
                "The action did not initialize properly: expected {{\"ok\":true}} on fd 3, got '{}'.",
                String::from_utf8_lossy(&line[..line.len().min(200)])
            ),
        },
        Exchange::TimedOut => format!(
            "The action exceeded its time limit of {} milliseconds during initialization.",
            timeout.as_millis()
        ),
        Exchange::TooLarge => "The action did not initialize properly.".to_string(),
        Exchange::Gone => {
            // As `finish_dead`, keeping the status only if it exited by itself.
            let exited = tokio::time::timeout(EXIT_GRACE, inst.child.wait())
                .await
                .ok()
                .and_then(Result::ok);
            inst.kill().await;
            if inst.resources.memory_exceeded() {
                format!(
                    "The action exhausted its memory limit of {} MB during initialization.",
                    inst.memory_mb
                )
            } else {
                died = exited;
                let how = exited.map(|s| format!(" ({s})")).unwrap_or_default();
                format!(
                    "The action did not initialize properly: it exited before signalling readiness{how}."
                )
            }
        }
    };
    inst.kill().await;
    inst.pipes.drain_logs(sink);
    inst.resources.release().await;
    Err(AckFailure { message, died })
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn supports(&self, kind: &str) -> bool {
        Lang::from_kind(kind).is_some()
    }

    async fn start(
        &self,
        spec: &InstanceSpec,
        timeout: Duration,
    ) -> Result<Box<dyn Instance>, RuntimeError> {
        let lang = Lang::from_kind(&spec.kind)
            .ok_or_else(|| RuntimeError::UnsupportedKind(spec.kind.clone()))?;
        let deadline = Instant::now() + timeout;
        let mut attempt = 0;
        loop {
            let mut inst = self
                .launch(lang, Mode::Normal(spec), spec.limits.memory)
                .await?;
            tracing::debug!(instance = %inst.id, kind = %spec.kind, action = %spec.action_name, pid = ?inst.pgid, "instance started");
            let mut sink = LogSink::new(log_limit(spec));
            match await_ack(&mut inst, None, deadline, timeout, &mut sink).await {
                Ok(_) => return Ok(into_instance(inst, lang, spec)),
                // bubblewrap 0.8 intermittently fails to bring up the loopback interface of a
                // sandbox with outbound network ("loopback: Failed RTM_NEWADDR"); the sandbox
                // never ran the function, so it is started again (bounded).
                Err(_)
                    if attempt < 3
                        && spec.outbound_network
                        && sink
                            .lines
                            .iter()
                            .any(|l| l.contains("bwrap: loopback: Failed RTM_NEWADDR")) =>
                {
                    tracing::warn!(action = %spec.action_name, "bubblewrap could not set up the sandbox's loopback; starting it again");
                    attempt += 1;
                    inst.stop().await;
                }
                Err(f) => {
                    return Err(RuntimeError::Init {
                        message: f.message,
                        logs: sink.lines,
                    });
                }
            }
        }
    }

    /// Node.js and Python: a launcher in stem mode, its interpreter and modules loaded, with an
    /// empty code dir and a cgroup limited to [`STEM_MEMORY_MB`] until specialisation. Returns
    /// once the launcher has said it is ready. `exec`: `None` (its code is the process itself).
    async fn prestart(&self, kind: &str) -> Result<Option<Box<dyn StemCell>>, RuntimeError> {
        let lang =
            Lang::from_kind(kind).ok_or_else(|| RuntimeError::UnsupportedKind(kind.to_string()))?;
        if lang == Lang::Exec {
            return Ok(None);
        }
        // A stem cell's /tmp is sized for the largest function and shrunk to the function's
        // memory limit at specialisation; where that cannot be done (bubblewrap without root),
        // instances start afresh so that /tmp is the same size either way.
        if let Some(sb) = &self.sandbox
            && sb.layers().bwrap.is_some()
            && !sb.can_resize_tmp()
        {
            return Ok(None);
        }
        let deadline = Instant::now() + STEM_READY_TIMEOUT;
        let mut inst = self.launch(lang, Mode::Stem, STEM_MEMORY_MB).await?;
        let mut sink = LogSink::new(64 << 10);
        let ack = await_ack(&mut inst, None, deadline, STEM_READY_TIMEOUT, &mut sink).await;
        match ack {
            Ok(ack) if ack.get("stem") == Some(&Value::Bool(true)) => {
                tracing::debug!(instance = %inst.id, kind, pid = ?inst.pgid, "stem cell ready");
                Ok(Some(Box::new(ProcessStemCell {
                    kind: kind.to_string(),
                    lang,
                    inst,
                    sandbox: self.sandbox.clone(),
                })))
            }
            Ok(ack) => {
                inst.stop().await;
                Err(RuntimeError::Platform(format!(
                    "the {kind} launcher did not start in stem mode (it answered {})",
                    Value::Object(ack)
                )))
            }
            Err(f) => {
                tracing::warn!(kind, logs = ?sink.lines, "stem cell did not become ready");
                Err(RuntimeError::Platform(format!(
                    "the {kind} stem cell did not become ready: {}",
                    f.message
                )))
            }
        }
    }
}

impl ProcessRuntime {
    /// Makes the instance directory with its code dir (filled with `spec`'s code in
    /// [`Mode::Normal`], empty for a stem cell), creates the cgroup and spawns the child. The
    /// child has not acknowledged anything yet. On error everything made is released.
    async fn launch(
        &self,
        lang: Lang,
        mode: Mode<'_>,
        memory_mb: u64,
    ) -> Result<ProcessInstance, RuntimeError> {
        let (id, dir) = self.new_instance_dir()?;
        let mut resources = Resources {
            dir: dir.clone(),
            cgroup: None,
            net: None,
            released: false,
        };
        match self
            .launch_in(lang, mode, memory_mb, &id, &dir, &mut resources)
            .await
        {
            Ok((child, pipes, code_dir)) => Ok(ProcessInstance {
                pgid: child
                    .id()
                    .and_then(|p| i32::try_from(p).ok())
                    .map(Pid::from_raw),
                id,
                child,
                pipes,
                resources,
                usable: true,
                killed: false,
                memory_mb,
                code_dir,
                freeze_after: self.freeze_after,
                freezer: None,
            }),
            Err(e) => {
                resources.release().await;
                Err(e)
            }
        }
    }

    async fn launch_in(
        &self,
        lang: Lang,
        mode: Mode<'_>,
        memory_mb: u64,
        id: &str,
        dir: &Path,
        resources: &mut Resources,
    ) -> Result<(Child, Pipes, PathBuf), RuntimeError> {
        let code_dir = dir.join("code");
        let code = match mode {
            Mode::Normal(spec) => Some((spec.code.clone(), spec.binary)),
            Mode::Stem => None,
        };
        let cd = code_dir.clone();
        tokio::task::spawn_blocking(move || {
            fs::create_dir(&cd).map_err(|e| platform("cannot create the code directory", e))?;
            // Traversable by the sandbox user whatever the server's umask.
            fs::set_permissions(&cd, fs::Permissions::from_mode(0o755))
                .map_err(|e| platform("cannot set the code directory's mode", e))?;
            match code {
                Some((code, binary)) => materialise(lang, &code, binary, &cd),
                None => Ok(()),
            }
        })
        .await
        .map_err(|e| platform("code materialisation task failed", e))??;

        let sandbox_spec = self.sandbox.as_ref().map(|_| {
            let mut sp = SandboxSpec::new(&code_dir);
            sp.launcher_dir = Some(self.launchers_dir.clone());
            sp.extra_ro = self.interpreter_dirs.clone();
            // tmpfs pages are charged to the instance's memory cgroup: /tmp reports the memory
            // limit, which is what heap and /tmp together may use. A stem cell's is shrunk to
            // its function's at specialisation.
            sp.tmp_mb = tmp_mb(memory_mb);
            sp.network = match mode {
                Mode::Normal(spec) if spec.outbound_network => Network::Outbound,
                _ => Network::None,
            };
            if let Mode::Normal(spec) = mode {
                sp.ro_binds = spec.ro_binds.clone();
            }
            sp
        });
        // cgroup first, so the child can move itself in before exec.
        let mut procs_file = None;
        if let (Some(m), Some(sp)) = (&self.cgroups, &sandbox_spec) {
            // Sandboxed: memory, pids and CPU share; the sandbox's child setup joins it.
            let cg = m
                .create_limited(id, &sp.cgroup_limits(memory_mb.saturating_mul(1 << 20)))
                .map_err(|e| platform("cannot create the instance cgroup", e))?;
            resources.cgroup = Some((m.clone(), cg));
        } else if let Some(m) = &self.cgroups {
            let cg = m
                .create(id, memory_mb.saturating_mul(1 << 20))
                .map_err(|e| platform("cannot create the instance cgroup", e))?;
            let procs = cg.procs_path();
            resources.cgroup = Some((m.clone(), cg));
            let f = fs::OpenOptions::new()
                .write(true)
                .open(&procs)
                .map_err(|e| platform(&format!("cannot open {}", procs.display()), e))?;
            procs_file = Some(f);
        }

        let (program, args) = self.command(lang, mode, &code_dir);
        let env = match mode {
            Mode::Normal(spec) => Some(&spec.env),
            Mode::Stem => None,
        };
        let launch = Launch {
            program,
            args,
            env,
            home: dir,
            code_dir: &code_dir,
        };
        let sandboxed = sandbox_spec.map(|mut sp| {
            // The complete environment inside: what build_command would set, HOME in /tmp.
            sp.env = vec![
                ("PATH".into(), CHILD_PATH.into()),
                ("HOME".into(), "/tmp".into()),
                ("LANG".into(), "C.UTF-8".into()),
            ];
            sp.env.extend(
                launch
                    .env
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
            sp.env.push(("__OW_WAIT_FOR_ACK".into(), "1".into()));
            sp
        });
        let cg = resources.cgroup.as_ref().map(|(_, cg)| cg.clone());
        let (child, pipes, net) = self
            .spawn(
                lang,
                &launch,
                procs_file,
                sandboxed.as_ref().map(|sp| (sp, cg.as_ref())),
            )
            .await?;
        resources.net = net;
        Ok((child, pipes, code_dir))
    }

    /// Starts `launch` with piped stdio, fd 3 as the result pipe, its own process group, and
    /// (with `procs_file`) moved into its cgroup before exec.
    async fn spawn(
        &self,
        lang: Lang,
        launch: &Launch<'_>,
        procs_file: Option<fs::File>,
        sandboxed: Option<(&SandboxSpec, Option<&CgroupHandle>)>,
    ) -> Result<(Child, Pipes, Option<NetHandle>), RuntimeError> {
        let mut attempt = 0;
        loop {
            let (out_r, out_w) = pipe_pair()?;
            let (err_r, err_w) = pipe_pair()?;
            let (res_r, res_w) = pipe_pair()?;
            let res_fd = res_w.as_raw_fd();
            let cg_fd = procs_file.as_ref().map(|f| f.as_raw_fd());
            // Under the sandbox: bwrap's command line, plus the descriptors and the setup its
            // child needs (made anew for each attempt: bwrap consumes them).
            let wrapped = match (&self.sandbox, sandboxed) {
                (Some(sb), Some((sp, cg))) => Some(
                    sb.wrap(sp, &launch.program, &launch.args, cg)
                        .map_err(|e| platform("cannot set up the sandbox", e))?,
                ),
                _ => None,
            };
            let setup = wrapped.as_ref().map(|w| w.setup.clone());
            let spawned = {
                let mut cmd = match &wrapped {
                    Some(w) => {
                        let mut c = Command::new(&w.program);
                        c.args(&w.args)
                            .env_clear()
                            .envs(w.env.iter().map(|(k, v)| (k, v)))
                            .current_dir(&w.cwd);
                        c
                    }
                    None => build_command(launch),
                };
                cmd.stdin(Stdio::piped())
                    .stdout(Stdio::from(out_w))
                    .stderr(Stdio::from(err_w))
                    .process_group(0)
                    .kill_on_drop(true);
                let hook = move || -> io::Result<()> {
                    if let Some(setup) = &setup {
                        setup.apply_in_child()?;
                    }
                    if let Some(fd) = cg_fd {
                        let mut buf = [0u8; 10];
                        // SAFETY: getpid has no preconditions.
                        let pid = unsafe { libc::getpid() };
                        let digits = pid_digits(pid.unsigned_abs(), &mut buf);
                        // SAFETY: `digits` is a valid buffer of that length; fd is open.
                        let n = unsafe { libc::write(fd, digits.as_ptr().cast(), digits.len()) };
                        if n < 0 {
                            return Err(io::Error::last_os_error());
                        }
                        if n.unsigned_abs() != digits.len() {
                            return Err(io::Error::from_raw_os_error(libc::EIO));
                        }
                    }
                    // SAFETY: plain descriptor calls on descriptors open in this process.
                    if unsafe { libc::dup2(res_fd, 3) } < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // dup2 onto itself keeps FD_CLOEXEC, so clear it explicitly.
                    // SAFETY: as above.
                    if unsafe { libc::fcntl(3, libc::F_SETFD, 0) } < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                };
                // SAFETY: the hook runs in the forked child before exec and only makes
                // async-signal-safe calls (getpid, write, dup2, fcntl, and the sandbox's
                // `apply_in_child`, documented as async-signal-safe and allocation-free) on
                // descriptors that stay open in the parent until `spawn` returns.
                unsafe {
                    cmd.pre_exec(hook);
                }
                cmd.spawn()
                // `cmd` (holding the child's ends of stdout/stderr) is dropped here.
            };
            drop(res_w);
            // The child has its copies now; ours (cgroup.procs, seccomp, bwrap pipes) can go.
            let network = wrapped.and_then(|w| {
                drop(w.fds);
                w.network
            });
            match spawned {
                Ok(mut child) => {
                    // Outbound network: slirp4netns joins the sandbox's namespace before the
                    // program is let go.
                    let net = match (&self.sandbox, network) {
                        (Some(sb), Some(pending)) => match sb.attach_network(pending).await {
                            Ok(n) => Some(n),
                            // bubblewrap 0.8 sometimes fails to set up an outbound sandbox's
                            // loopback and exits (see `start`); releasing it then fails with
                            // EPIPE. Not the function's fault: start the sandbox again (bounded).
                            Err(e) if attempt < 3 => {
                                tracing::warn!(error = %e, "connecting the sandbox's network failed; starting it again");
                                attempt += 1;
                                let _ = child.start_kill();
                                let _ = child.wait().await;
                                continue;
                            }
                            Err(e) => {
                                return Err(platform("cannot connect the sandbox's network", e));
                            }
                        },
                        _ => None,
                    };
                    let pipes = Pipes {
                        stdin: child.stdin.take(),
                        stdout: LogPipe::new(receiver(out_r)?, "stdout"),
                        stderr: LogPipe::new(receiver(err_r)?, "stderr"),
                        result: ResultPipe {
                            rx: receiver(res_r)?,
                            buf: Vec::new(),
                            eof: false,
                        },
                    };
                    return Ok((child, pipes, net));
                }
                // A file we just wrote can be briefly "busy" when another thread forked while
                // our write descriptor was open: retry.
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < 10 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    return Err(match lang {
                        Lang::Exec => {
                            init_error(format!("The action's executable could not be started: {e}"))
                        }
                        Lang::Node | Lang::Python => {
                            platform(&format!("cannot start {}", launch.program.display()), e)
                        }
                    });
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrent instances

/// The number of activations an instance of `spec` runs at once, when that is above 1 and `lang`
/// can multiplex them (Node.js only; Python and `exec` instances run one at a time).
fn concurrency(lang: Lang, spec: &InstanceSpec) -> Option<u64> {
    (lang == Lang::Node && spec.limits.concurrency > 1).then_some(spec.limits.concurrency)
}

/// An acknowledged instance as the [`Instance`] its spec asks for, frozen whenever it is idle
/// (when the runtime freezes and its cgroup can).
fn into_instance(mut inst: ProcessInstance, lang: Lang, spec: &InstanceSpec) -> Box<dyn Instance> {
    if let (Some(grace), Some((m, cg))) = (inst.freeze_after, &inst.resources.cgroup) {
        inst.freezer = IdleFreezer::new(m.clone(), cg.clone(), grace);
    }
    match concurrency(lang, spec) {
        Some(n) => Box::new(ConcurrentInstance::new(inst, n)),
        None => Box::new(inst),
    }
}

/// A log line of a concurrent instance that starts with `TAG_START <activation id> TAG_END`
/// belongs to that activation.
const TAG_START: u8 = 0x1e;
const TAG_END: u8 = 0x1f;
/// The longest activation id a tag may carry.
const MAX_TAG_ID_BYTES: usize = 256;

/// `line` as (activation id, text) when it starts with a tag.
fn split_tag(line: &[u8]) -> Option<(&str, &[u8])> {
    let rest = line.strip_prefix(&[TAG_START])?;
    let end = rest
        .iter()
        .take(MAX_TAG_ID_BYTES + 1)
        .position(|&b| b == TAG_END)?;
    let id = std::str::from_utf8(&rest[..end]).ok()?;
    Some((id, &rest[end + 1..]))
}

/// A result line of a concurrent instance, `{"activation_id": id, "result": …}`.
fn parse_envelope(line: &[u8]) -> Option<(String, Value)> {
    let Ok(Value::Object(mut o)) = serde_json::from_slice::<Value>(line) else {
        return None;
    };
    let Some(Value::String(id)) = o.remove("activation_id") else {
        return None;
    };
    Some((id, o.remove("result").unwrap_or(Value::Null)))
}

fn exited_outcome() -> RunOutcome {
    RunOutcome {
        result: RunResult::DeveloperError(MSG_EXITED.to_string()),
        logs: Vec::new(),
        reusable: false,
    }
}

/// A run waiting for its result.
struct Pending {
    sink: LogSink,
    deadline: Instant,
    tx: oneshot::Sender<RunOutcome>,
}

/// The runs in flight, by activation id, and the log lines addressed to them: tagged lines go
/// to their activation (a tag of no run in flight: dropped), untagged lines to every run in
/// flight (none: dropped).
#[derive(Default)]
struct Demux {
    runs: HashMap<String, Pending>,
    /// Set once the process is gone: no run is accepted any more.
    closed: bool,
    /// Per stream (stdout, stderr), while a line longer than [`MAX_LINE_BYTES`] arrives in
    /// pieces: where its first piece went (`Some(None)`: everyone).
    carry: [Option<Option<String>>; 2],
}

impl Demux {
    /// Ends the run of `id`; false when no such run is waiting.
    fn resolve(&mut self, id: &str, result: RunResult, reusable: bool) -> bool {
        match self.runs.remove(id) {
            Some(p) => {
                let _ = p.tx.send(RunOutcome {
                    result,
                    logs: p.sink.lines,
                    reusable,
                });
                true
            }
            None => false,
        }
    }
}

impl LineSink for Demux {
    fn line(&mut self, stream: &'static str, line: &[u8], whole: bool) {
        let slot = usize::from(stream == "stderr");
        let (target, text) = match self.carry[slot].take() {
            Some(target) => (target, line),
            None => match split_tag(line) {
                Some((id, text)) => (Some(id.to_string()), text),
                None => (None, line),
            },
        };
        match &target {
            Some(id) => {
                if let Some(p) = self.runs.get_mut(id) {
                    p.sink.push(stream, text);
                }
            }
            None => {
                for p in self.runs.values_mut() {
                    p.sink.push(stream, text);
                }
            }
        }
        if !whole {
            self.carry[slot] = Some(target);
        }
    }

    fn accepting(&self) -> bool {
        true
    }
}

/// What a concurrent instance's runs and its reader task share.
struct Shared {
    id: String,
    /// Request lines are written whole, one run at a time.
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    demux: std::sync::Mutex<Demux>,
    /// Tells the reader a run was added (its deadline may be the next one).
    wake: Notify,
    freezer: Option<Arc<IdleFreezer>>,
}

impl Shared {
    fn demux(&self) -> MutexGuard<'_, Demux> {
        self.demux.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The [`ConcurrentRunner`] of a Node.js instance with `limits.concurrency > 1`.
///
/// Each run registers under its activation id (ids must be unique among the runs in flight),
/// writes its request line to stdin under a lock and waits. One reader task
/// ([`serve_concurrent`]) owns the process: it reads stdout/stderr continuously into the
/// [`Demux`], and for each result envelope on fd 3 first drains both pipes (the launcher flushed
/// the activation's output before writing its result, as in the sequential protocol) and then
/// hands the classified result to its run. It also enforces every run's deadline: an expired run
/// gets the process killed (as OpenWhisk destroys the container), then [`RunResult::Timeout`],
/// and every other run in flight [`MSG_EXITED`]; all of them non-reusable.
struct ConcurrentProcess {
    shared: Arc<Shared>,
}

#[async_trait]
impl ConcurrentRunner for ConcurrentProcess {
    async fn run(&self, req: RunRequest) -> RunOutcome {
        let (tx, rx) = oneshot::channel();
        {
            let mut d = self.shared.demux();
            if d.closed {
                return exited_outcome();
            }
            if d.runs.contains_key(&req.activation_id) {
                return RunOutcome {
                    result: RunResult::DeveloperError(format!(
                        "Activation {} is already running on this instance.",
                        req.activation_id
                    )),
                    logs: Vec::new(),
                    reusable: true,
                };
            }
            d.runs.insert(
                req.activation_id.clone(),
                Pending {
                    sink: LogSink::new(req.log_limit_bytes),
                    deadline: Instant::now() + req.timeout,
                    tx,
                },
            );
        }
        self.shared.wake.notify_one();
        let freezer = self.shared.freezer.clone();
        if let Some(f) = &freezer {
            f.busy();
        }
        let outcome = self.run_registered(&req, rx).await;
        if let Some(f) = &freezer
            && outcome.reusable
        {
            f.idle();
        }
        outcome
    }
}

impl ConcurrentProcess {
    /// Sends the request of a run registered in the demultiplexer and waits for its outcome.
    async fn run_registered(
        &self,
        req: &RunRequest,
        rx: oneshot::Receiver<RunOutcome>,
    ) -> RunOutcome {
        let line = request_line(req);
        let write = async {
            let mut stdin = self.shared.stdin.lock().await;
            let w = stdin
                .as_mut()
                .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "stdin is closed"))?;
            w.write_all(&line).await?;
            w.flush().await
        };
        tokio::pin!(rx);
        // The reader may end this run (deadline, death) while the write still waits.
        tokio::select! {
            biased;
            r = &mut rx => return r.unwrap_or_else(|_| exited_outcome()),
            r = write => {
                if let Err(e) = r {
                    tracing::debug!(instance = %self.shared.id, error = %e, "could not send the request");
                }
            }
        }
        rx.await.unwrap_or_else(|_| exited_outcome())
    }
}

/// Why a concurrent instance's reader stopped.
enum End {
    Shutdown,
    /// The process exited or closed fd 3.
    Died,
    /// A run's deadline passed (at this instant).
    Expired(Instant),
    TooLarge,
    /// A result line that is no envelope.
    Protocol,
}

/// The reader task of a concurrent instance (see [`ConcurrentProcess`]). Returns once the
/// process is gone and every run in flight has its outcome.
async fn serve_concurrent(
    mut inst: ProcessInstance,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut scratch = vec![0u8; READ_CHUNK];
    let mut exited = false;
    let end = 'serve: loop {
        let next_deadline = shared.demux().runs.values().map(|p| p.deadline).min();
        let ProcessInstance { child, pipes, .. } = &mut inst;
        let Pipes {
            stdout,
            stderr,
            result,
            ..
        } = pipes;
        let sleep = async {
            match next_deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = &mut stop => break End::Shutdown,
            _ = sleep => {}
            _ = shared.wake.notified() => {}
            r = stdout.rx.readable(), if !stdout.eof => {
                if r.is_err() {
                    stdout.eof = true;
                }
            }
            r = stderr.rx.readable(), if !stderr.eof => {
                if r.is_err() {
                    stderr.eof = true;
                }
            }
            r = result.rx.readable(), if !result.eof => {
                if r.is_err() {
                    result.eof = true;
                }
            }
            st = child.wait(), if !exited => {
                exited = true;
                tracing::debug!(instance = %shared.id, status = ?st, "instance process exited");
            }
        }
        {
            let mut d = shared.demux();
            stdout.pump(&mut *d, &mut scratch, PUMP_BUDGET);
            stderr.pump(&mut *d, &mut scratch, PUMP_BUDGET);
        }
        result.read_available(&mut scratch, exited);
        while let Some(line) = result.take_line() {
            let mut d = shared.demux();
            // Everything this activation printed is in the pipes by now.
            stdout.drain(&mut *d, &mut scratch);
            stderr.drain(&mut *d, &mut scratch);
            let Some((id, value)) = parse_envelope(&line) else {
                tracing::warn!(instance = %shared.id, "result line without an activation id");
                break 'serve End::Protocol;
            };
            if !d.resolve(&id, classify_value(value), true) {
                tracing::debug!(instance = %shared.id, activation = %id, "result for no run in flight");
            }
        }
        if result.buf.len() > MAX_RESULT_BYTES {
            break End::TooLarge;
        }
        if result.eof || exited {
            break End::Died;
        }
        let now = Instant::now();
        if shared.demux().runs.values().any(|p| p.deadline <= now) {
            break End::Expired(now);
        }
    };

    let memory_exceeded = match end {
        End::Died => {
            inst.finish_dead().await;
            inst.resources.memory_exceeded()
        }
        _ => {
            inst.kill().await;
            false
        }
    };
    {
        let mut d = shared.demux();
        d.closed = true;
        inst.pipes.drain_logs(&mut *d);
        for (_, p) in std::mem::take(&mut d.runs) {
            let result = match end {
                End::Expired(at) if p.deadline <= at => RunResult::Timeout,
                End::Died if memory_exceeded => RunResult::MemoryExceeded,
                End::TooLarge => RunResult::DeveloperError(format!(
                    "The action produced a response larger than {} MB.",
                    MAX_RESULT_BYTES >> 20
                )),
                End::Protocol => RunResult::DeveloperError(MSG_NOT_JSON.into()),
                End::Shutdown | End::Died | End::Expired(_) => {
                    RunResult::DeveloperError(MSG_EXITED.into())
                }
            };
            let _ = p.tx.send(RunOutcome {
                result,
                logs: p.sink.lines,
                reusable: false,
            });
        }
    }
    if memory_exceeded {
        tracing::info!(instance = %inst.id, memory_mb = inst.memory_mb, "instance exceeded its memory limit");
    }
    if let Ok(mut stdin) = shared.stdin.try_lock() {
        *stdin = None;
    }
    inst.stop().await;
}

/// A Node.js instance with `limits.concurrency > 1`: its process belongs to the reader task, and
/// [`Instance::run`] goes through the same [`ConcurrentProcess`] that
/// [`Instance::concurrent`] hands out.
struct ConcurrentInstance {
    runner: Arc<ConcurrentProcess>,
    /// Sending (or dropping) it stops the reader, which kills the process.
    stop: Option<oneshot::Sender<()>>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl ConcurrentInstance {
    fn new(mut inst: ProcessInstance, concurrency: u64) -> Self {
        inst.discard_unsolicited();
        tracing::debug!(instance = %inst.id, concurrency, "serving activations concurrently");
        let shared = Arc::new(Shared {
            id: inst.id.clone(),
            stdin: tokio::sync::Mutex::new(inst.pipes.stdin.take()),
            demux: std::sync::Mutex::new(Demux::default()),
            wake: Notify::new(),
            freezer: inst.freezer.clone(),
        });
        let (stop, stop_rx) = oneshot::channel();
        let reader = tokio::spawn(serve_concurrent(inst, shared.clone(), stop_rx));
        ConcurrentInstance {
            runner: Arc::new(ConcurrentProcess { shared }),
            stop: Some(stop),
            reader: Some(reader),
        }
    }
}

#[async_trait]
impl Instance for ConcurrentInstance {
    fn concurrent(&self) -> Option<Arc<dyn ConcurrentRunner>> {
        Some(self.runner.clone())
    }

    async fn run(&mut self, req: RunRequest) -> RunOutcome {
        self.runner.run(req).await
    }

    /// Kills the process; runs in flight end with [`MSG_EXITED`].
    async fn shutdown(mut self: Box<Self>) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(reader) = self.reader.take()
            && let Err(e) = reader.await
        {
            tracing::warn!(error = %e, "concurrent instance reader failed");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stem cells

/// A launcher running in stem mode: interpreter up, no code, empty code dir.
struct ProcessStemCell {
    kind: String,
    lang: Lang,
    inst: ProcessInstance,
    /// To give the sandbox's /tmp the function's size.
    sandbox: Option<Arc<Sandbox>>,
}

impl ProcessStemCell {
    /// Fails (killing the stem cell) with a [`RuntimeError::Platform`] for a stem cell that
    /// cannot take `spec`: another kind, or a process that is no longer running.
    async fn check_usable(&mut self, spec: &InstanceSpec) -> Result<(), RuntimeError> {
        let problem = if spec.kind != self.kind {
            Some(format!(
                "a {} stem cell cannot run a {} action",
                self.kind, spec.kind
            ))
        } else {
            match self.inst.child.try_wait() {
                Ok(Some(status)) => Some(format!(
                    "the {} stem cell's process exited before specialization ({status})",
                    self.kind
                )),
                Ok(None) => None,
                Err(e) => Some(format!(
                    "the {} stem cell's process cannot be checked: {e}",
                    self.kind
                )),
            }
        };
        match problem {
            None => Ok(()),
            Some(message) => {
                self.inst.stop().await;
                Err(RuntimeError::Platform(message))
            }
        }
    }
}

#[async_trait]
impl StemCell for ProcessStemCell {
    fn kind(&self) -> &str {
        &self.kind
    }

    /// Materialises the code into the (empty) code dir as [`Runtime::start`] would, sets the
    /// cgroup's memory limit to `spec.limits.memory`, sends the init line and waits for the
    /// ack. Failures of the code are [`RuntimeError::Init`] with the same messages (and the
    /// load's output as logs) as a normal start; a stem cell that was already dead, or was
    /// SIGKILLed from outside while loading (not by its memory limit), is a
    /// [`RuntimeError::Platform`] error, so the caller can retry with a fresh start.
    async fn specialize(
        self: Box<Self>,
        spec: &InstanceSpec,
        timeout: Duration,
    ) -> Result<Box<dyn Instance>, RuntimeError> {
        let deadline = Instant::now() + timeout;
        let mut cell = *self;
        cell.check_usable(spec).await?;
        let ProcessStemCell {
            kind,
            lang,
            mut inst,
            sandbox,
        } = cell;

        let (code, binary, cd) = (spec.code.clone(), spec.binary, inst.code_dir.clone());
        let job = tokio::task::spawn_blocking(move || materialise(lang, &code, binary, &cd)).await;
        let materialised = job
            .map_err(|e| platform("code materialisation task failed", e))
            .and_then(|r| r);
        if let Err(e) = materialised {
            inst.stop().await;
            return Err(e);
        }

        if let Some((m, cg)) = &inst.resources.cgroup {
            let bytes = spec.limits.memory.saturating_mul(1 << 20);
            if let Err(e) = set_memory_limit(m.as_ref(), cg, bytes) {
                let path = cg.path().display().to_string();
                inst.stop().await;
                return Err(platform(
                    &format!("cannot set the memory limit of cgroup {path}"),
                    e,
                ));
            }
        }
        inst.memory_mb = spec.limits.memory;
        if let Some(sb) = sandbox.as_ref().filter(|sb| sb.layers().bwrap.is_some()) {
            let resized = match inst.child.id() {
                Some(pid) => sb
                    .resize_tmp(pid, tmp_mb(spec.limits.memory))
                    .map_err(|e| e.to_string()),
                None => Err("the process is gone".to_string()),
            };
            if let Err(e) = resized {
                inst.stop().await;
                return Err(platform("cannot size the stem cell's /tmp", e));
            }
        }

        // Nothing the idle launcher may have written belongs to the init.
        inst.discard_unsolicited();
        let mut sink = LogSink::new(log_limit(spec));
        let ack = await_ack(
            &mut inst,
            Some(init_line(lang, spec)),
            deadline,
            timeout,
            &mut sink,
        )
        .await;
        match ack {
            Ok(_) => {
                tracing::debug!(instance = %inst.id, kind = %spec.kind, action = %spec.action_name, pid = ?inst.pgid, "stem cell specialized");
                Ok(into_instance(inst, lang, spec))
            }
            // SIGKILL from outside (not by the memory limit): the host or an operator, not the
            // function, ended it. (A function that SIGKILLs itself while loading is retried
            // once, by a fresh start, which reports it properly.)
            Err(f) if f.died.and_then(|s| s.signal()) == Some(libc::SIGKILL) => {
                Err(RuntimeError::Platform(format!(
                    "the {kind} stem cell's process was killed during specialization: {}",
                    f.message
                )))
            }
            Err(f) => Err(RuntimeError::Init {
                message: f.message,
                logs: sink.lines,
            }),
        }
    }

    async fn shutdown(mut self: Box<Self>) {
        self.inst.stop().await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_are_confined() {
        assert_eq!(safe_entry_path("a/b.js"), Some(PathBuf::from("a/b.js")));
        assert_eq!(safe_entry_path("./a//b/"), Some(PathBuf::from("a/b")));
        assert_eq!(safe_entry_path("./"), Some(PathBuf::new()));
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/..",
            "\\x",
            "a\\..\\b",
            "C:/x",
            "a\0b",
        ] {
            assert_eq!(safe_entry_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn pid_digits_without_allocation() {
        let mut b = [0u8; 10];
        assert_eq!(pid_digits(0, &mut b), b"0");
        assert_eq!(pid_digits(7, &mut b), b"7");
        assert_eq!(pid_digits(4194304, &mut b), b"4194304");
        assert_eq!(pid_digits(u32::MAX, &mut b), b"4294967295");
    }

    #[tokio::test]
    async fn log_lines_split_truncate_and_flush_partials() {
        let mut sink = LogSink::new(20);
        let (r, _w) = pipe_pair().unwrap();
        let mut p = LogPipe::new(receiver(r).unwrap(), "stdout");
        p.feed(b"hello\nwor", &mut sink);
        p.feed(b"ld\npartial", &mut sink);
        assert_eq!(sink.lines.len(), 2);
        assert!(sink.lines[0].ends_with(" stdout: hello"));
        assert!(sink.lines[1].ends_with(" stdout: world"));
        p.finish(&mut sink);
        assert!(sink.lines[2].ends_with(" stdout: partial"));
        p.feed(b"this line is too long\nmore\n", &mut sink);
        assert_eq!(sink.lines.len(), 4);
        assert!(sink.lines[3].contains(
            "Logs were truncated because the total bytes size exceeds the limit of 20 bytes."
        ));
    }

    /// The final drain must not depend on what the reactor has noticed: data written to a pipe
    /// that tokio never polled is still collected, whole, including more than one chunk.
    #[tokio::test]
    async fn final_drain_reads_what_the_pipe_holds_without_reactor_readiness() {
        let (r, w) = pipe_pair().unwrap();
        let mut p = LogPipe::new(receiver(r).unwrap(), "stderr");
        let mut file = fs::File::from(w);
        let line = "z".repeat(99);
        for _ in 0..500 {
            writeln!(file, "{line}").unwrap(); // 50 kB: fits the default 64 kB pipe
        }
        write!(file, "tail").unwrap();
        let mut sink = LogSink::new(1 << 20);
        let mut scratch = vec![0u8; 4096];
        // tokio's readiness-gated try_read sees nothing yet: the reactor was never polled.
        p.pump(&mut sink, &mut scratch, usize::MAX);
        assert!(sink.lines.is_empty());
        p.drain(&mut sink, &mut scratch);
        p.finish(&mut sink);
        assert_eq!(sink.lines.len(), 501);
        assert!(sink.lines[499].ends_with(&format!("stderr: {line}")));
        assert!(sink.lines[500].ends_with("stderr: tail"));
        assert!(!p.eof, "the writer is still open");
        drop(file);
        p.drain(&mut sink, &mut scratch);
        assert!(p.eof);
    }

    #[test]
    fn results_are_classified() {
        assert_eq!(
            classify(br#"{"a":1}"#).0,
            RunResult::Ok(serde_json::json!({"a":1}))
        );
        assert_eq!(classify(b"[1]").0, RunResult::Ok(serde_json::json!([1])));
        assert!(matches!(
            classify(b"42"),
            (RunResult::DeveloperError(_), true)
        ));
        assert!(matches!(
            classify(b"not json"),
            (RunResult::DeveloperError(_), false)
        ));
    }

    #[test]
    fn concurrent_log_lines_go_to_their_activation() {
        let mut d = Demux::default();
        let mut receivers = Vec::new();
        for id in ["a", "b"] {
            let (tx, rx) = oneshot::channel();
            d.runs.insert(
                id.into(),
                Pending {
                    sink: LogSink::new(1 << 20),
                    deadline: Instant::now(),
                    tx,
                },
            );
            receivers.push(rx);
        }
        d.line("stdout", b"\x1ea\x1fto a", true);
        d.line("stderr", b"\x1eb\x1fto b, first piece ", false);
        d.line("stdout", b"to everyone", true);
        d.line("stderr", b"second piece", true);
        d.line("stdout", b"\x1egone\x1fto nobody", true);
        d.line("stdout", b"\x1eno end of tag", true);
        assert!(d.resolve("a", RunResult::Ok(serde_json::json!({})), true));
        assert!(d.resolve("b", RunResult::Ok(serde_json::json!({})), true));
        assert!(!d.resolve("a", RunResult::Timeout, false));
        let texts = |rx: &mut oneshot::Receiver<RunOutcome>| -> Vec<String> {
            let out = rx.try_recv().unwrap();
            out.logs
                .iter()
                .map(|l| l.split_once(' ').unwrap().1.to_string())
                .collect()
        };
        assert_eq!(
            texts(&mut receivers[0]),
            [
                "stdout: to a",
                "stdout: to everyone",
                "stdout: \u{1e}no end of tag"
            ]
        );
        assert_eq!(
            texts(&mut receivers[1]),
            [
                "stderr: to b, first piece ",
                "stdout: to everyone",
                "stderr: second piece",
                "stdout: \u{1e}no end of tag"
            ]
        );
    }

    #[test]
    fn result_envelopes_name_their_activation() {
        assert_eq!(
            parse_envelope(br#"{"activation_id":"x","result":[1]}"#),
            Some(("x".into(), serde_json::json!([1])))
        );
        assert_eq!(
            parse_envelope(br#"{"activation_id":"x"}"#),
            Some(("x".into(), Value::Null))
        );
        assert_eq!(
            parse_envelope(br#"{"activation_id":null,"result":{}}"#),
            None
        );
        assert_eq!(parse_envelope(br#"{"result":{}}"#), None);
        assert_eq!(parse_envelope(b"[]"), None);
        assert_eq!(parse_envelope(b"not json"), None);
    }

    #[test]
    fn request_lines_carry_the_activation_context() {
        let req = RunRequest {
            value: serde_json::from_str(r#"{"x":"a\nb"}"#).unwrap(),
            activation_id: "aid".into(),
            namespace: "ns".into(),
            action_name: "/ns/act".into(),
            action_version: "0.0.1".into(),
            transaction_id: "tid".into(),
            deadline: 123,
            api_key: None,
            timeout: Duration::from_secs(1),
            log_limit_bytes: 10,
        };
        let line = request_line(&req);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["deadline"], "123");
        assert_eq!(v["value"]["x"], "a\nb");
        assert!(v.get("api_key").is_none());
        let with_key = request_line(&RunRequest {
            api_key: Some("u:k".into()),
            ..req
        });
        let v: Value = serde_json::from_slice(&with_key).unwrap();
        assert_eq!(v["api_key"], "u:k");
    }
}
