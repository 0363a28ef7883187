//! Histories from the bronze change log: SCD2 dimension versions and status
//! changes, built in Rust because each needs the previous state of its row
//! (pgoutput sends no before-image for updates), which SQL would have to
//! rebuild with gaps-and-islands windows that are hard to read.
//!
//! Everything here works per *chain*: the changes of one source row (one
//! bronze `key`, i.e. shard and primary key) in commit order. A chain is
//! always rebuilt from all its events, so a run that sees one new event of a
//! row gives the same result as a full refresh; [`changed_chains`] reads
//! the chains a run rebuilds.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Decimal128Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::prelude::SessionContext;
use serde_json::{Map, Value};

use super::keys::{UNKNOWN, column, surrogate_key, ts_type};
use super::session;

/// `valid_to` of a version that is still current.
pub(crate) const END_OF_TIME: i64 = 253_402_214_400_000_000; // 9999-12-31T00:00:00Z
/// `valid_from` of the Unknown member.
pub(crate) const START_OF_TIME: i64 = -2_208_988_800_000_000; // 1900-01-01T00:00:00Z

/// The bronze columns a history reads.
const BRONZE_COLUMNS: &str =
    "event_id, op, shard, lsn, ordinal, commit_ts, key, before, after, unchanged_toast";

/// One change event read back from bronze.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub event_id: String,
    pub op: String,
    pub shard: i32,
    pub lsn: i64,
    pub ordinal: i64,
    pub commit_ts: i64,
    pub key: String,
    /// `after`, or `before` for a delete; empty for a truncate.
    pub row: Map<String, Value>,
    /// Columns whose value did not change and was not sent (TOAST).
    pub unchanged: Vec<String>,
}

/// A bronze row that cannot be read: bronze is written by tributary, so
/// this is a broken invariant, not bad user input.
#[derive(Debug, thiserror::Error)]
#[error("bronze event {event_id}: {message}")]
pub struct BadChange {
    pub event_id: String,
    pub message: String,
}

pub(crate) fn read_changes(batches: &[RecordBatch]) -> Result<Vec<Change>, crate::Error> {
    let internal = |e: datafusion::error::DataFusionError| crate::Error::Model {
        model: "bronze history",
        source: e,
    };
    let ts = ts_type();
    let mut out = Vec::new();
    for b in batches {
        let ids = column::<StringArray>(b, "event_id", &DataType::Utf8).map_err(internal)?;
        let ops = column::<StringArray>(b, "op", &DataType::Utf8).map_err(internal)?;
        let shards = column::<Int32Array>(b, "shard", &DataType::Int32).map_err(internal)?;
        let lsns = column::<Int64Array>(b, "lsn", &DataType::Int64).map_err(internal)?;
        let ordinals = column::<Int64Array>(b, "ordinal", &DataType::Int64).map_err(internal)?;
        let commit = column::<TimestampMicrosecondArray>(b, "commit_ts", &ts).map_err(internal)?;
        let keys = column::<StringArray>(b, "key", &DataType::Utf8).map_err(internal)?;
        let before = column::<StringArray>(b, "before", &DataType::Utf8).map_err(internal)?;
        let after = column::<StringArray>(b, "after", &DataType::Utf8).map_err(internal)?;
        let toast =
            column::<StringArray>(b, "unchanged_toast", &DataType::Utf8).map_err(internal)?;
        for i in 0..b.num_rows() {
            let event_id = ids.value(i).to_string();
            let op = ops.value(i).to_string();
            let image = if op == "d" { &before } else { &after };
            let row = if op == "t" || image.is_null(i) {
                Map::new()
            } else {
                match serde_json::from_str::<Value>(image.value(i)) {
                    Ok(Value::Object(m)) => m,
                    Ok(_) => {
                        return Err(crate::Error::Bronze(BadChange {
                            event_id,
                            message: "row image is not a JSON object".into(),
                        }));
                    }
                    Err(e) => {
                        return Err(crate::Error::Bronze(BadChange {
                            event_id,
                            message: format!("row image is not JSON: {e}"),
                        }));
                    }
                }
            };
            let unchanged = if toast.is_null(i) {
                vec![]
            } else {
                toast.value(i).split(',').map(str::to_string).collect()
            };
            out.push(Change {
                event_id,
                op,
                shard: shards.value(i),
                lsn: lsns.value(i),
                ordinal: ordinals.value(i),
                commit_ts: commit.value(i),
                key: keys.value(i).to_string(),
                row,
                unchanged,
            });
        }
    }
    Ok(out)
}

