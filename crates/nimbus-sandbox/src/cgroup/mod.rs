//! Memory limits for instances with Linux control groups.
//!
//! One cgroup per instance, all under a `nimbus` parent. The parent is nested in the cgroup this
//! process already belongs to (found via `/proc/self/cgroup`), not at the root of the hierarchy:
//! instances stay inside whatever limits the operator put on the server (systemd unit, container),
//! and on cgroup v2 that is the subtree a delegating manager lets us write. Mount points are found
//! by parsing `/proc/self/mountinfo`, never hard-coded.
//!
//! Two implementations sit behind [`CgroupManager`]: [`V1Manager`] (the `memory` controller of a
//! v1 hierarchy; `memory.limit_in_bytes`, `memory.memsw.limit_in_bytes`, the `oom_kill` counter of
//! `memory.oom_control`) and [`V2Manager`] (unified hierarchy; `memory.max`, `memory.swap.max`,
//! the `oom_kill` counter of `memory.events`). [`detect`] picks whichever this machine offers and
//! lets us write, or returns `None` with a warning.

pub mod mountinfo;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Name of the parent cgroup all instance cgroups live under.
pub const PARENT_NAME: &str = "nimbus";

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("cgroup file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid cgroup name '{0}': use letters, digits, '.', '_' and '-'")]
    InvalidName(String),
    #[error("cgroup {0} is still busy after killing its processes")]
    Busy(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// One instance's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupHandle {
    name: String,
    path: PathBuf,
    /// cgroup v1 only: the instance's directories in the other controllers' hierarchies (pids,
    /// cpu, cpuacct, freezer), each mounted separately. A process must be written into every one
    /// of them.
    extra_dirs: Vec<PathBuf>,
    /// cgroup v1 only: which of `extra_dirs` is the cpu, cpuacct and freezer directory.
    v1_cpu: Option<PathBuf>,
    v1_cpuacct: Option<PathBuf>,
    v1_freezer: Option<PathBuf>,
}

impl CgroupHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `cgroup.procs`: writing a pid (as decimal text) moves that process in. A runtime may open
    /// it before `fork` and write the child's own pid between `fork` and `exec`.
    pub fn procs_path(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Every `cgroup.procs` a process must be written to so that all the instance's limits
    /// apply: [`procs_path`](Self::procs_path) first, then (cgroup v1) one per other controller
    /// hierarchy. Open them all before `fork`, write `getpid()` to each in `pre_exec`.
    pub fn procs_paths(&self) -> Vec<PathBuf> {
        std::iter::once(self.path.as_path())
            .chain(self.extra_dirs.iter().map(PathBuf::as_path))
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// The instance's directories in other v1 hierarchies (empty on v2).
    pub fn extra_dirs(&self) -> &[PathBuf] {
        &self.extra_dirs
    }

    fn new(name: &str, path: PathBuf) -> Self {
        CgroupHandle {
            name: name.to_string(),
            path,
            extra_dirs: Vec::new(),
            v1_cpu: None,
            v1_cpuacct: None,
            v1_freezer: None,
        }
    }
}

/// Limits for one instance's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Memory limit, swap included where the kernel accounts it.
    pub memory_bytes: u64,
    /// Maximum number of tasks (processes and threads) in the cgroup: contains fork bombs.
    pub pids_max: Option<u64>,
    /// Give the instance a CPU share proportional to its memory (see [`cpu_shares_v1`] and
    /// [`cpu_weight_v2`]).
    pub cpu_from_memory: bool,
}

impl CgroupLimits {
    /// Memory only (what [`CgroupManager::create`] sets).
    pub fn memory(memory_bytes: u64) -> Self {
        CgroupLimits {
            memory_bytes,
            pids_max: None,
            cpu_from_memory: false,
        }
    }
}

/// Which controllers a manager enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Controllers {
    pub memory: bool,
    pub pids: bool,
    pub cpu: bool,
    /// Instances can be frozen ([`CgroupManager::freeze`]): v1's `freezer` hierarchy, or v2's
    /// `cgroup.freeze` (always there on a non-root v2 cgroup).
    pub freezer: bool,
}

/// Memory that earns the default CPU share (OpenWhisk's 256 MB unit).
pub const CPU_UNIT_MB: u64 = 256;

/// cgroup v1 `cpu.shares` for an instance: 1024 (the kernel's default for one task group) per
/// 256 MB of memory, clamped to the kernel's range [2, 262144].
pub fn cpu_shares_v1(memory_bytes: u64) -> u64 {
    let mb = memory_bytes >> 20;
    (mb.saturating_mul(1024) / CPU_UNIT_MB).clamp(2, 262_144)
}

/// cgroup v2 `cpu.weight`: 100 (the default weight) per 256 MB, clamped to [1, 10000].
pub fn cpu_weight_v2(memory_bytes: u64) -> u64 {
    let mb = memory_bytes >> 20;
    (mb.saturating_mul(100) / CPU_UNIT_MB).clamp(1, 10_000)
}

/// Creates, populates, inspects and removes per-instance cgroups.
pub trait CgroupManager: Send + Sync + fmt::Debug {
    fn version(&self) -> CgroupVersion;

    /// The `nimbus` parent directory.
    fn base(&self) -> &Path;

    /// Creates cgroup `name` (one path component) with a memory limit of `memory_bytes`, swap
    /// included where the kernel accounts it. A stale cgroup of the same name is replaced.
    fn create(&self, name: &str, memory_bytes: u64) -> Result<CgroupHandle, CgroupError>;

