//! The engine's metrics, labelled by job (a handful of jobs per process).
//!
//! - `tributary_stream_watermark_lag_seconds{job}`: wall clock minus the
//!   job's watermark, computed at scrape time, so it grows while the
//!   watermark is stuck even if the job loop is stuck too.
//! - `tributary_stream_state_keys{job}`: keys held in keyed state.
//! - `tributary_stream_buffered_events{job}`: events waiting in the reorder
//!   buffer for the watermark.
//! - `tributary_stream_late_events_total{job, topic}`: see [`crate::late`].

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tributary_metrics::{
    Collector, Desc, GaugeVec, IntCounterVec, IntGaugeVec, MetricFamily, Opts, counter_vec,
    int_gauge_vec, register_collector,
};

use crate::EventTime;

pub const WATERMARK_LAG_SECONDS: &str = "tributary_stream_watermark_lag_seconds";
pub const STATE_KEYS: &str = "tributary_stream_state_keys";
pub const BUFFERED_EVENTS: &str = "tributary_stream_buffered_events";
pub const LATE_EVENTS_TOTAL: &str = "tributary_stream_late_events_total";
pub const LATE_RECORDS_DROPPED_TOTAL: &str = "tributary_stream_late_records_dropped_total";

static STATE_KEYS_GAUGE: LazyLock<IntGaugeVec> =
    LazyLock::new(|| int_gauge_vec(STATE_KEYS, "Keys held in keyed state.", &["job"]));

static BUFFERED_GAUGE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    int_gauge_vec(
        BUFFERED_EVENTS,
        "Events waiting in the reorder buffer for the watermark.",
        &["job"],
    )
});

pub(crate) static LATE_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        LATE_EVENTS_TOTAL,
        "Events beyond the allowed lateness, sent to the late path.",
        &["job", "topic"],
    )
});

pub(crate) static LATE_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        LATE_RECORDS_DROPPED_TOTAL,
        "Late-event records dropped because the in-memory list was full (the events were still counted).",
        &["job"],
    )
});

/// Watermarks per job, read at scrape time.
static WATERMARKS: LazyLock<Mutex<BTreeMap<String, EventTime>>> = LazyLock::new(|| {
    register_collector(WATERMARK_LAG_SECONDS, Box::new(WatermarkLag::new()));
    Mutex::default()
});

struct WatermarkLag {
    gauges: GaugeVec,
}

impl WatermarkLag {
    fn new() -> Self {
        let gauges = GaugeVec::new(
            Opts::new(
                WATERMARK_LAG_SECONDS,
                "Wall clock minus the job's event-time watermark.",
            ),
            &["job"],
        )
        .expect("a valid gauge");
        WatermarkLag { gauges }
    }
}

impl Collector for WatermarkLag {
    fn desc(&self) -> Vec<&Desc> {
        self.gauges.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = now_us();
        let marks = WATERMARKS.lock().expect("watermark metric lock").clone();
        for (job, w) in marks {
            let lag = (now - w).max(0) as f64 / 1e6;
            self.gauges.with_label_values(&[job.as_str()]).set(lag);
        }
        self.gauges.collect()
    }
}

/// Wall clock, µs since the Unix epoch.
pub fn now_us() -> EventTime {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Records `job`'s watermark for the lag gauge (nothing until it has one).
pub fn set_watermark(job: &str, watermark: Option<EventTime>) {
    if let Some(w) = watermark {
        WATERMARKS
            .lock()
            .expect("watermark metric lock")
            .insert(job.to_string(), w);
    }
}

pub fn set_state_keys(job: &str, keys: usize) {
    STATE_KEYS_GAUGE.with_label_values(&[job]).set(keys as i64);
}

pub fn set_buffered_events(job: &str, events: usize) {
    BUFFERED_GAUGE.with_label_values(&[job]).set(events as i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_render_with_the_job_label_and_lag_is_computed_at_scrape() {
        set_watermark("metrics-test", Some(now_us() - 5_000_000));
        set_state_keys("metrics-test", 42);
        set_buffered_events("metrics-test", 7);
        let text = tributary_metrics::render();
        assert!(
            text.contains(r#"tributary_stream_state_keys{job="metrics-test"} 42"#),
            "{text}"
        );
        assert!(text.contains(r#"tributary_stream_buffered_events{job="metrics-test"} 7"#));
        let lag: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(r#"tributary_stream_watermark_lag_seconds{job="metrics-test"} "#)
            })
            .expect("lag rendered")
            .parse()
            .unwrap();
        assert!((5.0..60.0).contains(&lag), "{lag}");
    }
}
