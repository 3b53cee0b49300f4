//! Who may call a `/v1` route: the API key, its scope, its request rate.
//!
//! Every `/v1` route needs one scope ([`required_scope`]: admin for `/v1/admin`, read for
//! `GET`, submit for the rest). The middleware reads `Authorization: Bearer <key>`, asks the store who the key is (every request,
//! so a revoked key stops at once on every pod), checks the scope, charges the key's request
//! rate, and hands the handler a [`Caller`]: the tenant every read and write is then confined
//! to. A missing or dead key is `401`, a live key without the scope `403`, a key over its rate
//! `429` with `retry-after`.
//!
//! Rates are per key and per edge process (GCRA in memory, a burst of ten seconds' worth): the
//! edge sheds abusive clients before they cost a database or JetStream round trip, without a
//! shared round trip of its own. N edge pods admit up to N times a key's rate.
//!
//! While the database is unavailable, a key this process verified within `edge.key_outage_grace`
//! is still accepted, so clients keep submitting work (which JetStream stores) through a database
//! outage. That weakens nothing: no key can be revoked while the database is down either. The
//! process remembers a digest of each verified key, never the key.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chorus_store::StoreErrorKind;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chorus_core::Tenant;
use chorus_core::auth::{Caller, Scope};
use secrecy::SecretString;

use crate::error::{ApiError, Unauthorized};
use crate::state::AppState;

/// How requests are authenticated.
#[derive(Debug)]
pub enum AuthMode {
    /// A live API key on every request.
    Keys,
    /// None: every request acts for this tenant with every scope.
    Off(Tenant),
}

/// Authentication and the per-key request rates of one edge process.
#[derive(Debug)]
pub struct Auth {
    mode: AuthMode,
    /// For keys without a rate of their own.
    default_rpm: Option<u32>,
    rates: Mutex<HashMap<String, Gcra>>,
    /// How long a verification holds while the database is unavailable.
    outage_grace: Duration,
    /// The last successful verification of each key, by the key's digest.
    verified: Mutex<HashMap<[u8; 32], (Caller, Instant)>>,
}

impl Auth {
    pub fn new(mode: AuthMode, default_rpm: Option<u32>, outage_grace: Duration) -> Self {
        Self {
            mode,
            default_rpm,
            rates: Mutex::default(),
            outage_grace,
            verified: Mutex::default(),
        }
    }

    /// Who presents `key` (the request's bearer token, or why it has none).
    async fn caller(
        &self,
        state: &AppState,
        key: Result<SecretString, ApiError>,
    ) -> Result<Caller, ApiError> {
        if let AuthMode::Off(tenant) = &self.mode {
            return Ok(Caller::unauthenticated(tenant.clone()));
        }
        let presented = key?;
        let digest: [u8; 32] = Sha256::digest(presented.expose_secret().as_bytes()).into();
        let verified = || self.verified.lock().unwrap_or_else(|p| p.into_inner());
        match state.store.authenticate(&presented).await {
            Ok(Some(caller)) => {
                if !self.outage_grace.is_zero() {
                    verified().insert(digest, (caller.clone(), Instant::now()));
                }
                Ok(caller)
            }
            Ok(None) => {
                verified().remove(&digest);
                Err(Unauthorized::NotValid.into())
            }
            Err(e) if e.kind() == StoreErrorKind::Unavailable => {
                let remembered = verified()
                    .get(&digest)
                    .filter(|(_, at)| at.elapsed() <= self.outage_grace)
                    .map(|(caller, _)| caller.clone());
                remembered.ok_or_else(|| ApiError::unavailable("the database (for API keys)", e))
            }
            Err(e) => Err(ApiError::unavailable("the database (for API keys)", e)),
        }
    }

    /// Charges one request to the caller's key; `Err` with the seconds until one is admitted.
    fn charge(&self, caller: &Caller, now: Instant) -> Result<(), u64> {
        let (Some(key), Some(rpm)) = (&caller.key_id, caller.rpm.or(self.default_rpm)) else {
            return Ok(());
        };
        let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        rates
            .entry(key.clone())
            .or_insert_with(|| Gcra::new(now))
            .admit(rpm, now)
    }
}

/// The key of `Authorization: Bearer <key>`.
fn bearer(request: &Request) -> Result<SecretString, ApiError> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or(Unauthorized::NoKey)?
        .to_str()
        .map_err(|_| Unauthorized::NotText)?;
    let (scheme, key) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || key.trim().is_empty() {
        return Err(Unauthorized::NotBearer.into());
    }
    Ok(SecretString::from(key.trim().to_owned()))
}

