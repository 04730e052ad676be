//! The CRI container calls, run against bungeo and against containerd (the reference): the
//! lifecycle, exit codes, logs, env and args, users, read-only rootfs, volumes, the writable
//! layer, stop with a timeout, name reservation, ExecSync, and (bungeo only) containers that
//! outlive a `kill -9` of the daemon.
//!
//! Checks run side by side on one daemon per target, so each works in pods of its own (the
//! `check` label), with a log directory and a cgroup parent of its own, and removes all of it
//! at its end, also when it fails. Where the two daemons legitimately answer differently the
//! check says so and asserts each daemon's own behaviour.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bungeo_tests::bungeo::Bungeo;
use bungeo_tests::cri::{Cri, Target};
use bungeo_tests::crilog::{read_log, stream_lines};
use bungeo_tests::images::{ENTRYPOINT, PLAIN, USER_NAME, USER_UID, ZSTD};
use bungeo_tests::leftovers;
use bungeo_tests::scene::{self, Layout, Scene, WAIT, now_ns, security, strings};
use bungeo_tests::suite::{Ctx, run_suite};
use bungeo_tests::workload;
use bungeo_tests::{check, ensure_eq};
use k8s_cri::v1::{
    ContainerConfig, ContainerFilter, ContainerState, ContainerStateValue, CreateContainerRequest,
    Int64Value, KeyValue, LinuxContainerResources, ListPodSandboxRequest, Mount, NamespaceMode,
    PodSandboxConfig, PodSandboxFilter, RemovePodSandboxRequest, ReopenContainerLogRequest,
    RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
    UpdateContainerResourcesRequest,
};
use tonic::Code;

fn main() {
    run_suite(vec![
        check!(lifecycle),
        check!(exit_codes),
        check!(missing_command),
        check!(log_format),
        check!(log_partial_lines),
        check!(env_args_and_entrypoint),
        check!(users),
        check!(readonly_rootfs),
        check!(shared_host_dir),
        check!(writable_layer_gone),
        check!(stop_timeout_then_kill),
        check!(same_name_and_attempt),
        check!(next_attempt_after_exit),
        check!(many_pods),
        check!(exec_sync),
        check!(shared_pid_namespace),
        check!(image_removed_under_running_container),
        check!(stop_and_remove_pod),
        check!(unknown_ids),
        check!(oom_killed),
        check!(update_resources),
        check!(reopen_log),
        check!(restart_recovery, only = Target::Bungeo),
    ])
}

/// The Kubernetes namespace of every test pod.
const POD_NAMESPACE: &str = "bungeo-e2e-containers";
/// The first component of every test pod's cgroup parent.
const CGROUP_ROOT: &str = "bungeo-e2e-containers";
const LAYOUT: Layout = Layout {
    namespace: POD_NAMESPACE,
    cgroup_root: CGROUP_ROOT,
};

/// [`scene::container`] labelled `container=<name>`, for the checks that filter on labels.
fn container(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    let mut config = scene::container(name, image, command);
    config.labels = HashMap::from([("container".to_string(), name.to_string())]);
    config
}

