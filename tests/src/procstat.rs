//! What `/proc` says about one process: open descriptors, resident memory, parent. The leak
//! and fault suites watch the daemon and its shims through these.

use std::path::Path;

use anyhow::{Context, Result};

/// How many descriptors `pid` holds open (entries of `/proc/<pid>/fd`).
pub fn fd_count(pid: u32) -> Result<usize> {
    let dir = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&dir)
        .with_context(|| format!("read {dir}"))?
        .count())
}

/// The descriptors `pid` holds open, as what each points to (`socket:[…]`, a path, …).
pub fn fd_targets(pid: u32) -> Result<Vec<String>> {
    let dir = format!("/proc/{pid}/fd");
    let mut out: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("read {dir}"))?
        .flatten()
        .map(|e| {
            std::fs::read_link(e.path())
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "?".to_string())
        })
        .collect();
    out.sort();
    Ok(out)
}

/// `VmRSS` of `pid` in bytes, from `/proc/<pid>/status`.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    parse_vm_rss(&text).with_context(|| format!("no VmRSS in {path}"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The parent of `pid`, from `/proc/<pid>/stat`.
pub fn parent(pid: u32) -> Result<u32> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no parent in {path}: {stat:?}"))
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rfind(')').is_some_and(|i| !s[i + 1..].starts_with(" Z")))
}

/// Every file, directory and socket below `dir` (relative paths, sorted); `dir` itself
/// missing gives none.
pub fn files_below(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if let Ok(rel) = path.strip_prefix(base) {
            out.push(rel.to_string_lossy().into_owned());
        }
        // Not into mounts' contents: a symlink or a foreign mount is listed, not entered.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(base, &path, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(fd_count(me).unwrap() >= 3);
        assert!(rss_bytes(me).unwrap() > 1 << 20);
        assert_eq!(parent(me).unwrap(), nix::unistd::getppid().as_raw() as u32);
        assert!(alive(me));
        assert!(!fd_targets(me).unwrap().is_empty());
    }

    #[test]
    fn parses_vm_rss_in_kib() {
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t    2048 kB\nVmSwap: 0 kB\n"),
            Some(2 << 20)
        );
        assert_eq!(parse_vm_rss("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn lists_files_below_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), "x").unwrap();
        assert_eq!(files_below(dir.path()), vec!["a", "a/b", "a/b/f"]);
        assert!(files_below(&dir.path().join("missing")).is_empty());
    }
}
