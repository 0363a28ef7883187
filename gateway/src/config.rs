//! `[gateway]`: where the gateway listens, the replica pools behind it, and
//! the limits at the edge. Every field has a default except the pools,
//! which `tributary up --replicas N` fills for the local stack.

use std::collections::HashSet;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The largest request body the gateway accepts: the body is read whole
/// before a replica sees it (so a malformed one never reaches a replica
/// and a retry can send it again), in pingora's retry buffer of 64 KiB.
pub const MAX_BODY_LIMIT: usize = 64 * 1024;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The address clients call.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// `/healthz`, `/metrics` and the admin API (`/admin/...`): pools,
    /// weights, draining. Keep it on loopback or a private network.
    #[serde(default = "default_admin")]
    pub admin: String,
    #[serde(default)]
    pub policy: Policy,
    /// Replica pools (two for canary or blue/green), with traffic weights
    /// that the admin API changes at runtime.
    #[serde(default)]
    pub pools: Vec<PoolConfig>,
    /// Connecting to a replica.
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    /// One try: from sending the request to each read of the answer.
    #[serde(default = "default_try_ms")]
    pub try_timeout_ms: u64,
    /// All tries of one request together.
    #[serde(default = "default_total_ms")]
    pub total_timeout_ms: u64,
    /// Further tries after a failed one, on another replica: always when
    /// the connection failed (nothing was sent), otherwise only for a
    /// request that is safe to repeat (GET or HEAD, or any request with an
    /// `Idempotency-Key`).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Threads that serve the proxy, each with a single-threaded runtime
    /// of its own that keeps a connection for its life (pingora's
    /// "no steal" runtime); 0 is one per core.
    #[serde(default)]
    pub threads: usize,
    /// How often the DNS names among the backends are resolved again.
    #[serde(default = "default_resolve_ms")]
    pub resolve_interval_ms: u64,
    /// Larger bodies get `413` (at most [`MAX_BODY_LIMIT`]).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// `true`: a request without an API key gets `401`. `false`: it gets
    /// the `anonymous` limit, per client address.
    #[serde(default)]
    pub require_api_key: bool,
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    /// The rate limit of requests without a key, per client address.
    #[serde(default = "default_anonymous")]
    pub anonymous: LimitConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub ejection: EjectionConfig,
    /// Seconds in-flight requests get to finish when the gateway stops.
    #[serde(default = "default_drain_s")]
    pub drain_timeout_s: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: default_listen(),
            admin: default_admin(),
            policy: Policy::default(),
            pools: Vec::new(),
            connect_timeout_ms: default_connect_ms(),
            try_timeout_ms: default_try_ms(),
            total_timeout_ms: default_total_ms(),
            resolve_interval_ms: default_resolve_ms(),
            threads: 0,
            retries: default_retries(),
            max_body_bytes: default_max_body(),
            require_api_key: false,
            api_keys: Vec::new(),
            anonymous: default_anonymous(),
            health: HealthConfig::default(),
            ejection: EjectionConfig::default(),
            drain_timeout_s: default_drain_s(),
        }
    }
}

/// How a replica is chosen within a pool.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    #[default]
    RoundRobin,
    /// The replica with the fewest requests in flight through this gateway.
    LeastConnections,
    /// By customer (rendezvous hashing), so one customer's requests meet
    /// the same replica's caches; a request without a customer goes round
    /// robin. Losing a replica moves only that replica's customers.
    ConsistentHash,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    /// Share of traffic relative to the other pools; 0 takes none while
    /// another pool has a healthy replica.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Each replica as `ip:port`, or a DNS name as `host:port` that stands
    /// for every address it resolves to (a Kubernetes headless Service
    /// names each ready pod), resolved again every `resolve_interval_ms`.
    pub backends: Vec<String>,
}

/// A parsed backend entry.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Addr(SocketAddr),
    Name { host: String, port: u16 },
}

