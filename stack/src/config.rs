//! Configuration: embedded defaults, then a TOML file, then
//! `TRIBUTARY__SECTION__KEY` environment variables. Unknown keys are errors
//! that name the key.
//!
//! ```
//! let env = [("TRIBUTARY__STACK__SHARDS".to_string(), "3".to_string())];
//! let config = tributary_stack::config::load_from(None, &env).unwrap();
//! assert_eq!(config.stack.shards, 3);
//! assert!(config.kafka.is_none()); // the local stack's broker
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use tributary_cdc::CdcConfig;
use tributary_gateway::GatewayConfig;
use tributary_kafka::KafkaConfig;
use tributary_lake::LakeConfig;
use tributary_lake::ingest::IngestConfig;
use tributary_live::config::LiveConfig;
use tributary_oltp::OltpConfig;
use tributary_query::SqlConfig;

use crate::observe::ObserveConfig;
use crate::{Error, Result};

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    stack: Option<toml::Value>,
    #[serde(default)]
    kafka: Option<toml::Value>,
    #[serde(default)]
    lake: Option<toml::Value>,
    #[serde(default)]
    cdc: Option<toml::Value>,
    #[serde(default)]
    ingest: Option<toml::Value>,
    #[serde(default)]
    oltp: Option<toml::Value>,
    #[serde(default)]
    sources: Option<toml::Value>,
    #[serde(default)]
    live: Option<toml::Value>,
    #[serde(default)]
    sql: Option<toml::Value>,
    #[serde(default)]
    observe: Option<toml::Value>,
    #[serde(default)]
    gateway: Option<toml::Value>,
    #[serde(default)]
    ui: Option<toml::Value>,
}

/// The local stack (`[stack]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackConfig {
    /// Order shards (each its own PostgreSQL cluster).
    #[serde(default = "default_shards")]
    pub shards: usize,
    /// Folder with `initdb` and `pg_ctl`; found with `pg_config --bindir` when absent.
    #[serde(default)]
    pub pg_bin: Option<PathBuf>,
    /// The `tansu` broker binary; `tansu` on PATH or in ~/.cargo/bin when absent.
    #[serde(default)]
    pub broker_bin: Option<PathBuf>,
    /// `tributary up` also starts a workflows scheduler with the jobs of
    /// `jobs`, when that folder exists.
    #[serde(default = "yes")]
    pub scheduler: bool,
    /// The scheduler's job folder.
    #[serde(default = "default_jobs")]
    pub jobs: PathBuf,
    /// `tributary up` also starts a Redis for the order service's product
    /// cache (unless `oltp.cache.redis_url` names another).
    #[serde(default = "yes")]
    pub redis: bool,
    /// The `redis-server` binary; on PATH or in /usr/bin when absent.
    #[serde(default)]
    pub redis_bin: Option<PathBuf>,
    /// `tributary up` also runs this many order-API replicas behind a
    /// gateway (`up --replicas N` overrides it; 0: none).
    #[serde(default)]
    pub replicas: usize,
    /// A hot standby per order shard by streaming replication, and `up`
    /// starts the supervisor that fails over to it (`tributary ha run`).
    /// Off: one cluster per shard (a small machine).
    #[serde(default = "yes")]
    pub standbys: bool,
    /// `sync`: a commit returns once the standby has it (no acknowledged
    /// order is lost by a failover); `async`: the standby may lag by a
    /// moment. With `sync`, a standby that is down for `failover_after_ms`
    /// is dropped from the synchronous set until it streams again, so the
    /// primary keeps taking writes (Patroni's non-strict synchronous mode).
    #[serde(default)]
    pub replication: Replication,
    /// How long a primary must fail every probe before the supervisor
    /// fences it and promotes the standby.
    #[serde(default = "default_failover_after_ms")]
    pub failover_after_ms: u64,
}

/// `[stack] replication`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Replication {
    #[default]
    Sync,
    Async,
}

fn default_failover_after_ms() -> u64 {
    3000
}

fn yes() -> bool {
    true
}

fn default_jobs() -> PathBuf {
    PathBuf::from("workflows/jobs")
}

fn default_shards() -> usize {
    2
}

/// Databases outside the local stack (`[sources]`): when given, the pipeline
/// reads these instead of the local clusters. `Debug` shows the DSNs
/// without their passwords.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    pub shards: Vec<String>,
    pub catalog: String,
}

