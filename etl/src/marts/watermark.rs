//! The marts' watermark and the changes since it.
//!
//! Every gold commit of run N carries Delta `txn` actions (as ingest records
//! Kafka offsets): `tributary-etl/marts/run` = N,
//! `tributary-etl/marts/definition` = the model fingerprint, and
//! `tributary-etl/marts/<layer>.<table>` = the Delta version of each source
//! the run read. A table's data and its watermark are one atomic commit, so
//! gold never claims input it does not hold.
//!
//! A run continues from the watermark only when every gold table carries
//! the same run number. A run that fails before its commits leaves all of
//! them at N-1 (nothing changed); one interrupted between two commits leaves
//! a mix, which the next run detects and answers with a full refresh.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use tributary_lake::Lake;
use tributary_lake::store::commit_without_data;

use super::models::{GOLD, SOURCES};
use super::session;
use crate::{Error, Result};

const APP: &str = "tributary-etl/marts";

/// What the last successful run recorded.
#[derive(Clone, Debug)]
pub(crate) struct Watermark {
    pub run: i64,
    pub definition: i64,
    /// `layer.table` -> Delta version read.
    pub versions: BTreeMap<String, i64>,
}

impl Watermark {
    pub(crate) fn version(&self, source: String) -> Option<i64> {
        self.versions.get(&source).copied()
    }

    pub(crate) fn commit_properties(&self) -> CommitProperties {
        let mut txns = vec![
            Transaction::new(format!("{APP}/run"), self.run),
            Transaction::new(format!("{APP}/definition"), self.definition),
        ];
        txns.extend(
            self.versions
                .iter()
                .map(|(source, v)| Transaction::new(format!("{APP}/{source}"), *v)),
        );
        CommitProperties::default().with_application_transactions(txns)
    }
}

/// The last complete run's watermark, or why there is none (the reason a
/// run becomes a full refresh).
pub(crate) async fn read(
    lake: &Lake,
    tables: &[&'static str],
) -> Result<std::result::Result<Watermark, String>> {
    let mut found: Vec<(&str, Watermark)> = Vec::new();
    for table in tables {
        let Some(t) = session::open(lake, GOLD, table).await? else {
            return Ok(Err(format!("gold.{table} does not exist yet")));
        };
        let get = |app: String| {
            let t = &t;
            async move {
                let snapshot = t.snapshot().map_err(|source| Error::Write {
                    table: "watermark",
                    source,
                })?;
                snapshot
                    .transaction_version(t.log_store().as_ref(), app)
                    .await
                    .map_err(|source| Error::Write {
                        table: "watermark",
                        source,
                    })
            }
        };
        let Some(run) = get(format!("{APP}/run")).await? else {
            return Ok(Err(format!(
                "gold.{table} was not written by an incremental run"
            )));
        };
        let definition = get(format!("{APP}/definition")).await?.unwrap_or_default();
        let mut versions = BTreeMap::new();
        for (layer, source, _) in SOURCES {
            let source = format!("{layer}.{source}");
            if let Some(v) = get(format!("{APP}/{source}")).await? {
                versions.insert(source, v);
            }
        }
        found.push((
            table,
            Watermark {
                run,
                definition,
                versions,
            },
        ));
    }
    let Some((first, w)) = found.first() else {
        return Ok(Err("no gold tables".into()));
    };
    if let Some((other, o)) = found.iter().find(|(_, o)| o.run != w.run) {
        return Ok(Err(format!(
            "an interrupted run: gold.{first} is at run {} but gold.{other} at run {}",
            w.run, o.run
        )));
    }
    Ok(Ok(w.clone()))
}

/// A commit that records the watermark and changes no data.
pub(crate) async fn commit_only(
    table: &DeltaTable,
    name: &'static str,
    props: CommitProperties,
) -> Result<u64> {
    commit_without_data(table, APP, props)
        .await
        .map_err(|source| Error::Write {
            table: name,
            source,
        })
}

/// One source table pinned at the version a run reads.
pub(crate) struct Source {
    pub layer: &'static str,
    pub table: &'static str,
    pub delta: Option<DeltaTable>,
    /// Files added and removed since the watermark; `None` = everything is new.
    diff: Option<Diff>,
}

struct Diff {
    /// The source at the watermark's version.
    before: DeltaTable,
    added: Vec<String>,
    removed: Vec<String>,
}

impl Source {
    pub(crate) fn new(layer: &'static str, table: &'static str, delta: Option<DeltaTable>) -> Self {
        Source {
            layer,
            table,
            delta,
            diff: None,
        }
    }

    pub(crate) fn name(&self) -> String {
        format!("{}.{}", self.layer, self.table)
    }

    pub(crate) fn version(&self) -> Option<u64> {
        self.delta.as_ref().and_then(|t| t.version())
    }

    /// Compares the pinned version with `since`; an error is the reason to
    /// fall back to a full refresh.
    pub(crate) async fn diff(&mut self, since: Option<i64>) -> std::result::Result<(), String> {
        let name = self.name();
        let (Some(current), Some(since)) = (&self.delta, since) else {
            // New since the last run (or still absent): all of it is new.
            return Ok(());
        };
        let now = current.version().map_or(-1, |v| v as i64);
        if now < since || since < 0 {
            return Err(format!(
                "{name} is at version {now}, older than the watermark {since}"
            ));
        }
        let mut before = current.clone();
        before
            .load_version(since as u64)
            .await
            .map_err(|e| format!("{name} cannot be read at version {since}: {e}"))?;
        let files = |t: &DeltaTable| -> std::result::Result<HashSet<String>, String> {
            Ok(t.snapshot()
                .map_err(|e| format!("{name}: {e}"))?
                .log_data()
                .iter()
                .map(|f| f.path().to_string())
                .collect())
        };
        let old = files(&before)?;
        let new = files(current)?;
        self.diff = Some(Diff {
            added: new.difference(&old).cloned().collect(),
            removed: old.difference(&new).cloned().collect(),
            before,
        });
        Ok(())
    }

    /// The whole table at the pinned version; an absent table is empty.
    pub(crate) async fn current(&self) -> Result<Arc<dyn TableProvider>> {
        match (&self.delta, self.layer) {
            (Some(t), _) => session::provider(t, self.table).await,
            (None, "bronze") => Ok(empty_bronze()),
            (None, _) => Ok(empty_silver(self.table)),
        }
    }

    /// Rows in files added since the watermark (all rows without one).
    pub(crate) async fn added(&self, full: bool) -> Result<Arc<dyn TableProvider>> {
        match (&self.delta, &self.diff, full) {
            (None, _, _) => Ok(empty_like(self.current().await?)),
            (Some(_), None, _) | (Some(_), _, true) => self.current().await,
            (Some(t), Some(d), false) => files(t, self.table, &d.added).await,
        }
    }

    /// For a silver table: the order ids (`id` for `orders`) of rows in
    /// files added or removed since the watermark, as `changed.<table>`.
    pub(crate) async fn changed(&self, full: bool) -> Result<Arc<dyn TableProvider>> {
        let column = if self.table == "orders" {
            "id"
        } else {
            "order_id"
        };
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new(column, arrow::datatypes::DataType::Int64, true),
        ]));
        let mut batches = Vec::new();
        if let (Some(t), false) = (&self.delta, full) {
            let sides: Vec<Arc<dyn TableProvider>> = match &self.diff {
                Some(d) => vec![
                    files(t, self.table, &d.added).await?,
                    files(&d.before, self.table, &d.removed).await?,
                ],
                None => vec![self.current().await?],
            };
            for side in sides {
                let scratch = SessionContext::new();
                scratch
                    .register_table("t", side)
                    .map_err(|source| Error::Source {
                        table: self.table,
                        source,
                    })?;
                let frame = scratch
                    .sql(&format!(
                        "SELECT DISTINCT CAST({column} AS BIGINT) AS {column} FROM t"
                    ))
                    .await
                    .map_err(|source| Error::Source {
                        table: self.table,
                        source,
                    })?;
                batches.extend(frame.collect().await.map_err(|source| Error::Source {
                    table: self.table,
                    source,
                })?);
            }
        }
        let batches = session::conform(self.table, &schema, batches)?;
        Ok(Arc::new(MemTable::try_new(schema, vec![batches]).map_err(
            |source| Error::Source {
                table: self.table,
                source,
            },
        )?))
    }
}

