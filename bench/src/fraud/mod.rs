//! `tributary bench fraud`: the fraud detector on a stack of its own, under
//! labelled traffic, against the labels and against a batch oracle.
//!
//! A stack of its own (PostgreSQL shards + catalog, tansu) in a temporary
//! state folder; the order service, the CDC reader, the ingester and the
//! detector run as child processes of the `tributary` binary
//! ([`Options::exe`]: `oltp serve`, `cdc run`, `lake ingest`, `fraud run`),
//! and the load generator ([`tributary_oltp::run_load`], browsing, with
//! labelled incidents) drives the order service in this process.
//!
//! Measured:
//! - **precision and recall per rule** against the labels file (which the
//!   detector never reads; [`score`]);
//! - **equality with a batch oracle**: the rules written again as SQL over
//!   bronze and the clickstream ([`oracle`]) give exactly the alert ids of
//!   `gold.fraud_alerts`; the bench fails otherwise;
//! - **latency** from source commit to alert, exact, from the alert rows
//!   (`detected_at - source_commit_ts`), at the rate achieved;
//! - **kills**: the detector SIGKILLed `kills` times during the load and
//!   restarted at once; afterwards no alert id twice in
//!   `gold.fraud_alerts`, and still equality with the oracle;
//! - **idle shard**: after the load, `idle` seconds in which only shard 0
//!   is written (a customer row updated a few times a second) and shard 1
//!   is silent; the detector's watermark lag from its `/metrics` shows time
//!   still moves;
//! - **memory per key**, in process, without the stack ([`memory`]).

pub mod memory;
pub mod oracle;
pub mod score;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int32Type, Int64Type};
use rdkafka::Offset;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tributary_kafka::KafkaConfig;
use tributary_live::fraud::rules::Rules;
use tributary_model::clickstream::{ClickEvent, ClickKind, clickstream_topic};
use tributary_model::domain::TABLES;
use tributary_stack::postgres::connect;
use tributary_stack::{Config, Platform, checks};

use crate::children::{Children, free_port, on_own_stack};
use crate::process::load_average;
use crate::scrape;
use crate::{Error, Result, percentile, pg};
use memory::Memory;
use oracle::{Click, Inputs};
use score::{AlertRow, BenignScore, RuleScore};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The `tributary` binary, run as `oltp serve`, `cdc run`, `lake
    /// ingest` and `fraud run`.
    pub exe: PathBuf,
    /// Requests per second of the load generator (an order is about one
    /// request in four of browsing traffic).
    pub rate: f64,
    pub duration: Duration,
    /// Share of planned orders replaced by a labelled incident.
    pub fraud_rate: f64,
    /// SIGKILLs of the detector during the load.
    pub kills: usize,
    /// How long shard 1 stays silent after the load.
    pub idle: Duration,
    /// Customers fed to the in-process detector for memory per key.
    pub memory_customers: usize,
    pub seed: u64,
    /// Keep the temporary stack (and its lake) for inspection.
    pub keep: bool,
}

impl Options {
    pub fn new(exe: PathBuf) -> Self {
        Options {
            exe,
            rate: 100.0,
            duration: Duration::from_secs(120),
            fraud_rate: 0.05,
            kills: 2,
            idle: Duration::from_secs(60),
            memory_customers: 1_000_000,
            seed: 42,
            keep: false,
        }
    }
}

/// The knobs in force, as the children got them.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub cdc_status_interval_ms: u64,
    pub cdc_heartbeat_interval_ms: u64,
    pub checkpoint_interval_ms: u64,
    pub max_out_of_orderness_ms: u64,
    pub idle_timeout_ms: u64,
    pub allowed_lateness_ms: u64,
    pub profile: &'static str,
    pub cores: usize,
    /// `/proc/loadavg` at the start and the end of the load.
    pub load_average: (String, String),
}

