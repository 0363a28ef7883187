//! The supervisor: one task per source database, each running streaming
//! sessions ([`crate::session`]) one after another. A session that fails
//! with a transient error (connection lost, broker trouble, a failed
//! delivery) is followed by another after a backoff
//! ([`Backoff::restarts`]); it resumes from the slot, which holds exactly
//! what was not durable yet. The first permanent error stops every reader.

use std::collections::BTreeSet;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tributary_kafka::KafkaConfig;
use tributary_model::backoff::Backoff;
use tributary_model::domain::topic_name;
use tributary_model::error_chain;
use tributary_model::lsn::Lsn;
use tributary_model::watermark::watermark_topic;

use crate::sink::{KafkaSink, Sink};
use crate::source::SourceDb;
use crate::{CdcConfig, Error, Result, session};

/// Runs one reader per source into Kafka until `shutdown`, restarting a
/// reader after transient failures from its slot. Returns the first
/// non-transient error.
pub async fn run(
    config: CdcConfig,
    kafka: KafkaConfig,
    sources: Vec<SourceDb>,
    shutdown: CancellationToken,
) -> Result<()> {
    run_with::<KafkaSink>(config, kafka, sources, shutdown).await
}

/// [`run`] with the sink of your choice: [`KafkaSink`] is `run`;
/// [`DiscardSink`](crate::sink::DiscardSink) measures the reader alone
/// (`tributary bench cdc`) or tests it without a broker.
pub async fn run_with<S: Sink>(
    config: CdcConfig,
    kafka: KafkaConfig,
    sources: Vec<SourceDb>,
    shutdown: CancellationToken,
) -> Result<()> {
    let topics: Vec<String> = sources
        .iter()
        .flat_map(|s| {
            s.tables
                .iter()
                .map(|t| topic_name(&kafka.topic_prefix, &s.db, t))
                .chain([watermark_topic(&kafka.topic_prefix, &s.db)])
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    S::prepare(&kafka, &topics).await?;

    let mut tasks = JoinSet::new();
    for source in sources {
        let (config, kafka, shutdown) = (config.clone(), kafka.clone(), shutdown.clone());
        tasks.spawn(async move { supervise::<S>(&config, &kafka, &source, &shutdown).await });
    }
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        let failed = match joined {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(e) => Error::Internal(format!("reader task: {e}")),
        };
        shutdown.cancel();
        if result.is_ok() {
            result = Err(failed);
        }
    }
    result
}

/// One source's sessions, until shutdown or a permanent error.
async fn supervise<S: Sink>(
    config: &CdcConfig,
    kafka: &KafkaConfig,
    source: &SourceDb,
    shutdown: &CancellationToken,
) -> Result<()> {
    let mut backoff = Backoff::restarts();
    // The newest WAL position any session of this source received: kept
    // across sessions, so that after a failover the new primary's WAL is
    // moved past it before a new slot is made (see `Slot::prepare`).
    let mut high_water = Lsn::ZERO;
    loop {
        match session::run::<S>(config, kafka, source, shutdown, &mut high_water).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() && !shutdown.is_cancelled() => {
                tracing::warn!(db = %source.db, shard = source.shard, error = %error_chain(&e), "reader failed, resuming from the slot");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
            Err(e) => return Err(e),
        }
    }
}
