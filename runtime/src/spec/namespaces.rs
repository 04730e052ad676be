//! Namespaces from the CRI `NamespaceOption` and the pod's pinned namespaces, and the hostname.
//!
//! POD joins the pod's namespace file, NODE means no entry (the node's namespace is kept),
//! CONTAINER creates a new one, TARGET (PID only) joins the target container's. UTS follows the
//! network: a pod on the node's network shares the node's hostname. The hostname is set only
//! when the container gets a UTS namespace of its own; a pinned one already carries it. A
//! cgroup namespace is created on a cgroup v2 host for unprivileged containers, as containerd
//! does. User namespaces are not supported.

use std::path::{Path, PathBuf};

use k8s_cri::v1::{
    LinuxContainerSecurityContext, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    UserNamespace,
};
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

use super::PodNamespaces;
use crate::{Error, Result};

/// The namespace options that apply: the container's, else the pod's, else the CRI defaults.
pub(super) fn effective_options(
    sc: &LinuxContainerSecurityContext,
    sandbox: Option<&LinuxSandboxSecurityContext>,
) -> NamespaceOption {
    sc.namespace_options
        .clone()
        .or_else(|| sandbox.and_then(|s| s.namespace_options.clone()))
        .unwrap_or_default()
}

pub(super) struct NamespaceInput<'a> {
    pub options: &'a NamespaceOption,
    pub pod: &'a PodNamespaces,
    pub target_pid: Option<&'a Path>,
    pub sandbox_hostname: &'a str,
    pub privileged: bool,
    pub cgroup2_unified: bool,
    pub userns: Option<&'a UserNamespace>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct NamespacePlan {
    pub namespaces: Vec<LinuxNamespace>,
    pub hostname: Option<String>,
}

fn ns(typ: LinuxNamespaceType, path: Option<PathBuf>) -> LinuxNamespace {
    let mut n = LinuxNamespace::default();
    n.set_typ(typ);
    n.set_path(path);
    n
}

fn mode(v: i32, what: &str) -> Result<NamespaceMode> {
    NamespaceMode::try_from(v)
        .map_err(|_| Error::InvalidArgument(format!("unknown {what} namespace mode {v}")))
}

/// The entry for a namespace that may be shared with the pod (network, IPC).
fn pod_shared(
    typ: LinuxNamespaceType,
    m: NamespaceMode,
    pinned: Option<&PathBuf>,
    what: &str,
) -> Result<Option<LinuxNamespace>> {
    match m {
        NamespaceMode::Node => Ok(None),
        NamespaceMode::Container => Ok(Some(ns(typ, None))),
        NamespaceMode::Pod => match pinned {
            Some(p) => Ok(Some(ns(typ, Some(p.clone())))),
            None => Err(Error::InvalidArgument(format!(
                "the pod has no {what} namespace to join"
            ))),
        },
        NamespaceMode::Target => Err(Error::InvalidArgument(format!(
            "namespace mode TARGET is only supported for the PID namespace, not {what}"
        ))),
    }
}

