//! The Kafka sink: an idempotent producer with `acks=all`, whose delivery
//! callbacks feed the acknowledgement window ([`super::acks`]).
//!
//! Every message carries its number as the delivery opaque; the producer's
//! polling thread marks it acknowledged (or the sink failed). No future or
//! channel per message.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use tributary_kafka::KafkaConfig;
use tributary_model::lsn::Lsn;

use super::acks::Acks;
use super::{Barrier, Sink};
use crate::{Error, Result};

/// Producer settings a user may tune through `[kafka.properties]`; these
/// are the defaults when they do not.
const TUNING: &[(&str, &str)] = &[
    // With the idempotent producer at its default of 5 requests in flight,
    // librdkafka spent about 35 µs of CPU per message against tansu (the
    // same with idempotence off: under 7), starving the broker and
    // PostgreSQL on a small machine; at 2 it stays cheap and still overlaps
    // one request with the broker's work on another. Ordering holds at any
    // value up to 5 with idempotence (librdkafka refuses more).
    ("max.in.flight.requests.per.connection", "2"),
    ("linger.ms", "5"),
    ("batch.num.messages", "10000"),
    // Bounded by count and size: a huge transaction streams through in
    // constant memory instead of queueing in the producer.
    ("queue.buffering.max.messages", "100000"),
    ("queue.buffering.max.kbytes", "65536"),
    ("message.timeout.ms", "60000"),
];

/// The reader's producer settings: [`tributary_kafka::client_config`] (the
/// brokers and the user's `[kafka.properties]`), tuning defaults where the
/// user set none, then what the sink's promise depends on, which no
/// property can weaken: idempotence, `acks=all` and the gapless guarantee.
/// Public so that `tributary bench cdc` measures the broker alone with
/// exactly these.
pub fn producer_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = tributary_kafka::client_config(config);
    for (key, value) in TUNING {
        if !config.properties.contains_key(*key) {
            c.set(*key, *value);
        }
    }
    c.set("enable.idempotence", "true")
        // A message that times out after later ones succeeded would leave
        // a gap that consumers' position-based dedup cannot see: fail hard
        // instead, so the reader restarts and replays from the slot.
        .set("enable.gapless.guarantee", "true")
        .set("acks", "all");
    c
}

/// Every how many messages one's delivery latency is measured.
const LATENCY_SAMPLE: u64 = 64;

/// What the delivery callbacks update, under one lock.
struct Deliveries {
    acks: Acks,
    /// Send times of sampled messages, by number, for the latency metric.
    samples: VecDeque<(u64, Instant)>,
}

