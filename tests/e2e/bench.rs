//! `chorus bench`, `chorus bench chat` and `chorus bench inflight` run end to end with a small N so
//! they cannot rot. Their figures are printed for whoever reads the log; they are not asserted.

use crate::helpers::Processes;

#[tokio::test]
async fn chorus_bench_runs_and_reports() {
    let processes = Processes::new(&chorus_core::config::Config::default());
    let output = processes
        .run(&["bench", "-n", "2000", "--raw-messages", "20000", "--json"])
        .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON report");
    assert_eq!(report["jobs"], 2000);
    for figure in [
        "jobs_per_sec",
        "latency_ms_p99",
        "messages_per_job",
        "raw_publish_per_sec",
        "raw_consume_ack_per_sec",
        "efficiency",
    ] {
        assert!(
            report[figure].as_f64().is_some_and(|v| v > 0.0),
            "{figure} missing: {report}"
        );
    }
}

/// `chorus bench chat` at two short levels: the mock alone and Chorus both answer every request,
/// and each level has its ratio. Timings are printed, not asserted.
#[tokio::test]
async fn chorus_bench_chat_measures_the_mock_and_chorus() {
    let processes = Processes::new(&chorus_core::config::Config::default());
    let output = processes
        .run(&[
            "bench",
            "chat",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--concurrency",
            "1,4",
            "--json",
        ])
        .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench chat failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON report");
    assert_eq!(report["model"], "bench-chat");
    assert_eq!(report["latency_ms"], 50.0);
    let levels = report["levels"].as_array().expect("levels");
    let concurrencies: Vec<_> = levels.iter().map(|l| l["concurrency"].clone()).collect();
    assert_eq!(concurrencies, [1, 4]);
    for level in levels {
        for target in ["mock", "chorus"] {
            let figures = &level[target];
            assert!(
                figures["requests"].as_u64().is_some_and(|n| n > 0),
                "no {target} requests: {level}"
            );
            assert_eq!(figures["errors"], 0, "{target} errors: {level}");
            for figure in ["req_per_sec", "p50_ms", "p99_ms"] {
                assert!(
                    figures[figure].as_f64().is_some_and(|v| v > 0.0),
                    "{target} {figure} missing: {level}"
                );
            }
        }
        assert!(
            level["ratio"].as_f64().is_some_and(|r| r > 0.0),
            "ratio missing: {level}"
        );
        assert!(
            level["p50_overhead_ms"].as_f64().is_some(),
            "p50 overhead missing: {level}"
        );
    }
}

/// `chorus bench inflight` with 200 calls answered after 1 s: every job succeeds and the report
/// has its memory figures. How many calls overlap at the mock depends on how fast they are fed,
/// so only a clear share of them is asserted; figures are printed, not asserted.
#[tokio::test]
async fn chorus_bench_inflight_reports_memory_per_call() {
    let processes = Processes::new(&chorus_core::config::Config::default());
    let output = processes
        .run(&[
            "bench",
            "inflight",
            "--calls",
            "200",
            "--latency",
            "1s",
            "--json",
        ])
        .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench inflight failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON report");
    assert_eq!(report["calls"], 200);
    assert_eq!(report["workers"], 200);
    assert_eq!(report["succeeded"], 200);
    let peak = report["peak_in_flight"].as_u64().expect("peak_in_flight");
    assert!((20..=200).contains(&peak), "{report}");
    assert!(
        report["sampled_in_flight"]
            .as_u64()
            .is_some_and(|n| n <= peak),
        "{report}"
    );
    let baseline = report["baseline_rss_kib"].as_u64().expect("baseline");
    let rss_peak = report["peak_rss_kib"].as_u64().expect("peak RSS");
    assert!(baseline > 0 && rss_peak >= baseline, "{report}");
    assert!(
        report["rss_per_call_kib"]
            .as_f64()
            .is_some_and(|kib| kib.is_finite() && kib > 0.0),
        "{report}"
    );
}