    /// Like [`create`](Self::create), also applying the pids and CPU limits of `limits` where
    /// this manager enforces those controllers (see [`controllers`](Self::controllers)); the
    /// others are skipped, not failed.
    fn create_limited(
        &self,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<CgroupHandle, CgroupError> {
        self.create(name, limits.memory_bytes)
    }

    /// The controllers this manager enforces.
    fn controllers(&self) -> Controllers {
        Controllers {
            memory: true,
            pids: false,
            cpu: false,
            freezer: false,
        }
    }

    /// Did the kernel OOM-kill a process of this cgroup because of its memory limit?
    fn memory_exceeded(&self, cg: &CgroupHandle) -> Result<bool, CgroupError>;

    /// Freezes (`true`) or thaws (`false`) every process of the cgroup: frozen processes get no
    /// CPU time until thawed. Returns after asking the kernel; a freeze completes asynchronously
    /// ([`is_frozen`](Self::is_frozen) says when). `Ok(false)` when this manager has no freezer
    /// for the cgroup. A frozen cgroup v1 process does not die of SIGKILL until thawed, so
    /// callers thaw after killing.
    fn freeze(&self, cg: &CgroupHandle, frozen: bool) -> Result<bool, CgroupError> {
        let _ = (cg, frozen);
        Ok(false)
    }

    /// Whether every process of the cgroup is frozen now (`None`: no freezer).
    fn is_frozen(&self, cg: &CgroupHandle) -> Result<Option<bool>, CgroupError> {
        let _ = cg;
        Ok(None)
    }

    /// Total CPU time the cgroup's processes used (v1 `cpuacct.usage`, v2 `cpu.stat`
    /// `usage_usec`), `None` without CPU accounting.
    fn cpu_usage(&self, cg: &CgroupHandle) -> Result<Option<Duration>, CgroupError> {
        let _ = cg;
        Ok(None)
    }

    /// Caps the cgroup at `millicores` thousandths of one CPU (CFS bandwidth: v1
    /// `cpu.cfs_quota_us`, v2 `cpu.max`, over a 100 ms period). `Ok(false)` without the cpu
    /// controller.
    fn set_cpu_max(&self, cg: &CgroupHandle, millicores: u64) -> Result<bool, CgroupError> {
        let _ = (cg, millicores);
        Ok(false)
    }

    /// Moves process `pid` into the cgroup.
    fn add_pid(&self, cg: &CgroupHandle, pid: u32) -> Result<(), CgroupError> {
        for p in cg.procs_paths() {
            fs::write(&p, pid.to_string()).map_err(io_err(&p))?;
        }
        Ok(())
    }

    /// SIGKILLs every process still in the cgroup (including ones that left the process group).
    fn kill_all(&self, cg: &CgroupHandle) -> Result<(), CgroupError> {
        let p = cg.procs_path();
        let text = match fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(CgroupError::Io { path: p, source: e }),
        };
        for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // ESRCH: it is already gone, which is what we want.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        // A frozen v1 process only dies once thawed (the SIGKILL is already pending, so it
        // runs no more of its own code).
        self.freeze(cg, false)?;
        Ok(())
    }

    /// Removes the cgroup, killing leftovers if it stays busy, then removes the `nimbus` parent
    /// if that has become empty (so nothing is left behind in a hierarchy we do not own).
    /// Blocks for up to about a second.
    fn remove(&self, cg: &CgroupHandle) -> Result<(), CgroupError> {
        let mut result = Err(CgroupError::Busy(cg.path.clone()));
        for attempt in 0..60 {
            match fs::remove_dir(&cg.path) {
                Ok(()) => {
                    result = Ok(());
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    result = Ok(());
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc_ebusy()) => {
                    // Processes that just got SIGKILL need a moment to leave; after a few tries
                    // assume something escaped the process group and kill the whole cgroup.
                    if attempt % 10 == 5 {
                        self.kill_all(cg)?;
                    }
                    std::thread::sleep(Duration::from_millis(if attempt < 10 { 5 } else { 20 }));
                }
                Err(e) => {
                    return Err(CgroupError::Io {
                        path: cg.path.clone(),
                        source: e,
                    });
                }
            }
        }
        // The other v1 hierarchies: empty once the processes are gone (a dead process leaves
        // all its cgroups at once), so no retry loop is needed beyond a short one.
        for dir in &cg.extra_dirs {
            for _ in 0..20 {
                match fs::remove_dir(dir) {
                    Err(e) if e.raw_os_error() == Some(libc_ebusy()) => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => break,
                }
            }
            if let Some(parent) = dir.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
        // Fails (EBUSY/ENOTEMPTY) while sibling instances exist: fine.
        let _ = fs::remove_dir(self.base());
        result
    }
}

fn libc_ebusy() -> i32 {
    nix::errno::Errno::EBUSY as i32
}

/// CFS bandwidth period used by [`CgroupManager::set_cpu_max`] (the kernel default, 100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The CFS quota for `millicores` over [`CPU_PERIOD_US`] (at least the kernel's 1 ms minimum).
pub fn cpu_quota_us(millicores: u64) -> u64 {
    (millicores.saturating_mul(CPU_PERIOD_US) / 1000).max(1000)
}

fn check_name(name: &str) -> Result<(), CgroupError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CgroupError::InvalidName(name.to_string()))
    }
}

