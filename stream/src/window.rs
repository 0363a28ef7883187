//! Windows over event time, per key, closed by the watermark.
//!
//! A window is half-open, `[start, end)`: an event at `t` belongs to it when
//! `start <= t < end`.
//!
//! - **Tumbling** `size`: back-to-back windows aligned on the Unix epoch,
//!   `[k·size, (k+1)·size)`; each event belongs to exactly one.
//! - **Sliding** `size`, `slide`: windows of length `size` starting every
//!   `slide` (epoch aligned); each event belongs to `ceil(size / slide)` of
//!   them (or one fewer where `slide` does not divide `size`).
//! - **Session** `gap`: per key, events less than `gap` apart share a
//!   session; a session is `[first event, last event + gap)`. An event that
//!   bridges two sessions merges them (their aggregates combine through
//!   [`Merge::merge`]); the merged-away sessions never close on their own.
//!
//! Closing. [`KeyedWindows::close`] with watermark `W` removes and returns
//! every window with `end + allowed_lateness <= W`, ordered by `(end, start,
//! key)`. Those aggregates are final: the watermark promises that no event
//! with time `< end` is still coming, and the allowed lateness has passed.
//!
//! Lateness. [`KeyedWindows::add`] measures an event against the watermark of
//! the last close (not the tracker's current one: events the reorder buffer
//! releases at `W` belong to windows that only close at `W` *after* they were
//! added). An event updates each of its windows that is still held, also one
//! whose end the watermark already passed but not `end + allowed_lateness`
//! (the job may then emit an updated result); windows already closed are
//! skipped. If every window of the event has closed it is [`Late`], and the
//! job sends it to the late path ([`crate::late`]). For sessions the test is
//! made on the session the event would extend or merge into.
//!
//! Memory: one entry per open (key, window), plus an index by end; both are
//! freed at close, so memory is bounded by the keys active within
//! `size + allowed_lateness` (sessions: their span + gap + lateness).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{Error, EventTime, Result};

/// Most sliding windows one event may belong to (`size / slide`), so a
/// typo in the settings cannot multiply the state by a million.
pub const MAX_WINDOWS_PER_EVENT: i64 = 1000;

/// A half-open event-time interval `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Window {
    pub start: EventTime,
    pub end: EventTime,
}

impl Window {
    pub fn contains(&self, t: EventTime) -> bool {
        self.start <= t && t < self.end
    }
}

/// How events are grouped into windows. Built with the validating
/// constructors; deserialising validates too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", try_from = "RawSpec")]
pub enum WindowSpec {
    Tumbling { size_us: i64 },
    Sliding { size_us: i64, slide_us: i64 },
    Session { gap_us: i64 },
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum RawSpec {
    Tumbling { size_us: i64 },
    Sliding { size_us: i64, slide_us: i64 },
    Session { gap_us: i64 },
}

impl TryFrom<RawSpec> for WindowSpec {
    type Error = Error;

    fn try_from(raw: RawSpec) -> Result<Self> {
        match raw {
            RawSpec::Tumbling { size_us } => WindowSpec::tumbling(size_us),
            RawSpec::Sliding { size_us, slide_us } => WindowSpec::sliding(size_us, slide_us),
            RawSpec::Session { gap_us } => WindowSpec::session(gap_us),
        }
    }
}

fn positive(field: &str, v: i64) -> Result<()> {
    if v > 0 {
        Ok(())
    } else {
        Err(Error::setting(
            field,
            format!("must be a positive number of microseconds, got {v}"),
        ))
    }
}

impl WindowSpec {
    pub fn tumbling(size_us: i64) -> Result<Self> {
        positive("window.size_us", size_us)?;
        Ok(WindowSpec::Tumbling { size_us })
    }

