//! The loop every live job shares.
//!
//! ```text
//!  Kafka (CDC topics, watermarks, clickstream)
//!    │  Driver: assign + seek to the checkpoint's offsets; watermarks -> tracker
//!    ▼
//!  parse ──late beyond allowed lateness──► late path (counted, in the output)
//!    │
//!    ▼
//!  ReorderBuffer ──released in event-time order once the watermark passed──► Job::apply
//!                                                                    │ outputs
//!                            fast sinks (Kafka, webhook) ◄───────────┤
//!                            Delta, with checkpoint N ◄──────────────┘ (every checkpoint interval)
//! ```
//!
//! Every `checkpoint_interval` the runtime saves checkpoint N (job state,
//! buffered events, watermark tracker, consumed offsets), then appends the
//! outputs produced since N-1 to Delta in one commit carrying `txn N`
//! ([`crate::sink::delta`]). On start it reads the committed N from Delta,
//! loads checkpoint N and seeks the consumer to its offsets. So Delta holds
//! each output once. The fast sinks get outputs as soon as they exist, and
//! after a crash again for the replayed span: at least once, keyed by the
//! output's deterministic id, so a consumer deduplicates by id.
//!
//! Shutdown (the token): one last checkpoint, then return.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tributary_kafka::KafkaConfig;
use tributary_lake::Lake;
use tributary_stream::EventTime;
use tributary_stream::checkpoint::{Checkpoint, CheckpointStore};
use tributary_stream::late::{LatePath, Lateness, SourcePosition};
use tributary_stream::reorder::{ReorderBuffer, Timed};
use tributary_stream::source::{Driver, Record, TopicKind};
use tributary_stream::watermark::{WatermarkConfig, WatermarkTracker};

use crate::sink::delta::DeltaOutput;
use crate::{Error, Result};

/// How a job runs: the engine's knobs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// How often state, offsets and the Delta output are committed.
    #[serde(default = "default_checkpoint_ms")]
    pub checkpoint_interval_ms: u64,
    /// How long events of sources without watermarks may arrive out of order.
    #[serde(default = "default_out_of_orderness_ms")]
    pub max_out_of_orderness_ms: u64,
    /// A partition without watermarks and without messages for this long
    /// stops holding time back.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// How long after the watermark passed an event may still arrive and be
    /// processed; later ones go to the late path.
    #[serde(default = "default_allowed_lateness_ms")]
    pub allowed_lateness_ms: u64,
    /// Checkpoints kept behind the newest.
    #[serde(default = "default_keep_checkpoints")]
    pub keep_checkpoints: u64,
}

fn default_checkpoint_ms() -> u64 {
    1000
}
fn default_out_of_orderness_ms() -> u64 {
    500
}
fn default_idle_timeout_ms() -> u64 {
    5000
}
fn default_allowed_lateness_ms() -> u64 {
    2000
}
fn default_keep_checkpoints() -> u64 {
    2
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            checkpoint_interval_ms: default_checkpoint_ms(),
            max_out_of_orderness_ms: default_out_of_orderness_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            allowed_lateness_ms: default_allowed_lateness_ms(),
            keep_checkpoints: default_keep_checkpoints(),
        }
    }
}

impl RuntimeConfig {
    pub fn allowed_lateness_us(&self) -> i64 {
        self.allowed_lateness_ms as i64 * 1000
    }
}

/// A live job: what it reads, how it turns records into inputs, and what it
/// does with them in event-time order.
pub trait Job: Send {
    type Input: Timed + Clone + Serialize + DeserializeOwned + Send;
    type Output: Send;
    /// Everything a restart needs, saved in each checkpoint.
    type State: Serialize + DeserializeOwned + Send;

    fn state(&self) -> &Self::State;

    /// Takes the state of the checkpoint a restart resumes from.
    fn restore(&mut self, state: Self::State) -> Result<()>;

    /// The job's name: its consumer group, checkpoint folder and `txn` app.
    fn name(&self) -> &'static str;

    /// The topics it reads.
    fn inputs(&self, kafka: &KafkaConfig) -> Vec<(String, TopicKind)>;

    /// The CDC sources (db, shard) whose watermarks time must wait for.
    fn cdc_sources(&self) -> Vec<(String, u32)>;

    /// A record as an input; `Ok(None)` for records the job ignores.
    fn parse(&self, record: &Record) -> Result<Option<Self::Input>>;

    /// One input, in event-time order (or one within the allowed lateness,
    /// as it arrives).
    fn apply(&mut self, input: &Self::Input, now_us: i64) -> Vec<Self::Output>;

