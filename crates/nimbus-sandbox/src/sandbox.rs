//! The sandbox: from a [`SandboxSpec`] to the command line, descriptors and child-side setup
//! that start a program isolated, built on bubblewrap (`bwrap`).
//!
//! [`Sandbox::detect`] finds out once per server what this machine allows (bwrap works? are we
//! root? setpriv, slirp4netns, cgroup controllers, the seccomp policy) and keeps that as
//! [`Layers`]; [`Sandbox::warnings`] lists, in words, every layer that is *not* enforced.
//! [`Sandbox::wrap`] is then pure logic plus the creation of a few memfds/pipes: it never
//! fails because a layer is missing, it leaves that layer out (and the warnings say so).
//!
//! Inside the sandbox: the code directory is at [`CODE_DIR`], the launcher directory at
//! [`LAUNCHER_DIR`], `/tmp` is a private tmpfs, and `extra_ro` paths (interpreters) keep their
//! host path. Program and argument paths under those host directories are translated.

use crate::cgroup::{CgroupHandle, CgroupLimits, CgroupManager};
use crate::host::{Entry, HostOps};
use crate::seccomp::{self, CompiledPolicy};
use nimbus_egress::{EgressConfig, EgressPolicy};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Where the function's code directory appears inside the sandbox.
pub const CODE_DIR: &str = "/code";
/// Where the launcher directory appears inside the sandbox.
pub const LAUNCHER_DIR: &str = "/nimbus";
/// The host's runtime directories bound read-only (or re-created as the same symlinks).
pub const SYSTEM_DIRS: [&str; 7] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32",
];
/// Host files and directories under `/etc` bound read-only when they exist: TLS roots, name
/// service basics, the dynamic linker cache, time zone, Debian alternatives (targets of
/// `/usr/bin` symlinks).
pub const ETC_ENTRIES: [&str; 11] = [
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/alternatives",
];
/// The function's `PATH` unless its environment sets one.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Descriptors handed to the child are moved to this number or above, clear of 0–3 (fd 3 is
/// the runtime's result pipe).
pub const FIRST_CHILD_FD: RawFd = 10;
/// slirp4netns's fixed addresses: the DNS forwarder it offers to the sandbox.
pub const SLIRP_DNS: &str = "10.0.2.3";

const MAX_CHILD_FDS: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// Own network namespace with only its own loopback (default).
    #[default]
    None,
    /// Own network namespace plus outbound connections through slirp4netns; the host's
    /// loopback stays unreachable.
    Outbound,
}

/// What one instance needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    /// Host directory with the function's code; read-only at [`CODE_DIR`] (unless
    /// `code_writable`).
    pub code_dir: PathBuf,
    /// Bind `code_dir` read-write (a build's output directory, the only writable bind).
    pub code_writable: bool,
    /// Host directory with the launchers; read-only at [`LAUNCHER_DIR`].
    pub launcher_dir: Option<PathBuf>,
    /// More host paths bound read-only at the same path (interpreter installations outside
    /// `/usr`, e.g. `/root/.pyenv/versions/3.11.7`). They must exist.
    pub extra_ro: Vec<PathBuf>,
    /// Host directories bound read-only at another path inside (host, inside), e.g. an
    /// OpenFaaS function's secrets at `/var/openfaas/secrets`. They must exist.
    pub ro_binds: Vec<(PathBuf, PathBuf)>,
    /// Size of the private `/tmp`, MB.
    pub tmp_mb: u64,
    pub network: Network,
    /// Unprivileged uid and gid the program runs as.
    pub uid: u32,
    pub gid: u32,
    /// `RLIMIT_NOFILE` (soft and hard).
    pub nofile: u64,
    /// cgroup `pids.max` (see [`SandboxSpec::cgroup_limits`]).
    pub pids_max: u64,
    /// The complete environment of the program (`PATH` and `HOME=/tmp` are added if absent).
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    pub cwd_inside: PathBuf,
}

impl SandboxSpec {
    /// Defaults for `code_dir`: no launcher, 64 MB `/tmp`, no network, uid/gid 65534, 1024
    /// open files, 64 tasks, cwd [`CODE_DIR`].
    pub fn new(code_dir: impl Into<PathBuf>) -> Self {
        SandboxSpec {
            code_dir: code_dir.into(),
            code_writable: false,
            launcher_dir: None,
            extra_ro: Vec::new(),
            ro_binds: Vec::new(),
            tmp_mb: 64,
            network: Network::None,
            uid: 65534,
            gid: 65534,
            nofile: 1024,
            pids_max: 64,
            env: Vec::new(),
            cwd_inside: PathBuf::from(CODE_DIR),
        }
    }

    /// `cwd_inside` as a host path, for running without bubblewrap: under [`CODE_DIR`] it is
    /// the same place under `code_dir`, anything else is `code_dir` itself.
    pub fn host_cwd(&self) -> PathBuf {
        match self.cwd_inside.strip_prefix(CODE_DIR) {
            Ok(rest) if rest.as_os_str().is_empty() => self.code_dir.clone(),
            Ok(rest) => self.code_dir.join(rest),
            Err(_) => self.code_dir.clone(),
        }
    }

    /// The cgroup limits for an instance with `memory_bytes` of memory: memory, this spec's
    /// pids limit, and a CPU share proportional to memory.
    pub fn cgroup_limits(&self, memory_bytes: u64) -> CgroupLimits {
        CgroupLimits {
            memory_bytes,
            pids_max: Some(self.pids_max),
            cpu_from_memory: true,
        }
    }
}

#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("{0} does not exist (sandbox bind source)")]
    MissingPath(PathBuf),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("sandbox network: {0}")]
    Network(String),
    #[error("too many descriptors for the sandboxed child")]
    TooManyFds,
}

fn io_err(what: &str) -> impl FnOnce(io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Io {
        what: what.to_string(),
        source,
    }
}

fn nix_err(what: &str) -> impl FnOnce(nix::Error) -> SandboxError + '_ {
    move |e| SandboxError::Io {
        what: what.to_string(),
        source: io::Error::from(e),
    }
}

/// Which layers are enforced on this machine.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Layers {
    /// bubblewrap, if it works here.
    pub bwrap: Option<PathBuf>,
    /// New mount, PID, IPC, UTS, network and cgroup namespaces.
    pub namespaces: bool,
    /// Read-only root assembled from binds, private `/tmp`, minimal `/dev` and `/proc`.
    pub filesystem: bool,
    /// The program runs as the spec's uid/gid.
    pub uid_switch: bool,
    /// No capabilities at all (bounding set included).
    pub no_capabilities: bool,
    pub no_new_privs: bool,
    pub seccomp: bool,
    /// RLIMIT_NOFILE and RLIMIT_CORE (always: `setrlimit` needs no privilege to lower).
    pub rlimits: bool,
    /// Own network namespace (host loopback unreachable).
    pub network_isolated: bool,
    /// `Network::Outbound` can be provided (slirp4netns).
    pub outbound: bool,
    pub cgroup_memory: bool,
    pub cgroup_pids: bool,
    pub cgroup_cpu: bool,
    /// Idle instances can be frozen.
    pub cgroup_freezer: bool,
}

/// How the uid switch is done, when it is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UidMode {
    /// Root: bwrap keeps only SETUID/SETGID/SETPCAP, then `setpriv` switches to the uid,
    /// clears groups and empties every capability set before exec.
    Setpriv(PathBuf),
    /// Not root: bwrap's user namespace; the host uid stays the server's own (unprivileged).
    UserNs,
    /// Root without setpriv: runs as root inside, capabilities dropped by bwrap.
    None,
}

/// Created once per server.
#[derive(Debug)]
pub struct Sandbox {
    ops: Arc<dyn HostOps>,
    layers: Layers,
    warnings: Vec<String>,
    uid_mode: UidMode,
    policy: Option<Arc<CompiledPolicy>>,
    slirp: Option<PathBuf>,
    /// `nft`, which loads the egress rules into each outbound sandbox's namespace.
    nft: Option<PathBuf>,
    /// What outbound sandboxes may reach (see [`egress_ruleset`]).
    egress: EgressPolicy,
    cgroups: Option<Arc<dyn CgroupManager>>,
    /// System directories as they exist on this host.
    system: Vec<(PathBuf, Entry)>,
    etc: Vec<(PathBuf, Entry)>,
}

impl Sandbox {
    /// Finds out what this machine allows. Never fails: whatever is missing is reported by
    /// [`Sandbox::warnings`].
    pub fn detect(ops: Arc<dyn HostOps>) -> Sandbox {
        let mut warnings = Vec::new();
        let root = ops.euid() == 0;
        let system: Vec<(PathBuf, Entry)> = SYSTEM_DIRS
            .iter()
            .map(|d| (PathBuf::from(d), ops.entry(Path::new(d))))
            .filter(|(_, e)| *e != Entry::Missing)
            .collect();
        let etc: Vec<(PathBuf, Entry)> = ETC_ENTRIES
            .iter()
            .map(|d| (PathBuf::from(d), ops.entry(Path::new(d))))
            .filter(|(_, e)| *e != Entry::Missing)
            .collect();

        let policy = match seccomp::compile() {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                warnings.push(format!("seccomp is NOT enforced: {e}"));
                None
            }
        };

