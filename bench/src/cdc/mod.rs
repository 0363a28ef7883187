//! `tributary bench cdc`: the CDC reader against PostgreSQL's own tools, on
//! the same database and the same write load.
//!
//! Streaming: `pg_recvlogical` (pgoutput, to /dev/null) and the reader (into
//! the broker) each drain the same backlog from a slot of their own created
//! before the load. The reader is done when its slot's `confirmed_flush_lsn`
//! reaches the WAL position after the load, which it only confirms once the
//! broker acknowledged every event before it.
//!
//! Snapshot: the reader's initial copy of the loaded table from a fresh slot
//! (until `tributary_cdc::slot_status` reports it complete) against `COPY …
//! TO STDOUT` of the same table.
//!
//! Every run checks its counts and fails on a wrong one
//! ([`RunResult::check_counts`]): the broker holds exactly one event per
//! change streamed and per row snapshotted, the discarding reader wrote as
//! many, COPY and pg_recvlogical's decoded output (when written to a file)
//! saw as many.
//!
//! Each reader runs twice per run (`--sink both`, the default): into the
//! broker, and into a discard sink that drops every event as soon as it is
//! written (`tributary_cdc::run_with::<DiscardSink>`, never the product's
//! path). The second is the reader's own ceiling: replication, decoding and
//! JSON with no Kafka. The broker alone is measured with the reader's producer
//! settings, with the stack's storage and with none (tansu's `null`
//! engine), so the report shows which stage bounds the rate.
//!
//! The reader runs in this process, so its peak memory is this process's
//! `VmHWM`, reset (`/proc/self/clear_refs`) before each reader run; CPU
//! seconds of this process, of the broker and of the reader's walsender
//! come from `/proc/<pid>/stat` ([`crate::process`]).
//!
//! Postgres work happens on the local stack in a scratch database
//! (`tributary_bench` on shard 0's cluster, dropped afterwards). The broker
//! is a tansu of the bench's own with the stack's storage engine (sqlite)
//! in a temporary folder, removed afterwards: the stack's broker is never
//! written to, and topics never need deleting (tansu 0.6's DeleteTopics
//! deletes every topic of the cluster, not just the one named).
//!
//! Modules: `postgres` (the load, pg_recvlogical, COPY, slots), `reader`
//! (the reader under test), `broker` (the bench's broker, the broker
//! alone), `report`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tributary_cdc::SourceDb;
use tributary_kafka::KafkaConfig;
use tributary_model::domain::topic_name;
use tributary_stack::broker::STACK_STORAGE;
use tributary_stack::postgres::{PgTools, connect};
use tributary_stack::{Config, Platform};

use crate::{Error, Result, io, pg as pg_err, process};

mod broker;
mod postgres;
mod reader;
mod report;

use broker::{BenchBroker, NULL_STORAGE, topic_events};
pub use postgres::{PgOutputCounts, count_pgoutput_changes};
use postgres::{drop_scratch, drop_slots, time_copy};
use reader::wait_snapshot;
use report::secs;
pub use report::{BrokerCeiling, Cpu, Report, RunResult, Summary};

/// The scratch database on shard 0's cluster.
const DATABASE: &str = "tributary_bench";
/// The logical database name in slot and topic names.
const SOURCE_DB: &str = "bench";
const TABLE: &str = "bench_orders";
const PUBLICATION: &str = "tributary_bench_pub";
/// Every slot of the bench starts with this.
const SLOT_PREFIX: &str = "tributary_bench";
/// Every topic of the bench starts with this.
const TOPIC_PREFIX: &str = "bench";
/// Rows per write transaction of the load.
const LOAD_TX_ROWS: u64 = 50_000;
/// How often the reader's slot position is polled.
const POLL: Duration = Duration::from_millis(20);

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    /// Rows inserted per run; the first half of them are then updated, so a
    /// run streams `rows * 3 / 2` changes.
    pub rows: u64,
    pub runs: usize,
    /// Where `pg_recvlogical` writes; `None` is /dev/null. Output in a file
    /// is decoded and its row changes counted (slower: for tests).
    pub recvlogical_output: Option<PathBuf>,
    /// Also measure the broker's own produce rate with the reader's producer
    /// settings and event size, without PostgreSQL or decoding.
    pub broker_ceiling: bool,
    /// Where the measured readers publish.
    pub sinks: Sinks,
}

impl Default for Options {
    /// 500,000 rows, 3 runs, pg_recvlogical to /dev/null, the broker
    /// ceiling, both sinks.
    fn default() -> Self {
        Options {
            rows: 500_000,
            runs: 3,
            recvlogical_output: None,
            broker_ceiling: true,
            sinks: Sinks {
                kafka: true,
                discard: true,
            },
        }
    }
}

/// Which readers a run measures: into the broker (the product), and into a
/// discard sink (the reader's own ceiling: replication, decoding and JSON,
/// no Kafka).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sinks {
    pub kafka: bool,
    pub discard: bool,
}

/// Where a measured reader's events go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sink {
    Kafka,
    Discard,
}

