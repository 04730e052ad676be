//! Where the cgroup hierarchies are mounted, from `/proc/self/mountinfo`, and how a spec's
//! `cgroupsPath` maps to a directory in them.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// How cgroups are mounted on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Only cgroup v1 hierarchies (legacy).
    V1,
    /// cgroup v1 controllers plus a cgroup2 hierarchy (usually `/sys/fs/cgroup/unified`)
    /// holding whatever controllers v1 does not use.
    Hybrid,
    /// One cgroup2 hierarchy (unified).
    V2,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layout::V1 => "cgroup v1",
            Layout::Hybrid => "hybrid cgroup v1 + v2",
            Layout::V2 => "cgroup v2",
        })
    }
}

/// The v1 controllers the kernel can mount; anything else in a cgroup mount's options is a
/// mount flag, except `name=...` hierarchies.
const V1_CONTROLLERS: [&str; 14] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "rdma",
    "misc",
];

/// The mounted cgroup hierarchies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub layout: Layout,
    /// v1 controller (or `name=<hierarchy>`) → mount point.
    pub v1: BTreeMap<String, PathBuf>,
    /// The cgroup2 mount point.
    pub unified: Option<PathBuf>,
}

impl Hierarchy {
    /// The hierarchies this process sees.
    pub fn detect() -> Result<Hierarchy> {
        let path = "/proc/self/mountinfo";
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
        Hierarchy::from_mountinfo(&text)
    }

    /// A pure cgroup v2 hierarchy mounted at `root`.
    pub fn v2(root: impl Into<PathBuf>) -> Hierarchy {
        Hierarchy {
            layout: Layout::V2,
            v1: BTreeMap::new(),
            unified: Some(root.into()),
        }
    }

    /// Parses mountinfo text (see proc(5)).
    pub fn from_mountinfo(text: &str) -> Result<Hierarchy> {
        let mut v1 = BTreeMap::new();
        let mut cgroup2 = Vec::new();
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = left.split(' ').nth(4) else {
                continue;
            };
            let mut right = right.split(' ');
            let (fstype, options) = (right.next(), right.nth(1).unwrap_or(""));
            let mount_point = PathBuf::from(unescape(mount_point));
            match fstype {
                Some("cgroup") => {
                    for opt in options.split(',') {
                        if V1_CONTROLLERS.contains(&opt) || opt.starts_with("name=") {
                            v1.entry(opt.to_string())
                                .or_insert_with(|| mount_point.clone());
                        }
                    }
                }
                Some("cgroup2") => cgroup2.push(mount_point),
                _ => {}
            }
        }
        // Prefer the standard places over any extra cgroup2 mount someone made.
        let unified = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .iter()
            .find_map(|std| cgroup2.iter().find(|m| m.as_path() == Path::new(std)))
            .or(cgroup2.first())
            .cloned();
        let layout = match (v1.keys().any(|k| !k.starts_with("name=")), &unified) {
            (false, Some(_)) => Layout::V2,
            (true, Some(_)) => Layout::Hybrid,
            (true, None) => Layout::V1,
            (false, None) => {
                return Err(Error::Cgroups(
                    "no cgroup hierarchy is mounted (no cgroup or cgroup2 in /proc/self/mountinfo)"
                        .to_string(),
                ));
            }
        };
        Ok(Hierarchy {
            layout,
            v1,
            unified,
        })
    }

    /// The controllers available at the root of the cgroup2 hierarchy.
    pub fn unified_controllers(&self) -> Result<Vec<String>> {
        let Some(root) = &self.unified else {
            return Ok(Vec::new());
        };
        let path = root.join("cgroup.controllers");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("read", &path, e))?;
        Ok(text.split_whitespace().map(str::to_string).collect())
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory of a cgroupfs-driver cgroup relative to each hierarchy's root. An empty
/// `cgroupsPath` means `bungeo/<container id>`; a relative one is taken from the root too, as
/// the runtime's own cgroup is not a meaningful parent for containers.
pub fn cgroupfs_path(cgroups_path: &str, container_id: &str) -> Result<PathBuf> {
    if cgroups_path.is_empty() {
        if container_id.is_empty() || container_id.contains('/') || container_id.starts_with('.') {
            return Err(Error::InvalidArgument(format!(
                "container id {container_id:?} cannot name a cgroup"
            )));
        }
        return Ok(PathBuf::from("bungeo").join(container_id));
    }
    if let Some((slice, _)) = cgroups_path.split_once(':')
        && slice.ends_with(".slice")
    {
        return Err(Error::InvalidArgument(format!(
            "cgroup path {cgroups_path:?} is in the systemd driver's slice:prefix:name form, \
             but the cgroupfs driver is configured"
        )));
    }
    let mut rel = PathBuf::new();
    for component in Path::new(cgroups_path).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => rel.push(part),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::InvalidArgument(format!(
                    "cgroup path {cgroups_path:?} must not contain \"..\""
                )));
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(Error::InvalidArgument(format!(
            "cgroup path {cgroups_path:?} names the root cgroup"
        )));
    }
    Ok(rel)
}

