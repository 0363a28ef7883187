//! Backups of the local stack's clusters and point-in-time restore, with
//! PostgreSQL's own tools: every cluster archives each completed WAL
//! segment into `<pg>/archive/<cluster>` (`archive_command`, set when the
//! cluster is made; shared by a shard's two nodes, so it spans failovers),
//! `tributary backup` takes a base backup of the primary with
//! `pg_basebackup`, and `tributary restore` starts a **new** cluster from
//! the newest base backup finished before the target time and replays the
//! archive up to that moment (`recovery_target_time`), then promotes it.
//! The running cluster is never touched: compare, copy back what is needed.
//!
//! Why not pgBackRest or Barman (both in Debian): for one machine they add
//! a repository format and a daemon or a config of their own for what
//! `pg_basebackup`, `archive_command` and recovery settings do here in a
//! few lines; they earn their place with remote repositories, retention,
//! parallel and incremental backups, which `docs/ha.md` lists as not yet.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::local::{PgInstance, StackState};
use crate::postgres::{PgTools, chown_to_server_user, run};
use crate::{Error, Result, io, pg};

/// One base backup, as recorded in its folder's `backup.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Backup {
    pub cluster: String,
    pub dir: PathBuf,
    /// When `pg_basebackup` started and finished, as the server's clock
    /// said (UTC, RFC 3339).
    pub started: String,
    pub finished: String,
    pub bytes: u64,
}

fn backups_dir(cluster: &PgInstance) -> Result<PathBuf> {
    Ok(cluster.pg_base()?.join("backups").join(&cluster.name))
}

