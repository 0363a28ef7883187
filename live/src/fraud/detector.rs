//! The rules over each customer's timeline.
//!
//! The detector is fed [`Input`]s in event-time order (the job's reorder
//! buffer releases them once the watermark passed them), so every rule sees
//! a customer's orders, payments and add-to-carts in the order they
//! happened, whatever the interleaving of topics and partitions it was
//! consumed in. Given the same inputs and rules it raises the same alerts
//! with the same ids; all of its state is one serialisable value, saved in
//! the job's checkpoints.
//!
//! What each rule keeps:
//! - velocity and failed payments: a count per customer per hopping window
//!   (the engine's [`KeyedWindows`]); an alert when a window's count reaches
//!   the threshold, once per window, with that window's end in its id;
//! - card testing: a session of payments per customer (gap from the rule)
//!   counting tiny payments; a large payment in a session that already holds
//!   enough tiny ones alerts, with the session's end as it stands then;
//! - amount spike, new account, country mismatch and cart-then-large: a
//!   profile per customer ([`Profile`]: creation time, countries used,
//!   devices of earlier orders, order count and sum, recent add-to-carts),
//!   expired when the customer is quiet for longer than every rule looks
//!   back and the amount-spike history span (`profile_ttl`).
//!
//! A window whose rule changed shape on reload starts empty; the profiles
//! stay.

use std::collections::{BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use tributary_stream::EventTime;
use tributary_stream::state::KeyedState;
use tributary_stream::window::{KeyedWindows, Merge, Window, WindowSpec};

use super::alert::Alert;
use super::input::{Fact, Input};
use super::rules::{RuleName, Rules};
use crate::{Error, Result};

/// Days of quiet after which a customer's profile is dropped.
pub const PROFILE_TTL_US: i64 = 90 * 86_400 * 1_000_000;

/// A count in a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Count(pub u32);

impl Merge for Count {
    fn merge(&mut self, other: Self) {
        self.0 += other.0;
    }
}

/// What a card-testing session holds: its tiny payments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub tiny: u32,
}

impl Merge for Session {
    fn merge(&mut self, other: Self) {
        self.tiny += other.tiny;
    }
}

/// What the detector knows of one customer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub created_at_us: Option<i64>,
    /// Home country and every country an order shipped to.
    pub countries: BTreeSet<String>,
    /// Devices of the customer's orders.
    pub devices: BTreeSet<String>,
    pub orders: u64,
    pub order_cents: i64,
    /// Times of recent add-to-carts (within the cart rule's reach).
    pub carts: VecDeque<EventTime>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Detector {
    rules: Rules,
    /// How long windows stay open after the watermark passed their end.
    lateness_us: i64,
    profiles: KeyedState<i64, Profile>,
    velocity: Option<KeyedWindows<i64, Count>>,
    failed: Option<KeyedWindows<i64, Count>>,
    card: Option<KeyedWindows<i64, Session>>,
}

fn windows<A: Default + Merge + Clone>(
    spec: WindowSpec,
    lateness_us: i64,
) -> Result<KeyedWindows<i64, A>> {
    KeyedWindows::new(spec, lateness_us)
        .map_err(|e| Error::Input(format!("windows of a rule: {e}")))
}

fn hopping(window_us: i64, slide_us: i64) -> Result<WindowSpec> {
    let spec = if window_us == slide_us {
        WindowSpec::tumbling(window_us)
    } else {
        WindowSpec::sliding(window_us, slide_us)
    };
    spec.map_err(|e| Error::Input(format!("window of a rule: {e}")))
}

fn session(gap_us: i64) -> Result<WindowSpec> {
    WindowSpec::session(gap_us).map_err(|e| Error::Input(format!("session of a rule: {e}")))
}

