//! Applies one layer tar to an empty directory that becomes one overlayfs lower dir.
//!
//! The `tar` crate only parses here: every object is created by this module relative to
//! directory descriptors. Parent directories are opened with `openat2(RESOLVE_IN_ROOT)`, so a
//! symlink planted by an earlier entry (absolute, or `../../..`) is resolved as if `dest` were
//! `/` and can never lead out of it; final components are created and changed with `*at` calls
//! that never follow a final symlink. Entry names are clamped the same way: `../../etc/x` lands
//! at `<dest>/etc/x`, as with containerd.

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::ffi::{CStr, CString};
use std::fmt::Display;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::rc::Rc;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{
    FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstatat, futimens,
    makedev, mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};
use tar::EntryType;

use crate::error::{Error, Result};
use crate::whiteout::{self, Whiteout};

/// Size of the chunks file contents are copied in; all-zero chunks become holes.
const COPY_CHUNK: usize = 128 * 1024;
/// A chunk of zeros to compare chunks against.
static ZEROS: [u8; COPY_CHUNK] = [0; COPY_CHUNK];

/// The most hole bytes (apparent size minus archived data) the GNU sparse files of one layer
/// may add up to. Holes cost no disk, but the `tar` crate hands them over as zeros, so each
/// byte of them costs CPU (about 100 GiB in 2 s here), and a header of a few hundred bytes
/// can declare exabytes: without a budget one small hostile layer would keep a core busy for
/// good. containerd refuses GNU sparse entries altogether.
pub const SPARSE_HOLE_BUDGET: u64 = 256 << 30;

/// Disk use of an unpacked layer, measured after it is applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Bytes allocated on disk (`st_blocks * 512`) below the layer root, each inode counted once.
    pub bytes: u64,
    /// Inodes below the layer root: a file with several hard links counts once.
    pub inodes: u64,
}

/// Unpacks the (already decompressed) layer tar `tar_stream` into the empty directory `dest`.
///
/// `layer` is the layer digest, used in error messages. OCI whiteouts become overlayfs
/// whiteouts. The stream is read to its end, so a caller hashing it sees every byte.
pub fn apply_layer<R: Read>(tar_stream: R, dest: &Path, layer: &str) -> Result<LayerStats> {
    apply_layer_with(tar_stream, dest, layer, SPARSE_HOLE_BUDGET)
}

/// A reader that counts the bytes read through it, so the unpacker can tell a sparse file's
/// holes (which the `tar` crate produces without reading the archive) from its data.
struct Counted<R> {
    inner: R,
    read: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

/// [`apply_layer`] with the sparse files' hole budget given.
fn apply_layer_with<R: Read>(
    tar_stream: R,
    dest: &Path,
    layer: &str,
    hole_budget: u64,
) -> Result<LayerStats> {
    let root = nix::fcntl::open(
        dest,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open", dest, e.into()))?;
    let mut applier = Applier {
        root,
        layer,
        dir_times: BTreeMap::new(),
        buf: vec![0; COPY_CHUNK],
        hole_budget,
        archive_read: Rc::new(Cell::new(0)),
    };
    let mut archive = tar::Archive::new(Counted {
        inner: tar_stream,
        read: applier.archive_read.clone(),
    });
    let mut count = 0u64;
    {
        let entries = archive
            .entries()
            .map_err(|e| applier.archive_err(format!("reading archive: {e}")))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| applier.archive_err(format!("reading archive: {e}")))?;
            applier.apply_entry(&mut entry)?;
            count += 1;
        }
    }
    // Padding after the end-of-archive blocks is part of the layer's diff ID.
    io::copy(&mut archive.into_inner().inner, &mut io::sink())
        .map_err(|e| applier.archive_err(format!("reading archive: {e}")))?;
    // Measured before directory times are set: reading a directory updates its atime.
    let stats = usage_of(&applier.root).map_err(|e| Error::io("measure", dest, e.into()))?;
    applier.apply_dir_times()?;
    tracing::debug!(
        layer,
        entries = count,
        bytes = stats.bytes,
        inodes = stats.inodes,
        "layer applied"
    );
    Ok(stats)
}

/// Measures what the tree below `dir` uses on disk, the same way [`apply_layer`] reports it.
pub fn disk_usage(dir: &Path) -> Result<LayerStats> {
    let root = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open", dir, e.into()))?;
    usage_of(&root).map_err(|e| Error::io("measure", dir, e.into()))
}

/// What a tar entry creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File { sparse: bool },
    Dir,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
}

impl Kind {
    fn of(header: &tar::Header, raw_path: &[u8]) -> Option<Kind> {
        Some(match header.entry_type() {
            // Pre-POSIX archives mark directories only with a trailing slash on a type-NUL entry.
            EntryType::Regular if header.as_old().linkflag[0] == 0 && raw_path.ends_with(b"/") => {
                Kind::Dir
            }
            EntryType::Regular | EntryType::Continuous => Kind::File { sparse: false },
            EntryType::GNUSparse => Kind::File { sparse: true },
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink,
            EntryType::Link => Kind::Hardlink,
            EntryType::Char => Kind::Char,
            EntryType::Block => Kind::Block,
            EntryType::Fifo => Kind::Fifo,
            _ => return None,
        })
    }
}

/// What was at an entry's path before the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    Nothing,
    /// A directory, kept because the entry is a directory too.
    Dir,
    /// An overlayfs whiteout, now removed.
    Whiteout,
}

/// Where an entry goes: its name in its opened parent directory.
#[derive(Clone, Copy)]
struct At<'a> {
    parent: &'a OwnedFd,
    name: &'a [u8],
    /// The entry's normalised path.
    comps: &'a [&'a [u8]],
    /// The entry's name as written in the archive, for messages.
    shown: &'a str,
}

/// Ownership, mode, times and xattrs of one entry.
struct Meta {
    uid: Uid,
    gid: Gid,
    mode: Mode,
    mtime: TimeSpec,
    xattrs: Vec<(CString, Vec<u8>)>,
}

struct Applier<'a> {
    /// The layer root: every path is resolved below it.
    root: OwnedFd,
    layer: &'a str,
    /// Directory mtimes, applied after all entries since creating children changes them.
    dir_times: BTreeMap<Vec<u8>, TimeSpec>,
    buf: Vec<u8>,
    /// Hole bytes the layer's remaining GNU sparse files may have.
    hole_budget: u64,
    /// Bytes read from the archive so far.
    archive_read: Rc<Cell<u64>>,
}

