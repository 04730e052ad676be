//! Resolving a container path inside the rootfs the way the container would see it, so that
//! symlinks in a (possibly hostile) image can never lead a mount outside the rootfs.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use crate::syscall::{FileKind, Syscall};
use crate::{Error, Result};

/// Symlinks followed before giving up, as the kernel's ELOOP limit for a lookup (40) is per
/// path and ours spans every link met while resolving.
const MAX_SYMLINKS: usize = 255;

/// Joins `unsafe_path` to `root`, resolving each existing symlink as if `root` were `/`:
/// absolute targets restart at `root`, `..` never climbs above it. Components that do not
/// exist yet are appended as they are. The result is always `root` or below it.
pub fn secure_join(sys: &dyn Syscall, root: &Path, unsafe_path: &Path) -> Result<PathBuf> {
    let mut pending: VecDeque<OsString> = components(unsafe_path);
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0usize;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&name);
        if sys.file_kind(&candidate, false)? == Some(FileKind::Symlink) {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(Error::InvalidSpec(format!(
                    "too many symlinks resolving {} in {}",
                    unsafe_path.display(),
                    root.display()
                )));
            }
            let target = sys.read_link(&candidate)?;
            if target.is_absolute() {
                resolved.clear();
            }
            for (i, c) in components(&target).into_iter().enumerate() {
                pending.insert(i, c);
            }
            continue;
        }
        resolved.push(name);
    }
    let mut out = root.to_path_buf();
    out.extend(&resolved);
    Ok(out)
}

/// `root` joined with `path` lexically (`..` clamped at `root`), no symlinks consulted.
pub fn lexical_join(root: &Path, path: &Path) -> PathBuf {
    let mut resolved: Vec<OsString> = Vec::new();
    for c in components(path) {
        if c == ".." {
            resolved.pop();
        } else {
            resolved.push(c);
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&resolved);
    out
}

/// Normal components and `..` of a path; `/` and `.` dropped.
fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::TestSyscall;

    #[test]
    fn plain_paths_join_lexically() {
        let t = TestSyscall::new();
        t.add_dir("/r/etc");
        let p = secure_join(&t, Path::new("/r"), Path::new("/etc/../etc/./hosts")).unwrap();
        assert_eq!(p, PathBuf::from("/r/etc/hosts"));
        let p = secure_join(&t, Path::new("/r"), Path::new("../../../x")).unwrap();
        assert_eq!(p, PathBuf::from("/r/x"));
    }

    #[test]
    fn absolute_symlinks_stay_inside_the_root() {
        let t = TestSyscall::new();
        t.add_symlink("/r/proc", "/");
        t.add_symlink(
            "/r/etc/resolv.conf",
            "/run/systemd/resolve/stub-resolv.conf",
        );
        t.add_symlink("/r/up", "../../../../etc");
        assert_eq!(
            secure_join(&t, Path::new("/r"), Path::new("/proc")).unwrap(),
            PathBuf::from("/r")
        );
        assert_eq!(
            secure_join(&t, Path::new("/r"), Path::new("/proc/sys")).unwrap(),
            PathBuf::from("/r/sys")
        );
        assert_eq!(
            secure_join(&t, Path::new("/r"), Path::new("/etc/resolv.conf")).unwrap(),
            PathBuf::from("/r/run/systemd/resolve/stub-resolv.conf")
        );
        assert_eq!(
            secure_join(&t, Path::new("/r"), Path::new("/up/passwd")).unwrap(),
            PathBuf::from("/r/etc/passwd")
        );
    }

    #[test]
    fn symlink_loops_are_refused() {
        let t = TestSyscall::new();
        t.add_symlink("/r/a", "/b");
        t.add_symlink("/r/b", "/a");
        let e = secure_join(&t, Path::new("/r"), Path::new("/a/x")).unwrap_err();
        assert!(e.to_string().contains("too many symlinks"), "{e}");
    }
}