        let mut sb = Sandbox {
            ops: ops.clone(),
            layers: Layers {
                rlimits: true,
                seccomp: policy.is_some(),
                no_new_privs: true,
                ..Layers::default()
            },
            warnings: Vec::new(),
            uid_mode: UidMode::None,
            policy,
            slirp: None,
            nft: None,
            egress: EgressPolicy::new(EgressConfig {
                own_addresses: nimbus_egress::host_addresses(),
                ..EgressConfig::default()
            }),
            cgroups: None,
            system,
            etc,
        };

        let bwrap = ops.which("bwrap");
        let setpriv = ops.which("setpriv");
        sb.uid_mode = match (root, setpriv) {
            (true, Some(p)) => UidMode::Setpriv(p),
            (true, None) => UidMode::None,
            (false, _) => UidMode::UserNs,
        };
        match bwrap {
            None => warnings.push(
                "bubblewrap (bwrap) is not installed: functions run WITHOUT namespaces, \
                 read-only root, private /tmp, uid switch or network isolation (they can see \
                 host processes and files and reach 127.0.0.1); install the 'bubblewrap' package"
                    .to_string(),
            ),
            Some(b) => {
                let args = sb.probe_args();
                match ops.probe(&b, &args) {
                    Ok(()) => sb.layers.bwrap = Some(b),
                    Err(e) => warnings.push(format!(
                        "bubblewrap does not work here ({e}): functions run WITHOUT namespaces, \
                         read-only root, uid switch or network isolation{}",
                        if root {
                            ""
                        } else {
                            " (not root: unprivileged user namespaces must be allowed)"
                        }
                    )),
                }
            }
        }
        if sb.layers.bwrap.is_some() {
            sb.layers.namespaces = true;
            sb.layers.filesystem = true;
            sb.layers.network_isolated = true;
            sb.layers.no_capabilities = true;
            match &sb.uid_mode {
                UidMode::Setpriv(_) => sb.layers.uid_switch = true,
                UidMode::UserNs => warnings.push(format!(
                    "the server is not root: functions run as the server's own uid {} on the \
                     host (in a user namespace), not as the configured sandbox uid",
                    ops.euid()
                )),
                UidMode::None => warnings.push(
                    "setpriv (util-linux) is missing: functions run as uid 0 inside the \
                     sandbox (all capabilities dropped, files read-only), NOT as the \
                     unprivileged uid"
                        .to_string(),
                ),
            }
            match (ops.which("slirp4netns"), ops.which("nft"), root) {
                (Some(s), Some(nft), true) => {
                    sb.layers.outbound = true;
                    sb.slirp = Some(s);
                    sb.nft = Some(nft);
                }
                (Some(_), None, true) => warnings.push(
                    "nftables (nft) is not installed: functions asking for network 'outbound' \
                     get no network, because the egress policy cannot be enforced in their \
                     network namespace (install the 'nftables' package)"
                        .to_string(),
                ),
                (Some(_), _, false) => warnings.push(
                    "network 'outbound' is NOT available: slirp4netns is only wired up for a \
                     root server; such functions get no network"
                        .to_string(),
                ),
                (None, _, _) => warnings.push(
                    "slirp4netns is not installed: functions asking for network 'outbound' \
                     get no network (install the 'slirp4netns' package)"
                        .to_string(),
                ),
            }
        } else if root {
            warnings
                .push("functions run as root with all capabilities (no bubblewrap)".to_string());
        }

