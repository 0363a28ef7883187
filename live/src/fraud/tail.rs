//! Following the alerts topic, each alert once (`tributary fraud tail`).

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio_util::sync::CancellationToken;
use tributary_kafka::{KafkaConfig, consumer_config, ensure_topics, kafka_err};

use super::alert::Alert;
use super::alerts_topic;
use crate::Result;

/// Calls `each` with every alert of the alerts topic (from its beginning or
/// only new ones) until `stop`; an alert published again after a detector's
/// restart (same id) is passed on once. `each` gets the alert and its JSON.
pub async fn tail(
    kafka: &KafkaConfig,
    from_beginning: bool,
    stop: CancellationToken,
    mut each: impl FnMut(&Alert, &[u8]),
) -> Result<()> {
    let topic = alerts_topic(&kafka.topic_prefix);
    ensure_topics(kafka, std::slice::from_ref(&topic)).await?;
    let group = format!("tributary-fraud-tail-{}", std::process::id());
    let consumer: StreamConsumer = consumer_config(kafka, &group)
        .set("enable.auto.commit", "false")
        .set(
            "auto.offset.reset",
            if from_beginning { "earliest" } else { "latest" },
        )
        .create()
        .map_err(kafka_err("creating the alerts consumer"))?;
    consumer
        .subscribe(&[&topic])
        .map_err(kafka_err("subscribing to the alerts topic"))?;
    let mut seen: HashSet<String> = HashSet::new();
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            m = tokio::time::timeout(Duration::from_secs(1), consumer.recv()) => m,
        };
        let Ok(msg) = msg else { continue };
        let msg = msg.map_err(kafka_err("reading the alerts topic"))?;
        let Some(payload) = msg.payload() else {
            continue;
        };
        match serde_json::from_slice::<Alert>(payload) {
            Ok(alert) => {
                if seen.insert(alert.id.clone()) {
                    each(&alert, payload);
                }
            }
            Err(e) => {
                tracing::warn!(offset = msg.offset(), error = %e, "skipping a message of the alerts topic that is not an alert")
            }
        }
    }
}
