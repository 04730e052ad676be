//! Mounts: containerd's default filesystems, the pod sandbox's files, and the CRI mounts,
//! merged as containerd merges them (a CRI mount replaces anything at the same destination,
//! a CRI `/dev` replaces every default below `/dev`, binds are ordered by destination depth).

use std::path::{Path, PathBuf};

use k8s_cri::v1::{ContainerConfig, Mount as CriMount, MountPropagation};
use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder, Mount};

use super::SandboxFiles;
use super::host::{Propagation, SpecHost};
use crate::{Error, Result};

/// What mount planning needs from the request.
pub(super) struct MountInput<'a> {
    pub container: &'a ContainerConfig,
    pub readonly_rootfs: bool,
    pub privileged: bool,
    /// The container uses the node's IPC namespace, so it shares the node's `/dev/shm`.
    pub ipc_node: bool,
    pub sandbox_files: &'a SandboxFiles,
}

/// The spec's mounts and the rootfs propagation the binds need.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct MountPlan {
    pub mounts: Vec<Mount>,
    pub rootfs_propagation: Option<String>,
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(dest.into());
    m.set_typ(Some(typ.to_string()));
    m.set_source(Some(source.into()));
    m.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

/// containerd's default mounts (its OCI defaults without `/run`, plus the cgroup filesystem);
/// `/sys` and `/sys/fs/cgroup` are writable only for a privileged container.
pub(super) fn default_mounts(privileged: bool) -> Vec<Mount> {
    let access = if privileged { "rw" } else { "ro" };
    let sys_ro: &[&str] = &["nosuid", "noexec", "nodev", access];
    let cgroup_ro: &[&str] = &["nosuid", "noexec", "nodev", "relatime", access];
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount("/sys", "sysfs", "sysfs", sys_ro),
        mount("/sys/fs/cgroup", "cgroup", "cgroup", cgroup_ro),
    ]
}

/// A bind mount to make, from the CRI or from the sandbox.
#[derive(Debug, Clone)]
struct Bind {
    destination: String,
    source: PathBuf,
    readonly: bool,
    recursive_readonly: bool,
    propagation: i32,
    /// Non-empty: an idmapped bind (the runtime idmaps the source with these maps).
    uid_mappings: Vec<LinuxIdMapping>,
    gid_mappings: Vec<LinuxIdMapping>,
}

impl Bind {
    fn sandbox(dest: &str, source: &Path, readonly: bool) -> Self {
        Bind {
            destination: dest.to_string(),
            source: source.to_path_buf(),
            readonly,
            recursive_readonly: false,
            propagation: MountPropagation::PropagationPrivate as i32,
            uid_mappings: Vec::new(),
            gid_mappings: Vec::new(),
        }
    }
}

/// Lexically cleans an absolute container path like Go's `filepath.Clean`.
pub(super) fn clean(path: &str) -> Result<String> {
    if !path.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "mount destination {path:?} is not an absolute path"
        )));
    }
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// containerd's sort key: the number of `/`-separated parts of the cleaned destination.
fn depth(clean_dest: &str) -> usize {
    clean_dest.split('/').count()
}

fn from_cri(m: &CriMount) -> Result<Bind> {
    if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
        return Err(Error::Unsupported(format!(
            "image volume mount at {:?} is not supported",
            m.container_path
        )));
    }
    if m.uid_mappings.is_empty() != m.gid_mappings.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "id-mapped mount at {:?} needs both uid and gid mappings",
            m.container_path
        )));
    }
    if let Some(bad) =
        m.uid_mappings.iter().chain(&m.gid_mappings).find(|x| {
            x.length == 0 || u64::from(x.host_id) + u64::from(x.length) > u64::from(u32::MAX)
        })
    {
        return Err(Error::InvalidArgument(format!(
            "id-mapped mount at {:?}: invalid mapping {}:{}:{}",
            m.container_path, bad.container_id, bad.host_id, bad.length
        )));
    }
    if m.host_path.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "mount at {:?} has no host path",
            m.container_path
        )));
    }
    if m.recursive_read_only {
        if !m.readonly {
            return Err(Error::InvalidArgument(format!(
                "recursive read-only mount at {:?} must also be read-only",
                m.container_path
            )));
        }
        if m.propagation != MountPropagation::PropagationPrivate as i32 {
            return Err(Error::InvalidArgument(format!(
                "recursive read-only mount at {:?} must have private propagation",
                m.container_path
            )));
        }
    }
    let destination = clean(&m.container_path)?;
    check_kernel_destination(&destination)?;
    Ok(Bind {
        destination,
        source: PathBuf::from(&m.host_path),
        readonly: m.readonly,
        recursive_readonly: m.recursive_read_only,
        propagation: m.propagation,
        uid_mappings: oci_id_maps(&m.uid_mappings)?,
        gid_mappings: oci_id_maps(&m.gid_mappings)?,
    })
}

