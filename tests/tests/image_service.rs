//! The CRI ImageService, run against bungeo and against containerd (the reference).
//!
//! Where the two legitimately answer differently the check says so and asserts each daemon's
//! own behaviour; everywhere else both must give the same answer.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use base64::Engine as _;
use bungeo_tests::bungeo::Bungeo;
use bungeo_tests::cri::{Cri, Target, basic_auth};
use bungeo_tests::fakeregistry::Grant;
use bungeo_tests::images::{
    self, BAD_DIGEST, DOCKERLIST, ENTRYPOINT, Image, LAYERS, MULTIARCH, PLAIN, SCHEMA1, SHARED,
    UNCOMPRESSED, USER_NAME, USER_NAME_GROUP, USER_UID, ZSTD,
};
use bungeo_tests::layer::sha256_digest;
use bungeo_tests::registry::free_local_addr;
use bungeo_tests::suite::{
    AUTH_PASSWORD, AUTH_REPO_PREFIX, AUTH_USER, Ctx, REFRESH_TOKEN, run_suite,
};
use bungeo_tests::{check, ensure_eq};
use k8s_cri::v1::{AuthConfig, Image as CriImage};
use tonic::Code;

fn main() {
    run_suite(vec![
        check!(pull_by_tag),
        check!(pull_short_name),
        check!(pull_by_digest),
        check!(pull_tag_and_digest),
        check!(image_status_user),
        check!(image_status_verbose),
        check!(image_status_missing),
        check!(list_images),
        check!(list_images_filter),
        check!(remove_by_tag),
        check!(remove_by_id),
        check!(remove_by_digest_reference),
        check!(remove_missing_is_idempotent),
        check!(image_fs_info),
        check!(malformed_reference),
        check!(pull_missing_image),
        check!(auth_username_password),
        check!(auth_base64),
        check!(auth_wrong_password),
        check!(multiarch_index),
        check!(docker_manifest_list),
        check!(zstd_layers),
        check!(uncompressed_layer),
        check!(schema1_refused),
        check!(digest_mismatch_fails),
        check!(shared_layers_fetched_once),
        check!(concurrent_pulls_share_download),
        check!(kill9_mid_pull_leaves_clean_store, only = Target::Bungeo),
        check!(
            remove_collects_unshared_snapshots_and_blobs,
            only = Target::Bungeo
        ),
        check!(token_registry_token),
        check!(token_identity_token),
        check!(token_username_password),
        check!(token_refused),
        check!(pull_without_credentials_says_so, only = Target::Bungeo),
        check!(config_credentials, only = Target::Bungeo),
        check!(mirror_fallback, only = Target::Bungeo),
    ])
}

/// ImageStatus that must find the image.
async fn status(cri: &mut Cri, reference: &str) -> Result<CriImage> {
    cri.image_status(reference)
        .await
        .with_context(|| format!("ImageStatus {reference}"))?
        .with_context(|| format!("ImageStatus {reference}: no image"))
}

async fn pull(cri: &mut Cri, reference: &str) -> Result<String> {
    cri.pull(reference, None)
        .await
        .with_context(|| format!("PullImage {reference}"))
}

/// `host/repo@digest`.
fn repo_digest(name: &str, image: &Image) -> String {
    format!("{name}@{}", image.digest())
}

/// An image of its own for this check and target, pushed to `<what>-<target>/busybox`.
async fn own_image(
    ctx: &Ctx,
    what: &str,
    tags: &[&str],
    add_layer: bool,
) -> Result<(String, Image)> {
    let base = &ctx.fx.image(LAYERS)?.host_layers()[..1];
    let label = ctx.unique(what);
    let image = images::derived(base, &label, add_layer)?;
    let name = ctx
        .fx
        .push(&format!("{label}/busybox"), tags, &image)
        .await?;
    Ok((name, image))
}

async fn pull_by_tag(mut ctx: Ctx) -> Result<()> {
    let image = ctx.fx.image(LAYERS)?;
    let reference = ctx.fx.reference(LAYERS);
    let name = LAYERS.name_at(&ctx.fx.registry.host());
    let image_ref = pull(&mut ctx.cri, &reference).await?;
    ensure_eq!(
        image_ref,
        image.id()?,
        "PullImage.image_ref is the image id (config digest)"
    );
    let st = status(&mut ctx.cri, &reference).await?;
    ensure_eq!(st.id, image.id()?, "image id");
    ensure!(
        st.repo_tags.contains(&reference),
        "repo_tags {:?} lack {reference}",
        st.repo_tags
    );
    let digest_ref = repo_digest(&name, image);
    ensure!(
        st.repo_digests.contains(&digest_ref),
        "repo_digests {:?} lack {digest_ref}",
        st.repo_digests
    );
    // containerd counts manifest + config + compressed layers; bungeo matches it.
    ensure_eq!(st.size, image.pulled_size()?, "image size");
    ensure!(
        st.uid.is_none() && st.username.is_empty(),
        "no USER: got uid {:?} username {:?}",
        st.uid,
        st.username
    );
    for other in [st.id.clone(), digest_ref] {
        let by = status(&mut ctx.cri, &other).await?;
        ensure_eq!(by.id, st.id, "ImageStatus by {other}");
    }
    Ok(())
}

async fn pull_short_name(mut ctx: Ctx) -> Result<()> {
    // docker.io is mirrored to the test registry, where library/busybox:latest is PLAIN.
    let image = ctx.fx.image(PLAIN)?;
    let image_ref = pull(&mut ctx.cri, "busybox").await?;
    ensure_eq!(image_ref, image.id()?, "PullImage busybox");
    let st = status(&mut ctx.cri, "busybox").await?;
    let full = "docker.io/library/busybox:latest".to_string();
    ensure!(
        st.repo_tags.contains(&full),
        "repo_tags {:?} lack {full}",
        st.repo_tags
    );
    let digest_ref = repo_digest("docker.io/library/busybox", image);
    ensure!(
        st.repo_digests.contains(&digest_ref),
        "repo_digests {:?} lack {digest_ref}",
        st.repo_digests
    );
    for alias in [
        "docker.io/library/busybox:latest",
        "library/busybox",
        "docker.io/busybox:latest",
    ] {
        let by = status(&mut ctx.cri, alias).await?;
        ensure_eq!(by.id, st.id, "ImageStatus {alias}");
    }
    Ok(())
}

