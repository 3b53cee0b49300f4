//! Spend budgets: concurrent calls never spend past a budget, through a crash of an llm process;
//! a stream is cut at the budget; a fallback is held and settled at its own price; a tenant's
//! budget is shared by its keys (and a key's own is kept too); a new period renews a budget.
//! The provider is the mock, which reports usage in OpenAI's wire format.

use std::time::Duration;

use async_nats::HeaderMap;
use chorus_core::budget::Period;
use chorus_core::config::{Price, RouteConfig, TenantConfig};
use chorus_mock_llm::{Behaviour, Fault, MockLlm};
use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::NatsServer;
use chorus_testkit::wait;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::helpers::*;

/// A tenth of a cent a token, in and out: costs are easy to read.
const PRICE: Price = Price {
    input_per_mtok: 1000.0,
    output_per_mtok: 1000.0,
};

/// 80 characters: 20 tokens as the mock counts them.
const ANSWER: &str =
    "budgets hold under concurrency, streams, retries, fallbacks and crashes: all!!!!";

fn priced(name: &str, mock: &MockLlm, model: &str, price: Price) -> RouteConfig {
    RouteConfig {
        price: Some(price),
        timeout: Duration::from_secs(5),
        ..mock_route(name, mock, model)
    }
}

/// The id of a key (`chorus_<id>_<secret>`).
fn key_id(key: &str) -> &str {
    &key["chorus_".len().."chorus_".len() + 16]
}

