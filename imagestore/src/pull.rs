//! Pulling an image: resolve the reference to a platform manifest, fetch the config and the
//! layers (bounded concurrency, each layer streamed into the content store and unpacked into its
//! snapshot at the same time), verify every digest, then record the image.

use std::io::{Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::compression::{self, Compression};
use crate::content::ContentStore;
use crate::metadata::SnapshotRecord;
use crate::platform::Platform;
use crate::reference::Reference;
use crate::registry::{Auth, Credentials, Endpoint};
use crate::store::{ImageRecord, Inner};
use crate::unpack;
use crate::{Error, Result};

pub(crate) const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MT_DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const MT_DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

const ACCEPT: &[&str] = &[
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    MT_DOCKER_LIST,
    MT_DOCKER_MANIFEST,
    MT_DOCKER_SCHEMA1_SIGNED,
    MT_DOCKER_SCHEMA1,
];

/// Largest manifest or config we accept; real ones are a few KiB.
const MAX_SMALL_BLOB: u64 = 8 << 20;

/// A layer to fetch.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    digest: String,
    size: u64,
    media_type: String,
    diff_id: String,
    pub(crate) chain_id: String,
    pub(crate) parent: Option<String>,
}

/// What the registry told us about the image, before layers are fetched.
struct Resolved {
    endpoint: Endpoint,
    client: oci_client::Client,
    oref: oci_client::Reference,
    top_digest: String,
    index_digest: Option<String>,
    manifest_digest: String,
    blobs: Vec<(String, Vec<u8>)>,
    config_digest: String,
    config: Value,
    layers: Vec<Layer>,
    size: u64,
    annotations: std::collections::BTreeMap<String, String>,
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Chain IDs per the OCI image spec: `chain(n) = sha256(chain(n-1) + " " + diff(n))`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

fn map_oci(reference: &str, e: OciDistributionError) -> Error {
    match e {
        OciDistributionError::UnauthorizedError { url } => Error::Unauthorized {
            reference: reference.to_string(),
            message: format!("the registry refused the credentials for {url}"),
        },
        OciDistributionError::AuthenticationFailure(m) => Error::Unauthorized {
            reference: reference.to_string(),
            message: m,
        },
        OciDistributionError::ImageManifestNotFoundError(m) => Error::RemoteNotFound {
            reference: reference.to_string(),
            message: m,
        },
        OciDistributionError::RegistryError { envelope, url } => {
            let not_found = envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            });
            let denied = envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied));
            let message = format!("{envelope} ({url})");
            if not_found {
                Error::RemoteNotFound {
                    reference: reference.to_string(),
                    message,
                }
            } else if denied {
                Error::Unauthorized {
                    reference: reference.to_string(),
                    message,
                }
            } else {
                Error::Registry {
                    reference: reference.to_string(),
                    message,
                }
            }
        }
        OciDistributionError::ServerError {
            code: 404,
            url,
            message,
        } => Error::RemoteNotFound {
            reference: reference.to_string(),
            message: format!("{url}: {message}"),
        },
        OciDistributionError::ServerError {
            code: 401 | 403,
            url,
            message,
        } => Error::Unauthorized {
            reference: reference.to_string(),
            message: format!("{url}: {message}"),
        },
        other => Error::Registry {
            reference: reference.to_string(),
            message: other.to_string(),
        },
    }
}

