//! Per-process settings of a container's init: rlimits, namespaced sysctls, oom_score_adj and
//! no_new_privs.

use std::collections::HashMap;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use oci_spec::runtime::{PosixRlimit, PosixRlimitType};

use crate::error::{Error, Result};
use crate::procfs::ProcRoot;
use crate::syscall::describe;

/// The kernel's name for an rlimit and nix's handle for it.
fn rlimit_resource(typ: PosixRlimitType) -> (&'static str, Resource) {
    match typ {
        PosixRlimitType::RlimitCpu => ("RLIMIT_CPU", Resource::RLIMIT_CPU),
        PosixRlimitType::RlimitFsize => ("RLIMIT_FSIZE", Resource::RLIMIT_FSIZE),
        PosixRlimitType::RlimitData => ("RLIMIT_DATA", Resource::RLIMIT_DATA),
        PosixRlimitType::RlimitStack => ("RLIMIT_STACK", Resource::RLIMIT_STACK),
        PosixRlimitType::RlimitCore => ("RLIMIT_CORE", Resource::RLIMIT_CORE),
        PosixRlimitType::RlimitRss => ("RLIMIT_RSS", Resource::RLIMIT_RSS),
        PosixRlimitType::RlimitNproc => ("RLIMIT_NPROC", Resource::RLIMIT_NPROC),
        PosixRlimitType::RlimitNofile => ("RLIMIT_NOFILE", Resource::RLIMIT_NOFILE),
        PosixRlimitType::RlimitMemlock => ("RLIMIT_MEMLOCK", Resource::RLIMIT_MEMLOCK),
        PosixRlimitType::RlimitAs => ("RLIMIT_AS", Resource::RLIMIT_AS),
        PosixRlimitType::RlimitLocks => ("RLIMIT_LOCKS", Resource::RLIMIT_LOCKS),
        PosixRlimitType::RlimitSigpending => ("RLIMIT_SIGPENDING", Resource::RLIMIT_SIGPENDING),
        PosixRlimitType::RlimitMsgqueue => ("RLIMIT_MSGQUEUE", Resource::RLIMIT_MSGQUEUE),
        PosixRlimitType::RlimitNice => ("RLIMIT_NICE", Resource::RLIMIT_NICE),
        PosixRlimitType::RlimitRtprio => ("RLIMIT_RTPRIO", Resource::RLIMIT_RTPRIO),
        PosixRlimitType::RlimitRttime => ("RLIMIT_RTTIME", Resource::RLIMIT_RTTIME),
    }
}

/// Sets each rlimit of the calling process. Raising a hard limit above the current one needs
/// CAP_SYS_RESOURCE; the error then says so, naming the rlimit.
pub fn apply_rlimits(rlimits: &[PosixRlimit]) -> Result<()> {
    for rlimit in rlimits {
        let (name, resource) = rlimit_resource(rlimit.typ());
        let (soft, hard) = (rlimit.soft(), rlimit.hard());
        if soft > hard {
            return Err(Error::InvalidSpec(format!(
                "rlimit {name}: soft limit {soft} is above hard limit {hard}"
            )));
        }
        if let Err(errno) = setrlimit(resource, soft, hard) {
            return Err(rlimit_error(name, resource, soft, hard, errno));
        }
    }
    Ok(())
}

fn rlimit_error(name: &str, resource: Resource, soft: u64, hard: u64, errno: Errno) -> Error {
    let op = format!("setrlimit {name} soft={soft} hard={hard}");
    if errno != Errno::EPERM {
        return Error::sys(op, errno);
    }
    let current_hard = getrlimit(resource).map(|(_, h)| h).ok();
    let mut why = Vec::new();
    if let Some(current) = current_hard.filter(|current| hard > *current) {
        why.push(format!(
            "the hard limit can only be raised above the current {current} with CAP_SYS_RESOURCE"
        ));
    }
    if resource == Resource::RLIMIT_NOFILE
        && let Some(nr_open) = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|nr_open| hard > *nr_open)
    {
        why.push(format!("it is above fs.nr_open ({nr_open})"));
    }
    if why.is_empty() {
        Error::sys(op, errno)
    } else {
        Error::InvalidArgument(format!("{op}: not permitted: {}", why.join("; ")))
    }
}

