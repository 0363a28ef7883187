//! The local stack: PostgreSQL clusters (N order shards and one catalog)
//! made with the system's `initdb`/`pg_ctl`, and a Kafka-API broker (tansu)
//! with durable storage, and a Redis for the product cache, all under the
//! state folder.
//!
//! `up` is idempotent: it creates what is missing and starts what is stopped.
//! Ports are picked free on first `up` and kept in `<state>/stack.json`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::postgres::{PgTools, chown_to_server_user, is_root, run};
use crate::redis::RedisInstance;
use crate::{Error, Result, broker, io, pg};

/// One PostgreSQL cluster of the stack: a shard (its primary node, and its
/// hot standby when the stack has them) or the catalog.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PgInstance {
    pub name: String,
    /// The primary node's port and data.
    pub port: u16,
    pub data_dir: PathBuf,
    pub database: String,
    /// The standby node (`[stack] standbys`); a failover swaps it with the
    /// primary node ([`crate::ha`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<PgNode>,
}

/// A standby node of a shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgNode {
    pub port: u16,
    pub data_dir: PathBuf,
}

impl PgNode {
    /// The node's name: its data folder's (`shard0`, `shard0-b`).
    pub fn name(&self) -> String {
        node_name(&self.data_dir)
    }

    /// One database of this node alone.
    pub fn dsn_of(&self, database: &str) -> String {
        node_dsn(self.port, database)
    }
}

fn node_name(data_dir: &Path) -> String {
    data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn node_dsn(port: u16, database: &str) -> String {
    format!("host=127.0.0.1 port={port} user=tributary dbname={database}")
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

    /// Another database of the same cluster. With a standby it names both
    /// nodes and asks for the one that takes writes
    /// (`target_session_attrs=read-write`, as libpq does), so a client
    /// connecting after a failover finds the new primary by itself; a node
    /// that does not answer is skipped after `connect_timeout`.
    pub fn dsn_of(&self, database: &str) -> String {
        match &self.standby {
            None => node_dsn(self.port, database),
            Some(s) => format!(
                "host=127.0.0.1,127.0.0.1 port={},{} user=tributary dbname={database} \
                 target_session_attrs=read-write connect_timeout=2",
                self.port, s.port
            ),
        }
    }

    /// The folder holding the stack's node folders (and beside them
    /// `archive/`, `backups/` and `restores/`).
    pub fn pg_base(&self) -> Result<&Path> {
        self.data_dir
            .parent()
            .ok_or_else(|| Error::Internal(format!("{} has no parent", self.data_dir.display())))
    }

    /// Where the cluster's nodes archive their WAL: beside the nodes' data
    /// folders, named after the cluster.
    pub fn archive_dir(&self) -> Result<PathBuf> {
        Ok(self.pg_base()?.join("archive").join(&self.name))
    }

    /// The primary node as a [`PgNode`].
    pub fn primary(&self) -> PgNode {
        PgNode {
            port: self.port,
            data_dir: self.data_dir.clone(),
        }
    }

    /// The primary node's name.
    pub fn node_name(&self) -> String {
        node_name(&self.data_dir)
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

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        crate::daemon::pid(&self.data_dir)
    }
}

/// What `up` made, as kept in `<state>/stack.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StackState {
    pub shards: Vec<PgInstance>,
    pub catalog: PgInstance,
    pub broker: BrokerInstance,
    /// The product cache; absent with `stack.redis = false` (and in stacks
    /// made before it existed, until the next `up`).
    #[serde(default)]
    pub redis: Option<RedisInstance>,
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

    /// Writes the description whole (a temporary file renamed over it), so
    /// a reader never sees half of it.
    pub(crate) fn save(&self, state_dir: &Path) -> Result<()> {
        let p = Self::path(state_dir);
        let text = serde_json::to_string_pretty(self).map_err(|source| Error::StateFile {
            path: p.display().to_string(),
            source,
        })?;
        let tmp = p.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &p).map_err(io(format!("writing {}", p.display())))
    }

    /// [`StackState::load`], with "no stack" as an error.
    pub fn require(state_dir: &Path) -> Result<StackState> {
        Self::load(state_dir)?.ok_or_else(|| Error::NoStack {
            state_dir: state_dir.display().to_string(),
        })
    }

    /// The order shards, then the catalog.
    pub fn all_pg(&self) -> impl Iterator<Item = &PgInstance> {
        self.shards.iter().chain(std::iter::once(&self.catalog))
    }
}

