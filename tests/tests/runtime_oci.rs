//! The OCI runtime command line, `bungeo-runtime`, against runc (the reference).
//!
//! Each check builds busybox bundles, drives a runtime through its command line (`run`,
//! `create`, `start`, `state`, `kill`, `exec`, `ps`, `delete`, `spec`) and turns what the
//! container saw (its stdout, files in bind-mounted host directories, cgroup files read from
//! the host) into observations. Every runtime must meet the check's expectations; bungeo's
//! observations must also equal runc's, key by key, and a difference names both sides.
//!
//! Needs root. Trials are `runc::<check>` and `bungeo::<check>`; bungeo-runtime is taken from
//! `BUNGEO_RUNTIME_BIN`, else `target/<profile>/bungeo-runtime` (build it first:
//! `cargo build -p bungeo-runtime`). runc is `/usr/sbin/runc` unless `RUNC_BIN` says otherwise.
//! `RUNTIME_OCI_SHOW=1` prints the observations of passing trials too.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bungeo_tests::bundle::{
    Bundle, BundleSpec, Caps, DEFAULT_CAPS, Resources, bind, remove_cgroup_parents, rlimit,
    seccomp_deny, tmpfs,
};
use bungeo_tests::mounts::{mounts_under, unmount_under};
use libtest_mimic::{Arguments, Failed, Trial};
use nix::mount::{MsFlags, mount};
use oci_spec::runtime::{Capability, PosixRlimitType, ProcessBuilder, UserBuilder};

/// How long one runtime command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a container gets to reach a state or a host-visible milestone.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Shell functions every script starts with. `o KEY CMD...` runs CMD and prints `KEY.rc=<exit
/// status>` and `KEY=<stdout+stderr, newlines as |>`.
const PRELUDE: &str = r#"o() { k=$1; shift; out=$("$@" 2>&1); rc=$?; printf '%s.rc=%s\n' "$k" "$rc"; printf '%s=%s\n' "$k" "$(printf %s "$out" | tr '\n' '|')"; }
status() { sed -n -E 's/^(Cap[A-Za-z]+|NoNewPrivs|Seccomp|Seccomp_filters|Uid|Gid|Groups):[[:space:]]*/\1=/p' /proc/self/status | sed -E 's/[[:space:]]+$//; s/[[:space:]]+/ /g'; }
"#;

fn main() {
    let args = Arguments::from_args();
    let checks = checks();
    let suite = Arc::new(OnceLock::new());
    let references: Arc<Vec<OnceLock<std::result::Result<Obs, String>>>> =
        Arc::new(checks.iter().map(|_| OnceLock::new()).collect());
    let mut trials = Vec::new();
    for which in [Which::Bungeo, Which::Runc] {
        for (index, check) in checks.iter().enumerate() {
            let (suite, references, check) = (suite.clone(), references.clone(), *check);
            trials.push(Trial::test(
                format!("{}::{}", which.name(), check.name),
                move || trial(&suite, &references, index, which, check),
            ));
        }
    }
    for (name, test) in hardening_tests() {
        let suite = suite.clone();
        trials.push(Trial::test(format!("hardening::{name}"), move || {
            let suite = suite
                .get_or_init(|| Suite::setup().map_err(|e| format!("suite setup: {e:#}")))
                .as_ref()
                .map_err(|e| Failed::from(e.clone()))?;
            let bungeo = suite
                .runtime(Which::Bungeo)
                .map_err(|e| Failed::from(format!("{e:#}")))?;
            test(bungeo, &suite.runc).map_err(|e| Failed::from(format!("{e:#}")))
        }));
    }
    for (name, test) in self_tests() {
        trials.push(Trial::test(format!("harness::{name}"), move || {
            test().map_err(|e| Failed::from(format!("{e:#}")))
        }));
    }
    let conclusion = libtest_mimic::run(&args, trials);
    if let Some(Ok(suite)) = suite.get() {
        suite.teardown();
    }
    conclusion.exit()
}

// ---------------------------------------------------------------------------------------------
// Runtimes

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Bungeo,
    Runc,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Bungeo => "bungeo",
            Which::Runc => "runc",
        }
    }
}

/// One runtime binary with a state root of its own.
#[derive(Debug)]
struct Runtime {
    which: Which,
    bin: PathBuf,
    root: PathBuf,
}

/// What a finished command printed and how it ended.
#[derive(Debug)]
struct Out {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Out {
    /// The exit code, or 128 + signal like a shell reports it.
    fn code(&self) -> i32 {
        use std::os::unix::process::ExitStatusExt as _;
        self.status
            .code()
            .or_else(|| self.status.signal().map(|s| 128 + s))
            .unwrap_or(-1)
    }

    fn success(&self) -> bool {
        self.status.success()
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}; stdout: {:?}; stderr: {:?}",
            self.code(),
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Runs `cmd` to completion (killed after `timeout`), its output captured in anonymous files so
/// a container that inherits them cannot keep us waiting.
fn output(mut cmd: Command, timeout: Duration) -> Result<Out> {
    let mut out = tempfile::tempfile().context("stdout file")?;
    let mut err = tempfile::tempfile().context("stderr file")?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?)
        .spawn()
        .with_context(|| format!("start {cmd:?}"))?;
    let status = wait_child(&mut child, timeout).with_context(|| format!("{cmd:?}"))?;
    let read = |f: &mut fs::File| -> Result<String> {
        f.rewind()?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    Ok(Out {
        status,
        stdout: read(&mut out)?,
        stderr: read(&mut err)?,
    })
}

/// Waits for `child`, SIGKILLing it after `timeout`.
fn wait_child(child: &mut Child, timeout: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            // It may have exited just now; the wait below reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Runtime {
    fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root").arg(&self.root).args(args);
        cmd
    }

    /// Runs a subcommand and returns what it printed, whatever its exit status.
    fn invoke<I, S>(&self, args: I) -> Result<Out>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        output(self.command(args), COMMAND_TIMEOUT)
    }

    /// Runs a subcommand that must succeed.
    fn must<I, S>(&self, args: I) -> Result<Out>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        let out = self.invoke(args)?;
        ensure!(
            out.success(),
            "{} {}: {out}",
            self.which.name(),
            shown.join(" ")
        );
        Ok(out)
    }

    /// `run --bundle B ID`: create, start and wait; the exit code is the container's.
    fn run(&self, bundle: &Bundle, id: &str) -> Result<Out> {
        self.invoke([
            OsStr::new("run"),
            OsStr::new("--bundle"),
            bundle.path().as_os_str(),
            OsStr::new(id),
        ])
    }

    /// `create --bundle B --pid-file F ID`, deleted (forcibly) when the guard drops.
    fn create<'a>(&'a self, bundle: &Bundle, id: &str) -> Result<Container<'a>> {
        let pid_file = bundle.path().join(format!("{id}.pid"));
        let out = self.invoke([
            OsStr::new("create"),
            OsStr::new("--bundle"),
            bundle.path().as_os_str(),
            OsStr::new("--pid-file"),
            pid_file.as_os_str(),
            OsStr::new(id),
        ])?;
        let container = Container {
            rt: self,
            id: id.to_string(),
        };
        ensure!(out.success(), "{} create {id}: {out}", self.which.name());
        Ok(container)
    }

    /// `state ID` as JSON.
    fn state(&self, id: &str) -> Result<serde_json::Value> {
        let out = self.must(["state", id])?;
        serde_json::from_str(&out.stdout)
            .with_context(|| format!("{} state {id}: not JSON: {out}", self.which.name()))
    }

    /// `state ID`'s `status`.
    fn status(&self, id: &str) -> Result<String> {
        Ok(self.state(id)?["status"]
            .as_str()
            .unwrap_or("(no status)")
            .to_string())
    }

    /// `state ID`'s `pid`.
    fn pid(&self, id: &str) -> Result<i32> {
        let state = self.state(id)?;
        state["pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .with_context(|| format!("state {id} has no pid: {state}"))
    }

    /// Polls `state ID` until its status is `want`.
    fn wait_status(&self, id: &str, want: &str) -> Result<String> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let status = self.status(id)?;
            if status == want || Instant::now() >= deadline {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whatever the state root holds for `id` (runc keeps `<root>/<id>/`).
    fn state_entries(&self, id: &str) -> Vec<String> {
        fs::read_dir(&self.root)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.contains(id))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A created container, deleted with `delete --force` when dropped.
struct Container<'a> {
    rt: &'a Runtime,
    id: String,
}

impl Container<'_> {
    fn start(&self) -> Result<Out> {
        self.rt.must(["start", self.id.as_str()])
    }

    /// `exec ID ARGS...` (runc's form: flags before the id, the command after it).
    fn exec(&self, args: &[&str]) -> Result<Out> {
        let mut all = vec!["exec", self.id.as_str()];
        all.extend_from_slice(args);
        self.rt.invoke(all)
    }

    /// `exec ID /bin/sh -c PRELUDE+script`.
    fn exec_sh(&self, script: &str) -> Result<Out> {
        self.exec(&["/bin/sh", "-c", &format!("{PRELUDE}{script}")])
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        // Fails harmlessly when a check deleted it already, or `run` did.
        let _ = self.rt.invoke(["delete", "--force", self.id.as_str()]);
    }
}

// ---------------------------------------------------------------------------------------------
// Observations and expectations

/// What a check saw. `same` must match between runtimes; `own` holds what legitimately
/// differs (error wording, exit codes of failed runtime commands) and is only checked
/// against the expectations.
#[derive(Clone, Debug, Default)]
struct Obs {
    same: BTreeMap<String, String>,
    own: BTreeMap<String, String>,
}

impl Obs {
    fn put(&mut self, key: impl Into<String>, value: impl ToString) {
        self.same.insert(key.into(), value.to_string());
    }

    fn own(&mut self, key: impl Into<String>, value: impl ToString) {
        self.own.insert(key.into(), value.to_string());
    }

