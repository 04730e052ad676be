//! bungeo's embedded default network, written when the config directory has none: a `bridge`
//! with host-local IPAM over one range per subnet, then `portmap` and `bandwidth`. The pod's
//! `lo` is brought up when its namespace is pinned, so no `loopback` plugin runs.

use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::json;

use crate::error::{Error, Result};

/// The network's name; a config with this name is bungeo's own to rewrite.
pub const DEFAULT_NETWORK_NAME: &str = "bungeo";
/// The file it is written to in the config directory.
pub const DEFAULT_CONF_FILE: &str = "10-bungeo.conflist";

/// Linux's IFNAMSIZ less the terminating NUL.
const IFNAME_MAX: usize = 15;

/// What the default network is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultNetwork {
    pub bridge: String,
    /// One host-local range per CIDR (dual stack with one of each family).
    pub subnets: Vec<String>,
    /// host-local's `dataDir`: the daemon's own allocations, kept across restarts.
    pub data_dir: PathBuf,
}

/// Parses `a.b.c.d/n` or `x::/n`, normalised to its network address.
pub fn parse_cidr(text: &str) -> Result<(IpAddr, u8)> {
    let invalid = || Error::InvalidArgument(format!("{text:?} is not a CIDR (like 10.88.0.0/16)"));
    let (ip, len) = text.trim().split_once('/').ok_or_else(invalid)?;
    let ip: IpAddr = ip.parse().map_err(|_| invalid())?;
    let len: u8 = len.parse().map_err(|_| invalid())?;
    let network = match ip {
        IpAddr::V4(v4) if len <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) if len <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
        _ => return Err(invalid()),
    };
    // host-local needs room for a gateway and at least one pod.
    let max = if network.is_ipv4() { 30 } else { 126 };
    if len > max {
        return Err(Error::InvalidArgument(format!(
            "subnet {text:?} is too small for pods (at most /{max})"
        )));
    }
    Ok((network, len))
}

/// Checks a bridge device name: 1 to 15 bytes, no `/`, whitespace or `:`.
pub fn validate_bridge_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > IFNAME_MAX
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(Error::InvalidArgument(format!(
            "bridge name {name:?} is not a network device name (1 to {IFNAME_MAX} bytes, no '/', ':' or whitespace)"
        )));
    }
    Ok(())
}

