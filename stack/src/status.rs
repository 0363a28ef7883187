//! `tributary status`: every component of the platform with its address
//! and health, read from outside (nothing here needs a running command).

use std::time::Duration;

use serde::Serialize;
use tributary_model::domain::TABLES;
use tributary_model::dsn::describe;

use crate::platform::Platform;
use crate::{Error, Result};

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

/// A silver table in a [`status`] listing: how far behind its sources it
/// is, and who writes it (the lease holder; empty when none does).
pub fn table_status<'a>(status: &'a [ComponentStatus], table: &str) -> (Option<f64>, &'a str) {
    let behind = status
        .iter()
        .find(|s| s.component == format!("silver.{table}"))
        .and_then(|s| s.freshness_seconds);
    let writer = status
        .iter()
        .find(|s| s.component == format!("lake writer {table}"))
        .map_or("", |s| s.detail.as_str());
    (behind, writer.strip_prefix("written by ").unwrap_or(writer))
}

/// Health of every component, with its address.
pub async fn status(platform: &Platform) -> Result<Vec<ComponentStatus>> {
    let Some(state) = platform.stack() else {
        return Err(Error::NoStack {
            state_dir: platform.config().state_dir.display().to_string(),
        });
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
                let node = if pg.standby.is_some() {
                    format!("primary node {}; ", pg.node_name())
                } else {
                    String::new()
                };
                (
                    true,
                    format!("{node}{}; data {}", lag, pg.data_dir.display()),
                )
            }
            Ok(Err(e)) => (false, e.to_string()),
            Err(_) => (false, "timed out".into()),
        };
        out.push(ComponentStatus {
            component: format!("postgres {}", pg.name),
            address: describe(&pg.dsn()),
            healthy,
            detail,
            freshness_seconds: None,
        });
        if let Some(standby) = &pg.standby {
            out.push(standby_status(pg, standby).await);
        }
    }
    let kafka = platform.kafka()?;
    let broker_ok = tributary_kafka::check_broker(kafka, Duration::from_secs(3)).await;
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
    if let Some(redis) = &state.redis {
        let (healthy, detail) = crate::redis::describe(redis);
        out.push(ComponentStatus {
            component: "redis (product cache)".into(),
            address: redis.url(),
            healthy,
            detail,
            freshness_seconds: None,
        });
    }
    out.extend(crate::serving::status(&platform.config().state_dir).await);
    let lake_config = platform.lake_config();
    out.push(scheduler(platform, lake_config).await);
    if let Some(ui) = ui(platform) {
        out.push(ui);
    }
    out.extend(supervisor(platform));
    let lake = tributary_lake::Lake::new(lake_config);
    out.push(ComponentStatus {
        component: "lake".into(),
        address: lake_config.root.clone(),
        healthy: lake.is_ok(),
        detail: "bronze, silver, gold".into(),
        freshness_seconds: None,
    });
    out.extend(lake_writers(lake_config).await);
    if let Ok(lake) = lake {
        out.extend(silver_freshness(&lake).await);
    }
    out.extend(crate::observe::status(&platform.config().state_dir).await);
    Ok(out)
}

/// A shard's standby: its role, and its replication lag as the primary
/// sees it.
async fn standby_status(shard: &crate::PgInstance, node: &crate::PgNode) -> ComponentStatus {
    use crate::ha::{NodeRole, probe, replica};
    let role = probe(node).await;
    let (healthy, detail) = match (role, replica(shard).await) {
        (NodeRole::Standby, Some(r)) => (
            r.state == "streaming",
            format!(
                "node {}; {} {}, replay lag {} bytes, {:.1} s",
                node.name(),
                r.state,
                r.sync_state,
                r.replay_lag_bytes,
                r.replay_lag_seconds
            ),
        ),
        (NodeRole::Standby, None) => (false, format!("node {}; not streaming", node.name())),
        (NodeRole::Primary, _) => (false, format!("node {} answers as a PRIMARY", node.name())),
        (NodeRole::Down, _) => (
            false,
            format!("node {} does not answer (fenced or stopped)", node.name()),
        ),
    };
    ComponentStatus {
        component: format!("postgres {} standby", shard.name),
        address: describe(&node.dsn_of(&shard.database)),
        healthy,
        detail: format!("{detail}; data {}", node.data_dir.display()),
        freshness_seconds: None,
    }
}

