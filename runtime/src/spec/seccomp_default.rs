//! A seccomp profile of the same effect as containerd 1.6's default (`contrib/seccomp`): deny
//! with EPERM by default, allow the listed syscalls, allow more as the bounding capability set
//! grants them, and keep `clone` from creating namespaces unless CAP_SYS_ADMIN is held. The
//! syscall lists are those containerd 1.6.20 writes into a spec on this architecture.

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

use crate::{Error, Result};

/// Syscalls every container may make.
pub const ALLOWED_SYSCALLS: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socket",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// `personality(2)` values a container may set: PER_LINUX, PER_LINUX32, UNAME26,
/// UNAME26|PER_LINUX32, and 0xffffffff, which only queries.
const PERSONALITIES: [u64; 5] = [0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];

/// The namespace flags `clone` may not carry without CAP_SYS_ADMIN.
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// Syscalls a capability in the bounding set adds.
pub fn capability_syscalls(cap: Capability) -> &'static [&'static str] {
    match cap {
        Capability::DacReadSearch => &["open_by_handle_at"],
        Capability::SysAdmin => &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
        Capability::SysBoot => &["reboot"],
        Capability::SysChroot => &["chroot"],
        Capability::SysModule => &["delete_module", "init_module", "finit_module"],
        Capability::SysPacct => &["acct"],
        Capability::SysPtrace => &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
        Capability::SysRawio => &["iopl", "ioperm"],
        Capability::SysTime => &["settimeofday", "stime", "clock_settime", "clock_settime64"],
        Capability::SysTtyConfig => &["vhangup"],
        Capability::SysNice => &["get_mempolicy", "mbind", "set_mempolicy"],
        Capability::Syslog => &["syslog"],
        Capability::Bpf => &["bpf"],
        Capability::Perfmon => &["perf_event_open"],
        _ => &[],
    }
}

/// The seccomp architectures of this build: the native one and its compat ABIs.
pub fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchArm, Arch::ScmpArchAarch64]
    } else if cfg!(target_arch = "s390x") {
        vec![Arch::ScmpArchS390, Arch::ScmpArchS390x]
    } else {
        Vec::new()
    }
}

/// Syscalls only some architectures have.
fn arch_syscalls() -> &'static [&'static str] {
    if cfg!(target_arch = "x86_64") {
        &["arch_prctl", "modify_ldt"]
    } else if cfg!(target_arch = "x86") {
        &["modify_ldt"]
    } else if cfg!(any(target_arch = "aarch64", target_arch = "arm")) {
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ]
    } else if cfg!(target_arch = "s390x") {
        &[
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ]
    } else {
        &[]
    }
}

fn allow(names: &[&str], args: Option<Vec<LinuxSeccompArg>>) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names.iter().map(|n| n.to_string()).collect());
    s.set_action(LinuxSeccompAction::ScmpActAllow);
    s.set_args(args);
    s
}

fn arg(
    index: usize,
    value: u64,
    value_two: Option<u64>,
    op: LinuxSeccompOperator,
) -> Result<LinuxSeccompArg> {
    let mut b = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .op(op);
    if let Some(v) = value_two {
        b = b.value_two(v);
    }
    b.build()
        .map_err(|e| Error::Seccomp(format!("building the default profile: {e}")))
}

