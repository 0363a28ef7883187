//! `tributary drill SCENARIO`: a fault under a steady order load, on a stack
//! of its own, reported as RPO and RTO.
//!
//! The stack has a standby per shard and the HA supervisor (in process).
//! The order service, the CDC reader and the ingester run as children of
//! the binary. A writer in process creates orders through the HTTP API at
//! `rate` per second, alternating between a customer of the faulted shard
//! and one of the other shards, and records every order the API
//! acknowledged (201 with its id) and when. Then:
//!
//! - **RPO**: acknowledged orders that are not in the source afterwards
//!   (counted against what the API said succeeded, not against the
//!   database), and the span of their acknowledgement times;
//! - **RTO (write)**: from the fault to the end of the faulted shard's
//!   longest stretch without an acknowledged order (a frozen primary's
//!   open connections commit until fencing, so the first acknowledgement
//!   after the fault would say nothing);
//! - **RTO (lake)**: from the fault to silver equal to the source row for
//!   row, measured after the load ends (the lake cannot equal a source that
//!   is still moving), with the time the load ended beside it;
//! - **failover**: from the fault to `stack.json` naming the new primary.
//!
//! Scenarios:
//!
//! - `shard-kill`: SIGKILL of the primary's postmaster and every process of
//!   it (a crashed machine);
//! - `shard-freeze`: SIGSTOP of the postmaster (it looks alive, takes no
//!   new connection, its backends run on until fencing kills them);
//! - `broker-kill`: SIGKILL of the broker, restarted after `down` (what a
//!   service manager does); the CDC reader and the ingester must ride it
//!   out on their own, and nothing may be lost or doubled;
//! - `lake-lost`: the lake folder deleted and the ingester killed with it
//!   (the disk under them died), then the lake restored from the backup
//!   taken halfway through the load before the fault, and the ingester
//!   started again: it resumes from the offsets in the restored commits and
//!   the broker still holds the rest. "Recovered" is the restore's end;
//! - `shard-lost`: both nodes of the shard SIGKILLed and their folders
//!   taken as lost; the shard rebuilt in place from the base backup taken
//!   halfway through the load before the fault and the WAL archive
//!   (`tributary restore shardN --lost`). What was never archived is lost
//!   (up to `archive_timeout`, 60 s, of commits): the goal is that no lost
//!   order was acknowledged more than that before the fault. The CDC
//!   reader finds no slot and re-snapshots the shard, so the lake follows
//!   the source back in time. Orders carry a device id per request, so an
//!   id the rebuilt sequence hands out again is not taken for a survivor.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tributary_stack::config::Replication;
use tributary_stack::{Config, Platform, StackState};

use crate::children::{Children, free_port, on_own_stack};
use crate::{Error, Result, pg};

/// What fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// SIGKILL of a shard primary (its postmaster and every backend).
    ShardKill,
    /// SIGSTOP of a shard primary's postmaster.
    ShardFreeze,
    /// SIGKILL of the broker, restarted after a while.
    BrokerKill,
    /// The lake folder deleted under a killed ingester, restored from backup.
    LakeLost,
    /// Both nodes of a shard lost; rebuilt from a base backup and the WAL
    /// archive.
    ShardLost,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::ShardKill => "shard-kill",
            Scenario::ShardFreeze => "shard-freeze",
            Scenario::BrokerKill => "broker-kill",
            Scenario::LakeLost => "lake-lost",
            Scenario::ShardLost => "shard-lost",
        }
    }

    fn fails_over(self) -> bool {
        matches!(self, Scenario::ShardKill | Scenario::ShardFreeze)
    }
}