        sb.cgroups = ops.cgroups();
        match &sb.cgroups {
            None => warnings.push(
                "no writable cgroup hierarchy: memory, process-count (fork bomb) and CPU \
                 limits are NOT enforced"
                    .to_string(),
            ),
            Some(m) => {
                let c = m.controllers();
                sb.layers.cgroup_memory = c.memory;
                sb.layers.cgroup_pids = c.pids;
                sb.layers.cgroup_cpu = c.cpu;
                sb.layers.cgroup_freezer = c.freezer;
                if !c.pids {
                    warnings.push(
                        "the cgroup pids controller is not usable: fork bombs are NOT contained"
                            .to_string(),
                    );
                }
                if !c.cpu {
                    warnings.push(
                        "the cgroup cpu controller is not usable: CPU shares are NOT enforced"
                            .to_string(),
                    );
                }
                if !c.freezer {
                    warnings.push(
                        "the cgroup freezer is not usable: idle instances are NOT frozen (work \
                         they leave running keeps using CPU between activations)"
                            .to_string(),
                    );
                }
            }
        }
        sb.warnings = warnings;
        sb
    }

    /// The egress policy outbound sandboxes get (by default: the deny table and this host's
    /// addresses, nothing opened).
    pub fn set_egress(&mut self, egress: EgressPolicy) {
        self.egress = egress;
    }

    /// The layers in force.
    pub fn layers(&self) -> &Layers {
        &self.layers
    }

    /// One sentence per layer that is not enforced, and why. Empty when everything is.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    /// The cgroup manager found at detection (memory, pids, cpu), if any.
    pub fn cgroups(&self) -> Option<&Arc<dyn CgroupManager>> {
        self.cgroups.as_ref()
    }

    /// The arguments of the bwrap start-up probe: the namespaces and the system binds, running
    /// `true`.
    fn probe_args(&self) -> Vec<OsString> {
        let mut a = Args::default();
        self.namespace_args(&mut a);
        self.system_args(&mut a);
        a.s("--proc")
            .s("/proc")
            .s("--dev")
            .s("/dev")
            .s("--tmpfs")
            .s("/tmp");
        a.s("--").s("true");
        a.0
    }

    fn namespace_args(&self, a: &mut Args) {
        a.s("--die-with-parent").s("--new-session");
        for ns in ["pid", "ipc", "uts", "net"] {
            a.s(&format!("--unshare-{ns}"));
        }
        a.s("--unshare-cgroup-try");
        if self.uid_mode == UidMode::UserNs {
            a.s("--unshare-user");
        }
        a.s("--hostname").s("nimbus");
    }

    fn system_args(&self, a: &mut Args) {
        for (path, entry) in &self.system {
            match entry {
                Entry::Dir => {
                    a.s("--ro-bind").p(path).p(path);
                }
                Entry::Symlink(target) => {
                    a.s("--symlink").p(target).p(path);
                }
                Entry::File | Entry::Missing => {}
            }
        }
    }

    /// Ancestors of `dests` (outermost first, deduplicated) that are not `/` and not inside a
    /// system directory bound from the host.
    fn parent_dirs<'a>(&self, dests: impl Iterator<Item = &'a Path>) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for d in dests {
            let mut chain: Vec<PathBuf> = d
                .ancestors()
                .skip(1)
                .filter(|p| p.parent().is_some())
                .map(Path::to_path_buf)
                .collect();
            chain.reverse();
            for p in chain {
                let in_system = self.system.iter().any(|(s, _)| p.starts_with(s));
                if !in_system && !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        out
    }

    /// The command that runs `program args` sandboxed per `spec`, the descriptors it needs and
    /// the setup its child must do between fork and exec. Call once per spawn attempt (the
    /// descriptors are consumed by bwrap). When `cgroup` is given, the child joins it (all its
    /// v1 hierarchies) in [`ChildSetup::apply_in_child`].
    pub fn wrap(
        &self,
        spec: &SandboxSpec,
        program: &Path,
        args: &[OsString],
        cgroup: Option<&CgroupHandle>,
    ) -> Result<Wrapped, SandboxError> {
        let mut fds = ChildFds::default();
        if let Some(cg) = cgroup {
            for p in cg.procs_paths() {
                let f = File::options()
                    .write(true)
                    .open(&p)
                    .map_err(io_err(&p.display().to_string()))?;
                fds.cgroup(f.into())?;
            }
        }
        let map = PathMap::new(spec, self.layers.bwrap.is_some());
        let mut env: Vec<(OsString, OsString)> =
            spec.env.iter().map(|(k, v)| (k.into(), v.into())).collect();
        if !spec.env.iter().any(|(k, _)| k == "PATH") {
            env.push(("PATH".into(), DEFAULT_PATH.into()));
        }

        let Some(bwrap) = &self.layers.bwrap else {
            // Degraded: no namespaces. What still applies: rlimits, no_new_privs, seccomp and
            // cgroups, all set up in the child before exec.
            let setup = ChildSetup {
                fds: fds.setup,
                nofile: spec.nofile,
                no_new_privs: true,
                in_child_seccomp: self.policy.clone(),
            };
            return Ok(Wrapped {
                program: program.to_path_buf(),
                args: args.to_vec(),
                env,
                cwd: spec.host_cwd(),
                setup,
                fds: fds.owned,
                paths: map,
                network: None,
            });
        };

        for p in &spec.extra_ro {
            if self.ops.entry(p) == Entry::Missing {
                return Err(SandboxError::MissingPath(p.clone()));
            }
        }
        for p in std::iter::once(&spec.code_dir)
            .chain(spec.launcher_dir.iter())
            .chain(spec.ro_binds.iter().map(|(h, _)| h))
        {
            if self.ops.entry(p) != Entry::Dir {
                return Err(SandboxError::MissingPath(p.clone()));
            }
        }
        if !spec.env.iter().any(|(k, _)| k == "HOME") {
            env.push(("HOME".into(), "/tmp".into()));
        }

        let mut a = Args::default();
        self.namespace_args(&mut a);
        self.system_args(&mut a);
        // bwrap creates missing parents of bind destinations as 0700 root directories, which
        // the sandbox uid could not traverse: create them first, world-readable.
        let dests = self
            .etc
            .iter()
            .map(|(p, _)| p.as_path())
            .chain([Path::new("/etc/passwd")])
            .chain(spec.extra_ro.iter().map(PathBuf::as_path))
            .chain(spec.ro_binds.iter().map(|(_, inside)| inside.as_path()));
        for dir in self.parent_dirs(dests) {
            a.s("--perms").s("0755").s("--dir").p(&dir);
        }
        let outbound = spec.network == Network::Outbound && self.layers.outbound;
        for (path, entry) in &self.etc {
            // resolv.conf is written below for outbound; with no network there is no DNS.
            match entry {
                Entry::Dir | Entry::File => {
                    a.s("--ro-bind").p(path).p(path);
                }
                Entry::Symlink(_) => {
                    // e.g. /etc/localtime -> /usr/share/zoneinfo/...: bind what it points to.
                    a.s("--ro-bind-try").p(path).p(path);
                }
                Entry::Missing => {}
            }
        }
        let (passwd, group) = passwd_files(spec.uid, spec.gid);
        let fd = fds.child(data_fd("passwd", passwd.as_bytes())?)?;
        a.s("--perms")
            .s("0444")
            .s("--ro-bind-data")
            .n(fd)
            .s("/etc/passwd");
        let fd = fds.child(data_fd("group", group.as_bytes())?)?;
        a.s("--perms")
            .s("0444")
            .s("--ro-bind-data")
            .n(fd)
            .s("/etc/group");
        if outbound {
            let resolv = format!("nameserver {SLIRP_DNS}\n");
            let fd = fds.child(data_fd("resolv", resolv.as_bytes())?)?;
            a.s("--perms")
                .s("0444")
                .s("--ro-bind-data")
                .n(fd)
                .s("/etc/resolv.conf");
        }
        for p in &spec.extra_ro {
            a.s("--ro-bind").p(p).p(p);
        }
        a.s(if spec.code_writable {
            "--bind"
        } else {
            "--ro-bind"
        })
        .p(&spec.code_dir)
        .s(CODE_DIR);
        for (host, inside) in &spec.ro_binds {
            a.s("--ro-bind").p(host).p(inside);
        }
        if let Some(l) = &spec.launcher_dir {
            a.s("--ro-bind").p(l).s(LAUNCHER_DIR);
        }
        a.s("--size")
            .s(&(spec.tmp_mb.max(1) << 20).to_string())
            .s("--perms")
            .s("1777")
            .s("--tmpfs")
            .s("/tmp");
        a.s("--proc").s("/proc").s("--dev").s("/dev");
        a.s("--chdir").p(&spec.cwd_inside);
        if let Some(policy) = &self.policy {
            for i in 0..policy.programs.len() {
                let fd = fds.child(data_fd("seccomp", &policy.program_bytes(i))?)?;
                a.s("--add-seccomp-fd").n(fd);
            }
        }
        let mut network = None;
        if outbound {
            let (info_r, info_w) = pipe()?;
            let (block_r, block_w) = pipe()?;
            let info_w = fds.child(info_w)?;
            let block_r = fds.child(block_r)?;
            a.s("--info-fd").n(info_w).s("--block-fd").n(block_r);
            network = Some(PendingNetwork {
                info: info_r,
                block: block_w,
            });
        }
        match &self.uid_mode {
            UidMode::Setpriv(setpriv) => {
                for cap in ["CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"] {
                    a.s("--cap-add").s(cap);
                }
                a.s("--").p(setpriv);
                a.s(&format!("--reuid={}", spec.uid))
                    .s(&format!("--regid={}", spec.gid))
                    .s("--clear-groups")
                    .s("--inh-caps=-all")
                    .s("--bounding-set=-all")
                    .s("--no-new-privs")
                    .s("--");
            }
            UidMode::UserNs => {
                a.s("--uid")
                    .s(&spec.uid.to_string())
                    .s("--gid")
                    .s(&spec.gid.to_string())
                    .s("--");
            }
            UidMode::None => {
                a.s("--");
            }
        }
        a.p(&map.inside(program));
        for arg in args {
            a.0.push(map.inside_arg(arg));
        }
        Ok(Wrapped {
            program: bwrap.clone(),
            args: a.0,
            env,
            cwd: PathBuf::from("/"),
            setup: ChildSetup {
                fds: fds.setup,
                nofile: spec.nofile,
                no_new_privs: false,
                // bwrap sets no_new_privs and loads the filters itself, after its own setup.
                in_child_seccomp: None,
            },
            fds: fds.owned,
            paths: map,
            network,
        })
    }

    /// Where host path `p` appears inside a sandbox made from `spec` (unchanged without
    /// bubblewrap, or when `p` is not under the code or launcher directory).
    pub fn path_inside(&self, spec: &SandboxSpec, p: &Path) -> PathBuf {
        PathMap::new(spec, self.layers.bwrap.is_some()).inside(p)
    }

    /// Hands `dir` (e.g. a build's output directory, bound with `code_writable`) to the
    /// sandbox user: the tree is chowned to `spec.uid`/`spec.gid` so the sandboxed program can
    /// write there. Nothing to do unless the uid switch is in force (a root server).
    pub fn lend_dir(&self, dir: &Path, spec: &SandboxSpec) -> Result<(), SandboxError> {
        if !self.layers.uid_switch {
            return Ok(());
        }
        self.ops
            .chown_tree(dir, spec.uid, spec.gid)
            .map_err(io_err(&format!(
                "handing {} to the sandbox user",
                dir.display()
            )))
    }

    /// Takes back a directory lent with [`Sandbox::lend_dir`] once nothing runs in it any more:
    /// the tree belongs to the server's uid/gid again (symbolic links are not followed), so
    /// nothing in the server's data stays writable by the uid every sandbox shares.
    pub fn reclaim_dir(&self, dir: &Path) -> Result<(), SandboxError> {
        if !self.layers.uid_switch {
            return Ok(());
        }
        self.ops
            .chown_tree(dir, self.ops.euid(), self.ops.egid())
            .map_err(io_err(&format!("taking back {}", dir.display())))
    }

    /// Whether [`Sandbox::resize_tmp`] works here: bubblewrap gives each instance a private
    /// `/tmp` and the server is root (it must enter the sandbox's mount namespace).
    pub fn can_resize_tmp(&self) -> bool {
        self.layers.bwrap.is_some() && self.ops.euid() == 0
    }

    /// Sets the size of the private `/tmp` of a running sandbox to `mb` MB (a stem cell gets
    /// its function's size when it is specialised). `bwrap_pid` is the pid of the spawned
    /// [`Wrapped`] program (bubblewrap). Fails when the tmpfs already holds more than that.
    pub fn resize_tmp(&self, bwrap_pid: u32, mb: u64) -> Result<(), SandboxError> {
        if !self.can_resize_tmp() {
            return Err(SandboxError::Io {
                what: "resizing the sandbox's /tmp".into(),
                source: io::Error::new(
                    io::ErrorKind::Unsupported,
                    "needs bubblewrap and a root server",
                ),
            });
        }
        self.ops
            .resize_tmpfs(bwrap_pid, Path::new("/tmp"), mb.max(1) << 20)
            .map_err(io_err("resizing the sandbox's /tmp"))
    }

    /// `Network::Outbound`: after spawning the [`Wrapped`] command, connects the sandbox's
    /// network namespace to the outside with slirp4netns (host loopback disabled unless the
    /// egress policy opens a loopback port), loads the egress rules into that namespace with
    /// `nft`, then lets the sandboxed program start (it waits on bwrap's `--block-fd` until
    /// then). Keep the returned handle as long as the instance lives; dropping it stops
    /// slirp4netns. Any failure leaves the program blocked, to be killed by the caller.
    pub async fn attach_network(&self, pending: PendingNetwork) -> Result<NetHandle, SandboxError> {
        let (Some(slirp), Some(nft)) = (self.slirp.clone(), self.nft.clone()) else {
            return Err(SandboxError::Network(
                "slirp4netns and nft are needed for outbound network".into(),
            ));
        };
        let ops = self.ops.clone();
        let net = NetSetup {
            slirp,
            nft,
            rules: egress_ruleset(&self.egress),
            host_loopback: !host_loopback_ports(&self.egress).is_empty(),
        };
        tokio::task::spawn_blocking(move || attach_blocking(&*ops, &net, pending))
            .await
            .map_err(|e| SandboxError::Network(format!("attach task failed: {e}")))?
    }
}

