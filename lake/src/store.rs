//! Where the lake's tables live, how to open them, and how to query one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayData, Int32Array, Int64Array, RecordBatch};
use arrow::datatypes::DataType;
use datafusion::prelude::SessionContext;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::protocol::{DeltaOperation, OutputMode};
use deltalake::{DeltaTable, DeltaTableError};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::coordinator::{CoordinatedLogStore, Coordinator, Fence, LazyCoordinator};
use crate::{Error, Result};

/// Lake settings (`[lake]` in the config file). Its `Debug` output shows
/// the coordinator's DSN without its password.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LakeConfig {
    /// `file:///abs/path`, a plain absolute path, or `s3://bucket/prefix`.
    pub root: String,
    /// S3 endpoint and credentials; required when `root` is `s3://`.
    #[serde(default)]
    pub s3: Option<S3Config>,
    /// PostgreSQL database that claims every commit and holds the writers'
    /// leases (see [`crate::coordinator`]). Required for `s3://` roots unless
    /// `s3.trust_put_if_absent` is set; the local stack uses its catalog
    /// database.
    #[serde(default)]
    pub coordinator_dsn: Option<String>,
}

impl std::fmt::Debug for LakeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakeConfig")
            .field("root", &self.root)
            .field("s3", &self.s3)
            .field(
                "coordinator_dsn",
                &self
                    .coordinator_dsn
                    .as_deref()
                    .map(tributary_model::dsn::describe),
            )
            .finish()
    }
}

/// Access to an S3 or S3-compatible store.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// e.g. `http://127.0.0.1:9000`; empty for AWS itself.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    /// Static credentials. Leave both out to use the AWS SDK's default
    /// chain instead (environment, the web identity of an EKS service
    /// account, an instance profile): what deploy/k8s's prod overlay does.
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<SecretString>,
    /// Allow `http://` endpoints (local servers).
    #[serde(default)]
    pub allow_http: bool,
    /// Commit without a coordinator, trusting the store's atomic
    /// put-if-absent (`If-None-Match: *`). True for AWS S3; check any other
    /// store with `tributary lake check-store` first.
    #[serde(default)]
    pub trust_put_if_absent: bool,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// A handle on the lake: root URL plus the storage options every table needs,
/// and, when configured, the coordinator every commit goes through.
#[derive(Clone, Debug)]
pub struct Lake {
    root: Url,
    options: HashMap<String, String>,
    coordinator: Option<Arc<LazyCoordinator>>,
    /// Names this process in commit claims.
    writer: String,
    /// The lease this handle's commits must still hold.
    fence: Option<Fence>,
    /// `layer/table` of the tables on an object store seen to have a log,
    /// so opening them again costs no listing.
    known: Arc<Mutex<HashSet<String>>>,
    /// Tables this handle committed to, when it keeps them (see
    /// [`Lake::with_table_cache`]).
    cache: Option<TableCache>,
    /// The store under the root, made once for [`Lake::is_latest`] (on S3,
    /// a client with its connection pool).
    probe: Arc<std::sync::OnceLock<(Arc<dyn ObjectStore>, Path)>>,
    /// Whether delta-rs writes a checkpoint inside a commit that reaches
    /// `delta.checkpointInterval` (off where maintenance writes them).
    checkpoint_on_commit: bool,
}

/// Tables by `layer/table`, as the handle's own last commit left them, with
/// the number of commits since each was read from the store.
#[derive(Clone, Default)]
struct TableCache(Arc<Mutex<HashMap<String, (DeltaTable, u32)>>>);

/// Commits after which a kept table is read from the store again. delta-rs
/// brings a table up to date after each commit by adding that commit's
/// files to its state, and a state built from many such steps gets slower
/// to scan with every step (measured: 5 ms after one, 75 ms after about a
/// hundred, against 10–30 ms to read the table anew).
const KEEP_COMMITS: u32 = 8;

impl std::fmt::Debug for TableCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tables = self.0.lock().expect("not poisoned").len();
        f.debug_struct("TableCache")
            .field("tables", &tables)
            .finish()
    }
}

