//! Prometheus metrics of the daemon itself, in the text exposition format 0.0.4, served over
//! plain HTTP on `[metrics] address` (off unless configured).
//!
//! Counters and histograms (CRI calls by method and code, pulls) live in one process-wide
//! registry that the call paths update with a short lock; the gauges (pods and containers by
//! state, shims and their memory) are computed when scraped.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use k8s_cri::v1 as cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::{debug, warn};

use crate::containers::{ContainerPhase, ContainerRecord, Containers};
use crate::reservation::lock;
use crate::sandbox::Sandboxes;
use crate::shims::Shim;

/// Content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The path metrics are served on.
pub const METRICS_PATH: &str = "/metrics";

/// Upper bounds (seconds) of the CRI call latency buckets.
const CALL_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Upper bounds (seconds) of the pull duration buckets.
const PULL_BUCKETS: [f64; 11] = [
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// A cumulative histogram over fixed bounds.
#[derive(Debug, Clone, PartialEq)]
struct Histogram {
    bounds: &'static [f64],
    /// Observations at or below each bound (not yet cumulative).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// `name_bucket{labels,le=...}`, `name_sum`, `name_count` lines.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

#[derive(Debug)]
struct Pulls {
    succeeded: u64,
    failed: u64,
    bytes: u64,
    duration: Histogram,
}

/// The counters and histograms of the process.
#[derive(Debug)]
pub struct Registry {
    requests: Mutex<BTreeMap<(&'static str, i32), u64>>,
    durations: Mutex<BTreeMap<&'static str, Histogram>>,
    pulls: Mutex<Pulls>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            requests: Mutex::new(BTreeMap::new()),
            durations: Mutex::new(BTreeMap::new()),
            pulls: Mutex::new(Pulls {
                succeeded: 0,
                failed: 0,
                bytes: 0,
                duration: Histogram::new(&PULL_BUCKETS),
            }),
        }
    }
}

/// The process-wide registry.
pub fn global() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

/// gRPC code names as grpc-go spells them (`OK`, `NotFound`, ...).
fn code_name(code: i32) -> String {
    match Code::from(code) {
        Code::Ok => "OK".to_owned(),
        other => format!("{other:?}"),
    }
}

/// Escapes a label value: backslash, double quote and newline.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The gauges computed at scrape time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeGauges {
    /// CRI pod state name → count.
    pub pods: BTreeMap<&'static str, u64>,
    /// CRI container state name → count.
    pub containers: BTreeMap<&'static str, u64>,
    /// Shim processes running.
    pub shims: u64,
    /// Their resident memory, summed.
    pub shim_rss_bytes: u64,
    /// GetContainerEvents subscribers.
    pub event_subscribers: u64,
}

impl Registry {
    /// Counts one CRI call and its duration.
    pub fn observe_request(&self, method: &'static str, code: Code, seconds: f64) {
        *lock(&self.requests)
            .entry((method, code as i32))
            .or_insert(0) += 1;
        lock(&self.durations)
            .entry(method)
            .or_insert_with(|| Histogram::new(&CALL_BUCKETS))
            .observe(seconds);
    }

    /// Counts one pull: whether it succeeded, the image's size and how long it took.
    pub fn observe_pull(&self, succeeded: bool, bytes: u64, seconds: f64) {
        let mut pulls = lock(&self.pulls);
        if succeeded {
            pulls.succeeded += 1;
            pulls.bytes += bytes;
        } else {
            pulls.failed += 1;
        }
        pulls.duration.observe(seconds);
    }

