//! The one way tributary reaches Kafka: the `[kafka]` settings, the client
//! builder every producer and consumer starts from, the broker check and
//! topic creation.
//!
//! Every client is built by [`client_config`] (or [`consumer_config`]): the
//! brokers, tributary's socket and log settings, then the extra librdkafka
//! properties of `[kafka.properties]`, so a user reaches a managed Kafka
//! (MSK, Confluent Cloud) with TLS and SASL without code changes:
//!
//! ```toml
//! [kafka]
//! brokers = "b-1.msk.example:9096"
//! [kafka.properties]
//! "security.protocol" = "SASL_SSL"
//! "sasl.mechanism" = "SCRAM-SHA-512"
//! "sasl.username" = "tributary"
//! "sasl.password" = "…"   # or TRIBUTARY__KAFKA__PROPERTIES__SASL.PASSWORD
//! ```
//!
//! A role sets what its promise depends on *after* the user's properties (the
//! CDC producer's `enable.idempotence` and `acks=all`, a consumer's manual
//! offset handling), so a property can tune a client but never weaken a
//! delivery guarantee. Secret properties never reach `Debug` output, logs or
//! errors.
//!
//! ```
//! use tributary_kafka::{KafkaConfig, client_config};
//! let mut k = KafkaConfig::local("127.0.0.1:9092");
//! k.properties.insert("client.rack".into(), "az1".into());
//! assert_eq!(client_config(&k).get("client.rack"), Some("az1"));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::Deserialize;

/// How to reach the broker (`[kafka]` in the config file); shared by the CDC
/// reader, which produces, and the lake, which consumes.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port]`.
    pub brokers: String,
    /// Topics are `<prefix>.<db>.<table>`.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// Partitions of each change topic when the reader creates it.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Extra librdkafka properties for every client (TLS, SASL, client.rack,
    /// …). Values of secret keys (passwords, secrets, tokens) are never
    /// printed.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_prefix() -> String {
    "tributary".into()
}

fn default_partitions() -> i32 {
    3
}

impl KafkaConfig {
    /// A plaintext broker with the default prefix and partitions (the local
    /// stack's).
    pub fn local(brokers: &str) -> Self {
        KafkaConfig {
            brokers: brokers.to_string(),
            topic_prefix: default_prefix(),
            partitions: default_partitions(),
            properties: BTreeMap::new(),
        }
    }
}

/// Whether a librdkafka property holds a secret.
pub fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "jaas", "token", "oauthbearer.config"]
        .iter()
        .any(|s| k.contains(s))
        || k == "ssl.key.pem"
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let props: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let shown = if is_secret_property(k) {
                    "[REDACTED]"
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic_prefix", &self.topic_prefix)
            .field("partitions", &self.partitions)
            .field("properties", &props)
            .finish()
    }
}

/// Errors of the Kafka helpers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka: {context}")]
    Kafka {
        context: String,
        #[source]
        source: KafkaError,
    },
    #[error("cannot reach the Kafka broker at {brokers} within {timeout:?}; is it running?")]
    Unreachable {
        brokers: String,
        timeout: Duration,
        #[source]
        source: KafkaError,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Broker trouble is cured by waiting; a broken invariant is not.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Error::Internal(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps a client error with what we were doing.
pub fn kafka_err(context: &str) -> impl FnOnce(KafkaError) -> Error + '_ {
    move |source| Error::Kafka {
        context: context.to_string(),
        source,
    }
}

/// The settings every client starts from: the brokers, a 10 s socket
/// timeout, librdkafka's own log at errors only, then `[kafka.properties]`.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("socket.timeout.ms", "10000")
        .set("log_level", "3");
    for (k, v) in &config.properties {
        c.set(k, v);
    }
    c
}

/// A consumer that never lets the broker own its position: no automatic
/// offset commits or stores (tributary keeps offsets where its output is),
/// and a short fetch wait so a poll returns soon after data arrives.
pub fn consumer_config(config: &KafkaConfig, group: &str) -> ClientConfig {
    let mut c = client_config(config);
    c.set("group.id", group)
        .set("fetch.wait.max.ms", "100")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    c
}

/// Fails with a clear message when the broker does not answer within
/// `timeout`.
pub async fn check_broker(config: &KafkaConfig, timeout: Duration) -> Result<()> {
    let consumer: BaseConsumer = client_config(config)
        .create()
        .map_err(kafka_err("creating a client"))?;
    let brokers = config.brokers.clone();
    tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(None, timeout)
            .map(|_| ())
            .map_err(|source| Error::Unreachable {
                brokers,
                timeout,
                source,
            })
    })
    .await
    .map_err(|e| Error::Internal(format!("metadata task: {e}")))?
}

/// The topics the broker lists (with at least one partition).
async fn existing_topics(config: &KafkaConfig) -> Result<std::collections::BTreeSet<String>> {
    let consumer: BaseConsumer = client_config(config)
        .create()
        .map_err(kafka_err("creating a client"))?;
    tokio::task::spawn_blocking(move || {
        let md = consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .map_err(kafka_err("reading topic metadata"))?;
        Ok(md
            .topics()
            .iter()
            .filter(|t| !t.partitions().is_empty())
            .map(|t| t.name().to_string())
            .collect())
    })
    .await
    .map_err(|e| Error::Internal(format!("metadata task: {e}")))?
}