impl Lake {
    pub fn new(config: &LakeConfig) -> Result<Self> {
        let root = if config.root.contains("://") {
            Url::parse(&config.root)
                .map_err(|e| Error::Config(format!("lake.root {:?}: {e}", config.root)))?
        } else {
            let path = std::path::absolute(&config.root)
                .map_err(|e| Error::Config(format!("lake.root {:?}: {e}", config.root)))?;
            Url::from_directory_path(&path).map_err(|_| {
                Error::Config(format!(
                    "lake.root {:?} is not a directory path",
                    config.root
                ))
            })?
        };
        let mut options = HashMap::new();
        match root.scheme() {
            "file" => {
                let path = root
                    .to_file_path()
                    .map_err(|_| Error::Config(format!("lake.root {root} is not a local path")))?;
                std::fs::create_dir_all(&path)
                    .map_err(|e| Error::Config(format!("lake.root {}: {e}", path.display())))?;
            }
            "s3" | "s3a" => {
                let s3 = config.s3.as_ref().ok_or_else(|| {
                    Error::Config("lake.s3 is required for an s3:// lake.root".into())
                })?;
                if let Some(endpoint) = &s3.endpoint {
                    options.insert("AWS_ENDPOINT_URL".into(), endpoint.clone());
                }
                options.insert("AWS_REGION".into(), s3.region.clone());
                match (&s3.access_key_id, &s3.secret_access_key) {
                    (Some(id), Some(secret)) => {
                        options.insert("AWS_ACCESS_KEY_ID".into(), id.clone());
                        options.insert(
                            "AWS_SECRET_ACCESS_KEY".into(),
                            secret.expose_secret().to_string(),
                        );
                    }
                    (None, None) => {}
                    _ => {
                        return Err(Error::Config(
                            "lake.s3: set both access_key_id and secret_access_key, or \
                             neither (then the AWS default credential chain is used)"
                                .into(),
                        ));
                    }
                }
                options.insert("AWS_ALLOW_HTTP".into(), s3.allow_http.to_string());
                if config.coordinator_dsn.is_none() && !s3.trust_put_if_absent {
                    return Err(Error::Config(
                        "lake.coordinator_dsn is required for an s3:// lake.root: not every \
                         S3-compatible store makes `If-None-Match: *` atomic (run `tributary \
                         lake check-store`; set lake.s3.trust_put_if_absent = true only for a \
                         store that passes it, such as AWS S3)"
                            .into(),
                    ));
                }
                // Commits are claimed in the coordinator (or the store is
                // trusted), so Delta's rename safety check is not needed.
                options.insert("AWS_S3_ALLOW_UNSAFE_RENAME".into(), "true".into());
                options.insert("AWS_VIRTUAL_HOSTED_STYLE_REQUEST".into(), "false".into());
            }
            other => {
                return Err(Error::Config(format!(
                    "lake.root scheme {other:?} is not supported (use file:// or s3://)"
                )));
            }
        }
        let mut root = root;
        if !root.path().ends_with('/') {
            root.set_path(&format!("{}/", root.path()));
        }
        let coordinator = config
            .coordinator_dsn
            .as_ref()
            .map(|dsn| Arc::new(LazyCoordinator::new(dsn)));
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        Ok(Lake {
            root,
            options,
            coordinator,
            writer: format!("{host}:{}", std::process::id()),
            fence: None,
            known: Arc::default(),
            cache: None,
            probe: Arc::default(),
            checkpoint_on_commit: true,
        })
    }

    /// The commit coordinator, when the lake has one.
    pub async fn coordinator(&self) -> Result<Option<Arc<Coordinator>>> {
        match &self.coordinator {
            Some(c) => Ok(Some(c.get().await?)),
            None => Ok(None),
        }
    }

    /// This handle with commits refused unless `fence` is still held.
    pub fn with_fence(&self, fence: Fence) -> Lake {
        Lake {
            fence: Some(fence),
            ..self.clone()
        }
    }

    /// This handle keeping the tables it commits to ([`Lake::keep`]), so
    /// that opening one again costs a check that no other commit came since
    /// (one `HEAD` of the next log entry) instead of reading the log from its
    /// last checkpoint. For a writer that commits to the same tables over and
    /// over and is their only writer (ingest, under the tables' leases). A
    /// table another writer committed to meanwhile is loaded again; a commit
    /// from a stale one would still be checked against the commits it missed,
    /// as any Delta commit is.
    pub fn with_table_cache(&self) -> Lake {
        Lake {
            cache: Some(TableCache::default()),
            ..self.clone()
        }
    }

    /// This handle's commits writing no checkpoint themselves: for a writer
    /// whose maintenance writes them on its own cadence. delta-rs would
    /// otherwise write one inside the commit that reaches the table's
    /// `delta.checkpointInterval`, on top of maintenance's, and with a
    /// snapshot it reads anew (3–4× the cost, measured in `bench lake`).
    pub fn with_checkpoints_by_maintenance(&self) -> Lake {
        Lake {
            checkpoint_on_commit: false,
            ..self.clone()
        }
    }

