//! The fraud detector: rules over each customer's timeline, alerts with
//! deterministic ids.
//!
//! Inputs: the CDC topics of `orders`, `payments` and `customers`, their
//! database's watermarks, and the clickstream (add-to-carts). The rules
//! ([`rules`]) come from a file reloaded while it runs ([`reload`]); the
//! detector ([`detector`]) applies them in event-time order; every alert
//! ([`alert`]) goes to `tributary.alerts.fraud` (key = alert id) and an
//! optional webhook at once, and to `gold.fraud_alerts` exactly once with
//! the job's checkpoints. Late clickstream events go to the runtime's late
//! path (`gold.live_late_events`), so nothing is dropped silently. Each
//! alert's detail carries the customer's risk profile ([`profile`]), the
//! newest version of the batch job's `gold.customer_risk_profile`.

pub mod alert;
pub mod detector;
pub mod input;
pub mod profile;
pub mod reload;
pub mod rules;
pub mod table;
pub mod tail;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};
use tributary_kafka::KafkaConfig;
use tributary_stream::EventTime;
use tributary_stream::source::{Record, TopicKind};

use crate::Result;
use crate::inputs::{Message, decode, order_inputs, order_shards};
use crate::metrics::{ALERT_LATENCY, ALERTS};
use crate::runtime::Job;
use crate::sink::kafka::TopicSink;
use crate::sink::webhook::Webhook;
use alert::Alert;
use detector::Detector;
use input::Input;
use profile::Profiles;
use reload::RulesFile;
use rules::Rules;

/// The job's name: consumer group `tributary-live-fraud`, checkpoints under
/// `_checkpoints/live/fraud/`, `txn` app `tributary-live/fraud`.
pub const JOB: &str = "fraud";
pub const TABLE: &str = "fraud_alerts";

/// The topic alerts are published to.
pub fn alerts_topic(prefix: &str) -> String {
    format!("{prefix}.alerts.fraud")
}

/// Where the detector's alerts go besides Delta.
pub struct Outputs {
    pub topic: Option<TopicSink>,
    pub webhook: Option<Webhook>,
}

pub struct FraudJob {
    state: Detector,
    rules_file: Option<RulesFile>,
    shards: u32,
    outputs: Outputs,
    /// The newest risk profiles, as [`profile::follow`] finds them.
    profiles_feed: Option<tokio::sync::watch::Receiver<Option<Arc<Profiles>>>>,
    profiles: Option<Arc<Profiles>>,
}

/// The detector's checkpointed state.
#[derive(Serialize, Deserialize)]
pub struct State(Detector);

impl FraudJob {
    /// A detector over `shards` order shards, with the rules of `rules`
    /// (reloaded while it runs) or the built-in ones.
    pub fn new(
        rules: Option<PathBuf>,
        shards: u32,
        lateness_us: i64,
        outputs: Outputs,
    ) -> Result<FraudJob> {
        let (rules_file, rules) = match rules {
            Some(path) => {
                let (file, rules) = RulesFile::open(path)?;
                (Some(file), rules)
            }
            None => (None, Rules::defaults()),
        };
        Ok(FraudJob {
            state: Detector::new(rules, lateness_us)?,
            rules_file,
            shards,
            outputs,
            profiles_feed: None,
            profiles: None,
        })
    }

    /// Adds the customers' risk profiles from `feed` to every alert's detail.
    pub fn with_profiles(
        mut self,
        feed: tokio::sync::watch::Receiver<Option<Arc<Profiles>>>,
    ) -> FraudJob {
        self.profiles_feed = Some(feed);
        self
    }

    /// Waits for the webhook's queue to drain.
    pub async fn close(self) {
        if let Some(w) = self.outputs.webhook {
            w.drain().await;
        }
    }
}

const INPUT_TABLES: [&str; 3] = ["customers", "orders", "payments"];

impl Job for FraudJob {
    type Input = Input;
    type Output = Alert;
    type State = Detector;

