//! Deterministic layer tarballs (sorted entries, fixed owners and mtimes), their compression,
//! content-addressed blobs, and seeded incompressible data.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context, Result};
use bytes::Bytes;
use sha2::{Digest, Sha256};

/// The mtime of every entry: a constant, so equal content gives equal digests on every run.
pub const MTIME: u64 = 1_600_000_000;

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Content with its media type and digest, as a registry stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// The media type a descriptor of this blob carries.
    pub media_type: String,
    /// The bytes.
    pub data: Bytes,
    /// `sha256:<hex>` of `data`.
    pub digest: String,
}

impl Blob {
    /// A blob whose digest is computed from its bytes.
    pub fn new(media_type: &str, data: impl Into<Bytes>) -> Self {
        let data = data.into();
        Self {
            media_type: media_type.to_string(),
            digest: sha256_digest(&data),
            data,
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }

    /// The OCI descriptor `{mediaType, digest, size}` pointing at this blob.
    pub fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size(),
        })
    }
}

/// How a layer tar is stored in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// The plain tar.
    None,
    /// gzip at the default level.
    Gzip,
    /// gzip at level 1, for large incompressible layers.
    GzipFast,
    /// zstd at level 3.
    Zstd,
}

/// Which family of media types a manifest and its layers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `application/vnd.oci.image.*`.
    Oci,
    /// Docker schema 2: `application/vnd.docker.*`.
    Docker,
}

/// A layer blob and the digest of its uncompressed tar (its diff ID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The stored (possibly compressed) blob.
    pub blob: Blob,
    /// `sha256` of the uncompressed tar, as listed in the image config's `rootfs.diff_ids`.
    pub diff_id: String,
}

impl Layer {
    /// Compresses `tar` and names it with the media type of `flavor`.
    pub fn new(tar: &[u8], compression: Compression, flavor: Flavor) -> Result<Self> {
        let media_type = layer_media_type(compression, flavor)?;
        let data = compress(tar, compression)?;
        Ok(Self {
            blob: Blob::new(media_type, data),
            diff_id: sha256_digest(tar),
        })
    }
}

fn layer_media_type(compression: Compression, flavor: Flavor) -> Result<&'static str> {
    Ok(match (flavor, compression) {
        (Flavor::Oci, Compression::None) => "application/vnd.oci.image.layer.v1.tar",
        (Flavor::Oci, Compression::Gzip | Compression::GzipFast) => {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        }
        (Flavor::Oci, Compression::Zstd) => "application/vnd.oci.image.layer.v1.tar+zstd",
        (Flavor::Docker, Compression::None) => "application/vnd.docker.image.rootfs.diff.tar",
        (Flavor::Docker, Compression::Gzip | Compression::GzipFast) => {
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        }
        (Flavor::Docker, Compression::Zstd) => {
            anyhow::bail!("Docker schema 2 has no media type for zstd layers")
        }
    })
}

/// `tar` compressed as asked; gzip carries mtime 0 and no name, so output is reproducible.
pub fn compress(tar: &[u8], compression: Compression) -> Result<Vec<u8>> {
    let gzip = |level| -> Result<Vec<u8>> {
        let mut enc = flate2::GzBuilder::new().write(Vec::new(), level);
        enc.write_all(tar).context("gzip layer")?;
        enc.finish().context("gzip layer")
    };
    match compression {
        Compression::None => Ok(tar.to_vec()),
        Compression::Gzip => gzip(flate2::Compression::default()),
        Compression::GzipFast => gzip(flate2::Compression::fast()),
        Compression::Zstd => zstd::encode_all(tar, 3).context("zstd layer"),
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File(Bytes),
    Symlink(String),
    Hardlink(String),
}

#[derive(Debug, Clone)]
struct Entry {
    kind: Kind,
    mode: u32,
    uid: u64,
    gid: u64,
}

/// A layer's file tree; `tar()` writes it with entries sorted by path.
#[derive(Debug, Clone, Default)]
pub struct LayerTree {
    entries: BTreeMap<String, Entry>,
}

impl LayerTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    fn put(&mut self, path: &str, kind: Kind, mode: u32, uid: u64, gid: u64) -> &mut Self {
        let path = path
            .trim_start_matches('/')
            .trim_end_matches('/')
            .to_string();
        self.entries.insert(
            path,
            Entry {
                kind,
                mode,
                uid,
                gid,
            },
        );
        self
    }

    /// A directory owned by root.
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.put(path, Kind::Dir, mode, 0, 0)
    }

    /// A directory with an owner.
    pub fn dir_owned(&mut self, path: &str, mode: u32, uid: u64, gid: u64) -> &mut Self {
        self.put(path, Kind::Dir, mode, uid, gid)
    }

    /// A regular file owned by root.
    pub fn file(&mut self, path: &str, mode: u32, data: impl Into<Bytes>) -> &mut Self {
        self.put(path, Kind::File(data.into()), mode, 0, 0)
    }

    /// A regular file with an owner.
    pub fn file_owned(
        &mut self,
        path: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        data: impl Into<Bytes>,
    ) -> &mut Self {
        self.put(path, Kind::File(data.into()), mode, uid, gid)
    }

    /// A symbolic link to `target` (stored as given, relative or absolute).
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.put(path, Kind::Symlink(target.to_string()), 0o777, 0, 0)
    }

    /// A hard link to `target`, a path in this same layer that must sort before `path`.
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let target = target.trim_start_matches('/').to_string();
        self.put(path, Kind::Hardlink(target), 0o644, 0, 0)
    }

    /// An OCI whiteout: `dir/.wh.name` deletes `dir/name` from the layers below.
    pub fn whiteout(&mut self, path: &str) -> &mut Self {
        let path = path.trim_start_matches('/');
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        self.file(&format!("{dir}.wh.{name}"), 0o644, Bytes::new())
    }

    /// An OCI opaque marker: `dir` hides everything the layers below have in it.
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        let dir = dir.trim_start_matches('/').trim_end_matches('/');
        self.file(&format!("{dir}/.wh..wh..opq"), 0o644, Bytes::new())
    }

    /// The tar: entries in path order, owners and modes as given, every mtime [`MTIME`].
    pub fn tar(&self) -> Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        builder.mode(tar::HeaderMode::Complete);
        for (path, entry) in &self.entries {
            let mut header = tar::Header::new_gnu();
            header.set_mode(entry.mode);
            header.set_uid(entry.uid);
            header.set_gid(entry.gid);
            header.set_mtime(MTIME);
            header.set_username(if entry.uid == 0 { "root" } else { "" })?;
            header.set_groupname(if entry.gid == 0 { "root" } else { "" })?;
            match &entry.kind {
                Kind::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    builder
                        .append_data(&mut header, format!("{path}/"), std::io::empty())
                        .with_context(|| format!("tar {path}"))?;
                }
                Kind::File(data) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(data.len() as u64);
                    builder
                        .append_data(&mut header, path, &data[..])
                        .with_context(|| format!("tar {path}"))?;
                }
                Kind::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    builder
                        .append_link(&mut header, path, target)
                        .with_context(|| format!("tar {path}"))?;
                }
                Kind::Hardlink(target) => {
                    anyhow::ensure!(
                        target < path && self.entries.contains_key(target),
                        "hard link {path} must point at an earlier entry of its layer, not {target}"
                    );
                    header.set_entry_type(tar::EntryType::Link);
                    header.set_size(0);
                    builder
                        .append_link(&mut header, path, target)
                        .with_context(|| format!("tar {path}"))?;
                }
            }
        }
        builder.into_inner().context("finish tar")
    }
}

