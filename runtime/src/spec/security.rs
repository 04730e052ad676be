//! Capabilities, masked and read-only paths, AppArmor and the choice of seccomp profile.
//!
//! Two deliberate differences from containerd 1.6:
//! - Masked and read-only paths default to containerd's OCI lists (plus
//!   `/sys/devices/virtual/powercap`, which kubelet masks too) when the CRI request carries none;
//!   containerd 1.6 clears its defaults and masks nothing unless kubelet sends the lists. proto3
//!   cannot tell "not given" from "given empty", so an unmasked procMount (which also needs user
//!   namespaces, unsupported here) is not honoured.
//! - `no_new_privs` follows the CRI field (default false), as containerd does; a pod asks for it
//!   with `allowPrivilegeEscalation: false`.
//!
//! Unknown capability names are skipped with a warning, which is what runc does with the spec
//! containerd writes for them.

use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::{LinuxContainerSecurityContext, SecurityProfile};
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities, LinuxSeccomp};

use super::host::SpecHost;
use super::seccomp_default;
use crate::apparmor::AppArmor;
use crate::{Error, Result};

/// Name of the AppArmor profile applied for `RuntimeDefault` when AppArmor is enabled; the
/// daemon loads it at start ([`crate::apparmor::prepare`]).
pub use crate::apparmor::DEFAULT_PROFILE as DEFAULT_APPARMOR_PROFILE;

/// containerd's default capability set, in its order.
pub(super) const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability oci-spec knows, in kernel number order (index = capability number).
pub(super) const KNOWN_CAPABILITIES: [Capability; 41] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::LinuxImmutable,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetAdmin,
    Capability::NetRaw,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysChroot,
    Capability::SysPtrace,
    Capability::SysPacct,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysNice,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Mknod,
    Capability::Lease,
    Capability::AuditWrite,
    Capability::AuditControl,
    Capability::Setfcap,
    Capability::MacOverride,
    Capability::MacAdmin,
    Capability::Syslog,
    Capability::WakeAlarm,
    Capability::BlockSuspend,
    Capability::AuditRead,
    Capability::Perfmon,
    Capability::Bpf,
    Capability::CheckpointRestore,
];

/// containerd's default masked paths, plus powercap as kubelet masks it.
pub(super) const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
    "/sys/devices/virtual/powercap",
];

/// containerd's default read-only paths.
pub(super) const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Parses a capability name with or without `CAP_`, in any case.
pub(super) fn parse_capability(name: &str) -> Option<Capability> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

/// The process capability sets, each ordered and without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct CapSets {
    pub bounding: Vec<Capability>,
    pub effective: Vec<Capability>,
    pub permitted: Vec<Capability>,
    pub inheritable: Vec<Capability>,
    pub ambient: Vec<Capability>,
}

impl CapSets {
    fn same(caps: &[Capability]) -> Self {
        Self {
            bounding: caps.to_vec(),
            effective: caps.to_vec(),
            permitted: caps.to_vec(),
            inheritable: Vec::new(),
            ambient: Vec::new(),
        }
    }

    pub fn to_oci(&self) -> LinuxCapabilities {
        let set = |v: &Vec<Capability>| -> Option<Capabilities> {
            (!v.is_empty()).then(|| v.iter().copied().collect())
        };
        let mut c = LinuxCapabilities::default();
        c.set_bounding(set(&self.bounding));
        c.set_effective(set(&self.effective));
        c.set_permitted(set(&self.permitted));
        c.set_inheritable(set(&self.inheritable));
        c.set_ambient(set(&self.ambient));
        c
    }
}

fn add(set: &mut Vec<Capability>, cap: Capability) {
    if !set.contains(&cap) {
        set.push(cap);
    }
}

fn parse_or_warn(name: &str) -> Option<Capability> {
    let cap = parse_capability(name);
    if cap.is_none() {
        tracing::warn!(capability = name, "ignoring unknown capability");
    }
    cap
}

