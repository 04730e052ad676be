//! Exec, attach and port-forward through the CRI streaming servers, against bungeo and
//! against containerd 1.6 (the reference the client in `bungeo_tests::streaming` is proven
//! on): SPDY/3.1 and WebSocket, exit codes, TTY and resize, stdin EOF, attach, port-forward of
//! an HTTP server, 100 MiB transfers with their checksums, many streams at once, a client
//! that vanishes mid-stream, and bad or reused URLs.
//!
//! Where containerd 1.6 lacks something bungeo must have (v5.channel.k8s.io, the SPDY tunnel
//! for port-forward) the check says so and asserts each daemon's own behaviour.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bungeo_tests::cri::Target;
use bungeo_tests::images::PLAIN;
use bungeo_tests::scene::{self, Layout, strings};
use bungeo_tests::streaming::exec::{self, Options, RemoteCommand, TerminalSize, Transport};
use bungeo_tests::streaming::portforward::{self, PortForwarder};
use bungeo_tests::streaming::spdy::FlowControl;
use bungeo_tests::suite::{Ctx, run_suite};
use bungeo_tests::{check, ensure_eq};
use k8s_cri::v1::{AttachRequest, ExecRequest, NamespaceMode, PortForwardRequest};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() {
    run_suite(vec![
        check!(exec_spdy),
        check!(exec_websocket),
        check!(exec_tty_resize),
        check!(exec_stdin_eof),
        check!(attach),
        check!(port_forward_http),
        check!(port_forward_tunnel, only = Target::Bungeo),
        check!(port_forward_closed_port),
        check!(port_forward_host_network),
        check!(large_exec_stdout),
        check!(large_port_forward),
        check!(concurrent_streams),
        check!(disconnect_mid_stream),
        check!(bad_and_reused_urls),
    ])
}

const POD_NAMESPACE: &str = "bungeo-e2e-streaming";
const CGROUP_ROOT: &str = "bungeo-e2e-streaming";
/// 100 MiB: the large transfers.
const BIG: usize = 100 << 20;
/// Where the HTTP server's files are in its container.
const WWW: &str = "/tmp/www";
/// The HTTP server's port in the pod.
const HTTP_PORT: u16 = 8080;

const LAYOUT: Layout = Layout {
    namespace: POD_NAMESPACE,
    cgroup_root: CGROUP_ROOT,
};

/// A check's pods, removed at its end: a [`scene::Scene`] whose containers run busybox.
struct Scene {
    base: scene::Scene,
    /// The busybox reference, pulled.
    image: String,
}

bungeo_tests::wraps_scene!(Scene, base);

impl Scene {
    /// Creates and starts a container running `command`; `stdin` keeps its stdin open (for
    /// attach).
    async fn run(
        &mut self,
        pod: &str,
        name: &str,
        command: &[&str],
        stdin: bool,
    ) -> Result<String> {
        let mut config = scene::container(name, &self.image, command);
        config.stdin = stdin;
        self.base.run(pod, config).await
    }

    /// A pod with one `sleep` container: (pod, container).
    async fn sleeper(&mut self, name: &str) -> Result<(String, String)> {
        let pod = self.pod(name).await?;
        let c = self.run(&pod, "sleeper", &["sleep", "3600"], false).await?;
        Ok((pod, c))
    }

    /// The URL of an Exec of `cmd` with the streams `opts` names.
    async fn exec_url(&mut self, container: &str, cmd: &[&str], opts: &Options) -> Result<String> {
        Ok(self
            .cri
            .runtime
            .exec(ExecRequest {
                container_id: container.to_string(),
                cmd: strings(cmd),
                tty: opts.tty,
                stdin: opts.stdin,
                stdout: opts.stdout,
                stderr: opts.stderr && !opts.tty,
            })
            .await
            .with_context(|| format!("Exec {cmd:?}"))?
            .into_inner()
            .url)
    }

    async fn port_forward_url(&mut self, pod: &str, ports: &[i32]) -> Result<String> {
        Ok(self
            .cri
            .runtime
            .port_forward(PortForwardRequest {
                pod_sandbox_id: pod.to_string(),
                port: ports.to_vec(),
            })
            .await
            .with_context(|| format!("PortForward {ports:?}"))?
            .into_inner()
            .url)
    }

