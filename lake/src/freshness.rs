//! Freshness: how far behind its sources each silver table is.
//!
//! A table is *complete up to* time `t` when every change its sources
//! committed at or before `t` is in silver. Its freshness is `now - t`.
//!
//! How `t` is found, with the CDC watermarks:
//!
//! 1. The reader of each (db, shard) publishes `{db, shard, lsn L, commit_ts_us
//!    t}` to `<prefix>.<db>._watermarks` only after the broker acknowledged
//!    every change of that shard with commit LSN <= L. So when a watermark is
//!    in Kafka, every change it covers already sits in its partition, below
//!    that partition's end offset.
//! 2. [`follow_watermarks`] consumes those topics. For each watermark it
//!    reads the end offsets of every partition of every table of `db` *after*
//!    the watermark arrived: those ends cover every change of the shard up to
//!    `L`, whatever table it touched. It files a target `(shard, t, ends)`
//!    for each table.
//! 3. Once a table's silver offsets (the `txn` versions of its silver
//!    commits) reach a target's ends on every partition, silver holds every
//!    change of that shard committed up to `t`. The table is complete up to
//!    the minimum of that per shard over all shards of its database that
//!    publish watermarks.
//!
//! This holds for an idle table as well: it has no changes, so its offsets
//! already sit at the ends, and each new watermark makes it complete up to a
//! later `t` without a single change flowing. A table with a backlog only
//! becomes complete up to `t` once ingest drained the backlog that existed
//! when the watermark arrived.
//!
//! Without watermarks (an older reader, or before the first target of every
//! shard is covered) the fallback is the newest source commit time silver
//! applied. That says how old the newest change in silver is; it grows on
//! an idle table and can read fresher than the truth while a backlog of
//! another shard drains, so it is labelled `commit_ts` wherever it shows.
//!
//! Where it shows:
//! - `tributary_lake_silver_freshness_seconds{table}` (gauge, computed at
//!   scrape time from the stored instant) and `tributary_lake_freshness_seconds`
//!   (histogram: Postgres commit to visible in silver, one observation per
//!   streamed change when its silver commit is done).
//! - Every silver commit of ingest carries [`METADATA_KEY`] in its Delta
//!   `commitInfo`, so `tributary status` reads freshness from the lake alone,
//!   also while the ingester is down (then it grows, as it should). An idle
//!   table gets an offsets-only commit that restates its offsets and records
//!   the new instant, at most once per `ingest.freshness_record_ms`.
//!
//! State is per process (like the metrics): the ingest loop reports offsets
//! and commits, the watermark follower reports targets.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tributary_kafka::{KafkaConfig, kafka_err};
use tributary_model::backoff::Backoff;
use tributary_model::domain::{TABLES, topic_of};
use tributary_model::error_chain;
use tributary_model::pgtype::format_utc_micros;
use tributary_model::watermark::{Watermark, watermark_topic};

use crate::{Error, Lake, Result};

/// The key of the freshness record in a silver commit's `commitInfo`.
pub const METADATA_KEY: &str = "tributary.freshness";

/// Most targets kept per (table, shard): a table whose ingest stopped keeps
/// receiving them. Dropping the oldest only delays completeness (a later
/// target covers more offsets and a later time).
const MAX_PENDING: usize = 4096;

/// Where a table's "complete up to" instant came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// Watermarks of every shard of the table's database.
    Watermarks,
    /// The newest source commit time applied (no watermarks).
    CommitTs,
}

impl Basis {
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Watermarks => "watermarks",
            Basis::CommitTs => "commit_ts",
        }
    }
}

/// What a silver commit records under [`METADATA_KEY`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// Every source change committed at or before this instant is in silver.
    pub complete_up_to_us: i64,
    pub complete_up_to: String,
    pub basis: Basis,
    /// Per shard, when `basis` is watermarks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shards: BTreeMap<u32, i64>,
}

impl Record {
    fn new(complete_up_to_us: i64, basis: Basis, shards: BTreeMap<u32, i64>) -> Record {
        Record {
            complete_up_to_us,
            complete_up_to: format_utc_micros(complete_up_to_us),
            basis,
            shards,
        }
    }

    /// The commit metadata that carries this record.
    pub(crate) fn metadata(&self) -> Vec<(String, Value)> {
        vec![(
            METADATA_KEY.to_string(),
            serde_json::to_value(self).expect("freshness record serialises"),
        )]
    }
}

