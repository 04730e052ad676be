//! The test images, built from Debian's static busybox with reproducible bytes, and their
//! push to a registry.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde_json::{Value, json};

use crate::layer::{Blob, Compression, Flavor, Layer, LayerTree, SeededBytes};

/// Media type of an OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of an OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of a Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Media type of a Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Media type of a Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Media type of a signed Docker schema 1 manifest.
pub const SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// `PATH` in every image config.
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// `created` of every config and history entry (the layer mtime, as RFC 3339).
pub const CREATED: &str = "2020-09-13T12:26:40Z";

/// Applets linked to `/bin/busybox` in the base layer (real symlinks).
pub const APPLETS: &[&str] = &[
    "cat", "chmod", "chown", "cp", "date", "dd", "df", "echo", "env", "false", "find", "grep",
    "head", "hostname", "id", "kill", "ln", "ls", "mkdir", "mount", "mv", "nc", "ping", "printf",
    "ps", "pwd", "readlink", "rm", "sed", "sh", "sleep", "sort", "stat", "sync", "tail", "tee",
    "test", "top", "touch", "tr", "true", "uname", "wc", "wget", "whoami", "xargs",
];

/// `/etc/passwd` of the base layer: root, `app` (1000:1000) and nobody.
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
app:x:1000:1000:app:/home/app:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
/// `/etc/group` of the base layer.
pub const GROUP: &str = "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n";

/// A repository and tag in a test registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageName {
    /// Repository path, e.g. `busybox`.
    pub repo: &'static str,
    /// Tag.
    pub tag: &'static str,
}

impl ImageName {
    const fn new(repo: &'static str, tag: &'static str) -> Self {
        Self { repo, tag }
    }

    /// `host/repo:tag`.
    pub fn at(&self, host: &str) -> String {
        format!("{host}/{}:{}", self.repo, self.tag)
    }

    /// `host/repo`, the name part of references and repo digests.
    pub fn name_at(&self, host: &str) -> String {
        format!("{host}/{}", self.repo)
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.repo, self.tag)
    }
}

/// Four layers: busybox base; files; a whiteout of `/data/remove-me.txt`; `/opaque` made opaque.
pub const LAYERS: ImageName = ImageName::new("busybox", "layers");
/// The base and files layers of [`LAYERS`] plus one new layer.
pub const SHARED: ImageName = ImageName::new("busybox", "shared");
/// The base as a zstd layer plus a small zstd layer.
pub const ZSTD: ImageName = ImageName::new("busybox", "zstd");
/// An OCI index for linux/amd64, linux/arm64/v8 and linux/arm/v7; `/platform` names each.
pub const MULTIARCH: ImageName = ImageName::new("busybox", "multiarch");
/// A Docker manifest list of Docker schema 2 manifests; `/platform` names each.
pub const DOCKERLIST: ImageName = ImageName::new("busybox", "dockerlist");
/// `USER 1000`.
pub const USER_UID: ImageName = ImageName::new("busybox", "user-uid");
/// `USER app`.
pub const USER_NAME: ImageName = ImageName::new("busybox", "user-name");
/// `USER app:app`.
pub const USER_NAME_GROUP: ImageName = ImageName::new("busybox", "user-name-group");
/// `USER app`, with an `/etc/group` listing `app` in `extra` (2000) and `more` (2001).
pub const USER_GROUPS: ImageName = ImageName::new("busybox", "user-groups");
/// `/etc/group` of [`USER_GROUPS`].
pub const GROUP_WITH_MEMBERS: &str =
    "root:x:0:\napp:x:1000:\nextra:x:2000:app\nmore:x:2001:nobody,app\nnogroup:x:65534:\n";
/// `ENTRYPOINT ["/bin/echo", "entrypoint"]` with `CMD ["from-cmd"]`.
pub const ENTRYPOINT: ImageName = ImageName::new("busybox", "entrypoint");
/// The base as a plain tar layer.
pub const UNCOMPRESSED: ImageName = ImageName::new("busybox", "uncompressed");
/// The base alone with `CMD ["sh"]`, pushed as `library/busybox:latest` too, for short names.
pub const PLAIN: ImageName = ImageName::new("busybox", "latest");
/// A Docker schema 1 manifest (served by the fake registry: docker-registry refuses it).
pub const SCHEMA1: ImageName = ImageName::new("schema1", "latest");
/// The sandbox ("pause") image containerd needs to run a pod: the busybox base sleeping for
/// good. The suites push it under the docker.io mirror as [`PAUSE_REFERENCE`].
pub const PAUSE: ImageName = ImageName::new("bungeo/pause", "1");
/// How daemons name [`PAUSE`]: a docker.io name, which every daemon mirrors to the test
/// registry.
pub const PAUSE_REFERENCE: &str = "docker.io/bungeo/pause:1";
/// A manifest whose layer blob does not match its digest (served by the fake registry).
pub const BAD_DIGEST: ImageName = ImageName::new("bad", "digest");
/// The base plus one 256 MiB layer of incompressible data.
pub const BIG: ImageName = ImageName::new("big", "256m");
/// The base plus 20 layers of 4 MiB incompressible data each.
pub const BIG_LAYERS: ImageName = ImageName::new("big", "20layers");

