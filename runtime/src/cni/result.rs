//! Plugin results: the 0.3.x/0.4.0 form (`ips[].version`) and the 1.x form, read into the
//! interfaces and addresses the pod's IPs come from. The JSON itself is kept as the plugin
//! wrote it, for `prevResult` and for DEL.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// One interface of a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: String,
    /// The network namespace it is in; empty for host-side interfaces.
    #[serde(default)]
    pub sandbox: String,
}

/// One address of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
    /// Index into the result's interfaces.
    pub interface: Option<usize>,
}

/// A parsed result.
#[derive(Debug, Clone, PartialEq)]
pub struct CniResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    /// The result as the plugin wrote it.
    pub raw: Value,
}

#[derive(Deserialize)]
struct RawIp {
    address: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    interface: Option<usize>,
    /// 0.3.x/0.4.0 only: "4" or "6".
    #[serde(default)]
    version: Option<String>,
}

#[derive(Deserialize)]
struct RawResult {
    #[serde(rename = "cniVersion", default)]
    cni_version: String,
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<RawIp>,
}

fn parse_cidr_address(text: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = text.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((ip, len))
}

impl CniResult {
    /// Reads a result; `what` names the plugin in errors.
    pub fn parse(raw: Value, what: &str) -> Result<CniResult> {
        let invalid = |m: String| Error::CniConfig(format!("{what}: invalid result: {m}"));
        let parsed: RawResult =
            serde_json::from_value(raw.clone()).map_err(|e| invalid(e.to_string()))?;
        let mut ips = Vec::with_capacity(parsed.ips.len());
        for ip in parsed.ips {
            let (address, prefix_len) = parse_cidr_address(&ip.address)
                .ok_or_else(|| invalid(format!("address {:?} is not a CIDR", ip.address)))?;
            if let Some(v) = &ip.version {
                let family = if address.is_ipv4() { "4" } else { "6" };
                if v != family {
                    return Err(invalid(format!("address {} says version {v}", ip.address)));
                }
            }
            let gateway = match ip.gateway.as_deref() {
                None | Some("") => None,
                Some(g) => Some(
                    g.parse()
                        .map_err(|_| invalid(format!("gateway {g:?} is not an address")))?,
                ),
            };
            if let Some(i) = ip.interface
                && i >= parsed.interfaces.len()
            {
                return Err(invalid(format!(
                    "address {} names interface {i} of {}",
                    ip.address,
                    parsed.interfaces.len()
                )));
            }
            ips.push(IpConfig {
                address,
                prefix_len,
                gateway,
                interface: ip.interface,
            });
        }
        Ok(CniResult {
            cni_version: parsed.cni_version,
            interfaces: parsed.interfaces,
            ips,
            raw,
        })
    }