/// Groups changes into chains in commit order, drops duplicates (the same
/// position twice, e.g. after a compaction re-added files), and turns every
/// truncate into a delete on each chain of its shard written before it.
pub(crate) fn chains(changes: Vec<Change>) -> BTreeMap<String, Vec<Change>> {
    let (truncates, rows): (Vec<Change>, Vec<Change>) =
        changes.into_iter().partition(|c| c.op == "t");
    let mut out: BTreeMap<String, Vec<Change>> = BTreeMap::new();
    for c in rows {
        out.entry(c.key.clone()).or_default().push(c);
    }
    for chain in out.values_mut() {
        let Some(shard) = chain.first().map(|c| c.shard) else {
            continue;
        };
        for t in truncates.iter().filter(|t| t.shard == shard) {
            if chain
                .iter()
                .any(|c| (c.lsn, c.ordinal) < (t.lsn, t.ordinal))
            {
                let mut delete = t.clone();
                delete.op = "d".into();
                delete.key = chain[0].key.clone();
                chain.push(delete);
            }
        }
        chain.sort_by_key(|c| (c.lsn, c.ordinal));
        let mut seen = HashSet::new();
        chain.retain(|c| seen.insert((c.lsn, c.ordinal)));
    }
    out
}

/// The whole history of every row of `bronze.<source>` with a new change
/// (of every row on a full refresh, or when a new truncate closes them all),
/// read from the run's session.
pub(crate) async fn changed_chains(
    ctx: &SessionContext,
    source: &'static str,
    full: bool,
) -> Result<BTreeMap<String, Vec<Change>>, crate::Error> {
    let truncated = !full
        && !session::ids_text(
            ctx,
            &format!("SELECT op FROM new.{source} WHERE op = 't' LIMIT 1"),
        )
        .await?
        .is_empty();
    let everything = full || truncated;
    let query = if everything {
        format!("SELECT {BRONZE_COLUMNS} FROM bronze.{source}")
    } else {
        format!(
            "SELECT {BRONZE_COLUMNS} FROM bronze.{source} WHERE key IN (SELECT key FROM new.{source}) OR op = 't'"
        )
    };
    let (_, batches) = session::sql(ctx, source, &query).await?;
    let mut chains = chains(read_changes(&batches)?);
    if !everything {
        let new_keys =
            session::ids_text(ctx, &format!("SELECT DISTINCT key FROM new.{source}")).await?;
        chains.retain(|k, _| new_keys.contains(k));
    }
    Ok(chains)
}

/// The row as it stood after `change`, given the state before it: values
/// not sent (unchanged TOAST) keep the previous value.
fn advance(state: &mut Map<String, Value>, change: &Change) {
    for (k, v) in &change.row {
        if !change.unchanged.iter().any(|u| u == k) {
            state.insert(k.clone(), v.clone());
        }
    }
}

/// How a dimension attribute is typed in gold.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Text,
    /// `DECIMAL(12, 2)`; the change log carries numerics as exact strings.
    Money,
    Bool,
}

/// A dimension attribute and whether a change to it opens a new version
/// (type 2) or is written over every version (type 1).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Attr {
    pub name: &'static str,
    pub kind: Kind,
    pub tracked: bool,
}