    /// ExecSync, output and exit code checked.
    async fn exec_sync(&mut self, container: &str, cmd: &[&str]) -> Result<String> {
        let r = self
            .base
            .exec(container, cmd, 60)
            .await
            .with_context(|| format!("ExecSync {cmd:?}"))?;
        ensure!(
            r.exit_code == 0,
            "ExecSync {cmd:?}: exit {}: {}",
            r.exit_code,
            String::from_utf8_lossy(&r.stderr)
        );
        Ok(String::from_utf8_lossy(&r.stdout).into_owned())
    }

    /// Exec with `opts` to its end.
    async fn exec(
        &mut self,
        container: &str,
        cmd: &[&str],
        opts: &Options,
        stdin: Option<&[u8]>,
    ) -> Result<exec::Finished> {
        let url = self.exec_url(container, cmd, opts).await?;
        exec::exec(&url, opts, stdin, &[])
            .await
            .with_context(|| format!("exec {cmd:?} over {:?} at {url}", opts.transport))
    }

    /// A pod running busybox httpd on [`HTTP_PORT`] serving [`WWW`] with `index.html`
    /// (`hello`); (pod, container).
    async fn http_server(&mut self, name: &str) -> Result<(String, String)> {
        let pod = self.pod(name).await?;
        let script = format!(
            "mkdir -p {WWW} && echo hello > {WWW}/index.html && exec /bin/busybox httpd -f -p {HTTP_PORT} -h {WWW}"
        );
        let c = self
            .run(&pod, "httpd", &["sh", "-c", &script], false)
            .await?;
        // Ready when it answers on its port (busybox wget, from inside the pod).
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = format!("http://127.0.0.1:{HTTP_PORT}/");
        loop {
            let r = self
                .base
                .exec(&c, &["wget", "-q", "-O", "-", &url], 10)
                .await?;
            if r.exit_code == 0 {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "httpd not answering: {}",
                String::from_utf8_lossy(&r.stderr)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok((pod, c))
    }
}

async fn with_scene<F>(ctx: &Ctx, check: &str, body: F) -> Result<()>
where
    F: AsyncFnOnce(&mut Scene) -> Result<()>,
{
    let image = ctx.fx.reference(PLAIN);
    let base = scene::Scene::with_image(ctx, ctx.cri.clone(), check, LAYOUT, &image).await?;
    scene::run_in(Scene { base, image }, body).await
}

/// The protocol each daemon must pick when every version is offered: containerd 1.6
/// predates v5.channel.k8s.io; bungeo speaks it.
fn newest_protocol(target: Target) -> &'static str {
    match target {
        Target::Bungeo => "v5.channel.k8s.io",
        Target::Containerd => "v4.channel.k8s.io",
    }
}

fn check_status(f: &exec::Finished, code: i32, what: &str) -> Result<()> {
    ensure_eq!(
        f.status.code,
        Some(code),
        "{what}: exit code (status {:?})",
        f.status.raw
    );
    // v4+ servers send the Status document even on success (kubelet's writeStatus).
    let status = f
        .status
        .status
        .as_ref()
        .with_context(|| format!("{what}: no metav1.Status on the error stream"))?;
    if code == 0 {
        ensure_eq!(status["status"], "Success", "{what}: status {status}");
    } else {
        ensure_eq!(status["status"], "Failure", "{what}: status {status}");
        ensure_eq!(
            status["reason"],
            "NonZeroExitCode",
            "{what}: reason {status}"
        );
    }
    Ok(())
}

/// Exec over SPDY: stdout and stderr apart, exit codes 0 and 3 from the Status, the newest
/// protocol negotiated, and each older version on request.
async fn exec_spdy(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "exec-spdy", async |s| {
        let (_, c) = s.sleeper("exec-spdy").await?;
        let opts = Options::new(Transport::SPDY);
        let f = s
            .exec(&c, &["sh", "-c", "echo out; echo err >&2"], &opts, None)
            .await?;
        ensure_eq!(f.protocol, newest_protocol(s.target), "negotiated protocol");
        ensure_eq!(f.stdout_text(), "out\n", "stdout");
        ensure_eq!(f.stderr_text(), "err\n", "stderr");
        check_status(&f, 0, "exit 0")?;
        let f = s
            .exec(&c, &["sh", "-c", "echo bye; exit 3"], &opts, None)
            .await?;
        ensure_eq!(f.stdout_text(), "bye\n", "stdout");
        check_status(&f, 3, "exit 3")?;
        for p in [
            "v4.channel.k8s.io",
            "v3.channel.k8s.io",
            "v2.channel.k8s.io",
            "channel.k8s.io",
        ] {
            let opts = Options::new(Transport::SPDY).protocols(&[p]);
            let f = s.exec(&c, &["sh", "-c", "echo $0", p], &opts, None).await?;
            ensure_eq!(f.protocol, p, "negotiated protocol");
            ensure_eq!(f.stdout_text(), format!("{p}\n"), "stdout over {p}");
            ensure_eq!(f.status.code, Some(0), "exit over {p}: {:?}", f.status.raw);
        }
        // Before v4 a failure is a message, not a Status.
        let opts = Options::new(Transport::SPDY).protocols(&["v3.channel.k8s.io"]);
        let f = s.exec(&c, &["sh", "-c", "exit 3"], &opts, None).await?;
        ensure!(
            f.status.code.is_none() && f.status.raw.contains('3'),
            "v3 failure: {:?}",
            f.status
        );
        // No protocol in common: 403, as httpstream.Handshake answers.
        let opts = Options::new(Transport::SPDY).protocols(&["v9.channel.k8s.io"]);
        let url = s.exec_url(&c, &["true"], &opts).await?;
        let err = RemoteCommand::open(&url, &opts)
            .await
            .err()
            .context("an unknown protocol was accepted")?;
        ensure_eq!(err.http_status(), Some(403), "unknown protocol: {err}");
        Ok(())
    })
    .await
}

