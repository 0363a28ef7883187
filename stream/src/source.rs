//! The Kafka driver: one consumer over all of a job's inputs, feeding the
//! watermark tracker.
//!
//! A job reads three kinds of topic ([`TopicKind`]): CDC change topics, the
//! CDC watermark topic of each of their databases, and event topics without
//! watermarks (the clickstream). [`Driver::next`] returns the records of
//! change and event topics; it handles watermark records itself.
//!
//! Promises and how they hold:
//!
//! - **One instance owns the job.** The driver *assigns* every partition of
//!   every input topic to itself (never subscribes: a consumer-group
//!   rebalance would split the state, which lives in this process). Running
//!   two instances of one job is a deployment error; the group id is only a
//!   name for broker tools. Partition counts are read once at open: a topic
//!   that gains partitions needs a restart.
//! - **Positions are the job's, not the broker's.** Auto-commit is off;
//!   the driver seeks to the checkpoint's offsets (or the beginning), and
//!   [`Driver::positions`] gives the offsets to store in the next checkpoint.
//!   Every record, of every kind, moves its partition's position and the
//!   tracker's `consumed`.
//! - **CDC watermarks are exact** (see [`crate::watermark`]). A watermark
//!   record is parsed and kept; once no further watermark has arrived for
//!   [`WATERMARK_BATCH`] (or on the next call after that), the driver reads
//!   the end offsets of the job's partitions of that database's change
//!   topics — after every kept watermark was consumed, so the ends cover
//!   every change they vouch for — and files one target per watermark. One
//!   read serves a burst of watermarks (the replay of the watermark topic at
//!   start, one per shard per status interval). Until filed, a watermark's
//!   offset is not reported as consumed in [`Driver::positions`], so a
//!   checkpoint taken meanwhile reads it again after a restart. A record
//!   that is not a watermark is logged and skipped (it vouches for nothing).
//! - **Every shard must be expected.** Shards sharing a topic make a target
//!   of shard 1 say nothing about shard 0's changes still to be published,
//!   so the job calls `tracker_mut().expect_cdc_source(db, shard)` for every
//!   shard it knows from its configuration before using the watermark.
//!   Shards discovered through the watermark topic (read from the beginning
//!   on a first start) are added as they appear.
//! - **Partitions emptied by retention are not waited for.** At open, every
//!   partition without a start offset counts as consumed up to its log start
//!   offset, so a partition whose messages were all deleted (start = end)
//!   does not hold a CDC target forever.
//!
//! Limitation: the ends of a target are read when its watermark is
//! consumed, so a job far behind its inputs (a first start over a long
//! history) only reaches its first target after consuming everything that
//! existed then, and buffers events meanwhile. Start jobs near the head of
//! their inputs, from a checkpoint.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tributary_kafka::{KafkaConfig, kafka_err};
use tributary_model::watermark::Watermark;

use crate::checkpoint::Offsets;
use crate::watermark::WatermarkTracker;
use crate::{Error, EventTime, Result};

/// How long the driver waits for more watermarks before reading end offsets
/// once for all that arrived.
pub const WATERMARK_BATCH: Duration = Duration::from_millis(20);

/// Timeout of one metadata or offsets request.
const META_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of a start-up metadata request that times out: a broker
/// saturated by the load (tansu at ~1,000 requests/s on two cores) took
/// more than [`META_TIMEOUT`] to answer one, and a detector restarted then
/// exited instead of waiting (docs/postmortems).
const META_ATTEMPTS: u32 = 6;

/// A partition's low and high watermarks, asked again after a timeout.
fn watermarks_patiently(m: &BaseConsumer, topic: &str, p: i32) -> Result<(i64, i64)> {
    let mut attempt = 1;
    loop {
        match m.fetch_watermarks(topic, p, META_TIMEOUT) {
            Ok(w) => return Ok(w),
            Err(e)
                if attempt < META_ATTEMPTS
                    && e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::OperationTimedOut) =>
            {
                tracing::warn!(
                    topic,
                    partition = p,
                    attempt,
                    "the broker timed out on log start offsets; asking again"
                );
                std::thread::sleep(Duration::from_secs(1));
                attempt += 1;
            }
            Err(e) => return Err(kafka_err("reading log start offsets")(e).into()),
        }
    }
}

