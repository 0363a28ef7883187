//! The batch oracle: the seven fraud rules written again, independently of
//! the detector, as DataFusion SQL over bronze and the clickstream.
//!
//! Written from the rules' documented meaning (`tributary_live::fraud`'s
//! module docs), not from the detector's code:
//! - event time: `commit_ts` for a change (`op = c`, customers also `u`);
//!   the row's `created_at` for a snapshot row (`op = r`); the click's
//!   `ts_us` for an add-to-cart. Facts of one customer are ordered by
//!   `(event time, event id)`; "earlier" below means before in that order;
//! - hopping windows (velocity, failed payments) are epoch aligned,
//!   `[start, start + window)` with starts at multiples of `slide`; a window
//!   alerts once when its count reaches the threshold (velocity: more than
//!   `max_orders`, failed payments: `min_failed`), its id carrying its end;
//! - card testing: sessions of a customer's payments that did not fail,
//!   a new session when the gap to the previous one is at least `gap`; a
//!   payment of at least `large_amount` alerts when its session already
//!   holds `min_tiny` payments under `tiny_amount`; the id carries the
//!   session's end as it stands then, the payment's time + gap;
//! - amount spike, new account, country mismatch, cart-then-large: one
//!   order against the customer's earlier facts, the id carrying the
//!   order's time.
//!
//! The JSON row images in bronze are read with small scalar functions
//! (`json_text`, `json_int`, `json_cents` in exact integer cents,
//! `json_ts_us`), since DataFusion has none. Clickstream events the
//! detector recorded as late (`gold.live_late_events`) are left out: it
//! never applied them.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use datafusion::prelude::SessionContext;
use tributary_live::fraud::rules::Rules;

use crate::{Error, Result};

/// Bronze rows of one table: `event_id`, `op`, `commit_us` (Int64),
/// `after` (JSON text).
pub type BronzeRows = Vec<RecordBatch>;

/// One clickstream message, as read from the topic.
#[derive(Clone, Debug, PartialEq)]
pub struct Click {
    pub event_id: String,
    pub add_to_cart: bool,
    pub customer_id: i64,
    pub ts_us: i64,
    pub partition: i32,
    pub offset: i64,
}

/// What the oracle reads.
pub struct Inputs {
    pub orders: BronzeRows,
    pub payments: BronzeRows,
    pub customers: BronzeRows,
    pub clicks: Vec<Click>,
    /// `(partition, offset)` of clickstream messages on the late path.
    pub late_clicks: HashSet<(i32, i64)>,
}

/// The schema of [`BronzeRows`].
pub fn bronze_rows_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("op", DataType::Utf8, false),
        Field::new("commit_us", DataType::Int64, false),
        Field::new("after", DataType::Utf8, true),
    ]))
}

