//! One compaction per table at a time, across processes.
//!
//! Rule kept here: two compactions of the same files never both commit (see
//! [`CompactionLock`] for why delta-rs needs the help). The lock is an object
//! created with put-if-absent in the table's folder, or a lease in the
//! commit coordinator when the lake has one; a holder that died is replaced
//! once its lock expires.

use std::time::{Duration, Instant};

use deltalake::DeltaTable;
use tributary_model::backoff::Backoff;

use crate::{Error, Lake, Result};

/// Name of the compaction lock object in a table's folder (hidden from
/// Delta readers and from vacuum by its leading `_`).
const LOCK: &str = "_tributary_compaction.lock";

/// How long a compaction lock holds when its holder never releases it (a
/// crash): longer than any compaction should take.
const LOCK_TTL: Duration = Duration::from_secs(30 * 60);

/// One compaction per table at a time, across processes.
///
/// delta-rs 1.1.3 does not detect two concurrent compactions of the same
/// files as a conflict (its delete/delete check skips `dataChange = false`
/// removes), so both commit and every row they moved is doubled. Ingest
/// commits against a compaction are detected; compaction against
/// compaction is not, hence this lock. It is created with put-if-absent,
/// which is atomic on local disks and AWS S3; on S3-compatible stores that
/// do not make it atomic, a lake with a commit coordinator takes the lock as
/// a lease in the coordinator's database instead.
pub(super) enum CompactionLock {
    Store {
        store: std::sync::Arc<dyn object_store::ObjectStore>,
        token: String,
    },
    Lease {
        coordinator: std::sync::Arc<crate::coordinator::Coordinator>,
        fence: crate::coordinator::Fence,
    },
}

impl CompactionLock {
    /// Takes the lock of `t`, waiting up to `wait` for another holder.
    /// `None`: still held by someone else after `wait`.
    pub(super) async fn acquire(
        lake: &Lake,
        t: &DeltaTable,
        name: &str,
        wait: Duration,
    ) -> Result<Option<Self>> {
        let Some(coordinator) = lake.coordinator().await? else {
            return Self::acquire_in_store(t, name, wait).await;
        };
        let resource = format!("compaction:{}", t.log_store().root_url());
        let owner = format!(
            "{}:{}",
            lake.writer(),
            LOCK_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let deadline = Instant::now() + wait;
        let mut pauses = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            if let Some(epoch) = coordinator.try_acquire(&resource, &owner, LOCK_TTL).await? {
                return Ok(Some(CompactionLock::Lease {
                    coordinator,
                    fence: crate::coordinator::Fence {
                        resource,
                        owner,
                        epoch,
                    },
                }));
            }
            let pause = pauses.next_delay();
            if Instant::now() + pause > deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause).await;
        }
    }

    async fn acquire_in_store(t: &DeltaTable, name: &str, wait: Duration) -> Result<Option<Self>> {
        use object_store::{
            ObjectStore as _, ObjectStoreExt as _, PutMode, PutOptions, PutPayload,
        };
        let store = t.log_store().object_store(None);
        let path = object_store::path::Path::from(LOCK);
        let store_err = |e| Error::ObjectStore(format!("{name}/{LOCK}"), e);
        let deadline = Instant::now() + wait;
        let mut pauses = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            let now_ms = unix_ms();
            let token = format!(
                "{}:{}:{now_ms}",
                std::process::id(),
                LOCK_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            let body = serde_json::json!({
                "token": token,
                "expires_unix_ms": now_ms + LOCK_TTL.as_millis() as u64,
            });
            let put = store
                .put_opts(
                    &path,
                    PutPayload::from(body.to_string()),
                    PutOptions {
                        mode: PutMode::Create,
                        ..Default::default()
                    },
                )
                .await;
            match put {
                Ok(_) => return Ok(Some(CompactionLock::Store { store, token })),
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(store_err(e)),
            }
            // Held: take it over when its holder died long ago.
            let expired = match store.get(&path).await {
                Ok(got) => {
                    let bytes = got.bytes().await.map_err(store_err)?;
                    serde_json::from_slice::<serde_json::Value>(&bytes)
                        .ok()
                        .and_then(|v| v["expires_unix_ms"].as_u64())
                        .is_none_or(|exp| exp < unix_ms())
                }
                // Released meanwhile: try again at once.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(store_err(e)),
            };
            if expired {
                tracing::warn!(table = name, "taking over an expired compaction lock");
                let _ = store.delete(&path).await;
                continue;
            }
            let pause = pauses.next_delay();
            if Instant::now() + pause > deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Releases the lock when it is still ours.
    pub(super) async fn release(self) {
        use object_store::ObjectStoreExt as _;
        let (store, token) = match self {
            CompactionLock::Store { store, token } => (store, token),
            CompactionLock::Lease { coordinator, fence } => {
                if let Err(e) = coordinator.release(&fence).await {
                    tracing::warn!(error = %e, "could not release a compaction lease; it expires by itself");
                }
                return;
            }
        };
        let path = object_store::path::Path::from(LOCK);
        let ours = match store.get(&path).await {
            Ok(got) => got.bytes().await.ok().is_some_and(|b| {
                serde_json::from_slice::<serde_json::Value>(&b)
                    .ok()
                    .is_some_and(|v| v["token"] == token.as_str())
            }),
            Err(_) => false,
        };
        if ours && let Err(e) = store.delete(&path).await {
            tracing::warn!(error = %e, "could not release a compaction lock; it expires by itself");
        }
    }
}

static LOCK_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
