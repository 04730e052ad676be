//! Disk and memory faults (bungeo only: these are properties of bungeo's store and shim).
//! - The image store's disk fills during a pull (the root on a 64 MiB loop-mounted ext4):
//!   once while a blob downloads, once while a layer unpacks. The pull fails with
//!   RESOURCE_EXHAUSTED naming the cause, nothing half written is left (the root holds the
//!   same files as before, every blob hashes to its name, the space is free again), the image
//!   is absent, the daemon stays up, and a small pull then succeeds.
//! - A container writes its stdout as fast as it can (`seq`) for `BUNGEO_FLOOD_SECS` (default
//!   15; the minute by hand): its shim's RSS stays flat and the log holds every number,
//!   in order, in well-formed CRI records.
//! - 50 containers print 200 numbered lines a second each for `BUNGEO_LOG_SECS` (default 10):
//!   every line is in its log, in order, well-formed.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bungeo_tests::bungeo::Bungeo;
use bungeo_tests::cri::Cri;
use bungeo_tests::crilog;
use bungeo_tests::images::{ConfigSpec, Image, Platform, Pusher, build_manifest};
use bungeo_tests::layer::{Compression, Flavor, Layer, LayerTree, SeededBytes, sha256_digest};
use bungeo_tests::loopfs::LoopFs;
use bungeo_tests::procstat;
use bungeo_tests::workload::{
    self, BusyboxRegistry, WAIT, container_config, container_pid, pod_config, remove_pod,
    run_container, run_pod,
};
use k8s_cri::v1::{ContainerState, ContainerStatus, ContainerStatusRequest, PodSandboxConfig};
use libtest_mimic::{Arguments, Failed, Trial};
use tonic::Code;

const NAMESPACE: &str = "bungeo-e2e-faults";
/// Size of the loop filesystem the store runs out of.
const SMALL_FS: u64 = 64 << 20;

/// A suite check: builds its own future on the trial's runtime.
type CheckFn = fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>>>>;

fn trial(name: &'static str, f: CheckFn) -> Trial {
    Trial::test(format!("bungeo::{name}"), move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .map_err(|e| Failed::from(format!("tokio runtime: {e}")))?;
        rt.block_on(f()).map_err(|e| Failed::from(format!("{e:#}")))
    })
}

fn main() {
    let args = Arguments::from_args();
    let trials = vec![
        trial(
            "disk_full_during_pull",
            || Box::pin(disk_full_during_pull()),
        ),
        trial("stdout_flood", || Box::pin(stdout_flood())),
        trial("log_lines_from_50_containers", || {
            Box::pin(log_lines_from_50_containers())
        }),
    ];
    libtest_mimic::run(&args, trials).exit()
}

/// A one-layer image whose only file is `data` at `/data/blob.bin`.
fn one_file_image(data: Vec<u8>, compression: Compression, label: &str) -> Result<Image> {
    let mut tree = LayerTree::new();
    tree.dir("data", 0o755).file("data/blob.bin", 0o644, data);
    let layer = Layer::new(&tree.tar()?, compression, Flavor::Oci)?;
    let spec = ConfigSpec {
        env: vec![format!("LABEL={label}")],
        ..ConfigSpec::default()
    };
    Ok(Image::Single(build_manifest(
        &Platform::host(),
        &spec,
        vec![(layer, format!("ADD {label}"))],
        Flavor::Oci,
    )?))
}

