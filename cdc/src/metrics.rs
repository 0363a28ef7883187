//! Prometheus metrics of the reader (`tributary_cdc_*`), rendered as text.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{LazyLock, Mutex};

use tributary_model::lsn::Lsn;

#[derive(Default)]
struct State {
    /// table -> op -> events published.
    events: BTreeMap<String, BTreeMap<&'static str, u64>>,
    /// table -> payload bytes published.
    bytes: BTreeMap<String, u64>,
    /// source ("db.shard") -> (received, confirmed) LSN.
    positions: BTreeMap<String, (Lsn, Lsn)>,
    /// source -> snapshot rows copied.
    snapshot_rows: BTreeMap<String, u64>,
    /// source -> (chunks done, chunks planned) of the running snapshot.
    snapshot_chunks: BTreeMap<String, (u64, u64)>,
    /// source -> seconds the newest durable commit is behind now.
    lag_seconds: BTreeMap<String, f64>,
    /// Kafka delivery latency: (count, sum of seconds) and buckets.
    delivery: Histogram,
    /// (source, table) -> schema changes seen.
    schema_changes: BTreeMap<(String, String), u64>,
    /// source -> times its slot was found lost and the database re-snapshotted.
    slots_lost: BTreeMap<String, u64>,
}

/// A Prometheus histogram with fixed buckets (seconds).
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        const BOUNDS: &[f64] = &[
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        Histogram {
            bounds: BOUNDS,
            counts: vec![0; BOUNDS.len()],
            sum: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

static STATE: LazyLock<Mutex<State>> = LazyLock::new(Mutex::default);

pub(crate) fn event(table: &str, op: &'static str, bytes: usize) {
    let mut s = STATE.lock().expect("metrics lock");
    // Called per event: allocate the keys only the first time.
    match s.events.get_mut(table) {
        Some(ops) => *ops.entry(op).or_default() += 1,
        None => {
            s.events
                .insert(table.to_string(), BTreeMap::from([(op, 1)]));
        }
    }
    match s.bytes.get_mut(table) {
        Some(n) => *n += bytes as u64,
        None => {
            s.bytes.insert(table.to_string(), bytes as u64);
        }
    }
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

pub(crate) fn snapshot_started(source: &str, chunks: usize) {
    STATE
        .lock()
        .expect("metrics lock")
        .snapshot_chunks
        .insert(source.to_string(), (0, chunks as u64));
}

pub(crate) fn snapshot_chunk_done(source: &str) {
    if let Some(c) = STATE
        .lock()
        .expect("metrics lock")
        .snapshot_chunks
        .get_mut(source)
    {
        c.0 += 1;
    }
}

pub(crate) fn snapshot_chunks_done(source: &str) -> u64 {
    STATE
        .lock()
        .expect("metrics lock")
        .snapshot_chunks
        .get(source)
        .map_or(0, |c| c.0)
}

pub(crate) fn lag_seconds(source: &str, secs: f64) {
    STATE
        .lock()
        .expect("metrics lock")
        .lag_seconds
        .insert(source.to_string(), secs);
}

pub(crate) fn delivery_latency(secs: f64) {
    STATE.lock().expect("metrics lock").delivery.observe(secs);
}

pub(crate) fn schema_change(source: &str, table: &str) {
    *STATE
        .lock()
        .expect("metrics lock")
        .schema_changes
        .entry((source.to_string(), table.to_string()))
        .or_default() += 1;
}

pub(crate) fn slot_lost(source: &str) {
    *STATE
        .lock()
        .expect("metrics lock")
        .slots_lost
        .entry(source.to_string())
        .or_default() += 1;
}

/// The reader's metrics in the Prometheus text format.
pub fn render() -> String {
    let s = STATE.lock().expect("metrics lock");
    let mut out = String::new();
    out.push_str("# HELP tributary_cdc_events_total Change events published to Kafka.\n# TYPE tributary_cdc_events_total counter\n");
    for (table, op, n) in s
        .events
        .iter()
        .flat_map(|(t, ops)| ops.iter().map(move |(op, n)| (t, op, n)))
    {
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
    out.push_str("# HELP tributary_cdc_snapshot_rows Rows copied by the current or last snapshot.\n# TYPE tributary_cdc_snapshot_rows gauge\n");
    for (source, n) in &s.snapshot_rows {
        let _ = writeln!(
            out,
            "tributary_cdc_snapshot_rows{{source=\"{source}\"}} {n}"
        );
    }
    out.push_str("# HELP tributary_cdc_snapshot_chunks Chunks of the current or last snapshot, by state.\n# TYPE tributary_cdc_snapshot_chunks gauge\n");
    for (source, (done, planned)) in &s.snapshot_chunks {
        let _ = writeln!(
            out,
            "tributary_cdc_snapshot_chunks{{source=\"{source}\",state=\"done\"}} {done}\ntributary_cdc_snapshot_chunks{{source=\"{source}\",state=\"planned\"}} {planned}"
        );
    }
    out.push_str("# HELP tributary_cdc_lag_seconds How far the newest Kafka-acknowledged commit is behind the source's clock (0 when caught up).\n# TYPE tributary_cdc_lag_seconds gauge\n");
    for (source, secs) in &s.lag_seconds {
        let _ = writeln!(
            out,
            "tributary_cdc_lag_seconds{{source=\"{source}\"}} {secs:.3}"
        );
    }
    out.push_str("# HELP tributary_cdc_delivery_seconds Time from handing an event to the producer until the broker acknowledged it.\n# TYPE tributary_cdc_delivery_seconds histogram\n");
    let h = &s.delivery;
    for (b, c) in h.bounds.iter().zip(&h.counts) {
        let _ = writeln!(
            out,
            "tributary_cdc_delivery_seconds_bucket{{le=\"{b}\"}} {c}"
        );
    }
    let _ = writeln!(
        out,
        "tributary_cdc_delivery_seconds_bucket{{le=\"+Inf\"}} {}\ntributary_cdc_delivery_seconds_sum {}\ntributary_cdc_delivery_seconds_count {}",
        h.count, h.sum, h.count
    );
    out.push_str("# HELP tributary_cdc_schema_changes_total Table shape changes seen in the stream (Relation messages that differ).\n# TYPE tributary_cdc_schema_changes_total counter\n");
    for ((source, table), n) in &s.schema_changes {
        let _ = writeln!(
            out,
            "tributary_cdc_schema_changes_total{{source=\"{source}\",table=\"{table}\"}} {n}"
        );
    }
    out.push_str("# HELP tributary_cdc_slots_lost_total Times a slot was found dropped or invalidated and its database re-snapshotted.\n# TYPE tributary_cdc_slots_lost_total counter\n");
    for (source, n) in &s.slots_lost {
        let _ = writeln!(
            out,
            "tributary_cdc_slots_lost_total{{source=\"{source}\"}} {n}"
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
