//! Answers to the catalog queries `psql` sends for `\d`, `\dt`, `\dn` and
//! `\d <table>`.
//!
//! These five queries came first and are answered from the lake's listing,
//! recognised by the columns they select; every other catalog query (psql's
//! footers, drivers, SQLAlchemy's inspector) runs in DataFusion over the
//! `pg_catalog` schema (`pg_catalog.rs`), after the rewrites of
//! `rewrite.rs`.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use regex::Regex;

use crate::session::Session;
use crate::{Error, Result};

/// A catalog answer: its columns (all text, as psql reads them) and rows.
pub(crate) type Answer = (SchemaRef, Vec<RecordBatch>);

/// The first table oid, as in PostgreSQL (lower ones are system objects).
const FIRST_OID: u32 = 16_384;

/// Answers `sql` when it is one of psql's catalog queries; `None` otherwise.
pub(crate) async fn answer(session: &Session, sql: &str) -> Result<Option<Answer>> {
    let Some(kind) = classify(sql) else {
        return Ok(None);
    };
    let tables = session.refresh().await?;
    match kind {
        Kind::ListRelations => {
            let mut rows: Vec<_> = matching(sql, &tables)
                .map(|(layer, name)| {
                    vec![
                        Some(layer.to_string()),
                        Some(name.clone()),
                        Some("table".into()),
                        Some("tributary".into()),
                    ]
                })
                .collect();
            rows.sort();
            Ok(Some(text_answer(
                &["Schema", "Name", "Type", "Owner"],
                rows,
            )?))
        }
        Kind::ListSchemas => {
            let mut layers: Vec<&str> = tributary_model::domain::LAYERS.to_vec();
            layers.sort();
            let rows = layers
                .into_iter()
                .map(|l| vec![Some(l.to_string()), Some("tributary".into())])
                .collect();
            Ok(Some(text_answer(&["Name", "Owner"], rows)?))
        }
        Kind::FindRelation => {
            let mut rows: Vec<_> = matching(sql, &tables)
                .map(|(layer, name)| {
                    vec![
                        Some(oid(layer, name).to_string()),
                        Some(layer.to_string()),
                        Some(name.clone()),
                    ]
                })
                .collect();
            rows.sort_by(|a, b| (&a[1], &a[2]).cmp(&(&b[1], &b[2])));
            Ok(Some(text_answer(&["oid", "nspname", "relname"], rows)?))
        }
        Kind::RelationDetails => {
            let found = quoted_oid(sql).and_then(|o| by_oid(&tables, o));
            let row = |_: &(&str, String)| {
                [
                    "0", "r", "f", "f", "f", "f", "f", "f", "f", "", "0", "", "p", "d", "delta",
                ]
                .iter()
                .map(|v| Some(v.to_string()))
                .collect::<Vec<_>>()
            };
            let rows = found.iter().map(row).collect();
            Ok(Some(text_answer(
                &[
                    "relchecks",
                    "relkind",
                    "relhasindex",
                    "relhasrules",
                    "relhastriggers",
                    "relrowsecurity",
                    "relforcerowsecurity",
                    "relhasoids",
                    "relispartition",
                    "array_to_string",
                    "reltablespace",
                    "reloftype",
                    "relpersistence",
                    "relreplident",
                    "amname",
                ],
                rows,
            )?))
        }
        Kind::Columns => {
            let mut rows = Vec::new();
            if let Some((layer, name)) = quoted_oid(sql).and_then(|o| by_oid(&tables, o)) {
                let (_, _, provider) = session.resolve_table(&format!("{layer}.{name}")).await?;
                for field in provider.schema().fields() {
                    rows.push(vec![
                        Some(field.name().clone()),
                        Some(format_type(field.data_type())),
                        None,
                        Some(if field.is_nullable() { "f" } else { "t" }.into()),
                        None,
                        Some(String::new()),
                        Some(String::new()),
                    ]);
                }
            }
            Ok(Some(text_answer(
                &[
                    "attname",
                    "format_type",
                    "pg_get_expr",
                    "attnotnull",
                    "attcollation",
                    "attidentity",
                    "attgenerated",
                ],
                rows,
            )?))
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `\d`, `\dt`: schema, name, type, owner of relations.
    ListRelations,
    /// `\dn`: the schemas.
    ListSchemas,
    /// `\d <pattern>`, first step: oid, schema and name of matches.
    FindRelation,
    /// `\d <table>`, second step: flags of one relation.
    RelationDetails,
    /// `\d <table>`, third step: its columns.
    Columns,
}

fn classify(sql: &str) -> Option<Kind> {
    let has = |s: &str| sql.contains(s);
    if !has("pg_catalog.pg_") {
        return None;
    }
    Some(
        if has("FROM pg_catalog.pg_class c") && has("as \"Schema\"") && has("as \"Name\"") {
            Kind::ListRelations
        } else if has("FROM pg_catalog.pg_namespace n") && has("AS \"Name\"") {
            Kind::ListSchemas
        } else if has("SELECT c.oid,") && has("n.nspname,") && has("c.relname") {
            Kind::FindRelation
        } else if has("SELECT c.relchecks, c.relkind") {
            Kind::RelationDetails
        } else if has("SELECT a.attname,")
            && has("FROM pg_catalog.pg_attribute a")
            // `\d+` asks for storage and statistics too: the catalog has them.
            && !has("a.attstorage")
        {
            Kind::Columns
        } else {
            // Everything else runs on the `pg_catalog` schema
            // (`pg_catalog.rs`).
            return None;
        },
    )
}

/// Tables whose schema and name match psql's `nspname`/`relname` patterns
/// (POSIX regular expressions such as `^(orders)$`); a missing pattern
/// matches everything.
fn matching<'a>(
    sql: &'a str,
    tables: &'a [(&'static str, String)],
) -> impl Iterator<Item = &'a (&'static str, String)> + 'a {
    let schema = pattern(sql, "nspname");
    let name = pattern(sql, "relname");
    tables.iter().filter(move |(layer, table)| {
        schema.as_ref().is_none_or(|re| re.is_match(layer))
            && name.as_ref().is_none_or(|re| re.is_match(table))
    })
}

