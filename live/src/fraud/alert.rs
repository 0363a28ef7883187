//! A fraud alert and its deterministic id.
//!
//! The id is `<rule>/customer/<id>/<window end µs>`: the rule, the key it
//! watches and the end of the window that tripped it. A rule that looks at
//! one event (a spike, a mismatch) uses that event's time as the end. The
//! same input gives the same ids on every run, after any restart, and in
//! the batch oracle, which is what lets every sink deduplicate by id and
//! the benchmark compare sets of ids.

use serde::{Deserialize, Serialize};
use tributary_model::pgtype::format_utc_micros;
use tributary_stream::EventTime;

use super::rules::RuleName;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: String,
    pub rule: RuleName,
    pub customer_id: i64,
    pub window_start_us: EventTime,
    pub window_end_us: EventTime,
    /// The order the alert is about, when one tripped it.
    pub order_id: Option<i64>,
    /// What tripped the rule, for a person (counts, amounts, countries).
    pub detail: String,
    /// Source commit time of the event that tripped it.
    pub source_commit_us: i64,
    /// When the detector raised it (processing time).
    pub detected_at_us: i64,
}

impl Alert {
    pub fn id_of(rule: RuleName, customer_id: i64, window_end_us: EventTime) -> String {
        format!("{rule}/customer/{customer_id}/{window_end_us}")
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an alert serialises")
    }

    /// One line for `tributary fraud tail`.
    pub fn line(&self) -> String {
        let order = self
            .order_id
            .map(|o| format!(" order {o}"))
            .unwrap_or_default();
        format!(
            "{}  {:<27} customer {}{order}  {}  [{}]",
            format_utc_micros(self.source_commit_us),
            self.rule.as_str(),
            self.customer_id,
            self.detail,
            self.id
        )
    }
}
