//! The product cache's invalidation stream: a consumer of the products
//! change topic that fences every changed product in Redis (see the
//! [parent module](super)).
//!
//! It reads every partition itself (no consumer group: each replica of the
//! service runs one, and their writes are idempotent compare-and-sets).
//! After each change it records the partition's next offset in Redis
//! (`tributary:cache:offsets:<topic>`), so a
//! restart resumes there; a partition with no recorded offset (a new or
//! restarted, empty Redis) starts at its end.
//!
//! It also proves how far behind it is: every [`PROBE_EVERY`] it reads the
//! topic's end offsets at time T; once it has applied everything up to
//! them, the source is applied through T ([`ProductCache::applied_through_ms`]).
//! A dead broker or a stuck consumer stops that clock, and reads bypass
//! the cache.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use redis::aio::MultiplexedConnection;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tributary_model::domain::{TABLES, topic_of};
use tributary_model::event::{ChangeEvent, Op};

use super::{DELETED_VERSION, INVALIDATIONS, LAG, ProductCache, now_ms, offsets_key, product_key};

/// How often the consumer reads the topic's end offsets to prove it is
/// caught up.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Pause before trying the broker or Redis again.
const BACKOFF: Duration = Duration::from_millis(200);

const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// The products change topic under `prefix`.
pub(crate) fn products_topic(prefix: &str) -> String {
    let spec = TABLES
        .iter()
        .find(|t| t.name == "products")
        .expect("products is a replicated table");
    topic_of(prefix, spec)
}

