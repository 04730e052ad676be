//! The container user: uid, gid and supplementary groups from the CRI security context or the
//! image's USER, resolved against the container's own `/etc/passwd` and `/etc/group`.
//!
//! Those files belong to the image, so they are read with every symlink resolved inside the
//! rootfs (an image's `/etc/passwd -> /host/etc/passwd` reads `<rootfs>/host/etc/passwd`, never
//! the node's file), the way containerd reads them through `fs.RootPath`.
//!
//! Supplementary groups follow the CRI's `SupplementalGroupsPolicy`: `Merge` (the default) adds
//! the groups that list the *resolved user* in `/etc/group`, `Strict` only the CRI's. containerd
//! 1.6 looks up memberships of `run_as_username` or `run_as_user` (uid 0 when unset) instead,
//! which gives an image `USER nobody` root's groups; bungeo uses the user the process runs as.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_cri::v1::{LinuxContainerSecurityContext, SupplementalGroupsPolicy};
use oci_spec::runtime::User;

use crate::{Error, Result};

/// Files larger than this are not a passwd or group file an image could mean seriously.
const MAX_DB_FILE: u64 = 16 << 20;
/// Symlinks followed while resolving one path, as the kernel's limit.
const MAX_SYMLINKS: usize = 40;

/// The process identity the spec gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Sorted, without duplicates, including the primary gid (as containerd ≥ 1.6.18 does).
    pub additional_gids: Vec<u32>,
    /// The user's home from passwd, `/` when the user has no entry (runc's default).
    pub home: String,
}

impl ResolvedUser {
    pub fn to_oci(&self) -> User {
        let mut u = User::default();
        u.set_uid(self.uid);
        u.set_gid(self.gid);
        u.set_additional_gids(
            (!self.additional_gids.is_empty()).then(|| self.additional_gids.clone()),
        );
        u
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves the user of the container process.
pub(super) fn resolve(
    rootfs: &Path,
    sc: &LinuxContainerSecurityContext,
    image_user: &str,
) -> Result<ResolvedUser> {
    let cri_user = user_string(sc)?;
    let userstr = cri_user.as_deref().unwrap_or(image_user);
    let db = UserDb::new(rootfs);
    let (uid, gid, entry) = parse_user(userstr, &db)?;

    let mut gids = vec![gid];
    let strict = sc.supplemental_groups_policy == SupplementalGroupsPolicy::Strict as i32;
    if !strict && let Some(entry) = &entry {
        for g in db.groups()? {
            // A group named like the user is its private group, not a supplementary one.
            if g.name != entry.name && g.members.contains(&entry.name) {
                gids.push(g.gid);
            }
        }
    }
    for &g in &sc.supplemental_groups {
        gids.push(to_id(g, "supplemental group")?);
    }
    gids.sort_unstable();
    gids.dedup();

    let home = match &entry {
        Some(e) if !e.home.is_empty() => e.home.clone(),
        _ => "/".to_string(),
    };
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: gids,
        home,
    })
}

/// The user string the CRI security context asks for, in image USER syntax, or `None` to use
/// the image's. `run_as_username` wins over `run_as_user`; `run_as_group` alone is an error.
fn user_string(sc: &LinuxContainerSecurityContext) -> Result<Option<String>> {
    let mut user = sc
        .run_as_user
        .as_ref()
        .map(|u| to_id(u.value, "run_as_user").map(|v| v.to_string()))
        .transpose()?;
    if !sc.run_as_username.is_empty() {
        user = Some(sc.run_as_username.clone());
    }
    let group = sc
        .run_as_group
        .as_ref()
        .map(|g| to_id(g.value, "run_as_group"))
        .transpose()?;
    match (user, group) {
        (None, Some(g)) => Err(Error::InvalidArgument(format!(
            "run_as_group {g} is specified without run_as_user or run_as_username"
        ))),
        (None, None) => Ok(None),
        (Some(u), None) => Ok(Some(u)),
        (Some(u), Some(g)) => Ok(Some(format!("{u}:{g}"))),
    }
}

fn to_id(v: i64, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::InvalidArgument(format!("{what} {v} is not a valid id")))
}

