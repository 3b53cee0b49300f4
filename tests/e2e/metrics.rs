//! `/metrics` of every process: each role in a `chorus serve` process of its own (workers on
//! their probe port), traffic that touches every series, then each page parsed by the Prometheus
//! project's own parser (Python `prometheus_client`) and checked against the metrics table of
//! README.md: every documented series is exported, with its type, by the processes it names.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use chorus_core::config::{Price, RouteConfig, TenantConfig};
use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::{NatsServer, free_port};
use chorus_testkit::wait;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::helpers::*;

const PARSER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/parse_metrics.py");
const README: &str = include_str!("../../README.md");
const ROLES: [&str; 5] = ["edge", "orchestrator", "llm", "evaluator", "persister"];

/// One row of the README's metrics table: name, type, and the processes that export it.
struct Documented {
    name: String,
    kind: String,
    roles: Vec<&'static str>,
}

fn documented() -> Vec<Documented> {
    README
        .lines()
        .filter(|l| l.starts_with("| `chorus_"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`').to_owned();
            let roles = match cells[4] {
                "every process" => ROLES.to_vec(),
                listed => ROLES
                    .into_iter()
                    .filter(|r| listed.split(", ").any(|l| l == *r))
                    .collect(),
            };
            assert!(!roles.is_empty(), "no process exports {name}: {line}");
            Documented {
                name,
                kind: cells[2].to_owned(),
                roles,
            }
        })
        .collect()
}

/// A page parsed by the reference parser: family name → type.
async fn parse(page: &str) -> BTreeMap<String, String> {
    let mut child = tokio::process::Command::new("python3")
        .arg(PARSER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(page.as_bytes()).await.expect("write");
    drop(stdin);
    let output = child.wait_with_output().await.expect("parser");
    assert!(
        output.status.success(),
        "{}\n{page}",
        String::from_utf8_lossy(&output.stderr)
    );
    let families: BTreeMap<String, Value> =
        serde_json::from_slice(&output.stdout).expect("parser output");
    families
        .into_iter()
        .map(|(name, family)| (name, family["type"].as_str().unwrap_or_default().to_owned()))
        .collect()
}

#[tokio::test]
async fn every_process_exports_every_documented_series_in_valid_exposition_format() {
    if !python_has("prometheus_client").await {
        return;
    }
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mut config = test_config(&nats, &db);
    config.routes.push(RouteConfig {
        fallbacks: vec!["backup".into()],
        ..RouteConfig::new("primary", "sim", "echo?error=503")
    });
    config.routes.push(RouteConfig {
        rpm: Some(6000),
        price: Some(Price {
            input_per_mtok: 1.0,
            output_per_mtok: 2.0,
        }),
        ..RouteConfig::new("backup", "sim", "echo")
    });
    // A budget, for its gauges (calls on unpriced routes counted at a default price).
    config.budgets.default_price = Some(Price {
        input_per_mtok: 1.0,
        output_per_mtok: 1.0,
    });
    config.tenants.insert(
        "thrifty".into(),
        TenantConfig {
            budget_usd: Some(1.0),
            ..TenantConfig::default()
        },
    );
    let base = free_edge(&mut config);
    let processes = Processes::new(&config);
    assert!(processes.run(&["migrate"]).await.status.success());
    let mut ports = BTreeMap::new();
    let _children: Vec<Chorus> = ROLES
        .iter()
        .map(|role| {
            let port = free_port();
            ports.insert(*role, port);
            processes.spawn_with(
                &["serve", "--roles", role],
                &[("CHORUS_PROBES_LISTEN", format!("127.0.0.1:{port}"))],
            )
        })
        .collect();
    let (client, _) = admin_client(db.url()).await;
    wait_ready(&client, &base).await;
    for role in &ROLES[1..] {
        wait_ready(&client, &format!("http://127.0.0.1:{}", ports[role])).await;
    }

    // Traffic for every series: a retried route that falls back to a limited, priced one, an
    // evaluated job, and an unmatched path.
    let mut job = single("primary", "fall back, please");
    job["evaluate"] = json!({"assertions": [{"type": "contains", "value": "fall back"}]});
    let response = client
        .post(format!("{base}/v1/jobs?wait=30"))
        .json(&job)
        .send()
        .await
        .expect("submit");
    let stored: Value = response.json().await.expect("json");
    assert_eq!(stored["status"], "succeeded", "{stored:#}");
    let response = client
        .post(format!("{base}/v1/jobs?wait=30"))
        .json(&single("backup", "straight to the limited route"))
        .send()
        .await
        .expect("submit");
    assert_eq!(response.status(), 200);
    let missing = client
        .get(format!("{base}/nowhere"))
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), 404);

    let documented = documented();
    assert!(documented.len() >= 15, "the README documents the series");
    for role in ROLES {
        let url = match role {
            "edge" => format!("{base}/metrics"),
            _ => format!("http://127.0.0.1:{}/metrics", ports[role]),
        };
        let exported = wait::until(
            Duration::from_secs(20),
            &format!("every series of {role}"),
            || async {
                let page = client.get(&url).send().await.ok()?.text().await.ok()?;
                let exported = parse(&page).await;
                let complete = documented
                    .iter()
                    .filter(|d| d.roles.contains(&role))
                    .all(|d| family(&exported, &d.name).is_some());
                complete.then_some(exported)
            },
        )
        .await;
        for series in documented.iter().filter(|d| d.roles.contains(&role)) {
            let kind = family(&exported, &series.name).expect("present");
            assert_eq!(
                kind, series.kind,
                "{role}: {} is a {}",
                series.name, series.kind
            );
        }
        for name in exported.keys() {
            assert!(name.starts_with("chorus_"), "{role} exports {name}");
        }
    }
}

/// The type of the family a documented series belongs to (the parser names a counter's family
/// without `_total`).
fn family<'a>(exported: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    exported
        .get(name)
        .or_else(|| exported.get(name.strip_suffix("_total")?))
        .map(String::as_str)
}
