//! `tributary demo`: the whole platform end to end, in one process tree.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use tributary_model::dsn::describe;
use tributary_stack::checks::{self, first_column};
use tributary_stack::postgres::connect;
use tributary_stack::{Config, Platform, Sources};
use tributary_workflows::history::{History, NewRun, Run};

const STEPS: usize = 7;

fn step(n: usize, text: &str) {
    println!("\n== {n}/{STEPS} {text}");
}

/// Share of planned orders the demo's traffic turns into labelled fraud or
/// a benign look-alike.
const FRAUD_RATE: f64 = 0.05;

/// Order-API replicas behind the demo's gateway.
const DEMO_REPLICAS: usize = 3;

/// One table's row counts: (table, source, silver, gold table and its rows).
pub type TableCounts = (String, u64, u64, Option<(String, u64)>);

/// Totals that must agree between the source, silver and gold.
pub struct Reconciliation {
    pub rows: Vec<TableCounts>,
    pub revenue_source: i128,
    pub revenue_silver: i128,
    pub revenue_gold: i128,
}

impl Reconciliation {
    pub fn balanced(&self) -> bool {
        self.rows
            .iter()
            .all(|(_, s, v, g)| s == v && g.as_ref().is_none_or(|(_, g)| g == s))
            && self.revenue_source == self.revenue_silver
            && self.revenue_source == self.revenue_gold
    }
}

/// Parses a decimal string into hundredths, exactly.
fn cents(s: &str) -> Result<i128> {
    let s = s.trim();
    let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let frac = format!("{frac:0<2}");
    anyhow::ensure!(frac.len() == 2, "amount {s} has more than 2 decimals");
    let v: i128 = format!("{int}{frac}")
        .parse()
        .with_context(|| format!("amount {s:?}"))?;
    Ok(if neg { -v } else { v })
}

async fn lake_scalar(session: &tributary_query::Session, sql: &str) -> Result<String> {
    let batches = session
        .sql(sql)
        .await
        .with_context(|| format!("query {sql}"))?;
    Ok(first_column(&batches)
        .into_iter()
        .next()
        .unwrap_or_else(|| "0".into()))
}

/// Counts rows per table in the source, silver and gold, and revenue in all three.
pub async fn reconcile(
    sources: &Sources,
    session: &tributary_query::Session,
) -> Result<Reconciliation> {
    let gold_of = |t: &str| match t {
        // SCD2: one current version per live row.
        "customers" => Some(("dim_customer", "is_current AND customer_key <> -1")),
        "products" => Some(("dim_product", "is_current AND product_key <> -1")),
        "order_items" => Some(("fct_order_line", "true")),
        _ => None,
    };
    let mut rows = Vec::new();
    for t in tributary_model::domain::TABLES {
        let mut source = 0u64;
        for dsn in sources.dsns(t.db) {
            let c = connect(dsn).await?;
            source += c
                .query_one(&format!("SELECT count(*) FROM public.{}", t.name), &[])
                .await?
                .get::<_, i64>(0) as u64;
        }
        let silver: u64 = lake_scalar(session, &format!("SELECT count(*) FROM silver.{}", t.name))
            .await?
            .parse()?;
        let gold = match gold_of(t.name) {
            Some((g, filter)) => {
                let n: u64 = lake_scalar(
                    session,
                    &format!("SELECT count(*) FROM gold.{g} WHERE {filter}"),
                )
                .await?
                .parse()?;
                Some((g.to_string(), n))
            }
            None => None,
        };
        rows.push((t.name.to_string(), source, silver, gold));
    }
    let mut revenue_source = 0i128;
    for dsn in &sources.shards {
        let c = connect(dsn).await?;
        let s: String = c
            .query_one(
                "SELECT coalesce(sum(line_total), 0)::text FROM public.order_items",
                &[],
            )
            .await?
            .get(0);
        revenue_source += cents(&s)?;
    }
    let revenue_silver = cents(
        &lake_scalar(
            session,
            "SELECT CAST(coalesce(sum(line_total), 0) AS VARCHAR) FROM silver.order_items",
        )
        .await?,
    )?;
    let revenue_gold = cents(
        &lake_scalar(
            session,
            "SELECT CAST(coalesce(sum(line_total), 0) AS VARCHAR) FROM gold.fct_order_line",
        )
        .await?,
    )?;
    Ok(Reconciliation {
        rows,
        revenue_source,
        revenue_silver,
        revenue_gold,
    })
}

