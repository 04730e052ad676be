//! A tree of sentinels around a layer's unpack directory, snapshotted in full (contents, type,
//! mode, owner, link count, inode, times, xattrs), so an unpack that reaches outside the layer
//! by any route (`..`, symlinks, hard links, absolute names) shows up as a change.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

/// Name of the unpack directory under `root/`.
const LAYER: &str = "layer";

/// What is known about one path outside the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(PathBuf),
    Other { rdev: u64 },
}

/// A planted sentinel tree: `<base>/outside`, `<base>/root/{layer, sentinel, etc/…, links…}`.
pub struct Sentinels {
    base: PathBuf,
    layer: PathBuf,
    before: BTreeMap<PathBuf, Node>,
}

impl Sentinels {
    /// Plants the tree in `base`, an existing empty directory, and snapshots it.
    pub fn plant(base: &Path) -> io::Result<Self> {
        let root = base.join("root");
        let layer = root.join(LAYER);
        fs::write(base.join("outside"), b"outside the root\n")?;
        for d in ["etc", "bin", "dir/nested", "empty"] {
            fs::create_dir_all(root.join(d))?;
        }
        fs::create_dir(&layer)?;
        fs::set_permissions(root.join("empty"), fs::Permissions::from_mode(0o700))?;
        let files: [(&str, &[u8], u32); 6] = [
            ("sentinel", b"untouched", 0o644),
            ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644),
            ("etc/shadow", b"root:*:19000:0:99999:7:::\n", 0o600),
            ("etc/hostname", b"sentinel\n", 0o644),
            ("bin/sh", b"#!/bin/false\n", 0o755),
            ("dir/nested/deep", b"deep", 0o640),
        ];
        for (path, content, mode) in files {
            let path = root.join(path);
            fs::write(&path, content)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        }
        fs::hard_link(root.join("etc/hostname"), root.join("hostname-hard"))?;
        symlink(root.join("sentinel"), root.join("link-abs"))?;
        symlink("etc", root.join("link-rel"))?;
        symlink("../outside", root.join("link-up"))?;
        symlink("missing", root.join("dangling"))?;
        symlink("/", root.join("link-root"))?;
        nix::unistd::mkfifo(
            &root.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .map_err(io::Error::from)?;
        let mut this = Self {
            base: base.to_path_buf(),
            layer,
            before: BTreeMap::new(),
        };
        this.before = this.snapshot();
        Ok(this)
    }

    /// The directory to unpack into.
    pub fn layer(&self) -> &Path {
        &self.layer
    }

    /// Every difference between the tree now and when it was planted, outside the layer.
    pub fn changes(&self) -> Vec<String> {
        let now = self.snapshot();
        let mut out = Vec::new();
        for (path, before) in &self.before {
            match now.get(path) {
                None => out.push(format!("{} is gone", path.display())),
                Some(after) if after != before => out.push(format!(
                    "{} changed: {}",
                    path.display(),
                    difference(before, after)
                )),
                Some(_) => {}
            }
        }
        for (path, node) in &now {
            if !self.before.contains_key(path) {
                out.push(format!("{} appeared: {:?}", path.display(), node.kind));
            }
        }
        out
    }

    /// Every path under the base except the layer's contents; the layer itself only by
    /// identity (the layer's own tar entry `./` may set its mode and times).
    fn snapshot(&self) -> BTreeMap<PathBuf, Node> {
        let mut out = BTreeMap::new();
        self.walk(&self.base, &mut out);
        out
    }

    fn walk(&self, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        if let Some(node) = node(dir) {
            out.insert(dir.to_path_buf(), node);
        }
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path == self.layer {
                if let Some(mut node) = node(&path) {
                    // A layer may set its root's metadata; only what it is stays fixed.
                    node.mode &= libc::S_IFMT;
                    node.uid = 0;
                    node.gid = 0;
                    node.nlink = 0;
                    node.mtime = (0, 0);
                    node.ctime = (0, 0);
                    node.xattrs.clear();
                    out.insert(path, node);
                }
                continue;
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() => self.walk(&path, out),
                _ => {
                    if let Some(node) = node(&path) {
                        out.insert(path, node);
                    }
                }
            }
        }
    }
}

fn node(path: &Path) -> Option<Node> {
    let meta = fs::symlink_metadata(path).ok()?;
    let t = meta.file_type();
    let kind = if t.is_symlink() {
        Kind::Symlink(fs::read_link(path).ok()?)
    } else if t.is_dir() {
        Kind::Dir
    } else if t.is_file() {
        Kind::File(fs::read(path).ok()?)
    } else {
        Kind::Other { rdev: meta.rdev() }
    };
    Some(Node {
        kind,
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        nlink: meta.nlink(),
        ino: meta.ino(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
        xattrs: xattrs(path),
    })
}

/// The xattrs of `path` itself (not a symlink's target).
fn xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let mut out = BTreeMap::new();
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return out;
    };
    let mut names = vec![0u8; 64 * 1024];
    // SAFETY: `c` is NUL-terminated and `names` is writable for its whole length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let Ok(n) = usize::try_from(n) else {
        return out;
    };
    for name in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let Ok(cname) = CString::new(name) else {
            continue;
        };
        let mut value = vec![0u8; 64 * 1024];
        // SAFETY: both strings are NUL-terminated and `value` is writable for its length.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if let Ok(len) = usize::try_from(len) {
            value.truncate(len);
            out.insert(name.to_vec(), value);
        }
    }
    out
}

