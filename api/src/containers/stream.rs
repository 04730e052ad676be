//! Streaming Exec through the shim, as containerd does it: FIFOs in the shim's state dir for
//! the process's stdin, stdout and stderr, a terminal resized through ResizePty, and the exec
//! process killed and deleted when the client goes away mid-stream, so nothing leaks.
//!
//! Attach goes through the shim's attach socket ([`bungeo_shim::attach`]): the shim fans the
//! init's output out to every attached client and holds the container's stdin open across
//! sessions, so attach works the same after a daemon restart.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bungeo_shim::attach::{FRAME_HEADER, FRAME_STDERR, FRAME_STDOUT, MODE_OUTPUT, MODE_STDIN};
use futures_util::future::BoxFuture;
use k8s_cri::v1 as cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::unix::pipe;
use tracing::{Instrument, debug, info_span, warn};

use super::exec::{not_running, read_spec};
use super::record::ContainerPhase;
use super::{Containers, shim_error};
use crate::errors::{Error, Result};
use crate::ids;
use crate::sandbox::Sandboxes;
use crate::shims::{Shim, ShimPaths};
use crate::streaming::{Backend, CommandRequest, Input, Outcome, Output, StreamIo};

/// How long a killed exec process may take to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Bytes moved per read from an output FIFO or the attach socket.
const CHUNK: usize = 256 * 1024;
/// The capacity asked for an exec's output FIFOs (the default 64 KiB makes the process and
/// the daemon take turns on every 64 KiB).
const FIFO_SIZE: i32 = 1 << 20;

/// What the streaming server drives in the daemon.
pub struct StreamBackend {
    pub containers: Arc<Containers>,
    pub sandboxes: Arc<Sandboxes>,
}

/// The process of a streaming exec: the container's own, running `cmd`, with a terminal if
/// asked.
fn process_json(
    record_spec: &oci_spec::runtime::Spec,
    cmd: &[String],
    tty: bool,
) -> Result<Vec<u8>> {
    let mut process = record_spec.process().clone().unwrap_or_default();
    process.set_args(Some(cmd.to_vec()));
    process.set_terminal(Some(tty));
    process.set_console_size(None);
    serde_json::to_vec(&process)
        .map_err(|e| Error::InvalidArgument(format!("Exec: cannot encode the exec process: {e}")))
}

fn mkfifo(path: &Path) -> Result<()> {
    let _ = std::fs::remove_file(path);
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| Error::io("create FIFO", path, io::Error::from(e)))
}

/// The pieces of an attach: the container, and a connection to its shim's attach socket.
struct Attached {
    id: String,
    shim: ShimPaths,
    /// The container was created with `stdin: true` (and `stdin_once`).
    stdin: bool,
    stdin_once: bool,
    tty: bool,
    sock: std::os::unix::net::UnixStream,
}

/// The pieces of a started exec process.
struct Started {
    id: String,
    exec_id: String,
    shim: ShimPaths,
    fifos: Vec<PathBuf>,
    stdout: Option<pipe::Receiver>,
    stderr: Option<pipe::Receiver>,
    stdin: Option<pipe::Sender>,
}

impl Containers {
    /// Checks an Exec or Attach request against the container: it exists and runs.
    pub fn check_streamable(&self, container_id: &str) -> Result<String> {
        let (id, _, record) = self.get(container_id)?;
        if record.phase != ContainerPhase::Running {
            return Err(not_running(&record));
        }
        Ok(id)
    }

    /// Connects to the attach socket of a running container. Blocking.
    fn open_attach(&self, container_id: &str) -> Result<Attached> {
        let (id, _, record) = self.get(container_id)?;
        if record.phase != ContainerPhase::Running {
            return Err(not_running(&record));
        }
        let sock = bungeo_shim::attach::connect(&record.shim.state_dir).map_err(|e| {
            Error::FailedPrecondition(format!(
                "Attach: container {} cannot be attached to: its shim's attach socket in {} \
                 does not answer ({e})",
                record.display(),
                record.shim.state_dir.display()
            ))
        })?;
        Ok(Attached {
            id,
            shim: record.shim.clone(),
            stdin: record.config.stdin,
            stdin_once: record.config.stdin_once,
            tty: record.config.tty,
            sock,
        })
    }