impl Applier<'_> {
    fn err(&self, path: &str, message: impl Display) -> Error {
        Error::Layer {
            digest: self.layer.to_owned(),
            message: format!("{path:?}: {message}"),
        }
    }

    fn archive_err(&self, message: String) -> Error {
        Error::Layer {
            digest: self.layer.to_owned(),
            message,
        }
    }

    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let entry_type = entry.header().entry_type();
        if entry_type == EntryType::XGlobalHeader {
            tracing::debug!(layer = self.layer, path = %shown, "ignoring pax global header");
            return Ok(());
        }
        let Some(kind) = Kind::of(entry.header(), &raw_path) else {
            tracing::warn!(layer = self.layer, path = %shown, entry_type = ?entry_type,
                "skipping tar entry of unsupported type");
            return Ok(());
        };
        if kind == (Kind::File { sparse: true }) {
            self.spend_hole_budget(entry, &shown)?;
        }
        let comps = normalize(&raw_path);
        let Some((&name, parent_comps)) = comps.split_last() else {
            // containerd ignores these too: the root's metadata is not the layer's to set.
            tracing::debug!(layer = self.layer, path = %shown, "ignoring entry for the layer root");
            return Ok(());
        };
        match whiteout::classify(&comps) {
            Whiteout::None => {}
            Whiteout::AufsMeta => {
                tracing::debug!(layer = self.layer, path = %shown, "skipping aufs metadata");
                return Ok(());
            }
            Whiteout::Invalid => return Err(self.err(&shown, "whiteout names no file")),
            Whiteout::Opaque => return self.make_opaque(parent_comps, &shown),
            Whiteout::Remove(hidden) => return self.make_whiteout(parent_comps, hidden, &shown),
        }

        let meta = self.read_meta(entry, &shown)?;
        let parent = self.open_parent(parent_comps, &shown)?;
        let at = At {
            parent: &parent,
            name,
            comps: &comps,
            shown: &shown,
        };
        match kind {
            Kind::File { sparse } => self.make_file(entry, &at, sparse, &meta),
            Kind::Dir => self.make_dir(&at, &meta),
            Kind::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.err(&shown, "symlink without a target"))?;
                self.clear(&at, false)?;
                symlinkat(&*target, &parent, name)
                    .map_err(|e| self.err(&shown, format_args!("creating symlink: {e}")))?;
                self.set_meta_at(&at, &meta, false)
            }
            Kind::Hardlink => self.make_hardlink(entry, &at),
            Kind::Fifo => self.make_node(&at, SFlag::S_IFIFO, 0, &meta),
            Kind::Char | Kind::Block => {
                let header = entry.header();
                let numbers = header
                    .device_major()
                    .and_then(|major| header.device_minor().map(|minor| major.zip(minor)));
                let (major, minor) = match numbers {
                    Ok(Some(numbers)) => numbers,
                    Ok(None) => return Err(self.err(&shown, "device without device numbers")),
                    Err(e) => return Err(self.err(&shown, format_args!("bad device number: {e}"))),
                };
                let sflag = if kind == Kind::Char {
                    SFlag::S_IFCHR
                } else {
                    SFlag::S_IFBLK
                };
                let dev = makedev(major.into(), minor.into());
                self.make_node(&at, sflag, dev, &meta)
            }
        }
    }

    /// Takes a GNU sparse file's holes off the layer's budget, refusing the layer (before the
    /// file is made) when they exceed it.
    fn spend_hole_budget<R: Read>(&mut self, entry: &tar::Entry<'_, R>, shown: &str) -> Result<()> {
        const GIB: f64 = (1u64 << 30) as f64;
        // The tar crate has checked the sparse map: the entry's size is the apparent size.
        let archived = entry
            .header()
            .entry_size()
            .map_err(|e| self.err(shown, format_args!("sparse file size: {e}")))?;
        let holes = entry.size().saturating_sub(archived);
        match self.hole_budget.checked_sub(holes) {
            Some(left) => {
                self.hole_budget = left;
                Ok(())
            }
            None => Err(self.err(
                shown,
                format_args!(
                    "sparse file with {:.1} GiB of holes: a layer's sparse files may have \
                     {} GiB of holes in all, and {:.1} GiB are left",
                    holes as f64 / GIB,
                    SPARSE_HOLE_BUDGET >> 30,
                    self.hole_budget as f64 / GIB
                ),
            )),
        }
    }

    fn make_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        at: &At<'_>,
        sparse: bool,
        meta: &Meta,
    ) -> Result<()> {
        self.clear(at, false)?;
        let fd = openat(
            at.parent,
            at.name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| self.err(at.shown, format_args!("creating file: {e}")))?;
        let file = File::from(fd);
        let copied = copy_sparse(entry, &file, &mut self.buf, &self.archive_read).map_err(|e| {
            // A full disk is the node's condition, not the layer's fault: keep the errno so
            // the daemon answers RESOURCE_EXHAUSTED rather than blaming the image.
            if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
                Error::io(
                    "unpack layer file",
                    format!("{} ({})", at.shown, self.layer),
                    e,
                )
            } else {
                self.err(at.shown, format_args!("copying contents: {e}"))
            }
        })?;
        // The sparse reader yields the file's full size, not the archived data size.
        if !sparse && copied != entry.size() {
            return Err(self.err(
                at.shown,
                format_args!("archive truncated: {copied} of {} bytes", entry.size()),
            ));
        }
        self.set_meta_fd(file.as_fd(), meta, at.shown)?;
        futimens(&file, &meta.mtime, &meta.mtime)
            .map_err(|e| self.err(at.shown, format_args!("setting times: {e}")))
    }

    fn make_dir(&mut self, at: &At<'_>, meta: &Meta) -> Result<()> {
        let existing = self.clear(at, true)?;
        if existing != Existing::Dir {
            mkdirat(at.parent, at.name, Mode::from_bits_truncate(0o700))
                .map_err(|e| self.err(at.shown, format_args!("creating directory: {e}")))?;
        }
        let fd = openat(
            at.parent,
            at.name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.err(at.shown, format_args!("opening directory: {e}")))?;
        self.set_meta_fd(fd.as_fd(), meta, at.shown)?;
        if existing == Existing::Whiteout {
            // `.wh.d` then `d/` in one layer means "lower d deleted, new d created": the new
            // directory must not merge with lower ones, which is what opaque says.
            set_xattr_fd(
                fd.as_fd(),
                whiteout::OVERLAY_OPAQUE_XATTR,
                whiteout::OVERLAY_OPAQUE_VALUE,
            )
            .map_err(|e| self.err(at.shown, format_args!("marking directory opaque: {e}")))?;
        }
        self.dir_times.insert(at.comps.join(&b'/'), meta.mtime);
        Ok(())
    }

    fn make_node(&mut self, at: &At<'_>, kind: SFlag, dev: u64, meta: &Meta) -> Result<()> {
        self.clear(at, false)?;
        mknodat(
            at.parent,
            at.name,
            kind,
            Mode::from_bits_truncate(0o600),
            dev,
        )
        .map_err(|e| self.err(at.shown, format_args!("creating node: {e}")))?;
        self.set_meta_at(at, meta, true)
    }

    /// Creates a hard link. Its header's metadata is not applied: the inode already has the
    /// metadata of its first entry, and some writers leave a link's mode and owner empty.
    fn make_hardlink<R: Read>(&mut self, entry: &tar::Entry<'_, R>, at: &At<'_>) -> Result<()> {
        let target_raw = entry
            .link_name_bytes()
            .ok_or_else(|| self.err(at.shown, "hard link without a target"))?;
        let target = normalize(&target_raw);
        let missing = format!(
            "hard link target {:?} does not exist in this layer",
            String::from_utf8_lossy(&target_raw)
        );
        let Some((&target_name, target_parent)) = target.split_last() else {
            return Err(self.err(at.shown, "hard link to the layer root"));
        };
        if target == at.comps {
            // GNU tar writes a file named twice on its command line as a link to itself.
            return match fstatat(at.parent, at.name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(_) => Ok(()),
                Err(_) => Err(self.err(at.shown, missing)),
            };
        }
        self.clear(at, false)?;
        let target_dir = match self.resolve_dir(target_parent) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR) => return Err(self.err(at.shown, missing)),
            Err(e) => {
                return Err(self.err(at.shown, format_args!("resolving hard link target: {e}")));
            }
        };
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself, as tar means.
        linkat(
            &target_dir,
            target_name,
            at.parent,
            at.name,
            AtFlags::empty(),
        )
        .map_err(|e| match e {
            Errno::ENOENT => self.err(at.shown, missing),
            e => self.err(at.shown, format_args!("creating hard link: {e}")),
        })
    }

    /// `<dir>/.wh.<hidden>`: a char device 0:0 named `<hidden>`.
    fn make_whiteout(&self, parent_comps: &[&[u8]], hidden: &[u8], shown: &str) -> Result<()> {
        let parent = self.open_parent(parent_comps, shown)?;
        match fstatat(&parent, hidden, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(_) => {
                // The OCI image spec: a whiteout only hides lower layers, never an entry of its
                // own layer, and `dest` started empty, so whatever is here is this layer's.
                tracing::debug!(layer = self.layer, path = %shown,
                    "whiteout of an entry of the same layer: keeping the entry");
                return Ok(());
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(self.err(shown, format_args!("inspecting whiteout target: {e}"))),
        }
        mknodat(
            &parent,
            hidden,
            SFlag::S_IFCHR,
            Mode::empty(),
            whiteout::OVERLAY_WHITEOUT_RDEV,
        )
        .map_err(|e| self.err(shown, format_args!("creating whiteout: {e}")))
    }

    /// `<dir>/.wh..wh..opq`: `<dir>` gets `trusted.overlay.opaque=y`.
    fn make_opaque(&self, dir_comps: &[&[u8]], shown: &str) -> Result<()> {
        let dir = self.open_parent(dir_comps, shown)?;
        // xattrs cannot be set through an O_PATH descriptor.
        let fd = openat(
            &dir,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.err(shown, format_args!("opening directory: {e}")))?;
        set_xattr_fd(
            fd.as_fd(),
            whiteout::OVERLAY_OPAQUE_XATTR,
            whiteout::OVERLAY_OPAQUE_VALUE,
        )
        .map_err(|e| self.err(shown, format_args!("marking directory opaque: {e}")))
    }

    /// Empties the entry's path, except that an existing directory is kept when `keep_dir`.
    fn clear(&mut self, at: &At<'_>, keep_dir: bool) -> Result<Existing> {
        let At {
            parent,
            name,
            comps,
            shown,
        } = *at;
        let st = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(Existing::Nothing),
            Err(e) => return Err(self.err(shown, format_args!("inspecting existing entry: {e}"))),
        };
        if is_dir(&st) {
            if keep_dir {
                return Ok(Existing::Dir);
            }
            remove_tree(parent, name)
                .map_err(|e| self.err(shown, format_args!("removing earlier directory: {e}")))?;
            // Forget the times of the removed directory and of everything below it.
            let mut path = comps.join(&b'/');
            self.dir_times.remove(&path);
            path.push(b'/');
            let mut end = path.clone();
            // Keys starting with "<path>/" sort between "<path>/" and "<path>0".
            if let Some(last) = end.last_mut() {
                *last = b'/' + 1;
            }
            let below: Vec<Vec<u8>> = self
                .dir_times
                .range(path..end)
                .map(|(k, _)| k.clone())
                .collect();
            for key in below {
                self.dir_times.remove(&key);
            }
            return Ok(Existing::Nothing);
        }
        unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)
            .map_err(|e| self.err(shown, format_args!("removing earlier entry: {e}")))?;
        if whiteout::is_overlay_whiteout(st.st_mode, st.st_rdev) {
            Ok(Existing::Whiteout)
        } else {
            Ok(Existing::Nothing)
        }
    }

    /// Opens `comps` as a directory, resolving symlinks as if the layer root were `/`.
    fn resolve_dir(&self, comps: &[&[u8]]) -> nix::Result<OwnedFd> {
        let path = if comps.is_empty() {
            b".".to_vec()
        } else {
            comps.join(&b'/')
        };
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        openat2(&self.root, path.as_slice(), how)
    }

    /// Opens an entry's parent directory, creating missing directories (mode 0755, root) below
    /// whatever part of the path already exists.
    fn open_parent(&self, comps: &[&[u8]], shown: &str) -> Result<OwnedFd> {
        let failed = |this: &Self, e: Errno| {
            let parent = String::from_utf8_lossy(&comps.join(&b'/')).into_owned();
            this.err(
                shown,
                format_args!("opening parent directory {parent:?}: {e}"),
            )
        };
        match self.resolve_dir(comps) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(failed(self, e)),
        }
        // Find the longest existing prefix by bisection: a prefix that does not resolve has no
        // longer prefix that does, and walking one component at a time would let a layer of
        // deep paths cost quadratic time.
        let (mut found, mut missing) = (0, comps.len());
        let mut dir = self.resolve_dir(&[]).map_err(|e| failed(self, e))?;
        while missing - found > 1 {
            let mid = found + (missing - found) / 2;
            match self.resolve_dir(&comps[..mid]) {
                Ok(fd) => (found, dir) = (mid, fd),
                Err(Errno::ENOENT) => missing = mid,
                Err(e) => return Err(failed(self, e)),
            }
        }
        for (depth, &name) in comps.iter().enumerate().skip(found) {
            dir = make_implicit_dir(&dir, name).map_err(|e| match e {
                // Only a dangling symlink makes resolution fail while the name exists.
                Errno::EEXIST => {
                    let at = String::from_utf8_lossy(&comps[..=depth].join(&b'/')).into_owned();
                    self.err(
                        shown,
                        format_args!(
                            "parent {at:?} is a symlink to a directory that does not exist"
                        ),
                    )
                }
                e => failed(self, e),
            })?;
        }
        Ok(dir)
    }

    fn read_meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, shown: &str) -> Result<Meta> {
        let header = entry.header();
        let bad = |field: &str, e: io::Error| self.err(shown, format_args!("bad {field}: {e}"));
        let uid = header.uid().map_err(|e| bad("uid", e))?;
        let gid = header.gid().map_err(|e| bad("gid", e))?;
        let uid =
            u32::try_from(uid).map_err(|_| self.err(shown, format_args!("uid {uid} too large")))?;
        let gid =
            u32::try_from(gid).map_err(|_| self.err(shown, format_args!("gid {gid} too large")))?;
        let mode = header.mode().map_err(|e| bad("mode", e))? & 0o7777;
        let header_mtime = header.mtime().map_err(|e| bad("mtime", e))?;
        let mut mtime = TimeSpec::new(i64::try_from(header_mtime).unwrap_or(i64::MAX), 0);
        let mut xattrs = Vec::new();
        let extensions = entry
            .pax_extensions()
            .map_err(|e| self.err(shown, format_args!("bad pax header: {e}")))?;
        for ext in extensions.into_iter().flatten() {
            let ext = ext.map_err(|e| self.err(shown, format_args!("bad pax header: {e}")))?;
            let key = ext.key_bytes();
            if key == b"mtime" {
                match parse_pax_time(ext.value_bytes()) {
                    Some((secs, nanos)) => mtime = TimeSpec::new(secs, nanos),
                    None => tracing::warn!(layer = self.layer, path = %shown,
                        value = %String::from_utf8_lossy(ext.value_bytes()),
                        "ignoring unparsable pax mtime"),
                }
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if whiteout::is_overlay_xattr(name) {
                    tracing::warn!(layer = self.layer, path = %shown,
                        xattr = %String::from_utf8_lossy(name),
                        "dropping overlayfs xattr carried by the layer");
                    continue;
                }
                let name = CString::new(name)
                    .map_err(|_| self.err(shown, "xattr name contains a NUL byte"))?;
                xattrs.push((name, ext.value_bytes().to_vec()));
            }
        }
        Ok(Meta {
            uid: Uid::from_raw(uid),
            gid: Gid::from_raw(gid),
            mode: Mode::from_bits_retain(mode),
            mtime,
            xattrs,
        })
    }

    /// Owner, mode and xattrs through an open descriptor. chown comes first because it clears
    /// setuid/setgid and `security.capability`.
    fn set_meta_fd(&self, fd: BorrowedFd<'_>, meta: &Meta, shown: &str) -> Result<()> {
        fchown(fd, Some(meta.uid), Some(meta.gid))
            .map_err(|e| self.err(shown, format_args!("chown: {e}")))?;
        fchmod(fd, meta.mode).map_err(|e| self.err(shown, format_args!("chmod: {e}")))?;
        for (name, value) in &meta.xattrs {
            self.xattr_outcome(set_xattr_fd(fd, name, value), name, shown)?;
        }
        Ok(())
    }

    /// Owner, mode (unless a symlink), xattrs and times by name, never following `name`.
    fn set_meta_at(&self, at: &At<'_>, meta: &Meta, chmod: bool) -> Result<()> {
        let At {
            parent,
            name,
            shown,
            ..
        } = *at;
        fchownat(
            parent,
            name,
            Some(meta.uid),
            Some(meta.gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.err(shown, format_args!("chown: {e}")))?;
        if chmod {
            fchmodat(parent, name, meta.mode, FchmodatFlags::NoFollowSymlink)
                .map_err(|e| self.err(shown, format_args!("chmod: {e}")))?;
        }
        if !meta.xattrs.is_empty() {
            // Devices and fifos must not be opened, and a symlink cannot be: name the object
            // through its parent's descriptor, with the final component not followed.
            let mut path = format!("/proc/self/fd/{}/", parent.as_raw_fd()).into_bytes();
            path.extend_from_slice(name);
            let path =
                CString::new(path).map_err(|_| self.err(shown, "name contains a NUL byte"))?;
            for (xname, value) in &meta.xattrs {
                self.xattr_outcome(set_xattr_nofollow(&path, xname, value), xname, shown)?;
            }
        }
        utimensat(
            parent,
            name,
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| self.err(shown, format_args!("setting times: {e}")))
    }

    fn xattr_outcome(&self, outcome: io::Result<()>, name: &CStr, shown: &str) -> Result<()> {
        match outcome {
            Ok(()) => Ok(()),
            // The filesystem or the object type does not take this namespace (user.* on a
            // symlink, say): the image still works without it.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP | libc::EPERM)) => {
                tracing::warn!(layer = self.layer, path = %shown, xattr = ?name, error = %e,
                    "filesystem refused xattr, skipping it");
                Ok(())
            }
            Err(e) => Err(self.err(shown, format_args!("setting xattr {name:?}: {e}"))),
        }
    }

    fn apply_dir_times(&self) -> Result<()> {
        for (path, mtime) in &self.dir_times {
            let comps: Vec<&[u8]> = path.split(|b| *b == b'/').collect();
            let Some((&name, parent_comps)) = comps.split_last() else {
                continue;
            };
            let shown = String::from_utf8_lossy(path);
            // A directory later replaced through a symlinked path may be gone: nothing to date.
            let parent = match self.resolve_dir(parent_comps) {
                Ok(fd) => fd,
                Err(Errno::ENOENT | Errno::ENOTDIR) => continue,
                Err(e) => return Err(self.err(&shown, format_args!("opening directory: {e}"))),
            };
            match fstatat(&parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if is_dir(&st) => {}
                Ok(_) | Err(Errno::ENOENT) => continue,
                Err(e) => return Err(self.err(&shown, format_args!("inspecting directory: {e}"))),
            }
            utimensat(&parent, name, mtime, mtime, UtimensatFlags::NoFollowSymlink)
                .map_err(|e| self.err(&shown, format_args!("setting times: {e}")))?;
        }
        Ok(())
    }
}

