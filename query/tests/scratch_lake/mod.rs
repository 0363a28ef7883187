//! A lake in a temporary folder and writing to its tables: the fixtures of
//! the query crate's tests and of the marts' (`etl/tests`, which includes
//! this file by path).

use arrow::array::RecordBatch;
use deltalake::DeltaTable;
use deltalake::protocol::SaveMode;
use tributary_lake::{Lake, LakeConfig};

/// A lake rooted in `dir`, on the local file system.
pub fn lake(dir: &tempfile::TempDir) -> Lake {
    Lake::new(&LakeConfig {
        root: dir.path().to_str().unwrap().to_string(),
        s3: None,
        coordinator_dsn: None,
    })
    .unwrap()
}

/// `layer.table` at its latest version, or a handle whose first write
/// creates it.
pub async fn table(lake: &Lake, layer: &str, table: &str) -> DeltaTable {
    match lake.open(layer, table).await.unwrap() {
        Some(t) => t,
        None => lake.table_handle(layer, table).await.unwrap(),
    }
}

/// Appends `batch` to `layer.table` in one commit, creating the table when
/// absent.
pub async fn append(lake: &Lake, layer: &str, name: &str, batch: RecordBatch) {
    table(lake, layer, name)
        .await
        .write(vec![batch])
        .with_save_mode(SaveMode::Append)
        .await
        .unwrap();
}
