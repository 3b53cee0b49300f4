//! The DLQ stream on a real nats-server: filing, listing, reading, replaying and purging.

#![allow(clippy::expect_used, clippy::panic)] // test helpers fail loudly on purpose

use std::time::Duration;

use async_nats::HeaderMap;
use chorus_bus::Bus;
use chorus_bus::definitions::Definitions;
use chorus_bus::dlq::{
    self, DeadLetters, DlqError, Filter, ReplayOptions, dead_letter_message, replay_message,
};
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

fn seqs(entries: &[dlq::Summary]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

#[tokio::test]
async fn lists_filters_reads_and_purges() {
    let server = NatsServer::start_new().await;
    let bus = bus(&server).await;
    let dlq = DeadLetters::new(bus.clone());
    assert!(
        dlq.list(&Filter::default(), 10)
            .await
            .expect("list")
            .entries
            .is_empty()
    );

    file(&bus, &letter("server_error", "a", 1, 0)).await;
    file(&bus, &letter("timeout", "b", 2, 0)).await;
    file(&bus, &letter("server_error", "a", 1, 0)).await; // the same failure again: de-duplicated
    bus.client
        .publish("chorus.dlq.llm", "not a dead letter".into())
        .await
        .expect("publish");
    bus.client.flush().await.expect("flush");
    file(&bus, &letter("server_error", "b", 3, 1)).await;

    let all = dlq.list(&Filter::default(), 10).await.expect("list");
    assert_eq!(seqs(&all.entries), [1, 2, 4], "{all:?}");
    assert!(!all.more);
    let first_two = dlq.list(&Filter::default(), 2).await.expect("list");
    assert_eq!(
        (seqs(&first_two.entries), first_two.more),
        (vec![1, 2], true)
    );
    let kind = Filter {
        kind: Some("server_error".into()),
        ..Filter::default()
    };
    assert_eq!(
        seqs(&dlq.list(&kind, 10).await.expect("list").entries),
        [1, 4]
    );
    let route = Filter {
        route: Some("b".into()),
        ..kind.clone()
    };
    assert_eq!(
        seqs(&dlq.list(&route, 10).await.expect("list").entries),
        [4]
    );
    let stage = Filter {
        stage: Some(Stage::Evaluator),
        ..Filter::default()
    };
    assert!(dlq.list(&stage, 10).await.expect("list").entries.is_empty());
    let chosen = Filter {
        sequences: vec![4, 2, 99],
        ..Filter::default()
    };
    assert_eq!(
        seqs(&dlq.list(&chosen, 10).await.expect("list").entries),
        [2, 4]
    );

    let entry = dlq.get(2).await.expect("get").expect("entry 2");
    assert_eq!(entry.letter.error_kind, "timeout");
    assert!(dlq.get(99).await.expect("get").is_none());
    assert!(matches!(
        dlq.get(3).await,
        Err(DlqError::NotADeadLetter { sequence: 3, .. })
    ));

    let dry = dlq.purge(&kind, true).await.expect("dry purge");
    assert_eq!(
        (seqs(&dry.purged), dry.matched, dry.dry_run),
        (vec![1, 4], 2, true)
    );
    assert_eq!(
        dlq.list(&Filter::default(), 10)
            .await
            .expect("list")
            .entries
            .len(),
        3
    );
    let purged = dlq.purge(&kind, false).await.expect("purge");
    assert_eq!(seqs(&purged.purged), [1, 4]);
    assert!(purged.failed.is_empty());
    assert_eq!(
        seqs(
            &dlq.list(&Filter::default(), 10)
                .await
                .expect("list")
                .entries
        ),
        [2]
    );

    // Deleting what is already gone, or never was, is fine.
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
async fn replays_republish_the_original_within_the_cap_and_can_be_stopped() {
    let server = NatsServer::start_new().await;
    let bus = bus(&server).await;
    let dlq = DeadLetters::new(bus.clone());
    file(&bus, &letter("server_error", "a", 1, 0)).await;
    file(&bus, &letter("server_error", "b", 2, 2)).await;
    file(&bus, &letter("server_error", "c", 3, 0)).await;
    let options = ReplayOptions {
        max_replays: 2,
        rate: 1_000.0,
        dry_run: false,
    };

    // Stopped before the first: nothing happens, and the report says so.
    let stopped = dlq
        .replay(&Filter::default(), options, async {})
        .await
        .expect("replay");
    assert!(stopped.replayed.is_empty());
    assert_eq!(
        seqs(
            &stopped
                .refused
                .iter()
                .map(|s| s.entry.clone())
                .collect::<Vec<_>>()
        ),
        [2]
    );
    assert_eq!(stopped.not_attempted, 2);
    assert_eq!(
        dlq.list(&Filter::default(), 10)
            .await
            .expect("list")
            .entries
            .len(),
        3
    );

    let bad_rate = ReplayOptions {
        rate: 0.0,
        ..options
    };
    assert!(matches!(
        dlq.replay(&Filter::default(), bad_rate, std::future::pending())
            .await,
        Err(DlqError::BadRate { .. })
    ));

    let report = dlq
        .replay(&Filter::default(), options, std::future::pending())
        .await
        .expect("replay");
    assert_eq!((seqs(&report.replayed), report.matched), (vec![1, 3], 3));
    assert_eq!(report.refused.len(), 1);
    assert!(report.refused[0].reason.contains("cap is 2"));
    assert_eq!(
        seqs(
            &dlq.list(&Filter::default(), 10)
                .await
                .expect("list")
                .entries
        ),
        [2]
    );

    // The originals are back on their work subjects, marked as replays under fresh ids.
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
    assert_eq!(work.info().await.expect("info").state.messages, 2);
}
