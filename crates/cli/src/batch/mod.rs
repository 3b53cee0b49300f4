//! `chorus batch submit|status|results|report|cancel|list`: batches over the REST API, in the
//! shape of OpenAI's Batch API (`/v1/files`, `/v1/batches`).
//!
//! `submit` uploads the JSONL file (multipart, streamed from disk) and creates the batch; its
//! endpoint defaults to the `url` of the file's first line. `submit --watch` polls the batch every
//! 500 ms behind a progress bar on stderr, so stdout carries only the batch id and the final
//! summary. Answers are read leniently (missing fields default, unknown ones are ignored).
//!
//! Here the commands; [`api`] holds the answers they read, [`render`] how they print them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::multipart::{Form, Part};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::client::{ApiArgs, Client, ClientError};

mod api;
mod render;

use api::{Batch, BatchList, FileObject};
use render::{Rate, line_errors, list_text, progress_message, report_text, status_text};

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
}