impl DefaultNetwork {
    /// The conflist, as pretty JSON.
    pub fn render(&self) -> Result<String> {
        validate_bridge_name(&self.bridge)?;
        if self.subnets.is_empty() {
            return Err(Error::InvalidArgument(
                "the default network needs at least one subnet".to_owned(),
            ));
        }
        let mut ranges = Vec::new();
        let mut routes = Vec::new();
        for subnet in &self.subnets {
            let (network, len) = parse_cidr(subnet)?;
            ranges.push(json!([{ "subnet": format!("{network}/{len}") }]));
            let default_route = if network.is_ipv4() {
                "0.0.0.0/0"
            } else {
                "::/0"
            };
            if !routes.contains(&json!({ "dst": default_route })) {
                routes.push(json!({ "dst": default_route }));
            }
        }
        let list = json!({
            "cniVersion": "1.0.0",
            "name": DEFAULT_NETWORK_NAME,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": true,
                    // Not promiscMode: the bridge plugin refuses the two together.
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": ranges,
                        "routes": routes,
                        "dataDir": self.data_dir,
                    },
                },
                {
                    "type": "portmap",
                    "capabilities": { "portMappings": true },
                    "snat": true,
                },
                {
                    "type": "bandwidth",
                    "capabilities": { "bandwidth": true },
                },
            ],
        });
        serde_json::to_string_pretty(&list)
            .map(|mut s| {
                s.push('\n');
                s
            })
            .map_err(|e| Error::CniConfig(format!("render the default network: {e}")))
    }

    /// The subnets of a pod CIDR as the CRI gives it: one CIDR, or several joined by `,`.
    pub fn subnets_of(pod_cidr: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for part in pod_cidr.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (network, len) = parse_cidr(part)?;
            out.push(format!("{network}/{len}"));
        }
        if out.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "pod CIDR {pod_cidr:?} names no subnet"
            )));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::NetworkList;

    fn as_json(text: &str) -> Option<serde_json::Value> {
        serde_json::from_str(text).ok()
    }

    fn network(subnets: &[&str]) -> DefaultNetwork {
        DefaultNetwork {
            bridge: "bungeo0".to_owned(),
            subnets: subnets.iter().map(|s| s.to_string()).collect(),
            data_dir: PathBuf::from("/var/lib/bungeo/cni/networks"),
        }
    }

    #[test]
    fn the_default_network_is_bridge_host_local_portmap_bandwidth() {
        let text = network(&["10.88.0.0/16"]).render().unwrap();
        let list = NetworkList::parse(&text, "default").unwrap();
        assert_eq!(list.name, "bungeo");
        assert_eq!(list.cni_version, "1.0.0");
        let types: Vec<&str> = list
            .plugins
            .iter()
            .map(|p| p.plugin_type.as_str())
            .collect();
        assert_eq!(types, vec!["bridge", "portmap", "bandwidth"]);
        let bridge = &list.plugins[0].raw;
        assert_eq!(bridge["bridge"], "bungeo0");
        assert_eq!(bridge["isGateway"], true);
        assert_eq!(bridge["ipMasq"], true);
        assert_eq!(bridge["hairpinMode"], true);
        assert!(bridge.get("promiscMode").is_none());
        assert_eq!(bridge["ipam"]["type"], "host-local");
        assert_eq!(
            bridge["ipam"]["ranges"],
            json!([[{"subnet": "10.88.0.0/16"}]])
        );
        assert_eq!(bridge["ipam"]["routes"], json!([{"dst": "0.0.0.0/0"}]));
        assert_eq!(bridge["ipam"]["dataDir"], "/var/lib/bungeo/cni/networks");
        assert_eq!(list.plugins[1].capabilities, vec!["portMappings"]);
        assert_eq!(list.plugins[1].raw["snat"], true);
        assert_eq!(list.plugins[2].capabilities, vec!["bandwidth"]);
    }

    #[test]
    fn dual_stack_gets_a_range_and_a_route_per_family() {
        let subnets = DefaultNetwork::subnets_of("10.244.1.0/24, fd00:10:244:1::/64").unwrap();
        assert_eq!(subnets, vec!["10.244.1.0/24", "fd00:10:244:1::/64"]);
        let text = network(&["10.244.1.7/24", "fd00:10:244:1::/64"])
            .render()
            .unwrap();
        let v = as_json(&text).unwrap();
        let ipam = &v["plugins"][0]["ipam"];
        assert_eq!(
            ipam["ranges"],
            json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]])
        );
        assert_eq!(
            ipam["routes"],
            json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
        );
    }

    #[test]
    fn cidrs_and_bridge_names_are_checked() {
        assert_eq!(
            parse_cidr("10.88.3.4/16").unwrap(),
            ("10.88.0.0".parse().unwrap(), 16)
        );
        assert_eq!(
            parse_cidr("fd00::1/64").unwrap(),
            ("fd00::".parse().unwrap(), 64)
        );
        for bad in [
            "10.88.0.0",
            "10.88.0.0/33",
            "x/8",
            "10.0.0.0/31",
            "",
            "fd00::/127",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
        assert!(DefaultNetwork::subnets_of(" , ").is_err());
        assert!(DefaultNetwork::subnets_of("10.0.0.0/8,nope").is_err());
        validate_bridge_name("bungeo0").unwrap();
        for bad in ["", "a/b", "sixteen-chars-xx", "a b", "a:1"] {
            assert!(validate_bridge_name(bad).is_err(), "{bad}");
        }
        let mut n = network(&["10.88.0.0/16"]);
        n.bridge = "a/b".to_owned();
        assert!(n.render().is_err());
        assert!(network(&[]).render().is_err());
    }
}