impl Detector {
    /// A detector whose windows accept events up to `lateness_us` behind
    /// the watermark.
    pub fn new(rules: Rules, lateness_us: i64) -> Result<Detector> {
        let mut d = Detector {
            rules: Rules::default(),
            lateness_us,
            profiles: KeyedState::new(PROFILE_TTL_US)
                .map_err(|e| Error::Input(format!("profiles: {e}")))?,
            velocity: None,
            failed: None,
            card: None,
        };
        d.set_rules(rules)?;
        Ok(d)
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Puts new rules in force; windows of a rule whose shape changed start
    /// empty.
    pub fn set_rules(&mut self, rules: Rules) -> Result<()> {
        let old = std::mem::replace(&mut self.rules, rules);
        let new = &self.rules;
        let same_velocity = matches!((&old.velocity, &new.velocity),
            (Some(a), Some(b)) if (a.window_us, a.slide_us) == (b.window_us, b.slide_us));
        if !same_velocity {
            self.velocity = match &new.velocity {
                Some(v) => Some(windows(
                    hopping(v.window_us, v.slide_us)?,
                    self.lateness_us,
                )?),
                None => None,
            };
        }
        let same_failed = matches!((&old.failed_payments, &new.failed_payments),
            (Some(a), Some(b)) if (a.window_us, a.slide_us) == (b.window_us, b.slide_us));
        if !same_failed {
            self.failed = match &new.failed_payments {
                Some(f) => Some(windows(
                    hopping(f.window_us, f.slide_us)?,
                    self.lateness_us,
                )?),
                None => None,
            };
        }
        let same_card = matches!((&old.card_testing, &new.card_testing),
            (Some(a), Some(b)) if a.gap_us == b.gap_us);
        if !same_card {
            self.card = match &new.card_testing {
                Some(c) => Some(windows(session(c.gap_us)?, self.lateness_us)?),
                None => None,
            };
        }
        Ok(())
    }

    /// Customers with a profile.
    pub fn customers(&self) -> usize {
        self.profiles.len()
    }

    /// Open windows over all rules.
    pub fn open_windows(&self) -> usize {
        self.velocity.as_ref().map_or(0, KeyedWindows::len)
            + self.failed.as_ref().map_or(0, KeyedWindows::len)
            + self.card.as_ref().map_or(0, KeyedWindows::len)
    }

    /// Closes windows the watermark passed and drops quiet profiles.
    pub fn advance(&mut self, watermark: EventTime) {
        for w in [&mut self.velocity, &mut self.failed].into_iter().flatten() {
            w.close(watermark);
        }
        if let Some(c) = &mut self.card {
            c.close(watermark);
        }
        self.profiles.expire(watermark);
    }

    /// Applies one input (in event-time order) and returns the alerts it
    /// raised.
    pub fn apply(&mut self, input: &Input, now_us: i64) -> Vec<Alert> {
        let mut alerts = Vec::new();
        let cid = input.customer_id;
        let t = input.t;
        let mut raise = |rule: RuleName, window: Window, order_id: Option<i64>, detail: String| {
            alerts.push(Alert {
                id: Alert::id_of(rule, cid, window.end),
                rule,
                customer_id: cid,
                window_start_us: window.start,
                window_end_us: window.end,
                order_id,
                detail,
                source_commit_us: input.commit_us,
                detected_at_us: now_us,
            })
        };
        let at = Window { start: t, end: t };
        match &input.fact {
            Fact::Customer {
                created_at_us,
                country,
            } => {
                let p = self.profiles.upsert(cid, t);
                if created_at_us.is_some() {
                    p.created_at_us = *created_at_us;
                }
                if let Some(c) = country {
                    p.countries.insert(c.clone());
                }
            }
            Fact::Order {
                order_id,
                total_cents,
                device,
                billing,
                shipping,
            } => {
                let order = Some(*order_id);
                if let (Some(rule), Some(windows)) = (&self.rules.velocity, &mut self.velocity)
                    && let Ok(touched) = windows.add(cid, t, |c| c.0 += 1)
                {
                    for (w, c) in touched {
                        if c.0 == rule.max_orders + 1 {
                            raise(
                                RuleName::Velocity,
                                w,
                                order,
                                format!("{} orders in {} s", c.0, rule.window_us / 1_000_000),
                            );
                        }
                    }
                }
                let p = self.profiles.upsert(cid, t);
                if let Some(rule) = &self.rules.amount_spike
                    && p.orders >= u64::from(rule.min_history)
                    && (*total_cents as f64)
                        >= rule.factor * (p.order_cents as f64 / p.orders as f64)
                {
                    raise(
                        RuleName::AmountSpike,
                        at,
                        order,
                        format!(
                            "{} against a mean of {} over {} orders",
                            money(*total_cents),
                            money(p.order_cents / p.orders as i64),
                            p.orders
                        ),
                    );
                }
                if let Some(rule) = &self.rules.new_account_large
                    && *total_cents >= rule.min_cents
                    && let Some(created) = p.created_at_us
                    && t - created < rule.max_account_age_us
                {
                    raise(
                        RuleName::NewAccountLarge,
                        at,
                        order,
                        format!(
                            "{} from an account {} s old",
                            money(*total_cents),
                            (t - created) / 1_000_000
                        ),
                    );
                }
                if self.rules.country_mismatch
                    && let (Some(b), Some(s)) = (billing, shipping)
                    && b != s
                    && !p.countries.contains(s)
                {
                    raise(
                        RuleName::CountryMismatch,
                        at,
                        order,
                        format!("billed in {b}, shipped to {s}, never used before"),
                    );
                }
                if let Some(rule) = &self.rules.cart_then_large_new_device {
                    while p.carts.front().is_some_and(|c| *c <= t - rule.within_us) {
                        p.carts.pop_front();
                    }
                    if *total_cents >= rule.min_cents
                        && p.carts.len() >= rule.min_add_to_carts as usize
                        && !p.devices.is_empty()
                        && let Some(d) = device
                        && !p.devices.contains(d)
                    {
                        raise(
                            RuleName::CartThenLargeNewDevice,
                            at,
                            order,
                            format!(
                                "{} from new device {d} after {} add-to-carts",
                                money(*total_cents),
                                p.carts.len()
                            ),
                        );
                    }
                }
                p.orders += 1;
                p.order_cents += total_cents;
                if let Some(s) = shipping {
                    p.countries.insert(s.clone());
                }
                if let Some(d) = device {
                    p.devices.insert(d.clone());
                }
            }
            Fact::Payment {
                order_id,
                amount_cents,
                failed,
                ..
            } => {
                let order = Some(*order_id);
                self.profiles.upsert(cid, t);
                if *failed {
                    if let (Some(rule), Some(windows)) =
                        (&self.rules.failed_payments, &mut self.failed)
                        && let Ok(touched) = windows.add(cid, t, |c| c.0 += 1)
                    {
                        for (w, c) in touched {
                            if c.0 == rule.min_failed {
                                raise(
                                    RuleName::FailedPayments,
                                    w,
                                    order,
                                    format!(
                                        "{} failed payments in {} s",
                                        c.0,
                                        rule.window_us / 1_000_000
                                    ),
                                );
                            }
                        }
                    }
                } else if let (Some(rule), Some(sessions)) =
                    (&self.rules.card_testing, &mut self.card)
                {
                    let tiny = *amount_cents < rule.tiny_cents;
                    if let Ok(touched) = sessions.add(cid, t, |s| {
                        if tiny {
                            s.tiny += 1
                        }
                    }) {
                        for (w, s) in touched {
                            if *amount_cents >= rule.large_cents && s.tiny >= rule.min_tiny {
                                raise(
                                    RuleName::CardTesting,
                                    w,
                                    order,
                                    format!(
                                        "{} after {} tiny payments",
                                        money(*amount_cents),
                                        s.tiny
                                    ),
                                );
                            }
                        }
                    }
                }
            }
            Fact::AddToCart { .. } => {
                let p = self.profiles.upsert(cid, t);
                p.carts.push_back(t);
                if let Some(rule) = &self.rules.cart_then_large_new_device {
                    while p.carts.front().is_some_and(|c| *c <= t - rule.within_us) {
                        p.carts.pop_front();
                    }
                }
            }
        }
        alerts
    }
}

fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, (cents % 100).abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;
    const T0: i64 = 1_700_000_040 * S;

