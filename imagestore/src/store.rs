//! The image store facade the daemon uses: pull, look up, list, remove, usage.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

use tracing::{info, warn};

use crate::content::ContentStore;
use crate::metadata::Metadata;
use crate::reference::{Reference, parse_image_id};
use crate::registry::{Credentials, RegistriesConfig};
use crate::snapshots::Snapshots;
use crate::{Error, Result};

/// How the store is set up.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Root directory: `meta.redb`, `content/`, `snapshots/` live here.
    pub root: PathBuf,
    /// Layers downloaded at once per pull.
    pub max_concurrent_downloads: usize,
    /// Per-registry settings: mirrors, plain HTTP, credentials.
    pub registries: RegistriesConfig,
}

/// One image as recorded after a complete pull.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Image id: the config digest, `sha256:<hex>`.
    pub id: String,
    /// `docker.io/library/busybox:latest` style names.
    pub repo_tags: Vec<String>,
    /// `docker.io/library/busybox@sha256:<manifest digest>` style names.
    pub repo_digests: Vec<String>,
    /// Digest of the platform manifest.
    pub manifest_digest: String,
    /// Digest of the index or manifest list the pull started from, when there was one.
    pub index_digest: Option<String>,
    /// Sum of manifest, config and compressed layer sizes, as containerd reports it.
    pub size: u64,
    /// Chain IDs of the layers, bottom first; each names a snapshot.
    pub chain_ids: Vec<String>,
    /// Layer (compressed blob) digests, bottom first.
    pub layer_digests: Vec<String>,
    /// Every content blob this image holds on to (index, manifest, config, layers).
    pub blobs: Vec<String>,
    /// The image config JSON (OCI image config), verbatim.
    pub config: serde_json::Value,
    /// Seconds since the epoch when the image was first recorded.
    pub created_unix: i64,
    /// Free-form extra annotations from the manifest.
    pub annotations: BTreeMap<String, String>,
}

impl ImageRecord {
    /// The image's `USER`, when set.
    pub fn user(&self) -> Option<&str> {
        self.config
            .get("config")
            .and_then(|c| c.get("User"))
            .and_then(|u| u.as_str())
            .filter(|u| !u.is_empty())
    }
}

/// Bytes and inodes used by the image store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsUsage {
    /// The directory whose filesystem holds the images.
    pub mountpoint: PathBuf,
    /// Bytes used by content blobs and snapshots.
    pub used_bytes: u64,
    /// Inodes used by content blobs and snapshots.
    pub inodes_used: u64,
}

/// Async locks by key, dropped when nobody holds them: one pull per reference at a time, one
/// download per layer at a time across pulls.
#[derive(Default)]
pub(crate) struct KeyedLocks {
    map: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    pub(crate) async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, w| w.strong_count() > 0);
            match map.get(key).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.to_string(), Arc::downgrade(&m));
                    m
                }
            }
        };
        m.lock_owned().await
    }
}

/// Blobs and snapshots an in-flight pull holds on to: garbage collection leaves them alone.
pub(crate) struct Lease {
    inner: Arc<Inner>,
    keys: Vec<String>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut leases = self.inner.leases.lock().unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            if let Some(n) = leases.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    leases.remove(k);
                }
            }
        }
    }
}

pub(crate) struct Inner {
    pub(crate) config: StoreConfig,
    pub(crate) content: ContentStore,
    pub(crate) snapshots: Snapshots,
    pub(crate) meta: Metadata,
    /// Lease counts by blob digest or chain id. Garbage collection holds this lock throughout,
    /// so a pull either leases before collection looks, or sees the collection's result.
    pub(crate) leases: Mutex<HashMap<String, usize>>,
    pub(crate) pull_locks: KeyedLocks,
    pub(crate) layer_locks: KeyedLocks,
}

impl Inner {
    pub(crate) fn lease(self: &Arc<Self>, keys: Vec<String>) -> Lease {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        for k in &keys {
            *leases.entry(k.clone()).or_default() += 1;
        }
        Lease {
            inner: Arc::clone(self),
            keys,
        }
    }

    /// Deletes every blob and snapshot that no image references and no pull holds.
    fn collect_garbage(&self) -> Result<(usize, usize)> {
        let (blobs_removed, snapshots_removed) = {
            let leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            let images = self.meta.images()?;
            let blobs: HashSet<&str> = images
                .iter()
                .flat_map(|i| i.blobs.iter().map(String::as_str))
                .collect();
            let holds = self.meta.holds()?;
            // Snapshots a container still stands on stay, even after its image is removed.
            let chains: HashSet<&str> = images
                .iter()
                .flat_map(|i| i.chain_ids.iter().map(String::as_str))
                .chain(holds.iter().flat_map(|(_, c)| c.iter().map(String::as_str)))
                .collect();
            let dead: Vec<(String, u64)> = self
                .meta
                .snapshots()?
                .into_iter()
                .filter(|(c, _)| !chains.contains(c.as_str()) && !leases.contains_key(c))
                .map(|(c, r)| (c, r.number))
                .collect();
            let dead_chains: Vec<String> = dead.iter().map(|(c, _)| c.clone()).collect();
            self.meta.delete_snapshots(&dead_chains)?;
            for (_, n) in &dead {
                self.snapshots.trash(*n)?;
            }
            let mut blobs_removed = 0;
            for d in self.content.list()? {
                if !blobs.contains(d.as_str())
                    && !leases.contains_key(&d)
                    && self.content.delete(&d)?
                {
                    blobs_removed += 1;
                }
            }
            (blobs_removed, dead.len())
        };
        self.snapshots.empty_trash()?;
        Ok((blobs_removed, snapshots_removed))
    }
}

