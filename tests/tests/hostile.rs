//! Hostile layers, pulled through each daemon from the test registry: names and links that try
//! to leave the rootfs, hard links to host files, device nodes, a huge sparse file, a tar bomb
//! of empty files, setuid files. After each pull (whether the daemon refuses the layer or
//! unpacks it harmlessly) the host must be untouched: a sentinel directory outside the store
//! that the layer aims at keeps exactly its one file with its content and link count, and the
//! daemon still answers.
//!
//! Where the daemons differ, each check says so: bungeo refuses a write through a symlink
//! that leaves the root (containerd writes it inside the root), unpacks GNU sparse files with
//! their holes kept (containerd refuses the entry type), and both refuse hard links to files
//! outside the layer, clamp `..` and absolute names to the root, create device nodes (only
//! the container's device cgroup decides if they open) and keep setuid/setgid bits.
//!
//! `BUNGEO_HOSTILE_FILES` sets the tar bomb's file count (default 100000; the long run
//! uses 1000000). `BUNGEO_HOSTILE_SPARSE_GIB` sets the sparse file's apparent size (default 100).
//! A sparse file declaring more holes than a layer may have (bungeo's budget is 256 GiB a
//! layer) is refused at once.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use bungeo_tests::check;
use bungeo_tests::cri::Target;
use bungeo_tests::images::{ConfigSpec, Image, Platform, build_manifest};
use bungeo_tests::layer::{Compression, Flavor, Layer};
use bungeo_tests::suite::{Ctx, run_suite};
use tar::{EntryType, Header};

fn main() {
    run_suite(vec![
        check!(traversal_names_stay_inside),
        check!(absolute_names_stay_inside),
        check!(absolute_symlink_is_not_followed),
        check!(relative_symlink_is_not_followed),
        check!(file_over_symlink_to_host_file),
        check!(hardlink_to_host_file),
        check!(device_nodes),
        check!(huge_sparse_file_stays_sparse),
        check!(exabytes_of_sparse_holes_are_refused_at_once),
        check!(tar_bomb_of_empty_files),
        check!(setuid_and_setgid_files_keep_their_bits),
    ])
}

const SENTINEL: &[u8] = b"host file: must not change\n";

/// A directory outside every store, with one file, that a hostile layer aims at.
struct HostDir {
    path: PathBuf,
}

impl HostDir {
    fn new(ctx: &Ctx, case: &str) -> Result<Self> {
        let path = PathBuf::from(format!("/tmp/bungeo-hostile-{}", ctx.unique(case)));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        fs::write(path.join("sentinel"), SENTINEL)?;
        Ok(Self { path })
    }

    /// The directory without its leading `/`, for names relative to a root.
    fn relative(&self) -> String {
        self.path
            .to_string_lossy()
            .trim_start_matches('/')
            .to_string()
    }

    fn sentinel(&self) -> String {
        self.path.join("sentinel").to_string_lossy().into_owned()
    }

    /// Fails unless the directory holds only the untouched sentinel.
    fn ensure_untouched(&self) -> Result<()> {
        let mut names: Vec<String> = fs::read_dir(&self.path)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        ensure!(
            names == ["sentinel"],
            "the layer created {names:?} in {}",
            self.path.display()
        );
        let meta = fs::symlink_metadata(self.path.join("sentinel"))?;
        ensure!(meta.is_file(), "the sentinel was replaced: {meta:?}");
        ensure!(
            meta.nlink() == 1,
            "the sentinel gained hard links: {}",
            meta.nlink()
        );
        ensure!(
            fs::read(self.path.join("sentinel"))? == SENTINEL,
            "the sentinel's content changed"
        );
        Ok(())
    }
}

impl Drop for HostDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// An octal tar number field, or GNU base-256 when the value does not fit.
fn number(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    if value < 1u64 << (3 * digits) {
        let s = format!("{value:0digits$o}\0");
        field.copy_from_slice(s.as_bytes());
    } else {
        field.fill(0);
        field[0] = 0x80;
        let bytes = value.to_be_bytes();
        let n = field.len();
        field[n - 8..].copy_from_slice(&bytes);
    }
}

