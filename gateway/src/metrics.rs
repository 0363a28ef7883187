//! The gateway's metrics (served on the admin address's `/metrics`).

use std::sync::LazyLock;
use std::time::Duration;

use tributary_metrics::{
    HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, LATENCY_BUCKETS, counter, counter_vec,
    histogram_vec, int_gauge_vec,
};

pub const REQUESTS: &str = "tributary_gateway_requests_total";
pub const DURATION: &str = "tributary_gateway_request_duration_seconds";
pub const RETRIES: &str = "tributary_gateway_retries_total";
pub const EJECTIONS: &str = "tributary_gateway_ejections_total";
pub const BACKEND_UP: &str = "tributary_gateway_backend_up";
pub const BACKEND_DRAINING: &str = "tributary_gateway_backend_draining";
pub const BACKEND_INFLIGHT: &str = "tributary_gateway_backend_inflight";
pub const BACKEND_REQUESTS: &str = "tributary_gateway_backend_requests_total";
pub const POOL_WEIGHT: &str = "tributary_gateway_pool_weight";

static REQUESTS_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        REQUESTS,
        "Requests answered by the gateway, by status class and outcome: proxied, the \
         storefront endpoint, or a refusal (unauthorized, rate_limited, too_large, \
         malformed, no_replica).",
        &["code", "outcome"],
    )
});
static DURATION_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        DURATION,
        "Time from a request's arrival to its answer, by status class.",
        &["code"],
        LATENCY_BUCKETS,
    )
});
static RETRIES_TOTAL: LazyLock<IntCounter> =
    LazyLock::new(|| counter(RETRIES, "Tries sent to another replica after a failed one."));
static EJECTIONS_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        EJECTIONS,
        "Replicas left out after consecutive failed requests.",
        &["backend"],
    )
});
pub(crate) static BACKEND_UP_GAUGE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    int_gauge_vec(
        BACKEND_UP,
        "1 while a replica takes new requests (healthy, not ejected, not draining).",
        &["backend", "pool"],
    )
});
pub(crate) static BACKEND_DRAINING_GAUGE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    int_gauge_vec(
        BACKEND_DRAINING,
        "1 while a replica is drained on purpose (`gateway drain`, `rollout`).",
        &["backend", "pool"],
    )
});
pub(crate) static BACKEND_INFLIGHT_GAUGE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    int_gauge_vec(
        BACKEND_INFLIGHT,
        "Requests in flight on a replica through this gateway.",
        &["backend", "pool"],
    )
});
pub(crate) static BACKEND_REQUESTS_GAUGE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    int_gauge_vec(
        BACKEND_REQUESTS,
        "Tries sent to a replica since the gateway started (a counter, sampled).",
        &["backend", "pool"],
    )
});
pub(crate) static POOL_WEIGHT_GAUGE: LazyLock<IntGaugeVec> =
    LazyLock::new(|| int_gauge_vec(POOL_WEIGHT, "A pool's traffic weight.", &["pool"]));

fn class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

pub(crate) fn request(status: u16, answered: Option<&'static str>, took: Duration) {
    let code = class(status);
    REQUESTS_TOTAL
        .with_label_values(&[code, answered.unwrap_or("proxied")])
        .inc();
    DURATION_SECONDS
        .with_label_values(&[code])
        .observe(took.as_secs_f64());
}

pub(crate) fn retried() {
    RETRIES_TOTAL.inc();
}

pub(crate) fn ejected(backend: &str) {
    EJECTIONS_TOTAL.with_label_values(&[backend]).inc();
}
