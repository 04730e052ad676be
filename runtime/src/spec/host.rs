//! What spec generation asks of the host, behind one trait so tests can fake it.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capability, LinuxDevice};

use crate::{Error, Result};

/// Propagation of the mount a path lives on, from `/proc/self/mountinfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// `shared:N`: events propagate both ways.
    Shared,
    /// `master:N` without `shared`: events propagate into this mount only.
    Slave,
    /// Neither.
    Private,
}

/// The host facts and side effects spec generation depends on.
pub trait SpecHost {
    /// Makes a bind-mount source usable as containerd does: a missing path is created as a
    /// directory (mode 0755, parents included). Returns the path with symlinks resolved.
    fn prepare_bind_source(&self, path: &Path) -> Result<PathBuf>;
    /// The propagation of the mount holding `path`.
    fn mount_propagation(&self, path: &Path) -> Result<Propagation>;
    /// The device nodes at `path` (symlinks resolved by the caller): the node itself, or every
    /// node below a directory the way containerd walks one. `path` in each result is the host
    /// path of the node. A path that is neither a device nor a directory is an error.
    fn devices_at(&self, path: &Path) -> Result<Vec<LinuxDevice>>;
    /// Every device node under the host's `/dev`, for privileged containers.
    fn host_devices(&self) -> Result<Vec<LinuxDevice>>;
    /// Resolves symlinks in a host path.
    fn resolve(&self, path: &Path) -> Result<PathBuf>;
    /// The node's hostname (HOSTNAME of containers in host-network pods).
    fn hostname(&self) -> Result<String>;
    /// What "all capabilities" means for a privileged container: every capability the kernel
    /// knows that this process holds in its effective set (as containerd's `cap.Current()`; a
    /// runtime cannot grant what it lacks, e.g. CAP_SYS_RESOURCE here), in number order.
    fn all_capabilities(&self) -> Vec<Capability>;
    /// Whether `/sys/fs/cgroup` is a pure cgroup v2 hierarchy.
    fn cgroup2_unified(&self) -> bool;
    /// Whether the hugetlb controller is available where the cgroup driver looks for it.
    fn hugetlb_available(&self) -> bool;
    /// Whether the memory controller can limit swap.
    fn swap_available(&self) -> bool;
    /// Whether an AppArmor profile of that name is loaded.
    fn apparmor_profile_loaded(&self, name: &str) -> Result<bool>;
    /// Whether the kernel makes a mount tree read-only with `mount_setattr(AT_RECURSIVE)`.
    fn recursive_read_only_supported(&self) -> bool;
}

/// The real host.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinuxHost;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

impl SpecHost for LinuxHost {
    fn prepare_bind_source(&self, path: &Path) -> Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(path)
                    .map_err(|e| Error::io("create bind-mount source", path, e))?;
            }
            Err(e) => return Err(Error::io("stat bind-mount source", path, e)),
        }
        self.resolve(path)
    }

    fn mount_propagation(&self, path: &Path) -> Result<Propagation> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
        propagation_from_mountinfo(&info, path)
            .ok_or_else(|| Error::InvalidArgument(format!("no mount found for {}", path.display())))
    }

    fn devices_at(&self, path: &Path) -> Result<Vec<LinuxDevice>> {
        super::devices::scan(path)
    }

    fn host_devices(&self) -> Result<Vec<LinuxDevice>> {
        super::devices::scan(Path::new("/dev"))
    }

    fn resolve(&self, path: &Path) -> Result<PathBuf> {
        std::fs::canonicalize(path).map_err(|e| Error::io("resolve", path, e))
    }

    fn hostname(&self) -> Result<String> {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .map_err(|e| Error::sys("gethostname", e))
    }

    fn all_capabilities(&self) -> Vec<Capability> {
        let known = &super::security::KNOWN_CAPABILITIES;
        let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(known.len() - 1);
        let in_kernel = &known[..=last.min(known.len() - 1)];
        match caps::read(None, caps::CapSet::Effective) {
            Ok(held) => in_kernel
                .iter()
                .copied()
                .filter(|c| {
                    format!("CAP_{c}")
                        .parse::<caps::Capability>()
                        .is_ok_and(|c| held.contains(&c))
                })
                .collect(),
            Err(_) => in_kernel.to_vec(),
        }
    }

    fn cgroup2_unified(&self) -> bool {
        nix::sys::statfs::statfs(CGROUP_ROOT)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
    }

    fn hugetlb_available(&self) -> bool {
        if self.cgroup2_unified() {
            std::fs::read_to_string(Path::new(CGROUP_ROOT).join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "hugetlb"))
        } else {
            Path::new(CGROUP_ROOT).join("hugetlb").is_dir()
        }
    }

    fn swap_available(&self) -> bool {
        if self.cgroup2_unified() {
            // memory.swap.max does not exist at the root: look at our own cgroup.
            let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
            let Some(rel) = own.lines().find_map(|l| l.strip_prefix("0::")) else {
                return false;
            };
            Path::new(CGROUP_ROOT)
                .join(rel.trim_start_matches('/'))
                .join("memory.swap.max")
                .exists()
        } else {
            Path::new(CGROUP_ROOT)
                .join("memory/memory.memsw.limit_in_bytes")
                .exists()
        }
    }

    fn apparmor_profile_loaded(&self, name: &str) -> Result<bool> {
        crate::apparmor::profile_loaded(name)
    }

    fn recursive_read_only_supported(&self) -> bool {
        crate::features::recursive_read_only_supported()
    }
}