fn money(c: i128) -> String {
    format!("{}.{:02}", c / 100, (c % 100).abs())
}

pub fn print_reconciliation(r: &Reconciliation) {
    println!(
        "{:<14} {:>10} {:>10}   {:<16} {:>10}   check",
        "table", "source", "silver", "gold table", "gold"
    );
    for (t, s, v, g) in &r.rows {
        let (gname, gval) = match g {
            Some((n, x)) => (n.as_str(), x.to_string()),
            None => ("-", "-".to_string()),
        };
        let ok = s == v && g.as_ref().is_none_or(|(_, x)| x == s);
        println!(
            "{t:<14} {s:>10} {v:>10}   {gname:<16} {gval:>10}   {}",
            if ok { "ok" } else { "MISMATCH" }
        );
    }
    let ok = r.revenue_source == r.revenue_silver && r.revenue_source == r.revenue_gold;
    println!(
        "{:<14} {:>10} {:>10}   {:<16} {:>10}   {}",
        "revenue",
        money(r.revenue_source),
        money(r.revenue_silver),
        "fct_order_line",
        money(r.revenue_gold),
        if ok { "ok" } else { "MISMATCH" }
    );
}

fn check_alive(tasks: &[(&str, &JoinHandle<Result<()>>)]) -> Result<()> {
    for (name, t) in tasks {
        if t.is_finished() {
            bail!("{name} stopped unexpectedly; see the log above");
        }
    }
    Ok(())
}