/// Writes a control file; a missing file is reported as `Ok(false)` for optional knobs.
fn write_optional(path: &Path, value: &str) -> Result<bool, CgroupError> {
    match fs::write(path, value) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(CgroupError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Makes `base/name`, recreating `base` if a concurrent `remove` just deleted it and replacing a
/// stale cgroup of the same name.
fn make_child(
    base: &Path,
    name: &str,
    ensure_base: &dyn Fn() -> Result<(), CgroupError>,
) -> Result<PathBuf, CgroupError> {
    check_name(name)?;
    let dir = base.join(name);
    let mut last = None;
    for _ in 0..5 {
        ensure_base()?;
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => last = Some(e),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                tracing::warn!(path = %dir.display(), "replacing a stale cgroup");
                fs::remove_dir(&dir).map_err(io_err(&dir))?;
            }
            Err(e) => {
                return Err(CgroupError::Io {
                    path: dir,
                    source: e,
                });
            }
        }
    }
    Err(CgroupError::Io {
        path: dir,
        source: last.unwrap_or_else(|| io::Error::other("could not create the cgroup")),
    })
}

/// cgroup v1: the `memory` controller's own hierarchy, plus (optionally) the `pids` and `cpu`
/// hierarchies, which v1 mounts separately (`/sys/fs/cgroup/pids`, `/sys/fs/cgroup/cpu`).
#[derive(Debug, Clone)]
pub struct V1Manager {
    base: PathBuf,
    pids_base: Option<PathBuf>,
    cpu_base: Option<PathBuf>,
    cpuacct_base: Option<PathBuf>,
    freezer_base: Option<PathBuf>,
}

impl V1Manager {
    /// `base` is the `nimbus` parent inside a v1 memory hierarchy, e.g.
    /// `/sys/fs/cgroup/memory/nimbus`. Nothing is touched until [`CgroupManager::create`].
    /// Memory only; see [`V1Manager::with_controllers`].
    pub fn new(base: impl Into<PathBuf>) -> Self {
        V1Manager {
            base: base.into(),
            pids_base: None,
            cpu_base: None,
            cpuacct_base: None,
            freezer_base: None,
        }
    }

    /// Also enforces pids (`pids_base`, e.g. `/sys/fs/cgroup/pids/nimbus`) and CPU shares
    /// (`cpu_base`, e.g. `/sys/fs/cgroup/cpu/nimbus`) in [`CgroupManager::create_limited`].
    pub fn with_controllers(
        base: impl Into<PathBuf>,
        pids_base: Option<PathBuf>,
        cpu_base: Option<PathBuf>,
    ) -> Self {
        V1Manager {
            base: base.into(),
            pids_base,
            cpu_base,
            cpuacct_base: None,
            freezer_base: None,
        }
    }

    /// Also uses the `cpuacct` hierarchy (CPU usage, [`CgroupManager::cpu_usage`]; the same
    /// directory as `cpu` where both are mounted together) and the `freezer` hierarchy
    /// ([`CgroupManager::freeze`]) in [`CgroupManager::create_limited`].
    pub fn with_accounting(
        mut self,
        cpuacct_base: Option<PathBuf>,
        freezer_base: Option<PathBuf>,
    ) -> Self {
        self.cpuacct_base = cpuacct_base;
        self.freezer_base = freezer_base;
        self
    }

    fn ensure_base(&self) -> Result<(), CgroupError> {
        fs::create_dir_all(&self.base).map_err(io_err(&self.base))
    }
}

fn ensure_dir(dir: &Path) -> Result<(), CgroupError> {
    fs::create_dir_all(dir).map_err(io_err(dir))
}

