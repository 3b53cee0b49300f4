//! `chorus bench fairness`: three tenants share one route limited in requests per minute, on the
//! mock provider (`chorus-mock-llm`), served by `--processes` `chorus serve --roles llm`
//! processes; the edge, orchestrator, evaluator and persister run in the bench process.
//!
//! Tenant `a` floods a large batch and `b` runs a smaller one, both JetStream submissions (the
//! batch band) queued before measuring, `a`'s lines asking for more completion tokens than `b`'s
//! so that equal token shares mean unequal call counts. Tenant `c` makes interactive chat
//! completions through the edge (`POST /v1/chat/completions` with an API key of its own) at a
//! steady rate for the whole measurement.
//!
//! The mock records every call with its arrival time; each is attributed to a tenant by the text
//! of its user message (`A-<i>`, `B-<i>`, `C-<i>`). The report gives `c`'s end-to-end latency as
//! its client measured it and its time to the provider (the client's send to the mock's arrival,
//! every hop and wait of Chorus included), `a`:`b` token shares (estimated tokens, as the
//! scheduler charges them) over 30-second windows while both were backlogged with Jain's index
//! of the weight-normalised shares, the route's utilisation over that time, and the busiest 60 s
//! and 1 s against the limiter's ceiling.
//!
//! The targets, each missed one failing the run after the report: every one of c's calls
//! answered, their p99 end-to-end latency within the provider's latency + 250 ms + one request
//! spacing of the route (60 s / rpm: the slot the limiter may just have given a batch call, which
//! c's call waits out); Jain's index ≥ 0.99 in every 30-second window (shares within about 5% of
//! the weights'); calls served ≥ 95% of what the limit allows while both were backlogged; the
//! busiest 60 s and 1 s within ⌊W·rpm/60⌋ + 1.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, ensure};
use chorus_core::Tenant;
use chorus_core::auth::Scopes;
use chorus_core::config::{Config, RouteConfig};
use chorus_core::spec::{ChatMessage, Params, Role};
use chorus_mock_llm::{Behaviour, MockLlm, RecordedRequest, most_in_window};
use chorus_store::KeyLimits;
use secrecy::ExposeSecret as _;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::{Bench, Target, ceiling, exited, ms, percentile, show, spawn_worker, stop, submit};
use chorus_app::{self, RoleName};

#[derive(Debug, clap::Args)]
pub(super) struct FairnessArgs {
    /// The route's limit in requests per minute.
    #[arg(long, default_value_t = 1200)]
    rpm: u32,
    /// How long to measure, once both backlogs are queued.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// llm worker processes sharing the route.
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// How long the mock provider takes to answer.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Lines of tenant a's batch.
    #[arg(long, default_value_t = 20_000)]
    a_lines: usize,
    /// Lines of tenant b's batch.
    #[arg(long, default_value_t = 2_000)]
    b_lines: usize,
    /// `max_tokens` of each of a's lines.
    #[arg(long, default_value_t = 300)]
    a_max_tokens: u32,
    /// `max_tokens` of each of b's lines.
    #[arg(long, default_value_t = 100)]
    b_max_tokens: u32,
    /// Tenant a's weight (default: `[tenants.a] weight` of the configuration, else 1).
    #[arg(long)]
    weight_a: Option<f64>,
    /// Tenant b's weight (default: `[tenants.b] weight` of the configuration, else 1).
    #[arg(long)]
    weight_b: Option<f64>,
    /// Tenant c's chat completions per second.
    #[arg(long, default_value_t = 2.0)]
    interactive_rate: f64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

const ROUTE: &str = "bench-fair";
/// The spans the token shares are measured over.
const SHARE_WINDOW: Duration = Duration::from_secs(30);
const CEILING_WINDOW: Duration = Duration::from_secs(60);
/// c's `max_tokens`.
const C_MAX_TOKENS: u32 = 100;
/// What c's p99 end-to-end latency may add to the provider's latency and one request spacing.
const C_OVERHEAD: Duration = Duration::from_millis(250);
const MIN_JAIN: f64 = 0.99;
const MIN_UTILISATION: f64 = 0.95;

#[derive(Debug, Serialize)]
struct Report {
    rpm: u32,
    processes: usize,
    latency_ms: f64,
    seconds: f64,
    a_lines: usize,
    b_lines: usize,
    a_max_tokens: u32,
    b_max_tokens: u32,
    weight_a: f64,
    weight_b: f64,
    interactive: Interactive,
    /// From the start of the measurement while both a and b were backlogged.
    backlogged_seconds: f64,
    /// a's share of a's and b's estimated tokens that its weight entitles it to.
    a_share_target: f64,
    /// a's token share over the whole backlogged time.
    a_share: f64,
    /// Jain's index of a's and b's weight-normalised token shares over the backlogged time.
    jain: f64,
    windows: Vec<ShareWindow>,
    /// Every tenant's calls in the backlogged time over the calls the limit allows in it.
    utilisation: f64,
    calls_backlogged: usize,
    window_seconds: u64,
    /// The most calls the mock saw in any window, sliding over every arrival of the run.
    most_in_window: usize,
    /// ⌊W·rpm/60⌋ + 1.
    ceiling: usize,
    most_in_one_second: usize,
    one_second_ceiling: usize,
    /// The targets missed, each said in a sentence.
    missed: Vec<String>,
}

/// Tenant c's chat completions.
#[derive(Debug, Serialize)]
struct Interactive {
    rate: f64,
    calls: usize,
    failed: usize,
    /// Sent to answered, at the client.
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Sent by the client to received by the mock provider.
    to_provider_p50_ms: f64,
    to_provider_p99_ms: f64,
    /// The provider's latency + 250 ms + one request spacing (60 s / rpm).
    p99_target_ms: f64,
}

/// a's and b's calls and estimated tokens in one span of the backlogged time.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct ShareWindow {
    /// Seconds from the start of the measurement.
    from_s: f64,
    to_s: f64,
    calls: [usize; 2],
    tokens: [f64; 2],
    a_share: f64,
    jain: f64,
}

