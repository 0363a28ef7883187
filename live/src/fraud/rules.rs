//! The fraud rules file: what each rule looks for, with its thresholds.
//!
//! A TOML file with one table per rule; a rule left out is off, and
//! `enabled = false` turns a listed one off. Durations are text (`"90s"`,
//! `"10m"`, `"2h"`, `"1d"`), amounts are currency units with at most two
//! decimals (`500` or `1.99`), held as cents so that every comparison is
//! exact (the batch oracle compares the same integers).
//!
//! ```toml
//! [velocity]                 # more than max_orders orders of one customer
//! max_orders = 5             # in any window of `window`, hopping by `slide`
//! window = "60s"
//! slide = "30s"
//!
//! [amount_spike]             # an order >= factor x the customer's mean order
//! min_history = 5            # once they have this many earlier orders
//! factor = 10.0
//!
//! [card_testing]             # min_tiny payments under tiny_amount, then one
//! tiny_amount = 2.00         # of at least large_amount, in one session of
//! min_tiny = 3               # payments with gaps under `gap`
//! large_amount = 500
//! gap = "5m"
//!
//! [new_account_large]        # an order >= min_amount from an account
//! max_account_age = "10m"    # younger than max_account_age
//! min_amount = 1000
//!
//! [country_mismatch]         # billing != shipping, and shipping to a country
//!                            # the customer never used (home or earlier order)
//!
//! [failed_payments]          # at least min_failed failed payments of one
//! min_failed = 3             # customer in any window of `window`
//! window = "10m"
//! slide = "5m"
//!
//! [cart_then_large_new_device]   # min_add_to_carts add-to-carts within
//! min_add_to_carts = 5           # `within` before an order >= min_amount
//! min_amount = 500               # from a device none of the customer's
//! within = "30m"                 # earlier orders used
//! ```
//!
//! A file that does not parse, names an unknown rule or field, or holds a
//! value out of range is refused as a whole with an error naming the rule
//! and the field; the detector keeps the rules it runs ([`super::reload`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use toml::Value;

use crate::{Error, Result};

/// One rule's name, as in the file and in alert ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleName {
    Velocity,
    AmountSpike,
    CardTesting,
    NewAccountLarge,
    CountryMismatch,
    FailedPayments,
    CartThenLargeNewDevice,
}

