//! OCI runtime spec generation from a CRI `CreateContainer` request: the container's
//! `ContainerConfig`, its pod's `PodSandboxConfig` and the image config, equal in effect to what
//! containerd 1.6's CRI plugin generates for the same request.
//!
//! Everything the generation needs from the host (stat of bind sources and devices, mount
//! propagation, the kernel's capabilities, the cgroup layout) goes through [`SpecHost`], so the
//! logic is unit-tested without root against a fake host.
//!
//! Where bungeo differs from containerd 1.6 on purpose, the submodule's doc says so:
//! `security` (default masked paths), `user` (supplementary groups of the image USER),
//! `process` (duplicate env keys, HOME), and pod sysctls, which containerd leaves to the pause
//! container and bungeo, having none, puts in every container's spec after checking that the
//! container owns the namespace each one belongs to.

mod devices;
mod host;
mod mounts;
mod namespaces;
mod process;
mod resources;
pub mod seccomp_default;
mod security;
mod user;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_cri::v1::{ContainerConfig, LinuxContainerSecurityContext, PodSandboxConfig};
use oci_spec::runtime::{Linux, Process, Root, Spec};

use crate::{Error, Result};

pub use host::{LinuxHost, Propagation, SpecHost};
pub use security::DEFAULT_APPARMOR_PROFILE;

/// Annotation naming the kind of the container: always [`CONTAINER_TYPE_CONTAINER`] here.
pub const ANNOTATION_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// Value of [`ANNOTATION_CONTAINER_TYPE`] for an application container.
pub const CONTAINER_TYPE_CONTAINER: &str = "container";
/// Annotation carrying the id of the pod sandbox the container belongs to.
pub const ANNOTATION_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// Annotation carrying the pod's Kubernetes namespace.
pub const ANNOTATION_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
/// Annotation carrying the pod's name.
pub const ANNOTATION_SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
/// Annotation carrying the pod's UID.
pub const ANNOTATION_SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
/// Annotation carrying the container's name from its metadata.
pub const ANNOTATION_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
/// Annotation carrying the image the container was created from.
pub const ANNOTATION_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

/// Host files the pod sandbox prepared for its containers; each is bind-mounted when present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxFiles {
    /// Becomes the container's `/etc/hosts`.
    pub hosts: Option<PathBuf>,
    /// Becomes the container's `/etc/resolv.conf`.
    pub resolv_conf: Option<PathBuf>,
    /// Becomes the container's `/etc/hostname`.
    pub hostname: Option<PathBuf>,
    /// A directory (usually a tmpfs) shared as `/dev/shm` by the pod's containers.
    pub shm: Option<PathBuf>,
}

/// The pod's namespaces a container joins: pinned namespace files, or `/proc/<pid>/ns/<type>`
/// of the pod's infra process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNamespaces {
    /// Network namespace (absent when the pod uses the node's network).
    pub net: Option<PathBuf>,
    /// IPC namespace (absent when the pod uses the node's IPC).
    pub ipc: Option<PathBuf>,
    /// UTS namespace (absent when the pod uses the node's network, and so its hostname).
    pub uts: Option<PathBuf>,
    /// PID namespace, present only when the pod shares one PID namespace.
    pub pid: Option<PathBuf>,
    /// The pod's own user namespace (userns_options mode POD), which owns its net, ipc and
    /// uts namespaces.
    pub user: Option<PathBuf>,
}

/// Everything [`generate`] needs to build one container's spec.
#[derive(Debug, Clone)]
pub struct SpecInput<'a> {
    /// The container's id (used in error messages).
    pub container_id: &'a str,
    /// The id of the pod sandbox the container belongs to (goes into an annotation).
    pub sandbox_id: &'a str,
    /// The CRI container config of the `CreateContainer` request.
    pub container: &'a ContainerConfig,
    /// The CRI config of the container's pod.
    pub sandbox: &'a PodSandboxConfig,
    /// The OCI image config JSON, `{"config": {"Env", "Entrypoint", "Cmd", "User", "WorkingDir", ...}}`
    /// (the inner `config` object alone is accepted too).
    pub image_config: &'a serde_json::Value,
    /// The container's root directory; its `/etc/passwd` and `/etc/group` are read with every
    /// symlink resolved inside it.
    pub rootfs: &'a Path,
    /// The pod's hosts, resolv.conf, hostname and shm files.
    pub sandbox_files: &'a SandboxFiles,
    /// The pod's namespaces.
    pub pod_namespaces: &'a PodNamespaces,
    /// The PID namespace of the target container for `NamespaceMode::TARGET`.
    pub target_pid_namespace: Option<PathBuf>,
    /// The container's cgroup path (`linux.cgroupsPath`); empty leaves it to the runtime.
    pub cgroups_path: String,
    /// What AppArmor offers on this node (decided at daemon start).
    pub apparmor: &'a crate::apparmor::AppArmor,
    /// The daemon's own `oom_score_adj`: the container's is raised to at least this, since a
    /// process without CAP_SYS_RESOURCE cannot lower it.
    pub restrict_oom_score_adj: Option<i32>,
}