fn client_for(endpoint: &Endpoint, max_downloads: usize) -> oci_client::Client {
    oci_client::Client::new(ClientConfig {
        protocol: if endpoint.plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        accept_invalid_certificates: endpoint.insecure,
        max_concurrent_download: max_downloads.max(1),
        user_agent: concat!("bungeo/", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    })
}

fn oci_reference(r: &Reference, endpoint: &Endpoint) -> oci_client::Reference {
    let mut o = match (r.tag(), r.digest()) {
        (_, Some(d)) => oci_client::Reference::with_digest(
            r.domain().to_string(),
            r.path().to_string(),
            d.to_string(),
        ),
        (Some(t), None) => oci_client::Reference::with_tag(
            r.domain().to_string(),
            r.path().to_string(),
            t.to_string(),
        ),
        (None, None) => oci_client::Reference::with_tag(
            r.domain().to_string(),
            r.path().to_string(),
            "latest".into(),
        ),
    };
    if endpoint.mirror {
        o.set_mirror_registry(endpoint.host.clone());
    }
    o
}

fn media_type_of(v: &Value, fallback: Option<&str>) -> String {
    v.get("mediaType")
        .and_then(Value::as_str)
        .or(fallback)
        .unwrap_or("")
        .to_string()
}

fn unsupported(reference: &str, message: impl Into<String>) -> Error {
    Error::UnsupportedManifest {
        reference: reference.to_string(),
        message: message.into(),
    }
}

fn parse_json(reference: &str, what: &str, bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes)
        .map_err(|e| unsupported(reference, format!("{what} is not valid JSON: {e}")))
}

fn descriptor(reference: &str, v: &Value, what: &str) -> Result<(String, u64, String)> {
    let digest = v
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| unsupported(reference, format!("{what} descriptor has no digest")))?;
    ContentStore::parse_digest(digest)?;
    let size = v.get("size").and_then(Value::as_u64).unwrap_or(0);
    let mt = v
        .get("mediaType")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    Ok((digest.to_string(), size, mt))
}

/// Exchanges an OAuth2 refresh token for a bearer token, as containerd does for identity tokens.
async fn exchange_identity_token(
    endpoint: &Endpoint,
    repository: &str,
    username: &str,
    token: &str,
    reference: &str,
) -> Result<String> {
    let scheme = if endpoint.plain_http { "http" } else { "https" };
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(endpoint.insecure)
        .build()
        .map_err(|e| Error::Registry {
            reference: reference.into(),
            message: format!("http client: {e}"),
        })?;
    let reg_err = |m: String| Error::Registry {
        reference: reference.into(),
        message: m,
    };
    let res = http
        .get(format!("{scheme}://{}/v2/", endpoint.host))
        .send()
        .await
        .map_err(|e| reg_err(format!("contacting {}: {e}", endpoint.host)))?;
    let challenge = res
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let Some(challenge) = challenge.filter(|c| c.to_ascii_lowercase().starts_with("bearer")) else {
        return Err(Error::Unauthorized {
            reference: reference.into(),
            message: format!(
                "{} does not ask for bearer tokens, so an identity token cannot be used",
                endpoint.host
            ),
        });
    };
    let params = parse_challenge(&challenge);
    let realm = params
        .iter()
        .find(|(k, _)| k == "realm")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| reg_err(format!("bearer challenge without realm: {challenge}")))?;
    let service = params
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let scope = format!("repository:{repository}:pull");
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", token),
        ("client_id", "bungeo"),
        ("scope", scope.as_str()),
    ];
    if !service.is_empty() {
        form.push(("service", service.as_str()));
    }
    if !username.is_empty() {
        form.push(("username", username));
    }
    let body = form
        .iter()
        .map(|(k, v)| format!("{k}={}", form_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let res = http
        .post(&realm)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body)
        .send()
        .await
        .map_err(|e| reg_err(format!("token endpoint {realm}: {e}")))?;
    let status = res.status();
    let text = res
        .text()
        .await
        .map_err(|e| reg_err(format!("token endpoint {realm}: {e}")))?;
    if !status.is_success() {
        return Err(Error::Unauthorized {
            reference: reference.into(),
            message: format!("token endpoint {realm} answered {status}: {}", text.trim()),
        });
    }
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| reg_err(format!("token endpoint {realm}: bad JSON: {e}")))?;
    v.get("access_token")
        .or_else(|| v.get("token"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| reg_err(format!("token endpoint {realm} returned no access_token")))
}

fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Parses `Bearer realm="...",service="..."` into key/value pairs.
fn parse_challenge(h: &str) -> Vec<(String, String)> {
    let rest = h.split_once(' ').map(|(_, r)| r).unwrap_or("");
    let mut out = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            val.push(n)
                        }
                    }
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                val.push(c);
                chars.next();
            }
        }
        out.push((key.trim().to_ascii_lowercase(), val));
    }
    out
}