/// Free loopback ports for one plan, all distinct. Each stays bound until
/// the picker is dropped, so the system cannot hand out one port twice (it
/// did: a shard and the broker once got the same port, and the broker then
/// "answered" on the shard's port).
pub(crate) struct Ports(Vec<TcpListener>);

impl Ports {
    pub(crate) fn new() -> Ports {
        Ports(Vec::new())
    }

    pub(crate) fn next(&mut self) -> Result<u16> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
        let port = listener
            .local_addr()
            .map_err(io("finding a free port"))?
            .port();
        self.0.push(listener);
        Ok(port)
    }
}

/// One free loopback port.
pub(crate) fn free_port() -> Result<u16> {
    Ports::new().next()
}

fn plan(config: &Config) -> Result<StackState> {
    let base = data_base(&config.state_dir)?;
    let mut ports = Ports::new();
    let mut shards = Vec::new();
    for i in 0..config.stack.shards {
        let name = format!("shard{i}");
        let mut shard = PgInstance {
            data_dir: base.join(&name),
            name,
            port: ports.next()?,
            database: "orders".into(),
            standby: None,
        };
        if config.stack.standbys {
            shard.standby = Some(plan_standby(&shard, &mut ports)?);
        }
        shards.push(shard);
    }
    let catalog = PgInstance {
        data_dir: base.join("catalog"),
        name: "catalog".into(),
        port: ports.next()?,
        database: "catalog".into(),
        standby: None,
    };
    Ok(StackState {
        shards,
        catalog,
        broker: BrokerInstance {
            port: ports.next()?,
            data_dir: config.state_dir.join("broker"),
        },
        redis: plan_redis(config, &mut ports)?,
    })
}

fn plan_standby(shard: &PgInstance, ports: &mut Ports) -> Result<PgNode> {
    Ok(PgNode {
        port: ports.next()?,
        data_dir: shard.pg_base()?.join(format!("{}-b", shard.name)),
    })
}

fn plan_redis(config: &Config, ports: &mut Ports) -> Result<Option<RedisInstance>> {
    if !config.stack.redis {
        return Ok(None);
    }
    Ok(Some(RedisInstance {
        port: ports.next()?,
        data_dir: config.state_dir.join("redis"),
    }))
}

