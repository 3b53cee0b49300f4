//! Definitions applied to a real nats-server: create, no-op, update in place, refuse clearly.

#![allow(clippy::expect_used, clippy::panic)] // test helpers fail loudly on purpose

use std::time::Duration;

use chorus_bus::Bus;
use chorus_bus::definitions::{Change, DefinitionError, Definitions};
use chorus_bus::error::BusErrorKind;
use chorus_testkit::nats::NatsServer;

async fn bus(server: &NatsServer) -> Bus {
    Bus::connect(&server.url(), "chorus", "test", Duration::from_secs(5))
        .await
        .expect("connect")
}

fn write(dir: &std::path::Path, file: &str, text: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

#[tokio::test]
async fn builtin_definitions_apply_once_then_are_unchanged() {
    let server = NatsServer::start_new().await;
    let bus = bus(&server).await;
    let defs = Definitions::builtin("chorus", 1).expect("builtin definitions");
    let first = defs.apply(&bus).await.expect("first apply");
    assert!(
        first.iter().all(|a| a.change == Change::Created),
        "{first:?}"
    );
    let defined: usize = defs.streams.iter().map(|s| 1 + s.consumers.len()).sum();
    assert_eq!(first.len(), defined);
    let second = defs.apply(&bus).await.expect("second apply");
    assert!(
        second.iter().all(|a| a.change == Change::Unchanged),
        "{second:?}"
    );
    // The jobs bucket is a usable KV bucket.
    bus.js.get_key_value("chorus_jobs").await.expect("bucket");
}

#[tokio::test]
async fn changed_fields_update_in_place_or_are_refused_by_name() {
    let server = NatsServer::start_new().await;
    let bus = bus(&server).await;
    let dir = tempfile::tempdir().expect("dir");
    let stream = r#"{"name": "${PREFIX}_T", "subjects": ["${prefix}.t.>"], "retention": "limits", "max_age": 60000000000}"#;
    let consumer = r#"{"durable_name": "c", "filter_subject": "${prefix}.t.a", "ack_policy": "explicit", "max_deliver": 3}"#;
    write(dir.path(), "streams/t.json", stream);
    write(dir.path(), "consumers/t/c.json", consumer);
    let load = || Definitions::from_dir(dir.path(), "chorus", 1).expect("load");
    load().apply(&bus).await.expect("create");

    write(
        dir.path(),
        "streams/t.json",
        &stream.replace("60000000000", "120000000000"),
    );
    write(
        dir.path(),
        "consumers/t/c.json",
        &consumer.replace("\"max_deliver\": 3", "\"max_deliver\": 7"),
    );
    let applied = load().apply(&bus).await.expect("update");
    assert_eq!(applied[0].change, Change::Updated(vec!["max_age".into()]));
    assert_eq!(
        applied[1].change,
        Change::Updated(vec!["max_deliver".into()])
    );
    let info = bus
        .js
        .get_stream("CHORUS_T")
        .await
        .expect("stream")
        .cached_info()
        .clone();
    assert_eq!(info.config.max_age, Duration::from_secs(120));

    // A filter removed from the file is removed from the server.
    let unfiltered = consumer
        .replace("\"max_deliver\": 3", "\"max_deliver\": 7")
        .replace("\"filter_subject\": \"${prefix}.t.a\", ", "");
    write(dir.path(), "consumers/t/c.json", &unfiltered);
    let applied = load().apply(&bus).await.expect("drop the filter");
    assert_eq!(
        applied[1].change,
        Change::Updated(vec!["filter_subject".into()])
    );
    let applied = load().apply(&bus).await.expect("again");
    assert_eq!(applied[1].change, Change::Unchanged);

    write(
        dir.path(),
        "streams/t.json",
        &stream
            .replace("60000000000", "120000000000")
            .replace("limits", "workqueue"),
    );
    match load().apply(&bus).await {
        Err(
            ref error @ DefinitionError::Rejected {
                ref fields,
                ref source,
                ..
            },
        ) => {
            assert_eq!(fields, &["retention"]);
            assert_eq!(source.kind(), BusErrorKind::Refused, "{error}");
            assert!(
                error.to_string().contains("refused to change retention"),
                "{error}"
            );
        }
        other => panic!("expected a refusal naming retention, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_fields_and_orphan_consumers_are_errors() {
    let dir = tempfile::tempdir().expect("dir");
    write(
        dir.path(),
        "streams/t.json",
        r#"{"name": "T", "subjects": ["t"], "max_agee": 1}"#,
    );
    let err = Definitions::from_dir(dir.path(), "chorus", 1).expect_err("unknown field");
    assert!(err.to_string().contains("max_agee"), "{err}");

    write(
        dir.path(),
        "streams/t.json",
        r#"{"name": "T", "subjects": ["t"]}"#,
    );
    write(dir.path(), "consumers/u/c.json", r#"{"durable_name": "c"}"#);
    let err = Definitions::from_dir(dir.path(), "chorus", 1).expect_err("orphan");
    assert!(err.to_string().contains("streams/u.json"), "{err}");
}

/// A stream at its size limit refuses a publish as `Full` — a kind the edge answers with `429`
/// and the roles retry in place — not as a refusal for good.
#[tokio::test]
async fn a_publish_to_a_full_stream_is_full() {
    let server = NatsServer::start_new().await;
    let bus = bus(&server).await;
    bus.js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "TINY".into(),
            subjects: vec!["tiny.>".into()],
            retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
            discard: async_nats::jetstream::stream::DiscardPolicy::New,
            max_messages: 1,
            ..Default::default()
        })
        .await
        .expect("stream");
    let publish = |n: u8| {
        let bus = bus.clone();
        async move {
            let outgoing =
                chorus_bus::publish::Outgoing::json("tiny.a".into(), &format!("tiny-{n}"), vec![n]);
            bus.publish_all(vec![outgoing]).await
        }
    };
    publish(1).await.expect("room for one");
    let full = publish(2).await.expect_err("no room for two");
    assert_eq!(full.kind(), BusErrorKind::Full, "{full}");
}
