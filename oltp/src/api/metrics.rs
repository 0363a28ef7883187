//! Request counters and latency histograms in Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Shared;

const REQUESTS_TOTAL: &str = "tributary_oltp_requests_total";
const REQUEST_SECONDS: &str = "tributary_oltp_request_duration_seconds";
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub(crate) struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
}

impl Metrics {
    fn observe(&self, route: &str, status: u16, seconds: f64) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((route.to_owned(), status))
            .or_default() += 1;
        let mut latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let h = latency.entry(route.to_owned()).or_default();
        h.count += 1;
        h.sum += seconds;
        for (slot, bound) in h.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *slot += 1;
            }
        }
    }

    fn exposition(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "# HELP {REQUESTS_TOTAL} HTTP requests served, by route and status."
        );
        let _ = writeln!(out, "# TYPE {REQUESTS_TOTAL} counter");
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "{REQUESTS_TOTAL}{{route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        let _ = writeln!(
            out,
            "# HELP {REQUEST_SECONDS} HTTP request latency, by route."
        );
        let _ = writeln!(out, "# TYPE {REQUEST_SECONDS} histogram");
        for (route, h) in self
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let route = escape(route);
            for (n, bound) in h.buckets.iter().zip(BUCKETS) {
                let _ = writeln!(
                    out,
                    "{REQUEST_SECONDS}_bucket{{route=\"{route}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "{REQUEST_SECONDS}_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "{REQUEST_SECONDS}_sum{{route=\"{route}\"}} {}", h.sum);
            let _ = writeln!(
                out,
                "{REQUEST_SECONDS}_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Middleware recording every request under its route template, so that
/// label cardinality stays bounded whatever paths clients send.
pub(crate) async fn track(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let route = match req.extensions().get::<MatchedPath>() {
        Some(p) => format!("{} {}", req.method(), p.as_str()),
        None => "unmatched".to_owned(),
    };
    let started = Instant::now();
    let response = next.run(req).await;
    state.metrics.observe(
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

pub(crate) async fn render(State(state): State<Shared>) -> Response {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.exposition(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.observe("POST /orders", 201, 0.003);
        m.observe("POST /orders", 201, 0.2);
        m.observe("POST /orders", 422, 0.001);
        let text = m.exposition();
        assert!(
            text.contains("tributary_oltp_requests_total{route=\"POST /orders\",status=\"201\"} 2")
        );
        assert!(
            text.contains("tributary_oltp_requests_total{route=\"POST /orders\",status=\"422\"} 1")
        );
        assert!(text.contains(
            "tributary_oltp_request_duration_seconds_bucket{route=\"POST /orders\",le=\"0.005\"} 2"
        ));
        assert!(text.contains(
            "tributary_oltp_request_duration_seconds_bucket{route=\"POST /orders\",le=\"+Inf\"} 3"
        ));
        assert!(
            text.contains(
                "tributary_oltp_request_duration_seconds_count{route=\"POST /orders\"} 3"
            )
        );
        assert_eq!(escape("a\"b"), "a\\\"b");
    }
}