/// Runs `body` in a fresh scene on the check's daemon, then tears the scene down; the body's
/// error wins.
async fn with_scene<F>(ctx: &Ctx, check: &str, body: F) -> Result<()>
where
    F: AsyncFnOnce(&mut Scene) -> Result<()>,
{
    scene::with_scene(ctx, LAYOUT, check, body).await
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn by_state(state: ContainerState) -> Option<ContainerStateValue> {
    Some(ContainerStateValue {
        state: state as i32,
    })
}

async fn lifecycle(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "lifecycle", async |s| {
        let image = s.image(&ctx, PLAIN).await?;
        let pod = s.pod("lifecycle").await?;
        let mut config = container("sleeper", &image, &["sleep", "1000"]);
        config.labels.insert("tier".into(), "test".into());
        config
            .annotations
            .insert("bungeo.test/note".into(), "kept \"as is\"".into());
        let before = now_ns();
        let id = s.create(&pod, config).await?;
        ensure_eq!(id.len(), 64, "id length");
        let st = s.status(&id).await?;
        ensure_eq!(st.state(), ContainerState::ContainerCreated, "after create");
        ensure!(
            st.created_at >= before && st.created_at <= now_ns(),
            "created_at {}",
            st.created_at
        );
        ensure_eq!(
            (st.started_at, st.finished_at),
            (0, 0),
            "times of a created container"
        );
        ensure_eq!(
            st.metadata.as_ref().map(|m| m.name.as_str()),
            Some("sleeper"),
            "metadata"
        );
        ensure_eq!(
            st.image.as_ref().map(|i| i.image.clone()),
            Some(image.clone()),
            "image"
        );
        let repo = image.rsplit_once(':').map(|(r, _)| r).unwrap_or(&image);
        ensure!(
            st.image_ref.starts_with(&format!("{repo}@sha256:")),
            "image_ref {} is not a repo digest of {repo}",
            st.image_ref
        );
        let image_id = s
            .cri
            .image_status(&image)
            .await?
            .context("the image is gone")?
            .id;
        if s.target == Target::Bungeo {
            // containerd 1.6 leaves image_id empty; the CRI asks for the config digest.
            ensure_eq!(st.image_id, image_id, "image_id");
        }
        ensure_eq!(
            st.labels.get("tier").map(String::as_str),
            Some("test"),
            "labels"
        );
        ensure_eq!(
            st.annotations.get("bungeo.test/note").map(String::as_str),
            Some("kept \"as is\""),
            "annotations"
        );
        let log_dir = Path::new(&s.sandbox_config(&pod)?.log_directory).join("sleeper/0.log");
        ensure_eq!(st.log_path, log_dir.to_string_lossy(), "log_path");

        s.start(&id).await?;
        let st = s.status(&id).await?;
        ensure_eq!(st.state(), ContainerState::ContainerRunning, "after start");
        ensure!(
            st.started_at >= st.created_at,
            "started_at {}",
            st.started_at
        );
        let info = s.info(&id).await?;
        let pid = s.pid(&id).await?;
        ensure!(alive(pid), "the container's pid {pid} is not alive");
        ensure_eq!(
            info["runtimeSpec"]["process"]["args"],
            serde_json::json!(["sleep", "1000"]),
            "spec args"
        );
        ensure_eq!(info["sandboxID"], serde_json::json!(pod), "sandboxID");
        // A unique prefix names the container, as crictl users type it.
        ensure_eq!(s.status(&id[..12]).await?.id, id, "status by prefix");

        let mine = ContainerFilter {
            pod_sandbox_id: pod.clone(),
            ..Default::default()
        };
        ensure_eq!(
            s.listed_ids(mine.clone()).await?,
            vec![id.clone()],
            "by pod"
        );
        let listed = s.list(mine.clone()).await?;
        ensure_eq!(
            listed[0].state(),
            ContainerState::ContainerRunning,
            "listed state"
        );
        // Listed, image_ref is the image id (kubelet's image GC matches it with ListImages).
        ensure_eq!(listed[0].image_ref, image_id, "listed image_ref");
        ensure_eq!(listed[0].pod_sandbox_id, pod, "listed pod");
        if s.target == Target::Bungeo {
            ensure_eq!(listed[0].image_id, image_id, "listed image_id");
            // Evented PLEG reads the pod's containers from PodSandboxStatus (containerd 1.6
            // predates the field and leaves it empty).
            let pod_status = s
                .cri
                .runtime
                .pod_sandbox_status(k8s_cri::v1::PodSandboxStatusRequest {
                    pod_sandbox_id: pod.clone(),
                    verbose: false,
                })
                .await?
                .into_inner();
            let in_pod: Vec<(String, i32)> = pod_status
                .containers_statuses
                .iter()
                .map(|c| (c.id.clone(), c.state))
                .collect();
            ensure_eq!(
                in_pod,
                vec![(id.clone(), ContainerState::ContainerRunning as i32)],
                "containers_statuses of PodSandboxStatus"
            );
            ensure!(
                pod_status.timestamp > 0,
                "PodSandboxStatus without a timestamp"
            );
        }
        for (what, filter, want) in [
            (
                "id prefix",
                ContainerFilter {
                    id: id[..10].to_string(),
                    ..Default::default()
                },
                vec![id.clone()],
            ),
            (
                "running + label",
                ContainerFilter {
                    state: by_state(ContainerState::ContainerRunning),
                    label_selector: HashMap::from([("tier".into(), "test".into())]),
                    ..mine.clone()
                },
                vec![id.clone()],
            ),
            (
                "exited",
                ContainerFilter {
                    state: by_state(ContainerState::ContainerExited),
                    ..mine.clone()
                },
                vec![],
            ),
            (
                "other label",
                ContainerFilter {
                    label_selector: HashMap::from([("tier".into(), "prod".into())]),
                    ..mine.clone()
                },
                vec![],
            ),
        ] {
            ensure_eq!(s.listed_ids(filter).await?, want, "list by {what}");
        }

        s.stop(&id, 0).await.context("StopContainer")?;
        let st = s.status(&id).await?;
        ensure_eq!(st.state(), ContainerState::ContainerExited, "after stop");
        ensure_eq!((st.exit_code, st.reason.as_str()), (137, "Error"), "killed");
        ensure!(
            st.finished_at >= st.started_at,
            "finished_at {}",
            st.finished_at
        );
        ensure!(!alive(pid), "pid {pid} outlived the stop");
        s.stop(&id, 0).await.context("a second StopContainer")?;
        ensure_eq!(
            s.listed_ids(ContainerFilter {
                state: by_state(ContainerState::ContainerExited),
                ..mine.clone()
            })
            .await?,
            vec![id.clone()],
            "exited after stop"
        );

        s.remove(&id).await.context("RemoveContainer")?;
        let err = s
            .status_full(&id, false)
            .await
            .err()
            .context("status of a removed container")?;
        ensure_eq!(err.code(), Code::NotFound, "{}", err.message());
        s.remove(&id).await.context("a second RemoveContainer")?;
        ensure!(s.list(mine).await?.is_empty(), "containers left in the pod");
        Ok(())
    })
    .await
}

async fn exit_codes(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "exits", async |s| {
        let image = s.image(&ctx, PLAIN).await?;
        let pod = s.pod("exits").await?;
        let cases = [
            ("three", vec!["sh", "-c", "exit 3"], 3, "Error"),
            ("zero", vec!["true"], 0, "Completed"),
            (
                "not-found",
                vec!["sh", "-c", "no-such-command"],
                127,
                "Error",
            ),
        ];
        let mut ids = Vec::new();
        for (name, cmd, _, _) in &cases {
            ids.push(s.run(&pod, container(name, &image, cmd)).await?);
        }
        for ((name, _, code, reason), id) in cases.iter().zip(&ids) {
            let st = s.exited(id).await?;
            ensure_eq!(
                (st.exit_code, st.reason.as_str()),
                (*code, *reason),
                "container {name}"
            );
            // A quick command may exit before its start is recorded: finished_at can be
            // (slightly) before started_at with either daemon.
            ensure!(
                st.started_at >= st.created_at && st.finished_at >= st.created_at,
                "{name}: created {} started {} finished {}",
                st.created_at,
                st.started_at,
                st.finished_at
            );
        }
        Ok(())
    })
    .await
}

/// A command that does not exist: the container is created and fails to start (containerd
/// creates its task only at start), ending EXITED with containerd's start-error code and
/// reason and a message naming the command; kubelet then removes it and creates the next
/// attempt in its stead.
async fn missing_command(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "nocmd", async |s| {
        let image = s.image(&ctx, PLAIN).await?;
        let pod = s.pod("nocmd").await?;
        let config = container("nocmd", &image, &["no-such-command", "arg"]);
        let id = s.create(&pod, config.clone()).await?;
        ensure_eq!(
            s.status(&id).await?.state(),
            ContainerState::ContainerCreated,
            "state after CreateContainer"
        );
        let started = s
            .cri
            .runtime
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await;
        let e = match started {
            Ok(_) => bail!("StartContainer of a missing command succeeded"),
            Err(e) => e,
        };
        ensure!(
            e.message().contains("no-such-command"),
            "StartContainer error {:?}: {}",
            e.code(),
            e.message()
        );
        let st = s.status(&id).await?;
        ensure_eq!(
            (st.state(), st.exit_code, st.reason.as_str()),
            (ContainerState::ContainerExited, 128, "StartError"),
            "status after the failed start"
        );
        ensure!(
            st.message.contains("no-such-command")
                && st.message.contains("executable file not found"),
            "status message: {:?}",
            st.message
        );
        ensure!(
            st.finished_at >= st.created_at,
            "finished_at {}",
            st.finished_at
        );
        s.remove(&id).await.context("RemoveContainer")?;
        let mut next = config;
        next.command = strings(&["sh", "-c", "exit 0"]);
        if let Some(m) = next.metadata.as_mut() {
            m.attempt = 1;
        }
        let again = s.run(&pod, next).await.context("the next attempt")?;
        ensure_eq!(
            s.exited(&again).await?.exit_code,
            0,
            "the next attempt's exit"
        );
        Ok(())
    })
    .await
}

