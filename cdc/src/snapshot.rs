//! Snapshots: consistent copies of the published tables.
//!
//! A table is split into primary-key ranges ([`plan`]) that several
//! connections copy in parallel, all inside transactions that imported one
//! exported snapshot ([`copy_chunks`]). Every row becomes an `r` event at a
//! [`Label`] position that sorts before the changes the stream delivers
//! afterwards, with ordinals assigned in send order so positions rise within
//! every Kafka partition (the lake's replay filter depends on that).
//!
//! The reader records each chunk once Kafka acknowledged all of its rows, so
//! a reader killed mid-snapshot copies only the chunks that are not done.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{StreamExt, pin_mut};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tributary_model::event::{ChangeEvent, Column, Op, Source, event_id};
use tributary_model::lsn::Lsn;
use tributary_model::pgtype::PgType;

use crate::encode::{Cell, Meta, TableEncoder};
use crate::metrics::TableCounters;
use crate::sink::Sink;
use crate::source::{SourceDb, connect_sql};
use crate::{Error, Result};

/// Reads a table's columns in attribute order, with their key flags.
pub(crate) async fn table_columns(
    client: &tokio_postgres::Client,
    table: &str,
) -> Result<Vec<Column>> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid::int8, a.atttypmod,
                    EXISTS (SELECT 1 FROM pg_index i
                            WHERE i.indrelid = a.attrelid AND i.indisprimary
                              AND a.attnum = ANY(i.indkey))
             FROM pg_attribute a
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&format!("public.{table}")],
        )
        .await
        .map_err(|source| Error::Postgres {
            context: format!("reading columns of {table}"),
            source,
        })?;
    if rows.is_empty() {
        return Err(Error::Config(format!(
            "table public.{table} has no columns or does not exist"
        )));
    }
    Ok(rows
        .iter()
        .map(|r| {
            Column::new(
                r.get::<_, String>(0),
                PgType::from_oid(r.get::<_, i64>(1) as u32, r.get(2)),
                r.get(3),
            )
        })
        .collect())
}

/// One piece of a table's snapshot: a primary-key range `[lo, hi)` (open
/// where `None`), or the whole table when it has no integer key to split by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub table: String,
    pub index: i32,
    /// The integer primary-key column the ranges are over.
    pub key: Option<String>,
    pub lo: Option<i64>,
    pub hi: Option<i64>,
}

impl Chunk {
    fn query(&self) -> String {
        let table = &self.table;
        let mut conds = Vec::new();
        if let Some(key) = &self.key {
            if let Some(lo) = self.lo {
                conds.push(format!("\"{key}\" >= {lo}"));
            }
            if let Some(hi) = self.hi {
                conds.push(format!("\"{key}\" < {hi}"));
            }
        }
        if conds.is_empty() {
            format!("COPY public.{table} TO STDOUT")
        } else {
            format!(
                "COPY (SELECT * FROM public.{table} WHERE {}) TO STDOUT",
                conds.join(" AND ")
            )
        }
    }
}

