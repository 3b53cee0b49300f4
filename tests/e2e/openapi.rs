//! `/openapi.json`: an OpenAPI 3.1 document that the specification's own validator accepts, and
//! that describes what is served: every documented operation is answered by its handler (never
//! by the router's "no such route"), a path that is not documented is not served, and every kind
//! of rejection is an error the document lists, naming its parameter. (The whole API is fuzzed
//! against the document by `tests/python/fuzz_api.py`, in CI.)

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
                "put" => app.client.put(&url).json(&json!({})),
                "delete" => app.client.delete(&url),
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

/// Every way a request can be refused before its handler runs, and the refusals that used to
/// be outages, answer the error shape with a status the document lists for the operation, and
/// name the offending parameter.
#[tokio::test]
async fn every_rejection_is_a_documented_error_naming_its_parameter() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let app = TestApp::start(test_config(&nats, &db)).await;
    let document: Value = app
        .client
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .expect("the document")
        .json()
        .await
        .expect("JSON");
    let url = |path: &str| format!("{}{path}", app.base);
    // (what, request, documented path and method, status, code, param)
    let cases = [
        (
            "a query parameter of the wrong type",
            app.client.get(url("/v1/jobs?limit=many")),
            ("/v1/jobs", "get"),
            400,
            "invalid_value",
            Some("limit"),
        ),
        (
            "an unknown query parameter",
            app.client.get(url("/v1/batches?colour=blue")),
            ("/v1/batches", "get"),
            400,
            "invalid_value",
            Some("colour"),
        ),
        (
            "a cursor that names no batch",
            app.client.get(url("/v1/batches?after=batch_nothing")),
            ("/v1/batches", "get"),
            400,
            "invalid_cursor",
            Some("after"),
        ),
        (
            "a path parameter that is not UTF-8",
            app.client.get(url("/v1/jobs/%FF")),
            ("/v1/jobs/{id}", "get"),
            400,
            "invalid_value",
            Some("id"),
        ),
        (
            "DLQ sequence 0",
            app.client.get(url("/v1/admin/dlq/0")),
            ("/v1/admin/dlq/{seq}", "get"),
            400,
            "invalid_value",
            Some("seq"),
        ),
        (
            "a DLQ sequence with nothing there",
            app.client.get(url("/v1/admin/dlq/12345")),
            ("/v1/admin/dlq/{seq}", "get"),
            404,
            "not_found",
            None,
        ),
        (
            "a multipart body without a boundary",
            app.client
                .post(url("/v1/files"))
                .header("content-type", "multipart/form-data"),
            ("/v1/files", "post"),
            400,
            "invalid_multipart",
            None,
        ),
        (
            "a JSON body without its content type",
            app.client.post(url("/v1/admin/dlq/purge")).body("{}"),
            ("/v1/admin/dlq/purge", "post"),
            400,
            "unsupported_content_type",
            None,
        ),
        (
            "an unknown model",
            app.client.post(url("/v1/chat/completions")).json(
                &json!({"model": "gpt-nine", "messages": [{"role": "user", "content": "x"}]}),
            ),
            ("/v1/chat/completions", "post"),
            404,
            "model_not_found",
            Some("model"),
        ),
        (
            "a model of a job that names no route",
            app.client
                .post(url("/v1/jobs"))
                .json(&json!({"models": ["sim:echo", "gpt-nine"], "prompt": "x"})),
            ("/v1/jobs", "post"),
            404,
            "model_not_found",
            Some("models[1]"),
        ),
    ];
    for (what, request, (path, method), status, code, param) in cases {
        let response = request.send().await.expect("send");
        assert_eq!(response.status().as_u16(), status, "{what}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(content_type, "application/json", "{what}");
        let body: Value = response.json().await.expect("a JSON error");
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
        assert_eq!(body["error"]["param"], json!(param), "{what}: {body}");
        let documented = &document["paths"][path][method]["responses"][status.to_string()];
        assert_eq!(
            documented["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody",
            "{what}: {method} {path} documents its {status}"
        );
    }

    // A method the path does not serve: 405 with `Allow`, in the error shape.
    let response = app
        .client
        .delete(url("/v1/jobs"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 405);
    let allow = response
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    let body: Value = response.json().await.expect("a JSON error");
    assert_eq!(body["error"]["code"], "method_not_allowed");
    app.shutdown().await.expect("clean shutdown");
}