async fn log_format(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "logs", async |s| {
        let image = s.image(&ctx, PLAIN).await?;
        let pod = s.pod("logs").await?;
        // A line longer than the 16 KiB a log record holds.
        let script = "echo out1; echo err1 >&2; echo out2; \
                      i=0; while [ $i -lt 2500 ]; do printf xxxxxxxx; i=$((i+1)); done; echo";
        let id = s
            .run(&pod, container("talker", &image, &["sh", "-c", script]))
            .await?;
        let st = s.exited(&id).await?;
        ensure_eq!(st.exit_code, 0, "exit code");
        let log = s
            .log_when(&id, |l| {
                stream_lines(l, "stdout").len() >= 3 && !stream_lines(l, "stderr").is_empty()
            })
            .await?;
        let out = stream_lines(&log, "stdout");
        ensure_eq!(out[..2], ["out1".to_string(), "out2".to_string()], "stdout");
        ensure_eq!(out[2], "x".repeat(20_000), "the long line, reassembled");
        ensure_eq!(
            stream_lines(&log, "stderr"),
            vec!["err1".to_string()],
            "stderr"
        );
        ensure!(
            log.iter().any(|(_, _, tag, _)| tag == "P"),
            "the long line was not split into partial records: {:?}",
            log.iter()
                .map(|(_, s, t, c)| (s, t, c.len()))
                .collect::<Vec<_>>()
        );
        ensure!(
            log.iter().all(|(_, _, _, c)| c.len() <= 16 * 1024),
            "a record longer than 16 KiB"
        );
        Ok(())
    })
    .await
}

/// The tags of the CRI log format as containerd's logger writes them: a line waits for its
/// newline however long the container pauses mid-line, `\r\n` ends a line like `\n`, and
/// output that ends without a newline is a partial (`P`) record, so that kubelet adds no
/// newline the container never wrote.
async fn log_partial_lines(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "partial", async |s| {
        let image = s.image(&ctx, PLAIN).await?;
        let pod = s.pod("partial").await?;
        let script = "printf abcd; sleep 1; printf 'efgh\\n'; printf 'crlf\\r\\n'; \
                      printf 'cr\\rin\\n'; printf err-tail >&2; printf tail";
        let id = s
            .run(&pod, container("partial", &image, &["sh", "-c", script]))
            .await?;
        let st = s.exited(&id).await?;
        ensure_eq!(st.exit_code, 0, "exit code");
        let of = |log: &[bungeo_tests::crilog::LogLine], stream: &str| {
            log.iter()
                .filter(|(_, s, _, _)| s == stream)
                .map(|(_, _, tag, content)| (tag.clone(), content.clone()))
                .collect::<Vec<_>>()
        };
        let log = s
            .log_when(&id, |l| {
                of(l, "stdout").len() >= 4 && !of(l, "stderr").is_empty()
            })
            .await?;
        let want = |records: &[(&str, &str)]| {
            records
                .iter()
                .map(|(t, c)| (t.to_string(), c.to_string()))
                .collect::<Vec<_>>()
        };
        ensure_eq!(
            of(&log, "stdout"),
            want(&[
                ("F", "abcdefgh"),
                ("F", "crlf"),
                ("F", "cr\rin"),
                ("P", "tail")
            ]),
            "stdout records"
        );
        ensure_eq!(
            of(&log, "stderr"),
            want(&[("P", "err-tail")]),
            "stderr records"
        );
        Ok(())
    })
    .await
}

async fn env_args_and_entrypoint(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "envargs", async |s| {
        let plain = s.image(&ctx, PLAIN).await?;
        let entry = s.image(&ctx, ENTRYPOINT).await?;
        let pod = s.pod("envargs").await?;
        let mut env = container(
            "env",
            &plain,
            &["sh", "-c", "echo \"A=$A B=$B HOME=$HOME\"; echo \"$0 $1\""],
        );
        env.args = strings(&["first", "second"]);
        env.envs = vec![
            KeyValue {
                key: "A".into(),
                value: "1".into(),
            },
            KeyValue {
                key: "B".into(),
                value: "two words".into(),
            },
        ];
        // The image's WORKDIR (/data) is not in its layers: runc creates a missing cwd,
        // bungeo-runtime refuses it ("chdir to cwd ... failed"). Until it creates it too, these
        // containers run in `/`.
        let entry_container = |name: &str, command: &[&str], args: &[&str]| {
            let mut c = container(name, &entry, command);
            c.args = strings(args);
            c.working_dir = "/".into();
            c
        };
        let cases: Vec<(ContainerConfig, Vec<&str>)> = vec![
            (env, vec!["A=1 B=two words HOME=/root", "first second"]),
            (
                entry_container("image-default", &[], &[]),
                vec!["entrypoint from-cmd"],
            ),
            (
                entry_container("args", &[], &["x", "y"]),
                vec!["entrypoint x y"],
            ),
            (
                entry_container("command", &["/bin/echo", "cmd"], &["z"]),
                vec!["cmd z"],
            ),
        ];
        for (config, want) in cases {
            let name = config.metadata.clone().unwrap_or_default().name;
            let id = s.run(&pod, config).await?;
            let st = s.exited(&id).await?;
            ensure_eq!(st.exit_code, 0, "{name}: exit code");
            let out = s.stdout(&id, want.len()).await?;
            ensure_eq!(out, want, "{name}: output");
        }
        Ok(())
    })
    .await
}

async fn users(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "users", async |s| {
        let plain = s.image(&ctx, PLAIN).await?;
        let by_uid = s.image(&ctx, USER_UID).await?;
        let by_name = s.image(&ctx, USER_NAME).await?;
        let pod = s.pod("users").await?;
        let mut as_nobody = container("run-as-user", &plain, &["id"]);
        security(&mut as_nobody).run_as_user = Some(Int64Value { value: 65534 });
        let mut as_app = container("run-as-username", &plain, &["id"]);
        security(&mut as_app).run_as_username = "app".into();
        let cases = [
            (
                container("image-uid", &by_uid, &["id"]),
                "uid=1000(app) gid=1000(app)",
                1000,
            ),
            (
                container("image-name", &by_name, &["id"]),
                "uid=1000(app) gid=1000(app)",
                1000,
            ),
            (
                container("root", &plain, &["id"]),
                "uid=0(root) gid=0(root)",
                0,
            ),
            (as_nobody, "uid=65534(nobody)", 65534),
            (as_app, "uid=1000(app) gid=1000(app)", 1000),
        ];
        for (config, want, uid) in cases {
            let name = config.metadata.clone().unwrap_or_default().name;
            let id = s.run(&pod, config).await?;
            let st = s.exited(&id).await?;
            ensure_eq!(st.exit_code, 0, "{name}: exit code");
            let out = s.stdout(&id, 1).await?;
            ensure!(
                out[0].starts_with(want),
                "{name}: id says {:?}, want {want}",
                out[0]
            );
            if s.target == Target::Bungeo {
                // containerd 1.6 does not report the user.
                let user = st
                    .user
                    .and_then(|u| u.linux)
                    .context("no user in the status")?;
                ensure_eq!(user.uid, uid, "{name}: status user");
            }
        }
        Ok(())
    })
    .await
}

