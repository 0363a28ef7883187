//! Labelled fraud among benign look-alikes, for measuring a detector.
//!
//! An *incident* is a short script of requests by one fresh customer (its
//! first step signs the customer up, so no other traffic touches its
//! history), planned from the seeded RNG like everything else, and labelled
//! `fraud` or `benign` with its pattern. Labels go to a JSON-lines file the
//! detector never reads:
//!
//! ```json
//! {"incident":"inc-42-7","label":"fraud","pattern":"velocity","customer_id":1031,
//!  "order_ids":[4097,5121],"first_ts":"2026-12-05T08:00:01.250000Z","last_ts":"2026-12-05T08:00:03.900000Z"}
//! ```
//!
//! `first_ts`/`last_ts` are the client's clock (UTC, RFC 3339) when the
//! first request was sent and the last answered, so every commit of the
//! incident lies between them. An incident is labelled only when every
//! request got the expected answer and the amounts it relies on came out as
//! planned; otherwise it is counted as incomplete in the report and its
//! line says `"label":"incomplete"` (its customer did part of the pattern,
//! or something else: a score leaves it out). Incidents buy only products
//! whose price the load never changes ([`price_fixed`]), so this is rare.
//!
//! What each pattern does (amounts are order totals):
//! - fraud `velocity`: 6 orders within a few seconds.
//! - fraud `amount_spike`: 5 orders of 10 to 35, one every 15 s, then one of
//!   22x their mean (under 1,000).
//! - fraud `card_testing`: 3 or 4 orders of a product under 2.00, each paid
//!   with a new card fingerprint, then one of 500 to 999 with another card.
//! - fraud `new_account_large`: right after signup, one order of 1,000 or more.
//! - fraud `country_mismatch`: billing in the home country, shipping to a
//!   country the customer never used.
//! - fraud `failed_payments`: one order, 3 or 4 failed payments within seconds.
//! - fraud `cart_then_large_new_device`: 2 small orders from the usual
//!   device, then 5 to 7 add-to-carts and an order of 500 to 999 from a
//!   device never used before.
//! - benign `bulk_buyer`: 6 orders of 500 to 999, one every 15 s.
//! - benign `traveler`: an order at home, then one billed abroad and shipped
//!   home (a country used before).
//! - benign `retry_once`: one failed payment, then a captured one.
//!
//! Every incident keeps out of the other patterns: at most 5 orders in any
//! 60 s (except `velocity`), no order of 1,000 or more (except
//! `new_account_large`), at most 2 add-to-carts before an order (except
//! `cart_then_large_new_device`), one card and billing = shipping = home
//! unless the pattern says otherwise.

use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use serde::Serialize;

/// The patterns, fraud first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Pattern {
    Velocity,
    AmountSpike,
    CardTesting,
    NewAccountLarge,
    CountryMismatch,
    FailedPayments,
    CartThenLargeNewDevice,
    BulkBuyer,
    Traveler,
    RetryOnce,
}

impl Pattern {
    pub(crate) const ALL: [Pattern; 10] = [
        Pattern::Velocity,
        Pattern::AmountSpike,
        Pattern::CardTesting,
        Pattern::NewAccountLarge,
        Pattern::CountryMismatch,
        Pattern::FailedPayments,
        Pattern::CartThenLargeNewDevice,
        Pattern::BulkBuyer,
        Pattern::Traveler,
        Pattern::RetryOnce,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Pattern::Velocity => "velocity",
            Pattern::AmountSpike => "amount_spike",
            Pattern::CardTesting => "card_testing",
            Pattern::NewAccountLarge => "new_account_large",
            Pattern::CountryMismatch => "country_mismatch",
            Pattern::FailedPayments => "failed_payments",
            Pattern::CartThenLargeNewDevice => "cart_then_large_new_device",
            Pattern::BulkBuyer => "bulk_buyer",
            Pattern::Traveler => "traveler",
            Pattern::RetryOnce => "retry_once",
        }
    }

    pub(crate) fn is_fraud(self) -> bool {
        !matches!(
            self,
            Pattern::BulkBuyer | Pattern::Traveler | Pattern::RetryOnce
        )
    }
}