/// Whether `key` may be set in a container, and if not, why. `host_ipc`/`host_network` say
/// whether the container shares the host's IPC or network namespace, where its sysctls would
/// change the host.
fn sysctl_policy(key: &str, host_ipc: bool, host_network: bool) -> std::result::Result<(), String> {
    let ipc = key == "kernel.sem"
        || key.starts_with("kernel.shm")
        || key.starts_with("kernel.msg")
        || key.starts_with("fs.mqueue.");
    if ipc {
        return if host_ipc {
            Err("it is an IPC sysctl and the container shares the host's IPC namespace".into())
        } else {
            Ok(())
        };
    }
    // runc allows the domain name with a UTS namespace of the container's own; a pod has its
    // own UTS namespace exactly when it has its own network. The host name is the spec's
    // `hostname`, so setting it as a sysctl is refused.
    if key == "kernel.domainname" {
        return if host_network {
            Err("it is a UTS sysctl and the container shares the host's UTS namespace".into())
        } else {
            Ok(())
        };
    }
    if key.starts_with("net.") {
        return if host_network {
            Err("it is a network sysctl and the container uses the host's network".into())
        } else {
            Ok(())
        };
    }
    Err(
        "it is not namespaced: only kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*, \
         kernel.domainname and net.* can be set per container"
            .into(),
    )
}

/// Checks a sysctl name's shape: dot-separated, no empty component, no `/`, no `..`.
pub fn validate_sysctl_key(key: &str) -> Result<()> {
    let bad = key.is_empty()
        || key.contains('/')
        || key.contains('\0')
        || key.chars().any(char::is_whitespace)
        || key.split('.').any(str::is_empty);
    if bad {
        return Err(Error::InvalidArgument(format!(
            "invalid sysctl name {key:?}: expected dot-separated names like net.ipv4.ip_forward"
        )));
    }
    Ok(())
}

/// Checks that every sysctl can be set in a container with these namespaces (runc's rules).
/// Spec generation calls this with the pod's real host_ipc/host_network.
pub fn validate_sysctls(
    sysctls: &HashMap<String, String>,
    host_ipc: bool,
    host_network: bool,
) -> Result<()> {
    let mut keys: Vec<&String> = sysctls.keys().collect();
    keys.sort();
    for key in keys {
        validate_sysctl_key(key)?;
        sysctl_policy(key, host_ipc, host_network)
            .map_err(|why| Error::InvalidArgument(format!("sysctl {key} is not allowed: {why}")))?;
    }
    Ok(())
}

/// Where a sysctl lives, relative to a procfs root.
fn sysctl_path(key: &str) -> PathBuf {
    PathBuf::from("sys").join(key.replace('.', "/"))
}

/// Writes each sysctl under `/proc/sys`. Only namespaced sysctls are accepted; whether the
/// container really has its own IPC and network namespace is checked by [`validate_sysctls`]
/// when the spec is built, as this runs inside the container where that is no longer known.
///
/// The files are opened through a [`ProcRoot`] (a fresh procfs where the kernel allows one),
/// never by path: a volume mounted over `/proc/sys/...` holding a symlink to a global knob
/// (`kernel/core_pattern`) must not turn a namespaced sysctl into a write on the host.
pub fn apply_sysctls(sysctls: &HashMap<String, String>) -> Result<()> {
    validate_sysctls(sysctls, false, false)?;
    if sysctls.is_empty() {
        return Ok(());
    }
    apply_sysctls_in(&ProcRoot::open()?, sysctls)
}

/// [`apply_sysctls`] through a given procfs root.
pub fn apply_sysctls_in(proc: &ProcRoot, sysctls: &HashMap<String, String>) -> Result<()> {
    validate_sysctls(sysctls, false, false)?;
    let mut keys: Vec<&String> = sysctls.keys().collect();
    keys.sort();
    for key in keys {
        let value = &sysctls[key];
        let path = sysctl_path(key);
        match proc.write(&path, value.as_bytes()) {
            Ok(()) => {}
            Err(Error::Sys {
                source: Errno::ENOENT,
                ..
            }) => {
                return Err(Error::InvalidArgument(format!(
                    "sysctl {key} does not exist on this kernel (/proc/{} missing)",
                    path.display()
                )));
            }
            Err(e) => {
                return Err(Error::Child(format!(
                    "write sysctl {key}: {}",
                    describe(&e)
                )));
            }
        }
    }
    Ok(())
}

fn read_oom_score_adj(path: &str) -> Result<i32> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    text.trim().parse().map_err(|_| {
        Error::InvalidArgument(format!("{path} holds {:?}, not a number", text.trim()))
    })
}

