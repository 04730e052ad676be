//! The user's process: everything `execve` needs, prepared in the parent before forking
//! (arguments, environment and executable candidates as C strings), and the last steps in the
//! child (rlimits, no_new_privs, user, capabilities, cwd, seccomp, exec) in runc's order.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::unistd::{AccessFlags, Gid, Uid};
use oci_spec::runtime::{LinuxCapabilities, LinuxSeccomp, PosixRlimit, Process};

use crate::{Error, Result, capabilities, process_settings, seccomp};

/// What the child needs to become the user's process.
#[derive(Debug, Clone)]
pub(crate) struct ExecPlan {
    /// `args[0]` as given, for messages.
    pub arg0: String,
    pub args: Vec<CString>,
    pub env: Vec<CString>,
    /// Executable paths to try in order: `args[0]` itself when it holds a `/`, else each
    /// `$PATH` entry joined with it.
    pub candidates: Vec<CString>,
    pub has_home: bool,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: u32,
    pub capabilities: Option<LinuxCapabilities>,
    pub no_new_privs: bool,
    pub seccomp: Option<LinuxSeccomp>,
    pub rlimits: Vec<PosixRlimit>,
    pub console_size: Option<(u16, u16)>,
    pub apparmor_profile: Option<String>,
}

fn cstring(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::InvalidSpec(format!("{what} {s:?} contains a NUL byte")))
}

impl ExecPlan {
    /// Prepares the plan for `process`, with the container's seccomp filter.
    pub(crate) fn new(process: &Process, seccomp: Option<LinuxSeccomp>) -> Result<ExecPlan> {
        let args_s = process.args().as_deref().unwrap_or(&[]);
        let Some(arg0) = args_s.first() else {
            return Err(Error::InvalidSpec("process.args must not be empty".into()));
        };
        let args = args_s
            .iter()
            .map(|a| cstring(a, "argument"))
            .collect::<Result<Vec<_>>>()?;
        let env_s = process.env().as_deref().unwrap_or(&[]);
        let env = env_s
            .iter()
            .map(|e| cstring(e, "environment variable"))
            .collect::<Result<Vec<_>>>()?;
        let path_var = env_s
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("");
        let candidates = if arg0.contains('/') {
            vec![cstring(arg0, "command")?]
        } else {
            path_var
                .split(':')
                .filter(|d| !d.is_empty())
                .map(|d| cstring(&format!("{}/{arg0}", d.trim_end_matches('/')), "command"))
                .collect::<Result<Vec<_>>>()?
        };
        let cwd = process.cwd().clone();
        if !cwd.is_absolute() {
            return Err(Error::InvalidSpec(format!(
                "process.cwd {:?} must be an absolute path",
                cwd.display()
            )));
        }
        let user = process.user();
        Ok(ExecPlan {
            arg0: arg0.clone(),
            args,
            env,
            candidates,
            has_home: env_s.iter().any(|e| e.starts_with("HOME=")),
            cwd,
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            umask: user.umask().unwrap_or(0o022),
            capabilities: process.capabilities().clone(),
            no_new_privs: process.no_new_privileges().unwrap_or(false),
            seccomp,
            rlimits: process.rlimits().clone().unwrap_or_default(),
            console_size: process.console_size().map(|b| {
                (
                    b.height().min(u16::MAX as u64) as u16,
                    b.width().min(u16::MAX as u64) as u16,
                )
            }),
            apparmor_profile: process.apparmor_profile().clone().filter(|p| !p.is_empty()),
        })
    }
}

/// Capability sets with nothing in them (oci-spec's `Default` is runc's default set).
pub fn no_capabilities() -> LinuxCapabilities {
    let mut c = LinuxCapabilities::default();
    c.set_bounding(Some(Default::default()));
    c.set_effective(Some(Default::default()));
    c.set_inheritable(Some(Default::default()));
    c.set_permitted(Some(Default::default()));
    c.set_ambient(Some(Default::default()));
    c
}

/// Go's wording for an errno (`no such file or directory`), which runc's messages use.
pub(crate) fn errno_text(e: Errno) -> String {
    let d = e.desc();
    let mut c = d.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => d.to_string(),
    }
}

fn err_text(e: &Error) -> String {
    crate::syscall::describe(e)
}

/// The process, resolved and ready to exec.
pub(crate) struct Ready {
    path: CString,
    args: Vec<CString>,
    env: Vec<CString>,
}

/// The home directory of `uid` in the container's `/etc/passwd`, `/` when it has none.
fn home_of(uid: u32) -> String {
    let text = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[5].to_string())
        })
        .next()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".to_string())
}