async fn readonly_rootfs(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "readonly", async |s| {
        let image = s.image(&ctx, PLAIN).await?;
        let pod = s.pod("readonly").await?;
        let mut ro = container("ro", &image, &["touch", "/x"]);
        security(&mut ro).readonly_rootfs = true;
        let rw = container("rw", &image, &["touch", "/x"]);
        let ro = s.run(&pod, ro).await?;
        let rw = s.run(&pod, rw).await?;
        let st = s.exited(&ro).await?;
        ensure_eq!(st.exit_code, 1, "touch on a read-only rootfs");
        let log = s.log_when(&ro, |l| !l.is_empty()).await?;
        ensure!(
            stream_lines(&log, "stderr")
                .iter()
                .any(|l| l.contains("Read-only file system")),
            "stderr: {log:?}"
        );
        ensure_eq!(
            s.exited(&rw).await?.exit_code,
            0,
            "touch on a writable rootfs"
        );
        Ok(())
    })
    .await
}

async fn shared_host_dir(ctx: Ctx) -> Result<()> {
    let shared = tempfile::Builder::new()
        .prefix("bungeo-e2e-volume-")
        .tempdir()?;
    let host_path = shared.path().to_string_lossy().into_owned();
    with_scene(&ctx, "volume", async |s| {
        let image = s.image(&ctx, PLAIN).await?;
        let pod = s.pod("volume").await?;
        let mount = Mount {
            container_path: "/shared".into(),
            host_path: host_path.clone(),
            ..Default::default()
        };
        let mut writer = container(
            "writer",
            &image,
            &["sh", "-c", "echo from-writer > /shared/msg"],
        );
        writer.mounts = vec![mount.clone()];
        // The reader runs first and waits for the writer's file: both run at once.
        let mut reader = container(
            "reader",
            &image,
            &[
                "sh",
                "-c",
                "while [ ! -s /shared/msg ]; do sleep 0.1; done; cat /shared/msg",
            ],
        );
        reader.mounts = vec![mount];
        let reader = s.run(&pod, reader).await?;
        let writer = s.run(&pod, writer).await?;
        ensure_eq!(s.exited(&writer).await?.exit_code, 0, "writer");
        ensure_eq!(s.exited(&reader).await?.exit_code, 0, "reader");
        ensure_eq!(
            s.stdout(&reader, 1).await?,
            vec!["from-writer".to_string()],
            "read"
        );
        let st = s.status(&writer).await?;
        ensure_eq!(st.mounts.len(), 1, "mounts in the status");
        ensure_eq!(st.mounts[0].container_path, "/shared", "mount path");
        // A host-path volume outlives the containers that wrote to it.
        s.remove(&writer).await?;
        s.remove(&reader).await?;
        let kept = std::fs::read_to_string(Path::new(&host_path).join("msg"))?;
        ensure_eq!(kept, "from-writer\n", "the volume after removal");
        Ok(())
    })
    .await
}

async fn writable_layer_gone(ctx: Ctx) -> Result<()> {
    let root = ctx.daemon()?.root().to_path_buf();
    with_scene(&ctx, "layer", async |s| {
        let image = s.image(&ctx, PLAIN).await?;
        let pod = s.pod("layer").await?;
        let first = s
            .run(
                &pod,
                container(
                    "first",
                    &image,
                    &["sh", "-c", "echo data > /in-layer; sync"],
                ),
            )
            .await?;
        ensure_eq!(s.exited(&first).await?.exit_code, 0, "first");
        let container_dir = root.join("containers").join(&first);
        if s.target == Target::Bungeo {
            let info = s.info(&first).await?;
            let upper = PathBuf::from(info["writableLayer"].as_str().context("writableLayer")?);
            ensure_eq!(
                std::fs::read_to_string(upper.join("in-layer"))?,
                "data\n",
                "the write in the writable layer"
            );
            ensure!(
                container_dir.is_dir(),
                "{} is missing",
                container_dir.display()
            );
        }
        s.remove(&first).await?;
        if s.target == Target::Bungeo {
            ensure!(
                !container_dir.exists(),
                "{} outlived the container",
                container_dir.display()
            );
        }
        let mut second = container("second", &image, &["sh", "-c", "test ! -e /in-layer"]);
        second.metadata.as_mut().context("metadata")?.name = "first".into();
        let second = s.run(&pod, second).await?;
        ensure_eq!(
            s.exited(&second).await?.exit_code,
            0,
            "a new container of the same name and image saw the old one's file"
        );
        Ok(())
    })
    .await
}

async fn stop_timeout_then_kill(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "stop", async |s| {
        let image = s.image(&ctx, PLAIN).await?;
        let pod = s.pod("stop").await?;
        let stubborn = s
            .run(
                &pod,
                container(
                    "stubborn",
                    &image,
                    &[
                        "sh",
                        "-c",
                        "trap 'echo got-term' TERM; echo ready; while true; do sleep 1; done",
                    ],
                ),
            )
            .await?;
        let polite = s
            .run(
                &pod,
                container(
                    "polite",
                    &image,
                    &[
                        "sh",
                        "-c",
                        "trap 'exit 7' TERM; echo ready; while true; do sleep 1; done",
                    ],
                ),
            )
            .await?;
        s.stdout(&stubborn, 1).await?;
        s.stdout(&polite, 1).await?;

        let started = Instant::now();
        s.stop(&stubborn, 2)
            .await
            .context("StopContainer stubborn")?;
        let took = started.elapsed();
        ensure!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(15),
            "a container ignoring SIGTERM stopped after {took:?}, not after its 2 s timeout"
        );
        let st = s.status(&stubborn).await?;
        ensure_eq!(st.state(), ContainerState::ContainerExited, "stubborn");
        ensure_eq!(st.exit_code, 137, "stubborn: killed by SIGKILL");
        ensure_eq!(
            s.stdout(&stubborn, 2).await?,
            vec!["ready".to_string(), "got-term".to_string()],
            "stubborn saw SIGTERM first"
        );

        let started = Instant::now();
        s.stop(&polite, 30).await.context("StopContainer polite")?;
        let took = started.elapsed();
        ensure!(
            took < Duration::from_secs(10),
            "polite stopped after {took:?}"
        );
        let st = s.status(&polite).await?;
        ensure_eq!((st.exit_code, st.reason.as_str()), (7, "Error"), "polite");
        Ok(())
    })
    .await
}

