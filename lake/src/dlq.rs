//! Dead letters: messages ingest could not apply, listed and replayed after
//! a fix.
//!
//! Ingest writes each message it cannot decode, or that does not belong to
//! its topic's table, to `bronze._dead_letters` (topic, partition, offset,
//! key, raw payload, error, time) and goes on; that commit carries the
//! topic's offsets, so a crash never writes a dead letter twice (see
//! [`crate::ingest`]).
//!
//! Promise of [`replay`]:
//! - The dead-letter table is never rewritten. Each replayed dead letter is
//!   recorded in the append-only `bronze._dead_letters_replayed`, which is
//!   what makes a dead letter "replayed" in [`list`].
//! - A dead letter whose payload now decodes into an event of its topic's
//!   table reaches bronze once (an `event_id` already there is skipped) and
//!   silver through the same position-guarded MERGE ingest uses. An event
//!   older than a change of the same key already in bronze is kept in bronze
//!   but not applied to silver: the newer change already decided the row.
//! - The rest stay pending, with the error they fail with now.
//! - Idempotent and crash-safe: bronze, then silver, then the record of the
//!   replay; a second run (or a run after a crash in between) finds the
//!   event in bronze, re-applies nothing newer to silver, and records it.
//! - Not safe next to a running ingester of the same table: both write
//!   bronze and silver, and a MERGE that loses a commit race fails. Replay
//!   while `lake ingest` is stopped.

use std::collections::{BTreeMap, HashMap, HashSet};

use arrow::array::{BinaryArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use deltalake::kernel::transaction::CommitProperties;
use rdkafka::message::{OwnedMessage, Timestamp};
use serde::Serialize;
use serde_json::{Value, json};
use tributary_model::domain::TABLES;
use tributary_model::error_chain;
use tributary_model::event::{ChangeEvent, Op};
use tributary_model::pgtype::format_utc_micros;

use crate::ingest::{DEAD_LETTERS, bronze_row, check_event, merge_silver, now_us, write_append};
use crate::schema::{dead_letters_replayed_schema, rows_to_batch};
use crate::store::{cast_column, query_table};
use crate::{Error, Lake, Result};

/// Name of the record of replayed dead letters in the bronze layer.
pub const REPLAYED: &str = "_dead_letters_replayed";

/// One dead letter and whether it has been replayed.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The source table the topic carries; `None` for a topic of no known table.
    pub table: Option<String>,
    pub error: String,
    /// RFC 3339, UTC.
    pub failed_at: String,
    /// Size of the raw payload; `None` for a message without one.
    pub payload_bytes: Option<usize>,
    /// `pending` or `replayed`.
    pub status: &'static str,
    pub replayed_at: Option<String>,
    /// The replayed event's id.
    pub event_id: Option<String>,
    #[serde(skip)]
    key: Option<Vec<u8>>,
    #[serde(skip)]
    payload: Option<Vec<u8>>,
}

/// Which dead letters to list or replay.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Only dead letters of this source table's topic.
    pub table: Option<String>,
    /// Only the dead letter at this (partition, offset).
    pub position: Option<(i32, i64)>,
}

impl Selection {
    fn matches(&self, d: &DeadLetter) -> bool {
        self.table
            .as_deref()
            .is_none_or(|t| d.table.as_deref() == Some(t))
            && self
                .position
                .is_none_or(|(p, o)| d.partition == p && d.offset == o)
    }
}

/// The source table a change topic (`<prefix>.<db>.<table>`) carries.
fn table_of_topic(topic: &str) -> Option<&'static str> {
    TABLES
        .iter()
        .find(|t| topic.ends_with(&format!(".{}.{}", t.db.name(), t.name)))
        .map(|t| t.name)
}