/// A systemd-driver `slice:prefix:name` path as the directory systemd creates, relative to the
/// hierarchy root: `kubepods-besteffort.slice:cri:abc` →
/// `kubepods.slice/kubepods-besteffort.slice/cri-abc.scope`.
pub fn systemd_path(cgroups_path: &str) -> Result<PathBuf> {
    let invalid = |why: &str| {
        Error::InvalidArgument(format!(
            "systemd cgroup path {cgroups_path:?} {why} (expected slice:prefix:name)"
        ))
    };
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    let [slice, prefix, name] = parts[..] else {
        return Err(invalid("does not have three parts"));
    };
    if name.is_empty() || name.contains('/') || prefix.contains('/') {
        return Err(invalid("has an invalid prefix or name"));
    }
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let mut path = expand_slice(slice).ok_or_else(|| invalid("has an invalid slice"))?;
    if name.ends_with(".slice") {
        path.push(name);
    } else if prefix.is_empty() {
        path.push(format!("{name}.scope"));
    } else {
        path.push(format!("{prefix}-{name}.scope"));
    }
    Ok(path)
}

/// systemd nests slices by dashes: `a-b-c.slice` lives in `a.slice/a-b.slice/a-b-c.slice`.
fn expand_slice(slice: &str) -> Option<PathBuf> {
    let stem = slice.strip_suffix(".slice")?;
    if stem == "-" {
        return Some(PathBuf::new());
    }
    if stem.is_empty() || slice.contains('/') {
        return None;
    }
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if part.is_empty() {
            return None;
        }
        path.push(format!("{prefix}{part}.slice"));
        prefix.push_str(part);
        prefix.push('-');
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn parses_this_machines_hybrid_layout() {
        let h = Hierarchy::from_mountinfo(HYBRID).expect("parse");
        assert_eq!(h.layout, Layout::Hybrid);
        assert_eq!(
            h.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert_eq!(h.v1["cpu"], PathBuf::from("/sys/fs/cgroup/cpu"));
        assert_eq!(h.v1["cpuacct"], PathBuf::from("/sys/fs/cgroup/cpuacct"));
        assert_eq!(
            h.v1["name=systemd"],
            PathBuf::from("/sys/fs/cgroup/systemd")
        );
        assert!(!h.v1.contains_key("hugetlb"));
        assert!(!h.v1.contains_key("rw"));
    }

    #[test]
    fn parses_comounted_v1_and_pure_v2() {
        let v1 = "1 0 0:1 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let h = Hierarchy::from_mountinfo(v1).expect("parse");
        assert_eq!(h.layout, Layout::V1);
        assert_eq!(h.v1["cpu"], h.v1["cpuacct"]);

        let v2 = "\
1 0 0:1 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate
2 0 0:1 / /tmp/other\\040mount rw - cgroup2 cgroup2 rw
";
        let h = Hierarchy::from_mountinfo(v2).expect("parse");
        assert_eq!(h.layout, Layout::V2);
        assert_eq!(h.unified.as_deref(), Some(Path::new("/sys/fs/cgroup")));
        assert!(Hierarchy::from_mountinfo("1 0 0:1 / / rw - ext4 /dev/sda rw\n").is_err());
    }

    #[test]
    fn unescapes_mount_points() {
        assert_eq!(unescape("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\04"), "/end\\04");
    }

    #[test]
    fn detects_this_machine() {
        let h = Hierarchy::detect().expect("detect");
        assert!(h.unified.is_some() || !h.v1.is_empty());
    }

    #[test]
    fn cgroupfs_paths() {
        assert_eq!(
            cgroupfs_path("/kubepods/burstable/pod1/ctr", "x").expect("ok"),
            PathBuf::from("kubepods/burstable/pod1/ctr")
        );
        assert_eq!(
            cgroupfs_path("a/./b", "x").expect("ok"),
            PathBuf::from("a/b")
        );
        assert_eq!(
            cgroupfs_path("", "abc").expect("ok"),
            PathBuf::from("bungeo/abc")
        );
        assert!(cgroupfs_path("/a/../../etc", "x").is_err());
        assert!(cgroupfs_path("/", "x").is_err());
        assert!(cgroupfs_path("", "../x").is_err());
        let err = cgroupfs_path("kubepods.slice:cri:abc", "x").expect_err("systemd form");
        assert!(err.to_string().contains("systemd"), "{err}");
    }

    #[test]
    fn systemd_paths() {
        assert_eq!(
            systemd_path("kubepods-besteffort-pod1.slice:cri-containerd:abc").expect("ok"),
            PathBuf::from(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-abc.scope"
            )
        );
        assert_eq!(
            systemd_path(":bungeo:abc").expect("ok"),
            PathBuf::from("system.slice/bungeo-abc.scope")
        );
        assert_eq!(
            systemd_path("-.slice:p:child.slice").expect("ok"),
            PathBuf::from("child.slice")
        );
        assert!(systemd_path("/kubepods/pod1").is_err());
        assert!(systemd_path("a--b.slice:p:n").is_err());
        assert!(systemd_path("a.slice:p:").is_err());
    }
}
