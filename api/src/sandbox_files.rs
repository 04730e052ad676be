//! The files a pod sandbox prepares for its containers (`hostname`, `hosts`, `resolv.conf`):
//! what goes in them, and where the node's own copies are.

use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;

use crate::errors::{Error, Result};

/// File names inside a sandbox's directory.
pub const HOSTNAME_FILE: &str = "hostname";
/// See [`HOSTNAME_FILE`].
pub const HOSTS_FILE: &str = "hosts";
/// See [`HOSTNAME_FILE`].
pub const RESOLV_CONF_FILE: &str = "resolv.conf";
/// The directory the pod's `/dev/shm` tmpfs is mounted on.
pub const SHM_DIR: &str = "shm";

/// Linux's HOST_NAME_MAX.
const HOST_NAME_MAX: usize = 64;

/// The node's files a sandbox copies when the request does not say otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFiles {
    /// Copied as the pod's `resolv.conf` when the request has no DNS config.
    pub resolv_conf: PathBuf,
    /// Copied as the pod's `hosts` when the pod uses the node's network.
    pub hosts: PathBuf,
    /// The node's hostname, used when the request gives none.
    pub hostname: PathBuf,
}

impl Default for NodeFiles {
    fn default() -> Self {
        NodeFiles {
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            hosts: PathBuf::from("/etc/hosts"),
            hostname: PathBuf::from("/proc/sys/kernel/hostname"),
        }
    }
}

impl NodeFiles {
    /// The node's hostname.
    pub fn node_hostname(&self) -> Result<String> {
        let text = std::fs::read_to_string(&self.hostname)
            .map_err(|e| Error::io("read the node's hostname", &self.hostname, e))?;
        Ok(text.trim().to_owned())
    }

    /// The content of a node file, empty when the node has none.
    pub fn read_or_empty(path: &Path) -> Result<String> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(Error::io("read node file", path, e)),
        }
    }
}

/// Checks a pod hostname: at most 64 bytes, no whitespace, control characters or `/`, since
/// it is written as a line of files and set with sethostname.
pub fn validate_hostname(hostname: &str) -> Result<()> {
    let bad_char = hostname
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '/');
    if hostname.len() > HOST_NAME_MAX || bad_char {
        return Err(Error::InvalidArgument(format!(
            "invalid hostname {hostname:?}: must be at most {HOST_NAME_MAX} bytes without \
             whitespace, control characters or '/'"
        )));
    }
    Ok(())
}

/// The `hostname` file.
pub fn render_hostname(hostname: &str) -> String {
    format!("{hostname}\n")
}

/// The `hosts` file of a pod with its own network namespace, in kubelet's managed format: the
/// localhost entries, then `hostname` on each pod IP (written once the CNI ADD gave them). A
/// pod without an IP (before its ADD, or a network that gave none) has its hostname on
/// 127.0.1.1, the loopback address Debian gives a host's own name, so it can resolve itself.
pub fn render_hosts(hostname: &str, pod_ips: &[String]) -> String {
    let mut text = String::from(
        "# Kubernetes-managed hosts file.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    if pod_ips.is_empty() {
        text.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    for ip in pod_ips {
        text.push_str(&format!("{ip}\t{hostname}\n"));
    }
    text
}

/// The `resolv.conf` a DNS config asks for, in containerd's layout (`search`, `nameserver`
/// lines, `options`), or `None` when the request has no DNS settings and the node's file is
/// to be copied. Entries that would break the file's lines are refused.
pub fn render_resolv_conf(dns: Option<&cri::DnsConfig>) -> Result<Option<String>> {
    let Some(dns) = dns else {
        return Ok(None);
    };
    for (field, values) in [
        ("servers", &dns.servers),
        ("searches", &dns.searches),
        ("options", &dns.options),
    ] {
        for (i, value) in values.iter().enumerate() {
            if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(Error::InvalidArgument(format!(
                    "dns_config.{field}[{i}] {value:?} must be a non-empty word without whitespace"
                )));
            }
        }
    }
    let mut text = String::new();
    if !dns.searches.is_empty() {
        text.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        text.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok((!text.is_empty()).then_some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(servers: &[&str], searches: &[&str], options: &[&str]) -> cri::DnsConfig {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        cri::DnsConfig {
            servers: v(servers),
            searches: v(searches),
            options: v(options),
        }
    }

    #[test]
    fn resolv_conf_follows_containerds_layout() {
        let text = render_resolv_conf(Some(&dns(
            &["10.96.0.10", "1.1.1.1"],
            &["default.svc.cluster.local", "svc.cluster.local"],
            &["ndots:5", "edns0"],
        )))
        .unwrap()
        .unwrap();
        assert_eq!(
            text,
            "search default.svc.cluster.local svc.cluster.local\n\
             nameserver 10.96.0.10\n\
             nameserver 1.1.1.1\n\
             options ndots:5 edns0\n"
        );
        assert_eq!(
            render_resolv_conf(Some(&dns(&["8.8.8.8"], &[], &[])))
                .unwrap()
                .unwrap(),
            "nameserver 8.8.8.8\n"
        );
    }

    #[test]
    fn no_or_empty_dns_config_means_copy_the_nodes() {
        assert_eq!(render_resolv_conf(None).unwrap(), None);
        assert_eq!(render_resolv_conf(Some(&dns(&[], &[], &[]))).unwrap(), None);
    }

    #[test]
    fn dns_entries_that_would_inject_lines_are_refused() {
        for bad in [
            dns(&["1.1.1.1\nnameserver 6.6.6.6"], &[], &[]),
            dns(&[], &["a b"], &[]),
            dns(&[], &[], &[""]),
        ] {
            let err = render_resolv_conf(Some(&bad)).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
            assert!(err.to_string().contains("dns_config."), "{err}");
        }
    }

    #[test]
    fn hosts_has_localhost_entries_and_the_hostname() {
        let text = render_hosts("web-0", &[]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "# Kubernetes-managed hosts file.");
        assert_eq!(lines[1], "127.0.0.1\tlocalhost");
        assert_eq!(lines[2], "::1\tlocalhost ip6-localhost ip6-loopback");
        assert_eq!(lines.last(), Some(&"127.0.1.1\tweb-0"));
        let with_ips = render_hosts("web-0", &["10.1.0.5".into(), "fd00::5".into()]);
        assert!(
            with_ips.ends_with("10.1.0.5\tweb-0\nfd00::5\tweb-0\n"),
            "{with_ips}"
        );
        assert!(!with_ips.contains("127.0.1.1"));
    }

    #[test]
    fn hostname_file_is_one_line() {
        assert_eq!(render_hostname("web-0"), "web-0\n");
    }

    #[test]
    fn hostnames_are_checked() {
        validate_hostname("web-0").unwrap();
        validate_hostname("").unwrap();
        validate_hostname(&"a".repeat(64)).unwrap();
        for bad in ["a b", "a\nb", "a/b", &"a".repeat(65)] {
            assert!(validate_hostname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn node_files_missing_read_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            NodeFiles::read_or_empty(&dir.path().join("missing")).unwrap(),
            ""
        );
        let hostname = dir.path().join("hostname");
        std::fs::write(&hostname, "node-1\n").unwrap();
        let node = NodeFiles {
            hostname,
            ..NodeFiles::default()
        };
        assert_eq!(node.node_hostname().unwrap(), "node-1");
    }
}
