//! Statements from the wire: prepared once (planned, or answered from the
//! catalog, or acknowledged), executed with parameters, under the statement
//! timeout. Cancellation is pgwire's: it drops the running future, which
//! drops DataFusion's streams and with them the query's tasks.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::Statement;
use futures::{Sink, stream};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    CopyResponse, DescribePortalResponse, DescribeStatementResponse, FieldFormat, FieldInfo,
    QueryResponse, Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::copy::CopyData;

use super::pg_catalog::Setting;
use super::{catalog, encode, names, rewrite};
use crate::Error;
use crate::result_cache::{Read, moved};
use crate::session::{Session, is_query, parse_postgres};

/// A statement ready to run, kept by pgwire between Parse and Execute.
#[derive(Clone, Debug)]
pub(crate) enum Prepared {
    /// A DataFusion plan, possibly with `$n` placeholders.
    Plan {
        plan: Arc<LogicalPlan>,
        schema: SchemaRef,
        /// The type the plan expects at `$1`, `$2`, ...
        parameters: Vec<Option<DataType>>,
        /// The statement as parsed, to plan again when a table it read has
        /// a newer version by the time it runs (a prepared statement
        /// executed later).
        source: Box<Statement>,
        /// The lake tables the plan opened, at the versions it reads.
        reads: Vec<Read>,
        /// The result cache's key (the client's text), when its results
        /// may be kept.
        cache: Option<String>,
    },
    /// Rows known at prepare time (catalog answers, `SHOW`).
    Rows {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    },
    /// A statement that only needs acknowledging; the lake is read-only,
    /// so transactions have nothing to do.
    Command { tag: &'static str, effect: Effect },
    /// `COPY (query) TO STDOUT` or `COPY table TO STDOUT` (psql's `\copy`):
    /// the plan's rows as COPY data.
    Copy {
        plan: Arc<LogicalPlan>,
        schema: SchemaRef,
        format: encode::CopyFormat,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    None,
    BeginTransaction,
    EndTransaction,
}

/// The query handler behind every connection (one per server).
#[derive(Debug)]
pub(crate) struct Handler {
    pub(crate) session: Arc<Session>,
    pub(crate) timeout: Option<Duration>,
    /// What `SHOW` answers (the same list as `pg_settings`).
    pub(crate) settings: Arc<Vec<Setting>>,
}

impl Handler {
    /// Prepares every statement in `sql` (several for the simple protocol).
    async fn prepare_all(&self, sql: &str) -> Result<Vec<Prepared>, Error> {
        if let Some((schema, batches)) = catalog::answer(&self.session, sql).await? {
            return Ok(vec![Prepared::Rows { schema, batches }]);
        }
        if let Some((query, format)) = copy_to_stdout(sql)? {
            let Prepared::Plan { plan, schema, .. } = self.prepare(query).await? else {
                return Err(Error::Sql(DataFusionError::Plan(
                    "COPY reads a query or a table".into(),
                )));
            };
            return Ok(vec![Prepared::Copy {
                plan,
                schema,
                format,
            }]);
        }
        let mut out = Vec::new();
        for statement in parse_postgres(sql)? {
            out.push(self.prepare(statement).await?);
        }
        Ok(out)
    }

    async fn prepare(&self, mut statement: Statement) -> Result<Prepared, Error> {
        let text = statement.to_string();
        if let Some(prepared) = session_statement(&text, &self.settings) {
            return Ok(prepared);
        }
        if let Some(command) = writing_command(&text) {
            return Err(Error::ReadOnly(command));
        }
        if let Some(what) = privileged(&text) {
            return Err(Error::PermissionDenied(what));
        }
        let tables = self.session.refresh().await?;
        // Names come from the statement as the client wrote it (PostgreSQL
        // names `'t'::regclass` `regclass`, before it becomes a number).
        let written = statement.clone();
        rewrite::rewrite(&mut statement, &tables)?;
        let casts = rewrite::placeholder_casts(&statement);
        let (planned, reads) = match self.session.plan_listed_reads(statement.clone()).await {
            Ok(planned) => planned,
            Err(e) => match rewrite::empty_result_width(&statement) {
                // Known to find nothing; columns typed text.
                Some(width) => {
                    let unnamed = vec![names::UNNAMED.to_string(); width];
                    let schema: SchemaRef = Arc::new(arrow::datatypes::Schema::new(
                        names::result_names(&written, &unnamed)
                            .into_iter()
                            .map(|n| arrow::datatypes::Field::new(n, DataType::Utf8, true))
                            .collect::<Vec<_>>(),
                    ));
                    return Ok(Prepared::Rows {
                        schema,
                        batches: Vec::new(),
                    });
                }
                None => return Err(e),
            },
        };
        let schema = renamed(planned.schema().as_arrow(), &written);
        let types = planned.get_parameter_types()?;
        // `$1` .. `$n`; a gap (say only `$2` used) leaves `$1` untyped.
        let count = types
            .keys()
            .chain(casts.keys())
            .filter_map(|k| k.trim_start_matches('$').parse::<usize>().ok())
            .max()
            .unwrap_or(0);
        let parameters = (1..=count)
            .map(|i| {
                let name = format!("${i}");
                types
                    .get(&name)
                    .cloned()
                    .flatten()
                    .or_else(|| casts.get(&name).cloned())
            })
            .collect();
        // Keyed by what the client wrote: it decides the rewrite and the
        // column names.
        let cache = (is_query(&statement) && self.session.keepable(&planned, &reads))
            .then(|| written.to_string());
        Ok(Prepared::Plan {
            plan: Arc::new(planned),
            schema,
            parameters,
            source: Box::new(written),
            reads,
            cache,
        })
    }

    /// Runs a prepared statement under the timeout.
    async fn execute(
        &self,
        prepared: &Prepared,
        parameters: Vec<ScalarValue>,
        format: &(dyn Fn(usize) -> FieldFormat + Send + Sync),
    ) -> PgWireResult<Response> {
        let (schema, batches) = match prepared {
            Prepared::Command { tag, effect } => {
                let tag = Tag::new(tag);
                return Ok(match effect {
                    Effect::None => Response::Execution(tag),
                    Effect::BeginTransaction => Response::TransactionStart(tag),
                    Effect::EndTransaction => Response::TransactionEnd(tag),
                });
            }
            Prepared::Rows { schema, batches } => (schema.clone(), batches.clone()),
            Prepared::Plan {
                plan,
                schema: named,
                reads,
                cache,
                ..
            } => {
                let kept = cache.as_ref().map(|text| (text, reads));
                self.run_kept(plan, named, parameters, kept).await?
            }
            Prepared::Copy {
                plan,
                schema,
                format,
            } => {
                let (_, batches) = self.run(plan, schema, parameters).await?;
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                let mut data: Vec<bytes::Bytes> = Vec::new();
                for batch in &batches {
                    data.extend(format.lines(batch).map_err(encoding_error)?);
                }
                // The header travels with the first row: pgwire counts
                // messages for the `COPY n` tag, and PostgreSQL counts rows.
                if let Some(header) = format.header_line(&names) {
                    match data.first_mut() {
                        Some(first) => *first = [header, first.clone()].concat().into(),
                        None => data.push(header),
                    }
                }
                let lines: Vec<PgWireResult<CopyData>> =
                    data.into_iter().map(|d| Ok(CopyData::new(d))).collect();
                return Ok(Response::CopyOut(CopyResponse::new(
                    0,
                    schema.fields().len(),
                    stream::iter(lines),
                )));
            }
        };
        let fields = Arc::new(encode::fields(&schema, format));
        let mut rows = Vec::new();
        for batch in &batches {
            rows.extend(encode::rows(batch, &fields).map_err(encoding_error)?);
        }
        let mut response = QueryResponse::new(fields, stream::iter(rows.into_iter().map(Ok)));
        if matches!(prepared, Prepared::Plan { plan, .. } if matches!(plan.as_ref(), LogicalPlan::Explain(_) | LogicalPlan::Analyze(_)))
        {
            response.set_command_tag("EXPLAIN");
        }
        Ok(Response::Query(response))
    }

    /// [`Handler::run`] through the session's result cache when `cache`
    /// says the statement's results may be kept: keyed by its text and the
    /// parameter values, and answered only when kept for the very table
    /// versions the plan reads (current: the plan was just made, or checked
    /// and made again by `do_query`), so no store is asked again.
    async fn run_kept(
        &self,
        plan: &Arc<LogicalPlan>,
        named: &SchemaRef,
        parameters: Vec<ScalarValue>,
        cache: Option<(&String, &Vec<Read>)>,
    ) -> PgWireResult<(SchemaRef, Vec<RecordBatch>)> {
        let Some((text, reads)) = cache else {
            return self.run(plan, named, parameters).await;
        };
        let results = self.session.results();
        // Apart from the session's own keys (statement texts).
        let key = format!("wire\u{0}{text}\u{1}{parameters:?}");
        if let Some(kept) = results.get_at(&key, reads) {
            return Ok(kept);
        }
        let (schema, batches) = self.run(plan, named, parameters).await?;
        results.put(key, reads.clone(), &(schema.clone(), batches.clone()));
        Ok((schema, batches))
    }

    /// Runs a plan with its parameters under the timeout; the result keeps
    /// the run's types under `named`'s (PostgreSQL's) column names.
    async fn run(
        &self,
        plan: &Arc<LogicalPlan>,
        named: &SchemaRef,
        parameters: Vec<ScalarValue>,
    ) -> PgWireResult<(SchemaRef, Vec<RecordBatch>)> {
        let plan = if parameters.is_empty() {
            plan.as_ref().clone()
        } else {
            plan.as_ref()
                .clone()
                .with_param_values(parameters)
                .map_err(|e| user_error(&Error::Sql(e), None))?
        };
        let run = self.session.execute(plan);
        let result = match self.timeout {
            Some(limit) => match tokio::time::timeout(limit, run).await {
                Ok(result) => result,
                Err(_) => {
                    return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                        "ERROR".into(),
                        "57014".into(),
                        format!(
                            "canceling statement due to statement timeout ({} ms)",
                            limit.as_millis()
                        ),
                    ))));
                }
            },
            None => run.await,
        };
        let (schema, batches) = result.map_err(|e| user_error(&e, None))?;
        // The names PostgreSQL would give, on the types the run gave.
        let schema = if schema.fields().len() == named.fields().len() {
            Arc::new(arrow::datatypes::Schema::new(
                schema
                    .fields()
                    .iter()
                    .zip(named.fields())
                    .map(|(f, n)| f.as_ref().clone().with_name(n.name()))
                    .collect::<Vec<_>>(),
            ))
        } else {
            schema
        };
        Ok((schema, batches))
    }
}