impl RuleName {
    pub const ALL: [RuleName; 7] = [
        RuleName::Velocity,
        RuleName::AmountSpike,
        RuleName::CardTesting,
        RuleName::NewAccountLarge,
        RuleName::CountryMismatch,
        RuleName::FailedPayments,
        RuleName::CartThenLargeNewDevice,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RuleName::Velocity => "velocity",
            RuleName::AmountSpike => "amount_spike",
            RuleName::CardTesting => "card_testing",
            RuleName::NewAccountLarge => "new_account_large",
            RuleName::CountryMismatch => "country_mismatch",
            RuleName::FailedPayments => "failed_payments",
            RuleName::CartThenLargeNewDevice => "cart_then_large_new_device",
        }
    }

    pub fn parse(s: &str) -> Option<RuleName> {
        RuleName::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for RuleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
const SECOND_US: i64 = 1_000_000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Velocity {
    pub max_orders: u32,
    pub window_us: i64,
    pub slide_us: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AmountSpike {
    pub min_history: u32,
    pub factor: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CardTesting {
    pub tiny_cents: i64,
    pub min_tiny: u32,
    pub large_cents: i64,
    pub gap_us: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewAccountLarge {
    pub max_account_age_us: i64,
    pub min_cents: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailedPayments {
    pub min_failed: u32,
    pub window_us: i64,
    pub slide_us: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CartThenLarge {
    pub min_add_to_carts: u32,
    pub min_cents: i64,
    pub within_us: i64,
}

/// The rules in force: `None` is a rule that is off.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rules {
    pub velocity: Option<Velocity>,
    pub amount_spike: Option<AmountSpike>,
    pub card_testing: Option<CardTesting>,
    pub new_account_large: Option<NewAccountLarge>,
    pub country_mismatch: bool,
    pub failed_payments: Option<FailedPayments>,
    pub cart_then_large_new_device: Option<CartThenLarge>,
}

/// The rules the platform ships with (the file in the repository,
/// `live/rules/fraud.toml`, holds the same).
pub const DEFAULT_RULES: &str = include_str!("../../rules/fraud.toml");

impl Rules {
    /// The rules the platform ships with.
    pub fn defaults() -> Rules {
        Rules::parse(DEFAULT_RULES, "built-in rules").expect("the built-in rules are valid")
    }

    /// Reads and checks a rules file.
    pub fn load(path: &Path) -> Result<Rules> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: format!("reading rules file {}", path.display()),
            source,
        })?;
        Rules::parse(&text, &path.display().to_string())
    }

    /// Parses and checks rules text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Rules> {
        let bad = |rule: &str, field: &str, reason: String| Error::Rules {
            origin: origin.to_string(),
            rule: rule.to_string(),
            field: field.to_string(),
            reason,
        };
        let doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| bad("-", "-", e.message().to_string()))?;
        let mut rules = Rules::default();
        for (name, value) in doc {
            let rule = RuleName::parse(&name).ok_or_else(|| {
                bad(
                    &name,
                    "-",
                    format!(
                        "unknown rule; the rules are {}",
                        RuleName::ALL.map(RuleName::as_str).join(", ")
                    ),
                )
            })?;
            let Value::Table(table) = value else {
                return Err(bad(&name, "-", "must be a table ([name])".into()));
            };
            let mut f = Fields {
                rule: rule.as_str(),
                table: table.into_iter().collect(),
                origin,
            };
            // A disabled rule is still checked whole, so a typo in it shows
            // before it is turned on.
            let enabled = f.bool_or("enabled", true)?;
            let before = rules.clone();
            match rule {
                RuleName::Velocity => {
                    let (window_us, slide_us) = f.window()?;
                    rules.velocity = Some(Velocity {
                        max_orders: f.count("max_orders")?,
                        window_us,
                        slide_us,
                    })
                }
                RuleName::AmountSpike => {
                    let factor = f.float("factor")?;
                    if !(factor > 1.0 && factor.is_finite()) {
                        return Err(f.bad("factor", format!("must be above 1, got {factor}")));
                    }
                    rules.amount_spike = Some(AmountSpike {
                        min_history: f.count("min_history")?,
                        factor,
                    })
                }
                RuleName::CardTesting => {
                    let tiny_cents = f.cents("tiny_amount")?;
                    let large_cents = f.cents("large_amount")?;
                    if large_cents <= tiny_cents {
                        return Err(f.bad("large_amount", "must be above tiny_amount".to_string()));
                    }
                    rules.card_testing = Some(CardTesting {
                        tiny_cents,
                        min_tiny: f.count("min_tiny")?,
                        large_cents,
                        gap_us: f.duration("gap")?,
                    })
                }
                RuleName::NewAccountLarge => {
                    rules.new_account_large = Some(NewAccountLarge {
                        max_account_age_us: f.duration("max_account_age")?,
                        min_cents: f.cents("min_amount")?,
                    })
                }
                RuleName::CountryMismatch => rules.country_mismatch = true,
                RuleName::FailedPayments => {
                    let (window_us, slide_us) = f.window()?;
                    rules.failed_payments = Some(FailedPayments {
                        min_failed: f.count("min_failed")?,
                        window_us,
                        slide_us,
                    })
                }
                RuleName::CartThenLargeNewDevice => {
                    rules.cart_then_large_new_device = Some(CartThenLarge {
                        min_add_to_carts: f.count("min_add_to_carts")?,
                        min_cents: f.cents("min_amount")?,
                        within_us: f.duration("within")?,
                    })
                }
            }
            f.finish()?;
            if !enabled {
                rules = before;
            }
        }
        Ok(rules)
    }

    /// The rules that are on.
    pub fn enabled(&self) -> Vec<RuleName> {
        RuleName::ALL
            .into_iter()
            .filter(|r| match r {
                RuleName::Velocity => self.velocity.is_some(),
                RuleName::AmountSpike => self.amount_spike.is_some(),
                RuleName::CardTesting => self.card_testing.is_some(),
                RuleName::NewAccountLarge => self.new_account_large.is_some(),
                RuleName::CountryMismatch => self.country_mismatch,
                RuleName::FailedPayments => self.failed_payments.is_some(),
                RuleName::CartThenLargeNewDevice => self.cart_then_large_new_device.is_some(),
            })
            .collect()
    }

    /// The longest time a rule looks back: keyed state older than this
    /// (plus a margin) can no longer change an alert.
    pub fn horizon_us(&self) -> i64 {
        [
            self.velocity.as_ref().map_or(0, |r| r.window_us),
            self.card_testing.as_ref().map_or(0, |r| r.gap_us),
            self.new_account_large
                .as_ref()
                .map_or(0, |r| r.max_account_age_us),
            self.failed_payments.as_ref().map_or(0, |r| r.window_us),
            self.cart_then_large_new_device
                .as_ref()
                .map_or(0, |r| r.within_us),
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }
}

/// The fields of one rule's table, taken one by one; what is left at the end
/// is an unknown field.
struct Fields<'a> {
    rule: &'static str,
    table: BTreeMap<String, Value>,
    origin: &'a str,
}

