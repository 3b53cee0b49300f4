//! `chorus bench chat`: what Chorus costs a chat completion. The mock provider (`chorus-mock-llm`)
//! answers `ok` after `--latency` (50 ms); the bench calls the mock alone, then
//! `POST /v1/chat/completions` through Chorus on a route to that mock, at each of `--concurrency`
//! (1, 50, 200 callers), and reports per level the requests, errors, answers per second, exact
//! p50 and p99 latency, and for Chorus its throughput over the mock's at the same concurrency and
//! its p50 over the mock's.
//!
//! By default the bench runs everything in its own process: the mock, then (once the mock alone
//! is measured) every role of Chorus with the edge on a free port and an API key of its own, on
//! its own nats-server child (or `--nats-url`) under a prefix of its own and a scratch SQLite file
//! (or `--database-url`).
//! `--url` drives a Chorus already running instead (several processes, several pods), with
//! `--key` and `--model`, the route to call; the mock alone is then measured only when
//! `--mock-url` says where it is. `--model` without `--url` calls a route of the configuration
//! (`sim:echo`, say) through the bench's own Chorus.
//!
//! The load: for each level, that many tasks each sending one request after another for
//! `--duration` (after `--warmup` of the same load, not counted), over one HTTP client whose pool
//! keeps a connection per task. Every request is timed from send to the last byte of its answer; a
//! request that fails or answers anything but 200 is an error, counted by kind and reported, and
//! the bench exits non-zero after its report when there was one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use chorus_core::Tenant;
use chorus_core::auth::Scopes;
use chorus_core::config::{Config, RouteConfig};
use chorus_mock_llm::{Behaviour, MockLlm};
use chorus_store::KeyLimits;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Serialize;
use tokio::task::JoinSet;

use super::{Bench, Target, ms, percentile, show};
use chorus_app::{self, RoleName};

#[derive(Debug, clap::Args)]
pub(super) struct ChatArgs {
    /// How long the mock provider takes to answer (set on the bench's mock, or on `--mock-url`'s).
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Concurrent callers of each level, in order.
    #[arg(long, value_delimiter = ',', default_value = "1,50,200")]
    concurrency: Vec<usize>,
    /// How long each level is measured.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The same load before each level's measurement, not counted.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// A Chorus already running (its edge's base URL, `http://host:8080`): no Chorus, nats-server
    /// or database of the bench's own. Needs `--model`.
    #[arg(long, conflicts_with_all = ["nats_url", "database_url"])]
    url: Option<String>,
    /// The API key for `--url`, sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "CHORUS_API_KEY", hide_env_values = true)]
    key: Option<SecretString>,
    /// The route to call (default: a route of the bench's own to its mock, without limits).
    #[arg(long)]
    model: Option<String>,
    /// A mock provider already running (`chorus mock-llm`, `http://127.0.0.1:9009`): measured
    /// alone, and the bench's own route points at it instead of a mock in the bench process.
    #[arg(long)]
    mock_url: Option<String>,
    /// The model to call at the mock (default: `--model`, else the bench's route's).
    #[arg(long)]
    mock_model: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

/// The route the bench adds to its Chorus, and the model it scripts at the mock.
const ROUTE: &str = "bench-chat";
/// The tenant of the API key the bench creates for its own Chorus.
const TENANT: &str = "bench";
/// Bound on one request: longer is an error (`timeout`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Characters of an error answer's body kept in the report.
const BODY_KEPT: usize = 300;

#[derive(Debug, Serialize)]
struct Report {
    /// Where Chorus ran: the bench's process, or `--url`.
    chorus_at: String,
    /// `sqlite` or `postgres` for the bench's own Chorus.
    database: Option<&'static str>,
    /// The NATS server of the bench's own Chorus.
    nats: Option<String>,
    /// The route called.
    model: String,
    /// Where the mock provider was, when it was measured alone.
    mock: Option<String>,
    /// Why it was not.
    mock_skipped: Option<String>,
    /// The latency the bench set at the mock, when it set one.
    latency_ms: Option<f64>,
    seconds_per_level: f64,
    warmup_seconds: f64,
    levels: Vec<Level>,
}

#[derive(Debug, Serialize)]
struct Level {
    concurrency: usize,
    /// The mock alone; none when it was not measured.
    mock: Option<Figures>,
    chorus: Figures,
    /// Chorus's answers per second over the mock's at the same concurrency.
    ratio: Option<f64>,
    /// Chorus's p50 minus the mock's.
    p50_overhead_ms: Option<f64>,
}

/// One level against one target.
#[derive(Debug, Clone, Serialize)]
struct Figures {
    /// Requests that finished, answered or failed.
    requests: usize,
    /// Of them, those that failed or answered anything but 200.
    errors: usize,
    /// From the level's start until its last request finished.
    seconds: f64,
    /// Requests answered 200, per second.
    req_per_sec: f64,
    /// Exact (nearest rank) over the requests answered 200.
    p50_ms: f64,
    p99_ms: f64,
    /// Errors by kind (`HTTP 429`, `timeout`, …).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    error_kinds: BTreeMap<String, usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
}

/// Why one request got no answer.
#[derive(Debug, thiserror::Error)]
enum CallFailed {
    #[error("HTTP {status}: {body}")]
    Status {
        status: reqwest::StatusCode,
        /// The start of the answer's body.
        body: String,
    },
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}

impl CallFailed {
    fn kind(&self) -> String {
        match self {
            CallFailed::Status { status, .. } => format!("HTTP {}", status.as_u16()),
            CallFailed::Http(e) if e.is_timeout() => "timeout".into(),
            CallFailed::Http(e) if e.is_connect() => "connect".into(),
            CallFailed::Http(e) if e.is_body() || e.is_decode() => "body".into(),
            CallFailed::Http(_) => "request".into(),
        }
    }

