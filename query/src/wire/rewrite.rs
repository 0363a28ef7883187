//! PostgreSQL-only syntax in client queries, rewritten into what DataFusion
//! plans, on the parsed statement (never on the text):
//!
//! - `OPERATOR(pg_catalog.~)` becomes `~` (and so for every operator);
//! - `COLLATE "C"` / `COLLATE pg_catalog.default` is dropped (text compares
//!   bytewise here, which is what `C` means);
//! - casts to PostgreSQL's object-identifier types: `'silver.orders'::regclass`
//!   becomes that table's oid (an unknown table fails as PostgreSQL fails,
//!   42P01), `'int4'::regtype` the type's oid, `::oid` a `bigint`,
//!   `::regproc`, `::name`, `"char"` and `pg_catalog.text` text;
//! - function names lose a `pg_catalog.` qualifier (`pg_catalog.format_type`)
//!   and `array_upper(a, 1)` becomes `array_length` (arrays start at 1 here);
//! - an unqualified `pg_*` table that is not a lake table is read from
//!   `pg_catalog`, which PostgreSQL searches first.

use std::ops::ControlFlow;

use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    ArrayElemTypeDef, BinaryOperator, CastKind, DataType as SqlType, Expr, Function, FunctionArg,
    FunctionArgExpr, FunctionArgumentList, FunctionArguments, GroupByExpr, Ident, JoinOperator,
    ObjectName, ObjectNamePart, Query, SelectItem, SetExpr, SetOperator, Statement, TableFactor,
    Value, ValueWithSpan, visit_expressions_mut, visit_relations_mut,
};

use super::catalog::oid as table_oid;
use super::pg_catalog::{SEARCH_PATH, catalog_table_is_empty, catalog_table_oid, type_by_name};
use crate::Error;

