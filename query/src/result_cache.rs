//! Results kept per statement and reused while the tables they read have not
//! moved.
//!
//! A dashboard asks the same statements again and again; over unchanged
//! tables the answer is the same. The cache keys a result by the statement's
//! text as the parser prints it (so spacing and case of keywords do not
//! matter) and keeps, with it, the version of every lake table the plan
//! opened. A lookup by text asks the store whether each of those tables is
//! still at that version ([`Lake::is_latest`]: two `HEAD`s of log entries,
//! all tables at once) and answers only when all are: a new version of any
//! table read invalidates the result, without TTLs and without the
//! pipelines having to tell anyone. A caller that holds a plan (the wire
//! server's prepared statements) looks up by the plan's own versions
//! instead, with no I/O: a result kept for exactly those versions is what
//! running the plan would give.
//!
//! What is never kept, because its answer can change while no table does:
//!
//! - a statement that is not a query (`EXPLAIN`, `SHOW`, `SET`, ...);
//! - a plan with a function that is not immutable (`now()`, `random()`,
//!   `current_date`, ...);
//! - a plan that scans anything but lake tables opened at their newest
//!   version (`information_schema`, time travel, `pg_catalog`): such scans
//!   leave no version to check.
//!
//! Memory is bounded by `[sql] result_cache` (bytes of Arrow arrays);
//! the least recently used results go first, and a result larger than a
//! quarter of the budget is not kept. Results are Arrow batches whose
//! buffers are shared, so a hit copies no data.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use tributary_lake::Lake;

use crate::session::QueryResult;

/// One lake table a plan opened, at the version it was opened at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Read {
    pub layer: &'static str,
    pub table: String,
    pub version: u64,
}

tokio::task_local! {
    /// The tables opened while planning one statement (see
    /// [`crate::lake_schema::LakeSchema::open`]); DataFusion resolves a
    /// statement's tables in the planning task, so a task-local sees them
    /// all.
    pub(crate) static READS: Arc<Mutex<Vec<Read>>>;
}

/// Hits, misses and invalidations since the session started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Answers from the cache.
    pub hits: u64,
    /// Statements run because no usable result was kept.
    pub misses: u64,
    /// Kept results dropped because a table they read has a newer version.
    pub invalidated: u64,
    /// Results kept now, and their size in bytes.
    pub entries: usize,
    pub bytes: usize,
}

struct Entry {
    reads: Vec<Read>,
    result: QueryResult,
    bytes: usize,
    /// The lookup counter at the last use (least recently used goes first).
    used: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    bytes: usize,
    clock: u64,
}

/// The session's result cache (see the module docs).
pub(crate) struct ResultCache {
    budget: usize,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidated: AtomicU64,
}

impl ResultCache {
    /// A cache of at most `budget` bytes; 0 keeps nothing.
    pub(crate) fn new(budget: usize) -> Self {
        ResultCache {
            budget,
            inner: Mutex::new(Inner::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidated: AtomicU64::new(0),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.budget > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent map (every
        // change is one insert or remove); keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The kept result of `key` when no table it read has moved since.
    pub(crate) async fn get(&self, key: &str, lake: &Lake) -> Option<QueryResult> {
        let reads = self.lock().entries.get(key).map(|e| e.reads.clone());
        let Some(reads) = reads else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if let Some(r) = moved(&reads, lake).await {
            let mut inner = self.lock();
            // Only the entry that was checked (a newer one may have
            // replaced it meanwhile).
            if inner.entries.get(key).is_some_and(|e| e.reads == reads)
                && let Some(old) = inner.entries.remove(key)
            {
                inner.bytes -= old.bytes;
            }
            drop(inner);
            tracing::debug!(layer = r.layer, table = %r.table, version = r.version, "cached result invalidated by a newer version");
            self.invalidated.fetch_add(1, Ordering::Relaxed);
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.get_at(key, &reads)
    }

    /// The kept result of `key` when it was kept for exactly the table
    /// versions `reads` (no I/O: for a caller whose plan reads those).
    pub(crate) fn get_at(&self, key: &str, reads: &[Read]) -> Option<QueryResult> {
        let mut inner = self.lock();
        inner.clock += 1;
        let clock = inner.clock;
        let Some(entry) = inner.entries.get_mut(key).filter(|e| e.reads == reads) else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        entry.used = clock;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(entry.result.clone())
    }

    /// Keeps `result` of `key`, which read `reads`, evicting the least
    /// recently used results to stay within the budget.
    pub(crate) fn put(&self, key: String, reads: Vec<Read>, result: &QueryResult) {
        let bytes = key.len()
            + result
                .1
                .iter()
                .map(RecordBatch::get_array_memory_size)
                .sum::<usize>();
        if bytes > self.budget / 4 {
            return;
        }
        let mut inner = self.lock();
        inner.clock += 1;
        let used = inner.clock;
        if let Some(old) = inner.entries.remove(&key) {
            inner.bytes -= old.bytes;
        }
        while inner.bytes + bytes > self.budget {
            let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            let gone = inner.entries.remove(&oldest).expect("just found");
            inner.bytes -= gone.bytes;
        }
        inner.bytes += bytes;
        inner.entries.insert(
            key,
            Entry {
                reads,
                result: result.clone(),
                bytes,
                used,
            },
        );
    }

    pub(crate) fn clear(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.bytes = 0;
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            invalidated: self.invalidated.load(Ordering::Relaxed),
            entries: inner.entries.len(),
            bytes: inner.bytes,
        }
    }
}

/// The first of `reads` whose table has a newer version than the one read
/// (or whose store did not answer), asking about all of them at once.
pub(crate) async fn moved<'a>(reads: &'a [Read], lake: &Lake) -> Option<&'a Read> {
    let checks = reads
        .iter()
        .map(|r| lake.is_latest(r.layer, &r.table, r.version));
    let latest = futures::future::join_all(checks).await;
    reads
        .iter()
        .zip(latest)
        .find(|(_, latest)| !matches!(latest, Ok(true)))
        .map(|(r, _)| r)
}

/// Whether a plan's result can be kept: every scan is one of `reads` (the
/// lake tables it opened) and every function is immutable.
pub(crate) fn keepable(plan: &LogicalPlan, reads: &[Read], default_schema: &str) -> bool {
    let mut ok = true;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let schema = scan.table_name.schema().unwrap_or(default_schema);
            if !reads
                .iter()
                .any(|r| r.layer == schema && r.table == scan.table_name.table())
            {
                ok = false;
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        node.apply_expressions(|e| {
            e.apply(|e| {
                if let Expr::ScalarFunction(f) = e
                    && f.func.signature().volatility != Volatility::Immutable
                {
                    ok = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })?;
        Ok(if ok {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    ok
}