struct Target {
    commit_ts_us: i64,
    ends: HashMap<i32, i64>,
}

#[derive(Default)]
struct TableFreshness {
    /// Silver's next offset per partition, as far as this process knows.
    silver_next: HashMap<i32, i64>,
    /// Targets not yet reached, per shard, oldest first.
    pending: BTreeMap<u32, VecDeque<Target>>,
    /// Per shard: silver holds every change committed up to this time.
    complete: BTreeMap<u32, i64>,
    /// The newest source commit time applied to silver.
    newest_applied_us: Option<i64>,
    /// The last record written to a silver commit, and when.
    recorded: Option<(i64, Instant)>,
    /// The topic's end offsets read at the newest watermark, per partition.
    ends: HashMap<i32, i64>,
}

#[derive(Default)]
struct Registry {
    tables: HashMap<String, TableFreshness>,
    /// Shards that publish watermarks, per database.
    shards: HashMap<String, BTreeSet<u32>>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Mutex::default);

fn db_of(table: &str) -> &'static str {
    tributary_model::domain::table(table).map_or("", |t| t.db.name())
}

fn covered(ends: &HashMap<i32, i64>, offsets: &HashMap<i32, i64>) -> bool {
    ends.iter()
        .all(|(p, e)| *e <= 0 || offsets.get(p).is_some_and(|o| o >= e))
}

impl Registry {
    /// The record for `table` if silver's offsets were `offsets` and the
    /// newest applied commit time `newest`.
    fn record_at(
        &self,
        table: &str,
        offsets: &HashMap<i32, i64>,
        newest: Option<i64>,
    ) -> Option<Record> {
        let t = self.tables.get(table);
        let shards = self.shards.get(db_of(table));
        if let (Some(t), Some(shards)) = (t, shards)
            && !shards.is_empty()
        {
            let mut per_shard = BTreeMap::new();
            for s in shards {
                let mut best = t.complete.get(s).copied();
                if let Some(queue) = t.pending.get(s) {
                    for target in queue.iter().take_while(|x| covered(&x.ends, offsets)) {
                        best =
                            Some(best.map_or(target.commit_ts_us, |b| b.max(target.commit_ts_us)));
                    }
                }
                match best {
                    Some(b) => {
                        per_shard.insert(*s, b);
                    }
                    None => {
                        per_shard.clear();
                        break;
                    }
                }
            }
            if let Some(min) = per_shard.values().min().copied() {
                return Some(Record::new(min, Basis::Watermarks, per_shard));
            }
        }
        let newest = match (newest, t.and_then(|t| t.newest_applied_us)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        newest.map(|n| Record::new(n, Basis::CommitTs, BTreeMap::new()))
    }
}

impl TableFreshness {
    /// Change events between silver's offsets and the newest known ends.
    fn lag(&self) -> i64 {
        self.ends
            .iter()
            .map(|(p, e)| (e - self.silver_next.get(p).copied().unwrap_or(0)).max(0))
            .sum()
    }

    fn observe(&mut self, offsets: &HashMap<i32, i64>) {
        for (p, o) in offsets {
            let e = self.silver_next.entry(*p).or_insert(*o);
            *e = (*e).max(*o);
        }
        for (shard, queue) in &mut self.pending {
            while queue
                .front()
                .is_some_and(|x| covered(&x.ends, &self.silver_next))
            {
                let x = queue.pop_front().expect("front exists");
                let c = self.complete.entry(*shard).or_insert(x.commit_ts_us);
                *c = (*c).max(x.commit_ts_us);
            }
        }
    }
}

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().expect("freshness lock")
}

/// The record a silver commit of `table` should carry when it moves the
/// offsets to `offsets` and applies changes up to commit time `newest`.
pub(crate) fn preview(
    table: &str,
    offsets: &HashMap<i32, i64>,
    newest: Option<i64>,
) -> Option<Record> {
    let r = registry();
    let mut merged = r
        .tables
        .get(table)
        .map(|t| t.silver_next.clone())
        .unwrap_or_default();
    for (p, o) in offsets {
        let e = merged.entry(*p).or_insert(*o);
        *e = (*e).max(*o);
    }
    r.record_at(table, &merged, newest)
}