fn set_user(plan: &ExecPlan) -> Result<()> {
    let gids: Vec<Gid> = plan
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    match nix::unistd::setgroups(&gids) {
        Ok(()) => {}
        // A user namespace with setgroups denied: the groups it has are all it can have.
        Err(Errno::EPERM) if gids.is_empty() => {}
        Err(e) => {
            return Err(Error::sys(
                format!("setgroups {:?}", plan.additional_gids),
                e,
            ));
        }
    }
    capabilities::set_keep_caps(true)?;
    let gid = Gid::from_raw(plan.gid);
    nix::unistd::setresgid(gid, gid, gid)
        .map_err(|e| Error::sys(format!("setgid to {}", plan.gid), e))?;
    let uid = Uid::from_raw(plan.uid);
    nix::unistd::setresuid(uid, uid, uid)
        .map_err(|e| Error::sys(format!("setuid to {}", plan.uid), e))?;
    capabilities::set_keep_caps(false)
}

/// Everything after the rootfs and before the start barrier: rlimits, no_new_privs, seccomp
/// (here only without no_new_privs, since loading it then needs CAP_SYS_ADMIN that the
/// capability drop removes), bounding set, user, capabilities, cwd, `$HOME`, umask, and the
/// executable lookup, so a wrong command fails `create`, not `start`.
pub(crate) fn prepare(plan: &ExecPlan, preserve_fds: u32) -> std::result::Result<Ready, String> {
    process_settings::apply_rlimits(&plan.rlimits)
        .map_err(|e| format!("set rlimits: {}", err_text(&e)))?;
    if plan.no_new_privs {
        process_settings::set_no_new_privs().map_err(|e| err_text(&e))?;
    }
    if let Some(s) = &plan.seccomp
        && !plan.no_new_privs
    {
        seccomp::load(s).map_err(|e| err_text(&e))?;
    }
    if let Some(c) = &plan.capabilities {
        capabilities::drop_bounding(c).map_err(|e| err_text(&e))?;
    }
    set_user(plan).map_err(|e| err_text(&e))?;
    match &plan.capabilities {
        Some(c) => capabilities::set_process_caps(c).map_err(|e| err_text(&e))?,
        // No capabilities in the spec: a non-root user keeps none (KEEPCAPS kept the
        // permitted set only so that the spec's sets could be applied).
        None if plan.uid != 0 => {
            capabilities::set_process_caps(&no_capabilities()).map_err(|e| err_text(&e))?
        }
        None => {}
    }
    nix::unistd::chdir(&plan.cwd).map_err(|e| {
        format!(
            "chdir to cwd ({:?}) set in config.json failed: {}",
            plan.cwd.display().to_string(),
            errno_text(e)
        )
    })?;
    verify_cwd_inside_root(&plan.cwd)?;
    let mut env = plan.env.clone();
    if !plan.has_home
        && let Ok(h) = CString::new(format!("HOME={}", home_of(plan.uid)))
    {
        env.push(h);
    }
    let path = lookup(plan)?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(plan.umask));
    close_fds_on_exec(3 + preserve_fds);
    Ok(Ready {
        path,
        args: plan.args.clone(),
        env,
    })
}

/// Finds the executable like Go's exec.LookPath, with runc's messages.
fn lookup(plan: &ExecPlan) -> std::result::Result<CString, String> {
    let check = |c: &CString| -> std::result::Result<(), Errno> {
        let p = std::path::Path::new(std::ffi::OsStr::from_bytes(c.as_bytes()));
        let st = nix::sys::stat::stat(p)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(Errno::EISDIR);
        }
        nix::unistd::access(p, AccessFlags::X_OK)
    };
    if plan.arg0.contains('/') {
        let c = &plan.candidates[0];
        return match check(c) {
            Ok(()) => Ok(c.clone()),
            Err(Errno::EISDIR) => Err(format!("exec: {:?}: is a directory", plan.arg0)),
            Err(e) => Err(format!("exec: {:?}: {}", plan.arg0, errno_text(e))),
        };
    }
    for c in &plan.candidates {
        if check(c).is_ok() {
            return Ok(c.clone());
        }
    }
    Err(format!(
        "exec: {:?}: executable file not found in $PATH",
        plan.arg0
    ))
}