/// Builds the OCI runtime spec for a CRI container, using the real host for stat, mount
/// propagation and capability lookups. Missing bind-mount sources are created as directories.
pub fn generate(input: &SpecInput) -> Result<Spec> {
    generate_with(input, &LinuxHost)
}

/// Builds the OCI runtime spec for a CRI container against the given host.
pub fn generate_with(input: &SpecInput, host: &dyn SpecHost) -> Result<Spec> {
    let container = input.container;
    let default_sc = LinuxContainerSecurityContext::default();
    let sc = container
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .unwrap_or(&default_sc);
    let name = container_name(input);
    let sandbox_sc = input
        .sandbox
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    if sc.privileged && !sandbox_sc.is_some_and(|s| s.privileged) {
        return Err(Error::InvalidArgument(format!(
            "container {name}: a privileged container is not allowed in a pod sandbox that is not privileged"
        )));
    }
    let ns_options = namespaces::effective_options(sc, sandbox_sc);

    let image = process::ImageConfig::from_json(input.image_config)
        .map_err(|e| Error::InvalidArgument(format!("container {name}: image config: {e}")))?;

    // Process: args, env, cwd, user.
    process::check_no_nul(container)
        .map_err(|e| Error::InvalidArgument(format!("container {name}: {e}")))?;
    let args = process::args(container, &image)
        .map_err(|e| Error::InvalidArgument(format!("container {name}: {e}")))?;
    let cwd = process::cwd(container, &image)
        .map_err(|e| Error::InvalidArgument(format!("container {name}: {e}")))?;
    let hostname_env = if input.sandbox.hostname.is_empty() {
        host.hostname()?
    } else {
        input.sandbox.hostname.clone()
    };
    let user = user::resolve(input.rootfs, sc, &image.user).map_err(|e| e.in_container(&name))?;
    let env = process::env(
        &hostname_env,
        container.tty,
        &image.env,
        &container.envs,
        &user.home,
    );

    // Capabilities first: the default seccomp profile depends on the bounding set.
    let caps = security::capabilities(sc, host)?;
    let seccomp = security::seccomp(sc, &caps, &name)?;
    let apparmor = security::apparmor(sc, input.apparmor, host, &name)?;

    let mut process = Process::default();
    process.set_terminal(container.tty.then_some(true));
    process.set_console_size(None);
    process.set_user(user.to_oci());
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(cwd);
    process.set_capabilities(Some(caps.to_oci()));
    // containerd drops the default rlimits (cri issue #515): the container inherits the
    // limits of the process that starts it, like under containerd's systemd unit.
    process.set_rlimits(None);
    process.set_no_new_privileges(Some(sc.no_new_privs));
    process.set_apparmor_profile(apparmor);
    process.set_selinux_label(None);
    let resources_in = container.linux.as_ref().and_then(|l| l.resources.as_ref());
    process.set_oom_score_adj(resources::oom_score_adj(
        resources_in,
        input.restrict_oom_score_adj,
        &name,
    )?);

    // Namespaces, and the pod sysctls they must own.
    let ns = namespaces::plan(&namespaces::NamespaceInput {
        options: &ns_options,
        pod: input.pod_namespaces,
        target_pid: input.target_pid_namespace.as_deref(),
        sandbox_hostname: &input.sandbox.hostname,
        privileged: sc.privileged,
        cgroup2_unified: host.cgroup2_unified(),
        userns: ns_options.userns_options.as_ref(),
    })
    .map_err(|e| e.in_container(&name))?;

    let sysctls = input
        .sandbox
        .linux
        .as_ref()
        .map(|l| l.sysctls.clone())
        .unwrap_or_default();
    namespaces::check_sysctls(sysctls.keys(), &ns.namespaces).map_err(|e| e.in_container(&name))?;

    // Devices and the device cgroup.
    let devs = devices::plan(container, sc.privileged, host).map_err(|e| e.in_container(&name))?;

    // Resources.
    let mut linux_resources = resources::resources(resources_in, host, &name)?.unwrap_or_default();
    linux_resources.set_devices(Some(devs.cgroup_rules));

    // Mounts last: they create missing host directories, so every check comes first.
    let mount_plan = mounts::plan(
        &mounts::MountInput {
            container,
            readonly_rootfs: sc.readonly_rootfs,
            privileged: sc.privileged,
            ipc_node: ns_options.ipc == k8s_cri::v1::NamespaceMode::Node as i32,
            sandbox_files: input.sandbox_files,
        },
        host,
    )
    .map_err(|e| e.in_container(&name))?;

    let (masked, readonly) = security::masked_and_readonly_paths(sc);

    let mut linux = Linux::default();
    // Joined by path: the maps say what the pinned namespace has (as containerd writes them).
    let joins_user = ns
        .namespaces
        .iter()
        .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User);
    let userns_maps = ns_options
        .userns_options
        .as_ref()
        .filter(|_| joins_user)
        .map(|u| Ok::<_, Error>((mounts::oci_id_maps(&u.uids)?, mounts::oci_id_maps(&u.gids)?)))
        .transpose()?;
    linux.set_uid_mappings(userns_maps.as_ref().map(|m| m.0.clone()));
    linux.set_gid_mappings(userns_maps.map(|m| m.1));
    linux.set_sysctl((!sysctls.is_empty()).then_some(sysctls));
    linux.set_resources(Some(linux_resources));
    linux.set_cgroups_path(
        (!input.cgroups_path.is_empty()).then(|| input.cgroups_path.clone().into()),
    );
    linux.set_namespaces(Some(ns.namespaces));
    linux.set_devices((!devs.devices.is_empty()).then_some(devs.devices));
    linux.set_seccomp(seccomp);
    linux.set_rootfs_propagation(mount_plan.rootfs_propagation);
    linux.set_masked_paths(Some(masked));
    linux.set_readonly_paths(Some(readonly));
    linux.set_mount_label(None);

    let mut root = Root::default();
    root.set_path(input.rootfs.to_path_buf());
    root.set_readonly(Some(sc.readonly_rootfs));

    let mut spec = Spec::default();
    spec.set_version("1.0.2-dev".to_string());
    spec.set_root(Some(root));
    spec.set_mounts(Some(mount_plan.mounts));
    spec.set_process(Some(process));
    spec.set_hostname(ns.hostname);
    spec.set_domainname(None);
    spec.set_hooks(None);
    spec.set_annotations(Some(annotations(input)));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// The OCI cgroup resources for a CRI `UpdateContainerResources` request, checked and
