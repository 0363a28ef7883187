//! Offsets the lake needs that the broker no longer holds.
//!
//! Ingest resumes each partition at the offset its last commit recorded
//! (or at the start, for a partition it never read). When the broker's
//! retention deleted messages below that point's successor (the
//! partition's log now starts above it), the changes in between can never
//! be replayed: the consumer would silently jump to the log start (its
//! `auto.offset.reset`), and silver would miss them. That happens after a
//! lake restore from a backup older than the topics' retention, or when an
//! ingester was stopped for longer than it. It is found, said and counted
//! here, never skipped in silence: the ingester logs an error naming the
//! table and the offsets, and counts them in
//! `tributary_lake_retention_gap_offsets_total{table}`; `tributary lake
//! restore` requests the re-snapshot of each such table from the CDC
//! reader, which replaces the table's rows with the source's (the slot-loss
//! path).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use tributary_kafka::{KafkaConfig, kafka_err};
use tributary_model::domain::{TABLES, topic_of};

use super::resume::{committed_offsets, resume_at};
use crate::{Lake, Result};

/// One partition whose needed offsets are gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionGap {
    pub table: String,
    pub topic: String,
    pub partition: i32,
    /// Where ingest resumes.
    pub from: i64,
    /// The partition's first offset still held.
    pub log_start: i64,
}

impl RetentionGap {
    /// How many offsets are lost.
    pub fn lost(&self) -> i64 {
        self.log_start - self.from
    }
}

impl std::fmt::Display for RetentionGap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} (table {}): the lake resumes at offset {} but the broker's log starts at {}; {} messages are gone",
            self.topic,
            self.partition,
            self.table,
            self.from,
            self.log_start,
            self.lost()
        )
    }
}

/// The gap of resuming at `from` a partition whose log starts at
/// `log_start`, if any.
pub(crate) fn gap(
    table: &str,
    topic: &str,
    partition: i32,
    from: i64,
    log_start: i64,
) -> Option<RetentionGap> {
    (from < log_start).then(|| RetentionGap {
        table: table.to_string(),
        topic: topic.to_string(),
        partition,
        from,
        log_start,
    })
}

/// The first offset `consumer`'s broker holds of `topic`/`partition`.
pub(crate) fn log_start(consumer: &impl Consumer, topic: &str, partition: i32) -> Result<i64> {
    let (low, _) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .map_err(kafka_err(&format!(
            "reading the offsets of {topic}/{partition}"
        )))?;
    Ok(low)
}

/// Every gap between the offsets `lake`'s tables recorded (for ingest
/// group `group`) and what `kafka` still holds, over the topics that exist.
pub async fn retention_gaps(
    lake: &Lake,
    kafka: &KafkaConfig,
    group: &str,
) -> Result<Vec<RetentionGap>> {
    let consumer: BaseConsumer = tributary_kafka::consumer_config(kafka, group)
        .create()
        .map_err(kafka_err("creating a consumer"))?;
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(kafka_err("reading topic metadata"))?;
    let mut out = Vec::new();
    for t in TABLES {
        let topic = topic_of(&kafka.topic_prefix, t);
        let Some(partitions) = md
            .topics()
            .iter()
            .find(|m| m.name() == topic && m.error().is_none())
            .map(|m| m.partitions().len() as i32)
        else {
            continue;
        };
        let (bronze, silver) = committed_offsets(lake, group, t.name, &topic, partitions).await?;
        for p in 0..partitions {
            let from = resume_at(&bronze, &silver, p);
            if let Some(g) = gap(t.name, &topic, p, from, log_start(&consumer, &topic, p)?) {
                out.push(g);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_is_what_the_log_lost_below_the_resume_point() {
        assert_eq!(
            gap("orders", "t", 0, 10, 10),
            None,
            "resuming at the log start"
        );
        assert_eq!(
            gap("orders", "t", 0, 12, 10),
            None,
            "resuming inside the log"
        );
        assert_eq!(gap("orders", "t", 0, 0, 0), None, "a fresh partition");
        let g = gap("orders", "t", 3, 4, 10).unwrap();
        assert_eq!((g.partition, g.lost()), (3, 6));
        assert!(g.to_string().contains("t/3 (table orders)"), "{g}");
        // Never read, and the start already deleted: the snapshot is gone.
        assert_eq!(gap("orders", "t", 0, 0, 7).unwrap().lost(), 7);
    }
}
