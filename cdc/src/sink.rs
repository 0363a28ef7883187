//! The Kafka sink: idempotent producer, `acks=all`, and the durable position.
//!
//! Promise: [`KafkaSink::durable`] only ever reports an LSN once the broker
//! has acknowledged (fully replicated, in order) every event of every
//! transaction up to it. The reader confirms the slot with that LSN and never
//! more, so a crash replays from there and loses nothing. Replays publish the
//! same events again with the same `event_id` (at-least-once into Kafka;
//! consumers deduplicate by position).
//!
//! How: every message carries its number; the producer's delivery callback
//! marks it acknowledged, and an LSN marked after message `n` becomes
//! durable once messages `0..n` all are (acknowledgements of different
//! partitions arrive in any order). No future or channel per message.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, FutureProducer, Producer, ProducerContext, ThreadedProducer,
};
use tokio::sync::oneshot;
use tributary_kafka::KafkaConfig;
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

/// The reader's producer settings: idempotent, `acks=all`, gapless, with a
/// bounded queue. Public so that `tributary bench cdc` measures the broker
/// alone with exactly these.
pub fn producer_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = client_config(config);
    c.set("enable.idempotence", "true")
        // A message that times out after later ones succeeded would leave
        // a gap that consumers' position-based dedup cannot see: fail hard
        // instead, so the reader restarts and replays from the slot.
        .set("enable.gapless.guarantee", "true")
        .set("acks", "all")
        // With the idempotent producer at its default of 5 requests in
        // flight, librdkafka spent about 35 µs of CPU per message against
        // tansu (the same with idempotence off: under 7), starving the
        // broker and PostgreSQL on a small machine; at 2 it stays cheap and
        // still overlaps one request with the broker's work on another.
        // Ordering holds at any value up to 5 with idempotence.
        .set("max.in.flight.requests.per.connection", "2")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        // Bounded by count and size: a huge transaction streams through
        // in constant memory instead of queueing in the producer.
        .set("queue.buffering.max.messages", "100000")
        .set("queue.buffering.max.kbytes", "65536")
        .set("message.timeout.ms", "60000");
    c
}

pub(crate) fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("socket.timeout.ms", "10000")
        .set("log_level", "3");
    c
}

/// Every how many messages one's delivery latency is measured.
const LATENCY_SAMPLE: u64 = 64;

/// Which acknowledgements have arrived, and what they make durable.
#[derive(Default)]
struct Acks {
    /// Every message numbered below this is acknowledged.
    base: u64,
    /// Acknowledged flags of the messages numbered `base`, `base + 1`, ….
    window: VecDeque<bool>,
    /// (messages sent before, LSN): the LSN is durable once `base` reaches
    /// the count.
    marks: VecDeque<(u64, Lsn)>,
    /// Signalled once `base` reaches the count; dropped on a failure.
    barriers: VecDeque<(u64, oneshot::Sender<()>)>,
    /// Send times of sampled messages, by number, for the latency metric.
    samples: VecDeque<(u64, Instant)>,
    /// The first failed delivery.
    failure: Option<String>,
}

/// Shared by the sending side and the producer's delivery callbacks.
struct Shared {
    acks: std::sync::Mutex<Acks>,
    /// Set with `acks.failure`: checked per message without the lock.
    failed: AtomicBool,
    durable: AtomicU64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Acks> {
        self.acks.lock().expect("acks lock")
    }

    fn acknowledged(&self, seq: u64) {
        let mut a = self.lock();
        if seq < a.base {
            return;
        }
        let i = (seq - a.base) as usize;
        if a.window.len() <= i {
            a.window.resize(i + 1, false);
        }
        a.window[i] = true;
        if seq.is_multiple_of(LATENCY_SAMPLE)
            && let Ok(at) = a.samples.binary_search_by_key(&seq, |(s, _)| *s)
            && let Some((_, sent)) = a.samples.remove(at)
        {
            crate::metrics::delivery_latency(sent.elapsed().as_secs_f64());
        }
        let before = a.base;
        while a.window.front() == Some(&true) {
            a.window.pop_front();
            a.base += 1;
        }
        if a.base != before {
            self.settle(&mut a);
        }
    }

    /// Moves the durable LSN and signals barriers up to `base`.
    fn settle(&self, a: &mut Acks) {
        while let Some(&(count, lsn)) = a.marks.front() {
            if count > a.base {
                break;
            }
            self.durable.fetch_max(lsn.0, Ordering::SeqCst);
            a.marks.pop_front();
        }
        while a
            .barriers
            .front()
            .is_some_and(|(count, _)| *count <= a.base)
        {
            if let Some((_, done)) = a.barriers.pop_front() {
                let _ = done.send(());
            }
        }
    }

