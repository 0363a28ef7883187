//! The reorder buffer: events in, events out in event-time order.
//!
//! Kafka delivers each partition in order but interleaves topics and
//! partitions arbitrarily, and the clickstream is out of order even within a
//! partition. The job pushes every event it consumes and, whenever the
//! watermark `W` moves, releases every buffered event with time `<= W`
//! sorted by `(event_time, tiebreak)`. Since `W` promises that no more events
//! with time `<= W` are coming (except late ones), every release continues
//! the previous one: per-key logic sees one timeline, the same on every
//! replay and whatever the interleaving.
//!
//! Events with equal `(event_time, tiebreak)` come out in the order they were
//! pushed; give every event a unique tiebreak (an `event_id`, or topic,
//! partition and offset) to make the order fully deterministic.
//!
//! An event pushed with time `<=` a watermark already released (a late event
//! the job decided to process) comes out at the next release, after events
//! already released: the job decides first whether it is late (see
//! [`crate::late`]).
//!
//! The buffer holds what the watermark has not reached yet, which is bounded
//! by the input rate times how far the watermark trails (the CDC status
//! cadence, the out-of-orderness bound); its length is exported as
//! `tributary_stream_buffered_events{job}`. It is serialisable for the
//! checkpoint.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::EventTime;

/// An event with a place on the event-time line.
pub trait Timed {
    /// When it happened at the source, µs since the Unix epoch.
    fn event_time(&self) -> EventTime;
    /// Orders events with the same event time (e.g. the event id); it should
    /// be unique per event.
    fn tiebreak(&self) -> String;
}

/// Buffered events by event time (see the module docs).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound(
    serialize = "E: Serialize",
    deserialize = "E: serde::de::DeserializeOwned"
))]
pub struct ReorderBuffer<E> {
    /// Event time -> events in push order. Integer keys survive JSON.
    events: BTreeMap<EventTime, Vec<E>>,
    len: usize,
}

impl<E> Default for ReorderBuffer<E> {
    fn default() -> Self {
        ReorderBuffer {
            events: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<E: Timed> ReorderBuffer<E> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, event: E) {
        self.events
            .entry(event.event_time())
            .or_default()
            .push(event);
        self.len += 1;
    }

    /// Removes and returns every event with event time `<= watermark`, in
    /// `(event_time, tiebreak)` order.
    pub fn release(&mut self, watermark: EventTime) -> Vec<E> {
        let later = match watermark.checked_add(1) {
            Some(next) => self.events.split_off(&next),
            None => BTreeMap::new(),
        };
        let ready = std::mem::replace(&mut self.events, later);
        let mut out = Vec::with_capacity(ready.values().map(Vec::len).sum());
        for (_, mut group) in ready {
            if group.len() > 1 {
                // Stable: equal tiebreaks keep their push order.
                group.sort_by_cached_key(|e| e.tiebreak());
            }
            out.extend(group);
        }
        self.len -= out.len();
        out
    }

    /// Events waiting for the watermark.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The earliest event time waiting.
    pub fn oldest(&self) -> Option<EventTime> {
        self.events.keys().next().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Ev(i64, String);

    impl Timed for Ev {
        fn event_time(&self) -> EventTime {
            self.0
        }
        fn tiebreak(&self) -> String {
            self.1.clone()
        }
    }

    fn ev(t: i64, id: &str) -> Ev {
        Ev(t, id.to_string())
    }

    #[test]
    fn releases_out_of_order_input_sorted_up_to_the_watermark() {
        let mut b = ReorderBuffer::new();
        for e in [
            ev(30, "c"),
            ev(10, "z"),
            ev(20, "b"),
            ev(10, "a"),
            ev(50, "x"),
            ev(20, "a"),
        ] {
            b.push(e);
        }
        assert_eq!((b.len(), b.oldest()), (6, Some(10)));
        assert_eq!(b.release(5), vec![]);
        assert_eq!(
            b.release(20),
            vec![ev(10, "a"), ev(10, "z"), ev(20, "a"), ev(20, "b")]
        );
        assert_eq!((b.len(), b.oldest()), (2, Some(30)));
        // A later event pushed below what is buffered still sorts first.
        b.push(ev(25, "d"));
        assert_eq!(b.release(30), vec![ev(25, "d"), ev(30, "c")]);
        assert_eq!(b.release(EventTime::MAX), vec![ev(50, "x")]);
        assert!(b.is_empty());
        assert_eq!(b.oldest(), None);
    }

    #[test]
    fn the_buffer_survives_a_checkpoint_and_releases_the_same() {
        let mut b = ReorderBuffer::new();
        b.push(Ev(7, "same".into()));
        b.push(Ev(7, "same".into()));
        b.push(ev(3, "first"));
        let json = serde_json::to_string(&b).unwrap();
        let mut back: ReorderBuffer<Ev> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back.release(7), b.release(7));
    }
}