fn encoding_error(message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "XX000".into(),
        format!("encoding a result: {message}"),
    )))
}

/// `COPY ... TO STDOUT` as the query it reads and the format it writes;
/// `None` for any other statement. COPY FROM is a write (25006); COPY to a
/// server-side file or program, and the binary format, are refused by name.
fn copy_to_stdout(sql: &str) -> Result<Option<(Statement, encode::CopyFormat)>, Error> {
    use datafusion::sql::sqlparser::ast::{
        CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget,
        Statement as SqlStatement,
    };
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    let trimmed = sql.trim_start();
    if !trimmed
        .get(..4)
        .is_some_and(|w| w.eq_ignore_ascii_case("copy"))
    {
        return Ok(None);
    }
    let mut parsed =
        datafusion::sql::sqlparser::parser::Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .map_err(|e| Error::Sql(DataFusionError::SQL(Box::new(e), None)))?;
    if parsed.len() != 1 {
        return Ok(None);
    }
    let SqlStatement::Copy {
        source,
        to,
        target,
        options,
        legacy_options,
        ..
    } = parsed.remove(0)
    else {
        return Ok(None);
    };
    if !to {
        return Err(Error::ReadOnly("COPY FROM".into()));
    }
    if target != CopyTarget::Stdout {
        return Err(Error::Sql(DataFusionError::NotImplemented(format!(
            "COPY TO {target}: the server writes no files; use COPY ... TO STDOUT (psql's \\copy)"
        ))));
    }
    let unsupported = |what: String| {
        Error::Sql(DataFusionError::NotImplemented(format!(
            "COPY option {what} is not supported (text and csv, with HEADER, DELIMITER, NULL and QUOTE, are)"
        )))
    };
    let mut format = encode::CopyFormat::text();
    let (mut delimiter, mut null, mut header, mut quote) = (None, None, false, None);
    for option in &options {
        match option {
            CopyOption::Format(name) => match name.value.to_ascii_lowercase().as_str() {
                "text" => format = encode::CopyFormat::text(),
                "csv" => format = encode::CopyFormat::csv(),
                _ => return Err(unsupported(option.to_string())),
            },
            CopyOption::Delimiter(c) => delimiter = Some(*c),
            CopyOption::Null(n) => null = Some(n.clone()),
            CopyOption::Header(h) => header = *h,
            CopyOption::Quote(c) => quote = Some(*c),
            CopyOption::Encoding(e)
                if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => {}
            _ => return Err(unsupported(option.to_string())),
        }
    }
    for option in &legacy_options {
        match option {
            CopyLegacyOption::Csv(csv) => {
                format = encode::CopyFormat::csv();
                for o in csv {
                    match o {
                        CopyLegacyCsvOption::Header => header = true,
                        CopyLegacyCsvOption::Quote(c) => quote = Some(*c),
                        _ => return Err(unsupported(o.to_string())),
                    }
                }
            }
            CopyLegacyOption::Delimiter(c) => delimiter = Some(*c),
            CopyLegacyOption::Null(n) => null = Some(n.clone()),
            CopyLegacyOption::Header => header = true,
            _ => return Err(unsupported(option.to_string())),
        }
    }
    format.header = header;
    if let Some(d) = delimiter {
        format.delimiter = d;
    }
    if let Some(n) = null {
        format.null = n;
    }
    if let Some(q) = quote {
        format.quote = q;
    }
    let query = match source {
        CopySource::Query(query) => SqlStatement::Query(query),
        CopySource::Table {
            table_name,
            columns,
        } => {
            let list = if columns.is_empty() {
                "*".to_string()
            } else {
                columns
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let mut statements = parse_postgres(&format!("SELECT {list} FROM {table_name}"))?;
            return Ok(Some((statements.remove(0), format)));
        }
    };
    Ok(Some((Statement::Statement(Box::new(query)), format)))
}

/// Statements answered without DataFusion: transactions, `SET`, `SHOW`,
/// and the session resets clients send.
fn session_statement(text: &str, settings: &[Setting]) -> Option<Prepared> {
    let upper = text.trim_start().to_ascii_uppercase();
    let word = upper.split_whitespace().next().unwrap_or("");
    let command = |tag, effect| Some(Prepared::Command { tag, effect });
    if privileged(text).is_some() {
        // Refused in `prepare`.
        return None;
    }
    match word {
        "BEGIN" | "START" => command("BEGIN", Effect::BeginTransaction),
        "COMMIT" | "END" => command("COMMIT", Effect::EndTransaction),
        // `ROLLBACK TO [SAVEPOINT] x` stays in the transaction.
        "ROLLBACK" if upper.split_whitespace().nth(1) == Some("TO") => {
            command("ROLLBACK", Effect::None)
        }
        "ROLLBACK" | "ABORT" => command("ROLLBACK", Effect::EndTransaction),
        "SAVEPOINT" => command("SAVEPOINT", Effect::None),
        "RELEASE" => command("RELEASE", Effect::None),
        "SET" => command("SET", Effect::None),
        "RESET" => command("RESET", Effect::None),
        "DISCARD" => command("DISCARD ALL", Effect::None),
        "DEALLOCATE" => command("DEALLOCATE", Effect::None),
        "SHOW" => {
            let name = upper
                .trim_start_matches("SHOW")
                .trim()
                .trim_end_matches(';')
                .to_ascii_lowercase();
            let key = match name.as_str() {
                "transaction isolation level" => "transaction_isolation",
                other => other,
            };
            let rows: Vec<(&str, String, &str)> = if key == "all" {
                settings
                    .iter()
                    .map(|s| (s.name, shown(s), s.description))
                    .collect()
            } else {
                // Anything else is DataFusion's (`SHOW datafusion.execution.batch_size`).
                let found = settings.iter().find(|s| s.name == key)?;
                vec![(found.name, shown(found), found.description)]
            };
            let text_column = |values: Vec<&str>| -> arrow::array::ArrayRef {
                Arc::new(arrow::array::StringArray::from(values))
            };
            let (schema, columns) = if key == "all" {
                let schema = arrow::datatypes::Schema::new(
                    ["name", "setting", "description"]
                        .map(|n| arrow::datatypes::Field::new(n, DataType::Utf8, false))
                        .to_vec(),
                );
                let columns = vec![
                    text_column(rows.iter().map(|r| r.0).collect()),
                    text_column(rows.iter().map(|r| r.1.as_str()).collect()),
                    text_column(rows.iter().map(|r| r.2).collect()),
                ];
                (schema, columns)
            } else {
                let schema = arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
                    name.replace(' ', "_"),
                    DataType::Utf8,
                    false,
                )]);
                (
                    schema,
                    vec![text_column(rows.iter().map(|r| r.1.as_str()).collect())],
                )
            };
            let schema: SchemaRef = Arc::new(schema);
            let batch = RecordBatch::try_new(schema.clone(), columns).ok()?;
            Some(Prepared::Rows {
                schema,
                batches: vec![batch],
            })
        }
        _ => None,
    }
}