impl Target {
    pub fn parse(s: &str) -> Option<Target> {
        if let Ok(a) = s.parse() {
            return Some(Target::Addr(a));
        }
        let (host, port) = s.rsplit_once(':')?;
        let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        let name = host.strip_suffix('.').unwrap_or(host);
        // An all-digit last label is no DNS name (no top-level domain is
        // numeric): it is a mistyped address such as 10.0.0.300, refused
        // here rather than looked up and warned about forever.
        let numeric_tld = name
            .rsplit('.')
            .next()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
        if name.len() > 253 || numeric_tld || !name.split('.').all(label_ok) {
            return None;
        }
        Some(Target::Name {
            host: name.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Addr(a) => write!(f, "{a}"),
            Target::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl PoolConfig {
    /// The backends, parsed (after [`GatewayConfig::validate`]).
    pub fn targets(&self) -> Vec<Target> {
        self.backends
            .iter()
            .filter_map(|b| Target::parse(b))
            .collect()
    }
}

/// A client's key, stored as its SHA-256 (`tributary gateway key NAME`
/// makes one), so the config file holds no secret.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub name: String,
    pub key_sha256: String,
    #[serde(flatten)]
    pub limit: LimitConfig,
}

/// A token bucket: `rate` requests per second on average, bursts up to
/// `burst`. A rate of 0 means no limit.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    pub rate: f64,
    #[serde(default)]
    pub burst: Option<f64>,
}

impl LimitConfig {
    /// The bucket's size: `burst`, or one second of `rate`.
    pub fn burst(&self) -> f64 {
        self.burst.unwrap_or(self.rate).max(1.0)
    }
}

/// Active health checks: `GET path` on every replica each interval.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default = "default_health_path")]
    pub path: String,
    #[serde(default = "default_health_interval")]
    pub interval_ms: u64,
    #[serde(default = "default_health_timeout")]
    pub timeout_ms: u64,
    /// Consecutive failed checks that take a replica out.
    #[serde(default = "two")]
    pub unhealthy_after: u32,
    /// Consecutive passed checks that bring it back.
    #[serde(default = "two")]
    pub healthy_after: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: default_health_path(),
            interval_ms: default_health_interval(),
            timeout_ms: default_health_timeout(),
            unhealthy_after: 2,
            healthy_after: 2,
        }
    }
}

/// Passive ejection: a replica whose requests fail (no connection, a broken
/// answer, or 502/503/504) that many times in a row is left out for a
/// while, before any health check notices.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EjectionConfig {
    #[serde(default = "three")]
    pub consecutive_failures: u32,
    #[serde(default = "default_eject_ms")]
    pub eject_ms: u64,
}

