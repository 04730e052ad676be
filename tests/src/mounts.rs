//! Unmounting whatever a daemon under test left mounted below its directories.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::mount::{MntFlags, umount2};

/// Mount points at or below `dir`, deepest first, from `/proc/self/mountinfo`.
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolve {}", dir.display()))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("read mountinfo")?;
    let mut found: Vec<PathBuf> = parse_mountinfo(&info)
        .into_iter()
        .filter(|m| m.starts_with(&dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found.dedup();
    Ok(found)
}

/// Lazily unmounts everything at or below `dir`, so the directory can be removed.
pub fn unmount_under(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    // A mount can be stacked several times on one point: repeat until none is left.
    for _ in 0..16 {
        let mounts = mounts_under(dir)?;
        if mounts.is_empty() {
            return Ok(());
        }
        for m in mounts {
            // EINVAL/ENOENT: already gone through an earlier lazy unmount of a parent.
            let _ = umount2(&m, MntFlags::MNT_DETACH);
        }
    }
    let left = mounts_under(dir)?;
    anyhow::ensure!(
        left.is_empty(),
        "still mounted below {}: {left:?}",
        dir.display()
    );
    Ok(())
}

/// The mount point (5th field) of each line, with mountinfo's octal escapes decoded.
fn parse_mountinfo(info: &str) -> Vec<PathBuf> {
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .collect()
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mount_points_with_escapes() {
        let info = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 0:5 / /proc rw - proc proc rw\n";
        assert_eq!(
            parse_mountinfo(info),
            vec![PathBuf::from("/mnt/with space"), PathBuf::from("/proc")]
        );
    }

    #[test]
    fn unescape_leaves_plain_backslashes() {
        assert_eq!(unescape("a\\b"), "a\\b");
        assert_eq!(unescape("a\\011b"), "a\tb");
    }

    #[test]
    fn unmounts_a_bind_mount_below_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a/b");
        std::fs::create_dir_all(&target).unwrap();
        let src = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some(src.path()),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        assert_eq!(mounts_under(dir.path()).unwrap().len(), 1);
        unmount_under(dir.path()).unwrap();
        assert!(mounts_under(dir.path()).unwrap().is_empty());
    }
}