/// Silver of `table` committed up to `offsets`, with changes up to commit
/// time `newest`, recording `record`.
pub(crate) fn committed(
    table: &str,
    offsets: &HashMap<i32, i64>,
    newest: Option<i64>,
    record: Option<&Record>,
) {
    let mut r = registry();
    let t = r.tables.entry(table.to_string()).or_default();
    t.observe(offsets);
    if let Some(n) = newest {
        t.newest_applied_us = Some(t.newest_applied_us.map_or(n, |x| x.max(n)));
    }
    if let Some(rec) = record {
        t.recorded = Some((rec.complete_up_to_us, Instant::now()));
    }
}

/// Silver of `table` stands at `offsets` (called every ingest round, so idle
/// tables follow the watermarks too).
pub(crate) fn observe_offsets(table: &str, offsets: &HashMap<i32, i64>) {
    let mut r = registry();
    let t = r.tables.entry(table.to_string()).or_default();
    t.observe(offsets);
    crate::metrics::consumer_lag(table, t.lag());
}

/// A record to write for an idle table: its instant moved since the last
/// record, and the last record is at least `interval` old.
pub(crate) fn idle_record_due(table: &str, interval: Duration) -> Option<Record> {
    let r = registry();
    let t = r.tables.get(table)?;
    let rec = r.record_at(table, &t.silver_next, None)?;
    match t.recorded {
        Some((at, when)) if rec.complete_up_to_us <= at || when.elapsed() < interval => None,
        _ => Some(rec),
    }
}

/// Files a watermark with the end offsets read after it arrived, per table
/// of its database.
fn add_watermark(w: &Watermark, ends: Vec<(String, HashMap<i32, i64>)>) {
    let mut r = registry();
    r.shards.entry(w.db.clone()).or_default().insert(w.shard);
    for (table, ends) in ends {
        let t = r.tables.entry(table.clone()).or_default();
        let queue = t.pending.entry(w.shard).or_default();
        if queue
            .back()
            .is_some_and(|x| x.commit_ts_us >= w.commit_ts_us)
        {
            continue;
        }
        if queue.len() >= MAX_PENDING {
            queue.pop_front();
        }
        for (p, e) in &ends {
            let known = t.ends.entry(*p).or_insert(*e);
            *known = (*known).max(*e);
        }
        queue.push_back(Target {
            commit_ts_us: w.commit_ts_us,
            ends,
        });
        let offsets = t.silver_next.clone();
        t.observe(&offsets);
        crate::metrics::consumer_lag(&table, t.lag());
    }
}

/// The instant `table` is complete up to, as this process knows it.
pub fn complete_up_to(table: &str) -> Option<Record> {
    let r = registry();
    let t = r.tables.get(table)?;
    r.record_at(table, &t.silver_next, None)
}

/// Tables this process knows anything about.
pub(crate) fn known_tables() -> Vec<String> {
    let mut v: Vec<String> = registry().tables.keys().cloned().collect();
    v.sort();
    v
}

/// The newest freshness record in `silver.<table>`'s recent commits, with
/// the commit's timestamp (ms), or `None` when the table does not exist or no
/// recent commit carries one.
pub async fn recorded(lake: &Lake, table: &str) -> Result<Option<(Record, Option<i64>)>> {
    // The record furthest ahead wins; among equals, the newest commit's.
    let mut best: Option<(Record, Option<i64>)> = None;
    for (rec, ts) in records(lake, table, 50).await? {
        if best
            .as_ref()
            .is_none_or(|(b, _)| rec.complete_up_to_us > b.complete_up_to_us)
        {
            best = Some((rec, ts));
        }
    }
    Ok(best)
}

/// The freshness records of `silver.<table>`'s newest `limit` commits,
/// each with its commit's timestamp (ms), newest first: when each instant
/// became complete in silver (what `tributary trace` reads).
pub async fn records(lake: &Lake, table: &str, limit: usize) -> Result<Vec<(Record, Option<i64>)>> {
    let Some(t) = lake.open("silver", table).await? else {
        return Ok(vec![]);
    };
    let infos: Vec<_> = t
        .history(Some(limit))
        .try_collect()
        .await
        .map_err(|source| Error::Delta {
            table: format!("silver.{table}"),
            source,
        })?;
    Ok(infos
        .into_iter()
        .filter_map(|info| {
            let rec =
                serde_json::from_value::<Record>(info.info.get(METADATA_KEY)?.clone()).ok()?;
            Some((rec, info.timestamp))
        })
        .collect())
}