/// The propagation of the mount with the longest mount point that contains `path`.
fn propagation_from_mountinfo(info: &str, path: &Path) -> Option<Propagation> {
    let mut best: Option<(usize, Propagation)> = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 7 {
            continue;
        }
        let mount_point = PathBuf::from(unescape_mountinfo(fields[4]));
        if !path.starts_with(&mount_point) {
            continue;
        }
        let optional = fields[6..].iter().take_while(|f| **f != "-");
        let mut prop = Propagation::Private;
        for f in optional {
            if f.starts_with("shared:") {
                prop = Propagation::Shared;
                break;
            }
            if f.starts_with("master:") {
                prop = Propagation::Slave;
            }
        }
        let depth = mount_point.components().count();
        // Later lines win on equal depth: they are mounted on top.
        if best.is_none_or(|(d, _)| depth >= d) {
            best = Some((depth, prop));
        }
    }
    best.map(|(_, p)| p)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs udev rw
40 22 0:40 / /var/lib/kubelet rw,relatime master:7 - ext4 /dev/sdb rw
41 40 0:41 / /var/lib/kubelet/pods rw,relatime - tmpfs tmpfs rw
42 22 0:42 / /mnt/with\\040space rw - tmpfs tmpfs rw
43 22 0:43 / /mnt/both rw shared:9 master:3 - tmpfs tmpfs rw
";

    #[test]
    fn propagation_picks_the_deepest_mount() {
        let p = |s: &str| propagation_from_mountinfo(MOUNTINFO, Path::new(s));
        assert_eq!(p("/"), Some(Propagation::Shared));
        assert_eq!(p("/home/x"), Some(Propagation::Shared));
        assert_eq!(p("/var/lib/kubelet/x"), Some(Propagation::Slave));
        assert_eq!(p("/var/lib/kubelet/pods/a"), Some(Propagation::Private));
        assert_eq!(p("/mnt/with space/x"), Some(Propagation::Private));
        assert_eq!(p("/mnt/both"), Some(Propagation::Shared));
        // A path component that only shares a prefix string is not under the mount.
        assert_eq!(p("/devx"), Some(Propagation::Shared));
        assert_eq!(propagation_from_mountinfo("", Path::new("/")), None);
    }

    #[test]
    fn real_host_answers() {
        let h = LinuxHost;
        assert!(!h.hostname().unwrap().is_empty());
        let caps = h.all_capabilities();
        assert!(caps.contains(&Capability::Chown));
        let held = caps::read(None, caps::CapSet::Effective).unwrap();
        assert_eq!(
            caps.contains(&Capability::SysAdmin),
            held.contains(&caps::Capability::CAP_SYS_ADMIN)
        );
        assert_eq!(
            caps.contains(&Capability::SysResource),
            held.contains(&caps::Capability::CAP_SYS_RESOURCE)
        );
        assert!(h.mount_propagation(Path::new("/")).is_ok());
    }

    #[test]
    fn prepare_bind_source_creates_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let want = dir.path().join("a/b/c");
        let got = LinuxHost.prepare_bind_source(&want).unwrap();
        assert!(want.is_dir());
        assert_eq!(got, std::fs::canonicalize(&want).unwrap());
        // An existing file stays a file, and a symlink is resolved.
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(
            LinuxHost.prepare_bind_source(&link).unwrap(),
            std::fs::canonicalize(&file).unwrap()
        );
        assert!(file.is_file());
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    //! A host whose answers the tests choose.

    use std::cell::RefCell;
    use std::collections::HashMap;

    use oci_spec::runtime::LinuxDeviceType;

    use super::*;

    /// Every path is missing (so bind sources get "created"), device nodes come from a fixed
    /// table, and mounts are private unless set otherwise.
    #[derive(Debug, Default)]
    pub(crate) struct FakeHost {
        pub hugetlb: bool,
        pub swap: bool,
        pub cgroup2: bool,
        pub apparmor_profiles: Vec<String>,
        pub no_recursive_read_only: bool,
        pub created: RefCell<Vec<PathBuf>>,
        pub propagation: RefCell<HashMap<PathBuf, Propagation>>,
    }

    pub(crate) fn dev(path: &str, typ: LinuxDeviceType, major: i64, minor: i64) -> LinuxDevice {
        let mut d = LinuxDevice::default();
        d.set_path(path.into());
        d.set_typ(typ);
        d.set_major(major);
        d.set_minor(minor);
        d.set_file_mode(Some(0o666));
        d.set_uid(Some(0));
        d.set_gid(Some(0));
        d
    }

    impl FakeHost {
        pub(crate) fn created(&self) -> Vec<PathBuf> {
            self.created.borrow().clone()
        }

        pub(crate) fn set_propagation(&self, prefix: &str, p: Propagation) {
            self.propagation.borrow_mut().insert(prefix.into(), p);
        }
    }

    impl SpecHost for FakeHost {
        fn prepare_bind_source(&self, path: &Path) -> Result<PathBuf> {
            self.created.borrow_mut().push(path.to_path_buf());
            Ok(path.to_path_buf())
        }

        fn mount_propagation(&self, path: &Path) -> Result<Propagation> {
            Ok(self
                .propagation
                .borrow()
                .iter()
                .filter(|(prefix, _)| path.starts_with(prefix))
                .map(|(_, p)| *p)
                .next()
                .unwrap_or(Propagation::Private))
        }

        fn devices_at(&self, path: &Path) -> Result<Vec<LinuxDevice>> {
            match path.to_str() {
                Some("/dev/fuse") => Ok(vec![dev("/dev/fuse", LinuxDeviceType::C, 10, 229)]),
                Some("/dev/dri") => Ok(vec![
                    dev("/dev/dri/card0", LinuxDeviceType::C, 226, 0),
                    dev("/dev/dri/renderD128", LinuxDeviceType::C, 226, 128),
                ]),
                _ => Err(Error::InvalidArgument(format!(
                    "{} is not a device node",
                    path.display()
                ))),
            }
        }

        fn host_devices(&self) -> Result<Vec<LinuxDevice>> {
            Ok(vec![
                dev("/dev/null", LinuxDeviceType::C, 1, 3),
                dev("/dev/fuse", LinuxDeviceType::C, 10, 229),
                dev("/dev/sda", LinuxDeviceType::B, 8, 0),
            ])
        }

        fn resolve(&self, path: &Path) -> Result<PathBuf> {
            if path.to_string_lossy().contains("missing") {
                return Err(Error::io(
                    "resolve",
                    path,
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ));
            }
            Ok(path.to_path_buf())
        }

        fn hostname(&self) -> Result<String> {
            Ok("node-1".to_string())
        }

        fn all_capabilities(&self) -> Vec<Capability> {
            // A kernel with cap_last_cap = 39: CAP_CHECKPOINT_RESTORE unknown.
            crate::spec::security::KNOWN_CAPABILITIES[..40].to_vec()
        }

        fn cgroup2_unified(&self) -> bool {
            self.cgroup2
        }

        fn hugetlb_available(&self) -> bool {
            self.hugetlb
        }

        fn swap_available(&self) -> bool {
            self.swap
        }

        fn apparmor_profile_loaded(&self, name: &str) -> Result<bool> {
            Ok(self.apparmor_profiles.iter().any(|p| p == name))
        }

        fn recursive_read_only_supported(&self) -> bool {
            !self.no_recursive_read_only
        }
    }
}
