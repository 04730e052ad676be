//! A minimal read-only registry (HTTP/1.1 on 127.0.0.1) for what docker-registry will not
//! serve: blobs that do not match their digest, Docker schema 1 manifests, blobs that stall
//! mid-transfer until released (for crash-during-pull tests), and bearer-token auth with its
//! own token endpoint (docker-registry's token auth needs an external token server).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};
use base64::Engine as _;
use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::images::Image;
use crate::layer::{Blob, sha256_digest};

/// The `service` a token-mode registry names in its challenges.
pub const TOKEN_SERVICE: &str = "fake-registry";
/// Largest request body the fake registry reads (token requests are small forms).
const MAX_BODY: usize = 64 << 10;

/// What the token endpoint of a token-mode registry accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenAuth {
    /// User name for Basic auth at `GET /token` and the `password` grant of `POST /token`.
    pub username: String,
    /// Its password.
    pub password: String,
    /// The one refresh token (a CRI identity token) the `refresh_token` grant accepts.
    pub refresh_token: String,
}

#[derive(Debug)]
struct Tokens {
    auth: TokenAuth,
    issued: HashSet<String>,
}

#[derive(Debug, Default)]
struct State {
    manifests: HashMap<(String, String), (String, Bytes)>,
    blobs: HashMap<(String, String), Bytes>,
    stalls: HashMap<String, (usize, watch::Receiver<bool>)>,
    requests: Vec<(String, String)>,
    tokens: Option<Tokens>,
    /// Counts issued tokens, so each one differs.
    minted: u64,
    /// Tokens the endpoint granted: (how, scope).
    grants: Vec<(Grant, String)>,
}

/// How the token endpoint was persuaded to issue a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// `GET /token` with Basic auth.
    Basic,
    /// `POST /token` with `grant_type=refresh_token`.
    RefreshToken,
    /// `POST /token` with `grant_type=password`.
    Password,
}

impl State {
    fn mint(&mut self, host: &str) -> Option<String> {
        let tokens = self.tokens.as_mut()?;
        self.minted += 1;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let digest = sha256_digest(format!("{host} {} {nanos}", self.minted).as_bytes());
        let token = format!("fake-{}", &digest["sha256:".len()..]);
        tokens.issued.insert(token.clone());
        Some(token)
    }
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
    /// Listens on a free port of 127.0.0.1 (on the current tokio runtime), anonymous.
    pub async fn start() -> Result<Self> {
        Self::start_with(None).await
    }

    /// Like [`FakeRegistry::start`], but `/v2/` and every manifest and blob request needs
    /// `Authorization: Bearer <token>` with a token from its own endpoint, `/token`:
    /// `GET /token` with Basic auth of `auth`'s user, or `POST /token` with a form
    /// `grant_type=refresh_token&refresh_token=…` (or `grant_type=password&username=…&password=…`).
    /// A request without a valid token gets 401 with
    /// `WWW-Authenticate: Bearer realm="http://<host>/token",service="fake-registry"`.
    pub async fn start_with_tokens(auth: TokenAuth) -> Result<Self> {
        Self::start_with(Some(auth)).await
    }

    async fn start_with(auth: Option<TokenAuth>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind fake registry")?;
        let addr = listener.local_addr().context("fake registry address")?;
        let state = Arc::new(Mutex::new(State {
            tokens: auth.map(|auth| Tokens {
                auth,
                issued: HashSet::new(),
            }),
            ..State::default()
        }));
        let task = tokio::spawn(accept_loop(listener, state.clone(), addr));
        Ok(Self { addr, state, task })
    }

    /// A fresh valid access token, as the token endpoint would issue; None without token mode.
    pub fn issue_token(&self) -> Option<String> {
        self.state().mint(&self.host())
    }