/// Sets `/proc/<pid>/oom_score_adj` and returns the value set. Without CAP_SYS_RESOURCE a value
/// below the caller's own is refused by the kernel; it is then clamped to the caller's own value
/// (containerd's `restrict_oom_score_adj`) instead of failing the container.
pub fn set_oom_score_adj(pid: i32, value: i32) -> Result<i32> {
    if !(-1000..=1000).contains(&value) {
        return Err(Error::InvalidArgument(format!(
            "oom_score_adj {value} is outside -1000..=1000"
        )));
    }
    let path = format!("/proc/{pid}/oom_score_adj");
    match std::fs::write(&path, value.to_string()) {
        Ok(()) => Ok(value),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) => {
            let own = read_oom_score_adj("/proc/self/oom_score_adj")?;
            if value >= own {
                return Err(Error::io("write oom_score_adj", path, e));
            }
            tracing::warn!(
                pid,
                requested = value,
                applied = own,
                "oom_score_adj below the runtime's own needs CAP_SYS_RESOURCE: clamped"
            );
            std::fs::write(&path, own.to_string())
                .map_err(|e| Error::io("write clamped oom_score_adj", path, e))?;
            Ok(own)
        }
        Err(e) => Err(Error::io("write oom_score_adj", path, e)),
    }
}