async fn registry_auth(
    auth: &Auth,
    endpoint: &Endpoint,
    r: &Reference,
    name: &str,
) -> Result<RegistryAuth> {
    Ok(match auth {
        Auth::Anonymous => RegistryAuth::Anonymous,
        Auth::Basic(u, p) => RegistryAuth::Basic(u.clone(), p.clone()),
        Auth::Bearer(t) => RegistryAuth::Bearer(t.clone()),
        Auth::IdentityToken { username, token } => RegistryAuth::Bearer(
            exchange_identity_token(endpoint, r.path(), username, token, name).await?,
        ),
    })
}

async fn fetch_small(
    client: &oci_client::Client,
    oref: &oci_client::Reference,
    digest: &str,
    size: u64,
    name: &str,
) -> Result<Vec<u8>> {
    if size > MAX_SMALL_BLOB {
        return Err(unsupported(
            name,
            format!("blob {digest} is {size} bytes, more than a config may be"),
        ));
    }
    let mut stream = client
        .pull_blob_stream(oref, digest)
        .await
        .map_err(|e| map_oci(name, e))?;
    let mut buf = Vec::with_capacity(size as usize);
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => {
                buf.extend_from_slice(&c);
                if buf.len() as u64 > MAX_SMALL_BLOB {
                    return Err(unsupported(
                        name,
                        format!("blob {digest} is larger than its descriptor says"),
                    ));
                }
            }
            // The client's own verification fails at the end of the stream: ours names it better.
            Err(e) if buf.len() as u64 == size => {
                debug!(error = %e, "blob stream error after all bytes");
                break;
            }
            Err(e) => {
                return Err(Error::Registry {
                    reference: name.to_string(),
                    message: format!("fetching {digest}: {e}"),
                });
            }
        }
    }
    let actual = sha256_digest(&buf);
    if actual != digest {
        return Err(Error::DigestMismatch {
            expected: digest.to_string(),
            actual,
        });
    }
    if size != 0 && buf.len() as u64 != size {
        return Err(Error::SizeMismatch {
            digest: digest.to_string(),
            expected: size,
            actual: buf.len() as u64,
        });
    }
    Ok(buf)
}

async fn resolve_at(
    inner: &Inner,
    r: &Reference,
    name: &str,
    endpoint: &Endpoint,
    auth: &Auth,
) -> Result<Resolved> {
    let client = client_for(endpoint, inner.config.max_concurrent_downloads);
    let oref = oci_reference(r, endpoint);
    let rauth = registry_auth(auth, endpoint, r, name).await?;
    let (top, top_digest) = client
        .pull_manifest_raw(&oref, &rauth, ACCEPT)
        .await
        .map_err(|e| match (map_oci(name, e), auth) {
            // oci-client drops the token endpoint's refusal and retries anonymously: say what
            // actually happened rather than blame credentials that were never sent.
            (Error::Unauthorized { reference, .. }, Auth::Anonymous) => Error::Unauthorized {
                reference,
                message: format!(
                    "{} asks for credentials and the pull has no credentials (none in the request's AuthConfig, none configured for this host in [registries.hosts])",
                    endpoint.host
                ),
            },
            (e, _) => e,
        })?;
    let actual = sha256_digest(&top);
    if let Some(want) = r.digest()
        && want != actual
    {
        return Err(Error::DigestMismatch {
            expected: want.to_string(),
            actual,
        });
    }
    if top_digest != actual {
        debug!(header = %top_digest, %actual, "registry digest header differs from the content hash; using the hash");
    }
    let top_digest = actual;
    let top_json = parse_json(name, "manifest", &top)?;
    let mut blobs = vec![(top_digest.clone(), top.to_vec())];
    let mut size = top.len() as u64;
    let (manifest_json, manifest_digest, index_digest) = if classify_top(name, &top_json)? {
        let (mdigest, msize) = choose_manifest(name, &top_json, &Platform::host())?;
        let mref = oref.clone_with_digest(mdigest.clone());
        let (mbytes, _) = client
            .pull_manifest_raw(&mref, &rauth, ACCEPT)
            .await
            .map_err(|e| map_oci(name, e))?;
        let actual = sha256_digest(&mbytes);
        if actual != mdigest {
            return Err(Error::DigestMismatch {
                expected: mdigest,
                actual,
            });
        }
        if msize != 0 && msize != mbytes.len() as u64 {
            return Err(Error::SizeMismatch {
                digest: mdigest,
                expected: msize,
                actual: mbytes.len() as u64,
            });
        }
        size += mbytes.len() as u64;
        blobs.push((mdigest.clone(), mbytes.to_vec()));
        (
            parse_json(name, "manifest", &mbytes)?,
            mdigest,
            Some(top_digest.clone()),
        )
    } else {
        (top_json, top_digest.clone(), None)
    };
    let (config_digest, config_size) = config_descriptor(name, &manifest_json)?;
    let config_bytes = fetch_small(&client, &oref, &config_digest, config_size, name).await?;
    size += config_bytes.len() as u64;
    let config = parse_json(name, "image config", &config_bytes)?;
    blobs.push((config_digest.clone(), config_bytes));
    let (layers, layers_size, annotations) = layers_of(name, &manifest_json, &config)?;
    Ok(Resolved {
        endpoint: endpoint.clone(),
        client,
        oref,
        top_digest,
        index_digest,
        manifest_digest,
        blobs,
        config_digest,
        config,
        layers,
        size: size.saturating_add(layers_size),
        annotations,
    })
}

