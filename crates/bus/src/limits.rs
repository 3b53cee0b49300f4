//! Route limits shared by every process that calls the route: requests per minute, tokens per
//! minute, calls in flight, and a pause after a provider's 429 — all state in the
//! `<prefix>_limits` KV bucket, none divided by a pod count.
//!
//! Rates use GCRA with no burst allowance: the bucket holds each route's theoretical arrival time
//! (TAT) and a request is admitted once the TAT has passed, moving it on by 60 s / rpm, with a
//! compare-and-set so two processes cannot take the same slot. Requests are thus spaced at least
//! 60 s / rpm apart, and any window of W seconds admits at most ⌊W·rpm/60⌋ + 1 of them. Tokens
//! work the same way, reserved on an estimate and reconciled with the provider's count. Calls in
//! flight are leases (`slot.<route>.<n>`) that expire unless renewed, so a process that dies
//! holding one gives it back within [`LEASE_TTL`].

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::{CreateErrorKind, Operation, Store, UpdateErrorKind};
use chorus_core::ids::now_millis;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::{Bus, BusError, BusErrorKind};

/// How long a concurrency lease outlives the process that stops renewing it.
pub const LEASE_TTL: Duration = Duration::from_secs(15);

/// How long a process trusts the last pause it read before reading the route's state again: a
/// pause another process sets (after a provider's 429) holds calls here at most this much later;
/// one this process sets holds them at once. Saves a KV round trip per call on a route without a
/// request rate, whose admission is only the pause.
pub const PAUSE_FRESH: Duration = Duration::from_millis(200);

/// The limits of one route; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteLimits {
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub max_concurrency: Option<u32>,
}

impl RouteLimits {
    /// Whether admission takes a slot processes contend for (a request rate, a concurrency
    /// cap): all that band claims ([`crate::claims`]) can order. Without either, admission only
    /// waits out a pause, which holds every process alike.
    pub fn has_slots(&self) -> bool {
        self.rpm.is_some() || self.max_concurrency.is_some()
    }
}

/// The limits bucket.
#[derive(Clone)]
pub struct Limits {
    bus: Bus,
    kv: Store,
    lease_ttl: Duration,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("bucket", &self.kv.name)
            .finish()
    }
}

/// A route's rate state, in microseconds since the epoch.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct RateState {
    /// Next request slot.
    requests: i64,
    /// When the token budget catches up.
    tokens: i64,
    /// No calls before this (a provider's retry-after).
    paused_until: i64,
}

impl Limits {
    pub async fn open(bus: &Bus) -> Result<Self, BusError> {
        let bucket = bus.subjects.limits_bucket();
        let kv = bus
            .js
            .get_key_value(bucket)
            .await
            .map_err(|e| BusError::request("open the limits bucket", e))?;
        Ok(Self {
            bus: bus.clone(),
            kv,
            lease_ttl: LEASE_TTL,
        })
    }

    /// Shorter leases, for tests of what happens when a holder dies.
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    pub fn route(&self, name: &str, limits: RouteLimits) -> RouteLimiter {
        RouteLimiter {
            inner: Arc::new(Inner {
                bucket: self.clone(),
                rate_key: self.bus.subjects.rate_key(name),
                route: name.to_owned(),
                limits,
                serial: Mutex::new(()),
                pause: PauseSeen::default(),
            }),
        }
    }
}

/// One route's shared limits, as seen from this process. Cheap to clone.
#[derive(Clone)]
pub struct RouteLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    bucket: Limits,
    /// The route's name, for its slot keys, and its rate state's key.
    route: String,
    rate_key: String,
    limits: RouteLimits,
    /// One waiting compare-and-set loop at a time per process, so a process's own waiters queue
    /// here instead of racing each other on the bucket. Writes that never wait (a pause, a
    /// reconciliation) do not take it: a pause must land at once, not behind queued waiters.
    serial: Mutex<()>,
    pause: PauseSeen,
}

/// The route's pause as this process last knew it, in microseconds since the epoch.
#[derive(Default)]
struct PauseSeen {
    until: AtomicI64,
    read_at: AtomicI64,
}

