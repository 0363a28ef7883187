//! The consistent initial snapshot: COPY of every published table inside a
//! transaction that imported the slot's exported snapshot, so the rows read
//! are exactly the state at the slot's consistent point.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{StreamExt, pin_mut};
use serde_json::{Map, Value};
use tributary_model::event::{ChangeEvent, Column, Op, Source, event_id};
use tributary_model::lsn::Lsn;
use tributary_model::pgtype::PgType;

use crate::reader::SourceDb;
use crate::sink::KafkaSink;
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
        .map(|r| Column {
            name: r.get(0),
            pg_type: PgType::from_oid(r.get::<_, i64>(1) as u32, r.get(2)),
            key: r.get(3),
        })
        .collect())
}

/// Copies every table of `source` under the already-imported snapshot and
/// publishes one `r` event per row. Returns the number of rows.
pub(crate) async fn copy_tables(
    client: &tokio_postgres::Client,
    source: &SourceDb,
    topic_prefix: &str,
    consistent: Lsn,
    sink: &KafkaSink,
    reset: bool,
) -> Result<u64> {
    // Snapshot rows sort just below the consistent point: every streamed
    // commit is at or after it, so any later change of the row wins.
    let lsn = Lsn(consistent.0.saturating_sub(1));
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    let mut total = 0u64;
    for table in &source.tables {
        let columns = table_columns(client, table).await?;
        let topic = tributary_model::domain::topic_name(topic_prefix, &source.db, table);
        let stream = client
            .copy_out(&format!("COPY public.{table} TO STDOUT"))
            .await
            .map_err(|source| Error::Postgres {
                context: format!("COPY {table}"),
                source,
            })?;
        pin_mut!(stream);
        // One event of this snapshot: a row read, or the reset before them.
        let event =
            |op: Op, after: Option<Map<String, Value>>, ordinal: u64, id: String| ChangeEvent {
                before: None,
                after,
                source: Source {
                    version: env!("CARGO_PKG_VERSION").into(),
                    connector: "postgresql".into(),
                    db: source.db.clone(),
                    shard: source.shard,
                    schema: "public".into(),
                    table: table.clone(),
                    lsn,
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
                columns: columns.clone(),
            };
        if reset {
            // This snapshot replaces an interrupted one: a truncate at the
            // position just before the new rows clears what the old one left
            // (rows deleted since would otherwise stay in silver forever).
            let id = format!(
                "{}:{table}",
                event_id(&source.db, source.shard, lsn, 0, true)
            );
            let ev = event(Op::Truncate, None, 0, id);
            let key = serde_json::json!({ "shard": source.shard, "truncate": true });
            sink.send(
                &topic,
                &serde_json::to_vec(&key).expect("json"),
                &ev.to_json(),
            )
            .await?;
        }
        let mut pending: Vec<u8> = Vec::new();
        // Ordinals run on across tables, so snapshot event ids are unique.
        let first = total;
        let mut ordinal = total;
        let emit = |line: &[u8], ordinal: u64| -> Result<ChangeEvent> {
            let after = parse_copy_line(line, &columns, table)?;
            let id = event_id(&source.db, source.shard, lsn, ordinal, true);
            Ok(event(Op::Read, Some(after), ordinal, id))
        };
        while let Some(chunk) = stream.next().await {
            let chunk: Bytes = chunk.map_err(|source| Error::Postgres {
                context: format!("COPY {table}"),
                source,
            })?;
            pending.extend_from_slice(&chunk);
            let mut start = 0;
            while let Some(nl) = pending[start..].iter().position(|b| *b == b'\n') {
                ordinal += 1;
                let ev = emit(&pending[start..start + nl], ordinal)?;
                sink.send(
                    &topic,
                    &serde_json::to_vec(&ev.key()?).expect("json"),
                    &ev.to_json(),
                )
                .await?;
                start += nl + 1;
            }
            pending.drain(..start);
        }
        if !pending.is_empty() {
            return Err(Error::Protocol(format!("COPY {table} ended inside a row")));
        }
        tracing::info!(db = %source.db, shard = source.shard, table = %table, rows = ordinal - first, "snapshot copied table");
        total = ordinal;
    }
    Ok(total)
}

/// Parses one line of COPY text format into a JSON row.
pub(crate) fn parse_copy_line(
    line: &[u8],
    columns: &[Column],
    table: &str,
) -> Result<Map<String, Value>> {
    let fields: Vec<&[u8]> = line.split(|b| *b == b'\t').collect();
    if fields.len() != columns.len() {
        return Err(Error::Decode(format!(
            "COPY row of {table} has {} fields, expected {}",
            fields.len(),
            columns.len()
        )));
    }
    let mut row = Map::with_capacity(columns.len());
    for (field, col) in fields.into_iter().zip(columns) {
        let value = if field == b"\\N" {
            Value::Null
        } else {
            let text = unescape_copy(field).ok_or_else(|| {
                Error::Decode(format!(
                    "COPY value of {table}.{} is not valid text",
                    col.name
                ))
            })?;
            col.pg_type.text_to_json(&col.name, &text)?
        };
        row.insert(col.name.clone(), value);
    }
    Ok(row)
}

/// Undoes COPY text escaping (`\\`, `\t`, `\n`, `\r`, `\b`, `\f`, `\v`,
/// octal `\NNN` and hex `\xHH`).
fn unescape_copy(field: &[u8]) -> Option<String> {
    if !field.contains(&b'\\') {
        return String::from_utf8(field.to_vec()).ok();
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
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cols() -> Vec<Column> {
        vec![
            Column {
                name: "id".into(),
                pg_type: PgType::Int8,
                key: true,
            },
            Column {
                name: "note".into(),
                pg_type: PgType::Text,
                key: false,
            },
            Column {
                name: "price".into(),
                pg_type: PgType::Numeric(Some((12, 2))),
                key: false,
            },
        ]
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
    fn wrong_field_count_names_the_table() {
        let err = parse_copy_line(b"1\tx", &cols(), "orders").unwrap_err();
        assert!(err.to_string().contains("orders"), "{err}");
    }
}
