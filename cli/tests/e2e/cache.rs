//! The product cache on the real stack: the order service reads products
//! through the stack's Redis, and the CDC reader's products topic fences
//! them. One stack for all of it: the compare-and-set's rules on the real
//! Redis, a cold key under a burst (one database read), a checker that reads
//! a price while it changes and finds no read older than the bound, and
//! Redis killed (reads keep answering from PostgreSQL) and restarted (the
//! cache fills again, with the price changed while it was down).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Mutex;
use tributary_oltp::cache::{
    DB_READS_TOTAL, INVALIDATION_LAG_SECONDS, INVALIDATIONS_TOTAL, READS_TOTAL, SET_IF_NEWER,
};

use crate::common::*;

/// How long after a price change is acknowledged a read may still return
/// the previous one, in this test (the benchmark measures the real lag;
/// this bound leaves room for a loaded CI machine).
const STALE_BOUND: Duration = Duration::from_secs(3);

async fn metrics(env: &Env) -> String {
    http_text(&format!("{}/metrics", env.url())).await
}

async fn reads(env: &Env, result: &str) -> f64 {
    metric(&metrics(env).await, READS_TOTAL, &[("result", result)]).unwrap_or(0.0)
}

async fn db_reads(env: &Env) -> f64 {
    metric(&metrics(env).await, DB_READS_TOTAL, &[]).unwrap_or(0.0)
}

