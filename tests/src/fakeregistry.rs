//! A minimal read-only registry (HTTP/1.1 on 127.0.0.1) for what docker-registry will not
//! serve: blobs that do not match their digest, Docker schema 1 manifests, and blobs that
//! stall mid-transfer until released (for crash-during-pull tests).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};
use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::images::Image;
use crate::layer::{Blob, sha256_digest};

#[derive(Debug, Default)]
struct State {
    manifests: HashMap<(String, String), (String, Bytes)>,
    blobs: HashMap<(String, String), Bytes>,
    stalls: HashMap<String, (usize, watch::Receiver<bool>)>,
    requests: Vec<(String, String)>,
}

/// A blob transfer held after its first bytes until [`Stall::release`] (or drop).
#[derive(Debug)]
pub struct Stall {
    release: watch::Sender<bool>,
}

impl Stall {
    /// Lets held and later transfers of the blob finish.
    pub fn release(&self) {
        self.release.send_replace(true);
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        self.release();
    }
}

/// The fake registry; stops serving on drop.
#[derive(Debug)]
pub struct FakeRegistry {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl FakeRegistry {
    /// Listens on a free port of 127.0.0.1 (on the current tokio runtime).
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind fake registry")?;
        let addr = listener.local_addr().context("fake registry address")?;
        let state = Arc::new(Mutex::new(State::default()));
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(Self { addr, state, task })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Serves `data` as manifest `reference` (a tag or digest) of `repo`.
    pub fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, data: Bytes) {
        self.state().manifests.insert(
            (repo.to_string(), reference.to_string()),
            (media_type.to_string(), data),
        );
    }

    /// Serves `data` as blob `digest` of `repo`, whether or not it hashes to `digest`.
    pub fn put_blob(&self, repo: &str, digest: &str, data: Bytes) {
        self.state()
            .blobs
            .insert((repo.to_string(), digest.to_string()), data);
    }

    fn put_manifest_blob(&self, repo: &str, tag: Option<&str>, blob: &Blob) {
        self.put_manifest(repo, &blob.digest, &blob.media_type, blob.data.clone());
        if let Some(tag) = tag {
            self.put_manifest(repo, tag, &blob.media_type, blob.data.clone());
        }
    }

    /// Serves `image` as `repo:tag` (and by digest), including its blobs.
    pub fn publish(&self, repo: &str, tag: &str, image: &Image) {
        let put_parts = |m: &crate::images::Manifest| {
            self.put_blob(repo, &m.config.digest, m.config.data.clone());
            for l in &m.layers {
                self.put_blob(repo, &l.blob.digest, l.blob.data.clone());
            }
        };
        match image {
            Image::Single(m) => {
                put_parts(m);
                self.put_manifest_blob(repo, Some(tag), &m.manifest);
            }
            Image::Index { index, manifests } => {
                for m in manifests {
                    put_parts(m);
                    self.put_manifest_blob(repo, None, &m.manifest);
                }
                self.put_manifest_blob(repo, Some(tag), index);
            }
            Image::Schema1 { manifest, layers } => {
                for l in layers {
                    self.put_blob(repo, &l.digest, l.data.clone());
                }
                self.put_manifest_blob(repo, Some(tag), manifest);
            }
            Image::BadDigest { manifest, served } => {
                put_parts(manifest);
                if let Some(first) = manifest.layers.first() {
                    self.put_blob(repo, &first.blob.digest, served.clone());
                }
                self.put_manifest_blob(repo, Some(tag), &manifest.manifest);
            }
        }
    }

    /// Holds every transfer of blob `digest` after `after` bytes until the returned handle
    /// is released or dropped.
    pub fn stall_blob(&self, digest: &str, after: usize) -> Stall {
        let (tx, rx) = watch::channel(false);
        self.state().stalls.insert(digest.to_string(), (after, rx));
        Stall { release: tx }
    }

    /// How many `method` requests reached `path` (query string removed).
    pub fn requests(&self, method: &str, path: &str) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|(m, p)| m == method && p == path)
            .count()
    }

    /// How many GETs reached blob `digest` of `repo`.
    pub fn blob_fetches_in(&self, repo: &str, digest: &str) -> usize {
        self.requests("GET", &format!("/v2/{repo}/blobs/{digest}"))
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panicking connection task must not take the registry down with it.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>) {
    // Owning the connections here means aborting this task ends them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    connections.spawn(serve(stream, state.clone()));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Serves one request and closes the connection (`Connection: close` keeps this simple).
async fn serve(stream: TcpStream, state: Arc<Mutex<State>>) {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).await.is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header).await {
            Ok(0) | Err(_) => return,
            Ok(_) if header == "\r\n" || header == "\n" => break,
            Ok(_) => {}
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let uri = parts.next().unwrap_or("");
    let path = uri.split('?').next().unwrap_or("").to_string();
    let response = {
        let mut s = lock(&state);
        s.requests.push((method.clone(), path.clone()));
        route(&s, &path)
    };
    let mut stream = reader.into_inner();
    let _ = respond(&mut stream, &method, response).await;
}

