//! Pod features past containerd 1.6, run against bungeo and containerd: the runtime features
//! `Status` advertises (checked against this test's own kernel probe), recursive read-only
//! mounts, SupplementalGroupsPolicy with `ContainerStatus.user`, image ids across the calls for
//! one image pulled from two registries, and the validation of pod user namespace options.
//!
//! containerd 1.6 has none of these CRI fields: each check says what it does there and asserts
//! containerd's own behaviour where it has one (so a difference is documented, not hidden).

use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bungeo_tests::cri::{Target, basic_auth};
use bungeo_tests::images::{PLAIN, USER_GROUPS};
use bungeo_tests::scene::{self, Layout, WAIT, pod_namespaces, pod_security, security, strings};
use bungeo_tests::suite::{AUTH_PASSWORD, AUTH_REPO_PREFIX, AUTH_USER, Ctx, run_suite};
use bungeo_tests::{check, ensure_eq};
use k8s_cri::v1::{
    ContainerConfig, ContainerFilter, ContainerState, ContainerStatusRequest, ExecSyncRequest,
    IdMapping, Int64Value, ListContainersRequest, Mount, MountPropagation, NamespaceMode,
    NamespaceOption, PodSandboxConfig, SupplementalGroupsPolicy, UserNamespace,
};
use tonic::Code;

fn main() {
    run_suite(vec![
        check!(advertised_features),
        check!(recursive_read_only),
        check!(supplemental_groups_policy),
        check!(image_ids_from_two_registries),
        check!(user_namespace_options),
        check!(user_namespace_pod, only = Target::Bungeo),
    ])
}

const POD_NAMESPACE: &str = "bungeo-e2e-features";
// Pods use the node's network: none of these features involves the pod network, and the
// checks then need no CNI setup on either daemon.
const CGROUP_ROOT: &str = "bungeo-e2e-features";

/// A tmpfs with a tmpfs mounted inside it, in a temp dir; both unmounted on drop.
struct NestedTmpfs {
    dir: tempfile::TempDir,
}

impl NestedTmpfs {
    fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bungeo-e2e-rro-")
            .tempdir()
            .context("temp dir")?;
        let t = NestedTmpfs { dir };
        mount_tmpfs(t.top())?;
        std::fs::create_dir(t.sub()).context("mkdir sub")?;
        mount_tmpfs(&t.sub())?;
        Ok(t)
    }

    fn top(&self) -> &Path {
        self.dir.path()
    }

    fn sub(&self) -> PathBuf {
        self.dir.path().join("sub")
    }
}

impl Drop for NestedTmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.sub(), nix::mount::MntFlags::MNT_DETACH);
        let _ = nix::mount::umount2(self.top(), nix::mount::MntFlags::MNT_DETACH);
    }
}

fn mount_tmpfs(at: &Path) -> Result<()> {
    nix::mount::mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .with_context(|| format!("mount tmpfs on {}", at.display()))
}

/// This test's own probe: does `mount_setattr(MOUNT_ATTR_RDONLY, AT_RECURSIVE)` make a
/// submount read-only?
fn kernel_has_recursive_read_only() -> Result<bool> {
    let t = NestedTmpfs::new()?;
    let dir = std::fs::File::open(t.top()).context("open the tmpfs")?;
    let mut attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads `attr` (size given) and the empty path; the fd is open.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dir.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &mut attr as *mut libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        return Ok(false);
    }
    match std::fs::write(t.sub().join("x"), "x") {
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => Ok(true),
        Err(e) => Err(e).context("write into the submount"),
        Ok(()) => Ok(false),
    }
}