    /// Commit properties for this handle's commits.
    pub fn commit_properties(&self) -> CommitProperties {
        CommitProperties::default().with_create_checkpoint(self.checkpoint_on_commit)
    }

    /// Keeps `t`, the table as this handle's commit just left it, for the
    /// next [`Lake::open`]; nothing without a cache.
    pub fn keep(&self, layer: &str, table: &str, t: &DeltaTable) {
        if let Some(cache) = &self.cache {
            let key = format!("{layer}/{table}");
            let mut tables = cache.0.lock().expect("not poisoned");
            let commits = tables.get(&key).map_or(1, |(_, n)| n + 1);
            if commits < KEEP_COMMITS {
                tables.insert(key, (t.clone(), commits));
            } else {
                tables.remove(&key);
            }
        }
    }

    /// Drops a kept table, so the next open reads it from the store.
    pub fn forget(&self, layer: &str, table: &str) {
        if let Some(cache) = &self.cache {
            cache
                .0
                .lock()
                .expect("not poisoned")
                .remove(&format!("{layer}/{table}"));
        }
    }

    /// The name this process's commits carry in the coordinator.
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// A table handle on `url` whose commits go through the coordinator.
    async fn build(&self, layer: &str, table: &str, url: Url) -> Result<DeltaTable> {
        let name = || format!("{layer}.{table}");
        let builder = deltalake::DeltaTableBuilder::from_url(url)
            .map_err(|source| Error::Delta {
                table: name(),
                source,
            })?
            .with_storage_options(self.options.clone());
        let Some(coordinator) = self.coordinator.clone() else {
            return builder.build().map_err(|source| Error::Delta {
                table: name(),
                source,
            });
        };
        let inner = builder.build_storage().map_err(|source| Error::Delta {
            table: name(),
            source,
        })?;
        let store =
            CoordinatedLogStore::new(inner, coordinator, self.writer.clone(), self.fence.clone());
        // A writer that died between its claim and its entry: finish it
        // before anyone reads the table. Reading goes on without the
        // coordinator; committing will not.
        if let Err(e) = store.finish_pending().await {
            tracing::debug!(table = %name(), error = %tributary_model::error_chain(&e), "commit coordinator not reachable");
        }
        Ok(DeltaTable::new(Arc::new(store)))
    }

    pub fn root(&self) -> &Url {
        &self.root
    }

    /// Storage options to pass to delta-rs for any table of this lake.
    pub fn storage_options(&self) -> &HashMap<String, String> {
        &self.options
    }

    /// The URL of `<root>/<layer>/<table>/`.
    pub fn table_url(&self, layer: &str, table: &str) -> Url {
        self.root
            .join(&format!("{layer}/{table}/"))
            .expect("layer and table names are plain path segments")
    }

    /// The timestamp (ms) of `layer.table`'s newest commit; `None` when the
    /// table does not exist yet.
    pub async fn last_commit_ms(&self, layer: &str, table: &str) -> Result<Option<i64>> {
        let Some(t) = self.open(layer, table).await? else {
            return Ok(None);
        };
        let mut history = t.history(Some(1));
        Ok(match history.next().await {
            Some(Ok(info)) => info.timestamp,
            Some(Err(source)) => {
                return Err(Error::Delta {
                    table: format!("{layer}.{table}"),
                    source,
                });
            }
            None => None,
        })
    }

    /// Opens a table at its latest version; `None` when it does not exist yet.
    pub async fn open(&self, layer: &str, table: &str) -> Result<Option<DeltaTable>> {
        if let Some(t) = self.kept(layer, table).await {
            return Ok(Some(t));
        }
        self.load(layer, table).await
    }

    /// The kept table, when no commit came after the version it holds.
    async fn kept(&self, layer: &str, table: &str) -> Option<DeltaTable> {
        let cache = self.cache.as_ref()?;
        let key = format!("{layer}/{table}");
        let t = cache
            .0
            .lock()
            .expect("not poisoned")
            .get(&key)
            .map(|(t, _)| t.clone())?;
        let next = crate::coordinator::commit_path(t.version()? + 1);
        match t.log_store().object_store(None).head(&next).await {
            Err(object_store::Error::NotFound { .. }) => Some(t),
            // Another writer committed (or the store did not answer): read
            // the table from the store.
            _ => {
                self.forget(layer, table);
                None
            }
        }
    }