/// The dead letters that `selection` picks, oldest first (by failure time,
/// then position); with `limit`, only the newest `limit` of them.
pub async fn list(
    lake: &Lake,
    selection: &Selection,
    limit: Option<usize>,
) -> Result<Vec<DeadLetter>> {
    let Some(table) = lake.open("bronze", DEAD_LETTERS).await? else {
        return Ok(Vec::new());
    };
    let replayed = replayed(lake).await?;
    let batches = query_table(
        &table,
        DEAD_LETTERS,
        "SELECT kafka_topic, kafka_partition, kafka_offset, key, payload, error, failed_at FROM t
         ORDER BY failed_at, kafka_topic, kafka_partition, kafka_offset",
    )
    .await?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for b in &batches {
        let topics = texts(b, 0)?;
        let partitions = ints(b, 1)?;
        let offsets = ints(b, 2)?;
        let keys = binaries(b, 3)?;
        let payloads = binaries(b, 4)?;
        let errors = texts(b, 5)?;
        let failed = texts(b, 6)?;
        for i in 0..b.num_rows() {
            let topic = topics[i].clone().unwrap_or_default();
            let (partition, offset) = (partitions[i] as i32, offsets[i]);
            if !seen.insert((topic.clone(), partition, offset)) {
                continue;
            }
            let done = replayed.get(&(topic.clone(), partition, offset));
            let d = DeadLetter {
                table: table_of_topic(&topic).map(str::to_string),
                topic,
                partition,
                offset,
                error: errors[i].clone().unwrap_or_default(),
                failed_at: failed[i].clone().unwrap_or_default(),
                payload_bytes: payloads[i].as_ref().map(Vec::len),
                status: if done.is_some() {
                    "replayed"
                } else {
                    "pending"
                },
                replayed_at: done.map(|(_, at)| at.clone()),
                event_id: done.map(|(id, _)| id.clone()),
                key: keys[i].clone(),
                payload: payloads[i].clone(),
            };
            if selection.matches(&d) {
                out.push(d);
            }
        }
    }
    if let Some(n) = limit {
        out.drain(..out.len().saturating_sub(n));
    }
    Ok(out)
}

/// (topic, partition, offset) → (event id, replayed at) of every replayed dead letter.
async fn replayed(lake: &Lake) -> Result<HashMap<(String, i32, i64), (String, String)>> {
    let mut out = HashMap::new();
    let Some(table) = lake.open("bronze", REPLAYED).await? else {
        return Ok(out);
    };
    let sql = "SELECT kafka_topic, kafka_partition, kafka_offset, event_id, replayed_at FROM t";
    for b in query_table(&table, REPLAYED, sql).await? {
        let topics = texts(&b, 0)?;
        let partitions = ints(&b, 1)?;
        let offsets = ints(&b, 2)?;
        let ids = texts(&b, 3)?;
        let at = texts(&b, 4)?;
        for i in 0..b.num_rows() {
            out.entry((
                topics[i].clone().unwrap_or_default(),
                partitions[i] as i32,
                offsets[i],
            ))
            .or_insert((
                ids[i].clone().unwrap_or_default(),
                at[i].clone().unwrap_or_default(),
            ));
        }
    }
    Ok(out)
}

/// What became of one dead letter in a replay.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// `replayed` or `failed`.
    pub result: &'static str,
    pub event_id: Option<String>,
    /// For a replayed event: `applied` (silver took it) or `superseded` (a
    /// newer change of the same key is already in bronze).
    pub silver: Option<&'static str>,
    /// Why it still cannot be applied.
    pub error: Option<String>,
}

/// The result of [`replay`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplayReport {
    /// One per selected dead letter that was still pending.
    pub outcomes: Vec<Outcome>,
    /// Selected dead letters that an earlier replay already applied.
    pub already_replayed: usize,
    /// Events newly appended to bronze (an event already there is skipped).
    pub bronze_rows: usize,
}

impl ReplayReport {
    pub fn replayed(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| o.result == "replayed")
            .count()
    }

    pub fn failed(&self) -> usize {
        self.outcomes.len() - self.replayed()
    }
}

/// An event decoded from a dead letter, ready to apply.
struct Candidate {
    letter: DeadLetter,
    event: ChangeEvent,
}

/// Decodes each pending dead letter that `selection` picks with the current
/// decoder and applies those that now belong to their topic's table to
/// bronze and silver (see the module docs for the promise).
pub async fn replay(lake: &Lake, selection: &Selection) -> Result<ReplayReport> {
    let mut report = ReplayReport::default();
    let mut by_table: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    for letter in list(lake, selection, None).await? {
        if letter.status == "replayed" {
            report.already_replayed += 1;
            continue;
        }
        match decode(&letter) {
            Ok((table, event)) => by_table
                .entry(table.to_string())
                .or_default()
                .push(Candidate { letter, event }),
            Err(error) => report.outcomes.push(failed(&letter, error)),
        }
    }
    for (table, candidates) in by_table {
        replay_table(lake, &table, candidates, &mut report).await?;
    }
    report
        .outcomes
        .sort_by(|a, b| (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset)));
    Ok(report)
}