    /// Every `key=value` line of `stdout`, each key prefixed with `prefix`.
    fn lines(&mut self, prefix: &str, stdout: &str) {
        for line in stdout.lines() {
            if let Some((k, v)) = line.split_once('=') {
                self.put(format!("{prefix}{k}"), v);
            } else if !line.trim().is_empty() {
                let key = format!("{prefix}unparsed");
                let old = self.same.remove(&key).unwrap_or_default();
                self.put(key, format!("{old}{line}|"));
            }
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.same
            .get(key)
            .or_else(|| self.own.get(key))
            .map(String::as_str)
    }

    fn dump(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.same {
            s.push_str(&format!("    {k}={v}\n"));
        }
        for (k, v) in &self.own {
            s.push_str(&format!("    (own) {k}={v}\n"));
        }
        s
    }
}

/// What an observation must be.
#[derive(Clone, Copy, Debug)]
enum Want {
    Is(&'static str),
    Contains(&'static str),
    Lacks(&'static str),
    NonZero,
}

impl Want {
    fn holds(self, value: &str) -> bool {
        match self {
            Want::Is(w) => value == w,
            Want::Contains(w) => value.contains(w),
            Want::Lacks(w) => !value.contains(w),
            Want::NonZero => value.trim().parse::<i64>().is_ok_and(|v| v != 0),
        }
    }
}

use Want::{Contains, Is, Lacks, NonZero};

/// One check: how to observe, and what the observations must be.
#[derive(Clone, Copy)]
struct Check {
    name: &'static str,
    observe: fn(&Runtime) -> Result<Obs>,
    expect: &'static [(&'static str, Want)],
    /// Why runc 1.1.5, the reference here, may fail the expectations (a hole it has itself):
    /// its trial then only reports what it saw, and bungeo is held to the expectations alone.
    runc_informational: Option<&'static str>,
}

macro_rules! check {
    ($f:ident, $expect:expr) => {
        Check {
            name: stringify!($f),
            observe: $f,
            expect: $expect,
            runc_informational: None,
        }
    };
    ($f:ident, $expect:expr, runc_informational: $why:expr) => {
        Check {
            name: stringify!($f),
            observe: $f,
            expect: $expect,
            runc_informational: Some($why),
        }
    };
}

fn unmet(obs: &Obs, expect: &[(&str, Want)]) -> Vec<String> {
    expect
        .iter()
        .filter_map(|(key, want)| match obs.get(key) {
            None => Some(format!("{key}: missing, want {want:?}")),
            Some(v) if !want.holds(v) => Some(format!("{key}: got {v:?}, want {want:?}")),
            Some(_) => None,
        })
        .collect()
}

fn differences(bungeo: &Obs, runc: &Obs) -> Vec<String> {
    let keys: BTreeSet<&String> = bungeo.same.keys().chain(runc.same.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let (b, r) = (bungeo.same.get(k), runc.same.get(k));
            (b != r).then(|| match (b, r) {
                (Some(b), Some(r)) if b.contains('|') || r.contains('|') => {
                    format!("{k}: {}", list_difference(b, r))
                }
                _ => format!(
                    "{k}: bungeo {} | runc {}",
                    b.map_or("(absent)".into(), |v| format!("{v:?}")),
                    r.map_or("(absent)".into(), |v| format!("{v:?}"))
                ),
            })
        })
        .collect()
}

/// For `|`-joined lists: the items only one side has, or that only the order differs.
fn list_difference(bungeo: &str, runc: &str) -> String {
    let b: Vec<&str> = bungeo.split('|').collect();
    let r: Vec<&str> = runc.split('|').collect();
    let only_b: Vec<&str> = b.iter().filter(|i| !r.contains(i)).copied().collect();
    let only_r: Vec<&str> = r.iter().filter(|i| !b.contains(i)).copied().collect();
    if only_b.is_empty() && only_r.is_empty() {
        return format!("same items in another order: bungeo {bungeo:?} | runc {runc:?}");
    }
    format!("only bungeo has {only_b:?}; only runc has {only_r:?}")
}

// ---------------------------------------------------------------------------------------------
// The suite

/// State roots for both runtimes, in one temporary directory.
struct Suite {
    dir: tempfile::TempDir,
    bungeo: std::result::Result<Runtime, String>,
    runc: Runtime,
}

impl Suite {
    fn setup() -> Result<Self> {
        ensure!(
            nix::unistd::geteuid().is_root(),
            "the OCI runtime suite needs root (namespaces, cgroups, mounts)"
        );
        let dir = tempfile::Builder::new()
            .prefix("bungeo-oci-")
            .tempdir()
            .context("suite tempdir")?;
        let runc_bin = std::env::var_os("RUNC_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/sbin/runc"));
        ensure!(
            runc_bin.exists(),
            "runc not found at {} (apt-get install runc, or set RUNC_BIN)",
            runc_bin.display()
        );
        let runc = Runtime {
            which: Which::Runc,
            bin: runc_bin,
            root: dir.path().join("runc"),
        };
        let bungeo = bungeo_bin()
            .map(|bin| Runtime {
                which: Which::Bungeo,
                bin,
                root: dir.path().join("bungeo"),
            })
            .map_err(|e| format!("{e:#}"));
        Ok(Self { dir, bungeo, runc })
    }

    fn runtime(&self, which: Which) -> Result<&Runtime> {
        match which {
            Which::Runc => Ok(&self.runc),
            Which::Bungeo => self.bungeo.as_ref().map_err(|e| anyhow::anyhow!("{e}")),
        }
    }

    fn teardown(&self) {
        for rt in std::iter::once(&self.runc).chain(self.bungeo.as_ref().ok()) {
            // Containers a crashed check left behind.
            if let Ok(entries) = fs::read_dir(&rt.root) {
                for e in entries.filter_map(|e| e.ok()) {
                    let id = e.file_name();
                    let _ = rt.invoke([OsStr::new("delete"), OsStr::new("--force"), &id]);
                }
            }
        }
        if let Err(e) = unmount_under(self.dir.path()) {
            eprintln!("teardown: {e:#}");
        }
        remove_cgroup_parents();
        // The suite outlives main's destructors (process::exit): remove the roots here.
        if let Err(e) = fs::remove_dir_all(self.dir.path()) {
            eprintln!("teardown: remove {}: {e}", self.dir.path().display());
        }
    }
}

/// `BUNGEO_RUNTIME_BIN`, else `bungeo-runtime` in the target directory this test was built in.
fn bungeo_bin() -> Result<PathBuf> {
    let bin = match std::env::var_os("BUNGEO_RUNTIME_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe().context("current_exe")?;
            // target/<profile>/deps/runtime_oci-<hash>
            exe.parent()
                .and_then(Path::parent)
                .map(|profile| profile.join("bungeo-runtime"))
                .context("no target directory above the test binary")?
        }
    };
    ensure!(
        bin.is_file(),
        "bungeo-runtime not found at {} (cargo build -p bungeo-runtime, or set \
         BUNGEO_RUNTIME_BIN)",
        bin.display()
    );
    Ok(bin)
}

type SuiteCell = OnceLock<std::result::Result<Suite, String>>;

