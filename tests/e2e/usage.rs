//! `/v1/usage` and `/v1/admin/usage` end to end: what jobs recorded (steps, tokens, cost) adds up
//! per day, route, model and key; a tenant sees only its own; the operator sees every tenant's;
//! bad parameters are `422`s naming them.

use std::collections::BTreeMap;
use std::time::Duration;

use chorus_core::config::{Price, RouteConfig};
use chorus_testkit::database::{Backend, TestDatabase};
use chorus_testkit::nats::NatsServer;
use serde_json::{Value, json};

use crate::helpers::*;

/// Steps, tokens and cost, as a usage entry reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Figures {
    steps: u64,
    failed_steps: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_usd: f64,
    unpriced_steps: u64,
}

impl Figures {
    /// What a finished one-step job adds: from its stored record.
    fn of_job(job: &Value) -> Figures {
        let succeeded = job["status"] == "succeeded";
        let cost = job["cost_usd"].as_f64();
        Figures {
            steps: u64::from(succeeded),
            failed_steps: u64::from(job["status"] == "failed"),
            prompt_tokens: job["usage"]["prompt_tokens"].as_u64().expect("tokens"),
            completion_tokens: job["usage"]["completion_tokens"].as_u64().expect("tokens"),
            cost_usd: cost.unwrap_or_default(),
            unpriced_steps: u64::from(succeeded && cost.is_none()),
        }
    }

    fn of_entry(entry: &Value) -> Figures {
        let count = |field: &str| entry[field].as_u64().unwrap_or_else(|| panic!("{field}"));
        Figures {
            steps: count("steps"),
            failed_steps: count("failed_steps"),
            prompt_tokens: count("prompt_tokens"),
            completion_tokens: count("completion_tokens"),
            cost_usd: entry["cost_usd"].as_f64().expect("cost_usd"),
            unpriced_steps: count("unpriced_steps"),
        }
    }

    fn add(&mut self, other: Figures) {
        self.steps += other.steps;
        self.failed_steps += other.failed_steps;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cost_usd += other.cost_usd;
        self.unpriced_steps += other.unpriced_steps;
    }

    /// Equal, costs to within rounding.
    fn same(&self, other: &Figures) -> bool {
        Figures {
            cost_usd: 0.0,
            ..*self
        } == Figures {
            cost_usd: 0.0,
            ..*other
        } && (self.cost_usd - other.cost_usd).abs() < 1e-9
    }
}

/// Expected figures per group.
type Groups = BTreeMap<Option<String>, Figures>;

