//! The node's platform and the choice of a manifest from an image index, following
//! containerd's `platforms.Default()` / `platforms.Only()`: names are normalised
//! (`x86_64` is `amd64`, `aarch64` is `arm64`, `arm64/v8` is plain `arm64`, plain `arm` is
//! `arm/v7`), and a platform also accepts the older ones its CPU runs, in order of
//! preference (arm/v7 then v6 then v5; amd64 then 386; arm64 then 32-bit arm).

use std::fmt;

/// An OS/architecture/variant triple in Go's (and OCI's) names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, `arm`, ...
    pub architecture: String,
    /// `v7`, `v8`, ... when the architecture has variants.
    pub variant: Option<String>,
}

/// A normalised platform; an empty variant means none.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Normalized {
    os: String,
    arch: String,
    variant: String,
}

impl Platform {
    /// The platform this process runs on, named the way image indexes name it.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            // Rust's `arm` targets that run Linux containers are armv7 (armhf).
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "powerpc64" => ("ppc64", None),
            "mips64" if cfg!(target_endian = "little") => ("mips64le", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// Whether an image built for `os`/`arch`/`variant` runs on this platform.
    pub fn matches(&self, os: &str, arch: &str, variant: Option<&str>) -> bool {
        self.rank(os, arch, variant).is_some()
    }

    /// The candidate this platform prefers among `(item, os, arch, variant)`: the one
    /// closest to this platform; among equally close ones, the first.
    pub fn best_match<'a, T>(
        &self,
        candidates: impl IntoIterator<Item = (T, &'a str, &'a str, Option<&'a str>)>,
    ) -> Option<T> {
        let vector = self.vector();
        let mut best: Option<(usize, T)> = None;
        for (item, os, arch, variant) in candidates {
            let candidate = normalize(os, arch, variant);
            let Some(rank) = vector.iter().position(|p| *p == candidate) else {
                continue;
            };
            if best.as_ref().is_none_or(|(r, _)| rank < *r) {
                best = Some((rank, item));
            }
        }
        best.map(|(_, item)| item)
    }

    fn rank(&self, os: &str, arch: &str, variant: Option<&str>) -> Option<usize> {
        let candidate = normalize(os, arch, variant);
        self.vector().iter().position(|p| *p == candidate)
    }

    /// containerd's `platformVector`: this platform first, then what it can also run,
    /// most preferred first.
    fn vector(&self) -> Vec<Normalized> {
        let me = normalize(&self.os, &self.architecture, self.variant.as_deref());
        let mut vector = vec![me.clone()];
        extend_vector(&me, &mut vector);
        vector
    }
}

fn extend_vector(p: &Normalized, vector: &mut Vec<Normalized>) {
    let with = |arch: &str, variant: String| Normalized {
        os: p.os.clone(),
        arch: arch.to_string(),
        variant,
    };
    match p.arch.as_str() {
        "amd64" => {
            if let Some(level) = variant_number(&p.variant).filter(|&n| n > 1) {
                for n in (1..level).rev() {
                    // amd64 v1 is the baseline, which normalises to no variant.
                    let variant = if n == 1 {
                        String::new()
                    } else {
                        format!("v{n}")
                    };
                    vector.push(with("amd64", variant));
                }
            }
            vector.push(with("386", String::new()));
        }
        "arm" => {
            if let Some(level) = variant_number(&p.variant).filter(|&n| n > 5) {
                for n in (5..level).rev() {
                    vector.push(with("arm", format!("v{n}")));
                }
            }
        }
        "arm64" => {
            let variant = if p.variant.is_empty() {
                "v8".to_string()
            } else {
                p.variant.clone()
            };
            let arm = with("arm", variant);
            vector.push(arm.clone());
            extend_vector(&arm, vector);
        }
        _ => {}
    }
}

fn variant_number(variant: &str) -> Option<u32> {
    variant.strip_prefix('v').unwrap_or(variant).parse().ok()
}

/// containerd's `Normalize`: lower case, Go names, and the variant spellings that mean
/// the same thing collapsed into one.
fn normalize(os: &str, arch: &str, variant: Option<&str>) -> Normalized {
    let os = match os.to_ascii_lowercase().as_str() {
        "macos" => "darwin".to_string(),
        other => other.to_string(),
    };
    let arch = arch.to_ascii_lowercase();
    let variant = variant.unwrap_or("").to_ascii_lowercase();
    let (arch, variant) = match arch.as_str() {
        "i386" => ("386".to_string(), String::new()),
        "x86_64" | "x86-64" | "amd64" => {
            let variant = if variant == "v1" {
                String::new()
            } else {
                variant
            };
            ("amd64".to_string(), variant)
        }
        "aarch64" | "arm64" => {
            let variant = match variant.as_str() {
                "8" | "v8" | "v8.0" => String::new(),
                "9" | "9.0" | "v9.0" => "v9".to_string(),
                _ => variant,
            };
            ("arm64".to_string(), variant)
        }
        "armhf" => ("arm".to_string(), "v7".to_string()),
        "armel" => ("arm".to_string(), "v6".to_string()),
        "arm" => {
            let variant = match variant.as_str() {
                "" | "7" => "v7".to_string(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            };
            ("arm".to_string(), variant)
        }
        _ => (arch, variant),
    };
    Normalized { os, arch, variant }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
        }
    }

