//! The product cache: product reads through Redis, kept fresh by the
//! catalog's change stream rather than by TTL guesses.
//!
//! - **Read-through.** `GET /products/{id}` asks Redis; a miss reads
//!   PostgreSQL and fills the key. Concurrent misses of one key share one
//!   database read (single flight), so a burst on a cold key makes one
//!   read.
//! - **Ordered by version.** Every key holds the product's `version` (a
//!   column the catalog bumps on every update, `migrate.rs`) beside its
//!   JSON, and every write goes through one server-side compare-and-set
//!   ([`SET_IF_NEWER`]): an older state never replaces a newer one, whether
//!   it comes from a fill that read the database just before an update
//!   committed or from a change replayed by the stream.
//! - **Invalidated by the stream** ([`invalidate`]): a consumer of the
//!   products change topic writes, for every change, a *fence* at the
//!   change's version (no JSON, the change's commit LSN and time). A fence
//!   is a miss; only a fill of that version or newer replaces it. A delete
//!   fences the key for good. The consumer's positions are kept in Redis
//!   beside the keys they describe, so a Redis that restarts empty also
//!   forgets them, and the consumer starts from the topic's end: an empty
//!   cache holds nothing stale.
//! - **Bounded staleness.** Reads use the cache only while the consumer is
//!   within `max_lag_ms` of the source (it has applied everything the topic
//!   held at an end-offset probe that recent). Otherwise, and whenever
//!   Redis fails or is slow (`timeout_ms`), reads go to PostgreSQL and are
//!   counted; after a Redis failure the cache is left alone for a second
//!   before the next try, so a dead Redis costs no request a timeout.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use serde_json::Value;
use tokio::sync::OnceCell;
use tributary_kafka::KafkaConfig;
use tributary_metrics::{Histogram, IntCounter, IntCounterVec};

use tributary_model::dsn::describe;

use crate::config::CacheConfig;
use crate::error::{Error, Result};

pub(crate) mod invalidate;

/// Counter of product reads by how they were answered (`result`): `hit`,
/// `miss` (read the database and filled), `shared` (waited for another
/// request's read of the same key), `bypass` (the invalidation stream was
/// behind) or `unavailable` (Redis failed or was slow).
pub const READS_TOTAL: &str = "tributary_cache_reads_total";
/// Counter of product reads that reached PostgreSQL because of the cache
/// (misses, bypasses and unavailable reads): what the cache did not save.
pub const DB_READS_TOTAL: &str = "tributary_cache_db_reads_total";
/// Counter of Redis calls that failed or timed out.
pub const REDIS_ERRORS_TOTAL: &str = "tributary_cache_redis_errors_total";
/// Counter of changes the invalidation stream applied.
pub const INVALIDATIONS_TOTAL: &str = "tributary_cache_invalidations_total";
/// Histogram: seconds from a product change's source commit to its fence
/// in Redis.
pub const INVALIDATION_LAG_SECONDS: &str = "tributary_cache_invalidation_lag_seconds";

static READS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    tributary_metrics::counter_vec(
        READS_TOTAL,
        "Product reads, by how the cache answered them.",
        &["result"],
    )
});

static DB_READS: LazyLock<IntCounter> = LazyLock::new(|| {
    tributary_metrics::counter(
        DB_READS_TOTAL,
        "Product reads that went to PostgreSQL through the cache.",
    )
});

static REDIS_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    tributary_metrics::counter(
        REDIS_ERRORS_TOTAL,
        "Redis calls of the product cache that failed or timed out.",
    )
});

pub(crate) static INVALIDATIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    tributary_metrics::counter(
        INVALIDATIONS_TOTAL,
        "Product changes applied to the cache by the change stream.",
    )
});

pub(crate) static LAG: LazyLock<Histogram> = LazyLock::new(|| {
    tributary_metrics::histogram(
        INVALIDATION_LAG_SECONDS,
        "Seconds from a product change's source commit to its fence in the cache.",
        &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
    )
});

/// This process's cache counters (what [`READS_TOTAL`] and
/// [`DB_READS_TOTAL`] export), for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub shared: u64,
    pub bypassed: u64,
    pub unavailable: u64,
    pub db_reads: u64,
}

