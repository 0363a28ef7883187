//! Prometheus metrics of ingest and maintenance (`tributary_lake_*`),
//! rendered as text.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{LazyLock, Mutex};

#[derive(Default, Clone, Copy)]
struct TableCounters {
    messages: u64,
    bronze_rows: u64,
    silver_changes: u64,
    dead_letters: u64,
    batches: u64,
    batch_seconds: f64,
    last_commit_unix: f64,
}

/// A metric: name, type, help text and how to read it from the counters.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&TableCounters) -> f64,
);

static STATE: LazyLock<Mutex<BTreeMap<String, TableCounters>>> = LazyLock::new(Mutex::default);

/// Schema changes per (table, change kind).
static SCHEMA_CHANGES: LazyLock<Mutex<BTreeMap<(String, String), u64>>> =
    LazyLock::new(Mutex::default);

/// Upper bounds (seconds) of the end-to-end freshness histogram: fine below
/// a few seconds, where the goal is.
const FRESHNESS_BUCKETS: [f64; 19] = [
    0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0,
    120.0, 300.0,
];

#[derive(Default)]
struct Histogram {
    /// Per bucket of [`FRESHNESS_BUCKETS`], not cumulative; the last is +Inf.
    counts: [u64; FRESHNESS_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: impl IntoIterator<Item = f64>) {
        for s in seconds {
            let s = s.max(0.0);
            let i = FRESHNESS_BUCKETS
                .iter()
                .position(|b| s <= *b)
                .unwrap_or(FRESHNESS_BUCKETS.len());
            self.counts[i] += 1;
            self.sum += s;
            self.count += 1;
        }
    }

