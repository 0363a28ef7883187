//! Data tests over the marts: each is a query that returns the offending
//! rows, so an empty result passes and a failure shows examples.
//!
//! They run inside every build over the new state before anything is
//! committed (a failure leaves gold as it was), and on their own over the
//! lake with [`crate::test_marts`].

use std::fmt;

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::SessionContext;

use crate::{Error, Result};

/// Status values a fact may carry; `unknown` marks a line whose order has not
/// arrived in silver yet.
const ORDER_STATUSES: &str = "'pending', 'paid', 'shipped', 'delivered', 'cancelled', 'refunded'";
/// A declined card is a `failed` payment row; the order stays pending.
const PAYMENT_STATUSES: &str = "'captured', 'refunded', 'failed'";

/// One data test.
#[derive(Clone, Debug)]
pub struct DataTest {
    /// `unique_not_null`, `relationship`, `accepted_values`,
    /// `scd2_no_overlap`, `reconciliation`.
    pub kind: &'static str,
    /// What it checks, e.g. `fct_order_line.customer_key -> dim_customer`.
    pub target: String,
    sql: String,
}

/// A failed data test with up to five offending rows.
#[derive(Clone, Debug)]
pub struct Failure {
    pub kind: &'static str,
    pub target: String,
    pub rows: usize,
    pub examples: Vec<String>,
}

/// The outcome of the data tests of one build.
#[derive(Clone, Debug, Default)]
pub struct DataTestReport {
    pub passed: usize,
    pub failures: Vec<Failure>,
}

impl DataTestReport {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// Whether a test of `kind` on a target containing `target` failed.
    pub fn failed(&self, kind: &str, target: &str) -> bool {
        self.failures
            .iter()
            .any(|f| f.kind == kind && f.target.contains(target))
    }
}

impl fmt::Display for DataTestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "data tests: {} passed, {} failed",
            self.passed,
            self.failures.len()
        )?;
        for fail in &self.failures {
            writeln!(
                f,
                "  FAIL {:<16} {}  ({} offending rows)",
                fail.kind, fail.target, fail.rows
            )?;
            for e in &fail.examples {
                writeln!(f, "       {e}")?;
            }
        }
        Ok(())
    }
}

fn unique_not_null(table: &str, key: &str) -> DataTest {
    DataTest {
        kind: "unique_not_null",
        target: format!("{table}.{key}"),
        sql: format!(
            "SELECT {key} AS key, COUNT(*) AS copies FROM gold.{table} \
             GROUP BY {key} HAVING COUNT(*) > 1 OR {key} IS NULL"
        ),
    }
}

fn relationship(fact: &str, column: &str, dim: &str, dim_key: &str) -> DataTest {
    DataTest {
        kind: "relationship",
        target: format!("{fact}.{column} -> {dim}.{dim_key}"),
        sql: format!(
            "SELECT f.{column} AS key, COUNT(*) AS rows FROM gold.{fact} f \
             LEFT JOIN (SELECT DISTINCT {dim_key} FROM gold.{dim}) d ON d.{dim_key} = f.{column} \
             WHERE d.{dim_key} IS NULL GROUP BY f.{column}"
        ),
    }
}

fn accepted(table: &str, column: &str, values: &str, nullable: bool) -> DataTest {
    let null = if nullable {
        format!("{column} IS NOT NULL AND ")
    } else {
        format!("{column} IS NULL OR ")
    };
    DataTest {
        kind: "accepted_values",
        target: format!("{table}.{column} in ({values})"),
        sql: format!(
            "SELECT {column} AS value, COUNT(*) AS rows FROM gold.{table} \
             WHERE {null}{column} NOT IN ({values}) GROUP BY {column}"
        ),
    }
}

fn scd2(dim: &str, key: &str, id: &str) -> DataTest {
    DataTest {
        kind: "scd2_no_overlap",
        target: format!("{dim} versions of one {id}"),
        sql: format!(
            "SELECT a.{id} AS id, a.{key} AS version_a, b.{key} AS version_b, \
                    a.valid_from, a.valid_to, b.valid_from AS b_from, b.valid_to AS b_to \
             FROM gold.{dim} a JOIN gold.{dim} b ON a.{id} = b.{id} AND a.{key} < b.{key} \
             WHERE a.valid_from < b.valid_to AND b.valid_from < a.valid_to \
                OR a.is_current AND b.is_current \
             UNION ALL \
             SELECT {id}, {key}, NULL, valid_from, valid_to, NULL, NULL FROM gold.{dim} \
             WHERE valid_from > valid_to"
        ),
    }
}

