//! Reads from a shard's hot standby, within a staleness bound that is
//! proven rather than estimated.
//!
//! Every [`PROBE_INTERVAL`] the service notes the time `t0`, reads the
//! primary's written WAL position `L` (at or past the commit record of
//! every transaction visible there before `t0`), then asks the standby
//! whether it has replayed up to `L`. A yes certifies that everything committed on
//! the primary before `t0` is visible on the standby, so a read the standby
//! serves at time `t` misses at most what committed in `(t0, t]`. A read
//! goes to the standby only while `t - t0` of the newest certificate is
//! within `[oltp] replica_max_lag_ms`; otherwise, and whenever the standby
//! fails to answer, it goes to the primary.
//!
//! Two refinements keep clients' own writes readable:
//! - a read the standby answers "not found" is asked again on the primary,
//!   so an order can be read as soon as its creation was acknowledged (its
//!   later changes may show up to the bound late);
//! - after a failover the replica's address may name the new primary (the
//!   nodes keep their ports): a node that is not in recovery is certified
//!   at once, since nothing is fresher.
//!
//! Counted in [`READS_TOTAL`] by shard and by where the read went; the age
//! of each shard's newest certificate is [`STALENESS_BOUND_SECONDS`].

use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tributary_metrics::{GaugeVec, IntCounterVec};

use crate::error::Result;
use crate::pool::Pool;

/// How often each standby is certified.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// How long one probe may take before it counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Polls of a standby that has not replayed the probe's position yet.
const CATCH_UP_POLLS: usize = 5;
const CATCH_UP_POLL: Duration = Duration::from_millis(20);

/// Counter of read-only requests by `shard` and `from`: `standby`,
/// `primary` (no standby, or not certified within the bound), or
/// `primary_fallback` (the standby failed or did not hold the row).
pub const READS_TOTAL: &str = "tributary_oltp_replica_reads_total";
/// Gauge: seconds since the newest certificate of each shard's standby
/// (an upper bound of its staleness; absent before the first).
pub const STALENESS_BOUND_SECONDS: &str = "tributary_oltp_replica_staleness_bound_seconds";

static READS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    tributary_metrics::counter_vec(
        READS_TOTAL,
        "Read-only requests by shard and by where they were served.",
        &["shard", "from"],
    )
});

static STALENESS: LazyLock<GaugeVec> = LazyLock::new(|| {
    tributary_metrics::gauge_vec(
        STALENESS_BOUND_SECONDS,
        "Seconds since the standby was last shown to hold every commit of the primary.",
        &["shard"],
    )
});

/// Where a read was served; also the `X-Read-From` response header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadFrom {
    Standby,
    Primary,
    PrimaryFallback,
}

impl ReadFrom {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ReadFrom::Standby => "standby",
            ReadFrom::Primary => "primary",
            ReadFrom::PrimaryFallback => "primary_fallback",
        }
    }

    pub(crate) fn count(self, shard: usize) {
        READS
            .with_label_values(&[&shard.to_string(), self.as_str()])
            .inc();
    }
}

/// A shard's standby and its newest certificate.
pub(crate) struct Replica {
    pub(crate) pool: Pool,
    certified: Mutex<Option<Instant>>,
}

impl Replica {
    pub(crate) fn new(pool: Pool) -> Replica {
        Replica {
            pool,
            certified: Mutex::new(None),
        }
    }

    /// Whether a read now may be served here: certified within `bound`.
    pub(crate) fn fresh_within(&self, bound: Duration) -> bool {
        self.certified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t0| t0.elapsed() <= bound)
    }

    fn certify(&self, t0: Instant) {
        let mut c = self.certified.lock().unwrap_or_else(|p| p.into_inner());
        if c.is_none_or(|old| old < t0) {
            *c = Some(t0);
        }
    }

    fn age(&self) -> Option<Duration> {
        self.certified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t0| t0.elapsed())
    }
}

/// One certificate attempt: `Ok(true)` when the standby held every commit
/// the primary had at the probe's start. The standby gets a few short
/// polls to replay up to that position (under load the newest WAL is
/// usually in flight).
async fn probe(primary: &Pool, replica: &Replica) -> Result<bool> {
    let t0 = Instant::now();
    // The written WAL position: at or past the commit record of every
    // transaction visible on the primary before t0, since a commit is
    // flushed before it is visible (`synchronous_commit` on, the default;
    // the service never turns it off). The insert position would not do:
    // on an idle primary it can point past a page header no standby ever
    // replays.
    let written: i64 = primary
        .get()
        .await?
        .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint", &[])
        .await?
        .get(0);
    let conn = replica.pool.get().await?;
    for attempt in 0..CATCH_UP_POLLS {
        if attempt > 0 {
            tokio::time::sleep(CATCH_UP_POLL).await;
        }
        let row = conn
            .query_one(
                "SELECT pg_is_in_recovery(), (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint",
                &[],
            )
            .await?;
        let (in_recovery, replayed): (bool, Option<i64>) = (row.get(0), row.get(1));
        if !in_recovery || replayed.is_some_and(|r| r >= written) {
            replica.certify(t0);
            return Ok(true);
        }
    }
    Ok(false)
}

/// Certifies every shard's standby until `shutdown`; a failed probe is
/// logged once per run of failures and only lets the certificate age.
pub(crate) async fn certify(shards: Vec<(usize, &Pool, &Replica)>, shutdown: CancellationToken) {
    let mut failing = vec![false; shards.len()];
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (i, (shard, primary, replica)) in shards.iter().enumerate() {
            let outcome = tokio::time::timeout(PROBE_TIMEOUT, probe(primary, replica)).await;
            match outcome {
                Ok(Ok(_)) => failing[i] = false,
                Ok(Err(error)) if !failing[i] => {
                    failing[i] = true;
                    tracing::warn!(shard, %error, "cannot certify the standby; reads go to the primary");
                }
                Err(_) if !failing[i] => {
                    failing[i] = true;
                    tracing::warn!(
                        shard,
                        "certifying the standby timed out; reads go to the primary"
                    );
                }
                _ => {}
            }
            if let Some(age) = replica.age() {
                STALENESS
                    .with_label_values(&[&shard.to_string()])
                    .set(age.as_secs_f64());
            }
        }
    }
}