/// The default profile for a process whose bounding capability set is `bounding`.
pub fn default_profile(bounding: &[Capability]) -> Result<LinuxSeccomp> {
    let mut rules = vec![allow(ALLOWED_SYSCALLS, None)];
    for p in PERSONALITIES {
        rules.push(allow(
            &["personality"],
            Some(vec![arg(0, p, None, LinuxSeccompOperator::ScmpCmpEq)?]),
        ));
    }
    // containerd allows ptrace unconditionally on kernels >= 4.8, where it can no longer
    // bypass seccomp; older kernels are not supported here.
    rules.push(allow(&["ptrace"], None));
    if !arch_syscalls().is_empty() {
        rules.push(allow(arch_syscalls(), None));
    }
    let mut admin = false;
    for &cap in bounding {
        admin |= cap == Capability::SysAdmin;
        let extra = capability_syscalls(cap);
        if !extra.is_empty() {
            rules.push(allow(extra, None));
        }
    }
    if !admin {
        // s390 passes the clone flags in the second argument.
        let flags_index = if cfg!(target_arch = "s390x") { 1 } else { 0 };
        rules.push(allow(
            &["clone"],
            Some(vec![arg(
                flags_index,
                CLONE_NAMESPACE_FLAGS,
                Some(0),
                LinuxSeccompOperator::ScmpCmpMaskedEq,
            )?]),
        ));
        // ENOSYS rather than EPERM makes libc fall back to clone, whose flags can be checked.
        let mut clone3 = LinuxSyscall::default();
        clone3.set_names(vec!["clone3".to_string()]);
        clone3.set_action(LinuxSeccompAction::ScmpActErrno);
        clone3.set_errno_ret(Some(libc::ENOSYS as u32));
        rules.push(clone3);
    }
    let mut s = LinuxSeccomp::default();
    s.set_default_action(LinuxSeccompAction::ScmpActErrno);
    s.set_architectures(Some(architectures()));
    s.set_syscalls(Some(rules));
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::security::DEFAULT_CAPABILITIES;
    use serde_json::json;

    fn rules_without_base(p: &LinuxSeccomp) -> Vec<serde_json::Value> {
        let v = serde_json::to_value(p).unwrap();
        v["syscalls"].as_array().unwrap()[1..].to_vec()
    }

    #[test]
    fn base_list_is_containerds() {
        assert_eq!(ALLOWED_SYSCALLS.len(), 349);
        let mut sorted = ALLOWED_SYSCALLS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ALLOWED_SYSCALLS.len(), "no duplicates");
        for must in [
            "read",
            "write",
            "execve",
            "socket",
            "io_uring_setup",
            "clock_adjtime",
            "rseq",
        ] {
            assert!(ALLOWED_SYSCALLS.contains(&must), "{must}");
        }
        for never in [
            "mount",
            "unshare",
            "setns",
            "bpf",
            "kexec_load",
            "clone",
            "clone3",
            "ptrace",
        ] {
            assert!(!ALLOWED_SYSCALLS.contains(&never), "{never}");
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn default_capabilities_match_containerd_shape() {
        // What containerd 1.6.20 writes for the default capability set on x86_64 (rules after
        // the base list).
        let p = default_profile(&DEFAULT_CAPABILITIES).unwrap();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["defaultAction"], "SCMP_ACT_ERRNO");
        assert!(v.get("defaultErrnoRet").is_none());
        assert_eq!(
            v["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        let personality = |value: u64| json!({"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}]});
        assert_eq!(
            rules_without_base(&p),
            vec![
                personality(0),
                personality(8),
                personality(131072),
                personality(131080),
                personality(4294967295),
                json!({"names": ["ptrace"], "action": "SCMP_ACT_ALLOW"}),
                json!({"names": ["arch_prctl", "modify_ldt"], "action": "SCMP_ACT_ALLOW"}),
                json!({"names": ["chroot"], "action": "SCMP_ACT_ALLOW"}),
                json!({"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 2114060288u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}),
                json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}),
            ]
        );
        // SCMP_ACT_ERRNO without errnoRet is EPERM.
        assert_eq!(
            p.default_action().as_u32(p.default_errno_ret()),
            0x0005_0000 | libc::EPERM as u32
        );
    }

    #[test]
    fn sys_admin_lifts_the_clone_filter() {
        let mut caps = DEFAULT_CAPABILITIES.to_vec();
        caps.push(Capability::SysAdmin);
        caps.push(Capability::SysPtrace);
        let p = default_profile(&caps).unwrap();
        let rules = p.syscalls().clone().unwrap();
        let admin = rules
            .iter()
            .find(|r| r.names().contains(&"mount".to_string()))
            .unwrap();
        for n in [
            "clone",
            "clone3",
            "unshare",
            "setns",
            "sethostname",
            "umount2",
        ] {
            assert!(admin.names().contains(&n.to_string()), "{n}");
        }
        assert!(admin.args().is_none());
        assert!(
            !rules
                .iter()
                .any(|r| r.action() == LinuxSeccompAction::ScmpActErrno)
        );
        assert!(
            rules
                .iter()
                .any(|r| r.names().contains(&"pidfd_getfd".to_string()))
        );
        // Without CAP_SYS_ADMIN, mount is allowed nowhere.
        let p = default_profile(&DEFAULT_CAPABILITIES).unwrap();
        assert!(
            !p.syscalls()
                .clone()
                .unwrap()
                .iter()
                .any(|r| r.names().contains(&"mount".to_string()))
        );
    }

    #[test]
    fn every_listed_capability_adds_its_syscalls() {
        for cap in [
            Capability::DacReadSearch,
            Capability::SysBoot,
            Capability::SysModule,
            Capability::SysPacct,
            Capability::SysRawio,
            Capability::SysTime,
            Capability::SysTtyConfig,
            Capability::SysNice,
            Capability::Syslog,
            Capability::Bpf,
            Capability::Perfmon,
        ] {
            let p = default_profile(&[cap]).unwrap();
            let want = capability_syscalls(cap);
            assert!(!want.is_empty());
            assert!(
                p.syscalls().clone().unwrap().iter().any(|r| r
                    .names()
                    .iter()
                    .map(String::as_str)
                    .eq(want.iter().copied())),
                "{cap}"
            );
        }
        assert!(capability_syscalls(Capability::Chown).is_empty());
    }

    #[test]
    fn profile_round_trips_through_json() {
        let p = default_profile(&DEFAULT_CAPABILITIES).unwrap();
        let text = serde_json::to_string(&p).unwrap();
        let back: LinuxSeccomp = serde_json::from_str(&text).unwrap();
        assert_eq!(back, p);
    }
}
