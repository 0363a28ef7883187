//! Prometheus metrics of every long-running tributary process, on the
//! maintained `prometheus` crate: each crate declares its metrics once (names
//! as constants in its own `metrics` module, Prometheus naming: base units,
//! `_total` on counters, low-cardinality labels), registers them in the
//! process's default registry through the helpers here, and every process
//! serves them with [`serve`] as `/metrics` beside `/healthz`.
//!
//! ```
//! use std::sync::LazyLock;
//! use tributary_metrics::{IntCounterVec, counter_vec, render};
//! const EVENTS: &str = "tributary_doc_events_total";
//! static EVENTS_TOTAL: LazyLock<IntCounterVec> =
//!     LazyLock::new(|| counter_vec(EVENTS, "Events seen, per table.", &["table"]));
//! EVENTS_TOTAL.with_label_values(&["orders"]).inc();
//! assert!(render().contains(r#"tributary_doc_events_total{table="orders"} 1"#));
//! ```

pub mod otlp;
pub mod trace;

use std::net::SocketAddr;

pub use prometheus::core::{Collector, Desc};
pub use prometheus::proto::MetricFamily;
pub use prometheus::{
    CounterVec, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts,
};
use prometheus::{Encoder, TextEncoder};
use tokio_util::sync::CancellationToken;

/// Latency buckets in seconds, 1 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn register<C: Collector + Clone + 'static>(name: &str, c: C) -> C {
    // A name registered twice is a programming error: two crates claimed it.
    prometheus::default_registry()
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("registering metric {name}: {e}"));
    c
}

/// A counter with labels, registered in the default registry. Call once per
/// name (keep it in a `LazyLock`).
pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(name, c)
}

/// A counter with labels that counts fractions (e.g. seconds spent).
pub fn float_counter_vec(name: &str, help: &str, labels: &[&str]) -> CounterVec {
    let c = CounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(name, c)
}

/// Registers a collector of one's own: a metric computed at scrape time
/// (e.g. "seconds behind", which grows while nothing happens). Call once.
pub fn register_collector(name: &str, collector: Box<dyn Collector>) {
    prometheus::default_registry()
        .register(collector)
        .unwrap_or_else(|e| panic!("registering metric {name}: {e}"));
}

/// Every metric family of `collector` as Prometheus text (for tests of a
/// collector or histogram kept outside the registry).
pub fn render_families(families: &[MetricFamily]) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(families, &mut out)
        .expect("the text encoder writes to memory");
    String::from_utf8(out).expect("the text encoder writes UTF-8")
}

/// A counter without labels.
pub fn counter(name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(name, c)
}

/// A gauge with labels (floating point).
pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(name, g)
}

/// An integer gauge with labels.
pub fn int_gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(name, g)
}

/// A histogram without labels, with the given bucket bounds.
pub fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(name, h)
}

/// A histogram with labels.
pub fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(name, h)
}

/// Every metric of this process, as Prometheus text (format 0.0.4).
pub fn render() -> String {
    render_families(&prometheus::gather())
}

/// Serves `/metrics` ([`render`]) and `/healthz` on `listen` until
/// `shutdown`; returns the bound address (`listen` may use port 0).
pub async fn serve(listen: &str, shutdown: CancellationToken) -> std::io::Result<SocketAddr> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|| async { ([("content-type", "text/plain; version=0.0.4")], render()) }),
        )
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("metrics listener on {listen}: {e}")))?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let h = histogram_vec(
            "tributary_test_latency_seconds",
            "A test histogram.",
            &["route"],
            &[0.1, 1.0],
        );
        h.with_label_values(&["/a"]).observe(0.05);
        h.with_label_values(&["/a"]).observe(0.5);
        let text = render();
        assert!(
            text.contains(r#"tributary_test_latency_seconds_bucket{route="/a",le="0.1"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"tributary_test_latency_seconds_bucket{route="/a",le="1"} 2"#));
        assert!(text.contains(r#"tributary_test_latency_seconds_bucket{route="/a",le="+Inf"} 2"#));
        assert!(text.contains(r#"tributary_test_latency_seconds_count{route="/a"} 2"#));
    }

    #[tokio::test]
    async fn serves_metrics_and_health() {
        let c = counter("tributary_test_served_total", "A test counter.");
        c.inc();
        let stop = CancellationToken::new();
        let addr = serve("127.0.0.1:0", stop.clone()).await.unwrap();
        let body = get(addr, "/metrics").await;
        assert!(body.contains("tributary_test_served_total 1"), "{body}");
        assert!(get(addr, "/healthz").await.ends_with("ok"));
        stop.cancel();
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}