/// Whether a top-level manifest is an image index (true) or an image manifest (false);
/// schema 1 and unknown media types are refused.
pub(crate) fn classify_top(name: &str, top: &Value) -> Result<bool> {
    let schema = top
        .get("schemaVersion")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let mt = media_type_of(top, None);
    if schema == 1 || mt == MT_DOCKER_SCHEMA1 || mt == MT_DOCKER_SCHEMA1_SIGNED {
        return Err(unsupported(
            name,
            "Docker image manifest schema 1 is deprecated and not supported; re-push the image with a current tool so it has a schema 2 or OCI manifest",
        ));
    }
    if mt == MT_OCI_INDEX
        || mt == MT_DOCKER_LIST
        || (mt.is_empty() && top.get("manifests").is_some())
    {
        return Ok(true);
    }
    if mt.is_empty() || mt == MT_OCI_MANIFEST || mt == MT_DOCKER_MANIFEST {
        return Ok(false);
    }
    Err(unsupported(
        name,
        format!("unsupported manifest media type {mt:?}"),
    ))
}

/// The (digest, size) of the manifest an index lists for `host`.
pub(crate) fn choose_manifest(name: &str, index: &Value, host: &Platform) -> Result<(String, u64)> {
    let entries = index
        .get("manifests")
        .and_then(Value::as_array)
        .ok_or_else(|| unsupported(name, "image index has no manifests"))?;
    let candidates = entries.iter().enumerate().filter_map(|(i, m)| {
        let p = m.get("platform")?;
        Some((
            i,
            p.get("os").and_then(Value::as_str).unwrap_or(""),
            p.get("architecture").and_then(Value::as_str).unwrap_or(""),
            p.get("variant").and_then(Value::as_str),
        ))
    });
    let chosen = host
        .best_match(candidates)
        .ok_or_else(|| Error::NoMatchingPlatform {
            reference: name.to_string(),
            platform: host.to_string(),
        })?;
    let (digest, size, _) = descriptor(name, &entries[chosen], "manifest")?;
    Ok((digest, size))
}

/// The (digest, size) of an image manifest's config; a nested index is refused.
pub(crate) fn config_descriptor(name: &str, manifest: &Value) -> Result<(String, u64)> {
    let mmt = media_type_of(manifest, None);
    if mmt == MT_OCI_INDEX || mmt == MT_DOCKER_LIST || manifest.get("manifests").is_some() {
        return Err(unsupported(name, "nested image indexes are not supported"));
    }
    let cfg_desc = manifest
        .get("config")
        .ok_or_else(|| unsupported(name, "manifest has no config"))?;
    let (digest, size, _) = descriptor(name, cfg_desc, "config")?;
    Ok((digest, size))
}

