//! `tributary lake …`: ingest, the store check, retype, dead letters and
//! maintenance (optimize, vacuum, checkpoint).

use anyhow::{Context, Result};
use tributary::shutdown_on_signals;
use tributary_lake::Lake;
use tributary_lake::maintenance::{self, OptimizeOptions, VacuumOptions};
use tributary_stack::{Config, Platform};

use super::print_json;
use crate::args::{DlqCommand, LakeCommand, LayerArg};

pub async fn run(config: Config, command: LakeCommand) -> Result<()> {
    let platform = Platform::load(config)?;
    let config = platform.config();
    let m = &config.ingest.maintenance;
    match command {
        LakeCommand::Ingest { metrics } => {
            let kafka = platform.kafka()?.clone();
            let lake = platform.lake()?;
            let shutdown = shutdown_on_signals();
            let _announced =
                super::serve_metrics(platform.config(), "ingest", metrics, &shutdown).await?;
            tributary_lake::ingest::serve(lake, kafka, config.ingest.clone(), shutdown).await?;
        }
        LakeCommand::Backup { into } => {
            let lake = platform.lake()?;
            let m = tributary_lake::backup::backup(&lake, &into).await?;
            let bytes: u64 = m.tables.iter().map(|t| t.bytes).sum();
            for t in &m.tables {
                println!(
                    "{}.{} version {} ({} files)",
                    t.layer, t.table, t.version, t.files
                );
            }
            println!(
                "backed up {} tables ({:.1} MiB) into {into} (taken at {})",
                m.tables.len(),
                bytes as f64 / 1048576.0,
                m.taken_at
            );
        }
        LakeCommand::Restore { from } => {
            let lake = platform.lake()?;
            let m = tributary_lake::backup::restore(&lake, &from).await?;
            println!(
                "restored {} tables from {from} (taken at {} from {}) into {}; the ingester resumes from their offsets",
                m.tables.len(),
                m.taken_at,
                m.source_root,
                lake.root()
            );
            // What the broker's retention deleted since the backup cannot
            // be replayed: those tables come back through a re-snapshot.
            let Ok(kafka) = platform.kafka() else {
                println!(
                    "no broker configured here: not checked whether it still holds what the tables resume from"
                );
                return Ok(());
            };
            let gaps =
                tributary_lake::ingest::retention_gaps(&lake, kafka, &config.ingest.group_id)
                    .await?;
            if gaps.is_empty() {
                println!("the broker holds every change the restored tables resume from");
            }
            let mut tables = std::collections::BTreeSet::new();
            for g in &gaps {
                println!("gap: {g}");
                tables.insert(g.table.clone());
            }
            for table in tables {
                match platform.sources() {
                    Ok(sources) => {
                        tributary_cdc::request_resnapshot(&sources.cdc_sources(), &table, None)
                            .await?;
                        println!("requested a re-snapshot of {table} from the CDC reader");
                    }
                    Err(_) => println!(
                        "no sources configured here: run `tributary cdc resnapshot {table}` where they are"
                    ),
                }
            }
        }
        LakeCommand::CheckStore {
            creators,
            rounds,
            json,
        } => {
            // The check writes plain objects, no Delta commit: it runs on
            // any store, coordinator or not (deciding that is its purpose).
            let mut lake_config = platform.lake_config().clone();
            if let Some(s3) = lake_config.s3.as_mut() {
                s3.trust_put_if_absent = true;
            }
            let lake = Lake::new(&lake_config)?;
            let options = tributary_lake::check::CheckOptions { creators, rounds };
            let report = tributary_lake::check::check_store(&lake, &options).await?;
            if json {
                let mut v = serde_json::to_value(&report).context("report as JSON")?;
                v["verdict"] = report.verdict().into();
                print_json(&v, "report")?;
            } else {
                print!("{report}");
            }
        }
        LakeCommand::Retype {
            table,
            column,
            to,
            drop: _,
        } => {
            let to = to
                .map(|t| {
                    t.parse::<arrow::datatypes::DataType>()
                        .with_context(|| format!("--to {t:?} is not an Arrow type"))
                })
                .transpose()?;
            let lake = platform.lake()?;
            tributary_lake::ingest::retype_silver_column(&lake, &table, &column, to.clone())
                .await
                .with_context(|| format!("rewriting silver.{table}"))?;
            match to {
                Some(t) => {
                    println!("silver.{table}.{column} is now {t}; restart `tributary lake ingest`")
                }
                None => println!(
                    "silver.{table} no longer has {column}; restart `tributary lake ingest`"
                ),
            }
        }
        LakeCommand::Dlq { command } => dead_letters(&platform.lake()?, command).await?,
        LakeCommand::Optimize {
            table,
            layer,
            target_size,
            zorder,
        } => {
            let lake = platform.lake()?;
            let options = OptimizeOptions {
                target_size: target_size.unwrap_or(m.target_file_size),
                zorder,
                max_attempts: m.max_attempts,
                ..Default::default()
            };
            for (layer, table) in lake_targets(&lake, layer, table.as_deref()).await? {
                let r = maintenance::optimize(&lake, &layer, &table, &options)
                    .await
                    .with_context(|| format!("optimizing {layer}.{table}"))?;
                println!("{r}");
            }
        }
        LakeCommand::Vacuum {
            table,
            layer,
            retention_hours,
            dry_run,
            force,
            full,
        } => {
            let lake = platform.lake()?;
            let options = VacuumOptions {
                retention_hours: retention_hours.unwrap_or(m.vacuum_retention_hours),
                dry_run,
                force,
                full,
                max_attempts: m.max_attempts,
            };
            for (layer, table) in lake_targets(&lake, layer, table.as_deref()).await? {
                let r = maintenance::vacuum(&lake, &layer, &table, &options)
                    .await
                    .with_context(|| format!("vacuuming {layer}.{table}"))?;
                println!("{r}");
                if dry_run {
                    for f in &r.files {
                        println!("    {f}");
                    }
                }
            }
        }
        LakeCommand::Checkpoint {
            table,
            layer,
            cleanup_logs,
        } => {
            let lake = platform.lake()?;
            for (layer, table) in lake_targets(&lake, layer, table.as_deref()).await? {
                let r = maintenance::checkpoint(&lake, &layer, &table, cleanup_logs)
                    .await
                    .with_context(|| format!("checkpointing {layer}.{table}"))?;
                println!("{r}");
            }
        }
    }
    Ok(())
}

