//! Snapshot directories: `snapshots/<n>/fs` holds one unpacked layer, usable as an overlayfs
//! lower dir. Short numeric names keep overlay's `lowerdir=` option under the page-size limit.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

const TRASH_PREFIX: &str = "trash-";

/// The `snapshots/` directory.
#[derive(Debug, Clone)]
pub struct Snapshots {
    root: PathBuf,
}

impl Snapshots {
    /// Opens (creating) `<root>/snapshots`.
    pub fn open(root: &Path) -> Result<Self> {
        let root = root.join("snapshots");
        fs::create_dir_all(&root).map_err(|e| Error::io("create", &root, e))?;
        Ok(Snapshots { root })
    }

    /// The directory holding all snapshots.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The unpacked layer directory of snapshot `number`.
    pub fn fs_dir(&self, number: u64) -> PathBuf {
        self.root.join(number.to_string()).join("fs")
    }

    /// Creates an empty `snapshots/<number>/fs`, replacing anything a crash left there.
    pub fn prepare(&self, number: u64) -> Result<PathBuf> {
        let dir = self.root.join(number.to_string());
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| Error::io("remove", &dir, e))?;
        }
        let fs_dir = dir.join("fs");
        fs::create_dir_all(&fs_dir).map_err(|e| Error::io("create", &fs_dir, e))?;
        Ok(fs_dir)
    }

    /// Moves snapshot `number` out of the way at once; `empty_trash` deletes it later, so the
    /// slow recursive delete never runs while the store's locks are held.
    pub fn trash(&self, number: u64) -> Result<()> {
        let dir = self.root.join(number.to_string());
        let to = self.root.join(format!("{TRASH_PREFIX}{number}"));
        match fs::rename(&dir, &to) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("rename", &dir, e)),
        }
    }

    /// Deletes trashed snapshots.
    pub fn empty_trash(&self) -> Result<()> {
        for entry in fs::read_dir(&self.root).map_err(|e| Error::io("read", &self.root, e))? {
            let entry = entry.map_err(|e| Error::io("read", &self.root, e))?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(TRASH_PREFIX)
            {
                let p = entry.path();
                fs::remove_dir_all(&p).map_err(|e| Error::io("remove", &p, e))?;
            }
        }
        Ok(())
    }

    /// Removes every directory that is not a recorded snapshot: what a crash left mid-unpack.
    pub fn sweep(&self, known: &HashSet<u64>) -> Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.root).map_err(|e| Error::io("read", &self.root, e))? {
            let entry = entry.map_err(|e| Error::io("read", &self.root, e))?;
            let name = entry.file_name();
            let keep = name
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| known.contains(&n));
            if !keep {
                let p = entry.path();
                let res = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                res.map_err(|e| Error::io("remove", &p, e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_keeps_only_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Snapshots::open(dir.path()).expect("open");
        s.prepare(1).expect("1");
        s.prepare(2).expect("2");
        fs::write(s.fs_dir(2).join("f"), b"x").expect("write");
        s.trash(2).expect("trash");
        s.prepare(3).expect("3");
        let removed = s.sweep(&HashSet::from([1])).expect("sweep");
        assert_eq!(removed, 2);
        assert!(s.fs_dir(1).is_dir());
        assert!(!s.fs_dir(3).exists());
        assert!(!s.root().join("trash-2").exists());
    }
}