async fn same_name_and_attempt(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "names", async |s| {
        let image = s.image(&ctx, PLAIN).await?;
        let pod = s.pod("names").await?;
        let first = s.create(&pod, container("dup", &image, &["true"])).await?;
        let err = s
            .try_create(&pod, container("dup", &image, &["true"]))
            .await
            .err()
            .context("a second container with the same name and attempt was created")?;
        if s.target == Target::Bungeo {
            ensure_eq!(err.code(), Code::AlreadyExists, "{}", err.message());
        }
        ensure!(
            err.message().contains("reserved") && err.message().contains(&first),
            "{}",
            err.message()
        );
        // The next attempt is another name, as is the same name in another pod.
        let mut next = container("dup", &image, &["true"]);
        next.metadata.as_mut().context("metadata")?.attempt = 1;
        s.create(&pod, next).await?;
        let other = s.pod("names-other").await?;
        s.create(&other, container("dup", &image, &["true"]))
            .await?;
        // Removal frees the name.
        s.remove(&first).await?;
        s.create(&pod, container("dup", &image, &["true"])).await?;
        Ok(())
    })
    .await
}

/// Removing the image of a running container must not pull the layers from under it: the
/// container keeps running and reading its image's files. (Only this check uses the zstd image,
/// so removing it cannot disturb the checks running beside it.)
async fn image_removed_under_running_container(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "imgrm", async |s| {
        let image = s.image(&ctx, ZSTD).await?;
        let pod = s.pod("imgrm").await?;
        let id = s
            .run(&pod, container("user", &image, &["sleep", "1000"]))
            .await?;
        s.cri.remove_image(&image).await.context("RemoveImage")?;
        ensure!(
            s.cri.image_status(&image).await?.is_none(),
            "{image} is still listed after RemoveImage"
        );
        let r = s
            .exec(
                &id,
                &["sh", "-c", "cat /bin/busybox > /dev/null && ls /etc/passwd"],
                10,
            )
            .await
            .context("ExecSync after RemoveImage")?;
        ensure_eq!(
            (String::from_utf8_lossy(&r.stdout).into_owned(), r.exit_code),
            ("/etc/passwd\n".to_string(), 0),
            "reading the image's files after RemoveImage"
        );
        s.remove(&id).await.context("RemoveContainer")?;
        Ok(())
    })
    .await
}

async fn next_attempt_after_exit(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "attempt", async |s| {
        let image = s.image(&ctx, PLAIN).await?;
        let pod = s.pod("attempt").await?;
        let first = s
            .run(
                &pod,
                container("app", &image, &["sh", "-c", "echo first; exit 3"]),
            )
            .await?;
        ensure_eq!(
            s.exited(&first).await?.exit_code,
            3,
            "first attempt's exit code"
        );
        // kubelet restarts a container as the next attempt in the same pod, the exited one
        // still there (its log and status are what `kubectl logs --previous` shows).
        let mut next = container("app", &image, &["sleep", "1000"]);
        next.metadata.as_mut().context("metadata")?.attempt = 1;
        next.log_path = "app/1.log".into();
        let second = s.run(&pod, next).await?;
        ensure!(second != first, "attempt 1 got the id of attempt 0");
        let st = s.status(&second).await?;
        ensure_eq!(st.state(), ContainerState::ContainerRunning, "attempt 1");
        ensure_eq!(
            st.metadata.as_ref().map(|m| (m.name.as_str(), m.attempt)),
            Some(("app", 1)),
            "attempt 1's metadata"
        );
        let old = s.status(&first).await?;
        ensure_eq!(old.state(), ContainerState::ContainerExited, "attempt 0");
        ensure_eq!(old.exit_code, 3, "attempt 0's exit code after the restart");
        let mut want = vec![first.clone(), second.clone()];
        want.sort();
        let listed = s
            .listed_ids(ContainerFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            })
            .await?;
        ensure_eq!(listed, want, "the pod's containers");
        ensure_eq!(s.stdout(&first, 1).await?, vec!["first"], "attempt 0's log");
        Ok(())
    })
    .await
}

/// How many pods `many_pods` makes, and how many it has in flight at once.
const MANY_PODS: usize = 50;
const IN_FLIGHT: usize = 10;

/// Runs `jobs` with at most [`IN_FLIGHT`] at a time; their outputs in completion order.
async fn bounded<T, F>(jobs: Vec<F>) -> Result<Vec<T>>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut queue = jobs.into_iter();
    let mut set = tokio::task::JoinSet::new();
    let mut out = Vec::new();
    loop {
        while set.len() < IN_FLIGHT
            && let Some(job) = queue.next()
        {
            set.spawn(job);
        }
        match set.join_next().await {
            Some(done) => out.push(done.context("a pod task panicked")?),
            None => return Ok(out),
        }
    }
}

/// RunPodSandbox, CreateContainer and StartContainer on a client of its own: the pod's id
/// if it was made, and the container's if all three succeeded.
async fn start_pod(
    mut cri: Cri,
    sandbox: PodSandboxConfig,
    config: ContainerConfig,
) -> (PodSandboxConfig, Option<String>, Result<String>) {
    let pod = match cri
        .runtime
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: String::new(),
        })
        .await
    {
        Ok(r) => r.into_inner().pod_sandbox_id,
        Err(e) => return (sandbox, None, Err(e).context("RunPodSandbox")),
    };
    let container = async {
        let id = cri
            .runtime
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox.clone()),
            })
            .await
            .context("CreateContainer")?
            .into_inner()
            .container_id;
        cri.runtime
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .with_context(|| format!("StartContainer {id}"))?;
        anyhow::Ok(id)
    }
    .await
    .with_context(|| format!("pod {pod}"));
    (sandbox, Some(pod), container)
}

fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
}