    /// The error and its sources, one after another.
    fn describe(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

/// Where requests go and how they are sent.
#[derive(Clone)]
struct Endpoint {
    /// `…/v1/chat/completions`.
    url: String,
    client: reqwest::Client,
    body: bytes::Bytes,
}

pub(super) async fn run(config: Config, args: ChatArgs) -> anyhow::Result<()> {
    ensure!(
        !args.concurrency.is_empty() && args.concurrency.iter().all(|&n| n > 0),
        "--concurrency takes one or more numbers of callers, each at least 1"
    );
    ensure!(
        !args.duration.is_zero(),
        "--duration must be longer than zero"
    );
    ensure!(
        args.url.is_none() || args.model.is_some(),
        "--url needs --model: the route of that Chorus to call"
    );
    let report = match &args.url {
        Some(url) => measure(&args, Chorus::Running(url.trim_end_matches('/'))).await?,
        None => {
            Bench::with(config, &args.target, async |bench| {
                measure(&args, Chorus::Own(bench)).await
            })
            .await?
        }
    };
    show(&report, args.json, print_report)?;
    let failed: Vec<String> = failures(&report)
        .map(|(concurrency, what, f)| {
            format!(
                "{} of {} requests to {what} at {concurrency} concurrent",
                f.errors, f.requests
            )
        })
        .collect();
    ensure!(failed.is_empty(), "requests failed: {}", failed.join("; "));
    Ok(())
}

/// The levels' figures that have errors: concurrency, the mock or Chorus, the figures.
fn failures(report: &Report) -> impl Iterator<Item = (usize, &'static str, &Figures)> {
    report.levels.iter().flat_map(|level| {
        let mock = level
            .mock
            .as_ref()
            .map(|f| (level.concurrency, "the mock", f));
        mock.into_iter()
            .chain([(level.concurrency, "Chorus", &level.chorus)])
            .filter(|(_, _, f)| f.errors > 0)
    })
}

/// The Chorus measured.
enum Chorus<'a> {
    /// Started in the bench's process, on the bench's server and database.
    Own(&'a Bench),
    /// Already running at this base URL.
    Running(&'a str),
}

async fn measure(args: &ChatArgs, chorus: Chorus<'_>) -> anyhow::Result<Report> {
    let own_route = args.model.is_none();
    let mock_model = args
        .mock_model
        .clone()
        .or_else(|| args.model.clone())
        .unwrap_or_else(|| ROUTE.to_owned());
    // The mock: `--mock-url`'s, else one of the bench's own when its route is called.
    let mut own_mock = None;
    let mock_base = match (&args.mock_url, &chorus) {
        (Some(url), _) => {
            let url = url.trim_end_matches('/').to_owned();
            script(&url, &mock_model, args.latency).await?;
            Some(url)
        }
        (None, Chorus::Own(_)) if own_route => {
            let mock = MockLlm::start()
                .await
                .context("cannot start the mock LLM provider")?;
            mock.script(
                &mock_model,
                Behaviour::answer("ok").with_latency(args.latency),
            );
            let url = mock.url();
            own_mock = Some(mock);
            Some(url)
        }
        (None, _) => None,
    };
    let mock_skipped = match (&mock_base, &chorus) {
        (Some(_), _) => None,
        (None, Chorus::Running(_)) => Some(
            "Chorus at --url calls a provider the bench does not know: give --mock-url to \
             measure the mock alone"
                .to_owned(),
        ),
        (None, Chorus::Own(_)) => Some(format!(
            "route {} is not the bench's route to a mock of its own: give --mock-url to \
             measure the mock alone",
            args.model.as_deref().unwrap_or_default()
        )),
    };
    if let Some(why) = &mock_skipped {
        eprintln!("the mock alone is not measured: {why}");
    }
    let most = args.concurrency.iter().copied().max().unwrap_or(1);

    let mock_levels = match &mock_base {
        Some(base) => {
            let endpoint = endpoint(base, &mock_model, None, most)?;
            Some(levels("the mock alone", &endpoint, args).await?)
        }
        None => None,
    };

    let model = args.model.clone().unwrap_or_else(|| ROUTE.to_owned());
    let (chorus_levels, chorus_at, database, nats) = match chorus {
        Chorus::Running(url) => {
            let endpoint = endpoint(url, &model, args.key.as_ref(), most)?;
            let levels = levels("Chorus", &endpoint, args).await?;
            (levels, url.to_owned(), None, None)
        }
        Chorus::Own(bench) => {
            let mut config = bench.config.clone();
            if own_route {
                let base = mock_base.as_deref().unwrap_or_default();
                config.routes.push(RouteConfig {
                    base_url: Some(format!("{base}/v1")),
                    ..RouteConfig::new(ROUTE, "openai", mock_model.as_str())
                });
            }
            // Callers are known by their API key, as in production; no rate of the edge's.
            config.edge.auth = true;
            config.edge.key_rpm = None;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let base = format!("http://{}", listener.local_addr()?);
            let roles = [
                RoleName::Persister,
                RoleName::Evaluator,
                RoleName::Llm,
                RoleName::Orchestrator,
                RoleName::Edge,
            ];
            let runtime = chorus_app::start(config.clone(), &roles, Some(listener)).await?;
            let measured = async {
                let key = create_key(&config).await?;
                let endpoint = endpoint(&base, &model, Some(&key), most)?;
                levels("Chorus", &endpoint, args).await
            }
            .await;
            runtime.run_until(async {}).await?;
            let nats = match bench.nats {
                Some(_) => "a nats-server child of the bench (nats/server/chorus.conf: \
                            sync_interval \"2m\")"
                    .to_owned(),
                None => config.nats.url.clone(),
            };
            let chorus_at = "every role in the bench's process, an API key of its own".to_owned();
            (measured?, chorus_at, Some(bench.database), Some(nats))
        }
    };
    drop(own_mock);

    let levels = args
        .concurrency
        .iter()
        .zip(chorus_levels)
        .enumerate()
        .map(|(i, (&concurrency, chorus))| {
            let mock = mock_levels.as_ref().and_then(|m| m.get(i)).cloned();
            let ratio = mock
                .as_ref()
                .filter(|m| m.req_per_sec > 0.0)
                .map(|m| chorus.req_per_sec / m.req_per_sec);
            let p50_overhead_ms = mock.as_ref().map(|m| chorus.p50_ms - m.p50_ms);
            Level {
                concurrency,
                mock,
                chorus,
                ratio,
                p50_overhead_ms,
            }
        })
        .collect();
    Ok(Report {
        chorus_at,
        database,
        nats,
        model,
        mock: mock_base.as_ref().map(|base| match &args.mock_url {
            Some(_) => base.clone(),
            None => format!("in the bench's process ({base})"),
        }),
        mock_skipped,
        latency_ms: mock_base.as_ref().map(|_| ms(args.latency)),
        seconds_per_level: args.duration.as_secs_f64(),
        warmup_seconds: args.warmup.as_secs_f64(),
        levels,
    })
}

/// Has a mock of another process answer `model` with `ok` after `latency`
/// (`PUT /_mock/models/{model}`).
async fn script(mock: &str, model: &str, latency: Duration) -> anyhow::Result<()> {
    let behaviour = Behaviour::answer("ok").with_latency(latency);
    let url = format!("{mock}/_mock/models/{model}");
    let response = reqwest::Client::new()
        .put(&url)
        .json(&behaviour)
        .send()
        .await
        .with_context(|| format!("cannot reach the mock provider at {mock}"))?;
    ensure!(
        response.status().is_success(),
        "the mock provider at {mock} refused its script (PUT {url}: {}); is it `chorus mock-llm`?",
        response.status()
    );
    Ok(())
}

/// A new API key of the bench's tenant, allowed to submit.
async fn create_key(config: &Config) -> anyhow::Result<SecretString> {
    let store = chorus_app::open_store(&config.database, false).await?;
    let created = store
        .create_key(
            &Tenant::new(TENANT)?,
            "chorus bench chat",
            Scopes::parse("submit,read")?,
            KeyLimits::default(),
        )
        .await?;
    Ok(created.key)
}

/// Chat completions of `model` at `base` (a server's root, `/v1/chat/completions` added), over a
/// client that keeps a connection for each of up to `most` callers.
fn endpoint(
    base: &str,
    model: &str,
    key: Option<&SecretString>,
    most: usize,
) -> anyhow::Result<Endpoint> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::CONTENT_TYPE, "application/json".parse()?);
    if let Some(key) = key {
        let bearer = format!("Bearer {}", key.expose_secret());
        headers.insert(reqwest::header::AUTHORIZATION, bearer.parse()?);
    }
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(most)
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say ok."}],
    });
    Ok(Endpoint {
        url: format!("{base}/v1/chat/completions"),
        client,
        body: bytes::Bytes::from(body.to_string()),
    })
}

