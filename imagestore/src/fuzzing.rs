//! Entry points for the fuzz targets in `fuzz/`: each takes arbitrary bytes and panics only
//! when an invariant breaks, so a libFuzzer crash is a real finding. Not a stable API.

use std::collections::BTreeSet;
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

/// Unpacks `data` as a layer tar into a fresh directory and checks nothing appeared beside it.
pub fn unpack(data: &[u8]) {
    if declares_huge_entry(data) {
        return;
    }
    static RUN: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir().join(format!(
        "bungeo-fuzz-unpack-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let dest = base.join("rootfs");
    if fs::create_dir_all(&dest).is_err() {
        return;
    }
    fs::write(base.join("sentinel"), b"untouched").ok();
    let _ = crate::unpack::apply_layer(data, &dest, "sha256:fuzz");
    let beside = names(&base);
    let sentinel = fs::read(base.join("sentinel")).ok();
    fs::remove_dir_all(&base).ok();
    let expected: BTreeSet<String> = ["rootfs", "sentinel"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(beside, expected, "the layer wrote outside its root");
    assert_eq!(
        sentinel.as_deref(),
        Some(&b"untouched"[..]),
        "the layer changed a file outside its root"
    );
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
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

    #[test]
    fn layer_sizes_that_overflow_saturate() {
        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let manifest = serde_json::json!({"layers": [{"size": u64::MAX, "digest": d}, {"size": u64::MAX, "digest": d}]});
        let config = serde_json::json!({"rootfs": {"diff_ids": [d, d]}});
        let (layers, size, _) = pull::layers_of("x", &manifest, &config).expect("valid");
        assert_eq!((layers.len(), size), (2, u64::MAX));
    }
}
