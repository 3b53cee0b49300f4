//! Result lines: what a finished batch job contributes to its batch's output or error file, in
//! the format of the OpenAI Batch API.
//!
//! - A succeeded job is an output line, `{"id", "custom_id", "response": {"status_code": 200,
//!   "request_id", "body"}, "error": null}`; the body is a `chat.completion` object for a
//!   `/v1/chat/completions` line and the job as `GET /v1/jobs/{id}` shows it for a `/v1/jobs`
//!   line. An evaluation that did not pass is a result, not an error.
//! - A failed or cancelled job is an error line, `{"id", "custom_id", "response": null,
//!   "error": {"code", "message"}}`: the code is `batch_cancelled` for a cancelled job, else the
//!   job's error kind (`invalid_request`, `server_error`, `deadline_exceeded`, …). Always
//!   `response: null`, also when the provider answered with an HTTP error, so a reader finds
//!   every failure in one place.
//!
//! `id` is `batch_req_<job id without hyphens>` (the job id, hyphenated, is `request_id`).
//! Each line is built once, when the persister stores the job's terminal snapshot, and kept on
//! its row, so serving a file of 10,000 lines is one ordered read.

use chorus_core::batch::Endpoint;
use chorus_core::job::{JobState, JobStatus};
use serde::Serialize;
use serde_json::Value;

use crate::view::{JobRecord, UsageRecord};

/// One line of a batch's output file (`ok`) or error file (not `ok`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultLine {
    pub ok: bool,
    /// One JSON object, without a trailing newline.
    pub json: String,
}

/// The error code of a job that was cancelled (with its batch, or on its own).
pub const BATCH_CANCELLED: &str = "batch_cancelled";

/// The result line of a terminal job that came from a batch; `None` for any other job.
pub fn result_line(state: &JobState) -> Option<ResultLine> {
    let origin = state.origin.as_ref()?;
    let id = Some(request_id(state));
    let line = match state.status {
        JobStatus::Succeeded => {
            let body = match origin.endpoint {
                Endpoint::ChatCompletions => Body::Chat(chat_completion(state)),
                Endpoint::Jobs => Body::Job(Box::new(JobRecord::from_state(state))),
            };
            Line {
                id,
                custom_id: &origin.custom_id,
                response: Some(Response {
                    status_code: 200,
                    request_id: state.id.to_string(),
                    body,
                }),
                error: None,
            }
        }
        JobStatus::Failed | JobStatus::Cancelled => {
            let error = state.error.as_ref();
            let code = match state.status {
                JobStatus::Cancelled => BATCH_CANCELLED,
                _ => error
                    .map(|e| e.kind.as_str())
                    .filter(|k| !k.is_empty())
                    .unwrap_or("server_error"),
            };
            Line {
                id,
                custom_id: &origin.custom_id,
                response: None,
                error: Some(ErrorBody {
                    code,
                    message: error.map_or("", |e| e.message.as_str()),
                }),
            }
        }
        JobStatus::Queued | JobStatus::Running | JobStatus::Evaluating => return None,
    };
    Some(ResultLine {
        ok: line.response.is_some(),
        json: to_json(&line),
    })
}

/// The error line of a batch line that never became a job (a malformed submission).
pub fn error_line(custom_id: &str, code: &str, message: &str) -> String {
    to_json(&Line {
        id: None,
        custom_id,
        response: None,
        error: Some(ErrorBody { code, message }),
    })
}

fn request_id(state: &JobState) -> String {
    format!("batch_req_{}", state.id.as_uuid().simple())
}

/// The answer of a chat completion job (its one call) as OpenAI's `chat.completion` object: the
/// body of a batch output line and of `POST /v1/chat/completions`.
pub fn chat_completion(state: &JobState) -> ChatCompletion {
    let step = state.steps.first();
    let output = step.and_then(|s| s.output.as_ref());
    let model = output
        .map(|o| o.route.as_str())
        .filter(|r| !r.is_empty())
        .or(step.map(|s| s.route.as_str()))
        .unwrap_or_default();
    let usage = output.map(|o| o.usage).unwrap_or_default();
    let text = output.map(|o| o.text.clone()).unwrap_or_default();
    let tool_calls = output.and_then(|o| o.tool_calls.clone());
    let finished_at = state.finished_at.unwrap_or(state.updated_at);
    ChatCompletion {
        id: format!("chatcmpl-{}", state.id.as_uuid().simple()),
        object: "chat.completion",
        created: finished_at.div_euclid(1000),
        model: model.to_owned(),
        choices: [Choice {
            index: 0,
            message: Message {
                role: "assistant",
                content: (tool_calls.is_none() || !text.is_empty()).then_some(text),
                tool_calls,
            },
            finish_reason: output
                .and_then(|o| o.finish_reason.clone())
                .unwrap_or_else(|| "stop".into()),
        }],
        usage: UsageRecord::new(usage.prompt_tokens.into(), usage.completion_tokens.into()),
    }
}

