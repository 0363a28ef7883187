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
//! (until `tributary_cdc.snapshots` records it complete) against `COPY … TO
//! STDOUT` of the same table.
//!
//! Each reader runs twice per run (`--sink both`, the default): into the
//! broker, and into a discard sink that drops every event as soon as it is
//! written (`tributary_cdc::run_discarding`, never the product's path). The
//! second is the reader's own ceiling: replication, decoding and JSON with
//! no Kafka. The broker alone is measured with the reader's producer
//! settings, with the stack's storage and with none (tansu's `null`
//! engine), so the report shows which stage bounds the rate.
//!
//! The reader runs in this process, so its peak memory is this process's
//! `VmHWM`, reset (`/proc/self/clear_refs`) before each reader run; CPU
//! seconds of this process, of the broker and of the reader's walsender
//! come from `/proc/<pid>/stat`.
//!
//! Postgres work happens on the local stack in a scratch database
//! (`tributary_bench` on shard 0's cluster, dropped afterwards). The broker
//! is a tansu of the bench's own with the stack's storage engine (sqlite)
//! in a temporary folder, removed afterwards: the stack's broker is never
//! written to, and topics never need deleting (tansu 0.6's DeleteTopics
//! deletes every topic of the cluster, not just the one named).

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail, ensure};
use futures::{StreamExt, pin_mut};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tributary_cdc::SourceDb;
use tributary_cdc::decode::{PgOutput, decode};
use tributary_kafka::KafkaConfig;
use tributary_model::domain::topic_name;
use tributary_model::lsn::Lsn;

use crate::config::Config;
use crate::pipeline::connect;
use crate::stack;

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
pub struct BenchOptions {
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

/// One run's measurements.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// WAL written by the load.
    pub wal_bytes: u64,
    pub recvlogical_secs: f64,
    /// Row changes in pg_recvlogical's output, when it went to a file.
    pub recvlogical_changes: Option<u64>,
    pub reader_secs: f64,
    /// Events the broker holds on the streaming topic.
    pub reader_events: u64,
    /// The process's peak RSS while the reader streamed.
    pub reader_peak_rss_kib: Option<u64>,
    /// CPU seconds while the reader streamed: this process (the reader),
    /// the broker, and the walsender that decoded for the reader.
    pub reader_cpu: Cpu,
    pub copy_secs: f64,
    pub copy_rows: u64,
    pub snapshot_secs: f64,
    /// Events the broker holds on the snapshot topic.
    pub snapshot_events: u64,
    /// The process's peak RSS while the reader took its snapshot.
    pub snapshot_peak_rss_kib: Option<u64>,
    /// CPU seconds while the reader took its snapshot (no walsender).
    pub snapshot_cpu: Cpu,
    /// The reader into the discard sink (no broker): streaming seconds.
    pub discard_secs: Option<f64>,
    /// Events it wrote (from its metrics; the discard sink keeps none).
    pub discard_events: Option<u64>,
    pub discard_cpu: Option<Cpu>,
    /// The same reader's snapshot of the loaded table.
    pub discard_snapshot_secs: Option<f64>,
    pub discard_snapshot_events: Option<u64>,
    pub discard_snapshot_cpu: Option<Cpu>,
}

/// CPU seconds spent by each process during a measurement.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Cpu {
    pub reader: f64,
    pub broker: f64,
    pub walsender: Option<f64>,
}

/// The broker alone: the reader's producer settings and event size.
#[derive(Clone, Debug, Serialize)]
pub struct BrokerCeiling {
    /// tansu's `--storage-engine`.
    pub storage: String,
    pub messages: u64,
    pub payload_bytes: usize,
    pub secs: f64,
    /// CPU seconds: `reader` is this process (the producer).
    pub cpu: Cpu,
}

/// Medians over the runs.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub recvlogical_changes_per_sec: f64,
    pub reader_changes_per_sec: f64,
    /// Reader rate / pg_recvlogical rate.
    pub streaming_ratio: f64,
    pub copy_rows_per_sec: f64,
    pub snapshot_rows_per_sec: f64,
    /// Reader snapshot rate / COPY rate.
    pub snapshot_ratio: f64,
    pub reader_peak_rss_kib: Option<u64>,
    /// The broker alone with the stack's storage (sqlite).
    pub broker_messages_per_sec: Option<f64>,
    /// The broker alone without storage (tansu's null engine).
    pub broker_null_messages_per_sec: Option<f64>,
    /// The reader into the discard sink, and its ratios to PostgreSQL's tools.
    pub discard_changes_per_sec: Option<f64>,
    pub discard_streaming_ratio: Option<f64>,
    pub discard_snapshot_rows_per_sec: Option<f64>,
    pub discard_snapshot_ratio: Option<f64>,
}