    /// Windows of `size_us` every `slide_us`; `slide_us` at most `size_us`
    /// (a longer slide would leave events in no window) and at most
    /// [`MAX_WINDOWS_PER_EVENT`] windows per event.
    pub fn sliding(size_us: i64, slide_us: i64) -> Result<Self> {
        positive("window.size_us", size_us)?;
        positive("window.slide_us", slide_us)?;
        if slide_us > size_us {
            return Err(Error::setting(
                "window.slide_us",
                format!(
                    "slide {slide_us} is longer than the window size {size_us}; events between windows would be in none"
                ),
            ));
        }
        if size_us / slide_us > MAX_WINDOWS_PER_EVENT {
            return Err(Error::setting(
                "window.slide_us",
                format!(
                    "size {size_us} / slide {slide_us} puts each event in more than {MAX_WINDOWS_PER_EVENT} windows"
                ),
            ));
        }
        Ok(WindowSpec::Sliding { size_us, slide_us })
    }

    pub fn session(gap_us: i64) -> Result<Self> {
        positive("window.gap_us", gap_us)?;
        Ok(WindowSpec::Session { gap_us })
    }

    /// The windows an event at `t` belongs to, by ascending start. For
    /// sessions: the event's own session before merging, `[t, t + gap)`.
    pub fn assign(&self, t: EventTime) -> Vec<Window> {
        match *self {
            WindowSpec::Tumbling { size_us } => {
                let start = t.div_euclid(size_us) * size_us;
                vec![Window {
                    start,
                    end: start.saturating_add(size_us),
                }]
            }
            WindowSpec::Sliding { size_us, slide_us } => {
                let last = t.div_euclid(slide_us) * slide_us;
                let mut out = Vec::new();
                let mut start = last;
                while start.saturating_add(size_us) > t {
                    out.push(Window {
                        start,
                        end: start.saturating_add(size_us),
                    });
                    start -= slide_us;
                }
                out.reverse();
                out
            }
            WindowSpec::Session { gap_us } => vec![Window {
                start: t,
                end: t.saturating_add(gap_us),
            }],
        }
    }
}

/// Aggregates that can be combined (session windows merge).
pub trait Merge {
    /// Folds `other` into `self`, as if `self` had also seen `other`'s events.
    fn merge(&mut self, other: Self);
}

/// An event whose every window has closed: beyond the allowed lateness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "event at {event_time} is beyond the allowed lateness: its last window ends at {window_end} and windows are closed up to watermark {watermark}"
)]
pub struct Late {
    pub event_time: EventTime,
    /// The watermark of the last close.
    pub watermark: EventTime,
    /// The end of the latest window the event belonged to.
    pub window_end: EventTime,
}

/// Per-key, per-window aggregates (see the module docs).
#[derive(Clone, Debug)]
pub struct KeyedWindows<K, A> {
    spec: WindowSpec,
    allowed_lateness_us: i64,
    /// key -> start -> (end, aggregate).
    windows: BTreeMap<K, BTreeMap<EventTime, (EventTime, A)>>,
    /// (end, start, key) of every open window: what closes next.
    by_end: BTreeSet<(EventTime, EventTime, K)>,
    /// The highest watermark passed to `close`.
    closed_up_to: Option<EventTime>,
}

impl<K: Ord + Clone, A: Default + Merge + Clone> KeyedWindows<K, A> {
    /// Windows of `spec` that stay open `allowed_lateness_us` after the
    /// watermark passed their end.
    pub fn new(spec: WindowSpec, allowed_lateness_us: i64) -> Result<Self> {
        if allowed_lateness_us < 0 {
            return Err(Error::setting(
                "allowed_lateness_us",
                format!("must not be negative, got {allowed_lateness_us}"),
            ));
        }
        Ok(KeyedWindows {
            spec,
            allowed_lateness_us,
            windows: BTreeMap::new(),
            by_end: BTreeSet::new(),
            closed_up_to: None,
        })
    }

    pub fn spec(&self) -> WindowSpec {
        self.spec
    }

    pub fn allowed_lateness_us(&self) -> i64 {
        self.allowed_lateness_us
    }

    /// The watermark of the last [`close`](Self::close).
    pub fn watermark(&self) -> Option<EventTime> {
        self.closed_up_to
    }