    /// The text format of everything, with `gauges`.
    pub fn render(&self, gauges: &RuntimeGauges) -> String {
        let mut out = String::new();
        let header = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };
        header(
            &mut out,
            "bungeo_cri_requests_total",
            "counter",
            "CRI calls served, by method and gRPC code.",
        );
        for ((method, code), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "bungeo_cri_requests_total{{method=\"{}\",code=\"{}\"}} {n}",
                escape(method),
                code_name(*code)
            );
        }
        header(
            &mut out,
            "bungeo_cri_request_duration_seconds",
            "histogram",
            "How long CRI calls took, by method.",
        );
        for (method, h) in lock(&self.durations).iter() {
            h.render(
                &mut out,
                "bungeo_cri_request_duration_seconds",
                &format!("method=\"{}\"", escape(method)),
            );
        }
        {
            let pulls = lock(&self.pulls);
            header(
                &mut out,
                "bungeo_image_pulls_total",
                "counter",
                "Image pulls, by outcome.",
            );
            let _ = writeln!(
                out,
                "bungeo_image_pulls_total{{outcome=\"success\"}} {}",
                pulls.succeeded
            );
            let _ = writeln!(
                out,
                "bungeo_image_pulls_total{{outcome=\"failure\"}} {}",
                pulls.failed
            );
            header(
                &mut out,
                "bungeo_image_pull_bytes_total",
                "counter",
                "Size of the images pulled successfully, in bytes.",
            );
            let _ = writeln!(out, "bungeo_image_pull_bytes_total {}", pulls.bytes);
            header(
                &mut out,
                "bungeo_image_pull_duration_seconds",
                "histogram",
                "How long image pulls took.",
            );
            pulls
                .duration
                .render(&mut out, "bungeo_image_pull_duration_seconds", "");
        }
        header(
            &mut out,
            "bungeo_pods",
            "gauge",
            "Pod sandboxes, by CRI state.",
        );
        for (state, n) in &gauges.pods {
            let _ = writeln!(out, "bungeo_pods{{state=\"{state}\"}} {n}");
        }
        header(
            &mut out,
            "bungeo_containers",
            "gauge",
            "Containers, by CRI state.",
        );
        for (state, n) in &gauges.containers {
            let _ = writeln!(out, "bungeo_containers{{state=\"{state}\"}} {n}");
        }
        header(
            &mut out,
            "bungeo_shims",
            "gauge",
            "bungeo-shim processes running.",
        );
        let _ = writeln!(out, "bungeo_shims {}", gauges.shims);
        header(
            &mut out,
            "bungeo_shim_memory_rss_bytes",
            "gauge",
            "Resident memory of all bungeo-shim processes, summed.",
        );
        let _ = writeln!(
            out,
            "bungeo_shim_memory_rss_bytes {}",
            gauges.shim_rss_bytes
        );
        header(
            &mut out,
            "bungeo_container_event_subscribers",
            "gauge",
            "GetContainerEvents streams open.",
        );
        let _ = writeln!(
            out,
            "bungeo_container_event_subscribers {}",
            gauges.event_subscribers
        );
        out
    }
}

/// Field 22 (start time) of `/proc/<pid>/stat`.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// `key:  value kB` of `/proc/<pid>/status`, in the unit written.
fn status_field(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The shim binary's name as the kernel shows it (`comm`).
const SHIM_COMM: &str = "bungeo-shim";

/// Computes the gauges: what the daemon holds, and the shims found through `/proc`.
pub struct GaugeSource {
    containers: Arc<Containers>,
    sandboxes: Arc<Sandboxes>,
    /// Container id → its shim's pid and start time, so a scrape seldom asks a shim.
    shim_pids: Mutex<HashMap<String, (u32, u64)>>,
}

impl GaugeSource {
    /// Gauges over the daemon's pods and containers.
    pub fn new(containers: Arc<Containers>, sandboxes: Arc<Sandboxes>) -> GaugeSource {
        GaugeSource {
            containers,
            sandboxes,
            shim_pids: Mutex::new(HashMap::new()),
        }
    }

    /// The shim pid of a container whose shim runs: the parent of its init when that is a
    /// shim (it is the container's parent), else what the shim says over its socket.
    fn shim_pid(&self, record: &ContainerRecord) -> Option<u32> {
        if let Some(&(pid, started)) = lock(&self.shim_pids).get(&record.id)
            && start_time(pid) == Some(started)
        {
            return Some(pid);
        }
        let by_parent = (record.pid != 0 && record.phase != ContainerPhase::Exited)
            .then(|| {
                let status =
                    std::fs::read_to_string(format!("/proc/{}/status", record.pid)).ok()?;
                let ppid = u32::try_from(status_field(&status, "PPid")?).ok()?;
                let comm = std::fs::read_to_string(format!("/proc/{ppid}/comm")).ok()?;
                (comm.trim() == SHIM_COMM).then_some(ppid)
            })
            .flatten();
        let pid = match by_parent {
            Some(pid) => pid,
            None => Shim::connect(&record.shim, &record.id)
                .and_then(|s| s.shim_pid())
                .ok()?,
        };
        let started = start_time(pid)?;
        lock(&self.shim_pids).insert(record.id.clone(), (pid, started));
        Some(pid)
    }

    /// Counts by state, and the shims' memory (blocking: reads `/proc`).
    pub fn gauges(&self) -> RuntimeGauges {
        let mut g = RuntimeGauges::default();
        for state in [
            cri::PodSandboxState::SandboxReady,
            cri::PodSandboxState::SandboxNotready,
        ] {
            g.pods.insert(state.as_str_name(), 0);
        }
        for p in self.sandboxes.list(None) {
            *g.pods.entry(p.state().as_str_name()).or_insert(0) += 1;
        }
        for state in [
            cri::ContainerState::ContainerCreated,
            cri::ContainerState::ContainerRunning,
            cri::ContainerState::ContainerExited,
            cri::ContainerState::ContainerUnknown,
        ] {
            g.containers.insert(state.as_str_name(), 0);
        }
        let records = self.containers.snapshots();
        for r in &records {
            let state = crate::containers::record::cri_state(r.phase);
            *g.containers.entry(state.as_str_name()).or_insert(0) += 1;
        }
        for r in records
            .iter()
            .filter(|r| r.phase != ContainerPhase::Creating)
        {
            let Some(pid) = self.shim_pid(r) else {
                continue;
            };
            g.shims += 1;
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                g.shim_rss_bytes += status_field(&status, "VmRSS").unwrap_or(0) * 1024;
            }
        }
        let live: std::collections::HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
        lock(&self.shim_pids).retain(|id, _| live.contains(id.as_str()));
        g.event_subscribers = self.containers.events().subscribers() as u64;
        g
    }
}

