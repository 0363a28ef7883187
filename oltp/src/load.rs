//! The load generator: realistic, rate-limited traffic through the HTTP API.
//!
//! One dispatcher task draws every decision from a seeded RNG (which
//! operation, which target, which body), so the sequence of operations is a
//! function of the seed and of the server's answers. Targets come from an
//! in-memory book of entities by state, and a target is taken out of the book
//! while a request on it is in flight, so the generator never races itself.
//!
//! Arrivals follow an open model: request n is due at `start + n / rate`,
//! whatever happened to the requests before it, and each request's latency
//! is measured from when it was due, not from when it was sent. A slow
//! server therefore cannot hide its queue by slowing the generator down
//! (coordinated omission): waiting for one of the `concurrency` slots
//! counts as latency, and a plan that left more than [`LATE_AFTER`] after
//! it was due counts as late. The steps of one journey (view, cart, order,
//! pay) follow one another, so each step's clock starts when the step
//! before it ended. Latencies go into HDR histograms (`LoadReport`).
//!
//! Two knobs shape the traffic for stream processing, both off by default
//! (then the traffic is exactly what it was without them):
//! - `browse`: customers get a home country, 1 or 2 usual devices and a card;
//!   before an order they view its products and put up to 2 in the cart
//!   (`POST /products/{id}/view`, `/cart`, which need the service's
//!   clickstream), and orders carry the device and billing = shipping = home
//!   country; card payments carry the card's fingerprint.
//! - `fraud_rate`: the share of planned orders replaced by a labelled
//!   incident ([`fraud`]), fraud or a benign look-alike; implies `browse`.
//!   The labels go to `labels_path`. The rest of the traffic is then kept
//!   clear of every pattern: orders under 400.00 and under 5x the customer's
//!   mean once they have 5 orders, at most 3 orders per customer per 60 s,
//!   one card per customer, no failed payments, no product under 2.00.

mod fraud;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// What to drive and how hard.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Root of the order service, e.g. `http://127.0.0.1:8088`.
    pub base_url: String,
    /// Requests per second.
    pub rate: f64,
    /// How long to run; at most `rate * duration` requests are sent.
    pub duration: Duration,
    /// Most requests in flight at once.
    pub concurrency: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Browse before buying, with devices and countries (see the module doc).
    pub browse: bool,
    /// Share of planned orders replaced by a labelled incident, 0 to 1.
    pub fraud_rate: f64,
    /// Where the incidents' labels go (JSON lines, truncated at start);
    /// required when `fraud_rate` > 0.
    pub labels_path: Option<PathBuf>,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            base_url: "http://127.0.0.1:8088".into(),
            rate: 10.0,
            duration: Duration::from_secs(60),
            concurrency: 8,
            seed: 42,
            browse: false,
            fraud_rate: 0.0,
            labels_path: None,
        }
    }
}

/// What a load run did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    pub requests: u64,
    pub errors: u64,
    /// Latency by operation, in microseconds, from each request's intended
    /// send time (see the module doc): HDR histograms, 3 significant digits.
    pub latency_us: BTreeMap<String, Histogram<u64>>,
    /// Plans dispatched more than [`LATE_AFTER`] after their intended time
    /// (every slot busy): the client, not only the server, was behind.
    pub late: u64,
    /// The target rate and the rate achieved, requests per second.
    pub target_rate: f64,
    pub achieved_rate: f64,
    /// Requests sent, by operation.
    pub by_operation: BTreeMap<String, u64>,
    /// Failed requests (transport errors, 4xx, 5xx), by operation.
    pub errors_by_operation: BTreeMap<String, u64>,
    /// Incidents labelled, by pattern.
    pub incidents: BTreeMap<String, u64>,
    /// Incidents left unlabelled: a request failed or an amount came out
    /// other than planned.
    pub incidents_incomplete: u64,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
        let quantiles = |h: &Histogram<u64>| {
            format!(
                "p50={:.2}ms p90={:.2}ms p99={:.2}ms p99.9={:.2}ms max={:.2}ms",
                ms(h, 0.5),
                ms(h, 0.9),
                ms(h, 0.99),
                ms(h, 0.999),
                h.max() as f64 / 1e3
            )
        };
        for (op, n) in &self.by_operation {
            let errors = self.errors_by_operation.get(op).copied().unwrap_or(0);
            let latency = self
                .latency_us
                .get(op)
                .map(|h| format!(" {}", quantiles(h)))
                .unwrap_or_default();
            let line = format!("{op:<16} requests={n:<8} errors={errors:<6}{latency}");
            writeln!(f, "{}", line.trim_end())?;
        }
        if let Some(all) = self.all_latency() {
            writeln!(
                f,
                "{:<16} requests={:<8} errors={:<6} {}",
                "all",
                self.requests,
                self.errors,
                quantiles(&all)
            )?;
            writeln!(
                f,
                "rate: target {:.1}/s, achieved {:.1}/s; latency from intended send time (open model); {} plans dispatched late",
                self.target_rate, self.achieved_rate, self.late
            )?;
        }
        for (pattern, n) in &self.incidents {
            writeln!(f, "incident {pattern:<26} labelled={n}")?;
        }
        if self.incidents_incomplete > 0 {
            writeln!(
                f,
                "incidents incomplete (labelled `incomplete`) {}",
                self.incidents_incomplete
            )?;
        }
        Ok(())
    }
}

impl LoadReport {
    /// Every operation's latency in one histogram.
    pub fn all_latency(&self) -> Option<Histogram<u64>> {
        let mut hs = self.latency_us.values();
        let mut all = hs.next()?.clone();
        for h in hs {
            // Same bounds everywhere (`new_histogram`): cannot fail.
            let _ = all.add(h);
        }
        Some(all)
    }

    fn observe(&mut self, op: &str, latency: Duration) {
        self.latency_us
            .entry(op.to_owned())
            .or_insert_with(new_histogram)
            .saturating_record(latency.as_micros() as u64);
    }

    fn record(&mut self, op: &str, ok: bool) {
        self.requests += 1;
        *self.by_operation.entry(op.to_owned()).or_default() += 1;
        if !ok {
            self.errors += 1;
            *self.errors_by_operation.entry(op.to_owned()).or_default() += 1;
        }
    }
}

/// 1 µs to 10 min at 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// A plan dispatched later than this after its intended time counts as
/// late in the report.
pub const LATE_AFTER: Duration = Duration::from_millis(10);

tokio::task_local! {
    /// When the next request of this task was meant to be sent: its plan's
    /// intended time, then the end of the request before it (a journey's
    /// steps follow one another), or the end of a deliberate wait.
    static INTENDED: std::cell::Cell<Instant>;
}

