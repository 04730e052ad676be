//! A real registry for the tests: Debian's `docker-registry` on 127.0.0.1, plain HTTP,
//! optionally behind htpasswd Basic auth, with an access log the tests read.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use tempfile::TempDir;

use crate::process::{Process, wait_for};

/// The registry binary; `BUNGEO_DOCKER_REGISTRY` overrides it.
pub fn registry_binary() -> PathBuf {
    std::env::var_os("BUNGEO_DOCKER_REGISTRY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/docker-registry"))
}

/// A running `docker-registry serve`; stopped and its storage removed on drop.
#[derive(Debug)]
pub struct Registry {
    // Declared before `dir` so the process stops before its storage disappears.
    process: Process,
    addr: SocketAddr,
    access_log: PathBuf,
    credentials: Option<(String, String)>,
    dir: TempDir,
}

/// One line of the registry's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// HTTP method.
    pub method: String,
    /// Request path without the query string.
    pub path: String,
    /// Response status.
    pub status: u16,
}

impl Registry {
    /// Starts an anonymous registry.
    pub fn start() -> Result<Self> {
        Self::start_with(None)
    }

    /// Starts a registry that demands HTTP Basic auth with these credentials.
    pub fn start_with_auth(username: &str, password: &str) -> Result<Self> {
        Self::start_with(Some((username.to_string(), password.to_string())))
    }

    fn start_with(credentials: Option<(String, String)>) -> Result<Self> {
        // The free port is only reserved until we close it: retry if someone else takes it.
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(credentials.clone()) {
                Ok(r) => return Ok(r),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("registry did not start")))
    }

    fn try_start(credentials: Option<(String, String)>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bungeo-registry-")
            .tempdir()
            .context("create registry dir")?;
        let addr = free_local_addr()?;
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).context("create registry storage")?;
        let mut auth = String::new();
        if let Some((user, password)) = &credentials {
            let htpasswd = dir.path().join("htpasswd");
            write_htpasswd(&htpasswd, user, password)?;
            auth = format!(
                "auth:\n  htpasswd:\n    realm: bungeo-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {addr}\n  secret: bungeo-test-secret\n\
             {auth}",
            storage.display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).context("write registry config")?;
        let access_log = dir.path().join("access.log");
        let mut cmd = Command::new(registry_binary());
        cmd.arg("serve").arg(&config_path);
        // The access log goes to stdout, the registry's own log to stderr.
        let mut process = Process::spawn(
            "docker-registry",
            cmd,
            &access_log,
            &dir.path().join("registry.log"),
        )?;
        wait_for(
            &format!("docker-registry on {addr}"),
            Duration::from_secs(20),
            || process.ensure_running(),
            || v2_status(addr).filter(|s| *s == 200 || *s == 401),
        )?;
        Ok(Self {
            process,
            addr,
            access_log,
            credentials,
            dir,
        })
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The socket address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// User name and password, if the registry demands them.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The registry's own directory (config, storage, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every request logged so far.
    pub fn accesses(&self) -> Result<Vec<Access>> {
        let text = std::fs::read_to_string(&self.access_log)
            .with_context(|| format!("read {}", self.access_log.display()))?;
        Ok(text.lines().filter_map(parse_access).collect())
    }

    /// Successful GETs of the blob `digest` in any repository.
    pub fn blob_fetches(&self, digest: &str) -> usize {
        let suffix = format!("/blobs/{digest}");
        self.count_gets(|path| path.starts_with("/v2/") && path.ends_with(&suffix))
    }

    /// Successful GETs of the blob `digest` through repository `repo`.
    pub fn blob_fetches_in(&self, repo: &str, digest: &str) -> usize {
        let path = format!("/v2/{repo}/blobs/{digest}");
        self.count_gets(|p| p == path)
    }

    fn count_gets(&self, matches: impl Fn(&str) -> bool) -> usize {
        // An unreadable log means no request was logged yet.
        self.accesses()
            .unwrap_or_default()
            .iter()
            .filter(|a| a.method == "GET" && (200..300).contains(&a.status) && matches(&a.path))
            .count()
    }

    /// The tail of the registry's own log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail(30)
    }
}

/// An address on 127.0.0.1 with a port nothing listens on right now.
pub fn free_local_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    listener.local_addr().context("local address")
}

fn write_htpasswd(path: &Path, user: &str, password: &str) -> Result<()> {
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .context("run htpasswd (apt-get install apache2-utils)")?;
    anyhow::ensure!(
        out.status.success(),
        "htpasswd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(path, &out.stdout).with_context(|| format!("write {}", path.display()))
}

/// The HTTP status of `GET /v2/`, or None if nothing answers yet.
fn v2_status(addr: SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET /v2/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).ok()?;
    let line = std::str::from_utf8(&head[..n]).ok()?;
    line.split(' ').nth(1)?.parse().ok()
}

/// Parses a combined-log-format line: `host - user [time] "GET /path HTTP/1.1" 200 123 "ref" "ua"`.
fn parse_access(line: &str) -> Option<Access> {
    let start = line.find('"')?;
    let rest = &line[start + 1..];
    let end = rest.find('"')?;
    let mut request = rest[..end].split(' ');
    let method = request.next()?.to_string();
    let uri = request.next()?;
    let path = uri.split('?').next()?.to_string();
    let status = rest[end + 1..].split_whitespace().next()?.parse().ok()?;
    Some(Access {
        method,
        path,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_combined_log_lines() {
        let line = r#"127.0.0.1 - - [01/Jan/2026:00:00:00 +0000] "GET /v2/busybox/blobs/sha256:abc?ns=docker.io HTTP/1.1" 200 1234 "" "containerd/1.6.20""#;
        assert_eq!(
            parse_access(line),
            Some(Access {
                method: "GET".into(),
                path: "/v2/busybox/blobs/sha256:abc".into(),
                status: 200
            })
        );
        assert_eq!(parse_access("time=\"x\" level=info msg=hello"), None);
    }

    #[test]
    fn counts_blob_gets_and_requires_auth() {
        let reg = Registry::start_with_auth("alice", "s3cret").unwrap();
        assert_eq!(v2_status(reg.addr()), Some(401));
        assert_eq!(reg.blob_fetches("sha256:00"), 0);
        let text = "127.0.0.1 - - [t] \"GET /v2/a/blobs/sha256:00 HTTP/1.1\" 200 1 \"\" \"x\"\n\
                    127.0.0.1 - - [t] \"HEAD /v2/a/blobs/sha256:00 HTTP/1.1\" 200 1 \"\" \"x\"\n\
                    127.0.0.1 - - [t] \"GET /v2/b/blobs/sha256:00 HTTP/1.1\" 404 1 \"\" \"x\"\n";
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&reg.access_log)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
        assert_eq!(reg.blob_fetches("sha256:00"), 1);
        assert_eq!(reg.blob_fetches_in("a", "sha256:00"), 1);
        assert_eq!(reg.blob_fetches_in("b", "sha256:00"), 0);
    }
}