/// Exec over WebSocket: v4 (exit codes through channel 3), and v5 where the daemon has it
/// (containerd 1.6 does not: offered v5 and v4 it picks v4; offered only v5 it refuses).
async fn exec_websocket(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "exec-ws", async |s| {
        let (_, c) = s.sleeper("exec-ws").await?;
        let v4 = Options::new(Transport::WebSocket).protocols(&["v4.channel.k8s.io"]);
        let f = s
            .exec(&c, &["sh", "-c", "echo out; echo err >&2"], &v4, None)
            .await?;
        ensure_eq!(f.protocol, "v4.channel.k8s.io", "protocol");
        ensure_eq!(f.stdout_text(), "out\n", "stdout");
        ensure_eq!(f.stderr_text(), "err\n", "stderr");
        check_status(&f, 0, "v4 exit 0")?;
        let f = s.exec(&c, &["sh", "-c", "exit 3"], &v4, None).await?;
        check_status(&f, 3, "v4 exit 3")?;

        let both = Options::new(Transport::WebSocket)
            .protocols(&["v5.channel.k8s.io", "v4.channel.k8s.io"]);
        let f = s.exec(&c, &["echo", "hi"], &both, None).await?;
        ensure_eq!(
            f.protocol,
            newest_protocol(s.target),
            "protocol offered v5,v4"
        );
        ensure_eq!(f.stdout_text(), "hi\n", "stdout");
        check_status(&f, 0, "exit 0")?;
        if s.target == Target::Bungeo {
            // v5: stdin closes through channel 255, so `cat` ends.
            let v5 = Options::new(Transport::WebSocket)
                .protocols(&["v5.channel.k8s.io"])
                .stdin();
            let f = s
                .exec(&c, &["cat"], &v5, Some(b"through v5\n".as_slice()))
                .await?;
            ensure_eq!(f.stdout_text(), "through v5\n", "cat over v5");
            check_status(&f, 0, "cat over v5")?;
            let f = s
                .exec(&c, &["sh", "-c", "exit 3"], &v5, Some(b"".as_slice()))
                .await?;
            check_status(&f, 3, "v5 exit 3")?;
        } else {
            let v5 = Options::new(Transport::WebSocket).protocols(&["v5.channel.k8s.io"]);
            let url = s.exec_url(&c, &["true"], &v5).await?;
            ensure!(
                RemoteCommand::open(&url, &v5).await.is_err(),
                "containerd 1.6 accepted v5.channel.k8s.io: the check's premise is out of date"
            );
        }
        Ok(())
    })
    .await
}