    /// Tokens granted for a scope naming repository `repo`, in order.
    pub fn grants_for(&self, repo: &str) -> Vec<Grant> {
        let scope = format!("repository:{repo}:");
        self.state()
            .grants
            .iter()
            .filter(|(_, s)| s.split(' ').any(|one| one.starts_with(&scope)))
            .map(|(g, _)| *g)
            .collect()
    }

    /// The token endpoint clients are sent to: `http://<host>/token`.
    pub fn token_realm(&self) -> String {
        format!("http://{}/token", self.host())
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

async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>, addr: SocketAddr) {
    // Owning the connections here means aborting this task ends them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    connections.spawn(serve(stream, state.clone(), addr));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One parsed request.
#[derive(Debug, Default)]
struct Request {
    method: String,
    path: String,
    query: String,
    /// Header names lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The credentials of `Authorization: <scheme> <credentials>` if the scheme matches.
    fn authorization(&self, scheme: &str) -> Option<&str> {
        let (s, rest) = self.header("authorization")?.trim().split_once(' ')?;
        s.eq_ignore_ascii_case(scheme).then(|| rest.trim())
    }

    /// User and password of `Authorization: Basic …`.
    fn basic(&self) -> Option<(String, String)> {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(self.authorization("Basic")?)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        Some((user.to_string(), password.to_string()))
    }
}

async fn read_request(stream: TcpStream) -> Option<(Request, TcpStream)> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).await.ok()?;
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header).await {
            Ok(0) | Err(_) => return None,
            Ok(_) if header == "\r\n" || header == "\n" => break,
            Ok(_) => {
                if let Some((name, value)) = header.split_once(':') {
                    headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
                }
            }
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let uri = parts.next().unwrap_or("");
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let mut request = Request {
        method,
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body: Vec::new(),
    };
    let length = request
        .header("content-length")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_BODY);
    request.body = vec![0; length];
    reader.read_exact(&mut request.body).await.ok()?;
    Some((request, reader.into_inner()))
}

/// Serves one request and closes the connection (`Connection: close` keeps this simple).
async fn serve(stream: TcpStream, state: Arc<Mutex<State>>, addr: SocketAddr) {
    let Some((request, mut stream)) = read_request(stream).await else {
        return;
    };
    let response = {
        let mut s = lock(&state);
        s.requests
            .push((request.method.clone(), request.path.clone()));
        handle(&mut s, &request, &addr.to_string())
    };
    let _ = respond(&mut stream, &request.method, response).await;
}