/// An SCD2 dimension built from one bronze table.
#[derive(Debug)]
pub(crate) struct DimSpec {
    pub table: &'static str,
    /// The bronze table, also the name of the `scope.*` table of the ids
    /// that got new versions in a run.
    pub source: &'static str,
    /// The SQL function facts call to find the version valid at a time.
    pub lookup: &'static str,
    pub key: &'static str,
    pub id: &'static str,
    pub attrs: &'static [Attr],
}

pub(crate) const DIM_CUSTOMER: DimSpec = DimSpec {
    table: "dim_customer",
    source: "customers",
    lookup: "customer_key_at",
    key: "customer_key",
    id: "customer_id",
    attrs: &[
        Attr {
            name: "email",
            kind: Kind::Text,
            tracked: true,
        },
        Attr {
            name: "name",
            kind: Kind::Text,
            tracked: true,
        },
        Attr {
            name: "region",
            kind: Kind::Text,
            tracked: true,
        },
        Attr {
            name: "country",
            kind: Kind::Text,
            tracked: true,
        },
        Attr {
            name: "city",
            kind: Kind::Text,
            tracked: true,
        },
        Attr {
            name: "address",
            kind: Kind::Text,
            tracked: true,
        },
    ],
};

pub(crate) const DIM_PRODUCT: DimSpec = DimSpec {
    table: "dim_product",
    source: "products",
    lookup: "product_key_at",
    key: "product_key",
    id: "product_id",
    attrs: &[
        Attr {
            name: "sku",
            kind: Kind::Text,
            tracked: false,
        },
        Attr {
            name: "name",
            kind: Kind::Text,
            tracked: false,
        },
        Attr {
            name: "category",
            kind: Kind::Text,
            tracked: true,
        },
        Attr {
            name: "price",
            kind: Kind::Money,
            tracked: true,
        },
        Attr {
            name: "active",
            kind: Kind::Bool,
            tracked: false,
        },
    ],
};

impl DimSpec {
    pub(crate) fn schema(&self) -> SchemaRef {
        let mut fields = vec![
            Field::new(self.key, DataType::Int64, false),
            Field::new(self.id, DataType::Int64, false),
            Field::new("shard", DataType::Int32, false),
            Field::new("version", DataType::Int32, false),
        ];
        for a in self.attrs {
            let t = match a.kind {
                Kind::Text => DataType::Utf8,
                Kind::Money => DataType::Decimal128(12, 2),
                Kind::Bool => DataType::Boolean,
            };
            fields.push(Field::new(a.name, t, true));
        }
        fields.extend([
            Field::new("valid_from", ts_type(), false),
            Field::new("valid_to", ts_type(), false),
            Field::new("is_current", DataType::Boolean, false),
            Field::new("source_event_id", DataType::Utf8, true),
        ]);
        Arc::new(Schema::new(fields))
    }

    /// Every version of every chain, plus the Unknown member when asked.
    pub(crate) fn versions(
        &self,
        chains: &BTreeMap<String, Vec<Change>>,
        with_unknown: bool,
    ) -> Result<RecordBatch, crate::Error> {
        let mut rows: Vec<Version> = Vec::new();
        if with_unknown {
            rows.push(Version {
                key: UNKNOWN,
                id: UNKNOWN,
                shard: -1,
                number: 0,
                attrs: self
                    .attrs
                    .iter()
                    .map(|a| match a.kind {
                        Kind::Text => Value::String("Unknown".into()),
                        _ => Value::Null,
                    })
                    .collect(),
                valid_from: START_OF_TIME,
                valid_to: END_OF_TIME,
                open: true,
                event_id: None,
            });
        }
        for chain in chains.values() {
            rows.extend(self.chain_versions(chain)?);
        }
        self.to_batch(&rows)
    }

