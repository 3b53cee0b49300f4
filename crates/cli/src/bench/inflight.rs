//! `chorus bench inflight`: what one llm process's memory costs per call it holds in flight,
//! under a slow provider. `--calls` (10,000) single-call jobs wait on the mock provider
//! (`chorus-mock-llm`, in the bench process) answering after `--latency` (5 s), all served by one
//! `chorus serve --roles llm` process configured to hold every one of them at once
//! (`llm.workers` = `--calls`, which is also its in-flight limit); the orchestrator, evaluator and
//! persister run in the bench process.
//!
//! First `--warmup` calls (50) of another tenant are served and the process is left idle for
//! [`IDLE`]; its resident memory then (`VmRSS`) is the baseline. Then every job is submitted over
//! JetStream at once, and every [`SAMPLE_EVERY`] the bench reads the process's `VmRSS` beside the
//! calls the mock holds at that moment, until the persister has committed every job. The report:
//! the baseline, the peak (`VmHWM`), the most calls the mock held at once, and
//! (peak − baseline) ÷ that most, the memory per call in flight; also the time until every job was
//! committed and nats-server's peak. The jobs that succeeded are counted in the database, and the
//! bench exits non-zero after its report when any did not.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use chorus_core::Tenant;
use chorus_core::config::{Config, RouteConfig};
use chorus_core::job::JobStatus;
use chorus_mock_llm::{Behaviour, MockLlm};
use futures::StreamExt;
use serde::Serialize;

use super::{
    Bench, Target, exited, memory_kib, ms, peak_rss_mib, show, spawn_worker, stop, submit,
};
use chorus_app::{self, RoleName};