/// Runs the demo on the local stack (started when it is not running) and
/// fails unless source, silver and gold reconcile.
pub async fn run(config: Config, duration: Duration, rate: f64) -> Result<()> {
    let started = Instant::now();
    step(
        1,
        "starting the local stack (PostgreSQL shards + catalog, Kafka broker)",
    );
    let platform = Platform::start(config).await?;
    // The web console, left running like the stack: look at what the demo
    // built after it ends.
    if let Err(e) = crate::start_ui(platform.config(), None).await {
        println!("  web console      not started: {e:#}");
    }
    let config = platform.config();
    let sources = platform.sources()?.clone();
    let kafka = platform.kafka()?.clone();
    for s in platform.stack().into_iter().flat_map(|s| s.all_pg()) {
        println!("  postgres {:<8} {}", s.name, describe(&s.dsn()));
    }
    println!("  kafka            {}", kafka.brokers);
    println!("  lake             {}", platform.lake_config().root);
    let lake = platform.lake()?;

    let shutdown = CancellationToken::new();
    // The order API as the storefront sees it: replicas behind the gateway.
    let mut replicas = Vec::new();
    for _ in 0..DEMO_REPLICAS {
        let mut oltp_cfg = config.oltp.clone();
        oltp_cfg.listen = "127.0.0.1:0".into();
        let mut server = tributary_oltp::Server::bind(oltp_cfg, platform.topology()?)
            .await?
            .with_clickstream(&kafka)
            .await?;
        if let Some(url) = platform.redis_url() {
            server = server.with_cache(&url, &kafka, &config.oltp.cache)?;
        }
        replicas.push(server);
    }
    if let Some(url) = platform.redis_url() {
        println!("  product cache    {}", describe(&url));
    }
    let addrs: Vec<String> = replicas
        .iter()
        .map(|s| s.local_addr().to_string())
        .collect();
    let mut gateway_cfg = config.gateway.clone();
    gateway_cfg.listen = "127.0.0.1:0".into();
    gateway_cfg.admin = "127.0.0.1:0".into();
    // One client (the load generator): no per-client limit.
    gateway_cfg.anonymous.rate = 0.0;
    gateway_cfg.pools = vec![tributary_gateway::config::PoolConfig {
        name: "stable".into(),
        weight: 100,
        backends: addrs.clone(),
    }];
    let gateway = tributary_gateway::Gateway::bind(gateway_cfg).await?;
    let base_url = format!("http://{}", gateway.listen_addr());
    println!(
        "  order API        {} replicas: {}",
        addrs.len(),
        addrs.join(", ")
    );
    println!(
        "  gateway          {base_url} (admin http://{}/admin/state)",
        gateway.admin_addr()
    );
    // Every part of the demo runs in this process: the API's /metrics
    // shows them all, to the stack's Prometheus when `up --observe` ran.
    let _announced =
        tributary_stack::observe::announce(&config.state_dir, "demo", replicas[0].local_addr())?;
    let oltp: JoinHandle<Result<()>> = {
        let s = shutdown.clone();
        tokio::spawn(async move {
            let mut set = tokio::task::JoinSet::new();
            for server in replicas {
                let s = s.clone();
                set.spawn(async move { server.run(s).await.map_err(anyhow::Error::from) });
            }
            set.spawn(async move { gateway.run(s).await.map_err(anyhow::Error::from) });
            while let Some(done) = set.join_next().await {
                done??;
            }
            Ok(())
        })
    };
    let cdc: JoinHandle<Result<()>> = {
        let (c, k, src, s) = (
            config.cdc.clone(),
            kafka.clone(),
            sources.cdc_sources(),
            shutdown.clone(),
        );
        tokio::spawn(async move { tributary_cdc::run(c, k, src, s).await.map_err(Into::into) })
    };
    let ingest: JoinHandle<Result<()>> = {
        let (l, k, i, s) = (
            lake.clone(),
            kafka.clone(),
            config.ingest.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            tributary_lake::ingest::serve(l, k, i, s)
                .await
                .map_err(Into::into)
        })
    };
    let shards = sources.shards.len() as u32;
    let fraud: JoinHandle<Result<()>> = {
        let (k, l, live, s) = (
            kafka.clone(),
            lake.clone(),
            config.live.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            tributary_live::fraud::run(&k, &l, shards, &live, s)
                .await
                .map_err(Into::into)
        })
    };
    let activity: JoinHandle<Result<()>> = {
        let (k, l, live, s) = (
            kafka.clone(),
            lake.clone(),
            config.live.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            tributary_live::activity::run(&k, &l, shards, &live, s)
                .await
                .map_err(Into::into)
        })
    };
    println!("  stream jobs      fraud detector, live product activity");
    let scheduler = start_scheduler(&platform, &shutdown).await?;
    let signals = crate::shutdown_on_signals();

    step(
        2,
        &format!(
            "driving order traffic for {duration:?} at {rate} requests/s, browsing first, \
             with {:.0}% of orders replaced by labelled fraud or a benign look-alike",
            FRAUD_RATE * 100.0
        ),
    );
    let labels_path = config.state_dir.join("demo").join("fraud-labels.jsonl");
    std::fs::create_dir_all(config.state_dir.join("demo"))
        .with_context(|| format!("creating {}", config.state_dir.join("demo").display()))?;
    let traffic_from_us = chrono::Utc::now().timestamp_micros();
    let report = tributary_oltp::run_load(
        tributary_oltp::LoadConfig {
            base_url,
            rate,
            duration,
            concurrency: 8,
            seed: 42,
            browse: true,
            fraud_rate: FRAUD_RATE,
            labels_path: Some(labels_path.clone()),
        },
        signals.clone(),
    )
    .await?;
    println!("{report}");
    println!(
        "  labels (the detector never reads them): {}",
        labels_path.display()
    );
    let tasks = [
        ("the order API", &oltp),
        ("the CDC reader", &cdc),
        ("lake ingest", &ingest),
        ("the fraud detector", &fraud),
        ("live product activity", &activity),
    ];
    check_alive(&tasks)?;

    step(3, "waiting for CDC and ingest to catch up");
    let t = Instant::now();
    checks::wait_caught_up(&platform, Duration::from_secs(600)).await?;
    println!("  caught up in {:.1}s", t.elapsed().as_secs_f64());

    step(
        4,
        "the scheduler runs the marts, their data tests and the risk profiles (workflows/jobs)",
    );
    let t = Instant::now();
    match &scheduler {
        Some((history, _)) => {
            for job in ["marts", "risk_profile"] {
                let run = run_job(history, job).await?;
                println!(
                    "  {:<44} {} in {:.1}s: {}",
                    run.run_key,
                    run.state,
                    seconds(&run),
                    run.summary.as_deref().unwrap_or("")
                );
                if job == "marts" {
                    // Its downstream job follows for the same logical time.
                    let tests = wait_downstream(history, "data_tests", run.logical_time).await?;
                    println!(
                        "  {:<44} {} in {:.1}s (after marts): {}",
                        tests.run_key,
                        tests.state,
                        seconds(&tests),
                        tests.summary.as_deref().unwrap_or("")
                    );
                }
            }
            println!(
                "  history: tributary workflows history | timeline, or SELECT * FROM workflows.runs"
            );
        }
        None => {
            let marts = tributary_etl::build_marts(&lake).await?;
            println!("{marts}");
            let profiles =
                tributary_etl::profile::build_risk_profile(&lake, &Default::default()).await?;
            println!("{profiles}");
        }
    }
    println!("  built in {:.1}s", t.elapsed().as_secs_f64());

    step(5, "the fraud team's view: alerts against the labels");
    let session = tributary_query::Session::new(lake.clone()).await?;
    let live = &config.live.engine;
    wait_for_detector(&tasks, Duration::from_secs(120)).await?;
    // Its output commits with the next checkpoint.
    tokio::time::sleep(Duration::from_millis(2 * live.checkpoint_interval_ms + 500)).await;
    fraud_view(&session, &lake, &labels_path, traffic_from_us).await?;
    activity_view(&session).await?;

    step(6, "a few answers from the warehouse");
    let queries = [
        (
            "revenue per day",
            "SELECT d.date, s.orders, s.lines, s.revenue FROM gold.agg_daily_sales s \
             JOIN gold.dim_date d ON d.date_key = s.date_key ORDER BY d.date",
        ),
        (
            "top products by revenue",
            "SELECT p.name, p.category, sum(f.quantity) AS units, sum(f.line_total) AS revenue \
             FROM gold.fct_order_line f JOIN gold.dim_product p ON p.product_key = f.product_key \
             GROUP BY p.name, p.category ORDER BY revenue DESC LIMIT 5",
        ),
        (
            "orders per shard",
            "SELECT _shard AS shard, count(*) AS orders, sum(total) AS total FROM silver.orders GROUP BY _shard ORDER BY _shard",
        ),
        (
            "orders by status",
            "SELECT status, count(*) AS orders FROM silver.orders GROUP BY status ORDER BY orders DESC",
        ),
    ];
    for (title, sql) in queries {
        println!("\n-- {title}\n-- {sql}");
        tributary_query::run_one_shot(&session, sql, tributary_query::Format::Table).await?;
    }

    step(7, "reconciliation: source vs silver vs gold");
    let r = reconcile(&sources, &session).await?;
    print_reconciliation(&r);
    let compared = checks::compare_silver(&sources, &session).await?;
    let equal = compared.iter().all(|c| c.equal());
    println!(
        "row-for-row comparison of every silver table with its source tables: {}",
        if equal { "identical" } else { "DIFFERENT" }
    );
    for c in compared.iter().filter(|c| !c.equal()) {
        println!(
            "  {}: {} missing, {} extra, e.g. {:?} {:?}",
            c.table,
            c.missing.len(),
            c.extra.len(),
            c.missing.first(),
            c.extra.first()
        );
    }

    shutdown.cancel();
    for (name, t) in [
        ("order API", oltp),
        ("CDC reader", cdc),
        ("lake ingest", ingest),
        ("fraud detector", fraud),
        ("live product activity", activity),
    ]
    .into_iter()
    .chain(scheduler.map(|(_, t)| ("scheduler", t)))
    {
        match tokio::time::timeout(Duration::from_secs(30), t).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => println!("  {name} ended with an error: {e:#}"),
            Ok(Err(e)) => println!("  {name} panicked: {e}"),
            Err(_) => println!("  {name} did not stop within 30s"),
        }
    }
    println!(
        "\ndemo finished in {:.0}s; the stack keeps running.",
        started.elapsed().as_secs_f64()
    );
    println!("open the console:      tributary sql");
    if config.ui.enabled {
        println!(
            "the web console:       http://{} (tributary status says how to log in)",
            config.ui.listen
        );
    }
    println!("one query:             tributary sql -e \"SELECT * FROM gold.agg_daily_sales\"");
    println!("fraud alerts, live:    tributary fraud run & tributary fraud tail");
    println!("stack status / stop:   tributary status / tributary down");
    if !(r.balanced() && equal) {
        bail!("reconciliation failed");
    }
    Ok(())
}