/// Per day: orders, lines and revenue from silver against
/// `agg_daily_sales` and `fct_order_line`.
fn reconciliation() -> DataTest {
    DataTest {
        kind: "reconciliation",
        target: "orders, lines, revenue per day: silver = fct_order_line = agg_daily_sales".into(),
        sql: "
WITH orders AS (
    SELECT id, created_at FROM (
        SELECT id, created_at, ROW_NUMBER() OVER (
            PARTITION BY id ORDER BY _commit_ts DESC, _lsn DESC, _ordinal DESC, _shard
        ) AS rn FROM silver.orders
    ) WHERE rn = 1
),
src AS (
    SELECT date_key(COALESCE(o.created_at, i.created_at)) AS date_key,
           COUNT(DISTINCT i.order_id) AS orders, COUNT(*) AS lines, SUM(i.line_total) AS revenue
    FROM silver.order_items i LEFT JOIN orders o ON o.id = i.order_id
    GROUP BY 1
),
fct AS (
    SELECT date_key, COUNT(DISTINCT order_id) AS orders, COUNT(*) AS lines,
           SUM(line_total) AS revenue
    FROM gold.fct_order_line GROUP BY date_key
),
agg AS (SELECT date_key, orders, lines, revenue FROM gold.agg_daily_sales)
SELECT COALESCE(src.date_key, fct.date_key, agg.date_key) AS date_key,
       src.orders AS silver_orders, fct.orders AS fct_orders, agg.orders AS agg_orders,
       src.lines AS silver_lines, fct.lines AS fct_lines, agg.lines AS agg_lines,
       src.revenue AS silver_revenue, fct.revenue AS fct_revenue, agg.revenue AS agg_revenue
FROM src
FULL OUTER JOIN fct ON fct.date_key = src.date_key
FULL OUTER JOIN agg ON agg.date_key = COALESCE(src.date_key, fct.date_key)
WHERE (src.orders IS DISTINCT FROM fct.orders) OR (src.orders IS DISTINCT FROM agg.orders)
   OR (src.lines IS DISTINCT FROM fct.lines) OR (src.lines IS DISTINCT FROM agg.lines)
   OR (src.revenue IS DISTINCT FROM fct.revenue) OR (src.revenue IS DISTINCT FROM agg.revenue)
"
        .into(),
    }
}

/// Every data test of the marts.
pub fn data_tests() -> Vec<DataTest> {
    let mut tests = vec![
        unique_not_null("dim_date", "date_key"),
        unique_not_null("dim_customer", "customer_key"),
        unique_not_null("dim_product", "product_key"),
        unique_not_null("fct_order_line", "order_item_id"),
        unique_not_null("fct_order_fulfillment", "order_item_id"),
        unique_not_null("fct_order_status_event", "event_id"),
        unique_not_null("fct_payment", "event_id"),
        unique_not_null("agg_daily_sales", "date_key"),
    ];
    let customer = |fact| relationship(fact, "customer_key", "dim_customer", "customer_key");
    let product = |fact| relationship(fact, "product_key", "dim_product", "product_key");
    let date = |fact, column| relationship(fact, column, "dim_date", "date_key");
    tests.extend([
        customer("fct_order_line"),
        product("fct_order_line"),
        date("fct_order_line", "date_key"),
        customer("fct_order_status_event"),
        date("fct_order_status_event", "date_key"),
        customer("fct_payment"),
        date("fct_payment", "date_key"),
        customer("fct_order_fulfillment"),
        product("fct_order_fulfillment"),
        date("agg_daily_sales", "date_key"),
    ]);
    for milestone in [
        "placed",
        "paid",
        "shipped",
        "delivered",
        "cancelled",
        "refunded",
    ] {
        let column = format!("{milestone}_date_key");
        tests.push(relationship(
            "fct_order_fulfillment",
            &column,
            "dim_date",
            "date_key",
        ));
    }
    let with_unknown = format!("{ORDER_STATUSES}, 'unknown'");
    tests.extend([
        accepted("fct_order_line", "status", &with_unknown, false),
        accepted(
            "fct_order_fulfillment",
            "current_status",
            &with_unknown,
            false,
        ),
        accepted("fct_order_status_event", "status", ORDER_STATUSES, false),
        accepted(
            "fct_order_status_event",
            "previous_status",
            ORDER_STATUSES,
            true,
        ),
        accepted("fct_payment", "payment_status", PAYMENT_STATUSES, false),
        scd2("dim_customer", "customer_key", "customer_id"),
        scd2("dim_product", "product_key", "product_id"),
        reconciliation(),
    ]);
    tests
}

/// Runs every data test against the `gold` and `silver` schemas of `ctx`.
pub(crate) async fn run(ctx: &SessionContext) -> Result<DataTestReport> {
    let mut report = DataTestReport::default();
    for test in data_tests() {
        let batches = ctx
            .sql(&test.sql)
            .await
            .map_err(|source| Error::DataTest {
                test: test.target.clone(),
                source,
            })?
            .collect()
            .await
            .map_err(|source| Error::DataTest {
                test: test.target.clone(),
                source,
            })?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows == 0 {
            report.passed += 1;
        } else {
            report.failures.push(Failure {
                kind: test.kind,
                target: test.target.clone(),
                rows,
                examples: examples(&batches, 5),
            });
        }
    }
    Ok(report)
}

/// `column=value, ...` for the first `n` rows.
fn examples(batches: &[RecordBatch], n: usize) -> Vec<String> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let formatters: Vec<_> = b
            .columns()
            .iter()
            .filter_map(|c| ArrayFormatter::try_new(c.as_ref(), &options).ok())
            .collect();
        let schema = b.schema();
        for row in 0..b.num_rows() {
            if out.len() == n {
                return out;
            }
            let cells: Vec<String> = schema
                .fields()
                .iter()
                .zip(&formatters)
                .map(|(f, fmt)| format!("{}={}", f.name(), fmt.value(row)))
                .collect();
            out.push(cells.join(", "));
        }
    }
    out
}
