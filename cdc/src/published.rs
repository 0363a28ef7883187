//! The newest position of one shard that is in Kafka.
//!
//! After a failover the new primary's WAL must be moved past everything the
//! reader published from the old one ([`crate::slot::advance_wal_past`]).
//! A reader that ran through the failover remembers that position; a reader
//! that died with the primary (same machine, same crash) starts without it.
//! What it may have published is in the broker, though: every change event
//! names its shard and its transaction's commit position, and every
//! watermark names a durable commit of its shard. So on that path the
//! reader reads the tail of each partition of its database's change topics
//! and of the watermark topic, and takes the newest position of its shard.
//!
//! One producer writes a shard's changes into a partition in commit order,
//! so the newest of them is among the last of that shard in the partition:
//! each partition is read backwards in windows of [`WINDOW`] messages until
//! a window holds one of the shard's (or the partition's start is reached,
//! or [`MOST`] messages were read, which is logged). Older changes of the
//! shard that retention removed are older than that and do not matter.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tributary_kafka::{KafkaConfig, kafka_err};
use tributary_model::event::ChangeEvent;
use tributary_model::lsn::Lsn;
use tributary_model::watermark::{Watermark, watermark_topic};

use crate::source::SourceDb;
use crate::{Error, Result};

/// Messages read per step back.
const WINDOW: i64 = 2_000;
/// Most messages read from one partition.
const MOST: i64 = 200_000;
const TIMEOUT: Duration = Duration::from_secs(10);

/// The newest commit position of `source`'s shard among the messages in its
/// database's change topics and watermark topic (`0/0`: none).
pub async fn high_water(kafka: &KafkaConfig, source: &SourceDb) -> Result<Lsn> {
    let kafka = kafka.clone();
    let source = source.clone();
    tokio::task::spawn_blocking(move || high_water_blocking(&kafka, &source))
        .await
        .map_err(|e| Error::Internal(format!("the published-position task failed: {e}")))?
}

fn high_water_blocking(kafka: &KafkaConfig, source: &SourceDb) -> Result<Lsn> {
    let mut config = tributary_kafka::consumer_config(kafka, "tributary-cdc-high-water");
    config.set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config
        .create()
        .map_err(kafka_err("creating the published-position reader"))?;
    let mut topics: Vec<String> = source
        .tables
        .iter()
        .map(|t| tributary_model::domain::topic_name(&kafka.topic_prefix, &source.db, t))
        .collect();
    topics.push(watermark_topic(&kafka.topic_prefix, &source.db));
    let mut newest = Lsn::ZERO;
    for topic in &topics {
        let partitions = match tributary_kafka::partition_count(&consumer, topic, TIMEOUT) {
            Ok(n) => n,
            // A topic that does not exist holds nothing of ours.
            Err(_) => continue,
        };
        for p in 0..partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, TIMEOUT)
                .map_err(kafka_err("reading a partition's offsets"))?;
            if let Some(lsn) = newest_in_partition(&consumer, source, topic, p, low, high)? {
                newest = newest.max(lsn);
            }
        }
    }
    Ok(newest)
}

/// The newest position of the shard in `topic`/`p`, reading back from the
/// end in windows.
fn newest_in_partition(
    consumer: &BaseConsumer,
    source: &SourceDb,
    topic: &str,
    p: i32,
    low: i64,
    high: i64,
) -> Result<Option<Lsn>> {
    let mut end = high;
    while end > low {
        if high - end >= MOST {
            tracing::warn!(topic, partition = p, read = high - end, db = %source.db, shard = source.shard,
                "no change of this shard among the newest messages of the partition; not reading further");
            return Ok(None);
        }
        let start = (end - WINDOW).max(low);
        let found = read_range(consumer, source, topic, p, start, end)?;
        if found.is_some() {
            return Ok(found);
        }
        end = start;
    }
    Ok(None)
}

/// The newest position of the shard among offsets `start..end`.
fn read_range(
    consumer: &BaseConsumer,
    source: &SourceDb,
    topic: &str,
    p: i32,
    start: i64,
    end: i64,
) -> Result<Option<Lsn>> {
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, p, Offset::Offset(start))
        .map_err(kafka_err("assigning a partition"))?;
    consumer
        .assign(&assignment)
        .map_err(kafka_err("assigning a partition"))?;
    let mut newest: Option<Lsn> = None;
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut next = start;
    while next < end {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            if std::time::Instant::now() > deadline {
                return Err(Error::Internal(format!(
                    "reading {topic}/{p} offsets {start}..{end}: nothing after offset {next} within {} s",
                    TIMEOUT.as_secs()
                )));
            }
            continue;
        };
        let message = message.map_err(kafka_err("reading a partition"))?;
        next = message.offset() + 1;
        if message.offset() >= end {
            break;
        }
        let Some(payload) = message.payload() else {
            continue;
        };
        if let Some(lsn) = position_of(payload, source) {
            newest = Some(newest.map_or(lsn, |n| n.max(lsn)));
        }
    }
    Ok(newest)
}

/// The commit position a message vouches for, when it is the shard's.
fn position_of(payload: &[u8], source: &SourceDb) -> Option<Lsn> {
    if let Ok(w) = Watermark::from_json(payload) {
        return (w.db == source.db && w.shard == source.shard)
            .then(|| w.lsn.parse().ok())
            .flatten();
    }
    let event = ChangeEvent::from_json(payload).ok()?;
    (event.source.db == source.db && event.source.shard == source.shard).then_some(event.source.lsn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_shards_own_positions_count() {
        let source = SourceDb {
            db: "orders".into(),
            shard: 1,
            dsn: String::new(),
            tables: vec!["orders".into()],
        };
        let w = |shard| Watermark::new("orders", shard, "0/5000".parse().unwrap(), 1, 2).to_json();
        assert_eq!(position_of(&w(1), &source), Some("0/5000".parse().unwrap()));
        assert_eq!(position_of(&w(0), &source), None);
        assert_eq!(position_of(b"not json", &source), None);
    }
}
