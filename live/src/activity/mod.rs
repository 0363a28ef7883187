//! Live product activity: views, add-to-carts, orders, units and revenue
//! per product per 5-minute window, into `gold.product_activity_5m`.
//!
//! Inputs: the clickstream (views, add-to-carts) and the CDC topic of
//! `order_items` (an item's creation is one product in one order; its
//! `line_total` is the revenue), with the `orders` database's watermarks.
//! A window is written once, when the watermark passed its end plus the
//! allowed lateness, so the table is append-only and each (product, window)
//! is one row; with the runtime's checkpoints each row is in the table
//! once. The same figures computed in batch (orders, units and revenue from
//! the lake's `order_items` by commit time; add-to-carts from what was
//! sent) equal it for every closed window, less the events the late path
//! recorded in `gold.live_late_events` (`e2e::activity` checks it on the
//! real stack).
//!
//! The top products of the last hour are a query over the table:
//! [`top_products_sql`].

pub mod table;

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};
use tributary_kafka::KafkaConfig;
use tributary_model::clickstream::{ClickEvent, ClickKind};
use tributary_model::event::{ChangeEvent, Op};
use tributary_stream::EventTime;
use tributary_stream::reorder::Timed;
use tributary_stream::source::{Record, TopicKind};
use tributary_stream::window::{KeyedWindows, Merge, Window, WindowSpec};

use crate::fraud::input::parse_cents;
use crate::inputs::{Message, decode, order_inputs, order_shards};
use crate::runtime::Job;
use crate::{Error, Result};

pub const JOB: &str = "activity";
pub const TABLE: &str = "product_activity_5m";
/// The table's window; `[live.activity] window_ms` may shorten it (tests).
pub const WINDOW_US: i64 = 5 * 60 * 1_000_000;

/// One product's activity in one window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    pub views: u64,
    pub add_to_carts: u64,
    /// Order lines of the product (one per order that holds it).
    pub orders: u64,
    pub units: u64,
    pub revenue_cents: i64,
}

impl Merge for Activity {
    fn merge(&mut self, o: Self) {
        self.views += o.views;
        self.add_to_carts += o.add_to_carts;
        self.orders += o.orders;
        self.units += o.units;
        self.revenue_cents += o.revenue_cents;
    }
}

/// What happened to a product.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Touch {
    View,
    AddToCart,
    Ordered { units: u64, revenue_cents: i64 },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Input {
    pub product_id: i64,
    pub t: EventTime,
    pub id: String,
    pub touch: Touch,
}

impl Timed for Input {
    fn event_time(&self) -> EventTime {
        self.t
    }

    fn tiebreak(&self) -> String {
        self.id.clone()
    }
}

/// A closed window of one product.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub product_id: i64,
    pub window: Window,
    pub activity: Activity,
}

pub struct ActivityJob {
    windows: KeyedWindows<i64, Activity>,
    shards: u32,
}

impl ActivityJob {
    pub fn new(shards: u32, window_us: i64, lateness_us: i64) -> Result<ActivityJob> {
        let spec = WindowSpec::tumbling(window_us).map_err(|e| Error::Input(e.to_string()))?;
        Ok(ActivityJob {
            windows: KeyedWindows::new(spec, lateness_us)
                .map_err(|e| Error::Input(e.to_string()))?,
            shards,
        })
    }
}

/// An order item's creation as an input.
pub fn from_change(ev: &ChangeEvent) -> Result<Option<Input>> {
    if ev.source.table != "order_items" || !matches!(ev.op, Op::Create | Op::Read) {
        return Ok(None);
    }
    let Some(row) = ev.after.as_ref() else {
        return Ok(None);
    };
    let bad = |col: &str| {
        Error::Input(format!(
            "event {}: column `{col}` is missing or not a number",
            ev.event_id
        ))
    };
    let int = |col: &str| {
        row.get(col)
            .and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()))
            .ok_or_else(|| bad(col))
    };
    let revenue_cents = row
        .get("line_total")
        .and_then(|v| match v {
            serde_json::Value::String(s) => parse_cents(s),
            serde_json::Value::Number(n) => parse_cents(&n.to_string()),
            _ => None,
        })
        .ok_or_else(|| bad("line_total"))?;
    let t = if ev.op == Op::Read {
        row.get("created_at")
            .and_then(|v| crate::fraud::input::parse_rfc3339_us(v.as_str()?))
            .unwrap_or(ev.source.ts_us)
    } else {
        ev.source.ts_us
    };
    Ok(Some(Input {
        product_id: int("product_id")?,
        t,
        id: ev.event_id.clone(),
        touch: Touch::Ordered {
            units: int("quantity")?.max(0) as u64,
            revenue_cents,
        },
    }))
}

/// A clickstream event as an input.
pub fn from_click(ev: &ClickEvent) -> Input {
    Input {
        product_id: ev.product_id,
        t: ev.ts_us,
        id: ev.event_id.clone(),
        touch: match ev.kind {
            ClickKind::View => Touch::View,
            ClickKind::AddToCart => Touch::AddToCart,
        },
    }
}

impl Job for ActivityJob {
    type Input = Input;
    type Output = Row;
    type State = KeyedWindows<i64, Activity>;

