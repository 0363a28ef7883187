//! Watermarks: how far event time has progressed over all of a job's inputs.
//!
//! The global watermark `W` promises: every input event with event time
//! `<= W` has been consumed. It is the minimum over the *active* sources, and
//! it never moves backwards.
//!
//! Two kinds of source:
//!
//! 1. **CDC shards**, exact. The reader of `(db, shard)` publishes `{db,
//!    shard, t}` on `<prefix>.<db>._watermarks` only after the broker
//!    acknowledged every change of that shard committed up to `t` (see
//!    `tributary_model::watermark`). The driver reads the end offsets of the
//!    job's partitions of `db`'s change topics *after* the watermark arrived
//!    and files a target `(t, ends)` with [`WatermarkTracker::cdc_target`].
//!    Once [`WatermarkTracker::consumed`] positions reach every end, every
//!    change of the shard committed at or before `t` has been consumed: the
//!    shard's watermark becomes `t`. Targets of a shard are kept in arrival
//!    order and reached in that order (a later target has later ends and a
//!    later `t`); at most [`MAX_PENDING`] wait per shard, the oldest dropped
//!    first, which only delays time (a later target covers more). An idle
//!    shard's topics already sit at their ends, so each heartbeat watermark
//!    moves it forward without a single change flowing: an idle shard never
//!    stalls time. A shard declared with
//!    [`WatermarkTracker::expect_cdc_source`] (or first seen through a target)
//!    holds `W` at "no time yet" until its first target is reached, so a job
//!    never runs ahead of a shard it has not heard from.
//! 2. **Partitions without watermarks** (the clickstream, produced directly).
//!    A partition's watermark is `max event time seen - max_out_of_orderness`.
//!    A partition with no message for `idle_timeout` of processing time is
//!    *idle*: it stops holding `W` back until it receives again (its events
//!    may then be late; they take the late path). A partition declared with
//!    [`WatermarkTracker::declare_partition`] but never seen holds `W` at "no
//!    time yet" until it has been idle for `idle_timeout`, counted from the
//!    first time the tracker looked at it.
//!
//! If every source is idle, `W` stays where it is: silence is not evidence
//! that time moved.
//!
//! The tracker is part of a job's checkpoint: it serialises everything that
//! is event time or offsets (shard watermarks, pending targets, consumed
//! positions, max seen per partition, the emitted `W`). Processing-time
//! instants are not serialised; after a restore every partition's idle clock
//! starts again at the first look, so a restart never makes a source idle
//! sooner than `idle_timeout`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::EventTime;

/// Most targets kept per CDC shard. A job that stopped consuming keeps
/// receiving watermarks; dropping the oldest only delays the shard's
/// watermark (a later target covers more offsets and a later time).
pub const MAX_PENDING: usize = 4096;

/// How sources without watermarks advance and go idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkConfig {
    /// How far behind the newest event of a partition an event may still
    /// arrive without being late, in µs.
    pub max_out_of_orderness_us: i64,
    /// Processing time without a message after which a partition stops
    /// holding the watermark back.
    pub idle_timeout: Duration,
}

/// One CDC target: once consumption reaches `ends`, the shard is complete up
/// to `t`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Target {
    t: EventTime,
    /// `(topic, partition, end offset)`.
    ends: Vec<(String, i32, i64)>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct CdcShard {
    /// Every change of the shard committed at or before this was consumed.
    watermark: Option<EventTime>,
    /// Targets not reached yet, oldest first.
    pending: VecDeque<Target>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Partition {
    max_seen: Option<EventTime>,
    /// The last message (or the first look, after a declaration or a
    /// restore). Processing time, never serialised.
    #[serde(skip)]
    last_activity: Option<Instant>,
}

/// The watermark of one job over all its inputs (see the module docs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WatermarkTracker {
    config: WatermarkConfig,
    /// db -> shard -> state.
    cdc: BTreeMap<String, BTreeMap<u32, CdcShard>>,
    /// topic -> partition -> next offset to consume.
    consumed: BTreeMap<String, BTreeMap<i32, i64>>,
    /// topic -> partition -> clock of a source without watermarks.
    partitions: BTreeMap<String, BTreeMap<i32, Partition>>,
    /// The watermark last returned; `current` never goes below it.
    emitted: Option<EventTime>,
}

impl WatermarkTracker {
    pub fn new(config: WatermarkConfig) -> Self {
        WatermarkTracker {
            config,
            cdc: BTreeMap::new(),
            consumed: BTreeMap::new(),
            partitions: BTreeMap::new(),
            emitted: None,
        }
    }

    pub fn config(&self) -> WatermarkConfig {
        self.config
    }

