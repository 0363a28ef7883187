//! Outputs to a Kafka topic, at least once, keyed by id.
//!
//! `send` returns once the broker acknowledged every message (acks=all,
//! idempotent producer), so an output published before a checkpoint is in
//! the topic. After a crash the replayed span is published again with the
//! same keys: consumers deduplicate by key (`tributary fraud tail` does).

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use tributary_kafka::{KafkaConfig, client_config, ensure_topics, kafka_err};

use crate::Result;
use crate::metrics::SINK_FAILURES;

pub struct TopicSink {
    producer: FutureProducer,
    topic: String,
}

impl TopicSink {
    pub async fn open(kafka: &KafkaConfig, topic: &str) -> Result<TopicSink> {
        ensure_topics(kafka, &[topic.to_string()]).await?;
        let producer: FutureProducer = client_config(kafka)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .create()
            .map_err(kafka_err("creating the output producer"))?;
        Ok(TopicSink {
            producer,
            topic: topic.to_string(),
        })
    }

    /// Publishes `(key, payload)` pairs and waits for the broker's acks.
    pub async fn send(&self, messages: &[(String, Vec<u8>)]) -> Result<()> {
        let pending: Vec<_> = messages
            .iter()
            .map(|(key, payload)| {
                self.producer.send(
                    FutureRecord::to(&self.topic).key(key).payload(payload),
                    Duration::from_secs(30),
                )
            })
            .collect();
        for delivery in futures::future::join_all(pending).await {
            if let Err((e, _)) = delivery {
                SINK_FAILURES.with_label_values(&["kafka"]).inc();
                return Err(kafka_err("publishing outputs")(e).into());
            }
        }
        Ok(())
    }
}
