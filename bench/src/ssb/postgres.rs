//! The queries on PostgreSQL: a scratch cluster of its own (the system's
//! `initdb` and `pg_ctl`, as the `postgres` user when we are root), the SSB
//! tables loaded with `COPY` from the Delta tables, primary keys on the
//! dimensions, `VACUUM ANALYZE`, then the same SQL text.
//!
//! The server gets memory for an analytical workload (settings in
//! [`SETTINGS`]); everything else is PostgreSQL's default, parallel query
//! included.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use arrow::array::Array;
use arrow::datatypes::{DataType, Schema};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};
use tributary_query::Session;
use tributary_stack::postgres::PgTools;

use super::answers::Rows;
use super::queries::Query;
use super::{Measured, measure_hot, store};
use crate::{Error, Result};

/// Server settings beyond the defaults, recorded with the results.
pub const SETTINGS: &[(&str, &str)] = &[
    ("shared_buffers", "4GB"),
    ("work_mem", "256MB"),
    ("effective_cache_size", "8GB"),
    ("max_parallel_workers_per_gather", "2"),
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
];

/// Bytes of COPY text sent per message.
const COPY_CHUNK: usize = 1 << 20;

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .map_err(|e| Error::PostgresSetup(format!("{what}: cannot start: {e}")))?;
    if !out.status.success() {
        return Err(Error::PostgresSetup(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// A scratch cluster, stopped and deleted on drop.
pub(crate) struct Cluster {
    tools: PgTools,
    dir: PathBuf,
    port: u16,
    version: String,
}

impl Cluster {
    /// Creates and starts a cluster in a fresh folder under the system's
    /// temporary folder (which the `postgres` user can reach).
    pub(crate) fn start() -> Result<Cluster> {
        let tools = PgTools::find(None)
            .map_err(|e| Error::PostgresSetup(tributary_model::error_chain(&e)))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("tributary-bench-pg-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::PostgresSetup(format!("creating {}: {e}", dir.display())))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| Error::PostgresSetup(format!("finding a free port: {e}")))?;
        let version = Command::new(tools.dir().join("postgres"))
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let cluster = Cluster {
            tools,
            dir,
            port,
            version,
        };
        tributary_stack::postgres::chown_to_server_user(&cluster.dir)
            .map_err(|e| Error::PostgresSetup(tributary_model::error_chain(&e)))?;
        let data = cluster.dir.join("data");
        cluster
            .tools
            .initdb(&data)
            .map_err(|e| Error::PostgresSetup(tributary_model::error_chain(&e)))?;
        let mut options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            cluster.dir.display()
        );
        for (name, value) in SETTINGS {
            options.push_str(&format!(" -c {name}={value}"));
        }
        run(
            cluster
                .tools
                .command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-o")
                .arg(&options)
                .arg("-l")
                .arg(cluster.dir.join("server.log"))
                .args(["-w", "-t", "60", "start"]),
            "pg_ctl start",
        )?;
        Ok(cluster)
    }

    pub(crate) fn version(&self) -> &str {
        &self.version
    }

    pub(crate) async fn connect(&self) -> Result<Client> {
        let dsn = format!(
            "host=127.0.0.1 port={} user=tributary dbname=postgres",
            self.port
        );
        let (client, connection) =
            tokio_postgres::connect(&dsn, NoTls)
                .await
                .map_err(|source| Error::Postgres {
                    context: "connecting to the scratch cluster".into(),
                    source,
                })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "scratch postgres connection ended");
            }
        });
        Ok(client)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .tools
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pg_type(data_type: &DataType) -> Result<&'static str> {
    Ok(match data_type {
        DataType::Int32 => "integer",
        DataType::Int64 => "bigint",
        DataType::Boolean => "boolean",
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => "text",
        other => return Err(Error::Internal(format!("no PostgreSQL type for {other}"))),
    })
}