fn trial(
    suite: &SuiteCell,
    references: &[OnceLock<std::result::Result<Obs, String>>],
    index: usize,
    which: Which,
    check: Check,
) -> std::result::Result<(), Failed> {
    let suite = suite
        .get_or_init(|| Suite::setup().map_err(|e| format!("suite setup: {e:#}")))
        .as_ref()
        .map_err(|e| Failed::from(e.clone()))?;
    let reference = || {
        references[index].get_or_init(|| (check.observe)(&suite.runc).map_err(|e| format!("{e:#}")))
    };
    let mut problems = Vec::new();
    let mut report = String::new();
    match which {
        Which::Runc => {
            let obs = reference().as_ref().map_err(|e| Failed::from(e.clone()));
            match (obs, check.runc_informational) {
                (Ok(obs), None) => {
                    problems.extend(unmet(obs, check.expect));
                    report.push_str(&format!("  runc observed:\n{}", obs.dump()));
                }
                (obs, Some(why)) => {
                    let seen = match obs {
                        Ok(obs) => {
                            let unmet = unmet(obs, check.expect);
                            format!("unmet: {unmet:?}\n{}", obs.dump())
                        }
                        Err(e) => format!("{e:?}"),
                    };
                    eprintln!("runc::{} (informational: {why}): {seen}", check.name);
                }
                (Err(e), None) => return Err(e),
            }
        }
        Which::Bungeo => {
            let rt = suite
                .runtime(Which::Bungeo)
                .map_err(|e| Failed::from(format!("{e:#}")))?;
            let obs = (check.observe)(rt).map_err(|e| Failed::from(format!("{e:#}")))?;
            problems.extend(
                unmet(&obs, check.expect)
                    .into_iter()
                    .map(|p| format!("bungeo {p}")),
            );
            report.push_str(&format!("  bungeo observed:\n{}", obs.dump()));
            match reference() {
                // runc has the hole itself: its observations are no reference.
                _ if check.runc_informational.is_some() => {}
                Ok(runc) => {
                    problems.extend(
                        differences(&obs, runc)
                            .into_iter()
                            .map(|d| format!("differs from runc: {d}")),
                    );
                    report.push_str(&format!("  runc observed:\n{}", runc.dump()));
                }
                Err(e) => problems.push(format!("the runc reference failed: {e}")),
            }
        }
    }
    if problems.is_empty() {
        // RUNTIME_OCI_SHOW=1 prints what passing trials saw.
        if std::env::var_os("RUNTIME_OCI_SHOW").is_some() {
            eprintln!("{}::{}\n{report}", which.name(), check.name);
        }
        Ok(())
    } else {
        Err(Failed::from(format!(
            "{}\n{report}",
            problems
                .iter()
                .map(|p| format!("- {p}"))
                .collect::<Vec<_>>()
                .join("\n")
        )))
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers for checks

/// A container id unique within the runtime's state root.
fn cid(rt: &Runtime, what: &str) -> String {
    format!("{what}-{}", rt.which.name())
}

/// Runs `PRELUDE + script` with `/bin/sh -c` in a bundle made from `knobs` (whose args are
/// replaced), returning the output and the parsed `key=value` lines plus `exit`.
fn run_script(rt: &Runtime, id: &str, mut knobs: BundleSpec, script: &str) -> Result<(Out, Obs)> {
    knobs.args = vec!["/bin/sh".into(), "-c".into(), format!("{PRELUDE}{script}")];
    let bundle = Bundle::create(&knobs)?;
    run_bundle(rt, id, &bundle)
}

fn run_bundle(rt: &Runtime, id: &str, bundle: &Bundle) -> Result<(Out, Obs)> {
    let _guard = Container {
        rt,
        id: id.to_string(),
    };
    let out = rt.run(bundle, id)?;
    let mut obs = Obs::default();
    obs.lines("", &out.stdout);
    obs.put("exit", out.code());
    if !out.stderr.trim().is_empty() {
        obs.own("stderr", out.stderr.trim_end());
    }
    Ok((out, obs))
}

/// Runs a script and fails unless it exits 0.
fn observe_script(rt: &Runtime, what: &str, knobs: BundleSpec, script: &str) -> Result<Obs> {
    let (out, obs) = run_script(rt, &cid(rt, what), knobs, script)?;
    ensure!(out.success(), "{} run {what}: {out}", rt.which.name());
    Ok(obs)
}

/// Polls `probe` until it is true or [`SETTLE_TIMEOUT`] passes.
fn wait_until(what: &str, mut probe: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while !probe()? {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// `/proc/<pid>/cgroup` as `controllers -> path`, with the bundle's cgroups path replaced by
/// `<cg>` so both runtimes' answers compare.
fn proc_cgroups(pid: i32, bundle: &Bundle) -> Result<BTreeMap<String, String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("read /proc/{pid}/cgroup"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((
                controllers.to_string(),
                path.replace(bundle.cgroups_path(), "<cg>"),
            ))
        })
        .collect())
}

/// A host directory bind-mounted on itself and made shared, so mounts below it propagate.
struct SharedDir {
    dir: tempfile::TempDir,
}

impl SharedDir {
    fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bungeo-prop-")
            .tempdir()
            .context("propagation tempdir")?;
        let p = dir.path();
        mount(Some(p), p, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .with_context(|| format!("bind {} on itself", p.display()))?;
        mount(
            None::<&str>,
            p,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| format!("make {} shared", p.display()))?;
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        if let Err(e) = unmount_under(self.dir.path()) {
            eprintln!("{}: {e:#}", self.dir.path().display());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checks

fn checks() -> Vec<Check> {
    vec![
        check!(
            caps_default,
            &[
                ("CapInh", Is("0000000000000000")),
                ("CapPrm", Is("0000000020000420")),
                ("CapEff", Is("0000000020000420")),
                ("CapBnd", Is("0000000020000420")),
                ("CapAmb", Is("0000000000000000")),
                ("NoNewPrivs", Is("1")),
                ("Seccomp", Is("0")),
            ]
        ),
        check!(
            caps_root_bounding,
            &[
                ("CapBnd", Is("00000000000000a1")),
                ("CapEff", Is("0000000000000020")),
                ("CapPrm", Is("0000000000000020")),
            ]
        ),
        check!(
            caps_root_bounding_nnp_off,
            &[
                ("CapBnd", Is("00000000000000a1")),
                ("CapEff", Is("00000000000000a1")),
                ("CapPrm", Is("00000000000000a1")),
                ("NoNewPrivs", Is("0")),
            ]
        ),
        check!(
            caps_nonroot_ambient,
            &[
                ("Uid", Is("1000 1000 1000 1000")),
                ("CapInh", Is("0000000000082001")),
                ("CapPrm", Is("0000000000082001")),
                ("CapEff", Is("0000000000082001")),
                ("CapBnd", Is("0000000000082001")),
                ("CapAmb", Is("0000000000082001")),
            ]
        ),
        check!(
            caps_nonroot_without_ambient,
            &[
                ("CapEff", Is("0000000000000000")),
                ("CapAmb", Is("0000000000000000"))
            ]
        ),
        check!(no_new_privs_off, &[("NoNewPrivs", Is("0"))]),
        check!(
            user_and_groups,
            &[
                (
                    "id",
                    Is("uid=1000(app) gid=1000(app) groups=2000(extra),3000")
                ),
                ("Uid", Is("1000 1000 1000 1000")),
                ("Gid", Is("1000 1000 1000 1000")),
                ("Groups", Is("2000 3000")),
                ("home", Is("/home/app")),
                ("write_root_owned.rc", NonZero),
            ]
        ),
        check!(
            hostname,
            &[
                ("hostname", Is("bungeo-ctr")),
                ("kernel_hostname", Is("bungeo-ctr")),
            ]
        ),
        check!(
            env_cwd_args,
            &[
                ("foo", Is("bar baz")),
                ("pwd", Is("/tmp")),
                ("arg1", Is("with space")),
                ("path", Is("/bin")),
            ]
        ),
        check!(
            exit_codes,
            &[("exit_3", Is("3")), ("exit_0", Is("0")), ("false", Is("1")),]
        ),
        check!(
            pid_namespace,
            &[
                ("pid", Is("1")),
                ("ppid", Is("0")),
                ("comm1", Is("sh")),
                ("nprocs", Is("1")),
            ]
        ),
        check!(
            cgroup_limits,
            &[
                ("memory.limit_in_bytes", Is("67108864")),
                ("cpu.cfs_quota_us", Is("50000")),
                ("cpu.cfs_period_us", Is("100000")),
                ("cpu.shares", Is("512")),
                ("pids.max", Is("64")),
                ("init_in_memory_cgroup", Is("yes")),
                ("init_in_pids_cgroup", Is("yes")),
                ("cgroup.memory", Is("<cg>")),
                ("cgroup.pids", Is("<cg>")),
                ("cgroup.cpu", Is("<cg>")),
                ("cgroups_after_delete", Is("")),
                ("state_after_delete", Is("")),
            ]
        ),
        check!(
            masked_paths,
            &[
                ("kcore", Is("0")),
                ("keys", Is("0")),
                ("timer_list", Is("0")),
                ("acpi", Is("")),
                ("acpi.rc", Is("0")),
                ("masked_dir", Is("")),
                ("masked_file", Is("")),
                ("unmasked_file", Is("visible")),
            ]
        ),
        check!(
            readonly_root,
            &[
                ("touch_root", Contains("Read-only file system")),
                ("touch_root.rc", NonZero),
                ("touch_tmp", Contains("Read-only file system")),
                ("touch_shm.rc", Is("0")),
            ]
        ),
        check!(
            writable_root,
            &[("touch_root.rc", Is("0")), ("touch_tmp.rc", Is("0"))]
        ),
        check!(
            readonly_paths,
            &[
                ("proc_sys_opts", Contains("ro,")),
                ("proc_sys_write", Contains("Read-only file system")),
                ("etc_write", Contains("Read-only file system")),
                ("root_write.rc", Is("0")),
                ("proc_bus_opts", Contains("ro,")),
            ]
        ),
        check!(
            propagation_rslave,
            &[
                ("host_to_ctr", Is("yes")),
                ("ctr_mount", Is("ok")),
                ("ctr_to_host", Is("no")),
            ]
        ),
        check!(
            propagation_rprivate,
            &[
                ("host_to_ctr", Is("no")),
                ("ctr_mount", Is("ok")),
                ("ctr_to_host", Is("no")),
            ]
        ),
        check!(
            propagation_rshared,
            &[
                ("host_to_ctr", Is("yes")),
                ("ctr_mount", Is("ok")),
                ("ctr_to_host", Is("yes")),
            ]
        ),
        check!(
            sysctls,
            &[
                ("shmmax", Is("123456789")),
                ("ip_forward", Is("1")),
                ("domainname", Is("bungeo.test")),
                ("host_shmmax_unchanged", Is("yes")),
            ]
        ),
        check!(
            rlimits,
            &[
                ("nofile", Is("512")),
                ("nofile_hard", Is("1024")),
                ("limits_nofile", Is("Max open files 512 1024 files")),
                ("limits_core", Is("Max core file size 0 0 bytes")),
                ("limits_nproc", Is("Max processes 300 400 processes")),
            ]
        ),
        check!(
            seccomp_denies_mkdir,
            &[
                ("Seccomp", Is("2")),
                ("mkdir", Contains("Operation not permitted")),
                ("mkdir.rc", NonZero),
                ("touch.rc", Is("0")),
            ]
        ),
        check!(
            bind_mounts,
            &[
                ("hello", Is("hi")),
                ("data_write", Contains("Read-only file system")),
                ("out_write.rc", Is("0")),
                ("host_sees_out", Is("written")),
                ("scratch", Contains("tmpfs")),
                ("data_opts", Contains("ro")),
            ]
        ),
        check!(
            dev_default,
            &[
                ("dev", Contains("null")),
                ("dev", Contains("urandom")),
                ("dev", Contains("pts")),
                ("dev", Contains("shm")),
                ("dev_null_write.rc", Is("0")),
                (
                    "dev_stat",
                    Contains("/dev/null character special file 666 1:3")
                ),
            ]
        ),
        check!(
            mount_table,
            &[
                ("mounts", Contains("/proc proc")),
                ("mounts", Contains("/dev tmpfs")),
                ("mounts", Contains("/dev/pts devpts")),
                ("mounts", Contains("/dev/shm tmpfs")),
                ("mounts", Contains("/dev/mqueue mqueue")),
                ("mounts", Contains("/sys sysfs")),
            ]
        ),
        check!(
            lifecycle,
            &[
                ("status_created", Is("created")),
                ("exe_before_start_is_busybox", Is("no")),
                ("pid_file_matches_state", Is("yes")),
                ("state_id", Is("yes")),
                ("state_bundle", Is("yes")),
                ("status_started", Is("running")),
                ("exe_after_start_is_busybox", Is("yes")),
                ("delete_running_refused", Is("yes")),
                ("create_duplicate_refused", Is("yes")),
                ("status_killed", Is("stopped")),
                ("delete.rc", Is("0")),
                ("state_after_delete_refused", Is("yes")),
                ("state_dir_after_delete", Is("")),
                ("cgroups_after_delete", Is("")),
                ("state_unknown_refused", Is("yes")),
            ]
        ),
        check!(
            kill_signal,
            &[
                ("signal_seen", Is("got=TERM")),
                ("status_after", Is("stopped"))
            ]
        ),
        check!(
            kill_all,
            &[("procs_before", NonZero), ("procs_after", Is("0"))]
        ),
        check!(
            delete_force_running,
            &[
                ("delete.rc", Is("0")),
                ("init_gone", Is("yes")),
                ("state_dir_after_delete", Is("")),
                ("cgroups_after_delete", Is("")),
            ]
        ),
        check!(
            exec_joins_container,
            &[
                ("exec.ns_ipc", Is("same")),
                ("exec.ns_mnt", Is("same")),
                ("exec.ns_net", Is("same")),
                ("exec.ns_pid", Is("same")),
                ("exec.ns_uts", Is("same")),
                ("exec.cgroup", Is("same")),
                ("exec.hostname", Is("exec-host")),
                ("exec.CapEff", Is("0000000020000420")),
                ("exec.NoNewPrivs", Is("1")),
                ("exec_exit", Is("7")),
                (
                    "process_json",
                    Is("uid=1000 gid=1000 cwd=/tmp env=from-json")
                ),
                ("exec_missing", Contains("no-such-cmd")),
                ("exec_missing.rc", NonZero),
                ("detached_ran", Is("yes")),
                ("ps_lists_init", Is("yes")),
            ]
        ),
        check!(
            missing_command,
            &[
                ("abs.exit", NonZero),
                ("abs.stderr", Contains("/bin/no-such-cmd")),
                ("abs.stderr", Lacks("panicked")),
                ("rel.exit", NonZero),
                ("rel.stderr", Contains("no-such-cmd")),
                ("state_dir_after", Is("")),
                ("cgroups_after", Is("")),
            ]
        ),
        check!(
            log_json,
            &[
                ("exit", NonZero),
                ("log_lines_are_json", Is("yes")),
                ("log_names_command", Is("yes")),
            ]
        ),
        check!(
            systemd_cgroup_unavailable,
            &[
                ("exit", NonZero),
                ("stderr", Contains("systemd")),
                ("stderr", Lacks("panicked")),
                ("state_dir_after", Is("")),
            ]
        ),
        check!(
            exec_cannot_reach_runtime_binary,
            &[
                ("exec_exe_is_host_binary", Is("no")),
                ("exec_dir_fds", Is("")),
                ("pid1.held", Is("no")),
                ("pid1.readlink", Is("denied")),
                ("pid1.write", Is("nothing-held")),
                ("binary_unchanged", Is("yes")),
            ],
            runc_informational: RUNC_EXE_IS_HOST_INODE
        ),
        check!(
            exec_cwd_through_fds_stays_inside,
            &[
                ("outside", Is("")),
                ("preserved_host_dir.control", Is("inside")),
                ("preserved_host_dir", Is("refused")),
            ],
            runc_informational: RUNC_LEAKS_CGROUP_FD
        ),
        check!(
            created_init_holds_no_host_fds,
            &[
                ("host_view.dir_fds", Is("")),
                ("host_view.foreign_fds", Is("")),
                ("neighbour.fd_links", Is("0")),
                ("neighbour.exe", Is("denied")),
                ("neighbour.reached", Is("")),
            ],
            runc_informational: RUNC_INIT_DUMPABLE
        ),
        check!(
            spec_default,
            &[
                ("args", Is("[\"sh\"]")),
                ("namespaces", Contains("mount")),
                ("namespaces", Contains("pid")),
                ("root", Is("rootfs")),
            ]
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Escapes through the processes that join a container (tracker #20, items 1 and 2)

/// runc 1.1.5 runs `runc init` from a read-only bind mount of its binary (the host's inode)
/// rather than a copy: a write through it fails, but the link reaches the host file.
const RUNC_EXE_IS_HOST_INODE: &str =
    "runc 1.1.5 runs runc init from a read-only bind mount of the host binary, not a copy";

/// Upstream runc 1.1.5 leaks a host cgroup directory fd into `runc init` (CVE-2024-21626,
/// fixed in 1.1.12; Debian's 1.1.5+ds1-1+deb12u1 carries the fix).
const RUNC_LEAKS_CGROUP_FD: &str = "upstream runc 1.1.5 leaks a host cgroup directory fd into \
     runc init (CVE-2024-21626, fixed in 1.1.12)";

/// runc 1.1.5's init is dumpable while it waits for `start` (and upstream 1.1.5 leaks the
/// cgroup fd there too).
const RUNC_INIT_DUMPABLE: &str = "runc 1.1.5's created init is dumpable while it waits for \
     start; upstream 1.1.5 also leaks a host cgroup directory fd there (CVE-2024-21626)";

/// The pids under `/proc` whose pid namespace is `pid`'s, but not `pid` itself.
fn pid_namespace_peers(pid: i32) -> Result<Vec<i32>> {
    let ns = fs::read_link(format!("/proc/{pid}/ns/pid"))
        .with_context(|| format!("read /proc/{pid}/ns/pid"))?;
    Ok(fs::read_dir("/proc")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| *p != pid)
        .filter(|p| fs::read_link(format!("/proc/{p}/ns/pid")).is_ok_and(|n| n == ns))
        .collect())
}

/// Whether some thread of `pid` waits in `open` of a fifo for the other end (its wait
/// channel, or where the kernel hides symbols, a blocked `openat`).
fn blocked_on_fifo(pid: i32) -> bool {
    let blocked = |task: &Path| match fs::read_to_string(task.join("wchan")) {
        Ok(w) if w != "0" && !w.is_empty() => w == "wait_for_partner",
        _ => fs::read_to_string(task.join("syscall"))
            .is_ok_and(|s| s.split_whitespace().next() == Some("257")),
    };
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| tasks.filter_map(|t| t.ok()).any(|t| blocked(&t.path())))
        .unwrap_or(false)
}

/// `pid`'s pid in the innermost pid namespace it is in (the last `NSpid` field).
fn inner_pid(pid: i32) -> Result<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|l| l.split_whitespace().last())
        .map(String::from)
        .with_context(|| format!("no NSpid in /proc/{pid}/status"))
}

/// The fds `pid` holds, as seen from the host: `(directories, others)` besides stdio, each
/// `N:target`; the targets are shortened to what identifies them (a file name, `socket`).
fn open_fds(pid: i32) -> Result<(Vec<String>, Vec<String>)> {
    let dir = format!("/proc/{pid}/fd");
    let mut fds: Vec<i32> = fs::read_dir(&dir)
        .with_context(|| format!("list {dir}"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    fds.sort_unstable();
    let (mut dirs, mut others) = (Vec::new(), Vec::new());
    for fd in fds {
        let path = format!("{dir}/{fd}");
        let Ok(target) = fs::read_link(&path) else {
            continue;
        };
        let target = target.display().to_string();
        if fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            dirs.push(format!("{fd}:{target}"));
        } else {
            others.push(format!("{fd}:{target}"));
        }
    }
    Ok((dirs, others))
}

/// Whether an fd target (see [`open_fds`]) is something a container process may hold while
/// it sets up: the start barrier, a pipe or socket to the runtime, an anonymous inode.
fn container_owned(target: &str) -> bool {
    let t = target.split_once(':').map_or(target, |(_, t)| t);
    t.ends_with("/exec.fifo")
        || t.starts_with("pipe:")
        || t.starts_with("socket:")
        || t.starts_with("anon_inode:")
}

/// Writes `text` to the fifo `path` once its reader has opened it.
fn write_fifo(path: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut writer = None;
    wait_until(
        &format!("a reader of {}", path.display()),
        || match fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => {
                writer = Some(f);
                Ok(true)
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("open {}", path.display())),
        },
    )?;
    let mut f = writer.context("no writer")?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

fn mkfifo(path: &Path) -> Result<()> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o666))
        .with_context(|| format!("mkfifo {}", path.display()))
}

/// A runtime command running in the background; killed and reaped if still running on drop.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the container's PID 1 does to an exec'd process that still runs the runtime: it holds
/// its `/proc/<pid>/exe` (told the pid on `/ctl`), and once the exec is over and nothing runs
/// the binary any more (told on `/ctl` again), writes through what it holds (CVE-2019-5736).
const EXE_ATTACK: &str = r#"read pid < /ctl
if (exec 3< /proc/$pid/exe) 2>/dev/null; then exec 3< /proc/$pid/exe; held=yes; else held=no; fi
echo "held=$held" > /result
echo "readlink=$(readlink /proc/$pid/exe >/dev/null 2>&1 && echo allowed || echo denied)" >> /result
touch /done1
read go < /ctl
w=nothing-held
if [ $held = yes ]; then
  if (echo pwned > /proc/self/fd/3) 2>/dev/null; then w=wrote; else w=refused; fi
fi
echo "write=$w" >> /result
touch /done2
exec sleep 300
"#;

/// Item 1 (and 2b): an exec'd process, caught before its execve (it reads the container's
/// `/etc/passwd`, a fifo here, to find `$HOME`), must not run the host's runtime binary, must
/// not be reachable by the container's PID 1 (non-dumpable), and must hold no host directory.
/// The runtime runs from a copy, so a hole corrupts the copy only.
fn exec_cannot_reach_runtime_binary(rt: &Runtime) -> Result<Obs> {
    use std::os::unix::fs::MetadataExt as _;
    let knobs = BundleSpec {
        readonly_root: false,
        env: vec!["PATH=/bin".into(), "HOME=/root".into()],
        ..BundleSpec::sh(EXE_ATTACK)
    };
    let bundle = Bundle::create(&knobs)?;
    let rootfs = bundle.rootfs();
    mkfifo(&rootfs.join("ctl"))?;
    let copies = tempfile::Builder::new()
        .prefix("bungeo-runtime-copy-")
        .tempdir()?;
    let copy = copies
        .path()
        .join(rt.bin.file_name().context("runtime file name")?);
    fs::copy(&rt.bin, &copy).context("copy the runtime binary")?;
    let original = fs::read(&copy)?;
    let copied = Runtime {
        which: rt.which,
        bin: copy.clone(),
        root: rt.root.clone(),
    };
    let id = cid(rt, "exe-attack");
    let ctr = rt.create(&bundle, &id)?;
    ctr.start()?;
    let init = rt.pid(&id)?;

    let passwd = rootfs.join("etc/passwd");
    fs::remove_file(&passwd)?;
    mkfifo(&passwd)?;
    let process = BundleSpec {
        args: vec!["/bin/true".into()],
        env: vec!["PATH=/bin".into()],
        ..BundleSpec::default()
    }
    .process()?;
    let process_file = bundle.write_process("exec.json", &process)?;
    let mut cmd = copied.command([
        OsStr::new("exec"),
        OsStr::new("--process"),
        process_file.as_os_str(),
        OsStr::new(&id),
    ]);
    let mut exec = Background(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start exec")?,
    );
    let mut child = 0;
    wait_until("the exec'd process to block on /etc/passwd", || {
        child = pid_namespace_peers(init)?
            .into_iter()
            .find(|p| blocked_on_fifo(*p))
            .unwrap_or(0);
        Ok(child != 0)
    })?;

    let mut obs = Obs::default();
    let host = fs::metadata(&copy)?;
    let exe = fs::metadata(format!("/proc/{child}/exe"));
    let is_host = exe.is_ok_and(|m| (m.dev(), m.ino()) == (host.dev(), host.ino()));
    obs.put("exec_exe_is_host_binary", yes(is_host));
    let (dirs, others) = open_fds(child)?;
    obs.put("exec_dir_fds", dirs.join(" "));
    obs.own("exec_fds", others.join(" "));

    write_fifo(&rootfs.join("ctl"), &format!("{}\n", inner_pid(child)?))?;
    wait_until("the container's PID 1 to try the exec'd process", || {
        Ok(rootfs.join("done1").exists())
    })?;
    write_fifo(&passwd, bungeo_tests::bundle::PASSWD)?;
    let status = wait_child(&mut exec.0, COMMAND_TIMEOUT)?;
    obs.own("exec_status", status);
    write_fifo(&rootfs.join("ctl"), "go\n")?;
    wait_until("the container's PID 1 to write", || {
        Ok(rootfs.join("done2").exists())
    })?;
    obs.lines("pid1.", &fs::read_to_string(rootfs.join("result"))?);
    obs.put("binary_unchanged", yes(fs::read(&copy)? == original));
    drop(ctr);
    Ok(obs)
}

/// Item 2a: `exec --cwd /proc/self/fd/N` must fail or land inside the container, for every N
/// a runtime might hold open. Inside means walking `..` up from the cwd reaches the
/// container's `/` (outside, it ends at the host's root instead).
fn exec_cwd_through_fds_stays_inside(rt: &Runtime) -> Result<Obs> {
    let bundle = Bundle::create(&BundleSpec::command(&["/bin/sleep", "300"]))?;
    let id = cid(rt, "cwd-fd");
    let ctr = rt.create(&bundle, &id)?;
    ctr.start()?;
    let ups: Vec<String> = (0..24)
        .map(|n| {
            std::iter::once(".")
                .chain(std::iter::repeat_n("..", n))
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect();
    let (mut outside, mut refused, mut inside) = (Vec::new(), 0, 0);
    for n in 3..=24 {
        let cwd = format!("/proc/self/fd/{n}");
        let mut args = vec![
            "exec",
            "--cwd",
            cwd.as_str(),
            id.as_str(),
            "/bin/stat",
            "-c",
            "%d:%i",
            "/",
        ];
        args.extend(ups.iter().map(String::as_str));
        let out = rt.invoke(args)?;
        if !out.success() {
            refused += 1;
            continue;
        }
        let mut lines = out.stdout.lines();
        let root = lines.next().unwrap_or_default();
        if lines.any(|l| l == root) {
            inside += 1;
        } else {
            outside.push(n.to_string());
        }
    }
    // A host directory handed over on purpose (--preserve-fds) is open whatever the runtime
    // closes: only the check of the cwd after chdir stops this one.
    let host_dir = tempfile::tempdir()?;
    let with_host_dir = |cwd: &str| -> Result<(&'static str, Out)> {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "exec 3<\"$0\"; exec \"$@\""])
            .arg(host_dir.path())
            .arg(&rt.bin)
            .arg("--root")
            .arg(&rt.root)
            .args(["exec", "--preserve-fds", "1", "--cwd", cwd, id.as_str()])
            .args(["/bin/stat", "-c", "%d:%i", "/"])
            .args(&ups);
        let out = output(cmd, COMMAND_TIMEOUT)?;
        let mut lines = out.stdout.lines();
        let root = lines.next().unwrap_or_default();
        let at = match (out.success(), lines.any(|l| l == root)) {
            (false, _) => "refused",
            (true, true) => "inside",
            (true, false) => "outside",
        };
        Ok((at, out))
    };
    // The same command with a cwd inside shows the fd handed over is no obstacle.
    let (control, _) = with_host_dir("/")?;
    let (preserved, out) = with_host_dir("/proc/self/fd/3")?;
    let mut obs = Obs::default();
    obs.put("outside", outside.join(" "));
    obs.own("refused", refused);
    obs.own("inside", inside);
    obs.put("preserved_host_dir.control", control);
    obs.put("preserved_host_dir", preserved);
    obs.own("preserved_host_dir.stderr", out.stderr.trim());
    Ok(obs)
}

/// Items 2b and 2c: a created, not started init holds no host directory (seen from the
/// host), and a container sharing its pid namespace can neither list its fds nor climb out
/// through them, nor read its exe.
fn created_init_holds_no_host_fds(rt: &Runtime) -> Result<Obs> {
    use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType};
    let bundle = Bundle::create(&BundleSpec::command(&["/bin/sleep", "300"]))?;
    let id = cid(rt, "created-fds");
    let _ctr = rt.create(&bundle, &id)?;
    let init = rt.pid(&id)?;
    let mut obs = Obs::default();
    let (dirs, others) = open_fds(init)?;
    obs.put("host_view.dir_fds", dirs.join(" "));
    let foreign: Vec<&String> = others.iter().filter(|t| !container_owned(t)).collect();
    obs.put(
        "host_view.foreign_fds",
        foreign
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    );
    obs.own("host_view.fds", others.join(" "));

    let neighbour = BundleSpec::sh(
        "links=0; reached=\n\
         for n in $(ls /proc/1/fd); do\n\
           readlink /proc/1/fd/$n >/dev/null 2>&1 && links=$((links + 1))\n\
           ls /proc/1/fd/$n/.. >/dev/null 2>&1 && reached=\"$reached $n\"\n\
         done\n\
         echo fd_links=$links; echo reached=$reached\n\
         readlink /proc/1/exe >/dev/null 2>&1 && echo exe=allowed || echo exe=denied\n",
    );
    let mut nb = Bundle::create(&neighbour)?;
    let mut spec = nb.spec().clone();
    if let Some(linux) = spec.linux_mut() {
        let mut nss = linux.namespaces().clone().unwrap_or_default();
        nss.retain(|n| n.typ() != LinuxNamespaceType::Pid);
        nss.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Pid)
                .path(format!("/proc/{init}/ns/pid"))
                .build()?,
        );
        linux.set_namespaces(Some(nss));
    }
    nb.set_spec(spec)?;
    let (out, seen) = run_bundle(rt, &cid(rt, "created-fds-peer"), &nb)?;
    ensure!(out.success(), "the neighbour container: {out}");
    for key in ["fd_links", "exe", "reached"] {
        obs.put(
            format!("neighbour.{key}"),
            seen.get(key).unwrap_or("(absent)"),
        );
    }
    Ok(obs)
}

const STATUS: &str = "status\n";

fn caps_default(rt: &Runtime) -> Result<Obs> {
    observe_script(rt, "caps-default", BundleSpec::default(), STATUS)
}

/// Bounding CHOWN, KILL, SETUID; effective and permitted KILL only.
fn narrow_root_caps() -> Caps {
    Caps {
        bounding: Some(vec![
            Capability::Chown,
            Capability::Kill,
            Capability::Setuid,
        ]),
        effective: Some(vec![Capability::Kill]),
        permitted: Some(vec![Capability::Kill]),
        inheritable: None,
        ambient: None,
    }
}

fn caps_root_bounding(rt: &Runtime) -> Result<Obs> {
    // no_new_privs stops root from gaining its bounding set across exec: it keeps permitted.
    let knobs = BundleSpec {
        caps: narrow_root_caps(),
        ..BundleSpec::default()
    };
    observe_script(rt, "caps-bounding", knobs, STATUS)
}

fn caps_root_bounding_nnp_off(rt: &Runtime) -> Result<Obs> {
    // Without no_new_privs, exec gives root its whole bounding set whatever effective says.
    let knobs = BundleSpec {
        caps: narrow_root_caps(),
        no_new_privileges: false,
        ..BundleSpec::default()
    };
    observe_script(rt, "caps-bounding-nnp", knobs, STATUS)
}

fn caps_nonroot_ambient(rt: &Runtime) -> Result<Obs> {
    let knobs = BundleSpec {
        uid: 1000,
        gid: 1000,
        caps: Caps::all_sets(&[Capability::Chown, Capability::NetRaw, Capability::SysPtrace]),
        ..BundleSpec::default()
    };
    observe_script(rt, "caps-ambient", knobs, STATUS)
}

fn caps_nonroot_without_ambient(rt: &Runtime) -> Result<Obs> {
    let mut caps = Caps::all_sets(DEFAULT_CAPS);
    caps.ambient = None;
    let knobs = BundleSpec {
        uid: 1000,
        gid: 1000,
        caps,
        ..BundleSpec::default()
    };
    observe_script(rt, "caps-noamb", knobs, STATUS)
}

fn no_new_privs_off(rt: &Runtime) -> Result<Obs> {
    let knobs = BundleSpec {
        no_new_privileges: false,
        ..BundleSpec::default()
    };
    observe_script(rt, "nnp-off", knobs, STATUS)
}

fn user_and_groups(rt: &Runtime) -> Result<Obs> {
    let knobs = BundleSpec {
        uid: 1000,
        gid: 1000,
        additional_gids: vec![2000, 3000],
        readonly_root: false,
        ..BundleSpec::default()
    };
    observe_script(
        rt,
        "user",
        knobs,
        "status\necho id=$(id)\necho home=$HOME\no write_root_owned touch /root/x\n",
    )
}

fn hostname(rt: &Runtime) -> Result<Obs> {
    let knobs = BundleSpec {
        hostname: "bungeo-ctr".into(),
        ..BundleSpec::default()
    };
    observe_script(
        rt,
        "hostname",
        knobs,
        "echo hostname=$(hostname)\necho kernel_hostname=$(cat /proc/sys/kernel/hostname)\n",
    )
}

fn env_cwd_args(rt: &Runtime) -> Result<Obs> {
    let knobs = BundleSpec {
        env: vec!["FOO=bar baz".into(), "PATH=/bin".into()],
        cwd: "/tmp".into(),
        args: [
            "/bin/sh",
            "-c",
            "echo \"foo=$FOO\"; echo pwd=$(pwd); echo \"arg1=$1\"; echo path=$PATH",
            "sh",
            "with space",
        ]
        .map(String::from)
        .to_vec(),
        ..BundleSpec::default()
    };
    let bundle = Bundle::create(&knobs)?;
    let (out, obs) = run_bundle(rt, &cid(rt, "env"), &bundle)?;
    ensure!(out.success(), "run: {out}");
    Ok(obs)
}

fn exit_codes(rt: &Runtime) -> Result<Obs> {
    let mut obs = Obs::default();
    for (key, args) in [
        ("exit_3", vec!["/bin/sh", "-c", "exit 3"]),
        ("exit_0", vec!["/bin/sh", "-c", "exit 0"]),
        ("false", vec!["/bin/false"]),
    ] {
        let bundle = Bundle::create(&BundleSpec::command(&args))?;
        let out = {
            let id = cid(rt, &key.replace('_', "-"));
            let _guard = Container { rt, id: id.clone() };
            rt.run(&bundle, &id)?
        };
        obs.put(key, out.code());
    }
    Ok(obs)
}

fn pid_namespace(rt: &Runtime) -> Result<Obs> {
    observe_script(
        rt,
        "pidns",
        BundleSpec::default(),
        "set -- /proc/[0-9]*\necho nprocs=$#\necho pid=$$\necho ppid=$PPID\necho comm1=$(cat /proc/1/comm)\n",
    )
}

fn cgroup_limits(rt: &Runtime) -> Result<Obs> {
    let knobs = BundleSpec {
        args: vec!["/bin/sleep".into(), "300".into()],
        resources: Resources {
            memory_limit: Some(64 << 20),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            cpu_shares: Some(512),
            pids_limit: Some(64),
        },
        ..BundleSpec::default()
    };
    let bundle = Bundle::create(&knobs)?;
    let id = cid(rt, "cgroups");
    let mut obs = Obs::default();
    {
        let ctr = rt.create(&bundle, &id)?;
        ctr.start()?;
        let pid = rt.pid(&id)?;
        for (mount, file) in [
            ("memory", "memory.limit_in_bytes"),
            ("cpu", "cpu.cfs_quota_us"),
            ("cpu", "cpu.cfs_period_us"),
            ("cpu", "cpu.shares"),
            ("pids", "pids.max"),
        ] {
            let path = bundle.cgroup_dir(mount).join(file);
            let value = fs::read_to_string(&path)
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|e| format!("({}: {e})", path.display()));
            obs.put(file, value);
        }
        for mount in ["memory", "pids"] {
            let procs = fs::read_to_string(bundle.cgroup_dir(mount).join("cgroup.procs"))
                .unwrap_or_default();
            let found = procs.lines().any(|l| l.trim() == pid.to_string());
            obs.put(format!("init_in_{mount}_cgroup"), yes(found));
        }
        for (controllers, path) in proc_cgroups(pid, &bundle)? {
            match controllers.as_str() {
                "" => obs.put("cgroup.unified", path),
                // A named hierarchy without controllers: bookkeeping, not isolation.
                c if c.starts_with("name=") => obs.own(format!("cgroup.{c}"), path),
                c => obs.put(format!("cgroup.{c}"), path),
            }
        }
        rt.must(["kill", id.as_str(), "KILL"])?;
        obs.put("status_killed", rt.wait_status(&id, "stopped")?);
        rt.must(["delete", id.as_str()])?;
    }
    obs.put(
        "cgroups_after_delete",
        dirs_list(&bundle.existing_cgroup_dirs()),
    );
    obs.put("state_after_delete", rt.state_entries(&id).join(","));
    Ok(obs)
}