    fn input(cid: i64, t: EventTime, id: &str, fact: Fact) -> Input {
        Input {
            customer_id: cid,
            t,
            commit_us: t,
            id: id.to_string(),
            fact,
        }
    }

    fn order(id: i64, cents: i64) -> Fact {
        Fact::Order {
            order_id: id,
            total_cents: cents,
            device: Some("d1".into()),
            billing: Some("DE".into()),
            shipping: Some("DE".into()),
        }
    }

    fn payment(id: i64, cents: i64, failed: bool) -> Fact {
        Fact::Payment {
            payment_id: id,
            order_id: id,
            amount_cents: cents,
            failed,
            card: Some(format!("card{id}")),
        }
    }

    fn customer(created: i64) -> Fact {
        Fact::Customer {
            created_at_us: Some(created),
            country: Some("DE".into()),
        }
    }

    /// Runs inputs in order.
    fn run(d: &mut Detector, inputs: &[Input]) -> Vec<Alert> {
        inputs.iter().flat_map(|i| d.apply(i, 0)).collect()
    }

    fn rules_of(alerts: &[Alert]) -> Vec<RuleName> {
        alerts.iter().map(|a| a.rule).collect()
    }

    #[test]
    fn velocity_alerts_once_per_window_and_not_at_the_threshold() {
        let mut d = Detector::new(Rules::defaults(), 0).unwrap();
        // Five orders in 10 s: at the threshold, no alert.
        let mut inputs: Vec<Input> = (0..5)
            .map(|i| input(7, T0 + i * 2 * S, &format!("o{i}"), order(i, 1000)))
            .collect();
        assert!(run(&mut d, &inputs).is_empty());
        // The sixth and seventh in the same minute: one alert per window
        // holding six, not one per order.
        inputs = vec![
            input(7, T0 + 12 * S, "o5", order(5, 1000)),
            input(7, T0 + 14 * S, "o6", order(6, 1000)),
        ];
        let alerts = run(&mut d, &inputs);
        assert_eq!(rules_of(&alerts), vec![RuleName::Velocity; 2]);
        // T0 is a multiple of 30 s: the windows [T0-30, T0+30) and
        // [T0, T0+60) hold all six.
        let ends: BTreeSet<i64> = alerts.iter().map(|a| a.window_end_us).collect();
        assert_eq!(ends, BTreeSet::from([T0 + 30 * S, T0 + 60 * S]));
        assert_eq!(
            alerts[0].id,
            format!("velocity/customer/7/{}", alerts[0].window_end_us)
        );
    }