async fn pull_by_digest(mut ctx: Ctx) -> Result<()> {
    let (name, image) = own_image(&ctx, "by-digest", &[], false).await?;
    let reference = repo_digest(&name, &image);
    ensure_eq!(
        pull(&mut ctx.cri, &reference).await?,
        image.id()?,
        "PullImage {reference}"
    );
    let st = status(&mut ctx.cri, &reference).await?;
    ensure!(
        st.repo_tags.is_empty(),
        "pulled by digest only, yet repo_tags {:?}",
        st.repo_tags
    );
    ensure_eq!(st.repo_digests, vec![reference.clone()], "repo_digests");
    Ok(())
}

async fn pull_tag_and_digest(mut ctx: Ctx) -> Result<()> {
    let (name, image) = own_image(&ctx, "tag-and-digest", &["v1"], false).await?;
    let reference = format!("{name}:v1@{}", image.digest());
    ensure_eq!(
        pull(&mut ctx.cri, &reference).await?,
        image.id()?,
        "PullImage {reference}"
    );
    // The digest wins and the tag is dropped: containerd (like docker) normalises
    // `name:tag@digest` to `name@digest`, so no tag is recorded; bungeo must match.
    let st = status(&mut ctx.cri, &repo_digest(&name, &image)).await?;
    ensure!(st.repo_tags.is_empty(), "repo_tags {:?}", st.repo_tags);
    ensure_eq!(
        st.repo_digests,
        vec![repo_digest(&name, &image)],
        "repo_digests"
    );
    Ok(())
}

async fn image_status_user(mut ctx: Ctx) -> Result<()> {
    // USER `1000` gives uid; a name (also `name:group`) gives username without the group.
    for (name, uid, username) in [
        (USER_UID, Some(1000), ""),
        (USER_NAME, None, "app"),
        (USER_NAME_GROUP, None, "app"),
        (ENTRYPOINT, None, ""),
    ] {
        let reference = ctx.fx.reference(name);
        ensure_eq!(
            pull(&mut ctx.cri, &reference).await?,
            ctx.fx.image(name)?.id()?,
            "PullImage {reference}"
        );
        let st = status(&mut ctx.cri, &reference).await?;
        ensure_eq!(st.uid.map(|u| u.value), uid, "{name} uid");
        ensure_eq!(st.username, username, "{name} username");
    }
    Ok(())
}

async fn image_status_verbose(mut ctx: Ctx) -> Result<()> {
    let reference = ctx.fx.reference(LAYERS);
    pull(&mut ctx.cri, &reference).await?;
    let plain = ctx.cri.image_status_full(&reference, false).await?;
    ensure!(
        plain.info.is_empty(),
        "info without verbose: {:?}",
        plain.info
    );
    let verbose = ctx.cri.image_status_full(&reference, true).await?;
    ensure!(!verbose.info.is_empty(), "verbose ImageStatus has no info");
    for (key, value) in &verbose.info {
        serde_json::from_str::<serde_json::Value>(value)
            .with_context(|| format!("verbose info {key:?} is not JSON: {value}"))?;
    }
    Ok(())
}

async fn image_status_missing(mut ctx: Ctx) -> Result<()> {
    // CRI: ImageStatus of an image that is not present answers no image, not an error.
    let reference = format!("{}/never/pulled:latest", ctx.fx.registry.host());
    let st = ctx.cri.image_status(&reference).await?;
    ensure!(st.is_none(), "ImageStatus of a missing image: {st:?}");
    Ok(())
}

async fn list_images(mut ctx: Ctx) -> Result<()> {
    let (name, image) = own_image(&ctx, "list", &["u"], false).await?;
    let reference = format!("{name}:u");
    pull(&mut ctx.cri, &reference).await?;
    let all = ctx.cri.list_images(None).await?;
    let found = all
        .iter()
        .find(|i| i.id == image.id().unwrap_or_default())
        .with_context(|| format!("ListImages lacks {reference}"))?;
    ensure_eq!(found.repo_tags, vec![reference.clone()], "listed repo_tags");
    ensure_eq!(
        found.repo_digests,
        vec![repo_digest(&name, &image)],
        "listed repo_digests"
    );
    ensure_eq!(found.size, image.pulled_size()?, "listed size");
    let st = status(&mut ctx.cri, &reference).await?;
    ensure_eq!(
        *found,
        st,
        "ListImages and ImageStatus describe the image alike"
    );
    Ok(())
}

async fn list_images_filter(mut ctx: Ctx) -> Result<()> {
    let (name, image) = own_image(&ctx, "list-filter", &["f"], false).await?;
    let reference = format!("{name}:f");
    pull(&mut ctx.cri, &reference).await?;
    let other = ctx.fx.reference(PLAIN);
    pull(&mut ctx.cri, &other).await?;
    let filtered = ctx.cri.list_images(Some(&reference)).await?;
    let ids: Vec<&str> = filtered.iter().map(|i| i.id.as_str()).collect();
    ensure!(
        ids.contains(&image.id()?),
        "filtered ListImages lacks {reference}: {ids:?}"
    );
    match ctx.target {
        // bungeo applies the filter, as the CRI asks.
        Target::Bungeo => ensure_eq!(ids, vec![image.id()?], "ListImages filtered by {reference}"),
        // containerd 1.6 ignores ListImagesRequest.filter and lists everything (crictl filters
        // on the client side); asserting it keeps this known difference visible.
        Target::Containerd => {
            let plain_id = ctx.fx.image(PLAIN)?.id()?;
            ensure!(
                ids.contains(&plain_id),
                "containerd started to honour the filter: {ids:?}"
            );
        }
    }
    Ok(())
}