async fn disk_full_during_pull() -> Result<()> {
    let reg = BusyboxRegistry::start().await?;
    let pusher = Pusher::new(&reg.registry.host(), None);
    // 96 MiB that do not compress: the download itself overflows the filesystem.
    let blob_full = one_file_image(
        SeededBytes::new(64).take(96 << 20),
        Compression::None,
        "blob-full",
    )?;
    // 160 MiB of one repeated line gzip to well under a megabyte: the download fits, the
    // unpack does not. Not zeros: the unpacker writes runs of zeros as holes.
    let text: Vec<u8> = b"bungeo fills the disk\n"
        .iter()
        .copied()
        .cycle()
        .take(160 << 20)
        .collect();
    let unpack_full = one_file_image(text, Compression::Gzip, "unpack-full")?;
    let host = reg.registry.host();
    pusher.push("big/blob-full", Some("1"), &blob_full).await?;
    pusher
        .push("big/unpack-full", Some("1"), &unpack_full)
        .await?;

    let mut bungeo = Bungeo::start_with_config(&reg.hosts().bungeo_toml()).await?;
    let dir = workload::disk_tempdir("bungeo-e2e-loopfs-")?;
    // The daemon made its root at its first start; it gets a fresh one on the small
    // filesystem, mounted over the old one, at its restart.
    bungeo.terminate()?;
    let fs = LoopFs::mount(&dir.path().join("store.img"), SMALL_FS, bungeo.root())?;
    let result = async {
        bungeo.restart().await?;
        let mut cri = Cri::connect(bungeo.socket()).await?;
        for (what, reference) in [
            ("the blob download", format!("{host}/big/blob-full:1")),
            ("the layer unpack", format!("{host}/big/unpack-full:1")),
        ] {
            pull_fails_cleanly(&bungeo, &mut cri, &fs, &reference)
                .await
                .with_context(|| format!("disk full during {what}"))?;
        }
        let pid = bungeo.pid().context("bungeo has no pid")?;
        ensure!(procstat::alive(pid), "bungeo died");
        cri.pull(&reg.busybox(), None)
            .await
            .context("pull busybox after the failed pulls")?;
        ensure!(
            cri.image_status(&reg.busybox()).await?.is_some(),
            "busybox is not listed after its pull"
        );
        anyhow::Ok(())
    }
    .await;
    let log = bungeo.log_tail(20);
    if bungeo.pid().is_some() {
        bungeo.terminate()?;
    }
    drop(fs);
    result.map_err(|e| e.context(format!("bungeo log:\n{log}")))
}

/// Files below the root that a failed pull may change: the database file grows, nothing else.
fn root_files(root: &Path) -> BTreeSet<String> {
    procstat::files_below(root)
        .into_iter()
        .filter(|f| f != "meta.redb" && f != "lost+found")
        .collect()
}

async fn pull_fails_cleanly(
    bungeo: &Bungeo,
    cri: &mut Cri,
    fs: &LoopFs,
    reference: &str,
) -> Result<()> {
    let before = root_files(bungeo.root());
    let free_before = fs.free_bytes()?;
    let started = Instant::now();
    let err = match cri.pull(reference, None).await {
        Ok(id) => bail!("pulling {reference} onto a full disk succeeded: {id}"),
        Err(e) => e,
    };
    eprintln!(
        "{reference}: {:?} after {:.1?}: {}",
        err.code(),
        started.elapsed(),
        err.message()
    );
    ensure!(
        err.code() == Code::ResourceExhausted,
        "pull failed with {:?}, want ResourceExhausted: {}",
        err.code(),
        err.message()
    );
    ensure!(
        err.message().contains("No space left on device"),
        "the error does not name the cause: {}",
        err.message()
    );
    ensure!(
        cri.image_status(reference).await?.is_none(),
        "ImageStatus reports the image of the failed pull"
    );
    let after = root_files(bungeo.root());
    // Whole downloaded blobs may stay (each is verified against its digest below): a retry
    // need not fetch them again and garbage collection takes them. Nothing else may appear:
    // no temp file, no snapshot.
    let added: Vec<&String> = after
        .difference(&before)
        .filter(|f| !f.starts_with("content/blobs/sha256/"))
        .collect();
    let removed: Vec<&String> = before.difference(&after).collect();
    ensure!(
        added.is_empty() && removed.is_empty(),
        "the failed pull left files behind: added {added:?}, removed {removed:?}"
    );
    for name in &after {
        if let Some(hex) = name.strip_prefix("content/blobs/sha256/") {
            let data = std::fs::read(bungeo.root().join(name))?;
            ensure!(
                sha256_digest(&data) == format!("sha256:{hex}"),
                "blob {name} does not hash to its name"
            );
        }
    }
    // The failed download and unpack gave their space back (the database may have grown).
    let free_after = fs.free_bytes()?;
    ensure!(
        free_after + (2 << 20) >= free_before,
        "{} KiB free before the pull, {} KiB after",
        free_before >> 10,
        free_after >> 10
    );
    cri.version()
        .await
        .context("Version after the failed pull")?;
    Ok(())
}

