//! `chorus bench` runs end to end with a small N so it cannot rot. Its figures are printed for
//! whoever reads the log; they are not asserted.

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
