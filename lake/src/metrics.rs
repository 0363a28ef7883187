//! Prometheus metrics of ingest and maintenance (`tributary_lake_*`), in the
//! process's default registry through [`tributary_metrics`]; a process
//! serves them with `tributary_metrics::serve` or renders them with
//! `tributary_metrics::render`.
//!
//! Labels: `table` (a source table), `layer` (`bronze`, `silver`), `op`
//! (`optimize`, `vacuum`, `checkpoint`) and `change` (a schema change kind):
//! all from small closed sets.

use std::sync::LazyLock;

use tributary_metrics::{
    Collector, CounterVec, Desc, GaugeVec, Histogram, IntCounterVec, IntGaugeVec, MetricFamily,
    Opts, counter_vec, float_counter_vec, gauge_vec, histogram, int_gauge_vec, register_collector,
};

pub const MESSAGES_TOTAL: &str = "tributary_lake_messages_total";
pub const BRONZE_ROWS_TOTAL: &str = "tributary_lake_bronze_rows_total";
pub const SILVER_CHANGES_TOTAL: &str = "tributary_lake_silver_changes_total";
pub const DEAD_LETTERS_TOTAL: &str = "tributary_lake_dead_letters_total";
pub const BATCHES_TOTAL: &str = "tributary_lake_batches_total";
pub const BATCH_SECONDS_TOTAL: &str = "tributary_lake_batch_seconds_total";
pub const LAST_COMMIT_TIMESTAMP_SECONDS: &str = "tributary_lake_last_commit_timestamp_seconds";
pub const SCHEMA_CHANGES_TOTAL: &str = "tributary_lake_schema_changes_total";
pub const TABLE_STOPPED: &str = "tributary_lake_table_stopped";
pub const LEASE_OWNED: &str = "tributary_lake_lease_owned";
pub const RETENTION_GAP_OFFSETS_TOTAL: &str = "tributary_lake_retention_gap_offsets_total";
pub const CONSUMER_LAG_MESSAGES: &str = "tributary_lake_consumer_lag_messages";
pub const MAINTENANCE_RUNS_TOTAL: &str = "tributary_lake_maintenance_runs_total";
pub const MAINTENANCE_RETRIES_TOTAL: &str = "tributary_lake_maintenance_retries_total";
pub const MAINTENANCE_FAILURES_TOTAL: &str = "tributary_lake_maintenance_failures_total";
pub const TABLE_FILES: &str = "tributary_lake_table_files";
pub const SILVER_FRESHNESS_SECONDS: &str = "tributary_lake_silver_freshness_seconds";
pub const FRESHNESS_SECONDS: &str = "tributary_lake_freshness_seconds";

/// Upper bounds (seconds) of the end-to-end freshness histogram: fine below
/// a few seconds, where the goal is.
pub const FRESHNESS_BUCKETS: [f64; 19] = [
    0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0,
    120.0, 300.0,
];

/// Per-table batch counters.
struct Batches {
    messages: IntCounterVec,
    bronze_rows: IntCounterVec,
    silver_changes: IntCounterVec,
    dead_letters: IntCounterVec,
    batches: IntCounterVec,
    seconds: CounterVec,
    last_commit: GaugeVec,
}

static BATCHES: LazyLock<Batches> = LazyLock::new(|| Batches {
    messages: counter_vec(MESSAGES_TOTAL, "Kafka messages consumed.", &["table"]),
    bronze_rows: counter_vec(
        BRONZE_ROWS_TOTAL,
        "Change events appended to bronze.",
        &["table"],
    ),
    silver_changes: counter_vec(
        SILVER_CHANGES_TOTAL,
        "Change events merged into silver.",
        &["table"],
    ),
    dead_letters: counter_vec(
        DEAD_LETTERS_TOTAL,
        "Messages sent to the dead-letter table.",
        &["table"],
    ),
    batches: counter_vec(BATCHES_TOTAL, "Batches committed.", &["table"]),
    seconds: float_counter_vec(
        BATCH_SECONDS_TOTAL,
        "Time spent committing batches.",
        &["table"],
    ),
    last_commit: gauge_vec(
        LAST_COMMIT_TIMESTAMP_SECONDS,
        "Unix time of the last commit.",
        &["table"],
    ),
});

static SCHEMA_CHANGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        SCHEMA_CHANGES_TOTAL,
        "Schema changes seen at the source or applied to silver.",
        &["table", "change"],
    )
});

static STOPPED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    int_gauge_vec(
        TABLE_STOPPED,
        "1 when ingest of the table stopped on a change it cannot apply.",
        &["table"],
    )
});

static RETENTION_GAPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        RETENTION_GAP_OFFSETS_TOTAL,
        "Offsets ingest needed that the broker's retention had deleted (see ingest::gaps).",
        &["table"],
    )
});

static CONSUMER_LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    int_gauge_vec(
        CONSUMER_LAG_MESSAGES,
        "Change events in the table's topic that silver has not applied: the end offsets read at the newest CDC watermark minus silver's offsets, over the partitions.",
        &["table"],
    )
});