    /// Whether `version` is `layer.table`'s newest: its log has that entry
    /// and none after it (two `HEAD` requests; the first catches a table
    /// replaced by an older copy, a restore). An error when the store did
    /// not answer.
    pub async fn is_latest(&self, layer: &str, table: &str, version: u64) -> Result<bool> {
        let (store, base) = match self.probe.get() {
            Some(made) => made,
            None => {
                let (store, base) = self.object_store()?;
                self.probe.get_or_init(|| (Arc::from(store), base))
            }
        };
        let log = base.clone().join(layer).join(table).join("_delta_log");
        let entry = |v: u64| log.clone().join(format!("{v:020}.json"));
        let (this, next) = (entry(version), entry(version + 1));
        let (this_head, next_head) = futures::join!(store.head(&this), store.head(&next));
        let found = |head: object_store::Result<_>, path: &Path| match head {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Error::ObjectStore(path.to_string(), e)),
        };
        Ok(found(this_head, &this)? && !found(next_head, &next)?)
    }

    /// Loads a table at its latest version from the store.
    async fn load(&self, layer: &str, table: &str) -> Result<Option<DeltaTable>> {
        let url = self.table_url(layer, table);
        // Checked first because Delta's kernel logs an error for every load
        // of a table that does not exist.
        if !self.has_log(layer, table).await? {
            return Ok(None);
        }
        let mut t = self.build(layer, table, url).await?;
        match t.load().await {
            Ok(()) => Ok(Some(t)),
            Err(DeltaTableError::NotATable(_)) => Ok(None),
            Err(e) if e.to_string().contains("No files in log segment") => Ok(None),
            Err(source) => Err(Error::Delta {
                table: format!("{layer}.{table}"),
                source,
            }),
        }
    }

    /// Whether `<root>/<layer>/<table>/_delta_log/` holds anything.
    async fn has_log(&self, layer: &str, table: &str) -> Result<bool> {
        let url = self.table_url(layer, table);
        // A log holding only a temporary commit (a first commit in flight or
        // abandoned) is not a table yet: look for a numbered entry.
        let is_entry = |name: &str| {
            name.as_bytes().first().is_some_and(u8::is_ascii_digit)
                && (name.ends_with(".json") || name.ends_with(".parquet"))
        };
        if let Ok(path) = url.to_file_path() {
            return Ok(
                std::fs::read_dir(path.join("_delta_log")).is_ok_and(|mut entries| {
                    entries.any(|e| e.is_ok_and(|e| is_entry(&e.file_name().to_string_lossy())))
                }),
            );
        }
        let name = format!("{layer}/{table}");
        if self.known.lock().expect("not poisoned").contains(&name) {
            return Ok(true);
        }
        let (store, base) = self.object_store()?;
        let log = base.join(layer).join(table).join("_delta_log");
        let mut listing = store.list(Some(&log));
        let mut found = false;
        while let Some(entry) = listing.next().await {
            match entry {
                Ok(meta) if meta.location.filename().is_some_and(is_entry) => {
                    found = true;
                    break;
                }
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::ObjectStore(log.to_string(), e)),
            }
        }
        if found {
            self.known.lock().expect("not poisoned").insert(name);
        }
        Ok(found)
    }

    /// A table handle that may not exist yet (for creating it).
    pub async fn table_handle(&self, layer: &str, table: &str) -> Result<DeltaTable> {
        let url = self.table_url(layer, table);
        if url.scheme() == "file"
            && let Ok(path) = url.to_file_path()
        {
            std::fs::create_dir_all(&path)
                .map_err(|e| Error::Config(format!("creating {}: {e}", path.display())))?;
        }
        self.build(layer, table, url).await
    }

    /// The store under the lake and the root's path inside it.
    pub fn object_store(&self) -> Result<(Box<dyn ObjectStore>, Path)> {
        object_store::parse_url_opts(&self.root, self.options.iter())
            .map_err(|e| Error::ObjectStore(self.root.to_string(), e))
    }

    /// Names of the Delta tables in one layer, sorted.
    pub async fn list_tables(&self, layer: &str) -> Result<Vec<String>> {
        let (store, base) = self.object_store()?;
        let prefix = Path::from(
            format!("{}/{layer}", base.as_ref().trim_end_matches('/')).trim_start_matches('/'),
        );
        let listing = match store.list_with_delimiter(Some(&prefix)).await {
            Ok(l) => l,
            Err(object_store::Error::NotFound { .. }) => return Ok(vec![]),
            Err(e) => return Err(Error::ObjectStore(prefix.to_string(), e)),
        };
        let mut tables = Vec::new();
        for dir in listing.common_prefixes {
            let log = dir.clone().join("_delta_log");
            let has_log = store
                .list_with_delimiter(Some(&log))
                .await
                .map(|l| !l.objects.is_empty())
                .unwrap_or(false);
            if has_log && let Some(name) = dir.filename() {
                tables.push(name.to_string());
            }
        }
        tables.sort();
        Ok(tables)
    }
}