fn to_json(line: &Line<'_>) -> String {
    // Every part is plain data with string keys; serializing it cannot fail.
    serde_json::to_string(line).unwrap_or_default()
}

#[derive(Serialize)]
struct Line<'a> {
    id: Option<String>,
    custom_id: &'a str,
    response: Option<Response>,
    error: Option<ErrorBody<'a>>,
}

#[derive(Serialize)]
struct Response {
    status_code: u16,
    request_id: String,
    body: Body,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Body {
    Chat(ChatCompletion),
    Job(Box<JobRecord>),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

/// OpenAI's `chat.completion` object.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-<job id without hyphens>`.
    pub id: String,
    pub object: &'static str,
    /// Unix seconds.
    pub created: i64,
    /// The route that answered.
    pub model: String,
    pub choices: [Choice; 1],
    pub usage: UsageRecord,
}

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Choice {
    pub index: u32,
    pub message: Message,
    pub finish_reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Message {
    pub role: &'static str,
    /// `null` for an answer made only of tool calls.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::batch::Origin;
    use chorus_core::job::{JobError, StepStatus};
    use chorus_core::messages::{StepOutput, Usage};
    use chorus_core::spec::JobSpec;
    use chorus_core::{JobId, Tenant};
    use serde_json::json;
    use uuid::Uuid;

    const JOB: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00ab);
    const CREATED: i64 = 1_700_000_000_000;
    const FINISHED: i64 = 1_700_000_002_500;

    fn job(endpoint: Endpoint, spec: Value) -> JobState {
        let spec: JobSpec = serde_json::from_value(spec).unwrap();
        JobState::new(
            JobId::from(JOB),
            Tenant::new("acme").unwrap(),
            spec,
            CREATED,
            None,
        )
        .with_origin(Some(Origin {
            batch: "batch_1".into(),
            custom_id: "case-7".into(),
            endpoint,
            line: 6,
        }))
    }

    fn answered(mut state: JobState, text: &str, tool_calls: Option<Value>) -> JobState {
        let step = &mut state.steps[0];
        step.status = StepStatus::Succeeded;
        step.attempts = 1;
        step.output = Some(StepOutput {
            text: text.into(),
            usage: Usage {
                prompt_tokens: 12,
                completion_tokens: 3,
            },
            latency_ms: 40,
            finish_reason: tool_calls.as_ref().map(|_| "tool_calls".into()),
            route: "backup".into(),
            cost_usd: None,
            tool_calls,
            cut: None,
        });
        state.status = JobStatus::Succeeded;
        state.finished_at = Some(FINISHED);
        state.updated_at = FINISHED;
        state
    }

    fn chat_job() -> JobState {
        job(
            Endpoint::ChatCompletions,
            json!({"model": "fast", "messages": [{"role": "user", "content": "2+2?"}]}),
        )
    }

    #[test]
    fn a_chat_completion_answer_is_a_chat_completion_object() {
        let line = result_line(&answered(chat_job(), "4", None)).unwrap();
        assert!(line.ok);
        assert_eq!(
            line.json,
            concat!(
                r#"{"id":"batch_req_019000000000700080000000000000ab","custom_id":"case-7","#,
                r#""response":{"status_code":200,"request_id":"01900000-0000-7000-8000-0000000000ab","#,
                r#""body":{"id":"chatcmpl-019000000000700080000000000000ab","object":"chat.completion","#,
                r#""created":1700000002,"model":"backup","choices":[{"index":0,"#,
                r#""message":{"role":"assistant","content":"4"},"finish_reason":"stop"}],"#,
                r#""usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}},"#,
                r#""error":null}"#
            )
        );
    }

    #[test]
    fn tool_calls_leave_the_content_null() {
        let calls = json!([{"id": "call_1", "type": "function",
            "function": {"name": "add", "arguments": "{\"a\":2,\"b\":2}"}}]);
        let mut state = answered(chat_job(), "", Some(calls.clone()));
        state.steps[0].output.as_mut().unwrap().route = String::new();
        let line = result_line(&state).unwrap();
        let value: Value = serde_json::from_str(&line.json).unwrap();
        assert_eq!(
            value["response"]["body"]["choices"][0],
            json!({"index": 0, "message": {"role": "assistant", "content": null,
                "tool_calls": calls}, "finish_reason": "tool_calls"})
        );
        // Without an answering route, the step's own names the model.
        assert_eq!(value["response"]["body"]["model"], json!("fast"));
    }

    #[test]
    fn a_jobs_answer_is_the_job_record_even_when_its_evaluation_failed() {
        let mut state = answered(
            job(
                Endpoint::Jobs,
                json!({"model": "fast", "prompt": "Grade it", "metadata": {"k": "v"}}),
            ),
            "C",
            None,
        );
        state.evaluation = Some(chorus_core::job::JobEvaluation {
            score: 0.0,
            passed: false,
            targets: Vec::new(),
        });
        let line = result_line(&state).unwrap();
        assert!(line.ok);
        assert!(!line.json.contains('\n'));
        let value: Value = serde_json::from_str(&line.json).unwrap();
        let record = serde_json::to_value(JobRecord::from_state(&state)).unwrap();
        assert_eq!(
            value,
            json!({
                "id": "batch_req_019000000000700080000000000000ab",
                "custom_id": "case-7",
                "response": {
                    "status_code": 200,
                    "request_id": "01900000-0000-7000-8000-0000000000ab",
                    "body": record,
                },
                "error": null,
            })
        );
        let body = &value["response"]["body"];
        assert_eq!(body["status"], json!("succeeded"));
        assert_eq!(body["passed"], json!(false));
        assert_eq!(body["batch_id"], json!("batch_1"));
        assert_eq!(body["custom_id"], json!("case-7"));
        assert_eq!(body["steps"][0]["output"], json!("C"));
        assert_eq!(body["finished_at"], json!("2023-11-14T22:13:22.500Z"));
    }

    #[test]
    fn failed_and_cancelled_jobs_are_error_lines() {
        let mut failed = chat_job();
        failed.status = JobStatus::Failed;
        failed.finished_at = Some(FINISHED);
        failed.error = Some(JobError {
            step: Some(0),
            kind: "invalid_request".into(),
            message: "max_tokens is too large".into(),
        });
        let line = result_line(&failed).unwrap();
        assert!(!line.ok);
        assert_eq!(
            line.json,
            concat!(
                r#"{"id":"batch_req_019000000000700080000000000000ab","custom_id":"case-7","#,
                r#""response":null,"error":{"code":"invalid_request","#,
                r#""message":"max_tokens is too large"}}"#
            )
        );

        let mut cancelled = failed.clone();
        cancelled.status = JobStatus::Cancelled;
        cancelled.error = Some(JobError {
            step: None,
            kind: "cancelled".into(),
            message: "the batch was cancelled".into(),
        });
        let value: Value = serde_json::from_str(&result_line(&cancelled).unwrap().json).unwrap();
        assert_eq!(
            value["error"],
            json!({"code": "batch_cancelled", "message": "the batch was cancelled"})
        );

        let mut deadline = failed;
        deadline.error = Some(JobError {
            step: Some(0),
            kind: "deadline_exceeded".into(),
            message: "not started before the deadline".into(),
        });
        let value: Value = serde_json::from_str(&result_line(&deadline).unwrap().json).unwrap();
        assert_eq!(value["error"]["code"], json!("deadline_exceeded"));
    }

    #[test]
    fn only_terminal_batch_jobs_have_a_line() {
        let running = chat_job();
        assert_eq!(result_line(&running), None);
        let mut alone = answered(chat_job(), "4", None);
        alone.origin = None;
        assert_eq!(result_line(&alone), None);
    }

    #[test]
    fn a_line_that_never_became_a_job() {
        assert_eq!(
            error_line("case-9", "invalid_request", "body.model: required"),
            r#"{"id":null,"custom_id":"case-9","response":null,"error":{"code":"invalid_request","message":"body.model: required"}}"#
        );
    }
}
