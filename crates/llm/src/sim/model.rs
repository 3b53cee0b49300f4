//! The simulator's model names: `<kind>[?option=value&option=value]`, parsed by a pure function
//! so the edge can reject a bad name when a job is submitted, with a message listing what is valid.

use std::time::Duration;

const KINDS: &str = "`echo`, `json` or `lorem`";
const OPTIONS: &str = "`latency`, `fail`, `error`, `retry_after` or `tokens`";
const STATUSES: [u16; 7] = [429, 500, 502, 503, 529, 400, 401];
const ERRORS: &str = "one of 429, 500, 502, 503, 529, 400, 401, timeout or malformed";
const TOKENS: &str = "a whole number from 1 to 100000";
const DEFAULT_TOKENS: u32 = 64;
const MAX_TOKENS: u32 = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimKind {
    /// Text derived from the last user message and the system prompt.
    Echo,
    /// JSON: an instance of the requested schema, or `{"answer": .., "sim": true}`.
    Json,
    /// `tokens` deterministic filler words.
    Lorem,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Latency {
    Fixed(Duration),
    /// Uniform in `min..=max`, drawn from the request's seed key.
    Uniform(Duration, Duration),
}

/// A failure every call returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimError {
    Status(u16),
    /// Never answers; the caller's timeout ends the call.
    Timeout,
    /// Answers with a body a real client could not parse.
    Malformed,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SimModel {
    pub kind: SimKind,
    pub latency: Latency,
    /// Probability in 0..=1 that a call fails with a retryable 500.
    pub fail: f64,
    pub error: Option<SimError>,
    /// Sent with 429 and 529 errors.
    pub retry_after: Duration,
    /// Words of a `lorem` answer.
    pub tokens: u32,
}

/// Why a sim model name does not parse; the message lists what is valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SimModelError {
    #[error("empty sim model: use {KINDS}, optionally followed by `?option=value&…`")]
    Empty,
    #[error("unknown sim kind `{kind}`: use {KINDS}")]
    UnknownKind { kind: String },
    #[error("unknown sim option `{option}`: use {OPTIONS}")]
    UnknownOption { option: String },
    #[error("sim option `{option}` needs a value (`{option}=…`)")]
    NoValue { option: String },
    #[error("sim option `{option}` is given twice")]
    Twice { option: String },
    #[error("bad value `{value}` for sim option `{option}`: expected {expected}")]
    BadValue {
        option: String,
        value: String,
        expected: &'static str,
    },
    #[error("sim option `tokens` applies only to `lorem`")]
    TokensWithoutLorem,
    #[error("give sim option `error` or `fail`, not both")]
    ErrorAndFail,
    #[error("sim option `retry_after` applies only with `error=429` or `error=529`")]
    RetryAfterWithoutThrottling,
}

impl SimModel {
    pub fn parse(model: &str) -> Result<Self, SimModelError> {
        let (kind, query) = model.split_once('?').unwrap_or((model, ""));
        let kind = match kind {
            "echo" => SimKind::Echo,
            "json" => SimKind::Json,
            "lorem" => SimKind::Lorem,
            "" => return Err(SimModelError::Empty),
            other => {
                return Err(SimModelError::UnknownKind { kind: other.into() });
            }
        };
        let mut sim = Self {
            kind,
            latency: Latency::Fixed(Duration::ZERO),
            fail: 0.0,
            error: None,
            retry_after: Duration::from_secs(1),
            tokens: DEFAULT_TOKENS,
        };
        let mut seen: Vec<&str> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let Some((name, value)) = pair.split_once('=') else {
                return Err(SimModelError::NoValue {
                    option: pair.into(),
                });
            };
            if seen.contains(&name) {
                return Err(SimModelError::Twice {
                    option: name.into(),
                });
            }
            seen.push(name);
            let bad = |expected: &'static str| SimModelError::BadValue {
                option: name.into(),
                value: value.into(),
                expected,
            };
            match name {
                "latency" => {
                    sim.latency = parse_latency(value).ok_or_else(|| {
                        bad("a duration like `50ms` or a range like `10ms..200ms`")
                    })?;
                }
                "fail" => {
                    sim.fail = value
                        .parse()
                        .ok()
                        .filter(|p| (0.0..=1.0).contains(p))
                        .ok_or_else(|| bad("a probability from 0 to 1, like `0.5`"))?;
                }
                "error" => {
                    sim.error = Some(match value {
                        "timeout" => SimError::Timeout,
                        "malformed" => SimError::Malformed,
                        _ => value
                            .parse()
                            .ok()
                            .filter(|status| STATUSES.contains(status))
                            .map(SimError::Status)
                            .ok_or_else(|| bad(ERRORS))?,
                    });
                }
                "retry_after" => {
                    sim.retry_after = humantime::parse_duration(value)
                        .map_err(|_| bad("a duration like `2s`"))?;
                }
                "tokens" => {
                    sim.tokens = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_TOKENS).contains(n))
                        .ok_or_else(|| bad(TOKENS))?;
                }
                other => {
                    return Err(SimModelError::UnknownOption {
                        option: other.into(),
                    });
                }
            }
        }
        if seen.contains(&"tokens") && kind != SimKind::Lorem {
            return Err(SimModelError::TokensWithoutLorem);
        }
        if seen.contains(&"fail") && sim.error.is_some() {
            return Err(SimModelError::ErrorAndFail);
        }
        let throttles = matches!(sim.error, Some(SimError::Status(429 | 529)));
        if seen.contains(&"retry_after") && !throttles {
            return Err(SimModelError::RetryAfterWithoutThrottling);
        }
        Ok(sim)
    }
}