/// A raw tar written entry by entry: names and link targets go in as given, with no checks
/// (the `tar` crate's own setters refuse `..` and absolute names, which is the point here).
struct RawTar {
    builder: tar::Builder<Vec<u8>>,
}

impl RawTar {
    fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(name: &str, kind: EntryType, mode: u32, size: u64) -> Result<Header> {
        ensure!(name.len() < 100, "name {name:?} needs a long-name entry");
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(size);
        Ok(h)
    }

    fn append(&mut self, mut h: Header, data: &[u8]) -> Result<&mut Self> {
        h.set_cksum();
        self.builder.append(&h, data).context("append tar entry")?;
        Ok(self)
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<&mut Self> {
        let h = Self::header(name, EntryType::Regular, mode, data.len() as u64)?;
        self.append(h, data)
    }

    fn owned_file(&mut self, name: &str, mode: u32, uid: u64, gid: u64) -> Result<&mut Self> {
        let mut h = Self::header(name, EntryType::Regular, mode, 2)?;
        h.set_uid(uid);
        h.set_gid(gid);
        self.append(h, b"#!")
    }

    fn dir(&mut self, name: &str) -> Result<&mut Self> {
        let h = Self::header(name, EntryType::Directory, 0o755, 0)?;
        self.append(h, &[])
    }

    fn link(&mut self, name: &str, kind: EntryType, target: &str) -> Result<&mut Self> {
        ensure!(target.len() < 100, "link target {target:?} is too long");
        let mut h = Self::header(name, kind, 0o777, 0)?;
        h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        self.append(h, &[])
    }

    fn device(&mut self, name: &str, kind: EntryType, major: u32, minor: u32) -> Result<&mut Self> {
        let mut h = Self::header(name, kind, 0o666, 0)?;
        h.set_device_major(major)?;
        h.set_device_minor(minor)?;
        self.append(h, &[])
    }

    /// A GNU sparse file of `apparent` bytes whose only data is its first 512 bytes.
    fn sparse(&mut self, name: &str, apparent: u64) -> Result<&mut Self> {
        let mut h = Self::header(name, EntryType::GNUSparse, 0o644, 512)?;
        let gnu = h.as_gnu_mut().context("GNU header")?;
        number(&mut gnu.sparse[0].offset, 0);
        number(&mut gnu.sparse[0].numbytes, 512);
        number(&mut gnu.sparse[1].offset, apparent);
        number(&mut gnu.sparse[1].numbytes, 0);
        number(&mut gnu.realsize, apparent);
        let mut data = vec![0u8; 512];
        data[..6].copy_from_slice(b"start\n");
        self.append(h, &data)
    }

    fn finish(self) -> Result<Vec<u8>> {
        self.builder.into_inner().context("finish tar")
    }
}

/// Pushes a one-layer image of `tar` to the test registry; its reference.
async fn push_layer(ctx: &Ctx, case: &str, tar: &[u8]) -> Result<String> {
    let layer = Layer::new(tar, Compression::Gzip, Flavor::Oci)?;
    let spec = ConfigSpec {
        env: vec![format!("BUNGEO_TEST_LABEL={}", ctx.unique(case))],
        ..ConfigSpec::default()
    };
    let image = Image::Single(build_manifest(
        &Platform::host(),
        &spec,
        vec![(layer, format!("hostile {case}"))],
        Flavor::Oci,
    )?);
    let repo = format!("hostile/{}", ctx.unique(case));
    let name = ctx.fx.push(&repo, &["latest"], &image).await?;
    Ok(format!("{name}:latest"))
}

/// Pulls `reference` and reports the outcome; the daemon must still answer afterwards, and a
/// pulled image is removed again.
async fn pull_then_check_alive(ctx: &mut Ctx, reference: &str) -> Result<Result<(), String>> {
    let outcome = ctx
        .cri
        .pull(reference, None)
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()));
    ctx.cri
        .version()
        .await
        .context("the daemon stopped answering after the pull")?;
    if outcome.is_ok() {
        ctx.cri
            .remove_image(reference)
            .await
            .with_context(|| format!("RemoveImage {reference}"))?;
    }
    eprintln!("{}: pull {reference}: {outcome:?}", ctx.target.name());
    Ok(outcome)
}

