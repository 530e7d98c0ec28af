//! Linux isolation for Nimbus function instances.
//!
//! - [`Sandbox`] turns "run this program for a function instance" into a sandboxed process:
//!   new mount, PID, IPC, UTS, network (and cgroup) namespaces, a read-only root filesystem
//!   assembled from binds, a private `/tmp`, an unprivileged uid with no capabilities,
//!   `no_new_privs`, a seccomp filter ([`seccomp`], policy in `policy/seccomp.json`), rlimits,
//!   and optionally outbound network through slirp4netns, filtered by the server's egress
//!   policy with nftables rules inside the sandbox's network namespace ([`egress_ruleset`]). It is built on bubblewrap (`bwrap`);
//!   every privileged operation goes through [`HostOps`], so the setup logic is unit-tested
//!   with a test double. See `docs/sandbox.md`.
//! - [`cgroup`]: one cgroup per instance (memory, pids, CPU share, freezer), v1 or v2.
//! - [`job`]: a one-shot command (a build step) run to completion in the sandbox with limits.

pub mod cgroup;
pub mod host;
pub mod job;
pub mod sandbox;
pub mod seccomp;

pub use cgroup::{
    CgroupError, CgroupHandle, CgroupLimits, CgroupManager, CgroupVersion, Controllers, detect,
};
pub use host::{Entry, HostOps, RealHost};
pub use job::{Job, JobEnd, JobOutput, run_job};
pub use sandbox::{
    CODE_DIR, ChildSetup, LAUNCHER_DIR, Layers, NetHandle, Network, PathMap, PendingNetwork,
    Sandbox, SandboxError, SandboxSpec, Wrapped, egress_ruleset, host_loopback_ports,
};
