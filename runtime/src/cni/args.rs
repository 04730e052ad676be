//! What a runtime passes to plugins besides the network config: the `CNI_*` environment and
//! the capability arguments (`runtimeConfig`), which go only to plugins declaring them.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::conf::{NetworkList, PluginConf};
use crate::error::{Error, Result};

/// Pod annotation asking for an ingress rate limit (a Kubernetes quantity in bits/s).
pub const INGRESS_BANDWIDTH: &str = "kubernetes.io/ingress-bandwidth";
/// Pod annotation asking for an egress rate limit.
pub const EGRESS_BANDWIDTH: &str = "kubernetes.io/egress-bandwidth";

/// One host port mapping (the `portMappings` capability).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: i32,
    pub container_port: i32,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// Rate limits in bits per second and bursts in bits (the `bandwidth` capability).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ingress_rate: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ingress_burst: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub egress_rate: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub egress_burst: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The pod's DNS settings (the `dns` capability).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsArgs {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// The capability arguments a pod brings; each goes only to plugins that declare it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilityArgs {
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    #[serde(default)]
    pub bandwidth: Option<Bandwidth>,
    #[serde(default)]
    pub dns: Option<DnsArgs>,
}

impl CapabilityArgs {
    /// The `runtimeConfig` object for `plugin`: only capabilities it declares and the pod
    /// has. `None` when nothing applies (the key is then left out).
    pub fn runtime_config_for(&self, plugin: &PluginConf) -> Option<Map<String, Value>> {
        let mut out = Map::new();
        for cap in &plugin.capabilities {
            let value = match cap.as_str() {
                "portMappings" if !self.port_mappings.is_empty() => json!(self.port_mappings),
                "bandwidth" => match &self.bandwidth {
                    Some(b) => json!(b),
                    None => continue,
                },
                "dns" => match &self.dns {
                    Some(d) => json!(d),
                    None => continue,
                },
                _ => continue,
            };
            out.insert(cap.clone(), value);
        }
        (!out.is_empty()).then_some(out)
    }
}

/// What one invocation is about: the container (sandbox) id, its network namespace, the
/// interface name, `CNI_ARGS` pairs and capability arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeArgs {
    pub container_id: String,
    /// The network namespace path; empty when it is gone (DEL after a reboot), which the
    /// spec allows for DEL.
    pub netns: PathBuf,
    pub ifname: String,
    /// `CNI_ARGS` pairs, `IgnoreUnknown=1` first when given.
    pub args: Vec<(String, String)>,
    pub capabilities: CapabilityArgs,
}

impl RuntimeArgs {
    /// `CNI_ARGS`: `K=V` pairs joined by `;`. Values with `;` or `=` would change the pairs'
    /// meaning and are refused.
    pub fn cni_args(&self) -> Result<String> {
        let mut parts = Vec::with_capacity(self.args.len());
        for (k, v) in &self.args {
            if [k, v]
                .iter()
                .any(|s| s.contains([';', '=']) || s.contains('\0'))
            {
                return Err(Error::InvalidArgument(format!(
                    "CNI argument {k}={v:?} must not contain ';' or '='"
                )));
            }
            parts.push(format!("{k}={v}"));
        }
        Ok(parts.join(";"))
    }

    /// The environment of one plugin call.
    pub fn env(&self, command: &str, cni_path: &str) -> Result<Vec<(&'static str, String)>> {
        Ok(vec![
            ("CNI_COMMAND", command.to_owned()),
            ("CNI_CONTAINERID", self.container_id.clone()),
            ("CNI_NETNS", self.netns.to_string_lossy().into_owned()),
            ("CNI_IFNAME", self.ifname.clone()),
            ("CNI_ARGS", self.cni_args()?),
            ("CNI_PATH", cni_path.to_owned()),
        ])
    }
}

/// The stdin of one plugin call: the plugin's own config with the network's `name` and
/// `cniVersion`, the previous result when there is one, and the capability arguments it
/// declares, as libcni's `buildOneConfig` builds it.
pub fn plugin_stdin(
    list: &NetworkList,
    plugin: &PluginConf,
    prev_result: Option<&Value>,
    capabilities: &CapabilityArgs,
) -> Vec<u8> {
    let mut conf = plugin.raw.clone();
    conf.insert("name".to_owned(), Value::String(list.name.clone()));
    conf.insert(
        "cniVersion".to_owned(),
        Value::String(list.cni_version.clone()),
    );
    conf.remove("prevResult");
    conf.remove("runtimeConfig");
    if let Some(prev) = prev_result {
        conf.insert("prevResult".to_owned(), prev.clone());
    }
    if let Some(rc) = capabilities.runtime_config_for(plugin) {
        conf.insert("runtimeConfig".to_owned(), Value::Object(rc));
    }
    Value::Object(conf).to_string().into_bytes()
}

