//! Stopping, as a developer's ctrl-c and a rolling update do it: a process with nothing in flight
//! exits soon after SIGTERM whatever its roles (its drains end when its work does, not when a
//! timeout does), and `chorus dev` owns its folder: its nats-server child dies with it even when
//! it is killed, and a second `chorus dev` in the same folder refuses; a process whose NATS
//! server is gone exits as soon. Each stop's time is printed (`--nocapture`); the bound is the
//! issue's, the aim about a second.

use std::path::Path;
use std::time::{Duration, Instant};

use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::NatsServer;
use chorus_testkit::wait;
use tokio::process::Command;

use crate::helpers::*;

/// How long an idle process may take to exit after SIGTERM.
const STOP_WITHIN: Duration = Duration::from_secs(5);

/// SIGTERM, then how long the process took to exit; it must exit 0 within [`STOP_WITHIN`].
async fn stop(process: &mut Running) -> Duration {
    let sent = Instant::now();
    signal(process.pid(), nix::sys::signal::Signal::SIGTERM);
    let status = tokio::time::timeout(STOP_WITHIN, process.wait())
        .await
        .unwrap_or_else(|_| panic!("still running {STOP_WITHIN:?} after SIGTERM"));
    let took = sent.elapsed();
    assert!(status.success(), "exited with {status}");
    took
}
fn signal(pid: i32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).expect("signal");
}

#[tokio::test]
async fn an_idle_process_exits_soon_after_sigterm_whatever_its_roles() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let processes = Processes::new(&test_config(&nats, &db));
    assert!(processes.run(&["migrate"]).await.status.success());

    for roles in [
        "edge",
        "orchestrator",
        "llm",
        "evaluator",
        "persister",
        "edge,orchestrator,llm,evaluator,persister",
    ] {
        let mut serve = processes.running(&["serve", "--roles", roles]);
        serve.wait_for("chorus is running").await;
        let took = stop(&mut serve).await;
        eprintln!("serve --roles {roles}: exited {took:?} after SIGTERM");
    }
}

#[tokio::test]
async fn a_process_whose_nats_server_is_gone_still_exits_soon_after_sigterm() {
    let mut nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let processes = Processes::new(&test_config(&nats, &db));
    assert!(processes.run(&["migrate"]).await.status.success());
    let mut serve = processes.running(&[
        "serve",
        "--roles",
        "edge,orchestrator,llm,evaluator,persister",
    ]);
    serve.wait_for("chorus is running").await;

    // As `podman-compose stop` does it: NATS goes at the same moment as the roles. Open pull
    // requests can never end then, nor a flush succeed; neither may hold up the exit.
    nats.stop().await;
    serve.wait_for("disconnected").await;
    let took = stop(&mut serve).await;
    eprintln!("serve, every role, NATS gone: exited {took:?} after SIGTERM");
}

/// `chorus dev` in `dir`, on a free port, with nothing of the test's environment.
fn dev(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chorus"));
    command
        .current_dir(dir)
        .args(["dev", "--dir", ".chorus"])
        .env("CHORUS_EDGE_LISTEN", "127.0.0.1:0");
    command
}

/// The nats-server processes `chorus dev` started in `dir` that still live (each writes a
/// `nats-server_<pid>.ports` file; a killed one leaves it behind).
fn live_nats_servers(dir: &Path) -> Vec<u32> {
    let ports = dir.join(".chorus/nats/ports");
    let Ok(entries) = std::fs::read_dir(ports) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".ports")?
                .rsplit('_')
                .next()?
                .parse()
                .ok()
        })
        .filter(|&pid| alive(pid))
        .collect()
}

/// Whether `pid` runs (a zombie, dead but not yet reaped by its new parent, does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // `pid (comm) state …`: the state follows the last parenthesis.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X')
    })
}

#[tokio::test]
async fn chorus_dev_stops_soon_owns_its_folder_and_takes_its_nats_server_down_with_it() {
    let dir = tempfile::tempdir().expect("dir");

    let mut first = Running::spawn(&mut dev(dir.path()));
    first.wait_for("Press ctrl-c to stop").await;
    let servers = live_nats_servers(dir.path());
    assert_eq!(servers.len(), 1, "one nats-server child: {servers:?}");

    // A second one in the same folder says so, and leaves the first alone.
    let second = dev(dir.path()).output().await.expect("run chorus dev");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second dev started: {said}");
    assert!(
        said.contains("another `chorus dev`") && said.contains("already running"),
        "{said}"
    );
    assert_eq!(live_nats_servers(dir.path()), servers);

    let took = stop(&mut first).await;
    eprintln!("chorus dev: exited {took:?} after SIGTERM");
    assert_eq!(live_nats_servers(dir.path()), Vec::<u32>::new());

    // Killed, it takes its nats-server child with it, and frees the folder.
    let mut killed = Running::spawn(&mut dev(dir.path()));
    killed.wait_for("Press ctrl-c to stop").await;
    let servers = live_nats_servers(dir.path());
    assert_eq!(servers.len(), 1, "one nats-server child: {servers:?}");
    killed.kill().await;
    wait::until(
        Duration::from_secs(10),
        "the nats-server child to die with its parent",
        || async { live_nats_servers(dir.path()).is_empty().then_some(()) },
    )
    .await;

    let mut again = Running::spawn(&mut dev(dir.path()));
    again.wait_for("Press ctrl-c to stop").await;
    stop(&mut again).await;
}
