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
    // The run also rewrites a copy of the capacity rates.
    let rates = tmp.join("rates.toml");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/capacity-rates.toml"),
        &rates,
    )
    .unwrap();
    let out = Command::new(bin())
        .args([
            "bench",
            "lake",
            "--rate",
            "300",
            "--duration",
            "10s",
            "--json",
            "--rates",
        ])
        .arg(&rates)
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
    assert_rates_recorded(&rates);
    let left: Vec<_> = std::fs::read_dir(tmp)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tributary-bench-lake-"))
        .collect();
    assert!(left.is_empty(), "the bench left {left:?} behind");
}

/// `--rates` wrote this run's measurements, and `tributary capacity` plans
/// from them.
fn assert_rates_recorded(rates: &std::path::Path) {
    let text = std::fs::read_to_string(rates).unwrap();
    let t: toml::Table = toml::from_str(&text).unwrap();
    let p = &t["pipeline"];
    assert!(
        p["source"]
            .as_str()
            .unwrap()
            .starts_with("tributary bench lake --rate 300 --duration 10s"),
        "{text}"
    );
    for key in [
        "postgres_changes_per_core_second",
        "cdc_changes_per_core_second",
        "ingest_changes_per_core_second",
        "kafka_bytes_per_change",
        "bronze_bytes_per_change",
    ] {
        assert!(p[key].as_float().unwrap() > 0.0, "{key}: {text}");
    }
    // The hand-kept sections survive the rewrite.
    assert_eq!(
        t["assumed"]["kafka_replication"].as_float(),
        Some(3.0),
        "{text}"
    );
    let out = Command::new(bin())
        .args([
            "capacity",
            "--orders-per-sec",
            "10",
            "--days",
            "30",
            "--json",
            "--rates",
        ])
        .arg(rates)
        .output()
        .unwrap();
    assert_success(&out, "capacity");
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["changes_per_sec"], 50.0, "{plan}");
    assert!(plan["shards"].as_u64().unwrap() >= 1, "{plan}");
    assert!(
        plan["rates_source"]
            .as_str()
            .unwrap()
            .contains("--rate 300"),
        "{plan}"
    );
}
