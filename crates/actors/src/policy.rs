//! The failure policy (DESIGN.md §16): what a role does with a message whose handling failed.
//!
//! Every role asks this module, and only this module, from a typed error:
//! - **retry here** — the failure is [`Class::Transient`] (connection lost, leader election,
//!   database down) or [`Class::Systemic`] (nothing works until an operator acts, and no message
//!   is to blame: storage full, schema behind). The action is repeated in place, after a growing
//!   delay, for as long as the failure lasts, with the message touched so its stage keeps it
//!   alive: waiting uses up no delivery and loses nothing. A draining role stops retrying and
//!   gives the message back at once.
//! - **redeliver later** — a failure it cannot classify ([`Class::Unknown`]) after a few tries
//!   here, and an LLM call whose provider kept failing: NAK with a delay. That uses a delivery,
//!   so the consumer's `max_deliver` bounds what keeps failing for the same message, and the DLQ
//!   watcher files it in the end.
//! - **fail** — the message's own data can never succeed ([`Class::Poison`]: too large for the
//!   bus, refused by the database, undecodable): its job alone fails, with the reason, and the
//!   message goes to the DLQ.
//!
//! Every delay a role waits before trying a message again is here. (How a single provider call is
//! retried — its backoff, `retry-after` — is `chorus_llm::retry`'s business: that is one action,
//! repeated inside one delivery.)

use std::future::Future;
use std::time::Duration;

use chorus_bus::{BusError, BusErrorKind, Delivery};
use chorus_core::codec::CodecError;
use chorus_core::config::LlmConfig;
use chorus_store::{StoreError, StoreErrorKind};
use chorus_telemetry::names;
use tokio_util::sync::CancellationToken;

/// What a failure says about the message that met it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// The same action succeeds later by itself.
    Transient,
    /// Nothing succeeds until an operator acts, and no message is to blame.
    Systemic,
    /// This message's data never succeeds; other messages do.
    Poison,
    /// It cannot be told.
    Unknown,
}

impl Class {
    pub const ALL: [Class; 4] = [Self::Transient, Self::Systemic, Self::Poison, Self::Unknown];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Systemic => "systemic",
            Self::Poison => "poison",
            Self::Unknown => "unknown",
        }
    }
}

/// An error the policy can classify.
pub trait Classified: std::fmt::Display {
    fn class(&self) -> Class;

    /// The error kind recorded when the failure fails a job (`too_large`, `storage_rejected`, …).
    fn failure_kind(&self) -> &'static str;
}

impl Classified for BusError {
    fn class(&self) -> Class {
        match self.kind() {
            // A full stream drains as its consumers work: the same publish succeeds later.
            BusErrorKind::Unavailable | BusErrorKind::Conflict | BusErrorKind::Full => {
                Class::Transient
            }
            BusErrorKind::NotFound => Class::Systemic,
            BusErrorKind::TooLarge | BusErrorKind::Codec => Class::Poison,
            BusErrorKind::Refused => Class::Unknown,
        }
    }

    fn failure_kind(&self) -> &'static str {
        match self.kind() {
            BusErrorKind::TooLarge => "too_large",
            BusErrorKind::Codec => "undecodable",
            _ => "bus_error",
        }
    }
}

impl Classified for StoreError {
    fn class(&self) -> Class {
        match self.kind() {
            StoreErrorKind::Unavailable => Class::Transient,
            StoreErrorKind::Broken => Class::Systemic,
            StoreErrorKind::Rejected => Class::Poison,
        }
    }

    fn failure_kind(&self) -> &'static str {
        "storage_rejected"
    }
}

impl Classified for chorus_bus::dlq::DlqError {
    fn class(&self) -> Class {
        match self {
            Self::Bus(e) => e.class(),
            Self::NotADeadLetter { .. } => Class::Poison,
            Self::BadSequence { .. } => Class::Unknown,
        }
    }

    fn failure_kind(&self) -> &'static str {
        match self {
            Self::Bus(e) => e.failure_kind(),
            Self::NotADeadLetter { .. } => "undecodable",
            Self::BadSequence { .. } => "dlq_error",
        }
    }
}

impl Classified for CodecError {
    fn class(&self) -> Class {
        Class::Poison
    }

    fn failure_kind(&self) -> &'static str {
        "undecodable"
    }
}

