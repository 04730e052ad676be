//! `hack/bench runtime`: the lifecycle of a `/bin/true` container in a busybox bundle —
//! `create`, `start`, wait for the container's init to exit, `delete` — for bungeo-runtime,
//! runc and crun in one run, interleaved; prints medians, p90, ratios and peak RSS.
//!
//! Every runtime gets the same sequence of commands, spawned the same way (fork + exec with a
//! pre-exec hook). The wait is a pidfd on the container's init (this process is a child
//! subreaper, so it also reaps it). Peak RSS is `ru_maxrss` from `wait4` of each runtime
//! command: the process and any helpers it reaped.
//!
//! crun 1.8.1 refuses a hybrid cgroup layout whose v2 hierarchy holds a controller (this
//! machine's cgroup2 at /sys/fs/cgroup/unified holds hugetlb), whatever its cgroup manager and
//! whatever the spec says. Its commands therefore run in a private mount namespace, prepared
//! once, where an empty tmpfs covers /sys/fs/cgroup/unified: crun sees a plain v1 layout there
//! and uses the same v1 controllers as the others. Entering that namespace costs one `setns`
//! in the forked child before exec.

use std::fs::File;
use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bungeo_tests::benchkit::ms_percentile;
use bungeo_tests::bundle::{Bundle, BundleSpec, remove_cgroup_parents};
use clap::Parser;
use nix::mount::{MsFlags, mount};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

#[derive(Parser)]
#[command(about = "create + start + wait + delete of /bin/true: bungeo-runtime vs runc vs crun")]
struct Args {
    /// Measured iterations per runtime.
    #[arg(long, default_value_t = 100)]
    iterations: usize,
    /// Unmeasured iterations per runtime first (page cache, binaries).
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Runtimes to compare, in this order.
    #[arg(long, value_delimiter = ',', default_value = "bungeo,runc,crun")]
    runtimes: Vec<String>,
    /// bungeo-runtime binary (default: $BUNGEO_RUNTIME_BIN, else next to this binary).
    #[arg(long)]
    bungeo: Option<PathBuf>,
    /// runc binary.
    #[arg(long, default_value = "/usr/sbin/runc")]
    runc: PathBuf,
    /// crun binary.
    #[arg(long, default_value = "/usr/bin/crun")]
    crun: PathBuf,
}

/// How long a container may take to exit once started.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// One runtime under test.
struct Runtime {
    name: String,
    bin: PathBuf,
    root: tempfile::TempDir,
    bundle: Bundle,
    /// A mount namespace to run its commands in (crun, see the module comment).
    mount_ns: Option<OwnedFd>,
    samples: Vec<Sample>,
    failed: Option<String>,
}

/// One measured lifecycle.
#[derive(Clone, Copy, Debug)]
struct Sample {
    create: Duration,
    start: Duration,
    wait: Duration,
    delete: Duration,
    rss_create_kib: i64,
    rss_start_kib: i64,
    rss_delete_kib: i64,
}

impl Sample {
    fn total(&self) -> Duration {
        self.create + self.start + self.wait + self.delete
    }
}

/// A finished runtime command.
struct Ran {
    elapsed: Duration,
    maxrss_kib: i64,
}

impl Runtime {
    fn new(name: &str, bin: PathBuf, mount_ns: Option<OwnedFd>) -> Result<Self> {
        ensure!(bin.is_file(), "{name}: no binary at {}", bin.display());
        let root = tempfile::Builder::new()
            .prefix(&format!("bench-{name}-"))
            .tempdir()
            .context("state root")?;
        let bundle = Bundle::create(&BundleSpec::command(&["/bin/true"]))?;
        Ok(Self {
            name: name.to_string(),
            bin,
            root,
            bundle,
            mount_ns,
            samples: Vec::new(),
            failed: None,
        })
    }