/// Exec with a TTY over SPDY and WebSocket: output through the pty, `stty size` follows the
/// resize stream, the exit code comes back.
async fn exec_tty_resize(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "exec-tty", async |s| {
        let (_, c) = s.sleeper("exec-tty").await?;
        let script = r#"while read l; do [ "$l" = quit ] && exit 7; /bin/busybox stty size; done"#;
        for transport in [Transport::SPDY, Transport::WebSocket] {
            let opts = Options::new(transport)
                .protocols(&["v4.channel.k8s.io"])
                .stdin()
                .tty();
            let url = s.exec_url(&c, &["sh", "-c", script], &opts).await?;
            let mut cmd = RemoteCommand::open(&url, &opts)
                .await
                .with_context(|| format!("open {url} over {transport:?}"))?;
            let mut stdout = cmd.stdout.take().context("no stdout")?;
            ensure!(cmd.stderr.is_none(), "a TTY exec has no stderr stream");
            let mut seen = String::new();
            for (w, h) in [(123u16, 45u16), (80, 24)] {
                cmd.resize(TerminalSize {
                    width: w,
                    height: h,
                })
                .await?;
                let want = format!("{h} {w}");
                let deadline = Instant::now() + Duration::from_secs(15);
                // The resize and the line race through the server: ask until it shows.
                'asking: loop {
                    cmd.write_stdin(b"size\n").await?;
                    let until = Instant::now() + Duration::from_millis(300);
                    while let Ok(Some(chunk)) =
                        tokio::time::timeout_at(until.into(), stdout.read()).await
                    {
                        seen.push_str(&String::from_utf8_lossy(&chunk));
                        if seen.contains(&want) {
                            break 'asking;
                        }
                    }
                    ensure!(
                        Instant::now() < deadline,
                        "{transport:?}: no `{want}` after resizing to {w}x{h}: {seen:?}"
                    );
                }
                seen.clear();
            }
            cmd.write_stdin(b"quit\n").await?;
            let rest = stdout.read_to_end().await;
            seen.push_str(&String::from_utf8_lossy(&rest));
            // The pty turns \n into \r\n.
            ensure!(
                !seen.contains("size\n") || seen.contains("\r\n"),
                "no pty: {seen:?}"
            );
            let status = cmd.wait().await?;
            ensure_eq!(
                status.code,
                Some(7),
                "{transport:?}: exit code ({:?})",
                status.raw
            );
        }
        Ok(())
    })
    .await
}

/// A pseudo-random buffer (xorshift), so no two checks move the same bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// stdin round trip with EOF over SPDY: 4 MiB through `cat` (more than any window), once as
/// kubectl (no flow control) and once with SPDY/3.1 flow control; and `wc -c` counts what
/// arrived before EOF.
async fn exec_stdin_eof(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "exec-stdin", async |s| {
        let (_, c) = s.sleeper("exec-stdin").await?;
        let data = noise(4 << 20, 7);
        for flow in [FlowControl::Kubectl, FlowControl::Spdy31] {
            let opts = Options::new(Transport::Spdy(flow)).stdin();
            let f = s.exec(&c, &["cat"], &opts, Some(&data)).await?;
            ensure!(
                f.stdout == data,
                "{flow:?}: cat gave {} bytes, sent {} (same: {})",
                f.stdout.len(),
                data.len(),
                f.stdout.get(..data.len()) == Some(&data[..])
            );
            check_status(&f, 0, "cat")?;
            let f = s
                .exec(&c, &["wc", "-c"], &opts, Some(&data[..12345]))
                .await?;
            let counted = f.stdout_text();
            ensure_eq!(counted.trim(), "12345", "{flow:?}: wc -c");
        }
        Ok(())
    })
    .await
}

