//! The configuration resolved into where things are. One rule, applied
//! here and nowhere else: what the configuration names, else the local
//! stack.
//!
//! | part | configured | else (local stack) |
//! |---|---|---|
//! | sources | `[sources]` shards and catalog | the stack's clusters |
//! | Kafka | `[kafka]` | the stack's broker, default prefix and partitions |
//! | lake | `[lake]` | `<state_dir>/lake` |
//! | product cache | `oltp.cache.redis_url` | the stack's Redis |
//! | lake coordinator | `lake.coordinator_dsn` | the `postgres` database of the stack's catalog cluster, else `[sources].catalog` |
//!
//! A missing part is an error only when a command needs it: `tributary sql`
//! runs without sources or a broker.

use std::fmt;

use tributary_cdc::SourceDb;
use tributary_kafka::KafkaConfig;
use tributary_lake::{Lake, LakeConfig};
use tributary_model::domain::{Database, TABLES, tables_of, topic_of};
use tributary_model::dsn::describe;

use crate::config::Config;
use crate::local::{self, StackState};
use crate::{Error, Result};

/// The configuration and the local stack, resolved once.
#[derive(Clone, Debug)]
pub struct Platform {
    config: Config,
    stack: Option<StackState>,
    sources: Option<Sources>,
    kafka: Option<KafkaConfig>,
    lake: LakeConfig,
}

impl Platform {
    /// Resolves `config` against the local stack recorded in its state
    /// folder, if any (nothing is started).
    pub fn load(config: Config) -> Result<Platform> {
        let stack = StackState::load(&config.state_dir)?;
        Ok(Platform::resolve(config, stack))
    }

    /// Starts the local stack (idempotent: creates the PostgreSQL clusters
    /// and the broker that are missing, starts those that are stopped),
    /// resolves `config` against it and creates the change topics on the
    /// resolved broker (the configured one when there is one).
    pub async fn start(config: Config) -> Result<Platform> {
        let stack = local::up(&config).await?;
        let platform = Platform::resolve(config, Some(stack));
        let kafka = platform.kafka()?;
        let topics: Vec<String> = TABLES
            .iter()
            .map(|t| topic_of(&kafka.topic_prefix, t))
            .collect();
        tributary_kafka::ensure_topics(kafka, &topics)
            .await
            .map_err(Error::Topics)?;
        Ok(platform)
    }

    /// Resolves `config` against `stack` (the local stack, when there is one).
    pub fn resolve(config: Config, stack: Option<StackState>) -> Platform {
        let sources = match (&config.sources, &stack) {
            (Some(s), _) => Some(Sources {
                shards: s.shards.clone(),
                catalog: s.catalog.clone(),
            }),
            (None, Some(stack)) => Some(Sources {
                shards: stack.shards.iter().map(|s| s.dsn()).collect(),
                catalog: stack.catalog.dsn(),
            }),
            (None, None) => None,
        };
        let kafka = match (&config.kafka, &stack) {
            (Some(k), _) => Some(k.clone()),
            (None, Some(stack)) => Some(KafkaConfig::local(&stack.broker.address())),
            (None, None) => None,
        };
        let mut lake = config.lake.clone().unwrap_or_else(|| LakeConfig {
            root: config.state_dir.join("lake").to_string_lossy().into_owned(),
            s3: None,
            coordinator_dsn: None,
        });
        if lake.coordinator_dsn.is_none() {
            lake.coordinator_dsn = match (&config.sources, &stack) {
                (Some(s), _) => Some(s.catalog.clone()),
                (None, Some(stack)) => Some(stack.catalog.admin_dsn()),
                (None, None) => None,
            };
        }
        Platform {
            config,
            stack,
            sources,
            kafka,
            lake,
        }
    }

    /// Uses these databases instead of the resolved ones (a benchmark's
    /// scratch database, a test's).
    pub fn with_sources(mut self, sources: Sources) -> Platform {
        self.sources = Some(sources);
        self
    }