/// A scheduler with the shipped jobs (`workflows/jobs`, when the demo runs
/// from the repository), beside the pipeline; `None` without them.
async fn start_scheduler(
    platform: &Platform,
    shutdown: &CancellationToken,
) -> Result<Option<(History, JoinHandle<Result<()>>)>> {
    let jobs = std::path::PathBuf::from("workflows/jobs");
    let Some(dsn) = platform.lake_config().coordinator_dsn.clone() else {
        return Ok(None);
    };
    if !jobs.is_dir() {
        println!("  scheduler        none (no workflows/jobs here)");
        return Ok(None);
    }
    let scheduler = tributary_workflows::scheduler::Scheduler::new(
        tributary_workflows::scheduler::Options {
            jobs_dir: jobs.clone(),
            tick: Duration::from_millis(500),
            poll_only: false,
        },
        &dsn,
        format!("demo-{}", std::process::id()),
        std::sync::Arc::new(crate::tasks::TributaryRunner::new(platform.clone())),
        std::sync::Arc::new(tributary_workflows::scheduler::SystemClock),
    )
    .await?;
    let s = shutdown.clone();
    let task = tokio::spawn(async move { scheduler.run(s).await.map_err(Into::into) });
    println!(
        "  scheduler        the jobs of {} (tributary workflows list)",
        jobs.display()
    );
    Ok(Some((History::connect(&dsn).await?, task)))
}