/// The layers of an image manifest matched with its config's diff IDs, the sum of their
/// sizes, and the manifest's annotations.
#[allow(clippy::type_complexity)]
pub(crate) fn layers_of(
    name: &str,
    manifest_json: &Value,
    config: &Value,
) -> Result<(Vec<Layer>, u64, std::collections::BTreeMap<String, String>)> {
    let diff_ids: Vec<String> = config
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for d in &diff_ids {
        ContentStore::parse_digest(d)?;
    }
    let layer_descs = manifest_json
        .get("layers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if layer_descs.len() != diff_ids.len() {
        return Err(unsupported(
            name,
            format!(
                "manifest lists {} layers but the config has {} diff_ids",
                layer_descs.len(),
                diff_ids.len()
            ),
        ));
    }
    let chains = chain_ids(&diff_ids);
    let mut layers = Vec::with_capacity(layer_descs.len());
    // Sizes come from the registry: a hostile manifest can make their sum overflow.
    let mut size = 0u64;
    for (i, l) in layer_descs.iter().enumerate() {
        let (digest, lsize, media_type) = descriptor(name, l, "layer")?;
        size = size.saturating_add(lsize);
        layers.push(Layer {
            digest,
            size: lsize,
            media_type,
            diff_id: diff_ids[i].clone(),
            chain_id: chains[i].clone(),
            parent: i.checked_sub(1).map(|p| chains[p].clone()),
        });
    }
    let annotations = manifest_json
        .get("annotations")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Ok((layers, size, annotations))
}

/// A `Read` over chunks arriving on a channel from the download task.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// The unpack side of a layer download: its chunk sender, its task, and its snapshot number.
type Unpacker = (
    tokio::sync::mpsc::Sender<Bytes>,
    tokio::task::JoinHandle<Result<(unpack::LayerStats, String)>>,
    u64,
);

/// Hashes what passes through, to check the uncompressed layer against its diff_id.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn compression_for(layer: &Layer, first: &[u8]) -> Compression {
    compression::from_media_type(&layer.media_type).unwrap_or_else(|| compression::detect(first))
}