    /// The watermark moved: close windows (a job's windows accept events
    /// up to the allowed lateness behind it), expire state, emit what
    /// closed.
    fn advance(&mut self, watermark: EventTime) -> Vec<Self::Output>;

    /// Outputs as Delta rows.
    fn rows(&self, outputs: &[Self::Output]) -> Result<Vec<RecordBatch>>;

    /// Hands new outputs to the fast sinks (Kafka, webhook, a terminal).
    fn publish(&mut self, outputs: &[Self::Output]) -> impl Future<Output = Result<()>> + Send;

    /// Called about once a second (rules reload, gauges).
    fn tick(&mut self) -> Result<()> {
        Ok(())
    }
}

/// What a checkpoint holds besides the offsets, as saved (borrowed, so a
/// large state is not copied to be saved) and as loaded.
#[derive(Serialize)]
#[serde(bound(serialize = "J::State: Serialize, J::Input: Serialize"))]
struct SavedRef<'a, J: Job> {
    job: &'a J::State,
    buffer: &'a ReorderBuffer<J::Input>,
    tracker: &'a WatermarkTracker,
}

#[derive(Deserialize)]
#[serde(bound(deserialize = "J::State: DeserializeOwned, J::Input: DeserializeOwned"))]
struct Saved<J: Job> {
    job: J::State,
    buffer: ReorderBuffer<J::Input>,
    tracker: WatermarkTracker,
}

/// Runs `job` until `shutdown`, resuming from its last committed
/// checkpoint (whose state replaces the job's when there is one); returns
/// the job, for its sinks to drain.
pub async fn run<J: Job>(
    mut job: J,
    kafka: &KafkaConfig,
    lake: &Lake,
    output: DeltaOutput,
    config: &RuntimeConfig,
    shutdown: CancellationToken,
) -> Result<J> {
    let name = job.name();
    let (store, base) = lake.object_store().map_err(|source| Error::Lake {
        what: "opening the lake's store for checkpoints".into(),
        source: Box::new(source),
    })?;
    let store = CheckpointStore::new(
        Arc::from(store),
        base.join("_checkpoints").join("live").join(name),
    );
    let late_output = crate::sink::late::output(lake, name);
    let watermarks = WatermarkConfig {
        max_out_of_orderness_us: config.max_out_of_orderness_ms as i64 * 1000,
        idle_timeout: Duration::from_millis(config.idle_timeout_ms),
    };
    let (buffer, tracker, offsets, seq) = match output.committed().await? {
        Some(n) => {
            let cp: Checkpoint<Saved<J>> = store.load(n).await?.ok_or_else(|| {
                Error::Input(format!(
                    "{} committed checkpoint {n} but the checkpoint is missing from the lake's _checkpoints/live/{name}/",
                    output.name()
                ))
            })?;
            tracing::info!(job = name, checkpoint = n, "resuming from checkpoint");
            job.restore(cp.state.job)?;
            let mut tracker = cp.state.tracker;
            tracker.set_config(watermarks);
            (cp.state.buffer, tracker, cp.offsets, n)
        }
        None => {
            let mut tracker = WatermarkTracker::new(watermarks);
            for (db, shard) in job.cdc_sources() {
                tracker.expect_cdc_source(&db, shard);
            }
            (ReorderBuffer::new(), tracker, BTreeMap::new(), 0)
        }
    };
    let inputs = job.inputs(kafka);
    // A job may start before the CDC reader made its topics; it makes them
    // the same way (same partitions), so whoever comes first is right.
    let topics: Vec<String> = inputs.iter().map(|(t, _)| t.clone()).collect();
    tributary_kafka::ensure_topics(kafka, &topics).await?;
    let driver = Driver::open(
        kafka,
        &format!("tributary-live-{name}"),
        inputs,
        tracker,
        &offsets,
    )
    .await?;
    let mut state = Running {
        job,
        buffer,
        driver,
        late: LatePath::new(name),
        pending: Vec::new(),
        seq,
        last_checkpoint: Instant::now(),
    };
    let lateness = config.allowed_lateness_us();
    let mut watermark = state.driver.watermark(Instant::now());
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut second = tokio::time::interval(Duration::from_secs(1));
    let mut checkpoint =
        tokio::time::interval(Duration::from_millis(config.checkpoint_interval_ms));
    checkpoint.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            record = state.driver.next() => {
                let record = record?;
                let input = match state.job.parse(&record) {
                    Ok(Some(i)) => i,
                    Ok(None) => continue,
                    Err(e) => {
                        crate::metrics::bad_input(name, &record.topic);
                        tracing::warn!(job = name, topic = %record.topic, partition = record.partition, offset = record.offset, error = %e, "skipping a record the job cannot read");
                        continue;
                    }
                };
                let t = input.event_time();
                state.driver.observe(&record, t);
                match Lateness::of(t, watermark, lateness) {
                    Lateness::OnTime => state.buffer.push(input),
                    Lateness::Allowed => {
                        let out = state.job.apply(&input, now_us());
                        state.emit(out).await?;
                    }
                    Lateness::Beyond => state.late.record(
                        SourcePosition {
                            topic: record.topic.clone(),
                            partition: record.partition,
                            offset: record.offset,
                        },
                        t,
                        watermark.unwrap_or(t),
                        format!("more than the allowed lateness of {} ms behind the watermark", config.allowed_lateness_ms),
                    ),
                }
            }
            _ = tick.tick() => {
                let Some(w) = state.driver.watermark(Instant::now()) else { continue };
                if watermark.is_some_and(|old| old >= w) {
                    continue;
                }
                let mut out = Vec::new();
                for input in state.buffer.release(w) {
                    out.extend(state.job.apply(&input, now_us()));
                }
                out.extend(state.job.advance(w));
                tracing::trace!(job = name, watermark = w, outputs = out.len(), buffered = state.buffer.len(), "watermark moved");
                watermark = Some(w);
                crate::metrics::progress(name, w);
                tributary_stream::metrics::set_watermark(name, Some(w));
                tributary_stream::metrics::set_buffered_events(name, state.buffer.len());
                state.emit(out).await?;
            }
            _ = second.tick() => state.job.tick()?,
            _ = checkpoint.tick() => {
                // Nothing new to commit: skip, up to a minute, so an idle
                // job does not write a Delta commit a second; a restart
                // replays a little more instead (with the same results).
                if state.pending.is_empty() && state.late.is_empty()
                    && state.last_checkpoint.elapsed() < IDLE_CHECKPOINT
                {
                    continue;
                }
                state.checkpoint(&store, &output, &late_output, config).await?;
            }
        }
    }
    state
        .checkpoint(&store, &output, &late_output, config)
        .await?;
    tracing::info!(job = name, checkpoint = state.seq, "stopped");
    Ok(state.job)
}

