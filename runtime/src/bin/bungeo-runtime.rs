//! `bungeo-runtime`: an OCI runtime command line with runc's commands and flags, over the
//! runtime crate's [`Container`]. Errors go to stderr (and `--log`) in runc's format and exit 1.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, anyhow, bail};
use bungeo_runtime::container::state::{STATE_FILE, State, rfc3339};
use bungeo_runtime::container::{
    ConsoleSocket, Container, CreateOptions, ExecOptions, parse_signal, sealed_exe, tty,
    wait_exit_code,
};
use clap::{Parser, Subcommand, ValueEnum};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use oci_spec::runtime::{Capability, Process, Spec};

#[derive(Parser, Debug)]
#[command(
    name = "bungeo-runtime",
    version,
    about = "An OCI runtime: run containers from OCI bundles (runc's commands and flags)"
)]
struct Cli {
    /// Directory holding container state.
    #[arg(long, global = true, default_value = "/run/bungeo-runtime")]
    root: PathBuf,
    /// Write errors and logs to this file instead of stderr.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Format of log lines.
    #[arg(long = "log-format", global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log debug messages too.
    #[arg(long, global = true)]
    debug: bool,
    /// Use the systemd cgroup driver (cgroupsPath as slice:prefix:name).
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a container; its process waits for `start`.
    Create {
        /// Bundle directory (holds config.json).
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        /// Unix socket that receives the terminal's master fd (terminal: true).
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        /// Pass this many fds after stdio (3, 4, ...) to the container.
        #[arg(long = "preserve-fds", default_value_t = 0)]
        preserve_fds: u32,
        /// Accepted for runc compatibility: no session keyring is ever created.
        #[arg(long = "no-new-keyring")]
        _no_new_keyring: bool,
        id: String,
    },
    /// Start a created container.
    Start { id: String },
    /// Print a container's OCI state as JSON.
    State { id: String },
    /// Send a signal (name or number, default SIGTERM) to a container's init.
    Kill {
        /// Signal every process in the container.
        #[arg(short, long)]
        all: bool,
        id: String,
        signal: Option<String>,
    },
    /// Delete a container (a running one only with --force).
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Create and start a container, wait for it and delete it (or leave it with --detach).
    Run {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        #[arg(short, long)]
        detach: bool,
        /// Do not delete the container after it exits.
        #[arg(long)]
        keep: bool,
        #[arg(long = "preserve-fds", default_value_t = 0)]
        preserve_fds: u32,
        /// Accepted for runc compatibility: no session keyring is ever created.
        #[arg(long = "no-new-keyring")]
        _no_new_keyring: bool,
        id: String,
    },
    /// Run a new process in a running container.
    Exec {
        /// Process JSON (an OCI Process); otherwise the command after the id.
        #[arg(short, long)]
        process: Option<PathBuf>,
        #[arg(short, long)]
        tty: bool,
        #[arg(short, long)]
        detach: bool,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// Extra environment variables (KEY=VALUE), repeatable.
        #[arg(short, long)]
        env: Vec<String>,
        /// uid[:gid]
        #[arg(short, long)]
        user: Option<String>,
        /// Extra groups, repeatable.
        #[arg(short = 'g', long = "additional-gids")]
        additional_gids: Vec<u32>,
        /// Add a capability (CAP_NET_ADMIN), repeatable.
        #[arg(short, long)]
        cap: Vec<String>,
        #[arg(long = "no-new-privs")]
        no_new_privs: bool,
        #[arg(long = "preserve-fds", default_value_t = 0)]
        preserve_fds: u32,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// List the processes in a container (ps -ef rows, or pids as JSON).
    Ps {
        #[arg(short, long, value_enum, default_value = "table")]
        format: Format,
        id: String,
        /// Options for ps(1) (default -ef).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Write a default config.json into the bundle.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
    },
    /// List containers.
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        format: Format,
        /// Only ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Update a container's cgroup resources from an OCI LinuxResources JSON.
    Update {
        /// File with the resources JSON, `-` for stdin.
        #[arg(short, long)]
        resources: PathBuf,
        id: String,
    },
    /// Freeze every process in a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
}

/// Where errors go: runc writes a formatted line to --log (and the bare message to stderr),
/// or the formatted line to stderr without --log.
struct ErrorSink {
    log: Option<PathBuf>,
    format: LogFormat,
}

fn log_line(format: LogFormat, level: &str, msg: &str, time: &str) -> String {
    let q = serde_json::to_string(msg).unwrap_or_else(|_| format!("{msg:?}"));
    match format {
        LogFormat::Json => format!(r#"{{"level":"{level}","msg":{q},"time":"{time}"}}"#),
        LogFormat::Text => format!("time=\"{time}\" level={level} msg={q}"),
    }
}

fn now_secs() -> String {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    rfc3339(s, 0)
}

impl ErrorSink {
    fn report(&self, err: &anyhow::Error) {
        let msg = format!("{err:#}");
        let line = log_line(self.format, "error", &msg, &now_secs());
        match &self.log {
            Some(p) => {
                let written = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .and_then(|mut f| writeln!(f, "{line}"));
                if written.is_err() {
                    eprintln!("{line}");
                } else {
                    eprintln!("{msg}");
                }
            }
            None => eprintln!("{line}"),
        }
    }
}

/// tracing events as runc-style log lines (so a JSON log stays one JSON object per line).
struct LineFormat(LogFormat);

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for LineFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        struct Collect(String);
        impl tracing::field::Visit for Collect {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    let _ = write!(self.0, "{value:?}");
                } else {
                    let _ = write!(self.0, " {}={value:?}", field.name());
                }
            }
        }
        let mut c = Collect(String::new());
        event.record(&mut c);
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warning",
            tracing::Level::INFO => "info",
            _ => "debug",
        };
        writeln!(
            writer,
            "{}",
            log_line(self.0, level, c.0.trim(), &now_secs())
        )
    }
}

