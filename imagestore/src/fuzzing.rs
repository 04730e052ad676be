//! Entry points for the fuzz targets in `fuzz/`: each takes arbitrary bytes and panics only
//! when an invariant breaks, so a libFuzzer crash is a real finding. Not a stable API.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use crate::platform::Platform;
use crate::pull;
use crate::reference::{Reference, parse_image_id};

/// Largest apparent file size an input may declare: the unpacker reads a file's whole
/// apparent size (holes included), so a few bytes of header could ask for hours of work.
const MAX_ENTRY_SIZE: u64 = 64 << 20;

mod jail;
mod sentinels;

pub use sentinels::Sentinels;

/// Unpacks `data` as a layer tar into `root/layer` of a fresh sentinel tree
/// ([`Sentinels`]) and checks that nothing outside the layer changed: no sentinel file, dir,
/// symlink or their metadata, and nothing new beside the layer or the root.
pub fn unpack(data: &[u8]) {
    if declares_huge_entry(data) {
        return;
    }
    unpack_with(data, |data, dest| {
        let _ = crate::unpack::apply_layer(data, dest, "sha256:fuzz");
    });
}

/// [`unpack`] with the unpacker given, so the check itself can be tested with one that escapes.
/// In the jail ([`jail`]) when this process may make one, else in a fresh directory under the
/// temp dir.
fn unpack_with(data: &[u8], apply: fn(&[u8], &Path)) {
    let changes = match jail::shared() {
        Ok(jail) => {
            let data = data.to_vec();
            jail.run(move |dir| planted_unpack(dir, &data, apply))
                .unwrap_or_else(|panic| panic!("the unpack panicked in the jail: {panic}"))
        }
        Err(why) => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                eprintln!("unpack fuzz: no private mount namespace ({why}): sentinel tree only")
            });
            static RUN: AtomicU64 = AtomicU64::new(0);
            let base = std::env::temp_dir().join(format!(
                "bungeo-fuzz-unpack-{}-{}",
                std::process::id(),
                RUN.fetch_add(1, Ordering::Relaxed)
            ));
            if fs::create_dir(&base).is_err() {
                return;
            }
            let changes = planted_unpack(&base, data, apply);
            remove_tree(&base);
            changes
        }
    };
    assert!(
        changes.is_empty(),
        "the layer changed the tree outside its root:\n{}",
        changes.join("\n")
    );
}

/// Plants the sentinel tree in `base` (empty), unpacks into its layer and lists the changes.
fn planted_unpack(base: &Path, data: &[u8], apply: fn(&[u8], &Path)) -> Vec<String> {
    let sentinels = Sentinels::plant(base)
        .unwrap_or_else(|e| panic!("plant the sentinel tree in {}: {e}", base.display()));
    apply(data, sentinels.layer());
    sentinels.changes()
}

/// Removes `dir`, making directories the layer left without write or search permission
/// removable first.
fn remove_tree(dir: &Path) {
    if fs::remove_dir_all(dir).is_ok() {
        return;
    }
    fn open_up(dir: &Path) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).ok();
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    open_up(&e.path());
                }
            }
        }
    }
    open_up(dir);
    fs::remove_dir_all(dir).ok();
}

fn declares_huge_entry(data: &[u8]) -> bool {
    let mut archive = tar::Archive::new(data);
    let Ok(entries) = archive.entries() else {
        return false;
    };
    for entry in entries {
        let Ok(entry) = entry else {
            return false;
        };
        if entry.size() > MAX_ENTRY_SIZE || entry.header().size().unwrap_or(0) > MAX_ENTRY_SIZE {
            return true;
        }
    }
    false
}

/// Parses `data` as a reference; a parsed reference must print to a string that parses back
/// to itself (normalisation is idempotent), and its parts must be consistent.
pub fn reference(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_image_id(s);
    let Ok(r) = Reference::parse(s) else {
        return;
    };
    let printed = r.to_string();
    let again = Reference::parse(&printed)
        .unwrap_or_else(|e| panic!("{s:?} normalised to {printed:?}, which does not parse: {e}"));
    assert_eq!(
        r, again,
        "{s:?} normalised to {printed:?}, which parses differently"
    );
    assert_eq!(r.repository(), format!("{}/{}", r.domain(), r.path()));
    if let Some(tagged) = r.tagged() {
        let t = Reference::parse(&tagged)
            .unwrap_or_else(|e| panic!("repo tag {tagged:?} of {s:?} does not parse: {e}"));
        assert_eq!(t.tag(), r.tag());
    }
    if let Some(digest) = r.digest() {
        let pinned = r.with_digest(digest);
        assert_eq!(Reference::parse(&r.digested(digest)).ok(), Some(pinned));
    }
}

