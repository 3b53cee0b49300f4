//! What the mock keeps of each model: its scripted behaviour, the requests it received
//! ([`RecordedRequest`], all their headers included) and its counts ([`ModelStats`]: per second,
//! by outcome, and in flight); and [`most_in_window`], the figure a rate limit is judged by.
//!
//! Everything is in memory and shared by the server's handlers and its [`MockLlm`] handle.
//! Requests are capped per model; their arrival times are not, since a rate check needs them all.
//!
//! [`MockLlm`]: crate::MockLlm

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::behaviour::{Behaviour, Fault};

/// Requests kept per model for [`MockLlm::requests`](crate::MockLlm::requests); older ones are
/// dropped.
const RECORDED_PER_MODEL: usize = 10_000;

/// What the mock saw of one model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelStats {
    pub requests: u64,
    /// Unix second → requests received in it.
    pub per_second: BTreeMap<u64, u64>,
    /// What the mock did → how often: `ok`, `slow`, a status (`429`), `hang`, `reset`,
    /// `malformed`, `truncated`, `content_filter`, or `invalid` for a request the real API refuses.
    pub outcomes: BTreeMap<String, u64>,
    /// Calls received and not yet answered: from their arrival until their response (the head
    /// of a streamed one) is handed to the server, or the call is dropped.
    #[serde(default)]
    pub in_flight: u64,
    /// The most calls that were in flight at once.
    #[serde(default)]
    pub most_in_flight: u64,
}

impl ModelStats {
    /// The most requests in any `seconds` consecutive wall-clock seconds.
    pub fn max_in_window(&self, seconds: u64) -> u64 {
        let seconds = seconds.max(1);
        self.per_second
            .keys()
            .map(|&start| {
                self.per_second
                    .range(start..start + seconds)
                    .map(|(_, n)| n)
                    .sum::<u64>()
            })
            .max()
            .unwrap_or(0)
    }
}

/// The most of `arrivals` that fall in any span of `window`, sliding the span over every arrival:
/// the figure a rate limit is judged by.
pub fn most_in_window(arrivals: &[SystemTime], window: Duration) -> usize {
    let mut arrivals = arrivals.to_vec();
    arrivals.sort_unstable();
    let mut most = 0;
    let mut start = 0;
    for (end, at) in arrivals.iter().enumerate() {
        while at.duration_since(arrivals[start]).unwrap_or_default() >= window {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

/// One request as the mock received it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// Path and query.
    pub path: String,
    /// Lower-case names; authentication headers included.
    pub headers: BTreeMap<String, String>,
    /// `null` when the body was not JSON.
    pub body: Value,
    pub received_at: SystemTime,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// One model: how it answers, and what it saw.
#[derive(Default)]
pub(crate) struct ModelState {
    pub(crate) behaviour: Behaviour,
    pub(crate) stats: ModelStats,
    pub(crate) requests: VecDeque<RecordedRequest>,
    /// When every request arrived (not capped like `requests`: rate checks need them all).
    pub(crate) arrivals: Vec<SystemTime>,
}

impl ModelState {
    /// Records `request` and decides its fault: none for a request the real API refuses
    /// (`refused`), else the behaviour's next. Counts what the mock does with it.
    pub(crate) fn record(&mut self, request: RecordedRequest, refused: bool) -> Option<Fault> {
        let received_at = request.received_at;
        self.stats.requests += 1;
        self.stats.in_flight += 1;
        self.stats.most_in_flight = self.stats.most_in_flight.max(self.stats.in_flight);
        *self
            .stats
            .per_second
            .entry(unix_secs(received_at))
            .or_default() += 1;
        if self.requests.len() == RECORDED_PER_MODEL {
            self.requests.pop_front();
        }
        self.requests.push_back(request);
        self.arrivals.push(received_at);
        let fault = match refused {
            false => self.behaviour.next_fault(),
            true => None,
        };
        let outcome = match (refused, &fault) {
            (true, _) => "invalid".to_owned(),
            (false, Some(fault)) => fault.label(),
            (false, None) => "ok".to_owned(),
        };
        *self.stats.outcomes.entry(outcome).or_default() += 1;
        fault
    }

    /// A call [`Self::record`] counted in flight is over: answered, or dropped.
    pub(crate) fn finished(&mut self) {
        self.stats.in_flight = self.stats.in_flight.saturating_sub(1);
    }
}

/// The mock's memory: every model by name, and the counter that numbers answers.
#[derive(Default)]
pub(crate) struct Models {
    models: Mutex<HashMap<String, ModelState>>,
    ids: AtomicU64,
}

impl Models {
    /// The models. A poisoned lock is taken over: nothing panics while holding it, and a mock
    /// that stopped answering would only fail every call after it.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, ModelState>> {
        self.models.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on `model`'s state, created (answering by default) if it is new.
    pub(crate) fn with_model<T>(&self, model: &str, f: impl FnOnce(&mut ModelState) -> T) -> T {
        f(self.lock().entry(model.to_owned()).or_default())
    }

    pub(crate) fn script(&self, model: &str, behaviour: Behaviour) {
        self.with_model(model, |m| m.behaviour = behaviour);
    }

    /// The stats of every model that received a request.
    pub(crate) fn stats(&self) -> BTreeMap<String, ModelStats> {
        self.lock()
            .iter()
            .filter(|(_, m)| m.stats.requests > 0)
            .map(|(name, m)| (name.clone(), m.stats.clone()))
            .collect()
    }

    pub(crate) fn reset(&self) {
        self.lock().clear();
    }

    /// A new answer id, from 1.
    pub(crate) fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed) + 1
    }
}

pub(crate) fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_window_slides_over_every_arrival() {
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        let arrivals = [at(0), at(900), at(1_000), at(1_100), at(1_950), at(3_000)];
        // 900..1,100 and 1,000..1,950 hold three each; 900..1,950 is longer than a second.
        assert_eq!(most_in_window(&arrivals, Duration::from_secs(1)), 3);
        assert_eq!(most_in_window(&arrivals, Duration::from_millis(100)), 1);
        assert_eq!(most_in_window(&arrivals, Duration::from_secs(10)), 6);
        assert_eq!(most_in_window(&[], Duration::from_secs(1)), 0);
    }

    #[test]
    fn windows_sum_consecutive_seconds() {
        let stats = ModelStats {
            per_second: BTreeMap::from([(10, 5), (11, 7), (13, 4), (70, 9)]),
            ..ModelStats::default()
        };
        assert_eq!(stats.max_in_window(1), 9);
        assert_eq!(stats.max_in_window(2), 12);
        assert_eq!(stats.max_in_window(4), 16);
        assert_eq!(stats.max_in_window(60), 20);
        assert_eq!(stats.max_in_window(61), 25);
        assert_eq!(ModelStats::default().max_in_window(60), 0);
    }
}
