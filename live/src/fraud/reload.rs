//! The rules file, reloaded while the detector runs.
//!
//! Checked about once a second: when the file's contents changed, the new
//! text is parsed and checked as a whole. Good rules are put in force from
//! the next event on; a bad file is refused with the error naming the rule
//! and field, logged and counted (`tributary_live_fraud_rules_reloads_total
//! {result="refused"}`), and the rules in force keep running. The same bad
//! contents are refused once, not every second.

use std::path::PathBuf;

use super::rules::Rules;
use crate::Result;
use crate::metrics::RULES_RELOADS;

pub struct RulesFile {
    path: PathBuf,
    /// The contents last looked at (applied or refused).
    seen: String,
}

impl RulesFile {
    /// Reads the file's first rules; a bad file is an error here.
    pub fn open(path: PathBuf) -> Result<(RulesFile, Rules)> {
        let rules = Rules::load(&path)?;
        let seen = std::fs::read_to_string(&path).unwrap_or_default();
        Ok((RulesFile { path, seen }, rules))
    }

    /// New rules when the file changed and they are good; `None` otherwise
    /// (unchanged, unreadable for now, or refused).
    pub fn check(&mut self) -> Option<Rules> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                if !self.seen.is_empty() {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot read the rules file; the rules in force keep running");
                    self.seen.clear();
                }
                return None;
            }
        };
        if text == self.seen {
            return None;
        }
        self.seen = text;
        match Rules::parse(&self.seen, &self.path.display().to_string()) {
            Ok(rules) => {
                RULES_RELOADS.with_label_values(&["applied"]).inc();
                tracing::info!(path = %self.path.display(), rules = ?rules.enabled(), "fraud rules reloaded");
                Some(rules)
            }
            Err(e) => {
                RULES_RELOADS.with_label_values(&["refused"]).inc();
                tracing::error!(error = %e, "refusing the changed rules file; the rules in force keep running");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fraud::rules::{DEFAULT_RULES, RuleName};

    #[test]
    fn a_bad_file_is_refused_and_the_rules_in_force_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fraud.toml");
        std::fs::write(&path, DEFAULT_RULES).unwrap();
        let (mut file, rules) = RulesFile::open(path.clone()).unwrap();
        assert_eq!(rules.enabled().len(), 7);
        assert_eq!(file.check(), None, "unchanged");
        std::fs::write(&path, "[velocity]\nmax_orders = -1\nwindow = \"1m\"\n").unwrap();
        assert_eq!(file.check(), None, "refused");
        std::fs::write(&path, "[country_mismatch]\n").unwrap();
        let new = file.check().expect("good rules are applied");
        assert_eq!(new.enabled(), vec![RuleName::CountryMismatch]);
        std::fs::write(&path, "[nope]\n").unwrap();
        assert!(
            RulesFile::open(path).is_err(),
            "a bad file at start is an error"
        );
    }
}
