//! Commits that are safe on any object store, and single-writer leases.
//!
//! Delta's safety between writers rests on the store creating each
//! `_delta_log/<version>.json` atomically only if absent. Not every
//! S3-compatible server does (see `docs/lake-stores.md`), so the lake does not
//! trust the store for it: every commit is first *claimed* in PostgreSQL.
//!
//! A commit of version `v` goes:
//! 1. delta-rs writes the entry to a temporary object `_delta_log/_commit_<uuid>.json.tmp`;
//! 2. the writer inserts `(table, v, tmp)` into `tributary_lake.commits`.
//!    The primary key lets exactly one writer claim `v`; a claim must be above
//!    the table's newest claim, so a writer with a stale view cannot claim a
//!    version whose claim was pruned; and when the writer
//!    holds a lease ([`Fence`]), the same statement checks under a row lock
//!    that the lease is still its own, so a paused old owner cannot commit
//!    after losing it;
//! 3. the temporary object is copied to `<v>.json` (a plain overwrite: only
//!    the claimed bytes are ever written there), and the claim is marked
//!    complete.
//!
//! A writer that dies between 2 and 3 leaves a claim without its `<v>.json`.
//! Anyone who opens the table, reads that version or commits after it
//! finishes the copy (the temporary object stays until the claim completes),
//! so a claimed commit is never lost and never overwritten. This is the design
//! of delta-rs's DynamoDB log store, with PostgreSQL as the arbiter, because
//! tributary already runs PostgreSQL and its transactions give the fence.
//!
//! Leases (`tributary_lake.leases`) name one owner per resource (an ingested
//! table) with an epoch that rises on every change of owner and an expiry on
//! PostgreSQL's clock; owners renew well before expiry.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deltalake::kernel::Version;
use deltalake::kernel::transaction::TransactionError;
use deltalake::logstore::{CommitOrBytes, LogStore, LogStoreConfig, LogStoreRef};
use deltalake::{DeltaResult, DeltaTableError};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::Mutex;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::{Error, Result};

/// Claimed rows kept per table behind the newest one (older ones are pruned).
const KEEP_CLAIMS: i64 = 100;

/// A coordinator connected on first use, so handles on the lake stay cheap
/// and reading works while the coordinator's database is down.
#[derive(Debug)]
pub struct LazyCoordinator {
    dsn: String,
    cell: tokio::sync::OnceCell<Arc<Coordinator>>,
}

impl LazyCoordinator {
    pub fn new(dsn: &str) -> Self {
        LazyCoordinator {
            dsn: dsn.to_string(),
            cell: tokio::sync::OnceCell::new(),
        }
    }

    pub async fn get(&self) -> Result<Arc<Coordinator>> {
        Ok(self
            .cell
            .get_or_try_init(|| Coordinator::connect(&self.dsn))
            .await?
            .clone())
    }
}

/// The PostgreSQL side of the lake: commit claims and leases.
pub struct Coordinator {
    dsn: String,
    client: Mutex<Option<Arc<tokio_postgres::Client>>>,
}

impl fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coordinator").finish_non_exhaustive()
    }
}

/// Why a claim was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("version {0} is already claimed")]
    Taken(Version),
    #[error(transparent)]
    Fenced(#[from] Fenced),
    /// The coordinator's database failed or refused; [`Error::is_transient`]
    /// says whether a retry can cure it.
    #[error(transparent)]
    Db(Error),
}

/// A commit refused because the writer no longer holds its lease.
#[derive(Debug, thiserror::Error)]
#[error(
    "lease {resource:?} epoch {epoch} is no longer held by {owner}: another writer took over; this commit was refused"
)]
pub struct Fenced {
    pub resource: String,
    pub owner: String,
    pub epoch: i64,
}

/// The lease a writer must still hold for its commits to be accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub resource: String,
    pub owner: String,
    pub epoch: i64,
}

/// One row of `tributary_lake.leases`, as `tributary status` shows it.
#[derive(Clone, Debug)]
pub struct LeaseInfo {
    pub resource: String,
    pub owner: String,
    pub epoch: i64,
    /// Seconds until expiry on the database's clock (negative: expired).
    pub expires_in_s: f64,
}

