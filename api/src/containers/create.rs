//! CreateContainer: the name reservation, the writable layer and overlay rootfs, the OCI spec,
//! the shim and its created init; and the teardown that undoes each piece.

use std::fs::DirBuilder;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bungeo_imagestore::ImageRecord;
use bungeo_runtime::rootfs;
use bungeo_runtime::spec::{self, PodNamespaces, SandboxFiles, SpecInput};
use k8s_cri::v1 as cri;
use oci_spec::runtime::Spec;
use tracing::{info, info_span, warn};

use super::record::{
    BUNDLE_DIR, ContainerImage, ContainerPhase, ContainerRecord, ROOTFS_DIR, SPEC_FILE, UPPER_DIR,
    WORK_DIR, cri_resources, cri_user,
};
use super::{
    CONTAINER_DIR_MODE, Containers, Entry, Index, NameReservation, create_dir, lock, now_ns,
    remove_dir_all, remove_file, shim_error,
};
use crate::config::CgroupDriver;
use crate::errors::{Error, Result};
use crate::ids;
use crate::records::{SandboxPhase, SandboxRecord};
use crate::sandbox_files::{HOSTNAME_FILE, HOSTS_FILE, RESOLV_CONF_FILE};
use crate::shims::{self, CallError, Shim, ShimPaths};

/// How long a shim may take to go away after Shutdown.
const SHIM_EXIT_WAIT: Duration = Duration::from_secs(5);

/// Prefix of the systemd scope of a container (`<slice>:bungeo:<id>`).
const SYSTEMD_SCOPE_PREFIX: &str = "bungeo";

/// The name a container's metadata reserves in its pod, as containerd builds it: a second
/// container with the same name and attempt in the pod is refused while the first exists
/// (kubelet relies on it to never run a container twice).
fn reservation_name(
    metadata: &cri::ContainerMetadata,
    pod: Option<&cri::PodSandboxMetadata>,
) -> String {
    let pod = pod.cloned().unwrap_or_default();
    format!(
        "{}_{}_{}_{}_{}",
        metadata.name, pod.name, pod.namespace, pod.uid, metadata.attempt
    )
}

/// The image as status calls show it: its first tag, its id, and the repo digest of the
/// repository the container named (an image pulled from two registries has one per registry;
/// containerd takes the first whatever was asked), else the first, else the id.
fn image_info(given: &str, image: &ImageRecord) -> ContainerImage {
    let repository = bungeo_imagestore::Reference::parse(given)
        .ok()
        .map(|r| r.repository());
    let own_digest = repository.and_then(|repo| {
        image
            .repo_digests
            .iter()
            .find(|d| d.split_once('@').is_some_and(|(name, _)| name == repo))
    });
    ContainerImage {
        name: image
            .repo_tags
            .first()
            .cloned()
            .unwrap_or_else(|| given.to_owned()),
        image_ref: own_digest
            .or_else(|| image.repo_digests.first())
            .cloned()
            .unwrap_or_else(|| image.id.clone()),
        id: image.id.clone(),
    }
}

/// The image's STOPSIGNAL, as written in its config.
fn stop_signal(image: &ImageRecord) -> String {
    image
        .config
        .get("config")
        .and_then(|c| c.get("StopSignal"))
        .and_then(|s| s.as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Writes `spec` as `path`: temp file, fsync, rename.
fn write_spec(path: &Path, spec: &Spec) -> Result<()> {
    let json = serde_json::to_vec(spec).map_err(|e| {
        Error::io(
            "encode the OCI spec for",
            path,
            std::io::Error::other(e.to_string()),
        )
    })?;
    write_atomically(path, &json)
}

pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io("create", &tmp, e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io("write", &tmp, e))?;
    f.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io("rename into place", path, e))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("fsync", dir, e))?;
    }
    Ok(())
}

/// A container's log path is relative to its pod's log directory (the CRI's `log_path`) and
/// must stay inside it: an absolute path or a `..` would have the shim create and write a
/// file anywhere on the host, as root.
fn check_log_path(log_path: &str) -> std::result::Result<(), String> {
    let path = Path::new(log_path);
    if path.components().any(|c| {
        !matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    }) {
        return Err(format!(
            "config.log_path {log_path:?} must be a relative path inside the pod's log directory"
        ));
    }
    Ok(())
}

