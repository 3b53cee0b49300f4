//! `chorus bench ratelimit`: several `chorus serve --roles llm` processes share one route limited
//! in requests per minute, calling the mock provider (`chorus-mock-llm`), with a backlog larger
//! than the limit can serve. The mock timestamps every call; the report gives the busiest
//! 60-second window beside the most the design can allow, and how much of the limit was served.
//!
//! The limiter spaces a route's requests at least 60 s / rpm apart (GCRA without burst, state in
//! NATS KV), so a window of W seconds can see at most ⌊W·rpm/60⌋ + 1 calls: 601 for 600 rpm over
//! 60 s. Exceeding it fails the run.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, ensure};
use chorus_core::Tenant;
use chorus_core::config::{Config, RouteConfig};
use chorus_mock_llm::{Behaviour, MockLlm, most_in_window};
use serde::Serialize;

use super::{Bench, Target, ceiling, exited, show, spawn_worker, stop, submit};
use chorus_app::{self, RoleName};

#[derive(Debug, clap::Args)]
pub(super) struct RatelimitArgs {
    /// The route's limit in requests per minute.
    #[arg(long, default_value_t = 600)]
    rpm: u32,
    /// How long to measure, from the first call; 60 s or more covers a whole window.
    #[arg(long, default_value = "70s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// llm worker processes sharing the route.
    #[arg(long, default_value_t = 3)]
    processes: usize,
    /// How long the mock provider takes to answer.
    #[arg(long, default_value = "30ms", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Serialize)]
struct Report {
    rpm: u32,
    processes: usize,
    seconds: f64,
    calls: usize,
    window_seconds: u64,
    /// The most calls the mock saw in any window, sliding over every arrival.
    most_in_window: usize,
    /// ⌊W·rpm/60⌋ + 1: the most the limiter can admit in a window.
    ceiling: usize,
    most_in_one_second: usize,
    one_second_ceiling: usize,
    /// Calls served over the calls the limit allows in the measured time.
    utilisation: f64,
}

const ROUTE: &str = "bench-limited";
const WINDOW: Duration = Duration::from_secs(60);

pub(super) async fn run(config: Config, args: RatelimitArgs) -> anyhow::Result<()> {
    ensure!(args.rpm > 0, "--rpm must be at least 1");
    ensure!(args.processes > 0, "--processes must be at least 1");
    ensure!(
        !args.duration.is_zero(),
        "--duration must be longer than zero"
    );
    let report = Bench::with(config, &args.target, async |bench| {
        measure(bench, &args).await
    })
    .await?;
    show(&report, args.json, print_report)?;
    ensure!(
        report.most_in_window <= report.ceiling,
        "the limit was exceeded: {} calls in a {} s window, ceiling {}",
        report.most_in_window,
        report.window_seconds,
        report.ceiling
    );
    Ok(())
}

async fn measure(bench: &Bench, args: &RatelimitArgs) -> anyhow::Result<Report> {
    let mock = MockLlm::start()
        .await
        .context("cannot start the mock LLM provider")?;
    mock.script(ROUTE, Behaviour::answer("ok").with_latency(args.latency));
    let mut config = bench.config.clone();
    config.routes.push(RouteConfig {
        base_url: Some(format!("{}/v1", mock.url())),
        rpm: Some(args.rpm),
        ..RouteConfig::new(ROUTE, "openai", ROUTE)
    });
    // Every role but llm here; the llm role only in the worker processes.
    let roles = [
        RoleName::Persister,
        RoleName::Evaluator,
        RoleName::Orchestrator,
    ];
    let runtime = chorus_app::start(config.clone(), &roles, None).await?;
    let config_path = bench.scratch.path().join("chorus.toml");
    std::fs::write(&config_path, toml::to_string(&config)?)?;
    let mut workers = Vec::with_capacity(args.processes);
    for _ in 0..args.processes {
        workers.push(spawn_worker(&config_path)?);
    }

    // A backlog the limit cannot drain within the measurement.
    let backlog = (f64::from(args.rpm) * (args.duration.as_secs_f64() + 30.0) / 60.0).ceil();
    let bus = chorus_app::connect(&config, "chorus bench").await?;
    let specs = (0..backlog as usize).map(|i| {
        let spec = serde_json::json!({
            "model": ROUTE,
            "messages": [{"role": "user", "content": format!("Request {i}: say ok.")}],
        });
        (format!("ratelimit-{i}"), spec)
    });
    submit(&bus, &Tenant::new("bench")?, "ratelimit", specs).await?;
    eprintln!(
        "{backlog} jobs queued for route {ROUTE} ({} rpm) on {} llm processes; measuring {:?} from the first call",
        args.rpm, args.processes, args.duration
    );

    let waiting = Instant::now();
    let first = loop {
        if let Some(&first) = mock.arrivals(ROUTE).first() {
            break first;
        }
        exited(&mut workers)?;
        ensure!(
            waiting.elapsed() < Duration::from_secs(60),
            "no call reached the mock provider within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let end = first + args.duration;
    while let Ok(left) = end.duration_since(SystemTime::now()) {
        tokio::time::sleep(left.min(Duration::from_secs(10))).await;
        eprintln!("  {} calls so far", mock.arrivals(ROUTE).len());
    }
    let arrivals: Vec<SystemTime> = mock
        .arrivals(ROUTE)
        .into_iter()
        .filter(|at| *at < end)
        .collect();

    for worker in &mut workers {
        stop(worker).await;
    }
    runtime.run_until(async {}).await?;

    let window = WINDOW.min(args.duration);
    let allowed = args.duration.as_secs_f64() * f64::from(args.rpm) / 60.0;
    Ok(Report {
        rpm: args.rpm,
        processes: args.processes,
        seconds: args.duration.as_secs_f64(),
        calls: arrivals.len(),
        window_seconds: window.as_secs(),
        most_in_window: most_in_window(&arrivals, window),
        ceiling: ceiling(window, args.rpm),
        most_in_one_second: most_in_window(&arrivals, Duration::from_secs(1)),
        one_second_ceiling: ceiling(Duration::from_secs(1), args.rpm),
        utilisation: arrivals.len() as f64 / allowed,
    })
}

fn print_report(r: &Report) {
    println!(
        "chorus bench ratelimit: {} llm processes share one route limited to {} requests/min; mock provider; {:.0} s measured from the first call",
        r.processes, r.rpm, r.seconds
    );
    println!();
    println!("  calls served           {:>8}", r.calls);
    println!(
        "  busiest {:>2} s window    {:>8}   ceiling {} (⌊W·rpm/60⌋ + 1)  {}",
        r.window_seconds,
        r.most_in_window,
        r.ceiling,
        if r.most_in_window <= r.ceiling {
            "ok"
        } else {
            "EXCEEDED"
        }
    );
    println!(
        "  busiest 1 s window     {:>8}   ceiling {}",
        r.most_in_one_second, r.one_second_ceiling
    );
    println!(
        "  utilisation            {:>7.1}%   calls served ÷ (seconds × rpm / 60)",
        r.utilisation * 100.0
    );
    if r.window_seconds < WINDOW.as_secs() {
        println!("  (measured for less than 60 s: the window is the whole run)");
    }
}
