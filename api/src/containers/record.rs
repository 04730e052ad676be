//! What the daemon records about a container, and how a record reads in CRI terms.

use std::collections::HashMap;
use std::path::PathBuf;

use k8s_cri::v1 as cri;
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::shims::ShimPaths;

/// Reason of a container that exited with code 0.
pub const REASON_COMPLETED: &str = "Completed";
/// Reason of a container that exited with another code.
pub const REASON_ERROR: &str = "Error";
/// Reason of a container the OOM killer struck.
pub const REASON_OOM_KILLED: &str = "OOMKilled";
/// Reason of a container whose exit nobody saw (its shim is gone without a record of it).
pub const REASON_UNKNOWN: &str = "Unknown";
/// Reason of a container whose start failed.
pub const REASON_START_ERROR: &str = "StartError";
/// Exit code reported when the real one is unknown (containerd's `unknownExitCode`).
pub const UNKNOWN_EXIT_CODE: i32 = 255;
/// Exit code reported for a container whose start failed (containerd's `errorStartExitCode`).
pub const START_ERROR_EXIT_CODE: i32 = 128;

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerPhase {
    /// CreateContainer is building it. A record still in this phase when the daemon starts is
    /// what a crash mid-creation left: its pieces are removed, and so is the record.
    Creating,
    /// Created: its init waits at the start barrier.
    Created,
    /// Started and not seen to exit.
    Running,
    /// Its init exited (or it never started and its shim is gone).
    Exited,
}

/// The image a container was created from, as status calls report it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerImage {
    /// `ImageSpec.image` of status and list answers: the image's first tag, else the
    /// reference the request gave.
    pub name: String,
    /// `image_ref` of ContainerStatus: the image's first repo digest, else its id.
    pub image_ref: String,
    /// `image_id`: the config digest.
    pub id: String,
}

/// How a container's init ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    pub exit_code: i32,
    /// Nanoseconds since the epoch.
    pub finished_at: i64,
    pub reason: String,
    pub message: String,
}

impl ExitInfo {
    /// An exit the shim saw: its code, time and whether the OOM killer was involved.
    pub fn observed(exit_code: i32, finished_at: i64, oom_killed: bool) -> ExitInfo {
        let reason = if oom_killed {
            REASON_OOM_KILLED
        } else if exit_code == 0 {
            REASON_COMPLETED
        } else {
            REASON_ERROR
        };
        ExitInfo {
            exit_code,
            finished_at,
            reason: reason.to_owned(),
            message: String::new(),
        }
    }

    /// An exit nobody saw, with why it is unknown.
    pub fn unknown(finished_at: i64, message: String) -> ExitInfo {
        ExitInfo {
            exit_code: UNKNOWN_EXIT_CODE,
            finished_at,
            reason: REASON_UNKNOWN.to_owned(),
            message,
        }
    }
}

/// Everything the daemon knows about one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// 64 hex characters.
    pub id: String,
    /// The full id of its pod sandbox.
    pub sandbox_id: String,
    /// The name it reserves in the pod, as containerd builds it:
    /// `<name>_<pod name>_<pod namespace>_<pod uid>_<attempt>`.
    pub name: String,
    pub phase: ContainerPhase,
    /// Nanoseconds since the epoch; 0 for "not yet".
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    /// The init's pid on the node, once created.
    pub pid: u32,
    /// The request's config, as given.
    pub config: cri::ContainerConfig,
    pub image: ContainerImage,
    /// The CRI log file (pod log directory + the config's log path); empty for none.
    pub log_path: String,
    /// `<root>/containers/<id>`: `upper`, `work`, `bundle/{config.json,rootfs}`.
    pub dir: PathBuf,
    /// The shim's state dir and socket.
    pub shim: ShimPaths,
    /// The image's STOPSIGNAL, as written there; empty for SIGTERM.
    pub stop_signal: String,
    /// `linux.cgroupsPath` of the spec.
    pub cgroups_path: String,
    /// The resources of the spec in CRI terms, kept current by UpdateContainerResources.
    pub resources: Option<cri::LinuxContainerResources>,
    /// The user the init runs as, from the spec.
    pub user: Option<cri::LinuxContainerUser>,
    /// Why the runtime refused to create the init (a command that does not exist, a bad
    /// user...). The container is created all the same and StartContainer fails with this:
    /// containerd creates its task only at start, and kubelet tells a container that fails to
    /// start (RunContainerError, then a new one in its stead) from one it cannot create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_error: Option<String>,
}

impl ContainerRecord {
    /// The OCI bundle directory.
    pub fn bundle(&self) -> PathBuf {
        self.dir.join(BUNDLE_DIR)
    }

    /// Where the overlay rootfs is mounted.
    pub fn rootfs(&self) -> PathBuf {
        self.bundle().join(ROOTFS_DIR)
    }