/// Attempts of [`ensure_topics`] when the broker times out.
const CREATE_ATTEMPTS: u32 = 3;

fn timed_out(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::OperationTimedOut | RDKafkaErrorCode::RequestTimedOut
    )
}

/// Creates the topics that do not exist yet, with `config.partitions`
/// partitions (topics are never auto-created). Creating is idempotent, so
/// a broker that times out (a busy one: the local broker under the full
/// test suite once did not answer within the 10 s socket timeout) is asked
/// again, up to [`CREATE_ATTEMPTS`] times.
///
/// Topics the broker already lists are not asked for at all: a process
/// restarted under load (a detector after a SIGKILL) must not depend on a
/// busy broker answering an admin request for topics that exist (tansu
/// timed out three times in a row on exactly that at ~1,600 requests/s).
pub async fn ensure_topics(config: &KafkaConfig, topics: &[String]) -> Result<()> {
    let existing = existing_topics(config).await.unwrap_or_default();
    let missing: Vec<&String> = topics.iter().filter(|t| !existing.contains(*t)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = client_config(config)
        .create()
        .map_err(kafka_err("creating an admin client"))?;
    let new: Vec<NewTopic> = missing
        .iter()
        .map(|t| NewTopic::new(t, config.partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let mut attempt = 1;
    loop {
        let failed = match admin.create_topics(new.iter(), &opts).await {
            Ok(results) => results.into_iter().find_map(|r| match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => None,
                Err((topic, code)) => Some(Error::Kafka {
                    context: format!("creating topic {topic}"),
                    source: KafkaError::AdminOp(code),
                }),
            }),
            Err(e) => Some(kafka_err("creating topics")(e)),
        };
        let Some(err) = failed else {
            return Ok(());
        };
        let retry = matches!(&err, Error::Kafka { source: KafkaError::AdminOp(code), .. } if timed_out(*code));
        if !retry || attempt == CREATE_ATTEMPTS {
            return Err(err);
        }
        tracing::warn!(attempt, error = %err, "the broker timed out creating topics; asking again");
        tokio::time::sleep(Duration::from_secs(2)).await;
        attempt += 1;
    }
}

/// The partitions of `topic` (0 when it does not exist). Blocking.
pub fn partition_count<C: Consumer>(consumer: &C, topic: &str, timeout: Duration) -> Result<i32> {
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(kafka_err("reading topic metadata"))?;
    Ok(md
        .topics()
        .first()
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0))
}

/// The end offset (high watermark) of every partition of `topic`. Blocking.
pub fn end_offsets<C: Consumer>(
    consumer: &C,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>> {
    let mut out = BTreeMap::new();
    for p in 0..partition_count(consumer, topic, timeout)? {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(kafka_err("reading end offsets"))?;
        out.insert(p, high);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_properties(props: &[(&str, &str)]) -> KafkaConfig {
        let mut k = KafkaConfig::local("b1:9096,b2:9096");
        for (key, v) in props {
            k.properties.insert(key.to_string(), v.to_string());
        }
        k
    }

    #[test]
    fn extra_properties_arrive_in_every_client() {
        let k = with_properties(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "tributary"),
            ("sasl.password", "hunter2"),
            ("fetch.wait.max.ms", "250"),
        ]);
        let c = client_config(&k);
        assert_eq!(c.get("bootstrap.servers"), Some("b1:9096,b2:9096"));
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("sasl.password"), Some("hunter2"));
        let c = consumer_config(&k, "g");
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("group.id"), Some("g"));
        // A role's own settings come after the user's.
        assert_eq!(c.get("fetch.wait.max.ms"), Some("100"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
    }

    #[test]
    fn a_property_librdkafka_does_not_know_is_refused_by_name() {
        let k = with_properties(&[("sasl.mechanizm", "PLAIN")]);
        let err = match client_config(&k).create::<BaseConsumer>() {
            Ok(_) => panic!("an unknown property was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("sasl.mechanizm"), "{err}");
    }

    #[test]
    fn secrets_never_reach_debug_output() {
        let k = with_properties(&[
            ("sasl.password", "hunter2"),
            ("ssl.key.password", "pem-pass"),
            ("sasl.oauthbearer.client.secret", "s3cr3t"),
            ("sasl.username", "tributary"),
        ]);
        let shown = format!("{k:?}");
        for secret in ["hunter2", "pem-pass", "s3cr3t"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(
            shown.contains("tributary") && shown.contains("REDACTED"),
            "{shown}"
        );
    }

    #[test]
    fn properties_deserialise_from_toml_like_input() {
        let k: KafkaConfig =
            serde_json_like(r#"{"brokers":"x:1","properties":{"security.protocol":"SSL"}}"#);
        assert_eq!(k.properties["security.protocol"], "SSL");
        assert_eq!((k.topic_prefix.as_str(), k.partitions), ("tributary", 3));
    }

    fn serde_json_like(text: &str) -> KafkaConfig {
        Deserialize::deserialize(&mut serde_json::Deserializer::from_str(text)).unwrap()
    }
}