/// What to do with the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Try the same action again here after the delay.
    RetryHere(Duration),
    /// NAK it, to come back after the delay (this uses a delivery).
    Redeliver(Duration),
    /// Give up: fail its job with the reason, and file the message in the DLQ.
    Fail,
}

/// Shows `stage`'s failure counters at zero from its start, so a dashboard's rates have series.
pub fn register(stage: &'static str) {
    for class in Class::ALL {
        metrics::counter!(names::STAGE_FAILURES, "stage" => stage, "class" => class.as_str())
            .absolute(0);
    }
}

/// Tries of an unclassified failure made here before the message is redelivered.
const UNKNOWN_TRIES: u32 = 5;

/// The verdict on a failure of `class` after `tries` tries of the action (from 1) on the
/// message's `delivered`-th delivery.
pub fn verdict(class: Class, tries: u32, delivered: u64) -> Verdict {
    match class {
        Class::Transient => Verdict::RetryHere(backoff(tries, ms(100), ms(5_000))),
        // Capped well below the shortest AckWait: each try touches the message.
        Class::Systemic => Verdict::RetryHere(backoff(tries, ms(1_000), ms(10_000))),
        Class::Poison => Verdict::Fail,
        Class::Unknown if tries < UNKNOWN_TRIES => {
            Verdict::RetryHere(backoff(tries, ms(250), ms(5_000)))
        }
        Class::Unknown => Verdict::Redeliver(redelivery(delivered)),
    }
}

/// How long a message the policy gives back waits before its `delivered`+1-th delivery: 1 s
/// doubling per delivery, up to 30 s.
pub fn redelivery(delivered: u64) -> Duration {
    backoff(
        u32::try_from(delivered).unwrap_or(u32::MAX),
        ms(1_000),
        ms(30_000),
    )
}

/// How the policy gave up on an action.
#[derive(Debug)]
pub struct GaveUp<E> {
    pub error: E,
    /// [`Verdict::Redeliver`] or [`Verdict::Fail`].
    pub verdict: Verdict,
}

impl<E> GaveUp<E> {
    /// Gives `delivery` back when the verdict is [`Verdict::Redeliver`] (a NAK with its delay)
    /// and answers `None`; on [`Verdict::Fail`], hands the delivery and the error back to fail
    /// with.
    pub async fn give_back(self, delivery: Delivery) -> Option<(Delivery, E)> {
        match self.verdict {
            Verdict::Redeliver(delay) => {
                let _ = delivery.nak(Some(delay)).await;
                None
            }
            Verdict::RetryHere(_) | Verdict::Fail => Some((delivery, self.error)),
        }
    }
}

/// Runs `action` until it succeeds or the policy gives up on its failure. Failures to retry here
/// are retried after the policy's delay, touching `delivery` at each try so its stage keeps it;
/// once `stop` is cancelled (the role is draining) a failure is given up as
/// [`Verdict::Redeliver`] with no delay, so another process takes the message at once.
pub async fn persist<T, E: Classified, F: Future<Output = Result<T, E>>>(
    stage: &'static str,
    what: &str,
    deliveries: &[&Delivery],
    stop: &CancellationToken,
    mut action: impl FnMut() -> F,
) -> Result<T, GaveUp<E>> {
    let delivered = deliveries
        .iter()
        .map(|d| d.info().delivered)
        .max()
        .unwrap_or(1);
    let mut tries = 0;
    loop {
        tries += 1;
        for delivery in deliveries {
            delivery.touch();
        }
        let error = match action().await {
            Ok(value) => {
                if tries > 1 {
                    tracing::info!(stage, what, tries, "succeeded after retrying");
                }
                return Ok(value);
            }
            Err(error) => error,
        };
        let class = error.class();
        let verdict = match verdict(class, tries, delivered) {
            Verdict::RetryHere(_) if stop.is_cancelled() => Verdict::Redeliver(Duration::ZERO),
            verdict => verdict,
        };
        metrics::counter!(names::STAGE_FAILURES, "stage" => stage, "class" => class.as_str())
            .increment(1);
        let Verdict::RetryHere(delay) = verdict else {
            tracing::warn!(stage, what, class = class.as_str(), %error, ?verdict, "giving up");
            return Err(GaveUp { error, verdict });
        };
        // Said once when the trouble starts, then at most every few minutes.
        if tries == 1 || tries % 30 == 0 {
            tracing::warn!(stage, what, class = class.as_str(), tries, %error, ?delay, "failed; retrying here");
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => {}
        }
    }
}

