//! Replicas against a JetStream cluster of three, through the real binary: `chorus nats apply`
//! refuses streams of one replica on a clustered server (naming the fix, exiting non-zero,
//! creating nothing) unless passed `--allow-single-replica`; with `CHORUS_NATS_REPLICAS=3` the
//! same streams are raised in place to three replicas, every KV bucket's stream and every durable
//! consumer included. `chorus serve` does not refuse: it warns and runs. Against one server, one
//! replica is applied as before, without the flag.

use std::process::{Output, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use chorus_core::config::Config;
use chorus_testkit::cluster::NatsCluster;
use chorus_testkit::nats::NatsServer;
use chorus_testkit::wait;
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncBufReadExt;

use crate::helpers::Processes;

/// What the refusal says, whatever the cluster's name.
const REFUSAL: &str = "streams with 1 replica lose their messages with that node; set \
                       nats.replicas = 3 (CHORUS_NATS_REPLICAS=3), or pass \
                       --allow-single-replica to `chorus nats apply` to keep 1";

fn config(url: String) -> Config {
    let mut config = Config::default();
    config.nats.url = url;
    config
}

/// Runs `chorus <args>` with the configuration of `processes` and `env` over it.
async fn chorus(processes: &Processes, args: &[&str], env: &[(&str, &str)]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .arg("--config")
        .arg(&processes.config_path)
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .output();
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("chorus finished in time")
        .expect("run chorus")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn succeeded(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// Every stream's name and replicas, and every durable consumer's name and replicas (its leader
/// and the peers its cluster info lists).
async fn replicas(js: &jetstream::Context) -> (Vec<(String, usize)>, Vec<(String, usize)>) {
    let mut streams = Vec::new();
    let mut consumers = Vec::new();
    let names: Vec<String> = js.stream_names().try_collect().await.expect("stream names");
    for name in names {
        let mut stream = js.get_stream(&name).await.expect("stream");
        let info = stream.info().await.expect("stream info");
        streams.push((name.clone(), info.config.num_replicas));
        let mut infos = stream.consumers();
        while let Some(info) = infos.next().await {
            let info = info.expect("consumer info");
            let peers = info.cluster.map_or(0, |c| c.replicas.len());
            consumers.push((format!("{name}/{}", info.name), 1 + peers));
        }
    }
    streams.sort();
    consumers.sort();
    (streams, consumers)
}

#[tokio::test]
async fn nats_apply_refuses_one_replica_on_a_cluster_unless_told_and_raises_it_to_three() {
    let cluster = NatsCluster::start(3).await;
    let processes = Processes::new(&config(cluster.urls()));
    let client = cluster.connect().await;
    let js = jetstream::new(client);

    // nats.replicas = 1 (the default) against the cluster: refused, nothing created.
    let refused = chorus(&processes, &["nats", "apply"], &[]).await;
    let stderr = text(&refused.stderr);
    assert!(
        !refused.status.success(),
        "applied 1 replica on a cluster: {}",
        text(&refused.stdout)
    );
    assert!(
        stderr.contains("the NATS server is part of cluster chorus") && stderr.contains(REFUSAL),
        "{stderr}"
    );
    let (streams, _) = replicas(&js).await;
    assert!(
        streams.is_empty(),
        "created despite the refusal: {streams:?}"
    );

    // Told to: applied, each stream on one node.
    let allowed = chorus(
        &processes,
        &["nats", "apply", "--allow-single-replica"],
        &[],
    )
    .await;
    let stdout = succeeded(&allowed, "apply --allow-single-replica");
    assert!(stdout.contains("stream CHORUS_SUBMIT: created"), "{stdout}");
    let (streams, consumers) = replicas(&js).await;
    assert!(streams.len() >= 10, "{streams:?}");
    assert!(streams.iter().all(|(_, r)| *r == 1), "{streams:?}");
    assert!(!consumers.is_empty());

    // nats.replicas = 3: every stream, KV buckets' included, is raised in place, and its
    // consumers follow it.
    let raised = chorus(
        &processes,
        &["nats", "apply"],
        &[("CHORUS_NATS_REPLICAS", "3")],
    )
    .await;
    let stdout = succeeded(&raised, "apply with CHORUS_NATS_REPLICAS=3");
    assert!(
        stdout.contains("stream KV_chorus_jobs: updated num_replicas"),
        "{stdout}"
    );
    let (streams, consumers) = wait::until(
        Duration::from_secs(30),
        "every stream and consumer on three nodes",
        || {
            let js = js.clone();
            async move {
                let (streams, consumers) = replicas(&js).await;
                let three = streams.iter().chain(&consumers).all(|(_, r)| *r == 3);
                three.then_some((streams, consumers))
            }
        },
    )
    .await;
    for bucket in ["jobs", "limits", "budgets", "cancels"] {
        let name = format!("KV_chorus_{bucket}");
        assert!(streams.iter().any(|(s, _)| *s == name), "{streams:?}");
    }
    assert!(
        consumers.iter().any(|(c, _)| c == "CHORUS_WORK/llm"),
        "{consumers:?}"
    );

    // Applying the same again changes nothing.
    let again = chorus(
        &processes,
        &["nats", "apply"],
        &[("CHORUS_NATS_REPLICAS", "3")],
    )
    .await;
    let stdout = succeeded(&again, "a second apply with 3 replicas");
    assert!(
        stdout.lines().all(|l| l.ends_with(": unchanged")),
        "{stdout}"
    );
}

#[tokio::test]
async fn serve_warns_about_one_replica_on_a_cluster_and_runs() {
    let cluster = NatsCluster::start(3).await;
    let processes = Processes::new(&config(cluster.urls()));
    // The evaluator needs no database: NATS is all it asks for at start-up.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .arg("--config")
        .arg(&processes.config_path)
        .args(["serve", "--roles", "evaluator"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn chorus serve");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut seen = Vec::new();
    let warned = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("stderr line") {
            if line.contains("WARN") && line.contains(REFUSAL) {
                return true;
            }
            seen.push(line);
        }
        false
    })
    .await;
    assert_eq!(warned, Ok(true), "no warning; stderr: {seen:#?}");
    // It did not refuse: the streams are there, and the process still runs.
    let js = jetstream::new(cluster.connect().await);
    wait::until(Duration::from_secs(30), "the streams", || {
        let js = js.clone();
        async move {
            let (streams, _) = replicas(&js).await;
            (streams.len() >= 10).then_some(())
        }
    })
    .await;
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "chorus serve exited"
    );
    child.kill().await.expect("kill");
}

#[tokio::test]
async fn nats_apply_takes_one_replica_on_a_single_server() {
    let nats = NatsServer::start_new().await;
    let processes = Processes::new(&config(nats.url()));
    let applied = chorus(&processes, &["nats", "apply"], &[]).await;
    let stdout = succeeded(&applied, "apply on one server");
    assert!(stdout.contains("stream CHORUS_SUBMIT: created"), "{stdout}");
    assert!(!text(&applied.stderr).contains("replica"));
}
