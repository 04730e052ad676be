//! The parent side of `create`: state dir, barrier fifo, children, cgroup, and a clean
//! rollback when anything fails.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType, Spec};

use super::channel::{self, Channel, Msg};
use super::init::{ChildPlan, InitPlan, run_stage1};
use super::process::ExecPlan;
use super::state::{EXEC_FIFO, State, now_rfc3339, proc_stat, validate_id};
use super::{ConsoleSocket, Container, CreateOptions};
use crate::cgroups::{Cgroup, Driver};
use crate::namespaces::{self, NsKind};
use crate::{Error, Result, process_settings};

/// Undoes a half-made container when dropped (unless disarmed): kills and reaps its
/// processes, deletes its cgroup, removes its state dir.
struct Rollback {
    dir: PathBuf,
    pids: Vec<i32>,
    cgroup: Option<Cgroup>,
    armed: bool,
}

impl Drop for Rollback {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for pid in &self.pids {
            let p = Pid::from_raw(*pid);
            let _ = kill(p, Signal::SIGKILL);
            // Our child (CLONE_PARENT); ECHILD when the caller auto-reaps.
            let _ = waitpid(p, None);
        }
        if let Some(cg) = self.cgroup.take()
            && let Err(e) = cg.delete()
        {
            tracing::warn!(error = %e, "remove the cgroup of a container that failed to create");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Checks what the runtime needs from the spec before anything is created.
fn validate(spec: &Spec) -> Result<()> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::InvalidSpec("the spec has no process".into()))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::InvalidSpec("process.args must not be empty".into()));
    }
    let nss = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let has = |t: LinuxNamespaceType| nss.iter().any(|n| n.typ() == t);
    if !has(LinuxNamespaceType::Mount) {
        return Err(Error::InvalidSpec(
            "a mount namespace is required (the rootfs is set up inside one)".into(),
        ));
    }
    if spec.hostname().as_deref().is_some_and(|h| !h.is_empty()) && !has(LinuxNamespaceType::Uts) {
        return Err(Error::InvalidSpec(
            "unable to set hostname without a private UTS namespace".into(),
        ));
    }
    if let Some(p) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        if !Path::new("/sys/kernel/security/apparmor").exists() {
            return Err(Error::Unsupported(format!(
                "AppArmor profile {p:?} requested but AppArmor is not enabled on this host"
            )));
        }
        // Refused here, at create: a profile nobody loaded would fail the container's exec
        // instead (exit 127, with the reason only in the container's log).
        if !crate::apparmor::profile_loaded(p)? {
            return Err(Error::Unsupported(format!(
                "AppArmor profile {p:?} is not loaded (load it with apparmor_parser first)"
            )));
        }
    }
    Ok(())
}