/// What [`attach_blocking`] needs.
struct NetSetup {
    slirp: PathBuf,
    nft: PathBuf,
    rules: String,
    host_loopback: bool,
}

fn attach_blocking(
    ops: &dyn HostOps,
    net: &NetSetup,
    pending: PendingNetwork,
) -> Result<NetHandle, SandboxError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let info = read_until(&pending.info, b'}', deadline)?;
    let pid = child_pid_from_info(&String::from_utf8_lossy(&info)).ok_or_else(|| {
        SandboxError::Network(format!(
            "no child-pid in bwrap's info: {}",
            String::from_utf8_lossy(&info)
        ))
    })?;
    let (ready_r, ready_w) = pipe()?;
    let (exit_r, exit_w) = pipe()?;
    let args = slirp_args(
        pid,
        ready_w.as_raw_fd(),
        exit_r.as_raw_fd(),
        net.host_loopback,
    );
    let child = ops
        .spawn_helper(
            &net.slirp,
            &args,
            &[ready_w.as_raw_fd(), exit_r.as_raw_fd()],
        )
        .map_err(|e| SandboxError::Network(format!("cannot start slirp4netns: {e}")))?;
    drop(ready_w);
    drop(exit_r);
    let mut handle = NetHandle {
        child,
        _exit: exit_w,
    };
    let ready = read_until(&ready_r, b'1', deadline)?;
    if !ready.contains(&b'1') {
        let status = handle.child.try_wait().ok().flatten();
        return Err(SandboxError::Network(format!(
            "slirp4netns did not become ready ({status:?})"
        )));
    }
    // slirp4netns configured tap0 and its routes; the rules go in before the program runs.
    let nft_args = [OsString::from("-f"), OsString::from("-")];
    ops.run_in_netns(pid, &net.nft, &nft_args, net.rules.as_bytes())
        .map_err(|e| SandboxError::Network(format!("cannot load the egress rules: {e}")))?;
    let mut block = File::from(pending.block);
    block
        .write_all(b"1")
        .map_err(io_err("releasing the sandbox"))?;
    Ok(handle)
}

/// The slirp4netns command line for the network namespace of `pid`: configures `tap0` with
/// slirp's addresses (10.0.2.100/24, gateway 10.0.2.2, DNS 10.0.2.3), refuses connections to
/// the host's loopback through 10.0.2.2 unless `host_loopback` (the egress rules then open
/// exactly the allowed ports of 10.0.2.2), sandboxes and seccomp-filters slirp4netns itself,
/// signals readiness on `ready_fd` and exits when `exit_fd` is closed.
pub fn slirp_args(pid: u32, ready_fd: RawFd, exit_fd: RawFd, host_loopback: bool) -> Vec<OsString> {
    let mut args = vec!["--configure".to_string(), "--mtu=65520".to_string()];
    if !host_loopback {
        args.push("--disable-host-loopback".to_string());
    }
    args.extend([
        "--enable-sandbox".to_string(),
        "--enable-seccomp".to_string(),
        format!("--ready-fd={ready_fd}"),
        format!("--exit-fd={exit_fd}"),
        pid.to_string(),
        "tap0".to_string(),
    ]);
    args.into_iter().map(OsString::from).collect()
}

/// slirp4netns's network inside the sandbox; its gateway 10.0.2.2 is the host's loopback.
const SLIRP_NET: &str = "10.0.2.0/24";
const SLIRP_GATEWAY: &str = "10.0.2.2";

/// The ports of the host's loopback (127.0.0.1, reached at 10.0.2.2 from inside) the policy
/// opens; `None` in the list means every port. Empty: host loopback stays disabled.
pub fn host_loopback_ports(egress: &EgressPolicy) -> Vec<Option<u16>> {
    let lo = std::net::IpAddr::from([127, 0, 0, 1]);
    // As in the policy: an own address is opened only by an entry naming that address.
    let own = egress.own_addresses().contains(&lo);
    egress
        .allow_entries()
        .iter()
        .filter(|e| e.net.contains(&lo) && (!own || e.is_single_address()))
        .map(|e| e.port)
        .collect()
}

fn port_match(port: Option<u16>) -> String {
    port.map(|p| format!(" meta l4proto {{ tcp, udp }} th dport {p}"))
        .unwrap_or_default()
}

/// The nftables ruleset loaded into an outbound sandbox's network namespace: the egress
/// policy as packet filters, in the policy's own order. Allowed: the sandbox's loopback, DNS
/// to slirp's forwarder, the opened host-loopback ports at 10.0.2.2; refused: the rest of
/// slirp's network, the host's own addresses (unless an entry names one), then, after the
/// operator's allow entries, the deny table. Refusals answer at once (TCP reset, ICMP
/// administratively prohibited), so the function sees "connection refused", not a timeout.
pub fn egress_ruleset(egress: &EgressPolicy) -> String {
    let is_loopback = |ip: &std::net::IpAddr| ip.is_loopback();
    let mut deny4 = Vec::new();
    let mut deny6 = Vec::new();
    for (net, _) in nimbus_egress::deny_table() {
        if net.addr().is_ipv4() {
            deny4.push(net.to_string());
        } else {
            deny6.push(net.to_string());
        }
    }
    let own: Vec<std::net::IpAddr> = egress
        .own_addresses()
        .iter()
        .filter(|ip| !is_loopback(ip))
        .copied()
        .collect();
    let own4: Vec<String> = own
        .iter()
        .filter(|i| i.is_ipv4())
        .map(|i| i.to_string())
        .collect();
    let own6: Vec<String> = own
        .iter()
        .filter(|i| i.is_ipv6())
        .map(|i| i.to_string())
        .collect();
    let set = |name: &str, ty: &str, elems: &[String]| {
        format!(
            "  set {name} {{\n    type {ty}\n    flags interval\n    auto-merge\n    elements = {{ {} }}\n  }}\n",
            elems.join(", ")
        )
    };
    let mut out = String::from("table inet nimbus_egress {\n");
    out.push_str(&set("deny4", "ipv4_addr", &deny4));
    out.push_str(&set("deny6", "ipv6_addr", &deny6));
    if !own4.is_empty() {
        out.push_str(&set("own4", "ipv4_addr", &own4));
    }
    if !own6.is_empty() {
        out.push_str(&set("own6", "ipv6_addr", &own6));
    }
    out.push_str(
        "  chain refuse {\n    meta l4proto tcp reject with tcp reset\n    reject with icmpx type admin-prohibited\n  }\n",
    );
    out.push_str("  chain output {\n    type filter hook output priority filter; policy accept;\n");
    let mut rule = |r: String| {
        out.push_str("    ");
        out.push_str(&r);
        out.push('\n');
    };
    rule("oif \"lo\" accept".into());
    rule(format!(
        "ip daddr {SLIRP_DNS}{} accept",
        port_match(Some(53))
    ));
    for port in host_loopback_ports(egress) {
        rule(format!(
            "ip daddr {SLIRP_GATEWAY}{} accept",
            port_match(port)
        ));
    }
    rule(format!("ip daddr {SLIRP_NET} jump refuse"));
    for e in egress.allow_entries() {
        let ip = e.net.addr();
        if e.is_single_address() && own.contains(&ip) {
            let fam = if ip.is_ipv4() { "ip" } else { "ip6" };
            rule(format!("{fam} daddr {ip}{} accept", port_match(e.port)));
        }
    }
    if !own4.is_empty() {
        rule("ip daddr @own4 jump refuse".into());
    }
    if !own6.is_empty() {
        rule("ip6 daddr @own6 jump refuse".into());
    }
    for e in egress.allow_entries() {
        // Loopback entries were mapped to slirp's gateway above; inside, loopback is the
        // sandbox's own.
        if e.net.addr().is_loopback() {
            continue;
        }
        let fam = if e.net.addr().is_ipv4() { "ip" } else { "ip6" };
        rule(format!(
            "{fam} daddr {}{} accept",
            e.net,
            port_match(e.port)
        ));
    }
    rule("ip daddr @deny4 jump refuse".into());
    rule("ip6 daddr @deny6 jump refuse".into());
    out.push_str("  }\n}\n");
    out
}

/// `{"child-pid": 123, ...}` from bwrap's `--info-fd`.
pub fn child_pid_from_info(text: &str) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
    v.get("child-pid")?.as_u64()?.try_into().ok()
}

/// Reads from `fd` until `stop` is seen, EOF, or the deadline.
fn read_until(fd: &OwnedFd, stop: u8, deadline: Instant) -> Result<Vec<u8>, SandboxError> {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(SandboxError::Network("timed out".into()));
        }
        let mut pfd = [libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(pfd.as_mut_ptr(), 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io_err("poll")(e));
        }
        if r == 0 {
            continue;
        }
        let n = (&File::from(fd.try_clone().map_err(io_err("dup"))?))
            .read(&mut buf)
            .map_err(io_err("read"))?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
        if buf[..n].contains(&stop) {
            return Ok(out);
        }
    }
}

