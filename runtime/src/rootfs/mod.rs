//! The container's filesystem view: the overlay rootfs for image snapshots, and everything the
//! container's init does to its mount namespace before it runs user code: root propagation,
//! the spec's mounts in order, device nodes, `pivot_root`, masked and read-only paths, and a
//! read-only root.
//!
//! All of it goes through [`Syscall`], so the order and arguments of every call are checked by
//! unit tests against [`crate::syscall::TestSyscall`].

pub mod devices;
pub mod mountinfo;
pub mod options;
pub mod secure_join;
mod tmpfs;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;
use oci_spec::runtime::{Mount, Spec};

use crate::syscall::{FileKind, LinuxSyscall, Syscall, describe};
use crate::{Error, Result};

pub use mountinfo::{CgroupBind, CgroupLayout, cgroup_layout};
pub use secure_join::secure_join;
pub use tmpfs::{is_mount_point, mount_tmpfs, mount_tmpfs_with, unmount, unmount_with};

/// Mounts an overlay of `lowers` (top first) with `upper` and `work` on `target`.
///
/// mount(2) takes at most one page of options, so a long lowerdir list (or a path with `,`
/// or `:` that the option string cannot carry) goes through the new mount API, one
/// `lowerdir+` parameter per layer.
pub fn mount_overlay(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
    mount_overlay_with(&LinuxSyscall, lowers, upper, work, target)
}

/// [`mount_overlay`] through a given [`Syscall`].
pub fn mount_overlay_with(
    sys: &dyn Syscall,
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<()> {
    if lowers.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "overlay on {} needs at least one lower layer",
            target.display()
        )));
    }
    let mut strs = Vec::with_capacity(lowers.len());
    for l in lowers {
        strs.push(path_str(l)?);
    }
    let upper_s = path_str(upper)?;
    let work_s = path_str(work)?;
    let data = format!(
        "lowerdir={},upperdir={upper_s},workdir={work_s}",
        strs.join(":")
    );
    let needs_new_api = data.len() >= page_size()
        || strs
            .iter()
            .chain([&upper_s, &work_s])
            .any(|s| s.contains([',', ':']));
    if !needs_new_api {
        return sys.mount(
            Some(Path::new("overlay")),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(&data),
        );
    }
    let mut params: Vec<(&str, &str)> = strs.iter().map(|s| ("lowerdir+", s.as_str())).collect();
    params.push(("upperdir", &upper_s));
    params.push(("workdir", &work_s));
    sys.mount_fs_params("overlay", &params, target)
}

/// Mounts on `target` an overlay whose image layers are seen through idmapped mounts of the
/// user namespace pinned at `userns`: a pod in its own user namespace sees its image's files
/// owned by its own root and users, without a chown of the shared layers. Each lower layer is
/// cloned with open_tree, idmapped, and handed to overlay as an fd (overlay itself cannot be
/// idmapped). The container's own `upper` (fresh and empty) is chowned to the host ids of the
/// pod's root, `root_ids`, as containerd does: overlay copies up with the mounter's (host
/// root's) credentials, which an idmapped upper could not represent.
pub fn mount_overlay_idmapped(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    userns: &Path,
    root_ids: (u32, u32),
) -> Result<()> {
    use crate::syscall::mount_api::{Param, attach, clone_tree, new_fs_with, setattr_fd};
    use std::os::fd::AsFd;

    if lowers.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "overlay on {} needs at least one lower layer",
            target.display()
        )));
    }
    let ns = std::fs::File::open(userns).map_err(|e| Error::io("open", userns, e))?;
    let layers = lowers
        .iter()
        .map(|l| {
            let tree = clone_tree(l, false)?;
            setattr_fd(
                tree.as_fd(),
                false,
                libc::MOUNT_ATTR_IDMAP,
                0,
                Some(ns.as_fd()),
            )
            .map_err(|e| Error::Child(format!("idmap layer {}: {}", l.display(), describe(&e))))?;
            Ok(tree)
        })
        .collect::<Result<Vec<_>>>()?;
    std::os::unix::fs::chown(upper, Some(root_ids.0), Some(root_ids.1))
        .map_err(|e| Error::io("chown", upper, e))?;
    let upper_s = path_str(upper)?;
    let work_s = path_str(work)?;
    let mut params: Vec<(&str, Param<'_>)> = layers
        .iter()
        .map(|l| ("lowerdir+", Param::Fd(l.as_fd())))
        .collect();
    params.push(("upperdir", Param::Str(&upper_s)));
    params.push(("workdir", Param::Str(&work_s)));
    let mnt = new_fs_with("overlay", &params)?;
    attach(mnt.as_fd(), target)
}

fn page_size() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as usize } else { 4096 }
}

fn path_str(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| Error::InvalidArgument(format!("path {} is not UTF-8", p.display())))
}

/// What the init knows about its surroundings when it prepares the rootfs.
#[derive(Debug, Clone)]
pub struct RootfsContext {
    /// Absolute, symlink-free host path of the rootfs.
    pub rootfs: PathBuf,
    /// The bundle directory, against which relative bind sources are resolved.
    pub bundle: PathBuf,
    /// The cgroups the container's `/sys/fs/cgroup` should show.
    pub cgroup: CgroupLayout,
    /// Bind-mount host devices instead of mknod (set when mknod is known not to be allowed,
    /// e.g. in a user namespace); an EPERM from mknod switches to binding as well.
    pub bind_devices: bool,
    /// Idmapped binds the runtime prepared, by index in the spec's mounts: attached instead
    /// of bound (a process in the container's user namespace cannot idmap a host mount).
    pub idmapped: Vec<(usize, RawFd)>,
}

