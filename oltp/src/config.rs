//! Configuration of the OLTP services.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Where the databases are: one DSN per shard (shard `i` is `shards[i]`) and
/// one for the catalog, in `tokio-postgres` key/value form.
#[derive(Clone, Debug)]
pub struct Topology {
    pub shards: Vec<String>,
    pub catalog: String,
    /// A hot standby per shard (`replicas[i]` for shard `i`), `None` where
    /// a shard has none; empty when no shard has one. Read-only routes may
    /// read there within `[oltp] replica_max_lag_ms`.
    pub replicas: Vec<Option<String>>,
}

/// The `[oltp]` section of the configuration file.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct OltpConfig {
    /// Address of the HTTP listener; port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// How new customers are placed on shards.
    #[serde(default)]
    pub sharding: ShardingConfig,
    /// Connections per database.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// The product cache (`[oltp.cache]`).
    #[serde(default)]
    pub cache: CacheConfig,
    /// Read-only routes (`GET /orders/{id}` and its shipment) read from the
    /// shard's standby while it is shown to be at most this far behind the
    /// primary (see `docs/ha.md`, "Reads from the standby"); 0 sends every
    /// read to the primary.
    #[serde(default = "default_replica_max_lag_ms")]
    pub replica_max_lag_ms: u64,
}

/// The `[oltp.cache]` section: product reads through Redis, invalidated by
/// the catalog's change stream (see `docs/cache.md`).
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// `false`: product reads always go to PostgreSQL.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `redis://[user:password@]host:port[/db]`; absent: the local stack's
    /// Redis, when it has one.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// How long a cached product lives without an invalidation: a safety
    /// net, not the freshness mechanism.
    #[serde(default = "default_cache_ttl_ms")]
    pub ttl_ms: u64,
    /// Per Redis call; past it the read goes to PostgreSQL.
    #[serde(default = "default_cache_timeout_ms")]
    pub timeout_ms: u64,
    /// Reads bypass the cache while the invalidation stream is further
    /// behind the source than this (or not running), so staleness stays
    /// bounded by it.
    #[serde(default = "default_cache_max_lag_ms")]
    pub max_lag_ms: u64,
    /// How long the broker may hold the invalidation stream's fetch: the
    /// lag against the broker's CPU (docs/cache.md has both measured).
    #[serde(default = "default_cache_fetch_wait_ms")]
    pub fetch_wait_ms: u64,
}

fn yes() -> bool {
    true
}

fn default_cache_ttl_ms() -> u64 {
    600_000
}

fn default_cache_timeout_ms() -> u64 {
    100
}

fn default_cache_max_lag_ms() -> u64 {
    5_000
}

fn default_cache_fetch_wait_ms() -> u64 {
    50
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            redis_url: None,
            ttl_ms: default_cache_ttl_ms(),
            timeout_ms: default_cache_timeout_ms(),
            max_lag_ms: default_cache_max_lag_ms(),
            fetch_wait_ms: default_cache_fetch_wait_ms(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8088".to_owned()
}

fn default_pool_size() -> usize {
    8
}

fn default_replica_max_lag_ms() -> u64 {
    1000
}

impl Default for OltpConfig {
    fn default() -> Self {
        OltpConfig {
            listen: default_listen(),
            sharding: ShardingConfig::default(),
            pool_size: default_pool_size(),
            cache: CacheConfig::default(),
            replica_max_lag_ms: default_replica_max_lag_ms(),
        }
    }
}

/// The `[oltp.sharding]` section; which fields matter depends on `strategy`.
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct ShardingConfig {
    #[serde(default)]
    pub strategy: StrategyKind,
    /// `range`: ascending exclusive upper bounds of customer id, one per shard
    /// except the last, which is unbounded.
    #[serde(default)]
    pub range_bounds: Vec<i64>,
    /// `list`: region name to shard index.
    #[serde(default)]
    pub regions: BTreeMap<String, usize>,
    /// `geo`: `locations[i]` is where shard `i` lives.
    #[serde(default)]
    pub locations: Vec<GeoPoint>,
}

/// The placement strategy for new customers.
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StrategyKind {
    /// Jump consistent hash of the customer id.
    #[default]
    Hash,
    /// Customer id ranges.
    Range,
    /// Region name lookup.
    List,
    /// Nearest shard by great-circle distance.
    Geo,
}

/// A point on Earth in degrees.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GeoPoint {
    pub lat: f64,
    pub lon: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply() {
        let c: OltpConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c.listen, "127.0.0.1:8088");
        assert_eq!(c.pool_size, 8);
        assert_eq!(c.sharding.strategy, StrategyKind::Hash);
    }

    #[test]
    fn parses_every_strategy_and_rejects_unknown_fields() {
        let c: OltpConfig = serde_json::from_str(
            r#"{"sharding": {"strategy": "geo", "locations": [{"lat": 1.0, "lon": 2.0}]}}"#,
        )
        .unwrap();
        assert_eq!(c.sharding.strategy, StrategyKind::Geo);
        assert_eq!(c.sharding.locations, vec![GeoPoint { lat: 1.0, lon: 2.0 }]);
        for s in ["hash", "range", "list"] {
            let j = format!(r#"{{"strategy": "{s}"}}"#);
            serde_json::from_str::<ShardingConfig>(&j).unwrap();
        }
        assert!(serde_json::from_str::<OltpConfig>(r#"{"listn": "x"}"#).is_err());
        assert!(serde_json::from_str::<ShardingConfig>(r#"{"strategy": "Hash"}"#).is_err());
    }
}