    /// Creates the FIFOs, registers and starts the exec process in the shim. Blocking.
    fn start_streaming_exec(&self, req: &CommandRequest) -> Result<Started> {
        let (id, _, record) = self.get(&req.container_id)?;
        if record.phase != ContainerPhase::Running {
            return Err(not_running(&record));
        }
        let what = record.display();
        let process = process_json(&read_spec(&record)?, &req.cmd, req.tty)?;
        let exec_id = format!("exec-{}", &ids::generate()[..16]);
        let dir = &record.shim.state_dir;
        let path = |s: &str| dir.join(format!("{exec_id}.{s}"));
        let mut fifos = Vec::new();
        let mut make = |wanted: bool, s: &str| -> Result<String> {
            if !wanted {
                return Ok(String::new());
            }
            let p = path(s);
            mkfifo(&p)?;
            fifos.push(p.clone());
            Ok(p.to_string_lossy().into_owned())
        };
        let made = (|| -> Result<(String, String, String)> {
            Ok((
                make(req.stdin, "stdin")?,
                make(req.stdout, "stdout")?,
                make(req.stderr && !req.tty, "stderr")?,
            ))
        })();
        let cleanup = |fifos: &[PathBuf]| {
            for f in fifos {
                let _ = std::fs::remove_file(f);
            }
        };
        let (stdin, stdout, stderr) = match made {
            Ok(v) => v,
            Err(e) => {
                cleanup(&fifos);
                return Err(e);
            }
        };
        let run = || -> Result<(Option<pipe::Receiver>, Option<pipe::Receiver>, Option<pipe::Sender>)> {
            // The read ends are open before the process starts, so output written by a process
            // that exits at once stays in the pipe for us.
            let open_rx = |p: &str| -> Result<Option<pipe::Receiver>> {
                if p.is_empty() {
                    return Ok(None);
                }
                let rx = pipe::OpenOptions::new()
                    .open_receiver(p)
                    .map_err(|e| Error::io("open exec output FIFO", p, e))?;
                // Best effort: past /proc/sys/fs/pipe-max-size the default stays.
                let _ = nix::fcntl::fcntl(&rx, nix::fcntl::FcntlArg::F_SETPIPE_SZ(FIFO_SIZE));
                Ok(Some(rx))
            };
            let out_rx = open_rx(&stdout)?;
            let err_rx = open_rx(&stderr)?;
            let shim = Shim::connect(&record.shim, &id).map_err(|e| shim_error(&what, "exec", e))?;
            shim.exec_streaming(&exec_id, process.clone(), &stdin, &stdout, &stderr, req.tty)
                .map_err(|e| shim_error(&what, "exec", e))?;
            if let Err(e) = shim.start(&exec_id) {
                let _ = shim.delete(&exec_id);
                return Err(shim_error(&what, "start the exec process", e));
            }
            // The shim holds the FIFO's read end now; opening the write end cannot fail for
            // want of a reader.
            let in_tx = if stdin.is_empty() {
                None
            } else {
                Some(
                    pipe::OpenOptions::new()
                        .open_sender(&stdin)
                        .map_err(|e| Error::io("open exec stdin FIFO", &stdin, e))?,
                )
            };
            Ok((out_rx, err_rx, in_tx))
        };
        match run() {
            Ok((stdout, stderr, stdin)) => Ok(Started {
                id,
                exec_id,
                shim: record.shim.clone(),
                fifos,
                stdout,
                stderr,
                stdin,
            }),
            Err(e) => {
                cleanup(&fifos);
                Err(e)
            }
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

async fn copy_out(mut rx: pipe::Receiver, out: Output) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = rx.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        out.write(&buf[..n]).await?;
    }
}

async fn copy_in(mut input: Input, mut tx: pipe::Sender) -> io::Result<()> {
    while let Some(chunk) = input.next().await {
        tx.write_all(&chunk).await?;
    }
    // Dropping the write end is the process's end of input.
    Ok(())
}

/// Passes the shim's output frames on to the client's streams until the shim closes the
/// connection (the container exited and all its output was sent).
async fn copy_frames(
    rd: tokio::net::unix::OwnedReadHalf,
    stdout: Option<Output>,
    stderr: Option<Output>,
) -> io::Result<()> {
    let mut rd = tokio::io::BufReader::with_capacity(CHUNK, rd);
    let mut payload = Vec::with_capacity(CHUNK);
    loop {
        let mut header = [0u8; FRAME_HEADER];
        match rd.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                ) =>
            {
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        payload.resize(len, 0);
        rd.read_exact(&mut payload).await?;
        let out = match header[0] {
            FRAME_STDOUT => stdout.as_ref(),
            FRAME_STDERR => stderr.as_ref(),
            _ => None,
        };
        if let Some(out) = out {
            out.write(&payload).await?;
        }
    }
}

/// Resizes the terminal of `exec_id` (empty: the init) for every size the client sends.
fn spawn_resizer(
    mut sizes: tokio::sync::mpsc::Receiver<crate::streaming::TermSize>,
    shim: ShimPaths,
    id: String,
    exec_id: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(size) = sizes.recv().await {
            let (shim, id, exec_id) = (shim.clone(), id.clone(), exec_id.clone());
            blocking(move || {
                Shim::connect(&shim, &id).and_then(|s| {
                    s.resize_pty(&exec_id, u32::from(size.width), u32::from(size.height))
                })
            })
            .await;
        }
    })
}