/// The capability sets: containerd's defaults with the CRI adds and drops (`ALL` first, then the
/// named ones, drops last), or every capability of the kernel for a privileged container. CRI
/// ambient capabilities go into every set, ambient and inheritable included.
pub(super) fn capabilities(
    sc: &LinuxContainerSecurityContext,
    host: &dyn SpecHost,
) -> Result<CapSets> {
    if sc.privileged {
        return Ok(CapSets::same(&host.all_capabilities()));
    }
    let mut sets = CapSets::same(&DEFAULT_CAPABILITIES);
    let Some(req) = sc.capabilities.as_ref() else {
        return Ok(sets);
    };
    let is_all = |s: &String| s.eq_ignore_ascii_case("ALL");
    if req.add_capabilities.iter().any(is_all) {
        sets = CapSets::same(&host.all_capabilities());
    }
    if req.drop_capabilities.iter().any(is_all) {
        sets = CapSets::default();
    }
    for cap in req
        .add_capabilities
        .iter()
        .filter(|s| !is_all(s))
        .filter_map(|s| parse_or_warn(s))
    {
        add(&mut sets.bounding, cap);
        add(&mut sets.effective, cap);
        add(&mut sets.permitted, cap);
    }
    for cap in req
        .add_ambient_capabilities
        .iter()
        .filter_map(|s| parse_or_warn(s))
    {
        add(&mut sets.bounding, cap);
        add(&mut sets.effective, cap);
        add(&mut sets.permitted, cap);
        add(&mut sets.inheritable, cap);
        add(&mut sets.ambient, cap);
    }
    for cap in req
        .drop_capabilities
        .iter()
        .filter(|s| !is_all(s))
        .filter_map(|s| parse_or_warn(s))
    {
        for set in [
            &mut sets.bounding,
            &mut sets.effective,
            &mut sets.permitted,
            &mut sets.inheritable,
            &mut sets.ambient,
        ] {
            set.retain(|c| *c != cap);
        }
    }
    Ok(sets)
}

/// Masked and read-only paths: none for a privileged container, else the CRI's lists, each
/// falling back to the defaults when empty.
pub(super) fn masked_and_readonly_paths(
    sc: &LinuxContainerSecurityContext,
) -> (Vec<String>, Vec<String>) {
    if sc.privileged {
        return (Vec::new(), Vec::new());
    }
    let pick = |given: &Vec<String>, default: &[&str]| {
        if given.is_empty() {
            default.iter().map(|s| s.to_string()).collect()
        } else {
            given.clone()
        }
    };
    (
        pick(&sc.masked_paths, &DEFAULT_MASKED_PATHS),
        pick(&sc.readonly_paths, &DEFAULT_READONLY_PATHS),
    )
}

/// A profile from the deprecated string fields: `runtime/default`, `docker/default`,
/// `unconfined`, `localhost/<ref>`.
fn profile_from_string(s: &str, what: &str) -> Result<SecurityProfile> {
    match s {
        "" | "runtime/default" | "docker/default" => Ok(SecurityProfile {
            profile_type: ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        }),
        "unconfined" => Ok(SecurityProfile {
            profile_type: ProfileType::Unconfined as i32,
            localhost_ref: String::new(),
        }),
        _ => match s.strip_prefix("localhost/") {
            Some(r) => Ok(SecurityProfile {
                profile_type: ProfileType::Localhost as i32,
                localhost_ref: r.to_string(),
            }),
            None => Err(Error::InvalidArgument(format!(
                "invalid {what} profile {s:?}"
            ))),
        },
    }
}

fn profile_type(p: &SecurityProfile, what: &str, name: &str) -> Result<ProfileType> {
    let t = ProfileType::try_from(p.profile_type).map_err(|_| {
        Error::InvalidArgument(format!(
            "container {name}: unknown {what} profile type {}",
            p.profile_type
        ))
    })?;
    if t != ProfileType::Localhost && !p.localhost_ref.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "container {name}: {what} localhost_ref may only be set with profile type Localhost"
        )));
    }
    Ok(t)
}

