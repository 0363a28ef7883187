//! What a CDC bench run measured, the medians over the runs, and the
//! report as text.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::Sinks;
use crate::{Error, Result};

/// One run's measurements.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// WAL written by the load.
    pub wal_bytes: u64,
    pub recvlogical_secs: f64,
    /// Row changes in pg_recvlogical's output, when it went to a file.
    pub recvlogical_changes: Option<u64>,
    pub reader_secs: f64,
    /// Events the broker holds on the streaming topic.
    pub reader_events: u64,
    /// The process's peak RSS while the reader streamed.
    pub reader_peak_rss_kib: Option<u64>,
    /// CPU seconds while the reader streamed: this process (the reader),
    /// the broker, and the walsender that decoded for the reader.
    pub reader_cpu: Cpu,
    pub copy_secs: f64,
    pub copy_rows: u64,
    pub snapshot_secs: f64,
    /// Events the broker holds on the snapshot topic.
    pub snapshot_events: u64,
    /// The process's peak RSS while the reader took its snapshot.
    pub snapshot_peak_rss_kib: Option<u64>,
    /// CPU seconds while the reader took its snapshot (no walsender).
    pub snapshot_cpu: Cpu,
    /// The reader into the discard sink (no broker): streaming seconds.
    pub discard_secs: Option<f64>,
    /// Events it wrote (from its metrics; the discard sink keeps none).
    pub discard_events: Option<u64>,
    pub discard_cpu: Option<Cpu>,
    /// The same reader's snapshot of the loaded table.
    pub discard_snapshot_secs: Option<f64>,
    pub discard_snapshot_events: Option<u64>,
    pub discard_snapshot_cpu: Option<Cpu>,
}

/// CPU seconds spent by each process during a measurement.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Cpu {
    pub reader: f64,
    pub broker: f64,
    pub walsender: Option<f64>,
}

/// The broker alone: the reader's producer settings and event size.
#[derive(Clone, Debug, Serialize)]
pub struct BrokerCeiling {
    /// tansu's `--storage-engine`.
    pub storage: String,
    pub messages: u64,
    pub payload_bytes: usize,
    pub secs: f64,
    /// CPU seconds: `reader` is this process (the producer).
    pub cpu: Cpu,
}

/// Medians over the runs.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub recvlogical_changes_per_sec: f64,
    pub reader_changes_per_sec: f64,
    /// Reader rate / pg_recvlogical rate.
    pub streaming_ratio: f64,
    pub copy_rows_per_sec: f64,
    pub snapshot_rows_per_sec: f64,
    /// Reader snapshot rate / COPY rate.
    pub snapshot_ratio: f64,
    pub reader_peak_rss_kib: Option<u64>,
    /// The broker alone with the stack's storage (sqlite).
    pub broker_messages_per_sec: Option<f64>,
    /// The broker alone without storage (tansu's null engine).
    pub broker_null_messages_per_sec: Option<f64>,
    /// The reader into the discard sink, and its ratios to PostgreSQL's tools.
    pub discard_changes_per_sec: Option<f64>,
    pub discard_streaming_ratio: Option<f64>,
    pub discard_snapshot_rows_per_sec: Option<f64>,
    pub discard_snapshot_ratio: Option<f64>,
}

/// The whole benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub rows: u64,
    /// Row changes streamed per run.
    pub changes: u64,
    /// This process's RSS before the first reader run.
    pub baseline_rss_kib: Option<u64>,
    pub runs: Vec<RunResult>,
    /// The broker alone, with the stack's storage engine.
    pub broker: Option<BrokerCeiling>,
    /// The broker alone without storage: what tansu's protocol and the
    /// producer take before any storage cost.
    pub broker_null: Option<BrokerCeiling>,
    pub summary: Summary,
}

impl Cpu {
    pub(super) fn since(self, before: Cpu) -> Cpu {
        Cpu {
            reader: self.reader - before.reader,
            broker: self.broker - before.broker,
            walsender: None,
        }
    }
}

impl RunResult {
    /// Checks run `run`'s counts against the load of `changes` row changes
    /// over `rows` rows: the broker holds exactly one event per change
    /// streamed and per row snapshotted (when the Kafka sink ran), the
    /// discarding reader wrote as many (when it ran), COPY returned every
    /// row and pg_recvlogical's output (when counted) holds every change.
    /// The error names every count that is off.
    pub fn check_counts(&self, run: usize, sinks: Sinks, changes: u64, rows: u64) -> Result<()> {
        let mut wrong = Vec::new();
        let mut expect = |what: &str, got: Option<u64>, want: u64| {
            if let Some(got) = got
                && got != want
            {
                wrong.push(format!("{what} {got}, expected {want}"));
            }
        };
        if sinks.kafka {
            expect(
                "the broker holds streamed events:",
                Some(self.reader_events),
                changes,
            );
            expect(
                "the broker holds snapshot events:",
                Some(self.snapshot_events),
                rows,
            );
        }
        if sinks.discard {
            expect(
                "the discarding reader streamed",
                self.discard_events,
                changes,
            );
            expect(
                "the discarding reader snapshot",
                self.discard_snapshot_events,
                rows,
            );
        }
        expect("COPY returned rows:", Some(self.copy_rows), rows);
        expect(
            "pg_recvlogical's output holds changes:",
            self.recvlogical_changes,
            changes,
        );
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(Error::Count(format!("run {run}: {}", wrong.join("; "))))
        }
    }
}