impl Containers {
    /// CreateContainer: creates a container in a ready pod sandbox and returns its id. On
    /// failure nothing of it is left: no shim, no mount, no directory, no record.
    pub fn create(&self, request: &cri::CreateContainerRequest) -> Result<String> {
        let invalid = |m: &str| Error::InvalidArgument(format!("CreateContainer: {m}"));
        let config = request
            .config
            .as_ref()
            .ok_or_else(|| invalid("config is required"))?;
        let metadata = config
            .metadata
            .as_ref()
            .ok_or_else(|| invalid("config.metadata is required"))?;
        if metadata.name.is_empty() {
            return Err(invalid("config.metadata.name is required"));
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.as_str())
            .unwrap_or_default();
        if image_name.is_empty() {
            return Err(invalid("config.image.image is required"));
        }
        check_log_path(&config.log_path).map_err(|m| invalid(&m))?;
        let sandbox = self.sandboxes.record(&request.pod_sandbox_id)?;
        if sandbox.phase != SandboxPhase::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready: no container can be created in it",
                sandbox.id
            )));
        }
        let image = self.store.get(image_name)?.ok_or_else(|| {
            Error::NotFound(format!(
                "image {image_name:?} not found: pull it before creating container {:?}",
                metadata.name
            ))
        })?;
        let id = ids::generate();
        let _span = info_span!("container", container_id = %id, pod_id = %sandbox.id).entered();
        let name = reservation_name(metadata, sandbox.config.metadata.as_ref());
        let reservation = self.reserve(&name, &id)?;
        let mut record = self.new_record(&id, name, &sandbox, config, image_name, &image);
        self.records().put_container(&record)?;
        let built = self.build(&mut record, &sandbox, &image).and_then(|()| {
            record.phase = ContainerPhase::Created;
            self.records().put_container(&record)
        });
        if let Err(e) = built {
            self.roll_back(&record);
            return Err(e);
        }
        reservation.keep();
        info!(name = %record.name, pid = record.pid, "container created");
        lock(&self.index)
            .entries
            .insert(id.clone(), Entry::new(record));
        self.events.emit(
            &id,
            &sandbox.id,
            cri::ContainerEventType::ContainerCreatedEvent,
        );
        Ok(id)
    }

    fn reserve(&self, name: &str, id: &str) -> Result<NameReservation<'_, Index>> {
        let mut index = lock(&self.index);
        if let Some(owner) = index.names.get(name) {
            return Err(Error::AlreadyExists(format!(
                "container name {name:?} is reserved for container {owner}"
            )));
        }
        Ok(NameReservation::take(&self.index, &mut index, name, id))
    }

    /// The record of a container about to be built, in the `creating` phase.
    fn new_record(
        &self,
        id: &str,
        name: String,
        sandbox: &SandboxRecord,
        config: &cri::ContainerConfig,
        image_name: &str,
        image: &ImageRecord,
    ) -> ContainerRecord {
        let log_dir = &sandbox.config.log_directory;
        let log_path = if log_dir.is_empty() || config.log_path.is_empty() {
            String::new()
        } else {
            Path::new(log_dir)
                .join(&config.log_path)
                .to_string_lossy()
                .into_owned()
        };
        ContainerRecord {
            id: id.to_owned(),
            sandbox_id: sandbox.id.clone(),
            name,
            phase: ContainerPhase::Creating,
            created_at: now_ns(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: 0,
            config: config.clone(),
            image: image_info(image_name, image),
            log_path,
            dir: self.containers_dir.join(id),
            shim: ShimPaths::new(&self.state, id),
            stop_signal: stop_signal(image),
            cgroups_path: self.cgroups_path(&sandbox.cgroup_parent, id),
            resources: None,
            user: None,
            start_error: None,
        }
    }

    /// `linux.cgroupsPath`: the container under its pod's cgroup, in the driver's form. With
    /// no pod cgroup the runtime's default (`/bungeo/<id>`) applies.
    pub(super) fn cgroups_path(&self, parent: &str, id: &str) -> String {
        match self.cgroup_driver {
            CgroupDriver::Cgroupfs if parent.is_empty() => String::new(),
            CgroupDriver::Cgroupfs => format!("{}/{id}", parent.trim_end_matches('/')),
            CgroupDriver::Systemd => {
                let slice = if parent.is_empty() {
                    "system.slice"
                } else {
                    parent
                };
                format!("{slice}:{SYSTEMD_SCOPE_PREFIX}:{id}")
            }
        }
    }

    /// The steps of creation, in the order a crash may interrupt them.
    fn build(
        &self,
        record: &mut ContainerRecord,
        sandbox: &SandboxRecord,
        image: &ImageRecord,
    ) -> Result<()> {
        let what = record.display();
        let upper = record.dir.join(UPPER_DIR);
        let work = record.dir.join(WORK_DIR);
        let bundle = record.bundle();
        let rootfs = record.rootfs();
        create_dir(&record.dir, CONTAINER_DIR_MODE, false)?;
        // The upper directory's mode becomes the mode of the container's `/`.
        create_dir(&upper, 0o755, false)?;
        create_dir(&work, 0o700, false)?;
        create_dir(&bundle, CONTAINER_DIR_MODE, false)?;
        create_dir(&rootfs, 0o755, false)?;
        let lowers = self.store.hold(&record.id, image)?;
        let userns = crate::userns::pinned_user_namespace(&sandbox.ns_dir)
            .zip(crate::userns::pod_root_ids(&sandbox.config));
        match userns {
            // Layers idmapped into the pod's user namespace: no chown of shared layers.
            Some((ns, root)) => {
                rootfs::mount_overlay_idmapped(&lowers, &upper, &work, &rootfs, &ns, root)
            }
            None => rootfs::mount_overlay(&lowers, &upper, &work, &rootfs),
        }
        .map_err(|e| Error::runtime(format!("container {what}: mount its rootfs"), e))?;

        let target_pid_namespace = self.target_pid_namespace(&record.config)?;
        let pod_pid = self.pod_pid_namespace(&record.config, sandbox)?;
        let files = SandboxFiles {
            hosts: Some(sandbox.dir.join(HOSTS_FILE)),
            resolv_conf: Some(sandbox.dir.join(RESOLV_CONF_FILE)),
            hostname: Some(sandbox.dir.join(HOSTNAME_FILE)),
            shm: sandbox.shm.clone(),
        };
        let namespaces = PodNamespaces {
            net: sandbox.namespaces.net.clone(),
            ipc: sandbox.namespaces.ipc.clone(),
            uts: sandbox.namespaces.uts.clone(),
            pid: pod_pid,
            user: crate::userns::pinned_user_namespace(&sandbox.ns_dir),
        };
        let spec = spec::generate(&SpecInput {
            container_id: &record.id,
            sandbox_id: &sandbox.id,
            container: &record.config,
            sandbox: &sandbox.config,
            image_config: &image.config,
            rootfs: &rootfs,
            sandbox_files: &files,
            pod_namespaces: &namespaces,
            target_pid_namespace,
            cgroups_path: record.cgroups_path.clone(),
            apparmor: &self.apparmor,
            restrict_oom_score_adj: self.oom_score_adj,
        })
        .map_err(|e| Error::runtime("CreateContainer", e))?;
        record.resources = cri_resources(&spec);
        record.user = cri_user(&spec);
        write_spec(&bundle.join(SPEC_FILE), &spec)?;

        let log = (!record.log_path.is_empty()).then(|| PathBuf::from(&record.log_path));
        if let Some(dir) = log.as_deref().and_then(Path::parent)
            && !dir.is_dir()
        {
            // kubelet makes the directory; crictl users may not have. An existing one keeps
            // its mode (it may be /tmp).
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| Error::io("create log directory", dir, e))?;
        }
        if !self.shim.shim.is_file() {
            return Err(Error::Shim {
                what: format!("container {what}: start its shim"),
                message: format!(
                    "{} does not exist (install it beside bungeo, or set shim.binary)",
                    self.shim.shim.display()
                ),
            });
        }
        let shim = shims::launch(&self.shim, &record.shim, &record.id, &bundle)
            .map_err(|e| shim_error(&what, "start its shim", e))?;
        let created = shim.create(
            &bundle,
            log.as_deref(),
            record.config.tty,
            shims::StdioOptions {
                stdin: record.config.stdin,
                stdin_once: record.config.stdin_once,
            },
        );
        match created {
            Ok(pid) => record.pid = pid,
            // The shim answered: the runtime refused the init. containerd would learn this at
            // StartContainer, so that is where it is reported; the shim has nothing to hold.
            Err(CallError::Status { message, .. }) => {
                warn!(error = %message, "the runtime refused the container: StartContainer will fail");
                shim.shutdown()
                    .map_err(|e| shim_error(&what, "shut down its shim", e))?;
                wait_gone(&record.shim, &record.id);
                record.start_error = Some(message);
            }
            Err(e) => return Err(shim_error(&what, "create", e)),
        }
        Ok(())
    }

    /// The pod's pinned pid namespace, for a container in PID mode POD of a pod that has one;
    /// FailedPrecondition when the infra process that holds it is gone (a namespace whose pid
    /// 1 has exited takes no new processes).
    fn pod_pid_namespace(
        &self,
        config: &cri::ContainerConfig,
        sandbox: &SandboxRecord,
    ) -> Result<Option<PathBuf>> {
        let Some(pinned) = &sandbox.namespaces.pid else {
            return Ok(None);
        };
        let mode = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .map_or(cri::NamespaceMode::Pod as i32, |o| o.pid);
        if mode != cri::NamespaceMode::Pod as i32 {
            return Ok(None);
        }
        if !sandbox
            .infra
            .as_ref()
            .is_some_and(crate::sandbox::infra_running)
        {
            return Err(Error::FailedPrecondition(format!(
                "CreateContainer: pod sandbox {} shares one pid namespace, and its infra \
                 process is gone (was the pod stopped?): no container can join it",
                sandbox.id
            )));
        }
        Ok(Some(pinned.clone()))
    }

    /// `/proc/<pid>/ns/pid` of the target container, for a container that asks to share the
    /// PID namespace of another (NamespaceMode TARGET).
    fn target_pid_namespace(&self, config: &cri::ContainerConfig) -> Result<Option<PathBuf>> {
        let options = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref());
        let Some(options) = options else {
            return Ok(None);
        };
        if options.pid != cri::NamespaceMode::Target as i32 {
            return Ok(None);
        }
        let target = &options.target_id;
        let (_, _, record) = self.get(target).map_err(|_| {
            Error::InvalidArgument(format!(
                "CreateContainer: the target container {target:?} of the pid namespace does not exist"
            ))
        })?;
        if record.phase != ContainerPhase::Running || record.pid == 0 {
            return Err(Error::FailedPrecondition(format!(
                "CreateContainer: the target container {} of the pid namespace is not running",
                record.id
            )));
        }
        Ok(Some(PathBuf::from(format!("/proc/{}/ns/pid", record.pid))))
    }

    /// Undoes a failed creation. What cannot be undone stays with its `creating` record, for
    /// the next start to finish.
    fn roll_back(&self, record: &ContainerRecord) {
        match self.teardown(&record.id, &record.dir, &record.shim) {
            Ok(()) => {
                if let Err(e) = self.records().delete_container(&record.id) {
                    warn!(error = %e, "rolling back a failed CreateContainer");
                }
            }
            Err(e) => warn!(
                error = %e,
                "rolling back a failed CreateContainer; the next start of bungeo retries"
            ),
        }
    }

    /// Removes a container's shim (deleting its init, which must not run), rootfs mount,
    /// directory and shim files. Each step accepts what is already gone, so it can be
    /// repeated after any crash. A shim that refuses to let go stops the teardown: the rootfs
    /// of a live container stays.
    pub(super) fn teardown(&self, id: &str, dir: &Path, shim: &ShimPaths) -> Result<()> {
        match Shim::connect(shim, id) {
            Ok(s) => {
                match s.delete("") {
                    // The shim went away during the call: it exits by itself a while after a
                    // Delete, and on a loaded node that can come before its answer leaves (or
                    // it died). Either way the runtime removes whatever is left, idempotently.
                    Err(CallError::Gone(_)) => {
                        wait_gone(shim, id);
                        super::lifecycle::clean_up_after_dead_shim(&self.shim, id);
                    }
                    Err(e) if !e.is_not_found() => return Err(shim_error(id, "delete", e)),
                    // Deleted now, or never created or deleted by an earlier try.
                    _ => {
                        s.shutdown()
                            .map_err(|e| shim_error(id, "shut down its shim", e))?;
                        wait_gone(shim, id);
                    }
                }
            }
            // No shim deleted the init, its cgroup and runtime state: the runtime does.
            Err(CallError::Gone(_)) => super::lifecycle::clean_up_after_dead_shim(&self.shim, id),
            Err(e) => return Err(shim_error(id, "connect to its shim", e)),
        }
        let rootfs = dir.join(BUNDLE_DIR).join(ROOTFS_DIR);
        rootfs::unmount(&rootfs)
            .map_err(|e| Error::runtime(format!("container {id}: unmount its rootfs"), e))?;
        remove_dir_all(dir)?;
        remove_dir_all(&shim.state_dir)?;
        remove_file(&shim.socket)?;
        // Last: the lower layers must outlive the overlay mounted on them.
        self.store.release(id)?;
        Ok(())
    }
}