/// Images pushed to docker-registry.
pub const REGISTRY_IMAGES: &[ImageName] = &[
    LAYERS,
    SHARED,
    ZSTD,
    MULTIARCH,
    DOCKERLIST,
    USER_UID,
    USER_NAME,
    USER_NAME_GROUP,
    USER_GROUPS,
    ENTRYPOINT,
    UNCOMPRESSED,
    PLAIN,
];
/// Images only the harness's fake registry can serve.
pub const FAKE_REGISTRY_IMAGES: &[ImageName] = &[SCHEMA1, BAD_DIGEST];
/// The large images for the benchmark (built only when asked for).
pub const BIG_IMAGES: &[ImageName] = &[BIG, BIG_LAYERS];

/// An OS/architecture/variant triple as in an image index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// GOARCH spelling: `amd64`, `arm64`, `arm`.
    pub architecture: String,
    /// `v8`, `v7`, or none.
    pub variant: Option<String>,
}

impl Platform {
    fn new(architecture: &str, variant: Option<&str>) -> Self {
        Self {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(str::to_string),
        }
    }

    /// The platform of this machine, in OCI spelling.
    pub fn host() -> Self {
        match std::env::consts::ARCH {
            "x86_64" => Self::new("amd64", None),
            "aarch64" => Self::new("arm64", Some("v8")),
            "arm" => Self::new("arm", Some("v7")),
            "x86" => Self::new("386", None),
            "powerpc64" => Self::new("ppc64le", None),
            other => Self::new(other, None),
        }
    }

    /// The platforms of the multi-arch images: amd64, arm64/v8, arm/v7, and the host's.
    pub fn multiarch_set() -> Vec<Self> {
        let mut set = vec![
            Self::new("amd64", None),
            Self::new("arm64", Some("v8")),
            Self::new("arm", Some("v7")),
        ];
        let host = Self::host();
        if !set.contains(&host) {
            set.push(host);
        }
        set
    }

    /// The `platform` object of an index entry.
    pub fn json(&self) -> Value {
        let mut p = json!({"architecture": self.architecture, "os": self.os});
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// One image manifest with its config and layers.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The platform its config names.
    pub platform: Platform,
    /// The manifest blob.
    pub manifest: Blob,
    /// The config blob; its digest is the image ID.
    pub config: Blob,
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
}

impl Manifest {
    /// Sum of the manifest, config and layer sizes (what containerd reports as image size).
    pub fn total_size(&self) -> u64 {
        self.manifest.size()
            + self.config.size()
            + self.layers.iter().map(|l| l.blob.size()).sum::<u64>()
    }
}

/// A built image in one of the forms a registry can hold.
#[derive(Debug, Clone)]
pub enum Image {
    /// A single manifest.
    Single(Manifest),
    /// An OCI index or Docker manifest list over per-platform manifests.
    Index {
        /// The index blob.
        index: Blob,
        /// Its manifests.
        manifests: Vec<Manifest>,
    },
    /// A signed Docker schema 1 manifest and its layer blobs.
    Schema1 {
        /// The manifest (prettyjws).
        manifest: Blob,
        /// The `fsLayers` blobs.
        layers: Vec<Blob>,
    },
    /// A manifest whose first layer's bytes (as served) do not hash to its descriptor digest.
    BadDigest {
        /// The honest manifest, config and layer descriptors.
        manifest: Manifest,
        /// What a registry serves under the first layer's digest instead.
        served: Bytes,
    },
}

impl Image {
    /// The digest a registry lists this image under (index, manifest list or manifest).
    pub fn digest(&self) -> &str {
        match self {
            Image::Single(m) | Image::BadDigest { manifest: m, .. } => &m.manifest.digest,
            Image::Index { index, .. } => &index.digest,
            Image::Schema1 { manifest, .. } => &manifest.digest,
        }
    }

    /// The manifest a pull on this machine resolves to.
    pub fn host_manifest(&self) -> Option<&Manifest> {
        match self {
            Image::Single(m) | Image::BadDigest { manifest: m, .. } => Some(m),
            Image::Index { manifests, .. } => {
                let host = Platform::host();
                manifests.iter().find(|m| m.platform == host)
            }
            Image::Schema1 { .. } => None,
        }
    }