/// One contender of a streaming or snapshot measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    /// pg_recvlogical (streaming) or COPY (snapshot).
    Postgres,
    Reader(Sink),
}

/// Runs the benchmark on the local stack (started when it is not running)
/// and removes its database, slots and topics afterwards.
pub async fn run(config: &Config, options: &Options) -> Result<Report> {
    if options.rows < 2 {
        return Err(Error::Options("--rows must be at least 2".into()));
    }
    if options.runs < 1 {
        return Err(Error::Options("--runs must be at least 1".into()));
    }
    if !(options.sinks.kafka || options.sinks.discard) {
        return Err(Error::Options("no reader to measure".into()));
    }
    let platform = Platform::start(config.clone()).await?;
    let state = platform
        .stack()
        .ok_or_else(|| Error::Internal("a started platform has a stack".into()))?;
    let pg = state.shards.first().unwrap_or(&state.catalog);
    let admin_dsn = pg.dsn();
    let broker = BenchBroker::start(config, STACK_STORAGE).await?;
    let bench = Bench {
        dsn: pg.dsn_of(DATABASE),
        kafka: KafkaConfig {
            topic_prefix: TOPIC_PREFIX.into(),
            partitions: platform.kafka()?.partitions,
            ..KafkaConfig::local(&broker.address())
        },
        broker_pid: broker.pid(),
        tools: PgTools::find(config.stack.pg_bin.as_deref())?,
        config,
        options,
    };
    let admin = connect(&admin_dsn).await?;
    drop_scratch(&admin).await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
        .await
        .map_err(pg_err("creating the bench database"))?;
    let result = bench.run_all().await;
    let cleanup = drop_scratch(&admin).await;
    drop(broker);
    let report = result?;
    cleanup?;
    Ok(report)
}

struct Bench<'a> {
    /// The scratch database.
    dsn: String,
    kafka: KafkaConfig,
    broker_pid: u32,
    tools: PgTools,
    config: &'a Config,
    options: &'a Options,
}