struct Response {
    status: &'static str,
    content_type: String,
    digest: Option<String>,
    /// More headers (`WWW-Authenticate`).
    headers: Vec<(&'static str, String)>,
    body: Bytes,
    stall: Option<(usize, watch::Receiver<bool>)>,
}

impl Response {
    fn json(status: &'static str, body: impl Into<Bytes>) -> Self {
        Response {
            status,
            content_type: "application/json".into(),
            digest: None,
            headers: Vec::new(),
            body: body.into(),
            stall: None,
        }
    }
}

fn not_found(code: &str, what: &str) -> Response {
    let body =
        format!(r#"{{"errors":[{{"code":"{code}","message":"{what} unknown","detail":null}}]}}"#);
    Response::json("404 Not Found", body)
}

/// The registry's 401: the challenge that sends clients to the token endpoint.
fn unauthorized(host: &str, path: &str) -> Response {
    let mut challenge = format!(r#"Bearer realm="http://{host}/token",service="{TOKEN_SERVICE}""#);
    let repo = path
        .strip_prefix("/v2/")
        .and_then(|rest| {
            rest.rsplit_once("/manifests/")
                .or_else(|| rest.rsplit_once("/blobs/"))
        })
        .map(|(repo, _)| repo);
    // Like docker-registry, name the scope a repository request needs.
    if let Some(repo) = repo {
        challenge.push_str(&format!(r#",scope="repository:{repo}:pull""#));
    }
    let mut r = Response::json(
        "401 Unauthorized",
        r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#,
    );
    r.headers.push(("WWW-Authenticate", challenge));
    r
}

/// The token endpoint's refusal (`error` as in OAuth 2, RFC 6749 §5.2).
fn token_refused(status: &'static str, error: &str, description: &str) -> Response {
    Response::json(
        status,
        format!(r#"{{"error":"{error}","error_description":"{description}"}}"#),
    )
}

/// Parses an `application/x-www-form-urlencoded` body.
fn parse_form(body: &[u8]) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// `/token`: Basic auth on GET, the `refresh_token` or `password` grant on POST.
fn token_endpoint(state: &mut State, request: &Request, host: &str) -> Response {
    let Some(tokens) = &state.tokens else {
        return not_found("NOT_FOUND", "path");
    };
    let auth = &tokens.auth;
    let query = parse_form(request.query.as_bytes());
    let form = parse_form(&request.body);
    let granted = match request.method.as_str() {
        "GET" => match request.basic() {
            Some((u, p)) if u == auth.username && p == auth.password => Ok(Grant::Basic),
            Some(_) => Err(token_refused(
                "401 Unauthorized",
                "invalid_client",
                "wrong user name or password",
            )),
            None => Err(token_refused(
                "401 Unauthorized",
                "invalid_client",
                "anonymous access is not allowed",
            )),
        },
        "POST" => {
            let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
            match field("grant_type") {
                "refresh_token" if field("refresh_token") == auth.refresh_token => {
                    Ok(Grant::RefreshToken)
                }
                "refresh_token" => Err(token_refused(
                    "401 Unauthorized",
                    "invalid_grant",
                    "unknown refresh token",
                )),
                "password"
                    if field("username") == auth.username && field("password") == auth.password =>
                {
                    Ok(Grant::Password)
                }
                "password" => Err(token_refused(
                    "401 Unauthorized",
                    "invalid_grant",
                    "wrong user name or password",
                )),
                _ => Err(token_refused(
                    "400 Bad Request",
                    "unsupported_grant_type",
                    "grant_type must be refresh_token or password",
                )),
            }
        }
        _ => Err(token_refused(
            "405 Method Not Allowed",
            "invalid_request",
            "use GET or POST",
        )),
    };
    let grant = match granted {
        Ok(grant) => grant,
        Err(refused) => return refused,
    };
    // GET carries the scope in the query, POST in the form.
    let scope = query
        .get("scope")
        .or_else(|| form.get("scope"))
        .cloned()
        .unwrap_or_default();
    let Some(token) = state.mint(host) else {
        return not_found("NOT_FOUND", "path");
    };
    state.grants.push((grant, scope));
    Response::json(
        "200 OK",
        format!(
            r#"{{"token":"{token}","access_token":"{token}","expires_in":300,"issued_at":"2020-09-13T12:26:40Z"}}"#
        ),
    )
}

fn handle(state: &mut State, request: &Request, host: &str) -> Response {
    if request.path == "/token" {
        return token_endpoint(state, request, host);
    }
    if let Some(tokens) = &state.tokens {
        let valid = request
            .authorization("Bearer")
            .is_some_and(|t| tokens.issued.contains(t));
        if !valid {
            return unauthorized(host, &request.path);
        }
    }
    route(state, &request.path)
}

fn route(state: &State, path: &str) -> Response {
    if path == "/v2/" || path == "/v2" {
        return Response::json("200 OK", Bytes::from_static(b"{}"));
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
                headers: Vec::new(),
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
                headers: Vec::new(),
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
    for (name, value) in &r.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
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
        send(host, method, path, &[], b"").await
    }

    async fn send(
        host: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (String, Vec<u8>) {
        let mut s = TcpStream::connect(host).await.unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
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

    fn token_auth() -> TokenAuth {
        TokenAuth {
            username: "alice".into(),
            password: "pw".into(),
            refresh_token: "refresh-me".into(),
        }
    }

    fn access_token(body: &[u8]) -> String {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["token"], v["access_token"]);
        v["access_token"].as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn token_mode_demands_a_bearer_token_from_its_endpoint() {
        let reg = FakeRegistry::start_with_tokens(token_auth()).await.unwrap();
        let host = reg.host();
        reg.put_manifest("r/s", "t", "application/x-test", Bytes::from_static(b"{}"));
        for path in ["/v2/", "/v2/r/s/manifests/t", "/v2/r/s/blobs/sha256:00"] {
            let (head, _) = get(&host, "GET", path).await;
            assert!(head.starts_with("HTTP/1.1 401"), "{path}: {head}");
            assert!(
                head.contains(&format!(
                    r#"WWW-Authenticate: Bearer realm="http://{host}/token",service="fake-registry""#
                )),
                "{head}"
            );
        }
        let (head, _) = get(&host, "GET", "/v2/r/s/manifests/t").await;
        assert!(head.contains(r#"scope="repository:r/s:pull""#), "{head}");

        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:pw")
        );
        let (head, body) = send(
            &host,
            "GET",
            "/token?service=x&scope=repository%3Ar%2Fs%3Apull",
            &[("Authorization", &basic)],
            b"",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let token = access_token(&body);
        let bearer = format!("Bearer {token}");
        let (head, body) = send(
            &host,
            "GET",
            "/v2/r/s/manifests/t",
            &[("Authorization", &bearer)],
            b"",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, b"{}");
        let (head, _) = send(
            &host,
            "GET",
            "/v2/",
            &[("Authorization", "Bearer made-up")],
            b"",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 401"), "{head}");

        let wrong = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:nope")
        );
        for headers in [vec![], vec![("Authorization", wrong.as_str())]] {
            let (head, _) = send(&host, "GET", "/token", &headers, b"").await;
            assert!(head.starts_with("HTTP/1.1 401"), "{head}");
        }

        let form = b"grant_type=refresh_token&refresh_token=refresh%2Dme&service=fake-registry\
                     &scope=repository%3Aq%3Apull";
        let (head, body) = send(&host, "POST", "/token", &[], form).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let refreshed = access_token(&body);
        assert_ne!(refreshed, token, "every token is new");
        let (head, _) = send(
            &host,
            "GET",
            "/v2/",
            &[("Authorization", &format!("Bearer {refreshed}"))],
            b"",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let (head, _) = send(
            &host,
            "POST",
            "/token",
            &[],
            b"grant_type=refresh_token&refresh_token=stolen",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 401"), "{head}");
        let (head, _) = send(
            &host,
            "POST",
            "/token",
            &[],
            b"grant_type=password&username=alice&password=pw",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let (head, _) = send(&host, "POST", "/token", &[], b"grant_type=magic").await;
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        assert_eq!(reg.grants_for("r/s"), vec![Grant::Basic]);
        assert_eq!(reg.grants_for("r"), vec![]);
        assert_eq!(reg.grants_for("q"), vec![Grant::RefreshToken]);

        let minted = reg.issue_token().unwrap();
        let (head, _) = send(
            &host,
            "GET",
            "/v2/",
            &[("Authorization", &format!("Bearer {minted}"))],
            b"",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(reg.token_realm(), format!("http://{host}/token"));
    }

    #[tokio::test]
    async fn anonymous_mode_has_no_token_endpoint() {
        let reg = FakeRegistry::start().await.unwrap();
        assert!(reg.issue_token().is_none());
        let (head, _) = get(&reg.host(), "GET", "/token").await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        let (head, _) = get(&reg.host(), "GET", "/v2/").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }

    #[test]
    fn forms_are_decoded() {
        let form = parse_form(b"a=x%20y&b=1+2&c=%zz&d&e=%C3%A9");
        assert_eq!(form["a"], "x y");
        assert_eq!(form["b"], "1 2");
        assert_eq!(form["c"], "%zz");
        assert_eq!(form["d"], "");
        assert_eq!(form["e"], "é");
    }
}
