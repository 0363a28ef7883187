//! `tributary sql`: the console, one query with `-e`, or the PostgreSQL
//! wire server (`sql serve`).

use std::path::PathBuf;

use anyhow::Result;
use tributary::shutdown_on_signals;
use tributary_query::{Format, Session};
use tributary_stack::{Config, Platform};

use crate::args::{SqlCommand, SqlFormat};

pub async fn run(
    config: Config,
    command: Option<SqlCommand>,
    execute: Option<String>,
    format: SqlFormat,
    output: Option<PathBuf>,
) -> Result<()> {
    let platform = Platform::load(config)?;
    let config = platform.config();
    let session = Session::with_config(platform.lake()?, &config.sql).await?;
    // The scheduler's run history, as `workflows.runs` and `workflows.attempts`.
    if let Some(dsn) = &platform.lake_config().coordinator_dsn {
        tributary_workflows::sql::register(session.context(), dsn)?;
    }
    match (command, execute) {
        (Some(SqlCommand::Serve { listen }), _) => {
            let server =
                tributary_query::wire::Server::bind(session, &config.sql, listen.as_deref())
                    .await?;
            eprintln!(
                "postgres wire server on {} (user {}, {})",
                server.local_addr()?,
                config.sql.user,
                if server.tls() {
                    "TLS available"
                } else {
                    "no TLS"
                }
            );
            server.run(shutdown_on_signals()).await?;
        }
        (None, Some(q)) => {
            let format = match (&output, format) {
                // `-o x.parquet` alone picks the format from the name.
                (Some(path), SqlFormat::Table) => {
                    Format::from_extension(path).unwrap_or(Format::Csv)
                }
                (_, f) => f.into(),
            };
            tributary_query::run_one_shot_to(&session, &q, format, output.as_deref()).await?;
        }
        (None, None) => {
            std::fs::create_dir_all(&config.state_dir)?;
            let history = config
                .sql
                .history_file
                .clone()
                .unwrap_or_else(|| config.state_dir.join("sql_history"));
            tributary_query::run_console(session, history).await?;
        }
    }
    Ok(())
}
