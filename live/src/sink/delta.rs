//! A live job's Delta output, exactly once.
//!
//! Promise: every output a job produced between checkpoints N-1 and N is
//! appended in one Delta commit that carries the Delta `txn` action
//! `(<app>, N)`. The job saves checkpoint N (state and offsets) *before*
//! that commit, and on start resumes from the checkpoint whose number is the
//! table's committed `txn` version: a crash before the commit replays from
//! N-1 and produces the same outputs again (their ids are deterministic),
//! a crash after it resumes from N. So each output is in the table once.
//!
//! One writer per job: a second detector on the same lake would commit
//! numbers the first does not know. `commit` refuses a number not above the
//! committed one, so the second finds out at its first commit instead of
//! doubling rows.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use deltalake::protocol::SaveMode;
use tributary_lake::Lake;
use tributary_lake::store::commit_without_data;

use crate::{Error, Result};

/// Live jobs write to gold.
const LAYER: &str = "gold";

pub struct DeltaOutput {
    lake: Lake,
    table: &'static str,
    app: String,
    schema: SchemaRef,
    /// Skip a checkpoint already committed instead of refusing it.
    lenient: bool,
}

impl DeltaOutput {
    /// `gold.<table>`, its checkpoints recorded under the `txn` app `app`.
    pub fn new(lake: Lake, table: &'static str, app: &str, schema: SchemaRef) -> Self {
        DeltaOutput {
            lake,
            table,
            app: app.to_string(),
            schema,
            lenient: false,
        }
    }

    /// A job's own table, under the `txn` app `tributary-live/<job>`.
    pub fn for_job(lake: &Lake, job: &str, table: &'static str, schema: SchemaRef) -> Self {
        DeltaOutput::new(
            lake.clone(),
            table,
            &format!("tributary-live/{job}"),
            schema,
        )
    }

    /// For a side output written before the main one: a checkpoint number
    /// already committed is skipped (its rows are in), not refused.
    pub fn at_most_once_per_checkpoint(mut self) -> Self {
        self.lenient = true;
        self
    }

    pub fn name(&self) -> String {
        format!("{LAYER}.{}", self.table)
    }

    fn delta_err(&self) -> impl FnOnce(deltalake::DeltaTableError) -> Error + '_ {
        move |source| Error::Delta {
            table: self.name(),
            source,
        }
    }

    async fn open(&self) -> Result<Option<DeltaTable>> {
        self.lake
            .open(LAYER, self.table)
            .await
            .map_err(|source| Error::Lake {
                what: format!("opening {}", self.name()),
                source: Box::new(source),
            })
    }

    /// The number of the last committed checkpoint; `None` before the first.
    pub async fn committed(&self) -> Result<Option<u64>> {
        match self.open().await? {
            Some(table) => self.committed_in(&table).await,
            None => Ok(None),
        }
    }

    async fn committed_in(&self, table: &DeltaTable) -> Result<Option<u64>> {
        let snapshot = table.snapshot().map_err(self.delta_err())?;
        let v = snapshot
            .transaction_version(table.log_store().as_ref(), &self.app)
            .await
            .map_err(self.delta_err())?;
        Ok(v.map(|v| v as u64))
    }

    /// Appends `rows` as checkpoint `seq`'s output, in one commit with
    /// `txn (app, seq)`; nothing but the `txn` when there are no rows.
    pub async fn commit(&self, seq: u64, rows: Vec<RecordBatch>) -> Result<()> {
        let existing = self.open().await?;
        let committed = match &existing {
            Some(table) => self.committed_in(table).await?,
            None => None,
        };
        if self.lenient && committed.is_some_and(|c| c >= seq) {
            return Ok(());
        }
        if !self.lenient && committed.is_some_and(|c| c >= seq) {
            return Err(Error::Fenced(format!(
                "{}: committing checkpoint {seq}, but the table holds {committed:?}; is another instance of this job running?",
                self.name()
            )));
        }
        let props = self
            .lake
            .commit_properties()
            .with_application_transactions(vec![Transaction::new(&self.app, seq as i64)]);
        let n: usize = rows.iter().map(RecordBatch::num_rows).sum();
        if n == 0
            && let Some(table) = &existing
        {
            commit_without_data(table, &self.app, props)
                .await
                .map_err(self.delta_err())?;
            return Ok(());
        }
        let rows = if rows.is_empty() {
            vec![RecordBatch::new_empty(self.schema.clone())]
        } else {
            rows
        };
        let handle = match existing {
            Some(t) => t,
            None => self
                .lake
                .table_handle(LAYER, self.table)
                .await
                .map_err(|source| Error::Lake {
                    what: format!("creating {}", self.name()),
                    source: Box::new(source),
                })?,
        };
        handle
            .write(rows)
            .with_save_mode(SaveMode::Append)
            .with_table_name(self.table)
            .with_commit_properties(props)
            .await
            .map_err(self.delta_err())?;
        self.lake.forget(LAYER, self.table);
        Ok(())
    }
}
