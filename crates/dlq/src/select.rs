//! A selection's criteria read from text, as `chorus dlq` flags and `/v1/admin/dlq` parameters
//! give them: a stage by its name, a point in time as RFC 3339 or a duration ago.

use chorus_core::subjects::Stage;
use chrono::{DateTime, Utc};

/// A name that is not a stage's.
#[derive(Debug, thiserror::Error)]
#[error("unknown stage `{name}`; stages are orchestrator, llm, evaluator, persister")]
pub struct UnknownStage {
    pub name: String,
}

/// A stage by its name in DLQ subjects (`llm`, `orchestrator`, …).
pub fn parse_stage(name: &str) -> Result<Stage, UnknownStage> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).map_err(|_| UnknownStage {
        name: name.to_owned(),
    })
}

/// Text that is neither a time nor a duration ago.
#[derive(Debug, thiserror::Error)]
#[error("`{input}` is neither an RFC 3339 time nor a duration ago such as `2h`")]
pub struct BadTime {
    pub input: String,
}

/// An RFC 3339 time (`2025-06-01T12:00:00Z`), or a duration ago (`90s`, `2h`, `3days`).
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, BadTime> {
    parse_time_at(text, Utc::now())
}

fn parse_time_at(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, BadTime> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    humantime::parse_duration(text)
        .ok()
        .and_then(|ago| chrono::Duration::from_std(ago).ok())
        .and_then(|ago| now.checked_sub_signed(ago))
        .ok_or_else(|| BadTime {
            input: text.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stages_and_times() {
        assert_eq!(parse_stage("llm").ok(), Some(Stage::Llm));
        assert!(parse_stage("nope").is_err_and(|e| e.to_string().contains("orchestrator")));
        let now = DateTime::parse_from_rfc3339("2025-06-01T12:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        assert_eq!(
            parse_time_at("2h", now).ok().map(|t| t.to_rfc3339()),
            Some("2025-06-01T10:00:00+00:00".into())
        );
        assert_eq!(
            parse_time_at("2025-05-31T00:00:00+02:00", now)
                .ok()
                .map(|t| t.to_rfc3339()),
            Some("2025-05-30T22:00:00+00:00".into())
        );
        assert!(parse_time_at("yesterday-ish", now).is_err());
    }
}
