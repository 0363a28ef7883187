//! The marts as models: what each gold table reads and how it is built.
//!
//! SQL models run on DataFusion over these schemas:
//! - `bronze.*`: the change log, pinned at the run's start, and `new.*`:
//!   its rows added since the last run (all of them on a full refresh);
//! - `silver.*`: current state, pinned at the run's start, and
//!   `changed.*`: the order ids of silver rows changed since the last run;
//! - `stage.orders`: `silver.orders` with one row per id;
//! - `stage.order_status_changes`, `stage.payment_events`: histories built
//!   in Rust from bronze (see `history.rs`);
//! - `gold.*`: this run's dimensions and the facts built before;
//! - `prev.*`: gold as the last successful run left it;
//! - `scope.*`: the ids a run rebuilds (`derive`), re-keys (`rekey`) and the
//!   dimension ids that got new versions (`customers`, `products`).
//!
//! Functions: `customer_key_at(customer_id, ts)` / `product_key_at(product_id,
//! ts)` return the key of the dimension version valid at `ts` (-1 when the
//! dimension row has not arrived), `date_key(ts)` the `yyyymmdd` key (-1 for
//! NULL: the Unknown date, or "milestone not reached").

/// The schema of the marts.
pub(crate) const GOLD: &str = "gold";

/// Every gold table, in commit order.
pub(crate) const TABLES: [&str; 8] = [
    "dim_customer",
    "dim_product",
    "fct_order_status_event",
    "fct_payment",
    "fct_order_line",
    "fct_order_fulfillment",
    "agg_daily_sales",
    "dim_date",
];

/// Source tables a run reads, `(layer, table, required)`; a required one
/// must exist.
pub(crate) const SOURCES: &[(&str, &str, bool)] = &[
    ("bronze", "products", true),
    ("bronze", "customers", true),
    ("bronze", "orders", true),
    ("bronze", "payments", false),
    ("silver", "orders", true),
    ("silver", "order_items", true),
    ("silver", "payments", false),
    ("silver", "shipments", false),
];

/// How a model is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// Rust over the bronze change log (SCD2 versions, status histories).
    Rust,
    /// A DataFusion SQL query.
    Sql,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Rust => "rust",
            ModelKind::Sql => "sql",
        }
    }
}

/// A node of the marts DAG, for listing (`etl list`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    /// The gold table the model writes.
    pub name: &'static str,
    pub kind: ModelKind,
    /// What it reads: `bronze.<table>`, `silver.<table>` or a gold model.
    pub depends_on: Vec<&'static str>,
    /// One line on what a row is.
    pub grain: &'static str,
}

/// A fact model: derive rows for a set of ids, re-key rows whose dimension
/// versions changed.
pub(crate) struct Fact {
    pub name: &'static str,
    pub depends_on: &'static [&'static str],
    pub grain: &'static str,
    /// The column a run replaces by: every row of a listed id is rebuilt.
    pub scope_column: &'static str,
    /// The expression `{scope}` filters on, or `None` when the model reads a
    /// stage table that is already limited to the run's ids.
    pub scope_expr: Option<&'static str>,
    pub sql: &'static str,
    /// Rows of `prev.<name>` to re-key: those whose dimension id got new
    /// versions in this run.
    pub rekey_when: &'static str,
    /// Columns recomputed when re-keying (`f` = the previous row, `o` = its
    /// order in `stage.orders`).
    pub rekey: &'static [(&'static str, &'static str)],
}

pub(crate) const STAGE_ORDERS: &str = "
SELECT id, customer_id, status, created_at, updated_at, _shard FROM (
    SELECT *, ROW_NUMBER() OVER (
        PARTITION BY id ORDER BY _commit_ts DESC, _lsn DESC, _ordinal DESC, _shard
    ) AS rn
    FROM silver.orders
) WHERE rn = 1
";