    fn fail(&self, reason: String) {
        let mut a = self.lock();
        if a.failure.is_none() {
            a.failure = Some(reason);
        }
        // Nothing after a failure becomes durable: waiters see the failure.
        a.barriers.clear();
        a.marks.clear();
        self.failed.store(true, Ordering::SeqCst);
    }
}

/// The producer's delivery callbacks (on its polling thread): each message
/// carries its number as the opaque.
struct Deliveries(Arc<Shared>);

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        match result {
            Ok(_) => self.0.acknowledged(seq as u64),
            Err((e, _)) => self.0.fail(format!("delivery failed: {e}")),
        }
    }
}

enum Backend {
    Kafka(ThreadedProducer<Deliveries>),
    /// Benchmarks only: every event is "acknowledged" as it is sent.
    Discard,
}

/// Publishes events and tracks which LSN is durable.
pub(crate) struct KafkaSink {
    backend: Backend,
    shared: Arc<Shared>,
    /// Messages handed to the producer so far (the next one's number).
    sent: AtomicU64,
}

impl KafkaSink {
    pub(crate) fn new(config: &KafkaConfig, start: Lsn) -> Result<Self> {
        let shared = Self::shared(start);
        let producer: ThreadedProducer<Deliveries> = producer_config(config)
            .create_with_context(Deliveries(shared.clone()))
            .map_err(|source| Error::Kafka {
                context: "creating the producer".into(),
                source,
            })?;
        Ok(KafkaSink {
            backend: Backend::Kafka(producer),
            shared,
            sent: AtomicU64::new(0),
        })
    }

    /// A sink that drops every event and reports it durable at once: for
    /// measuring the reader without a broker (`tributary bench cdc`), never
    /// for capturing changes, since the slot moves past what nobody has.
    pub(crate) fn discard(start: Lsn) -> Self {
        KafkaSink {
            backend: Backend::Discard,
            shared: Self::shared(start),
            sent: AtomicU64::new(0),
        }
    }

    fn shared(start: Lsn) -> Arc<Shared> {
        Arc::new(Shared {
            acks: std::sync::Mutex::new(Acks::default()),
            failed: AtomicBool::new(false),
            durable: AtomicU64::new(start.0),
        })
    }

    /// Queues one event. Returns once the producer accepted it (not yet
    /// durable). The producer's queue is bounded (by count and bytes): when
    /// it is full this waits, so a slow broker slows the reader.
    pub(crate) async fn send(&self, topic: &str, key: &[u8], payload: &[u8]) -> Result<()> {
        self.check()?;
        let seq = self.sent.load(Ordering::Relaxed);
        let producer = match &self.backend {
            Backend::Kafka(p) => p,
            Backend::Discard => {
                self.sent.store(seq + 1, Ordering::Relaxed);
                self.shared.acknowledged(seq);
                return Ok(());
            }
        };
        if seq.is_multiple_of(LATENCY_SAMPLE) {
            self.shared.lock().samples.push_back((seq, Instant::now()));
        }
        let mut record = BaseRecord::with_opaque_to(topic, seq as usize)
            .key(key)
            .payload(payload);
        loop {
            match producer.send(record) {
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

    /// Marks that every event queued so far belongs to WAL before `lsn`.
    pub(crate) async fn mark(&self, lsn: Lsn) -> Result<()> {
        self.check()?;
        let count = self.sent.load(Ordering::Relaxed);
        let mut a = self.shared.lock();
        if a.base >= count {
            self.shared.durable.fetch_max(lsn.0, Ordering::SeqCst);
        } else {
            a.marks.push_back((count, lsn));
        }
        Ok(())
    }

    /// A receiver that completes once every event queued so far is durable
    /// (and is dropped unsignalled if a delivery fails first).
    pub(crate) async fn barrier(&self) -> Result<oneshot::Receiver<()>> {
        self.check()?;
        let (tx, rx) = oneshot::channel();
        let count = self.sent.load(Ordering::Relaxed);
        let mut a = self.shared.lock();
        if a.base >= count {
            let _ = tx.send(());
        } else {
            a.barriers.push_back((count, tx));
        }
        Ok(rx)
    }

    /// Deliveries only stop after one failed: report that failure, which
    /// is transient (the reader restarts and replays from the slot).
    pub(crate) fn tracker_stopped(&self) -> Error {
        match self.check() {
            Err(e) => e,
            Ok(()) => Error::Delivery("delivery tracker stopped".into()),
        }
    }

    /// The highest LSN through which everything is acknowledged by the broker.
    pub(crate) fn durable(&self) -> Lsn {
        Lsn(self.shared.durable.load(Ordering::SeqCst))
    }

    /// Fails if any delivery failed: the reader must stop and replay.
    pub(crate) fn check(&self) -> Result<()> {
        if !self.shared.failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let reason = self.shared.lock().failure.clone();
        Err(Error::Delivery(
            reason.unwrap_or_else(|| "delivery failed".into()),
        ))
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
