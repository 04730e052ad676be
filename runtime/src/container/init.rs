//! The child side of `create` and `exec`.
//!
//! Stage 1 (forked from the caller) joins the container's cgroup by itself (see
//! [`CgroupJoin`]: moving a process from outside costs an RCU grace period), joins the
//! namespaces given by path, creates the user namespace (the parent writes its id maps) and the
//! other new namespaces, then clones the container process with CLONE_PARENT (and into its
//! cgroup v2 directory where it can), so that process is the caller's child, born in its cgroup
//! and, with a new pid namespace, its PID 1. Stage 1 reports that host pid and exits.
//!
//! Stage 2, for a container's init, prepares the rootfs and pivots into it, sets up the
//! terminal, hostname, sysctls, masked and read-only paths while the parent sets its cgroup's
//! limits, waits for them (`Go`), applies the process's own settings, reports `Ready`, blocks
//! on the start barrier (`exec.fifo`), and execs. An exec'd process joins the container's
//! cgroup itself as stage 2 starts (stage 1 only clones it, into the v2 directory where it can),
//! and, like an init the parent moves into its cgroup itself (systemd driver), waits for `Go`
//! before anything else. Any
//! failure before the barrier is sent back as text a person can act on, and the child exits.
//!
//! These run in a child of a single-threaded process, so allocating is safe; they log nothing.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::Spec;

use super::channel::{Channel, Msg};
use super::process::{self, ExecPlan, errno_text};
use super::tty;
use crate::cgroups::CgroupJoin;
use crate::namespaces::NsKind;
use crate::rootfs::{self, RootfsContext};
use crate::syscall::{LinuxSyscall, Syscall};
use crate::{Error, process_settings};

/// What the container's init does beyond an exec'd process.
#[derive(Debug)]
pub(crate) struct InitPlan {
    pub spec: Spec,
    pub rootfs: PathBuf,
    pub bundle: PathBuf,
    /// `/proc/self/fd/<n>` of the O_PATH fd of `exec.fifo` (the path itself is outside the
    /// rootfs after pivot_root).
    pub fifo_path: CString,
    /// Kept open (alone with stdio and preserved fds while the init waits) so the fd number
    /// in `fifo_path` stays valid.
    pub fifo: OwnedFd,
    pub new_cgroup_ns: bool,
    pub in_user_ns: bool,
    /// Idmapped binds made before the user namespace was joined, by spec mount index; the
    /// init attaches them (and closes them once its rootfs is ready).
    pub idmapped: Vec<(usize, OwnedFd)>,
}

/// Everything the children need, built by the parent before forking.
#[derive(Debug)]
pub(crate) struct ChildPlan {
    /// Namespaces to join, already opened, in join order.
    pub joins: Vec<(NsKind, OwnedFd)>,
    /// Create a user namespace first (the parent writes the id maps).
    pub new_user_ns: bool,
    /// Other namespaces to create (CLONE_NEWPID takes effect for the cloned child).
    pub unshare: CloneFlags,
    pub exec: ExecPlan,
    /// Connected console socket when the process gets a terminal.
    pub console: Option<OwnedFd>,
    pub init: Option<InitPlan>,
    pub preserve_fds: u32,
    /// The cgroup stage 1 joins before anything else; `None` when the parent moves the
    /// container process itself (systemd driver, exec).
    pub cgroup: Option<CgroupJoin>,
    /// Clone the container process into the cgroup's v2 directory instead of joining it in
    /// stage 1: only without user or cgroup namespaces in stage 1, whose credentials and
    /// cgroup root the kernel checks at clone time.
    pub clone_into_cgroup: bool,
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit ends this process without running the parent's atexit handlers or
    // flushing stdio buffers it inherited, which must not happen twice.
    unsafe { libc::_exit(code) }
}

fn e2s(e: Error) -> String {
    crate::syscall::describe(&e)
}

/// The kernel's `struct clone_args` (CLONE_ARGS_SIZE_VER2, Linux 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Like [`clone_parent`], with the child started in the cgroup v2 directory `cgroup`.
fn clone_parent_into(cgroup: BorrowedFd<'_>) -> std::result::Result<i32, nix::errno::Errno> {
    let args = CloneArgs {
        flags: libc::CLONE_PARENT as u64 | CLONE_INTO_CGROUP,
        // With CLONE_PARENT the kernel takes the exit signal of the caller (SIGCHLD, as stage
        // 1 was forked) and refuses any other.
        exit_signal: 0,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM and with no stack behaves like fork(), as in
    // `clone_parent`; it reads `size_of::<CloneArgs>()` bytes from a live #[repr(C)] struct
    // laid out as the kernel's clone_args, and the caller is single-threaded.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r < 0 {
        Err(nix::errno::Errno::last())
    } else {
        Ok(r as i32)
    }
}