/// Downloads one layer into the content store and, unless its snapshot exists already, unpacks
/// it into a new snapshot while it streams.
async fn fetch_layer(inner: &Arc<Inner>, res: &Resolved, layer: &Layer, name: &str) -> Result<()> {
    let _lock = inner.layer_locks.lock(&layer.chain_id).await;
    let have_snapshot = inner.meta.snapshot(&layer.chain_id)?.is_some();
    let have_blob = inner.content.contains(&layer.digest);
    if have_snapshot && have_blob {
        debug!(layer = %layer.digest, "layer present");
        return Ok(());
    }
    let mut stream = res
        .client
        .pull_blob_stream(&res.oref, layer.digest.as_str())
        .await
        .map_err(|e| map_oci(name, e))?;

    let (btx, mut brx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let content = inner.content.clone();
    let (digest, size) = (layer.digest.clone(), layer.size);
    let writer = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut w = content.writer(&digest, Some(size))?;
        while let Some(b) = brx.blocking_recv() {
            w.write_all(&b)
                .map_err(|e| Error::io("write", "content ingest", e))?;
        }
        Ok(w)
    });

    let mut unpacker: Option<Unpacker> = None;
    let mut stream_error = None;
    let mut received = 0u64;
    let mut first = true;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                stream_error = Some(e);
                break;
            }
        };
        received += chunk.len() as u64;
        if first && !have_snapshot {
            first = false;
            let comp = compression_for(layer, &chunk);
            let number = inner.meta.next_snapshot_number()?;
            let dir = inner.snapshots.prepare(number)?;
            let (utx, urx) = tokio::sync::mpsc::channel::<Bytes>(64);
            let ldigest = layer.digest.clone();
            let task =
                tokio::task::spawn_blocking(move || -> Result<(unpack::LayerStats, String)> {
                    let reader = ChannelReader {
                        rx: urx,
                        current: Bytes::new(),
                    };
                    let decompressed = compression::reader(reader, comp)?;
                    let mut hashed = HashingReader {
                        inner: decompressed,
                        hasher: Sha256::new(),
                    };
                    let stats = unpack::apply_layer(&mut hashed, &dir, &ldigest)?;
                    // The tar end marker may leave padding unread; the diff_id covers all of it.
                    std::io::copy(&mut hashed, &mut std::io::sink()).map_err(|e| Error::Layer {
                        digest: ldigest.clone(),
                        message: format!("reading layer: {e}"),
                    })?;
                    Ok((
                        stats,
                        format!("sha256:{}", hex::encode(hashed.hasher.finalize())),
                    ))
                });
            unpacker = Some((utx, task, number));
        }
        if btx.send(chunk.clone()).await.is_err() {
            break;
        }
        if let Some((utx, _, _)) = &unpacker
            && utx.send(chunk).await.is_err()
        {
            // The unpacker stopped early; its own error is reported below.
            break;
        }
    }
    drop(btx);
    if !have_snapshot && unpacker.is_none() && stream_error.is_none() {
        return Err(Error::Layer {
            digest: layer.digest.clone(),
            message: "the registry sent an empty layer blob".into(),
        });
    }
    let unpack_result = match unpacker {
        Some((utx, task, number)) => {
            drop(utx);
            let r = task.await.map_err(|e| Error::Layer {
                digest: layer.digest.clone(),
                message: format!("unpack task failed: {e}"),
            });
            Some((r.and_then(|r| r), number))
        }
        None => None,
    };
    let cleanup = |number: Option<u64>| {
        if let Some(n) = number
            && let Err(e) = inner
                .snapshots
                .trash(n)
                .and_then(|_| inner.snapshots.empty_trash())
        {
            warn!(error = %e, "removing failed snapshot");
        }
    };
    let number = unpack_result.as_ref().map(|(_, n)| *n);
    let w = match writer.await {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => {
            cleanup(number);
            return Err(e);
        }
        Err(e) => {
            cleanup(number);
            return Err(Error::Layer {
                digest: layer.digest.clone(),
                message: format!("content writer failed: {e}"),
            });
        }
    };
    if let Some(e) = stream_error
        && received != layer.size
    {
        cleanup(number);
        return Err(Error::Registry {
            reference: name.to_string(),
            message: format!("downloading layer {}: {e}", layer.digest),
        });
    }
    // Size and digest are checked here: a mismatch commits nothing.
    let commit = tokio::task::spawn_blocking(move || w.commit()).await;
    match commit {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            cleanup(number);
            return Err(e);
        }
        Err(e) => {
            cleanup(number);
            return Err(Error::Layer {
                digest: layer.digest.clone(),
                message: format!("commit failed: {e}"),
            });
        }
    }
    if let Some((result, number)) = unpack_result {
        let (stats, diff_id) = match result {
            Ok(v) => v,
            Err(e) => {
                cleanup(Some(number));
                return Err(e);
            }
        };
        if diff_id != layer.diff_id {
            cleanup(Some(number));
            return Err(Error::DigestMismatch {
                expected: layer.diff_id.clone(),
                actual: diff_id,
            });
        }
        inner.meta.put_snapshot(
            &layer.chain_id,
            &SnapshotRecord {
                number,
                parent: layer.parent.clone(),
                diff_id,
                bytes: stats.bytes,
                inodes: stats.inodes,
            },
        )?;
        debug!(layer = %layer.digest, snapshot = number, "layer unpacked");
    }
    Ok(())
}

