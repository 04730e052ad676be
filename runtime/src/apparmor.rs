//! AppArmor on the node: whether the kernel enforces it, the default profile bungeo loads for
//! `RuntimeDefault` (as containerd loads `cri-containerd.apparmor.d`), and which profiles are
//! loaded.
//!
//! Debian's and Ubuntu's kernels enable AppArmor. A container whose spec names a profile that
//! nobody loaded cannot run (its process fails at exec), so the daemon loads its default profile
//! at start, and a container asks only for profiles that are loaded.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Error, Result};

/// Name of the profile applied for `RuntimeDefault`.
pub const DEFAULT_PROFILE: &str = "bungeo-default";

/// Where the kernel lists the loaded profiles (securityfs).
const PROFILES: &str = "/sys/kernel/security/apparmor/profiles";
/// Whether the kernel has AppArmor enabled.
const ENABLED: &str = "/sys/module/apparmor/parameters/enabled";
/// Where Debian's `apparmor` package installs the parser.
const PARSER_CANDIDATES: [&str; 2] = ["/sbin/apparmor_parser", "/usr/sbin/apparmor_parser"];

/// What the node offers for AppArmor, decided once at daemon start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppArmor {
    /// The kernel has no AppArmor, or it is turned off: no profile is applied.
    Disabled,
    /// Enabled, and [`DEFAULT_PROFILE`] is loaded.
    Enabled,
    /// Enabled, but `apparmor_parser` is not installed, so the default profile cannot be
    /// loaded: `RuntimeDefault` containers run unconfined, as containerd runs them.
    /// `Localhost` profiles that someone else loaded still apply.
    NoParser,
    /// Enabled, the parser is installed, but loading the default profile failed (the reason).
    LoadFailed(String),
}

impl AppArmor {
    /// One line for the log and for verbose `Status`.
    pub fn describe(&self) -> String {
        match self {
            AppArmor::Disabled => "disabled: the kernel has no AppArmor enabled".into(),
            AppArmor::Enabled => format!("enabled: RuntimeDefault is profile {DEFAULT_PROFILE}"),
            AppArmor::NoParser => format!(
                "enabled, but apparmor_parser is not installed: profile {DEFAULT_PROFILE} cannot be \
                 loaded and RuntimeDefault containers run unconfined (apt-get install apparmor)"
            ),
            AppArmor::LoadFailed(why) => format!(
                "enabled, but profile {DEFAULT_PROFILE} could not be loaded: {why}; \
                 RuntimeDefault containers are refused until it loads"
            ),
        }
    }

    /// Whether the kernel enforces AppArmor at all.
    pub fn kernel_enabled(&self) -> bool {
        !matches!(self, AppArmor::Disabled)
    }
}

/// The node's AppArmor facilities, behind a trait so the decisions are unit-tested.
pub trait AppArmorHost {
    /// Whether the kernel has AppArmor enabled.
    fn kernel_enabled(&self) -> bool;
    /// The names of the loaded profiles.
    fn loaded_profiles(&self) -> Result<Vec<String>>;
    /// The installed `apparmor_parser`, if any.
    fn parser(&self) -> Option<PathBuf>;
    /// Loads (or replaces) a profile from its text.
    fn load(&self, parser: &Path, profile: &str) -> Result<()>;
    /// The text of the default profile bungeo last loaded, if recorded.
    fn last_loaded(&self) -> Option<String>;
    /// Records the text of the default profile just loaded.
    fn record_loaded(&self, profile: &str) -> Result<()>;
}

/// Makes sure the default profile is loaded, in the version this build carries: it is
/// (re)loaded when it is not loaded, or when the text bungeo last loaded differs from this
/// build's (a new version of bungeo).
pub fn prepare(host: &dyn AppArmorHost) -> AppArmor {
    if !host.kernel_enabled() {
        return AppArmor::Disabled;
    }
    let text = default_profile();
    let loaded = match host.loaded_profiles() {
        Ok(l) => l.iter().any(|p| p == DEFAULT_PROFILE),
        Err(e) => return AppArmor::LoadFailed(format!("cannot list loaded profiles: {e}")),
    };
    let current = host.last_loaded().is_some_and(|t| t == text);
    if loaded && current {
        return AppArmor::Enabled;
    }
    let Some(parser) = host.parser() else {
        // Loaded by someone (an earlier bungeo on a node whose parser was removed since): it
        // still applies.
        return if loaded {
            AppArmor::Enabled
        } else {
            AppArmor::NoParser
        };
    };
    match host
        .load(&parser, &text)
        .and_then(|()| host.record_loaded(&text))
    {
        Ok(()) => AppArmor::Enabled,
        Err(e) => AppArmor::LoadFailed(e.to_string()),
    }
}

