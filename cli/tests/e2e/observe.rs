//! The local stack's monitoring (`tributary up --observe`), checked inside
//! the pipeline test that already runs every process (`pipeline.rs`), so it
//! costs no stack of its own: a real Prometheus finds the processes through
//! their announcements and scrapes them and the PostgreSQL exporters, loads
//! the shipped alert rules, reaches Alertmanager, and Alertmanager routes an
//! alert to a webhook. Also here: one order followed by its W3C trace from
//! the HTTP request through the reader into bronze, in the lake and in the
//! spans exported to an OTLP/HTTP receiver.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tributary_stack::observe::{ObserveState, RULES};

use crate::common::*;

/// A webhook receiver on loopback: every request body, in order.
pub struct Webhook {
    pub url: String,
    bodies: mpsc::UnboundedReceiver<String>,
}

impl Webhook {
    pub async fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/alerts", listener.local_addr().unwrap());
        let (tx, bodies) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    // Headers, then Content-Length bytes of body.
                    loop {
                        let Ok(n) = conn.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).into_owned();
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let len = head
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse::<usize>().ok())?
                                })
                                .unwrap_or(0);
                            if body.len() >= len {
                                let _ = tx.send(body.to_string());
                                let _ = conn
                                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                                    .await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        Webhook { url, bodies }
    }

    /// The next body, if one comes before `deadline`.
    pub async fn next_body(&mut self, deadline: tokio::time::Instant) -> Option<String> {
        tokio::time::timeout_at(deadline, self.bodies.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits for a body containing `needle`.
    pub async fn expect(&mut self, needle: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.bodies.recv()).await {
                Ok(Some(body)) if body.contains(needle) => return body,
                Ok(Some(_)) => continue,
                _ => panic!("the webhook got no alert {needle} within {within:?}"),
            }
        }
    }
}

async fn get(url: &str) -> Value {
    reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
}

