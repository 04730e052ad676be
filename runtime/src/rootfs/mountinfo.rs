//! Parsing /proc/self/mountinfo and /proc/self/cgroup: which cgroup hierarchies to show in a
//! container and which mount a rootfs sits on.

use std::path::{Path, PathBuf};

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// The path inside the filesystem that is mounted (field 4).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Optional fields such as `shared:12`, `master:3`.
    pub optional: Vec<String>,
    pub fstype: String,
    pub super_options: String,
}

impl MountInfo {
    /// Whether the mount is in a shared peer group.
    pub fn is_shared(&self) -> bool {
        self.optional.iter().any(|o| o.starts_with("shared:"))
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if sep < 6 || fields.len() < sep + 3 {
            continue;
        }
        out.push(MountInfo {
            root: PathBuf::from(unescape(fields[3])),
            mount_point: PathBuf::from(unescape(fields[4])),
            optional: fields[6..sep].iter().map(|s| s.to_string()).collect(),
            fstype: fields[sep + 1].to_string(),
            super_options: fields.get(sep + 3).copied().unwrap_or("").to_string(),
        });
    }
    out
}

/// The mount `path` lives on: the entry with the longest mount point that contains it (the
/// last such entry, as later mounts cover earlier ones).
pub fn mount_of<'a>(mounts: &'a [MountInfo], path: &Path) -> Option<&'a MountInfo> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .fold(None, |best: Option<&MountInfo>, m| match best {
            Some(b) if b.mount_point.as_os_str().len() > m.mount_point.as_os_str().len() => Some(b),
            _ => Some(m),
        })
}

/// One host cgroup directory to bind into a cgroup v1 style `/sys/fs/cgroup` tmpfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupBind {
    /// Directory name under the container's `/sys/fs/cgroup` (`memory`, `cpu,cpuacct`,
    /// `systemd`).
    pub name: String,
    /// The container's own cgroup directory in that hierarchy on the host.
    pub source: PathBuf,
}

/// How the host's cgroups are laid out, as the container's `/sys/fs/cgroup` mount needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Pure cgroup v2: mount `cgroup2`; `own` is the process's cgroup dir on the host, bound
    /// instead when a fresh cgroup2 mount is not allowed.
    Unified { own: PathBuf },
    /// v1 or hybrid: a tmpfs with one bind per v1 hierarchy (a hybrid host's cgroup2 is not
    /// shown, as with runc).
    Legacy(Vec<CgroupBind>),
    /// No cgroup filesystem found under /sys/fs/cgroup.
    None,
}

/// Parses /proc/self/cgroup into `(controllers, path)` pairs; `controllers` is empty for the
/// v2 line `0::/path`.
fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, PathBuf)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrl = it.next()?;
            let path = it.next()?;
            let ctrls = ctrl
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            Some((ctrls, PathBuf::from(path)))
        })
        .collect()
}

fn own_dir(m: &MountInfo, cgroup_path: &Path) -> PathBuf {
    let rel = cgroup_path.strip_prefix(&m.root).unwrap_or(cgroup_path);
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    if rel.as_os_str().is_empty() {
        m.mount_point.clone()
    } else {
        m.mount_point.join(rel)
    }
}

