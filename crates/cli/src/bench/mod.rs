//! `chorus bench`: benchmark scenarios that print a report. Each runs against its own nats-server
//! child (or `--nats-url`) under a NATS prefix of its own, so a bench never touches an
//! installation's streams, and persists to a scratch SQLite file unless given a database.
//!
//! - [`pipeline`] (the default): jobs through every role, beside raw JetStream rates.
//! - [`ratelimit`]: llm processes sharing one rate-limited route on the mock provider.
//! - [`fairness`]: three tenants on one limited route: two batch backlogs and interactive calls.
//! - [`chat`]: `/v1/chat/completions` through Chorus beside the mock provider alone, at several
//!   concurrencies; or against a Chorus already running (`--url`).
//! - [`inflight`]: one llm process holding thousands of calls to a slow provider at once: its
//!   memory per call in flight.
//!
//! The scenarios on a limited route share the pieces here: llm worker processes
//! ([`spawn_worker`], [`stop`], [`exited`]), JetStream submissions ([`submit`]) and the most
//! calls a limit admits in a window ([`ceiling`]).

mod chat;
mod fairness;
mod inflight;
mod pipeline;
mod ratelimit;

use std::future::IntoFuture;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use chorus_core::Tenant;
use chorus_core::config::Config;
use clap::Subcommand;
use futures::StreamExt;
use tempfile::TempDir;
use tokio::process::{Child, Command};

use chorus_bus::natsd::NatsProcess;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    scenario: Option<Scenario>,
    #[command(flatten)]
    pipeline: pipeline::PipelineArgs,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Jobs through every role, beside raw JetStream rates (the default scenario).
    Pipeline(pipeline::PipelineArgs),
    /// llm processes sharing one route limited in requests per minute, on the mock provider:
    /// the busiest 60-second window against the limit, and how much of the limit was served.
    Ratelimit(ratelimit::RatelimitArgs),
    /// Three tenants on one limited route: a's and b's batch backlogs share it by weight while
    /// c's chat completions go first; c's latency, the token shares, the ceiling, utilisation.
    Fairness(fairness::FairnessArgs),
    /// Chat completions through Chorus beside the mock provider alone, at 1, 50 and 200
    /// concurrent callers: req/s, p50/p99 and Chorus's ratio to the mock; `--url` for a Chorus
    /// already running.
    Chat(chat::ChatArgs),
    /// One llm process holding `--calls` calls to a mock provider answering in `--latency`, all
    /// at once: its resident memory before and at the peak, and the memory per call in flight.
    Inflight(inflight::InflightArgs),
}

/// Where the server and database come from.
#[derive(Debug, clap::Args)]
struct Target {
    /// Database to persist into (default: a temporary SQLite file).
    #[arg(long)]
    database_url: Option<String>,
    /// A running NATS server (default: a nats-server child with a temporary store).
    #[arg(long)]
    nats_url: Option<String>,
}

pub async fn run(config_file: Option<&Path>, args: BenchArgs) -> anyhow::Result<()> {
    let config = chorus_app::load_config(config_file)?;
    match args.scenario {
        None => pipeline::run(config, args.pipeline).await,
        Some(Scenario::Pipeline(args)) => pipeline::run(config, args).await,
        Some(Scenario::Ratelimit(args)) => ratelimit::run(config, args).await,
        Some(Scenario::Fairness(args)) => fairness::run(config, args).await,
        Some(Scenario::Chat(args)) => chat::run(config, args).await,
        Some(Scenario::Inflight(args)) => inflight::run(config, args).await,
    }
}

/// What a scenario runs against: the configuration pointed at the server and database, and the
/// scratch directory and nats-server child that go away with it.
struct Bench {
    config: Config,
    database: &'static str,
    nats: Option<NatsProcess>,
    scratch: TempDir,
}

