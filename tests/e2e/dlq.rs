//! Dead letters ops can work with: entries from the MAX_DELIVERIES advisory for messages that
//! crash their worker every time, and `chorus dlq` / `/v1/admin/dlq` listing, showing, replaying
//! (paced, capped, dry-run) and purging them, each change written to the audit log.

use std::path::Path;
use std::time::Duration;

use chorus_bus::Bus;
use chorus_bus::dlq::{DeadLetters, Entry, Filter};
use chorus_core::config::Config;
use chorus_store::{AuditAction, AuditRecord, Store};
use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::NatsServer;
use chorus_testkit::wait;
use serde_json::{Value, json};

use crate::helpers::*;

/// The route whose calls make the llm worker panic, every time.
const CRASH: &str = "sim:echo?latency=1ms";
const UNAVAILABLE: &str = "sim:echo?error=503";
const MALFORMED: &str = "sim:echo?error=malformed";

/// A copy of `nats/` whose llm consumer gives up after 3 deliveries instead of 5.
fn three_deliveries(dir: &Path) {
    llm_consumer_with(dir, |text| {
        text.replace("\"max_deliver\": 5", "\"max_deliver\": 3")
    });
}

/// A test configuration whose llm worker panics on every call to [`CRASH`] (and is restarted
/// as often as it takes), with three deliveries per llm message.
fn crashing_config(nats: &NatsServer, db: &TestDatabase, definitions: &Path) -> Config {
    three_deliveries(definitions);
    let mut config = test_config(nats, db);
    config.nats.definitions = Some(definitions.to_owned());
    config.llm.workers = 4;
    config.faults.llm_panic_route = Some(CRASH.into());
    config.faults.llm_panic_times = 0;
    config.supervision.max_restarts = 10_000;
    config
}

async fn entries(bus: &Bus) -> Vec<Entry> {
    let dlq = DeadLetters::new(bus.clone());
    let (entries, _) = dlq.select(&Filter::default(), 1_000).await.expect("select");
    entries
}

/// Waits for a dead letter of `job` filed `replays` times over, and returns it.
async fn dead_letter(bus: &Bus, job: &str, replays: u32) -> Entry {
    wait::until(
        Duration::from_secs(60),
        &format!("a dead letter of job {job} with replays={replays}"),
        || async {
            entries(bus).await.into_iter().find(|e| {
                e.letter.job_id.map(|j| j.to_string()).as_deref() == Some(job)
                    && e.letter.replays == replays
            })
        },
    )
    .await
}

async fn submit(app: &TestApp, model: &str) -> String {
    let response = app.post_job(&single(model, "dead letter me"), "").await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    body["id"].as_str().expect("id").to_owned()
}

async fn audit_rows(db: &TestDatabase) -> Vec<AuditRecord> {
    let store = Store::connect(db.url(), 1).await.expect("db");
    store.audit_entries(None, 100).await.expect("audit log")
}

fn header<'a>(entry: &'a Entry, name: &str) -> Option<&'a str> {
    entry
        .letter
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

async fn cli(processes: &Processes, args: &[&str]) -> Value {
    let mut full = vec!["dlq"];
    full.extend_from_slice(args);
    full.push("--json");
    let output = processes.run(&full).await;
    assert!(
        output.status.success(),
        "chorus {full:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON output")
}

fn seqs(listed: &Value) -> Vec<u64> {
    listed
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect()
}