/// Rewrites `statement` in place; `tables` is the lake listing
/// `(layer, table)`, for `::regclass`.
pub(crate) fn rewrite(
    statement: &mut DfStatement,
    tables: &[(&'static str, String)],
) -> Result<(), Error> {
    let DfStatement::Statement(inner) = statement else {
        return Ok(());
    };
    let inner = inner.as_mut();
    int4_constants(inner);
    let flow = visit_expressions_mut(inner, |expr| match rewrite_expr(expr, tables) {
        Ok(()) => ControlFlow::Continue(()),
        Err(e) => ControlFlow::Break(e),
    });
    if let ControlFlow::Break(e) = flow {
        return Err(e);
    }
    let _ = visit_relations_mut(inner, |name: &mut ObjectName| {
        if let [ObjectNamePart::Identifier(table)] = name.0.as_slice()
            && table.value.starts_with("pg_")
            && !tables.iter().any(|(_, t)| *t == table.value)
        {
            name.0
                .insert(0, ObjectNamePart::Identifier(Ident::new("pg_catalog")));
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(())
}

fn rewrite_expr(expr: &mut Expr, tables: &[(&'static str, String)]) -> Result<(), Error> {
    match expr {
        Expr::BinaryOp { op, .. } => {
            if let BinaryOperator::PGCustomBinaryOperator(parts) = op
                && let Some(plain) = parts.last().and_then(|p| operator(p))
            {
                *op = plain;
            }
        }
        // DataFusion's LIKE escapes only with a backslash.
        Expr::Like {
            pattern,
            escape_char,
            ..
        }
        | Expr::ILike {
            pattern,
            escape_char,
            ..
        } => {
            if let Some(ValueWithSpan {
                value: Value::SingleQuotedString(escape),
                ..
            }) = escape_char
                && escape != "\\"
            {
                let escape = Expr::value(Value::SingleQuotedString(escape.clone()));
                let written = std::mem::replace(pattern.as_mut(), Expr::value(Value::Null));
                **pattern = call("like_escape", vec![written, escape]);
                *escape_char = None;
            }
        }
        Expr::Subquery(query) => {
            if reads_an_empty_catalog_table(query) {
                // No row: the subquery is NULL (and nothing is left for
                // DataFusion to decorrelate).
                *expr = Expr::value(Value::Null);
            } else if aggregate_catalog_subquery(query)
                && let Some(guard) = outer_conditions(query)
            {
                *expr = guarded(guard, expr)?;
            }
        }
        Expr::Collate { expr: inner, .. } => {
            *expr = std::mem::replace(inner.as_mut(), Expr::value(Value::Null));
        }
        Expr::Function(function) => {
            if function.name.0.len() == 2
                && matches!(&function.name.0[0], ObjectNamePart::Identifier(i) if i.value.eq_ignore_ascii_case("pg_catalog"))
            {
                function.name.0.remove(0);
            }
            if let [ObjectNamePart::Identifier(name)] = function.name.0.as_mut_slice()
                && name.value.eq_ignore_ascii_case("array_upper")
            {
                name.value = "array_length".into();
            }
            // `generate_subscripts(a, d)`: the indexes 1..n of `a`, as
            // many rows as `unnest(a)` beside it.
            if let [ObjectNamePart::Identifier(name)] = function.name.0.as_slice()
                && name.value.eq_ignore_ascii_case("generate_subscripts")
                && let FunctionArguments::List(list) = &function.args
                && let [
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(array)),
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(dimension)),
                ] = list.args.as_slice()
            {
                let length = call("array_length", vec![array.clone(), dimension.clone()]);
                let length = Expr::Cast {
                    kind: CastKind::Cast,
                    expr: Box::new(length),
                    data_type: SqlType::BigInt(None),
                    array: false,
                    format: None,
                };
                let stop = Expr::BinaryOp {
                    left: Box::new(length),
                    op: BinaryOperator::Plus,
                    right: Box::new(Expr::value(Value::Number("1".into(), false))),
                };
                let range = call(
                    "range",
                    vec![Expr::value(Value::Number("1".into(), false)), stop],
                );
                *expr = call("unnest", vec![range]);
            }
        }
        Expr::Cast {
            kind: CastKind::DoubleColon | CastKind::Cast,
            expr: inner,
            data_type,
            ..
        } => {
            let textual = matches!(data_type, SqlType::Text | SqlType::Varchar(_))
                || matches!(
                    custom_type(data_type).as_deref(),
                    Some("text" | "name" | "varchar")
                );
            // `x::regtype::text` is the type's name.
            if textual && let Some(oid) = regtype_argument(inner) {
                *expr = call("format_type", vec![oid, Expr::value(Value::Null)]);
                return Ok(());
            }
            // `$1::oid[]`: an array of object identifiers is an array of bigints.
            if let SqlType::Array(ArrayElemTypeDef::SquareBracket(element, _)) = data_type
                && matches!(
                    custom_type(element).as_deref(),
                    Some("oid" | "regtype" | "regclass")
                )
            {
                **element = SqlType::BigInt(None);
                return Ok(());
            }
            let Some(target) = custom_type(data_type) else {
                return Ok(());
            };
            match target.as_str() {
                "regclass" => {
                    if let Some(name) = string_literal(inner) {
                        *expr = number(regclass(&name, tables)?);
                    } else {
                        let value = std::mem::replace(inner.as_mut(), Expr::value(Value::Null));
                        *expr = call("regclass", vec![value]);
                    }
                }
                "regtype" => {
                    if let Some(name) = string_literal(inner) {
                        let ty = type_by_name(&name).ok_or_else(|| {
                            Error::Sql(datafusion::error::DataFusionError::Plan(format!(
                                "type \"{name}\" does not exist"
                            )))
                        })?;
                        *expr = number(ty.oid());
                    } else {
                        // A call, so that a `::text` around it can name the type.
                        let value = std::mem::replace(inner.as_mut(), Expr::value(Value::Null));
                        *expr = call("regtype", vec![value]);
                    }
                }
                "oid" | "regnamespace" | "regrole" | "xid" | "int2vector" | "oidvector" => {
                    *data_type = SqlType::BigInt(None)
                }
                "regproc" | "regprocedure" => {
                    // Functions are named without their schema in pg_type.
                    if let Some(name) = string_literal(inner) {
                        *expr = Expr::value(Value::SingleQuotedString(
                            name.trim_start_matches("pg_catalog.").to_string(),
                        ));
                    } else {
                        *data_type = SqlType::Text;
                    }
                }
                "name" | "char" | "text" | "bpchar" | "varchar" => *data_type = SqlType::Text,
                _ => {}
            }
        }
        _ => {}
    }
    Ok(())
}

/// An integer constant that fits 32 bits is an `integer` (int4) in
/// PostgreSQL and a `bigint` in DataFusion; clients decode by the type
/// (node-postgres gives a number for int4, a string for int8). Bare
/// constants in the outermost select list are cast, so `select 42` answers
/// int4 as PostgreSQL does; constants inside expressions keep DataFusion's
/// type, where a 32-bit result could overflow where PostgreSQL's does not.
fn int4_constants(statement: &mut Statement) {
    let Statement::Query(query) = statement else {
        return;
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    for item in &mut select.projection {
        let expr = match item {
            SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } => expr,
            _ => continue,
        };
        let fits = match expr {
            Expr::Value(ValueWithSpan {
                value: Value::Number(n, false),
                ..
            }) => n.parse::<i32>().is_ok(),
            _ => false,
        };
        if fits {
            let constant = std::mem::replace(expr, Expr::value(Value::Null));
            *expr = Expr::Cast {
                kind: CastKind::Cast,
                expr: Box::new(constant),
                data_type: SqlType::Int(None),
                array: false,
                format: None,
            };
        }
    }
}

/// Catalog queries (SQLAlchemy's `get_columns`) look values up with
/// correlated scalar subqueries, `(SELECT x FROM pg_catalog.pg_attrdef
/// WHERE adrelid = a.attrelid ...)`; DataFusion plans a correlated scalar
/// subquery only when it is aggregated, so one over catalog tables alone
/// becomes `(SELECT max(x) ...)`. Those lookups find at most one row (keys
/// of the catalog), where `max` is the row itself. Subqueries over lake
/// tables are left as written.
///
/// Returns whether the subquery is such a catalog lookup.
fn aggregate_catalog_subquery(query: &mut Query) -> bool {
    if query.limit_clause.is_some() {
        return false;
    }
    let SetExpr::Select(select) = query.body.as_mut() else {
        return false;
    };
    let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
    if grouped || select.projection.len() != 1 || select.from.is_empty() {
        return false;
    }
    let catalog_only = select.from.iter().all(|t| {
        catalog_relation(&t.relation) && t.joins.iter().all(|j| catalog_relation(&j.relation))
    });
    if !catalog_only {
        return false;
    }
    let (SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. }) =
        &mut select.projection[0]
    else {
        return false;
    };
    if !is_aggregate(expr) {
        let value = std::mem::replace(expr, Expr::value(Value::Null));
        *expr = call("max", vec![value]);
    }
    true
}

/// The conditions of a subquery's `WHERE` that read only the outer query
/// (`WHERE a.atthasdef AND d.adrelid = a.attrelid`: `a.atthasdef`), taken
/// out of it: DataFusion decorrelates equalities, not a bare outer
/// condition. `None` when there are none.
fn outer_conditions(query: &mut Query) -> Option<Expr> {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return None;
    };
    let mut inner_names: Vec<String> = Vec::new();
    for t in &select.from {
        for relation in std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)) {
            if let TableFactor::Table { name, alias, .. } = relation {
                if let Some(ObjectNamePart::Identifier(last)) = name.0.last() {
                    inner_names.push(last.value.clone());
                }
                if let Some(alias) = alias {
                    inner_names.push(alias.name.value.clone());
                }
            }
        }
    }
    let selection = select.selection.take()?;
    let mut conjuncts = Vec::new();
    split_and(selection, &mut conjuncts);
    let (outer, inner): (Vec<Expr>, Vec<Expr>) = conjuncts
        .into_iter()
        .partition(|c| reads_only_outer(c, &inner_names));
    select.selection = inner.into_iter().reduce(|a, b| Expr::BinaryOp {
        left: Box::new(a),
        op: BinaryOperator::And,
        right: Box::new(b),
    });
    outer.into_iter().reduce(|a, b| Expr::BinaryOp {
        left: Box::new(a),
        op: BinaryOperator::And,
        right: Box::new(b),
    })
}

fn split_and(expr: Expr, out: &mut Vec<Expr>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            split_and(*left, out);
            split_and(*right, out);
        }
        Expr::Nested(inner)
            if matches!(
                inner.as_ref(),
                Expr::BinaryOp {
                    op: BinaryOperator::And,
                    ..
                }
            ) =>
        {
            split_and(*inner, out)
        }
        other => out.push(other),
    }
}

