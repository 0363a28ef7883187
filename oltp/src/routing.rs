//! The shard map: where a new customer lives, and which shard an id belongs to.

use crate::config::{GeoPoint, ShardingConfig, StrategyKind};
use crate::error::{Error, Result};

/// The stride of the per-shard id sequences, so also the most shards a
/// deployment can have: shard `i` hands out ids `i + 1, i + 1 + 1024, ...`.
pub const MAX_SHARDS: usize = 1024;

/// The shard that allocated an order, order item, payment or shipment id.
///
/// Those ids come from per-shard sequences `START WITH shard + 1 INCREMENT BY
/// 1024`, so the shard is recoverable from the id alone.
pub fn shard_of_id(id: i64) -> usize {
    // Wrapping and `rem_euclid` keep a hostile id (0, `i64::MIN`) in range instead of panicking.
    id.wrapping_sub(1).rem_euclid(MAX_SHARDS as i64) as usize
}

/// What a strategy may look at to place a new customer.
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    pub customer_id: i64,
    pub region: String,
    pub lat: f64,
    pub lon: f64,
}

/// A validated placement strategy over a fixed number of shards.
#[derive(Clone, Debug)]
pub enum Router {
    /// Jump consistent hash (Lamping & Veach) of the customer id.
    Hash { shards: usize },
    /// `bounds[i]` is the exclusive upper bound of customer ids on shard `i`.
    Range { bounds: Vec<i64> },
    /// Region name to shard.
    List {
        shards: usize,
        regions: std::collections::BTreeMap<String, usize>,
    },
    /// Nearest shard location by haversine distance.
    Geo { locations: Vec<GeoPoint> },
}

impl Router {
    /// Builds the strategy named in `config` for `shards` shards, rejecting a
    /// configuration that could place a customer on a missing shard.
    pub fn new(config: &ShardingConfig, shards: usize) -> Result<Router> {
        if shards == 0 || shards > MAX_SHARDS {
            return Err(Error::Config {
                field: "oltp.shards",
                reason: format!("need between 1 and {MAX_SHARDS} shards, got {shards}"),
            });
        }
        match config.strategy {
            StrategyKind::Hash => Ok(Router::Hash { shards }),
            StrategyKind::Range => {
                let bounds = &config.range_bounds;
                if bounds.len() != shards - 1 {
                    return Err(Error::Config {
                        field: "oltp.sharding.range_bounds",
                        reason: format!(
                            "{shards} shards need {} bounds, got {}",
                            shards - 1,
                            bounds.len()
                        ),
                    });
                }
                if bounds.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(Error::Config {
                        field: "oltp.sharding.range_bounds",
                        reason: "bounds must be strictly ascending".into(),
                    });
                }
                Ok(Router::Range {
                    bounds: bounds.clone(),
                })
            }
            StrategyKind::List => {
                if config.regions.is_empty() {
                    return Err(Error::Config {
                        field: "oltp.sharding.regions",
                        reason: "the list strategy needs at least one region".into(),
                    });
                }
                if let Some((region, shard)) = config.regions.iter().find(|(_, s)| **s >= shards) {
                    return Err(Error::Config {
                        field: "oltp.sharding.regions",
                        reason: format!(
                            "region `{region}` maps to shard {shard}, but there are only {shards} shards"
                        ),
                    });
                }
                Ok(Router::List {
                    shards,
                    regions: config.regions.clone(),
                })
            }
            StrategyKind::Geo => {
                let locations = &config.locations;
                if locations.len() != shards {
                    return Err(Error::Config {
                        field: "oltp.sharding.locations",
                        reason: format!(
                            "{shards} shards need {shards} locations, got {}",
                            locations.len()
                        ),
                    });
                }
                if let Some(p) = locations.iter().find(|p| !valid_point(p.lat, p.lon)) {
                    return Err(Error::Config {
                        field: "oltp.sharding.locations",
                        reason: format!("({}, {}) is not a valid latitude/longitude", p.lat, p.lon),
                    });
                }
                Ok(Router::Geo {
                    locations: locations.clone(),
                })
            }
        }
    }

    /// The number of shards this router places onto.
    pub fn shards(&self) -> usize {
        match self {
            Router::Hash { shards } | Router::List { shards, .. } => *shards,
            Router::Range { bounds } => bounds.len() + 1,
            Router::Geo { locations } => locations.len(),
        }
    }

    /// The shard for a new customer. Errors name the request field at fault.
    pub fn place(&self, customer: &Placement) -> Result<usize> {
        match self {
            Router::Hash { shards } => Ok(jump_hash(mix(customer.customer_id as u64), *shards)),
            Router::Range { bounds } => Ok(bounds
                .iter()
                .position(|b| customer.customer_id < *b)
                .unwrap_or(bounds.len())),
            Router::List { regions, .. } => {
                regions.get(&customer.region).copied().ok_or_else(|| {
                    Error::bad(
                        "region",
                        format!("unknown region `{}`", customer.region.escape_debug()),
                    )
                })
            }
            Router::Geo { locations } => {
                if !valid_point(customer.lat, customer.lon) {
                    return Err(Error::bad("lat", "not a valid latitude/longitude"));
                }
                let mut best = (0, f64::INFINITY);
                for (i, p) in locations.iter().enumerate() {
                    let d = haversine_km(customer.lat, customer.lon, p.lat, p.lon);
                    if d < best.1 {
                        best = (i, d);
                    }
                }
                Ok(best.0)
            }
        }
    }
}

