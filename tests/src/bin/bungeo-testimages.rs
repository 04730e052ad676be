//! Builds the test images from busybox-static and pushes them to a registry, or starts a
//! local docker-registry with them and keeps it running.

use anyhow::{Context, Result};
use bungeo_tests::images::{self, BIG_IMAGES, Catalog, Pusher, REGISTRY_IMAGES};
use bungeo_tests::registry::Registry;
use clap::Parser;

/// Build the bungeo test images and push them to a registry.
#[derive(Debug, Parser)]
#[command(name = "bungeo-testimages")]
struct Args {
    /// Registry to push to (`127.0.0.1:PORT`, plain HTTP).
    #[arg(long, required_unless_present_any = ["serve", "list"])]
    registry: Option<String>,
    /// Start a docker-registry on 127.0.0.1, push to it, print its address, and serve
    /// until SIGINT or SIGTERM.
    #[arg(long, conflicts_with = "registry")]
    serve: bool,
    /// Also build and push the benchmark images (256 MiB layer, 20 layers).
    #[arg(long)]
    big: bool,
    /// Basic auth user name for the registry.
    #[arg(long, requires = "password")]
    username: Option<String>,
    /// Basic auth password for the registry.
    #[arg(long, requires = "username")]
    password: Option<String>,
    /// Only print each image's reference, digest and image ID.
    #[arg(long)]
    list: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let busybox = images::read_busybox()?;
    let catalog = Catalog::build(&busybox, args.big)?;
    let mut names: Vec<_> = REGISTRY_IMAGES.to_vec();
    if args.big {
        names.extend_from_slice(BIG_IMAGES);
    }
    if args.list {
        for name in &names {
            let image = catalog.get(*name)?;
            println!("{name}\t{}\t{}", image.digest(), image.id()?);
        }
        return Ok(());
    }
    let served = if args.serve {
        Some(Registry::start().context("start docker-registry")?)
    } else {
        None
    };
    let host = match (&served, &args.registry) {
        (Some(r), _) => r.host(),
        (None, Some(h)) => h.clone(),
        (None, None) => anyhow::bail!("--registry or --serve is required"),
    };
    let credentials = args.username.as_deref().zip(args.password.as_deref());
    let pusher = Pusher::new(&host, credentials);
    for name in &names {
        let image = catalog.get(*name)?;
        pusher
            .push(name.repo, Some(name.tag), image)
            .await
            .with_context(|| format!("push {name} to {host}"))?;
        eprintln!("pushed {}\t{}", name.at(&host), image.digest());
    }
    if let Some(registry) = served {
        println!("{}", registry.host());
        eprintln!(
            "serving on {} (storage {}); SIGINT or SIGTERM stops it",
            registry.host(),
            registry.dir().display()
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("SIGTERM handler")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        drop(registry);
    }
    Ok(())
}
