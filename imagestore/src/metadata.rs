//! Image and snapshot records in redb. Every change that must be seen whole happens in one
//! write transaction.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::store::ImageRecord;
use crate::{Error, Result};

/// image id → ImageRecord (JSON).
const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
/// reference name (`repo:tag` or `repo@digest`) → image id.
const REFS: TableDefinition<&str, &str> = TableDefinition::new("refs");
/// chain id → SnapshotRecord (JSON).
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// holder (a container id) → the chain ids it keeps alive (JSON list).
const HOLDS: TableDefinition<&str, &[u8]> = TableDefinition::new("holds");
/// named counters.
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

const SNAPSHOT_SEQ: &str = "snapshot_seq";

/// One unpacked layer: `snapshots/<number>/fs` holds the diff of the layer named by its chain ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Directory number under `snapshots/`.
    pub number: u64,
    /// Chain ID of the layer below, if any.
    pub parent: Option<String>,
    /// The uncompressed layer digest.
    pub diff_id: String,
    /// Bytes the unpacked layer uses.
    pub bytes: u64,
    /// Inodes the unpacked layer uses.
    pub inodes: u64,
}

/// The metadata database.
pub struct Metadata {
    db: Database,
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Database(format!("encode record: {e}")))
}

fn decode<T: for<'a> Deserialize<'a>>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Database(format!("decode record: {e}")))
}