async fn status(cri: &mut Cri, id: &str) -> Result<ContainerStatus> {
    cri.runtime
        .container_status(ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        })
        .await
        .with_context(|| format!("ContainerStatus {id}"))?
        .into_inner()
        .status
        .context("ContainerStatus without a status")
}

/// A pod with a log directory on disk.
fn logged_pod(name: &str, logs: &Path) -> PodSandboxConfig {
    let mut config = pod_config(NAMESPACE, name, "");
    config.log_directory = logs.to_string_lossy().into_owned();
    config
}

async fn stdout_flood() -> Result<()> {
    let secs = workload::env_knob("BUNGEO_FLOOD_SECS", 15)?;
    let reg = BusyboxRegistry::start().await?;
    let (bungeo, mut cri) = reg.bungeo("").await?;
    let logs = workload::disk_tempdir("bungeo-e2e-flood-")?;
    let config = logged_pod("flood", logs.path());
    let pod = run_pod(&mut cri, config.clone()).await?;
    let result = async {
        let id = run_container(
            &mut cri,
            &pod,
            &config,
            container_config(
                "seq",
                &reg.busybox(),
                &["/bin/busybox", "seq", "1", "1000000000000"],
            ),
        )
        .await?;
        let shim = procstat::parent(container_pid(&mut cri, &id).await?)?;
        let cmdline = std::fs::read(format!("/proc/{shim}/cmdline")).unwrap_or_default();
        ensure!(
            String::from_utf8_lossy(&cmdline).contains("shim"),
            "the container's parent {shim} is not its shim: {}",
            String::from_utf8_lossy(&cmdline)
        );
        // The first seconds fill buffers and the allocator's pools: not part of the figure.
        const WARM_UP: u64 = 3;
        let mut samples = Vec::new();
        let log = logs.path().join("seq.log");
        for s in 0..secs {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if s >= WARM_UP.min(secs.saturating_sub(2)) {
                samples.push(procstat::rss_bytes(shim)?);
            }
        }
        let size_while_running = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        workload::remove_container(&mut cri, &id, 0).await?;
        let (min, max) = (
            samples.iter().copied().min().unwrap_or(0),
            samples.iter().copied().max().unwrap_or(0),
        );
        let mut expected = 1u64;
        let mut tail = None;
        let records = crilog::for_each_line(&log, "stdout", |line| {
            let text = std::str::from_utf8(line).context("not UTF-8")?;
            ensure!(tail.is_none(), "line {text:?} after a cut line {tail:?}");
            if text == expected.to_string() {
                expected += 1;
            } else if expected.to_string().starts_with(text) {
                // The writer was killed mid-line: only the very last line may be cut.
                tail = Some(text.to_string());
            } else {
                bail!("line {text:?} where {expected} was due");
            }
            Ok(())
        })?;
        let lines = expected - 1;
        eprintln!(
            "flood: {lines} lines ({:.0} MiB, {:.1} MiB/s) in {records} records over {secs} s; \
             shim RSS {:.2}..{:.2} MiB after {WARM_UP} s",
            size_while_running as f64 / (1 << 20) as f64,
            size_while_running as f64 / (1 << 20) as f64 / secs as f64,
            min as f64 / (1 << 20) as f64,
            max as f64 / (1 << 20) as f64
        );
        ensure!(lines > 10_000 * secs, "only {lines} lines in {secs} s");
        ensure!(
            max - min < 4 << 20,
            "the shim's RSS moved by {} KiB over the flood: {samples:?}",
            (max - min) >> 10
        );
        anyhow::Ok(())
    }
    .await;
    let removal = remove_pod(&mut cri, &pod).await;
    result
        .and(removal)
        .map_err(|e| e.context(bungeo.log_tail(20)))
}