impl Default for EjectionConfig {
    fn default() -> Self {
        EjectionConfig {
            consecutive_failures: 3,
            eject_ms: default_eject_ms(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_admin() -> String {
    "127.0.0.1:8081".into()
}
fn default_connect_ms() -> u64 {
    500
}
fn default_try_ms() -> u64 {
    5_000
}
fn default_total_ms() -> u64 {
    15_000
}
fn default_resolve_ms() -> u64 {
    5_000
}
fn default_retries() -> u32 {
    2
}
fn default_max_body() -> usize {
    MAX_BODY_LIMIT
}
fn default_anonymous() -> LimitConfig {
    LimitConfig {
        rate: 200.0,
        burst: Some(400.0),
    }
}
fn default_weight() -> u32 {
    100
}
fn default_health_path() -> String {
    "/healthz".into()
}
fn default_health_interval() -> u64 {
    1_000
}
fn default_health_timeout() -> u64 {
    1_000
}
fn default_eject_ms() -> u64 {
    5_000
}
fn default_drain_s() -> u64 {
    10
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}

impl GatewayConfig {
    /// Refuses what cannot work, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: String, reason: String| Err(Error::Config { field, reason });
        if self.pools.is_empty() {
            return bad(
                "gateway.pools".into(),
                "no replica pool: name at least one, with its backends".into(),
            );
        }
        let mut names = HashSet::new();
        let mut seen = HashSet::new();
        for (i, pool) in self.pools.iter().enumerate() {
            if !names.insert(pool.name.as_str()) {
                return bad(
                    format!("gateway.pools[{i}].name"),
                    format!("pool {:?} is named twice", pool.name),
                );
            }
            if pool.backends.is_empty() {
                return bad(
                    format!("gateway.pools[{i}].backends"),
                    format!("pool {:?} has no backend", pool.name),
                );
            }
            for (j, b) in pool.backends.iter().enumerate() {
                let field = format!("gateway.pools[{i}].backends[{j}]");
                let Some(target) = Target::parse(b) else {
                    return bad(
                        field,
                        format!("{b:?} is neither ip:port nor a DNS name with a port (host:port)"),
                    );
                };
                if !seen.insert(target.to_string()) {
                    return bad(field, format!("{target} is in the gateway twice"));
                }
            }
        }
        if self.pools.iter().all(|p| p.weight == 0) {
            return bad(
                "gateway.pools".into(),
                "every pool has weight 0: no traffic could go anywhere".into(),
            );
        }
        if self.threads > 256 {
            return bad(
                "gateway.threads".into(),
                format!("{} threads: at most 256 (0 is one per core)", self.threads),
            );
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_BODY_LIMIT {
            return bad(
                "gateway.max_body_bytes".into(),
                format!("must be between 1 and {MAX_BODY_LIMIT}"),
            );
        }
        for (field, v) in [
            ("gateway.connect_timeout_ms", self.connect_timeout_ms),
            ("gateway.try_timeout_ms", self.try_timeout_ms),
            ("gateway.total_timeout_ms", self.total_timeout_ms),
            ("gateway.resolve_interval_ms", self.resolve_interval_ms),
            ("gateway.health.interval_ms", self.health.interval_ms),
            ("gateway.health.timeout_ms", self.health.timeout_ms),
        ] {
            if v == 0 {
                return bad(field.into(), "must be above 0".into());
            }
        }
        if self.health.unhealthy_after == 0 || self.health.healthy_after == 0 {
            return bad(
                "gateway.health".into(),
                "unhealthy_after and healthy_after must be at least 1".into(),
            );
        }
        if !self.health.path.starts_with('/') {
            return bad(
                "gateway.health.path".into(),
                format!("{:?} must start with /", self.health.path),
            );
        }
        let limits = std::iter::once(("gateway.anonymous".to_owned(), self.anonymous)).chain(
            self.api_keys
                .iter()
                .enumerate()
                .map(|(i, k)| (format!("gateway.api_keys[{i}]"), k.limit)),
        );
        for (field, l) in limits {
            if !(l.rate.is_finite() && l.rate >= 0.0)
                || l.burst.is_some_and(|b| b.is_nan() || b < 1.0)
            {
                return bad(
                    field,
                    "rate must be 0 (no limit) or more, burst at least 1".into(),
                );
            }
        }
        let mut key_names = HashSet::new();
        for (i, k) in self.api_keys.iter().enumerate() {
            if !key_names.insert(k.name.as_str()) {
                return bad(
                    format!("gateway.api_keys[{i}].name"),
                    format!("API key name {:?} is used twice", k.name),
                );
            }
            if k.key_sha256.len() != 64 || !k.key_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(
                    format!("gateway.api_keys[{i}].key_sha256"),
                    "must be 64 hex digits (`tributary gateway key NAME` prints one)".into(),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> GatewayConfig {
        toml::from_str(text).unwrap()
    }

    fn field_of(text: &str) -> String {
        match config(text).validate() {
            Err(Error::Config { field, .. }) => field,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn backends_are_addresses_or_dns_names_with_a_port() {
        let name = |h: &str, p| {
            Some(Target::Name {
                host: h.into(),
                port: p,
            })
        };
        assert_eq!(
            Target::parse("10.0.0.1:8088"),
            Some(Target::Addr("10.0.0.1:8088".parse().unwrap()))
        );
        assert_eq!(
            Target::parse("[::1]:8088"),
            Some(Target::Addr("[::1]:8088".parse().unwrap()))
        );
        assert_eq!(
            Target::parse("oltp-headless.tributary.svc.cluster.local:8088"),
            name("oltp-headless.tributary.svc.cluster.local", 8088)
        );
        assert_eq!(Target::parse("oltp.:80"), name("oltp", 80));
        for bad in [
            "oltp",
            "oltp:0",
            "oltp:http",
            ":80",
            "-oltp:80",
            "a..b:80",
            "a b:80",
            "10.0.0.300:80",
            "10.0.0:80",
        ] {
            assert_eq!(Target::parse(bad), None, "{bad}");
        }
        let c = config("[[pools]]\nname = \"a\"\nbackends = [\"oltp:8088\", \"127.0.0.1:1\"]");
        c.validate().unwrap();
        assert_eq!(c.pools[0].targets().len(), 2);
        assert_eq!(
            field_of("[[pools]]\nname = \"a\"\nbackends = [\"oltp:8088\", \"oltp:8088\"]"),
            "gateway.pools[0].backends[1]"
        );
    }

    #[test]
    fn a_pool_with_backends_is_enough() {
        let c = config("[[pools]]\nname = \"stable\"\nbackends = [\"127.0.0.1:9000\"]");
        c.validate().unwrap();
        assert_eq!(c.policy, Policy::RoundRobin);
        assert_eq!(c.pools[0].weight, 100);
        assert_eq!(c.max_body_bytes, MAX_BODY_LIMIT);
    }

    #[test]
    fn bad_configs_name_the_field() {
        assert_eq!(field_of(""), "gateway.pools");
        assert_eq!(
            field_of("[[pools]]\nname = \"a\"\nbackends = [\"localhost\"]"),
            "gateway.pools[0].backends[0]"
        );
        assert_eq!(
            field_of(
                "[[pools]]\nname = \"a\"\nbackends = [\"127.0.0.1:1\"]\n\
                 [[pools]]\nname = \"b\"\nbackends = [\"127.0.0.1:1\"]"
            ),
            "gateway.pools[1].backends[0]"
        );
        assert_eq!(
            field_of("[[pools]]\nname = \"a\"\nweight = 0\nbackends = [\"127.0.0.1:1\"]"),
            "gateway.pools"
        );
        assert_eq!(
            field_of(
                "max_body_bytes = 100000\n[[pools]]\nname = \"a\"\nbackends = [\"127.0.0.1:1\"]"
            ),
            "gateway.max_body_bytes"
        );
        assert_eq!(
            field_of(
                "[[api_keys]]\nname = \"k\"\nkey_sha256 = \"abc\"\nrate = 1.0\n\
                 [[pools]]\nname = \"a\"\nbackends = [\"127.0.0.1:1\"]"
            ),
            "gateway.api_keys[0].key_sha256"
        );
    }
}