/// Pulls a layer of `tar`, expecting `pulled` (Some: success or failure; None: either), with
/// `host` checked untouched afterwards.
async fn hostile_pull(
    ctx: &mut Ctx,
    case: &str,
    tar: &[u8],
    host: &HostDir,
    pulled: Option<bool>,
) -> Result<()> {
    let reference = push_layer(ctx, case, tar).await?;
    let outcome = pull_then_check_alive(ctx, &reference).await?;
    host.ensure_untouched()?;
    if let Some(want) = pulled {
        ensure!(
            outcome.is_ok() == want,
            "pull of the {case} layer: got {outcome:?}, want {}",
            if want { "success" } else { "an error" }
        );
    }
    Ok(())
}

fn escape(host: &HostDir, leaf: &str) -> String {
    format!("{}{}/{leaf}", "../".repeat(12), host.relative())
}

async fn traversal_names_stay_inside(mut ctx: Ctx) -> Result<()> {
    let host = HostDir::new(&ctx, "traversal")?;
    let mut t = RawTar::new();
    t.file(&escape(&host, "traversal"), 0o644, b"escaped\n")?;
    t.file(&escape(&host, "sentinel"), 0o644, b"overwritten\n")?;
    // Both daemons clamp `..` at the root, as a chroot would.
    hostile_pull(&mut ctx, "traversal", &t.finish()?, &host, Some(true)).await
}

async fn absolute_names_stay_inside(mut ctx: Ctx) -> Result<()> {
    let host = HostDir::new(&ctx, "absolute")?;
    let mut t = RawTar::new();
    t.file(&format!("{}/absolute", host.path.display()), 0o644, b"x\n")?;
    t.file(&host.sentinel(), 0o644, b"overwritten\n")?;
    hostile_pull(&mut ctx, "absolute", &t.finish()?, &host, Some(true)).await
}

// Writes through an escaping symlink: bungeo refuses the layer (the link resolves inside the
// root to a directory that does not exist), containerd resolves it inside the root and
// writes there. Either way the host is untouched, which is what is checked.
async fn absolute_symlink_is_not_followed(mut ctx: Ctx) -> Result<()> {
    let host = HostDir::new(&ctx, "abs-symlink")?;
    let mut t = RawTar::new();
    t.link("esc", EntryType::Symlink, &host.path.to_string_lossy())?;
    t.file("esc/through-absolute-link", 0o644, b"escaped\n")?;
    t.file("esc/sentinel", 0o644, b"overwritten\n")?;
    t.link("root", EntryType::Symlink, "/")?;
    t.file(&format!("root/{}/via-root", host.relative()), 0o644, b"x\n")?;
    hostile_pull(&mut ctx, "abs-symlink", &t.finish()?, &host, None).await
}

async fn relative_symlink_is_not_followed(mut ctx: Ctx) -> Result<()> {
    let host = HostDir::new(&ctx, "rel-symlink")?;
    let mut t = RawTar::new();
    t.dir("a")?;
    t.link(
        "a/esc",
        EntryType::Symlink,
        &format!("{}{}", "../".repeat(12), host.relative()),
    )?;
    t.file("a/esc/through-relative-link", 0o644, b"escaped\n")?;
    t.file("a/esc/sentinel", 0o644, b"overwritten\n")?;
    hostile_pull(&mut ctx, "rel-symlink", &t.finish()?, &host, None).await
}

async fn file_over_symlink_to_host_file(mut ctx: Ctx) -> Result<()> {
    let host = HostDir::new(&ctx, "file-over-symlink")?;
    let mut t = RawTar::new();
    t.link("s", EntryType::Symlink, &host.sentinel())?;
    // A later entry of the same name replaces the link; it must not write through it.
    t.file("s", 0o644, b"overwritten\n")?;
    hostile_pull(
        &mut ctx,
        "file-over-symlink",
        &t.finish()?,
        &host,
        Some(true),
    )
    .await
}