/// Parses `user`, `uid`, `user:group`, `uid:gid` (any mix) as containerd's `WithUser` does:
/// a uid without passwd entry gets gid 0; a name must exist.
fn parse_user(userstr: &str, db: &UserDb) -> Result<(u32, u32, Option<PasswdEntry>)> {
    let parts: Vec<&str> = if userstr.is_empty() {
        vec!["0"]
    } else {
        userstr.split(':').collect()
    };
    match parts.as_slice() {
        [user] => match user.parse::<u32>() {
            Ok(uid) => {
                let entry = db.passwd()?.iter().find(|e| e.uid == uid).cloned();
                let gid = entry.as_ref().map_or(0, |e| e.gid);
                Ok((uid, gid, entry))
            }
            Err(_) => {
                let e = db.user_by_name(user)?;
                Ok((e.uid, e.gid, Some(e)))
            }
        },
        [user, group] => {
            let (uid, entry) = match user.parse::<u32>() {
                Ok(uid) => (uid, db.passwd()?.iter().find(|e| e.uid == uid).cloned()),
                Err(_) => {
                    let e = db.user_by_name(user)?;
                    (e.uid, Some(e))
                }
            };
            let gid = match group.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => db
                    .groups()?
                    .iter()
                    .find(|g| g.name == *group)
                    .map(|g| g.gid)
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "group {group:?} not found in the container's /etc/group"
                        ))
                    })?,
            };
            Ok((uid, gid, entry))
        }
        _ => Err(Error::InvalidArgument(format!("invalid user {userstr:?}"))),
    }
}

/// The image's passwd and group databases, read on first use.
struct UserDb {
    root: PathBuf,
    passwd: std::cell::OnceCell<Vec<PasswdEntry>>,
    groups: std::cell::OnceCell<Vec<GroupEntry>>,
}

impl UserDb {
    fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            passwd: std::cell::OnceCell::new(),
            groups: std::cell::OnceCell::new(),
        }
    }

    fn passwd(&self) -> Result<&[PasswdEntry]> {
        if let Some(p) = self.passwd.get() {
            return Ok(p);
        }
        let text = read_in_root(&self.root, Path::new("/etc/passwd"))?;
        Ok(self
            .passwd
            .get_or_init(|| text.as_deref().map(parse_passwd).unwrap_or_default()))
    }

    fn groups(&self) -> Result<&[GroupEntry]> {
        if let Some(g) = self.groups.get() {
            return Ok(g);
        }
        let text = read_in_root(&self.root, Path::new("/etc/group"))?;
        Ok(self
            .groups
            .get_or_init(|| text.as_deref().map(parse_group).unwrap_or_default()))
    }

    fn user_by_name(&self, name: &str) -> Result<PasswdEntry> {
        self.passwd()?
            .iter()
            .find(|e| e.name == name)
            .cloned()
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "user {name:?} not found in the container's /etc/passwd"
                ))
            })
    }
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let f: Vec<&str> = line.split(':').collect();
            // A line whose ids do not parse is skipped rather than read as uid 0.
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.trim().parse().ok()?,
                gid: f.get(3)?.trim().parse().ok()?,
                home: f.get(5).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let f: Vec<&str> = line.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Reads `path` of the container's filesystem with every symlink resolved inside `root`;