    /// The pod's IPs: those on the pod's `ifname` interface inside its namespace (all the
    /// result's, if none is tied to it, as some plugins leave `interface` out), IPv4 first,
    /// each family in result order.
    pub fn pod_ips(&self, ifname: &str) -> Vec<IpAddr> {
        let on_pod = |ip: &&IpConfig| {
            ip.interface
                .and_then(|i| self.interfaces.get(i))
                .is_some_and(|iface| iface.name == ifname && !iface.sandbox.is_empty())
        };
        let mut chosen: Vec<&IpConfig> = self.ips.iter().filter(on_pod).collect();
        if chosen.is_empty() {
            chosen = self.ips.iter().collect();
        }
        let mut out: Vec<IpAddr> = Vec::with_capacity(chosen.len());
        // A plugin may list an address twice, not necessarily next to each other.
        for ip in chosen {
            if !out.contains(&ip.address) {
                out.push(ip.address);
            }
        }
        // Stable: each family keeps its order.
        out.sort_by_key(|ip| ip.is_ipv6());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ips(result: &CniResult) -> Vec<String> {
        result
            .pod_ips("eth0")
            .iter()
            .map(|i| i.to_string())
            .collect()
    }

    #[test]
    fn a_0_4_0_result_with_versions_parses() {
        let raw = json!({
            "cniVersion": "0.4.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:dd:ee:ff"},
                {"name": "veth1", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/run/netns/x"}
            ],
            "ips": [
                {"version": "6", "address": "fd00::5/64", "gateway": "fd00::1", "interface": 2},
                {"version": "4", "address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 2},
                {"version": "4", "address": "10.99.0.1/24", "interface": 0}
            ],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        });
        let result = CniResult::parse(raw.clone(), "bridge").unwrap();
        assert_eq!(result.cni_version, "0.4.0");
        assert_eq!(result.interfaces[2].sandbox, "/run/netns/x");
        assert_eq!(result.ips[1].prefix_len, 16);
        assert_eq!(result.ips[1].gateway, Some("10.88.0.1".parse().unwrap()));
        assert_eq!(result.raw, raw);
        // The host-side bridge address is not the pod's.
        assert_eq!(ips(&result), vec!["10.88.0.5", "fd00::5"]);
    }

    #[test]
    fn repeated_addresses_are_listed_once() {
        // Found by the cni_result fuzz target: dedup after the sort only removed neighbours.
        let raw = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": "/run/bungeo/ns/x/net"}],
            "ips": [
                {"address": "10.8.0.5/16", "interface": 0},
                {"address": "fd01::5/64", "interface": 0},
                {"address": "fd00::5/64", "interface": 0},
                {"address": "fd01::5/64", "interface": 0},
                {"address": "fd00::5/64", "interface": 0},
                {"address": "10.8.0.5/16", "interface": 0}
            ]
        });
        let result = CniResult::parse(raw, "bridge").unwrap();
        assert_eq!(ips(&result), vec!["10.8.0.5", "fd01::5", "fd00::5"]);
    }

    #[test]
    fn results_of_1_0_0_and_1_1_0_parse() {
        for version in ["1.0.0", "1.1.0"] {
            let raw = json!({
                "cniVersion": version,
                "interfaces": [{"name": "eth0", "sandbox": "/run/bungeo/ns/x/net"}],
                "ips": [
                    {"address": "10.1.0.7/24", "gateway": "10.1.0.1", "interface": 0},
                    {"address": "fd01::7/64", "interface": 0},
                    {"address": "10.2.0.7/24", "interface": 0}
                ]
            });
            let result = CniResult::parse(raw, "bridge").unwrap();
            assert_eq!(result.cni_version, version);
            assert_eq!(ips(&result), vec!["10.1.0.7", "10.2.0.7", "fd01::7"]);
        }
    }

    #[test]
    fn addresses_without_an_interface_count_when_none_has_one() {
        let raw = json!({"cniVersion": "1.0.0", "ips": [{"address": "fd02::9/64"}, {"address": "192.0.2.9/24"}]});
        let result = CniResult::parse(raw, "static").unwrap();
        assert_eq!(ips(&result), vec!["192.0.2.9", "fd02::9"]);
        let empty = CniResult::parse(json!({"cniVersion": "1.0.0"}), "loopback").unwrap();
        assert!(empty.pod_ips("eth0").is_empty());
    }

    #[test]
    fn nonsense_results_are_refused_naming_the_plugin() {
        for raw in [
            json!({"ips": [{"address": "10.0.0.1"}]}),
            json!({"ips": [{"address": "10.0.0.1/33"}]}),
            json!({"ips": [{"address": "10.0.0.1/8", "version": "6"}]}),
            json!({"ips": [{"address": "10.0.0.1/8", "interface": 3}]}),
            json!({"ips": [{"address": "10.0.0.1/8", "gateway": "x"}]}),
            json!({"ips": "many"}),
        ] {
            let err = CniResult::parse(raw.clone(), "plugin bridge").unwrap_err();
            assert!(err.to_string().contains("plugin bridge"), "{raw}: {err}");
        }
    }
}
