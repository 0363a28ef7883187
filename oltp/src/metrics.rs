//! The order service's Prometheus metrics, on [`tributary_metrics`]: requests
//! served and their latency, by route template (`POST /orders/{id}/pay`),
//! so label cardinality stays bounded whatever paths clients send. Served
//! by the service itself as `/metrics`. The clickstream producer's counters
//! ([`CLICKSTREAM_SENT_TOTAL`], [`CLICKSTREAM_DROPPED_TOTAL`]) are served
//! there too.

use std::sync::LazyLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tributary_metrics::{HistogramVec, IntCounterVec};

pub use crate::clickstream::{
    DROPPED_TOTAL as CLICKSTREAM_DROPPED_TOTAL, SENT_TOTAL as CLICKSTREAM_SENT_TOTAL,
};

/// Counter of HTTP requests served, labels `route` and `status`.
pub const REQUESTS_TOTAL: &str = "tributary_oltp_requests_total";
/// Histogram of HTTP request latency in seconds, label `route`.
pub const REQUEST_DURATION_SECONDS: &str = "tributary_oltp_request_duration_seconds";
/// The latency histogram's bucket bounds, in seconds.
pub const REQUEST_DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    tributary_metrics::counter_vec(
        REQUESTS_TOTAL,
        "HTTP requests served, by route and status.",
        &["route", "status"],
    )
});

static LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    tributary_metrics::histogram_vec(
        REQUEST_DURATION_SECONDS,
        "HTTP request latency, by route.",
        &["route"],
        REQUEST_DURATION_BUCKETS,
    )
});

fn observe(route: &str, status: u16, seconds: f64) {
    REQUESTS
        .with_label_values(&[route, &status.to_string()])
        .inc();
    LATENCY.with_label_values(&[route]).observe(seconds);
}

/// Middleware recording every request under its route template.
pub(crate) async fn track(req: Request, next: Next) -> Response {
    let route = match req.extensions().get::<MatchedPath>() {
        Some(p) => format!("{} {}", req.method(), p.as_str()),
        None => "unmatched".to_owned(),
    };
    let started = Instant::now();
    let response = next.run(req).await;
    observe(
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// `GET /metrics`: every metric of the process, as Prometheus text.
pub(crate) async fn render() -> Response {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        tributary_metrics::render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_counters_and_cumulative_buckets() {
        // A route of its own: the registry is the whole process's.
        observe("POST /test/orders", 201, 0.003);
        observe("POST /test/orders", 201, 0.2);
        observe("POST /test/orders", 422, 0.001);
        let text = tributary_metrics::render();
        let has = |line: &str| assert!(text.contains(line), "{line} missing from\n{text}");
        has(r#"tributary_oltp_requests_total{route="POST /test/orders",status="201"} 2"#);
        has(r#"tributary_oltp_requests_total{route="POST /test/orders",status="422"} 1"#);
        // Cumulative: 0.001 and 0.003 are both at or below 0.005.
        has(
            r#"tributary_oltp_request_duration_seconds_bucket{route="POST /test/orders",le="0.0025"} 1"#,
        );
        has(
            r#"tributary_oltp_request_duration_seconds_bucket{route="POST /test/orders",le="0.005"} 2"#,
        );
        has(
            r#"tributary_oltp_request_duration_seconds_bucket{route="POST /test/orders",le="5"} 3"#,
        );
        has(
            r#"tributary_oltp_request_duration_seconds_bucket{route="POST /test/orders",le="+Inf"} 3"#,
        );
        has(r#"tributary_oltp_request_duration_seconds_count{route="POST /test/orders"} 3"#);
        has("# TYPE tributary_oltp_request_duration_seconds histogram");
    }
}