/// Renders the metrics page: the registry and the gauges of `source`.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Longest request head read.
const MAX_HEAD: usize = 8 << 10;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `listener` until `shutdown`: a minimal HTTP/1.1 responder, one
/// request per connection.
pub async fn serve(listener: TcpListener, render: Render, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let render = Arc::clone(&render);
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, render).await {
                        debug!(%peer, error = %e, "metrics request");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The status line and body for a request line (`GET /metrics HTTP/1.1`).
fn route(request_line: &str) -> (&'static str, Option<&'static str>) {
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", METRICS_PATH) => ("200 OK", None),
        (_, METRICS_PATH) => ("405 Method Not Allowed", Some("only GET and HEAD\n")),
        _ => ("404 Not Found", Some("metrics are at /metrics\n")),
    }
}

async fn answer(mut stream: TcpStream, render: Render) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    match read {
        Ok(r) => r?,
        Err(_) => return Ok(()),
    }
    let text = String::from_utf8_lossy(&head);
    let request_line = text.lines().next().unwrap_or("");
    let head_only = request_line.starts_with("HEAD ");
    let (status, fixed) = route(request_line);
    let (body, content_type) = match fixed {
        Some(body) => (body.to_owned(), "text/plain; charset=utf-8"),
        None => {
            let body = tokio::task::spawn_blocking(move || render())
                .await
                .map_err(std::io::Error::other)?;
            (body, CONTENT_TYPE)
        }
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A strict reading of the text format: every sample line is `name{labels} value`, each
    /// name has a TYPE, histogram buckets are cumulative and end with `+Inf` = `_count`.
    pub(crate) fn check_exposition(text: &str) -> Result<usize, String> {
        let mut types: HashMap<String, String> = HashMap::new();
        let mut samples = 0;
        let mut last_bucket: HashMap<String, f64> = HashMap::new();
        let mut inf: HashMap<String, f64> = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').ok_or(line)?;
                types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').ok_or(line)?;
            let value: f64 = value.parse().map_err(|_| format!("value of {line}"))?;
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.strip_suffix('}').ok_or(line)?),
                None => (series, ""),
            };
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            {
                return Err(format!("bad name in {line}"));
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(name);
            if !types.contains_key(family) {
                return Err(format!("no TYPE for {line}"));
            }
            if name.ends_with("_bucket") {
                let key = without_le(labels) + name;
                let previous = last_bucket.insert(key.clone(), value).unwrap_or(0.0);
                if value < previous {
                    return Err(format!("buckets not cumulative at {line}"));
                }
                if labels.contains("le=\"+Inf\"") {
                    inf.insert(key, value);
                }
            }
            if name.ends_with("_count") {
                let family = name.trim_end_matches("_count");
                let key = labels.to_owned() + family + "_bucket";
                if let Some(total) = inf.get(&key)
                    && *total != value
                {
                    return Err(format!("+Inf bucket {total} but {line}"));
                }
            }
            samples += 1;
        }
        Ok(samples)
    }

    /// The labels of a bucket line without its `le`.
    fn without_le(labels: &str) -> String {
        labels
            .split(',')
            .filter(|l| !l.starts_with("le="))
            .collect::<Vec<_>>()
            .join(",")
    }

    #[test]
    fn renders_strict_text_format_with_cumulative_buckets() {
        let r = Registry::default();
        r.observe_request("Version", Code::Ok, 0.0002);
        r.observe_request("Version", Code::Ok, 0.02);
        r.observe_request("PullImage", Code::NotFound, 1.5);
        r.observe_pull(true, 1000, 2.0);
        r.observe_pull(false, 0, 0.1);
        let mut gauges = RuntimeGauges {
            shims: 2,
            shim_rss_bytes: 4096,
            ..Default::default()
        };
        gauges.pods.insert("SANDBOX_READY", 1);
        gauges.containers.insert("CONTAINER_RUNNING", 2);
        let text = r.render(&gauges);
        check_exposition(&text).unwrap();
        assert!(
            text.contains("bungeo_cri_requests_total{method=\"Version\",code=\"OK\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("bungeo_cri_requests_total{method=\"PullImage\",code=\"NotFound\"} 1\n")
        );
        assert!(text.contains(
            "bungeo_cri_request_duration_seconds_bucket{method=\"Version\",le=\"0.0005\"} 1\n"
        ));
        assert!(text.contains(
            "bungeo_cri_request_duration_seconds_bucket{method=\"Version\",le=\"+Inf\"} 2\n"
        ));
        assert!(text.contains("bungeo_cri_request_duration_seconds_count{method=\"Version\"} 2\n"));
        assert!(text.contains("bungeo_image_pulls_total{outcome=\"success\"} 1\n"));
        assert!(text.contains("bungeo_image_pull_bytes_total 1000\n"));
        assert!(text.contains("bungeo_image_pull_duration_seconds_count 2\n"));
        assert!(text.contains("bungeo_pods{state=\"SANDBOX_READY\"} 1\n"));
        assert!(text.contains("bungeo_shim_memory_rss_bytes 4096\n"));
        assert!(
            check_exposition("x{a=\"b\"} 1\n").is_err(),
            "no TYPE must fail"
        );
        let decreasing = "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n";
        assert!(
            check_exposition(decreasing).is_err(),
            "buckets must be cumulative"
        );
        let miscounted = "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n";
        assert!(
            check_exposition(miscounted).is_err(),
            "+Inf must equal _count"
        );
    }

    #[test]
    fn label_values_are_escaped_and_proc_fields_read() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let status = "Name:\tbungeo-shim\nPPid:\t1\nVmRSS:\t    2048 kB\n";
        assert_eq!(status_field(status, "VmRSS"), Some(2048));
        assert_eq!(status_field(status, "PPid"), Some(1));
        assert_eq!(status_field(status, "VmSwap"), None);
        assert!(start_time(std::process::id()).is_some());
    }

    #[test]
    fn routes_only_metrics() {
        assert_eq!(route("GET /metrics HTTP/1.1").0, "200 OK");
        assert_eq!(route("GET /metrics?x=1 HTTP/1.1").0, "200 OK");
        assert_eq!(route("HEAD /metrics HTTP/1.0").0, "200 OK");
        assert_eq!(route("POST /metrics HTTP/1.1").0, "405 Method Not Allowed");
        assert_eq!(route("GET / HTTP/1.1").0, "404 Not Found");
        assert_eq!(route("").0, "404 Not Found");
    }

    #[tokio::test]
    async fn serves_the_page_over_http_until_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let render: Render = Arc::new(|| "# HELP up Up.\n# TYPE up gauge\nup 1\n".to_owned());
        let server = tokio::spawn(serve(listener, render, stop.clone()));
        let get = |path: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain; version=0.0.4"),
            "{ok}"
        );
        assert!(
            ok.ends_with("\r\n\r\n# HELP up Up.\n# TYPE up gauge\nup 1\n"),
            "{ok}"
        );
        assert!(get("/other").await.starts_with("HTTP/1.1 404"));
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }
}