fn difference(a: &Node, b: &Node) -> String {
    let mut parts = Vec::new();
    if a.kind != b.kind {
        parts.push(match (&a.kind, &b.kind) {
            (Kind::File(x), Kind::File(y)) => format!("contents {} -> {} bytes", x.len(), y.len()),
            (x, y) => format!("{x:?} -> {y:?}"),
        });
    }
    let fields: [(&str, i128, i128); 6] = [
        ("mode", a.mode.into(), b.mode.into()),
        ("uid", a.uid.into(), b.uid.into()),
        ("gid", a.gid.into(), b.gid.into()),
        ("nlink", a.nlink.into(), b.nlink.into()),
        ("inode", a.ino.into(), b.ino.into()),
        ("mtime", a.mtime.0.into(), b.mtime.0.into()),
    ];
    for (what, x, y) in fields {
        if x != y {
            parts.push(format!("{what} {x:o} -> {y:o}"));
        }
    }
    if a.mtime.1 != b.mtime.1 {
        parts.push("mtime (ns)".to_string());
    }
    if a.ctime != b.ctime {
        parts.push("ctime".to_string());
    }
    if a.xattrs != b.xattrs {
        parts.push("xattrs".to_string());
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    fn planted() -> (tempfile::TempDir, Sentinels) {
        let dir = tempfile::tempdir().unwrap();
        let s = Sentinels::plant(dir.path()).unwrap();
        (dir, s)
    }

    #[test]
    fn writes_inside_the_layer_are_not_changes() {
        let (_dir, s) = planted();
        let layer = s.layer();
        fs::create_dir_all(layer.join("etc/deep")).unwrap();
        fs::write(layer.join("etc/passwd"), b"x").unwrap();
        symlink("../../..", layer.join("up")).unwrap();
        fs::set_permissions(layer, fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(s.changes(), Vec::<String>::new());
    }

    /// Each simulated escape, done to a fresh tree, must be reported.
    #[test]
    fn every_kind_of_escape_is_caught() {
        type Escape = fn(&Path, &Path);
        let escapes: [(&str, Escape); 12] = [
            ("write through a symlink in the layer", |root, layer| {
                symlink("..", layer.join("up")).unwrap();
                fs::write(layer.join("up/sentinel"), b"escaped").unwrap();
                let _ = root;
            }),
            ("same size, other contents", |root, _| {
                fs::write(root.join("sentinel"), b"untouchex").unwrap();
            }),
            ("a new file beside the layer", |root, _| {
                fs::write(root.join("escape"), b"x").unwrap();
            }),
            ("a new file beside the root", |root, _| {
                fs::write(root.join("../written"), b"x").unwrap();
            }),
            ("a file in a sentinel dir", |root, _| {
                fs::write(root.join("dir/nested/new"), b"").unwrap();
            }),
            ("a hard link from the layer", |root, layer| {
                fs::hard_link(root.join("etc/shadow"), layer.join("pw")).unwrap();
            }),
            ("chmod", |root, _| {
                fs::set_permissions(root.join("bin/sh"), fs::Permissions::from_mode(0o4755))
                    .unwrap();
            }),
            ("chown", |root, _| {
                std::os::unix::fs::lchown(root.join("link-rel"), Some(1), None).ok();
                // Not root: a metadata change any user can make instead.
                if nix::unistd::geteuid().is_root() {
                    return;
                }
                fs::set_permissions(root.join("etc/passwd"), fs::Permissions::from_mode(0o666))
                    .unwrap();
            }),
            ("a symlink retargeted", |root, _| {
                fs::remove_file(root.join("link-rel")).unwrap();
                symlink("bin", root.join("link-rel")).unwrap();
            }),
            ("the dangling symlink's target created", |root, _| {
                fs::write(root.join("missing"), b"x").unwrap();
            }),
            ("a file removed", |root, _| {
                fs::remove_file(root.join("dir/nested/deep")).unwrap();
            }),
            ("a file replaced by a same-content copy", |root, _| {
                let path = root.join("etc/hostname");
                fs::remove_file(&path).unwrap();
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(&path)
                    .unwrap();
                fs::write(&path, b"sentinel\n").unwrap();
            }),
        ];
        for (what, escape) in escapes {
            let (dir, s) = planted();
            escape(&dir.path().join("root"), s.layer());
            let changes = s.changes();
            assert!(!changes.is_empty(), "{what}: not caught");
            eprintln!("{what}: {changes:?}");
        }
    }

    #[test]
    fn an_mtime_change_alone_is_caught() {
        let (dir, s) = planted();
        let f = fs::File::options()
            .write(true)
            .open(dir.path().join("root/etc/passwd"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        let changes = s.changes();
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(
            changes[0].contains("etc/passwd changed: mtime"),
            "{changes:?}"
        );
    }
}