/// Fails unless the working directory is reachable from the process's root. A cwd given as a
/// magic link (`/proc/self/fd/N`) to a directory outside the container (CVE-2024-21626) is
/// not: the kernel's getcwd then answers ENOENT, or a path starting `(unreachable)`.
fn verify_cwd_inside_root(asked: &std::path::Path) -> std::result::Result<(), String> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: the getcwd syscall writes at most `buf.len()` bytes into a live buffer. The raw
    // syscall, not libc's wrapper, so the `(unreachable)` answer of older kernels is seen.
    let r = unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
    let outside = |why: String| {
        Err(format!(
            "cwd ({:?}) set in config.json is outside the container's root ({why}): possible \
             container breakout",
            asked.display().to_string()
        ))
    };
    if r < 0 {
        return outside(errno_text(Errno::last()));
    }
    if buf.first() != Some(&b'/') {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        return outside(String::from_utf8_lossy(&buf[..end]).into_owned());
    }
    Ok(())
}

/// Closes every fd from `from` up except those in `keep`, so nothing the runtime had open
/// (a cgroup directory, namespace files, the caller's own files) stays reachable through
/// `/proc/<pid>/fd` of a process that joins a container. Only for a process that no longer
/// uses any fd outside `keep` (the container's children, which exec or exit).
pub(crate) fn close_fds_except(from: u32, keep: &[i32]) {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|fd| u32::try_from(*fd).ok())
        .filter(|fd| *fd >= from)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut lo = from;
    for k in keep.iter().copied().chain(std::iter::once(u32::MAX)) {
        if k > lo {
            close_range(lo, k - 1);
        }
        if k == u32::MAX {
            break;
        }
        lo = k + 1;
    }
}

/// Closes fds `lo..=hi`.
fn close_range(lo: u32, hi: u32) {
    // SAFETY: close_range closes our own fds; the caller guarantees none of them is in use.
    let r = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0u32) };
    if r == 0 {
        return;
    }
    // Kernels before 5.9: close what the fd table holds.
    if let Ok(rd) = std::fs::read_dir("/proc/self/fd") {
        let fds: Vec<u32> = rd
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|fd| (lo..=hi).contains(fd))
            .collect();
        for fd in fds {
            // SAFETY: closing an fd number of ours; the directory's own fd, closed already by
            // the iterator's drop, just fails with EBADF.
            unsafe { libc::close(fd as i32) };
        }
    }
}