/// The seccomp filter: none when privileged, unset or `Unconfined` (containerd's default for an
/// unset profile); containerd's default profile for `RuntimeDefault`; the JSON file at the
/// absolute path for `Localhost`.
pub(super) fn seccomp(
    sc: &LinuxContainerSecurityContext,
    caps: &CapSets,
    name: &str,
) -> Result<Option<LinuxSeccomp>> {
    if sc.privileged {
        return Ok(None);
    }
    #[allow(deprecated)]
    let legacy = &sc.seccomp_profile_path;
    let profile = match (&sc.seccomp, legacy.is_empty()) {
        (Some(p), _) => p.clone(),
        (None, true) => return Ok(None),
        (None, false) => {
            profile_from_string(legacy, "seccomp").map_err(|e| e.in_container(name))?
        }
    };
    match profile_type(&profile, "seccomp", name)? {
        ProfileType::Unconfined => Ok(None),
        ProfileType::RuntimeDefault => seccomp_default::default_profile(&caps.bounding).map(Some),
        ProfileType::Localhost => {
            let path = profile.localhost_ref.trim_start_matches("localhost/");
            load_seccomp_profile(std::path::Path::new(path))
                .map(Some)
                .map_err(|e| e.in_container(name))
        }
    }
}

/// Reads an OCI `LinuxSeccomp` JSON profile (the format kubelet's localhost profiles use).
pub(super) fn load_seccomp_profile(path: &std::path::Path) -> Result<LinuxSeccomp> {
    if !path.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "seccomp profile path {:?} is not absolute",
            path
        )));
    }
    let data = std::fs::read(path).map_err(|e| {
        Error::InvalidArgument(format!(
            "cannot read seccomp profile {}: {e}",
            path.display()
        ))
    })?;
    serde_json::from_slice(&data).map_err(|e| {
        Error::InvalidArgument(format!(
            "seccomp profile {} is not a valid profile: {e}",
            path.display()
        ))
    })
}