fn dirs_list(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn masked_paths(rt: &Runtime) -> Result<Obs> {
    let mut knobs = BundleSpec::default();
    knobs.masked_paths.push("/masked".into());
    knobs.masked_paths.push("/etc/secret.txt".into());
    knobs.args = vec![
        "/bin/sh".into(),
        "-c".into(),
        format!(
            "{PRELUDE}echo kcore=$(cat /proc/kcore | wc -c)\n\
             echo keys=$(cat /proc/keys | wc -c)\n\
             echo timer_list=$(cat /proc/timer_list | wc -c)\n\
             o acpi ls -A /proc/acpi\n\
             o firmware ls -A /sys/firmware\n\
             o masked_dir ls -A /masked\n\
             o masked_file cat /etc/secret.txt\n\
             o unmasked_file cat /etc/visible.txt\n"
        ),
    ];
    let bundle = Bundle::create(&knobs)?;
    let root = bundle.rootfs();
    fs::create_dir_all(root.join("masked"))?;
    fs::write(root.join("masked/secret"), "secret")?;
    fs::write(root.join("etc/secret.txt"), "secret")?;
    fs::write(root.join("etc/visible.txt"), "visible")?;
    let (out, mut obs) = run_bundle(rt, &cid(rt, "masked"), &bundle)?;
    ensure!(out.success(), "run: {out}");
    // Kernels without /proc/kcore (this VM's) make its check vacuous; keys and timer_list
    // exist and carry the masking check.
    obs.own("host_has_kcore", yes(Path::new("/proc/kcore").exists()));
    Ok(obs)
}

const TOUCHES: &str =
    "o touch_root touch /x\no touch_tmp touch /tmp/x\no touch_shm touch /dev/shm/x\n";

fn readonly_root(rt: &Runtime) -> Result<Obs> {
    observe_script(rt, "ro-root", BundleSpec::default(), TOUCHES)
}

fn writable_root(rt: &Runtime) -> Result<Obs> {
    let knobs = BundleSpec {
        readonly_root: false,
        ..BundleSpec::default()
    };
    observe_script(rt, "rw-root", knobs, TOUCHES)
}

fn readonly_paths(rt: &Runtime) -> Result<Obs> {
    let mut knobs = BundleSpec {
        readonly_root: false,
        ..BundleSpec::default()
    };
    knobs.readonly_paths.push("/etc".into());
    observe_script(
        rt,
        "ro-paths",
        knobs,
        "echo proc_sys_opts=$(grep ' /proc/sys ' /proc/self/mounts | cut -d' ' -f4)\n\
         echo proc_bus_opts=$(grep ' /proc/bus ' /proc/self/mounts | cut -d' ' -f4)\n\
         o proc_sys_write sh -c 'echo x > /proc/sys/kernel/domainname'\n\
         o etc_write touch /etc/x\n\
         o root_write touch /x\n",
    )
}

/// Host mounts a tmpfs under a shared directory after the container started; the container
/// mounts one too; who sees what depends on the bind's propagation.
fn propagation(rt: &Runtime, what: &str, flag: &str, rootfs: Option<&str>) -> Result<Obs> {
    let shared = SharedDir::new()?;
    let src = shared.path();
    fs::create_dir(src.join("sub"))?;
    fs::create_dir(src.join("fromctr"))?;
    let mut caps = DEFAULT_CAPS.to_vec();
    caps.push(Capability::SysAdmin);
    let mut knobs = BundleSpec {
        caps: Caps::all_sets(&caps),
        rootfs_propagation: rootfs.map(String::from),
        ..BundleSpec::default()
    };
    knobs.mounts.push(bind(src, "/mnt/prop", &[flag])?);
    knobs.args = vec![
        "/bin/sh".into(),
        "-c".into(),
        "touch /mnt/prop/ready\n\
         while [ ! -e /mnt/prop/go ]; do sleep 0.02; done\n\
         if [ -e /mnt/prop/sub/marker ]; then echo host_to_ctr=yes; else echo host_to_ctr=no; fi\n\
         if mount -t tmpfs ctrfs /mnt/prop/fromctr; then echo ctr_mount=ok; else echo ctr_mount=failed; fi\n\
         touch /mnt/prop/mounted\n\
         while [ ! -e /mnt/prop/finish ]; do sleep 0.02; done\n"
            .into(),
    ];
    let bundle = Bundle::create(&knobs)?;
    let id = cid(rt, what);
    let _guard = Container { rt, id: id.clone() };
    let log = bundle.path().join("run.out");
    let mut child = rt
        .command([
            OsStr::new("run"),
            OsStr::new("--bundle"),
            bundle.path().as_os_str(),
            OsStr::new(&id),
        ])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log)?)
        .stderr(fs::File::create(bundle.path().join("run.err"))?)
        .spawn()
        .context("start run")?;
    let result = (|| -> Result<Obs> {
        let mut obs = Obs::default();
        let alive = |child: &mut Child, file: &str| -> Result<bool> {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "container exited ({status}) before {file}: {}",
                    fs::read_to_string(bundle.path().join("run.err")).unwrap_or_default()
                );
            }
            Ok(src.join(file).exists())
        };
        wait_until("the container to start", || alive(&mut child, "ready"))?;
        mount(
            Some("hostfs"),
            &src.join("sub"),
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .context("mount tmpfs on the host")?;
        fs::write(src.join("sub/marker"), "host")?;
        fs::write(src.join("go"), "")?;
        wait_until("the container's mount", || alive(&mut child, "mounted"))?;
        let host_sees = mounts_under(src)?.iter().any(|m| m.ends_with("fromctr"));
        obs.put("ctr_to_host", yes(host_sees));
        fs::write(src.join("finish"), "")?;
        let status = wait_child(&mut child, COMMAND_TIMEOUT)?;
        obs.put("exit", status.code().unwrap_or(-1));
        obs.lines("", &fs::read_to_string(&log)?);
        Ok(obs)
    })();
    if result.is_err() {
        let _ = fs::write(src.join("finish"), "");
        let _ = wait_child(&mut child, Duration::from_secs(5));
    }
    result
}

