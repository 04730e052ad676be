//! A recording fake of [`Syscall`] with a small in-memory filesystem, so mount planning and
//! rootfs logic can be checked call by call without root.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::{FileKind, NodeKind, Syscall};
use crate::{Error, Result};

/// One recorded call, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    MountFsParams {
        fstype: String,
        params: Vec<(String, String)>,
        target: PathBuf,
    },
    MountSetattr {
        target: PathBuf,
        recursive: bool,
        set: u64,
        clear: u64,
    },
    Umount2 {
        target: PathBuf,
        flags: MntFlags,
    },
    AttachMount {
        fd: i32,
        target: PathBuf,
    },
    /// A bind from an fd; `source` is the path the fake opened that fd for (with
    /// `open_char_device`), `None` for an fd it did not open.
    BindMountFd {
        fd: i32,
        source: Option<PathBuf>,
        target: PathBuf,
    },
    OpenCharDevice(PathBuf),
    PivotRootfs(PathBuf),
    Chdir(PathBuf),
    Chroot(PathBuf),
    Sethostname(String),
    Setdomainname(String),
    Setns {
        fd: i32,
        nstype: CloneFlags,
    },
    Unshare(CloneFlags),
    Mknod {
        path: PathBuf,
        kind: NodeKind,
        perm: u32,
        major: u64,
        minor: u64,
    },
    Symlink {
        target: PathBuf,
        link: PathBuf,
    },
    MkdirAll {
        path: PathBuf,
        mode: u32,
    },
    CreateFile(PathBuf),
    RemoveFile(PathBuf),
    Chown {
        path: PathBuf,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    Chmod {
        path: PathBuf,
        mode: u32,
    },
}

/// Which call an injected error applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallKind {
    Mount,
    Mknod,
    PivotRoot,
    Sethostname,
    Setns,
    Unshare,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File,
    Symlink(PathBuf),
    Device { major: u64, minor: u64 },
}

/// Records every call in order; answers `file_kind`/`read_link` from a fake tree that
/// `mkdir_all`, `create_file`, `symlink` and `mknod` also update.
#[derive(Debug, Default)]
pub struct TestSyscall {
    calls: RefCell<Vec<Call>>,
    fs: RefCell<BTreeMap<PathBuf, Node>>,
    errors: RefCell<HashMap<CallKind, Errno>>,
    mount_flags: RefCell<HashMap<PathBuf, MsFlags>>,
    mountinfo: RefCell<String>,
    /// Fds handed out by `open_char_device`, by number, with the path they stand for.
    opened: RefCell<Vec<(i32, PathBuf)>>,
}