pub struct Options {
    pub scenario: Scenario,
    /// The `tributary` binary whose children run the pipeline.
    pub exe: PathBuf,
    pub shard: usize,
    /// Orders per second.
    pub rate: f64,
    /// Load before the fault, and after it.
    pub before: Duration,
    pub after: Duration,
    pub replication: Replication,
    pub failover_after_ms: u64,
    /// How long the broker stays dead (`broker-kill`).
    pub down: Duration,
    pub keep: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub replication: String,
    pub failover_after_ms: u64,
    pub rate: f64,
    pub load_average: String,
    /// Orders the API acknowledged, on the faulted shard and in all.
    pub acknowledged_faulted_shard: usize,
    pub acknowledged: usize,
    /// Requests that failed (no answer, or not 201).
    pub failed_requests: usize,
    /// Acknowledged orders missing from the source afterwards.
    pub lost: Vec<i64>,
    /// The span of the lost orders' acknowledgements before the fault, in
    /// seconds (0 when none were lost).
    pub lost_window_seconds: f64,
    /// How long before the fault the oldest lost order was acknowledged
    /// (0 when none were lost).
    pub lost_oldest_seconds: f64,
    pub failover_seconds: Option<f64>,
    /// From the fault to the broker restarted (`broker-kill`) or the lake
    /// restored (`lake-lost`).
    pub recovered_seconds: Option<f64>,
    /// From the fault to the end of the shard's longest stretch without
    /// an acknowledged write.
    pub rto_write_seconds: Option<f64>,
    /// That stretch.
    pub outage_seconds: f64,
    pub load_ended_seconds: f64,
    pub rto_lake_seconds: Option<f64>,
    /// Silver equals the source row for row at the end.
    pub lake_equal: bool,
    pub detail: Vec<String>,
}

impl Report {
    /// The drill's goals: nothing acknowledged lost with synchronous
    /// replication (at most one second of orders with asynchronous), the
    /// shard writable within 30 s, and the lake equal to the source.
    pub fn ok(&self) -> bool {
        let rpo = match (self.scenario, self.replication.as_str()) {
            // Only the archive survives: what it had not received yet.
            (Scenario::ShardLost, _) => self.lost_oldest_seconds <= ARCHIVE_TIMEOUT_SECONDS,
            (_, "sync") => self.lost.is_empty(),
            _ => self.lost_window_seconds <= 1.0,
        };
        rpo && self.rto_write_seconds.is_some_and(|s| s <= 30.0) && self.lake_equal
    }
}

/// The stack's `archive_timeout`: the most a shard's archive is behind.
const ARCHIVE_TIMEOUT_SECONDS: f64 = 60.0;

pub async fn run(config: &Config, options: &Options) -> Result<Report> {
    if options.rate.is_nan() || options.rate <= 0.0 || options.shard >= config.stack.shards {
        return Err(Error::Options(format!(
            "need a rate above 0 and a shard below {}",
            config.stack.shards
        )));
    }
    on_own_stack(config, "drill", options.keep, |mut cfg, _| async move {
        cfg.stack.standbys = true;
        cfg.stack.replication = options.replication;
        cfg.stack.failover_after_ms = options.failover_after_ms;
        drill(cfg, options).await
    })
    .await
}

/// An acknowledged order: its id, its request's number (its device id is
/// `drill-<n>`), its shard, when the API answered.
#[derive(Clone, Copy)]
struct Ack {
    id: i64,
    n: usize,
    faulted: bool,
    at: Instant,
}

#[derive(Default)]
struct Book {
    acks: Vec<Ack>,
    failed: usize,
}

async fn drill(cfg: Config, options: &Options) -> Result<Report> {
    let platform = Platform::start(cfg).await?;
    let c = platform.config().clone();
    let shutdown = CancellationToken::new();
    let supervisor = {
        let (c, s) = (c.clone(), shutdown.clone());
        tokio::spawn(async move { tributary_stack::ha::supervise(&c, s).await })
    };
    let oltp = format!("127.0.0.1:{}", free_port()?);
    let env = vec![
        (
            "TRIBUTARY__STATE_DIR".to_string(),
            c.state_dir.display().to_string(),
        ),
        ("TRIBUTARY__OLTP__LISTEN".into(), oltp.clone()),
    ];
    let mut children = Children::new(options.exe.clone(), env, c.state_dir.clone());
    children.spawn("oltp", &["oltp", "serve"])?;
    let url = format!("http://{oltp}");
    children.wait_http(&url).await?;
    children.spawn("cdc", &["cdc", "run"])?;
    children.spawn("ingest", &["lake", "ingest"])?;
    let result = measure(&platform, &c, options, &url, &mut children).await;
    children.stop();
    shutdown.cancel();
    let _ = supervisor.await;
    result
}

