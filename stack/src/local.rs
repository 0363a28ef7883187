//! The local stack: PostgreSQL clusters (N order shards and one catalog)
//! made with the system's `initdb`/`pg_ctl`, and a Kafka-API broker (tansu)
//! with durable storage, all under the state folder.
//!
//! `up` is idempotent: it creates what is missing and starts what is stopped.
//! Ports are picked free on first `up` and kept in `<state>/stack.json`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tributary_model::domain::{TABLES, topic_of};

use crate::config::Config;
use crate::platform::Platform;
use crate::postgres::{self, PgTools};
use crate::{Error, Result, broker, io};

/// One PostgreSQL cluster of the stack.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PgInstance {
    pub name: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub database: String,
}

impl PgInstance {
    /// Its database (`orders` or `catalog`).
    pub fn dsn(&self) -> String {
        self.dsn_of(&self.database)
    }

    /// Its `postgres` database: administration, and the lake's commit
    /// coordinator by default.
    pub fn admin_dsn(&self) -> String {
        self.dsn_of("postgres")
    }

    /// Another database of the same cluster.
    pub fn dsn_of(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=tributary dbname={database}",
            self.port
        )
    }
}

/// The broker of the stack.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BrokerInstance {
    pub port: u16,
    pub data_dir: PathBuf,
}

impl BrokerInstance {
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// What `up` made, as kept in `<state>/stack.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StackState {
    pub shards: Vec<PgInstance>,
    pub catalog: PgInstance,
    pub broker: BrokerInstance,
}

impl StackState {
    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("stack.json")
    }

    /// Reads the stack description; `None` before the first `up`.
    pub fn load(state_dir: &Path) -> Result<Option<StackState>> {
        let p = Self::path(state_dir);
        if !p.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).map_err(io(format!("reading {}", p.display())))?;
        let state = serde_json::from_str(&text).map_err(|source| Error::StateFile {
            path: p.display().to_string(),
            source,
        })?;
        Ok(Some(state))
    }

    fn save(&self, state_dir: &Path) -> Result<()> {
        let p = Self::path(state_dir);
        let text = serde_json::to_string_pretty(self).map_err(|source| Error::StateFile {
            path: p.display().to_string(),
            source,
        })?;
        std::fs::write(&p, text).map_err(io(format!("writing {}", p.display())))
    }

    /// The order shards, then the catalog.
    pub fn all_pg(&self) -> impl Iterator<Item = &PgInstance> {
        self.shards.iter().chain(std::iter::once(&self.catalog))
    }
}

fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io("finding a free port"))
}

fn plan(config: &Config) -> Result<StackState> {
    let base = postgres::data_base(&config.state_dir)?;
    let pg = |name: String, database: &str| -> Result<PgInstance> {
        Ok(PgInstance {
            data_dir: base.join(&name),
            name,
            port: free_port()?,
            database: database.into(),
        })
    };
    Ok(StackState {
        shards: (0..config.stack.shards)
            .map(|i| pg(format!("shard{i}"), "orders"))
            .collect::<Result<_>>()?,
        catalog: pg("catalog".into(), "catalog")?,
        broker: BrokerInstance {
            port: free_port()?,
            data_dir: config.state_dir.join("broker"),
        },
    })
}

/// Creates and starts everything that is missing or stopped, and the
/// change topics on the broker.
pub async fn up(config: &Config) -> Result<StackState> {
    std::fs::create_dir_all(&config.state_dir).map_err(io(format!(
        "creating state folder {}",
        config.state_dir.display()
    )))?;
    let state = match StackState::load(&config.state_dir)? {
        Some(s) => {
            if s.shards.len() != config.stack.shards {
                return Err(Error::ShardsChanged {
                    state_dir: config.state_dir.display().to_string(),
                    found: s.shards.len(),
                    configured: config.stack.shards,
                });
            }
            s
        }
        None => {
            let s = plan(config)?;
            s.save(&config.state_dir)?;
            s
        }
    };
    let tools = PgTools::find(config.stack.pg_bin.as_deref())?;
    for pg in state.all_pg() {
        postgres::start_cluster(&tools, pg)
            .await
            .map_err(|e| Error::PostgresStart {
                name: pg.name.clone(),
                source: Box::new(e),
            })?;
    }
    let bin = broker::binary(config.stack.broker_bin.as_deref())?;
    broker::start_detached(&bin, &state.broker).await?;
    // The change topics go where the pipeline will look for them: on the
    // configured broker when there is one.
    let platform = Platform::resolve(config.clone(), Some(state.clone()));
    let kafka = platform.kafka()?;
    let topics: Vec<String> = TABLES
        .iter()
        .map(|t| topic_of(&kafka.topic_prefix, t))
        .collect();
    tributary_kafka::ensure_topics(kafka, &topics)
        .await
        .map_err(Error::Topics)?;
    Ok(state)
}

/// Stops the stack; `purge` also deletes its data.
pub fn down(config: &Config, purge: bool) -> Result<()> {
    if let Some(state) = StackState::load(&config.state_dir)? {
        if let Ok(tools) = PgTools::find(config.stack.pg_bin.as_deref()) {
            for pg in state.all_pg() {
                postgres::stop_cluster(&tools, pg);
            }
        }
        broker::stop(&state.broker);
        if purge {
            for pg in state.all_pg() {
                let _ = std::fs::remove_dir_all(&pg.data_dir);
            }
        }
    }
    if purge && config.state_dir.exists() {
        std::fs::remove_dir_all(&config.state_dir)
            .map_err(io(format!("removing {}", config.state_dir.display())))?;
    }
    Ok(())
}