/// Starts the task's latency clock over: what follows is not the
/// previous request's queue (a deliberate wait ended).
fn restart_clock() {
    let _ = INTENDED.try_with(|c| c.set(Instant::now()));
}

/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may finish after a shutdown request.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// A catalog smaller than this gets topped up to `CATALOG_TARGET` products.
const CATALOG_MIN: usize = 20;
const CATALOG_TARGET: usize = 50;
/// Customers signed up before the mixed workload starts.
const BOOTSTRAP_CUSTOMERS: usize = 20;
/// Share of orders sent with an idempotency key and retried once.
const KEYED_ORDER_SHARE: f64 = 0.25;

const CATEGORIES: [&str; 8] = [
    "books",
    "electronics",
    "garden",
    "grocery",
    "toys",
    "apparel",
    "sports",
    "beauty",
];
const ADJECTIVES: [&str; 8] = [
    "classic", "compact", "deluxe", "eco", "pro", "smart", "vintage", "wireless",
];
const FIRST_NAMES: [&str; 10] = [
    "Ada", "Bo", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana", "Ines", "Jun",
];
const LAST_NAMES: [&str; 8] = [
    "Ito", "Klein", "Lopez", "Moreau", "Novak", "Okafor", "Patel", "Rossi",
];
const STREETS: [&str; 6] = [
    "Main St",
    "High St",
    "Park Ave",
    "Station Rd",
    "Lake View",
    "Market Sq",
];
/// `(region, country, city, lat, lon)`.
const CITIES: [(&str, &str, &str, f64, f64); 12] = [
    ("eu", "DE", "Berlin", 52.52, 13.405),
    ("eu", "FR", "Paris", 48.857, 2.352),
    ("eu", "ES", "Madrid", 40.417, -3.704),
    ("eu", "IT", "Milan", 45.464, 9.19),
    ("us", "US", "New York", 40.713, -74.006),
    ("us", "US", "Chicago", 41.878, -87.63),
    ("us", "US", "San Francisco", 37.775, -122.419),
    ("us", "US", "Austin", 30.267, -97.743),
    ("apac", "JP", "Tokyo", 35.68, 139.69),
    ("apac", "SG", "Singapore", 1.352, 103.82),
    ("apac", "AU", "Sydney", -33.869, 151.209),
    ("apac", "IN", "Mumbai", 19.076, 72.878),
];
const PAYMENT_METHODS: [&str; 4] = ["card", "paypal", "bank_transfer", "gift_card"];
/// With fraud on: the most a background order may come to, in cents.
const BENIGN_MAX_TOTAL: i64 = 40_000;
/// With fraud on: most background orders per customer per 60 s.
const BENIGN_ORDERS_PER_MINUTE: usize = 3;
/// The price of the product card testers buy, in cents.
const TINY_PRICE: i64 = 149;

/// What the generator knows of a customer when browsing.
#[derive(Clone, Debug, PartialEq)]
struct Profile {
    home: String,
    devices: Vec<String>,
    card: String,
    /// Planned times of their recent orders (ticks of the rate).
    recent: VecDeque<u64>,
    orders: u32,
    total_cents: i64,
}
const CARRIERS: [&str; 4] = ["ups", "dhl", "fedex", "usps"];

/// Entities the generator knows, by state.
#[derive(Default)]
struct Book {
    /// `(id, price in cents)`, in id order so that low ids are the popular ones.
    products: Vec<(i64, i64)>,
    customers: Vec<i64>,
    pending: Vec<i64>,
    paid: Vec<i64>,
    shipped: Vec<i64>,
    delivered: Vec<i64>,
    /// With `browse`: customers' profiles, and the customer of each order
    /// not yet paid, cancelled or deleted.
    profiles: HashMap<i64, Profile>,
    order_customer: HashMap<i64, i64>,
}

/// One planned action; `Order` with a key sends two requests.
#[derive(Debug)]
enum Plan {
    CreateProduct(Value),
    Signup {
        body: Value,
        profile: Option<Profile>,
    },
    UpdateCustomer {
        id: i64,
        body: Value,
    },
    ChangePrice {
        id: i64,
        cents: i64,
    },
    Order {
        body: Value,
        key: Option<String>,
        /// Views and add-to-carts before it: `(add_to_cart, product, device)`.
        clicks: Vec<(bool, i64, String)>,
        customer: i64,
    },
    Pay {
        id: i64,
        method: &'static str,
        card: Option<String>,
    },
    Incident(fraud::Incident),
    Ship {
        id: i64,
        carrier: &'static str,
    },
    Deliver(i64),
    Cancel(i64),
    Refund(i64),
    Delete(i64),
    GetOrder(i64),
}