/// Runs a query over one Delta table registered as `t`.
pub(crate) async fn query_table(
    table: &DeltaTable,
    name: &str,
    sql: &str,
) -> Result<Vec<RecordBatch>> {
    let ctx = SessionContext::new();
    let df_err = |source| Error::DataFusion {
        table: name.to_string(),
        source,
    };
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|source| Error::Delta {
            table: name.to_string(),
            source,
        })?;
    let provider = table.table_provider().await.map_err(df_err)?;
    ctx.register_table("t", provider).map_err(df_err)?;
    ctx.sql(sql)
        .await
        .map_err(df_err)?
        .collect()
        .await
        .map_err(df_err)
}

/// Commits a streaming update (the stream `query_id`) that writes no rows:
/// only what `props` carries, application transactions and commit metadata.
/// Returns the new version.
pub async fn commit_without_data(
    table: &DeltaTable,
    query_id: &str,
    props: CommitProperties,
) -> std::result::Result<u64, DeltaTableError> {
    let snapshot = table.snapshot()?;
    let operation = DeltaOperation::StreamingUpdate {
        output_mode: OutputMode::Append,
        query_id: query_id.to_string(),
        epoch_id: snapshot.version() as i64,
    };
    let committed = CommitBuilder::from(props)
        .build(Some(snapshot), table.log_store(), operation)
        .await?;
    Ok(committed.version() as u64)
}

/// Column `i` of a query result cast to `to`, as `A`, the array type of `to`.
pub(crate) fn cast_column<A: From<ArrayData>>(
    b: &RecordBatch,
    i: usize,
    to: &DataType,
) -> Result<A> {
    Ok(arrow::array::downcast_array(&arrow::compute::cast(
        b.column(i),
        to,
    )?))
}

/// Column `i` of a query result as `i32` values.
pub(crate) fn col_i32(b: &RecordBatch, i: usize) -> Vec<i32> {
    cast_column::<Int32Array>(b, i, &DataType::Int32)
        .expect("int column")
        .values()
        .to_vec()
}

/// Column `i` of a query result as `i64` values.
pub(crate) fn col_i64(b: &RecordBatch, i: usize) -> Vec<i64> {
    cast_column::<Int64Array>(b, i, &DataType::Int64)
        .expect("int column")
        .values()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_coordinator_password() {
        let c = LakeConfig {
            root: "/tmp/lake".into(),
            s3: None,
            coordinator_dsn: Some("host=db user=lake password=hunter2 dbname=postgres".into()),
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("host=db user=lake"), "{shown}");
    }

    fn s3_lake(keys: &str) -> Result<Lake> {
        let s3: S3Config =
            serde_json::from_str(&format!("{{\"region\": \"eu-west-1\"{keys}}}")).unwrap();
        Lake::new(&LakeConfig {
            root: "s3://bucket/lake".into(),
            s3: Some(s3),
            coordinator_dsn: Some("host=db dbname=postgres".into()),
        })
    }

    #[test]
    fn s3_credentials_are_static_or_left_to_the_default_chain() {
        let lake = s3_lake(r#", "access_key_id": "AK", "secret_access_key": "SK""#).unwrap();
        assert_eq!(lake.options["AWS_ACCESS_KEY_ID"], "AK");
        assert_eq!(lake.options["AWS_SECRET_ACCESS_KEY"], "SK");
        let lake = s3_lake("").unwrap();
        assert!(!lake.options.contains_key("AWS_ACCESS_KEY_ID"));
        assert!(!lake.options.contains_key("AWS_SECRET_ACCESS_KEY"));
        assert_eq!(lake.options["AWS_REGION"], "eu-west-1");
        let err = s3_lake(r#", "access_key_id": "AK""#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("both access_key_id and secret_access_key"),
            "{err}"
        );
    }
}