/// The store: content blobs, snapshots and image records under one root.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

impl ImageStore {
    /// Opens (creating if needed) the store and cleans what an interrupted run left behind:
    /// temp files, half-unpacked snapshots, and blobs and snapshots of pulls that never finished.
    pub fn open(config: StoreConfig) -> Result<Self> {
        std::fs::create_dir_all(&config.root).map_err(|e| Error::io("create", &config.root, e))?;
        let content = ContentStore::open(&config.root)?;
        let snapshots = Snapshots::open(&config.root)?;
        let meta = Metadata::open(&config.root.join("meta.redb"))?;
        let temp = content.clean_ingest()?;
        let known: HashSet<u64> = meta
            .snapshots()?
            .into_iter()
            .map(|(_, r)| r.number)
            .collect();
        let swept = snapshots.sweep(&known)?;
        let inner = Arc::new(Inner {
            config,
            content,
            snapshots,
            meta,
            leases: Mutex::new(HashMap::new()),
            pull_locks: KeyedLocks::default(),
            layer_locks: KeyedLocks::default(),
        });
        let (blobs, snaps) = inner.collect_garbage()?;
        if temp + swept + blobs + snaps > 0 {
            info!(
                temp_files = temp,
                partial_snapshots = swept,
                blobs,
                snapshots = snaps,
                "cleaned up after an interrupted run"
            );
        }
        Ok(ImageStore { inner })
    }

    /// The store's root directory.
    pub fn root(&self) -> &std::path::Path {
        &self.inner.config.root
    }

    /// Pulls `reference` (any form `Reference::parse` accepts) and returns the recorded image.
    /// Concurrent pulls of one reference wait for each other, so the second finds every blob
    /// and snapshot in place and downloads nothing again.
    pub async fn pull(
        &self,
        reference: &str,
        credentials: Option<Credentials>,
    ) -> Result<ImageRecord> {
        let r = Reference::parse(reference)?;
        let _guard = self.inner.pull_locks.lock(&r.to_string()).await;
        crate::pull::pull(&self.inner, &r, credentials.as_ref()).await
    }

    /// Finds an image by tag reference, digest reference, full id or unique id prefix.
    pub fn get(&self, reference_or_id: &str) -> Result<Option<ImageRecord>> {
        Ok(self.find(reference_or_id)?.map(|(rec, _)| rec))
    }

    /// Resolves to the image and how it was named: by id (None) or by a parsed reference.
    fn find(&self, s: &str) -> Result<Option<(ImageRecord, Option<Reference>)>> {
        let s = s.trim();
        if s.is_empty() {
            return Err(Error::InvalidReference {
                reference: s.to_string(),
                reason: "empty image reference".into(),
            });
        }
        if let Some(id) = parse_image_id(s) {
            return Ok(self.inner.meta.image(&id)?.map(|r| (r, None)));
        }
        let parsed = Reference::parse(s);
        if let Ok(r) = &parsed {
            let name = match (r.tag(), r.digest()) {
                (_, Some(d)) => r.digested(d),
                _ => r.tagged().unwrap_or_else(|| r.to_string()),
            };
            if let Some(id) = self.inner.meta.image_id_for_name(&name)? {
                return Ok(self
                    .inner
                    .meta
                    .image(&id)?
                    .map(|rec| (rec, Some(r.clone()))));
            }
            if r.digest().is_some() {
                // `repo@digest` also finds an image pulled by tag whose manifest is that digest.
                let d = r.digest().unwrap_or_default();
                let repo = r.repository();
                for rec in self.inner.meta.images()? {
                    let names_repo = rec
                        .repo_tags
                        .iter()
                        .chain(rec.repo_digests.iter())
                        .any(|n| {
                            n.starts_with(&format!("{repo}:")) || n.starts_with(&format!("{repo}@"))
                        });
                    if names_repo
                        && (rec.manifest_digest == d || rec.index_digest.as_deref() == Some(d))
                    {
                        return Ok(Some((rec, Some(r.clone()))));
                    }
                }
            }
        }
        // A hex id prefix, as people type them.
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        if hex.len() >= 4
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            let matches: Vec<ImageRecord> = self
                .inner
                .meta
                .images()?
                .into_iter()
                .filter(|i| {
                    i.id.strip_prefix("sha256:")
                        .is_some_and(|h| h.starts_with(hex))
                })
                .collect();
            match matches.len() {
                0 => {}
                1 => return Ok(matches.into_iter().next().map(|r| (r, None))),
                n => {
                    return Err(Error::InvalidReference {
                        reference: s.to_string(),
                        reason: format!("id prefix is ambiguous: {n} images match"),
                    });
                }
            }
        }
        match parsed {
            Ok(_) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// All images.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        self.inner.meta.images()
    }