/// Splits each table into primary-key ranges of about `chunk_rows` rows,
/// reading bounds and sizes under the caller's (snapshot) transaction.
pub(crate) async fn plan(
    client: &tokio_postgres::Client,
    tables: &[String],
    chunk_rows: u64,
) -> Result<Vec<Chunk>> {
    let mut chunks = Vec::new();
    for table in tables {
        let pg = |source| Error::Postgres {
            context: format!("planning the snapshot of {table}"),
            source,
        };
        let qualified = format!("public.{table}");
        let key: Option<String> = client
            .query_opt(
                "SELECT min(a.attname::text) FROM pg_index i
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                 WHERE i.indrelid = $1::text::regclass AND i.indisprimary
                 GROUP BY i.indexrelid
                 HAVING count(*) = 1 AND bool_and(a.atttypid IN (20, 21, 23))",
                &[&qualified],
            )
            .await
            .map_err(pg)?
            .map(|r| r.get(0));
        let Some(key) = key else {
            chunks.push(Chunk {
                table: table.clone(),
                index: 0,
                key: None,
                lo: None,
                hi: None,
            });
            continue;
        };
        let row = client
            .query_one(
                &format!(
                    "SELECT min(\"{key}\")::int8, max(\"{key}\")::int8,
                            (SELECT reltuples::int8 FROM pg_class WHERE oid = $1::text::regclass)
                     FROM public.{table}"
                ),
                &[&qualified],
            )
            .await
            .map_err(pg)?;
        let (min, max, mut estimate): (Option<i64>, Option<i64>, i64) =
            (row.get(0), row.get(1), row.get(2));
        if estimate < 0 {
            // Never analysed: count, so the split is right for big tables too.
            estimate = client
                .query_one(&format!("SELECT count(*) FROM public.{table}"), &[])
                .await
                .map_err(pg)?
                .get(0);
        }
        let n = (estimate.max(0) as u64).div_ceil(chunk_rows.max(1)).max(1);
        let bounds: Vec<i64> = match (min, max) {
            (Some(min), Some(max)) if n > 1 && max > min => {
                let width = ((max as i128 - min as i128 + 1) / n as i128).max(1);
                (1..n as i128)
                    .map(|i| min as i128 + i * width)
                    .filter(|b| *b <= max as i128)
                    .map(|b| b as i64)
                    .collect()
            }
            _ => vec![],
        };
        // Open at both ends: rows outside [min, max] (inserted later, seen by
        // a resumed attempt under a newer snapshot) still belong to a chunk.
        let mut lo = None;
        for (index, hi) in bounds.iter().map(|b| Some(*b)).chain([None]).enumerate() {
            chunks.push(Chunk {
                table: table.clone(),
                index: index as i32,
                key: Some(key.clone()),
                lo,
                hi,
            });
            lo = hi;
        }
    }
    Ok(chunks)
}

/// Where the rows of a snapshot sort among the stream's changes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Label {
    /// Every row event carries this LSN ...
    pub lsn: Lsn,
    /// ... and ordinals from `ordinal_base + 1` on, assigned in the order
    /// the events are handed to Kafka, so they rise within every partition.
    pub ordinal_base: u64,
}

/// A copy of chunks under one snapshot.
pub(crate) struct Copy<'a> {
    pub source: &'a SourceDb,
    pub topic_prefix: &'a str,
    /// The exported snapshot every worker imports.
    pub snapshot: String,
    pub label: Label,
    pub workers: usize,
    /// Tables whose earlier rows this copy replaces: a truncate at the
    /// label's position is published before their rows.
    pub reset: Vec<String>,
    /// Table columns, read under the same snapshot.
    pub columns: HashMap<String, Vec<Column>>,
}

struct TableInfo {
    name: String,
    topic: String,
    encoder: TableEncoder,
    counters: TableCounters,
}

/// A row as a copy worker wrote it: its `after` image and Kafka key. The
/// publisher only wraps it in the envelope, as the ordinal is its to give.
struct EncodedRow {
    after: Vec<u8>,
    key: Vec<u8>,
}

/// Rows per message from a copy worker to the publisher.
const BATCH_ROWS: usize = 256;

enum Copied {
    Rows(Arc<TableInfo>, Vec<EncodedRow>),
    ChunkEnd(Chunk, u64),
    Failed(Error),
}