impl CacheStats {
    /// The counts since `earlier`.
    pub fn since(&self, earlier: &CacheStats) -> CacheStats {
        CacheStats {
            hits: self.hits - earlier.hits,
            misses: self.misses - earlier.misses,
            shared: self.shared - earlier.shared,
            bypassed: self.bypassed - earlier.bypassed,
            unavailable: self.unavailable - earlier.unavailable,
            db_reads: self.db_reads - earlier.db_reads,
        }
    }
}

/// The counters now.
pub fn stats() -> CacheStats {
    let reads = |r: &str| READS.with_label_values(&[r]).get();
    CacheStats {
        hits: reads("hit"),
        misses: reads("miss"),
        shared: reads("shared"),
        bypassed: reads("bypass"),
        unavailable: reads("unavailable"),
        db_reads: DB_READS.get(),
    }
}

/// The version a delete fences its key at: above any real version, exact
/// in Lua's doubles.
pub(crate) const DELETED_VERSION: i64 = 1 << 52;

/// How long a failed Redis is left alone before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The compare-and-set every write goes through. KEYS[1]: the key; ARGV:
/// version, JSON (`''` for a fence), commit LSN, commit time (µs), TTL (ms).
/// A write lands when its version is newer, or equal and it completes a
/// fence with the JSON of that version (keeping the fence's commit LSN and
/// time). Returns 1 when it landed.
pub const SET_IF_NEWER: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'v')
local new = tonumber(ARGV[1])
if cur then
  cur = tonumber(cur)
  if new < cur then return 0 end
  if new == cur then
    if ARGV[2] == '' then return 0 end
    local p = redis.call('HGET', KEYS[1], 'p')
    if p and p ~= '' then return 0 end
    -- A fill completes the fence: the fence's commit position stays.
    redis.call('HSET', KEYS[1], 'p', ARGV[2])
    redis.call('PEXPIRE', KEYS[1], ARGV[5])
    return 1
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'p', ARGV[2], 'lsn', ARGV[3], 'ts', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"#;

/// The key of product `id`.
pub fn product_key(id: i64) -> String {
    format!("tributary:product:{id}")
}

/// The hash of the invalidation stream's next offsets in `topic`, by
/// partition.
pub(crate) fn offsets_key(topic: &str) -> String {
    format!("tributary:cache:offsets:{topic}")
}

/// A product as the database gave it: its version and its API JSON.
pub(crate) struct Loaded {
    pub version: i64,
    pub json: Value,
}

/// One database read of a key that concurrent misses share: the product,
/// and whether the leader found it in the cache after all.
type Flight = Arc<OnceCell<(Option<Value>, bool)>>;

/// The product cache of one service process.
pub(crate) struct ProductCache {
    client: redis::Client,
    conn: Mutex<Option<MultiplexedConnection>>,
    /// While set and in the future, Redis is not tried.
    retry_at: Mutex<Option<Instant>>,
    inflight: Mutex<HashMap<i64, Flight>>,
    script: redis::Script,
    ttl_ms: u64,
    timeout: Duration,
    max_lag_ms: u64,
    /// Where the invalidation stream reads, and its `fetch.wait.max.ms`.
    pub(crate) kafka: KafkaConfig,
    pub(crate) fetch_wait_ms: u64,
    /// Unix ms up to which the invalidation stream has applied the source:
    /// the time of the last end-offset probe it has caught up with.
    pub(crate) applied_through_ms: AtomicU64,
}

pub(crate) fn now_ms() -> u64 {
    (tributary_metrics::otlp::now_us() / 1000) as u64
}

impl ProductCache {
    pub(crate) fn new(
        url: &str,
        kafka: &KafkaConfig,
        config: &CacheConfig,
    ) -> Result<ProductCache> {
        let client = redis::Client::open(url).map_err(|e| Error::Config {
            field: "oltp.cache.redis_url",
            reason: format!(
                "{} is not a Redis URL ({:?}); expected redis://[user:password@]host:port[/db]",
                describe(url),
                e.kind()
            ),
        })?;
        Ok(ProductCache {
            client,
            conn: Mutex::new(None),
            retry_at: Mutex::new(None),
            inflight: Mutex::new(HashMap::new()),
            script: redis::Script::new(SET_IF_NEWER),
            ttl_ms: config.ttl_ms,
            timeout: Duration::from_millis(config.timeout_ms.max(1)),
            max_lag_ms: config.max_lag_ms,
            kafka: kafka.clone(),
            fetch_wait_ms: config.fetch_wait_ms.max(1),
            applied_through_ms: AtomicU64::new(0),
        })
    }