async fn remove_by_tag(mut ctx: Ctx) -> Result<()> {
    let (name, image) = own_image(&ctx, "rm-tag", &["a", "b"], false).await?;
    let (a, b) = (format!("{name}:a"), format!("{name}:b"));
    pull(&mut ctx.cri, &a).await?;
    pull(&mut ctx.cri, &b).await?;
    let st = status(&mut ctx.cri, &a).await?;
    let mut tags = st.repo_tags.clone();
    tags.sort();
    ensure_eq!(tags, vec![a.clone(), b.clone()], "both tags on one image");
    ctx.cri
        .remove_image(&a)
        .await
        .context("RemoveImage by tag")?;
    let id = image.id()?;
    match ctx.target {
        // bungeo removes only the tag asked for; the image goes with its last tag.
        Target::Bungeo => {
            ensure!(
                ctx.cri.image_status(&a).await?.is_none(),
                "{a} still resolves"
            );
            let st = status(&mut ctx.cri, &b).await?;
            ensure_eq!(
                st.repo_tags,
                vec![b.clone()],
                "tags left after removing {a}"
            );
            ctx.cri
                .remove_image(&b)
                .await
                .context("RemoveImage last tag")?;
            ensure!(
                ctx.cri.image_status(id).await?.is_none(),
                "image left after its last tag went"
            );
        }
        // containerd's RemoveImage deletes every reference of the image the tag resolves
        // to, so the other tag goes too.
        Target::Containerd => {
            for r in [&a, &b, &id.to_string()] {
                ensure!(
                    ctx.cri.image_status(r).await?.is_none(),
                    "{r} still resolves"
                );
            }
        }
    }
    Ok(())
}

async fn remove_by_id(mut ctx: Ctx) -> Result<()> {
    let (name, image) = own_image(&ctx, "rm-id", &["a", "b"], false).await?;
    for tag in ["a", "b"] {
        pull(&mut ctx.cri, &format!("{name}:{tag}")).await?;
    }
    let id = image.id()?;
    ctx.cri
        .remove_image(id)
        .await
        .context("RemoveImage by id")?;
    for r in [
        format!("{name}:a"),
        format!("{name}:b"),
        id.to_string(),
        repo_digest(&name, &image),
    ] {
        ensure!(
            ctx.cri.image_status(&r).await?.is_none(),
            "{r} still resolves"
        );
    }
    let listed = ctx.cri.list_images(None).await?;
    ensure!(listed.iter().all(|i| i.id != id), "{id} still listed");
    Ok(())
}

async fn remove_by_digest_reference(mut ctx: Ctx) -> Result<()> {
    let (name, image) = own_image(&ctx, "rm-digest", &["a"], false).await?;
    let tag = format!("{name}:a");
    pull(&mut ctx.cri, &tag).await?;
    let digest_ref = repo_digest(&name, &image);
    ctx.cri
        .remove_image(&digest_ref)
        .await
        .context("RemoveImage by digest reference")?;
    // A digest reference names the image itself: it goes with all its tags (both daemons).
    for r in [&tag, &digest_ref, &image.id()?.to_string()] {
        ensure!(
            ctx.cri.image_status(r).await?.is_none(),
            "{r} still resolves"
        );
    }
    Ok(())
}

async fn remove_missing_is_idempotent(mut ctx: Ctx) -> Result<()> {
    let (name, _) = own_image(&ctx, "rm-twice", &["a"], false).await?;
    let tag = format!("{name}:a");
    pull(&mut ctx.cri, &tag).await?;
    ctx.cri
        .remove_image(&tag)
        .await
        .context("first RemoveImage")?;
    ctx.cri
        .remove_image(&tag)
        .await
        .context("second RemoveImage")?;
    let never = format!("{}/never/pulled:latest", ctx.fx.registry.host());
    ctx.cri
        .remove_image(&never)
        .await
        .context("RemoveImage of an image never pulled")?;
    Ok(())
}