/// A setting as `SHOW` prints it: with its unit (`20000ms`), as PostgreSQL
/// does for a value that has one.
fn shown(setting: &Setting) -> String {
    match setting.unit {
        Some(unit) if setting.value != "0" => format!("{}{unit}", setting.value),
        _ => setting.value.clone(),
    }
}

/// The plan's schema with PostgreSQL's column names (see [`names`]).
fn renamed(schema: &arrow::datatypes::Schema, statement: &Statement) -> SchemaRef {
    let planned: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let names = names::result_names(statement, &planned);
    Arc::new(arrow::datatypes::Schema::new(
        schema
            .fields()
            .iter()
            .zip(names)
            .map(|(f, n)| f.as_ref().clone().with_name(n))
            .collect::<Vec<_>>(),
    ))
}

/// What a statement would need a superuser for, as PostgreSQL words the
/// refusal: changing the role the session runs as, or reading the server's
/// files; `None` for everything else.
fn privileged(text: &str) -> Option<String> {
    let upper = text.trim_start().to_ascii_uppercase();
    let words: Vec<&str> = upper.split_whitespace().take(3).collect();
    match words.as_slice() {
        ["SET", "ROLE", ..] | ["SET", "SESSION" | "LOCAL", "ROLE", ..] => {
            Some("to set role (the server runs every session as its one user)".into())
        }
        ["SET", "SESSION", "AUTHORIZATION"] => Some(
            "to set session authorization (the server runs every session as its one user)".into(),
        ),
        _ => [
            "PG_READ_FILE",
            "PG_READ_BINARY_FILE",
            "PG_LS_DIR",
            "PG_STAT_FILE",
            "LO_IMPORT",
        ]
        .iter()
        .find(|f| upper.contains(&format!("{f}(")))
        .map(|f| format!("for function {}", f.to_ascii_lowercase())),
    }
}