/// Minimal `/etc/passwd` and `/etc/group`: root, nobody and the sandbox user (so `whoami`,
/// Node's `os.userInfo()` and Python's `pwd` work). No host accounts are visible.
pub fn passwd_files(uid: u32, gid: u32) -> (String, String) {
    let mut passwd = String::from(
        "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    );
    if uid != 0 && uid != 65534 {
        passwd.push_str(&format!(
            "sandbox:x:{uid}:{gid}:sandbox:/tmp:/usr/sbin/nologin\n"
        ));
    }
    let mut group = String::from("root:x:0:\nnogroup:x:65534:\n");
    if gid != 0 && gid != 65534 {
        group.push_str(&format!("sandbox:x:{gid}:\n"));
    }
    (passwd, group)
}

/// Host path -> path inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathMap {
    /// (host prefix, inside prefix), most specific first.
    pub mounts: Vec<(PathBuf, PathBuf)>,
    /// False when there is no mount namespace: paths are unchanged.
    pub translated: bool,
}

impl PathMap {
    fn new(spec: &SandboxSpec, translated: bool) -> Self {
        let mut mounts = vec![(spec.code_dir.clone(), PathBuf::from(CODE_DIR))];
        if let Some(l) = &spec.launcher_dir {
            mounts.push((l.clone(), PathBuf::from(LAUNCHER_DIR)));
        }
        // Longest host prefix first, so a launcher dir inside the code dir (or the reverse)
        // maps to its own mount.
        mounts.sort_by_key(|(h, _)| std::cmp::Reverse(h.components().count()));
        PathMap { mounts, translated }
    }

    /// Where host path `p` is seen inside (unchanged if not under a mapped directory; the
    /// `extra_ro` paths keep their host path).
    pub fn inside(&self, p: &Path) -> PathBuf {
        if !self.translated {
            return p.to_path_buf();
        }
        for (host, inside) in &self.mounts {
            if let Ok(rest) = p.strip_prefix(host) {
                return if rest.as_os_str().is_empty() {
                    inside.clone()
                } else {
                    inside.join(rest)
                };
            }
        }
        p.to_path_buf()
    }

    fn inside_arg(&self, arg: &OsStr) -> OsString {
        if arg.as_bytes().first() == Some(&b'/') {
            self.inside(Path::new(arg)).into_os_string()
        } else {
            arg.to_os_string()
        }
    }
}

/// What to spawn. Use it as: `Command::new(&w.program).args(&w.args).env_clear()
/// .envs(w.env.iter().map(|(k, v)| (k, v))).current_dir(&w.cwd)`, and in `pre_exec` call
/// [`ChildSetup::apply_in_child`] on `w.setup` (besides the runtime's own fd 3 `dup2`). Keep
/// `w` alive until `spawn` returned, then drop `w.fds` (and pass `w.network`, if any, to
/// [`Sandbox::attach_network`]).
#[derive(Debug)]
pub struct Wrapped {
    /// bwrap, or the program itself when namespaces are not available.
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The complete environment (after `env_clear`).
    pub env: Vec<(OsString, OsString)>,
    /// Host working directory for the spawn (`/` under bwrap, which then `chdir`s inside).
    pub cwd: PathBuf,
    pub setup: ChildSetup,
    /// Descriptors the child inherits (cgroup.procs files, seccomp programs, generated
    /// files, bwrap's info/block pipes): all close-on-exec here and numbered >= 10.
    pub fds: Vec<OwnedFd>,
    pub paths: PathMap,
    /// `Some` for `Network::Outbound`: the program is held before exec until
    /// [`Sandbox::attach_network`] has run.
    pub network: Option<PendingNetwork>,
}

/// The parent's ends of bwrap's `--info-fd` and `--block-fd` pipes.
#[derive(Debug)]
pub struct PendingNetwork {
    info: OwnedFd,
    block: OwnedFd,
}

/// A running slirp4netns; dropping it stops it (its exit pipe closes and it is killed).
#[derive(Debug)]
pub struct NetHandle {
    child: Child,
    _exit: OwnedFd,
}

impl NetHandle {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NetHandle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the child does between fork and exec. Holds raw descriptor numbers only, so it can
/// run in the forked child without allocating.
#[derive(Debug, Clone)]
pub struct ChildSetup {
    fds: SetupFds,
    nofile: u64,
    /// Without bwrap, `no_new_privs` is set here (bwrap sets it itself).
    no_new_privs: bool,
    /// Without bwrap, the filters are loaded here (after `no_new_privs`).
    in_child_seccomp: Option<Arc<CompiledPolicy>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct SetupFds {
    /// One `cgroup.procs` per hierarchy: v1 memory, pids, cpu, cpuacct, freezer.
    cgroup: [RawFd; 6],
    n_cgroup: usize,
    inherit: [RawFd; MAX_CHILD_FDS],
    n_inherit: usize,
}

impl ChildSetup {
    /// The descriptors the child must keep open across exec.
    pub fn inherited_fds(&self) -> &[RawFd] {
        &self.fds.inherit[..self.fds.n_inherit]
    }

    /// `RLIMIT_NOFILE` applied in the child.
    pub fn nofile(&self) -> u64 {
        self.nofile
    }

    /// Whether the seccomp filters are loaded by this hook (no bwrap).
    pub fn loads_seccomp(&self) -> bool {
        self.in_child_seccomp.is_some()
    }

    /// Call ONLY in the forked child before exec (`Command::pre_exec`): joins the cgroups
    /// (writes `getpid()` to each `cgroup.procs`), sets `RLIMIT_NOFILE` and `RLIMIT_CORE` = 0,
    /// clears close-on-exec on the inherited descriptors and, without bwrap, sets
    /// `no_new_privs` and loads the seccomp filters. Async-signal-safe: no allocation.
    pub fn apply_in_child(&self) -> io::Result<()> {
        let check = |r: libc::c_int| {
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        if self.fds.n_cgroup > 0 {
            let mut buf = [0u8; 12];
            // SAFETY: getpid has no preconditions.
            let pid = unsafe { libc::getpid() };
            let digits = decimal(pid.unsigned_abs(), &mut buf);
            for &fd in &self.fds.cgroup[..self.fds.n_cgroup] {
                // SAFETY: `digits` is a valid buffer; fd is open (owned by the Wrapped).
                let n = unsafe { libc::write(fd, digits.as_ptr().cast(), digits.len()) };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        let nofile = libc::rlimit {
            rlim_cur: self.nofile,
            rlim_max: self.nofile,
        };
        // SAFETY: valid rlimit structs.
        check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &nofile) })?;
        let core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        check(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &core) })?;
        for &fd in self.inherited_fds() {
            // SAFETY: fcntl on a descriptor number.
            check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) })?;
        }
        if self.no_new_privs {
            // SAFETY: plain prctl.
            check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
        }
        if let Some(policy) = &self.in_child_seccomp {
            for prog in &policy.programs {
                let fprog = libc::sock_fprog {
                    len: u16::try_from(prog.len())
                        .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
                    filter: prog.as_ptr().cast_mut(),
                };
                // SAFETY: `fprog` points at a live program for the duration of the call.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_seccomp,
                        libc::SECCOMP_SET_MODE_FILTER,
                        0,
                        &fprog as *const libc::sock_fprog,
                    )
                };
                if r < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