/// Refuses a CRI mount on or inside `/proc` (runc refuses it at create; the files lxcfs
/// emulates are the exception): a volume there could redirect what the runtime writes into
/// procfs (an emptyDir on `/proc/sys/net/ipv4` with a symlink in it turned a namespaced sysctl
/// into a write of the host's `core_pattern`). `/sys` stays open to volumes, as in containerd
/// and runc: the runtime writes nothing there in the container's context, and node agents
/// depend on it (Cilium and Calico mount the host's `/sys/fs/bpf`).
fn check_kernel_destination(clean_dest: &str) -> Result<()> {
    if !crate::rootfs::proc_destination_allowed(Path::new(clean_dest), "bind") {
        return Err(Error::InvalidArgument(format!(
            "mount at {clean_dest:?} is not allowed: volumes cannot be mounted on or inside /proc"
        )));
    }
    Ok(())
}

/// CRI id mappings as OCI ones.
pub(super) fn oci_id_maps(maps: &[k8s_cri::v1::IdMapping]) -> Result<Vec<LinuxIdMapping>> {
    maps.iter()
        .map(|m| {
            LinuxIdMappingBuilder::default()
                .host_id(m.host_id)
                .container_id(m.container_id)
                .size(m.length)
                .build()
                .map_err(|e| Error::InvalidSpec(format!("id mapping: {e}")))
        })
        .collect()
}

