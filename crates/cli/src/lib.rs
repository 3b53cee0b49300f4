//! The `chorus` command line: parses arguments and runs the command. A process's roles are wired by
//! `chorus-app`; the roles themselves live in the library crates.
//!
//! Layout:
//! - [`dev`]: `chorus dev`, everything in one process on embedded defaults.
//! - [`bench`]: `chorus bench`, benchmark scenarios (pipeline throughput, shared rate limits).
//! - [`keys`]: `chorus keys`, API keys in the database.
//! - [`budgets`]: `chorus budgets`, spend budgets of tenants and keys in the NATS budgets bucket.
//! - [`check`]: `chorus config check`.
//! - [`healthcheck`]: `chorus healthcheck`, for container health checks.
//! - [`job`], [`batch`]: `chorus job` and `chorus batch`, clients of a running edge's REST API
//!   through [`client`].
//!
//! Errors: this file's dispatch and the command modules it calls (`dev`, `bench`, `keys`,
//! `budgets`, `check`, `healthcheck`, `job`, `batch`, `dlq`, `mock`) are the binary's top level,
//! where errors are `anyhow` and end in one printed line. The library module commands and tests share
//! (`client`) returns typed errors. `tests/code_rules.rs` holds this.

pub mod batch;
pub mod bench;
pub mod budgets;
pub mod check;
pub mod client;
pub mod dev;
pub mod dlq;
pub mod healthcheck;
pub mod job;
pub mod keys;
pub mod mock;

use std::path::PathBuf;
use std::process::ExitCode;

use chorus_app as app;
use chorus_bus::definitions::SingleReplica;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "chorus",
    version,
    about = "Run LLM work at scale over NATS JetStream"
)]
pub struct Cli {
    /// A TOML configuration file; `CHORUS_<SECTION>_<KEY>` variables override it.
    #[arg(long, short, global = true, env = "CHORUS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything in one process on embedded defaults: a nats-server child, SQLite in ./.chorus/,
    /// the simulated provider.
    Dev(dev::DevArgs),
    /// Run some or all roles against the configured NATS and database.
    Serve {
        /// Comma-separated roles: edge, orchestrator, llm, evaluator, persister.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "edge,orchestrator,llm,evaluator,persister"
        )]
        roles: Vec<app::RoleName>,
        /// Serve the API without API keys: every request acts for `edge.tenant` with every
        /// scope (the same as `edge.auth = false`). Never on a network others can reach.
        #[arg(long)]
        no_auth: bool,
    },
    /// Apply pending database migrations.
    Migrate,
    /// NATS administration.
    Nats {
        #[command(subcommand)]
        command: NatsCommand,
    },
    /// Benchmarks: pipeline throughput beside raw JetStream (default), shared rate limits,
    /// fairness between tenants, or chat completions beside the provider alone.
    Bench(bench::BenchArgs),
    /// Inspect, replay and purge dead letters.
    Dlq(dlq::DlqArgs),
    /// A mock LLM provider (OpenAI, Anthropic and Ollama wire formats) for demos and load tests.
    MockLlm(mock::MockArgs),
    /// Jobs on a running Chorus, over its REST API: show one, follow one.
    Job(job::JobArgs),
    /// Batches on a running Chorus, over its REST API: submit, follow, download, report.
    Batch(batch::BatchArgs),
    /// API keys per tenant: create (shown once), list, revoke.
    Keys(keys::KeysArgs),
    /// Spend budgets per tenant or API key: list, show, set and remove them live.
    Budgets(budgets::BudgetsArgs),
    /// Ask this host's Chorus process whether it is alive (or ready): exit 0 or 1. For container
    /// health checks.
    Healthcheck(healthcheck::HealthcheckArgs),
    /// The configuration: check it and print what is in effect, passwords redacted.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check the configuration (file and CHORUS_… variables) without connecting, and print it.
    Check,
}

#[derive(Debug, Subcommand)]
enum NatsCommand {
    /// Create or update the streams and consumers (idempotent). Refuses streams of one replica
    /// (`nats.replicas = 1`) on a server that is part of a cluster.
    Apply {
        /// Apply streams of one replica on a clustered server all the same: each lives on one
        /// node and its messages are lost with that node.
        #[arg(long)]
        allow_single_replica: bool,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before the runtime: the trace exporter's client runs on a thread of its own.
    if let Err(e) = chorus_telemetry::trace::init_exporter() {
        eprintln!("warning: traces are off: {e}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    drop(runtime);
    chorus_telemetry::trace::shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config_file = cli.config.as_deref();
    match cli.command {
        Command::Dev(args) => dev::run(config_file, args).await,
        Command::Serve { roles, no_auth } => {
            let mut config = app::load_config(config_file)?;
            if no_auth {
                config.edge.auth = false;
            }
            Ok(app::serve(config, &roles, None).await?)
        }
        Command::Migrate => {
            let config = app::load_config(config_file)?;
            let store = app::open_store(&config.database, true).await?;
            drop(store);
            println!("database is up to date");
            Ok(())
        }
        Command::Nats {
            command: NatsCommand::Apply {
                allow_single_replica,
            },
        } => {
            let config = app::load_config(config_file)?;
            let bus = app::connect(&config, "chorus nats apply").await?;
            let single = match allow_single_replica {
                true => SingleReplica::Allow,
                false => SingleReplica::Refuse,
            };
            for applied in app::apply_definitions_with(&config, &bus, single).await? {
                println!("{applied}");
            }
            Ok(())
        }
        Command::Bench(args) => bench::run(config_file, args).await,
        Command::Dlq(args) => dlq::run(config_file, args).await,
        Command::MockLlm(args) => mock::run(args).await,
        Command::Job(args) => job::run(args).await,
        Command::Batch(args) => batch::run(args).await,
        Command::Keys(args) => keys::run(config_file, args).await,
        Command::Budgets(args) => budgets::run(config_file, args).await,
        Command::Config {
            command: ConfigCommand::Check,
        } => check::run(config_file).await,
        Command::Healthcheck(args) => healthcheck::run(config_file, args).await,
    }
}

/// An error and its causes on one line, each said once: a typed error names its source in its
/// own message, where `anyhow`'s context does not.
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let said = cause.to_string();
        if text.contains(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open the database: {source}")]
    struct Typed {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn errors_print_each_cause_once() {
        let io = || std::io::Error::other("disk on fire");
        let typed = anyhow::Error::new(Typed { source: io() });
        assert_eq!(describe(&typed), "cannot open the database: disk on fire");
        let context = anyhow::Error::new(io()).context("cannot write the report");
        assert_eq!(describe(&context), "cannot write the report: disk on fire");
        let both = anyhow::Error::new(Typed { source: io() }).context("chorus migrate");
        assert_eq!(
            describe(&both),
            "chorus migrate: cannot open the database: disk on fire"
        );
    }
}