/// Pulls `name` and records the image. Called with the reference's pull lock held.
pub(crate) async fn pull(
    inner: &Arc<Inner>,
    r: &Reference,
    credentials: Option<&Credentials>,
) -> Result<ImageRecord> {
    let name = r.to_string();
    let auth = Auth::resolve(
        credentials,
        inner.config.registries.host(r.domain()),
        r.domain(),
    )?;
    let endpoints = inner.config.registries.endpoints(r.domain());
    let mut last_err = None;
    let mut resolved = None;
    for (i, ep) in endpoints.iter().enumerate() {
        // Mirrors get no credentials meant for the upstream registry unless configured for them.
        let ep_auth = if ep.mirror {
            Auth::resolve(None, inner.config.registries.host(&ep.host), &ep.host)?
        } else {
            auth.clone()
        };
        match resolve_at(inner, r, &name, ep, &ep_auth).await {
            Ok(res) => {
                resolved = Some(res);
                break;
            }
            // The registry answered over HTTPS (no such image, no access): the plain-HTTP
            // fallback would only hide that answer.
            Err(e @ (Error::RemoteNotFound { .. } | Error::Unauthorized { .. }))
                if endpoints.get(i + 1).is_some_and(|n| n.http_fallback) =>
            {
                last_err = Some(e);
                break;
            }
            Err(e) if i + 1 < endpoints.len() => {
                warn!(endpoint = %ep.host, error = %e, "endpoint failed, trying the next one");
                last_err = Some(e);
            }
            Err(e) => {
                last_err = Some(e);
            }
        }
    }
    let Some(res) = resolved else {
        return Err(
            last_err.unwrap_or_else(|| Error::Config(format!("no endpoint for {}", r.domain())))
        );
    };
    info!(image = %name, endpoint = %res.endpoint.host, manifest = %res.manifest_digest, layers = res.layers.len(), "pulling");

    let mut keys: Vec<String> = res.blobs.iter().map(|(d, _)| d.clone()).collect();
    keys.extend(
        res.layers
            .iter()
            .flat_map(|l| [l.digest.clone(), l.chain_id.clone()]),
    );
    let _lease = inner.lease(keys);

    for (digest, bytes) in &res.blobs {
        if !inner.content.contains(digest) {
            let content = inner.content.clone();
            let (d, b) = (digest.clone(), bytes.clone());
            tokio::task::spawn_blocking(move || content.write_all(&d, &b))
                .await
                .map_err(|e| Error::Database(format!("content write task: {e}")))??;
        }
    }
    let limit = inner.config.max_concurrent_downloads.max(1);
    // Collected first: a lazily mapped iterator makes the future non-`Send` for rustc.
    let fetches: Vec<_> = res
        .layers
        .iter()
        .map(|l| fetch_layer(inner, &res, l, &name))
        .collect();
    futures_util::stream::iter(fetches)
        .buffer_unordered(limit)
        .try_collect::<Vec<()>>()
        .await?;

    let mut blobs: Vec<String> = res.blobs.iter().map(|(d, _)| d.clone()).collect();
    blobs.extend(res.layers.iter().map(|l| l.digest.clone()));
    let record = ImageRecord {
        id: res.config_digest.clone(),
        repo_tags: Vec::new(),
        repo_digests: Vec::new(),
        manifest_digest: res.manifest_digest.clone(),
        index_digest: res.index_digest.clone(),
        size: res.size,
        chain_ids: res.layers.iter().map(|l| l.chain_id.clone()).collect(),
        layer_digests: res.layers.iter().map(|l| l.digest.clone()).collect(),
        blobs,
        config: res.config.clone(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        annotations: res.annotations.clone(),
    };
    let mut names = Vec::new();
    // `name:tag@digest` pins the digest: like containerd and docker, the tag is not recorded.
    if r.digest().is_none()
        && let Some(t) = r.tagged()
    {
        names.push(t);
    }
    names.push(r.digested(&res.top_digest));
    let (stored, removed) = inner.meta.commit_image(record, &names)?;
    if !removed.is_empty() {
        debug!(?removed, "images lost their last name");
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_spec() {
        let d = vec!["sha256:a".to_string(), "sha256:b".to_string()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "sha256:a");
        assert_eq!(c[1], sha256_digest(b"sha256:a sha256:b"));
    }

    #[test]
    fn challenge_parsing() {
        let p = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="a:b:pull""#,
        );
        assert_eq!(p[0], ("realm".into(), "https://auth.example/token".into()));
        assert_eq!(p[1], ("service".into(), "registry.example".into()));
        assert_eq!(p[2], ("scope".into(), "a:b:pull".into()));
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("a b/c=d"), "a%20b%2Fc%3Dd");
    }
}
