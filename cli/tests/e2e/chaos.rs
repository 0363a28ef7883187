//! Exactly-once under crashes: runs of a fresh stack under load in which the
//! ingester and the broker are SIGKILLed at random moments and restarted.
//! After catch-up, silver must equal the source row for row, bronze must
//! hold no duplicate `event_id` and no gap in any transaction, bronze must
//! hold every distinct event the CDC reader put in Kafka, no more, and
//! bronze's inserts minus deletes must add up to the source's rows.
//!
//! `TRIBUTARY_CHAOS_RUNS` sets the number of runs (default 2);
//! `TRIBUTARY_CHAOS_SEED` replays a printed seed.
//!
//! A second test does the same to the shards' nodes: with a standby per
//! shard and the HA supervisor, shard primaries (failed over, the reader
//! re-snapshotting the shard) and standbys (restarted and put back in the
//! synchronous set) are SIGKILLed at random moments, with the ingester;
//! the lake must equal the source afterwards (`TRIBUTARY_HA_CHAOS_RUNS`,
//! default 1).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tributary_model::domain::{TABLES, topic_of};

use crate::common::*;

/// splitmix64: enough randomness for choosing moments, reproducible by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// SIGKILLs the stack's broker (started by `tributary up` in a process
/// group of its own, its pid in `<state>/broker/pid`).
fn kill_broker(env: &Env) {
    let state = env.stack_state();
    let pid_file = state.broker.data_dir.join("pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    // Gone once the port is closed (it is reaped by whoever adopted it).
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(state.broker.address()).is_ok() {
        assert!(Instant::now() < deadline, "the broker did not die");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `tributary up` starts a broker that is not running.
fn restart_broker(env: &Env) {
    env.up();
}

/// Every distinct `event_id` the reader put in each table's topic.
fn kafka_event_ids(env: &Env) -> BTreeMap<String, BTreeSet<String>> {
    let kafka = env.kafka();
    let consumer = kafka_consumer(&kafka, "tributary-chaos-check");
    let mut out = BTreeMap::new();
    for t in TABLES {
        let topic = topic_of(&kafka.topic_prefix, t);
        let md = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .unwrap();
        let partitions = md.topics()[0].partitions().len() as i32;
        let mut tpl = TopicPartitionList::new();
        let mut remaining: BTreeMap<i32, i64> = BTreeMap::new();
        for p in 0..partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(10))
                .unwrap();
            if high > low {
                remaining.insert(p, high);
            }
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut ids = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !remaining.is_empty() {
            assert!(Instant::now() < deadline, "reading {topic} took too long");
            let Some(m) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let m = m.unwrap();
            let ev = tributary_model::event::ChangeEvent::from_json(m.payload().unwrap())
                .unwrap_or_else(|e| panic!("{topic}/{} at {}: {e}", m.partition(), m.offset()));
            ids.insert(ev.event_id);
            if remaining
                .get(&m.partition())
                .is_some_and(|h| m.offset() + 1 >= *h)
            {
                remaining.remove(&m.partition());
            }
        }
        out.insert(t.name.to_string(), ids);
    }
    out
}

/// Bronze holds exactly the distinct events of Kafka: none missing, none
/// invented (duplicates are checked by `assert_lake_equals_source`).
async fn assert_bronze_equals_kafka(env: &Env) {
    let kafka = kafka_event_ids(env);
    let lake = tributary_lake::Lake::new(&env.lake_config()).unwrap();
    let session = env.session().await;
    let mut total = 0;
    for (table, ids) in &kafka {
        // Read whatever Kafka says: a table with no bronze table yet holds
        // nothing, one that has rows must match Kafka, even an empty topic.
        let bronze: BTreeSet<String> = if lake.open("bronze", table).await.unwrap().is_none() {
            BTreeSet::new()
        } else {
            let batches = session
                .sql(&format!("SELECT event_id FROM bronze.{table}"))
                .await
                .unwrap();
            pipeline_strings(&batches).into_iter().collect()
        };
        let missing: Vec<_> = ids.difference(&bronze).take(5).collect();
        let extra: Vec<_> = bronze.difference(ids).take(5).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "bronze.{table}: {} events in Kafka, {} in bronze; missing {missing:?}, extra {extra:?}",
            ids.len(),
            bronze.len()
        );
        total += ids.len();
    }
    assert!(total > 0, "no events in Kafka at all");
    eprintln!("chaos: bronze holds all {total} distinct events of Kafka");
}

/// Bronze against the source's own rows: per table, the rows bronze says
/// exist (snapshot reads and inserts, minus deletes; the load changes no
/// primary key and truncates nothing) equal the rows the source has. A lost
/// insert or delete shows here even when a later change hides it in silver.
async fn assert_bronze_nets_to_source(env: &Env) {
    let state = env.stack_state();
    let session = env.session().await;
    for t in TABLES {
        let dsns: Vec<String> = match t.db {
            tributary_model::domain::Database::Orders => {
                state.shards.iter().map(|s| s.dsn()).collect()
            }
            tributary_model::domain::Database::Catalog => vec![state.catalog.dsn()],
        };
        let mut source = 0i64;
        for dsn in &dsns {
            let c = pipeline_connect(dsn).await;
            source += c
                .query_one(&format!("SELECT count(*) FROM public.{}", t.name), &[])
                .await
                .unwrap()
                .get::<_, i64>(0);
        }
        let net = match session
            .sql(&format!(
                "SELECT coalesce(sum(CASE WHEN op IN ('c', 'r') THEN 1 WHEN op = 'd' THEN -1 ELSE 0 END), 0) FROM bronze.{}",
                t.name
            ))
            .await
        {
            Ok(b) => tributary_query_count(&b),
            Err(_) => 0,
        };
        assert_eq!(
            net, source,
            "bronze.{}: inserts + snapshot reads − deletes = {net}, the source has {source} rows",
            t.name
        );
    }
}

fn pipeline_strings(batches: &[arrow::array::RecordBatch]) -> Vec<String> {
    use arrow::array::{Array, StringArray};
    let mut out = Vec::new();
    for b in batches {
        let c = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
        let a = c.as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..a.len() {
            out.push(a.value(i).to_string());
        }
    }
    out
}

/// One run: load for `load_secs` while the ingester and the broker die at
/// random moments; then catch up and compare.
async fn chaos_run(run: u64, seed: u64, load_secs: u64) -> Result<(), String> {
    let mut rng = Rng(seed);
    let mut env = Env::stack().await;
    env.start().await;
    env.start_pipeline();
    let mut load = env.spawn_load(40, load_secs, seed % 1_000_000);
    let mut actions = Vec::new();
    let started = Instant::now();
    loop {
        tokio::time::sleep(rng.millis(1_500, 5_000)).await;
        if load.try_wait().unwrap().is_some() {
            break;
        }
        let at = started.elapsed().as_secs_f64();
        // The reader and the ingester survived everything so far by
        // themselves: checked before the test replaces one.
        env.assert_running();
        match rng.next() % 3 {
            0 => {
                env.kill9("ingest");
                tokio::time::sleep(rng.millis(0, 2_000)).await;
                env.spawn("ingest", &["lake", "ingest"]);
                actions.push(format!("{at:.1}s ingester"));
            }
            1 => {
                kill_broker(&env);
                tokio::time::sleep(rng.millis(0, 3_000)).await;
                restart_broker(&env);
                actions.push(format!("{at:.1}s broker"));
            }
            _ => {
                env.kill9("ingest");
                kill_broker(&env);
                tokio::time::sleep(rng.millis(0, 3_000)).await;
                restart_broker(&env);
                env.spawn("ingest", &["lake", "ingest"]);
                actions.push(format!("{at:.1}s ingester+broker"));
            }
        }
    }
    eprintln!(
        "chaos: run {run} seed {seed}: killed {}",
        actions.join(", ")
    );
    let status = load.wait().unwrap();
    if !status.success() {
        return Err(format!("run {run}: the load failed ({status})"));
    }
    // The reader (never restarted by the test) and the ingester survived
    // every broker restart after the last action too.
    env.assert_running();
    eprintln!(
        "chaos: run {run}: the reader recovered from {} failures without restarting",
        env.log("cdc")
            .matches("reader failed, resuming from the slot")
            .count()
    );
    let result = tokio::spawn(async move {
        assert_lake_equals_source(&env).await;
        assert_bronze_equals_kafka(&env).await;
        assert_bronze_nets_to_source(&env).await;
        env
    })
    .await;
    match result {
        Ok(_env) => Ok(()),
        Err(e) => Err(format!("run {run} (seed {seed}): {e}")),
    }
}

/// Runs `run(n, seed, load_secs)` `runs_var` times (default
/// `default_runs`), the first with `TRIBUTARY_CHAOS_SEED` or a fresh seed
/// (printed, so one run replays alone), and fails naming every failed run.
async fn chaos_runs(
    label: &str,
    runs_var: &str,
    default_runs: u64,
    run: impl AsyncFn(u64, u64, u64) -> Result<(), String>,
) {
    let runs = env_u64(runs_var).unwrap_or(default_runs);
    let load_secs = env_u64("TRIBUTARY_CHAOS_LOAD_SECS").unwrap_or(25);
    let seed = env_u64("TRIBUTARY_CHAOS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    eprintln!("{label}: {runs} runs, seed {seed} (TRIBUTARY_CHAOS_SEED={seed} to reproduce)");
    assert!(runs > 0, "{runs_var}=0 runs nothing");
    let mut failures = Vec::new();
    let mut seeds = Rng(seed);
    for n in 1..=runs {
        // Run 1 uses the printed seed itself, so one run replays alone.
        let run_seed = if n == 1 { seed } else { seeds.next() };
        if let Err(e) = run(n, run_seed, load_secs).await {
            eprintln!("{label}: FAILED {e}");
            failures.push(e);
        }
    }
    eprintln!(
        "{label}: {} of {runs} runs passed",
        runs as usize - failures.len()
    );
    assert!(failures.is_empty(), "{label}: failures: {failures:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_when_ingester_and_broker_die_at_random_moments() {
    chaos_runs("chaos", "TRIBUTARY_CHAOS_RUNS", 2, chaos_run).await;
}

/// SIGKILLs a node's postmaster and every process of it (a crashed
/// machine); false when it has no `postmaster.pid`.
fn kill_node(node: &tributary_stack::PgNode) -> bool {
    !tributary_stack::ha::kill_node(&node.data_dir).is_empty()
}

/// Waits until shard `i`'s standby streams synchronously again (the
/// supervisor restarts or re-clones it), so the next fault may hit its
/// primary without losing what was acknowledged.
async fn standby_back(env: &mut Env, i: usize) {
    env.until(
        "the standby to stream synchronously again",
        90,
        async |env: &Env| {
            let shard = env.stack_state().shards[i].clone();
            tributary_stack::ha::replica(&shard)
                .await
                .is_some_and(|r| r.state == "streaming" && r.sync_state == "sync")
        },
    )
    .await;
}

/// One run with a standby per shard and the HA supervisor: shard
/// primaries and standbys SIGKILLed at random moments (each time after
/// the shard is whole again), the CDC reader (alone, or with a primary, as
/// when both ran on the machine that died) and the ingester; then the lake
/// must equal the source, with no duplicate and no gap in bronze.
async fn ha_chaos_run(run: u64, seed: u64, load_secs: u64) -> Result<(), String> {
    let mut rng = Rng(seed);
    let mut env = Env::stack().await;
    env.extra = vec![
        ("TRIBUTARY__STACK__STANDBYS".into(), "true".into()),
        ("TRIBUTARY__STACK__FAILOVER_AFTER_MS".into(), "2000".into()),
    ];
    env.start().await;
    for i in 0..2 {
        standby_back(&mut env, i).await;
    }
    env.start_pipeline();
    let mut load = env.spawn_load(40, load_secs, seed % 1_000_000);
    let mut actions = Vec::new();
    let started = Instant::now();
    loop {
        tokio::time::sleep(rng.millis(1_000, 4_000)).await;
        if load.try_wait().unwrap().is_some() {
            break;
        }
        let at = started.elapsed().as_secs_f64();
        env.assert_running();
        let i = (rng.next() % 2) as usize;
        let shard = env.stack_state().shards[i].clone();
        match rng.next() % 5 {
            what @ (0 | 3) => {
                // 3: the reader dies with the primary (one machine) and
                // starts after the promotion, remembering nothing.
                let with_reader = what == 3;
                if with_reader {
                    env.kill9("cdc");
                }
                assert!(
                    kill_node(&shard.primary()),
                    "no postmaster.pid for {}",
                    shard.node_name()
                );
                let old = shard.port;
                env.until(
                    "the supervisor to fail the shard over",
                    30,
                    async |env: &Env| env.stack_state().shards[i].port != old,
                )
                .await;
                if with_reader {
                    env.spawn("cdc", &["cdc", "run"]);
                }
                standby_back(&mut env, i).await;
                actions.push(format!(
                    "{at:.1}s shard{i} primary{}",
                    if with_reader { " and the reader" } else { "" }
                ));
            }
            4 => {
                env.kill9("cdc");
                tokio::time::sleep(rng.millis(0, 2_000)).await;
                env.spawn("cdc", &["cdc", "run"]);
                actions.push(format!("{at:.1}s reader"));
            }
            1 => {
                let standby = shard.standby.clone().expect("a standby per shard");
                assert!(
                    kill_node(&standby),
                    "no postmaster.pid for {}",
                    standby.name()
                );
                standby_back(&mut env, i).await;
                actions.push(format!("{at:.1}s shard{i} standby"));
            }
            _ => {
                env.kill9("ingest");
                tokio::time::sleep(rng.millis(0, 2_000)).await;
                env.spawn("ingest", &["lake", "ingest"]);
                actions.push(format!("{at:.1}s ingester"));
            }
        }
    }
    eprintln!(
        "ha chaos: run {run} seed {seed}: killed {}",
        actions.join(", ")
    );
    // Requests fail while a shard has no primary (the service answers
    // 503): the load's exit says nothing; the lake is checked against what
    // the source holds.
    let _ = load.wait();
    env.assert_running();
    let result = tokio::spawn(async move {
        assert_lake_equals_source(&env).await;
        env
    })
    .await;
    match result {
        Ok(_env) => Ok(()),
        Err(e) => Err(format!("run {run} (seed {seed}): {e}")),
    }
}

/// `TRIBUTARY_HA_CHAOS_RUNS` sets the number of runs (default 1),
/// `TRIBUTARY_CHAOS_SEED` replays a printed seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lake_equals_the_source_when_shard_nodes_die_at_random_moments() {
    chaos_runs("ha chaos", "TRIBUTARY_HA_CHAOS_RUNS", 1, ha_chaos_run).await;
}