    #[test]
    fn host_uses_go_names() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        match std::env::consts::ARCH {
            "x86_64" => {
                assert_eq!(host, platform("amd64", None));
                assert_eq!(host.to_string(), "linux/amd64");
            }
            "aarch64" => {
                assert_eq!(host, platform("arm64", Some("v8")));
                assert_eq!(host.to_string(), "linux/arm64/v8");
            }
            _ => {}
        }
        assert!(host.matches(&host.os, &host.architecture, host.variant.as_deref()));
    }

    #[test]
    fn display() {
        assert_eq!(platform("amd64", None).to_string(), "linux/amd64");
        assert_eq!(platform("arm64", Some("v8")).to_string(), "linux/arm64/v8");
        assert_eq!(platform("arm", Some("v7")).to_string(), "linux/arm/v7");
    }

    #[test]
    fn arch_aliases_match() {
        let amd64 = platform("amd64", None);
        assert!(amd64.matches("linux", "amd64", None));
        assert!(amd64.matches("linux", "x86_64", None));
        assert!(amd64.matches("Linux", "AMD64", None));
        assert!(amd64.matches("linux", "amd64", Some("v1")));
        assert!(!amd64.matches("linux", "amd64", Some("v3")));
        assert!(!amd64.matches("windows", "amd64", None));
        assert!(!amd64.matches("linux", "arm64", None));
        assert!(!amd64.matches("linux", "s390x", None));

        let x86_64 = platform("x86_64", None);
        assert!(x86_64.matches("linux", "amd64", None));
    }

    #[test]
    fn arm64_v8_is_the_same_as_no_variant() {
        for host in [
            platform("arm64", Some("v8")),
            platform("arm64", None),
            platform("aarch64", None),
        ] {
            assert!(host.matches("linux", "arm64", None), "{host}");
            assert!(host.matches("linux", "arm64", Some("v8")), "{host}");
            assert!(host.matches("linux", "aarch64", Some("8")), "{host}");
            assert!(!host.matches("linux", "arm64", Some("v9")), "{host}");
            assert!(!host.matches("linux", "amd64", None), "{host}");
        }
    }

    #[test]
    fn arm_v7_accepts_older_variants_in_order() {
        let v7 = platform("arm", Some("v7"));
        assert!(v7.matches("linux", "arm", Some("v7")));
        assert!(v7.matches("linux", "arm", None), "plain arm means v7");
        assert!(v7.matches("linux", "arm", Some("v6")));
        assert!(v7.matches("linux", "arm", Some("v5")));
        assert!(v7.matches("linux", "armel", None), "armel is arm/v6");
        assert!(!v7.matches("linux", "arm", Some("v8")));
        assert!(!v7.matches("linux", "arm64", None));

        let candidates = [
            ("v5", "linux", "arm", Some("v5")),
            ("v6", "linux", "arm", Some("v6")),
            ("v7", "linux", "arm", Some("v7")),
        ];
        assert_eq!(v7.best_match(candidates), Some("v7"));
        assert_eq!(v7.best_match(candidates[..2].iter().copied()), Some("v6"));
        assert_eq!(v7.best_match(candidates[..1].iter().copied()), Some("v5"));

        let v6 = platform("arm", Some("v6"));
        assert!(!v6.matches("linux", "arm", Some("v7")));
        assert!(
            !v6.matches("linux", "arm", None),
            "plain arm means v7, too new for v6"
        );
        assert_eq!(v6.best_match(candidates), Some("v6"));
    }

    #[test]
    fn fallbacks_rank_below_the_native_platform() {
        let amd64 = platform("amd64", None);
        let index = [
            ("386", "linux", "386", None),
            ("arm64", "linux", "arm64", Some("v8")),
            ("amd64", "linux", "amd64", None),
        ];
        assert_eq!(amd64.best_match(index), Some("amd64"));
        assert_eq!(amd64.best_match(index[..2].iter().copied()), Some("386"));
        assert_eq!(amd64.best_match(index[1..2].iter().copied()), None);

        let arm64 = platform("arm64", Some("v8"));
        let index = [
            ("arm/v7", "linux", "arm", Some("v7")),
            ("arm/v6", "linux", "arm", Some("v6")),
            ("arm64", "linux", "arm64", None),
        ];
        assert_eq!(arm64.best_match(index), Some("arm64"));
        assert_eq!(arm64.best_match(index[..2].iter().copied()), Some("arm/v7"));
        assert_eq!(
            arm64.best_match(index[1..2].iter().copied()),
            Some("arm/v6")
        );
    }

    #[test]
    fn amd64_levels_accept_lower_levels() {
        let v3 = platform("amd64", Some("v3"));
        let index = [
            ("v1", "linux", "amd64", None),
            ("v2", "linux", "amd64", Some("v2")),
            ("v4", "linux", "amd64", Some("v4")),
        ];
        assert_eq!(v3.best_match(index), Some("v2"));
        assert_eq!(v3.best_match([index[0], index[2]]), Some("v1"));
        assert!(!v3.matches("linux", "amd64", Some("v4")));
    }

    #[test]
    fn exact_variant_preferred_and_first_wins_ties() {
        let arm64 = platform("arm64", None);
        let index = [
            ("first", "linux", "arm64", Some("v8")),
            ("second", "linux", "aarch64", None),
        ];
        assert_eq!(arm64.best_match(index), Some("first"));

        let amd64 = platform("amd64", None);
        let index = [
            ("windows", "windows", "amd64", None),
            ("unknown", "unknown", "unknown", None),
            ("linux", "linux", "amd64", None),
        ];
        assert_eq!(amd64.best_match(index), Some("linux"));
        assert_eq!(amd64.best_match(index[..2].iter().copied()), None);
        let none: [(u8, &str, &str, Option<&str>); 0] = [];
        assert_eq!(amd64.best_match(none), None);
    }

    #[test]
    fn normalisation() {
        let n = |a: &str, v: Option<&str>| {
            let p = normalize("linux", a, v);
            (p.arch, p.variant)
        };
        assert_eq!(n("i386", Some("x")), ("386".into(), "".into()));
        assert_eq!(n("x86-64", None), ("amd64".into(), "".into()));
        assert_eq!(n("arm64", Some("9")), ("arm64".into(), "v9".into()));
        assert_eq!(n("armhf", None), ("arm".into(), "v7".into()));
        assert_eq!(n("arm", Some("6")), ("arm".into(), "v6".into()));
        assert_eq!(n("arm", Some("v8")), ("arm".into(), "v8".into()));
        assert_eq!(n("riscv64", None), ("riscv64".into(), "".into()));
        assert_eq!(normalize("MacOS", "amd64", None).os, "darwin");
    }
}
