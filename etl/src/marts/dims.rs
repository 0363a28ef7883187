//! The dimensions: `dim_customer` and `dim_product` as SCD2 versions of the
//! bronze change log (the chains of the rows with new changes, see
//! [`super::history`]), with the point-in-time key lookups the facts call,
//! and `dim_date`, the calendar of every year the facts touch.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Int32Array, Int64Array, RecordBatch,
};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::SessionContext;

use super::commit::{Output, Write};
use super::history::{self, DIM_CUSTOMER, DIM_PRODUCT, DimSpec};
use super::keys::{self, KeyIndex, column};
use super::session;
use crate::{Error, Result};

/// Both SCD2 dimensions, each registered as `gold.<table>` with its key
/// lookup function (`customer_key_at`, `product_key_at`) and the ids that
/// got new versions as `scope.<source>`.
pub(crate) async fn build(ctx: &SessionContext, full: bool) -> Result<Vec<Output>> {
    let mut outputs = Vec::new();
    for spec in [&DIM_CUSTOMER, &DIM_PRODUCT] {
        let (out, ids) = dimension(ctx, spec, full).await?;
        let index = KeyIndex::from_batches(&out.post, spec.key, spec.id).map_err(|source| {
            Error::Model {
                model: spec.table,
                source,
            }
        })?;
        ctx.register_udf(keys::key_lookup_udf(spec.lookup, Arc::new(index)));
        session::register_ids(ctx, spec.source, &ids)?;
        out.register(ctx)?;
        outputs.push(out);
    }
    Ok(outputs)
}

/// A dimension's new state and the natural ids that got new versions.
async fn dimension(
    ctx: &SessionContext,
    spec: &DimSpec,
    full: bool,
) -> Result<(Output, BTreeSet<i64>)> {
    let chains = history::changed_chains(ctx, spec.source, full).await?;
    let versions = spec.versions(&chains, full)?;
    let schema = spec.schema();
    if full {
        let out = Output::overwrite(spec.table, schema, vec![versions]);
        return Ok((out, BTreeSet::new()));
    }
    let changed = session::ids_in(spec.table, &versions, spec.id)?;
    session::register_ids(ctx, "derive", &changed)?;
    let (_, kept) = session::sql(
        ctx,
        spec.table,
        &format!(
            "SELECT * FROM prev.{} WHERE {} NOT IN (SELECT id FROM scope.derive)",
            spec.table, spec.id
        ),
    )
    .await?;
    let mut post = session::conform(spec.table, &schema, kept)?;
    post.push(versions.clone());
    let out = Output {
        name: spec.table,
        schema,
        post,
        write: Write::Replace {
            column: spec.id,
            ids: changed.clone(),
            rows: vec![versions],
        },
    };
    Ok((out, changed))
}

/// `dim_date`, rewritten whole every run from the facts in `gold.*`, and
/// registered as `gold.dim_date`.
pub(crate) async fn calendar(ctx: &SessionContext) -> Result<Output> {
    let days = dim_date(ctx).await?;
    let out = Output::overwrite("dim_date", days.schema(), vec![days]);
    out.register(ctx)?;
    Ok(out)
}

/// Every day of every year the facts touch, plus the Unknown date (-1).
async fn dim_date(ctx: &SessionContext) -> Result<RecordBatch> {
    let (_, batches) = session::sql(
        ctx,
        "dim_date",
        "SELECT MIN(k) AS lo, MAX(k) AS hi FROM (
             SELECT date_key AS k FROM gold.fct_order_line WHERE date_key > 0
             UNION ALL SELECT date_key FROM gold.fct_order_status_event WHERE date_key > 0
             UNION ALL SELECT date_key FROM gold.fct_payment WHERE date_key > 0
             UNION ALL SELECT placed_date_key FROM gold.fct_order_fulfillment WHERE placed_date_key > 0
             UNION ALL SELECT paid_date_key FROM gold.fct_order_fulfillment WHERE paid_date_key > 0
             UNION ALL SELECT shipped_date_key FROM gold.fct_order_fulfillment WHERE shipped_date_key > 0
             UNION ALL SELECT delivered_date_key FROM gold.fct_order_fulfillment WHERE delivered_date_key > 0
             UNION ALL SELECT cancelled_date_key FROM gold.fct_order_fulfillment WHERE cancelled_date_key > 0
             UNION ALL SELECT refunded_date_key FROM gold.fct_order_fulfillment WHERE refunded_date_key > 0
         )",
    )
    .await?;
    let range = batches.first().and_then(|b| {
        let lo = column::<Int64Array>(b, "lo", &DataType::Int64).ok()?;
        let hi = column::<Int64Array>(b, "hi", &DataType::Int64).ok()?;
        (!lo.is_null(0) && !hi.is_null(0)).then(|| (lo.value(0) / 10_000, hi.value(0) / 10_000))
    });
    let mut days: Vec<chrono::NaiveDate> = Vec::new();
    if let Some((first, last)) = range {
        let mut day = chrono::NaiveDate::from_ymd_opt(first as i32, 1, 1).unwrap_or_default();
        let end = chrono::NaiveDate::from_ymd_opt(last as i32, 12, 31).unwrap_or_default();
        while day <= end {
            days.push(day);
            day = day.succ_opt().unwrap_or(end);
            if day == end && days.last() == Some(&end) {
                break;
            }
        }
    }
    use chrono::Datelike;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    let int = |f: &dyn Fn(&chrono::NaiveDate) -> i32| -> ArrayRef {
        Arc::new(Int32Array::from_iter(
            std::iter::once(None).chain(days.iter().map(|d| Some(f(d)))),
        ))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from_iter_values(
            std::iter::once(-1).chain(
                days.iter()
                    .map(|d| d.year() * 10_000 + d.month() as i32 * 100 + d.day() as i32),
            ),
        )),
        Arc::new(Date32Array::from_iter(std::iter::once(None).chain(
            days.iter().map(|d| Some((*d - epoch).num_days() as i32)),
        ))),
        int(&|d| d.year()),
        int(&|d| (d.month() as i32 - 1) / 3 + 1),
        int(&|d| d.month() as i32),
        int(&|d| d.day() as i32),
        int(&|d| d.weekday().number_from_monday() as i32),
        Arc::new(BooleanArray::from_iter(
            std::iter::once(None).chain(
                days.iter()
                    .map(|d| Some(d.weekday().number_from_monday() >= 6)),
            ),
        )),
    ];
    let schema = Arc::new(Schema::new(vec![
        Field::new("date_key", DataType::Int32, false),
        Field::new("date", DataType::Date32, true),
        Field::new("year", DataType::Int32, true),
        Field::new("quarter", DataType::Int32, true),
        Field::new("month", DataType::Int32, true),
        Field::new("day", DataType::Int32, true),
        Field::new("day_of_week", DataType::Int32, true),
        Field::new("is_weekend", DataType::Boolean, true),
    ]));
    RecordBatch::try_new(schema, columns).map_err(|source| Error::Arrow {
        table: "dim_date",
        source,
    })
}