async fn server_now(client: &tokio_postgres::Client) -> Result<String> {
    Ok(client
        .query_one(
            "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .await
        .map_err(pg("reading the server's clock"))?
        .get(0))
}

/// Finds a cluster of the stack by name (`shard0`, `catalog`).
pub fn cluster(state: &StackState, name: &str) -> Result<PgInstance> {
    state
        .all_pg()
        .find(|p| p.name == name)
        .cloned()
        .ok_or_else(|| Error::Backup {
            cluster: name.into(),
            reason: format!(
                "no such cluster; the stack has {}",
                state
                    .all_pg()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}

/// Checks that the cluster archives its WAL (a stack made before backups
/// does not until it is made again).
async fn archiving(client: &tokio_postgres::Client, cluster: &str) -> Result<()> {
    let mode: String = client
        .query_one("SHOW archive_mode", &[])
        .await
        .map_err(pg("reading archive_mode"))?
        .get(0);
    if mode == "off" {
        return Err(Error::Backup {
            cluster: cluster.into(),
            reason: "its WAL is not archived (archive_mode = off: a stack made before backups; \
                     `tributary down --purge && tributary up` makes one that archives)"
                .into(),
        });
    }
    Ok(())
}

/// A base backup of the cluster's primary into
/// `<pg>/backups/<cluster>/<time>`.
pub async fn backup(config: &crate::Config, name: &str) -> Result<Backup> {
    let tools = PgTools::find(config.stack.pg_bin.as_deref())?;
    let state = StackState::require(&config.state_dir)?;
    let cluster = cluster(&state, name)?;
    let client = crate::postgres::connect(&cluster.admin_dsn()).await?;
    archiving(&client, name).await?;
    let started = server_now(&client).await?;
    let root = backups_dir(&cluster)?;
    std::fs::create_dir_all(&root).map_err(io(format!("creating {}", root.display())))?;
    chown_to_server_user(&root)?;
    let dir = root.join(started.replace(':', "-"));
    run(
        tools
            .command("pg_basebackup")
            .arg("-D")
            .arg(&dir)
            .args(["-h", "127.0.0.1", "-U", "tributary", "-p"])
            .arg(cluster.port.to_string())
            .args(["-X", "stream", "--checkpoint=fast"]),
        "pg_basebackup",
    )?;
    let finished = server_now(&client).await?;
    let backup = Backup {
        cluster: name.into(),
        bytes: dir_size(&dir),
        dir: dir.clone(),
        started,
        finished,
    };
    let meta = root.join(format!("{}.json", file_name(&dir)));
    std::fs::write(
        &meta,
        serde_json::to_string_pretty(&backup).expect("serializable"),
    )
    .map_err(io(format!("writing {}", meta.display())))?;
    Ok(backup)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The cluster's backups, oldest first.
pub fn list(config: &crate::Config, name: &str) -> Result<Vec<Backup>> {
    let state = StackState::require(&config.state_dir)?;
    let root = backups_dir(&cluster(&state, name)?)?;
    let mut out: Vec<Backup> = std::fs::read_dir(&root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|t| serde_json::from_str(&t).ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a: &Backup, b: &Backup| a.finished.cmp(&b.finished));
    Ok(out)
}

/// What [`prune`] removed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Pruned {
    pub backups: Vec<Backup>,
    /// Archived WAL segments older than the oldest backup kept.
    pub segments: usize,
    pub bytes: u64,
    /// The oldest moment a restore can reach now (the oldest kept backup's
    /// end); `None` when no backup is kept.
    pub restorable_from: Option<String>,
}

/// Keeps the newest `keep` backups of cluster `name` (at least one) and
/// removes the older ones, then the archived WAL that only they needed:
/// every segment before the oldest kept backup's start segment (its
/// `backup_label`), removed with PostgreSQL's `pg_archivecleanup`. A restore
/// can then reach any moment after the oldest kept backup finished, and no
/// earlier one (`restore` says so).
pub fn prune(config: &crate::Config, name: &str, keep: usize) -> Result<Pruned> {
    let fail = |reason: String| Error::Backup {
        cluster: name.into(),
        reason,
    };
    if keep == 0 {
        return Err(fail(
            "--keep must be at least 1: a restore needs a base backup".into(),
        ));
    }
    let tools = PgTools::find(config.stack.pg_bin.as_deref())?;
    let state = StackState::require(&config.state_dir)?;
    let cluster = cluster(&state, name)?;
    let all = list(config, name)?;
    let mut out = Pruned::default();
    let Some(cut) = all.len().checked_sub(keep) else {
        out.restorable_from = all.first().map(|b| b.finished.clone());
        return Ok(out);
    };
    let (old, kept) = all.split_at(cut);
    let oldest = kept.first().expect("keep >= 1 and all.len() >= keep");
    let label = oldest.dir.join("backup_label");
    let text =
        std::fs::read_to_string(&label).map_err(io(format!("reading {}", label.display())))?;
    // START WAL LOCATION: 0/2000028 (file 000000010000000000000002)
    let start_segment = text
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION:"))
        .and_then(|rest| rest.split("(file ").nth(1))
        .map(|f| f.trim_end_matches(')').trim().to_string())
        .filter(|f| f.len() == 24 && f.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| fail(format!("no start WAL file in {}", label.display())))?;
    for b in old {
        std::fs::remove_dir_all(&b.dir).map_err(io(format!("removing {}", b.dir.display())))?;
        let meta = b.dir.with_file_name(format!("{}.json", file_name(&b.dir)));
        std::fs::remove_file(&meta).map_err(io(format!("removing {}", meta.display())))?;
        out.bytes += b.bytes;
    }
    out.backups = old.to_vec();
    let archive = cluster.archive_dir()?;
    let before: Vec<(String, u64)> = segments(&archive);
    run(
        tools
            .command("pg_archivecleanup")
            .arg(&archive)
            .arg(&start_segment),
        "pg_archivecleanup",
    )?;
    let after: Vec<String> = segments(&archive).into_iter().map(|(n, _)| n).collect();
    for (n, size) in before {
        if !after.contains(&n) {
            out.segments += 1;
            out.bytes += size;
        }
    }
    out.restorable_from = Some(oldest.finished.clone());
    Ok(out)
}

/// The archive's WAL segment files (24 hex digits) with their sizes.
fn segments(archive: &Path) -> Vec<(String, u64)> {
    std::fs::read_dir(archive)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    (n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
                        .then(|| (n, e.metadata().map(|m| m.len()).unwrap_or(0)))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A cluster restored to a moment, running on its own port.
#[derive(Clone, Debug, Serialize)]
pub struct Restored {
    pub cluster: String,
    pub target: String,
    pub from_backup: PathBuf,
    pub data_dir: PathBuf,
    pub port: u16,
    pub dsn: String,
    pub took: Duration,
}

/// Restores cluster `name` as of `target` (a timestamp PostgreSQL reads,
/// e.g. `2026-12-07 15:04:05.123+00`) into a new cluster under
/// `<pg>/restores/`, started on a free port: the newest backup finished
/// before `target`, then the archived WAL replayed up to it. Before that,
/// the primary switches to a new WAL segment and waits until the one
/// holding `target` is archived.
pub async fn restore(config: &crate::Config, name: &str, target: &str) -> Result<Restored> {
    let started = Instant::now();
    let tools = PgTools::find(config.stack.pg_bin.as_deref())?;
    let state = StackState::require(&config.state_dir)?;
    let cluster = cluster(&state, name)?;
    let fail = |reason: String| Error::Backup {
        cluster: name.into(),
        reason,
    };
    let client = crate::postgres::connect(&cluster.admin_dsn()).await?;
    archiving(&client, name).await?;
    // The target, normalised by the server (and refused when unreadable).
    // (ISO for names and comparisons; the recovery setting wants a space
    // and an offset instead of `T` and `Z`.)
    let row = client
        .query_one(
            "SELECT to_char($1::text::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                    to_char($1::text::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US\"+00\"')",
            &[&target],
        )
        .await
        .map_err(|e| fail(format!("cannot read the target time {target:?}: {e}")))?;
    let (target_utc, target_pg): (String, String) = (row.get(0), row.get(1));
    let backup = list(config, name)?
        .into_iter()
        .rev()
        .find(|b| b.finished < target_utc)
        .ok_or_else(|| {
            fail(format!(
                "no backup finished before {target_utc} (`tributary backup {name}` takes one)"
            ))
        })?;
    if target_utc > server_now(&client).await? {
        return Err(fail(format!("{target_utc} is in the future")));
    }
    // Recovery stops at the first commit after the target, and fails when
    // the WAL ends before one: commit a transaction now (a commit record
    // after the target even on an idle cluster), then everything up to now
    // into the archive.
    client
        .batch_execute("SELECT txid_current()")
        .await
        .map_err(pg("writing a commit after the target"))?;
    let segment: String = client
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .map_err(pg("switching WAL segments"))?
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done: Option<String> = client
            .query_one("SELECT last_archived_wal FROM pg_stat_archiver", &[])
            .await
            .map_err(pg("reading pg_stat_archiver"))?
            .get(0);
        if done.as_deref().is_some_and(|d| d >= segment.as_str()) {
            break;
        }
        if Instant::now() > deadline {
            return Err(fail(format!(
                "WAL segment {segment} was not archived within 60 s (see the server log: archive_command failing?)"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restores = cluster.pg_base()?.join("restores");
    std::fs::create_dir_all(&restores).map_err(io(format!("creating {}", restores.display())))?;
    chown_to_server_user(&restores)?;
    let data = restores.join(format!("{name}-{}", target_utc.replace(':', "-")));
    if data.exists() {
        crate::local::stop_cluster(&tools, &data);
        std::fs::remove_dir_all(&data).map_err(io(format!("removing {}", data.display())))?;
    }
    let port = crate::local::free_port()?;
    let archive = cluster.archive_dir()?;
    recover(
        &tools,
        &backup.dir,
        &data,
        &format!(
            "port = {port}\ncluster_name = '{name}-restored'\n\
             restore_command = 'cp {archive}/%f %p'\nrecovery_target_time = '{target_pg}'\n\
             recovery_target_action = 'promote'\nrecovery_target_timeline = 'latest'\n\
             archive_mode = off\nsynchronous_standby_names = ''\n",
            archive = archive.display()
        ),
        port,
        name,
    )
    .await?;
    let dsn = format!(
        "host=127.0.0.1 port={port} user=tributary dbname={}",
        cluster.database
    );
    Ok(Restored {
        cluster: name.into(),
        target: target_utc,
        from_backup: backup.dir,
        data_dir: data,
        port,
        dsn,
        took: started.elapsed(),
    })
}

/// Stops every restored cluster (`down`).
pub(crate) fn stop_restores(tools: &PgTools, pg_base: &Path) {
    if let Ok(rd) = std::fs::read_dir(pg_base.join("restores")) {
        for e in rd.filter_map(|e| e.ok()) {
            crate::local::stop_cluster(tools, &e.path());
        }
    }
}

/// Copies the base backup at `backup` into `data`, appends `settings` to
/// its `postgresql.auto.conf`, starts it in archive recovery on `port` and
/// waits until it is promoted.
async fn recover(
    tools: &PgTools,
    backup: &Path,
    data: &Path,
    settings: &str,
    port: u16,
    name: &str,
) -> Result<()> {
    run(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(backup)
            .arg(data),
        "copying the base backup",
    )?;
    let auto = data.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
    text.push_str("\n# tributary restore\n");
    text.push_str(settings);
    std::fs::write(&auto, text).map_err(io(format!("writing {}", auto.display())))?;
    for stale in ["standby.signal", "postmaster.pid", crate::ha::FENCED] {
        let _ = std::fs::remove_file(data.join(stale));
    }
    std::fs::write(data.join("recovery.signal"), "")
        .map_err(io(format!("writing {}", data.display())))?;
    let _ = std::fs::write(data.join("server.log"), "");
    chown_to_server_user(data)?;
    crate::local::start_if_stopped(tools, data, 120, "pg_ctl start (restore)")?;
    let admin = format!("host=127.0.0.1 port={port} user=tributary dbname=postgres");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(c) = crate::postgres::connect(&admin).await
            && let Ok(row) = c.query_one("SELECT pg_is_in_recovery()", &[]).await
            && !row.get::<_, bool>(0)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Backup {
                cluster: name.into(),
                reason: format!(
                    "the restored cluster did not finish recovery within 300 s; see {}",
                    data.join("server.log").display()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A shard whose nodes are both lost, rebuilt in place: its primary node's
/// data folder and port again, from the newest base backup and the
/// archived WAL replayed to its end; then a new standby cloned from it.
/// (An earlier moment is `restore --to`'s job, beside a running cluster.) What
/// the lost nodes never archived is gone (up to `archive_timeout`, 60 s,
/// of commits). The lost nodes' folders are kept under `<pg>/lost/`. Under
/// the HA lock, so the supervisor waits; it refuses a shard that still
/// answers.
pub async fn rebuild(config: &crate::Config, name: &str) -> Result<Restored> {
    let started = Instant::now();
    let tools = PgTools::find(config.stack.pg_bin.as_deref())?;
    let _lock = crate::ha::HaLock::take(&config.state_dir).await?;
    let state = StackState::require(&config.state_dir)?;
    let shard = cluster(&state, name)?;
    let fail = |reason: String| Error::Backup {
        cluster: name.into(),
        reason,
    };
    let nodes: Vec<crate::local::PgNode> = std::iter::once(shard.primary())
        .chain(shard.standby.clone())
        .collect();
    for node in &nodes {
        if crate::ha::probe(node).await != crate::ha::NodeRole::Down {
            return Err(fail(format!(
                "node {} still answers on port {}: a rebuild replaces a lost shard only (`tributary restore {name} --to TIME` restores beside a running one)",
                node.name(),
                node.port
            )));
        }
    }
    let backup = list(config, name)?.pop().ok_or_else(|| {
        fail(format!(
            "no base backup (`tributary backup {name}` takes one)"
        ))
    })?;
    let lost = shard.pg_base()?.join("lost");
    std::fs::create_dir_all(&lost).map_err(io(format!("creating {}", lost.display())))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for node in &nodes {
        if node.data_dir.exists() {
            // Whatever still runs of a lost node (a frozen postmaster)
            // dies first: its folder is about to move.
            crate::ha::fence(&node.data_dir)?;
            let to = lost.join(format!("{}-{stamp}", node.name()));
            std::fs::rename(&node.data_dir, &to)
                .map_err(io(format!("moving {} aside", node.data_dir.display())))?;
        }
    }
    let archive = shard.archive_dir()?;
    let primary = shard.primary();
    recover(
        &tools,
        &backup.dir,
        &primary.data_dir,
        &format!(
            "port = {}\ncluster_name = '{}'\nrestore_command = 'cp {}/%f %p'\n\
             recovery_target_timeline = 'latest'\nsynchronous_standby_names = ''\n",
            primary.port,
            primary.name(),
            archive.display()
        ),
        primary.port,
        name,
    )
    .await?;
    tracing::info!(shard = name, node = %primary.name(), backup = %backup.dir.display(), "shard rebuilt from the backup and the archive");
    crate::ha::ensure_standby(&tools, &shard, config.stack.replication).await?;
    Ok(Restored {
        cluster: name.into(),
        target: "the end of the archive".into(),
        from_backup: backup.dir,
        data_dir: primary.data_dir.clone(),
        port: primary.port,
        dsn: shard.dsn(),
        took: started.elapsed(),
    })
}
