//! `hack/bench streaming`: exec and port-forward through the CRI streaming servers of bungeo
//! and containerd in one run, interleaved: ExecSync round trip (`true`), streaming exec round
//! trip (Exec call, SPDY upgrade, streams, `true`, exit status), and port-forward throughput
//! (an HTTP GET of 128 MiB from busybox httpd in the pod, over SPDY as kubectl speaks it).
//! Prints p50/p95 and MiB/s with ratios against the goals.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bungeo_tests::benchkit::{Setup, Side, Table, clean_up_after, goal, median, ratio_at};
use bungeo_tests::streaming::exec::{self, Options, Transport};
use bungeo_tests::streaming::portforward::{self, PortForwarder};
use bungeo_tests::workload;
use clap::Parser;
use k8s_cri::v1::{ExecRequest, PortForwardRequest};

#[derive(Parser)]
#[command(about = "Exec latency and port-forward throughput: bungeo vs containerd")]
struct Args {
    /// Round trips per exec kind and daemon.
    #[arg(long, default_value_t = 50)]
    iterations: usize,
    /// MiB per port-forward transfer.
    #[arg(long, default_value_t = 128)]
    mib: usize,
    /// Port-forward transfers per daemon.
    #[arg(long, default_value_t = 3)]
    transfers: usize,
}

/// The Kubernetes namespace and the cgroup root of the benchmark's pod.
const BENCH: &str = "bungeo-bench-streaming";
const HTTP_PORT: u16 = 8080;

struct Daemon {
    side: Side,
    container: String,
    exec_sync: Vec<Duration>,
    exec_stream: Vec<Duration>,
    /// MiB/s of each transfer.
    forward: Vec<f64>,
}

impl Daemon {
    fn new(side: Side) -> Self {
        Self {
            side,
            container: String::new(),
            exec_sync: Vec::new(),
            exec_stream: Vec::new(),
            forward: Vec::new(),
        }
    }

