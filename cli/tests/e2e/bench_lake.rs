//! `tributary bench lake` end to end on a small load: every change written
//! reaches Kafka and silver and is measured once, and the bench removes its
//! stack.

use std::process::Command;

use serde_json::Value;

use crate::common::*;

#[test]
fn bench_lake_measures_every_change_once_and_cleans_up() {
    // The bench starts a stack of its own, in the test's folder.
    let env = Env::stack_blocking();
    let tmp = env.dir.path();
    let out = Command::new(bin())
        .args([
            "bench",
            "lake",
            "--rate",
            "300",
            "--duration",
            "10s",
            "--json",
        ])
        // The bench makes its stack in the system temp folder: point that
        // at this test's folder to see that it is removed.
        .env("TMPDIR", tmp)
        .env_remove("TRIBUTARY_CONFIG")
        .current_dir(tmp)
        .output()
        .unwrap();
    assert_success(&out, "bench lake");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let written = r["written"].as_u64().unwrap();
    assert!(written >= 2_000, "only {written} changes written: {r}");
    let samples = r["samples"].as_array().unwrap();
    let (first, last) = (&samples[0], samples.last().unwrap());
    let in_kafka = last["in_kafka"].as_i64().unwrap() - first["in_kafka"].as_i64().unwrap();
    assert_eq!(
        in_kafka as u64, written,
        "Kafka holds other than the writes: {r}"
    );
    // Every change written was observed by the freshness histogram once.
    assert_eq!(r["freshness"]["changes"].as_u64().unwrap(), written, "{r}");
    let p99 = r["freshness"]["p99"].as_f64().unwrap();
    assert!(p99 > 0.0 && p99 < 120.0, "{r}");
    let files = r["files"].as_array().unwrap();
    assert!(
        files
            .iter()
            .any(|f| f["table"] == "orders" && f["silver_files"].as_u64().unwrap() > 0),
        "{r}"
    );
    assert!(r["ingester_peak_rss_kib"].as_u64().unwrap() > 0, "{r}");
    let left: Vec<_> = std::fs::read_dir(tmp)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tributary-bench-lake-"))
        .collect();
    assert!(left.is_empty(), "the bench left {left:?} behind");
}
