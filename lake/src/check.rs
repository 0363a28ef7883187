//! Whether the lake's store gives what Delta's commit protocol rests on.
//!
//! Two writers of one Delta table are kept apart only by the store refusing
//! a second create of the same `_delta_log/<version>.json`
//! (`PutMode::Create`, `If-None-Match: *` on S3). A store that lets two
//! creators of one key both succeed loses one writer's commit without
//! either of them noticing. [`check_store`] tries this, and the consistency
//! a reader needs, on scratch keys under the lake root and reports what it
//! saw; it never touches a table.
//!
//! ```no_run
//! # async fn f(lake: tributary_lake::Lake) -> tributary_lake::Result<()> {
//! use tributary_lake::check::{CheckOptions, check_store};
//! let report = check_store(&lake, &CheckOptions::default()).await?;
//! println!("{report}");
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use serde::Serialize;

use crate::{Error, Lake, Result};

/// The folder under the lake root that holds the scratch keys of a check.
const SCRATCH_DIR: &str = "_tributary_check";

/// Size of each racing creator's object: that of a large Delta commit. A
/// store that checks for the key and then writes leaves a window as long
/// as the write; a bigger object makes it easier to see.
const PAYLOAD_BYTES: usize = 64 * 1024;

/// How hard [`check_store`] tries.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Concurrent creators racing for one key.
    pub creators: usize,
    /// Races, each for a fresh key. Where concurrent creates slip through,
    /// how many do varies from race to race, and one race alone can end
    /// with a single winner by luck.
    pub rounds: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            creators: 20,
            rounds: 10,
        }
    }
}

/// What one run of [`check_store`] saw.
#[derive(Clone, Debug, Serialize)]
pub struct StoreCheck {
    /// The lake root that was checked.
    pub root: String,
    /// The scratch folder the check wrote to (deleted afterwards).
    pub scratch: String,
    /// A read right after a write returned what was written.
    pub read_after_write: bool,
    /// A read right after an overwrite returned the new bytes.
    pub overwrite_visible: bool,
    /// A listing right after the writes showed every written key.
    pub list_after_write: bool,
    /// A create of a new key succeeded.
    pub create_new_key: bool,
    /// A second create of a key that exists was refused (`AlreadyExists`).
    pub sequential_create_refused: bool,
    /// Concurrent creates of fresh keys.
    pub race: CreateRace,
    /// The scratch keys are gone again.
    pub cleaned_up: bool,
    /// Errors other than the refusals the check expects, in the order seen.
    pub problems: Vec<String>,
    /// The store alone keeps several Delta writers of one table apart.
    pub safe_without_coordinator: bool,
}

/// The outcome of rounds of `creators` concurrent `PutMode::Create`, each
/// round of a fresh key.
#[derive(Clone, Debug, Serialize)]
pub struct CreateRace {
    pub creators: usize,
    /// Creates that returned success, per round.
    pub won: Vec<usize>,
    /// The most winners of any round.
    pub max_won: usize,
    /// Creates refused because the key existed, over all rounds.
    pub refused: usize,
    /// Creates that failed otherwise (see `problems`), over all rounds.
    pub failed: usize,
    /// After every round, the key holds the bytes of one of its winners.
    pub content_from_a_winner: bool,
}

impl CreateRace {
    /// Every round had exactly one winner and no other failure.
    pub fn exclusive(&self) -> bool {
        !self.won.is_empty() && self.won.iter().all(|&w| w == 1) && self.failed == 0
    }
}

/// One round of the race.
struct Round {
    won: usize,
    refused: usize,
    failed: usize,
    content_from_a_winner: bool,
}

impl StoreCheck {
    /// One line on what the result means for running Delta writers.
    pub fn verdict(&self) -> &'static str {
        if self.safe_without_coordinator {
            "safe for several writers without a coordinator: the store refuses every second create of a key"
        } else {
            "not safe for several writers on its own: Delta commits need tributary's commit coordinator (lake.coordinator_dsn)"
        }
    }
}

