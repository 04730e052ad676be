//! Content-addressed blob store: `<root>/content/blobs/sha256/<hex>`.
//!
//! A blob only ever appears under its name after its bytes were hashed and matched the
//! digest: writers stream into a temp file under `content/ingest/`, then fsync and rename.
//! A crash leaves at most a temp file, which [`ContentStore::clean_ingest`] removes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::{Error, Result};

const SHA256_PREFIX: &str = "sha256:";
/// Registry responses arrive in small chunks; batching them saves write syscalls.
const WRITE_BUFFER: usize = 128 * 1024;

/// Makes temp file names unique among the writers of this process.
static INGEST_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The blob store under `<root>/content`.
#[derive(Clone, Debug)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    /// Opens the store under `root`, creating its directories.
    pub fn open(root: &Path) -> Result<Self> {
        let content = root.join("content");
        let store = ContentStore {
            blobs: content.join("blobs").join("sha256"),
            ingest: content.join("ingest"),
        };
        for dir in [&store.blobs, &store.ingest] {
            fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        }
        Ok(store)
    }

    /// Removes what interrupted writes left in `ingest/`; returns how many entries went.
    /// Call it at start-up, before any writer exists.
    pub fn clean_ingest(&self) -> Result<usize> {
        let entries =
            fs::read_dir(&self.ingest).map_err(|e| Error::io("read directory", &self.ingest, e))?;
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read directory", &self.ingest, e))?;
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let result = if is_dir {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match result {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", path, e)),
            }
        }
        Ok(removed)
    }

    /// Checks that `digest` is `sha256:` and 64 lowercase hex digits, and returns the hex.
    ///
    /// Digests come from registries; this check is what keeps them from naming paths
    /// outside the store.
    pub fn parse_digest(digest: &str) -> Result<&str> {
        digest
            .strip_prefix(SHA256_PREFIX)
            .filter(|hex| is_sha256_hex(hex))
            .ok_or_else(|| Error::InvalidDigest(digest.to_string()))
    }

    /// Where the blob named `digest` is (or would be) stored.
    pub fn path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.blobs.join(Self::parse_digest(digest)?))
    }

    /// Whether the blob is present. An invalid digest is never present.
    pub fn contains(&self, digest: &str) -> bool {
        self.path(digest).is_ok_and(|p| p.is_file())
    }

    /// Size of the blob in bytes, or `None` when it is absent.
    pub fn size(&self, digest: &str) -> Result<Option<u64>> {
        let path = self.path(digest)?;
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("stat", path, e)),
        }
    }

    /// The whole blob. Meant for small blobs (manifests, configs); it was verified when
    /// written, so it is not hashed again here.
    pub fn read(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.path(digest)?;
        fs::read(&path).map_err(|e| Error::io("read blob", path, e))
    }

    /// Removes the blob; `false` when it was not there.
    pub fn delete(&self, digest: &str) -> Result<bool> {
        let path = self.path(digest)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("remove blob", path, e)),
        }
    }

    /// Digests of every blob present, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        let entries =
            fs::read_dir(&self.blobs).map_err(|e| Error::io("read directory", &self.blobs, e))?;
        let mut digests = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read directory", &self.blobs, e))?;
            if let Some(name) = entry.file_name().to_str()
                && is_sha256_hex(name)
            {
                digests.push(format!("{SHA256_PREFIX}{name}"));
            }
        }
        digests.sort();
        Ok(digests)
    }

    /// Stores a small blob held in memory, verifying it against `expected_digest`.
    pub fn write_all(&self, expected_digest: &str, bytes: &[u8]) -> Result<()> {
        let mut writer = self.writer(expected_digest, Some(bytes.len() as u64))?;
        writer
            .write_all(bytes)
            .map_err(|e| Error::io("write blob", writer.temp_path(), e))?;
        writer.commit()?;
        Ok(())
    }

    /// Starts writing the blob `expected_digest`; `expected_size` is checked as bytes
    /// arrive and again on commit.
    pub fn writer(&self, expected_digest: &str, expected_size: Option<u64>) -> Result<BlobWriter> {
        let hex = Self::parse_digest(expected_digest)?;
        let pid = std::process::id();
        loop {
            let n = INGEST_COUNTER.fetch_add(1, Ordering::Relaxed);
            let temp = self.ingest.join(format!("{hex}.{pid}.{n}"));
            // create_new: a name left by an earlier process with the same pid is skipped,
            // never shared.
            match OpenOptions::new().write(true).create_new(true).open(&temp) {
                Ok(file) => {
                    return Ok(BlobWriter {
                        file: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
                        temp: Some(temp),
                        target: self.blobs.join(hex),
                        blobs_dir: self.blobs.clone(),
                        digest: expected_digest.to_string(),
                        expected_size,
                        written: 0,
                        hasher: Sha256::new(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io("create temp file", temp, e)),
            }
        }
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Streams one blob into the store, hashing as it goes. Synchronous: drive it from
/// `spawn_blocking`. Nothing is visible under the blob's name until [`BlobWriter::commit`]
/// succeeds; dropping the writer before that removes its temp file.
///
/// A `write` that would go past the expected size fails with an `io::Error` of kind
/// `InvalidData` wrapping [`Error::SizeMismatch`], so an endless response cannot fill
/// the disk.
pub struct BlobWriter {
    file: Option<BufWriter<File>>,
    temp: Option<PathBuf>,
    target: PathBuf,
    blobs_dir: PathBuf,
    digest: String,
    expected_size: Option<u64>,
    written: u64,
    hasher: Sha256,
}

impl BlobWriter {
    /// Bytes accepted so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// The digest this writer was opened for.
    pub fn expected_digest(&self) -> &str {
        &self.digest
    }

    /// The temp file being written, for error messages.
    pub fn temp_path(&self) -> &Path {
        self.temp.as_deref().unwrap_or(&self.target)
    }

    /// Verifies size and digest, makes the bytes durable and moves the blob into place.
    /// Returns its size. On error the temp file is removed and nothing is stored.
    pub fn commit(mut self) -> Result<u64> {
        let temp = self.temp_path().to_path_buf();
        let Some(buffered) = self.file.take() else {
            return Err(Error::io(
                "commit blob",
                temp,
                io::Error::other("writer already finished"),
            ));
        };
        let file = buffered
            .into_inner()
            .map_err(|e| Error::io("write blob", &temp, e.into_error()))?;

        if let Some(expected) = self.expected_size
            && expected != self.written
        {
            return Err(Error::SizeMismatch {
                digest: self.digest.clone(),
                expected,
                actual: self.written,
            });
        }
        let actual = format!(
            "{SHA256_PREFIX}{}",
            hex::encode(std::mem::take(&mut self.hasher).finalize())
        );
        if actual != self.digest {
            return Err(Error::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }

        file.sync_all()
            .map_err(|e| Error::io("fsync blob", &temp, e))?;
        drop(file);

        if self.target.exists() {
            // Someone stored the same bytes first; ours are identical and redundant. Drop
            // removes the temp file.
            return Ok(self.written);
        }
        fs::rename(&temp, &self.target)
            .map_err(|e| Error::io("rename blob into", &self.target, e))?;
        self.temp = None;
        // The rename is only durable once the directory entry is.
        File::open(&self.blobs_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| Error::io("fsync directory", &self.blobs_dir, e))?;
        Ok(self.written)
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(expected) = self.expected_size {
            let would_be = self.written.saturating_add(buf.len() as u64);
            if would_be > expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    Error::SizeMismatch {
                        digest: self.digest.clone(),
                        expected,
                        actual: would_be,
                    },
                ));
            }
        }
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("blob writer already finished"));
        };
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Close before unlinking; the buffered tail is not worth flushing.
        if let Some(file) = self.file.take() {
            let (file, _unflushed) = file.into_parts();
            drop(file);
        }
        if let Some(temp) = self.temp.take()
            && let Err(e) = fs::remove_file(&temp)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %temp.display(), error = %e, "cannot remove blob temp file");
        }
    }
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter")
            .field("digest", &self.digest)
            .field("temp", &self.temp)
            .field("expected_size", &self.expected_size)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    fn store() -> (tempfile::TempDir, ContentStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        (dir, store)
    }

    fn ingest_entries(store: &ContentStore) -> usize {
        fs::read_dir(&store.ingest).unwrap().count()
    }

    #[test]
    fn open_creates_layout() {
        let (dir, _store) = store();
        assert!(dir.path().join("content/blobs/sha256").is_dir());
        assert!(dir.path().join("content/ingest").is_dir());
        // Opening again is fine.
        ContentStore::open(dir.path()).unwrap();
    }

    #[test]
    fn parse_digest_accepts_only_sha256_lowercase_hex() {
        let hex = "a".repeat(64);
        assert_eq!(
            ContentStore::parse_digest(&format!("sha256:{hex}")).unwrap(),
            hex
        );
        let bad = [
            "".to_string(),
            hex.clone(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha256:{}", "a".repeat(65)),
            format!("sha512:{hex}"),
            "sha256:../../../../etc/passwd".to_string(),
            format!("sha256:{}/..", "a".repeat(61)),
            format!("sha256:{}\0", "a".repeat(63)),
        ];
        for d in bad {
            assert!(
                matches!(ContentStore::parse_digest(&d), Err(Error::InvalidDigest(x)) if x == d),
                "{d:?}"
            );
        }
    }

    #[test]
    fn write_read_list_delete() {
        let (_dir, store) = store();
        let data = b"hello blob";
        let d = digest_of(data);
        assert!(!store.contains(&d));
        assert_eq!(store.size(&d).unwrap(), None);

        store.write_all(&d, data).unwrap();
        assert!(store.contains(&d));
        assert_eq!(store.size(&d).unwrap(), Some(data.len() as u64));
        assert_eq!(store.read(&d).unwrap(), data);
        assert_eq!(store.path(&d).unwrap(), store.blobs.join(&d[7..]));
        assert_eq!(store.list().unwrap(), vec![d.clone()]);
        assert_eq!(ingest_entries(&store), 0);

        assert!(store.delete(&d).unwrap());
        assert!(!store.delete(&d).unwrap());
        assert!(!store.contains(&d));
        assert!(store.list().unwrap().is_empty());
        assert!(matches!(store.read(&d), Err(Error::Io { .. })));
    }

    #[test]
    fn invalid_digests_are_refused_everywhere() {
        let (_dir, store) = store();
        let d = "sha256:../evil";
        assert!(!store.contains(d));
        assert!(matches!(store.path(d), Err(Error::InvalidDigest(_))));
        assert!(matches!(store.size(d), Err(Error::InvalidDigest(_))));
        assert!(matches!(store.read(d), Err(Error::InvalidDigest(_))));
        assert!(matches!(store.delete(d), Err(Error::InvalidDigest(_))));
        assert!(matches!(
            store.write_all(d, b"x"),
            Err(Error::InvalidDigest(_))
        ));
        assert!(matches!(
            store.writer(d, None),
            Err(Error::InvalidDigest(_))
        ));
    }

    #[test]
    fn list_ignores_foreign_files_and_sorts() {
        let (_dir, store) = store();
        let a = b"a";
        let b = b"b";
        store.write_all(&digest_of(a), a).unwrap();
        store.write_all(&digest_of(b), b).unwrap();
        fs::write(store.blobs.join("not-a-digest"), b"x").unwrap();
        let mut expected = vec![digest_of(a), digest_of(b)];
        expected.sort();
        assert_eq!(store.list().unwrap(), expected);
    }

    #[test]
    fn streaming_writer_in_chunks() {
        let (_dir, store) = store();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let d = digest_of(&data);
        let mut w = store.writer(&d, Some(data.len() as u64)).unwrap();
        assert_eq!(w.expected_digest(), d);
        for chunk in data.chunks(7919) {
            w.write_all(chunk).unwrap();
        }
        assert_eq!(w.bytes_written(), data.len() as u64);
        assert_eq!(ingest_entries(&store), 1);
        assert_eq!(w.commit().unwrap(), data.len() as u64);
        assert_eq!(store.read(&d).unwrap(), data);
        assert_eq!(ingest_entries(&store), 0);
    }

    #[test]
    fn unknown_size_is_accepted() {
        let (_dir, store) = store();
        let d = digest_of(b"abc");
        let mut w = store.writer(&d, None).unwrap();
        w.write_all(b"abc").unwrap();
        assert_eq!(w.commit().unwrap(), 3);
        assert!(store.contains(&d));
    }

    #[test]
    fn digest_mismatch_stores_nothing() {
        let (_dir, store) = store();
        let d = digest_of(b"expected");
        let mut w = store.writer(&d, None).unwrap();
        w.write_all(b"tampered").unwrap();
        match w.commit() {
            Err(Error::DigestMismatch { expected, actual }) => {
                assert_eq!(expected, d);
                assert_eq!(actual, digest_of(b"tampered"));
            }
            other => panic!("expected DigestMismatch, got {other:?}"),
        }
        assert!(!store.contains(&d));
        assert_eq!(ingest_entries(&store), 0);
    }

    #[test]
    fn short_blob_is_a_size_mismatch() {
        let (_dir, store) = store();
        let d = digest_of(b"abcdef");
        let mut w = store.writer(&d, Some(6)).unwrap();
        w.write_all(b"abc").unwrap();
        match w.commit() {
            Err(Error::SizeMismatch {
                digest,
                expected,
                actual,
            }) => assert_eq!((digest, expected, actual), (d.clone(), 6, 3)),
            other => panic!("expected SizeMismatch, got {other:?}"),
        }
        assert!(!store.contains(&d));
        assert_eq!(ingest_entries(&store), 0);
    }

    #[test]
    fn overlong_blob_fails_while_writing() {
        let (_dir, store) = store();
        let d = digest_of(b"abc");
        let mut w = store.writer(&d, Some(3)).unwrap();
        w.write_all(b"ab").unwrap();
        let e = w.write_all(b"cd").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let inner = e.into_inner().unwrap().downcast::<Error>().unwrap();
        assert!(matches!(
            *inner,
            Error::SizeMismatch {
                expected: 3,
                actual: 4,
                ..
            }
        ));
        assert_eq!(w.bytes_written(), 2, "the refused chunk is not counted");
        drop(w);
        assert_eq!(ingest_entries(&store), 0);
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let (_dir, store) = store();
        let d = digest_of(b"partial data");
        let mut w = store.writer(&d, None).unwrap();
        w.write_all(b"partial").unwrap();
        let temp = w.temp_path().to_path_buf();
        assert!(temp.starts_with(&store.ingest));
        assert!(temp.exists());
        drop(w);
        assert!(!temp.exists());
        assert!(!store.contains(&d));
    }

    #[test]
    fn concurrent_writers_of_one_blob() {
        let (_dir, store) = store();
        let data = b"same bytes";
        let d = digest_of(data);
        let mut first = store.writer(&d, Some(data.len() as u64)).unwrap();
        let mut second = store.writer(&d, Some(data.len() as u64)).unwrap();
        assert_ne!(first.temp_path(), second.temp_path());
        first.write_all(data).unwrap();
        second.write_all(data).unwrap();
        assert_eq!(first.commit().unwrap(), data.len() as u64);
        assert_eq!(second.commit().unwrap(), data.len() as u64);
        assert_eq!(store.read(&d).unwrap(), data);
        assert_eq!(ingest_entries(&store), 0);
        // Writing an existing blob again is harmless too.
        store.write_all(&d, data).unwrap();
        assert_eq!(store.list().unwrap(), vec![d]);
    }

    #[test]
    fn empty_blob() {
        let (_dir, store) = store();
        let d = digest_of(b"");
        assert_eq!(
            d,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        store.write_all(&d, b"").unwrap();
        assert_eq!(store.size(&d).unwrap(), Some(0));
    }

    #[test]
    fn clean_ingest_removes_leftovers() {
        let (dir, store) = store();
        fs::write(store.ingest.join("leftover.1.0"), b"x").unwrap();
        fs::create_dir(store.ingest.join("leftover-dir")).unwrap();
        fs::write(store.ingest.join("leftover-dir/f"), b"x").unwrap();
        // A writer forgotten without Drop (as after a crash).
        let mut w = store.writer(&digest_of(b"crash"), None).unwrap();
        w.write_all(b"cr").unwrap();
        std::mem::forget(w);
        assert_eq!(store.clean_ingest().unwrap(), 3);
        assert_eq!(ingest_entries(&store), 0);
        assert_eq!(store.clean_ingest().unwrap(), 0);

        // Blobs are untouched by the cleanup, and survive reopening.
        let d = digest_of(b"kept");
        store.write_all(&d, b"kept").unwrap();
        store.clean_ingest().unwrap();
        let reopened = ContentStore::open(dir.path()).unwrap();
        assert_eq!(reopened.read(&d).unwrap(), b"kept");
    }
}
