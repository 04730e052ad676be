//! Differential suites: one shared setup (registries with the test images pushed, the daemons
//! under test), one trial per (target, check) run with `libtest-mimic`, and teardown.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use libtest_mimic::{Arguments, Failed, Trial};
use tokio::runtime::Runtime;

use crate::bungeo::Bungeo;
use crate::containerd::Containerd;
use crate::cri::{Cri, Target};
use crate::fakeregistry::{FakeRegistry, TokenAuth};
use crate::images::{
    self, Catalog, FAKE_REGISTRY_IMAGES, Image, ImageName, PAUSE, PLAIN, Pusher, REGISTRY_IMAGES,
};
use crate::registry::Registry;
use crate::registryhosts::RegistryHosts;

/// User name the auth registry accepts.
pub const AUTH_USER: &str = "bungeo-test";
/// Password the auth registry accepts.
pub const AUTH_PASSWORD: &str = "correct horse battery staple";
/// The refresh token (CRI identity token) the token registry's endpoint accepts; its user
/// and password are [`AUTH_USER`] and [`AUTH_PASSWORD`].
pub const REFRESH_TOKEN: &str = "bungeo-test-refresh-token";
/// Repository prefix of the test images in the auth registry (`private/busybox:layers`).
pub const AUTH_REPO_PREFIX: &str = "private";
/// How long one check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(180);

/// A daemon under test.
#[derive(Debug)]
pub enum Daemon {
    /// bungeo.
    Bungeo(Bungeo),
    /// containerd.
    Containerd(Containerd),
}

impl Daemon {
    /// Starts the daemon for `target`.
    pub async fn start(target: Target, hosts: &RegistryHosts) -> Result<Self> {
        Ok(match target {
            Target::Bungeo => Daemon::Bungeo(Bungeo::start(hosts).await?),
            Target::Containerd => Daemon::Containerd(Containerd::start(hosts).await?),
        })
    }

    /// Its CRI socket.
    pub fn socket(&self) -> &std::path::Path {
        match self {
            Daemon::Bungeo(b) => b.socket(),
            Daemon::Containerd(c) => c.socket(),
        }
    }

    /// Its root directory.
    pub fn root(&self) -> &std::path::Path {
        match self {
            Daemon::Bungeo(b) => b.root(),
            Daemon::Containerd(c) => c.root(),
        }
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        match self {
            Daemon::Bungeo(b) => b.log_tail(lines),
            Daemon::Containerd(c) => c.log_tail(lines),
        }
    }
}

/// Everything a suite's checks share. Fields drop in order: daemons first, the runtime last.
pub struct Fixture {
    daemons: Vec<(Target, OnceLock<std::result::Result<Daemon, String>>)>,
    /// Serves what docker-registry will not (schema 1, bad digests, stalled blobs).
    pub fake: FakeRegistry,
    /// A fake registry in bearer-token mode ([`FakeRegistry::start_with_tokens`]) with
    /// [`AUTH_USER`], [`AUTH_PASSWORD`] and [`REFRESH_TOKEN`]; checks publish what they pull.
    pub token_registry: FakeRegistry,
    /// The anonymous docker-registry with every image of [`REGISTRY_IMAGES`].
    pub registry: Registry,
    /// A docker-registry behind Basic auth, with the images under [`AUTH_REPO_PREFIX`].
    pub auth_registry: Registry,
    /// The built images.
    pub catalog: Catalog,
    /// The registry configuration every daemon gets.
    pub hosts: RegistryHosts,
    /// The runtime checks run on.
    pub rt: Runtime,
}

