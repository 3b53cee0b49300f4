//! A real `nats-server` with JetStream for one test, in a temp directory, killed on drop: the
//! [`NatsProcess`] that `chorus dev` runs too (Chorus's server settings, a port the server picked
//! itself), started or failing loudly. [`NatsServer::stop`], [`NatsServer::kill`] and
//! [`NatsServer::start`] restart it on the same port and store, for tests of what survives a
//! broker restart.

use std::path::PathBuf;

use chorus_bus::natsd::NatsProcess;

pub struct NatsServer {
    process: NatsProcess,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server and waits until it accepts clients.
    pub async fn start_new() -> Self {
        Self::start_with_config("", &[]).await
    }

    /// Starts a server with the configuration `text` after Chorus's own settings (its port, store
    /// and JetStream are set on the command line), which may read `env` through `$VAR`
    /// references and `include chorus.conf`.
    pub async fn start_with_config(text: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the NATS store");
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let process = NatsProcess::start(dir.path(), text, env)
            .await
            .unwrap_or_else(|e| {
                let log = std::fs::read_to_string(dir.path().join("nats-server.log"));
                panic!("{e}\n{}", log.unwrap_or_default())
            });
        Self { process, _dir: dir }
    }

    pub fn url(&self) -> String {
        self.process.url()
    }

    pub fn port(&self) -> u16 {
        self.process.port()
    }

    pub fn log_path(&self) -> PathBuf {
        self.process.log_path()
    }

    /// (Re)starts a stopped server on the same port and store.
    pub async fn start(&mut self) {
        self.process
            .restart()
            .await
            .unwrap_or_else(|e| panic!("restarting nats-server: {e}"));
    }

    /// Stops the server cleanly (SIGTERM); the store is kept.
    pub async fn stop(&mut self) {
        self.process.stop().await;
    }

    /// Kills the server (SIGKILL), as a crash would; the store is kept.
    pub async fn kill(&mut self) {
        self.process.kill().await;
    }
}

/// A port that was free a moment ago, for a listener a test hands to a Chorus process that binds
/// it itself (prefer binding port 0 where the listener can be passed in).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}
