//! The fraud detector on the real stack: injected patterns alert, benign
//! look-alikes do not, a SIGKILL neither doubles nor misses an alert, a bad
//! rules file is refused while the old rules run, good rules are reloaded,
//! and a clickstream event far behind the watermark lands in the late path.
//! The risk-profile job runs on the same stack: both engines agree on the
//! real silver tables, and the restarted detector's alerts carry the
//! profile it loaded.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use serde_json::{Value, json};
use tributary_model::clickstream::{ClickEvent, ClickKind, clickstream_topic};

use crate::common::*;

/// A POST whose status is returned with its JSON body.
async fn send(c: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = c.post(&url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

struct Shop {
    base: String,
    c: reqwest::Client,
    /// Products by price.
    cheap: i64,
    normal: i64,
    pricey: i64,
    luxury: i64,
}

impl Shop {
    async fn open(base: String) -> Shop {
        let c = reqwest::Client::new();
        let mut ids = vec![];
        for (i, price) in [1.5, 30.0, 600.0, 1200.0].iter().enumerate() {
            let p = post(
                &c,
                format!("{base}/products"),
                json!({"sku": format!("FRAUD-{i}"), "name": format!("Thing {i}"), "category": "tools", "price": price}),
            )
            .await;
            ids.push(p["id"].as_i64().unwrap());
        }
        Shop {
            base,
            c,
            cheap: ids[0],
            normal: ids[1],
            pricey: ids[2],
            luxury: ids[3],
        }
    }

    async fn customer(&self, name: &str) -> i64 {
        let cu = post(
            &self.c,
            format!("{}/customers", self.base),
            json!({"email": format!("{name}@example.com"), "name": name, "region": "eu",
                   "country": "DE", "city": "Berlin", "address": "Strasse 1", "lat": 52.5, "lon": 13.4}),
        )
        .await;
        cu["id"].as_i64().unwrap()
    }

    async fn order(
        &self,
        customer: i64,
        product: i64,
        device: &str,
        billing: &str,
        shipping: &str,
    ) -> i64 {
        let o = post(
            &self.c,
            format!("{}/orders", self.base),
            json!({"customer_id": customer, "items": [{"product_id": product, "quantity": 1}],
                   "device_id": device, "billing_country": billing, "shipping_country": shipping}),
        )
        .await;
        o["id"].as_i64().unwrap()
    }

    async fn home_order(&self, customer: i64, product: i64) -> i64 {
        self.order(customer, product, "dev-home", "DE", "DE").await
    }

    /// Pays an order; `captured` false plays a declined card. True when the
    /// service recorded the outcome asked for.
    async fn pay(&self, order: i64, card: &str, captured: bool) {
        let outcome = if captured { "captured" } else { "failed" };
        let (status, body) = send(
            &self.c,
            format!("{}/orders/{order}/pay", self.base),
            json!({"method": "card", "card_fingerprint": card, "outcome": outcome}),
        )
        .await;
        assert_eq!(
            (200..300).contains(&status),
            captured,
            "pay {order} as {outcome} -> {status}: {body}"
        );
    }

    async fn add_to_cart(&self, customer: i64, product: i64, device: &str) {
        let (status, body) = send(
            &self.c,
            format!("{}/products/{product}/cart", self.base),
            json!({"customer_id": customer, "device_id": device}),
        )
        .await;
        assert!((200..300).contains(&status), "cart -> {status}: {body}");
    }
}

/// (rule, customer) -> alert ids in gold.fraud_alerts, and the number of rows.
async fn alerts(env: &Env) -> (BTreeMap<(String, i64), BTreeSet<String>>, usize) {
    let session = env.session().await;
    let Ok(batches) = session
        .sql("SELECT rule, customer_id, alert_id FROM gold.fraud_alerts")
        .await
    else {
        return (BTreeMap::new(), 0);
    };
    let mut out: BTreeMap<(String, i64), BTreeSet<String>> = BTreeMap::new();
    let mut rows = 0;
    for b in &batches {
        let rule = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
        let rule = rule.as_string::<i32>();
        let customer = b.column(1).as_primitive::<Int64Type>();
        let id = arrow::compute::cast(b.column(2), &arrow::datatypes::DataType::Utf8).unwrap();
        let id = id.as_string::<i32>();
        for i in 0..b.num_rows() {
            rows += 1;
            assert!(!customer.is_null(i));
            out.entry((rule.value(i).to_string(), customer.value(i)))
                .or_default()
                .insert(id.value(i).to_string());
        }
    }
    (out, rows)
}

fn keys(alerts: &BTreeMap<(String, i64), BTreeSet<String>>) -> BTreeSet<(String, i64)> {
    alerts.keys().cloned().collect()
}

async fn wait_for_alerts(env: &mut Env, want: &BTreeSet<(String, i64)>) {
    env.until(
        "the expected alerts in gold.fraud_alerts",
        90,
        async |env: &Env| want.is_subset(&keys(&alerts(env).await.0)),
    )
    .await;
}

#[tokio::test]
async fn fraud_alerts_once_across_a_kill_with_rules_reloaded_and_late_events_recorded() {
    let mut env = Env::stack().await;
    env.extra.extend([
        (
            "TRIBUTARY__CDC__STATUS_INTERVAL_MS".to_string(),
            "200".to_string(),
        ),
        (
            "TRIBUTARY__LIVE__ENGINE__CHECKPOINT_INTERVAL_MS".to_string(),
            "300".to_string(),
        ),
        (
            "TRIBUTARY__LIVE__ENGINE__IDLE_TIMEOUT_MS".to_string(),
            "2000".to_string(),
        ),
        (
            "TRIBUTARY__LIVE__FRAUD__PROFILE_REFRESH_MS".to_string(),
            "500".to_string(),
        ),
    ]);
    env.start().await;
    env.start_pipeline();
    let rules = env.dir.path().join("fraud.toml");
    std::fs::write(&rules, tributary_live::fraud::rules::DEFAULT_RULES).unwrap();
    let rules_arg = rules.display().to_string();
    env.spawn("fraud", &["fraud", "run", "--rules", &rules_arg]);
    let shop = Shop::open(env.url()).await;
    for _ in 0..2 {
        let (status, body) = send(
            &shop.c,
            format!("{}/products/{}/view", shop.base, shop.normal),
            json!({"customer_id": 1, "device_id": "dev-home"}),
        )
        .await;
        assert_eq!(status, 202, "{body}");
    }

    // Wave 1: every pattern, and the benign look-alikes.
    let velocity = shop.customer("velocity").await;
    for _ in 0..6 {
        shop.home_order(velocity, shop.normal).await;
    }
    // Six usual orders, then one of 20x their mean.
    shop.home_order(velocity, shop.pricey).await;
    let failing = shop.customer("failing").await;
    let o = shop.home_order(failing, shop.normal).await;
    for i in 0..3 {
        shop.pay(o, &format!("card-f{i}"), false).await;
    }
    let retry = shop.customer("retry-once").await;
    let o = shop.home_order(retry, shop.normal).await;
    shop.pay(o, "card-r", false).await;
    shop.pay(o, "card-r", true).await;
    let newbie = shop.customer("newbie").await;
    shop.home_order(newbie, shop.luxury).await;
    let mismatch = shop.customer("mismatch").await;
    shop.order(mismatch, shop.normal, "dev-home", "DE", "BR")
        .await;
    let traveller = shop.customer("traveller").await;
    shop.order(traveller, shop.normal, "dev-home", "FR", "FR")
        .await;
    shop.order(traveller, shop.normal, "dev-home", "DE", "FR")
        .await;
    let tester = shop.customer("card-tester").await;
    for i in 0..3 {
        let o = shop.home_order(tester, shop.cheap).await;
        shop.pay(o, &format!("card-t{i}"), true).await;
    }
    let o = shop.home_order(tester, shop.pricey).await;
    shop.pay(o, "card-t9", true).await;
    let carter = shop.customer("carter").await;
    shop.home_order(carter, shop.normal).await;
    for _ in 0..5 {
        shop.add_to_cart(carter, shop.pricey, "dev-new").await;
    }
    shop.order(carter, shop.pricey, "dev-new", "DE", "DE").await;

    let s = |r: &str, c: i64| (r.to_string(), c);
    let wave1: BTreeSet<(String, i64)> = [
        s("velocity", velocity),
        s("amount_spike", velocity),
        s("failed_payments", failing),
        s("new_account_large", newbie),
        s("country_mismatch", mismatch),
        s("card_testing", tester),
        s("cart_then_large_new_device", carter),
    ]
    .into();
    wait_for_alerts(&mut env, &wave1).await;
    let (first, rows) = alerts(&env).await;
    assert_eq!(
        keys(&first),
        wave1,
        "exactly the injected patterns alert; look-alikes do not"
    );
    let ids: usize = first.values().map(BTreeSet::len).sum();
    assert_eq!(rows, ids, "no alert id twice");

    // Wave 2 while the detector is killed mid-stream: nothing missed or doubled.
    let second = shop.customer("velocity-2").await;
    for _ in 0..3 {
        shop.home_order(second, shop.normal).await;
    }

    // The risk profiles of what silver holds now (once it holds those
    // orders): both engines agree on them, and the restarted detector loads
    // them before its first alert.
    env.until("the orders of wave 2 in silver", 60, async |env: &Env| {
        let session = env.session().await;
        session
            .sql(&format!(
                "SELECT count(*) FROM silver.orders WHERE customer_id IN ({velocity}, {second})"
            ))
            .await
            .is_ok_and(|b| tributary_query_count(&b) == 10)
    })
    .await;
    let built = env.run_ok(&["etl", "run", "risk-profile"]);
    assert!(built.contains("-> version 0; polars"), "{built}");
    let agreed = env.run_ok(&["etl", "test", "risk-profile"]);
    assert!(agreed.contains("polars and DataFusion agree"), "{agreed}");
    let session = env.session().await;
    let b = session
        .sql(&format!(
            "SELECT concat_ws('|', CAST(orders_90d AS VARCHAR), countries_90d, devices_90d, \
             CAST(amount_stddev_90d IS NULL AS VARCHAR)) \
             FROM gold.customer_risk_profile WHERE customer_id = {velocity}"
        ))
        .await
        .unwrap();
    let row = tributary_stack::checks::first_column(&b);
    assert_eq!(
        row,
        vec!["7|DE|dev-home|false"],
        "the velocity customer's profile"
    );

    env.kill9("fraud");
    for _ in 0..3 {
        shop.home_order(second, shop.normal).await;
    }
    env.spawn("fraud", &["fraud", "run", "--rules", &rules_arg]);
    let mut wave2 = wave1.clone();
    wave2.insert(s("velocity", second));
    wait_for_alerts(&mut env, &wave2).await;
    let session = env.session().await;
    let b = session
        .sql(&format!(
            "SELECT detail FROM gold.fraud_alerts WHERE customer_id = {second}"
        ))
        .await
        .unwrap();
    let details = tributary_stack::checks::first_column(&b);
    assert!(
        !details.is_empty()
            && details
                .iter()
                .all(|d| d.contains("profile v0: 3 orders in 90 days")),
        "alerts after the restart carry the profile: {details:?}"
    );

    // A bad rules file is refused; the rules in force keep alerting.
    std::fs::write(&rules, "[velocity]\nmax_orders = 0\nwindow = \"1m\"\n").unwrap();
    env.until(
        "the refusal in the detector's log",
        20,
        async |env: &Env| {
            let log = env.log("fraud");
            log.contains("refusing the changed rules file")
                && log.contains("rule `velocity`, field `max_orders`")
        },
    )
    .await;
    let third = shop.customer("velocity-3").await;
    for _ in 0..6 {
        shop.home_order(third, shop.normal).await;
    }
    let mut wave3 = wave2.clone();
    wave3.insert(s("velocity", third));
    wait_for_alerts(&mut env, &wave3).await;

    // Good rules are put in force without a restart: two orders now alert.
    std::fs::write(
        &rules,
        "[velocity]\nmax_orders = 1\nwindow = \"60s\"\nslide = \"30s\"\n",
    )
    .unwrap();
    env.until("the reload in the detector's log", 20, async |env: &Env| {
        env.log("fraud").contains("fraud rules reloaded")
    })
    .await;
    let fourth = shop.customer("velocity-4").await;
    for _ in 0..2 {
        shop.home_order(fourth, shop.normal).await;
    }
    let mut wave4 = wave3.clone();
    wave4.insert(s("velocity", fourth));
    wait_for_alerts(&mut env, &wave4).await;

    // A clickstream event an hour behind the watermark: the late path.
    let kafka = env.kafka();
    let late = ClickEvent {
        event_id: "late-e2e-1".into(),
        kind: ClickKind::AddToCart,
        customer_id: carter,
        product_id: shop.pricey,
        device_id: "dev-new".into(),
        ts_us: tributary_live::runtime::now_us() - 3_600_000_000,
    };
    {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = tributary_kafka::client_config(&kafka).create().unwrap();
        producer
            .send(
                FutureRecord::to(&clickstream_topic(&kafka.topic_prefix))
                    .key(&carter.to_string())
                    .payload(&late.to_json()),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    env.until("the late event in gold.live_late_events", 60, async |env: &Env| {
        let session = env.session().await;
        match session
            .sql("SELECT count(*) FROM gold.live_late_events WHERE job = 'fraud' AND topic LIKE '%clickstream'")
            .await
        {
            Ok(b) => tributary_query_count(&b) == 1,
            Err(_) => false,
        }
    })
    .await;

    // The final table: each alert once, exactly the expected (rule, customer)s.
    let (last, rows) = alerts(&env).await;
    assert_eq!(keys(&last), wave4);
    assert_eq!(
        rows,
        last.values().map(BTreeSet::len).sum::<usize>(),
        "no alert id twice"
    );
    for (k, ids) in &first {
        assert_eq!(
            &last[k], ids,
            "{k:?}: the alerts of wave 1 stay as they were"
        );
    }
    // The topic carries the same ids; `fraud tail` shows each once.
    let out = env.run_ok(&[
        "fraud",
        "tail",
        "--from-beginning",
        "--json",
        "--duration",
        "5s",
    ]);
    let tailed: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let tailed_set: BTreeSet<String> = tailed.iter().cloned().collect();
    assert_eq!(
        tailed.len(),
        tailed_set.len(),
        "tail prints each alert once"
    );
    let all: BTreeSet<String> = last.values().flatten().cloned().collect();
    assert_eq!(
        tailed_set, all,
        "the topic and the table hold the same alerts"
    );

    env.assert_running();
}

#[test]
fn a_bad_rules_file_is_refused_naming_the_rule_and_field() {
    let env = Env::new();
    let file = env.dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[card_testing]\ntiny_amount = 2\nmin_tiny = 3\nlarge_amount = 1\ngap = \"5m\"\n",
    )
    .unwrap();
    let out = env.run(&["fraud", "rules", "check", &file.display().to_string()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rule `card_testing`, field `large_amount`: must be above tiny_amount"),
        "{err}"
    );
    let good = env.dir.path().join("good.toml");
    std::fs::write(&good, tributary_live::fraud::rules::DEFAULT_RULES).unwrap();
    let out = env.run_ok(&["fraud", "rules", "check", &good.display().to_string()]);
    assert!(out.contains("7 rules on"), "{out}");
}