/// The alert ids the rules give over `inputs`.
pub async fn alert_ids(inputs: &Inputs, rules: &Rules) -> Result<BTreeSet<String>> {
    let ctx = SessionContext::new();
    for udf in [json_text(), json_int(), json_cents(), json_ts_us()] {
        ctx.register_udf(udf);
    }
    for (name, rows) in [
        ("orders_raw", &inputs.orders),
        ("payments_raw", &inputs.payments),
        ("customers_raw", &inputs.customers),
    ] {
        register(&ctx, name, bronze_rows_schema(), plain(rows)?)?;
    }
    register(
        &ctx,
        "clicks_raw",
        clicks_schema(),
        vec![clicks_batch(inputs)?],
    )?;

    // The facts, once: each a customer, an event time and an event id.
    let snapshot_time = "CASE WHEN op = 'r' THEN COALESCE(json_ts_us(after, 'created_at'), commit_us) ELSE commit_us END";
    materialise(
        &ctx,
        "orders",
        &format!(
            "SELECT event_id AS id, {snapshot_time} AS t,
                    json_int(after, 'customer_id') AS cid,
                    json_cents(after, 'total') AS cents,
                    json_text(after, 'device_id') AS device,
                    json_text(after, 'billing_country') AS billing,
                    json_text(after, 'shipping_country') AS shipping
             FROM orders_raw WHERE op IN ('c', 'r')"
        ),
    )
    .await?;
    materialise(
        &ctx,
        "payments",
        &format!(
            "SELECT event_id AS id, {snapshot_time} AS t,
                    json_int(after, 'customer_id') AS cid,
                    json_cents(after, 'amount') AS cents,
                    COALESCE(json_text(after, 'status') = 'failed', false) AS failed
             FROM payments_raw
             WHERE op IN ('c', 'r') AND json_int(after, 'customer_id') IS NOT NULL"
        ),
    )
    .await?;
    materialise(
        &ctx,
        "customers",
        &format!(
            "SELECT event_id AS id, {snapshot_time} AS t,
                    json_int(after, 'id') AS cid,
                    json_ts_us(after, 'created_at') AS created,
                    json_text(after, 'country') AS country
             FROM customers_raw WHERE op IN ('c', 'r', 'u')"
        ),
    )
    .await?;
    materialise(
        &ctx,
        "carts",
        "SELECT event_id AS id, ts_us AS t, customer_id AS cid FROM clicks_raw
         WHERE add_to_cart AND NOT late",
    )
    .await?;

    let mut ids = BTreeSet::new();
    for sql in rule_queries(rules) {
        for b in ctx
            .sql(&sql)
            .await
            .map_err(df(&sql))?
            .collect()
            .await
            .map_err(df(&sql))?
        {
            let col = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
            let col = col.as_string::<i32>();
            for i in 0..col.len() {
                ids.insert(col.value(i).to_string());
            }
        }
    }
    Ok(ids)
}

/// `a` before `b` in a customer's timeline.
fn before(a: &str, b: &str) -> String {
    format!("({a}.t < {b}.t OR ({a}.t = {b}.t AND {a}.id < {b}.id))")
}

fn id_of(rule: &str, cid: &str, end: &str) -> String {
    format!("concat('{rule}/customer/', CAST({cid} AS VARCHAR), '/', CAST({end} AS VARCHAR))")
}

