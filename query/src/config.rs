//! The `[sql]` configuration section: the wire server and the engine limits.

use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

use crate::{Error, Result};

/// Settings for `tributary sql` and `tributary sql serve`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// Where `tributary sql serve` listens (Postgres wire protocol).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The one user the wire server accepts.
    #[serde(default = "default_user")]
    pub user: String,
    /// That user's password (SCRAM-SHA-256). The server refuses to start
    /// without one.
    #[serde(default)]
    pub password: Option<SecretString>,
    /// PEM certificate chain; with `tls_key`, clients may use TLS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// A statement running longer than this is cancelled; 0 means no limit.
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// DataFusion's memory pool, e.g. `"2GiB"`, `"512MB"` or a number of
    /// bytes. A query that needs more spills (sorts, aggregates, joins that
    /// can) or fails with "Resources exhausted". Default: half the machine's
    /// memory.
    #[serde(default)]
    pub memory_limit: Option<ByteSize>,
    /// Whether operators may spill to disk when the pool is full.
    #[serde(default = "default_true")]
    pub spill: bool,
    /// Where spill files go (default: the system's temporary folder).
    #[serde(default)]
    pub spill_dir: Option<PathBuf>,
    /// Console history file (default: `<state_dir>/sql_history`).
    #[serde(default)]
    pub history_file: Option<PathBuf>,
    /// Memory for results kept until a table they read gets a new version
    /// (see `result_cache.rs`), e.g. `"64MiB"`; `false` keeps none.
    #[serde(default = "default_result_cache")]
    pub result_cache: CacheSize,
}

/// A cache budget: a [`ByteSize`], or `false` for none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSize(pub usize);

impl<'de> Deserialize<'de> for CacheSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Off(bool),
            Size(ByteSize),
        }
        match Raw::deserialize(deserializer) {
            Ok(Raw::Off(false)) => Ok(CacheSize(0)),
            Ok(Raw::Off(true)) => Ok(default_result_cache()),
            Ok(Raw::Size(s)) => Ok(CacheSize(s.0)),
            Err(_) => Err(serde::de::Error::custom(
                "expected a size such as \"64MiB\" or false (off)",
            )),
        }
    }
}

fn default_result_cache() -> CacheSize {
    CacheSize(64 << 20)
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig {
            listen: default_listen(),
            user: default_user(),
            password: None,
            tls_cert: None,
            tls_key: None,
            statement_timeout_ms: default_statement_timeout_ms(),
            memory_limit: None,
            spill: true,
            spill_dir: None,
            history_file: None,
            result_cache: default_result_cache(),
        }
    }
}

impl SqlConfig {
    /// The statement timeout, `None` when unlimited.
    pub fn statement_timeout(&self) -> Option<std::time::Duration> {
        (self.statement_timeout_ms > 0)
            .then(|| std::time::Duration::from_millis(self.statement_timeout_ms))
    }

    /// The result cache's budget in bytes; 0 when off.
    pub fn result_cache_bytes(&self) -> usize {
        self.result_cache.0
    }

    /// The memory pool size in bytes: the configured one, else half the
    /// machine's memory, else `None` (unbounded) where that is unknown.
    pub fn memory_limit_bytes(&self) -> Option<usize> {
        match &self.memory_limit {
            Some(size) => Some(size.0),
            None => total_memory().map(|m| m / 2),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:5433".into()
}

fn default_user() -> String {
    "tributary".into()
}

fn default_statement_timeout_ms() -> u64 {
    300_000
}

fn default_true() -> bool {
    true
}

/// Total memory from `/proc/meminfo` (Linux); `None` elsewhere.
fn total_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A size in bytes, written as a number or as text with a unit
/// (`"64MiB"`, `"2GB"`, `"512k"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub usize);

impl std::str::FromStr for ByteSize {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let text = s.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let bad = || {
            Error::Config(format!(
                "invalid size {s:?} (expected e.g. 512MiB, 2GB, 1048576)"
            ))
        };
        let number: f64 = number.parse().map_err(|_| bad())?;
        let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "k" | "kb" => 1e3,
            "kib" => 1024.0,
            "m" | "mb" => 1e6,
            "mib" => 1024.0 * 1024.0,
            "g" | "gb" => 1e9,
            "gib" => 1024.0 * 1024.0 * 1024.0,
            "t" | "tb" => 1e12,
            "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
            _ => return Err(bad()),
        };
        let bytes = number * factor;
        if !bytes.is_finite() || bytes < 1.0 {
            return Err(bad());
        }
        Ok(ByteSize(bytes as usize))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(0) => Err(serde::de::Error::custom("a size must be above 0")),
            Raw::Number(n) => Ok(ByteSize(n as usize)),
            Raw::Text(t) => t.parse().map_err(|e: Error| serde::de::Error::custom(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!("1048576".parse::<ByteSize>().unwrap().0, 1 << 20);
        assert_eq!("64MiB".parse::<ByteSize>().unwrap().0, 64 << 20);
        assert_eq!("2 GB".parse::<ByteSize>().unwrap().0, 2_000_000_000);
        assert_eq!("1.5kib".parse::<ByteSize>().unwrap().0, 1536);
        let err = "12 parsecs".parse::<ByteSize>().unwrap_err().to_string();
        assert!(err.contains("12 parsecs"), "{err}");
        assert!("".parse::<ByteSize>().is_err());
    }
}