    /// The name the container is known by in messages: its metadata name and id.
    pub fn display(&self) -> String {
        match self.config.metadata.as_ref() {
            Some(m) if !m.name.is_empty() => format!("{:?} ({})", m.name, self.id),
            _ => self.id.clone(),
        }
    }

    /// Applies an exit, if the container was not seen to end already.
    pub fn apply_exit(&mut self, exit: ExitInfo) -> bool {
        if matches!(
            self.phase,
            ContainerPhase::Exited | ContainerPhase::Creating
        ) {
            return false;
        }
        self.phase = ContainerPhase::Exited;
        self.exit_code = exit.exit_code;
        self.finished_at = exit.finished_at;
        self.reason = exit.reason;
        self.message = exit.message;
        true
    }
}

/// Name of the bundle directory inside a container's directory.
pub const BUNDLE_DIR: &str = "bundle";
/// Name of the rootfs inside the bundle.
pub const ROOTFS_DIR: &str = "rootfs";
/// The writable layer inside a container's directory.
pub const UPPER_DIR: &str = "upper";
/// overlayfs' work directory inside a container's directory.
pub const WORK_DIR: &str = "work";
/// The OCI spec inside the bundle.
pub const SPEC_FILE: &str = "config.json";

/// The CRI state of a phase.
pub fn cri_state(phase: ContainerPhase) -> cri::ContainerState {
    match phase {
        ContainerPhase::Creating | ContainerPhase::Created => cri::ContainerState::ContainerCreated,
        ContainerPhase::Running => cri::ContainerState::ContainerRunning,
        ContainerPhase::Exited => cri::ContainerState::ContainerExited,
    }
}

fn image_spec(record: &ContainerRecord) -> cri::ImageSpec {
    let given = record.config.image.clone().unwrap_or_default();
    cri::ImageSpec {
        image: if record.image.name.is_empty() {
            given.image
        } else {
            record.image.name.clone()
        },
        annotations: given.annotations,
        user_specified_image: given.user_specified_image,
        runtime_handler: given.runtime_handler,
    }
}

/// The container as ListContainers shows it. Its `image_ref` is the image id, as containerd
/// answers: kubelet's image garbage collector matches it against ListImages' ids to know
/// which images are in use.
pub fn cri_container(record: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: record.id.clone(),
        pod_sandbox_id: record.sandbox_id.clone(),
        metadata: record.config.metadata.clone(),
        image: Some(image_spec(record)),
        image_ref: record.image.id.clone(),
        state: cri_state(record.phase).into(),
        created_at: record.created_at,
        labels: record.config.labels.clone(),
        annotations: record.config.annotations.clone(),
        image_id: record.image.id.clone(),
    }
}

/// The container as ContainerStatus shows it.
pub fn cri_status(record: &ContainerRecord) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: record.id.clone(),
        metadata: record.config.metadata.clone(),
        state: cri_state(record.phase).into(),
        created_at: record.created_at,
        started_at: record.started_at,
        finished_at: record.finished_at,
        exit_code: record.exit_code,
        image: Some(image_spec(record)),
        image_ref: record.image.image_ref.clone(),
        reason: record.reason.clone(),
        message: record.message.clone(),
        labels: record.config.labels.clone(),
        annotations: record.config.annotations.clone(),
        mounts: record.config.mounts.clone(),
        log_path: record.log_path.clone(),
        resources: record
            .resources
            .clone()
            .map(|linux| cri::ContainerResources {
                linux: Some(linux),
                windows: None,
            }),
        image_id: record.image.id.clone(),
        user: record
            .user
            .clone()
            .map(|linux| cri::ContainerUser { linux: Some(linux) }),
    }
}

/// The spec's cgroup resources and oom_score_adj in CRI terms (containerd's
/// `toCRIResources`); `None` when the spec has neither.
pub fn cri_resources(spec: &Spec) -> Option<cri::LinuxContainerResources> {
    let resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
    let oom = spec.process().as_ref().and_then(|p| p.oom_score_adj());
    if resources.is_none() && oom.is_none() {
        return None;
    }
    let mut out = cri::LinuxContainerResources {
        oom_score_adj: oom.map(i64::from).unwrap_or(0),
        ..Default::default()
    };
    if let Some(r) = resources {
        if let Some(cpu) = r.cpu() {
            out.cpu_period = cpu
                .period()
                .map(|v| i64::try_from(v).unwrap_or(i64::MAX))
                .unwrap_or(0);
            out.cpu_quota = cpu.quota().unwrap_or(0);
            out.cpu_shares = cpu
                .shares()
                .map(|v| i64::try_from(v).unwrap_or(i64::MAX))
                .unwrap_or(0);
            out.cpuset_cpus = cpu.cpus().clone().unwrap_or_default();
            out.cpuset_mems = cpu.mems().clone().unwrap_or_default();
        }
        if let Some(memory) = r.memory() {
            out.memory_limit_in_bytes = memory.limit().unwrap_or(0);
            out.memory_swap_limit_in_bytes = memory.swap().unwrap_or(0);
        }
        out.hugepage_limits = r
            .hugepage_limits()
            .iter()
            .flatten()
            .map(|h| cri::HugepageLimit {
                page_size: h.page_size().clone(),
                limit: u64::try_from(h.limit()).unwrap_or(0),
            })
            .collect();
        out.unified = r.unified().clone().unwrap_or_default();
    }
    Some(out)
}

