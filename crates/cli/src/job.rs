//! `chorus job get|watch`: one job over the REST API.
//!
//! `watch` follows `GET /v1/jobs/{id}/events` (Server-Sent Events): a line per `status` event,
//! then the job's summary from the final `done` event. The stream is parsed here ([`SseParser`]):
//! the server is our own and sends only `event:`/`data:` lines and keep-alive comments, so a few
//! lines of code replace a dependency. Jobs are read leniently (`JobView`): unknown fields are
//! ignored and missing ones default, so a CLI and a server of different versions still agree.

use anyhow::Context as _;
use reqwest::Method;
use reqwest::header::ACCEPT;
use serde::Deserialize;
use serde_json::Value;

use crate::client::{self, ApiArgs, Client};

#[derive(Debug, clap::Args)]
pub struct JobArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: JobCommand,
}

#[derive(Debug, clap::Subcommand)]
enum JobCommand {
    /// Show a job: status, steps, evaluation and error.
    Get {
        id: String,
        /// Print the job's JSON as the API answers it.
        #[arg(long)]
        json: bool,
    },
    /// Follow a job until it is finished, a line per change; exits 1 unless it succeeded.
    Watch { id: String },
}

pub async fn run(args: JobArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.api)?;
    match args.command {
        JobCommand::Get { id, json } => {
            let job: Value = client.get(&job_path(&id)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                println!("{}", summary(&serde_json::from_value(job)?));
            }
            Ok(())
        }
        JobCommand::Watch { id } => watch(&client, &id).await,
    }
}

fn job_path(id: &str) -> String {
    format!("/v1/jobs/{id}")
}

async fn watch(client: &Client, id: &str) -> anyhow::Result<()> {
    let path = format!("{}/events", job_path(id));
    let request = client
        .request(Method::GET, &path)
        .header(ACCEPT, "text/event-stream");
    let mut response = client.send(request).await?;
    let mut parser = SseParser::default();
    while let Some(chunk) = client.chunk(&mut response).await? {
        for event in parser.push(&chunk) {
            match event.event.as_str() {
                "status" => match serde_json::from_str::<StatusEvent>(&event.data) {
                    Ok(status) => println!("{}", status.line()),
                    Err(e) => eprintln!("warning: unreadable status event ({e}): {}", event.data),
                },
                "done" => {
                    let job: JobView = serde_json::from_str(&event.data)
                        .context("the job's final record is unreadable")?;
                    println!("{}", summary(&job));
                    anyhow::ensure!(job.status == "succeeded", "job {} {}", job.id, job.status);
                    return Ok(());
                }
                _ => {}
            }
        }
    }
    anyhow::bail!("the event stream of job {id} ended before the job finished")
}

/// One Server-Sent Event: its `event:` name (`message` if none) and its `data:` lines joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// An incremental parser of a `text/event-stream` body, fed chunks as they arrive (a line, or a
/// UTF-8 character, may span chunks). `id:` and `retry:` fields and comments are ignored.
#[derive(Debug, Default)]
pub struct SseParser {
    pending: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// The events completed by this chunk.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches('\n').trim_end_matches('\r');
            if let Some(event) = self.line(line) {
                events.push(event);
            }
        }
        events
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let event = self.event.take();
            let data = self.data.take()?;
            return Some(SseEvent {
                event: event.unwrap_or_else(|| "message".into()),
                data,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            _ => {}
        }
        None
    }
}

/// The data of a `status` event.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StatusEvent {
    status: String,
    version: u64,
    steps: Vec<StepStatus>,
    updated_at: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StepStatus {
    status: String,
}

impl StatusEvent {
    /// `<updated_at>  <status>  v<version>  steps 1/3: 1 succeeded, 1 dispatched, 1 pending`
    fn line(&self) -> String {
        let settled = self
            .steps
            .iter()
            .filter(|s| matches!(s.status.as_str(), "succeeded" | "failed"))
            .count();
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for step in &self.steps {
            match counts.iter_mut().find(|(status, _)| *status == step.status) {
                Some((_, n)) => *n += 1,
                None => counts.push((&step.status, 1)),
            }
        }
        let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
        format!(
            "{}  {:<10}  v{}  steps {settled}/{}: {}",
            self.updated_at,
            self.status,
            self.version,
            self.steps.len(),
            counts.join(", ")
        )
    }
}

