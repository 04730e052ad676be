//! Capability sets of a container's process: the bounding set, then effective, permitted and
//! inheritable in one capset, then ambient.
//!
//! The caller orders these around its user switch: [`drop_bounding`] while still privileged
//! (it needs CAP_SETPCAP), [`set_keep_caps`] before setuid to a non-root user so the permitted
//! set survives it, and [`set_process_caps`] after. [`apply`] does both steps at once.

use std::collections::HashSet;
use std::sync::OnceLock;

use caps::{CapSet, Capability};
use nix::errno::Errno;
use oci_spec::runtime::{Capabilities, Capability as OciCapability, LinuxCapabilities};

use crate::error::{Error, Result};

const CAP_LAST_CAP: &str = "/proc/sys/kernel/cap_last_cap";

/// The capabilities the running kernel knows, by `/proc/sys/kernel/cap_last_cap` (or by probing
/// the bounding set when /proc is unavailable), in bit order. Looked up once per process.
pub fn all_known() -> Vec<Capability> {
    static KNOWN: OnceLock<Vec<Capability>> = OnceLock::new();
    KNOWN.get_or_init(lookup_known).clone()
}

fn lookup_known() -> Vec<Capability> {
    let last: Option<u8> = std::fs::read_to_string(CAP_LAST_CAP)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let mut known: Vec<Capability> = match last {
        Some(last) => caps::all()
            .into_iter()
            .filter(|c| c.index() <= last)
            .collect(),
        None => caps::runtime::thread_all_supported().into_iter().collect(),
    };
    known.sort_by_key(|c| c.index());
    known
}

/// The `caps` crate's name for an OCI capability.
pub fn to_caps(cap: OciCapability) -> Option<Capability> {
    format!("CAP_{cap}").parse().ok()
}

/// The OCI name for a capability.
pub fn from_caps(cap: Capability) -> Option<OciCapability> {
    cap.to_string().strip_prefix("CAP_")?.parse().ok()
}

/// The known capabilities of one OCI set as a bit mask; an absent set is empty, as in runc.
/// Capabilities this kernel does not know are skipped with a warning.
fn mask(set: &Option<Capabilities>, known: &[Capability], which: &str) -> u64 {
    let Some(set) = set else { return 0 };
    let mut names: Vec<&OciCapability> = set.iter().collect();
    names.sort_by_key(|c| c.to_string());
    names.into_iter().fold(0, |bits, cap| match to_caps(*cap) {
        Some(c) if known.contains(&c) => bits | c.bitmask(),
        _ => {
            tracing::warn!(capability = %cap, set = which, "capability unknown to this kernel: skipped");
            bits
        }
    })
}

fn set_of(bits: u64, known: &[Capability]) -> HashSet<Capability> {
    known
        .iter()
        .copied()
        .filter(|c| bits & c.bitmask() != 0)
        .collect()
}

/// Drops every capability not listed in `bounding` from the bounding set (needs CAP_SETPCAP).
pub fn drop_bounding(c: &LinuxCapabilities) -> Result<()> {
    let known = all_known();
    let keep = mask(c.bounding(), &known, "bounding");
    for cap in &known {
        if keep & cap.bitmask() != 0 {
            continue;
        }
        // Dropping an absent capability succeeds with CAP_SETPCAP; without it, only a
        // capability still present is an error.
        if let Err(e) = caps::drop(None, CapSet::Bounding, *cap) {
            let present = caps::has_cap(None, CapSet::Bounding, *cap)
                .map_err(|e| Error::Capabilities(format!("read bounding set for {cap}: {e}")))?;
            if present {
                return Err(Error::Capabilities(format!(
                    "drop {cap} from the bounding set (needs CAP_SETPCAP): {e}"
                )));
            }
        }
    }
    Ok(())
}