    /// Runs `<bin> --root R args...` to completion with stdio on /dev/null.
    fn ran(&self, args: &[&str]) -> Result<Ran> {
        // A file, not a pipe: a container inherits create's stderr and may outlive it.
        let mut stderr = tempfile::tempfile().context("stderr file")?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root")
            .arg(self.root.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr.try_clone().context("stderr file")?);
        let ns: Option<RawFd> = self.mount_ns.as_ref().map(|fd| fd.as_raw_fd());
        // SAFETY: the hook runs in the forked child before exec and makes one raw syscall
        // (async-signal-safe, no allocation). Every runtime gets a hook so all are spawned by
        // fork + exec alike.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(fd) = ns
                    && libc::setns(fd, libc::CLONE_NEWNS) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("{}: start {args:?}", self.name))?;
        let pid = i32::try_from(child.id()).context("pid out of range")?;
        let (status, rusage) = wait4(pid)?;
        let elapsed = started.elapsed();
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            let mut text = String::new();
            std::io::Seek::rewind(&mut stderr).ok();
            std::io::Read::read_to_string(&mut stderr, &mut text).ok();
            bail!(
                "{} {}: wait status {status:#x}: {}",
                self.name,
                args.join(" "),
                text.trim()
            );
        }
        Ok(Ran {
            elapsed,
            maxrss_kib: rusage.ru_maxrss,
        })
    }

    /// create, start, wait for exit, delete.
    fn lifecycle(&self, id: &str) -> Result<Sample> {
        let pid_file = self.bundle.path().join("init.pid");
        let _ = std::fs::remove_file(&pid_file);
        let bundle = self.bundle.path().to_string_lossy().into_owned();
        let pid_arg = pid_file.to_string_lossy().into_owned();
        let create = self.ran(&["create", "--bundle", &bundle, "--pid-file", &pid_arg, id])?;
        let result = (|| {
            let pid: i32 = std::fs::read_to_string(&pid_file)
                .with_context(|| format!("{}: read {}", self.name, pid_file.display()))?
                .trim()
                .parse()
                .with_context(|| format!("{}: pid file", self.name))?;
            // Opened while the init waits for start, so the pid cannot be reused under us.
            let pidfd = pidfd_open(pid)?;
            let start = self.ran(&["start", id])?;
            let t = Instant::now();
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            let ready = poll(
                &mut fds,
                PollTimeout::try_from(EXIT_TIMEOUT.as_millis() as i32)?,
            )
            .context("poll the init's pidfd")?;
            ensure!(
                ready == 1,
                "{}: container did not exit in {EXIT_TIMEOUT:?}",
                self.name
            );
            // Ours to reap as the subreaper; ECHILD if the runtime keeps a parent of its own.
            let _ = waitpid(Pid::from_raw(pid), None);
            let wait = t.elapsed();
            let delete = self.ran(&["delete", id])?;
            Ok(Sample {
                create: create.elapsed,
                start: start.elapsed,
                wait,
                delete: delete.elapsed,
                rss_create_kib: create.maxrss_kib,
                rss_start_kib: start.maxrss_kib,
                rss_delete_kib: delete.maxrss_kib,
            })
        })();
        if result.is_err() {
            let _ = self.ran(&["delete", "--force", id]);
        }
        reap_strays();
        result
    }
}

/// `wait4(pid)`: the wait status and the resource usage of the process and its reaped
/// descendants.
fn wait4(pid: i32) -> Result<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: rusage is plain data; zeroed is a valid value the kernel overwrites.
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both pointers are to live locals of the right types.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut rusage) };
        if r == pid {
            return Ok((status, rusage));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("wait4");
        }
    }
}

fn pidfd_open(pid: i32) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("pidfd_open");
    }
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Reaps whatever was re-parented to us and has exited (we are a subreaper). Only called when
/// no runtime command is outstanding, so it cannot take a status `ran` waits for.
fn reap_strays() {
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// A mount namespace like ours but with an empty tmpfs over /sys/fs/cgroup/unified, so crun
/// sees a v1-only layout. We enter it to prepare it and come back.
fn crun_mount_namespace() -> Result<OwnedFd> {
    let cwd = std::env::current_dir().context("cwd")?;
    let ours = File::open("/proc/self/ns/mnt").context("open our mount namespace")?;
    unshare(CloneFlags::CLONE_NEWNS).context("unshare a mount namespace for crun")?;
    let prepared = (|| -> Result<OwnedFd> {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .context("make the crun namespace private")?;
        if Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
            mount(
                Some("bench-no-unified"),
                "/sys/fs/cgroup/unified",
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("mode=755,size=1m"),
            )
            .context("cover /sys/fs/cgroup/unified")?;
        }
        Ok(OwnedFd::from(
            File::open("/proc/self/ns/mnt").context("open the crun mount namespace")?,
        ))
    })();
    setns(ours.as_fd(), CloneFlags::CLONE_NEWNS).context("return to our mount namespace")?;
    // setns(CLONE_NEWNS) resets the working directory to the namespace's root.
    std::env::set_current_dir(&cwd).context("restore cwd")?;
    prepared
}

