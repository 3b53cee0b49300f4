//! Connecting to NATS and checking, before anything else runs, that the server can carry Chorus.
//!
//! Chorus needs JetStream and a server of at least [`MIN_SERVER`]: per-message TTLs (2.11) expire
//! the concurrency leases of a process that died holding them. The errors say what to do, not only
//! what failed.
//!
//! `url` is one server or a comma-separated list of a cluster's servers: the client connects to
//! one of them, and reconnects through them and the servers the cluster announces.
//!
//! [`Bus::connect_config`] authenticates as `[nats]` says (a credentials file, an nkey seed, a user
//! and password, or a token, the secrets read from their variable or file) and speaks TLS with the
//! given CA and client certificate. Secrets are only ever handed to the client: the errors name
//! their source.

use std::time::Duration;

use async_nats::jetstream::{self, Context};
use async_nats::{Client, ConnectOptions, ServerAddr};
use chorus_core::config::{NatsConfig, SecretError, load_secret, redact_url};
use chorus_core::subjects::Subjects;
use secrecy::ExposeSecret;

use crate::BusError;

/// Oldest nats-server Chorus runs on.
pub const MIN_SERVER: (u64, u64, u64) = (2, 11, 0);

/// The `max_payload` Chorus's messages need (`nats/server/chorus.conf`): a dead letter wraps a
/// message of up to the work streams' 8 MiB.
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024;

/// A checked connection: the client, its JetStream context and the subject names.
#[derive(Clone)]
pub struct Bus {
    pub client: Client,
    pub js: Context,
    pub subjects: Subjects,
    /// The flows' doorbells this process rang lately ([`Bus::ring`]).
    pub(crate) doorbells: std::sync::Arc<crate::fair::Doorbells>,
    /// How long [`Bus::publish_all_retrying`] retries (`nats.retry_window`).
    pub(crate) retry_window: Duration,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("prefix", &self.subjects.prefix())
            .finish()
    }
}

impl Bus {
    /// Connects without credentials and runs the start-up checks. `name` shows in the server's
    /// connection list. Publishes are retried for the default `nats.retry_window`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Self, BusError> {
        let retry_window = NatsConfig::default().retry_window;
        Self::connect_with(ConnectOptions::new(), url, prefix, name, timeout)
            .await
            .map(|bus| bus.with_retry_window(retry_window))
    }

    /// Whether the connection to NATS is up now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Sends what the client still buffers (acks, NAKs, publishes) before a process exits,
    /// waiting up to `timeout`. Without a connection now, it returns at once: a flush would wait
    /// for one, and what it could not send comes back to another process after its AckWait.
    pub async fn flush_on_exit(&self, timeout: Duration) {
        if !self.is_connected() {
            tracing::warn!(
                "NATS is unreachable: exiting without flushing; unacknowledged messages come back after their AckWait"
            );
            return;
        }
        match tokio::time::timeout(timeout, self.client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing NATS on exit failed"),
            Err(_) => tracing::warn!("flushing NATS on exit timed out"),
        }
    }

    /// The same connection, retrying publishes for `window` ([`Bus::publish_all_retrying`]).
    pub fn with_retry_window(mut self, window: Duration) -> Self {
        self.retry_window = window;
        self
    }

    /// Connects as `[nats]` configures it (credentials, TLS) and runs the start-up checks.
    pub async fn connect_config(config: &NatsConfig, name: &str) -> Result<Self, BusError> {
        let options = connect_options(config).await?;
        Self::connect_with(
            options,
            &config.url,
            &config.prefix,
            name,
            config.connect_timeout,
        )
        .await
        .map(|bus| bus.with_retry_window(config.retry_window))
    }

    async fn connect_with(
        options: ConnectOptions,
        url: &str,
        prefix: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Self, BusError> {
        // Two rustls providers are in the build (ring for NATS and the databases, aws-lc-rs for
        // the HTTP client), so rustls cannot pick one by itself: name ring before a TLS
        // connection needs it. A provider already installed stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let servers = servers(url)?;
        let url = &redact_url(url);
        let client = options
            .name(name)
            .connection_timeout(timeout)
            .request_timeout(Some(Duration::from_secs(10)))
            .connect(servers)
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
        let max_payload = client.server_info().max_payload;
        if max_payload < MAX_PAYLOAD {
            tracing::warn!(
                %url,
                max_payload,
                needed = MAX_PAYLOAD,
                "the NATS server takes messages smaller than Chorus's largest: jobs, results and dead \
                 letters beyond its max_payload fail as too_large (set `max_payload: 16777216`, as \
                 nats/server/chorus.conf does)"
            );
        }
        let js = jetstream::new(client.clone());
        js.query_account()
            .await
            .map_err(|cause| BusError::NoJetStream {
                url: url.to_owned(),
                cause,
            })?;
        Ok(Self {
            client,
            js,
            subjects: Subjects::new(prefix),
            doorbells: Default::default(),
            retry_window: Duration::ZERO,
        })
    }
}

