//! Configuration of the OLTP services.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Where the databases are: one DSN per shard (shard `i` is `shards[i]`) and
/// one for the catalog, in `tokio-postgres` key/value form.
#[derive(Clone, Debug)]
pub struct Topology {
    pub shards: Vec<String>,
    pub catalog: String,
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
}

fn default_listen() -> String {
    "127.0.0.1:8088".to_owned()
}

fn default_pool_size() -> usize {
    8
}

impl Default for OltpConfig {
    fn default() -> Self {
        OltpConfig {
            listen: default_listen(),
            sharding: ShardingConfig::default(),
            pool_size: default_pool_size(),
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
