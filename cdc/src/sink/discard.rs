//! The discard sink: every event is durable the moment it is accepted.

use std::sync::atomic::{AtomicU64, Ordering};

use tributary_kafka::KafkaConfig;
use tributary_model::lsn::Lsn;

use super::{Barrier, Sink};
use crate::Result;

/// Drops every event and reports it durable at once, counting what it
/// accepted. For tests, and for measuring the reader's own ceiling
/// (replication, decoding, JSON) without a broker (`tributary bench cdc`).
/// Never for capturing changes: the slot moves past changes nobody has.
#[derive(Debug, Default)]
pub struct DiscardSink {
    accepted: AtomicU64,
    bytes: AtomicU64,
    durable: AtomicU64,
}

impl DiscardSink {
    /// Events accepted (and dropped) so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Payload bytes accepted so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl Sink for DiscardSink {
    /// Nothing to prepare: no broker, no topics.
    async fn prepare(_: &KafkaConfig, _: &[String]) -> Result<()> {
        Ok(())
    }

    fn open(_: &KafkaConfig) -> Result<Self> {
        Ok(DiscardSink::default())
    }

    async fn send(&self, _: &str, _: &[u8], payload: &[u8], _: &[(&str, &[u8])]) -> Result<()> {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn mark(&self, lsn: Lsn) -> Result<()> {
        self.durable.fetch_max(lsn.0, Ordering::SeqCst);
        Ok(())
    }

    fn barrier(&self) -> Result<Barrier> {
        Ok(Barrier::ready())
    }

    fn durable(&self) -> Lsn {
        Lsn(self.durable.load(Ordering::SeqCst))
    }

    fn check(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn everything_is_durable_at_once_and_counted() {
        let sink = DiscardSink::open(&KafkaConfig::local("unused:9092")).unwrap();
        sink.send("t", b"k", b"12345", &[]).await.unwrap();
        sink.send("t", b"k", b"678", &[]).await.unwrap();
        sink.mark(Lsn(42)).unwrap();
        assert_eq!(sink.durable(), Lsn(42));
        assert_eq!((sink.accepted(), sink.bytes()), (2, 8));
        sink.barrier().unwrap().wait().await.unwrap();
        sink.wait_durable(Lsn(42), std::time::Duration::ZERO)
            .await
            .unwrap();
    }
}
