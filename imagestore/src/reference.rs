//! Image references, parsed and normalised the way docker and containerd do it
//! (`reference.ParseNormalizedNamed` followed by `TagNameOnly`), so that `busybox`,
//! `library/busybox` and `docker.io/library/busybox:latest` all name the same image.
//!
//! Grammar (distribution/reference):
//! ```text
//! reference      := name [ ":" tag ] [ "@" digest ]
//! name           := [domain '/'] path-component ['/' path-component]*
//! domain         := host [':' port-number]
//! host           := domain-name | '[' IPv6address ']'
//! path-component := [a-z0-9]+ (separator [a-z0-9]+)*   separator := [._] | __ | -*
//! tag            := [\w][\w.-]{0,127}
//! digest         := algorithm ':' hex
//! ```

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
const NAME_TOTAL_LENGTH_MAX: usize = 255;
const TAG_LENGTH_MAX: usize = 128;

/// A fully normalised image reference: `domain/path[:tag][@digest]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// Parses and normalises `s`; a name without tag or digest gets the tag `latest`.
    pub fn parse(s: &str) -> Result<Reference> {
        let invalid = |reason: String| Error::InvalidReference {
            reference: s.to_string(),
            reason,
        };

        if s.is_empty() {
            return Err(invalid("the reference is empty".into()));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                "it contains whitespace or control characters; remove them".into(),
            ));
        }
        if is_lower_hex(s, 64) {
            // containerd refuses these so that an image ID is never mistaken for a name.
            return Err(invalid(
                "cannot specify 64-byte hexadecimal strings: that is an image ID, not a repository \
                 name (write sha256:<id> to refer to an image by ID)"
                    .into(),
            ));
        }

        // '@' can appear neither in a name nor in a tag, so the first one starts the digest.
        let (name_and_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        if name_and_tag.is_empty() {
            return Err(invalid("the repository name before '@' is missing".into()));
        }
        let digest = match digest {
            Some(d) => Some(check_digest(d).map_err(invalid)?.to_string()),
            None => None,
        };

        let (domain, remainder) = split_docker_domain(name_and_tag);
        check_domain(&domain).map_err(invalid)?;

        // The domain is gone, so the only ':' left can introduce the tag.
        let (path, tag) = match remainder.split_once(':') {
            Some((p, t)) => (p, Some(t)),
            None => (remainder.as_str(), None),
        };
        if path.is_empty() {
            return Err(invalid(format!(
                "the repository path after registry {domain:?} is missing"
            )));
        }
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(invalid(format!(
                "repository name {path:?} must be lowercase"
            )));
        }
        check_path(path).map_err(invalid)?;
        if let Some(tag) = tag {
            check_tag(tag).map_err(invalid)?;
        }

        let name_len = domain.len() + 1 + path.len();
        if name_len > NAME_TOTAL_LENGTH_MAX {
            return Err(invalid(format!(
                "repository name {domain}/{path} is {name_len} characters long; the limit is \
                 {NAME_TOTAL_LENGTH_MAX}"
            )));
        }

        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            domain,
            path: path.to_string(),
            tag,
            digest,
        })
    }

    /// Registry host, with port if one was given: `docker.io`, `127.0.0.1:5000`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Repository path inside the registry: `library/busybox`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Tag, when the reference has one.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// Digest (`sha256:<hex>`), when the reference has one.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `domain/path`, the name without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The same repository pinned to `digest`, without a tag.
    ///
    /// `digest` is taken as given: pass one that came out of the content store or a
    /// verified manifest.
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: None,
            digest: Some(digest.to_string()),
        }
    }

    /// `domain/path:tag` (a CRI repo tag), when the reference has a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag
            .as_ref()
            .map(|t| format!("{}/{}:{}", self.domain, self.path, t))
    }

    /// `domain/path@digest` (a CRI repo digest) for this repository.
    pub fn digested(&self, digest: &str) -> String {
        format!("{}/{}@{}", self.domain, self.path, digest)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Reference::parse(s)
    }
}

/// Recognises an image ID, `sha256:<64 hex>` or the bare `<64 hex>`, and returns it as
/// `sha256:<hex>`.
pub fn parse_image_id(s: &str) -> Option<String> {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    is_lower_hex(hex, 64).then(|| format!("sha256:{hex}"))
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// docker's `splitDockerDomain`: the first component is a registry only when it looks
/// like a host (has a '.' or ':', or is `localhost`); Docker Hub's official images live
/// under `library/`.
fn split_docker_domain(name: &str) -> (String, String) {
    let (domain, remainder) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (first, rest.to_string())
        }
        _ => (DEFAULT_DOMAIN, name.to_string()),
    };
    let domain = if domain == LEGACY_DEFAULT_DOMAIN {
        DEFAULT_DOMAIN
    } else {
        domain
    };
    let remainder = if domain == DEFAULT_DOMAIN && !remainder.contains('/') {
        format!("{OFFICIAL_REPO_PREFIX}{remainder}")
    } else {
        remainder
    };
    (domain.to_string(), remainder)
}

