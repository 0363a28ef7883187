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
    DescribePortalResponse, DescribeStatementResponse, FieldFormat, FieldInfo, QueryResponse,
    Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;

use super::{catalog, encode};
use crate::Error;
use crate::session::{Session, parse_postgres};

/// A statement ready to run, kept by pgwire between Parse and Execute.
#[derive(Clone, Debug)]
pub(crate) enum Prepared {
    /// A DataFusion plan, possibly with `$n` placeholders.
    Plan {
        plan: Arc<LogicalPlan>,
        schema: SchemaRef,
        /// The type the plan expects at `$1`, `$2`, ...
        parameters: Vec<Option<DataType>>,
    },
    /// Rows known at prepare time (catalog answers, `SHOW`).
    Rows {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    },
    /// A statement that only needs acknowledging; the lake is read-only,
    /// so transactions have nothing to do.
    Command { tag: &'static str, effect: Effect },
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
}

impl Handler {
    /// Prepares every statement in `sql` (several for the simple protocol).
    async fn prepare_all(&self, sql: &str) -> Result<Vec<Prepared>, Error> {
        if let Some((schema, batches)) = catalog::answer(&self.session, sql).await? {
            return Ok(vec![Prepared::Rows { schema, batches }]);
        }
        let mut out = Vec::new();
        for statement in parse_postgres(sql)? {
            out.push(self.prepare(statement).await?);
        }
        Ok(out)
    }

    async fn prepare(&self, statement: Statement) -> Result<Prepared, Error> {
        let text = statement.to_string();
        if let Some(prepared) = session_statement(&text) {
            return Ok(prepared);
        }
        let plan = self.session.plan(statement).await?;
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let types = plan.get_parameter_types()?;
        // `$1` .. `$n`; a gap (say only `$2` used) leaves `$1` untyped.
        let count = types
            .keys()
            .filter_map(|k| k.trim_start_matches('$').parse::<usize>().ok())
            .max()
            .unwrap_or(0);
        let parameters = (1..=count)
            .map(|i| types.get(&format!("${i}")).cloned().flatten())
            .collect();
        Ok(Prepared::Plan {
            plan: Arc::new(plan),
            schema,
            parameters,
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
            Prepared::Plan { plan, .. } => {
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
                result.map_err(|e| user_error(&e, None))?
            }
        };
        let fields = Arc::new(encode::fields(&schema, format));
        let mut rows = Vec::new();
        for batch in &batches {
            rows.extend(encode::rows(batch, &fields).map_err(|message| {
                PgWireError::UserError(Box::new(ErrorInfo::new(
                    "ERROR".into(),
                    "XX000".into(),
                    format!("encoding a result: {message}"),
                )))
            })?);
        }
        let mut response = QueryResponse::new(fields, stream::iter(rows.into_iter().map(Ok)));
        if matches!(prepared, Prepared::Plan { plan, .. } if matches!(plan.as_ref(), LogicalPlan::Explain(_) | LogicalPlan::Analyze(_)))
        {
            response.set_command_tag("EXPLAIN");
        }
        Ok(Response::Query(response))
    }
}

/// Statements answered without DataFusion: transactions, `SET`, `SHOW`,
/// and the session resets clients send.
fn session_statement(text: &str) -> Option<Prepared> {
    let upper = text.trim_start().to_ascii_uppercase();
    let word = upper.split_whitespace().next().unwrap_or("");
    let command = |tag, effect| Some(Prepared::Command { tag, effect });
    match word {
        "BEGIN" | "START" => command("BEGIN", Effect::BeginTransaction),
        "COMMIT" | "END" => command("COMMIT", Effect::EndTransaction),
        "ROLLBACK" | "ABORT" => command("ROLLBACK", Effect::EndTransaction),
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
            let value = match name.as_str() {
                "server_version" => "16.6",
                "server_encoding" | "client_encoding" => "UTF8",
                "timezone" => "UTC",
                "datestyle" => "ISO, YMD",
                "standard_conforming_strings" => "on",
                "transaction isolation level" | "transaction_isolation" => "read committed",
                "search_path" => "silver, bronze, gold",
                "max_identifier_length" => "63",
                // Anything else is DataFusion's (`SHOW datafusion.execution.batch_size`).
                _ => return None,
            };
            let schema: SchemaRef = Arc::new(arrow::datatypes::Schema::new(vec![
                arrow::datatypes::Field::new(name.replace(' ', "_"), DataType::Utf8, false),
            ]));
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(arrow::array::StringArray::from(vec![value]))],
            )
            .ok()?;
            Some(Prepared::Rows {
                schema,
                batches: vec![batch],
            })
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
            DataFusionError::SchemaError(..) => "42703",
            DataFusionError::Plan(_) => "42000",
            DataFusionError::NotImplemented(_) => "0A000",
            _ => "XX000",
        },
        Error::TableNotFound(_) => "42P01",
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
            Prepared::Command { .. } => return Ok(Vec::new()),
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
        let planned = parser.get_parameter_types(&target.statement)?;
        // The client's declared types win; the plan fills the gaps.
        let parameters = (0..planned.len().max(target.parameter_types.len()))
            .map(|i| {
                target
                    .parameter_types
                    .get(i)
                    .cloned()
                    .flatten()
                    .filter(|t| *t != Type::UNKNOWN)
                    .or_else(|| planned.get(i).cloned())
                    .unwrap_or(Type::TEXT)
            })
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
                let declared = statement.parameter_types.get(i).cloned().flatten();
                let wanted = parameters.get(i).cloned().flatten();
                let scalar = encode::parameter(
                    value.as_deref(),
                    portal.parameter_format.is_binary(i),
                    declared.as_ref(),
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
        self.execute(&statement.statement, values, &|i| format.format_for(i))
            .await
    }
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
        assert!(matches!(
            session_statement("BEGIN"),
            Some(Prepared::Command {
                effect: Effect::BeginTransaction,
                ..
            })
        ));
        assert!(matches!(
            session_statement("SET extra_float_digits = 3"),
            Some(Prepared::Command { tag: "SET", .. })
        ));
        assert!(matches!(
            session_statement("SHOW server_version"),
            Some(Prepared::Rows { .. })
        ));
        assert!(session_statement("select 1").is_none());
    }
}