/// Whether `name` is among the loaded profiles listed in `list` (the kernel's `profiles` file:
/// one `name (mode)` a line).
fn listed(list: &str, name: &str) -> bool {
    list.lines().any(|l| profile_name(l) == Some(name))
}

fn profile_name(line: &str) -> Option<&str> {
    let (name, mode) = line.rsplit_once(" (")?;
    mode.ends_with(')').then_some(name)
}

/// Whether a profile of that name is loaded on this host (false where AppArmor is off).
pub fn profile_loaded(name: &str) -> Result<bool> {
    match std::fs::read_to_string(PROFILES) {
        Ok(list) => Ok(listed(&list, name)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("read", PROFILES, e)),
    }
}

/// The default profile. Its rules are those of the default profiles containerd and CRI-O load
/// (they descend from Docker's): everything a normal process needs, but no mounts, no writes
/// to the host-global parts of `/proc` and `/sys`, no `/proc/kcore` or `sysrq-trigger`, and
/// signals and ptrace only among the processes of this profile (and from unconfined host
/// processes such as the shim).
pub fn default_profile() -> String {
    format!(
        r#"# Generated by bungeo {version}; reloaded when bungeo's version changes.
#include <tunables/global>

profile {name} flags=(attach_disconnected,mediate_deleted) {{
  #include <abstractions/base>

  network,
  capability,
  file,
  umount,

  # The shim and the daemon (unconfined) signal containers; containers signal each other.
  signal (receive) peer=unconfined,
  signal (send,receive) peer={name},

  # No writes to the files directly in /proc, nor below anything but /proc/<pid> and /proc/sys.
  deny @{{PROC}}/* w,
  deny @{{PROC}}/{{[^1-9],[^1-9][^0-9],[^1-9s][^0-9y][^0-9s],[^1-9][^0-9][^0-9][^0-9/]*}}/** w,
  # In /proc/sys, only kernel/shm* (the IPC sysctls of the container's own namespace).
  deny @{{PROC}}/sys/[^k]** w,
  deny @{{PROC}}/sys/kernel/{{?,??,[^s][^h][^m]**}} w,
  deny @{{PROC}}/sysrq-trigger rwklx,
  deny @{{PROC}}/kcore rwklx,

  deny mount,

  # /sys is read-only for a container, except its own cgroup files.
  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/devices/virtual/powercap/** rwklx,
  deny /sys/kernel/security/** rwklx,

  # Processes of the same container may trace each other.
  ptrace (trace,read,tracedby,readby) peer={name},
}}
"#,
        version = env!("CARGO_PKG_VERSION"),
        name = DEFAULT_PROFILE,
    )
}

/// The real node. The text last loaded is kept in `stamp` (under the daemon's state directory,
/// which is gone at reboot, as are the loaded profiles).
#[derive(Debug, Clone)]
pub struct LinuxAppArmor {
    /// Where the text of the last loaded default profile is kept.
    pub stamp: PathBuf,
}

impl AppArmorHost for LinuxAppArmor {
    fn kernel_enabled(&self) -> bool {
        std::fs::read_to_string(ENABLED).is_ok_and(|s| s.trim() == "Y")
    }

    fn loaded_profiles(&self) -> Result<Vec<String>> {
        let list = std::fs::read_to_string(PROFILES).map_err(|e| Error::io("read", PROFILES, e))?;
        Ok(list
            .lines()
            .filter_map(profile_name)
            .map(str::to_owned)
            .collect())
    }

    fn parser(&self) -> Option<PathBuf> {
        PARSER_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    }

    fn load(&self, parser: &Path, profile: &str) -> Result<()> {
        // -K: no cache; -r: replace a loaded profile of the same name.
        let mut child = Command::new(parser)
            .args(["-Kr"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io("run", parser, e))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(profile.as_bytes())
                .map_err(|e| Error::io("write the profile to", parser, e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io("wait for", parser, e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Unsupported(format!(
                "{} failed ({}): {}",
                parser.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    fn last_loaded(&self) -> Option<String> {
        std::fs::read_to_string(&self.stamp).ok()
    }

    fn record_loaded(&self, profile: &str) -> Result<()> {
        if let Some(dir) = self.stamp.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        }
        let tmp = self.stamp.with_extension("tmp");
        std::fs::write(&tmp, profile).map_err(|e| Error::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &self.stamp).map_err(|e| Error::io("rename", &tmp, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Default)]
    struct Fake {
        enabled: bool,
        loaded: RefCell<Vec<String>>,
        parser: bool,
        fail: Option<String>,
        stamp: RefCell<Option<String>>,
        loads: RefCell<usize>,
    }

    impl AppArmorHost for Fake {
        fn kernel_enabled(&self) -> bool {
            self.enabled
        }
        fn loaded_profiles(&self) -> Result<Vec<String>> {
            Ok(self.loaded.borrow().clone())
        }
        fn parser(&self) -> Option<PathBuf> {
            self.parser.then(|| PathBuf::from("/sbin/apparmor_parser"))
        }
        fn load(&self, _: &Path, profile: &str) -> Result<()> {
            *self.loads.borrow_mut() += 1;
            if let Some(why) = &self.fail {
                return Err(Error::Unsupported(why.clone()));
            }
            assert!(profile.contains(&format!("profile {DEFAULT_PROFILE} ")));
            self.loaded.borrow_mut().push(DEFAULT_PROFILE.into());
            Ok(())
        }
        fn last_loaded(&self) -> Option<String> {
            self.stamp.borrow().clone()
        }
        fn record_loaded(&self, profile: &str) -> Result<()> {
            *self.stamp.borrow_mut() = Some(profile.into());
            Ok(())
        }
    }

    #[test]
    fn a_kernel_without_apparmor_loads_nothing() {
        let h = Fake {
            parser: true,
            ..Fake::default()
        };
        assert_eq!(prepare(&h), AppArmor::Disabled);
        assert_eq!(*h.loads.borrow(), 0);
    }

    #[test]
    fn the_default_profile_is_loaded_once_and_reloaded_when_the_version_changes() {
        let h = Fake {
            enabled: true,
            parser: true,
            ..Fake::default()
        };
        assert_eq!(prepare(&h), AppArmor::Enabled);
        assert_eq!(prepare(&h), AppArmor::Enabled);
        assert_eq!(
            *h.loads.borrow(),
            1,
            "a loaded, current profile is not reloaded"
        );
        *h.stamp.borrow_mut() = Some("# Generated by bungeo 0.0.1\n".into());
        assert_eq!(prepare(&h), AppArmor::Enabled);
        assert_eq!(
            *h.loads.borrow(),
            2,
            "another version's profile is replaced"
        );
        h.loaded.borrow_mut().clear();
        assert_eq!(prepare(&h), AppArmor::Enabled);
        assert_eq!(*h.loads.borrow(), 3, "an unloaded profile is loaded again");
    }

    #[test]
    fn without_a_parser_runtime_default_is_unconfined_unless_already_loaded() {
        let h = Fake {
            enabled: true,
            ..Fake::default()
        };
        assert_eq!(prepare(&h), AppArmor::NoParser);
        assert!(prepare(&h).describe().contains("apt-get install apparmor"));
        h.loaded.borrow_mut().push(DEFAULT_PROFILE.into());
        assert_eq!(prepare(&h), AppArmor::Enabled);
    }

    #[test]
    fn a_failed_load_is_reported_with_the_parser_error() {
        let h = Fake {
            enabled: true,
            parser: true,
            fail: Some("syntax error at line 3".into()),
            ..Fake::default()
        };
        let got = prepare(&h);
        assert!(
            matches!(&got, AppArmor::LoadFailed(w) if w.contains("syntax error at line 3")),
            "{got:?}"
        );
        assert!(h.stamp.borrow().is_none());
    }

    #[test]
    fn profile_names_are_read_from_the_kernel_list() {
        let list = "bungeo-default (enforce)\n/usr/bin/man (enforce)\nmy prof (complain)\n";
        assert!(listed(list, "bungeo-default"));
        assert!(listed(list, "/usr/bin/man"));
        assert!(listed(list, "my prof"));
        assert!(!listed(list, "bungeo"));
        assert!(!listed(list, "bungeo-default (enforce)"));
    }

    #[test]
    fn the_default_profile_denies_mounts_and_host_proc_writes() {
        let p = default_profile();
        assert!(p.contains(&format!("profile {DEFAULT_PROFILE} flags=")));
        assert!(p.contains("deny mount,"));
        assert!(p.contains("deny @{PROC}/sysrq-trigger rwklx,"));
        assert!(p.contains(&format!("peer={DEFAULT_PROFILE},")));
        assert_eq!(p.matches('{').count(), p.matches('}').count());
    }
}