/// This test's own probe for what user namespace pods need: a user namespace with a mapping
/// (made by `unshare --user`, mapped from here) and an idmapped clone of a tmpfs.
fn kernel_has_idmapped_mounts() -> Result<bool> {
    let mut child = std::process::Command::new("unshare")
        .args(["--user", "sleep", "30"])
        .spawn()
        .context("spawn unshare --user")?;
    let result = (|| -> Result<bool> {
        let pid = child.id();
        let ns_path = format!("/proc/{pid}/ns/user");
        // Wait until the child is in its new user namespace.
        let own = std::fs::read_link("/proc/self/ns/user")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(&ns_path).ok().as_ref() == Some(&own) {
            ensure!(
                Instant::now() < deadline,
                "unshare did not make a user namespace"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        for file in ["uid_map", "gid_map"] {
            if std::fs::write(format!("/proc/{pid}/{file}"), "0 3100000000 65536\n").is_err() {
                return Ok(false);
            }
        }
        let userns = std::fs::File::open(&ns_path)?;
        let t = NestedTmpfs::new()?;
        let path = std::ffi::CString::new(t.top().to_string_lossy().as_bytes())?;
        // SAFETY: open_tree reads the NUL-terminated path and returns a new fd or -1.
        let tree = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                path.as_ptr(),
                libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
            )
        };
        if tree < 0 {
            return Ok(false);
        }
        // SAFETY: `tree` is a new fd nothing else owns.
        let tree = unsafe { std::os::fd::OwnedFd::from_raw_fd(tree as i32) };
        let mut attr = libc::mount_attr {
            attr_set: libc::MOUNT_ATTR_IDMAP,
            attr_clr: 0,
            propagation: 0,
            userns_fd: userns.as_raw_fd() as u64,
        };
        // SAFETY: mount_setattr reads `attr` (size given) and the empty path; the fds are open.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH as libc::c_uint,
                &mut attr as *mut libc::mount_attr,
                std::mem::size_of::<libc::mount_attr>(),
            )
        };
        Ok(r == 0)
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

async fn advertised_features(ctx: Ctx) -> Result<()> {
    let mut cri = ctx.cri.clone();
    let status = cri.status(false).await.context("Status")?;
    if ctx.target == Target::Containerd {
        // containerd 1.6 predates RuntimeHandler features and RuntimeFeatures.
        ensure!(status.runtime_handlers.is_empty(), "{status:?}");
        ensure!(status.features.is_none(), "{status:?}");
        return Ok(());
    }
    let rro = tokio::task::spawn_blocking(kernel_has_recursive_read_only).await??;
    let idmap = tokio::task::spawn_blocking(kernel_has_idmapped_mounts).await??;
    let names: Vec<&str> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    ensure!(
        names.first() == Some(&""),
        "default handler first: {names:?}"
    );
    for h in &status.runtime_handlers {
        let f = h.features.context("handler without features")?;
        ensure_eq!(
            f.recursive_read_only_mounts,
            rro,
            "handler {:?} recursive_read_only_mounts vs the kernel",
            h.name
        );
        ensure_eq!(
            f.user_namespaces,
            idmap,
            "handler {:?} user_namespaces vs the kernel",
            h.name
        );
    }
    ensure_eq!(
        status.features.map(|f| f.supplemental_groups_policy),
        Some(true),
        "features.supplemental_groups_policy"
    );
    Ok(())
}

const LAYOUT: Layout = Layout {
    namespace: POD_NAMESPACE,
    cgroup_root: CGROUP_ROOT,
};

/// [`pod_namespaces`] but on the node's network.
fn node_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        ..pod_namespaces()
    }
}

/// [`scene::container`] in [`node_namespaces`].
fn container(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    let mut config = scene::container(name, image, command);
    security(&mut config).namespace_options = Some(node_namespaces());
    config
}

/// A check's pods, log directory and cgroup parent, removed at its end: a [`scene::Scene`]
/// whose pods use the node's network.
struct Scene(scene::Scene);

bungeo_tests::wraps_scene!(Scene, 0);

impl Scene {
    /// [`scene::Scene::pod_config`] in [`node_namespaces`], unlabelled.
    fn pod_config(&self, name: &str) -> PodSandboxConfig {
        let mut config = self.0.pod_config(name);
        // Host network: the node's hostname, as kubelet asks (runc refuses one).
        config.hostname = String::new();
        config.labels.clear();
        pod_security(&mut config).namespace_options = Some(node_namespaces());
        config
    }

    async fn pod(&mut self, name: &str) -> Result<String> {
        let config = self.pod_config(name);
        self.0.run_pod(config).await
    }

    /// The container's output (both streams, in order), once it has exited.
    async fn output(&mut self, id: &str) -> Result<(i32, String)> {
        let st = self.exited(id).await?;
        let path = self.log_paths.get(id).context("no log path")?;
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let out: Vec<&str> = text
            .lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .collect();
        Ok((st.exit_code, out.join("\n")))
    }

    async fn containers_in(&mut self, pod: &str) -> Result<usize> {
        Ok(self
            .list(ContainerFilter {
                pod_sandbox_id: pod.to_string(),
                ..Default::default()
            })
            .await?
            .len())
    }
}

async fn with_scene<F>(ctx: &Ctx, check: &str, body: F) -> Result<()>
where
    F: AsyncFnOnce(&mut Scene) -> Result<()>,
{
    let base = scene::Scene::for_check(ctx, ctx.cri.clone(), check, LAYOUT)?;
    scene::run_in(Scene(base), body).await
}