fn propagation_rslave(rt: &Runtime) -> Result<Obs> {
    propagation(rt, "prop-rslave", "rslave", None)
}

fn propagation_rprivate(rt: &Runtime) -> Result<Obs> {
    propagation(rt, "prop-rprivate", "rprivate", None)
}

fn propagation_rshared(rt: &Runtime) -> Result<Obs> {
    propagation(rt, "prop-rshared", "rshared", Some("rshared"))
}

fn sysctls(rt: &Runtime) -> Result<Obs> {
    let host_before = fs::read_to_string("/proc/sys/kernel/shmmax")?;
    let mut knobs = BundleSpec::default();
    for (k, v) in [
        ("kernel.shmmax", "123456789"),
        ("net.ipv4.ip_forward", "1"),
        ("kernel.domainname", "bungeo.test"),
    ] {
        knobs.sysctls.insert(k.into(), v.into());
    }
    let mut obs = observe_script(
        rt,
        "sysctl",
        knobs,
        "echo shmmax=$(cat /proc/sys/kernel/shmmax)\n\
         echo ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)\n\
         echo domainname=$(cat /proc/sys/kernel/domainname)\n",
    )?;
    let host_after = fs::read_to_string("/proc/sys/kernel/shmmax")?;
    obs.put("host_shmmax_unchanged", yes(host_before == host_after));
    Ok(obs)
}