/// Parses a Kubernetes quantity (`10M`, `1.5Gi`, `100k`, `1e6`, `500m`) into its value
/// rounded up to a whole number, as `resource.Quantity.Value()` does.
pub fn parse_quantity(text: &str) -> Result<u64> {
    let invalid = || Error::InvalidArgument(format!("{text:?} is not a quantity"));
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let number = number.strip_prefix('+').unwrap_or(number);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if (int_part.is_empty() && frac_part.is_empty())
        || !int_part
            .bytes()
            .chain(frac_part.bytes())
            .all(|b| b.is_ascii_digit())
        || frac_part.len() > 18
    {
        return Err(invalid());
    }
    // value = mantissa / 10^frac_len * 2^bin * 10^dec
    let mantissa: u128 = format!("{int_part}{frac_part}")
        .parse()
        .map_err(|_| invalid())?;
    let mut den_exp10 = i32::try_from(frac_part.len()).map_err(|_| invalid())?;
    let (bin_exp, dec_exp): (u32, i32) = match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().map_err(|_| invalid())?;
            if !(-30..=30).contains(&e) {
                return Err(invalid());
            }
            (0, e)
        }
        _ => return Err(invalid()),
    };
    den_exp10 -= dec_exp;
    let mut num = mantissa.checked_shl(bin_exp).ok_or_else(invalid)?;
    let mut den: u128 = 1;
    if den_exp10 >= 0 {
        den = 10u128
            .checked_pow(den_exp10.unsigned_abs())
            .ok_or_else(invalid)?;
    } else {
        num = num
            .checked_mul(
                10u128
                    .checked_pow(den_exp10.unsigned_abs())
                    .ok_or_else(invalid)?,
            )
            .ok_or_else(invalid)?;
    }
    let value = num.div_ceil(den);
    u64::try_from(value).map_err(|_| invalid())
}

/// Smallest and largest rates Kubernetes accepts in the bandwidth annotations (1k and 1P
/// bits/s, `k8s.io/kubernetes/pkg/util/bandwidth`).
const MIN_RATE: u64 = 1_000;
const MAX_RATE: u64 = 1_000_000_000_000_000;
/// The burst containerd passes with each rate (`math.MaxUint32`).
const BURST: u64 = u32::MAX as u64;

