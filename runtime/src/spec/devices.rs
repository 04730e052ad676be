//! Device nodes and the device cgroup: CRI devices with their permissions, or every host device
//! and no restriction for a privileged container.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use k8s_cri::v1::ContainerConfig;
use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};

use super::host::SpecHost;
use crate::{Error, Result};

/// Directories of `/dev` that hold no devices to copy (containerd's and runc's list).
const SKIPPED_DIRS: &[&str] = &["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// The devices to create in the container and the device cgroup rules.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct DevicePlan {
    pub devices: Vec<LinuxDevice>,
    pub cgroup_rules: Vec<LinuxDeviceCgroup>,
}

fn rule(allow: bool, dev: Option<&LinuxDevice>, access: &str) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(allow);
    if let Some(d) = dev {
        r.set_typ(Some(d.typ()));
        r.set_major(Some(d.major()));
        r.set_minor(Some(d.minor()));
    }
    r.set_access(Some(access.to_string()));
    r
}

/// Plans devices as containerd does: a privileged container gets every host device and
/// `allow a *:* rwm`; any other starts from `deny a *:* rwm` and allows each CRI device with its
/// permissions (a directory adds every device node below it). The runtime adds the standard
/// devices (`/dev/null`, ...) and their rules itself, as runc does.
pub(super) fn plan(
    c: &ContainerConfig,
    privileged: bool,
    host: &dyn SpecHost,
) -> Result<DevicePlan> {
    if privileged {
        return Ok(DevicePlan {
            devices: host.host_devices()?,
            cgroup_rules: vec![rule(true, None, "rwm")],
        });
    }
    let mut plan = DevicePlan {
        devices: Vec::new(),
        cgroup_rules: vec![rule(false, None, "rwm")],
    };
    for d in &c.devices {
        if !d.container_path.starts_with('/') {
            return Err(Error::InvalidArgument(format!(
                "device container path {:?} is not absolute",
                d.container_path
            )));
        }
        let access = permissions(&d.permissions)?;
        let resolved = host.resolve(Path::new(&d.host_path)).map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Error::InvalidArgument(format!(
                    "device {:?} does not exist on the host",
                    d.host_path
                ))
            }
            other => other,
        })?;
        let found = host.devices_at(&resolved)?;
        for mut dev in found {
            let in_container = match dev.path().strip_prefix(&resolved) {
                Ok(rel) if !rel.as_os_str().is_empty() => Path::new(&d.container_path).join(rel),
                _ => PathBuf::from(&d.container_path),
            };
            dev.set_path(in_container);
            plan.cgroup_rules.push(rule(true, Some(&dev), &access));
            match plan.devices.iter_mut().find(|x| x.path() == dev.path()) {
                Some(existing) => *existing = dev,
                None => plan.devices.push(dev),
            }
        }
    }
    Ok(plan)
}

/// Validates CRI device permissions (`r`, `w`, `m`); empty means all of them.
fn permissions(p: &str) -> Result<String> {
    if p.is_empty() {
        return Ok("rwm".to_string());
    }
    if p.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        Ok(p.to_string())
    } else {
        Err(Error::InvalidArgument(format!(
            "device permissions {p:?} may only contain r, w and m"
        )))
    }
}

/// The device node at `path`, or every node below it if it is a directory.
pub(super) fn scan(path: &Path) -> Result<Vec<LinuxDevice>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io("stat device path", path, e))?;
    if !meta.is_dir() {
        return match device_from_path(path)? {
            Some(d) => Ok(vec![d]),
            None => Err(Error::InvalidArgument(format!(
                "{} is not a device node",
                path.display()
            ))),
        };
    }
    let mut out = Vec::new();
    walk(path, &mut out)?;
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<LinuxDevice>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))?;
    let mut entries: Vec<_> = entries
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::io("read directory", dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        let ft = match entry.file_type() {
            Ok(ft) => ft,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("stat", path, e)),
        };
        if ft.is_dir() {
            if SKIPPED_DIRS.iter().any(|s| name == *s) {
                continue;
            }
            walk(&path, out)?;
            continue;
        }
        // The console is the runtime's to set up; symlinks are not devices.
        if name == "console" || ft.is_symlink() {
            continue;
        }
        if let Some(d) = device_from_path(&path)? {
            out.push(d);
        }
    }
    Ok(())
}