impl std::fmt::Debug for SourcesConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::platform::debug_dsns(f, "SourcesConfig", &self.shards, &self.catalog)
    }
}

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub state_dir: PathBuf,
    pub stack: StackConfig,
    /// `None`: the local stack's broker.
    pub kafka: Option<KafkaConfig>,
    /// `None`: `<state_dir>/lake`.
    pub lake: Option<LakeConfig>,
    pub cdc: CdcConfig,
    pub ingest: IngestConfig,
    pub oltp: OltpConfig,
    pub sources: Option<SourcesConfig>,
    /// `[sql]`: the console, the wire server and the query engine's limits.
    pub sql: SqlConfig,
    /// `[live]`: the stream jobs (fraud detector, product activity).
    pub live: LiveConfig,
    /// `[observe]`: the local stack's Prometheus and Alertmanager.
    pub observe: ObserveConfig,
    /// `[gateway]`: the edge in front of the order API's replicas.
    pub gateway: GatewayConfig,
    /// `[ui]`: the web console (`tributary ui`).
    pub ui: UiConfig,
}

/// `[ui]`: the web console. It logs in with `[sql]`'s user and password;
/// the local stack makes a password when none is configured.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UiConfig {
    /// Where `tributary ui` listens.
    #[serde(default = "default_ui_listen")]
    pub listen: String,
    /// Whether `tributary up` starts it.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How long a login lasts, in hours.
    #[serde(default = "default_session_hours")]
    pub session_hours: u64,
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig {
            listen: default_ui_listen(),
            enabled: true,
            session_hours: default_session_hours(),
        }
    }
}

fn default_ui_listen() -> String {
    "127.0.0.1:8070".into()
}

fn default_session_hours() -> u64 {
    12
}

/// Loads `path` (or `./tributary.toml` when present) and applies the
/// environment.
pub fn load(path: Option<&Path>) -> Result<Config> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    load_from(path, &env)
}

/// Like [`load`] with an explicit environment (for tests and embedding).
pub fn load_from_env(env: &[(String, String)]) -> Result<Config> {
    load_from(None, env)
}

pub fn load_from(path: Option<&Path>, env: &[(String, String)]) -> Result<Config> {
    let mut root = toml::Table::new();
    let file = match path {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from("tributary.toml")).filter(|p| p.exists()),
    };
    if let Some(file) = &file {
        let path = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|source| Error::ConfigRead {
            path: path.clone(),
            source,
        })?;
        root = text
            .parse::<toml::Table>()
            .map_err(|source| Error::ConfigParse { path, source })?;
    }
    for (key, value) in env {
        let Some(rest) = key.strip_prefix("TRIBUTARY__") else {
            continue;
        };
        let parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if parts.iter().any(String::is_empty) {
            return Err(Error::EnvEmptySegment { key: key.clone() });
        }
        set_path(&mut root, &parts, parse_env_value(value)).map_err(|section| {
            Error::EnvNotSection {
                key: key.clone(),
                section,
            }
        })?;
    }
    let origin = file
        .as_ref()
        .map(|f| f.display().to_string())
        .unwrap_or_else(|| "defaults".into());
    let raw: RawConfig =
        deserialize(toml::Value::Table(root), "").map_err(|e| Error::ConfigInvalid {
            origin,
            source: Box::new(e),
        })?;
    let state_dir = raw.state_dir.unwrap_or_else(|| PathBuf::from(".tributary"));
    Ok(Config {
        state_dir: std::path::absolute(&state_dir).unwrap_or(state_dir),
        stack: section(raw.stack, "stack")?,
        kafka: raw.kafka.map(|v| deserialize(v, "kafka")).transpose()?,
        lake: raw.lake.map(|v| deserialize(v, "lake")).transpose()?,
        cdc: section(raw.cdc, "cdc")?,
        ingest: section(raw.ingest, "ingest")?,
        oltp: section(raw.oltp, "oltp")?,
        sources: raw.sources.map(|v| deserialize(v, "sources")).transpose()?,
        sql: section(raw.sql, "sql")?,
        live: section(raw.live, "live")?,
        observe: section(raw.observe, "observe")?,
        gateway: section(raw.gateway, "gateway")?,
        ui: section(raw.ui, "ui")?,
    })
}

fn section<T: DeserializeOwned>(value: Option<toml::Value>, name: &str) -> Result<T> {
    deserialize(
        value.unwrap_or_else(|| toml::Value::Table(Default::default())),
        name,
    )
}

/// Deserialises with the full path of the offending key in the error.
fn deserialize<T: DeserializeOwned>(value: toml::Value, prefix: &str) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let at = match (prefix.is_empty(), path.as_str()) {
            (true, ".") => String::new(),
            (true, p) => format!(" at `{p}`"),
            (false, ".") => format!(" in [{prefix}]"),
            (false, p) => format!(" at `{prefix}.{p}`"),
        };
        Error::ConfigKey {
            at,
            message: e.into_inner().to_string(),
        }
    })
}