/// The longest an idle job goes without a checkpoint.
const IDLE_CHECKPOINT: Duration = Duration::from_secs(60);

struct Running<J: Job> {
    job: J,
    buffer: ReorderBuffer<J::Input>,
    driver: Driver,
    late: LatePath,
    /// Outputs since the last checkpoint, for its Delta commit.
    pending: Vec<J::Output>,
    seq: u64,
    last_checkpoint: Instant,
}

impl<J: Job> Running<J> {
    async fn emit(&mut self, out: Vec<J::Output>) -> Result<()> {
        if !out.is_empty() {
            self.job.publish(&out).await?;
            self.pending.extend(out);
        }
        Ok(())
    }

    /// Saves checkpoint `seq + 1`, then commits the late events and the
    /// outputs since the last one with it.
    async fn checkpoint(
        &mut self,
        store: &CheckpointStore,
        output: &DeltaOutput,
        late_output: &DeltaOutput,
        config: &RuntimeConfig,
    ) -> Result<()> {
        let started = Instant::now();
        let seq = self.seq + 1;
        let cp = Checkpoint {
            job: self.job.name().to_string(),
            seq,
            offsets: self.driver.positions(),
            state: SavedRef::<J> {
                job: self.job.state(),
                buffer: &self.buffer,
                tracker: self.driver.tracker(),
            },
        };
        store.save(&cp).await?;
        let late = self.late.drain();
        if !late.is_empty() {
            late_output
                .commit(seq, vec![crate::sink::late::rows(&late)?])
                .await?;
        }
        tracing::debug!(
            job = self.job.name(),
            checkpoint = seq,
            outputs = self.pending.len(),
            late = late.len(),
            buffered = self.buffer.len(),
            "checkpoint"
        );
        output.commit(seq, self.job.rows(&self.pending)?).await?;
        self.pending.clear();
        self.seq = seq;
        self.last_checkpoint = Instant::now();
        if seq > config.keep_checkpoints {
            store.prune(seq - config.keep_checkpoints).await?;
        }
        crate::metrics::checkpoint(self.job.name(), started.elapsed());
        Ok(())
    }
}

pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
