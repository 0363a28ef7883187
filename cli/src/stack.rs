//! The local stack: PostgreSQL clusters (N order shards and one catalog)
//! made with the system's `initdb`/`pg_ctl`, and a Kafka-API broker (tansu)
//! with durable storage, all under the state folder.
//!
//! `up` is idempotent: it creates what is missing and starts what is stopped.
//! Ports are picked free on first `up` and kept in `<state>/stack.json`.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use tributary_kafka::KafkaConfig;
use tributary_model::domain::{TABLES, topic_of};

use crate::config::Config;

/// One PostgreSQL cluster of the stack.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PgInstance {
    pub name: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub database: String,
}

impl PgInstance {
    pub fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=tributary dbname={}",
            self.port, self.database
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
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?,
        ))
    }

    fn save(&self, state_dir: &Path) -> Result<()> {
        let p = Self::path(state_dir);
        std::fs::write(&p, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", p.display()))
    }

    pub fn all_pg(&self) -> impl Iterator<Item = &PgInstance> {
        self.shards.iter().chain(std::iter::once(&self.catalog))
    }
}

/// The status of one component.
#[derive(Debug, Serialize)]
pub struct ComponentStatus {
    pub component: String,
    pub address: String,
    pub healthy: bool,
    pub detail: String,
    /// Silver tables: how far behind their sources they are, in seconds (see
    /// `tributary_lake::freshness`), as recorded in the lake.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freshness_seconds: Option<f64>,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn pg_bin(config: &Config) -> Result<PathBuf> {
    if let Some(p) = &config.stack.pg_bin {
        return Ok(p.clone());
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("pg_ctl").exists() {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("pg_ctl").exists())
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates.pop().ok_or_else(|| {
        anyhow!("PostgreSQL server binaries not found: install the `postgresql` package or set stack.pg_bin")
    })
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root (initdb
/// and the server refuse to run as root).
fn pg_command(bin: &Path, tool: &str) -> Command {
    let exe = bin.join(tool);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Where PostgreSQL data lives: under the state folder, unless we are root
/// and the `postgres` user cannot reach it (e.g. a state folder under
/// `/root`); then under `/var/tmp`, named after the state folder.
fn pg_base(state_dir: &Path) -> Result<PathBuf> {
    let base = state_dir.join("pg");
    if !is_root() {
        return Ok(base);
    }
    std::fs::create_dir_all(state_dir)?;
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

fn chown_postgres(path: &Path) -> Result<()> {
    if is_root() {
        run(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(path),
            "chown to postgres",
        )?;
    }
    Ok(())
}

fn plan(config: &Config) -> Result<StackState> {
    let base = pg_base(&config.state_dir)?;
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

/// Creates and starts everything that is missing or stopped.
pub async fn up(config: &Config) -> Result<StackState> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state folder {}", config.state_dir.display()))?;
    let state = match StackState::load(&config.state_dir)? {
        Some(s) => {
            if s.shards.len() != config.stack.shards {
                bail!(
                    "the stack in {} has {} shards but stack.shards = {}; run `tributary down --purge` first",
                    config.state_dir.display(),
                    s.shards.len(),
                    config.stack.shards
                );
            }
            s
        }
        None => {
            let s = plan(config)?;
            s.save(&config.state_dir)?;
            s
        }
    };
    let bin = pg_bin(config)?;
    for pg in state.all_pg() {
        start_pg(&bin, pg)
            .await
            .with_context(|| format!("starting PostgreSQL {}", pg.name))?;
    }
    start_broker(config, &state.broker).await?;
    let kafka = kafka_config(config, &state);
    let topics: Vec<String> = TABLES
        .iter()
        .map(|t| topic_of(&kafka.topic_prefix, t))
        .collect();
    tributary_kafka::ensure_topics(&kafka, &topics)
        .await
        .context("creating topics")?;
    Ok(state)
}

async fn start_pg(bin: &Path, pg: &PgInstance) -> Result<()> {
    if !pg.data_dir.join("PG_VERSION").exists() {
        std::fs::create_dir_all(&pg.data_dir)?;
        chown_postgres(pg.data_dir.parent().expect("data dir has a parent"))?;
        run(
            pg_command(bin, "initdb").arg("-D").arg(&pg.data_dir).args([
                "-U",
                "tributary",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
            ]),
            "initdb",
        )?;
        let conf = format!(
            "\n# tributary\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = ''\n\
             wal_level = logical\nmax_replication_slots = 16\nmax_wal_senders = 16\n\
             max_connections = 200\nshared_buffers = 128MB\nwal_sender_timeout = 30s\n",
            pg.port
        );
        let path = pg.data_dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path)?;
        text.push_str(&conf);
        std::fs::write(&path, text)?;
        chown_postgres(&pg.data_dir)?;
    }
    let running = pg_command(bin, "pg_ctl")
        .arg("-D")
        .arg(&pg.data_dir)
        .arg("status")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !running {
        run(
            pg_command(bin, "pg_ctl")
                .arg("-D")
                .arg(&pg.data_dir)
                .arg("-l")
                .arg(pg.data_dir.join("server.log"))
                .args(["-w", "-t", "60", "start"]),
            "pg_ctl start",
        )?;
    }
    let admin = format!(
        "host=127.0.0.1 port={} user=tributary dbname=postgres",
        pg.port
    );
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {}", pg.name))?;
    tokio::spawn(conn);
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&pg.database],
        )
        .await?
        .is_some();
    if !exists {
        client
            .batch_execute(&format!("CREATE DATABASE {}", pg.database))
            .await?;
    }
    Ok(())
}

fn broker_bin(config: &Config) -> Result<PathBuf> {
    if let Some(p) = &config.stack.broker_bin {
        return Ok(p.clone());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("tansu"))
        .find(|p| p.exists())
        .ok_or_else(|| anyhow!("the tansu broker is not installed: run ./scripts/bootstrap.sh (cargo install tansu --features libsql) or set stack.broker_bin"))
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300)).is_ok()
}

