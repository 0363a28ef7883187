//! The detector's memory per customer, in process: one million (or
//! `customers`) distinct customers, each a customer row, an order and a
//! payment, fed to [`Detector`] in event-time order with the watermark
//! following (so hopping windows and sessions close as they would in the
//! job), then the peak RSS growth of this process and the size of the
//! state as the job would checkpoint it (JSON).

use std::io::Write;
use std::time::Instant;

use serde::Serialize;
use tributary_live::fraud::detector::Detector;
use tributary_live::fraud::input::{Fact, Input};
use tributary_live::fraud::rules::Rules;

use crate::process::{own_status_kib, reset_own_peak_rss};
use crate::{Error, Result};

#[derive(Clone, Debug, Serialize)]
pub struct Memory {
    pub customers: usize,
    /// Customers with a profile at the end (all of them: the profile TTL is
    /// 90 days of event time).
    pub profiles: usize,
    /// Windows and sessions still open at the end.
    pub open_windows: usize,
    pub feed_secs: f64,
    /// `VmHWM` after the feed minus `VmRSS` before it.
    pub peak_rss_growth_kib: Option<u64>,
    pub rss_bytes_per_customer: Option<f64>,
    /// Whether the peak could be reset first (else the growth is a lower
    /// bound taken from a peak that may predate the feed).
    pub peak_reset: bool,
    pub checkpoint_bytes: u64,
    pub checkpoint_bytes_per_customer: f64,
    pub alerts: usize,
}

/// Counts the bytes written to it.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Feeds `customers` customers to a detector with the built-in rules.
pub fn measure(customers: usize) -> Result<Memory> {
    const T0: i64 = 1_767_225_600_000_000; // 2026-01-01
    const STEP_US: i64 = 1_000; // a thousand customers per second of event time
    let peak_reset = reset_own_peak_rss();
    let before = own_status_kib("VmRSS");
    let started = Instant::now();
    let mut d = Detector::new(Rules::defaults(), 2_000_000)
        .map_err(|e| Error::Internal(format!("a detector with the built-in rules: {e}")))?;
    let mut alerts = 0;
    for i in 0..customers as i64 {
        let cid = 1_000_000_000 + i;
        let t = T0 + i * STEP_US;
        let input = |n: i64, id: &str, fact: Fact| Input {
            customer_id: cid,
            t: t + n,
            commit_us: t + n,
            id: format!("{i:09}-{id}"),
            fact,
        };
        let facts = [
            input(
                0,
                "c",
                Fact::Customer {
                    created_at_us: Some(T0 - 30 * 86_400_000_000),
                    country: Some("NL".into()),
                },
            ),
            input(
                1,
                "o",
                Fact::Order {
                    order_id: i,
                    total_cents: 2_500 + i % 5_000,
                    device: Some(format!("dev-{}", i % 7)),
                    billing: Some("NL".into()),
                    shipping: Some("NL".into()),
                },
            ),
            input(
                2,
                "p",
                Fact::Payment {
                    payment_id: i,
                    order_id: i,
                    amount_cents: 2_500 + i % 5_000,
                    failed: false,
                    card: Some(format!("card-{i}")),
                },
            ),
        ];
        for f in &facts {
            alerts += d.apply(f, t).len();
        }
        if i % 1_000 == 999 {
            d.advance(t);
        }
    }
    let feed_secs = started.elapsed().as_secs_f64();
    let peak = own_status_kib("VmHWM");
    let growth = match (before, peak) {
        (Some(b), Some(p)) => Some(p.saturating_sub(b)),
        _ => None,
    };
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, &d)
        .map_err(|e| Error::Internal(format!("serialising the detector: {e}")))?;
    let n = customers.max(1) as f64;
    Ok(Memory {
        customers,
        profiles: d.customers(),
        open_windows: d.open_windows(),
        feed_secs,
        peak_rss_growth_kib: growth,
        rss_bytes_per_customer: growth.map(|g| g as f64 * 1024.0 / n),
        peak_reset,
        checkpoint_bytes: counter.0,
        checkpoint_bytes_per_customer: counter.0 as f64 / n,
        alerts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_customer_stays_in_state_and_none_alerts() {
        let m = measure(3_000).unwrap();
        assert_eq!((m.customers, m.profiles, m.alerts), (3_000, 3_000, 0));
        assert!(m.checkpoint_bytes_per_customer > 50.0, "{m:?}");
        // Two velocity windows and a card session per customer at most.
        assert!(m.open_windows > 0 && m.open_windows <= 3 * 3_000, "{m:?}");
    }
}