/// Clones the container process: into its cgroup v2 directory when the plan says so (a clone
/// the kernel refuses, on an old kernel for one, falls back to stage 1 joining the directory
/// first, which is slower but ends the same), else as a plain [`clone_parent`].
fn clone_container(plan: &ChildPlan) -> std::result::Result<i32, String> {
    if let Some(join) = &plan.cgroup
        && plan.clone_into_cgroup
        && let Some(dir) = join.v2_dir()
    {
        match clone_parent_into(dir) {
            Ok(pid) => return Ok(pid),
            Err(_) => join.join_v2_self()?,
        }
    }
    clone_parent().map_err(|e| format!("clone the container process: {}", errno_text(e)))
}

/// Clones the calling process with CLONE_PARENT (the new process is a sibling: the caller's
/// parent gets SIGCHLD and reaps it). Returns 0 in the child.
fn clone_parent() -> std::result::Result<i32, nix::errno::Errno> {
    // SAFETY: a raw clone without CLONE_VM and with a null stack behaves like fork(): the
    // child gets a copy of the address space and continues on its copy of the stack. The
    // caller is single-threaded, so no lock can be held by a thread that does not exist in
    // the child.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if r < 0 {
        Err(nix::errno::Errno::last())
    } else {
        Ok(r as i32)
    }
}

/// Stage 1. Never returns.
pub(crate) fn run_stage1(plan: &ChildPlan, ch: &Channel) -> ! {
    match stage1(plan, ch) {
        Ok(()) => exit(0),
        Err(msg) => {
            let _ = ch.send(&Msg::Error(msg));
            exit(1)
        }
    }
}

fn stage1(plan: &ChildPlan, ch: &Channel) -> std::result::Result<(), String> {
    // The caller's log subscriber writes to the caller's stderr, which here is the
    // container's: nothing the children do may log there.
    let _quiet = tracing::dispatcher::set_default(&tracing::Dispatch::none());
    let sys = LinuxSyscall;
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // Before anything joins the container: a dumpable process whose capabilities drop to the
    // container's lets any container process with its uid open /proc/<pid>/{exe,fd/*}, that
    // is the runtime's binary and the host files it has open (CVE-2019-5736, CVE-2024-21626).
    // The container process inherits this at clone time; its own execve decides afresh.
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) changes a flag of this process only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(format!(
            "make the container setup process non-dumpable: {}",
            errno_text(nix::errno::Errno::last())
        ));
    }
    // First, with the caller's credentials and namespaces, so that everything created from
    // here on (namespaces, the container process) is in the container's cgroup. An exec's
    // process joins in stage 2 instead: it creates nothing, and stage 1 in the cgroup would
    // take a second slot of its pids limit while it clones.
    if let Some(join) = &plan.cgroup
        && plan.init.is_some()
    {
        join.join_self(plan.clone_into_cgroup)?;
    }
    for (kind, fd) in &plan.joins {
        sys.setns(fd.as_fd(), kind.clone_flag())
            .map_err(|e| format!("join the {kind} namespace: {}", e2s(e)))?;
    }
    if plan.joins.iter().any(|(k, _)| *k == NsKind::User) {
        // The host's root has no id in a pod's user namespace: files it made there would be
        // refused (EOVERFLOW). Become the namespace's root, which keeps every capability.
        nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
            .map_err(|e| format!("become root of the joined user namespace: setresgid: {e}"))?;
        nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
            .map_err(|e| format!("become root of the joined user namespace: setresuid: {e}"))?;
    }
    if plan.new_user_ns {
        sys.unshare(CloneFlags::CLONE_NEWUSER)
            .map_err(|e| format!("create a user namespace: {}", e2s(e)))?;
        ch.send(&Msg::MapIds).map_err(e2s)?;
        ch.expect(&Msg::MapsDone, "while waiting for the user namespace maps")
            .map_err(e2s)?;
        // Become the namespace's root (when mapped) so what follows is done as root there.
        let _ = nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0));
        let _ = nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0));
    }
    if !plan.unshare.is_empty() {
        sys.unshare(plan.unshare)
            .map_err(|e| format!("create namespaces {:?}: {}", plan.unshare, e2s(e)))?;
    }
    let pid = clone_container(plan)?;
    if pid == 0 {
        run_stage2(plan, ch);
    }
    ch.send(&Msg::Pid(pid)).map_err(e2s)
}