async fn chat(client: &reqwest::Client, base: &str, body: &Value) -> (u16, Value) {
    let response = client
        .post(format!("{base}/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .expect("POST /v1/chat/completions");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn ask(model: &str, text: &str, max_tokens: u32) -> Value {
    json!({"model": model, "max_tokens": max_tokens,
           "messages": [{"role": "user", "content": text}]})
}

async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    let response = client.get(url).send().await.expect("GET");
    assert_eq!(response.status(), 200, "GET {url}");
    response.json().await.expect("JSON")
}

async fn set_budget(app: &TestApp, scope: &str, id: &str, body: Value) -> Value {
    let response = app
        .client
        .put(format!("{}/v1/admin/budgets/{scope}/{id}", app.base))
        .json(&body)
        .send()
        .await
        .expect("PUT a budget");
    assert_eq!(response.status(), 200, "PUT /v1/admin/budgets/{scope}/{id}");
    response.json().await.expect("JSON")
}

async fn budget(app: &TestApp, scope: &str, id: &str) -> Value {
    get_json(
        &app.client,
        &format!("{}/v1/admin/budgets/{scope}/{id}", app.base),
    )
    .await
}

/// Asserts a refusal is OpenAI's error shape with `budget_exceeded`, naming `budget`.
fn assert_refused(status: u16, body: &Value, budget: &str) {
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
    assert_eq!(body["error"]["type"], "insufficient_quota", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(budget), "{message}");
}

/// The headline: 200 calls at once from one key whose budget covers about half of
/// them, and one of the two llm processes killed (SIGKILL) while its calls wait at the
/// provider. Spend never passes the budget by more than one call's estimation error; the
/// provider saw exactly the calls the ledger admitted; every refusal is `budget_exceeded`; and
/// the ledger is the settled steps plus the dead process's holds at their reserved cost.
#[tokio::test]
async fn concurrent_calls_never_spend_past_a_key_budget_through_a_crash() {
    const CALLS: usize = 200;
    const LIMIT: f64 = 2.5;
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.unwrap();
    mock.script(
        "m",
        Behaviour::answer(ANSWER).with_latency(Duration::from_millis(1000)),
    );
    // Calls of the killed process are redelivered 3 s after it stopped keeping them alive.
    let definitions = tempfile::tempdir().expect("dir");
    llm_consumer_with(definitions.path(), |text| {
        text.replace("\"ack_wait\": 60000000000", "\"ack_wait\": 3000000000")
    });
    let mut config = test_config(&nats, &db);
    config.nats.definitions = Some(definitions.path().to_owned());
    config.edge.max_wait = Duration::from_secs(120);
    config.budgets.hold_grace = Duration::from_secs(1);
    config.routes.push(priced("priced", &mock, "m", PRICE));
    let processes = Processes::new(&config);
    let roles = [
        RoleName::Edge,
        RoleName::Orchestrator,
        RoleName::Evaluator,
        RoleName::Persister,
    ];
    let app = TestApp::start_roles(config, &roles).await;
    // The process killed below is the only one when the first call goes through, so it pulls
    // that call's flow when the load comes. (A process that starts later finds the flow by its
    // doorbell or, having missed it, by discovery, up to 2 s later.)
    let mut killed = processes.running(&["serve", "--roles", "llm"]);
    killed.wait_for("chorus is running").await;
    let key = create_key(db.url(), "acme", "submit,read").await;
    let id = key_id(&key).to_owned();
    set_budget(&app, "key", &id, json!({"usd": LIMIT, "period": "month"})).await;
    let client = client_with_key(&key);
    // A call goes through (and is settled).
    wait::until(Duration::from_secs(30), "a first call", || async {
        let (status, _) = chat(&client, &app.base, &ask("priced", "warm up", 20)).await;
        (status == 200).then_some(())
    })
    .await;
    let mut other = processes.running(&["serve", "--roles", "llm"]);
    other.wait_for("chorus is running").await;
    mock.reset();
    mock.script(
        "m",
        Behaviour::answer(ANSWER).with_latency(Duration::from_millis(1000)),
    );
    let before = budget(&app, "key", &id).await;

    let requests = (0..CALLS).map(|i| {
        let (client, base) = (client.clone(), app.base.clone());
        tokio::spawn(
            async move { chat(&client, &base, &ask("priced", &format!("case {i}"), 20)).await },
        )
    });
    let requests: Vec<_> = requests.collect();
    // Kill one llm process while its calls wait at the provider (it answers after 1 s), then
    // start it again.
    wait::until(Duration::from_secs(30), "calls at the provider", || async {
        (mock.stats("m").requests >= 60).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    killed.kill().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _restarted = processes.running(&["serve", "--roles", "llm"]);

    let (mut answered, mut refused) = (0, 0);
    for request in requests {
        let (status, body) = request.await.expect("request task");
        match status {
            200 => answered += 1,
            _ => {
                assert_refused(status, &body, &format!("key {id}"));
                refused += 1;
            }
        }
    }
    // The dead process's holds expire (its route's timeout, 5 s, and the grace, 1 s).
    let ledger = wait::until(
        Duration::from_secs(60),
        "every hold settled or expired",
        || async {
            let ledger = budget(&app, "key", &id).await;
            (ledger["calls_in_flight"] == 0).then_some(ledger)
        },
    )
    .await;
    let spent = ledger["spent_usd"].as_f64().expect("spent");
    let limit = ledger["limit_usd"].as_f64().expect("limit");
    let admitted =
        ledger["calls"].as_u64().expect("calls") - before["calls"].as_u64().expect("calls");
    let expired_holds = ledger["expired"].as_array().expect("expired");
    let expired: f64 = expired_holds
        .iter()
        .map(|e| e["usd"].as_f64().expect("usd"))
        .sum();
    let seen = mock.stats("m").requests;
    wait_quiet(&app.bus).await;
    let conn = sea_orm::Database::connect(db.url()).await.expect("db");
    let steps = step_costs(&conn).await;
    let settled: f64 = steps.iter().sum();
    // The worst a call could cost (its hold) against the most a step cost: the estimation error.
    // The least a call holds (the shortest prompt) against the most a step cost: at most the
    // worst estimation error.
    let held = hold("case 0", 20);
    let worst_error = steps.iter().map(|c| c - held).fold(0.0_f64, f64::max);
    println!(
        "{CALLS} calls: {answered} answered, {refused} refused; provider saw {seen}, ledger admitted \
         {admitted}; spent ${spent:.4} of ${limit:.2} (${:.4} over; a call holds ${held:.4}, worst \
         estimation error ${worst_error:.4}); settled steps ${settled:.4} + expired holds \
         ${expired:.4}",
        (spent - limit).max(0.0)
    );
    assert!(
        answered > 0 && refused > 0,
        "{answered} answered, {refused} refused"
    );
    assert!(
        spent <= limit + worst_error + 1e-9,
        "spent ${spent} past the budget ${limit} by more than one call's estimation error"
    );
    // Every call the provider saw was admitted. An admitted call it did not see can only be one
    // the killed process held but had not sent yet: its hold expired, counted at its worst case.
    assert!(
        seen <= admitted && admitted - seen <= expired_holds.len() as u64,
        "the provider saw {seen} calls, the ledger admitted {admitted} with {} expired holds",
        expired_holds.len()
    );
    assert!(
        (spent - (settled + expired)).abs() < 1e-6,
        "the ledger's ${spent} is not the settled steps' ${settled} plus the expired holds' ${expired}"
    );
    assert!(expired > 0.0, "the killed process held no call");
}

/// What a call of `prompt` with `max_tokens` holds at [`PRICE`].
fn hold(prompt: &str, max_tokens: u32) -> f64 {
    let message = chorus_core::spec::ChatMessage::new(chorus_core::spec::Role::User, prompt);
    f64::from(chorus_llm::tokens::prompt(&[message]) + max_tokens) * PRICE.input_per_mtok / 1e6
}

/// Every step's cost (steps without one count 0).
async fn step_costs(db: &sea_orm::DatabaseConnection) -> Vec<f64> {
    use sea_orm::{ConnectionTrait, Statement};
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COALESCE(cost_usd, 0.0) AS cost FROM steps",
        ))
        .await
        .expect("steps");
    rows.iter()
        .map(|row| row.try_get::<f64>("", "cost").expect("cost"))
        .collect()
}

/// A streamed answer longer than the budget can pay for is cut: its text stops at the budget,
/// its last chunk says `finish_reason: "length"`, an error event names the budget, and the next
/// call is refused.
#[tokio::test]
async fn a_streamed_call_is_cut_at_the_budget() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.unwrap();
    let long = vec!["word"; 400].join(" ");
    mock.script(
        "m",
        Behaviour::answer(long.clone()).with_chunk_delay(Duration::from_millis(2)),
    );
    let mut config = test_config(&nats, &db);
    config.routes = vec![priced("priced", &mock, "m", PRICE)];
    // The prompt (about 8 tokens) and some 40 tokens of answer: far from the 4096 a call
    // without max_tokens holds, so the stream gets what remains and is cut there.
    config.tenants.insert(
        "acme".into(),
        TenantConfig {
            budget_usd: Some(0.05),
            ..TenantConfig::default()
        },
    );
    let app = TestApp::start(config).await;
    let client = client_with_key(&create_key(db.url(), "acme", "submit,read").await);
    let response = client
        .post(format!("{}/v1/chat/completions", app.base))
        .json(&json!({"model": "priced", "stream": true,
                      "messages": [{"role": "user", "content": "tell me everything"}]}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    let body = response.text().await.expect("body");
    let events: Vec<&str> = body
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{body}");
    let parsed: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("JSON event"))
        .collect();
    let text: String = parsed
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    let finish = parsed
        .iter()
        .find_map(|e| e["choices"][0]["finish_reason"].as_str());
    let error = parsed.last().expect("an event");
    println!(
        "cut after {} tokens: {:?}",
        chorus_llm::tokens::count(&text),
        error["error"]["message"]
    );
    assert_eq!(finish, Some("length"), "{body}");
    assert_eq!(error["error"]["code"], "budget_exceeded", "{body}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("tenant acme")),
        "{error}"
    );
    assert!(
        !text.is_empty() && long.starts_with(text.trim_end()),
        "{text}"
    );
    let tokens = chorus_llm::tokens::count(&text);
    assert!((16..=45).contains(&tokens), "{tokens} tokens streamed");
    let ledger = budget(&app, "tenant", "acme").await;
    let spent = ledger["spent_usd"].as_f64().expect("spent");
    assert!(spent <= 0.05 + 1e-9, "spent ${spent} of $0.05");
    // Nothing is left for another call.
    let (status, body) = chat(&client, &app.base, &ask("priced", "more?", 20)).await;
    assert_refused(status, &body, "tenant acme");
}

/// A fallback priced differently from its primary is held and settled at its own price: the
/// ledger is the answer's cost at the fallback's price, and it admitted exactly the calls the
/// provider saw (the primary's failures included).
#[tokio::test]
async fn a_fallback_is_held_and_settled_at_its_own_price() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.unwrap();
    mock.script("down", Behaviour::always(Fault::status(500)));
    mock.script("up", Behaviour::answer(ANSWER));
    let mut config = test_config(&nats, &db);
    let cheap = Price {
        input_per_mtok: 100.0,
        output_per_mtok: 300.0,
    };
    config.routes = vec![
        RouteConfig {
            fallbacks: vec!["cheap".into()],
            ..priced("dear", &mock, "down", PRICE)
        },
        priced("cheap", &mock, "up", cheap),
    ];
    config.tenants.insert(
        "acme".into(),
        TenantConfig {
            budget_usd: Some(10.0),
            ..TenantConfig::default()
        },
    );
    let app = TestApp::start(config).await;
    let client = client_with_key(&create_key(db.url(), "acme", "submit,read").await);
    let (status, answer) = chat(&client, &app.base, &ask("dear", "hello", 50)).await;
    assert_eq!(status, 200, "{answer}");
    let usage = &answer["usage"];
    let (prompt, completion) = (
        usage["prompt_tokens"].as_f64().expect("prompt"),
        usage["completion_tokens"].as_f64().expect("completion"),
    );
    let at_cheap = (prompt * cheap.input_per_mtok + completion * cheap.output_per_mtok) / 1e6;
    let ledger = budget(&app, "tenant", "acme").await;
    let spent = ledger["spent_usd"].as_f64().expect("spent");
    assert!(
        (spent - at_cheap).abs() < 1e-9,
        "spent ${spent}, not ${at_cheap} (the fallback's price)"
    );
    let seen = mock.stats("down").requests + mock.stats("up").requests;
    assert_eq!(ledger["calls"].as_u64(), Some(seen), "{ledger}");
    assert!(mock.stats("down").requests >= 1);
    assert_eq!(ledger["calls_in_flight"], 0);
}

