//! Customer risk profiles: the rows of `gold.customer_risk_profile`, which
//! the batch job (`tributary etl run risk-profile`) writes and the fraud
//! detector reads.

/// The gold table of the profiles.
pub const TABLE: &str = "customer_risk_profile";

/// How far back a profile looks, in days.
pub const WINDOW_DAYS: i64 = 90;

/// One customer's profile.
#[derive(Clone, Debug, PartialEq)]
pub struct RiskProfile {
    pub customer_id: i64,
    pub orders_90d: i64,
    pub amount_mean_90d: Option<f64>,
    pub amount_stddev_90d: Option<f64>,
    /// Billing and shipping countries; sorted, distinct.
    pub countries_90d: Vec<String>,
    /// Sorted, distinct.
    pub devices_90d: Vec<String>,
    pub cards_90d: i64,
    pub failed_payments_90d: i64,
}

impl RiskProfile {
    /// Whether `other` is the same profile up to floating-point rounding
    /// (the engines sum in different orders).
    pub fn same_as(&self, other: &RiskProfile) -> bool {
        fn close(a: Option<f64>, b: Option<f64>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0),
                (None, None) => true,
                _ => false,
            }
        }
        self.customer_id == other.customer_id
            && self.orders_90d == other.orders_90d
            && close(self.amount_mean_90d, other.amount_mean_90d)
            && close(self.amount_stddev_90d, other.amount_stddev_90d)
            && self.countries_90d == other.countries_90d
            && self.devices_90d == other.devices_90d
            && self.cards_90d == other.cards_90d
            && self.failed_payments_90d == other.failed_payments_90d
    }

    /// One line for an alert's detail.
    pub fn summary(&self) -> String {
        let mut s = format!("{} orders in 90 days", self.orders_90d);
        if let Some(mean) = self.amount_mean_90d {
            s.push_str(&format!(", mean {mean:.2}"));
            if let Some(sd) = self.amount_stddev_90d {
                s.push_str(&format!(" ± {sd:.2}"));
            }
        }
        if !self.countries_90d.is_empty() {
            s.push_str(&format!(", countries {}", self.countries_90d.join("/")));
        }
        s.push_str(&format!(
            ", {} devices, {} cards, {} failed payments",
            self.devices_90d.len(),
            self.cards_90d,
            self.failed_payments_90d
        ));
        s
    }
}

/// Joins sorted, distinct values into the table's text form (values hold no
/// comma: country codes, device ids).
pub fn join_list(values: &[String]) -> String {
    values.join(",")
}

/// Splits the table's text form of a list.
pub fn split_list(text: &str) -> Vec<String> {
    if text.is_empty() {
        Vec::new()
    } else {
        text.split(',').map(str::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> RiskProfile {
        RiskProfile {
            customer_id: 7,
            orders_90d: 3,
            amount_mean_90d: Some(40.0),
            amount_stddev_90d: Some(5.5),
            countries_90d: vec!["DE".into(), "FR".into()],
            devices_90d: vec!["d-1".into()],
            cards_90d: 2,
            failed_payments_90d: 1,
        }
    }

    #[test]
    fn lists_round_trip_through_their_text_form() {
        let p = profile();
        assert_eq!(split_list(&join_list(&p.countries_90d)), p.countries_90d);
        assert!(split_list("").is_empty());
    }

    #[test]
    fn profiles_compare_up_to_rounding_only() {
        let a = profile();
        let mut b = profile();
        b.amount_mean_90d = Some(40.0 + 1e-12);
        assert!(a.same_as(&b));
        b.amount_mean_90d = Some(40.01);
        assert!(!a.same_as(&b));
        b = profile();
        b.amount_stddev_90d = None;
        assert!(!a.same_as(&b));
        b = profile();
        b.devices_90d.push("d-2".into());
        assert!(!a.same_as(&b));
    }

    #[test]
    fn the_summary_names_the_baseline() {
        let s = profile().summary();
        assert_eq!(
            s,
            "3 orders in 90 days, mean 40.00 ± 5.50, countries DE/FR, 1 devices, 2 cards, 1 failed payments"
        );
    }
}
