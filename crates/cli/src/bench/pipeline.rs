//! `chorus bench pipeline` (the default scenario): pushes jobs through every role and measures, on
//! the same server in the same run, what raw JetStream does, so the pipeline's figure comes with
//! the broker's beside it.
//!
//! Jobs go in the way a JetStream submitter sends them (JSON on `<prefix>.submit.<tenant>`), run
//! on the `sim` provider at 0 ms with two assertions, and count as done when the persister has
//! committed them (its notification). The raw figures are pipelined publishes of 512-byte messages
//! with 1,024 acks outstanding, then a pull consumer acknowledging each message.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use chorus_bus::Bus;
use chorus_core::config::Config;
use chorus_core::{JobId, Tenant};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Mutex;

use super::{Bench, Target, peak_rss_mib, show};
use chorus_app::{self, RoleName};

#[derive(Debug, clap::Args)]
pub(super) struct PipelineArgs {
    /// Jobs to push through the pipeline.
    #[arg(short = 'n', long, default_value_t = 20_000)]
    jobs: usize,
    /// Messages for the raw JetStream measurements.
    #[arg(long, default_value_t = 100_000)]
    raw_messages: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Serialize)]
struct Report {
    jobs: usize,
    database: &'static str,
    seconds: f64,
    jobs_per_sec: f64,
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    /// One job at a time on the idle pipeline, submit to commit.
    idle_latency_ms_p50: f64,
    idle_latency_ms_p99: f64,
    messages_per_job: f64,
    raw_publish_per_sec: f64,
    raw_consume_ack_per_sec: f64,
    /// Jobs/s divided by raw publish+consume messages/s (DESIGN.md §13).
    efficiency: f64,
    /// Jobs/s × messages per job, divided by raw publish+consume messages/s: how close the
    /// pipeline runs to what the broker can carry.
    message_efficiency: f64,
    peak_rss_mib: f64,
    nats_peak_rss_mib: Option<f64>,
}

const PIPELINE_WINDOW: usize = 1024;
/// Jobs sent one at a time after the throughput run, for the unloaded latency.
const IDLE_JOBS: usize = 200;

pub(super) async fn run(config: Config, args: PipelineArgs) -> anyhow::Result<()> {
    let report = Bench::with(config, &args.target, async |bench| {
        measure(
            bench.config.clone(),
            &args,
            bench.database,
            bench.nats_pid(),
        )
        .await
    })
    .await?;
    show(&report, args.json, print_report)?;
    Ok(())
}

async fn measure(
    config: Config,
    args: &PipelineArgs,
    database: &'static str,
    nats_pid: Option<u32>,
) -> anyhow::Result<Report> {
    let bus = chorus_app::connect(&config, "chorus bench").await?;
    let (raw_publish, raw_consume) = raw_rates(&bus, args.raw_messages).await?;

    let roles = [
        RoleName::Persister,
        RoleName::Evaluator,
        RoleName::Llm,
        RoleName::Orchestrator,
    ];
    let runtime = chorus_app::start(config, &roles, None).await?;
    let tenant = Tenant::new("bench")?;
    let before = stored_messages(&bus).await?;

    // Completion is the persister's notification after commit.
    let mut done = bus
        .client
        .subscribe(format!("{}.notify.>", bus.subjects.prefix()))
        .await?;
    let submitted = Mutex::new(HashMap::with_capacity(args.jobs));
    let body = serde_json::json!({
        "model": "sim:echo",
        "messages": [{"role": "user", "content": "Summarise: the quarterly numbers are up and costs are down."}],
        "evaluate": {"threshold": 1.0, "assertions": [
            {"type": "icontains", "value": "quarterly"},
            {"type": "length", "min": 10}
        ]}
    })
    .to_string();
    let body = bytes::Bytes::from(body);

    let started = Instant::now();
    let publisher = async {
        let subject = bus.subjects.submit(&tenant);
        let mut pending = futures::stream::FuturesUnordered::new();
        for i in 0..args.jobs {
            let id = format!("bench-{i}");
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            headers.insert("Content-Type", "application/json");
            submitted
                .lock()
                .await
                .insert(JobId::derived(&tenant, &id).to_string(), Instant::now());
            pending.push(
                bus.js
                    .publish_with_headers(subject.clone(), headers, body.clone())
                    .await?
                    .into_future(),
            );
            if pending.len() >= PIPELINE_WINDOW {
                pending.next().await.transpose()?;
            }
        }
        while pending.next().await.transpose()?.is_some() {}
        anyhow::Ok(())
    };
    let collector = async {
        let mut latencies = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let mut finished = 0usize;
        let deadline = Duration::from_secs(60 + args.jobs as u64 / 50);
        while finished < args.jobs {
            let message = tokio::time::timeout(deadline, done.next())
                .await
                .with_context(|| {
                    format!(
                        "only {finished} of {} jobs finished in {deadline:?}",
                        args.jobs
                    )
                })?
                .context("the notification subscription ended")?;
            let job = message
                .subject
                .as_str()
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_owned();
            if let Some(at) = submitted.lock().await.remove(&job) {
                latencies.record(at.elapsed().as_micros().max(1) as u64)?;
                finished += 1;
            }
        }
        anyhow::Ok((latencies, started.elapsed()))
    };
    let (published, collected) = tokio::join!(publisher, collector);
    published?;
    let (latencies, elapsed) = collected?;
    let after = stored_messages(&bus).await?;

    // Latency of one job at a time, on the idle pipeline.
    let mut idle = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let subject = bus.subjects.submit(&tenant);
    for i in 0..IDLE_JOBS {
        let id = format!("bench-idle-{i}");
        let job = JobId::derived(&tenant, &id).to_string();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        headers.insert("Content-Type", "application/json");
        let at = Instant::now();
        bus.js
            .publish_with_headers(subject.clone(), headers, body.clone())
            .await?
            .await?;
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), done.next())
                .await
                .context("an idle job did not finish within 30 s")?
                .context("the notification subscription ended")?;
            if message.subject.as_str().ends_with(&job) {
                break;
            }
        }
        idle.record(at.elapsed().as_micros().max(1) as u64)?;
    }
    runtime.run_until(async {}).await?;

    let jobs_per_sec = args.jobs as f64 / elapsed.as_secs_f64();
    let messages_per_job = (after - before) as f64 / args.jobs as f64;
    // A message published and consumed once: the two legs in series.
    let raw_pubsub = 1.0 / (1.0 / raw_publish + 1.0 / raw_consume);
    Ok(Report {
        jobs: args.jobs,
        database,
        seconds: elapsed.as_secs_f64(),
        jobs_per_sec,
        latency_ms_p50: latencies.value_at_quantile(0.50) as f64 / 1000.0,
        latency_ms_p99: latencies.value_at_quantile(0.99) as f64 / 1000.0,
        idle_latency_ms_p50: idle.value_at_quantile(0.50) as f64 / 1000.0,
        idle_latency_ms_p99: idle.value_at_quantile(0.99) as f64 / 1000.0,
        messages_per_job,
        raw_publish_per_sec: raw_publish,
        raw_consume_ack_per_sec: raw_consume,
        efficiency: jobs_per_sec / raw_pubsub,
        message_efficiency: jobs_per_sec * messages_per_job / raw_pubsub,
        peak_rss_mib: peak_rss_mib("self").unwrap_or(0.0),
        nats_peak_rss_mib: nats_pid.and_then(|pid| peak_rss_mib(&pid.to_string())),
    })
}

