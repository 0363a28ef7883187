//! Event-time stream processing over Kafka: the engine under tributary's
//! fraud detector and live product activity.
//!
//! DataFusion has no event-time window operator and polars' streaming engine
//! has no watermarks, so this small operator is ours. A job is one process
//! that owns its input partitions, keeps its whole state in memory as one
//! serialisable value, and checkpoints it with the offsets it has consumed.
//!
//! # The model
//!
//! - **Event time** ([`EventTime`], µs since the Unix epoch) is when a thing
//!   happened at the source: the commit time of a change event
//!   (`ChangeEvent.source.ts_us`), the `ts_us` the order service put on a
//!   clickstream event. Processing time never decides a result; it only
//!   decides when an idle source stops holding time back.
//! - **Watermarks** ([`watermark`]): the global watermark `W` promises "no
//!   more events with time <= `W` are expected". CDC sources make that promise
//!   *exact*: a `{db, shard, t}` watermark plus the end offsets read after it
//!   arrived say when every change of the shard committed up to `t` has been
//!   consumed, so no CDC event is ever late. Sources without watermarks (the
//!   clickstream) use `max seen - max_out_of_orderness` per partition, and a
//!   partition silent for `idle_timeout` stops holding time back until it
//!   receives again. `W` is the minimum over the active sources and never
//!   moves backwards.
//! - **Event-time order** ([`reorder`]): Kafka interleaves topics and
//!   partitions arbitrarily, so the job buffers events and releases them in
//!   `(event_time, tiebreak)` order once `W` reaches them. Per-key logic then
//!   sees one deterministic timeline, the same on every replay.
//! - **Lateness** ([`late`]): an event whose time is already <= `W` when it
//!   arrives is late. Within `allowed_lateness` it is still processed (its
//!   windows are kept open that long); beyond, it goes to the late path:
//!   counted (`tributary_stream_late_events_total{job, topic}`) and recorded,
//!   never silently dropped.
//! - **Windows** ([`window`]): tumbling, sliding and session windows assigned
//!   by event time, per key, half-open `[start, end)`; a window closes (its
//!   final aggregate is emitted and its memory freed) once `W` passes
//!   `end + allowed_lateness`.
//! - **State expiry** ([`state`]): keyed state remembers when (in event time)
//!   each key was last seen and forgets keys quiet for longer than a TTL, so
//!   memory is bounded by the keys active within the TTL, not by every key
//!   ever seen.
//! - **Checkpoints** ([`checkpoint`]): state, buffered events, the watermark
//!   tracker and the consumed offsets are saved together as one object
//!   `N`; the job's output commit carries `N` (a Delta `txn`), and a restart
//!   loads the checkpoint whose output committed and seeks to its offsets.
//!
//! # The promise
//!
//! Given the same input in Kafka, a job built on this crate produces the same
//! results whatever the interleaving of partitions, the processing speed or
//! the restarts: events reach operators in event-time order, windows close at
//! the same watermarks, and after a crash the job resumes from a checkpoint
//! whose state and offsets belong together, so no window is doubled or
//! missed. The only processing-time input is the idle timeout of sources
//! without watermarks: an event of a partition that was idle for longer than
//! that may arrive late, and then it is counted and recorded as late.
//!
//! # One pipeline
//!
//! ```
//! use std::time::{Duration, Instant};
//! use tributary_stream::reorder::{ReorderBuffer, Timed};
//! use tributary_stream::watermark::{WatermarkConfig, WatermarkTracker};
//! use tributary_stream::window::{KeyedWindows, Merge, WindowSpec};
//!
//! #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
//! struct View { customer: i64, ts: i64, id: String }
//! impl Timed for View {
//!     fn event_time(&self) -> i64 { self.ts }
//!     fn tiebreak(&self) -> String { self.id.clone() }
//! }
//! #[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize)]
//! struct Count(u64);
//! impl Merge for Count { fn merge(&mut self, other: Self) { self.0 += other.0 } }
//!
//! let start = Instant::now();
//! let mut tracker = WatermarkTracker::new(WatermarkConfig {
//!     max_out_of_orderness_us: 10,
//!     idle_timeout: Duration::from_secs(5),
//! });
//! let mut buffer = ReorderBuffer::new();
//! let mut windows: KeyedWindows<i64, Count> =
//!     KeyedWindows::new(WindowSpec::tumbling(100).unwrap(), 0).unwrap();
//! for (ts, id) in [(120, "b"), (105, "a"), (230, "c")] {
//!     tracker.observed("clicks", 0, ts, start);
//!     buffer.push(View { customer: 7, ts, id: id.into() });
//! }
//! let w = tracker.current(start); // 230 - 10
//! assert_eq!(w, Some(220));
//! for v in buffer.release(w.unwrap()) {
//!     windows.add(v.customer, v.ts, |c| c.0 += 1).unwrap();
//! }
//! let closed = windows.close(w.unwrap());
//! assert_eq!(closed.len(), 1);
//! assert_eq!((closed[0].1.start, closed[0].1.end, closed[0].2.0), (100, 200, 2));
//! assert_eq!(buffer.len(), 1); // 230 waits for the watermark.
//! ```