    /// The image ID a pull on this machine gives: the host manifest's config digest.
    pub fn id(&self) -> Result<&str> {
        self.host_manifest()
            .map(|m| m.config.digest.as_str())
            .context("image has no manifest for this platform")
    }

    /// Bytes containerd counts for the pulled image: index (if any) + host manifest + config + layers.
    pub fn pulled_size(&self) -> Result<u64> {
        let m = self
            .host_manifest()
            .context("image has no manifest for this platform")?;
        let index = match self {
            Image::Index { index, .. } => index.size(),
            _ => 0,
        };
        Ok(index + m.total_size())
    }

    /// Every layer of the host manifest, bottom first.
    pub fn host_layers(&self) -> &[Layer] {
        self.host_manifest().map(|m| &m.layers[..]).unwrap_or(&[])
    }
}

/// Image config options a test image varies.
#[derive(Debug, Clone)]
pub struct ConfigSpec {
    /// `User`.
    pub user: String,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `Env` beyond PATH.
    pub env: Vec<String>,
}

impl Default for ConfigSpec {
    fn default() -> Self {
        Self {
            user: String::new(),
            entrypoint: Vec::new(),
            cmd: vec!["sh".into()],
            working_dir: "/".into(),
            env: Vec::new(),
        }
    }
}

/// The image config JSON (OCI; Docker's is the same shape).
pub fn config_json(
    platform: &Platform,
    spec: &ConfigSpec,
    layers: &[(Layer, String)],
) -> Result<Vec<u8>> {
    let mut env = vec![PATH_ENV.to_string()];
    env.extend(spec.env.iter().cloned());
    let mut config = json!({
        "Env": env,
        "Cmd": spec.cmd,
        "WorkingDir": spec.working_dir,
    });
    if !spec.entrypoint.is_empty() {
        config["Entrypoint"] = json!(spec.entrypoint);
    }
    if !spec.user.is_empty() {
        config["User"] = json!(spec.user);
    }
    let history: Vec<Value> = layers
        .iter()
        .map(|(_, by)| json!({"created": CREATED, "created_by": by}))
        .collect();
    let diff_ids: Vec<&str> = layers.iter().map(|(l, _)| l.diff_id.as_str()).collect();
    let mut doc = json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "created": CREATED,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    if let Some(v) = &platform.variant {
        doc["variant"] = json!(v);
    }
    serde_json::to_vec(&doc).context("serialise image config")
}

/// A manifest of `flavor` over `layers` (each with the history line that made it).
pub fn build_manifest(
    platform: &Platform,
    spec: &ConfigSpec,
    layers: Vec<(Layer, String)>,
    flavor: Flavor,
) -> Result<Manifest> {
    let (manifest_type, config_type) = match flavor {
        Flavor::Oci => (OCI_MANIFEST, OCI_CONFIG),
        Flavor::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG),
    };
    let config = Blob::new(config_type, config_json(platform, spec, &layers)?);
    let descriptors: Vec<Value> = layers.iter().map(|(l, _)| l.blob.descriptor()).collect();
    let doc = json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config.descriptor(),
        "layers": descriptors,
    });
    let manifest = Blob::new(
        manifest_type,
        serde_json::to_vec(&doc).context("serialise manifest")?,
    );
    Ok(Manifest {
        platform: platform.clone(),
        manifest,
        config,
        layers: layers.into_iter().map(|(l, _)| l).collect(),
    })
}

/// An OCI index or Docker manifest list over `manifests`.
pub fn build_index(manifests: Vec<Manifest>, flavor: Flavor) -> Result<Image> {
    let media_type = match flavor {
        Flavor::Oci => OCI_INDEX,
        Flavor::Docker => DOCKER_LIST,
    };
    let entries: Vec<Value> = manifests
        .iter()
        .map(|m| {
            let mut d = m.manifest.descriptor();
            d["platform"] = m.platform.json();
            d
        })
        .collect();
    let doc = json!({"schemaVersion": 2, "mediaType": media_type, "manifests": entries});
    let index = Blob::new(
        media_type,
        serde_json::to_vec(&doc).context("serialise index")?,
    );
    Ok(Image::Index { index, manifests })
}

/// `/bin/busybox` (Debian's busybox-static), or the file `BUNGEO_BUSYBOX` names.
pub fn read_busybox() -> Result<Vec<u8>> {
    let path = std::env::var_os("BUNGEO_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/bin/busybox"));
    std::fs::read(&path).with_context(|| {
        format!(
            "read {} (apt-get install busybox-static, or set BUNGEO_BUSYBOX)",
            path.display()
        )
    })
}

