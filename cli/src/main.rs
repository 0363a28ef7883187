//! `tributary`: one binary for the whole platform.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tributary::config::{self, Config};
use tributary::pipeline::{self, Sources};
use tributary::stack::{self, StackState};

#[derive(Parser)]
#[command(
    name = "tributary",
    version,
    about = "OLTP to OLAP: sharded Postgres -> CDC -> Kafka -> Delta lake -> star schema -> SQL"
)]
struct Cli {
    /// Configuration file (default: ./tributary.toml when present).
    #[arg(long, global = true, env = "TRIBUTARY_CONFIG")]
    config: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the local stack (Postgres shards + catalog, Kafka broker); idempotent.
    Up,
    /// Stop the local stack.
    Down {
        /// Also delete all data (databases, broker log, lake).
        #[arg(long)]
        purge: bool,
    },
    /// Show every component with its address and health.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Order and catalog services.
    Oltp {
        #[command(subcommand)]
        command: OltpCommand,
    },
    /// Drive realistic traffic through the HTTP API.
    Load {
        /// Requests per second.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// How long, e.g. 60s or 2m.
        #[arg(long, default_value = "60s")]
        duration: String,
        /// Base URL of `tributary oltp serve` (default: http://<oltp.listen>).
        #[arg(long)]
        url: Option<String>,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Change data capture.
    Cdc {
        #[command(subcommand)]
        command: CdcCommand,
    },
    /// The Delta lake.
    Lake {
        #[command(subcommand)]
        command: LakeCommand,
    },
    /// Warehouse jobs.
    Etl {
        #[command(subcommand)]
        command: EtlCommand,
    },
    /// SQL over bronze, silver and gold: a console, one query with -e, or
    /// the Postgres wire server (`sql serve`).
    #[command(args_conflicts_with_subcommands = true)]
    Sql {
        #[command(subcommand)]
        command: Option<SqlCommand>,
        /// Run this SQL and exit.
        #[arg(short = 'e', long)]
        execute: Option<String>,
        /// table, csv, json, or parquet (with --output).
        #[arg(long, default_value = "table")]
        format: String,
        /// Write the result of -e to this file instead of stdout.
        #[arg(short = 'o', long, requires = "execute")]
        output: Option<PathBuf>,
    },
    /// Wait until the lake has everything the sources have committed so far.
    Wait {
        #[arg(long, default_value = "120s")]
        timeout: String,
    },
    /// Compare every silver table with its source tables row for row.
    Verify,
    /// Benchmarks on the local stack.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Run the whole platform end to end on the local stack.
    Demo {
        /// How long to drive traffic.
        #[arg(long, default_value = "60s")]
        duration: String,
        /// Requests per second.
        #[arg(long, default_value_t = 40.0)]
        rate: f64,
    },
}

#[derive(Subcommand)]
enum SqlCommand {
    /// Serve the lake over the PostgreSQL wire protocol (psql, JDBC, psycopg).
    Serve {
        /// Address to listen on (default: [sql] listen, 127.0.0.1:5433).
        #[arg(long)]
        listen: Option<String>,
    },
}

#[derive(Subcommand)]
enum OltpCommand {
    /// Serve the order and catalog HTTP API.
    Serve,
}

#[derive(Subcommand)]
enum CdcCommand {
    /// Run one reader per database until stopped.
    Run {
        /// Serve /metrics and /healthz on this address, e.g. 127.0.0.1:9101.
        #[arg(long)]
        metrics: Option<String>,
    },
    /// Copy one table again from every database that publishes it, while
    /// the readers keep streaming (the running readers do the copy).
    Resnapshot {
        /// The source table, e.g. `orders`.
        table: String,
        /// Return at once instead of waiting until every copy is done.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the copies.
        #[arg(long, default_value = "10m")]
        timeout: String,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The CDC reader against pg_recvlogical (streaming) and COPY (snapshot)
    /// on the same database and write load.
    Cdc {
        /// Rows inserted per run; the first half are then updated.
        #[arg(long, default_value_t = 500_000)]
        rows: u64,
        /// Runs; the report gives medians.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Where pg_recvlogical writes (default /dev/null); a file's
        /// changes are counted.
        #[arg(long)]
        recvlogical_output: Option<PathBuf>,
        /// Skip measuring the broker's own produce rate.
        #[arg(long)]
        no_broker_ceiling: bool,
        /// Where the measured readers publish: the broker (`kafka`), a
        /// discard sink that measures the reader alone (`null`), or both.
        #[arg(long, value_enum, default_value_t = BenchSink::Both)]
        sink: BenchSink,
    },
    /// The whole pipeline under a sustained write load on a stack of its own:
    /// freshness (commit to silver) percentiles, CDC vs ingest throughput,
    /// backlog over time, files per table, the ingester's peak memory.
    Lake {
        /// Row changes per second across all order shards.
        #[arg(long, default_value_t = 5000.0)]
        rate: f64,
        /// How long the load runs, e.g. 3m.
        #[arg(long, default_value = "3m")]
        duration: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Keep the bench's temporary stack and lake afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// The Star Schema Benchmark's 13 queries, hot, on tributary, DuckDB
    /// (over the same Parquet files) and PostgreSQL; answers are compared.
    Query {
        /// TPC-H scale factor (lineorder has about 6M rows per unit).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Timed runs per query and engine, after one warm-up run.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Where the generated Delta tables are kept (default: <state>/bench/ssb).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Leave out DuckDB.
        #[arg(long)]
        skip_duckdb: bool,
        /// Leave out PostgreSQL (loading it takes about a minute at SF1).
        #[arg(long)]
        skip_postgres: bool,
    },
    /// A silver-like table after many small commits (a day at one a minute;
    /// appends and MERGEs): files and query times before and after
    /// optimize + checkpoint.
    Optimize {
        /// Commits that build the table (odd: appends, even: MERGEs).
        #[arg(long, default_value_t = 1440)]
        commits: usize,
        /// New orders per commit.
        #[arg(long, default_value_t = 40)]
        inserts: usize,
        /// Recent orders updated per commit.
        #[arg(long, default_value_t = 20)]
        updates: usize,
        /// Timed runs per query; the report gives medians.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Compaction's target file size in bytes.
        #[arg(long, default_value_t = 128 << 20)]
        target_size: u64,
        /// Where the table is built, fresh (default: <state>/bench/optimize).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// `tributary bench cdc --sink`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum BenchSink {
    Kafka,
    Null,
    Both,
}

#[derive(Subcommand)]
enum LakeCommand {
    /// Consume the CDC topics into bronze and silver until stopped.
    Ingest {
        /// Serve /metrics and /healthz on this address, e.g. 127.0.0.1:9102.
        #[arg(long)]
        metrics: Option<String>,
    },
    /// Check whether the lake's store refuses a second create of a key
    /// (what keeps several Delta writers apart without a coordinator), and
    /// its read-after-write and list-after-write consistency. Writes and
    /// then deletes scratch keys under `<root>/_tributary_check/`.
    CheckStore {
        /// Concurrent creators racing for one key.
        #[arg(long, default_value_t = 20)]
        creators: usize,
        /// Races, each for a fresh key (one race can end with a single
        /// winner by luck).
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fix a table whose ingest stopped on a source type change silver
    /// cannot hold: rewrite `silver.<table>` with the column cast to the new
    /// type (values that do not convert become NULL; bronze keeps them as
    /// sent) or without it. Then restart the ingester: it resumes at the
    /// event that stopped the table.
    Retype {
        table: String,
        column: String,
        /// The Arrow type the stop message names, e.g. `Int64`, `Utf8`,
        /// `Decimal128(20, 2)`.
        #[arg(long, conflicts_with = "drop", required_unless_present = "drop")]
        to: Option<String>,
        /// Drop the column from silver instead.
        #[arg(long)]
        drop: bool,
    },
    /// Messages ingest could not apply (`bronze._dead_letters`): list them,
    /// replay them after a fix.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Compact small files into few of a target size, optionally Z-ordered.
    /// Safe beside a running ingester: a commit that loses a race with
    /// ingest is redone, and one compaction per table runs at a time.
    Optimize {
        /// One table (e.g. `orders`); every table of the layer(s) when absent.
        table: Option<String>,
        /// bronze, silver, gold or all.
        #[arg(long, default_value = "all")]
        layer: String,
        /// Target file size in bytes (default: [ingest.maintenance] target_file_size).
        #[arg(long)]
        target_size: Option<u64>,
        /// Z-order by these columns, e.g. `customer_id,created_at`.
        #[arg(long, value_delimiter = ',')]
        zorder: Vec<String>,
    },
    /// Delete files no longer in a table once they are older than the retention.
    Vacuum {
        /// One table; every table of the layer(s) when absent.
        table: Option<String>,
        /// bronze, silver, gold or all.
        #[arg(long, default_value = "all")]
        layer: String,
        /// Keep removed files this long (default: [ingest.maintenance] vacuum_retention_hours, 168).
        #[arg(long)]
        retention_hours: Option<u64>,
        /// List the files that would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Allow a retention below the table's minimum (delta.deletedFileRetentionDuration).
        #[arg(long)]
        force: bool,
        /// Also delete files the log never mentioned (failed writes); lists the whole table.
        #[arg(long)]
        full: bool,
    },
    /// Write a checkpoint at the latest version, so readers skip replaying the log.
    Checkpoint {
        /// One table; every table of the layer(s) when absent.
        table: Option<String>,
        /// bronze, silver, gold or all.
        #[arg(long, default_value = "all")]
        layer: String,
        /// Then delete log entries older than delta.logRetentionDuration (30 days).
        #[arg(long)]
        cleanup_logs: bool,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Show dead letters: topic, partition, offset, error, time, payload
    /// size and whether they have been replayed.
    List {
        /// Only dead letters of this source table's topic.
        #[arg(long)]
        table: Option<String>,
        /// Only the newest N.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Decode dead letters again with the current decoder and apply those
    /// that now fit to bronze and silver, once. Run it while `lake ingest`
    /// is stopped.
    Replay {
        /// Only dead letters of this source table's topic.
        #[arg(long)]
        table: Option<String>,
        /// Only the dead letter at PARTITION:OFFSET (requires --table).
        #[arg(
            long,
            value_name = "PARTITION:OFFSET",
            requires = "table",
            conflicts_with = "all"
        )]
        offset: Option<String>,
        /// Every pending dead letter (of --table, when given).
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum EtlCommand {
    /// Build a group of models: only what changed since the last run.
    Run {
        /// `marts`: the gold star schema.
        target: String,
        /// Rebuild every table from all of bronze and silver.
        #[arg(long)]
        full_refresh: bool,
    },
    /// List the models, what they read and their grain.
    List,
    /// Run the data tests over the gold tables as they are.
    Test {
        /// `marts`.
        target: String,
    },
}

fn init_tracing(json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("TRIBUTARY_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(
                "warn,tributary=info,tributary_cdc=info,tributary_lake=info,tributary_oltp=info,tributary_etl=info,tributary_query=info,tributary_bench=info,deltalake_core=error",
            )
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn sources(config: &Config) -> Result<(Sources, Option<StackState>)> {
    let stack = StackState::load(&config.state_dir)?;
    Ok((Sources::resolve(config, stack.as_ref())?, stack))
}

fn kafka(config: &Config, stack: Option<&StackState>) -> Result<tributary_kafka::KafkaConfig> {
    match (&config.kafka, stack) {
        (Some(k), _) => Ok(k.clone()),
        (None, Some(s)) => Ok(stack::kafka_config(config, s)),
        (None, None) => {
            anyhow::bail!("no [kafka] configured and no local stack: run `tributary up`")
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let config = config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Up => {
            let s = stack::up(&config).await?;
            println!(
                "stack is up ({} shards + catalog, broker at {})",
                s.shards.len(),
                s.broker.address()
            );
            print_status(&config, false).await?;
        }
        Command::Down { purge } => {
            stack::down(&config, purge)?;
            println!(
                "stack is down{}",
                if purge { " and its data deleted" } else { "" }
            );
        }
        Command::Status { json } => print_status(&config, json).await?,
        Command::Oltp {
            command: OltpCommand::Serve,
        } => {
            let (sources, _) = sources(&config)?;
            let shutdown = tributary::shutdown_on_signals();
            let server =
                tributary_oltp::Server::bind(config.oltp.clone(), sources.topology()).await?;
            eprintln!("order and catalog API on http://{}", server.local_addr());
            server.run(shutdown).await?;
        }
        Command::Load {
            rate,
            duration,
            url,
            concurrency,
            seed,
        } => {
            let base_url = url.unwrap_or_else(|| format!("http://{}", config.oltp.listen));
            let shutdown = tributary::shutdown_on_signals();
            let report = tributary_oltp::run_load(
                tributary_oltp::LoadConfig {
                    base_url,
                    rate,
                    duration: tributary::parse_duration(&duration)?,
                    concurrency,
                    seed,
                },
                shutdown,
            )
            .await?;
            println!("{report}");
        }
        Command::Cdc {
            command: CdcCommand::Run { metrics },
        } => {
            let (sources, stack) = sources(&config)?;
            let kafka = kafka(&config, stack.as_ref())?;
            let shutdown = tributary::shutdown_on_signals();
            if let Some(listen) = metrics {
                let addr =
                    tributary::serve_metrics(&listen, tributary_metrics::render, shutdown.clone())
                        .await?;
                eprintln!("metrics on http://{addr}/metrics");
            }
            tributary_cdc::run(config.cdc.clone(), kafka, sources.cdc_sources(), shutdown).await?;
        }
        Command::Cdc {
            command:
                CdcCommand::Resnapshot {
                    table,
                    no_wait,
                    timeout,
                },
        } => {
            let (sources, _) = sources(&config)?;
            let wait = (!no_wait)
                .then(|| tributary::parse_duration(&timeout))
                .transpose()?;
            match tributary_cdc::request_resnapshot(&sources.cdc_sources(), &table, wait).await? {
                Some(rows) => println!("resnapshot of {table} done: {rows} rows copied"),
                None => println!(
                    "resnapshot of {table} requested; the running readers copy it at their next heartbeat"
                ),
            }
        }
        Command::Lake {
            command: LakeCommand::Ingest { metrics },
        } => {
            let stack = StackState::load(&config.state_dir)?;
            let kafka = kafka(&config, stack.as_ref())?;
            let lake = tributary_lake::Lake::new(&pipeline::lake_config(&config))?;
            let shutdown = tributary::shutdown_on_signals();
            if let Some(listen) = metrics {
                let addr =
                    tributary::serve_metrics(&listen, tributary_metrics::render, shutdown.clone())
                        .await?;
                eprintln!("metrics on http://{addr}/metrics");
            }
            tributary_lake::ingest::serve(lake, kafka, config.ingest.clone(), shutdown).await?;
        }
        Command::Lake {
            command:
                LakeCommand::CheckStore {
                    creators,
                    rounds,
                    json,
                },
        } => {
            // The check writes plain objects, no Delta commit: it runs on
            // any store, coordinator or not (deciding that is its purpose).
            let mut lake_config = pipeline::lake_config(&config);
            if let Some(s3) = lake_config.s3.as_mut() {
                s3.trust_put_if_absent = true;
            }
            let lake = tributary_lake::Lake::new(&lake_config)?;
            let options = tributary_lake::check::CheckOptions { creators, rounds };
            let report = tributary_lake::check::check_store(&lake, &options).await?;
            if json {
                let mut v = serde_json::to_value(&report).context("report as JSON")?;
                v["verdict"] = report.verdict().into();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).context("report as JSON")?
                );
            } else {
                print!("{report}");
            }
        }
        Command::Lake {
            command:
                LakeCommand::Retype {
                    table,
                    column,
                    to,
                    drop: _,
                },
        } => {
            let to = to
                .map(|t| {
                    t.parse::<arrow::datatypes::DataType>()
                        .with_context(|| format!("--to {t:?} is not an Arrow type"))
                })
                .transpose()?;
            let lake = tributary_lake::Lake::new(&pipeline::lake_config(&config))?;
            tributary_lake::ingest::retype_silver_column(&lake, &table, &column, to.clone())
                .await
                .with_context(|| format!("rewriting silver.{table}"))?;
            match to {
                Some(t) => {
                    println!("silver.{table}.{column} is now {t}; restart `tributary lake ingest`")
                }
                None => println!(
                    "silver.{table} no longer has {column}; restart `tributary lake ingest`"
                ),
            }
        }
        Command::Lake {
            command: LakeCommand::Dlq { command },
        } => {
            let lake = tributary_lake::Lake::new(&pipeline::lake_config(&config))?;
            dead_letters(&lake, command).await?;
        }
        Command::Lake {
            command:
                LakeCommand::Optimize {
                    table,
                    layer,
                    target_size,
                    zorder,
                },
        } => {
            let lake = tributary_lake::Lake::new(&pipeline::lake_config(&config))?;
            let m = &config.ingest.maintenance;
            let options = tributary_lake::maintenance::OptimizeOptions {
                target_size: target_size.unwrap_or(m.target_file_size),
                zorder,
                max_attempts: m.max_attempts,
                ..Default::default()
            };
            for (layer, table) in lake_targets(&lake, &layer, table.as_deref()).await? {
                let r = tributary_lake::maintenance::optimize(&lake, &layer, &table, &options)
                    .await
                    .with_context(|| format!("optimizing {layer}.{table}"))?;
                println!("{r}");
            }
        }
        Command::Lake {
            command:
                LakeCommand::Vacuum {
                    table,
                    layer,
                    retention_hours,
                    dry_run,
                    force,
                    full,
                },
        } => {
            let lake = tributary_lake::Lake::new(&pipeline::lake_config(&config))?;
            let m = &config.ingest.maintenance;
            let options = tributary_lake::maintenance::VacuumOptions {
                retention_hours: retention_hours.unwrap_or(m.vacuum_retention_hours),
                dry_run,
                force,
                full,
                max_attempts: m.max_attempts,
            };
            for (layer, table) in lake_targets(&lake, &layer, table.as_deref()).await? {
                let r = tributary_lake::maintenance::vacuum(&lake, &layer, &table, &options)
                    .await
                    .with_context(|| format!("vacuuming {layer}.{table}"))?;
                println!("{r}");
                if dry_run {
                    for f in &r.files {
                        println!("    {f}");
                    }
                }
            }
        }
        Command::Lake {
            command:
                LakeCommand::Checkpoint {
                    table,
                    layer,
                    cleanup_logs,
                },
        } => {
            let lake = tributary_lake::Lake::new(&pipeline::lake_config(&config))?;
            for (layer, table) in lake_targets(&lake, &layer, table.as_deref()).await? {
                let r =
                    tributary_lake::maintenance::checkpoint(&lake, &layer, &table, cleanup_logs)
                        .await
                        .with_context(|| format!("checkpointing {layer}.{table}"))?;
                println!("{r}");
            }
        }
        Command::Etl {
            command:
                EtlCommand::Run {
                    target,
                    full_refresh,
                },
        } => {
            anyhow::ensure!(
                target == "marts",
                "unknown ETL target {target:?}: the only one is `marts`"
            );
            let lake = tributary_lake::Lake::new(&pipeline::lake_config(&config))?;
            let options = tributary_etl::BuildOptions {
                full_refresh,
                ..Default::default()
            };
            let report = tributary_etl::build_marts_with(&lake, &options).await?;
            println!("{report}");
        }
        Command::Etl {
            command: EtlCommand::List,
        } => {
            for m in tributary_etl::models() {
                println!(
                    "{:<24} {:<5} <- {}\n{:<30} {}",
                    m.name,
                    m.kind.as_str(),
                    m.depends_on.join(", "),
                    "",
                    m.grain
                );
            }
        }
        Command::Etl {
            command: EtlCommand::Test { target },
        } => {
            anyhow::ensure!(
                target == "marts",
                "unknown ETL target {target:?}: the only one is `marts`"
            );
            let lake = tributary_lake::Lake::new(&pipeline::lake_config(&config))?;
            let report = tributary_etl::test_marts(&lake).await?;
            println!("{report}");
            anyhow::ensure!(report.ok(), "data tests failed");
        }
        Command::Sql {
            command,
            execute,
            format,
            output,
        } => {
            let lake = tributary_lake::Lake::new(&pipeline::lake_config(&config))?;
            let session = tributary_query::Session::with_config(lake, &config.sql).await?;
            match (command, execute) {
                (Some(SqlCommand::Serve { listen }), _) => {
                    let server = tributary_query::wire::Server::bind(
                        session,
                        &config.sql,
                        listen.as_deref(),
                    )
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
                    server.run(tributary::shutdown_on_signals()).await?;
                }
                (None, Some(q)) => {
                    let format = match (&output, format.as_str()) {
                        // `-o x.parquet` alone picks the format from the name.
                        (Some(path), "table") => tributary_query::Format::from_extension(path)
                            .unwrap_or(tributary_query::Format::Csv),
                        (_, name) => name.parse()?,
                    };
                    tributary_query::run_one_shot_to(&session, &q, format, output.as_deref())
                        .await?;
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
        }
        Command::Wait { timeout } => {
            let (sources, stack) = sources(&config)?;
            let kafka = kafka(&config, stack.as_ref())?;
            pipeline::wait_caught_up(
                &config,
                &sources,
                &kafka,
                tributary::parse_duration(&timeout)?,
            )
            .await?;
            println!("caught up");
        }
        Command::Verify => {
            let (sources, _) = sources(&config)?;
            let lake = tributary_lake::Lake::new(&pipeline::lake_config(&config))?;
            let session = tributary_query::Session::new(lake).await?;
            let checks = pipeline::compare_silver(&sources, &session).await?;
            let mut ok = true;
            for c in &checks {
                println!(
                    "{:<14} source {:>7}  silver {:>7}  {}",
                    c.table,
                    c.source_rows,
                    c.silver_rows,
                    if c.equal() { "equal" } else { "DIFFERENT" }
                );
                for m in &c.missing {
                    println!("    missing from silver: {m}");
                }
                for x in &c.extra {
                    println!("    extra in silver:     {x}");
                }
                ok &= c.equal();
            }
            anyhow::ensure!(ok, "silver differs from the source");
        }
        Command::Bench {
            command:
                BenchCommand::Cdc {
                    rows,
                    runs,
                    json,
                    recvlogical_output,
                    no_broker_ceiling,
                    sink,
                },
        } => {
            let options = tributary::bench_cdc::BenchOptions {
                rows,
                runs,
                recvlogical_output,
                broker_ceiling: !no_broker_ceiling,
                sinks: tributary::bench_cdc::Sinks {
                    kafka: !matches!(sink, BenchSink::Null),
                    discard: !matches!(sink, BenchSink::Kafka),
                },
            };
            let report = tributary::bench_cdc::run(&config, &options).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).context("report as JSON")?
                );
            } else {
                print!("{report}");
            }
        }
        Command::Bench {
            command:
                BenchCommand::Lake {
                    rate,
                    duration,
                    json,
                    keep,
                },
        } => {
            let options = tributary::bench_lake::BenchOptions {
                rate,
                duration: tributary::parse_duration(&duration)?,
                keep,
            };
            let report = tributary::bench_lake::run(&config, &options).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).context("report as JSON")?
                );
            } else {
                print!("{report}");
            }
        }
        Command::Bench {
            command:
                BenchCommand::Query {
                    scale,
                    runs,
                    dir,
                    skip_duckdb,
                    skip_postgres,
                },
        } => {
            let dir = dir.unwrap_or_else(|| config.state_dir.join("bench").join("ssb"));
            let options = tributary_bench::ssb::Options {
                scale,
                runs,
                duckdb: !skip_duckdb,
                postgres: !skip_postgres,
                ..tributary_bench::ssb::Options::new(dir)
            };
            let report = tributary_bench::ssb::run(&options).await?;
            print!("{report}");
            anyhow::ensure!(report.answers_agree(), "the engines gave different answers");
        }
        Command::Bench {
            command:
                BenchCommand::Optimize {
                    commits,
                    inserts,
                    updates,
                    runs,
                    target_size,
                    dir,
                },
        } => {
            let dir = dir.unwrap_or_else(|| config.state_dir.join("bench").join("optimize"));
            let options = tributary_bench::compaction::Options {
                commits,
                inserts,
                updates,
                runs,
                target_size,
                ..tributary_bench::compaction::Options::new(dir)
            };
            let report = tributary_bench::compaction::run(&options).await?;
            print!("{report}");
        }
        Command::Demo { duration, rate } => {
            tributary::demo::run(&config, tributary::parse_duration(&duration)?, rate).await?;
        }
    }
    Ok(())
}

async fn dead_letters(lake: &tributary_lake::Lake, command: DlqCommand) -> Result<()> {
    use tributary_lake::dlq::{self, Selection};
    let known = |table: &Option<String>| -> Result<()> {
        if let Some(t) = table {
            anyhow::ensure!(
                tributary_model::domain::TABLES.iter().any(|s| s.name == t),
                "unknown table {t:?}"
            );
        }
        Ok(())
    };
    match command {
        DlqCommand::List { table, limit, json } => {
            known(&table)?;
            let selection = Selection {
                table,
                position: None,
            };
            let letters = dlq::list(lake, &selection, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
                return Ok(());
            }
            if letters.is_empty() {
                println!("no dead letters");
            }
            for d in &letters {
                println!(
                    "{} {}:{} {:<8} {} {:>7} bytes  {}",
                    d.topic,
                    d.partition,
                    d.offset,
                    d.status,
                    d.failed_at,
                    d.payload_bytes.unwrap_or(0),
                    d.error
                );
            }
        }
        DlqCommand::Replay {
            table,
            offset,
            all,
            json,
        } => {
            known(&table)?;
            anyhow::ensure!(
                all || offset.is_some(),
                "say which dead letters to replay: --all, or --table T --offset PARTITION:OFFSET"
            );
            let position = offset
                .map(|o| -> Result<(i32, i64)> {
                    let (p, o) = o
                        .split_once(':')
                        .context("--offset takes PARTITION:OFFSET, e.g. 0:42")?;
                    Ok((p.trim().parse()?, o.trim().parse()?))
                })
                .transpose()?;
            let report = dlq::replay(lake, &Selection { table, position }).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            for o in &report.outcomes {
                match (o.result, &o.error) {
                    ("failed", Some(e)) => {
                        println!("{} {}:{} still fails: {e}", o.topic, o.partition, o.offset)
                    }
                    _ => println!(
                        "{} {}:{} replayed as {} (silver: {})",
                        o.topic,
                        o.partition,
                        o.offset,
                        o.event_id.as_deref().unwrap_or("?"),
                        o.silver.unwrap_or("?")
                    ),
                }
            }
            println!(
                "{} replayed ({} new in bronze), {} still failing, {} replayed before",
                report.replayed(),
                report.bronze_rows,
                report.failed(),
                report.already_replayed
            );
        }
    }
    Ok(())
}

/// The (layer, table) pairs a maintenance command works on: one table in
/// the chosen layer(s), or every table of them.
async fn lake_targets(
    lake: &tributary_lake::Lake,
    layer: &str,
    table: Option<&str>,
) -> Result<Vec<(String, String)>> {
    const LAYERS: [&str; 3] = ["bronze", "silver", "gold"];
    let layers: Vec<&str> = match layer {
        "all" => LAYERS.to_vec(),
        l if LAYERS.contains(&l) => vec![l],
        other => anyhow::bail!("unknown layer {other:?}: use bronze, silver, gold or all"),
    };
    let mut out = Vec::new();
    for l in &layers {
        let tables = lake.list_tables(l).await?;
        match table {
            Some(t) if tables.iter().any(|x| x == t) => out.push((l.to_string(), t.to_string())),
            Some(_) => {}
            None => out.extend(tables.into_iter().map(|t| (l.to_string(), t))),
        }
    }
    if let (Some(t), true) = (table, out.is_empty()) {
        anyhow::bail!(
            "no table {t:?} in {} of the lake at {}",
            layers.join(", "),
            lake.root()
        );
    }
    Ok(out)
}

async fn print_status(config: &Config, json: bool) -> Result<()> {
    let status = stack::status(config).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).context("status as JSON")?
        );
    } else {
        for s in &status {
            println!(
                "{:<22} {:<7} {:<60} {}",
                s.component,
                if s.healthy { "healthy" } else { "DOWN" },
                s.address,
                s.detail
            );
        }
    }
    Ok(())
}