/// What a topic carries, and so how its records move time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicKind {
    /// CDC changes of database `db`; time moves through its watermarks.
    Cdc { db: String },
    /// The CDC watermark topic of database `db`.
    Watermarks { db: String },
    /// Events without watermarks; time moves through [`Driver::observe`].
    Events,
}

/// One record of a change or event topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The broker's timestamp, ms since the Unix epoch (processing time).
    pub timestamp_ms: Option<i64>,
}

/// A watermark consumed but not filed yet.
#[derive(Clone, Debug)]
struct Kept {
    topic: String,
    partition: i32,
    offset: i64,
    watermark: Watermark,
}

/// The driver without Kafka: what each record does to the tracker and the
/// positions. Pure, so it is tested without a broker.
#[derive(Debug)]
struct Core {
    kinds: BTreeMap<String, TopicKind>,
    tracker: WatermarkTracker,
    kept: Vec<Kept>,
    /// When the newest kept watermark arrived.
    kept_at: Option<Instant>,
}

/// What to do with a consumed record.
#[derive(Debug, PartialEq, Eq)]
enum Handled {
    /// Hand it to the job.
    Return,
    /// A watermark, kept until its ends are read.
    Kept,
    /// Not for the job (a malformed watermark, an unknown topic).
    Skipped,
}

impl Core {
    fn new(inputs: Vec<(String, TopicKind)>, tracker: WatermarkTracker) -> Result<Self> {
        let mut kinds = BTreeMap::new();
        for (topic, kind) in inputs {
            if let Some(old) = kinds.insert(topic.clone(), kind.clone())
                && old != kind
            {
                return Err(Error::setting(
                    "inputs",
                    format!("topic {topic} is listed as {old:?} and as {kind:?}"),
                ));
            }
        }
        if kinds.is_empty() {
            return Err(Error::setting("inputs", "a job needs at least one topic"));
        }
        Ok(Core {
            kinds,
            tracker,
            kept: Vec::new(),
            kept_at: None,
        })
    }

    fn on_record(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        payload: Option<&[u8]>,
        now: Instant,
    ) -> Handled {
        self.tracker.consumed(topic, partition, offset + 1);
        match self.kinds.get(topic) {
            Some(TopicKind::Cdc { .. } | TopicKind::Events) => Handled::Return,
            Some(TopicKind::Watermarks { db }) => {
                match Watermark::from_json(payload.unwrap_or_default()) {
                    Ok(w) if w.db == *db => {
                        self.kept.push(Kept {
                            topic: topic.to_string(),
                            partition,
                            offset,
                            watermark: w,
                        });
                        self.kept_at = Some(now);
                        Handled::Kept
                    }
                    Ok(w) => {
                        tracing::warn!(topic, partition, offset, db = %w.db, expected = %db, "a watermark of another database; ignored");
                        Handled::Skipped
                    }
                    Err(e) => {
                        tracing::warn!(topic, partition, offset, error = %e, "not a watermark; ignored");
                        Handled::Skipped
                    }
                }
            }
            None => Handled::Skipped,
        }
    }

    /// Whether the kept watermarks should be filed now.
    fn due(&self, now: Instant) -> bool {
        self.kept_at
            .is_some_and(|at| now.saturating_duration_since(at) >= WATERMARK_BATCH)
    }

