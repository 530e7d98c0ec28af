//! Parsing of `/proc/self/mountinfo` and `/proc/self/cgroup`, kept pure so it can be tested on
//! fixture text: where the cgroup hierarchies are mounted, and where this process sits in them.

use std::path::{Component, Path, PathBuf};

/// One line of `/proc/<pid>/mountinfo` (see proc(5)), reduced to what cgroup discovery needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The path inside the mounted filesystem that is the root of this mount (`/` unless a
    /// bind mount or a cgroup namespace shows only a subtree).
    pub root: String,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    /// Per-superblock options; for cgroup v1 these name the controllers (`rw,memory`).
    pub super_options: Vec<String>,
}

impl MountEntry {
    pub fn has_super_option(&self, opt: &str) -> bool {
        self.super_options.iter().any(|o| o == opt)
    }
}

/// Undoes the octal escapes (`\040` for a space, `\011`, `\012`, `\134`) of mountinfo paths.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text. Malformed lines are skipped (the kernel format is stable, but a
/// parser of kernel text should not be the thing that crashes a server).
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            // `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
            let (left, right) = line.split_once(" - ")?;
            let mut l = left.split(' ');
            let _id = l.next()?;
            let _parent = l.next()?;
            let _dev = l.next()?;
            let root = unescape(l.next()?);
            let mount_point = PathBuf::from(unescape(l.next()?));
            let mut r = right.split(' ');
            let fs_type = r.next()?.to_string();
            let source = unescape(r.next()?);
            let super_options = r
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::to_string)
                .collect();
            Some(MountEntry {
                root,
                mount_point,
                fs_type,
                source,
                super_options,
            })
        })
        .collect()
}

/// One line of `/proc/<pid>/cgroup`: `hierarchy-id:controller-list:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCgroup {
    pub hierarchy_id: u32,
    /// Empty for the v2 unified hierarchy.
    pub controllers: Vec<String>,
    pub path: String,
}

pub fn parse_proc_cgroup(text: &str) -> Vec<ProcCgroup> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hierarchy_id = parts.next()?.parse().ok()?;
            let controllers = parts.next()?;
            let path = parts.next()?.to_string();
            let controllers = if controllers.is_empty() {
                Vec::new()
            } else {
                controllers.split(',').map(str::to_string).collect()
            };
            Some(ProcCgroup {
                hierarchy_id,
                controllers,
                path,
            })
        })
        .collect()
}

/// This process's path in the v1 hierarchy that carries `controller`.
pub fn v1_cgroup_path<'a>(entries: &'a [ProcCgroup], controller: &str) -> Option<&'a str> {
    entries
        .iter()
        .find(|e| e.hierarchy_id != 0 && e.controllers.iter().any(|c| c == controller))
        .map(|e| e.path.as_str())
}

/// This process's path in the v2 unified hierarchy.
pub fn v2_cgroup_path(entries: &[ProcCgroup]) -> Option<&str> {
    entries
        .iter()
        .find(|e| e.hierarchy_id == 0 && e.controllers.is_empty())
        .map(|e| e.path.as_str())
}

/// The v1 mount carrying `controller` (e.g. `memory`), preferring one whose root contains
/// `cgroup_path` when the hierarchy is mounted more than once.
pub fn v1_mount<'a>(
    mounts: &'a [MountEntry],
    controller: &str,
    cgroup_path: &str,
) -> Option<&'a MountEntry> {
    let mut candidates = mounts
        .iter()
        .filter(|m| m.fs_type == "cgroup" && m.has_super_option(controller));
    best_mount(&mut candidates, cgroup_path)
}

/// The cgroup2 mount, with the same preference as [`v1_mount`].
pub fn v2_mount<'a>(mounts: &'a [MountEntry], cgroup_path: &str) -> Option<&'a MountEntry> {
    let mut candidates = mounts.iter().filter(|m| m.fs_type == "cgroup2");
    best_mount(&mut candidates, cgroup_path)
}

fn best_mount<'a>(
    candidates: &mut dyn Iterator<Item = &'a MountEntry>,
    cgroup_path: &str,
) -> Option<&'a MountEntry> {
    let all: Vec<&MountEntry> = candidates.collect();
    all.iter()
        .find(|m| strip_root(&m.root, cgroup_path).is_some())
        .or(all.first())
        .copied()
}

fn strip_root<'a>(root: &str, path: &'a str) -> Option<&'a str> {
    let root = root.trim_end_matches('/');
    if root.is_empty() {
        return Some(path);
    }
    let rest = path.strip_prefix(root)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// The directory of `cgroup_path` (as printed in `/proc/self/cgroup`) under `mount`. Only
