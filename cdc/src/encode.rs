//! Change events written straight to JSON bytes.
//!
//! The reader's hot path: every row change becomes a
//! [`ChangeEvent`](tributary_model::event::ChangeEvent) envelope and a Kafka
//! key. Building the event as a struct of `serde_json::Value` maps first
//! costs a map, a string per value and a copy of the column list per event;
//! here the source's text values are written into reused buffers instead,
//! with what does not change per table (the column list, the source block,
//! the order of the row's fields) serialised once per table shape.
//!
//! Promise: the bytes are exactly those of `ChangeEvent::to_json` and of
//! `serde_json::to_vec(&ChangeEvent::key())` for the same event (the tests
//! compare both paths). The key matters most: it picks the partition, so a
//! different spelling would move a row's later changes to another partition
//! than its earlier ones.

use serde::Serialize;
use serde_json::{Map, Value};
use tributary_model::event::{Column, Op};
use tributary_model::lsn::Lsn;
use tributary_model::pgtype::{PgType, to_utc};

use crate::{Error, Result};

/// One value of a row image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cell<'a> {
    /// Not in the image (unchanged TOAST, or left out of a key-only image).
    Absent,
    Null,
    /// PostgreSQL's text form of the value.
    Text(&'a str),
}

/// What varies per event besides the row images.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meta {
    pub op: Op,
    pub lsn: Lsn,
    pub ordinal: u64,
    pub ts_us: i64,
    /// Streamed changes carry their transaction id (and Debezium's
    /// transaction block); snapshot rows carry none.
    pub tx_id: Option<u32>,
    pub snapshot: bool,
    pub ts_ms: i64,
}

/// The per-table parts of every event, serialised once.
#[derive(Debug)]
pub(crate) struct TableEncoder {
    table: String,
    columns: Vec<Column>,
    /// Column indices in the order `serde_json::Map` writes their names.
    row_order: Vec<usize>,
    /// The key's fields in the order `serde_json::Map` writes them: `None`
    /// is the shard, `Some(i)` key column `i`.
    key_order: Vec<Option<usize>>,
    /// The `columns` array.
    columns_json: Vec<u8>,
    /// `{"version":…,"table":…,"lsn":` of the source block.
    source_head: Vec<u8>,
    /// `db.shard/`, escaped for a JSON string: event ids start with it.
    id_prefix: Vec<u8>,
    shard: u32,
}

/// Appends a value as `serde_json` serialises it.
fn put<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(out, value).expect("writing JSON into a Vec cannot fail");
}

fn put_u64(out: &mut Vec<u8>, n: u64) {
    put(out, &n);
}

impl TableEncoder {
    pub(crate) fn new(db: &str, shard: u32, table: &str, columns: Vec<Column>) -> TableEncoder {
        // The field order of a row and of a key is whatever serde_json's map
        // gives (sorted, or insertion order with `preserve_order`): ask it.
        let row: Map<String, Value> = columns
            .iter()
            .map(|c| (c.name.clone(), Value::Null))
            .collect();
        let row_order = row
            .keys()
            .filter_map(|k| columns.iter().position(|c| &c.name == k))
            .collect();
        let mut key = Map::new();
        key.insert("shard".into(), Value::Null);
        for c in columns.iter().filter(|c| c.key) {
            key.insert(c.name.clone(), Value::Null);
        }
        let key_order = key
            .keys()
            .map(|k| columns.iter().position(|c| c.key && &c.name == k))
            .collect();
        let mut columns_json = Vec::new();
        put(&mut columns_json, &columns);
        let mut source_head = Vec::new();
        source_head.extend_from_slice(b"{\"version\":");
        put(&mut source_head, env!("CARGO_PKG_VERSION"));
        source_head.extend_from_slice(b",\"connector\":\"postgresql\",\"db\":");
        put(&mut source_head, db);
        source_head.extend_from_slice(b",\"shard\":");
        put(&mut source_head, &shard);
        source_head.extend_from_slice(b",\"schema\":\"public\",\"table\":");
        put(&mut source_head, table);
        source_head.extend_from_slice(b",\"lsn\":");
        let mut id_prefix = Vec::new();
        put(&mut id_prefix, &format!("{db}.{shard}/"));
        // Drop the quotes: the id goes on in the same string.
        id_prefix.pop();
        id_prefix.remove(0);
        TableEncoder {
            table: table.to_string(),
            columns,
            row_order,
            key_order,
            columns_json,
            source_head,
            id_prefix,
            shard,
        }
    }