async fn hardlink_to_host_file(mut ctx: Ctx) -> Result<()> {
    for (case, target) in [
        ("hardlink-abs", None),
        ("hardlink-rel", Some("../".repeat(12))),
    ] {
        let host = HostDir::new(&ctx, case)?;
        let target = match target {
            None => host.sentinel(),
            Some(up) => format!("{up}{}/sentinel", host.relative()),
        };
        let mut t = RawTar::new();
        t.link("h", EntryType::Link, &target)?;
        // Writing the link's name again must not reach the host inode either.
        t.file("h", 0o644, b"overwritten\n")?;
        // Both refuse the layer: the target is looked up inside the layer, where it is not.
        hostile_pull(&mut ctx, case, &t.finish()?, &host, Some(false)).await?;
    }
    Ok(())
}

fn dev_names() -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir("/dev")?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    Ok(names)
}

async fn device_nodes(mut ctx: Ctx) -> Result<()> {
    let host = HostDir::new(&ctx, "devices")?;
    let before = dev_names()?;
    let mut t = RawTar::new();
    t.dir("dev")?;
    // /dev/mem and /dev/sda's numbers: inside a rootfs they are only names; the container's
    // device cgroup decides whether they open. Both daemons create them, as root may.
    t.device("dev/mem", EntryType::Char, 1, 1)?;
    t.device("dev/sda", EntryType::Block, 8, 0)?;
    t.device(&escape(&host, "char"), EntryType::Char, 1, 3)?;
    t.link("d", EntryType::Symlink, &host.path.to_string_lossy())?;
    t.device("d/block", EntryType::Block, 8, 0)?;
    hostile_pull(&mut ctx, "devices", &t.finish()?, &host, None).await?;
    let after = dev_names()?;
    ensure!(before == after, "/dev changed: {before:?} -> {after:?}");
    Ok(())
}

fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v:?}")),
        Err(_) => Ok(default),
    }
}

/// Bytes in use on the filesystem holding `path`.
fn used_bytes(path: &Path) -> Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).context("statvfs")?;
    Ok((st.blocks() - st.blocks_free()) * st.fragment_size())
}

async fn huge_sparse_file_stays_sparse(mut ctx: Ctx) -> Result<()> {
    let gib = env_number("BUNGEO_HOSTILE_SPARSE_GIB", 100)?;
    let host = HostDir::new(&ctx, "sparse")?;
    let mut t = RawTar::new();
    t.sparse("huge", gib << 30)?;
    let tar = t.finish()?;
    if ctx.target == Target::Containerd {
        // containerd 1.6 refuses GNU sparse entries ("unhandled tar header type 83"): the
        // layer fails, harmlessly. bungeo unpacks them, keeping the holes.
        return hostile_pull(&mut ctx, "sparse", &tar, &host, Some(false)).await;
    }
    let reference = push_layer(&ctx, "sparse", &tar).await?;
    let root = ctx.daemon()?.root().to_path_buf();
    let before = used_bytes(&root)?;
    let started = std::time::Instant::now();
    ctx.cri
        .pull(&reference, None)
        .await
        .with_context(|| format!("PullImage of a {gib} GiB sparse file"))?;
    let grown = used_bytes(&root)?.saturating_sub(before);
    eprintln!(
        "sparse {gib} GiB: pulled in {:?}, disk use grew {} KiB",
        started.elapsed(),
        grown >> 10
    );
    let found = find_named(&root, "huge", 8)?;
    let meta = fs::metadata(&found)?;
    ensure!(meta.len() == gib << 30, "apparent size {}", meta.len());
    ensure!(
        meta.blocks() * 512 < 1 << 20,
        "the file takes {} bytes on disk",
        meta.blocks() * 512
    );
    // Other checks write beside this one: allow them some room, not the file's size.
    ensure!(grown < 1 << 30, "disk use grew by {grown} bytes");
    ctx.cri.remove_image(&reference).await?;
    ctx.cri.version().await?;
    host.ensure_untouched()
}

