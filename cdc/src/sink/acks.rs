//! The acknowledgement window: which messages the broker has acknowledged,
//! and which LSN that makes durable.
//!
//! Messages are numbered in the order they are accepted (0, 1, 2, …).
//! Acknowledgements arrive in any order (each partition acknowledges its
//! own messages, in order within the partition), so the window keeps a flag
//! per message from the first unacknowledged one (`base`) on. An LSN marked
//! after message `n - 1` was accepted becomes durable once messages
//! `0..n` all are: never before, whatever the order of the acknowledgements.
//! After a failed delivery nothing becomes durable any more: the reader
//! stops and replays from the slot.
//!
//! Pure bookkeeping without I/O or locks: the Kafka sink holds it behind a
//! mutex shared with the producer's delivery callbacks.

use std::collections::VecDeque;

use tributary_model::lsn::Lsn;

use super::{Barrier, BarrierSignal};

/// Acknowledged messages and the durable position they give.
#[derive(Debug)]
pub(crate) struct Acks {
    /// Every message numbered below this is acknowledged.
    base: u64,
    /// Acknowledged flags of the messages numbered `base`, `base + 1`, ….
    window: VecDeque<bool>,
    /// (messages accepted before, LSN): the LSN is durable once `base`
    /// reaches the count. Counts and LSNs rise along the queue.
    marks: VecDeque<(u64, Lsn)>,
    /// Signalled once `base` reaches the count; failed on a failure.
    barriers: VecDeque<(u64, BarrierSignal)>,
    durable: Lsn,
    /// The first failed delivery.
    failure: Option<String>,
}

impl Acks {
    /// Nothing acknowledged yet; `start` counts as durable.
    pub(crate) fn new(start: Lsn) -> Acks {
        Acks {
            base: 0,
            window: VecDeque::new(),
            marks: VecDeque::new(),
            barriers: VecDeque::new(),
            durable: start,
            failure: None,
        }
    }

    /// The highest LSN through which every marked message is acknowledged.
    pub(crate) fn durable(&self) -> Lsn {
        self.durable
    }

    /// Messages `0..n` are all acknowledged: this is `n`.
    #[cfg(test)]
    pub(crate) fn acknowledged_below(&self) -> u64 {
        self.base
    }

    /// Why delivery failed, once it did.
    pub(crate) fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// The broker acknowledged message `seq`.
    pub(crate) fn acknowledged(&mut self, seq: u64) {
        if seq < self.base || self.failure.is_some() {
            return;
        }
        let i = (seq - self.base) as usize;
        if self.window.len() <= i {
            self.window.resize(i + 1, false);
        }
        self.window[i] = true;
        let before = self.base;
        while self.window.front() == Some(&true) {
            self.window.pop_front();
            self.base += 1;
        }
        if self.base != before {
            self.settle();
        }
    }

    /// Every message numbered below `accepted` belongs to WAL before `lsn`.
    pub(crate) fn mark(&mut self, accepted: u64, lsn: Lsn) {
        if self.failure.is_some() {
            return;
        }
        if self.base >= accepted {
            self.durable = self.durable.max(lsn);
        } else {
            self.marks.push_back((accepted, lsn));
        }
    }

    /// Completes once every message numbered below `accepted` is
    /// acknowledged; fails if a delivery fails first.
    pub(crate) fn barrier(&mut self, accepted: u64) -> Barrier {
        if let Some(reason) = &self.failure {
            return Barrier::failed(reason);
        }
        if self.base >= accepted {
            return Barrier::ready();
        }
        let (signal, barrier) = Barrier::pending();
        self.barriers.push_back((accepted, signal));
        barrier
    }

    /// A delivery failed: keep the first reason, and fail every waiter.
    pub(crate) fn fail(&mut self, reason: String) {
        if self.failure.is_none() {
            self.failure = Some(reason);
        }
        let reason = self.failure.as_deref().unwrap_or("delivery failed");
        self.marks.clear();
        for (_, signal) in self.barriers.drain(..) {
            signal.failed(reason);
        }
    }