/// Stage 2: the container's process. Never returns.
fn run_stage2(plan: &ChildPlan, ch: &Channel) -> ! {
    let err = match stage2(plan, ch) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    match err {
        Stage2Error::BeforeReady(msg) => {
            let _ = ch.send(&Msg::Error(msg));
            exit(1)
        }
        Stage2Error::AfterReady(msg) => {
            // Nobody listens on the channel any more: the container's stderr is the one place
            // left to say why it did not start.
            let line = format!("bungeo-runtime: {msg}\n");
            // SAFETY: write(2) from a live buffer to fd 2.
            let _ = unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
            exit(127)
        }
    }
}

enum Stage2Error {
    BeforeReady(String),
    AfterReady(String),
}

fn stage2(
    plan: &ChildPlan,
    ch: &Channel,
) -> std::result::Result<std::convert::Infallible, Stage2Error> {
    use Stage2Error::{AfterReady, BeforeReady};
    let sys = LinuxSyscall;
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // Everything inherited from the runtime that this process does not need goes first: the
    // cgroup's v2 directory it was cloned into, namespace files, the caller's own files.
    // CLOEXEC is not enough: until the exec they are open, and a cwd of /proc/self/fd/N
    // or a container process reading /proc/<pid>/fd/N would reach the host through them.
    let mut keep = container_fds(plan, ch);
    let joins_here = plan.cgroup.as_ref().filter(|_| plan.init.is_none());
    keep.extend(joins_here.map(|j| j.membership_fds()).unwrap_or_default());
    process::close_fds_except(3 + plan.preserve_fds, &keep);
    if let Some(join) = joins_here {
        // Single-threaded, so writing `0` moves this whole process (see `CgroupJoin`); the
        // files were opened by the caller, whose credentials the kernel checks.
        join.join_self(plan.clone_into_cgroup)
            .map_err(BeforeReady)?;
        process::close_fds_except(3 + plan.preserve_fds, &container_fds(plan, ch));
    }
    // A container's init born in its cgroup prepares its rootfs while the parent sets the
    // cgroup's limits (runc, too, sets them once the rootfs is ready); anything else waits
    // until the parent has done its part (moved it into its cgroup with the systemd driver,
    // set an exec's oom_score_adj).
    let rootfs_before_go = plan.cgroup.is_some() && plan.init.is_some();
    if !rootfs_before_go {
        ch.expect(&Msg::Go, "while waiting to join its cgroup")
            .map_err(|e| BeforeReady(e2s(e)))?;
    }
    if let Some(init) = &plan.init
        && init.new_cgroup_ns
    {
        // Only inside its cgroup, so the new cgroup namespace is rooted there.
        sys.unshare(CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| BeforeReady(format!("create a cgroup namespace: {}", e2s(e))))?;
    }
    reset_signals();
    nix::unistd::setsid().map_err(|e| BeforeReady(format!("setsid: {}", errno_text(e))))?;
    match &plan.init {
        Some(init) => init_setup(&sys, plan, init).map_err(BeforeReady)?,
        None => {
            if let Some(sock) = &plan.console {
                tty::setup_console(&sys, sock.as_fd(), plan.exec.console_size, false)
                    .map_err(|e| BeforeReady(e2s(e)))?;
            }
        }
    }
    // The console socket and the idmapped mount trees have served; the start barrier and
    // the channel stay.
    let fifo = plan.init.as_ref().map(|i| i.fifo.as_raw_fd());
    let mut keep = vec![ch.raw_fd()];
    keep.extend(fifo);
    process::close_fds_except(3 + plan.preserve_fds, &keep);
    if rootfs_before_go {
        // Before the process's own settings: from here on its limits apply, and a seccomp
        // filter loaded by `prepare` must not have to allow the receive.
        ch.expect(&Msg::Go, "while waiting for its cgroup limits")
            .map_err(|e| BeforeReady(e2s(e)))?;
    }
    let ready = process::prepare(&plan.exec, plan.preserve_fds).map_err(BeforeReady)?;
    let _ = nix::sys::prctl::set_pdeathsig(None);
    if let Some(init) = &plan.init {
        ch.send(&Msg::Ready).map_err(|e| BeforeReady(e2s(e)))?;
        // Nobody listens any more: while it waits for `start`, the init holds its stdio, the
        // preserved fds and the start barrier, nothing else.
        process::close_fds_except(3 + plan.preserve_fds, &[init.fifo.as_raw_fd()]);
        wait_for_start(init).map_err(AfterReady)?;
        return process::exec(&plan.exec, &ready).map_err(AfterReady);
    }
    process::exec(&plan.exec, &ready).map_err(BeforeReady)
}