static LEASES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    int_gauge_vec(
        LEASE_OWNED,
        "1 when this ingester holds the table's single-writer lease, 0 on standby.",
        &["table"],
    )
});

/// Maintenance per (layer, table, op): runs, retries after lost races,
/// failures.
static MAINTENANCE: LazyLock<[IntCounterVec; 3]> = LazyLock::new(|| {
    let labels = &["layer", "table", "op"];
    [
        counter_vec(
            MAINTENANCE_RUNS_TOTAL,
            "Maintenance operations (optimize, vacuum, checkpoint) done.",
            labels,
        ),
        counter_vec(
            MAINTENANCE_RETRIES_TOTAL,
            "Maintenance commits redone after losing a race with another writer.",
            labels,
        ),
        counter_vec(
            MAINTENANCE_FAILURES_TOTAL,
            "Maintenance operations that failed.",
            labels,
        ),
    ]
});

static FILES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    int_gauge_vec(
        TABLE_FILES,
        "Data files in the table, as maintenance last saw it.",
        &["layer", "table"],
    )
});

/// Postgres commit to visible in silver, per streamed change.
static FRESHNESS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        FRESHNESS_SECONDS,
        "Postgres commit to visible in silver, per streamed change.",
        &FRESHNESS_BUCKETS,
    )
});

static SILVER_FRESHNESS: LazyLock<()> = LazyLock::new(|| {
    let c = SilverFreshness::new();
    register_collector(SILVER_FRESHNESS_SECONDS, Box::new(c));
});

/// Registers every lake metric, so a scrape shows the freshness histogram
/// (and each family as soon as it has a series) from the ingester's start.
pub(crate) fn register() {
    LazyLock::force(&BATCHES);
    LazyLock::force(&SCHEMA_CHANGES);
    LazyLock::force(&STOPPED);
    LazyLock::force(&RETENTION_GAPS);
    LazyLock::force(&LEASES);
    LazyLock::force(&MAINTENANCE);
    LazyLock::force(&FILES);
    LazyLock::force(&FRESHNESS);
    LazyLock::force(&SILVER_FRESHNESS);
}

/// `tributary_lake_silver_freshness_seconds{table}`, computed at scrape time
/// from the instant each table is complete up to, so it grows while a table
/// falls behind even when nothing is committed.
struct SilverFreshness {
    template: GaugeVec,
}

impl SilverFreshness {
    const HELP: &'static str = "How far behind its sources silver is: now minus the instant up to which it holds every source change (from CDC watermarks, else the newest commit applied).";

    fn new() -> Self {
        SilverFreshness {
            template: Self::gauges(),
        }
    }

    fn gauges() -> GaugeVec {
        GaugeVec::new(Opts::new(SILVER_FRESHNESS_SECONDS, Self::HELP), &["table"])
            .unwrap_or_else(|e| panic!("metric {SILVER_FRESHNESS_SECONDS}: {e}"))
    }
}

impl Collector for SilverFreshness {
    fn desc(&self) -> Vec<&Desc> {
        self.template.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let gauges = Self::gauges();
        let now_us = crate::ingest::now_us();
        for table in crate::freshness::known_tables() {
            if let Some(rec) = crate::freshness::complete_up_to(&table) {
                let secs = (now_us - rec.complete_up_to_us).max(0) as f64 / 1e6;
                gauges.with_label_values(&[table.as_str()]).set(secs);
            }
        }
        gauges.collect()
    }
}

/// Observes the end-to-end freshness of changes just committed to silver.
pub(crate) fn freshness(seconds: impl IntoIterator<Item = f64>) {
    for s in seconds {
        FRESHNESS.observe(s.max(0.0));
    }
}

/// Notes whether this process owns a table's lease.
pub(crate) fn lease_owned(table: &str, owned: bool) {
    LEASES.with_label_values(&[table]).set(i64::from(owned));
}

/// The three maintenance counters of `layer.table` and `op`; all three
/// series exist once any does.
fn maintenance_add(name: &str, op: &'static str, i: usize) {
    let (layer, table) = name.split_once('.').unwrap_or(("", name));
    for (j, c) in MAINTENANCE.iter().enumerate() {
        let series = c.with_label_values(&[layer, table, op]);
        if i == j {
            series.inc();
        }
    }
}

/// Counts a finished maintenance operation on `layer.table`.
pub(crate) fn maintenance_run(name: &str, op: &'static str) {
    maintenance_add(name, op, 0);
}

/// Counts a maintenance commit redone after it lost a race.
pub(crate) fn maintenance_retry(name: &str, op: &'static str) {
    maintenance_add(name, op, 1);
}

/// Counts a maintenance operation that failed.
pub(crate) fn maintenance_failure(name: &str, op: &'static str) {
    maintenance_add(name, op, 2);
}

/// Records a table's number of data files.
pub(crate) fn table_files(layer: &str, table: &str, files: usize) {
    FILES
        .with_label_values(&[layer, table])
        .set(i64::try_from(files).unwrap_or(i64::MAX));
}