/// How long to NAK an LLM call whose provider (and every fallback) kept failing, for its
/// `delivered`-th delivery (from 1): `llm.nak_delay` doubling per delivery up to
/// `llm.nak_max_delay`, and never shorter than the provider's `retry-after`.
pub fn provider_redelivery(
    config: &LlmConfig,
    delivered: u64,
    retry_after: Option<Duration>,
) -> Duration {
    let doublings = u32::try_from(delivered.saturating_sub(1)).unwrap_or(u32::MAX);
    let backoff = config
        .nak_delay
        .saturating_mul(2_u32.saturating_pow(doublings))
        .min(config.nak_max_delay);
    backoff.max(retry_after.unwrap_or_default())
}

/// `min` doubling per try after the first, up to `max`, with up to a quarter of jitter so that
/// processes retrying the same outage do not retry in step.
fn backoff(tries: u32, min: Duration, max: Duration) -> Duration {
    let doublings = tries.saturating_sub(1).min(16);
    let delay = min.saturating_mul(1 << doublings).min(max);
    let jitter = delay / 4;
    delay - jitter.mul_f64(rand::random::<f64>())
}

const fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_and_systemic_failures_are_retried_here_with_growing_capped_delays() {
        let delay = |class, tries| match verdict(class, tries, 1) {
            Verdict::RetryHere(delay) => delay,
            other => panic!("{class:?} after {tries} tries: {other:?}"),
        };
        assert!(delay(Class::Transient, 1) <= ms(100));
        assert!(delay(Class::Transient, 4) > ms(500));
        assert!(delay(Class::Transient, 1_000) <= ms(5_000));
        assert!(delay(Class::Systemic, 1_000) <= ms(10_000));
        assert!(delay(Class::Systemic, 1) >= ms(750));
    }

    #[test]
    fn poison_fails_at_once_and_unknown_is_redelivered_after_a_few_tries() {
        assert_eq!(verdict(Class::Poison, 1, 1), Verdict::Fail);
        assert!(matches!(
            verdict(Class::Unknown, UNKNOWN_TRIES - 1, 1),
            Verdict::RetryHere(_)
        ));
        assert!(matches!(
            verdict(Class::Unknown, UNKNOWN_TRIES, 3),
            Verdict::Redeliver(d) if d > ms(2_000) && d <= ms(4_000)
        ));
    }

    #[test]
    fn a_provider_redelivery_doubles_to_its_cap_and_honours_retry_after() {
        let config = LlmConfig {
            nak_delay: Duration::from_secs(1),
            nak_max_delay: Duration::from_secs(8),
            ..LlmConfig::default()
        };
        let delays: Vec<u64> = (1..=5)
            .map(|n| provider_redelivery(&config, n, None).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 8]);
        assert_eq!(
            provider_redelivery(&config, 1, Some(Duration::from_secs(20))),
            Duration::from_secs(20)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn persist_retries_transient_failures_until_they_pass_and_stops_when_draining() {
        #[derive(Debug)]
        struct Flaky(Class);
        impl std::fmt::Display for Flaky {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
        impl Classified for Flaky {
            fn class(&self) -> Class {
                self.0
            }
            fn failure_kind(&self) -> &'static str {
                "flaky"
            }
        }
        let stop = CancellationToken::new();
        let calls = std::sync::atomic::AtomicU32::new(0);
        let result = persist("test", "flaky", &[], &stop, || async {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if n < 20 {
                Err(Flaky(Class::Transient))
            } else {
                Ok(n)
            }
        })
        .await;
        assert_eq!(
            result.ok(),
            Some(20),
            "retried as long as the failure lasted"
        );

        let poison = persist("test", "poison", &[], &stop, || async {
            Err::<(), _>(Flaky(Class::Poison))
        })
        .await;
        assert!(matches!(
            poison,
            Err(GaveUp {
                verdict: Verdict::Fail,
                ..
            })
        ));

        stop.cancel();
        let draining = persist("test", "draining", &[], &stop, || async {
            Err::<(), _>(Flaky(Class::Transient))
        })
        .await;
        assert!(matches!(
            draining,
            Err(GaveUp { verdict: Verdict::Redeliver(d), .. }) if d.is_zero()
        ));
    }
}