    fn chain_versions(&self, chain: &[Change]) -> Result<Vec<Version>, crate::Error> {
        let mut versions: Vec<Version> = Vec::new();
        let mut state = Map::new();
        for c in chain {
            match c.op.as_str() {
                "d" => {
                    if let Some(last) = versions.last_mut().filter(|v| v.open) {
                        last.valid_to = c.commit_ts.max(last.valid_from);
                        last.open = false;
                    }
                    state.clear();
                }
                _ => {
                    advance(&mut state, c);
                    let attrs: Vec<Value> = self
                        .attrs
                        .iter()
                        .map(|a| state.get(a.name).cloned().unwrap_or(Value::Null))
                        .collect();
                    if let Some(last) = versions.last_mut().filter(|v| v.open) {
                        let same = self
                            .attrs
                            .iter()
                            .zip(attrs.iter().zip(&last.attrs))
                            .all(|(a, (new, old))| !a.tracked || new == old);
                        if same {
                            last.attrs = attrs;
                            continue;
                        }
                    }
                    let id = state.get("id").and_then(Value::as_i64).ok_or_else(|| {
                        crate::Error::Bronze(BadChange {
                            event_id: c.event_id.clone(),
                            message: "row has no integer id".into(),
                        })
                    })?;
                    let mut valid_from = c.commit_ts;
                    match versions.last_mut() {
                        Some(last) => {
                            if last.open {
                                last.valid_to = c.commit_ts.max(last.valid_from);
                                last.open = false;
                            }
                            valid_from = valid_from.max(last.valid_to);
                        }
                        // The first version starts when the row was created,
                        // so a snapshot taken later still covers older facts.
                        None => {
                            if let Some(created) = state.get("created_at").and_then(micros) {
                                valid_from = valid_from.min(created);
                            }
                        }
                    }
                    versions.push(Version {
                        key: surrogate_key(&c.event_id),
                        id,
                        shard: c.shard,
                        number: versions.len() as i32 + 1,
                        attrs,
                        valid_from,
                        valid_to: END_OF_TIME,
                        open: true,
                        event_id: Some(c.event_id.clone()),
                    });
                }
            }
        }
        // Type 1 attributes: every version shows the latest value.
        if let Some(latest) = versions.last().map(|v| v.attrs.clone()) {
            for v in &mut versions {
                for (i, a) in self.attrs.iter().enumerate() {
                    if !a.tracked {
                        v.attrs[i] = latest[i].clone();
                    }
                }
            }
        }
        Ok(versions)
    }

    fn to_batch(&self, rows: &[Version]) -> Result<RecordBatch, crate::Error> {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.key))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.id))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.shard))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.number))),
        ];
        for (i, a) in self.attrs.iter().enumerate() {
            let values = rows.iter().map(|r| &r.attrs[i]);
            let array: ArrayRef = match a.kind {
                Kind::Text => Arc::new(values.map(text).collect::<StringArray>()),
                Kind::Bool => Arc::new(values.map(Value::as_bool).collect::<BooleanArray>()),
                Kind::Money => Arc::new(
                    values
                        .map(cents)
                        .collect::<Decimal128Array>()
                        .with_precision_and_scale(12, 2)
                        .map_err(|source| crate::Error::Arrow {
                            table: self.table,
                            source,
                        })?,
                ),
            };
            columns.push(array);
        }
        columns.extend([
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.valid_from))
                    .with_timezone("UTC"),
            ) as ArrayRef,
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.valid_to))
                    .with_timezone("UTC"),
            ),
            Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.open)))),
            Arc::new(StringArray::from_iter(
                rows.iter().map(|r| r.event_id.as_deref()),
            )),
        ]);
        RecordBatch::try_new(self.schema(), columns).map_err(|source| crate::Error::Arrow {
            table: self.table,
            source,
        })
    }
}

#[derive(Debug)]
struct Version {
    key: i64,
    id: i64,
    shard: i32,
    number: i32,
    attrs: Vec<Value>,
    valid_from: i64,
    valid_to: i64,
    open: bool,
    event_id: Option<String>,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Microseconds of an RFC 3339 timestamp value.
pub(crate) fn micros(v: &Value) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.timestamp_micros())
}

