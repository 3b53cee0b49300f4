//! `chorus bench`: benchmark scenarios that print a report. Each runs against its own nats-server
//! child (or `--nats-url`) under a NATS prefix of its own, so a bench never touches an
//! installation's streams, and persists to a scratch SQLite file unless given a database.
//!
//! - [`pipeline`] (the default): jobs through every role, beside raw JetStream rates.
//! - [`ratelimit`]: llm processes sharing one rate-limited route on the mock provider.

mod pipeline;
mod ratelimit;

use std::path::Path;

use chorus_core::config::Config;
use clap::Subcommand;
use tempfile::TempDir;

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

/// Peak resident memory of a process (`self` or a pid), from /proc.
fn peak_rss_mib(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ std::process::id())
        .unwrap_or_default()
}