#[derive(Clone, Debug, Serialize)]
pub struct Traffic {
    pub target_requests_per_sec: f64,
    pub duration_secs: f64,
    pub requests: u64,
    pub errors: u64,
    /// Orders committed during the load (bronze, `op = c`).
    pub orders: u64,
    pub orders_per_sec: f64,
    /// Row changes of every table committed during the load.
    pub row_changes: u64,
    pub row_changes_per_sec: f64,
    pub clicks: u64,
    pub incidents: BTreeMap<String, u64>,
    pub incidents_incomplete: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct OracleCheck {
    pub detector_alerts: usize,
    pub oracle_alerts: usize,
    pub equal: bool,
    /// First ids only the detector raised.
    pub only_detector: Vec<String>,
    /// First ids only the oracle gives.
    pub only_oracle: Vec<String>,
    /// Rows of `gold.fraud_alerts` minus distinct ids: 0 when none doubled.
    pub duplicate_rows: usize,
    /// Clickstream events the detector sent to the late path (left out of
    /// the oracle).
    pub late_clicks: usize,
}

/// Seconds from source commit to alert over the alert rows.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub alerts: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub over_1s: usize,
    /// The same over the alerts the first detector process raised (before
    /// any kill): replays after a kill are raised again later.
    pub before_kills_p50: Option<f64>,
    pub before_kills_p99: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Idle {
    pub secs: f64,
    /// Rows shard 0 changed meanwhile.
    pub shard0_changes: u64,
    pub samples: usize,
    /// Max of `tributary_stream_watermark_lag_seconds{job="fraud"}` over
    /// the phase (the first `idle_timeout` included, while the silent
    /// clickstream partitions still hold time).
    pub max_lag: f64,
    /// The same after the first idle timeout + 1 s of the phase.
    pub settled_max_lag: Option<f64>,
    /// `heartbeat interval + 1 s`.
    pub settled_bound: f64,
    /// `idle timeout + 1 s`.
    pub bound: f64,
    /// How far `tributary_live_watermark_timestamp_seconds` moved.
    pub watermark_advance_secs: f64,
    /// Where the lag was read: the detector does not export
    /// `tributary_stream_watermark_lag_seconds` (see BENCHMARKS.md), so it
    /// is computed from the watermark gauge.
    pub lag_from: &'static str,
}

/// The benchmark's result.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub settings: Settings,
    pub traffic: Traffic,
    pub rules: Vec<RuleScore>,
    pub benign: Vec<BenignScore>,
    pub oracle: OracleCheck,
    pub latency: Latency,
    /// Seconds into the load at which the detector was SIGKILLed.
    pub kills_at_secs: Vec<f64>,
    pub idle: Option<Idle>,
    pub memory: Option<Memory>,
}

/// The goal for precision and recall per rule.
pub const GOAL_SCORE: f64 = 0.95;

impl Report {
    /// The oracle agrees and no alert id is doubled.
    pub fn consistent(&self) -> bool {
        self.oracle.equal && self.oracle.duplicate_rows == 0
    }
}

/// Runs the benchmark on a stack of its own and removes it afterwards
/// (unless `keep`).
pub async fn run(config: &Config, options: &Options) -> Result<Report> {
    if !(options.rate > 0.0 && options.rate.is_finite()) {
        return Err(Error::Options("--rate must be positive".into()));
    }
    if !(0.0..=1.0).contains(&options.fraud_rate) || options.fraud_rate == 0.0 {
        return Err(Error::Options(
            "--fraud-rate must be above 0 and at most 1".into(),
        ));
    }
    let memory = if options.memory_customers > 0 {
        eprintln!(
            "memory: {} customers into an in-process detector",
            options.memory_customers
        );
        let n = options.memory_customers;
        Some(
            tokio::task::spawn_blocking(move || memory::measure(n))
                .await
                .map_err(|e| Error::Internal(format!("memory task: {e}")))??,
        )
    } else {
        None
    };
    on_own_stack(config, "fraud", options.keep, async |cfg, dir| {
        let mut bench = Bench::start(cfg, options, dir.join("labels.jsonl")).await?;
        let report = bench.measure(memory).await;
        bench.children.stop();
        report
    })
    .await
}

struct Bench<'a> {
    platform: Platform,
    options: &'a Options,
    kafka: KafkaConfig,
    oltp: String,
    metrics: String,
    labels: PathBuf,
    children: Children,
}

