//! NATS security: Chorus connects to a server that requires credentials (a user and password read
//! from a file), and the per-tenant permissions example in `nats/server/tenants.conf` holds: a
//! tenant's user submits to its own subject and reads its own results, and the server refuses its
//! publish to another tenant's subject and its subscription to another tenant's results.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::{ConnectOptions, Event, HeaderMap};
use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::NatsServer;
use futures::StreamExt;
use serde_json::Value;

use crate::helpers::*;

const TENANTS: &str = include_str!("../../nats/server/tenants.conf");
const CHORUS_PASSWORD: &str = "chorus-s3cret-pw";
const ACME_PASSWORD: &str = "acme-s3cret-pw";

/// A tenant's connection, with the server errors it was sent.
async fn tenant(
    nats: &NatsServer,
    user: &str,
    password: &str,
) -> Result<(async_nats::Client, Arc<Mutex<Vec<String>>>), async_nats::ConnectError> {
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = errors.clone();
    let client = ConnectOptions::with_user_and_password(user.into(), password.into())
        .custom_inbox_prefix(format!("_INBOX_{user}"))
        .event_callback(move |event| {
            let sink = sink.clone();
            async move {
                if let Event::ServerError(error) = event {
                    sink.lock().expect("lock").push(error.to_string());
                }
            }
        })
        .connect(nats.url())
        .await?;
    Ok((client, errors))
}

fn submission(batch: &str, custom_id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", custom_id);
    headers.insert("Content-Type", "application/json");
    headers.insert("Chorus-Batch", batch);
    headers.insert("Chorus-Custom-Id", custom_id);
    headers
}