async fn start_broker(config: &Config, broker: &BrokerInstance) -> Result<()> {
    if port_open(broker.port) {
        return Ok(());
    }
    let bin = broker_bin(config)?;
    std::fs::create_dir_all(&broker.data_dir)?;
    let log = std::fs::File::create(broker.data_dir.join("broker.log"))?;
    let url = format!("tcp://127.0.0.1:{}", broker.port);
    let child = Command::new(&bin)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        // A relative sqlite path keeps the log under the broker folder, on disk.
        .args(["--storage-engine", "sqlite://tansu.db"])
        .current_dir(&broker.data_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: Ctrl-C on `tributary` does not stop the stack.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    std::fs::write(broker.data_dir.join("pid"), child.id().to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !port_open(broker.port) {
        if Instant::now() > deadline {
            bail!(
                "the broker did not listen on {} within 30s; see {}",
                url,
                broker.data_dir.join("broker.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Kafka settings: from the config when given, else the local broker.
pub fn kafka_config(config: &Config, state: &StackState) -> KafkaConfig {
    config
        .kafka
        .clone()
        .unwrap_or_else(|| KafkaConfig::local(&state.broker.address()))
}

/// Stops the stack; `purge` also deletes its data.
pub fn down(config: &Config, purge: bool) -> Result<()> {
    if let Some(state) = StackState::load(&config.state_dir)? {
        if let Ok(bin) = pg_bin(config) {
            for pg in state.all_pg() {
                if pg.data_dir.join("postmaster.pid").exists() {
                    let _ = run(
                        pg_command(&bin, "pg_ctl")
                            .arg("-D")
                            .arg(&pg.data_dir)
                            .args(["-m", "fast", "-w", "stop"]),
                        "pg_ctl stop",
                    );
                }
            }
        }
        stop_broker(&state.broker);
        if purge {
            for pg in state.all_pg() {
                let _ = std::fs::remove_dir_all(&pg.data_dir);
            }
        }
    }
    if purge && config.state_dir.exists() {
        std::fs::remove_dir_all(&config.state_dir)
            .with_context(|| format!("removing {}", config.state_dir.display()))?;
    }
    Ok(())
}

/// Stops the broker process recorded in its pid file.
pub fn stop_broker(broker: &BrokerInstance) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let Ok(text) = std::fs::read_to_string(broker.data_dir.join("pid")) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    let pid = Pid::from_raw(pid);
    if kill(pid, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while kill(pid, None).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        // Reap it if it was our child.
        let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    }
    let _ = kill(pid, Signal::SIGKILL);
    let _ = std::fs::remove_file(broker.data_dir.join("pid"));
}

/// Health of every component, with its address.
pub async fn status(config: &Config) -> Result<Vec<ComponentStatus>> {
    let Some(state) = StackState::load(&config.state_dir)? else {
        bail!(
            "no stack in {}: run `tributary up`",
            config.state_dir.display()
        );
    };
    let mut out = Vec::new();
    for pg in state.all_pg() {
        let (healthy, detail) = match tokio::time::timeout(
            Duration::from_secs(3),
            tokio_postgres::connect(&pg.dsn(), tokio_postgres::NoTls),
        )
        .await
        {
            Ok(Ok((client, conn))) => {
                tokio::spawn(conn);
                // Bytes: WAL written but not confirmed by the reader. Seconds:
                // the walsender's flush lag (how long ago the newest
                // confirmed WAL was written; 0 once caught up).
                let slots = client
                    .query(
                        "SELECT s.slot_name::text,
                                pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::int8,
                                s.active, s.wal_status,
                                extract(epoch FROM r.flush_lag)::float8
                         FROM pg_replication_slots s
                         LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
                         WHERE s.slot_type = 'logical' ORDER BY s.slot_name",
                        &[],
                    )
                    .await
                    .unwrap_or_default();
                let lag = if slots.is_empty() {
                    "no slot yet".to_string()
                } else {
                    slots
                        .iter()
                        .map(|r| {
                            let bytes = r.get::<_, Option<i64>>(1).unwrap_or(0);
                            let seconds = if r.get::<_, bool>(2) {
                                format!("{:.1} s", r.get::<_, Option<f64>>(4).unwrap_or(0.0))
                            } else {
                                "reader not connected".to_string()
                            };
                            let wal = r.get::<_, Option<String>>(3).unwrap_or_default();
                            let wal = if wal == "lost" { " SLOT LOST" } else { "" };
                            format!(
                                "slot {} lag {bytes} bytes, {seconds}{wal}",
                                r.get::<_, String>(0)
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                (true, format!("{}; data {}", lag, pg.data_dir.display()))
            }
            Ok(Err(e)) => (false, e.to_string()),
            Err(_) => (false, "timed out".into()),
        };
        out.push(ComponentStatus {
            component: format!("postgres {}", pg.name),
            address: pg.dsn(),
            healthy,
            detail,
            freshness_seconds: None,
        });
    }
    let kafka = kafka_config(config, &state);
    let broker_ok = tributary_kafka::check_broker(&kafka, Duration::from_secs(3)).await;
    out.push(ComponentStatus {
        component: "kafka broker (tansu)".into(),
        address: kafka.brokers.clone(),
        healthy: broker_ok.is_ok(),
        detail: match broker_ok {
            Ok(()) => format!("data {}", state.broker.data_dir.display()),
            Err(e) => e.to_string(),
        },
        freshness_seconds: None,
    });
    let lake_config = crate::pipeline::lake_config(config);
    let lake = tributary_lake::Lake::new(&lake_config);
    out.push(ComponentStatus {
        component: "lake".into(),
        address: lake_config.root.clone(),
        healthy: lake.is_ok(),
        detail: "bronze, silver, gold".into(),
        freshness_seconds: None,
    });
    out.extend(lake_writers(&lake_config).await);
    if let Ok(lake) = lake {
        out.extend(silver_freshness(&lake).await);
    }
    Ok(out)
}

/// Who writes each table (the ingest lease holder) and for how long.
async fn lake_writers(config: &tributary_lake::LakeConfig) -> Vec<ComponentStatus> {
    let Ok(lake) = tributary_lake::Lake::new(config) else {
        return vec![];
    };
    let coordinator = match tokio::time::timeout(Duration::from_secs(3), lake.coordinator()).await {
        Ok(Ok(Some(c))) => c,
        Ok(Ok(None)) => return vec![],
        Ok(Err(e)) => {
            return vec![ComponentStatus {
                component: "lake commit coordinator".into(),
                address: config.coordinator_dsn.clone().unwrap_or_default(),
                healthy: false,
                detail: tributary_model::error_chain(&e),
                freshness_seconds: None,
            }];
        }
        Err(_) => {
            return vec![ComponentStatus {
                component: "lake commit coordinator".into(),
                address: config.coordinator_dsn.clone().unwrap_or_default(),
                healthy: false,
                detail: "timed out".into(),
                freshness_seconds: None,
            }];
        }
    };
    let leases = coordinator
        .leases(lake.root().as_str())
        .await
        .unwrap_or_default();
    TABLES
        .iter()
        .map(|t| {
            let resource = tributary_lake::lease::resource(&lake, t.name);
            let (healthy, detail) = match leases.iter().find(|l| l.resource == resource) {
                Some(l) if l.expires_in_s > 0.0 => (
                    true,
                    format!(
                        "written by {} (lease epoch {}, expires in {:.1} s unless renewed)",
                        l.owner, l.epoch, l.expires_in_s
                    ),
                ),
                Some(l) => (
                    false,
                    format!(
                        "no writer: the lease of {} (epoch {}) expired {:.0} s ago",
                        l.owner, l.epoch, -l.expires_in_s
                    ),
                ),
                None => (true, "no ingester has claimed it yet".into()),
            };
            ComponentStatus {
                component: format!("lake writer {}", t.name),
                address: resource,
                healthy,
                detail,
                freshness_seconds: None,
            }
        })
        .collect()
}

/// One line per silver table: up to when it holds every source change, as
/// its newest commits record it (`tributary_lake::freshness`). Read from the
/// lake alone, so it shows (and keeps growing) while the ingester is down.
async fn silver_freshness(lake: &tributary_lake::Lake) -> Vec<ComponentStatus> {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    let mut out = Vec::new();
    for t in TABLES {
        let (detail, seconds) = match tributary_lake::freshness::recorded(lake, t.name).await {
            Ok(Some((rec, _))) => {
                let secs = (now_us - rec.complete_up_to_us).max(0) as f64 / 1e6;
                (
                    format!(
                        "complete up to {} ({secs:.1} s behind, from {})",
                        rec.complete_up_to,
                        rec.basis.as_str()
                    ),
                    Some(secs),
                )
            }
            Ok(None) => ("no freshness recorded yet".to_string(), None),
            Err(e) => (format!("cannot read: {e}"), None),
        };
        out.push(ComponentStatus {
            component: format!("silver.{}", t.name),
            address: lake.table_url("silver", t.name).to_string(),
            healthy: true,
            detail,
            freshness_seconds: seconds,
        });
    }
    out
}