/// Counts a schema change seen at the source or applied to silver.
pub(crate) fn schema_change(table: &str, change: &str) {
    SCHEMA_CHANGES.with_label_values(&[table, change]).inc();
}

/// Marks a table as stopped (`true`) or flowing.
pub(crate) fn consumer_lag(table: &str, messages: i64) {
    CONSUMER_LAG.with_label_values(&[table]).set(messages);
}

/// Counts offsets of `table` lost to the broker's retention.
pub(crate) fn retention_gap(table: &str, offsets: i64) {
    RETENTION_GAPS
        .with_label_values(&[table])
        .inc_by(u64::try_from(offsets).unwrap_or(0));
}

pub(crate) fn table_stopped(table: &str, stopped: bool) {
    STOPPED.with_label_values(&[table]).set(i64::from(stopped));
}

/// Counts one committed batch of `table`.
pub(crate) fn batch(
    table: &str,
    messages: usize,
    bronze: usize,
    silver: usize,
    dead: usize,
    seconds: f64,
) {
    let b = &*BATCHES;
    let labels = &[table];
    b.messages.with_label_values(labels).inc_by(messages as u64);
    b.bronze_rows
        .with_label_values(labels)
        .inc_by(bronze as u64);
    b.silver_changes
        .with_label_values(labels)
        .inc_by(silver as u64);
    b.dead_letters.with_label_values(labels).inc_by(dead as u64);
    b.batches.with_label_values(labels).inc();
    b.seconds.with_label_values(labels).inc_by(seconds.max(0.0));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    b.last_commit.with_label_values(labels).set(now);
}

#[cfg(test)]
mod tests {
    use tributary_metrics::{HistogramOpts, render, render_families};

    use super::*;

    #[test]
    fn renders_per_table_series() {
        register();
        batch("metrics_test", 10, 8, 7, 2, 0.5);
        batch("metrics_test", 5, 5, 5, 0, 0.25);
        let text = render();
        assert!(
            text.contains("tributary_lake_messages_total{table=\"metrics_test\"} 15"),
            "{text}"
        );
        assert!(
            text.contains("tributary_lake_dead_letters_total{table=\"metrics_test\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("tributary_lake_batch_seconds_total{table=\"metrics_test\"} 0.75"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE tributary_lake_batch_seconds_total counter"),
            "{text}"
        );
        schema_change("metrics_test", "add_column");
        table_stopped("metrics_test", true);
        let text = render();
        // The prometheus crate writes labels sorted by name.
        assert!(
            text.contains(
                "tributary_lake_schema_changes_total{change=\"add_column\",table=\"metrics_test\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("tributary_lake_table_stopped{table=\"metrics_test\"} 1"),
            "{text}"
        );
        maintenance_run("silver.metrics_test", "optimize");
        maintenance_retry("silver.metrics_test", "optimize");
        table_files("silver", "metrics_test", 3);
        let text = render();
        assert!(
            text.contains("tributary_lake_maintenance_runs_total{layer=\"silver\",op=\"optimize\",table=\"metrics_test\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tributary_lake_maintenance_retries_total{layer=\"silver\",op=\"optimize\",table=\"metrics_test\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tributary_lake_maintenance_failures_total{layer=\"silver\",op=\"optimize\",table=\"metrics_test\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("tributary_lake_table_files{layer=\"silver\",table=\"metrics_test\"} 3"),
            "{text}"
        );
        // Registered from the start, before any observation.
        assert!(
            text.contains("# TYPE tributary_lake_freshness_seconds histogram"),
            "{text}"
        );
        // The process-wide histogram takes observations of other tests: the
        // bucket text `bench lake` parses, on a histogram of its own.
        let h =
            Histogram::with_opts(HistogramOpts::new("f", "f").buckets(FRESHNESS_BUCKETS.to_vec()))
                .unwrap();
        for s in [0.07, 0.3, 1000.0] {
            h.observe(s);
        }
        let text = render_families(&h.collect());
        assert!(text.contains("f_bucket{le=\"0.05\"} 0\n"), "{text}");
        assert!(text.contains("f_bucket{le=\"0.1\"} 1\n"), "{text}");
        assert!(text.contains("f_bucket{le=\"0.5\"} 2\n"), "{text}");
        assert!(text.contains("f_bucket{le=\"1\"} 2\n"), "{text}");
        assert!(text.contains("f_bucket{le=\"300\"} 2\n"), "{text}");
        assert!(text.contains("f_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("f_count 3"), "{text}");
    }

    #[test]
    fn silver_freshness_is_computed_at_scrape_time() {
        register();
        let now = crate::ingest::now_us();
        crate::freshness::committed(
            "metrics_fresh",
            &[(0, 1)].into_iter().collect(),
            Some(now - 5_000_000),
            None,
        );
        let value = || -> f64 {
            let text = render();
            let prefix = "tributary_lake_silver_freshness_seconds{table=\"metrics_fresh\"} ";
            text.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("{text}"))
                .parse()
                .unwrap()
        };
        let first = value();
        assert!((5.0..60.0).contains(&first), "{first}");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(value() > first, "the gauge grows between scrapes");
    }
}