impl StreamBackend {
    async fn run_attach(
        containers: Arc<Containers>,
        req: CommandRequest,
        mut io: StreamIo,
    ) -> Outcome {
        let cid = req.container_id.clone();
        let attached = match blocking(move || containers.open_attach(&cid)).await {
            Some(Ok(a)) => a,
            Some(Err(e)) => return Outcome::Failed(e.to_string()),
            None => return Outcome::Failed("the attach task panicked".into()),
        };
        let Attached {
            id,
            shim,
            stdin,
            stdin_once,
            tty,
            sock,
        } = attached;
        let sock = match sock
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(sock))
        {
            Ok(s) => s,
            Err(e) => return Outcome::Failed(format!("attach socket: {e}")),
        };
        let (rd, mut wr) = sock.into_split();
        // A client's stdin goes to the container only if it was created with one (as
        // containerd: otherwise it is read and dropped).
        let input = io.stdin.take();
        let to_container = stdin && input.is_some();
        let mode = if to_container {
            MODE_STDIN
        } else {
            MODE_OUTPUT
        };
        if let Err(e) = wr.write_all(&[mode]).await {
            return Outcome::Failed(format!("attach socket: {e}"));
        }
        let output = tokio::spawn(copy_frames(rd, io.stdout.clone(), io.stderr.clone()));
        tokio::pin!(output);
        let mut stdin_task = input.map(|mut input| {
            tokio::spawn(async move {
                while let Some(chunk) = input.next().await {
                    if to_container && wr.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                if to_container {
                    // This client's input is over; the shim closes the container's stdin
                    // only for stdin_once.
                    let _ = wr.shutdown().await;
                }
            })
        });
        // Without stdin_once the session ends with the client's stdin, as containerd's and
        // docker's attach do; with it, output goes on until the container's ends.
        let ends_with_stdin = to_container && !stdin_once;
        let stdin_done = async {
            match stdin_task.as_mut() {
                Some(t) if ends_with_stdin => {
                    let _ = t.await;
                }
                _ => std::future::pending::<()>().await,
            }
        };
        let resize_task = match io.resize.take() {
            Some(sizes) if tty => Some(spawn_resizer(sizes, shim, id, String::new())),
            _ => None,
        };
        let outcome = tokio::select! {
            r = &mut output => match r {
                Ok(Ok(())) => Outcome::Exited(0),
                Ok(Err(e)) => Outcome::Failed(format!("attach: {e}")),
                Err(e) => Outcome::Failed(format!("attach: {e}")),
            },
            _ = stdin_done => Outcome::Exited(0),
            _ = io.gone.cancelled() => Outcome::Failed("the client went away".into()),
        };
        output.abort();
        if let Some(t) = stdin_task {
            t.abort();
        }
        if let Some(t) = resize_task {
            t.abort();
        }
        outcome
    }

