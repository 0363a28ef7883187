//! The product cache on a stack of its own: the same skewed (Zipf) browse
//! load, request for request, against an order service that reads
//! PostgreSQL (the reference) and one that reads through Redis, while
//! prices change. Measured: latency and throughput of both, the hit ratio
//! and the database reads the cache saved, the invalidation lag from a
//! change's source commit to its fence in Redis (the commit time is the
//! one the fence carries; the fence is watched for every 1 ms), and a
//! checker over every read: none returns a version older than a change
//! whose fence was already in Redis when the read was sent.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tributary_oltp::Server;
use tributary_oltp::cache::CacheStats;
use tributary_stack::{Config, Platform};

use crate::children::on_own_stack;
use crate::{Error, Result, percentile, pg};

pub struct Options {
    /// Products in the catalog.
    pub products: usize,
    /// Reads per service.
    pub requests: usize,
    /// Requests in flight (closed loop).
    pub concurrency: usize,
    /// Zipf exponent of the product popularity.
    pub zipf: f64,
    /// Price changes per second during each run.
    pub changes_per_s: f64,
    pub seed: u64,
    pub keep: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            products: 10_000,
            requests: 50_000,
            concurrency: 16,
            zipf: 1.0,
            changes_per_s: 20.0,
            seed: 7,
            keep: false,
        }
    }
}

/// One service under the load.
#[derive(Debug)]
pub struct Run {
    pub name: &'static str,
    pub requests: usize,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub db_reads: u64,
}

#[derive(Debug)]
pub struct Report {
    pub products: usize,
    pub zipf: f64,
    pub concurrency: usize,
    pub runs: Vec<Run>,
    pub stats: CacheStats,
    pub changes: usize,
    /// Source commit to fence in Redis, seconds, sorted.
    pub lag_s: Vec<f64>,
    pub stale_reads: usize,
    pub checked_reads: usize,
}

impl Report {
    /// Whether no read was stale and the lag goal (p99 ≤ 500 ms) held.
    pub fn ok(&self) -> bool {
        self.stale_reads == 0 && percentile(&self.lag_s, 0.99) <= 0.5
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "product reads: {} products, Zipf s={}, {} in flight, prices changing meanwhile",
            self.products, self.zipf, self.concurrency
        )?;
        writeln!(
            f,
            "  {:<26} {:>8} {:>9} {:>9} {:>9} {:>10}",
            "service", "reads", "reads/s", "p50", "p99", "db reads"
        )?;
        for r in &self.runs {
            writeln!(
                f,
                "  {:<26} {:>8} {:>9.0} {:>7.2}ms {:>7.2}ms {:>10}",
                r.name,
                r.requests,
                r.requests as f64 / r.seconds,
                r.p50_ms,
                r.p99_ms,
                r.db_reads
            )?;
        }
        if let [reference, cached] = &self.runs[..] {
            writeln!(
                f,
                "  ratio cached / PostgreSQL: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x; database reads saved {:.1}%",
                (cached.requests as f64 / cached.seconds)
                    / (reference.requests as f64 / reference.seconds),
                cached.p50_ms / reference.p50_ms,
                cached.p99_ms / reference.p99_ms,
                100.0 * (1.0 - cached.db_reads as f64 / reference.db_reads.max(1) as f64)
            )?;
        }
        let s = &self.stats;
        let all = (s.hits + s.misses + s.shared + s.bypassed + s.unavailable).max(1);
        writeln!(
            f,
            "  cache: hit ratio {:.1}% ({} hits, {} misses, {} shared, {} bypassed, {} unavailable)",
            100.0 * s.hits as f64 / all as f64,
            s.hits,
            s.misses,
            s.shared,
            s.bypassed,
            s.unavailable
        )?;
        writeln!(
            f,
            "  invalidation lag, source commit -> fence in Redis, {} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; goal p99 <= 500 ms: {}",
            self.lag_s.len(),
            percentile(&self.lag_s, 0.5) * 1e3,
            percentile(&self.lag_s, 0.99) * 1e3,
            self.lag_s.last().copied().unwrap_or(f64::NAN) * 1e3,
            if percentile(&self.lag_s, 0.99) <= 0.5 {
                "met"
            } else {
                "NOT met"
            }
        )?;
        writeln!(
            f,
            "  stale reads (older than a fence already in Redis when sent): {} of {} checked",
            self.stale_reads, self.checked_reads
        )
    }
}

