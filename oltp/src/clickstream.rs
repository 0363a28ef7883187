//! The order service's clickstream producer: product views and add-to-carts
//! go straight to `<prefix>.events.clickstream`
//! ([`tributary_model::clickstream`]), keyed by customer id.
//!
//! Promises:
//! - Best effort, never blocking. [`Clickstream::publish`] hands the event
//!   to the producer's bounded queue and returns; the request answers 202
//!   without waiting for the broker. A click that cannot be delivered (queue
//!   full, broker down past `message.timeout.ms`, any other error) is
//!   counted in [`DROPPED_TOTAL`] by reason and lost; a delivered one in
//!   [`SENT_TOTAL`]. Orders never wait on it: they do not use Kafka at all
//!   (their business event is the outbox row, carried by CDC).
//! - The topic is created at startup; when the broker does not answer then,
//!   a background task keeps trying, and clicks meanwhile count as dropped.

use std::sync::LazyLock;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tokio_util::sync::CancellationToken;
use tributary_kafka::KafkaConfig;
use tributary_metrics::otlp::now_us;
use tributary_metrics::{IntCounter, IntCounterVec};
use tributary_model::backoff::Backoff;
use tributary_model::clickstream::{ClickEvent, ClickKind, clickstream_topic};

use crate::error::{Error, Result};

/// Counter of click events the broker acknowledged.
pub const SENT_TOTAL: &str = "tributary_oltp_clickstream_sent_total";
/// Counter of click events lost, label `reason`: `queue_full` (the
/// producer's queue was full when the request came), `timeout` (not
/// delivered within `message.timeout.ms`, e.g. broker down), `error`.
pub const DROPPED_TOTAL: &str = "tributary_oltp_clickstream_dropped_total";

static SENT: LazyLock<IntCounter> = LazyLock::new(|| {
    tributary_metrics::counter(SENT_TOTAL, "Click events the broker acknowledged.")
});

static DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    tributary_metrics::counter_vec(
        DROPPED_TOTAL,
        "Click events lost (best effort), by reason.",
        &["reason"],
    )
});

/// Producer settings a user may tune through `[kafka.properties]`; these
/// are the defaults when they do not. Short timeout: a click older than
/// this is of little use and the queue must not hold it.
const TUNING: &[(&str, &str)] = &[
    ("linger.ms", "5"),
    ("queue.buffering.max.messages", "100000"),
    ("queue.buffering.max.kbytes", "32768"),
    ("message.timeout.ms", "10000"),
    ("acks", "1"),
];

/// How long startup waits for the topic before going on without it.
const TOPIC_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a click was dropped, as the metric label.
fn reason(e: &KafkaError) -> &'static str {
    match e {
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => "queue_full",
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut) => "timeout",
        _ => "error",
    }
}

fn dropped(reason: &str) {
    DROPPED.with_label_values(&[reason]).inc();
}

/// Counts deliveries on the producer's polling thread.
struct Counting;

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => SENT.inc(),
            Err((e, _)) => {
                tracing::debug!(error = %e, "click event not delivered");
                dropped(reason(e));
            }
        }
    }
}

fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = tributary_kafka::client_config(kafka);
    for (key, value) in TUNING {
        if !kafka.properties.contains_key(*key) {
            c.set(*key, *value);
        }
    }
    c
}

/// The producer and its topic.
pub(crate) struct Clickstream {
    producer: ThreadedProducer<Counting>,
    topic: String,
    kafka: KafkaConfig,
    /// Whether the topic was confirmed at startup.
    topic_ready: bool,
}