/// One query per rule in force, each giving one column of alert ids.
fn rule_queries(rules: &Rules) -> Vec<String> {
    let mut out = Vec::new();
    let hops = |window: i64, slide: i64| {
        let k: Vec<String> = (0..window / slide).map(|k| format!("({k})")).collect();
        format!("(VALUES {}) AS hop(k)", k.join(", "))
    };
    if let Some(r) = &rules.velocity {
        // Every window [start, start + window) holding the order.
        out.push(format!(
            "SELECT {id} FROM (
               SELECT o.cid, (o.t / {s} - hop.k) * {s} AS start
               FROM orders o CROSS JOIN {hops}) w
             GROUP BY cid, start HAVING count(*) >= {threshold}",
            id = id_of("velocity", "cid", &format!("(start + {})", r.window_us)),
            s = r.slide_us,
            hops = hops(r.window_us, r.slide_us),
            threshold = i64::from(r.max_orders) + 1,
        ));
    }
    if let Some(r) = &rules.failed_payments {
        out.push(format!(
            "SELECT {id} FROM (
               SELECT p.cid, (p.t / {s} - hop.k) * {s} AS start
               FROM payments p CROSS JOIN {hops} WHERE p.failed) w
             GROUP BY cid, start HAVING count(*) >= {threshold}",
            id = id_of(
                "failed_payments",
                "cid",
                &format!("(start + {})", r.window_us)
            ),
            s = r.slide_us,
            hops = hops(r.window_us, r.slide_us),
            threshold = r.min_failed,
        ));
    }
    if let Some(r) = &rules.amount_spike {
        out.push(format!(
            "SELECT {id} FROM orders o JOIN orders h ON h.cid = o.cid AND {before}
             GROUP BY o.cid, o.t, o.id, o.cents
             HAVING count(*) >= {min}
                AND CAST(o.cents AS DOUBLE) >= {factor:?} * (CAST(sum(h.cents) AS DOUBLE) / CAST(count(*) AS DOUBLE))",
            id = id_of("amount_spike", "o.cid", "o.t"),
            before = before("h", "o"),
            min = r.min_history,
            factor = r.factor,
        ));
    }
    if let Some(r) = &rules.new_account_large {
        // The creation time known last before the order.
        out.push(format!(
            "SELECT {id} FROM (
               SELECT o.cid, o.t, c.created,
                      row_number() OVER (PARTITION BY o.cid, o.t, o.id ORDER BY c.t DESC, c.id DESC) AS rn
               FROM orders o JOIN customers c
                 ON c.cid = o.cid AND c.created IS NOT NULL AND {before}
               WHERE o.cents >= {min}) x
             WHERE rn = 1 AND t - created < {age}",
            id = id_of("new_account_large", "cid", "t"),
            before = before("c", "o"),
            min = r.min_cents,
            age = r.max_account_age_us,
        ));
    }
    if rules.country_mismatch {
        // Countries used: home countries of the customer's rows, and where
        // earlier orders shipped.
        out.push(format!(
            "WITH used AS (
               SELECT cid, t, id, country FROM customers WHERE country IS NOT NULL
               UNION ALL
               SELECT cid, t, id, shipping AS country FROM orders WHERE shipping IS NOT NULL)
             SELECT {id} FROM orders o
               LEFT JOIN used u ON u.cid = o.cid AND u.country = o.shipping AND {before}
             WHERE o.billing <> o.shipping
             GROUP BY o.cid, o.t, o.id HAVING count(u.id) = 0",
            id = id_of("country_mismatch", "o.cid", "o.t"),
            before = before("u", "o"),
        ));
    }
    if let Some(r) = &rules.card_testing {
        let w = "PARTITION BY cid ORDER BY t, id";
        out.push(format!(
            "WITH p AS (SELECT cid, t, id, cents FROM payments WHERE NOT failed),
             gaps AS (
               SELECT *, CASE WHEN lag(t) OVER ({w}) IS NULL OR t - lag(t) OVER ({w}) >= {gap}
                              THEN 1 ELSE 0 END AS starts
               FROM p),
             sessions AS (
               SELECT *, sum(starts) OVER ({w} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS session
               FROM gaps),
             counted AS (
               SELECT *, sum(CASE WHEN cents < {tiny} THEN 1 ELSE 0 END)
                           OVER (PARTITION BY cid, session ORDER BY t, id
                                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS tiny
               FROM sessions)
             SELECT {id} FROM counted WHERE cents >= {large} AND tiny >= {min}",
            id = id_of("card_testing", "cid", &format!("(t + {})", r.gap_us)),
            gap = r.gap_us,
            tiny = r.tiny_cents,
            large = r.large_cents,
            min = r.min_tiny,
        ));
    }
    if let Some(r) = &rules.cart_then_large_new_device {
        out.push(format!(
            "WITH large AS (
               SELECT o.cid, o.t, o.id,
                      sum(CASE WHEN p.device = o.device THEN 1 ELSE 0 END) AS seen
               FROM orders o JOIN orders p
                 ON p.cid = o.cid AND p.device IS NOT NULL AND {before_p}
               WHERE o.cents >= {min} AND o.device IS NOT NULL
               GROUP BY o.cid, o.t, o.id),
             carted AS (
               SELECT o.cid, o.t, o.id, count(*) AS carts
               FROM large o JOIN carts c
                 ON c.cid = o.cid AND c.t > o.t - {within} AND {before_c}
               GROUP BY o.cid, o.t, o.id)
             SELECT {id} FROM large JOIN carted USING (cid, t, id)
             WHERE seen = 0 AND carts >= {carts}",
            id = id_of("cart_then_large_new_device", "cid", "t"),
            before_p = before("p", "o"),
            before_c = before("c", "o"),
            min = r.min_cents,
            within = r.within_us,
            carts = r.min_add_to_carts,
        ));
    }
    out
}