async fn image_fs_info(mut ctx: Ctx) -> Result<()> {
    pull(&mut ctx.cri, &ctx.fx.reference(LAYERS)).await?;
    let root = ctx.daemon()?.root().to_path_buf();
    // containerd refreshes its snapshot usage every 10 s; allow for one refresh.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = ctx.cri.image_fs_info().await?;
        ensure_eq!(info.image_filesystems.len(), 1, "image filesystems");
        let fs = &info.image_filesystems[0];
        let mountpoint = fs
            .fs_id
            .as_ref()
            .map(|f| f.mountpoint.clone())
            .unwrap_or_default();
        ensure!(
            std::path::Path::new(&mountpoint).starts_with(&root)
                && std::path::Path::new(&mountpoint).is_dir(),
            "mountpoint {mountpoint:?} is not a directory under the daemon root {}",
            root.display()
        );
        ensure!(fs.timestamp > 0, "timestamp {}", fs.timestamp);
        let used = fs.used_bytes.as_ref().map(|u| u.value).unwrap_or(0);
        let inodes = fs.inodes_used.as_ref().map(|u| u.value).unwrap_or(0);
        if used > 0 && inodes > 0 {
            // At least the unpacked busybox binary is there.
            ensure!(
                used >= 1 << 20,
                "used_bytes {used} is less than busybox alone"
            );
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "used_bytes {used}, inodes_used {inodes} after a pull"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn malformed_reference(mut ctx: Ctx) -> Result<()> {
    let host = ctx.fx.registry.host();
    for bad in [
        format!("{host}/UPPER/busybox:latest"),
        format!("{host}/busybox:bad tag"),
        format!("{host}/busybox@sha256:1234"),
        "busybox::latest".to_string(),
    ] {
        let err = match ctx.cri.pull(&bad, None).await {
            Ok(r) => anyhow::bail!("PullImage {bad:?} succeeded with {r}"),
            Err(e) => e,
        };
        match ctx.target {
            Target::Bungeo => {
                ensure_eq!(
                    err.code(),
                    Code::InvalidArgument,
                    "PullImage {bad:?} code ({})",
                    err.message()
                );
                ensure!(
                    err.message().contains(&bad),
                    "message does not name {bad:?}: {}",
                    err.message()
                );
                for (call, res) in [
                    ("ImageStatus", ctx.cri.image_status(&bad).await.map(drop)),
                    ("RemoveImage", ctx.cri.remove_image(&bad).await),
                ] {
                    let e = res
                        .err()
                        .with_context(|| format!("{call} {bad:?} succeeded"))?;
                    ensure_eq!(
                        e.code(),
                        Code::InvalidArgument,
                        "{call} {bad:?} code ({})",
                        e.message()
                    );
                }
            }
            // containerd answers Unknown with the parse error (containerd does not map it to
            // InvalidArgument; bungeo does, as the issue demands).
            Target::Containerd => {
                ensure_eq!(
                    err.code(),
                    Code::Unknown,
                    "PullImage {bad:?} code ({})",
                    err.message()
                );
                ensure!(err.message().contains("parse"), "{}", err.message());
            }
        }
    }
    Ok(())
}

async fn pull_missing_image(mut ctx: Ctx) -> Result<()> {
    let reference = format!("{}/busybox:no-such-tag", ctx.fx.registry.host());
    let err = match ctx.cri.pull(&reference, None).await {
        Ok(r) => anyhow::bail!("PullImage of a missing tag succeeded with {r}"),
        Err(e) => e,
    };
    ensure!(
        err.message().contains("not found"),
        "message: {}",
        err.message()
    );
    ensure!(
        err.message().contains(&reference),
        "message does not name {reference}: {}",
        err.message()
    );
    ensure_eq!(err.code(), Code::NotFound, "code ({})", err.message());
    ensure!(
        ctx.cri.image_status(&reference).await?.is_none(),
        "a failed pull left an image"
    );
    Ok(())
}

fn auth_reference(ctx: &Ctx, name: images::ImageName) -> String {
    format!(
        "{}/{AUTH_REPO_PREFIX}/{}:{}",
        ctx.fx.auth_registry.host(),
        name.repo,
        name.tag
    )
}

async fn auth_username_password(mut ctx: Ctx) -> Result<()> {
    let reference = auth_reference(&ctx, LAYERS);
    let id = ctx
        .cri
        .pull(&reference, Some(basic_auth(AUTH_USER, AUTH_PASSWORD)))
        .await
        .context("PullImage with username and password")?;
    ensure_eq!(id, ctx.fx.image(LAYERS)?.id()?, "image id");
    ensure!(
        status(&mut ctx.cri, &reference)
            .await?
            .repo_tags
            .contains(&reference),
        "repo_tags"
    );
    Ok(())
}

async fn auth_base64(mut ctx: Ctx) -> Result<()> {
    let reference = auth_reference(&ctx, USER_UID);
    let auth = AuthConfig {
        auth: base64::engine::general_purpose::STANDARD
            .encode(format!("{AUTH_USER}:{AUTH_PASSWORD}")),
        ..AuthConfig::default()
    };
    let id = ctx
        .cri
        .pull(&reference, Some(auth))
        .await
        .context("PullImage with auth")?;
    ensure_eq!(id, ctx.fx.image(USER_UID)?.id()?, "image id");
    Ok(())
}

async fn auth_wrong_password(mut ctx: Ctx) -> Result<()> {
    // An image no check pulls successfully from the auth registry.
    let reference = auth_reference(&ctx, USER_NAME);
    for (what, auth) in [
        ("a wrong password", Some(basic_auth(AUTH_USER, "wrong"))),
        ("no credentials", None),
    ] {
        if let Ok(r) = ctx.cri.pull(&reference, auth).await {
            anyhow::bail!("PullImage with {what} succeeded with {r}");
        }
    }
    ensure!(
        ctx.cri.image_status(&reference).await?.is_none(),
        "a refused pull left an image"
    );
    Ok(())
}

async fn multiarch_index(mut ctx: Ctx) -> Result<()> {
    resolves_to_host(&mut ctx, MULTIARCH).await
}

async fn docker_manifest_list(mut ctx: Ctx) -> Result<()> {
    resolves_to_host(&mut ctx, DOCKERLIST).await
}

/// The index resolves to the host's manifest; repo digest names the index, as containerd does.
async fn resolves_to_host(ctx: &mut Ctx, name: images::ImageName) -> Result<()> {
    let image = ctx.fx.image(name)?;
    let reference = ctx.fx.reference(name);
    ensure_eq!(
        pull(&mut ctx.cri, &reference).await?,
        image.id()?,
        "PullImage {reference} (host manifest's config)"
    );
    let st = status(&mut ctx.cri, &reference).await?;
    ensure_eq!(
        st.repo_digests,
        vec![repo_digest(&name.name_at(&ctx.fx.registry.host()), image)],
        "repo_digests"
    );
    ensure_eq!(st.size, image.pulled_size()?, "size");
    Ok(())
}

async fn zstd_layers(mut ctx: Ctx) -> Result<()> {
    let reference = ctx.fx.reference(ZSTD);
    ensure_eq!(
        pull(&mut ctx.cri, &reference).await?,
        ctx.fx.image(ZSTD)?.id()?,
        "PullImage {reference}"
    );
    Ok(())
}

async fn uncompressed_layer(mut ctx: Ctx) -> Result<()> {
    let reference = ctx.fx.reference(UNCOMPRESSED);
    ensure_eq!(
        pull(&mut ctx.cri, &reference).await?,
        ctx.fx.image(UNCOMPRESSED)?.id()?,
        "PullImage {reference}"
    );
    Ok(())
}

async fn schema1_refused(mut ctx: Ctx) -> Result<()> {
    let reference = SCHEMA1.at(&ctx.fx.fake.host());
    let result = ctx.cri.pull(&reference, None).await;
    match ctx.target {
        Target::Bungeo => {
            let err = result
                .err()
                .context("PullImage of a schema 1 manifest succeeded")?;
            let msg = err.message().to_lowercase();
            ensure!(
                msg.contains("schema 1") || msg.contains("schema1"),
                "message does not say schema 1: {}",
                err.message()
            );
            ensure!(
                msg.contains(&reference.to_lowercase()),
                "message does not name {reference}: {}",
                err.message()
            );
            ensure!(
                ctx.cri.image_status(&reference).await?.is_none(),
                "a refused pull left an image"
            );
        }
        // containerd 1.6 still converts schema 1 (deprecated) and pulls it; the issue asks
        // bungeo to refuse it.
        Target::Containerd => {
            let id = result.context("containerd 1.6 converts schema 1")?;
            ensure_eq!(
                status(&mut ctx.cri, &reference).await?.id,
                id,
                "converted image"
            );
        }
    }
    Ok(())
}

async fn digest_mismatch_fails(mut ctx: Ctx) -> Result<()> {
    let reference = BAD_DIGEST.at(&ctx.fx.fake.host());
    let image = ctx.fx.image(BAD_DIGEST)?;
    let layer_digest = &image.host_layers()[0].blob.digest;
    let err = match ctx.cri.pull(&reference, None).await {
        Ok(r) => anyhow::bail!("PullImage of a blob that does not match its digest succeeded: {r}"),
        Err(e) => e,
    };
    ensure!(
        err.message().contains(layer_digest.as_str()),
        "message does not name {layer_digest}: {}",
        err.message()
    );
    ensure!(
        ctx.cri.image_status(&reference).await?.is_none(),
        "a failed pull left an image"
    );
    let listed = ctx.cri.list_images(None).await?;
    ensure!(
        listed
            .iter()
            .all(|i| i.id != image.id().unwrap_or_default()),
        "a failed pull is listed"
    );
    Ok(())
}

async fn shared_layers_fetched_once(mut ctx: Ctx) -> Result<()> {
    // First an image with layers L1..L4, then one with L1, L2 and a new layer, in repositories
    // of their own so the registry log tells this check's fetches apart.
    let layers = ctx.fx.image(LAYERS)?.host_layers().to_vec();
    let first = images::derived(&layers, &ctx.unique("share-first"), false)?;
    let second = images::derived(&layers[..2], &ctx.unique("share-second"), true)?;
    let first_repo = format!("{}/busybox", ctx.unique("share-first"));
    let second_repo = format!("{}/busybox", ctx.unique("share-second"));
    let first_name = ctx.fx.push(&first_repo, &["t"], &first).await?;
    let second_name = ctx.fx.push(&second_repo, &["t"], &second).await?;
    pull(&mut ctx.cri, &format!("{first_name}:t")).await?;
    pull(&mut ctx.cri, &format!("{second_name}:t")).await?;
    let reg = &ctx.fx.registry;
    for l in &second.host_layers()[..2] {
        ensure_eq!(
            reg.blob_fetches_in(&second_repo, &l.blob.digest),
            0,
            "fetches of shared layer {}",
            l.blob.digest
        );
    }
    let new = &second.host_layers()[2].blob.digest;
    ensure_eq!(
        reg.blob_fetches_in(&second_repo, new),
        1,
        "fetches of the new layer {new}"
    );
    ensure!(
        status(&mut ctx.cri, &format!("{first_name}:t"))
            .await
            .is_ok(),
        "first image gone"
    );
    Ok(())
}

async fn concurrent_pulls_share_download(ctx: Ctx) -> Result<()> {
    let (name, image) = own_image(&ctx, "concurrent", &["t"], true).await?;
    let reference = format!("{name}:t");
    let (mut a, mut b) = (ctx.cri.clone(), ctx.cri.clone());
    let (ra, rb) = tokio::join!(a.pull(&reference, None), b.pull(&reference, None));
    let (ra, rb) = (
        ra.context("first PullImage")?,
        rb.context("second PullImage")?,
    );
    ensure_eq!(ra, image.id()?, "first PullImage");
    ensure_eq!(rb, image.id()?, "second PullImage");
    let repo = name.split_once('/').map(|(_, r)| r).unwrap_or_default();
    let new = &image.host_layers()[1].blob.digest;
    ensure_eq!(
        ctx.fx.registry.blob_fetches_in(repo, new),
        1,
        "downloads of {new} by two concurrent pulls"
    );
    Ok(())
}

async fn kill9_mid_pull_leaves_clean_store(ctx: Ctx) -> Result<()> {
    // A daemon of its own, so no other check sees it die.
    let fx = ctx.fx.clone();
    let image = images::derived(&fx.image(LAYERS)?.host_layers()[..1], "kill9", true)?;
    let repo = "kill9/busybox";
    fx.fake.publish(repo, "t", &image);
    let held = &image.host_layers()[1].blob;
    let stall = fx.fake.stall_blob(&held.digest, held.data.len() / 2);
    let reference = format!("{}/{repo}:t", fx.fake.host());
    let mut daemon = Bungeo::start(&fx.hosts).await?;
    let cri = Cri::connect(daemon.socket()).await?;
    let pulling = {
        let (mut cri, reference) = (cri.clone(), reference.clone());
        tokio::spawn(async move { cri.pull(&reference, None).await })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while fx.fake.blob_fetches_in(repo, &held.digest) == 0 {
        ensure!(
            Instant::now() < deadline,
            "the pull never reached the held layer"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the other layer land (or be half written) too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.kill9()?;
    ensure!(
        pulling.await?.is_err(),
        "the pull survived the daemon's death"
    );
    drop(cri);
    stall.release();
    daemon.restart().await?;
    let mut cri = Cri::connect(daemon.socket()).await?;
    ensure!(
        cri.image_status(&reference).await?.is_none(),
        "a half-pulled image is there after restart"
    );
    let listed = cri.list_images(None).await?;
    ensure!(
        listed.is_empty(),
        "images listed after a crashed first pull: {listed:?}"
    );
    let leftovers = stray_content(&daemon.root().join("content"))?;
    ensure!(
        leftovers.is_empty(),
        "temp or corrupt content after restart: {leftovers:?}"
    );
    ensure_eq!(
        cri.pull(&reference, None).await?,
        image.id()?,
        "pull after restart"
    );
    Ok(())
}

/// Files under `content/` that are not `blobs/sha256/<hex>` holding bytes that hash to `<hex>`.
fn stray_content(content: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let mut stray = Vec::new();
    let mut dirs = vec![content.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let in_blobs = path.parent() == Some(&content.join("blobs/sha256"));
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
            if !in_blobs || bungeo_tests::layer::sha256_digest(&bytes) != format!("sha256:{name}") {
                stray.push(path);
            }
        }
    }
    Ok(stray)
}

/// Chain IDs of an image's layers (OCI image spec: `sha256(parent + " " + diff_id)`).
fn chain_ids(image: &Image) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for layer in image.host_layers() {
        let next = match out.last() {
            None => layer.diff_id.clone(),
            Some(parent) => sha256_digest(format!("{parent} {}", layer.diff_id).as_bytes()),
        };
        out.push(next);
    }
    out
}

/// The hex names of every blob a pull of `image` stores: index, manifest, config, layers.
fn blob_names(image: &Image) -> Result<BTreeSet<String>> {
    let m = image
        .host_manifest()
        .context("no manifest for this platform")?;
    let mut digests = vec![image.digest(), &m.manifest.digest, &m.config.digest];
    digests.extend(m.layers.iter().map(|l| l.blob.digest.as_str()));
    Ok(digests
        .into_iter()
        .map(|d| d.trim_start_matches("sha256:").to_string())
        .collect())
}

/// Names of the entries of `dir`.
fn entries(dir: &Path) -> Result<BTreeSet<String>> {
    std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect()
}

/// Every file (not directory) below `dir`.
fn files_below(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("read {}", d.display()))? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            } else {
                out.push(entry.path());
            }
        }
    }
    Ok(out)
}