/// The whole benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub rows: u64,
    /// Row changes streamed per run.
    pub changes: u64,
    /// This process's RSS before the first reader run.
    pub baseline_rss_kib: Option<u64>,
    pub runs: Vec<RunResult>,
    /// The broker alone, with the stack's storage engine.
    pub broker: Option<BrokerCeiling>,
    /// The broker alone without storage: what tansu's protocol and the
    /// producer take before any storage cost.
    pub broker_null: Option<BrokerCeiling>,
    pub summary: Summary,
}

/// Runs the benchmark on the local stack (started when it is not running)
/// and removes its database, slots and topics afterwards.
pub async fn run(config: &Config, options: &BenchOptions) -> Result<Report> {
    ensure!(options.rows >= 2, "--rows must be at least 2");
    ensure!(options.runs >= 1, "--runs must be at least 1");
    ensure!(
        options.sinks.kafka || options.sinks.discard,
        "no reader to measure"
    );
    let state = stack::up(config).await?;
    let pg = state.shards.first().unwrap_or(&state.catalog);
    let admin_dsn = pg.dsn();
    let broker = BenchBroker::start(config, STACK_STORAGE).await?;
    let bench = Bench {
        dsn: format!(
            "host=127.0.0.1 port={} user=tributary dbname={DATABASE}",
            pg.port
        ),
        kafka: KafkaConfig {
            brokers: broker.address(),
            topic_prefix: TOPIC_PREFIX.into(),
            partitions: stack::kafka_config(config, &state).partitions,
            properties: Default::default(),
        },
        broker_pid: broker.pid(),
        config,
        options,
    };
    let admin = connect(&admin_dsn).await?;
    drop_scratch(&admin).await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
        .await
        .context("creating the bench database")?;
    let result = bench.run_all().await;
    let cleanup = drop_scratch(&admin).await;
    drop(broker);
    let report = result?;
    cleanup?;
    Ok(report)
}

/// The stack's broker storage (see `stack.rs`).
const STACK_STORAGE: &str = "sqlite://tansu.db";
/// No storage at all (tansu's `null` engine: records are dropped, offsets
/// invented): the broker's protocol and the producer without storage cost.
/// (`memory://` needs tansu's `dynostore` feature, which the stack's
/// install leaves out.)
const NULL_STORAGE: &str = "null://tansu/";

/// A tansu broker of the bench's own, started like the stack's (sqlite
/// storage) in a temporary folder; stopped and removed on drop.
struct BenchBroker {
    child: std::process::Child,
    dir: PathBuf,
    port: u16,
}