/// The base file tree: static busybox, applet symlinks, passwd/group with `app`, the usual dirs.
pub fn base_tree(busybox: &[u8]) -> LayerTree {
    let mut t = LayerTree::new();
    for d in [
        "bin", "dev", "etc", "home", "proc", "root", "sys", "usr", "usr/bin", "var",
    ] {
        t.dir(d, 0o755);
    }
    t.dir("tmp", 0o1777);
    t.dir_owned("home/app", 0o755, 1000, 1000);
    t.file("bin/busybox", 0o755, busybox.to_vec());
    for applet in APPLETS {
        t.symlink(&format!("bin/{applet}"), "busybox");
    }
    t.file("etc/passwd", 0o644, PASSWD);
    t.file("etc/group", 0o644, GROUP);
    t.file("etc/hostname", 0o644, "busybox\n");
    t
}

/// Files the whiteout and opaque layers of [`LAYERS`] act on, plus hard and soft links.
pub fn files_tree() -> LayerTree {
    let mut t = LayerTree::new();
    t.dir("data", 0o755)
        .file("data/keep.txt", 0o644, "keep\n")
        .file("data/remove-me.txt", 0o644, "removed by the next layer\n")
        .hardlink("data/link-hard", "data/keep.txt")
        .symlink("data/link-sym", "keep.txt")
        .file("data/run.sh", 0o755, "#!/bin/sh\necho run\n")
        .file_owned("data/app-owned.txt", 0o600, 1000, 1000, "app\n")
        .dir("opaque", 0o755)
        .file("opaque/old-a.txt", 0o644, "hidden by the opaque layer\n")
        .dir("opaque/sub", 0o755)
        .file(
            "opaque/sub/old-b.txt",
            0o644,
            "hidden by the opaque layer\n",
        );
    t
}

fn one_file(path: &str, text: &str) -> LayerTree {
    let mut t = LayerTree::new();
    if let Some((dir, _)) = path.rsplit_once('/') {
        t.dir(dir, 0o755);
    }
    t.file(path, 0o644, text.as_bytes().to_vec());
    t
}

fn layer(
    tree: &LayerTree,
    compression: Compression,
    flavor: Flavor,
    by: &str,
) -> Result<(Layer, String)> {
    Ok((
        Layer::new(&tree.tar()?, compression, flavor)?,
        by.to_string(),
    ))
}

/// All test images, built once.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    images: Vec<(ImageName, Image)>,
}