/// Creates and starts the clusters and the broker that are missing or
/// stopped. The change topics are [`Platform::start`](crate::Platform::start)'s
/// job: they go where the configuration says the broker is.
pub(crate) async fn up(config: &Config) -> Result<StackState> {
    std::fs::create_dir_all(&config.state_dir).map_err(io(format!(
        "creating state folder {}",
        config.state_dir.display()
    )))?;
    let state = match StackState::load(&config.state_dir)? {
        Some(mut s) => {
            if s.shards.len() != config.stack.shards {
                return Err(Error::ShardsChanged {
                    state_dir: config.state_dir.display().to_string(),
                    found: s.shards.len(),
                    configured: config.stack.shards,
                });
            }
            if s.redis.is_none() && config.stack.redis {
                s.redis = plan_redis(config, &mut Ports::new())?;
                s.save(&config.state_dir)?;
            }
            if config.stack.standbys && s.shards.iter().any(|x| x.standby.is_none()) {
                let mut ports = Ports::new();
                for shard in s.shards.iter_mut().filter(|x| x.standby.is_none()) {
                    shard.standby = Some(plan_standby(shard, &mut ports)?);
                }
                s.save(&config.state_dir)?;
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
        start_cluster(&tools, pg)
            .await
            .map_err(|e| Error::PostgresStart {
                name: pg.name.clone(),
                source: Box::new(e),
            })?;
    }
    if !config.stack.standbys {
        // Standbys switched off on a stack that has them: a primary still
        // waiting for its standby would block every commit.
        for shard in state.shards.iter().filter(|s| s.standby.is_some()) {
            crate::ha::set_synchronous(&shard.primary(), None).await?;
        }
    } else {
        let _lock = crate::ha::HaLock::take(&config.state_dir).await?;
        for shard in &state.shards {
            crate::ha::ensure_standby(&tools, shard, config.stack.replication)
                .await
                .map_err(|e| Error::PostgresStart {
                    name: format!("{} standby", shard.name),
                    source: Box::new(e),
                })?;
        }
    }
    let bin = broker::binary(config.stack.broker_bin.as_deref())?;
    broker::start_detached(&bin, state.broker.port, &state.broker.data_dir).await?;
    if let Some(redis) = state.redis.as_ref().filter(|_| config.stack.redis) {
        let bin = crate::redis::binary(config.stack.redis_bin.as_deref())?;
        crate::redis::start_detached(&bin, redis).await?;
    }
    Ok(state)
}

/// Stops the stack; `purge` also deletes its data.
pub fn down(config: &Config, purge: bool) -> Result<()> {
    // The scheduler first: it records its interrupted attempts in the
    // catalog database before that stops. The HA supervisor before the
    // databases, or it would fail them over as they stop.
    crate::daemon::stop(&scheduler_dir(config), Duration::from_secs(10));
    crate::daemon::stop(&ui_dir(config), Duration::from_secs(5));
    crate::daemon::stop(
        &crate::ha::supervisor_dir(&config.state_dir),
        Duration::from_secs(5),
    );
    crate::serving::down(&config.state_dir);
    crate::observe::down(&config.state_dir);
    if let Some(state) = StackState::load(&config.state_dir)? {
        if let Ok(tools) = PgTools::find(config.stack.pg_bin.as_deref()) {
            if let Ok(base) = state.catalog.pg_base() {
                crate::backup::stop_restores(&tools, base);
            }
            for pg in state.all_pg() {
                stop_cluster(&tools, &pg.data_dir);
                if let Some(standby) = &pg.standby {
                    stop_cluster(&tools, &standby.data_dir);
                }
            }
        }
        crate::daemon::stop(&state.broker.data_dir, Duration::from_secs(5));
        if let Some(redis) = &state.redis {
            crate::daemon::stop(&redis.data_dir, Duration::from_secs(5));
        }
        if purge {
            for pg in state.all_pg() {
                let _ = std::fs::remove_dir_all(&pg.data_dir);
                if let Some(standby) = &pg.standby {
                    let _ = std::fs::remove_dir_all(&standby.data_dir);
                }
            }
            if let Ok(base) = state.catalog.pg_base() {
                for dir in ["archive", "backups", "restores"] {
                    let _ = std::fs::remove_dir_all(base.join(dir));
                }
            }
        }
    }
    if purge && config.state_dir.exists() {
        std::fs::remove_dir_all(&config.state_dir)
            .map_err(io(format!("removing {}", config.state_dir.display())))?;
    }
    Ok(())
}

/// Where the stack's web console keeps its pid, log and password.
pub fn ui_dir(config: &Config) -> PathBuf {
    config.state_dir.join("ui")
}

/// The web console's password: `[sql] password` when configured, else the
/// one the local stack made (`<state_dir>/ui/password`, readable by its
/// owner only), made here when `create` and missing.
pub fn ui_password(config: &Config, create: bool) -> Result<Option<secrecy::SecretString>> {
    if let Some(p) = &config.sql.password {
        return Ok(Some(p.clone()));
    }
    let file = ui_dir(config).join("password");
    match std::fs::read_to_string(&file) {
        Ok(text) => return Ok(Some(text.trim().to_string().into())),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io(format!("reading {}", file.display()))(e));
        }
        Err(_) if !create => return Ok(None),
        Err(_) => {}
    }
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut bytes = [0u8; 15];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io("reading /dev/urandom"))?;
    let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(ui_dir(config)).map_err(io("creating the ui folder"))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .map_err(io(format!("creating {}", file.display())))?;
    std::io::Write::write_all(&mut f, password.as_bytes())
        .map_err(io(format!("writing {}", file.display())))?;
    Ok(Some(password.into()))
}

/// Where the stack's scheduler keeps its pid and log.
pub fn scheduler_dir(config: &Config) -> PathBuf {
    config.state_dir.join("scheduler")
}

/// Where the stack's PostgreSQL data lives: under the state folder, unless
/// we are root and the `postgres` user cannot reach it (e.g. a state folder
/// under `/root`); then under `/var/tmp`, named after the state folder.
fn data_base(state_dir: &Path) -> Result<PathBuf> {
    let base = state_dir.join("pg");
    if !is_root() {
        return Ok(base);
    }
    std::fs::create_dir_all(state_dir).map_err(io(format!("creating {}", state_dir.display())))?;
    let ok = Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(state_dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        return Ok(base);
    }
    let mut h: u64 = 0xcbf29ce484222325;
    for b in state_dir.to_string_lossy().bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    Ok(PathBuf::from(format!("/var/tmp/tributary-{h:016x}/pg")))
}