#[repr(C)]
struct CapUserHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapUserData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sets effective, permitted and inheritable in one capset call: set one at a time, an
/// intermediate state can be refused (effective must stay within permitted, and raising
/// inheritable needs CAP_SETPCAP that the new effective set may lack).
fn capset(effective: u64, permitted: u64, inheritable: u64) -> Result<()> {
    let mut header = CapUserHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapUserData {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: inheritable as u32,
        },
        CapUserData {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    // SAFETY: capset reads one header and, for version 3, two data structs; both are live,
    // properly laid out (#[repr(C)]) values borrowed for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapUserHeader,
            data.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(Error::Capabilities(format!(
            "capset effective={effective:#x} permitted={permitted:#x} \
             inheritable={inheritable:#x}: {}",
            Errno::last()
        )));
    }
    Ok(())
}

/// Sets effective, permitted and inheritable, then the ambient set: each ambient capability
/// that is both permitted and inheritable is raised (others are skipped with a warning, as
/// the kernel would refuse them), everything else is cleared.
pub fn set_process_caps(c: &LinuxCapabilities) -> Result<()> {
    let known = all_known();
    let effective = mask(c.effective(), &known, "effective");
    let permitted = mask(c.permitted(), &known, "permitted");
    let inheritable = mask(c.inheritable(), &known, "inheritable");
    let ambient = mask(c.ambient(), &known, "ambient");
    if effective & !permitted != 0 {
        return Err(Error::InvalidSpec(format!(
            "effective capabilities {:?} are not permitted",
            set_of(effective & !permitted, &known)
        )));
    }
    // The kernel refuses inheritable capabilities outside the bounding set with a bare EPERM.
    let current = |set: CapSet| -> Result<u64> {
        let caps = caps::read(None, set)
            .map_err(|e| Error::Capabilities(format!("read the {set:?} set: {e}")))?;
        Ok(caps.iter().fold(0, |bits, c| bits | c.bitmask()))
    };
    let outside = inheritable & !(current(CapSet::Bounding)? | current(CapSet::Inheritable)?);
    if outside != 0 {
        return Err(Error::InvalidSpec(format!(
            "inheritable capabilities {:?} are outside the bounding set",
            set_of(outside, &known)
        )));
    }
    capset(effective, permitted, inheritable)?;

    caps::clear(None, CapSet::Ambient)
        .map_err(|e| Error::Capabilities(format!("clear the ambient set: {e}")))?;
    for cap in &known {
        if ambient & cap.bitmask() == 0 {
            continue;
        }
        if permitted & inheritable & cap.bitmask() == 0 {
            tracing::warn!(capability = %cap, "ambient capability is not permitted and inheritable: skipped");
            continue;
        }
        caps::raise(None, CapSet::Ambient, *cap)
            .map_err(|e| Error::Capabilities(format!("raise {cap} in the ambient set: {e}")))?;
    }
    Ok(())
}

/// Drops the bounding set, then sets the process's capability sets.
pub fn apply(c: &LinuxCapabilities) -> Result<()> {
    drop_bounding(c)?;
    set_process_caps(c)
}