fn rlimits(rt: &Runtime) -> Result<Obs> {
    let knobs = BundleSpec {
        rlimits: vec![
            rlimit(PosixRlimitType::RlimitNofile, 512, 1024),
            rlimit(PosixRlimitType::RlimitCore, 0, 0),
            rlimit(PosixRlimitType::RlimitNproc, 300, 400),
        ],
        ..BundleSpec::default()
    };
    observe_script(
        rt,
        "rlimits",
        knobs,
        "echo nofile=$(ulimit -n)\necho nofile_hard=$(ulimit -Hn)\n\
         echo limits_nofile=$(grep 'Max open files' /proc/self/limits | tr -s ' ')\n\
         echo limits_core=$(grep 'Max core file size' /proc/self/limits | tr -s ' ')\n\
         echo limits_nproc=$(grep 'Max processes' /proc/self/limits | tr -s ' ')\n",
    )
}

fn seccomp_denies_mkdir(rt: &Runtime) -> Result<Obs> {
    let knobs = BundleSpec {
        readonly_root: false,
        seccomp: Some(seccomp_deny(&["mkdir", "mkdirat"], libc::EPERM as u32)?),
        ..BundleSpec::default()
    };
    observe_script(
        rt,
        "seccomp",
        knobs,
        "status\no mkdir mkdir /tmp/d\no touch touch /tmp/f\n",
    )
}

fn bind_mounts(rt: &Runtime) -> Result<Obs> {
    let host = tempfile::Builder::new().prefix("bungeo-binds-").tempdir()?;
    let data = host.path().join("data");
    let out = host.path().join("out");
    fs::create_dir(&data)?;
    fs::create_dir(&out)?;
    fs::write(data.join("hello"), "hi")?;
    let mut knobs = BundleSpec::default();
    knobs.mounts.push(bind(&data, "/data", &["ro"])?);
    knobs.mounts.push(bind(&out, "/out", &["rw"])?);
    knobs
        .mounts
        .push(tmpfs("/scratch", &["nosuid", "size=1m"])?);
    let mut obs = observe_script(
        rt,
        "binds",
        knobs,
        "o hello cat /data/hello\n\
         o data_write touch /data/x\n\
         o out_write sh -c 'echo written > /out/file'\n\
         echo scratch=$(grep ' /scratch ' /proc/self/mounts | cut -d' ' -f3,4)\n\
         echo data_opts=$(grep ' /data ' /proc/self/mounts | cut -d' ' -f4)\n",
    )?;
    obs.put(
        "host_sees_out",
        fs::read_to_string(out.join("file"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| format!("({e})")),
    );
    Ok(obs)
}

fn dev_default(rt: &Runtime) -> Result<Obs> {
    observe_script(
        rt,
        "dev",
        BundleSpec::default(),
        "o dev ls -A /dev\n\
         o dev_stat sh -c 'stat -c \"%n %F %a %t:%T\" /dev/* | sort'\n\
         o dev_null_write sh -c 'echo x > /dev/null'\n\
         o dev_shm_opts sh -c \"grep ' /dev/shm ' /proc/self/mounts | cut -d' ' -f4\"\n",
    )
}

fn mount_table(rt: &Runtime) -> Result<Obs> {
    let mut obs = observe_script(
        rt,
        "mounts",
        BundleSpec::default(),
        "o mounts sh -c \"cut -d' ' -f2,3,4 /proc/self/mounts\"\n",
    )?;
    if rt.which == Which::Bungeo {
        let mounts = obs.get("mounts").context("no mount table observed")?;
        let compared = cgroup_tmpfs_as_runc(mounts)?;
        obs.put("mounts", compared);
    }
    Ok(obs)
}

/// The container's `/sys/fs/cgroup` tmpfs as `cut -d' ' -f2,3,4 /proc/self/mounts` shows it.
const CGROUP_TMPFS: &str = "/sys/fs/cgroup tmpfs ";

/// The one deliberate difference from runc 1.1.5 in the mount table: bungeo makes the
/// `/sys/fs/cgroup` tmpfs read-only, as the spec's `ro` on that mount asks, where runc leaves
/// the tmpfs writable (only the hierarchies bound into it are read-only), which would let the
/// container shadow hierarchies with directories and files of its own. So bungeo's entry must
/// say `ro` and is compared as runc's `rw`; every other entry, and every other option of this
/// one, must still match runc's.
fn cgroup_tmpfs_as_runc(mounts: &str) -> Result<String> {
    let mut found = 0;
    let mut items = Vec::new();
    for item in mounts.split('|') {
        let Some(opts) = item.strip_prefix(CGROUP_TMPFS) else {
            items.push(item.to_string());
            continue;
        };
        found += 1;
        let rest = opts
            .strip_prefix("ro")
            .filter(|rest| rest.is_empty() || rest.starts_with(','));
        let Some(rest) = rest else {
            bail!("bungeo's /sys/fs/cgroup tmpfs must be read-only: {item:?}");
        };
        items.push(format!("{CGROUP_TMPFS}rw{rest}"));
    }
    ensure!(
        found == 1,
        "want exactly one /sys/fs/cgroup tmpfs, found {found}: {mounts:?}"
    );
    Ok(items.join("|"))
}

fn lifecycle(rt: &Runtime) -> Result<Obs> {
    let bundle = Bundle::create(&BundleSpec::command(&["/bin/sleep", "300"]))?;
    let id = cid(rt, "lifecycle");
    let mut obs = Obs::default();
    let exe_is_busybox = |pid: i32| {
        fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.ends_with("bin/busybox"))
            .unwrap_or(false)
    };
    {
        let ctr = rt.create(&bundle, &id)?;
        let state = rt.state(&id)?;
        obs.put("status_created", state["status"].as_str().unwrap_or("?"));
        let pid = rt.pid(&id)?;
        obs.put("exe_before_start_is_busybox", yes(exe_is_busybox(pid)));
        let pid_file =
            fs::read_to_string(bundle.path().join(format!("{id}.pid"))).unwrap_or_default();
        obs.put(
            "pid_file_matches_state",
            yes(pid_file.trim() == pid.to_string()),
        );
        obs.put("state_id", yes(state["id"] == id.as_str()));
        let bundle_path = state["bundle"].as_str().map(PathBuf::from);
        obs.put(
            "state_bundle",
            yes(bundle_path.and_then(|p| p.canonicalize().ok())
                == bundle.path().canonicalize().ok()),
        );
        obs.own("state_created", &state);
        ctr.start()?;
        obs.put("status_started", rt.status(&id)?);
        obs.put("exe_after_start_is_busybox", yes(exe_is_busybox(pid)));
        let refused = rt.invoke(["delete", id.as_str()])?;
        obs.put("delete_running_refused", yes(!refused.success()));
        obs.own("delete_running", &refused);
        let dup = rt.invoke([
            OsStr::new("create"),
            OsStr::new("--bundle"),
            bundle.path().as_os_str(),
            OsStr::new(&id),
        ])?;
        obs.put("create_duplicate_refused", yes(!dup.success()));
        obs.own("create_duplicate", &dup);
        rt.must(["kill", id.as_str(), "KILL"])?;
        obs.put("status_killed", rt.wait_status(&id, "stopped")?);
        let delete = rt.invoke(["delete", id.as_str()])?;
        obs.put("delete.rc", delete.code());
        obs.put(
            "state_after_delete_refused",
            yes(!rt.invoke(["state", id.as_str()])?.success()),
        );
        drop(ctr);
    }
    obs.put("state_dir_after_delete", rt.state_entries(&id).join(","));
    obs.put(
        "cgroups_after_delete",
        dirs_list(&bundle.existing_cgroup_dirs()),
    );
    let unknown = rt.invoke(["state", "no-such-container"])?;
    obs.put("state_unknown_refused", yes(!unknown.success()));
    obs.own("state_unknown", &unknown);
    Ok(obs)
}