async fn product(client: &reqwest::Client, env: &Env, id: i64) -> Value {
    let r = client
        .get(format!("{}/products/{id}", env.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET /products/{id}");
    r.json().await.unwrap()
}

async fn set_price(client: &reqwest::Client, env: &Env, id: i64, cents: i64) -> i64 {
    let r = client
        .patch(format!("{}/products/{id}/price", env.url()))
        .json(&json!({"price": cents as f64 / 100.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "PATCH /products/{id}/price");
    r.json::<Value>().await.unwrap()["version"]
        .as_i64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn product_reads_go_through_redis_and_the_change_stream_keeps_them_fresh() {
    let mut env = Env::stack().await;
    env.start().await;
    env.spawn("cdc", &["cdc", "run"]);
    let redis = env.stack_state().redis.expect("the stack starts a Redis");
    let status = env.run_ok(&["status"]);
    assert!(
        status.contains("redis (product cache)") && status.contains(&redis.url()),
        "status shows the cache:\n{status}"
    );

    compare_and_set_rules(&redis.url()).await;

    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..3 {
        let p = post(
            &client,
            format!("{}/products", env.url()),
            json!({"sku": format!("CACHE-{i}"), "name": "cached", "category": "c", "price": 10.0}),
        )
        .await;
        assert_eq!(p["version"], 1, "{p}");
        ids.push(p["id"].as_i64().unwrap());
    }

    // The cache serves once the invalidation stream has proved it is
    // caught up; until then reads bypass it.
    env.until("the product cache to serve hits", 60, async |env| {
        let client = reqwest::Client::new();
        product(&client, env, ids[0]).await;
        reads(env, "hit").await > 0.0
    })
    .await;

    // A cold key under a burst: one database read.
    let before = db_reads(&env).await;
    let burst: Vec<_> = (0..50)
        .map(|_| {
            let (client, url) = (client.clone(), format!("{}/products/{}", env.url(), ids[1]));
            tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
        })
        .collect();
    for b in burst {
        assert_eq!(b.await.unwrap(), 200);
    }
    assert_eq!(
        db_reads(&env).await - before,
        1.0,
        "50 concurrent reads of a cold product made one database read"
    );

    no_stale_reads(&env, ids[2]).await;
    let text = metrics(&env).await;
    assert!(metric(&text, INVALIDATIONS_TOTAL, &[]).unwrap_or(0.0) >= 20.0);
    assert!(
        metric(&text, &format!("{INVALIDATION_LAG_SECONDS}_count"), &[]).unwrap_or(0.0) >= 20.0
    );

    // Redis killed: reads keep answering, from PostgreSQL, and a price
    // changed meanwhile is what a read returns after Redis is back.
    let pid = redis.pid().expect("the stack's Redis runs");
    assert_success(
        &std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .output()
            .unwrap(),
        "kill -9 redis",
    );
    let unavailable = reads(&env, "unavailable").await + reads(&env, "bypass").await;
    for _ in 0..5 {
        assert_eq!(product(&client, &env, ids[0]).await["id"], ids[0]);
    }
    assert!(
        reads(&env, "unavailable").await + reads(&env, "bypass").await >= unavailable + 5.0,
        "reads with Redis dead went to PostgreSQL and were counted"
    );
    let version = set_price(&client, &env, ids[0], 4242).await;
    env.run_ok(&["up"]);
    let hits = reads(&env, "hit").await;
    env.until("hits again after Redis restarted", 60, async |env| {
        let client = reqwest::Client::new();
        let p = product(&client, env, ids[0]).await;
        assert_eq!(p["version"], version, "no read older than the change: {p}");
        assert_eq!(p["price"], 42.42, "{p}");
        reads(env, "hit").await > hits
    })
    .await;
    env.assert_running();
}

/// The server-side compare-and-set on the stack's Redis: a fence orders
/// the key at a version; older writes are refused; a fill of the fenced
/// version completes it; a delete fences for good.
async fn compare_and_set_rules(url: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let script = redis::Script::new(SET_IF_NEWER);
    let mut set_at = async |key: &str, version: i64, json: &str, lsn: &str| -> i64 {
        script
            .key(key)
            .arg(version)
            .arg(json)
            .arg(lsn)
            .arg(0)
            .arg(60_000)
            .invoke_async(&mut conn)
            .await
            .unwrap()
    };
    let key = "tributary:test:cas";
    let mut set = async |version: i64, json: &str| set_at(key, version, json, "0/1").await;
    assert_eq!(set(3, "").await, 1, "a fence on an empty key lands");
    assert_eq!(set(2, "{\"v\":2}").await, 0, "an older fill is refused");
    assert_eq!(set(3, "{\"v\":3}").await, 1, "a fill completes its fence");
    assert_eq!(set(3, "").await, 0, "a replayed fence keeps the value");
    assert_eq!(set(3, "{\"x\":3}").await, 0, "a second fill of one version");
    assert_eq!(set(4, "").await, 1, "a newer fence replaces the value");
    assert_eq!(
        set(3, "{\"v\":3}").await,
        0,
        "a late fill of the old version"
    );
    assert_eq!(set(1 << 52, "").await, 1, "a delete fences");
    assert_eq!(set(5, "{\"v\":5}").await, 0, "nothing replaces a delete");
    // A fill that completes a fence keeps the fence's commit position.
    let key2 = "tributary:test:cas2";
    assert_eq!(set_at(key2, 7, "", "0/AB").await, 1);
    assert_eq!(set_at(key2, 7, "{}", "").await, 1);
    let (v, p): (i64, String) = redis::cmd("HMGET")
        .arg(key)
        .arg("v")
        .arg("p")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((v, p.as_str()), (1 << 52, ""));
    let (p, lsn): (String, String) = redis::cmd("HMGET")
        .arg(key2)
        .arg("p")
        .arg("lsn")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((p.as_str(), lsn.as_str()), ("{}", "0/AB"));
}

/// Changes a price 20 times while 4 readers read it; no read may return a
/// version older than every change acknowledged [`STALE_BOUND`] before the
/// read started.
async fn no_stale_reads(env: &Env, id: i64) {
    let client = reqwest::Client::new();
    let start = Instant::now();
    // (acknowledged at, version), in order.
    let acked: Arc<Mutex<Vec<(Duration, i64)>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (client, url, done) = (
                client.clone(),
                format!("{}/products/{id}", env.url()),
                done.clone(),
            );
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    let sent = start.elapsed();
                    let p: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
                    seen.push((sent, p["version"].as_i64().unwrap()));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                seen
            })
        })
        .collect();
    for i in 0..20 {
        let version = set_price(&client, env, id, 1000 + i).await;
        acked.lock().await.push((start.elapsed(), version));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    tokio::time::sleep(STALE_BOUND).await;
    done.store(true, Ordering::Relaxed);
    let acked = acked.lock().await.clone();
    let mut checked = 0;
    for r in readers {
        for (sent, version) in r.await.unwrap() {
            let floor = acked
                .iter()
                .filter(|(at, _)| *at + STALE_BOUND <= sent)
                .map(|(_, v)| *v)
                .max()
                .unwrap_or(0);
            assert!(
                version >= floor,
                "a read sent at {sent:?} returned version {version}, but version {floor} was acknowledged more than {STALE_BOUND:?} before"
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "the readers read {checked} times");
    // And the newest version is what the cache serves now.
    let last = acked.last().unwrap().1;
    assert_eq!(product(&client, env, id).await["version"], last);
}