    /// A connection, unless Redis failed less than [`RETRY_AFTER`] ago or
    /// does not answer now.
    pub(crate) async fn connection(&self) -> Option<MultiplexedConnection> {
        if let Some(c) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Some(c);
        }
        if let Some(at) = *self.retry_at.lock().unwrap_or_else(|p| p.into_inner())
            && Instant::now() < at
        {
            return None;
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout);
        match self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(c) => {
                *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
                tracing::info!("product cache connected to Redis");
                Some(c)
            }
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    /// Counts a failed call, drops the connection and rests Redis.
    pub(crate) fn failed(&self, error: &redis::RedisError) {
        REDIS_ERRORS.inc();
        let was_connected = self
            .conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some();
        *self.retry_at.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + RETRY_AFTER);
        if was_connected {
            tracing::warn!(error = %error, "product cache: Redis failed; reading PostgreSQL until it answers");
        }
    }

    /// Whether the invalidation stream is close enough behind the source
    /// for cached values to be served.
    fn live(&self) -> bool {
        now_ms().saturating_sub(self.applied_through_ms.load(Ordering::Relaxed)) <= self.max_lag_ms
    }

    /// Writes `version`/`json` (`""` for a fence) through [`SET_IF_NEWER`].
    pub(crate) async fn set_if_newer(
        &self,
        conn: &mut MultiplexedConnection,
        key: &str,
        version: i64,
        json: &str,
        lsn: &str,
        ts_us: i64,
    ) -> redis::RedisResult<bool> {
        let landed: i64 = self
            .script
            .key(key)
            .arg(version)
            .arg(json)
            .arg(lsn)
            .arg(ts_us)
            .arg(self.ttl_ms)
            .invoke_async(conn)
            .await?;
        Ok(landed == 1)
    }

    /// Product `id`, from the cache or else from `load` (the database).
    pub(crate) async fn product<F, Fut>(&self, id: i64, load: F) -> Result<Option<Value>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Loaded>>>,
    {
        let direct = |result: &str| {
            READS.with_label_values(&[result]).inc();
            DB_READS.inc();
        };
        if !self.live() {
            direct("bypass");
            return Ok(load().await?.map(|l| l.json));
        }
        let Some(mut conn) = self.connection().await else {
            direct("unavailable");
            return Ok(load().await?.map(|l| l.json));
        };
        let key = product_key(id);
        match cached(&mut conn, &key).await {
            Ok(Some(v)) => {
                READS.with_label_values(&["hit"]).inc();
                return Ok(Some(v));
            }
            Ok(None) => {}
            Err(e) => {
                self.failed(&e);
                direct("unavailable");
                return Ok(load().await?.map(|l| l.json));
            }
        }
        // A miss: one database read per key at a time; the others wait
        // for it and share its answer. The leader looks once more first: a
        // flight that ended between our look and now has filled the key.
        let flight: Flight = self
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_default()
            .clone();
        let mut led = false;
        let answer = flight
            .get_or_try_init(|| {
                led = true;
                async move {
                    if let Ok(Some(v)) = cached(&mut conn, &key).await {
                        return Ok((Some(v), true));
                    }
                    DB_READS.inc();
                    let loaded = load().await?;
                    if let Some(l) = &loaded {
                        let json = l.json.to_string();
                        let fill = self.set_if_newer(&mut conn, &key, l.version, &json, "", 0);
                        if let Err(e) = fill.await {
                            self.failed(&e);
                        }
                    }
                    Ok::<_, Error>((loaded.map(|l| l.json), false))
                }
            })
            .await
            .cloned();
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if inflight.get(&id).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                inflight.remove(&id);
            }
        }
        let (answer, from_cache) = answer?;
        let result = match (led, from_cache) {
            (false, _) => "shared",
            (true, true) => "hit",
            (true, false) => "miss",
        };
        READS.with_label_values(&[result]).inc();
        Ok(answer)
    }
}

/// The JSON `key` holds; `None` when it is absent, a fence, or (never
/// written by this module) not JSON.
async fn cached(conn: &mut MultiplexedConnection, key: &str) -> redis::RedisResult<Option<Value>> {
    let (version, json): (Option<i64>, Option<String>) = redis::cmd("HMGET")
        .arg(key)
        .arg("v")
        .arg("p")
        .query_async(conn)
        .await?;
    Ok(match (version, json) {
        (Some(_), Some(json)) if !json.is_empty() => serde_json::from_str(&json).ok(),
        _ => None,
    })
}
