//! Which tables this ingester may write: one lease per table in the commit
//! coordinator, kept by a background task.
//!
//! - A lease is taken when free or expired, renewed every third of its time
//!   to live, and released on a clean stop so a standby takes over at once.
//! - A renewal that fails (the lease expired while this process was paused,
//!   or the database was unreachable for a whole time to live) drops the
//!   table at once; a commit still in flight is refused by the coordinator's
//!   fence, so an old owner never commits after a new one took over.
//! - A refusal of the coordinator's database that no retry cures (a missing
//!   privilege, bad credentials) stops lease keeping for good: every table
//!   is dropped and [`Leases::failure`] says why, so the ingester stops with
//!   that error instead of waiting as a standby forever.
//! - Without a coordinator the ingester owns every table, unfenced: the lake
//!   then relies on the store's own put-if-absent (see `LakeConfig`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tributary_model::error_chain;

use crate::coordinator::{Coordinator, Fence};
use crate::{Error, Lake, Result};

/// Tables this process owns, with the fence its commits must carry
/// (`None`: no coordinator, so no fence).
pub type Owned = BTreeMap<String, Option<Fence>>;

/// The lease keeper's view, shared with ingest.
#[derive(Clone)]
pub struct Leases {
    shared: Arc<Shared>,
    changed: watch::Receiver<u64>,
    coordinator: Option<Arc<Coordinator>>,
}

/// What the keeper and ingest share.
struct Shared {
    owned: Mutex<Owned>,
    /// Why lease keeping stopped for good, until ingest takes it.
    failure: Mutex<Option<Error>>,
    /// Bumped whenever `owned` changes (or keeping stopped).
    changed: watch::Sender<u64>,
}

impl Shared {
    fn owned(&self) -> std::sync::MutexGuard<'_, Owned> {
        self.owned.lock().expect("lease lock")
    }

    fn set_owned(&self, owned: Owned) {
        *self.owned() = owned;
        self.changed.send_modify(|g| *g += 1);
    }

    /// Lease keeping stopped for good: nothing is owned any more.
    fn fail(&self, e: Error) {
        tracing::error!(error = %error_chain(&e), "lease keeping stopped; ingest stops with it");
        self.failure.lock().expect("lease lock").get_or_insert(e);
        self.set_owned(Owned::new());
    }
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
        let shared = |owned| {
            Arc::new(Shared {
                owned: Mutex::new(owned),
                failure: Mutex::new(None),
                changed: tx,
            })
        };
        let Some(coordinator) = lake.coordinator().await? else {
            return Ok(Leases {
                shared: shared(tables.into_iter().map(|t| (t, None)).collect()),
                changed: rx,
                coordinator: None,
            });
        };
        let shared = shared(Owned::new());
        let keeper = Keeper {
            coordinator: coordinator.clone(),
            owner: format!("{}/{:08x}", lake.writer(), rand_suffix()),
            resources: tables
                .into_iter()
                .map(|t| (resource(lake, &t), t))
                .collect(),
            ttl,
            shared: shared.clone(),
        };
        let watched = shared.clone();
        tokio::spawn(async move {
            let failure = match tokio::spawn(keeper.run(shutdown)).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e,
                Err(e) => Error::Internal(format!("the lease keeper task failed: {e}")),
            };
            watched.fail(failure);
        });
        Ok(Leases {
            shared,
            changed: rx,
            coordinator: Some(coordinator),
        })
    }

    /// Gives every lease up (after ingest stopped), so a standby takes over
    /// without waiting for expiry.
    pub async fn release_all(&self) {
        let Some(c) = &self.coordinator else { return };
        let owned = std::mem::take(&mut *self.shared.owned());
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
        self.shared.owned().clone()
    }

    /// Resolves when the set of owned tables changes.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.clone()
    }

    /// Drops a table whose commit was fenced (the keeper retakes it when free).
    pub fn lost(&self, table: &str) {
        self.shared.owned().remove(table);
    }

    /// Why lease keeping stopped for good (a refusal of the coordinator that
    /// no retry cures, or a failed keeper task), once: ingest must stop with
    /// it. Nothing is owned after such a failure, and [`Leases::watch`] has
    /// fired.
    pub fn failure(&self) -> Option<Error> {
        self.shared.failure.lock().expect("lease lock").take()
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
    shared: Arc<Shared>,
}

impl Keeper {
    /// Keeps the leases until `shutdown`; returns the first error no retry
    /// cures.
    async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let result = self.keep(shutdown).await;
        if result.is_err() {
            for table in self.resources.values() {
                crate::metrics::lease_owned(table, false);
            }
        }
        result
    }

    async fn keep(&self, shutdown: CancellationToken) -> Result<()> {
        let renew_every = self.ttl / 3;
        let mut held: BTreeMap<String, Fence> = BTreeMap::new();
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            let mut changed = false;
            // Renew what is held; anything not renewed within the time to
            // live is gone on the database's clock too.
            for (table, fence) in held.clone() {
                let still_ours = self.shared.owned().contains_key(&table);
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
                    Err(e) if !e.is_transient() => return Err(e),
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
                    Err(e) if !e.is_transient() => return Err(e),
                    Err(e) => {
                        tracing::warn!(table, error = %error_chain(&e), "acquiring a lease failed");
                    }
                }
            }
            for table in self.resources.values() {
                crate::metrics::lease_owned(table, held.contains_key(table));
            }
            if changed {
                self.shared.set_owned(
                    held.iter()
                        .map(|(t, f)| (t.clone(), Some(f.clone())))
                        .collect(),
                );
            }
            let wait = if held.len() == self.resources.len() {
                renew_every
            } else {
                // Standby: look for free leases more often than we renew.
                renew_every.min(Duration::from_secs(1))
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
    }
}