    fn name(&self) -> &'static str {
        JOB
    }

    fn state(&self) -> &Detector {
        &self.state
    }

    fn restore(&mut self, state: Detector) -> Result<()> {
        let rules = self.state.rules().clone();
        self.state = state;
        // The rules file may have changed while the detector was down.
        self.state.set_rules(rules)
    }

    fn inputs(&self, kafka: &KafkaConfig) -> Vec<(String, TopicKind)> {
        order_inputs(&kafka.topic_prefix, &INPUT_TABLES)
    }

    fn cdc_sources(&self) -> Vec<(String, u32)> {
        order_shards(self.shards)
    }

    fn parse(&self, record: &Record) -> Result<Option<Input>> {
        match decode(record)? {
            Some(Message::Click(ev)) => Ok(input::from_click(&ev)),
            Some(Message::Change(ev)) => input::from_change(&ev),
            None => Ok(None),
        }
    }

    fn apply(&mut self, input: &Input, now_us: i64) -> Vec<Alert> {
        let mut alerts = self.state.apply(input, now_us);
        if let Some(p) = &self.profiles {
            for a in &mut alerts {
                a.detail = format!("{}; {}", a.detail, p.describe(a.customer_id));
            }
        }
        for a in &alerts {
            ALERTS.with_label_values(&[a.rule.as_str()]).inc();
            ALERT_LATENCY.observe(((now_us - a.source_commit_us) as f64 / 1e6).max(0.0));
        }
        alerts
    }

    fn advance(&mut self, watermark: EventTime) -> Vec<Alert> {
        self.state.advance(watermark);
        Vec::new()
    }

    fn rows(&self, alerts: &[Alert]) -> Result<Vec<RecordBatch>> {
        Ok(vec![table::rows(alerts)?])
    }

    async fn publish(&mut self, alerts: &[Alert]) -> Result<()> {
        if alerts.is_empty() {
            return Ok(());
        }
        for a in alerts {
            tracing::info!(alert = %a.id, rule = a.rule.as_str(), customer = a.customer_id, "fraud alert");
        }
        if let Some(w) = &self.outputs.webhook {
            for a in alerts {
                w.send(&a.id, a.to_json());
            }
        }
        if let Some(t) = &self.outputs.topic {
            let messages: Vec<(String, Vec<u8>)> =
                alerts.iter().map(|a| (a.id.clone(), a.to_json())).collect();
            t.send(&messages).await?;
        }
        Ok(())
    }

    fn tick(&mut self) -> Result<()> {
        if let Some(file) = &mut self.rules_file
            && let Some(rules) = file.check()
        {
            self.state.set_rules(rules)?;
        }
        if let Some(feed) = &mut self.profiles_feed
            && feed.has_changed().unwrap_or(false)
        {
            self.profiles = feed.borrow_and_update().clone();
        }
        Ok(())
    }
}

/// Runs the detector over `shards` order shards until `shutdown`.
pub async fn run(
    kafka: &KafkaConfig,
    lake: &tributary_lake::Lake,
    shards: u32,
    config: &crate::config::LiveConfig,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<()> {
    let outputs = Outputs {
        topic: Some(TopicSink::open(kafka, &alerts_topic(&kafka.topic_prefix)).await?),
        webhook: config
            .fraud
            .webhook
            .as_deref()
            .map(|url| Webhook::start(url, config.fraud.webhook_attempts))
            .transpose()?,
    };
    let job = FraudJob::new(
        config.fraud.rules.clone(),
        shards,
        config.engine.allowed_lateness_us(),
        outputs,
    )?
    .with_profiles(
        profile::follow(
            lake.clone(),
            Duration::from_millis(config.fraud.profile_refresh_ms),
            shutdown.clone(),
        )
        .await,
    );
    let output = crate::sink::delta::DeltaOutput::for_job(lake, JOB, TABLE, table::SCHEMA.clone());
    let job = crate::runtime::run(job, kafka, lake, output, &config.engine, shutdown).await?;
    job.close().await;
    Ok(())
}