/// A job as `GET /v1/jobs/{id}` and the `done` event show it; only what the summary prints.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct JobView {
    id: String,
    status: String,
    created_at: Option<String>,
    finished_at: Option<String>,
    usage: Option<Usage>,
    cost_usd: Option<f64>,
    score: Option<f64>,
    passed: Option<bool>,
    error: Option<ErrorView>,
    steps: Vec<StepView>,
    evaluation: Option<Evaluation>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ErrorView {
    kind: String,
    message: String,
    step: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StepView {
    index: u32,
    kind: String,
    persona: Option<String>,
    route: String,
    status: String,
    latency_ms: Option<u64>,
    attempts: u32,
    error: Option<ErrorView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Evaluation {
    targets: Vec<Target>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Target {
    step: u32,
    assertions: Vec<Assertion>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Assertion {
    #[serde(rename = "type")]
    kind: String,
    metric: Option<String>,
    passed: bool,
    reason: String,
}

/// A job for people: status and times, usage, evaluation, the steps as a table, failed
/// assertions and the error.
fn summary(job: &JobView) -> String {
    let mut lines = vec![format!("job {}  {}", job.id, job.status)];
    lines.push(format!(
        "created {}  finished {}",
        client::or_dash(job.created_at.as_deref()),
        client::or_dash(job.finished_at.as_deref())
    ));
    if let Some(usage) = &job.usage {
        let cost = job
            .cost_usd
            .map(|c| format!("  ${c:.4}"))
            .unwrap_or_default();
        lines.push(format!(
            "tokens {} prompt + {} completion = {}{cost}",
            usage.prompt_tokens, usage.completion_tokens, usage.total_tokens
        ));
    }
    if job.score.is_some() || job.passed.is_some() {
        let verdict = match job.passed {
            Some(true) => "passed",
            Some(false) => "not passed",
            None => "-",
        };
        lines.push(format!(
            "evaluation score {}  {verdict}",
            client::score(job.score)
        ));
    }
    if !job.steps.is_empty() {
        let rows: Vec<Vec<String>> = job
            .steps
            .iter()
            .map(|s| {
                vec![
                    s.index.to_string(),
                    s.kind.clone(),
                    client::or_dash(s.persona.as_deref()),
                    s.route.clone(),
                    s.status.clone(),
                    client::or_dash(s.latency_ms.map(|ms| format!("{ms} ms"))),
                    s.attempts.to_string(),
                    client::or_dash(
                        s.error
                            .as_ref()
                            .map(|e| format!("{}: {}", e.kind, e.message)),
                    ),
                ]
            })
            .collect();
        lines.push(String::new());
        lines.push(client::table(
            &[
                "STEP", "KIND", "PERSONA", "ROUTE", "STATUS", "LATENCY", "ATTEMPTS", "ERROR",
            ],
            &rows,
        ));
    }
    let failed: Vec<String> = job
        .evaluation
        .iter()
        .flat_map(|e| &e.targets)
        .flat_map(|t| t.assertions.iter().map(move |a| (t.step, a)))
        .filter(|(_, a)| !a.passed)
        .map(|(step, a)| {
            let metric = a
                .metric
                .as_deref()
                .map(|m| format!(" [{m}]"))
                .unwrap_or_default();
            format!("  step {step}: {}{metric}: {}", a.kind, a.reason)
        })
        .collect();
    if !failed.is_empty() {
        lines.push(String::new());
        lines.push("failed assertions:".into());
        lines.extend(failed);
    }
    if let Some(error) = &job.error {
        let step = error
            .step
            .map(|s| format!(" (step {s})"))
            .unwrap_or_default();
        lines.push(String::new());
        lines.push(format!("error{step}: {}: {}", error.kind, error.message));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        job: JobArgs,
    }

    #[test]
    fn parses_get_and_watch_with_the_api_arguments_anywhere() {
        let cli = Cli::try_parse_from(["job", "get", "abc", "--json", "--url", "http://h:1"])
            .unwrap()
            .job;
        assert_eq!(cli.api.url, "http://h:1");
        assert!(matches!(cli.command, JobCommand::Get { ref id, json: true } if id == "abc"));

        let cli = Cli::try_parse_from(["job", "--api-key", "k", "watch", "abc"])
            .unwrap()
            .job;
        assert!(cli.api.api_key.is_some());
        assert!(matches!(cli.command, JobCommand::Watch { ref id } if id == "abc"));

        assert!(Cli::try_parse_from(["job", "get"]).is_err());
    }

    #[test]
    fn sse_events_are_parsed_across_chunks() {
        let mut parser = SseParser::default();
        assert!(parser.push(b": keep-alive\n\nevent: sta").is_empty());
        assert!(parser.push(b"tus\r\ndata: {\"a\":").is_empty());
        let events = parser.push(b" 1}\r\n\r\ndata:x\ndata: y\n\nevent: done\ndata: {}\n\n");
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: "status".into(),
                    data: "{\"a\": 1}".into()
                },
                SseEvent {
                    event: "message".into(),
                    data: "x\ny".into()
                },
                SseEvent {
                    event: "done".into(),
                    data: "{}".into()
                },
            ]
        );
    }

    #[test]
    fn sse_characters_split_between_chunks_survive() {
        let mut parser = SseParser::default();
        let text = "data: café\n\n".as_bytes();
        let (a, b) = text.split_at(9);
        assert!(parser.push(a).is_empty());
        assert_eq!(parser.push(b)[0].data, "café");
    }

    #[test]
    fn a_status_event_is_one_line() {
        let event: StatusEvent = serde_json::from_value(json!({
            "id": "j", "status": "running", "version": 4, "updated_at": "2026-01-01T00:00:00.000Z",
            "steps": [
                {"index": 0, "kind": "fanout", "persona": "cfo", "route": "sim:echo", "status": "succeeded"},
                {"index": 1, "kind": "fanout", "persona": "cto", "route": "sim:echo", "status": "dispatched"},
                {"index": 2, "kind": "synthesis", "persona": null, "route": "sim:echo", "status": "pending"}
            ]
        }))
        .unwrap();
        assert_eq!(
            event.line(),
            "2026-01-01T00:00:00.000Z  running     v4  steps 1/3: 1 succeeded, 1 dispatched, 1 pending"
        );
    }

    #[test]
    fn the_summary_shows_steps_evaluation_and_error() {
        let job: JobView = serde_json::from_value(json!({
            "id": "j1", "status": "failed", "created_at": "2026-01-01T00:00:00Z", "finished_at": null,
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            "score": 0.25, "passed": false,
            "error": {"kind": "server_error", "message": "boom", "step": 1},
            "steps": [
                {"index": 0, "kind": "fanout", "persona": "cfo", "route": "sim:echo",
                 "status": "succeeded", "latency_ms": 12, "attempts": 1, "error": null},
                {"index": 1, "kind": "synthesis", "persona": null, "route": "sim:echo",
                 "status": "failed", "latency_ms": 0, "attempts": 3,
                 "error": {"kind": "server_error", "message": "boom"}}
            ],
            "evaluation": {"score": 0.25, "passed": false, "targets": [{"step": 0, "score": 0.25,
                "passed": false, "assertions": [{"index": 0, "type": "icontains", "metric": "decision",
                "weight": 1.0, "passed": false, "score": 0.0, "reason": "no go"}]}]},
            "future_field": true
        }))
        .unwrap();
        let text = summary(&job);
        assert!(text.starts_with("job j1  failed\ncreated 2026-01-01T00:00:00Z  finished -\n"));
        assert!(text.contains("tokens 10 prompt + 5 completion = 15"));
        assert!(text.contains("evaluation score 0.25  not passed"));
        assert!(
            text.contains(
                "STEP  KIND       PERSONA  ROUTE     STATUS     LATENCY  ATTEMPTS  ERROR"
            )
        );
        assert!(text.contains(
            "1     synthesis  -        sim:echo  failed     0 ms     3         server_error: boom"
        ));
        assert!(text.contains("  step 0: icontains [decision]: no go"));
        assert!(text.ends_with("error (step 1): server_error: boom"));
    }
}