#[tokio::test]
async fn a_message_that_crashes_its_worker_every_time_is_dead_lettered_through_the_advisory() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let definitions = tempfile::tempdir().expect("dir");
    let config = crashing_config(&nats, &db, definitions.path());
    let app = TestApp::start(config).await;
    let job = submit(&app, CRASH).await;

    let entry = dead_letter(&app.bus, &job, 0).await;
    let letter = &entry.letter;
    assert_eq!(letter.stage, chorus_core::subjects::Stage::Llm);
    assert_eq!(letter.error_kind, "max_deliveries");
    assert!(
        letter.error.contains("crashed or stalled"),
        "{}",
        letter.error
    );
    assert_eq!(letter.deliveries, 3);
    assert_eq!(letter.route.as_deref(), Some(CRASH));
    assert_eq!(letter.tenant.as_ref().map(|t| t.as_str()), Some("default"));
    // A REST job without `wait` is the standard band's; the call waited in its tenant's flow.
    let flow = app.bus.subjects.llm_flows().subject(
        Some(CRASH),
        chorus_core::fair::Band::Standard,
        &chorus_core::Tenant::new("default").expect("tenant"),
    );
    assert_eq!(letter.subject, flow);
    assert_eq!(header(&entry, "Chorus-Type"), Some("llm.call/1"));
    assert!(!letter.payload.is_empty());

    // The original left its work stream, and the advisory was consumed.
    wait::until(
        Duration::from_secs(10),
        "empty work and advisory streams",
        || async {
            let work = stream_state(&app.bus, "work").await.0;
            let advisories = stream_state(&app.bus, "advisories").await.0;
            (work == 0 && advisories == 0).then_some(())
        },
    )
    .await;
    assert_eq!(entries(&app.bus).await.len(), 1, "filed exactly once");
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_message_that_kills_its_worker_process_every_time_is_dead_lettered_through_the_advisory()
{
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let definitions = tempfile::tempdir().expect("dir");
    // Three deliveries, each redelivered 2 s after its process died.
    llm_consumer_with(definitions.path(), |text| {
        text.replace("\"max_deliver\": 5", "\"max_deliver\": 3")
            .replace("\"ack_wait\": 60000000000", "\"ack_wait\": 2000000000")
    });
    let mut config = test_config(&nats, &db);
    config.nats.definitions = Some(definitions.path().to_owned());
    config.faults.llm_abort_route = Some(CRASH.into());
    let processes = Processes::new(&config);
    let roles = [
        RoleName::Edge,
        RoleName::Orchestrator,
        RoleName::Evaluator,
        RoleName::Persister,
    ];
    let app = TestApp::start_roles(config, &roles).await;
    let job = submit(&app, CRASH).await;

    // What Kubernetes would do: start an llm process again each time one dies. Every delivery of
    // the message takes one down.
    for delivery in 1..=3 {
        let mut pod = processes.spawn(&["serve", "--roles", "llm"]);
        let status = pod.exit(Duration::from_secs(30)).await;
        assert!(
            !status.success(),
            "delivery {delivery}: the process should have aborted ({status})"
        );
    }
    // And once more: the server gives up on the message (and says so) when a puller next asks
    // for it past max_deliver; this process never gets it, and lives. (Until 1 s pull requests,
    // the dead third process's 5 s request, still open at the server, was that puller.)
    let survivor = processes.spawn(&["serve", "--roles", "llm"]);

    let entry = dead_letter(&app.bus, &job, 0).await;
    assert_eq!(entry.letter.error_kind, "max_deliveries");
    assert_eq!(entry.letter.deliveries, 3);
    assert_eq!(entry.letter.route.as_deref(), Some(CRASH));
    let failed = wait_done(&app.base, &app.client, &job, Duration::from_secs(30)).await;
    assert_eq!(failed["status"], "failed", "{failed:#}");
    assert_eq!(failed["error"]["kind"], "max_deliveries", "{failed:#}");
    wait::until(Duration::from_secs(10), "an empty work stream", || async {
        (stream_state(&app.bus, "work").await.0 == 0).then_some(())
    })
    .await;
    assert_eq!(entries(&app.bus).await.len(), 1, "filed exactly once");
    drop(survivor);
}

