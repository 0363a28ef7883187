//! The SQL page and its API: run a statement (with the session's limits, a
//! timeout and cancel), download a whole result, and the catalog for the
//! editor's completion.

use std::time::{Duration, Instant};

use arrow::array::Array;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tributary_query::Format;
use tributary_query::session::QueryResult;

use crate::html;

/// Rows sent to the page at most; the grid pages through them and the
/// download has them all.
pub const ROW_LIMIT: usize = 10_000;

pub(crate) async fn page() -> Response {
    let body = r#"<section class="sql">
<div class="editor-bar">
  <button id="run" title="Run (Ctrl+Enter)">Run</button>
  <button id="explain" title="Explain (Ctrl+Shift+E)">Explain</button>
  <button id="cancel" disabled>Cancel</button>
  <span id="status" class="muted" role="status"></span>
</div>
<div class="editor" id="editor">
  <pre id="highlight" aria-hidden="true"></pre>
  <textarea id="query" spellcheck="false" autocapitalize="off" aria-label="SQL" placeholder="SELECT … (Ctrl+Enter runs)"></textarea>
  <ul id="complete" class="complete" role="listbox" hidden></ul>
</div>
<p id="error" class="error" role="alert" hidden></p>
<div id="result" hidden>
  <div class="result-bar">
    <span id="rowcount"></span>
    <span class="spacer"></span>
    <span class="kinds" role="group" aria-label="Chart">
      <button data-kind="" aria-pressed="true">Grid</button><button data-kind="bar" aria-pressed="false">Bar</button><button data-kind="line" aria-pressed="false">Line</button><button data-kind="area" aria-pressed="false">Area</button><button data-kind="scatter" aria-pressed="false">Scatter</button>
    </span>
    <button id="copy">Copy</button>
    <button id="csv">CSV</button>
    <button id="parquet">Parquet</button>
  </div>
  <div id="chart"></div>
  <div id="plan" class="plan" hidden></div>
  <div class="grid-wrap"><table id="grid" class="grid"></table></div>
  <div class="pager"><button id="prev">‹ Prev</button> <span id="page"></span> <button id="next">Next ›</button></div>
</div>
<details class="history"><summary>History</summary><ol id="history"></ol></details>
</section>"#;
    html::page("SQL", "sql", body).into_response()
}

#[derive(Deserialize)]
pub(crate) struct QueryRequest {
    sql: String,
    /// The page's id for this run, for [`cancel`].
    id: Option<String>,
}

/// A column of a result as the page needs it: how to sort and chart it.
#[derive(Serialize)]
struct Column {
    name: String,
    #[serde(rename = "type")]
    data_type: String,
    /// `number`, `time`, `bool` or `text`.
    kind: &'static str,
}

fn kind(t: &DataType) -> &'static str {
    match t {
        t if t.is_numeric() => "number",
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => "time",
        DataType::Boolean => "bool",
        _ => "text",
    }
}

/// Runs `sql` under the timeout, until done or cancelled by `token`.
async fn run(
    state: &crate::AppState,
    sql: &str,
    token: &CancellationToken,
) -> Result<QueryResult, (StatusCode, Value)> {
    let work = state.session.sql_with_schema(sql);
    let timeout = state.timeout.unwrap_or(Duration::MAX);
    tokio::select! {
        r = work => r.map_err(|e| {
            let (line, column) = e.position_in(sql).unzip();
            (StatusCode::BAD_REQUEST, json!({"error": e.report(), "line": line, "column": column}))
        }),
        _ = token.cancelled() => Err((StatusCode::CONFLICT, json!({"error": "cancelled"}))),
        _ = tokio::time::sleep(timeout) => Err((
            StatusCode::REQUEST_TIMEOUT,
            json!({"error": format!("canceling statement due to statement timeout ({} ms, [sql] statement_timeout_ms)", timeout.as_millis())}),
        )),
    }
}

/// Cells as display text (`null` for NULL), at most `limit` rows.
pub(crate) fn cells(
    batches: &[RecordBatch],
    limit: usize,
) -> Result<Vec<Vec<Option<String>>>, String> {
    let options = FormatOptions::default();
    let mut rows = Vec::new();
    for batch in batches {
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        for r in 0..batch.num_rows() {
            if rows.len() == limit {
                return Ok(rows);
            }
            rows.push(
                batch
                    .columns()
                    .iter()
                    .zip(&formatters)
                    .map(|(c, f)| (!c.is_null(r)).then(|| f.value(r).to_string()))
                    .collect(),
            );
        }
    }
    Ok(rows)
}

fn result_json(schema: &SchemaRef, batches: &[RecordBatch], elapsed: Duration) -> Value {
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let columns: Vec<Column> = schema
        .fields()
        .iter()
        .map(|f| Column {
            name: f.name().clone(),
            data_type: f.data_type().to_string(),
            kind: kind(f.data_type()),
        })
        .collect();
    match cells(batches, ROW_LIMIT) {
        Ok(rows) => json!({
            "columns": columns,
            "rows": rows,
            "row_count": total,
            "truncated": total > rows.len(),
            "elapsed_ms": elapsed.as_millis() as u64,
        }),
        Err(e) => json!({"error": format!("formatting the result: {e}")}),
    }
}