    fn name(&self) -> &'static str {
        JOB
    }

    fn state(&self) -> &Self::State {
        &self.windows
    }

    fn restore(&mut self, state: Self::State) -> Result<()> {
        self.windows = state;
        Ok(())
    }

    fn inputs(&self, kafka: &KafkaConfig) -> Vec<(String, TopicKind)> {
        order_inputs(&kafka.topic_prefix, &["order_items"])
    }

    fn cdc_sources(&self) -> Vec<(String, u32)> {
        order_shards(self.shards)
    }

    fn parse(&self, record: &Record) -> Result<Option<Input>> {
        match decode(record)? {
            Some(Message::Click(ev)) => Ok(Some(from_click(&ev))),
            Some(Message::Change(ev)) => from_change(&ev),
            None => Ok(None),
        }
    }

    fn apply(&mut self, input: &Input, _now_us: i64) -> Vec<Row> {
        let touch = input.touch.clone();
        // A Late answer cannot happen for inputs the runtime released or let
        // through (their windows are open by construction); should it, the
        // runtime's late path has no record of it, so count it here.
        if self
            .windows
            .add(input.product_id, input.t, |a| match &touch {
                Touch::View => a.views += 1,
                Touch::AddToCart => a.add_to_carts += 1,
                Touch::Ordered {
                    units,
                    revenue_cents,
                } => {
                    a.orders += 1;
                    a.units += units;
                    a.revenue_cents += revenue_cents;
                }
            })
            .is_err()
        {
            tracing::error!(
                product = input.product_id,
                t = input.t,
                "an input reached a closed window; this is a bug in tributary"
            );
        }
        Vec::new()
    }

    fn advance(&mut self, watermark: EventTime) -> Vec<Row> {
        self.windows
            .close(watermark)
            .into_iter()
            .map(|(product_id, window, activity)| Row {
                product_id,
                window,
                activity,
            })
            .collect()
    }

    fn rows(&self, rows: &[Row]) -> Result<Vec<RecordBatch>> {
        Ok(vec![table::rows(rows)?])
    }

    async fn publish(&mut self, _rows: &[Row]) -> Result<()> {
        Ok(())
    }
}

/// The top `limit` products of the hour up to the newest closed window, by
/// revenue, as SQL over the table (the seed's "top products of the last
/// hour"; `tributary activity top`).
pub fn top_products_sql(limit: usize) -> String {
    format!(
        "WITH recent AS (SELECT * FROM gold.{TABLE} \
           WHERE window_end > (SELECT max(window_end) FROM gold.{TABLE}) - INTERVAL '1 hour') \
         SELECT product_id, sum(views) AS views, sum(add_to_carts) AS add_to_carts, \
                sum(orders) AS orders, sum(units) AS units, sum(revenue) AS revenue \
         FROM recent GROUP BY product_id ORDER BY revenue DESC, views DESC, product_id LIMIT {limit}"
    )
}

/// Runs the job over `shards` order shards until `shutdown`.
pub async fn run(
    kafka: &KafkaConfig,
    lake: &tributary_lake::Lake,
    shards: u32,
    config: &crate::config::LiveConfig,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<()> {
    let job = ActivityJob::new(
        shards,
        config.activity.window_ms as i64 * 1000,
        config.engine.allowed_lateness_us(),
    )?;
    let output = crate::sink::delta::DeltaOutput::for_job(lake, JOB, TABLE, table::SCHEMA.clone());
    crate::runtime::run(job, kafka, lake, output, &config.engine, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60 * 1_000_000;
    const T0: i64 = 1_700_000_100 * 1_000_000; // a multiple of 5 minutes

    fn input(product: i64, t: EventTime, touch: Touch) -> Input {
        Input {
            product_id: product,
            t,
            id: format!("{product}-{t}"),
            touch,
        }
    }

    #[test]
    fn windows_close_once_with_every_touch_counted() {
        assert_eq!(T0 % WINDOW_US, 0);
        let mut job = ActivityJob::new(1, WINDOW_US, 0).unwrap();
        let inputs = [
            input(1, T0, Touch::View),
            input(1, T0 + MIN, Touch::AddToCart),
            input(
                1,
                T0 + 2 * MIN,
                Touch::Ordered {
                    units: 2,
                    revenue_cents: 2_000,
                },
            ),
            input(2, T0 + 3 * MIN, Touch::View),
            input(1, T0 + 6 * MIN, Touch::View),
        ];
        for i in &inputs {
            assert!(job.apply(i, 0).is_empty());
        }
        assert!(
            job.advance(T0 + 5 * MIN - 1).is_empty(),
            "open until its end"
        );
        let mut closed = job.advance(T0 + 5 * MIN);
        closed.sort_by_key(|r| r.product_id);
        assert_eq!(closed.len(), 2);
        assert_eq!(
            closed[0].activity,
            Activity {
                views: 1,
                add_to_carts: 1,
                orders: 1,
                units: 2,
                revenue_cents: 2_000
            }
        );
        assert_eq!(
            closed[0].window,
            Window {
                start: T0,
                end: T0 + 5 * MIN
            }
        );
        assert_eq!(closed[1].activity.views, 1);
        assert!(
            job.advance(T0 + 5 * MIN + 1).is_empty(),
            "a window closes once"
        );
        let json = serde_json::to_string(job.state()).unwrap();
        job.restore(serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(job.advance(T0 + 10 * MIN).len(), 1);
    }
}