/// Whether `expr` names columns, and only qualified ones of tables not in
/// `inner_names`.
fn reads_only_outer(expr: &Expr, inner_names: &[String]) -> bool {
    let mut columns = 0;
    let mut inner = false;
    let _ = datafusion::sql::sqlparser::ast::visit_expressions(expr, |e| {
        match e {
            Expr::Identifier(_) => inner = true,
            Expr::CompoundIdentifier(parts) => {
                columns += 1;
                let table = &parts[parts.len().saturating_sub(2)].value;
                inner |= parts.len() < 2 || inner_names.contains(table);
            }
            Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => inner = true,
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    columns > 0 && !inner
}

/// `CASE WHEN guard THEN subquery END`.
fn guarded(guard: Expr, subquery: &Expr) -> Result<Expr, Error> {
    let mut parsed = datafusion::sql::sqlparser::parser::Parser::new(
        &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
    )
    .try_with_sql(&format!("CASE WHEN {guard} THEN {subquery} END"))
    .map_err(|e| Error::Sql(datafusion::error::DataFusionError::SQL(Box::new(e), None)))?;
    parsed
        .parse_expr()
        .map_err(|e| Error::Sql(datafusion::error::DataFusionError::SQL(Box::new(e), None)))
}

/// A one-column lookup (not an aggregate) whose `FROM` inner-joins an
/// always-empty catalog table (`pg_attrdef`, `pg_sequence`,
/// `pg_collation`): it finds no row.
fn reads_an_empty_catalog_table(query: &Query) -> bool {
    matches!(query.body.as_ref(), SetExpr::Select(select) if select.projection.len() == 1)
        && finds_no_row(query)
}

/// The width of a query's result when it certainly has no row: a plain
/// `SELECT` (no aggregate, no `*`) whose `FROM` inner-joins an always-empty
/// catalog table. psql's footers (`\d+`: policies, rules, publications)
/// read those with syntax DataFusion does not plan (`ARRAY(SELECT ...)`);
/// their answer is known without running them.
pub(crate) fn empty_result_width(statement: &DfStatement) -> Option<usize> {
    let DfStatement::Statement(inner) = statement else {
        return None;
    };
    let Statement::Query(query) = inner.as_ref() else {
        return None;
    };
    let mut first = query.body.as_ref();
    while let SetExpr::SetOperation { left, .. } = first {
        first = left.as_ref();
    }
    let SetExpr::Select(select) = first else {
        return None;
    };
    let starred = select.projection.iter().any(|i| {
        matches!(
            i,
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
        )
    });
    (!starred && finds_no_row(query)).then_some(select.projection.len())
}

fn finds_no_row(query: &Query) -> bool {
    body_finds_no_row(query.body.as_ref())
}

/// [`finds_no_row`] of a query body: a `UNION` of bodies that find none
/// finds none.
fn body_finds_no_row(body: &SetExpr) -> bool {
    let select = match body {
        SetExpr::SetOperation {
            op: SetOperator::Union,
            left,
            right,
            ..
        } => return body_finds_no_row(left) && body_finds_no_row(right),
        SetExpr::Query(inner) => return finds_no_row(inner),
        SetExpr::Select(select) => select,
        _ => return false,
    };
    let plain = matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
    let aggregated = select.projection.iter().any(|item| {
        matches!(item, SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } if is_aggregate(e))
    });
    if !plain || aggregated {
        return false;
    }
    // An always-empty catalog table, or a derived table that finds no row
    // (pgjdbc's `getPrimaryKeys` wraps its pg_index join in one).
    let empty = |relation: &TableFactor| match relation {
        TableFactor::Derived { subquery, .. } => finds_no_row(subquery),
        _ => {
            catalog_relation(relation)
                && matches!(relation, TableFactor::Table { name, .. }
                    if name.0.last().is_some_and(|p| matches!(p, ObjectNamePart::Identifier(i) if catalog_table_is_empty(&i.value))))
        }
    };
    select.from.iter().any(|t| {
        empty(&t.relation)
            || t.joins.iter().any(|j| {
                empty(&j.relation)
                    && matches!(
                        j.join_operator,
                        JoinOperator::Join(_) | JoinOperator::Inner(_)
                    )
            })
    })
}

/// Whether `expr` is a call of one of [`AGGREGATES`].
fn is_aggregate(expr: &Expr) -> bool {
    matches!(expr, Expr::Function(f) if f.name.0.last().is_some_and(|p| matches!(p,
        ObjectNamePart::Identifier(i) if AGGREGATES.contains(&i.value.to_ascii_lowercase().as_str()))))
}

/// Aggregates a catalog subquery may already use.
const AGGREGATES: &[&str] = &[
    "count",
    "max",
    "min",
    "sum",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "json_agg",
];

/// `pg_catalog.x` or an unqualified `pg_x`.
fn catalog_relation(relation: &TableFactor) -> bool {
    let TableFactor::Table { name, .. } = relation else {
        return false;
    };
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(schema), _] => schema.value == "pg_catalog",
        [ObjectNamePart::Identifier(table)] => table.value.starts_with("pg_"),
        _ => false,
    }
}

