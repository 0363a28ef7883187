//! Time travel: `table_version('silver.orders', 3)` and
//! `table_at('silver.orders', '2026-11-26T10:00:00Z')` read a Delta table as
//! it was at a version or at a moment.
//!
//! DataFusion calls table functions synchronously while planning, but opening
//! a Delta table at a version is I/O. So the session scans each statement's
//! tokens before planning, opens every time-travel reference it finds, and
//! leaves the providers in a [`Snapshots`] map; the table functions only look
//! them up. A call whose arguments are not plain literals is reported as such.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::Expr;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use tributary_lake::Lake;

use crate::lake_schema::is_plain_name;
use crate::session::DEFAULT_SCHEMA;
use crate::{Error, Result};

/// The function reading a table at a Delta version.
pub const VERSION_FUNCTION: &str = "table_version";
/// The function reading a table as of a timestamp.
pub const AT_FUNCTION: &str = "table_at";

/// Which state of a table a query asks for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum AsOf {
    Version(i64),
    /// RFC 3339 text, as written in the query.
    Timestamp(String),
}

/// `(layer, table, as-of)`: one time-travel reference.
pub(crate) type Reference = (String, String, AsOf);

/// Providers opened ahead of planning, shared by the two table functions.
#[derive(Debug, Default)]
pub(crate) struct Snapshots {
    opened: Mutex<HashMap<Reference, Arc<dyn TableProvider>>>,
}

/// Entries kept at most; older snapshots are dropped wholesale past this.
const MAX_OPEN: usize = 128;

impl Snapshots {
    /// Opens every time-travel reference in `sql` so planning finds them.
    pub(crate) async fn preload(&self, lake: &Lake, sql: &str) -> Result<()> {
        for reference in references(sql) {
            let provider = open(lake, &reference).await?;
            let mut opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
            if opened.len() >= MAX_OPEN {
                opened.clear();
            }
            opened.insert(reference, provider);
        }
        Ok(())
    }

    fn get(&self, reference: &Reference) -> Option<Arc<dyn TableProvider>> {
        self.opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(reference)
            .cloned()
    }
}

/// Opens `layer.table` at the version or moment asked for.
async fn open(lake: &Lake, (layer, table, as_of): &Reference) -> Result<Arc<dyn TableProvider>> {
    let name = format!("{layer}.{table}");
    if !is_plain_name(layer) || !is_plain_name(table) {
        return Err(Error::TableNotFound(name));
    }
    let Some(mut delta) = lake.open(layer, table).await? else {
        return Err(Error::TableNotFound(name));
    };
    let latest = delta.version().unwrap_or_default();
    let loaded = match as_of {
        AsOf::Version(v) if *v < 0 || *v as u64 > latest => {
            return Err(Error::TimeTravel(format!(
                "{name} has versions 0 to {latest}; there is no version {v}"
            )));
        }
        AsOf::Version(v) => delta.load_version(*v as u64).await,
        AsOf::Timestamp(text) => {
            let at = parse_timestamp(text)?;
            let loaded = delta.load_with_datetime(at).await;
            // delta-rs answers a moment before the first commit with the
            // first version; that table did not exist yet, so say so.
            let first_commit = delta
                .version()
                .and_then(|v| delta.snapshot().ok().and_then(|s| s.version_timestamp(v)));
            if loaded.is_ok()
                && delta.version() == Some(0)
                && first_commit.is_some_and(|ms| ms > at.timestamp_millis())
            {
                return Err(Error::TimeTravel(format!(
                    "{name} did not exist yet at {text}"
                )));
            }
            loaded
        }
    };
    let as_of_text = match as_of {
        AsOf::Version(v) => format!("version {v}"),
        AsOf::Timestamp(t) => t.clone(),
    };
    let read_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::TimeTravelRead {
        table: name.clone(),
        as_of: as_of_text.clone(),
        source,
    };
    loaded.map_err(|e| read_error(Box::new(e)))?;
    tracing::debug!(table = %name, version = ?delta.version(), "opened table for time travel");
    delta
        .table_provider()
        .await
        .map_err(|e| read_error(Box::new(e)))
}