/// Copies `chunks` in parallel and publishes one `r` event per row. Once a
/// chunk's events are all durable in Kafka, `on_chunk_done` is called with
/// it (to record progress). Returns the number of rows.
pub(crate) async fn copy_chunks<S, F, Fut>(
    job: Copy<'_>,
    chunks: Vec<Chunk>,
    sink: &S,
    on_chunk_done: F,
) -> Result<u64>
where
    S: Sink,
    F: Fn(Chunk, u64) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    let source = job.source;
    let infos: HashMap<String, Arc<TableInfo>> = job
        .columns
        .into_iter()
        .map(|(name, columns)| {
            let topic = tributary_model::domain::topic_name(job.topic_prefix, &source.db, &name);
            let encoder = TableEncoder::new(&source.db, source.shard, &name, columns);
            (
                name.clone(),
                Arc::new(TableInfo {
                    counters: TableCounters::new(&name),
                    name,
                    topic,
                    encoder,
                }),
            )
        })
        .collect();
    let event =
        |info: &TableInfo, op: Op, after: Option<Map<String, Value>>, ordinal: u64, id: String| {
            ChangeEvent {
                before: None,
                after,
                source: Source {
                    version: env!("CARGO_PKG_VERSION").into(),
                    connector: "postgresql".into(),
                    db: source.db.clone(),
                    shard: source.shard,
                    schema: "public".into(),
                    table: info.name.clone(),
                    lsn: job.label.lsn,
                    ordinal,
                    ts_us: now_us,
                    tx_id: None,
                    snapshot: true,
                },
                op,
                ts_ms: now_us / 1000,
                transaction: None,
                event_id: id,
                unchanged_toast: vec![],
                columns: info.encoder.columns().to_vec(),
            }
        };
    for table in &job.reset {
        let Some(info) = infos.get(table) else {
            continue;
        };
        // A truncate just before the new rows clears what an earlier copy
        // left (rows deleted since would otherwise stay in silver forever).
        let id = format!(
            "{}:{table}",
            event_id(
                &source.db,
                source.shard,
                job.label.lsn,
                job.label.ordinal_base,
                true
            )
        );
        let ev = event(info, Op::Truncate, None, job.label.ordinal_base, id);
        let key = serde_json::json!({ "shard": source.shard, "truncate": true });
        sink.send(
            &info.topic,
            &serde_json::to_vec(&key).expect("json"),
            &ev.to_json(),
            &[],
        )
        .await?;
    }

    let label = format!("{}.{}", source.db, source.shard);
    let mut progress = Progress::new(label.clone(), chunks.len());
    let queue = Arc::new(std::sync::Mutex::new(VecDeque::from(chunks)));
    // Bounded in rows as before: 32 batches of 256.
    let (tx, mut rx) = mpsc::channel::<Copied>(32);
    let mut workers = JoinSet::new();
    for _ in 0..job.workers.max(1) {
        let (queue, tx, infos) = (queue.clone(), tx.clone(), infos.clone());
        let (dsn, snapshot) = (source.dsn.clone(), job.snapshot.clone());
        workers.spawn(async move {
            if let Err(e) = copy_worker(&dsn, &snapshot, &queue, &infos, &tx).await {
                let _ = tx.send(Copied::Failed(e)).await;
            }
        });
    }
    drop(tx);

    // One publisher assigns ordinals in send order; a second loop records
    // finished chunks once Kafka has acknowledged all their events.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let publish = async {
        let mut ordinal = job.label.ordinal_base;
        let mut payload = Vec::new();
        while let Some(copied) = rx.recv().await {
            match copied {
                Copied::Rows(info, rows) => {
                    for row in rows {
                        ordinal += 1;
                        let meta = Meta {
                            op: Op::Read,
                            lsn: job.label.lsn,
                            ordinal,
                            ts_us: now_us,
                            tx_id: None,
                            snapshot: true,
                            ts_ms: now_us / 1000,
                        };
                        info.encoder
                            .event(&meta, None, Some(&row.after), &[], &mut payload);
                        info.counters.event(Op::Read, payload.len());
                        sink.send(&info.topic, &row.key, &payload, &[]).await?;
                        progress.row();
                    }
                }
                Copied::ChunkEnd(chunk, rows) => {
                    let durable = sink.barrier()?;
                    let _ = done_tx.send((chunk, rows, durable));
                }
                Copied::Failed(e) => return Err(e),
            }
        }
        drop(done_tx);
        Ok::<u64, Error>(ordinal - job.label.ordinal_base)
    };
    let record = async {
        while let Some((chunk, rows, durable)) = done_rx.recv().await {
            // Fails when a delivery failed first.
            durable.wait().await?;
            on_chunk_done(chunk, rows).await?;
            crate::metrics::snapshot_chunk_done(&label);
        }
        Ok::<(), Error>(())
    };
    let (rows, ()) = futures::try_join!(publish, record)?;
    while let Some(joined) = workers.join_next().await {
        joined.map_err(|e| Error::Internal(format!("snapshot worker: {e}")))?;
    }
    progress.finish();
    Ok(rows)
}

