//! Result column names as PostgreSQL derives them.
//!
//! DataFusion names an unaliased column after its whole expression
//! (`count(*)`, `sum(gold.agg_daily_sales.revenue)`, `Int64(42)`);
//! PostgreSQL names it after the expression's outermost "name-giving" part
//! and calls the rest `?column?` (its parser's `FigureColname`). Clients key
//! rows by those names (`record['count']` in asyncpg, DataFrame columns in
//! pandas), so the wire server sends PostgreSQL's. The rules, by strength:
//!
//! - a column reference gives its (last) name, a function call its name,
//!   `CASE` the name of its `ELSE` result or else `case`, `EXISTS` `exists`,
//!   `ARRAY[...]` `array`, a row `row`, a scalar subquery the name of its
//!   one column;
//! - a cast gives the name of what it casts, or, when that has none, the
//!   type's PostgreSQL name (`1::integer` is `int4`);
//! - anything else (constants, operators) is `?column?`.
//!
//! An alias always wins; `*` keeps the table's column names.

use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    self, CastKind, DataType as SqlType, Expr, Ident, ObjectName, ObjectNamePart, Query,
    SelectItem, SetExpr, Statement,
};

/// What PostgreSQL calls a column it cannot name.
pub(crate) const UNNAMED: &str = "?column?";

/// PostgreSQL's names for the result columns of `statement`, given the
/// names DataFusion gave them (kept for aliases and `*`, and wherever the
/// statement's shape does not map one to one onto the result).
pub(crate) fn result_names(statement: &DfStatement, planned: &[String]) -> Vec<String> {
    let DfStatement::Statement(inner) = statement else {
        return planned.to_vec();
    };
    let Statement::Query(query) = inner.as_ref() else {
        return planned.to_vec();
    };
    let Some(items) = select_items(query) else {
        return planned.to_vec();
    };
    let wildcards = items
        .iter()
        .filter(|i| {
            matches!(
                i,
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
            )
        })
        .count();
    let named = items.len() - wildcards;
    // With one `*` its width is what is left over; with more, the widths
    // are unknown here, so DataFusion's names stand.
    let star_width = match wildcards {
        0 if named == planned.len() => 0,
        1 if planned.len() >= named => planned.len() - named,
        _ => return planned.to_vec(),
    };
    let mut out = Vec::with_capacity(planned.len());
    for item in items {
        let at = out.len();
        match item {
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                out.extend(planned[at..at + star_width].iter().cloned());
            }
            SelectItem::UnnamedExpr(expr) => out.push(
                figure(expr)
                    .map(|(name, _)| name)
                    .unwrap_or_else(|| UNNAMED.to_string()),
            ),
            SelectItem::ExprWithAlias { .. } | SelectItem::ExprWithAliases { .. } => {
                out.push(planned[at].clone())
            }
        }
    }
    out
}

/// The select list that names a query's columns: the first `SELECT` of a
/// set operation, through parentheses. `None` for `VALUES` and the like.
fn select_items(query: &Query) -> Option<&[SelectItem]> {
    let mut body = query.body.as_ref();
    loop {
        match body {
            SetExpr::Select(select) => return Some(&select.projection),
            SetExpr::Query(inner) => body = inner.body.as_ref(),
            SetExpr::SetOperation { left, .. } => body = left.as_ref(),
            _ => return None,
        }
    }
}

/// Strength of a figured name: a type name (1) yields to a real name (2).
type Figured = (String, u8);