async fn remove_collects_unshared_snapshots_and_blobs(ctx: Ctx) -> Result<()> {
    // A daemon of its own: the shared one gets pulls from other checks while this one counts.
    let fx = ctx.fx.clone();
    let mut daemon = Bungeo::start(&fx.hosts).await?;
    let mut cri = Cri::connect(daemon.socket()).await?;
    let snapshots = daemon.root().join("snapshots");
    let blobs = daemon.root().join("content/blobs/sha256");
    let (layers, shared) = (fx.image(LAYERS)?, fx.image(SHARED)?);
    let (layers_ref, shared_ref) = (fx.reference(LAYERS), fx.reference(SHARED));
    let shared_chains: BTreeSet<String> = chain_ids(shared).into_iter().collect();
    let layers_chains: BTreeSet<String> = chain_ids(layers).into_iter().collect();
    let common = shared_chains.intersection(&layers_chains).count();
    ensure!(
        common >= 1 && common < shared_chains.len(),
        "{SHARED} must share some but not all layers with {LAYERS} ({common} shared)"
    );

    // SHARED first, so the snapshot dirs it owns are known by name.
    pull(&mut cri, &shared_ref).await?;
    let shared_dirs = entries(&snapshots)?;
    ensure_eq!(
        shared_dirs.len(),
        shared_chains.len(),
        "snapshot dirs after pulling {SHARED} ({shared_dirs:?})"
    );
    pull(&mut cri, &layers_ref).await?;
    let all_dirs = entries(&snapshots)?;
    ensure_eq!(
        all_dirs.len(),
        shared_chains.union(&layers_chains).count(),
        "snapshot dirs after pulling {LAYERS} too: one per distinct chain ID ({all_dirs:?})"
    );
    ensure!(
        shared_dirs.is_subset(&all_dirs),
        "pulling {LAYERS} replaced snapshots of {SHARED}: {shared_dirs:?} → {all_dirs:?}"
    );
    let both: BTreeSet<String> = blob_names(shared)?
        .union(&blob_names(layers)?)
        .cloned()
        .collect();
    ensure_eq!(entries(&blobs)?, both, "blobs of both images");

    // Collection works from the records, not from what one process remembers.
    drop(cri);
    daemon.restart().await?;
    let mut cri = Cri::connect(daemon.socket()).await?;
    ensure_eq!(
        entries(&snapshots)?,
        all_dirs,
        "snapshot dirs after a restart"
    );
    remove(&mut cri, &layers_ref).await?;
    ensure!(
        cri.image_status(&layers_ref).await?.is_none(),
        "{layers_ref} still resolves"
    );
    // Exactly SHARED's dirs stay, under their old names: the shared bottom layers were kept,
    // the layers only LAYERS used are gone, and nothing is left in trash.
    ensure_eq!(
        entries(&snapshots)?,
        shared_dirs,
        "snapshot dirs after removing {LAYERS}"
    );
    ensure_eq!(
        entries(&snapshots)?.len(),
        shared_chains.len(),
        "snapshot dirs still referenced by {SHARED}"
    );
    for dir in &shared_dirs {
        let fs = snapshots.join(dir).join("fs");
        ensure!(fs.is_dir(), "{} is gone", fs.display());
    }
    ensure!(
        shared_dirs
            .iter()
            .any(|d| snapshots.join(d).join("fs/bin/busybox").is_file()),
        "no remaining snapshot holds the base layer's /bin/busybox"
    );
    ensure_eq!(
        entries(&blobs)?,
        blob_names(shared)?,
        "blobs after removing {LAYERS}"
    );
    ensure_eq!(
        status(&mut cri, &shared_ref).await?.id,
        shared.id()?,
        "{SHARED} after removing {LAYERS}"
    );

    remove(&mut cri, &shared_ref).await?;
    ensure!(
        entries(&snapshots)?.is_empty(),
        "snapshots/ after removing every image: {:?}",
        entries(&snapshots)?
    );
    ensure!(
        entries(&blobs)?.is_empty(),
        "content/blobs/sha256/ after removing every image: {:?}",
        entries(&blobs)?
    );
    let ingest = files_below(&daemon.root().join("content/ingest"))?;
    ensure!(
        ingest.is_empty(),
        "files left in content/ingest: {ingest:?}"
    );
    ensure!(
        cri.list_images(None).await?.is_empty(),
        "images listed after removing every image"
    );
    Ok(())
}

