//! Integration tests against a real, throwaway PostgreSQL cluster.
//!
//! The harness runs `initdb` and `pg_ctl` as the `postgres` OS user (initdb
//! refuses root) on a free loopback port. If the cluster cannot start, the
//! test fails: a run that tested nothing must not look green.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tributary_kafka::KafkaConfig;
use tributary_oltp::{
    LoadConfig, OltpConfig, Server, ShardingConfig, StrategyKind, Topology, migrate, migrate_to,
    run_load, shard_of_id,
};

/// The PostgreSQL server binaries: `pg_config --bindir`, else the newest
/// version under `/usr/lib/postgresql`.
fn pg_bin() -> String {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if std::path::Path::new(&dir).join("pg_ctl").exists() {
            return dir;
        }
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server is not installed (/usr/lib/postgresql)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .expect("no pg_ctl under /usr/lib/postgresql")
        .display()
        .to_string()
}

/// A running cluster, stopped and deleted on drop (also when a test panics).
struct Cluster {
    dir: PathBuf,
    port: u16,
}

fn as_postgres(program: &str, args: &[&str]) -> std::process::Output {
    let output = Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{}/{program}", pg_bin())])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} as postgres: {e}"));
    assert!(
        output.status.success(),
        "{program} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

impl Cluster {
    fn start() -> Cluster {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = PathBuf::from(format!(
            "/tmp/tributary-oltp-it-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("chown")
            .args(["postgres:postgres", dir.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success(), "chown failed");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = dir.join("data");
        let data = data.to_str().unwrap();
        as_postgres(
            "initdb",
            &["-D", data, "-U", "tributary", "--auth=trust", "-E", "UTF8"],
        );
        let cluster = Cluster { dir, port };
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off",
            cluster.dir.display()
        );
        let log = cluster.dir.join("postgres.log");
        as_postgres(
            "pg_ctl",
            &[
                "-D",
                data,
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        cluster
    }

    fn dsn(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=tributary dbname={db}",
            self.port
        )
    }

    async fn create_databases(&self, names: &[&str]) {
        let (client, conn) = tokio_postgres::connect(&self.dsn("postgres"), tokio_postgres::NoTls)
            .await
            .expect("connect to the test cluster");
        tokio::spawn(conn);
        for name in names {
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{}/pg_ctl", pg_bin())])
            .args([
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn db(dsn: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let (status, text) = send(req).await;
        let value = if text.is_empty() {
            Value::Null
        } else {
            json_of(status, path, &text)
        };
        (status, value)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// `GET path` as text (not JSON).
    async fn text(&self, path: &str) -> (StatusCode, String) {
        send(self.http.get(format!("{}{path}", self.base))).await
    }

    async fn raw(&self, path: &str, content_type: &str, body: &'static str) -> (StatusCode, Value) {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body);
        let (status, text) = send(req).await;
        (status, json_of(status, path, &text))
    }
}

/// The API keeps a client's request id and trace, names its own span in
/// the trace, and starts both when the client sent none.
async fn request_ids_and_trace_context(api: &Api) {
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = api
        .http
        .get(format!("{}/products", api.base))
        .header("x-request-id", "req-42")
        .header("traceparent", parent)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-42");
    let tp = r.headers()["traceparent"].to_str().unwrap().to_string();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
            && tp.ends_with("-01")
            && tp != parent,
        "the response's traceparent should continue the trace with its own span: {tp}"
    );
    // Nothing sent (or nonsense): new ids, well formed.
    let r = api
        .http
        .get(format!("{}/products", api.base))
        .header("traceparent", "garbage")
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    let tp = r.headers()["traceparent"].to_str().unwrap();
    assert!(
        tributary_oltp::trace::TraceContext::parse(tp).is_some(),
        "{tp}"
    );
}

async fn send(req: reqwest::RequestBuilder) -> (StatusCode, String) {
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.text().await.unwrap())
}

fn json_of(status: StatusCode, path: &str, text: &str) -> Value {
    serde_json::from_str(text)
        .unwrap_or_else(|_| panic!("non-JSON response {status} to {path}: {text}"))
}

/// The one row `sql` returns for the id `$1`.
async fn row_of(c: &tokio_postgres::Client, sql: &str, id: i64) -> tokio_postgres::Row {
    c.query_one(sql, &[&id]).await.unwrap()
}

fn assert_error(resp: &(StatusCode, Value), status: StatusCode, field: &str) {
    assert_eq!(resp.0, status, "unexpected answer {resp:?}");
    assert_eq!(resp.1["field"], field, "unexpected answer {resp:?}");
    assert!(resp.1["error"].is_string(), "unexpected answer {resp:?}");
}

fn customer(email: &str, region: &str) -> Value {
    json!({
        "email": email, "name": "Test Person", "region": region, "country": "DE",
        "city": "Berlin", "address": "1 Main St", "lat": 52.5, "lon": 13.4,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_service_end_to_end() {
    let cluster = Cluster::start();
    cluster
        .create_databases(&["catalog", "orders_s0", "orders_s1", "old_catalog", "old_s0"])
        .await;
    version_2_upgrades_a_version_1_shard(&Topology {
        shards: vec![cluster.dsn("old_s0")],
        catalog: cluster.dsn("old_catalog"),
        replicas: vec![],
    })
    .await;
    let topology = Topology {
        shards: vec![cluster.dsn("orders_s0"), cluster.dsn("orders_s1")],
        catalog: cluster.dsn("catalog"),
        replicas: vec![],
    };

    migrations_are_idempotent_and_race_free(&topology).await;

    let config = OltpConfig {
        listen: "127.0.0.1:0".into(),
        pool_size: 8,
        ..OltpConfig::default()
    };
    let server = Server::bind(config, topology.clone()).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(server.run(shutdown.clone()));
    let api = Api {
        http: reqwest::Client::new(),
        base: base.clone(),
    };

    let (status, health) = api.get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "{health}");
    request_ids_and_trace_context(&api).await;

    let ctx = catalog_and_customers(&api, &topology).await;
    orders_and_lifecycle(&api, &topology, &ctx).await;
    failed_then_captured_payment(&api, &topology, &ctx).await;
    outbox_row_commits_with_its_order(&api, &topology, &ctx).await;
    clicks_need_a_broker(&api, &ctx).await;
    idempotent_retries_create_one_order(&api, &topology, &ctx).await;
    bad_requests_name_the_field(&api, &ctx).await;
    list_strategy_rejects_unknown_region(&topology).await;

    let (status, metrics) = api.text("/metrics").await;
    assert_eq!(status, StatusCode::OK, "{metrics}");
    assert!(
        metrics.contains("tributary_oltp_requests_total{route=\"POST /orders\",status=\"201\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("tributary_oltp_request_duration_seconds_bucket"));

    load_generator_drives_traffic(&base, &topology).await;
    labelled_fraud_runs_through_the_api(&topology).await;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("graceful shutdown in time")
        .unwrap()
        .unwrap();
}

async fn migrations_are_idempotent_and_race_free(topology: &Topology) {
    // Two services starting together must not race each other.
    let (a, b) = tokio::join!(migrate(topology), migrate(topology));
    a.unwrap();
    b.unwrap();
    migrate(topology).await.unwrap();
    for (i, dsn) in topology.shards.iter().enumerate() {
        let c = db(dsn).await;
        let versions: i64 = c
            .query_one("SELECT count(*) FROM schema_migrations", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(versions, 2);
        let shard: i32 = c
            .query_one("SELECT shard FROM shard_meta", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(shard as usize, i);
        let first: i64 = c
            .query_one(
                "SELECT start_value FROM pg_sequences WHERE sequencename = 'payments_id_seq'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(first, i as i64 + 1);
    }
    // Reordering the shard list would make ids collide: refused.
    let swapped = Topology {
        shards: vec![topology.shards[1].clone(), topology.shards[0].clone()],
        catalog: topology.catalog.clone(),
        replicas: vec![],
    };
    assert!(migrate(&swapped).await.is_err());
}

struct Ctx {
    products: Vec<(i64, f64)>,
    customers: Vec<(i64, usize)>,
}

async fn touch_product_in_sql(topology: &Topology, product: i64) {
    db(&topology.catalog)
        .await
        .execute(
            "UPDATE products SET active = active WHERE id = $1",
            &[&product],
        )
        .await
        .unwrap();
}

async fn catalog_and_customers(api: &Api, topology: &Topology) -> Ctx {
    let mut products = Vec::new();
    for (i, price) in [19.99, 5.25, 100.0].into_iter().enumerate() {
        let (s, p) = api
            .post(
                "/products",
                json!({"sku": format!("SKU-{i}"), "name": format!("Thing {i}"), "category": "toys", "price": price}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{p}");
        assert_eq!(p["price"], json!(price));
        products.push((p["id"].as_i64().unwrap(), price));
    }
    let dup = api
        .post(
            "/products",
            json!({"sku": "SKU-0", "name": "x", "category": "toys", "price": 1}),
        )
        .await;
    assert_error(&dup, StatusCode::CONFLICT, "sku");

    let (s, list) = api.get("/products").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 3);

    // A price change writes its history row in the same transaction.
    let (s, p) = api
        .call(
            reqwest::Method::PATCH,
            &format!("/products/{}/price", products[2].0),
            Some(json!({"price": 120.5})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["price"], json!(120.5));
    // Every update bumps the version the product cache orders states by,
    // also one written straight to the database.
    assert_eq!(p["version"], 2, "{p}");
    touch_product_in_sql(topology, products[2].0).await;
    let (_, p) = api.get(&format!("/products/{}", products[2].0)).await;
    assert_eq!(p["version"], 3, "{p}");
    products[2].1 = 120.5;
    let c = db(&topology.catalog).await;
    let sql = "SELECT old_price::text, new_price::text FROM price_changes WHERE product_id = $1";
    let row = row_of(&c, sql, products[2].0).await;
    assert_eq!(row.get::<_, String>(0), "100.00");
    assert_eq!(row.get::<_, String>(1), "120.50");

    let mut customers = Vec::new();
    let mut seen = [false; 2];
    for i in 0..12 {
        let (s, c) = api
            .post("/customers", customer(&format!("c{i}@example.com"), "eu"))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{c}");
        let shard = c["shard"].as_u64().unwrap() as usize;
        seen[shard] = true;
        customers.push((c["id"].as_i64().unwrap(), shard));
    }
    assert!(seen[0] && seen[1], "hash placement used one shard only");
    let (id, shard) = customers[0];
    let sql = "SELECT shard FROM customer_directory WHERE customer_id = $1";
    let directory: i32 = row_of(&c, sql, id).await.get(0);
    assert_eq!(directory as usize, shard);

    let (s, got) = api.get(&format!("/customers/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["email"], "c0@example.com");
    let (s, got) = api
        .call(
            reqwest::Method::PATCH,
            &format!("/customers/{id}"),
            Some(json!({"address": "2 High St", "city": "Hamburg"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{got}");
    assert_eq!(got["address"], "2 High St");
    assert_eq!(got["country"], "DE");
    assert_ne!(got["updated_at"], got["created_at"]);
    assert_error(
        &api.get("/customers/999999").await,
        StatusCode::NOT_FOUND,
        "id",
    );
    Ctx {
        products,
        customers,
    }
}

async fn orders_and_lifecycle(api: &Api, topology: &Topology, ctx: &Ctx) {
    let (cust, shard) = ctx.customers[1];
    let body = json!({"customer_id": cust, "items": [
        {"product_id": ctx.products[0].0, "quantity": 3},
        {"product_id": ctx.products[1].0, "quantity": 1},
    ]});
    let (s, order) = api.post("/orders", body.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{order}");
    let id = order["id"].as_i64().unwrap();
    assert_eq!(shard_of_id(id), shard);
    assert_eq!(order["shard"], shard);
    assert_eq!(order["status"], "pending");
    assert_eq!(order["currency"], "USD");
    // 3 * 19.99 + 5.25
    assert_eq!(order["total"], json!(65.22));
    assert_eq!(order["items"][0]["line_total"], json!(59.97));
    for item in order["items"].as_array().unwrap() {
        assert_eq!(shard_of_id(item["id"].as_i64().unwrap()), shard);
    }

    let pay = |id: i64| async move {
        api.post(&format!("/orders/{id}/pay"), json!({"method": "card"}))
            .await
    };
    let (s, paid) = pay(id).await;
    assert_eq!(s, StatusCode::OK, "{paid}");
    assert_eq!(paid["status"], "paid");
    assert_error(&pay(id).await, StatusCode::CONFLICT, "status");
    assert_error(
        &api.post(&format!("/orders/{id}/deliver"), json!({})).await,
        StatusCode::CONFLICT,
        "status",
    );
    let (s, _) = api
        .post(&format!("/orders/{id}/ship"), json!({"carrier": "dhl"}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, d) = api
        .call(
            reqwest::Method::POST,
            &format!("/orders/{id}/deliver"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["status"], "delivered");
    let (s, r) = api.post(&format!("/orders/{id}/refund"), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["status"], "refunded");

    let c = db(&topology.shards[shard]).await;
    let sql = "SELECT amount::text, status, id FROM payments WHERE order_id = $1";
    let row = row_of(&c, sql, id).await;
    assert_eq!(row.get::<_, String>(0), "65.22");
    assert_eq!(row.get::<_, String>(1), "refunded");
    assert_eq!(shard_of_id(row.get(2)), shard);
    let sql = "SELECT status, delivered_at IS NOT NULL FROM shipments WHERE order_id = $1";
    let row = row_of(&c, sql, id).await;
    assert_eq!(row.get::<_, String>(0), "delivered");
    assert!(row.get::<_, bool>(1));

    // Cancel and delete only from pending.
    let (_, o2) = api.post("/orders", body.clone()).await;
    let id2 = o2["id"].as_i64().unwrap();
    let (s, _) = api.post(&format!("/orders/{id2}/cancel"), json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let del = api
        .call(reqwest::Method::DELETE, &format!("/orders/{id2}"), None)
        .await;
    assert_error(&del, StatusCode::CONFLICT, "status");

    let (_, o3) = api.post("/orders", body).await;
    let id3 = o3["id"].as_i64().unwrap();
    let (s, _) = api
        .call(reqwest::Method::DELETE, &format!("/orders/{id3}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_error(
        &api.get(&format!("/orders/{id3}")).await,
        StatusCode::NOT_FOUND,
        "id",
    );
    let sql = "SELECT count(*) FROM order_items WHERE order_id = $1";
    let items: i64 = row_of(&c, sql, id3).await.get(0);
    assert_eq!(items, 0);
    assert_error(
        &api.post(&format!("/orders/{id3}/pay"), json!({"method": "card"}))
            .await,
        StatusCode::NOT_FOUND,
        "id",
    );
}

async fn idempotent_retries_create_one_order(api: &Api, topology: &Topology, ctx: &Ctx) {
    let (cust, shard) = ctx.customers[2];
    let body =
        json!({"customer_id": cust, "items": [{"product_id": ctx.products[1].0, "quantity": 2}]});
    let send = |body: Value| {
        let http = api.http.clone();
        let url = format!("{}/orders", api.base);
        async move {
            let resp = http
                .post(url)
                .header("Idempotency-Key", "retry-key-1")
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let answers = futures::future::join_all((0..8).map(|_| send(body.clone()))).await;
    let created = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "{answers:?}");
    let ids: std::collections::BTreeSet<i64> = answers
        .iter()
        .map(|(_, v)| v["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert!(answers.iter().all(|(s, _)| s.is_success()), "{answers:?}");

    let c = db(&topology.shards[shard]).await;
    let sql = "SELECT count(*) FROM orders WHERE customer_id = $1";
    let orders: i64 = row_of(&c, sql, cust).await.get(0);
    assert_eq!(orders, 1);

    // The same key with another body is refused.
    let other =
        json!({"customer_id": cust, "items": [{"product_id": ctx.products[1].0, "quantity": 3}]});
    let (s, v) = send(other).await;
    assert_error(&(s, v), StatusCode::UNPROCESSABLE_ENTITY, "Idempotency-Key");
    // A later retry still gets the original order.
    let (s, v) = send(body).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["id"].as_i64(), ids.first().copied());
}

async fn bad_requests_name_the_field(api: &Api, ctx: &Ctx) {
    let cust = ctx.customers[0].0;
    let product = ctx.products[0].0;
    assert_error(
        &api.raw("/orders", "application/json", "{\"customer_id\": ")
            .await,
        StatusCode::BAD_REQUEST,
        "body",
    );
    assert_error(
        &api.raw("/orders", "text/plain", "{}").await,
        StatusCode::BAD_REQUEST,
        "Content-Type",
    );
    for (body, status, field) in [
        (
            json!({"customer_id": cust}),
            StatusCode::BAD_REQUEST,
            "items",
        ),
        (
            json!({"customer_id": cust, "items": []}),
            StatusCode::BAD_REQUEST,
            "items",
        ),
        (
            json!({"customer_id": "seven", "items": [{"product_id": product, "quantity": 1}]}),
            StatusCode::BAD_REQUEST,
            "customer_id",
        ),
        (
            json!({"customer_id": cust, "items": [{"product_id": product, "quantity": 0}]}),
            StatusCode::BAD_REQUEST,
            "items[0].quantity",
        ),
        (
            json!({"customer_id": cust, "items": [{"product_id": product, "quantity": -2}]}),
            StatusCode::BAD_REQUEST,
            "items[0].quantity",
        ),
        (
            json!({"customer_id": 987654, "items": [{"product_id": product, "quantity": 1}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "customer_id",
        ),
        (
            json!({"customer_id": cust, "items": [{"product_id": product, "quantity": 1}, {"product_id": 987654, "quantity": 1}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "items[1].product_id",
        ),
    ] {
        assert_error(&api.post("/orders", body).await, status, field);
    }
    let mut bad = customer("x@example.com", "eu");
    bad.as_object_mut().unwrap().remove("email");
    assert_error(
        &api.post("/customers", bad).await,
        StatusCode::BAD_REQUEST,
        "email",
    );
    let dup = api
        .post("/customers", customer("c3@example.com", "eu"))
        .await;
    // Emails are unique per shard; the hash may place the duplicate elsewhere.
    assert!(
        dup.0 == StatusCode::CONFLICT || dup.0 == StatusCode::CREATED,
        "{dup:?}"
    );
    assert_error(
        &api.call(
            reqwest::Method::PATCH,
            &format!("/products/{product}/price"),
            Some(json!({"price": -3})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "price",
    );
    assert_error(&api.get("/orders/abc").await, StatusCode::BAD_REQUEST, "id");
    assert_error(&api.get("/nowhere").await, StatusCode::NOT_FOUND, "path");
    assert_error(
        &api.call(reqwest::Method::PUT, "/orders", None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method",
    );
    assert_error(
        &api.post("/orders/1/pay", json!({"method": 5})).await,
        StatusCode::BAD_REQUEST,
        "method",
    );
}

async fn list_strategy_rejects_unknown_region(topology: &Topology) {
    let config = OltpConfig {
        listen: "127.0.0.1:0".into(),
        pool_size: 2,
        sharding: ShardingConfig {
            strategy: StrategyKind::List,
            regions: [("eu".to_owned(), 1usize), ("us".to_owned(), 0)].into(),
            ..ShardingConfig::default()
        },
        ..OltpConfig::default()
    };
    let server = Server::bind(config, topology.clone()).await.unwrap();
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("http://{}", server.local_addr()),
    };
    let stop = CancellationToken::new();
    let serving = tokio::spawn(server.run(stop.clone()));
    assert_error(
        &api.post("/customers", customer("mars@example.com", "mars"))
            .await,
        StatusCode::BAD_REQUEST,
        "region",
    );
    let (s, c) = api
        .post("/customers", customer("eu-list@example.com", "eu"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    assert_eq!(c["shard"], 1);
    stop.cancel();
    serving.await.unwrap().unwrap();
}

async fn load_generator_drives_traffic(base: &str, topology: &Topology) {
    let config = LoadConfig {
        base_url: base.to_owned(),
        rate: 60.0,
        duration: Duration::from_secs(4),
        concurrency: 4,
        seed: 42,
        ..LoadConfig::default()
    };
    let report = run_load(config, CancellationToken::new()).await.unwrap();
    println!("{report}");
    assert!(report.requests <= 240, "{report:?}");
    assert!(report.requests >= 150, "{report:?}");
    assert_eq!(report.errors, 0, "{report}");
    assert!(report.by_operation.contains_key("create_order"), "{report}");
    let mut orders = 0;
    for dsn in &topology.shards {
        let n: i64 = db(dsn)
            .await
            .query_one("SELECT count(*) FROM orders", &[])
            .await
            .unwrap()
            .get(0);
        orders += n;
    }
    assert!(orders > 10, "only {orders} orders");
    // Every request's latency is in its operation's histogram.
    let measured: u64 = report.latency_us.values().map(|h| h.len()).sum();
    assert_eq!(measured, report.requests - 1, "all but the catalog read");
    assert!((report.achieved_rate - 60.0).abs() < 20.0, "{report}");

    // An open model: with one slot and arrivals far faster than the
    // service, requests queue, and their latency counts from when each was
    // due. So the p99 is far above the median time a request takes, which
    // a closed loop would report, and plans leave late.
    let report = run_load(
        LoadConfig {
            base_url: base.to_owned(),
            rate: 2000.0,
            duration: Duration::from_secs(1),
            concurrency: 1,
            seed: 9,
            ..LoadConfig::default()
        },
        CancellationToken::new(),
    )
    .await
    .unwrap();
    println!("{report}");
    let all = report.all_latency().expect("latencies recorded");
    assert!(report.late > 0, "{report}");
    assert!(report.achieved_rate < 2000.0, "{report}");
    assert!(
        all.value_at_quantile(0.99) > 5 * all.value_at_quantile(0.05),
        "queueing shows in the latency: {report}"
    );

    // Shutdown stops a long run early.
    let stop = CancellationToken::new();
    let long = tokio::spawn(run_load(
        LoadConfig {
            base_url: base.to_owned(),
            rate: 20.0,
            duration: Duration::from_secs(600),
            concurrency: 2,
            seed: 7,
            ..LoadConfig::default()
        },
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let report = tokio::time::timeout(Duration::from_secs(10), long)
        .await
        .expect("load stops on shutdown")
        .unwrap()
        .unwrap();
    assert!(report.requests > 0 && report.requests < 50, "{report:?}");
}

/// A shard left at version 1 with rows in it takes version 2: old rows stay
/// valid with NULL in the new columns, and the new statuses and table work.
async fn version_2_upgrades_a_version_1_shard(topology: &Topology) {
    migrate_to(topology, 1).await.unwrap();
    let c = db(&topology.shards[0]).await;
    c.batch_execute(
        "INSERT INTO customers (id, email, name, region, country, city, address, lat, lon)
         VALUES (7, 'old@example.com', 'Old', 'eu', 'DE', 'Berlin', 'x', 1, 2);
         INSERT INTO orders (id, customer_id, status, total) VALUES (1, 7, 'paid', 10);
         INSERT INTO payments (order_id, amount, method, status) VALUES (1, 10, 'card', 'captured');",
    )
    .await
    .unwrap();
    let refused = c
        .execute(
            "INSERT INTO payments (order_id, amount, method, status) VALUES (1, 10, 'card', 'failed')",
            &[],
        )
        .await;
    assert!(refused.is_err(), "version 1 knows no failed payments");
    assert!(c.query("SELECT 1 FROM outbox", &[]).await.is_err());

    migrate(topology).await.unwrap();
    let versions: Vec<i32> = c
        .query("SELECT version FROM schema_migrations ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2]);
    let old = c
        .query_one(
            "SELECT o.status, o.device_id, o.billing_country, o.shipping_country, p.customer_id, p.card_fingerprint
             FROM orders o JOIN payments p ON p.order_id = o.id WHERE o.id = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(old.get::<_, String>(0), "paid");
    for i in 1..4 {
        assert_eq!(old.get::<_, Option<String>>(i), None);
    }
    assert_eq!(old.get::<_, Option<i64>>(4), None);
    assert_eq!(old.get::<_, Option<String>>(5), None);
    c.execute(
        "INSERT INTO payments (order_id, amount, method, status, customer_id, card_fingerprint)
         VALUES (1, 10, 'card', 'failed', 7, 'fp-1')",
        &[],
    )
    .await
    .unwrap();
    let bogus = c
        .execute(
            "INSERT INTO payments (order_id, amount, method, status) VALUES (1, 10, 'card', 'lost')",
            &[],
        )
        .await;
    assert!(
        bogus.is_err(),
        "the new CHECK still refuses unknown statuses"
    );
    // The outbox takes ids from its own sequence, on the shard's lane.
    let id: i64 = c
        .query_one(
            "INSERT INTO outbox (customer_id, event_type, payload) VALUES (7, 'x', '{\"a\": 1}') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(shard_of_id(id), 0);
    let not_json = c
        .execute(
            "INSERT INTO outbox (customer_id, event_type, payload) VALUES (7, 'x', 'nope')",
            &[],
        )
        .await;
    assert!(not_json.is_err(), "the payload must be JSON");
}

async fn failed_then_captured_payment(api: &Api, topology: &Topology, ctx: &Ctx) {
    let (cust, shard) = ctx.customers[3];
    let (s, order) = api
        .post(
            "/orders",
            json!({"customer_id": cust, "device_id": "dev-a", "billing_country": "DE",
                   "shipping_country": "FR", "items": [{"product_id": ctx.products[1].0, "quantity": 2}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{order}");
    assert_eq!(order["device_id"], "dev-a");
    assert_eq!(order["billing_country"], "DE");
    assert_eq!(order["shipping_country"], "FR");
    let id = order["id"].as_i64().unwrap();
    let path = format!("/orders/{id}/pay");
    let pay = |outcome: &'static str, card: &'static str| {
        api.post(
            &path,
            json!({"method": "card", "card_fingerprint": card, "outcome": outcome}),
        )
    };
    let (s, declined) = pay("failed", "fp-bad").await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED, "{declined}");
    assert_eq!(declined["field"], "outcome");
    assert!(declined["error"].as_str().unwrap().contains("declined"));
    assert_eq!(declined["order"]["status"], "pending");
    let failed_id = declined["payment_id"].as_i64().unwrap();
    assert_eq!(shard_of_id(failed_id), shard);
    let (s, got) = api.get(&format!("/orders/{id}")).await;
    assert_eq!((s, &got["status"]), (StatusCode::OK, &json!("pending")));

    let (s, paid) = pay("captured", "fp-good").await;
    assert_eq!(s, StatusCode::OK, "{paid}");
    assert_eq!(paid["status"], "paid");
    assert_error(
        &pay("failed", "fp-bad").await,
        StatusCode::CONFLICT,
        "status",
    );
    assert_error(
        &api.post(
            &format!("/orders/{id}/pay"),
            json!({"method": "card", "outcome": "maybe"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "outcome",
    );

    let (s, _) = api.post(&format!("/orders/{id}/refund"), json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let c = db(&topology.shards[shard]).await;
    let rows: Vec<(String, Option<i64>, Option<String>, String)> = c
        .query(
            "SELECT status, customer_id, card_fingerprint, amount::text FROM payments WHERE order_id = $1 ORDER BY id",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        rows,
        [
            (
                "failed".into(),
                Some(cust),
                Some("fp-bad".into()),
                "10.50".into()
            ),
            (
                "refunded".into(),
                Some(cust),
                Some("fp-good".into()),
                "10.50".into()
            ),
        ],
        "the refund leaves the failed attempt alone"
    );
}

/// The `order_placed` row commits in the order's transaction: same
/// transaction id, and when the outbox insert fails, no order either.
async fn outbox_row_commits_with_its_order(api: &Api, topology: &Topology, ctx: &Ctx) {
    let (cust, shard) = ctx.customers[4];
    let c = db(&topology.shards[shard]).await;
    let body = json!({"customer_id": cust, "device_id": "dev-b", "billing_country": "US",
                      "shipping_country": "US", "items": [{"product_id": ctx.products[0].0, "quantity": 1}]});
    let (s, order) = api.post("/orders", body.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{order}");
    let id = order["id"].as_i64().unwrap();
    let rows = c
        .query(
            "SELECT o.xmin::text, x.xmin::text, x.customer_id, x.event_type, x.payload, shard_meta.shard
             FROM orders o, outbox x, shard_meta
             WHERE o.id = $1 AND (x.payload::jsonb ->> 'id')::bigint = o.id",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one outbox row per order");
    let r = &rows[0];
    assert_eq!(
        r.get::<_, String>(0),
        r.get::<_, String>(1),
        "same transaction"
    );
    assert_eq!(r.get::<_, i64>(2), cust);
    assert_eq!(r.get::<_, String>(3), "order_placed");
    let payload: Value = serde_json::from_str(&r.get::<_, String>(4)).unwrap();
    assert_eq!(
        payload, order,
        "the payload is the order as the API shows it"
    );
    assert_eq!(payload["items"].as_array().unwrap().len(), 1);
    assert_eq!(payload["device_id"], "dev-b");
    assert_eq!(payload["shipping_country"], "US");

    // Force the outbox insert to fail: the order must not exist either.
    c.batch_execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .await
    .unwrap();
    let orders_before = count(
        &c,
        "SELECT count(*) FROM orders WHERE customer_id = $1",
        cust,
    )
    .await;
    let (s, _) = api.post("/orders", body).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM orders WHERE customer_id = $1",
            cust
        )
        .await,
        orders_before,
        "an order without its outbox row committed"
    );
    c.batch_execute("DROP TRIGGER refuse ON outbox; DROP FUNCTION refuse();")
        .await
        .unwrap();
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM outbox WHERE customer_id = $1",
            cust
        )
        .await,
        count(
            &c,
            "SELECT count(*) FROM orders WHERE customer_id = $1",
            cust
        )
        .await,
    );
}

async fn count(c: &tokio_postgres::Client, sql: &str, id: i64) -> i64 {
    row_of(c, sql, id).await.get(0)
}

async fn clicks_need_a_broker(api: &Api, ctx: &Ctx) {
    let (cust, _) = ctx.customers[0];
    let product = ctx.products[0].0;
    let body = json!({"customer_id": cust, "device_id": "dev-a"});
    let resp = api.post(&format!("/products/{product}/view"), body).await;
    assert_error(&resp, StatusCode::SERVICE_UNAVAILABLE, "clickstream");
    assert!(
        resp.1["error"].as_str().unwrap().contains("Kafka"),
        "{resp:?}"
    );
    assert_error(
        &api.post(
            &format!("/products/{product}/cart"),
            json!({"customer_id": cust}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "device_id",
    );
}

/// With a clickstream (its broker unreachable: clicks are accepted, then
/// counted as dropped) the load generator runs incidents end to end and
/// labels them.
async fn labelled_fraud_runs_through_the_api(topology: &Topology) {
    let config = OltpConfig {
        listen: "127.0.0.1:0".into(),
        pool_size: 8,
        ..OltpConfig::default()
    };
    let mut kafka = KafkaConfig::local("127.0.0.1:1");
    kafka
        .properties
        .insert("message.timeout.ms".into(), "500".into());
    let server = Server::bind(config, topology.clone())
        .await
        .unwrap()
        .with_clickstream(&kafka)
        .await
        .unwrap();
    let base = format!("http://{}", server.local_addr());
    let stop = CancellationToken::new();
    let serving = tokio::spawn(server.run(stop.clone()));
    let api = Api {
        http: reqwest::Client::new(),
        base: base.clone(),
    };
    let (s, click) = api
        .post(
            "/products/1/cart",
            json!({"customer_id": 5, "device_id": "d"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{click}");
    assert_eq!(click["kind"], "add_to_cart");
    assert_eq!(click["event_id"].as_str().unwrap().len(), 36);

    let labels =
        std::env::temp_dir().join(format!("tributary-labels-{}.jsonl", std::process::id()));
    let report = run_load(
        LoadConfig {
            base_url: base,
            rate: 80.0,
            duration: Duration::from_secs(8),
            concurrency: 4,
            seed: 3,
            fraud_rate: 1.0,
            labels_path: Some(labels.clone()),
            ..LoadConfig::default()
        },
        CancellationToken::new(),
    )
    .await
    .unwrap();
    println!("{report}");
    assert_eq!(report.errors, 0, "{report}");
    assert_eq!(report.incidents_incomplete, 0, "{report}");
    assert!(report.by_operation.contains_key("view"), "{report}");
    let text = std::fs::read_to_string(&labels).unwrap();
    let _ = std::fs::remove_file(&labels);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let labelled: u64 = report.incidents.values().sum();
    assert_eq!(lines.len() as u64, labelled);
    assert!(lines.len() >= 5, "{text}");
    let mut patterns = std::collections::BTreeSet::new();
    for l in &lines {
        patterns.insert(l["pattern"].as_str().unwrap().to_owned());
        assert!(l["label"] == "fraud" || l["label"] == "benign", "{l}");
        assert!(l["first_ts"].as_str().unwrap() <= l["last_ts"].as_str().unwrap());
        let customer = l["customer_id"].as_i64().unwrap();
        let ids = l["order_ids"].as_array().unwrap();
        assert!(!ids.is_empty(), "{l}");
        let shard = shard_of_id(ids[0].as_i64().unwrap());
        let c = db(&topology.shards[shard]).await;
        for id in ids {
            let owner: i64 = row_of(
                &c,
                "SELECT customer_id FROM orders WHERE id = $1",
                id.as_i64().unwrap(),
            )
            .await
            .get(0);
            assert_eq!(owner, customer, "{l}");
        }
        if l["pattern"] == "failed_payments" {
            let failed: i64 = row_of(
                &c,
                "SELECT count(*) FROM payments WHERE customer_id = $1 AND status = 'failed'",
                customer,
            )
            .await
            .get(0);
            assert!(failed >= 3, "{l}");
        }
    }
    assert!(patterns.len() >= 4, "{patterns:?}");
    assert!(
        patterns
            .iter()
            .any(|p| ["traveler", "retry_once"].contains(&p.as_str())),
        "{patterns:?}"
    );

    let (_, metrics) = api.text("/metrics").await;
    assert!(
        metrics.contains("tributary_oltp_clickstream_dropped_total"),
        "{metrics}"
    );
    stop.cancel();
    serving.await.unwrap().unwrap();
}
