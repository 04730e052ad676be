//! ExecSync, ReopenContainerLog and UpdateContainerResources: calls on a live container that
//! go through its shim.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use k8s_cri::v1 as cri;
use oci_spec::runtime::Spec;
use tracing::{info, info_span, warn};

use super::create::write_atomically;
use super::record::{ContainerPhase, ContainerRecord, SPEC_FILE, cri_resources, cri_state};
use super::{Containers, lock, remove_file, shim_error};
use crate::errors::{Error, Result};
use crate::ids;
use crate::shims::{CallError, Shim};

/// The most of each stream ExecSync returns (CRI-O's limit; kubelet's probes read little).
pub const EXEC_OUTPUT_LIMIT: u64 = 16 << 20;

/// How long a timed-out exec may take to die after SIGKILL.
const EXEC_KILL_WAIT: Duration = Duration::from_secs(10);

pub(super) fn not_running(record: &ContainerRecord) -> Error {
    Error::FailedPrecondition(format!(
        "container {} is {}, not running",
        record.display(),
        cri_state(record.phase).as_str_name()
    ))
}

/// Reads at most [`EXEC_OUTPUT_LIMIT`] bytes of `path` (nothing when it was never written).
fn read_output(path: &Path) -> Result<Vec<u8>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("open exec output", path, e)),
    };
    let mut out = Vec::new();
    file.take(EXEC_OUTPUT_LIMIT)
        .read_to_end(&mut out)
        .map_err(|e| Error::io("read exec output", path, e))?;
    Ok(out)
}

/// The OCI spec of the container as written in its bundle.
pub(super) fn read_spec(record: &ContainerRecord) -> Result<Spec> {
    let path = record.bundle().join(SPEC_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Error::io("read the OCI spec", &path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::io(
            "parse the OCI spec",
            &path,
            std::io::Error::other(e.to_string()),
        )
    })
}

/// The process of an exec: the container's own (user, env, cwd, capabilities, security
/// settings) running `cmd`, without a terminal, as containerd builds it.
fn exec_process(spec: &Spec, cmd: &[String]) -> Result<Vec<u8>> {
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(cmd.to_vec()));
    process.set_terminal(Some(false));
    process.set_console_size(None);
    serde_json::to_vec(&process).map_err(|e| {
        Error::InvalidArgument(format!("ExecSync: cannot encode the exec process: {e}"))
    })
}

impl Containers {
    /// ExecSync: runs `cmd` in the running container and returns its output and exit code.
    /// Past `timeout` seconds (0: no limit) the command is killed and the call fails with
    /// DeadlineExceeded, which kubelet reads as a timed-out probe.
    pub fn exec_sync(&self, request: &cri::ExecSyncRequest) -> Result<cri::ExecSyncResponse> {
        let (id, _, record) = self.get(&request.container_id)?;
        let _span = info_span!("container", container_id = %id).entered();
        if record.phase != ContainerPhase::Running {
            return Err(not_running(&record));
        }
        if request.cmd.is_empty() {
            return Err(Error::InvalidArgument(
                "ExecSync: cmd must name a command".to_owned(),
            ));
        }
        let what = record.display();
        let process = exec_process(&read_spec(&record)?, &request.cmd)?;
        let exec_id = format!("exec-{}", &ids::generate()[..16]);
        let stdout = record.shim.state_dir.join(format!("{exec_id}.stdout"));
        let stderr = record.shim.state_dir.join(format!("{exec_id}.stderr"));
        let shim = Shim::connect(&record.shim, &id).map_err(|e| shim_error(&what, "exec", e))?;
        shim.exec(&exec_id, process, &stdout, &stderr)
            .map_err(|e| shim_error(&what, "exec", e))?;
        let timeout = (request.timeout > 0)
            .then(|| Duration::from_secs(u64::try_from(request.timeout).unwrap_or(0)));
        let ran = shim
            .start(&exec_id)
            .map_err(|e| shim_error(&what, "start the exec process", e))
            .and_then(|_| match shim.wait(&exec_id, timeout) {
                Ok(w) => Ok(w.exit_status),
                Err(CallError::Timeout) => {
                    info!(cmd = ?request.cmd, timeout = request.timeout, "exec timed out: killing it");
                    if let Err(e) = shim.kill(&exec_id, libc::SIGKILL, false) {
                        warn!(error = %e, "killing the timed-out exec process");
                    }
                    if let Err(e) = shim.wait(&exec_id, Some(EXEC_KILL_WAIT)) {
                        warn!(error = %e, "waiting for the killed exec process");
                    }
                    Err(Error::DeadlineExceeded(format!(
                        "ExecSync in container {what}: timeout {}s exceeded: command {:?} was killed",
                        request.timeout, request.cmd
                    )))
                }
                Err(e) => Err(shim_error(&what, "wait for the exec process", e)),
            });
        if let Err(e) = shim.delete(&exec_id) {
            warn!(error = %e, "deleting the exec process");
        }
        let outputs = read_output(&stdout).and_then(|o| Ok((o, read_output(&stderr)?)));
        for path in [&stdout, &stderr] {
            if let Err(e) = remove_file(path) {
                warn!(error = %e, "removing exec output");
            }
        }
        let exit_status = ran?;
        let (stdout, stderr) = outputs?;
        Ok(cri::ExecSyncResponse {
            stdout,
            stderr,
            exit_code: i32::try_from(exit_status).unwrap_or(i32::MAX),
        })
    }