/// The types that casts give to parameters, `$1::int4` → (`$1`, Int32):
/// PostgreSQL takes a parameter's type from its cast, and clients that
/// send binary values (asyncpg) encode by the type Describe reports, so a
/// parameter DataFusion cannot type by itself gets the cast's.
pub(crate) fn placeholder_casts(
    statement: &DfStatement,
) -> std::collections::HashMap<String, arrow::datatypes::DataType> {
    let mut out = std::collections::HashMap::new();
    let DfStatement::Statement(inner) = statement else {
        return out;
    };
    let _ = datafusion::sql::sqlparser::ast::visit_expressions(inner.as_ref(), |e| {
        if let Expr::Cast {
            expr, data_type, ..
        } = e
            && let Expr::Value(ValueWithSpan {
                value: Value::Placeholder(name),
                ..
            }) = expr.as_ref()
            && let Some(arrow) = arrow_of_sql(data_type)
        {
            out.entry(name.clone()).or_insert(arrow);
        }
        ControlFlow::<()>::Continue(())
    });
    out
}

/// The Arrow type of a scalar SQL type, for [`placeholder_casts`].
fn arrow_of_sql(data_type: &SqlType) -> Option<arrow::datatypes::DataType> {
    use arrow::datatypes::{DataType, TimeUnit};
    use datafusion::sql::sqlparser::ast::{ExactNumberInfo, TimezoneInfo};
    Some(match data_type {
        SqlType::SmallInt(_) | SqlType::Int2(_) => DataType::Int16,
        SqlType::Int(_) | SqlType::Integer(_) | SqlType::Int4(_) => DataType::Int32,
        SqlType::BigInt(_) | SqlType::Int8(_) => DataType::Int64,
        SqlType::Real | SqlType::Float4 => DataType::Float32,
        SqlType::Double(_) | SqlType::DoublePrecision | SqlType::Float8 => DataType::Float64,
        SqlType::Bool | SqlType::Boolean => DataType::Boolean,
        SqlType::Text | SqlType::Varchar(_) | SqlType::String(_) => DataType::Utf8,
        SqlType::Date => DataType::Date32,
        SqlType::Bytea => DataType::Binary,
        SqlType::Timestamp(_, tz) => DataType::Timestamp(
            TimeUnit::Microsecond,
            matches!(tz, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz).then(|| "UTC".into()),
        ),
        SqlType::Numeric(info) | SqlType::Decimal(info) => match info {
            ExactNumberInfo::PrecisionAndScale(p, s) if *p <= 38 => {
                DataType::Decimal128(*p as u8, *s as i8)
            }
            ExactNumberInfo::Precision(p) if *p <= 38 => DataType::Decimal128(*p as u8, 0),
            // Unconstrained: any scale, sent as text.
            _ => DataType::Utf8,
        },
        _ => return None,
    })
}