    pub(crate) fn table(&self) -> &str {
        &self.table
    }

    pub(crate) fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// Writes a row image as a JSON object into `out` (cleared first). With
    /// `key`, also the Kafka key of an event whose identifying image this
    /// is (cleared first); a key column missing from the image is an error.
    pub(crate) fn row(
        &self,
        cells: &[Cell<'_>],
        out: &mut Vec<u8>,
        key: Option<&mut Vec<u8>>,
    ) -> Result<()> {
        if cells.len() != self.columns.len() {
            return Err(Error::Decode(format!(
                "tuple of {} has {} values for {} columns",
                self.table,
                cells.len(),
                self.columns.len()
            )));
        }
        out.clear();
        out.push(b'{');
        let mut first = true;
        for &i in &self.row_order {
            let col = &self.columns[i];
            let text = match cells[i] {
                Cell::Absent => continue,
                Cell::Null => None,
                Cell::Text(t) => Some(t),
            };
            if !first {
                out.push(b',');
            }
            first = false;
            put(out, &col.name);
            out.push(b':');
            match text {
                None => out.extend_from_slice(b"null"),
                Some(t) => write_value(&col.pg_type, &col.name, t, out)?,
            }
        }
        out.push(b'}');
        if let Some(key) = key {
            self.key(cells, key)?;
        }
        Ok(())
    }

    /// The Kafka key: the shard and the primary-key values.
    fn key(&self, cells: &[Cell<'_>], key: &mut Vec<u8>) -> Result<()> {
        key.clear();
        key.push(b'{');
        for (n, field) in self.key_order.iter().enumerate() {
            if n > 0 {
                key.push(b',');
            }
            match *field {
                None => {
                    key.extend_from_slice(b"\"shard\":");
                    put_u64(key, self.shard as u64);
                }
                Some(i) => {
                    let col = &self.columns[i];
                    put(key, &col.name);
                    key.push(b':');
                    match cells[i] {
                        Cell::Absent => {
                            return Err(Error::Value(tributary_model::Error::InvalidEvent(
                                format!("key column {:?} missing from row image", col.name),
                            )));
                        }
                        Cell::Null => key.extend_from_slice(b"null"),
                        Cell::Text(t) => write_value(&col.pg_type, &col.name, t, key)?,
                    }
                }
            }
        }
        key.push(b'}');
        Ok(())
    }

    /// Writes the whole event into `out` (cleared first): row images as
    /// [`TableEncoder::row`] wrote them, and the names of unchanged TOASTed
    /// columns left out of `after`.
    pub(crate) fn event(
        &self,
        meta: &Meta,
        before: Option<&[u8]>,
        after: Option<&[u8]>,
        unchanged: &[&str],
        out: &mut Vec<u8>,
    ) {
        out.clear();
        out.extend_from_slice(b"{\"before\":");
        out.extend_from_slice(before.unwrap_or(b"null"));
        out.extend_from_slice(b",\"after\":");
        out.extend_from_slice(after.unwrap_or(b"null"));
        out.extend_from_slice(b",\"source\":");
        out.extend_from_slice(&self.source_head);
        put_u64(out, meta.lsn.0);
        out.extend_from_slice(b",\"ordinal\":");
        put_u64(out, meta.ordinal);
        out.extend_from_slice(b",\"ts_us\":");
        put(out, &meta.ts_us);
        out.extend_from_slice(b",\"tx_id\":");
        put(out, &meta.tx_id);
        out.extend_from_slice(if meta.snapshot {
            b",\"snapshot\":true},\"op\":\""
        } else {
            b",\"snapshot\":false},\"op\":\""
        });
        out.extend_from_slice(meta.op.as_str().as_bytes());
        out.extend_from_slice(b"\",\"ts_ms\":");
        put(out, &meta.ts_ms);
        out.extend_from_slice(b",\"transaction\":");
        match meta.tx_id {
            // Debezium's block: the transaction and the change's place in it.
            Some(xid) if !meta.snapshot => {
                use std::io::Write;
                write!(
                    out,
                    "{{\"id\":\"{xid}:{}\",\"total_order\":{}}}",
                    meta.lsn, meta.ordinal
                )
                .expect("writing into a Vec cannot fail");
            }
            _ => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"event_id\":\"");
        out.extend_from_slice(&self.id_prefix);
        {
            use std::io::Write;
            let kind = if meta.snapshot { "r" } else { "" };
            write!(out, "{}/{kind}{}\"", meta.lsn, meta.ordinal)
                .expect("writing into a Vec cannot fail");
        }
        if !unchanged.is_empty() {
            out.extend_from_slice(b",\"unchanged_toast\":");
            put(out, unchanged);
        }
        out.extend_from_slice(b",\"columns\":");
        out.extend_from_slice(&self.columns_json);
        out.push(b'}');
    }
}

/// Writes the JSON form of a value in PostgreSQL's text form: exactly the
/// bytes `serde_json` writes for `PgType::text_to_json`'s value (the tests
/// compare), without building the value for the common types. On error
/// `out` may hold part of the value.
pub(crate) fn write_value(
    pg_type: &PgType,
    column: &str,
    text: &str,
    out: &mut Vec<u8>,
) -> Result<()> {
    match pg_type {
        PgType::Int2 | PgType::Int4 | PgType::Int8 => match text.parse::<i64>() {
            Ok(n) => put(out, &n),
            Err(_) => return reference(pg_type, column, text, out),
        },
        PgType::Numeric(_) if text != "NaN" && text.parse::<f64>().is_ok() => put(out, text),
        // RFC 3339 needs no JSON escaping.
        PgType::Timestamptz | PgType::Timestamp => {
            let at = out.len();
            out.push(b'"');
            if write_timestamp(text, *pg_type == PgType::Timestamptz, out).is_none() {
                out.truncate(at);
                return reference(pg_type, column, text, out);
            }
            out.push(b'"');
        }
        PgType::Text | PgType::Uuid | PgType::Other(_) => put(out, text),
        _ => return reference(pg_type, column, text, out),
    }
    Ok(())
}

/// The value through `PgType::text_to_json`: the rare types, and every
/// error, whose message it words.
fn reference(pg_type: &PgType, column: &str, text: &str, out: &mut Vec<u8>) -> Result<()> {
    put(out, &pg_type.text_to_json(column, text)?);
    Ok(())
}

/// PostgreSQL's ISO timestamp output (`YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM[:SS]]]`)
/// as RFC 3339 in UTC (`YYYY-MM-DDTHH:MM:SS.ffffffZ`), the form
/// `PgType::text_to_json` gives, appended to `out`. `None` for anything
/// else, including years outside 0000–9999 (left to the reference path).
fn write_timestamp(text: &str, with_zone: bool, out: &mut Vec<u8>) -> Option<()> {
    let b = text.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b[r].iter().try_fold(0i64, |n, d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &b[19..];
    let mut micros = 0i64;
    if let Some(frac) = rest.strip_prefix(b".") {
        let digits = frac.iter().take_while(|d| d.is_ascii_digit()).count();
        if digits == 0 || digits > 6 {
            return None;
        }
        micros = num(20..20 + digits)?;
        for _ in digits..6 {
            micros *= 10;
        }
        rest = &frac[digits..];
    }
    let mut offset_secs = 0i64;
    if with_zone {
        let sign = match rest.first()? {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        // ±HH, ±HH:MM or ±HH:MM:SS, two digits each.
        let zone = &rest[1..];
        if !matches!(zone.len(), 2 | 5 | 8) {
            return None;
        }
        let mut secs = 0i64;
        for (i, part) in zone.split(|c| *c == b':').enumerate() {
            if part.len() != 2 || !part.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let v = i64::from(part[0] - b'0') * 10 + i64::from(part[1] - b'0');
            secs += v * [3600, 60, 1][i.min(2)];
        }
        offset_secs = sign * secs;
    } else if !rest.is_empty() {
        return None;
    }
    let ((y, m, d), secs) = to_utc((year, month, day), (hour, minute, second), offset_secs)?;
    if !(0..=9999).contains(&y) {
        return None;
    }
    let digits = |out: &mut Vec<u8>, n: i64, width: usize| {
        let mut buf = [b'0'; 6];
        let mut n = n;
        for digit in buf[..width].iter_mut().rev() {
            *digit = b'0' + (n % 10) as u8;
            n /= 10;
        }
        out.extend_from_slice(&buf[..width]);
    };
    digits(out, y, 4);
    out.push(b'-');
    digits(out, m, 2);
    out.push(b'-');
    digits(out, d, 2);
    out.push(b'T');
    digits(out, secs / 3600, 2);
    out.push(b':');
    digits(out, secs % 3600 / 60, 2);
    out.push(b':');
    digits(out, secs % 60, 2);
    out.push(b'.');
    digits(out, micros, 6);
    out.push(b'Z');
    Some(())
}

/// Whether a non-key value is NULL in a row's JSON form: a JSON column can
/// hold a JSON `null`, which reads the same as SQL NULL there.
pub(crate) fn reads_as_null(pg_type: &PgType, cell: Cell<'_>) -> bool {
    match cell {
        Cell::Null => true,
        Cell::Text(t) if *pg_type == PgType::Json => {
            serde_json::from_str::<Value>(t).is_ok_and(|v| v.is_null())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_model::event::{ChangeEvent, Source, Transaction, event_id};

    fn columns() -> Vec<Column> {
        [
            ("id", PgType::Int8, true),
            ("zeta", PgType::Text, false),
            ("amount", PgType::Numeric(Some((12, 2))), false),
            ("at", PgType::Timestamptz, false),
            ("doc", PgType::Json, false),
            ("ok", PgType::Bool, false),
            ("region", PgType::Int4, true),
        ]
        .into_iter()
        .map(|(name, pg_type, key)| Column::new(name, pg_type, key))
        .collect()
    }

    fn value_row(cells: &[Cell<'_>], cols: &[Column]) -> Map<String, Value> {
        let mut m = Map::new();
        for (c, col) in cells.iter().zip(cols) {
            match c {
                Cell::Absent => {}
                Cell::Null => {
                    m.insert(col.name.clone(), Value::Null);
                }
                Cell::Text(t) => {
                    m.insert(
                        col.name.clone(),
                        col.pg_type.text_to_json(&col.name, t).unwrap(),
                    );
                }
            }
        }
        m
    }

    #[test]
    fn bytes_match_the_serde_envelope_and_key() {
        let cols = columns();
        let enc = TableEncoder::new("orders\"x", 3, "orders", cols.clone());
        let after = [
            Cell::Text("42"),
            Cell::Text("tab\there \"q\" é"),
            Cell::Text("12.30"),
            Cell::Text("2026-11-26 07:01:02.5+00"),
            Cell::Text(r#"{"b": 1, "a": [null]}"#),
            Cell::Absent,
            Cell::Text("7"),
        ];
        let before = [
            Cell::Text("42"),
            Cell::Absent,
            Cell::Null,
            Cell::Absent,
            Cell::Absent,
            Cell::Absent,
            Cell::Text("7"),
        ];
        for (op, snapshot, with_before, unchanged) in [
            (Op::Create, false, false, vec![]),
            (Op::Update, false, true, vec!["ok"]),
            (Op::Delete, false, true, vec![]),
            (Op::Read, true, false, vec![]),
        ] {
            let lsn = Lsn(0x1_016B_4E10);
            let meta = Meta {
                op,
                lsn,
                ordinal: 17,
                ts_us: 1_700_000_000_123_456,
                tx_id: (!snapshot).then_some(742),
                snapshot,
                ts_ms: 1_700_000_000_999,
            };
            let after_img = (op != Op::Delete).then_some(&after[..]);
            let before_img = with_before.then_some(&before[..]);
            let ident = if op == Op::Delete { &before } else { &after };
            let (mut a, mut b, mut key, mut out) = (vec![], vec![], vec![], vec![]);
            enc.row(ident, &mut Vec::new(), Some(&mut key)).unwrap();
            if let Some(img) = after_img {
                enc.row(img, &mut a, None).unwrap();
            }
            if let Some(img) = before_img {
                enc.row(img, &mut b, None).unwrap();
            }
            enc.event(
                &meta,
                before_img.map(|_| &b[..]),
                after_img.map(|_| &a[..]),
                &unchanged,
                &mut out,
            );
            let ev = ChangeEvent {
                before: before_img.map(|c| value_row(c, &cols)),
                after: after_img.map(|c| value_row(c, &cols)),
                source: Source {
                    version: env!("CARGO_PKG_VERSION").into(),
                    connector: "postgresql".into(),
                    db: "orders\"x".into(),
                    shard: 3,
                    schema: "public".into(),
                    table: "orders".into(),
                    lsn,
                    ordinal: 17,
                    ts_us: meta.ts_us,
                    tx_id: meta.tx_id,
                    snapshot,
                },
                op,
                ts_ms: meta.ts_ms,
                transaction: (!snapshot).then(|| Transaction {
                    id: format!("742:{lsn}"),
                    total_order: 17,
                }),
                event_id: event_id("orders\"x", 3, lsn, 17, snapshot),
                unchanged_toast: unchanged.iter().map(|s| s.to_string()).collect(),
                columns: cols.clone(),
            };
            assert_eq!(
                String::from_utf8(out).unwrap(),
                String::from_utf8(ev.to_json()).unwrap()
            );
            assert_eq!(
                String::from_utf8(key).unwrap(),
                serde_json::to_string(&ev.key().unwrap()).unwrap()
            );
        }
    }

    #[test]
    fn values_match_the_reference_path() {
        let cases: &[(PgType, &[&str])] = &[
            (
                PgType::Int8,
                &["-42", "0", "9223372036854775807", "+7", "x"],
            ),
            (PgType::Int4, &["7", "1.5"]),
            (PgType::Bool, &["t", "f", "maybe"]),
            (PgType::Float8, &["1.5", "NaN", "-Infinity", "1e300", "0.1"]),
            (
                PgType::Numeric(Some((12, 2))),
                &["12.30", "NaN", "-0.5", "abc"],
            ),
            (
                PgType::Timestamptz,
                &[
                    "2026-11-26 07:01:02.5+00",
                    "2026-01-01 01:00:00.000123+05:30",
                    "2026-01-01 01:00:00-03:30:15",
                    "2000-02-29 23:59:59.999999-01",
                    "0001-01-01 00:00:00+01",
                    "2026-13-01 00:00:00+00",
                    "2026-11-26 07:01:02+5",
                    "2026-11-26 07:01:02.1234567+00",
                    "bad",
                ],
            ),
            (
                PgType::Timestamp,
                &[
                    "2026-11-26 07:01:02",
                    "2026-11-26 07:01:02.25",
                    "2026-11-26 07:01:02+00",
                ],
            ),
            (PgType::Date, &["2026-11-26", "26/11/2026"]),
            (PgType::Json, &[r#"{"b": 1, "a": [1, "x"]}"#, "null", "{"]),
            (PgType::Text, &["plain", "tab\there \"quoted\" \u{1} é"]),
            (PgType::Uuid, &["0e37df36-f698-11e6-8dd4-cb9ced3df976"]),
            (PgType::Other("oid600".into()), &["(1,2)"]),
        ];
        for (t, texts) in cases {
            for text in *texts {
                let mut out = Vec::new();
                match (
                    t.text_to_json("c", text),
                    write_value(t, "c", text, &mut out),
                ) {
                    (Ok(v), Ok(())) => {
                        assert_eq!(out, serde_json::to_vec(&v).unwrap(), "{t} {text:?}")
                    }
                    (Err(a), Err(b)) => assert_eq!(Error::Value(a).to_string(), b.to_string()),
                    (a, b) => panic!("{t} {text:?}: {a:?} vs {b:?}"),
                }
            }
        }
    }

    #[test]
    fn bad_values_and_missing_keys_are_errors() {
        let enc = TableEncoder::new("db", 0, "t", columns());
        let mut cells = [Cell::Absent; 7];
        cells[0] = Cell::Text("x");
        let err = enc.row(&cells, &mut vec![], None).unwrap_err();
        assert!(err.to_string().contains("row value"), "{err}");
        cells[0] = Cell::Text("1");
        let err = enc.row(&cells, &mut vec![], Some(&mut vec![])).unwrap_err();
        assert!(format!("{err:?}").contains("region"), "{err:?}");
        assert!(enc.row(&cells[..3], &mut vec![], None).is_err());
    }
}
