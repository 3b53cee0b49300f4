//! The DLQ stream on a real nats-server: filing, selecting, reading, replaying and deleting entries.

#![allow(clippy::expect_used, clippy::panic)] // test helpers fail loudly on purpose

use std::time::Duration;

use async_nats::HeaderMap;
use chorus_bus::Bus;
use chorus_bus::definitions::Definitions;
use chorus_bus::dlq::filing::{dead_letter_message, replay_message};
use chorus_bus::dlq::{self, DeadLetters, DlqError, Entry, Filter};
use chorus_core::ids::now_millis;
use chorus_core::messages::DeadLetter;
use chorus_core::subjects::Stage;
use chorus_testkit::nats::NatsServer;

async fn bus(server: &NatsServer) -> Bus {
    let bus = Bus::connect(&server.url(), "chorus", "test", Duration::from_secs(5))
        .await
        .expect("connect");
    Definitions::builtin("chorus", 1)
        .expect("definitions")
        .apply(&bus)
        .await
        .expect("apply");
    bus
}

fn letter(kind: &str, route: &str, sequence: u64, replays: u32) -> DeadLetter {
    DeadLetter {
        stage: Stage::Llm,
        subject: format!("chorus.work.llm.{route}"),
        headers: vec![
            ("Nats-Msg-Id".into(), format!("job:call:{sequence}")),
            ("Chorus-Route".into(), route.into()),
        ],
        payload: format!("call {sequence}").into_bytes(),
        error_kind: kind.into(),
        error: "it broke".into(),
        route: Some(route.into()),
        job_id: None,
        tenant: None,
        deliveries: 5,
        attempts: 15,
        replays,
        stream_sequence: sequence,
        published_at: now_millis(),
        failed_at: now_millis(),
    }
}

async fn file(bus: &Bus, letter: &DeadLetter) {
    let message = dead_letter_message(&bus.subjects, letter).expect("encode");
    bus.publish_all(vec![message]).await.expect("publish");
}

fn seqs(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

async fn selected(dlq: &DeadLetters, filter: &Filter, limit: usize) -> (Vec<u64>, bool) {
    let (entries, more) = dlq.select(filter, limit).await.expect("select");
    (seqs(&entries), more)
}

#[tokio::test]
async fn selects_filters_reads_and_deletes() {
    let server = NatsServer::start_new().await;
    let bus = bus(&server).await;
    let dlq = DeadLetters::new(bus.clone());
    let everything = Filter::default();
    assert_eq!(selected(&dlq, &everything, 10).await, (vec![], false));

    file(&bus, &letter("server_error", "a", 1, 0)).await;
    file(&bus, &letter("timeout", "b", 2, 0)).await;
    file(&bus, &letter("server_error", "a", 1, 0)).await; // the same failure again: de-duplicated
    bus.client
        .publish("chorus.dlq.llm", "not a dead letter".into())
        .await
        .expect("publish");
    bus.client.flush().await.expect("flush");
    file(&bus, &letter("server_error", "b", 3, 1)).await;

    assert_eq!(
        selected(&dlq, &everything, 10).await,
        (vec![1, 2, 4], false)
    );
    assert_eq!(selected(&dlq, &everything, 2).await, (vec![1, 2], true));
    let kind = Filter {
        kind: Some("server_error".into()),
        ..Filter::default()
    };
    assert_eq!(selected(&dlq, &kind, 10).await.0, [1, 4]);
    let route = Filter {
        route: Some("b".into()),
        ..kind.clone()
    };
    assert_eq!(selected(&dlq, &route, 10).await.0, [4]);
    let stage = Filter {
        stage: Some(Stage::Evaluator),
        ..Filter::default()
    };
    assert!(selected(&dlq, &stage, 10).await.0.is_empty());
    let chosen = Filter {
        sequences: vec![4, 2, 99],
        ..Filter::default()
    };
    assert_eq!(selected(&dlq, &chosen, 10).await.0, [2, 4]);

    let entry = dlq.get(2).await.expect("get").expect("entry 2");
    assert_eq!(entry.letter.error_kind, "timeout");
    assert!(dlq.get(99).await.expect("get").is_none());
    assert!(matches!(
        dlq.get(3).await,
        Err(DlqError::NotADeadLetter { sequence: 3, .. })
    ));

    dlq.delete(1).await.expect("delete");
    assert_eq!(selected(&dlq, &everything, 10).await.0, [2, 4]);

    // Deleting what is already gone, or never was, is fine.
    dlq.delete(1).await.expect("already deleted");
    let stream = bus.subjects.stream("dlq");
    dlq::delete_message(&bus, &stream, 1)
        .await
        .expect("already deleted");
    dlq::delete_message(&bus, &stream, 1_000)
        .await
        .expect("never existed");
    assert!(
        dlq::fetch_message(&bus, &stream, 1)
            .await
            .expect("fetch")
            .is_none()
    );
}

#[tokio::test]
async fn a_replay_republishes_the_original_under_a_fresh_id_and_leaves_the_dlq() {
    let server = NatsServer::start_new().await;
    let bus = bus(&server).await;
    let dlq = DeadLetters::new(bus.clone());
    file(&bus, &letter("server_error", "a", 1, 0)).await;
    file(&bus, &letter("server_error", "b", 2, 0)).await;

    let entry = dlq.get(1).await.expect("get").expect("entry 1");
    dlq.replay(&entry).await.expect("replay");
    assert_eq!(selected(&dlq, &Filter::default(), 10).await.0, [2]);

    // The original is back on its work subject, marked as a replay under a fresh id.
    let work = bus
        .js
        .get_stream(bus.subjects.stream("work"))
        .await
        .expect("work stream");
    let first = work.get_raw_message(1).await.expect("replayed message");
    assert_eq!(first.subject.as_str(), "chorus.work.llm.a");
    assert_eq!(&first.payload[..], b"call 1");
    let header = |h: &HeaderMap, name: &str| h.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(
        header(&first.headers, "Chorus-Replays").as_deref(),
        Some("1")
    );
    assert_eq!(
        header(&first.headers, "Nats-Msg-Id").as_deref(),
        Some("job:call:1:replay:1")
    );
    assert_eq!(header(&first.headers, "Chorus-Route").as_deref(), Some("a"));

    // Replaying the same message again publishes the same id: the stream drops the duplicate.
    let again = replay_message(&bus.subjects, &letter("server_error", "a", 1, 0), 1);
    bus.publish_all(vec![again]).await.expect("publish");
    let mut work = work;
    assert_eq!(work.info().await.expect("info").state.messages, 1);
}