/// Checks read-after-write, overwrite visibility, a sequential second
/// create, rounds of `creators` concurrent creates of one fresh key, and
/// list-after-write, all on scratch keys under
/// `<root>/_tributary_check/<id>/`, which it deletes afterwards.
///
/// Returns an error only when the store cannot be used at all (the first
/// write fails); everything after that is reported in [`StoreCheck`].
pub async fn check_store(lake: &Lake, options: &CheckOptions) -> Result<StoreCheck> {
    let CheckOptions { creators, rounds } = *options;
    if creators < 2 {
        return Err(Error::Config(format!(
            "a create race needs at least 2 creators, not {creators}"
        )));
    }
    if rounds == 0 {
        return Err(Error::Config("a create race needs at least 1 round".into()));
    }
    let (store, base) = lake.object_store()?;
    let store: Arc<dyn ObjectStore> = Arc::from(store);
    let id = uuid::Uuid::new_v4().simple().to_string();
    let scratch = base.join(SCRATCH_DIR).join(id.as_str());
    let mut problems = Vec::new();

    // Read-after-write. A failure to write here means the store is not
    // reachable or not writable: the check cannot run.
    let plain = scratch.clone().join("plain");
    let first = payload("first write", 0);
    store
        .put(&plain, PutPayload::from(first.clone()))
        .await
        .map_err(|e| Error::ObjectStore(plain.to_string(), e))?;
    let read_after_write = reads_back(&*store, &plain, &first, &mut problems).await;

    // Overwrite visibility.
    let second = payload("overwrite", 0);
    let overwrite_visible = match store.put(&plain, PutPayload::from(second.clone())).await {
        Ok(_) => reads_back(&*store, &plain, &second, &mut problems).await,
        Err(e) => {
            problems.push(format!("overwrite of {plain}: {e}"));
            false
        }
    };

    // A sequential second create of one key.
    let once = scratch.clone().join("create-once");
    let create_new_key = match create(&*store, &once, payload("create once", 0)).await {
        Ok(()) => true,
        Err(e) => {
            problems.push(format!("create of new key {once}: {e}"));
            false
        }
    };
    let sequential_create_refused = match create(&*store, &once, payload("create twice", 1)).await {
        Ok(()) => false,
        Err(object_store::Error::AlreadyExists { .. }) => true,
        Err(e) => {
            problems.push(format!("second create of {once}: {e}"));
            false
        }
    };

    // List-after-write covers every key written so far.
    let mut expected = vec![plain.clone(), once.clone()];
    let mut race = CreateRace {
        creators,
        won: Vec::with_capacity(rounds),
        max_won: 0,
        refused: 0,
        failed: 0,
        content_from_a_winner: true,
    };
    for n in 0..rounds {
        let contested = scratch.clone().join(format!("race-{n}"));
        let round = race_once(&store, &contested, creators, &mut problems).await;
        race.won.push(round.won);
        race.max_won = race.max_won.max(round.won);
        race.refused += round.refused;
        race.failed += round.failed;
        race.content_from_a_winner &= round.content_from_a_winner;
        if round.won > 0 {
            expected.push(contested);
        }
    }

    let list_after_write = match list(&*store, &scratch).await {
        Ok(listed) => expected.iter().all(|k| listed.contains(k)),
        Err(e) => {
            problems.push(format!("listing {scratch}: {e}"));
            false
        }
    };

    let mut cleaned_up = clean_up(&*store, &scratch, &mut problems).await;
    // A local folder keeps the emptied directories; object stores have none.
    if let Ok(dir) = lake.root().to_file_path() {
        let dir = dir.join(SCRATCH_DIR);
        if let Err(e) = std::fs::remove_dir(dir.join(&id)) {
            problems.push(format!("removing {}: {e}", dir.join(&id).display()));
            cleaned_up = false;
        }
        // Another check may be running: its folder keeps this one.
        let _ = std::fs::remove_dir(&dir);
    }

    let safe_without_coordinator = race.exclusive()
        && race.content_from_a_winner
        && create_new_key
        && sequential_create_refused
        && read_after_write
        && overwrite_visible
        && list_after_write;
    Ok(StoreCheck {
        root: lake.root().to_string(),
        scratch: scratch.to_string(),
        read_after_write,
        overwrite_visible,
        list_after_write,
        create_new_key,
        sequential_create_refused,
        race,
        cleaned_up,
        problems,
        safe_without_coordinator,
    })
}

/// `creators` tasks released together by a barrier, each creating `key`
/// with bytes of its own. Each first asks for the key's metadata, so the
/// client holds a warm connection per creator and the creates leave at
/// the same moment instead of queueing behind connection set-up.
async fn race_once(
    store: &Arc<dyn ObjectStore>,
    key: &Path,
    creators: usize,
    problems: &mut Vec<String>,
) -> Round {
    let barrier = Arc::new(tokio::sync::Barrier::new(creators));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..creators {
        let (store, key, barrier) = (Arc::clone(store), key.clone(), Arc::clone(&barrier));
        tasks.spawn(async move {
            let bytes = payload("race", i);
            // Expected to fail: the key does not exist yet.
            let _ = store.head(&key).await;
            barrier.wait().await;
            (i, create(&*store, &key, bytes).await)
        });
    }
    let mut winners = Vec::new();
    let (mut refused, mut failed) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, Ok(()))) => winners.push(i),
            Ok((_, Err(object_store::Error::AlreadyExists { .. }))) => refused += 1,
            Ok((i, Err(e))) => {
                failed += 1;
                problems.push(format!("creator {i} of {key}: {e}"));
            }
            Err(e) => {
                failed += 1;
                problems.push(format!("creator task of {key}: {e}"));
            }
        }
    }
    let content_from_a_winner = match store.get(key).await {
        Ok(r) => match r.bytes().await {
            Ok(got) => winners.iter().any(|&i| got.as_ref() == payload("race", i)),
            Err(e) => {
                problems.push(format!("reading {key} after the race: {e}"));
                false
            }
        },
        // No winner, nothing to read.
        Err(object_store::Error::NotFound { .. }) if winners.is_empty() => false,
        Err(e) => {
            problems.push(format!("reading {key} after the race: {e}"));
            false
        }
    };
    Round {
        won: winners.len(),
        refused,
        failed,
        content_from_a_winner,
    }
}