fn df(what: &str) -> impl FnOnce(DataFusionError) -> Error + '_ {
    move |e| Error::Run(format!("oracle query failed: {e}\n{what}"))
}

fn register(
    ctx: &SessionContext,
    name: &str,
    schema: Arc<Schema>,
    batches: Vec<RecordBatch>,
) -> Result<()> {
    let table = MemTable::try_new(schema, vec![batches]).map_err(df(name))?;
    ctx.register_table(name, Arc::new(table))
        .map_err(df(name))?;
    Ok(())
}

async fn materialise(ctx: &SessionContext, name: &str, sql: &str) -> Result<()> {
    let frame = ctx.sql(sql).await.map_err(df(sql))?;
    let planned = Arc::new(frame.schema().as_arrow().clone());
    let batches = frame.collect().await.map_err(df(sql))?;
    // The batches' own schema: the plan's may differ in nullability.
    let schema = batches.first().map_or(planned, |b| b.schema());
    register(ctx, name, schema, batches)
}

/// Bronze rows with plain `Utf8` strings (the lake's reader may hand out
/// views) and the schema of [`BronzeRows`].
fn plain(rows: &[RecordBatch]) -> Result<Vec<RecordBatch>> {
    let schema = bronze_rows_schema();
    rows.iter()
        .map(|b| {
            if b.num_columns() != 4 {
                return Err(Error::Internal(format!(
                    "bronze rows with {} columns, expected 4",
                    b.num_columns()
                )));
            }
            let columns: Vec<ArrayRef> = schema
                .fields()
                .iter()
                .zip(b.columns())
                .map(|(f, c)| arrow::compute::cast(c, f.data_type()))
                .collect::<std::result::Result<_, _>>()?;
            Ok(RecordBatch::try_new(schema.clone(), columns)?)
        })
        .collect()
}

fn clicks_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("add_to_cart", DataType::Boolean, false),
        Field::new("customer_id", DataType::Int64, false),
        Field::new("ts_us", DataType::Int64, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("late", DataType::Boolean, false),
    ]))
}

fn clicks_batch(inputs: &Inputs) -> Result<RecordBatch> {
    let c = &inputs.clicks;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(c.iter().map(|c| &c.event_id))),
        Arc::new(BooleanArray::from_iter(
            c.iter().map(|c| Some(c.add_to_cart)),
        )),
        Arc::new(Int64Array::from_iter_values(
            c.iter().map(|c| c.customer_id),
        )),
        Arc::new(Int64Array::from_iter_values(c.iter().map(|c| c.ts_us))),
        Arc::new(Int32Array::from_iter_values(c.iter().map(|c| c.partition))),
        Arc::new(Int64Array::from_iter_values(c.iter().map(|c| c.offset))),
        Arc::new(BooleanArray::from_iter(c.iter().map(|c| {
            Some(inputs.late_clicks.contains(&(c.partition, c.offset)))
        }))),
    ];
    Ok(RecordBatch::try_new(clicks_schema(), columns)?)
}

// --- JSON functions -------------------------------------------------------

