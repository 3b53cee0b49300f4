//! The official OpenAI Python SDK (from PyPI) against Chorus: a chat completion, a streamed one,
//! an error and a Batch API round trip (`tests/python/openai_sdk.py`). Without `python3` and the
//! `openai` package the test is skipped with a loud warning; `TEST_REQUIRE_PYTHON=1` (set by
//! CI, which installs the package) makes that a failure.

use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::NatsServer;

use crate::helpers::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_sdk.py");

#[tokio::test]
async fn the_openai_python_sdk_works_unchanged() {
    if !python_has("openai").await {
        return;
    }
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let app = TestApp::start(test_config(&nats, &db)).await;
    let output = tokio::process::Command::new("python3")
        .arg(SCRIPT)
        .env("OPENAI_BASE_URL", format!("{}/v1", app.base))
        .env("OPENAI_API_KEY", &app.key)
        .env("CHORUS_SDK_MODEL", "sim:echo?latency=50ms")
        .output()
        .await
        .expect("run python3");
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    app.shutdown().await.expect("clean shutdown");
}