/// Whether a payment goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Captured,
    Failed,
}

/// One step of an incident; orders and payments act for the incident's
/// customer.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Step {
    /// Waits before the next step (does not hold a request slot).
    Wait(Duration),
    View {
        product: i64,
        device: String,
    },
    Cart {
        product: i64,
        device: String,
    },
    Order {
        /// `(product_id, quantity)`.
        items: Vec<(i64, i64)>,
        device: String,
        billing: String,
        shipping: String,
    },
    /// Pays the `order`-th order of the incident (0-based).
    Pay {
        order: usize,
        card: String,
        outcome: Outcome,
    },
}

impl Step {
    pub(crate) fn is_request(&self) -> bool {
        !matches!(self, Step::Wait(_))
    }
}

/// A planned incident: a signup, then its steps.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Incident {
    pub(crate) id: String,
    pub(crate) pattern: Pattern,
    /// The signup body of the incident's customer.
    pub(crate) signup: serde_json::Value,
    pub(crate) steps: Vec<Step>,
}

impl Incident {
    /// Requests it sends, the signup included.
    pub(crate) fn requests(&self) -> u64 {
        1 + self.steps.iter().filter(|s| s.is_request()).count() as u64
    }

    /// How long its waits add up to.
    pub(crate) fn span(&self) -> Duration {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Wait(d) => *d,
                _ => Duration::ZERO,
            })
            .sum()
    }

    /// Whether the order totals (in cents, in order of placement) are what
    /// the pattern relies on.
    pub(crate) fn amounts_hold(&self, totals: &[i64]) -> bool {
        let mean = |t: &[i64]| t.iter().sum::<i64>() as f64 / t.len().max(1) as f64;
        let below_large = totals.iter().all(|t| *t < LARGE_NEW_ACCOUNT);
        match self.pattern {
            Pattern::AmountSpike => match totals.split_last() {
                Some((spike, history)) => {
                    history.len() >= 5 && *spike as f64 >= 10.0 * mean(history) && below_large
                }
                None => false,
            },
            Pattern::CardTesting => match totals.split_last() {
                Some((large, tiny)) => {
                    tiny.len() >= 3
                        && tiny.iter().all(|t| *t < TINY)
                        && *large >= LARGE
                        && below_large
                }
                None => false,
            },
            Pattern::NewAccountLarge => totals.iter().any(|t| *t >= LARGE_NEW_ACCOUNT),
            Pattern::CartThenLargeNewDevice => {
                totals.last().is_some_and(|t| *t >= LARGE) && below_large
            }
            Pattern::BulkBuyer => totals.iter().all(|t| *t >= LARGE) && below_large,
            _ => below_large,
        }
    }
}

/// Thresholds of the patterns, in cents.
const TINY: i64 = 200;
const LARGE: i64 = 50_000;
const LARGE_NEW_ACCOUNT: i64 = 100_000;
/// Spacing of orders that must not look like velocity.
const SLOW: Duration = Duration::from_secs(15);

/// Countries no load-generator customer lives in: a destination "never
/// used" by anyone.
const FOREIGN: [&str; 6] = ["BR", "NG", "VN", "UA", "ZA", "MX"];

/// Products whose price the load generator never changes while it plants
/// incidents: the cheap ones (card testing's product stays under 2.00) and
/// every third. Incidents buy only these, so the amounts a pattern relies on
/// come out as planned. Once true for a product it stays true.
pub(crate) fn price_fixed(id: i64, cents: i64) -> bool {
    cents < 500 || id % 3 == 0
}

/// What the planner knows when it plans an incident.
pub(crate) struct Catalog<'a> {
    /// `(id, price in cents)`, any order.
    pub(crate) products: &'a [(i64, i64)],
}

