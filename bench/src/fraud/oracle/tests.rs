//! The oracle against the detector on made-up timelines: scripted customers
//! for every rule and random ones around the thresholds (bursts, ties in
//! the same microsecond, snapshot rows, failed payments, clicks), the same
//! facts given to both as bronze rows and as detector inputs.

use std::collections::BTreeSet;

use arrow::array::{Int64Array, StringArray};
use serde_json::json;
use tributary_live::fraud::detector::Detector;
use tributary_live::fraud::input::{Fact, Input};

use super::*;

const S: i64 = 1_000_000;
const T0: i64 = 1_767_225_600_000_000;

/// xorshift64: deterministic without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[(self.next() % xs.len() as u64) as usize].clone()
    }
}

fn ts(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

#[derive(Default)]
struct World {
    orders: Vec<(String, String, i64, String)>,
    payments: Vec<(String, String, i64, String)>,
    customers: Vec<(String, String, i64, String)>,
    clicks: Vec<Click>,
    inputs: Vec<Input>,
    seq: u64,
    order_id: i64,
}

impl World {
    fn id(&mut self, rng: &mut Rng) -> String {
        self.seq += 1;
        // Ids not in time order, so ties in the same microsecond test the
        // tiebreak.
        format!("{:04}-{}", rng.next() % 10_000, self.seq)
    }

    fn customer(&mut self, rng: &mut Rng, cid: i64, t: i64, country: &str, snapshot: bool) {
        let id = self.id(rng);
        let (op, commit) = if snapshot {
            ("r", t + 3_600 * S)
        } else {
            ("c", t)
        };
        let after = json!({"id": cid, "created_at": ts(t), "country": country});
        self.customers
            .push((id.clone(), op.into(), commit, after.to_string()));
        self.inputs.push(Input {
            customer_id: cid,
            t,
            commit_us: commit,
            id,
            fact: Fact::Customer {
                created_at_us: Some(t),
                country: Some(country.into()),
            },
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn order(
        &mut self,
        rng: &mut Rng,
        cid: i64,
        t: i64,
        cents: i64,
        device: &str,
        billing: &str,
        shipping: &str,
    ) -> i64 {
        let id = self.id(rng);
        self.order_id += 1;
        let after = json!({"id": self.order_id, "customer_id": cid, "total": money(cents),
            "device_id": device, "billing_country": billing, "shipping_country": shipping,
            "created_at": ts(t)});
        self.orders
            .push((id.clone(), "c".into(), t, after.to_string()));
        // An update: never a new order.
        let upd = self.id(rng);
        self.orders
            .push((upd, "u".into(), t + S, after.to_string()));
        self.inputs.push(Input {
            customer_id: cid,
            t,
            commit_us: t,
            id,
            fact: Fact::Order {
                order_id: self.order_id,
                total_cents: cents,
                device: Some(device.into()),
                billing: Some(billing.into()),
                shipping: Some(shipping.into()),
            },
        });
        self.order_id
    }

    fn payment(&mut self, rng: &mut Rng, cid: i64, t: i64, cents: i64, failed: bool) {
        let id = self.id(rng);
        let after = json!({"id": self.seq, "order_id": self.order_id, "customer_id": cid,
            "amount": money(cents), "status": if failed { "failed" } else { "captured" },
            "card_fingerprint": "c1"});
        self.payments
            .push((id.clone(), "c".into(), t, after.to_string()));
        self.inputs.push(Input {
            customer_id: cid,
            t,
            commit_us: t,
            id,
            fact: Fact::Payment {
                payment_id: self.seq as i64,
                order_id: self.order_id,
                amount_cents: cents,
                failed,
                card: Some("c1".into()),
            },
        });
    }

    fn cart(&mut self, rng: &mut Rng, cid: i64, t: i64, device: &str, late: bool) {
        let id = self.id(rng);
        let offset = self.clicks.len() as i64;
        self.clicks.push(Click {
            event_id: id.clone(),
            add_to_cart: true,
            customer_id: cid,
            ts_us: t,
            partition: 0,
            offset,
        });
        if !late {
            self.inputs.push(Input {
                customer_id: cid,
                t,
                commit_us: t,
                id,
                fact: Fact::AddToCart {
                    product_id: 1,
                    device: device.into(),
                },
            });
        }
    }

    fn rows(rows: &[(String, String, i64, String)]) -> BronzeRows {
        vec![
            RecordBatch::try_new(
                bronze_rows_schema(),
                vec![
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.0))),
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.1))),
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.3))),
                ],
            )
            .unwrap(),
        ]
    }
}

