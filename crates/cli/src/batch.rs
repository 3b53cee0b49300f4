//! `chorus batch submit|status|results|report|cancel|list`: batches over the REST API, in the
//! shape of OpenAI's Batch API (`/v1/files`, `/v1/batches`).
//!
//! `submit` uploads the JSONL file (multipart, streamed from disk) and creates the batch; its
//! endpoint defaults to the `url` of the file's first line. `submit --watch` polls the batch every
//! 500 ms behind a progress bar on stderr, so stdout carries only the batch id and the final
//! summary. Answers are read leniently (missing fields default, unknown ones are ignored).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::multipart::{Form, Part};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::client::{self, ApiArgs, Client, ClientError};

const ENDPOINTS: [&str; 2] = ["/v1/jobs", "/v1/chat/completions"];
const POLL: Duration = Duration::from_millis(500);
/// Polls in a row that may fail to reach the server before `--watch` gives up.
const POLL_RETRIES: u32 = 20;

#[derive(Debug, clap::Args)]
pub struct BatchArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: BatchCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BatchCommand {
    /// Upload a JSONL file of requests and start a batch on it; prints the batch id.
    Submit {
        /// One request per line: {"custom_id", "method": "POST", "url", "body"}.
        file: PathBuf,
        /// What every line asks for [default: the `url` of the file's first line].
        #[arg(long, value_parser = ENDPOINTS)]
        endpoint: Option<String>,
        /// How long the batch may take.
        #[arg(long, default_value = "24h")]
        completion_window: String,
        /// A metadata entry; repeat for more.
        #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_metadata)]
        metadata: Vec<(String, String)>,
        /// Follow the batch with a progress bar until it ends; exits 1 if it failed or expired.
        #[arg(long)]
        watch: bool,
    },
    /// A batch's status, request counts, files and timestamps.
    Status {
        id: String,
        /// Print the batch's JSON as the API answers it.
        #[arg(long)]
        json: bool,
    },
    /// Download a batch's output file (or its error file) to stdout or a file.
    Results {
        id: String,
        /// The error file instead: the lines that failed.
        #[arg(long)]
        errors: bool,
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Evaluation results: overall, by metric, by model and by persona.
    Report {
        id: String,
        /// Print the report's JSON as the API answers it.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a batch: lines not yet started are not run.
    Cancel { id: String },
    /// Batches, newest first.
    List {
        /// Most batches to show.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Start after this batch id (the last one of the previous page).
        #[arg(long)]
        after: Option<String>,
    },
}

pub async fn run(args: BatchArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.api)?;
    match args.command {
        BatchCommand::Submit {
            file,
            endpoint,
            completion_window,
            metadata,
            watch,
        } => {
            let endpoint = match endpoint {
                Some(endpoint) => endpoint,
                None => default_endpoint(&file)?,
            };
            let metadata = metadata_map(metadata)?;
            let input = upload(&client, &file).await?;
            let mut body = json!({
                "input_file_id": input,
                "endpoint": endpoint,
                "completion_window": completion_window,
            });
            if !metadata.is_empty() {
                body["metadata"] = json!(metadata);
            }
            let batch: Batch = client.post("/v1/batches", &body).await?;
            println!("{}", batch.id);
            if watch {
                let batch = follow(&client, &batch.id).await?;
                println!("{}", status_text(&batch));
                anyhow::ensure!(
                    !matches!(batch.status.as_str(), "failed" | "expired"),
                    "batch {} {}",
                    batch.id,
                    batch.status
                );
            }
            Ok(())
        }
        BatchCommand::Status { id, json } => {
            let batch: Value = client.get(&batch_path(&id)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&batch)?);
            } else {
                println!("{}", status_text(&serde_json::from_value(batch)?));
            }
            Ok(())
        }
        BatchCommand::Results { id, errors, output } => {
            results(&client, &id, errors, output.as_deref()).await
        }
        BatchCommand::Report { id, json } => {
            let report: Value = client.get(&format!("{}/report", batch_path(&id))).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", report_text(&serde_json::from_value(report)?));
            }
            Ok(())
        }
        BatchCommand::Cancel { id } => {
            let path = format!("{}/cancel", batch_path(&id));
            let batch: Batch = client.json(client.request(Method::POST, &path)).await?;
            println!("batch {}  {}", batch.id, batch.status);
            Ok(())
        }
        BatchCommand::List { limit, after } => {
            let mut path = format!("/v1/batches?limit={limit}");
            if let Some(after) = after {
                path.push_str(&format!("&after={after}"));
            }
            let list: BatchList = client.get(&path).await?;
            println!("{}", list_text(&list));
            Ok(())
        }
    }
}

