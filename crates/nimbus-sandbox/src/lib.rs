//! Linux isolation primitives for Nimbus instances.
//!
//! For now this is resource control with cgroups ([`cgroup`]): one cgroup per instance, under a
//! `nimbus` parent, with a memory limit and an OOM-kill check. Namespaces and seccomp come later.

pub mod cgroup;

pub use cgroup::{CgroupError, CgroupHandle, CgroupManager, CgroupVersion, detect};