/// Hundredths of a decimal value (`"12.5"`, `"12.50"` or a JSON number).
pub(crate) fn cents(v: &Value) -> Option<i128> {
    let text = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if frac.len() > 2 || int.is_empty() && frac.is_empty() {
        return None;
    }
    let int: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac: i128 = format!("{frac:0<2}").parse().ok()?;
    let value = int * 100 + frac;
    Some(if negative { -value } else { value })
}

/// Schema of `stage.order_status_changes`.
pub(crate) fn order_status_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("order_id", DataType::Int64, false),
        Field::new("shard", DataType::Int32, false),
        Field::new("customer_id", DataType::Int64, true),
        Field::new("event_ts", ts_type(), false),
        Field::new("status", DataType::Utf8, true),
        Field::new("previous_status", DataType::Utf8, true),
    ]))
}

/// Schema of `stage.payment_events`.
pub(crate) fn payment_event_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("payment_id", DataType::Int64, false),
        Field::new("order_id", DataType::Int64, true),
        Field::new("shard", DataType::Int32, false),
        Field::new("event_ts", ts_type(), false),
        Field::new("payment_status", DataType::Utf8, true),
        Field::new("method", DataType::Utf8, true),
        Field::new("amount", DataType::Decimal128(12, 2), true),
    ]))
}

/// A status change: the change that moved `status` away from its previous
/// value (the insert counts as the first change), with the row as it stood.
struct StatusChange<'a> {
    change: &'a Change,
    state: Map<String, Value>,
    previous: Option<String>,
    status: Option<String>,
}

fn status_changes(chain: &[Change]) -> Vec<StatusChange<'_>> {
    let mut out = Vec::new();
    let mut state = Map::new();
    let mut status: Option<String> = None;
    let mut alive = false;
    for c in chain {
        if c.op == "d" {
            state.clear();
            alive = false;
            continue;
        }
        advance(&mut state, c);
        let now = state.get("status").and_then(text);
        if !alive || now != status {
            out.push(StatusChange {
                change: c,
                state: state.clone(),
                previous: if alive { status.clone() } else { None },
                status: now.clone(),
            });
        }
        status = now;
        alive = true;
    }
    out
}

/// One row per order status change.
pub(crate) fn order_status_changes(
    chains: &BTreeMap<String, Vec<Change>>,
) -> Result<RecordBatch, crate::Error> {
    let rows: Vec<StatusChange<'_>> = chains.values().flat_map(|c| status_changes(c)).collect();
    let int = |r: &StatusChange<'_>, f: &str| r.state.get(f).and_then(Value::as_i64);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| &r.change.event_id),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| int(r, "id").unwrap_or(UNKNOWN)),
        )),
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|r| r.change.shard),
        )),
        Arc::new(Int64Array::from_iter(
            rows.iter().map(|r| int(r, "customer_id")),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.change.commit_ts))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.status.as_deref()),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.previous.as_deref()),
        )),
    ];
    RecordBatch::try_new(order_status_schema(), columns).map_err(|source| crate::Error::Arrow {
        table: "fct_order_status_event",
        source,
    })
}

