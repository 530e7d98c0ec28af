//! The seccomp policy: a reviewed data file (`policy/seccomp.json`, in the JSON format of the
//! rust-vmm `seccompiler` crate, every rule carrying a `comment` that says why it is there),
//! compiled to classic BPF for the machine's architecture.
//!
//! The policy is a deny list: everything is allowed except the listed system calls, which fail
//! with `EPERM` (filter `deny_eperm`) or `ENOSYS` (filter `deny_enosys`, for calls whose
//! callers must fall back to something else: `clone3`, `io_uring_*`). seccompiler gives one
//! match action per filter, so the two are compiled separately and both installed; the kernel
//! runs every installed filter and applies the most restrictive answer.
//!
//! A deny list must also close the x32 ABI door on x86_64 (syscall numbers with bit 30 set reach
//! the same kernel code under other numbers): each program is prefixed with a guard that
//! answers `ENOSYS` to any number at or above `0x4000_0000`.

use seccompiler::{BpfProgram, TargetArch};
use std::collections::BTreeSet;

/// The policy file, embedded at build time (so the server cannot run with a policy other than
/// the reviewed one).
pub const POLICY_JSON: &str = include_str!("../policy/seccomp.json");

/// The filters of the policy, in installation order.
pub const FILTER_NAMES: [&str; 2] = ["deny_eperm", "deny_enosys"];

/// First x32 syscall number (`__X32_SYSCALL_BIT`).
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// One program per entry of [`FILTER_NAMES`].
    pub programs: Vec<Vec<libc::sock_filter>>,
}

impl CompiledPolicy {
    /// A program as the bytes `bwrap --add-seccomp-fd` reads (`struct sock_filter` array,
    /// native endianness).
    pub fn program_bytes(&self, index: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for ins in self.programs.get(index).map(Vec::as_slice).unwrap_or(&[]) {
            out.extend_from_slice(&ins.code.to_ne_bytes());
            out.push(ins.jt);
            out.push(ins.jf);
            out.extend_from_slice(&ins.k.to_ne_bytes());
        }
        out
    }
}

/// The architecture we were built for, as seccompiler names it.
pub fn target_arch() -> Result<TargetArch, String> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| format!("{e:?}"))
}

/// Compiles the embedded policy for this machine.
pub fn compile() -> Result<CompiledPolicy, String> {
    compile_policy(POLICY_JSON, target_arch()?)
}

/// Compiles `json` (seccompiler's format) for `arch`.
pub fn compile_policy(json: &str, arch: TargetArch) -> Result<CompiledPolicy, String> {
    let mut map = seccompiler::compile_from_json(json.as_bytes(), arch)
        .map_err(|e| format!("seccomp policy: {e}"))?;
    let mut programs = Vec::new();
    for name in FILTER_NAMES {
        let prog: BpfProgram = map
            .remove(name)
            .ok_or_else(|| format!("seccomp policy: filter '{name}' is missing"))?;
        let mut out = x32_guard();
        out.extend(prog.into_iter().map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        }));
        programs.push(out);
    }
    if let Some(extra) = map.keys().next() {
        return Err(format!("seccomp policy: unknown filter '{extra}'"));
    }
    Ok(CompiledPolicy { programs })
}

fn x32_guard() -> Vec<libc::sock_filter> {
    let ins = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    const LD_W_ABS: u16 = 0x20;
    const JGE_K: u16 = 0x05 | 0x30;
    const RET_K: u16 = 0x06;
    vec![
        // A = seccomp_data.nr
        ins(LD_W_ABS, 0, 0, 0),
        // nr >= 0x40000000 ? next : skip one
        ins(JGE_K, 0, 1, X32_SYSCALL_BIT),
        ins(RET_K, 0, 0, 0x0005_0000 | libc::ENOSYS as u32),
    ]
}