/// Attach to a running `cat` started with `stdin: true`: a line written comes back on
/// stdout; detaching leaves the container running.
async fn attach(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "attach", async |s| {
        let pod = s.pod("attach").await?;
        let c = s.run(&pod, "cat", &["cat"], true).await?;
        for (i, transport) in [Transport::SPDY, Transport::WebSocket]
            .into_iter()
            .enumerate()
        {
            let url = s
                .cri
                .runtime
                .attach(AttachRequest {
                    container_id: c.clone(),
                    stdin: true,
                    tty: false,
                    stdout: true,
                    stderr: true,
                })
                .await
                .context("Attach")?
                .into_inner()
                .url;
            let opts = Options::new(transport)
                .protocols(&["v4.channel.k8s.io"])
                .stdin();
            let mut cmd = RemoteCommand::open(&url, &opts)
                .await
                .with_context(|| format!("attach over {transport:?} at {url}"))?;
            let mut stdout = cmd.stdout.take().context("no stdout")?;
            let line = format!("attached line {i}\n");
            cmd.write_stdin(line.as_bytes()).await?;
            let mut seen = String::new();
            let deadline = Instant::now() + Duration::from_secs(15);
            while !seen.contains(&line) {
                match tokio::time::timeout_at(deadline.into(), stdout.read()).await {
                    Ok(Some(chunk)) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                    Ok(None) => bail!("{transport:?}: stdout ended after {seen:?}"),
                    Err(_) => bail!("{transport:?}: {line:?} not echoed; got {seen:?}"),
                }
            }
            drop(stdout);
            drop(cmd);
        }
        // Detached: the container still runs and answers.
        let out = s.exec_sync(&c, &["echo", "alive"]).await?;
        ensure_eq!(out, "alive\n", "exec after detaching");
        Ok(())
    })
    .await
}

/// Port-forward of an HTTP server in a pod over SPDY and WebSocket: a page, and several
/// connections at once through one SPDY session.
async fn port_forward_http(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "pf-http", async |s| {
        let (pod, _) = s.http_server("pf-http").await?;
        for transport in [
            portforward::Transport::SPDY,
            portforward::Transport::Spdy(FlowControl::Spdy31),
            portforward::Transport::WebSocket,
        ] {
            let url = s.port_forward_url(&pod, &[i32::from(HTTP_PORT)]).await?;
            let pf = PortForwarder::connect(&url, transport)
                .await
                .with_context(|| format!("port-forward over {transport:?} at {url}"))?;
            let mut conn = pf.dial(HTTP_PORT).await?;
            let (status, body) = portforward::http_get(&mut conn, "/index.html").await?;
            ensure_eq!(status, 200, "{transport:?}: status");
            ensure_eq!(
                String::from_utf8_lossy(&body),
                "hello\n",
                "{transport:?}: body"
            );
            let err = conn.error_text().await;
            ensure!(err.is_empty(), "{transport:?}: error stream says {err:?}");
            if transport != portforward::Transport::WebSocket {
                let mut conns = Vec::new();
                for _ in 0..5 {
                    conns.push(pf.dial(HTTP_PORT).await?);
                }
                let gets = conns
                    .iter_mut()
                    .map(|c| portforward::http_get(c, "/index.html"));
                for r in futures_util::future::join_all(gets).await {
                    let (status, body) = r?;
                    ensure!(
                        status == 200 && body == b"hello\n",
                        "{transport:?}: concurrent GET: {status} {body:?}"
                    );
                }
            }
        }
        Ok(())
    })
    .await
}

/// The SPDY tunnel through a WebSocket (`SPDY/3.1+portforward.k8s.io`, kubectl 1.30+).
/// containerd 1.6 has no such thing, so this is bungeo's alone.
async fn port_forward_tunnel(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "pf-tunnel", async |s| {
        let (pod, _) = s.http_server("pf-tunnel").await?;
        let url = s.port_forward_url(&pod, &[i32::from(HTTP_PORT)]).await?;
        let pf = PortForwarder::connect(&url, portforward::Transport::Tunnel(FlowControl::Kubectl))
            .await
            .with_context(|| format!("tunnel at {url}"))?;
        for _ in 0..3 {
            let mut conn = pf.dial(HTTP_PORT).await?;
            let (status, body) = portforward::http_get(&mut conn, "/index.html").await?;
            ensure!(
                status == 200 && body == b"hello\n",
                "tunnel GET: {status} {body:?}"
            );
        }
        Ok(())
    })
    .await
}

