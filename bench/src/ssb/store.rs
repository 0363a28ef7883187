//! The SSB tables as Delta tables in a lake of their own under the bench
//! folder (`<dir>/sf<scale>/lake/gold/<table>`), made once per scale and
//! reused by later runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::protocol::SaveMode;
use serde::{Deserialize, Serialize};
use tributary_lake::{Lake, LakeConfig};

use super::generate;
use crate::{Error, Result, io};

/// The layer the SSB tables live in: they are a star schema.
pub(crate) const LAYER: &str = "gold";
/// The table names, facts first.
pub(crate) const TABLES: [&str; 5] = ["lineorder", "customer", "supplier", "part", "dwdate"];
/// Written after the last table, so a half-made data set is made again.
const MARKER: &str = "ssb.json";

/// Rows per Parquet row group: small enough that a date filter on the
/// clustered lineorder skips most of them and two threads get even shares,
/// DuckDB's own default.
const ROW_GROUP_ROWS: usize = 122_880;
/// Changes whenever the generated data or its layout changes, so an older
/// data set is made again rather than benchmarked.
const LAYOUT: &str = "clustered-by-orderdate/row-groups-122880";

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Marker {
    scale: f64,
    lineorder_rows: usize,
    #[serde(default)]
    layout: String,
}

/// The data set ready to query.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) lake: Lake,
    pub(crate) lineorder_rows: usize,
    /// How long generating and writing took; `None` when reused.
    pub(crate) generated_in: Option<Duration>,
}

/// The folder of one scale's data set.
pub(crate) fn scale_dir(dir: &Path, scale: f64) -> PathBuf {
    dir.join(format!("sf{scale}"))
}

/// Opens the data set for `scale` under `dir`, generating it first when it
/// is missing or incomplete.
pub(crate) async fn prepare(dir: &Path, scale: f64, threads: usize) -> Result<Prepared> {
    let base = scale_dir(dir, scale);
    let lake_dir = base.join("lake");
    let marker_path = base.join(MARKER);
    let lake = Lake::new(&LakeConfig {
        root: lake_dir.to_string_lossy().into_owned(),
        s3: None,
        coordinator_dsn: None,
    })?;
    if let Ok(text) = std::fs::read_to_string(&marker_path)
        && let Ok(marker) = serde_json::from_str::<Marker>(&text)
        && marker.scale == scale
        && marker.layout == LAYOUT
    {
        tracing::info!(scale, dir = %base.display(), "reusing generated SSB data");
        return Ok(Prepared {
            lake,
            lineorder_rows: marker.lineorder_rows,
            generated_in: None,
        });
    }
    let started = Instant::now();
    tracing::info!(scale, dir = %base.display(), "generating SSB data");
    // Whatever an interrupted run left goes; the folder is ours alone.
    let layer_dir = lake_dir.join(LAYER);
    if layer_dir.exists() {
        std::fs::remove_dir_all(&layer_dir)
            .map_err(io(format!("removing {}", layer_dir.display())))?;
    }
    let tables = tokio::task::spawn_blocking(move || generate::generate(scale, threads))
        .await
        .map_err(|e| Error::Internal(format!("generator task: {e}")))??;
    let mut lineorder_rows = 0;
    for (name, schema, batches) in tables.into_named() {
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if name == "lineorder" {
            lineorder_rows = rows;
        }
        let batches = if batches.is_empty() {
            vec![arrow::record_batch::RecordBatch::new_empty(schema)]
        } else {
            batches
        };
        lake.table_handle(LAYER, name)
            .await?
            .write(batches)
            .with_save_mode(SaveMode::Overwrite)
            .with_writer_properties(writer_properties())
            .with_table_name(name)
            .await
            .map_err(|source| Error::Delta {
                table: name.to_string(),
                source,
            })?;
        tracing::info!(table = name, rows, "wrote SSB table");
    }
    let marker = Marker {
        scale,
        lineorder_rows,
        layout: LAYOUT.to_string(),
    };
    let text = serde_json::to_string_pretty(&marker)
        .map_err(|e| Error::Internal(format!("marker: {e}")))?;
    std::fs::write(&marker_path, text).map_err(io(format!("writing {}", marker_path.display())))?;
    Ok(Prepared {
        lake,
        lineorder_rows,
        generated_in: Some(started.elapsed()),
    })
}

/// Snappy, as delta-rs writes by default, with smaller row groups.
fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build()
}

/// The Parquet files of each table's current version, as local paths: what
/// an outside reader without a Delta reader needs.
pub(crate) async fn parquet_files(lake: &Lake) -> Result<Vec<(&'static str, Vec<PathBuf>)>> {
    let mut out = Vec::new();
    for name in TABLES {
        let table = lake
            .open(LAYER, name)
            .await?
            .ok_or_else(|| Error::Internal(format!("table {LAYER}.{name} is missing")))?;
        let uris = table.get_file_uris().map_err(|source| Error::Delta {
            table: name.to_string(),
            source,
        })?;
        let mut files = Vec::new();
        for uri in uris {
            // delta-rs gives local files as plain paths, other stores as URLs.
            let path = if Path::new(&uri).is_absolute() {
                Some(PathBuf::from(&uri))
            } else {
                url::Url::parse(&uri)
                    .ok()
                    .filter(|u| u.scheme() == "file")
                    .and_then(|u| u.to_file_path().ok())
            }
            .ok_or_else(|| Error::Options(format!("{uri} is not a local file")))?;
            files.push(path);
        }
        files.sort();
        out.push((name, files));
    }
    Ok(out)
}