/// Treats `data` as a registry's JSON: a top-level manifest or index (platform selection for
/// several hosts), then as an image manifest with an image config (the same document, or the
/// second half of `data` after a NUL byte).
pub fn manifest(data: &[u8]) {
    let (first, second) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    };
    let Ok(top) = serde_json::from_slice::<Value>(first) else {
        return;
    };
    let name = "fuzz.example/image:latest";
    if let Ok(true) = pull::classify_top(name, &top) {
        for host in hosts() {
            if let Ok((digest, _)) = pull::choose_manifest(name, &top, &host) {
                assert!(digest.starts_with("sha256:"), "chose {digest:?}");
            }
        }
    }
    let _ = pull::config_descriptor(name, &top);
    let config = serde_json::from_slice::<Value>(second).unwrap_or(Value::Null);
    if let Ok((layers, _, _)) = pull::layers_of(name, &top, &config) {
        for (i, l) in layers.iter().enumerate() {
            assert_eq!(l.parent.is_some(), i > 0);
            assert!(l.chain_id.starts_with("sha256:"));
        }
    }
}

fn hosts() -> Vec<Platform> {
    let p = |a: &str, v: Option<&str>| Platform {
        os: "linux".into(),
        architecture: a.into(),
        variant: v.map(str::to_string),
    };
    vec![
        Platform::host(),
        p("arm64", Some("v8")),
        p("arm", Some("v7")),
        p("arm", None),
        p("386", None),
        p("", None),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_and_garbage_pass() {
        reference(b"busybox");
        reference(b"localhost:5000/a/b:tag@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
        reference(b"\xff\xfe");
        manifest(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"digest":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","size":1,"platform":{"os":"linux","architecture":"amd64"}}]}"#);
        manifest(b"{\"layers\":[{\"size\":18446744073709551615,\"digest\":\"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"},{\"size\":18446744073709551615,\"digest\":\"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"}]}\0{\"rootfs\":{\"diff_ids\":[\"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\",\"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"]}}");
        manifest(b"not json");
        unpack(b"");
        unpack(&[0u8; 1024]);
    }

    const ESCAPE_SEED: &[u8] = include_bytes!("../../fuzz/corpus/unpack/escape.tar");

    #[test]
    fn the_seed_corpus_passes() {
        unpack(ESCAPE_SEED);
        unpack(include_bytes!("../../fuzz/corpus/unpack/tree.tar"));
        unpack(include_bytes!("../../fuzz/corpus/unpack/special.tar"));
    }

    /// The check fails for an unpacker that writes through a symlink the layer made.
    #[test]
    #[should_panic(expected = "the layer changed the tree outside its root")]
    fn an_unpacker_that_follows_symlinks_fails_the_check() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "up", "..").unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(7);
        h.set_mode(0o644);
        b.append_data(&mut h, "up/sentinel", &b"escaped"[..])
            .unwrap();
        let layer = b.into_inner().unwrap();
        // The real unpacker keeps it inside.
        unpack(&layer);
        unpack_with(&layer, |data, dest| {
            let mut archive = tar::Archive::new(data);
            for entry in archive.entries().unwrap() {
                let mut entry = entry.unwrap();
                let path = entry.path().unwrap().into_owned();
                // Naive: joins the name and writes through whatever is there.
                let _ = entry.unpack(dest.join(&path));
            }
        });
    }

    /// A single write beside the layer is enough.
    #[test]
    #[should_panic(expected = "root/sentinel changed")]
    fn one_write_outside_the_layer_fails_the_check() {
        unpack_with(b"", |_, dest| {
            fs::write(dest.join("../sentinel"), b"escaped!!").unwrap();
        });
    }

    #[test]
    fn layer_sizes_that_overflow_saturate() {
        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let manifest = serde_json::json!({"layers": [{"size": u64::MAX, "digest": d}, {"size": u64::MAX, "digest": d}]});
        let config = serde_json::json!({"rootfs": {"diff_ids": [d, d]}});
        let (layers, size, _) = pull::layers_of("x", &manifest, &config).expect("valid");
        assert_eq!((layers.len(), size), (2, u64::MAX));
    }
}