#[tokio::test]
async fn chorus_dlq_lists_shows_replays_within_the_cap_and_purges_with_an_audit_trail() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let definitions = tempfile::tempdir().expect("dir");
    let config = crashing_config(&nats, &db, definitions.path());
    let processes = Processes::new(&config);
    let app = TestApp::start(config).await;
    let (crash, unavailable, malformed) = (
        submit(&app, CRASH).await,
        submit(&app, UNAVAILABLE).await,
        submit(&app, MALFORMED).await,
    );
    let crash_entry = dead_letter(&app.bus, &crash, 0).await;
    let unavailable_entry = dead_letter(&app.bus, &unavailable, 0).await;
    let malformed_entry = dead_letter(&app.bus, &malformed, 0).await;
    assert_eq!(unavailable_entry.letter.error_kind, "server_error");
    assert_eq!(malformed_entry.letter.error_kind, "malformed");

    // list, with each filter
    let all = cli(&processes, &["list"]).await;
    assert_eq!(all["data"].as_array().map(Vec::len), Some(3), "{all:#}");
    assert_eq!(all["has_more"], false);
    let only = async |args: &[&str]| seqs(&cli(&processes, args).await["data"]);
    assert_eq!(
        only(&["list", "--kind", "max_deliveries"]).await,
        [crash_entry.seq]
    );
    assert_eq!(
        only(&["list", "--route", UNAVAILABLE]).await,
        [unavailable_entry.seq]
    );
    assert_eq!(only(&["list", "--stage", "llm"]).await.len(), 3);
    assert!(only(&["list", "--stage", "evaluator"]).await.is_empty());
    assert_eq!(only(&["list", "--since", "1h"]).await.len(), 3);
    assert!(only(&["list", "--until", "1h"]).await.is_empty());
    for entry in all["data"].as_array().expect("entries") {
        let (seq, at) = (
            entry["seq"].as_u64(),
            entry["failed_at"].as_str().expect("time"),
        );
        assert!(
            only(&["list", "--since", at])
                .await
                .iter()
                .any(|s| Some(*s) == seq)
        );
        assert!(
            only(&["list", "--until", at])
                .await
                .iter()
                .any(|s| Some(*s) == seq)
        );
    }
    assert_eq!(only(&["list", "--limit", "2"]).await.len(), 2);
    let table = processes.run(&["dlq", "list"]).await;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("SEQ"), "{table}");
    assert!(
        table.contains("max_deliveries") && table.contains(&crash),
        "{table}"
    );

    // show
    let seq = unavailable_entry.seq.to_string();
    let shown = cli(&processes, &["show", &seq]).await;
    assert_eq!(shown["seq"], unavailable_entry.seq);
    assert_eq!(shown["job_id"], unavailable.as_str());
    assert_eq!(shown["route"], UNAVAILABLE);
    assert_eq!(
        shown["body"]["encoding"], "base64",
        "MessagePack is not text"
    );
    assert!(
        shown["headers"]
            .as_array()
            .expect("headers")
            .contains(&json!({"name": "Chorus-Type", "value": "llm.call/1"})),
        "{shown:#}"
    );
    let missing = processes.run(&["dlq", "show", "99999"]).await;
    assert!(!missing.status.success());

    // a dry run changes nothing and is not audited
    let work_before = stream_state(&app.bus, "work").await;
    let dry = cli(
        &processes,
        &["replay", "--kind", "server_error", "--dry-run"],
    )
    .await;
    assert_eq!(
        (dry["dry_run"].as_bool(), dry["matched"].as_u64()),
        (Some(true), Some(1))
    );
    assert_eq!(seqs(&dry["replayed"]), [unavailable_entry.seq]);
    assert_eq!(entries(&app.bus).await.len(), 3);
    assert_eq!(stream_state(&app.bus, "work").await, work_before);
    let dry = cli(&processes, &["purge", "--all", "--dry-run"]).await;
    assert_eq!(seqs(&dry["purged"]).len(), 3);
    assert_eq!(entries(&app.bus).await.len(), 3);
    assert!(audit_rows(&db).await.is_empty(), "dry runs are not audited");

    // replay: republished with Chorus-Replays 1 and a fresh id, gone from the DLQ; both fail
    // again and come back with replays=1
    let both = format!("{},{}", crash_entry.seq, unavailable_entry.seq);
    let replayed = cli(
        &processes,
        &[
            "replay", "--seq", &both, "--rate", "5", "--actor", "ops@test",
        ],
    )
    .await;
    assert_eq!(
        seqs(&replayed["replayed"]),
        [crash_entry.seq, unavailable_entry.seq]
    );
    assert!(replayed["failed"].as_array().is_some_and(Vec::is_empty));
    let dlq = DeadLetters::new(app.bus.clone());
    for entry in [&crash_entry, &unavailable_entry] {
        assert!(
            dlq.get(entry.seq).await.expect("get").is_none(),
            "replayed entries leave the DLQ"
        );
    }
    let crash_again = dead_letter(&app.bus, &crash, 1).await;
    let unavailable_again = dead_letter(&app.bus, &unavailable, 1).await;
    assert_eq!(crash_again.letter.error_kind, "max_deliveries");
    assert_eq!(unavailable_again.letter.error_kind, "server_error");
    for (again, first) in [
        (&crash_again, &crash_entry),
        (&unavailable_again, &unavailable_entry),
    ] {
        assert_eq!(header(again, "Chorus-Replays"), Some("1"));
        let original = header(first, "Nats-Msg-Id").expect("original id");
        assert_eq!(
            header(again, "Nats-Msg-Id"),
            Some(format!("{original}:replay:1").as_str())
        );
        assert_eq!(again.letter.subject, first.letter.subject);
    }
    let rows = audit_rows(&db).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].actor.as_str(), rows[0].action.as_str()),
        ("ops@test", "dlq.replay")
    );
    assert_eq!(rows[0].detail["dry_run"], false);
    assert_eq!(
        rows[0].detail["filter"]["sequences"],
        json!([crash_entry.seq, unavailable_entry.seq])
    );
    assert_eq!(
        seqs(&rows[0].detail["replayed"]),
        [crash_entry.seq, unavailable_entry.seq]
    );
    assert_eq!(
        rows[0].detail["replayed"][1]["job_id"],
        unavailable.as_str()
    );

    // the cap: an entry replayed once already is refused under --max-replays 1
    let seq = unavailable_again.seq.to_string();
    let capped = cli(&processes, &["replay", "--seq", &seq, "--max-replays", "1"]).await;
    assert!(capped["replayed"].as_array().is_some_and(Vec::is_empty));
    assert_eq!(seqs(&capped["refused"]), [unavailable_again.seq]);
    assert!(
        capped["refused"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cap is 1")),
        "{capped:#}"
    );
    assert!(dlq.get(unavailable_again.seq).await.expect("get").is_some());
    let rows = audit_rows(&db).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(seqs(&rows[0].detail["refused"]), [unavailable_again.seq]);

    // purge
    let refused = processes.run(&["dlq", "purge"]).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--all"));
    let purged = cli(
        &processes,
        &["purge", "--kind", "malformed", "--actor", "ops@test"],
    )
    .await;
    assert_eq!(seqs(&purged["purged"]), [malformed_entry.seq]);
    assert!(dlq.get(malformed_entry.seq).await.expect("get").is_none());
    assert_eq!(entries(&app.bus).await.len(), 2);
    let rows = audit_rows(&db).await;
    assert_eq!(rows.len(), 3);
    assert_eq!(
        (rows[0].actor.as_str(), rows[0].action.as_str()),
        ("ops@test", "dlq.purge")
    );
    assert_eq!(rows[0].detail["filter"], json!({"kind": "malformed"}));
    assert_eq!(rows[0].detail["purged"][0]["job_id"], malformed.as_str());
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn the_admin_api_lists_shows_replays_and_purges_with_an_audit_trail() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let definitions = tempfile::tempdir().expect("dir");
    let mut config = crashing_config(&nats, &db, definitions.path());
    config.dlq.max_replays = 1;
    let app = TestApp::start(config).await;
    let job = submit(&app, UNAVAILABLE).await;
    let first = dead_letter(&app.bus, &job, 0).await;
    let url = |path: &str| format!("{}/v1/admin/dlq{path}", app.base);
    let get = |path: String| {
        let client = app.client.clone();
        async move {
            let response = client.get(path).send().await.expect("GET");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("JSON"))
        }
    };
    let post = |path: String, body: Value| {
        let client = app.client.clone();
        async move {
            let response = client.post(path).json(&body).send().await.expect("POST");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("JSON"))
        }
    };

    let (status, listed) = get(url("?stage=llm&kind=server_error&since=1h")).await;
    assert_eq!(status, 200, "{listed:#}");
    assert_eq!(listed["object"], "list");
    assert_eq!(seqs(&listed["data"]), [first.seq]);
    assert_eq!(listed["data"][0]["route"], UNAVAILABLE);
    let (_, none) = get(url("?kind=max_deliveries")).await;
    assert!(seqs(&none["data"]).is_empty());
    let (status, bad) = get(url("?stage=nowhere")).await;
    assert_eq!(
        (status, bad["error"]["param"].as_str()),
        (422, Some("stage"))
    );
    let (status, bad) = get(url("?since=last-tuesday")).await;
    assert_eq!(
        (status, bad["error"]["param"].as_str()),
        (422, Some("since"))
    );

    let (status, shown) = get(url(&format!("/{}", first.seq))).await;
    assert_eq!(status, 200);
    assert_eq!(shown["job_id"], job.as_str());
    assert_eq!(shown["body"]["encoding"], "base64");
    assert_eq!(shown["body"]["bytes"], first.letter.payload.len());
    assert!(shown["headers"].as_array().is_some_and(|h| !h.is_empty()));
    let (status, _) = get(url("/99999")).await;
    assert_eq!(status, 404);
    let (status, bad) = get(url("/x")).await;
    assert_eq!((status, bad["error"]["param"].as_str()), (400, Some("seq")));

    // selection guard, dry run
    let (status, bad) = post(url("/replay"), json!({})).await;
    assert_eq!(status, 422, "{bad:#}");
    let (status, dry) = post(url("/replay"), json!({"all": true, "dry_run": true})).await;
    assert_eq!(status, 200, "{dry:#}");
    assert_eq!(seqs(&dry["replayed"]), [first.seq]);
    assert!(dry.get("audit_id").is_none());
    assert!(
        DeadLetters::new(app.bus.clone())
            .get(first.seq)
            .await
            .expect("get")
            .is_some()
    );
    assert!(audit_rows(&db).await.is_empty());

    // replay, then the cap (dlq.max_replays = 1) refuses the entry it comes back as
    let (status, replayed) = post(
        url("/replay"),
        json!({"sequences": [first.seq], "rate": 10}),
    )
    .await;
    assert_eq!(status, 200, "{replayed:#}");
    assert_eq!(seqs(&replayed["replayed"]), [first.seq]);
    let again = dead_letter(&app.bus, &job, 1).await;
    assert_eq!(header(&again, "Chorus-Replays"), Some("1"));
    let (status, capped) = post(url("/replay"), json!({"kind": "server_error"})).await;
    assert_eq!(status, 200);
    assert_eq!(seqs(&capped["refused"]), [again.seq]);
    assert!(capped["replayed"].as_array().is_some_and(Vec::is_empty));

    // purge
    let (status, bad) = post(url("/purge"), json!({"kind": "server_error", "rate": 1})).await;
    assert_eq!(
        (status, bad["error"]["param"].as_str()),
        (422, Some("rate"))
    );
    let (status, purged) = post(url("/purge"), json!({"sequences": [again.seq]})).await;
    assert_eq!(status, 200, "{purged:#}");
    assert_eq!(seqs(&purged["purged"]), [again.seq]);
    assert!(entries(&app.bus).await.is_empty());

    let rows = audit_rows(&db).await;
    let actions: Vec<&str> = rows.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["dlq.purge", "dlq.replay", "dlq.replay"]);
    // The key that asked, by id and tenant (never the key itself).
    let key_id = app.key.split('_').nth(1).expect("key id");
    assert!(
        rows.iter()
            .all(|r| r.actor == format!("key:{key_id}@default")),
        "{rows:#?}"
    );
    assert_eq!(rows[0].id, purged["audit_id"].as_i64().expect("audit id"));
    assert_eq!(seqs(&rows[2].detail["replayed"]), [first.seq]);
    assert_eq!(seqs(&rows[1].detail["refused"]), [again.seq]);
    let replays = Store::connect(db.url(), 1)
        .await
        .expect("db")
        .audit_entries(Some(AuditAction::DlqReplay), 10)
        .await
        .expect("audit");
    assert_eq!(replays.len(), 2);
    app.shutdown().await.expect("clean shutdown");
}