/// The fds the container process needs while it sets up: the sync channel, the console socket,
/// the start barrier and the idmapped mount trees the init attaches.
fn container_fds(plan: &ChildPlan, ch: &Channel) -> Vec<std::os::fd::RawFd> {
    let mut keep = vec![ch.raw_fd()];
    keep.extend(plan.console.as_ref().map(|c| c.as_raw_fd()));
    if let Some(init) = &plan.init {
        keep.push(init.fifo.as_raw_fd());
        keep.extend(init.idmapped.iter().map(|(_, fd)| fd.as_raw_fd()));
    }
    keep
}

/// Ignored signals stay ignored across execve and the mask is inherited: a caller that
/// ignores SIGPIPE (every Rust program does) or blocks signals must not pass that on.
fn reset_signals() {
    // The kernel's struct sigaction with SIG_DFL (0), no flags, no restorer, empty mask.
    let dfl = [0usize; 4];
    for n in 1..=64usize {
        if n == libc::SIGKILL as usize || n == libc::SIGSTOP as usize {
            continue;
        }
        // SAFETY: rt_sigaction reads a zeroed kernel sigaction (SIG_DFL) and writes nothing
        // (null old action); glibc's wrapper would refuse its internal signals 32 and 33.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                n,
                dfl.as_ptr(),
                std::ptr::null_mut::<libc::c_void>(),
                8usize,
            )
        };
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
}

/// The start barrier: opening the fifo for writing blocks until `start` opens it for
/// reading; the byte written tells `start` the open happened.
fn wait_for_start(init: &InitPlan) -> std::result::Result<(), String> {
    // SAFETY: open(2) with a NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(init.fifo_path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "open the start barrier exec.fifo: {}",
            errno_text(nix::errno::Errno::last())
        ));
    }
    let b = b"0";
    // SAFETY: write one byte from a live buffer to the fd just opened.
    let r = unsafe { libc::write(fd, b.as_ptr().cast(), 1) };
    let werr = nix::errno::Errno::last();
    // SAFETY: fd is ours and closed once.
    unsafe { libc::close(fd) };
    if r != 1 {
        return Err(format!("write to the start barrier: {}", errno_text(werr)));
    }
    Ok(())
}

fn init_setup(
    sys: &dyn Syscall,
    plan: &ChildPlan,
    init: &InitPlan,
) -> std::result::Result<(), String> {
    let spec = &init.spec;
    // Mount points, device nodes and masks get exactly the modes asked for.
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let mountinfo = sys.mountinfo().map_err(e2s)?;
    let own_cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let ctx = RootfsContext {
        rootfs: init.rootfs.clone(),
        bundle: init.bundle.clone(),
        cgroup: rootfs::cgroup_layout(&mountinfo, &own_cgroups),
        bind_devices: init.in_user_ns,
        idmapped: init
            .idmapped
            .iter()
            .map(|(i, fd)| (*i, fd.as_raw_fd()))
            .collect(),
    };
    rootfs::prepare_rootfs(sys, spec, &ctx).map_err(e2s)?;
    rootfs::pivot_root(sys, &init.rootfs).map_err(e2s)?;
    // Like runc, a working directory the image lacks is created (inside the new root, before
    // it may turn read-only), so an image WORKDIR that no layer holds still runs.
    if let Some(cwd) = spec
        .process()
        .as_ref()
        .map(|p| p.cwd())
        .filter(|c| c.is_absolute())
    {
        sys.mkdir_all(cwd, 0o755).map_err(e2s)?;
    }
    if let Some(sock) = &plan.console {
        tty::setup_console(sys, sock.as_fd(), plan.exec.console_size, true).map_err(e2s)?;
    }
    rootfs::finalize_rootfs(sys, spec).map_err(e2s)?;
    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        sys.sethostname(h).map_err(e2s)?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        sys.setdomainname(d).map_err(e2s)?;
    }
    let linux = spec.linux().as_ref();
    if let Some(sysctls) = linux.and_then(|l| l.sysctl().as_ref()) {
        process_settings::apply_sysctls(sysctls).map_err(e2s)?;
    }
    if let Some(paths) = linux.and_then(|l| l.readonly_paths().as_deref()) {
        rootfs::apply_readonly_paths(sys, paths).map_err(e2s)?;
    }
    if let Some(paths) = linux.and_then(|l| l.masked_paths().as_deref()) {
        rootfs::apply_masked_paths(sys, paths).map_err(e2s)?;
    }
    Ok(())
}
