//! Precision and recall of the detector's alerts against the load
//! generator's labels.
//!
//! An incident labelled `fraud` with pattern P is *detected* when some alert
//! of rule P names its customer. Precision of rule P = its alerts on
//! customers of fraud incidents of pattern P / all its alerts; an alert on
//! any other customer (plain traffic, a benign look-alike, an incident of
//! another pattern) is a false positive. Alerts on the customer of an
//! incident labelled `incomplete` (it did not go as planned, so what it did
//! is unknown) are left out of precision and counted apart.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use tributary_live::fraud::rules::RuleName;

use crate::{Error, Result, io};

/// One line of the labels file (fields the score needs).
#[derive(Clone, Debug, Deserialize)]
pub struct Label {
    pub incident: String,
    pub label: String,
    pub pattern: String,
    pub customer_id: i64,
}

/// An alert as `gold.fraud_alerts` holds it.
#[derive(Clone, Debug)]
pub struct AlertRow {
    pub id: String,
    pub rule: String,
    pub customer_id: i64,
    pub source_commit_us: i64,
    pub detected_at_us: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RuleScore {
    pub rule: String,
    pub incidents: usize,
    pub detected: usize,
    /// `None` without incidents of the pattern.
    pub recall: Option<f64>,
    pub alerts: usize,
    pub true_alerts: usize,
    /// `None` without alerts of the rule.
    pub precision: Option<f64>,
    /// False positives by who they fell on: `plain traffic`, a benign
    /// pattern, or another fraud pattern.
    pub false_positives: BTreeMap<String, usize>,
    /// Alerts on customers of incomplete incidents: neither true nor false.
    pub on_incomplete: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenignScore {
    pub pattern: String,
    pub incidents: usize,
    /// Incidents with any alert on their customer.
    pub alerted: usize,
}

pub fn read_labels(path: &Path) -> Result<Vec<Label>> {
    let text = std::fs::read_to_string(path)
        .map_err(io(format!("reading the labels {}", path.display())))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::Run(format!("labels {} line {}: {e}", path.display(), n + 1)))
        })
        .collect()
}

/// The label of an incident that did not go as planned.
pub const INCOMPLETE: &str = "incomplete";

/// Scores per rule, and how the benign look-alikes fared.
pub fn score(labels: &[Label], alerts: &[AlertRow]) -> (Vec<RuleScore>, Vec<BenignScore>) {
    let by_customer: HashMap<i64, &Label> = labels.iter().map(|l| (l.customer_id, l)).collect();
    let mut rules = Vec::new();
    for rule in RuleName::ALL {
        let name = rule.as_str();
        let incidents: Vec<&Label> = labels
            .iter()
            .filter(|l| l.label == "fraud" && l.pattern == name)
            .collect();
        let detected = incidents
            .iter()
            .filter(|l| {
                alerts
                    .iter()
                    .any(|a| a.rule == name && a.customer_id == l.customer_id)
            })
            .count();
        let mut true_alerts = 0;
        let mut on_incomplete = 0;
        let mut false_positives: BTreeMap<String, usize> = BTreeMap::new();
        let of_rule: Vec<&AlertRow> = alerts.iter().filter(|a| a.rule == name).collect();
        for a in &of_rule {
            match by_customer.get(&a.customer_id) {
                Some(l) if l.label == INCOMPLETE => on_incomplete += 1,
                Some(l) if l.label == "fraud" && l.pattern == name => true_alerts += 1,
                Some(l) => *false_positives.entry(l.pattern.clone()).or_default() += 1,
                None => *false_positives.entry("plain traffic".into()).or_default() += 1,
            }
        }
        rules.push(RuleScore {
            rule: name.to_string(),
            incidents: incidents.len(),
            detected,
            recall: (!incidents.is_empty()).then(|| detected as f64 / incidents.len() as f64),
            alerts: of_rule.len(),
            true_alerts,
            precision: (of_rule.len() > on_incomplete)
                .then(|| true_alerts as f64 / (of_rule.len() - on_incomplete) as f64),
            false_positives,
            on_incomplete,
        });
    }
    let mut benign: BTreeMap<String, BenignScore> = BTreeMap::new();
    for l in labels.iter().filter(|l| l.label == "benign") {
        let b = benign.entry(l.pattern.clone()).or_insert(BenignScore {
            pattern: l.pattern.clone(),
            incidents: 0,
            alerted: 0,
        });
        b.incidents += 1;
        if alerts.iter().any(|a| a.customer_id == l.customer_id) {
            b.alerted += 1;
        }
    }
    (rules, benign.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(pattern: &str, fraud: bool, customer_id: i64) -> Label {
        labelled(pattern, if fraud { "fraud" } else { "benign" }, customer_id)
    }

    fn labelled(pattern: &str, label: &str, customer_id: i64) -> Label {
        Label {
            incident: format!("inc-{customer_id}"),
            label: label.into(),
            pattern: pattern.into(),
            customer_id,
        }
    }

    fn alert(rule: &str, customer_id: i64) -> AlertRow {
        AlertRow {
            id: format!("{rule}/customer/{customer_id}/1"),
            rule: rule.into(),
            customer_id,
            source_commit_us: 0,
            detected_at_us: 0,
        }
    }

    #[test]
    fn precision_and_recall_count_what_they_should() {
        let labels = vec![
            label("velocity", true, 1),
            label("velocity", true, 2),
            label("bulk_buyer", false, 3),
            label("card_testing", true, 4),
            labelled("bulk_buyer", INCOMPLETE, 5),
        ];
        let alerts = vec![
            alert("velocity", 5),
            alert("velocity", 1),
            alert("velocity", 1),
            alert("velocity", 3),
            alert("velocity", 99),
            alert("amount_spike", 4),
        ];
        let (rules, benign) = score(&labels, &alerts);
        let v = rules.iter().find(|r| r.rule == "velocity").unwrap();
        assert_eq!(
            (
                v.incidents,
                v.detected,
                v.alerts,
                v.true_alerts,
                v.on_incomplete
            ),
            (2, 1, 5, 2, 1)
        );
        assert_eq!(v.recall, Some(0.5));
        assert_eq!(v.precision, Some(0.5));
        assert_eq!(v.false_positives["bulk_buyer"], 1);
        assert_eq!(v.false_positives["plain traffic"], 1);
        let c = rules.iter().find(|r| r.rule == "card_testing").unwrap();
        assert_eq!((c.recall, c.precision), (Some(0.0), None));
        let a = rules.iter().find(|r| r.rule == "amount_spike").unwrap();
        assert_eq!(a.precision, Some(0.0));
        assert_eq!(a.false_positives["card_testing"], 1);
        assert_eq!(benign.len(), 1, "an incomplete incident is no benign one");
        assert_eq!(benign[0].pattern, "bulk_buyer");
        assert_eq!((benign[0].incidents, benign[0].alerted), (1, 1));
    }
}