fn check_domain(domain: &str) -> std::result::Result<(), String> {
    let bad = |why: &str| Err(format!("registry host {domain:?} is invalid: {why}"));
    let port = if let Some(rest) = domain.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return bad("an IPv6 address needs a closing ']'");
        };
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return bad("the IPv6 address between '[' and ']' is malformed");
        }
        if after.is_empty() {
            None
        } else if let Some(port) = after.strip_prefix(':') {
            Some(port)
        } else {
            return bad("only ':<port>' may follow an IPv6 address");
        }
    } else {
        let (host, port) = match domain.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (domain, None),
        };
        if host.is_empty() {
            return bad("the host name is empty");
        }
        for label in host.split('.') {
            let b = label.as_bytes();
            let ok = !b.is_empty()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-';
            if !ok {
                return bad(
                    "host name labels are letters, digits and inner '-', separated by single '.'",
                );
            }
        }
        port
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return bad("the port after ':' must be a number");
    }
    Ok(())
}

fn check_path(path: &str) -> std::result::Result<(), String> {
    for component in path.split('/') {
        if component.is_empty() {
            return Err(format!(
                "repository path {path:?} has an empty component (a leading, trailing or double '/')"
            ));
        }
        if !is_path_component(component.as_bytes()) {
            return Err(format!(
                "path component {component:?} is invalid: components are lowercase letters and \
                 digits, separated by one '.', one or two '_', or any number of '-', and must \
                 start and end with a letter or digit"
            ));
        }
    }
    Ok(())
}