    /// Removes a reference: a tag untags (the image goes with its last tag), a digest reference
    /// drops that repository's names, an id removes the image. Unreferenced blobs and snapshots
    /// are collected. Returns whether anything matched.
    pub fn remove(&self, reference_or_id: &str) -> Result<bool> {
        let Some((rec, how)) = self.find(reference_or_id)? else {
            return Ok(false);
        };
        match how {
            None => {
                self.inner.meta.remove_names(&rec.id, &[], true)?;
            }
            Some(r) if r.tag().is_some() && r.digest().is_none() => {
                let names: Vec<String> = r.tagged().into_iter().collect();
                self.inner.meta.remove_names(&rec.id, &names, false)?;
            }
            Some(r) => {
                let repo = r.repository();
                let names: Vec<String> = rec
                    .repo_tags
                    .iter()
                    .chain(rec.repo_digests.iter())
                    .filter(|n| {
                        n.starts_with(&format!("{repo}:")) || n.starts_with(&format!("{repo}@"))
                    })
                    .cloned()
                    .collect();
                self.inner.meta.remove_names(&rec.id, &names, false)?;
            }
        }
        let (blobs, snapshots) = self.inner.collect_garbage()?;
        info!(image = %reference_or_id, id = %rec.id, blobs, snapshots, "removed");
        Ok(true)
    }

    /// Bytes and inodes used by the store, from the records (no tree walk on this hot path).
    pub fn usage(&self) -> Result<FsUsage> {
        let mut used_bytes = 0;
        let mut inodes_used = 0;
        for (_, s) in self.inner.meta.snapshots()? {
            used_bytes += s.bytes;
            inodes_used += s.inodes;
        }
        for d in self.inner.content.list()? {
            if let Some(size) = self.inner.content.size(&d)? {
                used_bytes += size;
                inodes_used += 1;
            }
        }
        Ok(FsUsage {
            mountpoint: self.inner.snapshots.root().to_path_buf(),
            used_bytes,
            inodes_used,
        })
    }

    /// Overlay lower directories for an image, top layer first.
    pub fn lower_dirs(&self, image: &ImageRecord) -> Result<Vec<std::path::PathBuf>> {
        let mut out = Vec::with_capacity(image.chain_ids.len());
        for c in image.chain_ids.iter().rev() {
            let s = self.inner.meta.snapshot(c)?.ok_or_else(|| Error::Layer {
                digest: c.clone(),
                message: format!("snapshot missing for image {}", image.id),
            })?;
            out.push(self.inner.snapshots.fs_dir(s.number));
        }
        Ok(out)
    }

    /// Keeps `image`'s snapshots alive for `holder` (a container) until `release`, whatever
    /// happens to the image record; the hold is on disk, so it outlives a daemon restart.
    /// Returns the overlay lower directories, top layer first.
    pub fn hold(&self, holder: &str, image: &ImageRecord) -> Result<Vec<std::path::PathBuf>> {
        {
            // Under the lease lock, so a collection running now either sees the hold or has
            // already finished and `lower_dirs` finds what is (not) left.
            let _leases = self.inner.leases.lock().unwrap_or_else(|p| p.into_inner());
            self.inner.meta.put_hold(holder, &image.chain_ids)?;
        }
        match self.lower_dirs(image) {
            Ok(dirs) => Ok(dirs),
            Err(e) => {
                self.inner.meta.delete_hold(holder)?;
                Err(e)
            }
        }
    }

    /// Drops `holder`'s hold and collects what nothing references any more.
    pub fn release(&self, holder: &str) -> Result<()> {
        if self.inner.meta.delete_hold(holder)? {
            self.inner.collect_garbage()?;
        }
        Ok(())
    }

    /// Every holder with a hold.
    pub fn holders(&self) -> Result<Vec<String>> {
        Ok(self
            .inner
            .meta
            .holds()?
            .into_iter()
            .map(|(h, _)| h)
            .collect())
    }

    /// Runs garbage collection now.
    pub fn collect_garbage(&self) -> Result<()> {
        let (blobs, snapshots) = self.inner.collect_garbage()?;
        if blobs + snapshots > 0 {
            warn!(blobs, snapshots, "collected unreferenced content");
        }
        Ok(())
    }
}