/// converted as at creation, against the real host; `container` names it in errors.
pub fn update_resources(
    resources: &k8s_cri::v1::LinuxContainerResources,
    container: &str,
) -> Result<oci_spec::runtime::LinuxResources> {
    Ok(self::resources::resources(Some(resources), &LinuxHost, container)?.unwrap_or_default())
}

/// The container's name for messages: its metadata name, else its id.
fn container_name(input: &SpecInput) -> String {
    match input.container.metadata.as_ref() {
        Some(m) if !m.name.is_empty() => format!("{:?} ({})", m.name, input.container_id),
        _ => input.container_id.to_string(),
    }
}

/// The annotations containerd's CRI plugin puts on a container's spec.
fn annotations(input: &SpecInput) -> HashMap<String, String> {
    let mut a = HashMap::new();
    a.insert(
        ANNOTATION_CONTAINER_TYPE.to_string(),
        CONTAINER_TYPE_CONTAINER.to_string(),
    );
    a.insert(
        ANNOTATION_SANDBOX_ID.to_string(),
        input.sandbox_id.to_string(),
    );
    let meta = input.sandbox.metadata.clone().unwrap_or_default();
    a.insert(ANNOTATION_SANDBOX_NAMESPACE.to_string(), meta.namespace);
    a.insert(ANNOTATION_SANDBOX_NAME.to_string(), meta.name);
    a.insert(ANNOTATION_SANDBOX_UID.to_string(), meta.uid);
    a.insert(
        ANNOTATION_CONTAINER_NAME.to_string(),
        input
            .container
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default(),
    );
    let image = input.container.image.clone().unwrap_or_default();
    let image_name = if image.user_specified_image.is_empty() {
        image.image
    } else {
        image.user_specified_image
    };
    a.insert(ANNOTATION_IMAGE_NAME.to_string(), image_name);
    a
}