/// The syscall names each filter of `json` lists (for documentation and tests).
pub fn listed_syscalls(json: &str) -> Result<Vec<(String, BTreeSet<String>)>, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("seccomp policy: {e}"))?;
    let obj = v.as_object().ok_or("seccomp policy: not a JSON object")?;
    let mut out = Vec::new();
    for (name, filter) in obj {
        let names = filter
            .get("filter")
            .and_then(|f| f.as_array())
            .map(|rules| {
                rules
                    .iter()
                    .filter_map(|r| r.get("syscall").and_then(|s| s.as_str()))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        out.push((name.clone(), names));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    /// What the kernel hands a filter (`struct seccomp_data`).
    pub struct Data {
        pub nr: u32,
        pub arch: u32,
        pub args: [u64; 6],
    }

    /// A small classic-BPF interpreter for the instructions seccompiler emits, so the compiled
    /// programs can be checked for what they answer, not just for what they contain.
    pub fn run(prog: &[libc::sock_filter], d: &Data) -> u32 {
        let word = |off: u32| -> u32 {
            match off {
                0 => d.nr,
                4 => d.arch,
                o if (16..64).contains(&o) => {
                    let i = ((o - 16) / 8) as usize;
                    if (o - 16) % 8 == 0 {
                        d.args[i] as u32
                    } else {
                        (d.args[i] >> 32) as u32
                    }
                }
                _ => panic!("unexpected load offset {off}"),
            }
        };
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                0x20 => a = word(i.k),
                0x54 => a &= i.k,
                0x05 => pc += i.k as usize,
                0x15 | 0x25 | 0x35 | 0x45 => {
                    let t = match i.code {
                        0x15 => a == i.k,
                        0x25 => a > i.k,
                        0x35 => a >= i.k,
                        _ => a & i.k != 0,
                    };
                    pc += if t { i.jt } else { i.jf } as usize;
                }
                0x06 => return i.k,
                c => panic!("unexpected BPF opcode {c:#x}"),
            }
        }
    }

    pub const ALLOW: u32 = 0x7fff_0000;
    pub const EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;
    pub const ENOSYS: u32 = 0x0005_0000 | libc::ENOSYS as u32;

    /// Both filters, as the kernel combines them (the most restrictive answer wins; ERRNO beats
    /// ALLOW).
    pub fn verdict(p: &CompiledPolicy, nr: i64, args: [u64; 6]) -> u32 {
        let arch = match std::env::consts::ARCH {
            "x86_64" => 0xC000_003E,
            "aarch64" => 0xC000_00B7,
            other => panic!("untested arch {other}"),
        };
        let d = Data {
            nr: nr as u32,
            arch,
            args,
        };
        p.programs
            .iter()
            .map(|prog| run(prog, &d))
            .min_by_key(|r| r & 0xffff_0000)
            .unwrap()
    }

    #[test]
    fn policy_parses_compiles_and_denies_what_it_lists() {
        let p = compile().unwrap();
        assert_eq!(p.programs.len(), 2);
        let z = [0u64; 6];
        for nr in [
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_ptrace,
            libc::SYS_kexec_load,
            libc::SYS_kexec_file_load,
            libc::SYS_bpf,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_delete_module,
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_request_key,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_perf_event_open,
            libc::SYS_userfaultfd,
            libc::SYS_reboot,
            libc::SYS_swapon,
            libc::SYS_swapoff,
            libc::SYS_acct,
            libc::SYS_open_by_handle_at,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
        ] {
            assert_eq!(verdict(&p, nr, z), EPERM, "syscall {nr}");
        }
        assert_eq!(verdict(&p, libc::SYS_clone3, z), ENOSYS);
        assert_eq!(verdict(&p, libc::SYS_io_uring_setup, z), ENOSYS);
        // Ordinary calls pass.
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_socket,
        ] {
            assert_eq!(verdict(&p, nr, z), ALLOW, "syscall {nr}");
        }
    }

    #[test]
    fn clone_is_denied_only_with_namespace_flags() {
        let p = compile().unwrap();
        let clone = |flags: u64| verdict(&p, libc::SYS_clone, [flags, 0, 0, 0, 0, 0]);
        // fork() and pthread_create()'s flags.
        assert_eq!(clone(libc::SIGCHLD as u64), ALLOW);
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        assert_eq!(clone(thread), ALLOW);
        for f in [
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWNS,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWCGROUP,
        ] {
            assert_eq!(clone(f as u64 | libc::SIGCHLD as u64), EPERM, "{f:#x}");
        }
    }

    #[test]
    fn personality_query_allowed_aslr_disable_denied() {
        let p = compile().unwrap();
        let pers = |v: u64| verdict(&p, libc::SYS_personality, [v, 0, 0, 0, 0, 0]);
        assert_eq!(pers(0xffff_ffff), ALLOW);
        assert_eq!(pers(0), ALLOW);
        assert_eq!(pers(0x0040000), EPERM);
        assert_eq!(pers(0x0400000), EPERM);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn x32_numbers_are_refused() {
        let p = compile().unwrap();
        let x32_mount = 0x4000_0000 | libc::SYS_mount;
        assert_eq!(verdict(&p, x32_mount, [0; 6]), ENOSYS);
    }

    #[test]
    fn every_rule_says_why_and_names_are_listed() {
        let v: serde_json::Value = serde_json::from_str(POLICY_JSON).unwrap();
        for name in FILTER_NAMES {
            for rule in v[name]["filter"].as_array().unwrap() {
                let why = rule["comment"].as_str().unwrap_or("");
                assert!(why.len() > 10, "rule without a reason: {rule}");
            }
        }
        let listed = listed_syscalls(POLICY_JSON).unwrap();
        let eperm = &listed.iter().find(|(n, _)| n == "deny_eperm").unwrap().1;
        for s in [
            "mount", "ptrace", "bpf", "keyctl", "unshare", "setns", "clone",
        ] {
            assert!(eperm.contains(s), "{s}");
        }
        // A typo in a syscall name is a compile error, not a silently allowed call.
        let bad = POLICY_JSON.replacen("\"mount\"", "\"mount_typo\"", 1);
        assert!(compile_policy(&bad, target_arch().unwrap()).is_err());
    }

    #[test]
    fn program_bytes_are_eight_per_instruction() {
        let p = compile().unwrap();
        assert_eq!(p.program_bytes(0).len(), p.programs[0].len() * 8);
        assert!(p.program_bytes(9).is_empty());
    }
}
