//! Disk usage of containers' writable layers (their overlay upper directories), cached.
//!
//! Walking a directory tree costs a stat per file, and kubelet asks for every container every
//! few seconds, so a figure is measured once when first asked for and then refreshed in the
//! background once it is older than [`MAX_AGE`]: stats calls never wait for a walk except
//! the very first time a container is asked about.

use std::collections::{HashMap, HashSet};
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::reservation::lock;

/// How old a figure may be before a background walk refreshes it.
pub const MAX_AGE: Duration = Duration::from_secs(10);
/// A container nobody asked about for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(300);

/// Bytes (allocated blocks, as `du`) and inodes a tree holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerUsage {
    pub used_bytes: u64,
    pub inodes_used: u64,
    /// When it was measured, nanoseconds since the epoch.
    pub measured_at: i64,
}

struct Layer {
    dir: PathBuf,
    usage: LayerUsage,
    measured: Instant,
    asked: Instant,
}

/// The cache of writable layer usage, by container id.
#[derive(Default)]
pub struct WritableLayers {
    layers: Mutex<HashMap<String, Layer>>,
    refreshing: AtomicBool,
}

impl WritableLayers {
    /// The usage of container `id`'s writable layer at `dir`: cached, measured now if never
    /// measured, refreshed in the background when stale.
    pub fn usage(self: &Arc<Self>, id: &str, dir: &Path) -> LayerUsage {
        let now = Instant::now();
        let stale = {
            let mut layers = lock(&self.layers);
            match layers.get_mut(id) {
                Some(layer) if layer.dir == dir => {
                    layer.asked = now;
                    let stale = now.duration_since(layer.measured) > MAX_AGE;
                    Some((layer.usage, stale))
                }
                _ => None,
            }
        };
        match stale {
            Some((usage, stale)) => {
                if stale {
                    self.refresh_in_background();
                }
                usage
            }
            None => {
                let usage = measure(dir);
                lock(&self.layers).insert(
                    id.to_owned(),
                    Layer {
                        dir: dir.to_owned(),
                        usage,
                        measured: Instant::now(),
                        asked: now,
                    },
                );
                usage
            }
        }
    }

    /// The cached usage of `id`, without measuring.
    pub fn cached(&self, id: &str) -> Option<LayerUsage> {
        lock(&self.layers).get(id).map(|l| l.usage)
    }

    /// Drops the figures of containers not in `live`.
    pub fn retain(&self, live: &HashSet<&str>) {
        lock(&self.layers).retain(|id, _| live.contains(id.as_str()));
    }

    fn refresh_in_background(self: &Arc<Self>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("bungeo-du".to_owned())
            .stack_size(256 << 10)
            .spawn(move || {
                this.refresh_stale();
                this.refreshing.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the writable layer usage refresh");
            self.refreshing.store(false, Ordering::Release);
        }
    }

    /// Measures every stale layer again (outside the lock), and forgets the ones nobody asks
    /// about any more.
    fn refresh_stale(&self) {
        let now = Instant::now();
        let stale: Vec<(String, PathBuf)> = {
            let mut layers = lock(&self.layers);
            layers.retain(|_, l| now.duration_since(l.asked) < FORGET_AFTER);
            layers
                .iter()
                .filter(|(_, l)| now.duration_since(l.measured) > MAX_AGE)
                .map(|(id, l)| (id.clone(), l.dir.clone()))
                .collect()
        };
        for (id, dir) in stale {
            let usage = measure(&dir);
            if let Some(layer) = lock(&self.layers).get_mut(&id) {
                layer.usage = usage;
                layer.measured = Instant::now();
            }
        }
    }
}

/// Walks `dir` without following symlinks or leaving its filesystem, counting each inode
/// once (hard links) and its allocated blocks, as containerd's snapshotter usage does.
pub fn measure(dir: &Path) -> LayerUsage {
    let measured_at = crate::containers::now_ns();
    let root = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) => {
            if e.kind() != ErrorKind::NotFound {
                debug!(dir = %dir.display(), error = %e, "cannot measure a writable layer");
            }
            return LayerUsage {
                measured_at,
                ..LayerUsage::default()
            };
        }
    };
    let device = root.dev();
    let mut seen = HashSet::new();
    let mut usage = LayerUsage {
        measured_at,
        ..LayerUsage::default()
    };
    let mut count = |m: &std::fs::Metadata, usage: &mut LayerUsage| {
        if seen.insert(m.ino()) {
            usage.inodes_used += 1;
            usage.used_bytes += m.blocks() * 512;
        }
    };
    count(&root, &mut usage);
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        // Entries vanish while containers run: whatever is gone is simply not counted.
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.dev() != device {
                continue;
            }
            count(&meta, &mut usage);
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_blocks_and_inodes_once_per_hard_link() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/a"), vec![1u8; 64 << 10]).unwrap();
        std::fs::hard_link(d.join("sub/a"), d.join("b")).unwrap();
        std::os::unix::fs::symlink("/etc", d.join("link")).unwrap();
        let usage = measure(d);
        // The root, sub, a (= b), link.
        assert_eq!(usage.inodes_used, 4);
        assert!(usage.used_bytes >= 64 << 10, "{usage:?}");
        assert!(usage.used_bytes < 1 << 20, "{usage:?}");
        assert_eq!(measure(&d.join("missing")).inodes_used, 0);
    }

    #[test]
    fn figures_are_cached_then_refreshed_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let layers = Arc::new(WritableLayers::default());
        let first = layers.usage("c1", dir.path());
        assert_eq!(first.inodes_used, 1);
        std::fs::write(dir.path().join("new"), b"x").unwrap();
        // Fresh: the cached figure, without a walk.
        assert_eq!(layers.usage("c1", dir.path()), first);
        // Age it, ask again: the stale figure now, the new one once the walk is done.
        lock(&layers.layers).get_mut("c1").unwrap().measured -= MAX_AGE * 2;
        assert_eq!(layers.usage("c1", dir.path()), first);
        let deadline = Instant::now() + Duration::from_secs(10);
        while layers.cached("c1").unwrap().inodes_used != 2 {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
        layers.retain(&HashSet::new());
        assert!(layers.cached("c1").is_none());
    }
}
