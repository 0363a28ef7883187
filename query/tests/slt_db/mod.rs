//! A tributary query session as a sqllogictest database, shared by the
//! `.slt` runners of the query crate and of the marts (`etl/tests`, which
//! includes this file by path).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use sqllogictest::{
    AsyncDB, DBOutput, DefaultColumnType, Runner, default_normalizer, default_validator,
    strict_column_validator,
};
use tributary_query::Session;

/// A query session as a sqllogictest database.
pub struct Db(pub Arc<Session>);

/// The session's error, displayed as the console shows it.
#[derive(Debug)]
pub struct SqlError(String);

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SqlError {}

#[async_trait::async_trait]
impl AsyncDB for Db {
    type Error = SqlError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SqlError> {
        let (schema, batches) = self
            .0
            .sql_with_schema(sql)
            .await
            .map_err(|e| SqlError(e.report()))?;
        let types = schema
            .fields()
            .iter()
            .map(|f| column_type(f.data_type()))
            .collect();
        let options = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        for batch in &batches {
            let formatters = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SqlError(e.to_string()))?;
            for row in 0..batch.num_rows() {
                rows.push(
                    formatters
                        .iter()
                        .map(|f| f.value(row).to_string())
                        .collect(),
                );
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "tributary"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await
    }
}

/// `I` integers, `R` decimals and floats, `T` text, `?` anything else.
fn column_type(t: &DataType) -> DefaultColumnType {
    match t {
        t if t.is_integer() => DefaultColumnType::Integer,
        t if t.is_floating() => DefaultColumnType::FloatingPoint,
        DataType::Decimal128(..) | DataType::Decimal256(..) => DefaultColumnType::FloatingPoint,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DefaultColumnType::Text,
        _ => DefaultColumnType::Any,
    }
}

/// The `.slt` files of a folder, sorted.
#[allow(dead_code)] // the marts' runner names its files one by one
pub fn slt_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    files
}

/// Runs one file against `session` with strict column types. Returns the
/// number of records in it, or the failure with the file's name.
///
/// With `SLT_UPDATE=1` in the environment the file's expected results are
/// rewritten from what the session answers instead: for writing a new
/// record, whose answer must then be read and checked by hand.
pub async fn run_file(session: Arc<Session>, file: &Path) -> Result<usize, String> {
    let mut runner = Runner::new(move || {
        let session = session.clone();
        async move { Ok(Db(session)) }
    });
    runner.with_column_validator(strict_column_validator);
    let records = std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("query") || l.starts_with("statement"))
        .count();
    if std::env::var_os("SLT_UPDATE").is_some_and(|v| v == "1") {
        runner
            .update_test_file(
                file,
                " ",
                default_validator,
                default_normalizer,
                strict_column_validator,
            )
            .await
            .map_err(|e| format!("{}: {e}", file.display()))?;
    } else {
        runner
            .run_file_async(file)
            .await
            .map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(records)
}