impl Clickstream {
    /// Creates the producer and the topic. A broker that does not answer is
    /// not an error (orders do not need it): the topic is then created in
    /// the background by [`Clickstream::ensure_topic_until`].
    pub(crate) async fn open(kafka: &KafkaConfig) -> Result<Clickstream> {
        let producer: ThreadedProducer<Counting> = producer_config(kafka)
            .create_with_context(Counting)
            .map_err(|source| Error::Kafka {
                context: "creating the clickstream producer".into(),
                source,
            })?;
        let topic = clickstream_topic(&kafka.topic_prefix);
        let topics = [topic.clone()];
        let topic_ready = match tokio::time::timeout(
            TOPIC_TIMEOUT,
            tributary_kafka::ensure_topics(kafka, &topics),
        )
        .await
        {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::warn!(%topic, %error, "cannot create the clickstream topic yet; retrying in the background");
                false
            }
            Err(_) => {
                tracing::warn!(%topic, timeout = ?TOPIC_TIMEOUT, "broker did not answer; creating the clickstream topic in the background");
                false
            }
        };
        // Registered at startup so dashboards see zeros, not absence.
        LazyLock::force(&SENT);
        for r in ["queue_full", "timeout", "error"] {
            DROPPED.with_label_values(&[r]);
        }
        tracing::info!(%topic, brokers = %kafka.brokers, "clickstream producer ready");
        Ok(Clickstream {
            producer,
            topic,
            kafka: kafka.clone(),
            topic_ready,
        })
    }

    /// Keeps trying to create the topic until it exists or `shutdown`; a
    /// no-op when startup already made it.
    pub(crate) async fn ensure_topic_until(&self, shutdown: CancellationToken) {
        if self.topic_ready {
            return;
        }
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        let topics = [self.topic.clone()];
        loop {
            match tributary_kafka::ensure_topics(&self.kafka, &topics).await {
                Ok(()) => {
                    tracing::info!(topic = %self.topic, "clickstream topic ready");
                    return;
                }
                Err(error) => tracing::debug!(%error, "clickstream topic still not created"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Hands one click to the producer and returns at once; a click the
    /// queue cannot take is counted as dropped. Returns the event.
    pub(crate) fn publish(
        &self,
        kind: ClickKind,
        customer_id: i64,
        product_id: i64,
        device_id: String,
    ) -> ClickEvent {
        let event = ClickEvent {
            event_id: uuid::Uuid::new_v4().to_string(),
            kind,
            customer_id,
            product_id,
            device_id,
            ts_us: now_us(),
        };
        let (key, payload) = (event.key(), event.to_json());
        let record = BaseRecord::to(&self.topic).key(&key).payload(&payload);
        if let Err((e, _)) = self.producer.send(record) {
            tracing::debug!(error = %e, "click event refused by the producer");
            dropped(reason(&e));
        }
        event
    }

    /// Waits up to `timeout` for queued clicks (at shutdown).
    pub(crate) fn flush(&self, timeout: Duration) {
        if let Err(error) = self.producer.flush(timeout) {
            tracing::warn!(%error, "clickstream events still queued at shutdown are lost");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reasons_are_few_and_named() {
        assert_eq!(
            reason(&KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)),
            "queue_full"
        );
        assert_eq!(
            reason(&KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut
            )),
            "timeout"
        );
        assert_eq!(
            reason(&KafkaError::MessageProduction(
                RDKafkaErrorCode::UnknownTopicOrPartition
            )),
            "error"
        );
    }

    #[test]
    fn user_properties_tune_but_defaults_apply() {
        let mut k = KafkaConfig::local("127.0.0.1:1");
        k.properties
            .insert("message.timeout.ms".into(), "2500".into());
        let c = producer_config(&k);
        assert_eq!(c.get("message.timeout.ms"), Some("2500"));
        assert_eq!(c.get("linger.ms"), Some("5"));
        assert_eq!(c.get("bootstrap.servers"), Some("127.0.0.1:1"));
    }

    #[tokio::test]
    async fn an_unreachable_broker_drops_and_counts_without_blocking() {
        // Nothing listens on port 1: the producer queues, then times out.
        let mut k = KafkaConfig::local("127.0.0.1:1");
        k.properties
            .insert("message.timeout.ms".into(), "300".into());
        let before = DROPPED.with_label_values(&["timeout"]).get();
        let started = std::time::Instant::now();
        // Startup does not fail: orders must work without the broker.
        let c = tokio::time::timeout(Duration::from_secs(30), Clickstream::open(&k))
            .await
            .expect("open returns")
            .unwrap();
        assert!(!c.topic_ready);
        let sent_at = std::time::Instant::now();
        let e = c.publish(ClickKind::View, 5, 6, "d1".into());
        assert!(sent_at.elapsed() < Duration::from_millis(100));
        assert_eq!(
            (e.customer_id, e.product_id, e.kind),
            (5, 6, ClickKind::View)
        );
        assert_eq!(
            uuid::Uuid::parse_str(&e.event_id)
                .unwrap()
                .get_version_num(),
            4
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while DROPPED.with_label_values(&["timeout"]).get() == before {
            assert!(
                std::time::Instant::now() < deadline,
                "the lost click was never counted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(started.elapsed() < Duration::from_secs(25));
    }
}