    fn closed(&self, end: EventTime) -> bool {
        self.closed_up_to
            .is_some_and(|w| end.saturating_add(self.allowed_lateness_us) <= w)
    }

    /// Adds an event of `key` at `t`: `update` runs on the aggregate of each
    /// window it belongs to that is still held. Returns those windows with
    /// their aggregate after the update, by ascending start, or [`Late`] when
    /// all of its windows have closed (nothing changed then).
    pub fn add(
        &mut self,
        key: K,
        t: EventTime,
        mut update: impl FnMut(&mut A),
    ) -> Result<Vec<(Window, A)>, Late> {
        if let WindowSpec::Session { gap_us } = self.spec {
            return self.add_to_session(key, t, gap_us, update);
        }
        let all = self.spec.assign(t);
        let live: Vec<Window> = all
            .iter()
            .copied()
            .filter(|w| !self.closed(w.end))
            .collect();
        if live.is_empty() {
            return Err(self.late(t, all.last().map_or(t, |w| w.end)));
        }
        let per_key = self.windows.entry(key.clone()).or_default();
        let mut out = Vec::with_capacity(live.len());
        for w in live {
            let (_, agg) = per_key.entry(w.start).or_insert_with(|| {
                self.by_end.insert((w.end, w.start, key.clone()));
                (w.end, A::default())
            });
            update(agg);
            out.push((w, agg.clone()));
        }
        Ok(out)
    }

    fn add_to_session(
        &mut self,
        key: K,
        t: EventTime,
        gap_us: i64,
        mut update: impl FnMut(&mut A),
    ) -> Result<Vec<(Window, A)>, Late> {
        let mut merged = Window {
            start: t,
            end: t.saturating_add(gap_us),
        };
        // Sessions of one key never overlap, so going down from the last
        // start before `t + gap`, the first session ending at or before `t`
        // ends the overlapping run.
        let overlapping: Vec<(EventTime, EventTime)> = self
            .windows
            .get(&key)
            .map(|m| {
                m.range(..merged.end)
                    .rev()
                    .take_while(|(_, (end, _))| *end > t)
                    .map(|(start, (end, _))| (*start, *end))
                    .collect()
            })
            .unwrap_or_default();
        for (start, end) in &overlapping {
            merged.start = merged.start.min(*start);
            merged.end = merged.end.max(*end);
        }
        if self.closed(merged.end) {
            return Err(self.late(t, merged.end));
        }
        let per_key = self.windows.entry(key.clone()).or_default();
        let mut agg: Option<A> = None;
        // Ascending start: the earliest session absorbs the later ones.
        for (start, end) in overlapping.into_iter().rev() {
            let (_, a) = per_key
                .remove(&start)
                .expect("an overlapping session exists");
            self.by_end.remove(&(end, start, key.clone()));
            match &mut agg {
                None => agg = Some(a),
                Some(base) => base.merge(a),
            }
        }
        let mut agg = agg.unwrap_or_default();
        update(&mut agg);
        per_key.insert(merged.start, (merged.end, agg.clone()));
        self.by_end.insert((merged.end, merged.start, key));
        Ok(vec![(merged, agg)])
    }

    fn late(&self, t: EventTime, window_end: EventTime) -> Late {
        Late {
            event_time: t,
            watermark: self.closed_up_to.unwrap_or(EventTime::MIN),
            window_end,
        }
    }

    /// Removes and returns every window with `end + allowed_lateness <=
    /// watermark`, ordered by `(end, start, key)`. A watermark lower than an
    /// earlier one changes nothing.
    pub fn close(&mut self, watermark: EventTime) -> Vec<(K, Window, A)> {
        if self.closed_up_to.is_some_and(|w| w >= watermark) {
            return Vec::new();
        }
        self.closed_up_to = Some(watermark);
        let mut out = Vec::new();
        while let Some((end, _, _)) = self.by_end.first()
            && end.saturating_add(self.allowed_lateness_us) <= watermark
        {
            let (end, start, key) = self.by_end.pop_first().expect("first exists");
            let per_key = self.windows.get_mut(&key).expect("indexed key exists");
            let (_, agg) = per_key.remove(&start).expect("indexed window exists");
            if per_key.is_empty() {
                self.windows.remove(&key);
            }
            out.push((key, Window { start, end }, agg));
        }
        out
    }