/// The device at `path` (not following a symlink), `None` if it is not a device node.
fn device_from_path(path: &Path) -> Result<Option<LinuxDevice>> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("lstat", path, e)),
    };
    let ft = meta.file_type();
    let typ = if ft.is_block_device() {
        LinuxDeviceType::B
    } else if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_fifo() {
        LinuxDeviceType::P
    } else {
        return Ok(None);
    };
    let rdev = meta.rdev();
    let mut d = LinuxDevice::default();
    d.set_path(path.to_path_buf());
    d.set_typ(typ);
    d.set_major(nix::sys::stat::major(rdev) as i64);
    d.set_minor(nix::sys::stat::minor(rdev) as i64);
    d.set_file_mode(Some(meta.mode() & 0o7777));
    d.set_uid(Some(meta.uid()));
    d.set_gid(Some(meta.gid()));
    Ok(Some(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::host::tests_support::FakeHost;
    use k8s_cri::v1::Device;

    fn fifo(p: &Path) {
        nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
    }

    #[test]
    fn scan_walks_directories_like_containerd() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fifo(&root.join("a"));
        std::fs::create_dir(root.join("sub")).unwrap();
        fifo(&root.join("sub/b"));
        std::fs::create_dir(root.join("pts")).unwrap();
        fifo(&root.join("pts/skipped"));
        fifo(&root.join("console"));
        std::fs::write(root.join("regular"), "x").unwrap();
        std::os::unix::fs::symlink("/dev/null", root.join("link")).unwrap();
        let found = scan(root).unwrap();
        let paths: Vec<_> = found.iter().map(|d| d.path().clone()).collect();
        assert_eq!(paths, vec![root.join("a"), root.join("sub/b")]);
        assert_eq!(found[0].typ(), LinuxDeviceType::P);
        assert_eq!(found[0].file_mode(), Some(0o640));
    }

    #[test]
    fn scan_of_a_char_device_and_of_a_non_device() {
        let null = scan(Path::new("/dev/null")).unwrap();
        assert_eq!(null.len(), 1);
        assert_eq!(
            (null[0].typ(), null[0].major(), null[0].minor()),
            (LinuxDeviceType::C, 1, 3)
        );
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, "x").unwrap();
        assert!(
            scan(&f)
                .unwrap_err()
                .to_string()
                .contains("is not a device node")
        );
    }

    #[test]
    fn cri_devices_get_rules_with_their_permissions() {
        let host = FakeHost::default();
        let c = ContainerConfig {
            devices: vec![
                Device {
                    container_path: "/dev/fuse".into(),
                    host_path: "/dev/fuse".into(),
                    permissions: "rw".into(),
                },
                Device {
                    container_path: "/dev/gpus".into(),
                    host_path: "/dev/dri".into(),
                    permissions: "".into(),
                },
            ],
            ..Default::default()
        };
        let p = plan(&c, false, &host).unwrap();
        let json = serde_json::to_value(&p.cgroup_rules).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rw"},
                {"allow": true, "type": "c", "major": 226, "minor": 0, "access": "rwm"},
                {"allow": true, "type": "c", "major": 226, "minor": 128, "access": "rwm"},
            ])
        );
        let paths: Vec<_> = p
            .devices
            .iter()
            .map(|d| d.path().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            paths,
            vec!["/dev/fuse", "/dev/gpus/card0", "/dev/gpus/renderD128"]
        );
    }

    #[test]
    fn cri_device_errors() {
        let host = FakeHost::default();
        let dev = |c: &str, h: &str, p: &str| ContainerConfig {
            devices: vec![Device {
                container_path: c.into(),
                host_path: h.into(),
                permissions: p.into(),
            }],
            ..Default::default()
        };
        let e = plan(&dev("/dev/x", "/dev/fuse", "rwx"), false, &host).unwrap_err();
        assert!(e.to_string().contains("may only contain r, w and m"), "{e}");
        let e = plan(&dev("dev/x", "/dev/fuse", "r"), false, &host).unwrap_err();
        assert!(e.to_string().contains("not absolute"), "{e}");
        let e = plan(&dev("/dev/x", "/dev/missing", "r"), false, &host).unwrap_err();
        assert!(e.to_string().contains("does not exist on the host"), "{e}");
    }

    #[test]
    fn privileged_gets_host_devices_and_allow_all() {
        let host = FakeHost::default();
        let c = ContainerConfig {
            devices: vec![Device {
                container_path: "/dev/fuse".into(),
                host_path: "/dev/fuse".into(),
                permissions: "r".into(),
            }],
            ..Default::default()
        };
        let p = plan(&c, true, &host).unwrap();
        assert_eq!(
            serde_json::to_value(&p.cgroup_rules).unwrap(),
            serde_json::json!([{"allow": true, "access": "rwm"}])
        );
        assert_eq!(p.devices.len(), host.host_devices().unwrap().len());
    }
}
