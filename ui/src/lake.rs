//! The lake: every table of every layer with its version, files, size and
//! rows; a table's columns, its commits (operation and the offsets the
//! pipelines recorded) and a preview of any version.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use deltalake::DeltaTable;
use futures::StreamExt;
use serde::Deserialize;
use tributary_model::domain::LAYERS;

use crate::html::{self, esc};

/// Rows shown in a preview.
const PREVIEW_ROWS: usize = 50;
/// Files listed on a table's page.
const FILES: usize = 100;
/// Commits shown in a table's history.
const HISTORY: usize = 50;

/// Version, files, bytes and rows (from the files' statistics).
struct Summary {
    version: i64,
    files: usize,
    bytes: u64,
    rows: Option<u64>,
}

fn summary(t: &DeltaTable) -> Option<Summary> {
    let snapshot = t.snapshot().ok()?;
    let mut bytes = 0u64;
    let mut rows = Some(0u64);
    let log = snapshot.log_data();
    for f in log.iter() {
        bytes += f.size().max(0) as u64;
        rows = match (rows, f.num_records()) {
            (Some(r), Some(n)) => Some(r + n as u64),
            _ => None,
        };
    }
    Some(Summary {
        version: snapshot.version() as i64,
        files: log.num_files(),
        bytes,
        rows,
    })
}

fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    (
        status,
        html::page(
            title,
            "lake",
            &format!(r#"<p class="error">{}</p>"#, esc(message)),
        ),
    )
        .into_response()
}

