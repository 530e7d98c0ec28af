//! The host operations the sandbox needs, behind [`HostOps`] so the setup logic can be tested
//! without root: what exists on the machine, whether a tool works, cgroup detection,
//! spawning helper processes (slirp4netns) and running a tool inside a sandbox's network
//! namespace (nft).

use crate::cgroup::{self, CgroupManager};
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

/// What a path is on the host (symlinks are not followed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Missing,
    Dir,
    File,
    /// A symbolic link and its target as written (e.g. `/lib -> usr/lib` on merged-/usr).
    Symlink(PathBuf),
}

/// Privileged or environment-dependent operations.
pub trait HostOps: Send + Sync + fmt::Debug {
    /// Effective uid of the server.
    fn euid(&self) -> u32;
    /// Finds an executable by name in the usual system directories.
    fn which(&self, name: &str) -> Option<PathBuf>;
    /// What `path` is.
    fn entry(&self, path: &Path) -> Entry;
    /// Runs `program args` to completion with no input; `Err` carries stderr or the reason.
    fn probe(&self, program: &Path, args: &[OsString]) -> Result<(), String>;
    /// A cgroup manager, if this machine lets us use one.
    fn cgroups(&self) -> Option<Arc<dyn CgroupManager>>;
    /// Starts a helper (slirp4netns) that inherits the descriptors `inherit` (which are
    /// close-on-exec in this process).
    fn spawn_helper(
        &self,
        program: &Path,
        args: &[OsString],
        inherit: &[RawFd],
    ) -> io::Result<Child>;
    /// Runs `program args` to completion inside the network namespace of process `pid`, with
    /// `input` on its stdin (`nft -f -` loading a sandbox's egress rules); `Err` carries
    /// stderr or the reason.
    fn run_in_netns(
        &self,
        pid: u32,
        program: &Path,
        args: &[OsString],
        input: &[u8],
    ) -> Result<(), String> {
        let _ = (pid, program, args, input);
        Err("entering a sandbox's network namespace is not supported by this host".into())
    }
    /// Effective gid of the server.
    fn egid(&self) -> u32 {
        nix::unistd::getegid().as_raw()
    }
    /// Changes the owner of `dir` and everything under it, never following symbolic links.
    fn chown_tree(&self, dir: &Path, uid: u32, gid: u32) -> io::Result<()> {
        let _ = (dir, uid, gid);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "changing owners is not supported by this host",
        ))
    }
    /// Sets the size of the tmpfs mounted at `target` inside the sandbox started by bubblewrap
    /// process `bwrap_pid` (a remount in that sandbox's mount namespace; needs root).
    fn resize_tmpfs(&self, bwrap_pid: u32, target: &Path, size_bytes: u64) -> io::Result<()> {
        let _ = (bwrap_pid, target, size_bytes);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "resizing a sandbox's tmpfs is not supported by this host",
        ))
    }
}

/// The real machine.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealHost;

const SYSTEM_DIRS: [&str; 6] = [
    "/usr/local/bin",
    "/usr/bin",
    "/bin",
    "/usr/local/sbin",
    "/usr/sbin",
    "/sbin",
];