impl Catalog<'_> {
    /// A product under 2.00, for card testing.
    pub(crate) fn tiny(&self) -> Option<(i64, i64)> {
        self.products.iter().copied().find(|(_, p)| *p < TINY)
    }

    /// Products between `lo` and `hi` cents (inclusive), by id.
    fn between(&self, lo: i64, hi: i64) -> Vec<(i64, i64)> {
        self.products
            .iter()
            .copied()
            .filter(|(_, p)| (lo..=hi).contains(p))
            .collect()
    }

    /// One line of at least a `target` (drawn from the range) in cents and at most `max`: a product
    /// (one of the priciest that fit, so quantities stay small) and its
    /// quantity. `None` when no product can.
    fn line_of(
        &self,
        rng: &mut StdRng,
        target: std::ops::Range<i64>,
        max: i64,
    ) -> Option<(i64, i64)> {
        let target = rng.random_range(target);
        let mut fitting: Vec<(i64, i64)> = self
            .products
            .iter()
            .copied()
            .filter(|(_, p)| *p >= TINY && *p <= max)
            .collect();
        if fitting.is_empty() {
            return None;
        }
        fitting.sort_by_key(|(id, p)| (std::cmp::Reverse(*p), *id));
        let start = rng.random_range(0..fitting.len().min(3));
        (0..fitting.len())
            .map(|i| fitting[(start + i) % fitting.len()])
            .map(|(id, price)| (id, price, ((target + price - 1) / price).max(1)))
            .find(|(_, price, quantity)| price * quantity <= max && *quantity <= 10_000)
            .map(|(id, _, quantity)| (id, quantity))
    }

    fn price(&self, id: i64) -> Option<i64> {
        self.products
            .iter()
            .find(|(p, _)| *p == id)
            .map(|(_, c)| *c)
    }
}

/// Builds the steps of one incident.
struct Script {
    steps: Vec<Step>,
    orders: usize,
}

impl Script {
    /// An order, browsed first (a view per line, add-to-carts for the
    /// first `carts` lines); returns its index in the incident.
    fn buy(
        &mut self,
        items: Vec<(i64, i64)>,
        device: &str,
        billing: &str,
        shipping: &str,
        carts: usize,
    ) -> usize {
        for (i, (p, _)) in items.iter().enumerate() {
            self.steps.push(Step::View {
                product: *p,
                device: device.to_owned(),
            });
            if i < carts {
                self.steps.push(Step::Cart {
                    product: *p,
                    device: device.to_owned(),
                });
            }
        }
        self.steps.push(Step::Order {
            items,
            device: device.to_owned(),
            billing: billing.to_owned(),
            shipping: shipping.to_owned(),
        });
        self.orders += 1;
        self.orders - 1
    }

    fn pay(&mut self, order: usize, card: &str, outcome: Outcome) {
        self.steps.push(Step::Pay {
            order,
            card: card.to_owned(),
            outcome,
        });
    }
}

