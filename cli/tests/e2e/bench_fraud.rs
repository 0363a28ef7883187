//! `tributary bench fraud` end to end on a short run: the detector's alerts
//! equal the batch oracle's across a SIGKILL, no alert id is doubled, every
//! pattern that ran is found with precision and recall of at least 0.95,
//! the idle phase and the memory measure report, and the bench removes its
//! stack.

use std::process::Command;

use serde_json::Value;

use crate::common::*;

#[test]
fn bench_fraud_agrees_with_its_oracle_and_finds_the_labelled_fraud() {
    let env = Env::stack_blocking();
    let tmp = env.dir.path();
    let out = Command::new(bin())
        .args([
            "bench",
            "fraud",
            "--rate",
            "40",
            "--duration",
            "20s",
            "--fraud-rate",
            "0.3",
            "--kills",
            "1",
            "--idle",
            // Long enough that a detector still catching up after its kill
            // shows the watermark moving on a loaded machine (5 s did not
            // once in CI: no advance over the whole phase).
            "15s",
            "--memory-customers",
            "2000",
            "--json",
        ])
        .env("TMPDIR", tmp)
        .env_remove("TRIBUTARY_CONFIG")
        // Heartbeats every second: an idle shard's time moves quickly.
        .env("TRIBUTARY__CDC__HEARTBEAT_INTERVAL_MS", "1000")
        .env("TRIBUTARY__CDC__STATUS_INTERVAL_MS", "200")
        .current_dir(tmp)
        .output()
        .unwrap();
    assert_success(&out, "bench fraud");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let o = &r["oracle"];
    assert_eq!(o["equal"], true, "{o}");
    assert_eq!(o["duplicate_rows"], 0, "{o}");
    assert!(o["detector_alerts"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["kills_at_secs"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["settings"]["cdc_status_interval_ms"], 200, "{r}");
    let mut patterns = 0;
    for rule in r["rules"].as_array().unwrap() {
        if rule["incidents"].as_u64().unwrap() > 0 {
            patterns += 1;
            assert!(rule["recall"].as_f64().unwrap() >= 0.95, "{rule}");
            assert!(rule["precision"].as_f64().unwrap() >= 0.95, "{rule}");
        } else {
            assert_eq!(rule["alerts"], 0, "an alert without incidents: {rule}");
        }
    }
    assert!(patterns >= 4, "only {patterns} patterns ran: {r}");
    for b in r["benign"].as_array().unwrap() {
        assert_eq!(b["alerted"], 0, "a benign look-alike alerted: {b}");
    }
    let l = &r["latency"];
    assert!(
        l["p50"].as_f64().unwrap() > 0.0 && l["p99"].as_f64().unwrap() < 60.0,
        "{l}"
    );
    let idle = &r["idle"];
    assert!(idle["samples"].as_u64().unwrap() > 0, "{idle}");
    assert!(
        idle["watermark_advance_secs"].as_f64().unwrap() >= 1.0,
        "{idle}"
    );
    assert_eq!(r["memory"]["profiles"], 2000, "{r}");
    let left: Vec<_> = std::fs::read_dir(tmp)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tributary-bench-fraud-"))
        .collect();
    assert!(left.is_empty(), "the bench left {left:?} behind");
}