fn volume(host: &Path, readonly: bool, recursive: bool) -> Mount {
    Mount {
        container_path: "/vol".into(),
        host_path: host.to_string_lossy().into_owned(),
        readonly,
        recursive_read_only: recursive,
        propagation: MountPropagation::PropagationPrivate as i32,
        ..Default::default()
    }
}

async fn recursive_read_only(ctx: Ctx) -> Result<()> {
    let nested = NestedTmpfs::new()?;
    let target = ctx.target;
    with_scene(&ctx, "rro", async |s| {
        let image = ctx.fx.reference(PLAIN);
        s.cri.pull(&image, None).await.context("pull")?;
        let pod = s.pod("rro").await?;
        let write = "touch /vol/top; echo top=$?; touch /vol/sub/x; echo sub=$?";

        // Plain read-only: the top is read-only, the submount stays writable (the kernel's
        // read-only bind is not recursive). Both daemons agree.
        let mut plain = container("plain-ro", &image, &["sh", "-c", write]);
        plain.mounts = vec![volume(nested.top(), true, false)];
        let id = s.run(&pod, plain).await?;
        let (code, out) = s.output(&id).await?;
        ensure_eq!(code, 0, "plain-ro exit ({out})");
        ensure!(
            out.contains("top=1"),
            "plain-ro top must be read-only: {out}"
        );
        ensure!(out.contains("sub=0"), "plain-ro sub stays writable: {out}");

        let mut rro = container("rro", &image, &["sh", "-c", write]);
        rro.mounts = vec![volume(nested.top(), true, true)];
        let id = s.run(&pod, rro).await?;
        let (code, out) = s.output(&id).await?;
        ensure_eq!(code, 0, "rro exit ({out})");
        ensure!(out.contains("top=1"), "rro top: {out}");
        match target {
            Target::Bungeo => {
                ensure!(
                    out.contains("sub=1"),
                    "rro: the submount is read-only: {out}"
                );
                ensure!(out.contains("Read-only file system"), "rro: EROFS: {out}");
            }
            // containerd 1.6 does not know `recursive_read_only` and makes a plain read-only
            // bind: the submount stays writable.
            Target::Containerd => ensure!(out.contains("sub=0"), "containerd rro: {out}"),
        }

        if target == Target::Bungeo {
            // The CRI: recursive_read_only needs readonly and PRIVATE propagation.
            let mut not_ro = container("rro-rw", &image, &["true"]);
            not_ro.mounts = vec![volume(nested.top(), false, true)];
            let mut slave = container("rro-slave", &image, &["true"]);
            let mut m = volume(nested.top(), true, true);
            m.propagation = MountPropagation::PropagationHostToContainer as i32;
            slave.mounts = vec![m];
            let before = s.containers_in(&pod).await?;
            for bad in [not_ro, slave] {
                let name = bad.metadata.clone().unwrap_or_default().name;
                match s.try_create(&pod, bad).await {
                    Err(e) if e.code() == Code::InvalidArgument => {
                        ensure!(e.message().contains("recursive read-only"), "{name}: {e:?}")
                    }
                    other => bail!("{name}: want InvalidArgument, got {other:?}"),
                }
            }
            ensure_eq!(s.containers_in(&pod).await?, before, "nothing left behind");
        }
        Ok(())
    })
    .await
}

