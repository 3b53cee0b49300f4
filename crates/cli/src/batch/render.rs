//! How `chorus batch` prints: a batch's status, a list of batches, a report's tables, the
//! progress line of `submit --watch`, and the line problems of a refused file.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::api::{Batch, BatchList, Counts, Group, Report};
use crate::client;

pub(super) fn status_text(batch: &Batch) -> String {
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

pub(super) fn list_text(list: &BatchList) -> String {
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

pub(super) fn report_text(report: &Report) -> String {
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

/// Line problems as the API lists them (`[{"line", "code", "param", "message"}]`), one string
/// each: `line 3: body.model: unknown route`.
pub(super) fn line_errors(list: Option<&Value>) -> Vec<String> {
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

/// Lines settled per second since the first poll.
#[derive(Debug, Default)]
pub(super) struct Rate {
    first: Option<(Instant, u64)>,
}

impl Rate {
    pub(super) fn update(&mut self, settled: u64, now: Instant) -> Option<f64> {
        let (since, from) = *self.first.get_or_insert((now, settled));
        let seconds = now.duration_since(since).as_secs_f64();
        (seconds > 0.0 && settled > from).then(|| (settled - from) as f64 / seconds)
    }
}

/// `<completed> done, <failed> failed, <rate> lines/s, ETA <duration>`.
pub(super) fn progress_message(counts: &Counts, rate: Option<f64>) -> String {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