/// The command a writing statement runs (`INSERT`, `CREATE TABLE`), as
/// PostgreSQL names it in "cannot execute ... in a read-only transaction";
/// `None` for statements that only read. (`COPY` is [`copy_to_stdout`]'s.)
fn writing_command(text: &str) -> Option<String> {
    let upper = text.trim_start().to_ascii_uppercase();
    let mut words = upper.split_whitespace();
    let first = words.next()?;
    match first {
        "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "TRUNCATE" | "GRANT" | "REVOKE" | "VACUUM"
        | "REINDEX" | "CLUSTER" | "REFRESH" | "COMMENT" | "LOCK" => Some(first.to_string()),
        "CREATE" | "DROP" | "ALTER" => {
            let mut object = words.next().unwrap_or("");
            if matches!(object, "OR" | "TEMP" | "TEMPORARY" | "UNIQUE" | "EXTERNAL") {
                object = words
                    .find(|w| {
                        !matches!(
                            *w,
                            "OR" | "REPLACE" | "TEMP" | "TEMPORARY" | "UNIQUE" | "EXTERNAL"
                        )
                    })
                    .unwrap_or("");
            }
            Some(format!("{first} {object}").trim_end().to_string())
        }
        _ => None,
    }
}

/// Our error as a PostgreSQL error: a SQLSTATE by kind, the whole chain as
/// the message, and the cursor position when DataFusion knows it.
pub(crate) fn user_error(error: &Error, sql: Option<&str>) -> PgWireError {
    let code = match error {
        Error::Sql(e) => match e.find_root() {
            DataFusionError::SQL(..) => "42601",
            DataFusionError::ResourcesExhausted(_) => "53200",
            DataFusionError::Plan(m) if m.contains("not found") => "42P01",
            DataFusionError::Plan(m) if m.starts_with("Invalid function") => "42883",
            DataFusionError::ArrowError(e, _)
                if matches!(e.as_ref(), arrow::error::ArrowError::DivideByZero) =>
            {
                "22012"
            }
            DataFusionError::ArrowError(e, _)
                if matches!(e.as_ref(), arrow::error::ArrowError::CastError(_)) =>
            {
                "22P02"
            }
            DataFusionError::Plan(m)
                if m.starts_with("DDL not supported") || m.starts_with("DML not supported") =>
            {
                "25006"
            }
            DataFusionError::SchemaError(..) => "42703",
            DataFusionError::Plan(_) => "42000",
            DataFusionError::NotImplemented(_) => "0A000",
            _ => "XX000",
        },
        Error::TableNotFound(_) => "42P01",
        Error::ReadOnly(_) => "25006",
        Error::PermissionDenied(_) => "42501",
        Error::TimeTravel(_) | Error::TimeTravelRead { .. } => "22023",
        _ => "XX000",
    };
    let mut info = ErrorInfo::new("ERROR".into(), code.into(), error.report());
    if let Some(sql) = sql
        && let Some((line, column)) = error.position_in(sql)
    {
        info.position = char_offset(sql, line, column).map(|p| p.to_string());
    }
    PgWireError::UserError(Box::new(info))
}