    #[test]
    fn amount_spike_is_against_the_customers_own_history() {
        let mut d = Detector::new(Rules::defaults(), 0).unwrap();
        let mut inputs: Vec<Input> = (0..5)
            .map(|i| input(1, T0 + i * 3600 * S, &format!("a{i}"), order(i, 5_000)))
            .collect();
        // A bulk buyer: large, but usual for them.
        inputs.extend((0..5).map(|i| {
            input(
                2,
                T0 + i * 3600 * S,
                &format!("b{i}"),
                order(100 + i, 400_000),
            )
        }));
        inputs.push(input(2, T0 + 6 * 3600 * S, "b5", order(105, 450_000)));
        inputs.push(input(1, T0 + 6 * 3600 * S, "a5", order(5, 50_000)));
        let alerts = run(&mut d, &inputs);
        assert_eq!(rules_of(&alerts), vec![RuleName::AmountSpike]);
        assert_eq!((alerts[0].customer_id, alerts[0].order_id), (1, Some(5)));
        assert_eq!(alerts[0].window_end_us, T0 + 6 * 3600 * S);
    }

    #[test]
    fn card_testing_needs_tiny_payments_then_a_large_one_in_one_session() {
        let mut d = Detector::new(Rules::defaults(), 0).unwrap();
        let tiny = |i: i64, t: i64| input(3, t, &format!("p{i}"), payment(i, 150, false));
        let inputs = vec![
            tiny(1, T0),
            tiny(2, T0 + 60 * S),
            tiny(3, T0 + 120 * S),
            input(3, T0 + 180 * S, "p4", payment(4, 90_000, false)),
        ];
        let alerts = run(&mut d, &inputs);
        assert_eq!(rules_of(&alerts), vec![RuleName::CardTesting]);
        assert_eq!(alerts[0].window_end_us, T0 + 180 * S + 300 * S);
        // The same pattern with a gap longer than the session's: nothing.
        let mut d = Detector::new(Rules::defaults(), 0).unwrap();
        let inputs = vec![
            tiny(1, T0),
            tiny(2, T0 + 60 * S),
            tiny(3, T0 + 120 * S),
            input(3, T0 + 1000 * S, "p4", payment(4, 90_000, false)),
        ];
        assert!(run(&mut d, &inputs).is_empty());
    }