impl Catalog {
    /// The image with this name.
    pub fn get(&self, name: ImageName) -> Result<&Image> {
        self.images
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, i)| i)
            .with_context(|| format!("test image {name} was not built"))
    }

    /// Every built image.
    pub fn iter(&self) -> impl Iterator<Item = (ImageName, &Image)> {
        self.images.iter().map(|(n, i)| (*n, i))
    }

    /// Builds every image in [`REGISTRY_IMAGES`] and [`FAKE_REGISTRY_IMAGES`], plus
    /// [`BIG_IMAGES`] when `big`.
    pub fn build(busybox: &[u8], big: bool) -> Result<Self> {
        let host = Platform::host();
        let oci = Flavor::Oci;
        let gz = Compression::Gzip;
        let base_tree = base_tree(busybox);
        let base = layer(&base_tree, gz, oci, "ADD busybox-static /")?;
        let files = layer(&files_tree(), gz, oci, "ADD files /data /opaque")?;
        let mut wh = LayerTree::new();
        wh.dir("data", 0o755).whiteout("data/remove-me.txt").file(
            "data/added.txt",
            0o644,
            "added\n",
        );
        let whiteout = layer(&wh, gz, oci, "RUN rm /data/remove-me.txt")?;
        let mut op = LayerTree::new();
        op.dir("opaque", 0o755)
            .opaque("opaque")
            .file("opaque/new.txt", 0o644, "new\n");
        let opaque = layer(
            &op,
            gz,
            oci,
            "RUN rm -r /opaque/* && echo new > /opaque/new.txt",
        )?;
        let shared = layer(
            &one_file("shared.txt", "shared\n"),
            gz,
            oci,
            "ADD shared.txt /",
        )?;

        // Every image gets a config of its own (so an image ID of its own), even where two
        // differ only in how their layers are stored.
        let single = |name: ImageName,
                      spec: ConfigSpec,
                      layers: Vec<(Layer, String)>|
         -> Result<(ImageName, Image)> {
            let spec = labelled(spec, name);
            Ok((
                name,
                Image::Single(build_manifest(&host, &spec, layers, oci)?),
            ))
        };
        let user = |u: &str| ConfigSpec {
            user: u.into(),
            ..ConfigSpec::default()
        };
        let mut images = vec![
            single(
                LAYERS,
                ConfigSpec::default(),
                vec![base.clone(), files.clone(), whiteout, opaque],
            )?,
            single(
                SHARED,
                ConfigSpec::default(),
                vec![base.clone(), files, shared],
            )?,
            single(
                ZSTD,
                ConfigSpec::default(),
                vec![
                    layer(&base_tree, Compression::Zstd, oci, "ADD busybox-static /")?,
                    layer(
                        &one_file("zstd.txt", "zstd\n"),
                        Compression::Zstd,
                        oci,
                        "ADD zstd.txt /",
                    )?,
                ],
            )?,
            (MULTIARCH, multiarch(MULTIARCH, &base_tree, Flavor::Oci)?),
            (
                DOCKERLIST,
                multiarch(DOCKERLIST, &base_tree, Flavor::Docker)?,
            ),
            single(USER_UID, user("1000"), vec![base.clone()])?,
            single(USER_NAME, user("app"), vec![base.clone()])?,
            single(USER_NAME_GROUP, user("app:app"), vec![base.clone()])?,
            single(
                USER_GROUPS,
                user("app"),
                vec![
                    base.clone(),
                    layer(
                        &one_file("etc/group", GROUP_WITH_MEMBERS),
                        gz,
                        oci,
                        "ADD group /etc/group",
                    )?,
                ],
            )?,
            single(
                ENTRYPOINT,
                ConfigSpec {
                    entrypoint: vec!["/bin/echo".into(), "entrypoint".into()],
                    cmd: vec!["from-cmd".into()],
                    working_dir: "/data".into(),
                    env: vec!["GREETING=hello".into()],
                    ..ConfigSpec::default()
                },
                vec![base.clone()],
            )?,
            single(
                UNCOMPRESSED,
                ConfigSpec::default(),
                vec![layer(
                    &base_tree,
                    Compression::None,
                    oci,
                    "ADD busybox-static /",
                )?],
            )?,
            single(PLAIN, ConfigSpec::default(), vec![base.clone()])?,
            single(
                PAUSE,
                ConfigSpec {
                    // Longer than any test: the largest value sleep accepts everywhere.
                    entrypoint: vec!["/bin/sleep".into(), "2147483647".into()],
                    cmd: Vec::new(),
                    ..ConfigSpec::default()
                },
                vec![base.clone()],
            )?,
            (SCHEMA1, schema1(&base_tree)?),
            (BAD_DIGEST, bad_digest()?),
        ];
        if big {
            let mut random = SeededBytes::new(256);
            let mut tree = LayerTree::new();
            tree.dir("data", 0o755)
                .file("data/random.bin", 0o644, random.take(256 << 20));
            let big_layer = layer(&tree, Compression::GzipFast, oci, "ADD random.bin /data")?;
            images.push(single(
                BIG,
                ConfigSpec::default(),
                vec![base.clone(), big_layer],
            )?);
            let mut layers = vec![base];
            let mut random = SeededBytes::new(20);
            for i in 0..20 {
                let mut tree = LayerTree::new();
                tree.dir("data", 0o755).file(
                    &format!("data/layer-{i:02}.bin"),
                    0o644,
                    random.take(4 << 20),
                );
                layers.push(layer(
                    &tree,
                    Compression::GzipFast,
                    oci,
                    &format!("ADD layer-{i:02}.bin /data"),
                )?);
            }
            images.push(single(BIG_LAYERS, ConfigSpec::default(), layers)?);
        }
        Ok(Self { images })
    }
}

/// A new single-manifest image over `layers` with its own config (so its own image ID),
/// labelled by `label` in its `Env`; with `add_layer`, one more layer unique to `label`.
/// Checks that remove images or count downloads use these so they never share an image with
/// another check running beside them.
pub fn derived(layers: &[Layer], label: &str, add_layer: bool) -> Result<Image> {
    let mut with_history: Vec<(Layer, String)> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), format!("layer {i}")))
        .collect();
    if add_layer {
        with_history.push(layer(
            &one_file("label.txt", &format!("{label}\n")),
            Compression::Gzip,
            Flavor::Oci,
            &format!("ADD label.txt / # {label}"),
        )?);
    }
    let spec = ConfigSpec {
        env: vec![format!("BUNGEO_TEST_LABEL={label}")],
        ..ConfigSpec::default()
    };
    Ok(Image::Single(build_manifest(
        &Platform::host(),
        &spec,
        with_history,
        Flavor::Oci,
    )?))
}

/// `spec` with `BUNGEO_TEST_IMAGE=<name>` added to its environment.
fn labelled(mut spec: ConfigSpec, name: ImageName) -> ConfigSpec {
    spec.env.push(format!("BUNGEO_TEST_IMAGE={name}"));
    spec
}

