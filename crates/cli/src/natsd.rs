//! A `nats-server` child process with JetStream, for `chorus dev` and `chorus bench`.
//!
//! The binary is found by [`server_binary::locate`]; when it is missing or too old the error says
//! how to install a current one. The child runs with Chorus's server settings
//! ([`server_binary::SERVER_CONFIG`], written beside its store), listens on a free local port,
//! keeps its store where it is told, and is stopped with SIGTERM (then killed) when Chorus stops.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use chorus_bus::server_binary::{self, LocateError};
use tokio::process::{Child, Command};

/// Why the `nats-server` child did not start.
#[derive(Debug, thiserror::Error)]
pub enum NatsChildError {
    #[error("{source}; or set CHORUS_NATS_URL to use a running server")]
    Locate {
        #[source]
        source: LocateError,
    },
    #[error("cannot write {}: {source}", path.display())]
    Store {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find a free local port: {source}")]
    Port {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start `{}`: {source}", binary.display())]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot follow the nats-server process: {source}")]
    Wait {
        #[source]
        source: std::io::Error,
    },
    #[error("nats-server exited at start-up ({status}); see {}", log.display())]
    Exited { status: ExitStatus, log: PathBuf },
    #[error("nats-server did not accept connections on port {port} within 5 s")]
    NotListening { port: u16 },
}

pub struct NatsChild {
    child: Child,
    pub url: String,
}

impl NatsChild {
    /// Starts a server storing JetStream data under `store` and waits until it accepts clients.
    pub async fn start(store: &Path) -> Result<Self, NatsChildError> {
        let binary = server_binary::locate().map_err(|source| NatsChildError::Locate { source })?;
        std::fs::create_dir_all(store).map_err(|source| NatsChildError::Store {
            path: store.to_owned(),
            source,
        })?;
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|listener| listener.local_addr())
            .map_err(|source| NatsChildError::Port { source })?
            .port();
        let config = store.join("chorus.conf");
        std::fs::write(&config, server_binary::SERVER_CONFIG).map_err(|source| {
            NatsChildError::Store {
                path: config.clone(),
                source,
            }
        })?;
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
            .arg("-sd")
            .arg(store)
            .arg("-l")
            .arg(store.join("nats-server.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| NatsChildError::Spawn {
                binary: binary.clone(),
                source,
            })?;
        let mut server = Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        };
        for _ in 0..200 {
            let exited = server
                .child
                .try_wait()
                .map_err(|source| NatsChildError::Wait { source })?;
            if let Some(status) = exited {
                return Err(NatsChildError::Exited {
                    status,
                    log: store.join("nats-server.log"),
                });
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(NatsChildError::NotListening { port })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the server cleanly (SIGTERM, then SIGKILL after 10 s).
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
