//! The run history as tables of the SQL console and the wire server:
//! schema `workflows` with `runs` and `attempts`, read from the catalog
//! database each time a statement names them (so a query always sees the
//! history as it is; the history is small next to the lake).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, NaiveDate, Utc};
use datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};

use crate::history::History;

/// The schema's name in the SQL session.
pub const SCHEMA: &str = "workflows";
const TABLES: [&str; 2] = ["runs", "attempts"];

/// `workflows.runs` and `workflows.attempts`.
#[derive(Debug)]
pub struct HistorySchema {
    dsn: String,
}

impl HistorySchema {
    pub fn new(dsn: String) -> HistorySchema {
        HistorySchema { dsn }
    }
}

/// Registers `workflows.runs` and `workflows.attempts` in the session's
/// `datafusion` catalog (the console, the wire server and the web console).
pub fn register(ctx: &datafusion::prelude::SessionContext, dsn: &str) -> DfResult<()> {
    if let Some(catalog) = ctx.catalog("datafusion") {
        catalog.register_schema(SCHEMA, Arc::new(HistorySchema::new(dsn.to_string())))?;
    }
    Ok(())
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn times(v: impl Iterator<Item = Option<DateTime<Utc>>>) -> ArrayRef {
    Arc::new(
        TimestampMicrosecondArray::from(
            v.map(|t| t.map(|t| t.timestamp_micros()))
                .collect::<Vec<_>>(),
        )
        .with_timezone("UTC"),
    )
}

fn texts<'a>(v: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(v.collect::<StringArray>())
}

fn days(d: Option<NaiveDate>) -> Option<i32> {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch");
    d.map(|d| (d - epoch).num_days() as i32)
}

fn external(e: crate::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

async fn runs(history: &History) -> DfResult<(SchemaRef, RecordBatch)> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("run_key", DataType::Utf8, false),
        Field::new("job", DataType::Utf8, false),
        Field::new("logical_time", ts(), false),
        Field::new("logical_date", DataType::Date32, true),
        Field::new("trigger", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("attempts", DataType::Int32, false),
        Field::new("due_at", ts(), false),
        Field::new("started_at", ts(), true),
        Field::new("ended_at", ts(), true),
        Field::new("next_attempt_at", ts(), true),
        Field::new("error", DataType::Utf8, true),
        Field::new("summary", DataType::Utf8, true),
        Field::new("scheduler", DataType::Utf8, true),
        Field::new("epoch", DataType::Int64, true),
    ]));
    let r = history.recent(None, i64::MAX).await.map_err(external)?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(r.iter().map(|r| r.id).collect::<Int64Array>()),
        texts(r.iter().map(|r| Some(r.run_key.as_str()))),
        texts(r.iter().map(|r| Some(r.job.as_str()))),
        times(r.iter().map(|r| Some(r.logical_time))),
        Arc::new(
            r.iter()
                .map(|r| days(r.logical_date))
                .collect::<Date32Array>(),
        ),
        texts(r.iter().map(|r| Some(r.trigger.as_str()))),
        texts(r.iter().map(|r| Some(r.state.as_str()))),
        Arc::new(r.iter().map(|r| r.attempts).collect::<Int32Array>()),
        times(r.iter().map(|r| Some(r.due_at))),
        times(r.iter().map(|r| r.started_at)),
        times(r.iter().map(|r| r.ended_at)),
        times(r.iter().map(|r| r.next_attempt_at)),
        texts(r.iter().map(|r| r.error.as_deref())),
        texts(r.iter().map(|r| r.summary.as_deref())),
        texts(r.iter().map(|r| r.scheduler.as_deref())),
        Arc::new(r.iter().map(|r| r.epoch).collect::<Int64Array>()),
    ];
    Ok((schema.clone(), RecordBatch::try_new(schema, columns)?))
}

async fn attempts(history: &History) -> DfResult<(SchemaRef, RecordBatch)> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Int64, false),
        Field::new("attempt", DataType::Int32, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("started_at", ts(), false),
        Field::new("ended_at", ts(), true),
        Field::new("error", DataType::Utf8, true),
        Field::new("scheduler", DataType::Utf8, false),
        Field::new("epoch", DataType::Int64, false),
    ]));
    let a = history.all_attempts().await.map_err(external)?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(a.iter().map(|(id, _)| *id).collect::<Int64Array>()),
        Arc::new(a.iter().map(|(_, a)| a.attempt).collect::<Int32Array>()),
        texts(a.iter().map(|(_, a)| Some(a.state.as_str()))),
        times(a.iter().map(|(_, a)| Some(a.started_at))),
        times(a.iter().map(|(_, a)| a.ended_at)),
        texts(a.iter().map(|(_, a)| a.error.as_deref())),
        texts(a.iter().map(|(_, a)| Some(a.scheduler.as_str()))),
        Arc::new(a.iter().map(|(_, a)| a.epoch).collect::<Int64Array>()),
    ];
    Ok((schema.clone(), RecordBatch::try_new(schema, columns)?))
}

#[async_trait::async_trait]
impl SchemaProvider for HistorySchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|t| t.to_string()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if !TABLES.contains(&name) {
            return Ok(None);
        }
        let history = History::connect(&self.dsn).await.map_err(external)?;
        let (schema, batch) = if name == "runs" {
            runs(&history).await?
        } else {
            attempts(&history).await?
        };
        Ok(Some(Arc::new(MemTable::try_new(
            schema,
            vec![vec![batch]],
        )?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name)
    }
}