impl Error {
    /// Prefixes an InvalidArgument or Unsupported message with the container it is about.
    pub(in crate::spec) fn in_container(self, name: &str) -> Error {
        match self {
            Error::InvalidArgument(m) => Error::InvalidArgument(format!("container {name}: {m}")),
            Error::Unsupported(m) => Error::Unsupported(format!("container {name}: {m}")),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    //! Whole specs for requests also sent to containerd 1.6.20 (Debian) through its CRI; the
    //! expected values are what it wrote, except where the module docs say bungeo differs.

    use super::host::tests_support::FakeHost;
    use super::*;
    use k8s_cri::v1::{
        Capability as CriCaps, ContainerMetadata, Device, ImageSpec, Int64Value, KeyValue,
        LinuxContainerConfig, LinuxContainerResources, LinuxPodSandboxConfig,
        LinuxSandboxSecurityContext, Mount as CriMount, NamespaceMode, NamespaceOption,
        PodSandboxMetadata, SecurityProfile, security_profile::ProfileType,
    };
    use serde_json::{Value, json};

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\nwheel:x:10:root,alice\nalice:x:1000:alice\nbob:x:1001:\ndev:x:2000:alice,bob\n";

    struct Fixture {
        rootfs: tempfile::TempDir,
        image: Value,
        files: SandboxFiles,
        pod_ns: PodNamespaces,
    }

    fn fixture() -> Fixture {
        let rootfs = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(rootfs.path().join("etc")).unwrap();
        std::fs::write(rootfs.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(rootfs.path().join("etc/group"), GROUP).unwrap();
        Fixture {
            rootfs,
            image: json!({"architecture": "amd64", "os": "linux", "config": {
                "Env": ["PATH=/img/bin:/bin", "IMG=1", "SHARED=image"],
                "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["sleep 1000"],
                "User": "alice", "WorkingDir": "/work"}}),
            files: SandboxFiles {
                hosts: Some("/var/lib/bungeo/sandboxes/sb1/hosts".into()),
                resolv_conf: Some("/var/lib/bungeo/sandboxes/sb1/resolv.conf".into()),
                hostname: Some("/var/lib/bungeo/sandboxes/sb1/hostname".into()),
                shm: Some("/var/lib/bungeo/sandboxes/sb1/shm".into()),
            },
            pod_ns: PodNamespaces {
                net: Some("/run/bungeo/ns/sb1/net".into()),
                ipc: Some("/run/bungeo/ns/sb1/ipc".into()),
                uts: Some("/run/bungeo/ns/sb1/uts".into()),
                pid: None,
                user: None,
            },
        }
    }

    fn ns(net: NamespaceMode, pid: NamespaceMode, ipc: NamespaceMode) -> Option<NamespaceOption> {
        Some(NamespaceOption {
            network: net as i32,
            pid: pid as i32,
            ipc: ipc as i32,
            ..Default::default()
        })
    }

    fn pod(name: &str, hostnet: bool, privileged: bool) -> PodSandboxConfig {
        let mode = if hostnet {
            NamespaceMode::Node
        } else {
            NamespaceMode::Pod
        };
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("{name}-uid"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: if hostnet { String::new() } else { name.into() },
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("/kubepods/besteffort/pod{name}"),
                sysctls: if hostnet {
                    Default::default()
                } else {
                    [(
                        "net.ipv4.ping_group_range".to_string(),
                        "0 2147483647".to_string(),
                    )]
                    .into()
                },
                security_context: Some(LinuxSandboxSecurityContext {
                    privileged,
                    namespace_options: ns(mode, NamespaceMode::Container, mode),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn container(name: &str, sc: LinuxContainerSecurityContext) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: "docker.io/library/testimg:1".into(),
                ..Default::default()
            }),
            linux: Some(LinuxContainerConfig {
                resources: None,
                security_context: Some(sc),
            }),
            ..Default::default()
        }
    }

    fn generate_for(
        f: &Fixture,
        c: &ContainerConfig,
        p: &PodSandboxConfig,
        host: &FakeHost,
    ) -> Result<Value> {
        let input = SpecInput {
            container_id: "c1",
            sandbox_id: "sb1",
            container: c,
            sandbox: p,
            image_config: &f.image,
            rootfs: f.rootfs.path(),
            sandbox_files: &f.files,
            pod_namespaces: &f.pod_ns,
            target_pid_namespace: None,
            cgroups_path: format!(
                "{}/c1",
                p.linux
                    .as_ref()
                    .map(|l| l.cgroup_parent.as_str())
                    .unwrap_or("")
            ),
            apparmor: &crate::apparmor::AppArmor::Disabled,
            restrict_oom_score_adj: Some(0),
        };
        let spec = generate_with(&input, host)?;
        // Round trip: what the shim reads back is what was generated.
        let text = serde_json::to_string(&spec).unwrap();
        let back: Spec = serde_json::from_str(&text).unwrap();
        assert_eq!(back, spec);
        Ok(serde_json::to_value(&spec).unwrap())
    }

    /// Capability sets are unordered: compare them sorted.
    fn sorted_caps(v: &Value, set: &str) -> Vec<String> {
        let mut c: Vec<String> = v["process"]["capabilities"][set]
            .as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        c.sort();
        c
    }

    fn caps(names: &[&str]) -> Vec<String> {
        let mut c: Vec<String> = names.iter().map(|s| format!("CAP_{s}")).collect();
        c.sort();
        c
    }

    fn bind(dest: &str, src: &str, access: &str) -> Value {
        json!({"destination": dest, "type": "bind", "source": src, "options": ["rbind", "rprivate", access]})
    }

    fn defaults(access: &str) -> Vec<Value> {
        vec![
            json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
            json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
            json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
            json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
            json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", access]}),
            json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", access]}),
        ]
    }

    fn sandbox_binds(access: &str) -> Vec<Value> {
        vec![
            bind(
                "/etc/hostname",
                "/var/lib/bungeo/sandboxes/sb1/hostname",
                access,
            ),
            bind("/etc/hosts", "/var/lib/bungeo/sandboxes/sb1/hosts", access),
            bind(
                "/etc/resolv.conf",
                "/var/lib/bungeo/sandboxes/sb1/resolv.conf",
                access,
            ),
            bind("/dev/shm", "/var/lib/bungeo/sandboxes/sb1/shm", "rw"),
        ]
    }

    #[test]
    fn restricted_container_like_containerd() {
        let f = fixture();
        let host = FakeHost {
            swap: true,
            ..Default::default()
        };
        let sc = LinuxContainerSecurityContext {
            capabilities: Some(CriCaps {
                add_capabilities: vec!["NET_ADMIN".into()],
                drop_capabilities: vec!["KILL".into()],
                add_ambient_capabilities: vec![],
            }),
            namespace_options: ns(
                NamespaceMode::Pod,
                NamespaceMode::Container,
                NamespaceMode::Pod,
            ),
            run_as_user: Some(Int64Value { value: 1001 }),
            supplemental_groups: vec![3000],
            no_new_privs: true,
            readonly_rootfs: true,
            seccomp: Some(SecurityProfile {
                profile_type: ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        };
        let mut c = container("app", sc);
        c.envs = vec![
            KeyValue {
                key: "SHARED".into(),
                value: "cri".into(),
            },
            KeyValue {
                key: "NEW".into(),
                value: "1".into(),
            },
        ];
        c.mounts = vec![
            CriMount {
                container_path: "/data".into(),
                host_path: "/tmp/hostdata".into(),
                ..Default::default()
            },
            CriMount {
                container_path: "/ro".into(),
                host_path: "/tmp/hostro".into(),
                readonly: true,
                ..Default::default()
            },
            CriMount {
                container_path: "/new/deep/dir".into(),
                host_path: "/tmp/created".into(),
                ..Default::default()
            },
        ];
        c.devices = vec![Device {
            container_path: "/dev/fuse".into(),
            host_path: "/dev/fuse".into(),
            permissions: "rw".into(),
        }];
        if let Some(l) = c.linux.as_mut() {
            l.resources = Some(LinuxContainerResources {
                cpu_period: 100000,
                cpu_quota: 50000,
                cpu_shares: 512,
                memory_limit_in_bytes: 64 << 20,
                oom_score_adj: -998,
                cpuset_cpus: "0".into(),
                ..Default::default()
            });
        }
        let p = pod("pod-a", false, false);
        let v = generate_for(&f, &c, &p, &host).unwrap();

        assert_eq!(v["ociVersion"], "1.0.2-dev");
        assert_eq!(
            v["root"],
            json!({"path": f.rootfs.path(), "readonly": true})
        );
        let mut process = v["process"].clone();
        process.as_object_mut().unwrap().remove("capabilities");
        assert_eq!(
            process,
            json!({
                "user": {"uid": 1001, "gid": 1001, "additionalGids": [1001, 2000, 3000]},
                "args": ["/bin/sh", "-c", "sleep 1000"],
                // containerd: ... "SHARED=image", "SHARED=cri", "NEW=1", and HOME only at exec.
                "env": ["PATH=/img/bin:/bin", "HOSTNAME=pod-a", "IMG=1", "SHARED=cri", "NEW=1", "HOME=/home/bob"],
                "cwd": "/work",
                "noNewPrivileges": true,
                "oomScoreAdj": 0,
            })
        );
        let want = caps(&[
            "CHOWN",
            "DAC_OVERRIDE",
            "FSETID",
            "FOWNER",
            "MKNOD",
            "NET_RAW",
            "SETGID",
            "SETUID",
            "SETFCAP",
            "SETPCAP",
            "NET_BIND_SERVICE",
            "SYS_CHROOT",
            "AUDIT_WRITE",
            "NET_ADMIN",
        ]);
        for set in ["bounding", "effective", "permitted"] {
            assert_eq!(sorted_caps(&v, set), want, "{set}");
        }
        assert!(v["process"]["capabilities"].get("inheritable").is_none());

        let mut mounts = defaults("ro");
        mounts.extend([
            bind("/data", "/tmp/hostdata", "rw"),
            bind("/ro", "/tmp/hostro", "ro"),
        ]);
        mounts.extend(sandbox_binds("ro"));
        mounts.push(bind("/new/deep/dir", "/tmp/created", "rw"));
        assert_eq!(v["mounts"], Value::Array(mounts));

        let linux = &v["linux"];
        assert_eq!(
            linux["resources"],
            json!({
                "devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rw"}],
                "memory": {"limit": 67108864, "swap": 67108864},
                "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"},
            })
        );
        assert_eq!(linux["cgroupsPath"], "/kubepods/besteffort/podpod-a/c1");
        assert_eq!(
            linux["namespaces"],
            json!([
                {"type": "pid"},
                {"type": "ipc", "path": "/run/bungeo/ns/sb1/ipc"},
                {"type": "uts", "path": "/run/bungeo/ns/sb1/uts"},
                {"type": "mount"},
                {"type": "network", "path": "/run/bungeo/ns/sb1/net"},
            ])
        );
        assert_eq!(
            linux["devices"],
            json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438, "uid": 0, "gid": 0}])
        );
        // containerd leaves pod sysctls to the pause container; bungeo has none, so each
        // container applies them to the pod's namespaces.
        assert_eq!(
            linux["sysctl"],
            json!({"net.ipv4.ping_group_range": "0 2147483647"})
        );
        assert_eq!(linux["maskedPaths"].as_array().unwrap().len(), 11);
        assert_eq!(linux["readonlyPaths"].as_array().unwrap().len(), 5);
        let seccomp = &linux["seccomp"];
        assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ERRNO");
        let rules = seccomp["syscalls"].as_array().unwrap();
        assert_eq!(rules.len(), 11);
        assert_eq!(
            rules.last().unwrap(),
            &json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38})
        );
        assert!(v.get("hostname").is_none());
        assert_eq!(
            v["annotations"],
            json!({
                "io.kubernetes.cri.container-name": "app",
                "io.kubernetes.cri.container-type": "container",
                "io.kubernetes.cri.image-name": "docker.io/library/testimg:1",
                "io.kubernetes.cri.sandbox-id": "sb1",
                "io.kubernetes.cri.sandbox-name": "pod-a",
                "io.kubernetes.cri.sandbox-namespace": "default",
                "io.kubernetes.cri.sandbox-uid": "pod-a-uid",
            })
        );
        // Every bind source went through the host, which creates missing ones.
        assert_eq!(host.created().len(), 7);
    }

    #[test]
    fn command_tty_username_and_given_paths_like_containerd() {
        let f = fixture();
        let host = FakeHost::default();
        let mut c = container(
            "cmd",
            LinuxContainerSecurityContext {
                run_as_username: "bob".into(),
                namespace_options: ns(
                    NamespaceMode::Pod,
                    NamespaceMode::Container,
                    NamespaceMode::Pod,
                ),
                masked_paths: vec!["/proc/kcore".into()],
                readonly_paths: vec!["/proc/sys".into()],
                ..Default::default()
            },
        );
        c.command = vec!["/bin/true".into()];
        c.args = vec!["x".into()];
        c.working_dir = "/tmp".into();
        c.tty = true;
        let v = generate_for(&f, &c, &pod("pod-a", false, false), &host).unwrap();
        let mut process = v["process"].clone();
        process.as_object_mut().unwrap().remove("capabilities");
        assert_eq!(
            process,
            json!({
                "terminal": true,
                "user": {"uid": 1001, "gid": 1001, "additionalGids": [1001, 2000]},
                "args": ["/bin/true", "x"],
                "env": ["PATH=/img/bin:/bin", "TERM=xterm", "HOSTNAME=pod-a", "IMG=1", "SHARED=image", "HOME=/home/bob"],
                "cwd": "/tmp",
                "noNewPrivileges": false,
            })
        );
        assert_eq!(sorted_caps(&v, "bounding").len(), 14);
        assert_eq!(v["linux"]["maskedPaths"], json!(["/proc/kcore"]));
        assert_eq!(v["linux"]["readonlyPaths"], json!(["/proc/sys"]));
        assert_eq!(v["root"]["readonly"], false);
        // No CRI resources: only the device rules, no oom_score_adj.
        assert_eq!(
            v["linux"]["resources"],
            json!({"devices": [{"allow": false, "access": "rwm"}]})
        );
        assert!(v["linux"].get("seccomp").is_none());
        let mut mounts = defaults("ro");
        mounts.extend(sandbox_binds("rw"));
        assert_eq!(v["mounts"], Value::Array(mounts));
    }

    #[test]
    fn image_user_and_args_only() {
        let f = fixture();
        let host = FakeHost::default();
        let mut c = container(
            "args",
            LinuxContainerSecurityContext {
                namespace_options: ns(
                    NamespaceMode::Pod,
                    NamespaceMode::Container,
                    NamespaceMode::Pod,
                ),
                ..Default::default()
            },
        );
        c.args = vec!["echo hi".into()];
        let v = generate_for(&f, &c, &pod("pod-a", false, false), &host).unwrap();
        assert_eq!(v["process"]["args"], json!(["/bin/sh", "-c", "echo hi"]));
        // containerd 1.6 gives [10, 1000] here: root's memberships instead of alice's.
        assert_eq!(
            v["process"]["user"],
            json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 1000, 2000]})
        );
        assert!(v["process"].get("oomScoreAdj").is_none());
    }

    #[test]
    fn privileged_host_namespaces_like_containerd() {
        let f = fixture();
        let host = FakeHost {
            cgroup2: true,
            ..Default::default()
        };
        let c = container(
            "priv",
            LinuxContainerSecurityContext {
                privileged: true,
                namespace_options: ns(
                    NamespaceMode::Node,
                    NamespaceMode::Node,
                    NamespaceMode::Node,
                ),
                capabilities: Some(CriCaps {
                    add_capabilities: vec![],
                    drop_capabilities: vec!["ALL".into()],
                    add_ambient_capabilities: vec![],
                }),
                seccomp: Some(SecurityProfile {
                    profile_type: ProfileType::RuntimeDefault as i32,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            },
        );
        let mut files_hostnet = f.files.clone();
        files_hostnet.shm = None;
        let f = Fixture {
            files: files_hostnet,
            pod_ns: PodNamespaces::default(),
            ..f
        };
        let v = generate_for(&f, &c, &pod("pod-p", true, true), &host).unwrap();
        assert_eq!(v["process"]["env"][1], "HOSTNAME=node-1");
        assert_eq!(
            sorted_caps(&v, "bounding").len(),
            host.all_capabilities().len()
        );
        assert_eq!(sorted_caps(&v, "effective"), sorted_caps(&v, "bounding"));
        let mut mounts = defaults("rw");
        let mut binds = sandbox_binds("rw");
        binds[3] = bind("/dev/shm", "/dev/shm", "rw");
        mounts.extend(binds);
        assert_eq!(v["mounts"], Value::Array(mounts));
        let linux = &v["linux"];
        assert_eq!(
            linux["resources"],
            json!({"devices": [{"allow": true, "access": "rwm"}]})
        );
        assert_eq!(linux["devices"].as_array().unwrap().len(), 3);
        // Host namespaces are kept by not listing them; no cgroup namespace when privileged.
        assert_eq!(linux["namespaces"], json!([{"type": "mount"}]));
        assert_eq!(linux["maskedPaths"], json!([]));
        assert_eq!(linux["readonlyPaths"], json!([]));
        assert!(linux.get("seccomp").is_none());
        assert!(linux.get("sysctl").is_none());
    }

    #[test]
    fn request_errors_name_the_container() {
        let f = fixture();
        let host = FakeHost::default();
        let priv_c = container(
            "p",
            LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            },
        );
        let e = generate_for(&f, &priv_c, &pod("pod-a", false, false), &host).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)));
        assert!(
            e.to_string().contains("\"p\" (c1)") && e.to_string().contains("not privileged"),
            "{e}"
        );

        let no_cmd = Fixture {
            image: json!({"config": {"Env": ["A=1"]}}),
            ..fixture()
        };
        let plain = container(
            "x",
            LinuxContainerSecurityContext {
                namespace_options: ns(
                    NamespaceMode::Pod,
                    NamespaceMode::Container,
                    NamespaceMode::Pod,
                ),
                ..Default::default()
            },
        );
        let e = generate_for(&no_cmd, &plain, &pod("pod-a", false, false), &host).unwrap_err();
        assert_eq!(e.to_string(), "container \"x\" (c1): no command specified");

        let mut bad_user = plain.clone();
        if let Some(sc) = bad_user
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
        {
            sc.run_as_username = "mallory".into();
        }
        let e = generate_for(&f, &bad_user, &pod("pod-a", false, false), &host).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("container \"x\" (c1): user \"mallory\" not found"),
            "{e}"
        );

        // The default CRI PID mode is POD, which needs the pod's shared PID namespace.
        let mut default_ns = plain.clone();
        if let Some(sc) = default_ns
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
        {
            sc.namespace_options = None;
        }
        let mut p = pod("pod-a", false, false);
        if let Some(sc) = p.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
            sc.namespace_options = None;
        }
        let e = generate_for(&f, &default_ns, &p, &host).unwrap_err();
        assert!(e.to_string().contains("no shared PID namespace"), "{e}");
        let shared = Fixture {
            pod_ns: PodNamespaces {
                pid: Some("/proc/9/ns/pid".into()),
                ..fixture().pod_ns
            },
            ..fixture()
        };
        let v = generate_for(&shared, &default_ns, &p, &host).unwrap();
        assert_eq!(
            v["linux"]["namespaces"][0],
            json!({"type": "pid", "path": "/proc/9/ns/pid"})
        );
    }

    #[test]
    fn failed_checks_create_no_bind_source() {
        let f = fixture();
        let host = FakeHost::default();
        let mut c = container(
            "s",
            LinuxContainerSecurityContext {
                namespace_options: ns(
                    NamespaceMode::Node,
                    NamespaceMode::Container,
                    NamespaceMode::Pod,
                ),
                ..Default::default()
            },
        );
        c.mounts = vec![CriMount {
            container_path: "/data".into(),
            host_path: "/tmp/would-be-created".into(),
            ..Default::default()
        }];
        // A net sysctl in a pod on the node's network would write the node's setting.
        let e = generate_for(&f, &c, &pod("pod-a", false, false), &host).unwrap_err();
        assert!(e.to_string().contains("node's network namespace"), "{e}");
        assert!(host.created().is_empty());
    }

    #[test]
    fn own_uts_namespace_gets_the_pod_hostname() {
        let f = Fixture {
            pod_ns: PodNamespaces {
                uts: None,
                ..fixture().pod_ns
            },
            ..fixture()
        };
        let c = container(
            "h",
            LinuxContainerSecurityContext {
                namespace_options: ns(
                    NamespaceMode::Pod,
                    NamespaceMode::Container,
                    NamespaceMode::Pod,
                ),
                ..Default::default()
            },
        );
        let v = generate_for(&f, &c, &pod("pod-a", false, false), &FakeHost::default()).unwrap();
        assert_eq!(v["hostname"], "pod-a");
        assert_eq!(v["linux"]["namespaces"][2], json!({"type": "uts"}));
    }
}
