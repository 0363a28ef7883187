//! The reader's Prometheus metrics (`tributary_cdc_*`), registered in the
//! process's registry through [`tributary_metrics`]; every process serves
//! them with the rest as `/metrics` (`tributary_metrics::render`).
//!
//! Labels: `table` (published table), `op` (`c`, `u`, `d`, `t`, `r`),
//! `source` (`<db>.<shard>`).

use std::sync::{LazyLock, OnceLock};

use tributary_metrics::{
    GaugeVec, Histogram, IntCounter, IntCounterVec, IntGaugeVec, LATENCY_BUCKETS, counter_vec,
    gauge_vec, histogram, int_gauge_vec,
};
use tributary_model::event::Op;
use tributary_model::lsn::Lsn;

/// Change events published, by `table` and `op`.
pub const EVENTS_TOTAL: &str = "tributary_cdc_events_total";
/// Payload bytes published, by `table`.
pub const BYTES_TOTAL: &str = "tributary_cdc_bytes_total";
/// WAL received but not yet confirmed (durable), by `source`.
pub const LAG_BYTES: &str = "tributary_cdc_lag_bytes";
/// The slot position confirmed to the server, by `source`.
pub const CONFIRMED_LSN: &str = "tributary_cdc_confirmed_lsn";
/// Rows copied by the current or last snapshot, by `source`.
pub const SNAPSHOT_ROWS: &str = "tributary_cdc_snapshot_rows";
/// Chunks of the current or last snapshot, by `source` and `state`
/// (`done`, `planned`).
pub const SNAPSHOT_CHUNKS: &str = "tributary_cdc_snapshot_chunks";
/// Seconds the oldest commit not yet durable is behind now, by `source`.
pub const LAG_SECONDS: &str = "tributary_cdc_lag_seconds";
/// Seconds from handing an event to the producer until the broker
/// acknowledged it (sampled).
pub const DELIVERY_SECONDS: &str = "tributary_cdc_delivery_seconds";
/// Table shape changes seen in the stream, by `source` and `table`.
pub const SCHEMA_CHANGES_TOTAL: &str = "tributary_cdc_schema_changes_total";
/// Slots found dropped or invalidated (database re-snapshotted), by `source`.
pub const SLOTS_LOST_TOTAL: &str = "tributary_cdc_slots_lost_total";
pub const FAILOVER_WAL_BEHIND_BYTES: &str = "tributary_cdc_failover_wal_behind_bytes_total";

static EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        EVENTS_TOTAL,
        "Change events published to Kafka.",
        &["table", "op"],
    )
});
static BYTES: LazyLock<IntCounterVec> =
    LazyLock::new(|| counter_vec(BYTES_TOTAL, "Payload bytes published to Kafka.", &["table"]));
static LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    int_gauge_vec(
        LAG_BYTES,
        "WAL received but not yet confirmed (Kafka-acknowledged).",
        &["source"],
    )
});
static CONFIRMED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    int_gauge_vec(
        CONFIRMED_LSN,
        "The slot position confirmed to the server.",
        &["source"],
    )
});
static ROWS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    int_gauge_vec(
        SNAPSHOT_ROWS,
        "Rows copied by the current or last snapshot.",
        &["source"],
    )
});
static CHUNKS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    int_gauge_vec(
        SNAPSHOT_CHUNKS,
        "Chunks of the current or last snapshot, by state.",
        &["source", "state"],
    )
});
static LAG_SECS: LazyLock<GaugeVec> = LazyLock::new(|| {
    gauge_vec(
        LAG_SECONDS,
        "How far the newest Kafka-acknowledged commit is behind the source's clock (0 when caught up).",
        &["source"],
    )
});
static DELIVERY: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        DELIVERY_SECONDS,
        "Time from handing an event to the producer until the broker acknowledged it.",
        LATENCY_BUCKETS,
    )
});
static SCHEMA_CHANGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        SCHEMA_CHANGES_TOTAL,
        "Table shape changes seen in the stream (Relation messages that differ).",
        &["source", "table"],
    )
});
static FAILOVER_WAL_BEHIND: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        FAILOVER_WAL_BEHIND_BYTES,
        "WAL the reader had streamed from an old primary that its promoted standby never had (lost by a failover), in bytes.",
        &["source"],
    )
});