/// A PostgreSQL operator spelled inside `OPERATOR(...)`.
fn operator(symbol: &str) -> Option<BinaryOperator> {
    Some(match symbol {
        "~" => BinaryOperator::PGRegexMatch,
        "~*" => BinaryOperator::PGRegexIMatch,
        "!~" => BinaryOperator::PGRegexNotMatch,
        "!~*" => BinaryOperator::PGRegexNotIMatch,
        "~~" => BinaryOperator::PGLikeMatch,
        "~~*" => BinaryOperator::PGILikeMatch,
        "!~~" => BinaryOperator::PGNotLikeMatch,
        "!~~*" => BinaryOperator::PGNotILikeMatch,
        "=" => BinaryOperator::Eq,
        "<>" | "!=" => BinaryOperator::NotEq,
        "<" => BinaryOperator::Lt,
        "<=" => BinaryOperator::LtEq,
        ">" => BinaryOperator::Gt,
        ">=" => BinaryOperator::GtEq,
        "||" => BinaryOperator::StringConcat,
        _ => return None,
    })
}

/// The lower-case name of a PostgreSQL type DataFusion does not know
/// (`regclass`, `pg_catalog.text`, `"char"`), without its schema.
fn custom_type(data_type: &SqlType) -> Option<String> {
    match data_type {
        SqlType::Custom(name, _) => match name.0.last()? {
            ObjectNamePart::Identifier(ident) => Some(ident.value.to_lowercase()),
            ObjectNamePart::Function(_) => None,
        },
        SqlType::Char(_) => Some("char".into()),
        SqlType::Regclass => Some("regclass".into()),
        _ => None,
    }
}