fn sorted_ids(out: &str) -> Vec<i64> {
    let mut v: Vec<i64> = out
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

async fn supplemental_groups_policy(ctx: Ctx) -> Result<()> {
    let target = ctx.target;
    with_scene(&ctx, "groups", async |s| {
        let image = ctx.fx.reference(USER_GROUPS);
        s.cri.pull(&image, None).await.context("pull")?;
        let pod = s.pod("groups").await?;
        // (name, policy, run_as_username, extra groups, want `id -G`)
        type Case<'a> = (
            &'a str,
            SupplementalGroupsPolicy,
            &'a str,
            Vec<i64>,
            Vec<i64>,
        );
        let cases: Vec<Case> = vec![
            // Merge, explicit user: both daemons add app's groups from /etc/group.
            (
                "merge-username",
                SupplementalGroupsPolicy::Merge,
                "app",
                vec![3000],
                vec![1000, 2000, 2001, 3000],
            ),
            // Merge with the image's USER: containerd 1.6 looks up uid 0's memberships instead
            // of app's (none here), bungeo those of the user the process runs as.
            (
                "merge-image-user",
                SupplementalGroupsPolicy::Merge,
                "",
                vec![],
                if target == Target::Bungeo {
                    vec![1000, 2000, 2001]
                } else {
                    vec![1000]
                },
            ),
            // Strict: only the primary and the requested groups. containerd 1.6 ignores the
            // policy and merges.
            (
                "strict",
                SupplementalGroupsPolicy::Strict,
                "app",
                vec![3000],
                if target == Target::Bungeo {
                    vec![1000, 3000]
                } else {
                    vec![1000, 2000, 2001, 3000]
                },
            ),
        ];
        for (name, policy, username, extra, want) in cases {
            let mut c = container(name, &image, &["id", "-G"]);
            let sc = security(&mut c);
            sc.supplemental_groups_policy = policy as i32;
            sc.run_as_username = username.into();
            sc.supplemental_groups = extra;
            let id = s.run(&pod, c).await?;
            let (code, out) = s.output(&id).await?;
            ensure_eq!(code, 0, "{name}: exit ({out})");
            ensure_eq!(sorted_ids(&out), want, "{name}: id -G");
            let st = s.status(&id).await?;
            if target == Target::Bungeo {
                let user = st
                    .user
                    .and_then(|u| u.linux)
                    .context("no ContainerStatus.user")?;
                ensure_eq!((user.uid, user.gid), (1000, 1000), "{name}: status uid/gid");
                let mut groups = user.supplemental_groups.clone();
                groups.sort_unstable();
                ensure_eq!(groups, want, "{name}: status supplemental_groups");
            } else {
                // containerd 1.6 does not report ContainerStatus.user.
                ensure!(st.user.is_none(), "{name}: containerd user {:?}", st.user);
            }
        }
        // A uid without an image user: Strict leaves only the requested groups, status agrees.
        let mut c = container("strict-uid", &image, &["id", "-G"]);
        let sc = security(&mut c);
        sc.run_as_user = Some(Int64Value { value: 4242 });
        sc.supplemental_groups_policy = SupplementalGroupsPolicy::Strict as i32;
        let id = s.run(&pod, c).await?;
        let (code, out) = s.output(&id).await?;
        ensure_eq!(code, 0, "strict-uid exit ({out})");
        ensure_eq!(sorted_ids(&out), vec![0], "strict-uid: id -G");
        Ok(())
    })
    .await
}