/// A scalar function `name(json TEXT, field TEXT) -> T` that reads one
/// field of a JSON object; NULL when the row, the field or its value is
/// null, and an error naming the field when the value is of another kind.
fn json_udf(
    name: &'static str,
    out: DataType,
    read: fn(&serde_json::Value, &str) -> std::result::Result<ScalarValue, String>,
) -> ScalarUDF {
    let out_type = out.clone();
    create_udf(
        name,
        vec![DataType::Utf8, DataType::Utf8],
        out,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let field = match &args[1] {
                ColumnarValue::Scalar(s) => match s {
                    ScalarValue::Utf8(Some(f)) | ScalarValue::LargeUtf8(Some(f)) => f.clone(),
                    ScalarValue::Utf8View(Some(f)) => f.clone(),
                    other => {
                        return Err(DataFusionError::Plan(format!(
                            "{name}: the field name must be a text literal, got {other}"
                        )));
                    }
                },
                ColumnarValue::Array(_) => {
                    return Err(DataFusionError::Plan(format!(
                        "{name}: the field name must be a text literal"
                    )));
                }
            };
            let rows = match &args[0] {
                ColumnarValue::Array(a) => arrow::compute::cast(a, &DataType::Utf8)?,
                ColumnarValue::Scalar(s) => arrow::compute::cast(&s.to_array()?, &DataType::Utf8)?,
            };
            let rows = rows.as_string::<i32>();
            let mut values = Vec::with_capacity(rows.len());
            for i in 0..rows.len() {
                if rows.is_null(i) {
                    values.push(ScalarValue::try_from(&out_type)?);
                    continue;
                }
                let doc: serde_json::Value = serde_json::from_str(rows.value(i)).map_err(|e| {
                    DataFusionError::Execution(format!("{name}: a row image is not JSON: {e}"))
                })?;
                let v = doc.get(&field).unwrap_or(&serde_json::Value::Null);
                if v.is_null() {
                    values.push(ScalarValue::try_from(&out_type)?);
                } else {
                    values.push(read(v, &field).map_err(|e| {
                        DataFusionError::Execution(format!("{name}(after, '{field}'): {e}"))
                    })?);
                }
            }
            if values.is_empty() {
                return Ok(ColumnarValue::Array(arrow::array::new_empty_array(
                    &out_type,
                )));
            }
            Ok(ColumnarValue::Array(ScalarValue::iter_to_array(values)?))
        }),
    )
}

fn json_text() -> ScalarUDF {
    json_udf("json_text", DataType::Utf8, |v, _| match v {
        serde_json::Value::String(s) => Ok(ScalarValue::Utf8(Some(s.clone()))),
        other => Err(format!("not text: {other}")),
    })
}

fn json_int() -> ScalarUDF {
    json_udf("json_int", DataType::Int64, |v, _| {
        let n = match v {
            serde_json::Value::Number(n) => n.as_i64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        };
        n.map(|n| ScalarValue::Int64(Some(n)))
            .ok_or_else(|| format!("not an integer: {v}"))
    })
}

fn json_cents() -> ScalarUDF {
    json_udf("json_cents", DataType::Int64, |v, _| {
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            other => return Err(format!("not an amount: {other}")),
        };
        cents(&text)
            .map(|c| ScalarValue::Int64(Some(c)))
            .ok_or_else(|| format!("not an amount with at most two decimals: {text}"))
    })
}

fn json_ts_us() -> ScalarUDF {
    json_udf("json_ts_us", DataType::Int64, |v, _| {
        let text = v.as_str().ok_or_else(|| format!("not a timestamp: {v}"))?;
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| ScalarValue::Int64(Some(t.timestamp_micros())))
            .map_err(|e| format!("not a timestamp: {text}: {e}"))
    })
}

/// Decimal text (`"12.30"`, `"-0.5"`, `"7"`) as exact cents.
fn cents(text: &str) -> Option<i64> {
    let (sign, digits) = match text.strip_prefix('-') {
        Some(d) => (-1, d),
        None => (1, text),
    };
    let (units, frac) = match digits.split_once('.') {
        Some((u, f)) => (u, f),
        None => (digits, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if units.is_empty() || !all_digits(units) || !all_digits(frac) {
        return None;
    }
    // Trailing zeros beyond two decimals are harmless (`1.500`).
    let frac = frac.trim_end_matches('0');
    if frac.len() > 2 {
        return None;
    }
    let units: i64 = units.parse().ok()?;
    let frac: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<2}").parse().ok()?
    };
    Some(sign * units.checked_mul(100)?.checked_add(frac)?)
}

/// Reads an Int64 column of a batch (used by the callers' row readers).
pub(crate) fn int64(b: &RecordBatch, i: usize) -> Result<&arrow::array::PrimitiveArray<Int64Type>> {
    b.column(i)
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| Error::Internal(format!("column {i} is not Int64")))
}

#[cfg(test)]
mod tests;
