//! Pod user namespaces (`NamespaceOption.userns_options`, `hostUsers: false` in a pod spec):
//! checking what kubelet asks for against the CRI's rules, and the pod-level pieces. Mode NODE
//! (or no options) is the node's user namespace; mode POD needs exactly one uid and one gid
//! mapping, each covering container id 0; CONTAINER and TARGET are not user namespace modes.
//!
//! A POD-mode pod gets a user namespace with kubelet's mappings, pinned beside its other
//! namespaces, which it owns (so the pod's root administers its network, hostname and IPC, as
//! with containerd 2 and CRI-O); every container joins it, sees its image through idmapped
//! layers and its `uid_mappings` volumes through idmapped binds.

use std::path::{Path, PathBuf};

use bungeo_runtime::namespaces::{self, NsKind, PinnedNamespaces, userns::IdMap};
use k8s_cri::v1 as cri;

use crate::features::USER_NAMESPACES_IMPLEMENTED;

/// A validated pod user namespace: the mappings of a POD mode request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodUserns {
    pub uid: cri::IdMapping,
    pub gid: cri::IdMapping,
}

fn one_mapping(maps: &[cri::IdMapping], what: &str) -> Result<cri::IdMapping, String> {
    let [m] = maps else {
        return Err(format!(
            "userns_options: mode POD needs exactly one {what} mapping, got {}",
            maps.len()
        ));
    };
    if m.length == 0 {
        return Err(format!("userns_options: the {what} mapping has length 0"));
    }
    if m.container_id != 0 {
        return Err(format!(
            "userns_options: the {what} mapping must start at container id 0 (got {}), so the container's root is mapped",
            m.container_id
        ));
    }
    if m.host_id == 0 {
        return Err(format!(
            "userns_options: the {what} mapping must not map container id 0 to host id 0"
        ));
    }
    if u64::from(m.host_id) + u64::from(m.length) > u64::from(u32::MAX) {
        return Err(format!(
            "userns_options: the {what} mapping {}+{} runs past the last id",
            m.host_id, m.length
        ));
    }
    Ok(*m)
}

/// Checks a pod's user namespace options. `Ok(None)`: the pod uses the node's user namespace.
/// `Err` is the InvalidArgument message (without the pod's name).
pub fn validate(options: Option<&cri::UserNamespace>) -> Result<Option<PodUserns>, String> {
    let Some(u) = options else {
        return Ok(None);
    };
    let mode = cri::NamespaceMode::try_from(u.mode)
        .map_err(|_| format!("userns_options: unknown namespace mode {}", u.mode))?;
    match mode {
        cri::NamespaceMode::Node => {
            if !u.uids.is_empty() || !u.gids.is_empty() {
                return Err("userns_options: mode NODE takes no uid or gid mappings".to_owned());
            }
            Ok(None)
        }
        cri::NamespaceMode::Container | cri::NamespaceMode::Target => Err(format!(
            "userns_options: mode {} is not a user namespace mode (POD or NODE)",
            mode.as_str_name()
        )),
        cri::NamespaceMode::Pod => {
            let pod = PodUserns {
                uid: one_mapping(&u.uids, "uid")?,
                gid: one_mapping(&u.gids, "gid")?,
            };
            if let Some(kernel) = bungeo_runtime::features::probed()
                && !kernel.idmapped_mounts()
            {
                return Err(format!(
                    "userns_options: mode POD needs user namespaces and idmapped mounts, which this node's kernel lacks ({kernel:?})"
                ));
            }
            if !USER_NAMESPACES_IMPLEMENTED {
                return Err(
                    "userns_options: mode POD (hostUsers: false) is not supported by this bungeo"
                        .to_owned(),
                );
            }
            Ok(Some(pod))
        }
    }
}

/// The pod's user namespace options, from its sandbox config (the pod's, or failing that
/// none: kubelet puts them in the pod's namespace options).
fn options_of(config: &cri::PodSandboxConfig) -> Option<&cri::UserNamespace> {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .and_then(|n| n.userns_options.as_ref())
}

fn id_map(m: &cri::IdMapping) -> IdMap {
    IdMap {
        container_id: m.container_id,
        host_id: m.host_id,
        size: m.length,
    }
}

