//! Metrics of the scheduler (`tributary_workflows_*`), in the process's
//! default registry. Labels: `job` (the job files' names) and `state` (a
//! run's end state): small closed sets.

use std::sync::LazyLock;

use tributary_metrics::{Histogram, HistogramVec, IntCounterVec, IntGaugeVec};

pub const RUNS_TOTAL: &str = "tributary_workflows_runs_total";
pub const ATTEMPT_SECONDS: &str = "tributary_workflows_attempt_seconds";
pub const SCHEDULE_DELAY_SECONDS: &str = "tributary_workflows_schedule_delay_seconds";
pub const LEADER: &str = "tributary_workflows_leader";

static RUNS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    tributary_metrics::counter_vec(
        RUNS_TOTAL,
        "Attempts ended, by job and the state they left their run in.",
        &["job", "state"],
    )
});
static ATTEMPT: LazyLock<HistogramVec> = LazyLock::new(|| {
    tributary_metrics::histogram_vec(
        ATTEMPT_SECONDS,
        "Duration of an attempt.",
        &["job"],
        &[0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0],
    )
});
static DELAY: LazyLock<Histogram> = LazyLock::new(|| {
    tributary_metrics::histogram(
        SCHEDULE_DELAY_SECONDS,
        "Seconds from a run's due time to the start of its first attempt.",
        &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 60.0],
    )
});
static LEADING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    tributary_metrics::int_gauge_vec(LEADER, "1 while this scheduler leads.", &["owner"])
});

pub(crate) fn ended(job: &str, state: &str, seconds: f64) {
    RUNS.with_label_values(&[job, state]).inc();
    ATTEMPT.with_label_values(&[job]).observe(seconds);
}

pub(crate) fn started(delay_seconds: f64) {
    DELAY.observe(delay_seconds);
}

pub(crate) fn leading(owner: &str, yes: bool) {
    LEADING.with_label_values(&[owner]).set(i64::from(yes));
}