fn figure(expr: &Expr) -> Option<Figured> {
    let strong = |name: String| Some((name, 2));
    match expr {
        Expr::Identifier(ident) => strong(fold(ident)),
        Expr::CompoundIdentifier(parts) => parts.last().map(|i| (fold(i), 2)),
        Expr::CompoundFieldAccess { root, access_chain } => match access_chain.last() {
            Some(ast::AccessExpr::Dot(Expr::Identifier(field))) => strong(fold(field)),
            _ => figure(root),
        },
        // `current_date` and friends come as functions without parentheses.
        Expr::Function(function) => last_name(&function.name).map(|n| (n, 2)),
        Expr::Cast {
            kind: CastKind::Cast | CastKind::DoubleColon,
            expr,
            data_type,
            ..
        } => match figure(expr) {
            Some(found) if found.1 > 1 => Some(found),
            _ => Some((type_name(data_type), 1)),
        },
        Expr::Cast { expr, .. } | Expr::Nested(expr) | Expr::Collate { expr, .. } => figure(expr),
        Expr::TypedString(typed) => Some((type_name(&typed.data_type), 1)),
        Expr::Case { else_result, .. } => match else_result.as_deref().and_then(figure) {
            Some(found) if found.1 > 1 => Some(found),
            _ => Some(("case".into(), 1)),
        },
        Expr::Exists { .. } => strong("exists".into()),
        Expr::Array(_) => strong("array".into()),
        Expr::Tuple(_) => strong("row".into()),
        Expr::Subquery(query) => select_items(query)
            .and_then(|items| match items {
                [SelectItem::UnnamedExpr(e)] => figure(e),
                [SelectItem::ExprWithAlias { alias, .. }] => Some((fold(alias), 2)),
                _ => None,
            })
            .filter(|f| f.1 > 1),
        Expr::Extract { .. } => strong("extract".into()),
        Expr::Substring { .. } => strong("substring".into()),
        Expr::Position { .. } => strong("position".into()),
        Expr::Overlay { .. } => strong("overlay".into()),
        Expr::Trim { .. } => strong("btrim".into()),
        Expr::Ceil { .. } => strong("ceil".into()),
        Expr::Floor { .. } => strong("floor".into()),
        Expr::Interval(_) => Some(("interval".into(), 1)),
        _ => None,
    }
}

/// An identifier as PostgreSQL stores it: unquoted names fold to lower case.
fn fold(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

fn last_name(name: &ObjectName) -> Option<String> {
    match name.0.last()? {
        ObjectNamePart::Identifier(ident) => Some(fold(ident)),
        ObjectNamePart::Function(_) => None,
    }
}

/// PostgreSQL's internal name of an SQL type (`integer` is `int4`).
pub(crate) fn type_name(data_type: &SqlType) -> String {
    let text = data_type.to_string().to_lowercase();
    let base = text.split('(').next().unwrap_or(&text).trim();
    let base = base.rsplit('.').next().unwrap_or(base);
    match base {
        "int" | "integer" | "int4" => "int4",
        "bigint" | "int8" => "int8",
        "smallint" | "int2" => "int2",
        "real" | "float4" => "float4",
        "double precision" | "double" | "float8" | "float" => "float8",
        "decimal" | "numeric" | "dec" => "numeric",
        "boolean" | "bool" => "bool",
        "character varying" | "varchar" => "varchar",
        "character" | "char" => "bpchar",
        "timestamp with time zone" | "timestamptz" => "timestamptz",
        "timestamp" | "timestamp without time zone" => "timestamp",
        "time" | "time without time zone" => "time",
        other => return other.trim_matches('"').to_string(),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::parse_postgres;

    fn names(sql: &str, planned: &[&str]) -> Vec<String> {
        let statement = parse_postgres(sql).unwrap().remove(0);
        let planned: Vec<String> = planned.iter().map(|s| s.to_string()).collect();
        result_names(&statement, &planned)
    }

    #[test]
    fn columns_are_named_like_postgres() {
        assert_eq!(names("select 42", &["Int64(42)"]), ["?column?"]);
        assert_eq!(
            names(
                "select count(*), SUM(o.total), max(id) as top, o.status from orders o",
                &["count(*)", "sum(o.total)", "top", "status"]
            ),
            ["count", "sum", "top", "status"]
        );
        assert_eq!(
            names(
                "select 1::integer, total::text, id + 1, (id), case when true then 1 end",
                &["a", "b", "c", "d", "e"]
            ),
            ["int4", "total", "?column?", "id", "case"]
        );
        assert_eq!(
            names(
                "select date '2024-03-01', pg_catalog.version(), (select max(id) from t)",
                &["a", "b", "c"]
            ),
            ["date", "version", "max"]
        );
        assert_eq!(
            names("select \"Id\", exists(select 1) from t", &["Id", "x"]),
            ["Id", "exists"]
        );
    }

    #[test]
    fn stars_keep_table_names_and_set_operations_take_the_first_select() {
        assert_eq!(
            names(
                "select *, count(*) over () from t",
                &["a", "b", "count(*) ..."]
            ),
            ["a", "b", "count"]
        );
        assert_eq!(
            names("select 1 union all select 2 as x", &["Int64(1)"]),
            ["?column?"]
        );
        // Two stars: widths unknown, DataFusion's names stand.
        assert_eq!(names("select *, * from t", &["a", "a"]), ["a", "a"]);
        assert_eq!(names("values (1)", &["column1"]), ["column1"]);
    }
}
