//! One-shot jobs: a command run to completion inside the sandbox, with a cgroup (memory, pids,
//! a CPU cap), a wall-clock timeout and the tail of its output. Builds (`pip install`,
//! `npm install`) run this way.

use crate::cgroup::{CgroupHandle, CgroupManager};
use crate::sandbox::{Sandbox, SandboxError, SandboxSpec};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// What to run and within which limits.
#[derive(Debug, Clone)]
pub struct Job {
    /// Where and as whom: binds, uid, network, `/tmp` size, environment (complete: nothing of
    /// the caller's environment is added).
    pub spec: SandboxSpec,
    /// Host paths under `spec.code_dir` in `program` and `args` are translated to the sandbox's.
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Name of the job's cgroup (letters, digits, `.`, `_`, `-`; unique while it runs).
    pub name: String,
    pub memory_bytes: u64,
    /// CPU cap in thousandths of a CPU (`None`: only the CPU share of its memory).
    pub cpu_millicores: Option<u64>,
    pub timeout: Duration,
    /// How many bytes of output (stdout and stderr, interleaved as written) are kept: the last.
    pub output_tail: usize,
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEnd {
    Exited(ExitStatus),
    /// Killed at its timeout.
    TimedOut,
    /// Killed by the kernel at its memory limit.
    MemoryExceeded,
}

#[derive(Debug, Clone)]
pub struct JobOutput {
    pub end: JobEnd,
    /// The last `output_tail` bytes of output (lossy UTF-8).
    pub output: String,
    /// Output before `output` was dropped.
    pub truncated: bool,
}

impl JobOutput {
    pub fn success(&self) -> bool {
        matches!(self.end, JobEnd::Exited(s) if s.success())
    }

    /// The last `n` non-empty lines of output.
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let lines: Vec<&str> = self
            .output
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
            .collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|l| l.to_string())
            .collect()
    }
}

/// How often bubblewrap's intermittent outbound-network set-up failure is retried (see
/// docs/sandbox.md, "Known issue").
const NETWORK_ATTEMPTS: usize = 3;
/// How long the output reader may take after the job's processes are gone.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs `job` to completion: in `sandbox` (its namespaces, uid, seccomp, network, and a cgroup
/// of the job's own when the sandbox has a cgroup manager), or, with `None`, directly as this
/// process's user with only the timeout and the clean environment. When the main process ends
/// (or at the timeout) every process it left behind is killed.
pub async fn run_job(sandbox: Option<&Sandbox>, job: &Job) -> Result<JobOutput, SandboxError> {
    let cgroup = match sandbox.and_then(|s| s.cgroups()) {
        Some(m) => {
            let limits = job.spec.cgroup_limits(job.memory_bytes);
            let cg = m
                .create_limited(&job.name, &limits)
                .map_err(|e| job_err("creating the job's cgroup", e))?;
            let guard = CgroupGuard(Some((m.clone(), cg)));
            if let (Some(mc), Some((m, cg))) = (job.cpu_millicores, &guard.0)
                && !m
                    .set_cpu_max(cg, mc)
                    .map_err(|e| job_err("setting the job's CPU cap", e))?
            {
                tracing::debug!("no cpu controller: the job's CPU cap is not enforced");
            }
            guard
        }
        None => CgroupGuard(None),
    };
    let result = run_in(sandbox, job, cgroup.0.as_ref()).await;
    // Leftovers (daemons a build script started) die with the cgroup.
    cgroup.release().await;
    result
}