impl Bench<'_> {
    fn changes(&self) -> u64 {
        self.options.rows + self.options.rows / 2
    }

    fn source(&self) -> SourceDb {
        SourceDb {
            db: SOURCE_DB.into(),
            shard: 0,
            dsn: self.dsn.clone(),
            tables: vec![TABLE.into()],
        }
    }

    async fn run_all(&self) -> Result<Report> {
        let client = connect(&self.dsn).await?;
        client
            .batch_execute(&format!(
                "CREATE TABLE {TABLE} (
                     id bigint PRIMARY KEY,
                     customer_id bigint NOT NULL,
                     status text NOT NULL,
                     currency text NOT NULL,
                     quantity integer NOT NULL,
                     total numeric(12,2) NOT NULL,
                     discount numeric(5,2),
                     created_at timestamptz NOT NULL,
                     updated_at timestamptz NOT NULL);
                 CREATE PUBLICATION {PUBLICATION} FOR TABLE {TABLE};"
            ))
            .await
            .map_err(pg_err("creating the bench table"))?;
        let recvlogical = self.tools.program("pg_recvlogical")?;
        let baseline_rss_kib = process::own_status_kib("VmRSS");
        let mut runs = Vec::new();
        for run in 0..self.options.runs {
            eprintln!("run {}/{}", run + 1, self.options.runs);
            let r = self.run_once(&client, &recvlogical, run).await?;
            eprintln!(
                "  streaming {} changes: pg_recvlogical {:.2}s, reader {:.2}s, reader (discard) {}; snapshot {} rows: COPY {:.2}s, reader {:.2}s, reader (discard) {}",
                self.changes(),
                r.recvlogical_secs,
                r.reader_secs,
                secs(r.discard_secs),
                self.options.rows,
                r.copy_secs,
                r.snapshot_secs,
                secs(r.discard_snapshot_secs),
            );
            runs.push(r);
        }
        let (broker, broker_null) = if self.options.broker_ceiling {
            eprintln!("broker produce rate ({STACK_STORAGE})");
            let stack = self
                .broker_ceiling(&self.kafka.brokers, self.broker_pid, STACK_STORAGE)
                .await?;
            eprintln!("broker produce rate ({NULL_STORAGE})");
            let null = BenchBroker::start(self.config, NULL_STORAGE).await?;
            let no_storage = self
                .broker_ceiling(&null.address(), null.pid(), NULL_STORAGE)
                .await?;
            (Some(stack), Some(no_storage))
        } else {
            (None, None)
        };
        let summary = report::summarize(
            self.options.rows,
            self.changes(),
            &runs,
            broker.as_ref(),
            broker_null.as_ref(),
        );
        Ok(Report {
            rows: self.options.rows,
            changes: self.changes(),
            baseline_rss_kib,
            runs,
            broker,
            broker_null,
            summary,
        })
    }

    /// One run: fresh slots, a backlog, the streaming contenders, then the
    /// snapshot contenders on the loaded table. The order rotates from run
    /// to run, so no contender always gets the warmer caches.
    async fn run_once(
        &self,
        client: &tokio_postgres::Client,
        recvlogical: &Path,
        run: usize,
    ) -> Result<RunResult> {
        drop_slots(client).await?;
        client
            .batch_execute(&format!("TRUNCATE {TABLE}"))
            .await
            .map_err(pg_err("emptying the bench table"))?;

        let mut contenders = vec![Contender::Postgres];
        if self.options.sinks.kafka {
            contenders.push(Contender::Reader(Sink::Kafka));
        }
        if self.options.sinks.discard {
            contenders.push(Contender::Reader(Sink::Discard));
        }
        let len = contenders.len();
        contenders.rotate_left(run % len);
        let names = |sink: Sink, what: &str| match sink {
            Sink::Kafka => (
                format!("{SLOT_PREFIX}_{what}{run}"),
                format!("{TOPIC_PREFIX}.{what}{run}"),
            ),
            Sink::Discard => (
                format!("{SLOT_PREFIX}_{what}d{run}"),
                format!("{TOPIC_PREFIX}.{what}d{run}"),
            ),
        };

        // Every slot exists before the load: the readers' through a reader
        // that snapshots the empty table and stops, pg_recvlogical's by SQL.
        for c in &contenders {
            if let Contender::Reader(sink) = *c {
                let (slots, topics) = names(sink, "s");
                let reader = self.start_reader(&slots, &topics, sink);
                wait_snapshot(client, &reader.slot, &reader.handle).await?;
                reader.stop().await?;
            }
        }
        let recv_slot = format!("{SLOT_PREFIX}_recv_{run}");
        client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&recv_slot],
            )
            .await
            .map_err(pg_err("creating pg_recvlogical's slot"))?;

        let (start, end) = self.load(client).await?;
        eprintln!(
            "  backlog: {} changes, {} MB of WAL, up to {end}",
            self.changes(),
            (end.0 - start.0) / 1_000_000
        );

        let mut r = RunResult {
            wal_bytes: end.0 - start.0,
            recvlogical_secs: 0.0,
            recvlogical_changes: None,
            reader_secs: 0.0,
            reader_events: 0,
            reader_peak_rss_kib: None,
            reader_cpu: Cpu::default(),
            copy_secs: 0.0,
            copy_rows: 0,
            snapshot_secs: 0.0,
            snapshot_events: 0,
            snapshot_peak_rss_kib: None,
            snapshot_cpu: Cpu::default(),
            discard_secs: None,
            discard_events: None,
            discard_cpu: None,
            discard_snapshot_secs: None,
            discard_snapshot_events: None,
            discard_snapshot_cpu: None,
        };
        for c in &contenders {
            match *c {
                Contender::Postgres => {
                    r.recvlogical_secs =
                        self.time_recvlogical(recvlogical, &recv_slot, end).await?;
                }
                Contender::Reader(sink) => {
                    let (slots, topics) = names(sink, "s");
                    let events_before = reader::metric_events();
                    let (secs, peak, cpu) = self
                        .time_streaming(client, &slots, &topics, end, sink)
                        .await?;
                    let events = reader::metric_events() - events_before;
                    match sink {
                        Sink::Kafka => {
                            (r.reader_secs, r.reader_peak_rss_kib, r.reader_cpu) =
                                (secs, peak, cpu);
                            r.reader_events =
                                topic_events(&self.kafka, &topic_name(&topics, SOURCE_DB, TABLE))
                                    .await?;
                        }
                        Sink::Discard => {
                            r.discard_secs = Some(secs);
                            r.discard_events = Some(events);
                            r.discard_cpu = Some(cpu);
                        }
                    }
                }
            }
        }
        r.recvlogical_changes = match &self.options.recvlogical_output {
            Some(path) => {
                let out = std::fs::read(path).map_err(io(format!("reading {}", path.display())))?;
                Some(count_pgoutput_changes(&out)?.changes())
            }
            None => None,
        };

        for c in &contenders {
            match *c {
                Contender::Postgres => (r.copy_secs, r.copy_rows) = time_copy(client).await?,
                Contender::Reader(sink) => {
                    let (slots, topics) = names(sink, "n");
                    let events_before = reader::metric_events();
                    let (secs, peak, cpu) =
                        self.time_snapshot(client, &slots, &topics, sink).await?;
                    let events = reader::metric_events() - events_before;
                    match sink {
                        Sink::Kafka => {
                            (r.snapshot_secs, r.snapshot_peak_rss_kib, r.snapshot_cpu) =
                                (secs, peak, cpu);
                            r.snapshot_events =
                                topic_events(&self.kafka, &topic_name(&topics, SOURCE_DB, TABLE))
                                    .await?;
                        }
                        Sink::Discard => {
                            r.discard_snapshot_secs = Some(secs);
                            r.discard_snapshot_events = Some(events);
                            r.discard_snapshot_cpu = Some(cpu);
                        }
                    }
                }
            }
        }
        drop_slots(client).await?;
        r.check_counts(
            run + 1,
            self.options.sinks,
            self.changes(),
            self.options.rows,
        )?;
        Ok(r)
    }
}
