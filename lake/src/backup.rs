//! Lake backup and restore.
//!
//! A backup is every Delta table of the lake (bronze, silver, gold) copied
//! at one version per table, recorded in `backup.json` at the backup's
//! root: the log entries up to that version (commits, checkpoints,
//! `_last_checkpoint` when it names one of them) and the table's data
//! files. Data files written after that version are copied too when they
//! are already there; no log entry names them, so they are invisible and
//! the next vacuum removes them. Each table is consistent on its own, and
//! that is the consistency the lake needs: bronze and silver record in
//! each commit the Kafka offsets they consumed, so a restored lake resumes
//! from exactly its own state (ingest reads the offsets from the restored
//! commits), and gold is rebuilt from silver by the marts' next round.
//!
//! A restore copies a backup into a lake root that has no tables (a new
//! root, or the root of a lake that was lost) and drops the commit
//! coordinator's claims above each restored version, so writers continue
//! from the restored versions.
//!
//! Both sides are any `object_store` URL (a local folder, `s3://`), with
//! the lake's storage options.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::store::Lake;
use crate::{Error, Result};

/// The layers a backup copies.
pub const LAYERS: [&str; 3] = ["bronze", "silver", "gold"];

/// One table in a backup.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TableCopy {
    pub layer: String,
    pub table: String,
    pub version: i64,
    pub files: usize,
    pub bytes: u64,
}

/// `backup.json`: what a backup holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// When the backup started (RFC 3339, UTC).
    pub taken_at: String,
    /// The lake it was taken from.
    pub source_root: String,
    pub tables: Vec<TableCopy>,
}

const MANIFEST: &str = "backup.json";

/// A URL or a local path, as a URL.
pub fn parse_location(s: &str) -> Result<Url> {
    if let Ok(u) = Url::parse(s)
        && u.scheme().len() > 1
    {
        return Ok(u);
    }
    let abs =
        std::path::absolute(s).map_err(|e| Error::Config(format!("backup location {s}: {e}")))?;
    std::fs::create_dir_all(&abs)
        .map_err(|e| Error::Config(format!("creating {}: {e}", abs.display())))?;
    Url::from_directory_path(&abs)
        .map_err(|()| Error::Config(format!("backup location {s}: not a usable path")))
}

fn open_store(lake: &Lake, url: &Url) -> Result<(Arc<dyn ObjectStore>, Path)> {
    let (store, path) = object_store::parse_url_opts(url, lake.storage_options().iter())
        .map_err(|e| Error::ObjectStore(url.to_string(), e))?;
    Ok((Arc::from(store), path))
}

fn join(base: &Path, rest: &str) -> Path {
    let b = base.as_ref().trim_end_matches('/');
    if b.is_empty() {
        Path::from(rest)
    } else {
        Path::from(format!("{b}/{rest}"))
    }
}

/// The log version a `_delta_log` file belongs to (`None` for files that
/// are not versioned, such as `_last_checkpoint` or temporary claims).
fn log_version(name: &str) -> Option<i64> {
    let digits: String = name.chars().take_while(char::is_ascii_digit).collect();
    (digits.len() == 20).then(|| digits.parse().ok()).flatten()
}

/// Copies every object under `from` (in `src`) whose path relative to it
/// `keep` accepts, to the same relative path under `to` (in `dst`).
/// Returns (objects, bytes).
async fn copy_tree(
    src: &dyn ObjectStore,
    from: &Path,
    dst: &dyn ObjectStore,
    to: &Path,
    keep: impl Fn(&str) -> bool,
) -> Result<(usize, u64)> {
    let objects: Vec<_> = src
        .list(Some(from))
        .try_collect()
        .await
        .map_err(|e| Error::ObjectStore(from.to_string(), e))?;
    let prefix = format!("{}/", from.as_ref().trim_end_matches('/'));
    let (mut n, mut bytes) = (0, 0);
    for o in objects {
        let Some(rel) = o.location.as_ref().strip_prefix(&prefix) else {
            continue;
        };
        if !keep(rel) {
            continue;
        }
        let data = src
            .get(&o.location)
            .await
            .map_err(|e| Error::ObjectStore(o.location.to_string(), e))?
            .bytes()
            .await
            .map_err(|e| Error::ObjectStore(o.location.to_string(), e))?;
        bytes += data.len() as u64;
        let target = join(to, rel);
        dst.put(&target, data.into())
            .await
            .map_err(|e| Error::ObjectStore(target.to_string(), e))?;
        n += 1;
    }
    Ok((n, bytes))
}

