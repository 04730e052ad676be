//! OCI mount options (`["rbind", "ro", "nosuid", "mode=755"]`) to mount(2) flags, propagation
//! changes, mount_setattr attributes and filesystem data, as runc reads them.

use nix::mount::MsFlags;

/// What a spec mount's option list asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for mount(2) (`ro`, `nosuid`, `bind`, `rbind` → MS_BIND|MS_REC, …).
    pub flags: MsFlags,
    /// Propagation changes applied after the mount, in order (`rslave` → MS_SLAVE|MS_REC).
    pub propagation: Vec<MsFlags>,
    /// `MOUNT_ATTR_*` bits to set recursively (`rro`, `rnosuid`, …) with mount_setattr.
    pub attr_set: u64,
    /// `MOUNT_ATTR_*` bits to clear recursively (`rrw`, `rsuid`, …).
    pub attr_clr: u64,
    /// Everything else, comma-joined, as the filesystem's data (`mode=755,size=65536k`).
    pub data: String,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            propagation: Vec::new(),
            attr_set: 0,
            attr_clr: 0,
            data: String::new(),
        }
    }
}

impl MountOptions {
    /// Whether this is a bind mount (`bind` or `rbind`).
    pub fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }

    /// The data argument for mount(2), `None` when there is none.
    pub fn data(&self) -> Option<&str> {
        if self.data.is_empty() {
            None
        } else {
            Some(&self.data)
        }
    }
}

/// Parses OCI mount options. Unknown options are filesystem data, like runc.
pub fn parse(options: &[String]) -> MountOptions {
    let mut out = MountOptions::default();
    let mut data: Vec<&str> = Vec::new();
    for opt in options {
        let o = opt.as_str();
        if let Some((clear, flag)) = flag_option(o) {
            if clear {
                out.flags.remove(flag);
            } else {
                out.flags.insert(flag);
            }
        } else if let Some(p) = propagation_option(o) {
            out.propagation.push(p);
        } else if let Some((clear, attr)) = recursive_attr_option(o) {
            if clear {
                out.attr_clr |= attr;
                out.attr_set &= !attr;
            } else {
                out.attr_set |= attr;
                out.attr_clr &= !attr;
            }
        } else if o == "tmpcopyup" {
            // runc's extension to copy the image's content into a tmpfs; images prepared by
            // bungeo never rely on it, and skipping it only leaves the tmpfs empty.
        } else {
            data.push(o);
        }
    }
    out.data = data.join(",");
    out
}

/// `(clears, flag)` for the plain flag options.
fn flag_option(o: &str) -> Option<(bool, MsFlags)> {
    let f = match o {
        "async" => (true, MsFlags::MS_SYNCHRONOUS),
        "atime" => (true, MsFlags::MS_NOATIME),
        "bind" => (false, MsFlags::MS_BIND),
        "defaults" => (false, MsFlags::empty()),
        "dev" => (true, MsFlags::MS_NODEV),
        "diratime" => (true, MsFlags::MS_NODIRATIME),
        "dirsync" => (false, MsFlags::MS_DIRSYNC),
        "exec" => (true, MsFlags::MS_NOEXEC),
        "iversion" => (false, MsFlags::MS_I_VERSION),
        "lazytime" => (false, MsFlags::MS_LAZYTIME),
        "loud" => (true, MsFlags::MS_SILENT),
        "mand" => (false, MsFlags::MS_MANDLOCK),
        "noatime" => (false, MsFlags::MS_NOATIME),
        "nodev" => (false, MsFlags::MS_NODEV),
        "nodiratime" => (false, MsFlags::MS_NODIRATIME),
        "noexec" => (false, MsFlags::MS_NOEXEC),
        "noiversion" => (true, MsFlags::MS_I_VERSION),
        "nolazytime" => (true, MsFlags::MS_LAZYTIME),
        "nomand" => (true, MsFlags::MS_MANDLOCK),
        "norelatime" => (true, MsFlags::MS_RELATIME),
        "nostrictatime" => (true, MsFlags::MS_STRICTATIME),
        "nosuid" => (false, MsFlags::MS_NOSUID),
        "rbind" => (false, MsFlags::MS_BIND | MsFlags::MS_REC),
        "relatime" => (false, MsFlags::MS_RELATIME),
        "remount" => (false, MsFlags::MS_REMOUNT),
        "ro" => (false, MsFlags::MS_RDONLY),
        "rw" => (true, MsFlags::MS_RDONLY),
        "silent" => (false, MsFlags::MS_SILENT),
        "strictatime" => (false, MsFlags::MS_STRICTATIME),
        "suid" => (true, MsFlags::MS_NOSUID),
        "sync" => (false, MsFlags::MS_SYNCHRONOUS),
        _ => return None,
    };
    Some(f)
}