async fn image_ids_from_two_registries(ctx: Ctx) -> Result<()> {
    let target = ctx.target;
    with_scene(&ctx, "imageid", async |s| {
        let first = ctx.fx.reference(PLAIN);
        let second = format!(
            "{}/{AUTH_REPO_PREFIX}/{}:{}",
            ctx.fx.auth_registry.host(),
            PLAIN.repo,
            PLAIN.tag
        );
        let id_a = s.cri.pull(&first, None).await.context("pull first")?;
        let id_b = s
            .cri
            .pull(&second, Some(basic_auth(AUTH_USER, AUTH_PASSWORD)))
            .await
            .context("pull second")?;
        ensure_eq!(id_a, id_b, "one image, one id");
        let want_id = ctx
            .fx
            .image(PLAIN)?
            .host_manifest()
            .context("manifest")?
            .config
            .digest
            .clone();
        ensure_eq!(id_a, want_id, "image id is the config digest");
        let image = s
            .cri
            .image_status(&id_a)
            .await?
            .context("ImageStatus by id")?;
        ensure_eq!(image.id, want_id, "ImageStatus id");
        for host in [ctx.fx.registry.host(), ctx.fx.auth_registry.host()] {
            ensure!(
                image.repo_digests.iter().any(|d| d.starts_with(&host)),
                "repo digest from {host}: {:?}",
                image.repo_digests
            );
        }
        let listed = s.cri.list_images(None).await?;
        let listed = listed
            .iter()
            .find(|i| i.id == want_id)
            .context("image in ListImages")?;
        ensure_eq!(
            listed.repo_digests,
            image.repo_digests,
            "ListImages repo digests"
        );

        let pod = s.pod("imageid").await?;
        for (name, reference, registry) in [
            ("from-first", &first, ctx.fx.registry.host()),
            ("from-second", &second, ctx.fx.auth_registry.host()),
        ] {
            let id = s.run(&pod, container(name, reference, &["true"])).await?;
            let st = s.status(&id).await?;
            let listed = s
                .cri
                .runtime
                .list_containers(ListContainersRequest {
                    filter: Some(ContainerFilter {
                        id: id.clone(),
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner()
                .containers;
            let c = listed.first().context("container in ListContainers")?;
            ensure!(
                image.repo_digests.contains(&st.image_ref),
                "{name}: ContainerStatus.image_ref {:?} is a repo digest of {:?}",
                st.image_ref,
                image.repo_digests
            );
            // Container.image_ref is the image id, which kubelet's image GC matches against
            // ListImages (both daemons).
            ensure_eq!(c.image_ref, want_id, "{name}: Container.image_ref");
            match target {
                Target::Bungeo => {
                    ensure_eq!(st.image_id, want_id, "{name}: ContainerStatus.image_id");
                    ensure_eq!(c.image_id, want_id, "{name}: Container.image_id");
                    // The repo digest of the registry the container's image came from.
                    ensure!(
                        st.image_ref.starts_with(&registry),
                        "{name}: image_ref {} is not from {registry}",
                        st.image_ref
                    );
                }
                // MACHINE-NOTES: containerd 1.6 leaves image_id empty.
                Target::Containerd => {
                    ensure_eq!(st.image_id, "", "{name}: containerd image_id");
                }
            }
        }
        Ok(())
    })
    .await
}

fn userns(mode: NamespaceMode, maps: Vec<IdMapping>) -> UserNamespace {
    UserNamespace {
        mode: mode as i32,
        uids: maps.clone(),
        gids: maps,
    }
}

fn map(container_id: u32, host_id: u32, length: u32) -> IdMapping {
    IdMapping {
        host_id,
        container_id,
        length,
    }
}

async fn user_namespace_options(ctx: Ctx) -> Result<()> {
    with_scene(&ctx, "userns", async |s| {
        // Mode NODE is the host's user namespace: an ordinary pod on both daemons.
        let mut config = s.pod_config("userns-node");
        set_userns(&mut config, userns(NamespaceMode::Node, vec![]));
        s.try_run_pod(config).await.context("mode NODE")?;
        if ctx.target == Target::Containerd {
            // containerd 1.6 does not read userns_options.
            return Ok(());
        }
        let cases = [
            ("no-mapping", userns(NamespaceMode::Pod, vec![])),
            (
                "two-mappings",
                userns(
                    NamespaceMode::Pod,
                    vec![map(0, 100_000, 1000), map(1000, 300_000, 1000)],
                ),
            ),
            (
                "no-root",
                userns(NamespaceMode::Pod, vec![map(1, 100_000, 65536)]),
            ),
            (
                "container-mode",
                userns(NamespaceMode::Container, vec![map(0, 100_000, 65536)]),
            ),
            (
                "target-mode",
                userns(NamespaceMode::Target, vec![map(0, 100_000, 65536)]),
            ),
        ];
        for (name, options) in cases {
            let mut config = s.pod_config(name);
            set_userns(&mut config, options);
            match s.try_run_pod(config).await {
                Err(e) if e.code() == Code::InvalidArgument => {
                    ensure!(e.message().contains("userns_options"), "{name}: {e:?}")
                }
                other => bail!("{name}: want InvalidArgument, got {other:?}"),
            }
        }
        Ok(())
    })
    .await
}

fn set_userns(config: &mut PodSandboxConfig, options: UserNamespace) {
    if let Some(ns) = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|sc| sc.namespace_options.as_mut())
    {
        ns.userns_options = Some(options);
    }
}

/// The host range of the test pod's user namespace.
const USERNS_BASE: u32 = 3_200_000_000;

/// A pod in its own user namespace (containerd 1.6 has none: bungeo only).
async fn user_namespace_pod(ctx: Ctx) -> Result<()> {
    let host = tempfile::Builder::new()
        .prefix("bungeo-e2e-userns-")
        .tempdir()
        .context("host dir")?;
    std::fs::write(host.path().join("rootfile"), "root's\n")?;
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o755))?;
    with_scene(&ctx, "userns-pod", async |s| {
        let image = ctx.fx.reference(PLAIN);
        s.cri.pull(&image, None).await.context("pull")?;
        let maps = vec![map(0, USERNS_BASE, 65536)];
        let mut config = s.pod_config("userns-pod");
        // The pod's own network, uts and ipc: owned by its user namespace.
        if let Some(ns) = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|sc| sc.namespace_options.as_mut())
        {
            ns.network = NamespaceMode::Pod as i32;
        }
        config.hostname = "userns-pod".into();
        set_userns(&mut config, userns(NamespaceMode::Pod, maps.clone()));
        let pod = s
            .try_run_pod(config)
            .await
            .context("RunPodSandbox with a user namespace")?;
        let script = "id -u; stat -c 'layer=%u:%g' /bin/busybox; \
            echo hi > /tmp/x; stat -c 'new=%u' /tmp/x; hostname; \
            stat -c 'plain=%u' /vol/rootfile; echo y >> /vol/rootfile; echo plainwrite=$?; \
            stat -c 'idmapped=%u' /idvol/rootfile; echo y >> /idvol/rootfile; echo idwrite=$?; \
            echo done; sleep 600";
        let mut c = container("userns", &image, &["sh", "-c", script]);
        if let Some(ns) = c
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|sc| sc.namespace_options.as_mut())
        {
            ns.network = NamespaceMode::Pod as i32;
            ns.userns_options = Some(userns(NamespaceMode::Pod, maps.clone()));
        }
        let plain = Mount {
            container_path: "/vol".into(),
            host_path: host.path().to_string_lossy().into_owned(),
            ..Default::default()
        };
        // What kubelet sends for a volume of a pod in a user namespace.
        let idmapped = Mount {
            container_path: "/idvol".into(),
            uid_mappings: maps.clone(),
            gid_mappings: maps.clone(),
            ..plain.clone()
        };
        c.mounts = vec![plain, idmapped];
        let id = s.run(&pod, c).await?;
        let log = s.log_paths.get(&id).cloned().context("log path")?;
        let deadline = Instant::now() + WAIT;
        let out = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let out: Vec<String> = text
                .lines()
                .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_owned))
                .collect();
            if out.iter().any(|l| l == "done") {
                break out;
            }
            let st = s.status(&id).await?;
            ensure!(
                st.state() == ContainerState::ContainerRunning && Instant::now() < deadline,
                "container state {:?}, output so far {out:?}",
                st.state()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let has = |want: &str| out.iter().any(|l| l.contains(want));
        ensure_eq!(
            out.first().map(String::as_str),
            Some("0"),
            "id -u in the container ({out:?})"
        );
        ensure!(has("layer=0:0"), "image files are the pod root's: {out:?}");
        ensure!(
            has("new=0"),
            "files the container makes are its root's: {out:?}"
        );
        ensure!(
            has("userns-pod"),
            "hostname of the pod's uts namespace: {out:?}"
        );
        ensure!(
            has("plain=65534"),
            "a host root file without idmap is nobody's: {out:?}"
        );
        ensure!(
            has("plainwrite=1"),
            "container root cannot write a host root file: {out:?}"
        );
        ensure!(has("idmapped=0"), "the idmapped volume shows root: {out:?}");
        ensure!(
            has("idwrite=0"),
            "the idmapped volume is writable by root: {out:?}"
        );

        // From the host: the container's root is the mapped, unprivileged uid.
        let r = s
            .cri
            .runtime
            .container_status(ContainerStatusRequest {
                container_id: id.clone(),
                verbose: true,
            })
            .await?
            .into_inner();
        let v: serde_json::Value =
            serde_json::from_str(r.info.get("info").context("no verbose info")?)?;
        let pid = v["pid"].as_i64().context("no pid in the verbose info")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let uid_line = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .context("no Uid line")?;
        let want = USERNS_BASE.to_string();
        ensure!(
            uid_line.split_whitespace().skip(1).all(|u| u == want),
            "host view of the container's uid: {uid_line:?}, want {want}"
        );
        // ExecSync joins the pod's user namespace too.
        let exec = s
            .cri
            .runtime
            .exec_sync(ExecSyncRequest {
                container_id: id.clone(),
                cmd: strings(&["cat", "/proc/self/uid_map"]),
                timeout: 10,
            })
            .await
            .context("ExecSync")?
            .into_inner();
        let map_text = String::from_utf8_lossy(&exec.stdout);
        ensure!(
            map_text.split_whitespace().collect::<Vec<_>>() == ["0", &want, "65536"],
            "uid_map seen by an exec: {map_text:?} (exit {})",
            exec.exit_code
        );
        // The host file: written once, through the idmapped mount, and still root's.
        let text = std::fs::read_to_string(host.path().join("rootfile"))?;
        ensure_eq!(text, "root's\ny\n", "host file after the writes");
        let meta = std::fs::metadata(host.path().join("rootfile"))?;
        ensure_eq!(meta.uid(), 0, "host file owner");
        Ok(())
    })
    .await
}