struct Response {
    status: &'static str,
    content_type: String,
    digest: Option<String>,
    body: Bytes,
    stall: Option<(usize, watch::Receiver<bool>)>,
}

fn not_found(code: &str, what: &str) -> Response {
    let body =
        format!(r#"{{"errors":[{{"code":"{code}","message":"{what} unknown","detail":null}}]}}"#);
    Response {
        status: "404 Not Found",
        content_type: "application/json".into(),
        digest: None,
        body: Bytes::from(body),
        stall: None,
    }
}

fn route(state: &State, path: &str) -> Response {
    if path == "/v2/" || path == "/v2" {
        return Response {
            status: "200 OK",
            content_type: "application/json".into(),
            digest: None,
            body: Bytes::from_static(b"{}"),
            stall: None,
        };
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return not_found("NOT_FOUND", "path");
    };
    if let Some((repo, reference)) = rest.rsplit_once("/manifests/") {
        return match state
            .manifests
            .get(&(repo.to_string(), reference.to_string()))
        {
            Some((media_type, data)) => Response {
                status: "200 OK",
                content_type: media_type.clone(),
                digest: Some(sha256_digest(data)),
                body: data.clone(),
                stall: None,
            },
            None => not_found("MANIFEST_UNKNOWN", "manifest"),
        };
    }
    if let Some((repo, digest)) = rest.rsplit_once("/blobs/") {
        return match state.blobs.get(&(repo.to_string(), digest.to_string())) {
            Some(data) => Response {
                status: "200 OK",
                content_type: "application/octet-stream".into(),
                digest: Some(digest.to_string()),
                body: data.clone(),
                stall: state.stalls.get(digest).cloned(),
            },
            None => not_found("BLOB_UNKNOWN", "blob"),
        };
    }
    not_found("NOT_FOUND", "path")
}

async fn respond(stream: &mut TcpStream, method: &str, r: Response) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Docker-Distribution-API-Version: registry/2.0\r\nConnection: close\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    if let Some(d) = &r.digest {
        head.push_str(&format!("Docker-Content-Digest: {d}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        match r.stall {
            Some((after, mut release)) if after < r.body.len() => {
                stream.write_all(&r.body[..after]).await?;
                stream.flush().await?;
                // A dropped sender counts as released too.
                let _ = release.wait_for(|released| *released).await;
                stream.write_all(&r.body[after..]).await?;
            }
            _ => stream.write_all(&r.body).await?,
        }
    }
    stream.flush().await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn get(host: &str, method: &str, path: &str) -> (String, Vec<u8>) {
        let mut s = TcpStream::connect(host).await.unwrap();
        s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (
            String::from_utf8(all[..split].to_vec()).unwrap(),
            all[split + 4..].to_vec(),
        )
    }

    #[tokio::test]
    async fn serves_manifests_and_blobs_it_was_given() {
        let reg = FakeRegistry::start().await.unwrap();
        let host = reg.host();
        reg.put_manifest("r", "t", "application/x-test", Bytes::from_static(b"{}"));
        reg.put_blob(
            "r",
            "sha256:00",
            Bytes::from_static(b"not what the digest says"),
        );
        let (head, body) = get(&host, "GET", "/v2/r/manifests/t").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("Content-Type: application/x-test"));
        assert!(head.contains(&format!("Docker-Content-Digest: {}", sha256_digest(b"{}"))));
        assert_eq!(body, b"{}");
        let (head, body) = get(&host, "HEAD", "/v2/r/manifests/t").await;
        assert!(head.contains("Content-Length: 2"));
        assert!(body.is_empty());
        let (_, body) = get(&host, "GET", "/v2/r/blobs/sha256:00?ns=x").await;
        assert_eq!(body, b"not what the digest says");
        let (head, _) = get(&host, "GET", "/v2/r/blobs/sha256:11").await;
        assert!(head.starts_with("HTTP/1.1 404"));
        assert_eq!(reg.blob_fetches_in("r", "sha256:00"), 1);
    }

    #[tokio::test]
    async fn stalled_blobs_finish_after_release() {
        let reg = FakeRegistry::start().await.unwrap();
        let host = reg.host();
        reg.put_blob("r", "sha256:aa", Bytes::from_static(b"0123456789"));
        let stall = reg.stall_blob("sha256:aa", 4);
        let fetch = tokio::spawn(async move { get(&host, "GET", "/v2/r/blobs/sha256:aa").await });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!fetch.is_finished(), "the transfer must be held");
        stall.release();
        let (_, body) = fetch.await.unwrap();
        assert_eq!(body, b"0123456789");
    }
}
