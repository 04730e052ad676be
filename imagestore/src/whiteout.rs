//! OCI whiteout names and their overlayfs equivalents.
//!
//! An OCI layer deletes a path of the layers below it with an empty entry `<dir>/.wh.<name>`, and
//! hides all of a directory's lower content with `<dir>/.wh..wh..opq`. Each snapshot directory is
//! an overlayfs lower dir, so these become what overlayfs understands: a character device 0:0
//! named `<name>`, and the xattr `trusted.overlay.opaque=y` on `<dir>`.

use std::ffi::CStr;

/// Prefix of an OCI whiteout entry's file name.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";

/// File name of an OCI opaque whiteout.
pub const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";

/// Prefix of aufs bookkeeping entries (`.wh..wh.plnk`, `.wh..wh.aufs`, `.wh..wh.orph`).
pub const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// The xattr that makes an overlayfs directory hide the directories below it.
pub const OVERLAY_OPAQUE_XATTR: &CStr = c"trusted.overlay.opaque";

/// The value overlayfs expects in [`OVERLAY_OPAQUE_XATTR`].
pub const OVERLAY_OPAQUE_VALUE: &[u8] = b"y";

/// Device number of an overlayfs whiteout (a character device 0:0).
pub const OVERLAY_WHITEOUT_RDEV: u64 = 0;

/// What a layer entry means for whiteout handling, judged from its normalised path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteout<'a> {
    /// An ordinary entry, unpacked as it is.
    None,
    /// `<dir>/.wh.<name>`: hide `<name>` of the lower layers.
    Remove(&'a [u8]),
    /// `<dir>/.wh..wh..opq`: hide every lower entry of `<dir>`.
    Opaque,
    /// aufs bookkeeping, which is not part of the image's filesystem.
    AufsMeta,
    /// A whiteout that names nothing usable (`.wh.`, `.wh..`, `.wh...`).
    Invalid,
}

/// Classifies an entry from its normalised path components (no empty, `.` or `..` components).
pub fn classify<'a>(components: &[&'a [u8]]) -> Whiteout<'a> {
    let Some((last, parents)) = components.split_last() else {
        return Whiteout::None;
    };
    // Docker's aufs driver kept its hardlink store under `/.wh..wh.plnk/`: the whole subtree is
    // bookkeeping, not just the directory entry.
    if parents.iter().any(|c| c.starts_with(AUFS_META_PREFIX)) {
        return Whiteout::AufsMeta;
    }
    if *last == OPAQUE_WHITEOUT {
        return Whiteout::Opaque;
    }
    if last.starts_with(AUFS_META_PREFIX) {
        return Whiteout::AufsMeta;
    }
    match last.strip_prefix(WHITEOUT_PREFIX) {
        None => Whiteout::None,
        Some(b"" | b"." | b"..") => Whiteout::Invalid,
        Some(name) => Whiteout::Remove(name),
    }
}

/// Whether an xattr belongs to overlayfs itself; a layer must not carry these, since they would
/// let it forge whiteouts, redirects or metacopy files in the merged view.
pub fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

/// Whether a file with this `st_mode` and `st_rdev` is an overlayfs whiteout.
pub fn is_overlay_whiteout(mode: u32, rdev: u64) -> bool {
    mode & libc::S_IFMT == libc::S_IFCHR && rdev == OVERLAY_WHITEOUT_RDEV
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify_path(path: &str) -> Whiteout<'_> {
        let parts: Vec<&[u8]> = path.split('/').map(str::as_bytes).collect();
        classify(&parts)
    }

    #[test]
    fn ordinary_entries_are_not_whiteouts() {
        assert_eq!(classify(&[]), Whiteout::None);
        assert_eq!(classify_path("etc/passwd"), Whiteout::None);
        assert_eq!(classify_path("wh.foo"), Whiteout::None);
        assert_eq!(classify_path("a/.whfoo"), Whiteout::None);
        assert_eq!(classify_path("foo.wh.bar"), Whiteout::None);
        // A whiteout prefix on a parent directory means nothing to OCI (containerd agrees).
        assert_eq!(classify_path(".wh.foo/bar"), Whiteout::None);
    }

    #[test]
    fn whiteout_names_the_hidden_entry() {
        assert_eq!(classify_path(".wh.foo"), Whiteout::Remove(b"foo"));
        assert_eq!(
            classify_path("usr/lib/.wh.libx.so"),
            Whiteout::Remove(b"libx.so")
        );
        assert_eq!(classify_path("a/.wh..hidden"), Whiteout::Remove(b".hidden"));
        assert_eq!(classify_path(".wh..wh"), Whiteout::Remove(b".wh"));
    }

    #[test]
    fn opaque_marker() {
        assert_eq!(classify_path(".wh..wh..opq"), Whiteout::Opaque);
        assert_eq!(classify_path("var/cache/.wh..wh..opq"), Whiteout::Opaque);
        assert_eq!(classify_path("var/.wh..wh..opqx"), Whiteout::AufsMeta);
    }

    #[test]
    fn aufs_metadata_is_skipped_with_its_subtree() {
        assert_eq!(classify_path(".wh..wh.plnk"), Whiteout::AufsMeta);
        assert_eq!(classify_path(".wh..wh.aufs"), Whiteout::AufsMeta);
        assert_eq!(classify_path("a/.wh..wh.orph"), Whiteout::AufsMeta);
        assert_eq!(classify_path(".wh..wh.plnk/123.456"), Whiteout::AufsMeta);
        assert_eq!(
            classify_path(".wh..wh.plnk/.wh..wh..opq"),
            Whiteout::AufsMeta
        );
    }

    #[test]
    fn whiteouts_naming_nothing_are_invalid() {
        assert_eq!(classify_path(".wh."), Whiteout::Invalid);
        assert_eq!(classify_path("a/.wh.."), Whiteout::Invalid);
        assert_eq!(classify_path("a/b/.wh..."), Whiteout::Invalid);
    }

    #[test]
    fn overlay_xattrs_are_recognised() {
        assert!(is_overlay_xattr(b"trusted.overlay.opaque"));
        assert!(is_overlay_xattr(b"trusted.overlay.redirect"));
        assert!(is_overlay_xattr(b"user.overlay.metacopy"));
        assert!(!is_overlay_xattr(b"trusted.overlayx"));
        assert!(!is_overlay_xattr(b"user.foo"));
        assert!(!is_overlay_xattr(b"security.capability"));
    }

    #[test]
    fn only_char_device_zero_zero_is_a_whiteout() {
        assert!(is_overlay_whiteout(libc::S_IFCHR | 0o644, 0));
        assert!(!is_overlay_whiteout(
            libc::S_IFCHR | 0o644,
            libc::makedev(1, 3)
        ));
        assert!(!is_overlay_whiteout(libc::S_IFBLK, 0));
        assert!(!is_overlay_whiteout(libc::S_IFREG, 0));
    }
}