impl Bench<'_> {
    async fn start(cfg: Config, options: &Options, labels: PathBuf) -> Result<Bench<'_>> {
        let platform = Platform::start(cfg).await?;
        let kafka = platform.kafka()?.clone();
        let c = platform.config();
        let oltp = format!("127.0.0.1:{}", free_port()?);
        let env = vec![
            (
                "TRIBUTARY__STATE_DIR".to_string(),
                c.state_dir.display().to_string(),
            ),
            ("TRIBUTARY__OLTP__LISTEN".into(), oltp.clone()),
            (
                "TRIBUTARY__INGEST__BATCH_MAX_MS".into(),
                c.ingest.batch_max_ms.to_string(),
            ),
            (
                "TRIBUTARY__CDC__STATUS_INTERVAL_MS".into(),
                c.cdc.status_interval_ms.to_string(),
            ),
            (
                "TRIBUTARY__CDC__HEARTBEAT_INTERVAL_MS".into(),
                c.cdc.heartbeat_interval_ms.to_string(),
            ),
            (
                "TRIBUTARY__LIVE__ENGINE__CHECKPOINT_INTERVAL_MS".into(),
                c.live.engine.checkpoint_interval_ms.to_string(),
            ),
            (
                "TRIBUTARY__LIVE__ENGINE__IDLE_TIMEOUT_MS".into(),
                c.live.engine.idle_timeout_ms.to_string(),
            ),
            (
                "TRIBUTARY__LIVE__ENGINE__MAX_OUT_OF_ORDERNESS_MS".into(),
                c.live.engine.max_out_of_orderness_ms.to_string(),
            ),
            (
                "TRIBUTARY__LIVE__ENGINE__ALLOWED_LATENESS_MS".into(),
                c.live.engine.allowed_lateness_ms.to_string(),
            ),
        ];
        let children = Children::new(options.exe.clone(), env, c.state_dir.clone());
        let mut bench = Bench {
            platform,
            options,
            kafka,
            oltp,
            metrics: format!("127.0.0.1:{}", free_port()?),
            labels,
            children,
        };
        bench.children.spawn("oltp", &["oltp", "serve"])?;
        let url = format!("http://{}", bench.oltp);
        bench.children.wait_http(&url).await?;
        bench.children.spawn("cdc", &["cdc", "run"])?;
        bench.children.spawn("ingest", &["lake", "ingest"])?;
        let metrics = bench.metrics.clone();
        bench
            .children
            .spawn("fraud", &["fraud", "run", "--metrics", &metrics])?;
        Ok(bench)
    }

    fn cfg(&self) -> &Config {
        self.platform.config()
    }

    async fn scrape(&self) -> Option<String> {
        let url = format!("http://{}/metrics", self.metrics);
        reqwest::get(&url).await.ok()?.text().await.ok()
    }

    /// The detector's watermark (whole seconds) and its lag, from its
    /// metrics: the engine's lag gauge when the detector exports it, else
    /// the wall clock minus the watermark gauge (which is in whole seconds,
    /// so that lag is over by less than a second). The flag says which.
    async fn watermark(&self) -> Option<(f64, f64, bool)> {
        let text = self.scrape().await?;
        let w = scrape::samples(&text, "tributary_live_watermark_timestamp_seconds")
            .into_iter()
            .find(|s| s.label("job") == Some("fraud"))?
            .value;
        let lag = scrape::samples(&text, "tributary_stream_watermark_lag_seconds")
            .into_iter()
            .find(|s| s.label("job") == Some("fraud"))
            .map(|s| s.value);
        Some(match lag {
            Some(lag) => (w, lag, true),
            None => (w, (now_us() as f64 / 1e6 - w).max(0.0), false),
        })
    }

    async fn measure(&mut self, memory: Option<Memory>) -> Result<Report> {
        let engine = self.cfg().live.engine.clone();
        let cdc = self.cfg().cdc.clone();
        let load_start_avg = load_average();
        eprintln!(
            "load: {} requests/s for {:?}, fraud rate {}, {} detector kills",
            self.options.rate, self.options.duration, self.options.fraud_rate, self.options.kills
        );
        let stop = CancellationToken::new();
        let load_config = tributary_oltp::LoadConfig {
            base_url: format!("http://{}", self.oltp),
            rate: self.options.rate,
            duration: self.options.duration,
            concurrency: ((self.options.rate / 10.0) as usize).clamp(8, 64),
            seed: self.options.seed,
            browse: true,
            fraud_rate: self.options.fraud_rate,
            labels_path: Some(self.labels.clone()),
        };
        let load_start_us = now_us();
        let started = Instant::now();
        let mut load = tokio::spawn(tributary_oltp::run_load(load_config, stop.clone()));
        let duration = self.options.duration;
        let kills = self.options.kills;
        let kill_times: Vec<Duration> = (1..=kills)
            .map(|k| duration.mul_f64(k as f64 / (kills + 1) as f64))
            .collect();
        let mut kills_at = Vec::new();
        let load_report = loop {
            tokio::select! {
                done = &mut load => {
                    break done
                        .map_err(|e| Error::Internal(format!("load task: {e}")))?
                        .map_err(|e| Error::Oltp(Box::new(e)))?;
                }
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if let Err(e) = self.children.check() {
                        stop.cancel();
                        return Err(e);
                    }
                    if kill_times.get(kills_at.len()).is_some_and(|t| started.elapsed() >= *t) {
                        eprintln!("  {:>6.1}s SIGKILL the detector, restarting it", started.elapsed().as_secs_f64());
                        kills_at.push(started.elapsed().as_secs_f64());
                        self.children.kill_and_restart("fraud")?;
                    }
                }
            }
        };
        let load_secs = started.elapsed().as_secs_f64();
        let load_end_us = now_us();
        let load_end_avg = load_average();
        eprintln!("load done in {load_secs:.1} s: {load_report}");

        let idle = if self.options.idle > Duration::ZERO {
            Some(self.idle_phase(&engine, &cdc).await?)
        } else {
            None
        };

        eprintln!("waiting for bronze to catch up");
        checks::wait_caught_up(&self.platform, Duration::from_secs(300))
            .await
            .map_err(|e| Error::Pipeline {
                logs: format!(
                    "{} and {}",
                    self.children.log_path("cdc").display(),
                    self.children.log_path("ingest").display()
                ),
                source: Box::new(e),
            })?;
        // The detector has everything once its watermark passed now.
        let caught = now_us() / 1_000_000;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            self.children.check()?;
            if self
                .watermark()
                .await
                .is_some_and(|(w, _, _)| w as i64 > caught)
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Run(format!(
                    "the detector's watermark did not pass the end of the load; see {}",
                    self.children.log_path("fraud").display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Its output commits with the next checkpoint.
        tokio::time::sleep(Duration::from_millis(
            2 * engine.checkpoint_interval_ms + 500,
        ))
        .await;

        let lake = self.platform.lake()?;
        let session = tributary_query::Session::new(lake)
            .await
            .map_err(crate::query("opening a session"))?;
        let inputs = self.oracle_inputs(&session).await?;
        let rules = Rules::defaults();
        let oracle_ids = oracle::alert_ids(&inputs, &rules).await?;
        let mut alerts = read_alerts(&session).await?;
        let mut detector_ids: BTreeSet<String> = alerts.iter().map(|a| a.id.clone()).collect();
        // A detector slow to commit gets a little more time.
        let until = Instant::now() + Duration::from_secs(20);
        while detector_ids != oracle_ids && Instant::now() < until {
            tokio::time::sleep(Duration::from_secs(1)).await;
            alerts = read_alerts(&session).await?;
            detector_ids = alerts.iter().map(|a| a.id.clone()).collect();
        }
        let first = |s: BTreeSet<&String>| s.into_iter().take(10).cloned().collect::<Vec<_>>();
        let oracle = OracleCheck {
            detector_alerts: detector_ids.len(),
            oracle_alerts: oracle_ids.len(),
            equal: detector_ids == oracle_ids,
            only_detector: first(detector_ids.difference(&oracle_ids).collect()),
            only_oracle: first(oracle_ids.difference(&detector_ids).collect()),
            duplicate_rows: alerts.len() - detector_ids.len(),
            late_clicks: inputs.late_clicks.len(),
        };

        let labels = score::read_labels(&self.labels)?;
        let (rule_scores, benign) = score::score(&labels, &alerts);
        let first_kill_us = kills_at.first().map(|s| load_start_us + (s * 1e6) as i64);
        let latency = latency(&alerts, first_kill_us);
        let (orders, row_changes) = committed(&session, load_start_us, load_end_us).await?;
        let clicks = inputs.clicks.len() as u64;
        Ok(Report {
            settings: Settings {
                cdc_status_interval_ms: cdc.status_interval_ms,
                cdc_heartbeat_interval_ms: cdc.heartbeat_interval_ms,
                checkpoint_interval_ms: engine.checkpoint_interval_ms,
                max_out_of_orderness_ms: engine.max_out_of_orderness_ms,
                idle_timeout_ms: engine.idle_timeout_ms,
                allowed_lateness_ms: engine.allowed_lateness_ms,
                profile: if cfg!(debug_assertions) {
                    "debug"
                } else {
                    "optimised"
                },
                cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
                load_average: (load_start_avg, load_end_avg),
            },
            traffic: Traffic {
                target_requests_per_sec: self.options.rate,
                duration_secs: load_secs,
                requests: load_report.requests,
                errors: load_report.errors,
                orders,
                orders_per_sec: orders as f64 / load_secs,
                row_changes,
                row_changes_per_sec: row_changes as f64 / load_secs,
                clicks,
                incidents: load_report.incidents.clone(),
                incidents_incomplete: load_report.incidents_incomplete,
            },
            rules: rule_scores,
            benign,
            oracle,
            latency,
            kills_at_secs: kills_at,
            idle,
            memory,
        })
    }

    /// Shard 1 silent, shard 0 written a few times a second, for `idle`;
    /// the detector's watermark lag sampled meanwhile.
    async fn idle_phase(
        &mut self,
        engine: &tributary_live::runtime::RuntimeConfig,
        cdc: &tributary_cdc::CdcConfig,
    ) -> Result<Idle> {
        let idle = self.options.idle;
        eprintln!("idle: shard 1 silent for {idle:?}, shard 0 written");
        let dsn = self.platform.sources()?.shards[0].clone();
        let stop = CancellationToken::new();
        let writer = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let c = connect(&dsn).await?;
                let mut changed = 0u64;
                while !stop.is_cancelled() {
                    changed += c
                        .execute(
                            "UPDATE customers SET city = city WHERE id = (SELECT min(id) FROM customers)",
                            &[],
                        )
                        .await
                        .map_err(pg("updating a customer of shard 0"))?;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok::<u64, Error>(changed)
            })
        };
        let started = Instant::now();
        let settle = Duration::from_millis(engine.idle_timeout_ms + 1000);
        let (mut max_lag, mut settled_max, mut samples) = (0.0f64, None::<f64>, 0);
        let mut first_w = None;
        let mut last_w = None;
        let mut lag_gauge = false;
        while started.elapsed() < idle {
            tokio::time::sleep(Duration::from_millis(250)).await;
            self.children.check()?;
            if let Some((w, lag, gauge)) = self.watermark().await {
                samples += 1;
                lag_gauge = gauge;
                first_w.get_or_insert(w);
                last_w = Some(w);
                max_lag = max_lag.max(lag);
                if started.elapsed() >= settle {
                    settled_max = Some(settled_max.map_or(lag, |m: f64| m.max(lag)));
                }
            }
        }
        stop.cancel();
        let shard0_changes = writer
            .await
            .map_err(|e| Error::Internal(format!("idle writer: {e}")))??;
        Ok(Idle {
            secs: started.elapsed().as_secs_f64(),
            shard0_changes,
            samples,
            max_lag,
            settled_max_lag: settled_max,
            settled_bound: cdc.heartbeat_interval_ms as f64 / 1000.0 + 1.0,
            bound: engine.idle_timeout_ms as f64 / 1000.0 + 1.0,
            watermark_advance_secs: last_w.zip(first_w).map_or(0.0, |(l, f)| l - f),
            lag_from: if lag_gauge {
                "tributary_stream_watermark_lag_seconds"
            } else {
                "now - tributary_live_watermark_timestamp_seconds (whole seconds: up to 1 s over)"
            },
        })
    }

    async fn oracle_inputs(&self, session: &tributary_query::Session) -> Result<Inputs> {
        let bronze = |table: &str| {
            format!(
                "SELECT event_id, op, CAST(commit_ts AS BIGINT) AS commit_us, after FROM bronze.{table}"
            )
        };
        let q =
            |sql: String| async move { session.sql(&sql).await.map_err(crate::query(sql.clone())) };
        let orders = q(bronze("orders")).await?;
        let payments = q(bronze("payments")).await?;
        let customers = q(bronze("customers")).await?;
        let mut late_clicks = HashSet::new();
        let tables = session
            .refresh()
            .await
            .map_err(crate::query("listing the lake"))?;
        if tables
            .iter()
            .any(|(l, t)| *l == "gold" && t == tributary_live::sink::late::TABLE)
        {
            for b in q(format!(
                "SELECT partition, \"offset\" FROM gold.{} WHERE job = 'fraud' AND topic LIKE '%.events.clickstream'",
                tributary_live::sink::late::TABLE
            ))
            .await?
            {
                let p = b
                    .column(0)
                    .as_primitive_opt::<Int32Type>()
                    .ok_or_else(|| Error::Internal("late partition is not Int32".into()))?;
                let o = oracle::int64(&b, 1)?;
                for i in 0..b.num_rows() {
                    late_clicks.insert((p.value(i), o.value(i)));
                }
            }
        }
        let kafka = self.kafka.clone();
        let clicks = tokio::task::spawn_blocking(move || read_clicks(&kafka))
            .await
            .map_err(|e| Error::Internal(format!("clickstream task: {e}")))??;
        Ok(Inputs {
            orders,
            payments,
            customers,
            clicks,
            late_clicks,
        })
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The whole clickstream topic, every message once.
fn read_clicks(kafka: &KafkaConfig) -> Result<Vec<Click>> {
    let topic = clickstream_topic(&kafka.topic_prefix);
    let consumer: BaseConsumer = tributary_kafka::consumer_config(kafka, "tributary-bench-fraud")
        .create()
        .map_err(tributary_kafka::kafka_err("creating a consumer"))?;
    let ends = tributary_kafka::end_offsets(&consumer, &topic, Duration::from_secs(10))?;
    let mut assignment = rdkafka::TopicPartitionList::new();
    for (p, end) in &ends {
        if *end > 0 {
            assignment
                .add_partition_offset(&topic, *p, Offset::Beginning)
                .map_err(crate::kafka("assigning the clickstream"))?;
        }
    }
    let mut clicks = Vec::new();
    if assignment.count() == 0 {
        return Ok(clicks);
    }
    consumer
        .assign(&assignment)
        .map_err(crate::kafka("assigning the clickstream"))?;
    let mut next: BTreeMap<i32, i64> = ends.keys().map(|p| (*p, 0)).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while next.iter().any(|(p, n)| *n < ends[p]) {
        if Instant::now() > deadline {
            return Err(Error::Run(format!(
                "reading {topic}: stuck at {next:?} of {ends:?}"
            )));
        }
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m.map_err(crate::kafka("reading the clickstream"))?;
        next.insert(m.partition(), m.offset() + 1);
        if m.offset() >= ends[&m.partition()] {
            continue;
        }
        let Some(payload) = m.payload() else { continue };
        let ev = ClickEvent::from_json(payload)?;
        clicks.push(Click {
            event_id: ev.event_id,
            add_to_cart: ev.kind == ClickKind::AddToCart,
            customer_id: ev.customer_id,
            ts_us: ev.ts_us,
            partition: m.partition(),
            offset: m.offset(),
        });
    }
    Ok(clicks)
}

fn utf8(b: &RecordBatch, i: usize) -> Result<arrow::array::StringArray> {
    let c = arrow::compute::cast(b.column(i), &DataType::Utf8)?;
    Ok(c.as_string::<i32>().clone())
}

/// Every row of `gold.fraud_alerts` (none before the first alert).
pub async fn read_alerts(session: &tributary_query::Session) -> Result<Vec<AlertRow>> {
    let sql = "SELECT alert_id, rule, customer_id, CAST(source_commit_ts AS BIGINT), \
               CAST(detected_at AS BIGINT) FROM gold.fraud_alerts";
    let batches = match session.sql(sql).await {
        Ok(b) => b,
        Err(tributary_query::Error::TableNotFound(_)) => return Ok(Vec::new()),
        Err(e) => return Err(crate::query(sql)(e)),
    };
    let mut out = Vec::new();
    for b in &batches {
        let (id, rule) = (utf8(b, 0)?, utf8(b, 1)?);
        let (cid, commit, detected) = (
            oracle::int64(b, 2)?,
            oracle::int64(b, 3)?,
            oracle::int64(b, 4)?,
        );
        for i in 0..b.num_rows() {
            out.push(AlertRow {
                id: id.value(i).to_string(),
                rule: rule.value(i).to_string(),
                customer_id: cid.value(i),
                source_commit_us: commit.value(i),
                detected_at_us: detected.value(i),
            });
        }
    }
    Ok(out)
}

/// Orders created and row changes of every table committed in `[from, to]`.
async fn committed(
    session: &tributary_query::Session,
    from_us: i64,
    to_us: i64,
) -> Result<(u64, u64)> {
    let count = |sql: String| async move {
        let b = session.sql(&sql).await.map_err(crate::query(sql.clone()))?;
        Ok::<u64, Error>(
            b.first()
                .and_then(|b| b.column(0).as_primitive_opt::<Int64Type>())
                .map_or(0, |c| c.value(0) as u64),
        )
    };
    let during = format!("CAST(commit_ts AS BIGINT) BETWEEN {from_us} AND {to_us}");
    let orders = count(format!(
        "SELECT count(*) FROM bronze.orders WHERE op = 'c' AND {during}"
    ))
    .await?;
    let mut changes = 0;
    let listed = session
        .refresh()
        .await
        .map_err(crate::query("listing the lake"))?;
    for t in TABLES {
        if listed.iter().any(|(l, n)| *l == "bronze" && n == t.name) {
            changes += count(format!(
                "SELECT count(*) FROM bronze.{} WHERE op <> 'r' AND {during}",
                t.name
            ))
            .await?;
        }
    }
    Ok((orders, changes))
}

fn latency(alerts: &[AlertRow], first_kill_us: Option<i64>) -> Latency {
    let secs = |a: &AlertRow| (a.detected_at_us - a.source_commit_us) as f64 / 1e6;
    let mut all: Vec<f64> = alerts.iter().map(secs).collect();
    all.sort_by(f64::total_cmp);
    let mut early: Vec<f64> = alerts
        .iter()
        .filter(|a| first_kill_us.is_none_or(|k| a.detected_at_us < k))
        .map(secs)
        .collect();
    early.sort_by(f64::total_cmp);
    Latency {
        alerts: all.len(),
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
        max: all.last().copied().unwrap_or(f64::NAN),
        over_1s: all.iter().filter(|s| **s > 1.0).count(),
        before_kills_p50: (!early.is_empty()).then(|| percentile(&early, 0.50)),
        before_kills_p99: (!early.is_empty()).then(|| percentile(&early, 0.99)),
    }
}

fn ratio(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.3}"))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        let t = &self.traffic;
        writeln!(
            f,
            "bench fraud: {} requests/s target for {:.0} s, {} build, {} cores; cdc.status_interval_ms = {}, cdc.heartbeat_interval_ms = {}, live checkpoint {} ms, out-of-orderness {} ms, idle timeout {} ms, allowed lateness {} ms",
            t.target_requests_per_sec,
            t.duration_secs,
            s.profile,
            s.cores,
            s.cdc_status_interval_ms,
            s.cdc_heartbeat_interval_ms,
            s.checkpoint_interval_ms,
            s.max_out_of_orderness_ms,
            s.idle_timeout_ms,
            s.allowed_lateness_ms
        )?;
        writeln!(
            f,
            "Load average at start / end of the load: {} / {}",
            s.load_average.0, s.load_average.1
        )?;
        writeln!(f)?;
        writeln!(f, "| traffic | value |")?;
        writeln!(f, "|---|---:|")?;
        writeln!(f, "| requests (errors) | {} ({}) |", t.requests, t.errors)?;
        writeln!(
            f,
            "| orders committed | {} ({:.1}/s) |",
            t.orders, t.orders_per_sec
        )?;
        writeln!(
            f,
            "| row changes committed | {} ({:.1}/s) |",
            t.row_changes, t.row_changes_per_sec
        )?;
        writeln!(f, "| clickstream events | {} |", t.clicks)?;
        let incidents: Vec<String> = t
            .incidents
            .iter()
            .map(|(p, n)| format!("{p} {n}"))
            .collect();
        writeln!(
            f,
            "| incidents labelled | {} (incomplete, left out of precision: {}) |",
            incidents.join(", "),
            t.incidents_incomplete
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "| rule | incidents | detected | recall | alerts | on its pattern | on incomplete incidents | precision | false positives |"
        )?;
        writeln!(f, "|---|---:|---:|---:|---:|---:|---:|---:|---|")?;
        for r in &self.rules {
            let fp: Vec<String> = r
                .false_positives
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            writeln!(
                f,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.rule,
                r.incidents,
                r.detected,
                ratio(r.recall),
                r.alerts,
                r.true_alerts,
                r.on_incomplete,
                ratio(r.precision),
                if fp.is_empty() {
                    "none".into()
                } else {
                    fp.join(", ")
                }
            )?;
        }
        let benign: Vec<String> = self
            .benign
            .iter()
            .map(|b| format!("{} {}/{}", b.pattern, b.alerted, b.incidents))
            .collect();
        writeln!(
            f,
            "Benign look-alikes with any alert: {}",
            if benign.is_empty() {
                "none ran".into()
            } else {
                benign.join(", ")
            }
        )?;
        writeln!(f)?;
        let o = &self.oracle;
        writeln!(
            f,
            "Oracle (SQL over bronze + clickstream): {} alert ids; detector (gold.fraud_alerts): {} ids, {} rows doubled; {}",
            o.oracle_alerts,
            o.detector_alerts,
            o.duplicate_rows,
            if o.equal { "EQUAL" } else { "DIFFERENT" }
        )?;
        if !o.only_detector.is_empty() {
            writeln!(f, "  only the detector: {}", o.only_detector.join(" "))?;
        }
        if !o.only_oracle.is_empty() {
            writeln!(f, "  only the oracle: {}", o.only_oracle.join(" "))?;
        }
        writeln!(
            f,
            "  clickstream events on the late path (left out): {}",
            o.late_clicks
        )?;
        let kills: Vec<String> = self
            .kills_at_secs
            .iter()
            .map(|s| format!("{s:.0} s"))
            .collect();
        writeln!(
            f,
            "Detector SIGKILLed at {}",
            if kills.is_empty() {
                "never".into()
            } else {
                kills.join(", ")
            }
        )?;
        writeln!(f)?;
        let l = &self.latency;
        writeln!(
            f,
            "Latency source commit -> alert over {} alerts: p50 {:.3} s, p99 {:.3} s, max {:.3} s, {} over 1 s; before the first kill: p50 {} s, p99 {} s",
            l.alerts,
            l.p50,
            l.p99,
            l.max,
            l.over_1s,
            ratio(l.before_kills_p50),
            ratio(l.before_kills_p99)
        )?;
        if let Some(i) = &self.idle {
            writeln!(
                f,
                "Idle shard 1 for {:.0} s ({} changes on shard 0): watermark moved {:.0} s; max lag {:.2} s (bound idle timeout + 1 s = {:.1} s); after the idle timeout {} s (bound heartbeat + 1 s = {:.1} s); {} samples; lag from {}",
                i.secs,
                i.shard0_changes,
                i.watermark_advance_secs,
                i.max_lag,
                i.bound,
                ratio(i.settled_max_lag),
                i.settled_bound,
                i.samples,
                i.lag_from
            )?;
        }
        if let Some(m) = &self.memory {
            writeln!(
                f,
                "Memory: {} customers ({} profiles, {} open windows) in {:.1} s; peak RSS growth {} ({} bytes/customer{}); checkpoint {:.1} MiB ({:.0} bytes/customer)",
                m.customers,
                m.profiles,
                m.open_windows,
                m.feed_secs,
                m.peak_rss_growth_kib
                    .map_or("n/a".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0)),
                m.rss_bytes_per_customer
                    .map_or("n/a".into(), |b| format!("{b:.0}")),
                if m.peak_reset {
                    ""
                } else {
                    ", peak not reset: a lower bound"
                },
                m.checkpoint_bytes as f64 / (1024.0 * 1024.0),
                m.checkpoint_bytes_per_customer
            )?;
        }
        Ok(())
    }
}