pub mod checkpoint;
pub mod late;
pub mod metrics;
pub mod reorder;
pub mod source;
pub mod state;
pub mod watermark;
pub mod window;

/// An instant in event time: microseconds since the Unix epoch.
pub type EventTime = i64;

/// Errors of the stream engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A window, lateness or TTL setting that cannot work; names the field.
    #[error("invalid stream setting {field}: {reason}")]
    InvalidSetting { field: String, reason: String },
    /// Object-store trouble while reading or writing a checkpoint.
    #[error("checkpoint store: {context}")]
    Store {
        context: String,
        #[source]
        source: object_store::Error,
    },
    /// A checkpoint object that does not parse (or not as this job's state).
    #[error("checkpoint {path} is not readable: {reason}")]
    CheckpointFormat { path: String, reason: String },
    /// An input topic that does not exist (yet: CDC topics appear once the
    /// reader ran). Transient.
    #[error("input topic {topic} does not exist")]
    NoTopic { topic: String },
    /// Broker trouble.
    #[error(transparent)]
    Kafka(#[from] tributary_kafka::Error),
    /// A broken invariant of this crate.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Whether waiting and retrying can cure it (broker or store trouble),
    /// as opposed to bad settings, bad checkpoints or bugs.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Store { .. } | Error::NoTopic { .. } => true,
            Error::Kafka(e) => e.is_transient(),
            _ => false,
        }
    }

    pub(crate) fn setting(field: &str, reason: impl Into<String>) -> Error {
        Error::InvalidSetting {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use serde::{Deserialize, Serialize};

    use crate::late::{LatePath, Lateness, SourcePosition};
    use crate::reorder::{ReorderBuffer, Timed};
    use crate::watermark::{WatermarkConfig, WatermarkTracker};
    use crate::window::{KeyedWindows, Merge, Window, WindowSpec};

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Click {
        key: String,
        t: i64,
        partition: i32,
        offset: i64,
    }

    impl Timed for Click {
        fn event_time(&self) -> i64 {
            self.t
        }
        fn tiebreak(&self) -> String {
            format!("{}/{:08}", self.partition, self.offset)
        }
    }

    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    struct Seen(Vec<i64>);

    impl Merge for Seen {
        fn merge(&mut self, other: Self) {
            self.0.extend(other.0);
        }
    }

    /// The job loop over a hand-made clickstream: two partitions, out of
    /// order within and across them, partition 1 silent past the idle
    /// timeout and then back with one event beyond and one within the
    /// allowed lateness.
    #[test]
    fn a_small_pipeline_gives_the_exact_windows() {
        const TOPIC: &str = "tributary.events.clickstream";
        const LATENESS: i64 = 3;
        let t0 = Instant::now();
        let mut tracker = WatermarkTracker::new(WatermarkConfig {
            max_out_of_orderness_us: 5,
            idle_timeout: Duration::from_millis(1000),
        });
        tracker.declare_partition(TOPIC, 0);
        tracker.declare_partition(TOPIC, 1);
        let mut buffer: ReorderBuffer<Click> = ReorderBuffer::new();
        let mut windows: KeyedWindows<String, Seen> =
            KeyedWindows::new(WindowSpec::tumbling(10).unwrap(), LATENESS).unwrap();
        let mut late = LatePath::new("pipeline-test");
        let mut closed: Vec<(String, Window, Vec<i64>)> = Vec::new();
        let mut next_offset: BTreeMap<i32, i64> = BTreeMap::new();
        let mut watermarks = Vec::new();
        // (partition, key, event time, arrival in ms of processing time)
        let input = [
            (0, "a", 3, 0),
            (1, "b", 1, 0),
            (0, "a", 12, 10),
            (0, "a", 7, 20),
            (1, "b", 9, 30),
            (0, "a", 25, 40),
            (0, "b", 18, 50),
            // Partition 1 has been silent for 1070 ms: idle.
            (0, "a", 31, 1100),
            // Partition 1 is back: 15 is beyond the lateness, 24 within.
            (1, "b", 15, 1200),
            (1, "b", 24, 1250),
            (1, "b", 40, 1300),
            (0, "a", 45, 1400),
        ];
        for (partition, key, t, ms) in input {
            let now = t0 + Duration::from_millis(ms);
            let offset = *next_offset.entry(partition).or_default();
            next_offset.insert(partition, offset + 1);
            let click = Click {
                key: key.into(),
                t,
                partition,
                offset,
            };
            let before = tracker.emitted();
            tracker.observed(TOPIC, partition, t, now);
            tracker.consumed(TOPIC, partition, offset + 1);
            match Lateness::of(t, before, LATENESS) {
                Lateness::OnTime => buffer.push(click),
                Lateness::Allowed => {
                    windows
                        .add(click.key, t, |s| s.0.push(t))
                        .expect("within the lateness, its window is open");
                }
                Lateness::Beyond => late.record(
                    SourcePosition {
                        topic: TOPIC.into(),
                        partition,
                        offset,
                    },
                    t,
                    before.expect("late means there is a watermark"),
                    "beyond the allowed lateness",
                ),
            }
            let Some(w) = tracker.current(now) else {
                continue;
            };
            watermarks.push(w);
            for c in buffer.release(w) {
                let t = c.t;
                windows
                    .add(c.key, t, |s| s.0.push(t))
                    .expect("released on time");
            }
            closed.extend(windows.close(w).into_iter().map(|(k, w, s)| (k, w, s.0)));
        }
        let win = |start| Window {
            start,
            end: start + 10,
        };
        assert_eq!(
            closed,
            vec![
                ("a".into(), win(0), vec![3, 7]),
                ("b".into(), win(0), vec![1, 9]),
                ("a".into(), win(10), vec![12]),
                ("b".into(), win(10), vec![18]),
                // 24 arrived late but within the lateness: counted.
                ("a".into(), win(20), vec![25]),
                ("b".into(), win(20), vec![24]),
            ]
        );
        // None until both partitions were seen; then held by partition 1
        // (1 - 5, then 9 - 5) until it went idle,
        // never backwards when it came back.
        assert_eq!(watermarks, vec![-4, -4, -4, 4, 4, 4, 26, 26, 26, 26, 35]);
        let recorded = late.drain();
        assert_eq!(recorded.len(), 1);
        assert_eq!(
            (
                recorded[0].event_time,
                recorded[0].watermark,
                recorded[0].source.offset
            ),
            (15, 26, 2)
        );
        // Still waiting: b@40 and a@45 in the buffer, a[30, 40) open.
        assert_eq!(buffer.len(), 2);
        assert_eq!(windows.windows_of(&"a".to_string()).len(), 1);
        assert_eq!(windows.len(), 1);
    }
}
