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

use crate::{Instance, InstanceSpec, RunOutcome, RunRequest, RunResult, Runtime, RuntimeError};
use async_trait::async_trait;
use base64::Engine;
use nimbus_model::activation::log_line;
use nimbus_sandbox::{CgroupHandle, CgroupManager};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Map, Value};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::process::{Child, ChildStdin, Command};
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
}

impl Default for ProcessRuntimeConfig {
    fn default() -> Self {
        ProcessRuntimeConfig {
            work_dir: std::env::temp_dir().join("nimbus-runtime"),
            node_bin: PathBuf::from("node"),
            python_bin: PathBuf::from("python3"),
            cgroups: true,
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
        let cgroups = if cfg.cgroups {
            nimbus_sandbox::detect()
        } else {
            None
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
        let launcher_js = launchers.join("launcher.js");
        let launcher_py = launchers.join("launcher.py");
        write_atomically(&launcher_js, LAUNCHER_JS.as_bytes())?;
        write_atomically(&launcher_py, LAUNCHER_PY.as_bytes())?;
        let node_bin = resolve_in_path(&cfg.node_bin);
        let python_bin = resolve_python(&resolve_in_path(&cfg.python_bin));
        tracing::debug!(node = %node_bin.display(), python = %python_bin.display(), cgroups = cgroups.is_some(), "process runtime ready");
        Ok(ProcessRuntime {
            instances_dir,
            node_bin,
            python_bin,
            launcher_js,
            launcher_py,
            cgroups,
        })
    }

    /// The cgroup manager in use, if memory limits are enforced.
    pub fn cgroup_manager(&self) -> Option<&Arc<dyn CgroupManager>> {
        self.cgroups.as_ref()
    }

    fn command(
        &self,
        lang: Lang,
        code_dir: &Path,
        main: &str,
    ) -> (PathBuf, Vec<std::ffi::OsString>) {
        let dir = code_dir.as_os_str().to_os_string();
        match lang {
            Lang::Node => (
                self.node_bin.clone(),
                vec![self.launcher_js.clone().into(), dir, main.into()],
            ),
            Lang::Python => (
                self.python_bin.clone(),
                vec![
                    "-u".into(),
                    self.launcher_py.clone().into(),
                    dir,
                    main.into(),
                ],
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
fn resolve_in_path(bin: &Path) -> PathBuf {
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
fn resolve_python(bin: &Path) -> PathBuf {
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

/// Writes the action's code into `code_dir` (created here). Blocking.
fn materialise(lang: Lang, code: &str, binary: bool, code_dir: &Path) -> Result<(), RuntimeError> {
    if code.trim().is_empty() {
        return Err(init_error("Missing main/no code to execute."));
    }
    fs::create_dir(code_dir).map_err(|e| platform("cannot create the code directory", e))?;
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
            fs::create_dir_all(&target).map_err(|e| bad(&e))?;
            continue;
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| bad(&e))?;
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
        if let Some(mode) = entry.unix_mode() {
            // Permission bits only (no setuid/setgid/sticky), and always readable/writable by us.
            let _ = out.set_permissions(fs::Permissions::from_mode((mode & 0o777) | 0o600));
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

    fn feed(&mut self, data: &[u8], sink: &mut LogSink) {
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            let line = &rest[..pos];
            rest = &rest[pos + 1..];
            if self.partial.is_empty() {
                sink.push(self.stream, line);
            } else {
                self.partial.extend_from_slice(line);
                sink.push(self.stream, &self.partial);
                self.partial.clear();
            }
        }
        if !sink.accepting() {
            self.partial.clear();
            return;
        }
        self.partial.extend_from_slice(rest);
        if self.partial.len() >= MAX_LINE_BYTES {
            sink.push(self.stream, &self.partial);
            self.partial.clear();
        }
    }

    /// Reads what tokio knows to be readable, up to `budget` bytes.
    fn pump(&mut self, sink: &mut LogSink, scratch: &mut [u8], budget: usize) {
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
    fn drain(&mut self, sink: &mut LogSink, scratch: &mut [u8]) {
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
    fn finish(&mut self, sink: &mut LogSink) {
        if !self.partial.is_empty() {
            sink.push(self.stream, &self.partial);
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
    fn drain_logs(&mut self, sink: &mut LogSink) {
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
}

impl ProcessInstance {
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
        // Launchers report a crash of the function itself (not of the protocol) this way; the
        // instance stays usable.
        Ok(Value::Object(o)) if o.len() == 1 && o.contains_key(DEVELOPER_ERROR_KEY) => {
            let msg = o
                .get(DEVELOPER_ERROR_KEY)
                .and_then(|m| m.as_str())
                .unwrap_or("The action failed.");
            (RunResult::DeveloperError(msg.to_string()), true)
        }
        Ok(v @ (Value::Object(_) | Value::Array(_))) => (RunResult::Ok(v), true),
        Ok(_) => (RunResult::DeveloperError(MSG_NOT_DICT.into()), true),
        Err(_) => (RunResult::DeveloperError(MSG_NOT_JSON.into()), false),
    }
}

#[async_trait]
impl Instance for ProcessInstance {
    async fn run(&mut self, req: RunRequest) -> RunOutcome {
        if !self.usable {
            return self.unusable_outcome();
        }
        // Whatever was written since the last result (late async output, stray fd-3 bytes)
        // belongs to no activation.
        {
            let mut junk = LogSink::discarding();
            self.pipes.drain_logs(&mut junk);
            let mut scratch = vec![0u8; READ_CHUNK];
            self.pipes.result.read_available(&mut scratch, true);
            if !self.pipes.result.buf.is_empty() {
                tracing::warn!(instance = %self.id, bytes = self.pipes.result.buf.len(), "discarding unsolicited fd-3 output");
                self.pipes.result.buf.clear();
            }
        }
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

    async fn shutdown(mut self: Box<Self>) {
        self.usable = false;
        self.pipes.stdin = None;
        self.kill().await;
        self.resources.release().await;
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
        let (id, dir) = self.new_instance_dir()?;
        let mut resources = Resources {
            dir: dir.clone(),
            cgroup: None,
            released: false,
        };
        let code_dir = dir.join("code");

        let (code, binary, cd) = (spec.code.clone(), spec.binary, code_dir.clone());
        let job = tokio::task::spawn_blocking(move || materialise(lang, &code, binary, &cd)).await;
        let materialised = job
            .map_err(|e| platform("code materialisation task failed", e))
            .and_then(|r| r);
        if let Err(e) = materialised {
            resources.release().await;
            return Err(e);
        }

        // cgroup first, so the child can move itself in before exec.
        let mut procs_file = None;
        if let Some(m) = &self.cgroups {
            let bytes = spec.limits.memory.saturating_mul(1 << 20);
            let cg = match m.create(&id, bytes) {
                Ok(cg) => cg,
                Err(e) => {
                    resources.release().await;
                    return Err(platform("cannot create the instance cgroup", e));
                }
            };
            let procs = cg.procs_path();
            resources.cgroup = Some((m.clone(), cg));
            match fs::OpenOptions::new().write(true).open(&procs) {
                Ok(f) => procs_file = Some(f),
                Err(e) => {
                    resources.release().await;
                    return Err(platform(&format!("cannot open {}", procs.display()), e));
                }
            }
        }

        let spawned = self.spawn(lang, spec, &dir, &code_dir, procs_file).await;
        let (child, pipes) = match spawned {
            Ok(x) => x,
            Err(e) => {
                resources.release().await;
                return Err(e);
            }
        };
        let pgid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .map(Pid::from_raw);
        tracing::debug!(instance = %id, kind = %spec.kind, action = %spec.action_name, pid = ?pgid, "instance started");
        let mut inst = ProcessInstance {
            id,
            child,
            pgid,
            pipes,
            resources,
            usable: true,
            killed: false,
            memory_mb: spec.limits.memory,
        };

        // Init: wait for the ack.
        let mut sink = LogSink::new(
            usize::try_from(spec.limits.logs.saturating_mul(1 << 20)).unwrap_or(usize::MAX),
        );
        let ex = exchange(&mut inst.child, &mut inst.pipes, None, deadline, &mut sink).await;
        let failure = match ex {
            Exchange::Line(line) => match serde_json::from_slice::<Value>(&line) {
                Ok(v) if v.get("ok") == Some(&Value::Bool(true)) => None,
                Ok(v) if v.get("ok") == Some(&Value::Bool(false)) => Some(match v.get("error") {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => "The action did not initialize properly.".to_string(),
                }),
                _ => Some(format!(
                    "The action did not initialize properly: expected {{\"ok\":true}} on fd 3, got '{}'.",
                    String::from_utf8_lossy(&line[..line.len().min(200)])
                )),
            },
            Exchange::TimedOut => Some(format!(
                "The action exceeded its time limit of {} milliseconds during initialization.",
                timeout.as_millis()
            )),
            Exchange::TooLarge => Some("The action did not initialize properly.".to_string()),
            Exchange::Gone => {
                inst.finish_dead().await;
                Some(if inst.resources.memory_exceeded() {
                    format!(
                        "The action exhausted its memory limit of {} MB during initialization.",
                        spec.limits.memory
                    )
                } else {
                    let status = inst.child.try_wait().ok().flatten();
                    let how = status.map(|s| format!(" ({s})")).unwrap_or_default();
                    format!(
                        "The action did not initialize properly: it exited before signalling readiness{how}."
                    )
                })
            }
        };
        match failure {
            None => Ok(Box::new(inst)),
            Some(message) => {
                inst.kill().await;
                inst.pipes.drain_logs(&mut sink);
                inst.resources.release().await;
                Err(RuntimeError::Init {
                    message,
                    logs: sink.lines,
                })
            }
        }
    }
}

impl ProcessRuntime {
    async fn spawn(
        &self,
        lang: Lang,
        spec: &InstanceSpec,
        dir: &Path,
        code_dir: &Path,
        procs_file: Option<fs::File>,
    ) -> Result<(Child, Pipes), RuntimeError> {
        let (program, args) = self.command(lang, code_dir, &spec.main);
        let mut attempt = 0;
        loop {
            let (out_r, out_w) = pipe_pair()?;
            let (err_r, err_w) = pipe_pair()?;
            let (res_r, res_w) = pipe_pair()?;
            let res_fd = res_w.as_raw_fd();
            let cg_fd = procs_file.as_ref().map(|f| f.as_raw_fd());
            let spawned = {
                let mut cmd = Command::new(&program);
                cmd.args(&args)
                    .current_dir(code_dir)
                    .env_clear()
                    .env("PATH", CHILD_PATH)
                    .env("HOME", dir)
                    .env("LANG", "C.UTF-8")
                    .envs(&spec.env)
                    .env("__OW_WAIT_FOR_ACK", "1")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::from(out_w))
                    .stderr(Stdio::from(err_w))
                    .process_group(0)
                    .kill_on_drop(true);
                let hook = move || -> io::Result<()> {
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
                // async-signal-safe calls (getpid, write, dup2, fcntl) on descriptors that stay
                // open in the parent until `spawn` returns; it does not allocate.
                unsafe {
                    cmd.pre_exec(hook);
                }
                cmd.spawn()
                // `cmd` (holding the child's ends of stdout/stderr) is dropped here.
            };
            drop(res_w);
            match spawned {
                Ok(mut child) => {
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
                    return Ok((child, pipes));
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
                            platform(&format!("cannot start {}", program.display()), e)
                        }
                    });
                }
            }
        }
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