impl Plan {
    fn cost(&self) -> u64 {
        match self {
            Plan::Order { key, clicks, .. } => 1 + u64::from(key.is_some()) + clicks.len() as u64,
            Plan::Incident(i) => i.requests(),
            _ => 1,
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Signup,
    UpdateCustomer,
    ChangePrice,
    Order,
    Pay,
    Ship,
    Deliver,
    Cancel,
    Refund,
    Delete,
    GetOrder,
}

/// Relative frequency of each operation once the catalog and customers exist.
const MIX: [(Kind, u32); 11] = [
    (Kind::Signup, 8),
    (Kind::UpdateCustomer, 4),
    (Kind::ChangePrice, 3),
    (Kind::Order, 35),
    (Kind::Pay, 16),
    (Kind::Ship, 11),
    (Kind::Deliver, 8),
    (Kind::Cancel, 4),
    (Kind::Refund, 3),
    (Kind::Delete, 2),
    (Kind::GetOrder, 6),
];

struct Planner {
    rng: StdRng,
    /// Makes emails, SKUs and keys unique across runs against the same databases.
    nonce: u64,
    seq: u64,
    products_to_create: usize,
    customers_to_create: usize,
    browse: bool,
    fraud_rate: f64,
    /// Ticks of the rate planned so far: the planned time of the next plan.
    ticks: u64,
    /// Requests per second and the run's length, to place plans in time.
    rate: f64,
    duration: Duration,
    incidents: u64,
    /// The patterns of the current round of incidents, each once.
    deck: Vec<fraud::Pattern>,
    tiny_requested: bool,
}

fn take(rng: &mut StdRng, v: &mut Vec<i64>) -> Option<i64> {
    if v.is_empty() {
        None
    } else {
        Some(v.swap_remove(rng.random_range(0..v.len())))
    }
}

impl Planner {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn plan(&mut self, book: &mut Book) -> Plan {
        let plan = self.plan_one(book);
        self.ticks += plan.cost();
        plan
    }

    fn plan_one(&mut self, book: &mut Book) -> Plan {
        if self.products_to_create > 0 {
            self.products_to_create -= 1;
            return self.product();
        }
        if self.customers_to_create > 0 {
            self.customers_to_create -= 1;
            return self.signup();
        }
        if self.fraud() && !self.tiny_requested && !book.products.iter().any(|p| p.1 < 200) {
            self.tiny_requested = true;
            let seq = self.next_seq();
            return Plan::CreateProduct(json!({
                "sku": format!("SKU-{}-{seq}", self.nonce),
                "name": format!("sample sachet {seq}"),
                "category": "beauty",
                "price": TINY_PRICE as f64 / 100.0,
            }));
        }
        let total: u32 = MIX.iter().map(|(_, w)| w).sum();
        let mut pick = self.rng.random_range(0..total);
        let mut kind = Kind::Order;
        for (k, w) in MIX {
            if pick < w {
                kind = k;
                break;
            }
            pick -= w;
        }
        self.plan_kind(kind, book)
            .or_else(|| self.plan_kind(Kind::Order, book))
            .unwrap_or_else(|| {
                if book.products.is_empty() {
                    self.product()
                } else {
                    self.signup()
                }
            })
    }

    fn fraud(&self) -> bool {
        self.fraud_rate > 0.0
    }

    /// 60 s in ticks of the rate.
    fn minute_ticks(&self) -> u64 {
        (60.0 * self.rate).ceil() as u64
    }

    /// An incident instead of an order, with probability `fraud_rate`, when
    /// it fits in the time left.
    fn incident(&mut self, book: &Book) -> Option<Plan> {
        if !self.fraud() || !self.rng.random_bool(self.fraud_rate.min(1.0)) {
            return None;
        }
        if self.deck.is_empty() {
            self.deck = fraud::Pattern::ALL.to_vec();
            // Fisher-Yates from the seeded RNG.
            for i in (1..self.deck.len()).rev() {
                let j = self.rng.random_range(0..=i);
                self.deck.swap(i, j);
            }
        }
        let pattern = self.deck.pop()?;
        let Plan::Signup { body, .. } = self.signup() else {
            return None;
        };
        self.incidents += 1;
        let id = format!("inc-{}-{}", self.nonce, self.incidents);
        // Only products whose price the load never changes, so an
        // incident's amounts come out as planned.
        let fixed: Vec<(i64, i64)> = book
            .products
            .iter()
            .copied()
            .filter(|&(id, cents)| fraud::price_fixed(id, cents))
            .collect();
        let catalog = fraud::Catalog { products: &fixed };
        let incident = fraud::plan(&mut self.rng, id, pattern, body, &catalog)?;
        let now = self.ticks as f64 / self.rate;
        let left = self.duration.as_secs_f64() - now;
        (incident.span().as_secs_f64() + 1.0 < left).then_some(Plan::Incident(incident))
    }

    /// A background order: with `browse`, from a usual device at home,
    /// browsed first; with fraud on, kept clear of every pattern.
    fn order(&mut self, book: &mut Book) -> Option<Plan> {
        if book.products.is_empty() {
            return None;
        }
        if let Some(plan) = self.incident(book) {
            return Some(plan);
        }
        let window = self.minute_ticks();
        let rng = &mut self.rng;
        let mut customer = *book
            .customers
            .get(rng.random_range(0..book.customers.len().max(1)))?;
        if self.fraud_rate > 0.0 {
            // Someone who has not ordered much in the last minute.
            let now = self.ticks;
            let busy = |c: &i64| {
                book.profiles.get(c).is_some_and(|p| {
                    p.recent.iter().filter(|t| now < **t + window).count()
                        >= BENIGN_ORDERS_PER_MINUTE
                })
            };
            if busy(&customer) {
                customer = (0..5)
                    .map(|_| book.customers[rng.random_range(0..book.customers.len())])
                    .find(|c| !busy(c))?;
            }
        }
        let lines = rng.random_range(1..=5);
        let mut items: Vec<(i64, i64)> = (0..lines)
            .map(|_| {
                let product = book.products[zipf(rng, book.products.len())].0;
                let quantity = match rng.random_range(0..100) {
                    0..60 => 1,
                    60..85 => 2,
                    85..95 => 3,
                    _ => rng.random_range(4..=5),
                };
                (product, quantity)
            })
            .collect();
        let keyed = rng.random_bool(KEYED_ORDER_SHARE);
        let key = if keyed {
            let seq = self.next_seq();
            Some(format!("load-{}-{seq}", self.nonce))
        } else {
            None
        };
        let rng = &mut self.rng;
        let mut body = json!({"customer_id": customer, "currency": "USD"});
        let mut clicks = Vec::new();
        if self.browse
            && let Some(profile) = book.profiles.get_mut(&customer)
        {
            if self.fraud_rate > 0.0 {
                let price = |id: i64| {
                    book.products
                        .iter()
                        .find(|p| p.0 == id)
                        .map_or(i64::MAX, |p| p.1)
                };
                let cap = if profile.orders >= 5 {
                    (profile.total_cents / i64::from(profile.orders) * 5).min(BENIGN_MAX_TOTAL)
                } else {
                    BENIGN_MAX_TOTAL
                };
                items.retain(|(p, _)| price(*p) >= 200);
                items = fit_basket(items, cap, &price);
                if items.is_empty() {
                    // The cheapest regular product: at or under any cap
                    // a customer's history allows.
                    let cheapest = book
                        .products
                        .iter()
                        .filter(|p| p.1 >= 200)
                        .min_by_key(|p| p.1)?;
                    items = vec![(cheapest.0, 1)];
                }
                let total: i64 = items.iter().map(|(p, q)| price(*p) * q).sum();
                profile.orders += 1;
                profile.total_cents += total;
                profile.recent.push_back(self.ticks);
                while profile.recent.len() > BENIGN_ORDERS_PER_MINUTE {
                    profile.recent.pop_front();
                }
            }
            let device = profile.devices[rng.random_range(0..profile.devices.len())].clone();
            for (i, (product, _)) in items.iter().enumerate() {
                clicks.push((false, *product, device.clone()));
                if i < 2 && rng.random_bool(0.5) {
                    clicks.push((true, *product, device.clone()));
                }
            }
            body["device_id"] = json!(device);
            body["billing_country"] = json!(profile.home);
            body["shipping_country"] = json!(profile.home);
        }
        body["items"] = items
            .iter()
            .map(|(p, q)| json!({"product_id": p, "quantity": q}))
            .collect();
        Some(Plan::Order {
            body,
            key,
            clicks,
            customer,
        })
    }

    fn plan_kind(&mut self, kind: Kind, book: &mut Book) -> Option<Plan> {
        if let Kind::Order = kind {
            return self.order(book);
        }
        let rng = &mut self.rng;
        Some(match kind {
            Kind::Signup => self.signup(),
            Kind::UpdateCustomer => {
                let id = *book
                    .customers
                    .get(rng.random_range(0..book.customers.len().max(1)))?;
                let street = STREETS[rng.random_range(0..STREETS.len())];
                let mut body = json!({"address": format!("{} {street}", rng.random_range(1..400))});
                if rng.random_bool(0.2) {
                    body["name"] = json!(self.name());
                }
                Plan::UpdateCustomer { id, body }
            }
            Kind::ChangePrice => {
                let (id, cents) = *book
                    .products
                    .get(rng.random_range(0..book.products.len().max(1)))?;
                // What incidents buy keeps its price (card testers' cheap
                // product stays under 2.00, planned totals stay in range).
                if self.fraud_rate > 0.0 && fraud::price_fixed(id, cents) {
                    return None;
                }
                let factor = rng.random_range(0.8..1.25);
                let cents = ((cents as f64 * factor).round() as i64).max(1);
                Plan::ChangePrice { id, cents }
            }
            Kind::Order => unreachable!("planned by Planner::order"),
            Kind::Pay => {
                let id = take(rng, &mut book.pending)?;
                let method = PAYMENT_METHODS[rng.random_range(0..PAYMENT_METHODS.len())];
                let customer = book.order_customer.remove(&id);
                let card = customer
                    .and_then(|c| book.profiles.get(&c))
                    .filter(|_| method == "card")
                    .map(|p| p.card.clone());
                Plan::Pay { id, method, card }
            }
            Kind::Ship => Plan::Ship {
                id: take(rng, &mut book.paid)?,
                carrier: CARRIERS[rng.random_range(0..CARRIERS.len())],
            },
            Kind::Deliver => Plan::Deliver(take(rng, &mut book.shipped)?),
            Kind::Cancel => {
                let id = take(rng, &mut book.pending)?;
                book.order_customer.remove(&id);
                Plan::Cancel(id)
            }
            Kind::Delete => {
                let id = take(rng, &mut book.pending)?;
                book.order_customer.remove(&id);
                Plan::Delete(id)
            }
            Kind::Refund => {
                let start = rng.random_range(0..3);
                let id = (0..3).find_map(|i| {
                    let list = match (start + i) % 3 {
                        0 => &mut book.paid,
                        1 => &mut book.shipped,
                        _ => &mut book.delivered,
                    };
                    take(rng, list)
                })?;
                Plan::Refund(id)
            }
            Kind::GetOrder => {
                let pool = if book.delivered.is_empty() {
                    &book.pending
                } else {
                    &book.delivered
                };
                Plan::GetOrder(*pool.get(rng.random_range(0..pool.len().max(1)))?)
            }
        })
    }

    fn name(&mut self) -> String {
        format!(
            "{} {}",
            FIRST_NAMES[self.rng.random_range(0..FIRST_NAMES.len())],
            LAST_NAMES[self.rng.random_range(0..LAST_NAMES.len())]
        )
    }

    fn product(&mut self) -> Plan {
        let seq = self.next_seq();
        let category = CATEGORIES[self.rng.random_range(0..CATEGORIES.len())];
        let adjective = ADJECTIVES[self.rng.random_range(0..ADJECTIVES.len())];
        // Log-uniform prices between about 2 and 500.
        let price = (self.rng.random_range(0.7f64..6.2).exp() * 100.0).round() / 100.0;
        Plan::CreateProduct(json!({
            "sku": format!("SKU-{}-{seq}", self.nonce),
            "name": format!("{adjective} {category} item {seq}"),
            "category": category,
            "price": price,
        }))
    }

    fn signup(&mut self) -> Plan {
        let seq = self.next_seq();
        let (region, country, city, lat, lon) = CITIES[self.rng.random_range(0..CITIES.len())];
        let name = self.name();
        let street = STREETS[self.rng.random_range(0..STREETS.len())];
        let body = json!({
            "email": format!("load{}.{seq}@example.com", self.nonce),
            "name": name,
            "region": region,
            "country": country,
            "city": city,
            "address": format!("{} {street}", self.rng.random_range(1..400)),
            "lat": lat + self.rng.random_range(-0.2..0.2),
            "lon": lon + self.rng.random_range(-0.2..0.2),
        });
        let profile = (self.browse || self.fraud()).then(|| Profile {
            home: country.to_owned(),
            devices: (0..self.rng.random_range(1..=2))
                .map(|_| format!("dev-{:08x}", self.rng.random::<u32>()))
                .collect(),
            card: format!("fp-{:016x}", self.rng.random::<u64>()),
            recent: VecDeque::new(),
            orders: 0,
            total_cents: 0,
        });
        Plan::Signup { body, profile }
    }
}

/// Lowers quantities, then drops lines from the end, until the basket comes
/// to at most `cap` cents; empty when even one unit of the first line is
/// over.
fn fit_basket(
    mut items: Vec<(i64, i64)>,
    cap: i64,
    price: &impl Fn(i64) -> i64,
) -> Vec<(i64, i64)> {
    let total = |items: &[(i64, i64)]| -> i64 {
        items
            .iter()
            .map(|(p, q)| price(*p).saturating_mul(*q))
            .sum()
    };
    while total(&items) > cap {
        if let Some(line) = items.iter_mut().rev().find(|(_, q)| *q > 1) {
            line.1 -= 1;
        } else {
            items.pop();
        }
    }
    items
}

/// A Zipf-like rank in `0..n`: rank `k` has weight `1 / (k + 1)^1.1`.
fn zipf(rng: &mut StdRng, n: usize) -> usize {
    let weight = |k: usize| 1.0 / ((k + 1) as f64).powf(1.1);
    let total: f64 = (0..n).map(weight).sum();
    let mut x = rng.random_range(0.0..total);
    for k in 0..n {
        x -= weight(k);
        if x < 0.0 {
            return k;
        }
    }
    n - 1
}

fn validate(config: &LoadConfig) -> Result<()> {
    if !(config.rate.is_finite() && config.rate > 0.0) {
        return Err(Error::Config {
            field: "load.rate",
            reason: "must be a positive number of requests per second".into(),
        });
    }
    if config.concurrency == 0 {
        return Err(Error::Config {
            field: "load.concurrency",
            reason: "must be at least 1".into(),
        });
    }
    if !(config.fraud_rate.is_finite() && (0.0..=1.0).contains(&config.fraud_rate)) {
        return Err(Error::Config {
            field: "load.fraud_rate",
            reason: "must be between 0 and 1".into(),
        });
    }
    if config.fraud_rate > 0.0 && config.labels_path.is_none() {
        return Err(Error::Config {
            field: "load.labels_path",
            reason:
                "required when load.fraud_rate is above 0: fraud without labels measures nothing"
                    .into(),
        });
    }
    if !config.base_url.starts_with("http://") {
        return Err(Error::Config {
            field: "load.base_url",
            reason: "must be an http:// URL".into(),
        });
    }
    Ok(())
}

struct Shared {
    client: reqwest::Client,
    base: String,
    book: Mutex<Book>,
    report: Mutex<LoadReport>,
    /// Request slots; an incident gives its slot back while it waits.
    permits: Arc<Semaphore>,
    /// The labels file, when incidents are planned.
    labels: Mutex<Option<std::fs::File>>,
}

impl Shared {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one request and records it; `None` on transport failure.
    async fn send(
        &self,
        op: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> Option<(StatusCode, Value)> {
        self.send_expecting(op, method, path, body, key, StatusCode::is_success)
            .await
    }

    /// Like [`Shared::send`]; a status for which `expected` is false counts
    /// as an error.
    async fn send_expecting(
        &self,
        op: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
        expected: fn(&StatusCode) -> bool,
    ) -> Option<(StatusCode, Value)> {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        let result = async {
            let resp = req.send().await?;
            let status = resp.status();
            let bytes = resp.bytes().await?;
            Ok::<_, reqwest::Error>((
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            ))
        }
        .await;
        let done = Instant::now();
        let intended = INTENDED.try_with(|c| c.replace(done)).ok();
        let ok = matches!(&result, Ok((s, _)) if expected(s));
        {
            let mut report = self.report.lock().unwrap_or_else(|p| p.into_inner());
            report.record(op, ok);
            if let Some(intended) = intended {
                report.observe(op, done.saturating_duration_since(intended));
            }
        }
        match result {
            Ok(r) => Some(r),
            Err(error) => {
                tracing::debug!(op, %error, "load request failed");
                None
            }
        }
    }

    /// A view or an add-to-cart; answered 202.
    async fn click(&self, cart: bool, product: i64, customer: i64, device: &str) {
        let (op, verb) = if cart {
            ("add_to_cart", "cart")
        } else {
            ("view", "view")
        };
        let body = json!({"customer_id": customer, "device_id": device});
        self.send(
            op,
            Method::POST,
            &format!("/products/{product}/{verb}"),
            Some(&body),
            None,
        )
        .await;
    }

    /// Runs an incident's steps in order, then labels it when every step
    /// got the expected answer and the amounts came out as planned. The
    /// slot is given back during waits.
    async fn incident(&self, incident: fraud::Incident, permit: OwnedSemaphorePermit) {
        let mut permit = Some(permit);
        let first = chrono::Utc::now();
        let pattern = incident.pattern.name();
        let customer = match self
            .send(
                "incident_signup",
                Method::POST,
                "/customers",
                Some(&incident.signup),
                None,
            )
            .await
        {
            Some((StatusCode::CREATED, v)) => v.get("id").and_then(Value::as_i64),
            _ => None,
        };
        let mut complete = customer.is_some();
        let customer = customer.unwrap_or(0);
        let mut orders: Vec<i64> = Vec::new();
        let mut totals: Vec<i64> = Vec::new();
        for step in &incident.steps {
            if !complete {
                break;
            }
            if permit.is_none() {
                match self.permits.clone().acquire_owned().await {
                    Ok(p) => permit = Some(p),
                    Err(_) => return,
                }
            }
            complete = match step {
                fraud::Step::Wait(d) => {
                    permit = None;
                    tokio::time::sleep(*d).await;
                    restart_clock();
                    true
                }
                fraud::Step::View { product, device } | fraud::Step::Cart { product, device } => {
                    let verb = if matches!(step, fraud::Step::Cart { .. }) {
                        "cart"
                    } else {
                        "view"
                    };
                    let body = json!({"customer_id": customer, "device_id": device});
                    matches!(
                        self.send(
                            "incident_click",
                            Method::POST,
                            &format!("/products/{product}/{verb}"),
                            Some(&body),
                            None
                        )
                        .await,
                        Some((StatusCode::ACCEPTED, _))
                    )
                }
                fraud::Step::Order {
                    items,
                    device,
                    billing,
                    shipping,
                } => {
                    let body = json!({
                        "customer_id": customer,
                        "currency": "USD",
                        "items": items.iter().map(|(p, q)| json!({"product_id": p, "quantity": q})).collect::<Vec<_>>(),
                        "device_id": device,
                        "billing_country": billing,
                        "shipping_country": shipping,
                    });
                    match self
                        .send("incident_order", Method::POST, "/orders", Some(&body), None)
                        .await
                    {
                        Some((StatusCode::CREATED, v)) => {
                            let id = v.get("id").and_then(Value::as_i64);
                            let total = v
                                .get("total")
                                .and_then(Value::as_f64)
                                .map(|t| (t * 100.0).round() as i64);
                            if let (Some(id), Some(total)) = (id, total) {
                                orders.push(id);
                                totals.push(total);
                                true
                            } else {
                                false
                            }
                        }
                        _ => false,
                    }
                }
                fraud::Step::Pay {
                    order,
                    card,
                    outcome,
                } => {
                    let Some(id) = orders.get(*order) else {
                        complete = false;
                        break;
                    };
                    let (value, op, expected): (&str, &str, fn(&StatusCode) -> bool) = match outcome
                    {
                        fraud::Outcome::Captured => {
                            ("captured", "incident_pay", |s| *s == StatusCode::OK)
                        }
                        fraud::Outcome::Failed => ("failed", "incident_pay_declined", |s| {
                            *s == StatusCode::PAYMENT_REQUIRED
                        }),
                    };
                    let body =
                        json!({"method": "card", "card_fingerprint": card, "outcome": value});
                    self.send_expecting(
                        op,
                        Method::POST,
                        &format!("/orders/{id}/pay"),
                        Some(&body),
                        None,
                        expected,
                    )
                    .await
                    .is_some_and(|(s, _)| expected(&s))
                }
            };
        }
        let last = chrono::Utc::now();
        let labelled = complete && incident.amounts_hold(&totals);
        let mut label = fraud::Label::new(&incident, customer, orders, first, last);
        if !labelled {
            tracing::warn!(incident = %incident.id, pattern, ?totals, "incident incomplete; labelled `incomplete`");
            self.report
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .incidents_incomplete += 1;
            // Its customer may still have done part of the pattern (or more):
            // the label says so, and a score leaves the customer out. Without
            // a customer there is nothing to label.
            if customer == 0 {
                return;
            }
            label.label = fraud::INCOMPLETE;
        }
        let written = match &mut *self.labels.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(file) => file
                .write_all(label.to_line().as_bytes())
                .and_then(|()| file.flush()),
            None => Ok(()),
        };
        if let Err(error) = written {
            tracing::error!(%error, "cannot write the incident label");
        }
        if !labelled {
            return;
        }
        *self
            .report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .incidents
            .entry(pattern.to_owned())
            .or_default() += 1;
    }

    async fn execute(&self, plan: Plan, permit: OwnedSemaphorePermit) {
        let id_of = |v: &Value| v.get("id").and_then(Value::as_i64);
        match plan {
            Plan::CreateProduct(body) => {
                if let Some((StatusCode::CREATED, v)) = self
                    .send(
                        "create_product",
                        Method::POST,
                        "/products",
                        Some(&body),
                        None,
                    )
                    .await
                    && let (Some(id), Some(price)) = (id_of(&v), v["price"].as_f64())
                {
                    let mut book = self.book();
                    book.products.push((id, (price * 100.0).round() as i64));
                    book.products.sort_unstable();
                }
            }
            Plan::Signup { body, profile } => {
                if let Some((StatusCode::CREATED, v)) = self
                    .send("signup", Method::POST, "/customers", Some(&body), None)
                    .await
                    && let Some(id) = id_of(&v)
                {
                    let mut book = self.book();
                    book.customers.push(id);
                    if let Some(profile) = profile {
                        book.profiles.insert(id, profile);
                    }
                }
            }
            Plan::UpdateCustomer { id, body } => {
                self.send(
                    "update_customer",
                    Method::PATCH,
                    &format!("/customers/{id}"),
                    Some(&body),
                    None,
                )
                .await;
            }
            Plan::ChangePrice { id, cents } => {
                let body = json!({"price": cents as f64 / 100.0});
                if let Some((StatusCode::OK, _)) = self
                    .send(
                        "change_price",
                        Method::PATCH,
                        &format!("/products/{id}/price"),
                        Some(&body),
                        None,
                    )
                    .await
                    && let Some(p) = self.book().products.iter_mut().find(|p| p.0 == id)
                {
                    p.1 = cents;
                }
            }
            Plan::Order {
                body,
                key,
                clicks,
                customer,
            } => {
                for (cart, product, device) in &clicks {
                    self.click(*cart, *product, customer, device).await;
                }
                let first = self
                    .send(
                        "create_order",
                        Method::POST,
                        "/orders",
                        Some(&body),
                        key.as_deref(),
                    )
                    .await;
                let Some((status, v)) = first else { return };
                let Some(id) = id_of(&v).filter(|_| status.is_success()) else {
                    return;
                };
                if let Some(key) = &key {
                    // The client "lost" the answer and retries: the same order must come back.
                    let retry = self
                        .send(
                            "retry_order",
                            Method::POST,
                            "/orders",
                            Some(&body),
                            Some(key),
                        )
                        .await;
                    if let Some((s, v)) = retry
                        && s.is_success()
                        && id_of(&v) != Some(id)
                    {
                        tracing::error!(order_id = id, "idempotent retry returned another order");
                        let mut report = self.report.lock().unwrap_or_else(|p| p.into_inner());
                        report.errors += 1;
                        *report
                            .errors_by_operation
                            .entry("retry_order".into())
                            .or_default() += 1;
                    }
                }
                let mut book = self.book();
                book.pending.push(id);
                if book.profiles.contains_key(&customer) {
                    book.order_customer.insert(id, customer);
                }
            }
            Plan::Incident(incident) => self.incident(incident, permit).await,
            Plan::Pay { id, method, card } => {
                let mut body = json!({"method": method});
                if let Some(card) = card {
                    body["card_fingerprint"] = json!(card);
                }
                if self.transition("pay", id, "pay", Some(&body)).await {
                    self.book().paid.push(id);
                }
            }
            Plan::Ship { id, carrier } => {
                let body = json!({"carrier": carrier});
                if self.transition("ship", id, "ship", Some(&body)).await {
                    self.book().shipped.push(id);
                }
            }
            Plan::Deliver(id) => {
                if self.transition("deliver", id, "deliver", None).await {
                    self.book().delivered.push(id);
                }
            }
            Plan::Cancel(id) => {
                self.transition("cancel", id, "cancel", None).await;
            }
            Plan::Refund(id) => {
                self.transition("refund", id, "refund", None).await;
            }
            Plan::Delete(id) => {
                self.send(
                    "delete_order",
                    Method::DELETE,
                    &format!("/orders/{id}"),
                    None,
                    None,
                )
                .await;
            }
            Plan::GetOrder(id) => {
                self.send(
                    "get_order",
                    Method::GET,
                    &format!("/orders/{id}"),
                    None,
                    None,
                )
                .await;
            }
        }
    }

    async fn transition(&self, op: &str, id: i64, verb: &str, body: Option<&Value>) -> bool {
        let body = body.cloned().unwrap_or_else(|| json!({}));
        matches!(
            self.send(op, Method::POST, &format!("/orders/{id}/{verb}"), Some(&body), None)
                .await,
            Some((s, _)) if s.is_success()
        )
    }
}

/// Drives the order service at `config.rate` requests per second until
/// `config.duration` has passed, `shutdown` is cancelled, or
/// `rate * duration` requests have been sent.
///
/// Fails on invalid configuration or when the service cannot be reached at
/// all; failed individual requests are counted in the report instead.
pub async fn run_load(config: LoadConfig, shutdown: CancellationToken) -> Result<LoadReport> {
    validate(&config)?;
    let mut budget = (config.rate * config.duration.as_secs_f64()).floor() as u64;
    let labels = match &config.labels_path {
        Some(path) if config.fraud_rate > 0.0 => {
            Some(std::fs::File::create(path).map_err(|source| Error::Labels {
                path: path.display().to_string(),
                source,
            })?)
        }
        _ => None,
    };
    let permits = Arc::new(Semaphore::new(config.concurrency));
    let shared = Arc::new(Shared {
        client: reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()?,
        base: config.base_url.trim_end_matches('/').to_owned(),
        book: Mutex::new(Book::default()),
        report: Mutex::new(LoadReport::default()),
        permits: permits.clone(),
        labels: Mutex::new(labels),
    });
    if budget == 0 {
        return Ok(LoadReport::default());
    }
    let started = Instant::now();
    let deadline = started + config.duration;
    let period = Duration::from_secs_f64(1.0 / config.rate);
    // Request n is due at `started + n * period`, whatever happened to the
    // ones before it (an open model: a slow server does not slow the
    // arrivals, and its queue shows in the latency).
    let mut due = 0u32;

    // The first request learns the catalog; unreachable service is fatal.
    budget -= 1;
    let listed = {
        let resp = shared
            .client
            .get(format!("{}/products", shared.base))
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                shared
                    .report
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .record("list_products", false);
                return Err(Error::Http(e));
            }
        };
        let ok = resp.status().is_success();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        shared
            .report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record("list_products", ok);
        let mut book = shared.book();
        for p in v.as_array().into_iter().flatten() {
            if let (Some(id), Some(price), Some(true)) =
                (p["id"].as_i64(), p["price"].as_f64(), p["active"].as_bool())
            {
                book.products.push(((id), (price * 100.0).round() as i64));
            }
        }
        book.products.sort_unstable();
        book.products.len()
    };

    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut planner = Planner {
        rng: StdRng::seed_from_u64(config.seed),
        nonce,
        seq: 0,
        products_to_create: if listed < CATALOG_MIN {
            CATALOG_TARGET - listed
        } else {
            0
        },
        customers_to_create: BOOTSTRAP_CUSTOMERS,
        browse: config.browse || config.fraud_rate > 0.0,
        fraud_rate: config.fraud_rate,
        ticks: 1,
        rate: config.rate,
        duration: config.duration,
        incidents: 0,
        deck: Vec::new(),
        tiny_requested: false,
    };
    tracing::info!(
        rate = config.rate,
        budget,
        concurrency = config.concurrency,
        seed = config.seed,
        products = listed,
        browse = config.browse,
        fraud_rate = config.fraud_rate,
        "load run starting"
    );