fn parse_latency(value: &str) -> Option<Latency> {
    match value.split_once("..") {
        None => humantime::parse_duration(value).ok().map(Latency::Fixed),
        Some((min, max)) => {
            let min = humantime::parse_duration(min).ok()?;
            let max = humantime::parse_duration(max).ok()?;
            (min <= max).then_some(Latency::Uniform(min, max))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn parses_kinds_with_defaults() {
        let echo = SimModel::parse("echo").unwrap();
        assert_eq!(echo.kind, SimKind::Echo);
        assert_eq!(echo.latency, Latency::Fixed(Duration::ZERO));
        assert_eq!((echo.fail, echo.error, echo.tokens), (0.0, None, 64));
        assert_eq!(echo.retry_after, Duration::from_secs(1));
        assert_eq!(SimModel::parse("json?").unwrap().kind, SimKind::Json);
        assert_eq!(SimModel::parse("lorem?tokens=5").unwrap().tokens, 5);
    }

    #[test]
    fn parses_options() {
        let m = SimModel::parse("echo?latency=10ms..200ms&fail=0.25").unwrap();
        assert_eq!(m.latency, Latency::Uniform(ms(10), ms(200)));
        assert_eq!(m.fail, 0.25);
        let m = SimModel::parse("json?latency=50ms&error=429&retry_after=2s").unwrap();
        assert_eq!(m.latency, Latency::Fixed(ms(50)));
        assert_eq!(m.error, Some(SimError::Status(429)));
        assert_eq!(m.retry_after, Duration::from_secs(2));
        for (value, error) in [
            ("500", SimError::Status(500)),
            ("529", SimError::Status(529)),
            ("401", SimError::Status(401)),
            ("timeout", SimError::Timeout),
            ("malformed", SimError::Malformed),
        ] {
            assert_eq!(
                SimModel::parse(&format!("echo?error={value}"))
                    .unwrap()
                    .error,
                Some(error)
            );
        }
    }

    #[test]
    fn the_token_bound_is_the_one_the_error_names() {
        assert!(TOKENS.ends_with(&MAX_TOKENS.to_string()));
        assert!(SimModel::parse(&format!("lorem?tokens={MAX_TOKENS}")).is_ok());
        assert_eq!(
            SimModel::parse(&format!("lorem?tokens={}", MAX_TOKENS + 1)),
            Err(SimModelError::BadValue {
                option: "tokens".into(),
                value: (MAX_TOKENS + 1).to_string(),
                expected: TOKENS
            })
        );
    }

    #[test]
    fn errors_say_what_is_wrong_and_what_is_valid() {
        let cases = [
            (
                "",
                "empty sim model: use `echo`, `json` or `lorem`, optionally followed by `?option=value&…`",
            ),
            (
                "gpt-4o",
                "unknown sim kind `gpt-4o`: use `echo`, `json` or `lorem`",
            ),
            (
                "echo?speed=1",
                "unknown sim option `speed`: use `latency`, `fail`, `error`, `retry_after` or `tokens`",
            ),
            ("echo?fail", "sim option `fail` needs a value (`fail=…`)"),
            ("echo?fail=0.1&fail=0.2", "sim option `fail` is given twice"),
            (
                "echo?fail=2",
                "bad value `2` for sim option `fail`: expected a probability from 0 to 1, like `0.5`",
            ),
            (
                "echo?latency=fast",
                "bad value `fast` for sim option `latency`: expected a duration like `50ms` or a range like `10ms..200ms`",
            ),
            (
                "echo?latency=200ms..10ms",
                "bad value `200ms..10ms` for sim option `latency`: expected a duration like `50ms` or a range like `10ms..200ms`",
            ),
            (
                "echo?error=418",
                "bad value `418` for sim option `error`: expected one of 429, 500, 502, 503, 529, 400, 401, timeout or malformed",
            ),
            (
                "echo?error=429&retry_after=soon",
                "bad value `soon` for sim option `retry_after`: expected a duration like `2s`",
            ),
            (
                "lorem?tokens=0",
                "bad value `0` for sim option `tokens`: expected a whole number from 1 to 100000",
            ),
            (
                "echo?tokens=5",
                "sim option `tokens` applies only to `lorem`",
            ),
            (
                "echo?fail=0.5&error=500",
                "give sim option `error` or `fail`, not both",
            ),
            (
                "echo?error=500&retry_after=1s",
                "sim option `retry_after` applies only with `error=429` or `error=529`",
            ),
        ];
        for (model, expected) in cases {
            assert_eq!(
                SimModel::parse(model).unwrap_err().to_string(),
                expected,
                "{model}"
            );
        }
    }
}