/// One row per payment event: the capture (positive amount) and the refund
/// (negative amount) of each payment; a declined attempt (`failed`) is an
/// event with amount zero.
pub(crate) fn payment_events(
    chains: &BTreeMap<String, Vec<Change>>,
) -> Result<RecordBatch, crate::Error> {
    let rows: Vec<StatusChange<'_>> = chains.values().flat_map(|c| status_changes(c)).collect();
    let int = |r: &StatusChange<'_>, f: &str| r.state.get(f).and_then(Value::as_i64);
    let amounts = rows
        .iter()
        .map(|r| {
            let amount = r.state.get("amount").and_then(cents)?;
            Some(match r.status.as_deref() {
                Some("refunded") => -amount,
                // A declined card moved no money.
                Some("failed") => 0,
                _ => amount,
            })
        })
        .collect::<Decimal128Array>()
        .with_precision_and_scale(12, 2)
        .map_err(|source| crate::Error::Arrow {
            table: "fct_payment",
            source,
        })?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| &r.change.event_id),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| int(r, "id").unwrap_or(UNKNOWN)),
        )),
        Arc::new(Int64Array::from_iter(
            rows.iter().map(|r| int(r, "order_id")),
        )),
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|r| r.change.shard),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.change.commit_ts))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.status.as_deref()),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.state.get("method").and_then(text)),
        )),
        Arc::new(amounts),
    ];
    RecordBatch::try_new(payment_event_schema(), columns).map_err(|source| crate::Error::Arrow {
        table: "fct_payment",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(op: &str, lsn: i64, ts: i64, row: Value) -> Change {
        Change {
            event_id: format!("catalog.0/{lsn}/1"),
            op: op.into(),
            shard: 0,
            lsn,
            ordinal: 1,
            commit_ts: ts,
            key: "{\"id\":1,\"shard\":0}".into(),
            row: row.as_object().cloned().unwrap_or_default(),
            unchanged: vec![],
        }
    }

    fn product(price: &str, category: &str, name: &str) -> Value {
        json!({"id": 1, "sku": "S", "name": name, "category": category, "price": price,
               "active": true, "created_at": "1970-01-01T00:00:00.000050Z"})
    }

    #[test]
    fn every_tracked_change_is_a_version_and_type_1_changes_are_not() {
        let chain = vec![
            change("c", 10, 100, product("1.00", "toys", "a")),
            change("u", 20, 200, product("2.00", "toys", "a")),
            change("u", 30, 200, product("3.00", "toys", "a")),
            change("u", 40, 300, product("3.00", "toys", "renamed")),
            change("u", 50, 400, product("3.00", "games", "renamed")),
            change("d", 60, 500, json!({"id": 1})),
        ];
        let versions = DIM_PRODUCT.chain_versions(&chain).unwrap();
        let spans: Vec<_> = versions
            .iter()
            .map(|v| (v.number, v.valid_from, v.valid_to, v.open))
            .collect();
        // The first version starts at the row's created_at (50 µs).
        assert_eq!(
            spans,
            [
                (1, 50, 200, false),
                (2, 200, 200, false),
                (3, 200, 400, false),
                (4, 400, 500, false)
            ]
        );
        assert!(versions.iter().all(|v| v.attrs[1] == json!("renamed")));
    }

    #[test]
    fn truncates_close_chains_and_duplicates_are_dropped() {
        let mut changes = vec![
            change("c", 10, 100, product("1.00", "toys", "a")),
            change("c", 10, 100, product("1.00", "toys", "a")),
        ];
        let mut t = change("t", 20, 150, json!(null));
        t.key = "{\"shard\":0}".into();
        changes.push(t);
        let chains = chains(changes);
        assert_eq!(chains.len(), 1);
        let versions = DIM_PRODUCT
            .chain_versions(&chains.values().next().unwrap()[..])
            .unwrap();
        assert_eq!(versions.len(), 1);
        assert_eq!((versions[0].valid_to, versions[0].open), (150, false));
    }

    #[test]
    fn status_changes_skip_updates_that_keep_the_status() {
        let order = |status: &str| json!({"id": 5, "customer_id": 9, "status": status});
        let chain = vec![
            change("c", 10, 100, order("pending")),
            change("u", 20, 200, order("pending")),
            change("u", 30, 300, order("paid")),
        ];
        let changes = status_changes(&chain);
        let got: Vec<_> = changes
            .iter()
            .map(|c| (c.previous.clone(), c.status.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (None, Some("pending".to_string())),
                (Some("pending".to_string()), Some("paid".to_string()))
            ]
        );
    }

    #[test]
    fn cents_are_exact() {
        assert_eq!(cents(&json!("12.5")), Some(1250));
        assert_eq!(cents(&json!("-0.05")), Some(-5));
        assert_eq!(cents(&json!(7)), Some(700));
        assert_eq!(cents(&json!("1.234")), None);
        assert_eq!(cents(&json!("x")), None);
    }
}