    async fn run_exec(
        containers: Arc<Containers>,
        req: CommandRequest,
        mut io: StreamIo,
    ) -> Outcome {
        let c = Arc::clone(&containers);
        let r = req.clone();
        let started = match blocking(move || c.start_streaming_exec(&r)).await {
            Some(Ok(s)) => s,
            Some(Err(e)) => return Outcome::Failed(e.to_string()),
            None => return Outcome::Failed("the exec task panicked".into()),
        };
        let Started {
            id,
            exec_id,
            shim,
            fifos,
            stdout,
            stderr,
            stdin,
        } = started;
        let mut copies = Vec::new();
        if let (Some(rx), Some(out)) = (stdout, io.stdout.clone()) {
            copies.push(tokio::spawn(copy_out(rx, out)));
        }
        if let (Some(rx), Some(out)) = (stderr, io.stderr.clone()) {
            copies.push(tokio::spawn(copy_out(rx, out)));
        }
        let stdin_task = match (io.stdin.take(), stdin) {
            (Some(input), Some(tx)) => Some(tokio::spawn(copy_in(input, tx))),
            _ => None,
        };
        let resize_task = io
            .resize
            .take()
            .map(|sizes| spawn_resizer(sizes, shim.clone(), id.clone(), exec_id.clone()));
        let wait = {
            let (shim, id, exec_id) = (shim.clone(), id.clone(), exec_id.clone());
            tokio::task::spawn_blocking(move || {
                Shim::connect(&shim, &id).and_then(|s| s.wait(&exec_id, None))
            })
        };
        tokio::pin!(wait);
        let outcome = tokio::select! {
            w = &mut wait => match w {
                Ok(Ok(w)) => {
                    // All output is sent before the exit code.
                    let drain = futures_util::future::join_all(copies.iter_mut());
                    tokio::select! {
                        _ = drain => {}
                        _ = io.gone.cancelled() => {}
                    }
                    Outcome::Exited(i32::try_from(w.exit_status).unwrap_or(i32::MAX))
                }
                Ok(Err(e)) => Outcome::Failed(format!("wait for the exec process: {e}")),
                Err(e) => Outcome::Failed(format!("wait for the exec process: {e}")),
            },
            _ = io.gone.cancelled() => {
                debug!(%exec_id, "client went away: killing the exec process");
                let (shim, id, exec_id) = (shim.clone(), id.clone(), exec_id.clone());
                blocking(move || {
                    if let Ok(s) = Shim::connect(&shim, &id) {
                        if let Err(e) = s.kill(&exec_id, libc::SIGKILL, false)
                            && !e.is_not_found()
                        {
                            warn!(error = %e, "killing the abandoned exec process");
                        }
                        let _ = s.wait(&exec_id, Some(KILL_WAIT));
                    }
                })
                .await;
                Outcome::Failed("the client went away".into())
            }
        };
        for t in copies {
            t.abort();
        }
        if let Some(t) = stdin_task {
            t.abort();
        }
        if let Some(t) = resize_task {
            t.abort();
        }
        blocking(move || {
            if let Err(e) = Shim::connect(&shim, &id).and_then(|s| s.delete(&exec_id)) {
                warn!(error = %e, "deleting the exec process");
            }
            for f in fifos {
                let _ = std::fs::remove_file(f);
            }
        })
        .await;
        outcome
    }
}

impl Backend for StreamBackend {
    fn exec(&self, req: CommandRequest, io: StreamIo) -> BoxFuture<'static, Outcome> {
        let span = info_span!("exec", container_id = %req.container_id);
        Box::pin(Self::run_exec(Arc::clone(&self.containers), req, io).instrument(span))
    }

    fn attach(&self, req: CommandRequest, io: StreamIo) -> BoxFuture<'static, Outcome> {
        let span = info_span!("attach", container_id = %req.container_id);
        Box::pin(Self::run_attach(Arc::clone(&self.containers), req, io).instrument(span))
    }

    fn dial(&self, sandbox_id: &str, port: u16) -> BoxFuture<'static, io::Result<TcpStream>> {
        let record = match self.sandboxes.record(sandbox_id) {
            Ok(r) => r,
            Err(e) => {
                let e = io::Error::new(io::ErrorKind::NotFound, e.to_string());
                return Box::pin(async move { Err(e) });
            }
        };
        if on_node_network(&record.config) {
            // The pod's ports are the node's, as containerd dials them: from here.
            return Box::pin(crate::streaming::portforward::dial_here(port));
        }
        let netns = record.namespaces.net.clone().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("pod sandbox {sandbox_id} has no network namespace of its own"),
            )
        });
        Box::pin(async move { crate::streaming::portforward::dial_in_netns(netns?, port).await })
    }
}

/// Whether the pod shares the node's network namespace (and so the daemon's).
fn on_node_network(config: &cri::PodSandboxConfig) -> bool {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .is_some_and(|n| n.network == cri::NamespaceMode::Node as i32)
}
