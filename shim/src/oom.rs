//! OOM kills of a container, from its memory cgroup's `oom_kill` counter: `memory.oom_control`
//! on cgroup v1, `memory.events` on v2. The shim reads the counter when the init is created and
//! again when it exits; a larger count means the OOM killer struck in the container.

use std::path::{Path, PathBuf};

/// The memory cgroup counter of one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OomCounter {
    file: PathBuf,
    baseline: u64,
}

impl OomCounter {
    /// The counter of the memory cgroup `pid` is in, with its current value as baseline.
    /// `None` when the process or its memory cgroup cannot be found.
    pub fn for_pid(pid: i32) -> Option<Self> {
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let file = counter_file(&cgroup, &mountinfo, |p| p.exists())?;
        let baseline = read_count(&file)?;
        Some(Self { file, baseline })
    }

    /// The file the counter is read from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Whether OOM kills happened since the baseline (false when unreadable: the cgroup is
    /// gone, so nothing can be said).
    pub fn killed_since_start(&self) -> bool {
        read_count(&self.file).is_some_and(|n| n > self.baseline)
    }
}

fn read_count(file: &Path) -> Option<u64> {
    parse_oom_kill(&std::fs::read_to_string(file).ok()?)
}

/// The `oom_kill N` value of a `memory.oom_control` or `memory.events` file.
pub fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some("oom_kill")).then(|| f.next()?.parse().ok())?
    })
}

/// The counter file for a process whose `/proc/<pid>/cgroup` is `cgroup`, given the
/// mount table `mountinfo` (of a process in the same cgroup namespace). A v1 memory
/// hierarchy wins over v2; a v2 path is used only when its `memory.events` exists.
pub fn counter_file(
    cgroup: &str,
    mountinfo: &str,
    exists: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    let mut v2_path = None;
    for line in cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        if controllers.is_empty() {
            v2_path = Some(path);
        } else if controllers.split(',').any(|c| c == "memory") {
            let (root, mount) = find_mount(mountinfo, |fstype, opts| {
                fstype == "cgroup" && opts.split(',').any(|o| o == "memory")
            })?;
            let file = join_cgroup(&mount, &root, path)?.join("memory.oom_control");
            return exists(&file).then_some(file);
        }
    }
    let path = v2_path?;
    let (root, mount) = find_mount(mountinfo, |fstype, _| fstype == "cgroup2")?;
    let file = join_cgroup(&mount, &root, path)?.join("memory.events");
    exists(&file).then_some(file)
}

/// (root, mount point) of the first mount whose filesystem type and super options match.
fn find_mount(mountinfo: &str, want: impl Fn(&str, &str) -> bool) -> Option<(String, PathBuf)> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let pre: Vec<&str> = pre.split(' ').collect();
        let mut post = post.split(' ');
        let (fstype, _source, opts) = (post.next()?, post.next()?, post.next()?);
        if pre.len() < 5 || !want(fstype, opts) {
            return None;
        }
        Some((unescape(pre[3]), PathBuf::from(unescape(pre[4]))))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(digits) = std::str::from_utf8(&b[i + 1..i + 4])
            && let Ok(v) = u8::from_str_radix(digits, 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `mount` + the part of `path` below the mount's `root`.
fn join_cgroup(mount: &Path, root: &str, path: &str) -> Option<PathBuf> {
    let rel = if root == "/" {
        path
    } else {
        path.strip_prefix(root)?
    };
    let rel = rel.trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    Some(if rel.is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(rel)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's hybrid layout (see MACHINE-NOTES): v1 controllers, cpu and cpuacct apart,
    /// cgroup2 at /sys/fs/cgroup/unified.
    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:28 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
36 31 0:31 / /sys/fs/cgroup/cpu rw,nosuid shared:14 - cgroup cgroup rw,cpu
37 31 0:32 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
";

    const PURE_V2: &str = "\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
29 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn v1_memory_hierarchy_is_used_when_present() {
        let cgroup =
            "12:pids:/bungeo-test/c1\n5:memory:/bungeo-test/c1\n1:name=systemd:/x\n0::/x\n";
        let f = counter_file(cgroup, HYBRID, |_| true).unwrap();
        assert_eq!(
            f,
            Path::new("/sys/fs/cgroup/memory/bungeo-test/c1/memory.oom_control")
        );
    }

    #[test]
    fn v2_memory_events_on_a_pure_v2_host() {
        let f = counter_file("0::/kubepods/pod1/c1\n", PURE_V2, |_| true).unwrap();
        assert_eq!(
            f,
            Path::new("/sys/fs/cgroup/kubepods/pod1/c1/memory.events")
        );
        // Without the memory controller enabled there is no memory.events: no counter.
        assert_eq!(counter_file("0::/c1\n", PURE_V2, |_| false), None);
    }

    #[test]
    fn a_mount_root_below_the_hierarchy_root_is_stripped() {
        let mi = "40 31 0:32 /kubepods /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let f = counter_file("5:memory:/kubepods/c1\n", mi, |_| true).unwrap();
        assert_eq!(f, Path::new("/sys/fs/cgroup/memory/c1/memory.oom_control"));
        assert_eq!(counter_file("5:memory:/other/c1\n", mi, |_| true), None);
        assert_eq!(
            counter_file("5:memory:/kubepods/../c1\n", mi, |_| true),
            None
        );
    }

    #[test]
    fn escaped_mount_points_are_decoded() {
        let mi = "40 31 0:32 / /mnt/cg\\040mem rw - cgroup cgroup rw,memory\n";
        let f = counter_file("5:memory:/c\n", mi, |_| true).unwrap();
        assert_eq!(f, Path::new("/mnt/cg mem/c/memory.oom_control"));
    }

    #[test]
    fn oom_kill_counts_parse_from_v1_and_v2_files() {
        assert_eq!(
            parse_oom_kill("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"),
            Some(3)
        );
        assert_eq!(
            parse_oom_kill("low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n"),
            Some(1)
        );
        assert_eq!(parse_oom_kill("oom_kill_disable 0\nunder_oom 0\n"), None);
    }

    #[test]
    fn the_counter_compares_with_its_baseline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.events");
        std::fs::write(&file, "oom 0\noom_kill 2\n").unwrap();
        let c = OomCounter {
            baseline: read_count(&file).unwrap(),
            file: file.clone(),
        };
        assert!(!c.killed_since_start());
        std::fs::write(&file, "oom 1\noom_kill 3\n").unwrap();
        assert!(c.killed_since_start());
        std::fs::remove_file(&file).unwrap();
        assert!(!c.killed_since_start());
    }

    #[test]
    fn this_process_has_a_memory_counter_when_cgroups_are_mounted() {
        if !Path::new("/sys/fs/cgroup/memory").is_dir()
            && !Path::new("/sys/fs/cgroup/memory.events").exists()
        {
            crate::test_skip::skip("memory-cgroup", "no memory cgroup hierarchy here");
            return;
        }
        // The root cgroup of v1 has no memory.oom_control counter line on every kernel, so
        // only check that a path resolves under the hierarchy.
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let f = counter_file(&cgroup, &mi, |_| true).unwrap();
        assert!(f.starts_with("/sys/fs/cgroup"), "{}", f.display());
    }
}
