//! Metrics of the live jobs (`tributary_live_*`), in the process's default
//! registry through [`tributary_metrics`]. The engine's own gauges
//! (`tributary_stream_*`: watermark lag, buffered events, late events) sit
//! beside them. Labels: `job` (`fraud`, `activity`), `topic`, `rule`,
//! `sink`, `result`: small closed sets.

use std::sync::LazyLock;
use std::time::Duration;

use tributary_metrics::{
    Histogram, HistogramVec, IntCounterVec, IntGaugeVec, counter_vec, histogram_vec, int_gauge_vec,
};
use tributary_stream::EventTime;

pub const BAD_INPUT_TOTAL: &str = "tributary_live_bad_input_total";
pub const WATERMARK_SECONDS: &str = "tributary_live_watermark_timestamp_seconds";
pub const CHECKPOINT_SECONDS: &str = "tributary_live_checkpoint_seconds";
pub const ALERTS_TOTAL: &str = "tributary_live_fraud_alerts_total";
pub const ALERT_LATENCY_SECONDS: &str = "tributary_live_fraud_alert_latency_seconds";
pub const SINK_FAILURES_TOTAL: &str = "tributary_live_sink_failures_total";
pub const RULES_RELOADS_TOTAL: &str = "tributary_live_fraud_rules_reloads_total";

/// Seconds from source commit to alert: fine around the 1 s goal.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0, 30.0,
];

static BAD_INPUT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        BAD_INPUT_TOTAL,
        "Records a live job could not read and skipped.",
        &["job", "topic"],
    )
});
static WATERMARK: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    int_gauge_vec(
        WATERMARK_SECONDS,
        "A live job's event-time watermark (seconds since the epoch).",
        &["job"],
    )
});
static CHECKPOINT: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        CHECKPOINT_SECONDS,
        "Time to save a checkpoint and commit its Delta output.",
        &["job"],
        &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
    )
});
pub(crate) static ALERTS: LazyLock<IntCounterVec> =
    LazyLock::new(|| counter_vec(ALERTS_TOTAL, "Fraud alerts raised, by rule.", &["rule"]));
pub(crate) static ALERT_LATENCY: LazyLock<Histogram> = LazyLock::new(|| {
    tributary_metrics::histogram(
        ALERT_LATENCY_SECONDS,
        "Seconds from the source commit of the event that tripped a rule to the alert.",
        &LATENCY_BUCKETS,
    )
});
pub(crate) static SINK_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        SINK_FAILURES_TOTAL,
        "Deliveries to a fast sink that failed (retried or given up).",
        &["sink"],
    )
});
pub(crate) static RULES_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        RULES_RELOADS_TOTAL,
        "Reloads of the fraud rules file, by result (applied, refused).",
        &["result"],
    )
});

pub(crate) fn bad_input(job: &str, topic: &str) {
    BAD_INPUT.with_label_values(&[job, topic]).inc();
}

pub(crate) fn progress(job: &str, watermark: EventTime) {
    WATERMARK
        .with_label_values(&[job])
        .set(watermark.div_euclid(1_000_000));
}

/// The job's event-time watermark in this process, whole seconds since the
/// epoch (0 before its first).
pub fn watermark_seconds(job: &str) -> i64 {
    WATERMARK.with_label_values(&[job]).get()
}

pub(crate) fn checkpoint(job: &str, took: Duration) {
    CHECKPOINT
        .with_label_values(&[job])
        .observe(took.as_secs_f64());
}
