//! `hack/bench pull`: cold pull + unpack of the 256 MiB image and the 20-layer image, bungeo and
//! containerd in the same run, interleaved, five runs each; prints medians and the ratio.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bungeo_tests::benchkit::{Table, median, ms};
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
    let table = Table::new(34);
    println!("{}", table.header("image"));
    for name in names {
        let image = name.at(&registry.host());
        let (mut tb, mut tc) = (Vec::new(), Vec::new());
        for _ in 0..args.runs {
            tb.push(ms(cold_pull(&mut b, &image).await?));
            tc.push(ms(cold_pull(&mut c, &image).await?));
        }
        let runs = |v: &[f64]| {
            v.iter()
                .map(|t| format!("{t:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let label = format!("{}:{}", name.repo, name.tag);
        println!("{}", table.ms_row(&label, median(&tb), median(&tc), 0));
        println!(
            "    runs (ms): bungeo [{}]  containerd [{}]",
            runs(&tb),
            runs(&tc)
        );
    }
    println!("ratio = bungeo time / containerd time (goal: <= 0.67)");
    Ok(())
}