fn kill_signal(rt: &Runtime) -> Result<Obs> {
    let host = tempfile::Builder::new().prefix("bungeo-kill-").tempdir()?;
    let mut knobs = BundleSpec::sh(
        "trap 'echo got=TERM > /out/sig; exit 0' TERM\ntouch /out/ready\nwhile :; do sleep 0.05; done\n",
    );
    knobs.mounts.push(bind(host.path(), "/out", &["rw"])?);
    let bundle = Bundle::create(&knobs)?;
    let id = cid(rt, "kill");
    let mut obs = Obs::default();
    let ctr = rt.create(&bundle, &id)?;
    ctr.start()?;
    wait_until("the container's trap", || {
        Ok(host.path().join("ready").exists())
    })?;
    rt.must(["kill", id.as_str(), "TERM"])?;
    obs.put("status_after", rt.wait_status(&id, "stopped")?);
    obs.put(
        "signal_seen",
        fs::read_to_string(host.path().join("sig"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| format!("({e})")),
    );
    Ok(obs)
}

fn kill_all(rt: &Runtime) -> Result<Obs> {
    let host = tempfile::Builder::new()
        .prefix("bungeo-killall-")
        .tempdir()?;
    let mut knobs = BundleSpec::sh(
        "/bin/busybox sleep 300 & /bin/busybox sleep 300 & touch /out/ready; wait\n",
    );
    knobs.mounts.push(bind(host.path(), "/out", &["rw"])?);
    let bundle = Bundle::create(&knobs)?;
    let id = cid(rt, "killall");
    let mut obs = Obs::default();
    let ctr = rt.create(&bundle, &id)?;
    ctr.start()?;
    wait_until("the container's children", || {
        Ok(host.path().join("ready").exists())
    })?;
    let procs = || {
        fs::read_to_string(bundle.cgroup_dir("pids").join("cgroup.procs"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    obs.put("procs_before", procs());
    rt.must(["kill", "--all", id.as_str(), "KILL"])?;
    let _ = wait_until("the cgroup to empty", || Ok(procs() == 0));
    obs.put("procs_after", procs());
    Ok(obs)
}

fn delete_force_running(rt: &Runtime) -> Result<Obs> {
    let bundle = Bundle::create(&BundleSpec::command(&["/bin/sleep", "300"]))?;
    let id = cid(rt, "delforce");
    let mut obs = Obs::default();
    {
        let ctr = rt.create(&bundle, &id)?;
        ctr.start()?;
        let pid = rt.pid(&id)?;
        let delete = rt.invoke(["delete", "--force", id.as_str()])?;
        obs.put("delete.rc", delete.code());
        let gone = wait_until("the init to exit", || {
            // A zombie still has /proc/<pid>; its state letter says it is dead.
            Ok(fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit_once(") ")
                        .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
                })
                .unwrap_or(true))
        });
        obs.put("init_gone", yes(gone.is_ok()));
        drop(ctr);
    }
    obs.put("state_dir_after_delete", rt.state_entries(&id).join(","));
    obs.put(
        "cgroups_after_delete",
        dirs_list(&bundle.existing_cgroup_dirs()),
    );
    Ok(obs)
}

fn exec_joins_container(rt: &Runtime) -> Result<Obs> {
    let knobs = BundleSpec {
        args: vec!["/bin/sleep".into(), "300".into()],
        hostname: "exec-host".into(),
        ..BundleSpec::default()
    };
    let bundle = Bundle::create(&knobs)?;
    let id = cid(rt, "exec");
    let mut obs = Obs::default();
    let ctr = rt.create(&bundle, &id)?;
    ctr.start()?;
    let pid = rt.pid(&id)?;
    let out = ctr.exec_sh(
        "for n in ipc mnt net pid uts; do echo ns_$n=$(readlink /proc/self/ns/$n); done\n\
         echo cgroup=$(cat /proc/self/cgroup | sort | tr '\\n' ' ')\n\
         echo hostname=$(hostname)\n\
         status\n",
    )?;
    ensure!(out.success(), "exec: {out}");
    let mut inside = Obs::default();
    inside.lines("", &out.stdout);
    for ns in ["ipc", "mnt", "net", "pid", "uts"] {
        let init = fs::read_link(format!("/proc/{pid}/ns/{ns}"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let seen = inside.get(&format!("ns_{ns}")).unwrap_or("(absent)");
        obs.put(
            format!("exec.ns_{ns}"),
            if seen == init {
                "same".to_string()
            } else {
                format!("exec {seen} vs init {init}")
            },
        );
    }
    let mut init_cgroup: Vec<String> = fs::read_to_string(format!("/proc/{pid}/cgroup"))?
        .lines()
        .map(String::from)
        .collect();
    init_cgroup.sort();
    let init_cgroup = init_cgroup.join(" ");
    let exec_cgroup = inside.get("cgroup").unwrap_or("").trim().to_string();
    obs.put(
        "exec.cgroup",
        if exec_cgroup == init_cgroup {
            "same".to_string()
        } else {
            format!("exec {exec_cgroup} vs init {init_cgroup}")
        },
    );
    for key in [
        "hostname",
        "CapEff",
        "CapBnd",
        "NoNewPrivs",
        "Uid",
        "Groups",
    ] {
        obs.put(format!("exec.{key}"), inside.get(key).unwrap_or("(absent)"));
    }
    obs.put("exec_exit", ctr.exec(&["/bin/sh", "-c", "exit 7"])?.code());

    let process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(1000u32).gid(1000u32).build()?)
        .args(
            [
                "/bin/sh",
                "-c",
                "echo \"uid=$(id -u) gid=$(id -g) cwd=$(pwd) env=$FROM\"",
            ]
            .map(String::from)
            .to_vec(),
        )
        .env(vec!["FROM=from-json".to_string(), "PATH=/bin".to_string()])
        .cwd("/tmp")
        .build()?;
    let process_file = bundle.write_process("process.json", &process)?;
    let from_json = rt.invoke([
        OsStr::new("exec"),
        OsStr::new("--process"),
        process_file.as_os_str(),
        OsStr::new(&id),
    ])?;
    obs.put("process_json", from_json.stdout.trim());
    obs.own("process_json.stderr", from_json.stderr.trim());

    let missing = ctr.exec(&["/bin/no-such-cmd"])?;
    obs.own("exec_missing", missing.stderr.trim());
    obs.own("exec_missing.rc", missing.code());

    let detached = rt.invoke([
        "exec",
        "--detach",
        id.as_str(),
        "/bin/sh",
        "-c",
        "touch /dev/shm/detached",
    ])?;
    obs.own("exec_detach", &detached);
    let ran = wait_until("the detached exec", || {
        Ok(ctr
            .exec(&["/bin/busybox", "test", "-e", "/dev/shm/detached"])?
            .success())
    });
    obs.put("detached_ran", yes(ran.is_ok()));

    let ps = rt.invoke(["ps", id.as_str()])?;
    let listed = ps.success() && ps.stdout.split_whitespace().any(|w| w == pid.to_string());
    obs.put("ps_lists_init", yes(listed));
    obs.own("ps", &ps);
    Ok(obs)
}

fn missing_command(rt: &Runtime) -> Result<Obs> {
    let mut obs = Obs::default();
    for (key, cmd) in [("abs", "/bin/no-such-cmd"), ("rel", "no-such-cmd")] {
        let bundle = Bundle::create(&BundleSpec::command(&[cmd]))?;
        let id = cid(rt, &format!("missing-{key}"));
        let (out, _) = run_bundle(rt, &id, &bundle)?;
        obs.own(format!("{key}.exit"), out.code());
        obs.own(format!("{key}.stderr"), out.stderr.trim());
        if key == "abs" {
            obs.put("state_dir_after", rt.state_entries(&id).join(","));
            obs.put("cgroups_after", dirs_list(&bundle.existing_cgroup_dirs()));
        }
    }
    Ok(obs)
}

fn spec_default(rt: &Runtime) -> Result<Obs> {
    let dir = tempfile::Builder::new().prefix("bungeo-spec-").tempdir()?;
    let mut cmd = rt.command(["spec"]);
    cmd.current_dir(dir.path());
    let out = output(cmd, COMMAND_TIMEOUT)?;
    ensure!(out.success(), "spec: {out}");
    let text = fs::read_to_string(dir.path().join("config.json")).context("spec's config.json")?;
    let v: serde_json::Value = serde_json::from_str(&text).context("spec's config.json")?;
    let mut obs = Obs::default();
    obs.put("args", &v["process"]["args"]);
    let mut ns: Vec<String> = v["linux"]["namespaces"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["type"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    ns.sort();
    obs.put("namespaces", ns.join(","));
    obs.put("root", v["root"]["path"].as_str().unwrap_or("(absent)"));
    obs.put("root_readonly", &v["root"]["readonly"]);
    obs.put("terminal", &v["process"]["terminal"]);
    obs.put("no_new_privileges", &v["process"]["noNewPrivileges"]);
    let again = output(
        {
            let mut c = rt.command(["spec"]);
            c.current_dir(dir.path());
            c
        },
        COMMAND_TIMEOUT,
    )?;
    obs.put("spec_again_refused", yes(!again.success()));
    Ok(obs)
}

fn log_json(rt: &Runtime) -> Result<Obs> {
    let bundle = Bundle::create(&BundleSpec::command(&["/bin/no-such-cmd"]))?;
    let id = cid(rt, "log");
    let log = bundle.path().join("runtime.log");
    let _guard = Container { rt, id: id.clone() };
    let mut cmd = Command::new(&rt.bin);
    cmd.arg("--root")
        .arg(&rt.root)
        .arg("--log")
        .arg(&log)
        .args(["--log-format", "json", "run", "--bundle"])
        .arg(bundle.path())
        .arg(&id);
    let out = output(cmd, COMMAND_TIMEOUT)?;
    let mut obs = Obs::default();
    obs.put("exit", i32::from(!out.success()));
    obs.own("exit_code", out.code());
    obs.own("stderr", out.stderr.trim());
    let text = fs::read_to_string(&log).unwrap_or_default();
    obs.own("log", text.trim());
    let entries: Vec<Option<serde_json::Value>> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect();
    let all_json = !entries.is_empty()
        && entries.iter().all(|e| {
            e.as_ref()
                .is_some_and(|v| v["level"].is_string() && v["msg"].is_string())
        });
    obs.put("log_lines_are_json", yes(all_json));
    let names = entries.iter().flatten().any(|v| {
        v["msg"]
            .as_str()
            .is_some_and(|m| m.contains("/bin/no-such-cmd"))
    });
    obs.put("log_names_command", yes(names));
    Ok(obs)
}

/// No systemd runs here: the systemd cgroup driver must be refused with a message, no crash.
fn systemd_cgroup_unavailable(rt: &Runtime) -> Result<Obs> {
    let mut bundle = Bundle::create(&BundleSpec::command(&["/bin/true"]))?;
    let mut spec = bundle.spec().clone();
    if let Some(linux) = spec.linux_mut() {
        linux.set_cgroups_path(Some(PathBuf::from(format!(
            "system.slice:bungeo-test:{}",
            std::process::id()
        ))));
    }
    bundle.set_spec(spec)?;
    let id = cid(rt, "systemd");
    let _guard = Container { rt, id: id.clone() };
    let mut cmd = Command::new(&rt.bin);
    cmd.arg("--root")
        .arg(&rt.root)
        .args(["--systemd-cgroup", "run", "--bundle"])
        .arg(bundle.path())
        .arg(&id);
    let out = output(cmd, COMMAND_TIMEOUT)?;
    let mut obs = Obs::default();
    obs.put("exit", i32::from(!out.success()));
    obs.own("exit_code", out.code());
    obs.own("stderr", out.stderr.trim());
    obs.put("state_dir_after", rt.state_entries(&id).join(","));
    Ok(obs)
}

// ---------------------------------------------------------------------------------------------
// Hardening: container escapes through the rootfs, /proc and /dev (tracker #20, items 3-6).
// bungeo must hold; runc 1.1.5 (the control) predates some of the fixes, so what it does is
// printed for information and never fails a trial.

/// A hardening trial: `(bungeo, runc)`.
type Hardening = fn(&Runtime, &Runtime) -> Result<()>;

fn hardening_tests() -> Vec<(&'static str, Hardening)> {
    vec![
        (
            "a_volume_on_proc_sys_cannot_redirect_a_sysctl",
            a_volume_on_proc_sys_cannot_redirect_a_sysctl,
        ),
        (
            "an_image_dev_symlink_never_reaches_the_host",
            an_image_dev_symlink_never_reaches_the_host,
        ),
        (
            "masked_paths_never_get_a_fake_dev_null",
            masked_paths_never_get_a_fake_dev_null,
        ),
        (
            "the_console_is_the_slave_handed_over",
            the_console_is_the_slave_handed_over,
        ),
    ]
}

fn informational(rt: &Runtime, what: &str, verdict: &str, out: &Out) {
    eprintln!(
        "{} (control, informational) {what}: {verdict}; {out}",
        rt.which.name()
    );
}

const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";

/// The host's `core_pattern` as it was; put back on drop (and by [`Self::check`]) if a
/// runtime changed it.
struct CorePattern(Vec<u8>);

impl CorePattern {
    fn save() -> Result<Self> {
        Ok(Self(fs::read(CORE_PATTERN).context("read core_pattern")?))
    }

    /// What it was changed to, if it was (it is restored then).
    fn check(&self) -> Result<Option<String>> {
        let now = fs::read(CORE_PATTERN).context("read core_pattern")?;
        if now == self.0 {
            return Ok(None);
        }
        fs::write(CORE_PATTERN, &self.0).context("restore core_pattern")?;
        Ok(Some(String::from_utf8_lossy(&now).into_owned()))
    }
}

impl Drop for CorePattern {
    fn drop(&mut self) {
        let _ = self.check();
    }
}

/// Item 3: a host directory bound at `/proc/sys/net/ipv4` holds `ip_unprivileged_port_start`
/// as a symlink to `core_pattern`, and the spec sets that (namespaced, harmless) sysctl.
fn a_volume_on_proc_sys_cannot_redirect_a_sysctl(bungeo: &Runtime, runc: &Runtime) -> Result<()> {
    let core = CorePattern::save()?;
    for rt in [bungeo, runc] {
        let vol = tempfile::tempdir().context("volume dir")?;
        std::os::unix::fs::symlink(CORE_PATTERN, vol.path().join("ip_unprivileged_port_start"))?;
        let mut knobs = BundleSpec::sh("echo ran=yes");
        knobs
            .mounts
            .push(bind(vol.path(), "/proc/sys/net/ipv4", &["rbind", "rw"])?);
        knobs
            .sysctls
            .insert("net.ipv4.ip_unprivileged_port_start".into(), "1000".into());
        let bundle = Bundle::create(&knobs)?;
        let (out, _) = run_bundle(rt, &cid(rt, "sysctl-redirect"), &bundle)?;
        let changed = core.check()?;
        match rt.which {
            Which::Bungeo => {
                ensure!(
                    changed.is_none(),
                    "the host's core_pattern was changed to {changed:?} (restored); {out}"
                );
                ensure!(
                    !out.success() && out.stderr.contains("inside /proc"),
                    "the mount on /proc/sys/net/ipv4 must be refused: {out}"
                );
            }
            Which::Runc => {
                let verdict = match changed {
                    Some(c) => format!("VULNERABLE: core_pattern became {c:?} (restored)"),
                    None if out.success() => "ran, core_pattern unchanged".into(),
                    None => "refused".into(),
                };
                informational(rt, "sysctl through /proc/sys volume", &verdict, &out);
            }
        }
    }
    Ok(())
}

/// Names and contents (link targets for symlinks) of the entries in `dir`, sorted.
fn dir_listing(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let e = e?;
        // Never followed: what a runtime left there may point at our own stdio.
        let meta = fs::symlink_metadata(e.path())?;
        let content = if meta.file_type().is_symlink() {
            format!("-> {}", fs::read_link(e.path())?.display())
        } else if meta.is_file() {
            fs::read_to_string(e.path())?
        } else {
            "(not a file)".into()
        };
        names.push(format!("{}={content}", e.file_name().to_string_lossy()));
    }
    names.sort();
    Ok(names)
}

/// Item 5: an image whose `/dev` is a symlink to a host directory. Nothing in that directory
/// may be removed or created; the container runs with its `/dev` inside its rootfs, or fails.
fn an_image_dev_symlink_never_reaches_the_host(bungeo: &Runtime, runc: &Runtime) -> Result<()> {
    for rt in [bungeo, runc] {
        let host = tempfile::tempdir().context("host dir")?;
        fs::write(host.path().join("ptmx"), "host file")?;
        fs::write(host.path().join("keep"), "keep")?;
        let before = dir_listing(host.path())?;
        let bundle = Bundle::create(&BundleSpec::sh(
            "echo dev=$(ls /dev | tr '\\n' ' '); echo ptmx=$(readlink /dev/ptmx)",
        ))?;
        let dev = bundle.rootfs().join("dev");
        fs::remove_dir_all(&dev)?;
        std::os::unix::fs::symlink(host.path(), &dev)?;
        let (out, obs) = run_bundle(rt, &cid(rt, "dev-symlink"), &bundle)?;
        let after = dir_listing(host.path())?;
        let leaked_mounts = mounts_under(host.path())?;
        unmount_under(host.path())?;
        let intact = after == before && leaked_mounts.is_empty();
        match rt.which {
            Which::Bungeo => {
                ensure!(
                    intact,
                    "the host directory changed: before {before:?}, after {after:?}, mounts \
                     {leaked_mounts:?}; {out}"
                );
                if out.success() {
                    let listing = obs.get("dev").unwrap_or("");
                    for want in ["null", "ptmx", "fd", "stdin", "stdout", "stderr", "pts"] {
                        ensure!(
                            listing.split(' ').any(|n| n == want),
                            "/dev lacks {want}: {listing:?}; {out}"
                        );
                    }
                    ensure!(obs.get("ptmx") == Some("pts/ptmx"), "{out}");
                } else {
                    ensure!(
                        !out.stderr.trim().is_empty(),
                        "failed without a reason: {out}"
                    );
                }
            }
            Which::Runc => {
                let verdict = if intact {
                    "host directory untouched".to_string()
                } else {
                    format!("VULNERABLE: host directory {before:?} became {after:?}")
                };
                informational(rt, "image /dev symlink", &verdict, &out);
            }
        }
    }
    Ok(())
}

/// Item 6: no `/dev` tmpfs, and the image's `/dev/null` is a symlink to `core_pattern`. Masked
/// files must get the real null device or the container must fail; `core_pattern` must never
/// show through a masked path.
fn masked_paths_never_get_a_fake_dev_null(bungeo: &Runtime, runc: &Runtime) -> Result<()> {
    let core = CorePattern::save()?;
    let pattern = String::from_utf8_lossy(&core.0).trim().to_string();
    for rt in [bungeo, runc] {
        let knobs = BundleSpec::sh(
            "echo keys=$(head -c 200 /proc/keys | tr '\\n' ' '); \
             echo timer_list=$(head -c 200 /proc/timer_list | tr '\\n' ' ')",
        );
        ensure!(knobs.masked_paths.iter().any(|p| p == "/proc/keys"));
        let mut bundle = Bundle::create(&knobs)?;
        let mut spec = bundle.spec().clone();
        let mounts: Vec<_> = spec
            .mounts()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| !m.destination().starts_with("/dev"))
            .collect();
        spec.set_mounts(Some(mounts));
        bundle.set_spec(spec)?;
        std::os::unix::fs::symlink(CORE_PATTERN, bundle.rootfs().join("dev/null"))?;
        let (out, obs) = run_bundle(rt, &cid(rt, "fake-null"), &bundle)?;
        let changed = core.check()?;
        let shown = |k: &str| obs.get(k).unwrap_or("").trim().to_string();
        let leaked = out.success() && (shown("keys") == pattern || shown("timer_list") == pattern);
        match rt.which {
            Which::Bungeo => {
                ensure!(
                    changed.is_none(),
                    "core_pattern changed to {changed:?}; {out}"
                );
                ensure!(!leaked, "core_pattern shows through a masked path; {out}");
                if out.success() {
                    ensure!(
                        shown("keys").is_empty() && shown("timer_list").is_empty(),
                        "masked files are not empty: {out}"
                    );
                } else {
                    ensure!(out.stderr.contains("null device"), "{out}");
                }
            }
            Which::Runc => {
                let verdict = if leaked {
                    "VULNERABLE: core_pattern bound over the masked paths".to_string()
                } else if out.success() && obs.get("keys").is_none() {
                    // runc 1.1.5 reopens stdio it takes for /dev/null through the container's
                    // /dev/null: the output went to the fake one.
                    "no output: stdio was reopened through the fake /dev/null".into()
                } else if out.success() {
                    "masked paths empty".into()
                } else {
                    "refused".into()
                };
                informational(rt, "fake /dev/null", &verdict, &out);
            }
        }
    }
    Ok(())
}

/// Receives the pty master a runtime sends to `--console-socket`.
fn recv_master(listener: &std::os::unix::net::UnixListener) -> Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    let (conn, _) = listener.accept().context("accept on the console socket")?;
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .context("recvmsg on the console socket")?;
    for c in msg.cmsgs().context("control messages")? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(fd) = fds.first()
        {
            // SAFETY: the kernel just installed this fd for us; nothing else owns it.
            return Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(*fd) });
        }
    }
    bail!("no fd on the console socket")
}

