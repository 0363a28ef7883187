//! `tributary bench lake`: the whole pipeline under a sustained write load.
//!
//! A stack of its own (PostgreSQL shards + catalog, tansu) in a temporary
//! state folder, the CDC reader and the ingester as child processes of the
//! `tributary` binary (as in production; [`Options::exe`]), and a load
//! generator writing straight to the order shards at a target rate of row
//! changes per second. Each unit of load is five row changes in two
//! transactions: an order with two items, and the previous tick's orders
//! paid (update + payment insert).
//!
//! Measured, from outside the ingester:
//! - freshness (Postgres commit to visible in silver) per streamed change:
//!   the ingester's `tributary_lake_freshness_seconds` histogram, read from
//!   its `/metrics` after the initial catch-up and again after the final
//!   one, so every change of the load is in the difference. A histogram
//!   keeps counts per bucket, not the latencies, so a percentile is only
//!   known to lie in a bucket: the report names that bucket (`p99 in (1.5,
//!   2] s`) and gives its upper bound as the figure (at least 99 % of the
//!   changes were in silver within it), never a value interpolated inside
//!   the bucket, which would look more precise than the data is. The mean
//!   is exact (the histogram's sum over its count);
//! - throughput: changes the reader put in Kafka (end offsets of the table
//!   topics) against changes ingest committed to silver (the `txn` offsets
//!   of the silver tables), sampled every few seconds, with the backlog
//!   between them over time;
//! - files per bronze and silver table (active files of the current version);
//! - the ingester's peak RSS (`VmHWM` of `/proc/<pid>/status`).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tributary_kafka::KafkaConfig;
use tributary_lake::Lake;
use tributary_model::domain::{TABLES, topic_of};
use tributary_stack::postgres::connect;
use tributary_stack::{Config, Platform, Sources, checks};

use crate::capacity::PipelineRates;
use crate::children::{Children, free_port, on_own_stack};
use crate::process::{cluster_cpu_secs, cpu_secs, load_average, status_kib};
use crate::scrape::{self, Histogram};
use crate::{Error, Result, pg};

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
pub struct Options {
    /// The `tributary` binary, run as `cdc run` and `lake ingest`.
    pub exe: PathBuf,
    /// Row changes per second across all shards.
    pub rate: f64,
    pub duration: Duration,
    /// Keep the temporary stack (and its lake) for inspection.
    pub keep: bool,
    /// Also run `etl run marts --follow` and measure gold's freshness.
    pub gold: bool,
}

impl Options {
    /// 5,000 row changes per second for 3 minutes.
    pub fn new(exe: PathBuf) -> Self {
        Options {
            exe,
            rate: 5000.0,
            duration: Duration::from_secs(180),
            keep: false,
            gold: false,
        }
    }
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

/// Freshness (Postgres commit to visible in silver) of the load's changes,
/// seconds, from the ingester's histogram. A percentile is known only to
/// lie in a bucket `(lower, upper]`: `p50`/`p95`/`p99` are the upper bounds
/// (at least that share of the changes were in silver within it; `null` in
/// JSON when it is the +Inf bucket), and the `*_bucket` fields name the
/// bucket.
#[derive(Clone, Debug, Serialize)]
pub struct Freshness {
    pub changes: u64,
    /// Exact: the sum of the changes' freshness over their number.
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub p50_bucket: String,
    pub p95_bucket: String,
    pub p99_bucket: String,
    /// The bucket of the stalest change, e.g. `<= 3 s`.
    pub max_bucket: String,
    /// Where `p99` stands against the goal: `met`, `MISSED`, or
    /// `undecided` when the goal lies inside p99's bucket.
    pub goal: String,
}

/// The freshness goal: 99 % of changes in silver within this many seconds.
pub const GOAL_P99_SECS: f64 = 2.0;

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
    /// With `gold`: source commit to visible in gold.
    pub gold: Option<GoldFreshness>,
    pub files: Vec<TableFiles>,
    pub batches: Vec<TableBatches>,
    /// CPU seconds used during the load and catch-up, per process.
    pub cpu_secs: BTreeMap<String, f64>,
    pub ingester_peak_rss_kib: Option<u64>,
    /// Payload bytes per change event the reader published.
    pub kafka_bytes_per_change: Option<f64>,
    /// Active bytes of bronze and of silver, before and after the load.
    pub bronze_bytes: (u64, u64),
    pub silver_bytes: (u64, u64),
    pub batch_max_ms: u64,
    pub profile: &'static str,
    pub cores: usize,
    /// `/proc/loadavg` (1, 5, 15 min) at the start and the end of the load:
    /// the machine is shared, so this says how much else ran.
    pub load_average: (String, String),
}