/// An index over [`Platform::multiarch_set`]: the host's manifest has the busybox base, the
/// others only their `/platform` file; every one says which platform it is.
fn multiarch(name: ImageName, base_tree: &LayerTree, flavor: Flavor) -> Result<Image> {
    let host = Platform::host();
    let mut manifests = Vec::new();
    for platform in Platform::multiarch_set() {
        let mut layers = Vec::new();
        if platform == host {
            layers.push(layer(
                base_tree,
                Compression::Gzip,
                flavor,
                "ADD busybox-static /",
            )?);
        }
        let tree = one_file("platform", &format!("{platform}\n"));
        layers.push(layer(&tree, Compression::Gzip, flavor, "ADD platform /")?);
        manifests.push(build_manifest(
            &platform,
            &labelled(ConfigSpec::default(), name),
            layers,
            flavor,
        )?);
    }
    build_index(manifests, flavor)
}

/// A Docker schema 1 manifest in libtrust's "pretty JWS" form. The signature block has the
/// right shape (containerd reads `formatLength`/`formatTail` to strip it) but is not a valid
/// ES256 signature: no client under test verifies schema 1 signatures, and bungeo must refuse
/// schema 1 whatever its signature says.
fn schema1(base_tree: &LayerTree) -> Result<Image> {
    let base = Layer::new(&base_tree.tar()?, Compression::Gzip, Flavor::Docker)?;
    let top = Layer::new(
        &one_file("schema1.txt", "schema1\n").tar()?,
        Compression::Gzip,
        Flavor::Docker,
    )?;
    let id = |n: u8| hex::encode([n; 32]);
    let top_v1 = json!({
        "id": id(2),
        "parent": id(1),
        "created": CREATED,
        "architecture": Platform::host().architecture,
        "os": "linux",
        "config": {"Env": [PATH_ENV], "Cmd": ["sh"], "WorkingDir": "/"},
        "container_config": {"Cmd": ["/bin/sh -c #(nop) ADD schema1.txt /"]},
    });
    let base_v1 = json!({
        "id": id(1),
        "created": CREATED,
        "container_config": {"Cmd": ["/bin/sh -c #(nop) ADD busybox-static /"]},
    });
    let payload = json!({
        "schemaVersion": 1,
        "name": SCHEMA1.repo,
        "tag": SCHEMA1.tag,
        "architecture": Platform::host().architecture,
        "fsLayers": [{"blobSum": top.blob.digest}, {"blobSum": base.blob.digest}],
        "history": [
            {"v1Compatibility": top_v1.to_string()},
            {"v1Compatibility": base_v1.to_string()},
        ],
    });
    let pretty = serde_json::to_string_pretty(&payload).context("serialise schema 1")?;
    let format_length = pretty
        .rfind("\n}")
        .context("pretty JSON ends with a brace")?;
    let tail = &pretty[format_length..];
    let protected = json!({
        "formatLength": format_length,
        "formatTail": URL_SAFE_NO_PAD.encode(tail),
        "time": CREATED,
    });
    let signature = json!({
        "header": {
            "jwk": {"crv": "P-256", "kid": "BUNG:EOTE:STKE:Y000:0000:0000:0000:0000:0000:0000:0000:0000", "kty": "EC",
                    "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])},
            "alg": "ES256",
        },
        "signature": URL_SAFE_NO_PAD.encode([3u8; 64]),
        "protected": URL_SAFE_NO_PAD.encode(protected.to_string()),
    });
    let signed = format!(
        "{},\n   \"signatures\": [{}]{tail}",
        &pretty[..format_length],
        signature
    );
    Ok(Image::Schema1 {
        manifest: Blob::new(SCHEMA1_SIGNED, signed.into_bytes()),
        layers: vec![top.blob, base.blob],
    })
}

/// An image whose layer, as served, has the descriptor's size but other bytes.
fn bad_digest() -> Result<Image> {
    let promised = layer(
        &one_file("promised.txt", "the bytes the digest names\n"),
        Compression::Gzip,
        Flavor::Oci,
        "ADD promised.txt /",
    )?;
    let mut served = promised.0.blob.data.to_vec();
    // Flip bytes past the gzip header so only the digest check can tell.
    for b in served.iter_mut().skip(10).take(8) {
        *b ^= 0xff;
    }
    let manifest = build_manifest(
        &Platform::host(),
        &ConfigSpec::default(),
        vec![promised],
        Flavor::Oci,
    )?;
    Ok(Image::BadDigest {
        manifest,
        served: Bytes::from(served),
    })
}

/// Pushes built images to a registry through `oci-client`, keeping manifests' exact bytes.
pub struct Pusher {
    client: Client,
    host: String,
    auth: RegistryAuth,
}

impl Pusher {
    /// A pusher for the plain-HTTP registry at `host`, with Basic auth if given.
    pub fn new(host: &str, credentials: Option<(&str, &str)>) -> Self {
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..ClientConfig::default()
        });
        let auth = match credentials {
            Some((u, p)) => RegistryAuth::Basic(u.to_string(), p.to_string()),
            None => RegistryAuth::Anonymous,
        };
        Self {
            client,
            host: host.to_string(),
            auth,
        }
    }

    fn reference(&self, repo: &str, tag_or_digest: &str) -> Reference {
        if tag_or_digest.starts_with("sha256:") {
            Reference::with_digest(
                self.host.clone(),
                repo.to_string(),
                tag_or_digest.to_string(),
            )
        } else {
            Reference::with_tag(
                self.host.clone(),
                repo.to_string(),
                tag_or_digest.to_string(),
            )
        }
    }

    /// Pushes `image` to `repo`, tagged `tag` (or only by digest when `tag` is None); returns
    /// the digest it is listed under.
    pub async fn push(&self, repo: &str, tag: Option<&str>, image: &Image) -> Result<String> {
        let top = self.reference(repo, tag.unwrap_or(image.digest()));
        self.client
            .auth(&top, &self.auth, RegistryOperation::Push)
            .await
            .with_context(|| format!("authenticate to {} for push", self.host))?;
        let mut pushed = HashSet::new();
        match image {
            Image::Single(m) => {
                self.push_manifest_parts(repo, m, &mut pushed).await?;
                self.put_manifest(&top, &m.manifest).await?;
            }
            Image::Index { index, manifests } => {
                for m in manifests {
                    self.push_manifest_parts(repo, m, &mut pushed).await?;
                    let by_digest = self.reference(repo, &m.manifest.digest);
                    self.put_manifest(&by_digest, &m.manifest).await?;
                }
                self.put_manifest(&top, index).await?;
            }
            Image::Schema1 { .. } | Image::BadDigest { .. } => anyhow::bail!(
                "docker-registry cannot hold this image (it refuses unsigned schema 1 and \
                 verifies digests on push): serve it with FakeRegistry"
            ),
        }
        Ok(image.digest().to_string())
    }

    async fn push_manifest_parts(
        &self,
        repo: &str,
        m: &Manifest,
        pushed: &mut HashSet<String>,
    ) -> Result<()> {
        let blobs = std::iter::once(&m.config).chain(m.layers.iter().map(|l| &l.blob));
        for blob in blobs {
            if !pushed.insert(blob.digest.clone()) {
                continue;
            }
            let r = self.reference(repo, &blob.digest);
            self.client
                .push_blob(&r, blob.data.clone(), &blob.digest)
                .await
                .with_context(|| format!("push blob {} to {}/{repo}", blob.digest, self.host))?;
        }
        Ok(())
    }

    async fn put_manifest(&self, r: &Reference, blob: &Blob) -> Result<()> {
        let content_type = http::HeaderValue::from_str(&blob.media_type)
            .with_context(|| format!("media type {}", blob.media_type))?;
        self.client
            .push_manifest_raw(r, blob.data.clone(), content_type)
            .await
            .with_context(|| format!("push manifest {} as {r}", blob.digest))?;
        Ok(())
    }
}