#[derive(Debug, clap::Args)]
pub(super) struct InflightArgs {
    /// Calls to hold in flight: single-call jobs submitted at once, and the llm process's
    /// `llm.workers`.
    #[arg(long, default_value_t = 10_000)]
    calls: usize,
    /// How long the mock provider takes to answer each call.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Calls served before the baseline is read.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Serialize)]
struct Report {
    calls: usize,
    latency_ms: f64,
    /// The llm process's `llm.workers`: the calls it may hold at once.
    workers: usize,
    warmup_calls: usize,
    /// Jobs of the run that the database holds as succeeded.
    succeeded: usize,
    /// From the first submission until the persister had committed the last job.
    seconds: f64,
    /// The llm process's resident memory after the warm-up, idle.
    baseline_rss_kib: u64,
    /// Its peak resident memory (`VmHWM`) at the end of the run.
    peak_rss_kib: u64,
    /// The most calls the mock provider held at once.
    peak_in_flight: u64,
    /// Its resident memory in the sample with the most calls at the provider, and that many.
    sampled_rss_kib: u64,
    sampled_in_flight: u64,
    /// (peak − baseline) ÷ peak in flight.
    rss_per_call_kib: f64,
    nats_peak_rss_mib: Option<f64>,
}

const ROUTE: &str = "bench-inflight";
/// How long the llm process is left idle after the warm-up before its baseline is read.
const IDLE: Duration = Duration::from_secs(3);
/// How often the llm process's memory and the calls at the mock are read.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// The memory per call in flight the design aims at.
const TARGET_KIB: f64 = 20.0;

pub(super) async fn run(config: Config, args: InflightArgs) -> anyhow::Result<()> {
    ensure!(args.calls > 0, "--calls must be at least 1");
    ensure!(
        !args.latency.is_zero(),
        "--latency must be longer than zero"
    );
    let report = Bench::with(config, &args.target, async |bench| {
        measure(bench, &args).await
    })
    .await?;
    show(&report, args.json, print_report)?;
    ensure!(
        report.succeeded == report.calls,
        "{} of {} jobs did not succeed",
        report.calls - report.succeeded,
        report.calls
    );
    Ok(())
}

async fn measure(bench: &Bench, args: &InflightArgs) -> anyhow::Result<Report> {
    let mock = MockLlm::start()
        .await
        .context("cannot start the mock LLM provider")?;
    let behaviour = Behaviour::answer("ok").with_latency(args.latency);
    mock.script(ROUTE, behaviour.clone());
    let (warmup, tenant) = (Tenant::new("warmup")?, Tenant::new("bench")?);
    let mut config = bench.config.clone();
    config.routes.push(RouteConfig {
        base_url: Some(format!("{}/v1", mock.url())),
        timeout: args.latency * 2 + Duration::from_secs(60),
        ..RouteConfig::new(ROUTE, "openai", ROUTE)
    });
    // One worker, and so one permit, per call; no cap of the tenants' own.
    config.llm.workers = args.calls;
    for name in [&warmup, &tenant] {
        if let Some(tenant) = config.tenants.get_mut(name.as_str()) {
            tenant.max_inflight = None;
        }
    }
    // Every role but llm here; the llm role only in the worker process.
    let roles = [
        RoleName::Persister,
        RoleName::Evaluator,
        RoleName::Orchestrator,
    ];
    let runtime = chorus_app::start(config.clone(), &roles, None).await?;
    let config_path = bench.scratch.path().join("chorus.toml");
    std::fs::write(&config_path, toml::to_string(&config)?)?;
    let mut worker = spawn_worker(&config_path)?;
    let measured = async {
        let pid = worker
            .id()
            .context("the llm process has no pid")?
            .to_string();
        let bus = chorus_app::connect(&config, "chorus bench").await?;
        let notified = |tenant: &Tenant| {
            bus.client
                .subscribe(format!("{}.notify.{tenant}.*", bus.subjects.prefix()))
        };
        let (mut warmed, mut done) = tokio::try_join!(notified(&warmup), notified(&tenant))?;
        let specs = |prefix: &'static str, count: usize| {
            (0..count).map(move |i| {
                let spec = serde_json::json!({
                    "model": ROUTE,
                    "messages": [{"role": "user", "content": format!("Call {i}: say ok.")}],
                });
                (format!("{prefix}-{i}"), spec)
            })
        };

        submit(&bus, &warmup, "warmup", specs("warmup", args.warmup)).await?;
        let served = finish(
            &mut warmed,
            args.warmup,
            deadline(args, args.warmup),
            async || exited(std::slice::from_mut(&mut worker)),
        )
        .await?;
        ensure!(
            served == args.warmup,
            "only {served} of {} warm-up calls finished",
            args.warmup
        );
        tokio::time::sleep(IDLE).await;
        let baseline = memory_kib(&pid, "VmRSS").context("cannot read the llm process's memory")?;
        mock.reset();
        mock.script(ROUTE, behaviour);
        eprintln!(
            "llm process {pid}: {:.1} MiB after {} warm-up calls; submitting {} jobs, the mock answering in {:?}",
            mib(baseline),
            args.warmup,
            args.calls,
            args.latency
        );

        let started = Instant::now();
        let mut sampled = (0, 0);
        let mut told = Instant::now();
        let mut sample = async || {
            exited(std::slice::from_mut(&mut worker))?;
            let rss = memory_kib(&pid, "VmRSS").unwrap_or_default();
            let in_flight = mock.stats(ROUTE).in_flight;
            if in_flight > sampled.1 {
                sampled = (rss, in_flight);
            }
            if told.elapsed() >= Duration::from_secs(1) {
                eprintln!(
                    "  {:>5.1} s: {in_flight} calls at the provider; in JetStream {} submissions, {} calls; llm RSS {:.1} MiB",
                    started.elapsed().as_secs_f64(),
                    stored(&bus, "submit").await?,
                    stored(&bus, "work").await?,
                    mib(rss)
                );
                told = Instant::now();
            }
            Ok(())
        };
        let (_, finished) = tokio::try_join!(
            submit(&bus, &tenant, "inflight", specs("inflight", args.calls)),
            finish(&mut done, args.calls, deadline(args, args.calls), &mut sample),
        )?;
        let seconds = started.elapsed().as_secs_f64();
        let peak = memory_kib(&pid, "VmHWM").context("cannot read the llm process's memory")?;
        if finished < args.calls {
            eprintln!("only {finished} of {} jobs finished", args.calls);
        }
        let peak_in_flight = mock.stats(ROUTE).most_in_flight;
        Ok::<_, anyhow::Error>(Report {
            calls: args.calls,
            latency_ms: ms(args.latency),
            workers: config.llm.workers,
            warmup_calls: args.warmup,
            succeeded: succeeded(&config, &tenant).await?,
            seconds,
            baseline_rss_kib: baseline,
            peak_rss_kib: peak,
            peak_in_flight,
            sampled_rss_kib: sampled.0,
            sampled_in_flight: sampled.1,
            rss_per_call_kib: peak.saturating_sub(baseline) as f64 / peak_in_flight.max(1) as f64,
            nats_peak_rss_mib: bench
                .nats_pid()
                .and_then(|pid| peak_rss_mib(&pid.to_string())),
        })
    }
    .await;
    stop(&mut worker).await;
    runtime.run_until(async {}).await?;
    measured
}

