//! Which tables this ingester may write: one lease per table in the commit
//! coordinator, kept by a background task.
//!
//! - A lease is taken when free or expired, renewed every third of its time
//!   to live, and released on a clean stop so a standby takes over at once.
//! - A renewal that fails (the lease expired while this process was paused,
//!   or the database was unreachable for a whole time to live) drops the
//!   table at once; a commit still in flight is refused by the coordinator's
//!   fence, so an old owner never commits after a new one took over.
//! - Without a coordinator the ingester owns every table, unfenced: the lake
//!   then relies on the store's own put-if-absent (see `LakeConfig`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tributary_model::error_chain;

use crate::coordinator::{Coordinator, Fence};
use crate::{Lake, Result};

/// Tables this process owns, with the fence its commits must carry
/// (`None`: no coordinator, so no fence).
pub type Owned = BTreeMap<String, Option<Fence>>;

/// The lease keeper's view, shared with ingest.
#[derive(Clone)]
pub struct Leases {
    owned: Arc<Mutex<Owned>>,
    changed: watch::Receiver<u64>,
    coordinator: Option<Arc<Coordinator>>,
}

impl Leases {
    /// Starts keeping leases on `tables` (or owns them all when the lake has
    /// no coordinator).
    pub async fn start(
        lake: &Lake,
        tables: Vec<String>,
        ttl: Duration,
        shutdown: CancellationToken,
    ) -> Result<Leases> {
        let (tx, rx) = watch::channel(0u64);
        let Some(coordinator) = lake.coordinator().await? else {
            let owned = tables.into_iter().map(|t| (t, None)).collect();
            return Ok(Leases {
                owned: Arc::new(Mutex::new(owned)),
                changed: rx,
                coordinator: None,
            });
        };
        let owned = Arc::new(Mutex::new(Owned::new()));
        let keeper = Keeper {
            coordinator: coordinator.clone(),
            owner: format!("{}/{:08x}", lake.writer(), rand_suffix()),
            resources: tables
                .into_iter()
                .map(|t| (resource(lake, &t), t))
                .collect(),
            ttl,
            owned: owned.clone(),
            changed: tx,
        };
        tokio::spawn(keeper.run(shutdown));
        Ok(Leases {
            owned,
            changed: rx,
            coordinator: Some(coordinator),
        })
    }

    /// Gives every lease up (after ingest stopped), so a standby takes over
    /// without waiting for expiry.
    pub async fn release_all(&self) {
        let Some(c) = &self.coordinator else { return };
        let owned = std::mem::take(&mut *self.owned.lock().expect("lease lock"));
        for fence in owned.values().flatten() {
            match c.release(fence).await {
                Ok(()) => {
                    tracing::info!(resource = %fence.resource, epoch = fence.epoch, "lease released")
                }
                Err(e) => {
                    tracing::warn!(resource = %fence.resource, error = %error_chain(&e), "releasing a lease")
                }
            }
        }
    }

    /// The tables owned now.
    pub fn owned(&self) -> Owned {
        self.owned.lock().expect("lease lock").clone()
    }

    /// Resolves when the set of owned tables changes.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.clone()
    }

    /// Drops a table whose commit was fenced (the keeper retakes it when free).
    pub fn lost(&self, table: &str) {
        self.owned.lock().expect("lease lock").remove(table);
    }
}

/// The lease name of a table of a lake.
pub fn resource(lake: &Lake, table: &str) -> String {
    format!("{}{table}", lake.root())
}

fn rand_suffix() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}

struct Keeper {
    coordinator: Arc<Coordinator>,
    owner: String,
    /// Lease resource -> table.
    resources: BTreeMap<String, String>,
    ttl: Duration,
    owned: Arc<Mutex<Owned>>,
    changed: watch::Sender<u64>,
}

impl Keeper {
    async fn run(self, shutdown: CancellationToken) {
        let renew_every = self.ttl / 3;
        let mut held: BTreeMap<String, Fence> = BTreeMap::new();
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            let mut changed = false;
            // Renew what is held; anything not renewed within the time to
            // live is gone on the database's clock too.
            for (table, fence) in held.clone() {
                let still_ours = self.owned.lock().expect("lease lock").contains_key(&table);
                let renewed = if still_ours {
                    self.coordinator.renew(&fence, self.ttl).await
                } else {
                    Ok(false)
                };
                match renewed {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(table, epoch = fence.epoch, owner = %self.owner, "lease lost: another ingester may own this table now; its ingest stops here");
                        held.remove(&table);
                        changed = true;
                    }
                    Err(e) if last_renewed.elapsed() < self.ttl => {
                        tracing::warn!(table, error = %error_chain(&e), "renewing a lease failed; retrying");
                    }
                    Err(e) => {
                        tracing::warn!(table, error = %error_chain(&e), "lease not renewed within its time to live; giving the table up");
                        held.remove(&table);
                        changed = true;
                    }
                }
            }
            last_renewed = tokio::time::Instant::now();
            // Take what is free.
            for (resource, table) in &self.resources {
                if held.contains_key(table) {
                    continue;
                }
                match self
                    .coordinator
                    .try_acquire(resource, &self.owner, self.ttl)
                    .await
                {
                    Ok(Some(epoch)) => {
                        tracing::info!(table, epoch, owner = %self.owner, "lease acquired: this ingester writes the table");
                        held.insert(
                            table.clone(),
                            Fence {
                                resource: resource.clone(),
                                owner: self.owner.clone(),
                                epoch,
                            },
                        );
                        changed = true;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(table, error = %error_chain(&e), "acquiring a lease failed");
                    }
                }
            }
            for table in self.resources.values() {
                crate::metrics::lease_owned(table, held.contains_key(table));
            }
            if changed {
                *self.owned.lock().expect("lease lock") = held
                    .iter()
                    .map(|(t, f)| (t.clone(), Some(f.clone())))
                    .collect();
                self.changed.send_modify(|g| *g += 1);
            }
            let wait = if held.len() == self.resources.len() {
                renew_every
            } else {
                // Standby: look for free leases more often than we renew.
                renew_every.min(Duration::from_secs(1))
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => break,
            }
        }
    }
}