impl PauseSeen {
    /// The pause's end if it was read less than [`PAUSE_FRESH`] ago.
    fn fresh(&self, now: i64) -> Option<i64> {
        let fresh = i64::try_from(PAUSE_FRESH.as_micros()).unwrap_or(i64::MAX);
        (now - self.read_at.load(Ordering::Relaxed) < fresh)
            .then(|| self.until.load(Ordering::Relaxed))
    }

    fn note(&self, until: i64, now: i64) {
        self.until.fetch_max(until, Ordering::Relaxed);
        self.read_at.store(now, Ordering::Relaxed);
    }
}

/// How often a process holding back for another's claim looks again.
const DEFER_POLL: Duration = Duration::from_millis(10);

fn now_micros() -> i64 {
    now_millis() * 1_000
}

fn per_minute(limit: u32) -> i64 {
    60_000_000 / i64::from(limit.max(1))
}

impl RouteLimiter {
    pub fn limits(&self) -> RouteLimits {
        self.inner.limits
    }

    fn key(&self) -> String {
        self.inner.rate_key.clone()
    }

    /// Applies `change` to the route's rate state with compare-and-set. `change` returns how long
    /// to wait before trying again, or `None` once it has changed the state.
    async fn update(
        &self,
        mut change: impl FnMut(&mut RateState, i64) -> Option<Duration>,
    ) -> Result<Duration, BusError> {
        let kv = &self.inner.bucket.kv;
        let key = self.key();
        let started = tokio::time::Instant::now();
        loop {
            let entry = kv
                .entry(&key)
                .await
                .map_err(|e| BusError::request("read a route's rate state", e))?;
            let (mut state, revision) = match entry {
                Some(e) if e.operation == Operation::Put => (
                    serde_json::from_slice(&e.value).unwrap_or_default(),
                    Some(e.revision),
                ),
                _ => (RateState::default(), None),
            };
            if let Some(wait) = change(&mut state, now_micros()) {
                tokio::time::sleep(wait).await;
                continue;
            }
            let value = serde_json::to_vec(&state)
                .map_err(|e| BusError::new("encode a rate state", BusErrorKind::Codec, e))?
                .into();
            let stored = match revision {
                Some(revision) => match kv.update(&key, value, revision).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => false,
                    Err(e) => return Err(BusError::request("write a route's rate state", e)),
                },
                None => match kv.create(&key, value).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == CreateErrorKind::AlreadyExists => false,
                    Err(e) => return Err(BusError::request("write a route's rate state", e)),
                },
            };
            if stored {
                return Ok(started.elapsed());
            }
        }
    }

    /// Waits for the route's next request slot (and the end of any pause); the time waited.
    pub async fn admit_request(&self) -> Result<Duration, BusError> {
        self.admit_request_unless(&|| false).await
    }

    /// [`Self::admit_request`], holding back while `defer` says another process's work should
    /// have the slot (see [`crate::claims`]).
    pub async fn admit_request_unless(
        &self,
        defer: &(dyn Fn() -> bool + Sync),
    ) -> Result<Duration, BusError> {
        let Some(rpm) = self.inner.limits.rpm else {
            return self.wait_pause().await;
        };
        let interval = per_minute(rpm);
        let _serial = self.inner.serial.lock().await;
        self.update(|state, now| {
            let next = state.requests.max(state.paused_until);
            if next > now {
                return Some(micros(next - now));
            }
            if defer() {
                return Some(DEFER_POLL);
            }
            state.requests = now + interval;
            None
        })
        .await
    }

    /// Reserves `tokens` of the route's token rate, waiting until they fit; the time waited.
    pub async fn reserve_tokens(&self, tokens: u32) -> Result<Duration, BusError> {
        let Some(tpm) = self.inner.limits.tpm else {
            return Ok(Duration::ZERO);
        };
        let cost = i64::from(tokens) * per_minute(tpm);
        let _serial = self.inner.serial.lock().await;
        self.update(|state, now| {
            if state.tokens > now {
                return Some(micros(state.tokens - now));
            }
            state.tokens = now + cost;
            None
        })
        .await
    }

    /// Corrects a reservation once the provider reported the tokens really used.
    pub async fn reconcile_tokens(&self, reserved: u32, used: u32) -> Result<(), BusError> {
        let Some(tpm) = self.inner.limits.tpm else {
            return Ok(());
        };
        let delta = (i64::from(used) - i64::from(reserved)) * per_minute(tpm);
        if delta != 0 {
            self.update(|state, _| {
                state.tokens += delta;
                None
            })
            .await?;
        }
        Ok(())
    }

    /// Pauses the route for every process until `until` (Unix milliseconds).
    pub async fn pause_until(&self, until: i64) -> Result<(), BusError> {
        let until = until * 1_000;
        self.update(|state, _| {
            state.paused_until = state.paused_until.max(until);
            None
        })
        .await?;
        self.inner.pause.note(until, now_micros());
        Ok(())
    }

    /// Waits for the end of any pause of the route; the time waited. The pause is read from the
    /// bucket at most once per [`PAUSE_FRESH`].
    pub async fn wait_pause(&self) -> Result<Duration, BusError> {
        let started = tokio::time::Instant::now();
        loop {
            let now = now_micros();
            let paused_until = match self.inner.pause.fresh(now) {
                Some(until) => until,
                None => {
                    let entry = self
                        .inner
                        .bucket
                        .kv
                        .entry(self.key())
                        .await
                        .map_err(|e| BusError::request("read a route's pause", e))?;
                    let until = entry
                        .filter(|e| e.operation == Operation::Put)
                        .and_then(|e| serde_json::from_slice::<RateState>(&e.value).ok())
                        .map_or(0, |s| s.paused_until);
                    self.inner.pause.note(until, now);
                    until
                }
            };
            let now = now_micros();
            if paused_until <= now {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(micros(paused_until - now)).await;
        }
    }

    /// Takes one of the route's concurrency slots, waiting for one to free up. `None` when the route
    /// has no concurrency limit.
    pub async fn acquire_slot(&self) -> Result<Option<Lease>, BusError> {
        self.acquire_slot_unless(&|| false).await
    }

    /// [`Self::acquire_slot`], holding back while `defer` says another process's work should
    /// have the slot (see [`crate::claims`]).
    pub async fn acquire_slot_unless(
        &self,
        defer: &(dyn Fn() -> bool + Sync),
    ) -> Result<Option<Lease>, BusError> {
        let Some(max) = self.inner.limits.max_concurrency else {
            return Ok(None);
        };
        let bucket = &self.inner.bucket;
        let start = rand::random_range(0..max);
        loop {
            if defer() {
                tokio::time::sleep(DEFER_POLL).await;
                continue;
            }
            for i in (0..max).map(|i| (start + i) % max) {
                let key = bucket.bus.subjects.slot_key(&self.inner.route, i);
                let entry = bucket
                    .kv
                    .entry(&key)
                    .await
                    .map_err(|e| BusError::request("read a concurrency slot", e))?;
                let last = match entry {
                    Some(e) if e.operation == Operation::Put => continue,
                    Some(marker) => marker.revision,
                    None => 0,
                };
                if let Some(revision) = bucket.write_slot(&key, last, false).await? {
                    return Ok(Some(Lease::hold(bucket.clone(), key, revision)));
                }
            }
            tokio::time::sleep(Duration::from_millis(rand::random_range(20..50))).await;
        }
    }
}

