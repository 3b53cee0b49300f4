//! `chorus budgets set|list|show|remove` and `chorus keys create --budget-usd`, run as the real
//! binary against a real nats-server (whose definitions the CLI applies itself) and SQLite: the
//! ledger read back through `Budgets::get`, holds and expired holds shown as the bucket holds
//! them, each change in the audit log, bad amounts refused, and an unreachable NATS creating no
//! key.

use std::process::Output;
use std::time::Duration;

use chorus_bus::Bus;
use chorus_bus::budgets::Budgets;
use chorus_core::Tenant;
use chorus_core::budget::{Period, Scope, Source, nanos};
use chorus_core::ids::now_millis;
use chorus_store::Store;
use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::NatsServer;
use serde_json::{Value, json};

use crate::helpers::*;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// The command failed; its stderr.
fn failed(output: Output, what: &str) -> String {
    assert!(
        !output.status.success(),
        "{what} should fail\nstdout: {}",
        text(&output.stdout)
    );
    text(&output.stderr)
}

#[tokio::test]
async fn budgets_are_set_listed_shown_removed_and_audited_from_the_cli() {
    let mut nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let config = test_config(&nats, &db);
    let processes = Processes::new(&config);
    ok(processes.run(&["migrate"]).await, "chorus migrate");
    let acme = Scope::Tenant(Tenant::new("acme").expect("tenant"));

    // No definitions applied yet: the CLI creates the bucket itself.
    let listed = processes.run(&["budgets", "list"]).await;
    assert!(
        text(&listed.stderr).contains("applying the NATS definitions"),
        "{}",
        text(&listed.stderr)
    );
    assert_eq!(ok(listed, "list").trim(), "no budgets");
    let bus = Bus::connect_config(&config.nats, "test")
        .await
        .expect("connect");
    let budgets = Budgets::open(&bus).await.expect("the budgets bucket");

    let set = ok(
        processes
            .run(&[
                "budgets", "set", "--tenant", "acme", "--usd", "50", "--actor", "ops@test",
            ])
            .await,
        "set",
    );
    assert!(
        set.starts_with("set the budget of tenant acme to $50.00 per month (before: none)"),
        "{set}"
    );
    assert!(set.contains("remaining: $50.00"), "{set}");
    let ledger = budgets.get(&acme).await.expect("get").expect("a budget");
    assert_eq!(
        (ledger.limit.usd, ledger.limit.period, ledger.source),
        (50.0, Period::Month, Source::Admin)
    );
    ok(
        processes
            .run(&[
                "budgets", "set", "--tenant", "acme", "--usd", "20", "--period", "30d", "--actor",
                "ops@test",
            ])
            .await,
        "set with a period",
    );
    // Without --period, the budget keeps its own.
    ok(
        processes
            .run(&[
                "budgets", "set", "--tenant", "acme", "--usd", "25", "--actor", "ops@test",
            ])
            .await,
        "set without a period",
    );
    let thirty_days = Period::Every(Duration::from_secs(30 * 86_400));
    let ledger = budgets.get(&acme).await.expect("get").expect("a budget");
    assert_eq!((ledger.limit.usd, ledger.limit.period), (25.0, thirty_days));

    // Bad amounts are refused by name, and change nothing.
    for bad in ["-5", "NaN", "inf", "lots"] {
        let stderr = failed(
            processes
                .run(&["budgets", "set", "--tenant", "acme", "--usd", bad])
                .await,
            bad,
        );
        assert!(stderr.contains("--usd"), "{bad}: {stderr}");
    }
    let stderr = failed(
        processes
            .run(&["budgets", "set", "--key", "0123abcd", "--usd", "5"])
            .await,
        "a key that does not exist",
    );
    assert!(stderr.contains("no key `0123abcd`"), "{stderr}");
    assert_eq!(
        budgets.get(&acme).await.expect("get").map(|l| l.limit.usd),
        Some(25.0)
    );

    // Money in the ledger: $1.50 settled, a $0.50 hold whose process died (expired: counted as
    // spent), $1 held for a call in flight.
    let far = now_millis() + 3_600_000;
    budgets
        .reserve(&acme, "call-a", nanos(2.0), nanos(2.0), far)
        .await
        .expect("reserve");
    budgets
        .settle(&acme, "call-a", nanos(1.5))
        .await
        .expect("settle");
    budgets
        .reserve(&acme, "call-b", nanos(0.5), nanos(0.5), now_millis() - 1)
        .await
        .expect("reserve");
    budgets
        .reserve(&acme, "call-c", nanos(1.0), nanos(1.0), far)
        .await
        .expect("reserve");
    let shown = ok(
        processes
            .run(&["budgets", "show", "--tenant", "acme", "--json"])
            .await,
        "show --json",
    );
    let shown: Value = serde_json::from_str(&shown).expect("json");
    assert_eq!(
        (
            &shown["scope"],
            &shown["id"],
            &shown["limit_usd"],
            &shown["period"]
        ),
        (
            &json!("tenant"),
            &json!("acme"),
            &json!(25.0),
            &json!("30days")
        ),
        "{shown:#}"
    );
    assert_eq!(shown["spent_usd"], 2.0, "{shown:#}");
    assert_eq!(shown["reserved_usd"], 1.0, "{shown:#}");
    assert_eq!(shown["remaining_usd"], 22.0, "{shown:#}");
    assert_eq!(
        (&shown["calls"], &shown["calls_in_flight"]),
        (&json!(3), &json!(1))
    );
    assert_eq!(shown["expired"][0]["id"], "call-b", "{shown:#}");
    assert_eq!(shown["expired"][0]["usd"], 0.5, "{shown:#}");
    assert_eq!(shown["source"], "admin");
    let shown = ok(
        processes
            .run(&["budgets", "show", "--tenant", "acme"])
            .await,
        "show",
    );
    for line in [
        "limit: $25.00 per 30days",
        "spent: $2.00",
        "held: $1.00 for 1 call(s) in flight",
        "remaining: $22.00",
        "calls: 3 admitted this period",
        "expired: 1 hold(s) whose process stopped, counted as spent at their reserved cost: $0.50",
        "call-b  $0.50  expired ",
    ] {
        assert!(shown.contains(line), "{line:?} in\n{shown}");
    }

    // A key made with a budget of its own.
    let created = ok(
        processes
            .run(&[
                "keys",
                "create",
                "--tenant",
                "acme",
                "--name",
                "ci",
                "--budget-usd",
                "5",
                "--budget-period",
                "7d",
                "--actor",
                "ops@test",
                "--json",
            ])
            .await,
        "keys create --budget-usd",
    );
    let created: Value = serde_json::from_str(&created).expect("json");
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(created["key"].as_str().is_some_and(|k| k.len() > 40));
    assert_eq!(
        (
            &created["budget"]["limit_usd"],
            &created["budget"]["period"]
        ),
        (&json!(5.0), &json!("7days")),
        "{created:#}"
    );
    let key = Scope::Key(id.clone());
    let ledger = budgets
        .get(&key)
        .await
        .expect("get")
        .expect("the key's budget");
    assert_eq!(
        (ledger.limit.usd, ledger.limit.period, ledger.source),
        (
            5.0,
            Period::Every(Duration::from_secs(7 * 86_400)),
            Source::Admin
        )
    );
    // Without the flag that it qualifies, or with a bad amount: refused before anything is made.
    let stderr = failed(
        processes
            .run(&[
                "keys",
                "create",
                "--tenant",
                "acme",
                "--budget-period",
                "7d",
            ])
            .await,
        "--budget-period alone",
    );
    assert!(stderr.contains("--budget-usd"), "{stderr}");
    let stderr = failed(
        processes
            .run(&["keys", "create", "--tenant", "acme", "--budget-usd", "-1"])
            .await,
        "a negative --budget-usd",
    );
    assert!(stderr.contains("--budget-usd"), "{stderr}");

    // The table, then JSON, of both.
    let table = ok(processes.run(&["budgets", "list"]).await, "list");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    for column in [
        "SCOPE",
        "ID",
        "LIMIT",
        "PERIOD",
        "SPENT",
        "HELD",
        "REMAINING",
        "CALLS",
        "PERIOD ENDS (UTC)",
        "SOURCE",
    ] {
        assert!(lines[0].contains(column), "{column} in {table}");
    }
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        cells[..8],
        [
            "tenant", "acme", "$25.00", "30days", "$2.00", "$1.00", "$22.00", "3"
        ],
        "{table}"
    );
    assert_eq!(cells.last(), Some(&"admin"), "{table}");
    let cells: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        cells[..8],
        [
            "key",
            id.as_str(),
            "$5.00",
            "7days",
            "$0.00",
            "$0.00",
            "$5.00",
            "0"
        ],
        "{table}"
    );
    let listed = ok(
        processes.run(&["budgets", "list", "--json"]).await,
        "list --json",
    );
    let listed: Value = serde_json::from_str(&listed).expect("json");
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|b| b["id"].as_str())
        .collect();
    assert_eq!(ids, ["acme", id.as_str()]);

    // Removed: no ledger left, and a second removal says there is none.
    let removed = ok(
        processes
            .run(&[
                "budgets", "remove", "--tenant", "acme", "--actor", "ops@test",
            ])
            .await,
        "remove",
    );
    assert!(
        removed.contains("removed the budget of tenant acme ($25.00 per 30days"),
        "{removed}"
    );
    assert_eq!(budgets.get(&acme).await.expect("get"), None);
    let stderr = failed(
        processes
            .run(&["budgets", "remove", "--tenant", "acme"])
            .await,
        "a second remove",
    );
    assert!(stderr.contains("tenant acme has no budget"), "{stderr}");
    let stderr = failed(
        processes
            .run(&["budgets", "show", "--tenant", "acme"])
            .await,
        "show after remove",
    );
    assert!(stderr.contains("tenant acme has no budget"), "{stderr}");

    // Every change in the audit log, newest first.
    let store = Store::connect(db.url(), 1).await.expect("db");
    let audit = store.audit_entries(None, 20).await.expect("audit");
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|r| (r.action.as_str(), r.actor.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("budget.remove", "ops@test"),
            ("budget.set", "ops@test"),
            ("key.create", "ops@test"),
            ("budget.set", "ops@test"),
            ("budget.set", "ops@test"),
            ("budget.set", "ops@test"),
        ]
    );
    let detail = |i: usize| serde_json::to_value(&audit[i].detail).expect("json");
    assert_eq!(
        detail(5),
        json!({"scope": {"scope": "tenant", "id": "acme"},
               "limit": {"usd": 50.0, "period": "month"}, "before": null})
    );
    assert_eq!(
        detail(4),
        json!({"scope": {"scope": "tenant", "id": "acme"},
               "limit": {"usd": 20.0, "period": "30days"},
               "before": {"usd": 50.0, "period": "month"}})
    );
    assert_eq!(
        detail(1),
        json!({"scope": {"scope": "key", "id": id},
               "limit": {"usd": 5.0, "period": "7days"}, "before": null})
    );
    assert_eq!(detail(0)["limit"], json!({"usd": 25.0, "period": "30days"}));

    // NATS unreachable: a key asked with a budget is not created at all.
    let keys_before = store.list_keys(None).await.expect("keys").len();
    nats.stop().await;
    let stderr = failed(
        processes
            .run(&["keys", "create", "--tenant", "acme", "--budget-usd", "5"])
            .await,
        "keys create without NATS",
    );
    assert!(stderr.contains("no key was created"), "{stderr}");
    assert_eq!(
        store.list_keys(None).await.expect("keys").len(),
        keys_before
    );
}