/// The 1-based character index of (line, column) in `sql`.
fn char_offset(sql: &str, line: usize, column: usize) -> Option<usize> {
    let mut offset = 0;
    for (i, text) in sql.split('\n').enumerate() {
        if i + 1 == line {
            return (column >= 1 && column <= text.chars().count() + 1).then_some(offset + column);
        }
        offset += text.chars().count() + 1;
    }
    None
}

#[async_trait]
impl SimpleQueryHandler for Handler {
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = match self.prepare_all(query).await {
            Ok(p) => p,
            Err(e) => return Err(user_error(&e, Some(query))),
        };
        let mut responses = Vec::with_capacity(prepared.len());
        for statement in &prepared {
            match self
                .execute(statement, Vec::new(), &|_| FieldFormat::Text)
                .await
            {
                Ok(r) => responses.push(r),
                // Like PostgreSQL: the statements before the failing one
                // stand, the rest of the string is skipped.
                Err(PgWireError::UserError(info)) => {
                    responses.push(Response::Error(info));
                    break;
                }
                Err(other) => return Err(other),
            }
        }
        Ok(responses)
    }
}

/// Parses statements for the extended protocol (one per Parse message).
#[derive(Debug)]
pub(crate) struct Parser {
    pub(crate) handler: Arc<Handler>,
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut prepared = self
            .handler
            .prepare_all(sql)
            .await
            .map_err(|e| user_error(&e, Some(sql)))?;
        match prepared.len() {
            0 => Ok(None),
            1 => Ok(prepared.pop()),
            n => Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                "42601".into(),
                format!("cannot insert multiple commands into a prepared statement (found {n})"),
            )))),
        }
    }

    fn get_parameter_types(&self, statement: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(match statement {
            Prepared::Plan { parameters, .. } => parameters
                .iter()
                .map(|p| p.as_ref().map(encode::pg_type).unwrap_or(Type::TEXT))
                .collect(),
            _ => Vec::new(),
        })
    }

    fn get_result_schema(
        &self,
        statement: &Prepared,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let schema = match statement {
            Prepared::Plan { schema, .. } | Prepared::Rows { schema, .. } => schema,
            Prepared::Command { .. } | Prepared::Copy { .. } => return Ok(Vec::new()),
        };
        Ok(encode::fields(schema, |i| {
            format.map(|f| f.format_for(i)).unwrap_or(FieldFormat::Text)
        }))
    }
}