/// Makes a detached idmapped copy of the source of every bind mount with uid/gid mappings
/// (recursive for `rbind`), by index in the spec's mounts. This needs the host's privileges,
/// so it happens here, before any child joins the container's user namespace; the init then
/// attaches them, as runc does.
fn idmapped_binds(spec: &Spec, bundle: &Path) -> Result<Vec<(usize, OwnedFd)>> {
    use crate::namespaces::userns::{IdMap, new_user_namespace};
    use crate::syscall::mount_api::{clone_tree, setattr_fd};
    use std::os::fd::AsFd;

    let to_maps = |m: &[oci_spec::runtime::LinuxIdMapping]| -> Vec<IdMap> {
        m.iter()
            .map(|x| IdMap {
                container_id: x.container_id(),
                host_id: x.host_id(),
                size: x.size(),
            })
            .collect()
    };
    // One user namespace per distinct (uid maps, gid maps).
    type Maps = (Vec<IdMap>, Vec<IdMap>);
    let mut namespaces: Vec<(Maps, OwnedFd)> = Vec::new();
    let mut out = Vec::new();
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let (Some(u), Some(g)) = (m.uid_mappings(), m.gid_mappings()) else {
            continue;
        };
        if u.is_empty() && g.is_empty() {
            continue;
        }
        let opts = m.options().clone().unwrap_or_default();
        if !opts.iter().any(|o| o == "bind" || o == "rbind") {
            return Err(Error::InvalidSpec(format!(
                "mount on {}: uid/gid mappings are only supported on bind mounts",
                m.destination().display()
            )));
        }
        let recursive = opts.iter().any(|o| o == "rbind");
        let src = m.source().as_deref().ok_or_else(|| {
            Error::InvalidSpec(format!(
                "bind mount on {} has no source",
                m.destination().display()
            ))
        })?;
        let src = if src.is_absolute() {
            src.to_path_buf()
        } else {
            bundle.join(src)
        };
        let key = (to_maps(u), to_maps(g));
        let ns = match namespaces.iter().position(|(k, _)| *k == key) {
            Some(p) => p,
            None => {
                let fd = new_user_namespace(&key.0, &key.1)?;
                namespaces.push((key, fd));
                namespaces.len() - 1
            }
        };
        let tree = clone_tree(&src, recursive)?;
        setattr_fd(
            tree.as_fd(),
            recursive,
            libc::MOUNT_ATTR_IDMAP,
            0,
            Some(namespaces[ns].1.as_fd()),
        )
        .map_err(|e| {
            Error::Child(format!(
                "idmap the source {} of the mount on {}: {}",
                src.display(),
                m.destination().display(),
                crate::syscall::describe(&e)
            ))
        })?;
        out.push((i, tree));
    }
    Ok(out)
}

/// Opens the namespaces to join, in join order.
pub(crate) fn open_joins(joins: &[(NsKind, PathBuf)]) -> Result<Vec<(NsKind, OwnedFd)>> {
    joins
        .iter()
        .map(|(kind, path)| {
            let f = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
                .map_err(|e| Error::io("open namespace", path, e))?;
            Ok((*kind, OwnedFd::from(f)))
        })
        .collect()
}

pub(crate) fn connect_console(c: &ConsoleSocket) -> Result<OwnedFd> {
    match c {
        ConsoleSocket::Path(p) => UnixStream::connect(p)
            .map(OwnedFd::from)
            .map_err(|e| Error::io("connect to console socket", p, e)),
        ConsoleSocket::Fd(fd) => fd
            .try_clone()
            .map_err(|e| Error::io("duplicate console socket", "<fd>", e)),
    }
}

fn write_maps(pid: i32, file: &str, maps: &[LinuxIdMapping]) -> Result<()> {
    if maps.is_empty() {
        return Ok(());
    }
    let text: String = maps
        .iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect();
    let path = format!("/proc/{pid}/{file}");
    std::fs::write(&path, text).map_err(|e| Error::io("write", path, e))
}

/// Writes `pid` to `path` atomically, without a newline, like runc.
pub(crate) fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("pid")
    ));
    std::fs::write(&tmp, pid.to_string()).map_err(|e| Error::io("write pid file", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("rename pid file", path, e))
}