// A row keyed to -1 is re-keyed by the run in which its dimension id gets
// its first version, like any row whose dimension id got a new version.
const CUSTOMER_CHANGED: &str = "customer_id IN (SELECT id FROM scope.customers)";
const CUSTOMER_OR_PRODUCT_CHANGED: &str = "customer_id IN (SELECT id FROM scope.customers) \
     OR product_id IN (SELECT id FROM scope.products)";
const REKEY_LINE: &[(&str, &str)] = &[
    (
        "customer_key",
        "customer_key_at(f.customer_id, f.placed_at)",
    ),
    ("product_key", "product_key_at(f.product_id, f.placed_at)"),
];

/// Facts in build order.
pub(crate) const FACTS: &[Fact] = &[
    Fact {
        name: "fct_order_status_event",
        depends_on: &["bronze.orders", "dim_customer"],
        grain: "one row per order status change (the insert is the first)",
        scope_column: "order_id",
        scope_expr: None,
        sql: "
SELECT
    e.event_id,
    e.order_id,
    e.shard,
    e.customer_id,
    customer_key_at(e.customer_id, e.event_ts) AS customer_key,
    date_key(e.event_ts) AS date_key,
    e.event_ts,
    e.status,
    e.previous_status
FROM stage.order_status_changes e
",
        rekey_when: CUSTOMER_CHANGED,
        rekey: &[("customer_key", "customer_key_at(f.customer_id, f.event_ts)")],
    },
    Fact {
        name: "fct_payment",
        depends_on: &["bronze.payments", "silver.orders", "dim_customer"],
        grain: "one row per payment event: capture (+amount), refund (-amount)",
        scope_column: "payment_id",
        scope_expr: None,
        sql: "
SELECT
    e.event_id,
    e.payment_id,
    e.order_id,
    e.shard,
    o.customer_id,
    customer_key_at(o.customer_id, e.event_ts) AS customer_key,
    date_key(e.event_ts) AS date_key,
    e.event_ts,
    e.payment_status,
    e.method,
    e.amount
FROM stage.payment_events e
LEFT JOIN stage.orders o ON o.id = e.order_id
",
        // A payment whose order was not in silver yet learns its customer
        // when the order arrives.
        rekey_when: "customer_id IN (SELECT id FROM scope.customers) \
             OR customer_id IS NULL AND order_id IN (SELECT id FROM changed.orders)",
        rekey: &[
            ("customer_id", "COALESCE(f.customer_id, o.customer_id)"),
            (
                "customer_key",
                "customer_key_at(COALESCE(f.customer_id, o.customer_id), f.event_ts)",
            ),
        ],
    },
    // One row per silver order line, whatever its order's status. The order
    // side is unique per id, so no line is dropped or repeated and
    // SUM(line_total) reconciles with silver exactly.
    Fact {
        name: "fct_order_line",
        depends_on: &[
            "silver.order_items",
            "silver.orders",
            "dim_customer",
            "dim_product",
        ],
        grain: "one row per order line as placed",
        scope_column: "order_id",
        scope_expr: Some("i.order_id"),
        sql: "
SELECT
    i.id AS order_item_id,
    i.order_id,
    CAST(COALESCE(o._shard, i._shard) AS INT) AS shard,
    o.customer_id,
    i.product_id,
    customer_key_at(o.customer_id, COALESCE(o.created_at, i.created_at)) AS customer_key,
    product_key_at(i.product_id, COALESCE(o.created_at, i.created_at)) AS product_key,
    date_key(COALESCE(o.created_at, i.created_at)) AS date_key,
    COALESCE(o.created_at, i.created_at) AS placed_at,
    COALESCE(o.status, 'unknown') AS status,
    i.quantity,
    i.unit_price,
    i.line_total
FROM silver.order_items i
LEFT JOIN stage.orders o ON o.id = i.order_id
WHERE {scope}
",
        rekey_when: CUSTOMER_OR_PRODUCT_CHANGED,
        rekey: REKEY_LINE,
    },
    // The accumulating snapshot: a milestone is the first time the order
    // reached the status (from the status history); orders captured by a
    // snapshot, whose history starts late, fall back to the payment and
    // shipment timestamps. -1 date keys mean "not reached yet".
    Fact {
        name: "fct_order_fulfillment",
        depends_on: &[
            "silver.order_items",
            "silver.orders",
            "silver.payments",
            "silver.shipments",
            "fct_order_status_event",
            "dim_customer",
            "dim_product",
        ],
        grain: "one row per order line, updated as its order reaches milestones",
        scope_column: "order_id",
        scope_expr: Some("i.order_id"),
        sql: "
WITH milestones AS (
    SELECT
        order_id,
        MIN(CASE WHEN status = 'paid' THEN event_ts END) AS paid_at,
        MIN(CASE WHEN status = 'shipped' THEN event_ts END) AS shipped_at,
        MIN(CASE WHEN status = 'delivered' THEN event_ts END) AS delivered_at,
        MIN(CASE WHEN status = 'cancelled' THEN event_ts END) AS cancelled_at,
        MIN(CASE WHEN status = 'refunded' THEN event_ts END) AS refunded_at
    FROM gold.fct_order_status_event
    GROUP BY order_id
),
payments AS (
    SELECT
        order_id,
        MIN(CASE WHEN status <> 'failed' THEN created_at END) AS paid_at,
        MIN(CASE WHEN status = 'refunded' THEN updated_at END) AS refunded_at
    FROM silver.payments
    GROUP BY order_id
),
shipments AS (
    SELECT order_id, MIN(shipped_at) AS shipped_at, MIN(delivered_at) AS delivered_at
    FROM silver.shipments
    GROUP BY order_id
),
lines AS (
    SELECT
        i.id AS order_item_id,
        i.order_id,
        CAST(COALESCE(o._shard, i._shard) AS INT) AS shard,
        o.customer_id,
        i.product_id,
        i.quantity,
        i.line_total,
        COALESCE(o.status, 'unknown') AS current_status,
        COALESCE(o.created_at, i.created_at) AS placed_at,
        COALESCE(m.paid_at, p.paid_at) AS paid_at,
        COALESCE(m.shipped_at, s.shipped_at) AS shipped_at,
        COALESCE(m.delivered_at, s.delivered_at) AS delivered_at,
        COALESCE(m.cancelled_at, CASE WHEN o.status = 'cancelled' THEN o.updated_at END) AS cancelled_at,
        COALESCE(m.refunded_at, p.refunded_at) AS refunded_at
    FROM silver.order_items i
    LEFT JOIN stage.orders o ON o.id = i.order_id
    LEFT JOIN milestones m ON m.order_id = i.order_id
    LEFT JOIN payments p ON p.order_id = i.order_id
    LEFT JOIN shipments s ON s.order_id = i.order_id
    WHERE {scope}
)
SELECT
    order_item_id,
    order_id,
    shard,
    customer_id,
    product_id,
    customer_key_at(customer_id, placed_at) AS customer_key,
    product_key_at(product_id, placed_at) AS product_key,
    date_key(placed_at) AS placed_date_key,
    date_key(paid_at) AS paid_date_key,
    date_key(shipped_at) AS shipped_date_key,
    date_key(delivered_at) AS delivered_date_key,
    date_key(cancelled_at) AS cancelled_date_key,
    date_key(refunded_at) AS refunded_date_key,
    placed_at,
    paid_at,
    shipped_at,
    delivered_at,
    cancelled_at,
    refunded_at,
    (to_unixtime(paid_at) - to_unixtime(placed_at)) / 3600.0 AS hours_placed_to_paid,
    (to_unixtime(shipped_at) - to_unixtime(paid_at)) / 3600.0 AS hours_paid_to_shipped,
    (to_unixtime(delivered_at) - to_unixtime(shipped_at)) / 3600.0 AS hours_shipped_to_delivered,
    (to_unixtime(delivered_at) - to_unixtime(placed_at)) / 3600.0 AS hours_placed_to_delivered,
    current_status,
    quantity,
    line_total
FROM lines
",
        rekey_when: CUSTOMER_OR_PRODUCT_CHANGED,
        rekey: REKEY_LINE,
    },
    Fact {
        name: "agg_daily_sales",
        depends_on: &["fct_order_line"],
        grain: "one row per day with order lines",
        scope_column: "date_key",
        scope_expr: Some("date_key"),
        sql: "
SELECT
    date_key,
    CAST(COUNT(DISTINCT order_id) AS BIGINT) AS orders,
    CAST(COUNT(*) AS BIGINT) AS lines,
    CAST(COALESCE(SUM(quantity), 0) AS BIGINT) AS units,
    SUM(line_total) AS revenue
FROM gold.fct_order_line
WHERE {scope}
GROUP BY date_key
",
        // Aggregates carry no dimension keys but the date.
        rekey_when: "FALSE",
        rekey: &[],
    },
];