#[async_trait]
impl ExtendedQueryHandler for Handler {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        // The parser needs the handler (for the session); pgwire asks for it
        // per message, and a parser is two pointers.
        Arc::new(Parser {
            handler: Arc::new(Handler {
                session: self.session.clone(),
                timeout: self.timeout,
                settings: self.settings.clone(),
            }),
        })
    }

    async fn do_describe_statement<C>(
        &self,
        _client: &mut C,
        target: &StoredStatement<Prepared>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let parser = self.query_parser();
        let planned = match &target.statement {
            Prepared::Plan { parameters, .. } => parameters.len(),
            _ => 0,
        };
        let parameters = (0..planned.max(target.parameter_types.len()))
            .map(|i| parameter_type(target, i))
            .collect();
        let fields = parser.get_result_schema(&target.statement, None)?;
        Ok(DescribeStatementResponse::new(parameters, fields))
    }

    async fn do_describe_portal<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Prepared>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let fields = self.query_parser().get_result_schema(
            &portal.statement.statement,
            Some(&portal.result_column_format),
        )?;
        Ok(DescribePortalResponse::new(fields))
    }

    async fn do_query<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statement = &portal.statement;
        let mut values = Vec::with_capacity(portal.parameters.len());
        if let Prepared::Plan { parameters, .. } = &statement.statement {
            for (i, value) in portal.parameters.iter().enumerate() {
                // What Describe told the client, which encodes binary
                // values by it.
                let declared = parameter_type(statement, i);
                let wanted = parameters.get(i).cloned().flatten();
                let scalar = encode::parameter(
                    value.as_deref(),
                    portal.parameter_format.is_binary(i),
                    Some(&declared),
                    wanted.as_ref(),
                )
                .map_err(|message| {
                    PgWireError::UserError(Box::new(ErrorInfo::new(
                        "ERROR".into(),
                        "22P02".into(),
                        format!("parameter ${}: {message}", i + 1),
                    )))
                })?;
                values.push(scalar);
            }
        }
        let format = portal.result_column_format.clone();
        let replanned;
        let mut prepared = &statement.statement;
        if let Prepared::Plan {
            source,
            reads,
            schema,
            ..
        } = prepared
            && moved(reads, self.session.lake()).await.is_some()
        {
            // A table it read has a newer version: plan it again, as
            // PostgreSQL runs a prepared statement on the data at execution.
            replanned = self
                .prepare((**source).clone())
                .await
                .map_err(|e| user_error(&e, None))?;
            if let Prepared::Plan { schema: now, .. } = &replanned
                && !same_columns(schema, now)
            {
                return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                    "ERROR".into(),
                    "0A000".into(),
                    "cached plan must not change result type (a table it reads changed its columns; prepare the statement again)".into(),
                ))));
            }
            prepared = &replanned;
        }
        self.execute(prepared, values, &|i| format.format_for(i))
            .await
    }
}