fn failed(letter: &DeadLetter, error: String) -> Outcome {
    Outcome {
        topic: letter.topic.clone(),
        partition: letter.partition,
        offset: letter.offset,
        result: "failed",
        event_id: None,
        silver: None,
        error: Some(error),
    }
}

/// The dead letter's event with the current decoder, when it belongs to its
/// topic's table.
fn decode(letter: &DeadLetter) -> std::result::Result<(&'static str, ChangeEvent), String> {
    let table = table_of_topic(&letter.topic)
        .ok_or_else(|| format!("topic {} carries no known table", letter.topic))?;
    let payload = letter
        .payload
        .as_deref()
        .ok_or_else(|| "the message has no payload".to_string())?;
    let event = ChangeEvent::from_json(payload).map_err(|e| error_chain(&e))?;
    if event.source.table != table {
        return Err(format!(
            "event for table {} on topic {}",
            event.source.table, letter.topic
        ));
    }
    Ok((table, event))
}

async fn replay_table(
    lake: &Lake,
    table: &str,
    mut candidates: Vec<Candidate>,
    report: &mut ReplayReport,
) -> Result<()> {
    candidates.sort_by_key(|c| c.event.position());
    // Silver must be able to take each event, as in ingest.
    let silver_schema = match lake.open("silver", table).await? {
        Some(t) => Some(
            t.snapshot()
                .map_err(|source| Error::Delta {
                    table: format!("silver.{table}"),
                    source,
                })?
                .snapshot()
                .arrow_schema(),
        ),
        None => None,
    };
    let mut running = (silver_schema, Vec::new());
    let mut fit = Vec::with_capacity(candidates.len());
    for c in candidates {
        match check_event(table, &mut running, &c.event) {
            Ok(()) => fit.push(c),
            Err(e) => report.outcomes.push(failed(&c.letter, error_chain(&e))),
        }
    }
    if fit.is_empty() {
        return Ok(());
    }

    // Bronze: each event once.
    let ids: Vec<String> = fit.iter().map(|c| quote(&c.event.event_id)).collect();
    let mut present: HashSet<String> = HashSet::new();
    if let Some(bronze) = lake.open("bronze", table).await? {
        let sql = format!(
            "SELECT event_id FROM t WHERE event_id IN ({})",
            ids.join(", ")
        );
        for b in query_table(&bronze, table, &sql).await? {
            present.extend(texts(&b, 0)?.into_iter().flatten());
        }
    }
    let ingested = format_utc_micros(now_us());
    let mut rows = Vec::new();
    for c in &fit {
        if present.insert(c.event.event_id.clone()) {
            rows.push(bronze_row(&c.event, &message(&c.letter), &ingested));
        }
    }
    if !rows.is_empty() {
        let batch = rows_to_batch(crate::schema::bronze_schema(), &rows)?;
        write_append(
            lake,
            "bronze",
            table,
            batch,
            Some("date"),
            CommitProperties::default(),
        )
        .await?;
        report.bronze_rows += rows.len();
    }

    // Silver: only events no newer change of the same key has overtaken
    // (a replayed insert must not bring back a row deleted since).
    let newest = newest_positions(lake, table, &fit).await?;
    let mut applied = Vec::new();
    let mut ids_applied = HashSet::new();
    let mut outcomes = Vec::new();
    for c in &fit {
        let superseded = c.event.op != Op::Truncate
            && key_text(&c.letter).is_some_and(|k| {
                newest
                    .get(&(k, c.event.source.shard as i32))
                    .is_some_and(|p| *p > pos(&c.event))
            });
        if !superseded && ids_applied.insert(c.event.event_id.clone()) {
            applied.push(c.event.clone());
        }
        outcomes.push(Outcome {
            topic: c.letter.topic.clone(),
            partition: c.letter.partition,
            offset: c.letter.offset,
            result: "replayed",
            event_id: Some(c.event.event_id.clone()),
            silver: Some(if superseded { "superseded" } else { "applied" }),
            error: None,
        });
    }
    if !applied.is_empty() {
        merge_silver(lake, table, applied, Vec::new(), Vec::new(), &mut None).await?;
    }

    // Last: the record that makes these dead letters replayed.
    let replayed_at = format_utc_micros(now_us());
    let rows: Vec<Value> = outcomes
        .iter()
        .map(|o| {
            json!({
                "kafka_topic": o.topic,
                "kafka_partition": o.partition,
                "kafka_offset": o.offset,
                "source_table": table,
                "event_id": o.event_id,
                "silver": o.silver,
                "replayed_at": replayed_at,
            })
        })
        .collect();
    write_append(
        lake,
        "bronze",
        REPLAYED,
        rows_to_batch(dead_letters_replayed_schema(), &rows)?,
        None,
        CommitProperties::default(),
    )
    .await?;
    tracing::info!(table, events = outcomes.len(), "dead letters replayed");
    report.outcomes.extend(outcomes);
    Ok(())
}