/// Shared by the sending side and the producer's delivery callbacks.
struct Shared {
    deliveries: Mutex<Deliveries>,
    /// Set on the first failure: checked per message without the lock.
    failed: AtomicBool,
    /// `acks.durable()`, readable without the lock.
    durable: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Deliveries> {
        // The callbacks never panic while holding the lock; if one did, the
        // window is still consistent (every update is a single step).
        self.deliveries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish_durable(&self, d: &Deliveries) {
        self.durable.fetch_max(d.acks.durable().0, Ordering::SeqCst);
    }
}

/// The producer's delivery callbacks (on its polling thread).
struct Callbacks(Arc<Shared>);

impl ClientContext for Callbacks {}

impl ProducerContext for Callbacks {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        let seq = seq as u64;
        let mut d = self.0.lock();
        match result {
            Ok(_) => {
                if seq.is_multiple_of(LATENCY_SAMPLE)
                    && let Ok(at) = d.samples.binary_search_by_key(&seq, |(s, _)| *s)
                    && let Some((_, sent)) = d.samples.remove(at)
                {
                    crate::metrics::delivery_latency(sent.elapsed().as_secs_f64());
                }
                d.acks.acknowledged(seq);
                self.0.publish_durable(&d);
            }
            Err((e, _)) => {
                d.acks.fail(format!("delivery failed: {e}"));
                self.0.failed.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// Publishes events to Kafka ([`producer_config`]) and tracks which LSN is
/// durable.
pub struct KafkaSink {
    producer: ThreadedProducer<Callbacks>,
    shared: Arc<Shared>,
    /// Messages handed to the producer so far (the next one's number).
    sent: AtomicU64,
}

impl Sink for KafkaSink {
    /// Checks that the broker answers within 10 s and creates the topics
    /// that do not exist yet.
    async fn prepare(kafka: &KafkaConfig, topics: &[String]) -> Result<()> {
        tributary_kafka::check_broker(kafka, Duration::from_secs(10)).await?;
        tributary_kafka::ensure_topics(kafka, topics).await?;
        Ok(())
    }

    fn open(kafka: &KafkaConfig) -> Result<Self> {
        let shared = Arc::new(Shared {
            deliveries: Mutex::new(Deliveries {
                acks: Acks::new(Lsn::ZERO),
                samples: VecDeque::new(),
            }),
            failed: AtomicBool::new(false),
            durable: AtomicU64::new(Lsn::ZERO.0),
        });
        let producer = producer_config(kafka)
            .create_with_context(Callbacks(shared.clone()))
            .map_err(|source| Error::Kafka {
                context: "creating the producer".into(),
                source,
            })?;
        Ok(KafkaSink {
            producer,
            shared,
            sent: AtomicU64::new(0),
        })
    }

    /// Returns once the producer accepted the event. The producer's queue is
    /// bounded (by count and bytes): when it is full this waits.
    async fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<()> {
        self.check()?;
        let seq = self.sent.load(Ordering::Relaxed);
        if seq.is_multiple_of(LATENCY_SAMPLE) {
            self.shared.lock().samples.push_back((seq, Instant::now()));
        }
        let mut record = BaseRecord::with_opaque_to(topic, seq as usize)
            .key(key)
            .payload(payload);
        if !headers.is_empty() {
            let mut h = OwnedHeaders::new_with_capacity(headers.len());
            for (key, value) in headers {
                h = h.insert(Header {
                    key,
                    value: Some(*value),
                });
            }
            record = record.headers(h);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.sent.store(seq + 1, Ordering::Relaxed);
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    self.check()?;
                }
                Err((source, _)) => {
                    return Err(Error::Kafka {
                        context: format!("producing to {topic}"),
                        source,
                    });
                }
            }
        }
    }

    fn mark(&self, lsn: Lsn) -> Result<()> {
        self.check()?;
        let accepted = self.sent.load(Ordering::Relaxed);
        let mut d = self.shared.lock();
        d.acks.mark(accepted, lsn);
        self.shared.publish_durable(&d);
        Ok(())
    }

    fn barrier(&self) -> Result<Barrier> {
        self.check()?;
        let accepted = self.sent.load(Ordering::Relaxed);
        Ok(self.shared.lock().acks.barrier(accepted))
    }

    fn durable(&self) -> Lsn {
        Lsn(self.shared.durable.load(Ordering::SeqCst))
    }

    fn check(&self) -> Result<()> {
        if !self.shared.failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let d = self.shared.lock();
        Err(Error::Delivery(
            d.acks.failure().unwrap_or("delivery failed").to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_properties_cannot_weaken_the_producer_promise() {
        let mut kafka = KafkaConfig::local("127.0.0.1:9092");
        for (k, v) in [
            ("enable.idempotence", "false"),
            ("acks", "1"),
            ("enable.gapless.guarantee", "false"),
            ("linger.ms", "20"),
            ("security.protocol", "SASL_SSL"),
        ] {
            kafka.properties.insert(k.into(), v.into());
        }
        let c = producer_config(&kafka);
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("enable.gapless.guarantee"), Some("true"));
        // Tuning is the user's, and everything else passes through.
        assert_eq!(c.get("linger.ms"), Some("20"));
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        // Without properties, the reader's own tuning.
        let plain = producer_config(&KafkaConfig::local("b:9092"));
        assert_eq!(plain.get("linger.ms"), Some("5"));
        assert_eq!(
            plain.get("max.in.flight.requests.per.connection"),
            Some("2")
        );
    }
}
