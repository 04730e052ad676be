//! The daemon's configuration: embedded defaults, `/etc/bungeo/config.toml`, then flags.

use std::path::{Path, PathBuf};

use bungeo_imagestore::RegistriesConfig;
use serde::{Deserialize, Serialize};

use crate::errors::{Error, Result};

/// Where the daemon looks for its config file when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/bungeo/config.toml";

/// The commented TOML that `bungeo config default` prints; it parses into `Config::default()`.
pub const DEFAULT_TEMPLATE: &str = include_str!("default_config.toml");

/// Replaces a secret in the effective config shown to CRI clients.
const REDACTED: &str = "<redacted>";

/// Everything the daemon can be configured with. Every key has an embedded default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Persistent data: image store, records.
    pub root: PathBuf,
    /// Runtime state lost at reboot: lock file, sockets.
    pub state: PathBuf,
    /// The CRI unix socket.
    pub listen: PathBuf,
    /// `tracing` filter directive (`info`, `debug`, `bungeo_api=debug,info`).
    pub log_level: String,
    /// The cgroup driver kubelet is told to use.
    pub cgroup_driver: CgroupDriver,
    /// CRI runtime handler names (RuntimeClass handlers) accepted besides the default "".
    pub runtime_handlers: Vec<String>,
    /// Image pulling.
    pub image: ImageConfig,
    /// Per-registry mirrors, plain HTTP and credentials.
    pub registries: RegistriesConfig,
    /// Pod networking (CNI).
    pub cni: CniConfig,
    /// The per-container shim and the OCI runtime it runs.
    pub shim: ShimConfig,
    /// The streaming server for Exec, Attach and PortForward.
    pub streaming: StreamingConfig,
    /// The Prometheus metrics endpoint.
    pub metrics: MetricsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from("/var/lib/bungeo"),
            state: PathBuf::from("/run/bungeo"),
            listen: PathBuf::from("/run/bungeo/bungeo.sock"),
            log_level: "info".to_owned(),
            cgroup_driver: CgroupDriver::Cgroupfs,
            runtime_handlers: Vec::new(),
            image: ImageConfig::default(),
            registries: RegistriesConfig::default(),
            cni: CniConfig::default(),
            shim: ShimConfig::default(),
            streaming: StreamingConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// `[metrics]`: where Prometheus metrics are served over HTTP (`/metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` to listen on, e.g. `127.0.0.1:9090`; empty serves no metrics.
    pub address: String,
}

/// `[streaming]`: the HTTP server that Exec, Attach and PortForward URLs point at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// IP address to listen on.
    pub address: String,
    /// TCP port; 0 picks a free one at start.
    pub port: u16,
    /// PEM certificate chain for HTTPS; empty serves plain HTTP.
    pub tls_cert: PathBuf,
    /// PEM private key for HTTPS.
    pub tls_key: PathBuf,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: "127.0.0.1".to_owned(),
            port: 0,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
        }
    }
}

/// How container cgroups are managed; kubelet must be configured with the same driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    /// Write the cgroup filesystem directly.
    #[default]
    Cgroupfs,
    /// Ask systemd for transient units.
    Systemd,
}

/// `[image]`: pulling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageConfig {
    /// Layers downloaded at once per pull.
    pub max_concurrent_downloads: usize,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            max_concurrent_downloads: 3,
        }
    }
}

/// `[cni]`: where CNI network configs and plugins are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CniConfig {
    /// Directory with `*.conflist` / `*.conf` network configs.
    pub conf_dir: PathBuf,
    /// Directories searched in order for plugin binaries.
    pub bin_dirs: Vec<PathBuf>,
    /// Bridge device of the embedded default network.
    pub default_bridge: String,
    /// host-local range of the embedded default network (one CIDR, or several joined by `,`).
    pub default_subnet: String,
    /// Seconds a plugin may run before it is killed and the call fails.
    pub plugin_timeout: u64,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            default_bridge: "bungeo0".to_owned(),
            default_subnet: "10.88.0.0/16".to_owned(),
            plugin_timeout: 60,
        }
    }
}

/// `[shim]`: the binaries that run containers. Empty paths mean "beside the bungeo
/// executable", where the release puts them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShimConfig {
    /// The `bungeo-shim` executable.
    pub binary: PathBuf,
    /// The OCI runtime executable the shims run (`bungeo-runtime`).
    pub runtime: PathBuf,
}

