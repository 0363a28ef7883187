//! Exponential backoff for loops that retry what a retry can cure (a lost
//! connection, a broker restart, a lost commit race). Pure arithmetic: the
//! caller sleeps, so the same policy serves async loops and tests.
//!
//! ```
//! use std::time::Duration;
//! use tributary_model::backoff::Backoff;
//! let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
//! assert_eq!(b.next_delay(), Duration::from_millis(200));
//! assert_eq!(b.next_delay(), Duration::from_millis(400));
//! b.reset();
//! assert_eq!(b.next_delay(), Duration::from_millis(200));
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Delays that double from `initial` up to `max`, with optional jitter.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    jitter: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            next: initial,
            jitter: Duration::ZERO,
        }
    }

    /// The restart policy of tributary's long-running loops: 200 ms doubling
    /// to 5 s.
    pub fn restarts() -> Self {
        Backoff::new(Duration::from_millis(200), Duration::from_secs(5))
    }

    /// Adds up to `jitter` to every delay, so two processes retrying the same
    /// thing do not collide in lockstep.
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// The delay before the next attempt; doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d + self.jitter_now()
    }

    /// Back to the initial delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    fn jitter_now(&self) -> Duration {
        let cap = self.jitter.as_nanos() as u64;
        if cap == 0 {
            return Duration::ZERO;
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
        Duration::from_nanos(nanos % cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_jitter_stays_below_its_bound() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(150));
        let d: Vec<_> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, [50, 100, 150, 150]);
        let mut j = Backoff::new(Duration::from_millis(50), Duration::from_secs(5))
            .with_jitter(Duration::from_millis(50));
        for _ in 0..20 {
            let d = j.next_delay();
            j.reset();
            assert!(
                d >= Duration::from_millis(50) && d < Duration::from_millis(100),
                "{d:?}"
            );
        }
    }
}