async fn log_lines_from_50_containers() -> Result<()> {
    const CONTAINERS: usize = 50;
    const PER_SECOND: u64 = 200;
    let secs = workload::env_knob("BUNGEO_LOG_SECS", 10)?;
    let per_container = PER_SECOND * secs;
    let reg = BusyboxRegistry::start().await?;
    let (bungeo, mut cri) = reg.bungeo("").await?;
    let logs = workload::disk_tempdir("bungeo-e2e-lograte-")?;
    let config = logged_pod("lograte", logs.path());
    let pod = run_pod(&mut cri, config.clone()).await?;
    let result = async {
        // 20 lines every tenth of a second; the shell's own time makes it a little under
        // 200 a second, which the rate figure below shows.
        let script = format!(
            "n=0; b=0; while [ $b -lt {} ]; do k=0; while [ $k -lt 20 ]; do n=$((n+1)); \
             echo \"$NAME $n\"; k=$((k+1)); done; b=$((b+1)); sleep 0.1; done",
            per_container / 20
        );
        let mut tasks = Vec::new();
        for i in 0..CONTAINERS {
            let (mut cri, config, pod, image, script) = (
                cri.clone(),
                config.clone(),
                pod.clone(),
                reg.busybox(),
                script.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let name = format!("c{i:02}");
                let mut c = container_config(&name, &image, &["sh", "-c", &script]);
                c.envs.push(k8s_cri::v1::KeyValue {
                    key: "NAME".into(),
                    value: name.clone(),
                });
                run_container(&mut cri, &pod, &config, c).await.map(|id| (name, id))
            }));
        }
        let mut containers = Vec::new();
        for t in tasks {
            containers.push(t.await??);
        }
        let deadline = Instant::now() + Duration::from_secs(secs * 4) + WAIT;
        for (name, id) in &containers {
            loop {
                let s = status(&mut cri, id).await?;
                if s.state() == ContainerState::ContainerExited {
                    ensure!(s.exit_code == 0, "{name} exited with {}", s.exit_code);
                    break;
                }
                ensure!(Instant::now() < deadline, "{name} still runs");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let (mut first, mut last) = (String::new(), String::new());
        let mut total = 0u64;
        for (name, _) in &containers {
            let path = logs.path().join(format!("{name}.log"));
            let mut expected = 1u64;
            crilog::for_each_line(&path, "stdout", |line| {
                let want = format!("{name} {expected}");
                ensure!(
                    line == want.as_bytes(),
                    "{name}: {:?} where {want:?} was due",
                    String::from_utf8_lossy(line)
                );
                expected += 1;
                Ok(())
            })?;
            ensure!(
                expected - 1 == per_container,
                "{name}: {} lines, want {per_container}",
                expected - 1
            );
            total += per_container;
            let text = std::fs::read_to_string(&path)?;
            let times: Vec<&str> = text.lines().filter_map(|l| l.split(' ').next()).collect();
            if let (Some(f), Some(l)) = (times.first(), times.last()) {
                if first.is_empty() || **f < *first {
                    first = f.to_string();
                }
                if **l > *last {
                    last = l.to_string();
                }
            }
        }
        eprintln!(
            "log rate: {total} lines from {CONTAINERS} containers checked, written between {first} and {last}"
        );
        anyhow::Ok(())
    }
    .await;
    let removal = remove_pod(&mut cri, &pod).await;
    result
        .and(removal)
        .map_err(|e| e.context(bungeo.log_tail(20)))
}