/// Source commit → the order visible in `gold.fct_order_status_event`,
/// built by `etl run marts --follow` beside the ingester. Each load tick's
/// newest order per shard is a probe, timed from its commit's return to the
/// moment the watcher saw the first gold version holding it (the watcher
/// looks for new versions every 100 ms: up to that much too late, never
/// too early).
#[derive(Clone, Debug, Serialize)]
pub struct GoldFreshness {
    pub probes: usize,
    pub p50_secs: f64,
    pub p99_secs: f64,
    pub max_secs: f64,
    /// Gold versions committed during the load and catch-up.
    pub builds: u64,
}

/// The fact the gold probes look for.
const GOLD_PROBE: &str = "fct_order_status_event";

type Probes = Arc<std::sync::Mutex<Vec<(i64, Instant)>>>;

/// Watches gold until `stop`, resolving probes as their orders appear;
/// returns each resolved probe's latency and the versions seen.
async fn watch_gold(
    lake: Lake,
    probes: Probes,
    stop: CancellationToken,
) -> Result<(Vec<f64>, u64)> {
    let session = tributary_query::Session::new(lake.clone())
        .await
        .map_err(|e| Error::Query {
            query: "opening a session".into(),
            source: Box::new(e),
        })?;
    let mut seen = None;
    let mut versions = 0;
    let mut latencies = Vec::new();
    while !stop.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let version = lake
            .open("gold", GOLD_PROBE)
            .await
            .map_err(|e| Error::Lake(Box::new(e)))?
            .and_then(|t| t.version());
        if version.is_none() || version == seen {
            continue;
        }
        let at = Instant::now();
        if seen.is_some() {
            versions += 1;
        }
        seen = version;
        let sql = format!(
            "SELECT order_id / 1000000000, max(order_id) FROM gold.{GOLD_PROBE} GROUP BY 1"
        );
        let query = |e| Error::Query {
            query: sql.clone(),
            source: Box::new(e),
        };
        session.refresh().await.map_err(query)?;
        let batches = session.sql(&sql).await.map_err(query)?;
        let mut max: BTreeMap<i64, i64> = BTreeMap::new();
        for b in &batches {
            let cast =
                |i: usize| arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Int64);
            let (k, v) = (cast(0)?, cast(1)?);
            let (k, v) = (
                k.as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .expect("cast"),
                v.as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .expect("cast"),
            );
            for r in 0..b.num_rows() {
                max.insert(k.value(r), v.value(r));
            }
        }
        let mut pending = probes.lock().expect("probes");
        pending.retain(|(id, committed)| {
            let visible = max.get(&(id / 1_000_000_000)).is_some_and(|m| m >= id);
            if visible {
                latencies.push(at.duration_since(*committed).as_secs_f64());
            }
            !visible
        });
    }
    Ok((latencies, versions))
}

/// Runs the benchmark on a stack of its own and removes it afterwards
/// (unless `keep`).
pub async fn run(config: &Config, options: &Options) -> Result<Report> {
    if options.rate <= 0.0 {
        return Err(Error::Options("--rate must be positive".into()));
    }
    on_own_stack(config, "lake", options.keep, async |cfg, _| {
        let mut bench = Bench::start(cfg, options).await?;
        let report = bench.measure().await;
        bench.children.stop();
        report
    })
    .await
}

struct Bench<'a> {
    platform: Platform,
    options: &'a Options,
    sources: Sources,
    kafka: KafkaConfig,
    lake: Lake,
    metrics: String,
    /// The reader's `/metrics` (payload bytes per change event).
    cdc_metrics: String,
    children: Children,
}

