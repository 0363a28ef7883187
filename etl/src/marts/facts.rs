//! The facts and the aggregate: which ids each one rebuilds in a run (its
//! scope: the orders and payments that changed, and for the daily aggregate
//! the days of the lines rebuilt), the bronze history stages two of them
//! read, running each [`Fact`] model for its scope, and re-keying the
//! previous rows whose dimension versions changed.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;

use super::commit::{Output, Write};
use super::history::{self, Change};
use super::models::{FACTS, Fact};
use super::session::{self, conform, ids, plain_schema, register_ids, sql};
use crate::Result;

/// Every fact in build order, each registered as `gold.<name>` before the
/// next one runs (the aggregate reads the lines).
pub(crate) async fn build(ctx: &SessionContext, full: bool) -> Result<Vec<Output>> {
    let status = stage_history(
        ctx,
        "orders",
        "order_status_changes",
        full,
        history::order_status_changes,
    )
    .await?;
    let payments = stage_history(
        ctx,
        "payments",
        "payment_events",
        full,
        history::payment_events,
    )
    .await?;

    let line_orders = if full {
        BTreeSet::new()
    } else {
        ids(
            ctx,
            "SELECT id FROM changed.orders UNION SELECT order_id FROM changed.order_items",
        )
        .await?
    };
    let mut fulfillment_orders = line_orders.clone();
    fulfillment_orders.extend(&status);
    if !full {
        fulfillment_orders.extend(
            ids(
                ctx,
                "SELECT order_id FROM changed.payments UNION SELECT order_id FROM changed.shipments",
            )
            .await?,
        );
    }
    let mut outputs: Vec<Output> = Vec::new();
    for fact in FACTS {
        let scope = match fact.name {
            "fct_order_status_event" => status.clone(),
            "fct_payment" => payments.clone(),
            "fct_order_line" => line_orders.clone(),
            "fct_order_fulfillment" => fulfillment_orders.clone(),
            "agg_daily_sales" if !full => {
                let lines = outputs
                    .iter()
                    .find(|o| o.name == "fct_order_line")
                    .expect("lines are built before the aggregate");
                days_of_lines(ctx, &lines.replaced_ids()).await?
            }
            _ => BTreeSet::new(),
        };
        let out = build_fact(ctx, fact, full, &scope).await?;
        out.register(ctx)?;
        outputs.push(out);
    }
    Ok(outputs)
}

/// Days of the lines of `orders`, before and after the run.
async fn days_of_lines(ctx: &SessionContext, orders: &BTreeSet<i64>) -> Result<BTreeSet<i64>> {
    register_ids(ctx, "lines", orders)?;
    let mut days = ids(
        ctx,
        "SELECT date_key FROM prev.fct_order_line WHERE order_id IN (SELECT id FROM scope.lines)",
    )
    .await?;
    days.extend(
        ids(
            ctx,
            "SELECT date_key FROM gold.fct_order_line WHERE order_id IN (SELECT id FROM scope.lines)",
        )
        .await?,
    );
    Ok(days)
}

/// Builds a bronze history stage (status changes, payment events) for the
/// rows with new changes and registers it as `stage.<name>`; returns the
/// ids it covers (the fact's scope column: order ids or payment ids).
async fn stage_history(
    ctx: &SessionContext,
    source: &'static str,
    name: &str,
    full: bool,
    build: fn(&BTreeMap<String, Vec<Change>>) -> Result<RecordBatch>,
) -> Result<BTreeSet<i64>> {
    let chains = history::changed_chains(ctx, source, full).await?;
    let stage = build(&chains)?;
    let id_column = if source == "orders" {
        "order_id"
    } else {
        "payment_id"
    };
    let ids = session::ids_in("bronze history", &stage, id_column)?;
    session::register_batches(ctx, "stage", name, stage.schema(), vec![stage])?;
    Ok(ids)
}

/// Runs a fact model for `scope` (all rows on a full refresh), re-keys the
/// previous rows whose dimensions changed, and merges both into the new state.
async fn build_fact(
    ctx: &SessionContext,
    fact: &Fact,
    full: bool,
    scope: &BTreeSet<i64>,
) -> Result<Output> {
    let filter = match (full, fact.scope_expr) {
        (false, Some(expr)) => format!("{expr} IN (SELECT id FROM scope.derive)"),
        _ => "TRUE".into(),
    };
    register_ids(ctx, "derive", scope)?;
    let (planned, derived) = sql(ctx, fact.name, &fact.sql.replace("{scope}", &filter)).await?;
    let schema = plain_schema(&planned);
    let derived = conform(fact.name, &schema, derived)?;
    if full {
        return Ok(Output::overwrite(fact.name, schema, derived));
    }
    let column = fact.scope_column;
    let rekey_ids = if fact.rekey.is_empty() {
        BTreeSet::new()
    } else {
        ids(
        ctx,
        &format!(
            "SELECT {column} FROM prev.{name} WHERE ({when}) AND {column} NOT IN (SELECT id FROM scope.derive)",
            name = fact.name,
            when = fact.rekey_when
        ),
        )
        .await?
    };
    register_ids(ctx, "rekey", &rekey_ids)?;
    let select: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| {
            let name = f.name();
            match fact.rekey.iter().find(|(c, _)| c == name) {
                Some((_, expr)) => format!("{expr} AS {name}"),
                None => format!("f.{name} AS {name}"),
            }
        })
        .collect();
    let rekeyed = if rekey_ids.is_empty() {
        vec![]
    } else {
        sql(
            ctx,
            fact.name,
            &format!(
                "SELECT {} FROM prev.{} f LEFT JOIN stage.orders o ON o.id = f.order_id \
                 WHERE f.{column} IN (SELECT id FROM scope.rekey)",
                select.join(", "),
                fact.name
            ),
        )
        .await?
        .1
    };
    let (_, kept) = sql(
        ctx,
        fact.name,
        &format!(
            "SELECT * FROM prev.{} WHERE {column} NOT IN (SELECT id FROM scope.derive) \
             AND {column} NOT IN (SELECT id FROM scope.rekey)",
            fact.name
        ),
    )
    .await?;
    let mut rows = derived;
    rows.extend(conform(fact.name, &schema, rekeyed)?);
    let mut post = conform(fact.name, &schema, kept)?;
    post.extend(rows.iter().cloned());
    let mut replaced = scope.clone();
    replaced.extend(rekey_ids);
    Ok(Output {
        name: fact.name,
        schema,
        post,
        write: Write::Replace {
            column,
            ids: replaced,
            rows,
        },
    })
}