/// The scope a route needs: `/v1/admin/…` admin; any other `/v1` route read for `GET`, submit
/// for everything else; none outside `/v1` (health, readiness, metrics, the OpenAPI document).
pub fn required_scope(method: &Method, path: &str) -> Option<Scope> {
    if path.starts_with("/v1/admin/") || path == "/v1/admin" {
        Some(Scope::Admin)
    } else if !path.starts_with("/v1/") {
        None
    } else if method == Method::GET || method == Method::HEAD {
        Some(Scope::Read)
    } else {
        Some(Scope::Submit)
    }
}

/// The middleware on every matched route: authenticates, checks the scope, charges the key's
/// rate, and leaves the [`Caller`] in the request's extensions.
pub async fn authorize(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(scope) = required_scope(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let key = bearer(&request);
    let caller = match state.auth.caller(&state, key).await {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    if !caller.scopes.contains(scope) {
        return ApiError::Forbidden {
            needs: scope,
            has: caller.scopes,
        }
        .into_response();
    }
    if let Err(retry_after) = state.auth.charge(&caller, Instant::now()) {
        return ApiError::RateLimited { retry_after }.into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// The generic cell rate algorithm: requests are admitted `60 s / rpm` apart on average, with
/// a burst of up to ten seconds' worth (at least one request).
#[derive(Debug)]
struct Gcra {
    /// When the next request would be admitted with no burst left.
    theoretical_arrival: Instant,
}

impl Gcra {
    fn new(now: Instant) -> Self {
        Self {
            theoretical_arrival: now,
        }
    }

    fn admit(&mut self, rpm: u32, now: Instant) -> Result<(), u64> {
        let interval = Duration::from_secs(60) / rpm.max(1);
        let burst = (rpm / 6).max(1);
        let tolerance = interval * (burst - 1);
        let tat = self.theoretical_arrival.max(now);
        if let Some(wait) = tat.checked_duration_since(now + tolerance)
            && !wait.is_zero()
        {
            return Err(wait.as_secs_f64().ceil() as u64);
        }
        self.theoretical_arrival = tat + interval;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_the_scope_of_what_they_do() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(required_scope(&get, "/v1/jobs/x"), Some(Scope::Read));
        assert_eq!(required_scope(&post, "/v1/jobs"), Some(Scope::Submit));
        assert_eq!(
            required_scope(&post, "/v1/batches/b/cancel"),
            Some(Scope::Submit)
        );
        assert_eq!(required_scope(&get, "/v1/admin/dlq"), Some(Scope::Admin));
        assert_eq!(
            required_scope(&post, "/v1/admin/dlq/replay"),
            Some(Scope::Admin)
        );
        assert_eq!(required_scope(&get, "/health"), None);
        assert_eq!(required_scope(&get, "/metrics"), None);
    }

    #[test]
    fn a_key_gets_its_burst_then_its_rate() {
        let start = Instant::now();
        // 60 rpm: a burst of 10, then one a second.
        let mut gcra = Gcra::new(start);
        for i in 0..10 {
            assert_eq!(gcra.admit(60, start), Ok(()), "request {i} of the burst");
        }
        assert_eq!(gcra.admit(60, start), Err(1));
        assert_eq!(gcra.admit(60, start + Duration::from_millis(999)), Err(1));
        assert_eq!(gcra.admit(60, start + Duration::from_secs(1)), Ok(()));
        assert_eq!(gcra.admit(60, start + Duration::from_secs(1)), Err(1));
        // Idle long enough and the burst is back, never more.
        let later = start + Duration::from_secs(600);
        for _ in 0..10 {
            assert_eq!(gcra.admit(60, later), Ok(()));
        }
        assert!(gcra.admit(60, later).is_err());
    }

    #[test]
    fn a_slow_key_waits_whole_seconds() {
        let start = Instant::now();
        let mut gcra = Gcra::new(start);
        assert_eq!(gcra.admit(4, start), Ok(()));
        assert_eq!(gcra.admit(4, start), Err(15));
        assert_eq!(gcra.admit(4, start + Duration::from_millis(14_500)), Err(1));
        assert_eq!(gcra.admit(4, start + Duration::from_secs(15)), Ok(()));
    }
}
