//! SQL over the lake: a DataFusion session whose catalog is the lake itself.
//!
//! - [`session`]: [`Session`], a DataFusion context with one schema per lake
//!   layer (`bronze`, `silver`, `gold`); every table lookup opens the Delta
//!   table at its latest version, so a query always sees the newest commits.
//!   Time travel (`table_version(...)`, `table_at(...)`) reads a table as it
//!   was at a version or a moment.
//! - [`render`](mod@render): result output as an aligned table, CSV, JSON lines or
//!   Parquet; [`chart`]: terminal charts of a two-column result.
//! - [`console`]: the interactive `tributary sql` console and one-shot runs.
//! - [`wire`]: the PostgreSQL wire server (`tributary sql serve`), so psql,
//!   JDBC tools and drivers query the same session.
//! - [`config`]: the `[sql]` section ([`SqlConfig`]): the wire server and
//!   the engine's memory and spill limits.
//!
//! Seams: the lake is reached only through [`tributary_lake::Lake`]; the
//! session never writes (DDL and DML are refused), it only reads; the wire
//! server speaks the PostgreSQL protocol, so any PostgreSQL client is one.
//!
//! ```no_run
//! # async fn demo(lake: tributary_lake::Lake) -> tributary_query::Result<()> {
//! use tributary_query::{Format, Session};
//! let session = Session::new(lake).await?;
//! let (schema, batches) = session.sql_with_schema("select count(*) from orders").await?;
//! tributary_query::render(&schema, &batches, Format::Table, &mut std::io::stdout())?;
//! # Ok(())
//! # }
//! ```

pub mod chart;
pub mod config;
pub mod console;
pub(crate) mod lake_schema;
pub mod render;
pub(crate) mod result_cache;
pub mod session;
pub(crate) mod time_travel;
pub mod wire;

pub use config::{ByteSize, SqlConfig};
pub use console::{Action, Console, run_console, run_one_shot, run_one_shot_to};
pub use render::{Format, render};
pub use result_cache::CacheStats;
pub use session::Session;