impl Config {
    /// Loads `explicit` (which must exist), or else `/etc/bungeo/config.toml` when present,
    /// over the embedded defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Config> {
        Self::load_with_default_path(explicit, Path::new(DEFAULT_CONFIG_PATH))
    }

    fn load_with_default_path(explicit: Option<&Path>, default_path: &Path) -> Result<Config> {
        if let Some(path) = explicit {
            return Self::from_file(path);
        }
        match std::fs::read_to_string(default_path) {
            Ok(text) => Self::parse(&text, default_path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(Error::io("read config file", default_path, e)),
        }
    }

    /// Reads and parses one config file.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io("read config file", path, e))?;
        Self::parse(&text, path)
    }

    /// Parses TOML text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        toml::from_str(text).map_err(|e| Error::ConfigFile {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Rejects values the daemon cannot work with, naming the key.
    pub fn validate(&self) -> Result<()> {
        for (key, path) in [
            ("root", &self.root),
            ("state", &self.state),
            ("listen", &self.listen),
        ] {
            // A daemon's working directory is an accident of how it was started.
            if !path.is_absolute() {
                return Err(Error::InvalidConfig(format!(
                    "{key} must be an absolute path (without unix://), got {}",
                    path.display()
                )));
            }
        }
        if self.listen.file_name().is_none() {
            return Err(Error::InvalidConfig(format!(
                "listen must name a socket file, got {}",
                self.listen.display()
            )));
        }
        for (key, path) in [
            ("shim.binary", &self.shim.binary),
            ("shim.runtime", &self.shim.runtime),
        ] {
            if !path.as_os_str().is_empty() && !path.is_absolute() {
                return Err(Error::InvalidConfig(format!(
                    "{key} must be an absolute path or empty, got {}",
                    path.display()
                )));
            }
        }
        if self.log_level.trim().is_empty() {
            return Err(Error::InvalidConfig(
                "log_level must not be empty".to_owned(),
            ));
        }
        for handler in &self.runtime_handlers {
            if handler.is_empty() || handler.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(Error::InvalidConfig(format!(
                    "runtime_handlers: {handler:?} is not a handler name (a non-empty word)"
                )));
            }
        }
        if self.streaming.address.parse::<std::net::IpAddr>().is_err() {
            return Err(Error::InvalidConfig(format!(
                "streaming.address must be an IP address, got {:?}",
                self.streaming.address
            )));
        }
        if self.streaming.tls_cert.as_os_str().is_empty()
            != self.streaming.tls_key.as_os_str().is_empty()
        {
            return Err(Error::InvalidConfig(
                "streaming.tls_cert and streaming.tls_key must be set together".to_owned(),
            ));
        }
        if !self.metrics.address.is_empty()
            && self
                .metrics
                .address
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return Err(Error::InvalidConfig(format!(
                "metrics.address must be an IP address and port such as 127.0.0.1:9090, or empty, got {:?}",
                self.metrics.address
            )));
        }
        if self.image.max_concurrent_downloads == 0 {
            return Err(Error::InvalidConfig(
                "image.max_concurrent_downloads must be at least 1".to_owned(),
            ));
        }
        self.validate_cni()?;
        Ok(())
    }

    fn validate_cni(&self) -> Result<()> {
        let cni = &self.cni;
        let invalid = |e: bungeo_runtime::Error| Error::InvalidConfig(format!("cni: {e}"));
        if !cni.conf_dir.is_absolute() || cni.bin_dirs.iter().any(|d| !d.is_absolute()) {
            return Err(Error::InvalidConfig(
                "cni.conf_dir and cni.bin_dirs must be absolute paths".to_owned(),
            ));
        }
        bungeo_runtime::cni::validate_bridge_name(&cni.default_bridge).map_err(invalid)?;
        bungeo_runtime::cni::DefaultNetwork::subnets_of(&cni.default_subnet).map_err(invalid)?;
        if cni.plugin_timeout == 0 {
            return Err(Error::InvalidConfig(
                "cni.plugin_timeout must be at least 1 (seconds)".to_owned(),
            ));
        }
        Ok(())
    }

    /// The config with registry secrets replaced, safe to show to CRI clients and logs.
    pub fn redacted(&self) -> Config {
        let mut config = self.clone();
        for host in config.registries.hosts.values_mut() {
            for secret in [&mut host.password, &mut host.auth, &mut host.identity_token] {
                if !secret.is_empty() {
                    *secret = REDACTED.to_owned();
                }
            }
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bungeo_imagestore::HostConfig;

    #[test]
    fn template_parses_into_exactly_the_defaults() {
        let parsed = Config::parse(DEFAULT_TEMPLATE, Path::new("template")).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn template_spells_out_every_key() {
        // Equal values with serde defaults could hide a missing key: compare the raw tables.
        let written: toml::Table = toml::from_str(DEFAULT_TEMPLATE).unwrap();
        let serialized: toml::Table =
            toml::from_str(&toml::to_string(&Config::default()).unwrap()).unwrap();
        assert_eq!(written, serialized);
    }

    #[test]
    fn template_documents_every_key_with_a_comment() {
        let lines: Vec<&str> = DEFAULT_TEMPLATE.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let is_key = !line.starts_with('#') && line.contains(" = ");
            if is_key {
                assert!(
                    i > 0 && lines[i - 1].starts_with('#'),
                    "key without a comment above it: {line}"
                );
            }
        }
    }

    #[test]
    fn template_example_registry_parses_and_shows_every_host_key() {
        let mut text = String::new();
        let mut in_example = false;
        for line in DEFAULT_TEMPLATE.lines() {
            if line == "# Example:" {
                in_example = true;
            } else if in_example && line.is_empty() {
                in_example = false;
            } else if in_example {
                let line = line.strip_prefix('#').unwrap_or(line);
                text.push_str(line.strip_prefix(' ').unwrap_or(line));
            } else {
                text.push_str(line);
            }
            text.push('\n');
        }
        let config = Config::parse(&text, Path::new("uncommented")).unwrap();
        let host = &config.registries.hosts["docker.io"];
        assert_eq!(host.mirrors, vec!["http://mirror.local:5000".to_owned()]);
        assert_eq!(host.username, "puller");

        let table: toml::Table = toml::from_str(&text).unwrap();
        let shown: Vec<&String> = table["registries"]["hosts"]["docker.io"]
            .as_table()
            .unwrap()
            .keys()
            .collect();
        let all: toml::Table =
            toml::from_str(&toml::to_string(&HostConfig::default()).unwrap()).unwrap();
        assert_eq!(shown, all.keys().collect::<Vec<_>>());
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(
            Config::parse("", Path::new("empty")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let config = Config::parse(
            r#"
root = "/srv/bungeo"
cgroup_driver = "systemd"

[image]
max_concurrent_downloads = 8

[registries.hosts."127.0.0.1:5000"]
plain_http = true
mirrors = ["http://mirror.local:5000"]

[registries.hosts."private.example"]
username = "alice"
password = "s3cret"
"#,
            Path::new("partial"),
        )
        .unwrap();
        assert_eq!(config.root, PathBuf::from("/srv/bungeo"));
        assert_eq!(config.state, PathBuf::from("/run/bungeo"));
        assert_eq!(config.cgroup_driver, CgroupDriver::Systemd);
        assert_eq!(config.image.max_concurrent_downloads, 8);
        assert_eq!(config.cni, CniConfig::default());
        let local = &config.registries.hosts["127.0.0.1:5000"];
        assert!(local.plain_http);
        assert_eq!(local.mirrors, vec!["http://mirror.local:5000".to_owned()]);
        assert_eq!(
            config.registries.hosts["private.example"].password,
            "s3cret"
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_the_file_name() {
        for text in [
            "roots = \"/x\"",
            "[image]\nmax_downloads = 2",
            "[cni]\nconfdir = \"/x\"",
            "[registries.hosts.\"a\"]\nmirror = []",
        ] {
            let err = Config::parse(text, Path::new("/etc/bungeo/config.toml")).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("/etc/bungeo/config.toml"), "{msg}");
            assert!(msg.contains("unknown field"), "{msg}");
        }
    }

    #[test]
    fn bad_cgroup_driver_is_refused() {
        let err = Config::parse("cgroup_driver = \"cgroupv3\"", Path::new("c")).unwrap_err();
        assert!(err.to_string().contains("cgroupv3"), "{err}");
    }

    #[test]
    fn explicit_config_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let err = Config::load(Some(&missing)).unwrap_err();
        assert!(err.to_string().contains("nope.toml"), "{err}");
    }

    #[test]
    fn default_path_is_optional_but_read_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        assert_eq!(
            Config::load_with_default_path(None, &path).unwrap(),
            Config::default()
        );
        std::fs::write(&path, "log_level = \"debug\"\n").unwrap();
        assert_eq!(
            Config::load_with_default_path(None, &path)
                .unwrap()
                .log_level,
            "debug"
        );
        let explicit = dir.path().join("other.toml");
        std::fs::write(&explicit, "log_level = \"warn\"\n").unwrap();
        assert_eq!(
            Config::load_with_default_path(Some(&explicit), &path)
                .unwrap()
                .log_level,
            "warn"
        );
    }

    #[test]
    fn validate_refuses_relative_paths_and_zero_downloads() {
        assert!(Config::default().validate().is_ok());
        let relative = Config {
            listen: PathBuf::from("unix:///run/bungeo/bungeo.sock"),
            ..Config::default()
        };
        let msg = relative.validate().unwrap_err().to_string();
        assert!(msg.contains("listen"), "{msg}");
        let mut zero = Config::default();
        zero.image.max_concurrent_downloads = 0;
        let msg = zero.validate().unwrap_err().to_string();
        assert!(msg.contains("max_concurrent_downloads"), "{msg}");
    }

    #[test]
    fn cni_keys_parse_and_are_checked() {
        let config = Config::parse(
            "[cni]\ndefault_bridge = \"br9\"\ndefault_subnet = \"10.9.0.0/24,fd00:9::/64\"\nplugin_timeout = 5\n",
            Path::new("c"),
        )
        .unwrap();
        assert_eq!(config.cni.default_bridge, "br9");
        assert_eq!(config.cni.plugin_timeout, 5);
        assert_eq!(config.cni.conf_dir, PathBuf::from("/etc/cni/net.d"));
        config.validate().unwrap();
        for (key, value) in [
            ("default_bridge", "\"much-too-long-name\""),
            ("default_subnet", "\"10.9.0.0\""),
            ("plugin_timeout", "0"),
            ("conf_dir", "\"net.d\""),
        ] {
            let config =
                Config::parse(&format!("[cni]\n{key} = {value}\n"), Path::new("c")).unwrap();
            let msg = config.validate().unwrap_err().to_string();
            assert!(msg.contains("cni"), "{key}: {msg}");
        }
    }

    #[test]
    fn metrics_are_off_by_default_and_need_an_address_and_port() {
        assert_eq!(Config::default().metrics.address, "");
        let config =
            Config::parse("[metrics]\naddress = \"127.0.0.1:9090\"", Path::new("m")).unwrap();
        config.validate().unwrap();
        for bad in ["localhost", "127.0.0.1", ":9090x"] {
            let mut config = Config::default();
            config.metrics.address = bad.to_owned();
            let msg = config.validate().unwrap_err().to_string();
            assert!(msg.contains("metrics.address"), "{msg}");
        }
    }

    #[test]
    fn runtime_handlers_parse_and_must_be_words() {
        let config =
            Config::parse("runtime_handlers = [\"bungeo\", \"fast\"]", Path::new("h")).unwrap();
        assert_eq!(config.runtime_handlers, vec!["bungeo", "fast"]);
        config.validate().unwrap();
        for bad in ["", "two words"] {
            let config = Config {
                runtime_handlers: vec![bad.to_owned()],
                ..Config::default()
            };
            let msg = config.validate().unwrap_err().to_string();
            assert!(msg.contains("runtime_handlers"), "{msg}");
        }
    }

    #[test]
    fn redacted_hides_secrets_but_keeps_the_rest() {
        let mut config = Config::default();
        config.registries.hosts.insert(
            "r.example".to_owned(),
            HostConfig {
                username: "alice".to_owned(),
                password: "pw".to_owned(),
                auth: "YWxpY2U6cHc=".to_owned(),
                identity_token: "tok".to_owned(),
                plain_http: true,
                ..HostConfig::default()
            },
        );
        config
            .registries
            .hosts
            .insert("open.example".to_owned(), HostConfig::default());
        let redacted = config.redacted();
        let host = &redacted.registries.hosts["r.example"];
        assert_eq!(host.username, "alice");
        assert_eq!(host.password, REDACTED);
        assert_eq!(host.auth, REDACTED);
        assert_eq!(host.identity_token, REDACTED);
        assert!(host.plain_http);
        // Empty secrets stay empty so the output does not suggest credentials that are not there.
        assert_eq!(
            redacted.registries.hosts["open.example"],
            HostConfig::default()
        );
        let json = serde_json::to_string(&redacted).unwrap();
        assert!(
            !json.contains("YWxpY2U6cHc=") && !json.contains("\"pw\""),
            "{json}"
        );
    }
}
