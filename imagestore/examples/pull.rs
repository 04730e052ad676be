//! Pulls images into a store directory: `cargo run --example pull -- <root> <plain-http-host> <ref>...`.

use bungeo_imagestore::{HostConfig, ImageStore, RegistriesConfig, StoreConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, host, refs @ ..] = args.as_slice() else {
        return Err("usage: pull <root> <plain-http-host> <ref>...".into());
    };
    let mut registries = RegistriesConfig::default();
    registries.hosts.insert(
        host.clone(),
        HostConfig {
            plain_http: true,
            ..Default::default()
        },
    );
    let store = ImageStore::open(StoreConfig {
        root: root.into(),
        max_concurrent_downloads: 3,
        registries,
    })?;
    for r in refs {
        let t = std::time::Instant::now();
        let img = store.pull(r, None).await?;
        println!(
            "{r}: {} tags={:?} digests={:?} size={} in {:?}",
            img.id,
            img.repo_tags,
            img.repo_digests,
            img.size,
            t.elapsed()
        );
    }
    println!("usage: {:?}", store.usage()?);
    Ok(())
}