/// Works out the cgroup layout from mountinfo and /proc/self/cgroup of the process whose
/// cgroups the container should see (the container's init, once it is in its cgroup).
pub fn cgroup_layout(mountinfo: &str, proc_self_cgroup: &str) -> CgroupLayout {
    let mounts = parse_mountinfo(mountinfo);
    let cgroups = parse_proc_cgroup(proc_self_cgroup);
    let base = Path::new("/sys/fs/cgroup");
    let v1: Vec<&MountInfo> = mounts
        .iter()
        .filter(|m| m.fstype == "cgroup" && m.mount_point.starts_with(base))
        .collect();
    let v2_path = cgroups
        .iter()
        .find(|(c, _)| c.is_empty())
        .map(|(_, p)| p.clone());
    if v1.is_empty() {
        return match mounts
            .iter()
            .rev()
            .find(|m| m.fstype == "cgroup2" && m.mount_point == base)
        {
            Some(m) => CgroupLayout::Unified {
                own: own_dir(m, v2_path.as_deref().unwrap_or(Path::new("/"))),
            },
            None => CgroupLayout::None,
        };
    }
    let mut binds = Vec::new();
    for m in v1 {
        let ctrls: Vec<&str> = m
            .super_options
            .split(',')
            .filter(|o| !matches!(*o, "rw" | "ro" | "xattr" | "noprefix" | "clone_children"))
            .filter(|o| !o.starts_with("release_agent="))
            .collect();
        let Some((_, path)) = cgroups.iter().find(|(c, _)| {
            !c.is_empty() && c.len() == ctrls.len() && c.iter().all(|x| ctrls.contains(&x.as_str()))
        }) else {
            continue;
        };
        let Some(name) = m.mount_point.file_name() else {
            continue;
        };
        binds.push(CgroupBind {
            name: name.to_string_lossy().into_owned(),
            source: own_dir(m, path),
        });
    }
    // A hybrid host's cgroup2 at /sys/fs/cgroup/unified is left out on purpose: runc shows
    // containers on hybrid nodes only the v1 hierarchies, and workloads that probe for cgroup2
    // there would otherwise take a near-empty v2 (only hugetlb here) for their real limits.
    CgroupLayout::Legacy(binds)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
25 22 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:28 / /sys/fs/cgroup/cpu rw,nosuid shared:14 - cgroup cgroup rw,cpu
31 25 0:29 / /sys/fs/cgroup/cpuacct rw,nosuid shared:15 - cgroup cgroup rw,cpuacct
32 25 0:30 / /sys/fs/cgroup/memory rw,nosuid shared:16 - cgroup cgroup rw,memory
40 22 0:40 / /var/lib/my\\040dir rw master:3 - overlay overlay rw,lowerdir=/a
";
    const HYBRID_CG: &str = "\
12:memory:/k8s/c1
5:cpuacct:/k8s/c1
4:cpu:/k8s/c1
1:name=systemd:/k8s/c1
0::/k8s/c1
";

    #[test]
    fn hybrid_layout_binds_each_v1_hierarchy_but_not_unified() {
        let CgroupLayout::Legacy(binds) = cgroup_layout(HYBRID, HYBRID_CG) else {
            panic!("not legacy");
        };
        let names: Vec<&str> = binds.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["systemd", "cpu", "cpuacct", "memory"]);
        assert_eq!(binds[1].source, PathBuf::from("/sys/fs/cgroup/cpu/k8s/c1"));
        assert!(
            binds
                .iter()
                .all(|b| !b.source.starts_with("/sys/fs/cgroup/unified")),
            "{binds:?}"
        );
    }

    #[test]
    fn pure_v2_and_nested_mount_roots() {
        let mi = "29 22 0:26 /outer /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup_layout(mi, "0::/outer/pod/c1\n"),
            CgroupLayout::Unified {
                own: PathBuf::from("/sys/fs/cgroup/pod/c1")
            }
        );
        assert_eq!(cgroup_layout("", "0::/\n"), CgroupLayout::None);
    }

    #[test]
    fn mountinfo_parses_escapes_and_finds_the_covering_mount() {
        let mounts = parse_mountinfo(HYBRID);
        assert_eq!(mounts.len(), 8);
        assert_eq!(mounts[7].mount_point, PathBuf::from("/var/lib/my dir"));
        assert!(mounts[0].is_shared());
        assert!(!mounts[7].is_shared());
        let m = mount_of(&mounts, Path::new("/var/lib/my dir/rootfs")).unwrap();
        assert_eq!(m.fstype, "overlay");
        let m = mount_of(&mounts, Path::new("/srv")).unwrap();
        assert_eq!(m.mount_point, PathBuf::from("/"));
    }
}