/// Plans the namespaces in containerd's order: pid, ipc, uts, mount, network, cgroup.
pub(super) fn plan(input: &NamespaceInput) -> Result<NamespacePlan> {
    let o = input.options;
    let net_mode = mode(o.network, "network")?;
    let ipc_mode = mode(o.ipc, "IPC")?;
    let pid_mode = mode(o.pid, "PID")?;

    let mut out = Vec::new();
    // A pod in its own user namespace: every container joins the pinned one, which owns the
    // pod's net, ipc and uts namespaces (CONTAINER and TARGET are no user namespace modes).
    let user_mode = input
        .userns
        .map(|u| mode(u.mode, "user"))
        .transpose()?
        .unwrap_or(NamespaceMode::Node);
    match user_mode {
        NamespaceMode::Node => {}
        NamespaceMode::Pod => {
            if input.privileged {
                return Err(Error::InvalidArgument(
                    "a privileged container cannot run in a pod user namespace".to_string(),
                ));
            }
            if pid_mode == NamespaceMode::Pod {
                // The pod's shared PID namespace belongs to the node's user namespace (its infra
                // process runs there), which a process in the pod's cannot join.
                return Err(Error::InvalidArgument(
                    "a shared pod PID namespace is not supported together with a pod user namespace"
                        .to_string(),
                ));
            }
            match &input.pod.user {
                Some(p) => out.push(ns(LinuxNamespaceType::User, Some(p.clone()))),
                None => {
                    return Err(Error::InvalidArgument(
                        "the pod has no user namespace to join (its sandbox was run without userns_options mode POD)"
                            .to_string(),
                    ));
                }
            }
        }
        other => {
            return Err(Error::InvalidArgument(format!(
                "user namespace mode {} is not supported (POD or NODE)",
                other.as_str_name()
            )));
        }
    }
    match pid_mode {
        NamespaceMode::Container => out.push(ns(LinuxNamespaceType::Pid, None)),
        NamespaceMode::Node => {}
        NamespaceMode::Pod => match &input.pod.pid {
            Some(p) => out.push(ns(LinuxNamespaceType::Pid, Some(p.clone()))),
            None => {
                return Err(Error::InvalidArgument(
                    "the pod has no shared PID namespace to join".to_string(),
                ));
            }
        },
        NamespaceMode::Target => match input.target_pid {
            Some(p) => out.push(ns(LinuxNamespaceType::Pid, Some(p.to_path_buf()))),
            None => {
                return Err(Error::InvalidArgument(format!(
                    "PID namespace mode TARGET needs the target container {:?}",
                    o.target_id
                )));
            }
        },
    }
    out.extend(pod_shared(
        LinuxNamespaceType::Ipc,
        ipc_mode,
        input.pod.ipc.as_ref(),
        "IPC",
    )?);

    let mut hostname = None;
    match (&input.pod.uts, net_mode) {
        (Some(p), _) => out.push(ns(LinuxNamespaceType::Uts, Some(p.clone()))),
        (None, NamespaceMode::Node) => {}
        (None, _) => {
            out.push(ns(LinuxNamespaceType::Uts, None));
            hostname =
                (!input.sandbox_hostname.is_empty()).then(|| input.sandbox_hostname.to_string());
        }
    }
    out.push(ns(LinuxNamespaceType::Mount, None));
    out.extend(pod_shared(
        LinuxNamespaceType::Network,
        net_mode,
        input.pod.net.as_ref(),
        "network",
    )?);
    if input.cgroup2_unified && !input.privileged {
        out.push(ns(LinuxNamespaceType::Cgroup, None));
    }
    Ok(NamespacePlan {
        namespaces: out,
        hostname,
    })
}

/// IPC-namespaced sysctls besides `fs.mqueue.*` (the kernel's list, as runc checks it).
const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// A sysctl name in dotted form (`net/ipv4/conf/eth0.1/x` becomes `net.ipv4.conf.eth0/1.x`).
fn normalize_sysctl(name: &str) -> String {
    match name.find(['.', '/']) {
        Some(i) if name.as_bytes()[i] == b'/' => name
            .chars()
            .map(|c| match c {
                '/' => '.',
                '.' => '/',
                c => c,
            })
            .collect(),
        _ => name.to_string(),
    }
}