/// Runs until `shutdown`; errors are retried (the cache is bypassed while
/// the stream is behind, so nothing is served stale meanwhile).
pub(crate) async fn run(cache: Arc<ProductCache>, shutdown: CancellationToken) {
    let topic = products_topic(&cache.kafka.topic_prefix);
    while !shutdown.is_cancelled() {
        if let Err(error) = consume(&cache, &topic, &shutdown).await {
            tracing::warn!(%error, "product cache invalidation stream failed; restarting it");
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// The next offset to apply, by partition.
type Positions = BTreeMap<i32, i64>;

async fn consume(
    cache: &ProductCache,
    topic: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let consumer: Arc<StreamConsumer> = Arc::new(
        tributary_kafka::consumer_config(&cache.kafka, "tributary-product-cache")
            .set("fetch.wait.max.ms", cache.fetch_wait_ms.to_string())
            .create()?,
    );
    let ends = watermarks(&consumer, topic).await?;
    if ends.is_empty() {
        anyhow::bail!("topic {topic} does not exist yet");
    }
    let offsets = offsets_key(topic);
    let Some(mut conn) = redis_connection(cache, shutdown).await else {
        return Ok(());
    };
    let stored: BTreeMap<i32, i64> = redis::cmd("HGETALL")
        .arg(&offsets)
        .query_async(&mut conn)
        .await?;
    let mut positions: Positions = ends
        .iter()
        .map(|(p, end)| (*p, stored.get(p).copied().unwrap_or(*end)))
        .collect();
    let mut assignment = TopicPartitionList::new();
    for (p, offset) in &positions {
        assignment.add_partition_offset(topic, *p, Offset::Offset(*offset))?;
    }
    consumer.assign(&assignment)?;
    tracing::info!(
        topic,
        partitions = positions.len(),
        "product cache invalidation stream started"
    );

    // (T, end offsets at T) of the last probe not yet reached.
    let mut pending: Option<(u64, Positions)> = None;
    let mut probe = tokio::time::interval(PROBE_EVERY);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = probe.tick(), if pending.is_none() => {
                let at = now_ms();
                let ends = watermarks(&consumer, topic).await?;
                if !ends.keys().eq(positions.keys()) {
                    anyhow::bail!("the partitions of {topic} changed");
                }
                pending = Some((at, ends));
            }
            message = consumer.recv() => {
                let message = message?;
                let (partition, next) = (message.partition(), message.offset() + 1);
                let fence = message.payload().and_then(fence_of_payload);
                // Never skipped: a lost fence could leave a stale value.
                while let Err(e) = write(cache, &mut conn, fence.as_ref(), &offsets, partition, next).await {
                    cache.failed(&e);
                    match redis_connection(cache, shutdown).await {
                        Some(c) => conn = c,
                        None => return Ok(()),
                    }
                }
                if let Some(f) = &fence {
                    INVALIDATIONS.inc();
                    if !f.snapshot {
                        let lag_us = tributary_metrics::otlp::now_us() - f.ts_us;
                        LAG.observe(lag_us.max(0) as f64 / 1e6);
                    }
                }
                positions.insert(partition, next);
            }
        }
        if let Some((at, ends)) = &pending
            && ends
                .iter()
                .all(|(p, end)| positions.get(p).is_some_and(|pos| pos >= end))
        {
            cache.applied_through_ms.fetch_max(*at, Ordering::Relaxed);
            pending = None;
        }
    }
}

async fn watermarks(consumer: &Arc<StreamConsumer>, topic: &str) -> anyhow::Result<Positions> {
    let (c, t) = (consumer.clone(), topic.to_owned());
    Ok(
        tokio::task::spawn_blocking(move || {
            tributary_kafka::end_offsets(&*c, &t, METADATA_TIMEOUT)
        })
        .await??,
    )
}

/// A Redis connection, waiting for one as long as it takes; `None` once
/// `shutdown` is cancelled.
async fn redis_connection(
    cache: &ProductCache,
    shutdown: &CancellationToken,
) -> Option<MultiplexedConnection> {
    loop {
        if let Some(c) = cache.connection().await {
            return Some(c);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(BACKOFF) => {}
        }
    }
}

/// The product a change is about and the version it fences at.
fn fence_of(event: &ChangeEvent) -> Option<(i64, i64)> {
    let int = |v: Option<&Value>| match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    let row = event.row()?;
    let id = int(row.get("id"))?;
    let version = match event.op {
        Op::Delete => DELETED_VERSION,
        _ => int(row.get("version"))?,
    };
    Some((id, version))
}

/// What one change writes to Redis.
struct Fence {
    key: String,
    version: i64,
    lsn: String,
    ts_us: i64,
    snapshot: bool,
}

/// The fence of one change event; `None` (logged) for an event that does
/// not parse or names no product version.
fn fence_of_payload(payload: &[u8]) -> Option<Fence> {
    let event = match ChangeEvent::from_json(payload) {
        Ok(e) => e,
        Err(error) => {
            tracing::error!(%error, "product cache: unreadable change event skipped");
            return None;
        }
    };
    let Some((id, version)) = fence_of(&event) else {
        // Changes from before products had a version: no cache then.
        tracing::debug!(event = %event.event_id, "product change without id or version");
        return None;
    };
    Some(Fence {
        key: product_key(id),
        version,
        lsn: event.source.lsn.to_string(),
        ts_us: event.source.ts_us,
        snapshot: event.source.snapshot,
    })
}

/// The change's fence, then the partition's next offset: a crash between
/// the two replays the fence, which is idempotent.
async fn write(
    cache: &ProductCache,
    conn: &mut MultiplexedConnection,
    fence: Option<&Fence>,
    offsets: &str,
    partition: i32,
    next: i64,
) -> redis::RedisResult<()> {
    if let Some(f) = fence {
        cache
            .set_if_newer(conn, &f.key, f.version, "", &f.lsn, f.ts_us)
            .await?;
    }
    redis::cmd("HSET")
        .arg(offsets)
        .arg(partition)
        .arg(next)
        .query_async(conn)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_fences_its_product_at_its_version() {
        let event = |op: &str, row: &str| -> ChangeEvent {
            let image = if op == "d" { "before" } else { "after" };
            serde_json::from_str(&format!(
                r#"{{"{image}": {row}, "op": "{op}", "ts_ms": 0, "transaction": null,
                    "event_id": "catalog.0/0/0/1", "columns": [],
                    "source": {{"version": "1", "connector": "tributary", "db": "catalog",
                    "shard": 0, "schema": "public", "table": "products", "lsn": 16,
                    "ordinal": 1, "ts_us": 0, "tx_id": null, "snapshot": false}}}}"#
            ))
            .unwrap()
        };
        assert_eq!(
            fence_of(&event("u", r#"{"id": 7, "version": 3}"#)),
            Some((7, 3))
        );
        assert_eq!(
            fence_of(&event("c", r#"{"id": "7", "version": "1"}"#)),
            Some((7, 1))
        );
        assert_eq!(
            fence_of(&event("d", r#"{"id": 7}"#)),
            Some((7, DELETED_VERSION))
        );
        // A change from before the version column: nothing to fence with.
        assert_eq!(fence_of(&event("u", r#"{"id": 7}"#)), None);
    }
}