fn parse_timestamp(text: &str) -> Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    // Without an offset the time is read as UTC, like the lake's timestamps.
    for format in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    Err(Error::TimeTravel(format!(
        "{text:?} is not a timestamp (expected RFC 3339, e.g. 2026-11-26T10:00:00Z)"
    )))
}

/// Splits `silver.orders` / `orders` into (layer, table); unqualified names
/// live in the default schema.
fn split_name(name: &str) -> (String, String) {
    let lowered = name.trim().to_ascii_lowercase();
    match lowered.split_once('.') {
        Some((layer, table)) => (layer.to_string(), table.to_string()),
        None => (DEFAULT_SCHEMA.to_string(), lowered),
    }
}

/// Every `table_version('<name>', <int>)` and `table_at('<name>', '<ts>')`
/// call with literal arguments in `sql`. Tokenizing (rather than searching
/// the text) keeps string literals and comments out of it.
pub(crate) fn references(sql: &str) -> Vec<Reference> {
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        return Vec::new();
    };
    let tokens: Vec<Token> = tokens
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let mut found = Vec::new();
    for window in tokens.windows(6) {
        let [
            Token::Word(function),
            Token::LParen,
            Token::SingleQuotedString(name),
            Token::Comma,
            arg,
            Token::RParen,
        ] = window
        else {
            continue;
        };
        let as_of = match (function.value.to_ascii_lowercase().as_str(), arg) {
            (VERSION_FUNCTION, Token::Number(n, _)) => match n.parse() {
                Ok(v) => AsOf::Version(v),
                Err(_) => continue,
            },
            (AT_FUNCTION, Token::SingleQuotedString(ts)) => AsOf::Timestamp(ts.clone()),
            _ => continue,
        };
        let (layer, table) = split_name(name);
        found.push((layer, table, as_of));
    }
    found
}

/// One of the two time-travel table functions.
#[derive(Debug)]
pub(crate) struct TimeTravelFunction {
    pub(crate) name: &'static str,
    pub(crate) snapshots: Arc<Snapshots>,
}

impl TableFunctionImpl for TimeTravelFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let usage = || {
            DataFusionError::Plan(match self.name {
                VERSION_FUNCTION => {
                    "usage: table_version('<schema>.<table>', <version>) with literal arguments"
                        .to_string()
                }
                _ => "usage: table_at('<schema>.<table>', '<RFC 3339 timestamp>') with literal arguments"
                    .to_string(),
            })
        };
        let [Expr::Literal(name, _), Expr::Literal(arg, _)] = args.exprs() else {
            return Err(usage());
        };
        let Some(name) = literal_text(name) else {
            return Err(usage());
        };
        let as_of = match (self.name, arg) {
            (VERSION_FUNCTION, ScalarValue::Int64(Some(v))) => AsOf::Version(*v),
            (AT_FUNCTION, other) => match literal_text(other) {
                Some(ts) => AsOf::Timestamp(ts.to_string()),
                None => return Err(usage()),
            },
            _ => return Err(usage()),
        };
        let (layer, table) = split_name(name);
        self.snapshots.get(&(layer, table, as_of)).ok_or_else(usage)
    }
}

fn literal_text(value: &ScalarValue) -> Option<&str> {
    match value {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_found_outside_strings_only() {
        let found = references(
            "select * from table_version('silver.orders', 3) a \
             join table_at('Customers', '2026-11-26T10:00:00Z') b on true \
             where x = 'table_version(''gold.x'', 1)'",
        );
        assert_eq!(
            found,
            vec![
                ("silver".into(), "orders".into(), AsOf::Version(3)),
                (
                    "silver".into(),
                    "customers".into(),
                    AsOf::Timestamp("2026-11-26T10:00:00Z".into())
                ),
            ]
        );
    }

    #[test]
    fn timestamps_accept_rfc3339_and_plain_utc() {
        let a = parse_timestamp("2026-11-26T10:00:00Z").unwrap();
        let b = parse_timestamp("2026-11-26 10:00:00").unwrap();
        let c = parse_timestamp("2026-11-26T11:00:00+01:00").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        let err = parse_timestamp("yesterday").unwrap_err().to_string();
        assert!(err.contains("yesterday"), "{err}");
    }
}