/// Marks every fd from `from` up close-on-exec, so nothing the caller had open leaks into
/// the container (stdio and preserved fds stay).
fn close_fds_on_exec(from: u32) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on our own fds.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            from,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return;
    }
    // Kernels before 5.11: walk the fd table.
    if let Ok(rd) = std::fs::read_dir("/proc/self/fd") {
        let fds: Vec<i32> = rd
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd >= from as i32)
            .collect();
        for fd in fds {
            // SAFETY: setting FD_CLOEXEC on an fd number; a stale one just fails with EBADF.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// The last steps: seccomp when no_new_privs is set (as late as possible, so the filter
/// constrains only the user's process), the AppArmor exec profile, and execve.
pub(crate) fn exec(plan: &ExecPlan, ready: &Ready) -> std::result::Result<Infallible, String> {
    if let Some(s) = &plan.seccomp
        && plan.no_new_privs
    {
        seccomp::load(s).map_err(|e| err_text(&e))?;
    }
    if let Some(p) = &plan.apparmor_profile {
        // Through the verified procfs handle, as every write into procfs: the container's
        // /proc could hold anything by now.
        let attr = if std::path::Path::new("/proc/self/attr/apparmor/exec").exists() {
            "attr/apparmor/exec"
        } else {
            "attr/exec"
        };
        crate::procfs::ProcRoot::open()
            .and_then(|proc| {
                proc.write_own(std::path::Path::new(attr), format!("exec {p}").as_bytes())
            })
            .map_err(|e| format!("apply AppArmor profile {p}: {e}"))?;
    }
    match nix::unistd::execve(&ready.path, &ready.args, &ready.env) {
        Err(e) => Err(format!("exec: {:?}: {}", plan.arg0, errno_text(e))),
        Ok(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(json: serde_json::Value) -> Process {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn plan_resolves_path_candidates_from_the_spec_env() {
        let p = process(serde_json::json!({
            "user": {"uid": 1000, "gid": 1000, "additionalGids": [5]},
            "args": ["sh", "-c", "true"],
            "env": ["PATH=/usr/bin:/bin/", "TERM=xterm"],
            "cwd": "/"
        }));
        let plan = ExecPlan::new(&p, None).unwrap();
        assert_eq!(
            plan.candidates,
            vec![
                CString::new("/usr/bin/sh").unwrap(),
                CString::new("/bin/sh").unwrap()
            ]
        );
        assert!(!plan.has_home);
        assert_eq!(plan.additional_gids, vec![5]);
        assert_eq!(plan.umask, 0o022);
        let p = process(
            serde_json::json!({"user": {"uid": 0, "gid": 0}, "args": ["/bin/x"], "cwd": "/"}),
        );
        assert_eq!(
            ExecPlan::new(&p, None).unwrap().candidates,
            vec![CString::new("/bin/x").unwrap()]
        );
    }

    #[test]
    fn plan_rejects_empty_args_and_relative_cwd() {
        let p = process(serde_json::json!({"user": {"uid": 0, "gid": 0}, "args": [], "cwd": "/"}));
        assert!(
            ExecPlan::new(&p, None)
                .unwrap_err()
                .to_string()
                .contains("args")
        );
        let p =
            process(serde_json::json!({"user": {"uid": 0, "gid": 0}, "args": ["x"], "cwd": "rel"}));
        assert!(
            ExecPlan::new(&p, None)
                .unwrap_err()
                .to_string()
                .contains("absolute")
        );
    }

    /// Runs `f` on a thread with a private fd table and fs context (root, cwd), so what it
    /// closes or where it chroots touches nothing else in the test process.
    fn isolated<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            nix::sched::unshare(
                nix::sched::CloneFlags::CLONE_FILES | nix::sched::CloneFlags::CLONE_FS,
            )
            .expect("unshare files and fs");
            f()
        })
        .join()
        .expect("the isolated thread")
    }

    #[test]
    fn close_fds_except_closes_all_but_the_kept_ones() {
        use std::os::fd::IntoRawFd;
        let open: Vec<i32> = (0..6)
            .map(|_| std::fs::File::open("/dev/null").unwrap().into_raw_fd())
            .collect();
        let (keep, gone): (Vec<i32>, Vec<i32>) = open.iter().partition(|fd| *fd % 2 == 0);
        let (k, g) = (keep.clone(), gone.clone());
        let alive = isolated(move || {
            close_fds_except(3, &k);
            // SAFETY: F_GETFD only reads the flags of an fd number.
            let is_open = |fd: i32| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
            (
                (0..3).all(is_open),
                k.iter().all(|fd| is_open(*fd)),
                g.iter().any(|fd| is_open(*fd)),
            )
        });
        assert_eq!(alive, (true, true, false), "stdio, kept, any closed one");
        for fd in open {
            // SAFETY: our fds, closed once (the thread closed only its copies).
            unsafe { libc::close(fd) };
        }
    }

    #[test]
    fn a_cwd_outside_the_root_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: chroot needs root");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let (r, o) = (root.path().to_path_buf(), outside.path().to_path_buf());
        let (inside, escaped) = isolated(move || {
            let dir = std::fs::File::open(&o).unwrap();
            nix::unistd::chroot(&r).unwrap();
            nix::unistd::chdir("/").unwrap();
            let inside = verify_cwd_inside_root(std::path::Path::new("/"));
            nix::unistd::fchdir(&dir).unwrap();
            let escaped = verify_cwd_inside_root(std::path::Path::new("/proc/self/fd/9"));
            (inside, escaped)
        });
        assert_eq!(inside, Ok(()));
        let e = escaped.unwrap_err();
        assert!(e.contains("outside the container's root"), "{e}");
    }

    #[test]
    fn lookup_messages_match_runc() {
        let p = process(
            serde_json::json!({"user": {"uid": 0, "gid": 0}, "args": ["/bin/nope-nope"], "cwd": "/"}),
        );
        let e = lookup(&ExecPlan::new(&p, None).unwrap()).unwrap_err();
        assert_eq!(e, "exec: \"/bin/nope-nope\": no such file or directory");
        let p = process(
            serde_json::json!({"user": {"uid": 0, "gid": 0}, "args": ["nope-nope"],
                                           "env": ["PATH=/bin:/usr/bin"], "cwd": "/"}),
        );
        let e = lookup(&ExecPlan::new(&p, None).unwrap()).unwrap_err();
        assert_eq!(e, "exec: \"nope-nope\": executable file not found in $PATH");
        let p = process(
            serde_json::json!({"user": {"uid": 0, "gid": 0}, "args": ["sh"],
                                           "env": ["PATH=/nonexistent:/bin"], "cwd": "/"}),
        );
        assert_eq!(
            lookup(&ExecPlan::new(&p, None).unwrap()).unwrap(),
            CString::new("/bin/sh").unwrap()
        );
        let p =
            process(serde_json::json!({"user": {"uid": 0, "gid": 0}, "args": ["/"], "cwd": "/"}));
        assert!(
            lookup(&ExecPlan::new(&p, None).unwrap())
                .unwrap_err()
                .contains("is a directory")
        );
    }
}