/// The spec's user in CRI terms.
pub fn cri_user(spec: &Spec) -> Option<cri::LinuxContainerUser> {
    let user = spec.process().as_ref()?.user();
    Some(cri::LinuxContainerUser {
        uid: i64::from(user.uid()),
        gid: i64::from(user.gid()),
        supplemental_groups: user
            .additional_gids()
            .iter()
            .flatten()
            .map(|g| i64::from(*g))
            .collect(),
    })
}

/// Whether a container passes a ListContainers filter (all conditions ANDed). Ids and pod
/// sandbox ids match by prefix, as crictl users type them.
pub fn matches(filter: Option<&cri::ContainerFilter>, record: &ContainerRecord) -> bool {
    let Some(filter) = filter else {
        return true;
    };
    crate::filters::id_matches(&filter.id, &record.id)
        && crate::filters::id_matches(&filter.pod_sandbox_id, &record.sandbox_id)
        && filter
            .state
            .as_ref()
            .is_none_or(|s| s.state == cri_state(record.phase) as i32)
        && crate::filters::labels_match(&filter.label_selector, &record.config.labels)
}

/// Keys of ContainerStatus' verbose `info` map.
pub const INFO_KEY: &str = "info";

/// The verbose info document: containerd's keys (`sandboxID`, `pid`, `runtimeSpec`, ...) so
/// crictl's templates work, and bungeo's paths.
pub fn verbose_info(
    record: &ContainerRecord,
    spec: Option<serde_json::Value>,
) -> HashMap<String, String> {
    let info = serde_json::json!({
        "sandboxID": record.sandbox_id,
        "pid": record.pid,
        "removing": false,
        "snapshotKey": record.id,
        "snapshotter": "overlayfs",
        "runtimeType": "io.bungeo.shim.v1",
        "runtimeOptions": null,
        "config": record.config,
        "runtimeSpec": spec,
        "phase": record.phase,
        "bundle": record.bundle(),
        "rootfs": record.rootfs(),
        "writableLayer": record.dir.join(UPPER_DIR),
        "shimSocket": record.shim.socket,
        "shimStateDir": record.shim.state_dir,
        "logPath": record.log_path,
        "cgroupsPath": record.cgroups_path,
        "stopSignal": record.stop_signal,
    });
    HashMap::from([(INFO_KEY.to_owned(), info.to_string())])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;

    pub(crate) fn record(id: &str, sandbox_id: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.to_owned(),
            sandbox_id: sandbox_id.to_owned(),
            name: format!("web_pod_default_uid_1_{id}"),
            phase: ContainerPhase::Created,
            created_at: 1_700_000_000_000_000_001,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: 4242,
            config: cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "web".into(),
                    attempt: 1,
                }),
                image: Some(cri::ImageSpec {
                    image: "busybox".into(),
                    ..Default::default()
                }),
                labels: HashMap::from([("app".into(), "web".into())]),
                annotations: HashMap::from([("note".into(), "kept".into())]),
                mounts: vec![cri::Mount {
                    container_path: "/data".into(),
                    host_path: "/srv/data".into(),
                    ..Default::default()
                }],
                log_path: "web/1.log".into(),
                ..Default::default()
            },
            image: ContainerImage {
                name: "docker.io/library/busybox:latest".into(),
                image_ref: "docker.io/library/busybox@sha256:aa".into(),
                id: "sha256:bb".into(),
            },
            log_path: "/var/log/pods/p/web/1.log".into(),
            dir: PathBuf::from("/var/lib/bungeo/containers").join(id),
            shim: ShimPaths::new(Path::new("/run/bungeo"), id),
            stop_signal: "SIGQUIT".into(),
            cgroups_path: format!("/kubepods/pod1/{id}"),
            resources: None,
            user: None,
            start_error: None,
        }
    }

    #[test]
    fn records_serialize_with_readable_phases() {
        let r = record("c1", "p1");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["phase"], "created");
        let back: ContainerRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn exits_apply_once_with_the_reason_containerd_gives() {
        let mut r = record("c1", "p1");
        r.phase = ContainerPhase::Running;
        assert!(r.apply_exit(ExitInfo::observed(3, 10, false)));
        assert_eq!(
            (r.phase, r.exit_code, r.finished_at, r.reason.as_str()),
            (ContainerPhase::Exited, 3, 10, REASON_ERROR)
        );
        // A second report (the watcher and a stop racing) changes nothing.
        assert!(!r.apply_exit(ExitInfo::observed(0, 20, false)));
        assert_eq!(r.exit_code, 3);
        assert_eq!(ExitInfo::observed(0, 1, false).reason, REASON_COMPLETED);
        assert_eq!(ExitInfo::observed(137, 1, true).reason, REASON_OOM_KILLED);
        let u = ExitInfo::unknown(5, "gone".into());
        assert_eq!((u.exit_code, u.reason.as_str()), (255, REASON_UNKNOWN));
    }

    #[test]
    fn status_and_list_show_the_record() {
        let mut r = record("c1", "p1");
        r.phase = ContainerPhase::Exited;
        r.exit_code = 3;
        r.reason = REASON_ERROR.into();
        let s = cri_status(&r);
        assert_eq!(s.state(), cri::ContainerState::ContainerExited);
        assert_eq!(s.exit_code, 3);
        assert_eq!(
            s.image.as_ref().unwrap().image,
            "docker.io/library/busybox:latest"
        );
        assert_eq!(s.image_ref, "docker.io/library/busybox@sha256:aa");
        assert_eq!(s.image_id, "sha256:bb");
        assert_eq!(s.log_path, "/var/log/pods/p/web/1.log");
        assert_eq!(s.mounts.len(), 1);
        let c = cri_container(&r);
        assert_eq!(c.pod_sandbox_id, "p1");
        assert_eq!(c.image_ref, "sha256:bb");
        assert_eq!(c.image_id, "sha256:bb");
        assert_eq!(c.labels["app"], "web");
    }

    #[test]
    fn filters_and_id_state_pod_and_labels() {
        let r = record("abc", "pod1");
        let f = |id: &str, pod: &str, state: Option<cri::ContainerState>, sel: &[(&str, &str)]| {
            cri::ContainerFilter {
                id: id.into(),
                pod_sandbox_id: pod.into(),
                state: state.map(|s| cri::ContainerStateValue { state: s as i32 }),
                label_selector: sel
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }
        };
        assert!(matches(None, &r));
        assert!(matches(Some(&f("ab", "pod", None, &[])), &r));
        assert!(matches(
            Some(&f(
                "",
                "",
                Some(cri::ContainerState::ContainerCreated),
                &[("app", "web")]
            )),
            &r
        ));
        assert!(!matches(Some(&f("x", "", None, &[])), &r));
        assert!(!matches(Some(&f("", "pod2", None, &[])), &r));
        assert!(!matches(
            Some(&f("", "", Some(cri::ContainerState::ContainerRunning), &[])),
            &r
        ));
        assert!(!matches(Some(&f("", "", None, &[("app", "db")])), &r));
    }

    #[test]
    fn resources_and_user_come_from_the_spec() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {
                "cwd": "/",
                "user": {"uid": 1000, "gid": 100, "additionalGids": [100, 10]},
                "oomScoreAdj": 500
            },
            "linux": {"resources": {
                "cpu": {"period": 100000, "quota": 50000, "shares": 512, "cpus": "0"},
                "memory": {"limit": 33554432, "swap": 33554432},
                "unified": {"memory.high": "1000"}
            }}
        }))
        .unwrap();
        let r = cri_resources(&spec).unwrap();
        assert_eq!(
            (
                r.cpu_period,
                r.cpu_quota,
                r.cpu_shares,
                r.cpuset_cpus.as_str()
            ),
            (100000, 50000, 512, "0")
        );
        assert_eq!(r.memory_limit_in_bytes, 32 << 20);
        assert_eq!(r.memory_swap_limit_in_bytes, 32 << 20);
        assert_eq!(r.oom_score_adj, 500);
        assert_eq!(r.unified["memory.high"], "1000");
        let u = cri_user(&spec).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.supplemental_groups),
            (1000, 100, vec![100, 10])
        );
    }

    #[test]
    fn verbose_info_has_the_pid_and_the_spec() {
        let r = record("c1", "p1");
        let info = verbose_info(&r, Some(serde_json::json!({"ociVersion": "1.0.2"})));
        let v: serde_json::Value = serde_json::from_str(&info[INFO_KEY]).unwrap();
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["sandboxID"], "p1");
        assert_eq!(v["runtimeSpec"]["ociVersion"], "1.0.2");
        assert_eq!(v["shimSocket"], "/run/bungeo/shims/c1.sock");
    }
}
