//! Which registries the daemons under test reach over plain HTTP and which hosts are mirrored,
//! written out in each daemon's own configuration language.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

/// Registry hosts (`127.0.0.1:PORT`) the daemons under test must know about.
#[derive(Debug, Clone, Default)]
pub struct RegistryHosts {
    /// Hosts spoken to over plain HTTP.
    pub plain_http: Vec<String>,
    /// Upstream host (`docker.io`) → plain-HTTP mirror hosts tried first.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Host → (user name, password) written into bungeo's config. containerd's `hosts.toml`
    /// has no credentials (its CRI plugin takes them from `registry.configs`), so its files
    /// leave them out.
    pub credentials: BTreeMap<String, (String, String)>,
}

impl RegistryHosts {
    /// Writes containerd's `certs.d/<host>/hosts.toml` files under `certs_d`.
    pub fn write_containerd_certs_d(&self, certs_d: &Path) -> Result<()> {
        for host in &self.plain_http {
            let text = format!(
                "server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            );
            write_hosts_toml(certs_d, host, &text)?;
        }
        for (upstream, mirrors) in &self.mirrors {
            let mut text = format!("server = \"{}\"\n", upstream_url(upstream));
            for m in mirrors {
                write!(
                    text,
                    "\n[host.\"http://{m}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
                )?;
            }
            write_hosts_toml(certs_d, upstream, &text)?;
        }
        Ok(())
    }

    /// The `[registries.hosts."…"]` tables of bungeo's config file.
    pub fn bungeo_toml(&self) -> String {
        let mut hosts: BTreeMap<&str, (bool, Vec<String>)> = BTreeMap::new();
        for host in &self.plain_http {
            hosts.entry(host).or_default().0 = true;
        }
        for host in self.credentials.keys() {
            hosts.entry(host).or_default();
        }
        for (upstream, mirrors) in &self.mirrors {
            hosts
                .entry(upstream)
                .or_default()
                .1
                .extend(mirrors.iter().map(|m| format!("http://{m}")));
        }
        let mut out = String::new();
        for (host, (plain_http, mirrors)) in hosts {
            // writing to a String cannot fail
            let _ = writeln!(out, "[registries.hosts.{}]", toml_string(host));
            if plain_http {
                out.push_str("plain_http = true\n");
            }
            if !mirrors.is_empty() {
                let list: Vec<String> = mirrors.iter().map(|m| toml_string(m)).collect();
                let _ = writeln!(out, "mirrors = [{}]", list.join(", "));
            }
            if let Some((user, password)) = self.credentials.get(host) {
                let _ = writeln!(out, "username = {}", toml_string(user));
                let _ = writeln!(out, "password = {}", toml_string(password));
            }
            out.push('\n');
        }
        out
    }
}

fn upstream_url(host: &str) -> String {
    // containerd's own default for docker.io; anything else is assumed to speak HTTPS.
    if host == "docker.io" {
        "https://registry-1.docker.io".to_string()
    } else {
        format!("https://{host}")
    }
}

fn write_hosts_toml(certs_d: &Path, host: &str, text: &str) -> Result<()> {
    let dir = certs_d.join(host);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let file = dir.join("hosts.toml");
    std::fs::write(&file, text).with_context(|| format!("write {}", file.display()))
}

/// A TOML basic string.
pub fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> RegistryHosts {
        RegistryHosts {
            plain_http: vec!["127.0.0.1:5000".into()],
            mirrors: BTreeMap::from([("docker.io".into(), vec!["127.0.0.1:5000".into()])]),
            credentials: BTreeMap::new(),
        }
    }

    #[test]
    fn bungeo_config_marks_plain_http_and_mirrors() {
        let text = hosts().bungeo_toml();
        assert_eq!(
            text,
            "[registries.hosts.\"127.0.0.1:5000\"]\nplain_http = true\n\n\
             [registries.hosts.\"docker.io\"]\nmirrors = [\"http://127.0.0.1:5000\"]\n\n"
        );
    }

    #[test]
    fn bungeo_config_carries_credentials() {
        let mut h = hosts();
        h.credentials
            .insert("127.0.0.1:5000".into(), ("alice".into(), "pa\"ss".into()));
        h.credentials
            .insert("127.0.0.1:6000".into(), ("bob".into(), "pw".into()));
        assert_eq!(
            h.bungeo_toml(),
            "[registries.hosts.\"127.0.0.1:5000\"]\nplain_http = true\n\
             username = \"alice\"\npassword = \"pa\\\"ss\"\n\n\
             [registries.hosts.\"127.0.0.1:6000\"]\nusername = \"bob\"\npassword = \"pw\"\n\n\
             [registries.hosts.\"docker.io\"]\nmirrors = [\"http://127.0.0.1:5000\"]\n\n"
        );
    }

    #[test]
    fn containerd_hosts_files_point_at_plain_http() {
        let dir = tempfile::tempdir().unwrap();
        hosts().write_containerd_certs_d(dir.path()).unwrap();
        let local = std::fs::read_to_string(dir.path().join("127.0.0.1:5000/hosts.toml")).unwrap();
        assert!(local.starts_with("server = \"http://127.0.0.1:5000\""));
        assert!(local.contains("[host.\"http://127.0.0.1:5000\"]"));
        let hub = std::fs::read_to_string(dir.path().join("docker.io/hosts.toml")).unwrap();
        assert!(hub.starts_with("server = \"https://registry-1.docker.io\""));
        assert!(hub.contains("[host.\"http://127.0.0.1:5000\"]"));
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