    /// The change topics whose ends the kept watermarks need.
    fn topics_to_read(&self) -> Vec<String> {
        self.kinds
            .iter()
            .filter(|(_, k)| {
                matches!(k, TopicKind::Cdc { db } if self.kept.iter().any(|w| w.watermark.db == *db))
            })
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Files every kept watermark with `ends`, read after they arrived.
    fn file(&mut self, ends: &Offsets) {
        for k in std::mem::take(&mut self.kept) {
            let w = k.watermark;
            let per_db: Vec<(String, i32, i64)> = self
                .kinds
                .iter()
                .filter(|(_, kind)| matches!(kind, TopicKind::Cdc { db } if *db == w.db))
                .flat_map(|(topic, _)| {
                    ends.get(topic)
                        .into_iter()
                        .flatten()
                        .map(|(p, e)| (topic.clone(), *p, *e))
                })
                .collect();
            tracing::debug!(db = %w.db, shard = w.shard, commit_ts_us = w.commit_ts_us, "CDC watermark filed");
            self.tracker
                .cdc_target(&w.db, w.shard, w.commit_ts_us, per_db);
        }
        self.kept_at = None;
    }

    /// Consumed positions, with each partition that holds a kept watermark
    /// held at the oldest one (so a restart reads it again).
    fn positions(&self) -> Offsets {
        let mut out = self.tracker.positions().clone();
        for k in &self.kept {
            let p = out
                .entry(k.topic.clone())
                .or_default()
                .entry(k.partition)
                .or_insert(k.offset);
            *p = (*p).min(k.offset);
        }
        out
    }
}

/// The job's consumer (see the module docs).
pub struct Driver {
    consumer: StreamConsumer,
    meta: Arc<BaseConsumer>,
    core: Core,
    /// The end offsets read for the kept watermarks, while in flight. Kept
    /// here, not in a `next` future, so a caller that drops `next` (a
    /// `select!` with a faster branch) resumes the same read instead of
    /// starting it again: a read slower than the caller's shortest tick
    /// would otherwise never finish, and time would stop.
    filing: Option<tokio::task::JoinHandle<Result<Offsets>>>,
}

impl Driver {
    /// Assigns every partition of every input topic, from `start` (next
    /// offsets, e.g. a checkpoint's) or the beginning. `tracker` is a fresh
    /// one or the checkpoint's. Fails with [`Error::NoTopic`] when an input
    /// topic does not exist (yet).
    pub async fn open(
        config: &KafkaConfig,
        group: &str,
        inputs: Vec<(String, TopicKind)>,
        tracker: WatermarkTracker,
        start: &Offsets,
    ) -> Result<Driver> {
        let mut core = Core::new(inputs, tracker)?;
        let mut client = tributary_kafka::consumer_config(config, group);
        // Set here again: the promise depends on it.
        client.set("enable.auto.commit", "false");
        let consumer: StreamConsumer = client
            .create()
            .map_err(kafka_err("creating the stream consumer"))?;
        let meta: Arc<BaseConsumer> = Arc::new(
            client
                .create()
                .map_err(kafka_err("creating the offsets client"))?,
        );
        // Partition counts and log start offsets (blocking calls).
        let topics: Vec<String> = core.kinds.keys().cloned().collect();
        let m = meta.clone();
        let layout = tokio::task::spawn_blocking(move || {
            let mut out: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
            for topic in topics {
                let n = tributary_kafka::partition_count(&*m, &topic, META_TIMEOUT)?;
                if n == 0 {
                    return Err(Error::NoTopic { topic });
                }
                let lows = out.entry(topic.clone()).or_default();
                for p in 0..n {
                    let (low, _) = watermarks_patiently(&m, &topic, p)?;
                    lows.insert(p, low);
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| Error::Internal(format!("the topic metadata task failed: {e}")))??;
        let mut assignment = TopicPartitionList::new();
        for (topic, lows) in &layout {
            let kind = &core.kinds[topic];
            for (p, low) in lows {
                let from = start.get(topic).and_then(|m| m.get(p)).copied();
                let offset = match from {
                    Some(o) => Offset::Offset(o),
                    None => Offset::Beginning,
                };
                assignment
                    .add_partition_offset(topic, *p, offset)
                    .map_err(kafka_err("assigning input partitions"))?;
                // Nothing below the start (or the log start) is coming.
                core.tracker
                    .consumed(topic, *p, from.unwrap_or(*low).max(*low));
                if *kind == TopicKind::Events {
                    core.tracker.declare_partition(topic, *p);
                }
            }
        }
        consumer
            .assign(&assignment)
            .map_err(kafka_err("assigning input partitions"))?;
        tracing::info!(
            group,
            topics = ?layout.iter().map(|(t, p)| (t.as_str(), p.len())).collect::<Vec<_>>(),
            "stream inputs assigned"
        );
        Ok(Driver {
            consumer,
            meta,
            core,
            filing: None,
        })
    }

    /// The next record of a change or event topic. Watermark records are
    /// handled inside. Cancel-safe: dropping the future loses nothing, and a
    /// read of end offsets it started goes on at the next call.
    pub async fn next(&mut self) -> Result<Record> {
        loop {
            if self.filing.is_none() && self.core.due(Instant::now()) {
                self.filing = Some(self.read_ends());
            }
            if let Some(task) = self.filing.as_mut() {
                // Nothing is received meanwhile, so the kept watermarks are
                // the ones the read started for.
                let ends = task.await;
                self.filing = None;
                let ends = ends
                    .map_err(|e| Error::Internal(format!("the end offsets task failed: {e}")))??;
                self.core.file(&ends);
                continue;
            }
            let batch_end = self
                .core
                .kept_at
                .map(|at| tokio::time::Instant::from_std(at + WATERMARK_BATCH));
            let m = tokio::select! {
                biased;
                _ = sleep_until(batch_end) => continue,
                m = self.consumer.recv() => m.map_err(kafka_err("consuming input records"))?,
            };
            let handled = self.core.on_record(
                m.topic(),
                m.partition(),
                m.offset(),
                m.payload(),
                Instant::now(),
            );
            if handled == Handled::Return {
                return Ok(Record {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                    timestamp_ms: m.timestamp().to_millis(),
                });
            }
        }
    }

    /// Starts reading the end offsets the kept watermarks need.
    fn read_ends(&self) -> tokio::task::JoinHandle<Result<Offsets>> {
        let topics = self.core.topics_to_read();
        let m = self.meta.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Offsets::new();
            for topic in topics {
                out.insert(
                    topic.clone(),
                    tributary_kafka::end_offsets(&*m, &topic, META_TIMEOUT)?,
                );
            }
            Ok(out)
        })
    }

    /// An event of an [`TopicKind::Events`] topic at event time `t` (records
    /// of other kinds are ignored: their time moves through watermarks).
    pub fn observe(&mut self, record: &Record, t: EventTime) {
        if self.core.kinds.get(&record.topic) == Some(&TopicKind::Events) {
            self.core
                .tracker
                .observed(&record.topic, record.partition, t, Instant::now());
        }
    }

    /// The global watermark now.
    pub fn watermark(&mut self, now: Instant) -> Option<EventTime> {
        self.core.tracker.current(now)
    }

    /// Next offsets per topic and partition for the checkpoint, watermark
    /// topics included.
    pub fn positions(&self) -> Offsets {
        self.core.positions()
    }

    pub fn tracker(&self) -> &WatermarkTracker {
        &self.core.tracker
    }

    pub fn tracker_mut(&mut self) -> &mut WatermarkTracker {
        &mut self.core.tracker
    }

    pub fn into_tracker(self) -> WatermarkTracker {
        self.core.tracker
    }

    /// The kind of an input topic.
    pub fn kind(&self, topic: &str) -> Option<&TopicKind> {
        self.core.kinds.get(topic)
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watermark::WatermarkConfig;

    const WM: &str = "t.orders._watermarks";
    const ORDERS: &str = "t.orders.orders";
    const PAYMENTS: &str = "t.orders.payments";
    const CLICKS: &str = "t.events.clickstream";

    fn core() -> Core {
        let mut tracker = WatermarkTracker::new(WatermarkConfig {
            max_out_of_orderness_us: 0,
            idle_timeout: Duration::from_secs(5),
        });
        tracker.expect_cdc_source("orders", 0);
        Core::new(
            vec![
                (
                    ORDERS.into(),
                    TopicKind::Cdc {
                        db: "orders".into(),
                    },
                ),
                (
                    PAYMENTS.into(),
                    TopicKind::Cdc {
                        db: "orders".into(),
                    },
                ),
                (
                    WM.into(),
                    TopicKind::Watermarks {
                        db: "orders".into(),
                    },
                ),
                (CLICKS.into(), TopicKind::Events),
                (
                    "t.catalog.products".into(),
                    TopicKind::Cdc {
                        db: "catalog".into(),
                    },
                ),
            ],
            tracker,
        )
        .unwrap()
    }

    fn watermark(shard: u32, t: i64) -> Vec<u8> {
        Watermark::new("orders", shard, "0/10".parse().unwrap(), t, t).to_json()
    }

    #[test]
    fn watermark_records_become_targets_with_the_ends_read_after_them() {
        let now = Instant::now();
        let mut c = core();
        assert_eq!(c.on_record(ORDERS, 0, 0, Some(b"{}"), now), Handled::Return);
        assert_eq!(
            c.on_record(WM, 0, 0, Some(&watermark(0, 1_000)), now),
            Handled::Kept
        );
        assert_eq!(
            c.on_record(WM, 0, 1, Some(&watermark(1, 900)), now),
            Handled::Kept
        );
        assert_eq!(
            c.on_record(WM, 0, 2, Some(b"garbage"), now),
            Handled::Skipped
        );
        assert!(!c.due(now));
        assert!(c.due(now + WATERMARK_BATCH));
        // Only the orders database's change topics are read.
        assert_eq!(
            c.topics_to_read(),
            vec![ORDERS.to_string(), PAYMENTS.to_string()]
        );
        // Kept watermarks are not consumed yet, as far as a checkpoint knows.
        assert_eq!(c.positions()[WM][&0], 0);
        let ends = Offsets::from([
            (ORDERS.to_string(), BTreeMap::from([(0, 3), (1, 0)])),
            (PAYMENTS.to_string(), BTreeMap::from([(0, 2)])),
        ]);
        c.file(&ends);
        assert_eq!(c.positions()[WM][&0], 3);
        assert!(!c.due(now + WATERMARK_BATCH));
        assert_eq!(c.tracker.current(now), None, "orders 1 < 3, payments 0 < 2");
        c.on_record(ORDERS, 0, 1, None, now);
        c.on_record(ORDERS, 0, 2, None, now);
        assert_eq!(c.tracker.current(now), None);
        c.on_record(PAYMENTS, 0, 1, None, now);
        // Shard 1 appeared through its watermark; both reached: min is 900.
        assert_eq!(c.tracker.current(now), Some(900));
        assert_eq!(c.on_record(CLICKS, 0, 0, None, now), Handled::Return);
        assert_eq!(c.on_record("t.unknown", 0, 0, None, now), Handled::Skipped);
    }

    #[test]
    fn a_watermark_of_another_database_is_skipped_and_inputs_are_checked() {
        let mut c = core();
        let other = Watermark::new("catalog", 0, "0/10".parse().unwrap(), 5, 5).to_json();
        assert_eq!(
            c.on_record(WM, 0, 0, Some(&other), Instant::now()),
            Handled::Skipped
        );
        assert!(c.kept.is_empty());
        let tracker = c.tracker.clone();
        let e = Core::new(
            vec![
                ("x".into(), TopicKind::Events),
                (
                    "x".into(),
                    TopicKind::Cdc {
                        db: "orders".into(),
                    },
                ),
            ],
            tracker.clone(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("topic x is listed as"), "{e}");
        assert!(Core::new(vec![], tracker).is_err());
    }
}