/// Scripted customers, one or more per rule, and their look-alikes.
fn scripted(w: &mut World, rng: &mut Rng) {
    let mut t = T0;
    let mut next = |gap: i64| {
        t += gap;
        t
    };
    // velocity: 6 orders in 10 s; a look-alike with 5.
    for (cid, n) in [(1, 6), (2, 5)] {
        w.customer(rng, cid, next(S), "DE", false);
        for _ in 0..n {
            let t = next(2 * S);
            w.order(rng, cid, t, 3_000, "d1", "DE", "DE");
        }
    }
    // amount spike: 5 orders of 20, then 250; a snapshot-loaded customer.
    w.customer(rng, 3, next(S), "DE", true);
    for _ in 0..5 {
        let t = next(100 * S);
        w.order(rng, 3, t, 2_000, "d1", "DE", "DE");
    }
    let t1 = next(100 * S);
    w.order(rng, 3, t1, 25_000, "d1", "DE", "DE");
    // card testing: 3 tiny, then a large one; failed ones do not count.
    w.customer(rng, 4, next(S), "DE", false);
    for _ in 0..3 {
        let t = next(30 * S);
        w.payment(rng, 4, t, 150, false);
    }
    let t1 = next(30 * S);
    w.payment(rng, 4, t1, 60_000, false);
    w.customer(rng, 5, next(S), "DE", false);
    for failed in [false, false, true] {
        let t = next(30 * S);
        w.payment(rng, 5, t, 150, failed);
    }
    let t1 = next(30 * S);
    w.payment(rng, 5, t1, 60_000, false);
    // new account, country mismatch, a traveller.
    w.customer(rng, 6, next(S), "DE", false);
    let t1 = next(60 * S);
    w.order(rng, 6, t1, 150_000, "d1", "DE", "DE");
    w.customer(rng, 7, next(S), "DE", false);
    let t1 = next(3_600 * S);
    w.order(rng, 7, t1, 3_000, "d1", "DE", "BR");
    w.customer(rng, 8, next(S), "DE", false);
    let t1 = next(3_600 * S);
    w.order(rng, 8, t1, 3_000, "d1", "FR", "DE");
    // failed payments: 3 in a minute; one retry.
    w.customer(rng, 9, next(S), "DE", false);
    for _ in 0..3 {
        let t = next(10 * S);
        w.payment(rng, 9, t, 3_000, true);
    }
    // cart then large from a new device; one click late (never applied).
    w.customer(rng, 10, next(S), "DE", false);
    let t1 = next(3_600 * S);
    w.order(rng, 10, t1, 3_000, "d1", "DE", "DE");
    for i in 0..6 {
        let t = next(10 * S);
        w.cart(rng, 10, t, "d9", i == 0);
    }
    let t1 = next(10 * S);
    w.order(rng, 10, t1, 60_000, "d9", "DE", "DE");
}

/// Random customers around the thresholds.
fn random(w: &mut World, rng: &mut Rng, customers: i64) {
    let gaps = [
        0,
        1,
        500_000,
        2 * S,
        10 * S,
        30 * S,
        100 * S,
        400 * S,
        2_000 * S,
    ];
    let amounts = [
        150, 199, 200, 2_000, 3_000, 50_000, 60_000, 100_000, 150_000,
    ];
    for cid in 100..100 + customers {
        let mut t = T0 + (rng.next() % 1_000) as i64 * S;
        let home = rng.pick(&["DE", "FR"]);
        let snapshot = rng.next().is_multiple_of(5);
        w.customer(rng, cid, t, home, snapshot);
        for _ in 0..(5 + rng.next() % 30) {
            t += rng.pick(&gaps) + 1_000 * S * i64::from(rng.next().is_multiple_of(50));
            match rng.next() % 10 {
                0..=3 => {
                    let (cents, device) = (rng.pick(&amounts), rng.pick(&["d1", "d2", "d3"]));
                    let (billing, shipping) =
                        (rng.pick(&["DE", "FR"]), rng.pick(&["DE", "FR", "BR"]));
                    w.order(rng, cid, t, cents, device, billing, shipping);
                }
                4..=6 => {
                    let cents = rng.pick(&[150, 150, 199, 200, 3_000, 50_000, 60_000]);
                    let failed = rng.next().is_multiple_of(3);
                    w.payment(rng, cid, t, cents, failed);
                }
                7 => {
                    let country = rng.pick(&["DE", "FR", "BR"]);
                    w.customer(rng, cid, t, country, false)
                }
                _ => {
                    let late = rng.next().is_multiple_of(20);
                    w.cart(rng, cid, t, "d1", late);
                }
            }
        }
    }
}

