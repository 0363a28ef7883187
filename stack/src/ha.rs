//! High availability of the order shards on the local stack: a hot standby
//! per shard by streaming replication, and a supervisor that fences a
//! failed primary and promotes the standby (`tributary ha run`, started by
//! `tributary up`; `tributary failover shard N` on demand).
//!
//! Why our own supervisor and not Patroni + etcd (both in Debian): the local
//! stack already owns its clusters (initdb, pg_ctl, ports in `stack.json`),
//! and Patroni would have to own them instead, with a Python runtime and an
//! etcd that is one more process to run, and, as a single local member, no
//! more available than the one machine it runs on. What the supervisor must
//! guarantee, it can here without a consensus store, because every node is
//! on this machine:
//!
//! - **Never two primaries.** The old primary is fenced *before* the
//!   standby is promoted: SIGKILL of its postmaster and every backend (a
//!   SIGSTOPped one dies too), then a marker (`tributary.fenced`) and a
//!   `standby.signal` in its data folder, so a restart brings it up
//!   read-only and the next `up` or supervisor round clones it again as the
//!   new primary's standby. A planned failover stops it cleanly instead, so
//!   the standby has every byte of its WAL first.
//! - **One failover at a time.** A failover, and the rebuilding of a
//!   standby, hold an exclusive lock on `<state>/ha.lock` and re-read
//!   `stack.json` under it; a primary that answers again by then is left
//!   alone.
//! - **Clients follow by themselves.** A shard's DSN names both nodes with
//!   `target_session_attrs=read-write` ([`PgInstance::dsn_of`]); the nodes
//!   keep their ports across failovers, so a process started before one
//!   still names the right pair.
//!
//! On AWS the same roles are RDS Multi-AZ's (or Patroni's on EC2); this
//! module is the local stack's, and `docs/ha.md` says what differs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Replication};
use crate::local::{PgInstance, PgNode, StackState, running, start_if_stopped, stop_cluster};
use crate::postgres::{PgTools, chown_to_server_user, run};
use crate::{Error, Result, io, pg};

/// The physical slot a shard's primary keeps for its standby, so the WAL the
/// standby still needs is never removed.
const STANDBY_SLOT: &str = "tributary_standby";
/// The file that marks a fenced former primary.
pub(crate) const FENCED: &str = "tributary.fenced";
/// How long one probe of a node may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the stack's supervisor keeps its pid and log.
pub fn supervisor_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("ha")
}

/// What a node answered to a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeRole {
    Primary,
    Standby,
    /// No answer within the probe timeout, or an error.
    Down,
}

/// Connects to one node and asks whether it is in recovery.
pub async fn probe(node: &PgNode) -> NodeRole {
    let ask = async {
        let client = crate::postgres::connect(&node.dsn_of("postgres")).await?;
        let recovery: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(pg("probing"))?
            .get(0);
        Ok::<_, Error>(recovery)
    };
    match tokio::time::timeout(PROBE_TIMEOUT, ask).await {
        Ok(Ok(false)) => NodeRole::Primary,
        Ok(Ok(true)) => NodeRole::Standby,
        _ => NodeRole::Down,
    }
}

/// The standby as its primary sees it (`pg_stat_replication`).
#[derive(Clone, Debug, PartialEq)]
pub struct Replica {
    /// `streaming`, `catchup`, ...
    pub state: String,
    /// `sync`, `async`, `potential`, `quorum`.
    pub sync_state: String,
    /// WAL the primary wrote that the standby has not replayed.
    pub replay_lag_bytes: i64,
    /// The walsender's replay lag (none while idle and caught up).
    pub replay_lag_seconds: f64,
}