fn init_logging(cli: &Cli) {
    let level = if cli.debug { "debug" } else { "warn" };
    // libcgroups warns about every controller this kernel lacks, on every call.
    let filter = tracing_subscriber::EnvFilter::new(format!("{level},libcgroups=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .event_format(LineFormat(cli.log_format));
    match &cli.log {
        Some(p) => {
            if let Ok(f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
            {
                builder.with_writer(Mutex::new(f)).init();
            }
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
}

fn main() {
    let cli = Cli::parse();
    let sink = ErrorSink {
        log: cli.log.clone(),
        format: cli.log_format,
    };
    // The commands whose children join a container run those from a sealed copy of this
    // binary, so no container process can reach the binary on the host (CVE-2019-5736). Done
    // before logging starts: the re-executed process starts it again.
    if matches!(
        cli.cmd,
        Cmd::Create { .. } | Cmd::Run { .. } | Cmd::Exec { .. }
    ) && let Err(e) = sealed_exe::reexec_sealed(&cli.root)
    {
        sink.report(&anyhow::Error::new(e).context("run from a sealed copy of bungeo-runtime"));
        std::process::exit(1);
    }
    init_logging(&cli);
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            sink.report(&e);
            std::process::exit(1);
        }
    }
}

fn load(cli: &Cli, id: &str) -> Result<Container> {
    Ok(Container::load(&cli.root, id)?)
}

fn run(cli: Cli) -> Result<i32> {
    match &cli.cmd {
        Cmd::Create {
            bundle,
            pid_file,
            console_socket,
            preserve_fds,
            id,
            ..
        } => {
            Container::create(&CreateOptions {
                id: id.clone(),
                bundle: bundle.clone(),
                root: cli.root.clone(),
                console_socket: console_socket.clone().map(ConsoleSocket::Path),
                pid_file: pid_file.clone(),
                systemd_cgroup: cli.systemd_cgroup,
                preserve_fds: *preserve_fds,
            })?;
            Ok(0)
        }
        Cmd::Start { id } => {
            load(&cli, id)?.start()?;
            Ok(0)
        }
        Cmd::State { id } => {
            let c = load(&cli, id)?;
            println!("{}", serde_json::to_string_pretty(&c.oci_state())?);
            Ok(0)
        }
        Cmd::Kill { all, id, signal } => {
            let sig = parse_signal(signal.as_deref().unwrap_or("SIGTERM"))?;
            load(&cli, id)?.kill(sig, *all)?;
            Ok(0)
        }
        Cmd::Delete { force, id } => match Container::load(&cli.root, id) {
            Ok(c) => {
                c.delete(*force)?;
                Ok(0)
            }
            // A create that died before writing its state leaves a bare dir, and a crash of
            // the node right after a create can leave a truncated record (it is not fsync'd):
            // nothing it described survived, and --force cleans it.
            Err(bungeo_runtime::Error::NotFound(_)) if *force => remove_state_dir(&cli.root, id),
            Err(bungeo_runtime::Error::InvalidArgument(_))
                if *force && state_unreadable(&cli.root, id) =>
            {
                remove_state_dir(&cli.root, id)
            }
            Err(e) => Err(e.into()),
        },
        Cmd::Run {
            bundle,
            pid_file,
            console_socket,
            detach,
            keep,
            preserve_fds,
            id,
            ..
        } => cmd_run(
            &cli,
            RunArgs {
                bundle,
                pid_file,
                console_socket,
                detach: *detach,
                keep: *keep,
                preserve_fds: *preserve_fds,
                id,
            },
        ),
        Cmd::Exec { .. } => cmd_exec(&cli),
        Cmd::Ps {
            format,
            id,
            ps_args,
        } => cmd_ps(&cli, *format, id, ps_args),
        Cmd::Spec { bundle } => {
            let path = bundle.join("config.json");
            if path.exists() {
                bail!("File {} exists. Remove it first", path.display());
            }
            let mut out = Vec::new();
            let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
            let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
            serde::Serialize::serialize(&default_spec(), &mut ser)?;
            std::fs::write(&path, out).with_context(|| format!("write {}", path.display()))?;
            Ok(0)
        }
        Cmd::List { format, quiet } => cmd_list(&cli, *format, *quiet),
        Cmd::Update { resources, id } => {
            let text = if resources.as_os_str() == "-" {
                let mut v = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut v)
                    .context("read resources from stdin")?;
                v
            } else {
                std::fs::read(resources)
                    .with_context(|| format!("read resources {}", resources.display()))?
            };
            let res: oci_spec::runtime::LinuxResources =
                serde_json::from_slice(&text).context("parse resources")?;
            load(&cli, id)?.update(&res)?;
            Ok(0)
        }
        Cmd::Pause { id } => {
            load(&cli, id)?.pause()?;
            Ok(0)
        }
        Cmd::Resume { id } => {
            load(&cli, id)?.resume()?;
            Ok(0)
        }
    }
}

fn remove_state_dir(root: &Path, id: &str) -> Result<i32> {
    let dir = root.join(id);
    if dir.is_dir() && !id.contains('/') && id != ".." && id != "." {
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    Ok(0)
}

/// Whether `<root>/<id>/state.json` exists but does not hold a container record.
fn state_unreadable(root: &Path, id: &str) -> bool {
    std::fs::read(root.join(id).join(STATE_FILE))
        .is_ok_and(|text| serde_json::from_slice::<State>(&text).is_err())
}

struct RunArgs<'a> {
    bundle: &'a Path,
    pid_file: &'a Option<PathBuf>,
    console_socket: &'a Option<PathBuf>,
    detach: bool,
    keep: bool,
    preserve_fds: u32,
    id: &'a str,
}

fn spec_terminal(bundle: &Path) -> Result<bool> {
    let path = bundle.join("config.json");
    let spec = Spec::load(&path).map_err(|e| anyhow!("load {}: {e}", path.display()))?;
    Ok(spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false))
}

fn cmd_run(cli: &Cli, a: RunArgs<'_>) -> Result<i32> {
    let terminal = spec_terminal(a.bundle)?;
    if terminal && a.detach && a.console_socket.is_none() {
        bail!("cannot allocate tty if bungeo-runtime will detach without setting console socket");
    }
    // Without a console socket, a terminal is proxied here: the container sends its master
    // over this pair.
    let (console, ours) = match (terminal, a.console_socket) {
        (true, None) => {
            let (mine, theirs) = UnixStream::pair().context("socketpair for the terminal")?;
            (Some(ConsoleSocket::Fd(OwnedFd::from(theirs))), Some(mine))
        }
        (_, Some(p)) => (Some(ConsoleSocket::Path(p.clone())), None),
        (false, None) => (None, None),
    };
    let mut c = Container::create(&CreateOptions {
        id: a.id.to_string(),
        bundle: a.bundle.to_path_buf(),
        root: cli.root.clone(),
        console_socket: console,
        pid_file: a.pid_file.clone(),
        systemd_cgroup: cli.systemd_cgroup,
        preserve_fds: a.preserve_fds,
    })?;
    let master = match &ours {
        Some(s) => match tty::recv_fd(s.as_fd()) {
            Ok(m) => Some(m),
            Err(e) => {
                let _ = c.delete(true);
                return Err(e.into());
            }
        },
        None => None,
    };
    if let Err(e) = c.start() {
        let _ = Container::load(&cli.root, a.id).map(|c| c.delete(true));
        return Err(e.into());
    }
    if a.detach {
        return Ok(0);
    }
    let code = supervise(c.pid(), master);
    if !a.keep
        && let Ok(c) = Container::load(&cli.root, a.id)
    {
        c.delete(true)?;
    }
    code
}

fn parse_user(s: &str) -> Result<(u32, Option<u32>)> {
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let uid = u
        .parse()
        .map_err(|_| anyhow!("--user {s:?}: expected uid[:gid] as numbers"))?;
    let gid = g
        .map(|g| g.parse())
        .transpose()
        .map_err(|_| anyhow!("--user {s:?}: expected uid[:gid] as numbers"))?;
    Ok((uid, gid))
}

fn cmd_exec(cli: &Cli) -> Result<i32> {
    let Cmd::Exec {
        process,
        tty: want_tty,
        detach,
        pid_file,
        console_socket,
        cwd,
        env,
        user,
        additional_gids,
        cap,
        no_new_privs,
        preserve_fds,
        id,
        command,
    } = &cli.cmd
    else {
        bail!("not an exec command");
    };
    let c = load(cli, id)?;
    let mut p: Process = match process {
        Some(path) => {
            let text =
                std::fs::read(path).with_context(|| format!("read process {}", path.display()))?;
            serde_json::from_slice(&text)
                .with_context(|| format!("parse process {}", path.display()))?
        }
        None => {
            if command.is_empty() {
                bail!("exec needs a command after the container id, or --process");
            }
            let mut p = c.state().process.clone().unwrap_or_default();
            p.set_args(Some(command.clone()));
            p.set_terminal(Some(*want_tty));
            p.set_console_size(None);
            p
        }
    };
    if process.is_none() || *want_tty {
        p.set_terminal(Some(*want_tty || p.terminal().unwrap_or(false)));
    }
    if !env.is_empty() {
        let mut e = p.env().clone().unwrap_or_default();
        e.extend(env.iter().cloned());
        p.set_env(Some(e));
    }
    if let Some(d) = cwd {
        p.set_cwd(d.clone());
    }
    if let Some(u) = user {
        let (uid, gid) = parse_user(u)?;
        p.user_mut().set_uid(uid);
        if let Some(g) = gid {
            p.user_mut().set_gid(g);
        }
    }
    if !additional_gids.is_empty() {
        p.user_mut()
            .set_additional_gids(Some(additional_gids.clone()));
    }
    if *no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if !cap.is_empty() {
        let mut caps = p
            .capabilities()
            .clone()
            .unwrap_or_else(bungeo_runtime::container::no_capabilities);
        for name in cap {
            let c: Capability = name
                .parse()
                .map_err(|_| anyhow!("unknown capability {name:?}"))?;
            for set in [
                caps.bounding().clone(),
                caps.effective().clone(),
                caps.permitted().clone(),
            ]
            .iter()
            .enumerate()
            {
                let mut s = set.1.clone().unwrap_or_default();
                s.insert(c);
                match set.0 {
                    0 => caps.set_bounding(Some(s)),
                    1 => caps.set_effective(Some(s)),
                    _ => caps.set_permitted(Some(s)),
                };
            }
        }
        p.set_capabilities(Some(caps));
    }
    let terminal = p.terminal().unwrap_or(false);
    if terminal && *detach && console_socket.is_none() {
        bail!("cannot allocate tty if bungeo-runtime will detach without setting console socket");
    }
    let (console, ours) = match (terminal, console_socket) {
        (true, None) => {
            let (mine, theirs) = UnixStream::pair().context("socketpair for the terminal")?;
            (Some(ConsoleSocket::Fd(OwnedFd::from(theirs))), Some(mine))
        }
        (_, Some(s)) => (Some(ConsoleSocket::Path(s.clone())), None),
        (false, None) => (None, None),
    };
    let pid = c.exec(&ExecOptions {
        process: p,
        console_socket: console,
        pid_file: pid_file.clone(),
        preserve_fds: *preserve_fds,
    })?;
    let master = match &ours {
        Some(s) => Some(tty::recv_fd(s.as_fd())?),
        None => None,
    };
    if *detach {
        return Ok(0);
    }
    supervise(pid, master)
}

fn cmd_ps(cli: &Cli, format: Format, id: &str, ps_args: &[String]) -> Result<i32> {
    let c = load(cli, id)?;
    let pids = c.pids()?;
    if format == Format::Json {
        println!("{}", serde_json::to_string(&pids)?);
        return Ok(0);
    }
    let args: Vec<String> = if ps_args.is_empty() {
        vec!["-ef".into()]
    } else {
        ps_args.to_vec()
    };
    let out = std::process::Command::new("ps")
        .args(&args)
        .output()
        .context("run ps")?;
    if !out.status.success() {
        bail!(
            "ps {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .ok_or_else(|| anyhow!("ps output has no PID column"))?;
    let want: HashSet<i32> = pids.into_iter().collect();
    println!("{header}");
    for l in lines {
        let pid = l.split_whitespace().nth(col).and_then(|p| p.parse().ok());
        if pid.is_some_and(|p| want.contains(&p)) {
            println!("{l}");
        }
    }
    Ok(0)
}

fn cmd_list(cli: &Cli, format: Format, quiet: bool) -> Result<i32> {
    let all = Container::list(&cli.root)?;
    if quiet {
        for c in &all {
            println!("{}", c.id());
        }
        return Ok(0);
    }
    if format == Format::Json {
        if all.is_empty() {
            println!("null");
            return Ok(0);
        }
        let v: Vec<serde_json::Value> = all
            .iter()
            .map(|c| {
                let s = c.oci_state();
                serde_json::json!({
                    "ociVersion": s.oci_version, "id": s.id, "pid": s.pid,
                    "status": s.status, "bundle": s.bundle, "rootfs": s.rootfs,
                    "created": s.created, "owner": s.owner,
                })
            })
            .collect();
        println!("{}", serde_json::to_string(&v)?);
        return Ok(0);
    }
    let mut rows = vec![[
        "ID".to_string(),
        "PID".into(),
        "STATUS".into(),
        "BUNDLE".into(),
        "CREATED".into(),
        "OWNER".into(),
    ]];
    for c in &all {
        let s = c.oci_state();
        rows.push([
            s.id,
            s.pid.to_string(),
            s.status.to_string(),
            s.bundle.display().to_string(),
            s.created,
            if s.owner.is_empty() {
                "root".into()
            } else {
                s.owner
            },
        ]);
    }
    // Go's tabwriter as runc sets it up: min width 12, padding 3; the last column unpadded.
    let mut widths = [0usize; 6];
    for r in &rows {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max((cell.len() + 3).max(12));
        }
    }
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i == 5 {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}", w = widths[i]);
            }
        }
        println!("{line}");
    }
    Ok(0)
}