/// The servers of `nats.url`: one URL, or a comma-separated list of them.
pub fn servers(url: &str) -> Result<Vec<ServerAddr>, BusError> {
    url.split(',')
        .map(|server| {
            let server = server.trim();
            if server.is_empty() {
                return Err(BusError::Settings {
                    setting: "url",
                    source: "an empty server in the list".into(),
                });
            }
            server
                .parse::<ServerAddr>()
                .map_err(|e| BusError::Settings {
                    setting: "url",
                    source: format!("`{}` is not a NATS server URL: {e}", redact_url(server))
                        .into(),
                })
        })
        .collect()
}

/// The client options for `[nats]`'s credentials and TLS, with its secrets read.
pub async fn connect_options(config: &NatsConfig) -> Result<ConnectOptions, BusError> {
    let settings = |setting: &'static str| {
        move |e: SecretError| BusError::Settings {
            setting,
            source: Box::new(e),
        }
    };
    let mut options = ConnectOptions::new();
    if let Some(path) = &config.credentials_file {
        options = ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| BusError::Settings {
                setting: "credentials_file",
                source: Box::new(e),
            })?;
    }
    if let Some(path) = &config.nkey_seed_file {
        let seed = load_secret(None, Some(path)).map_err(settings("nkey_seed_file"))?;
        if let Some(seed) = seed {
            options = ConnectOptions::with_nkey(seed.expose_secret().to_owned());
        }
    }
    if let Some(user) = &config.user {
        let password = load_secret(
            config.password_env.as_deref(),
            config.password_file.as_deref(),
        )
        .map_err(settings("password"))?
        .ok_or(BusError::Settings {
            setting: "user",
            source: "give its password in password_env or password_file".into(),
        })?;
        options = ConnectOptions::with_user_and_password(
            user.clone(),
            password.expose_secret().to_owned(),
        );
    }
    if let Some(token) = load_secret(config.token_env.as_deref(), config.token_file.as_deref())
        .map_err(settings("token"))?
    {
        options = ConnectOptions::with_token(token.expose_secret().to_owned());
    }
    if let Some(ca) = &config.tls_ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(options.require_tls(config.tls_required))
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
    fn the_shipped_server_settings_take_the_largest_message() {
        let configured = crate::natsd::SERVER_CONFIG
            .lines()
            .find_map(|l| l.trim().strip_prefix("max_payload:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        assert_eq!(configured, Some(MAX_PAYLOAD));
    }

    #[test]
    fn takes_a_list_of_servers() {
        let list = servers("nats://127.0.0.1:14222, nats://127.0.0.1:14223,tls://h:4443").unwrap();
        let ports: Vec<u16> = list.iter().map(ServerAddr::port).collect();
        assert_eq!(ports, [14222, 14223, 4443]);
        assert_eq!(servers("nats://localhost").unwrap()[0].port(), 4222);
        let error = servers("nats://a:1,nats://b:99999").unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("nats.url") && message.contains("b:99999"),
            "{message}"
        );
        let error = servers("nats://a:1,http://user:secret@b:4222").unwrap_err();
        let message = error.to_string();
        assert!(message.contains("invalid scheme"), "{message}");
        assert!(!message.contains("secret"), "{message}");
        assert!(servers("nats://a:1,").is_err());
    }

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