/// One of c's chat completions, as its client saw it.
struct Call {
    text: String,
    sent_at: SystemTime,
    outcome: Result<Duration, CallFailed>,
}

/// Why one of c's chat completions got no answer.
#[derive(Debug, thiserror::Error)]
enum CallFailed {
    #[error("the edge answered {0}")]
    Status(reqwest::StatusCode),
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}

/// One of a's or b's calls at the provider: when, whose (0 for a, 1 for b), estimated tokens.
type Served = (SystemTime, usize, f64);

pub(super) async fn run(config: Config, args: FairnessArgs) -> anyhow::Result<()> {
    ensure!(args.rpm > 0, "--rpm must be at least 1");
    ensure!(args.processes > 0, "--processes must be at least 1");
    ensure!(
        !args.duration.is_zero(),
        "--duration must be longer than zero"
    );
    ensure!(
        args.interactive_rate.is_finite() && args.interactive_rate > 0.0,
        "--interactive-rate must be above zero"
    );
    let report = Bench::with(config, &args.target, async |bench| {
        measure(bench, &args).await
    })
    .await?;
    show(&report, args.json, print_report)?;
    ensure!(
        report.missed.is_empty(),
        "targets missed: {}",
        report.missed.join("; ")
    );
    Ok(())
}

async fn measure(bench: &Bench, args: &FairnessArgs) -> anyhow::Result<Report> {
    let mock = MockLlm::start()
        .await
        .context("cannot start the mock LLM provider")?;
    mock.script(ROUTE, Behaviour::answer("ok").with_latency(args.latency));
    let config = configure(&bench.config, &mock, args);
    let weights = [weight(&config, "a"), weight(&config, "b")];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    // Every role but llm here; the llm role only in the worker processes.
    let roles = [
        RoleName::Persister,
        RoleName::Evaluator,
        RoleName::Orchestrator,
        RoleName::Edge,
    ];
    let runtime = chorus_app::start(config.clone(), &roles, Some(listener)).await?;
    let config_path = bench.scratch.path().join("chorus.toml");
    std::fs::write(&config_path, toml::to_string(&config)?)?;
    let mut workers = Vec::with_capacity(args.processes);
    for _ in 0..args.processes {
        workers.push(spawn_worker(&config_path)?);
    }
    let client = client_of_c(&config).await?;
    let url = format!("{base}/v1/chat/completions");
    eprintln!(
        "route {ROUTE}: {} rpm, mock latency {:?}, {} llm processes; weights a {} b {}",
        args.rpm, args.latency, args.processes, weights[0], weights[1]
    );
    // c has called before, as an active tenant has: its flow exists when the measurement starts.
    let warm_up = chat(client.clone(), url.clone(), "C-warm-up".into()).await;
    warm_up
        .outcome
        .map_err(|e| anyhow::anyhow!("c's first chat completion failed: {e}"))?;

    let bus = chorus_app::connect(&config, "chorus bench").await?;
    let lines = |tenant: &'static str, prefix: &'static str, count: usize, max_tokens: u32| {
        (0..count).map(move |i| {
            let text = format!("{prefix}-{i}");
            let spec = json!({
                "model": ROUTE,
                "messages": [{"role": "user", "content": text}],
                "params": {"max_tokens": max_tokens},
            });
            (format!("{tenant}-{i}"), spec)
        })
    };
    let (a, b) = (Tenant::new("a")?, Tenant::new("b")?);
    tokio::try_join!(
        submit(
            &bus,
            &a,
            "bench-a",
            lines("a", "A", args.a_lines, args.a_max_tokens)
        ),
        submit(
            &bus,
            &b,
            "bench-b",
            lines("b", "B", args.b_lines, args.b_max_tokens)
        ),
    )?;
    eprintln!(
        "queued: a {} lines (max_tokens {}), b {} lines (max_tokens {})",
        args.a_lines, args.a_max_tokens, args.b_lines, args.b_max_tokens
    );
    wait_for_intake(&bus, &mock, &mut workers).await?;

    eprintln!(
        "measuring {:?}: c calls at {}/s through the edge",
        args.duration, args.interactive_rate
    );
    let start = SystemTime::now();
    let calls = interactive(&client, &url, args, &mock, &mut workers).await?;
    let end = start + args.duration;

    eprintln!("stopping the llm processes");
    for worker in &mut workers {
        stop(worker).await;
    }
    runtime.run_until(async {}).await?;

    let recorded = mock.requests(ROUTE);
    ensure!(
        recorded.len() as u64 == mock.stats(ROUTE).requests,
        "the mock keeps the last {} requests of a model and dropped older ones: measure for less \
         time or at a lower --rpm",
        recorded.len()
    );
    let arrivals: Vec<SystemTime> = recorded
        .iter()
        .map(|r| r.received_at)
        .filter(|at| *at < end)
        .collect();
    let served = served(&recorded, args);
    let held = args.processes * config.scheduling.window;
    let backlogged_end = [
        backlog_end(&served, 0, args.a_lines, held),
        backlog_end(&served, 1, args.b_lines, held),
    ]
    .into_iter()
    .flatten()
    .fold(end, SystemTime::min);
    let backlogged = backlogged_end.duration_since(start).unwrap_or_default();
    let windows = share_windows(&served, start, backlogged_end, SHARE_WINDOW, weights);
    let whole = share_window(&served, start, backlogged_end, start, weights);
    let calls_backlogged = arrivals
        .iter()
        .filter(|at| **at >= start && **at < backlogged_end)
        .count();
    let allowed = backlogged.as_secs_f64() * f64::from(args.rpm) / 60.0;
    let first = arrivals.iter().min().copied().unwrap_or(start);
    let window = CEILING_WINDOW.min(end.duration_since(first).unwrap_or_default());
    let mut report = Report {
        rpm: args.rpm,
        processes: args.processes,
        latency_ms: ms(args.latency),
        seconds: args.duration.as_secs_f64(),
        a_lines: args.a_lines,
        b_lines: args.b_lines,
        a_max_tokens: args.a_max_tokens,
        b_max_tokens: args.b_max_tokens,
        weight_a: weights[0],
        weight_b: weights[1],
        interactive: summarise(&calls, &recorded, args),
        backlogged_seconds: backlogged.as_secs_f64(),
        a_share_target: weights[0] / (weights[0] + weights[1]),
        a_share: whole.a_share,
        jain: whole.jain,
        windows,
        utilisation: if allowed > 0.0 {
            calls_backlogged as f64 / allowed
        } else {
            0.0
        },
        calls_backlogged,
        window_seconds: window.as_secs(),
        most_in_window: most_in_window(&arrivals, window),
        ceiling: ceiling(window, args.rpm),
        most_in_one_second: most_in_window(&arrivals, Duration::from_secs(1)),
        one_second_ceiling: ceiling(Duration::from_secs(1), args.rpm),
        missed: Vec::new(),
    };
    report.missed = missed(&report);
    Ok(report)
}