impl BenchBroker {
    async fn start(config: &Config, storage: &str) -> Result<BenchBroker> {
        let bin = match &config.stack.broker_bin {
            Some(p) => p.clone(),
            None => std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")))
                .map(|d| d.join("tansu"))
                .find(|p| p.is_file())
                .context("the tansu broker is not installed (see stack.broker_bin)")?,
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!(
            "tributary-bench-broker-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("broker.log"))?;
        let url = format!("tcp://127.0.0.1:{port}");
        let child = std::process::Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", storage])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let broker = BenchBroker { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            ensure!(
                Instant::now() < deadline,
                "the bench broker did not listen on {url} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(broker)
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BenchBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Bench<'a> {
    /// The scratch database.
    dsn: String,
    kafka: KafkaConfig,
    broker_pid: u32,
    config: &'a Config,
    options: &'a BenchOptions,
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
            .context("creating the bench table")?;
        let recvlogical = recvlogical_bin()?;
        let baseline_rss_kib = proc_status_kib("VmRSS");
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
        let summary = summarize(
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
            .context("emptying the bench table")?;

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
            .context("creating pg_recvlogical's slot")?;

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
                    let events_before = metric_events();
                    let (secs, peak, cpu) = self
                        .time_streaming(client, &slots, &topics, end, sink)
                        .await?;
                    let events = metric_events() - events_before;
                    match sink {
                        Sink::Kafka => {
                            (r.reader_secs, r.reader_peak_rss_kib, r.reader_cpu) =
                                (secs, peak, cpu);
                            r.reader_events = topic_events(
                                &self.kafka.brokers,
                                &topic_name(&topics, SOURCE_DB, TABLE),
                            )
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
                let out =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                Some(count_pgoutput_changes(&out)?.changes())
            }
            None => None,
        };

        for c in &contenders {
            match *c {
                Contender::Postgres => (r.copy_secs, r.copy_rows) = time_copy(client).await?,
                Contender::Reader(sink) => {
                    let (slots, topics) = names(sink, "n");
                    let events_before = metric_events();
                    let (secs, peak, cpu) =
                        self.time_snapshot(client, &slots, &topics, sink).await?;
                    let events = metric_events() - events_before;
                    match sink {
                        Sink::Kafka => {
                            (r.snapshot_secs, r.snapshot_peak_rss_kib, r.snapshot_cpu) =
                                (secs, peak, cpu);
                            r.snapshot_events = topic_events(
                                &self.kafka.brokers,
                                &topic_name(&topics, SOURCE_DB, TABLE),
                            )
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
        // The discard sink keeps nothing to count in a broker: its reader's
        // own event counter must still show every change and every row.
        for (what, got, want) in [
            ("streamed", r.discard_events, self.changes()),
            ("snapshot", r.discard_snapshot_events, self.options.rows),
        ] {
            if let Some(got) = got {
                ensure!(
                    got == want,
                    "the discarding reader {what} {got} events, expected {want}"
                );
            }
        }
        Ok(r)
    }

    /// Writes the backlog: `rows` inserts, then updates of the first half,
    /// in large transactions. Returns the WAL positions before and after.
    async fn load(&self, client: &tokio_postgres::Client) -> Result<(Lsn, Lsn)> {
        let start = current_lsn(client).await?;
        let rows = self.options.rows as i64;
        let step = LOAD_TX_ROWS as i64;
        let mut from = 1;
        while from <= rows {
            let to = (from + step - 1).min(rows);
            client
                .execute(
                    &format!(
                        "INSERT INTO {TABLE}
                         SELECT g, 1 + g % 10007,
                                (ARRAY['pending','paid','shipped','delivered'])[1 + g % 4],
                                'USD', 1 + (g % 7)::int, (g % 100000) / 100.0,
                                CASE WHEN g % 5 = 0 THEN 5.00 END,
                                timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second',
                                now()
                         FROM generate_series($1::int8, $2::int8) g"
                    ),
                    &[&from, &to],
                )
                .await
                .context("inserting the backlog")?;
            from = to + 1;
        }
        let updates = rows / 2;
        let mut from = 1;
        while from <= updates {
            let to = (from + step - 1).min(updates);
            client
                .execute(
                    &format!(
                        "UPDATE {TABLE} SET status = 'shipped', quantity = quantity + 1,
                                total = total + 1, updated_at = now()
                         WHERE id BETWEEN $1 AND $2"
                    ),
                    &[&from, &to],
                )
                .await
                .context("updating the backlog")?;
            from = to + 1;
        }
        Ok((start, current_lsn(client).await?))
    }

    fn start_reader(&self, slot_prefix: &str, topic_prefix: &str, sink: Sink) -> RunningReader {
        let mut cdc = self.config.cdc.clone();
        cdc.slot_prefix = slot_prefix.into();
        cdc.publication = PUBLICATION.into();
        // Confirm often so that the end is seen within a poll, not 500 ms on.
        cdc.status_interval_ms = 50;
        let mut kafka = self.kafka.clone();
        kafka.topic_prefix = topic_prefix.into();
        let shutdown = CancellationToken::new();
        let source = self.source();
        let slot = tributary_model::domain::slot_name(slot_prefix, &source.db, source.shard);
        let handle = match sink {
            Sink::Kafka => tokio::spawn(tributary_cdc::run(
                cdc,
                kafka,
                vec![source],
                shutdown.clone(),
            )),
            Sink::Discard => tokio::spawn(tributary_cdc::run_discarding(
                cdc,
                kafka,
                vec![source],
                shutdown.clone(),
            )),
        };
        RunningReader {
            slot,
            shutdown,
            handle,
        }
    }

    /// Times pg_recvlogical from start until it exits at `end`.
    async fn time_recvlogical(&self, bin: &Path, slot: &str, end: Lsn) -> Result<f64> {
        let output = self
            .options
            .recvlogical_output
            .clone()
            .unwrap_or_else(|| PathBuf::from("/dev/null"));
        if self.options.recvlogical_output.is_some() {
            // pg_recvlogical appends: each run counts its own output.
            std::fs::File::create(&output)
                .with_context(|| format!("emptying {}", output.display()))?;
        }
        let started = Instant::now();
        let out = tokio::process::Command::new(bin)
            .arg("-d")
            .arg(&self.dsn)
            .args(["--slot", slot, "--start", "--no-loop"])
            .arg(format!("--endpos={end}"))
            .args(["-o", "proto_version=1"])
            .arg("-o")
            .arg(format!("publication_names={PUBLICATION}"))
            // No fsync: the point is the protocol's rate, and /dev/null
            // cannot be synced.
            .args(["-F", "0", "-f"])
            .arg(&output)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(1800), out)
            .await
            .context("pg_recvlogical did not reach the end position within 30 minutes")?
            .with_context(|| format!("running {}", bin.display()))?;
        let secs = started.elapsed().as_secs_f64();
        ensure!(
            out.status.success(),
            "pg_recvlogical failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(secs)
    }

    /// Times the reader from start until its slot confirms `end`; returns
    /// the seconds and the peak RSS meanwhile.
    async fn time_streaming(
        &self,
        client: &tokio_postgres::Client,
        slot_prefix: &str,
        topic_prefix: &str,
        end: Lsn,
        sink: Sink,
    ) -> Result<(f64, Option<u64>, Cpu)> {
        let rss_reset = reset_peak_rss();
        let cpu_before = self.cpu_now();
        let started = Instant::now();
        let reader = self.start_reader(slot_prefix, topic_prefix, sink);
        let deadline = started + Duration::from_secs(1800);
        let mut walsender = None;
        loop {
            if walsender.is_none() {
                walsender = client
                    .query_opt(
                        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                        &[&reader.slot],
                    )
                    .await
                    .context("reading pg_replication_slots")?
                    .and_then(|r| r.get::<_, Option<i32>>(0));
            }
            let confirmed: Option<String> = client
                .query_opt(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                    &[&reader.slot],
                )
                .await
                .context("reading pg_replication_slots")?
                .and_then(|r| r.get(0));
            if let Some(c) = confirmed
                && c.parse::<Lsn>()? >= end
            {
                break;
            }
            if reader.handle.is_finished() {
                return Err(reader
                    .stop()
                    .await
                    .err()
                    .unwrap_or_else(|| anyhow!("the reader stopped before confirming {end}")));
            }
            if Instant::now() > deadline {
                bail!("the reader did not confirm {end} within 30 minutes");
            }
            tokio::time::sleep(POLL).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let peak = rss_reset.then(|| proc_status_kib("VmHWM")).flatten();
        let mut cpu = self.cpu_now().since(cpu_before);
        // The walsender started with the reader: all its CPU is this run's.
        cpu.walsender = walsender.and_then(|pid| cpu_secs(pid as u32));
        reader.stop().await?;
        Ok((secs, peak, cpu))
    }

    /// CPU seconds so far of this process and of the broker.
    fn cpu_now(&self) -> Cpu {
        Cpu {
            reader: cpu_secs(std::process::id()).unwrap_or(0.0),
            broker: cpu_secs(self.broker_pid).unwrap_or(0.0),
            walsender: None,
        }
    }

    /// Times the reader's snapshot of the loaded table from a fresh slot,
    /// from start until it is recorded complete.
    async fn time_snapshot(
        &self,
        client: &tokio_postgres::Client,
        slot_prefix: &str,
        topic_prefix: &str,
        sink: Sink,
    ) -> Result<(f64, Option<u64>, Cpu)> {
        let rss_reset = reset_peak_rss();
        let cpu_before = self.cpu_now();
        let started_wall = SystemTime::now();
        let started = Instant::now();
        let reader = self.start_reader(slot_prefix, topic_prefix, sink);
        let completed = wait_snapshot(client, &reader.slot, &reader.handle).await?;
        let peak = rss_reset.then(|| proc_status_kib("VmHWM")).flatten();
        let cpu = self.cpu_now().since(cpu_before);
        reader.stop().await?;
        // The completion time is the server's clock on this same machine: no
        // polling interval in the measurement.
        let secs = SystemTime::from(completed)
            .duration_since(started_wall)
            .map(|d| d.as_secs_f64())
            .unwrap_or_else(|_| started.elapsed().as_secs_f64());
        Ok((secs, peak, cpu))
    }

    /// Produces as many messages as a run streams, of the reader's mean
    /// event size, with the reader's producer settings and its way of
    /// tracking acknowledgements (a delivery callback, no future per
    /// message), into the broker at `brokers` (process `pid`).
    async fn broker_ceiling(
        &self,
        brokers: &str,
        pid: u32,
        storage: &str,
    ) -> Result<BrokerCeiling> {
        let payload_bytes = mean_event_bytes().unwrap_or(600);
        let messages = self.changes();
        let topic = format!("{TOPIC_PREFIX}.ceiling");
        let kafka = KafkaConfig {
            brokers: brokers.to_string(),
            ..self.kafka.clone()
        };
        create_topic(&kafka, &topic).await?;
        let acks = Arc::new(CountAcks::default());
        let producer: ThreadedProducer<Counting> = tributary_cdc::sink::producer_config(&kafka)
            .create_with_context(Counting(acks.clone()))
            .context("creating a producer")?;
        let payload = vec![b'x'; payload_bytes];
        let cpu = || Cpu {
            reader: cpu_secs(std::process::id()).unwrap_or(0.0),
            broker: cpu_secs(pid).unwrap_or(0.0),
            walsender: None,
        };
        let cpu_before = cpu();
        let started = Instant::now();
        let mut key = String::new();
        for i in 0..messages {
            key.clear();
            write!(key, "{{\"id\":{i},\"shard\":0}}").expect("writing to a String");
            let mut record = BaseRecord::to(&topic).key(&key).payload(&payload);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        acks.check()?;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => return Err(e).context("producing"),
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(600);
        while acks.ok.load(Ordering::SeqCst) < messages {
            acks.check()?;
            ensure!(
                Instant::now() < deadline,
                "deliveries did not finish within 10 minutes"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let cpu = cpu().since(cpu_before);
        // The null engine keeps nothing to count.
        if storage != NULL_STORAGE {
            let held = topic_events(brokers, &topic).await?;
            ensure!(
                held == messages,
                "the broker holds {held} of {messages} messages"
            );
        }
        Ok(BrokerCeiling {
            storage: storage.to_string(),
            messages,
            payload_bytes,
            secs,
            cpu,
        })
    }
}

/// Acknowledged and failed deliveries of the broker-alone measurement.
#[derive(Default)]
struct CountAcks {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl CountAcks {
    fn check(&self) -> Result<()> {
        let failed = self.failed.load(Ordering::SeqCst);
        ensure!(failed == 0, "{failed} deliveries failed");
        Ok(())
    }
}

/// The producer context that counts deliveries into [`CountAcks`].
struct Counting(Arc<CountAcks>);

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = if result.is_ok() {
            &self.0.ok
        } else {
            &self.0.failed
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

struct RunningReader {
    slot: String,
    shutdown: CancellationToken,
    handle: JoinHandle<tributary_cdc::Result<()>>,
}

impl RunningReader {
    /// Stops the reader and returns how it ended.
    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(60), self.handle).await {
            Ok(Ok(r)) => r.context("the CDC reader failed"),
            Ok(Err(e)) => Err(anyhow!("the CDC reader task: {e}")),
            Err(_) => bail!("the CDC reader did not stop within 60 s"),
        }
    }
}

/// Waits until the reader reports `slot`'s snapshot complete;
/// returns when, by the server's clock.
async fn wait_snapshot(
    client: &tokio_postgres::Client,
    slot: &str,
    reader: &JoinHandle<tributary_cdc::Result<()>>,
) -> Result<chrono::DateTime<chrono::Utc>> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        if let Some(at) = tributary_cdc::slot_status(client, slot)
            .await?
            .snapshot_completed_at
        {
            return Ok(at);
        }
        if reader.is_finished() {
            bail!("the CDC reader stopped before its snapshot completed (see its log above)");
        }
        if Instant::now() > deadline {
            bail!("the snapshot of slot {slot} did not complete within 30 minutes");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Times `COPY … TO STDOUT` of the bench table, reading every byte.
async fn time_copy(client: &tokio_postgres::Client) -> Result<(f64, u64)> {
    let started = Instant::now();
    let stream = client
        .copy_out(&format!("COPY public.{TABLE} TO STDOUT"))
        .await
        .context("COPY")?;
    pin_mut!(stream);
    // COPY text escapes newlines inside values: one newline per row.
    let mut rows = 0u64;
    while let Some(chunk) = stream.next().await {
        rows += chunk
            .context("COPY")?
            .iter()
            .filter(|b| **b == b'\n')
            .count() as u64;
    }
    Ok((started.elapsed().as_secs_f64(), rows))
}

async fn current_lsn(client: &tokio_postgres::Client) -> Result<Lsn> {
    let lsn: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .context("reading the WAL position")?
        .get(0);
    Ok(lsn.parse()?)
}

/// Drops the bench's slots, stopping whoever still streams from them (a
/// pg_recvlogical or reader left over by an interrupted bench).
async fn drop_slots(client: &tokio_postgres::Client) -> Result<()> {
    for attempt in 0.. {
        let rows = client
            .query(
                "SELECT slot_name::text, active_pid FROM pg_replication_slots WHERE database = $1",
                &[&DATABASE],
            )
            .await
            .context("reading pg_replication_slots")?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut last_error = None;
        for row in rows {
            let (slot, pid): (String, Option<i32>) = (row.get(0), row.get(1));
            if let Some(pid) = pid {
                let _ = client
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await;
                continue;
            }
            if let Err(e) = client
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await
            {
                last_error = Some(e);
            }
        }
        if attempt == 100 {
            return Err(match last_error {
                Some(e) => anyhow!(e),
                None => anyhow!("replication slots stay active"),
            })
            .context("dropping the bench's slots");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!("the loop returns")
}

/// Drops the scratch database and its slots, if any.
async fn drop_scratch(admin: &tokio_postgres::Client) -> Result<()> {
    drop_slots(admin).await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
        .await
        .context("dropping the bench database")
}

fn kafka_client(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers).set("log_level", "3");
    c
}

async fn create_topic(kafka: &KafkaConfig, topic: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka_client(&kafka.brokers).create()?;
    let new = NewTopic::new(topic, kafka.partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.create_topics([&new], &opts).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => bail!("creating topic {t}: {code}"),
        }
    }
    Ok(())
}

/// The number of events a topic holds: the sum of its partitions' high
/// watermarks (nothing is ever deleted from bench topics).
async fn topic_events(brokers: &str, topic: &str) -> Result<u64> {
    let consumer: BaseConsumer = kafka_client(brokers)
        .set("group.id", "tributary-bench")
        .create()?;
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(10);
        let md = consumer.fetch_metadata(Some(&topic), timeout)?;
        let partitions = md
            .topics()
            .first()
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        let mut total = 0u64;
        for p in 0..partitions as i32 {
            let (low, high) = consumer.fetch_watermarks(&topic, p, timeout)?;
            total += (high - low).max(0) as u64;
        }
        Ok(total)
    })
    .await?
}

/// The reader's mean event payload so far, from its metrics.
fn mean_event_bytes() -> Option<usize> {
    let metrics = tributary_cdc::metrics::render();
    let sum = |name: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(&format!("table=\"{TABLE}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let (bytes, events) = (
        sum("tributary_cdc_bytes_total{"),
        sum("tributary_cdc_events_total{"),
    );
    (events > 0).then(|| (bytes / events) as usize)
}

/// pg_recvlogical from `pg_config --bindir`, PATH, or Debian's folders.
fn recvlogical_bin() -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    debian.sort();
    candidates.extend(debian.into_iter().rev());
    candidates
        .into_iter()
        .map(|d| d.join("pg_recvlogical"))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("pg_recvlogical not found: install PostgreSQL's client tools"))
}

impl Cpu {
    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            reader: self.reader - before.reader,
            broker: self.broker - before.broker,
            walsender: None,
        }
    }
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports these in USER_HZ, which is 100 on every architecture.
    Some(ticks as f64 / 100.0)
}

/// Resets this process's peak RSS (`VmHWM`) to its current RSS.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A `kB` field of `/proc/self/status`.
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// Messages in pgoutput output, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PgOutputCounts {
    pub inserts: u64,
    pub updates: u64,
    pub deletes: u64,
    pub commits: u64,
}

impl PgOutputCounts {
    pub fn changes(&self) -> u64 {
        self.inserts + self.updates + self.deletes
    }
}

/// Counts the messages in pg_recvlogical's pgoutput output. It writes a
/// newline after each message, but a message may itself hold newline bytes:
/// a message ends at the first newline before which it decodes completely
/// (a strict prefix never does: the decoder wants every announced byte and
/// refuses trailing ones).
pub fn count_pgoutput_changes(out: &[u8]) -> Result<PgOutputCounts> {
    let mut counts = PgOutputCounts::default();
    let mut start = 0;
    while start < out.len() {
        let mut search = start;
        loop {
            let nl = out[search..]
                .iter()
                .position(|b| *b == b'\n')
                .map(|p| search + p)
                .ok_or_else(|| anyhow!("pgoutput message at byte {start} does not decode"))?;
            if let Ok(msg) = decode(&out[start..nl].to_vec().into()) {
                match msg {
                    PgOutput::Insert { .. } => counts.inserts += 1,
                    PgOutput::Update { .. } => counts.updates += 1,
                    PgOutput::Delete { .. } => counts.deletes += 1,
                    PgOutput::Commit { .. } => counts.commits += 1,
                    _ => {}
                }
                start = nl + 1;
                break;
            }
            search = nl + 1;
        }
    }
    Ok(counts)
}

/// Seconds for a progress line, or `-` when not measured.
fn secs(s: Option<f64>) -> String {
    s.map(|s| format!("{s:.2}s")).unwrap_or_else(|| "-".into())
}

/// The reader's events written so far on the bench table (all ops), from
/// its metrics: the readers run in this process.
fn metric_events() -> u64 {
    tributary_cdc::metrics::render()
        .lines()
        .filter(|l| {
            l.starts_with("tributary_cdc_events_total{")
                && l.contains(&format!("table=\"{TABLE}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    if !n.is_multiple_of(2) {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn summarize(
    rows: u64,
    changes: u64,
    runs: &[RunResult],
    broker: Option<&BrokerCeiling>,
    broker_null: Option<&BrokerCeiling>,
) -> Summary {
    let rate = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let m = |f: fn(&RunResult) -> f64| median(runs.iter().map(f).collect());
    let recv = rate(changes, m(|r| r.recvlogical_secs));
    let reader = rate(changes, m(|r| r.reader_secs));
    let copy = rate(rows, m(|r| r.copy_secs));
    let snapshot = rate(rows, m(|r| r.snapshot_secs));
    let some = |f: fn(&RunResult) -> Option<f64>| {
        let v: Vec<f64> = runs.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median(v))
    };
    let discard = some(|r| r.discard_secs).map(|s| rate(changes, s));
    let discard_snapshot = some(|r| r.discard_snapshot_secs).map(|s| rate(rows, s));
    Summary {
        discard_changes_per_sec: discard,
        discard_streaming_ratio: discard.map(|d| ratio(d, recv)),
        discard_snapshot_rows_per_sec: discard_snapshot,
        discard_snapshot_ratio: discard_snapshot.map(|d| ratio(d, copy)),
        broker_null_messages_per_sec: broker_null.map(|b| rate(b.messages, b.secs)),
        recvlogical_changes_per_sec: recv,
        reader_changes_per_sec: reader,
        streaming_ratio: ratio(reader, recv),
        copy_rows_per_sec: copy,
        snapshot_rows_per_sec: snapshot,
        snapshot_ratio: ratio(snapshot, copy),
        reader_peak_rss_kib: runs
            .iter()
            .flat_map(|r| [r.reader_peak_rss_kib, r.snapshot_peak_rss_kib])
            .flatten()
            .max(),
        broker_messages_per_sec: broker.map(|b| rate(b.messages, b.secs)),
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.summary;
        let mib = |k: Option<u64>| {
            k.map(|k| format!("{:.0} MiB", k as f64 / 1024.0))
                .unwrap_or_else(|| "n/a".into())
        };
        writeln!(
            f,
            "CDC bench: {} rows inserted + {} updated per run ({} changes), {} run(s), medians",
            self.rows,
            self.rows / 2,
            self.changes,
            self.runs.len()
        )?;
        writeln!(f, "streaming")?;
        writeln!(
            f,
            "  pg_recvlogical (pgoutput, /dev/null) {:>10.0} changes/s",
            s.recvlogical_changes_per_sec
        )?;
        writeln!(
            f,
            "  tributary reader (into the broker)   {:>10.0} changes/s   {:.2}x",
            s.reader_changes_per_sec, s.streaming_ratio
        )?;
        if let (Some(rate), Some(ratio)) = (s.discard_changes_per_sec, s.discard_streaming_ratio) {
            writeln!(
                f,
                "  tributary reader (discard sink)      {rate:>10.0} changes/s   {ratio:.2}x   (the reader's own ceiling: no Kafka)"
            )?;
        }
        writeln!(f, "snapshot")?;
        writeln!(
            f,
            "  COPY … TO STDOUT                     {:>10.0} rows/s",
            s.copy_rows_per_sec
        )?;
        writeln!(
            f,
            "  tributary reader (into the broker)   {:>10.0} rows/s      {:.2}x",
            s.snapshot_rows_per_sec, s.snapshot_ratio
        )?;
        if let (Some(rate), Some(ratio)) =
            (s.discard_snapshot_rows_per_sec, s.discard_snapshot_ratio)
        {
            writeln!(
                f,
                "  tributary reader (discard sink)      {rate:>10.0} rows/s      {ratio:.2}x   (the reader's own ceiling: no Kafka)"
            )?;
        }
        for b in [&self.broker, &self.broker_null].into_iter().flatten() {
            let rate = if b.secs > 0.0 {
                b.messages as f64 / b.secs
            } else {
                0.0
            };
            writeln!(
                f,
                "broker alone ({}, {} B messages, the reader's producer settings)",
                b.storage, b.payload_bytes
            )?;
            writeln!(
                f,
                "                                       {rate:>10.0} messages/s   (CPU s: producer {:.1}, broker {:.1}; wall {:.1})",
                b.cpu.reader, b.cpu.broker, b.secs
            )?;
        }
        writeln!(
            f,
            "reader peak RSS {} (process baseline {})",
            mib(s.reader_peak_rss_kib),
            mib(self.baseline_rss_kib)
        )?;
        writeln!(
            f,
            "runs (seconds; CPU s of reader/broker/walsender; peak RSS):"
        )?;
        for (i, r) in self.runs.iter().enumerate() {
            let walsender = r
                .reader_cpu
                .walsender
                .map(|w| format!("{w:.1}"))
                .unwrap_or_else(|| "?".into());
            writeln!(
                f,
                "  {}: pg_recvlogical {:.2} | reader {:.2}, {} events, CPU {:.1}/{:.1}/{}, {} | COPY {:.2} | snapshot {:.2}, {} events, CPU {:.1}/{:.1}, {} | WAL {} MB",
                i + 1,
                r.recvlogical_secs,
                r.reader_secs,
                r.reader_events,
                r.reader_cpu.reader,
                r.reader_cpu.broker,
                walsender,
                mib(r.reader_peak_rss_kib),
                r.copy_secs,
                r.snapshot_secs,
                r.snapshot_events,
                r.snapshot_cpu.reader,
                r.snapshot_cpu.broker,
                mib(r.snapshot_peak_rss_kib),
                r.wal_bytes / 1_000_000
            )?;
            if let (Some(d), Some(c)) = (r.discard_secs, r.discard_cpu) {
                writeln!(
                    f,
                    "     discard sink: reader {d:.2}, CPU {:.1} | snapshot {}, CPU {}",
                    c.reader,
                    secs(r.discard_snapshot_secs),
                    r.discard_snapshot_cpu
                        .map(|c| format!("{:.1}", c.reader))
                        .unwrap_or_else(|| "?".into()),
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[&[u8]]) -> Vec<u8> {
        let mut m = vec![tag];
        for part in body {
            m.extend_from_slice(part);
        }
        m
    }

    #[test]
    fn counts_messages_that_contain_newlines() {
        let text = |s: &[u8]| {
            let mut v = vec![b't'];
            v.extend_from_slice(&(s.len() as i32).to_be_bytes());
            v.extend_from_slice(s);
            v
        };
        // A final LSN and a relation id made of newline bytes.
        let begin = message(
            b'B',
            &[
                &0x0a0a_u64.to_be_bytes(),
                &0i64.to_be_bytes(),
                &7u32.to_be_bytes(),
            ],
        );
        let tuple = [&1i16.to_be_bytes()[..], &text(b"a\nb\n")].concat();
        let insert = message(b'I', &[&0x0a_u32.to_be_bytes(), b"N", &tuple]);
        let update = message(b'U', &[&0x0a_u32.to_be_bytes(), b"N", &tuple]);
        let commit = message(
            b'C',
            &[
                &[0],
                &0x0a_u64.to_be_bytes(),
                &0x0a0a_u64.to_be_bytes(),
                &0i64.to_be_bytes(),
            ],
        );
        let mut out = Vec::new();
        for m in [&begin, &insert, &insert, &update, &commit] {
            out.extend_from_slice(m);
            out.push(b'\n');
        }
        let counts = count_pgoutput_changes(&out).unwrap();
        assert_eq!(
            counts,
            PgOutputCounts {
                inserts: 2,
                updates: 1,
                deletes: 0,
                commits: 1
            }
        );
        // A cut-off message is an error, not a smaller count.
        assert!(count_pgoutput_changes(&out[..out.len() - 3]).is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn reads_proc_status() {
        assert!(proc_status_kib("VmRSS").is_some_and(|k| k > 0));
    }
}
