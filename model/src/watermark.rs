//! The CDC watermark: the message a reader publishes on
//! `<prefix>.<db>._watermarks` once the broker has acknowledged every change
//! of its shard up to a commit.
//!
//! Promise: a watermark `{db, shard, lsn: L, commit_ts_us: t}` is published
//! only after every change of that shard with commit LSN <= L is durable in
//! Kafka. So a consumer that reads the change topics' end offsets *after*
//! the watermark arrived holds every change of the shard committed at or
//! before `t` once it has consumed up to those offsets. Watermarks of one
//! shard are keyed by the shard, so they stay in order on one partition.
//!
//! ```
//! use tributary_model::watermark::{Watermark, watermark_topic};
//! let w = Watermark::new("orders", 1, "0/16B3748".parse().unwrap(), 1_700_000_000_000_000, 1_700_000_000_500_000);
//! let back = Watermark::from_json(&w.to_json()).unwrap();
//! assert_eq!(back, w);
//! assert_eq!(watermark_topic("tributary", "orders"), "tributary.orders._watermarks");
//! ```

use serde::{Deserialize, Serialize};

use crate::domain::topic_name;
use crate::lsn::Lsn;
use crate::pgtype::format_utc_micros;
use crate::{Error, Result};

/// The table name part of a database's watermark topic.
pub const WATERMARK_TABLE: &str = "_watermarks";

/// The topic of a database's watermarks: one message per shard every
/// heartbeat that moved the shard's acknowledged commit.
pub fn watermark_topic(prefix: &str, db: &str) -> String {
    topic_name(prefix, db, WATERMARK_TABLE)
}

/// One watermark, as JSON on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// Logical database (`orders`, `catalog`).
    pub db: String,
    pub shard: u32,
    /// End LSN of the newest commit whose changes are all durable, `X/Y`.
    pub lsn: String,
    /// That commit's time, microseconds since the Unix epoch.
    pub commit_ts_us: i64,
    /// The same instant as RFC 3339 text, for people reading the topic.
    #[serde(default)]
    pub commit_ts: String,
    /// When the reader published it, microseconds since the Unix epoch.
    #[serde(default)]
    pub emitted_at_us: i64,
}

impl Watermark {
    pub fn new(db: &str, shard: u32, lsn: Lsn, commit_ts_us: i64, emitted_at_us: i64) -> Self {
        Watermark {
            db: db.to_string(),
            shard,
            lsn: lsn.to_string(),
            commit_ts_us,
            commit_ts: format_utc_micros(commit_ts_us),
            emitted_at_us,
        }
    }

    /// The message key: the shard, so one shard's watermarks keep their order.
    pub fn key(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "shard": self.shard }))
            .expect("a JSON object of one integer serialises")
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a watermark serialises")
    }

    /// Parses a watermark message; the error says what was wrong.
    pub fn from_json(payload: &[u8]) -> Result<Self> {
        let w: Watermark = serde_json::from_slice(payload)
            .map_err(|e| Error::InvalidEvent(format!("not a watermark: {e}")))?;
        w.lsn()?;
        Ok(w)
    }

    /// The commit LSN.
    pub fn lsn(&self) -> Result<Lsn> {
        self.lsn.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_older_readers_wrote_and_refuses_garbage() {
        let old = br#"{"db":"orders","shard":0,"lsn":"0/10","commit_ts_us":5}"#;
        let w = Watermark::from_json(old).unwrap();
        assert_eq!((w.shard, w.commit_ts_us), (0, 5));
        assert!(Watermark::from_json(b"{}").is_err());
        let bad_lsn = br#"{"db":"orders","shard":0,"lsn":"nope","commit_ts_us":5}"#;
        assert!(Watermark::from_json(bad_lsn).is_err());
        assert_eq!(w.key(), br#"{"shard":0}"#);
    }
}