    let mut tasks = JoinSet::new();
    'dispatch: while budget > 0 {
        let plan = {
            let mut book = shared.book();
            let mut plan = planner.plan(&mut book);
            if plan.cost() > budget
                && let Plan::Order { key, clicks, .. } = &mut plan
            {
                *key = None;
                clicks.truncate((budget - 1) as usize);
            }
            plan
        };
        if plan.cost() > budget {
            // An incident larger than what is left of the budget.
            break 'dispatch;
        }
        // A plan of several requests takes as many arrival slots, keeping
        // the rate; it is due at its first slot.
        let intended = started + period * due;
        due += plan.cost() as u32;
        let last_slot = started + period * (due - 1);
        if last_slot >= deadline {
            break 'dispatch;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(last_slot) => {}
            _ = shutdown.cancelled() => break 'dispatch,
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.map_err(|_| Error::Internal("load semaphore closed".into()))?,
            _ = tokio::time::sleep_until(deadline) => break 'dispatch,
            _ = shutdown.cancelled() => break 'dispatch,
        };
        if Instant::now().saturating_duration_since(last_slot) > LATE_AFTER {
            shared.report.lock().unwrap_or_else(|p| p.into_inner()).late += 1;
        }
        budget -= plan.cost();
        let shared = shared.clone();
        tasks.spawn(INTENDED.scope(std::cell::Cell::new(intended), async move {
            shared.execute(plan, permit).await;
        }));
        // Reap finished tasks so the set does not grow with the run.
        while tasks.try_join_next().is_some() {}
    }

    let drain = async { while tasks.join_next().await.is_some() {} };
    if shutdown.is_cancelled() {
        if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
            tasks.abort_all();
        }
    } else {
        drain.await;
    }
    let mut report = shared
        .report
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    report.target_rate = config.rate;
    report.achieved_rate = report.requests as f64 / started.elapsed().as_secs_f64().max(1e-9);
    tracing::info!(
        requests = report.requests,
        errors = report.errors,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "load run finished"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planner(seed: u64) -> Planner {
        Planner {
            rng: StdRng::seed_from_u64(seed),
            nonce: 1,
            seq: 0,
            products_to_create: 0,
            customers_to_create: 0,
            browse: false,
            fraud_rate: 0.0,
            ticks: 0,
            rate: 50.0,
            duration: Duration::from_secs(3600),
            incidents: 0,
            deck: Vec::new(),
            tiny_requested: false,
        }
    }

    fn stocked() -> Book {
        Book {
            products: (1..=50).map(|id| (id, 1000 + id)).collect(),
            customers: (1..=20).collect(),
            pending: (100..110).collect(),
            paid: (200..210).collect(),
            shipped: (300..310).collect(),
            delivered: (400..410).collect(),
            ..Book::default()
        }
    }

    fn trace(seed: u64) -> Vec<String> {
        let mut p = planner(seed);
        let mut book = stocked();
        (0..200)
            .map(|_| format!("{:?}", p.plan(&mut book)))
            .collect()
    }

    #[test]
    fn plans_are_deterministic_per_seed() {
        assert_eq!(trace(7), trace(7));
        assert_ne!(trace(7), trace(8));
    }

    #[test]
    fn bootstrap_creates_catalog_then_customers() {
        let mut p = planner(1);
        p.products_to_create = 2;
        p.customers_to_create = 1;
        let mut book = Book::default();
        assert!(matches!(p.plan(&mut book), Plan::CreateProduct(_)));
        assert!(matches!(p.plan(&mut book), Plan::CreateProduct(_)));
        assert!(matches!(p.plan(&mut book), Plan::Signup { .. }));
        // With nothing to act on, the planner still produces a creating action.
        assert!(matches!(p.plan(&mut book), Plan::CreateProduct(_)));
    }

    #[test]
    fn targets_are_taken_from_the_matching_state() {
        let mut p = planner(3);
        let mut book = stocked();
        for _ in 0..500 {
            match p.plan(&mut book) {
                Plan::Pay { id, .. } | Plan::Cancel(id) | Plan::Delete(id) => {
                    assert!((100..110).contains(&id))
                }
                Plan::Ship { id, .. } => assert!((200..210).contains(&id)),
                Plan::Deliver(id) => assert!((300..310).contains(&id)),
                Plan::Refund(id) => assert!((200..410).contains(&id)),
                Plan::Order { body, .. } => {
                    let items = body["items"].as_array().unwrap();
                    assert!((1..=5).contains(&items.len()));
                }
                _ => {}
            }
        }
        // Every pending order was handed out at most once.
        assert!(book.pending.is_empty() || book.pending.len() < 10);
    }

    /// A planner with fraud on and a book whose customers have profiles.
    fn fraud_planner(seed: u64, rate: f64) -> (Planner, Book) {
        let mut p = planner(seed);
        p.browse = true;
        p.fraud_rate = rate;
        let mut book = stocked();
        book.products.push((51, 149));
        for c in book.customers.clone() {
            let Plan::Signup { profile, .. } = p.signup() else {
                unreachable!()
            };
            book.profiles.insert(c, profile.unwrap());
        }
        (p, book)
    }

    fn fraud_trace(seed: u64) -> Vec<String> {
        let (mut p, mut book) = fraud_planner(seed, 0.2);
        (0..300)
            .map(|_| format!("{:?}", p.plan(&mut book)))
            .collect()
    }

    #[test]
    fn fraud_plans_are_deterministic_per_seed() {
        assert_eq!(fraud_trace(11), fraud_trace(11));
        assert_ne!(fraud_trace(11), fraud_trace(12));
    }

    #[test]
    fn at_rate_one_every_pattern_is_planned() {
        let (mut p, mut book) = fraud_planner(5, 1.0);
        let mut seen = BTreeMap::new();
        for _ in 0..400 {
            if let Plan::Incident(i) = p.plan(&mut book) {
                *seen.entry(i.pattern.name()).or_insert(0) += 1;
                assert!(i.requests() > 1);
            }
        }
        for pattern in fraud::Pattern::ALL {
            assert!(
                seen.contains_key(pattern.name()),
                "{} missing: {seen:?}",
                pattern.name()
            );
        }
        assert!(
            fraud::Pattern::ALL
                .iter()
                .any(|p| !p.is_fraud() && seen.contains_key(p.name()))
        );
    }

    #[test]
    fn incidents_that_do_not_fit_in_the_run_are_not_started() {
        let (mut p, mut book) = fraud_planner(5, 1.0);
        p.duration = Duration::from_secs(10);
        for _ in 0..400 {
            if let Plan::Incident(i) = p.plan(&mut book) {
                assert!(i.span() < Duration::from_secs(10), "{:?}", i.pattern);
            }
        }
    }

    #[test]
    fn background_orders_keep_clear_of_the_patterns() {
        let (mut p, mut book) = fraud_planner(9, 0.1);
        let price: HashMap<i64, i64> = book.products.iter().copied().collect();
        let window = p.minute_ticks();
        let mut times: HashMap<i64, Vec<u64>> = Default::default();
        let mut orders = 0;
        for _ in 0..3_000 {
            let at = p.ticks;
            if let Plan::Order {
                body,
                clicks,
                customer,
                ..
            } = p.plan(&mut book)
            {
                orders += 1;
                let total: i64 = body["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| {
                        price[&l["product_id"].as_i64().unwrap()] * l["quantity"].as_i64().unwrap()
                    })
                    .sum();
                assert!(total <= BENIGN_MAX_TOTAL, "{body}");
                assert!(total >= 200, "a background order under 2.00: {body}");
                let profile = &book.profiles[&customer];
                assert_eq!(body["billing_country"], json!(profile.home));
                assert_eq!(body["shipping_country"], body["billing_country"]);
                let device = body["device_id"].as_str().unwrap();
                assert!(profile.devices.iter().any(|d| d == device));
                assert!(clicks.iter().filter(|c| c.0).count() <= 2);
                assert!(clicks.iter().all(|c| c.2 == device));
                let t = times.entry(customer).or_default();
                t.push(at);
                let recent = t.iter().filter(|x| at < **x + window).count();
                assert!(
                    recent <= BENIGN_ORDERS_PER_MINUTE,
                    "customer {customer}: {t:?}"
                );
            }
            // Orders get paid, so pending does not run dry.
            book.pending
                .extend(1_000_000 + p.ticks as i64..1_000_000 + p.ticks as i64 + 1);
        }
        assert!(orders > 100, "only {orders} background orders");
    }

    #[test]
    fn baskets_shrink_to_the_cap() {
        let price = |id: i64| id * 100;
        assert_eq!(
            fit_basket(vec![(5, 3), (2, 2)], 2_000, &price),
            vec![(5, 3), (2, 2)]
        );
        assert_eq!(
            fit_basket(vec![(5, 3), (2, 2)], 1_000, &price),
            vec![(5, 1), (2, 1)]
        );
        assert_eq!(fit_basket(vec![(5, 3), (2, 2)], 600, &price), vec![(5, 1)]);
        assert!(fit_basket(vec![(5, 3)], 100, &price).is_empty());
    }

    #[test]
    fn zipf_prefers_low_ranks() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut counts = [0u32; 50];
        for _ in 0..20_000 {
            counts[zipf(&mut rng, 50)] += 1;
        }
        assert!(counts[0] > counts[9] * 5, "{counts:?}");
        assert!(counts[9] > counts[49], "{counts:?}");
    }

    #[test]
    fn config_is_validated() {
        let ok = LoadConfig {
            base_url: "http://127.0.0.1:1".into(),
            rate: 10.0,
            duration: Duration::from_secs(1),
            concurrency: 2,
            seed: 1,
            ..LoadConfig::default()
        };
        assert!(validate(&ok).is_ok());
        let field = |c: LoadConfig| match validate(&c) {
            Err(Error::Config { field, .. }) => field,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(
            field(LoadConfig {
                rate: 0.0,
                ..ok.clone()
            }),
            "load.rate"
        );
        assert_eq!(
            field(LoadConfig {
                concurrency: 0,
                ..ok.clone()
            }),
            "load.concurrency"
        );
        assert_eq!(
            field(LoadConfig {
                fraud_rate: 1.5,
                ..ok.clone()
            }),
            "load.fraud_rate"
        );
        assert_eq!(
            field(LoadConfig {
                fraud_rate: 0.1,
                ..ok.clone()
            }),
            "load.labels_path"
        );
        assert_eq!(
            field(LoadConfig {
                base_url: "ftp://x".into(),
                ..ok
            }),
            "load.base_url"
        );
    }

    #[test]
    fn report_lists_one_line_per_operation() {
        let mut r = LoadReport::default();
        r.record("signup", true);
        r.record("signup", false);
        r.record("pay", true);
        assert_eq!((r.requests, r.errors), (3, 1));
        let text = r.to_string();
        assert_eq!(text.lines().count(), 2);
        assert!(text.contains("signup") && text.contains("errors=1"));
    }

    #[tokio::test]
    async fn unreachable_service_fails_and_zero_budget_sends_nothing() {
        let cfg = LoadConfig {
            // Port 9 on loopback: nothing listens there in the test environment.
            base_url: "http://127.0.0.1:9".into(),
            rate: 10.0,
            duration: Duration::from_millis(500),
            concurrency: 1,
            seed: 1,
            ..LoadConfig::default()
        };
        assert!(
            run_load(cfg.clone(), CancellationToken::new())
                .await
                .is_err()
        );
        let none = run_load(
            LoadConfig {
                duration: Duration::ZERO,
                ..cfg
            },
            CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(none.requests, 0);
    }
}
