//! `tributary bench …`: the benchmarks of `tributary_bench`; this module
//! only turns flags into their options and prints their reports.

use anyhow::{Context, Result};
use tributary::parse_duration;
use tributary_bench::{cdc, compaction, fraud, lake, profile, ssb};
use tributary_stack::Config;

use super::print_json;
use crate::args::{BenchCommand, BenchSink};

pub async fn run(config: Config, command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Cdc {
            rows,
            runs,
            json,
            recvlogical_output,
            no_broker_ceiling,
            sink,
        } => {
            let options = cdc::Options {
                rows,
                runs,
                recvlogical_output,
                broker_ceiling: !no_broker_ceiling,
                sinks: cdc::Sinks {
                    kafka: sink != BenchSink::Null,
                    discard: sink != BenchSink::Kafka,
                },
            };
            let report = cdc::run(&config, &options).await?;
            if json {
                print_json(&report, "report")?;
            } else {
                print!("{report}");
            }
        }
        BenchCommand::Lake {
            rate,
            duration,
            json,
            keep,
            gold,
            rates,
        } => {
            let options = lake::Options {
                rate,
                duration: parse_duration(&duration)?,
                keep,
                gold,
                ..lake::Options::new(std::env::current_exe().context("finding this binary")?)
            };
            let report = lake::run(&config, &options).await?;
            if json {
                print_json(&report, "report")?;
            } else {
                print!("{report}");
            }
            if let Some(path) = rates {
                let source = format!(
                    "tributary bench lake --rate {rate} --duration {duration}, {} build, {} cores, load average {} / {}, {}",
                    report.profile,
                    report.cores,
                    report.load_average.0,
                    report.load_average.1,
                    chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
                );
                let measured = report
                    .pipeline_rates(source)
                    .context("this run lacks a process's CPU time or the reader's bytes")?;
                tributary_bench::capacity::Rates::record_pipeline(&path, measured)?;
                eprintln!("recorded the pipeline's rates in {}", path.display());
            }
        }
        BenchCommand::Fraud {
            rate,
            duration,
            fraud_rate,
            kills,
            idle,
            memory_customers,
            seed,
            json,
            keep,
        } => {
            let options = fraud::Options {
                rate,
                duration: parse_duration(&duration)?,
                fraud_rate,
                kills,
                idle: parse_duration(&idle)?,
                memory_customers,
                seed,
                keep,
                ..fraud::Options::new(std::env::current_exe().context("finding this binary")?)
            };
            let report = fraud::run(&config, &options).await?;
            if json {
                print_json(&report, "report")?;
            } else {
                print!("{report}");
            }
            anyhow::ensure!(
                report.consistent(),
                "the detector's alerts differ from the batch oracle's or an alert id is doubled"
            );
        }
        BenchCommand::Query {
            scale,
            runs,
            dir,
            skip_datafusion,
            skip_duckdb,
            skip_postgres,
            rates,
        } => {
            let dir = dir.unwrap_or_else(|| config.state_dir.join("bench").join("ssb"));
            let options = ssb::Options {
                scale,
                runs,
                datafusion: !skip_datafusion,
                duckdb: !skip_duckdb,
                postgres: !skip_postgres,
                ..ssb::Options::new(dir)
            };
            let report = ssb::run(&options).await?;
            print!("{report}");
            anyhow::ensure!(report.answers_agree(), "the engines gave different answers");
            if let Some(path) = rates {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                let query = tributary_bench::capacity::QueryRates {
                    source: format!(
                        "tributary bench query --scale {scale} --runs {runs}, {} build, {cores} cores, load average {}, {}",
                        if cfg!(debug_assertions) {
                            "debug"
                        } else {
                            "optimised"
                        },
                        tributary_bench::process::load_average(),
                        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
                    ),
                    core_seconds_per_query: (report.core_seconds_per_query() * 1000.0).round()
                        / 1000.0,
                };
                tributary_bench::capacity::Rates::record_query(&path, query)?;
                eprintln!("recorded the query rate in {}", path.display());
            }
        }
        BenchCommand::Optimize {
            commits,
            inserts,
            updates,
            runs,
            target_size,
            dir,
        } => {
            let dir = dir.unwrap_or_else(|| config.state_dir.join("bench").join("optimize"));
            let options = compaction::Options {
                commits,
                inserts,
                updates,
                runs,
                target_size,
                ..compaction::Options::new(dir)
            };
            let report = compaction::run(&options).await?;
            print!("{report}");
        }
        BenchCommand::Profile {
            orders,
            customers,
            files,
            runs,
            dir,
        } => {
            let dir = dir.unwrap_or_else(|| config.state_dir.join("bench").join("profile"));
            let options = profile::Options {
                orders,
                customers,
                files,
                runs,
                ..profile::Options::new(dir)
            };
            let report = profile::run(&options).await?;
            print!("{report}");
            anyhow::ensure!(
                report.mismatches == 0,
                "the engines gave different profiles"
            );
        }
        BenchCommand::Workflows {
            jobs,
            speed,
            hours,
            tick,
            short_jobs,
            kills,
            keep,
        } => {
            let options = tributary_bench::workflows::Options {
                jobs,
                speed,
                hours,
                tick: parse_duration(&tick)?,
                short_jobs,
                kills,
                keep,
                ..tributary_bench::workflows::Options::new(
                    std::env::current_exe().context("finding this binary")?,
                )
            };
            let report = tributary_bench::workflows::run(&config, &options).await?;
            print!("{report}");
            anyhow::ensure!(report.ok(), "a run was doubled, lost or left unfinished");
        }
        BenchCommand::Cache {
            products,
            requests,
            concurrency,
            zipf,
            changes_per_s,
            keep,
        } => {
            let options = tributary_bench::cache::Options {
                products,
                requests,
                concurrency,
                zipf,
                changes_per_s,
                keep,
                ..Default::default()
            };
            let report = tributary_bench::cache::run(&config, &options).await?;
            print!("{report}");
            anyhow::ensure!(
                report.ok(),
                "a read was stale or the invalidation lag p99 exceeded 500 ms"
            );
        }
        BenchCommand::Gateway {
            replicas,
            rate,
            duration,
            curve,
            threads,
            json,
            keep,
        } => {
            let curve_rates = curve
                .split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(|r| {
                    r.parse::<f64>()
                        .with_context(|| format!("--curve: {r:?} is not a rate"))
                })
                .collect::<Result<Vec<_>>>()?;
            let options = tributary_bench::gateway::Options {
                replicas,
                rate,
                duration: parse_duration(&duration)?,
                curve_rates,
                threads,
                keep,
                exe: std::env::current_exe().context("finding this binary")?,
            };
            let report = tributary_bench::gateway::run(&config, &options).await?;
            if json {
                return print_json(&report, "gateway bench");
            }
            print!("{report}");
        }
    }
    Ok(())
}