/// For a pod with its own user namespace: pins the user namespace and, owned by it, fresh
/// namespaces of `kinds` under `ns_dir`. `None` when the pod uses the node's user namespace
/// (the caller pins as usual).
pub fn pin_for_pod(
    config: &cri::PodSandboxConfig,
    ns_dir: &Path,
    kinds: &[NsKind],
    hostname: Option<&str>,
) -> crate::errors::Result<Option<PinnedNamespaces>> {
    let Some(pod) = validate(options_of(config)).map_err(crate::errors::Error::InvalidArgument)?
    else {
        return Ok(None);
    };
    namespaces::userns::pin_in_user_namespace(
        ns_dir,
        &[id_map(&pod.uid)],
        &[id_map(&pod.gid)],
        kinds,
        hostname,
    )
    .map(Some)
    .map_err(|e| crate::errors::Error::runtime("pin the pod's user namespace", e))
}

/// The host uid and gid of the pod's root, for a pod in its own user namespace.
pub fn pod_root_ids(config: &cri::PodSandboxConfig) -> Option<(u32, u32)> {
    let u = options_of(config)?;
    let root = |maps: &[cri::IdMapping]| {
        maps.iter()
            .find(|m| m.container_id == 0 && m.length > 0)
            .map(|m| m.host_id)
    };
    Some((root(&u.uids)?, root(&u.gids)?))
}

/// The pod's pinned user namespace, if it has one (pods with userns_options mode POD).
pub fn pinned_user_namespace(ns_dir: &Path) -> Option<PathBuf> {
    PinnedNamespaces::load(ns_dir).user
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(container_id: u32, host_id: u32, length: u32) -> cri::IdMapping {
        cri::IdMapping {
            host_id,
            container_id,
            length,
        }
    }

    fn opts(mode: cri::NamespaceMode, uids: Vec<cri::IdMapping>) -> cri::UserNamespace {
        cri::UserNamespace {
            mode: mode as i32,
            gids: uids.clone(),
            uids,
        }
    }

    #[test]
    fn node_or_nothing_is_the_hosts_user_namespace() {
        assert_eq!(validate(None), Ok(None));
        assert_eq!(
            validate(Some(&opts(cri::NamespaceMode::Node, vec![]))),
            Ok(None)
        );
        let e = validate(Some(&opts(
            cri::NamespaceMode::Node,
            vec![map(0, 65536, 65536)],
        )))
        .unwrap_err();
        assert!(e.contains("mode NODE takes no"), "{e}");
    }

    #[test]
    fn container_and_target_modes_are_refused() {
        for m in [cri::NamespaceMode::Container, cri::NamespaceMode::Target] {
            let e = validate(Some(&opts(m, vec![map(0, 65536, 65536)]))).unwrap_err();
            assert!(e.contains("not a user namespace mode"), "{e}");
        }
        assert!(
            validate(Some(&cri::UserNamespace {
                mode: 42,
                ..Default::default()
            }))
            .unwrap_err()
            .contains("unknown")
        );
    }

    #[test]
    fn pod_mode_needs_one_mapping_of_container_root() {
        let bad = |uids: Vec<cri::IdMapping>, want: &str| {
            let e = validate(Some(&opts(cri::NamespaceMode::Pod, uids))).unwrap_err();
            assert!(e.contains(want), "{e}");
        };
        bad(vec![], "exactly one uid mapping, got 0");
        bad(
            vec![map(0, 65536, 1000), map(1000, 200_000, 1000)],
            "exactly one uid mapping, got 2",
        );
        bad(vec![map(1, 65536, 65536)], "must start at container id 0");
        bad(vec![map(0, 0, 65536)], "host id 0");
        bad(vec![map(0, 65536, 0)], "length 0");
        bad(vec![map(0, u32::MAX - 10, 65536)], "past the last id");
        // A uid mapping alone is not enough.
        let e = validate(Some(&cri::UserNamespace {
            mode: cri::NamespaceMode::Pod as i32,
            uids: vec![map(0, 65536, 65536)],
            gids: vec![],
        }))
        .unwrap_err();
        assert!(e.contains("gid mapping"), "{e}");
    }

    #[test]
    fn a_valid_pod_request_is_served_only_when_implemented() {
        let r = validate(Some(&opts(
            cri::NamespaceMode::Pod,
            vec![map(0, 65536, 65536)],
        )));
        if USER_NAMESPACES_IMPLEMENTED {
            let p = r.unwrap().unwrap();
            assert_eq!(p.uid, map(0, 65536, 65536));
        } else {
            assert!(r.unwrap_err().contains("not supported"));
        }
    }
}