/// The `bandwidth` capability the pod's annotations ask for, `None` when they ask for none.
pub fn bandwidth_from_annotations(
    annotations: &HashMap<String, String>,
) -> Result<Option<Bandwidth>> {
    let rate = |key: &str| -> Result<Option<u64>> {
        let Some(text) = annotations.get(key) else {
            return Ok(None);
        };
        let value = parse_quantity(text)
            .map_err(|e| Error::InvalidArgument(format!("annotation {key}: {e}")))?;
        if !(MIN_RATE..=MAX_RATE).contains(&value) {
            return Err(Error::InvalidArgument(format!(
                "annotation {key}: {text:?} is outside 1k..1P bits per second"
            )));
        }
        Ok(Some(value))
    };
    let ingress = rate(INGRESS_BANDWIDTH)?;
    let egress = rate(EGRESS_BANDWIDTH)?;
    if ingress.is_none() && egress.is_none() {
        return Ok(None);
    }
    Ok(Some(Bandwidth {
        ingress_rate: ingress.unwrap_or(0),
        ingress_burst: ingress.map_or(0, |_| BURST),
        egress_rate: egress.unwrap_or(0),
        egress_burst: egress.map_or(0, |_| BURST),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> NetworkList {
        NetworkList::parse(
            r#"{"cniVersion":"1.0.0","name":"net","plugins":[
                {"type":"bridge","prevResult":{"stale":true}},
                {"type":"portmap","capabilities":{"portMappings":true}},
                {"type":"bandwidth","capabilities":{"bandwidth":true}},
                {"type":"dnsy","capabilities":{"dns":true,"portMappings":false}}]}"#,
            "x",
        )
        .unwrap()
    }

    fn caps() -> CapabilityArgs {
        CapabilityArgs {
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".to_owned(),
                host_ip: String::new(),
            }],
            bandwidth: Some(Bandwidth {
                ingress_rate: 10_000_000,
                ingress_burst: BURST,
                ..Default::default()
            }),
            dns: Some(DnsArgs {
                servers: vec!["10.96.0.10".to_owned()],
                searches: vec!["svc".to_owned()],
                options: vec!["ndots:5".to_owned()],
            }),
        }
    }

    fn stdin(i: usize, prev: Option<&Value>, caps: &CapabilityArgs) -> Value {
        let list = list();
        serde_json::from_slice(&plugin_stdin(&list, &list.plugins[i], prev, caps)).unwrap()
    }

    #[test]
    fn stdin_carries_name_version_prev_result_and_only_declared_capabilities() {
        let prev = json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]});
        let bridge = stdin(0, None, &caps());
        assert_eq!(bridge["name"], "net");
        assert_eq!(bridge["cniVersion"], "1.0.0");
        assert_eq!(bridge["type"], "bridge");
        // What the file wrote there is not a previous result of this call.
        assert!(bridge.get("prevResult").is_none(), "{bridge}");
        assert!(bridge.get("runtimeConfig").is_none(), "{bridge}");

        let portmap = stdin(1, Some(&prev), &caps());
        assert_eq!(portmap["prevResult"], prev);
        assert_eq!(
            portmap["runtimeConfig"],
            json!({"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]})
        );
        let bw = stdin(2, Some(&prev), &caps());
        assert_eq!(
            bw["runtimeConfig"],
            json!({"bandwidth":{"ingressRate":10_000_000u64,"ingressBurst":4_294_967_295u64}})
        );
        let dns = stdin(3, Some(&prev), &caps());
        assert_eq!(
            dns["runtimeConfig"],
            json!({"dns":{"servers":["10.96.0.10"],"searches":["svc"],"options":["ndots:5"]}})
        );
        // A pod without the arguments gives declared plugins no runtimeConfig at all.
        for i in 1..4 {
            assert!(
                stdin(i, Some(&prev), &CapabilityArgs::default())
                    .get("runtimeConfig")
                    .is_none()
            );
        }
    }

    #[test]
    fn env_has_every_cni_variable() {
        let rt = RuntimeArgs {
            container_id: "abc".to_owned(),
            netns: PathBuf::from("/run/bungeo/ns/abc/net"),
            ifname: "eth0".to_owned(),
            args: vec![
                ("IgnoreUnknown".to_owned(), "1".to_owned()),
                ("K8S_POD_NAMESPACE".to_owned(), "default".to_owned()),
                ("K8S_POD_NAME".to_owned(), "web".to_owned()),
            ],
            capabilities: CapabilityArgs::default(),
        };
        let env: HashMap<_, _> = rt
            .env("ADD", "/opt/cni/bin:/usr/lib/cni")
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(env["CNI_COMMAND"], "ADD");
        assert_eq!(env["CNI_CONTAINERID"], "abc");
        assert_eq!(env["CNI_NETNS"], "/run/bungeo/ns/abc/net");
        assert_eq!(env["CNI_IFNAME"], "eth0");
        assert_eq!(
            env["CNI_ARGS"],
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"
        );
        assert_eq!(env["CNI_PATH"], "/opt/cni/bin:/usr/lib/cni");
        let mut bad = rt.clone();
        bad.args
            .push(("K8S_POD_NAME".to_owned(), "a;b=c".to_owned()));
        assert!(matches!(bad.cni_args(), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn quantities_parse_as_kubernetes_does() {
        for (text, value) in [
            ("10M", 10_000_000),
            ("1k", 1_000),
            ("1Ki", 1_024),
            ("1.5Gi", 1_610_612_736),
            ("2.5M", 2_500_000),
            ("100", 100),
            ("1e6", 1_000_000),
            ("1E3", 1_000),
            ("500m", 1),
            ("1500m", 2),
            ("+7", 7),
            ("0.1", 1),
            (".5k", 500),
            ("1P", 1_000_000_000_000_000),
        ] {
            assert_eq!(parse_quantity(text).unwrap(), value, "{text}");
        }
        for bad in [
            "",
            "M",
            "1x",
            "1.2.3",
            "-1",
            "1 M",
            "1e",
            "9999999999999999999999E",
        ] {
            assert!(parse_quantity(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bandwidth_annotations_become_rates_with_containerds_burst() {
        let ann = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            bandwidth_from_annotations(&ann(&[("x", "1")])).unwrap(),
            None
        );
        assert_eq!(
            bandwidth_from_annotations(&ann(&[(INGRESS_BANDWIDTH, "10M")])).unwrap(),
            Some(Bandwidth {
                ingress_rate: 10_000_000,
                ingress_burst: BURST,
                egress_rate: 0,
                egress_burst: 0,
            })
        );
        let both = bandwidth_from_annotations(&ann(&[
            (INGRESS_BANDWIDTH, "1M"),
            (EGRESS_BANDWIDTH, "2Mi"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (both.ingress_rate, both.egress_rate),
            (1_000_000, 2_097_152)
        );
        for (value, needle) in [
            ("fast", "not a quantity"),
            ("10", "outside"),
            ("2P", "outside"),
        ] {
            let err = bandwidth_from_annotations(&ann(&[(EGRESS_BANDWIDTH, value)])).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
            let msg = err.to_string();
            assert!(
                msg.contains(EGRESS_BANDWIDTH) && msg.contains(needle),
                "{msg}"
            );
        }
    }
}