impl Limits {
    /// Writes a lease (or, with `release`, a delete marker) over revision `last`; `None` when
    /// someone else wrote first.
    async fn write_slot(
        &self,
        key: &str,
        last: u64,
        release: bool,
    ) -> Result<Option<u64>, BusError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            last.to_string().as_str(),
        );
        let ttl = if release {
            Duration::from_secs(5)
        } else {
            self.lease_ttl
        };
        headers.insert("Nats-TTL", ttl.as_secs().to_string().as_str());
        if release {
            headers.insert("KV-Operation", "DEL");
        }
        let subject = format!("$KV.{}.{key}", self.kv.name);
        let ack = self
            .bus
            .js
            .publish_with_headers(subject, headers, bytes::Bytes::from_static(b"held"))
            .await
            .map_err(|e| BusError::request("write a concurrency slot", e))?;
        match ack.await {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
            Err(e) => Err(BusError::request("write a concurrency slot", e)),
        }
    }
}

/// A held concurrency slot: renewed in the background, released when dropped.
pub struct Lease {
    renew: JoinHandle<()>,
    release: Option<(Limits, String, Arc<std::sync::atomic::AtomicU64>)>,
}

impl Lease {
    fn hold(bucket: Limits, key: String, revision: u64) -> Self {
        let current = Arc::new(std::sync::atomic::AtomicU64::new(revision));
        let renew = {
            let (bucket, key, current) = (bucket.clone(), key.clone(), current.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(bucket.lease_ttl / 3).await;
                    let last = current.load(std::sync::atomic::Ordering::SeqCst);
                    match bucket.write_slot(&key, last, false).await {
                        Ok(Some(revision)) => {
                            current.store(revision, std::sync::atomic::Ordering::SeqCst)
                        }
                        Ok(None) => {
                            tracing::warn!(%key, "lost a concurrency lease (expired while held)");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(%key, error = %e, "cannot renew a concurrency lease")
                        }
                    }
                }
            })
        };
        Self {
            renew,
            release: Some((bucket, key, current)),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renew.abort();
        if let Some((bucket, key, current)) = self.release.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let last = current.load(std::sync::atomic::Ordering::SeqCst);
                let _ = bucket.write_slot(&key, last, true).await;
            });
        }
    }
}