/// Plans every mount of the container. Missing bind sources are created as directories
/// through `host`, as containerd does.
pub(super) fn plan(input: &MountInput, host: &dyn SpecHost) -> Result<MountPlan> {
    let mut binds: Vec<Bind> = input
        .container
        .mounts
        .iter()
        .map(from_cri)
        .collect::<Result<_>>()?;
    if let Some(b) = binds.iter().find(|b| b.recursive_readonly)
        && !host.recursive_read_only_supported()
    {
        return Err(Error::InvalidArgument(format!(
            "recursive read-only mount at {:?}: this kernel cannot make a mount tree read-only (mount_setattr with AT_RECURSIVE, Linux 5.12 or later)",
            b.destination
        )));
    }
    let requested = |dest: &str, binds: &[Bind]| binds.iter().any(|b| b.destination == dest);

    let files = input.sandbox_files;
    let ro = input.readonly_rootfs;
    let mut extra = Vec::new();
    if let Some(p) = &files.hostname {
        extra.push(Bind::sandbox("/etc/hostname", p, ro));
    }
    if let Some(p) = &files.hosts {
        extra.push(Bind::sandbox("/etc/hosts", p, ro));
    }
    if let Some(p) = &files.resolv_conf {
        extra.push(Bind::sandbox("/etc/resolv.conf", p, ro));
    }
    let shm = if input.ipc_node {
        Some(Path::new("/dev/shm"))
    } else {
        files.shm.as_deref()
    };
    if let Some(p) = shm {
        extra.push(Bind::sandbox("/dev/shm", p, false));
    }
    for e in extra {
        if !requested(&e.destination, &binds) {
            binds.push(e);
        }
    }
    // Shallow destinations first, so a deeper mount is not hidden by its parent.
    binds.sort_by_key(|b| depth(&b.destination));

    let dev_replaced = requested("/dev", &binds);
    let mut mounts: Vec<Mount> = default_mounts(input.privileged)
        .into_iter()
        .filter(|m| {
            let dest = m.destination().to_string_lossy();
            let replaced = requested(&dest, &binds) || (dev_replaced && dest.starts_with("/dev/"));
            !replaced
        })
        .collect();

    let mut rootfs_propagation: Option<String> = None;
    for b in &binds {
        let source = host.prepare_bind_source(&b.source)?;
        let prop = match MountPropagation::try_from(b.propagation) {
            Ok(MountPropagation::PropagationBidirectional) => {
                if host.mount_propagation(&source)? != Propagation::Shared {
                    return Err(Error::InvalidArgument(format!(
                        "bidirectional mount at {:?}: host path {} is not on a shared mount",
                        b.destination,
                        source.display()
                    )));
                }
                rootfs_propagation = Some("rshared".to_string());
                "rshared"
            }
            Ok(MountPropagation::PropagationHostToContainer) => {
                if host.mount_propagation(&source)? == Propagation::Private {
                    return Err(Error::InvalidArgument(format!(
                        "host-to-container mount at {:?}: host path {} is not on a shared or slave mount",
                        b.destination,
                        source.display()
                    )));
                }
                if rootfs_propagation.as_deref() != Some("rshared") {
                    rootfs_propagation = Some("rslave".to_string());
                }
                "rslave"
            }
            Ok(MountPropagation::PropagationPrivate) => "rprivate",
            Err(_) => {
                tracing::warn!(
                    destination = %b.destination,
                    propagation = b.propagation,
                    "unknown mount propagation, using private"
                );
                "rprivate"
            }
        };
        let access = if b.recursive_readonly {
            "rro"
        } else if b.readonly {
            "ro"
        } else {
            "rw"
        };
        let mut m = mount(
            &b.destination,
            "bind",
            &source.to_string_lossy(),
            &["rbind", prop, access],
        );
        if !b.uid_mappings.is_empty() {
            m.set_uid_mappings(Some(b.uid_mappings.clone()));
            m.set_gid_mappings(Some(b.gid_mappings.clone()));
        }
        mounts.push(m);
    }
    Ok(MountPlan {
        mounts,
        rootfs_propagation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::host::tests_support::FakeHost;
    use serde_json::json;

    fn cri(container: &str, host: &str, readonly: bool, prop: MountPropagation) -> CriMount {
        CriMount {
            container_path: container.into(),
            host_path: host.into(),
            readonly,
            propagation: prop as i32,
            ..Default::default()
        }
    }

    fn files() -> SandboxFiles {
        SandboxFiles {
            hosts: Some("/sb/hosts".into()),
            resolv_conf: Some("/sb/resolv.conf".into()),
            hostname: Some("/sb/hostname".into()),
            shm: Some("/sb/shm".into()),
        }
    }

    fn run(
        c: &ContainerConfig,
        ro: bool,
        privileged: bool,
        ipc_node: bool,
        host: &FakeHost,
    ) -> Result<MountPlan> {
        let f = files();
        plan(
            &MountInput {
                container: c,
                readonly_rootfs: ro,
                privileged,
                ipc_node,
                sandbox_files: &f,
            },
            host,
        )
    }

    fn dests(p: &MountPlan) -> Vec<String> {
        p.mounts
            .iter()
            .map(|m| m.destination().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn no_cri_mounts_matches_containerd() {
        let host = FakeHost::default();
        let p = run(&ContainerConfig::default(), false, false, false, &host).unwrap();
        let got = serde_json::to_value(&p.mounts).unwrap();
        let bind = |d: &str, s: &str, rw: &str| json!({"destination": d, "type": "bind", "source": s, "options": ["rbind", "rprivate", rw]});
        assert_eq!(
            got,
            json!([
                {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
                bind("/etc/hostname", "/sb/hostname", "rw"),
                bind("/etc/hosts", "/sb/hosts", "rw"),
                bind("/etc/resolv.conf", "/sb/resolv.conf", "rw"),
                bind("/dev/shm", "/sb/shm", "rw"),
            ])
        );
        assert_eq!(p.rootfs_propagation, None);
    }

    #[test]
    fn readonly_rootfs_makes_sandbox_files_readonly_but_not_shm() {
        let host = FakeHost::default();
        let p = run(&ContainerConfig::default(), true, false, false, &host).unwrap();
        let opts = |d: &str| {
            p.mounts
                .iter()
                .find(|m| m.destination() == Path::new(d))
                .and_then(|m| m.options().clone())
                .unwrap()
        };
        assert_eq!(opts("/etc/hosts"), vec!["rbind", "rprivate", "ro"]);
        assert_eq!(opts("/etc/resolv.conf")[2], "ro");
        assert_eq!(opts("/etc/hostname")[2], "ro");
        assert_eq!(opts("/dev/shm")[2], "rw");
    }

    #[test]
    fn without_sandbox_shm_the_default_tmpfs_stays_and_ipc_node_binds_host_shm() {
        let host = FakeHost::default();
        let c = ContainerConfig::default();
        let f = SandboxFiles::default();
        let p = plan(
            &MountInput {
                container: &c,
                readonly_rootfs: false,
                privileged: false,
                ipc_node: false,
                sandbox_files: &f,
            },
            &host,
        )
        .unwrap();
        let shm = p
            .mounts
            .iter()
            .find(|m| m.destination() == Path::new("/dev/shm"))
            .unwrap();
        assert_eq!(shm.typ().as_deref(), Some("tmpfs"));
        let p = run(&c, false, false, true, &host).unwrap();
        let shm = p
            .mounts
            .iter()
            .find(|m| m.destination() == Path::new("/dev/shm"))
            .unwrap();
        assert_eq!(shm.source().as_deref(), Some(Path::new("/dev/shm")));
        assert_eq!(shm.typ().as_deref(), Some("bind"));
    }

    #[test]
    fn cri_mounts_override_and_sort_by_depth() {
        let host = FakeHost::default();
        let c = ContainerConfig {
            mounts: vec![
                cri(
                    "/data/deep/er",
                    "/h/deeper",
                    false,
                    MountPropagation::PropagationPrivate,
                ),
                cri(
                    "/etc/hosts/",
                    "/h/my-hosts",
                    true,
                    MountPropagation::PropagationPrivate,
                ),
                cri(
                    "/data",
                    "/h/data",
                    false,
                    MountPropagation::PropagationPrivate,
                ),
                cri(
                    "/dev/mqueue",
                    "/h/mqueue",
                    true,
                    MountPropagation::PropagationPrivate,
                ),
            ],
            ..Default::default()
        };
        let p = run(&c, false, false, false, &host).unwrap();
        assert_eq!(
            dests(&p),
            vec![
                "/proc",
                "/dev",
                "/dev/pts",
                "/sys",
                "/sys/fs/cgroup",
                // depth 2
                "/data",
                // depth 3, in request order, then the sandbox files
                "/etc/hosts",
                "/dev/mqueue",
                "/etc/hostname",
                "/etc/resolv.conf",
                "/dev/shm",
                // depth 4
                "/data/deep/er",
            ]
        );
        let hosts = p
            .mounts
            .iter()
            .find(|m| m.destination() == Path::new("/etc/hosts"))
            .unwrap();
        assert_eq!(hosts.source().as_deref(), Some(Path::new("/h/my-hosts")));
        assert_eq!(
            hosts.options().clone().unwrap(),
            vec!["rbind", "rprivate", "ro"]
        );
        // Missing sources were created as directories, in mount order.
        assert_eq!(
            host.created(),
            vec![
                "/h/data",
                "/h/my-hosts",
                "/h/mqueue",
                "/sb/hostname",
                "/sb/resolv.conf",
                "/sb/shm",
                "/h/deeper"
            ]
            .into_iter()
            .map(PathBuf::from)
            .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_dev_mount_replaces_every_default_below_dev() {
        let host = FakeHost::default();
        let c = ContainerConfig {
            mounts: vec![cri(
                "/dev",
                "/h/dev",
                false,
                MountPropagation::PropagationPrivate,
            )],
            ..Default::default()
        };
        let p = run(&c, false, false, false, &host).unwrap();
        let d = dests(&p);
        assert!(!d.iter().any(|x| x == "/dev/pts" || x == "/dev/mqueue"));
        // The sandbox's /dev/shm is not a default: it is still bound, after /dev.
        assert_eq!(
            d.iter()
                .filter(|x| x.starts_with("/dev"))
                .collect::<Vec<_>>(),
            vec!["/dev", "/dev/shm"]
        );
    }

    #[test]
    fn privileged_sysfs_and_cgroup_are_writable() {
        let host = FakeHost::default();
        let p = run(&ContainerConfig::default(), false, true, false, &host).unwrap();
        for d in ["/sys", "/sys/fs/cgroup"] {
            let m = p
                .mounts
                .iter()
                .find(|m| m.destination() == Path::new(d))
                .unwrap();
            let opts = m.options().clone().unwrap();
            assert!(!opts.contains(&"ro".to_string()), "{d}");
            assert_eq!(opts.last().map(String::as_str), Some("rw"), "{d}");
        }
    }

    #[test]
    fn propagation_modes() {
        let host = FakeHost::default();
        host.set_propagation("/shared", Propagation::Shared);
        host.set_propagation("/slave", Propagation::Slave);
        let c = ContainerConfig {
            mounts: vec![
                cri(
                    "/a",
                    "/slave/a",
                    false,
                    MountPropagation::PropagationHostToContainer,
                ),
                cri(
                    "/b",
                    "/shared/b",
                    false,
                    MountPropagation::PropagationBidirectional,
                ),
                cri(
                    "/c",
                    "/shared/c",
                    false,
                    MountPropagation::PropagationHostToContainer,
                ),
            ],
            ..Default::default()
        };
        let p = run(&c, false, false, false, &host).unwrap();
        let opt = |d: &str| {
            p.mounts
                .iter()
                .find(|m| m.destination() == Path::new(d))
                .unwrap()
                .options()
                .clone()
                .unwrap()[1]
                .clone()
        };
        assert_eq!(opt("/a"), "rslave");
        assert_eq!(opt("/b"), "rshared");
        assert_eq!(opt("/c"), "rslave");
        assert_eq!(p.rootfs_propagation.as_deref(), Some("rshared"));

        let c = ContainerConfig {
            mounts: vec![cri(
                "/a",
                "/slave/a",
                false,
                MountPropagation::PropagationHostToContainer,
            )],
            ..Default::default()
        };
        assert_eq!(
            run(&c, false, false, false, &host)
                .unwrap()
                .rootfs_propagation
                .as_deref(),
            Some("rslave")
        );

        let c = ContainerConfig {
            mounts: vec![cri(
                "/a",
                "/slave/a",
                false,
                MountPropagation::PropagationBidirectional,
            )],
            ..Default::default()
        };
        let e = run(&c, false, false, false, &host).unwrap_err().to_string();
        assert!(e.contains("is not on a shared mount"), "{e}");
        let c = ContainerConfig {
            mounts: vec![cri(
                "/a",
                "/private/a",
                false,
                MountPropagation::PropagationHostToContainer,
            )],
            ..Default::default()
        };
        let e = run(&c, false, false, false, &host).unwrap_err().to_string();
        assert!(e.contains("is not on a shared or slave mount"), "{e}");
    }

    #[test]
    fn mounts_on_proc_are_invalid_arguments_and_sys_is_open() {
        let host = FakeHost::default();
        let plan = |dest: &str| {
            let c = ContainerConfig {
                mounts: vec![cri(
                    dest,
                    "/h/vol",
                    false,
                    MountPropagation::PropagationPrivate,
                )],
                ..Default::default()
            };
            run(&c, false, false, false, &host)
        };
        for dest in [
            "/proc/sys/net/ipv4",
            "/proc",
            "/proc/",
            "/proc/sys",
            "/tmp/../proc/sys/kernel",
        ] {
            let e = plan(dest).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{dest}: {e:?}");
            assert!(e.to_string().contains("not allowed"), "{dest}: {e}");
        }
        // What lxcfs emulates stays possible, look-alike names are not /proc, and node agents
        // mount below /sys (the host's /sys/fs/bpf).
        for dest in [
            "/sys/fs/bpf",
            "/sys",
            "/proc/cpuinfo",
            "/proc/meminfo",
            "/procedures",
            "/system",
            "/data/proc",
        ] {
            plan(dest).unwrap_or_else(|e| panic!("{dest}: {e}"));
        }
    }

    #[test]
    fn recursive_readonly_and_invalid_mounts() {
        let host = FakeHost::default();
        let mut m = cri("/r", "/h/r", true, MountPropagation::PropagationPrivate);
        m.recursive_read_only = true;
        let c = ContainerConfig {
            mounts: vec![m.clone()],
            ..Default::default()
        };
        let p = run(&c, false, false, false, &host).unwrap();
        let r = p
            .mounts
            .iter()
            .find(|m| m.destination() == Path::new("/r"))
            .unwrap();
        assert_eq!(
            r.options().clone().unwrap(),
            vec!["rbind", "rprivate", "rro"]
        );

        let bad = |m: CriMount| {
            let c = ContainerConfig {
                mounts: vec![m],
                ..Default::default()
            };
            run(&c, false, false, false, &host).unwrap_err().to_string()
        };
        let mut not_ro = m.clone();
        not_ro.readonly = false;
        assert!(bad(not_ro).contains("must also be read-only"));
        let mut shared = m.clone();
        shared.propagation = MountPropagation::PropagationHostToContainer as i32;
        assert!(bad(shared).contains("must have private propagation"));
        let old_kernel = FakeHost {
            no_recursive_read_only: true,
            ..Default::default()
        };
        let e = run(&c, false, false, false, &old_kernel).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        assert!(e.to_string().contains("AT_RECURSIVE"), "{e}");
        // Without rro the same kernel is fine.
        let plain = ContainerConfig {
            mounts: vec![cri(
                "/r",
                "/h/r",
                true,
                MountPropagation::PropagationPrivate,
            )],
            ..Default::default()
        };
        run(&plain, false, false, false, &old_kernel).unwrap();
        assert!(
            bad(cri(
                "rel",
                "/h",
                false,
                MountPropagation::PropagationPrivate
            ))
            .contains("not an absolute path")
        );
        assert!(
            bad(cri("/x", "", false, MountPropagation::PropagationPrivate))
                .contains("has no host path")
        );
        let mut img = cri("/x", "", false, MountPropagation::PropagationPrivate);
        img.image = Some(k8s_cri::v1::ImageSpec {
            image: "busybox".into(),
            ..Default::default()
        });
        assert!(bad(img).contains("image volume mount"));
        let idmap = |uids: Vec<(u32, u32, u32)>, gids: Vec<(u32, u32, u32)>| {
            let mut m = cri("/id", "/h/id", false, MountPropagation::PropagationPrivate);
            let conv = |v: Vec<(u32, u32, u32)>| {
                v.into_iter()
                    .map(|(c, h, l)| k8s_cri::v1::IdMapping {
                        container_id: c,
                        host_id: h,
                        length: l,
                    })
                    .collect()
            };
            m.uid_mappings = conv(uids);
            m.gid_mappings = conv(gids);
            m
        };
        assert!(bad(idmap(vec![(0, 1000, 10)], vec![])).contains("both uid and gid"));
        assert!(bad(idmap(vec![(0, 1000, 0)], vec![(0, 1000, 1)])).contains("invalid mapping"));
        let c = ContainerConfig {
            mounts: vec![idmap(vec![(0, 100_000, 65536)], vec![(0, 200_000, 65536)])],
            ..Default::default()
        };
        let p = run(&c, false, false, false, &host).unwrap();
        let m = p
            .mounts
            .iter()
            .find(|m| m.destination() == Path::new("/id"))
            .unwrap();
        let u = m.uid_mappings().clone().unwrap();
        let g = m.gid_mappings().clone().unwrap();
        assert_eq!((u[0].host_id(), u[0].size()), (100_000, 65536));
        assert_eq!(g[0].host_id(), 200_000);
    }

    #[test]
    fn clean_paths_like_go() {
        assert_eq!(clean("/").unwrap(), "/");
        assert_eq!(clean("/a//b/./c/..//").unwrap(), "/a/b");
        assert_eq!(clean("/../x").unwrap(), "/x");
        assert!(clean("x").is_err());
        assert_eq!(depth("/"), 2);
        assert_eq!(depth("/a"), 2);
        assert_eq!(depth("/a/b"), 3);
    }
}
