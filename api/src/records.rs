//! The daemon's records in redb at `<root>/records.redb`: one JSON value per pod sandbox and
//! one per container, keyed by id, in a table each. Every change is one write transaction,
//! committed (and fsynced) before the call that made it answers.

use std::fmt::Display;
use std::path::{Path, PathBuf};

use bungeo_runtime::cni::RuntimeArgs;
use k8s_cri::v1 as cri;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::containers::ContainerRecord;
use crate::errors::{Error, Result};

/// File name of the records database inside the root directory.
pub const RECORDS_FILE: &str = "records.redb";

/// sandbox id → [`SandboxRecord`] (JSON).
const SANDBOXES: TableDefinition<&str, &[u8]> = TableDefinition::new("sandboxes");

/// container id → [`ContainerRecord`] (JSON).
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");

/// Where a pod sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxPhase {
    /// RunPodSandbox is building it. A record still in this phase when the daemon starts is
    /// what a crash mid-creation left: its pieces are removed, and so is the record.
    Creating,
    /// Built and usable.
    Ready,
    /// Stopped, or its namespaces or `/dev/shm` are gone (e.g. after a reboot).
    NotReady,
}

/// The namespace pins of a sandbox; `None` for a kind the pod shares with the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespacePins {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    /// The pod's shared pid namespace (PID mode POD), held by its infra process.
    #[serde(default)]
    pub pid: Option<PathBuf>,
}

impl NamespacePins {
    /// Every pin, with its kind's name.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        [
            ("net", &self.net),
            ("ipc", &self.ipc),
            ("uts", &self.uts),
            ("pid", &self.pid),
        ]
        .into_iter()
        .filter_map(|(kind, path)| path.as_deref().map(|p| (kind, p)))
    }
}

/// Everything the daemon knows about one pod sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// 64 hex characters.
    pub id: String,
    pub phase: SandboxPhase,
    /// Creation time in nanoseconds since the epoch.
    pub created_at: i64,
    /// The request's config, as given (annotations must come back unaltered).
    pub config: cri::PodSandboxConfig,
    pub runtime_handler: String,
    /// The hostname written to the `hostname` file (and set in the pinned uts namespace).
    pub hostname: String,
    /// The pod cgroup: kubelet's `cgroup_parent`, under which the containers' cgroups go.
    pub cgroup_parent: String,
    /// `<root>/sandboxes/<id>`: hostname, hosts, resolv.conf, shm.
    pub dir: PathBuf,
    /// `<state>/ns/<id>`: the namespace pins.
    pub ns_dir: PathBuf,
    /// The pins made (filled in once pinned).
    pub namespaces: NamespacePins,
    /// The pod's `/dev/shm` tmpfs, `None` when the pod uses the node's IPC (and `/dev/shm`).
    pub shm: Option<PathBuf>,
    /// The infra process holding the pod's shared pid namespace, if it has one.
    #[serde(default)]
    pub infra: Option<InfraProcess>,
    /// The pod's CNI network, `None` on the node's network. Recorded before the ADD runs, so
    /// whatever happens after, a DEL can follow.
    #[serde(default)]
    pub network: Option<SandboxNetwork>,
}

/// What a pod's CNI network was set up with, and what DEL needs to take it down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxNetwork {
    /// The network's name.
    pub name: String,
    /// The config list exactly as ADD used it (a `.conf` appears wrapped).
    pub conflist: String,
    /// What the plugins were called with: container id, netns, ifname, CNI_ARGS, capability
    /// arguments.
    pub args: RuntimeArgs,
    /// The ADD's result as the last plugin wrote it; `None` until ADD succeeded.
    pub result: Option<serde_json::Value>,
    /// The pod's IPs from the result, IPv4 first.
    pub ips: Vec<String>,
    /// DEL succeeded (at StopPodSandbox); RemovePodSandbox then does not repeat it.
    pub torn_down: bool,
}