/// Errors of the query layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SQL text could not be parsed, planned or executed; the source
    /// carries DataFusion's message, with the position when it has one.
    #[error("query failed")]
    Sql(#[source] datafusion::error::DataFusionError),
    /// The lake could not be listed or a table could not be opened.
    // Boxed: the lake error is large and would bloat every `Result` here.
    #[error("lake")]
    Lake(#[source] Box<tributary_lake::Error>),
    #[error("table {0} not found (try \\d for the list)")]
    TableNotFound(String),
    /// A time-travel reference could not be resolved (no such version, a
    /// timestamp before the table existed, text that is not a timestamp).
    #[error("time travel: {0}")]
    TimeTravel(String),
    /// The Delta log could not be read at the version or moment asked for.
    #[error("time travel: reading {table} as of {as_of}")]
    TimeTravelRead {
        table: String,
        as_of: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A statement that would write: the lake is written by the pipelines only.
    #[error(
        "cannot execute {0} in a read-only transaction (the lake is written by the pipelines only)"
    )]
    ReadOnly(String),
    /// Something only a superuser may do (`SET ROLE`, reading server files).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A setting is missing or malformed.
    #[error("configuration: {0}")]
    Config(String),
    /// The wire server could not start (address in use, TLS files).
    #[error("wire server: {0}")]
    Server(String),
    #[error("unknown output format {0:?} (expected one of: table, csv, json, parquet)")]
    UnknownFormat(String),
    #[error("rendering {format} output")]
    Render {
        format: &'static str,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("writing output")]
    Io(#[from] std::io::Error),
    #[error("console input")]
    Readline(#[from] rustyline::error::ReadlineError),
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(source: datafusion::error::DataFusionError) -> Self {
        Error::Sql(source)
    }
}

impl Error {
    /// As DataFusion's error, for code DataFusion calls (schema providers):
    /// a DataFusion error stays itself, anything else is external.
    pub(crate) fn into_datafusion(self) -> datafusion::error::DataFusionError {
        match self {
            Error::Sql(e) => e,
            other => datafusion::error::DataFusionError::External(Box::new(other)),
        }
    }

    /// The error and its sources on one line (`query failed: SQL error: ...`),
    /// for people reading a console rather than a log.
    pub fn report(&self) -> String {
        report(self)
    }

    /// Where in the SQL text the error is, as (line, column) from 1, when
    /// DataFusion knows: a diagnostic span, or the parser's
    /// "at Line: l, Column: c".
    pub fn position(&self) -> Option<(usize, usize)> {
        let Error::Sql(e) = self else {
            return None;
        };
        if let Some(span) = e.diagnostic().and_then(|d| d.span) {
            return Some((span.start.line as usize, span.start.column as usize));
        }
        parser_position(&e.to_string())
    }

    /// Like [`Error::position`], and when DataFusion gives no position for
    /// an unknown column or table, the first place `sql` names it.
    pub fn position_in(&self, sql: &str) -> Option<(usize, usize)> {
        if let Some(found) = self.position() {
            return Some(found);
        }
        let text = self.report();
        let name = if let Some(rest) = text.split("No field named ").nth(1) {
            rest.split(['.', ' ', '\n'])
                .find(|s| !s.is_empty())
                .map(|s| s.trim_matches('"'))
                .unwrap_or_default()
        } else if let Some(rest) = text.split("table '").nth(1) {
            let full = rest.split('\'').next().unwrap_or_default();
            full.rsplit('.').next().unwrap_or_default()
        } else {
            return None;
        };
        word_position(sql, name)
    }
}

/// (line, column) from 1 of the first whole-word, case-insensitive `word`.
fn word_position(sql: &str, word: &str) -> Option<(usize, usize)> {
    if word.is_empty() {
        return None;
    }
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    for (n, line) in sql.lines().enumerate() {
        let lower = line.to_lowercase();
        let wanted = word.to_lowercase();
        let mut from = 0;
        while let Some(i) = lower[from..].find(&wanted) {
            let start = from + i;
            let end = start + wanted.len();
            let before = lower[..start].chars().next_back();
            let after = lower[end..].chars().next();
            if !before.is_some_and(is_word) && !after.is_some_and(is_word) {
                return Some((n + 1, lower[..start].chars().count() + 1));
            }
            from = end;
        }
    }
    None
}

/// Finds sqlparser's `Line: 3, Column: 14` in an error message.
fn parser_position(text: &str) -> Option<(usize, usize)> {
    let rest = &text[text.rfind("Line: ")? + "Line: ".len()..];
    let (line, rest) = rest.split_once(',')?;
    let rest = rest.trim_start().strip_prefix("Column: ")?;
    let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.trim().parse().ok()?, column.parse().ok()?))
}

/// Joins an error with its chain of sources, skipping a source whose text
/// its parent already shows (DataFusion often repeats the inner message).
pub(crate) fn report(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut last = out.clone();
    let mut next = err.source();
    while let Some(source) = next {
        let text = source.to_string();
        if !last.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        next = source.source();
    }
    out
}

impl From<tributary_lake::Error> for Error {
    fn from(source: tributary_lake::Error) -> Self {
        Error::Lake(Box::new(source))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_columns_are_found_in_the_text() {
        let err = Error::from(datafusion::error::DataFusionError::Plan(
            "No field named statuz. Did you mean 'orders.status'?".into(),
        ));
        assert_eq!(err.position_in("select id,\n  statuz from t"), Some((2, 3)));
        assert_eq!(
            word_position("select xstatuz, statuz", "statuz"),
            Some((1, 17))
        );
    }

    #[test]
    fn parser_positions_are_found() {
        assert_eq!(
            parser_position("Expected: an SQL statement, found: selec at Line: 2, Column: 5"),
            Some((2, 5))
        );
        assert_eq!(parser_position("no position here"), None);
    }

    #[test]
    fn report_shows_the_sql_error_once() {
        let err = Error::from(datafusion::error::DataFusionError::Plan(
            "table 'x' not found".into(),
        ));
        let text = err.report();
        assert!(text.starts_with("query failed: "), "{text}");
        assert_eq!(text.matches("table 'x' not found").count(), 1, "{text}");
    }
}