const SCHEMA: &str = "
CREATE SCHEMA IF NOT EXISTS tributary_lake;
CREATE TABLE IF NOT EXISTS tributary_lake.commits (
    table_url    text        NOT NULL,
    version      bigint      NOT NULL,
    tmp_path     text        NOT NULL,
    writer       text        NOT NULL,
    epoch        bigint,
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    PRIMARY KEY (table_url, version)
);
CREATE INDEX IF NOT EXISTS commits_pending ON tributary_lake.commits (table_url) WHERE completed_at IS NULL;
CREATE TABLE IF NOT EXISTS tributary_lake.leases (
    resource    text        PRIMARY KEY,
    owner       text        NOT NULL,
    epoch       bigint      NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
";

impl Coordinator {
    /// Connects and creates the coordinator's tables when missing.
    pub async fn connect(dsn: &str) -> Result<Arc<Coordinator>> {
        let c = Arc::new(Coordinator {
            dsn: dsn.to_string(),
            client: Mutex::new(None),
        });
        let client = c.client().await?;
        // Several processes may start at once: serialise the DDL.
        client
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock(7243001); {SCHEMA} COMMIT;"
            ))
            .await
            .map_err(|e| db_error("creating the tributary_lake schema", e))?;
        Ok(c)
    }

    /// The connection, reconnecting after a failure.
    async fn client(&self) -> Result<Arc<tokio_postgres::Client>> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let mut cfg: tokio_postgres::Config = self
            .dsn
            .parse()
            .map_err(|e| Error::Config(format!("lake.coordinator_dsn: {e}")))?;
        cfg.connect_timeout(Duration::from_secs(10));
        cfg.application_name("tributary-lake");
        let (client, conn) = cfg
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| db_error("connecting to the commit coordinator", e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "commit coordinator connection closed");
            }
        });
        let client = Arc::new(client);
        *guard = Some(client.clone());
        Ok(client)
    }

    /// Claims `version` of a table for the commit in `tmp`.
    pub async fn claim(
        &self,
        table: &str,
        version: Version,
        tmp: &str,
        writer: &str,
        fence: Option<&Fence>,
    ) -> std::result::Result<(), ClaimError> {
        let client = self.client().await.map_err(ClaimError::Db)?;
        let v = version as i64;
        let (resource, owner, epoch) = match fence {
            Some(f) => (
                Some(f.resource.as_str()),
                Some(f.owner.as_str()),
                Some(f.epoch),
            ),
            None => (None, None, None),
        };
        // One statement, one transaction: the version rule, the lease check
        // (under a share lock, so a takeover waits for this claim or this
        // claim sees the takeover) and the insert.
        let inserted = client
            .query_opt(
                "WITH newest AS (
                     SELECT max(version) AS v FROM tributary_lake.commits WHERE table_url = $1
                 ), lease AS (
                     SELECT 1 FROM tributary_lake.leases
                      WHERE resource = $5 AND owner = $7 AND epoch = $6 AND expires_at > now()
                      FOR SHARE
                 )
                 INSERT INTO tributary_lake.commits (table_url, version, tmp_path, writer, epoch)
                 SELECT $1, $2, $3, $4, $6
                  WHERE ((SELECT v FROM newest) IS NULL OR $2 > (SELECT v FROM newest))
                    AND ($5::text IS NULL OR EXISTS (SELECT 1 FROM lease))
                 RETURNING (SELECT v FROM newest)",
                &[&table, &v, &tmp, &writer, &resource, &epoch, &owner],
            )
            .await;
        match inserted {
            Ok(Some(_)) => {
                if v % KEEP_CLAIMS == 0 && v > KEEP_CLAIMS {
                    let _ = client
                        .execute(
                            "DELETE FROM tributary_lake.commits WHERE table_url = $1 AND version < $2 AND completed_at IS NOT NULL",
                            &[&table, &(v - KEEP_CLAIMS)],
                        )
                        .await;
                }
                Ok(())
            }
            Ok(None) => {
                // Refused: find out which rule.
                let newest: Option<i64> = client
                    .query_one(
                        "SELECT max(version) FROM tributary_lake.commits WHERE table_url = $1",
                        &[&table],
                    )
                    .await
                    .map_err(|e| ClaimError::Db(db_error("reading the newest claim", e)))?
                    .get(0);
                if newest.is_some_and(|n| n >= v) {
                    return Err(ClaimError::Taken(version));
                }
                let Some(f) = fence else {
                    return Err(ClaimError::Db(Error::Internal(format!(
                        "a claim of version {version} without a fence was refused although no claim is at or above it"
                    ))));
                };
                Err(ClaimError::Fenced(Fenced {
                    resource: f.resource.clone(),
                    owner: f.owner.clone(),
                    epoch: f.epoch,
                }))
            }
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                Err(ClaimError::Taken(version))
            }
            Err(e) => Err(ClaimError::Db(db_error("claiming a commit", e))),
        }
    }

    async fn complete(&self, table: &str, version: Version) -> Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE tributary_lake.commits SET completed_at = now() WHERE table_url = $1 AND version = $2 AND completed_at IS NULL",
                &[&table, &(version as i64)],
            )
            .await
            .map_err(|e| db_error("completing a claim", e))?;
        Ok(())
    }

    /// Claims of a table whose `<version>.json` may not be written yet.
    async fn pending(&self, table: &str) -> Result<Vec<(Version, String)>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT version, tmp_path FROM tributary_lake.commits WHERE table_url = $1 AND completed_at IS NULL ORDER BY version",
                &[&table],
            )
            .await
            .map_err(|e| db_error("reading pending claims", e))?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i64>(0) as Version, r.get(1)))
            .collect())
    }

    /// Takes the lease when it is free or expired (or already ours). Returns
    /// the epoch when held.
    pub async fn try_acquire(
        &self,
        resource: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<i64>> {
        let ttl_s = ttl.as_secs_f64();
        let row = self
            .client()
            .await?
            .query_opt(
                "INSERT INTO tributary_lake.leases (resource, owner, epoch, expires_at)
                 VALUES ($1, $2, 1, now() + make_interval(secs => $3))
                 ON CONFLICT (resource) DO UPDATE
                    SET owner = EXCLUDED.owner, epoch = leases.epoch + 1,
                        acquired_at = now(), expires_at = EXCLUDED.expires_at
                  WHERE leases.expires_at <= now()
                 RETURNING epoch",
                &[&resource, &owner, &ttl_s],
            )
            .await
            .map_err(|e| db_error("acquiring a lease", e))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Extends a lease still held; false when it was lost (expired or taken).
    pub async fn renew(&self, fence: &Fence, ttl: Duration) -> Result<bool> {
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE tributary_lake.leases SET expires_at = now() + make_interval(secs => $4)
                  WHERE resource = $1 AND owner = $2 AND epoch = $3 AND expires_at > now()",
                &[
                    &fence.resource,
                    &fence.owner,
                    &fence.epoch,
                    &ttl.as_secs_f64(),
                ],
            )
            .await
            .map_err(|e| db_error("renewing a lease", e))?;
        Ok(n == 1)
    }

    /// Gives a lease up at once, so a standby takes over without waiting.
    /// After a restore into `root`: drops every claim of a table under
    /// `root` above its restored version (`restored`: table URL and
    /// version), and every claim of a table under `root` that was not
    /// restored (one made after the backup): writers continue from the
    /// restored versions. Trailing slashes do not matter. Returns how many.
    pub async fn forget_after_restore(
        &self,
        root: &str,
        restored: &[(String, i64)],
    ) -> Result<u64> {
        let client = self.client().await?;
        let urls: Vec<&str> = restored.iter().map(|(u, _)| u.as_str()).collect();
        let versions: Vec<i64> = restored.iter().map(|(_, v)| *v).collect();
        client
            .execute(
                "DELETE FROM tributary_lake.commits c
                  WHERE starts_with(c.table_url, rtrim($1, '/'))
                    AND c.version > coalesce(
                          (SELECT r.v FROM unnest($2::text[], $3::int8[]) AS r(u, v)
                            WHERE rtrim(r.u, '/') = rtrim(c.table_url, '/')),
                          -1)",
                &[&root, &urls, &versions],
            )
            .await
            .map_err(|e| db_error("dropping claims after a restore", e))
    }

    pub async fn release(&self, fence: &Fence) -> Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE tributary_lake.leases SET expires_at = now()
                  WHERE resource = $1 AND owner = $2 AND epoch = $3",
                &[&fence.resource, &fence.owner, &fence.epoch],
            )
            .await
            .map_err(|e| db_error("releasing a lease", e))?;
        Ok(())
    }

    /// Every lease whose resource starts with `prefix`.
    pub async fn leases(&self, prefix: &str) -> Result<Vec<LeaseInfo>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT resource, owner, epoch, extract(epoch FROM expires_at - now())::float8
                   FROM tributary_lake.leases WHERE starts_with(resource, $1) ORDER BY resource",
                &[&prefix],
            )
            .await
            .map_err(|e| db_error("reading leases", e))?;
        Ok(rows
            .iter()
            .map(|r| LeaseInfo {
                resource: r.get(0),
                owner: r.get(1),
                epoch: r.get(2),
                expires_in_s: r.get(3),
            })
            .collect())
    }
}