/// Pushes every image of `names` from `catalog` to its own repository and tag.
pub async fn push_all(pusher: &Pusher, catalog: &Catalog, names: &[ImageName]) -> Result<()> {
    for name in names {
        pusher
            .push(name.repo, Some(name.tag), catalog.get(*name)?)
            .await
            .with_context(|| format!("push {name}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::build(b"#!fake busybox\n", false).unwrap()
    }

    #[test]
    fn images_are_reproducible() {
        let a = catalog();
        let b = catalog();
        for (name, img) in a.iter() {
            assert_eq!(img.digest(), b.get(name).unwrap().digest(), "{name}");
        }
    }

    #[test]
    fn every_image_has_an_id_of_its_own() {
        let c = catalog();
        let mut ids = HashSet::new();
        for (name, img) in c.iter() {
            if let Ok(id) = img.id() {
                assert!(ids.insert(id.to_string()), "{name} shares its image id");
            }
        }
        // The registry images, the bad digest one and the pause image: all but schema 1.
        assert_eq!(
            ids.len(),
            REGISTRY_IMAGES.len() + 2,
            "all but schema 1 have an id"
        );
    }

    #[test]
    fn pause_image_sleeps_on_the_busybox_base() {
        let c = catalog();
        let pause = c.get(PAUSE).unwrap().host_manifest().unwrap();
        let config: Value = serde_json::from_slice(&pause.config.data).unwrap();
        assert_eq!(
            config["config"]["Entrypoint"],
            json!(["/bin/sleep", "2147483647"])
        );
        assert_eq!(config["config"]["Cmd"], json!([]));
        assert_eq!(pause.layers, c.get(PLAIN).unwrap().host_layers());
        assert!(PAUSE_REFERENCE.ends_with(&format!("/{}:{}", PAUSE.repo, PAUSE.tag)));
    }

    #[test]
    fn shared_image_shares_the_bottom_layers() {
        let c = catalog();
        let layers = c.get(LAYERS).unwrap().host_layers();
        let shared = c.get(SHARED).unwrap().host_layers();
        assert_eq!(layers.len(), 4);
        assert_eq!(shared.len(), 3);
        assert_eq!(layers[..2], shared[..2]);
        assert_ne!(layers[2], shared[2]);
    }

    #[test]
    fn configs_carry_user_entrypoint_and_diff_ids() {
        let c = catalog();
        let config = |n| -> Value {
            let m = c.get(n).unwrap().host_manifest().unwrap();
            serde_json::from_slice(&m.config.data).unwrap()
        };
        assert_eq!(config(USER_UID)["config"]["User"], "1000");
        assert_eq!(config(USER_NAME_GROUP)["config"]["User"], "app:app");
        let ep = config(ENTRYPOINT);
        assert_eq!(
            ep["config"]["Entrypoint"],
            json!(["/bin/echo", "entrypoint"])
        );
        assert_eq!(ep["config"]["Cmd"], json!(["from-cmd"]));
        let layers = config(LAYERS);
        let m = c.get(LAYERS).unwrap().host_manifest().unwrap();
        let diff_ids: Vec<&str> = m.layers.iter().map(|l| l.diff_id.as_str()).collect();
        assert_eq!(layers["rootfs"]["diff_ids"], json!(diff_ids));
        assert_eq!(layers["history"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn multiarch_resolves_to_the_host_and_names_its_platform() {
        let c = catalog();
        for (name, media_type, manifest_type) in [
            (MULTIARCH, OCI_INDEX, OCI_MANIFEST),
            (DOCKERLIST, DOCKER_LIST, DOCKER_MANIFEST),
        ] {
            let img = c.get(name).unwrap();
            let Image::Index { index, manifests } = img else {
                panic!("{name} is not an index");
            };
            assert_eq!(index.media_type, media_type);
            assert!(manifests.len() >= 3);
            let host = img.host_manifest().unwrap();
            assert_eq!(host.manifest.media_type, manifest_type);
            assert_eq!(
                host.layers.len(),
                2,
                "the host manifest has the base layer too"
            );
            let doc: Value = serde_json::from_slice(&index.data).unwrap();
            assert_eq!(doc["mediaType"], media_type);
            assert_eq!(doc["manifests"][1]["platform"]["variant"], "v8");
        }
        let docker = c.get(DOCKERLIST).unwrap().host_manifest().unwrap();
        assert_eq!(docker.config.media_type, DOCKER_CONFIG);
        assert_eq!(
            docker.layers[0].blob.media_type,
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }

    #[test]
    fn schema1_signature_block_strips_back_to_the_payload() {
        let c = catalog();
        let Image::Schema1 { manifest, layers } = c.get(SCHEMA1).unwrap() else {
            panic!("not schema 1");
        };
        assert_eq!(layers.len(), 2);
        let doc: Value = serde_json::from_slice(&manifest.data).unwrap();
        assert_eq!(doc["schemaVersion"], 1);
        let protected = doc["signatures"][0]["protected"].as_str().unwrap();
        let protected: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(protected).unwrap()).unwrap();
        let len = protected["formatLength"].as_u64().unwrap() as usize;
        let tail = URL_SAFE_NO_PAD
            .decode(protected["formatTail"].as_str().unwrap())
            .unwrap();
        let mut payload = manifest.data[..len].to_vec();
        payload.extend_from_slice(&tail);
        let payload: Value = serde_json::from_slice(&payload).unwrap();
        assert!(payload.get("signatures").is_none());
        assert_eq!(payload["fsLayers"][0]["blobSum"], json!(layers[0].digest));
    }

    #[test]
    fn derived_images_have_their_own_id_and_layer() {
        let c = catalog();
        let base = &c.get(LAYERS).unwrap().host_layers()[..2];
        let a = derived(base, "a", true).unwrap();
        let b = derived(base, "b", true).unwrap();
        let c2 = derived(base, "a", false).unwrap();
        assert_ne!(a.id().unwrap(), b.id().unwrap());
        assert_ne!(a.id().unwrap(), c2.id().unwrap());
        assert_eq!(a.host_layers()[..2], base[..]);
        assert_eq!(a.host_layers().len(), 3);
        assert_ne!(a.host_layers()[2], b.host_layers()[2]);
        assert_eq!(a.digest(), derived(base, "a", true).unwrap().digest());
    }

    #[test]
    fn bad_digest_serves_same_size_other_bytes() {
        let c = catalog();
        let Image::BadDigest { manifest, served } = c.get(BAD_DIGEST).unwrap() else {
            panic!("not a bad-digest image");
        };
        let promised = &manifest.layers[0].blob;
        assert_eq!(served.len(), promised.data.len());
        assert_ne!(crate::layer::sha256_digest(served), promised.digest);
    }
}