/// The `x` of `regtype(x)` (a rewritten `x::regtype`).
fn regtype_argument(expr: &Expr) -> Option<Expr> {
    let Expr::Function(function) = expr else {
        return None;
    };
    let [ObjectNamePart::Identifier(name)] = function.name.0.as_slice() else {
        return None;
    };
    if name.value != "regtype" {
        return None;
    }
    let FunctionArguments::List(list) = &function.args else {
        return None;
    };
    match list.args.as_slice() {
        [FunctionArg::Unnamed(FunctionArgExpr::Expr(x))] => Some(x.clone()),
        _ => None,
    }
}

/// `name(args)`.
fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a)))
                .collect(),
            clauses: Vec::new(),
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: Vec::new(),
    })
}

fn string_literal(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Value(ValueWithSpan {
            value: Value::SingleQuotedString(s),
            ..
        }) => Some(s.clone()),
        Expr::Nested(inner) => string_literal(inner),
        _ => None,
    }
}

fn number(n: u32) -> Expr {
    Expr::value(Value::Number(n.to_string(), false))
}

/// The oid of `name` (`orders`, `silver.orders`, `"silver"."orders"`),
/// unqualified names searched along the search path.
fn regclass(name: &str, tables: &[(&'static str, String)]) -> Result<u32, Error> {
    let plain = name.replace('"', "");
    let (layer, table) = match plain.split_once('.') {
        Some((layer, table)) => (Some(layer.to_string()), table.to_string()),
        None => (None, plain.to_lowercase()),
    };
    // pg_catalog comes first on PostgreSQL's search path.
    let catalog = match layer.as_deref() {
        Some("pg_catalog") | None => catalog_table_oid(&table),
        Some(_) => None,
    };
    if let Some(oid) = catalog {
        return Ok(oid);
    }
    let found = match layer {
        Some(layer) => tables
            .iter()
            .find(|(l, t)| *l == layer && *t == table)
            .map(|(l, t)| table_oid(l, t)),
        None => SEARCH_PATH.iter().find_map(|layer| {
            tables
                .iter()
                .find(|(l, t)| l == layer && *t == table)
                .map(|(l, t)| table_oid(l, t))
        }),
    };
    found.ok_or_else(|| Error::TableNotFound(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::parse_postgres;

    fn rewritten(sql: &str) -> String {
        let tables = vec![("silver", "orders".to_string())];
        let mut statement = parse_postgres(sql).unwrap().remove(0);
        rewrite(&mut statement, &tables).unwrap();
        statement.to_string()
    }

    #[test]
    fn postgres_syntax_becomes_datafusion_syntax() {
        let oid = table_oid("silver", "orders");
        assert_eq!(
            rewritten(
                "SELECT c.relname FROM pg_catalog.pg_class c WHERE c.relname OPERATOR(pg_catalog.~) '^(orders)$' COLLATE pg_catalog.default AND c.oid = 'silver.orders'::regclass"
            ),
            format!(
                "SELECT c.relname FROM pg_catalog.pg_class c WHERE c.relname ~ '^(orders)$' AND c.oid = {oid}"
            )
        );
        assert_eq!(
            rewritten(
                "select pg_catalog.format_type(a.atttypid, a.atttypmod), typinput = 'pg_catalog.array_in'::regproc, 'int4'::regtype, x::oid from pg_type"
            ),
            "SELECT format_type(a.atttypid, a.atttypmod), typinput = 'array_in', 23, x::BIGINT FROM pg_catalog.pg_type"
        );
        assert_eq!(
            rewritten("select array_upper(current_schemas(false), 1), n.nspname::text"),
            "SELECT array_length(current_schemas(false), 1), n.nspname::TEXT"
        );
        assert_eq!(
            rewritten("select oid::regtype::text, typelem::regtype from pg_type"),
            "SELECT format_type(oid, NULL), regtype(typelem) FROM pg_catalog.pg_type"
        );
        assert_eq!(
            rewritten("select 1 from pg_namespace where nspname not like $1 || '%' escape '/'"),
            "SELECT CAST(1 AS INT) FROM pg_catalog.pg_namespace WHERE nspname NOT LIKE like_escape($1 || '%', '/')"
        );
        assert_eq!(
            rewritten(
                "select (select typname from pg_catalog.pg_type d where d.oid = a.atttypid), \
                 (select count(*) from pg_index), (select id from orders where id = a.x) from pg_attribute a"
            ),
            "SELECT (SELECT max(typname) FROM pg_catalog.pg_type d WHERE d.oid = a.atttypid), \
             (SELECT count(*) FROM pg_catalog.pg_index), (SELECT id FROM orders WHERE id = a.x) FROM pg_catalog.pg_attribute a"
        );
        assert_eq!(
            rewritten(
                "select (select d.adbin from pg_catalog.pg_attrdef d where a.atthasdef and d.adrelid = a.attrelid) from pg_attribute a"
            ),
            "SELECT NULL FROM pg_catalog.pg_attribute a"
        );
        assert_eq!(
            rewritten(
                "select (select t.typname from pg_catalog.pg_type t where a.atthasdef and t.oid = a.atttypid) from pg_attribute a"
            ),
            "SELECT CASE WHEN a.atthasdef THEN (SELECT max(t.typname) FROM pg_catalog.pg_type t WHERE t.oid = a.atttypid) END FROM pg_catalog.pg_attribute a"
        );
        assert_eq!(
            rewritten(
                "select unnest(i.indkey), generate_subscripts(i.indkey, 1), $1::regclass from pg_index i"
            ),
            "SELECT unnest(i.indkey), unnest(range(1, CAST(array_length(i.indkey, 1) AS BIGINT) + 1)), regclass($1) FROM pg_catalog.pg_index i"
        );
        assert_eq!(
            rewritten("select 42, 3000000000, 1 + 1, 2.5 as x from t where a = 1"),
            "SELECT CAST(42 AS INT), 3000000000, 1 + 1, 2.5 AS x FROM t WHERE a = 1"
        );
    }

    #[test]
    fn queries_over_empty_catalogs_are_known_empty() {
        let width = |sql: &str| empty_result_width(&parse_postgres(sql).unwrap().remove(0));
        // psql's policy footer and pgjdbc's getPrimaryKeys shape.
        assert_eq!(
            width(
                "select pol.polname, array(select 1) from pg_catalog.pg_policy pol where pol.polrelid = '1'"
            ),
            Some(2)
        );
        assert_eq!(
            width(
                "select r.a, r.b from (select c.relname as a, i.indkey as b from pg_catalog.pg_class c \
                 join pg_catalog.pg_index i on i.indrelid = c.oid) r where r.a = 'x'"
            ),
            Some(2)
        );
        assert_eq!(
            width(
                "select p.pubname from pg_catalog.pg_publication p union select 'x' from pg_catalog.pg_rewrite"
            ),
            Some(1)
        );
        // A left join, an aggregate, a filled table, a lake table: not known.
        assert_eq!(
            width("select c.relname from pg_class c left join pg_index i on i.indrelid = c.oid"),
            None
        );
        assert_eq!(width("select count(*) from pg_catalog.pg_index"), None);
        assert_eq!(width("select relname from pg_catalog.pg_class"), None);
        assert_eq!(width("select id from silver.orders"), None);
    }

    #[test]
    fn an_unknown_regclass_fails_like_postgres() {
        let mut statement = parse_postgres("select 'nope'::regclass").unwrap().remove(0);
        let err = rewrite(&mut statement, &[]).unwrap_err();
        assert!(matches!(err, Error::TableNotFound(t) if t == "nope"));
    }
}