    /// One pod running busybox httpd with a `mib` MiB random file to serve.
    async fn setup(&mut self, image: &str, mib: usize) -> Result<()> {
        let sandbox = self.side.pod_config("streaming")?;
        let script = format!(
            "mkdir -p /www && head -c {} /dev/urandom > /www/big && exec /bin/busybox httpd -f -p {HTTP_PORT} -h /www",
            mib << 20
        );
        let config = Side::container_config(&sandbox, "httpd", image, &["sh", "-c", &script])?;
        let pod = self.side.run_pod(sandbox.clone()).await?;
        self.container = self.side.run_container(&pod, &sandbox, config).await?;
        // Ready when httpd answers inside the pod.
        let url = format!("http://127.0.0.1:{HTTP_PORT}/big");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = workload::exec_sync(
                &mut self.side.cri,
                &self.container,
                &["wget", "-q", "-O", "/dev/null", &url],
            )
            .await
            .with_context(|| self.side.name)?;
            if r.exit_code == 0 {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{}: httpd not answering",
                self.side.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn exec_sync_once(&mut self) -> Result<Duration> {
        let t = Instant::now();
        let r = workload::exec_sync(&mut self.side.cri, &self.container, &["true"])
            .await
            .with_context(|| self.side.name)?;
        let took = t.elapsed();
        ensure!(
            r.exit_code == 0,
            "{}: true exited {}",
            self.side.name,
            r.exit_code
        );
        Ok(took)
    }

    async fn exec_stream_once(&mut self) -> Result<Duration> {
        let opts = Options::new(Transport::SPDY);
        let t = Instant::now();
        let url = self
            .side
            .cri
            .runtime
            .exec(ExecRequest {
                container_id: self.container.clone(),
                cmd: vec!["true".into()],
                tty: false,
                stdin: false,
                stdout: true,
                stderr: true,
            })
            .await
            .with_context(|| format!("{}: Exec", self.side.name))?
            .into_inner()
            .url;
        let f = exec::exec(&url, &opts, None, &[])
            .await
            .with_context(|| format!("{}: exec over SPDY at {url}", self.side.name))?;
        let took = t.elapsed();
        ensure!(
            f.status.code == Some(0),
            "{}: streaming exec status {:?}",
            self.side.name,
            f.status.raw
        );
        Ok(took)
    }

    async fn forward_once(&mut self, mib: usize) -> Result<f64> {
        let pod = self.side.pods.first().cloned().context("no pod")?;
        let t = Instant::now();
        let url = self
            .side
            .cri
            .runtime
            .port_forward(PortForwardRequest {
                pod_sandbox_id: pod,
                port: vec![i32::from(HTTP_PORT)],
            })
            .await
            .with_context(|| format!("{}: PortForward", self.side.name))?
            .into_inner()
            .url;
        let pf = PortForwarder::connect(&url, portforward::Transport::SPDY).await?;
        let mut conn = pf.dial(HTTP_PORT).await?;
        let (status, body) = portforward::http_get(&mut conn, "/big").await?;
        let took = t.elapsed();
        ensure!(
            status == 200 && body.len() == mib << 20,
            "{}: GET /big: {status}, {} bytes",
            self.side.name,
            body.len()
        );
        Ok(mib as f64 / took.as_secs_f64())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.iterations > 0 && args.transfers > 0 && args.mib > 0,
        "--iterations, --transfers and --mib must be at least 1"
    );
    let setup = Setup::start().await?;
    // Kept until the end: dropping one stops its daemon.
    let (_bungeo, _containerd, sides) = setup.start_daemons(BENCH).await?;
    let image = setup.image();
    let mut daemons = sides.map(Daemon::new);
    let result = async {
        for d in daemons.iter_mut() {
            d.setup(&image, args.mib).await?;
        }
        // One of each first, unmeasured: connections and caches warm.
        for d in daemons.iter_mut() {
            d.exec_sync_once().await?;
            d.exec_stream_once().await?;
        }
        for _ in 0..args.iterations {
            for d in daemons.iter_mut() {
                let t = d.exec_sync_once().await?;
                d.exec_sync.push(t);
                let t = d.exec_stream_once().await?;
                d.exec_stream.push(t);
            }
        }
        for _ in 0..args.transfers {
            for d in daemons.iter_mut() {
                let r = d.forward_once(args.mib).await?;
                d.forward.push(r);
            }
        }
        anyhow::Ok(())
    }
    .await;
    clean_up_after(result, daemons.iter_mut().map(|d| &mut d.side)).await?;
    report(&args, &daemons);
    Ok(())
}

fn report(args: &Args, daemons: &[Daemon; 2]) {
    let [b, c] = daemons;
    println!(
        "{} round trips per exec kind, {} port-forward transfers of {} MiB, per daemon, interleaved",
        args.iterations, args.transfers, args.mib
    );
    let table = Table::new(44);
    println!("{}", table.header(""));
    let rows = [
        ("ExecSync `true`", &b.exec_sync, &c.exec_sync),
        (
            "exec `true` over SPDY (URL+upgrade+exit)",
            &b.exec_stream,
            &c.exec_stream,
        ),
    ];
    for (label, vb, vc) in rows {
        println!("{}", table.percentile_rows(label, vb, vc, &[50, 95], 2));
    }
    let (fb, fc) = (median(&b.forward), median(&c.forward));
    println!(
        "{}",
        table.rate_row("port-forward GET over SPDY (median)", fb, fc)
    );
    let sync = ratio_at(&b.exec_sync, &c.exec_sync, 50);
    let stream = ratio_at(&b.exec_stream, &c.exec_stream, 50);
    println!(
        "{}",
        goal(
            "ExecSync latency p50 <= 0.5x containerd's",
            sync,
            sync <= 0.5
        )
    );
    println!(
        "{}",
        goal(
            "streaming exec latency p50 <= 0.5x containerd's",
            stream,
            stream <= 0.5
        )
    );
    println!(
        "{}",
        goal("port-forward throughput >= containerd's", fb / fc, fb >= fc)
    );
}