/// The AppArmor profile. With AppArmor disabled, asking for a `Localhost` profile is an error
/// and anything else is ignored. With it enabled: unset or `RuntimeDefault` gives
/// [`DEFAULT_APPARMOR_PROFILE`] (nothing for a privileged container) where the daemon could
/// load it, unconfined where no parser is installed (as containerd), and an error where loading
/// failed; `Localhost` a loaded profile of that name. A profile that is not loaded is refused
/// here: a container asking for one could never run (its exec fails).
pub(super) fn apparmor(
    sc: &LinuxContainerSecurityContext,
    node: &AppArmor,
    host: &dyn SpecHost,
    name: &str,
) -> Result<Option<String>> {
    #[allow(deprecated)]
    let legacy = &sc.apparmor_profile;
    let profile = match (&sc.apparmor, legacy.is_empty()) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => None,
        (None, false) => {
            Some(profile_from_string(legacy, "apparmor").map_err(|e| e.in_container(name))?)
        }
    };
    let t = match &profile {
        Some(p) => profile_type(p, "apparmor", name)?,
        None => ProfileType::RuntimeDefault,
    };
    if !node.kernel_enabled() {
        if t == ProfileType::Localhost {
            let r = profile.map(|p| p.localhost_ref).unwrap_or_default();
            return Err(Error::Unsupported(format!(
                "container {name}: AppArmor profile {r:?} was requested but AppArmor is not enabled on this node"
            )));
        }
        return Ok(None);
    }
    match t {
        ProfileType::Unconfined => Ok(None),
        ProfileType::RuntimeDefault if sc.privileged => Ok(None),
        ProfileType::RuntimeDefault => match node {
            AppArmor::NoParser => Ok(None),
            AppArmor::LoadFailed(why) => Err(Error::Unsupported(format!(
                "container {name}: the default AppArmor profile {DEFAULT_APPARMOR_PROFILE} is not \
                 loaded ({why}); fix the profile load and restart bungeo, or ask for Unconfined"
            ))),
            AppArmor::Enabled | AppArmor::Disabled => {
                if !host.apparmor_profile_loaded(DEFAULT_APPARMOR_PROFILE)? {
                    return Err(Error::Unsupported(format!(
                        "container {name}: the default AppArmor profile {DEFAULT_APPARMOR_PROFILE} \
                         is no longer loaded (was AppArmor reloaded?); restart bungeo to load it again"
                    )));
                }
                Ok(Some(DEFAULT_APPARMOR_PROFILE.to_string()))
            }
        },
        ProfileType::Localhost => {
            let r = profile.map(|p| p.localhost_ref).unwrap_or_default();
            let r = r.trim_start_matches("localhost/").to_string();
            if r.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "container {name}: AppArmor profile type Localhost needs a profile name"
                )));
            }
            if !host.apparmor_profile_loaded(&r)? {
                return Err(Error::InvalidArgument(format!(
                    "container {name}: AppArmor profile {r:?} is not loaded (load it with apparmor_parser first)"
                )));
            }
            Ok(Some(r))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::host::tests_support::FakeHost;
    use k8s_cri::v1::Capability as CriCaps;
    use oci_spec::runtime::LinuxSeccompAction;

    fn sc() -> LinuxContainerSecurityContext {
        LinuxContainerSecurityContext::default()
    }

    fn with_caps(add: &[&str], drop: &[&str]) -> LinuxContainerSecurityContext {
        LinuxContainerSecurityContext {
            capabilities: Some(CriCaps {
                add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
                add_ambient_capabilities: Vec::new(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn known_capabilities_are_in_number_order() {
        for (i, c) in KNOWN_CAPABILITIES.iter().enumerate() {
            let via_caps: caps::Capability = format!("CAP_{c}").parse().expect("caps knows it");
            assert_eq!(usize::from(via_caps.index()), i, "{c}");
        }
    }

    #[test]
    fn default_set_is_containerds() {
        let h = FakeHost::default();
        let c = capabilities(&sc(), &h).unwrap();
        assert_eq!(c.bounding, DEFAULT_CAPABILITIES.to_vec());
        assert_eq!(c.effective, c.bounding);
        assert_eq!(c.permitted, c.bounding);
        assert!(c.inheritable.is_empty() && c.ambient.is_empty());
        let json = serde_json::to_value(c.to_oci()).unwrap();
        assert!(json.get("inheritable").is_none() && json.get("ambient").is_none());
        assert_eq!(json["bounding"].as_array().unwrap().len(), 14);
    }

    #[test]
    fn add_and_drop_without_cap_prefix() {
        let h = FakeHost::default();
        let c = capabilities(
            &with_caps(&["SYS_ADMIN", "cap_net_admin"], &["CHOWN", "KILL"]),
            &h,
        )
        .unwrap();
        assert!(c.bounding.contains(&Capability::SysAdmin));
        assert!(c.effective.contains(&Capability::NetAdmin));
        assert!(!c.permitted.contains(&Capability::Chown));
        assert!(!c.bounding.contains(&Capability::Kill));
        assert_eq!(c.bounding.len(), 14);
    }

    #[test]
    fn all_semantics() {
        let h = FakeHost::default();
        let c = capabilities(&with_caps(&["ALL"], &["CHOWN"]), &h).unwrap();
        assert_eq!(c.bounding.len(), h.all_capabilities().len() - 1);
        assert!(!c.bounding.contains(&Capability::Chown));
        let c = capabilities(&with_caps(&["NET_BIND_SERVICE"], &["all"]), &h).unwrap();
        assert_eq!(c.bounding, vec![Capability::NetBindService]);
        let c = capabilities(&with_caps(&[], &["ALL"]), &h).unwrap();
        assert_eq!(c, CapSets::default());
        assert!(
            serde_json::to_value(c.to_oci())
                .unwrap()
                .as_object()
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn unknown_capabilities_are_skipped() {
        let h = FakeHost::default();
        let c = capabilities(&with_caps(&["NOT_A_CAP"], &["ALSO_NOT"]), &h).unwrap();
        assert_eq!(c.bounding, DEFAULT_CAPABILITIES.to_vec());
    }

    #[test]
    fn ambient_capabilities_go_everywhere_and_drop_wins() {
        let h = FakeHost::default();
        let mut s = with_caps(&[], &["NET_RAW"]);
        if let Some(c) = s.capabilities.as_mut() {
            c.add_ambient_capabilities = vec!["NET_ADMIN".into(), "NET_RAW".into()];
        }
        let c = capabilities(&s, &h).unwrap();
        assert_eq!(c.ambient, vec![Capability::NetAdmin]);
        assert_eq!(c.inheritable, vec![Capability::NetAdmin]);
        assert!(c.bounding.contains(&Capability::NetAdmin));
        assert!(!c.bounding.contains(&Capability::NetRaw));
    }

    #[test]
    fn privileged_gets_every_kernel_capability_and_ignores_drops() {
        let h = FakeHost::default();
        let mut s = with_caps(&[], &["ALL"]);
        s.privileged = true;
        let c = capabilities(&s, &h).unwrap();
        assert_eq!(c.bounding, h.all_capabilities());
        assert!(c.ambient.is_empty());
    }

    #[test]
    fn masked_paths_default_override_privileged() {
        let (m, r) = masked_and_readonly_paths(&sc());
        assert_eq!(m.len(), DEFAULT_MASKED_PATHS.len());
        assert_eq!(r, DEFAULT_READONLY_PATHS.to_vec());
        let mut s = sc();
        s.masked_paths = vec!["/proc/x".into()];
        let (m, r) = masked_and_readonly_paths(&s);
        assert_eq!(m, vec!["/proc/x"]);
        assert_eq!(r.len(), 5);
        s.privileged = true;
        assert_eq!(masked_and_readonly_paths(&s), (vec![], vec![]));
    }

    fn seccomp_sc(t: ProfileType, r: &str) -> LinuxContainerSecurityContext {
        LinuxContainerSecurityContext {
            seccomp: Some(SecurityProfile {
                profile_type: t as i32,
                localhost_ref: r.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn seccomp_choice() {
        let caps = CapSets::same(&DEFAULT_CAPABILITIES);
        assert!(seccomp(&sc(), &caps, "c").unwrap().is_none());
        assert!(
            seccomp(&seccomp_sc(ProfileType::Unconfined, ""), &caps, "c")
                .unwrap()
                .is_none()
        );
        let d = seccomp(&seccomp_sc(ProfileType::RuntimeDefault, ""), &caps, "c")
            .unwrap()
            .unwrap();
        assert_eq!(d.default_action(), LinuxSeccompAction::ScmpActErrno);
        let mut priv_sc = seccomp_sc(ProfileType::RuntimeDefault, "");
        priv_sc.privileged = true;
        assert!(seccomp(&priv_sc, &caps, "c").unwrap().is_none());
        let e = seccomp(&seccomp_sc(ProfileType::RuntimeDefault, "/x"), &caps, "c").unwrap_err();
        assert!(
            e.to_string()
                .contains("only be set with profile type Localhost"),
            "{e}"
        );
        let bad = SecurityProfile {
            profile_type: 9,
            localhost_ref: String::new(),
        };
        let s = LinuxContainerSecurityContext {
            seccomp: Some(bad),
            ..Default::default()
        };
        assert!(seccomp(&s, &caps, "c").is_err());
    }

    #[test]
    #[allow(deprecated)]
    fn seccomp_legacy_strings() {
        let caps = CapSets::same(&DEFAULT_CAPABILITIES);
        let mut s = sc();
        s.seccomp_profile_path = "runtime/default".into();
        assert!(seccomp(&s, &caps, "c").unwrap().is_some());
        s.seccomp_profile_path = "docker/default".into();
        assert!(seccomp(&s, &caps, "c").unwrap().is_some());
        s.seccomp_profile_path = "unconfined".into();
        assert!(seccomp(&s, &caps, "c").unwrap().is_none());
        s.seccomp_profile_path = "bogus".into();
        assert!(
            seccomp(&s, &caps, "c")
                .unwrap_err()
                .to_string()
                .contains("invalid seccomp profile")
        );
    }

    #[test]
    fn seccomp_localhost_profiles() {
        let caps = CapSets::same(&DEFAULT_CAPABILITIES);
        let d = tempfile::tempdir().unwrap();
        let good = d.path().join("good.json");
        std::fs::write(
            &good,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
        )
        .unwrap();
        let p = seccomp(
            &seccomp_sc(ProfileType::Localhost, good.to_str().unwrap()),
            &caps,
            "c",
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
        assert_eq!(
            p.syscalls().as_ref().unwrap()[0].names(),
            &vec!["mkdir".to_string()]
        );
        // The "localhost/" prefix is tolerated.
        let with_prefix = format!("localhost/{}", good.display());
        assert!(
            seccomp(
                &seccomp_sc(ProfileType::Localhost, &with_prefix),
                &caps,
                "c"
            )
            .is_ok()
        );

        let missing = d.path().join("missing.json");
        let e = seccomp(
            &seccomp_sc(ProfileType::Localhost, missing.to_str().unwrap()),
            &caps,
            "c",
        )
        .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)));
        assert!(e.to_string().contains("cannot read seccomp profile"), "{e}");
        let bad = d.path().join("bad.json");
        std::fs::write(&bad, "{not json").unwrap();
        let e = seccomp(
            &seccomp_sc(ProfileType::Localhost, bad.to_str().unwrap()),
            &caps,
            "c",
        )
        .unwrap_err();
        assert!(e.to_string().contains("is not a valid profile"), "{e}");
        let e = seccomp(
            &seccomp_sc(ProfileType::Localhost, "relative.json"),
            &caps,
            "c",
        )
        .unwrap_err();
        assert!(e.to_string().contains("not absolute"), "{e}");
    }

    fn apparmor_sc(t: ProfileType, r: &str) -> LinuxContainerSecurityContext {
        LinuxContainerSecurityContext {
            apparmor: Some(SecurityProfile {
                profile_type: t as i32,
                localhost_ref: r.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn apparmor_disabled() {
        let h = FakeHost::default();
        let off = AppArmor::Disabled;
        assert_eq!(apparmor(&sc(), &off, &h, "c").unwrap(), None);
        for t in [ProfileType::RuntimeDefault, ProfileType::Unconfined] {
            assert_eq!(apparmor(&apparmor_sc(t, ""), &off, &h, "c").unwrap(), None);
        }
        let e = apparmor(
            &apparmor_sc(ProfileType::Localhost, "my-prof"),
            &off,
            &h,
            "c",
        )
        .unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)));
        assert!(
            e.to_string()
                .contains("AppArmor is not enabled on this node"),
            "{e}"
        );
    }

    #[test]
    #[allow(deprecated)]
    fn apparmor_enabled() {
        let h = FakeHost {
            apparmor_profiles: vec!["my-prof".into(), DEFAULT_APPARMOR_PROFILE.into()],
            ..Default::default()
        };
        let on = AppArmor::Enabled;
        assert_eq!(
            apparmor(&sc(), &on, &h, "c").unwrap().as_deref(),
            Some(DEFAULT_APPARMOR_PROFILE)
        );
        let mut p = apparmor_sc(ProfileType::RuntimeDefault, "");
        p.privileged = true;
        assert_eq!(apparmor(&p, &on, &h, "c").unwrap(), None);
        assert_eq!(
            apparmor(&apparmor_sc(ProfileType::Unconfined, ""), &on, &h, "c").unwrap(),
            None
        );
        assert_eq!(
            apparmor(
                &apparmor_sc(ProfileType::Localhost, "localhost/my-prof"),
                &on,
                &h,
                "c"
            )
            .unwrap()
            .as_deref(),
            Some("my-prof")
        );
        let e = apparmor(&apparmor_sc(ProfileType::Localhost, "other"), &on, &h, "c").unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        assert!(e.to_string().contains("\"other\" is not loaded"), "{e}");
        let mut legacy = sc();
        legacy.apparmor_profile = "localhost/my-prof".into();
        assert_eq!(
            apparmor(&legacy, &on, &h, "c").unwrap().as_deref(),
            Some("my-prof")
        );
    }

    #[test]
    fn runtime_default_is_never_a_profile_that_is_not_loaded() {
        let none = FakeHost::default();
        // No parser: unconfined, as containerd runs it, and a Localhost profile still applies
        // when someone loaded it.
        assert_eq!(
            apparmor(&sc(), &AppArmor::NoParser, &none, "c").unwrap(),
            None
        );
        let mine = FakeHost {
            apparmor_profiles: vec!["mine".into()],
            ..Default::default()
        };
        assert_eq!(
            apparmor(
                &apparmor_sc(ProfileType::Localhost, "mine"),
                &AppArmor::NoParser,
                &mine,
                "c"
            )
            .unwrap()
            .as_deref(),
            Some("mine")
        );
        // The load failed: refused with the reason, not a container that exits 127.
        let failed = AppArmor::LoadFailed("parser said no".into());
        let e = apparmor(&sc(), &failed, &none, "c").unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{e}");
        assert!(e.to_string().contains("parser said no"), "{e}");
        // Loaded at start, unloaded since.
        let e = apparmor(&sc(), &AppArmor::Enabled, &none, "c").unwrap_err();
        assert!(e.to_string().contains("no longer loaded"), "{e}");
    }
}