impl HostOps for RealHost {
    fn euid(&self) -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn which(&self, name: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(SYSTEM_DIRS.iter().map(PathBuf::from))
            .map(|d| d.join(name))
            .find(|p| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::metadata(p)
                    .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false)
            })
    }

    fn entry(&self, path: &Path) -> Entry {
        match std::fs::symlink_metadata(path) {
            Err(_) => Entry::Missing,
            Ok(m) if m.file_type().is_symlink() => std::fs::read_link(path)
                .map(Entry::Symlink)
                .unwrap_or(Entry::Missing),
            Ok(m) if m.is_dir() => Entry::Dir,
            Ok(_) => Entry::File,
        }
    }

    fn probe(&self, program: &Path, args: &[OsString]) -> Result<(), String> {
        let out = Command::new(program)
            .args(args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed ({}): {}",
                program.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn cgroups(&self) -> Option<Arc<dyn CgroupManager>> {
        cgroup::detect()
    }

    fn spawn_helper(
        &self,
        program: &Path,
        args: &[OsString],
        inherit: &[RawFd],
    ) -> io::Result<Child> {
        let fds: Vec<RawFd> = inherit.to_vec();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let hook = move || -> io::Result<()> {
            for &fd in &fds {
                // SAFETY: fcntl on a descriptor number; no memory is touched.
                if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        };
        // SAFETY: the hook only calls fcntl (async-signal-safe) and does not allocate.
        unsafe {
            cmd.pre_exec(hook);
        }
        cmd.spawn()
    }

    fn run_in_netns(
        &self,
        pid: u32,
        program: &Path,
        args: &[OsString],
        input: &[u8],
    ) -> Result<(), String> {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        // Opened here, joined in the child: the process keeps its own namespaces.
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
            .map_err(|e| format!("cannot open the network namespace of {pid}: {e}"))?;
        let fd = ns.as_raw_fd();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let hook = move || -> io::Result<()> {
            // SAFETY: setns on a descriptor number; no memory is touched.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY: the hook only calls setns (async-signal-safe) and does not allocate.
        unsafe {
            cmd.pre_exec(hook);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        // A write error (the program exited early) is reported after its own stderr.
        let written = child.stdin.take().map(|mut stdin| stdin.write_all(input));
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for {}: {e}", program.display()))?;
        drop(ns);
        if out.status.success() {
            match written {
                Some(Err(e)) => Err(format!("writing to {}: {e}", program.display())),
                _ => Ok(()),
            }
        } else {
            Err(format!(
                "{} failed ({}): {}",
                program.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn chown_tree(&self, dir: &Path, uid: u32, gid: u32) -> io::Result<()> {
        // Iterative: a tree written by untrusted code may be arbitrarily deep.
        let mut stack = vec![dir.to_path_buf()];
        while let Some(p) = stack.pop() {
            std::os::unix::fs::lchown(&p, Some(uid), Some(gid))?;
            let meta = std::fs::symlink_metadata(&p)?;
            if meta.is_dir() {
                for e in std::fs::read_dir(&p)? {
                    stack.push(e?.path());
                }
            }
        }
        Ok(())
    }

    fn resize_tmpfs(&self, bwrap_pid: u32, target: &Path, size_bytes: u64) -> io::Result<()> {
        let inner = sandbox_process(bwrap_pid)?;
        let ns = std::fs::File::open(format!("/proc/{inner}/ns/mnt"))?;
        let root = std::fs::File::open(format!("/proc/{inner}/root"))?;
        // The pid read from `children` could have been reused before the opens: check that it
        // is still bubblewrap's child, now that the descriptors pin its namespace and root.
        if parent_pid(inner)? != bwrap_pid {
            return Err(io::Error::other("the sandbox's process went away"));
        }
        if std::fs::read_link(format!("/proc/{inner}/ns/mnt"))?
            == std::fs::read_link("/proc/self/ns/mnt")?
        {
            return Err(io::Error::other(
                "the sandbox has no mount namespace of its own",
            ));
        }
        let target = target.to_path_buf();
        // setns(CLONE_NEWNS) changes the calling thread's root and cwd, which threads share
        // unless unshared: a throw-away thread does it with its own (CLONE_FS) and exits, so no
        // thread of the server ever runs in the sandbox's namespace.
        std::thread::Builder::new()
            .name("nimbus-tmpfs".into())
            .spawn(move || remount_in(&ns, &root, &target, size_bytes))?
            .join()
            .map_err(|_| io::Error::other("the remount thread panicked"))?
    }
}

/// The first child of bubblewrap `bwrap_pid`: the sandbox's init, in the new namespaces.
fn sandbox_process(bwrap_pid: u32) -> io::Result<u32> {
    let text = std::fs::read_to_string(format!("/proc/{bwrap_pid}/task/{bwrap_pid}/children"))?;
    text.split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the sandbox has no process"))
}

/// The parent pid from `/proc/<pid>/stat` (the field after the parenthesised command name).
fn parent_pid(pid: u32) -> io::Result<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| io::Error::other(format!("unexpected /proc/{pid}/stat")))
}

/// Runs on its own thread: enters the mount namespace `ns`, moves to the sandbox's `root`, and
/// remounts the tmpfs at `target` with `size=`, keeping its mount flags (a remount without
/// `nosuid`/`nodev` would clear them).
fn remount_in(
    ns: &std::fs::File,
    root: &std::fs::File,
    target: &Path,
    size_bytes: u64,
) -> io::Result<()> {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, setns, unshare};
    use nix::sys::statvfs::{FsFlags, statvfs};
    unshare(CloneFlags::CLONE_FS)?;
    setns(ns, CloneFlags::CLONE_NEWNS)?;
    nix::unistd::fchdir(root)?;
    nix::unistd::chroot(".")?;
    let rel = target.strip_prefix("/").unwrap_or(target);
    let fs = nix::sys::statfs::statfs(rel)?;
    if fs.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC {
        return Err(io::Error::other(format!(
            "{} in the sandbox is not a tmpfs",
            target.display()
        )));
    }
    let current = statvfs(rel)?.flags();
    let mut flags = MsFlags::MS_REMOUNT;
    for (st, ms) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if current.contains(st) {
            flags |= ms;
        }
    }
    mount(
        None::<&str>,
        rel,
        None::<&str>,
        flags,
        Some(format!("size={size_bytes}").as_str()),
    )?;
    Ok(())
}
