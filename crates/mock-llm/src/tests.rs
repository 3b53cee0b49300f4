//! The mock over raw HTTP, as a client sees it: answers, queued and random faults, resets and
//! truncated bodies on the wire, the real APIs' checks, and scripting over `/_mock`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Behaviour, Fault, MockLlm, ModelStats, RetryAfter};

/// POSTs `body` to `path` over a raw connection and returns everything the server sent.
async fn raw_post(mock: &MockLlm, path: &str, headers: &str, body: &Value) -> String {
    let mut stream = tokio::net::TcpStream::connect(mock.addr).await.unwrap();
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

fn body_of(response: &str) -> Value {
    serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

#[tokio::test]
async fn answers_from_the_last_user_message_and_counts_tokens() {
    let mock = MockLlm::start().await.unwrap();
    let response = raw_post(&mock, "/v1/chat/completions", "", &chat("m", "Hello there")).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = body_of(&response);
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "[mock] Hello there"
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8})
    );
    let stats = mock.stats("m");
    assert_eq!((stats.requests, stats.outcomes["ok"]), (1, 1));
    assert_eq!(stats.per_second.values().sum::<u64>(), 1);
    assert_eq!(mock.requests("m")[0].path, "/v1/chat/completions");
}

#[tokio::test]
async fn calls_are_in_flight_from_their_arrival_until_answered() {
    let mock = MockLlm::start().await.unwrap();
    mock.script(
        "m",
        Behaviour::answer("ok").with_latency(Duration::from_secs(2)),
    );
    let calls = (0..3).map(|i| {
        let body = chat("m", &format!("call {i}"));
        let mock = &mock;
        async move { raw_post(mock, "/v1/chat/completions", "", &body).await }
    });
    let all_arrived = async {
        while mock.stats("m").requests < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        mock.stats("m")
    };
    let (answers, arrived) = tokio::join!(futures::future::join_all(calls), all_arrived);
    assert!(answers.iter().all(|a| a.starts_with("HTTP/1.1 200")));
    assert_eq!((arrived.in_flight, arrived.most_in_flight), (3, 3));
    let stats = mock.stats("m");
    assert_eq!((stats.in_flight, stats.most_in_flight), (0, 3));
}

#[tokio::test]
async fn queued_faults_come_first_then_the_default() {
    let mock = MockLlm::start().await.unwrap();
    mock.script(
        "m",
        Behaviour::answer("fine")
            .fail_next(2, Fault::status(503))
            .fail_next(1, Fault::rate_limited(RetryAfter::Seconds(3))),
    );
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = raw_post(&mock, "/v1/chat/completions", "", &chat("m", "x")).await;
        statuses.push(response[9..12].to_owned());
        if statuses.len() == 3 {
            assert!(response.contains("\r\nretry-after: 3\r\n"), "{response}");
        }
    }
    assert_eq!(statuses, ["503", "503", "429", "200"]);
    let outcomes = mock.stats("m").outcomes;
    assert_eq!(
        outcomes,
        BTreeMap::from([("503".into(), 2), ("429".into(), 1), ("ok".into(), 1)])
    );
}

#[tokio::test]
async fn random_faults_follow_their_probability() {
    let mock = MockLlm::start().await.unwrap();
    mock.script(
        "m",
        Behaviour::default().with_chance(0.3, Fault::status(500)),
    );
    for _ in 0..200 {
        raw_post(&mock, "/v1/chat/completions", "", &chat("m", "x")).await;
    }
    let failed = mock.stats("m").outcomes.get("500").copied().unwrap_or(0);
    assert!((30..=90).contains(&failed), "{failed}");
    mock.script("always", Behaviour::always(Fault::status(529)));
    let response = raw_post(
        &mock,
        "/v1/messages",
        "x-api-key: k\r\nanthropic-version: 2023-06-01\r\n",
        &json!({"model": "always", "max_tokens": 5, "messages": []}),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 529"), "{response}");
    assert_eq!(body_of(&response)["error"]["type"], "overloaded_error");
}

#[tokio::test]
async fn a_reset_closes_the_connection_without_a_byte() {
    let mock = MockLlm::start().await.unwrap();
    mock.script("m", Behaviour::default().fail_next(1, Fault::Reset));
    assert_eq!(
        raw_post(&mock, "/v1/chat/completions", "", &chat("m", "x")).await,
        ""
    );
    assert_eq!(mock.stats("m").in_flight, 0, "a reset call is over");
    let response = raw_post(&mock, "/v1/chat/completions", "", &chat("m", "x")).await;
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "the server survives: {response}"
    );
}