/// Plans everything about one incident but its customer's id (known once
/// the signup answers). `None` when the catalog cannot support the pattern
/// (no product under 2.00 for card testing, none cheap or dear enough).
pub(crate) fn plan(
    rng: &mut StdRng,
    id: String,
    pattern: Pattern,
    signup: serde_json::Value,
    catalog: &Catalog<'_>,
) -> Option<Incident> {
    let home = signup["country"].as_str().unwrap_or("US").to_owned();
    let home = home.as_str();
    let device = format!("dev-{:08x}", rng.random::<u32>());
    let device = device.as_str();
    let card = format!("fp-{:016x}", rng.random::<u64>());
    let card = card.as_str();
    let mut s = Script {
        steps: Vec::new(),
        orders: 0,
    };
    // 10.00 to 35.00; 550.00 to 950.00.
    let small = |rng: &mut StdRng| catalog.line_of(rng, 1_000..3_000, 3_500);
    let large = |rng: &mut StdRng| catalog.line_of(rng, 55_000..80_000, 95_000);
    use Outcome::{Captured, Failed};
    match pattern {
        Pattern::Velocity => {
            let line = small(rng)?;
            for _ in 0..6 {
                let o = s.buy(vec![line], device, home, home, 1);
                s.pay(o, card, Captured);
            }
        }
        Pattern::AmountSpike => {
            let line = small(rng)?;
            for i in 0..5 {
                if i > 0 {
                    s.steps.push(Step::Wait(SLOW));
                }
                let o = s.buy(vec![line], device, home, home, 1);
                s.pay(o, card, Captured);
            }
            s.steps.push(Step::Wait(SLOW));
            // 22x the history's order total, under 1,000.
            let usual = catalog.price(line.0)? * line.1;
            let spike = catalog.line_of(rng, usual * 22..usual * 22 + 1, 95_000)?;
            let o = s.buy(vec![spike], device, home, home, 1);
            s.pay(o, card, Captured);
        }
        Pattern::CardTesting => {
            let (tiny, _) = catalog.tiny()?;
            for _ in 0..rng.random_range(3..=4) {
                let o = s.buy(vec![(tiny, 1)], device, home, home, 0);
                let test_card = format!("fp-{:016x}", rng.random::<u64>());
                s.pay(o, &test_card, Captured);
            }
            let line = large(rng)?;
            let o = s.buy(vec![line], device, home, home, 1);
            s.pay(o, card, Captured);
        }
        Pattern::NewAccountLarge => {
            let line = catalog.line_of(rng, 110_000..200_000, 250_000)?;
            let o = s.buy(vec![line], device, home, home, 1);
            s.pay(o, card, Captured);
        }
        Pattern::CountryMismatch => {
            let away = FOREIGN[rng.random_range(0..FOREIGN.len())];
            let line = small(rng)?;
            let o = s.buy(vec![line], device, home, away, 1);
            s.pay(o, card, Captured);
        }
        Pattern::FailedPayments => {
            let line = small(rng)?;
            let o = s.buy(vec![line], device, home, home, 1);
            for _ in 0..rng.random_range(3..=4) {
                s.pay(o, card, Failed);
            }
        }
        Pattern::CartThenLargeNewDevice => {
            for _ in 0..2 {
                let line = small(rng)?;
                let o = s.buy(vec![line], device, home, home, 1);
                s.pay(o, card, Captured);
            }
            let new_device = format!("dev-{:08x}", rng.random::<u32>());
            let browsed = catalog.between(TINY, 95_000);
            for _ in 0..rng.random_range(5..=7) {
                let (p, _) = *browsed.get(rng.random_range(0..browsed.len().max(1)))?;
                s.steps.push(Step::Cart {
                    product: p,
                    device: new_device.clone(),
                });
            }
            let line = large(rng)?;
            // No further browsing: the carts were the browsing.
            let o = s.buy(vec![line], &new_device, home, home, 0);
            s.steps
                .retain(|st| !matches!(st, Step::View { device, .. } if *device == new_device));
            s.pay(o, card, Captured);
        }
        Pattern::BulkBuyer => {
            for i in 0..6 {
                if i > 0 {
                    s.steps.push(Step::Wait(SLOW));
                }
                // Bulk buyers know what they want: views only, no carts.
                let line = large(rng)?;
                let o = s.buy(vec![line], device, home, home, 0);
                s.pay(o, card, Captured);
            }
        }
        Pattern::Traveler => {
            let line = small(rng)?;
            let o = s.buy(vec![line], device, home, home, 1);
            s.pay(o, card, Captured);
            let abroad = FOREIGN[rng.random_range(0..FOREIGN.len())];
            let line = small(rng)?;
            let o = s.buy(vec![line], device, abroad, home, 1);
            s.pay(o, card, Captured);
        }
        Pattern::RetryOnce => {
            let line = small(rng)?;
            let o = s.buy(vec![line], device, home, home, 1);
            s.pay(o, card, Failed);
            s.pay(o, card, Captured);
        }
    }
    Some(Incident {
        id,
        pattern,
        signup,
        steps: s.steps,
    })
}