fn seconds(run: &Run) -> f64 {
    match (run.started_at, run.ended_at) {
        (Some(s), Some(e)) => (e - s).num_milliseconds() as f64 / 1000.0,
        _ => 0.0,
    }
}

/// Queues a run of `job` now and waits for it to end; an error unless it
/// succeeded.
async fn run_job(history: &History, job: &str) -> Result<Run> {
    let now = chrono::Utc::now();
    let key = format!(
        "{}#demo-{}",
        tributary_workflows::scheduler::run_key(job, now),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let id = history
        .enqueue(&NewRun {
            run_key: key,
            job: job.to_string(),
            logical_time: now,
            logical_date: None,
            trigger: tributary_workflows::history::trigger::MANUAL,
            due_at: now,
            batch: None,
        })
        .await?
        .context("a fresh run key is new")?;
    wait_run(history, id).await
}

async fn wait_run(history: &History, id: i64) -> Result<Run> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(r) = history.run(id).await? {
            match r.state.as_str() {
                "succeeded" => return Ok(r),
                "failed" | "cancelled" | "skipped" => {
                    bail!("{} {}: {}", r.run_key, r.state, r.error.unwrap_or_default())
                }
                _ => {}
            }
        }
        if Instant::now() > deadline {
            bail!("run {id} did not end within 300 s (tributary workflows status)");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits for the run of `job` that its upstream queued for `logical_time`.
async fn wait_downstream(
    history: &History,
    job: &str,
    logical_time: chrono::DateTime<chrono::Utc>,
) -> Result<Run> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(r) = history
            .recent(Some(job), 20)
            .await?
            .into_iter()
            .find(|r| r.logical_time == logical_time)
        {
            return wait_run(history, r.id).await;
        }
        if Instant::now() > deadline {
            bail!("no {job} run followed within 60 s (tributary workflows status)");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the fraud detector's watermark passed now: it has seen
/// everything committed so far, and every window of it has closed.
async fn wait_for_detector(
    tasks: &[(&str, &JoinHandle<Result<()>>)],
    within: Duration,
) -> Result<()> {
    let now = chrono::Utc::now().timestamp();
    let deadline = Instant::now() + within;
    while tributary_live::metrics::watermark_seconds(tributary_live::fraud::JOB) <= now {
        check_alive(tasks)?;
        if Instant::now() > deadline {
            bail!(
                "the fraud detector's event time did not pass the end of the traffic within {within:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// Alerts per rule against the labels (the alerts on this run's traffic,
/// from `traffic_from_us`), the benign look-alikes, and a few alerts with
/// the customer's risk profile.
async fn fraud_view(
    session: &tributary_query::Session,
    lake: &tributary_lake::Lake,
    labels: &std::path::Path,
    traffic_from_us: i64,
) -> Result<()> {
    use tributary_bench::fraud::{read_alerts, score};
    let labels = score::read_labels(labels)?;
    // This run's alerts: an earlier demo on the same stack left its own.
    let mut alerts = read_alerts(session).await?;
    alerts.retain(|a| a.source_commit_us >= traffic_from_us);
    let (rules, benign) = score::score(&labels, &alerts);
    let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
    println!(
        "{:<22} {:>9} {:>8} {:>7} {:>9} {:>7}",
        "rule", "incidents", "detected", "alerts", "precision", "recall"
    );
    for r in &rules {
        println!(
            "{:<22} {:>9} {:>8} {:>7} {:>9} {:>7}",
            r.rule,
            r.incidents,
            r.detected,
            r.alerts,
            ratio(r.precision),
            ratio(r.recall)
        );
        for (on, n) in &r.false_positives {
            println!("{:<22} false positive on {on}: {n}", "");
        }
    }
    for b in &benign {
        println!(
            "benign look-alike {:<22} {} customers, {} alerted",
            b.pattern, b.incidents, b.alerted
        );
    }
    let profiles = tributary_live::fraud::profile::load(lake).await?;
    let mut shown = alerts.clone();
    shown.sort_by_key(|a| a.detected_at_us);
    println!("\nthe latest alerts (all of them: tributary fraud tail --from-beginning):");
    for a in shown.iter().rev().take(5) {
        let profile = profiles
            .as_ref()
            .map_or("no profiles yet".to_string(), |p| p.describe(a.customer_id));
        println!("  {}\n      {profile}", a.id);
    }
    Ok(())
}

/// The live product activity the stream job keeps: its closed windows.
async fn activity_view(session: &tributary_query::Session) -> Result<()> {
    let sql = "SELECT product_id, sum(views) AS views, sum(add_to_carts) AS carts, \
               sum(orders) AS orders, sum(revenue) AS revenue, count(*) AS windows \
               FROM gold.product_activity_5m GROUP BY product_id ORDER BY views DESC LIMIT 5";
    println!("\nlive product activity, top products of the closed 5-minute windows:\n-- {sql}");
    let closed = match session
        .sql("SELECT count(*) FROM gold.product_activity_5m")
        .await
    {
        Ok(b) => first_column(&b).first().is_some_and(|n| n != "0"),
        Err(tributary_query::Error::TableNotFound(_)) => false,
        Err(e) => return Err(e.into()),
    };
    if closed {
        tributary_query::run_one_shot(session, sql, tributary_query::Format::Table).await?;
    } else {
        println!(
            "  no 5-minute window has closed yet: the job keeps the open ones in its state \
             and writes each when the watermark passes its end (tributary activity top)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cents_are_exact() {
        assert_eq!(cents("12.30").unwrap(), 1230);
        assert_eq!(cents("0").unwrap(), 0);
        assert_eq!(cents("-1.5").unwrap(), -150);
        assert_eq!(money(123456), "1234.56");
        assert!(cents("1.234").is_err());
    }
}