async fn create(store: &dyn ObjectStore, key: &Path, bytes: Vec<u8>) -> object_store::Result<()> {
    store
        .put_opts(key, PutPayload::from(bytes), PutMode::Create.into())
        .await
        .map(drop)
}

async fn reads_back(
    store: &dyn ObjectStore,
    key: &Path,
    want: &[u8],
    problems: &mut Vec<String>,
) -> bool {
    match store.get(key).await {
        Ok(r) => match r.bytes().await {
            Ok(got) => got.as_ref() == want,
            Err(e) => {
                problems.push(format!("reading {key}: {e}"));
                false
            }
        },
        Err(e) => {
            problems.push(format!("reading {key}: {e}"));
            false
        }
    }
}

async fn list(store: &dyn ObjectStore, prefix: &Path) -> object_store::Result<Vec<Path>> {
    store
        .list(Some(prefix))
        .map_ok(|m| m.location)
        .try_collect()
        .await
}

/// Deletes everything under `scratch` and confirms a listing finds nothing.
async fn clean_up(store: &dyn ObjectStore, scratch: &Path, problems: &mut Vec<String>) -> bool {
    let keys = match list(store, scratch).await {
        Ok(keys) => keys,
        Err(e) => {
            problems.push(format!("listing {scratch} to clean up: {e}"));
            return false;
        }
    };
    for key in keys {
        match store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => problems.push(format!("deleting {key}: {e}")),
        }
    }
    match list(store, scratch).await {
        Ok(left) => left.is_empty(),
        Err(e) => {
            problems.push(format!("listing {scratch} after clean-up: {e}"));
            false
        }
    }
}

/// Bytes that name their writer, padded to [`PAYLOAD_BYTES`].
fn payload(what: &str, writer: usize) -> Vec<u8> {
    let mut bytes = format!("{{\"check\":\"{what}\",\"writer\":{writer}}}\n").into_bytes();
    bytes.resize(PAYLOAD_BYTES.max(bytes.len()), b' ');
    bytes
}

impl fmt::Display for StoreCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes_no = |b: bool| if b { "yes" } else { "NO" };
        writeln!(f, "store check of {}", self.root)?;
        let won: Vec<String> = self.race.won.iter().map(usize::to_string).collect();
        writeln!(
            f,
            "  concurrent creates of one key:   {} creators, {} rounds; winners per round: {}{}",
            self.race.creators,
            self.race.won.len(),
            won.join(", "),
            if self.race.exclusive() {
                ""
            } else {
                "  (exactly one must win)"
            }
        )?;
        if self.race.failed > 0 {
            writeln!(f, "  creates failed otherwise:        {}", self.race.failed)?;
        }
        writeln!(
            f,
            "  create of a new key succeeds:    {}",
            yes_no(self.create_new_key)
        )?;
        writeln!(
            f,
            "  second create of a key refused:  {}",
            yes_no(self.sequential_create_refused)
        )?;
        writeln!(
            f,
            "  read after write:                {}",
            yes_no(self.read_after_write)
        )?;
        writeln!(
            f,
            "  overwrite visible at once:       {}",
            yes_no(self.overwrite_visible)
        )?;
        writeln!(
            f,
            "  list after write:                {}",
            yes_no(self.list_after_write)
        )?;
        writeln!(
            f,
            "  scratch keys cleaned up:         {}",
            yes_no(self.cleaned_up)
        )?;
        for p in &self.problems {
            writeln!(f, "  problem: {p}")?;
        }
        writeln!(f, "verdict: {}", self.verdict())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::new_lake;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_local_folder_is_safe_and_left_clean() {
        let (_dir, lake) = new_lake();
        let options = CheckOptions {
            creators: 16,
            rounds: 3,
        };
        let report = check_store(&lake, &options).await.unwrap();
        assert_eq!(report.race.won, vec![1, 1, 1], "{report}");
        assert_eq!(report.race.refused, 3 * 15, "{report}");
        assert!(report.safe_without_coordinator, "{report}");
        assert!(report.cleaned_up, "{report}");
        assert!(report.problems.is_empty(), "{report}");
    }

    #[tokio::test]
    async fn one_creator_or_no_round_is_no_race() {
        let (_dir, lake) = new_lake();
        for (creators, rounds) in [(1, 10), (20, 0)] {
            let options = CheckOptions { creators, rounds };
            assert!(matches!(
                check_store(&lake, &options).await,
                Err(Error::Config(_))
            ));
        }
    }

    #[test]
    fn payloads_differ_per_writer_and_have_commit_size() {
        assert_ne!(payload("race", 1), payload("race", 2));
        assert_eq!(payload("race", 1).len(), PAYLOAD_BYTES);
    }
}
