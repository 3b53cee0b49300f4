//! Names users choose, in NATS names: a prefix with a `-`, limited routes whose names differ only
//! in characters NATS names cannot hold.

use std::time::Duration;

use chorus_core::config::RouteConfig;
use chorus_core::fair::Band;
use chorus_core::subjects::{Flow, Subjects, token};
use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::NatsServer;
use futures::StreamExt;
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn a_dashed_prefix_and_routes_named_with_at_and_plus_each_get_their_own_names() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mut config = test_config(&nats, &db);
    config.nats.prefix = "team-a".into();
    for name in ["claude@vertex", "claude+vertex"] {
        config.routes.push(RouteConfig {
            rpm: Some(6_000),
            max_concurrency: Some(4),
            ..RouteConfig::new(name, "sim", "echo")
        });
    }
    let app = TestApp::start(config).await;

    let mut ids = Vec::new();
    for route in ["claude@vertex", "claude+vertex", "fast"] {
        for i in 0..5 {
            let response = app
                .post_job(&single(route, &format!("{route} {i}")), "")
                .await;
            assert_eq!(response.status(), 202, "{route}");
            let body: Value = response.json().await.expect("json");
            ids.push((route, body["id"].as_str().expect("an id").to_owned()));
        }
    }
    for (route, id) in &ids {
        let job = wait_done(&app.base, &app.client, id, Duration::from_secs(60)).await;
        assert_eq!(job["status"], "succeeded", "{job:#}");
        assert_eq!(job["steps"][0]["answered_by"], *route);
    }

    // Streams and buckets under the prefix, `-` as `_`; one flow consumer and one rate state per route.
    let subjects = Subjects::new("team-a");
    let mut streams = Vec::new();
    let mut names = app.bus.js.stream_names();
    while let Some(Ok(name)) = names.next().await {
        streams.push(name);
    }
    for expected in [
        "TEAM_A_WORK",
        "KV_team_a_jobs",
        "KV_team_a_limits",
        "KV_team_a_cancels",
    ] {
        assert!(
            streams.iter().any(|s| s == expected),
            "{expected} in {streams:?}"
        );
    }
    assert!(
        streams.iter().all(|s| subjects.owns_stream(s)),
        "{streams:?}"
    );
    let work = app.bus.js.get_stream("TEAM_A_WORK").await.expect("work");
    let limits = app
        .bus
        .js
        .get_key_value(subjects.limits_bucket())
        .await
        .expect("limits bucket");
    let (at, plus) = (token("claude@vertex"), token("claude+vertex"));
    assert_ne!(at, plus);
    let tenant = chorus_core::Tenant::new("default").expect("tenant");
    for route in ["claude@vertex", "claude+vertex"] {
        // The route's calls waited in the default tenant's standard flow, behind its gate.
        let flows = subjects.limited_llm_flows(route);
        let flow = Flow {
            lane: None,
            band: Band::Standard,
            tenant: tenant.clone(),
        };
        let consumer = flows.consumer(&flow);
        work.consumer_info(&consumer)
            .await
            .unwrap_or_else(|e| panic!("consumer {consumer}: {e}"));
        let state = limits
            .get(subjects.rate_key(route))
            .await
            .expect("read the rate state");
        assert!(state.is_some(), "{route} has a rate state of its own");
    }
    app.shutdown().await.expect("clean shutdown");
}
