//! Checkpoints: a job's whole state and its consumed offsets, saved together
//! as one object, so a restart resumes without missing or doubling a window.
//!
//! A [`Checkpoint`] `N` holds the job's state `S` (operator state, the
//! reorder buffer, the watermark tracker, undrained late records) and the
//! next offset of every input partition consumed into that state. It is one
//! JSON object `<prefix>/<N, zero-padded to 20 digits>.json`, written with a
//! single `put`, which object stores make atomic (a reader sees the whole
//! object or none; `LocalFileSystem` writes a temporary file and renames it).
//!
//! The protocol, with output in Delta:
//!
//! 1. The job stops consuming at a point of its choosing (a batch, a
//!    watermark step) and saves checkpoint `N` = the last committed
//!    sequence + 1.
//! 2. It then commits its output for that step to Delta with the
//!    transaction marker `txn(app_id = job, version = N)`, in the same
//!    commit as the output (Delta commits are atomic and, with the
//!    coordinator, single-writer).
//! 3. After the commit it may [`CheckpointStore::prune`] checkpoints below
//!    `N`.
//!
//! On restart the job reads the `txn` version `N` of its app id from the
//! output table and [`CheckpointStore::load`]s exactly checkpoint `N` (not
//! [`CheckpointStore::latest`]): state and offsets are then those the
//! committed output was computed from. It seeks its consumers to the
//! checkpoint's offsets and continues. A checkpoint `N + 1` saved before a
//! crash whose output never committed is ignored, and the next save
//! overwrites it: its output is recomputed from `N`, with the same
//! deterministic results, so nothing is doubled (the output up to `N` is
//! not written again) and nothing is missed (everything after `N`'s offsets
//! is consumed again). With no `txn` yet, the job starts from empty state at
//! the beginning of its inputs.
//!
//! Why the checkpoint first: if the output committed first and the process
//! died before the save, the committed `txn` `N` would name a checkpoint that
//! does not exist. Saved first, a checkpoint can at worst exist without its
//! output, which the protocol ignores.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Next offsets per topic and partition.
pub type Offsets = BTreeMap<String, BTreeMap<i32, i64>>;

/// A job's state and offsets at one point (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint<S> {
    pub job: String,
    pub seq: u64,
    /// The next offset to consume, per topic and partition.
    pub offsets: Offsets,
    pub state: S,
}

/// Where a job's checkpoints live: one object per sequence under a prefix.
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

impl CheckpointStore {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path) -> Self {
        CheckpointStore { store, prefix }
    }

    /// The object of checkpoint `seq`.
    pub fn path(&self, seq: u64) -> Path {
        self.prefix.clone().join(format!("{seq:020}.json").as_str())
    }

    /// Writes checkpoint `seq` in one put (replacing one of the same
    /// sequence whose output never committed).
    pub async fn save<S: Serialize>(&self, checkpoint: &Checkpoint<S>) -> Result<()> {
        let path = self.path(checkpoint.seq);
        let body = serde_json::to_vec(checkpoint).map_err(|e| {
            Error::Internal(format!(
                "checkpoint {} does not serialise: {e}",
                checkpoint.seq
            ))
        })?;
        self.store
            .put(&path, PutPayload::from(body))
            .await
            .map_err(|source| Error::Store {
                context: format!("writing {path}"),
                source,
            })?;
        tracing::debug!(job = %checkpoint.job, seq = checkpoint.seq, %path, "checkpoint saved");
        Ok(())
    }

    /// Checkpoint `seq`, or `None` if there is none.
    pub async fn load<S: DeserializeOwned>(&self, seq: u64) -> Result<Option<Checkpoint<S>>> {
        let path = self.path(seq);
        let bytes = match self.store.get(&path).await {
            Ok(got) => got.bytes().await.map_err(|source| Error::Store {
                context: format!("reading {path}"),
                source,
            })?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => {
                return Err(Error::Store {
                    context: format!("reading {path}"),
                    source,
                });
            }
        };
        let c: Checkpoint<S> =
            serde_json::from_slice(&bytes).map_err(|e| Error::CheckpointFormat {
                path: path.to_string(),
                reason: e.to_string(),
            })?;
        if c.seq != seq {
            return Err(Error::CheckpointFormat {
                path: path.to_string(),
                reason: format!("it says it is checkpoint {}", c.seq),
            });
        }
        Ok(Some(c))
    }

    /// Every saved sequence, ascending (objects that are not checkpoints are
    /// ignored).
    pub async fn list(&self) -> Result<Vec<u64>> {
        let metas: Vec<_> = self
            .store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .map_err(|source| Error::Store {
                context: format!("listing {}", self.prefix),
                source,
            })?;
        let mut seqs: Vec<u64> = metas
            .iter()
            // Direct children only: `list` also yields deeper objects.
            .filter(|m| m.location.parts_count() == self.prefix.parts_count() + 1)
            .filter_map(|m| parse_name(m.location.filename()?))
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// The newest saved sequence. Informational: a restart loads the
    /// sequence its output committed, which may be older.
    pub async fn latest(&self) -> Result<Option<u64>> {
        Ok(self.list().await?.last().copied())
    }

    /// Deletes every checkpoint below `keep_from`; returns how many.
    pub async fn prune(&self, keep_from: u64) -> Result<usize> {
        let mut n = 0;
        for seq in self.list().await?.into_iter().filter(|s| *s < keep_from) {
            let path = self.path(seq);
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => n += 1,
                Err(source) => {
                    return Err(Error::Store {
                        context: format!("deleting {path}"),
                        source,
                    });
                }
            }
        }
        Ok(n)
    }
}

