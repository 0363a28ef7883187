//! Who is calling, and whether they may: API keys and token buckets.
//!
//! A key arrives as `X-Api-Key: <key>` or `Authorization: Bearer <key>`
//! and is compared by its SHA-256, so the configuration never holds a key
//! and no log line ever shows one. A request without a key is anonymous:
//! limited per client address, or refused with `401` when the config
//! requires keys. An unknown key is always refused: a typo should fail
//! loudly, not fall back to the anonymous limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::config::{GatewayConfig, LimitConfig};

type Result<T> = std::result::Result<T, Refusal>;

/// Buckets kept before full ones (idle clients) are dropped.
const MAX_BUCKETS: usize = 100_000;

/// A refusal at the edge: status, message, and the header it is about.
#[derive(Debug, PartialEq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
    pub field: &'static str,
    /// Seconds, for `429`'s `Retry-After`.
    pub retry_after: Option<u64>,
}

/// The client a request counts against.
#[derive(Debug, Clone, PartialEq)]
pub struct Client {
    /// The key's name, or `anonymous`.
    pub name: String,
    /// The bucket's name: the key's name, or `anonymous/<address>`.
    bucket: String,
    limit: LimitConfig,
}

pub struct Edge {
    keys: HashMap<String, (String, LimitConfig)>,
    require_key: bool,
    anonymous: LimitConfig,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The SHA-256 of `key`, in lowercase hex.
pub fn key_hash(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Edge {
    pub fn new(config: &GatewayConfig) -> Edge {
        Edge {
            keys: config
                .api_keys
                .iter()
                .map(|k| (k.key_sha256.to_ascii_lowercase(), (k.name.clone(), k.limit)))
                .collect(),
            require_key: config.require_api_key,
            anonymous: config.anonymous,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The client of a request with `key` (from [`presented_key`]) from
    /// address `from`.
    pub fn identify(&self, key: Option<&str>, from: Option<IpAddr>) -> Result<Client> {
        let refuse = |message: &str| Refusal {
            status: 401,
            message: message.into(),
            field: "x-api-key",
            retry_after: None,
        };
        match key {
            Some(key) => match self.keys.get(&key_hash(key)) {
                Some((name, limit)) => Ok(Client {
                    name: name.clone(),
                    bucket: name.clone(),
                    limit: *limit,
                }),
                None => Err(refuse("unknown API key")),
            },
            None if self.require_key => Err(refuse(
                "an API key is required (X-Api-Key or Authorization: Bearer)",
            )),
            None => Ok(Client {
                name: "anonymous".into(),
                bucket: format!(
                    "anonymous/{}",
                    from.map(|a| a.to_string()).unwrap_or_default()
                ),
                limit: self.anonymous,
            }),
        }
    }

    /// Takes a token from the client's bucket, or says when one will be
    /// there.
    pub fn admit(&self, client: &Client) -> Result<()> {
        self.admit_at(client, Instant::now())
    }

    fn admit_at(&self, client: &Client, now: Instant) -> Result<()> {
        let LimitConfig { rate, .. } = client.limit;
        if rate <= 0.0 {
            return Ok(());
        }
        let burst = client.limit.burst();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&client.bucket) {
            // Drop the buckets that have refilled: forgetting them changes
            // nothing, they would start full again.
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = buckets.entry(client.bucket.clone()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - b.tokens) / rate).ceil().max(1.0) as u64;
        Err(Refusal {
            status: 429,
            message: format!(
                "rate limit of {} exceeded ({rate} requests/s, bursts of {burst})",
                client.name
            ),
            field: "x-api-key",
            retry_after: Some(wait),
        })
    }
}

/// The key a request presents, if any.
pub fn presented_key<'a>(
    api_key: Option<&'a str>,
    authorization: Option<&'a str>,
) -> Option<&'a str> {
    api_key
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .or_else(|| {
            authorization
                .and_then(|a| a.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|k| !k.is_empty())
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::ApiKeyConfig;

    fn edge(require: bool) -> Edge {
        Edge::new(&GatewayConfig {
            require_api_key: require,
            api_keys: vec![ApiKeyConfig {
                name: "storefront".into(),
                key_sha256: key_hash("s3cret"),
                limit: LimitConfig {
                    rate: 2.0,
                    burst: Some(3.0),
                },
            }],
            ..GatewayConfig::default()
        })
    }

    #[test]
    fn keys_are_known_by_hash_and_unknown_ones_refused() {
        let e = edge(false);
        let ip = Some("10.0.0.1".parse().unwrap());
        assert_eq!(e.identify(Some("s3cret"), ip).unwrap().name, "storefront");
        let r = e.identify(Some("guess"), ip).unwrap_err();
        assert_eq!((r.status, r.message.as_str()), (401, "unknown API key"));
        assert!(!r.message.contains("guess"));
        assert_eq!(e.identify(None, ip).unwrap().name, "anonymous");
        assert_eq!(edge(true).identify(None, ip).unwrap_err().status, 401);
        assert_eq!(presented_key(None, Some("Bearer s3cret")), Some("s3cret"));
        assert_eq!(presented_key(Some(" k "), Some("Bearer x")), Some("k"));
        assert_eq!(presented_key(None, Some("Basic abc")), None);
    }

    #[test]
    fn the_bucket_allows_bursts_then_the_rate() {
        let e = edge(false);
        let c = e.identify(Some("s3cret"), None).unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            e.admit_at(&c, t0).unwrap();
        }
        let r = e.admit_at(&c, t0).unwrap_err();
        assert_eq!((r.status, r.retry_after), (429, Some(1)));
        // Half a second at 2/s refills one token.
        e.admit_at(&c, t0 + Duration::from_millis(500)).unwrap();
        assert!(e.admit_at(&c, t0 + Duration::from_millis(500)).is_err());
        // Anonymous clients have a bucket per address.
        let a = e.identify(None, Some("10.0.0.1".parse().unwrap())).unwrap();
        let b = e.identify(None, Some("10.0.0.2".parse().unwrap())).unwrap();
        for _ in 0..400 {
            e.admit_at(&a, t0).unwrap();
        }
        assert!(e.admit_at(&a, t0).is_err());
        e.admit_at(&b, t0).unwrap();
    }
}
