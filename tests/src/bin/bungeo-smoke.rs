//! What a new user does first, through a running daemon's socket: pull an image, run a pod with
//! a container, read its log, exec in it, then remove everything it made. CI runs it against
//! the daemon the README's first command (`hack/run`) starts.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bungeo_tests::cri::{Cri, image_spec};
use bungeo_tests::crilog::{read_log, stream_lines};
use bungeo_tests::scene::{container, pod_linux};
use bungeo_tests::workload::exec_sync;
use clap::Parser;
use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::{
    ContainerFilter, CreateContainerRequest, ListContainersRequest, PodSandboxConfig,
    PodSandboxMetadata, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    SecurityProfile, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};

/// Run one pod with one container through a CRI socket, and remove them.
#[derive(Debug, Parser)]
#[command(name = "bungeo-smoke")]
struct Args {
    /// The CRI socket.
    #[arg(long, default_value = "/run/bungeo/bungeo.sock")]
    socket: PathBuf,
    /// The image to run (it must have `sh`).
    #[arg(long)]
    image: String,
    /// How long to wait for the socket to serve.
    #[arg(long, default_value_t = 600)]
    wait_seconds: u64,
    /// Stop waiting for the socket as soon as this process (the one building and starting the
    /// daemon) is gone.
    #[arg(long)]
    daemon_pid: Option<u32>,
    /// Also check AppArmor (a node whose kernel enforces it): the container runs confined by
    /// this profile (RuntimeDefault), and a `Localhost` profile nobody loaded fails
    /// CreateContainer with a clear error, leaving no container behind.
    #[arg(long)]
    apparmor: Option<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let alive = || match args.daemon_pid {
        Some(pid) if !running(pid) => bail!("the daemon (pid {pid}) exited before it served"),
        _ => Ok(()),
    };
    let mut cri = Cri::wait_ready(&args.socket, Duration::from_secs(args.wait_seconds), alive)
        .await
        .context("the daemon never served")?;
    let v = cri.version().await?;
    println!(
        "smoke: connected to {} {}",
        v.runtime_name, v.runtime_version
    );
    cri.pull(&args.image, None).await.context("PullImage")?;
    println!("smoke: pulled {}", args.image);

    let logs = tempfile::tempdir()?;
    let unique = format!("smoke-{}", std::process::id());
    let config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: unique.clone(),
            uid: unique.clone(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: unique.clone(),
        log_directory: logs.path().to_string_lossy().into_owned(),
        labels: HashMap::from([("smoke".to_string(), unique.clone())]),
        linux: Some(pod_linux("")),
        ..Default::default()
    };
    let pod = cri
        .runtime
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    println!("smoke: pod {pod} runs");
    let mut outcome = in_pod(&mut cri, &pod, &config, &args, logs.path()).await;
    if outcome.is_ok()
        && let Some(profile) = &args.apparmor
    {
        outcome = unloaded_profile_is_refused(&mut cri, &pod, &config, &args.image, profile).await;
    }
    let removed = remove_pod(&mut cri, &pod).await;
    outcome?;
    removed?;
    cri.remove_image(&args.image).await.context("RemoveImage")?;
    println!("smoke: pod, container and image removed");
    Ok(())
}

/// Whether `pid` runs: it exists and is not a zombie (its parent, the script that started it,
/// reaps it only after this client is done).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s.rsplit_once(')')?.1.split_whitespace().next()?.to_owned();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

async fn in_pod(
    cri: &mut Cri,
    pod: &str,
    pod_config: &PodSandboxConfig,
    args: &Args,
    logs: &std::path::Path,
) -> Result<()> {
    let image = args.image.as_str();
    let mut config = container(
        "hello",
        image,
        &["sh", "-c", "echo hello from bungeo; exec sleep 3600"],
    );
    config.image = Some(image_spec(image));
    let id = cri
        .runtime
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(config.clone()),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .context("CreateContainer")?
        .into_inner()
        .container_id;
    let result = async {
        cri.runtime
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .context("StartContainer")?;
        println!("smoke: container {id} started");
        let log = logs.join(&config.log_path);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let lines = read_log(&log).map(|l| stream_lines(&l, "stdout"));
            if lines
                .as_ref()
                .is_ok_and(|l| l.iter().any(|s| s == "hello from bungeo"))
            {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "the container's log {} never said hello: {lines:?}",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("smoke: log read");
        let out = exec_sync(cri, &id, &["sh", "-c", "echo exec works; exit 3"]).await?;
        ensure!(
            String::from_utf8_lossy(&out.stdout) == "exec works\n" && out.exit_code == 3,
            "ExecSync answered {:?} with exit code {}",
            String::from_utf8_lossy(&out.stdout),
            out.exit_code
        );
        println!("smoke: exec works");
        if let Some(profile) = &args.apparmor {
            let out = exec_sync(cri, &id, &["cat", "/proc/self/attr/current"]).await?;
            let label = String::from_utf8_lossy(&out.stdout).trim().to_string();
            ensure!(
                label == format!("{profile} (enforce)"),
                "the container's AppArmor label is {label:?}, not {profile} (enforce)"
            );
            println!("smoke: the container runs confined by AppArmor profile {label}");
        }
        Ok(())
    }
    .await;
    cri.runtime
        .stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .context("StopContainer")?;
    cri.runtime
        .remove_container(RemoveContainerRequest { container_id: id })
        .await
        .context("RemoveContainer")?;
    result
}

async fn remove_pod(cri: &mut Cri, pod: &str) -> Result<()> {
    cri.runtime
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        })
        .await
        .context("StopPodSandbox")?;
    cri.runtime
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        })
        .await
        .context("RemovePodSandbox")?;
    Ok(())
}

/// A container asking for a Localhost AppArmor profile that nobody loaded is refused at
/// CreateContainer (it could never run: its exec would fail), and nothing of it is left.
async fn unloaded_profile_is_refused(
    cri: &mut Cri,
    pod: &str,
    pod_config: &PodSandboxConfig,
    image: &str,
    default_profile: &str,
) -> Result<()> {
    let mut config = container("unloaded", image, &["true"]);
    bungeo_tests::scene::security(&mut config).apparmor = Some(SecurityProfile {
        profile_type: ProfileType::Localhost as i32,
        localhost_ref: "bungeo-smoke-never-loaded".into(),
    });
    let got = cri
        .runtime
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        })
        .await;
    let status = match got {
        Ok(r) => bail!(
            "a container with an AppArmor profile nobody loaded was created: {}",
            r.into_inner().container_id
        ),
        Err(s) => s,
    };
    ensure!(
        status.code() == tonic::Code::InvalidArgument
            && status
                .message()
                .contains("\"bungeo-smoke-never-loaded\" is not loaded"),
        "CreateContainer with an unloaded profile answered {:?}: {}",
        status.code(),
        status.message()
    );
    let left = cri
        .runtime
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: pod.to_string(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers;
    ensure!(
        left.iter()
            .all(|c| c.metadata.as_ref().is_none_or(|m| m.name != "unloaded")),
        "the refused container was left behind: {left:?}"
    );
    println!(
        "smoke: an unloaded AppArmor profile is refused ({:?}: {}); RuntimeDefault is {default_profile}",
        status.code(),
        status.message()
    );
    Ok(())
}