impl CgroupManager for V1Manager {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1
    }

    fn base(&self) -> &Path {
        &self.base
    }

    fn controllers(&self) -> Controllers {
        Controllers {
            memory: true,
            pids: self.pids_base.is_some(),
            cpu: self.cpu_base.is_some(),
            freezer: self.freezer_base.is_some(),
        }
    }

    fn create(&self, name: &str, memory_bytes: u64) -> Result<CgroupHandle, CgroupError> {
        let path = make_child(&self.base, name, &|| self.ensure_base())?;
        let cg = CgroupHandle::new(name, path);
        let setup = || -> Result<(), CgroupError> {
            let limit = cg.path.join("memory.limit_in_bytes");
            fs::write(&limit, memory_bytes.to_string()).map_err(io_err(&limit))?;
            // memsw must be >= the memory limit, so it is written second. Without it the kernel
            // would swap instead of killing, hiding the overrun (and making the function crawl).
            if !write_optional(
                &cg.path.join("memory.memsw.limit_in_bytes"),
                &memory_bytes.to_string(),
            )? {
                tracing::debug!("memory.memsw.limit_in_bytes absent (swap accounting off)");
            }
            Ok(())
        };
        if let Err(e) = setup() {
            let _ = fs::remove_dir(&cg.path);
            return Err(e);
        }
        Ok(cg)
    }

    fn create_limited(
        &self,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<CgroupHandle, CgroupError> {
        let mut cg = self.create(name, limits.memory_bytes)?;
        let mut extra: Vec<PathBuf> = Vec::new();
        type Dirs = (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>);
        let result = (|| -> Result<Dirs, CgroupError> {
            let mut join = |base: &Path| -> Result<PathBuf, CgroupError> {
                if let Some(d) = extra.iter().find(|d| d.parent() == Some(base)) {
                    // cpu and cpuacct mounted together: one directory.
                    return Ok(d.clone());
                }
                let dir = make_child(base, name, &|| ensure_dir(base))?;
                extra.push(dir.clone());
                Ok(dir)
            };
            if let (Some(base), Some(max)) = (&self.pids_base, limits.pids_max) {
                let p = join(base)?.join("pids.max");
                fs::write(&p, max.to_string()).map_err(io_err(&p))?;
            }
            let mut cpu = None;
            if let Some(base) = &self.cpu_base {
                let dir = join(base)?;
                if limits.cpu_from_memory {
                    let p = dir.join("cpu.shares");
                    fs::write(&p, cpu_shares_v1(limits.memory_bytes).to_string())
                        .map_err(io_err(&p))?;
                }
                cpu = Some(dir);
            }
            let cpuacct = self.cpuacct_base.as_deref().map(&mut join).transpose()?;
            let freezer = self.freezer_base.as_deref().map(&mut join).transpose()?;
            Ok((cpu, cpuacct, freezer))
        })();
        cg.extra_dirs = extra;
        match result {
            Ok((cpu, cpuacct, freezer)) => {
                cg.v1_cpu = cpu;
                cg.v1_cpuacct = cpuacct;
                cg.v1_freezer = freezer;
                Ok(cg)
            }
            Err(e) => {
                for d in &cg.extra_dirs {
                    let _ = fs::remove_dir(d);
                }
                let _ = fs::remove_dir(&cg.path);
                Err(e)
            }
        }
    }

    fn memory_exceeded(&self, cg: &CgroupHandle) -> Result<bool, CgroupError> {
        let p = cg.path.join("memory.oom_control");
        let text = fs::read_to_string(&p).map_err(io_err(&p))?;
        if let Some(kills) = mountinfo::keyed_value(&text, "oom_kill") {
            return Ok(kills > 0);
        }
        // Kernels before 4.13 have no counter: a death after hitting the limit is the best hint.
        let p = cg.path.join("memory.failcnt");
        let text = fs::read_to_string(&p).map_err(io_err(&p))?;
        Ok(text.trim().parse::<u64>().unwrap_or(0) > 0)
    }

    fn freeze(&self, cg: &CgroupHandle, frozen: bool) -> Result<bool, CgroupError> {
        let Some(dir) = &cg.v1_freezer else {
            return Ok(false);
        };
        let p = dir.join("freezer.state");
        fs::write(&p, if frozen { "FROZEN" } else { "THAWED" }).map_err(io_err(&p))?;
        Ok(true)
    }

    fn is_frozen(&self, cg: &CgroupHandle) -> Result<Option<bool>, CgroupError> {
        let Some(dir) = &cg.v1_freezer else {
            return Ok(None);
        };
        let p = dir.join("freezer.state");
        let text = fs::read_to_string(&p).map_err(io_err(&p))?;
        Ok(Some(text.trim() == "FROZEN"))
    }

    fn cpu_usage(&self, cg: &CgroupHandle) -> Result<Option<Duration>, CgroupError> {
        let Some(dir) = &cg.v1_cpuacct else {
            return Ok(None);
        };
        let p = dir.join("cpuacct.usage");
        let text = fs::read_to_string(&p).map_err(io_err(&p))?;
        Ok(text.trim().parse::<u64>().ok().map(Duration::from_nanos))
    }

    fn set_cpu_max(&self, cg: &CgroupHandle, millicores: u64) -> Result<bool, CgroupError> {
        let Some(dir) = &cg.v1_cpu else {
            return Ok(false);
        };
        let period = dir.join("cpu.cfs_period_us");
        fs::write(&period, CPU_PERIOD_US.to_string()).map_err(io_err(&period))?;
        write_optional(
            &dir.join("cpu.cfs_quota_us"),
            &cpu_quota_us(millicores).to_string(),
        )
    }
}

/// cgroup v2: the unified hierarchy.
#[derive(Debug, Clone)]
pub struct V2Manager {
    base: PathBuf,
    /// pids and cpu are enabled for children when the parent offers them.
    optional: Controllers,
}

impl V2Manager {
    /// `base` is the `nimbus` parent in the unified hierarchy. Its parent must have the memory
    /// controller available (listed in its `cgroup.controllers`); `pids` and `cpu` are used
    /// when available too.
    pub fn new(base: impl Into<PathBuf>) -> Self {
        V2Manager {
            base: base.into(),
            optional: Controllers {
                memory: true,
                pids: true,
                cpu: true,
                freezer: true,
            },
        }
    }

    /// Creates the parent and enables the memory controller (and pids and cpu where offered)
    /// for its children. Enabling memory in the parent's parent fails with EBUSY when that
    /// cgroup holds processes itself (v2's no-internal-processes rule), which is reported as an
    /// error; pids and cpu failing only means those limits are not enforced.
    fn ensure_base(&self) -> Result<(), CgroupError> {
        if let Some(parent) = self.base.parent() {
            enable_controllers(parent, self.optional)?;
        }
        fs::create_dir_all(&self.base).map_err(io_err(&self.base))?;
        enable_controllers(&self.base, self.optional)
    }

    /// Which controllers the parent's children actually get (after [`Self::ensure_base`]).
    fn enabled(&self) -> Controllers {
        let text = fs::read_to_string(self.base.join("cgroup.subtree_control")).unwrap_or_default();
        let has = |c: &str| text.split_whitespace().any(|x| x == c);
        Controllers {
            memory: has("memory"),
            pids: has("pids"),
            cpu: has("cpu"),
            freezer: true,
        }
    }
}