/// How long `calls` jobs may take to finish before the bench gives up on them.
fn deadline(args: &InflightArgs, calls: usize) -> Duration {
    Duration::from_secs(120) + args.latency * 2 + Duration::from_millis(20 * calls as u64)
}

/// Waits until the persister has committed `jobs` jobs of the tenant `notified` hears of, or
/// `deadline` has passed, calling `tick` every [`SAMPLE_EVERY`]: how many it committed.
async fn finish(
    notified: &mut async_nats::Subscriber,
    jobs: usize,
    deadline: Duration,
    mut tick: impl AsyncFnMut() -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    let end = tokio::time::Instant::now() + deadline;
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    let mut committed = HashSet::with_capacity(jobs);
    while committed.len() < jobs {
        tokio::select! {
            message = notified.next() => {
                let message = message.context("the notification subscription ended")?;
                committed.insert(message.subject.to_string());
            }
            _ = ticks.tick() => tick().await?,
            () = tokio::time::sleep_until(end) => {
                eprintln!("{} of {jobs} jobs committed in {deadline:?}; giving up", committed.len());
                break;
            }
        }
    }
    Ok(committed.len())
}

/// The messages `stream` (`submit`, `work`) holds: waiting, or taken and not yet acknowledged.
async fn stored(bus: &chorus_bus::Bus, stream: &str) -> anyhow::Result<u64> {
    let mut stream = bus.js.get_stream(bus.subjects.stream(stream)).await?;
    Ok(stream.info().await?.state.messages)
}

/// The jobs of `tenant` the database holds as succeeded.
async fn succeeded(config: &Config, tenant: &Tenant) -> anyhow::Result<usize> {
    let store = chorus_app::open_store(&config.database, false).await?;
    let mut count = 0;
    let mut cursor = None;
    loop {
        let page = store
            .list_jobs(
                tenant,
                Some(JobStatus::Succeeded),
                chorus_store::read::MAX_PAGE,
                cursor.as_deref(),
            )
            .await?;
        count += page.data.len();
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(count),
        }
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn print_report(r: &Report) {
    println!(
        "chorus bench inflight: {} single-call jobs on one llm process (llm.workers {}), mock provider answering in {:.0} ms",
        r.calls, r.workers, r.latency_ms
    );
    println!();
    println!(
        "  jobs succeeded         {:>9} of {}   {:.1} s from the first submission to the last commit",
        r.succeeded, r.calls, r.seconds
    );
    println!(
        "  calls in flight        {:>9}        the most the mock provider held at once",
        r.peak_in_flight
    );
    println!(
        "  llm RSS, baseline      {:>9.1} MiB    idle after {} warm-up calls",
        mib(r.baseline_rss_kib),
        r.warmup_calls
    );
    println!(
        "  llm RSS, peak          {:>9.1} MiB    VmHWM; {:.1} MiB sampled with {} calls in flight",
        mib(r.peak_rss_kib),
        mib(r.sampled_rss_kib),
        r.sampled_in_flight
    );
    println!(
        "  RSS per call           {:>9.1} KiB    (peak − baseline) ÷ calls in flight; target ≤ {TARGET_KIB} KiB{}",
        r.rss_per_call_kib,
        if r.rss_per_call_kib <= TARGET_KIB {
            ""
        } else {
            ": ABOVE"
        }
    );
    if let Some(nats) = r.nats_peak_rss_mib {
        println!("  nats-server peak RSS   {nats:>9.1} MiB");
    }
}