/// Product indexes (0-based) with Zipf(s) popularity: index 0 the most read.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for k in 1..=n {
            total += 1.0 / (k as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut StdRng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

/// A read: sent at (since the start), product id, version returned.
type Read = (Duration, i64, i64);

pub async fn run(config: &Config, options: &Options) -> Result<Report> {
    if options.products == 0 || options.requests == 0 || options.concurrency == 0 {
        return Err(Error::Options(
            "products, requests and concurrency must be at least 1".into(),
        ));
    }
    on_own_stack(config, "cache", options.keep, |cfg, _| async move {
        bench(cfg, options).await
    })
    .await
}

async fn bench(cfg: Config, options: &Options) -> Result<Report> {
    let platform = Platform::start(cfg).await?;
    let sources = platform.sources()?.clone();
    let kafka = platform.kafka()?.clone();
    let redis_url = platform
        .redis_url()
        .ok_or_else(|| Error::Run("the bench stack has no Redis".into()))?;
    let oltp = || {
        let mut c = platform.config().oltp.clone();
        c.listen = "127.0.0.1:0".into();
        c.pool_size = options.concurrency.clamp(4, 32);
        c
    };
    let oltp_err = |e| Error::Oltp(Box::new(e));
    let shutdown = CancellationToken::new();
    let plain = Server::bind(oltp(), sources.topology())
        .await
        .map_err(oltp_err)?;
    let cached = Server::bind(oltp(), sources.topology())
        .await
        .map_err(oltp_err)?
        .with_cache(&redis_url, &kafka, &oltp().cache)
        .map_err(oltp_err)?;
    let urls = [
        format!("http://{}", plain.local_addr()),
        format!("http://{}", cached.local_addr()),
    ];
    tokio::spawn(plain.run(shutdown.clone()));
    tokio::spawn(cached.run(shutdown.clone()));
    let catalog: Vec<_> = sources
        .cdc_sources()
        .into_iter()
        .filter(|s| s.db == "catalog")
        .collect();
    tokio::spawn(tributary_cdc::run(
        platform.config().cdc.clone(),
        kafka,
        catalog,
        shutdown.clone(),
    ));
    let result = measure(&sources.catalog, &urls, &redis_url, options).await;
    shutdown.cancel();
    result
}

async fn measure(
    catalog: &str,
    urls: &[String; 2],
    redis_url: &str,
    options: &Options,
) -> Result<Report> {
    let db = tributary_stack::postgres::connect(catalog).await?;
    db.execute(
        "INSERT INTO products (sku, name, category, price)
         SELECT 'BENCH-' || g, 'product ' || g, 'c' || (g % 20), 1 + (g % 500)
         FROM generate_series(1, $1::int) g",
        &[&(options.products as i32)],
    )
    .await
    .map_err(pg("creating the bench products"))?;
    let ids: Vec<i64> = db
        .query("SELECT id FROM products ORDER BY id", &[])
        .await
        .map_err(pg("reading product ids"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency)
        .build()
        .map_err(|source| Error::Http {
            context: "building the HTTP client".into(),
            source,
        })?;
    let redis = redis::Client::open(redis_url)
        .map_err(|e| Error::Run(format!("Redis: {e}")))?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| Error::Run(format!("connecting to Redis: {e}")))?;

    // The cache serves once its stream has shown it is caught up.
    let deadline = Instant::now() + Duration::from_secs(120);
    while tributary_oltp::cache::stats().hits == 0 {
        if Instant::now() > deadline {
            return Err(Error::Run(
                "the product cache served no hit within 120 s".into(),
            ));
        }
        get(&http, &urls[1], ids[0]).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let zipf = Zipf::new(ids.len(), options.zipf);
    let mut runs = Vec::new();
    let mut lag_s = Vec::new();
    let mut stale = 0;
    let mut checked = 0;
    let mut changes = 0;
    let mut stats = CacheStats::default();
    for (i, (name, url)) in [
        ("PostgreSQL (no cache)", &urls[0]),
        ("Redis cache", &urls[1]),
    ]
    .into_iter()
    .enumerate()
    {
        let before = tributary_oltp::cache::stats();
        let start = Instant::now();
        let stop = CancellationToken::new();
        let changer = tokio::spawn(change_prices(
            http.clone(),
            urls[0].clone(),
            redis.clone(),
            ids.clone(),
            options.changes_per_s,
            options.seed + i as u64,
            start,
            stop.clone(),
        ));
        let (reads, latencies) = browse(&http, url, &ids, &zipf, options, start).await?;
        let seconds = start.elapsed().as_secs_f64();
        stop.cancel();
        let fences = changer
            .await
            .map_err(|e| Error::Internal(format!("price changer: {e}")))??;
        let after = tributary_oltp::cache::stats();
        let delta = after.since(&before);
        let db_reads = if i == 0 {
            reads.len() as u64
        } else {
            delta.db_reads
        };
        runs.push(Run {
            name,
            requests: reads.len(),
            seconds,
            p50_ms: percentile(&latencies, 0.5) * 1e3,
            p99_ms: percentile(&latencies, 0.99) * 1e3,
            db_reads,
        });
        if i == 1 {
            stats = delta;
            changes = fences.len();
            lag_s = fences.iter().map(|f| f.lag_s).collect();
            lag_s.sort_by(f64::total_cmp);
            (stale, checked) = check(&reads, &fences);
        }
    }
    Ok(Report {
        products: ids.len(),
        zipf: options.zipf,
        concurrency: options.concurrency,
        runs,
        stats,
        changes,
        lag_s,
        stale_reads: stale,
        checked_reads: checked,
    })
}

async fn get(http: &reqwest::Client, url: &str, id: i64) -> Result<Value> {
    let r = http
        .get(format!("{url}/products/{id}"))
        .send()
        .await
        .map_err(|source| Error::Http {
            context: format!("GET /products/{id}"),
            source,
        })?;
    if !r.status().is_success() {
        return Err(Error::Run(format!(
            "GET /products/{id} answered {}",
            r.status()
        )));
    }
    r.json().await.map_err(|source| Error::Http {
        context: format!("GET /products/{id}"),
        source,
    })
}

/// `options.requests` reads by `options.concurrency` workers; request `n`
/// reads the same product in every run (one seeded sequence).
async fn browse(
    http: &reqwest::Client,
    url: &str,
    ids: &[i64],
    zipf: &Zipf,
    options: &Options,
    start: Instant,
) -> Result<(Vec<Read>, Vec<f64>)> {
    let mut rng = StdRng::seed_from_u64(options.seed);
    let plan: Arc<Vec<i64>> = Arc::new(
        (0..options.requests)
            .map(|_| ids[zipf.sample(&mut rng)])
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..options.concurrency)
        .map(|_| {
            let (http, url, plan, next) =
                (http.clone(), url.to_owned(), plan.clone(), next.clone());
            tokio::spawn(async move {
                let mut reads = Vec::new();
                let mut latencies = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&id) = plan.get(n) else { break };
                    let sent = start.elapsed();
                    let p = get(&http, &url, id).await?;
                    latencies.push((start.elapsed() - sent).as_secs_f64());
                    let version = p["version"].as_i64().unwrap_or(-1);
                    reads.push((sent, id, version));
                }
                Ok::<_, Error>((reads, latencies))
            })
        })
        .collect();
    let mut reads = Vec::new();
    let mut latencies = Vec::new();
    for w in workers {
        let (r, l) = w
            .await
            .map_err(|e| Error::Internal(format!("browse worker: {e}")))??;
        reads.extend(r);
        latencies.extend(l);
    }
    latencies.sort_by(f64::total_cmp);
    Ok((reads, latencies))
}