/// A sandbox's infra process: its host pid and start time (field 22 of `/proc/<pid>/stat`),
/// which tells it from a later process given the same pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfraProcess {
    pub pid: i32,
    pub start_time: u64,
}

/// The open records database.
pub struct Records {
    db: Database,
    path: PathBuf,
}

impl Records {
    /// Opens or creates the database at `path`, with every table present.
    pub fn open(path: &Path) -> Result<Records> {
        let fail = |e: &dyn Display| Error::Records {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let db = Database::create(path).map_err(|e| fail(&e))?;
        let txn = db.begin_write().map_err(|e| fail(&e))?;
        txn.open_table(SANDBOXES).map_err(|e| fail(&e))?;
        txn.open_table(CONTAINERS).map_err(|e| fail(&e))?;
        txn.commit().map_err(|e| fail(&e))?;
        Ok(Records {
            db,
            path: path.to_owned(),
        })
    }

    fn err(&self, e: impl Display) -> Error {
        Error::Records {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Writes (creates or replaces) a sandbox record in one committed transaction.
    pub fn put_sandbox(&self, record: &SandboxRecord) -> Result<()> {
        let value = serde_json::to_vec(record)
            .map_err(|e| self.err(format!("encode pod sandbox {}: {e}", record.id)))?;
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(SANDBOXES).map_err(|e| self.err(e))?;
            table
                .insert(record.id.as_str(), value.as_slice())
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// Deletes a sandbox record; deleting a missing one is fine.
    pub fn delete_sandbox(&self, id: &str) -> Result<()> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(SANDBOXES).map_err(|e| self.err(e))?;
            table.remove(id).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// The sandbox record with this exact id.
    pub fn sandbox(&self, id: &str) -> Result<Option<SandboxRecord>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(SANDBOXES).map_err(|e| self.err(e))?;
        let Some(value) = table.get(id).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        self.decode(id, value.value()).map(Some)
    }

    /// Every sandbox record, by id.
    pub fn sandboxes(&self) -> Result<Vec<SandboxRecord>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(SANDBOXES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (key, value) = row.map_err(|e| self.err(e))?;
            out.push(self.decode(key.value(), value.value())?);
        }
        Ok(out)
    }

    /// Writes (creates or replaces) a container record in one committed transaction.
    pub fn put_container(&self, record: &ContainerRecord) -> Result<()> {
        let value = serde_json::to_vec(record)
            .map_err(|e| self.err(format!("encode container {}: {e}", record.id)))?;
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(CONTAINERS).map_err(|e| self.err(e))?;
            table
                .insert(record.id.as_str(), value.as_slice())
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// Deletes a container record; deleting a missing one is fine.
    pub fn delete_container(&self, id: &str) -> Result<()> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(CONTAINERS).map_err(|e| self.err(e))?;
            table.remove(id).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// Every container record, by id.
    pub fn containers(&self) -> Result<Vec<ContainerRecord>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(CONTAINERS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (key, value) = row.map_err(|e| self.err(e))?;
            out.push(serde_json::from_slice(value.value()).map_err(|e| {
                self.err(format!(
                    "decode the record of container {}: {e}",
                    key.value()
                ))
            })?);
        }
        Ok(out)
    }

    fn decode(&self, id: &str, bytes: &[u8]) -> Result<SandboxRecord> {
        serde_json::from_slice(bytes)
            .map_err(|e| self.err(format!("decode the record of pod sandbox {id}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn record(id: &str) -> SandboxRecord {
        SandboxRecord {
            id: id.to_owned(),
            phase: SandboxPhase::Ready,
            created_at: 1_700_000_000_123_456_789,
            config: cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: "web".into(),
                    uid: "uid-1".into(),
                    namespace: "default".into(),
                    attempt: 2,
                }),
                hostname: "web-0".into(),
                labels: HashMap::from([("app".into(), "web".into())]),
                annotations: HashMap::from([("note".into(), "kept \"as is\"\n".into())]),
                dns_config: Some(cri::DnsConfig {
                    servers: vec!["10.0.0.10".into()],
                    searches: vec!["svc.cluster.local".into()],
                    options: vec!["ndots:5".into()],
                }),
                ..Default::default()
            },
            runtime_handler: String::new(),
            hostname: "web-0".into(),
            cgroup_parent: "/kubepods/besteffort/poduid-1".into(),
            dir: PathBuf::from("/var/lib/bungeo/sandboxes").join(id),
            ns_dir: PathBuf::from("/run/bungeo/ns").join(id),
            namespaces: NamespacePins {
                net: Some(PathBuf::from("/run/bungeo/ns").join(id).join("net")),
                ipc: None,
                uts: Some(PathBuf::from("/run/bungeo/ns").join(id).join("uts")),
                pid: Some(PathBuf::from("/run/bungeo/ns").join(id).join("pid")),
            },
            shm: Some(
                PathBuf::from("/var/lib/bungeo/sandboxes")
                    .join(id)
                    .join("shm"),
            ),
            infra: Some(InfraProcess {
                pid: 4242,
                start_time: 123_456,
            }),
            network: Some(SandboxNetwork {
                name: "bungeo".into(),
                conflist: r#"{"cniVersion":"1.0.0","name":"bungeo","plugins":[{"type":"bridge"}]}"#
                    .into(),
                args: RuntimeArgs {
                    container_id: id.to_owned(),
                    netns: PathBuf::from("/run/bungeo/ns").join(id).join("net"),
                    ifname: "eth0".into(),
                    args: vec![("IgnoreUnknown".into(), "1".into())],
                    capabilities: Default::default(),
                },
                result: Some(serde_json::json!({"cniVersion": "1.0.0", "ips": []})),
                ips: vec!["10.88.0.2".into(), "fd00::2".into()],
                torn_down: false,
            }),
        }
    }

    #[test]
    fn records_round_trip_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RECORDS_FILE);
        let records = Records::open(&path).unwrap();
        assert!(records.sandboxes().unwrap().is_empty());
        assert_eq!(records.sandbox("a").unwrap(), None);

        let a = record("a");
        let mut b = record("b");
        b.phase = SandboxPhase::Creating;
        records.put_sandbox(&a).unwrap();
        records.put_sandbox(&b).unwrap();
        assert_eq!(records.sandbox("a").unwrap(), Some(a.clone()));
        b.phase = SandboxPhase::NotReady;
        records.put_sandbox(&b).unwrap();
        drop(records);

        let records = Records::open(&path).unwrap();
        assert_eq!(records.sandboxes().unwrap(), vec![a.clone(), b]);
        records.delete_sandbox("b").unwrap();
        records.delete_sandbox("b").unwrap();
        assert_eq!(records.sandboxes().unwrap(), vec![a]);
    }

    #[test]
    fn values_are_json_with_readable_phases() {
        let json = serde_json::to_value(record("a")).unwrap();
        assert_eq!(json["phase"], "ready");
        assert_eq!(json["config"]["metadata"]["name"], "web");
        assert_eq!(json["namespaces"]["ipc"], serde_json::Value::Null);
    }

    #[test]
    fn records_written_before_pod_networking_still_load() {
        let mut json = serde_json::to_value(record("a")).unwrap();
        json.as_object_mut().unwrap().remove("network");
        let old: SandboxRecord = serde_json::from_value(json).unwrap();
        assert_eq!(old.network, None);
    }

    #[test]
    fn a_corrupt_record_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RECORDS_FILE);
        let records = Records::open(&path).unwrap();
        let txn = records.db.begin_write().unwrap();
        {
            let mut table = txn.open_table(SANDBOXES).unwrap();
            table.insert("bad", b"{not json".as_slice()).unwrap();
        }
        txn.commit().unwrap();
        let err = records.sandboxes().unwrap_err().to_string();
        assert!(err.contains("pod sandbox bad"), "{err}");
        assert!(err.contains(RECORDS_FILE), "{err}");
    }
}
