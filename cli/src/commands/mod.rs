//! One module per command group. Each resolves what it needs from the
//! configuration through [`tributary_stack::Platform`], calls the crate that
//! does the work and prints the result.

mod activity;
mod bench;
mod cdc;
mod etl;
mod fraud;
mod gateway;
mod lake;
mod oltp;
mod pipeline;
mod sql;
mod stack;
mod top;
mod trace;
mod ui;
mod workflows;

use anyhow::Result;
use tributary::parse_duration;
use tributary_stack::config;

use crate::args::{Cli, Command, DrillReplication, DrillScenario, HaCommand};

/// Runs the command `cli` names.
pub async fn run(cli: Cli) -> Result<()> {
    let config = config::load(cli.config.as_deref())?;
    if let Some(endpoint) = &config.observe.otlp_endpoint {
        tributary_metrics::otlp::init(endpoint).map_err(anyhow::Error::msg)?;
    }
    let result = dispatch(cli, config).await;
    // Spans still queued go out before the process ends.
    tributary_metrics::otlp::flush(std::time::Duration::from_secs(3)).await;
    result
}

async fn dispatch(cli: Cli, config: config::Config) -> Result<()> {
    match cli.command {
        Command::Up { observe, replicas } => {
            stack::up(config, cli.config.as_deref(), observe, replicas).await
        }
        Command::Gateway { command } => gateway::run(config, command).await,
        Command::Rollout => gateway::rollout(config, cli.config.as_deref()).await,
        Command::Failover { kind: _, index } => stack::failover(config, index).await,
        Command::Drill {
            scenario,
            shard,
            rate,
            before,
            after,
            replication,
            failover_after_ms,
            down,
            json,
            keep,
        } => {
            use tributary_bench::drill;
            let options = drill::Options {
                scenario: match scenario {
                    DrillScenario::ShardKill => drill::Scenario::ShardKill,
                    DrillScenario::ShardFreeze => drill::Scenario::ShardFreeze,
                    DrillScenario::BrokerKill => drill::Scenario::BrokerKill,
                    DrillScenario::LakeLost => drill::Scenario::LakeLost,
                    DrillScenario::ShardLost => drill::Scenario::ShardLost,
                },
                exe: std::env::current_exe()?,
                shard,
                rate,
                before: parse_duration(&before)?,
                after: parse_duration(&after)?,
                replication: match replication {
                    DrillReplication::Sync => config::Replication::Sync,
                    DrillReplication::Async => config::Replication::Async,
                },
                failover_after_ms,
                down: parse_duration(&down)?,
                keep,
            };
            let report = drill::run(&config, &options).await?;
            if json {
                print_json(&report, "report")?;
            } else {
                print!("{}", drill::render(&report));
            }
            anyhow::ensure!(report.ok(), "the drill missed a goal (see the table)");
            Ok(())
        }
        Command::Backup {
            cluster,
            list,
            keep,
            prune_only,
        } => stack::backup(&config, &cluster, list, keep, prune_only).await,
        Command::Restore { cluster, to, lost } => match to {
            Some(to) if !lost => stack::restore(&config, &cluster, &to).await,
            _ => stack::rebuild(&config, &cluster).await,
        },
        Command::Ha { command } => match command {
            HaCommand::Run => stack::ha_run(config).await,
        },
        Command::Down { purge } => stack::down(&config, purge),
        Command::Status { json } => stack::status(config, json).await,
        Command::Oltp { command } => oltp::run(config, command).await,
        Command::Load {
            rate,
            duration,
            url,
            concurrency,
            seed,
        } => oltp::load(&config, rate, &duration, url, concurrency, seed).await,
        Command::Cdc { command } => cdc::run(config, command).await,
        Command::Lake { command } => lake::run(config, command).await,
        Command::Etl { command } => etl::run(config, command).await,
        Command::Sql {
            command,
            execute,
            format,
            output,
        } => sql::run(config, command, execute, format, output).await,
        Command::Wait { timeout } => pipeline::wait(config, &timeout).await,
        Command::Verify => pipeline::verify(config).await,
        Command::Workflows { jobs, command } => workflows::run(config, jobs, command).await,
        Command::Fraud { command } => fraud::run(config, command).await,
        Command::Activity { command } => activity::run(config, command).await,
        Command::Bench { command } => bench::run(config, command).await,
        Command::Probe { url } => probe(&url).await,
        Command::Trace { order_id } => trace::run(config, order_id).await,
        Command::Ui { listen, jobs } => ui::run(config, listen, jobs).await,
        Command::Top { every, once } => top::run(config, parse_duration(&every)?, once).await,
        Command::Capacity {
            orders_per_sec,
            days,
            peak_factor,
            utilization,
            queries_per_sec,
            kafka_retention_days,
            rates,
            json,
        } => {
            use tributary_bench::capacity::{Load, Rates, plan};
            let rates = match rates {
                Some(path) => Rates::load(&path)?,
                None => Rates::shipped()?,
            };
            let plan = plan(
                &Load {
                    orders_per_sec,
                    days,
                    peak_factor,
                    utilization,
                    queries_per_sec,
                    kafka_retention_days,
                },
                &rates,
            )?;
            if json {
                print_json(&plan, "plan")
            } else {
                print!("{plan}");
                Ok(())
            }
        }
        Command::Demo { duration, rate } => {
            tributary::demo::run(config, parse_duration(&duration)?, rate).await
        }
    }
}

/// Serves `/metrics` and `/healthz` on `listen`, when given, until
/// `shutdown`; says where on stderr, and announces the address to the
/// local stack's Prometheus as the job `tributary-<job>` for as long as the
/// returned guard lives (`tributary_stack::observe`).
async fn serve_metrics(
    config: &tributary_stack::Config,
    job: &str,
    listen: Option<String>,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Option<tributary_stack::observe::Announcement>> {
    let Some(listen) = listen else {
        return Ok(None);
    };
    let addr = tributary_metrics::serve(&listen, shutdown.clone()).await?;
    eprintln!("metrics on http://{addr}/metrics");
    Ok(Some(tributary_stack::observe::announce(
        &config.state_dir,
        job,
        addr,
    )?))
}

/// `tributary probe URL`.
async fn probe(url: &str) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build()?;
    let r = client
        .get(url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    anyhow::ensure!(r.status().is_success(), "{url} answered {}", r.status());
    Ok(())
}

/// Prints `value` as pretty JSON.
fn print_json(value: &impl serde::Serialize, what: &str) -> Result<()> {
    use anyhow::Context;
    println!(
        "{}",
        serde_json::to_string_pretty(value).with_context(|| format!("{what} as JSON"))?
    );
    Ok(())
}