/// The median of seconds (the mean of the middle two for an even count).
fn median_secs(secs: impl Iterator<Item = f64>) -> f64 {
    let times: Vec<Duration> = secs.map(Duration::from_secs_f64).collect();
    crate::ssb::median(&times).as_secs_f64()
}

/// Seconds for a progress line, or `-` when not measured.
pub(super) fn secs(s: Option<f64>) -> String {
    s.map(|s| format!("{s:.2}s")).unwrap_or_else(|| "-".into())
}

pub(super) fn summarize(
    rows: u64,
    changes: u64,
    runs: &[RunResult],
    broker: Option<&BrokerCeiling>,
    broker_null: Option<&BrokerCeiling>,
) -> Summary {
    let rate = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let m = |f: fn(&RunResult) -> f64| median_secs(runs.iter().map(f));
    let recv = rate(changes, m(|r| r.recvlogical_secs));
    let reader = rate(changes, m(|r| r.reader_secs));
    let copy = rate(rows, m(|r| r.copy_secs));
    let snapshot = rate(rows, m(|r| r.snapshot_secs));
    let some = |f: fn(&RunResult) -> Option<f64>| {
        let v: Vec<f64> = runs.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median_secs(v.into_iter()))
    };
    let discard = some(|r| r.discard_secs).map(|s| rate(changes, s));
    let discard_snapshot = some(|r| r.discard_snapshot_secs).map(|s| rate(rows, s));
    Summary {
        discard_changes_per_sec: discard,
        discard_streaming_ratio: discard.map(|d| ratio(d, recv)),
        discard_snapshot_rows_per_sec: discard_snapshot,
        discard_snapshot_ratio: discard_snapshot.map(|d| ratio(d, copy)),
        broker_null_messages_per_sec: broker_null.map(|b| rate(b.messages, b.secs)),
        recvlogical_changes_per_sec: recv,
        reader_changes_per_sec: reader,
        streaming_ratio: ratio(reader, recv),
        copy_rows_per_sec: copy,
        snapshot_rows_per_sec: snapshot,
        snapshot_ratio: ratio(snapshot, copy),
        reader_peak_rss_kib: runs
            .iter()
            .flat_map(|r| [r.reader_peak_rss_kib, r.snapshot_peak_rss_kib])
            .flatten()
            .max(),
        broker_messages_per_sec: broker.map(|b| rate(b.messages, b.secs)),
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.summary;
        let mib = |k: Option<u64>| {
            k.map(|k| format!("{:.0} MiB", k as f64 / 1024.0))
                .unwrap_or_else(|| "n/a".into())
        };
        writeln!(
            f,
            "CDC bench: {} rows inserted + {} updated per run ({} changes), {} run(s), medians",
            self.rows,
            self.rows / 2,
            self.changes,
            self.runs.len()
        )?;
        writeln!(f, "streaming")?;
        writeln!(
            f,
            "  pg_recvlogical (pgoutput, /dev/null) {:>10.0} changes/s",
            s.recvlogical_changes_per_sec
        )?;
        writeln!(
            f,
            "  tributary reader (into the broker)   {:>10.0} changes/s   {:.2}x",
            s.reader_changes_per_sec, s.streaming_ratio
        )?;
        if let (Some(rate), Some(ratio)) = (s.discard_changes_per_sec, s.discard_streaming_ratio) {
            writeln!(
                f,
                "  tributary reader (discard sink)      {rate:>10.0} changes/s   {ratio:.2}x   (the reader's own ceiling: no Kafka)"
            )?;
        }
        writeln!(f, "snapshot")?;
        writeln!(
            f,
            "  COPY … TO STDOUT                     {:>10.0} rows/s",
            s.copy_rows_per_sec
        )?;
        writeln!(
            f,
            "  tributary reader (into the broker)   {:>10.0} rows/s      {:.2}x",
            s.snapshot_rows_per_sec, s.snapshot_ratio
        )?;
        if let (Some(rate), Some(ratio)) =
            (s.discard_snapshot_rows_per_sec, s.discard_snapshot_ratio)
        {
            writeln!(
                f,
                "  tributary reader (discard sink)      {rate:>10.0} rows/s      {ratio:.2}x   (the reader's own ceiling: no Kafka)"
            )?;
        }
        for b in [&self.broker, &self.broker_null].into_iter().flatten() {
            let rate = if b.secs > 0.0 {
                b.messages as f64 / b.secs
            } else {
                0.0
            };
            writeln!(
                f,
                "broker alone ({}, {} B messages, the reader's producer settings)",
                b.storage, b.payload_bytes
            )?;
            writeln!(
                f,
                "                                       {rate:>10.0} messages/s   (CPU s: producer {:.1}, broker {:.1}; wall {:.1})",
                b.cpu.reader, b.cpu.broker, b.secs
            )?;
        }
        writeln!(
            f,
            "reader peak RSS {} (process baseline {})",
            mib(s.reader_peak_rss_kib),
            mib(self.baseline_rss_kib)
        )?;
        writeln!(
            f,
            "runs (seconds; CPU s of reader/broker/walsender; peak RSS):"
        )?;
        for (i, r) in self.runs.iter().enumerate() {
            let walsender = r
                .reader_cpu
                .walsender
                .map(|w| format!("{w:.1}"))
                .unwrap_or_else(|| "?".into());
            writeln!(
                f,
                "  {}: pg_recvlogical {:.2} | reader {:.2}, {} events, CPU {:.1}/{:.1}/{}, {} | COPY {:.2} | snapshot {:.2}, {} events, CPU {:.1}/{:.1}, {} | WAL {} MB",
                i + 1,
                r.recvlogical_secs,
                r.reader_secs,
                r.reader_events,
                r.reader_cpu.reader,
                r.reader_cpu.broker,
                walsender,
                mib(r.reader_peak_rss_kib),
                r.copy_secs,
                r.snapshot_secs,
                r.snapshot_events,
                r.snapshot_cpu.reader,
                r.snapshot_cpu.broker,
                mib(r.snapshot_peak_rss_kib),
                r.wal_bytes / 1_000_000
            )?;
            if let (Some(d), Some(c)) = (r.discard_secs, r.discard_cpu) {
                writeln!(
                    f,
                    "     discard sink: reader {d:.2}, CPU {:.1} | snapshot {}, CPU {}",
                    c.reader,
                    secs(r.discard_snapshot_secs),
                    r.discard_snapshot_cpu
                        .map(|c| format!("{:.1}", c.reader))
                        .unwrap_or_else(|| "?".into()),
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(changes: u64, rows: u64) -> RunResult {
        RunResult {
            wal_bytes: 1,
            recvlogical_secs: 1.0,
            recvlogical_changes: Some(changes),
            reader_secs: 1.0,
            reader_events: changes,
            reader_peak_rss_kib: None,
            reader_cpu: Cpu::default(),
            copy_secs: 1.0,
            copy_rows: rows,
            snapshot_secs: 1.0,
            snapshot_events: rows,
            snapshot_peak_rss_kib: None,
            snapshot_cpu: Cpu::default(),
            discard_secs: Some(1.0),
            discard_events: Some(changes),
            discard_cpu: None,
            discard_snapshot_secs: Some(1.0),
            discard_snapshot_events: Some(rows),
            discard_snapshot_cpu: None,
        }
    }

    const BOTH: Sinks = Sinks {
        kafka: true,
        discard: true,
    };

    #[test]
    fn a_run_with_exact_counts_passes() {
        run(3000, 2000).check_counts(1, BOTH, 3000, 2000).unwrap();
    }

    #[test]
    fn a_lost_or_doubled_event_fails_the_run_and_names_the_counts() {
        let mut r = run(3000, 2000);
        r.reader_events = 2999;
        r.snapshot_events = 2001;
        let err = r.check_counts(2, BOTH, 3000, 2000).unwrap_err().to_string();
        assert!(
            err.contains("run 2")
                && err.contains("streamed events: 2999, expected 3000")
                && err.contains("snapshot events: 2001, expected 2000"),
            "{err}"
        );
        let mut r = run(3000, 2000);
        r.discard_snapshot_events = Some(1);
        let err = r.check_counts(1, BOTH, 3000, 2000).unwrap_err().to_string();
        assert!(err.contains("snapshot 1, expected 2000"), "{err}");
        let mut r = run(3000, 2000);
        r.recvlogical_changes = Some(3001);
        assert!(r.check_counts(1, BOTH, 3000, 2000).is_err());
    }

    #[test]
    fn only_the_sinks_that_ran_are_counted() {
        // `--sink null`: the broker holds nothing of the readers.
        let mut r = run(3000, 2000);
        (r.reader_events, r.snapshot_events) = (0, 0);
        let null = Sinks {
            kafka: false,
            discard: true,
        };
        r.check_counts(1, null, 3000, 2000).unwrap();
        assert!(r.check_counts(1, BOTH, 3000, 2000).is_err());
        // pg_recvlogical to /dev/null counts nothing.
        r.recvlogical_changes = None;
        r.check_counts(1, null, 3000, 2000).unwrap();
    }

    #[test]
    fn medians() {
        assert_eq!(median_secs([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median_secs([4.0, 1.0, 2.0, 3.0].into_iter()), 2.5);
    }
}