impl Fixture {
    /// Starts the registries and pushes the test images; daemons start when first used.
    pub fn setup(targets: &[Target]) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .context("tokio runtime")?;
        let busybox = images::read_busybox()?;
        let catalog = Catalog::build(&busybox, false)?;
        let registry = Registry::start()?;
        let auth_registry = Registry::start_with_auth(AUTH_USER, AUTH_PASSWORD)?;
        let (fake, token_registry) = rt.block_on(async {
            let pusher = Pusher::new(&registry.host(), None);
            images::push_all(&pusher, &catalog, REGISTRY_IMAGES).await?;
            // Short names resolve to docker.io, which every daemon mirrors to our registry.
            pusher
                .push("library/busybox", Some("latest"), catalog.get(PLAIN)?)
                .await?;
            // containerd's sandbox image, as images::PAUSE_REFERENCE names it.
            pusher
                .push(PAUSE.repo, Some(PAUSE.tag), catalog.get(PAUSE)?)
                .await?;
            let auth_pusher = Pusher::new(&auth_registry.host(), Some((AUTH_USER, AUTH_PASSWORD)));
            for name in REGISTRY_IMAGES {
                let repo = format!("{AUTH_REPO_PREFIX}/{}", name.repo);
                auth_pusher
                    .push(&repo, Some(name.tag), catalog.get(*name)?)
                    .await
                    .with_context(|| format!("push {name} to the auth registry"))?;
            }
            let fake = FakeRegistry::start().await?;
            for name in FAKE_REGISTRY_IMAGES {
                fake.publish(name.repo, name.tag, catalog.get(*name)?);
            }
            let token_registry = FakeRegistry::start_with_tokens(TokenAuth {
                username: AUTH_USER.to_string(),
                password: AUTH_PASSWORD.to_string(),
                refresh_token: REFRESH_TOKEN.to_string(),
            })
            .await?;
            anyhow::Ok((fake, token_registry))
        })?;
        let hosts = RegistryHosts {
            plain_http: vec![
                registry.host(),
                auth_registry.host(),
                fake.host(),
                token_registry.host(),
            ],
            mirrors: [("docker.io".to_string(), vec![registry.host()])].into(),
            credentials: Default::default(),
        };
        Ok(Self {
            daemons: targets.iter().map(|t| (*t, OnceLock::new())).collect(),
            fake,
            token_registry,
            registry,
            auth_registry,
            catalog,
            hosts,
            rt,
        })
    }

    /// The daemon for `target`, started on first use; a start failure is kept and repeated.
    pub fn daemon(&self, target: Target) -> Result<&Daemon> {
        let (_, cell) = self
            .daemons
            .iter()
            .find(|(t, _)| *t == target)
            .with_context(|| format!("{target} is not a target of this run"))?;
        cell.get_or_init(|| {
            self.rt
                .block_on(Daemon::start(target, &self.hosts))
                .map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{target} did not start: {e}"))
    }

    /// `host/repo:tag` of a test image in the anonymous registry.
    pub fn reference(&self, name: ImageName) -> String {
        name.at(&self.registry.host())
    }

    /// A built test image.
    pub fn image(&self, name: ImageName) -> Result<&Image> {
        self.catalog.get(name)
    }

    /// Pushes `image` to `repo` in the anonymous registry under each of `tags` (by digest only
    /// if `tags` is empty); returns `host/repo`.
    pub async fn push(&self, repo: &str, tags: &[&str], image: &Image) -> Result<String> {
        let pusher = Pusher::new(&self.registry.host(), None);
        if tags.is_empty() {
            pusher.push(repo, None, image).await?;
        }
        for tag in tags {
            pusher.push(repo, Some(tag), image).await?;
        }
        Ok(format!("{}/{repo}", self.registry.host()))
    }
}

/// What a check gets: its target, a CRI client to that target's daemon, and the fixture.
#[derive(Clone)]
pub struct Ctx {
    /// The daemon this trial runs against.
    pub target: Target,
    /// A client connected to it.
    pub cri: Cri,
    /// The shared setup.
    pub fx: Arc<Fixture>,
}

impl Ctx {
    /// The daemon under test (started before the check runs, so this never blocks).
    pub fn daemon(&self) -> Result<&Daemon> {
        self.fx.daemon(self.target)
    }

    /// A name unique to this target and `what`, for repositories and labels.
    pub fn unique(&self, what: &str) -> String {
        format!("{what}-{}", self.target.name())
    }
}

/// The future a check returns.
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// One differential check.
#[derive(Clone, Copy)]
pub struct Check {
    /// Its name (the part after `target::`).
    pub name: &'static str,
    /// Runs it.
    pub run: fn(Ctx) -> CheckFuture,
    /// Only for this target (a property the other does not have), or for every target.
    pub only: Option<Target>,
}

/// `ensure_eq!(got, want, "what {}", x)`: fails with what was compared, what came and what
/// was wanted.
#[macro_export]
macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($what:tt)+) => {{
        let (l, r) = (&$left, &$right);
        ::anyhow::ensure!(l == r, "{}: got {:?}, want {:?}", format!($($what)+), l, r);
    }};
}

/// `check!(fn_name)` or `check!(fn_name, only = Target::Bungeo)`.
#[macro_export]
macro_rules! check {
    ($f:ident) => {
        $crate::suite::Check {
            name: stringify!($f),
            run: |ctx| Box::pin($f(ctx)),
            only: None,
        }
    };
    ($f:ident, only = $t:expr) => {
        $crate::suite::Check {
            name: stringify!($f),
            run: |ctx| Box::pin($f(ctx)),
            only: Some($t),
        }
    };
}

fn run_trial(
    fx: &OnceLock<std::result::Result<Arc<Fixture>, String>>,
    targets: &[Target],
    target: Target,
    check: Check,
) -> Result<(), Failed> {
    let fx = fx
        .get_or_init(|| {
            Fixture::setup(targets)
                .map(Arc::new)
                .map_err(|e| format!("suite setup failed: {e:#}"))
        })
        .as_ref()
        .map_err(|e| Failed::from(e.clone()))?
        .clone();
    let daemon = fx
        .daemon(target)
        .map_err(|e| Failed::from(format!("{e:#}")))?;
    let socket = daemon.socket().to_path_buf();
    let result = fx.rt.block_on(async {
        let cri = Cri::connect(&socket).await?;
        let ctx = Ctx {
            target,
            cri,
            fx: fx.clone(),
        };
        match tokio::time::timeout(CHECK_TIMEOUT, (check.run)(ctx)).await {
            Ok(r) => r,
            Err(_) => anyhow::bail!("timed out after {CHECK_TIMEOUT:?}"),
        }
    });
    result.map_err(|e| {
        Failed::from(format!(
            "{e:#}\n--- last lines of the {target} log ---\n{}",
            daemon.log_tail(25)
        ))
    })
}

/// Runs `checks` against every target of `BUNGEO_E2E_TARGETS` and exits with the result.
pub fn run_suite(checks: Vec<Check>) -> ! {
    let args = Arguments::from_args();
    let targets = match Target::from_env() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e:#}");
            std::process::exit(2);
        }
    };
    let fixture: Arc<OnceLock<std::result::Result<Arc<Fixture>, String>>> =
        Arc::new(OnceLock::new());
    let mut trials = Vec::new();
    for target in &targets {
        for check in &checks {
            if check.only.is_some_and(|only| only != *target) {
                continue;
            }
            let (fx, all, target, check) = (fixture.clone(), targets.clone(), *target, *check);
            trials.push(Trial::test(
                format!("{}::{}", target.name(), check.name),
                move || run_trial(&fx, &all, target, check),
            ));
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    // process::exit skips destructors: stop the daemons and registries first.
    match Arc::try_unwrap(fixture) {
        Ok(cell) => drop(cell.into_inner()),
        Err(_) => eprintln!("warning: a trial still holds the fixture; it is not torn down"),
    }
    conclusion.exit()
}