/// A seeded xoshiro256** stream: the same seed gives the same bytes on every machine.
#[derive(Debug, Clone)]
pub struct SeededBytes {
    s: [u64; 4],
}

impl SeededBytes {
    /// A generator for `seed` (expanded with splitmix64 as the xoshiro authors advise).
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Self {
            s: [next(), next(), next(), next()],
        }
    }

    fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// `len` incompressible bytes.
    pub fn take(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar: &[u8]) -> Vec<(String, tar::EntryType, u64, u64)> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.entry_type(),
                    h.mtime().unwrap(),
                    h.uid().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn tar_is_sorted_with_fixed_mtime_and_owners() {
        let mut t = LayerTree::new();
        t.file("b/x", 0o644, "x")
            .dir("b", 0o755)
            .dir_owned("home/app", 0o755, 1000, 1000)
            .symlink("a", "b/x")
            .whiteout("b/gone")
            .opaque("c");
        let tar = t.tar().unwrap();
        let got = names(&tar);
        let paths: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(
            paths,
            [
                "a",
                "b/",
                "b/.wh.gone",
                "b/x",
                "c/.wh..wh..opq",
                "home/app/"
            ]
        );
        assert!(got.iter().all(|g| g.2 == MTIME));
        assert_eq!(got[0].1, tar::EntryType::Symlink);
        assert_eq!(got[5].3, 1000);
        assert_eq!(tar, t.tar().unwrap(), "the same tree gives the same bytes");
    }

    #[test]
    fn hardlink_must_follow_its_target() {
        let mut t = LayerTree::new();
        t.file("d/keep", 0o644, "k").hardlink("d/link", "d/keep");
        assert!(t.tar().is_ok());
        let mut bad = LayerTree::new();
        bad.file("d/z", 0o644, "k").hardlink("d/a", "d/z");
        assert!(bad.tar().is_err());
    }

    #[test]
    fn layers_carry_diff_id_of_the_plain_tar_and_compress_reproducibly() {
        let tar = LayerTree::new().file("f", 0o644, "hello").tar().unwrap();
        let gz = Layer::new(&tar, Compression::Gzip, Flavor::Oci).unwrap();
        let zs = Layer::new(&tar, Compression::Zstd, Flavor::Oci).unwrap();
        let plain = Layer::new(&tar, Compression::None, Flavor::Docker).unwrap();
        assert_eq!(gz.diff_id, sha256_digest(&tar));
        assert_eq!(gz.diff_id, zs.diff_id);
        assert_eq!(plain.blob.digest, gz.diff_id);
        assert_eq!(
            gz.blob.media_type,
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(
            zs.blob.media_type,
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        assert_eq!(
            gz,
            Layer::new(&tar, Compression::Gzip, Flavor::Oci).unwrap()
        );
        let mut dec = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&gz.blob.data[..]),
            &mut dec,
        )
        .unwrap();
        assert_eq!(dec, tar);
        assert_eq!(zstd::decode_all(&zs.blob.data[..]).unwrap(), tar);
        assert!(Layer::new(&tar, Compression::Zstd, Flavor::Docker).is_err());
    }

    #[test]
    fn seeded_bytes_are_reproducible_and_incompressible() {
        let a = SeededBytes::new(7).take(1 << 16);
        assert_eq!(a, SeededBytes::new(7).take(1 << 16));
        assert_ne!(a, SeededBytes::new(8).take(1 << 16));
        let gz = compress(&a, Compression::Gzip).unwrap();
        assert!(gz.len() > a.len(), "random data must not compress");
    }
}