async fn remove(cri: &mut Cri, reference: &str) -> Result<()> {
    cri.remove_image(reference)
        .await
        .with_context(|| format!("RemoveImage {reference}"))
}

/// An image of this check's own in the token registry, with a layer of its own so a blob
/// fetch needs the token too.
struct TokenImage {
    reference: String,
    repo: String,
    image: Image,
}

fn token_image(ctx: &Ctx, what: &str) -> Result<TokenImage> {
    let label = ctx.unique(what);
    let image = images::derived(&ctx.fx.image(LAYERS)?.host_layers()[..1], &label, true)?;
    let repo = format!("{label}/busybox");
    ctx.fx.token_registry.publish(&repo, "t", &image);
    Ok(TokenImage {
        reference: format!("{}/{repo}:t", ctx.fx.token_registry.host()),
        repo,
        image,
    })
}

async fn token_registry_token(mut ctx: Ctx) -> Result<()> {
    let TokenImage {
        reference,
        repo,
        image,
    } = token_image(&ctx, "registry-token")?;
    let auth = AuthConfig {
        registry_token: ctx
            .fx
            .token_registry
            .issue_token()
            .context("the token registry issues no tokens")?,
        ..AuthConfig::default()
    };
    let result = ctx.cri.pull(&reference, Some(auth)).await;
    match ctx.target {
        Target::Bungeo => {
            let id = result.context("PullImage with a registry token")?;
            ensure_eq!(id, image.id()?, "PullImage {reference}");
            ensure_eq!(
                ctx.fx.token_registry.grants_for(&repo),
                vec![],
                "tokens granted: a registry token is sent as it is"
            );
        }
        // containerd 1.6 drops AuthConfig.registry_token: its CRI `ParseAuth`
        // (pkg/cri/server/image_pull.go) reads username/password, identity_token and auth, and
        // has `// TODO(random-liu): Support RegistryToken.` for the rest. It pulls anonymously,
        // and the token endpoint refuses anonymous clients. The CRI defines the field, so
        // bungeo honours it; asserting the refusal keeps the difference visible.
        Target::Containerd => {
            ensure!(
                result.is_err(),
                "containerd started to honour registry_token: {result:?}"
            );
            ensure!(
                ctx.cri.image_status(&reference).await?.is_none(),
                "a refused pull left an image"
            );
        }
    }
    Ok(())
}

