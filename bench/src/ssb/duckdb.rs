//! The queries through DuckDB (the Python package, run by `python3`) over
//! the same Parquet files: the current version's files of each Delta table,
//! listed from the Delta log, read with `read_parquet`. DuckDB's own delta
//! extension would be downloaded on first use, which this machine cannot do.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::Measured;
use super::answers::Rows;
use super::queries::Query;
use crate::{Error, Result};

const SCRIPT: &str = include_str!("duckdb.py");

#[derive(Serialize)]
struct Request<'a> {
    tables: std::collections::BTreeMap<&'a str, Vec<String>>,
    queries: Vec<(&'a str, &'a str)>,
    runs: usize,
}

#[derive(Deserialize)]
struct Answer {
    version: String,
    results: Vec<QueryAnswer>,
}

#[derive(Deserialize)]
struct QueryAnswer {
    name: String,
    seconds: Vec<f64>,
    rows: Rows,
}

/// DuckDB's version and its measurements, in query order.
pub(crate) async fn measure(
    python: &str,
    files: &[(&'static str, Vec<PathBuf>)],
    queries: &[Query],
    runs: usize,
) -> Result<(String, Vec<Measured>)> {
    let request = Request {
        tables: files
            .iter()
            .map(|(t, f)| {
                (
                    *t,
                    f.iter().map(|p| p.to_string_lossy().into_owned()).collect(),
                )
            })
            .collect(),
        queries: queries.iter().map(|q| (q.name, q.sql)).collect(),
        runs,
    };
    let input =
        serde_json::to_vec(&request).map_err(|e| Error::Internal(format!("request: {e}")))?;
    let mut child = tokio::process::Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::DuckDb(format!("cannot start {python}: {e}")))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| Error::Internal("child stdin".into()))?;
    stdin
        .write_all(&input)
        .await
        .map_err(|e| Error::DuckDb(format!("writing the request: {e}")))?;
    drop(stdin);
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| Error::DuckDb(format!("waiting for {python}: {e}")))?;
    if !output.status.success() {
        return Err(Error::DuckDb(format!(
            "{python} exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let answer: Answer = serde_json::from_slice(&output.stdout)
        .map_err(|e| Error::DuckDb(format!("unreadable answer: {e}")))?;
    if answer.results.len() != queries.len()
        || answer
            .results
            .iter()
            .zip(queries)
            .any(|(a, q)| a.name != q.name)
    {
        return Err(Error::DuckDb(
            "answers do not match the queries sent".into(),
        ));
    }
    let measured = answer
        .results
        .into_iter()
        .map(|a| Measured {
            times: a.seconds.into_iter().map(Duration::from_secs_f64).collect(),
            rows: a.rows,
        })
        .collect();
    Ok((answer.version, measured))
}
