//! Held deliveries on a real nats-server: kept alive while they wait or are worked on, left to
//! expire once their worker stops saying it works on them.

#![allow(clippy::expect_used, clippy::panic)] // test helpers fail loudly on purpose

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::stream;
use chorus_bus::source::Pull;
use chorus_bus::{Bus, Delivery};
use chorus_testkit::nats::NatsServer;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

const ACK_WAIT: Duration = Duration::from_secs(2);

/// A stream `HOLD` and its consumer `worker` with a short AckWait, and one message on it.
async fn setup(server: &NatsServer) -> Bus {
    let bus = Bus::connect(&server.url(), "chorus", "test", Duration::from_secs(5))
        .await
        .expect("connect");
    let stream = bus
        .js
        .create_stream(stream::Config {
            name: "HOLD".into(),
            subjects: vec!["hold.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
    stream
        .create_consumer(pull::Config {
            durable_name: Some("worker".into()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            ..Default::default()
        })
        .await
        .expect("consumer");
    bus.js
        .publish("hold.one", "work".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    bus
}

/// Pulls from `worker`, handing every delivery to the returned receiver.
fn pull(bus: &Bus, stop: &CancellationToken) -> mpsc::UnboundedReceiver<Delivery> {
    let (sender, receiver) = mpsc::unbounded_channel();
    let (bus, stop) = (bus.clone(), stop.clone());
    tokio::spawn(async move {
        let pull = Pull::new("HOLD".into(), "worker", 8);
        let permits = Arc::new(Semaphore::new(8));
        let _ = bus
            .pull(&pull, permits, stop, |delivery| {
                sender.send(delivery).is_ok()
            })
            .await;
    });
    receiver
}

async fn redelivered(bus: &Bus) -> usize {
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = bus
        .js
        .get_stream("HOLD")
        .await
        .expect("stream")
        .get_consumer("worker")
        .await
        .expect("consumer");
    consumer.info().await.expect("info").num_redelivered
}

#[tokio::test]
async fn a_delivery_worked_on_is_kept_alive_and_one_whose_worker_stopped_expires() {
    let server = NatsServer::start_new().await;
    let bus = setup(&server).await;
    let stop = CancellationToken::new();
    let mut deliveries = pull(&bus, &stop);
    let first = deliveries.recv().await.expect("a delivery");

    // Worked on for three AckWaits, touched every half second: never redelivered.
    for _ in 0..12 {
        first.touch();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(redelivered(&bus).await, 0, "a touched delivery stays held");

    // Touched once more, then its worker goes quiet: it expires and comes back.
    first.touch();
    let again = tokio::time::timeout(ACK_WAIT * 4, deliveries.recv())
        .await
        .expect("redelivered once its worker stopped touching it")
        .expect("a delivery");
    assert_eq!(again.info().delivered, 2);
    again.ack().await.expect("ack");
    drop(first);
    stop.cancel();
}

#[tokio::test]
async fn a_delivery_waiting_for_a_worker_is_kept_alive_while_the_workers_make_progress() {
    let server = NatsServer::start_new().await;
    let bus = setup(&server).await;
    bus.js
        .publish("hold.two", "more work".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    let stop = CancellationToken::new();
    let mut deliveries = pull(&bus, &stop);
    let working = deliveries.recv().await.expect("a delivery");
    let waiting = deliveries.recv().await.expect("a second delivery");

    // One is worked on (touched), the other waits behind it: both held for three AckWaits.
    waiting.queued();
    for _ in 0..12 {
        working.touch();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(redelivered(&bus).await, 0, "both stay held");

    // The worker hangs: nothing makes progress, so both expire and come back.
    let mut back = Vec::new();
    for _ in 0..2 {
        let again = tokio::time::timeout(ACK_WAIT * 4, deliveries.recv())
            .await
            .expect("redelivered once nothing made progress")
            .expect("a delivery");
        back.push(again.info().delivered);
        again.ack().await.expect("ack");
    }
    assert_eq!(back, [2, 2]);
    drop((working, waiting));
    stop.cancel();
}
