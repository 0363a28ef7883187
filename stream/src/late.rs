//! The late path: events beyond the allowed lateness are counted and
//! recorded, never silently dropped.
//!
//! An event is late when its event time is already at or below the
//! watermark when it arrives (only sources without watermarks can produce
//! them: a partition that was idle, a producer whose clock or buffer lagged
//! more than the out-of-orderness bound). Within the allowed lateness the job
//! still processes it ([`Lateness::Allowed`]; windows stay open that long,
//! see [`crate::window`]); beyond ([`Lateness::Beyond`], or a
//! [`crate::window::Late`] from the windows), the job hands it to
//! [`LatePath::record`]:
//!
//! - `tributary_stream_late_events_total{job, topic}` counts it at once;
//! - a [`LateEvent`] (where it came from, its time, the watermark, why) joins
//!   a bounded in-memory list that the job drains with [`LatePath::drain`]
//!   and writes to its Delta late table in the same commit as its output, so
//!   the record is exactly once like the output. The list is part of the
//!   checkpoint (it is serialisable). Should it ever fill (the job stopped
//!   draining), the oldest records are dropped and counted in
//!   `tributary_stream_late_records_dropped_total{job}`; the events
//!   themselves stay counted.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::EventTime;
use crate::metrics::{LATE_DROPPED, LATE_EVENTS};

/// Most late-event records held between two drains.
pub const MAX_RECORDS: usize = 100_000;

/// How an event's time compares with the watermark when it arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lateness {
    /// After the watermark: buffer it and process it in event-time order.
    OnTime,
    /// At or below the watermark, but within the allowed lateness of it:
    /// process it at once.
    Allowed,
    /// More than the allowed lateness below the watermark: the late path.
    Beyond,
}

impl Lateness {
    /// Classifies an event at `t` against `watermark` (`None`: nothing is
    /// late yet).
    pub fn of(t: EventTime, watermark: Option<EventTime>, allowed_lateness_us: i64) -> Lateness {
        match watermark {
            Some(w) if t <= w => {
                if t.saturating_add(allowed_lateness_us) > w {
                    Lateness::Allowed
                } else {
                    Lateness::Beyond
                }
            }
            _ => Lateness::OnTime,
        }
    }
}

/// Where an event came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePosition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// One event that took the late path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateEvent {
    pub job: String,
    pub source: SourcePosition,
    pub event_time: EventTime,
    /// The watermark it was measured against.
    pub watermark: EventTime,
    /// Why it is late, for people (e.g. "beyond the allowed lateness of 5 s").
    pub reason: String,
}

/// The late path of one job (see the module docs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatePath {
    job: String,
    records: VecDeque<LateEvent>,
}

impl LatePath {
    pub fn new(job: &str) -> Self {
        LatePath {
            job: job.to_string(),
            records: VecDeque::new(),
        }
    }

    pub fn job(&self) -> &str {
        &self.job
    }

    /// Counts a late event and keeps its record until the next drain.
    pub fn record(
        &mut self,
        source: SourcePosition,
        event_time: EventTime,
        watermark: EventTime,
        reason: impl Into<String>,
    ) {
        LATE_EVENTS
            .with_label_values(&[self.job.as_str(), source.topic.as_str()])
            .inc();
        tracing::debug!(
            job = %self.job,
            topic = %source.topic,
            partition = source.partition,
            offset = source.offset,
            event_time,
            watermark,
            "late event"
        );
        if self.records.len() >= MAX_RECORDS {
            self.records.pop_front();
            LATE_DROPPED.with_label_values(&[self.job.as_str()]).inc();
        }
        self.records.push_back(LateEvent {
            job: self.job.clone(),
            source,
            event_time,
            watermark,
            reason: reason.into(),
        });
    }

    /// Records waiting to be written.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Takes every record, oldest first, for the job to write.
    pub fn drain(&mut self) -> Vec<LateEvent> {
        self.records.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lateness_is_measured_against_the_watermark_and_the_allowance() {
        assert_eq!(Lateness::of(5, None, 0), Lateness::OnTime);
        assert_eq!(Lateness::of(101, Some(100), 0), Lateness::OnTime);
        assert_eq!(Lateness::of(100, Some(100), 0), Lateness::Beyond);
        assert_eq!(Lateness::of(100, Some(100), 1), Lateness::Allowed);
        assert_eq!(Lateness::of(91, Some(100), 10), Lateness::Allowed);
        assert_eq!(Lateness::of(90, Some(100), 10), Lateness::Beyond);
    }

    #[test]
    fn late_events_are_counted_per_topic_and_kept_until_drained() {
        let mut late = LatePath::new("late-test");
        let at = |offset| SourcePosition {
            topic: "tributary.events.clickstream".into(),
            partition: 2,
            offset,
        };
        late.record(at(7), 10, 500, "beyond the allowed lateness of 100 µs");
        late.record(at(9), 20, 500, "beyond the allowed lateness of 100 µs");
        let json = serde_json::to_string(&late).unwrap();
        let mut back: LatePath = serde_json::from_str(&json).unwrap();
        let drained = back.drain();
        assert_eq!(drained.len(), 2);
        assert_eq!(drained[0].source.offset, 7);
        assert_eq!((drained[1].event_time, drained[1].watermark), (20, 500));
        assert_eq!(drained[1].job, "late-test");
        assert!(back.is_empty());
        let text = tributary_metrics::render();
        assert!(
            text.contains(r#"tributary_stream_late_events_total{job="late-test",topic="tributary.events.clickstream"} 2"#),
            "{text}"
        );
    }
}