/// The HA supervisor `up` started.
fn supervisor(platform: &Platform) -> Option<ComponentStatus> {
    let state_dir = &platform.config().state_dir;
    let dir = crate::ha::supervisor_dir(state_dir);
    if !platform.stack()?.shards.iter().any(|s| s.standby.is_some()) {
        return None;
    }
    let pid = crate::daemon::alive(&dir);
    Some(ComponentStatus {
        component: "ha supervisor".into(),
        address: "-".into(),
        healthy: pid.is_some(),
        detail: match pid {
            Some(pid) => format!(
                "pid {pid}; fails a shard over after {} ms without its primary; log {}",
                platform.config().stack.failover_after_ms,
                dir.join("ha.log").display()
            ),
            None => "not running: no automatic failover (`tributary up` starts it)".into(),
        },
        freshness_seconds: None,
    })
}

/// The workflows scheduler `up` started, and who leads (any scheduler
/// may hold the lease, not only the stack's).
async fn scheduler(platform: &Platform, config: &tributary_lake::LakeConfig) -> ComponentStatus {
    let dir = crate::scheduler_dir(platform.config());
    let process = match (crate::daemon::pid(&dir), crate::daemon::alive(&dir)) {
        (_, Some(pid)) => Ok(format!("pid {pid}")),
        (Some(pid), None) => Err(format!(
            "pid {pid} exited (log {})",
            dir.join("scheduler.log").display()
        )),
        (None, None) => Ok("not started by `up`".to_string()),
    };
    let leader = match tributary_lake::Lake::new(config) {
        Ok(lake) => match tokio::time::timeout(Duration::from_secs(3), lake.coordinator()).await {
            Ok(Ok(Some(c))) => match c.leases(SCHEDULER_LEASE).await {
                Ok(leases) => match leases.iter().find(|l| l.expires_in_s > 0.0) {
                    Some(l) => format!("leader {} (epoch {})", l.owner, l.epoch),
                    None => "no scheduler leads".into(),
                },
                Err(e) => format!("leader unknown: {e}"),
            },
            _ => "leader unknown (no catalog database)".into(),
        },
        Err(e) => format!("leader unknown: {e}"),
    };
    ComponentStatus {
        component: "workflows scheduler".into(),
        address: dir.display().to_string(),
        healthy: process.is_ok(),
        detail: format!("{}; {leader}", process.unwrap_or_else(|e| e)),
        freshness_seconds: None,
    }
}

/// The web console `up` started, when it did.
fn ui(platform: &Platform) -> Option<ComponentStatus> {
    let config = platform.config();
    let dir = crate::ui_dir(config);
    let pid = crate::daemon::pid(&dir)?;
    let alive = crate::daemon::alive(&dir).is_some();
    let login = if config.sql.password.is_some() {
        format!("user {}, [sql] password", config.sql.user)
    } else {
        format!(
            "user {}, password in {}",
            config.sql.user,
            dir.join("password").display()
        )
    };
    Some(ComponentStatus {
        component: "web console".into(),
        address: format!("http://{}", config.ui.listen),
        healthy: alive,
        detail: if alive {
            format!("pid {pid}; {login}")
        } else {
            format!("pid {pid} exited (log {})", dir.join("ui.log").display())
        },
        freshness_seconds: None,
    })
}

/// The scheduler's lease (`tributary_workflows::leader::RESOURCE`).
const SCHEDULER_LEASE: &str = "workflows/scheduler";

/// Who writes each table (the ingest lease holder) and for how long.
async fn lake_writers(config: &tributary_lake::LakeConfig) -> Vec<ComponentStatus> {
    let Ok(lake) = tributary_lake::Lake::new(config) else {
        return vec![];
    };
    let unreachable = |detail: String| {
        vec![ComponentStatus {
            component: "lake commit coordinator".into(),
            address: config
                .coordinator_dsn
                .as_deref()
                .map(describe)
                .unwrap_or_default(),
            healthy: false,
            detail,
            freshness_seconds: None,
        }]
    };
    let coordinator = match tokio::time::timeout(Duration::from_secs(3), lake.coordinator()).await {
        Ok(Ok(Some(c))) => c,
        Ok(Ok(None)) => return vec![],
        Ok(Err(e)) => return unreachable(tributary_model::error_chain(&e)),
        Err(_) => return unreachable("timed out".into()),
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