/// `POST /api/query {sql, id}`: the result, or `{error, line, column}`.
pub(crate) async fn query(
    State(state): State<crate::State>,
    Json(request): Json<QueryRequest>,
) -> Response {
    let token = CancellationToken::new();
    if let Some(id) = &request.id {
        state
            .running
            .lock()
            .expect("running lock")
            .insert(id.clone(), token.clone());
    }
    let started = Instant::now();
    let outcome = run(&state, &request.sql, &token).await;
    if let Some(id) = &request.id {
        state.running.lock().expect("running lock").remove(id);
    }
    match outcome {
        Ok((schema, batches)) => {
            Json(result_json(&schema, &batches, started.elapsed())).into_response()
        }
        Err((status, body)) => (status, Json(body)).into_response(),
    }
}

#[derive(Deserialize)]
pub(crate) struct CancelRequest {
    id: String,
}

/// `POST /api/cancel {id}`: stops that running query (its request answers
/// `cancelled`); false when it had already ended.
pub(crate) async fn cancel(
    State(state): State<crate::State>,
    Json(request): Json<CancelRequest>,
) -> Json<Value> {
    let token = state
        .running
        .lock()
        .expect("running lock")
        .remove(&request.id);
    let found = token.map(|t| t.cancel()).is_some();
    Json(json!({ "cancelled": found }))
}

#[derive(Deserialize)]
pub(crate) struct DownloadRequest {
    sql: String,
    format: String,
}

/// `POST /api/download {sql, format}`: the whole result as CSV or Parquet.
pub(crate) async fn download(
    State(state): State<crate::State>,
    Json(request): Json<DownloadRequest>,
) -> Response {
    let format = match request.format.as_str() {
        "csv" => Format::Csv,
        "parquet" => Format::Parquet,
        other => {
            return (
                StatusCode::BAD_REQUEST,
                format!("unknown download format {other:?} (csv or parquet)"),
            )
                .into_response();
        }
    };
    let (schema, batches) = match run(&state, &request.sql, &CancellationToken::new()).await {
        Ok(r) => r,
        Err((status, body)) => return (status, Json(body)).into_response(),
    };
    let mut out = Vec::new();
    if let Err(e) = tributary_query::render(&schema, &batches, format, &mut out) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.report()).into_response();
    }
    let (mime, name) = match format {
        Format::Parquet => ("application/vnd.apache.parquet", "result.parquet"),
        _ => ("text/csv; charset=utf-8", "result.csv"),
    };
    (
        [
            (header::CONTENT_TYPE, mime.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        out,
    )
        .into_response()
}

/// `GET /api/schema`: every schema, table and column, for completion.
pub(crate) async fn schema(State(state): State<crate::State>) -> Response {
    let tables = match state.session.refresh().await {
        Ok(t) => t,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.report()).into_response(),
    };
    let mut out = Vec::new();
    for (layer, table) in tables {
        let columns: Vec<String> = match state
            .session
            .resolve_table(&format!("{layer}.{table}"))
            .await
        {
            Ok((_, _, provider)) => provider
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect(),
            Err(_) => Vec::new(),
        };
        out.push(json!({"schema": layer, "table": table, "columns": columns}));
    }
    if state.catalog_dsn.is_some() {
        for (table, columns) in [
            (
                "runs",
                &[
                    "id",
                    "run_key",
                    "job",
                    "state",
                    "logical_date",
                    "started_at",
                    "ended_at",
                    "error",
                ][..],
            ),
            (
                "attempts",
                &[
                    "run_id",
                    "attempt",
                    "state",
                    "started_at",
                    "ended_at",
                    "error",
                ][..],
            ),
        ] {
            out.push(json!({"schema": tributary_workflows::sql::SCHEMA, "table": table, "columns": columns}));
        }
    }
    Json(json!({ "tables": out })).into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{Field, Schema, TimeUnit};

    use super::*;

    #[test]
    fn results_keep_nulls_and_stop_at_the_limit() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])),
                Arc::new(StringArray::from(vec![Some("<b>"), Some("x"), None])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![Some(0), Some(1_000_000), None])
                        .with_timezone("UTC"),
                ),
            ],
        )
        .unwrap();
        let rows = cells(std::slice::from_ref(&batch), 2).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][0].as_deref(), Some("1"));
        assert_eq!(rows[1][0], None);
        assert_eq!(
            rows[0][1].as_deref(),
            Some("<b>"),
            "escaping is the page's job"
        );
        assert_eq!(rows[0][2].as_deref(), Some("1970-01-01T00:00:00Z"));
        let v = result_json(&schema, &[batch], Duration::from_millis(3));
        assert_eq!(v["row_count"], 3);
        assert_eq!(v["truncated"], false);
        assert_eq!(v["columns"][0]["kind"], "number");
        assert_eq!(v["columns"][1]["kind"], "text");
        assert_eq!(v["columns"][2]["kind"], "time");
    }
}