async fn copy_worker(
    dsn: &str,
    snapshot: &str,
    queue: &std::sync::Mutex<VecDeque<Chunk>>,
    infos: &HashMap<String, Arc<TableInfo>>,
    tx: &mpsc::Sender<Copied>,
) -> Result<()> {
    let client = connect_sql(dsn).await?;
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot}'"
        ))
        .await
        .map_err(|source| Error::Postgres {
            context: "importing the snapshot in a copy worker".into(),
            source,
        })?;
    loop {
        let Some(chunk) = queue.lock().expect("queue lock").pop_front() else {
            return Ok(());
        };
        let info = infos
            .get(&chunk.table)
            .ok_or_else(|| Error::Internal(format!("no columns for {}", chunk.table)))?
            .clone();
        let table = &chunk.table;
        let stream = client
            .copy_out(&chunk.query())
            .await
            .map_err(|source| Error::Postgres {
                context: format!("COPY {table} chunk {}", chunk.index),
                source,
            })?;
        pin_mut!(stream);
        let mut pending: Vec<u8> = Vec::new();
        let mut rows = 0u64;
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        while let Some(bytes) = stream.next().await {
            let bytes: Bytes = bytes.map_err(|source| Error::Postgres {
                context: format!("COPY {table} chunk {}", chunk.index),
                source,
            })?;
            // PostgreSQL sends a row per CopyData message: split in place
            // unless a message ends inside a row.
            let data: &[u8] = if pending.is_empty() {
                &bytes
            } else {
                pending.extend_from_slice(&bytes);
                &pending
            };
            let mut start = 0;
            while let Some(nl) = data[start..].iter().position(|b| *b == b'\n') {
                batch.push(encode_copy_line(
                    &data[start..start + nl],
                    &info.encoder,
                    table,
                )?);
                rows += 1;
                start += nl + 1;
            }
            if pending.is_empty() {
                pending.extend_from_slice(&bytes[start..]);
            } else {
                pending.drain(..start);
            }
            if batch.len() >= BATCH_ROWS {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS));
                if tx.send(Copied::Rows(info.clone(), full)).await.is_err() {
                    // The publisher stopped (it failed): nothing more to do.
                    return Ok(());
                }
            }
        }
        if !batch.is_empty() && tx.send(Copied::Rows(info.clone(), batch)).await.is_err() {
            return Ok(());
        }
        if !pending.is_empty() {
            return Err(Error::Protocol(format!("COPY {table} ended inside a row")));
        }
        tracing::debug!(table = %table, chunk = chunk.index, rows, "snapshot chunk copied");
        if tx.send(Copied::ChunkEnd(chunk, rows)).await.is_err() {
            return Ok(());
        }
    }
}

/// Snapshot progress: a bar on a terminal, a log line every few seconds
/// otherwise, and the `tributary_cdc_snapshot_*` metrics either way.
struct Progress {
    source: String,
    chunks: usize,
    rows: u64,
    started: Instant,
    last: Instant,
    tty: bool,
}

