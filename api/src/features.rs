//! The runtime features `Status` advertises: per runtime handler, recursive read-only mounts
//! and user namespaces, each only when the kernel probe found it working *and* bungeo
//! implements it; and SupplementalGroupsPolicy with `ContainerStatus.user`, which bungeo always
//! implements. kubelet turns these into node features and refuses pods that need one the node
//! lacks, so a wrong `true` breaks pods and a wrong `false` hides a working feature.

use std::path::Path;

use bungeo_runtime::features::{KernelFeatures, probe_once};
use k8s_cri::v1 as cri;

use crate::config::Config;

/// Whether bungeo runs pods with `userns_options` mode POD (hostUsers: false). Advertised only
/// together with the kernel's user namespace and idmapped-mount support (api/src/userns.rs).
pub const USER_NAMESPACES_IMPLEMENTED: bool = true;

/// Runs the kernel probe once, off the async workers, with the root directory whose
/// filesystem holds layers and volumes. Later answers reuse the result.
pub async fn probe_at_start(root: &Path) -> &'static KernelFeatures {
    let root = root.to_path_buf();
    match tokio::task::spawn_blocking(move || probe_once(&root)).await {
        Ok(found) => found,
        // The probe itself does not panic; a join error can only be a cancelled runtime, and
        // then the next Status runs the probe itself.
        Err(_) => probe_once(Path::new("/")),
    }
}

/// The features of every runtime handler: the default `""` and each configured one. All
/// handlers run containers the same way, so they share the answer.
pub fn runtime_handlers(config: &Config) -> Vec<cri::RuntimeHandler> {
    handlers_for(&config.runtime_handlers, probe_once(&config.root))
}

fn handlers_for(names: &[String], kernel: &KernelFeatures) -> Vec<cri::RuntimeHandler> {
    let features = cri::RuntimeHandlerFeatures {
        recursive_read_only_mounts: kernel.recursive_read_only.is_yes(),
        user_namespaces: USER_NAMESPACES_IMPLEMENTED && kernel.idmapped_mounts(),
    };
    std::iter::once(String::new())
        .chain(names.iter().filter(|n| !n.is_empty()).cloned())
        .map(|name| cri::RuntimeHandler {
            name,
            features: Some(features),
        })
        .collect()
}

/// The features that do not depend on the handler.
pub fn runtime_features() -> cri::RuntimeFeatures {
    cri::RuntimeFeatures {
        supplemental_groups_policy: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bungeo_runtime::features::Support;

    fn kernel(rro: bool, idmap: bool) -> KernelFeatures {
        let s = |b: bool| {
            if b {
                Support::Yes
            } else {
                Support::No("probe failed".into())
            }
        };
        KernelFeatures {
            recursive_read_only: s(rro),
            user_namespaces: s(true),
            idmap_tmpfs: s(idmap),
            idmap_root_fs: s(idmap),
            idmap_overlay: s(idmap),
        }
    }

    #[test]
    fn the_default_handler_comes_first_and_each_handler_once() {
        let h = handlers_for(&["fast".into(), String::new()], &kernel(true, true));
        let names: Vec<&str> = h.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["", "fast"]);
    }

    #[test]
    fn features_follow_the_probe_and_the_implementation() {
        let h = handlers_for(&[], &kernel(true, true));
        let f = h[0].features.unwrap();
        assert!(f.recursive_read_only_mounts);
        assert_eq!(f.user_namespaces, USER_NAMESPACES_IMPLEMENTED);
        let h = handlers_for(&[], &kernel(false, false));
        let f = h[0].features.unwrap();
        assert!(!f.recursive_read_only_mounts);
        assert!(!f.user_namespaces);
        assert!(runtime_features().supplemental_groups_policy);
    }
}