impl Bench<'_> {
    async fn start(cfg: Config, options: &Options) -> Result<Bench<'_>> {
        let platform = Platform::start(cfg).await?;
        let sources = platform.sources()?.clone();
        let kafka = platform.kafka()?.clone();
        tributary_oltp::migrate(&sources.topology())
            .await
            .map_err(|e| Error::Oltp(Box::new(e)))?;
        seed(&sources).await?;
        let lake = platform.lake()?;
        let port = free_port()?;
        let c = platform.config();
        let children = Children::new(
            options.exe.clone(),
            vec![
                (
                    "TRIBUTARY__STATE_DIR".to_string(),
                    c.state_dir.display().to_string(),
                ),
                (
                    "TRIBUTARY__INGEST__BATCH_MAX_MS".to_string(),
                    c.ingest.batch_max_ms.to_string(),
                ),
            ],
            c.state_dir.clone(),
        );
        let mut bench = Bench {
            platform,
            options,
            sources,
            kafka,
            lake,
            metrics: format!("127.0.0.1:{port}"),
            cdc_metrics: format!("127.0.0.1:{}", free_port()?),
            children,
        };
        let cdc_metrics = bench.cdc_metrics.clone();
        bench
            .children
            .spawn("cdc", &["cdc", "run", "--metrics", &cdc_metrics])?;
        let metrics = bench.metrics.clone();
        bench
            .children
            .spawn("ingest", &["lake", "ingest", "--metrics", &metrics])?;
        Ok(bench)
    }

    fn cfg(&self) -> &Config {
        self.platform.config()
    }

    async fn caught_up(&mut self, timeout: Duration) -> Result<()> {
        self.children.check()?;
        checks::wait_caught_up(&self.platform, timeout)
            .await
            .map_err(|e| Error::Pipeline {
                logs: format!(
                    "{} and {}",
                    self.children.log_path("cdc").display(),
                    self.children.log_path("ingest").display()
                ),
                source: Box::new(e),
            })
    }

    async fn scrape(&self) -> Result<String> {
        scrape_url(&self.metrics).await
    }

    /// Active bytes of every bronze and of every silver table.
    async fn layer_bytes(&self) -> Result<(u64, u64)> {
        let mut out = (0, 0);
        for t in TABLES {
            out.0 += active_bytes(&self.lake, "bronze", t.name).await?;
            out.1 += active_bytes(&self.lake, "silver", t.name).await?;
        }
        Ok(out)
    }
}

async fn scrape_url(addr: &str) -> Result<String> {
    let url = format!("http://{addr}/metrics");
    let fail = |source| Error::Http {
        context: format!("scraping {url}"),
        source,
    };
    reqwest::get(&url)
        .await
        .map_err(fail)?
        .text()
        .await
        .map_err(fail)
}

