//! The daemon's pod networking: which CNI network is current (the first config of the conf
//! dir, re-read when the dir changes, which is how NetworkReady follows it), the embedded
//! default network written at start when the dir has none, what a pod's ADD and DEL are called
//! with (from its PodSandboxConfig), and UpdateRuntimeConfig's pod CIDR.
//!
//! Every method may block (files, plugin processes): callers run them off the async workers.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bungeo_runtime::cni::{
    self, CapabilityArgs, DEFAULT_CONF_FILE, DEFAULT_IFNAME, DEFAULT_NETWORK_NAME, DefaultNetwork,
    DnsArgs, NetworkList, Plugins, PortMapping, RuntimeArgs,
};
use k8s_cri::v1 as cri;
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::errors::{Error, Result};
use crate::records::SandboxNetwork;

/// Directory of the default network's host-local allocations inside the root directory.
pub const NETWORKS_DIR: &str = "cni/networks";

/// What the pod networking is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    pub default_bridge: String,
    pub default_subnet: String,
    pub plugin_timeout: Duration,
    /// host-local's `dataDir` for the default network: `<root>/cni/networks`.
    pub data_dir: PathBuf,
}

impl NetworkSettings {
    /// The settings of a daemon with `config`.
    pub fn from_config(config: &Config) -> Self {
        NetworkSettings {
            conf_dir: config.cni.conf_dir.clone(),
            bin_dirs: config.cni.bin_dirs.clone(),
            default_bridge: config.cni.default_bridge.clone(),
            default_subnet: config.cni.default_subnet.clone(),
            plugin_timeout: Duration::from_secs(config.cni.plugin_timeout),
            data_dir: config.root.join(NETWORKS_DIR),
        }
    }
}

/// The network configs as last seen: the conf dir's config files (name, mtime, size, inode)
/// and the plugin dirs' mtimes. While it does not change, neither does the current network.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    files: Vec<(PathBuf, Option<SystemTime>, u64, u64)>,
    bin_dirs: Vec<Option<SystemTime>>,
}

/// The network in use and the file it came from.
#[derive(Debug)]
pub struct CurrentNetwork {
    pub path: PathBuf,
    pub list: NetworkList,
}

#[derive(Default)]
struct Cache {
    fingerprint: Option<Fingerprint>,
    current: Option<std::result::Result<Arc<CurrentNetwork>, String>>,
}

/// The pod networking of one daemon.
pub struct PodNetworks {
    settings: NetworkSettings,
    plugins: Plugins,
    cache: Mutex<Cache>,
}

