//! Export of spans to an OpenTelemetry collector over OTLP/HTTP with JSON
//! encoding (`POST {endpoint}/v1/traces`, `application/json`): every
//! collector and most tracing backends (Jaeger, Tempo, Honeycomb, Datadog's
//! agent) take it, and it needs no protobuf or gRPC stack in the binary.
//!
//! A process calls [`init`] once with the endpoint of `[observe]
//! otlp_endpoint`; without it [`record`] does nothing, so the stages cost
//! nothing when nobody collects. Spans go through a bounded queue to one
//! task that sends them in batches (up to [`BATCH`] spans, at least once a
//! second). Telemetry never slows the data path: a full queue drops the
//! span, a collector that does not answer loses the batch after a retry,
//! and both are counted (`tributary_otlp_spans_total{outcome}`).

use std::collections::BTreeMap;
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::trace::{TraceContext, hex};
use crate::{IntCounterVec, counter_vec};

/// Spans per request at most.
pub const BATCH: usize = 512;
/// Spans waiting to be sent at most; more are dropped.
const QUEUE: usize = 8192;
/// A batch is sent at least this often.
const INTERVAL: Duration = Duration::from_secs(1);

static SPANS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "tributary_otlp_spans_total",
        "Spans handed to the OTLP exporter, by outcome: exported, dropped (queue full) or failed (the collector did not take them).",
        &["outcome"],
    )
});

/// What a span stands for, as OTLP numbers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
    Producer = 4,
    Consumer = 5,
}

/// An attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
}

impl From<&str> for Attr {
    fn from(s: &str) -> Attr {
        Attr::Str(s.to_string())
    }
}

impl From<String> for Attr {
    fn from(s: String) -> Attr {
        Attr::Str(s)
    }
}

impl From<i64> for Attr {
    fn from(n: i64) -> Attr {
        Attr::Int(n)
    }
}

/// One finished span.
#[derive(Clone, Debug)]
pub struct Span {
    /// `service.name` of the process part that did the work.
    pub service: &'static str,
    pub name: String,
    pub kind: Kind,
    /// This span's trace and span id.
    pub context: TraceContext,
    pub parent: Option<[u8; 8]>,
    pub start_us: i64,
    pub end_us: i64,
    pub attributes: Vec<(&'static str, Attr)>,
    /// Set when the work failed: the status message.
    pub error: Option<String>,
}

impl Span {
    /// A span of `context` (its own ids) under `parent`.
    pub fn new(
        service: &'static str,
        name: impl Into<String>,
        kind: Kind,
        context: TraceContext,
        parent: Option<&TraceContext>,
        start_us: i64,
        end_us: i64,
    ) -> Span {
        Span {
            service,
            name: name.into(),
            kind,
            context,
            parent: parent.map(|p| p.span_id),
            start_us,
            end_us: end_us.max(start_us),
            attributes: Vec::new(),
            error: None,
        }
    }

    pub fn attr(mut self, key: &'static str, value: impl Into<Attr>) -> Span {
        self.attributes.push((key, value.into()));
        self
    }

    fn to_json(&self) -> Value {
        let mut span = json!({
            "traceId": hex(&self.context.trace_id),
            "spanId": hex(&self.context.span_id),
            "name": self.name,
            "kind": self.kind as i32,
            "startTimeUnixNano": (self.start_us as i128 * 1000).to_string(),
            "endTimeUnixNano": (self.end_us as i128 * 1000).to_string(),
            "attributes": self.attributes.iter().map(|(k, v)| attribute(k, v)).collect::<Vec<_>>(),
            "status": match &self.error {
                None => json!({ "code": 1 }),
                Some(m) => json!({ "code": 2, "message": m }),
            },
        });
        if let Some(p) = self.parent {
            span["parentSpanId"] = json!(hex(&p));
        }
        span
    }
}

fn attribute(key: &str, value: &Attr) -> Value {
    let value = match value {
        Attr::Str(s) => json!({ "stringValue": s }),
        // int64 as a string, as the protobuf JSON mapping writes it.
        Attr::Int(n) => json!({ "intValue": n.to_string() }),
    };
    json!({ "key": key, "value": value })
}

/// The request body for `spans`: one resource per service.
pub fn encode(spans: &[Span]) -> Value {
    let mut by_service: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for s in spans {
        by_service.entry(s.service).or_default().push(s.to_json());
    }
    let resources: Vec<Value> = by_service
        .into_iter()
        .map(|(service, spans)| {
            json!({
                "resource": { "attributes": [
                    attribute("service.name", &Attr::Str(service.into())),
                    attribute("service.namespace", &Attr::Str("tributary".into())),
                    attribute("process.pid", &Attr::Int(std::process::id().into())),
                ]},
                "scopeSpans": [{
                    "scope": { "name": "tributary", "version": env!("CARGO_PKG_VERSION") },
                    "spans": spans,
                }],
            })
        })
        .collect();
    json!({ "resourceSpans": resources })
}

/// Wall-clock time in microseconds since the epoch: the clock every span
/// (and every process that records one) reads.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

enum Msg {
    Span(Box<Span>),
    Flush(oneshot::Sender<()>),
}

static QUEUE_TX: OnceLock<mpsc::Sender<Msg>> = OnceLock::new();

/// The endpoint as logs may show it: without user or password.
fn redacted(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// Starts exporting to the collector at `endpoint` (`http(s)://host:port`,
/// the base of `/v1/traces`). Once per process, inside a Tokio runtime; a
/// second call keeps the first endpoint.
pub fn init(endpoint: &str) -> Result<(), String> {
    let base = reqwest::Url::parse(endpoint.trim_end_matches('/'))
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            "[observe] otlp_endpoint: expected an http(s) URL such as http://127.0.0.1:4318"
                .to_string()
        })?;
    let url = reqwest::Url::parse(&format!(
        "{}/v1/traces",
        base.as_str().trim_end_matches('/')
    ))
    .map_err(|e| format!("[observe] otlp_endpoint: {e}"))?;
    let (tx, rx) = mpsc::channel(QUEUE);
    if QUEUE_TX.set(tx).is_ok() {
        tracing::info!(endpoint = %redacted(&url), "exporting spans over OTLP/HTTP");
        tokio::spawn(export_loop(url, rx));
    }
    Ok(())
}