impl Bench<'_> {
    /// CPU seconds so far of the children and the stack's broker.
    fn cpu(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (name, pid) in self.children.pids() {
            if let Some(s) = cpu_secs(pid) {
                out.insert(name.to_string(), s);
            }
        }
        let broker_pid = self.platform.stack().and_then(|s| s.broker.pid());
        if let Some(s) = broker_pid.and_then(cpu_secs) {
            out.insert("broker".into(), s);
        }
        // Every cluster of the stack: the writes and their decoding.
        let clusters: Option<f64> = self.platform.stack().and_then(|s| {
            s.all_pg()
                .map(|pg| {
                    let pid = std::fs::read_to_string(pg.data_dir.join("postmaster.pid")).ok()?;
                    cluster_cpu_secs(pid.lines().next()?.trim().parse().ok()?)
                })
                .sum()
        });
        if let Some(s) = clusters {
            out.insert("postgres".into(), s);
        }
        out
    }

    async fn sample(&self, at: Duration, written: u64) -> Result<Sample> {
        let (in_kafka, in_silver) = offsets(self.cfg(), &self.kafka, &self.lake).await?;
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
        let probes: Option<Probes> = self.options.gold.then(Default::default);
        let gold_stop = CancellationToken::new();
        let watcher = match &probes {
            Some(p) => {
                eprintln!("gold: etl run marts --follow, waiting for its first build");
                self.children.spawn(
                    "marts",
                    &["etl", "run", "marts", "--follow", "--every", "250ms"],
                )?;
                let deadline = Instant::now() + Duration::from_secs(300);
                while self
                    .lake
                    .open("gold", GOLD_PROBE)
                    .await
                    .map_err(|e| Error::Lake(Box::new(e)))?
                    .is_none()
                {
                    self.children.check()?;
                    if Instant::now() > deadline {
                        return Err(Error::Run("no gold build within 300 s".into()));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Some(tokio::spawn(watch_gold(
                    self.lake.clone(),
                    p.clone(),
                    gold_stop.clone(),
                )))
            }
            None => None,
        };
        let metrics_start = self.scrape().await?;
        let cdc_start = scrape_url(&self.cdc_metrics).await?;
        let bytes_start = self.layer_bytes().await?;
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
        let written = Arc::new(AtomicU64::new(0));
        // The first sample before the first write: taken after the writers
        // start, it could already count a few of their changes in Kafka.
        let started = Instant::now();
        let mut samples = vec![self.sample(Duration::ZERO, 0).await?];
        for (i, dsn) in self.sources.shards.iter().enumerate() {
            let (dsn, stop, written) = (dsn.clone(), stop.clone(), written.clone());
            let probes = probes.clone();
            writers
                .spawn(async move { write_load(i, &dsn, per_shard, stop, written, probes).await });
        }
        let count = |w: &Arc<AtomicU64>| w.load(Ordering::Relaxed);
        while started.elapsed() < self.options.duration {
            let left = self.options.duration.saturating_sub(started.elapsed());
            tokio::time::sleep(left.min(SAMPLE)).await;
            self.children.check()?;
            if let Some(done) = writers.try_join_next() {
                done.map_err(|e| Error::Internal(format!("load writer: {e}")))??;
                return Err(Error::Run("a load writer stopped early".into()));
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
            done.map_err(|e| Error::Internal(format!("load writer: {e}")))??;
        }
        let load_secs = started.elapsed().as_secs_f64();
        let total_written = count(&written);
        let end = self.sample(started.elapsed(), total_written).await?;
        samples.push(end.clone());
        let peak_rss = self
            .children
            .pid("ingest")
            .and_then(|p| status_kib(p, "VmHWM"));
        let load_end = load_average();
        let drain = Instant::now();
        self.caught_up(Duration::from_secs(600)).await?;
        let catch_up_secs = drain.elapsed().as_secs_f64();
        let gold = match (watcher, &probes) {
            (Some(w), Some(p)) => {
                let total = {
                    let deadline = Instant::now() + Duration::from_secs(300);
                    while !p.lock().expect("probes").is_empty() && !w.is_finished() {
                        self.children.check()?;
                        if Instant::now() > deadline {
                            return Err(Error::Run("gold did not catch up within 300 s".into()));
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    gold_stop.cancel();
                    w.await
                        .map_err(|e| Error::Internal(format!("gold watcher: {e}")))??
                };
                let (mut l, builds) = total;
                l.sort_by(f64::total_cmp);
                (!l.is_empty()).then(|| GoldFreshness {
                    probes: l.len(),
                    p50_secs: crate::percentile(&l, 0.5),
                    p99_secs: crate::percentile(&l, 0.99),
                    max_secs: *l.last().expect("non-empty"),
                    builds,
                })
            }
            _ => None,
        };
        let metrics_end = self.scrape().await?;
        let cdc_end = scrape_url(&self.cdc_metrics).await?;
        let bytes_end = self.layer_bytes().await?;
        let cpu_end = self.cpu();
        let cdc_diff =
            |name: &str| scrape::sum(&cdc_end, name, &[]) - scrape::sum(&cdc_start, name, &[]);
        let events = cdc_diff("tributary_cdc_events_total");
        let kafka_bytes_per_change =
            (events > 0.0).then(|| cdc_diff("tributary_cdc_bytes_total") / events);
        let first = &samples[0];
        let name = "tributary_lake_freshness_seconds";
        let freshness = Freshness::of(
            &Histogram::parse(&metrics_end, name)?.since(&Histogram::parse(&metrics_start, name)?),
        );
        let diff = |name: &str, table: &str| {
            let with = [("table", table)];
            scrape::sum(&metrics_end, name, &with) - scrape::sum(&metrics_start, name, &with)
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
            gold,
            files,
            batches,
            cpu_secs,
            ingester_peak_rss_kib: peak_rss,
            kafka_bytes_per_change,
            bronze_bytes: (bytes_start.0, bytes_end.0),
            silver_bytes: (bytes_start.1, bytes_end.1),
            batch_max_ms: self.cfg().ingest.batch_max_ms,
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
        .map_err(pg("seeding customers"))?;
        // One order with its lines, so the order tables are in the lake
        // before the load (the marts need them to build at all).
        c.execute(
            "WITH o AS (INSERT INTO orders (customer_id, status, total)
                        VALUES ($1::int8 + 1, 'pending', 20.00) RETURNING id)
             INSERT INTO order_items (order_id, product_id, quantity, unit_price, line_total)
             SELECT o.id, 1, 1, 10.00, 10.00 FROM o, generate_series(1, 2)",
            &[&base],
        )
        .await
        .map_err(pg("seeding an order"))?;
    }
    let c = connect(&sources.catalog).await?;
    c.execute(
        "INSERT INTO products (sku, name, category, price)
         SELECT 'BENCH-' || g, 'Thing ' || g, 'tools', 10.00 FROM generate_series(1, $1::int8) g",
        &[&PRODUCTS],
    )
    .await
    .map_err(pg("seeding products"))?;
    Ok(())
}

/// Writes `rate` row changes per second to one shard until `stop`.
async fn write_load(
    shard: usize,
    dsn: &str,
    rate: f64,
    stop: CancellationToken,
    written: Arc<AtomicU64>,
    probes: Option<Probes>,
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
        let tx = c.transaction().await.map_err(pg("beginning"))?;
        let ids: Vec<i64> = tx
            .query(
                "INSERT INTO orders (customer_id, status, total)
                 SELECT $1::int8 + 1 + (g % $2::int8), 'pending', 20.00 FROM generate_series(1, $3::int8) g
                 RETURNING id",
                &[&base, &CUSTOMERS, &units],
            )
            .await
            .map_err(pg("inserting orders"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.execute(
            "INSERT INTO order_items (order_id, product_id, quantity, unit_price, line_total)
             SELECT o, 1 + (o % $2::int8), 1, 10.00, 10.00 FROM unnest($1::int8[]) o, generate_series(1, 2)",
            &[&ids, &PRODUCTS],
        )
        .await
        .map_err(pg("inserting order items"))?;
        tx.commit().await.map_err(pg("committing orders"))?;
        if let (Some(p), Some(id)) = (&probes, ids.iter().max()) {
            p.lock().expect("probes").push((*id, Instant::now()));
        }
        let paying: Vec<i64> = to_pay.drain(..).collect();
        to_pay.extend(&ids);
        let mut changes = 3 * ids.len() as u64;
        if !paying.is_empty() {
            let tx = c.transaction().await.map_err(pg("beginning"))?;
            let n = tx
                .execute(
                    "UPDATE orders SET status = 'paid', updated_at = now() WHERE id = ANY($1)",
                    &[&paying],
                )
                .await
                .map_err(pg("paying orders"))?;
            tx.execute(
                "INSERT INTO payments (order_id, amount, method, status)
                 SELECT o, 20.00, 'card', 'captured' FROM unnest($1::int8[]) o",
                &[&paying],
            )
            .await
            .map_err(pg("inserting payments"))?;
            tx.commit().await.map_err(pg("committing payments"))?;
            changes += 2 * n;
        }
        // Credit a whole unit per order even before it is paid, so the
        // rate stays on target.
        done += units as u64 * CHANGES_PER_UNIT;
        written.fetch_add(changes, Ordering::Relaxed);
    }
    Ok(())
}

/// (messages in the table topics, messages silver committed), all time.
async fn offsets(cfg: &Config, kafka: &KafkaConfig, lake: &Lake) -> Result<(i64, i64)> {
    let consumer: Arc<BaseConsumer> = Arc::new(
        tributary_kafka::consumer_config(kafka, "tributary-bench-lake")
            .create()
            .map_err(tributary_kafka::kafka_err("creating a consumer"))?,
    );
    let mut in_kafka = 0;
    let mut in_silver = 0;
    for t in TABLES {
        let topic = topic_of(&kafka.topic_prefix, t);
        let partitions = kafka.partitions;
        let (c, name) = (consumer.clone(), topic.clone());
        let ends = tokio::task::spawn_blocking(move || {
            tributary_kafka::end_offsets(&*c, &name, Duration::from_secs(10))
        })
        .await
        .map_err(|e| Error::Internal(format!("end offsets task: {e}")))??;
        in_kafka += ends.values().sum::<i64>();
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

/// The bytes of the active files of `layer.table` (0 before it exists).
async fn active_bytes(lake: &Lake, layer: &str, table: &str) -> Result<u64> {
    Ok(match lake.open(layer, table).await? {
        Some(t) => t
            .snapshot()
            .map_err(|source| Error::Delta {
                table: format!("{layer}.{table}"),
                source,
            })?
            .log_data()
            .into_iter()
            .map(|f| f.size().max(0) as u64)
            .sum(),
        None => 0,
    })
}

async fn active_files(lake: &Lake, layer: &str, table: &str) -> Result<usize> {
    Ok(match lake.open(layer, table).await? {
        Some(t) => t
            .get_file_uris()
            .map_err(|source| Error::Delta {
                table: format!("{layer}.{table}"),
                source,
            })?
            .count(),
        None => 0,
    })
}

impl Freshness {
    /// The freshness of the observations in `h` (the load's, between two
    /// scrapes).
    fn of(h: &Histogram) -> Freshness {
        let bucket = |q: f64| h.quantile_bucket(q);
        let upper = |q: f64| bucket(q).map_or(f64::NAN, |(_, upper)| upper);
        let named = |q: f64| {
            bucket(q).map_or("none".into(), |(lower, upper)| {
                format!("({}, {}]", bound(lower), bound(upper))
            })
        };
        let total = h.total();
        let max_bucket = h
            .buckets
            .iter()
            .find(|(_, n)| *n == total)
            .filter(|_| total > 0)
            .map_or("none".into(), |(le, _)| format!("<= {} s", bound(*le)));
        let goal = match bucket(0.99) {
            None => "none measured",
            Some((_, upper)) if upper <= GOAL_P99_SECS => "met",
            Some((lower, _)) if lower >= GOAL_P99_SECS => "MISSED",
            Some(_) => "undecided",
        };
        Freshness {
            changes: total,
            mean: if h.count > 0 {
                h.sum / h.count as f64
            } else {
                0.0
            },
            p50: upper(0.50),
            p95: upper(0.95),
            p99: upper(0.99),
            p50_bucket: named(0.50),
            p95_bucket: named(0.95),
            p99_bucket: named(0.99),
            max_bucket,
            goal: goal.into(),
        }
    }
}

/// A bucket bound as Prometheus writes it: `0.75`, `2`, `+Inf`.
fn bound(x: f64) -> String {
    if x.is_infinite() {
        "+Inf".into()
    } else {
        format!("{x}")
    }
}

impl Report {
    /// The per-core rates and bytes of this run, for `tributary capacity`
    /// (`docs/capacity-rates.toml`); `None` when a process's CPU or the
    /// reader's bytes were not measured.
    pub fn pipeline_rates(&self, source: String) -> Option<PipelineRates> {
        let changes = self.written as f64;
        let per_core = |process: &str| {
            let secs = *self.cpu_secs.get(process)?;
            (secs > 0.0).then(|| (changes / secs).round())
        };
        let messages: u64 = self.batches.iter().map(|b| b.messages).sum();
        let grown = |(start, end): (u64, u64)| end.saturating_sub(start) as f64 / changes;
        Some(PipelineRates {
            source,
            changes_per_order: CHANGES_PER_UNIT as f64,
            postgres_changes_per_core_second: per_core("postgres")?,
            cdc_changes_per_core_second: per_core("cdc")?,
            ingest_changes_per_core_second: per_core("ingest")?,
            broker_changes_per_core_second: per_core("broker")?,
            kafka_bytes_per_change: (self.kafka_bytes_per_change? * 10.0).round() / 10.0,
            bronze_bytes_per_change: (grown(self.bronze_bytes) * 10.0).round() / 10.0,
            silver_bytes_per_change: (grown(self.silver_bytes) * 10.0).round() / 10.0,
            table_share: self
                .batches
                .iter()
                .filter(|_| messages > 0)
                .map(|b| {
                    let share = b.messages as f64 / messages as f64;
                    (b.table.clone(), (share * 1000.0).round() / 1000.0)
                })
                .collect(),
        })
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
            "| freshness p50 / p95 / p99 (commit → silver), the histogram bucket each lies in | {} / {} / {} s |",
            fr.p50_bucket, fr.p95_bucket, fr.p99_bucket
        )?;
        writeln!(f, "| freshness mean | {:.2} s |", fr.mean)?;
        if let Some(g) = &self.gold {
            writeln!(
                f,
                "| gold freshness p50 / p99 / max (commit → fact in gold, marts --follow) | {:.2} / {:.2} / {:.2} s ({} probes, {} gold builds) |",
                g.p50_secs, g.p99_secs, g.max_secs, g.probes, g.builds
            )?;
        }
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
        if let Some(b) = self.kafka_bytes_per_change {
            writeln!(f, "| Kafka payload per change event | {b:.0} B |")?;
        }
        let grown = |(start, end): (u64, u64)| {
            end.saturating_sub(start) as f64 / self.written.max(1) as f64
        };
        writeln!(
            f,
            "| lake growth per change (active files): bronze / silver | {:.0} / {:.0} B |",
            grown(self.bronze_bytes),
            grown(self.silver_bytes)
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
        writeln!(f)?;
        writeln!(
            f,
            "goal p99 <= {GOAL_P99_SECS} s: {} (p99 in {} s)",
            self.freshness.goal, self.freshness.p99_bucket
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(buckets: &[(f64, u64)], sum: f64) -> Histogram {
        Histogram {
            buckets: buckets.to_vec(),
            sum,
            count: buckets.last().map_or(0, |b| b.1),
        }
    }

    #[test]
    fn percentiles_are_buckets_not_interpolations() {
        let h = histogram(
            &[
                (0.5, 50),
                (1.0, 90),
                (2.0, 100),
                (3.0, 100),
                (f64::INFINITY, 100),
            ],
            61.5,
        );
        let f = Freshness::of(&h);
        assert_eq!(f.changes, 100);
        assert!((f.mean - 0.615).abs() < 1e-9, "{f:?}");
        assert_eq!((f.p50, f.p95, f.p99), (0.5, 2.0, 2.0), "{f:?}");
        assert_eq!(f.p50_bucket, "(0, 0.5]");
        assert_eq!(f.p95_bucket, "(1, 2]");
        assert_eq!(f.p99_bucket, "(1, 2]");
        assert_eq!(f.max_bucket, "<= 2 s");
        assert_eq!(f.goal, "met");
    }

    #[test]
    fn the_goal_is_missed_or_undecided_only_by_what_the_buckets_say() {
        let missed = histogram(
            &[(1.0, 90), (2.0, 98), (5.0, 100), (f64::INFINITY, 100)],
            0.0,
        );
        let f = Freshness::of(&missed);
        assert_eq!(
            (f.goal.as_str(), f.p99_bucket.as_str()),
            ("MISSED", "(2, 5]")
        );
        // Buckets that straddle the goal cannot tell.
        let straddles = histogram(&[(1.0, 90), (2.5, 100), (f64::INFINITY, 100)], 0.0);
        let f = Freshness::of(&straddles);
        assert_eq!((f.goal.as_str(), f.p99), ("undecided", 2.5));
        let stale = histogram(&[(1.0, 0), (f64::INFINITY, 10)], 0.0);
        let f = Freshness::of(&stale);
        assert_eq!(
            (f.p99_bucket.as_str(), f.max_bucket.as_str()),
            ("(1, +Inf]", "<= +Inf s")
        );
        assert!(f.p99.is_infinite());
        let none = Freshness::of(&histogram(&[(1.0, 0), (f64::INFINITY, 0)], 0.0));
        assert_eq!((none.changes, none.goal.as_str()), (0, "none measured"));
        assert!(none.p99.is_nan());
    }
}
