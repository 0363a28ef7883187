//! Where the reader's events go, and when they count as delivered: the
//! [`Sink`] seam.
//!
//! # The promise
//!
//! An event is *accepted* when [`Sink::send`] returns: the sink has it
//! queued, and nothing more is promised. It is *durable* once the sink will
//! never lose it: for Kafka, the broker acknowledged it fully replicated
//! (`acks=all`) and in order (idempotent producer: no duplicates or
//! reordering within a partition, and no gaps after a failed retry).
//!
//! The reader tells the sink where events stand in the WAL with
//! [`Sink::mark`]: every event accepted so far belongs to WAL before that
//! LSN. [`Sink::durable`] only ever reports an LSN once every event of every
//! transaction up to it is durable, whatever the order in which the
//! acknowledgements arrive. The reader confirms its replication slot with
//! that LSN and never more, so a crash at any moment replays from the slot
//! and loses nothing; replays publish the same events again with the same
//! `event_id` (at-least-once; consumers deduplicate by position).
//!
//! A failed delivery is never skipped: from then on [`Sink::check`] (and
//! every other call) fails, nothing becomes durable any more, and the reader
//! restarts and replays from the slot.
//!
//! # Implementations
//!
//! - [`KafkaSink`]: the product's sink (`tributary cdc run`).
//! - [`DiscardSink`]: drops every event and reports it durable at once, for
//!   tests and for measuring the reader without a broker (`tributary bench
//!   cdc`). Never for capturing changes: the slot moves past what nobody has.
//!
//! A reader runs with either through [`run_with`](crate::run_with):
//!
//! ```no_run
//! # async fn f(cdc: tributary_cdc::CdcConfig, kafka: tributary_kafka::KafkaConfig,
//! #            sources: Vec<tributary_cdc::SourceDb>) -> tributary_cdc::Result<()> {
//! use tributary_cdc::sink::DiscardSink;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! tributary_cdc::run_with::<DiscardSink>(cdc, kafka, sources, shutdown).await
//! # }
//! ```

pub(crate) mod acks;
mod discard;
mod kafka;

use std::future::Future;
use std::time::Duration;

use tokio::sync::oneshot;
use tributary_kafka::KafkaConfig;
use tributary_model::lsn::Lsn;

use crate::{Error, Result};

pub use discard::DiscardSink;
pub use kafka::{KafkaSink, producer_config};

/// A destination for change events that tracks which of them are durable.
/// See the [module docs](self) for the promise every implementation keeps.
///
/// One sink serves one streaming session of one source database: it starts
/// with nothing durable and is dropped when the session ends. Calls come
/// from that session's task, one at a time; `durable` and `check` may be
/// called at any moment.
pub trait Sink: Send + Sync + Sized + 'static {
    /// Makes ready what every session will need, once per `run` (for Kafka:
    /// the broker answers, and `topics` exist).
    fn prepare(kafka: &KafkaConfig, topics: &[String]) -> impl Future<Output = Result<()>> + Send;

    /// A sink for one session, with nothing accepted and nothing durable.
    fn open(kafka: &KafkaConfig) -> Result<Self>;

    /// Accepts one event for `topic` under `key`, with `headers` (Kafka
    /// record headers: a traced transaction's context). Returns once the
    /// event is queued (accepted, not durable). A sink's queue is bounded:
    /// when it is full this waits, so a slow destination slows the reader.
    fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) -> impl Future<Output = Result<()>> + Send;

    /// Every event accepted so far belongs to WAL before `lsn`: once they are
    /// all durable, so is `lsn`.
    fn mark(&self, lsn: Lsn) -> Result<()>;

    /// A barrier that completes once every event accepted so far is durable
    /// (or fails when a delivery fails first). Taking it does not wait.
    fn barrier(&self) -> Result<Barrier>;

    /// The highest marked LSN through which every event is durable.
    fn durable(&self) -> Lsn;

    /// Fails once any delivery failed: the reader must stop and replay.
    fn check(&self) -> Result<()>;

    /// Waits until `lsn` is durable; fails on a failed delivery or after
    /// `timeout`.
    fn wait_durable(&self, lsn: Lsn, timeout: Duration) -> impl Future<Output = Result<()>> + Send {
        async move {
            let deadline = tokio::time::Instant::now() + timeout;
            while self.durable() < lsn {
                self.check()?;
                if tokio::time::Instant::now() > deadline {
                    return Err(Error::Delivery(format!(
                        "events through {lsn} not acknowledged within {timeout:?}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.check()
        }
    }
}

/// Completes once the events accepted before it was taken are durable
/// ([`Sink::barrier`]).
#[derive(Debug)]
pub struct Barrier(BarrierState);

#[derive(Debug)]
enum BarrierState {
    Ready,
    Failed(String),
    Pending(oneshot::Receiver<Result<(), String>>),
}

/// The sink's side of a pending [`Barrier`].
#[derive(Debug)]
pub struct BarrierSignal(oneshot::Sender<Result<(), String>>);

impl Barrier {
    /// A barrier that is already passed: everything was durable.
    pub fn ready() -> Barrier {
        Barrier(BarrierState::Ready)
    }

    /// A barrier that already failed.
    pub fn failed(reason: &str) -> Barrier {
        Barrier(BarrierState::Failed(reason.to_string()))
    }

    /// A barrier the sink passes (or fails) later through the signal.
    pub fn pending() -> (BarrierSignal, Barrier) {
        let (tx, rx) = oneshot::channel();
        (BarrierSignal(tx), Barrier(BarrierState::Pending(rx)))
    }

    /// Waits for the barrier. A sink dropped before it signalled counts as
    /// a failed delivery (transient: the reader replays from the slot).
    pub async fn wait(self) -> Result<()> {
        match self.0 {
            BarrierState::Ready => Ok(()),
            BarrierState::Failed(reason) => Err(Error::Delivery(reason)),
            BarrierState::Pending(rx) => match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(reason)) => Err(Error::Delivery(reason)),
                Err(_) => Err(Error::Delivery("delivery tracker stopped".into())),
            },
        }
    }
}

impl BarrierSignal {
    /// Everything before the barrier is durable.
    pub fn durable(self) {
        let _ = self.0.send(Ok(()));
    }

    /// A delivery failed before everything before the barrier was durable.
    pub fn failed(self, reason: &str) {
        let _ = self.0.send(Err(reason.to_string()));
    }
}