async fn many_pods(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "many", async |s| {
        let image = s.image(&ctx, PLAIN).await?;
        let mut jobs = Vec::new();
        for i in 0..MANY_PODS {
            let sandbox = s.pod_config(&format!("many-{i}"));
            std::fs::create_dir_all(Path::new(&sandbox.log_directory).join("sleeper"))?;
            let config = container("sleeper", &image, &["sleep", "1000"]);
            jobs.push(start_pod(s.cri.clone(), sandbox, config));
        }
        let mut containers = Vec::new();
        let mut first_error = None;
        for (sandbox, pod, container) in bounded(jobs).await? {
            if let Some(pod) = pod {
                s.pods.push((pod, sandbox));
            }
            match container {
                Ok(id) => containers.push(id),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e.context(format!("starting {MANY_PODS} pods, {IN_FLIGHT} at a time")));
        }
        ensure_eq!(s.pods.len(), MANY_PODS, "pods made");

        let pods: Vec<String> = s.pods.iter().map(|(id, _)| id.clone()).collect();
        let listed = s.list(ContainerFilter::default()).await?;
        let running = listed
            .iter()
            .filter(|c| pods.contains(&c.pod_sandbox_id))
            .filter(|c| c.state() == ContainerState::ContainerRunning)
            .count();
        ensure_eq!(running, MANY_PODS, "running containers of the check's pods");
        // The containers and their parents (the shims) must all be gone at the end.
        let mut processes = Vec::new();
        for id in &containers {
            let pid = s.pid(id).await?;
            processes.push(pid);
            processes.extend(parent_pid(pid).filter(|p| *p > 1));
        }
        processes.sort();
        processes.dedup();

        let removals = pods
            .iter()
            .map(|pod| {
                let (mut cri, pod) = (s.cri.clone(), pod.clone());
                async move { workload::remove_pod(&mut cri, &pod).await }
            })
            .collect();
        for removed in bounded(removals).await? {
            removed?;
        }
        s.pods.clear();

        let left = s
            .cri
            .runtime
            .list_pod_sandbox(ListPodSandboxRequest {
                filter: Some(PodSandboxFilter {
                    label_selector: HashMap::from([("check".to_string(), s.unique.clone())]),
                    ..Default::default()
                }),
            })
            .await
            .context("ListPodSandbox")?
            .into_inner()
            .items;
        ensure!(left.is_empty(), "pods left after removal: {left:?}");
        let left: Vec<String> = s
            .list(ContainerFilter::default())
            .await?
            .into_iter()
            .filter(|c| containers.contains(&c.id))
            .map(|c| c.id)
            .collect();
        ensure!(left.is_empty(), "containers left after removal: {left:?}");
        let deadline = Instant::now() + WAIT;
        loop {
            let living: Vec<i32> = processes.iter().copied().filter(|p| alive(*p)).collect();
            if living.is_empty() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "processes of removed pods still alive after {WAIT:?}: {living:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    })
    .await
}

async fn exec_sync(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "exec", async |s| {
        let image = s.image(&ctx, PLAIN).await?;
        let pod = s.pod("exec").await?;
        let mut config = container("target", &image, &["sleep", "1000"]);
        config.envs = vec![KeyValue {
            key: "FROM_SPEC".into(),
            value: "yes".into(),
        }];
        let id = s.run(&pod, config).await?;

        let r = s
            .exec(
                &id,
                &[
                    "sh",
                    "-c",
                    "echo out; echo err >&2; echo $FROM_SPEC; exit 5",
                ],
                10,
            )
            .await
            .context("ExecSync")?;
        ensure_eq!(String::from_utf8_lossy(&r.stdout), "out\nyes\n", "stdout");
        ensure_eq!(String::from_utf8_lossy(&r.stderr), "err\n", "stderr");
        ensure_eq!(r.exit_code, 5, "exit code");
        let r = s.exec(&id, &["id", "-u"], 0).await.context("ExecSync id")?;
        ensure_eq!(
            (String::from_utf8_lossy(&r.stdout).into_owned(), r.exit_code),
            ("0\n".to_string(), 0),
            "id"
        );

        let started = Instant::now();
        let err = s
            .exec(&id, &["sleep", "30"], 1)
            .await
            .err()
            .context("an exec past its timeout succeeded")?;
        let took = started.elapsed();
        ensure!(took < Duration::from_secs(10), "the timeout took {took:?}");
        ensure!(
            err.message().contains("timeout"),
            "{:?}: {}",
            err.code(),
            err.message()
        );
        if s.target == Target::Bungeo {
            // kubelet reads DeadlineExceeded as a timed-out probe.
            ensure_eq!(err.code(), Code::DeadlineExceeded, "{}", err.message());
        }
        let ps = s.exec(&id, &["ps", "-o", "args"], 10).await.context("ps")?;
        let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
        ensure!(
            !ps.contains("sleep 30"),
            "the timed-out command still runs:\n{ps}"
        );
        ensure!(ps.contains("sleep 1000"), "ps output:\n{ps}");

        s.stop(&id, 0).await?;
        let err = s
            .exec(&id, &["true"], 10)
            .await
            .err()
            .context("an exec in an exited container succeeded")?;
        if s.target == Target::Bungeo {
            ensure_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
        }
        Ok(())
    })
    .await
}

/// A pod in PID mode POD: its containers see each other's processes, and pid 1 is the pod's
/// infra process (bungeo's `bungeo-infra`; containerd's pause, which the test pause image
/// runs as a busybox `sleep`).
async fn shared_pid_namespace(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "shared-pid", async |s| {
        let image = s.image(&ctx, PLAIN).await?;
        let mut config = s.pod_config("shared-pid");
        let options = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|c| c.namespace_options.as_mut())
            .context("the pod config has namespace options")?;
        options.pid = NamespaceMode::Pod as i32;
        std::fs::create_dir_all(&config.log_directory)?;
        let pod = s
            .cri
            .runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .context("RunPodSandbox with PID mode POD")?
            .into_inner()
            .pod_sandbox_id;
        s.pods.push((pod.clone(), config));

        let mut ids = Vec::new();
        for name in ["first", "second"] {
            let mut config = container(name, &image, &["sleep", "1000"]);
            let options = security(&mut config)
                .namespace_options
                .get_or_insert_with(Default::default);
            options.pid = NamespaceMode::Pod as i32;
            ids.push(s.run(&pod, config).await?);
        }
        let ps = s
            .exec(&ids[0], &["ps", "-o", "pid,comm"], 10)
            .await
            .context("ExecSync ps")?;
        let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
        let sleeps = ps
            .lines()
            .filter(|l| {
                let mut fields = l.split_whitespace();
                fields.next() != Some("1") && fields.next() == Some("sleep")
            })
            .count();
        ensure_eq!(sleeps, 2, "sleep processes seen from one container:\n{ps}");
        let init = s
            .exec(&ids[1], &["cat", "/proc/1/comm"], 10)
            .await
            .context("ExecSync cat /proc/1/comm")?;
        let init = String::from_utf8_lossy(&init.stdout).trim().to_owned();
        let want = match s.target {
            Target::Bungeo => "bungeo-infra",
            Target::Containerd => "sleep",
        };
        ensure_eq!(init.as_str(), want, "pid 1 of the pod");
        Ok(())
    })
    .await
}