/// A price change whose fence was seen in Redis.
struct Fence {
    id: i64,
    version: i64,
    /// When the fence (or anything newer) was first seen, since the start.
    seen: Duration,
    /// Source commit (the time the fence carries) to seen.
    lag_s: f64,
}

/// Changes the price of a popular product `per_s` times a second (through
/// the reference service: the database is the same) and watches Redis for
/// each change's fence.
#[allow(clippy::too_many_arguments)]
async fn change_prices(
    http: reqwest::Client,
    url: String,
    redis: redis::aio::MultiplexedConnection,
    ids: Vec<i64>,
    per_s: f64,
    seed: u64,
    start: Instant,
    stop: CancellationToken,
) -> Result<Vec<Fence>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let fences = Arc::new(Mutex::new(Vec::new()));
    let mut watchers = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_s.max(0.1)));
    let hot = ids.len().min(20);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let id = ids[rng.random_range(0..hot)];
        let cents: i64 = rng.random_range(100..100_000);
        let r = http
            .patch(format!("{url}/products/{id}/price"))
            .json(&serde_json::json!({"price": cents as f64 / 100.0}))
            .send()
            .await
            .map_err(|source| Error::Http {
                context: "PATCH price".into(),
                source,
            })?;
        let body: Value = r.json().await.map_err(|source| Error::Http {
            context: "PATCH price".into(),
            source,
        })?;
        let Some(version) = body["version"].as_i64() else {
            return Err(Error::Run(format!("PATCH price answered {body}")));
        };
        let (mut redis, fences) = (redis.clone(), fences.clone());
        watchers.push(tokio::spawn(async move {
            let key = tributary_oltp::cache::product_key(id);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let (v, ts): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
                    .arg(&key)
                    .arg("v")
                    .arg("ts")
                    .query_async(&mut redis)
                    .await
                    .unwrap_or((None, None));
                if v.is_some_and(|v| v >= version) {
                    let seen = start.elapsed();
                    let now_us = tributary_metrics::otlp::now_us();
                    // A newer change's fence carries that change's commit
                    // time: then only the fence's existence is known.
                    if v == Some(version)
                        && let Some(ts) = ts.filter(|t| *t > 0)
                    {
                        fences.lock().await.push(Fence {
                            id,
                            version,
                            seen,
                            lag_s: (now_us - ts) as f64 / 1e6,
                        });
                    }
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }
    for w in watchers {
        let _ = w.await;
    }
    let fences = std::mem::take(&mut *fences.lock().await);
    Ok(fences)
}

/// (stale reads, reads checked): a read is stale when its product had a
/// fence of a newer version in Redis before the read was sent.
fn check(reads: &[Read], fences: &[Fence]) -> (usize, usize) {
    let mut by_id: HashMap<i64, Vec<(Duration, i64)>> = HashMap::new();
    for f in fences {
        by_id.entry(f.id).or_default().push((f.seen, f.version));
    }
    let mut stale = 0;
    for (sent, id, version) in reads {
        let floor = by_id
            .get(id)
            .into_iter()
            .flatten()
            .filter(|(seen, _)| seen < sent)
            .map(|(_, v)| *v)
            .max()
            .unwrap_or(0);
        if *version < floor {
            stale += 1;
        }
    }
    (stale, reads.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_the_first_products() {
        let z = Zipf::new(1000, 1.0);
        let mut rng = StdRng::seed_from_u64(1);
        let mut counts = vec![0usize; 1000];
        for _ in 0..100_000 {
            counts[z.sample(&mut rng)] += 1;
        }
        // H(1000) ≈ 7.49: product 1 gets about 13%, product 2 half that.
        assert!((12_000..15_000).contains(&counts[0]), "{}", counts[0]);
        assert!(counts[0] > counts[1] && counts[1] > counts[9]);
        assert!(counts[999] < 50);
    }

    #[test]
    fn a_read_older_than_a_seen_fence_is_stale() {
        let ms = Duration::from_millis;
        let fences = vec![Fence {
            id: 1,
            version: 3,
            seen: ms(100),
            lag_s: 0.01,
        }];
        let reads = vec![
            (ms(90), 1, 2),
            (ms(110), 1, 3),
            (ms(120), 1, 2),
            (ms(120), 2, 1),
        ];
        assert_eq!(check(&reads, &fences), (1, 4));
    }
}