/// `00000000000000000042.json` -> 42.
fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".json")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use object_store::local::LocalFileSystem;
    use object_store::memory::InMemory;

    use super::*;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct State {
        counts: BTreeMap<String, u64>,
    }

    fn checkpoint(seq: u64, n: u64) -> Checkpoint<State> {
        Checkpoint {
            job: "fraud".into(),
            seq,
            offsets: BTreeMap::from([(
                "tributary.orders.orders".to_string(),
                BTreeMap::from([(0, 10 + n as i64), (1, 3)]),
            )]),
            state: State {
                counts: BTreeMap::from([("c1".to_string(), n)]),
            },
        }
    }

    async fn roundtrip(store: Arc<dyn ObjectStore>) {
        let cs = CheckpointStore::new(store.clone(), Path::from("checkpoints/fraud"));
        assert_eq!(cs.latest().await.unwrap(), None);
        assert_eq!(cs.load::<State>(1).await.unwrap(), None);
        for seq in 1..=3 {
            cs.save(&checkpoint(seq, seq * 100)).await.unwrap();
        }
        // Saved again (an uncommitted one overwritten by the next run).
        cs.save(&checkpoint(3, 7)).await.unwrap();
        assert_eq!(cs.latest().await.unwrap(), Some(3));
        assert_eq!(cs.load(2).await.unwrap(), Some(checkpoint(2, 200)));
        assert_eq!(cs.load(3).await.unwrap(), Some(checkpoint(3, 7)));
        // A stranger in the folder and a neighbour job are not checkpoints.
        store
            .put(
                &Path::from("checkpoints/fraud/notes.txt"),
                PutPayload::from("x"),
            )
            .await
            .unwrap();
        store
            .put(
                &Path::from("checkpoints/fraud-2/00000000000000000009.json"),
                PutPayload::from("{}"),
            )
            .await
            .unwrap();
        assert_eq!(cs.list().await.unwrap(), vec![1, 2, 3]);
        assert_eq!(cs.prune(3).await.unwrap(), 2);
        assert_eq!(cs.list().await.unwrap(), vec![3]);
        assert_eq!(cs.load::<State>(1).await.unwrap(), None);
        assert_eq!(
            cs.path(42).to_string(),
            "checkpoints/fraud/00000000000000000042.json"
        );
        // A damaged object names itself.
        store
            .put(&cs.path(4), PutPayload::from("{\"job\":"))
            .await
            .unwrap();
        let e = cs.load::<State>(4).await.unwrap_err().to_string();
        assert!(e.contains("00000000000000000004.json"), "{e}");
        // One stored under the wrong name is refused.
        store
            .put(
                &cs.path(5),
                PutPayload::from(serde_json::to_vec(&checkpoint(6, 1)).unwrap()),
            )
            .await
            .unwrap();
        let e = cs.load::<State>(5).await.unwrap_err().to_string();
        assert!(e.contains("checkpoint 6"), "{e}");
    }

    #[tokio::test]
    async fn checkpoints_roundtrip_in_memory() {
        roundtrip(Arc::new(InMemory::new())).await;
    }

    #[tokio::test]
    async fn checkpoints_roundtrip_on_a_local_folder() {
        let dir = tempfile::tempdir().unwrap();
        roundtrip(Arc::new(
            LocalFileSystem::new_with_prefix(dir.path()).unwrap(),
        ))
        .await;
        assert!(
            dir.path()
                .join("checkpoints/fraud/00000000000000000003.json")
                .exists()
        );
    }

    #[test]
    fn only_twenty_digit_names_are_checkpoints() {
        assert_eq!(parse_name("00000000000000000042.json"), Some(42));
        assert_eq!(parse_name("42.json"), None);
        assert_eq!(parse_name("0000000000000000004x.json"), None);
        assert_eq!(parse_name("00000000000000000042.json.tmp"), None);
    }
}