/// Sets no_new_privs on the calling thread (inherited across fork and execve, irreversible).
pub fn set_no_new_privs() -> Result<()> {
    nix::sys::prctl::set_no_new_privs().map_err(|e| Error::sys("prctl PR_SET_NO_NEW_PRIVS", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespaces::forked::in_forked_child;
    use oci_spec::runtime::PosixRlimitBuilder;

    fn rlimit(typ: PosixRlimitType, soft: u64, hard: u64) -> PosixRlimit {
        PosixRlimitBuilder::default()
            .typ(typ)
            .soft(soft)
            .hard(hard)
            .build()
            .expect("rlimit")
    }

    fn status_field(name: &str) -> std::result::Result<String, String> {
        let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .ok_or_else(|| format!("{name} missing"))
    }

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sysctl_policy_follows_runc() {
        let ok = [
            "kernel.shmmax",
            "kernel.shm_rmid_forced",
            "kernel.msgmnb",
            "kernel.sem",
            "fs.mqueue.msg_max",
            "net.ipv4.ip_forward",
            "net.core.somaxconn",
        ];
        for key in ok {
            validate_sysctls(&map(&[(key, "1")]), false, false).expect(key);
        }
        validate_sysctls(&map(&[("kernel.domainname", "example")]), false, false)
            .expect("domainname in its own UTS namespace");
        validate_sysctls(&map(&[("kernel.domainname", "x")]), false, true)
            .expect_err("domainname with the host's UTS namespace");
        for key in ["kernel.hostname", "vm.swappiness", "kernel.pid_max"] {
            let err = validate_sysctls(&map(&[(key, "1")]), false, false).expect_err(key);
            assert!(err.to_string().contains(key), "{err}");
        }
        let err = validate_sysctls(&map(&[("net.ipv4.ip_forward", "1")]), false, true)
            .expect_err("host network");
        assert!(err.to_string().contains("host's network"), "{err}");
        let err =
            validate_sysctls(&map(&[("kernel.shmmax", "1")]), true, false).expect_err("host ipc");
        assert!(err.to_string().contains("IPC"), "{err}");
        // `kernel.semx` is not `kernel.sem`.
        assert!(validate_sysctls(&map(&[("kernel.semx", "1")]), false, false).is_err());
    }

    #[test]
    fn sysctl_keys_cannot_escape_proc_sys() {
        for key in [
            "net/ipv4/ip_forward",
            "net..ipv4",
            ".net.ipv4",
            "net.",
            "",
            "net.ipv4.ip forward",
            "net.ipv4.conf.all/../../../../etc",
        ] {
            assert!(validate_sysctl_key(key).is_err(), "{key:?} accepted");
        }
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward"),
            PathBuf::from("sys/net/ipv4/ip_forward")
        );
    }

    #[test]
    fn apply_sysctls_writes_in_a_private_ipc_namespace() {
        let out = in_forked_child(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWIPC).map_err(|e| e.to_string())?;
            apply_sysctls(&map(&[
                ("kernel.shmmni", "1234"),
                ("kernel.msgmax", "4321"),
            ]))
            .map_err(|e| e.to_string())?;
            let shmmni =
                std::fs::read_to_string("/proc/sys/kernel/shmmni").map_err(|e| e.to_string())?;
            let msgmax =
                std::fs::read_to_string("/proc/sys/kernel/msgmax").map_err(|e| e.to_string())?;
            Ok(format!("{} {}", shmmni.trim(), msgmax.trim()))
        })
        .expect("child");
        assert_eq!(out, "1234 4321");
        let host = std::fs::read_to_string("/proc/sys/kernel/shmmni").expect("host shmmni");
        assert_ne!(host.trim(), "1234", "the host's IPC namespace was changed");

        let err = apply_sysctls(&map(&[("vm.swappiness", "1")])).expect_err("not namespaced");
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    }

    #[test]
    fn apply_sysctls_reports_unknown_names() {
        let out = in_forked_child(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWIPC).map_err(|e| e.to_string())?;
            match apply_sysctls(&map(&[("kernel.shm_no_such_thing", "1")])) {
                Ok(()) => Err("accepted".into()),
                Err(e) => Ok(e.to_string()),
            }
        })
        .expect("child");
        assert!(out.contains("kernel.shm_no_such_thing"), "{out}");
    }

    #[test]
    fn rlimits_lower_and_fail_clearly_when_raising() {
        let out = in_forked_child(|| {
            apply_rlimits(&[
                rlimit(PosixRlimitType::RlimitNofile, 512, 1024),
                rlimit(PosixRlimitType::RlimitCore, 0, 0),
            ])
            .map_err(|e| e.to_string())?;
            let nofile = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
            let core = getrlimit(Resource::RLIMIT_CORE).map_err(|e| e.to_string())?;
            let raise = apply_rlimits(&[rlimit(PosixRlimitType::RlimitNofile, 512, 4096)]);
            let has_sys_resource = caps::has_cap(
                None,
                caps::CapSet::Effective,
                caps::Capability::CAP_SYS_RESOURCE,
            )
            .map_err(|e| e.to_string())?;
            let raise = match (raise, has_sys_resource) {
                (Ok(()), true) => "raised".to_string(),
                (Err(e), false) => e.to_string(),
                (other, _) => return Err(format!("unexpected raise outcome {other:?}")),
            };
            Ok(format!("{nofile:?} {core:?} {raise}"))
        })
        .expect("child");
        assert!(out.starts_with("(512, 1024) (0, 0) "), "{out}");
        if !out.ends_with("raised") {
            assert!(out.contains("RLIMIT_NOFILE"), "{out}");
            assert!(out.contains("CAP_SYS_RESOURCE"), "{out}");
            assert!(out.contains("1024"), "{out}");
        }
    }

    #[test]
    fn rlimit_soft_above_hard_is_an_invalid_spec() {
        let err =
            apply_rlimits(&[rlimit(PosixRlimitType::RlimitNproc, 10, 5)]).expect_err("soft>hard");
        assert!(err.to_string().contains("RLIMIT_NPROC"), "{err}");
    }

    #[test]
    fn oom_score_adj_sets_and_clamps() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        let result = (|| -> Result<(i32, i32, String)> {
            let set = set_oom_score_adj(pid, 500)?;
            let low = set_oom_score_adj(pid, -1000)?;
            let file = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
                .map_err(|e| Error::io("read", "oom_score_adj", e))?;
            Ok((set, low, file.trim().to_string()))
        })();
        let _ = child.kill();
        let _ = child.wait();
        let (set, low, file) = result.expect("set oom_score_adj");
        assert_eq!(set, 500);
        let own = read_oom_score_adj("/proc/self/oom_score_adj").expect("own");
        let privileged = caps::has_cap(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_SYS_RESOURCE,
        )
        .expect("capget");
        let expected = if privileged { -1000 } else { own };
        assert_eq!(low, expected);
        assert_eq!(file, expected.to_string());
        assert!(set_oom_score_adj(pid, 1001).is_err());
    }

    #[test]
    fn no_new_privs_is_set() {
        let out = in_forked_child(|| {
            let before = status_field("NoNewPrivs:")?;
            set_no_new_privs().map_err(|e| e.to_string())?;
            Ok(format!("{before} {}", status_field("NoNewPrivs:")?))
        })
        .expect("child");
        assert_eq!(out, "0 1");
    }
}