/// Creates the cluster when it does not exist (logical replication on,
/// loopback only, `tributary` as superuser with trust), starts it when it
/// is stopped, and creates its database.
async fn start_cluster(tools: &PgTools, cluster: &PgInstance) -> Result<()> {
    let data = &cluster.data_dir;
    if !data.join("PG_VERSION").exists() {
        std::fs::create_dir_all(data).map_err(io(format!("creating {}", data.display())))?;
        let parent = data
            .parent()
            .ok_or_else(|| Error::Internal(format!("{} has no parent", data.display())))?;
        chown_to_server_user(parent)?;
        tools.initdb(data)?;
        // Every completed WAL segment is copied to the cluster's archive
        // (shared by its nodes, so it spans failovers): with a base backup
        // it restores the cluster to any moment (`tributary restore`).
        let archive = cluster.archive_dir()?;
        std::fs::create_dir_all(&archive).map_err(io(format!("creating {}", archive.display())))?;
        chown_to_server_user(&archive)?;
        let conf = format!(
            "\n# tributary\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = ''\n\
             wal_level = logical\nmax_replication_slots = 16\nmax_wal_senders = 16\n\
             max_connections = 200\nshared_buffers = 128MB\nwal_sender_timeout = 30s\n\
             archive_mode = on\narchive_command = 'test ! -f {archive}/%f && cp %p {archive}/%f'\n\
             archive_timeout = 60\n",
            cluster.port,
            archive = archive.display()
        );
        let path = data.join("postgresql.conf");
        let mut text =
            std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
        text.push_str(&conf);
        std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))?;
        chown_to_server_user(data)?;
    }
    start_if_stopped(tools, data, 60, "pg_ctl start")?;
    let (client, conn) = tokio_postgres::connect(&cluster.admin_dsn(), tokio_postgres::NoTls)
        .await
        .map_err(pg(format!("connecting to {}", cluster.name)))?;
    tokio::spawn(conn);
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&cluster.database],
        )
        .await
        .map_err(pg("reading pg_database"))?
        .is_some();
    if !exists {
        client
            .batch_execute(&format!("CREATE DATABASE {}", cluster.database))
            .await
            .map_err(pg(format!("creating database {}", cluster.database)))?;
    }
    Ok(())
}

/// Whether a server runs on `data` (`pg_ctl status`).
pub(crate) fn running(tools: &PgTools, data: &Path) -> bool {
    tools
        .command("pg_ctl")
        .arg("-D")
        .arg(data)
        .arg("status")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Starts the server on `data` unless it runs, logging to
/// `data/server.log`, waiting up to `timeout_secs` for it to accept
/// connections.
pub(crate) fn start_if_stopped(
    tools: &PgTools,
    data: &Path,
    timeout_secs: u32,
    what: &str,
) -> Result<()> {
    if running(tools, data) {
        return Ok(());
    }
    run(
        tools
            .command("pg_ctl")
            .arg("-D")
            .arg(data)
            .arg("-l")
            .arg(data.join("server.log"))
            .args(["-w", "-t", &timeout_secs.to_string(), "start"]),
        what,
    )
}

/// Stops the cluster in `data` (fast shutdown) when it runs; errors are
/// ignored.
pub(crate) fn stop_cluster(tools: &PgTools, data: &Path) {
    if data.join("postmaster.pid").exists() {
        let _ = run(
            tools
                .command("pg_ctl")
                .arg("-D")
                .arg(data)
                .args(["-m", "fast", "-w", "stop"]),
            "pg_ctl stop",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(env: &[(&str, &str)]) -> Config {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        crate::config::load_from(None, &env).unwrap()
    }

    #[test]
    fn a_plan_gets_distinct_ports_and_a_redis_unless_switched_off() {
        let mut ports = Ports::new();
        let picked: Vec<u16> = (0..50).map(|_| ports.next().unwrap()).collect();
        let distinct: std::collections::BTreeSet<_> = picked.iter().collect();
        assert_eq!(distinct.len(), picked.len(), "{picked:?}");

        let on = config(&[("TRIBUTARY__STATE_DIR", "/s")]);
        let redis = plan_redis(&on, &mut ports).unwrap().expect("on by default");
        assert_eq!(redis.data_dir, PathBuf::from("/s/redis"));
        let off = config(&[("TRIBUTARY__STACK__REDIS", "false")]);
        assert!(plan_redis(&off, &mut ports).unwrap().is_none());
    }
}