/// Whether two results have the same column names and types.
fn same_columns(a: &SchemaRef, b: &SchemaRef) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields()
            .iter()
            .zip(b.fields())
            .all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
}

/// The type of parameter `i` as Describe reports it: the client's declared
/// type wins, the plan's inferred one fills the gaps, and `text` the rest.
fn parameter_type(statement: &StoredStatement<Prepared>, i: usize) -> Type {
    let planned = match &statement.statement {
        Prepared::Plan { parameters, .. } => parameters.get(i).cloned().flatten(),
        _ => None,
    };
    statement
        .parameter_types
        .get(i)
        .cloned()
        .flatten()
        .filter(|t| *t != Type::UNKNOWN)
        .or_else(|| planned.as_ref().map(encode::pg_type))
        .unwrap_or(Type::TEXT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_become_character_offsets() {
        assert_eq!(char_offset("select x\nfrom y", 2, 6), Some(15));
        assert_eq!(char_offset("select x", 1, 1), Some(1));
        assert_eq!(char_offset("select x", 3, 1), None);
    }

    #[test]
    fn transactions_and_settings_are_acknowledged() {
        let settings = super::super::pg_catalog::settings(Some(20_000));
        assert!(matches!(
            session_statement("BEGIN", &settings),
            Some(Prepared::Command {
                effect: Effect::BeginTransaction,
                ..
            })
        ));
        assert!(matches!(
            session_statement("SET extra_float_digits = 3", &settings),
            Some(Prepared::Command { tag: "SET", .. })
        ));
        assert!(matches!(
            session_statement("SHOW server_version", &settings),
            Some(Prepared::Rows { .. })
        ));
        assert!(session_statement("select 1", &settings).is_none());
    }
}