fn db_error(what: &str, source: tokio_postgres::Error) -> Error {
    Error::Coordinator {
        context: what.to_string(),
        source,
    }
}

/// Whether a retry can cure an error of the coordinator's database: a lost
/// or refused connection, a server shutting down or out of connection
/// slots, a serialization failure or deadlock. Anything else (a missing
/// privilege or table, bad credentials, a statement the server rejects) will
/// fail the same way again.
pub fn is_transient_db_error(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => is_transient_sqlstate(code),
        // No SQLSTATE: the connection failed (I/O, closed) or the client
        // refused something (bad configuration, a type mismatch).
        None => e.is_closed() || crate::caused_by_io(e),
    }
}

/// Whether a SQLSTATE is one a retry can cure: class 08 (connection
/// exception), 57P* (operator intervention: shutdown, crash, cannot connect
/// now), 53300 (too many connections), 40001 (serialization failure) and
/// 40P01 (deadlock detected).
pub fn is_transient_sqlstate(code: &SqlState) -> bool {
    let c = code.code();
    c.starts_with("08") || c.starts_with("57P") || matches!(c, "53300" | "40001" | "40P01")
}

/// What an error of the coordinator's database means for the operator:
/// nothing to add for one a retry cures; the SQLSTATE, and for a missing
/// privilege what to grant, for one it does not.
pub(crate) fn advice(e: &tokio_postgres::Error) -> String {
    if is_transient_db_error(e) {
        return String::new();
    }
    let not_retried = "a retry cannot cure this, so none is made";
    match e.code() {
        Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => format!(
            " (SQLSTATE 42501, insufficient privilege): the coordinator's role (lake.coordinator_dsn) must be able to create the schema tributary_lake and read and write its tables; grant that and restart; {not_retried}"
        ),
        Some(c) => format!(" (SQLSTATE {}): {not_retried}", c.code()),
        None => format!(": {not_retried}"),
    }
}