/// What the container writes on its terminal, until its last holder of the slave is gone.
fn read_terminal(master: &std::os::fd::OwnedFd) -> Result<String> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd as _;
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(100u16)).context("poll the terminal")? > 0 {
            match nix::unistd::read(master, &mut buf) {
                Ok(0) | Err(nix::errno::Errno::EIO) => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
                Err(e) => bail!("read the terminal: {e}"),
            }
        }
        ensure!(
            Instant::now() < deadline,
            "the terminal did not close; saw {:?}",
            String::from_utf8_lossy(&text)
        );
    }
    Ok(String::from_utf8_lossy(&text).replace('\r', ""))
}

/// Item 4: with a terminal, the container's `/dev/console` and its stdin are the slave of the
/// master sent over the console socket (same device numbers).
fn the_console_is_the_slave_handed_over(bungeo: &Runtime, runc: &Runtime) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    for rt in [bungeo, runc] {
        let mut bundle = Bundle::create(&BundleSpec::sh(
            "stat -L -c %t:%T /dev/console /proc/self/fd/0",
        ))?;
        let mut spec = bundle.spec().clone();
        if let Some(p) = spec.process_mut() {
            p.set_terminal(Some(true));
        }
        bundle.set_spec(spec)?;
        let sock = bundle.path().join("console.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock)?;
        let id = cid(rt, "console");
        let receiver = std::thread::spawn(move || recv_master(&listener));
        let out = rt.invoke([
            OsStr::new("create"),
            OsStr::new("--bundle"),
            bundle.path().as_os_str(),
            OsStr::new("--console-socket"),
            sock.as_os_str(),
            OsStr::new(&id),
        ])?;
        let container = Container { rt, id: id.clone() };
        ensure!(out.success(), "{} create: {out}", rt.which.name());
        let master = receiver
            .join()
            .map_err(|_| anyhow::anyhow!("console receiver panicked"))??;
        let mut index: libc::c_uint = 0;
        // SAFETY: TIOCGPTN writes one unsigned int to a live pointer; master is a valid fd.
        let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut index) };
        ensure!(r == 0, "TIOCGPTN: {}", std::io::Error::last_os_error());
        container.start()?;
        let text = read_terminal(&master)?;
        let want = format!("{:x}:{:x}", 136 + index / 256, index % 256);
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let ok = lines == [want.as_str(), want.as_str()];
        drop(container);
        match rt.which {
            Which::Bungeo => ensure!(ok, "want /dev/console and stdin at {want}, saw {text:?}"),
            Which::Runc => {
                let verdict = if ok {
                    "console is the slave"
                } else {
                    "differs"
                };
                eprintln!(
                    "runc (control, informational) console: {verdict}; saw {text:?}, want {want}"
                );
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Self-tests of the comparison logic, run as `harness::*` trials (this target has no libtest
// harness, so `#[test]` would never run).

type SelfTest = fn() -> Result<()>;

fn self_tests() -> Vec<(&'static str, SelfTest)> {
    vec![
        (
            "list_difference_names_each_side",
            list_difference_names_each_side,
        ),
        ("wants_hold_or_not", wants_hold_or_not),
        (
            "differences_report_both_sides",
            differences_report_both_sides,
        ),
        (
            "script_lines_become_observations",
            script_lines_become_observations,
        ),
        (
            "cgroup_tmpfs_ro_is_the_only_accepted_difference",
            cgroup_tmpfs_ro_is_the_only_accepted_difference,
        ),
    ]
}

fn list_difference_names_each_side() -> Result<()> {
    let d = list_difference("a|b|c", "a|c|d");
    ensure!(d == r#"only bungeo has ["b"]; only runc has ["d"]"#, "{d}");
    let d = list_difference("a|b", "b|a");
    ensure!(d.starts_with("same items in another order"), "{d}");
    Ok(())
}

fn wants_hold_or_not() -> Result<()> {
    ensure!(Is("x").holds("x") && !Is("x").holds("xy"));
    ensure!(Contains("Read-only").holds("touch: /x: Read-only file system"));
    ensure!(Lacks("panicked").holds("error: no such file"));
    ensure!(NonZero.holds("137") && !NonZero.holds("0") && !NonZero.holds("(absent)"));
    Ok(())
}

fn differences_report_both_sides() -> Result<()> {
    let mut b = Obs::default();
    let mut r = Obs::default();
    b.put("same", "1");
    r.put("same", "1");
    b.put("CapEff", "0");
    r.put("CapEff", "20000420");
    r.put("only_runc", "x");
    b.own("stderr", "not compared");
    let d = differences(&b, &r);
    ensure!(d.len() == 2, "{d:?}");
    ensure!(d[0].contains(r#"bungeo "0" | runc "20000420""#), "{d:?}");
    ensure!(d[1].contains("bungeo (absent)"), "{d:?}");
    Ok(())
}

fn script_lines_become_observations() -> Result<()> {
    let mut o = Obs::default();
    o.lines("", "CapEff=0000\nnoise\nid=uid=0(root) gid=0(root)\n");
    ensure!(o.get("CapEff") == Some("0000"));
    ensure!(o.get("id") == Some("uid=0(root) gid=0(root)"));
    ensure!(o.get("unparsed") == Some("noise|"));
    Ok(())
}

fn cgroup_tmpfs_ro_is_the_only_accepted_difference() -> Result<()> {
    let runc = "/sys sysfs ro,nosuid|/sys/fs/cgroup tmpfs rw,nosuid,mode=755|\
                /sys/fs/cgroup/cpu cgroup ro,nosuid,cpu";
    let compare = |bungeo: &str| -> Result<Vec<String>> {
        let mut b = Obs::default();
        let mut r = Obs::default();
        b.put("mounts", cgroup_tmpfs_as_runc(bungeo)?);
        r.put("mounts", runc);
        Ok(differences(&b, &r))
    };
    let d = compare(
        "/sys sysfs ro,nosuid|/sys/fs/cgroup tmpfs ro,nosuid,mode=755|\
         /sys/fs/cgroup/cpu cgroup ro,nosuid,cpu",
    )?;
    ensure!(d.is_empty(), "{d:?}");
    // Any other option of the tmpfs, or any other mount, still counts.
    let d = compare(
        "/sys sysfs ro,nosuid|/sys/fs/cgroup tmpfs ro,mode=755|\
         /sys/fs/cgroup/cpu cgroup ro,nosuid,cpu",
    )?;
    ensure!(d.len() == 1, "{d:?}");
    let d = compare(
        "/sys sysfs ro,nosuid|/sys/fs/cgroup tmpfs ro,nosuid,mode=755|\
         /sys/fs/cgroup/cpu cgroup ro,nosuid,cpu|/sys/fs/cgroup/unified cgroup2 ro",
    )?;
    ensure!(d.len() == 1 && d[0].contains("unified"), "{d:?}");
    // A writable or missing tmpfs on bungeo's side is a failure, not a match.
    ensure!(cgroup_tmpfs_as_runc("/sys/fs/cgroup tmpfs rw,nosuid").is_err());
    ensure!(cgroup_tmpfs_as_runc("/sys/fs/cgroup tmpfs rox").is_err());
    ensure!(cgroup_tmpfs_as_runc("/sys sysfs ro").is_err());
    ensure!(cgroup_tmpfs_as_runc("/sys/fs/cgroup tmpfs ro").is_ok_and(|m| m.ends_with(" rw")));
    Ok(())
}