impl TestSyscall {
    /// A fake whose tree holds only `/`.
    pub fn new() -> Self {
        let t = Self::default();
        t.fs.borrow_mut().insert(PathBuf::from("/"), Node::Dir);
        t
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    /// Only the mount-related calls (mount, mount_setattr, umount2, pivot_root), in order.
    pub fn mounts(&self) -> Vec<Call> {
        self.calls
            .borrow()
            .iter()
            .filter(|c| {
                matches!(
                    c,
                    Call::Mount { .. }
                        | Call::MountFsParams { .. }
                        | Call::MountSetattr { .. }
                        | Call::Umount2 { .. }
                        | Call::AttachMount { .. }
                        | Call::BindMountFd { .. }
                        | Call::PivotRootfs(_)
                )
            })
            .cloned()
            .collect()
    }

    /// Forgets the recorded calls (the fake tree stays).
    pub fn clear_calls(&self) {
        self.calls.borrow_mut().clear();
    }

    /// Makes every later call of `kind` fail with `errno`.
    pub fn fail(&self, kind: CallKind, errno: Errno) {
        self.errors.borrow_mut().insert(kind, errno);
    }

    /// Adds a directory (and its parents) to the fake tree.
    pub fn add_dir(&self, path: impl AsRef<Path>) {
        self.insert_parents(path.as_ref());
        self.fs
            .borrow_mut()
            .insert(path.as_ref().to_path_buf(), Node::Dir);
    }

    /// Adds a regular file (and its parent directories) to the fake tree.
    pub fn add_file(&self, path: impl AsRef<Path>) {
        self.insert_parents(path.as_ref());
        self.fs
            .borrow_mut()
            .insert(path.as_ref().to_path_buf(), Node::File);
    }

    /// Adds a symlink `link -> target` to the fake tree.
    pub fn add_symlink(&self, link: impl AsRef<Path>, target: impl AsRef<Path>) {
        self.insert_parents(link.as_ref());
        self.fs.borrow_mut().insert(
            link.as_ref().to_path_buf(),
            Node::Symlink(target.as_ref().to_path_buf()),
        );
    }

    /// Adds a character device node `major:minor` (and its parents) to the fake tree.
    pub fn add_char_device(&self, path: impl AsRef<Path>, major: u64, minor: u64) {
        self.insert_parents(path.as_ref());
        self.fs
            .borrow_mut()
            .insert(path.as_ref().to_path_buf(), Node::Device { major, minor });
    }

    /// What `mount_flags` answers for the mount at `path` (default: none).
    pub fn set_mount_flags(&self, path: impl AsRef<Path>, flags: MsFlags) {
        self.mount_flags
            .borrow_mut()
            .insert(path.as_ref().to_path_buf(), flags);
    }

    /// What `mountinfo` answers (default: empty).
    pub fn set_mountinfo(&self, text: &str) {
        *self.mountinfo.borrow_mut() = text.to_string();
    }

    /// Whether the fake tree has anything at `path` (without following links).
    pub fn exists(&self, path: impl AsRef<Path>) -> bool {
        self.fs.borrow().contains_key(path.as_ref())
    }

    fn insert_parents(&self, path: &Path) {
        let mut fs = self.fs.borrow_mut();
        for a in path.ancestors().skip(1) {
            fs.entry(a.to_path_buf()).or_insert(Node::Dir);
        }
    }

    fn record(&self, call: Call) {
        self.calls.borrow_mut().push(call);
    }

    fn injected(&self, kind: CallKind, op: &str) -> Result<()> {
        match self.errors.borrow().get(&kind) {
            Some(e) => Err(Error::sys(op.to_string(), *e)),
            None => Ok(()),
        }
    }

    /// Follows symlinks in the fake tree (at most 40 hops), like stat(2).
    fn resolve(&self, path: &Path) -> Option<Node> {
        let fs = self.fs.borrow();
        let mut p = path.to_path_buf();
        for _ in 0..40 {
            match fs.get(&p)? {
                Node::Symlink(t) => {
                    p = if t.is_absolute() {
                        t.clone()
                    } else {
                        p.parent().unwrap_or(Path::new("/")).join(t)
                    };
                }
                other => return Some(other.clone()),
            }
        }
        None
    }
}

fn kind_of(node: &Node) -> FileKind {
    match node {
        Node::Dir => FileKind::Dir,
        Node::File => FileKind::File,
        Node::Symlink(_) => FileKind::Symlink,
        Node::Device { .. } => FileKind::CharDevice,
    }
}

impl Syscall for TestSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        self.injected(CallKind::Mount, &format!("mount on {}", target.display()))?;
        self.record(Call::Mount {
            source: source.map(Path::to_path_buf),
            target: target.to_path_buf(),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        });
        Ok(())
    }

    fn mount_fs_params(&self, fstype: &str, params: &[(&str, &str)], target: &Path) -> Result<()> {
        self.injected(
            CallKind::Mount,
            &format!("mount {fstype} on {}", target.display()),
        )?;
        self.record(Call::MountFsParams {
            fstype: fstype.to_string(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            target: target.to_path_buf(),
        });
        Ok(())
    }

    fn attach_mount(&self, mnt: BorrowedFd<'_>, target: &Path) -> Result<()> {
        self.record(Call::AttachMount {
            fd: mnt.as_raw_fd(),
            target: target.to_path_buf(),
        });
        Ok(())
    }

    fn bind_mount_fd(&self, source: BorrowedFd<'_>, target: &Path) -> Result<()> {
        self.injected(CallKind::Mount, &format!("bind onto {}", target.display()))?;
        let fd = source.as_raw_fd();
        let from = self
            .opened
            .borrow()
            .iter()
            .rev()
            .find(|(n, _)| *n == fd)
            .map(|(_, p)| p.clone());
        self.record(Call::BindMountFd {
            fd,
            source: from,
            target: target.to_path_buf(),
        });
        Ok(())
    }

    fn open_char_device(&self, path: &Path, major: u64, minor: u64) -> Result<OwnedFd> {
        self.record(Call::OpenCharDevice(path.to_path_buf()));
        // Like the real one: a symlink anywhere on the way, or at the end, is refused.
        for a in path.ancestors() {
            if let Some(Node::Symlink(_)) = self.fs.borrow().get(a) {
                return Err(Error::sys(
                    format!("open {}: a path component is a symlink", path.display()),
                    Errno::ELOOP,
                ));
            }
        }
        match self.fs.borrow().get(path) {
            Some(Node::Device { major: a, minor: b }) if (*a, *b) == (major, minor) => {}
            None => {
                return Err(Error::sys(
                    format!("open {}", path.display()),
                    Errno::ENOENT,
                ));
            }
            Some(other) => {
                return Err(Error::InvalidSpec(format!(
                    "{} is not the character device {major}:{minor} ({other:?})",
                    path.display()
                )));
            }
        }
        // A real fd (of `/`), so its number is unique while the caller holds it.
        let token = std::fs::File::open("/").map_err(|e| Error::io("open", "/", e))?;
        let fd = OwnedFd::from(token);
        self.opened
            .borrow_mut()
            .push((fd.as_raw_fd(), path.to_path_buf()));
        Ok(fd)
    }

    fn mount_setattr(&self, target: &Path, recursive: bool, set: u64, clear: u64) -> Result<()> {
        self.record(Call::MountSetattr {
            target: target.to_path_buf(),
            recursive,
            set,
            clear,
        });
        Ok(())
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> Result<()> {
        self.record(Call::Umount2 {
            target: target.to_path_buf(),
            flags,
        });
        Ok(())
    }

    fn pivot_rootfs(&self, rootfs: &Path) -> Result<()> {
        self.injected(CallKind::PivotRoot, "pivot_root")?;
        self.record(Call::PivotRootfs(rootfs.to_path_buf()));
        Ok(())
    }

    fn mountinfo(&self) -> Result<String> {
        Ok(self.mountinfo.borrow().clone())
    }

    fn chdir(&self, path: &Path) -> Result<()> {
        self.record(Call::Chdir(path.to_path_buf()));
        Ok(())
    }

    fn chroot(&self, path: &Path) -> Result<()> {
        self.record(Call::Chroot(path.to_path_buf()));
        Ok(())
    }

    fn sethostname(&self, name: &str) -> Result<()> {
        self.injected(CallKind::Sethostname, "sethostname")?;
        self.record(Call::Sethostname(name.to_string()));
        Ok(())
    }

    fn setdomainname(&self, name: &str) -> Result<()> {
        self.record(Call::Setdomainname(name.to_string()));
        Ok(())
    }

    fn setns(&self, fd: BorrowedFd<'_>, nstype: CloneFlags) -> Result<()> {
        self.injected(CallKind::Setns, "setns")?;
        self.record(Call::Setns {
            fd: fd.as_raw_fd(),
            nstype,
        });
        Ok(())
    }

    fn unshare(&self, flags: CloneFlags) -> Result<()> {
        self.injected(CallKind::Unshare, "unshare")?;
        self.record(Call::Unshare(flags));
        Ok(())
    }

    fn mknod(&self, path: &Path, kind: NodeKind, perm: u32, major: u64, minor: u64) -> Result<()> {
        self.injected(CallKind::Mknod, &format!("mknod {}", path.display()))?;
        self.record(Call::Mknod {
            path: path.to_path_buf(),
            kind,
            perm,
            major,
            minor,
        });
        self.insert_parents(path);
        self.fs
            .borrow_mut()
            .insert(path.to_path_buf(), Node::Device { major, minor });
        Ok(())
    }

    fn symlink(&self, target: &Path, link: &Path) -> Result<()> {
        if self.exists(link) {
            return Err(Error::io(
                "symlink",
                link,
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        self.record(Call::Symlink {
            target: target.to_path_buf(),
            link: link.to_path_buf(),
        });
        self.add_symlink(link, target);
        Ok(())
    }

    fn mkdir_all(&self, path: &Path, mode: u32) -> Result<()> {
        // Like the real one: a symlink anywhere on the way is refused.
        for a in path.ancestors() {
            if let Some(Node::Symlink(_)) = self.fs.borrow().get(a) {
                return Err(Error::sys(
                    format!("open {}: a path component is a symlink", a.display()),
                    Errno::ELOOP,
                ));
            }
        }
        self.record(Call::MkdirAll {
            path: path.to_path_buf(),
            mode,
        });
        self.add_dir(path);
        Ok(())
    }

    fn create_file(&self, path: &Path) -> Result<()> {
        self.record(Call::CreateFile(path.to_path_buf()));
        if !self.exists(path) {
            self.add_file(path);
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> Result<()> {
        self.record(Call::RemoveFile(path.to_path_buf()));
        self.fs.borrow_mut().remove(path);
        Ok(())
    }

    fn chown(&self, path: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
        self.record(Call::Chown {
            path: path.to_path_buf(),
            uid,
            gid,
        });
        Ok(())
    }

    fn chmod(&self, path: &Path, mode: u32) -> Result<()> {
        self.record(Call::Chmod {
            path: path.to_path_buf(),
            mode,
        });
        Ok(())
    }

    fn file_kind(&self, path: &Path, follow: bool) -> Result<Option<FileKind>> {
        if follow {
            return Ok(self.resolve(path).as_ref().map(kind_of));
        }
        Ok(self.fs.borrow().get(path).map(kind_of))
    }

    fn read_link(&self, path: &Path) -> Result<PathBuf> {
        match self.fs.borrow().get(path) {
            Some(Node::Symlink(t)) => Ok(t.clone()),
            _ => Err(Error::sys(
                format!("readlink {}", path.display()),
                Errno::EINVAL,
            )),
        }
    }

    fn mount_flags(&self, path: &Path) -> Result<MsFlags> {
        Ok(self
            .mount_flags
            .borrow()
            .get(path)
            .copied()
            .unwrap_or(MsFlags::empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_calls_in_order_and_tracks_the_tree() {
        let t = TestSyscall::new();
        t.mkdir_all(Path::new("/r/dev"), 0o755).unwrap();
        t.symlink(Path::new("pts/ptmx"), Path::new("/r/dev/ptmx"))
            .unwrap();
        t.mount(None, Path::new("/r"), None, MsFlags::MS_PRIVATE, None)
            .unwrap();
        assert_eq!(t.calls().len(), 3);
        assert_eq!(t.mounts().len(), 1);
        assert_eq!(
            t.file_kind(Path::new("/r/dev/ptmx"), false).unwrap(),
            Some(FileKind::Symlink)
        );
        assert_eq!(
            t.file_kind(Path::new("/r"), false).unwrap(),
            Some(FileKind::Dir)
        );
        assert!(t.symlink(Path::new("x"), Path::new("/r/dev/ptmx")).is_err());
    }

    #[test]
    fn injected_errors_and_symlink_refusal() {
        let t = TestSyscall::new();
        t.fail(CallKind::Mknod, Errno::EPERM);
        let e = t
            .mknod(Path::new("/dev/null"), NodeKind::Char, 0o666, 1, 3)
            .unwrap_err();
        assert!(matches!(
            e,
            Error::Sys {
                source: Errno::EPERM,
                ..
            }
        ));
        t.add_symlink("/r/proc", "/");
        assert!(t.mkdir_all(Path::new("/r/proc/x"), 0o755).is_err());
        assert_eq!(
            t.file_kind(Path::new("/r/proc"), true).unwrap(),
            Some(FileKind::Dir)
        );
    }
}