#[track_caller]
fn assert_groups(report: &Value, expected: &Groups) {
    let data = report["data"].as_array().expect("data");
    let groups: Vec<Option<String>> = data
        .iter()
        .map(|e| e["group"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        groups,
        expected.keys().cloned().collect::<Vec<_>>(),
        "{report:#}"
    );
    for entry in data {
        let group = entry["group"].as_str().map(str::to_owned);
        assert!(
            Figures::of_entry(entry).same(&expected[&group]),
            "{group:?}: {entry:#} is not {:?}",
            expected[&group]
        );
    }
    let mut total = Figures::default();
    expected.values().for_each(|f| total.add(*f));
    assert!(
        Figures::of_entry(&report["total"]).same(&total),
        "total {:#} is not {total:?}",
        report["total"]
    );
}

async fn get(client: reqwest::Client, url: String) -> (u16, Value) {
    let response = client.get(&url).send().await.expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

/// A key's id: `chorus_<id>_<secret>`.
fn key_id(key: &str) -> String {
    key.split('_').nth(1).expect("a key id").to_owned()
}

#[tokio::test]
async fn usage_adds_up_per_day_route_model_and_key_on_sqlite() {
    usage_adds_up_per_day_route_model_and_key(Backend::Sqlite).await;
}

#[tokio::test]
async fn usage_adds_up_per_day_route_model_and_key_on_postgres() {
    usage_adds_up_per_day_route_model_and_key(Backend::Postgres).await;
}

async fn usage_adds_up_per_day_route_model_and_key(backend: Backend) {
    let Some(db) = TestDatabase::new(backend) else {
        return;
    };
    let nats = NatsServer::start_new().await;
    let mut config = test_config(&nats, &db);
    let price = Some(Price {
        input_per_mtok: 1.0,
        output_per_mtok: 2.0,
    });
    for (name, model) in [("priced", "echo"), ("lorem-priced", "lorem")] {
        config.routes.push(RouteConfig {
            price,
            timeout: Duration::from_secs(2),
            ..RouteConfig::new(name, "sim", model)
        });
    }
    let app = TestApp::start(config).await;
    let reader_key = create_key(db.url(), "default", "submit,read").await;
    let reader = client_with_key(&reader_key);
    let other = client_with_key(&create_key(db.url(), "other", "submit,read").await);

    // (who, route); "fast" has no price, the last one fails.
    let submissions = [
        (&app.client, &app.key, "priced"),
        (&app.client, &app.key, "priced"),
        (&app.client, &app.key, "lorem-priced"),
        (&reader, &reader_key, "priced"),
        (&reader, &reader_key, "fast"),
        (&reader, &reader_key, "sim:echo?error=400"),
    ];
    let mut by_route = Groups::new();
    let mut by_model = Groups::new();
    let mut by_key = Groups::new();
    let mut total = Figures::default();
    for (i, (client, key, route)) in submissions.into_iter().enumerate() {
        let response = client
            .post(format!("{}/v1/jobs", app.base))
            .json(&single(route, &format!("usage {i}")))
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), 202);
        let id = response.json::<Value>().await.expect("JSON")["id"]
            .as_str()
            .expect("id")
            .to_owned();
        let job = wait_done(&app.base, client, &id, Duration::from_secs(30)).await;
        let expected = if route.ends_with("error=400") {
            "failed"
        } else {
            "succeeded"
        };
        assert_eq!(job["status"], expected, "{job:#}");
        let figures = Figures::of_job(&job);
        let model = if route.contains("lorem") {
            "lorem"
        } else {
            "echo"
        };
        for (groups, group) in [
            (&mut by_route, route.to_owned()),
            (&mut by_model, model.to_owned()),
            (&mut by_key, key_id(key)),
        ] {
            groups.entry(Some(group)).or_default().add(figures);
        }
        total.add(figures);
    }
    assert!(total.cost_usd > 0.0 && total.prompt_tokens > 0, "{total:?}");
    assert_eq!(
        (total.steps, total.failed_steps, total.unpriced_steps),
        (5, 1, 1)
    );
    // Another tenant's job, which the tenant's usage must not show.
    let response = other
        .post(format!("{}/v1/jobs", app.base))
        .json(&single("priced", "elsewhere"))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.expect("JSON")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let job = wait_done(&app.base, &other, &id, Duration::from_secs(30)).await;
    let elsewhere = Figures::of_job(&job);

    let usage =
        |client: reqwest::Client, query: &str| get(client, format!("{}/v1/usage{query}", app.base));
    let (status, report) = usage(app.client.clone(), "?group_by=route").await;
    assert_eq!(status, 200, "{report:#}");
    assert_eq!(
        (&report["object"], &report["group_by"], &report["until"]),
        (&json!("usage"), &json!("route"), &Value::Null)
    );
    assert_groups(&report, &by_route);
    let (_, report) = usage(app.client.clone(), "?group_by=model").await;
    assert_groups(&report, &by_model);
    let (_, report) = usage(reader.clone(), "?group_by=key").await;
    assert_groups(&report, &by_key);

    // By day (the default): every day is a UTC date, and the days add up to the same total
    // (jobs near midnight may fall on two).
    let (_, report) = usage(reader.clone(), "").await;
    assert_eq!(report["group_by"], "day");
    let mut days = Figures::default();
    for entry in report["data"].as_array().expect("data") {
        let day = entry["group"].as_str().expect("a day");
        assert!(
            chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").is_ok(),
            "{day}"
        );
        days.add(Figures::of_entry(entry));
    }
    assert!(days.same(&total), "{days:?} != {total:?}");
    assert!(Figures::of_entry(&report["total"]).same(&total));

    // A window of dates around today holds everything; one starting tomorrow holds nothing.
    let today = chrono::Utc::now().date_naive();
    let (yesterday, tomorrow) = (today.pred_opt().unwrap(), today.succ_opt().unwrap());
    let (status, report) = usage(
        reader.clone(),
        &format!("?group_by=model&since={yesterday}&until={today}"),
    )
    .await;
    assert_eq!(status, 200, "{report:#}");
    assert_groups(&report, &by_model);
    assert_eq!(
        (&report["since"], &report["until"]),
        (
            &json!(format!("{yesterday}T00:00:00.000Z")),
            &json!(format!("{tomorrow}T00:00:00.000Z"))
        ),
        "an `until` date includes its day"
    );
    let (_, report) = usage(reader.clone(), &format!("?since={tomorrow}T00:00:00Z")).await;
    assert_eq!(report["data"], json!([]), "{report:#}");
    assert_eq!(report["total"]["steps"], 0);

    // The other tenant sees its own job only.
    let (_, report) = usage(other.clone(), "?group_by=route").await;
    assert_groups(
        &report,
        &Groups::from([(Some("priced".to_owned()), elsewhere)]),
    );

    // The operator sees both tenants, or one.
    let admin = |query: &str| {
        get(
            app.client.clone(),
            format!("{}/v1/admin/usage{query}", app.base),
        )
    };
    let (status, report) = admin("?group_by=tenant").await;
    assert_eq!(status, 200, "{report:#}");
    assert_groups(
        &report,
        &Groups::from([
            (Some("default".to_owned()), total),
            (Some("other".to_owned()), elsewhere),
        ]),
    );
    let (_, report) = admin("?group_by=model&tenant=other").await;
    assert_groups(
        &report,
        &Groups::from([(Some("echo".to_owned()), elsewhere)]),
    );
    let mut everyone = by_route.clone();
    everyone
        .entry(Some("priced".to_owned()))
        .or_default()
        .add(elsewhere);
    let (_, report) = admin("?group_by=route").await;
    assert_groups(&report, &everyone);
    // Only with the admin scope.
    let (status, _) = get(reader.clone(), format!("{}/v1/admin/usage", app.base)).await;
    assert_eq!(status, 403);

    // Bad parameters: a 422 naming each.
    for (client, path, param) in [
        (&reader, "/v1/usage?group_by=colour", "group_by"),
        (&reader, "/v1/usage?group_by=tenant", "group_by"),
        (&reader, "/v1/usage?since=yesterday", "since"),
        (&reader, "/v1/usage?since=2024-02-30", "since"),
        (&reader, "/v1/usage?until=2024-03-01T10:00", "until"),
        (&app.client, "/v1/admin/usage?group_by=colour", "group_by"),
        (
            &app.client,
            "/v1/admin/usage?tenant=Not%20A%20Tenant",
            "tenant",
        ),
    ] {
        let (status, body) = get(client.clone(), format!("{}{path}", app.base)).await;
        assert_eq!(status, 422, "{path}: {body:#}");
        assert_eq!(body["error"]["param"], param, "{path}: {body:#}");
        assert_eq!(body["error"]["code"], "invalid_value", "{path}: {body:#}");
    }
    app.shutdown().await.expect("clean shutdown");
}