/// Whether spans go anywhere (callers skip building them when not).
pub fn enabled() -> bool {
    QUEUE_TX.get().is_some()
}

/// Hands a finished span to the exporter; unsampled spans are not kept.
pub fn record(span: Span) {
    let Some(tx) = QUEUE_TX.get() else {
        return;
    };
    if !span.context.sampled() {
        return;
    }
    if tx.try_send(Msg::Span(Box::new(span))).is_err() {
        SPANS.with_label_values(&["dropped"]).inc();
    }
}

/// Sends what is queued and waits (at most `within`) until it is sent: a
/// process calls it before it exits.
pub async fn flush(within: Duration) {
    let Some(tx) = QUEUE_TX.get() else {
        return;
    };
    let (done, wait) = oneshot::channel();
    if tx.send(Msg::Flush(done)).await.is_ok() {
        let _ = tokio::time::timeout(within, wait).await;
    }
}

async fn export_loop(url: reqwest::Url, mut rx: mpsc::Receiver<Msg>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client with a timeout builds");
    let mut batch: Vec<Span> = Vec::with_capacity(BATCH);
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        let flushed = tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Span(s)) => {
                    batch.push(*s);
                    if batch.len() < BATCH {
                        continue;
                    }
                    None
                }
                Some(Msg::Flush(done)) => Some(done),
                None => return,
            },
            _ = tick.tick() => None,
        };
        if !batch.is_empty() {
            let n = batch.len() as u64;
            match send(&client, &url, &encode(&batch)).await {
                Ok(()) => {
                    SPANS.with_label_values(&["exported"]).inc_by(n);
                    warned = false;
                }
                Err(e) => {
                    SPANS.with_label_values(&["failed"]).inc_by(n);
                    // Once per outage, not once per batch.
                    if !warned {
                        tracing::warn!(endpoint = %redacted(&url), error = %e, spans = n, "the OTLP collector did not take a batch of spans; dropping it");
                        warned = true;
                    }
                }
            }
            batch.clear();
        }
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
}

/// One POST, retried once after a transient failure (as the OTLP
/// specification asks: connection errors, 429, 502, 503, 504).
async fn send(client: &reqwest::Client, url: &reqwest::Url, body: &Value) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..2 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        match client.post(url.clone()).json(body).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => {
                last = format!("HTTP {}", r.status());
                if ![429, 502, 503, 504].contains(&r.status().as_u16()) {
                    break;
                }
            }
            // Without the URL: it may hold a user and password.
            Err(e) => last = e.without_url().to_string(),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_encode_as_otlp_json_grouped_by_service() {
        let root =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let child = root.child();
        let spans = vec![
            Span::new(
                "tributary-oltp",
                "POST /orders",
                Kind::Server,
                root,
                None,
                1_000,
                2_500,
            )
            .attr("http.response.status_code", 201),
            Span::new(
                "tributary-cdc",
                "publish orders",
                Kind::Producer,
                child,
                Some(&root),
                3_000,
                2_000,
            )
            .attr("db.namespace", "orders"),
        ];
        let body = encode(&spans);
        let resources = body["resourceSpans"].as_array().unwrap();
        assert_eq!(resources.len(), 2);
        // BTreeMap order: cdc before oltp.
        let cdc = &resources[0];
        assert_eq!(
            cdc["resource"]["attributes"][0],
            json!({"key": "service.name", "value": {"stringValue": "tributary-cdc"}})
        );
        let s = &cdc["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(s["kind"], 4);
        assert_eq!(s["startTimeUnixNano"], "3000000");
        // An end before the start is clamped to the start.
        assert_eq!(s["endTimeUnixNano"], "3000000");
        let o = &resources[1]["scopeSpans"][0]["spans"][0];
        assert!(o.get("parentSpanId").is_none());
        assert_eq!(o["spanId"], "00f067aa0ba902b7");
        assert_eq!(o["endTimeUnixNano"], "2500000");
        assert_eq!(
            o["attributes"][0],
            json!({"key": "http.response.status_code", "value": {"intValue": "201"}})
        );
        assert_eq!(o["status"]["code"], 1);
    }

    #[test]
    fn endpoints_must_be_http_urls_and_logs_never_show_their_password() {
        for bad in ["", "localhost:4318", "ftp://x", "http://"] {
            assert!(init(bad).is_err(), "{bad:?}");
        }
        let u = reqwest::Url::parse("https://user:s3cret@collector:4318/v1/traces").unwrap();
        let shown = redacted(&u);
        assert!(
            !shown.contains("s3cret") && !shown.contains("user"),
            "{shown}"
        );
    }
}