/// Prepares the rootfs before `pivot_root`: root propagation, the rootfs bound onto itself,
/// the spec's mounts in order, then (unless `/dev` is a bind from the host) the default and
/// spec devices, `/dev/ptmx` and the `/dev/fd`, stdio symlinks.
pub fn prepare_rootfs(sys: &dyn Syscall, spec: &Spec, ctx: &RootfsContext) -> Result<()> {
    let linux = spec.linux().as_ref();
    let prop_str = linux.and_then(|l| l.rootfs_propagation().as_deref());
    let prop = options::root_propagation(prop_str).ok_or_else(|| {
        Error::InvalidSpec(format!(
            "unknown linux.rootfsPropagation {:?}",
            prop_str.unwrap_or("")
        ))
    })?;
    sys.set_propagation(Path::new("/"), prop)?;
    make_parent_mount_private(sys, &ctx.rootfs)?;
    sys.bind_mount(&ctx.rootfs, &ctx.rootfs, true)?;

    let mounts: &[Mount] = spec.mounts().as_deref().unwrap_or(&[]);
    for (i, m) in mounts.iter().enumerate() {
        mount_into_rootfs(sys, ctx, i, m)?;
    }

    let dev_is_bind = mounts
        .iter()
        .any(|m| lexical_dest(m) == Path::new("/dev") && options::parse(opts(m)).is_bind());
    if !dev_is_bind {
        let spec_devices = linux.and_then(|l| l.devices().as_deref()).unwrap_or(&[]);
        devices::create_devices(sys, &ctx.rootfs, spec_devices, ctx.bind_devices)?;
        devices::setup_ptmx(sys, &ctx.rootfs)?;
        devices::setup_dev_symlinks(sys, &ctx.rootfs)?;
    }
    Ok(())
}

/// pivot_root into the prepared rootfs (see [`Syscall::pivot_rootfs`]).
pub fn pivot_root(sys: &dyn Syscall, rootfs: &Path) -> Result<()> {
    sys.pivot_rootfs(rootfs)
}

/// After `pivot_root`: a read-only root when `root.readonly` is set.
pub fn finalize_rootfs(sys: &dyn Syscall, spec: &Spec) -> Result<()> {
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        sys.remount_bind(Path::new("/"), MsFlags::MS_RDONLY)
            .map_err(|e| Error::Child(format!("make the root read-only: {}", describe(&e))))?;
    }
    Ok(())
}

/// Makes each path read-only: bound onto itself, then remounted read-only. Missing paths
/// are skipped, as runc does.
pub fn apply_readonly_paths(sys: &dyn Syscall, paths: &[String]) -> Result<()> {
    for p in paths {
        let target = secure_join(sys, Path::new("/"), Path::new(p))?;
        if sys.file_kind(&target, false)?.is_none() {
            continue;
        }
        sys.bind_mount(&target, &target, true)
            .map_err(|e| Error::Child(format!("readonly path {p}: {}", describe(&e))))?;
        sys.remount_bind(&target, MsFlags::MS_RDONLY | MsFlags::MS_REC)
            .map_err(|e| Error::Child(format!("readonly path {p}: {}", describe(&e))))?;
    }
    Ok(())
}

/// Hides each path: the null device bound over files, an empty read-only tmpfs over
/// directories. Missing paths are skipped.
///
/// What is bound over a file is an fd of `/dev/null` checked to be the character device 1:3
/// (CVE-2025-31133): a `/dev/null` that is a symlink (to `/proc/sys/kernel/core_pattern`,
/// say) or a plain file would otherwise be bound, writable, over the paths meant to be hidden.
/// When it is not the null device, nothing is bound and the container fails.
pub fn apply_masked_paths(sys: &dyn Syscall, paths: &[String]) -> Result<()> {
    let mut null: Option<OwnedFd> = None;
    for p in paths {
        let target = secure_join(sys, Path::new("/"), Path::new(p))?;
        let res = match sys.file_kind(&target, false)? {
            None => continue,
            Some(FileKind::Dir) => sys.mount(
                Some(Path::new("tmpfs")),
                &target,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None,
            ),
            Some(_) => {
                let fd = match null.take() {
                    Some(fd) => fd,
                    None => open_null_device(sys)
                        .map_err(|e| Error::Child(format!("masked path {p}: {}", describe(&e))))?,
                };
                let res = sys.bind_mount_fd(fd.as_fd(), &target);
                null = Some(fd);
                res
            }
        };
        res.map_err(|e| Error::Child(format!("masked path {p}: {}", describe(&e))))?;
    }
    Ok(())
}

/// The container's `/dev/null` (its `/dev` resolved inside the root, the node itself not
/// followed), verified to be the null device.
fn open_null_device(sys: &dyn Syscall) -> Result<OwnedFd> {
    let dev = secure_join(sys, Path::new("/"), Path::new("/dev"))?;
    sys.open_char_device(&dev.join("null"), 1, 3).map_err(|e| {
        Error::Child(format!(
            "/dev/null is not the null device, refusing to bind it: {}",
            describe(&e)
        ))
    })
}

/// Bind-mounts the container's terminal, the pty slave `slave` (an open fd, never a path a
/// racer could swap), on `/dev/console`.
pub fn mount_console(sys: &dyn Syscall, slave: BorrowedFd<'_>) -> Result<()> {
    let dev = secure_join(sys, Path::new("/"), Path::new("/dev"))?;
    let console = dev.join("console");
    sys.create_file(&console)?;
    sys.bind_mount_fd(slave, &console).map_err(|e| {
        Error::Child(format!(
            "mount the terminal on /dev/console: {}",
            describe(&e)
        ))
    })
}

fn opts(m: &Mount) -> &[String] {
    m.options().as_deref().unwrap_or(&[])
}

/// The destination as given, made absolute, `..` clamped, no symlinks consulted.
fn lexical_dest(m: &Mount) -> PathBuf {
    secure_join::lexical_join(Path::new("/"), m.destination())
}

