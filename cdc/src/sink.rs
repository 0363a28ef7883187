//! The Kafka sink: idempotent producer, `acks=all`, and the durable position.
//!
//! Promise: [`KafkaSink::durable`] only ever reports an LSN once the broker
//! has acknowledged (fully replicated, in order) every event of every
//! transaction up to it. The reader confirms the slot with that LSN and never
//! more, so a crash replays from there and loses nothing. Replays publish the
//! same events again with the same `event_id` (at-least-once into Kafka;
//! consumers deduplicate by position).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio::sync::{mpsc, oneshot};
use tributary_model::domain::KafkaConfig;
use tributary_model::lsn::Lsn;

use crate::{Error, Result};

/// Checks that the broker answers; the message says where we looked.
pub async fn check_broker(config: &KafkaConfig, timeout: Duration) -> Result<()> {
    let brokers = config.brokers.clone();
    let producer: FutureProducer =
        client_config(config)
            .create()
            .map_err(|source| Error::Kafka {
                context: format!("creating a client for {brokers}"),
                source,
            })?;
    tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(None, timeout)
            .map(|_| ())
            .map_err(|source| Error::Kafka {
                context: format!(
                    "cannot reach the Kafka broker at {brokers} within {timeout:?}; is it running?"
                ),
                source,
            })
    })
    .await
    .map_err(|e| Error::Internal(format!("metadata task: {e}")))?
}

/// Creates the topics that do not exist yet (topics are never auto-created).
pub async fn ensure_topics(config: &KafkaConfig, topics: &[String]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(config)
            .create()
            .map_err(|source| Error::Kafka {
                context: "creating an admin client".into(),
                source,
            })?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, config.partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(new.iter(), &opts)
        .await
        .map_err(|source| Error::Kafka {
            context: "creating topics".into(),
            source,
        })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::Kafka {
                    context: format!("creating topic {topic}"),
                    source: KafkaError::AdminOp(code),
                });
            }
        }
    }
    Ok(())
}

pub(crate) fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("socket.timeout.ms", "10000")
        .set("log_level", "3");
    c
}

enum Pending {
    /// A message in flight, with when it was handed to the producer.
    Delivery(DeliveryFuture, std::time::Instant),
    /// Everything queued before this marker is durable once it is reached.
    Through(Lsn),
    /// Signalled once everything queued before it is durable.
    Barrier(oneshot::Sender<()>),
}

/// Publishes events and tracks which LSN is durable.
pub(crate) struct KafkaSink {
    producer: FutureProducer,
    pending: mpsc::Sender<Pending>,
    durable: Arc<AtomicU64>,
    failure: Arc<std::sync::Mutex<Option<String>>>,
    tracker: tokio::task::JoinHandle<()>,
}

impl KafkaSink {
    pub(crate) fn new(config: &KafkaConfig, start: Lsn) -> Result<Self> {
        let producer: FutureProducer = client_config(config)
            .set("enable.idempotence", "true")
            // A message that times out after later ones succeeded would leave
            // a gap that consumers' position-based dedup cannot see: fail hard
            // instead, so the reader restarts and replays from the slot.
            .set("enable.gapless.guarantee", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            // Bounded by count and size: a huge transaction streams through
            // in constant memory instead of queueing in the producer.
            .set("queue.buffering.max.messages", "100000")
            .set("queue.buffering.max.kbytes", "65536")
            .set("message.timeout.ms", "60000")
            .create()
            .map_err(|source| Error::Kafka {
                context: "creating the producer".into(),
                source,
            })?;
        // Bounded: a slow broker slows the reader instead of filling memory.
        let (tx, mut rx) = mpsc::channel::<Pending>(100_000);
        let durable = Arc::new(AtomicU64::new(start.0));
        let failure = Arc::new(std::sync::Mutex::new(None));
        let (d, f) = (durable.clone(), failure.clone());
        let tracker = tokio::spawn(async move {
            let mut seen = 0u64;
            while let Some(p) = rx.recv().await {
                match p {
                    Pending::Delivery(fut, sent) => {
                        let outcome = match fut.await {
                            Ok(Ok(_)) => {
                                // Sampled: one lock per 16 messages is cheap.
                                seen += 1;
                                if seen % 16 == 1 {
                                    crate::metrics::delivery_latency(sent.elapsed().as_secs_f64());
                                }
                                continue;
                            }
                            Ok(Err((e, _))) => format!("delivery failed: {e}"),
                            Err(_) => "delivery cancelled".to_string(),
                        };
                        *f.lock().expect("failure lock") = Some(outcome);
                        return;
                    }
                    Pending::Through(lsn) => {
                        d.fetch_max(lsn.0, Ordering::SeqCst);
                    }
                    Pending::Barrier(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Ok(KafkaSink {
            producer,
            pending: tx,
            durable,
            failure,
            tracker,
        })
    }

    /// Queues one event. Returns once the producer accepted it (not yet durable).
    pub(crate) async fn send(&self, topic: &str, key: &[u8], payload: &[u8]) -> Result<()> {
        self.check()?;
        let mut record = FutureRecord::to(topic).key(key).payload(payload);
        loop {
            match self.producer.send_result(record) {
                Ok(fut) => {
                    let sent = std::time::Instant::now();
                    if self
                        .pending
                        .send(Pending::Delivery(fut, sent))
                        .await
                        .is_err()
                    {
                        return Err(self.tracker_stopped());
                    }
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
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

    /// Marks that every event queued so far belongs to WAL before `lsn`.
    pub(crate) async fn mark(&self, lsn: Lsn) -> Result<()> {
        if self.pending.send(Pending::Through(lsn)).await.is_err() {
            return Err(self.tracker_stopped());
        }
        Ok(())
    }

    /// A receiver that completes once every event queued so far is durable
    /// (and is dropped unsignalled if a delivery fails first).
    pub(crate) async fn barrier(&self) -> Result<oneshot::Receiver<()>> {
        let (tx, rx) = oneshot::channel();
        if self.pending.send(Pending::Barrier(tx)).await.is_err() {
            return Err(self.tracker_stopped());
        }
        Ok(rx)
    }

    /// The tracker only stops after a failed delivery: report that failure,
    /// which is transient (the reader restarts and replays from the slot).
    pub(crate) fn tracker_stopped(&self) -> Error {
        match self.check() {
            Err(e) => e,
            Ok(()) => Error::Delivery("delivery tracker stopped".into()),
        }
    }

    /// The highest LSN through which everything is acknowledged by the broker.
    pub(crate) fn durable(&self) -> Lsn {
        Lsn(self.durable.load(Ordering::SeqCst))
    }

    /// Fails if any delivery failed: the reader must stop and replay.
    pub(crate) fn check(&self) -> Result<()> {
        match self.failure.lock().expect("failure lock").as_ref() {
            Some(msg) => Err(Error::Delivery(msg.clone())),
            None => Ok(()),
        }
    }

    /// Waits until everything queued so far is durable (or fails).
    pub(crate) async fn wait_durable(&self, lsn: Lsn, timeout: Duration) -> Result<()> {
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

impl Drop for KafkaSink {
    fn drop(&mut self) {
        self.tracker.abort();
    }
}