/// A provider over some files of `table` (an empty table for no files).
async fn files(
    table: &DeltaTable,
    name: &'static str,
    paths: &[String],
) -> Result<Arc<dyn TableProvider>> {
    let provider = session::provider(table, name).await?;
    if paths.is_empty() {
        return Ok(empty_like(provider));
    }
    table
        .table_provider()
        .with_file_paths(paths.iter().cloned())
        .await
        .map_err(|source| Error::Source {
            table: name,
            source,
        })
}

fn empty_like(provider: Arc<dyn TableProvider>) -> Arc<dyn TableProvider> {
    Arc::new(MemTable::try_new(provider.schema(), vec![vec![]]).expect("an empty table is valid"))
}

/// An absent optional bronze table: the change-log schema, no rows.
fn empty_bronze() -> Arc<dyn TableProvider> {
    let schema = tributary_lake::schema::bronze_schema();
    Arc::new(MemTable::try_new(schema, vec![vec![]]).expect("an empty table is valid"))
}

/// The columns the models read from an optional silver table that does not
/// exist yet (nothing ingested), empty.
fn empty_silver(table: &str) -> Arc<dyn TableProvider> {
    use arrow::datatypes::{DataType, Field, Schema};
    let ts = super::keys::ts_type;
    let fields = match table {
        "payments" => vec![
            Field::new("id", DataType::Int64, true),
            Field::new("order_id", DataType::Int64, true),
            Field::new("status", DataType::Utf8, true),
            Field::new("created_at", ts(), true),
            Field::new("updated_at", ts(), true),
        ],
        _ => vec![
            Field::new("id", DataType::Int64, true),
            Field::new("order_id", DataType::Int64, true),
            Field::new("shipped_at", ts(), true),
            Field::new("delivered_at", ts(), true),
        ],
    };
    let schema = Arc::new(Schema::new(fields));
    Arc::new(MemTable::try_new(schema, vec![vec![]]).expect("an empty table is valid"))
}