    #[test]
    fn failed_payments_alert_at_the_third_not_at_one_retry() {
        let mut d = Detector::new(Rules::defaults(), 0).unwrap();
        // A shopper who retries a declined card once.
        let retry = vec![
            input(4, T0, "f1", payment(1, 5_000, true)),
            input(4, T0 + 30 * S, "f2", payment(2, 5_000, false)),
        ];
        assert!(run(&mut d, &retry).is_empty());
        let failing: Vec<Input> = (0..3)
            .map(|i| {
                input(
                    5,
                    T0 + i * 60 * S,
                    &format!("g{i}"),
                    payment(10 + i, 5_000, true),
                )
            })
            .collect();
        let alerts = run(&mut d, &failing);
        assert!(!alerts.is_empty());
        assert!(
            alerts
                .iter()
                .all(|a| a.rule == RuleName::FailedPayments && a.customer_id == 5)
        );
    }

    #[test]
    fn new_accounts_countries_and_new_devices() {
        let mut d = Detector::new(Rules::defaults(), 0).unwrap();
        let mut inputs = vec![
            input(6, T0, "c6", customer(T0)),
            input(6, T0 + 120 * S, "o1", order(1, 150_000)),
        ];
        let alerts = run(&mut d, &inputs);
        assert_eq!(rules_of(&alerts), vec![RuleName::NewAccountLarge]);

        // A traveller ships to a country used before; a fraudster to a new one.
        let mut travel = order(2, 3_000);
        if let Fact::Order {
            billing, shipping, ..
        } = &mut travel
        {
            *billing = Some("DE".into());
            *shipping = Some("FR".into());
        }
        inputs = vec![input(6, T0 + 3 * 3600 * S, "o2", travel.clone())];
        assert_eq!(
            rules_of(&run(&mut d, &inputs)),
            vec![RuleName::CountryMismatch]
        );
        inputs = vec![input(6, T0 + 4 * 3600 * S, "o3", travel)];
        assert!(
            run(&mut d, &inputs).is_empty(),
            "FR is a country used before"
        );

        // Five add-to-carts, then a large order from a device never used.
        let mut inputs: Vec<Input> = (0..5)
            .map(|i| {
                input(
                    6,
                    T0 + 5 * 3600 * S + i * S,
                    &format!("k{i}"),
                    Fact::AddToCart {
                        product_id: i,
                        device: "d9".into(),
                    },
                )
            })
            .collect();
        let mut large = order(4, 60_000);
        if let Fact::Order { device, .. } = &mut large {
            *device = Some("d9".into());
        }
        inputs.push(input(6, T0 + 5 * 3600 * S + 60 * S, "o4", large));
        assert_eq!(
            rules_of(&run(&mut d, &inputs)),
            vec![RuleName::CartThenLargeNewDevice]
        );
    }

    #[test]
    fn state_survives_a_round_trip_and_expires_when_quiet() {
        let mut d = Detector::new(Rules::defaults(), 0).unwrap();
        run(&mut d, &[input(8, T0, "o1", order(1, 1000))]);
        let json = serde_json::to_string(&d).unwrap();
        let mut back: Detector = serde_json::from_str(&json).unwrap();
        assert_eq!(back.customers(), 1);
        back.advance(T0 + PROFILE_TTL_US + S);
        assert_eq!(back.customers(), 0);
        assert_eq!(back.open_windows(), 0);
    }
}