/// A tenant's budget is shared by its keys, and a key's own budget holds within it: the key
/// with a small budget is refused first (naming the key), the other goes on until the tenant's
/// is spent (naming the tenant); another tenant is not touched; a JetStream submission of the
/// spent tenant gets an error result line with `budget_exceeded`; a refused job says which
/// budget.
#[tokio::test]
async fn a_tenant_budget_is_shared_by_its_keys() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.unwrap();
    mock.script("m", Behaviour::answer(ANSWER));
    let mut config = test_config(&nats, &db);
    config.routes = vec![priced("priced", &mock, "m", PRICE)];
    config.tenants.insert(
        "acme".into(),
        TenantConfig {
            budget_usd: Some(0.5),
            budget_period: Period::parse("30d").expect("a period"),
            ..TenantConfig::default()
        },
    );
    let app = TestApp::start(config).await;
    let (one, two) = (
        create_key(db.url(), "acme", "submit,read").await,
        create_key(db.url(), "acme", "submit,read").await,
    );
    set_budget(&app, "key", key_id(&two), json!({"usd": 0.1})).await;
    let clients = [client_with_key(&one), client_with_key(&two)];
    let beta = client_with_key(&create_key(db.url(), "beta", "submit,read").await);

    let mut answered = [0, 0];
    let mut refusals: [Option<Value>; 2] = [None, None];
    for i in 0..100 {
        let who = i % 2;
        if refusals[who].is_some() {
            if refusals.iter().all(Option::is_some) {
                break;
            }
            continue;
        }
        let (status, body) = chat(&clients[who], &app.base, &ask("priced", "hi", 20)).await;
        match status {
            200 => answered[who] += 1,
            _ => refusals[who] = Some(body),
        }
    }
    let [Some(first), Some(second)] = refusals else {
        panic!("not both keys were refused: {answered:?}");
    };
    assert_refused(429, &second, &format!("key {}", key_id(&two)));
    assert_refused(429, &first, "tenant acme");
    assert!(answered[0] > answered[1], "{answered:?}");
    let tenant = budget(&app, "tenant", "acme").await;
    let key = budget(&app, "key", key_id(&two)).await;
    let spent = tenant["spent_usd"].as_f64().expect("spent");
    assert!(spent <= 0.5 + 1e-9, "${spent} of $0.50");
    assert!(
        key["spent_usd"].as_f64().expect("spent") <= 0.1 + 1e-9,
        "{key}"
    );
    assert_eq!(
        tenant["calls"].as_u64(),
        Some(answered[0] + answered[1]),
        "{tenant}"
    );
    println!("answered {answered:?}; tenant spent ${spent:.4}, key {key}");
    // The caller sees its budgets.
    let own = get_json(&clients[1], &format!("{}/v1/budgets", app.base)).await;
    assert_eq!(own["data"].as_array().map(Vec::len), Some(2), "{own}");

    // Another tenant is not touched.
    let (status, body) = chat(&beta, &app.base, &ask("priced", "hi", 20)).await;
    assert_eq!(status, 200, "{body}");

    // A job accepted while the edge had not yet seen the budget spent fails naming it; one
    // submitted on JetStream gets an error result line.
    let results = "chorus.results.acme.spent";
    let mut lines = app.bus.client.subscribe(results).await.expect("subscribe");
    let mut headers = HeaderMap::new();
    headers.insert("Chorus-Batch", "spent");
    headers.insert("Chorus-Custom-Id", "js-1");
    let spec = json!({"model": "priced", "messages": [{"role": "user", "content": "js"}]});
    app.bus
        .js
        .publish_with_headers("chorus.submit.acme", headers, spec.to_string().into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next())
        .await
        .expect("a result line")
        .expect("subscription");
    let line: Value = serde_json::from_slice(&line.payload).expect("JSON line");
    assert_eq!(line["error"]["code"], "budget_exceeded", "{line}");
    assert!(
        line["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("tenant acme")),
        "{line}"
    );
}