fn batch_path(id: &str) -> String {
    format!("/v1/batches/{id}")
}

/// A `--metadata` entry that is not `KEY=VALUE`.
#[derive(Debug, thiserror::Error)]
#[error("expected KEY=VALUE, got `{entry}`")]
struct NotKeyValue {
    entry: String,
}

fn parse_metadata(entry: &str) -> Result<(String, String), NotKeyValue> {
    match entry.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(NotKeyValue {
            entry: entry.into(),
        }),
    }
}

fn metadata_map(entries: Vec<(String, String)>) -> anyhow::Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for (key, value) in entries {
        anyhow::ensure!(
            !map.contains_key(&key),
            "--metadata: `{key}` is given twice"
        );
        map.insert(key, value);
    }
    Ok(map)
}

/// The `url` of the file's first non-blank line.
fn default_endpoint(file: &Path) -> anyhow::Result<String> {
    let reader = BufReader::new(
        File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
    );
    for line in reader.lines() {
        let line = line.with_context(|| format!("cannot read {}", file.display()))?;
        if !line.trim().is_empty() {
            return endpoint_of(&line)
                .with_context(|| format!("{}: first line; or pass --endpoint", file.display()));
        }
    }
    anyhow::bail!("{} has no requests", file.display())
}

fn endpoint_of(line: &str) -> anyhow::Result<String> {
    let request: Value = serde_json::from_str(line).context("not JSON")?;
    let url = request
        .get("url")
        .and_then(Value::as_str)
        .context("no `url`")?;
    anyhow::ensure!(
        ENDPOINTS.contains(&url),
        "`url` is `{url}`; use one of {}",
        ENDPOINTS.join(", ")
    );
    Ok(url.to_owned())
}

/// Uploads the file with purpose `batch`; its id. A rejected file's bad lines are printed.
async fn upload(client: &Client, file: &Path) -> anyhow::Result<String> {
    let part = Part::file(file)
        .await
        .with_context(|| format!("cannot read {}", file.display()))?;
    let form = Form::new().text("purpose", "batch").part("file", part);
    let request = client.request(Method::POST, "/v1/files").multipart(form);
    match client.json::<FileObject>(request).await {
        Ok(uploaded) => {
            eprintln!(
                "uploaded {} as {} ({} bytes)",
                file.display(),
                uploaded.id,
                uploaded.bytes
            );
            Ok(uploaded.id)
        }
        Err(ClientError::Api(e)) if e.status == StatusCode::BAD_REQUEST => {
            let problems = line_errors(e.body.pointer("/error/lines"));
            if problems.is_empty() {
                return Err(anyhow::anyhow!(e).context(format!("{} was refused", file.display())));
            }
            eprintln!("{} was refused:", file.display());
            for problem in &problems {
                eprintln!("  {problem}");
            }
            let omitted = e
                .body
                .pointer("/error/omitted")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            if omitted > 0 {
                eprintln!("  and {omitted} more");
            }
            anyhow::bail!(
                "{} was refused: {} problems (HTTP {})",
                file.display(),
                problems.len() as u64 + omitted,
                e.status
            )
        }
        Err(e) => Err(e.into()),
    }
}