fn micros(n: i64) -> Duration {
    Duration::from_micros(u64::try_from(n).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use chorus_testkit::nats::NatsServer;

    use super::*;
    use crate::definitions::Definitions;

    /// How long a test waits for what must happen before it fails (not a bound on how fast).
    const DEADLINE: Duration = Duration::from_secs(30);

    impl RouteLimiter {
        async fn state(&self) -> RateState {
            let entry = self.inner.bucket.kv.entry(self.key()).await.expect("read");
            serde_json::from_slice(&entry.expect("a rate state").value).expect("decode")
        }
    }

    async fn bucket(server: &NatsServer) -> Limits {
        let bus = Bus::connect(&server.url(), "chorus", "test", Duration::from_secs(5))
            .await
            .expect("connect");
        Definitions::builtin("chorus", 1)
            .expect("defs")
            .apply(&bus)
            .await
            .expect("apply");
        Limits::open(&bus).await.expect("limits bucket")
    }

    #[tokio::test]
    async fn requests_are_spaced_across_processes() {
        let server = NatsServer::start_new().await;
        let limits = RouteLimits {
            rpm: Some(1200),
            ..RouteLimits::default()
        };
        // Three "processes": separate connections, each with its own limiter.
        let mut limiters = Vec::new();
        for _ in 0..3 {
            limiters.push(bucket(&server).await.route("r", limits));
        }
        let started = Instant::now();
        let admitted = std::sync::Mutex::new(Vec::new());
        futures::future::join_all(limiters.iter().map(|l| async {
            for _ in 0..10 {
                l.admit_request().await.expect("admit");
                admitted.lock().expect("lock").push(started.elapsed());
            }
        }))
        .await;
        let mut at = admitted.into_inner().expect("lock");
        at.sort();
        assert_eq!(at.len(), 30, "every request is admitted");
        // 1200 rpm is one request per 50 ms: thirty requests cannot all be admitted in less than
        // 29 intervals, however the three processes interleave. (How soon they are admitted on
        // a busy machine is `chorus bench ratelimit`'s to measure, not a test's.)
        assert!(at[29] >= Duration::from_millis(29 * 50), "{:?}", at[29]);
    }

    #[tokio::test]
    async fn a_pause_holds_every_process() {
        let server = NatsServer::start_new().await;
        let a = bucket(&server).await.route("r", RouteLimits::default());
        let b = bucket(&server).await.route(
            "r",
            RouteLimits {
                rpm: Some(6000),
                ..RouteLimits::default()
            },
        );
        let until = now_millis() + 700;
        a.pause_until(until).await.expect("pause");
        let (without_rpm, with_rpm) = futures::join!(
            async {
                a.admit_request().await.expect("admit without rpm");
                now_millis()
            },
            async {
                b.admit_request().await.expect("admit with rpm");
                now_millis()
            }
        );
        assert!(without_rpm >= until, "{} ms early", until - without_rpm);
        assert!(with_rpm >= until, "{} ms early", until - with_rpm);
    }

    #[tokio::test]
    async fn a_pause_set_elsewhere_holds_this_process_once_its_last_read_is_stale() {
        let server = NatsServer::start_new().await;
        let here = bucket(&server).await.route("r", RouteLimits::default());
        let elsewhere = bucket(&server).await.route("r", RouteLimits::default());
        // Read here: no pause.
        here.admit_request().await.expect("admit");
        let until = now_millis() + 1_000;
        elsewhere.pause_until(until).await.expect("pause");
        tokio::time::sleep(PAUSE_FRESH).await;
        here.admit_request().await.expect("admit");
        let admitted = now_millis();
        assert!(admitted >= until, "{} ms early", until - admitted);
    }

    #[tokio::test]
    async fn a_pause_lands_while_this_process_has_callers_waiting() {
        let server = NatsServer::start_new().await;
        // 60 rpm: after the first request the next slot is a second away.
        let limiter = bucket(&server).await.route(
            "r",
            RouteLimits {
                rpm: Some(60),
                ..RouteLimits::default()
            },
        );
        limiter.admit_request().await.expect("first");
        let waiting = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.admit_request().await }
        });
        chorus_testkit::wait::until(Duration::from_secs(10), "a caller waiting", || async {
            limiter.inner.serial.try_lock().is_err().then_some(())
        })
        .await;
        limiter
            .pause_until(now_millis() + 2_000)
            .await
            .expect("pause");
        // Had the pause queued behind the waiter, the waiter would have been admitted first.
        assert!(!waiting.is_finished(), "the pause queued behind a waiter");
        let waited = waiting.await.expect("join").expect("admitted");
        assert!(waited >= Duration::from_millis(1_800), "{waited:?}");
    }

    #[tokio::test]
    async fn tokens_are_reserved_and_reconciled() {
        let server = NatsServer::start_new().await;
        // 60,000 tpm is one token per millisecond.
        let limiter = bucket(&server).await.route(
            "r",
            RouteLimits {
                tpm: Some(60_000),
                ..RouteLimits::default()
            },
        );
        limiter.reserve_tokens(300).await.expect("first");
        let started = Instant::now();
        limiter
            .reserve_tokens(10)
            .await
            .expect("second waits for the first");
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );
        // Used far fewer than reserved: the budget is given back, 990 tokens of 1 ms each.
        limiter.reserve_tokens(1_000).await.expect("third");
        let reserved = limiter.state().await.tokens;
        limiter
            .reconcile_tokens(1_000, 10)
            .await
            .expect("reconcile");
        assert_eq!(limiter.state().await.tokens, reserved - 990_000);
    }

    #[tokio::test]
    async fn concurrency_slots_are_shared_and_expire_when_not_renewed() {
        let server = NatsServer::start_new().await;
        let limits = RouteLimits {
            max_concurrency: Some(2),
            ..RouteLimits::default()
        };
        // Two processes whose leases expire 2 s after their last renewal.
        let ttl = Duration::from_secs(2);
        let a = bucket(&server).await.with_lease_ttl(ttl).route("r", limits);
        let b = bucket(&server).await.with_lease_ttl(ttl).route("r", limits);
        let first = a.acquire_slot().await.expect("first").expect("a lease");
        let second = b.acquire_slot().await.expect("second").expect("a lease");
        let third = tokio::time::timeout(Duration::from_millis(300), a.acquire_slot()).await;
        assert!(third.is_err(), "both slots are held");
        drop(first);
        let third = tokio::time::timeout(DEADLINE, a.acquire_slot()).await;
        assert!(
            matches!(third, Ok(Ok(Some(_)))),
            "a released slot is free again"
        );

        // A holder that dies stops renewing: its lease expires with its TTL.
        second.renew.abort();
        std::mem::forget(second);
        let taken = tokio::time::timeout(DEADLINE, b.acquire_slot()).await;
        assert!(
            matches!(taken, Ok(Ok(Some(_)))),
            "an abandoned lease expires"
        );
    }
}