/// Keeps the permitted set across a setuid from root to another user (PR_SET_KEEPCAPS).
pub fn set_keep_caps(keep: bool) -> Result<()> {
    nix::sys::prctl::set_keepcaps(keep)
        .map_err(|e| Error::sys(format!("prctl PR_SET_KEEPCAPS {keep}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespaces::forked::in_forked_child;
    use oci_spec::runtime::LinuxCapabilitiesBuilder;

    fn set(caps: &[OciCapability]) -> Capabilities {
        caps.iter().copied().collect()
    }

    fn status() -> std::result::Result<String, String> {
        let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
        Ok(status
            .lines()
            .filter(|l| l.starts_with("Cap"))
            .collect::<Vec<_>>()
            .join(" "))
    }

    #[test]
    fn names_round_trip() {
        for cap in caps::all() {
            let oci = from_caps(cap).unwrap_or_else(|| panic!("{cap} has no OCI name"));
            assert_eq!(to_caps(oci), Some(cap));
        }
        assert_eq!(
            to_caps(OciCapability::SysAdmin),
            Some(Capability::CAP_SYS_ADMIN)
        );
    }

    #[test]
    fn all_known_follows_cap_last_cap() {
        let last: u8 = std::fs::read_to_string(CAP_LAST_CAP)
            .expect("cap_last_cap")
            .trim()
            .parse()
            .expect("number");
        let known = all_known();
        assert_eq!(known.len(), usize::from(last) + 1);
        assert_eq!(known.first(), Some(&Capability::CAP_CHOWN));
        assert_eq!(known.last().map(|c| c.index()), Some(last));
    }

    #[test]
    fn mask_ignores_absent_sets() {
        let known = all_known();
        assert_eq!(mask(&None, &known, "x"), 0);
        let bits = mask(
            &Some(set(&[OciCapability::Chown, OciCapability::Kill])),
            &known,
            "x",
        );
        assert_eq!(bits, 0x21);
    }

    #[test]
    fn apply_sets_every_set() {
        let c = LinuxCapabilitiesBuilder::default()
            .bounding(set(&[
                OciCapability::Chown,
                OciCapability::Kill,
                OciCapability::NetBindService,
            ]))
            .effective(set(&[OciCapability::Chown, OciCapability::Kill]))
            .permitted(set(&[
                OciCapability::Chown,
                OciCapability::Kill,
                OciCapability::NetBindService,
            ]))
            .inheritable(set(&[OciCapability::NetBindService]))
            // KILL is not inheritable, so it cannot become ambient.
            .ambient(set(&[OciCapability::NetBindService, OciCapability::Kill]))
            .build()
            .expect("caps");
        let out = in_forked_child(|| {
            apply(&c).map_err(|e| e.to_string())?;
            status()
        })
        .expect("child");
        assert_eq!(
            out,
            "CapInh:\t0000000000000400 CapPrm:\t0000000000000421 CapEff:\t0000000000000021 \
             CapBnd:\t0000000000000421 CapAmb:\t0000000000000400"
        );
    }

    #[test]
    fn dropping_bounding_without_setpcap_names_the_capability() {
        // The builder's defaults are OCI's default sets, so every set is given.
        let first = LinuxCapabilitiesBuilder::default()
            .bounding(set(&[OciCapability::Chown, OciCapability::Kill]))
            .effective(set(&[OciCapability::Chown]))
            .permitted(set(&[OciCapability::Chown]))
            .inheritable(set(&[]))
            .ambient(set(&[]))
            .build()
            .expect("caps");
        let second = LinuxCapabilitiesBuilder::default()
            .bounding(set(&[OciCapability::Chown]))
            .build()
            .expect("caps");
        let err = in_forked_child(|| {
            apply(&first).map_err(|e| e.to_string())?;
            match drop_bounding(&second) {
                Ok(()) => Err("dropped without CAP_SETPCAP".into()),
                Err(e) => Ok(e.to_string()),
            }
        })
        .expect("child");
        assert!(err.contains("CAP_KILL"), "{err}");
        assert!(err.contains("bounding"), "{err}");
    }

    #[test]
    fn inheritable_outside_bounding_is_rejected() {
        let c = LinuxCapabilitiesBuilder::default()
            .bounding(set(&[OciCapability::Chown]))
            .effective(set(&[OciCapability::Chown]))
            .permitted(set(&[OciCapability::Chown]))
            .inheritable(set(&[OciCapability::NetRaw]))
            .ambient(set(&[]))
            .build()
            .expect("caps");
        let err = in_forked_child(|| match apply(&c) {
            Ok(()) => Err("applied".into()),
            Err(e) => Ok(e.to_string()),
        })
        .expect("child");
        assert!(
            err.contains("CAP_NET_RAW") && err.contains("bounding"),
            "{err}"
        );
    }

    #[test]
    fn effective_outside_permitted_is_rejected() {
        let c = LinuxCapabilitiesBuilder::default()
            .effective(set(&[OciCapability::SysAdmin]))
            .permitted(set(&[OciCapability::Chown]))
            .build()
            .expect("caps");
        let err = set_process_caps(&c).expect_err("invalid");
        assert!(err.to_string().contains("CAP_SYS_ADMIN"), "{err}");
    }
}