/// The label of an incident that did not go as planned.
pub(crate) const INCOMPLETE: &str = "incomplete";

/// One line of the labels file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Label {
    pub(crate) incident: String,
    /// `fraud`, `benign` or [`INCOMPLETE`].
    pub(crate) label: &'static str,
    pub(crate) pattern: &'static str,
    pub(crate) customer_id: i64,
    pub(crate) order_ids: Vec<i64>,
    pub(crate) first_ts: String,
    pub(crate) last_ts: String,
}

impl Label {
    pub(crate) fn new(
        incident: &Incident,
        customer_id: i64,
        order_ids: Vec<i64>,
        first: chrono::DateTime<chrono::Utc>,
        last: chrono::DateTime<chrono::Utc>,
    ) -> Label {
        let ts = |t: chrono::DateTime<chrono::Utc>| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        };
        Label {
            incident: incident.id.clone(),
            label: if incident.pattern.is_fraud() {
                "fraud"
            } else {
                "benign"
            },
            pattern: incident.pattern.name(),
            customer_id,
            order_ids,
            first_ts: ts(first),
            last_ts: ts(last),
        }
    }

    pub(crate) fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("a label serialises");
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn products() -> Vec<(i64, i64)> {
        // 1.49, then 5.00 to 495.00.
        let mut p = vec![(1, 149)];
        p.extend((2..=100).map(|id| (id, id * 500 - 500)));
        p
    }

    fn signup() -> serde_json::Value {
        serde_json::json!({"country": "DE"})
    }

    fn incident(seed: u64, pattern: Pattern) -> Incident {
        let p = products();
        let mut rng = StdRng::seed_from_u64(seed);
        plan(
            &mut rng,
            format!("inc-{seed}"),
            pattern,
            signup(),
            &Catalog { products: &p },
        )
        .unwrap()
    }

    /// The totals the incident's orders come to at catalog prices.
    fn totals(i: &Incident) -> Vec<i64> {
        let p = products();
        let price = |id: i64| p.iter().find(|(x, _)| *x == id).unwrap().1;
        i.steps
            .iter()
            .filter_map(|s| match s {
                Step::Order { items, .. } => Some(items.iter().map(|(id, q)| price(*id) * q).sum()),
                _ => None,
            })
            .collect()
    }

    fn orders(i: &Incident) -> Vec<&Step> {
        i.steps
            .iter()
            .filter(|s| matches!(s, Step::Order { .. }))
            .collect()
    }

    #[test]
    fn plans_are_deterministic_per_seed() {
        for pattern in Pattern::ALL {
            assert_eq!(incident(5, pattern), incident(5, pattern));
        }
        assert_ne!(
            incident(5, Pattern::Velocity),
            incident(6, Pattern::Velocity)
        );
    }

    #[test]
    fn every_pattern_holds_at_catalog_prices() {
        for seed in 0..30 {
            for pattern in Pattern::ALL {
                let i = incident(seed, pattern);
                let t = totals(&i);
                assert!(i.amounts_hold(&t), "{} seed {seed}: {t:?}", pattern.name());
                // Payments refer to orders that exist.
                for s in &i.steps {
                    if let Step::Pay { order, .. } = s {
                        assert!(*order < t.len(), "{}", pattern.name());
                    }
                }
            }
        }
    }

    #[test]
    fn patterns_have_their_shape_and_look_alikes_stay_clear() {
        let v = incident(1, Pattern::Velocity);
        assert_eq!(orders(&v).len(), 6);
        assert_eq!(v.span(), Duration::ZERO);

        // Everyone but velocity keeps to at most 5 orders per 60 s.
        for pattern in Pattern::ALL {
            let i = incident(2, pattern);
            let n = orders(&i).len();
            if pattern != Pattern::Velocity && n > 5 {
                assert!(i.span() > Duration::from_secs(60), "{}", pattern.name());
            }
        }

        let c = incident(3, Pattern::CardTesting);
        let cards: std::collections::BTreeSet<&str> = c
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Pay { card, .. } => Some(card.as_str()),
                _ => None,
            })
            .collect();
        assert!(cards.len() >= 4, "{cards:?}");

        let m = incident(4, Pattern::CountryMismatch);
        let Step::Order {
            billing, shipping, ..
        } = orders(&m)[0]
        else {
            unreachable!()
        };
        assert_eq!(billing, "DE");
        assert!(FOREIGN.contains(&shipping.as_str()));

        let t = incident(4, Pattern::Traveler);
        let places: Vec<(&str, &str)> = orders(&t)
            .into_iter()
            .map(|o| match o {
                Step::Order {
                    billing, shipping, ..
                } => (billing.as_str(), shipping.as_str()),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(places[0], ("DE", "DE"));
        assert_ne!(places[1].0, places[1].1);
        assert_eq!(
            places[1].1, "DE",
            "the traveler ships to a country used before"
        );

        let f = incident(5, Pattern::FailedPayments);
        let failed = f
            .steps
            .iter()
            .filter(|s| {
                matches!(
                    s,
                    Step::Pay {
                        outcome: Outcome::Failed,
                        ..
                    }
                )
            })
            .count();
        assert!(failed >= 3);
        let r = incident(5, Pattern::RetryOnce);
        let outcomes: Vec<Outcome> = r
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Pay { outcome, .. } => Some(*outcome),
                _ => None,
            })
            .collect();
        assert_eq!(outcomes, [Outcome::Failed, Outcome::Captured]);

        // Carts then a large order from a device the customer never used;
        // no other pattern puts more than 2 carts before an order.
        for pattern in Pattern::ALL {
            let i = incident(6, pattern);
            let mut carts = 0;
            let mut devices = std::collections::BTreeSet::new();
            for s in &i.steps {
                match s {
                    Step::Cart { .. } => carts += 1,
                    Step::Order { device, .. } => {
                        let new = devices.insert(device.clone());
                        if pattern == Pattern::CartThenLargeNewDevice && devices.len() == 2 {
                            assert!(new && carts >= 5);
                        } else {
                            assert!(carts <= 2, "{}", pattern.name());
                        }
                        carts = 0;
                    }
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn amounts_are_checked_after_the_fact() {
        let spike = incident(7, Pattern::AmountSpike);
        assert!(!spike.amounts_hold(&[2_000; 6]));
        assert!(spike.amounts_hold(&[2_000, 2_000, 2_000, 2_000, 2_000, 45_000]));
        let card = incident(7, Pattern::CardTesting);
        assert!(!card.amounts_hold(&[149, 149, 250, 60_000]));
        let new = incident(7, Pattern::NewAccountLarge);
        assert!(!new.amounts_hold(&[99_999]));
    }

    #[test]
    fn no_tiny_product_means_no_card_testing() {
        let p: Vec<(i64, i64)> = (1..50).map(|id| (id, 1_000 * id)).collect();
        let mut rng = StdRng::seed_from_u64(1);
        let c = Catalog { products: &p };
        assert!(plan(&mut rng, "x".into(), Pattern::CardTesting, signup(), &c).is_none());
        assert!(plan(&mut rng, "y".into(), Pattern::Velocity, signup(), &c).is_some());
    }

    #[test]
    fn labels_are_one_json_line() {
        let i = incident(8, Pattern::Traveler);
        let t = chrono::DateTime::from_timestamp(1_700_000_000, 250_000_000).unwrap();
        let line = Label::new(&i, 42, vec![7, 8], t, t).to_line();
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["label"], "benign");
        assert_eq!(v["pattern"], "traveler");
        assert_eq!(v["customer_id"], 42);
        assert_eq!(v["order_ids"], serde_json::json!([7, 8]));
        assert_eq!(v["first_ts"], "2023-11-14T22:13:20.250000Z");
        assert_eq!(v["incident"], "inc-8");
    }
}