impl Fields<'_> {
    fn bad(&self, field: &str, reason: String) -> Error {
        Error::Rules {
            origin: self.origin.to_string(),
            rule: self.rule.to_string(),
            field: field.to_string(),
            reason,
        }
    }

    fn take(&mut self, field: &str) -> Result<Value> {
        self.table
            .remove(field)
            .ok_or_else(|| self.bad(field, "missing".into()))
    }

    fn bool_or(&mut self, field: &str, default: bool) -> Result<bool> {
        match self.table.remove(field) {
            None => Ok(default),
            Some(Value::Boolean(b)) => Ok(b),
            Some(v) => Err(self.bad(field, format!("must be true or false, got {v}"))),
        }
    }

    fn count(&mut self, field: &str) -> Result<u32> {
        match self.take(field)? {
            Value::Integer(n) if (1..=1_000_000).contains(&n) => Ok(n as u32),
            v => Err(self.bad(
                field,
                format!("must be a whole number from 1 to 1000000, got {v}"),
            )),
        }
    }

    fn float(&mut self, field: &str) -> Result<f64> {
        match self.take(field)? {
            Value::Float(x) => Ok(x),
            Value::Integer(n) => Ok(n as f64),
            v => Err(self.bad(field, format!("must be a number, got {v}"))),
        }
    }

    fn cents(&mut self, field: &str) -> Result<i64> {
        let v = self.take(field)?;
        let cents = match &v {
            Value::Integer(n) => n.checked_mul(100),
            Value::Float(x) if x.is_finite() => {
                let c = (x * 100.0).round();
                ((c - x * 100.0).abs() < 1e-6 && c.abs() < 1e15).then_some(c as i64)
            }
            _ => None,
        };
        match cents {
            Some(c) if c > 0 => Ok(c),
            _ => Err(self.bad(
                field,
                format!("must be a positive amount with at most two decimals, got {v}"),
            )),
        }
    }

    fn duration(&mut self, field: &str) -> Result<i64> {
        match self.take(field)? {
            Value::String(s) => parse_duration_us(&s).filter(|us| *us > 0).ok_or_else(|| {
                self.bad(
                    field,
                    format!(
                        "must be a duration such as \"90s\", \"10m\", \"2h\", \"1d\"; got {s:?}"
                    ),
                )
            }),
            v => Err(self.bad(
                field,
                format!("must be a duration in quotes such as \"10m\", got {v}"),
            )),
        }
    }

    /// `window` and `slide` (default: the window, i.e. tumbling); the
    /// window must be a whole number of slides so windows align.
    fn window(&mut self) -> Result<(i64, i64)> {
        let window = self.duration("window")?;
        let slide = if self.table.contains_key("slide") {
            self.duration("slide")?
        } else {
            window
        };
        if slide > window || window % slide != 0 {
            return Err(self.bad(
                "slide",
                "must divide the window (window = k x slide)".to_string(),
            ));
        }
        Ok((window, slide))
    }

    fn finish(self) -> Result<()> {
        match self.table.keys().next() {
            None => Ok(()),
            Some(field) => Err(self.bad(field, "unknown field".into())),
        }
    }
}