fn bungeo_default() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BUNGEO_RUNTIME_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("current_exe")?;
    Ok(exe
        .parent()
        .context("no directory above this binary")?
        .join("bungeo-runtime"))
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        nix::unistd::geteuid().is_root(),
        "bench-runtime needs root (it creates containers)"
    );
    ensure!(args.iterations > 0, "--iterations must be at least 1");
    // The containers' inits are re-parented to us when their runtime's create exits.
    // SAFETY: prctl with an integer argument changes only this process's attributes.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    ensure!(
        r == 0,
        "PR_SET_CHILD_SUBREAPER: {}",
        std::io::Error::last_os_error()
    );

    let mut runtimes = Vec::new();
    for name in &args.runtimes {
        let made = match name.as_str() {
            "bungeo" => bungeo_default()
                .and_then(|d| Runtime::new("bungeo", args.bungeo.clone().unwrap_or(d), None)),
            "runc" => Runtime::new("runc", args.runc.clone(), None),
            "crun" => crun_mount_namespace()
                .and_then(|ns| Runtime::new("crun", args.crun.clone(), Some(ns))),
            other => bail!("unknown runtime {other} (known: bungeo, runc, crun)"),
        };
        match made {
            Ok(rt) => runtimes.push(rt),
            Err(e) => eprintln!("{name}: left out: {e:#}"),
        }
    }
    ensure!(!runtimes.is_empty(), "no runtime to measure");

    let total = args.warmup + args.iterations;
    for i in 0..total {
        // Rotate who goes first so no runtime always follows the same neighbour.
        let n = runtimes.len();
        for k in 0..n {
            let rt = &mut runtimes[(i + k) % n];
            if rt.failed.is_some() {
                continue;
            }
            let id = format!("bench-{i}");
            match rt.lifecycle(&id) {
                Ok(sample) if i >= args.warmup => rt.samples.push(sample),
                Ok(_) => {}
                Err(e) => {
                    eprintln!(
                        "{}: iteration {i} failed, dropped from the run: {e:#}",
                        rt.name
                    );
                    rt.failed = Some(format!("{e:#}"));
                }
            }
        }
    }
    report(&args, &runtimes);
    drop(runtimes);
    remove_cgroup_parents();
    Ok(())
}

fn report(args: &Args, runtimes: &[Runtime]) {
    println!(
        "create + start + wait + delete of /bin/true (busybox bundle, runc-spec defaults), \
         {} iterations per runtime after {} warm-up, interleaved",
        args.iterations, args.warmup
    );
    println!("times in ms (p50 / p90); peak RSS in KiB (ru_maxrss of the command, max over runs)");
    println!(
        "{:<8} {:>15} {:>15} {:>13} {:>13} {:>15} {:>9} {:>9} {:>9}",
        "runtime", "total", "create", "start", "wait", "delete", "rss crt", "rss st", "rss del"
    );
    let p = |samples: &[Sample], f: fn(&Sample) -> Duration, q: usize| {
        let v: Vec<Duration> = samples.iter().map(f).collect();
        ms_percentile(&v, q)
    };
    let mut medians = Vec::new();
    for rt in runtimes {
        let s = &rt.samples;
        if s.is_empty() {
            println!(
                "{:<8} failed: {}",
                rt.name,
                rt.failed.as_deref().unwrap_or("no samples")
            );
            continue;
        }
        let rss = |f: fn(&Sample) -> i64| s.iter().map(f).max().unwrap_or(0);
        println!(
            "{:<8} {:>7.2}/{:>7.2} {:>7.2}/{:>7.2} {:>6.2}/{:>6.2} {:>6.2}/{:>6.2} {:>7.2}/{:>7.2} {:>9} {:>9} {:>9}{}",
            rt.name,
            p(s, Sample::total, 50),
            p(s, Sample::total, 90),
            p(s, |x| x.create, 50),
            p(s, |x| x.create, 90),
            p(s, |x| x.start, 50),
            p(s, |x| x.start, 90),
            p(s, |x| x.wait, 50),
            p(s, |x| x.wait, 90),
            p(s, |x| x.delete, 50),
            p(s, |x| x.delete, 90),
            rss(|x| x.rss_create_kib),
            rss(|x| x.rss_start_kib),
            rss(|x| x.rss_delete_kib),
            if rt.failed.is_some() {
                format!("  (failed after {} runs)", s.len())
            } else {
                String::new()
            }
        );
        medians.push((rt.name.as_str(), p(s, Sample::total, 50)));
    }
    println!();
    for reference in ["runc", "crun"] {
        let Some((_, base)) = medians.iter().find(|(n, _)| *n == reference) else {
            continue;
        };
        for (name, m) in medians.iter().filter(|(n, _)| *n != reference) {
            println!("{name} / {reference} (median total): {:.2}x", m / base);
        }
    }
    let get = |n: &str| medians.iter().find(|(m, _)| *m == n).map(|(_, v)| *v);
    if let (Some(b), Some(r)) = (get("bungeo"), get("runc")) {
        let crun = get("crun");
        println!(
            "goal (bungeo <= 0.5x runc{}): {}",
            if crun.is_some() {
                ", faster than crun"
            } else {
                ""
            },
            if b <= 0.5 * r && crun.is_none_or(|c| b < c) {
                "met"
            } else {
                "not met"
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_total_adds_the_phases() {
        let s = Sample {
            create: Duration::from_millis(3),
            start: Duration::from_millis(2),
            wait: Duration::from_millis(1),
            delete: Duration::from_millis(4),
            rss_create_kib: 0,
            rss_start_kib: 0,
            rss_delete_kib: 0,
        };
        assert_eq!(s.total(), Duration::from_millis(10));
    }
}