fn is_path_component(b: &[u8]) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    match (b.first(), b.last()) {
        (Some(&first), Some(&last)) if alnum(first) && alnum(last) => {}
        _ => return false,
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &b[start..i];
        let ok = sep == b"." || sep == b"_" || sep == b"__" || sep.iter().all(|&c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn check_tag(tag: &str) -> std::result::Result<(), String> {
    if tag.is_empty() {
        return Err("the tag after ':' is empty; remove the ':' or write a tag".into());
    }
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = tag.as_bytes();
    let ok = b.len() <= TAG_LENGTH_MAX
        && word(b[0])
        && b[1..].iter().all(|&c| word(c) || c == b'.' || c == b'-');
    if !ok {
        return Err(format!(
            "tag {tag:?} is invalid: a tag is 1 to {TAG_LENGTH_MAX} letters, digits, '_', '.' \
             and '-', and cannot start with '.' or '-'"
        ));
    }
    Ok(())
}

/// Checks the digest syntax of the distribution grammar, then insists on sha256, the only
/// algorithm our content store holds.
fn check_digest(digest: &str) -> std::result::Result<&str, String> {
    if digest.is_empty() {
        return Err("the digest after '@' is empty; remove the '@' or write sha256:<hex>".into());
    }
    let malformed = || {
        Err(format!(
            "digest {digest:?} is malformed: expected <algorithm>:<hex>, e.g. sha256:<64 hex digits>"
        ))
    };
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return malformed();
    };
    let algorithm_ok = !algorithm.is_empty()
        && algorithm.split(['+', '.', '-', '_']).all(|c| {
            let b = c.as_bytes();
            !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(u8::is_ascii_alphanumeric)
        });
    let hex_ok = hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    if !algorithm_ok || !hex_ok {
        return malformed();
    }
    if algorithm != "sha256" {
        return Err(format!(
            "digest algorithm {algorithm:?} is not supported: only sha256 digests are supported"
        ));
    }
    if !is_lower_hex(hex, 64) {
        return Err(format!(
            "digest {digest:?} is invalid: a sha256 digest has exactly 64 lowercase hex digits"
        ));
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "7b3ccabffc97de872a30dfd234fd972a66d247c8cfc69b0550f276481852627c";

    fn parsed(s: &str) -> String {
        match Reference::parse(s) {
            Ok(r) => r.to_string(),
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    fn reason(s: &str) -> String {
        match Reference::parse(s) {
            Ok(r) => panic!("{s:?} should be rejected, parsed as {r}"),
            Err(Error::InvalidReference { reference, reason }) => {
                assert_eq!(reference, s);
                reason
            }
            Err(e) => panic!("{s:?}: wrong error {e:?}"),
        }
    }

    #[test]
    fn normalises_docker_hub_names() {
        assert_eq!(parsed("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(parsed("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(
            parsed("library/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(parsed("user/img"), "docker.io/user/img:latest");
        assert_eq!(parsed("user/img:v1"), "docker.io/user/img:v1");
        assert_eq!(parsed("a/b/c"), "docker.io/a/b/c:latest");
        assert_eq!(
            parsed("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            parsed("docker.io/library/busybox:latest"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(parsed("index.docker.io/x"), "docker.io/library/x:latest");
        assert_eq!(parsed("index.docker.io/user/x:t"), "docker.io/user/x:t");
    }

    #[test]
    fn recognises_registries() {
        assert_eq!(parsed("127.0.0.1:5000/a/b:t"), "127.0.0.1:5000/a/b:t");
        assert_eq!(parsed("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(parsed("localhost/x"), "localhost/x:latest");
        assert_eq!(parsed("quay.io/coreos/etcd"), "quay.io/coreos/etcd:latest");
        assert_eq!(
            parsed("registry.k8s.io/pause:3.9"),
            "registry.k8s.io/pause:3.9"
        );
        assert_eq!(parsed("Example.COM/x"), "Example.COM/x:latest");
        assert_eq!(parsed("my-reg:443/x"), "my-reg:443/x:latest");
        assert_eq!(parsed("[::1]:5000/x"), "[::1]:5000/x:latest");
        assert_eq!(parsed("[fe80::1]/x"), "[fe80::1]/x:latest");
        // Without a '/' the ':' is a tag, not a port: docker reads it the same way.
        assert_eq!(parsed("localhost:5000"), "docker.io/library/localhost:5000");
        assert_eq!(parsed("localhost"), "docker.io/library/localhost:latest");
        // No '.', ':' and not localhost: a Docker Hub user.
        assert_eq!(parsed("registry/x"), "docker.io/registry/x:latest");

        let r = Reference::parse("127.0.0.1:5000/a/b:t").unwrap();
        assert_eq!(r.domain(), "127.0.0.1:5000");
        assert_eq!(r.path(), "a/b");
        assert_eq!(r.tag(), Some("t"));
        assert_eq!(r.digest(), None);
    }

    #[test]
    fn digests() {
        let d = format!("sha256:{HEX}");
        let r = Reference::parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(r.tag(), None, "a digest alone gets no default tag");
        assert_eq!(r.digest(), Some(d.as_str()));
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{d}"));
        assert_eq!(r.tagged(), None);

        let r = Reference::parse(&format!("localhost:5000/x:1.0@{d}")).unwrap();
        assert_eq!(r.tag(), Some("1.0"));
        assert_eq!(r.digest(), Some(d.as_str()));
        assert_eq!(r.to_string(), format!("localhost:5000/x:1.0@{d}"));
    }

    #[test]
    fn digest_errors() {
        let upper = format!("sha256:{}", HEX.to_uppercase());
        assert!(reason(&format!("busybox@{upper}")).contains("64 lowercase hex"));
        assert!(reason(&format!("busybox@sha256:{}", &HEX[..63])).contains("64 lowercase hex"));
        assert!(reason(&format!("busybox@sha256:{HEX}0")).contains("64 lowercase hex"));
        let sha512 = format!("sha512:{HEX}{HEX}");
        assert!(reason(&format!("busybox@{sha512}")).contains("only sha256"));
        assert!(reason(&format!("busybox@multihash+base58:{HEX}")).contains("only sha256"));
        assert!(reason("busybox@sha256").contains("malformed"));
        assert!(reason("busybox@sha256:abc").contains("malformed"));
        assert!(reason(&format!("busybox@1sha:{HEX}")).contains("malformed"));
        assert!(reason(&format!("busybox@sha256:{HEX}@sha256:{HEX}")).contains("malformed"));
        assert!(reason("busybox@").contains("after '@' is empty"));
        assert!(reason(&format!("@sha256:{HEX}")).contains("missing"));
    }

    #[test]
    fn rejects_bad_references_with_a_reason() {
        assert!(reason("").contains("empty"));
        assert!(reason("Busybox").contains("must be lowercase"));
        assert!(reason("docker.io/User/img").contains("must be lowercase"));
        // containerd 1.6 (docker/distribution 2.8) reads an upper-case first component as
        // part of a Docker Hub path, not as a registry host.
        assert!(reason("Foo/bar").contains("repository name \"Foo/bar\" must be lowercase"));
        assert!(reason("busy box").contains("whitespace"));
        assert!(reason(" busybox").contains("whitespace"));
        assert!(reason("busybox\n").contains("whitespace"));
        assert!(reason("busybox:").contains("tag after ':' is empty"));
        assert!(reason("localhost:5000/x:").contains("tag after ':' is empty"));
        assert!(reason(HEX).contains("64-byte hexadecimal"));
        assert!(reason("busybox:a:b").contains("tag \"a:b\" is invalid"));
        assert!(reason("busybox:.x").contains("is invalid"));
        assert!(reason("busybox:-x").contains("is invalid"));
        assert!(reason(&format!("busybox:{}", "t".repeat(129))).contains("is invalid"));
        assert!(reason("localhost:5000/").contains("path after registry"));
        assert!(reason("localhost:5000/a//b").contains("empty component"));
        assert!(reason("a/b/").contains("empty component"));
        assert!(reason("a..b").contains("path component \"a..b\""));
        assert!(reason("a___b").contains("is invalid"));
        assert!(reason("a._b").contains("is invalid"));
        assert!(reason("_ab").contains("is invalid"));
        assert!(reason("ab-").contains("is invalid"));
        assert!(reason("ünïcode").contains("is invalid"));
        assert!(reason("host:port/x").contains("port after ':' must be a number"));
        assert!(reason("host:/x").contains("port"));
        assert!(reason("-bad.com/x").contains("registry host"));
        assert!(reason("bad..com/x").contains("registry host"));
        assert!(reason("a_b.com/x").contains("registry host"));
        assert!(reason("[::1/x").contains("closing"));
        assert!(reason("[zz:]/x").contains("IPv6"));
        // Without '.' or ':' the first component is a Docker Hub path, as in docker.
        assert!(reason("[zz]/x").contains("path component \"[zz]\""));
        assert!(reason("[::1]x/y").contains("IPv6"));
        assert!(reason(":5000/x").contains("host name is empty"));
    }

    #[test]
    fn separators_in_path_components() {
        for ok in [
            "a.b",
            "a_b",
            "a__b",
            "a-b",
            "a---b",
            "a1.b2_c3__d4-e5",
            "0",
            "a.b.c",
        ] {
            assert_eq!(parsed(ok), format!("docker.io/library/{ok}:latest"));
        }
        for bad in ["a.", ".a", "a-.b", "a_-b", "a.-b", "a__.b"] {
            reason(bad);
        }
    }

    #[test]
    fn tags() {
        assert_eq!(parsed("x:_under"), "docker.io/library/x:_under");
        assert_eq!(parsed("x:V1.2-rc_3"), "docker.io/library/x:V1.2-rc_3");
        let longest = "t".repeat(128);
        assert_eq!(
            Reference::parse(&format!("x:{longest}")).unwrap().tag(),
            Some(longest.as_str())
        );
    }

    #[test]
    fn name_length_limit_counts_the_domain() {
        // "docker.io/library/" is 18 characters: a 237-character name is exactly 255.
        let fits = "a".repeat(237);
        assert_eq!(Reference::parse(&fits).unwrap().repository().len(), 255);
        let too_long = "a".repeat(238);
        assert!(reason(&too_long).contains("the limit is 255"));
    }

    #[test]
    fn accessors_and_derived_names() {
        let r = Reference::parse("busybox:1.36").unwrap();
        assert_eq!(r.domain(), "docker.io");
        assert_eq!(r.path(), "library/busybox");
        assert_eq!(r.repository(), "docker.io/library/busybox");
        assert_eq!(
            r.tagged().as_deref(),
            Some("docker.io/library/busybox:1.36")
        );
        let d = format!("sha256:{HEX}");
        assert_eq!(r.digested(&d), format!("docker.io/library/busybox@{d}"));

        let pinned = r.with_digest(&d);
        assert_eq!(pinned.tag(), None);
        assert_eq!(pinned.digest(), Some(d.as_str()));
        assert_eq!(pinned.to_string(), format!("docker.io/library/busybox@{d}"));
        // Display output parses back to the same reference.
        assert_eq!(Reference::parse(&pinned.to_string()).unwrap(), pinned);
        assert_eq!(Reference::parse(&r.to_string()).unwrap(), r);
        assert_eq!("busybox:1.36".parse::<Reference>().unwrap(), r);
    }

    #[test]
    fn equivalent_spellings_are_equal() {
        let forms = [
            "busybox",
            "busybox:latest",
            "library/busybox",
            "docker.io/busybox",
            "docker.io/library/busybox:latest",
            "index.docker.io/library/busybox",
        ];
        let first = Reference::parse(forms[0]).unwrap();
        for f in forms {
            assert_eq!(Reference::parse(f).unwrap(), first, "{f}");
        }
    }

    #[test]
    fn image_ids() {
        let id = format!("sha256:{HEX}");
        assert_eq!(parse_image_id(HEX), Some(id.clone()));
        assert_eq!(parse_image_id(&id), Some(id.clone()));
        assert_eq!(parse_image_id(&HEX.to_uppercase()), None);
        assert_eq!(parse_image_id(&HEX[..12]), None);
        assert_eq!(parse_image_id(&format!("sha512:{HEX}")), None);
        assert_eq!(parse_image_id("sha256:"), None);
        assert_eq!(parse_image_id("busybox"), None);
        assert_eq!(parse_image_id(""), None);
    }
}