/// Waits until the shim at `paths` stops answering (it exits shortly after Shutdown).
fn wait_gone(paths: &ShimPaths, id: &str) {
    let deadline = Instant::now() + SHIM_EXIT_WAIT;
    while Instant::now() < deadline {
        match Shim::connect(paths, id) {
            Err(CallError::Gone(_)) => return,
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    warn!(container_id = %id, "the shim still answers {SHIM_EXIT_WAIT:?} after Shutdown");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageRecord {
        serde_json::from_value(serde_json::json!({
            "id": "sha256:cfg",
            "repo_tags": ["docker.io/library/busybox:latest", "docker.io/library/busybox:1"],
            "repo_digests": ["docker.io/library/busybox@sha256:man"],
            "manifest_digest": "sha256:man",
            "index_digest": null,
            "size": 1,
            "chain_ids": [],
            "layer_digests": [],
            "blobs": [],
            "config": {"config": {"StopSignal": "SIGQUIT"}},
            "created_unix": 0,
            "annotations": {}
        }))
        .unwrap()
    }

    #[test]
    fn the_reservation_name_is_containerds() {
        let c = cri::ContainerMetadata {
            name: "web".into(),
            attempt: 2,
        };
        let p = cri::PodSandboxMetadata {
            name: "pod".into(),
            uid: "u1".into(),
            namespace: "ns".into(),
            attempt: 0,
        };
        assert_eq!(reservation_name(&c, Some(&p)), "web_pod_ns_u1_2");
    }

    #[test]
    fn images_show_their_tag_digest_and_id() {
        let i = image();
        let info = image_info("busybox", &i);
        assert_eq!(info.name, "docker.io/library/busybox:latest");
        assert_eq!(info.image_ref, "docker.io/library/busybox@sha256:man");
        assert_eq!(info.id, "sha256:cfg");
        assert_eq!(stop_signal(&i), "SIGQUIT");
        let mut two = image();
        two.repo_digests
            .push("mirror.example:5000/busybox@sha256:man".into());
        let info = image_info("mirror.example:5000/busybox:latest", &two);
        assert_eq!(info.image_ref, "mirror.example:5000/busybox@sha256:man");
        let info = image_info("sha256:cfg", &two);
        assert_eq!(info.image_ref, "docker.io/library/busybox@sha256:man");
        let mut bare = image();
        bare.repo_tags.clear();
        bare.repo_digests.clear();
        bare.config = serde_json::json!({});
        let info = image_info("sha256:cfg", &bare);
        assert_eq!(
            (info.name.as_str(), info.image_ref.as_str()),
            ("sha256:cfg", "sha256:cfg")
        );
        assert_eq!(stop_signal(&bare), "");
    }

    #[test]
    fn specs_are_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SPEC_FILE);
        let spec = Spec::default();
        write_spec(&path, &spec).unwrap();
        let back: Spec = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, spec);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [SPEC_FILE]);
    }

    #[test]
    fn log_paths_stay_in_the_log_directory() {
        for ok in ["web/0.log", "0.log", "./a/b.log", "a..b/..c.log"] {
            assert_eq!(check_log_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "../x.log",
            "a/../../x.log",
            "/etc/x.log",
            "a/..",
            "../../../../etc/passwd",
        ] {
            assert!(check_log_path(bad).is_err(), "{bad}");
        }
    }
}