/// The shard's standby as its primary reports it; `None` when no standby is
/// connected (or the primary does not answer).
pub async fn replica(shard: &PgInstance) -> Option<Replica> {
    let ask = async {
        let client = crate::postgres::connect(&shard.primary().dsn_of("postgres"))
            .await
            .ok()?;
        let row = client
            .query_opt(
                "SELECT r.state::text, r.sync_state::text,
                        pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn)::int8,
                        coalesce(extract(epoch FROM r.replay_lag)::float8, 0)
                 FROM pg_stat_replication r
                 JOIN pg_replication_slots s ON s.active_pid = r.pid
                 WHERE s.slot_name = $1",
                &[&STANDBY_SLOT],
            )
            .await
            .ok()??;
        Some(Replica {
            state: row.get(0),
            sync_state: row.get(1),
            replay_lag_bytes: row.get::<_, Option<i64>>(2).unwrap_or(0),
            replay_lag_seconds: row.get(3),
        })
    };
    tokio::time::timeout(PROBE_TIMEOUT * 2, ask)
        .await
        .ok()
        .flatten()
}

/// The exclusive lock of failovers and standby rebuilds, held until dropped.
pub(crate) struct HaLock(std::fs::File);

impl HaLock {
    pub(crate) async fn take(state_dir: &Path) -> Result<HaLock> {
        let path = state_dir.join("ha.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        let file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
            .await
            .map_err(|e| Error::Internal(format!("lock task: {e}")))?
            .map_err(io(format!("locking {}", path.display())))?;
        Ok(HaLock(file))
    }
}

impl Drop for HaLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// Makes the shard's standby when it is missing (or is a fenced former
/// primary), starts it, and with synchronous replication puts it in the
/// primary's synchronous set once it streams.
pub(crate) async fn ensure_standby(
    tools: &PgTools,
    shard: &PgInstance,
    mode: Replication,
) -> Result<()> {
    let Some(node) = &shard.standby else {
        return Ok(());
    };
    let data = &node.data_dir;
    if data.join(FENCED).exists() {
        tracing::warn!(shard = %shard.name, node = %node.name(),
            "the standby node is a fenced former primary: cloning it again from the new primary (WAL it never replicated is gone with it)");
        stop_cluster(tools, data);
        std::fs::remove_dir_all(data).map_err(io(format!("removing {}", data.display())))?;
    }
    if !data.join("PG_VERSION").exists() {
        clone(tools, shard, node).await?;
    }
    start_if_stopped(tools, data, 60, "pg_ctl start (standby)")?;
    if mode == Replication::Sync {
        let deadline = Instant::now() + Duration::from_secs(20);
        while replica(shard).await.is_none_or(|r| r.state != "streaming") {
            if Instant::now() > deadline {
                tracing::warn!(shard = %shard.name, "the standby does not stream yet; the primary stays asynchronous until it does");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        set_synchronous(&shard.primary(), Some(node)).await?;
    }
    Ok(())
}

/// A copy of the primary by `pg_basebackup`, with the slot that keeps its
/// WAL, configured to follow it on its own port.
async fn clone(tools: &PgTools, shard: &PgInstance, node: &PgNode) -> Result<()> {
    let primary = crate::postgres::connect(&shard.primary().dsn_of("postgres")).await?;
    primary
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
             WHERE slot_name = $1 AND NOT active",
            &[&STANDBY_SLOT],
        )
        .await
        .map_err(pg("dropping the old standby slot"))?;
    let data = &node.data_dir;
    chown_to_server_user(shard.pg_base()?)?;
    let started = Instant::now();
    run(
        tools
            .command("pg_basebackup")
            .arg("-D")
            .arg(data)
            .args(["-h", "127.0.0.1", "-U", "tributary", "-p"])
            .arg(shard.port.to_string())
            .args(["-X", "stream", "-R", "-C", "-S", STANDBY_SLOT])
            .args(["--checkpoint=fast", "--no-sync"]),
        "pg_basebackup (standby)",
    )?;
    // The copy carries the primary's log and settings: a log of its own,
    // its own port and name, and no synchronous set of its own until it is
    // promoted (then the supervisor decides).
    let log = data.join("server.log");
    let _ = std::fs::write(&log, "");
    let auto = data.join("postgresql.auto.conf");
    let mut text =
        std::fs::read_to_string(&auto).map_err(io(format!("reading {}", auto.display())))?;
    text.push_str(&format!(
        "port = {}\ncluster_name = '{}'\nsynchronous_standby_names = ''\nhot_standby = on\n",
        node.port,
        node.name()
    ));
    std::fs::write(&auto, text).map_err(io(format!("writing {}", auto.display())))?;
    chown_to_server_user(data)?;
    tracing::info!(shard = %shard.name, node = %node.name(), took_ms = started.elapsed().as_millis() as u64, "standby cloned from the primary");
    Ok(())
}

/// Makes `standby` (by its `cluster_name`, the application name its
/// walreceiver gives) `primary`'s one synchronous standby, or (`None`)
/// empties the synchronous set. By name, never `'*'`: the CDC reader's
/// logical walsender is a "standby" too, and with `'*'` the primary made
/// it the synchronous one whenever it connected first: every commit then
/// waited for the reader to confirm (after Kafka), and the reader's own
/// heartbeat transaction waited for itself until the walsender timed out.
pub(crate) async fn set_synchronous(primary: &PgNode, standby: Option<&PgNode>) -> Result<()> {
    let client = crate::postgres::connect(&primary.dsn_of("postgres")).await?;
    let want = standby
        .map(|s| format!("\"{}\"", s.name()))
        .unwrap_or_default();
    let on = standby.is_some();
    let now: String = client
        .query_one("SHOW synchronous_standby_names", &[])
        .await
        .map_err(pg("reading synchronous_standby_names"))?
        .get(0);
    if now != want {
        // Two statements: ALTER SYSTEM refuses the implicit transaction of
        // a multi-statement query.
        for sql in [
            format!("ALTER SYSTEM SET synchronous_standby_names = '{want}'"),
            "SELECT pg_reload_conf()".to_string(),
        ] {
            client
                .batch_execute(&sql)
                .await
                .map_err(pg("setting synchronous_standby_names"))?;
        }
        tracing::info!(node = %primary.name(), synchronous = on, "synchronous replication set");
    }
    Ok(())
}

/// How a failover went.
#[derive(Clone, Debug)]
pub struct Failover {
    pub shard: String,
    pub old_primary: String,
    pub new_primary: String,
    /// Fencing, promotion and the new primary taking writes.
    pub took: Duration,
}

/// Fails shard `index` over to its standby: fences the primary (a clean
/// stop when `planned`, else SIGKILL of every process of it), promotes the
/// standby, and records the swap in `stack.json`. The fenced node becomes
/// the standby-to-be; [`ensure_standby`] clones it again.
///
/// Unplanned, it re-checks under the lock and refuses when the primary
/// answers again (another failover got there first, or it recovered).
pub async fn failover(config: &Config, index: usize, planned: bool) -> Result<Failover> {
    let tools = PgTools::find(config.stack.pg_bin.as_deref())?;
    let _lock = HaLock::take(&config.state_dir).await?;
    let mut state = StackState::require(&config.state_dir)?;
    let shard = state
        .shards
        .get(index)
        .cloned()
        .ok_or_else(|| Error::Failover {
            shard: format!("shard{index}"),
            reason: format!("the stack has {} shards", state.shards.len()),
        })?;
    let refuse = |reason: String| Error::Failover {
        shard: shard.name.clone(),
        reason,
    };
    let standby = shard.standby.clone().ok_or_else(|| {
        refuse("it has no standby ([stack] standbys = false, or made before them)".into())
    })?;
    let old = shard.primary();
    if probe(&standby).await != NodeRole::Standby {
        return Err(refuse(format!(
            "its standby {} does not answer as a standby",
            standby.name()
        )));
    }
    if !planned && probe(&old).await == NodeRole::Primary {
        return Err(refuse(format!(
            "its primary {} answers again; nothing to do",
            old.name()
        )));
    }
    let started = Instant::now();
    if planned {
        // A clean stop: the walsender hands the standby every byte of WAL
        // before the primary exits, so nothing acknowledged is lost.
        stop_cluster(&tools, &old.data_dir);
    }
    fence(&old.data_dir)?;
    run(
        tools
            .command("pg_ctl")
            .arg("-D")
            .arg(&standby.data_dir)
            .args(["-w", "-t", "60", "promote"]),
        "pg_ctl promote",
    )?;
    // Alone now: a synchronous set would block every commit until a new
    // standby streams (ensure_standby restores it then).
    set_synchronous(&standby, None).await?;
    let took = started.elapsed();
    let s = &mut state.shards[index];
    s.port = standby.port;
    s.data_dir = standby.data_dir.clone();
    s.standby = Some(old.clone());
    state.save(&config.state_dir)?;
    tracing::warn!(shard = %shard.name, old = %old.name(), new = %standby.name(), planned,
        took_ms = took.as_millis() as u64, "FAILOVER: the standby is the primary now; the old primary is fenced");
    Ok(Failover {
        shard: shard.name.clone(),
        old_primary: old.name(),
        new_primary: standby.name(),
        took,
    })
}

/// Clones shard `index`'s standby again when it is missing or fenced (after
/// [`failover`]), and starts it; returns its node's name.
pub async fn rejoin(config: &Config, index: usize) -> Result<String> {
    let tools = PgTools::find(config.stack.pg_bin.as_deref())?;
    let _lock = HaLock::take(&config.state_dir).await?;
    let state = StackState::require(&config.state_dir)?;
    let shard = state.shards.get(index).ok_or_else(|| Error::Failover {
        shard: format!("shard{index}"),
        reason: format!("the stack has {} shards", state.shards.len()),
    })?;
    ensure_standby(&tools, shard, config.stack.replication).await?;
    Ok(shard.standby.as_ref().map(PgNode::name).unwrap_or_default())
}

/// Makes sure the cluster in `data` can never take a write again: every
/// process of it SIGKILLed (a stopped one too), then a marker and a
/// `standby.signal`, so a restart comes up read-only.
pub(crate) fn fence(data: &Path) -> Result<()> {
    let victims = kill_node(data);
    let deadline = Instant::now() + Duration::from_secs(5);
    while victims.iter().any(|p| alive(*p)) {
        if Instant::now() > deadline {
            return Err(Error::Internal(format!(
                "fencing {}: processes {victims:?} still alive 5 s after SIGKILL",
                data.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for file in [FENCED, "standby.signal"] {
        let path = data.join(file);
        std::fs::write(&path, "").map_err(io(format!("writing {}", path.display())))?;
    }
    chown_to_server_user(data)?;
    Ok(())
}

/// SIGKILLs the postmaster of the cluster in `data` and every process
/// whose parent it is (a crashed machine); returns them, empty when the
/// cluster has no `postmaster.pid`. Does not wait for them to die.
pub fn kill_node(data: &Path) -> Vec<i32> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let Some(pid) = postmaster_pid(data) else {
        return Vec::new();
    };
    let mut victims = children(pid);
    victims.push(pid);
    for p in &victims {
        let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
    }
    victims
}

/// The postmaster's pid recorded in `data/postmaster.pid` (also after it
/// died: the file stays until a clean stop).
pub fn postmaster_pid(data: &Path) -> Option<i32> {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_field(&stat, 0).is_some_and(|s| s != "Z"),
        Err(_) => false,
    }
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold
/// spaces and parentheses): 0 is the state, 1 the parent's pid.
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n)
}

/// Every process whose parent is `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| stat_field(&s, 1).and_then(|f| f.parse::<i32>().ok()))
                == Some(pid)
        })
        .collect()
}

/// `tributary ha run`: probes every shard's primary every `interval`;
/// one that has failed every probe for `[stack] failover_after_ms` is
/// fenced and its standby promoted; a missing or fenced standby is cloned
/// again; with synchronous replication, a standby down for as long leaves
/// the synchronous set (the primary keeps taking writes) and rejoins it
/// when it streams again.
pub async fn supervise(config: &Config, shutdown: CancellationToken) -> Result<()> {
    let tools = PgTools::find(config.stack.pg_bin.as_deref())?;
    let after = Duration::from_millis(config.stack.failover_after_ms);
    let interval = (after / 6).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut primary_down: Vec<Option<Instant>> = Vec::new();
    let mut standby_down: Vec<Option<Instant>> = Vec::new();
    // What this supervisor last set per shard (primary's port, in sync), so
    // a round connects to change the setting only when it must.
    let mut synced: Vec<Option<(u16, bool)>> = Vec::new();
    tracing::info!(failover_after_ms = after.as_millis() as u64, probe_ms = interval.as_millis() as u64,
        replication = ?config.stack.replication, "HA supervisor watching the shards");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
        let Some(state) = StackState::load(&config.state_dir)? else {
            continue;
        };
        primary_down.resize(state.shards.len(), None);
        standby_down.resize(state.shards.len(), None);
        synced.resize(state.shards.len(), None);
        for (i, shard) in state.shards.iter().enumerate() {
            let Some(standby) = &shard.standby else {
                continue;
            };
            let now = Instant::now();
            if probe(&shard.primary()).await == NodeRole::Primary {
                if primary_down[i].take().is_some() {
                    tracing::info!(shard = %shard.name, "primary answers again");
                }
            } else {
                let since = *primary_down[i].get_or_insert_with(|| {
                    tracing::warn!(shard = %shard.name, node = %shard.node_name(), "primary does not answer");
                    now
                });
                if now.duration_since(since) >= after {
                    match failover(config, i, false).await {
                        Ok(f) => {
                            tracing::warn!(shard = %f.shard, old = %f.old_primary, new = %f.new_primary,
                                down_ms = since.elapsed().as_millis() as u64, "failed over");
                            primary_down[i] = None;
                        }
                        Err(e) => {
                            tracing::error!(shard = %shard.name, error = %tributary_model::error_chain(&e), "failover failed; trying again")
                        }
                    }
                }
                continue;
            }
            // The standby: cloned again when fenced or missing, started
            // when stopped, and (sync) in or out of the synchronous set.
            let needs_rebuild = standby.data_dir.join(FENCED).exists()
                || !standby.data_dir.join("PG_VERSION").exists()
                || !running(&tools, &standby.data_dir);
            if needs_rebuild {
                let lock = HaLock::take(&config.state_dir).await?;
                // Re-read: a failover may have swapped the nodes meanwhile.
                if let Some(fresh) = StackState::load(&config.state_dir)?
                    .and_then(|s| s.shards.get(i).cloned())
                    .filter(|s| s.standby.as_ref() == Some(standby))
                    && let Err(e) = ensure_standby(&tools, &fresh, config.stack.replication).await
                {
                    tracing::error!(shard = %shard.name, error = %tributary_model::error_chain(&e), "rebuilding the standby failed; trying again");
                }
                drop(lock);
                continue;
            }
            if config.stack.replication == Replication::Sync {
                let streaming = replica(shard).await.is_some_and(|r| r.state == "streaming");
                let want = if streaming {
                    standby_down[i] = None;
                    Some(true)
                } else {
                    let since = *standby_down[i].get_or_insert(now);
                    (now.duration_since(since) >= after).then_some(false)
                };
                if let Some(on) = want
                    && synced[i] != Some((shard.port, on))
                {
                    if !on {
                        tracing::warn!(shard = %shard.name, "the standby does not stream: leaving synchronous replication until it does (commits are not waiting for it)");
                    }
                    let standby = on.then_some(standby);
                    if set_synchronous(&shard.primary(), standby).await.is_ok() {
                        synced[i] = Some((shard.port, on));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let stat = "4242 (postgres: a (b) c) S 4200 4242 4242 0 -1";
        assert_eq!(stat_field(stat, 0), Some("S"));
        assert_eq!(stat_field(stat, 1), Some("4200"));
        assert_eq!(stat_field("garbage", 0), None);
    }

    #[test]
    fn this_process_is_alive_and_a_child_of_its_parent() {
        let me = std::process::id() as i32;
        assert!(alive(me));
        let parent = nix::unistd::getppid().as_raw();
        assert!(children(parent).contains(&me));
    }
}
