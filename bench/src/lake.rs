//! `tributary bench lake`: the whole pipeline under a sustained write load.
//!
//! A stack of its own (PostgreSQL shards + catalog, tansu) in a temporary
//! state folder, the CDC reader and the ingester as child processes of this
//! binary (as in production), and a load generator writing straight to the
//! order shards at a target rate of row changes per second. Each unit of
//! load is five row changes in two transactions: an order with two items,
//! and the previous tick's orders paid (update + payment insert).
//!
//! Measured, from outside the ingester:
//! - freshness (Postgres commit to visible in silver) per streamed change:
//!   the ingester's `tributary_lake_freshness_seconds` histogram, read from
//!   its `/metrics` after the initial catch-up and again after the final
//!   one, so every change of the load is in the difference; percentiles are
//!   interpolated within the histogram's buckets;
//! - throughput: changes the reader put in Kafka (end offsets of the table
//!   topics) against changes ingest committed to silver (the `txn` offsets
//!   of the silver tables), sampled every few seconds, with the backlog
//!   between them over time;
//! - files per bronze and silver table (active files of the current version);
//! - the ingester's peak RSS (`VmHWM` of `/proc/<pid>/status`).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tributary_kafka::KafkaConfig;
use tributary_lake::Lake;
use tributary_model::domain::{TABLES, topic_of};

use crate::config::Config;
use crate::pipeline::{self, Sources, connect};
use crate::stack;

/// Row changes per unit of load.
const CHANGES_PER_UNIT: u64 = 5;
/// How often each shard's writer commits.
const TICK: Duration = Duration::from_millis(100);
/// How often throughput and backlog are sampled.
const SAMPLE: Duration = Duration::from_secs(10);
/// Customers seeded per shard.
const CUSTOMERS: i64 = 1_000;
/// Products seeded in the catalog.
const PRODUCTS: i64 = 100;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Row changes per second across all shards.
    pub rate: f64,
    pub duration: Duration,
    /// Keep the temporary stack (and its lake) for inspection.
    pub keep: bool,
}

/// One sample of throughput and backlog.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub at_secs: f64,
    /// Row changes written by the load so far.
    pub written: u64,
    /// Messages in the table topics (all time).
    pub in_kafka: i64,
    /// Messages silver committed (all time).
    pub in_silver: i64,
}

impl Sample {
    pub fn backlog(&self) -> i64 {
        self.in_kafka - self.in_silver
    }
}

/// Freshness percentiles, seconds.
#[derive(Clone, Debug, Serialize)]
pub struct Freshness {
    pub changes: u64,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max_bucket: String,
}

/// Where the ingester's time went during the load, per table.
#[derive(Clone, Debug, Serialize)]
pub struct TableBatches {
    pub table: String,
    pub batches: u64,
    /// Seconds spent committing them (bronze append + silver merge).
    pub seconds: f64,
    pub messages: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TableFiles {
    pub table: String,
    pub bronze_files: usize,
    pub silver_files: usize,
}

/// The benchmark's result.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub target_rate: f64,
    pub duration_secs: f64,
    pub shards: usize,
    pub written: u64,
    pub write_rate: f64,
    /// Changes per second the reader put in Kafka during the load.
    pub cdc_rate: f64,
    /// Changes per second ingest committed to silver during the load.
    pub ingest_rate: f64,
    pub backlog_start: i64,
    pub backlog_end: i64,
    /// After the load, until silver had everything.
    pub catch_up_secs: f64,
    pub samples: Vec<Sample>,
    pub freshness: Freshness,
    pub files: Vec<TableFiles>,
    pub batches: Vec<TableBatches>,
    /// CPU seconds used during the load and catch-up, per process.
    pub cpu_secs: BTreeMap<String, f64>,
    pub ingester_peak_rss_kib: Option<u64>,
    pub batch_max_ms: u64,
    pub profile: &'static str,
    pub cores: usize,
    /// `/proc/loadavg` (1, 5, 15 min) at the start and the end of the load:
    /// the machine is shared, so this says how much else ran.
    pub load_average: (String, String),
}