/// Restores the terminal mode on drop.
struct RawMode {
    fd: i32,
    saved: nix::sys::termios::Termios,
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: fd 0 stays open for the life of the process.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let _ = nix::sys::termios::tcsetattr(fd, nix::sys::termios::SetArg::TCSANOW, &self.saved);
    }
}

fn raw_stdin() -> Option<RawMode> {
    let stdin = std::io::stdin();
    let saved = nix::sys::termios::tcgetattr(stdin.as_fd()).ok()?;
    let mut raw = saved.clone();
    nix::sys::termios::cfmakeraw(&mut raw);
    nix::sys::termios::tcsetattr(stdin.as_fd(), nix::sys::termios::SetArg::TCSANOW, &raw).ok()?;
    Some(RawMode { fd: 0, saved })
}

fn copy_winsize(master: i32) {
    let mut ws: libc::winsize = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into a live struct.
    if unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) } == 0 {
        let _ = tty::set_winsize(master, ws.ws_row, ws.ws_col);
    }
}

/// Waits for `pid` (our child) while forwarding signals to it and, with a terminal master,
/// proxying stdin/stdout through it. Returns the exit code (128+signal when killed).
fn supervise(pid: i32, master: Option<OwnedFd>) -> Result<i32> {
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ] {
        mask.add(s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).context("block signals")?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("signalfd")?;
    let _raw = if master.is_some() { raw_stdin() } else { None };
    if let Some(m) = &master {
        copy_winsize(m.as_raw_fd());
    }
    let mut stdin_open = master.is_some();
    let mut master_open = master.is_some();
    let mut buf = vec![0u8; 32 * 1024];
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        // A child that exited before the mask was set has no pending SIGCHLD for us.
        if let Some(code) = reap(pid)? {
            if let Some(m) = &master {
                drain(m, &mut buf, &mut stdout);
            }
            return Ok(code);
        }
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        let stdin_fd = stdin.as_fd();
        if stdin_open {
            fds.push(PollFd::new(stdin_fd, PollFlags::POLLIN));
        }
        let master_fd = master.as_ref().map(|m| m.as_fd());
        if master_open && let Some(m) = master_fd {
            fds.push(PollFd::new(m, PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll"),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if ready[0] {
            while let Ok(Some(si)) = sfd.read_signal() {
                let Ok(sig) = Signal::try_from(si.ssi_signo as i32) else {
                    continue;
                };
                match sig {
                    Signal::SIGCHLD => {}
                    Signal::SIGWINCH => {
                        if let Some(m) = &master {
                            copy_winsize(m.as_raw_fd());
                        }
                    }
                    s => {
                        let _ = kill(Pid::from_raw(pid), s);
                    }
                }
            }
        }
        let mut idx = 1;
        if stdin_open {
            if ready[idx]
                && let Some(m) = &master
            {
                match nix::unistd::read(stdin_fd, &mut buf) {
                    Ok(0) | Err(_) => stdin_open = false,
                    Ok(n) => {
                        let _ = write_all(m.as_fd(), &buf[..n]);
                    }
                }
            }
            idx += 1;
        }
        if master_open
            && ready.get(idx).copied().unwrap_or(false)
            && let Some(m) = &master
        {
            match nix::unistd::read(m, &mut buf) {
                Ok(0) | Err(_) => master_open = false,
                Ok(n) => {
                    let _ = stdout.write_all(&buf[..n]);
                    let _ = stdout.flush();
                }
            }
        }
    }
}

fn write_all(fd: BorrowedFd<'_>, mut b: &[u8]) -> nix::Result<()> {
    while !b.is_empty() {
        match nix::unistd::write(fd, b) {
            Ok(n) => b = &b[n..],
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Copies what is left in the terminal after the process exited.
fn drain(m: &OwnedFd, buf: &mut [u8], out: &mut std::io::Stdout) {
    let _ = nix::fcntl::fcntl(
        m,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    let mut f = std::fs::File::from(match m.try_clone() {
        Ok(f) => f,
        Err(_) => return,
    });
    while let Ok(n) = f.read(buf) {
        if n == 0 {
            break;
        }
        let _ = out.write_all(&buf[..n]);
    }
    let _ = out.flush();
}

/// The exit code of `pid` when it has exited; other exited children are reaped too.
fn reap(pid: i32) -> Result<Option<i32>> {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, c)) if p.as_raw() == pid => return Ok(Some(c)),
            Ok(WaitStatus::Signaled(p, s, _)) if p.as_raw() == pid => {
                return Ok(Some(128 + s as i32));
            }
            Ok(WaitStatus::StillAlive) => return Ok(None),
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            // Not our child (e.g. a re-executed supervisor): fall back to waiting on it.
            Err(Errno::ECHILD) => return Ok(Some(wait_exit_code(pid)?)),
            Err(e) => return Err(e).context("wait for the container"),
        }
    }
}

/// runc's `spec` output, with bungeo's hostname.
fn default_spec() -> serde_json::Value {
    let caps = serde_json::json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    serde_json::json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": true,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "ambient": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "bungeo",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                           {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                            "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                            "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_match_runc() {
        assert_eq!(
            log_line(
                LogFormat::Text,
                "error",
                "container \"x\" does not exist",
                "T"
            ),
            r#"time="T" level=error msg="container \"x\" does not exist""#
        );
        assert_eq!(
            log_line(LogFormat::Json, "error", "boom", "T"),
            r#"{"level":"error","msg":"boom","time":"T"}"#
        );
    }

    #[test]
    fn default_spec_is_a_valid_oci_spec() {
        let s: Spec = serde_json::from_value(default_spec()).unwrap();
        assert_eq!(s.hostname().as_deref(), Some("bungeo"));
        assert_eq!(s.mounts().as_ref().unwrap().len(), 7);
    }

    #[test]
    fn a_truncated_record_is_unreadable_and_removable() {
        let root = tempfile::tempdir().unwrap();
        assert!(!state_unreadable(root.path(), "c1"), "no record at all");
        let dir = root.path().join("c1");
        std::fs::create_dir(&dir).unwrap();
        let record = serde_json::json!({
            "oci_version": "1.0.2", "id": "c1", "init_pid": 1, "init_start_time": 1,
            "bundle": "/b", "rootfs": "/b/rootfs", "created": "T", "cgroups_path": "/c1",
            "systemd_cgroup": false
        });
        std::fs::write(dir.join(STATE_FILE), record.to_string()).unwrap();
        assert!(!state_unreadable(root.path(), "c1"), "a whole record");
        std::fs::write(dir.join(STATE_FILE), "").unwrap();
        assert!(state_unreadable(root.path(), "c1"));
        std::fs::write(dir.join(STATE_FILE), r#"{"oci_version":"1.0.2","id":"c"#).unwrap();
        assert!(state_unreadable(root.path(), "c1"));
        assert_eq!(remove_state_dir(root.path(), "c1").unwrap(), 0);
        assert!(!dir.exists());
    }

    #[test]
    fn users_parse() {
        assert_eq!(parse_user("1000").unwrap(), (1000, None));
        assert_eq!(parse_user("1000:50").unwrap(), (1000, Some(50)));
        assert!(parse_user("bob").is_err());
    }

    #[test]
    fn cli_parses_runc_style_invocations() {
        let c = Cli::try_parse_from([
            "bungeo-runtime",
            "--root",
            "/r",
            "--log",
            "/l",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/p",
            "c1",
        ])
        .unwrap();
        assert!(matches!(c.cmd, Cmd::Create { ref id, .. } if id == "c1"));
        assert_eq!(c.log_format, LogFormat::Json);
        let c = Cli::try_parse_from(["bungeo-runtime", "exec", "-t", "c1", "sh", "-c", "echo hi"])
            .unwrap();
        let Cmd::Exec { command, tty, .. } = c.cmd else {
            panic!()
        };
        assert!(tty);
        assert_eq!(command, ["sh", "-c", "echo hi"]);
        let c = Cli::try_parse_from(["bungeo-runtime", "kill", "--all", "c1", "KILL"]).unwrap();
        assert!(matches!(c.cmd, Cmd::Kill { all: true, .. }));
        let c = Cli::try_parse_from(["bungeo-runtime", "delete", "-f", "c1"]).unwrap();
        assert!(matches!(c.cmd, Cmd::Delete { force: true, .. }));
    }
}