async fn dead_letters(lake: &Lake, command: DlqCommand) -> Result<()> {
    use tributary_lake::dlq::{self, Selection};
    let known = |table: &Option<String>| -> Result<()> {
        if let Some(t) = table {
            anyhow::ensure!(
                tributary_model::domain::TABLES.iter().any(|s| s.name == t),
                "unknown table {t:?}"
            );
        }
        Ok(())
    };
    match command {
        DlqCommand::List { table, limit, json } => {
            known(&table)?;
            let selection = Selection {
                table,
                position: None,
            };
            let letters = dlq::list(lake, &selection, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
                return Ok(());
            }
            if letters.is_empty() {
                println!("no dead letters");
            }
            for d in &letters {
                println!(
                    "{} {}:{} {:<8} {} {:>7} bytes  {}",
                    d.topic,
                    d.partition,
                    d.offset,
                    d.status,
                    d.failed_at,
                    d.payload_bytes.unwrap_or(0),
                    d.error
                );
            }
        }
        DlqCommand::Replay {
            table,
            offset,
            all,
            json,
        } => {
            known(&table)?;
            anyhow::ensure!(
                all || offset.is_some(),
                "say which dead letters to replay: --all, or --table T --offset PARTITION:OFFSET"
            );
            let position = offset
                .map(|o| -> Result<(i32, i64)> {
                    let (p, o) = o
                        .split_once(':')
                        .context("--offset takes PARTITION:OFFSET, e.g. 0:42")?;
                    Ok((p.trim().parse()?, o.trim().parse()?))
                })
                .transpose()?;
            let report = dlq::replay(lake, &Selection { table, position }).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            for o in &report.outcomes {
                match (o.result, &o.error) {
                    ("failed", Some(e)) => {
                        println!("{} {}:{} still fails: {e}", o.topic, o.partition, o.offset)
                    }
                    _ => println!(
                        "{} {}:{} replayed as {} (silver: {})",
                        o.topic,
                        o.partition,
                        o.offset,
                        o.event_id.as_deref().unwrap_or("?"),
                        o.silver.unwrap_or("?")
                    ),
                }
            }
            println!(
                "{} replayed ({} new in bronze), {} still failing, {} replayed before",
                report.replayed(),
                report.bronze_rows,
                report.failed(),
                report.already_replayed
            );
        }
    }
    Ok(())
}

/// The (layer, table) pairs a maintenance command works on: one table in
/// the chosen layer(s), or every table of them.
async fn lake_targets(
    lake: &Lake,
    layer: LayerArg,
    table: Option<&str>,
) -> Result<Vec<(String, String)>> {
    let layers = layer.layers();
    let mut out = Vec::new();
    for l in layers {
        let tables = lake.list_tables(l).await?;
        match table {
            Some(t) if tables.iter().any(|x| x == t) => out.push((l.to_string(), t.to_string())),
            Some(_) => {}
            None => out.extend(tables.into_iter().map(|t| (l.to_string(), t))),
        }
    }
    if let (Some(t), true) = (table, out.is_empty()) {
        anyhow::bail!(
            "no table {t:?} in {} of the lake at {}",
            layers.join(", "),
            lake.root()
        );
    }
    Ok(out)
}