/// Runs the benchmark on a stack of its own and removes it afterwards
/// (unless `keep`).
pub async fn run(config: &Config, options: &BenchOptions) -> Result<Report> {
    ensure!(options.rate > 0.0, "--rate must be positive");
    ensure!(
        config.sources.is_none() && config.kafka.is_none() && config.lake.is_none(),
        "bench lake runs on a stack of its own: leave [sources], [kafka] and [lake] unset"
    );
    let dir = tempfile::Builder::new()
        .prefix("tributary-bench-lake-")
        .tempdir()
        .context("creating the bench folder")?;
    let mut cfg = config.clone();
    cfg.state_dir = dir.path().join("state");
    eprintln!("bench stack in {}", cfg.state_dir.display());
    let result = Bench::start(&cfg, options).await;
    let report = match result {
        Ok(mut bench) => {
            let r = bench.measure().await;
            bench.stop();
            r
        }
        Err(e) => Err(e),
    };
    if options.keep {
        let kept = dir.keep();
        eprintln!("kept the bench stack in {}", kept.display());
    } else {
        stack::down(&cfg, true)?;
    }
    report
}

struct Bench<'a> {
    cfg: Config,
    options: &'a BenchOptions,
    sources: Sources,
    kafka: KafkaConfig,
    lake: Lake,
    metrics: String,
    children: Vec<(&'static str, Child)>,
}