fn pos(ev: &ChangeEvent) -> (i64, i64) {
    (ev.source.lsn.as_i64(), ev.source.ordinal as i64)
}

/// The Kafka key as bronze stores it; `None` when the message had none.
fn key_text(letter: &DeadLetter) -> Option<String> {
    letter
        .key
        .as_ref()
        .map(|k| String::from_utf8_lossy(k).into_owned())
}

/// The newest (lsn, ordinal) in bronze per (Kafka key, shard) of the candidates' keys.
async fn newest_positions(
    lake: &Lake,
    table: &str,
    candidates: &[Candidate],
) -> Result<HashMap<(String, i32), (i64, i64)>> {
    let mut out = HashMap::new();
    let keys: HashSet<String> = candidates
        .iter()
        .filter_map(|c| key_text(&c.letter))
        .collect();
    let Some(bronze) = lake.open("bronze", table).await? else {
        return Ok(out);
    };
    if keys.is_empty() {
        return Ok(out);
    }
    let list: Vec<String> = keys.iter().map(|k| quote(k)).collect();
    let sql = format!(
        "SELECT key, shard, lsn, ordinal FROM t WHERE key IN ({})",
        list.join(", ")
    );
    for b in query_table(&bronze, table, &sql).await? {
        let keys = texts(&b, 0)?;
        let shards = ints(&b, 1)?;
        let lsns = ints(&b, 2)?;
        let ordinals = ints(&b, 3)?;
        for i in 0..b.num_rows() {
            let k = (keys[i].clone().unwrap_or_default(), shards[i] as i32);
            let p = (lsns[i], ordinals[i]);
            out.entry(k)
                .and_modify(|q: &mut (i64, i64)| *q = (*q).max(p))
                .or_insert(p);
        }
    }
    Ok(out)
}

