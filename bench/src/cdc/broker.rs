//! The broker side of the CDC bench: a tansu of the bench's own, and the
//! broker alone measured with the reader's producer settings.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use tributary_kafka::KafkaConfig;
use tributary_stack::Config;

use super::{Bench, BrokerCeiling, Cpu, TOPIC_PREFIX};
use crate::process::{cpu_secs, own_cpu_secs};
use crate::{Error, Result, io, kafka};

/// No storage at all (tansu's `null` engine: records are dropped, offsets
/// invented): the broker's protocol and the producer without storage cost.
/// (`memory://` needs tansu's `dynostore` feature, which the stack's
/// install leaves out.)
pub(super) const NULL_STORAGE: &str = "null://tansu/";

/// A tansu broker of the bench's own, started like the stack's in a
/// temporary folder; stopped and removed on drop.
pub(super) struct BenchBroker {
    child: std::process::Child,
    dir: PathBuf,
    port: u16,
}

impl BenchBroker {
    pub(super) async fn start(config: &Config, storage: &str) -> Result<BenchBroker> {
        let bin = tributary_stack::broker::binary(config.stack.broker_bin.as_deref())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("finding a free port"))?
            .port();
        let dir = std::env::temp_dir().join(format!(
            "tributary-bench-broker-{}-{port}",
            std::process::id()
        ));
        let child = tributary_stack::broker::command(&bin, port, storage, &dir)?
            .spawn()
            .map_err(io(format!("starting {}", bin.display())))?;
        let broker = BenchBroker { child, dir, port };
        tributary_stack::broker::wait_listening(port, &broker.dir).await?;
        Ok(broker)
    }

    pub(super) fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BenchBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Bench<'_> {
    /// Produces as many messages as a run streams, of the reader's mean
    /// event size, with the reader's producer settings and its way of
    /// tracking acknowledgements (a delivery callback, no future per
    /// message), into the broker at `brokers` (process `pid`).
    pub(super) async fn broker_ceiling(
        &self,
        brokers: &str,
        pid: u32,
        storage: &str,
    ) -> Result<BrokerCeiling> {
        let payload_bytes = super::reader::mean_event_bytes().unwrap_or(600);
        let messages = self.changes();
        let topic = format!("{TOPIC_PREFIX}.ceiling");
        let target = KafkaConfig {
            brokers: brokers.to_string(),
            ..self.kafka.clone()
        };
        tributary_kafka::ensure_topics(&target, std::slice::from_ref(&topic)).await?;
        let acks = Arc::new(CountAcks::default());
        let producer: ThreadedProducer<Counting> = tributary_cdc::sink::producer_config(&target)
            .create_with_context(Counting(acks.clone()))
            .map_err(kafka("creating a producer"))?;
        let payload = vec![b'x'; payload_bytes];
        let cpu = || Cpu {
            reader: own_cpu_secs().unwrap_or(0.0),
            broker: cpu_secs(pid).unwrap_or(0.0),
            walsender: None,
        };
        let cpu_before = cpu();
        let started = Instant::now();
        let mut key = String::new();
        for i in 0..messages {
            key.clear();
            write!(key, "{{\"id\":{i},\"shard\":0}}").expect("writing to a String");
            let mut record = BaseRecord::to(&topic).key(&key).payload(&payload);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        acks.check()?;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => return Err(kafka("producing")(e)),
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(600);
        while acks.ok.load(Ordering::SeqCst) < messages {
            acks.check()?;
            if Instant::now() >= deadline {
                return Err(Error::Run(
                    "deliveries did not finish within 10 minutes".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let cpu = cpu().since(cpu_before);
        // The null engine keeps nothing to count.
        if storage != NULL_STORAGE {
            let held = topic_events(&target, &topic).await?;
            if held != messages {
                return Err(Error::Count(format!(
                    "the broker holds {held} of {messages} messages"
                )));
            }
        }
        Ok(BrokerCeiling {
            storage: storage.to_string(),
            messages,
            payload_bytes,
            secs,
            cpu,
        })
    }
}

/// Acknowledged and failed deliveries of the broker-alone measurement.
#[derive(Default)]
struct CountAcks {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl CountAcks {
    fn check(&self) -> Result<()> {
        let failed = self.failed.load(Ordering::SeqCst);
        if failed > 0 {
            return Err(Error::Run(format!("{failed} deliveries failed")));
        }
        Ok(())
    }
}

/// The producer context that counts deliveries into [`CountAcks`].
struct Counting(Arc<CountAcks>);

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = if result.is_ok() {
            &self.0.ok
        } else {
            &self.0.failed
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

/// The number of events a topic holds: the sum of its partitions' high
/// watermarks less their low ones (nothing is ever deleted from bench
/// topics).
pub(super) async fn topic_events(config: &KafkaConfig, topic: &str) -> Result<u64> {
    let consumer: BaseConsumer = tributary_kafka::consumer_config(config, "tributary-bench")
        .create()
        .map_err(kafka("creating a consumer"))?;
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(10);
        let partitions = tributary_kafka::partition_count(&consumer, &topic, timeout)?;
        let mut total = 0u64;
        for p in 0..partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, p, timeout)
                .map_err(kafka("reading watermarks"))?;
            total += (high - low).max(0) as u64;
        }
        Ok(total)
    })
    .await
    .map_err(|e| Error::Internal(format!("watermarks task: {e}")))?
}