    /// Uses this broker instead of the resolved one.
    pub fn with_kafka(mut self, kafka: KafkaConfig) -> Platform {
        self.kafka = Some(kafka);
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The local stack, when `up` made one.
    pub fn stack(&self) -> Option<&StackState> {
        self.stack.as_ref()
    }

    /// The source databases; an error without `[sources]` and a local stack.
    pub fn sources(&self) -> Result<&Sources> {
        self.sources.as_ref().ok_or(Error::NoSources)
    }

    /// What the order service needs: the sources, and with the local
    /// stack's databases each shard's standby as a read replica.
    pub fn topology(&self) -> Result<tributary_oltp::Topology> {
        let mut topology = self.sources()?.topology();
        if self.config.sources.is_none()
            && let Some(stack) = &self.stack
        {
            topology.replicas = stack
                .shards
                .iter()
                .map(|s| s.standby.as_ref().map(|n| n.dsn_of(&s.database)))
                .collect();
        }
        Ok(topology)
    }

    /// The broker; an error without `[kafka]` and a local stack.
    pub fn kafka(&self) -> Result<&KafkaConfig> {
        self.kafka.as_ref().ok_or(Error::NoKafka)
    }

    /// The product cache's Redis: `oltp.cache.redis_url`, else the local
    /// stack's; `None` with neither, or with `oltp.cache.enabled = false`.
    pub fn redis_url(&self) -> Option<String> {
        let cache = &self.config.oltp.cache;
        if !cache.enabled {
            return None;
        }
        cache.redis_url.clone().or_else(|| {
            self.stack
                .as_ref()
                .and_then(|s| s.redis.as_ref())
                .map(|r| r.url())
        })
    }

    /// The lake's settings, with the coordinator resolved.
    pub fn lake_config(&self) -> &LakeConfig {
        &self.lake
    }

    /// The lake (no I/O until a table is read or written).
    pub fn lake(&self) -> Result<Lake> {
        Ok(Lake::new(&self.lake)?)
    }
}

/// The source databases: the order shards and the catalog. `Debug` shows
/// the DSNs without their passwords.
#[derive(Clone)]
pub struct Sources {
    /// One DSN per order shard, shard 0 first.
    pub shards: Vec<String>,
    pub catalog: String,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_dsns(f, "Sources", &self.shards, &self.catalog)
    }
}

/// A `Debug` of shard and catalog DSNs, each through [`describe`].
pub(crate) fn debug_dsns(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    shards: &[String],
    catalog: &str,
) -> fmt::Result {
    let shards: Vec<String> = shards.iter().map(|d| describe(d)).collect();
    f.debug_struct(name)
        .field("shards", &shards)
        .field("catalog", &describe(catalog))
        .finish()
}

impl Sources {
    /// The sources of `config` against `stack`: see [`Platform::resolve`].
    pub fn resolve(config: &Config, stack: Option<&StackState>) -> Result<Sources> {
        Platform::resolve(config.clone(), stack.cloned())
            .sources()
            .cloned()
    }