    fn render(&self, name: &str, out: &mut String) {
        let mut cumulative = 0;
        for (i, b) in FRESHNESS_BUCKETS.iter().enumerate() {
            cumulative += self.counts[i];
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

/// Postgres commit to visible in silver, per streamed change.
static FRESHNESS: LazyLock<Mutex<Histogram>> = LazyLock::new(Mutex::default);

/// Observes the end-to-end freshness of changes just committed to silver.
pub(crate) fn freshness(seconds: impl IntoIterator<Item = f64>) {
    FRESHNESS.lock().expect("metrics lock").observe(seconds);
}

/// Tables whose ingest stopped on a change the lake cannot apply.
static STOPPED: LazyLock<Mutex<BTreeMap<String, bool>>> = LazyLock::new(Mutex::default);

/// Tables whose ingest lease this process holds (1) or waits for (0).
static LEASES: LazyLock<Mutex<BTreeMap<String, bool>>> = LazyLock::new(Mutex::default);

/// Notes whether this process owns a table's lease.
pub(crate) fn lease_owned(table: &str, owned: bool) {
    LEASES
        .lock()
        .expect("metrics lock")
        .insert(table.to_string(), owned);
}

/// Maintenance per (layer, table, op): runs, retries after lost races, failures.
type MaintenanceKey = (String, String, &'static str);
static MAINTENANCE: LazyLock<Mutex<BTreeMap<MaintenanceKey, [u64; 3]>>> =
    LazyLock::new(Mutex::default);

/// Data files per (layer, table), as last seen by maintenance.
static TABLE_FILES: LazyLock<Mutex<BTreeMap<(String, String), usize>>> =
    LazyLock::new(Mutex::default);

fn maintenance_add(name: &str, op: &'static str, i: usize) {
    let (layer, table) = name.split_once('.').unwrap_or(("", name));
    let mut m = MAINTENANCE.lock().expect("metrics lock");
    m.entry((layer.to_string(), table.to_string(), op))
        .or_default()[i] += 1;
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
    TABLE_FILES
        .lock()
        .expect("metrics lock")
        .insert((layer.to_string(), table.to_string()), files);
}

/// Counts a schema change seen at the source or applied to silver.
pub(crate) fn schema_change(table: &str, change: &str) {
    let mut s = SCHEMA_CHANGES.lock().expect("metrics lock");
    *s.entry((table.to_string(), change.to_string()))
        .or_default() += 1;
}

/// Marks a table as stopped (`true`) or flowing.
pub(crate) fn table_stopped(table: &str, stopped: bool) {
    STOPPED
        .lock()
        .expect("metrics lock")
        .insert(table.to_string(), stopped);
}

pub(crate) fn batch(
    table: &str,
    messages: usize,
    bronze: usize,
    silver: usize,
    dead: usize,
    seconds: f64,
) {
    let mut s = STATE.lock().expect("metrics lock");
    let c = s.entry(table.to_string()).or_default();
    c.messages += messages as u64;
    c.bronze_rows += bronze as u64;
    c.silver_changes += silver as u64;
    c.dead_letters += dead as u64;
    c.batches += 1;
    c.batch_seconds += seconds;
    c.last_commit_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
}

/// Ingest metrics in the Prometheus text format.
pub fn render() -> String {
    let s = STATE.lock().expect("metrics lock");
    let mut out = String::new();
    let series: [Series; 7] = [
        (
            "tributary_lake_messages_total",
            "counter",
            "Kafka messages consumed.",
            |c| c.messages as f64,
        ),
        (
            "tributary_lake_bronze_rows_total",
            "counter",
            "Change events appended to bronze.",
            |c| c.bronze_rows as f64,
        ),
        (
            "tributary_lake_silver_changes_total",
            "counter",
            "Change events merged into silver.",
            |c| c.silver_changes as f64,
        ),
        (
            "tributary_lake_dead_letters_total",
            "counter",
            "Messages sent to the dead-letter table.",
            |c| c.dead_letters as f64,
        ),
        (
            "tributary_lake_batches_total",
            "counter",
            "Batches committed.",
            |c| c.batches as f64,
        ),
        (
            "tributary_lake_batch_seconds_total",
            "counter",
            "Time spent committing batches.",
            |c| c.batch_seconds,
        ),
        (
            "tributary_lake_last_commit_timestamp_seconds",
            "gauge",
            "Unix time of the last commit.",
            |c| c.last_commit_unix,
        ),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (table, c) in s.iter() {
            let _ = writeln!(out, "{name}{{table=\"{table}\"}} {}", get(c));
        }
    }
    drop(s);
    let name = "tributary_lake_schema_changes_total";
    let _ = writeln!(
        out,
        "# HELP {name} Schema changes seen at the source or applied to silver.\n# TYPE {name} counter"
    );
    for ((table, change), n) in SCHEMA_CHANGES.lock().expect("metrics lock").iter() {
        let _ = writeln!(out, "{name}{{table=\"{table}\",change=\"{change}\"}} {n}");
    }
    let name = "tributary_lake_table_stopped";
    let _ = writeln!(
        out,
        "# HELP {name} 1 when ingest of the table stopped on a change it cannot apply.\n# TYPE {name} gauge"
    );
    for (table, stopped) in STOPPED.lock().expect("metrics lock").iter() {
        let _ = writeln!(out, "{name}{{table=\"{table}\"}} {}", u8::from(*stopped));
    }
    let name = "tributary_lake_lease_owned";
    let _ = writeln!(
        out,
        "# HELP {name} 1 when this ingester holds the table's single-writer lease, 0 on standby.\n# TYPE {name} gauge"
    );
    for (table, owned) in LEASES.lock().expect("metrics lock").iter() {
        let _ = writeln!(out, "{name}{{table=\"{table}\"}} {}", u8::from(*owned));
    }
    let maintenance = MAINTENANCE.lock().expect("metrics lock");
    for (i, name, help) in [
        (
            0,
            "tributary_lake_maintenance_runs_total",
            "Maintenance operations (optimize, vacuum, checkpoint) done.",
        ),
        (
            1,
            "tributary_lake_maintenance_retries_total",
            "Maintenance commits redone after losing a race with another writer.",
        ),
        (
            2,
            "tributary_lake_maintenance_failures_total",
            "Maintenance operations that failed.",
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for ((layer, table, op), n) in maintenance.iter() {
            let _ = writeln!(
                out,
                "{name}{{layer=\"{layer}\",table=\"{table}\",op=\"{op}\"}} {}",
                n[i]
            );
        }
    }
    drop(maintenance);
    let name = "tributary_lake_table_files";
    let _ = writeln!(
        out,
        "# HELP {name} Data files in the table, as maintenance last saw it.\n# TYPE {name} gauge"
    );
    for ((layer, table), n) in TABLE_FILES.lock().expect("metrics lock").iter() {
        let _ = writeln!(out, "{name}{{layer=\"{layer}\",table=\"{table}\"}} {n}");
    }
    let name = "tributary_lake_silver_freshness_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} How far behind its sources silver is: now minus the instant up to which it holds every source change (from CDC watermarks, else the newest commit applied).\n# TYPE {name} gauge"
    );
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    for table in crate::freshness::known_tables() {
        if let Some(rec) = crate::freshness::complete_up_to(&table) {
            let secs = (now_us - rec.complete_up_to_us).max(0) as f64 / 1e6;
            let _ = writeln!(out, "{name}{{table=\"{table}\"}} {secs}");
        }
    }
    let name = "tributary_lake_freshness_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Postgres commit to visible in silver, per streamed change.\n# TYPE {name} histogram"
    );
    FRESHNESS
        .lock()
        .expect("metrics lock")
        .render(name, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_per_table_series() {
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
        schema_change("metrics_test", "add_column");
        table_stopped("metrics_test", true);
        let text = render();
        assert!(
            text.contains(
                "tributary_lake_schema_changes_total{table=\"metrics_test\",change=\"add_column\"} 1"
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
            text.contains("tributary_lake_maintenance_runs_total{layer=\"silver\",table=\"metrics_test\",op=\"optimize\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tributary_lake_maintenance_retries_total{layer=\"silver\",table=\"metrics_test\",op=\"optimize\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tributary_lake_table_files{layer=\"silver\",table=\"metrics_test\"} 3"),
            "{text}"
        );
        // The process-wide histogram takes observations of other tests.
        let mut h = Histogram::default();
        h.observe([0.07, 0.3, 1000.0]);
        let mut text = String::new();
        h.render("f", &mut text);
        assert!(text.contains("f_bucket{le=\"0.05\"} 0\n"), "{text}");
        assert!(text.contains("f_bucket{le=\"0.1\"} 1\n"), "{text}");
        assert!(text.contains("f_bucket{le=\"0.5\"} 2\n"), "{text}");
        assert!(text.contains("f_bucket{le=\"300\"} 2\n"), "{text}");
        assert!(text.contains("f_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("f_count 3"), "{text}");
    }
}