    /// Applies new settings (e.g. to a tracker restored from a checkpoint).
    /// The emitted watermark stays: it never moves backwards.
    pub fn set_config(&mut self, config: WatermarkConfig) {
        self.config = config;
    }

    /// A CDC shard this job reads: it holds the watermark at "no time yet"
    /// until its first target is reached.
    pub fn expect_cdc_source(&mut self, db: &str, shard: u32) {
        self.cdc
            .entry(db.to_string())
            .or_default()
            .entry(shard)
            .or_default();
    }

    /// Files a watermark of `(db, shard)` at commit time `t` with the end
    /// offsets `(topic, partition, end)` of the job's partitions of `db`'s
    /// change topics, read after the watermark arrived. A shard not expected
    /// yet is added.
    pub fn cdc_target(
        &mut self,
        db: &str,
        shard: u32,
        t: EventTime,
        ends: Vec<(String, i32, i64)>,
    ) {
        let s = self
            .cdc
            .entry(db.to_string())
            .or_default()
            .entry(shard)
            .or_default();
        // A target at or before the shard's watermark adds nothing.
        if s.watermark.is_some_and(|w| w >= t) {
            return;
        }
        if s.pending.len() >= MAX_PENDING {
            s.pending.pop_front();
        }
        s.pending.push_back(Target { t, ends });
        Self::advance(s, &self.consumed);
    }

    /// The job consumed `topic`/`partition` up to `next_offset` (the last
    /// processed offset + 1). Positions only move forward.
    pub fn consumed(&mut self, topic: &str, partition: i32, next_offset: i64) {
        let p = self
            .consumed
            .entry(topic.to_string())
            .or_default()
            .entry(partition)
            .or_insert(next_offset);
        if *p > next_offset {
            return;
        }
        *p = next_offset;
        for shards in self.cdc.values_mut() {
            for s in shards.values_mut() {
                Self::advance(s, &self.consumed);
            }
        }
    }

    /// A partition without watermarks that this job reads. Until it has
    /// delivered a message it holds the watermark at "no time yet", for at
    /// most `idle_timeout` from the first look.
    pub fn declare_partition(&mut self, topic: &str, partition: i32) {
        self.partitions
            .entry(topic.to_string())
            .or_default()
            .entry(partition)
            .or_default();
    }

    /// An event at event time `t` arrived on a partition without watermarks
    /// at processing time `now`. Undeclared partitions are declared.
    pub fn observed(&mut self, topic: &str, partition: i32, t: EventTime, now: Instant) {
        let p = self
            .partitions
            .entry(topic.to_string())
            .or_default()
            .entry(partition)
            .or_default();
        p.max_seen = Some(p.max_seen.map_or(t, |m| m.max(t)));
        p.last_activity = Some(now);
    }

    /// The global watermark at processing time `now`: the minimum over CDC
    /// shards and active partitions, `None` while some active source has no
    /// time yet and nothing was emitted before. Never moves backwards.
    pub fn current(&mut self, now: Instant) -> Option<EventTime> {
        let mut min: Option<EventTime> = None;
        let mut unknown = false;
        let mut any_active = false;
        for s in self.cdc.values().flat_map(|m| m.values()) {
            any_active = true;
            match s.watermark {
                Some(w) => min = Some(min.map_or(w, |m| m.min(w))),
                None => unknown = true,
            }
        }
        let ooo = self.config.max_out_of_orderness_us;
        let idle = self.config.idle_timeout;
        for p in self.partitions.values_mut().flat_map(|m| m.values_mut()) {
            let since = *p.last_activity.get_or_insert(now);
            if now.saturating_duration_since(since) >= idle {
                continue;
            }
            any_active = true;
            match p.max_seen {
                Some(m) => {
                    let w = m.saturating_sub(ooo);
                    min = Some(min.map_or(w, |x| x.min(w)));
                }
                None => unknown = true,
            }
        }
        if any_active
            && !unknown
            && let Some(m) = min
            && self.emitted.is_none_or(|e| m > e)
        {
            self.emitted = Some(m);
        }
        self.emitted
    }

    /// The watermark last returned by [`current`](Self::current), without
    /// looking at the clock.
    pub fn emitted(&self) -> Option<EventTime> {
        self.emitted
    }

    /// Next offsets consumed per topic and partition, as reported.
    pub fn positions(&self) -> &BTreeMap<String, BTreeMap<i32, i64>> {
        &self.consumed
    }

    /// Per CDC `(db, shard)`: its watermark (`None`: no target reached yet)
    /// and the number of targets waiting.
    pub fn cdc_shards(&self) -> Vec<(String, u32, Option<EventTime>, usize)> {
        self.cdc
            .iter()
            .flat_map(|(db, m)| {
                m.iter()
                    .map(|(shard, s)| (db.clone(), *shard, s.watermark, s.pending.len()))
            })
            .collect()
    }

