//! The gateway on the real stack: `tributary up --replicas 3` runs three
//! order-API processes behind `tributary gateway`. One stack for all of
//! it: balancing, request ids, refusals at the edge that never reach a
//! replica, rate limits, the storefront's composed endpoint, a replica
//! SIGKILLed under traffic (retries hide it, the gateway takes it out, and
//! keyed orders are never doubled), `rollout` under traffic with zero
//! failed requests, and canary weights honoured.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tributary_gateway::{AdminClient, GatewayState};
use tributary_stack::serving::Serving;

use crate::common::*;

const KEY: &str = "e2e-tight-key";

fn requests(state: &GatewayState) -> u64 {
    state.backends.iter().map(|b| b.requests).sum()
}

/// Traffic through the gateway until stopped: product reads, and orders
/// each with its own idempotency key. Counts what did not succeed.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    /// Acknowledged orders: idempotency key → order id.
    orders: Arc<std::sync::Mutex<HashMap<String, i64>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(gw: &str, customer: i64, products: &[i64], tag: &str) -> Traffic {
        let t = Traffic {
            stop: Arc::new(AtomicBool::new(false)),
            sent: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicU64::new(0)),
            orders: Arc::default(),
            tasks: Vec::new(),
        };
        let mut tasks = Vec::new();
        for worker in 0..4 {
            let (stop, sent, failed, orders) = (
                t.stop.clone(),
                t.sent.clone(),
                t.failed.clone(),
                t.orders.clone(),
            );
            let (gw, products, tag) = (gw.to_owned(), products.to_vec(), tag.to_owned());
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let product = products[(n as usize + worker) % products.len()];
                    let ok = if n.is_multiple_of(4) {
                        let key = format!("{tag}-{worker}-{n}");
                        let r = client
                            .post(format!("{gw}/orders"))
                            .header("Idempotency-Key", &key)
                            .json(&json!({"customer_id": customer,
                                "items": [{"product_id": product, "quantity": 1}]}))
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status() == 201 => {
                                let id = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
                                orders.lock().unwrap().insert(key, id);
                                true
                            }
                            Ok(r) => {
                                eprintln!("order {key}: {}", r.status());
                                false
                            }
                            Err(e) => {
                                eprintln!("order {key}: {e}");
                                false
                            }
                        }
                    } else {
                        match client.get(format!("{gw}/products/{product}")).send().await {
                            Ok(r) if r.status() == 200 => true,
                            Ok(r) => {
                                eprintln!("product {product}: {}", r.status());
                                false
                            }
                            Err(e) => {
                                eprintln!("product {product}: {e}");
                                false
                            }
                        }
                    };
                    sent.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }));
        }
        Traffic { tasks, ..t }
    }

    async fn stop(self) -> (u64, u64, HashMap<String, i64>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let orders = self.orders.lock().unwrap().clone();
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            orders,
        )
    }
}