pub(crate) fn commit_path(version: Version) -> Path {
    Path::from(format!("_delta_log/{version:020}.json"))
}

/// A [`LogStore`] whose commits are claimed through the [`Coordinator`].
/// Reads go to the store as they are; a claimed version whose entry is
/// missing is finished first.
pub struct CoordinatedLogStore {
    inner: LogStoreRef,
    coordinator: Arc<LazyCoordinator>,
    /// The table's key in the coordinator (its URL).
    table: String,
    writer: String,
    fence: Option<Fence>,
}

impl CoordinatedLogStore {
    pub fn new(
        inner: LogStoreRef,
        coordinator: Arc<LazyCoordinator>,
        writer: String,
        fence: Option<Fence>,
    ) -> Self {
        let table = inner.config().location().to_string();
        CoordinatedLogStore {
            inner,
            coordinator,
            table,
            writer,
            fence,
        }
    }

    /// Writes the entries of claims that are not complete (a writer died
    /// between its claim and its copy). The temporary object of a claim stays
    /// until the claim is complete, so the copy always has its source.
    pub async fn finish_pending(&self) -> Result<usize> {
        let coordinator = self.coordinator.get().await?;
        let pending = coordinator.pending(&self.table).await?;
        let store = self.inner.object_store(None);
        for (version, tmp) in &pending {
            let target = commit_path(*version);
            if store.head(&target).await.is_err() {
                match store.copy(&Path::from(tmp.as_str()), &target).await {
                    Ok(()) => {
                        tracing::info!(table = %self.table, version, "finished a claimed commit whose entry was not written yet");
                    }
                    // Someone else (the claimant, or another repairer) wrote
                    // the entry meanwhile, and may have removed the
                    // temporary object: the entry is there.
                    Err(_) if store.head(&target).await.is_ok() => {}
                    Err(e) => {
                        return Err(Error::ObjectStore(format!("{}/{target}", self.table), e));
                    }
                }
            }
            coordinator.complete(&self.table, *version).await?;
            let _ = store.delete(&Path::from(tmp.as_str())).await;
        }
        Ok(pending.len())
    }