    /// ReopenContainerLog: the shim closes and reopens the container's log file, so kubelet
    /// can rotate it.
    pub fn reopen_log(&self, query: &str) -> Result<()> {
        let (id, _, record) = self.get(query)?;
        let _span = info_span!("container", container_id = %id).entered();
        if record.phase != ContainerPhase::Running {
            return Err(not_running(&record));
        }
        let what = record.display();
        Shim::connect(&record.shim, &id)
            .and_then(|s| s.update(None, true))
            .map_err(|e| shim_error(&what, "reopen its log", e))
    }

    /// UpdateContainerResources: applies new cgroup limits to a created or running container,
    /// and keeps them in its spec and record. An exited container gets them in its spec and
    /// record only (as with containerd: they would apply at a next start).
    pub fn update_resources(&self, request: &cri::UpdateContainerResourcesRequest) -> Result<()> {
        let (id, entry, _) = self.get(&request.container_id)?;
        let _span = info_span!("container", container_id = %id).entered();
        let _ops = lock(&entry.ops);
        let record = entry
            .snapshot()
            .ok_or_else(|| super::not_found(&request.container_id))?;
        let Some(wanted) = request.linux.as_ref() else {
            return Ok(());
        };
        let what = record.display();
        let resources = bungeo_runtime::spec::update_resources(wanted, &what)
            .map_err(|e| Error::runtime("UpdateContainerResources", e))?;
        let json = serde_json::to_vec(&resources)
            .map_err(|e| Error::InvalidArgument(format!("UpdateContainerResources: {e}")))?;
        if matches!(
            record.phase,
            ContainerPhase::Created | ContainerPhase::Running
        ) {
            Shim::connect(&record.shim, &id)
                .and_then(|s| s.update(Some(json), false))
                .map_err(|e| shim_error(&what, "update its resources", e))?;
        }
        // The spec says what the container runs with; the device rules stay as created.
        let mut spec = read_spec(&record)?;
        if let Some(linux) = spec.linux_mut() {
            let mut merged = linux.resources().clone().unwrap_or_default();
            merged.set_cpu(resources.cpu().clone());
            merged.set_memory(*resources.memory());
            merged.set_hugepage_limits(resources.hugepage_limits().clone());
            merged.set_unified(resources.unified().clone());
            linux.set_resources(Some(merged));
        }
        let bytes = serde_json::to_vec(&spec)
            .map_err(|e| Error::InvalidArgument(format!("UpdateContainerResources: {e}")))?;
        write_atomically(&record.bundle().join(SPEC_FILE), &bytes)?;
        let mut shown = cri_resources(&spec);
        if let Some(r) = shown.as_mut() {
            // oom_score_adj cannot change on a live process; the record keeps the created one.
            r.oom_score_adj = record.resources.as_ref().map_or(0, |o| o.oom_score_adj);
        }
        self.update(&entry, |r| r.resources = shown)?;
        info!("container resources updated");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_processes_are_the_containers_own_with_another_command() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {
                "terminal": true,
                "consoleSize": {"height": 10, "width": 20},
                "cwd": "/work",
                "user": {"uid": 1000, "gid": 1000},
                "args": ["sleep", "1000"],
                "env": ["PATH=/bin", "A=1"],
                "noNewPrivileges": true
            }
        }))
        .unwrap();
        let bytes = exec_process(&spec, &["sh".into(), "-c".into(), "id".into()]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["args"], serde_json::json!(["sh", "-c", "id"]));
        assert_eq!(v["terminal"], false);
        assert!(v.get("consoleSize").is_none());
        assert_eq!(v["cwd"], "/work");
        assert_eq!(v["user"]["uid"], 1000);
        assert_eq!(v["env"][1], "A=1");
        assert_eq!(v["noNewPrivileges"], true);
    }

    #[test]
    fn outputs_are_read_up_to_the_limit_and_may_be_absent() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_output(&dir.path().join("none")).unwrap().is_empty());
        let big = dir.path().join("big");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(EXEC_OUTPUT_LIMIT + 10).unwrap();
        assert_eq!(read_output(&big).unwrap().len() as u64, EXEC_OUTPUT_LIMIT);
    }
}