/// Forks stage 1 with `plan` and returns the host pid of the container process it cloned;
/// handles the user namespace map request on the way. `rb` learns every pid to clean up.
pub(crate) fn spawn(
    plan: &ChildPlan,
    parent: &Channel,
    child: Channel,
    uid_maps: &[LinuxIdMapping],
    gid_maps: &[LinuxIdMapping],
    rb_pids: &mut Vec<i32>,
) -> Result<i32> {
    // SAFETY: the caller is single-threaded (documented requirement of this library; the
    // CLI is), so the child may allocate and use any of our code until it execs or exits.
    let stage1 = match unsafe { fork() }.map_err(|e| Error::sys("fork", e))? {
        ForkResult::Child => run_stage1(plan, &child),
        ForkResult::Parent { child } => child,
    };
    drop(child);
    rb_pids.push(stage1.as_raw());
    let pid = loop {
        match parent.recv()? {
            Some(Msg::MapIds) => {
                write_maps(stage1.as_raw(), "uid_map", uid_maps)?;
                write_maps(stage1.as_raw(), "gid_map", gid_maps)?;
                parent.send(&Msg::MapsDone)?;
            }
            Some(Msg::Pid(p)) => break p,
            Some(Msg::Error(e)) => return Err(Error::Child(e)),
            Some(other) => {
                return Err(Error::Child(format!(
                    "unexpected message {other:?} from the container setup process"
                )));
            }
            None => {
                let how = match waitpid(stage1, None) {
                    Ok(WaitStatus::Exited(_, c)) => format!("exit status {c}"),
                    Ok(WaitStatus::Signaled(_, s, _)) => format!("signal {s}"),
                    _ => "unknown status".into(),
                };
                return Err(Error::Child(format!(
                    "the container setup process exited ({how}) before reporting the container's pid"
                )));
            }
        }
    };
    rb_pids.push(pid);
    // Stage 1 exits right after reporting; reap it so it does not linger as a zombie.
    match waitpid(stage1, None) {
        Ok(_) | Err(Errno::ECHILD) => {}
        Err(e) => return Err(Error::sys("wait for the container setup process", e)),
    }
    rb_pids.retain(|p| *p != stage1.as_raw());
    Ok(pid)
}

