//! `tributary up`, `down` and `status`: the local stack.

use std::path::Path;

use anyhow::Result;
use tributary_stack::{Config, Platform, daemon};

use super::print_json;

pub async fn up(
    config: Config,
    config_file: Option<&Path>,
    observe: bool,
    replicas: Option<usize>,
) -> Result<()> {
    let replicas = replicas.unwrap_or(config.stack.replicas);
    let platform = Platform::start(config).await?;
    if let Some(s) = platform.stack() {
        println!(
            "stack is up ({} shards + catalog, broker at {}{})",
            s.shards.len(),
            s.broker.address(),
            s.redis
                .as_ref()
                .map(|r| format!(", product cache {}", r.url()))
                .unwrap_or_default()
        );
        start_scheduler(platform.config(), config_file).await?;
        start_supervisor(platform.config(), config_file, s).await?;
        tributary::start_ui(platform.config(), config_file).await?;
        if replicas > 0 {
            println!("starting {replicas} order-API replicas and the gateway in front of them");
            let launcher = super::gateway::launcher(config_file)?;
            let s = tributary_stack::serving::up(platform.config(), &launcher, replicas).await?;
            println!(
                "gateway {} in front of {} replicas (admin 127.0.0.1:{})",
                s.gateway.url(),
                s.replicas.len(),
                s.gateway.admin_port
            );
        }
        if observe || platform.config().observe.enabled {
            let o = tributary_stack::observe::up(platform.config(), s).await?;
            println!(
                "monitoring is up: Prometheus {} (alert rules loaded), Alertmanager {}",
                o.prometheus_url(),
                o.alertmanager_url()
            );
        }
    }
    print_status(&platform, false).await
}

/// The HA supervisor, detached like the scheduler, when the shards have
/// standbys and none runs yet.
async fn start_supervisor(
    config: &Config,
    config_file: Option<&Path>,
    stack: &tributary_stack::StackState,
) -> Result<()> {
    if !stack.shards.iter().any(|s| s.standby.is_some()) {
        return Ok(());
    }
    let dir = tributary_stack::ha::supervisor_dir(&config.state_dir);
    if let Some(pid) = daemon::alive(&dir) {
        println!("HA supervisor already runs (pid {pid})");
        return Ok(());
    }
    let pid =
        tributary::spawn_detached(config_file, &dir, "ha.log", &["ha", "run"], "HA supervisor")
            .await?;
    println!(
        "HA supervisor started (pid {pid}): a shard whose primary fails for {} ms fails over to its standby",
        config.stack.failover_after_ms
    );
    Ok(())
}

/// `tributary failover shard N`.
pub async fn failover(config: Config, index: usize) -> Result<()> {
    let f = tributary_stack::ha::failover(&config, index, true).await?;
    println!(
        "{}: {} is the primary now ({} stopped and fenced) after {} ms",
        f.shard,
        f.new_primary,
        f.old_primary,
        f.took.as_millis()
    );
    let rebuilt = tributary_stack::ha::rejoin(&config, index).await?;
    println!("{}: {rebuilt} is its standby again", f.shard);
    Ok(())
}

/// `tributary backup CLUSTER [--list] [--keep N [--prune-only]]`.
pub async fn backup(
    config: &Config,
    cluster: &str,
    list: bool,
    keep: Option<usize>,
    prune_only: bool,
) -> Result<()> {
    use tributary_stack::backup;
    if list {
        for b in backup::list(config, cluster)? {
            println!(
                "{}  {} -> {}  {:.1} MiB  {}",
                b.cluster,
                b.started,
                b.finished,
                b.bytes as f64 / 1048576.0,
                b.dir.display()
            );
        }
        return Ok(());
    }
    if !prune_only {
        let b = backup::backup(config, cluster).await?;
        println!(
            "backup of {} finished at {} ({:.1} MiB) in {}; restorable to any moment after it",
            b.cluster,
            b.finished,
            b.bytes as f64 / 1048576.0,
            b.dir.display()
        );
    }
    if let Some(keep) = keep {
        let p = backup::prune(config, cluster, keep)?;
        println!(
            "kept the newest {keep} backup(s) of {cluster}: removed {} backup(s) and {} archived WAL segment(s), {:.1} MiB; restorable from {}",
            p.backups.len(),
            p.segments,
            p.bytes as f64 / 1048576.0,
            p.restorable_from.as_deref().unwrap_or("(no backup)")
        );
    }
    Ok(())
}