fn lock(cache: &Mutex<Cache>) -> std::sync::MutexGuard<'_, Cache> {
    // The cache is only a shortcut: a panic mid-update leaves nothing a reload cannot fix.
    cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PodNetworks {
    /// Pod networking with `settings`; nothing is read until asked.
    pub fn new(settings: NetworkSettings) -> PodNetworks {
        let plugins = Plugins {
            bin_dirs: settings.bin_dirs.clone(),
            timeout: settings.plugin_timeout,
        };
        PodNetworks {
            settings,
            plugins,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// Writes the embedded default network to `<conf_dir>/10-bungeo.conflist` when the conf
    /// dir holds no config, so pods get networking with no configuration. Returns the file
    /// written, if one was.
    pub fn install_default(&self) -> Result<Option<PathBuf>> {
        let dir = &self.settings.conf_dir;
        let cni_err = |e: bungeo_runtime::Error| Error::runtime("CNI default network", e);
        if !cni::config_files(dir).map_err(cni_err)?.is_empty() {
            return Ok(None);
        }
        let subnets = DefaultNetwork::subnets_of(&self.settings.default_subnet).map_err(cni_err)?;
        let text = DefaultNetwork {
            bridge: self.settings.default_bridge.clone(),
            subnets,
            data_dir: self.settings.data_dir.clone(),
        }
        .render()
        .map_err(cni_err)?;
        let path = cni::write_conf_file(dir, DEFAULT_CONF_FILE, &text).map_err(cni_err)?;
        info!(path = %path.display(), "wrote the default pod network (the CNI config dir had none)");
        Ok(Some(path))
    }

    fn fingerprint(&self) -> Fingerprint {
        let files = cni::config_files(&self.settings.conf_dir)
            .unwrap_or_default()
            .into_iter()
            .map(|path| {
                let meta = std::fs::metadata(&path).ok();
                let (mtime, size, ino) = meta.map_or((None, 0, 0), |m| {
                    (
                        m.modified().ok(),
                        m.len(),
                        std::os::unix::fs::MetadataExt::ino(&m),
                    )
                });
                (path, mtime, size, ino)
            })
            .collect();
        let bin_dirs = self
            .settings
            .bin_dirs
            .iter()
            .map(|d| std::fs::metadata(d).and_then(|m| m.modified()).ok())
            .collect();
        Fingerprint { files, bin_dirs }
    }

    /// Reads the current network: the first config file, with every plugin it names present.
    fn load(&self) -> std::result::Result<Arc<CurrentNetwork>, String> {
        let dir = &self.settings.conf_dir;
        let (path, list) = cni::load_dir(dir)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no network config found in {}", dir.display()))?;
        for plugin in &list.plugins {
            if self.plugins.find(&plugin.plugin_type).is_none() {
                return Err(format!(
                    "{}: plugin {:?} of network {:?} not found in {}",
                    path.display(),
                    plugin.plugin_type,
                    list.name,
                    self.plugins.cni_path()
                ));
            }
        }
        Ok(Arc::new(CurrentNetwork { path, list }))
    }

    /// The network pods get now, or why there is none. The conf dir is re-read only when its
    /// files (or the plugin dirs) changed since the last call.
    pub fn current(&self) -> std::result::Result<Arc<CurrentNetwork>, String> {
        let fingerprint = self.fingerprint();
        let mut cache = lock(&self.cache);
        if cache.fingerprint.as_ref() == Some(&fingerprint)
            && let Some(current) = &cache.current
        {
            return current.clone();
        }
        let loaded = self.load();
        match &loaded {
            Ok(net) => info!(
                network = %net.list.name,
                file = %net.path.display(),
                "pod network config loaded"
            ),
            Err(e) => warn!(error = %e, "no usable pod network config"),
        }
        cache.fingerprint = Some(fingerprint);
        cache.current = Some(loaded.clone());
        loaded
    }

    /// NetworkReady: `Ok` naming the network when a valid config is loadable, else why not.
    pub fn readiness(&self) -> std::result::Result<String, String> {
        self.current()
            .map(|net| format!("network {:?} from {}", net.list.name, net.path.display()))
    }

    /// What a new pod's network will be set up with: the current network and the pod's
    /// arguments, not yet added. FailedPrecondition when no network is usable; InvalidArgument
    /// for a request whose port mappings or bandwidth annotations cannot be used.
    pub fn prepare(
        &self,
        id: &str,
        netns: &Path,
        config: &cri::PodSandboxConfig,
    ) -> Result<SandboxNetwork> {
        let capabilities = capability_args(config)?;
        let current = self
            .current()
            .map_err(|e| Error::FailedPrecondition(format!("pod network is not ready: {e}")))?;
        let metadata = config.metadata.clone().unwrap_or_default();
        let args = RuntimeArgs {
            container_id: id.to_owned(),
            netns: netns.to_owned(),
            ifname: DEFAULT_IFNAME.to_owned(),
            args: vec![
                ("IgnoreUnknown".to_owned(), "1".to_owned()),
                ("K8S_POD_NAMESPACE".to_owned(), metadata.namespace),
                ("K8S_POD_NAME".to_owned(), metadata.name),
                ("K8S_POD_INFRA_CONTAINER_ID".to_owned(), id.to_owned()),
                ("K8S_POD_UID".to_owned(), metadata.uid),
            ],
            capabilities,
        };
        args.cni_args()
            .map_err(|e| Error::InvalidArgument(format!("pod metadata: {e}")))?;
        Ok(SandboxNetwork {
            name: current.list.name.clone(),
            conflist: current.list.bytes.clone(),
            args,
            result: None,
            ips: Vec::new(),
            torn_down: false,
        })
    }

    fn list_of(net: &SandboxNetwork) -> bungeo_runtime::Result<NetworkList> {
        NetworkList::parse(
            &net.conflist,
            &format!("network {:?} (as recorded)", net.name),
        )
    }

    /// ADD: sets the pod's network up and fills in the result and IPs. A failure carries the
    /// plugin's own message; the caller then runs [`PodNetworks::del`].
    pub fn add(&self, net: &mut SandboxNetwork) -> Result<()> {
        let id = net.args.container_id.clone();
        let failed = |e: bungeo_runtime::Error| {
            Error::FailedPrecondition(format!(
                "pod sandbox {id}: set up network {:?}: {e}",
                net.name
            ))
        };
        let list = Self::list_of(net).map_err(failed)?;
        let result = cni::add(&list, &net.args, &self.plugins).map_err(failed)?;
        net.ips = result
            .pod_ips(&net.args.ifname)
            .iter()
            .map(|ip| ip.to_string())
            .collect();
        if net.ips.is_empty() {
            warn!(network = %net.name, "the network gave the pod no IP address");
        }
        debug!(ips = ?net.ips, "pod network added");
        net.result = Some(result.raw);
        Ok(())
    }

    /// DEL, with the ADD's result when there is one. A namespace that is gone (a reboot)
    /// is passed as an empty `CNI_NETNS`, as the spec allows for DEL.
    pub fn del(&self, net: &SandboxNetwork) -> bungeo_runtime::Result<()> {
        let list = Self::list_of(net)?;
        let mut args = net.args.clone();
        if !cni::netns_is_alive(&args.netns) {
            args.netns = PathBuf::new();
        }
        cni::del(&list, &args, net.result.as_ref(), &self.plugins)
    }

    /// CHECK of a pod's network against its ADD result.
    pub fn check(&self, net: &SandboxNetwork) -> bungeo_runtime::Result<()> {
        let list = Self::list_of(net)?;
        let result = net.result.as_ref().ok_or_else(|| {
            bungeo_runtime::Error::CniConfig(format!(
                "network {:?} of pod sandbox {} has no ADD result to check",
                net.name, net.args.container_id
            ))
        })?;
        cni::check(&list, &net.args, result, &self.plugins)
    }

    /// UpdateRuntimeConfig's pod CIDR: rewrites the ranges (and default routes) of bungeo's
    /// own `10-bungeo.conflist`, the file the daemon wrote, and nothing else; a config the
    /// operator wrote is theirs (containerd does the same). Returns whether the file changed.
    pub fn update_pod_cidr(&self, pod_cidr: &str) -> Result<bool> {
        if pod_cidr.trim().is_empty() {
            return Ok(false);
        }
        let subnets = DefaultNetwork::subnets_of(pod_cidr)
            .map_err(|e| Error::InvalidArgument(format!("network_config.pod_cidr: {e}")))?;
        let path = self.settings.conf_dir.join(DEFAULT_CONF_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                debug!("pod CIDR given, but there is no bungeo default network to update");
                return Ok(false);
            }
            Err(e) => return Err(Error::io("read CNI config", &path, e)),
        };
        let Some(updated) = with_subnets(&text, &subnets) else {
            debug!(path = %path.display(), "pod CIDR given, but the network is not bungeo's own");
            return Ok(false);
        };
        if serde_json::from_str::<Value>(&text).ok() == serde_json::from_str(&updated).ok() {
            return Ok(false);
        }
        cni::write_conf_file(&self.settings.conf_dir, DEFAULT_CONF_FILE, &updated)
            .map_err(|e| Error::runtime("update the default pod network", e))?;
        info!(pod_cidr, path = %path.display(), "default pod network now uses the pod CIDR");
        Ok(true)
    }
}

/// `text` (bungeo's default network) with its bridge plugin's host-local ranges and default
/// routes replaced by `subnets`; `None` when it is not a network named `bungeo` with such a
/// plugin.
fn with_subnets(text: &str, subnets: &[String]) -> Option<String> {
    let mut value: Value = serde_json::from_str(text).ok()?;
    if value.get("name")?.as_str()? != DEFAULT_NETWORK_NAME {
        return None;
    }
    let ipam = value
        .get_mut("plugins")?
        .as_array_mut()?
        .iter_mut()
        .find(|p| p.get("type").and_then(Value::as_str) == Some("bridge"))?
        .get_mut("ipam")?;
    if ipam.get("type")?.as_str()? != "host-local" {
        return None;
    }
    let ranges: Vec<Value> = subnets.iter().map(|s| json!([{ "subnet": s }])).collect();
    let mut routes: Vec<Value> = Vec::new();
    for s in subnets {
        let dst = if s.contains(':') { "::/0" } else { "0.0.0.0/0" };
        if !routes.contains(&json!({ "dst": dst })) {
            routes.push(json!({ "dst": dst }));
        }
    }
    ipam["ranges"] = Value::Array(ranges);
    ipam["routes"] = Value::Array(routes);
    let mut out = serde_json::to_string_pretty(&value).ok()?;
    out.push('\n');
    Some(out)
}

/// The capability arguments of a pod: its port mappings (those with a host port, as
/// containerd passes them), bandwidth annotations and DNS config.
pub fn capability_args(config: &cri::PodSandboxConfig) -> Result<CapabilityArgs> {
    let mut port_mappings = Vec::new();
    for (i, pm) in config.port_mappings.iter().enumerate() {
        if pm.host_port <= 0 {
            continue;
        }
        let invalid = |m: &str| Error::InvalidArgument(format!("port_mappings[{i}]: {m}"));
        if pm.host_port > 65535 || !(1..=65535).contains(&pm.container_port) {
            return Err(invalid("ports must be between 1 and 65535"));
        }
        let protocol = match cri::Protocol::try_from(pm.protocol) {
            Ok(cri::Protocol::Tcp) => "tcp",
            Ok(cri::Protocol::Udp) => "udp",
            Ok(cri::Protocol::Sctp) => "sctp",
            Err(_) => return Err(invalid(&format!("unknown protocol {}", pm.protocol))),
        };
        if !pm.host_ip.is_empty() && pm.host_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(&format!(
                "host_ip {:?} is not an address",
                pm.host_ip
            )));
        }
        port_mappings.push(PortMapping {
            host_port: pm.host_port,
            container_port: pm.container_port,
            protocol: protocol.to_owned(),
            host_ip: pm.host_ip.clone(),
        });
    }
    let bandwidth = cni::bandwidth_from_annotations(&config.annotations)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let dns = config.dns_config.as_ref().map(|d| DnsArgs {
        servers: d.servers.clone(),
        searches: d.searches.clone(),
        options: d.options.clone(),
    });
    Ok(CapabilityArgs {
        port_mappings,
        bandwidth,
        dns,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn settings(dir: &Path) -> NetworkSettings {
        NetworkSettings {
            conf_dir: dir.join("net.d"),
            bin_dirs: vec![dir.join("bin")],
            default_bridge: "bgtunit0".to_owned(),
            default_subnet: "10.250.3.0/24".to_owned(),
            plugin_timeout: Duration::from_secs(5),
            data_dir: dir.join("root/cni/networks"),
        }
    }

    fn install_plugins(dir: &Path, names: &[&str]) {
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        for name in names {
            let path = dir.join("bin").join(name);
            std::fs::write(&path, "#!/bin/sh\ncat >/dev/null\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn the_default_network_is_written_only_into_an_empty_dir_and_makes_the_node_ready() {
        let dir = tempfile::tempdir().unwrap();
        let nets = PodNetworks::new(settings(dir.path()));
        let err = nets.readiness().unwrap_err();
        assert!(err.contains("no network config found in"), "{err}");
        let written = nets.install_default().unwrap().unwrap();
        assert_eq!(written, dir.path().join("net.d/10-bungeo.conflist"));
        assert_eq!(nets.install_default().unwrap(), None, "not twice");
        // Plugins missing: not ready, saying which.
        let err = nets.readiness().unwrap_err();
        assert!(
            err.contains("plugin \"bridge\"") && err.contains("not found"),
            "{err}"
        );
        install_plugins(dir.path(), &["bridge", "portmap", "bandwidth"]);
        let ok = nets.readiness().unwrap();
        assert!(ok.contains("\"bungeo\""), "{ok}");
        let current = nets.current().unwrap();
        assert_eq!(current.list.plugins[0].raw["bridge"], "bgtunit0");
        assert_eq!(
            current.list.plugins[0].raw["ipam"]["dataDir"],
            dir.path().join("root/cni/networks").to_str().unwrap()
        );

        // An operator's config in an already populated dir is left alone.
        let other = tempfile::tempdir().unwrap();
        std::fs::create_dir(other.path().join("net.d")).unwrap();
        std::fs::write(other.path().join("net.d/99-x.conf"), "{").unwrap();
        let nets = PodNetworks::new(settings(other.path()));
        assert_eq!(nets.install_default().unwrap(), None);
        let err = nets.readiness().unwrap_err();
        assert!(
            err.contains("99-x.conf") && err.contains("invalid JSON"),
            "{err}"
        );
    }

    #[test]
    fn the_conf_dir_is_followed_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        install_plugins(dir.path(), &["ptp", "bridge"]);
        let nets = PodNetworks::new(settings(dir.path()));
        assert!(nets.readiness().is_err());
        let conf = dir.path().join("net.d");
        std::fs::create_dir(&conf).unwrap();
        std::fs::write(
            conf.join("20-b.conf"),
            r#"{"cniVersion":"0.4.0","name":"b","type":"ptp"}"#,
        )
        .unwrap();
        assert_eq!(nets.current().unwrap().list.name, "b");
        let first = nets.current().unwrap();
        assert!(Arc::ptr_eq(&first, &nets.current().unwrap()), "cached");
        std::fs::write(
            conf.join("10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        assert_eq!(nets.current().unwrap().list.name, "a");
        std::fs::write(conf.join("10-a.conflist"), "{ broken").unwrap();
        assert!(nets.readiness().unwrap_err().contains("10-a.conflist"));
        std::fs::remove_file(conf.join("10-a.conflist")).unwrap();
        assert_eq!(nets.current().unwrap().list.name, "b");
    }

    fn pod(annotations: &[(&str, &str)]) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                uid: "uid-1".into(),
                namespace: "prod".into(),
                attempt: 0,
            }),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
            port_mappings: vec![
                cri::PortMapping {
                    protocol: cri::Protocol::Udp as i32,
                    container_port: 53,
                    host_port: 5353,
                    host_ip: "127.0.0.1".into(),
                },
                // No host port: nothing to map (containerd skips these too).
                cri::PortMapping {
                    protocol: cri::Protocol::Tcp as i32,
                    container_port: 80,
                    host_port: 0,
                    host_ip: String::new(),
                },
                cri::PortMapping {
                    protocol: cri::Protocol::Sctp as i32,
                    container_port: 9,
                    host_port: 9009,
                    host_ip: String::new(),
                },
            ],
            dns_config: Some(cri::DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["prod.svc".into()],
                options: vec!["ndots:5".into()],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pods_become_cni_arguments() {
        let dir = tempfile::tempdir().unwrap();
        install_plugins(dir.path(), &["bridge", "portmap", "bandwidth"]);
        let nets = PodNetworks::new(settings(dir.path()));
        nets.install_default().unwrap();
        let net = nets
            .prepare(
                "abc",
                Path::new("/run/bungeo/ns/abc/net"),
                &pod(&[("kubernetes.io/ingress-bandwidth", "10M")]),
            )
            .unwrap();
        assert_eq!(net.name, "bungeo");
        assert_eq!(net.result, None);
        assert!(!net.torn_down);
        assert_eq!(
            NetworkList::parse(&net.conflist, "x").unwrap().name,
            "bungeo"
        );
        assert_eq!(
            net.args.cni_args().unwrap(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web;\
             K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=uid-1"
        );
        assert_eq!(net.args.ifname, "eth0");
        let caps = &net.args.capabilities;
        assert_eq!(
            caps.port_mappings,
            vec![
                PortMapping {
                    host_port: 5353,
                    container_port: 53,
                    protocol: "udp".into(),
                    host_ip: "127.0.0.1".into()
                },
                PortMapping {
                    host_port: 9009,
                    container_port: 9,
                    protocol: "sctp".into(),
                    host_ip: String::new()
                },
            ]
        );
        assert_eq!(caps.bandwidth.unwrap().ingress_rate, 10_000_000);
        assert_eq!(caps.dns.as_ref().unwrap().servers, vec!["10.96.0.10"]);

        for (config, needle) in [
            (
                pod(&[("kubernetes.io/egress-bandwidth", "lots")]),
                "egress-bandwidth",
            ),
            (
                {
                    let mut p = pod(&[]);
                    p.port_mappings[0].container_port = 70000;
                    p
                },
                "port_mappings[0]",
            ),
            (
                {
                    let mut p = pod(&[]);
                    p.port_mappings[0].host_ip = "localhost".into();
                    p
                },
                "host_ip",
            ),
            (
                {
                    let mut p = pod(&[]);
                    p.metadata.as_mut().unwrap().name = "a;b".into();
                    p
                },
                "must not contain",
            ),
        ] {
            let err = nets.prepare("abc", Path::new("/x"), &config).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
            assert!(err.to_string().contains(needle), "{err}");
        }
        let empty = PodNetworks::new(settings(&dir.path().join("nothing")));
        let err = empty
            .prepare("abc", Path::new("/x"), &pod(&[]))
            .unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
        assert!(err.to_string().contains("not ready"), "{err}");
    }

    #[test]
    fn a_pod_cidr_rewrites_only_bungeos_own_network() {
        let dir = tempfile::tempdir().unwrap();
        install_plugins(dir.path(), &["bridge", "portmap", "bandwidth"]);
        let nets = PodNetworks::new(settings(dir.path()));
        assert!(
            !nets.update_pod_cidr("10.244.0.0/24").unwrap(),
            "no file yet"
        );
        let path = nets.install_default().unwrap().unwrap();
        assert!(!nets.update_pod_cidr("").unwrap());
        assert!(
            nets.update_pod_cidr("10.244.1.0/24,fd00:244:1::/64")
                .unwrap()
        );
        assert!(
            !nets
                .update_pod_cidr("10.244.1.0/24,fd00:244:1::/64")
                .unwrap(),
            "same"
        );
        let list = nets.current().unwrap();
        let ipam = &list.list.plugins[0].raw["ipam"];
        assert_eq!(
            ipam["ranges"],
            json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:244:1::/64"}]])
        );
        assert_eq!(
            ipam["routes"],
            json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
        );
        assert_eq!(list.list.plugins[0].raw["bridge"], "bgtunit0");
        let err = nets.update_pod_cidr("10.0.0.0").unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");

        // Someone else's network under the same file name is not ours to change.
        let theirs = r#"{"cniVersion":"1.0.0","name":"theirs","plugins":[{"type":"bridge","ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/16"}]]}}]}"#;
        std::fs::write(&path, theirs).unwrap();
        assert!(!nets.update_pod_cidr("10.244.2.0/24").unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), theirs);
    }
}
