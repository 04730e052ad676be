//! Container records, request checks and restart recovery, without shims: a shim that is gone
//! is the case recovery has to get right from disk alone. The lifecycle with real shims is
//! tested end to end in `tests/tests/containers.rs`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bungeo_imagestore::{ImageStore, RegistriesConfig, StoreConfig};
use bungeo_shim::exit_record::{self, ExitRecord};
use k8s_cri::v1 as cri;

use super::record::{
    self, REASON_ERROR, REASON_OOM_KILLED, REASON_START_ERROR, REASON_UNKNOWN,
    START_ERROR_EXIT_CODE,
};
use super::*;
use crate::config::Config;
use crate::records::RECORDS_FILE;
use crate::sandbox::SandboxSettings;

/// Containers over a store and the given sandboxes, with everything under `dir`.
pub(crate) fn open_in(dir: &Path, config: &Config, sandboxes: &Arc<Sandboxes>) -> Containers {
    let store = ImageStore::open(StoreConfig {
        root: dir.join("root"),
        max_concurrent_downloads: 1,
        registries: RegistriesConfig::default(),
    })
    .unwrap();
    let mut settings = ContainerSettings::from_config(config);
    settings.root = dir.join("root");
    settings.state = dir.join("state");
    settings.shim.runtime_root = dir.join("state").join(RUNTIME_DIR);
    Containers::open(settings, Arc::new(store), Arc::clone(sandboxes)).unwrap()
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn sandboxes(&self) -> Arc<Sandboxes> {
        let mut settings = SandboxSettings::from_config(&Config::default());
        settings.root = self.dir.path().join("root");
        settings.state = self.dir.path().join("state");
        Arc::new(Sandboxes::open(settings).unwrap())
    }

    fn open(&self) -> (Arc<Sandboxes>, Containers) {
        let sandboxes = self.sandboxes();
        let containers = open_in(self.dir.path(), &Config::default(), &sandboxes);
        (sandboxes, containers)
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }

    fn entries(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// A pod on the node's network and IPC: no mounts to make or clean up.
fn pod_request(name: &str) -> cri::RunPodSandboxRequest {
    let node = cri::NamespaceMode::Node as i32;
    cri::RunPodSandboxRequest {
        config: Some(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: node,
                        ipc: node,
                        pid: cri::NamespaceMode::Container as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        runtime_handler: String::new(),
    }
}

fn create_request(pod: &str, name: &str, image: &str) -> cri::CreateContainerRequest {
    cri::CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        sandbox_config: None,
    }
}

/// A record as a previous daemon left it, with its directory and shim dir on disk.
fn left_behind(env: &Env, sandbox: &str, phase: ContainerPhase) -> ContainerRecord {
    let id = ids::generate();
    let containers_dir = std::fs::canonicalize(env.path("root/containers")).unwrap();
    let mut r = record::tests::record(&id, sandbox);
    r.phase = phase;
    r.dir = containers_dir.join(&id);
    r.shim = ShimPaths::new(&env.path("state"), &id);
    std::fs::create_dir_all(r.dir.join("upper/etc")).unwrap();
    std::fs::create_dir_all(r.rootfs()).unwrap();
    std::fs::create_dir_all(&r.shim.state_dir).unwrap();
    r
}

fn code(e: &Error) -> tonic::Code {
    crate::errors::status(e).code()
}

#[test]
fn create_checks_the_request_pod_and_image_and_leaves_nothing() {
    let env = Env::new();
    let (sandboxes, containers) = env.open();
    let pod = sandboxes.run(&pod_request("p")).unwrap();
    let check = |req: cri::CreateContainerRequest, want: tonic::Code, needle: &str| {
        let err = containers.create(&req).unwrap_err();
        assert_eq!(code(&err), want, "{err}");
        assert!(err.to_string().contains(needle), "{err} lacks {needle}");
    };
    let mut r = create_request(&pod, "c", "busybox");
    r.config = None;
    check(r, tonic::Code::InvalidArgument, "config is required");
    let mut r = create_request(&pod, "c", "busybox");
    r.config.as_mut().unwrap().metadata = None;
    check(r, tonic::Code::InvalidArgument, "metadata is required");
    check(
        create_request(&pod, "", "busybox"),
        tonic::Code::InvalidArgument,
        "metadata.name",
    );
    check(
        create_request(&pod, "c", ""),
        tonic::Code::InvalidArgument,
        "image.image",
    );
    check(
        create_request("feedface", "c", "busybox"),
        tonic::Code::NotFound,
        "pod sandbox feedface not found",
    );
    check(
        create_request(&pod, "c", "busybox"),
        tonic::Code::NotFound,
        "pull it before creating container \"c\"",
    );
    sandboxes.stop(&pod).unwrap();
    check(
        create_request(&pod[..12], "c", "busybox"),
        tonic::Code::FailedPrecondition,
        "is not ready",
    );
    assert!(env.entries("root/containers").is_empty());
    assert!(env.entries("state/shims").is_empty());
    assert!(sandboxes.records().containers().unwrap().is_empty());
    assert!(containers.list(None).is_empty());
    sandboxes.remove(&pod).unwrap();
}

#[test]
fn unknown_containers_stop_and_remove_fine_and_have_no_status() {
    let env = Env::new();
    let (_sandboxes, containers) = env.open();
    let id = ids::generate();
    containers.stop(&id, 10).unwrap();
    containers.remove(&id).unwrap();
    for err in [
        containers.status(&id, false).unwrap_err(),
        containers.start(&id).unwrap_err(),
        containers.reopen_log(&id).unwrap_err(),
        containers
            .exec_sync(&cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["true".into()],
                timeout: 0,
            })
            .unwrap_err(),
    ] {
        assert_eq!(code(&err), tonic::Code::NotFound, "{err}");
        assert!(err.to_string().contains(&id), "{err}");
    }
    assert_eq!(
        code(&containers.status("", false).unwrap_err()),
        tonic::Code::InvalidArgument
    );
}

#[test]
fn records_of_containers_survive_reopening() {
    let env = Env::new();
    let (sandboxes, containers) = env.open();
    let mut a = record::tests::record("a", "p");
    a.phase = ContainerPhase::Exited;
    let mut b = record::tests::record("b", "p");
    b.phase = ContainerPhase::Exited;
    sandboxes.records().put_container(&a).unwrap();
    sandboxes.records().put_container(&b).unwrap();
    b.exit_code = 7;
    sandboxes.records().put_container(&b).unwrap();
    drop(containers);
    drop(sandboxes);
    let records = crate::records::Records::open(&env.path("root").join(RECORDS_FILE)).unwrap();
    assert_eq!(records.containers().unwrap(), vec![a.clone(), b]);
    records.delete_container("b").unwrap();
    records.delete_container("b").unwrap();
    assert_eq!(records.containers().unwrap(), vec![a]);
    // Sandbox records are a table of their own.
    assert!(records.sandboxes().unwrap().is_empty());
}

/// What a `kill -9` of the daemon followed by the shims' fates leaves, and what the next
/// start makes of it.
#[test]
fn restart_recovery_reads_exits_from_disk() {
    let env = Env::new();
    let (sandboxes, containers) = env.open();
    let pod = sandboxes.run(&pod_request("p")).unwrap();
    let other = sandboxes.run(&pod_request("q")).unwrap();
    drop(containers);

    // Exited while the daemon was down: the shim wrote exit.json, then went away.
    let exited = left_behind(&env, &pod, ContainerPhase::Running);
    let at = UNIX_EPOCH + std::time::Duration::new(1_800_000_000, 7);
    exit_record::write(&exited.shim.state_dir, &ExitRecord::new(3, at, false)).unwrap();
    // OOM-killed.
    let oom = left_behind(&env, &pod, ContainerPhase::Running);
    exit_record::write(&oom.shim.state_dir, &ExitRecord::new(137, at, true)).unwrap();
    // Its shim vanished without a word (killed, or a reboot emptied the state dir).
    let vanished = left_behind(&env, &pod, ContainerPhase::Running);
    std::fs::remove_dir_all(&vanished.shim.state_dir).unwrap();
    // Created, never started, shim gone.
    let created = left_behind(&env, &other, ContainerPhase::Created);
    // Exited before the crash: left as it was.
    let mut done = left_behind(&env, &other, ContainerPhase::Exited);
    done.exit_code = 0;
    done.reason = record::REASON_COMPLETED.into();
    // Half-created: goes, with its files.
    let creating = left_behind(&env, &pod, ContainerPhase::Creating);
    for r in [&exited, &oom, &vanished, &created, &done, &creating] {
        sandboxes.records().put_container(r).unwrap();
    }
    // Files no record names: go too.
    let orphan = ids::generate();
    std::fs::create_dir_all(env.path("root/containers").join(&orphan).join("upper")).unwrap();
    std::fs::create_dir_all(env.path("state/shims").join(&orphan)).unwrap();
    // Not an id: not ours to judge.
    std::fs::create_dir_all(env.path("root/containers/keep-me")).unwrap();

    let containers = open_in(env.dir.path(), &Config::default(), &sandboxes);
    let status = |id: &str| containers.status(id, false).unwrap().status.unwrap();

    let s = status(&exited.id);
    assert_eq!(s.state(), cri::ContainerState::ContainerExited);
    assert_eq!((s.exit_code, s.reason.as_str()), (3, REASON_ERROR));
    assert_eq!(s.finished_at, ns_of(at));
    let s = status(&oom.id);
    assert_eq!((s.exit_code, s.reason.as_str()), (137, REASON_OOM_KILLED));
    for id in [&vanished.id, &created.id] {
        let s = status(id);
        assert_eq!(s.state(), cri::ContainerState::ContainerExited);
        assert_eq!((s.exit_code, s.reason.as_str()), (255, REASON_UNKNOWN));
        assert!(s.message.contains("left no exit record"), "{}", s.message);
        assert!(s.finished_at > 0);
    }
    assert_eq!(status(&done.id).reason, record::REASON_COMPLETED);
    assert_eq!(
        code(&containers.status(&creating.id, false).unwrap_err()),
        tonic::Code::NotFound
    );
    assert!(!creating.dir.exists());
    assert!(!creating.shim.state_dir.exists());
    // What recovery decided is on record, not just in memory.
    let on_record: HashMap<String, ContainerRecord> = sandboxes
        .records()
        .containers()
        .unwrap()
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    assert_eq!(on_record.len(), 5);
    assert_eq!(on_record[&exited.id].exit_code, 3);
    assert_eq!(on_record[&vanished.id].reason, REASON_UNKNOWN);

    let mut listed: Vec<String> = containers.list(None).into_iter().map(|c| c.id).collect();
    listed.sort();
    let mut want = vec![
        exited.id.clone(),
        oom.id.clone(),
        vanished.id.clone(),
        created.id.clone(),
        done.id.clone(),
    ];
    want.sort();
    assert_eq!(listed, want);
    let of_other = containers.list(Some(&cri::ContainerFilter {
        pod_sandbox_id: other[..10].to_owned(),
        ..Default::default()
    }));
    assert_eq!(of_other.len(), 2);

    // Stopping exited containers does nothing; removing them takes their files.
    containers.stop(&exited.id, 5).unwrap();
    containers.remove_pod(&other).unwrap();
    assert!(!created.dir.exists() && !done.dir.exists());
    assert_eq!(containers.list(None).len(), 3);
    for r in [&exited, &oom, &vanished] {
        containers.remove(&r.id[..16]).unwrap();
        containers.remove(&r.id).unwrap();
        assert!(!r.dir.exists(), "{}", r.dir.display());
        assert!(!r.shim.state_dir.exists());
    }
    assert!(containers.list(None).is_empty());
    assert!(sandboxes.records().containers().unwrap().is_empty());
    assert_eq!(env.entries("root/containers"), vec!["keep-me".to_owned()]);
    assert!(env.entries("state/shims").is_empty());
    for id in [pod, other] {
        sandboxes.remove(&id).unwrap();
    }
}

#[test]
fn an_exited_container_cannot_start_exec_or_reopen_its_log() {
    let env = Env::new();
    let (sandboxes, containers) = env.open();
    let r = left_behind(&env, "p", ContainerPhase::Exited);
    sandboxes.records().put_container(&r).unwrap();
    drop(containers);
    let containers = open_in(env.dir.path(), &Config::default(), &sandboxes);
    let exec = cri::ExecSyncRequest {
        container_id: r.id.clone(),
        cmd: vec!["true".into()],
        timeout: 1,
    };
    for err in [
        containers.start(&r.id).unwrap_err(),
        containers.exec_sync(&exec).unwrap_err(),
        containers.reopen_log(&r.id).unwrap_err(),
    ] {
        assert_eq!(code(&err), tonic::Code::FailedPrecondition, "{err}");
        assert!(err.to_string().contains("CONTAINER_EXITED"), "{err}");
    }
    containers.remove(&r.id).unwrap();
}

#[test]
fn a_container_the_runtime_refused_stays_created_until_its_start_fails() {
    let env = Env::new();
    let (sandboxes, containers) = env.open();
    let pod = sandboxes.run(&pod_request("p")).unwrap();
    drop(containers);
    // No init and no shim: CreateContainer kept the runtime's refusal for StartContainer.
    let mut r = left_behind(&env, &pod, ContainerPhase::Created);
    r.pid = 0;
    r.start_error = Some("exec: \"nope\": executable file not found in $PATH".into());
    sandboxes.records().put_container(&r).unwrap();
    // A restart finds no shim, and that is no exit of an init that never was.
    let containers = open_in(env.dir.path(), &Config::default(), &sandboxes);
    let status = |id: &str| containers.status(id, false).unwrap().status.unwrap();
    assert_eq!(status(&r.id).state(), cri::ContainerState::ContainerCreated);
    let err = containers.start(&r.id).unwrap_err();
    assert!(
        err.to_string().contains("executable file not found"),
        "{err}"
    );
    let s = status(&r.id);
    assert_eq!(s.state(), cri::ContainerState::ContainerExited);
    assert_eq!(
        (s.exit_code, s.reason.as_str()),
        (START_ERROR_EXIT_CODE, REASON_START_ERROR)
    );
    assert!(s.message.contains("\"nope\""), "{}", s.message);
    assert!(s.finished_at > 0);
    let err = containers.start(&r.id).unwrap_err();
    assert_eq!(code(&err), tonic::Code::FailedPrecondition, "{err}");
    containers.remove(&r.id).unwrap();
    assert!(!r.dir.exists());
    assert!(containers.list(None).is_empty());
    sandboxes.remove(&pod).unwrap();
}

#[test]
fn cgroup_paths_follow_the_driver() {
    let env = Env::new();
    let (_sandboxes, mut containers) = env.open();
    assert_eq!(containers.cgroups_path("", "c1"), "");
    assert_eq!(
        containers.cgroups_path("/kubepods/pod1/", "c1"),
        "/kubepods/pod1/c1"
    );
    containers.cgroup_driver = CgroupDriver::Systemd;
    assert_eq!(
        containers.cgroups_path("kubepods-pod1.slice", "c1"),
        "kubepods-pod1.slice:bungeo:c1"
    );
    assert_eq!(containers.cgroups_path("", "c1"), "system.slice:bungeo:c1");
}

#[test]
fn binaries_default_to_the_daemons_directory_unless_configured() {
    let exe_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let s = ContainerSettings::from_config(&Config::default());
    assert_eq!(s.shim.shim, exe_dir.join(SHIM_BINARY));
    assert_eq!(s.shim.runtime, exe_dir.join(RUNTIME_BINARY));
    assert_eq!(
        s.shim.runtime_root,
        Path::new("/run/bungeo").join(RUNTIME_DIR)
    );
    assert!(!s.shim.systemd_cgroup);
    let mut config = Config::default();
    config.shim.binary = "/opt/bungeo/shim".into();
    config.shim.runtime = "/usr/bin/runc".into();
    config.cgroup_driver = CgroupDriver::Systemd;
    let s = ContainerSettings::from_config(&config);
    assert_eq!(s.shim.shim, Path::new("/opt/bungeo/shim"));
    assert_eq!(s.shim.runtime, Path::new("/usr/bin/runc"));
    assert!(s.shim.systemd_cgroup);
}

/// A shim exits by itself a while after Delete; on a loaded node that can beat its answer.
/// RemoveContainer then still removes everything instead of failing with "the shim is gone".
#[test]
fn a_shim_that_goes_away_during_delete_still_lets_the_container_go() {
    let env = Env::new();
    let (sandboxes, containers) = env.open();
    let pod = sandboxes.run(&pod_request("p")).unwrap();
    drop(containers);
    let mut r = left_behind(&env, &pod, ContainerPhase::Exited);
    r.exit_code = 0;
    r.reason = record::REASON_COMPLETED.into();
    sandboxes.records().put_container(&r).unwrap();
    let containers = open_in(env.dir.path(), &Config::default(), &sandboxes);

    // One connection: the Delete request arrives, then the shim is gone without an answer.
    let listener = std::os::unix::net::UnixListener::bind(&r.shim.socket).unwrap();
    let shim = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = [0u8; 64];
        let n = std::io::Read::read(&mut conn, &mut request).unwrap();
        assert!(n > 0, "no request reached the shim");
    });
    containers.remove(&r.id).unwrap();
    shim.join().unwrap();
    assert!(!r.dir.exists());
    assert!(!r.shim.state_dir.exists());
    assert!(!r.shim.socket.exists());
    assert!(containers.list(None).is_empty());
    assert!(sandboxes.records().containers().unwrap().is_empty());
    sandboxes.remove(&pod).unwrap();
}