fn enable_controllers(dir: &Path, wanted: Controllers) -> Result<(), CgroupError> {
    let p = dir.join("cgroup.subtree_control");
    let current = fs::read_to_string(&p).map_err(io_err(&p))?;
    let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let on = |c: &str| current.split_whitespace().any(|x| x == c);
    let offered = |c: &str| available.split_whitespace().any(|x| x == c);
    if !on("memory") {
        fs::write(&p, "+memory").map_err(io_err(&p))?;
    }
    for (want, c) in [(wanted.pids, "pids"), (wanted.cpu, "cpu")] {
        if want
            && !on(c)
            && offered(c)
            && let Err(e) = fs::write(&p, format!("+{c}"))
        {
            tracing::debug!(controller = c, dir = %dir.display(), error = %e, "cannot enable cgroup controller");
        }
    }
    Ok(())
}

impl CgroupManager for V2Manager {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }

    fn base(&self) -> &Path {
        &self.base
    }

    fn controllers(&self) -> Controllers {
        let e = self.enabled();
        Controllers {
            memory: true,
            pids: e.pids,
            cpu: e.cpu,
            freezer: true,
        }
    }

    fn create(&self, name: &str, memory_bytes: u64) -> Result<CgroupHandle, CgroupError> {
        self.create_limited(name, &CgroupLimits::memory(memory_bytes))
    }

    fn create_limited(
        &self,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<CgroupHandle, CgroupError> {
        let memory_bytes = limits.memory_bytes;
        let path = make_child(&self.base, name, &|| self.ensure_base())?;
        let cg = CgroupHandle::new(name, path);
        let setup = || -> Result<(), CgroupError> {
            if let Some(max) = limits.pids_max
                && !write_optional(&cg.path.join("pids.max"), &max.to_string())?
            {
                tracing::debug!("pids.max absent: the pids controller is not enabled");
            }
            if limits.cpu_from_memory
                && !write_optional(
                    &cg.path.join("cpu.weight"),
                    &cpu_weight_v2(memory_bytes).to_string(),
                )?
            {
                tracing::debug!("cpu.weight absent: the cpu controller is not enabled");
            }
            let max = cg.path.join("memory.max");
            fs::write(&max, memory_bytes.to_string()).map_err(io_err(&max))?;
            // No swap: an overrun must end in an OOM kill we can report, not in swapping.
            write_optional(&cg.path.join("memory.swap.max"), "0")?;
            // Kill the whole instance on OOM rather than one arbitrary process of it.
            write_optional(&cg.path.join("memory.oom.group"), "1")?;
            Ok(())
        };
        if let Err(e) = setup() {
            let _ = fs::remove_dir(&cg.path);
            return Err(e);
        }
        Ok(cg)
    }

    fn memory_exceeded(&self, cg: &CgroupHandle) -> Result<bool, CgroupError> {
        let p = cg.path.join("memory.events");
        let text = fs::read_to_string(&p).map_err(io_err(&p))?;
        Ok(mountinfo::keyed_value(&text, "oom_kill").unwrap_or(0) > 0
            || mountinfo::keyed_value(&text, "oom_group_kill").unwrap_or(0) > 0)
    }

    fn freeze(&self, cg: &CgroupHandle, frozen: bool) -> Result<bool, CgroupError> {
        v2_freeze(&cg.path, frozen)
    }

    fn is_frozen(&self, cg: &CgroupHandle) -> Result<Option<bool>, CgroupError> {
        v2_is_frozen(&cg.path)
    }

    fn cpu_usage(&self, cg: &CgroupHandle) -> Result<Option<Duration>, CgroupError> {
        v2_cpu_usage(&cg.path)
    }

    fn set_cpu_max(&self, cg: &CgroupHandle, millicores: u64) -> Result<bool, CgroupError> {
        write_optional(
            &cg.path.join("cpu.max"),
            &format!("{} {CPU_PERIOD_US}", cpu_quota_us(millicores)),
        )
    }

    fn kill_all(&self, cg: &CgroupHandle) -> Result<(), CgroupError> {
        // cgroup.kill (5.14+) kills atomically, racing no fork.
        if write_optional(&cg.path.join("cgroup.kill"), "1")? {
            return Ok(());
        }
        let p = cg.procs_path();
        let text = fs::read_to_string(&p).map_err(io_err(&p))?;
        for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        Ok(())
    }
}

/// cgroup v2 `cgroup.freeze` of the cgroup at `dir` (`Ok(false)`: the file is absent, i.e. a
/// kernel before 5.2 or the root cgroup).
pub fn v2_freeze(dir: &Path, frozen: bool) -> Result<bool, CgroupError> {
    write_optional(&dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })
}

/// cgroup v2: `frozen` of `cgroup.events` (every process of the cgroup is frozen).
pub fn v2_is_frozen(dir: &Path) -> Result<Option<bool>, CgroupError> {
    let p = dir.join("cgroup.events");
    match fs::read_to_string(&p) {
        Ok(text) => Ok(mountinfo::keyed_value(&text, "frozen").map(|v| v == 1)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CgroupError::Io { path: p, source: e }),
    }
}

/// cgroup v2: `usage_usec` of `cpu.stat` (present on every non-root cgroup, cpu controller or
/// not).
pub fn v2_cpu_usage(dir: &Path) -> Result<Option<Duration>, CgroupError> {
    let p = dir.join("cpu.stat");
    match fs::read_to_string(&p) {
        Ok(text) => Ok(mountinfo::keyed_value(&text, "usage_usec").map(Duration::from_micros)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CgroupError::Io { path: p, source: e }),
    }
}