/// The instant-query result of `query` in Prometheus.
pub async fn query(prom: &str, query: &str) -> Vec<Value> {
    let url = reqwest::Url::parse_with_params(&format!("{prom}/api/v1/query"), [("query", query)])
        .unwrap();
    get(url.as_str()).await["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Polls until `check` holds; fails after `secs` with what it last saw.
async fn until<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match check().await {
            Ok(()) => return,
            Err(seen) if Instant::now() > deadline => {
                panic!("{what} did not happen within {secs} s; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The health of each active target of `job` in Prometheus.
async fn target_health(prom: &str, job: &str) -> Vec<String> {
    get(&format!("{prom}/api/v1/targets")).await["data"]["activeTargets"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t["labels"]["job"] == job)
        .map(|t| t["health"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// With the stack, the order API, the reader and the ingester running (the
/// latter two with `--metrics`): everything the monitoring should see.
pub async fn assert_observed(env: &Env, webhook: &mut Webhook) {
    let state = ObserveState::load(&env.state_dir())
        .unwrap()
        .expect("`up --observe` recorded its state");
    let prom = state.prometheus_url();
    // Every announced process and every cluster's exporter is scraped.
    for (job, n) in [
        ("tributary-oltp", 1),
        ("tributary-cdc", 1),
        ("tributary-ingest", 1),
        ("postgres", env.stack_state().all_pg().count()),
        ("redis", 1),
    ] {
        until(&format!("{n} healthy {job} targets"), 60, || async {
            let h = target_health(&prom, job).await;
            if h.len() == n && h.iter().all(|h| h == "up") {
                Ok(())
            } else {
                Err(format!("{h:?}"))
            }
        })
        .await;
    }
    // What the rules read is there: the reader's and the ingester's own
    // series, the consumer lag, and each slot's lag seen from the server.
    until("the pipeline's series in Prometheus", 30, || async {
        let events = query(
            &prom,
            r#"sum(tributary_cdc_events_total{job="tributary-cdc"})"#,
        )
        .await;
        let lag = query(
            &prom,
            r#"tributary_lake_consumer_lag_messages{table="orders"}"#,
        )
        .await;
        let slots = query(&prom, "tributary_slot_lag_bytes").await;
        let redis = query(&prom, "redis_up == 1").await;
        let active = query(&prom, "tributary_slot_active == 1").await;
        let primaries = query(&prom, "tributary_node_primary == 1").await;
        let ok = primaries.len() == env.stack_state().all_pg().count()
            && events
            .first()
            .and_then(|v| v["value"][1].as_str()?.parse::<f64>().ok())
            .is_some_and(|n| n > 0.0)
            && lag.len() == 1
            && slots.len() >= env.stack_state().shards.len()
            && active.len() == slots.len()
            && redis.len() == 1;
        if ok {
            Ok(())
        } else {
            Err(format!(
                "events {events:?}, consumer lag {lag:?}, slots {slots:?}, active {active:?}, redis_up {redis:?}, primaries {primaries:?}"
            ))
        }
    })
    .await;
    // Every shipped rule is loaded, and Prometheus reaches Alertmanager.
    let shipped = RULES.matches("- alert:").count();
    let rules = get(&format!("{prom}/api/v1/rules")).await;
    let loaded: usize = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["rules"].as_array().map_or(0, |r| r.len()))
        .sum();
    assert_eq!(loaded, shipped, "rules loaded by Prometheus: {rules}");
    until("Prometheus to find Alertmanager", 30, || async {
        let am = get(&format!("{prom}/api/v1/alertmanagers")).await;
        match am["data"]["activeAlertmanagers"].as_array() {
            Some(a) if a.len() == 1 => Ok(()),
            _ => Err(am.to_string()),
        }
    })
    .await;
    // Alertmanager routes an alert to the configured webhook.
    let r = reqwest::Client::new()
        .post(format!("{}/api/v2/alerts", state.alertmanager_url()))
        .json(&json!([{
            "labels": {"alertname": "E2ERoutingCheck", "severity": "warning", "table": "orders"},
            "annotations": {"summary": "routed by the e2e test"},
        }]))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "Alertmanager refused: {r:?}");
    let body = webhook
        .expect("E2ERoutingCheck", Duration::from_secs(30))
        .await;
    let body: Value = serde_json::from_str(&body).unwrap();
    // A warning goes to the team (critical ones page), as the shipped
    // routing says.
    assert_eq!(body["receiver"], "team", "{body}");
    assert_eq!(body["status"], "firing", "{body}");
}

/// `tributary probe` (the image's health check): a live `/healthz` passes,
/// a port nobody listens on fails with the URL in the error.
pub fn assert_probe(env: &Env) {
    env.run_ok(&["probe", &format!("{}/healthz", env.url())]);
    let dead = format!("http://127.0.0.1:{}/healthz", free_port());
    let out = env.run(&["probe", &dead]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains(&dead),
        "{out:?}"
    );
}

/// After the ingester was SIGKILLed: Prometheus keeps scraping its
/// announced address and finds it down (what `ProcessDown` fires on).
pub async fn assert_ingester_seen_down(env: &Env) {
    let state = ObserveState::load(&env.state_dir()).unwrap().unwrap();
    let prom = state.prometheus_url();
    until("Prometheus to see the killed ingester down", 30, || async {
        let up = query(&prom, r#"up{job="tributary-ingest"}"#).await;
        match up.first().and_then(|v| v["value"][1].as_str()) {
            Some("0") => Ok(()),
            _ => Err(format!("{up:?}")),
        }
    })
    .await;
}

/// `tributary top --once` shows every section, and the numbers only the
/// monitoring has (the consumer lag of a table) come through.
pub fn assert_top(env: &Env) {
    let top = env.run_ok(&["top", "--once"]);
    for section in ["COMPONENTS", "TABLES", "ALERTS", "SCHEDULER RUNS"] {
        assert!(top.contains(section), "no {section} in top:\n{top}");
    }
    assert!(top.contains("prometheus"), "{top}");
    let orders = top
        .lines()
        .find(|l| l.trim_start().starts_with("orders "))
        .unwrap_or_else(|| panic!("no orders line in top:\n{top}"));
    let columns: Vec<&str> = orders.split_whitespace().collect();
    // table, behind s, consumer lag, changes/s, dead letters, writer.
    assert!(
        columns.len() >= 5 && columns[1..5].iter().all(|c| c.parse::<f64>().is_ok()),
        "the orders line lacks a measured column: {orders}\n{top}"
    );
}

/// An order placed and paid through the API with the client's own trace.
pub struct TracedOrder {
    pub id: i64,
    pub trace_id: String,
    pub client_span: String,
}

const PLACE_REQUEST: &str = "e2e-traced-place";
const PAY_REQUEST: &str = "e2e-traced-pay";

pub async fn place_traced_order(url: &str) -> TracedOrder {
    let c = reqwest::Client::new();
    let product = post(
        &c,
        format!("{url}/products"),
        json!({"sku": "TRACED-1", "name": "Traced", "category": "tools", "price": 3.5}),
    )
    .await;
    let customer = post(
        &c,
        format!("{url}/customers"),
        json!({"email": "traced@example.com", "name": "Traced", "region": "eu", "country": "NL",
               "city": "Delft", "address": "Street 3", "lat": 52.0, "lon": 4.3}),
    )
    .await;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let trace_id = format!("{:032x}", nanos | 1 << 100);
    let client_span = "00f067aa0ba902b7".to_string();
    let traceparent = format!("00-{trace_id}-{client_span}-01");
    // A POST with the client's trace and a request id of its own.
    let traced = async |path: String, request: &str, body: Value| {
        c.post(format!("{url}{path}"))
            .header("traceparent", &traceparent)
            .header("x-request-id", request)
            .json(&body)
            .send()
            .await
            .unwrap()
    };
    let r = traced(
        "/orders".into(),
        PLACE_REQUEST,
        json!({"customer_id": customer["id"], "items": [{"product_id": product["id"], "quantity": 1}]}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let r = traced(
        format!("/orders/{id}/pay"),
        PAY_REQUEST,
        json!({"method": "card"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    TracedOrder {
        id,
        trace_id,
        client_span,
    }
}

/// One exported span: its service and the span as OTLP/JSON.
struct Exported {
    service: String,
    span: Value,
}

impl Exported {
    fn field(&self, name: &str) -> &str {
        self.span[name].as_str().unwrap_or("")
    }
}

/// With the pipeline caught up: the order's trace is in bronze, in
/// `tributary trace`, and in the collector as one chain of spans from the
/// client's span through the API, its transaction, the reader and the
/// ingester.
pub async fn assert_order_traced(env: &Env, collector: &mut Webhook, order: &TracedOrder) {
    let TracedOrder {
        id,
        trace_id,
        client_span,
    } = order;
    let session = env.session().await;
    for (table, filter, request) in [
        (
            "orders",
            format!(r#"key LIKE '{{"id":{id},%' AND op = 'c'"#),
            PLACE_REQUEST,
        ),
        (
            "orders",
            format!(r#"key LIKE '{{"id":{id},%' AND op = 'u'"#),
            PAY_REQUEST,
        ),
        (
            "order_items",
            format!(r#"after LIKE '%"order_id":{id},%'"#),
            PLACE_REQUEST,
        ),
        (
            "payments",
            format!(r#"after LIKE '%"order_id":{id},%'"#),
            PAY_REQUEST,
        ),
    ] {
        let batches = session
            .sql(&format!(
                "SELECT request_id, traceparent, CAST(requested_at AS BIGINT) <= CAST(commit_ts AS BIGINT) \
                 FROM bronze.{table} WHERE {filter}"
            ))
            .await
            .unwrap();
        let rows: Vec<Vec<String>> = batches
            .iter()
            .flat_map(|b| {
                (0..b.num_rows()).map(move |r| {
                    (0..3)
                        .map(|c| {
                            arrow::util::display::array_value_to_string(b.column(c), r).unwrap()
                        })
                        .collect()
                })
            })
            .collect();
        assert!(
            !rows.is_empty(),
            "no change in bronze.{table} where {filter}"
        );
        for r in &rows {
            assert_eq!(r[0], request, "bronze.{table}: {rows:?}");
            assert!(
                r[1].starts_with(&format!("00-{trace_id}-")) && !r[1].contains(client_span),
                "bronze.{table} should carry the trace with the reader's span: {rows:?}"
            );
            assert_eq!(r[2], "true", "request after its commit? {rows:?}");
        }
    }
    let out = env.run_ok(&["trace", &id.to_string()]);
    assert!(
        out.contains(&format!("request {PLACE_REQUEST} (trace {trace_id})"))
            && out.contains(&format!("request {PAY_REQUEST} (trace {trace_id})")),
        "{out}"
    );

    // The collector: every stage of the placing request, chained.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut spans: Vec<Exported> = Vec::new();
    let chain = |spans: &[Exported]| -> Option<Vec<String>> {
        let by = |service: &str, kind: i64, parent: &str| {
            spans.iter().find(|s| {
                s.service == service && s.span["kind"] == kind && s.field("parentSpanId") == parent
            })
        };
        let server = by("tributary-oltp", 2, client_span)?;
        let tx = by("tributary-oltp", 3, server.field("spanId"))?;
        let cdc = by("tributary-cdc", 4, tx.field("spanId"))?;
        let names: Vec<String> = spans
            .iter()
            .filter(|s| {
                s.service == "tributary-lake"
                    && s.span["kind"] == 5
                    && s.field("parentSpanId") == cdc.field("spanId")
            })
            .map(|s| s.field("name").to_string())
            .collect();
        (names.contains(&"ingest orders".to_string())
            && names.contains(&"ingest order_items".to_string()))
        .then(|| {
            vec![
                server.field("name").to_string(),
                tx.field("name").to_string(),
                cdc.field("name").to_string(),
            ]
        })
    };
    let names = loop {
        if let Some(names) = chain(&spans) {
            break names;
        }
        let Some(body) = collector.next_body(deadline).await else {
            let seen: Vec<String> = spans
                .iter()
                .map(|s| {
                    format!(
                        "{} {} {}",
                        s.service,
                        s.field("name"),
                        s.field("parentSpanId")
                    )
                })
                .collect();
            panic!("no complete chain of spans for trace {trace_id} within 60 s; got {seen:#?}");
        };
        let v: Value = serde_json::from_str(&body).expect("OTLP/JSON");
        for rs in v["resourceSpans"].as_array().expect("resourceSpans") {
            let service = rs["resource"]["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["key"] == "service.name")
                .and_then(|a| a["value"]["stringValue"].as_str())
                .expect("service.name")
                .to_string();
            for ss in rs["scopeSpans"].as_array().unwrap() {
                for s in ss["spans"].as_array().unwrap() {
                    let start: u128 = s["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
                    let end: u128 = s["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
                    assert!(end >= start, "{s}");
                    if s["traceId"] == trace_id.as_str() {
                        spans.push(Exported {
                            service: service.clone(),
                            span: s.clone(),
                        });
                    }
                }
            }
        }
    };
    assert_eq!(names[0], "POST /orders");
    assert_eq!(names[1], "place order transaction");
    assert!(names[2].starts_with("publish "), "{names:?}");
}