    /// Moves the durable LSN and signals the barriers up to `base`.
    fn settle(&mut self) {
        while let Some(&(count, lsn)) = self.marks.front() {
            if count > self.base {
                break;
            }
            self.durable = self.durable.max(lsn);
            self.marks.pop_front();
        }
        while self
            .barriers
            .front()
            .is_some_and(|(count, _)| *count <= self.base)
        {
            if let Some((_, signal)) = self.barriers.pop_front() {
                signal.durable();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_acks_make_an_lsn_durable_only_once_all_before_it_are() {
        let mut a = Acks::new(Lsn(10));
        // Messages 0..3 belong to a commit ending at 100, 3..5 to one at 200.
        a.mark(3, Lsn(100));
        a.mark(5, Lsn(200));
        // Partitions acknowledge out of order.
        a.acknowledged(2);
        a.acknowledged(4);
        assert_eq!(a.durable(), Lsn(10));
        a.acknowledged(1);
        assert_eq!(a.durable(), Lsn(10), "message 0 is not acknowledged yet");
        a.acknowledged(0);
        assert_eq!(a.durable(), Lsn(100));
        assert_eq!(a.acknowledged_below(), 3);
        a.acknowledged(3);
        assert_eq!(a.durable(), Lsn(200));
        assert_eq!(a.acknowledged_below(), 5);
    }

    #[test]
    fn an_lsn_is_not_durable_while_an_earlier_message_is_unacked() {
        let mut a = Acks::new(Lsn::ZERO);
        a.mark(1, Lsn(50));
        a.mark(2, Lsn(60));
        a.mark(3, Lsn(70));
        // Everything after the first message is acknowledged, many times over.
        for _ in 0..3 {
            a.acknowledged(1);
            a.acknowledged(2);
        }
        assert_eq!(a.durable(), Lsn::ZERO);
        a.acknowledged(0);
        assert_eq!(a.durable(), Lsn(70));
        // A late duplicate acknowledgement changes nothing.
        a.acknowledged(0);
        assert_eq!(a.durable(), Lsn(70));
    }

    #[test]
    fn each_lsn_waits_for_exactly_the_messages_before_its_mark() {
        let mut a = Acks::new(Lsn::ZERO);
        a.mark(1, Lsn(10));
        a.mark(2, Lsn(20));
        a.mark(3, Lsn(30));
        for (seq, durable) in [(0, 10), (1, 20), (2, 30)] {
            a.acknowledged(seq);
            assert_eq!(a.durable(), Lsn(durable), "after message {seq}");
        }
    }

    #[test]
    fn a_mark_with_everything_acknowledged_is_durable_at_once() {
        let mut a = Acks::new(Lsn::ZERO);
        a.mark(0, Lsn(5));
        assert_eq!(a.durable(), Lsn(5));
        a.acknowledged(0);
        a.mark(1, Lsn(9));
        assert_eq!(a.durable(), Lsn(9));
        // Durable never moves back.
        a.mark(1, Lsn(7));
        assert_eq!(a.durable(), Lsn(9));
    }

    #[test]
    fn a_failed_delivery_never_advances_durable() {
        let mut a = Acks::new(Lsn::ZERO);
        a.mark(1, Lsn(100));
        a.mark(2, Lsn(200));
        a.acknowledged(0);
        assert_eq!(a.durable(), Lsn(100));
        a.fail("delivery failed: message timed out".into());
        a.fail("a later failure".into());
        assert_eq!(a.failure(), Some("delivery failed: message timed out"));
        // Acknowledgements and marks after the failure move nothing.
        a.acknowledged(1);
        a.mark(2, Lsn(300));
        assert_eq!(a.durable(), Lsn(100));
    }

    #[tokio::test]
    async fn barriers_complete_once_acknowledged_and_fail_on_a_failure() {
        let mut a = Acks::new(Lsn::ZERO);
        assert!(a.barrier(0).wait().await.is_ok());
        let first = a.barrier(2);
        let second = a.barrier(3);
        a.acknowledged(1);
        a.acknowledged(0);
        first.wait().await.unwrap();
        a.fail("delivery failed: broker gone".into());
        let err = second.wait().await.unwrap_err();
        assert!(err.to_string().contains("broker gone"), "{err}");
        let err = a.barrier(3).wait().await.unwrap_err();
        assert!(err.to_string().contains("broker gone"), "{err}");
    }
}