async fn token_identity_token(mut ctx: Ctx) -> Result<()> {
    // Only the refresh token is given: the daemon must trade it at the token endpoint
    // (POST grant_type=refresh_token) for an access token, as containerd does.
    let TokenImage {
        reference,
        repo,
        image,
    } = token_image(&ctx, "identity-token")?;
    let auth = AuthConfig {
        identity_token: REFRESH_TOKEN.to_string(),
        ..AuthConfig::default()
    };
    let id = ctx
        .cri
        .pull(&reference, Some(auth))
        .await
        .context("PullImage with an identity token")?;
    ensure_eq!(id, image.id()?, "PullImage {reference}");
    let grants = ctx.fx.token_registry.grants_for(&repo);
    ensure!(
        !grants.is_empty() && grants.iter().all(|g| *g == Grant::RefreshToken),
        "tokens for {repo} were not all granted for the refresh token: {grants:?}"
    );
    ensure!(
        status(&mut ctx.cri, &reference)
            .await?
            .repo_tags
            .contains(&reference),
        "repo_tags lack {reference}"
    );
    Ok(())
}

async fn token_username_password(mut ctx: Ctx) -> Result<()> {
    // The registry takes only bearer tokens: user and password go to its token endpoint.
    let TokenImage {
        reference,
        repo,
        image,
    } = token_image(&ctx, "token-password")?;
    let id = ctx
        .cri
        .pull(&reference, Some(basic_auth(AUTH_USER, AUTH_PASSWORD)))
        .await
        .context("PullImage with username and password through the token endpoint")?;
    ensure_eq!(id, image.id()?, "PullImage {reference}");
    // bungeo (through oci-client) asks with `GET /token` and Basic auth, as docker does;
    // containerd first tries OAuth `POST /token` with grant_type=password and falls back to
    // GET only when the endpoint refuses POST. Either way no token came any other way.
    let want = match ctx.target {
        Target::Bungeo => Grant::Basic,
        Target::Containerd => Grant::Password,
    };
    let grants = ctx.fx.token_registry.grants_for(&repo);
    ensure!(
        !grants.is_empty() && grants.iter().all(|g| *g == want),
        "tokens for {repo}: {grants:?}, want only {want:?}"
    );
    Ok(())
}

async fn token_refused(mut ctx: Ctx) -> Result<()> {
    let reference = token_image(&ctx, "token-refused")?.reference;
    let realm = ctx.fx.token_registry.token_realm();
    let cases = [
        (
            "a wrong identity token",
            Some(AuthConfig {
                identity_token: "not-the-refresh-token".into(),
                ..AuthConfig::default()
            }),
        ),
        (
            "a made-up registry token",
            Some(AuthConfig {
                registry_token: "made-up".into(),
                ..AuthConfig::default()
            }),
        ),
        ("a wrong password", Some(basic_auth(AUTH_USER, "wrong"))),
        ("no credentials", None),
    ];
    for (what, auth) in cases {
        let err = match ctx.cri.pull(&reference, auth).await {
            Ok(r) => anyhow::bail!("PullImage with {what} succeeded with {r}"),
            Err(e) => e,
        };
        let msg = err.message();
        match ctx.target {
            Target::Bungeo => {
                ensure_eq!(
                    err.code(),
                    Code::PermissionDenied,
                    "PullImage with {what}: code ({msg})"
                );
                ensure!(
                    msg.contains(&reference),
                    "PullImage with {what}: message does not name {reference}: {msg}"
                );
                if what == "a wrong identity token" {
                    // Names where the exchange failed and what the endpoint said.
                    ensure!(
                        msg.contains(&realm) && msg.contains("401"),
                        "message does not say the token endpoint {realm} refused: {msg}"
                    );
                }
            }
            // containerd answers Unknown with its resolver's error.
            Target::Containerd => {
                ensure_eq!(
                    err.code(),
                    Code::Unknown,
                    "PullImage with {what}: code ({msg})"
                );
                ensure!(
                    msg.contains("401 Unauthorized"),
                    "PullImage with {what}: {msg}"
                );
            }
        }
    }
    ensure!(
        ctx.cri.image_status(&reference).await?.is_none(),
        "a refused pull left an image"
    );
    Ok(())
}