/// Every acknowledged order exists, with its own key, and no key made a
/// second order: the customer's orders are exactly those of its keys plus
/// the `unkeyed` ones. (A keyed order whose answer was lost may exist
/// without being acknowledged; it still has its key, once.)
async fn assert_orders_once(
    env: &Env,
    customer: i64,
    acknowledged: &HashMap<String, i64>,
    unkeyed: i64,
) {
    let state = env.stack_state();
    let (mut orders, mut keyed) = (Vec::new(), HashMap::new());
    for shard in &state.shards {
        let db = pipeline_connect(&shard.dsn()).await;
        for row in db
            .query("SELECT id FROM orders WHERE customer_id = $1", &[&customer])
            .await
            .unwrap()
        {
            orders.push(row.get::<_, i64>(0));
        }
        for row in db
            .query(
                "SELECT key, order_id FROM idempotency_keys WHERE customer_id = $1",
                &[&customer],
            )
            .await
            .unwrap()
        {
            keyed.insert(row.get::<_, String>(0), row.get::<_, i64>(1));
        }
    }
    for (key, id) in acknowledged {
        if let Some(k) = keyed.get(key) {
            assert_eq!(k, id, "key {key} answered order {id} but names {k}");
        }
        assert!(
            orders.contains(id),
            "acknowledged order {id} ({key}) is missing"
        );
    }
    let by_key: std::collections::HashSet<i64> = keyed.values().copied().collect();
    assert_eq!(by_key.len(), keyed.len(), "two keys name one order");
    assert_eq!(
        orders.len() as i64,
        keyed.len() as i64 + unkeyed,
        "orders of customer {customer}: {} in the shards, {} keys and {unkeyed} without",
        orders.len(),
        keyed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_balances_refuses_at_the_edge_and_survives_kills_and_rollouts() {
    let mut env = Env::stack().await;
    env.extra.extend([
        (
            "TRIBUTARY__GATEWAY__API_KEYS".into(),
            format!(
                "[{{name = \"tight\", key_sha256 = \"{}\", rate = 1.0, burst = 3.0}}]",
                tributary_gateway::key_hash(KEY)
            ),
        ),
        (
            "TRIBUTARY__GATEWAY__ANONYMOUS".into(),
            "{rate = 0.0}".into(),
        ),
        ("TRIBUTARY__GATEWAY__MAX_BODY_BYTES".into(), "4096".into()),
        (
            "TRIBUTARY__GATEWAY__HEALTH__INTERVAL_MS".into(),
            "250".into(),
        ),
        (
            "TRIBUTARY__GATEWAY__EJECTION__EJECT_MS".into(),
            "2000".into(),
        ),
    ]);
    env.run_ok(&["up", "--replicas", "3"]);
    let serving = Serving::load(&env.state_dir())
        .unwrap()
        .expect("up --replicas 3");
    assert_eq!(serving.replicas.len(), 3);
    let gw = serving.gateway.url();
    let admin = AdminClient::new(&format!("127.0.0.1:{}", serving.gateway.admin_port));
    let status = env.run_ok(&["status"]);
    assert!(
        status.contains("gateway") && status.contains("3/3 replicas in rotation"),
        "status shows the gateway:\n{status}"
    );
    assert_eq!(status.matches("order API replica").count(), 3, "{status}");

    let client = reqwest::Client::new();
    let mut products = Vec::new();
    for i in 0..3 {
        let p = post(
            &client,
            format!("{gw}/products"),
            json!({"sku": format!("GW-{i}"), "name": "gatewayed", "category": "c", "price": 10.0}),
        )
        .await;
        products.push(p["id"].as_i64().unwrap());
    }
    let customer = post(
        &client,
        format!("{gw}/customers"),
        json!({"email": "gw@example.com", "name": "G W", "region": "eu", "country": "DE",
               "city": "Berlin", "address": "1 Gate St", "lat": 52.5, "lon": 13.4}),
    )
    .await["id"]
        .as_i64()
        .unwrap();

    // Round robin: 30 reads, 10 on each replica.
    let before = admin.state().await.unwrap();
    for i in 0..30 {
        let r = client
            .get(format!("{gw}/products/{}", products[i % 3]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let after = admin.state().await.unwrap();
    for (b, a) in before.backends.iter().zip(&after.backends) {
        assert_eq!(a.requests - b.requests, 10, "round robin: {after:?}");
    }

    // The request id reaches the replica, which answers with it.
    let r = client
        .get(format!("{gw}/products/{}", products[0]))
        .header("x-request-id", "e2e-request-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "e2e-request-1");

    // Refusals at the edge: none reaches a replica.
    let before = requests(&admin.state().await.unwrap());
    let refused = [
        (
            client
                .get(format!("{gw}/products/{}", products[0]))
                .header("x-api-key", "not-a-key"),
            401,
            "unknown API key",
        ),
        (
            client
                .post(format!("{gw}/orders"))
                .header("content-type", "application/json")
                .body(format!(
                    "{{\"customer_id\": {customer}, \"pad\": \"{}\"}}",
                    "x".repeat(5000)
                )),
            413,
            "larger than 4096 bytes",
        ),
        (
            client
                .post(format!("{gw}/orders"))
                .header("content-type", "application/json")
                .body("{\"customer_id\": 1, \"items\": ["),
            400,
            "malformed JSON body",
        ),
    ];
    for (request, status, message) in refused {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), status);
        assert!(r.headers().contains_key("x-request-id"));
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains(message),
            "{status}: {body}"
        );
    }
    // Rate limit: the tight key's burst of 3, then 429 with Retry-After.
    let mut limited = None;
    for _ in 0..6 {
        let r = client
            .get(format!("{gw}/products/{}", products[0]))
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let limited = limited.expect("the tight key is limited after its burst");
    assert!(
        limited.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let after = requests(&admin.state().await.unwrap());
    assert_eq!(
        after - before,
        3,
        "only the tight key's 3 admitted requests reached a replica"
    );

    // The storefront's order page, composed at the gateway.
    let order = post(
        &client,
        format!("{gw}/orders"),
        json!({"customer_id": customer, "items": [
            {"product_id": products[0], "quantity": 2}, {"product_id": products[1], "quantity": 1}]}),
    )
    .await;
    let order_id = order["id"].as_i64().unwrap();
    let mut acknowledged = HashMap::new();
    let page: Value = client
        .get(format!("{gw}/storefront/orders/{order_id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["order"]["id"], order_id, "{page}");
    assert_eq!(page["lines"].as_array().unwrap().len(), 2, "{page}");
    assert_eq!(page["lines"][0]["product"]["id"], products[0], "{page}");
    assert_eq!(page["lines"][0]["product"]["name"], "gatewayed", "{page}");
    assert!(page["shipment"].is_null(), "not shipped yet: {page}");
    let r = client
        .post(format!("{gw}/orders/{order_id}/pay"))
        .json(&json!({"method": "card"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "pay: {}", r.status());
    let r = client
        .post(format!("{gw}/orders/{order_id}/ship"))
        .json(&json!({"carrier": "DHL"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "ship: {}", r.status());
    let page: Value = client
        .get(format!("{gw}/storefront/orders/{order_id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["shipment"]["status"], "shipped", "{page}");
    assert_eq!(page["shipment"]["carrier"], "DHL", "{page}");
    let r = client
        .get(format!("{gw}/storefront/orders/999999999"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A replica SIGKILLed under traffic: reads retry elsewhere, keyed
    // orders are never doubled, and the gateway takes it out.
    let traffic = Traffic::start(&gw, customer, &products, "kill");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = &serving.replicas[1];
    let pid = tributary_stack::daemon::pid(&victim.dir).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t = Instant::now();
    loop {
        let s = admin.state().await.unwrap();
        let b = s.backends.iter().find(|b| b.addr == victim.addr()).unwrap();
        if !b.available {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the dead replica stays in: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out_in = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (sent, failed, orders) = traffic.stop().await;
    eprintln!("kill: {failed} of {sent} requests failed; out of rotation in {out_in:?}");
    assert!(sent > 100, "traffic ran: {sent}");
    assert!(
        failed * 1000 <= sent,
        "{failed} of {sent} requests failed (more than 0.1%)"
    );
    acknowledged.extend(orders);
    assert_orders_once(&env, customer, &acknowledged, 1).await;

    // `up` again starts what is missing: the replica comes back.
    env.run_ok(&["up", "--replicas", "3"]);
    let state = admin.state().await.unwrap();
    assert!(state.backends.iter().all(|b| b.available), "{state:?}");

    // A rollout under traffic: zero failed requests.
    let traffic = Traffic::start(&gw, customer, &products, "rollout");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = env.run_ok(&["rollout"]);
    assert!(out.contains("rollout done: 3 replicas"), "{out}");
    let (sent, failed, orders) = traffic.stop().await;
    eprintln!("rollout: {failed} of {sent} requests failed\n{out}");
    assert!(sent > 100, "traffic ran: {sent}");
    assert_eq!(failed, 0, "requests failed during the rollout\n{out}");
    acknowledged.extend(orders);
    assert_orders_once(&env, customer, &acknowledged, 1).await;

    // Canary weights at runtime: a second gateway, in this process, with
    // the replicas in two pools.
    canary_weights(&serving, products[0]).await;
}

async fn canary_weights(serving: &Serving, product: i64) {
    let addrs: Vec<String> = serving.replicas.iter().map(|r| r.addr()).collect();
    let config: tributary_gateway::GatewayConfig = toml::from_str(&format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nanonymous = {{ rate = 0.0 }}\n\
         [[pools]]\nname = \"stable\"\nweight = 90\nbackends = [\"{}\", \"{}\"]\n\
         [[pools]]\nname = \"canary\"\nweight = 10\nbackends = [\"{}\"]",
        addrs[0], addrs[1], addrs[2]
    ))
    .unwrap();
    let gateway = tributary_gateway::Gateway::bind(config).await.unwrap();
    let (url, admin) = (
        format!("http://{}", gateway.listen_addr()),
        AdminClient::new(&gateway.admin_addr().to_string()),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(gateway.run(shutdown.clone()));
    let client = reqwest::Client::new();
    let canary_share = async |n: u64| {
        let before = admin.state().await.unwrap();
        for _ in 0..n {
            let r = client
                .get(format!("{url}/products/{product}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        let after = admin.state().await.unwrap();
        let canary = |s: &GatewayState| {
            s.backends
                .iter()
                .filter(|b| b.pool == "canary")
                .map(|b| b.requests)
                .sum::<u64>()
        };
        (canary(&after) - canary(&before)) as f64 / n as f64
    };
    let share = canary_share(300).await;
    assert!(
        (0.08..=0.12).contains(&share),
        "canary at weight 10 of 100 took {share}"
    );
    admin.set_weight("canary", 90).await.unwrap();
    let share = canary_share(300).await;
    assert!(
        (0.45..=0.55).contains(&share),
        "canary at weight 90 of 180 took {share}"
    );
    admin.set_weight("canary", 0).await.unwrap();
    let share = canary_share(100).await;
    assert_eq!(share, 0.0, "a pool at weight 0 takes nothing");
    shutdown.cancel();
    running.await.unwrap().unwrap();
}