fn propagation_option(o: &str) -> Option<MsFlags> {
    let rec = MsFlags::MS_REC;
    Some(match o {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | rec,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | rec,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | rec,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | rec,
        _ => return None,
    })
}

/// Recursive mount attributes (`rro` …), applied with mount_setattr(AT_RECURSIVE).
fn recursive_attr_option(o: &str) -> Option<(bool, u64)> {
    Some(match o {
        "rro" => (false, libc::MOUNT_ATTR_RDONLY),
        "rrw" => (true, libc::MOUNT_ATTR_RDONLY),
        "rnosuid" => (false, libc::MOUNT_ATTR_NOSUID),
        "rsuid" => (true, libc::MOUNT_ATTR_NOSUID),
        "rnodev" => (false, libc::MOUNT_ATTR_NODEV),
        "rdev" => (true, libc::MOUNT_ATTR_NODEV),
        "rnoexec" => (false, libc::MOUNT_ATTR_NOEXEC),
        "rexec" => (true, libc::MOUNT_ATTR_NOEXEC),
        "rnodiratime" => (false, libc::MOUNT_ATTR_NODIRATIME),
        "rdiratime" => (true, libc::MOUNT_ATTR_NODIRATIME),
        "rnosymfollow" => (false, libc::MOUNT_ATTR_NOSYMFOLLOW),
        "rsymfollow" => (true, libc::MOUNT_ATTR_NOSYMFOLLOW),
        _ => return None,
    })
}

/// Parses `linux.rootfsPropagation`; the default (empty) is `rslave` like runc, so the
/// container's mounts never propagate back to the host.
pub fn root_propagation(value: Option<&str>) -> Option<MsFlags> {
    match value.unwrap_or("") {
        "" => Some(MsFlags::MS_SLAVE | MsFlags::MS_REC),
        other => propagation_option(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn flags_propagation_and_data_are_separated() {
        let o = parse(&s(&[
            "rbind",
            "ro",
            "nosuid",
            "rslave",
            "mode=755",
            "size=65536k",
        ]));
        assert_eq!(
            o.flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID
        );
        assert_eq!(o.propagation, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
        assert_eq!(o.data(), Some("mode=755,size=65536k"));
        assert!(o.is_bind());
    }

    #[test]
    fn later_options_win_and_clearing_options_clear() {
        let o = parse(&s(&["ro", "rw", "nodev", "dev", "exec"]));
        assert_eq!(o.flags, MsFlags::empty());
        assert_eq!(o.data(), None);
        let o = parse(&s(&["rro", "rnosuid", "rsuid"]));
        assert_eq!(o.attr_set, libc::MOUNT_ATTR_RDONLY);
        assert_eq!(o.attr_clr, libc::MOUNT_ATTR_NOSUID);
    }

    #[test]
    fn root_propagation_defaults_to_rslave() {
        assert_eq!(
            root_propagation(None),
            Some(MsFlags::MS_SLAVE | MsFlags::MS_REC)
        );
        assert_eq!(
            root_propagation(Some("rprivate")),
            Some(MsFlags::MS_PRIVATE | MsFlags::MS_REC)
        );
        assert_eq!(root_propagation(Some("bogus")), None);
    }
}