/// Line problems as the API lists them (`[{"line", "code", "param", "message"}]`), one string
/// each: `line 3: body.model: unknown route`.
fn line_errors(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|item| {
            let field = |name: &str| item.get(name).filter(|v| !v.is_null());
            let mut text = String::new();
            if let Some(line) = field("line") {
                text.push_str(&format!("line {line}: "));
            }
            if let Some(param) = field("param").and_then(Value::as_str) {
                text.push_str(&format!("{param}: "));
            }
            match field("message").and_then(Value::as_str) {
                Some(message) => text.push_str(message),
                None => text.push_str(&item.to_string()),
            }
            text
        })
        .collect()
}

async fn results(
    client: &Client,
    id: &str,
    errors: bool,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let batch: Batch = client.get(&batch_path(id)).await?;
    let (which, file) = if errors {
        ("error", batch.error_file_id)
    } else {
        ("output", batch.output_file_id)
    };
    let file =
        file.with_context(|| format!("batch {id} has no {which} file (status: {})", batch.status))?;
    let path = format!("/v1/files/{file}/content");
    let mut response = client.send(client.request(Method::GET, &path)).await?;
    let mut out: BufWriter<Box<dyn Write + Send>> = BufWriter::new(match output {
        Some(target) => Box::new(
            File::create(target).with_context(|| format!("cannot create {}", target.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    });
    let mut written = 0;
    let copied: anyhow::Result<()> = async {
        while let Some(chunk) = client.chunk(&mut response).await? {
            out.write_all(&chunk)?;
            written += chunk.len();
        }
        out.flush()?;
        Ok(())
    }
    .await;
    match copied {
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if is_broken_pipe(&e) => return Ok(()),
        copied => copied?,
    }
    if let Some(target) = output {
        eprintln!("wrote {written} bytes to {}", target.display());
    }
    Ok(())
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Polls the batch until it ends, behind a progress bar; the final batch.
async fn follow(client: &Client, id: &str) -> anyhow::Result<Batch> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} [{wide_bar}] {pos}/{len}  {msg}")?
            .progress_chars("=> "),
    );
    let path = batch_path(id);
    let mut ticks = tokio::time::interval(POLL);
    let mut rate = Rate::default();
    let mut unreachable = 0;
    loop {
        ticks.tick().await;
        let batch: Batch = match client.get(&path).await {
            Ok(batch) => batch,
            Err(e @ ClientError::Transport { .. }) if unreachable < POLL_RETRIES => {
                unreachable += 1;
                bar.set_message(format!("{e}; retrying"));
                continue;
            }
            Err(e) => {
                bar.abandon();
                return Err(e.into());
            }
        };
        unreachable = 0;
        let counts = &batch.request_counts;
        let settled = counts.completed + counts.failed;
        bar.set_prefix(batch.status.clone());
        bar.set_message(progress_message(
            counts,
            rate.update(settled, Instant::now()),
        ));
        bar.set_length(counts.total);
        bar.set_position(settled);
        if is_finished(&batch.status) {
            bar.finish();
            return Ok(batch);
        }
    }
}

fn is_finished(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled" | "expired")
}

/// Lines settled per second since the first poll.
#[derive(Debug, Default)]
struct Rate {
    first: Option<(Instant, u64)>,
}

impl Rate {
    fn update(&mut self, settled: u64, now: Instant) -> Option<f64> {
        let (since, from) = *self.first.get_or_insert((now, settled));
        let seconds = now.duration_since(since).as_secs_f64();
        (seconds > 0.0 && settled > from).then(|| (settled - from) as f64 / seconds)
    }
}

/// `<completed> done, <failed> failed, <rate> lines/s, ETA <duration>`.
fn progress_message(counts: &Counts, rate: Option<f64>) -> String {
    let remaining = counts
        .total
        .saturating_sub(counts.completed + counts.failed);
    let (rate, eta) = match rate {
        Some(rate) => (
            format!("{rate:.1}"),
            humantime::format_duration(
                Duration::from_secs((remaining as f64 / rate).ceil() as u64),
            )
            .to_string(),
        ),
        None => ("-".into(), "-".into()),
    };
    format!(
        "{} done, {} failed, {rate} lines/s, ETA {eta}",
        counts.completed, counts.failed
    )
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FileObject {
    id: String,
    bytes: u64,
}

/// A batch object; only what the commands print.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Batch {
    id: String,
    status: String,
    endpoint: String,
    completion_window: String,
    input_file_id: Option<String>,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
    created_at: Option<i64>,
    in_progress_at: Option<i64>,
    expires_at: Option<i64>,
    finalizing_at: Option<i64>,
    completed_at: Option<i64>,
    failed_at: Option<i64>,
    expired_at: Option<i64>,
    cancelling_at: Option<i64>,
    cancelled_at: Option<i64>,
    request_counts: Counts,
    metadata: Option<BTreeMap<String, Value>>,
    errors: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Counts {
    total: u64,
    completed: u64,
    failed: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BatchList {
    data: Vec<Batch>,
    has_more: bool,
}

fn status_text(batch: &Batch) -> String {
    let counts = &batch.request_counts;
    let mut fields = vec![
        ("endpoint", batch.endpoint.clone()),
        ("completion window", batch.completion_window.clone()),
        (
            "requests",
            format!(
                "{} total, {} completed, {} failed",
                counts.total, counts.completed, counts.failed
            ),
        ),
        (
            "input file",
            client::or_dash(batch.input_file_id.as_deref()),
        ),
        (
            "output file",
            client::or_dash(batch.output_file_id.as_deref()),
        ),
        (
            "error file",
            client::or_dash(batch.error_file_id.as_deref()),
        ),
        ("created", client::unix_time(batch.created_at)),
    ];
    let times = [
        ("in progress", batch.in_progress_at),
        ("finalizing", batch.finalizing_at),
        ("completed", batch.completed_at),
        ("failed", batch.failed_at),
        ("cancelling", batch.cancelling_at),
        ("cancelled", batch.cancelled_at),
        ("expired", batch.expired_at),
        ("expires", batch.expires_at),
    ];
    fields.extend(
        times
            .into_iter()
            .filter(|(_, at)| at.is_some())
            .map(|(name, at)| (name, client::unix_time(at))),
    );
    if let Some(metadata) = batch.metadata.as_ref().filter(|m| !m.is_empty()) {
        let entries: Vec<String> = metadata
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect();
        fields.push(("metadata", entries.join(", ")));
    }
    let mut lines = vec![format!("batch {}  {}", batch.id, batch.status)];
    lines.extend(
        fields
            .into_iter()
            .map(|(name, value)| format!("{name:<18} {value}")),
    );
    let errors = line_errors(batch.errors.as_ref().and_then(|e| e.get("data")));
    if !errors.is_empty() {
        lines.push("errors:".into());
        lines.extend(errors.into_iter().map(|e| format!("  {e}")));
    }
    lines.join("\n")
}

fn list_text(list: &BatchList) -> String {
    if list.data.is_empty() {
        return "no batches".into();
    }
    let rows: Vec<Vec<String>> = list
        .data
        .iter()
        .map(|b| {
            let c = &b.request_counts;
            vec![
                b.id.clone(),
                b.status.clone(),
                b.endpoint.clone(),
                format!("{}/{}", c.completed + c.failed, c.total),
                c.failed.to_string(),
                client::unix_time(b.created_at),
            ]
        })
        .collect();
    let mut text = client::table(
        &["ID", "STATUS", "ENDPOINT", "DONE", "FAILED", "CREATED"],
        &rows,
    );
    if let Some(last) = list.data.last().filter(|_| list.has_more) {
        text.push_str(&format!("\n(more: --after {})", last.id));
    }
    text
}

/// `GET /v1/batches/{id}/report` (`batch_id` and `jobs` are read as `batch` and `overall` too).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Report {
    #[serde(alias = "batch_id")]
    batch: String,
    #[serde(alias = "jobs")]
    overall: Overall,
    by_metric: Vec<Group>,
    by_model: Vec<Group>,
    by_persona: Vec<Group>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Overall {
    jobs: u64,
    evaluated: u64,
    passed: u64,
    pass_rate: Option<f64>,
    mean_score: Option<f64>,
}

/// A row of a breakdown: `n` counts assertions (per metric) or targets (per model, persona).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Group {
    name: String,
    #[serde(alias = "assertions", alias = "targets")]
    n: u64,
    passed: u64,
    pass_rate: Option<f64>,
    mean_score: Option<f64>,
}

fn report_text(report: &Report) -> String {
    let overall = &report.overall;
    let mut sections = vec![format!(
        "batch {}: {} jobs, {} evaluated",
        report.batch, overall.jobs, overall.evaluated
    )];
    let all = Group {
        name: "all jobs".into(),
        n: overall.evaluated,
        passed: overall.passed,
        pass_rate: overall.pass_rate,
        mean_score: overall.mean_score,
    };
    sections.push(group_table("OVERALL", std::slice::from_ref(&all)));
    for (title, groups) in [
        ("METRIC", &report.by_metric),
        ("MODEL", &report.by_model),
        ("PERSONA", &report.by_persona),
    ] {
        if !groups.is_empty() {
            sections.push(group_table(title, groups));
        }
    }
    sections.join("\n\n")
}

fn group_table(title: &str, groups: &[Group]) -> String {
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            let rate = g
                .pass_rate
                .or_else(|| (g.n > 0).then(|| g.passed as f64 / g.n as f64));
            vec![
                g.name.clone(),
                g.n.to_string(),
                g.passed.to_string(),
                client::percent(rate),
                client::score(g.mean_score),
            ]
        })
        .collect();
    client::table(&[title, "N", "PASSED", "PASS RATE", "MEAN SCORE"], &rows)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        batch: BatchArgs,
    }

    fn parse(args: &[&str]) -> Result<BatchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("batch").chain(args.iter().copied())).map(|c| c.batch)
    }

    #[test]
    fn parses_submit_with_every_flag() {
        let args = parse(&[
            "submit",
            "lines.jsonl",
            "--endpoint",
            "/v1/chat/completions",
            "--completion-window",
            "1h",
            "--metadata",
            "team=evals",
            "--metadata",
            "run=7",
            "--watch",
            "--url",
            "http://chorus:8080",
        ])
        .unwrap();
        assert_eq!(args.api.url, "http://chorus:8080");
        let BatchCommand::Submit {
            file,
            endpoint,
            completion_window,
            metadata,
            watch,
        } = args.command
        else {
            panic!("not submit: {:?}", args.command);
        };
        assert_eq!(file, PathBuf::from("lines.jsonl"));
        assert_eq!(endpoint.as_deref(), Some("/v1/chat/completions"));
        assert_eq!(completion_window, "1h");
        assert_eq!(
            metadata,
            vec![("team".into(), "evals".into()), ("run".into(), "7".into())]
        );
        assert!(watch);
    }

    #[test]
    fn submit_defaults_and_rejections() {
        let args = parse(&["submit", "f.jsonl"]).unwrap();
        assert!(matches!(
            args.command,
            BatchCommand::Submit { endpoint: None, ref completion_window, watch: false, .. }
                if completion_window == "24h"
        ));
        assert_eq!(args.api.url, "http://127.0.0.1:8080");
        assert!(parse(&["submit", "f.jsonl", "--endpoint", "/v1/embeddings"]).is_err());
        assert!(parse(&["submit", "f.jsonl", "--metadata", "novalue"]).is_err());
        assert!(parse(&["submit"]).is_err());
    }

    #[test]
    fn parses_the_other_subcommands() {
        assert!(matches!(
            parse(&["status", "b1", "--json"]).unwrap().command,
            BatchCommand::Status { json: true, .. }
        ));
        assert!(matches!(
            parse(&["results", "b1", "--errors", "-o", "out.jsonl"])
                .unwrap()
                .command,
            BatchCommand::Results {
                errors: true,
                output: Some(_),
                ..
            }
        ));
        assert!(matches!(
            parse(&["report", "b1"]).unwrap().command,
            BatchCommand::Report { json: false, .. }
        ));
        assert!(matches!(
            parse(&["cancel", "b1"]).unwrap().command,
            BatchCommand::Cancel { .. }
        ));
        assert!(matches!(
            parse(&["list", "--limit", "5"]).unwrap().command,
            BatchCommand::List {
                limit: 5,
                after: None
            }
        ));
        assert!(matches!(
            parse(&["list", "--after", "b9"]).unwrap().command,
            BatchCommand::List { limit: 20, after: Some(ref a) } if a == "b9"
        ));
        assert!(matches!(
            parse(&["list"]).unwrap().command,
            BatchCommand::List {
                limit: 20,
                after: None
            }
        ));
    }

    #[test]
    fn metadata_entries_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_metadata("query=a=b").unwrap(),
            ("query".into(), "a=b".into())
        );
        assert_eq!(
            parse_metadata("empty=").unwrap(),
            ("empty".into(), "".into())
        );
        assert!(parse_metadata("=value").is_err());
        assert!(parse_metadata("novalue").is_err());
        let map = metadata_map(vec![("b".into(), "2".into()), ("a".into(), "1".into())]).unwrap();
        assert_eq!(json!(map), json!({"a": "1", "b": "2"}));
        assert!(metadata_map(vec![("a".into(), "1".into()), ("a".into(), "2".into())]).is_err());
    }

    #[test]
    fn the_default_endpoint_is_the_first_lines_url() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lines.jsonl");
        std::fs::write(
            &file,
            "\n{\"custom_id\": \"a\", \"method\": \"POST\", \"url\": \"/v1/chat/completions\", \"body\": {}}\n\
             {\"custom_id\": \"b\", \"method\": \"POST\", \"url\": \"/v1/jobs\", \"body\": {}}\n",
        )
        .unwrap();
        assert_eq!(default_endpoint(&file).unwrap(), "/v1/chat/completions");

        std::fs::write(&file, "{\"url\": \"/v1/embeddings\"}\n").unwrap();
        let error = format!("{:#}", default_endpoint(&file).unwrap_err());
        assert!(error.contains("`url` is `/v1/embeddings`"), "{error}");
        std::fs::write(&file, "not json\n").unwrap();
        assert!(default_endpoint(&file).is_err());
        std::fs::write(&file, "\n\n").unwrap();
        assert!(default_endpoint(&file).is_err());
        assert!(default_endpoint(&dir.path().join("missing.jsonl")).is_err());
    }

    #[test]
    fn line_errors_read_like_the_servers_messages() {
        let body = json!({"error": {"message": "the file was refused: …", "type": "invalid_request_error",
        "param": "file", "code": "invalid_file", "omitted": 0, "lines": [
            {"line": 3, "code": "invalid_json", "param": null, "message": "not JSON"},
            {"line": 5, "code": "invalid_body", "param": "body.model", "message": "unknown route"},
            {"line": null, "code": "too_many_requests", "param": null, "message": "too many lines"}
        ]}});
        assert_eq!(
            line_errors(body.pointer("/error/lines")),
            vec![
                "line 3: not JSON",
                "line 5: body.model: unknown route",
                "too many lines"
            ]
        );
        assert!(
            line_errors(json!({"error": {"message": "nope"}}).pointer("/error/lines")).is_empty()
        );
    }

    #[test]
    fn progress_shows_counts_rate_and_eta() {
        let counts = Counts {
            total: 100,
            completed: 30,
            failed: 10,
        };
        assert_eq!(
            progress_message(&counts, Some(20.0)),
            "30 done, 10 failed, 20.0 lines/s, ETA 3s"
        );
        assert_eq!(
            progress_message(&counts, None),
            "30 done, 10 failed, - lines/s, ETA -"
        );
        let mut rate = Rate::default();
        let start = Instant::now();
        assert_eq!(rate.update(40, start), None);
        assert_eq!(rate.update(60, start + Duration::from_secs(2)), Some(10.0));
    }

    #[test]
    fn status_shows_counts_files_and_set_timestamps() {
        let batch: Batch = serde_json::from_value(json!({
            "id": "batch_1", "object": "batch", "endpoint": "/v1/jobs",
            "errors": {"object": "list", "data": [{"code": "x", "line": 2, "param": null, "message": "bad url"}]},
            "input_file_id": "file-in", "completion_window": "24h", "status": "completed",
            "output_file_id": "file-out", "error_file_id": null, "created_at": 1_700_000_000,
            "in_progress_at": 1_700_000_001, "expires_at": null, "completed_at": 1_700_000_060,
            "request_counts": {"total": 3, "completed": 2, "failed": 1},
            "metadata": {"team": "evals"}
        }))
        .unwrap();
        assert_eq!(
            status_text(&batch),
            "batch batch_1  completed\n\
             endpoint           /v1/jobs\n\
             completion window  24h\n\
             requests           3 total, 2 completed, 1 failed\n\
             input file         file-in\n\
             output file        file-out\n\
             error file         -\n\
             created            2023-11-14T22:13:20Z\n\
             in progress        2023-11-14T22:13:21Z\n\
             completed          2023-11-14T22:14:20Z\n\
             metadata           team=evals\n\
             errors:\n\
             \x20 line 2: bad url"
        );
    }

    #[test]
    fn the_report_is_printed_as_tables() {
        let report: Report = serde_json::from_value(json!({
            "batch": "batch_1",
            "overall": {"jobs": 4, "evaluated": 4, "passed": 3, "pass_rate": 0.75, "mean_score": 0.8125},
            "by_metric": [
                {"name": "decision", "assertions": 4, "passed": 3, "pass_rate": 0.75, "mean_score": 0.75, "errored": 0},
                {"name": "substance", "assertions": 4, "passed": 4, "pass_rate": 1.0, "mean_score": 1.0, "errored": 0}
            ],
            "by_model": [{"name": "sim:echo", "targets": 4, "passed": 3, "pass_rate": null, "mean_score": null}],
            "by_persona": []
        }))
        .unwrap();
        assert_eq!(
            report_text(&report),
            "batch batch_1: 4 jobs, 4 evaluated\n\
             \n\
             OVERALL   N  PASSED  PASS RATE  MEAN SCORE\n\
             all jobs  4  3       75.0%      0.81\n\
             \n\
             METRIC     N  PASSED  PASS RATE  MEAN SCORE\n\
             decision   4  3       75.0%      0.75\n\
             substance  4  4       100.0%     1.00\n\
             \n\
             MODEL     N  PASSED  PASS RATE  MEAN SCORE\n\
             sim:echo  4  3       75.0%      -"
        );
    }

    #[test]
    fn the_list_is_a_table() {
        let list: BatchList = serde_json::from_value(json!({
            "object": "list", "first_id": "b2", "last_id": "b1", "has_more": true,
            "data": [{"id": "b2", "status": "in_progress", "endpoint": "/v1/jobs", "created_at": 1_700_000_000,
                      "request_counts": {"total": 10, "completed": 4, "failed": 1}}]
        }))
        .unwrap();
        assert_eq!(
            list_text(&list),
            "ID  STATUS       ENDPOINT  DONE  FAILED  CREATED\n\
             b2  in_progress  /v1/jobs  5/10  1       2023-11-14T22:13:20Z\n\
             (more: --after b2)"
        );
    }
}