/// pivot_root refuses a new root whose parent mount is shared; runc makes that one private
/// (which only matters with `rshared` root propagation).
fn make_parent_mount_private(sys: &dyn Syscall, rootfs: &Path) -> Result<()> {
    let text = sys.mountinfo()?;
    let mounts = mountinfo::parse_mountinfo(&text);
    if let Some(m) = mountinfo::mount_of(&mounts, rootfs)
        && m.is_shared()
    {
        sys.set_propagation(&m.mount_point, MsFlags::MS_PRIVATE)?;
    }
    Ok(())
}

fn mount_err(m: &Mount, e: Error) -> Error {
    let typ = m.typ().as_deref().unwrap_or("bind");
    let src = m
        .source()
        .as_ref()
        .map(|s| s.display().to_string())
        .unwrap_or_else(|| typ.to_string());
    Error::Child(format!(
        "mount {src} ({typ}) on {}: {}",
        m.destination().display(),
        describe(&e)
    ))
}

/// Mounts one spec mount into the rootfs: creates the mount point (a directory, or a file
/// when a file is bound), mounts, remounts binds that ask for flags (`ro`, `nosuid`, …),
/// then applies propagation and recursive attributes.
fn mount_into_rootfs(
    sys: &dyn Syscall,
    ctx: &RootfsContext,
    index: usize,
    m: &Mount,
) -> Result<()> {
    let o = options::parse(opts(m));
    let typ = m.typ().as_deref().unwrap_or("");
    let dest = lexical_dest(m);
    if dest == Path::new("/") {
        return Err(mount_err(
            m,
            Error::InvalidSpec("a mount on / would hide the rootfs".into()),
        ));
    }
    let target = secure_join(sys, &ctx.rootfs, &dest).map_err(|e| mount_err(m, e))?;
    if target == ctx.rootfs {
        return Err(mount_err(
            m,
            Error::InvalidSpec(format!(
                "destination {} resolves to the container's root through a symlink; refusing",
                m.destination().display()
            )),
        ));
    }
    let kind = if o.is_bind() { "bind" } else { typ };
    check_proc_destination(m, kind, &dest, &target, &ctx.rootfs).map_err(|e| mount_err(m, e))?;
    // proc and sysfs give the container the kernel's knobs: they must land exactly where
    // asked, never wherever an image's symlink points.
    if matches!(typ, "proc" | "sysfs") && target != secure_join::lexical_join(&ctx.rootfs, &dest) {
        return Err(mount_err(
            m,
            Error::InvalidSpec(format!(
                "destination {} is a symlink in the rootfs (to {}); refusing to mount {typ} there",
                m.destination().display(),
                target.display()
            )),
        ));
    }
    let res = if typ == "cgroup" || typ == "cgroup2" {
        mount_cgroup(sys, ctx, &target, &o)
    } else if o.is_bind() {
        let idmapped = ctx
            .idmapped
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, fd)| *fd);
        mount_bind(sys, ctx, m, &target, &o, idmapped)
    } else {
        sys.mkdir_all(&target, 0o755)
            .and_then(|()| mount_fs(sys, m, typ, &target, &o))
    };
    res.map_err(|e| mount_err(m, e))?;
    for p in &o.propagation {
        sys.set_propagation(&target, *p)
            .map_err(|e| mount_err(m, e))?;
    }
    if o.attr_set != 0 || o.attr_clr != 0 {
        sys.mount_setattr(&target, true, o.attr_set, o.attr_clr)
            .map_err(|e| mount_err(m, e))?;
    }
    Ok(())
}

/// Files below `/proc` that may be mounted over, as runc allows: what lxcfs emulates.
const PROC_MOUNT_EXCEPTIONS: &[&str] = &[
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/proc/loadavg",
    "/proc/slabinfo",
    "/proc/net/dev",
    "/proc/sys/kernel/ns_last_pid",
];

/// Whether a mount may land on `path` (a clean absolute container path) as far as `/proc` is
/// concerned: only a proc filesystem on `/proc` itself, and below it only the files lxcfs
/// emulates. Anything else there (a volume on `/proc/sys/net/ipv4`, say) could redirect what
/// the runtime later writes into procfs, or hide the kernel's knobs behind the container's own.
pub fn proc_destination_allowed(path: &Path, typ: &str) -> bool {
    let Ok(rel) = path.strip_prefix("/proc") else {
        return true;
    };
    if rel.as_os_str().is_empty() {
        return typ == "proc";
    }
    PROC_MOUNT_EXCEPTIONS.iter().any(|p| Path::new(p) == path)
}

/// runc's `checkProcMount`, on the destination as written and as resolved in the rootfs (an
/// image's symlink must not carry a mount into `/proc` either).
fn check_proc_destination(
    m: &Mount,
    typ: &str,
    dest: &Path,
    target: &Path,
    rootfs: &Path,
) -> Result<()> {
    let resolved = target
        .strip_prefix(rootfs)
        .map(|r| Path::new("/").join(r))
        .unwrap_or_else(|_| target.to_path_buf());
    for p in [dest, resolved.as_path()] {
        if !proc_destination_allowed(p, typ) {
            let why = if p == Path::new("/proc") {
                "only a proc filesystem may be mounted on /proc".to_string()
            } else {
                format!("{} is inside /proc", p.display())
            };
            return Err(Error::InvalidSpec(format!(
                "mount destination {} is not allowed: {why}",
                m.destination().display()
            )));
        }
    }
    Ok(())
}

fn mount_fs(
    sys: &dyn Syscall,
    m: &Mount,
    typ: &str,
    target: &Path,
    o: &options::MountOptions,
) -> Result<()> {
    let source = m.source().as_deref().unwrap_or(Path::new(typ));
    let res = sys.mount(Some(source), target, Some(typ), o.flags, o.data());
    match res {
        // Without its own network namespace (or in a user namespace) a fresh sysfs is not
        // allowed; the host's, bound read-only as asked, is what runc gives then.
        Err(Error::Sys {
            source: Errno::EPERM,
            ..
        }) if typ == "sysfs" => {
            sys.bind_mount(Path::new("/sys"), target, true)?;
            let extra = o.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
            if !extra.is_empty() {
                sys.remount_bind(target, extra)?;
            }
            Ok(())
        }
        other => other,
    }
}

