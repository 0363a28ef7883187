//! The command line: every subcommand, flag and default, as clap types.
//! Closed sets of values are enums, so clap refuses anything else and lists
//! what it accepts.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "tributary",
    version,
    about = "OLTP to OLAP: sharded Postgres -> CDC -> Kafka -> Delta lake -> star schema -> SQL"
)]
pub struct Cli {
    /// Configuration file (default: ./tributary.toml when present).
    #[arg(long, global = true, env = "TRIBUTARY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Start the local stack (Postgres shards + catalog, Kafka broker); idempotent.
    Up {
        /// Also start Prometheus (scraping every tributary process and a
        /// PostgreSQL exporter per cluster, with the alert rules) and
        /// Alertmanager; `[observe] enabled = true` makes it the default.
        #[arg(long)]
        observe: bool,
        /// Also run this many order-API replicas behind a gateway
        /// (`tributary gateway`); default `[stack] replicas` (0: none).
        #[arg(long)]
        replicas: Option<usize>,
    },
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
    /// The gateway in front of the order API's replicas: load balancing,
    /// retries, API keys, rate limits, canary weights.
    Gateway {
        #[command(subcommand)]
        command: GatewayCommand,
    },
    /// Restart the stack's order-API replicas one at a time behind the
    /// gateway (drain, restart, healthy, next), without failing a request.
    Rollout,
    /// Fail a shard over to its hot standby now: the primary is stopped
    /// cleanly (its standby gets every byte of WAL first) and fenced, the
    /// standby promoted; clients follow by their DSN.
    Failover {
        #[arg(value_enum)]
        kind: FailoverKind,
        /// The shard's number (0 for shard0).
        index: usize,
    },
    /// A fault under a steady order load on a stack of its own (a standby
    /// per shard, the HA supervisor, the pipeline), reported as RPO
    /// (acknowledged orders lost) and RTO (to the first write on the shard,
    /// and to the lake equal to the source). Fails when a goal is missed.
    Drill {
        #[arg(value_enum)]
        scenario: DrillScenario,
        /// The shard the fault hits.
        #[arg(long, default_value_t = 0)]
        shard: usize,
        /// Orders per second.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Load before the fault.
        #[arg(long, default_value = "10s")]
        before: String,
        /// Load after the fault.
        #[arg(long, default_value = "30s")]
        after: String,
        /// sync or async.
        #[arg(long, value_enum, default_value_t = DrillReplication::Sync)]
        replication: DrillReplication,
        #[arg(long, default_value_t = 3000)]
        failover_after_ms: u64,
        /// How long the broker stays dead (broker-kill).
        #[arg(long, default_value = "10s")]
        down: String,
        #[arg(long)]
        json: bool,
        /// Keep the drill's stack afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// A base backup of a cluster's primary (`shard0`, `catalog`): with
    /// the WAL every cluster archives, it restores the cluster to any
    /// later moment (`tributary restore`).
    Backup {
        cluster: String,
        /// List the cluster's backups instead.
        #[arg(long)]
        list: bool,
        /// Then keep only the newest N backups, and remove the archived WAL
        /// older than the oldest one kept (restores reach back to it).
        #[arg(long, value_name = "N")]
        keep: Option<usize>,
        /// With `--keep`: prune without taking a backup first.
        #[arg(long, requires = "keep")]
        prune_only: bool,
    },
    /// Point-in-time restore into a NEW cluster on a free port (the running
    /// one is not touched): the newest backup finished before `--to`, then
    /// the archived WAL replayed up to that moment. With `--lost`, a shard
    /// whose nodes are all gone is rebuilt in place instead (same ports):
    /// the newest backup and the whole archive, then a new standby.
    Restore {
        cluster: String,
        /// The moment, as PostgreSQL reads a timestamp with time zone
        /// (e.g. "2026-12-07 15:04:05.123+00").
        #[arg(long, required_unless_present = "lost", conflicts_with = "lost")]
        to: Option<String>,
        /// The cluster's nodes are lost: rebuild it in place, to the end of
        /// the archive (refused while a node still answers).
        #[arg(long)]
        lost: bool,
    },
    /// High availability of the local stack's shards.
    Ha {
        #[command(subcommand)]
        command: HaCommand,
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
    /// Scheduled jobs: the scheduler, its DAG and its run history.
    Workflows {
        /// The job folder (one `<job>.toml` per job).
        #[arg(
            long,
            global = true,
            env = "TRIBUTARY_WORKFLOWS_JOBS",
            default_value = "workflows/jobs"
        )]
        jobs: PathBuf,
        #[command(subcommand)]
        command: WorkflowsCommand,
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
        #[arg(long, value_enum, ignore_case = true, default_value_t = SqlFormat::Table)]
        format: SqlFormat,
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
    /// The fraud detector: stream rules over orders, payments and the
    /// clickstream; alerts to Kafka, Delta and a webhook.
    Fraud {
        #[command(subcommand)]
        command: FraudCommand,
    },
    /// Live product activity: views, add-to-carts, orders and revenue per
    /// product per 5-minute window, from the streams.
    Activity {
        #[command(subcommand)]
        command: ActivityCommand,
    },
    /// Benchmarks on the local stack.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// How many shards, partitions, readers, ingesters and query replicas a
    /// load needs, and storage per day, from the rates the benchmarks
    /// measured (docs/capacity.md).
    Capacity {
        /// Orders per second on an average day.
        #[arg(long)]
        orders_per_sec: f64,
        /// Days of data the lake holds.
        #[arg(long, default_value_t = 365.0)]
        days: f64,
        /// Peak over average (a promotion day).
        #[arg(long, default_value_t = 10.0)]
        peak_factor: f64,
        /// Share of each part's capacity the peak may use.
        #[arg(long, default_value_t = 0.6)]
        utilization: f64,
        /// Analyst queries per second at the peak.
        #[arg(long, default_value_t = 2.0)]
        queries_per_sec: f64,
        /// Days the change topics keep their events.
        #[arg(long, default_value_t = 7.0)]
        kafka_retention_days: f64,
        /// Rates file (default: the docs/capacity-rates.toml built in).
        #[arg(long)]
        rates: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// One order's way from its source commits through bronze to silver and
    /// gold, with each stage's latency, from what the lake recorded.
    Trace { order_id: i64 },
    /// The web console: SQL with charts, the lake, the pipeline live, the
    /// scheduler's runs and the fraud alerts as they come (`tributary up`
    /// starts one).
    Ui {
        /// Address to listen on (default: [ui] listen, 127.0.0.1:8070).
        #[arg(long)]
        listen: Option<String>,
        /// The scheduler's job folder (default: [stack] jobs).
        #[arg(long, env = "TRIBUTARY_WORKFLOWS_JOBS")]
        jobs: Option<PathBuf>,
    },
    /// A live terminal dashboard: components, per-table freshness, consumer
    /// lag, rates and dead letters, alerts, the scheduler's newest runs.
    Top {
        /// How often to redraw.
        #[arg(long, default_value = "2s")]
        every: String,
        /// Print one frame and exit (for scripts).
        #[arg(long)]
        once: bool,
    },
    /// Exit 0 when URL answers a GET with a 2xx within 3 s, else 1 with the
    /// reason: a health check for images without curl (deploy/Dockerfile).
    Probe { url: String },
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
pub enum SqlCommand {
    /// Serve the lake over the PostgreSQL wire protocol (psql, JDBC, psycopg).
    Serve {
        /// Address to listen on (default: [sql] listen, 127.0.0.1:5433).
        #[arg(long)]
        listen: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum HaCommand {
    /// The supervisor (`tributary up` starts one): probes every shard's
    /// primary, fences one that stopped answering for
    /// `[stack] failover_after_ms` and promotes its standby, and clones a
    /// new standby from the new primary.
    Run,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DrillScenario {
    /// SIGKILL of a shard primary and every process of it.
    ShardKill,
    /// SIGSTOP of a shard primary's postmaster: alive, but not answering.
    ShardFreeze,
    /// SIGKILL of the broker, started again after --down.
    BrokerKill,
    /// The lake folder deleted under a killed ingester, then restored from
    /// the backup taken halfway through --before.
    LakeLost,
    /// Both nodes of a shard killed and lost; the shard rebuilt in place
    /// from the base backup taken halfway through --before and the archive.
    ShardLost,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DrillReplication {
    Sync,
    Async,
}

/// What `tributary failover` fails over.
#[derive(Clone, Copy, ValueEnum)]
pub enum FailoverKind {
    Shard,
}

#[derive(Subcommand)]
pub enum GatewayCommand {
    /// Serve with the `[gateway]` configuration until stopped.
    Run,
    /// The pools and each replica's health, as a running gateway sees them.
    State {
        /// The gateway's admin address (default: the stack's gateway, else
        /// `[gateway] admin`).
        #[arg(long)]
        admin: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Set a pool's traffic weight at runtime (canary, blue/green).
    Weight {
        pool: String,
        weight: u32,
        #[arg(long)]
        admin: Option<String>,
    },
    /// Take a replica out of rotation, letting its requests finish
    /// (`--undo` brings it back).
    Drain {
        /// The replica's address, as in `gateway state`.
        backend: String,
        #[arg(long)]
        undo: bool,
        #[arg(long)]
        admin: Option<String>,
    },
    /// Make a new API key for a client: prints the key once, and the
    /// `[[gateway.api_keys]]` entry (with its SHA-256) for the config.
    Key {
        name: String,
        /// Requests per second (0: no limit).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
    },
}

#[derive(Subcommand)]
pub enum OltpCommand {
    /// Serve the order and catalog HTTP API.
    Serve,
}

#[derive(Subcommand)]
pub enum CdcCommand {
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
pub enum FraudCommand {
    /// Run the detector until stopped (resumes from its last checkpoint).
    Run {
        /// The rules file, reloaded when it changes (default: `[live.fraud]
        /// rules`, else the built-in rules).
        #[arg(long)]
        rules: Option<PathBuf>,
        /// POST every alert here too (default: `[live.fraud] webhook`).
        #[arg(long)]
        webhook: Option<String>,
        /// Serve /metrics and /healthz on this address, e.g. 127.0.0.1:9104.
        #[arg(long)]
        metrics: Option<String>,
    },
    /// Print alerts as they are raised (each alert id once).
    Tail {
        /// Start with every alert in the topic, not only new ones.
        #[arg(long)]
        from_beginning: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Stop after this long (default: until interrupted).
        #[arg(long)]
        duration: Option<String>,
    },
    /// Rules files.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
}

#[derive(Subcommand)]
pub enum ActivityCommand {
    /// Run the job until stopped (resumes from its last checkpoint).
    Run {
        /// Serve /metrics and /healthz on this address, e.g. 127.0.0.1:9105.
        #[arg(long)]
        metrics: Option<String>,
    },
    /// The top products of the last hour of closed windows, by revenue.
    Top {
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
}

#[derive(Subcommand)]
pub enum RulesCommand {
    /// Check a rules file without running a detector; the error names the
    /// rule and the field.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
pub enum BenchCommand {
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
        /// Also run `etl run marts --follow` and measure commit → gold.
        #[arg(long)]
        gold: bool,
        /// Record this run's per-core rates and bytes per change in this
        /// rates file of `tributary capacity` (docs/capacity-rates.toml).
        #[arg(long)]
        rates: Option<PathBuf>,
    },
    /// The fraud detector on a stack of its own under labelled traffic:
    /// precision and recall per rule, equality with a batch oracle (SQL over
    /// bronze), commit-to-alert latency, SIGKILLs, an idle shard, memory
    /// per customer. Fails when the oracle and the detector disagree.
    Fraud {
        /// Requests per second of the load generator (browsing traffic: an
        /// order is about one request in four).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// How long the load runs, e.g. 2m.
        #[arg(long, default_value = "2m")]
        duration: String,
        /// Share of planned orders replaced by a labelled incident.
        #[arg(long, default_value_t = 0.05)]
        fraud_rate: f64,
        /// SIGKILLs of the detector during the load (each restarted at once).
        #[arg(long, default_value_t = 2)]
        kills: usize,
        /// How long shard 1 stays silent after the load (0s: skip).
        #[arg(long, default_value = "60s")]
        idle: String,
        /// Distinct customers fed to an in-process detector for memory per
        /// key (0: skip).
        #[arg(long, default_value_t = 1_000_000)]
        memory_customers: usize,
        /// Seed of the load generator.
        #[arg(long, default_value_t = 42)]
        seed: u64,
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
        /// Leave out plain DataFusion over the same files.
        #[arg(long)]
        skip_datafusion: bool,
        /// Leave out DuckDB.
        #[arg(long)]
        skip_duckdb: bool,
        /// Leave out PostgreSQL (loading it takes about a minute at SF1).
        #[arg(long)]
        skip_postgres: bool,
        /// Record tributary's core-seconds per query in this rates file of
        /// `tributary capacity` (docs/capacity-rates.toml).
        #[arg(long)]
        rates: Option<PathBuf>,
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
    /// The risk-profile job on polars against the same profile in
    /// DataFusion SQL, over the same synthetic silver tables.
    Profile {
        /// Orders (and as many payments).
        #[arg(long, default_value_t = 1_000_000)]
        orders: usize,
        #[arg(long, default_value_t = 100_000)]
        customers: usize,
        /// Files (commits) per table.
        #[arg(long, default_value_t = 16)]
        files: usize,
        /// Timed runs per engine; the report gives medians.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Where the tables are built, fresh (default: <state>/bench/profile).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The workflows scheduler on a stack of its own: schedule delay over a
    /// day of minute schedules compressed by a fake clock (against a
    /// polling scheduler), and takeovers of a SIGKILLed leader under many
    /// short jobs. Fails when a run is doubled or lost.
    Workflows {
        /// Jobs on a minute schedule.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
        /// How much faster than the wall clock the fake clock runs.
        #[arg(long, default_value_t = 720.0)]
        speed: f64,
        /// Hours of schedule.
        #[arg(long, default_value_t = 24.0)]
        hours: f64,
        /// The scheduler's tick.
        #[arg(long, default_value = "1s")]
        tick: String,
        /// Shell jobs every second in the takeover part.
        #[arg(long, default_value_t = 20)]
        short_jobs: usize,
        /// SIGKILLs of the leader (0 skips the takeover part).
        #[arg(long, default_value_t = 3)]
        kills: usize,
        /// Keep the bench's temporary stack afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// The product cache against PostgreSQL alone, on a stack of its own,
    /// under the same Zipf browse load while prices change: latency, hit
    /// ratio, database reads saved, invalidation lag (commit to Redis) and
    /// a stale-read checker. Fails on a stale read or a lag p99 over 500 ms.
    Cache {
        /// Products in the catalog.
        #[arg(long, default_value_t = 10_000)]
        products: usize,
        /// Reads per service.
        #[arg(long, default_value_t = 50_000)]
        requests: usize,
        /// Reads in flight.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Zipf exponent of product popularity.
        #[arg(long, default_value_t = 1.0)]
        zipf: f64,
        /// Price changes per second while the reads run.
        #[arg(long, default_value_t = 20.0)]
        changes_per_s: f64,
        /// Keep the bench's temporary stack afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// The gateway against HAProxy on the same replicas and open-model
    /// load (added latency, CPU per request), and throughput against p99
    /// through the gateway with 1 to N replicas.
    Gateway {
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// Requests per second of the comparison (the goal is set at 2000).
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        /// Each run's length, e.g. 20s.
        #[arg(long, default_value = "20s")]
        duration: String,
        /// Rates of the throughput-against-p99 curve, comma-separated
        /// (empty: no curve).
        #[arg(long, default_value = "1000,2000,3000,4000")]
        curve: String,
        /// Threads of each proxy: the gateway's `gateway.threads` and
        /// HAProxy's `nbthread`, the same for both.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long)]
        json: bool,
        /// Keep the bench's temporary stack afterwards.
        #[arg(long)]
        keep: bool,
    },
}

/// `tributary bench cdc --sink`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchSink {
    Kafka,
    Null,
    Both,
}

/// `tributary sql --format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SqlFormat {
    Table,
    Csv,
    Json,
    Parquet,
}

impl From<SqlFormat> for tributary_query::Format {
    fn from(f: SqlFormat) -> Self {
        match f {
            SqlFormat::Table => tributary_query::Format::Table,
            SqlFormat::Csv => tributary_query::Format::Csv,
            SqlFormat::Json => tributary_query::Format::Json,
            SqlFormat::Parquet => tributary_query::Format::Parquet,
        }
    }
}

/// `--layer` of the lake's maintenance commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LayerArg {
    Bronze,
    Silver,
    Gold,
    All,
}

impl LayerArg {
    /// The lake layers this choice names.
    pub fn layers(self) -> &'static [&'static str] {
        static LAYERS: [&str; 3] = tributary_model::domain::LAYERS;
        match self {
            LayerArg::Bronze => &LAYERS[0..1],
            LayerArg::Silver => &LAYERS[1..2],
            LayerArg::Gold => &LAYERS[2..3],
            LayerArg::All => &LAYERS,
        }
    }
}

/// The model groups `tributary etl run` and `test` build or check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EtlTarget {
    /// The gold star schema.
    Marts,
    /// `gold.customer_risk_profile`, the fraud detector's baseline per
    /// customer (polars over silver).
    RiskProfile,
}

/// The engine of `tributary etl run risk-profile`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProfileEngine {
    /// Lazy polars frames over the Parquet files (the faster here).
    Polars,
    /// DataFusion SQL over the Delta tables.
    Datafusion,
}

#[derive(Subcommand)]
pub enum LakeCommand {
    /// Copy every table (bronze, silver, gold) at its current version into
    /// a folder or URL, with a manifest of the versions (`backup.json`).
    Backup {
        /// A local folder or an object-store URL (s3://...).
        #[arg(long)]
        into: String,
    },
    /// Copy a backup into the configured lake root, which must hold no
    /// table (a new root, or a lost lake's); the ingester then resumes
    /// from the offsets in the restored commits.
    Restore {
        #[arg(long)]
        from: String,
    },
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
        #[arg(long, value_enum, default_value_t = LayerArg::All)]
        layer: LayerArg,
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
        #[arg(long, value_enum, default_value_t = LayerArg::All)]
        layer: LayerArg,
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
        #[arg(long, value_enum, default_value_t = LayerArg::All)]
        layer: LayerArg,
        /// Then delete log entries older than delta.logRetentionDuration (30 days).
        #[arg(long)]
        cleanup_logs: bool,
    },
}

#[derive(Subcommand)]
pub enum DlqCommand {
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
pub enum WorkflowsCommand {
    /// Run a scheduler until stopped: it leads when no other scheduler
    /// holds the lease, else waits to take over.
    Run {
        /// Serve /metrics and /healthz on this address.
        #[arg(long)]
        metrics: Option<String>,
        /// How often the leader looks for due runs, e.g. 1s.
        #[arg(long, default_value = "1s")]
        tick: String,
    },
    /// The jobs, their schedules and the files that were refused.
    List,
    /// The DAG: each job under its upstream jobs.
    Graph {
        /// Graphviz DOT instead of text.
        #[arg(long)]
        dot: bool,
    },
    /// The leader, and the runs waiting, running and recently ended.
    Status,
    /// Queue a run of JOB now (for a date, with --date).
    Trigger {
        job: String,
        /// The logical date, YYYY-MM-DD.
        #[arg(long)]
        date: Option<String>,
    },
    /// Queue a run of JOB for every date from --from to --to (inclusive),
    /// started in date order, and follow them until they end.
    Backfill {
        job: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// How many of its runs may run at once.
        #[arg(long, default_value_t = 1)]
        parallel: u32,
    },
    /// Recent runs as a timeline: waits, attempts, retries and failures at
    /// a glance, in the terminal and optionally as an SVG file.
    Timeline {
        /// Only this job's runs.
        job: Option<String>,
        /// How many recent runs.
        #[arg(long, default_value_t = 30)]
        limit: i64,
        /// Also write the chart as SVG here.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Recent runs (of JOB), newest first, with their attempts.
    History {
        job: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
}

#[derive(Subcommand)]
pub enum EtlCommand {
    /// Build a group of models: only what changed since the last run.
    Run {
        /// `marts`: the gold star schema; `risk-profile`: the customer risk
        /// profiles.
        #[arg(value_enum)]
        target: EtlTarget,
        /// Rebuild every table from all of bronze and silver (marts).
        #[arg(long)]
        full_refresh: bool,
        /// Keep running: build again whenever bronze or silver has new
        /// versions (marts).
        #[arg(long)]
        follow: bool,
        /// How often --follow looks for new versions.
        #[arg(long, default_value = "1s")]
        every: String,
        /// The engine that computes the profiles (risk-profile).
        #[arg(long, value_enum, default_value_t = ProfileEngine::Polars)]
        engine: ProfileEngine,
        /// The end of the profiles' 90-day window, RFC 3339 (risk-profile;
        /// default: now).
        #[arg(long)]
        as_of: Option<String>,
    },
    /// List the models, what they read and their grain.
    List,
    /// Run the data tests over the gold tables as they are.
    Test {
        /// `marts`: the data tests; `risk-profile`: both engines compute
        /// the profiles of the lake as it is and must agree.
        #[arg(value_enum)]
        target: EtlTarget,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tributary").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn closed_sets_take_their_values_and_refuse_others() {
        let Command::Lake {
            command: LakeCommand::Optimize { layer, .. },
        } = parse(&["lake", "optimize"]).unwrap().command
        else {
            panic!("not lake optimize");
        };
        assert_eq!(layer, LayerArg::All);
        assert_eq!(layer.layers(), ["bronze", "silver", "gold"]);
        let Command::Lake {
            command: LakeCommand::Vacuum { layer, .. },
        } = parse(&["lake", "vacuum", "--layer", "silver"])
            .unwrap()
            .command
        else {
            panic!("not lake vacuum");
        };
        assert_eq!(layer.layers(), ["silver"]);
        assert!(parse(&["lake", "checkpoint", "--layer", "platinum"]).is_err());
        assert!(parse(&["etl", "run", "marts"]).is_ok());
        assert!(parse(&["etl", "test", "mart"]).is_err());
        // Formats were case-insensitive strings before they were an enum.
        let Command::Sql { format, .. } = parse(&["sql", "-e", "SELECT 1", "--format", "CSV"])
            .unwrap()
            .command
        else {
            panic!("not sql");
        };
        assert_eq!(format, SqlFormat::Csv);
        assert!(parse(&["sql", "-e", "SELECT 1", "--format", "xml"]).is_err());
        assert!(parse(&["bench", "cdc", "--sink", "null"]).is_ok());
        assert!(parse(&["bench", "cdc", "--sink", "void"]).is_err());
    }
}