#[tokio::test]
async fn chorus_authenticates_and_tenants_are_confined_to_their_subjects() {
    let nats = NatsServer::start_with_config(
        TENANTS,
        &[
            ("CHORUS_NATS_PASSWORD", CHORUS_PASSWORD),
            ("ACME_NATS_PASSWORD", ACME_PASSWORD),
            ("BETA_NATS_PASSWORD", "beta-s3cret-pw"),
        ],
    )
    .await;
    let db = TestDatabase::sqlite();
    let secrets = tempfile::tempdir().expect("dir");
    let password_file = secrets.path().join("nats-password");
    std::fs::write(&password_file, format!("{CHORUS_PASSWORD}\n")).expect("write");
    let mut config = test_config(&nats, &db);
    config.nats.user = Some("chorus".into());
    config.nats.password_file = Some(password_file);
    // Without credentials the server refuses Chorus, and says so.
    let anonymous = chorus_bus::Bus::connect(&nats.url(), "chorus", "t", Duration::from_secs(5))
        .await
        .expect_err("a server that requires credentials");
    assert!(
        anonymous.to_string().contains("cannot reach NATS"),
        "{anonymous}"
    );
    let app = TestApp::start(config).await;

    // Ops give acme a durable consumer of its own results.
    let results = app
        .bus
        .js
        .get_stream(app.bus.subjects.stream("results"))
        .await
        .expect("results stream");
    results
        .create_consumer(pull::Config {
            durable_name: Some("results-acme".into()),
            filter_subject: "chorus.results.acme.>".into(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("results-acme");

    assert!(
        tenant(&nats, "acme", "wrong").await.is_err(),
        "a wrong password is refused"
    );
    let (acme, errors) = tenant(&nats, "acme", ACME_PASSWORD).await.expect("acme");
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(acme.clone());
    let mut live = acme
        .subscribe("chorus.results.acme.nightly")
        .await
        .expect("its own results");

    // Its own subject: accepted, run, and its result readable live and durably.
    let body = serde_json::to_vec(&single("fast", "from acme")).expect("json");
    js.publish_with_headers(
        "chorus.submit.acme",
        submission("nightly", "one"),
        body.clone().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("acked: acme may submit to chorus.submit.acme");
    let line = tokio::time::timeout(Duration::from_secs(30), live.next())
        .await
        .expect("a result in time")
        .expect("a message");
    let line: Value = serde_json::from_slice(&line.payload).expect("a JSON result line");
    assert_eq!(line["custom_id"], "one");
    assert_eq!(line["response"]["status_code"], 200, "{line:#}");
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream_no_info("CHORUS_RESULTS")
        .await
        .expect("stream handle")
        .get_consumer("results-acme")
        .await
        .expect("acme reads its consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .expect("fetch");
    let durable = batch.next().await.expect("one").expect("message");
    durable.ack().await.expect("ack");

    // Another tenant's subjects: refused by the server.
    let refused = js
        .publish_with_headers(
            "chorus.submit.beta",
            submission("nightly", "two"),
            body.into(),
        )
        .await
        .expect("sent");
    assert!(
        refused.await.is_err(),
        "no ack: the server dropped the publish"
    );
    let _spy = acme
        .subscribe("chorus.results.beta.>")
        .await
        .expect("the client sends the subscription");
    acme.flush().await.expect("flush");
    let violations = chorus_testkit::wait::until(
        Duration::from_secs(5),
        "the server's permission errors",
        || {
            let errors = errors.lock().expect("lock").clone();
            async move { (errors.len() >= 2).then_some(errors) }
        },
    )
    .await;
    let joined = violations.join("\n").to_lowercase();
    assert!(
        joined.contains("permissions violation for publish to \"chorus.submit.beta\""),
        "{violations:?}"
    );
    assert!(
        joined.contains("permissions violation for subscription to \"chorus.results.beta.>\""),
        "{violations:?}"
    );
    let (stored, _) = stream_state(&app.bus, "submit").await;
    let (_, last) = stream_state(&app.bus, "submit").await;
    assert_eq!(
        last, 1,
        "only acme's own submission was ever stored ({stored} left)"
    );
    app.shutdown().await.expect("clean shutdown");
}

/// A CA and a server certificate it signed for 127.0.0.1, as PEM files in `dir`: (ca, cert, key).
fn certificates(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("ca");
    let key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server params")
        .signed_by(&key, &ca)
        .expect("server certificate");
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server-key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).expect("write");
    std::fs::write(&paths.1, server.pem()).expect("write");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write");
    paths
}

#[tokio::test]
async fn chorus_speaks_tls_and_authenticates_with_a_token_or_an_nkey() {
    let dir = tempfile::tempdir().expect("dir");
    let (ca, cert, key) = certificates(dir.path());
    let tls = format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\" }}\n",
        cert.display(),
        key.display()
    );

    // TLS with a token from a file: the whole pipeline runs over it.
    let nats = NatsServer::start_with_config(
        &format!("{tls}authorization {{ token: $NATS_TOKEN }}\n"),
        &[("NATS_TOKEN", "t0ken-s3cret")],
    )
    .await;
    let db = TestDatabase::sqlite();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t0ken-s3cret\n").expect("write");
    let mut config = test_config(&nats, &db);
    config.nats.token_file = Some(token_file);
    config.nats.tls_ca_file = Some(ca.clone());
    config.nats.tls_required = true;
    let app = TestApp::start(config.clone()).await;
    let job = app.post_job(&single("fast", "over TLS"), "?wait=20").await;
    assert_eq!(job.status(), 200);
    app.shutdown().await.expect("clean shutdown");
    // Without the CA the server's certificate is not trusted.
    config.nats.tls_ca_file = None;
    let untrusted = chorus_bus::Bus::connect_config(&config.nats, "t").await;
    assert!(untrusted.is_err(), "an unknown CA is refused");
    drop(nats);

    // An nkey: the server knows the public key, Chorus signs with the seed from a file.
    let user = nkeys::KeyPair::new_user();
    let seed_file = dir.path().join("user.nk");
    std::fs::write(&seed_file, user.seed().expect("seed")).expect("write");
    let nats = NatsServer::start_with_config(
        &format!(
            "{tls}authorization {{ users: [{{ nkey: {} }}] }}\n",
            user.public_key()
        ),
        &[],
    )
    .await;
    let mut config = test_config(&nats, &db);
    config.nats.nkey_seed_file = Some(seed_file);
    config.nats.tls_ca_file = Some(ca);
    let bus = chorus_bus::Bus::connect_config(&config.nats, "t")
        .await
        .expect("an nkey over TLS");
    assert!(bus.js.query_account().await.is_ok());
    config.nats.nkey_seed_file = None;
    assert!(
        chorus_bus::Bus::connect_config(&config.nats, "t")
            .await
            .is_err(),
        "no nkey, no entry"
    );
}