/// A port nobody listens on: the error stream says so.
async fn port_forward_closed_port(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "pf-closed", async |s| {
        let (pod, _) = s.sleeper("pf-closed").await?;
        let url = s.port_forward_url(&pod, &[9]).await?;
        let pf = PortForwarder::connect(&url, portforward::Transport::SPDY).await?;
        let mut conn = pf.dial(9).await?;
        let mut io = conn.take_io().context("io")?;
        let _ = io.write_all(b"x").await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), io.read_to_end(&mut buf)).await;
        let err = tokio::time::timeout(Duration::from_secs(20), conn.error_text())
            .await
            .context("the error stream did not end")?;
        ensure!(
            err.contains("refused") || err.contains("9"),
            "error stream for a closed port: {err:?} (data {buf:?})"
        );
        Ok(())
    })
    .await
}

/// Port-forward to a pod on the node's network reaches the port in the node's network
/// namespace (containerd dials there for these pods): a server this test runs on 127.0.0.1.
async fn port_forward_host_network(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "pf-host", async |s| {
        let mut config = s.pod_config("pf-host");
        // kubelet sends no hostname and no DNS config for a pod on the node's network.
        config.hostname.clear();
        config.dns_config = None;
        scene::pod_security(&mut config)
            .namespace_options
            .get_or_insert_with(scene::pod_namespaces)
            .network = NamespaceMode::Node as i32;
        let pod = s.run_pod(config).await?;

        let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .await
            .context("listen on 127.0.0.1")?;
        let port = listener.local_addr()?.port();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await?;
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while conn.read(&mut b).await? == 1 && b[0] != b'\n' {
                line.push(b[0]);
            }
            conn.write_all(format!("host got {}\n", String::from_utf8_lossy(&line)).as_bytes())
                .await?;
            conn.shutdown().await?;
            anyhow::Ok(())
        });
        let url = s.port_forward_url(&pod, &[i32::from(port)]).await?;
        let pf = PortForwarder::connect(&url, portforward::Transport::SPDY).await?;
        let mut conn = pf.dial(port).await?;
        let answer = tokio::time::timeout(
            Duration::from_secs(30),
            portforward::round_trip(&mut conn, b"ping\n"),
        )
        .await
        .context("no answer through the forward")?;
        let err = conn.error_text().await;
        server.abort();
        let answer = answer?;
        ensure_eq!(
            String::from_utf8_lossy(&answer),
            "host got ping\n",
            "answer (error stream: {err:?})"
        );
        ensure!(err.is_empty(), "error stream says {err:?}");
        Ok(())
    })
    .await
}

/// 100 MiB of random bytes through exec stdout, over SPDY as kubectl and over WebSocket, with
/// the checksum the container computes.
async fn large_exec_stdout(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "big-exec", async |s| {
        let (_, c) = s.sleeper("big-exec").await?;
        let file = "/tmp/big";
        s.exec_sync(
            &c,
            &["sh", "-c", &format!("head -c {BIG} /dev/urandom > {file}")],
        )
        .await?;
        let want = s
            .exec_sync(&c, &["/bin/busybox", "sha256sum", file])
            .await?;
        let want = want
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        for transport in [Transport::SPDY, Transport::WebSocket] {
            let opts = Options::new(transport).protocols(&["v4.channel.k8s.io"]);
            let url = s.exec_url(&c, &["cat", file], &opts).await?;
            let started = Instant::now();
            let mut cmd = RemoteCommand::open(&url, &opts).await?;
            let mut stdout = cmd.stdout.take().context("stdout")?;
            let mut stderr = cmd.stderr.take().context("stderr")?;
            let (hashed, err) = tokio::join!(
                async {
                    let mut h = Sha256::new();
                    let mut n = 0usize;
                    while let Some(chunk) = stdout.read().await {
                        n += chunk.len();
                        h.update(&chunk);
                    }
                    (n, hex::encode(h.finalize()))
                },
                stderr.read_to_end()
            );
            let status = cmd.wait().await?;
            let took = started.elapsed();
            ensure_eq!(hashed.0, BIG, "{transport:?}: bytes");
            ensure_eq!(hashed.1, want, "{transport:?}: sha256");
            ensure!(err.is_empty(), "stderr: {}", String::from_utf8_lossy(&err));
            ensure_eq!(
                status.code,
                Some(0),
                "{transport:?}: exit ({:?})",
                status.raw
            );
            eprintln!(
                "{}: 100 MiB exec stdout over {transport:?} in {took:?}",
                s.target
            );
        }
        Ok(())
    })
    .await
}

