//! Maintenance of small tables in a temporary folder, beside writers that
//! race it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::SessionContext;
use deltalake::protocol::SaveMode;

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::time::Duration;

use deltalake::{DeltaTable, DeltaTableError};
use tributary_model::error_chain;

use super::lock::CompactionLock;
use super::operations::{conflicted, open_existing, with_retries};
use super::*;
use crate::fixtures::new_lake;
use crate::store::query_table;
use crate::{Error, Lake, Result};

fn batch(ids: std::ops::Range<i64>, v: &str) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("v", DataType::Utf8, true),
        Field::new("date", DataType::Utf8, true),
    ]));
    let n = ids.clone().count();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(ids.clone())),
            Arc::new(StringArray::from(vec![v; n])),
            Arc::new(StringArray::from_iter_values(
                ids.map(|i| format!("2026-01-0{}", 1 + i % 3)),
            )),
        ],
    )
    .unwrap()
}

async fn append(lake: &Lake, layer: &str, table: &str, b: RecordBatch, partitioned: bool) {
    let t = match lake.open(layer, table).await.unwrap() {
        Some(t) => t,
        None => lake.table_handle(layer, table).await.unwrap(),
    };
    let mut w = t.write(vec![b]).with_save_mode(SaveMode::Append);
    if partitioned {
        w = w.with_partition_columns(["date".to_string()]);
    }
    w.await.unwrap();
}

/// Upserts rows by id: the silver pattern.
async fn merge(lake: &Lake, table: &str, b: RecordBatch) -> Result<()> {
    let t = open_existing(lake, "silver", table).await?;
    merge_into(t, table, b).await
}

async fn merge_into(t: DeltaTable, table: &str, b: RecordBatch) -> Result<()> {
    let name = format!("silver.{table}");
    let source = SessionContext::new().read_batch(b).unwrap();
    let delta_err = |source| Error::Delta {
        table: name.clone(),
        source,
    };
    t.merge(source, "target.id = source.id")
        .with_source_alias("source")
        .with_target_alias("target")
        .when_matched_update(|u| u.update("v", "source.v"))
        .and_then(|m| {
            m.when_not_matched_insert(|i| {
                i.set("id", "source.id")
                    .set("v", "source.v")
                    .set("date", "source.date")
            })
        })
        .map_err(delta_err)?
        .await
        .map_err(delta_err)?;
    Ok(())
}

/// Every row, sorted, as text.
async fn contents(lake: &Lake, layer: &str, table: &str) -> Vec<String> {
    let t = lake.open(layer, table).await.unwrap().unwrap();
    let batches = query_table(&t, table, "SELECT id, v, date FROM t ORDER BY id, v")
        .await
        .unwrap();
    let mut out = vec![];
    for b in batches {
        let text = arrow::util::pretty::pretty_format_batches(&[b])
            .unwrap()
            .to_string();
        out.extend(
            text.lines()
                .filter(|l| l.starts_with("| "))
                .skip(1)
                .map(str::to_string),
        );
    }
    out
}

fn small() -> OptimizeOptions {
    OptimizeOptions {
        target_size: 1 << 20,
        ..OptimizeOptions::default()
    }
}

/// `files` appends of ten rows each (ids from 0 on) to `layer.t`; bronze's
/// are partitioned by date.
async fn small_files(lake: &Lake, layer: &str, files: i64, v: &str) {
    for i in 0..files {
        append(
            lake,
            layer,
            "t",
            batch(i * 10..i * 10 + 10, v),
            layer == "bronze",
        )
        .await;
    }
}

#[tokio::test]
async fn optimize_compacts_small_files_and_keeps_every_row() {
    let (_dir, lake) = new_lake();
    small_files(&lake, "bronze", 12, "x").await;
    small_files(&lake, "silver", 12, "y").await;
    for layer in ["bronze", "silver"] {
        let before = contents(&lake, layer, "t").await;
        assert_eq!(before.len(), 120);
        let r = optimize(&lake, layer, "t", &small()).await.unwrap();
        // Bronze is partitioned by date: each append wrote one file for
        // each of 3 days, and compaction leaves one per day.
        let (files, expect) = if layer == "bronze" { (36, 3) } else { (12, 1) };
        assert_eq!(r.files_before, files, "{r}");
        assert_eq!(r.files_after, expect, "{r}");
        assert_eq!(r.files_removed as usize, files, "{r}");
        assert_eq!(r.files_added as usize, expect, "{r}");
        assert_eq!(r.attempts, 1);
        assert_eq!(
            contents(&lake, layer, "t").await,
            before,
            "{layer} rows changed"
        );
        // Nothing left to compact: no commit.
        let v = lake.open(layer, "t").await.unwrap().unwrap().version();
        let again = optimize(&lake, layer, "t", &small()).await.unwrap();
        assert_eq!((again.files_removed, again.files_added), (0, 0));
        assert_eq!(lake.open(layer, "t").await.unwrap().unwrap().version(), v);
    }
}