/// Which relative paths of a table belong to its copy at `version`.
fn at_version(last_checkpoint: Option<i64>, version: i64) -> impl Fn(&str) -> bool {
    move |rel: &str| match rel.strip_prefix("_delta_log/") {
        None => true,
        Some("_last_checkpoint") => last_checkpoint.is_some_and(|v| v <= version),
        Some(name) => log_version(name).is_some_and(|v| v <= version),
    }
}

async fn last_checkpoint(store: &dyn ObjectStore, table: &Path) -> Option<i64> {
    let bytes = store
        .get(&join(table, "_delta_log/_last_checkpoint"))
        .await
        .ok()?
        .bytes()
        .await
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("version")?
        .as_i64()
}

/// Copies every table of `lake` into `into` at its current version.
pub async fn backup(lake: &Lake, into: &str) -> Result<Manifest> {
    let taken_at = chrono::Utc::now().to_rfc3339();
    let url = parse_location(into)?;
    let (dst, dst_base) = open_store(lake, &url)?;
    let (src, src_base) = open_store(lake, lake.root())?;
    let mut tables = Vec::new();
    for layer in LAYERS {
        for table in lake.list_tables(layer).await? {
            let Some(t) = lake.open(layer, &table).await? else {
                continue;
            };
            let version = t.version().map_or(-1, |v| v as i64);
            let rel = format!("{layer}/{table}");
            let from = join(&src_base, &rel);
            let lc = last_checkpoint(src.as_ref(), &from).await;
            let (files, bytes) = copy_tree(
                src.as_ref(),
                &from,
                dst.as_ref(),
                &join(&dst_base, &rel),
                at_version(lc, version),
            )
            .await?;
            tracing::info!(layer, table = %table, version, files, bytes, "table backed up");
            tables.push(TableCopy {
                layer: layer.into(),
                table,
                version,
                files,
                bytes,
            });
        }
    }
    let manifest = Manifest {
        taken_at,
        source_root: lake.root().to_string(),
        tables,
    };
    let text = serde_json::to_vec_pretty(&manifest).expect("serializable");
    let path = join(&dst_base, MANIFEST);
    dst.put(&path, text.into())
        .await
        .map_err(|e| Error::ObjectStore(path.to_string(), e))?;
    Ok(manifest)
}

/// Copies the backup at `from` into `lake`'s root, which must hold no
/// table, and drops the coordinator's claims above each restored version
/// (and those of tables made after the backup).
pub async fn restore(lake: &Lake, from: &str) -> Result<Manifest> {
    let url = parse_location(from)?;
    let (src, src_base) = open_store(lake, &url)?;
    let path = join(&src_base, MANIFEST);
    let manifest: Manifest = serde_json::from_slice(
        &src.get(&path)
            .await
            .map_err(|e| Error::ObjectStore(path.to_string(), e))?
            .bytes()
            .await
            .map_err(|e| Error::ObjectStore(path.to_string(), e))?,
    )
    .map_err(|e| Error::Config(format!("{path} is not a lake backup manifest: {e}")))?;
    for layer in LAYERS {
        let existing = lake.list_tables(layer).await?;
        if !existing.is_empty() {
            return Err(Error::Config(format!(
                "the lake at {} already has tables ({layer}: {}); restore into an empty root",
                lake.root(),
                existing.join(", ")
            )));
        }
    }
    let (dst, dst_base) = open_store(lake, lake.root())?;
    for t in &manifest.tables {
        let rel = format!("{}/{}", t.layer, t.table);
        copy_tree(
            src.as_ref(),
            &join(&src_base, &rel),
            dst.as_ref(),
            &join(&dst_base, &rel),
            |_| true,
        )
        .await?;
    }
    if let Some(c) = lake.coordinator().await? {
        let restored: Vec<(String, i64)> = manifest
            .tables
            .iter()
            .map(|t| (lake.table_url(&t.layer, &t.table).to_string(), t.version))
            .collect();
        let dropped = c
            .forget_after_restore(lake.root().as_str(), &restored)
            .await?;
        tracing::info!(
            dropped,
            "dropped the coordinator's claims above the restored versions"
        );
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_at_a_version_keeps_data_and_the_log_up_to_it() {
        let keep = at_version(Some(10), 12);
        assert!(keep("part-0001.parquet"));
        assert!(keep("shard=1/part-0002.parquet"));
        assert!(keep("_delta_log/00000000000000000012.json"));
        assert!(!keep("_delta_log/00000000000000000013.json"));
        assert!(keep("_delta_log/00000000000000000010.checkpoint.parquet"));
        assert!(keep("_delta_log/_last_checkpoint"));
        assert!(!keep("_delta_log/_commit_1234.json.tmp"));
        let newer = at_version(Some(14), 12);
        assert!(!newer("_delta_log/_last_checkpoint"));
        assert_eq!(log_version("00000000000000000007.crc"), Some(7));
        assert_eq!(log_version("7.json"), None);
    }
}