impl Bench {
    async fn prepare(mut config: Config, target: &Target) -> anyhow::Result<Self> {
        let scratch = tempfile::tempdir()?;
        let nats = match &target.nats_url {
            Some(url) => {
                config.nats.url = url.clone();
                None
            }
            None => {
                let child =
                    NatsProcess::start(&scratch.path().join("nats"), "", Vec::new()).await?;
                config.nats.url = child.url();
                Some(child)
            }
        };
        config.nats.prefix = format!("bench{:08x}", rand_u32());
        config.database.url = match &target.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                scratch.path().join("bench.db").display()
            ),
        };
        config.database.auto_migrate = true;
        // Several bench processes may run here at once: each takes a free probe port.
        config.probes.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let database = if config.database.url.starts_with("sqlite:") {
            "sqlite"
        } else {
            "postgres"
        };
        Ok(Self {
            config,
            database,
            nats,
            scratch,
        })
    }

    /// Prepares a bench, runs `measure` on it, and tears the bench down whatever `measure`
    /// returned: what every scenario does around its measuring.
    async fn with<R>(
        config: Config,
        target: &Target,
        measure: impl AsyncFnOnce(&Bench) -> anyhow::Result<R>,
    ) -> anyhow::Result<R> {
        let bench = Self::prepare(config, target).await?;
        let result = measure(&bench).await;
        bench.finish().await;
        result
    }

    fn nats_pid(&self) -> Option<u32> {
        self.nats.as_ref().and_then(NatsProcess::pid)
    }

    /// Deletes the run's streams from a server that outlives it, or stops the child.
    async fn finish(self) {
        match self.nats {
            Some(mut child) => child.stop().await,
            None => {
                if let Ok(bus) = chorus_app::connect(&self.config, "chorus bench").await {
                    let mut names = bus.js.stream_names();
                    while let Some(Ok(name)) = futures::StreamExt::next(&mut names).await {
                        if bus.subjects.owns_stream(&name) {
                            let _ = bus.js.delete_stream(&name).await;
                        }
                    }
                }
            }
        }
    }
}

/// `chorus serve --roles llm` with the bench's configuration.
fn spawn_worker(config: &Path) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("cannot find the chorus binary")?;
    Command::new(exe)
        .arg("--config")
        .arg(config)
        .args(["serve", "--roles", "llm"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start an llm worker process")
}

/// An error if a worker process has exited: they run until the bench stops them.
fn exited(workers: &mut [Child]) -> anyhow::Result<()> {
    for worker in workers {
        if let Some(status) = worker.try_wait()? {
            anyhow::bail!("an llm worker process exited ({status})");
        }
    }
    Ok(())
}

/// SIGTERM, then SIGKILL if it has not drained within 15 s.
async fn stop(worker: &mut Child) {
    if let Some(pid) = worker.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(15), worker.wait())
        .await
        .is_err()
    {
        let _ = worker.kill().await;
    }
}

/// Publishes each `(id, spec)` as a JetStream submission of `tenant` in `batch` (the batch band),
/// `id` as its `Nats-Msg-Id` and `Chorus-Custom-Id`, with up to 256 acks outstanding.
async fn submit(
    bus: &chorus_bus::Bus,
    tenant: &Tenant,
    batch: &str,
    specs: impl IntoIterator<Item = (String, serde_json::Value)>,
) -> anyhow::Result<()> {
    let subject = bus.subjects.submit(tenant);
    let mut pending = futures::stream::FuturesUnordered::new();
    for (id, spec) in specs {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        headers.insert("Chorus-Custom-Id", id.as_str());
        headers.insert("Chorus-Batch", batch);
        headers.insert("Content-Type", "application/json");
        pending.push(
            bus.js
                .publish_with_headers(subject.clone(), headers, spec.to_string().into())
                .await?
                .into_future(),
        );
        if pending.len() >= 256 {
            pending.next().await.transpose()?;
        }
    }
    while pending.next().await.transpose()?.is_some() {}
    Ok(())
}

/// ⌊W·rpm/60⌋ + 1: the most calls a route limited to `rpm` admits in any `window`, since its
/// limiter spaces requests at least 60 s / rpm apart.
fn ceiling(window: Duration, rpm: u32) -> usize {
    (window.as_secs_f64() * f64::from(rpm) / 60.0) as usize + 1
}

/// The `q` quantile of `sorted` latencies (nearest rank); zero for none.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A duration in milliseconds, for reports.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Prints a scenario's report: as JSON with `--json`, else as text.
fn show<R: serde::Serialize>(report: &R, json: bool, text: fn(&R)) -> anyhow::Result<()> {
    match json {
        true => println!("{}", serde_json::to_string_pretty(report)?),
        false => text(report),
    }
    Ok(())
}

/// Peak resident memory of a process (`self` or a pid), from /proc.
fn peak_rss_mib(pid: &str) -> Option<f64> {
    memory_kib(pid, "VmHWM").map(|kib| kib as f64 / 1024.0)
}

/// A memory figure of a process (`self` or a pid) in KiB, from /proc/<pid>/status: `VmRSS`
/// (resident now), `VmHWM` (its peak so far).
fn memory_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| {
        l.strip_prefix(field)
            .is_some_and(|rest| rest.starts_with(':'))
    })?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ std::process::id())
        .unwrap_or_default()
}
