//! Layer compression: recognised from the descriptor's media type or the blob's magic
//! bytes, undone by a streaming reader.

use std::fmt;
use std::io::Read;

use crate::{Error, Result};

/// How a layer tarball is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (possibly several members, as some tools write).
    Gzip,
    /// Zstandard.
    Zstd,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}

/// The compression a layer media type declares, or `None` when `mt` is not a layer
/// media type we can unpack.
pub fn from_media_type(mt: &str) -> Option<Compression> {
    // Parameters (`; foo=bar`) do not change the encoding.
    let mt = mt.split(';').next().unwrap_or("").trim();
    let compression = match mt {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar" => Compression::None,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Compression::Zstd,
        _ => return None,
    };
    Some(compression)
}

/// The compression the first bytes of a blob show; `None` when neither gzip nor zstd.
pub fn detect(magic: &[u8]) -> Compression {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Wraps `r` in a streaming decompressor for `c`.
pub fn reader<'a, R: Read + 'a>(r: R, c: Compression) -> Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(r)
                .map_err(|e| Error::io("create decoder for", "zstd stream", e))?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const DATA: &[u8] =
        b"layer contents, repeated enough to compress: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn read_all(r: &[u8], c: Compression) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        reader(r, c).unwrap().read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn media_types() {
        let cases = [
            ("application/vnd.oci.image.layer.v1.tar", Compression::None),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Compression::Zstd,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar",
                Compression::None,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
                Compression::Zstd,
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar",
                Compression::None,
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.zstd",
                Compression::Zstd,
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar",
                Compression::None,
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip; x=y",
                Compression::Gzip,
            ),
        ];
        for (mt, c) in cases {
            assert_eq!(from_media_type(mt), Some(c), "{mt}");
        }
        for mt in [
            "",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.oci.image.layer.v1.tar+bzip2",
            "application/octet-stream",
        ] {
            assert_eq!(from_media_type(mt), None, "{mt}");
        }
    }

    #[test]
    fn magic_bytes() {
        assert_eq!(detect(&gzip(DATA)), Compression::Gzip);
        assert_eq!(
            detect(&zstd::encode_all(DATA, 3).unwrap()),
            Compression::Zstd
        );
        assert_eq!(detect(&[0x1f, 0x8b]), Compression::Gzip);
        assert_eq!(
            detect(&[0x28, 0xb5, 0x2f]),
            Compression::None,
            "truncated magic"
        );
        assert_eq!(detect(&[0x1f]), Compression::None);
        assert_eq!(detect(b""), Compression::None);
        assert_eq!(detect(b"ustar\0\0\0"), Compression::None);
    }

    #[test]
    fn round_trips() {
        assert_eq!(read_all(DATA, Compression::None).unwrap(), DATA);
        assert_eq!(read_all(&gzip(DATA), Compression::Gzip).unwrap(), DATA);
        let z = zstd::encode_all(DATA, 3).unwrap();
        assert_eq!(read_all(&z, Compression::Zstd).unwrap(), DATA);
    }

    #[test]
    fn multi_member_gzip_is_read_to_the_end() {
        let mut two = gzip(b"first member, ");
        two.extend(gzip(b"second member"));
        assert_eq!(
            read_all(&two, Compression::Gzip).unwrap(),
            b"first member, second member"
        );
    }

    #[test]
    fn corrupt_input_is_an_error() {
        assert!(read_all(b"\x1f\x8bnot really gzip", Compression::Gzip).is_err());
        assert!(read_all(b"\x28\xb5\x2f\xfdgarbage", Compression::Zstd).is_err());
        let mut truncated = gzip(DATA);
        truncated.truncate(truncated.len() / 2);
        assert!(read_all(&truncated, Compression::Gzip).is_err());
    }

    #[test]
    fn display() {
        assert_eq!(Compression::Gzip.to_string(), "gzip");
        assert_eq!(Compression::Zstd.to_string(), "zstd");
        assert_eq!(Compression::None.to_string(), "none");
    }
}