fn decimal(mut n: u32, buf: &mut [u8; 12]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

#[derive(Default)]
struct ChildFds {
    owned: Vec<OwnedFd>,
    setup: SetupFds,
}

impl ChildFds {
    fn cgroup(&mut self, fd: OwnedFd) -> Result<(), SandboxError> {
        let fd = high_fd(fd)?;
        let n = self.setup.n_cgroup;
        *self
            .setup
            .cgroup
            .get_mut(n)
            .ok_or(SandboxError::TooManyFds)? = fd.as_raw_fd();
        self.setup.n_cgroup += 1;
        self.owned.push(fd);
        Ok(())
    }

    /// Registers a descriptor the child inherits; returns its number.
    fn child(&mut self, fd: OwnedFd) -> Result<RawFd, SandboxError> {
        let fd = high_fd(fd)?;
        let raw = fd.as_raw_fd();
        let n = self.setup.n_inherit;
        *self
            .setup
            .inherit
            .get_mut(n)
            .ok_or(SandboxError::TooManyFds)? = raw;
        self.setup.n_inherit += 1;
        self.owned.push(fd);
        Ok(raw)
    }
}

/// Moves `fd` to a number >= [`FIRST_CHILD_FD`], close-on-exec.
fn high_fd(fd: OwnedFd) -> Result<OwnedFd, SandboxError> {
    if fd.as_raw_fd() >= FIRST_CHILD_FD {
        return Ok(fd);
    }
    let raw = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(FIRST_CHILD_FD))
        .map_err(nix_err("dup"))?;
    // SAFETY: `raw` was just returned by fcntl and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A memfd holding `data`, positioned at its start.
fn data_fd(name: &str, data: &[u8]) -> Result<OwnedFd, SandboxError> {
    let cname = format!("nimbus-{name}");
    let fd = nix::sys::memfd::memfd_create(cname.as_str(), nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(nix_err("memfd_create"))?;
    let mut f = File::from(fd);
    f.write_all(data).map_err(io_err("memfd write"))?;
    use std::io::Seek;
    f.seek(io::SeekFrom::Start(0))
        .map_err(io_err("memfd seek"))?;
    Ok(f.into())
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(nix_err("pipe"))
}

/// Argument list builder.
#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn s(&mut self, s: &str) -> &mut Self {
        self.0.push(s.into());
        self
    }
    fn p(&mut self, p: &Path) -> &mut Self {
        self.0.push(p.as_os_str().to_os_string());
        self
    }
    fn n(&mut self, fd: RawFd) -> &mut Self {
        self.0.push(fd.to_string().into());
        self
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cgroup::V1Manager;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Recording test double: a merged-/usr Debian machine, configurable.
    #[derive(Debug)]
    struct Fake {
        euid: u32,
        programs: Vec<&'static str>,
        entries: HashMap<PathBuf, Entry>,
        probe_ok: bool,
        cgroups: Option<Arc<dyn CgroupManager>>,
        calls: Mutex<Vec<String>>,
    }

    impl Fake {
        fn root() -> Fake {
            let mut entries = HashMap::new();
            entries.insert(PathBuf::from("/usr"), Entry::Dir);
            for (l, t) in [
                ("/bin", "usr/bin"),
                ("/sbin", "usr/sbin"),
                ("/lib", "usr/lib"),
                ("/lib64", "usr/lib64"),
            ] {
                entries.insert(PathBuf::from(l), Entry::Symlink(PathBuf::from(t)));
            }
            for d in ["/etc/ssl", "/etc/ca-certificates", "/etc/alternatives"] {
                entries.insert(PathBuf::from(d), Entry::Dir);
            }
            for f in ["/etc/hosts", "/etc/ld.so.cache"] {
                entries.insert(PathBuf::from(f), Entry::File);
            }
            for d in ["/srv/fn/code", "/srv/launchers", "/opt/py"] {
                entries.insert(PathBuf::from(d), Entry::Dir);
            }
            let tmp = std::env::temp_dir().join("nimbus-sandbox-fake-cg");
            Fake {
                euid: 0,
                programs: vec!["bwrap", "setpriv", "slirp4netns", "nft"],
                entries,
                probe_ok: true,
                cgroups: Some(Arc::new(
                    V1Manager::with_controllers(
                        tmp.join("memory"),
                        Some(tmp.join("pids")),
                        Some(tmp.join("cpu")),
                    )
                    .with_accounting(Some(tmp.join("cpuacct")), Some(tmp.join("freezer"))),
                )),
                calls: Mutex::new(Vec::new()),
            }
        }
    }

    impl HostOps for Fake {
        fn euid(&self) -> u32 {
            self.euid
        }
        fn which(&self, name: &str) -> Option<PathBuf> {
            self.programs
                .contains(&name)
                .then(|| PathBuf::from("/usr/bin").join(name))
        }
        fn entry(&self, path: &Path) -> Entry {
            self.entries.get(path).cloned().unwrap_or(Entry::Missing)
        }
        fn probe(&self, program: &Path, args: &[OsString]) -> Result<(), String> {
            self.calls.lock().unwrap().push(format!(
                "probe {} {}",
                program.display(),
                args.iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
            if self.probe_ok {
                Ok(())
            } else {
                Err("bwrap: No permissions to create new namespace".into())
            }
        }
        fn cgroups(&self) -> Option<Arc<dyn CgroupManager>> {
            self.cgroups.clone()
        }
        fn spawn_helper(&self, program: &Path, _: &[OsString], _: &[RawFd]) -> io::Result<Child> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("spawn {}", program.display()));
            Err(io::Error::other("not in tests"))
        }
        fn run_in_netns(
            &self,
            pid: u32,
            program: &Path,
            _: &[OsString],
            _: &[u8],
        ) -> Result<(), String> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("netns {pid} {}", program.display()));
            Err("not in tests".into())
        }
        fn egid(&self) -> u32 {
            self.euid
        }
        fn chown_tree(&self, dir: &Path, uid: u32, gid: u32) -> io::Result<()> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("chown {} {uid}:{gid}", dir.display()));
            Ok(())
        }
        fn resize_tmpfs(&self, pid: u32, target: &Path, size: u64) -> io::Result<()> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("resize {pid} {} {size}", target.display()));
            Ok(())
        }
    }

    fn spec() -> SandboxSpec {
        let mut s = SandboxSpec::new("/srv/fn/code");
        s.launcher_dir = Some(PathBuf::from("/srv/launchers"));
        s.extra_ro = vec![PathBuf::from("/opt/py")];
        s.env = vec![("__OW_SECRET".into(), "s3cr3t".into())];
        s
    }

    fn strings(w: &Wrapped) -> Vec<String> {
        w.args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn has(args: &[String], seq: &[&str]) -> bool {
        args.windows(seq.len()).any(|w| w == seq)
    }

    fn wrap(sb: &Sandbox, spec: &SandboxSpec) -> Wrapped {
        sb.wrap(
            spec,
            Path::new("/opt/py/bin/python3"),
            &[
                "-u".into(),
                "/srv/launchers/launcher.py".into(),
                "/srv/fn/code".into(),
                "main".into(),
            ],
            None,
        )
        .unwrap()
    }

    #[test]
    fn root_with_everything_builds_the_full_sandbox() {
        let fake = Arc::new(Fake::root());
        let sb = Sandbox::detect(fake.clone());
        assert!(sb.warnings().is_empty(), "{:?}", sb.warnings());
        let l = sb.layers();
        assert!(l.namespaces && l.filesystem && l.uid_switch && l.no_capabilities);
        assert!(l.seccomp && l.no_new_privs && l.rlimits && l.network_isolated && l.outbound);
        assert!(l.cgroup_memory && l.cgroup_pids && l.cgroup_cpu && l.cgroup_freezer);
        // The probe ran bwrap with the same namespaces.
        let calls = fake.calls.lock().unwrap().clone();
        assert!(calls[0].starts_with("probe /usr/bin/bwrap"), "{calls:?}");
        assert!(calls[0].contains("--unshare-pid") && calls[0].contains("--unshare-net"));

        let w = wrap(&sb, &spec());
        let a = strings(&w);
        assert_eq!(w.program, PathBuf::from("/usr/bin/bwrap"));
        for ns in [
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-net",
            "--unshare-cgroup-try",
            "--die-with-parent",
            "--new-session",
        ] {
            assert!(a.contains(&ns.to_string()), "{ns}");
        }
        assert!(!a.contains(&"--unshare-user".to_string()));
        // Merged /usr: one bind, the rest symlinks as on the host.
        assert!(has(&a, &["--ro-bind", "/usr", "/usr"]));
        assert!(has(&a, &["--symlink", "usr/lib", "/lib"]));
        assert!(has(&a, &["--symlink", "usr/bin", "/bin"]));
        assert!(!a.iter().any(|x| x == "/lib32"));
        assert!(has(&a, &["--ro-bind", "/etc/ssl", "/etc/ssl"]));
        assert!(has(&a, &["--ro-bind", "/etc/hosts", "/etc/hosts"]));
        assert!(!a.iter().any(|x| x == "/etc/shadow"));
        assert!(has(&a, &["--ro-bind", "/opt/py", "/opt/py"]));
        // Parents of binds are created traversable, before the binds into them.
        let etc_dir = a.iter().position(|x| x == "/etc").unwrap();
        assert_eq!(a[etc_dir - 3..etc_dir], ["--perms", "0755", "--dir"]);
        assert!(etc_dir < a.iter().position(|x| x == "/etc/ssl").unwrap());
        assert!(has(&a, &["--perms", "0755", "--dir", "/opt"]));
        assert!(has(&a, &["--ro-bind", "/srv/fn/code", "/code"]));
        assert!(has(&a, &["--ro-bind", "/srv/launchers", "/nimbus"]));
        // Nothing is bound writable.
        assert!(!a.iter().any(|x| x == "--bind" || x == "--dev-bind"));
        assert!(has(
            &a,
            &["--size", "67108864", "--perms", "1777", "--tmpfs", "/tmp"]
        ));
        assert!(has(&a, &["--proc", "/proc", "--dev", "/dev"]));
        assert!(has(&a, &["--chdir", "/code"]));
        assert_eq!(a.iter().filter(|x| *x == "--add-seccomp-fd").count(), 2);
        // No network plumbing for Network::None.
        assert!(!a.iter().any(|x| x == "--info-fd" || x == "--block-fd"));
        assert!(w.network.is_none());
        // Root: keep only what setpriv needs, then switch and drop everything.
        assert!(has(&a, &["--cap-add", "CAP_SETUID"]));
        assert!(has(
            &a,
            &[
                "--",
                "/usr/bin/setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
                "--",
                "/opt/py/bin/python3",
                "-u",
                "/nimbus/launcher.py",
                "/code",
                "main"
            ]
        ));
        // The environment is not on the command line (visible in /proc to every host user).
        assert!(!a.iter().any(|x| x.contains("s3cr3t")));
        assert!(w.env.contains(&("__OW_SECRET".into(), "s3cr3t".into())));
        assert!(w.env.contains(&("HOME".into(), "/tmp".into())));
        assert!(w.env.contains(&("PATH".into(), DEFAULT_PATH.into())));
        assert_eq!(w.cwd, PathBuf::from("/"));
        // Descriptors for the child: passwd, group, 2 seccomp programs; all >= 10 and
        // named on the command line.
        let fds = w.setup.inherited_fds();
        assert_eq!(fds.len(), 4);
        assert_eq!(w.fds.len(), 4);
        for fd in fds {
            assert!(*fd >= FIRST_CHILD_FD);
            assert!(a.contains(&fd.to_string()));
        }
        assert_eq!(w.setup.nofile(), 1024);
        assert!(!w.setup.loads_seccomp(), "bwrap loads the filters");
    }

    #[test]
    fn tmp_size_uid_and_nofile_come_from_the_spec() {
        let sb = Sandbox::detect(Arc::new(Fake::root()));
        let mut s = spec();
        s.tmp_mb = 5;
        s.uid = 20001;
        s.gid = 20002;
        s.nofile = 77;
        s.cwd_inside = PathBuf::from("/tmp");
        let w = wrap(&sb, &s);
        let a = strings(&w);
        assert!(has(&a, &["--size", "5242880"]));
        assert!(has(&a, &["--reuid=20001", "--regid=20002"]));
        assert!(has(&a, &["--chdir", "/tmp"]));
        assert_eq!(w.setup.nofile(), 77);
        let (passwd, group) = passwd_files(20001, 20002);
        assert!(passwd.contains("sandbox:x:20001:20002:"));
        assert!(group.contains("sandbox:x:20002:"));
        assert!(!passwd_files(65534, 65534).0.contains("sandbox"));
        assert_eq!(
            s.cgroup_limits(256 << 20),
            CgroupLimits {
                memory_bytes: 256 << 20,
                pids_max: Some(64),
                cpu_from_memory: true
            }
        );
    }

    #[test]
    fn outbound_adds_info_and_block_fds_and_slirp_dns() {
        let sb = Sandbox::detect(Arc::new(Fake::root()));
        let mut s = spec();
        s.network = Network::Outbound;
        let w = wrap(&sb, &s);
        let a = strings(&w);
        // Still its own network namespace: slirp4netns connects it, bwrap does not share.
        assert!(a.contains(&"--unshare-net".to_string()));
        let i = a.iter().position(|x| x == "--info-fd").unwrap();
        assert_eq!(a[i + 2], "--block-fd");
        assert!(a.iter().any(|x| x == "/etc/resolv.conf"));
        assert!(w.network.is_some());
        // passwd, group, resolv.conf, 2 seccomp, info, block.
        assert_eq!(w.setup.inherited_fds().len(), 7);

        let args = slirp_args(4242, 11, 12, false);
        let args: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
        assert!(args.contains(&"--disable-host-loopback".into()));
        assert!(args.contains(&"--ready-fd=11".into()));
        assert!(args.contains(&"--exit-fd=12".into()));
        assert_eq!(args[args.len() - 2..], ["4242", "tap0"]);
        let args = slirp_args(4242, 11, 12, true);
        assert!(!args.iter().any(|a| a == "--disable-host-loopback"));
    }

    #[test]
    fn outbound_without_nft_is_no_network_and_says_so() {
        let mut fake = Fake::root();
        fake.programs.retain(|p| *p != "nft");
        let sb = Sandbox::detect(Arc::new(fake));
        assert!(!sb.layers().outbound);
        assert!(sb.warnings().iter().any(|w| w.contains("nftables")));
        let mut s = spec();
        s.network = Network::Outbound;
        let w = wrap(&sb, &s);
        assert!(w.network.is_none());
        assert!(!strings(&w).iter().any(|x| x == "/etc/resolv.conf"));
    }

    fn policy(allow: &[&str], own: &[&str]) -> EgressPolicy {
        EgressPolicy::new(EgressConfig {
            allow: allow
                .iter()
                .map(|s| nimbus_egress::AllowEntry::parse(s).unwrap())
                .collect(),
            own_addresses: own.iter().map(|s| s.parse().unwrap()).collect(),
            ..EgressConfig::default()
        })
    }

    fn rule_lines(rules: &str) -> Vec<String> {
        rules
            .lines()
            .map(str::trim)
            .filter(|l| l.contains("daddr") || l.starts_with("oif"))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn egress_rules_follow_the_policy_order() {
        let p = policy(
            &[
                "127.0.0.1:1883",
                "10.0.0.0/8:5432",
                "192.0.2.2:8080",
                "[fd00::5]:80",
            ],
            &["127.0.0.1", "::1", "192.0.2.2", "fd00::2"],
        );
        let rules = egress_ruleset(&p);
        assert_eq!(host_loopback_ports(&p), vec![Some(1883)]);
        let tcp_udp = "meta l4proto { tcp, udp } th dport";
        assert_eq!(
            rule_lines(&rules),
            vec![
                "oif \"lo\" accept".to_string(),
                format!("ip daddr 10.0.2.3 {tcp_udp} 53 accept"),
                format!("ip daddr 10.0.2.2 {tcp_udp} 1883 accept"),
                "ip daddr 10.0.2.0/24 jump refuse".to_string(),
                format!("ip daddr 192.0.2.2 {tcp_udp} 8080 accept"),
                "ip daddr @own4 jump refuse".to_string(),
                "ip6 daddr @own6 jump refuse".to_string(),
                format!("ip daddr 10.0.0.0/8 {tcp_udp} 5432 accept"),
                format!("ip daddr 192.0.2.2/32 {tcp_udp} 8080 accept"),
                format!("ip6 daddr fd00::5/128 {tcp_udp} 80 accept"),
                "ip daddr @deny4 jump refuse".to_string(),
                "ip6 daddr @deny6 jump refuse".to_string(),
            ]
        );
        // Loopback addresses of the host are not in the own-address sets (inside, loopback
        // is the sandbox's own); the deny sets hold the whole table.
        assert!(rules.contains("elements = { 192.0.2.2 }"), "{rules}");
        assert!(rules.contains("elements = { fd00::2 }"), "{rules}");
        for net in [
            "169.254.0.0/16",
            "10.0.0.0/8",
            "127.0.0.0/8",
            "100.64.0.0/10",
        ] {
            assert!(rules.contains(net), "{net}: {rules}");
        }
        for net in ["fe80::/10", "64:ff9b::/96", "2002::/16", "fc00::/7"] {
            assert!(rules.contains(net), "{net}: {rules}");
        }
        assert!(rules.contains("reject with tcp reset"));
        assert!(rules.contains("reject with icmpx type admin-prohibited"));
    }

    #[test]
    fn host_loopback_is_opened_only_by_entries_naming_it() {
        let own = ["127.0.0.1"];
        assert!(host_loopback_ports(&policy(&[], &own)).is_empty());
        assert!(host_loopback_ports(&policy(&["127.0.0.0/8"], &own)).is_empty());
        assert!(host_loopback_ports(&policy(&["10.0.0.0/8"], &own)).is_empty());
        assert_eq!(
            host_loopback_ports(&policy(&["127.0.0.1"], &own)),
            vec![None]
        );
        let rules = egress_ruleset(&policy(&[], &own));
        assert!(!rules.contains("10.0.2.2"), "{rules}");
        assert!(!rules.contains("own4"), "{rules}");
    }

    #[test]
    fn outbound_without_slirp4netns_is_no_network_and_says_so() {
        let mut fake = Fake::root();
        fake.programs.retain(|p| *p != "slirp4netns");
        let sb = Sandbox::detect(Arc::new(fake));
        assert!(!sb.layers().outbound);
        assert!(sb.warnings().iter().any(|w| w.contains("slirp4netns")));
        let mut s = spec();
        s.network = Network::Outbound;
        let w = wrap(&sb, &s);
        let a = strings(&w);
        assert!(a.contains(&"--unshare-net".to_string()));
        assert!(!a.contains(&"--info-fd".to_string()));
        assert!(w.network.is_none());
    }

    #[test]
    fn no_bwrap_degrades_and_warns() {
        let mut fake = Fake::root();
        fake.programs.retain(|p| *p != "bwrap");
        let sb = Sandbox::detect(Arc::new(fake));
        let l = sb.layers();
        assert!(!l.namespaces && !l.filesystem && !l.uid_switch && !l.network_isolated);
        assert!(l.seccomp && l.no_new_privs && l.rlimits && l.cgroup_memory);
        let warn = sb.warnings().join("\n");
        assert!(
            warn.contains("bubblewrap (bwrap) is not installed"),
            "{warn}"
        );
        assert!(warn.contains("127.0.0.1"));
        assert!(warn.contains("root with all capabilities"));
        let w = wrap(&sb, &spec());
        // The program runs directly, host paths unchanged, with seccomp and no_new_privs set
        // in the child.
        assert_eq!(w.program, PathBuf::from("/opt/py/bin/python3"));
        assert_eq!(strings(&w)[1], "/srv/launchers/launcher.py");
        assert!(w.setup.loads_seccomp());
        assert_eq!(w.cwd, PathBuf::from("/srv/fn/code"));
        assert!(w.setup.inherited_fds().is_empty());
    }

    #[test]
    fn failing_bwrap_probe_degrades_with_its_reason() {
        let mut fake = Fake::root();
        fake.probe_ok = false;
        fake.euid = 1000;
        let sb = Sandbox::detect(Arc::new(fake));
        assert!(sb.layers().bwrap.is_none());
        let warn = sb.warnings().join("\n");
        assert!(
            warn.contains("No permissions to create new namespace"),
            "{warn}"
        );
        assert!(warn.contains("user namespaces"));
        assert!(!warn.contains("root with all capabilities"));
    }

    #[test]
    fn unprivileged_server_uses_a_user_namespace() {
        let mut fake = Fake::root();
        fake.euid = 1000;
        fake.cgroups = None;
        let sb = Sandbox::detect(Arc::new(fake));
        let l = sb.layers();
        assert!(l.namespaces && !l.uid_switch && !l.outbound);
        assert!(!l.cgroup_memory && !l.cgroup_pids);
        let warn = sb.warnings().join("\n");
        assert!(warn.contains("own uid 1000"), "{warn}");
        assert!(warn.contains("memory, process-count (fork bomb) and CPU"));
        let a = strings(&wrap(&sb, &spec()));
        assert!(a.contains(&"--unshare-user".to_string()));
        assert!(has(&a, &["--uid", "65534", "--gid", "65534", "--"]));
        assert!(!a.iter().any(|x| x.contains("setpriv") || x == "--cap-add"));
    }

    #[test]
    fn missing_setpriv_or_pids_controller_is_reported() {
        let mut fake = Fake::root();
        fake.programs.retain(|p| *p != "setpriv");
        fake.cgroups = Some(Arc::new(V1Manager::new("/nonexistent/memory/nimbus")));
        let sb = Sandbox::detect(Arc::new(fake));
        assert!(!sb.layers().uid_switch && sb.layers().no_capabilities);
        let warn = sb.warnings().join("\n");
        assert!(warn.contains("setpriv"), "{warn}");
        assert!(warn.contains("fork bombs are NOT contained"));
        assert!(warn.contains("CPU shares are NOT enforced"));
        assert!(warn.contains("idle instances are NOT frozen"), "{warn}");
        assert!(!sb.layers().cgroup_freezer);
        let a = strings(&wrap(&sb, &spec()));
        assert!(!a.iter().any(|x| x.starts_with("--reuid")));
    }

    #[test]
    fn missing_bind_sources_are_errors() {
        let sb = Sandbox::detect(Arc::new(Fake::root()));
        let mut s = spec();
        s.extra_ro.push(PathBuf::from("/opt/nope"));
        let e = sb.wrap(&s, Path::new("/bin/true"), &[], None).unwrap_err();
        assert!(matches!(e, SandboxError::MissingPath(p) if p == Path::new("/opt/nope")));
        let mut s = spec();
        s.code_dir = PathBuf::from("/srv/other");
        assert!(sb.wrap(&s, Path::new("/bin/true"), &[], None).is_err());
    }

    #[test]
    fn paths_map_to_their_mounts() {
        let mut s = spec();
        s.launcher_dir = Some(PathBuf::from("/srv/fn/code/launch"));
        let m = PathMap::new(&s, true);
        assert_eq!(
            m.inside(Path::new("/srv/fn/code/exec")),
            Path::new("/code/exec")
        );
        assert_eq!(m.inside(Path::new("/srv/fn/code")), Path::new("/code"));
        assert_eq!(
            m.inside(Path::new("/srv/fn/code/launch/l.py")),
            Path::new("/nimbus/l.py")
        );
        assert_eq!(
            m.inside(Path::new("/srv/fn/codex")),
            Path::new("/srv/fn/codex")
        );
        assert_eq!(
            m.inside(Path::new("/opt/py/bin/python3")),
            Path::new("/opt/py/bin/python3")
        );
        assert_eq!(m.inside_arg(OsStr::new("main")), OsString::from("main"));
        let m = PathMap::new(&s, false);
        assert_eq!(
            m.inside(Path::new("/srv/fn/code/exec")),
            Path::new("/srv/fn/code/exec")
        );
    }

    #[test]
    fn cgroup_procs_files_are_opened_for_the_child() {
        let tmp = tempfile::tempdir().unwrap();
        let m = V1Manager::with_controllers(
            tmp.path().join("memory/nimbus"),
            Some(tmp.path().join("pids/nimbus")),
            None,
        );
        let cg = m
            .create_limited("i", &spec().cgroup_limits(64 << 20))
            .unwrap();
        for p in cg.procs_paths() {
            std::fs::write(p, "").unwrap();
        }
        let sb = Sandbox::detect(Arc::new(Fake::root()));
        let w = sb
            .wrap(&spec(), Path::new("/bin/true"), &[], Some(&cg))
            .unwrap();
        // 2 cgroup files + 4 inherited.
        assert_eq!(w.fds.len(), 6);
        assert_eq!(w.setup.fds.n_cgroup, 2);
    }

    #[test]
    fn bwrap_info_and_decimal() {
        assert_eq!(
            child_pid_from_info("{\n    \"child-pid\": 1234\n}\n"),
            Some(1234)
        );
        assert_eq!(child_pid_from_info("{}"), None);
        assert_eq!(child_pid_from_info("garbage"), None);
        let mut b = [0u8; 12];
        assert_eq!(decimal(0, &mut b), b"0");
        assert_eq!(decimal(4_294_967_295, &mut b), b"4294967295");
    }

    #[tokio::test]
    async fn attach_network_needs_slirp() {
        let mut fake = Fake::root();
        fake.programs.retain(|p| *p != "slirp4netns");
        let sb = Sandbox::detect(Arc::new(fake));
        let (a, b) = pipe().unwrap();
        let e = sb
            .attach_network(PendingNetwork { info: a, block: b })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("slirp4netns"));
    }

    #[tokio::test]
    async fn attach_network_needs_nft() {
        let mut fake = Fake::root();
        fake.programs.retain(|p| *p != "nft");
        let sb = Sandbox::detect(Arc::new(fake));
        let (a, b) = pipe().unwrap();
        let e = sb
            .attach_network(PendingNetwork { info: a, block: b })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("nft"), "{e}");
    }

    #[test]
    fn a_writable_code_dir_is_the_only_writable_bind() {
        let fake = Arc::new(Fake::root());
        let sb = Sandbox::detect(fake.clone());
        let mut sp = spec();
        sp.code_writable = true;
        let a = strings(&wrap(&sb, &sp));
        assert!(has(&a, &["--bind", "/srv/fn/code", "/code"]));
        assert!(!has(&a, &["--ro-bind", "/srv/fn/code", "/code"]));
        assert_eq!(a.iter().filter(|x| *x == "--bind").count(), 1);
        assert_eq!(
            sb.path_inside(&sp, Path::new("/srv/fn/code/function/x")),
            PathBuf::from("/code/function/x")
        );
    }

    #[test]
    fn lent_directories_are_chowned_to_the_sandbox_user_and_back() {
        let fake = Arc::new(Fake::root());
        let sb = Sandbox::detect(fake.clone());
        fake.calls.lock().unwrap().clear();
        sb.lend_dir(Path::new("/data/build"), &spec()).unwrap();
        sb.reclaim_dir(Path::new("/data/build")).unwrap();
        assert_eq!(
            fake.calls.lock().unwrap().clone(),
            ["chown /data/build 65534:65534", "chown /data/build 0:0"]
        );
        // Not root: the sandbox user is the server's own uid; nothing to hand over.
        let mut user = Fake::root();
        user.euid = 1000;
        let user = Arc::new(user);
        let sb = Sandbox::detect(user.clone());
        user.calls.lock().unwrap().clear();
        sb.lend_dir(Path::new("/data/build"), &spec()).unwrap();
        sb.reclaim_dir(Path::new("/data/build")).unwrap();
        assert!(user.calls.lock().unwrap().is_empty());
    }

    #[test]
    fn tmp_is_resized_only_where_it_can_be() {
        let fake = Arc::new(Fake::root());
        let sb = Sandbox::detect(fake.clone());
        assert!(sb.can_resize_tmp());
        sb.resize_tmp(42, 128).unwrap();
        assert!(
            fake.calls
                .lock()
                .unwrap()
                .contains(&format!("resize 42 /tmp {}", 128u64 << 20))
        );
        let mut user = Fake::root();
        user.euid = 1000;
        let sb = Sandbox::detect(Arc::new(user));
        assert!(!sb.can_resize_tmp());
        assert!(sb.resize_tmp(42, 128).is_err());
    }

    #[test]
    fn the_working_directory_maps_back_to_the_host_without_bwrap() {
        let mut sp = SandboxSpec::new("/srv/build");
        assert_eq!(sp.host_cwd(), PathBuf::from("/srv/build"));
        sp.cwd_inside = PathBuf::from("/code/function");
        assert_eq!(sp.host_cwd(), PathBuf::from("/srv/build/function"));
        sp.cwd_inside = PathBuf::from("/tmp");
        assert_eq!(sp.host_cwd(), PathBuf::from("/srv/build"));
    }
}