/// 100 MiB through port-forward (SPDY with flow control, and WebSocket) from the pod's HTTP
/// server, with its checksum.
async fn large_port_forward(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "big-pf", async |s| {
        let (pod, c) = s.http_server("big-pf").await?;
        s.exec_sync(
            &c,
            &[
                "sh",
                "-c",
                &format!("head -c {BIG} /dev/urandom > {WWW}/big"),
            ],
        )
        .await?;
        let want = s
            .exec_sync(&c, &["/bin/busybox", "sha256sum", &format!("{WWW}/big")])
            .await?;
        let want = want
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        for transport in [
            portforward::Transport::Spdy(FlowControl::Spdy31),
            portforward::Transport::WebSocket,
        ] {
            let url = s.port_forward_url(&pod, &[i32::from(HTTP_PORT)]).await?;
            let started = Instant::now();
            let pf = PortForwarder::connect(&url, transport).await?;
            let mut conn = pf.dial(HTTP_PORT).await?;
            let (status, body) = portforward::http_get(&mut conn, "/big").await?;
            let took = started.elapsed();
            ensure_eq!(status, 200, "{transport:?}: status");
            ensure_eq!(body.len(), BIG, "{transport:?}: bytes");
            ensure_eq!(
                hex::encode(Sha256::digest(&body)),
                want,
                "{transport:?}: sha256"
            );
            eprintln!(
                "{}: 100 MiB port-forward over {transport:?} in {took:?}",
                s.target
            );
        }
        Ok(())
    })
    .await
}

/// 20 execs at once over SPDY and WebSocket, each with its own output and exit code.
async fn concurrent_streams(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "concurrent", async |s| {
        let (_, c) = s.sleeper("concurrent").await?;
        let mut urls = Vec::new();
        for i in 0..20 {
            let transport = if i % 2 == 0 {
                Transport::SPDY
            } else {
                Transport::WebSocket
            };
            let opts = Options::new(transport).protocols(&["v4.channel.k8s.io"]);
            let cmd = ["sh", "-c", "sleep 0.5; echo exec-$0; exit $(($0 % 5))"];
            let n = i.to_string();
            let mut argv = cmd.to_vec();
            argv.push(&n);
            urls.push((i, opts.clone(), s.exec_url(&c, &argv, &opts).await?));
        }
        let started = Instant::now();
        let runs = urls.iter().map(|(i, opts, url)| async move {
            let f = exec::exec(url, opts, None, &[]).await;
            (*i, f)
        });
        for (i, f) in futures_util::future::join_all(runs).await {
            let f = f.with_context(|| format!("exec {i}"))?;
            ensure_eq!(f.stdout_text(), format!("exec-{i}\n"), "exec {i} stdout");
            ensure_eq!(
                f.status.code,
                Some(i % 5),
                "exec {i} exit ({:?})",
                f.status.raw
            );
        }
        // They ran at once, not one after another.
        let took = started.elapsed();
        ensure!(
            took < Duration::from_secs(8),
            "20 execs of 0.5 s took {took:?}"
        );
        Ok(())
    })
    .await
}