/// Every level of `--concurrency` against `endpoint`, after one request that must be answered (a
/// target that cannot answer at all stops the bench with its reason).
async fn levels(what: &str, endpoint: &Endpoint, args: &ChatArgs) -> anyhow::Result<Vec<Figures>> {
    if let Err(e) = call(endpoint).await {
        anyhow::bail!(
            "{what} did not answer a first request at {}: {}",
            endpoint.url,
            e.describe()
        );
    }
    let mut figures = Vec::with_capacity(args.concurrency.len());
    for &concurrency in &args.concurrency {
        if !args.warmup.is_zero() {
            load(endpoint, concurrency, args.warmup).await;
        }
        let (outcomes, elapsed) = load(endpoint, concurrency, args.duration).await;
        let level = summarise(outcomes, elapsed);
        eprintln!(
            "{what}, {concurrency} concurrent: {} requests, {} errors, {:.1} req/s, p50 {:.1} ms, \
             p99 {:.1} ms",
            level.requests, level.errors, level.req_per_sec, level.p50_ms, level.p99_ms
        );
        figures.push(level);
    }
    Ok(figures)
}

/// `concurrency` callers each sending one request after another until `duration` has passed:
/// every request's outcome, and the time until the last one finished.
async fn load(
    endpoint: &Endpoint,
    concurrency: usize,
    duration: Duration,
) -> (Vec<Result<Duration, CallFailed>>, Duration) {
    let started = Instant::now();
    let end = started + duration;
    let mut callers = JoinSet::new();
    for _ in 0..concurrency {
        let endpoint = endpoint.clone();
        callers.spawn(async move {
            let mut outcomes = Vec::new();
            while Instant::now() < end {
                outcomes.push(call(&endpoint).await);
            }
            outcomes
        });
    }
    let outcomes = callers.join_all().await.into_iter().flatten().collect();
    (outcomes, started.elapsed())
}