/// The dead letter as the Kafka message it was, for [`bronze_row`].
fn message(letter: &DeadLetter) -> OwnedMessage {
    OwnedMessage::new(
        letter.payload.clone(),
        letter.key.clone(),
        letter.topic.clone(),
        Timestamp::NotAvailable,
        letter.partition,
        letter.offset,
        None,
    )
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn texts(b: &RecordBatch, i: usize) -> Result<Vec<Option<String>>> {
    let c: StringArray = cast_column(b, i, &DataType::Utf8)?;
    Ok(c.iter().map(|v| v.map(str::to_string)).collect())
}

fn ints(b: &RecordBatch, i: usize) -> Result<Vec<i64>> {
    let c: Int64Array = cast_column(b, i, &DataType::Int64)?;
    Ok(c.values().to_vec())
}

fn binaries(b: &RecordBatch, i: usize) -> Result<Vec<Option<Vec<u8>>>> {
    let c: BinaryArray = cast_column(b, i, &DataType::Binary)?;
    Ok(c.iter().map(|v| v.map(<[u8]>::to_vec)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{event, new_lake};
    use crate::ingest::{apply_batch, dead_letter, load_state};
    use tributary_model::event::Column;
    use tributary_model::pgtype::PgType;

    const TOPIC: &str = "tributary.orders.customers";

    /// A change of `customers` on shard 0.
    fn ev(op: Op, id: i64, name: &str, lsn: u64) -> ChangeEvent {
        let columns = vec![
            Column::new("id", PgType::Int8, true),
            Column::new("name", PgType::Text, false),
        ];
        event(
            "customers",
            op,
            lsn,
            1,
            columns,
            json!({"id": id, "name": name}),
        )
    }

    /// A message keyed like the CDC reader keys rows: one key per row.
    fn msg(payload: &[u8], id: i64, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            Some(payload.to_vec()),
            Some(format!("0:{id}").into_bytes()),
            TOPIC.into(),
            Timestamp::NotAvailable,
            0,
            offset,
            None,
        )
    }

    async fn rows(lake: &Lake, layer: &str, table: &str, sql: &str) -> Vec<String> {
        let t = lake.open(layer, table).await.unwrap().unwrap();
        let mut out = Vec::new();
        for b in query_table(&t, table, sql).await.unwrap() {
            for i in 0..b.num_rows() {
                let cells: Vec<String> = (0..b.num_columns())
                    .map(|c| texts(&b, c).unwrap()[i].clone().unwrap_or("NULL".into()))
                    .collect();
                out.push(cells.join(" "));
            }
        }
        out
    }

    /// Sets `letters` aside in the dead-letter table, as ingest would.
    async fn set_aside(lake: &Lake, letters: &[Value]) {
        let batch = rows_to_batch(crate::schema::dead_letter_schema(), letters).unwrap();
        write_append(
            lake,
            "bronze",
            DEAD_LETTERS,
            batch,
            None,
            CommitProperties::default(),
        )
        .await
        .unwrap();
    }

    /// Silver's customers as `id name`, by id.
    async fn silver(lake: &Lake) -> Vec<String> {
        let sql = "SELECT id, name FROM t ORDER BY id";
        rows(lake, "silver", "customers", sql).await
    }

    async fn version(lake: &Lake, layer: &str, table: &str) -> Option<u64> {
        lake.open(layer, table)
            .await
            .unwrap()
            .and_then(|t| t.version())
    }

    #[tokio::test]
    async fn poison_is_set_aside_and_a_fixed_dead_letter_replays_exactly_once() {
        let (_dir, lake) = new_lake();
        let mut state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
        // A poison message between two good ones: ingest goes on.
        let batch = vec![
            msg(&ev(Op::Create, 1, "ann", 100).to_json(), 1, 0),
            msg(b"{not json", 2, 1),
            msg(&ev(Op::Create, 2, "bob", 200).to_json(), 2, 2),
            msg(&ev(Op::Delete, 4, "dan", 300).to_json(), 4, 3),
        ];
        apply_batch(&lake, "g", &mut state, batch).await.unwrap();
        assert_eq!(silver(&lake).await, ["1 ann", "2 bob"]);
        let pending = list(&lake, &Selection::default(), None).await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(
            (pending[0].partition, pending[0].offset, pending[0].status),
            (0, 1, "pending")
        );
        assert_eq!(pending[0].table.as_deref(), Some("customers"));
        assert_eq!(pending[0].payload_bytes, Some(9));
        assert!(
            pending[0].error.contains("key must be a string"),
            "{}",
            pending[0].error
        );

        // Dead letters an older build could not decode, but the current
        // decoder can: a new row, a row's insert whose later delete silver
        // already applied, and an event bronze already holds.
        let fixed = [
            (msg(&ev(Op::Create, 3, "cy", 150).to_json(), 3, 10), "cy"),
            (msg(&ev(Op::Create, 4, "dan", 120).to_json(), 4, 11), "dan"),
            (msg(&ev(Op::Create, 1, "ann", 100).to_json(), 1, 12), "ann"),
        ];
        let letters: Vec<Value> = fixed
            .iter()
            .map(|(m, _)| dead_letter(m, "missing field `columns`"))
            .collect();
        set_aside(&lake, &letters).await;
        assert_eq!(
            list(&lake, &Selection::default(), None)
                .await
                .unwrap()
                .len(),
            4
        );
        assert_eq!(
            list(&lake, &Selection::default(), Some(2))
                .await
                .unwrap()
                .len(),
            2
        );
        let other = Selection {
            table: Some("orders".into()),
            position: None,
        };
        assert!(list(&lake, &other, None).await.unwrap().is_empty());

        let report = replay(&lake, &Selection::default()).await.unwrap();
        let summary: Vec<(i64, &str, Option<&str>)> = report
            .outcomes
            .iter()
            .map(|o| (o.offset, o.result, o.silver))
            .collect();
        assert_eq!(
            summary,
            [
                (1, "failed", None),
                (10, "replayed", Some("applied")),
                (11, "replayed", Some("superseded")),
                (12, "replayed", Some("applied")),
            ]
        );
        assert!(
            report.outcomes[0]
                .error
                .as_deref()
                .unwrap()
                .contains("key must be a string")
        );
        assert_eq!(
            report.bronze_rows, 2,
            "the event bronze held is not added again"
        );
        assert_eq!(
            silver(&lake).await,
            ["1 ann", "2 bob", "3 cy"],
            "the deleted row stays deleted"
        );
        assert_eq!(
            rows(
                &lake,
                "bronze",
                "customers",
                "SELECT count(*), count(DISTINCT event_id) FROM t"
            )
            .await,
            ["5 5"]
        );
        let listed = list(&lake, &Selection::default(), None).await.unwrap();
        let status: Vec<(i64, &str)> = listed.iter().map(|d| (d.offset, d.status)).collect();
        assert_eq!(
            status,
            [
                (1, "pending"),
                (10, "replayed"),
                (11, "replayed"),
                (12, "replayed")
            ]
        );
        assert!(listed[1].replayed_at.is_some() && listed[1].event_id.is_some());

        // A second replay changes nothing, and the poison stays pending.
        let before = (
            version(&lake, "bronze", "customers").await,
            version(&lake, "silver", "customers").await,
            version(&lake, "bronze", REPLAYED).await,
            version(&lake, "bronze", DEAD_LETTERS).await,
        );
        let again = replay(&lake, &Selection::default()).await.unwrap();
        assert_eq!(
            (again.replayed(), again.failed(), again.already_replayed),
            (0, 1, 3)
        );
        let after = (
            version(&lake, "bronze", "customers").await,
            version(&lake, "silver", "customers").await,
            version(&lake, "bronze", REPLAYED).await,
            version(&lake, "bronze", DEAD_LETTERS).await,
        );
        assert_eq!(before, after);

        // Ingest after a replay still resumes where it was, without the
        // replayed events moving its offsets.
        let (bronze, silver) = crate::ingest::committed_offsets(&lake, "g", "customers", TOPIC, 1)
            .await
            .unwrap();
        assert_eq!((bronze.get(&0), silver.get(&0)), (Some(&4), Some(&4)));
    }

    #[tokio::test]
    async fn replay_picks_one_position_and_refuses_what_silver_cannot_take() {
        let (_dir, lake) = new_lake();
        let mut state = load_state(&lake, "g", "customers", TOPIC, 1).await.unwrap();
        apply_batch(
            &lake,
            "g",
            &mut state,
            vec![msg(&ev(Op::Create, 1, "ann", 100).to_json(), 1, 0)],
        )
        .await
        .unwrap();
        // `name` changes from text to int: silver cannot take it.
        let mut retyped = ev(Op::Create, 5, "x", 150);
        retyped.columns[1].pg_type = PgType::Int4;
        retyped.after = Some(json!({"id": 5, "name": 5}).as_object().unwrap().clone());
        let wrong_table = {
            let mut e = ev(Op::Create, 6, "f", 160);
            e.source.table = "orders".into();
            e
        };
        let letters: Vec<Value> = [
            msg(&retyped.to_json(), 5, 1),
            msg(&wrong_table.to_json(), 6, 2),
            msg(&ev(Op::Create, 7, "g", 170).to_json(), 7, 3),
        ]
        .iter()
        .map(|m| dead_letter(m, "old decoder"))
        .collect();
        set_aside(&lake, &letters).await;
        let one = Selection {
            table: Some("customers".into()),
            position: Some((0, 1)),
        };
        let report = replay(&lake, &one).await.unwrap();
        assert_eq!((report.replayed(), report.failed()), (0, 1));
        let error = report.outcomes[0].error.clone().unwrap();
        assert!(error.contains("\"name\""), "{error}");
        let report = replay(&lake, &Selection::default()).await.unwrap();
        let results: Vec<(i64, &str)> = report
            .outcomes
            .iter()
            .map(|o| (o.offset, o.result))
            .collect();
        assert_eq!(results, [(1, "failed"), (2, "failed"), (3, "replayed")]);
        assert!(
            report.outcomes[1]
                .error
                .as_deref()
                .unwrap()
                .contains("event for table orders"),
            "{report:?}"
        );
        assert_eq!(silver(&lake).await, ["1 ann", "7 g"]);
    }
}