/// A budget renews with its period: spent, refused, then the period ends and calls go through
/// again, the last period's spend kept as `previous`.
#[tokio::test]
async fn a_new_period_renews_the_budget() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.unwrap();
    mock.script("m", Behaviour::answer(ANSWER));
    let mut config = test_config(&nats, &db);
    config.routes = vec![priced("priced", &mock, "m", PRICE)];
    let app = TestApp::start(config).await;
    let key = create_key(db.url(), "acme", "submit,read").await;
    let id = key_id(&key).to_owned();
    let client = client_with_key(&key);
    // Two calls' worth (each holds about $0.03), for 5 s.
    set_budget(&app, "key", &id, json!({"usd": 0.07, "period": "5s"})).await;
    let mut answered = 0;
    let refusal = loop {
        let (status, body) = chat(&client, &app.base, &ask("priced", "hi", 20)).await;
        match status {
            200 => answered += 1,
            _ => break body,
        }
        assert!(answered < 10, "never refused");
    };
    assert_refused(429, &refusal, &format!("key {id}"));
    let ledger = budget(&app, "key", &id).await;
    let end = chrono::DateTime::parse_from_rfc3339(ledger["period_end"].as_str().expect("end"))
        .expect("a time");
    let wait = (end.timestamp_millis() - chrono::Utc::now().timestamp_millis()).max(0);
    tokio::time::sleep(Duration::from_millis(wait as u64 + 100)).await;
    let (status, body) = chat(&client, &app.base, &ask("priced", "again", 20)).await;
    assert_eq!(status, 200, "{body}");
    let ledger = budget(&app, "key", &id).await;
    assert_eq!(ledger["calls"], 1, "{ledger}");
    assert_eq!(ledger["previous"]["calls"], answered, "{ledger}");
    assert!(ledger["previous"]["spent_usd"].as_f64().expect("spent") > 0.0);
}