/// One chat completion, timed from send to the last byte of a 200 answer.
async fn call(endpoint: &Endpoint) -> Result<Duration, CallFailed> {
    let started = Instant::now();
    let response = endpoint
        .client
        .post(&endpoint.url)
        .body(endpoint.body.clone())
        .send()
        .await?;
    let status = response.status();
    let body = response.bytes().await?;
    match status {
        reqwest::StatusCode::OK => Ok(started.elapsed()),
        status => Err(CallFailed::Status {
            status,
            body: String::from_utf8_lossy(&body)
                .chars()
                .take(BODY_KEPT)
                .collect(),
        }),
    }
}

/// A level's figures from its requests' outcomes.
fn summarise(outcomes: Vec<Result<Duration, CallFailed>>, elapsed: Duration) -> Figures {
    let requests = outcomes.len();
    let mut latencies = Vec::with_capacity(requests);
    let mut error_kinds = BTreeMap::new();
    let mut first_error = None;
    for outcome in outcomes {
        match outcome {
            Ok(latency) => latencies.push(latency),
            Err(e) => {
                *error_kinds.entry(e.kind()).or_insert(0) += 1;
                first_error.get_or_insert_with(|| e.describe());
            }
        }
    }
    latencies.sort_unstable();
    let seconds = elapsed.as_secs_f64();
    Figures {
        requests,
        errors: requests - latencies.len(),
        seconds,
        req_per_sec: if seconds > 0.0 {
            latencies.len() as f64 / seconds
        } else {
            0.0
        },
        p50_ms: ms(percentile(&latencies, 0.50)),
        p99_ms: ms(percentile(&latencies, 0.99)),
        error_kinds,
        first_error,
    }
}