/// `tributary restore CLUSTER --to TIME`.
pub async fn restore(config: &Config, cluster: &str, to: &str) -> Result<()> {
    let r = tributary_stack::backup::restore(config, cluster, to).await?;
    println!(
        "{} restored as of {} from {} in {:.1} s: {} (data {}; `tributary down` stops it)",
        r.cluster,
        r.target,
        r.from_backup.display(),
        r.took.as_secs_f64(),
        r.dsn,
        r.data_dir.display()
    );
    Ok(())
}

/// `tributary restore CLUSTER --lost`.
pub async fn rebuild(config: &Config, cluster: &str) -> Result<()> {
    let r = tributary_stack::backup::rebuild(config, cluster).await?;
    println!(
        "{} rebuilt in place from {} and the archive in {:.1} s: {} (a new standby cloned; \
         the CDC reader re-snapshots the shard, since its slot is gone)",
        r.cluster,
        r.from_backup.display(),
        r.took.as_secs_f64(),
        r.dsn
    );
    Ok(())
}

/// `tributary ha run`.
pub async fn ha_run(config: Config) -> Result<()> {
    let shutdown = tributary::shutdown_on_signals();
    tributary_stack::ha::supervise(&config, shutdown).await?;
    Ok(())
}

/// A workflows scheduler with the stack's job folder, detached like the
/// broker (`down` stops it), unless one `up` started still runs, the
/// folder is missing, or `[stack] scheduler = false`.
async fn start_scheduler(config: &Config, config_file: Option<&Path>) -> Result<()> {
    let dir = tributary_stack::scheduler_dir(config);
    if !config.stack.scheduler {
        return Ok(());
    }
    if let Some(pid) = daemon::alive(&dir) {
        println!("scheduler already runs (pid {pid})");
        return Ok(());
    }
    if !config.stack.jobs.is_dir() {
        println!(
            "no scheduler: no job folder {} ([stack] jobs)",
            config.stack.jobs.display()
        );
        return Ok(());
    }
    let jobs = std::path::absolute(&config.stack.jobs)?;
    let jobs_arg = jobs.display().to_string();
    // /metrics on a free port, announced to `up --observe`'s Prometheus.
    let args = [
        "workflows",
        "--jobs",
        &jobs_arg,
        "run",
        "--metrics",
        "127.0.0.1:0",
    ];
    let pid =
        tributary::spawn_detached(config_file, &dir, "scheduler.log", &args, "scheduler").await?;
    let log = dir.join("scheduler.log");
    println!(
        "scheduler started (pid {pid}) with the jobs of {}; log {}",
        jobs.display(),
        log.display()
    );
    Ok(())
}

pub fn down(config: &Config, purge: bool) -> Result<()> {
    tributary_stack::down(config, purge)?;
    println!(
        "stack is down{}",
        if purge { " and its data deleted" } else { "" }
    );
    Ok(())
}

pub async fn status(config: Config, json: bool) -> Result<()> {
    print_status(&Platform::load(config)?, json).await
}

async fn print_status(platform: &Platform, json: bool) -> Result<()> {
    let status = tributary_stack::status(platform).await?;
    if json {
        return print_json(&status, "status");
    }
    for s in &status {
        println!(
            "{:<22} {:<7} {:<60} {}",
            s.component,
            if s.healthy { "healthy" } else { "DOWN" },
            s.address,
            s.detail
        );
    }
    Ok(())
}