/// Splits an entry name into components: leading `/` and `.` dropped, `..` clamped at the root.
fn normalize(raw: &[u8]) -> Vec<&[u8]> {
    let mut comps = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                comps.pop();
            }
            comp => comps.push(comp),
        }
    }
    comps
}

/// Parses a pax time (`1700000000.123456789`, maybe negative) into seconds and nanoseconds.
fn parse_pax_time(value: &[u8]) -> Option<(i64, i64)> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    // Digits beyond nanoseconds are truncated, as Go's archive/tar does.
    let nanos = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(9)
        .fold(0i64, |n, digit| n * 10 + i64::from(digit - b'0'));
    Some(match (negative, nanos) {
        (false, _) => (secs, nanos),
        (true, 0) => (-secs, 0),
        (true, _) => (-secs - 1, 1_000_000_000 - nanos),
    })
}

fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn make_implicit_dir(parent: &OwnedFd, name: &[u8]) -> nix::Result<OwnedFd> {
    mkdirat(parent, name, Mode::from_bits_truncate(0o755))?;
    let fd = openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // mkdirat is subject to the umask.
    fchmod(&fd, Mode::from_bits_truncate(0o755))?;
    Ok(fd)
}

/// Copies an entry's data, leaving all-zero chunks as holes, so sparse files (a huge
/// `/var/log/lastlog`, say) stay sparse. Returns the file size. `archive_read` counts the
/// bytes read from the archive: a chunk read without any is a GNU sparse file's hole, zeros
/// that need no comparing.
fn copy_sparse(
    src: &mut impl Read,
    file: &File,
    buf: &mut [u8],
    archive_read: &Cell<u64>,
) -> io::Result<u64> {
    let mut offset = 0u64;
    let mut trailing_hole = false;
    loop {
        let before = archive_read.get();
        let n = read_full(src, buf)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        // A slice comparison is a memcmp: a huge sparse file is mostly zero chunks, and a
        // byte-by-byte scan made its holes cost minutes of CPU.
        trailing_hole = archive_read.get() == before || chunk == &ZEROS[..n];
        if !trailing_hole {
            file.write_all_at(chunk, offset)?;
        }
        offset += n as u64;
    }
    if trailing_hole {
        file.set_len(offset)?;
    }
    Ok(offset)
}