    /// Partitions without watermarks that are idle at `now` (for logs and
    /// tests).
    pub fn idle_partitions(&self, now: Instant) -> Vec<(String, i32)> {
        self.partitions
            .iter()
            .flat_map(|(topic, m)| {
                m.iter().filter_map(move |(p, c)| {
                    c.last_activity
                        .filter(|a| now.saturating_duration_since(*a) >= self.config.idle_timeout)
                        .map(|_| (topic.clone(), *p))
                })
            })
            .collect()
    }

    /// Pops every reached target at the front of the shard's queue.
    fn advance(s: &mut CdcShard, consumed: &BTreeMap<String, BTreeMap<i32, i64>>) {
        while s
            .pending
            .front()
            .is_some_and(|t| covered(&t.ends, consumed))
        {
            let t = s.pending.pop_front().expect("front exists").t;
            s.watermark = Some(s.watermark.map_or(t, |w| w.max(t)));
        }
    }
}

/// Whether consumption reached every end (an empty partition, end 0, is
/// reached without consuming anything).
fn covered(ends: &[(String, i32, i64)], consumed: &BTreeMap<String, BTreeMap<i32, i64>>) -> bool {
    ends.iter().all(|(topic, p, end)| {
        *end <= 0
            || consumed
                .get(topic)
                .and_then(|m| m.get(p))
                .is_some_and(|next| next >= end)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ooo: i64, idle_ms: u64) -> WatermarkConfig {
        WatermarkConfig {
            max_out_of_orderness_us: ooo,
            idle_timeout: Duration::from_millis(idle_ms),
        }
    }

    fn ends(list: &[(&str, i32, i64)]) -> Vec<(String, i32, i64)> {
        list.iter()
            .map(|(t, p, e)| (t.to_string(), *p, *e))
            .collect()
    }

    #[test]
    fn a_cdc_shard_reaches_its_watermark_only_once_consumed_up_to_the_ends() {
        let now = Instant::now();
        let mut w = WatermarkTracker::new(config(0, 1000));
        w.expect_cdc_source("orders", 0);
        assert_eq!(w.current(now), None, "no target yet: no time");
        w.consumed("t.orders.orders", 0, 3);
        w.cdc_target(
            "orders",
            0,
            1_000,
            ends(&[("t.orders.orders", 0, 5), ("t.orders.payments", 0, 0)]),
        );
        assert_eq!(w.current(now), None, "offset 3 < end 5");
        w.consumed("t.orders.orders", 0, 4);
        assert_eq!(w.current(now), None);
        w.consumed("t.orders.orders", 0, 5);
        assert_eq!(w.current(now), Some(1_000));
        // Consumed beyond the ends before the target arrives: reached at once.
        w.consumed("t.orders.orders", 0, 9);
        w.cdc_target("orders", 0, 2_000, ends(&[("t.orders.orders", 0, 8)]));
        assert_eq!(w.current(now), Some(2_000));
        assert_eq!(w.cdc_shards(), vec![("orders".into(), 0, Some(2_000), 0)]);
    }

    #[test]
    fn a_lagging_shard_holds_the_minimum_and_targets_are_reached_in_order() {
        let now = Instant::now();
        let mut w = WatermarkTracker::new(config(0, 1000));
        w.expect_cdc_source("orders", 0);
        w.expect_cdc_source("orders", 1);
        // Shard 0 is idle: its topic already sits at the end.
        w.consumed("o", 0, 10);
        w.cdc_target("orders", 0, 500, ends(&[("o", 0, 10)]));
        assert_eq!(w.current(now), None, "shard 1 has no time yet");
        // Shard 1 has a backlog on partition 1.
        w.cdc_target("orders", 1, 300, ends(&[("o", 0, 10), ("o", 1, 40)]));
        w.cdc_target("orders", 1, 400, ends(&[("o", 0, 10), ("o", 1, 50)]));
        w.cdc_target("orders", 0, 900, ends(&[("o", 0, 10), ("o", 1, 50)]));
        assert_eq!(w.current(now), None);
        w.consumed("o", 1, 45);
        assert_eq!(w.current(now), Some(300), "shard 1 lags: min is 300");
        w.consumed("o", 1, 50);
        assert_eq!(w.current(now), Some(400));
        w.cdc_target("orders", 1, 1_200, ends(&[("o", 1, 50)]));
        assert_eq!(w.current(now), Some(900), "now shard 0 is the minimum");
    }

    #[test]
    fn pending_targets_are_bounded() {
        let mut w = WatermarkTracker::new(config(0, 1000));
        for i in 0..(MAX_PENDING as i64 + 10) {
            w.cdc_target("orders", 0, i + 1, ends(&[("o", 0, i + 100)]));
        }
        assert_eq!(w.cdc_shards()[0].3, MAX_PENDING);
        w.consumed("o", 0, 1_000_000);
        assert_eq!(w.current(Instant::now()), Some(MAX_PENDING as i64 + 10));
    }

    #[test]
    fn an_idle_partition_stops_holding_time_and_rejoins() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = WatermarkTracker::new(config(10, 1000));
        w.declare_partition("clicks", 0);
        w.declare_partition("clicks", 1);
        w.observed("clicks", 0, 100, t0);
        w.observed("clicks", 1, 50, t0);
        assert_eq!(w.current(t0), Some(40), "min(100, 50) - 10");
        // Partition 1 goes quiet; partition 0 moves on.
        w.observed("clicks", 0, 200, t0 + ms(500));
        assert_eq!(w.current(t0 + ms(999)), Some(40));
        w.observed("clicks", 0, 300, t0 + ms(1000));
        assert_eq!(w.current(t0 + ms(1000)), Some(290), "partition 1 idle");
        assert_eq!(w.idle_partitions(t0 + ms(1000)), vec![("clicks".into(), 1)]);
        // It rejoins with a late event: it holds time again, but the
        // watermark never moves back.
        w.observed("clicks", 1, 120, t0 + ms(1100));
        assert_eq!(w.current(t0 + ms(1100)), Some(290));
        w.observed("clicks", 0, 400, t0 + ms(1200));
        assert_eq!(
            w.current(t0 + ms(1200)),
            Some(290),
            "partition 1 holds at 110"
        );
        w.observed("clicks", 1, 350, t0 + ms(1300));
        assert_eq!(w.current(t0 + ms(1300)), Some(340));
    }

    #[test]
    fn a_declared_partition_never_seen_holds_time_for_the_idle_timeout_only() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = WatermarkTracker::new(config(0, 1000));
        w.declare_partition("clicks", 0);
        w.declare_partition("clicks", 1);
        w.observed("clicks", 0, 100, t0);
        assert_eq!(w.current(t0), None, "partition 1 has no time yet");
        w.observed("clicks", 0, 200, t0 + ms(900));
        assert_eq!(w.current(t0 + ms(999)), None);
        assert_eq!(w.current(t0 + ms(1000)), Some(200));
        // Every source idle: time stays.
        assert_eq!(w.current(t0 + ms(60_000)), Some(200));
    }

    #[test]
    fn cdc_and_clickstream_together_and_the_watermark_is_monotone() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = WatermarkTracker::new(config(100, 1000));
        w.expect_cdc_source("orders", 0);
        w.observed("clicks", 0, 5_000, t0);
        assert_eq!(w.current(t0), None);
        w.cdc_target("orders", 0, 3_000, vec![]);
        assert_eq!(w.current(t0), Some(3_000));
        w.cdc_target("orders", 0, 6_000, vec![]);
        assert_eq!(w.current(t0), Some(4_900));
        let mut last = None;
        for (i, t) in [4_000, 7_000, 6_500, 9_000].into_iter().enumerate() {
            let now = t0 + ms(100 * i as u64);
            w.observed("clicks", 0, t, now);
            let cur = w.current(now);
            assert!(cur >= last, "{cur:?} < {last:?}");
            last = cur;
        }
        assert_eq!(last, Some(6_000), "the CDC shard holds at 6000");
    }

    #[test]
    fn a_restored_tracker_keeps_event_time_and_restarts_idle_clocks() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = WatermarkTracker::new(config(0, 1000));
        w.observed("clicks", 0, 100, t0);
        w.observed("clicks", 1, 300, t0 + ms(5_000));
        w.consumed("o", 0, 7);
        w.cdc_target("orders", 0, 50, vec![("o".into(), 0, 9)]);
        assert_eq!(w.current(t0 + ms(5_000)), None, "shard 0 not reached");
        let json = serde_json::to_string(&w).unwrap();
        let mut back: WatermarkTracker = serde_json::from_str(&json).unwrap();
        assert_eq!(back.positions(), w.positions());
        let t1 = t0 + ms(10_000);
        back.consumed("o", 0, 9);
        // Both partitions are active again after the restore.
        assert_eq!(back.current(t1), Some(50));
        back.cdc_target("orders", 0, 1_000, vec![]);
        assert_eq!(back.current(t1), Some(100));
        assert_eq!(back.current(t1 + ms(1000)), Some(1_000), "both idle now");
    }
}