#[tokio::test]
async fn zorder_rewrites_and_keeps_every_row() {
    let (_dir, lake) = new_lake();
    small_files(&lake, "silver", 6, "y").await;
    let before = contents(&lake, "silver", "t").await;
    let options = OptimizeOptions {
        zorder: vec!["id".into(), "v".into()],
        ..small()
    };
    let r = optimize(&lake, "silver", "t", &options).await.unwrap();
    assert_eq!((r.files_before, r.files_after), (6, 1), "{r}");
    assert_eq!(contents(&lake, "silver", "t").await, before);
    let bad = OptimizeOptions {
        zorder: vec!["nope".into()],
        ..small()
    };
    let err = error_chain(&optimize(&lake, "silver", "t", &bad).await.unwrap_err());
    assert!(err.contains("nope"), "{err}");
}

fn data_files(dir: &std::path::Path) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if !p.ends_with("_delta_log") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn vacuum_deletes_only_unreferenced_files_past_retention() {
    let (dir, lake) = new_lake();
    small_files(&lake, "bronze", 5, "x").await;
    let table_dir = dir.path().join("bronze/t");
    let before = contents(&lake, "bronze", "t").await;
    optimize(&lake, "bronze", "t", &small()).await.unwrap();
    assert_eq!(data_files(&table_dir).len(), 15 + 3);

    // Below the minimum without --force: refused, naming the option.
    let short = VacuumOptions {
        retention_hours: 0,
        ..VacuumOptions::default()
    };
    let err = vacuum(&lake, "bronze", "t", &short).await.unwrap_err();
    assert!(matches!(err, Error::RetentionTooShort { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("--force") && msg.contains("bronze.t") && msg.contains("168"),
        "{msg}"
    );

    // The default retention keeps the files just replaced.
    let r = vacuum(&lake, "bronze", "t", &VacuumOptions::default())
        .await
        .unwrap();
    assert!(r.files.is_empty(), "{r}");
    // A forced one-hour retention too: they left the table seconds ago.
    let hour = VacuumOptions {
        retention_hours: 1,
        force: true,
        ..VacuumOptions::default()
    };
    assert!(
        vacuum(&lake, "bronze", "t", &hour)
            .await
            .unwrap()
            .files
            .is_empty()
    );

    // A dry run lists them and deletes nothing.
    let dry = VacuumOptions {
        dry_run: true,
        force: true,
        ..short.clone()
    };
    let r = vacuum(&lake, "bronze", "t", &dry).await.unwrap();
    assert_eq!(r.files.len(), 15, "{r}");
    assert_eq!(data_files(&table_dir).len(), 18);

    let forced = VacuumOptions {
        force: true,
        ..short
    };
    let r = vacuum(&lake, "bronze", "t", &forced).await.unwrap();
    assert_eq!(r.files.len(), 15, "{r}");
    let left = data_files(&table_dir);
    assert_eq!(left.len(), 3, "{left:?}");
    // What is left is exactly what the table references.
    let t = lake.open("bronze", "t").await.unwrap().unwrap();
    let mut referenced: Vec<String> = t
        .snapshot()
        .unwrap()
        .log_data()
        .iter()
        .map(|f| percent_decode(&f.path()))
        .collect();
    referenced.sort();
    assert_eq!(left, referenced);
    assert_eq!(contents(&lake, "bronze", "t").await, before);
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match (b[i], s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16))) {
            (b'%', Some(Ok(v))) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn checkpoint_appears_and_the_table_loads_from_it() {
    let (dir, lake) = new_lake();
    small_files(&lake, "silver", 7, "y").await;
    let before = contents(&lake, "silver", "t").await;
    let r = checkpoint(&lake, "silver", "t", false).await.unwrap();
    assert_eq!(r.version, 6, "{r}");
    let log = dir.path().join("silver/t/_delta_log");
    assert!(
        log.join("00000000000000000006.checkpoint.parquet").exists(),
        "{:?}",
        std::fs::read_dir(&log).unwrap().collect::<Vec<_>>()
    );
    let last: serde_json::Value =
        serde_json::from_slice(&std::fs::read(log.join("_last_checkpoint")).unwrap()).unwrap();
    assert_eq!(last["version"], 6);
    // Without the JSON commits it replaced, the table still loads, from
    // the checkpoint.
    for v in 0..=6 {
        std::fs::remove_file(log.join(format!("{v:020}.json"))).unwrap();
    }
    let t = lake.open("silver", "t").await.unwrap().unwrap();
    assert_eq!(t.version(), Some(6));
    assert_eq!(contents(&lake, "silver", "t").await, before);
    // Cleaning expired logs keeps everything younger than 30 days.
    let r = checkpoint(&lake, "silver", "t", true).await.unwrap();
    assert_eq!(r.logs_cleaned, 0, "{r}");
}

#[tokio::test]
async fn a_missing_table_is_named() {
    let (_dir, lake) = new_lake();
    let err = optimize(&lake, "silver", "nope", &small())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "table silver.nope does not exist");
    let err = checkpoint(&lake, "gold", "nope", false).await.unwrap_err();
    assert_eq!(err.to_string(), "table gold.nope does not exist");
}

/// A writer that read the table before a compaction committed must not
/// commit on top of it (the files it rewrites are gone, their rows live
/// on in the compacted file): delta-rs 1.1.3 rejects it as a conflict,
/// which ingest treats as transient and redoes from the lake's offsets.
#[tokio::test]
async fn a_merge_that_read_the_table_before_a_compaction_conflicts() {
    let (_dir, lake) = new_lake();
    small_files(&lake, "silver", 4, "old").await;
    let stale = lake.open("silver", "t").await.unwrap().unwrap();
    optimize(&lake, "silver", "t", &small()).await.unwrap();
    let err = merge_into(stale, "t", batch(5..6, "new"))
        .await
        .unwrap_err();
    assert!(conflicted(&err) && err.is_transient(), "{err:?}");
    merge(&lake, "t", batch(5..6, "new")).await.unwrap();
    let rows = contents(&lake, "silver", "t").await;
    assert_eq!(rows.len(), 40);
    let five: Vec<&String> = rows.iter().filter(|r| r.starts_with("| 5 ")).collect();
    assert!(five.len() == 1 && five[0].contains("new"), "{five:?}");
}

/// Pins why compactions take [`CompactionLock`]: delta-rs 1.1.3 lets two
/// compactions of the same files both commit, doubling their rows.
#[tokio::test]
async fn two_unlocked_compactions_of_the_same_files_double_rows() {
    let (_dir, lake) = new_lake();
    small_files(&lake, "silver", 4, "x").await;
    let target = NonZeroU64::new(1 << 20).unwrap();
    let a = lake.open("silver", "t").await.unwrap().unwrap();
    let b = lake.open("silver", "t").await.unwrap().unwrap();
    a.optimize().with_target_size(target).await.unwrap();
    b.optimize().with_target_size(target).await.unwrap();
    assert_eq!(
        contents(&lake, "silver", "t").await.len(),
        80,
        "if delta-rs now rejects the second compaction, CompactionLock may go"
    );
}

#[tokio::test]
async fn a_second_compaction_waits_for_the_lock_or_is_told_busy() {
    let (_dir, lake) = new_lake();
    small_files(&lake, "silver", 4, "x").await;
    let t = lake.open("silver", "t").await.unwrap().unwrap();
    let held = CompactionLock::acquire(&lake, &t, "silver.t", Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    let now = OptimizeOptions {
        lock_wait: Duration::ZERO,
        ..small()
    };
    let err = optimize(&lake, "silver", "t", &now).await.unwrap_err();
    assert!(matches!(err, Error::CompactionBusy(_)), "{err}");
    held.release().await;
    let r = optimize(&lake, "silver", "t", &now).await.unwrap();
    assert_eq!((r.files_before, r.files_after), (4, 1));
    // Released again: the next one gets it at once.
    optimize(&lake, "silver", "t", &now).await.unwrap();
    assert_eq!(contents(&lake, "silver", "t").await.len(), 40);
}

/// A compaction that loses the race with a MERGE is redone on the new
/// version and commits.
#[tokio::test]
async fn a_compaction_that_loses_a_race_is_redone() {
    let (_dir, lake) = new_lake();
    small_files(&lake, "silver", 4, "old").await;
    let mut first = true;
    let (metrics, attempts) = with_retries("silver.t", "optimize", 3, || {
        let lake = lake.clone();
        let race = std::mem::take(&mut first);
        async move {
            let t = open_existing(&lake, "silver", "t").await?;
            if race {
                // A writer rewrites a file after the compaction read the table.
                merge(&lake, "t", batch(5..6, "new")).await?;
            }
            let (_, m) = t
                .optimize()
                .with_target_size(NonZeroU64::new(1 << 20).unwrap())
                .await
                .map_err(|source| Error::Delta {
                    table: "silver.t".into(),
                    source,
                })?;
            Ok(m)
        }
    })
    .await
    .unwrap();
    assert_eq!(attempts, 2);
    assert!(metrics.num_files_removed >= 4, "{metrics:?}");
    let rows = contents(&lake, "silver", "t").await;
    assert_eq!(rows.len(), 40);
    assert_eq!(rows.iter().filter(|r| r.contains("new")).count(), 1);
    let t = lake.open("silver", "t").await.unwrap().unwrap();
    assert_eq!(file_stats(&t, "silver.t").unwrap().0, 1);
    // Giving up says so, with the attempts.
    let err = with_retries("silver.t", "optimize", 2, || async {
        Err::<(), _>(Error::Delta {
            table: "silver.t".into(),
            source: DeltaTableError::VersionAlreadyExists(1),
        })
    })
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("lost the race with other writers 2 times"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_beside_a_live_writer_loses_nothing() {
    let (_dir, lake) = new_lake();
    const COMMITS: i64 = 60;
    const ROWS: i64 = 5;
    append(&lake, "bronze", "t", batch(0..ROWS, "x"), true).await;
    append(&lake, "silver", "t", batch(0..ROWS, "v0"), false).await;
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let lake = lake.clone();
        let done = done.clone();
        // A runtime of its own: a writer in another process, in effect.
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(async move {
                    let mut redone = 0u32;
                    let mut expected: BTreeMap<i64, String> =
                        (0..ROWS).map(|id| (id, "v0".to_string())).collect();
                    for i in 1..COMMITS {
                        append(
                            &lake,
                            "bronze",
                            "t",
                            batch(i * ROWS..(i + 1) * ROWS, "x"),
                            true,
                        )
                        .await;
                        // New rows, and a new value for a row of the commit
                        // before (as orders change status soon after they are
                        // placed): the merge rewrites a file compaction wants too.
                        let old = i * ROWS - 1;
                        let b = arrow::compute::concat_batches(
                            &batch(0..0, "").schema(),
                            &[
                                batch(i * ROWS..(i + 1) * ROWS, &format!("v{i}")),
                                batch(old..old + 1, &format!("v{i}")),
                            ],
                        )
                        .unwrap();
                        for id in (i * ROWS..(i + 1) * ROWS).chain([old]) {
                            expected.insert(id, format!("v{i}"));
                        }
                        loop {
                            match merge(&lake, "t", b.clone()).await {
                                Ok(()) => break,
                                Err(e) if e.is_transient() => redone += 1,
                                Err(e) => panic!("{}", error_chain(&e)),
                            }
                        }
                    }
                    done.store(true, Ordering::SeqCst);
                    (redone, expected)
                })
        })
    };
    let attempts = Arc::new(AtomicU32::new(0));
    let (mut runs, mut committed) = (0, 0);
    let options = OptimizeOptions {
        max_attempts: 50,
        ..small()
    };
    while !done.load(Ordering::SeqCst) {
        for layer in ["bronze", "silver"] {
            let r = optimize(&lake, layer, "t", &options).await.unwrap();
            attempts.fetch_add(r.attempts - 1, Ordering::SeqCst);
            runs += 1;
            committed += usize::from(r.files_removed > 0);
        }
    }
    let (writer_redone, expected) = writer.join().unwrap();
    let bronze = contents(&lake, "bronze", "t").await;
    assert_eq!(
        bronze.len() as i64,
        COMMITS * ROWS,
        "bronze lost or doubled rows"
    );
    let silver = contents(&lake, "silver", "t").await;
    assert_eq!(
        silver.len() as i64,
        COMMITS * ROWS,
        "silver lost or doubled rows"
    );
    for (row, (id, v)) in silver.iter().zip(&expected) {
        assert!(
            row.starts_with(&format!("| {id} ")) && row.contains(&format!(" {v} ")),
            "{row} should be {id} {v}"
        );
    }
    eprintln!(
        "{runs} compactions ({committed} committed), {} redone after a lost race; writer redid {writer_redone}",
        attempts.load(Ordering::SeqCst)
    );
}