fn print_report(r: &Report) {
    println!(
        "chorus bench chat: POST /v1/chat/completions on route {}; {:.0} s per level after a {:.0} s warm-up",
        r.model, r.seconds_per_level, r.warmup_seconds
    );
    match (&r.mock, r.latency_ms) {
        (Some(mock), Some(latency)) => {
            println!("  mock provider   answering in {latency:.0} ms, {mock}")
        }
        _ => println!(
            "  mock provider   not measured alone: {}",
            r.mock_skipped.as_deref().unwrap_or_default()
        ),
    }
    match (r.database, &r.nats) {
        (Some(database), Some(nats)) => println!(
            "  Chorus          {}; {database}; NATS: {nats}",
            r.chorus_at
        ),
        _ => println!("  Chorus          {}", r.chorus_at),
    }
    println!();
    println!(
        "                      requests   errors       req/s     p50 ms     p99 ms     ratio   p50 overhead"
    );
    let row = |concurrency: usize, f: &Figures, ratio: Option<f64>, overhead: Option<f64>| {
        let ratio = ratio.map_or_else(|| "–".to_owned(), |r| format!("{r:.3}"));
        let overhead = overhead.map_or_else(|| "–".to_owned(), |o| format!("{o:+.1} ms"));
        println!(
            "    {concurrency:>4} concurrent  {:>9} {:>8} {:>11.1} {:>10.1} {:>10.1} {ratio:>9} {overhead:>14}",
            f.requests, f.errors, f.req_per_sec, f.p50_ms, f.p99_ms
        );
    };
    if r.levels.iter().any(|l| l.mock.is_some()) {
        println!("  mock alone");
        for level in &r.levels {
            if let Some(mock) = &level.mock {
                row(level.concurrency, mock, None, None);
            }
        }
    }
    println!("  through Chorus");
    for level in &r.levels {
        row(
            level.concurrency,
            &level.chorus,
            level.ratio,
            level.p50_overhead_ms,
        );
    }
    for (concurrency, what, f) in failures(r) {
        let kinds: Vec<String> = f
            .error_kinds
            .iter()
            .map(|(kind, n)| format!("{kind} ×{n}"))
            .collect();
        println!(
            "  ERRORS: {what} at {concurrency} concurrent: {} ({}); the first: {}",
            f.errors,
            kinds.join(", "),
            f.first_error.as_deref().unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_level_counts_every_request_and_its_errors_by_kind() {
        let ok = |ms| Ok(Duration::from_millis(ms));
        let refused = || CallFailed::Status {
            status: reqwest::StatusCode::TOO_MANY_REQUESTS,
            body: "slow down".into(),
        };
        let figures = summarise(
            vec![ok(30), Err(refused()), ok(10), ok(20), Err(refused())],
            Duration::from_secs(2),
        );
        assert_eq!((figures.requests, figures.errors), (5, 2));
        assert_eq!(figures.req_per_sec, 1.5);
        assert_eq!((figures.p50_ms, figures.p99_ms), (20.0, 30.0));
        assert_eq!(
            figures.error_kinds,
            BTreeMap::from([("HTTP 429".into(), 2)])
        );
        assert_eq!(
            figures.first_error.as_deref(),
            Some("HTTP 429 Too Many Requests: slow down")
        );
    }
}