    /// Open windows (over all keys).
    pub fn len(&self) -> usize {
        self.by_end.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_end.is_empty()
    }

    /// Keys with at least one open window.
    pub fn key_count(&self) -> usize {
        self.windows.len()
    }

    /// The open windows of `key`, by ascending start.
    pub fn windows_of(&self, key: &K) -> Vec<(Window, &A)> {
        self.windows
            .get(key)
            .into_iter()
            .flat_map(|m| {
                m.iter()
                    .map(|(s, (e, a))| (Window { start: *s, end: *e }, a))
            })
            .collect()
    }
}

/// The serialised form: settings and a flat list of windows (any key type
/// survives JSON); the index is rebuilt on load.
#[derive(Serialize)]
struct ReprRef<'a, K, A> {
    spec: WindowSpec,
    allowed_lateness_us: i64,
    closed_up_to: Option<EventTime>,
    windows: Vec<(&'a K, Window, &'a A)>,
}

#[derive(Deserialize)]
struct Repr<K, A> {
    spec: WindowSpec,
    allowed_lateness_us: i64,
    closed_up_to: Option<EventTime>,
    windows: Vec<(K, Window, A)>,
}

impl<K: Serialize, A: Serialize> Serialize for KeyedWindows<K, A> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ReprRef {
            spec: self.spec,
            allowed_lateness_us: self.allowed_lateness_us,
            closed_up_to: self.closed_up_to,
            windows: self
                .windows
                .iter()
                .flat_map(|(k, m)| {
                    m.iter()
                        .map(move |(s, (e, a))| (k, Window { start: *s, end: *e }, a))
                })
                .collect(),
        }
        .serialize(s)
    }
}