async fn stop_and_remove_pod(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "podstop", async |s| {
        let image = s.image(&ctx, PLAIN).await?;
        let pod = s.pod("podstop").await?;
        let a = s
            .run(&pod, container("a", &image, &["sleep", "1000"]))
            .await?;
        let b = s
            .run(&pod, container("b", &image, &["sleep", "1000"]))
            .await?;
        let pids = [s.pid(&a).await?, s.pid(&b).await?];
        s.cri
            .runtime
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .context("StopPodSandbox")?;
        for id in [&a, &b] {
            ensure_eq!(
                s.status(id).await?.state(),
                ContainerState::ContainerExited,
                "a container of a stopped pod"
            );
        }
        for pid in pids {
            ensure!(!alive(pid), "pid {pid} outlived StopPodSandbox");
        }
        s.cri
            .runtime
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .context("RemovePodSandbox")?;
        let left = s
            .list(ContainerFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            })
            .await?;
        ensure!(left.is_empty(), "containers of a removed pod: {left:?}");
        for id in [&a, &b] {
            let err = s.status_full(id, false).await.err().context("status")?;
            ensure_eq!(err.code(), Code::NotFound, "{}", err.message());
        }
        Ok(())
    })
    .await
}

/// The container's cgroup directory in the memory hierarchy (v1) or the cgroup2 mount; both
/// daemons put a container at `<pod cgroup parent>/<id>` with the cgroupfs driver.
fn memory_cgroup(parent: &str, id: &str) -> Result<PathBuf> {
    let rel = Path::new(parent.trim_start_matches('/')).join(id);
    for base in ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"] {
        let dir = Path::new(base).join(&rel);
        if dir.join("memory.limit_in_bytes").exists() || dir.join("memory.max").exists() {
            return Ok(dir);
        }
    }
    bail!("no memory cgroup for {}", rel.display())
}

fn memory_limit(dir: &Path) -> Result<i64> {
    let file = if dir.join("memory.limit_in_bytes").exists() {
        dir.join("memory.limit_in_bytes")
    } else {
        dir.join("memory.max")
    };
    let text = std::fs::read_to_string(&file)?;
    text.trim()
        .parse()
        .with_context(|| format!("{}: {text:?}", file.display()))
}

fn with_memory_limit(mut config: ContainerConfig, bytes: i64) -> ContainerConfig {
    config.linux.get_or_insert_with(Default::default).resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: bytes,
        ..Default::default()
    });
    config
}

async fn oom_killed(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "oom", async |s| {
        let image = s.image(&ctx, PLAIN).await?;
        let pod = s.pod("oom").await?;
        // dd's 64 MiB buffer does not fit in 32 MiB: the OOM killer takes the container's
        // init.
        let hog = with_memory_limit(
            container(
                "hog",
                &image,
                &[
                    "sh",
                    "-c",
                    "exec dd if=/dev/zero of=/dev/null bs=64M count=4",
                ],
            ),
            32 << 20,
        );
        let id = s.run(&pod, hog).await?;
        let st = s.exited(&id).await?;
        ensure_eq!(
            (st.exit_code, st.reason.as_str()),
            (137, "OOMKilled"),
            "a container over its memory limit"
        );
        Ok(())
    })
    .await
}

async fn update_resources(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "update", async |s| {
        let image = s.image(&ctx, PLAIN).await?;
        let pod = s.pod("update").await?;
        let config = with_memory_limit(container("sized", &image, &["sleep", "1000"]), 64 << 20);
        let id = s.run(&pod, config).await?;
        let cgroup = memory_cgroup(&s.cgroup_parent(), &id)?;
        ensure_eq!(
            memory_limit(&cgroup)?,
            64 << 20,
            "the memory limit at creation"
        );
        let wanted = LinuxContainerResources {
            memory_limit_in_bytes: 96 << 20,
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            ..Default::default()
        };
        s.cri
            .runtime
            .update_container_resources(UpdateContainerResourcesRequest {
                container_id: id.clone(),
                linux: Some(wanted.clone()),
                ..Default::default()
            })
            .await
            .context("UpdateContainerResources")?;
        ensure_eq!(
            memory_limit(&cgroup)?,
            96 << 20,
            "the memory limit after the update"
        );
        if s.target == Target::Bungeo {
            // containerd 1.6 does not report resources.
            let st = s.status(&id).await?;
            let r = st
                .resources
                .and_then(|r| r.linux)
                .context("no resources in the status")?;
            ensure_eq!(
                (
                    r.memory_limit_in_bytes,
                    r.cpu_quota,
                    r.cpu_period,
                    r.cpu_shares
                ),
                (96 << 20, 50_000, 100_000, 512),
                "resources in the status"
            );
        }
        // An exited container takes new resources into its spec (containerd does too).
        s.stop(&id, 0).await?;
        s.cri
            .runtime
            .update_container_resources(UpdateContainerResourcesRequest {
                container_id: id.clone(),
                linux: Some(LinuxContainerResources {
                    memory_limit_in_bytes: 128 << 20,
                    ..wanted
                }),
                ..Default::default()
            })
            .await
            .context("UpdateContainerResources of an exited container")?;
        if s.target == Target::Bungeo {
            let info = s.info(&id).await?;
            ensure_eq!(
                info["runtimeSpec"]["linux"]["resources"]["memory"]["limit"],
                serde_json::json!(128 << 20),
                "the spec of an updated exited container"
            );
        }
        Ok(())
    })
    .await
}

async fn reopen_log(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "reopen", async |s| {
        let image = s.image(&ctx, PLAIN).await?;
        let pod = s.pod("reopen").await?;
        let id = s
            .run(
                &pod,
                container(
                    "ticker",
                    &image,
                    &[
                        "sh",
                        "-c",
                        "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.1; done",
                    ],
                ),
            )
            .await?;
        s.stdout(&id, 2).await?;
        let path = s.log_paths.get(&id).context("log path")?.clone();
        let rotated = path.with_extension("log.1");
        std::fs::rename(&path, &rotated)?;
        s.cri
            .runtime
            .reopen_container_log(ReopenContainerLogRequest {
                container_id: id.clone(),
            })
            .await
            .context("ReopenContainerLog")?;
        let fresh = s.stdout(&id, 2).await?;
        let old = stream_lines(&read_log(&rotated)?, "stdout");
        let number = |l: &String| l.strip_prefix("tick-").and_then(|n| n.parse::<u64>().ok());
        let last_old = old.iter().filter_map(number).max().context("old ticks")?;
        let first_new = fresh.iter().filter_map(number).min().context("new ticks")?;
        ensure!(
            first_new > last_old,
            "the reopened log starts at {first_new}, the rotated one ends at {last_old}"
        );
        s.stop(&id, 0).await?;
        let err = s
            .cri
            .runtime
            .reopen_container_log(ReopenContainerLogRequest {
                container_id: id.clone(),
            })
            .await
            .err()
            .context("ReopenContainerLog of an exited container succeeded")?;
        ensure!(
            err.message().contains("not running") || err.code() == Code::FailedPrecondition,
            "{:?}: {}",
            err.code(),
            err.message()
        );
        Ok(())
    })
    .await
}