/// The bench's configuration with the limited route on the mock, the tenants' weights, and API
/// keys required at the edge (c is known by its key).
fn configure(config: &Config, mock: &MockLlm, args: &FairnessArgs) -> Config {
    let mut config = config.clone();
    config.routes.push(RouteConfig {
        base_url: Some(format!("{}/v1", mock.url())),
        rpm: Some(args.rpm),
        ..RouteConfig::new(ROUTE, "openai", ROUTE)
    });
    for (tenant, weight) in [("a", args.weight_a), ("b", args.weight_b)] {
        if let Some(weight) = weight {
            config.tenants.entry(tenant.into()).or_default().weight = weight;
        }
    }
    config.edge.auth = true;
    config
}

fn weight(config: &Config, tenant: &str) -> f64 {
    config.tenants.get(tenant).map_or(1.0, |t| t.weight)
}

/// A client that sends a new API key of tenant c.
async fn client_of_c(config: &Config) -> anyhow::Result<reqwest::Client> {
    let store = chorus_app::open_store(&config.database, false).await?;
    let created = store
        .create_key(
            &Tenant::new("c")?,
            "chorus bench fairness",
            Scopes::parse("submit,read")?,
            KeyLimits::default(),
        )
        .await?;
    let mut headers = reqwest::header::HeaderMap::new();
    let bearer = format!("Bearer {}", created.key.expose_secret());
    headers.insert(reqwest::header::AUTHORIZATION, bearer.parse()?);
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(120))
        .build()?)
}

