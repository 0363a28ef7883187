//! The profile as DataFusion SQL over the Delta tables: the reference the
//! polars job is measured against, and a second, independent statement of
//! what a profile is.

use arrow::array::{Float64Array, Int64Array, StringArray};
use arrow::datatypes::DataType;
use datafusion::prelude::SessionContext;

use super::{Inputs, RiskProfile};
use crate::marts::keys::column;
use crate::marts::session;
use crate::{Error, Result};
use tributary_model::profile::split_list;

const MODEL: &str = "customer_risk_profile (DataFusion)";

/// Payments, when silver has none yet: the same columns, no rows.
const NO_PAYMENTS: &str = "SELECT CAST(NULL AS BIGINT) AS customer_id, \
     CAST(NULL AS VARCHAR) AS card_fingerprint, CAST(NULL AS VARCHAR) AS status WHERE false";

fn query(start_us: i64, end_us: i64, payments: bool) -> String {
    let window = format!(
        "created_at >= to_timestamp_micros({start_us}) AND created_at <= to_timestamp_micros({end_us})"
    );
    let payments = if payments {
        format!(
            "SELECT customer_id, card_fingerprint, status FROM silver.payments \
             WHERE customer_id IS NOT NULL AND {window}"
        )
    } else {
        NO_PAYMENTS.to_string()
    };
    format!(
        "WITH o AS (
    SELECT customer_id, CAST(total AS DOUBLE) AS amount, device_id, billing_country, shipping_country
    FROM silver.orders WHERE {window}
), p AS ({payments}
), amounts AS (
    SELECT customer_id, count(*) AS orders_90d, avg(amount) AS amount_mean_90d,
           stddev_samp(amount) AS amount_stddev_90d
    FROM o GROUP BY customer_id
), countries AS (
    SELECT customer_id, string_agg(country, ',' ORDER BY country) AS countries_90d
    FROM (SELECT DISTINCT customer_id, arrow_cast(country, 'Utf8') AS country FROM (
        SELECT customer_id, billing_country AS country FROM o
        UNION ALL SELECT customer_id, shipping_country FROM o
    ) WHERE country IS NOT NULL)
    GROUP BY customer_id
), devices AS (
    SELECT customer_id, string_agg(device_id, ',' ORDER BY device_id) AS devices_90d
    FROM (SELECT DISTINCT customer_id, arrow_cast(device_id, 'Utf8') AS device_id
          FROM o WHERE device_id IS NOT NULL)
    GROUP BY customer_id
), cards AS (
    SELECT customer_id, count(DISTINCT card_fingerprint) AS cards_90d,
           sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed_payments_90d
    FROM p GROUP BY customer_id
), ids AS (
    SELECT customer_id FROM o UNION SELECT customer_id FROM p
)
SELECT ids.customer_id AS customer_id,
       coalesce(a.orders_90d, 0) AS orders_90d,
       a.amount_mean_90d AS amount_mean_90d,
       a.amount_stddev_90d AS amount_stddev_90d,
       coalesce(c.countries_90d, '') AS countries_90d,
       coalesce(d.devices_90d, '') AS devices_90d,
       coalesce(k.cards_90d, 0) AS cards_90d,
       coalesce(k.failed_payments_90d, 0) AS failed_payments_90d
FROM ids
LEFT JOIN amounts a ON a.customer_id = ids.customer_id
LEFT JOIN countries c ON c.customer_id = ids.customer_id
LEFT JOIN devices d ON d.customer_id = ids.customer_id
LEFT JOIN cards k ON k.customer_id = ids.customer_id
ORDER BY customer_id"
    )
}

pub(super) async fn compute(inputs: &Inputs) -> Result<Vec<RiskProfile>> {
    let ctx: SessionContext = session::new()?;
    session::register(
        &ctx,
        "silver",
        "orders",
        session::provider(&inputs.orders, "orders").await?,
    )?;
    if let Some(p) = &inputs.payments {
        session::register(
            &ctx,
            "silver",
            "payments",
            session::provider(p, "payments").await?,
        )?;
    }
    let (start, end) = inputs.window_us();
    let (_, batches) =
        session::sql(&ctx, MODEL, &query(start, end, inputs.payments.is_some())).await?;
    let err = |source| Error::Model {
        model: MODEL,
        source,
    };
    let mut out = Vec::new();
    for b in &batches {
        let ids = column::<Int64Array>(b, "customer_id", &DataType::Int64).map_err(err)?;
        let orders = column::<Int64Array>(b, "orders_90d", &DataType::Int64).map_err(err)?;
        let mean = column::<Float64Array>(b, "amount_mean_90d", &DataType::Float64).map_err(err)?;
        let sd = column::<Float64Array>(b, "amount_stddev_90d", &DataType::Float64).map_err(err)?;
        let countries = column::<StringArray>(b, "countries_90d", &DataType::Utf8).map_err(err)?;
        let devices = column::<StringArray>(b, "devices_90d", &DataType::Utf8).map_err(err)?;
        let cards = column::<Int64Array>(b, "cards_90d", &DataType::Int64).map_err(err)?;
        let failed =
            column::<Int64Array>(b, "failed_payments_90d", &DataType::Int64).map_err(err)?;
        for i in 0..b.num_rows() {
            let orders_90d = orders.value(i);
            out.push(RiskProfile {
                customer_id: ids.value(i),
                orders_90d,
                amount_mean_90d: (orders_90d > 0).then(|| mean.value(i)),
                amount_stddev_90d: (orders_90d > 1).then(|| sd.value(i)),
                countries_90d: split_list(countries.value(i)),
                devices_90d: split_list(devices.value(i)),
                cards_90d: cards.value(i),
                failed_payments_90d: failed.value(i),
            });
        }
    }
    Ok(out)
}