    /// One CDC source per database.
    pub fn cdc_sources(&self) -> Vec<SourceDb> {
        let orders: Vec<String> = tables_of(Database::Orders)
            .map(|t| t.name.to_string())
            .collect();
        let catalog: Vec<String> = tables_of(Database::Catalog)
            .map(|t| t.name.to_string())
            .collect();
        let mut out: Vec<SourceDb> = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, dsn)| SourceDb {
                db: "orders".into(),
                shard: i as u32,
                dsn: dsn.clone(),
                tables: orders.clone(),
            })
            .collect();
        out.push(SourceDb {
            db: "catalog".into(),
            shard: 0,
            dsn: self.catalog.clone(),
            tables: catalog,
        });
        out
    }

    /// The order services' view of the same databases.
    pub fn topology(&self) -> tributary_oltp::Topology {
        tributary_oltp::Topology {
            shards: self.shards.clone(),
            catalog: self.catalog.clone(),
            replicas: Vec::new(),
        }
    }

    /// The DSNs of every database that holds `db` (all order shards, or the
    /// catalog), shard 0 first.
    pub fn dsns(&self, db: Database) -> Vec<&str> {
        match db {
            Database::Orders => self.shards.iter().map(String::as_str).collect(),
            Database::Catalog => vec![&self.catalog],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_from;
    use crate::local::{BrokerInstance, PgInstance};

    fn stack() -> StackState {
        let pg = |name: &str, port, database: &str| PgInstance {
            name: name.into(),
            port,
            data_dir: format!("/x/{name}").into(),
            database: database.into(),
            standby: None,
        };
        StackState {
            shards: vec![pg("shard0", 5001, "orders"), pg("shard1", 5002, "orders")],
            catalog: pg("catalog", 5003, "catalog"),
            broker: BrokerInstance {
                port: 9092,
                data_dir: "/x/broker".into(),
            },
            redis: Some(crate::RedisInstance {
                port: 6399,
                data_dir: "/x/redis".into(),
            }),
        }
    }

    fn config(env: &[(&str, &str)]) -> Config {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load_from(None, &env).unwrap()
    }

    #[test]
    fn the_local_stack_fills_in_what_the_config_leaves_out() {
        let p = Platform::resolve(config(&[("TRIBUTARY__STATE_DIR", "/s")]), Some(stack()));
        let s = p.sources().unwrap();
        assert_eq!(
            s.shards,
            [
                "host=127.0.0.1 port=5001 user=tributary dbname=orders",
                "host=127.0.0.1 port=5002 user=tributary dbname=orders"
            ]
        );
        assert_eq!(
            s.catalog,
            "host=127.0.0.1 port=5003 user=tributary dbname=catalog"
        );
        assert_eq!(s.cdc_sources().len(), 3);
        assert_eq!(p.kafka().unwrap().brokers, "127.0.0.1:9092");
        assert_eq!(p.lake_config().root, "/s/lake");
        assert_eq!(p.redis_url().as_deref(), Some("redis://127.0.0.1:6399"));
        assert_eq!(
            p.lake_config().coordinator_dsn.as_deref(),
            Some("host=127.0.0.1 port=5003 user=tributary dbname=postgres")
        );
    }

    #[test]
    fn the_config_wins_over_the_local_stack() {
        let c = config(&[
            ("TRIBUTARY__SOURCES__SHARDS", "[\"host=a\"]"),
            ("TRIBUTARY__SOURCES__CATALOG", "host=c"),
            ("TRIBUTARY__KAFKA__BROKERS", "k:9092"),
            ("TRIBUTARY__LAKE__ROOT", "/lake"),
            ("TRIBUTARY__OLTP__CACHE__REDIS_URL", "redis://cache:6379"),
        ]);
        let p = Platform::resolve(c, Some(stack()));
        assert_eq!(p.redis_url().as_deref(), Some("redis://cache:6379"));
        assert_eq!(p.sources().unwrap().shards, ["host=a"]);
        assert_eq!(p.kafka().unwrap().brokers, "k:9092");
        assert_eq!(p.lake_config().root, "/lake");
        // The coordinator defaults to the configured catalog.
        assert_eq!(p.lake_config().coordinator_dsn.as_deref(), Some("host=c"));
    }

    #[test]
    fn passwords_stay_out_of_debug_output() {
        let c = config(&[
            (
                "TRIBUTARY__SOURCES__SHARDS",
                "[\"host=a user=u password=hunter2 dbname=orders\"]",
            ),
            (
                "TRIBUTARY__SOURCES__CATALOG",
                "postgres://u:hunter3@c/catalog",
            ),
        ]);
        let p = Platform::resolve(c, None);
        for shown in [
            format!("{:?}", p.sources().unwrap()),
            format!("{:?}", p.config().sources),
        ] {
            assert!(shown.contains("host=a user=u dbname=orders"), "{shown}");
            assert!(shown.contains("postgres://u@c/catalog"), "{shown}");
            assert!(!shown.contains("hunter"), "{shown}");
        }
    }

    #[test]
    fn without_a_stack_only_the_lake_resolves() {
        let p = Platform::resolve(config(&[("TRIBUTARY__STATE_DIR", "/s")]), None);
        assert!(matches!(p.sources(), Err(Error::NoSources)));
        assert!(matches!(p.kafka(), Err(Error::NoKafka)));
        assert_eq!(p.lake_config().root, "/s/lake");
        assert_eq!(p.lake_config().coordinator_dsn, None);
        let err = Sources::resolve(p.config(), None).unwrap_err().to_string();
        assert!(err.contains("run `tributary up`"), "{err}");
    }
}
