//! Linux namespaces: the mapping between OCI namespace types and clone flags, joining a namespace
//! by path (setns), and pinning a pod's net/ipc/uts namespaces under a directory so containers
//! can join them without a pause process.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

use crate::error::{Error, Result};

#[cfg(test)]
pub(crate) mod forked;
mod loopback;
mod pin;
pub mod userns;

pub use loopback::{loopback_is_up, set_loopback_up};
pub use pin::{PinnedNamespaces, pin, pin_pid_namespace_of, unpin};

/// One kind of Linux namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NsKind {
    User,
    Mount,
    Uts,
    Ipc,
    Net,
    Pid,
    Cgroup,
    Time,
}

impl NsKind {
    /// Every kind, in the order a process should join them: the user namespace first, so the
    /// joins after it are checked against the capabilities it grants, and the mount namespace
    /// last but one, because joining it changes how later `/proc` paths resolve.
    pub const JOIN_ORDER: [NsKind; 8] = [
        NsKind::User,
        NsKind::Ipc,
        NsKind::Uts,
        NsKind::Net,
        NsKind::Pid,
        NsKind::Cgroup,
        NsKind::Time,
        NsKind::Mount,
    ];

    /// The `CLONE_NEW*` flag that creates (clone, unshare) or selects (setns) this kind.
    pub fn clone_flag(self) -> CloneFlags {
        match self {
            NsKind::User => CloneFlags::CLONE_NEWUSER,
            NsKind::Mount => CloneFlags::CLONE_NEWNS,
            NsKind::Uts => CloneFlags::CLONE_NEWUTS,
            NsKind::Ipc => CloneFlags::CLONE_NEWIPC,
            NsKind::Net => CloneFlags::CLONE_NEWNET,
            NsKind::Pid => CloneFlags::CLONE_NEWPID,
            NsKind::Cgroup => CloneFlags::CLONE_NEWCGROUP,
            // nix does not name CLONE_NEWTIME (Linux 5.6).
            NsKind::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
        }
    }

    /// The file name under `/proc/<pid>/ns/`.
    pub fn proc_name(self) -> &'static str {
        match self {
            NsKind::User => "user",
            NsKind::Mount => "mnt",
            NsKind::Uts => "uts",
            NsKind::Ipc => "ipc",
            NsKind::Net => "net",
            NsKind::Pid => "pid",
            NsKind::Cgroup => "cgroup",
            NsKind::Time => "time",
        }
    }

    /// The OCI spec's name for this kind.
    pub fn to_oci(self) -> LinuxNamespaceType {
        match self {
            NsKind::User => LinuxNamespaceType::User,
            NsKind::Mount => LinuxNamespaceType::Mount,
            NsKind::Uts => LinuxNamespaceType::Uts,
            NsKind::Ipc => LinuxNamespaceType::Ipc,
            NsKind::Net => LinuxNamespaceType::Network,
            NsKind::Pid => LinuxNamespaceType::Pid,
            NsKind::Cgroup => LinuxNamespaceType::Cgroup,
            NsKind::Time => LinuxNamespaceType::Time,
        }
    }

    /// The kind an OCI namespace type names.
    pub fn from_oci(typ: LinuxNamespaceType) -> NsKind {
        match typ {
            LinuxNamespaceType::User => NsKind::User,
            LinuxNamespaceType::Mount => NsKind::Mount,
            LinuxNamespaceType::Uts => NsKind::Uts,
            LinuxNamespaceType::Ipc => NsKind::Ipc,
            LinuxNamespaceType::Network => NsKind::Net,
            LinuxNamespaceType::Pid => NsKind::Pid,
            LinuxNamespaceType::Cgroup => NsKind::Cgroup,
            LinuxNamespaceType::Time => NsKind::Time,
        }
    }
}

impl From<LinuxNamespaceType> for NsKind {
    fn from(typ: LinuxNamespaceType) -> Self {
        NsKind::from_oci(typ)
    }
}

impl From<NsKind> for LinuxNamespaceType {
    fn from(kind: NsKind) -> Self {
        kind.to_oci()
    }
}

impl std::fmt::Display for NsKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.proc_name())
    }
}

/// The clone flags creating every namespace of `namespaces` that has no path (a path means
/// "join this one", see [`to_join`]).
pub fn clone_flags(namespaces: &[LinuxNamespace]) -> CloneFlags {
    namespaces
        .iter()
        .filter(|ns| ns.path().is_none())
        .fold(CloneFlags::empty(), |flags, ns| {
            flags | NsKind::from_oci(ns.typ()).clone_flag()
        })
}