async fn measure(
    platform: &Platform,
    c: &Config,
    options: &Options,
    url: &str,
    children: &mut Children,
) -> Result<Report> {
    let stack = StackState::load(&c.state_dir)?.ok_or_else(|| Error::Run("no stack".into()))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| Error::Run(format!("http client: {e}")))?;
    let (faulted_customers, other_customers, product) =
        setup(&http, url, &stack, options.shard).await?;
    let mut detail = Vec::new();

    let book = Arc::new(Mutex::new(Book::default()));
    let stop = CancellationToken::new();
    let writer = tokio::spawn(write_orders(
        http.clone(),
        url.to_string(),
        faulted_customers,
        other_customers,
        product,
        options.rate,
        book.clone(),
        stop.clone(),
    ));
    let load_started = Instant::now();
    let backup = c.state_dir.join("drill-lake-backup");
    if options.scenario == Scenario::ShardLost {
        // The shard's last base backup before the disaster, under load.
        tokio::time::sleep(options.before / 2).await;
        let b = tributary_stack::backup::backup(c, &stack.shards[options.shard].name).await?;
        detail.push(format!(
            "base backup of {} at {:.1} s of load ({:.1} MiB)",
            b.cluster,
            load_started.elapsed().as_secs_f64(),
            b.bytes as f64 / 1048576.0
        ));
        tokio::time::sleep(options.before - options.before / 2).await;
    } else if options.scenario == Scenario::LakeLost {
        // The last backup before the disk died, taken under load.
        tokio::time::sleep(options.before / 2).await;
        let _ = std::fs::remove_dir_all(&backup);
        let m = tributary_lake::backup::backup(&platform.lake()?, &backup.display().to_string())
            .await
            .map_err(lake_err("backing up the lake"))?;
        detail.push(format!(
            "lake backed up at {:.1} s of load ({} tables)",
            load_started.elapsed().as_secs_f64(),
            m.tables.len()
        ));
        tokio::time::sleep(options.before - options.before / 2).await;
    } else {
        tokio::time::sleep(options.before).await;
    }
    children.check()?;

    let shard = stack.shards[options.shard].clone();
    let old_port = shard.port;
    let pid = tributary_stack::ha::postmaster_pid(&shard.data_dir)
        .ok_or_else(|| Error::Run(format!("no postmaster.pid in {}", shard.data_dir.display())))?;
    let fault = Instant::now();
    let mut recovered = None;
    match options.scenario {
        Scenario::ShardKill => {
            tributary_stack::ha::kill_node(&shard.data_dir);
        }
        Scenario::ShardFreeze => signal(pid, nix::sys::signal::Signal::SIGSTOP),
        Scenario::BrokerKill => {
            let broker = stack
                .broker
                .pid()
                .ok_or_else(|| Error::Run("the broker is not running".into()))?;
            signal(broker as i32, nix::sys::signal::Signal::SIGKILL);
            detail.push(format!(
                "broker (pid {broker}) killed at {:.1} s of load, down for {:.1} s",
                load_started.elapsed().as_secs_f64(),
                options.down.as_secs_f64()
            ));
            tokio::time::sleep(options.down).await;
            children.check()?;
            // What a service manager does: start it again, same port, same
            // data folder.
            Platform::start(c.clone()).await?;
            recovered = Some(fault.elapsed());
        }
        Scenario::ShardLost => {
            let nodes: Vec<_> = std::iter::once(shard.primary())
                .chain(shard.standby.clone())
                .collect();
            for node in &nodes {
                tributary_stack::ha::kill_node(&node.data_dir);
            }
            detail.push(format!(
                "both nodes of {} ({}) killed at {:.1} s of load",
                shard.name,
                nodes
                    .iter()
                    .map(|n| n.name())
                    .collect::<Vec<_>>()
                    .join(", "),
                load_started.elapsed().as_secs_f64()
            ));
            let r = tributary_stack::backup::rebuild(c, &shard.name).await?;
            recovered = Some(fault.elapsed());
            detail.push(format!(
                "rebuilt from {} and the archive in {:.1} s, a new standby cloned",
                r.from_backup.display(),
                r.took.as_secs_f64()
            ));
        }
        Scenario::LakeLost => {
            let lake = platform.lake()?;
            let root = lake.root().to_file_path().map_err(|_| {
                Error::Options(format!("lake-lost needs a local lake, not {}", lake.root()))
            })?;
            children.kill("ingest")?;
            std::fs::remove_dir_all(&root)
                .map_err(crate::io(format!("deleting {}", root.display())))?;
            detail.push(format!(
                "ingester killed and {} deleted at {:.1} s of load",
                root.display(),
                load_started.elapsed().as_secs_f64()
            ));
            std::fs::create_dir_all(&root)
                .map_err(crate::io(format!("making {}", root.display())))?;
            tributary_lake::backup::restore(&lake, &backup.display().to_string())
                .await
                .map_err(lake_err("restoring the lake"))?;
            recovered = Some(fault.elapsed());
            children.spawn("ingest", &["lake", "ingest"])?;
        }
    }
    if options.scenario.fails_over() {
        detail.push(format!(
            "{} of {} (node {}, pid {pid}) at {:.1} s of load",
            options.scenario.name(),
            shard.name,
            shard.node_name(),
            load_started.elapsed().as_secs_f64()
        ));
    }

    // Failover: stack.json names the other node.
    let mut failover = None;
    let deadline = fault + options.after.max(Duration::from_secs(40));
    while options.scenario.fails_over() && Instant::now() < deadline {
        if let Some(s) = StackState::load(&c.state_dir)?
            && s.shards[options.shard].port != old_port
        {
            failover = Some(fault.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let remaining = options.after.saturating_sub(fault.elapsed());
    tokio::time::sleep(remaining).await;
    stop.cancel();
    writer
        .await
        .map_err(|e| Error::Internal(format!("writer: {e}")))?;
    let load_ended = fault.elapsed();
    children.check()?;

    let book = std::mem::take(&mut *book.lock().unwrap_or_else(|p| p.into_inner()));
    // The shard's outage: the longest stretch without an acknowledged
    // write on it, among those ending after the fault (a frozen primary's
    // open connections keep committing until it is fenced, so the first
    // acknowledgement after the fault is not the end of the outage).
    let mut times: Vec<Instant> = book
        .acks
        .iter()
        .filter(|a| a.faulted)
        .map(|a| a.at)
        .collect();
    times.sort();
    let mut rto_write = None;
    let mut outage = Duration::ZERO;
    let mut last = times
        .iter()
        .rev()
        .find(|t| **t <= fault)
        .copied()
        .unwrap_or(fault);
    for t in times.iter().filter(|t| **t > fault) {
        if *t - last > outage {
            outage = *t - last;
            rto_write = Some(*t - fault);
        }
        last = *t;
    }

    // Every acknowledged order must be in the source (the shard's DSN finds
    // its primary, whichever node that is now).
    // Present means the same order: its id and its request's device id. A
    // shard rebuilt from a backup hands out ids again, so an id alone
    // could be a later order (and two acknowledgements may share one).
    let ids: Vec<i64> = book
        .acks
        .iter()
        .map(|a| a.id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut present: BTreeSet<(i64, String)> = BTreeSet::new();
    for s in &StackState::load(&c.state_dir)?
        .ok_or_else(|| Error::Run("no stack".into()))?
        .shards
    {
        let db = tributary_stack::postgres::connect(&s.dsn()).await?;
        for row in db
            .query(
                "SELECT id, device_id FROM orders WHERE id = ANY($1)",
                &[&ids],
            )
            .await
            .map_err(pg("reading acknowledged orders"))?
        {
            if let Some(device) = row.get::<_, Option<String>>(1) {
                present.insert((row.get(0), device));
            }
        }
    }
    let lost_acks: Vec<&Ack> = book
        .acks
        .iter()
        .filter(|a| !present.contains(&(a.id, format!("drill-{}", a.n))))
        .collect();
    let lost: Vec<i64> = lost_acks.iter().map(|a| a.id).collect();
    let lost_at: Vec<Instant> = lost_acks.iter().map(|a| a.at).collect();
    let lost_window = match (lost_at.iter().min(), lost_at.iter().max()) {
        (Some(a), Some(b)) => (*b - *a).as_secs_f64().max(0.001),
        _ => 0.0,
    };
    let lost_oldest = lost_at
        .iter()
        .min()
        .map_or(0.0, |a| fault.saturating_duration_since(*a).as_secs_f64());

    // The lake: fresh platform (the shard's primary moved), caught up,
    // then compared row for row.
    let fresh = Platform::load(c.clone())?;
    let mut rto_lake = None;
    let mut lake_equal = false;
    let until = Instant::now() + Duration::from_secs(240);
    let session = tributary_query::Session::new(platform.lake()?)
        .await
        .map_err(crate::query("opening a session"))?;
    while Instant::now() < until {
        children.check()?;
        if tributary_stack::checks::wait_caught_up(&fresh, Duration::from_secs(30))
            .await
            .is_ok()
        {
            let checks =
                tributary_stack::checks::compare_silver(fresh.sources()?, &session).await?;
            if checks.iter().all(|t| t.equal()) {
                rto_lake = Some(fault.elapsed());
                lake_equal = true;
                break;
            }
            detail.push(format!(
                "lake not equal yet at {:.1} s: {}",
                fault.elapsed().as_secs_f64(),
                checks
                    .iter()
                    .filter(|t| !t.equal())
                    .map(|t| t.table.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let reader = std::fs::read_to_string(children.log_path("cdc")).unwrap_or_default();
    detail.push(format!(
        "reader: {} slot lost, {} WAL advance after the failover",
        reader.matches("REPLICATION SLOT LOST").count(),
        reader.matches("moving the WAL past them").count()
    ));
    Ok(Report {
        scenario: options.scenario,
        replication: format!("{:?}", options.replication).to_lowercase(),
        failover_after_ms: options.failover_after_ms,
        rate: options.rate,
        load_average: crate::process::load_average(),
        acknowledged_faulted_shard: book.acks.iter().filter(|a| a.faulted).count(),
        acknowledged: book.acks.len(),
        failed_requests: book.failed,
        lost,
        lost_window_seconds: lost_window,
        lost_oldest_seconds: lost_oldest,
        failover_seconds: failover.map(|d| d.as_secs_f64()),
        recovered_seconds: recovered.map(|d| d.as_secs_f64()),
        rto_write_seconds: rto_write.map(|d| d.as_secs_f64()),
        outage_seconds: outage.as_secs_f64(),
        load_ended_seconds: load_ended.as_secs_f64(),
        rto_lake_seconds: rto_lake.map(|d| d.as_secs_f64()),
        lake_equal,
        detail,
    })
}

/// A product, and customers until both the faulted shard and another one
/// have a few (the service places a new customer on a shard by its own
/// rule; the shards' tables say where each went).
async fn setup(
    http: &reqwest::Client,
    url: &str,
    stack: &StackState,
    shard: usize,
) -> Result<(Vec<i64>, Vec<i64>, i64)> {
    let product = post(
        http,
        &format!("{url}/products"),
        json!({"sku": "DRILL-1", "name": "drill", "category": "drill", "price": 10.0}),
    )
    .await?;
    let mut ids = Vec::new();
    for i in 0..16 {
        ids.push(
            post(
                http,
                &format!("{url}/customers"),
                json!({"email": format!("drill{i}@example.com"), "name": format!("drill {i}"),
                       "region": "EU", "country": "DE", "city": "Berlin", "address": "1 Drill St",
                       "lat": 52.5, "lon": 13.4}),
            )
            .await?,
        );
    }
    let db = tributary_stack::postgres::connect(&stack.shards[shard].dsn()).await?;
    let on_shard: BTreeSet<i64> = db
        .query("SELECT id FROM customers WHERE id = ANY($1)", &[&ids])
        .await
        .map_err(pg("reading the drill's customers"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (faulted, other): (Vec<i64>, Vec<i64>) = ids.iter().partition(|id| on_shard.contains(id));
    if faulted.is_empty() {
        return Err(Error::Run(format!(
            "none of 16 new customers landed on shard {shard}"
        )));
    }
    Ok((faulted, other, product))
}

async fn post(http: &reqwest::Client, url: &str, body: Value) -> Result<i64> {
    let r = http
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|e| Error::Run(format!("POST {url}: {e}")))?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    v.get("id")
        .and_then(Value::as_i64)
        .filter(|_| status.is_success())
        .ok_or_else(|| Error::Run(format!("POST {url}: {status} {v}")))
}

/// Orders at `rate` per second until `stop`, alternating between the
/// faulted shard's customers and the others'; each on its own task, so a
/// request stuck on a frozen primary does not hold back the next.
#[allow(clippy::too_many_arguments)]
async fn write_orders(
    http: reqwest::Client,
    url: String,
    faulted: Vec<i64>,
    other: Vec<i64>,
    product: i64,
    rate: f64,
    book: Arc<Mutex<Book>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut tasks = tokio::task::JoinSet::new();
    let mut n: usize = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        n += 1;
        let on_faulted = other.is_empty() || n.is_multiple_of(2);
        let list = if on_faulted { &faulted } else { &other };
        let customer = list[n / 2 % list.len()];
        let (http, url, book) = (http.clone(), url.clone(), book.clone());
        tasks.spawn(async move {
            let body = json!({"customer_id": customer, "currency": "USD",
                              "device_id": format!("drill-{n}"),
                              "items": [{"product_id": product, "quantity": 1}]});
            let result = post(&http, &format!("{url}/orders"), body).await;
            let mut b = book.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(id) => b.acks.push(Ack {
                    id,
                    n,
                    faulted: on_faulted,
                    at: Instant::now(),
                }),
                Err(_) => b.failed += 1,
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

fn lake_err(what: &'static str) -> impl Fn(tributary_lake::Error) -> Error {
    move |e| Error::Run(format!("{what}: {e}"))
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// The report as a table.
pub fn render(r: &Report) -> String {
    let secs = |s: Option<f64>| s.map(|s| format!("{s:.2} s")).unwrap_or("never".into());
    let mut out = format!(
        "drill {} ({} replication, failover after {} ms, {} orders/s, load {})\n\n",
        r.scenario.name(),
        r.replication,
        r.failover_after_ms,
        r.rate,
        r.load_average
    );
    let rows = [
        (
            "orders acknowledged (faulted shard)",
            format!("{} ({})", r.acknowledged, r.acknowledged_faulted_shard),
        ),
        ("requests failed", r.failed_requests.to_string()),
        (
            "RPO: acknowledged orders lost",
            if r.lost.is_empty() {
                "0".to_string()
            } else {
                format!(
                    "{} (acknowledged over {:.3} s, the oldest {:.1} s before the fault)",
                    r.lost.len(),
                    r.lost_window_seconds,
                    r.lost_oldest_seconds
                )
            },
        ),
        (
            match r.scenario {
                Scenario::BrokerKill => "fault -> broker restarted",
                Scenario::LakeLost => "fault -> lake restored from backup",
                Scenario::ShardLost => "fault -> shard rebuilt from backup and archive",
                _ => "fault -> new primary recorded",
            },
            secs(if r.scenario.fails_over() {
                r.failover_seconds
            } else {
                r.recovered_seconds
            }),
        ),
        (
            "RTO: fault -> writes on the shard again",
            // A fault off the write path: say so rather than time the
            // longest gap of an undisturbed load as if it were an outage.
            if matches!(r.scenario, Scenario::BrokerKill | Scenario::LakeLost)
                && r.outage_seconds < 1.0
            {
                format!("not interrupted (longest gap {:.2} s)", r.outage_seconds)
            } else {
                format!(
                    "{} (no write for {:.2} s)",
                    secs(r.rto_write_seconds),
                    r.outage_seconds
                )
            },
        ),
        (
            "RTO: fault -> lake equals the source",
            format!(
                "{} (load ended at {:.1} s)",
                secs(r.rto_lake_seconds),
                r.load_ended_seconds
            ),
        ),
        ("silver equals the source", r.lake_equal.to_string()),
        (
            "verdict",
            if r.ok() { "met" } else { "NOT MET" }.to_string(),
        ),
    ];
    out.push_str("| measure | value |\n|---|---:|\n");
    for (k, v) in rows {
        out.push_str(&format!("| {k} | {v} |\n"));
    }
    for d in &r.detail {
        out.push_str(&format!("\n- {d}"));
    }
    out.push('\n');
    out
}