/// A client that vanishes mid-stream (TCP closed, no goodbye) leaves no exec process behind,
/// and the container still execs and stops normally.
async fn disconnect_mid_stream(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "disconnect", async |s| {
        let (_, c) = s.sleeper("disconnect").await?;
        let marker = "disconnect-marker";
        let script = format!("while true; do echo {marker}; sleep 0.05; done");
        for transport in [Transport::SPDY, Transport::WebSocket] {
            let opts = Options::new(transport).protocols(&["v4.channel.k8s.io"]);
            let url = s
                .exec_url(&c, &["sh", "-c", &script, marker], &opts)
                .await?;
            let mut cmd = RemoteCommand::open(&url, &opts).await?;
            let mut stdout = cmd.stdout.take().context("stdout")?;
            let first = tokio::time::timeout(Duration::from_secs(10), stdout.read())
                .await
                .context("no output before the disconnect")?;
            ensure!(first.is_some(), "stdout ended at once");
            let ps = s.exec_sync(&c, &["ps", "-o", "pid,args"]).await?;
            ensure!(ps.contains(marker), "the exec is not running:\n{ps}");
            drop(stdout);
            drop(cmd);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let ps = s.exec_sync(&c, &["ps", "-o", "pid,args"]).await?;
                if !ps.contains(marker) {
                    ensure!(
                        s.target == Target::Bungeo,
                        "containerd 1.6 now ends an abandoned exec: the check's premise is out of date"
                    );
                    break;
                }
                if Instant::now() >= deadline {
                    // containerd 1.6 runs a streaming exec under a background context and
                    // keeps draining its output: the exec outlives its client. bungeo must not.
                    ensure!(
                        s.target == Target::Containerd,
                        "{transport:?}: the exec still runs 10 s after its client vanished:\n{ps}"
                    );
                    let pids: Vec<&str> = ps
                        .lines()
                        .filter(|l| l.contains(marker) && !l.contains("ps -o"))
                        .filter_map(|l| l.split_whitespace().next())
                        .collect();
                    let mut argv = vec!["kill", "-9"];
                    argv.extend(pids);
                    s.exec_sync(&c, &argv).await?;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let out = s.exec_sync(&c, &["echo", "still here"]).await?;
        ensure_eq!(out, "still here\n", "exec after the disconnects");
        let started = Instant::now();
        s.cri
            .runtime
            .stop_container(k8s_cri::v1::StopContainerRequest {
                container_id: c.clone(),
                timeout: 0,
            })
            .await
            .context("StopContainer after the disconnects")?;
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "StopContainer took {:?}",
            started.elapsed()
        );
        Ok(())
    })
    .await
}

/// A made-up token and a used one are 404, over SPDY and WebSocket, for exec, attach and
/// port-forward.
async fn bad_and_reused_urls(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "bad-urls", async |s| {
        let (pod, c) = s.sleeper("bad-urls").await?;
        let opts = Options::new(Transport::SPDY).protocols(&["v4.channel.k8s.io"]);
        let url = s.exec_url(&c, &["true"], &opts).await?;
        let (base, _) = url.rsplit_once('/').context("URL without a token")?;
        for (what, bad) in [
            ("exec", format!("{base}/NotAToken")),
            (
                "exec",
                format!(
                    "{}/exec/NotAToken",
                    base.rsplit_once('/').map_or(base, |(b, _)| b)
                ),
            ),
            (
                "attach",
                format!(
                    "{}/attach/NotAToken",
                    base.rsplit_once('/').map_or(base, |(b, _)| b)
                ),
            ),
        ] {
            for transport in [Transport::SPDY, Transport::WebSocket] {
                let o = Options::new(transport).protocols(&["v4.channel.k8s.io"]);
                let err = RemoteCommand::open(&bad, &o)
                    .await
                    .err()
                    .with_context(|| format!("{what} {bad} over {transport:?} was accepted"))?;
                ensure_eq!(
                    err.http_status(),
                    Some(404),
                    "{what} {bad} over {transport:?}: {err}"
                );
            }
        }
        let pf_base = format!(
            "{}/portforward/NotAToken",
            base.rsplit_once('/').map_or(base, |(b, _)| b)
        );
        let err = PortForwarder::connect(&pf_base, portforward::Transport::SPDY)
            .await
            .err()
            .context("a made-up port-forward token was accepted")?;
        ensure_eq!(
            err.http_status(),
            Some(404),
            "port-forward {pf_base}: {err}"
        );

        // Used once, then again.
        let f = exec::exec(&url, &opts, None, &[]).await?;
        ensure_eq!(f.status.code, Some(0), "first use");
        for transport in [Transport::SPDY, Transport::WebSocket] {
            let o = Options::new(transport).protocols(&["v4.channel.k8s.io"]);
            let err = RemoteCommand::open(&url, &o)
                .await
                .err()
                .with_context(|| format!("reused {url} over {transport:?} was accepted"))?;
            ensure_eq!(
                err.http_status(),
                Some(404),
                "reused URL over {transport:?}: {err}"
            );
        }
        let pf_url = s.port_forward_url(&pod, &[80]).await?;
        drop(PortForwarder::connect(&pf_url, portforward::Transport::SPDY).await?);
        let err = PortForwarder::connect(&pf_url, portforward::Transport::SPDY)
            .await
            .err()
            .context("a reused port-forward URL was accepted")?;
        ensure_eq!(
            err.http_status(),
            Some(404),
            "reused port-forward URL: {err}"
        );
        Ok(())
    })
    .await
}