fn mount_bind(
    sys: &dyn Syscall,
    ctx: &RootfsContext,
    m: &Mount,
    target: &Path,
    o: &options::MountOptions,
    idmapped: Option<RawFd>,
) -> Result<()> {
    let src = m.source().as_deref().ok_or_else(|| {
        Error::InvalidSpec(format!(
            "bind mount on {} has no source",
            m.destination().display()
        ))
    })?;
    let src = if src.is_absolute() {
        src.to_path_buf()
    } else {
        ctx.bundle.join(src)
    };
    match sys.file_kind(&src, true)? {
        None => {
            return Err(Error::InvalidSpec(format!(
                "bind source {} does not exist",
                src.display()
            )));
        }
        Some(FileKind::Dir) => sys.mkdir_all(target, 0o755)?,
        Some(_) => sys.create_file(target)?,
    }
    match idmapped {
        Some(fd) => {
            // SAFETY: the fd is an open mount fd of the init plan, alive until exec.
            let mnt = unsafe { BorrowedFd::borrow_raw(fd) };
            sys.attach_mount(mnt, target)?;
        }
        None => sys.bind_mount(&src, target, o.flags.contains(MsFlags::MS_REC))?,
    }
    let extra = o.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
    if !extra.is_empty() {
        sys.remount_bind(target, extra)?;
    }
    Ok(())
}