/// `None` when it does not exist there.
fn read_in_root(root: &Path, path: &Path) -> Result<Option<String>> {
    let Some(resolved) = resolve_in_root(root, path)? else {
        return Ok(None);
    };
    let full = root.join(&resolved);
    // O_NOFOLLOW: the last component was just resolved; a symlink there now is a swap.
    let file = match File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&full)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", full, e)),
    };
    let meta = file.metadata().map_err(|e| Error::io("stat", &full, e))?;
    if !meta.is_file() {
        return Err(Error::InvalidArgument(format!(
            "{} in the container image is not a regular file",
            path.display()
        )));
    }
    let mut buf = Vec::new();
    file.take(MAX_DB_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("read", &full, e))?;
    if buf.len() as u64 > MAX_DB_FILE {
        return Err(Error::InvalidArgument(format!(
            "{} in the container image is larger than {MAX_DB_FILE} bytes",
            path.display()
        )));
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

enum Part {
    Parent,
    Name(OsString),
}

fn parts_of(p: &Path) -> Vec<Part> {
    p.components()
        .filter_map(|c| match c {
            Component::ParentDir => Some(Part::Parent),
            Component::Normal(n) => Some(Part::Name(n.to_os_string())),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Resolves `path` as if `root` were `/`: absolute symlink targets restart at `root`, and `..`
/// never climbs above it. Returns the path relative to `root` with no symlink left in it, or
/// `None` if a component does not exist.
pub(super) fn resolve_in_root(root: &Path, path: &Path) -> Result<Option<PathBuf>> {
    let mut pending = parts_of(path);
    pending.reverse();
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        let name = match part {
            Part::Parent => {
                resolved.pop();
                continue;
            }
            Part::Name(n) => n,
        };
        let candidate = root.join(&resolved).join(&name);
        let meta = match std::fs::symlink_metadata(&candidate) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(None),
            Err(e) => return Err(Error::io("lstat", candidate, e)),
        };
        if !meta.file_type().is_symlink() {
            resolved.push(name);
            continue;
        }
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(Error::InvalidArgument(format!(
                "too many levels of symbolic links resolving {} in the container image",
                path.display()
            )));
        }
        let target =
            std::fs::read_link(&candidate).map_err(|e| Error::io("readlink", &candidate, e))?;
        if target.is_absolute() {
            resolved.clear();
        }
        let mut more = parts_of(&target);
        more.reverse();
        pending.extend(more);
    }
    Ok(Some(resolved))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::Int64Value;
    use std::os::unix::fs::symlink;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        alice:x:1000:1000:Alice:/home/alice:/bin/sh\n\
        bob:x:1001:1001::/home/bob:/bin/sh\n\
        broken:x:notanumber:0::/:/bin/sh\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\n\
        wheel:x:10:root,alice\n\
        alice:x:1000:alice\n\
        bob:x:1001:\n\
        dev:x:2000:alice, bob\n\
        nogroup:x:65534:\n";

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(dir.path().join("etc/group"), GROUP).unwrap();
        dir
    }

    fn sc() -> LinuxContainerSecurityContext {
        LinuxContainerSecurityContext::default()
    }

    fn user(uid: u32, gid: u32, gids: &[u32], home: &str) -> ResolvedUser {
        ResolvedUser {
            uid,
            gid,
            additional_gids: gids.to_vec(),
            home: home.into(),
        }
    }

    #[test]
    fn empty_user_is_root_with_roots_groups() {
        let r = rootfs();
        assert_eq!(
            resolve(r.path(), &sc(), "").unwrap(),
            user(0, 0, &[0, 10], "/root")
        );
    }

    #[test]
    fn image_user_forms() {
        let r = rootfs();
        let p = r.path();
        assert_eq!(
            resolve(p, &sc(), "alice").unwrap(),
            user(1000, 1000, &[10, 1000, 2000], "/home/alice")
        );
        assert_eq!(
            resolve(p, &sc(), "1000").unwrap(),
            user(1000, 1000, &[10, 1000, 2000], "/home/alice")
        );
        assert_eq!(
            resolve(p, &sc(), "bob:dev").unwrap(),
            user(1001, 2000, &[2000], "/home/bob")
        );
        assert_eq!(
            resolve(p, &sc(), "1000:2000").unwrap(),
            user(1000, 2000, &[10, 2000], "/home/alice")
        );
        assert_eq!(
            resolve(p, &sc(), "alice:10").unwrap(),
            user(1000, 10, &[10, 2000], "/home/alice")
        );
        // A uid without passwd entry: gid 0, home "/", no memberships.
        assert_eq!(resolve(p, &sc(), "5000").unwrap(), user(5000, 0, &[0], "/"));
        assert_eq!(
            resolve(p, &sc(), "5000:5001").unwrap(),
            user(5000, 5001, &[5001], "/")
        );
    }

    #[test]
    fn unknown_names_and_bad_forms_are_invalid() {
        let r = rootfs();
        let e = resolve(r.path(), &sc(), "mallory").unwrap_err().to_string();
        assert!(
            e.contains("\"mallory\" not found in the container's /etc/passwd"),
            "{e}"
        );
        let e = resolve(r.path(), &sc(), "alice:nogrp")
            .unwrap_err()
            .to_string();
        assert!(e.contains("group \"nogrp\" not found"), "{e}");
        let e = resolve(r.path(), &sc(), "a:b:c").unwrap_err().to_string();
        assert!(e.contains("invalid user"), "{e}");
        // A passwd line with a broken uid is skipped, not read as root.
        assert!(resolve(r.path(), &sc(), "broken").is_err());
    }

    #[test]
    fn cri_fields_override_image_user() {
        let r = rootfs();
        let mut s = sc();
        s.run_as_user = Some(Int64Value { value: 1001 });
        // bob is listed in "dev" (with a space before the name, which is trimmed).
        assert_eq!(
            resolve(r.path(), &s, "alice").unwrap(),
            user(1001, 1001, &[1001, 2000], "/home/bob")
        );
        s.run_as_group = Some(Int64Value { value: 2000 });
        assert_eq!(
            resolve(r.path(), &s, "alice").unwrap(),
            user(1001, 2000, &[2000], "/home/bob")
        );
        s.run_as_username = "alice".into();
        assert_eq!(
            resolve(r.path(), &s, "").unwrap(),
            user(1000, 2000, &[10, 2000], "/home/alice")
        );
    }

    #[test]
    fn run_as_group_without_user_is_invalid() {
        let r = rootfs();
        let mut s = sc();
        s.run_as_group = Some(Int64Value { value: 10 });
        let e = resolve(r.path(), &s, "alice").unwrap_err().to_string();
        assert!(
            e.contains("run_as_group 10 is specified without run_as_user"),
            "{e}"
        );
        s.run_as_group = None;
        s.run_as_user = Some(Int64Value { value: -1 });
        assert!(
            resolve(r.path(), &s, "")
                .unwrap_err()
                .to_string()
                .contains("not a valid id")
        );
    }

    #[test]
    fn supplemental_groups_merge_and_strict() {
        let r = rootfs();
        let mut s = sc();
        s.run_as_username = "alice".into();
        s.supplemental_groups = vec![3000, 10];
        assert_eq!(
            resolve(r.path(), &s, "").unwrap().additional_gids,
            vec![10, 1000, 2000, 3000]
        );
        s.supplemental_groups_policy = SupplementalGroupsPolicy::Strict as i32;
        assert_eq!(
            resolve(r.path(), &s, "").unwrap().additional_gids,
            vec![10, 1000, 3000]
        );
        s.supplemental_groups = vec![-5];
        assert!(resolve(r.path(), &s, "").is_err());
    }

    #[test]
    fn missing_files_mean_no_entries() {
        let r = tempfile::tempdir().unwrap();
        assert_eq!(resolve(r.path(), &sc(), "").unwrap(), user(0, 0, &[0], "/"));
        assert_eq!(
            resolve(r.path(), &sc(), "123:456").unwrap(),
            user(123, 456, &[456], "/")
        );
        assert!(resolve(r.path(), &sc(), "alice").is_err());
    }

    #[test]
    fn absolute_symlink_to_host_passwd_stays_in_rootfs() {
        // The "host" file the image's symlink points at, outside the rootfs.
        let outside = tempfile::tempdir().unwrap();
        let host_passwd = outside.path().join("passwd");
        std::fs::write(&host_passwd, "evil:x:0:0::/evil:/bin/sh\n").unwrap();

        let r = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(r.path().join("etc")).unwrap();
        symlink(&host_passwd, r.path().join("etc/passwd")).unwrap();
        // Inside the rootfs the link target does not exist: no passwd, so no "evil" user.
        assert!(resolve(r.path(), &sc(), "evil").is_err());
        assert_eq!(resolve(r.path(), &sc(), "").unwrap().home, "/");

        // When the target exists inside the rootfs, that in-root file is read.
        let inner = r.path().join(host_passwd.strip_prefix("/").unwrap());
        std::fs::create_dir_all(inner.parent().unwrap()).unwrap();
        std::fs::write(&inner, "carol:x:42:43::/home/carol:/bin/sh\n").unwrap();
        assert_eq!(
            resolve(r.path(), &sc(), "carol").unwrap(),
            user(42, 43, &[43], "/home/carol")
        );
        assert!(resolve(r.path(), &sc(), "evil").is_err());
    }

    #[test]
    fn host_path_symlink_and_dotdot_are_clamped_to_root() {
        let r = tempfile::tempdir().unwrap();
        let root = r.path();
        std::fs::create_dir_all(root.join("host/etc")).unwrap();
        std::fs::write(root.join("host/etc/passwd"), "dave:x:7:8::/d:/bin/sh\n").unwrap();
        // /etc -> ../../../../host/etc : the ".." stop at the rootfs.
        symlink("../../../../host/etc", root.join("etc")).unwrap();
        assert_eq!(resolve(root, &sc(), "dave").unwrap().uid, 7);
        assert_eq!(
            resolve_in_root(root, Path::new("/etc/passwd")).unwrap(),
            Some(PathBuf::from("host/etc/passwd"))
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/../../etc/../nope")).unwrap(),
            None
        );
    }

    #[test]
    fn symlink_loops_are_refused() {
        let r = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(r.path().join("etc")).unwrap();
        symlink("/etc/b", r.path().join("etc/a")).unwrap();
        symlink("/etc/a", r.path().join("etc/b")).unwrap();
        symlink("/etc/a", r.path().join("etc/passwd")).unwrap();
        let e = resolve(r.path(), &sc(), "x").unwrap_err().to_string();
        assert!(e.contains("too many levels of symbolic links"), "{e}");
    }

    #[test]
    fn passwd_that_is_a_directory_is_an_error() {
        let r = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(r.path().join("etc/passwd")).unwrap();
        assert!(resolve(r.path(), &sc(), "").is_err());
    }

    #[test]
    fn oci_user_shape() {
        let u = user(1000, 1000, &[10, 1000], "/h").to_oci();
        assert_eq!(
            serde_json::to_value(&u).unwrap(),
            serde_json::json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 1000]})
        );
    }
}