fn watermark_topics(prefix: &str) -> BTreeMap<String, &'static str> {
    TABLES
        .iter()
        .map(|t| (watermark_topic(prefix, t.db.name()), t.db.name()))
        .collect()
}

/// Consumes the CDC watermark topics until `shutdown` and files a target per
/// table for each watermark (see the module docs). Broker trouble is
/// retried; freshness just stops advancing meanwhile.
pub async fn follow_watermarks(kafka: KafkaConfig, shutdown: CancellationToken) -> Result<()> {
    let mut backoff = Backoff::restarts();
    loop {
        match follow_once(&kafka, &shutdown).await {
            Ok(()) => return Ok(()),
            Err(e) if !shutdown.is_cancelled() => {
                tracing::warn!(error = %error_chain(&e), "watermark follower failed; restarting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
            Err(_) => return Ok(()),
        }
    }
}

/// The watermark consumer and offsets client: tributary's consumer settings;
/// positions are assigned explicitly, never read from the broker.
fn client(kafka: &KafkaConfig) -> ClientConfig {
    tributary_kafka::consumer_config(kafka, "tributary-lake-watermarks")
}

async fn follow_once(kafka: &KafkaConfig, shutdown: &CancellationToken) -> Result<()> {
    let consumer: StreamConsumer = client(kafka)
        .create()
        .map_err(kafka_err("creating the watermark consumer"))?;
    let meta: Arc<BaseConsumer> = Arc::new(
        client(kafka)
            .create()
            .map_err(kafka_err("creating the offsets client"))?,
    );
    let wm_topics = watermark_topics(&kafka.topic_prefix);
    let tables: Vec<(String, &'static str, String)> = TABLES
        .iter()
        .map(|t| {
            (
                t.name.to_string(),
                t.db.name(),
                topic_of(&kafka.topic_prefix, t),
            )
        })
        .collect();
    // Partition counts; watermark topics appear once a reader ran.
    let counts = loop {
        let m = meta.clone();
        let md = tokio::task::spawn_blocking(move || {
            m.fetch_metadata(None, Duration::from_secs(10)).map(|md| {
                md.topics()
                    .iter()
                    .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                    .map(|t| (t.name().to_string(), t.partitions().len() as i32))
                    .collect::<HashMap<String, i32>>()
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("the topic metadata task failed: {e}")))?
        .map_err(kafka_err("reading topic metadata"))?;
        // The reader creates every database's watermark topic at its start.
        if wm_topics.keys().all(|t| md.contains_key(t)) {
            break md;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    };
    let mut assignment = TopicPartitionList::new();
    for topic in wm_topics.keys() {
        for p in 0..counts.get(topic).copied().unwrap_or(0) {
            // The newest watermark of each partition, then every new one.
            assignment
                .add_partition_offset(topic, p, Offset::OffsetTail(1))
                .map_err(kafka_err("assigning watermark partitions"))?;
        }
    }
    consumer
        .assign(&assignment)
        .map_err(kafka_err("assigning watermark partitions"))?;
    tracing::info!(topics = ?wm_topics.keys().collect::<Vec<_>>(), "following CDC watermarks");
    loop {
        // Collect what arrived together, then read the end offsets once.
        let mut arrived: Vec<Watermark> = Vec::new();
        let first = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = consumer.recv() => m.map_err(kafka_err("consuming watermarks"))?.detach(),
        };
        let mut messages = vec![first];
        let drain_until = tokio::time::Instant::now() + Duration::from_millis(50);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(drain_until) => break,
                m = consumer.recv() => messages.push(m.map_err(kafka_err("consuming watermarks"))?.detach()),
            }
        }
        for m in &messages {
            match Watermark::from_json(m.payload().unwrap_or_default()) {
                Ok(w) => arrived.push(w),
                Err(e) => tracing::warn!(
                    topic = m.topic(),
                    partition = m.partition(),
                    offset = m.offset(),
                    error = %e,
                    "not a watermark; ignored"
                ),
            }
        }
        let dbs: BTreeSet<String> = arrived.iter().map(|w| w.db.clone()).collect();
        let wanted: Vec<(String, String, i32)> = tables
            .iter()
            .filter(|(_, db, _)| dbs.contains(*db))
            .map(|(t, _, topic)| {
                (
                    t.clone(),
                    topic.clone(),
                    counts.get(topic).copied().unwrap_or(0),
                )
            })
            .collect();
        let m = meta.clone();
        // Read after the watermarks arrived: these ends cover every change
        // they vouch for.
        let ends = tokio::task::spawn_blocking(move || {
            let mut out: HashMap<String, HashMap<i32, i64>> = HashMap::new();
            for (table, topic, n) in wanted {
                let mut e = HashMap::new();
                for p in 0..n {
                    let (_, high) = m
                        .fetch_watermarks(&topic, p, Duration::from_secs(10))
                        .map_err(kafka_err("reading end offsets"))?;
                    e.insert(p, high);
                }
                out.insert(table, e);
            }
            Ok::<_, Error>(out)
        })
        .await
        .map_err(|e| Error::Internal(format!("the end offsets task failed: {e}")))??;
        for w in &arrived {
            let per_table: Vec<(String, HashMap<i32, i64>)> = TABLES
                .iter()
                .filter(|t| t.db.name() == w.db)
                .filter_map(|t| ends.get(t.name).map(|e| (t.name.to_string(), e.clone())))
                .collect();
            tracing::debug!(db = %w.db, shard = w.shard, lsn = %w.lsn, commit_ts_us = w.commit_ts_us, "watermark");
            add_watermark(w, per_table);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(v: &[(i32, i64)]) -> HashMap<i32, i64> {
        v.iter().copied().collect()
    }

    #[test]
    fn consumer_lag_counts_what_silver_has_not_applied() {
        let mut t = TableFreshness::default();
        assert_eq!(t.lag(), 0, "no ends known yet");
        t.ends = offsets(&[(0, 10), (1, 4), (2, 0)]);
        t.observe(&offsets(&[(0, 7)]));
        // 3 on partition 0, all 4 of partition 1 (nothing applied there).
        assert_eq!(t.lag(), 7);
        t.observe(&offsets(&[(0, 10), (1, 4)]));
        assert_eq!(t.lag(), 0);
        // Offsets never go back, and past the known ends is no lag.
        t.observe(&offsets(&[(0, 2), (1, 6)]));
        assert_eq!(t.lag(), 0);
    }

    #[test]
    fn a_table_is_complete_up_to_the_oldest_shard_it_reached() {
        // Unique table names: the registry is per process.
        let w = |shard, ts| Watermark::new("orders", shard, "0/1".parse().unwrap(), ts, ts);
        // No watermark yet: the newest commit time applied.
        committed("shipments", &offsets(&[(0, 5)]), Some(900), None);
        let rec = complete_up_to("shipments").unwrap();
        assert_eq!((rec.basis, rec.complete_up_to_us), (Basis::CommitTs, 900));
        add_watermark(
            &w(0, 1_000),
            vec![("shipments".into(), offsets(&[(0, 5), (1, 0)]))],
        );
        add_watermark(&w(1, 1_100), vec![("shipments".into(), offsets(&[(0, 7)]))]);
        // Shard 0's target is reached (idle table at its ends); shard 1's not.
        assert_eq!(complete_up_to("shipments").unwrap().basis, Basis::CommitTs);
        let rec = preview("shipments", &offsets(&[(0, 7)]), None).unwrap();
        assert_eq!(
            (rec.basis, rec.complete_up_to_us),
            (Basis::Watermarks, 1_000)
        );
        committed("shipments", &offsets(&[(0, 7)]), None, Some(&rec));
        add_watermark(&w(0, 2_000), vec![("shipments".into(), offsets(&[(0, 7)]))]);
        add_watermark(&w(1, 2_100), vec![("shipments".into(), offsets(&[(0, 9)]))]);
        // Shard 0 moved to 2000, shard 1 waits at 1100 for offset 9.
        assert_eq!(
            complete_up_to("shipments").unwrap().complete_up_to_us,
            1_100
        );
        observe_offsets("shipments", &offsets(&[(0, 9)]));
        assert_eq!(
            complete_up_to("shipments").unwrap().complete_up_to_us,
            2_000
        );
        assert!(idle_record_due("shipments", Duration::ZERO).is_some());
        assert!(idle_record_due("shipments", Duration::from_secs(3600)).is_none());
    }
}