impl<'de, K, A> Deserialize<'de> for KeyedWindows<K, A>
where
    K: Deserialize<'de> + Ord + Clone,
    A: Deserialize<'de>,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = Repr::<K, A>::deserialize(d)?;
        if r.allowed_lateness_us < 0 {
            return Err(serde::de::Error::custom("allowed_lateness_us is negative"));
        }
        let mut windows: BTreeMap<K, BTreeMap<EventTime, (EventTime, A)>> = BTreeMap::new();
        let mut by_end = BTreeSet::new();
        for (k, w, a) in r.windows {
            by_end.insert((w.end, w.start, k.clone()));
            windows.entry(k).or_default().insert(w.start, (w.end, a));
        }
        Ok(KeyedWindows {
            spec: r.spec,
            allowed_lateness_us: r.allowed_lateness_us,
            windows,
            by_end,
            closed_up_to: r.closed_up_to,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Count and the event times seen, so merges are visible.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    struct Agg {
        n: u64,
        seen: Vec<i64>,
    }

    impl Merge for Agg {
        fn merge(&mut self, other: Self) {
            self.n += other.n;
            self.seen.extend(other.seen);
            self.seen.sort();
        }
    }

    fn w(start: i64, end: i64) -> Window {
        Window { start, end }
    }

    fn count(
        ws: &mut KeyedWindows<&'static str, Agg>,
        key: &'static str,
        t: i64,
    ) -> Result<Vec<(Window, u64)>, Late> {
        ws.add(key, t, |a| {
            a.n += 1;
            a.seen.push(t);
            a.seen.sort();
        })
        .map(|v| v.into_iter().map(|(w, a)| (w, a.n)).collect())
    }

    #[test]
    fn tumbling_assignment_at_the_boundaries() {
        let s = WindowSpec::tumbling(100).unwrap();
        assert_eq!(s.assign(0), vec![w(0, 100)]);
        assert_eq!(s.assign(99), vec![w(0, 100)]);
        assert_eq!(s.assign(100), vec![w(100, 200)]);
        assert_eq!(s.assign(-1), vec![w(-100, 0)]);
        assert!(w(0, 100).contains(0) && !w(0, 100).contains(100));
    }

    #[test]
    fn sliding_assignment_at_the_boundaries() {
        let s = WindowSpec::sliding(100, 50).unwrap();
        assert_eq!(s.assign(0), vec![w(-50, 50), w(0, 100)]);
        assert_eq!(s.assign(49), vec![w(-50, 50), w(0, 100)]);
        assert_eq!(s.assign(50), vec![w(0, 100), w(50, 150)]);
        assert_eq!(s.assign(149), vec![w(50, 150), w(100, 200)]);
        // A slide that does not divide the size.
        let s = WindowSpec::sliding(100, 30).unwrap();
        assert_eq!(
            s.assign(95),
            vec![w(0, 100), w(30, 130), w(60, 160), w(90, 190)]
        );
        assert_eq!(s.assign(100), vec![w(30, 130), w(60, 160), w(90, 190)]);
    }

    #[test]
    fn bad_specs_are_refused_by_field() {
        let e = WindowSpec::tumbling(0).unwrap_err().to_string();
        assert!(
            e.contains("window.size_us") && e.contains("positive"),
            "{e}"
        );
        let e = WindowSpec::sliding(100, 200).unwrap_err().to_string();
        assert!(e.contains("window.slide_us") && e.contains("longer"), "{e}");
        let e = WindowSpec::sliding(1_000_000, 1).unwrap_err().to_string();
        assert!(e.contains("more than 1000 windows"), "{e}");
        assert!(WindowSpec::session(-5).is_err());
        let e = serde_json::from_str::<WindowSpec>(r#"{"kind":"session","gap_us":0}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("window.gap_us"), "{e}");
        let e = serde_json::from_str::<WindowSpec>(r#"{"kind":"tumbling","size":5}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("size"), "{e}");
        let s: WindowSpec =
            serde_json::from_str(r#"{"kind":"sliding","size_us":10,"slide_us":5}"#).unwrap();
        assert_eq!(s, WindowSpec::sliding(10, 5).unwrap());
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"kind":"sliding","size_us":10,"slide_us":5}"#
        );
        let e = KeyedWindows::<u8, Agg>::new(s, -1).unwrap_err().to_string();
        assert!(e.contains("allowed_lateness_us"), "{e}");
    }

    #[test]
    fn windows_close_on_the_watermark_in_end_then_key_order() {
        let mut ws = KeyedWindows::new(WindowSpec::sliding(100, 50).unwrap(), 0).unwrap();
        assert_eq!(
            count(&mut ws, "b", 60),
            Ok(vec![(w(0, 100), 1), (w(50, 150), 1)])
        );
        assert_eq!(
            count(&mut ws, "a", 10),
            Ok(vec![(w(-50, 50), 1), (w(0, 100), 1)])
        );
        assert_eq!(
            count(&mut ws, "b", 70),
            Ok(vec![(w(0, 100), 2), (w(50, 150), 2)])
        );
        assert_eq!(ws.len(), 4);
        assert_eq!(ws.close(49), vec![]);
        let closed: Vec<_> = ws
            .close(100)
            .into_iter()
            .map(|(k, w, a)| (k, w, a.n))
            .collect();
        assert_eq!(
            closed,
            vec![
                ("a", w(-50, 50), 1),
                ("a", w(0, 100), 1),
                ("b", w(0, 100), 2)
            ]
        );
        assert_eq!((ws.len(), ws.key_count()), (1, 1));
        assert_eq!(ws.close(90), vec![], "an older watermark changes nothing");
        assert_eq!(ws.watermark(), Some(100));
    }

    #[test]
    fn a_session_merges_when_an_event_bridges_two_sessions() {
        let mut ws = KeyedWindows::new(WindowSpec::session(10).unwrap(), 0).unwrap();
        assert_eq!(count(&mut ws, "k", 100), Ok(vec![(w(100, 110), 1)]));
        assert_eq!(count(&mut ws, "k", 105), Ok(vec![(w(100, 115), 2)]));
        assert_eq!(count(&mut ws, "k", 118), Ok(vec![(w(118, 128), 1)]));
        // Exactly `gap` apart is a new session.
        assert_eq!(count(&mut ws, "x", 0), Ok(vec![(w(0, 10), 1)]));
        assert_eq!(count(&mut ws, "x", 10), Ok(vec![(w(10, 20), 1)]));
        assert_eq!(ws.len(), 4);
        // 112 is within the gap of 105 and of 118: it bridges [100, 115)
        // and [118, 128).
        assert_eq!(count(&mut ws, "k", 112), Ok(vec![(w(100, 128), 4)]));
        assert_eq!(ws.len(), 3);
        let (_, a) = ws.windows_of(&"k")[0];
        assert_eq!(a.seen, vec![100, 105, 112, 118]);
        // An event before a session extends it backwards.
        assert_eq!(count(&mut ws, "k", 95), Ok(vec![(w(95, 128), 5)]));
        let closed: Vec<_> = ws
            .close(128)
            .into_iter()
            .map(|(k, w, a)| (k, w, a.n))
            .collect();
        assert_eq!(
            closed,
            vec![
                ("x", w(0, 10), 1),
                ("x", w(10, 20), 1),
                ("k", w(95, 128), 5)
            ]
        );
        assert!(ws.is_empty());
    }

    #[test]
    fn within_allowed_lateness_updates_a_passed_window_beyond_is_late() {
        let mut ws = KeyedWindows::new(WindowSpec::tumbling(100).unwrap(), 50).unwrap();
        count(&mut ws, "k", 10).unwrap();
        assert_eq!(ws.close(120), vec![], "end 100 + lateness 50 > 120");
        // The watermark passed the end, not the lateness: still updated.
        assert_eq!(count(&mut ws, "k", 20), Ok(vec![(w(0, 100), 2)]));
        let closed = ws.close(150);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].2.n, 2);
        assert_eq!(
            count(&mut ws, "k", 30),
            Err(Late {
                event_time: 30,
                watermark: 150,
                window_end: 100
            })
        );
        assert!(ws.is_empty(), "a late event creates nothing");
        // Sliding: an event late for one window still counts in the others.
        let mut ws = KeyedWindows::new(WindowSpec::sliding(100, 50).unwrap(), 0).unwrap();
        ws.close(100);
        assert_eq!(count(&mut ws, "k", 60), Ok(vec![(w(50, 150), 1)]));
        assert_eq!(
            count(&mut ws, "k", 40),
            Err(Late {
                event_time: 40,
                watermark: 100,
                window_end: 100
            })
        );
        // Sessions: late when the session it would join has closed.
        let mut ws = KeyedWindows::new(WindowSpec::session(10).unwrap(), 5).unwrap();
        count(&mut ws, "k", 100).unwrap();
        ws.close(112);
        assert_eq!(
            count(&mut ws, "k", 98),
            Ok(vec![(w(98, 110), 2)]),
            "joins an open session"
        );
        assert_eq!(
            count(&mut ws, "j", 97),
            Err(Late {
                event_time: 97,
                watermark: 112,
                window_end: 107
            })
        );
    }

    #[test]
    fn open_windows_survive_json_and_close_the_same() {
        let mut ws = KeyedWindows::new(WindowSpec::session(10).unwrap(), 0).unwrap();
        for (k, t) in [("a", 1), ("b", 3), ("a", 8), ("a", 30)] {
            count(&mut ws, k, t).unwrap();
        }
        ws.close(5);
        let json = serde_json::to_string(&ws).unwrap();
        let mut back: KeyedWindows<String, Agg> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.watermark(), Some(5));
        assert_eq!(back.len(), 3);
        let a: Vec<_> = ws
            .close(100)
            .into_iter()
            .map(|(k, w, a)| (k.to_string(), w, a))
            .collect();
        assert_eq!(back.close(100), a);
    }
}