fn create_table(name: &str, schema: &Schema) -> Result<String> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| Ok(format!("{} {} not null", f.name(), pg_type(f.data_type())?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(format!("create table {name} ({})", columns.join(", ")))
}

/// Appends one value in COPY's text format.
fn put_text(out: &mut BytesMut, value: &str) {
    for b in value.bytes() {
        match b {
            b'\\' => out.put_slice(b"\\\\"),
            b'\t' => out.put_slice(b"\\t"),
            b'\n' => out.put_slice(b"\\n"),
            b'\r' => out.put_slice(b"\\r"),
            other => out.put_u8(other),
        }
    }
}

fn copy_error(table: &str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
    move |source| Error::Postgres {
        context: format!("COPY into {table}"),
        source,
    }
}

/// Creates and fills every SSB table, streaming rows from the lake through
/// our own session into COPY; then keys and statistics.
pub(crate) async fn load(client: &Client, session: &Session) -> Result<Duration> {
    let started = Instant::now();
    let options = FormatOptions::default();
    for table in store::TABLES {
        let frame = session
            .context()
            .sql(&format!("select * from {}.{table}", store::LAYER))
            .await
            .map_err(|e| Error::Internal(format!("reading {table}: {e}")))?;
        let schema: Schema = frame.schema().as_arrow().clone();
        client
            .batch_execute(&create_table(table, &schema)?)
            .await
            .map_err(copy_error(table))?;
        let mut stream = frame
            .execute_stream()
            .await
            .map_err(|e| Error::Internal(format!("reading {table}: {e}")))?;
        let sink = client
            .copy_in(&format!("copy {table} from stdin"))
            .await
            .map_err(copy_error(table))?;
        futures::pin_mut!(sink);
        let mut buf = BytesMut::with_capacity(COPY_CHUNK * 2);
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| Error::Internal(format!("reading {table}: {e}")))?;
            let formatters = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()?;
            let mut cell = String::new();
            for row in 0..batch.num_rows() {
                for (i, (column, f)) in batch.columns().iter().zip(&formatters).enumerate() {
                    if i > 0 {
                        buf.put_u8(b'\t');
                    }
                    if column.is_null(row) {
                        buf.put_slice(b"\\N");
                    } else {
                        cell.clear();
                        use std::fmt::Write;
                        write!(cell, "{}", f.value(row))
                            .map_err(|e| Error::Internal(format!("formatting: {e}")))?;
                        put_text(&mut buf, &cell);
                    }
                }
                buf.put_u8(b'\n');
                if buf.len() >= COPY_CHUNK {
                    let chunk: Bytes = buf.split().freeze();
                    sink.send(chunk).await.map_err(copy_error(table))?;
                }
            }
        }
        if !buf.is_empty() {
            sink.send(buf.freeze()).await.map_err(copy_error(table))?;
        }
        let rows = sink.finish().await.map_err(copy_error(table))?;
        tracing::info!(table, rows, "loaded into postgres");
    }
    // One statement per call: several in one message form a transaction,
    // and VACUUM refuses to run inside one.
    for statement in [
        "alter table customer add primary key (c_custkey)",
        "alter table supplier add primary key (s_suppkey)",
        "alter table part add primary key (p_partkey)",
        "alter table dwdate add primary key (d_datekey)",
        "vacuum analyze",
    ] {
        client
            .batch_execute(statement)
            .await
            .map_err(|source| Error::Postgres {
                context: statement.into(),
                source,
            })?;
    }
    Ok(started.elapsed())
}

async fn answer(client: &Client, query: &Query) -> Result<Rows> {
    let messages = client
        .simple_query(query.sql)
        .await
        .map_err(|source| Error::Postgres {
            context: query.name.to_string(),
            source,
        })?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// Every query hot: one warm-up run, whose rows are kept, then `runs` timed
/// runs, each a round trip with the rows as text.
pub(crate) async fn measure(
    client: &Client,
    queries: &[Query],
    runs: usize,
) -> Result<Vec<Measured>> {
    let first = async |query: &Query| answer(client, query).await;
    let timed = async |query: &Query| answer(client, query).await.map(drop);
    measure_hot("postgres", queries, runs, first, timed).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_separators() {
        let mut b = BytesMut::new();
        put_text(&mut b, "a\tb\\c\nd");
        assert_eq!(&b[..], b"a\\tb\\\\c\\nd");
    }

    #[test]
    fn tables_map_to_postgres_types() {
        let sql = create_table("dwdate", &super::super::generate::dwdate_schema()).unwrap();
        assert!(
            sql.starts_with("create table dwdate (d_datekey integer not null"),
            "{sql}"
        );
        assert!(sql.contains("d_holidayfl boolean not null"), "{sql}");
    }
}