async fn pull_without_credentials_says_so(mut ctx: Ctx) -> Result<()> {
    // A registry that wants credentials, asked by a pull that has none (no AuthConfig, none
    // configured): the message must say that, not that credentials were refused. Basic auth
    // (docker-registry with htpasswd) and bearer tokens (the token registry) alike.
    let references = [
        auth_reference(&ctx, USER_NAME_GROUP),
        token_image(&ctx, "no-credentials")?.reference,
    ];
    for reference in references {
        let err = match ctx.cri.pull(&reference, None).await {
            Ok(r) => anyhow::bail!("PullImage {reference} without credentials succeeded with {r}"),
            Err(e) => e,
        };
        let msg = err.message();
        ensure_eq!(
            err.code(),
            Code::PermissionDenied,
            "PullImage {reference}: code ({msg})"
        );
        ensure!(
            msg.contains(&reference),
            "message does not name {reference}: {msg}"
        );
        ensure!(
            msg.to_lowercase().contains("no credentials"),
            "message does not say the pull had no credentials for a registry that wants them: {msg}"
        );
    }
    Ok(())
}

async fn config_credentials(ctx: Ctx) -> Result<()> {
    // Daemons of their own whose config file carries the auth registry's credentials.
    let fx = ctx.fx.clone();
    let reference = auth_reference(&ctx, ENTRYPOINT);
    let id = fx.image(ENTRYPOINT)?.id()?;
    let mut hosts = fx.hosts.clone();
    let host = fx.auth_registry.host();
    hosts
        .credentials
        .insert(host.clone(), (AUTH_USER.into(), AUTH_PASSWORD.into()));
    {
        // The auth registry mirrors docker.io too: a mirror gets the credentials configured
        // for its own host.
        let mut hosts = hosts.clone();
        hosts.mirrors.insert("docker.io".into(), vec![host.clone()]);
        let daemon = Bungeo::start(&hosts).await?;
        let mut cri = Cri::connect(daemon.socket()).await?;
        ensure_eq!(
            pull(&mut cri, &reference).await?,
            id,
            "PullImage {reference} with credentials from the config file"
        );
        let short = format!("{AUTH_REPO_PREFIX}/{}:{}", USER_UID.repo, USER_UID.tag);
        ensure_eq!(
            pull(&mut cri, &short).await?,
            fx.image(USER_UID)?.id()?,
            "PullImage {short} through the auth registry as a docker.io mirror"
        );
    }

    let wrong = "not-the-password-5c1e";
    hosts
        .credentials
        .insert(host, (AUTH_USER.into(), wrong.into()));
    let daemon = Bungeo::start(&hosts).await?;
    let mut cri = Cri::connect(daemon.socket()).await?;
    let err = match cri.pull(&reference, None).await {
        Ok(r) => anyhow::bail!("PullImage with a wrong configured password succeeded with {r}"),
        Err(e) => e,
    };
    ensure!(
        matches!(err.code(), Code::PermissionDenied | Code::Unknown),
        "code {:?} ({})",
        err.code(),
        err.message()
    );
    ensure!(
        err.message().to_lowercase().contains("unauthorized"),
        "message does not say the registry refused the credentials: {}",
        err.message()
    );
    ensure!(
        cri.image_status(&reference).await?.is_none(),
        "a refused pull left an image"
    );
    let verbose = cri.status(true).await?;
    let config = verbose.info.get("config").context("no config in Status")?;
    ensure!(
        !config.contains(wrong),
        "verbose Status shows the configured password: {config}"
    );
    // A pull's own credentials win over the configured ones (containerd does the same).
    ensure_eq!(
        cri.pull(&reference, Some(basic_auth(AUTH_USER, AUTH_PASSWORD)))
            .await?,
        id,
        "PullImage with request credentials over wrong configured ones"
    );
    Ok(())
}

async fn mirror_fallback(ctx: Ctx) -> Result<()> {
    // docker.io through three mirrors: nothing listens on the first, the second (the fake
    // registry) has no library/busybox, the third is the test registry.
    let fx = ctx.fx.clone();
    let closed = free_local_addr()?.to_string();
    let mut hosts = fx.hosts.clone();
    hosts.mirrors.insert(
        "docker.io".into(),
        vec![closed.clone(), fx.fake.host(), fx.registry.host()],
    );
    let daemon = Bungeo::start(&hosts).await?;
    let mut cri = Cri::connect(daemon.socket()).await?;
    ensure_eq!(
        pull(&mut cri, "busybox:latest").await?,
        fx.image(PLAIN)?.id()?,
        "PullImage busybox:latest"
    );
    let st = status(&mut cri, "docker.io/library/busybox:latest").await?;
    ensure_eq!(
        st.repo_digests,
        vec![repo_digest("docker.io/library/busybox", fx.image(PLAIN)?)],
        "repo digests name docker.io, not the mirror"
    );
    ensure!(
        fx.fake
            .requests("GET", "/v2/library/busybox/manifests/latest")
            > 0,
        "the second mirror was never asked"
    );
    let log = std::fs::read_to_string(daemon.log()).context("read the daemon log")?;
    ensure!(
        log.contains(&closed),
        "the log does not mention the closed mirror {closed}"
    );
    Ok(())
}
