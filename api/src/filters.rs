//! The CRI list filters: by id (a prefix is accepted, as crictl users type them), by state,
//! and by label selector (every selector label must be present with the same value).

use std::collections::HashMap;

use k8s_cri::v1 as cri;

/// Whether `id` passes an id filter: an empty filter passes everything, otherwise the id must
/// start with it. Several ids may pass a short prefix; a list filter narrows, it does not
/// look one object up.
pub fn id_matches(filter: &str, id: &str) -> bool {
    id.starts_with(filter)
}

/// Whether `labels` has every key of `selector` with the same value.
pub fn labels_match(selector: &HashMap<String, String>, labels: &HashMap<String, String>) -> bool {
    selector
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

/// Whether a pod sandbox passes a `ListPodSandbox` filter (all conditions ANDed).
pub fn sandbox_matches(
    filter: Option<&cri::PodSandboxFilter>,
    id: &str,
    state: cri::PodSandboxState,
    labels: &HashMap<String, String>,
) -> bool {
    let Some(filter) = filter else {
        return true;
    };
    id_matches(&filter.id, id)
        && filter
            .state
            .as_ref()
            .is_none_or(|s| s.state == state as i32)
        && labels_match(&filter.label_selector, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn id_filter_takes_prefixes() {
        assert!(id_matches("", "abc"));
        assert!(id_matches("ab", "abc"));
        assert!(id_matches("abc", "abc"));
        assert!(!id_matches("abd", "abc"));
        assert!(!id_matches("abcd", "abc"));
    }

    #[test]
    fn every_selector_label_must_match() {
        let pod = labels(&[("app", "web"), ("tier", "front")]);
        assert!(labels_match(&labels(&[]), &pod));
        assert!(labels_match(&labels(&[("app", "web")]), &pod));
        assert!(labels_match(
            &labels(&[("app", "web"), ("tier", "front")]),
            &pod
        ));
        assert!(!labels_match(
            &labels(&[("app", "web"), ("tier", "back")]),
            &pod
        ));
        assert!(!labels_match(&labels(&[("missing", "")]), &pod));
        assert!(!labels_match(&labels(&[("app", "web")]), &labels(&[])));
    }

    #[test]
    fn sandbox_filter_ands_id_state_and_labels() {
        let pod = labels(&[("app", "web")]);
        let ready = cri::PodSandboxState::SandboxReady;
        assert!(sandbox_matches(None, "abc", ready, &pod));
        let filter = |id: &str, state: Option<cri::PodSandboxState>, sel: &[(&str, &str)]| {
            cri::PodSandboxFilter {
                id: id.to_string(),
                state: state.map(|s| cri::PodSandboxStateValue { state: s as i32 }),
                label_selector: labels(sel),
            }
        };
        assert!(sandbox_matches(
            Some(&filter("", None, &[])),
            "abc",
            ready,
            &pod
        ));
        assert!(sandbox_matches(
            Some(&filter("ab", Some(ready), &[("app", "web")])),
            "abc",
            ready,
            &pod
        ));
        assert!(!sandbox_matches(
            Some(&filter(
                "ab",
                Some(cri::PodSandboxState::SandboxNotready),
                &[]
            )),
            "abc",
            ready,
            &pod
        ));
        assert!(!sandbox_matches(
            Some(&filter("x", None, &[])),
            "abc",
            ready,
            &pod
        ));
        assert!(!sandbox_matches(
            Some(&filter("", None, &[("app", "db")])),
            "abc",
            ready,
            &pod
        ));
    }
}
