//! Leadership among schedulers: one lease row in `tributary_lake.leases`
//! (the lock), whose epoch rises at every change of owner (the fencing
//! number every run record checks, see [`crate::history`]).
//!
//! The leader renews every [`RENEW`]; the lease lasts [`TTL`] on
//! PostgreSQL's clock. A leader killed outright is replaced once its lease
//! expires: within `TTL` plus one poll of a standby, under the 10 s the
//! design asks for. A leader that finds its renewal refused (it was paused
//! past the TTL) says so, cancels what it runs and becomes a standby; any
//! record it tries before noticing is refused by the fence.

use std::sync::Arc;
use std::time::Duration;

use tributary_lake::coordinator::{Coordinator, Fence};

use crate::Result;

/// The lease's resource name.
pub const RESOURCE: &str = "workflows/scheduler";
/// How long a lease lasts without renewal.
pub const TTL: Duration = Duration::from_secs(6);
/// How often the leader renews and a standby tries to take over.
pub const RENEW: Duration = Duration::from_secs(1);

/// One scheduler's view of the lease.
pub struct Leadership {
    coordinator: Arc<Coordinator>,
    owner: String,
    fence: Option<Fence>,
}

/// What a check of the lease found.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing changed (still leading, or still a standby).
    Same,
    /// This scheduler just took the lead with this epoch.
    Took(i64),
    /// This scheduler lost the lead it had with this epoch.
    Lost(i64),
}

impl Leadership {
    pub async fn connect(dsn: &str, owner: String) -> Result<Leadership> {
        Ok(Leadership {
            coordinator: Coordinator::connect(dsn).await?,
            owner,
            fence: None,
        })
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The fence while leading.
    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// Renews the lease when leading, else tries to take it.
    pub async fn check(&mut self) -> Result<Change> {
        match &self.fence {
            Some(f) => {
                if self.coordinator.renew(f, TTL).await? {
                    Ok(Change::Same)
                } else {
                    let epoch = f.epoch;
                    self.fence = None;
                    Ok(Change::Lost(epoch))
                }
            }
            None => match self
                .coordinator
                .try_acquire(RESOURCE, &self.owner, TTL)
                .await?
            {
                Some(epoch) => {
                    self.fence = Some(Fence {
                        resource: RESOURCE.to_string(),
                        owner: self.owner.clone(),
                        epoch,
                    });
                    Ok(Change::Took(epoch))
                }
                None => Ok(Change::Same),
            },
        }
    }

    /// Forgets the lead after a refused record (the fence said so).
    pub fn lost(&mut self) -> Option<i64> {
        self.fence.take().map(|f| f.epoch)
    }

    /// Gives the lease up, so a standby takes over at once.
    pub async fn release(&mut self) -> Result<()> {
        if let Some(f) = self.fence.take() {
            self.coordinator.release(&f).await?;
        }
        Ok(())
    }
}