async fn compare(w: World) -> BTreeSet<String> {
    let mut d = Detector::new(Rules::defaults(), 0).unwrap();
    let mut inputs = w.inputs.clone();
    inputs.sort_by(|a, b| (a.t, &a.id).cmp(&(b.t, &b.id)));
    let mut detected = BTreeSet::new();
    for i in &inputs {
        for a in d.apply(i, 0) {
            detected.insert(a.id);
        }
        d.advance(i.t);
    }
    let late_clicks: HashSet<(i32, i64)> = w
        .clicks
        .iter()
        .filter(|c| !inputs.iter().any(|i| i.id == c.event_id))
        .map(|c| (c.partition, c.offset))
        .collect();
    let oracle = alert_ids(
        &Inputs {
            orders: World::rows(&w.orders),
            payments: World::rows(&w.payments),
            customers: World::rows(&w.customers),
            clicks: w.clicks.clone(),
            late_clicks,
        },
        &Rules::defaults(),
    )
    .await
    .unwrap();
    let only_d: Vec<_> = detected.difference(&oracle).collect();
    let only_o: Vec<_> = oracle.difference(&detected).collect();
    assert!(
        only_d.is_empty() && only_o.is_empty(),
        "only the detector: {only_d:?}\nonly the oracle: {only_o:?}"
    );
    oracle
}

#[tokio::test]
async fn the_oracle_gives_the_detectors_alerts_on_scripted_timelines() {
    let mut w = World::default();
    let mut rng = Rng(7);
    scripted(&mut w, &mut rng);
    let ids = compare(w).await;
    let customers_of = |rule: &str| -> BTreeSet<i64> {
        ids.iter()
            .filter(|id| id.starts_with(&format!("{rule}/")))
            .map(|id| id.split('/').nth(2).unwrap().parse().unwrap())
            .collect()
    };
    assert_eq!(customers_of("velocity"), [1].into());
    assert_eq!(customers_of("amount_spike"), [3].into());
    assert_eq!(customers_of("card_testing"), [4].into());
    assert_eq!(customers_of("new_account_large"), [6].into());
    assert_eq!(customers_of("country_mismatch"), [7].into());
    assert_eq!(customers_of("failed_payments"), [9].into());
    assert_eq!(customers_of("cart_then_large_new_device"), [10].into());
}

#[tokio::test]
async fn the_oracle_gives_the_detectors_alerts_on_random_timelines() {
    let mut all = BTreeSet::new();
    for seed in [1, 2, 3, 4] {
        let mut w = World::default();
        let mut rng = Rng(seed * 7_919);
        random(&mut w, &mut rng, 150);
        all.extend(compare(w).await);
    }
    for rule in tributary_live::fraud::rules::RuleName::ALL {
        assert!(
            all.iter().any(|id| id.starts_with(&format!("{rule}/"))),
            "no {rule} alert: the timelines test too little"
        );
    }
}

#[test]
fn cents_are_exact() {
    assert_eq!(cents("12.3"), Some(1_230));
    assert_eq!(cents("0.05"), Some(5));
    assert_eq!(cents("-1.99"), Some(-199));
    assert_eq!(cents("7"), Some(700));
    assert_eq!(cents("1.500"), Some(150));
    assert_eq!(cents("1.999"), None);
    assert_eq!(cents(".5"), None);
    assert_eq!(cents("1e3"), None);
}