async fn unknown_ids(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "unknown", async |s| {
        let unknown = "0123456789abcdef".repeat(4);
        match s.stop(&unknown, 0).await {
            Ok(()) => {}
            // containerd 1.6 answers NotFound where the CRI asks for success.
            Err(e) if s.target == Target::Containerd && e.code() == Code::NotFound => {}
            Err(e) => bail!("StopContainer of an unknown id: {e}"),
        }
        s.remove(&unknown)
            .await
            .context("RemoveContainer of an unknown id")?;
        let err = s
            .status_full(&unknown, false)
            .await
            .err()
            .context("status")?;
        ensure_eq!(err.code(), Code::NotFound, "{}", err.message());
        let err = s.start(&unknown).await.err().context("start")?;
        ensure!(
            format!("{err:#}").to_lowercase().contains("not found"),
            "StartContainer of an unknown id: {err:#}"
        );
        Ok(())
    })
    .await
}

/// `kill -9` of bungeo with containers running: they keep running, a container that exits
/// meanwhile is reported with its exit code, and the restarted daemon drives them all.
async fn restart_recovery(ctx: Ctx) -> Result<()> {
    let mut daemon = Bungeo::start(&ctx.fx.hosts).await?;
    let cri = Cri::connect(daemon.socket()).await?;
    let mut scene = Scene::for_check(&ctx, cri, "restart", LAYOUT)?;
    let result = restart_body(&ctx, &mut daemon, &mut scene).await;
    if daemon.pid().is_none() {
        // A failure while it was down: bring it back to clean up.
        daemon.restart().await?;
        scene.cri = Cri::connect(daemon.socket()).await?;
    }
    let cleanup = scene.finish().await;
    result.and(cleanup)?;
    let dir = daemon.root().parent().context("daemon dir")?.to_path_buf();
    let daemon_pid = daemon.pid().map(|p| p as i32);
    let left: Vec<i32> = leftovers::processes_mentioning(&dir)
        .into_iter()
        .filter(|p| Some(*p) != daemon_pid)
        .collect();
    ensure!(
        left.is_empty(),
        "processes left after removing every pod: {left:?}"
    );
    let containers: Vec<_> = std::fs::read_dir(daemon.root().join("containers"))?.collect();
    ensure!(
        containers.is_empty(),
        "container directories left: {containers:?}"
    );
    Ok(())
}

async fn restart_body(ctx: &Ctx, daemon: &mut Bungeo, s: &mut Scene) -> Result<()> {
    let image = s.image(ctx, PLAIN).await?;
    let pod = s.pod("restart").await?;
    let long = s
        .run(&pod, container("long", &image, &["sleep", "1000"]))
        .await?;
    let short = s
        .run(
            &pod,
            container("short", &image, &["sh", "-c", "sleep 2; exit 4"]),
        )
        .await?;
    let created = s
        .create(&pod, container("created", &image, &["true"]))
        .await?;
    let long_pid = s.pid(&long).await?;
    let short_pid = s.pid(&short).await?;

    daemon.kill9()?;
    ensure!(alive(long_pid), "the container died with the daemon");
    let deadline = Instant::now() + WAIT;
    while alive(short_pid) {
        ensure!(
            Instant::now() < deadline,
            "the short container never exited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.restart().await.context("restart after kill -9")?;
    s.cri = Cri::connect(daemon.socket()).await?;

    let st = s.status(&long).await?;
    ensure_eq!(
        st.state(),
        ContainerState::ContainerRunning,
        "long after the restart"
    );
    ensure_eq!(s.pid(&long).await?, long_pid, "long's pid");
    ensure!(alive(long_pid), "long is not alive");
    let st = s.status(&short).await?;
    ensure_eq!(
        st.state(),
        ContainerState::ContainerExited,
        "short after the restart"
    );
    ensure_eq!(
        (st.exit_code, st.reason.as_str()),
        (4, "Error"),
        "short's exit"
    );
    ensure!(st.finished_at > st.started_at, "short's finish time");
    ensure_eq!(
        s.status(&created).await?.state(),
        ContainerState::ContainerCreated,
        "created after the restart"
    );
    let listed = s
        .listed_ids(ContainerFilter {
            state: by_state(ContainerState::ContainerRunning),
            pod_sandbox_id: pod.clone(),
            ..Default::default()
        })
        .await?;
    ensure_eq!(listed, vec![long.clone()], "running after the restart");
    // The names stay reserved.
    let err = s
        .try_create(&pod, container("long", &image, &["true"]))
        .await
        .err()
        .context("a second \"long\" after the restart")?;
    ensure_eq!(err.code(), Code::AlreadyExists, "{}", err.message());

    // The reconnected daemon drives the survivors: exec, start, and a graceful restart too.
    let r = s.exec(&long, &["echo", "still-here"], 10).await?;
    ensure_eq!(
        String::from_utf8_lossy(&r.stdout),
        "still-here\n",
        "exec after restart"
    );
    s.start(&created).await?;
    ensure_eq!(
        s.exited(&created).await?.exit_code,
        0,
        "created, started after restart"
    );
    daemon.restart().await.context("restart after SIGTERM")?;
    s.cri = Cri::connect(daemon.socket()).await?;
    ensure!(alive(long_pid), "long died with a graceful restart");
    ensure_eq!(
        s.status(&long).await?.state(),
        ContainerState::ContainerRunning,
        "long after a graceful restart"
    );
    // Its exit is still watched: a stop finishes at once.
    let started = Instant::now();
    s.stop(&long, 0)
        .await
        .context("StopContainer after restarts")?;
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        started.elapsed()
    );
    let st = s.status(&long).await?;
    ensure_eq!(
        (st.state(), st.exit_code),
        (ContainerState::ContainerExited, 137),
        "long stopped"
    );
    ensure!(!alive(long_pid), "long outlived its stop");
    Ok(())
}