/// Checks that every sysctl belongs to a namespace the container does not share with the
/// node, as runc refuses at create: a pod sysctl must never write the node's settings.
pub(super) fn check_sysctls<'a>(
    names: impl IntoIterator<Item = &'a String>,
    namespaces: &[LinuxNamespace],
) -> Result<()> {
    let has = |t: LinuxNamespaceType| namespaces.iter().any(|n| n.typ() == t);
    for name in names {
        let n = normalize_sysctl(name);
        let (needed, what) = if IPC_SYSCTLS.contains(&n.as_str()) || n.starts_with("fs.mqueue.") {
            (LinuxNamespaceType::Ipc, "IPC")
        } else if n.starts_with("net.") {
            (LinuxNamespaceType::Network, "network")
        } else {
            return Err(Error::InvalidArgument(format!(
                "sysctl {name:?} is not namespaced: it would change the node"
            )));
        };
        if !has(needed) {
            return Err(Error::InvalidArgument(format!(
                "sysctl {name:?} cannot be set in a pod that uses the node's {what} namespace"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pinned() -> PodNamespaces {
        PodNamespaces {
            net: Some("/run/bungeo/ns/sb/net".into()),
            ipc: Some("/run/bungeo/ns/sb/ipc".into()),
            uts: Some("/run/bungeo/ns/sb/uts".into()),
            pid: Some("/proc/42/ns/pid".into()),
            user: None,
        }
    }

    fn opts(net: NamespaceMode, pid: NamespaceMode, ipc: NamespaceMode) -> NamespaceOption {
        NamespaceOption {
            network: net as i32,
            pid: pid as i32,
            ipc: ipc as i32,
            ..Default::default()
        }
    }

    fn run(
        o: &NamespaceOption,
        pod: &PodNamespaces,
        cg2: bool,
        privileged: bool,
    ) -> Result<NamespacePlan> {
        plan(&NamespaceInput {
            options: o,
            pod,
            target_pid: Some(Path::new("/proc/77/ns/pid")),
            sandbox_hostname: "pod-host",
            privileged,
            cgroup2_unified: cg2,
            userns: None,
        })
    }

    #[test]
    fn kubelet_default_pod() {
        use NamespaceMode::*;
        let p = run(&opts(Pod, Container, Pod), &pinned(), false, false).unwrap();
        assert_eq!(
            serde_json::to_value(&p.namespaces).unwrap(),
            json!([
                {"type": "pid"},
                {"type": "ipc", "path": "/run/bungeo/ns/sb/ipc"},
                {"type": "uts", "path": "/run/bungeo/ns/sb/uts"},
                {"type": "mount"},
                {"type": "network", "path": "/run/bungeo/ns/sb/net"},
            ])
        );
        assert_eq!(p.hostname, None);
    }

    #[test]
    fn host_network_pid_and_ipc() {
        use NamespaceMode::*;
        let pod = PodNamespaces::default();
        let p = run(&opts(Node, Node, Node), &pod, true, false).unwrap();
        assert_eq!(
            serde_json::to_value(&p.namespaces).unwrap(),
            json!([{"type": "mount"}, {"type": "cgroup"}])
        );
        assert_eq!(p.hostname, None);
    }

    #[test]
    fn shared_pid_target_and_container_modes() {
        use NamespaceMode::*;
        let p = run(&opts(Pod, Pod, Pod), &pinned(), false, false).unwrap();
        assert_eq!(
            p.namespaces[0].path().as_deref(),
            Some(Path::new("/proc/42/ns/pid"))
        );
        let p = run(&opts(Pod, Target, Pod), &pinned(), false, false).unwrap();
        assert_eq!(
            p.namespaces[0].path().as_deref(),
            Some(Path::new("/proc/77/ns/pid"))
        );
        let p = run(
            &opts(Container, Container, Container),
            &PodNamespaces::default(),
            false,
            false,
        )
        .unwrap();
        let types: Vec<_> = p
            .namespaces
            .iter()
            .map(|n| (n.typ(), n.path().is_some()))
            .collect();
        assert_eq!(
            types,
            vec![
                (LinuxNamespaceType::Pid, false),
                (LinuxNamespaceType::Ipc, false),
                (LinuxNamespaceType::Uts, false),
                (LinuxNamespaceType::Mount, false),
                (LinuxNamespaceType::Network, false),
            ]
        );
        // Its own UTS namespace gets the pod's hostname.
        assert_eq!(p.hostname.as_deref(), Some("pod-host"));
    }

    #[test]
    fn missing_pod_namespaces_are_errors() {
        use NamespaceMode::*;
        let e = run(
            &opts(Pod, Container, Pod),
            &PodNamespaces::default(),
            false,
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("no IPC namespace"), "{e}");
        let mut pod = pinned();
        pod.pid = None;
        let e = run(&opts(Pod, Pod, Pod), &pod, false, false).unwrap_err();
        assert!(e.to_string().contains("no shared PID namespace"), "{e}");
        let e = run(&opts(Target, Container, Pod), &pinned(), false, false).unwrap_err();
        assert!(
            e.to_string()
                .contains("only supported for the PID namespace"),
            "{e}"
        );
        let e = run(
            &NamespaceOption {
                network: 9,
                ..Default::default()
            },
            &pinned(),
            false,
            false,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("unknown network namespace mode 9"),
            "{e}"
        );
        let no_target = plan(&NamespaceInput {
            options: &opts(Pod, Target, Pod),
            pod: &pinned(),
            target_pid: None,
            sandbox_hostname: "",
            privileged: false,
            cgroup2_unified: false,
            userns: None,
        });
        assert!(no_target.is_err());
    }

    #[test]
    fn cgroup_namespace_only_on_v2_and_unprivileged() {
        use NamespaceMode::*;
        let has_cgroup = |cg2, privileged| {
            run(&opts(Pod, Container, Pod), &pinned(), cg2, privileged)
                .unwrap()
                .namespaces
                .iter()
                .any(|n| n.typ() == LinuxNamespaceType::Cgroup)
        };
        assert!(has_cgroup(true, false));
        assert!(!has_cgroup(true, true));
        assert!(!has_cgroup(false, false));
    }

    #[test]
    fn pod_user_namespace_is_joined_and_node_mode_is_fine() {
        use NamespaceMode::*;
        let o = opts(Pod, Container, Pod);
        let mut input = NamespaceInput {
            options: &o,
            pod: &pinned(),
            target_pid: None,
            sandbox_hostname: "",
            privileged: false,
            cgroup2_unified: false,
            userns: None,
        };
        let node = UserNamespace {
            mode: Node as i32,
            ..Default::default()
        };
        input.userns = Some(&node);
        assert!(plan(&input).is_ok());
        let pod = UserNamespace {
            mode: Pod as i32,
            uids: vec![k8s_cri::v1::IdMapping {
                host_id: 100000,
                container_id: 0,
                length: 65536,
            }],
            gids: vec![],
        };
        input.userns = Some(&pod);
        // The pod has no pinned user namespace.
        assert!(matches!(plan(&input), Err(Error::InvalidArgument(_))));
        let with_user = PodNamespaces {
            user: Some("/run/ns/user".into()),
            ..pinned()
        };
        input.pod = &with_user;
        let p = plan(&input).unwrap();
        assert_eq!(p.namespaces[0].typ(), LinuxNamespaceType::User);
        assert_eq!(
            p.namespaces[0].path().as_deref(),
            Some(Path::new("/run/ns/user"))
        );
        input.privileged = true;
        assert!(matches!(plan(&input), Err(Error::InvalidArgument(_))));
        input.privileged = false;
        let shared_pid = opts(Pod, Pod, Pod);
        input.options = &shared_pid;
        let e = plan(&input).unwrap_err().to_string();
        assert!(e.contains("shared pod PID namespace"), "{e}");
        input.options = &o;
        let container_mode = UserNamespace {
            mode: Container as i32,
            ..pod.clone()
        };
        input.userns = Some(&container_mode);
        assert!(matches!(plan(&input), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn sysctls_need_their_own_namespace() {
        use NamespaceMode::*;
        let own = run(&opts(Pod, Container, Pod), &pinned(), false, false)
            .unwrap()
            .namespaces;
        let host = run(
            &opts(Node, Node, Node),
            &PodNamespaces::default(),
            false,
            false,
        )
        .unwrap()
        .namespaces;
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ok = names(&[
            "net.ipv4.ping_group_range",
            "net/ipv4/ip_local_port_range",
            "kernel.shm_rmid_forced",
            "fs.mqueue.msg_max",
        ]);
        assert!(check_sysctls(&ok, &own).is_ok());
        let e = check_sysctls(&names(&["net.ipv4.tcp_syncookies"]), &host).unwrap_err();
        assert!(e.to_string().contains("node's network namespace"), "{e}");
        let e = check_sysctls(&names(&["kernel.sem"]), &host).unwrap_err();
        assert!(e.to_string().contains("node's IPC namespace"), "{e}");
        let e = check_sysctls(&names(&["vm.swappiness"]), &own).unwrap_err();
        assert!(e.to_string().contains("not namespaced"), "{e}");
        assert!(check_sysctls(&names(&["kernel.hostname"]), &own).is_err());
        assert_eq!(
            normalize_sysctl("net/ipv4/conf/eth0.1/rp_filter"),
            "net.ipv4.conf.eth0/1.rp_filter"
        );
        assert_eq!(
            normalize_sysctl("net.ipv4.conf.eth0/1.rp_filter"),
            "net.ipv4.conf.eth0/1.rp_filter"
        );
    }

    #[test]
    fn options_fall_back_to_the_pod() {
        let sc = LinuxContainerSecurityContext::default();
        let sb = LinuxSandboxSecurityContext {
            namespace_options: Some(opts(
                NamespaceMode::Node,
                NamespaceMode::Container,
                NamespaceMode::Pod,
            )),
            ..Default::default()
        };
        assert_eq!(
            effective_options(&sc, Some(&sb)).network,
            NamespaceMode::Node as i32
        );
        assert_eq!(effective_options(&sc, None), NamespaceOption::default());
    }
}