async fn run_in(
    sandbox: Option<&Sandbox>,
    job: &Job,
    cgroup: Option<&(Arc<dyn CgroupManager>, CgroupHandle)>,
) -> Result<JobOutput, SandboxError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (out_r, out_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SandboxError::Io {
                what: "pipe".into(),
                source: e.into(),
            })?;
        let (mut cmd, wrapped) = match sandbox {
            Some(sb) => {
                let w = sb.wrap(&job.spec, &job.program, &job.args, cgroup.map(|(_, c)| c))?;
                let mut c = Command::new(&w.program);
                c.args(&w.args)
                    .env_clear()
                    .envs(w.env.iter().map(|(k, v)| (k, v)))
                    .current_dir(&w.cwd);
                let setup = w.setup.clone();
                // SAFETY: `apply_in_child` is documented async-signal-safe and allocation-free;
                // its descriptors stay open (in `w.fds`) until after the spawn.
                unsafe {
                    c.pre_exec(move || setup.apply_in_child());
                }
                (c, Some(w))
            }
            None => {
                let mut c = Command::new(&job.program);
                c.args(&job.args)
                    .env_clear()
                    .envs(job.spec.env.iter().map(|(k, v)| (k, v)))
                    .current_dir(job.spec.host_cwd());
                (c, None)
            }
        };
        let out_w2 = out_w.try_clone().map_err(|e| SandboxError::Io {
            what: "dup".into(),
            source: e,
        })?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(out_w2))
            .process_group(0)
            .kill_on_drop(true);
        let spawned = cmd.spawn();
        // The child's copies of the write end (and of the sandbox's descriptors) are its own now.
        drop(cmd);
        let network = wrapped.and_then(|w| {
            drop(w.fds);
            w.network
        });
        let mut child = spawned.map_err(|e| SandboxError::Io {
            what: format!("starting {}", job.program.display()),
            source: e,
        })?;
        let net = match (sandbox, network) {
            (Some(sb), Some(pending)) => match sb.attach_network(pending).await {
                Ok(n) => Some(n),
                Err(e) if attempt < NETWORK_ATTEMPTS => {
                    tracing::warn!(error = %e, "connecting the job's network failed; starting it again");
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    continue;
                }
                Err(e) => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return Err(e);
                }
            },
            _ => None,
        };
        let reader = tokio::spawn(read_tail(out_r, job.output_tail));
        let pgid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .map(Pid::from_raw);
        let waited = tokio::time::timeout(job.timeout, child.wait()).await;
        // Whatever the main process left running goes now: its process group, then (for
        // processes that left the group) the cgroup.
        if let Some(pgid) = pgid {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        if let Some((m, cg)) = cgroup
            && let Err(e) = m.kill_all(cg)
        {
            tracing::warn!(error = %e, "cannot kill the job's processes");
        }
        let status = match waited {
            Ok(s) => Some(s.map_err(|e| SandboxError::Io {
                what: "waiting for the job".into(),
                source: e,
            })?),
            Err(_) => {
                let _ = child.wait().await;
                None
            }
        };
        drop(net);
        let (output, truncated) = match tokio::time::timeout(DRAIN_TIMEOUT, reader).await {
            Ok(Ok(t)) => t,
            _ => (Vec::new(), false),
        };
        let output = String::from_utf8_lossy(&output).into_owned();
        let oom = cgroup.is_some_and(|(m, cg)| m.memory_exceeded(cg).unwrap_or(false));
        let end = match status {
            None => JobEnd::TimedOut,
            Some(_) if oom => JobEnd::MemoryExceeded,
            Some(s) => JobEnd::Exited(s),
        };
        // bubblewrap's intermittent loopback failure: the job never ran (docs/sandbox.md).
        if attempt < NETWORK_ATTEMPTS
            && job.spec.network == crate::sandbox::Network::Outbound
            && output.contains("bwrap: loopback: Failed RTM_NEWADDR")
        {
            tracing::warn!("bubblewrap could not set up the job's loopback; starting it again");
            continue;
        }
        return Ok(JobOutput {
            end,
            output,
            truncated,
        });
    }
}

/// Reads `fd` to its end, keeping the last `keep` bytes.
async fn read_tail(fd: OwnedFd, keep: usize) -> (Vec<u8>, bool) {
    let raw = fd.as_raw_fd();
    let rx = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(fd = raw, error = %e, "cannot read the job's output");
            return (Vec::new(), false);
        }
    };
    let mut rx = rx;
    let mut tail: VecDeque<u8> = VecDeque::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                tail.extend(&buf[..n]);
                if tail.len() > keep {
                    truncated = true;
                    let extra = tail.len() - keep;
                    tail.drain(..extra);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    (tail.into(), truncated)
}

fn job_err(what: &str, e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Io {
        what: what.to_string(),
        source: io::Error::other(e.to_string()),
    }
}

/// The job's cgroup, removed (killing what is left in it) exactly once.
struct CgroupGuard(Option<(Arc<dyn CgroupManager>, CgroupHandle)>);

impl CgroupGuard {
    async fn release(mut self) {
        if let Some((m, cg)) = self.0.take() {
            let job = move || {
                if let Err(e) = m.remove(&cg) {
                    tracing::warn!(cgroup = %cg.path().display(), error = %e, "cannot remove the job's cgroup");
                }
            };
            if let Err(e) = tokio::task::spawn_blocking(job).await {
                tracing::warn!(error = %e, "job cgroup cleanup failed");
            }
        }
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some((m, cg)) = self.0.take() {
            let _ = m.remove(&cg);
        }
    }
}
