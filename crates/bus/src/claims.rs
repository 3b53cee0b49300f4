//! Band precedence between processes at a limited route's gate.
//!
//! Each process picks its next call among the flows' heads it holds, but the route's next
//! request slot goes to whichever process wins the compare-and-set on the shared rate state. So
//! without more, a process holding an interactive call wins a slot only about once in N against
//! N − 1 processes holding batch calls, and the call waits behind their lines. Here a process
//! waiting at the gate with work above the batch band *claims* the route for that band (core
//! NATS, `<prefix>.claims.<route>`, refreshed every [`REFRESH`], released once admitted, gone
//! after [`CLAIM_TTL`] if the claimant vanishes), and a process whose best waiting work is of a
//! lower band defers to a live claim — except for its band's guaranteed share of attempts
//! ([`Policy::share`]), so batch work never stops completely.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chorus_core::fair::{Band, Policy};
use chorus_core::subjects::token;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::{Bus, BusError, BusErrorKind};

/// How long a claim lasts unless refreshed.
pub const CLAIM_TTL: Duration = Duration::from_millis(300);

/// How often a waiting claimant repeats its claim.
pub const REFRESH: Duration = Duration::from_millis(100);

/// The claims on one route, as this process hears them.
pub struct Claims {
    bus: Bus,
    subject: String,
    policy: Policy,
    heard: Heard,
}

/// The other processes' live claims.
struct Heard {
    /// This process's claimant id.
    me: u64,
    /// claimant → (band, until).
    others: Mutex<HashMap<u64, (Band, Instant)>>,
}

impl Claims {
    /// Listens to `route`'s claims until `stop`.
    pub async fn open(
        bus: &Bus,
        route: &str,
        policy: Policy,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, BusError> {
        let subject = format!("{}.claims.{}", bus.subjects.prefix(), token(route));
        let mut heard = bus.client.subscribe(subject.clone()).await.map_err(|e| {
            BusError::new(
                format!("subscribe to {subject}"),
                BusErrorKind::Unavailable,
                e,
            )
        })?;
        let claims = Arc::new(Self {
            bus: bus.clone(),
            subject,
            policy,
            heard: Heard {
                me: rand::random(),
                others: Mutex::new(HashMap::new()),
            },
        });
        let listening = claims.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    claim = heard.next() => match claim {
                        Some(claim) => listening.heard.take(&claim.payload),
                        None => break,
                    },
                }
            }
        });
        Ok(claims)
    }

    /// Whether another process claims the route for a band above `band`.
    pub fn outranked(&self, band: Band) -> bool {
        self.heard.outranked(band)
    }

    /// Whether this admission, for work of `band`, defers to higher claims: always, except for
    /// the band's guaranteed share of admissions.
    pub fn defers(&self, band: Band) -> bool {
        rand::random::<f64>() >= self.policy.share(band)
    }

    /// Claims the route for `band`; false (nothing said) for the batch band, which nothing
    /// defers to.
    pub async fn claim(&self, band: Band) -> bool {
        if band < Band::Batch {
            self.say(band.as_str()).await;
        }
        band < Band::Batch
    }

    /// Withdraws this process's claim.
    pub async fn release(&self) {
        self.say("release").await;
    }

    async fn say(&self, what: &str) {
        let payload = format!("{} {what}", self.heard.me);
        if let Err(e) = self
            .bus
            .client
            .publish(self.subject.clone(), payload.into())
            .await
        {
            tracing::debug!(error = %e, "a route claim was not sent; claims expire on their own");
        }
    }
}

impl Heard {
    /// Takes a claim or a release: `<claimant> <band>` or `<claimant> release`.
    fn take(&self, payload: &[u8]) {
        let Some((claimant, what)) = std::str::from_utf8(payload)
            .ok()
            .and_then(|text| text.split_once(' '))
        else {
            return;
        };
        let Ok(claimant) = claimant.parse::<u64>() else {
            return;
        };
        if claimant == self.me {
            return;
        }
        let mut others = self.others.lock().unwrap_or_else(|p| p.into_inner());
        match Band::parse(what) {
            Some(band) => {
                others.insert(claimant, (band, Instant::now() + CLAIM_TTL));
            }
            None => {
                others.remove(&claimant);
            }
        }
    }

    /// Whether another process claims the route for a band above `band`.
    pub fn outranked(&self, band: Band) -> bool {
        let now = Instant::now();
        let mut others = self.others.lock().unwrap_or_else(|p| p.into_inner());
        others.retain(|_, (_, until)| *until > now);
        others.values().any(|(claimed, _)| *claimed < band)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims_heard(heard: &[&str]) -> Heard {
        let claims = Heard {
            me: 7,
            others: Mutex::new(HashMap::new()),
        };
        for claim in heard {
            claims.take(claim.as_bytes());
        }
        claims
    }

    #[test]
    fn a_claim_outranks_lower_bands_only_until_released() {
        let claims = claims_heard(&["1 standard"]);
        assert!(claims.outranked(Band::Batch));
        assert!(!claims.outranked(Band::Standard));
        assert!(!claims.outranked(Band::Interactive));
        claims.take(b"1 release");
        assert!(!claims.outranked(Band::Batch));
    }

    #[test]
    fn a_process_never_defers_to_its_own_claim_and_ignores_noise() {
        let claims = claims_heard(&["7 interactive", "x interactive", "2", "3 urgent"]);
        assert!(!claims.outranked(Band::Batch));
    }
}