static SLOTS_LOST: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        SLOTS_LOST_TOTAL,
        "Times a slot was found dropped or invalidated and its database re-snapshotted.",
        &["source"],
    )
});

/// One table's event and byte counters, resolved once instead of looking
/// the labels up per event (the reader's hot path). A series appears with
/// its first event.
#[derive(Debug)]
pub(crate) struct TableCounters {
    table: String,
    /// By op, in the order of [`op_index`].
    events: [OnceLock<IntCounter>; 5],
    bytes: OnceLock<IntCounter>,
}

fn op_index(op: Op) -> usize {
    match op {
        Op::Create => 0,
        Op::Update => 1,
        Op::Delete => 2,
        Op::Truncate => 3,
        Op::Read => 4,
    }
}

impl TableCounters {
    pub(crate) fn new(table: &str) -> TableCounters {
        TableCounters {
            table: table.to_string(),
            events: Default::default(),
            bytes: OnceLock::new(),
        }
    }

    /// One event of `bytes` payload bytes published.
    pub(crate) fn event(&self, op: Op, bytes: usize) {
        self.events[op_index(op)]
            .get_or_init(|| EVENTS.with_label_values(&[self.table.as_str(), op.as_str()]))
            .inc();
        self.bytes
            .get_or_init(|| BYTES.with_label_values(&[self.table.as_str()]))
            .inc_by(bytes as u64);
    }
}

pub(crate) fn position(source: &str, received: Lsn, confirmed: Lsn) {
    LAG.with_label_values(&[source])
        .set(received.0.saturating_sub(confirmed.0) as i64);
    CONFIRMED
        .with_label_values(&[source])
        .set(confirmed.0 as i64);
}

pub(crate) fn snapshot_rows(source: &str, rows: u64) {
    ROWS.with_label_values(&[source]).set(rows as i64);
}

pub(crate) fn snapshot_started(source: &str, chunks: usize) {
    CHUNKS.with_label_values(&[source, "done"]).set(0);
    CHUNKS
        .with_label_values(&[source, "planned"])
        .set(chunks as i64);
}

pub(crate) fn snapshot_chunk_done(source: &str) {
    CHUNKS.with_label_values(&[source, "done"]).inc();
}

pub(crate) fn snapshot_chunks_done(source: &str) -> u64 {
    CHUNKS.with_label_values(&[source, "done"]).get().max(0) as u64
}

pub(crate) fn lag_seconds(source: &str, secs: f64) {
    LAG_SECS.with_label_values(&[source]).set(secs);
}

pub(crate) fn delivery_latency(secs: f64) {
    DELIVERY.observe(secs);
}

pub(crate) fn schema_change(source: &str, table: &str) {
    SCHEMA_CHANGES.with_label_values(&[source, table]).inc();
}

pub(crate) fn failover_wal_behind(source: &str, bytes: u64) {
    FAILOVER_WAL_BEHIND
        .with_label_values(&[source])
        .inc_by(bytes);
}

pub(crate) fn slot_lost(source: &str) {
    SLOTS_LOST.with_label_values(&[source]).inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_lag_under_the_same_names() {
        let t = TableCounters::new("metrics_test_table");
        t.event(Op::Create, 100);
        t.event(Op::Create, 50);
        position("metrics_test.0", Lsn(1000), Lsn(400));
        slot_lost("metrics_test.0");
        let text = tributary_metrics::render();
        for line in [
            "tributary_cdc_events_total{op=\"c\",table=\"metrics_test_table\"} 2",
            "tributary_cdc_bytes_total{table=\"metrics_test_table\"} 150",
            "tributary_cdc_lag_bytes{source=\"metrics_test.0\"} 600",
            "tributary_cdc_confirmed_lsn{source=\"metrics_test.0\"} 400",
            "tributary_cdc_slots_lost_total{source=\"metrics_test.0\"} 1",
            "# TYPE tributary_cdc_events_total counter",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