fn read_full(src: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn names_in(dir: &mut Dir) -> nix::Result<Vec<CString>> {
    let mut names = Vec::new();
    for entry in dir.iter() {
        let name = entry?.file_name().to_owned();
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            names.push(name);
        }
    }
    Ok(names)
}

fn open_dir_nofollow<P: ?Sized + nix::NixPath>(
    parent: BorrowedFd<'_>,
    name: &P,
) -> nix::Result<Dir> {
    Dir::openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Removes the directory `name` and everything below it, following no symlink.
fn remove_tree(parent: &OwnedFd, name: &[u8]) -> nix::Result<()> {
    fn empty(dir: &mut Dir) -> nix::Result<()> {
        for child in names_in(dir)? {
            let st = fstatat(&*dir, child.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
            if is_dir(&st) {
                let mut sub = open_dir_nofollow(dir.as_fd(), child.as_c_str())?;
                empty(&mut sub)?;
                unlinkat(&*dir, child.as_c_str(), UnlinkatFlags::RemoveDir)?;
            } else {
                unlinkat(&*dir, child.as_c_str(), UnlinkatFlags::NoRemoveDir)?;
            }
        }
        Ok(())
    }
    let mut dir = open_dir_nofollow(parent.as_fd(), name)?;
    empty(&mut dir)?;
    unlinkat(parent, name, UnlinkatFlags::RemoveDir)
}

fn usage_of(root: &OwnedFd) -> nix::Result<LayerStats> {
    fn walk(
        dir: &mut Dir,
        seen: &mut HashSet<(u64, u64)>,
        stats: &mut LayerStats,
    ) -> nix::Result<()> {
        for child in names_in(dir)? {
            let st = fstatat(&*dir, child.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
            if st.st_nlink > 1 && !is_dir(&st) && !seen.insert((st.st_dev, st.st_ino)) {
                continue;
            }
            stats.inodes += 1;
            stats.bytes += u64::try_from(st.st_blocks).unwrap_or(0) * 512;
            if is_dir(&st) {
                let mut sub = open_dir_nofollow(dir.as_fd(), child.as_c_str())?;
                walk(&mut sub, seen, stats)?;
            }
        }
        Ok(())
    }
    let mut dir = open_dir_nofollow(root.as_fd(), ".")?;
    let mut stats = LayerStats::default();
    walk(&mut dir, &mut HashSet::new(), &mut stats)?;
    Ok(stats)
}

fn set_xattr_fd(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated, `value` is valid for `value.len()` bytes, and `fd` is
    // borrowed, so it stays open for the duration of the call.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_xattr_nofollow(path: &CStr, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: `path` and `name` are NUL-terminated and `value` is valid for `value.len()` bytes.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tar::{Builder, Header};

    const LAYER: &str = "sha256:0123";

    /// One tar entry, written with a raw header so hostile names reach the archive unchanged.
    #[derive(Clone)]
    struct Ent<'a> {
        name: &'a str,
        kind: EntryType,
        data: &'a [u8],
        link: &'a str,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
        dev: (u32, u32),
        pax: Vec<(&'a str, &'a [u8])>,
    }

    impl<'a> Ent<'a> {
        fn new(name: &'a str, kind: EntryType) -> Self {
            Ent {
                name,
                kind,
                data: b"",
                link: "",
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: 1_600_000_000,
                dev: (0, 0),
                pax: Vec::new(),
            }
        }
        fn mode(mut self, mode: u32) -> Self {
            self.mode = mode;
            self
        }
        fn owner(mut self, uid: u64, gid: u64) -> Self {
            self.uid = uid;
            self.gid = gid;
            self
        }
        fn mtime(mut self, mtime: u64) -> Self {
            self.mtime = mtime;
            self
        }
        fn pax(mut self, key: &'a str, value: &'a [u8]) -> Self {
            self.pax.push((key, value));
            self
        }
    }

    fn file<'a>(name: &'a str, data: &'a [u8]) -> Ent<'a> {
        Ent {
            data,
            ..Ent::new(name, EntryType::Regular)
        }
    }
    fn dir(name: &str) -> Ent<'_> {
        Ent::new(name, EntryType::Directory).mode(0o755)
    }
    fn symlink<'a>(name: &'a str, target: &'a str) -> Ent<'a> {
        Ent {
            link: target,
            ..Ent::new(name, EntryType::Symlink).mode(0o777)
        }
    }
    fn hardlink<'a>(name: &'a str, target: &'a str) -> Ent<'a> {
        Ent {
            link: target,
            ..Ent::new(name, EntryType::Link)
        }
    }
    fn node(name: &str, kind: EntryType, major: u32, minor: u32) -> Ent<'_> {
        Ent {
            dev: (major, minor),
            ..Ent::new(name, kind)
        }
    }

    fn tar_of(entries: &[Ent<'_>]) -> Vec<u8> {
        let mut builder = Builder::new(Vec::new());
        for e in entries {
            if !e.pax.is_empty() {
                builder
                    .append_pax_extensions(e.pax.iter().copied())
                    .expect("pax header");
            }
            let mut h = Header::new_gnu();
            let (name, link) = (e.name.as_bytes(), e.link.as_bytes());
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
            h.set_entry_type(e.kind);
            if e.kind == EntryType::Regular && e.name.ends_with('/') {
                // What a pre-POSIX tar writes for a directory.
                h.as_old_mut().linkflag = [0];
            }
            h.set_size(e.data.len() as u64);
            h.set_mode(e.mode);
            h.set_uid(e.uid);
            h.set_gid(e.gid);
            h.set_mtime(e.mtime);
            if matches!(e.kind, EntryType::Char | EntryType::Block) {
                h.set_device_major(e.dev.0).expect("major");
                h.set_device_minor(e.dev.1).expect("minor");
            }
            h.set_cksum();
            builder.append(&h, e.data).expect("append");
        }
        builder.into_inner().expect("finish tar")
    }

    /// A layer root `<tmp>/fs`, so anything escaping into `<tmp>` is seen too.
    struct Layer {
        tmp: tempfile::TempDir,
    }

    impl Layer {
        fn new() -> Self {
            let tmp = tempfile::tempdir().expect("tempdir");
            fs::create_dir(tmp.path().join("fs")).expect("mkdir fs");
            Layer { tmp }
        }
        fn root(&self) -> PathBuf {
            self.tmp.path().join("fs")
        }
        fn path(&self, rel: &str) -> PathBuf {
            self.root().join(rel)
        }
        fn apply(&self, entries: &[Ent<'_>]) -> Result<LayerStats> {
            apply_layer(&tar_of(entries)[..], &self.root(), LAYER)
        }
        fn assert_nothing_beside_root(&self) {
            let names: Vec<_> = fs::read_dir(self.tmp.path())
                .expect("read tmp")
                .map(|e| e.expect("dirent").file_name())
                .collect();
            assert_eq!(names, vec![std::ffi::OsString::from("fs")]);
        }
    }

    fn applied(entries: &[Ent<'_>]) -> Layer {
        let layer = Layer::new();
        layer.apply(entries).expect("apply layer");
        layer
    }

    /// A unique path under the real /tmp, removed when dropped.
    struct HostPath(PathBuf);

    impl HostPath {
        fn new(tag: &str) -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            HostPath(PathBuf::from(format!(
                "/tmp/bungeo-unpack-{tag}-{}-{n}",
                std::process::id()
            )))
        }
        fn name(&self) -> &str {
            self.0
                .file_name()
                .and_then(|n| n.to_str())
                .expect("utf-8 name")
        }
        fn str(&self) -> &str {
            self.0.to_str().expect("utf-8 path")
        }
        fn assert_absent(&self) {
            assert!(
                fs::symlink_metadata(&self.0).is_err(),
                "{} was created on the host",
                self.0.display()
            );
        }
    }

    impl Drop for HostPath {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
            let _ = fs::remove_file(&self.0);
        }
    }

    fn lstat(path: &Path) -> fs::Metadata {
        fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()))
    }

    fn get_xattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
        let path = CString::new(path.as_os_str().as_bytes()).expect("path");
        let name = CString::new(name).expect("name");
        let mut buf = vec![0u8; 256];
        // SAFETY: both strings are NUL-terminated and `buf` is writable for `buf.len()` bytes.
        let n = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    fn layer_message(result: Result<LayerStats>) -> String {
        match result {
            Err(Error::Layer { digest, message }) => {
                assert_eq!(digest, LAYER);
                message
            }
            other => panic!("expected a layer error, got {other:?}"),
        }
    }

    // ---- pure helpers ----

    #[test]
    fn normalize_strips_and_clamps() {
        let n = |s: &str| -> Vec<String> {
            normalize(s.as_bytes())
                .iter()
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect()
        };
        assert_eq!(n("etc/passwd"), ["etc", "passwd"]);
        assert_eq!(n("/etc//passwd"), ["etc", "passwd"]);
        assert_eq!(n("./etc/./passwd/"), ["etc", "passwd"]);
        assert_eq!(n("../../etc/x"), ["etc", "x"]);
        assert_eq!(n("a/b/../../../c"), ["c"]);
        assert_eq!(n("a/b/.."), ["a"]);
        assert!(n("./").is_empty());
        assert!(n("..").is_empty());
        assert!(n("").is_empty());
        assert_eq!(n("..."), ["..."]);
    }

    #[test]
    fn pax_times_parse() {
        assert_eq!(parse_pax_time(b"1600000000"), Some((1_600_000_000, 0)));
        assert_eq!(
            parse_pax_time(b"1600000000.123456789"),
            Some((1_600_000_000, 123_456_789))
        );
        assert_eq!(parse_pax_time(b"1.5"), Some((1, 500_000_000)));
        assert_eq!(parse_pax_time(b"1.1234567891"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time(b"-3"), Some((-3, 0)));
        assert_eq!(parse_pax_time(b"12."), Some((12, 0)));
        assert_eq!(parse_pax_time(b""), None);
        assert_eq!(parse_pax_time(b".5"), None);
        assert_eq!(parse_pax_time(b"1e9"), None);
        assert_eq!(parse_pax_time(b"1.2.3"), None);
        assert_eq!(parse_pax_time(b"+1"), None);
    }

    // ---- hostile archives ----

    #[test]
    fn dotdot_name_is_clamped_at_the_layer_root() {
        let host = HostPath::new("dotdot");
        let name = format!("../../../../tmp/{}", host.name());
        let layer = applied(&[file(&name, b"inside")]);
        host.assert_absent();
        layer.assert_nothing_beside_root();
        let landed = layer.path(&format!("tmp/{}", host.name()));
        assert_eq!(fs::read(landed).expect("read"), b"inside");
    }

    #[test]
    fn absolute_name_lands_inside_the_layer() {
        let host = HostPath::new("abs");
        let layer = applied(&[file(host.str(), b"inside")]);
        host.assert_absent();
        let landed = layer.path(&format!("tmp/{}", host.name()));
        assert_eq!(fs::read(landed).expect("read"), b"inside");
    }

    #[test]
    fn absolute_symlink_parent_cannot_reach_the_host() {
        let host = HostPath::new("evil-dir");
        fs::create_dir(&host.0).expect("host dir");
        let pwned = host.0.join("pwned");

        // The symlink's target does not exist inside the layer: an error, nothing written.
        let layer = Layer::new();
        let message =
            layer_message(layer.apply(&[symlink("evil", host.str()), file("evil/pwned", b"x")]));
        assert!(message.contains("does not exist"), "{message}");
        assert!(fs::symlink_metadata(&pwned).is_err());
        assert!(lstat(&layer.path("evil")).file_type().is_symlink());
        assert!(fs::symlink_metadata(layer.path("tmp")).is_err());

        // When it exists inside the layer, the file goes there.
        let in_layer = format!("tmp/{}/", host.name());
        let layer = applied(&[
            dir("tmp/"),
            dir(&in_layer),
            symlink("evil", host.str()),
            file("evil/pwned", b"x"),
        ]);
        assert!(fs::symlink_metadata(&pwned).is_err());
        let landed = layer.path(&format!("tmp/{}/pwned", host.name()));
        assert_eq!(fs::read(landed).expect("read"), b"x");
        assert_eq!(fs::read_dir(&host.0).expect("host dir").count(), 0);
        layer.assert_nothing_beside_root();
    }

    #[test]
    fn dotdot_symlink_parent_is_clamped_at_the_layer_root() {
        let host = HostPath::new("up");
        let through = format!("up/tmp/{}", host.name());
        let layer = applied(&[symlink("up", "../../../.."), file(&through, b"x")]);
        host.assert_absent();
        layer.assert_nothing_beside_root();
        assert_eq!(
            fs::read_link(layer.path("up")).expect("readlink"),
            Path::new("../../../..")
        );
        let landed = layer.path(&format!("tmp/{}", host.name()));
        assert_eq!(fs::read(landed).expect("read"), b"x");
    }

    #[test]
    fn hard_links_to_host_files_are_refused() {
        let before = fs::metadata("/etc/passwd").expect("host passwd");
        for target in ["/etc/passwd", "../../../etc/passwd", "etc/passwd"] {
            let layer = Layer::new();
            let message = layer_message(layer.apply(&[hardlink("pw", target)]));
            assert!(
                message.contains("does not exist in this layer"),
                "{message}"
            );
            assert!(fs::symlink_metadata(layer.path("pw")).is_err());
            layer.assert_nothing_beside_root();
        }
        // Through a symlinked parent as well.
        let layer = Layer::new();
        let result = layer.apply(&[symlink("l", "/etc"), hardlink("pw", "l/passwd")]);
        assert!(layer_message(result).contains("does not exist"));
        assert!(fs::symlink_metadata(layer.path("pw")).is_err());

        // A link to a symlink pointing at the host links the symlink, not its target.
        let layer = applied(&[symlink("s", "/etc/passwd"), hardlink("pw", "s")]);
        assert!(lstat(&layer.path("pw")).file_type().is_symlink());
        assert_eq!(
            lstat(&layer.path("pw")).ino(),
            lstat(&layer.path("s")).ino()
        );

        // The host name resolves to the layer's own file when there is one.
        let layer = applied(&[
            dir("etc/"),
            file("etc/passwd", b"root:x:0:0::/:/bin/sh\n"),
            hardlink("pw", "../../../etc/passwd"),
        ]);
        let pw = lstat(&layer.path("pw"));
        assert_eq!(pw.ino(), lstat(&layer.path("etc/passwd")).ino());
        assert_ne!(pw.ino(), before.ino());

        let after = fs::metadata("/etc/passwd").expect("host passwd");
        assert_eq!((after.ino(), after.nlink()), (before.ino(), before.nlink()));
    }

    #[test]
    fn regular_file_replaces_a_symlink_instead_of_writing_through_it() {
        let existing = HostPath::new("victim");
        fs::write(&existing.0, b"original").expect("host file");
        let missing = HostPath::new("victim-new");
        let layer = applied(&[
            symlink("x", existing.str()),
            file("x", b"new"),
            symlink("y", missing.str()),
            file("y", b"new"),
            symlink("z", missing.str()),
            node("z", EntryType::Fifo, 0, 0),
        ]);
        assert_eq!(fs::read(&existing.0).expect("host file"), b"original");
        missing.assert_absent();
        for name in ["x", "y"] {
            assert!(lstat(&layer.path(name)).file_type().is_file());
            assert_eq!(fs::read(layer.path(name)).expect("read"), b"new");
        }
        assert!(lstat(&layer.path("z")).file_type().is_fifo());
    }

    #[test]
    fn directory_replaces_a_symlink_instead_of_changing_its_target() {
        let host = HostPath::new("victim-dir");
        fs::create_dir(&host.0).expect("host dir");
        fs::set_permissions(&host.0, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("chmod");
        let before = lstat(&host.0);
        let layer = applied(&[
            symlink("d", host.str()),
            dir("d/").mode(0o777).owner(4242, 4242),
            file("d/f", b"x"),
        ]);
        let after = lstat(&host.0);
        assert_eq!(
            (after.mode(), after.uid(), after.mtime()),
            (before.mode(), before.uid(), before.mtime())
        );
        assert_eq!(fs::read_dir(&host.0).expect("host dir").count(), 0);
        let d = lstat(&layer.path("d"));
        assert!(d.is_dir());
        assert_eq!((d.mode() & 0o7777, d.uid()), (0o777, 4242));
        assert_eq!(fs::read(layer.path("d/f")).expect("read"), b"x");
    }

    #[test]
    fn whiteouts_through_a_symlink_cannot_touch_the_host() {
        let host = HostPath::new("wh-dir");
        fs::create_dir(&host.0).expect("host dir");
        fs::write(host.0.join("victim"), b"keep").expect("host file");

        let layer = Layer::new();
        assert!(
            layer
                .apply(&[symlink("s", host.str()), file("s/.wh.victim", b"")])
                .is_err()
        );
        let layer = Layer::new();
        assert!(
            layer
                .apply(&[symlink("s", host.str()), file("s/.wh..wh..opq", b"")])
                .is_err()
        );
        assert!(lstat(&host.0.join("victim")).is_file());
        assert!(get_xattr(&host.0, "trusted.overlay.opaque").is_err());

        // Through `..` the whiteout lands in the layer's own copy of the path.
        let through = format!("up/tmp/{}/.wh.victim", host.name());
        let layer = applied(&[symlink("up", "../../.."), file(&through, b"")]);
        assert!(lstat(&host.0.join("victim")).is_file());
        let wh = lstat(&layer.path(&format!("tmp/{}/victim", host.name())));
        assert!(wh.file_type().is_char_device());
        assert_eq!(wh.rdev(), 0);
    }

    #[test]
    fn replacing_a_hard_link_leaves_the_other_name_alone() {
        let layer = applied(&[file("a", b"one"), hardlink("b", "a"), file("b", b"two")]);
        assert_eq!(fs::read(layer.path("a")).expect("read"), b"one");
        assert_eq!(fs::read(layer.path("b")).expect("read"), b"two");
        assert_eq!(lstat(&layer.path("a")).nlink(), 1);
    }

    // ---- ordinary content ----

    #[test]
    fn files_directories_modes_owners_and_times() {
        let layer = applied(&[
            dir("d/").mode(0o750).owner(10, 20).mtime(1_000_000_000),
            file("d/plain", b"hello")
                .mode(0o640)
                .owner(1234, 5678)
                .mtime(1_500_000_000),
            file("d/suid", b"#!").mode(0o4755).owner(1000, 1000),
            file("d/sgid", b"#!").mode(0o2711).owner(0, 50),
            dir("tmp/").mode(0o1777),
            dir("shared/").mode(0o2775).owner(0, 100),
            file("shared/f", b""),
            file("old-style-dir/", b"").mode(0o755),
        ]);
        let d = lstat(&layer.path("d"));
        assert!(d.is_dir());
        assert_eq!((d.mode() & 0o7777, d.uid(), d.gid()), (0o750, 10, 20));
        // Children were created after the directory's entry: its time is still the archive's.
        assert_eq!((d.mtime(), d.atime()), (1_000_000_000, 1_000_000_000));

        let plain = lstat(&layer.path("d/plain"));
        assert_eq!(fs::read(layer.path("d/plain")).expect("read"), b"hello");
        assert_eq!(
            (plain.mode() & 0o7777, plain.uid(), plain.gid()),
            (0o640, 1234, 5678)
        );
        assert_eq!(
            (plain.mtime(), plain.atime()),
            (1_500_000_000, 1_500_000_000)
        );

        // chown clears setuid, so these show the mode was applied after the owner.
        let suid = lstat(&layer.path("d/suid"));
        assert_eq!((suid.mode() & 0o7777, suid.uid()), (0o4755, 1000));
        let sgid = lstat(&layer.path("d/sgid"));
        assert_eq!((sgid.mode() & 0o7777, sgid.gid()), (0o2711, 50));
        assert_eq!(lstat(&layer.path("tmp")).mode() & 0o7777, 0o1777);
        assert_eq!(lstat(&layer.path("shared")).mode() & 0o7777, 0o2775);
        assert_eq!(lstat(&layer.path("shared")).mtime(), 1_600_000_000);
        assert!(lstat(&layer.path("old-style-dir")).is_dir());
    }

    #[test]
    fn implicit_parents_are_created() {
        let layer = applied(&[
            file("a/b/c/f", b"x"),
            dir("p/").mode(0o700),
            dir("p/q/").mode(0o700),
            symlink("p/l", "q"),
            file("p/l/r/s/t/u/v", b"deep"),
        ]);
        for dir in ["a", "a/b", "a/b/c", "p/q/r", "p/q/r/s/t/u"] {
            let meta = lstat(&layer.path(dir));
            assert!(meta.is_dir());
            assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o755, 0));
        }
        assert_eq!(fs::read(layer.path("a/b/c/f")).expect("read"), b"x");
        assert_eq!(
            fs::read(layer.path("p/q/r/s/t/u/v")).expect("read"),
            b"deep"
        );
        assert_eq!(lstat(&layer.path("p/q")).mode() & 0o7777, 0o700);

        let layer = Layer::new();
        let result = layer.apply(&[dir("p/"), symlink("p/l", "gone"), file("p/l/r/s", b"")]);
        let message = layer_message(result);
        assert!(message.contains("\"p/l\" is a symlink"), "{message}");
    }

    #[test]
    fn pax_mtime_keeps_nanoseconds() {
        let layer = applied(&[
            dir("d/").pax("mtime", b"1600000000.25"),
            file("f", b"x").pax("mtime", b"1600000000.123456789"),
            symlink("l", "f").pax("mtime", b"1500000000.5"),
        ]);
        let f = lstat(&layer.path("f"));
        assert_eq!((f.mtime(), f.mtime_nsec()), (1_600_000_000, 123_456_789));
        assert_eq!((f.atime(), f.atime_nsec()), (1_600_000_000, 123_456_789));
        let d = lstat(&layer.path("d"));
        assert_eq!((d.mtime(), d.mtime_nsec()), (1_600_000_000, 250_000_000));
        let l = lstat(&layer.path("l"));
        assert_eq!((l.mtime(), l.mtime_nsec()), (1_500_000_000, 500_000_000));
    }

    #[test]
    fn pax_uid_and_gid_beyond_the_octal_field() {
        let layer = applied(&[file("f", b"x")
            .pax("uid", b"3000000000")
            .pax("gid", b"3000000001")]);
        let f = lstat(&layer.path("f"));
        assert_eq!((f.uid(), f.gid()), (3_000_000_000, 3_000_000_001));
    }

    #[test]
    fn xattrs_from_pax_headers() {
        let layer = Layer::new();
        // user.* support depends on the filesystem; only ENOTSUP is an acceptable absence.
        let probe = layer.path("probe");
        fs::write(&probe, b"").expect("probe");
        let probe_c = CString::new(probe.as_os_str().as_bytes()).expect("path");
        let user_xattrs = set_xattr_nofollow(&probe_c, c"user.probe", b"1");
        if let Err(e) = &user_xattrs {
            assert_eq!(e.raw_os_error(), Some(libc::ENOTSUP), "{e}");
        }
        fs::remove_file(&probe).expect("rm probe");

        layer
            .apply(&[
                file("f", b"x")
                    .pax("SCHILY.xattr.user.foo", b"bar")
                    .pax("SCHILY.xattr.trusted.bungeo", b"\x00\x01bin")
                    .pax("SCHILY.xattr.trusted.overlay.opaque", b"y")
                    .pax("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
                dir("d/").pax("SCHILY.xattr.trusted.bungeo", b"dir"),
                // user.* is not allowed on symlinks: skipped, not fatal.
                symlink("l", "f")
                    .pax("SCHILY.xattr.user.foo", b"bar")
                    .pax("SCHILY.xattr.trusted.bungeo", b"link"),
                node("p", EntryType::Fifo, 0, 0).pax("SCHILY.xattr.trusted.bungeo", b"fifo"),
            ])
            .expect("apply");
        match user_xattrs {
            Ok(()) => assert_eq!(
                get_xattr(&layer.path("f"), "user.foo").expect("user.foo"),
                b"bar"
            ),
            Err(_) => assert!(get_xattr(&layer.path("f"), "user.foo").is_err()),
        }
        assert_eq!(
            get_xattr(&layer.path("f"), "trusted.bungeo").expect("trusted"),
            b"\x00\x01bin"
        );
        assert!(get_xattr(&layer.path("f"), "trusted.overlay.opaque").is_err());
        assert!(get_xattr(&layer.path("f"), "trusted.overlay.redirect").is_err());
        assert_eq!(
            get_xattr(&layer.path("d"), "trusted.bungeo").expect("dir"),
            b"dir"
        );
        assert_eq!(
            get_xattr(&layer.path("l"), "trusted.bungeo").expect("link"),
            b"link"
        );
        assert!(get_xattr(&layer.path("l"), "user.foo").is_err());
        // The link's xattr went on the link, not on its target.
        assert_eq!(
            get_xattr(&layer.path("f"), "trusted.bungeo").expect("trusted"),
            b"\x00\x01bin"
        );
        assert_eq!(
            get_xattr(&layer.path("p"), "trusted.bungeo").expect("fifo"),
            b"fifo"
        );
    }

    #[test]
    fn hard_links_share_an_inode() {
        let layer = applied(&[
            dir("bin/"),
            file("bin/busybox", b"ELF").mode(0o755),
            hardlink("bin/sh", "bin/busybox"),
            hardlink("bin/ls", "./bin/busybox"),
            hardlink("sbin/init", "/bin/busybox"),
        ]);
        let ino = lstat(&layer.path("bin/busybox")).ino();
        for name in ["bin/sh", "bin/ls", "sbin/init"] {
            assert_eq!(lstat(&layer.path(name)).ino(), ino, "{name}");
        }
        assert_eq!(lstat(&layer.path("bin/busybox")).nlink(), 4);
        // A self-link (GNU tar, file named twice) is a no-op.
        let layer = applied(&[file("f", b"x"), hardlink("f", "f")]);
        assert_eq!(fs::read(layer.path("f")).expect("read"), b"x");
    }

    #[test]
    fn symlink_targets_are_stored_verbatim() {
        let layer = applied(&[
            symlink("rel", "../usr/bin/env"),
            symlink("abs", "/etc/shadow"),
            symlink("dangling", "nowhere/at/all"),
            symlink("self", "self").owner(7, 8),
        ]);
        for (name, target) in [
            ("rel", "../usr/bin/env"),
            ("abs", "/etc/shadow"),
            ("dangling", "nowhere/at/all"),
        ] {
            assert_eq!(
                fs::read_link(layer.path(name)).expect("readlink"),
                Path::new(target)
            );
        }
        let own = lstat(&layer.path("self"));
        assert_eq!((own.uid(), own.gid()), (7, 8));
    }

    #[test]
    fn fifos_and_device_nodes() {
        let layer = applied(&[
            dir("dev/"),
            node("dev/null", EntryType::Char, 1, 3)
                .mode(0o666)
                .owner(0, 5),
            node("dev/loop0", EntryType::Block, 7, 0)
                .mode(0o660)
                .owner(0, 6),
            node("dev/big", EntryType::Char, 300, 70000).mode(0o600),
            node("run/fifo", EntryType::Fifo, 0, 0)
                .mode(0o620)
                .owner(33, 33),
        ]);
        let null = lstat(&layer.path("dev/null"));
        assert!(null.file_type().is_char_device());
        assert_eq!(
            (null.rdev(), null.mode() & 0o7777, null.gid()),
            (libc::makedev(1, 3), 0o666, 5)
        );
        let lp = lstat(&layer.path("dev/loop0"));
        assert!(lp.file_type().is_block_device());
        assert_eq!(
            (lp.rdev(), lp.mode() & 0o7777),
            (libc::makedev(7, 0), 0o660)
        );
        assert_eq!(
            lstat(&layer.path("dev/big")).rdev(),
            libc::makedev(300, 70000)
        );
        let fifo = lstat(&layer.path("run/fifo"));
        assert!(fifo.file_type().is_fifo());
        assert_eq!((fifo.mode() & 0o7777, fifo.uid()), (0o620, 33));
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        let layer = applied(&[
            file(".wh.gone", b""),
            dir("etc/"),
            file("etc/.wh.motd", b""),
            file("new/dir/.wh.deep", b""),
            dir("cache/"),
            file("cache/.wh..wh..opq", b""),
            file("cache/fresh", b"x"),
            file("fresh/.wh..wh..opq", b""),
            dir(".wh..wh.plnk/"),
            file(".wh..wh.plnk/123.456", b"aufs"),
            file(".wh..wh.aufs", b""),
        ]);
        for name in ["gone", "etc/motd", "new/dir/deep"] {
            let wh = lstat(&layer.path(name));
            assert!(wh.file_type().is_char_device(), "{name}");
            assert_eq!(wh.rdev(), 0);
        }
        assert!(fs::symlink_metadata(layer.path(".wh.gone")).is_err());
        assert_eq!(
            get_xattr(&layer.path("cache"), "trusted.overlay.opaque").expect("opaque"),
            b"y"
        );
        assert_eq!(
            get_xattr(&layer.path("fresh"), "trusted.overlay.opaque").expect("opaque"),
            b"y"
        );
        assert!(get_xattr(&layer.path("etc"), "trusted.overlay.opaque").is_err());
        assert!(fs::symlink_metadata(layer.path("cache/.wh..wh..opq")).is_err());
        assert!(fs::symlink_metadata(layer.path(".wh..wh.plnk")).is_err());
        assert!(fs::symlink_metadata(layer.path(".wh..wh.aufs")).is_err());

        // An opaque marker for the root marks the root.
        let layer = applied(&[file(".wh..wh..opq", b""), file("a", b"")]);
        assert_eq!(
            get_xattr(&layer.root(), "trusted.overlay.opaque").expect("opaque"),
            b"y"
        );

        let layer = Layer::new();
        let message = layer_message(layer.apply(&[file("a/.wh..", b"")]));
        assert!(message.contains("whiteout"), "{message}");
    }

    #[test]
    fn whiteouts_and_entries_of_the_same_layer() {
        let layer = applied(&[
            // The OCI spec: a whiteout never hides its own layer's entry.
            file("kept", b"mine"),
            file(".wh.kept", b""),
            // Deleted below, recreated here: the new file simply replaces the whiteout.
            file(".wh.file", b""),
            file("file", b"new"),
            // A recreated directory must not merge with the lower one.
            file(".wh.d", b""),
            dir("d/"),
            file("d/new", b"x"),
        ]);
        assert_eq!(fs::read(layer.path("kept")).expect("read"), b"mine");
        assert_eq!(fs::read(layer.path("file")).expect("read"), b"new");
        assert!(lstat(&layer.path("d")).is_dir());
        assert_eq!(
            get_xattr(&layer.path("d"), "trusted.overlay.opaque").expect("opaque"),
            b"y"
        );
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let layer = applied(&[
            file("f", b"first").mode(0o600),
            file("f", b"second").mode(0o644),
            dir("tree/"),
            dir("tree/sub/").mtime(1_000),
            file("tree/sub/x", b"x"),
            symlink("tree/l", "/"),
            file("tree", b"now a file"),
            file("d", b"file first"),
            dir("d/").mode(0o700),
            dir("keep/").mode(0o755).owner(1, 1),
            file("keep/child", b"c"),
            dir("keep/").mode(0o711).owner(2, 2).mtime(1_234),
            symlink("s", "a"),
            symlink("s", "b"),
            node("n", EntryType::Fifo, 0, 0),
            dir("n/"),
            file("h", b"target"),
            file("g", b"old"),
            hardlink("g", "h"),
        ]);
        assert_eq!(fs::read(layer.path("f")).expect("read"), b"second");
        assert_eq!(lstat(&layer.path("f")).mode() & 0o7777, 0o644);
        assert_eq!(fs::read(layer.path("tree")).expect("read"), b"now a file");
        assert!(lstat(&layer.path("d")).is_dir());
        let keep = lstat(&layer.path("keep"));
        assert_eq!(
            (keep.mode() & 0o7777, keep.uid(), keep.mtime()),
            (0o711, 2, 1_234)
        );
        assert_eq!(fs::read(layer.path("keep/child")).expect("read"), b"c");
        assert_eq!(
            fs::read_link(layer.path("s")).expect("readlink"),
            Path::new("b")
        );
        assert!(lstat(&layer.path("n")).is_dir());
        assert_eq!(lstat(&layer.path("g")).ino(), lstat(&layer.path("h")).ino());
    }

    #[test]
    fn times_of_replaced_directories_are_forgotten() {
        let layer = applied(&[
            dir("c/"),
            dir("c/b/").mtime(2_000),
            dir("z/"),
            dir("z/b/").mtime(1_000),
            dir("z-x/").mtime(3_000),
            dir("z/b/deeper/").mtime(4_000),
            // z/b would now name c/b: its recorded time must not land there.
            symlink("z", "c"),
        ]);
        assert_eq!(lstat(&layer.path("c/b")).mtime(), 2_000);
        assert_eq!(lstat(&layer.path("z-x")).mtime(), 3_000);
        assert!(fs::symlink_metadata(layer.path("c/b/deeper")).is_err());
    }

    #[test]
    fn zero_runs_become_holes() {
        let mut data = vec![0u8; 4 << 20];
        data[1 << 20] = b'x';
        let mut tail = data.clone();
        tail.extend_from_slice(b"end");
        let layer = applied(&[file("sparse", &tail), file("zeros", &data[2 << 20..])]);
        let sparse = lstat(&layer.path("sparse"));
        assert_eq!(sparse.len(), tail.len() as u64);
        assert!(
            sparse.blocks() * 512 < 1 << 20,
            "{} blocks",
            sparse.blocks()
        );
        assert_eq!(fs::read(layer.path("sparse")).expect("read"), tail);
        let zeros = lstat(&layer.path("zeros"));
        assert_eq!((zeros.len(), zeros.blocks()), (2 << 20, 0));
    }

    /// A tar of GNU sparse files: each has 512 bytes of data (`name` and a newline, then
    /// zeros... then `x`), a hole, and 512 more bytes ending in `y`, `apparent` bytes in all.
    fn sparse_tar(files: &[(&str, u64)]) -> Vec<u8> {
        fn octal(field: &mut [u8; 12], n: u64) {
            if n < 8u64.pow(11) {
                field.copy_from_slice(format!("{n:011o}\0").as_bytes());
            } else {
                // GNU's base-256 form for numbers octal cannot hold.
                field.fill(0);
                field[0] = 0x80;
                field[4..].copy_from_slice(&n.to_be_bytes());
            }
        }
        let mut builder = Builder::new(Vec::new());
        for (name, apparent) in files {
            let mut h = Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(EntryType::GNUSparse);
            h.set_size(1024);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            let gnu = h.as_gnu_mut().expect("GNU header");
            octal(&mut gnu.sparse[0].offset, 0);
            octal(&mut gnu.sparse[0].numbytes, 512);
            octal(&mut gnu.sparse[1].offset, apparent - 512);
            octal(&mut gnu.sparse[1].numbytes, 512);
            octal(&mut gnu.realsize, *apparent);
            h.set_cksum();
            let mut data = vec![0u8; 1024];
            data[..name.len()].copy_from_slice(name.as_bytes());
            data[name.len()] = b'\n';
            data[511] = b'x';
            data[1023] = b'y';
            builder.append(&h, &data[..]).expect("append");
        }
        builder.into_inner().expect("finish tar")
    }

    #[test]
    fn gnu_sparse_files_keep_their_holes() {
        let layer = Layer::new();
        let apparent = 3u64 << 30;
        apply_layer(&sparse_tar(&[("big", apparent)])[..], &layer.root(), LAYER)
            .expect("apply sparse layer");
        let path = layer.path("big");
        let meta = lstat(&path);
        assert_eq!(meta.len(), apparent);
        // The two chunks that hold data, at most.
        assert!(
            meta.blocks() * 512 <= 2 * COPY_CHUNK as u64,
            "{} blocks",
            meta.blocks()
        );
        let file = File::open(&path).expect("open");
        let mut head = [0u8; 512];
        file.read_exact_at(&mut head, 0).expect("head");
        assert!(head.starts_with(b"big\n") && head[511] == b'x');
        let mut middle = [1u8; 4096];
        file.read_exact_at(&mut middle, apparent / 2)
            .expect("middle");
        assert!(middle.iter().all(|&b| b == 0));
        let mut tail = [0u8; 512];
        file.read_exact_at(&mut tail, apparent - 512).expect("tail");
        assert_eq!(tail[511], b'y');
    }

    #[test]
    fn sparse_holes_beyond_the_layers_budget_refuse_the_layer() {
        let layer = Layer::new();
        let tar = sparse_tar(&[("first", 600 << 20), ("second", 600 << 20)]);
        let err = apply_layer_with(&tar[..], &layer.root(), LAYER, 1 << 30)
            .expect_err("second file over budget");
        let message = err.to_string();
        assert!(matches!(err, Error::Layer { .. }), "{message}");
        assert!(message.contains("\"second\""), "{message}");
        assert!(message.contains("GiB of holes"), "{message}");
        assert_eq!(lstat(&layer.path("first")).len(), 600 << 20);
        assert!(
            fs::symlink_metadata(layer.path("second")).is_err(),
            "refused before the file was made"
        );
        // A declared size far beyond any budget is refused at once, without reading a hole.
        let layer = Layer::new();
        let started = std::time::Instant::now();
        let huge = sparse_tar(&[("huge", 1 << 60)]);
        let err = apply_layer(&huge[..], &layer.root(), LAYER).expect_err("exabyte of holes");
        assert!(err.to_string().contains("GiB of holes"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn stats_count_allocated_bytes_and_distinct_inodes() {
        let big = vec![7u8; 10_000];
        let layer = Layer::new();
        let stats = layer
            .apply(&[
                dir("a/"),
                file("a/f", &big),
                hardlink("a/g", "a/f"),
                symlink("s", "a/f"),
                node("p", EntryType::Fifo, 0, 0),
                file(".wh.w", b""),
                file("first", b"gone"),
                file("first", b""),
            ])
            .expect("apply");
        let names = ["a", "a/f", "s", "p", "w", "first"];
        let bytes: u64 = names
            .iter()
            .map(|n| lstat(&layer.path(n)).blocks() * 512)
            .sum();
        assert_eq!(stats.inodes, names.len() as u64);
        assert_eq!(stats.bytes, bytes);
        assert!(stats.bytes >= 10_000);
        assert_eq!(disk_usage(&layer.root()).expect("du"), stats);
    }

    #[test]
    fn the_stream_is_read_to_its_end() {
        struct Counting<'a>(&'a [u8], usize);
        impl Read for Counting<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.read(buf)?;
                self.1 += n;
                Ok(n)
            }
        }
        let mut bytes = tar_of(&[file("f", b"x")]);
        bytes.extend_from_slice(&[0u8; 10 * 512]);
        let layer = Layer::new();
        let mut reader = Counting(&bytes, 0);
        apply_layer(&mut reader, &layer.root(), LAYER).expect("apply");
        assert_eq!(reader.1, bytes.len());
    }

    #[test]
    fn truncated_archives_fail() {
        let bytes = tar_of(&[file("f", &[1u8; 4096])]);
        let layer = Layer::new();
        let result = apply_layer(&bytes[..512 + 1000], &layer.root(), LAYER);
        assert!(matches!(result, Err(Error::Layer { .. })), "{result:?}");
    }

    #[test]
    fn odd_entries_are_skipped() {
        let mut label = Ent::new("volume", EntryType::new(b'V'));
        label.mode = 0;
        let layer = applied(&[dir("./"), label, file("./x", b"x")]);
        assert!(fs::symlink_metadata(layer.path("volume")).is_err());
        assert_eq!(fs::read(layer.path("x")).expect("read"), b"x");
        // The root's own metadata is not the layer's to change.
        assert_eq!(lstat(&layer.root()).mode() & 0o7777, 0o755);
    }

    /// Mounts the unpacked layers with overlayfs: the kernel, not our reading of the format,
    /// decides whether the conversion is right.
    #[test]
    fn overlayfs_honours_converted_whiteouts() {
        struct Mounted(PathBuf);
        impl Drop for Mounted {
            fn drop(&mut self) {
                let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let lower = applied(&[
            file("gone", b"old"),
            file("kept", b"old"),
            dir("d/"),
            file("d/old", b"old"),
            dir("e/"),
            file("e/old", b"old"),
            dir("m/"),
            file("m/old", b"old"),
        ]);
        let upper = applied(&[
            file(".wh.gone", b""),
            dir("d/"),
            file("d/.wh..wh..opq", b""),
            file("d/new", b"new"),
            file(".wh.e", b""),
            dir("e/"),
            file("e/new", b"new"),
            file("m/new", b"new"),
        ]);
        let merged = lower.tmp.path().join("merged");
        fs::create_dir(&merged).expect("mkdir merged");
        let options = format!(
            "lowerdir={}:{}",
            upper.root().display(),
            lower.root().display()
        );
        nix::mount::mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            nix::mount::MsFlags::MS_RDONLY,
            Some(options.as_str()),
        )
        .expect("mount overlay");
        let _mounted = Mounted(merged.clone());
        let list = |dir: &str| -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(merged.join(dir))
                .expect("read merged")
                .map(|e| {
                    e.expect("dirent")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            names.sort();
            names
        };
        assert_eq!(list(""), ["d", "e", "kept", "m"]);
        assert_eq!(list("d"), ["new"]);
        assert_eq!(list("e"), ["new"]);
        assert_eq!(list("m"), ["new", "old"]);
    }
}