pub(crate) fn create(opts: &CreateOptions) -> Result<Container> {
    validate_id(&opts.id)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&opts.root)
        .map_err(|e| Error::io("create state root", &opts.root, e))?;
    let dir = opts.root.join(&opts.id);
    match std::fs::DirBuilder::new().mode(0o711).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::AlreadyExists(opts.id.clone()));
        }
        Err(e) => return Err(Error::io("create state dir", &dir, e)),
    }
    let mut rb = Rollback {
        dir: dir.clone(),
        pids: Vec::new(),
        cgroup: None,
        armed: true,
    };

    let bundle = opts
        .bundle
        .canonicalize()
        .map_err(|e| Error::io("open bundle", &opts.bundle, e))?;
    let config = bundle.join("config.json");
    let spec = Spec::load(&config)
        .map_err(|e| Error::InvalidSpec(format!("load {}: {e}", config.display())))?;
    validate(&spec)?;
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| Error::InvalidSpec("the spec has no root".into()))?;
    let rootfs_given = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    let rootfs = rootfs_given
        .canonicalize()
        .map_err(|e| Error::io("open rootfs", &rootfs_given, e))?;
    let process = spec.process().clone().unwrap_or_default();
    let linux = spec.linux().clone().unwrap_or_default();

    let fifo = dir.join(EXEC_FIFO);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o622))
        .map_err(|e| Error::sys(format!("mkfifo {}", fifo.display()), e))?;
    std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o622))
        .map_err(|e| Error::io("chmod", &fifo, e))?;
    let fifo_fd: OwnedFd = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(&fifo)
        .map_err(|e| Error::io("open", &fifo, e))?
        .into();
    let fifo_path = std::ffi::CString::new(format!("/proc/self/fd/{}", fifo_fd.as_raw_fd()))
        .map_err(|_| Error::InvalidArgument("fifo path".into()))?;

    let terminal = process.terminal().unwrap_or(false);
    let console = match (&opts.console_socket, terminal) {
        (Some(c), true) => Some(connect_console(c)?),
        (None, true) => {
            return Err(Error::InvalidArgument(
                "process.terminal is set but no console socket was given (--console-socket)".into(),
            ));
        }
        (_, false) => None,
    };

    let nss = linux.namespaces().clone().unwrap_or_default();
    let joins = open_joins(&namespaces::to_join(&nss)?)?;
    let flags = namespaces::clone_flags(&nss);
    let new_user = flags.contains(nix::sched::CloneFlags::CLONE_NEWUSER);
    let new_cgroup = flags.contains(nix::sched::CloneFlags::CLONE_NEWCGROUP);
    let joins_user = joins.iter().any(|(k, _)| *k == NsKind::User);
    let unshare =
        flags - nix::sched::CloneFlags::CLONE_NEWUSER - nix::sched::CloneFlags::CLONE_NEWCGROUP;

    let exec = ExecPlan::new(&process, linux.seccomp().clone())?;

    let cgroups_path = linux
        .cgroups_path()
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let driver = if opts.systemd_cgroup {
        Driver::Systemd
    } else {
        Driver::Cgroupfs
    };
    // Created before the children, which join it themselves (see `CgroupJoin`).
    let cg = rb
        .cgroup
        .insert(Cgroup::new(&cgroups_path, &opts.id, driver)?);
    let cgroup_join = cg.child_join()?;
    let parent_moves_child = cgroup_join.is_none();
    let joins_cgroup_ns = joins.iter().any(|(k, _)| *k == NsKind::Cgroup);

    let plan = ChildPlan {
        joins,
        new_user_ns: new_user,
        unshare,
        exec,
        console,
        init: Some(InitPlan {
            spec: spec.clone(),
            rootfs: rootfs.clone(),
            bundle: bundle.clone(),
            fifo_path,
            fifo: fifo_fd,
            new_cgroup_ns: new_cgroup,
            in_user_ns: new_user || joins_user,
            idmapped: idmapped_binds(&spec, &bundle)?,
        }),
        preserve_fds: opts.preserve_fds,
        cgroup: cgroup_join,
        clone_into_cgroup: !new_user && !joins_user && !joins_cgroup_ns,
    };

    let (parent_ch, child_ch) = channel::pair()?;
    let pid = spawn(
        &plan,
        &parent_ch,
        child_ch,
        linux.uid_mappings().as_deref().unwrap_or(&[]),
        linux.gid_mappings().as_deref().unwrap_or(&[]),
        &mut rb.pids,
    )?;
    drop(plan);
    // The init may already be setting up (see below) and have failed, and its own message
    // then says why better than what its exit made fail here.
    let init_error = |ours: Error| match parent_ch.try_recv() {
        Ok(Some(Msg::Error(msg))) => Error::Child(msg),
        _ => ours,
    };
    let (_, start_time) = proc_stat(pid).ok_or_else(|| {
        init_error(Error::Child(format!(
            "the container process {pid} exited during setup"
        )))
    })?;

    // Unless we move it, the init prepares its rootfs meanwhile and waits for `Go` before it
    // applies its process settings.
    (|| -> Result<()> {
        if let Some(cg) = &rb.cgroup {
            if parent_moves_child {
                cg.add_task(pid)?;
            }
            if let Some(res) = linux.resources() {
                cg.apply(res)?;
            }
        }
        if let Some(adj) = process.oom_score_adj() {
            process_settings::set_oom_score_adj(pid, adj)?;
        }
        parent_ch.send(&Msg::Go)
    })()
    .map_err(init_error)?;
    parent_ch.expect(&Msg::Ready, "during setup")?;

    let state = State {
        oci_version: spec.version().clone(),
        id: opts.id.clone(),
        init_pid: pid,
        init_start_time: start_time,
        bundle,
        rootfs,
        created: now_rfc3339(),
        cgroups_path,
        systemd_cgroup: opts.systemd_cgroup,
        annotations: spec.annotations().clone().unwrap_or_default(),
        process: Some(process),
        seccomp: linux.seccomp().clone(),
        paused: false,
        owner: String::new(),
    };
    state.save(&dir)?;
    if let Some(p) = &opts.pid_file {
        write_pid_file(p, pid)?;
    }
    rb.armed = false;
    Ok(Container {
        root: opts.root.clone(),
        dir,
        state,
    })
}

/// Waits for `pid` (a child of this process) and returns its exit code, 128+signal when a
/// signal ended it, like a shell.
pub fn wait_exit_code(pid: i32) -> Result<i32> {
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(_, c)) => return Ok(c),
            Ok(WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys(format!("wait for process {pid}"), e)),
        }
    }
}