/// Messages every Chorus stream (and the jobs bucket) ever stored.
async fn stored_messages(bus: &Bus) -> anyhow::Result<u64> {
    let mut total = 0;
    for name in ["submit", "work", "events"] {
        let mut stream = bus.js.get_stream(bus.subjects.stream(name)).await?;
        total += stream.info().await?.state.last_sequence;
    }
    let bucket = format!("KV_{}", bus.subjects.jobs_bucket());
    total += bus
        .js
        .get_stream(bucket)
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    Ok(total)
}

/// Raw JetStream: pipelined publish, then pull + explicit ack, on a file-backed stream.
async fn raw_rates(bus: &Bus, messages: usize) -> anyhow::Result<(f64, f64)> {
    let name = bus.subjects.stream("bench_raw");
    let subject = format!("{}.bench.raw", bus.subjects.prefix());
    let js: &jetstream::Context = &bus.js;
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let payload = bytes::Bytes::from(vec![b'x'; 512]);
    let started = Instant::now();
    let mut pending = futures::stream::FuturesUnordered::new();
    for _ in 0..messages {
        pending.push(
            js.publish(subject.clone(), payload.clone())
                .await?
                .into_future(),
        );
        if pending.len() >= PIPELINE_WINDOW {
            pending.next().await.transpose()?;
        }
    }
    while pending.next().await.transpose()?.is_some() {}
    let publish = messages as f64 / started.elapsed().as_secs_f64();

    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 100_000,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let mut incoming = consumer
        .stream()
        .max_messages_per_batch(512)
        .messages()
        .await?;
    for _ in 0..messages {
        let message = incoming
            .next()
            .await
            .context("the raw consumer ended")?
            .map_err(|e| anyhow::anyhow!(e))?;
        message.ack().await.map_err(|e| anyhow::anyhow!(e))?;
    }
    let consume = messages as f64 / started.elapsed().as_secs_f64();
    js.delete_stream(&name).await?;
    Ok((publish, consume))
}

fn print_report(r: &Report) {
    println!(
        "chorus bench: {} jobs, sim provider at 0 ms, two assertions, persisted to {}",
        r.jobs, r.database
    );
    println!();
    println!(
        "  pipeline             {:>10.0} jobs/s   ({:.2} s)",
        r.jobs_per_sec, r.seconds
    );
    println!(
        "  job latency          p50 {:.1} ms, p99 {:.1} ms (submitted all at once)",
        r.latency_ms_p50, r.latency_ms_p99
    );
    println!(
        "  idle job latency     p50 {:.1} ms, p99 {:.1} ms (one job at a time)",
        r.idle_latency_ms_p50, r.idle_latency_ms_p99
    );
    println!("  JetStream msgs/job   {:>10.1}", r.messages_per_job);
    println!(
        "  raw publish          {:>10.0} msgs/s   (512 B, {PIPELINE_WINDOW} acks outstanding)",
        r.raw_publish_per_sec
    );
    println!(
        "  raw consume + ack    {:>10.0} msgs/s",
        r.raw_consume_ack_per_sec
    );
    println!(
        "  efficiency           {:>10.4}          jobs/s ÷ raw publish+consume msgs/s",
        r.efficiency
    );
    println!(
        "  message efficiency   {:>10.2}          (jobs/s × msgs/job) ÷ raw publish+consume msgs/s",
        r.message_efficiency
    );
    println!(
        "  peak memory          {:>10.1} MiB (chorus)",
        r.peak_rss_mib
    );
    if let Some(nats) = r.nats_peak_rss_mib {
        println!("                       {nats:>10.1} MiB (nats-server)");
    }
}