pub(crate) async fn index(State(state): State<crate::State>) -> Response {
    let lake = state.session.lake();
    let mut body = String::from("<h1>Lake</h1>");
    for layer in LAYERS {
        let tables = match lake.list_tables(layer).await {
            Ok(t) => t,
            Err(e) => {
                return error_page(
                    StatusCode::BAD_GATEWAY,
                    "Lake",
                    &format!("listing {layer}: {}", tributary_model::error_chain(&e)),
                );
            }
        };
        body.push_str(&format!(
            r#"<h2>{layer}</h2><div class="grid-wrap"><table class="grid lake"><thead><tr><th>table</th><th class="num">version</th><th class="num">rows</th><th class="num">files</th><th class="num">size</th><th>last commit</th></tr></thead><tbody>"#
        ));
        if tables.is_empty() {
            body.push_str(r#"<tr><td colspan="6" class="muted">no tables yet</td></tr>"#);
        }
        for table in tables {
            let t = lake.open(layer, &table).await.ok().flatten();
            let s = t.as_ref().and_then(summary);
            let last = match &t {
                Some(t) => last_commit(t).await,
                None => String::new(),
            };
            let cell = |v: Option<String>| v.unwrap_or_else(|| "–".into());
            body.push_str(&format!(
                r#"<tr><td><a href="/lake/{layer}/{u}">{name}</a></td><td class="num">{version}</td><td class="num">{rows}</td><td class="num">{files}</td><td class="num">{size}</td><td>{last}</td></tr>"#,
                u = html::url_encode(&table),
                name = esc(&table),
                version = cell(s.as_ref().map(|s| s.version.to_string())),
                rows = cell(s.as_ref().and_then(|s| s.rows).map(|r| r.to_string())),
                files = cell(s.as_ref().map(|s| s.files.to_string())),
                size = cell(s.as_ref().map(|s| tributary_model::human_bytes(s.bytes))),
                last = esc(&last),
            ));
        }
        body.push_str("</tbody></table></div>");
    }
    html::page("Lake", "lake", &body).into_response()
}

async fn last_commit(t: &DeltaTable) -> String {
    let mut history = t.history(Some(1));
    match history.next().await {
        Some(Ok(c)) => c
            .timestamp
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

#[derive(Deserialize)]
pub(crate) struct Version {
    version: Option<i64>,
}

/// A plain table name (letters, digits, `_`): all the lake makes, and safe
/// to put into SQL.
fn plain(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(crate) async fn table(
    State(state): State<crate::State>,
    Path((layer, table)): Path<(String, String)>,
    Query(q): Query<Version>,
) -> Response {
    if !LAYERS.contains(&layer.as_str()) || !plain(&table) {
        return error_page(
            StatusCode::NOT_FOUND,
            "Lake",
            &format!("no table {layer}.{table}"),
        );
    }
    let lake = state.session.lake();
    let t = match lake.open(&layer, &table).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return error_page(
                StatusCode::NOT_FOUND,
                "Lake",
                &format!("no table {layer}.{table}"),
            );
        }
        Err(e) => {
            return error_page(
                StatusCode::BAD_GATEWAY,
                "Lake",
                &format!(
                    "opening {layer}.{table}: {}",
                    tributary_model::error_chain(&e)
                ),
            );
        }
    };
    let name = format!("{layer}.{table}");
    let s = summary(&t);
    let current = s.as_ref().map_or(0, |s| s.version);
    let mut body = format!(
        r#"<p><a href="/lake">Lake</a> › {layer}</p><h1>{n}</h1>"#,
        n = esc(&name)
    );
    if let Some(s) = &s {
        body.push_str(&format!(
            r#"<p class="facts">version {} · {} rows · {} files · {}</p>"#,
            s.version,
            s.rows.map_or("–".into(), |r| r.to_string()),
            s.files,
            tributary_model::human_bytes(s.bytes)
        ));
    }

    // Columns, from the table the SQL session sees.
    body.push_str(r#"<h2>Columns</h2><div class="grid-wrap"><table class="grid"><thead><tr><th>column</th><th>type</th><th>nullable</th></tr></thead><tbody>"#);
    if let Ok((_, _, provider)) = state.session.resolve_table(&name).await {
        for f in provider.schema().fields() {
            body.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(f.name()),
                esc(&f.data_type().to_string()),
                if f.is_nullable() { "yes" } else { "no" }
            ));
        }
    }
    body.push_str("</tbody></table></div>");

    // The files of the current version, largest first.
    if let Ok(snapshot) = t.snapshot() {
        let mut files: Vec<(String, i64, Option<usize>, i64)> = snapshot
            .log_data()
            .iter()
            .map(|f| {
                (
                    f.path().to_string(),
                    f.size(),
                    f.num_records(),
                    f.modification_time(),
                )
            })
            .collect();
        files.sort_by_key(|f| std::cmp::Reverse(f.1));
        let total = files.len();
        body.push_str(&format!(r#"<details class="files"><summary>Files ({total})</summary><div class="grid-wrap"><table class="grid"><thead><tr><th>file</th><th class="num">size</th><th class="num">rows</th><th>written</th></tr></thead><tbody>"#));
        for (path, size, rows, modified) in files.into_iter().take(FILES) {
            body.push_str(&format!(
                r#"<tr><td>{}</td><td class="num">{}</td><td class="num">{}</td><td>{}</td></tr>"#,
                esc(&path),
                tributary_model::human_bytes(size.max(0) as u64),
                rows.map_or("–".into(), |r| r.to_string()),
                chrono::DateTime::from_timestamp_millis(modified)
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_default()
            ));
        }
        body.push_str("</tbody></table></div>");
        if total > FILES {
            body.push_str(&format!(
                r#"<p class="muted">the {FILES} largest of {total}</p>"#
            ));
        }
        body.push_str("</details>");
    }

    // History, newest first.
    body.push_str(r#"<h2>History</h2><div class="grid-wrap"><table class="grid history-table"><thead><tr><th class="num">version</th><th>time</th><th>operation</th><th>recorded by the pipeline</th><th></th></tr></thead><tbody>"#);
    let commits: Vec<_> = t.history(Some(HISTORY)).collect().await;
    for (i, c) in commits.into_iter().enumerate() {
        let Ok(c) = c else { continue };
        let version = current - i as i64;
        let when = c
            .timestamp
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let mut recorded: Vec<String> = c
            .info
            .iter()
            .filter(|(k, _)| k.starts_with("tributary"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        recorded.sort();
        let recorded = recorded.join(" ");
        body.push_str(&format!(
            r#"<tr><td class="num">{version}</td><td>{when}</td><td>{op}</td><td class="detail">{rec}</td><td><a href="/lake/{layer}/{table}?version={version}#preview">preview</a></td></tr>"#,
            op = esc(c.operation.as_deref().unwrap_or("")),
            rec = esc(&recorded),
        ));
    }
    body.push_str("</tbody></table></div>");

    // A preview, at a version when asked (time travel).
    let (sql, label) = match q.version {
        Some(v) => (
            format!("SELECT * FROM table_version('{name}', {v}) LIMIT {PREVIEW_ROWS}"),
            format!("at version {v}"),
        ),
        None => (
            format!("SELECT * FROM {name} LIMIT {PREVIEW_ROWS}"),
            "now".into(),
        ),
    };
    body.push_str(&format!(
        r#"<h2 id="preview">Preview ({label})</h2><p><a href="/sql?q={q}">open in SQL</a></p>"#,
        q = html::url_encode(&sql)
    ));
    match state.session.sql_with_schema(&sql).await {
        Ok((schema, batches)) => body.push_str(&result_table(&schema, &batches)),
        Err(e) => body.push_str(&format!(r#"<p class="error">{}</p>"#, esc(&e.report()))),
    }
    html::page(&name, "lake", &body).into_response()
}

/// A result as an escaped HTML table.
pub(crate) fn result_table(
    schema: &arrow::datatypes::SchemaRef,
    batches: &[arrow::record_batch::RecordBatch],
) -> String {
    use arrow::array::Array;
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let mut out = String::from(r#"<div class="grid-wrap"><table class="grid"><thead><tr>"#);
    for f in schema.fields() {
        out.push_str(&format!("<th>{}</th>", esc(f.name())));
    }
    out.push_str("</tr></thead><tbody>");
    let options = FormatOptions::default();
    for batch in batches {
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .filter_map(|c| ArrayFormatter::try_new(c.as_ref(), &options).ok())
            .collect();
        if formatters.len() != batch.num_columns() {
            continue;
        }
        for r in 0..batch.num_rows() {
            out.push_str("<tr>");
            for (c, f) in batch.columns().iter().zip(&formatters) {
                if c.is_null(r) {
                    out.push_str(r#"<td class="null">NULL</td>"#);
                } else {
                    out.push_str(&format!("<td>{}</td>", esc(&f.value(r).to_string())));
                }
            }
            out.push_str("</tr>");
        }
    }
    out.push_str("</tbody></table></div>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_table_names_reach_sql() {
        assert!(plain("orders"));
        assert!(plain("fact_sales_2"));
        assert!(!plain("orders'); DROP"));
        assert!(!plain(""));
        assert!(!plain("a.b"));
    }
}