/// The namespaces of `namespaces` to join by path, in [`NsKind::JOIN_ORDER`]. A kind listed
/// twice is an invalid spec.
pub fn to_join(namespaces: &[LinuxNamespace]) -> Result<Vec<(NsKind, PathBuf)>> {
    let mut seen = Vec::new();
    for ns in namespaces {
        let kind = NsKind::from_oci(ns.typ());
        if seen.contains(&kind) {
            return Err(Error::InvalidSpec(format!(
                "namespace {kind} is listed more than once"
            )));
        }
        seen.push(kind);
    }
    let mut joins: Vec<(NsKind, PathBuf)> = namespaces
        .iter()
        .filter_map(|ns| {
            ns.path()
                .as_ref()
                .map(|p| (NsKind::from_oci(ns.typ()), p.clone()))
        })
        .collect();
    joins.sort_by_key(|(kind, _)| {
        NsKind::JOIN_ORDER
            .iter()
            .position(|k| k == kind)
            .unwrap_or(usize::MAX)
    });
    Ok(joins)
}

/// Moves the calling thread into the namespace of `kind` at `path` (a `/proc/<pid>/ns/<kind>`
/// file or a bind mount of one). Joining a pid namespace affects only children created later.
pub fn join(path: &Path, kind: NsKind) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::io("open namespace", path, e))?;
    nix::sched::setns(&file, kind.clone_flag())
        .map_err(|e| Error::sys(format!("setns {kind} namespace {}", path.display()), e))
}

/// Whether two namespace files (`/proc/<pid>/ns/*` or pins) refer to the same namespace.
pub fn same_namespace(a: &Path, b: &Path) -> Result<bool> {
    let ma = std::fs::metadata(a).map_err(|e| Error::io("stat namespace", a, e))?;
    let mb = std::fs::metadata(b).map_err(|e| Error::io("stat namespace", b, e))?;
    Ok(ma.dev() == mb.dev() && ma.ino() == mb.ino())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxNamespaceBuilder;

    fn ns(typ: LinuxNamespaceType, path: Option<&str>) -> LinuxNamespace {
        let b = LinuxNamespaceBuilder::default().typ(typ);
        match path {
            Some(p) => b.path(p).build().expect("namespace"),
            None => b.build().expect("namespace"),
        }
    }

    #[test]
    fn oci_round_trip_for_every_kind() {
        for kind in NsKind::JOIN_ORDER {
            assert_eq!(NsKind::from_oci(kind.to_oci()), kind);
            assert_eq!(LinuxNamespaceType::from(kind).to_string(), kind.proc_name());
        }
    }

    #[test]
    fn clone_flags_cover_only_new_namespaces() {
        let spec = [
            ns(LinuxNamespaceType::Pid, None),
            ns(LinuxNamespaceType::Mount, None),
            ns(LinuxNamespaceType::Network, Some("/run/bungeo/ns/p/net")),
            ns(LinuxNamespaceType::Time, None),
        ];
        let flags = clone_flags(&spec);
        assert_eq!(
            flags,
            CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWNS
                | CloneFlags::from_bits_retain(libc::CLONE_NEWTIME)
        );
        assert!(!flags.contains(CloneFlags::CLONE_NEWNET));
    }

    #[test]
    fn to_join_orders_user_first_and_mount_last() {
        let spec = [
            ns(LinuxNamespaceType::Mount, Some("/m")),
            ns(LinuxNamespaceType::Network, Some("/n")),
            ns(LinuxNamespaceType::Pid, None),
            ns(LinuxNamespaceType::User, Some("/u")),
        ];
        let joins = to_join(&spec).expect("joins");
        let kinds: Vec<NsKind> = joins.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [NsKind::User, NsKind::Net, NsKind::Mount]);
        assert_eq!(joins[1].1, PathBuf::from("/n"));
    }

    #[test]
    fn to_join_rejects_duplicates() {
        let spec = [
            ns(LinuxNamespaceType::Network, None),
            ns(LinuxNamespaceType::Network, Some("/n")),
        ];
        let err = to_join(&spec).expect_err("duplicate");
        assert!(err.to_string().contains("net"), "{err}");
    }

    #[test]
    fn join_names_the_missing_file() {
        let err = join(Path::new("/nonexistent/ns/net"), NsKind::Net).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/ns/net"), "{err}");
    }

    #[test]
    fn same_namespace_compares_inodes() {
        let own = Path::new("/proc/self/ns/net");
        assert!(same_namespace(own, own).expect("stat"));
        assert!(!same_namespace(own, Path::new("/proc/self/ns/ipc")).expect("stat"));
    }
}
