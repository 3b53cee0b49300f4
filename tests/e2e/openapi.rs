//! `/openapi.json`: an OpenAPI 3.1 document that the specification's own validator accepts, and
//! that describes what is served: every documented operation is answered by its handler (never
//! by the router's "no such route"), and a path that is not documented is not served.

use std::process::Stdio;

use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::NatsServer;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::helpers::*;

const VALIDATOR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/python/validate_openapi.py"
);

/// Whether an answer came from the router's fallback rather than a route.
async fn unrouted(response: reqwest::Response) -> bool {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    status == 404 && body["error"]["message"] == "no such route"
}

#[tokio::test]
async fn the_openapi_document_describes_every_served_route() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let app = TestApp::start(test_config(&nats, &db)).await;
    let response = reqwest::get(format!("{}/openapi.json", app.base))
        .await
        .expect("GET /openapi.json without a key");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    let document: Value = serde_json::from_str(&text).expect("JSON");
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1"))
    );

    if python_has("openapi_spec_validator").await {
        let mut child = tokio::process::Command::new("python3")
            .arg(VALIDATOR)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).await.expect("write");
        drop(stdin);
        let output = child.wait_with_output().await.expect("validator");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let paths = document["paths"].as_object().expect("paths");
    assert!(paths.len() >= 20, "{} paths", paths.len());
    let mut operations = 0;
    for (path, item) in paths {
        // Any value for a path parameter: the handler answers, if only with its own 404.
        let concrete = path
            .split('/')
            .map(|part| if part.starts_with('{') { "x" } else { part })
            .collect::<Vec<_>>()
            .join("/");
        let url = format!("{}{concrete}", app.base);
        for method in item.as_object().expect("operations").keys() {
            let request = match method.as_str() {
                "get" => app.client.get(&url),
                "post" => app.client.post(&url).json(&json!({})),
                other => panic!("{other} {path} is not a method Chorus serves"),
            };
            let response = request.send().await.expect("request");
            assert!(
                !unrouted(response).await,
                "{method} {path} is documented but not served"
            );
            operations += 1;
        }
    }
    assert!(operations >= 24, "{operations} operations");
    for (method, path) in [("get", "/v1/undocumented"), ("get", "/v2/jobs")] {
        let response = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .expect("request");
        assert!(unrouted(response).await, "{method} {path} answers");
    }
    app.shutdown().await.expect("clean shutdown");
}