impl Bench<'_> {
    async fn start<'a>(cfg: &Config, options: &'a BenchOptions) -> Result<Bench<'a>> {
        let state = stack::up(cfg).await?;
        let sources = Sources::resolve(cfg, Some(&state))?;
        let kafka = stack::kafka_config(cfg, &state);
        tributary_oltp::migrate(&sources.topology()).await?;
        seed(&sources).await?;
        let lake = Lake::new(&pipeline::lake_config(cfg))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut bench = Bench {
            cfg: cfg.clone(),
            options,
            sources,
            kafka,
            lake,
            metrics: format!("127.0.0.1:{port}"),
            children: Vec::new(),
        };
        bench.spawn("cdc", &["cdc", "run"])?;
        let metrics = bench.metrics.clone();
        bench.spawn("ingest", &["lake", "ingest", "--metrics", &metrics])?;
        Ok(bench)
    }

    fn spawn(&mut self, name: &'static str, args: &[&str]) -> Result<()> {
        let exe = std::env::current_exe().context("finding this binary")?;
        let log = std::fs::File::create(self.cfg.state_dir.join(format!("{name}.log")))?;
        let child = Command::new(exe)
            .args(args)
            .env("TRIBUTARY__STATE_DIR", &self.cfg.state_dir)
            .env(
                "TRIBUTARY__INGEST__BATCH_MAX_MS",
                self.cfg.ingest.batch_max_ms.to_string(),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.children.push((name, child));
        Ok(())
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.cfg.state_dir.join(format!("{name}.log"))
    }

    fn check_children(&mut self) -> Result<()> {
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{name} exited with {status}; see {}",
                    self.cfg.state_dir.join(format!("{name}.log")).display()
                );
            }
        }
        Ok(())
    }

    fn pid(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c.id())
    }

    /// SIGTERM, a few seconds to drain, then SIGKILL.
    fn stop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        for (_, c) in &self.children {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (_, c) in &mut self.children {
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn caught_up(&mut self, timeout: Duration) -> Result<()> {
        self.check_children()?;
        pipeline::wait_caught_up(&self.cfg, &self.sources, &self.kafka, timeout)
            .await
            .with_context(|| {
                format!(
                    "see {} and {}",
                    self.log_path("cdc").display(),
                    self.log_path("ingest").display()
                )
            })
    }

    async fn scrape(&self) -> Result<String> {
        Ok(reqwest::get(format!("http://{}/metrics", self.metrics))
            .await?
            .text()
            .await?)
    }

    /// CPU seconds so far of the children and the stack's broker.
    fn cpu(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (name, c) in &self.children {
            if let Some(s) = cpu_secs(c.id()) {
                out.insert(name.to_string(), s);
            }
        }
        let broker_pid = std::fs::read_to_string(self.cfg.state_dir.join("broker").join("pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok());
        if let Some(s) = broker_pid.and_then(cpu_secs) {
            out.insert("broker".into(), s);
        }
        out
    }

    async fn sample(&self, at: Duration, written: u64) -> Result<Sample> {
        let (in_kafka, in_silver) = offsets(&self.cfg, &self.kafka, &self.lake).await?;
        Ok(Sample {
            at_secs: at.as_secs_f64(),
            written,
            in_kafka,
            in_silver,
        })
    }

    async fn measure(&mut self) -> Result<Report> {
        eprintln!("waiting for the initial snapshot to reach silver");
        self.caught_up(Duration::from_secs(300)).await?;
        let metrics_start = self.scrape().await?;
        let load_start = load_average();
        let cpu_start = self.cpu();
        let shards = self.sources.shards.len();
        eprintln!(
            "load: {} row changes/s over {shards} shards for {:?}",
            self.options.rate, self.options.duration
        );
        let stop = CancellationToken::new();
        let per_shard = self.options.rate / shards as f64;
        let mut writers = tokio::task::JoinSet::new();
        let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        for (i, dsn) in self.sources.shards.iter().enumerate() {
            let (dsn, stop, written) = (dsn.clone(), stop.clone(), written.clone());
            writers.spawn(async move { write_load(i, &dsn, per_shard, stop, written).await });
        }
        let started = Instant::now();
        let mut samples = vec![self.sample(Duration::ZERO, 0).await?];
        let count = |w: &std::sync::Arc<std::sync::atomic::AtomicU64>| {
            w.load(std::sync::atomic::Ordering::Relaxed)
        };
        while started.elapsed() < self.options.duration {
            let left = self.options.duration.saturating_sub(started.elapsed());
            tokio::time::sleep(left.min(SAMPLE)).await;
            self.check_children()?;
            if let Some(done) = writers.try_join_next() {
                done??;
                bail!("a load writer stopped early");
            }
            let s = self.sample(started.elapsed(), count(&written)).await?;
            eprintln!(
                "  {:>6.1}s written {:>8} kafka {:>8} silver {:>8} backlog {:>7}",
                s.at_secs,
                s.written,
                s.in_kafka,
                s.in_silver,
                s.backlog()
            );
            samples.push(s);
        }
        stop.cancel();
        while let Some(done) = writers.join_next().await {
            done??;
        }
        let load_secs = started.elapsed().as_secs_f64();
        let total_written = count(&written);
        let end = self.sample(started.elapsed(), total_written).await?;
        samples.push(end.clone());
        let peak_rss = self.pid("ingest").and_then(|p| proc_kib(p, "VmHWM"));
        let load_end = load_average();
        let drain = Instant::now();
        self.caught_up(Duration::from_secs(600)).await?;
        let catch_up_secs = drain.elapsed().as_secs_f64();
        let metrics_end = self.scrape().await?;
        let cpu_end = self.cpu();
        let first = &samples[0];
        let name = "tributary_lake_freshness_seconds";
        let freshness = percentiles(
            &parse_histogram(&metrics_start, name)?,
            &parse_histogram(&metrics_end, name)?,
        );
        let per_table = |text: &str, name: &str, table: &str| {
            let prefix = format!("{name}{{table=\"{table}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let diff = |name: &str, table: &str| {
            per_table(&metrics_end, name, table) - per_table(&metrics_start, name, table)
        };
        let batches = TABLES
            .iter()
            .map(|t| TableBatches {
                table: t.name.to_string(),
                batches: diff("tributary_lake_batches_total", t.name) as u64,
                seconds: diff("tributary_lake_batch_seconds_total", t.name),
                messages: diff("tributary_lake_messages_total", t.name) as u64,
            })
            .filter(|b| b.batches > 0)
            .collect();
        let cpu_secs = cpu_end
            .iter()
            .map(|(k, v)| (k.clone(), v - cpu_start.get(k).copied().unwrap_or(0.0)))
            .collect();
        let mut files = Vec::new();
        for t in TABLES {
            files.push(TableFiles {
                table: t.name.to_string(),
                bronze_files: active_files(&self.lake, "bronze", t.name).await?,
                silver_files: active_files(&self.lake, "silver", t.name).await?,
            });
        }
        Ok(Report {
            target_rate: self.options.rate,
            duration_secs: load_secs,
            shards,
            written: total_written,
            write_rate: total_written as f64 / load_secs,
            cdc_rate: (end.in_kafka - first.in_kafka) as f64 / load_secs,
            ingest_rate: (end.in_silver - first.in_silver) as f64 / load_secs,
            backlog_start: first.backlog(),
            backlog_end: end.backlog(),
            catch_up_secs,
            samples,
            freshness,
            files,
            batches,
            cpu_secs,
            ingester_peak_rss_kib: peak_rss,
            batch_max_ms: self.cfg.ingest.batch_max_ms,
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "optimised"
            },
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            load_average: (load_start, load_end),
        })
    }
}

/// Customers on every shard and products in the catalog, for the load.
async fn seed(sources: &Sources) -> Result<()> {
    for (i, dsn) in sources.shards.iter().enumerate() {
        let c = connect(dsn).await?;
        let base = (i as i64 + 1) * 1_000_000_000;
        c.execute(
            "INSERT INTO customers (id, email, name, region, country, city, address, lat, lon)
             SELECT $1::int8 + g, 'bench' || ($1::int8 + g) || '@example.com', 'Bench ' || g, 'eu', 'NL',
                    'Delft', 'Street ' || g, 52.0, 4.3
             FROM generate_series(1, $2::int8) g",
            &[&base, &CUSTOMERS],
        )
        .await
        .context("seeding customers")?;
    }
    let c = connect(&sources.catalog).await?;
    c.execute(
        "INSERT INTO products (sku, name, category, price)
         SELECT 'BENCH-' || g, 'Thing ' || g, 'tools', 10.00 FROM generate_series(1, $1::int8) g",
        &[&PRODUCTS],
    )
    .await
    .context("seeding products")?;
    Ok(())
}

/// Writes `rate` row changes per second to one shard until `stop`.
async fn write_load(
    shard: usize,
    dsn: &str,
    rate: f64,
    stop: CancellationToken,
    written: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> Result<()> {
    let mut c = connect(dsn).await?;
    let base = (shard as i64 + 1) * 1_000_000_000;
    let started = Instant::now();
    let mut done: u64 = 0;
    let mut to_pay: VecDeque<i64> = VecDeque::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.is_cancelled() {
        tick.tick().await;
        let due = (rate * started.elapsed().as_secs_f64()) as u64;
        let units = (due.saturating_sub(done) / CHANGES_PER_UNIT) as i64;
        if units == 0 {
            continue;
        }
        let tx = c.transaction().await?;
        let ids: Vec<i64> = tx
            .query(
                "INSERT INTO orders (customer_id, status, total)
                 SELECT $1::int8 + 1 + (g % $2::int8), 'pending', 20.00 FROM generate_series(1, $3::int8) g
                 RETURNING id",
                &[&base, &CUSTOMERS, &units],
            )
            .await
            .context("inserting orders")?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.execute(
            "INSERT INTO order_items (order_id, product_id, quantity, unit_price, line_total)
             SELECT o, 1 + (o % $2::int8), 1, 10.00, 10.00 FROM unnest($1::int8[]) o, generate_series(1, 2)",
            &[&ids, &PRODUCTS],
        )
        .await
        .context("inserting order items")?;
        tx.commit().await?;
        let paying: Vec<i64> = to_pay.drain(..).collect();
        to_pay.extend(&ids);
        let mut changes = 3 * ids.len() as u64;
        if !paying.is_empty() {
            let tx = c.transaction().await?;
            let n = tx
                .execute(
                    "UPDATE orders SET status = 'paid', updated_at = now() WHERE id = ANY($1)",
                    &[&paying],
                )
                .await
                .context("paying orders")?;
            tx.execute(
                "INSERT INTO payments (order_id, amount, method, status)
                 SELECT o, 20.00, 'card', 'captured' FROM unnest($1::int8[]) o",
                &[&paying],
            )
            .await
            .context("inserting payments")?;
            tx.commit().await?;
            changes += 2 * n;
        }
        // Credit a whole unit per order even before it is paid, so the
        // rate stays on target.
        done += units as u64 * CHANGES_PER_UNIT;
        written.fetch_add(changes, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}

/// (messages in the table topics, messages silver committed), all time.
async fn offsets(cfg: &Config, kafka: &KafkaConfig, lake: &Lake) -> Result<(i64, i64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", "tributary-bench-lake")
        .set("log_level", "3")
        .create()?;
    let mut in_kafka = 0;
    let mut in_silver = 0;
    for t in TABLES {
        let topic = topic_of(&kafka.topic_prefix, t);
        let partitions = kafka.partitions;
        let c = &consumer;
        let ends: Vec<i64> = tokio::task::block_in_place(|| {
            (0..partitions)
                .map(|p| {
                    c.fetch_watermarks(&topic, p, Duration::from_secs(10))
                        .map(|(_, h)| h)
                })
                .collect::<Result<Vec<_>, _>>()
        })?;
        in_kafka += ends.iter().sum::<i64>();
        let (_, silver) = tributary_lake::ingest::committed_offsets(
            lake,
            &cfg.ingest.group_id,
            t.name,
            &topic,
            partitions,
        )
        .await?;
        in_silver += silver.values().sum::<i64>();
    }
    Ok((in_kafka, in_silver))
}

async fn active_files(lake: &Lake, layer: &str, table: &str) -> Result<usize> {
    Ok(match lake.open(layer, table).await? {
        Some(t) => t.get_file_uris()?.count(),
        None => 0,
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: state is 3rd,
    // utime the 14th and stime the 15th field of the line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// A `kB` field of `/proc/<pid>/status`.
fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Cumulative buckets `(upper bound, count)` of a Prometheus histogram
/// without labels; +Inf is `f64::INFINITY`.
fn parse_histogram(text: &str, name: &str) -> Result<Vec<(f64, u64)>> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let (le, count) = rest
            .split_once("\"} ")
            .with_context(|| format!("bad bucket line {line:?}"))?;
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse()?
        };
        out.push((le, count.trim().parse()?));
    }
    ensure!(
        !out.is_empty(),
        "no {name} histogram in the ingester's metrics"
    );
    Ok(out)
}

/// Percentiles of the observations between two scrapes of one histogram,
/// interpolated linearly within a bucket.
fn percentiles(start: &[(f64, u64)], end: &[(f64, u64)]) -> Freshness {
    let diff: Vec<(f64, u64)> = end
        .iter()
        .map(|(le, n)| {
            let before = start.iter().find(|(l, _)| l == le).map_or(0, |(_, n)| *n);
            (*le, n.saturating_sub(before))
        })
        .collect();
    let total = diff.last().map_or(0, |(_, n)| *n);
    let at = |q: f64| -> f64 {
        if total == 0 {
            return f64::NAN;
        }
        let rank = q * total as f64;
        let mut lower = 0.0;
        let mut below = 0u64;
        for (le, n) in &diff {
            if *n as f64 >= rank {
                if le.is_infinite() {
                    return lower;
                }
                let inside = (*n - below) as f64;
                let frac = if inside > 0.0 {
                    (rank - below as f64) / inside
                } else {
                    1.0
                };
                return lower + (le - lower) * frac;
            }
            lower = *le;
            below = *n;
        }
        lower
    };
    // The mean needs the sum, which buckets do not carry: the midpoint of
    // each bucket stands in for its observations.
    let mut mean = 0.0;
    let mut lower = 0.0;
    let mut below = 0;
    for (le, n) in &diff {
        let mid = if le.is_infinite() {
            lower
        } else {
            (lower + le) / 2.0
        };
        mean += mid * (*n - below) as f64;
        lower = *le;
        below = *n;
    }
    let max_bucket = diff
        .iter()
        .find(|(_, n)| *n == total)
        .map_or("none".into(), |(le, _)| format!("<= {le} s"));
    Freshness {
        changes: total,
        mean: if total > 0 { mean / total as f64 } else { 0.0 },
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        max_bucket,
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "bench lake: {} row changes/s target, {:.0} s, {} order shards, {} build, ingest.batch_max_ms = {}",
            self.target_rate, self.duration_secs, self.shards, self.profile, self.batch_max_ms
        )?;
        writeln!(f)?;
        writeln!(f, "| measure | value |")?;
        writeln!(f, "|---|---:|")?;
        writeln!(
            f,
            "| row changes written | {} ({:.0}/s) |",
            self.written, self.write_rate
        )?;
        writeln!(f, "| CDC into Kafka | {:.0} changes/s |", self.cdc_rate)?;
        writeln!(
            f,
            "| ingest into silver | {:.0} changes/s |",
            self.ingest_rate
        )?;
        writeln!(
            f,
            "| backlog (Kafka − silver) at start → end of load | {} → {} |",
            self.backlog_start, self.backlog_end
        )?;
        writeln!(
            f,
            "| catch-up after the load | {:.1} s |",
            self.catch_up_secs
        )?;
        let fr = &self.freshness;
        writeln!(
            f,
            "| freshness p50 / p95 / p99 (commit → silver) | {:.2} / {:.2} / {:.2} s |",
            fr.p50, fr.p95, fr.p99
        )?;
        writeln!(
            f,
            "| freshness: changes measured, max | {}, {} |",
            fr.changes, fr.max_bucket
        )?;
        writeln!(
            f,
            "| ingester peak RSS | {} |",
            self.ingester_peak_rss_kib
                .map_or("n/a".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0))
        )?;
        writeln!(f)?;
        writeln!(f, "| table | bronze files | silver files |")?;
        writeln!(f, "|---|---:|---:|")?;
        for t in &self.files {
            writeln!(
                f,
                "| {} | {} | {} |",
                t.table, t.bronze_files, t.silver_files
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "| table | batches | messages | commit seconds | ms per batch |"
        )?;
        writeln!(f, "|---|---:|---:|---:|---:|")?;
        for b in &self.batches {
            writeln!(
                f,
                "| {} | {} | {} | {:.1} | {:.0} |",
                b.table,
                b.batches,
                b.messages,
                b.seconds,
                b.seconds * 1000.0 / b.batches as f64
            )?;
        }
        writeln!(f)?;
        let cpu: Vec<String> = self
            .cpu_secs
            .iter()
            .map(|(k, v)| format!("{k} {v:.0} s"))
            .collect();
        writeln!(
            f,
            "CPU during load and catch-up ({:.0} s wall, {} cores = {:.0} CPU s): {}",
            self.duration_secs + self.catch_up_secs,
            self.cores,
            self.cores as f64 * (self.duration_secs + self.catch_up_secs),
            cpu.join(", ")
        )?;
        writeln!(
            f,
            "Load average at start / end of the load: {} / {}",
            self.load_average.0, self.load_average.1
        )?;
        writeln!(f)?;
        writeln!(f, "| t (s) | written | in Kafka | in silver | backlog |")?;
        writeln!(f, "|---:|---:|---:|---:|---:|")?;
        for s in &self.samples {
            writeln!(
                f,
                "| {:.0} | {} | {} | {} | {} |",
                s.at_secs,
                s.written,
                s.in_kafka,
                s.in_silver,
                s.backlog()
            )?;
        }
        let goal = if self.freshness.p99 <= 2.0 {
            "met"
        } else {
            "MISSED"
        };
        writeln!(f)?;
        writeln!(f, "goal p99 <= 2 s: {goal}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_within_buckets() {
        let start = vec![(0.5, 0), (1.0, 0), (2.0, 0), (f64::INFINITY, 0)];
        let end = vec![(0.5, 50), (1.0, 90), (2.0, 100), (f64::INFINITY, 100)];
        let p = percentiles(&start, &end);
        assert_eq!(p.changes, 100);
        assert!((p.p50 - 0.5).abs() < 1e-9, "{p:?}");
        assert!((p.p95 - 1.5).abs() < 1e-9, "{p:?}");
        assert!((p.p99 - 1.9).abs() < 1e-9, "{p:?}");
        let text = "x_bucket{le=\"0.5\"} 3\nx_bucket{le=\"+Inf\"} 4\nx_sum 1\n";
        assert_eq!(
            parse_histogram(text, "x").unwrap(),
            vec![(0.5, 3), (f64::INFINITY, 4)]
        );
    }
}