/// The regular expression psql compares `column` with, if any.
fn pattern(sql: &str, column: &str) -> Option<Regex> {
    let marker = format!("{column} OPERATOR(pg_catalog.~) '");
    let start = sql.find(&marker)? + marker.len();
    let rest = &sql[start..];
    // psql doubles quotes inside the literal.
    let mut text = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            if chars.peek() == Some(&'\'') {
                chars.next();
            } else {
                break;
            }
        }
        text.push(c);
    }
    Regex::new(&text).ok()
}

/// A stable oid for a table (FNV-1a of its full name), so the oid psql got
/// in one query still names the table in the next.
pub(crate) fn oid(layer: &str, table: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in layer.bytes().chain([b'.']).chain(table.bytes()) {
        hash ^= b as u32;
        hash = hash.wrapping_mul(0x0100_0193);
    }
    FIRST_OID + hash % 1_000_000_000
}

fn by_oid(tables: &[(&'static str, String)], wanted: u32) -> Option<(&'static str, String)> {
    tables
        .iter()
        .find(|(layer, name)| oid(layer, name) == wanted)
        .map(|(layer, name)| (*layer, name.clone()))
}

/// The `'16385'` in `WHERE c.oid = '16385'` / `a.attrelid = '16385'`.
fn quoted_oid(sql: &str) -> Option<u32> {
    for marker in ["c.oid = '", "a.attrelid = '"] {
        if let Some(start) = sql.find(marker) {
            let rest = &sql[start + marker.len()..];
            return rest[..rest.find('\'')?].parse().ok();
        }
    }
    None
}

/// PostgreSQL's name for the type a column is sent as.
pub(crate) fn format_type(data_type: &DataType) -> String {
    match data_type {
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("numeric({p},{s})"),
        other => match super::encode::pg_type(other).name() {
            "int2" => "smallint".into(),
            "int4" => "integer".into(),
            "int8" => "bigint".into(),
            "float4" => "real".into(),
            "float8" => "double precision".into(),
            "bool" => "boolean".into(),
            "timestamp" => "timestamp without time zone".into(),
            "timestamptz" => "timestamp with time zone".into(),
            name => name.to_string(),
        },
    }
}

fn text_answer(columns: &[&str], rows: Vec<Vec<Option<String>>>) -> Result<Answer> {
    let schema: SchemaRef = Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(*c, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let arrays: Vec<ArrayRef> = (0..columns.len())
        .map(|i| Arc::new(rows.iter().map(|r| r[i].clone()).collect::<StringArray>()) as ArrayRef)
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(|source| Error::Render {
        format: "catalog",
        source,
    })?;
    Ok((schema, vec![batch]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psql_patterns_are_read() {
        let sql = "WHERE c.relname OPERATOR(pg_catalog.~) '^(orders)$' COLLATE pg_catalog.default \
                   AND n.nspname OPERATOR(pg_catalog.~) '^(silver)$' COLLATE pg_catalog.default";
        let tables = vec![
            ("silver", "orders".to_string()),
            ("bronze", "orders".to_string()),
            ("silver", "orders_x".to_string()),
        ];
        let found: Vec<_> = matching(sql, &tables).collect();
        assert_eq!(found, vec![&("silver", "orders".to_string())]);
        assert_eq!(classify(sql), None);
    }

    #[test]
    fn oids_are_stable_and_found_again() {
        let tables = vec![
            ("silver", "orders".to_string()),
            ("gold", "dim_date".to_string()),
        ];
        let o = oid("gold", "dim_date");
        assert!(o >= FIRST_OID);
        assert_eq!(by_oid(&tables, o), Some(("gold", "dim_date".to_string())));
        assert_eq!(
            quoted_oid(&format!("WHERE a.attrelid = '{o}' AND")),
            Some(o)
        );
    }

    #[test]
    fn types_have_postgres_names() {
        assert_eq!(format_type(&DataType::Int64), "bigint");
        assert_eq!(format_type(&DataType::Decimal128(12, 2)), "numeric(12,2)");
        assert_eq!(format_type(&DataType::Utf8), "text");
    }
}
