//! Prometheus metrics of the reader (`tributary_cdc_*`), rendered as text.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{LazyLock, Mutex};

use tributary_model::lsn::Lsn;

#[derive(Default)]
struct State {
    /// (table, op) -> events published.
    events: BTreeMap<(String, &'static str), u64>,
    /// table -> payload bytes published.
    bytes: BTreeMap<String, u64>,
    /// source ("db.shard") -> (received, confirmed) LSN.
    positions: BTreeMap<String, (Lsn, Lsn)>,
    /// source -> snapshot rows copied.
    snapshot_rows: BTreeMap<String, u64>,
}

static STATE: LazyLock<Mutex<State>> = LazyLock::new(Mutex::default);

pub(crate) fn event(table: &str, op: &'static str, bytes: usize) {
    let mut s = STATE.lock().expect("metrics lock");
    *s.events.entry((table.to_string(), op)).or_default() += 1;
    *s.bytes.entry(table.to_string()).or_default() += bytes as u64;
}

pub(crate) fn position(source: &str, received: Lsn, confirmed: Lsn) {
    STATE
        .lock()
        .expect("metrics lock")
        .positions
        .insert(source.to_string(), (received, confirmed));
}

pub(crate) fn snapshot_rows(source: &str, rows: u64) {
    STATE
        .lock()
        .expect("metrics lock")
        .snapshot_rows
        .insert(source.to_string(), rows);
}

/// The reader's metrics in the Prometheus text format.
pub fn render() -> String {
    let s = STATE.lock().expect("metrics lock");
    let mut out = String::new();
    out.push_str("# HELP tributary_cdc_events_total Change events published to Kafka.\n# TYPE tributary_cdc_events_total counter\n");
    for ((table, op), n) in &s.events {
        let _ = writeln!(
            out,
            "tributary_cdc_events_total{{table=\"{table}\",op=\"{op}\"}} {n}"
        );
    }
    out.push_str("# HELP tributary_cdc_bytes_total Payload bytes published to Kafka.\n# TYPE tributary_cdc_bytes_total counter\n");
    for (table, n) in &s.bytes {
        let _ = writeln!(out, "tributary_cdc_bytes_total{{table=\"{table}\"}} {n}");
    }
    out.push_str("# HELP tributary_cdc_lag_bytes WAL received but not yet confirmed (Kafka-acknowledged).\n# TYPE tributary_cdc_lag_bytes gauge\n");
    for (source, (received, confirmed)) in &s.positions {
        let _ = writeln!(
            out,
            "tributary_cdc_lag_bytes{{source=\"{source}\"}} {}",
            received.0.saturating_sub(confirmed.0)
        );
    }
    out.push_str("# HELP tributary_cdc_confirmed_lsn The slot position confirmed to the server.\n# TYPE tributary_cdc_confirmed_lsn gauge\n");
    for (source, (_, confirmed)) in &s.positions {
        let _ = writeln!(
            out,
            "tributary_cdc_confirmed_lsn{{source=\"{source}\"}} {}",
            confirmed.0
        );
    }
    out.push_str("# HELP tributary_cdc_snapshot_rows Rows copied by the last initial snapshot.\n# TYPE tributary_cdc_snapshot_rows gauge\n");
    for (source, n) in &s.snapshot_rows {
        let _ = writeln!(
            out,
            "tributary_cdc_snapshot_rows{{source=\"{source}\"}} {n}"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_lag() {
        event("metrics_test_table", "c", 100);
        event("metrics_test_table", "c", 50);
        position("metrics_test.0", Lsn(1000), Lsn(400));
        let text = render();
        assert!(
            text.contains("tributary_cdc_events_total{table=\"metrics_test_table\",op=\"c\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("tributary_cdc_bytes_total{table=\"metrics_test_table\"} 150"),
            "{text}"
        );
        assert!(
            text.contains("tributary_cdc_lag_bytes{source=\"metrics_test.0\"} 600"),
            "{text}"
        );
    }
}