/// Waits until the orchestrator has taken every submission (the submit stream is empty) and both
/// a's and b's calls reach the provider: from then on both wait at the route.
async fn wait_for_intake(
    bus: &chorus_bus::Bus,
    mock: &MockLlm,
    workers: &mut [tokio::process::Child],
) -> anyhow::Result<()> {
    let waiting = Instant::now();
    let mut told = Instant::now();
    loop {
        exited(workers)?;
        let mut stream = bus.js.get_stream(bus.subjects.stream("submit")).await?;
        let left = stream.info().await?.state.messages;
        let seen = |prefix: &str| {
            mock.requests(ROUTE)
                .iter()
                .any(|r| said(&r.body).starts_with(prefix))
        };
        if left == 0 && seen("A-") && seen("B-") {
            eprintln!(
                "intake done in {:.1} s; {} calls so far",
                waiting.elapsed().as_secs_f64(),
                mock.arrivals(ROUTE).len()
            );
            return Ok(());
        }
        ensure!(
            waiting.elapsed() < Duration::from_secs(600),
            "the submissions were not all taken, or a's and b's calls not both served, within 600 s"
        );
        if told.elapsed() >= Duration::from_secs(5) {
            eprintln!("  {left} submissions waiting for the orchestrator");
            told = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// c's chat completions at `--interactive-rate` for `--duration`, each in a task of its own so a
/// slow one delays none after it; every one awaited.
async fn interactive(
    client: &reqwest::Client,
    url: &str,
    args: &FairnessArgs,
    mock: &MockLlm,
    workers: &mut [tokio::process::Child],
) -> anyhow::Result<Vec<Call>> {
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / args.interactive_rate));
    let mut told = Instant::now();
    let mut pending = JoinSet::new();
    let mut sent = 0;
    loop {
        ticks.tick().await;
        if started.elapsed() >= args.duration {
            break;
        }
        pending.spawn(chat(client.clone(), url.to_owned(), format!("C-{sent}")));
        sent += 1;
        if told.elapsed() >= Duration::from_secs(10) {
            exited(workers)?;
            eprintln!(
                "  {:.0} s: {} calls at the provider; c sent {sent}",
                started.elapsed().as_secs_f64(),
                mock.arrivals(ROUTE).len()
            );
            told = Instant::now();
        }
    }
    let mut calls = pending.join_all().await;
    calls.sort_by_key(|call| call.sent_at);
    Ok(calls)
}

/// One chat completion of c saying `text`, timed at the client.
async fn chat(client: reqwest::Client, url: String, text: String) -> Call {
    let body = json!({
        "model": ROUTE,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": C_MAX_TOKENS,
    });
    let sent_at = SystemTime::now();
    let started = Instant::now();
    let outcome = match client.post(url).json(&body).send().await {
        Ok(response) if response.status().is_success() => match response.bytes().await {
            Ok(_) => Ok(started.elapsed()),
            Err(e) => Err(CallFailed::Http(e)),
        },
        Ok(response) => Err(CallFailed::Status(response.status())),
        Err(e) => Err(CallFailed::Http(e)),
    };
    Call {
        text,
        sent_at,
        outcome,
    }
}

/// The user message a recorded request carried.
fn said(body: &Value) -> &str {
    body["messages"]
        .as_array()
        .and_then(|messages| messages.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
}

/// a's and b's calls at the provider, in arrival order, with the tokens the scheduler estimates
/// for each: the user message's prompt tokens plus the line's `max_tokens`.
fn served(recorded: &[RecordedRequest], args: &FairnessArgs) -> Vec<Served> {
    let mut served: Vec<Served> = recorded
        .iter()
        .filter_map(|request| {
            let text = said(&request.body);
            let (tenant, max_tokens) = match text.split_once('-')?.0 {
                "A" => (0, args.a_max_tokens),
                "B" => (1, args.b_max_tokens),
                _ => return None,
            };
            let params = Params {
                max_tokens: Some(max_tokens),
                ..Params::default()
            };
            let message = ChatMessage::new(Role::User, text);
            let tokens = chorus_llm::tokens::estimate_messages(&[message], &params, max_tokens);
            Some((request.received_at, tenant, f64::from(tokens)))
        })
        .collect();
    served.sort_by_key(|(at, ..)| *at);
    served
}

/// When `tenant` stopped being backlogged: the arrival of its call that left only as many of its
/// `lines` as the processes' windows hold (`held`), since those wait in the processes, not at the
/// server, and go as the windows empty. None while more were left.
fn backlog_end(served: &[Served], tenant: usize, lines: usize, held: usize) -> Option<SystemTime> {
    served
        .iter()
        .filter(|(_, whose, _)| *whose == tenant)
        .nth(lines.saturating_sub(held + 1))
        .map(|(at, ..)| *at)
}

/// The consecutive whole `window`s from `start` to `end`, or the whole span as one if it is
/// shorter than a window.
fn share_windows(
    served: &[Served],
    start: SystemTime,
    end: SystemTime,
    window: Duration,
    weights: [f64; 2],
) -> Vec<ShareWindow> {
    let mut windows = Vec::new();
    let mut from = start;
    while from + window <= end {
        windows.push(share_window(served, from, from + window, start, weights));
        from += window;
    }
    if windows.is_empty() && end > start {
        windows.push(share_window(served, start, end, start, weights));
    }
    windows
}

/// a's and b's calls and tokens from `from` to `to`; times are said from `start`.
fn share_window(
    served: &[Served],
    from: SystemTime,
    to: SystemTime,
    start: SystemTime,
    weights: [f64; 2],
) -> ShareWindow {
    let mut calls = [0; 2];
    let mut tokens = [0.0; 2];
    for (_, tenant, cost) in served.iter().filter(|(at, ..)| *at >= from && *at < to) {
        calls[*tenant] += 1;
        tokens[*tenant] += cost;
    }
    let total = tokens[0] + tokens[1];
    let since = |at: SystemTime| at.duration_since(start).unwrap_or_default().as_secs_f64();
    ShareWindow {
        from_s: since(from),
        to_s: since(to),
        calls,
        tokens,
        a_share: if total > 0.0 { tokens[0] / total } else { 0.0 },
        jain: jain(&[tokens[0] / weights[0], tokens[1] / weights[1]]),
    }
}

/// Jain's fairness index (Σx)² / (n·Σx²): 1 when every x is equal, 1/n when one has everything;
/// 0 when all are zero.
fn jain(xs: &[f64]) -> f64 {
    let sum: f64 = xs.iter().sum();
    let squares: f64 = xs.iter().map(|x| x * x).sum();
    if squares == 0.0 {
        return 0.0;
    }
    sum * sum / (xs.len() as f64 * squares)
}

/// c's calls: end-to-end latencies of those answered, and each one's time to the provider.
fn summarise(calls: &[Call], recorded: &[RecordedRequest], args: &FairnessArgs) -> Interactive {
    let mut latencies: Vec<Duration> = calls
        .iter()
        .filter_map(|c| c.outcome.as_ref().ok().copied())
        .collect();
    latencies.sort_unstable();
    let mut to_provider: Vec<Duration> = calls
        .iter()
        .filter_map(|call| {
            let arrived = recorded.iter().find(|r| said(&r.body) == call.text)?;
            arrived.received_at.duration_since(call.sent_at).ok()
        })
        .collect();
    to_provider.sort_unstable();
    if let Some(Err(first)) = calls.iter().map(|c| &c.outcome).find(|o| o.is_err()) {
        eprintln!("c's first failed call: {first}");
    }
    Interactive {
        rate: args.interactive_rate,
        calls: calls.len(),
        failed: calls.len() - latencies.len(),
        p50_ms: ms(percentile(&latencies, 0.50)),
        p99_ms: ms(percentile(&latencies, 0.99)),
        max_ms: ms(latencies.last().copied().unwrap_or_default()),
        to_provider_p50_ms: ms(percentile(&to_provider, 0.50)),
        to_provider_p99_ms: ms(percentile(&to_provider, 0.99)),
        p99_target_ms: ms(args.latency
            + C_OVERHEAD
            + Duration::from_secs_f64(60.0 / f64::from(args.rpm))),
    }
}

/// The targets `report` misses.
fn missed(report: &Report) -> Vec<String> {
    let mut missed = Vec::new();
    let c = &report.interactive;
    if c.failed > 0 {
        missed.push(format!("{} of c's {} calls failed", c.failed, c.calls));
    }
    if c.p99_ms > c.p99_target_ms {
        missed.push(format!(
            "c's p99 latency {:.0} ms is above {:.0} ms",
            c.p99_ms, c.p99_target_ms
        ));
    }
    if report.windows.is_empty() {
        missed.push("a and b were never both backlogged while measuring".into());
    }
    for w in &report.windows {
        if w.jain < MIN_JAIN {
            missed.push(format!(
                "Jain's index {:.4} below {MIN_JAIN} over {:.0}–{:.0} s (a's token share {:.3}, \
                 its weight's {:.3})",
                w.jain, w.from_s, w.to_s, w.a_share, report.a_share_target
            ));
        }
    }
    if report.utilisation < MIN_UTILISATION {
        missed.push(format!(
            "utilisation {:.1}% below {:.0}%",
            report.utilisation * 100.0,
            MIN_UTILISATION * 100.0
        ));
    }
    if report.most_in_window > report.ceiling {
        missed.push(format!(
            "{} calls in a {} s window, ceiling {}",
            report.most_in_window, report.window_seconds, report.ceiling
        ));
    }
    if report.most_in_one_second > report.one_second_ceiling {
        missed.push(format!(
            "{} calls in 1 s, ceiling {}",
            report.most_in_one_second, report.one_second_ceiling
        ));
    }
    missed
}

fn print_report(r: &Report) {
    let c = &r.interactive;
    println!(
        "chorus bench fairness: {} llm processes, one route limited to {} requests/min, mock \
         provider answering in {:.0} ms; {:.0} s measured",
        r.processes, r.rpm, r.latency_ms, r.seconds
    );
    println!(
        "  a: {} batch lines of max_tokens {}, weight {}; b: {} of max_tokens {}, weight {}; \
         c: {}/s chat completions",
        r.a_lines, r.a_max_tokens, r.weight_a, r.b_lines, r.b_max_tokens, r.weight_b, c.rate
    );
    println!();
    println!(
        "  c latency             p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} calls, {} failed)   target p99 ≤ {:.0} ms",
        c.p50_ms, c.p99_ms, c.max_ms, c.calls, c.failed, c.p99_target_ms
    );
    println!(
        "  c to the provider     p50 {:.1} ms, p99 {:.1} ms   client send → mock arrival",
        c.to_provider_p50_ms, c.to_provider_p99_ms
    );
    println!(
        "  a and b backlogged    {:.1} s of the measurement",
        r.backlogged_seconds
    );
    for w in &r.windows {
        println!(
            "  {:>3.0}–{:>3.0} s            a {:>5} calls {:>8.0} tokens, b {:>5} calls {:>8.0} tokens; a's share {:.3}, Jain {:.4}",
            w.from_s, w.to_s, w.calls[0], w.tokens[0], w.calls[1], w.tokens[1], w.a_share, w.jain
        );
    }
    println!(
        "  a's token share       {:.3}   weight's {:.3}; Jain's index {:.4} (target ≥ {MIN_JAIN} in every window)",
        r.a_share, r.a_share_target, r.jain
    );
    println!(
        "  utilisation           {:>6.1}%   {} calls while backlogged ÷ (seconds × rpm / 60)",
        r.utilisation * 100.0,
        r.calls_backlogged
    );
    println!(
        "  busiest {:>2} s window   {:>6}   ceiling {} (⌊W·rpm/60⌋ + 1)",
        r.window_seconds, r.most_in_window, r.ceiling
    );
    println!(
        "  busiest 1 s window    {:>6}   ceiling {}",
        r.most_in_one_second, r.one_second_ceiling
    );
    if r.missed.is_empty() {
        println!("  every target met");
    } else {
        for miss in &r.missed {
            println!("  MISSED: {miss}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn jains_index_is_one_when_equal_and_falls_with_unfairness() {
        assert_eq!(jain(&[3.0, 3.0]), 1.0);
        assert_eq!(jain(&[1.0, 0.0]), 0.5);
        // Shares 0.55 and 0.45: (1)² / (2 · 0.505).
        assert!((jain(&[0.55, 0.45]) - 1.0 / 1.01).abs() < 1e-12);
        assert_eq!(jain(&[0.0, 0.0]), 0.0);
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&sorted, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&sorted, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&sorted[..3], 0.99), Duration::from_millis(3));
        assert_eq!(percentile(&sorted[..1], 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn shares_are_counted_in_whole_windows_and_weighted() {
        // a: 100 tokens at 0.5 s and 1.5 s; b: 50 at 0.7 s and 150 at 1.2 s; one of a's after.
        let served = [
            (at(500), 0, 100.0),
            (at(700), 1, 50.0),
            (at(1_200), 1, 150.0),
            (at(1_500), 0, 100.0),
            (at(2_500), 0, 100.0),
        ];
        let windows = share_windows(
            &served,
            at(0),
            at(2_400),
            Duration::from_secs(1),
            [1.0, 1.0],
        );
        assert_eq!(windows.len(), 2, "the partial third window is left out");
        assert_eq!(windows[0].calls, [1, 1]);
        assert_eq!(windows[0].tokens, [100.0, 50.0]);
        assert!((windows[0].a_share - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!((windows[1].from_s, windows[1].to_s), (1.0, 2.0));
        assert_eq!(windows[1].tokens, [100.0, 150.0]);
        // Weighted 2:3, the second window's shares are exactly the weights'.
        let weighted = share_windows(
            &served,
            at(0),
            at(2_400),
            Duration::from_secs(1),
            [2.0, 3.0],
        );
        assert_eq!(weighted[1].jain, 1.0);
        // The first's normalised shares, 100/2 and 50/3: (200/3)² / (2 · 25,000/9).
        assert!((weighted[0].jain - 0.8).abs() < 1e-12);
        // A span shorter than a window is one window.
        let short = share_windows(&served, at(0), at(800), Duration::from_secs(1), [1.0, 1.0]);
        assert_eq!(short.len(), 1);
        assert_eq!((short[0].to_s, short[0].calls), (0.8, [1, 1]));
        assert!(
            share_windows(
                &served,
                at(800),
                at(800),
                Duration::from_secs(1),
                [1.0, 1.0]
            )
            .is_empty()
        );
    }

    #[test]
    fn a_backlog_ends_when_no_more_than_the_held_lines_are_left() {
        let served: Vec<Served> = (0..10)
            .map(|i| (at(i * 100), (i % 2) as usize, 1.0))
            .collect();
        // a's calls arrive at 0, 200, …, 800: of 5 lines with 2 held, the 3rd left 2 (at 400).
        assert_eq!(backlog_end(&served, 0, 5, 2), Some(at(400)));
        // b's at 100, 300, …, 900: the 5th of 5 left none; a 6th has not come.
        assert_eq!(backlog_end(&served, 1, 5, 0), Some(at(900)));
        assert_eq!(backlog_end(&served, 1, 6, 0), None);
        assert_eq!(backlog_end(&served, 1, 5, 10), Some(at(100)));
    }

    #[test]
    fn a_call_is_known_by_its_last_user_message() {
        let body = json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "A-17"},
        ]});
        assert_eq!(said(&body), "A-17");
        assert_eq!(said(&Value::Null), "");
    }
}