/// A header of a few hundred bytes declaring an exabyte of holes: unpacked, it would keep a
/// core busy for days. bungeo refuses the layer at once, over its per-layer hole budget;
/// containerd refuses every GNU sparse entry.
async fn exabytes_of_sparse_holes_are_refused_at_once(mut ctx: Ctx) -> Result<()> {
    let host = HostDir::new(&ctx, "exabyte")?;
    let mut t = RawTar::new();
    // Unpacked before the refusal: the failed pull must not leave it in the store.
    t.file("exabyte-before", 0o644, b"unpacked first\n")?;
    t.sparse("exabyte", 1 << 60)?;
    let reference = push_layer(&ctx, "exabyte", &t.finish()?).await?;
    let started = std::time::Instant::now();
    let outcome = pull_then_check_alive(&mut ctx, &reference).await?;
    let took = started.elapsed();
    host.ensure_untouched()?;
    let Err(message) = outcome else {
        bail!("an exabyte of holes was pulled");
    };
    ensure!(
        took < std::time::Duration::from_secs(30),
        "refused only after {took:?}"
    );
    if ctx.target == Target::Bungeo {
        ensure!(
            message.contains("GiB of holes") && message.contains("exabyte"),
            "the error names neither the file nor the holes: {message}"
        );
        let root = ctx.daemon()?.root().to_path_buf();
        ensure!(
            find_named(&root, "exabyte-before", 8).is_err(),
            "a half-unpacked layer was left in {}",
            root.display()
        );
    }
    Ok(())
}

/// The first file named `name` at most `depth` levels below `dir`.
fn find_named(dir: &Path, name: &str, depth: usize) -> Result<PathBuf> {
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, level)) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if e.file_name() == name && ft.is_file() {
                return Ok(e.path());
            }
            if ft.is_dir() && level < depth {
                stack.push((e.path(), level + 1));
            }
        }
    }
    bail!("no file named {name} below {}", dir.display())
}

async fn tar_bomb_of_empty_files(mut ctx: Ctx) -> Result<()> {
    let files = env_number("BUNGEO_HOSTILE_FILES", 100_000)?;
    let host = HostDir::new(&ctx, "bomb")?;
    let mut t = RawTar::new();
    for d in 0..files.div_ceil(1000) {
        t.dir(&format!("d{d}"))?;
    }
    for i in 0..files {
        t.file(&format!("d{}/f{i}", i / 1000), 0o644, &[])?;
    }
    let tar = t.finish()?;
    let started = std::time::Instant::now();
    let reference = push_layer(&ctx, "bomb", &tar).await?;
    eprintln!(
        "bomb: {files} files, tar {} MiB, built and pushed in {:?}",
        tar.len() >> 20,
        started.elapsed()
    );
    let started = std::time::Instant::now();
    ctx.cri
        .pull(&reference, None)
        .await
        .with_context(|| format!("PullImage of {files} empty files"))?;
    eprintln!("bomb: pulled in {:?}", started.elapsed());
    ctx.cri.remove_image(&reference).await?;
    ctx.cri.version().await?;
    host.ensure_untouched()
}

async fn setuid_and_setgid_files_keep_their_bits(mut ctx: Ctx) -> Result<()> {
    let host = HostDir::new(&ctx, "setuid")?;
    let suid = format!("suid-{}", ctx.unique("x"));
    let sgid = format!("sgid-{}", ctx.unique("x"));
    let mut t = RawTar::new();
    t.owned_file(&suid, 0o4755, 1000, 1000)?;
    t.owned_file(&sgid, 0o2755, 1000, 1000)?;
    let reference = push_layer(&ctx, "setuid", &t.finish()?).await?;
    ctx.cri.pull(&reference, None).await.context("PullImage")?;
    // Like containerd, the bits are kept: an image's setuid binaries (su, ping) must work,
    // and no_new_privs or the user namespace is what confines them.
    let root = ctx.daemon()?.root().to_path_buf();
    for (name, bits) in [(&suid, 0o4000), (&sgid, 0o2000)] {
        let path = find_named(&root, name, 10)?;
        let meta = fs::metadata(&path)?;
        let mode = meta.permissions().mode() & 0o7777;
        ensure!(
            mode == 0o755 | bits && meta.uid() == 1000 && meta.gid() == 1000,
            "{}: mode {mode:o} owner {}:{}",
            path.display(),
            meta.uid(),
            meta.gid()
        );
    }
    ctx.cri.remove_image(&reference).await?;
    ctx.cri.version().await?;
    host.ensure_untouched()
}