    /// [`Self::finish_pending`] for a reader of the log: before it looks
    /// for a version, every claimed one has its entry.
    async fn finish_pending_for_delta(&self) -> DeltaResult<()> {
        self.finish_pending()
            .await
            .map_err(|e| DeltaTableError::GenericError {
                source: Box::new(e),
            })?;
        Ok(())
    }
}

fn log_store_error(
    msg: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> TransactionError {
    TransactionError::LogStoreError {
        msg: msg.to_string(),
        source: Box::new(e),
    }
}

#[async_trait::async_trait]
impl LogStore for CoordinatedLogStore {
    fn name(&self) -> String {
        "TributaryCoordinatedLogStore".into()
    }

    async fn read_commit_entry(&self, version: Version) -> DeltaResult<Option<Bytes>> {
        if let Some(b) = self.inner.read_commit_entry(version).await? {
            return Ok(Some(b));
        }
        self.finish_pending_for_delta().await?;
        self.inner.read_commit_entry(version).await
    }

    async fn write_commit_entry(
        &self,
        version: Version,
        commit_or_bytes: CommitOrBytes,
        operation_id: Uuid,
    ) -> std::result::Result<(), TransactionError> {
        let CommitOrBytes::TmpCommit(tmp) = &commit_or_bytes else {
            // delta-rs hands bytes only to the log stores it knows by name.
            return Err(log_store_error(
                "the coordinated log store expects a temporary commit object",
                Error::Internal("delta-rs handed the coordinated log store commit bytes".into()),
            ));
        };
        let store = self.inner.object_store(Some(operation_id));
        let target = commit_path(version);
        let coordinator = match self.coordinator.get().await {
            Ok(c) => c,
            Err(e) => return Err(log_store_error("commit coordinator unavailable", e)),
        };
        // A version the store already has (a table written before the
        // coordinator knew it): never claim it. Checked before the claim:
        // after it, the entry may be ours, written by someone finishing it.
        if store.head(&target).await.is_ok() {
            // delta-rs retries the next version with the same temporary
            // object, so it stays.
            return Err(TransactionError::VersionAlreadyExists(version));
        }
        match coordinator
            .claim(
                &self.table,
                version,
                tmp.as_ref(),
                &self.writer,
                self.fence.as_ref(),
            )
            .await
        {
            Ok(()) => {}
            Err(ClaimError::Taken(v)) => {
                // Whoever holds the claim may have died before writing it:
                // finish it, so the retry sees that version.
                if let Err(e) = self.finish_pending().await {
                    tracing::warn!(error = %tributary_model::error_chain(&e), "finishing pending commits");
                }
                return Err(TransactionError::VersionAlreadyExists(v));
            }
            Err(ClaimError::Fenced(f)) => {
                let _ = store.delete(tmp).await;
                return Err(log_store_error("commit refused", f));
            }
            Err(e @ ClaimError::Db(_)) => {
                return Err(log_store_error("commit coordinator unavailable", e));
            }
        }
        if let Err(e) = store.copy(tmp, &target).await {
            // A repairer may have written it first (same bytes).
            if store.head(&target).await.is_err() {
                return Err(log_store_error("writing the claimed commit", e));
            }
        }
        coordinator
            .complete(&self.table, version)
            .await
            .map_err(|e| log_store_error("completing the claimed commit", e))?;
        let _ = store.delete(tmp).await;
        Ok(())
    }

    async fn abort_commit_entry(
        &self,
        _version: Version,
        _commit_or_bytes: CommitOrBytes,
        _operation_id: Uuid,
    ) -> std::result::Result<(), TransactionError> {
        // The temporary object stays: if its claim went through, it is what
        // finishes the commit, and deleting it could leave a claimed version
        // nobody can write. An unclaimed one is a small leftover.
        Ok(())
    }

    async fn get_latest_version(&self, start_version: Version) -> DeltaResult<Version> {
        self.finish_pending_for_delta().await?;
        self.inner.get_latest_version(start_version).await
    }

    fn object_store(&self, operation_id: Option<Uuid>) -> Arc<dyn ObjectStore> {
        self.inner.object_store(operation_id)
    }

    fn root_object_store(&self, operation_id: Option<Uuid>) -> Arc<dyn ObjectStore> {
        self.inner.root_object_store(operation_id)
    }

    fn config(&self) -> &LogStoreConfig {
        self.inner.config()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use deltalake::DeltaTableError;
    use tokio_postgres::error::SqlState;

    use super::*;

    #[test]
    fn sqlstates_a_retry_cures_are_told_from_the_rest() {
        for code in [
            SqlState::CONNECTION_FAILURE,
            SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
        ] {
            assert!(is_transient_sqlstate(&code), "{}", code.code());
        }
        for code in [
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::UNDEFINED_TABLE,
            SqlState::INVALID_PASSWORD,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            SqlState::UNIQUE_VIOLATION,
            SqlState::DISK_FULL,
            SqlState::SYNTAX_ERROR,
        ] {
            assert!(!is_transient_sqlstate(&code), "{}", code.code());
        }
    }

    /// A commit refused by the coordinator, as delta-rs hands it back.
    fn refused_commit(e: tokio_postgres::Error) -> Error {
        Error::Delta {
            table: "silver.t".into(),
            source: DeltaTableError::Transaction {
                source: log_store_error(
                    "commit coordinator unavailable",
                    ClaimError::Db(db_error("claiming a commit", e)),
                ),
            },
        }
    }

    #[tokio::test]
    async fn an_unreachable_coordinator_is_retried_and_a_refusing_one_is_not() {
        // Nothing listens on port 1: the connection is refused.
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(1)
            .user("x")
            .connect_timeout(Duration::from_secs(5));
        let unreachable = match cfg.connect(tokio_postgres::NoTls).await {
            Ok(_) => panic!("something answers on port 1"),
            Err(e) => e,
        };
        assert!(is_transient_db_error(&unreachable), "{unreachable:?}");
        let e = db_error("connecting to the commit coordinator", unreachable);
        assert!(e.is_transient() && !e.is_coordinator_refusal());
        assert_eq!(
            e.to_string(),
            "commit coordinator: connecting to the commit coordinator"
        );
        let unreachable = cfg.connect(tokio_postgres::NoTls).await.err().unwrap();
        let commit = refused_commit(unreachable);
        assert!(commit.is_transient() && !commit.is_coordinator_refusal());

        // An error no retry cures (here the client's own refusal of a bad
        // setting; a server's 42501 takes the same path by its SQLSTATE).
        let bad = || {
            "port=not-a-port"
                .parse::<tokio_postgres::Config>()
                .err()
                .unwrap()
        };
        assert!(!is_transient_db_error(&bad()));
        let e = db_error("acquiring a lease", bad());
        assert!(!e.is_transient() && e.is_coordinator_refusal());
        assert!(
            e.to_string()
                .contains("a retry cannot cure this, so none is made"),
            "{e}"
        );
        // Through delta-rs's commit error too: not retried.
        let commit = refused_commit(bad());
        assert!(!commit.is_transient() && commit.is_coordinator_refusal());
        assert!(!Error::Internal("x".into()).is_transient());
    }
}