#[tokio::test]
async fn a_truncated_body_stops_short_of_its_length() {
    let mock = MockLlm::start().await.unwrap();
    mock.script("m", Behaviour::default().fail_next(1, Fault::Truncated));
    let response = raw_post(&mock, "/v1/chat/completions", "", &chat("m", "x")).await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"));
    assert_eq!(body.len(), length / 2, "{response}");
}

#[tokio::test]
async fn checks_what_the_real_apis_require() {
    let mock = MockLlm::start().await.unwrap();
    let anthropic = "x-api-key: k\r\nanthropic-version: 2023-06-01\r\n";
    let no_max = json!({"model": "c", "messages": [{"role": "user", "content": "x"}]});
    let response = raw_post(&mock, "/v1/messages", anthropic, &no_max).await;
    assert!(response.starts_with("HTTP/1.1 400"));
    assert_eq!(
        body_of(&response)["error"]["message"],
        "max_tokens: Field required"
    );
    let system =
        json!({"model": "c", "max_tokens": 9, "messages": [{"role": "system", "content": "x"}]});
    let response = raw_post(&mock, "/v1/messages", anthropic, &system).await;
    assert!(
        body_of(&response)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Unexpected role")
    );
    let response = raw_post(
        &mock,
        "/openai/deployments/d/chat/completions",
        "api-key: k\r\n",
        &chat("x", "y"),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    let response = raw_post(&mock, "/api/chat", "", &chat("llama", "y")).await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert_eq!(mock.stats("c").outcomes["invalid"], 2);
}

#[tokio::test]
async fn scripts_and_reports_over_http() {
    let mock = MockLlm::start().await.unwrap();
    let behaviour = json!({"answer": "scripted", "latency": "1ms", "queue": [{"type": "status", "status": 429, "retry_after": {"http_date": 2}}], "random": [{"probability": 0.0, "fault": {"type": "hang"}}]});
    let script = format!(
        "PUT /_mock/models/org/model HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{behaviour}",
        behaviour.to_string().len()
    );
    let mut stream = tokio::net::TcpStream::connect(mock.addr).await.unwrap();
    stream.write_all(script.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");

    let limited = raw_post(&mock, "/v1/chat/completions", "", &chat("org/model", "x")).await;
    let date = limited
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .unwrap();
    let wait = httpdate::parse_http_date(date)
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        wait > Duration::from_secs(1) && wait <= Duration::from_secs(3),
        "{wait:?}"
    );
    let ok = raw_post(&mock, "/v1/chat/completions", "", &chat("org/model", "x")).await;
    assert_eq!(body_of(&ok)["choices"][0]["message"]["content"], "scripted");

    let mut stream = tokio::net::TcpStream::connect(mock.addr).await.unwrap();
    stream
        .write_all(b"GET /_mock/stats HTTP/1.1\r\nhost: mock\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut stats = String::new();
    stream.read_to_string(&mut stats).await.unwrap();
    let stats: BTreeMap<String, ModelStats> = serde_json::from_value(body_of(&stats)).unwrap();
    assert_eq!(stats["org/model"].requests, 2);

    raw_post(&mock, "/_mock/reset", "", &Value::Null).await;
    assert_eq!(mock.stats("org/model"), ModelStats::default());
}