/// Where a manager could live, from the mount table and this process's cgroups (pure, testable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub version: CgroupVersion,
    /// The cgroup this process is in (the parent of the `nimbus` directory).
    pub own_dir: PathBuf,
}

impl Candidate {
    pub fn base(&self) -> PathBuf {
        self.own_dir.join(PARENT_NAME)
    }
}

/// Candidates in order of preference: v2 first, then v1's memory hierarchy.
pub fn candidates(mountinfo_text: &str, proc_cgroup_text: &str) -> Vec<Candidate> {
    let mounts = mountinfo::parse_mountinfo(mountinfo_text);
    let own = mountinfo::parse_proc_cgroup(proc_cgroup_text);
    let mut out = Vec::new();
    if let Some(path) = mountinfo::v2_cgroup_path(&own)
        && let Some(m) = mountinfo::v2_mount(&mounts, path)
    {
        out.push(Candidate {
            version: CgroupVersion::V2,
            own_dir: mountinfo::cgroup_dir(m, path),
        });
    }
    if let Some(path) = mountinfo::v1_cgroup_path(&own, "memory")
        && let Some(m) = mountinfo::v1_mount(&mounts, "memory", path)
    {
        out.push(Candidate {
            version: CgroupVersion::V1,
            own_dir: mountinfo::cgroup_dir(m, path),
        });
    }
    out
}

/// cgroup v1: this process's directories in the separately mounted `pids` and `cpu`
/// hierarchies (pure, testable). `None` for a controller that is not mounted as v1.
pub fn v1_other_dirs(
    mountinfo_text: &str,
    proc_cgroup_text: &str,
) -> (Option<PathBuf>, Option<PathBuf>) {
    let mounts = mountinfo::parse_mountinfo(mountinfo_text);
    let own = mountinfo::parse_proc_cgroup(proc_cgroup_text);
    let dir = |controller: &str| {
        let path = mountinfo::v1_cgroup_path(&own, controller)?;
        let m = mountinfo::v1_mount(&mounts, controller, path)?;
        Some(mountinfo::cgroup_dir(m, path))
    };
    (dir("pids"), dir("cpu"))
}

/// cgroup v1: this process's directory in the hierarchy of `controller` (pure, testable), e.g.
/// `cpuacct` or `freezer`. `None` when that controller is not mounted as v1.
pub fn v1_dir(mountinfo_text: &str, proc_cgroup_text: &str, controller: &str) -> Option<PathBuf> {
    let mounts = mountinfo::parse_mountinfo(mountinfo_text);
    let own = mountinfo::parse_proc_cgroup(proc_cgroup_text);
    let path = mountinfo::v1_cgroup_path(&own, controller)?;
    let m = mountinfo::v1_mount(&mounts, controller, path)?;
    Some(mountinfo::cgroup_dir(m, path))
}

/// Finds a usable memory cgroup manager, or `None` (with a warning) when there is none or we
/// may not write it (not root, read-only mount, no delegation). Never fails harder than that.
pub fn detect() -> Option<Arc<dyn CgroupManager>> {
    let mi = match fs::read_to_string("/proc/self/mountinfo") {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read /proc/self/mountinfo; memory limits are not enforced");
            return None;
        }
    };
    let pc = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let others = v1_other_dirs(&mi, &pc);
    let accounting = (v1_dir(&mi, &pc, "cpuacct"), v1_dir(&mi, &pc, "freezer"));
    for c in candidates(&mi, &pc) {
        match probe(&c, &others, &accounting) {
            Ok(m) => {
                tracing::info!(version = ?c.version, base = %c.base().display(), "cgroup memory limits enabled");
                return Some(m);
            }
            Err(reason) => {
                tracing::debug!(version = ?c.version, dir = %c.own_dir.display(), %reason, "cgroup candidate unusable")
            }
        }
    }
    tracing::warn!("no writable cgroup memory controller found; memory limits are not enforced");
    None
}

/// Checks that a candidate offers the memory controller and is writable, leaving nothing behind.
fn probe(
    c: &Candidate,
    v1_others: &(Option<PathBuf>, Option<PathBuf>),
    v1_accounting: &(Option<PathBuf>, Option<PathBuf>),
) -> Result<Arc<dyn CgroupManager>, String> {
    let base = c.base();
    let existed = base.exists();
    let manager: Arc<dyn CgroupManager> = match c.version {
        CgroupVersion::V2 => {
            let controllers = fs::read_to_string(c.own_dir.join("cgroup.controllers"))
                .map_err(|e| e.to_string())?;
            if !controllers.split_whitespace().any(|x| x == "memory") {
                return Err("the memory controller is not available here".into());
            }
            let m = V2Manager::new(&base);
            m.ensure_base().map_err(|e| e.to_string())?;
            Arc::new(m)
        }
        CgroupVersion::V1 => {
            let m = V1Manager::new(&base);
            m.ensure_base().map_err(|e| e.to_string())?;
            if !base.join("memory.limit_in_bytes").exists() {
                let _ = fs::remove_dir(&base);
                return Err("not a memory cgroup hierarchy".into());
            }
            let pids = v1_others
                .0
                .as_ref()
                .and_then(|d| probe_v1_controller(d, "pids.max"));
            let cpu = v1_others
                .1
                .as_ref()
                .and_then(|d| probe_v1_controller(d, "cpu.shares"));
            if pids.is_none() {
                tracing::warn!(
                    "no writable cgroup v1 pids hierarchy: process-count limits are not enforced"
                );
            }
            if cpu.is_none() {
                tracing::warn!("no writable cgroup v1 cpu hierarchy: CPU shares are not enforced");
            }
            let cpuacct = v1_accounting
                .0
                .as_ref()
                .and_then(|d| probe_v1_controller(d, "cpuacct.usage"));
            let freezer = v1_accounting
                .1
                .as_ref()
                .and_then(|d| probe_v1_controller(d, "freezer.state"));
            if freezer.is_none() {
                tracing::warn!(
                    "no writable cgroup v1 freezer hierarchy: idle instances are NOT frozen"
                );
            }
            Arc::new(
                V1Manager::with_controllers(&base, pids, cpu).with_accounting(cpuacct, freezer),
            )
        }
    };
    if !existed {
        let _ = fs::remove_dir(&base);
    }
    Ok(manager)
}