impl Metadata {
    /// Opens or creates the database at `path`, with every table present.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        {
            txn.open_table(IMAGES)?;
            txn.open_table(REFS)?;
            txn.open_table(SNAPSHOTS)?;
            txn.open_table(COUNTERS)?;
            txn.open_table(HOLDS)?;
        }
        txn.commit()?;
        Ok(Metadata { db })
    }

    /// All image records.
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(IMAGES)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (_, v) = row?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// The image with this exact id.
    pub fn image(&self, id: &str) -> Result<Option<ImageRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(IMAGES)?;
        match table.get(id)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// The image id a reference name points to.
    pub fn image_id_for_name(&self, name: &str) -> Result<Option<String>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REFS)?;
        Ok(table.get(name)?.map(|v| v.value().to_string()))
    }

    /// All snapshot records by chain id.
    pub fn snapshots(&self) -> Result<Vec<(String, SnapshotRecord)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), decode(v.value())?));
        }
        Ok(out)
    }

    /// The snapshot of this chain id.
    pub fn snapshot(&self, chain_id: &str) -> Result<Option<SnapshotRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        match table.get(chain_id)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Reserves a fresh snapshot directory number. Numbers are never reused, so a directory
    /// left by a crash can never be mistaken for a committed one.
    pub fn next_snapshot_number(&self) -> Result<u64> {
        let txn = self.db.begin_write()?;
        let n = {
            let mut table = txn.open_table(COUNTERS)?;
            let n = table.get(SNAPSHOT_SEQ)?.map(|v| v.value()).unwrap_or(0) + 1;
            table.insert(SNAPSHOT_SEQ, n)?;
            n
        };
        txn.commit()?;
        Ok(n)
    }

    /// Records a snapshot whose directory is complete.
    pub fn put_snapshot(&self, chain_id: &str, record: &SnapshotRecord) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(SNAPSHOTS)?;
            table.insert(chain_id, encode(record)?.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Records that `holder` uses these snapshots (a container's lower layers).
    pub fn put_hold(&self, holder: &str, chain_ids: &[String]) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(HOLDS)?;
            table.insert(holder, encode(&chain_ids)?.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Forgets `holder`'s hold; whether there was one.
    pub fn delete_hold(&self, holder: &str) -> Result<bool> {
        let txn = self.db.begin_write()?;
        let existed = {
            let mut table = txn.open_table(HOLDS)?;
            table.remove(holder)?.is_some()
        };
        txn.commit()?;
        Ok(existed)
    }

    /// Every hold: holder and the chain ids it keeps.
    pub fn holds(&self) -> Result<Vec<(String, Vec<String>)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(HOLDS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), decode(v.value())?));
        }
        Ok(out)
    }

    /// Deletes snapshot records.
    pub fn delete_snapshots(&self, chain_ids: &[String]) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(SNAPSHOTS)?;
            for c in chain_ids {
                table.remove(c.as_str())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Records a pulled image under `names`, merging with an existing record of the same id.
    /// A name that pointed at another image moves here; that image keeps its other names, and
    /// goes when it has none left. Returns the stored record and the ids of images removed.
    pub fn commit_image(
        &self,
        image: ImageRecord,
        names: &[String],
    ) -> Result<(ImageRecord, Vec<String>)> {
        let txn = self.db.begin_write()?;
        let mut removed = Vec::new();
        let stored = {
            let mut images = txn.open_table(IMAGES)?;
            let mut refs = txn.open_table(REFS)?;
            let mut record = match images.get(image.id.as_str())? {
                Some(v) => {
                    let mut old: ImageRecord = decode(v.value())?;
                    // Keep the original creation time, take the newest pull's view of the rest.
                    let created = old.created_unix;
                    let (tags, digests) = (old.repo_tags.clone(), old.repo_digests.clone());
                    // One config pulled through different manifests (compressed or not, from an
                    // index or not) is one image that holds on to every manifest's blobs.
                    let mut blobs = old.blobs.clone();
                    old = image.clone();
                    for b in &image.blobs {
                        if !blobs.contains(b) {
                            blobs.push(b.clone());
                        }
                    }
                    old.blobs = blobs;
                    old.created_unix = created;
                    old.repo_tags = tags;
                    old.repo_digests = digests;
                    old
                }
                None => image.clone(),
            };
            for name in names {
                let previous = refs.get(name.as_str())?.map(|v| v.value().to_string());
                if let Some(prev) = previous.filter(|p| p != &record.id) {
                    let prev_rec = images
                        .get(prev.as_str())?
                        .map(|v| decode::<ImageRecord>(v.value()));
                    if let Some(prev_rec) = prev_rec {
                        let mut prev_rec = prev_rec?;
                        prev_rec.repo_tags.retain(|t| t != name);
                        prev_rec.repo_digests.retain(|t| t != name);
                        if prev_rec.repo_tags.is_empty() && prev_rec.repo_digests.is_empty() {
                            images.remove(prev.as_str())?;
                            removed.push(prev);
                        } else {
                            images.insert(prev.as_str(), encode(&prev_rec)?.as_slice())?;
                        }
                    }
                }
                refs.insert(name.as_str(), record.id.as_str())?;
                let list = if name.contains('@') {
                    &mut record.repo_digests
                } else {
                    &mut record.repo_tags
                };
                if !list.contains(name) {
                    list.push(name.clone());
                }
            }
            record.repo_tags.sort();
            record.repo_digests.sort();
            images.insert(record.id.as_str(), encode(&record)?.as_slice())?;
            record
        };
        txn.commit()?;
        Ok((stored, removed))
    }

    /// Drops `names` from image `id`; with `whole` or when no name is left, removes the image.
    /// Returns whether the image record itself was removed.
    pub fn remove_names(&self, id: &str, names: &[String], whole: bool) -> Result<bool> {
        let txn = self.db.begin_write()?;
        let gone = {
            let mut images = txn.open_table(IMAGES)?;
            let mut refs = txn.open_table(REFS)?;
            let rec = images.get(id)?.map(|v| decode::<ImageRecord>(v.value()));
            let Some(rec) = rec else {
                return Ok(false);
            };
            let mut rec = rec?;
            rec.repo_tags.retain(|t| !names.contains(t));
            rec.repo_digests.retain(|t| !names.contains(t));
            for n in names {
                if refs.get(n.as_str())?.is_some_and(|v| v.value() == id) {
                    refs.remove(n.as_str())?;
                }
            }
            if whole || rec.repo_tags.is_empty() {
                for n in rec.repo_tags.iter().chain(rec.repo_digests.iter()) {
                    if refs.get(n.as_str())?.is_some_and(|v| v.value() == id) {
                        refs.remove(n.as_str())?;
                    }
                }
                images.remove(id)?;
                true
            } else {
                images.insert(id, encode(&rec)?.as_slice())?;
                false
            }
        };
        txn.commit()?;
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str) -> ImageRecord {
        ImageRecord {
            id: id.into(),
            repo_tags: vec![],
            repo_digests: vec![],
            manifest_digest: "sha256:m".into(),
            index_digest: None,
            size: 1,
            chain_ids: vec![],
            layer_digests: vec![],
            blobs: vec![],
            config: serde_json::json!({}),
            created_unix: 7,
            annotations: Default::default(),
        }
    }

    #[test]
    fn tag_moves_and_untagged_image_keeps_digest_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let md = Metadata::open(&dir.path().join("m.redb")).expect("open");
        let (a, _) = md
            .commit_image(image("sha256:a"), &["r:t".into(), "r@sha256:1".into()])
            .expect("commit a");
        assert_eq!(a.repo_tags, vec!["r:t"]);
        let (_, removed) = md
            .commit_image(image("sha256:b"), &["r:t".into(), "r@sha256:2".into()])
            .expect("commit b");
        assert!(removed.is_empty());
        let a = md.image("sha256:a").expect("get").expect("a kept");
        assert!(a.repo_tags.is_empty());
        assert_eq!(a.repo_digests, vec!["r@sha256:1"]);
        assert_eq!(
            md.image_id_for_name("r:t").expect("ref"),
            Some("sha256:b".into())
        );
    }

    #[test]
    fn last_tag_removed_removes_image() {
        let dir = tempfile::tempdir().expect("tempdir");
        let md = Metadata::open(&dir.path().join("m.redb")).expect("open");
        md.commit_image(
            image("sha256:a"),
            &["r:1".into(), "r:2".into(), "r@sha256:1".into()],
        )
        .expect("commit");
        assert!(
            !md.remove_names("sha256:a", &["r:1".into()], false)
                .expect("rm")
        );
        assert!(
            md.remove_names("sha256:a", &["r:2".into()], false)
                .expect("rm")
        );
        assert!(md.image("sha256:a").expect("get").is_none());
        assert!(md.image_id_for_name("r@sha256:1").expect("ref").is_none());
        assert_eq!(md.next_snapshot_number().expect("n"), 1);
        assert_eq!(md.next_snapshot_number().expect("n"), 2);
    }
}