/// `/sys/fs/cgroup`: on pure v2 a cgroup2 mount (the container's own cgroup bound instead when
/// that is not allowed); otherwise, like runc, a tmpfs with the container's own directory of
/// each v1 hierarchy bound in, the binds and (unlike runc) the tmpfs itself read-only when the
/// mount asks for it.
fn mount_cgroup(
    sys: &dyn Syscall,
    ctx: &RootfsContext,
    target: &Path,
    o: &options::MountOptions,
) -> Result<()> {
    sys.mkdir_all(target, 0o755)?;
    match &ctx.cgroup {
        CgroupLayout::Unified { own } => {
            let res = sys.mount(
                Some(Path::new("cgroup2")),
                target,
                Some("cgroup2"),
                o.flags & !MsFlags::MS_BIND,
                None,
            );
            match res {
                Err(Error::Sys {
                    source: Errno::EPERM | Errno::EBUSY,
                    ..
                }) => {
                    sys.bind_mount(own, target, true)?;
                    sys.remount_bind(target, o.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC))
                }
                other => other,
            }
        }
        CgroupLayout::Legacy(binds) => {
            let flags = o.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
            sys.mount(
                Some(Path::new("tmpfs")),
                target,
                Some("tmpfs"),
                flags & !MsFlags::MS_RDONLY,
                Some("mode=755"),
            )?;
            for b in binds {
                let sub = target.join(&b.name);
                sys.mkdir_all(&sub, 0o755)?;
                sys.bind_mount(&b.source, &sub, true)?;
                sys.remount_bind(&sub, flags)?;
                if b.name.contains(',') {
                    for part in b.name.split(',') {
                        let link = target.join(part);
                        if sys.file_kind(&link, false)?.is_none() {
                            sys.symlink(Path::new(&b.name), &link)?;
                        }
                    }
                }
            }
            // Deliberately stricter than runc 1.1.5, which leaves this tmpfs writable: the spec
            // asks for `ro` on /sys/fs/cgroup, and a writable tmpfs would let the container's
            // root (no CAP_SYS_ADMIN needed) shadow hierarchies with directories and files of its
            // own (a fake `unified`, `hugetlb`, or a controller's name as a plain file), so tools
            // probing its cgroups could be shown made-up controllers and limits. It becomes
            // read-only only now because the mount points and symlinks above live in it.
            if flags.contains(MsFlags::MS_RDONLY) {
                sys.mount(
                    Some(Path::new("tmpfs")),
                    target,
                    Some("tmpfs"),
                    flags | MsFlags::MS_REMOUNT,
                    Some("mode=755"),
                )?;
            }
            Ok(())
        }
        CgroupLayout::None => Err(Error::Cgroups(
            "no cgroup filesystem is mounted under /sys/fs/cgroup on this host".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::test::{Call, CallKind};
    use crate::syscall::{NodeKind, TestSyscall};
    use std::os::fd::AsRawFd;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    fn ctx(cgroup: CgroupLayout) -> RootfsContext {
        RootfsContext {
            rootfs: PathBuf::from("/b/rootfs"),
            bundle: PathBuf::from("/b"),
            cgroup,
            bind_devices: false,
            idmapped: Vec::new(),
        }
    }

    fn mount(
        source: Option<&str>,
        target: &str,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Call {
        Call::Mount {
            source: source.map(PathBuf::from),
            target: PathBuf::from(target),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        }
    }

    fn bind(source: &str, target: &str, rec: bool) -> Call {
        let mut f = MsFlags::MS_BIND;
        if rec {
            f |= MsFlags::MS_REC;
        }
        mount(Some(source), target, Some("bind"), f, None)
    }

    fn remount(target: &str, flags: MsFlags) -> Call {
        mount(
            None,
            target,
            None,
            flags | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
            None,
        )
    }

    fn prop(target: &str, flags: MsFlags) -> Call {
        mount(None, target, None, flags, None)
    }

    #[test]
    fn default_mounts_happen_in_order_with_propagation_first() {
        let t = TestSyscall::new();
        t.add_dir("/b/rootfs/bin");
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                 "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
            ]
        }));
        let layout = CgroupLayout::Legacy(vec![
            CgroupBind {
                name: "cpu,cpuacct".into(),
                source: "/sys/fs/cgroup/cpu,cpuacct/c1".into(),
            },
            CgroupBind {
                name: "memory".into(),
                source: "/sys/fs/cgroup/memory/c1".into(),
            },
        ]);
        prepare_rootfs(&t, &s, &ctx(layout)).unwrap();
        let ro_flags =
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV | MsFlags::MS_RELATIME;
        let expected = vec![
            prop("/", MsFlags::MS_SLAVE | MsFlags::MS_REC),
            bind("/b/rootfs", "/b/rootfs", true),
            mount(
                Some("proc"),
                "/b/rootfs/proc",
                Some("proc"),
                MsFlags::empty(),
                None,
            ),
            mount(
                Some("tmpfs"),
                "/b/rootfs/dev",
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
                Some("mode=755,size=65536k"),
            ),
            mount(
                Some("devpts"),
                "/b/rootfs/dev/pts",
                Some("devpts"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
            ),
            mount(
                Some("sysfs"),
                "/b/rootfs/sys",
                Some("sysfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV | MsFlags::MS_RDONLY,
                None,
            ),
            mount(
                Some("tmpfs"),
                "/b/rootfs/sys/fs/cgroup",
                Some("tmpfs"),
                ro_flags,
                Some("mode=755"),
            ),
            bind(
                "/sys/fs/cgroup/cpu,cpuacct/c1",
                "/b/rootfs/sys/fs/cgroup/cpu,cpuacct",
                true,
            ),
            remount(
                "/b/rootfs/sys/fs/cgroup/cpu,cpuacct",
                ro_flags | MsFlags::MS_RDONLY,
            ),
            bind(
                "/sys/fs/cgroup/memory/c1",
                "/b/rootfs/sys/fs/cgroup/memory",
                true,
            ),
            remount(
                "/b/rootfs/sys/fs/cgroup/memory",
                ro_flags | MsFlags::MS_RDONLY,
            ),
            mount(
                Some("tmpfs"),
                "/b/rootfs/sys/fs/cgroup",
                Some("tmpfs"),
                ro_flags | MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT,
                Some("mode=755"),
            ),
        ];
        assert_eq!(t.mounts(), expected);
        // cpu and cpuacct point at the combined hierarchy, like on a stock v1 host.
        let calls = t.calls();
        assert!(calls.contains(&Call::Symlink {
            target: "cpu,cpuacct".into(),
            link: "/b/rootfs/sys/fs/cgroup/cpu".into()
        }));
        // Default devices are created with their numbers and modes, then ptmx and the links.
        assert!(calls.contains(&Call::Mknod {
            path: "/b/rootfs/dev/null".into(),
            kind: NodeKind::Char,
            perm: 0o666,
            major: 1,
            minor: 3
        }));
        assert!(calls.contains(&Call::Mknod {
            path: "/b/rootfs/dev/tty".into(),
            kind: NodeKind::Char,
            perm: 0o666,
            major: 5,
            minor: 0
        }));
        assert!(calls.contains(&Call::Symlink {
            target: "pts/ptmx".into(),
            link: "/b/rootfs/dev/ptmx".into()
        }));
        assert!(calls.contains(&Call::Symlink {
            target: "/proc/self/fd".into(),
            link: "/b/rootfs/dev/fd".into()
        }));
        assert!(calls.contains(&Call::Symlink {
            target: "/proc/self/fd/2".into(),
            link: "/b/rootfs/dev/stderr".into()
        }));
    }

    #[test]
    fn idmapped_binds_are_attached_not_bound() {
        let t = TestSyscall::new();
        t.add_dir("/host/data");
        t.add_dir("/host/other");
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/other", "type": "bind", "source": "/host/other",
                 "options": ["rbind"]},
                {"destination": "/data", "type": "bind", "source": "/host/data",
                 "options": ["rbind", "ro"],
                 "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
                 "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]}
            ]
        }));
        let mut c = ctx(CgroupLayout::None);
        c.idmapped = vec![(1, 42)];
        prepare_rootfs(&t, &s, &c).unwrap();
        let m = t.mounts();
        assert!(m.contains(&bind("/host/other", "/b/rootfs/other", true)));
        let at = m
            .iter()
            .position(|c| {
                *c == Call::AttachMount {
                    fd: 42,
                    target: "/b/rootfs/data".into(),
                }
            })
            .expect("attached");
        // Still remounted read-only as asked, and never bound from the host path.
        assert!(matches!(&m[at + 1], Call::Mount { target, flags, .. }
            if target == Path::new("/b/rootfs/data") && flags.contains(MsFlags::MS_RDONLY)));
        assert!(!m.contains(&bind("/host/data", "/b/rootfs/data", true)));
    }

    #[test]
    fn bind_mounts_remount_for_ro_and_apply_propagation_after() {
        let t = TestSyscall::new();
        t.add_dir("/host/data");
        t.add_file("/host/resolv.conf");
        t.add_dir("/b/rootfs/etc");
        t.set_mount_flags("/b/rootfs/data", MsFlags::MS_NOSUID);
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "linux": {"rootfsPropagation": "rprivate"},
            "mounts": [
                {"destination": "/data", "type": "bind", "source": "/host/data",
                 "options": ["rbind", "ro", "rslave"]},
                {"destination": "/etc/resolv.conf", "type": "bind", "source": "/host/resolv.conf",
                 "options": ["bind"]},
                {"destination": "/rel", "source": "relsrc", "options": ["rbind", "rro"]}
            ]
        }));
        t.add_dir("/b/relsrc");
        prepare_rootfs(&t, &s, &ctx(CgroupLayout::None)).unwrap();
        let m = t.mounts();
        assert_eq!(m[0], prop("/", MsFlags::MS_PRIVATE | MsFlags::MS_REC));
        assert_eq!(m[2], bind("/host/data", "/b/rootfs/data", true));
        // The remount keeps the flags the mount already has (nosuid here) and adds ro.
        assert_eq!(
            m[3],
            remount("/b/rootfs/data", MsFlags::MS_NOSUID | MsFlags::MS_RDONLY)
        );
        assert_eq!(
            m[4],
            prop("/b/rootfs/data", MsFlags::MS_SLAVE | MsFlags::MS_REC)
        );
        assert_eq!(
            m[5],
            bind("/host/resolv.conf", "/b/rootfs/etc/resolv.conf", false)
        );
        // Relative sources are the bundle's; recursive read-only goes through mount_setattr.
        assert_eq!(m[6], bind("/b/relsrc", "/b/rootfs/rel", true));
        assert_eq!(
            m[7],
            Call::MountSetattr {
                target: "/b/rootfs/rel".into(),
                recursive: true,
                set: libc::MOUNT_ATTR_RDONLY,
                clear: 0
            }
        );
        // A file source gets a file mount point, a directory source a directory.
        let calls = t.calls();
        assert!(calls.contains(&Call::CreateFile("/b/rootfs/etc/resolv.conf".into())));
        assert!(calls.contains(&Call::MkdirAll {
            path: "/b/rootfs/data".into(),
            mode: 0o755
        }));
    }

    #[test]
    fn a_proc_symlink_to_the_host_root_is_refused_before_mounting() {
        let t = TestSyscall::new();
        t.add_symlink("/b/rootfs/proc", "/");
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}]
        }));
        let e = prepare_rootfs(&t, &s, &ctx(CgroupLayout::None)).unwrap_err();
        assert!(e.to_string().contains("mount proc (proc) on /proc"), "{e}");
        assert!(e.to_string().contains("root"), "{e}");
        assert!(
            !t.mounts()
                .iter()
                .any(|c| matches!(c, Call::Mount { fstype: Some(f), .. } if f == "proc"))
        );

        let t = TestSyscall::new();
        t.add_symlink("/b/rootfs/sys", "/etc");
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": [{"destination": "/sys", "type": "sysfs", "source": "sysfs"}]
        }));
        let e = prepare_rootfs(&t, &s, &ctx(CgroupLayout::None)).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
    }

    #[test]
    fn mounts_inside_proc_are_refused_except_what_lxcfs_emulates() {
        let t = TestSyscall::new();
        t.add_dir("/host/vol");
        t.add_file("/host/lxcfs/cpuinfo");
        let run = |dest: &str, typ: &str, src: &str, opts: &[&str]| {
            let s = spec(serde_json::json!({
                "ociVersion": "1.0.2", "root": {"path": "rootfs"},
                "mounts": [{"destination": dest, "type": typ, "source": src, "options": opts}]
            }));
            t.clear_calls();
            prepare_rootfs(&t, &s, &ctx(CgroupLayout::None))
        };
        for dest in [
            "/proc/sys/net/ipv4",
            "/proc/sys",
            "/proc/self/fd",
            "/proc/../proc/sys",
        ] {
            let e = run(dest, "bind", "/host/vol", &["rbind"]).unwrap_err();
            assert!(e.to_string().contains("inside /proc"), "{dest}: {e}");
            assert_eq!(
                t.mounts().len(),
                2,
                "{dest}: nothing mounted after the rootfs bind"
            );
        }
        let e = run("/proc", "bind", "/host/vol", &["rbind"]).unwrap_err();
        assert!(e.to_string().contains("only a proc filesystem"), "{e}");
        let e = run("/proc/sys", "tmpfs", "tmpfs", &[]).unwrap_err();
        assert!(e.to_string().contains("inside /proc"), "{e}");
        // An image's symlink must not carry a mount into /proc either.
        t.add_symlink("/b/rootfs/knobs", "/proc/sys/net");
        let e = run("/knobs/ipv4", "bind", "/host/vol", &["rbind"]).unwrap_err();
        assert!(e.to_string().contains("inside /proc"), "{e}");
        run("/proc/cpuinfo", "bind", "/host/lxcfs/cpuinfo", &["bind"]).unwrap();
        assert!(t.mounts().contains(&bind(
            "/host/lxcfs/cpuinfo",
            "/b/rootfs/proc/cpuinfo",
            false
        )));
        run("/proc", "proc", "proc", &[]).unwrap();
        run("/procfoo", "bind", "/host/vol", &["rbind"]).unwrap();
    }

    #[test]
    fn bind_targets_through_symlinks_stay_inside_the_rootfs() {
        let t = TestSyscall::new();
        t.add_file("/host/hosts");
        t.add_symlink("/b/rootfs/etc", "/../../../../host-etc");
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": [{"destination": "/etc/hosts", "type": "bind", "source": "/host/hosts",
                        "options": ["rbind"]}]
        }));
        prepare_rootfs(&t, &s, &ctx(CgroupLayout::None)).unwrap();
        assert_eq!(
            t.mounts()[2],
            bind("/host/hosts", "/b/rootfs/host-etc/hosts", true)
        );
    }

    #[test]
    fn shared_parent_mount_of_the_rootfs_is_made_private() {
        let t = TestSyscall::new();
        t.set_mountinfo(
            "1 0 8:1 / / rw shared:1 - ext4 /dev/sda1 rw\n\
             2 1 0:40 / /b/rootfs rw shared:7 - overlay overlay rw\n",
        );
        let s = spec(
            serde_json::json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"},
                                        "linux": {"rootfsPropagation": "rshared"}}),
        );
        prepare_rootfs(&t, &s, &ctx(CgroupLayout::None)).unwrap();
        let m = t.mounts();
        assert_eq!(m[0], prop("/", MsFlags::MS_SHARED | MsFlags::MS_REC));
        assert_eq!(m[1], prop("/b/rootfs", MsFlags::MS_PRIVATE));
        assert_eq!(m[2], bind("/b/rootfs", "/b/rootfs", true));
    }

    #[test]
    fn devices_fall_back_to_binding_host_nodes_when_mknod_is_refused() {
        let t = TestSyscall::new();
        t.fail(CallKind::Mknod, Errno::EPERM);
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2", "root": {"path": "rootfs"},
            "linux": {"devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229,
                                   "fileMode": 438, "uid": 0, "gid": 0}]}
        }));
        prepare_rootfs(&t, &s, &ctx(CgroupLayout::None)).unwrap();
        let m = t.mounts();
        assert!(m.contains(&bind("/dev/null", "/b/rootfs/dev/null", false)));
        assert!(m.contains(&bind("/dev/fuse", "/b/rootfs/dev/fuse", false)));
        assert!(
            t.calls()
                .contains(&Call::CreateFile("/b/rootfs/dev/fuse".into()))
        );
    }

    #[test]
    fn spec_devices_are_created_and_owned_and_a_bound_dev_skips_devices() {
        let t = TestSyscall::new();
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2", "root": {"path": "rootfs"},
            "linux": {"devices": [{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0,
                                   "fileMode": 416, "uid": 5, "gid": 6}]}
        }));
        prepare_rootfs(&t, &s, &ctx(CgroupLayout::None)).unwrap();
        let calls = t.calls();
        assert!(calls.contains(&Call::Mknod {
            path: "/b/rootfs/dev/sda".into(),
            kind: NodeKind::Block,
            perm: 0o640,
            major: 8,
            minor: 0
        }));
        assert!(calls.contains(&Call::Chown {
            path: "/b/rootfs/dev/sda".into(),
            uid: Some(5),
            gid: Some(6)
        }));

        let t = TestSyscall::new();
        t.add_dir("/dev");
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2", "root": {"path": "rootfs"},
            "mounts": [{"destination": "/dev", "type": "bind", "source": "/dev", "options": ["rbind"]}]
        }));
        prepare_rootfs(&t, &s, &ctx(CgroupLayout::None)).unwrap();
        assert!(
            !t.calls()
                .iter()
                .any(|c| matches!(c, Call::Mknod { .. } | Call::Symlink { .. }))
        );
    }

    #[test]
    fn masked_files_get_only_a_verified_null_device() {
        let masked = vec!["/proc/kcore".to_string(), "/proc/keys".into()];
        // A /dev/null that is a plain file, a symlink to a host knob, or another device: nothing
        // is bound over the masked paths, and the error says why.
        let bad: [&dyn Fn(&TestSyscall); 4] = [
            &|t| t.add_file("/dev/null"),
            &|t| t.add_symlink("/dev/null", "/proc/sys/kernel/core_pattern"),
            &|t| t.add_char_device("/dev/null", 1, 5),
            &|_| {},
        ];
        for setup in bad {
            let t = TestSyscall::new();
            t.add_file("/proc/kcore");
            t.add_file("/proc/keys");
            t.add_file("/proc/sys/kernel/core_pattern");
            setup(&t);
            let e = apply_masked_paths(&t, &masked).unwrap_err();
            assert!(e.to_string().contains("masked path /proc/kcore"), "{e}");
            assert!(e.to_string().contains("null device"), "{e}");
            assert_eq!(t.mounts(), vec![], "nothing may be bound");
        }
        // The real one is opened once and bound by fd, never by its path.
        let t = TestSyscall::new();
        t.add_file("/proc/kcore");
        t.add_file("/proc/keys");
        t.add_char_device("/dev/null", 1, 3);
        apply_masked_paths(&t, &masked).unwrap();
        let m = t.mounts();
        assert_eq!(m.len(), 2, "{m:?}");
        for (call, target) in m.iter().zip(["/proc/kcore", "/proc/keys"]) {
            assert!(
                matches!(call, Call::BindMountFd { source: Some(s), target: t, .. }
                    if s == Path::new("/dev/null") && t == Path::new(target)),
                "{call:?}"
            );
        }
        let opens = t
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::OpenCharDevice(_)))
            .count();
        assert_eq!(opens, 1);
    }

    #[test]
    fn the_console_is_bound_from_the_slave_fd_not_its_path() {
        let Ok((_master, slave, name)) = crate::container::tty::open_pty() else {
            eprintln!("skipped: no pty available here");
            return;
        };
        let t = TestSyscall::new();
        t.add_dir("/dev/pts");
        mount_console(&t, slave.as_fd()).unwrap();
        assert_eq!(
            t.calls(),
            vec![
                Call::CreateFile("/dev/console".into()),
                Call::BindMountFd {
                    fd: slave.as_raw_fd(),
                    source: None,
                    target: "/dev/console".into()
                }
            ],
            "{name} must not be looked up by path"
        );
        // A /dev that is a symlink is followed inside the root, not refused or escaped.
        let t = TestSyscall::new();
        t.add_symlink("/dev", "/run/dev");
        mount_console(&t, slave.as_fd()).unwrap();
        assert!(
            t.mounts()
                .iter()
                .any(|c| matches!(c, Call::BindMountFd { target, .. }
            if target == Path::new("/run/dev/console")))
        );
    }

    #[test]
    fn a_dev_symlink_in_the_image_keeps_ptmx_and_links_inside_the_rootfs() {
        // An image whose /dev points at a host directory (absolute, and relative with `..`).
        for target in ["/tmp/hostdir", "../../../../tmp/hostdir"] {
            let t = TestSyscall::new();
            t.add_symlink("/b/rootfs/dev", target);
            t.add_file("/tmp/hostdir/ptmx");
            let s = spec(serde_json::json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"}}));
            prepare_rootfs(&t, &s, &ctx(CgroupLayout::None)).unwrap();
            for c in t.calls() {
                let touched = match &c {
                    Call::RemoveFile(p) | Call::CreateFile(p) => Some(p.clone()),
                    Call::Symlink { link, .. } => Some(link.clone()),
                    Call::Mknod { path, .. } | Call::Chown { path, .. } => Some(path.clone()),
                    Call::MkdirAll { path, .. } => Some(path.clone()),
                    _ => None,
                };
                if let Some(p) = touched {
                    assert!(
                        p.starts_with("/b/rootfs/tmp/hostdir"),
                        "{target}: {c:?} outside"
                    );
                }
            }
            assert!(t.exists("/tmp/hostdir/ptmx"), "the host file was removed");
            assert!(t.calls().contains(&Call::Symlink {
                target: "pts/ptmx".into(),
                link: "/b/rootfs/tmp/hostdir/ptmx".into()
            }));
        }
    }

    #[test]
    fn masked_readonly_paths_and_readonly_root() {
        let t = TestSyscall::new();
        t.add_char_device("/dev/null", 1, 3);
        t.add_dir("/proc/acpi");
        t.add_file("/proc/kcore");
        t.add_dir("/proc/sys");
        let masked = vec![
            "/proc/acpi".to_string(),
            "/proc/kcore".into(),
            "/proc/nope".into(),
        ];
        apply_masked_paths(&t, &masked).unwrap();
        apply_readonly_paths(&t, &["/proc/sys".to_string(), "/proc/missing".into()]).unwrap();
        let s = spec(
            serde_json::json!({"ociVersion": "1.0.2", "root": {"path": "rootfs", "readonly": true}}),
        );
        t.set_mount_flags("/", MsFlags::MS_NOSUID);
        finalize_rootfs(&t, &s).unwrap();
        assert_eq!(
            t.mounts(),
            vec![
                mount(
                    Some("tmpfs"),
                    "/proc/acpi",
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY,
                    None
                ),
                Call::BindMountFd {
                    fd: match &t.mounts()[1] {
                        Call::BindMountFd { fd, .. } => *fd,
                        other => panic!("{other:?}"),
                    },
                    source: Some("/dev/null".into()),
                    target: "/proc/kcore".into()
                },
                bind("/proc/sys", "/proc/sys", true),
                remount("/proc/sys", MsFlags::MS_RDONLY | MsFlags::MS_REC),
                remount("/", MsFlags::MS_NOSUID | MsFlags::MS_RDONLY),
            ]
        );
    }

    #[test]
    fn unified_cgroup_mounts_cgroup2_or_binds_the_own_cgroup() {
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2", "root": {"path": "rootfs"},
            "mounts": [{"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                        "options": ["nosuid", "ro"]}]
        }));
        let layout = CgroupLayout::Unified {
            own: "/sys/fs/cgroup/pod/c1".into(),
        };
        let t = TestSyscall::new();
        prepare_rootfs(&t, &s, &ctx(layout.clone())).unwrap();
        assert_eq!(
            t.mounts()[2],
            mount(
                Some("cgroup2"),
                "/b/rootfs/sys/fs/cgroup",
                Some("cgroup2"),
                MsFlags::MS_NOSUID | MsFlags::MS_RDONLY,
                None
            )
        );
    }

    #[test]
    fn pivot_and_errors_name_the_mount() {
        let t = TestSyscall::new();
        t.fail(CallKind::Mount, Errno::ENODEV);
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2", "root": {"path": "rootfs"},
            "mounts": [{"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue"}]
        }));
        let e = prepare_rootfs(&t, &s, &ctx(CgroupLayout::None)).unwrap_err();
        assert!(e.to_string().contains("mount on /"), "{e}");
        let t = TestSyscall::new();
        pivot_root(&t, Path::new("/b/rootfs")).unwrap();
        assert_eq!(t.calls(), vec![Call::PivotRootfs("/b/rootfs".into())]);
    }

    #[test]
    fn overlay_uses_mount_data_when_it_fits_and_lowerdir_plus_when_not() {
        let t = TestSyscall::new();
        let lowers = vec![PathBuf::from("/s/2/fs"), PathBuf::from("/s/1/fs")];
        mount_overlay_with(
            &t,
            &lowers,
            Path::new("/c/upper"),
            Path::new("/c/work"),
            Path::new("/c/rootfs"),
        )
        .unwrap();
        assert_eq!(
            t.mounts(),
            vec![mount(
                Some("overlay"),
                "/c/rootfs",
                Some("overlay"),
                MsFlags::empty(),
                Some("lowerdir=/s/2/fs:/s/1/fs,upperdir=/c/upper,workdir=/c/work")
            )]
        );
        let t = TestSyscall::new();
        let lowers: Vec<PathBuf> = (0..200)
            .map(|i| PathBuf::from(format!("/var/lib/bungeo/snapshots/{i:04}/fs")))
            .collect();
        mount_overlay_with(
            &t,
            &lowers,
            Path::new("/c/upper"),
            Path::new("/c/work"),
            Path::new("/c/rootfs"),
        )
        .unwrap();
        let Call::MountFsParams {
            fstype,
            params,
            target,
        } = &t.mounts()[0]
        else {
            panic!("expected the new mount API");
        };
        assert_eq!(fstype, "overlay");
        assert_eq!(target, &PathBuf::from("/c/rootfs"));
        assert_eq!(params.len(), 202);
        assert_eq!(
            params[0],
            (
                "lowerdir+".to_string(),
                "/var/lib/bungeo/snapshots/0000/fs".to_string()
            )
        );
        assert_eq!(params[199].1, "/var/lib/bungeo/snapshots/0199/fs");
        assert_eq!(
            params[200],
            ("upperdir".to_string(), "/c/upper".to_string())
        );
        assert!(
            mount_overlay_with(&t, &[], Path::new("/u"), Path::new("/w"), Path::new("/t")).is_err()
        );
    }
}