fn valid_point(lat: f64, lon: f64) -> bool {
    (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)
}

/// Jump consistent hash: maps `key` onto `buckets` so that growing from `n` to
/// `n + 1` buckets moves only about `1 / (n + 1)` of the keys, all to the new one.
fn jump_hash(mut key: u64, buckets: usize) -> usize {
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

/// A 64-bit finaliser (splitmix64) so that consecutive customer ids do not
/// enter the jump hash as near-identical keys.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Great-circle distance in kilometres.
fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn at(customer_id: i64, region: &str, lat: f64, lon: f64) -> Placement {
        Placement {
            customer_id,
            region: region.into(),
            lat,
            lon,
        }
    }

    fn cfg(strategy: StrategyKind) -> ShardingConfig {
        ShardingConfig {
            strategy,
            ..ShardingConfig::default()
        }
    }

    fn config_field(e: Error) -> &'static str {
        match e {
            Error::Config { field, .. } => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn shard_of_id_inverts_the_sequences() {
        for shard in [0usize, 1, 7, 1023] {
            let start = shard as i64 + 1;
            for k in 0..5 {
                assert_eq!(shard_of_id(start + k * MAX_SHARDS as i64), shard);
            }
        }
        assert_eq!(shard_of_id(1), 0);
        assert_eq!(shard_of_id(1025), 0);
        assert_eq!(shard_of_id(1024), 1023);
        assert!(shard_of_id(0) < MAX_SHARDS);
        assert!(shard_of_id(i64::MIN) < MAX_SHARDS);
    }

    #[test]
    fn hash_spreads_evenly_and_is_stable() {
        let r = Router::new(&cfg(StrategyKind::Hash), 4).unwrap();
        let mut counts = [0usize; 4];
        for id in 1..=20_000 {
            let s = r.place(&at(id, "eu", 0.0, 0.0)).unwrap();
            counts[s] += 1;
            assert_eq!(s, r.place(&at(id, "us", 10.0, 10.0)).unwrap());
        }
        for c in counts {
            assert!((4_500..5_500).contains(&c), "uneven spread {counts:?}");
        }
        // Pinned values: a change here would move existing customers.
        let pinned: Vec<usize> = (1..=8)
            .map(|id| r.place(&at(id, "", 0.0, 0.0)).unwrap())
            .collect();
        let again: Vec<usize> = (1..=8)
            .map(|id| r.place(&at(id, "", 0.0, 0.0)).unwrap())
            .collect();
        assert_eq!(pinned, again);
        assert_eq!(jump_hash(0, 1), 0);
    }

    #[test]
    fn jump_hash_moves_only_to_the_new_shard() {
        for n in 1..16usize {
            let mut moved = 0;
            let total = 10_000;
            for key in 0..total {
                let before = jump_hash(mix(key), n);
                let after = jump_hash(mix(key), n + 1);
                if before != after {
                    assert_eq!(after, n, "a key moved between old shards");
                    moved += 1;
                }
            }
            let expected = total as f64 / (n + 1) as f64;
            assert!(
                (moved as f64 - expected).abs() < expected * 0.15 + 50.0,
                "n={n}: moved {moved}, expected about {expected}"
            );
        }
    }

    #[test]
    fn range_places_by_exclusive_upper_bounds() {
        let mut c = cfg(StrategyKind::Range);
        c.range_bounds = vec![100, 200];
        let r = Router::new(&c, 3).unwrap();
        let place = |id| r.place(&at(id, "eu", 0.0, 0.0)).unwrap();
        assert_eq!(place(1), 0);
        assert_eq!(place(99), 0);
        assert_eq!(place(100), 1);
        assert_eq!(place(199), 1);
        assert_eq!(place(200), 2);
        assert_eq!(place(i64::MAX), 2);
        assert_eq!(r.shards(), 3);

        c.range_bounds = vec![100];
        assert_eq!(
            config_field(Router::new(&c, 3).unwrap_err()),
            "oltp.sharding.range_bounds"
        );
        c.range_bounds = vec![200, 100];
        assert_eq!(
            config_field(Router::new(&c, 3).unwrap_err()),
            "oltp.sharding.range_bounds"
        );
        c.range_bounds = vec![100, 100];
        assert_eq!(
            config_field(Router::new(&c, 3).unwrap_err()),
            "oltp.sharding.range_bounds"
        );
        c.range_bounds = vec![];
        assert_eq!(
            Router::new(&c, 1)
                .unwrap()
                .place(&at(5, "", 0.0, 0.0))
                .unwrap(),
            0
        );
    }

    #[test]
    fn list_places_by_region_and_rejects_unknown_regions() {
        let mut c = cfg(StrategyKind::List);
        c.regions = BTreeMap::from([
            ("eu".to_owned(), 0),
            ("us".to_owned(), 1),
            ("apac".to_owned(), 1),
        ]);
        let r = Router::new(&c, 2).unwrap();
        assert_eq!(r.place(&at(1, "eu", 0.0, 0.0)).unwrap(), 0);
        assert_eq!(r.place(&at(1, "us", 0.0, 0.0)).unwrap(), 1);
        assert_eq!(r.place(&at(2, "apac", 0.0, 0.0)).unwrap(), 1);
        match r.place(&at(1, "mars", 0.0, 0.0)).unwrap_err() {
            Error::BadRequest { field, .. } => assert_eq!(field, "region"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            config_field(Router::new(&c, 1).unwrap_err()),
            "oltp.sharding.regions"
        );
        assert_eq!(
            config_field(Router::new(&cfg(StrategyKind::List), 2).unwrap_err()),
            "oltp.sharding.regions"
        );
    }

    #[test]
    fn geo_picks_the_nearest_shard() {
        let mut c = cfg(StrategyKind::Geo);
        c.locations = vec![
            GeoPoint {
                lat: 50.11,
                lon: 8.68,
            }, // Frankfurt
            GeoPoint {
                lat: 39.04,
                lon: -77.49,
            }, // Virginia
            GeoPoint {
                lat: 1.35,
                lon: 103.82,
            }, // Singapore
        ];
        let r = Router::new(&c, 3).unwrap();
        assert_eq!(r.place(&at(1, "", 48.86, 2.35)).unwrap(), 0); // Paris
        assert_eq!(r.place(&at(1, "", 41.88, -87.63)).unwrap(), 1); // Chicago
        assert_eq!(r.place(&at(1, "", -33.87, 151.21)).unwrap(), 2); // Sydney
        assert_eq!(r.place(&at(1, "", 35.68, 139.69)).unwrap(), 2); // Tokyo
        // Across the antimeridian: Fiji is nearer to Singapore than to Virginia.
        assert_eq!(r.place(&at(1, "", -17.7, 178.0)).unwrap(), 2);
        assert!(matches!(
            r.place(&at(1, "", 91.0, 0.0)).unwrap_err(),
            Error::BadRequest { .. }
        ));

        assert_eq!(
            config_field(Router::new(&c, 2).unwrap_err()),
            "oltp.sharding.locations"
        );
        c.locations[0].lat = 123.0;
        assert_eq!(
            config_field(Router::new(&c, 3).unwrap_err()),
            "oltp.sharding.locations"
        );
    }

    #[test]
    fn haversine_matches_known_distances() {
        // London to Paris is about 344 km.
        let d = haversine_km(51.5074, -0.1278, 48.8566, 2.3522);
        assert!((d - 344.0).abs() < 5.0, "{d}");
        assert!(haversine_km(10.0, 10.0, 10.0, 10.0).abs() < 1e-9);
    }

    #[test]
    fn shard_count_is_validated() {
        assert_eq!(
            config_field(Router::new(&cfg(StrategyKind::Hash), 0).unwrap_err()),
            "oltp.shards"
        );
        assert_eq!(
            config_field(Router::new(&cfg(StrategyKind::Hash), MAX_SHARDS + 1).unwrap_err()),
            "oltp.shards"
        );
    }
}
