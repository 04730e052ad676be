//! CNI, the runtime side of the Container Network Interface spec (versions 0.3.x, 0.4.0,
//! 1.0.0, 1.1.0): loading the first network config list of a directory, running its plugins
//! with the `CNI_*` environment and the config on stdin (ADD with `prevResult` chaining, DEL in
//! reverse order, CHECK), passing capability arguments (`portMappings`, `bandwidth`, `dns`) to
//! the plugins that declare them, parsing results into pod IPs, and rendering bungeo's
//! embedded default network. Pure mechanism: the daemon decides when to call what.

mod args;
mod conf;
mod default_network;
mod exec;
mod ops;
mod orphans;
mod result;

pub use args::{
    Bandwidth, CapabilityArgs, DnsArgs, PortMapping, RuntimeArgs, bandwidth_from_annotations,
    parse_quantity,
};
pub use conf::{CONF_EXTENSIONS, NetworkList, PluginConf, config_files, load_dir, write_conf_file};
pub use default_network::{
    DEFAULT_CONF_FILE, DEFAULT_NETWORK_NAME, DefaultNetwork, parse_cidr, validate_bridge_name,
};
pub use exec::Plugins;
pub use ops::{add, check, del, netns_is_alive};
pub use orphans::kill_orphan_plugins;
pub use result::{CniResult, Interface, IpConfig};

/// The interface name pods get (`CNI_IFNAME`), as with containerd and CRI-O.
pub const DEFAULT_IFNAME: &str = "eth0";

/// The CNI spec versions bungeo speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// `major.minor.patch` as numbers, `None` for anything else.
fn version_tuple(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let t = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(t)
}

/// Whether `version` is at least `min` (both `x.y.z`; an unparsable version is never).
fn version_at_least(version: &str, min: &str) -> bool {
    match (version_tuple(version), version_tuple(min)) {
        (Some(v), Some(m)) => v >= m,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("1.0.0", "0.4.0"));
        assert!(version_at_least("0.4.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
        assert!(version_at_least("0.10.0", "0.4.0"));
        assert!(!version_at_least("1.0", "0.4.0"));
        assert_eq!(version_tuple("1.1.0"), Some((1, 1, 0)));
        assert_eq!(version_tuple("1.1.0.1"), None);
    }
}
