//! A small ext4 filesystem on a loop device, for running a daemon out of disk space: made
//! from a sparse image file, mounted with `mount -o loop`; unmounted, detached and deleted
//! on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// A mounted loop filesystem.
#[derive(Debug)]
pub struct LoopFs {
    image: PathBuf,
    mountpoint: PathBuf,
    device: Option<String>,
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl LoopFs {
    /// Makes an ext4 of `size` bytes in the file `image` (on disk, not tmpfs) and mounts it
    /// on `mountpoint`, which must exist.
    pub fn mount(image: &Path, size: u64, mountpoint: &Path) -> Result<Self> {
        let file =
            std::fs::File::create(image).with_context(|| format!("create {}", image.display()))?;
        file.set_len(size)
            .with_context(|| format!("size {}", image.display()))?;
        drop(file);
        let mut this = Self {
            image: image.to_path_buf(),
            mountpoint: mountpoint.to_path_buf(),
            device: None,
        };
        let img = image.to_string_lossy().into_owned();
        run("mkfs.ext4", &["-q", "-F", "-m", "0", &img])?;
        let device = run("losetup", &["--find", "--show", &img])?
            .trim()
            .to_string();
        this.device = Some(device.clone());
        run("mount", &[&device, &mountpoint.to_string_lossy()])?;
        Ok(this)
    }

    /// The loop device.
    pub fn device(&self) -> Option<&str> {
        self.device.as_deref()
    }

    /// Free bytes on the filesystem (`statvfs`, as the unprivileged see it).
    pub fn free_bytes(&self) -> Result<u64> {
        let st = nix::sys::statvfs::statvfs(&self.mountpoint)
            .with_context(|| format!("statvfs {}", self.mountpoint.display()))?;
        Ok(st.blocks_available() * st.fragment_size())
    }

    /// Whether the filesystem is still mounted on its mount point.
    pub fn is_mounted(&self) -> bool {
        crate::mounts::mounts_under(&self.mountpoint)
            .is_ok_and(|m| m.iter().any(|p| p == &self.mountpoint))
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.is_mounted()
            && let Err(e) = run("umount", &[&self.mountpoint.to_string_lossy()])
        {
            eprintln!("{e:#}; detaching lazily");
            let _ = run("umount", &["-l", &self.mountpoint.to_string_lossy()]);
        }
        if let Some(device) = self.device.take()
            && let Err(e) = run("losetup", &["-d", &device])
        {
            eprintln!("{e:#}");
        }
        let _ = std::fs::remove_file(&self.image);
    }
}
