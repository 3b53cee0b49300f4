//! The cluster harness against real `nats-server` processes: leaders found and moved, a leader
//! killed and replaced, a node restarted and caught up, a node paused and resumed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, kv, stream};
use chorus_testkit::cluster::NatsCluster;
use chorus_testkit::wait;

const WAIT: Duration = Duration::from_secs(60);

async fn r3_stream(js: &jetstream::Context, name: &str) -> stream::Stream {
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{}.>", name.to_lowercase())],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Publishes `ids` to `subject`, each with its id as `Nats-Msg-Id`, retrying until acknowledged:
/// a retry after a lost acknowledgement is deduplicated, so each id is stored once.
async fn publish_all(js: &jetstream::Context, subject: &str, ids: std::ops::Range<u32>) {
    for id in ids {
        wait::until(
            WAIT,
            &format!("an acknowledged publish of message {id}"),
            || async {
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", id.to_string().as_str());
                let ack = js
                    .publish_with_headers(subject.to_owned(), headers, id.to_string().into())
                    .await
                    .ok()?;
                tokio::time::timeout(Duration::from_secs(5), ack)
                    .await
                    .ok()?
                    .ok()
            },
        )
        .await;
    }
}

/// The number of messages in the stream, as its leader reports.
async fn messages(js: &jetstream::Context, name: &str) -> u64 {
    wait::until(WAIT, &format!("the info of stream {name}"), || async {
        let stream = js.get_stream(name).await.ok()?;
        Some(stream.get_info().await.ok()?.state.messages)
    })
    .await
}

#[tokio::test]
async fn leaders_move_and_a_killed_leader_is_replaced_and_catches_up() {
    let mut cluster = NatsCluster::start(3).await;
    assert_eq!(cluster.len(), 3);
    assert_eq!(
        (0..3).map(|n| cluster.name(n)).collect::<Vec<_>>(),
        ["n0", "n1", "n2"]
    );
    assert_eq!(cluster.node_of("n2"), Some(2));
    assert_eq!(cluster.node_of("n3"), None);
    assert_eq!(cluster.urls().split(',').count(), 3);
    assert_eq!(
        cluster.urls().split(',').nth(1),
        Some(cluster.url(1).as_str())
    );

    // What `nats.url` takes, as Chorus splits it.
    let servers = chorus_bus::connect::servers(&cluster.urls()).unwrap();
    assert_eq!(servers.len(), 3);
    let client = async_nats::connect(servers).await.unwrap();
    let js = jetstream::new(client);
    let events = r3_stream(&js, "EVENTS").await;
    events
        .create_consumer(consumer::pull::Config {
            durable_name: Some("worker".to_owned()),
            ..Default::default()
        })
        .await
        .unwrap();
    let bucket = js
        .create_key_value(kv::Config {
            bucket: "state".to_owned(),
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    publish_all(&js, "events.a", 0..10).await;
    bucket.put("k", "v1".into()).await.unwrap();

    for node in 0..cluster.len() {
        cluster.move_stream_leader("EVENTS", node).await;
        assert_eq!(cluster.stream_leader("EVENTS").await, Some(node));
        cluster.move_consumer_leader("EVENTS", "worker", node).await;
        assert_eq!(
            cluster.consumer_leader("EVENTS", "worker").await,
            Some(node)
        );
        cluster.move_bucket_leader("state", node).await;
        assert_eq!(cluster.bucket_leader("state").await, Some(node));
    }
    assert_eq!(messages(&js, "EVENTS").await, 10);

    // Everything led by one node, which crashes.
    let leader = 1;
    cluster.move_stream_leader("EVENTS", leader).await;
    cluster.move_bucket_leader("state", leader).await;
    cluster.kill(leader).await;
    assert!(!cluster.is_up(leader));
    let new_leader = wait::until(WAIT, "a new leader of EVENTS", || async {
        cluster.stream_leader("EVENTS").await
    })
    .await;
    assert_ne!(new_leader, leader);
    let new_bucket_leader = wait::until(WAIT, "a new leader of the bucket", || async {
        cluster.bucket_leader("state").await
    })
    .await;
    assert_ne!(new_bucket_leader, leader);

    publish_all(&js, "events.b", 10..20).await;
    wait::until(WAIT, "a put into the bucket", || async {
        bucket.put("k", "v2".into()).await.ok()
    })
    .await;
    assert_eq!(messages(&js, "EVENTS").await, 20);

    // Back on the same ports and store, the node catches up and can lead again.
    cluster.restart(leader).await;
    assert!(cluster.is_up(leader));
    cluster.wait_jetstream(leader, WAIT).await;
    cluster.wait_caught_up(&["EVENTS", "KV_state"], WAIT).await;
    cluster.move_stream_leader("EVENTS", leader).await;
    cluster.move_bucket_leader("state", leader).await;
    assert_eq!(messages(&js, "EVENTS").await, 20);
    assert_eq!(
        bucket.get("k").await.unwrap().as_deref(),
        Some(b"v2".as_slice())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_leader_is_replaced_and_a_client_uses_every_url() {
    let cluster = NatsCluster::start_with_config(3, "jetstream { sync_interval: always }").await;
    for node in 0..cluster.len() {
        let varz = cluster.monitor(node, "/varz").await.unwrap();
        assert_eq!(varz["jetstream"]["config"]["sync_always"], true, "{varz}");
        assert_eq!(varz["server_name"], cluster.name(node));
    }
    let direct = async_nats::connect(cluster.url(1)).await.unwrap();
    let js = jetstream::new(direct);
    r3_stream(&js, "ORDERS").await;
    publish_all(&js, "orders.a", 0..5).await;

    cluster.move_stream_leader("ORDERS", 0).await;
    cluster.pause(0);
    assert!(cluster.is_paused(0));
    let new_leader = wait::until(
        WAIT,
        "a leader of ORDERS other than the paused n0",
        || async { cluster.stream_leader("ORDERS").await.filter(|&l| l != 0) },
    )
    .await;
    assert!(cluster.is_up(new_leader));
    publish_all(&js, "orders.b", 5..10).await;
    assert_eq!(messages(&js, "ORDERS").await, 10);

    cluster.resume(0);
    assert!(!cluster.is_paused(0));
    cluster.wait_caught_up(&["ORDERS"], WAIT).await;
    cluster.move_stream_leader("ORDERS", 0).await;

    let everywhere = jetstream::new(cluster.connect().await);
    publish_all(&everywhere, "orders.c", 10..15).await;
    assert_eq!(messages(&everywhere, "ORDERS").await, 15);

    // A paused node is killed with the others on drop.
    let paused = cluster.pid(2).unwrap();
    cluster.pause(2);
    drop(cluster);
    wait::until(WAIT, "the paused node to be gone", || async {
        let stat = std::fs::read_to_string(format!("/proc/{paused}/stat")).unwrap_or_default();
        // Gone, or a zombie not reaped yet.
        (stat.is_empty() || stat.split(' ').nth(2) == Some("Z")).then_some(())
    })
    .await;
}