/// The whole DAG in build order.
pub fn models() -> Vec<ModelInfo> {
    let mut out = vec![
        ModelInfo {
            name: "dim_customer",
            kind: ModelKind::Rust,
            depends_on: vec!["bronze.customers"],
            grain: "one row per customer version (SCD2 on every attribute)",
        },
        ModelInfo {
            name: "dim_product",
            kind: ModelKind::Rust,
            depends_on: vec!["bronze.products"],
            grain: "one row per product version (SCD2 on price and category)",
        },
    ];
    for f in FACTS {
        let rust_stage = f.scope_expr.is_none();
        out.push(ModelInfo {
            name: f.name,
            kind: if rust_stage {
                ModelKind::Rust
            } else {
                ModelKind::Sql
            },
            depends_on: f.depends_on.to_vec(),
            grain: f.grain,
        });
    }
    out.push(ModelInfo {
        name: "dim_date",
        kind: ModelKind::Rust,
        depends_on: FACTS.iter().map(|f| f.name).collect(),
        grain: "one row per calendar day of every year the facts touch",
    });
    out
}

/// A fingerprint of every model definition: a run whose models differ from
/// the last run's rebuilds everything instead of patching rows built by
/// other definitions.
pub(crate) fn definition_hash() -> i64 {
    use super::history::{DIM_CUSTOMER, DIM_PRODUCT};
    let mut text = String::from(STAGE_ORDERS);
    for f in FACTS {
        text.push_str(f.name);
        text.push_str(f.sql);
        text.push_str(f.rekey_when);
        for (c, e) in f.rekey {
            text.push_str(c);
            text.push_str(e);
        }
    }
    for d in [DIM_CUSTOMER, DIM_PRODUCT] {
        text.push_str(d.table);
        for a in d.attrs {
            text.push_str(&format!("{}:{:?}:{}", a.name, a.kind, a.tracked));
        }
    }
    // Bump when the Rust-built tables change shape or meaning.
    text.push_str("rust-models-v1");
    super::keys::surrogate_key(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_come_after_their_dependencies() {
        let models = models();
        for (i, m) in models.iter().enumerate() {
            for dep in &m.depends_on {
                if let Some((layer, table)) = dep.split_once('.') {
                    assert!(
                        SOURCES.iter().any(|(l, t, _)| *l == layer && *t == table),
                        "{} reads unregistered {dep}",
                        m.name
                    );
                } else {
                    let at = models.iter().position(|o| o.name == *dep);
                    assert!(
                        at.is_some_and(|at| at < i),
                        "{} depends on {dep} built later",
                        m.name
                    );
                }
            }
        }
        let names: Vec<_> = models.iter().map(|m| m.name).collect();
        assert_eq!(names, TABLES, "listing order is commit order");
    }
}