/// The `nimbus` parent under `own_dir` in a v1 hierarchy if we may create it and it has
/// `control_file` (i.e. it really is that controller); leaves nothing behind.
fn probe_v1_controller(own_dir: &Path, control_file: &str) -> Option<PathBuf> {
    let base = own_dir.join(PARENT_NAME);
    let existed = base.exists();
    if let Err(e) = fs::create_dir_all(&base) {
        tracing::debug!(dir = %base.display(), error = %e, "cgroup v1 controller not writable");
        return None;
    }
    let ok = base.join(control_file).exists();
    if !existed || !ok {
        let _ = fs::remove_dir(&base);
    }
    ok.then_some(base)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn candidates_prefer_v2_then_v1_and_nest_under_own_cgroup() {
        let mi = "\
32 31 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let pc = "4:memory:/svc/a\n0::/svc/b\n";
        let c = candidates(mi, pc);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].version, CgroupVersion::V2);
        assert_eq!(
            c[0].base(),
            PathBuf::from("/sys/fs/cgroup/unified/svc/b/nimbus")
        );
        assert_eq!(c[1].version, CgroupVersion::V1);
        assert_eq!(
            c[1].base(),
            PathBuf::from("/sys/fs/cgroup/memory/svc/a/nimbus")
        );
        assert!(candidates("", "").is_empty());
    }

    #[test]
    fn names_must_be_single_components() {
        assert!(check_name("abc-1.2_x").is_ok());
        for bad in ["", ".", "..", "a/b", "../x", "a b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    /// Exercises a fake v1 tree in a temp dir: files are plain files there, so this checks the
    /// writes and reads, not the kernel.
    #[test]
    fn v1_manager_writes_limits_and_reads_oom_counter() {
        let tmp = tempfile::tempdir().unwrap();
        let m = V1Manager::new(tmp.path().join("nimbus"));
        let cg = m.create("inst-1", 128 << 20).unwrap();
        assert_eq!(
            fs::read_to_string(cg.path().join("memory.limit_in_bytes")).unwrap(),
            "134217728"
        );
        // Plain directories: the optional memsw file is created as a regular file here.
        fs::write(
            cg.path().join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        )
        .unwrap();
        assert!(!m.memory_exceeded(&cg).unwrap());
        fs::write(
            cg.path().join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        )
        .unwrap();
        assert!(m.memory_exceeded(&cg).unwrap());
        assert!(m.create("../evil", 1).is_err());
    }

    #[test]
    fn cpu_share_is_proportional_to_memory() {
        assert_eq!(cpu_shares_v1(256 << 20), 1024);
        assert_eq!(cpu_shares_v1(128 << 20), 512);
        assert_eq!(cpu_shares_v1(2048 << 20), 8192);
        assert_eq!(cpu_shares_v1(0), 2);
        assert_eq!(cpu_weight_v2(256 << 20), 100);
        assert_eq!(cpu_weight_v2(512 << 20), 200);
        assert_eq!(cpu_weight_v2(1 << 20), 1);
        assert_eq!(cpu_weight_v2(u64::MAX), 10_000);
    }

    #[test]
    fn v1_other_controllers_are_found_per_hierarchy() {
        let mi = "\
32 31 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 31 0:30 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
34 31 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
";
        let pc = "4:memory:/a\n3:pids:/b\n2:cpu,cpuacct:/\n";
        let (pids, cpu) = v1_other_dirs(mi, pc);
        assert_eq!(pids, Some(PathBuf::from("/sys/fs/cgroup/pids/b")));
        assert_eq!(cpu, Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")));
        assert_eq!(v1_other_dirs("", pc), (None, None));
    }

    /// Fake v1 trees: memory, pids and cpu each in their own directory; a process must be
    /// written to all three `cgroup.procs`.
    #[test]
    fn v1_manager_sets_pids_and_cpu_in_their_own_hierarchies() {
        let tmp = tempfile::tempdir().unwrap();
        let m = V1Manager::with_controllers(
            tmp.path().join("memory/nimbus"),
            Some(tmp.path().join("pids/nimbus")),
            Some(tmp.path().join("cpu/nimbus")),
        );
        assert_eq!(
            m.controllers(),
            Controllers {
                memory: true,
                pids: true,
                cpu: true,
                freezer: false,
            }
        );
        let limits = CgroupLimits {
            memory_bytes: 512 << 20,
            pids_max: Some(64),
            cpu_from_memory: true,
        };
        let cg = m.create_limited("i1", &limits).unwrap();
        let read = |p: &str| fs::read_to_string(tmp.path().join(p)).unwrap();
        assert_eq!(read("memory/nimbus/i1/memory.limit_in_bytes"), "536870912");
        assert_eq!(read("pids/nimbus/i1/pids.max"), "64");
        assert_eq!(read("cpu/nimbus/i1/cpu.shares"), "2048");
        assert_eq!(
            cg.procs_paths(),
            vec![
                tmp.path().join("memory/nimbus/i1/cgroup.procs"),
                tmp.path().join("pids/nimbus/i1/cgroup.procs"),
                tmp.path().join("cpu/nimbus/i1/cgroup.procs"),
            ]
        );
        // Memory only: the plain `create` and a manager without the other hierarchies.
        let plain = V1Manager::new(tmp.path().join("m2/nimbus"));
        let cg2 = plain.create_limited("i2", &limits).unwrap();
        assert_eq!(cg2.procs_paths().len(), 1);
        assert!(!plain.controllers().pids);
    }

    #[test]
    fn v2_manager_writes_pids_and_weight() {
        let tmp = tempfile::tempdir().unwrap();
        // A fake parent offering the controllers.
        fs::write(tmp.path().join("cgroup.subtree_control"), "").unwrap();
        fs::write(tmp.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        fs::create_dir(tmp.path().join("nimbus")).unwrap();
        fs::write(tmp.path().join("nimbus/cgroup.subtree_control"), "").unwrap();
        fs::write(
            tmp.path().join("nimbus/cgroup.controllers"),
            "cpu memory pids",
        )
        .unwrap();
        let m = V2Manager::new(tmp.path().join("nimbus"));
        let limits = CgroupLimits {
            memory_bytes: 128 << 20,
            pids_max: Some(32),
            cpu_from_memory: true,
        };
        let cg = m.create_limited("i1", &limits).unwrap();
        let read = |p: &str| fs::read_to_string(cg.path().join(p)).unwrap();
        assert_eq!(read("memory.max"), "134217728");
        assert_eq!(read("pids.max"), "32");
        assert_eq!(read("cpu.weight"), "50");
        assert_eq!(cg.procs_paths(), vec![cg.procs_path()]);
    }

    /// Fake v1 trees: cpuacct and freezer join the instance, share a directory with cpu when
    /// mounted together, and carry the freezer state, CPU usage and CFS quota.
    #[test]
    fn v1_manager_freezes_accounts_and_caps_cpu() {
        let tmp = tempfile::tempdir().unwrap();
        let m = V1Manager::with_controllers(
            tmp.path().join("memory/nimbus"),
            None,
            Some(tmp.path().join("cpu,cpuacct/nimbus")),
        )
        .with_accounting(
            Some(tmp.path().join("cpu,cpuacct/nimbus")),
            Some(tmp.path().join("freezer/nimbus")),
        );
        assert!(m.controllers().freezer);
        let limits = CgroupLimits {
            memory_bytes: 256 << 20,
            pids_max: Some(64),
            cpu_from_memory: true,
        };
        let cg = m.create_limited("i1", &limits).unwrap();
        assert_eq!(
            cg.procs_paths(),
            vec![
                tmp.path().join("memory/nimbus/i1/cgroup.procs"),
                tmp.path().join("cpu,cpuacct/nimbus/i1/cgroup.procs"),
                tmp.path().join("freezer/nimbus/i1/cgroup.procs"),
            ]
        );
        let read = |p: &str| fs::read_to_string(tmp.path().join(p)).unwrap();
        assert!(m.freeze(&cg, true).unwrap());
        assert_eq!(read("freezer/nimbus/i1/freezer.state"), "FROZEN");
        assert_eq!(m.is_frozen(&cg).unwrap(), Some(true));
        // Killing thaws: a frozen v1 process would not die.
        fs::write(cg.procs_path(), "").unwrap();
        m.kill_all(&cg).unwrap();
        assert_eq!(read("freezer/nimbus/i1/freezer.state"), "THAWED");
        fs::write(
            tmp.path().join("cpu,cpuacct/nimbus/i1/cpuacct.usage"),
            "1500000\n",
        )
        .unwrap();
        assert_eq!(m.cpu_usage(&cg).unwrap(), Some(Duration::from_micros(1500)));
        assert!(m.set_cpu_max(&cg, 500).unwrap());
        assert_eq!(read("cpu,cpuacct/nimbus/i1/cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu,cpuacct/nimbus/i1/cpu.cfs_period_us"), "100000");
        // Without the hierarchies: nothing to freeze, no usage, no cap.
        let plain = V1Manager::new(tmp.path().join("m2/nimbus"));
        let cg2 = plain.create_limited("i2", &limits).unwrap();
        assert!(!plain.freeze(&cg2, true).unwrap());
        assert_eq!(plain.cpu_usage(&cg2).unwrap(), None);
        assert!(!plain.set_cpu_max(&cg2, 500).unwrap());
    }

    #[test]
    fn v2_freezes_and_accounts_through_core_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("cgroup.freeze"), "0").unwrap();
        assert!(v2_freeze(dir, true).unwrap());
        assert_eq!(fs::read_to_string(dir.join("cgroup.freeze")).unwrap(), "1");
        fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        assert_eq!(v2_is_frozen(dir).unwrap(), Some(true));
        fs::write(
            dir.join("cpu.stat"),
            "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
        )
        .unwrap();
        assert_eq!(
            v2_cpu_usage(dir).unwrap(),
            Some(Duration::from_micros(2500))
        );
        assert_eq!(cpu_quota_us(250), 25_000);
        assert_eq!(cpu_quota_us(1), 1000);
        let missing = dir.join("gone");
        assert_eq!(v2_is_frozen(&missing).unwrap(), None);
        assert_eq!(v2_cpu_usage(&missing).unwrap(), None);
    }
}