fn parse_env_value(v: &str) -> toml::Value {
    // Numbers, booleans and arrays keep their type; anything else is a string.
    format!("x = {v}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("x"))
        .unwrap_or_else(|| toml::Value::String(v.to_string()))
}

/// Sets `path` in `table`; the error is the segment that is not a section.
fn set_path(
    table: &mut toml::Table,
    path: &[String],
    value: toml::Value,
) -> std::result::Result<(), String> {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(p.clone()),
        };
    }
    cur.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_model::error_chain;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_need_no_file() {
        let c = load_from(None, &[]).unwrap();
        assert_eq!(c.stack.shards, 2);
        assert!(c.state_dir.ends_with(".tributary"));
        assert!(c.kafka.is_none());
    }

    /// The configurations shipped for Kubernetes are ones this loader
    /// takes (unknown keys are errors), with what the manifests rely on.
    #[test]
    fn the_deploy_configurations_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for file in [
            "deploy/k8s/overlays/dev/tributary.toml",
            "deploy/k8s/overlays/prod/tributary.toml.example",
        ] {
            let c = load_from(Some(&root.join(file)), &[])
                .unwrap_or_else(|e| panic!("{file}: {}", error_chain(&e)));
            assert_eq!(c.oltp.listen, "0.0.0.0:8088", "{file}");
            assert_eq!(c.sql.listen, "0.0.0.0:5433", "{file}");
            assert_eq!(c.state_dir, Path::new("/tmp/tributary"), "{file}");
            assert!(c.sources.is_some() && c.kafka.is_some(), "{file}");
            let lake = c.lake.expect("a lake");
            assert!(lake.root.starts_with("s3://"), "{file}");
            assert!(lake.coordinator_dsn.is_some(), "{file}");
        }
    }

    #[test]
    fn env_overrides_file_and_keeps_types() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.toml");
        std::fs::write(&f, "[stack]\nshards = 3\n[cdc]\nslot_prefix = \"x\"\n").unwrap();
        let c = load_from(
            Some(&f),
            &env(&[
                ("TRIBUTARY__STACK__SHARDS", "4"),
                ("TRIBUTARY__CDC__SLOT_PREFIX", "envslot"),
            ]),
        )
        .unwrap();
        assert_eq!(c.stack.shards, 4);
        assert_eq!(c.cdc.slot_prefix, "envslot");
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.toml");
        std::fs::write(&f, "[kafka]\nbrokers = \"x:1\"\nbrokerz = 1\n").unwrap();
        let err = error_chain(&load_from(Some(&f), &[]).unwrap_err());
        assert!(err.contains("brokerz"), "{err}");
        let err =
            error_chain(&load_from(None, &env(&[("TRIBUTARY__STACK__SHARDZ", "1")])).unwrap_err());
        assert!(err.contains("shardz") && err.contains("stack"), "{err}");
        let err = error_chain(&load_from(None, &env(&[("TRIBUTARY__NOPE", "1")])).unwrap_err());
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn ingest_maintenance_takes_env_overrides_and_names_unknown_keys() {
        let c = load_from(None, &[]).unwrap();
        assert_eq!(c.ingest.maintenance.vacuum_retention_hours, 168);
        assert!(c.ingest.maintenance.enabled);
        let c = load_from(
            None,
            &env(&[
                (
                    "TRIBUTARY__INGEST__MAINTENANCE__OPTIMIZE_EVERY_COMMITS",
                    "5",
                ),
                (
                    "TRIBUTARY__INGEST__MAINTENANCE__ZORDER__ORDERS",
                    "[\"customer_id\"]",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(c.ingest.maintenance.optimize_every_commits, 5);
        assert_eq!(c.ingest.maintenance.zorder["orders"], ["customer_id"]);
        let err = error_chain(
            &load_from(
                None,
                &env(&[("TRIBUTARY__INGEST__MAINTENANCE__OPTIMIZE_EVERY", "5")]),
            )
            .unwrap_err(),
        );
        assert!(
            err.contains("optimize_every") && err.contains("maintenance"),
            "{err}"
        );
    }

    #[test]
    fn sql_section_reads_limits_and_names_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.toml");
        std::fs::write(
            &f,
            "[sql]\nlisten = \"127.0.0.1:6543\"\nmemory_limit = \"64MiB\"\nspill = false\n",
        )
        .unwrap();
        let c = load_from(Some(&f), &env(&[("TRIBUTARY__SQL__PASSWORD", "pw")])).unwrap();
        assert_eq!(c.sql.listen, "127.0.0.1:6543");
        assert_eq!(c.sql.memory_limit_bytes(), Some(64 << 20));
        assert!(!c.sql.spill && c.sql.password.is_some());
        std::fs::write(&f, "[sql]\npasswrd = \"x\"\n").unwrap();
        let err = error_chain(&load_from(Some(&f), &[]).unwrap_err());
        assert!(err.contains("passwrd") && err.contains("sql"), "{err}");
        std::fs::write(&f, "[sql]\nmemory_limit = \"lots\"\n").unwrap();
        let err = error_chain(&load_from(Some(&f), &[]).unwrap_err());
        assert!(
            err.contains("memory_limit") && err.contains("lots"),
            "{err}"
        );
    }
}
