//! `hack/bench pull`: cold pull + unpack of the 256 MiB image and the 20-layer image, bungeo and
//! containerd in the same run, interleaved, five runs each; prints medians and the ratio.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bungeo_tests::bungeo::Bungeo;
use bungeo_tests::containerd::Containerd;
use bungeo_tests::cri::Cri;
use bungeo_tests::images::{self, BIG, BIG_LAYERS, Catalog, ImageName, Pusher};
use bungeo_tests::registry::Registry;
use bungeo_tests::registryhosts::RegistryHosts;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Cold pull benchmark: bungeo vs containerd")]
struct Args {
    /// Runs per image and daemon.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn cold_pull(cri: &mut Cri, image: &str) -> Result<Duration> {
    // Cold: the image and its content must be gone before each run.
    if cri.image_status(image).await?.is_some() {
        cri.remove_image(image).await?;
    }
    anyhow::ensure!(
        cri.image_status(image).await?.is_none(),
        "{image} still present after removal"
    );
    // Settle the previous run's writeback so it is not billed to this one.
    nix::unistd::sync();
    let t = Instant::now();
    cri.pull(image, None)
        .await
        .with_context(|| format!("pull {image}"))?;
    Ok(t.elapsed())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let registry = Registry::start()?;
    let catalog = Catalog::build(&images::read_busybox()?, true)?;
    let names: [ImageName; 2] = [BIG, BIG_LAYERS];
    images::push_all(&Pusher::new(&registry.host(), None), &catalog, &names).await?;
    let hosts = RegistryHosts {
        plain_http: vec![registry.host()],
        ..Default::default()
    };
    let bungeo = Bungeo::start(&hosts).await?;
    let containerd = Containerd::start(&hosts).await?;
    let mut b = Cri::connect(bungeo.socket()).await?;
    let mut c = Cri::connect(containerd.socket()).await?;

    println!(
        "cold pull + unpack, {} runs each, interleaved, medians",
        args.runs
    );
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "image", "bungeo", "containerd", "ratio"
    );
    for name in names {
        let image = name.at(&registry.host());
        let (mut tb, mut tc) = (Vec::new(), Vec::new());
        for _ in 0..args.runs {
            tb.push(cold_pull(&mut b, &image).await?);
            tc.push(cold_pull(&mut c, &image).await?);
        }
        let runs = |v: &[Duration]| {
            v.iter()
                .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let (rb, rc) = (runs(&tb), runs(&tc));
        let (mb, mc) = (median(&mut tb), median(&mut tc));
        println!(
            "{:<34} {:>10.0}ms {:>10.0}ms {:>7.2}x",
            format!("{}:{}", name.repo, name.tag),
            mb.as_secs_f64() * 1000.0,
            mc.as_secs_f64() * 1000.0,
            mb.as_secs_f64() / mc.as_secs_f64()
        );
        println!("    runs (ms): bungeo [{rb}]  containerd [{rc}]");
    }
    println!("ratio = bungeo time / containerd time (goal: <= 0.67)");
    Ok(())
}
