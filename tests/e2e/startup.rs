//! How a process starts and how its container is checked: `chorus healthcheck` (the image's
//! HEALTHCHECK) follows the probes of a worker and of the edge, and a role that does not migrate
//! refuses a database that lacks its migrations, naming what to run.

use std::time::Duration;

use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::{NatsServer, free_port};
use chorus_testkit::wait;

use crate::helpers::*;

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn until_healthy(processes: &Processes, args: &[&str]) {
    wait::until(
        Duration::from_secs(30),
        "chorus healthcheck to pass",
        || async { processes.run(args).await.status.success().then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn healthcheck_follows_the_probes_of_a_worker_and_of_the_edge() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mut config = test_config(&nats, &db);
    free_edge(&mut config);
    config.probes.listen = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let processes = Processes::new(&config);
    assert!(processes.run(&["migrate"]).await.status.success());

    let nothing = processes.run(&["healthcheck"]).await;
    assert_eq!(nothing.status.code(), Some(1));
    assert!(
        stderr(&nothing).contains("nothing answered"),
        "{}",
        stderr(&nothing)
    );

    // A worker serves its probes on the probe port; the edge's port is closed.
    let mut worker = processes.spawn(&["serve", "--roles", "llm"]);
    until_healthy(&processes, &["healthcheck", "--ready"]).await;
    assert!(processes.run(&["healthcheck"]).await.status.success());
    worker.terminate();
    assert!(worker.exit(Duration::from_secs(20)).await.success());
    assert_eq!(processes.run(&["healthcheck"]).await.status.code(), Some(1));

    // The edge serves them beside its API.
    let mut edge = processes.spawn(&["serve", "--roles", "edge"]);
    until_healthy(&processes, &["healthcheck", "--ready"]).await;
    edge.terminate();
    assert!(edge.exit(Duration::from_secs(20)).await.success());

    // A 404 is not health: the answer is printed.
    let wrong = processes
        .run(&[
            "healthcheck",
            "--url",
            &format!("http://{}/nope", config.probes.listen),
        ])
        .await;
    assert_eq!(wrong.status.code(), Some(1));
}

#[tokio::test]
async fn a_role_that_does_not_migrate_refuses_a_database_without_its_migrations() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mut config = test_config(&nats, &db);
    config.database.auto_migrate = false;
    config.probes.listen = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let processes = Processes::new(&config);

    let refused = processes.run(&["serve", "--roles", "persister"]).await;
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(
        message.contains("lacks")
            && message.contains("m0001_initial")
            && message.contains("chorus migrate"),
        "{message}"
    );

    assert!(processes.run(&["migrate"]).await.status.success());
    let mut persister = processes.spawn(&["serve", "--roles", "persister"]);
    until_healthy(&processes, &["healthcheck", "--ready"]).await;
    persister.terminate();
    assert!(persister.exit(Duration::from_secs(20)).await.success());
}