/// `500ms`, `90s`, `10m`, `2h`, `1d` as microseconds.
pub use tributary_model::duration::parse_us as parse_duration_us;

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Rules::parse(text, "rules.toml").unwrap_err().to_string()
    }

    #[test]
    fn the_shipped_rules_parse_with_every_rule_on() {
        let rules = Rules::defaults();
        assert_eq!(rules.enabled(), RuleName::ALL.to_vec());
        let v = rules.velocity.as_ref().unwrap();
        assert_eq!(
            (v.max_orders, v.window_us, v.slide_us),
            (5, 60_000_000, 30_000_000)
        );
        assert_eq!(rules.card_testing.as_ref().unwrap().tiny_cents, 200);
        assert_eq!(rules.horizon_us(), 30 * 60 * SECOND_US);
    }

    #[test]
    fn left_out_and_disabled_rules_are_off() {
        let rules = Rules::parse(
            "[country_mismatch]\n[velocity]\nenabled = false\nmax_orders = 2\nwindow = \"1m\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(rules.enabled(), vec![RuleName::CountryMismatch]);
    }

    #[test]
    fn bad_files_name_the_rule_and_the_field() {
        assert_eq!(
            err("[velocity]\nmax_orders = 0\nwindow = \"1m\"\n"),
            "rules file rules.toml: rule `velocity`, field `max_orders`: must be a whole number from 1 to 1000000, got 0"
        );
        assert!(err("[velocity]\nmax_orders = 3\n").contains("field `window`: missing"));
        assert!(
            err("[velocity]\nmax_orders = 3\nwindow = \"1m\"\nslide = \"7s\"\n")
                .contains("field `slide`: must divide the window")
        );
        assert!(err("[velocty]\n").contains("rule `velocty`: unknown rule"));
        assert!(
            err("[card_testing]\ntiny_amount = 1.999\nmin_tiny = 3\nlarge_amount = 500\ngap = \"5m\"\n")
                .contains("field `tiny_amount`: must be a positive amount with at most two decimals")
        );
        assert!(
            err("[new_account_large]\nmax_account_age = 600\nmin_amount = 1000\n")
                .contains("field `max_account_age`: must be a duration in quotes")
        );
        assert!(
            err("[country_mismatch]\nstrict = true\n")
                .contains("rule `country_mismatch`, field `strict`: unknown field")
        );
        assert!(
            err("[velocity\n").starts_with("rules file rules.toml: "),
            "{}",
            err("[velocity\n")
        );
        assert!(
            err("[amount_spike]\nmin_history = 5\nfactor = 0.5\n")
                .contains("field `factor`: must be above 1")
        );
    }

    #[test]
    fn durations_and_amounts() {
        assert_eq!(parse_duration_us("500ms"), Some(500_000));
        assert_eq!(parse_duration_us("1d"), Some(86_400 * SECOND_US));
        assert_eq!(parse_duration_us("10"), None);
        assert_eq!(parse_duration_us("m"), None);
        let r = Rules::parse(
            "[new_account_large]\nmax_account_age = \"10m\"\nmin_amount = 1000.5\n",
            "t",
        )
        .unwrap();
        assert_eq!(r.new_account_large.unwrap().min_cents, 100_050);
    }
}