impl Progress {
    fn new(source: String, chunks: usize) -> Progress {
        crate::metrics::snapshot_started(&source, chunks);
        Progress {
            source,
            chunks,
            rows: 0,
            started: Instant::now(),
            last: Instant::now(),
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn row(&mut self) {
        self.rows += 1;
        if !self.rows.is_multiple_of(1024) {
            return;
        }
        crate::metrics::snapshot_rows(&self.source, self.rows);
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.last.elapsed() >= every {
            self.last = Instant::now();
            self.report();
        }
    }

    fn report(&self) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = self.rows as f64 / secs;
        let done = crate::metrics::snapshot_chunks_done(&self.source);
        // Chunks hold about the same number of rows, so finished chunks
        // estimate the share done better than any row count guess.
        let share = if self.chunks > 0 {
            done as f64 / self.chunks as f64
        } else {
            0.0
        };
        let eta = if share > 0.0 {
            format!("{:.0}s", secs / share - secs)
        } else {
            "?".into()
        };
        if self.tty {
            let width = 30;
            let filled = ((share * width as f64) as usize).min(width);
            eprint!(
                "\rsnapshot {} [{}{}] {done}/{} chunks {} rows {:.0} rows/s ETA {eta}   ",
                self.source,
                "#".repeat(filled),
                ".".repeat(width - filled),
                self.chunks,
                self.rows,
                rate,
            );
        } else {
            tracing::info!(source = %self.source, rows = self.rows, rows_per_sec = rate as u64, chunks_done = done, chunks = self.chunks, eta = %eta, "snapshot progress");
        }
    }

    fn finish(&self) {
        crate::metrics::snapshot_rows(&self.source, self.rows);
        if self.tty {
            self.report();
            eprintln!();
        }
    }
}

/// Encodes one line of COPY text format as a row image and its key.
fn encode_copy_line(line: &[u8], encoder: &TableEncoder, table: &str) -> Result<EncodedRow> {
    let columns = encoder.columns();
    let mut fields: Vec<Option<Cow<'_, str>>> = Vec::with_capacity(columns.len());
    for (i, field) in line.split(|b| *b == b'\t').enumerate() {
        if i >= columns.len() {
            fields.push(None);
            continue;
        }
        fields.push(if field == b"\\N" {
            None
        } else {
            Some(unescape_copy(field).ok_or_else(|| {
                Error::Decode(format!(
                    "COPY value of {table}.{} is not valid text",
                    columns[i].name
                ))
            })?)
        });
    }
    if fields.len() != columns.len() {
        return Err(Error::Decode(format!(
            "COPY row of {table} has {} fields, expected {}",
            fields.len(),
            columns.len()
        )));
    }
    let cells: Vec<Cell<'_>> = fields
        .iter()
        .map(|f| f.as_deref().map_or(Cell::Null, Cell::Text))
        .collect();
    let mut row = EncodedRow {
        after: Vec::with_capacity(256),
        key: Vec::with_capacity(32),
    };
    encoder.row(&cells, &mut row.after, Some(&mut row.key))?;
    Ok(row)
}

/// Undoes COPY text escaping (`\\`, `\t`, `\n`, `\r`, `\b`, `\f`, `\v`,
/// octal `\NNN` and hex `\xHH`).
fn unescape_copy(field: &[u8]) -> Option<Cow<'_, str>> {
    if !field.contains(&b'\\') {
        return std::str::from_utf8(field).ok().map(Cow::Borrowed);
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        if b != b'\\' || i + 1 == field.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let next = field[i + 1];
        i += 2;
        match next {
            b't' => out.push(b'\t'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = (next - b'0') as u32;
                let mut n = 1;
                while n < 3 && i < field.len() && (b'0'..=b'7').contains(&field[i]) {
                    v = v * 8 + (field[i] - b'0') as u32;
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            b'x' => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 && i < field.len() && field[i].is_ascii_hexdigit() {
                    v = v * 16 + (field[i] as char).to_digit(16)?;
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cols() -> Vec<Column> {
        vec![
            Column::new("id", PgType::Int8, true),
            Column::new("note", PgType::Text, false),
            Column::new("price", PgType::Numeric(Some((12, 2))), false),
        ]
    }

    fn parse_copy_line(line: &[u8], columns: &[Column], table: &str) -> Result<Value> {
        let enc = TableEncoder::new("db", 0, table, columns.to_vec());
        let row = encode_copy_line(line, &enc, table)?;
        assert_eq!(
            serde_json::from_slice::<Value>(&row.key).unwrap()["shard"],
            json!(0)
        );
        Ok(serde_json::from_slice(&row.after).unwrap())
    }

    #[test]
    fn parses_copy_rows_with_escapes_and_nulls() {
        let row = parse_copy_line(b"7\ta\\tb\\\\c\\nd\t\\N", &cols(), "t").unwrap();
        assert_eq!(row["id"], json!(7));
        assert_eq!(row["note"], json!("a\tb\\c\nd"));
        assert_eq!(row["price"], Value::Null);
        let row = parse_copy_line(b"1\t\\303\\251t\\x41\t1.50", &cols(), "t").unwrap();
        assert_eq!(row["note"], json!("étA"));
    }

    #[test]
    fn chunks_select_half_open_key_ranges() {
        let chunk = |lo, hi| Chunk {
            table: "orders".into(),
            index: 0,
            key: Some("id".into()),
            lo,
            hi,
        };
        assert_eq!(
            chunk(None, Some(100)).query(),
            "COPY (SELECT * FROM public.orders WHERE \"id\" < 100) TO STDOUT"
        );
        assert_eq!(
            chunk(Some(100), Some(200)).query(),
            "COPY (SELECT * FROM public.orders WHERE \"id\" >= 100 AND \"id\" < 200) TO STDOUT"
        );
        assert_eq!(
            chunk(Some(200), None).query(),
            "COPY (SELECT * FROM public.orders WHERE \"id\" >= 200) TO STDOUT"
        );
        let whole = Chunk {
            key: None,
            ..chunk(None, None)
        };
        assert_eq!(whole.query(), "COPY public.orders TO STDOUT");
    }

    #[test]
    fn wrong_field_count_names_the_table() {
        let err = parse_copy_line(b"1\tx", &cols(), "orders").unwrap_err();
        assert!(err.to_string().contains("orders"), "{err}");
    }
}