/// normal components are kept, so a hostile or odd path cannot climb out of the mount.
/// When the path is not under the mount's root (this process is outside the visible
/// subtree), the mount point itself is returned.
pub fn cgroup_dir(mount: &MountEntry, cgroup_path: &str) -> PathBuf {
    let rel = strip_root(&mount.root, cgroup_path).unwrap_or("/");
    let mut dir = mount.mount_point.clone();
    for c in Path::new(rel).components() {
        if let Component::Normal(n) = c {
            dir.push(n);
        }
    }
    dir
}

/// The number after `key` in `key value` lines (`memory.events`, `memory.oom_control`, `memory.stat`).
pub fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == key).then_some(())?;
        it.next()?.parse().ok()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A hybrid machine: v1 controllers mounted one per directory, plus an empty unified mount.
    const HYBRID: &str = "\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const HYBRID_SELF: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/process_api/dd0f9029
2:cpuacct:/
1:cpu:/
0::/
";

    /// A systemd unified-only machine, with optional fields and an escaped mount point.
    const UNIFIED: &str = "\
25 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw
27 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
90 25 0:50 / /mnt/my\\040disk rw,relatime shared:40 - ext4 /dev/sdb1 rw
";

    #[test]
    fn finds_separately_mounted_v1_memory_controller() {
        let mounts = parse_mountinfo(HYBRID);
        assert_eq!(mounts.len(), 8);
        let own = parse_proc_cgroup(HYBRID_SELF);
        let path = v1_cgroup_path(&own, "memory").unwrap();
        assert_eq!(path, "/process_api/dd0f9029");
        let m = v1_mount(&mounts, "memory", path).unwrap();
        assert_eq!(m.mount_point, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(
            cgroup_dir(m, path),
            PathBuf::from("/sys/fs/cgroup/memory/process_api/dd0f9029")
        );
        // `name=systemd` is not a controller called `systemd`, and cpu is not cpuacct.
        assert!(v1_mount(&mounts, "systemd", "/").is_none());
        assert_eq!(
            v1_mount(&mounts, "cpu", "/").unwrap().mount_point,
            PathBuf::from("/sys/fs/cgroup/cpu")
        );
        // The unified mount is there too, at the root of the v2 hierarchy.
        assert_eq!(v2_cgroup_path(&own), Some("/"));
        let u = v2_mount(&mounts, "/").unwrap();
        assert_eq!(cgroup_dir(u, "/"), PathBuf::from("/sys/fs/cgroup/unified"));
    }

    #[test]
    fn parses_unified_hierarchy_and_escapes() {
        let mounts = parse_mountinfo(UNIFIED);
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[2].mount_point, PathBuf::from("/mnt/my disk"));
        let m = v2_mount(&mounts, "/system.slice/nimbus.service").unwrap();
        assert!(m.has_super_option("nsdelegate"));
        assert!(v1_mount(&mounts, "memory", "/").is_none());
        let own = parse_proc_cgroup("0::/system.slice/nimbus.service\n");
        assert!(v1_cgroup_path(&own, "memory").is_none());
        let p = v2_cgroup_path(&own).unwrap();
        assert_eq!(
            cgroup_dir(m, p),
            PathBuf::from("/sys/fs/cgroup/system.slice/nimbus.service")
        );
    }

    #[test]
    fn combined_controllers_and_mount_roots() {
        let text = "\
30 25 0:27 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
31 25 0:28 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        let mounts = parse_mountinfo(text);
        assert!(v1_mount(&mounts, "cpuacct", "/").is_some());
        let m = v1_mount(&mounts, "memory", "/docker/abc").unwrap();
        assert_eq!(
            cgroup_dir(m, "/docker/abc"),
            PathBuf::from("/sys/fs/cgroup/memory")
        );
        assert_eq!(
            cgroup_dir(m, "/docker/abc/sub"),
            PathBuf::from("/sys/fs/cgroup/memory/sub")
        );
        // Not under the visible root, or trying to climb: stay at the mount point.
        assert_eq!(
            cgroup_dir(m, "/docker/abcdef"),
            PathBuf::from("/sys/fs/cgroup/memory")
        );
        assert_eq!(
            cgroup_dir(m, "/docker/abc/../../x"),
            PathBuf::from("/sys/fs/cgroup/memory/x")
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert!(parse_mountinfo("garbage\n\n1 2 3\n").is_empty());
        assert!(parse_proc_cgroup("x:y\nnot a number:memory:/\n").is_empty());
    }

    #[test]
    fn keyed_values() {
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_value(oom_control, "oom_kill"), Some(3));
        assert_eq!(keyed_value(oom_control, "oom"), None);
        let events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed_value(events, "oom_kill"), Some(1));
        assert_eq!(keyed_value(events, "max"), Some(12));
    }
}
