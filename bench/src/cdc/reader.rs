//! The reader under test: started in this process into the bench's broker
//! or into the discard sink, timed until its slot confirms the end of the
//! backlog or its snapshot is recorded complete.

use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tributary_model::lsn::Lsn;

use super::{Bench, Cpu, POLL, PUBLICATION, Sink, TABLE};
use crate::process::{cpu_secs, own_cpu_secs, own_status_kib, reset_own_peak_rss};
use crate::{Error, Result, pg, scrape};

impl Bench<'_> {
    pub(super) fn start_reader(
        &self,
        slot_prefix: &str,
        topic_prefix: &str,
        sink: Sink,
    ) -> RunningReader {
        let mut cdc = self.config.cdc.clone();
        cdc.slot_prefix = slot_prefix.into();
        cdc.publication = PUBLICATION.into();
        // Confirm often so that the end is seen within a poll, not 500 ms on.
        cdc.status_interval_ms = 50;
        let mut kafka = self.kafka.clone();
        kafka.topic_prefix = topic_prefix.into();
        let shutdown = CancellationToken::new();
        let source = self.source();
        let slot = tributary_model::domain::slot_name(slot_prefix, &source.db, source.shard);
        let handle = match sink {
            Sink::Kafka => tokio::spawn(tributary_cdc::run(
                cdc,
                kafka,
                vec![source],
                shutdown.clone(),
            )),
            Sink::Discard => tokio::spawn(tributary_cdc::run_with::<
                tributary_cdc::sink::DiscardSink,
            >(cdc, kafka, vec![source], shutdown.clone())),
        };
        RunningReader {
            slot,
            shutdown,
            handle,
        }
    }

    /// Times the reader from start until its slot confirms `end`; returns
    /// the seconds and the peak RSS meanwhile.
    pub(super) async fn time_streaming(
        &self,
        client: &tokio_postgres::Client,
        slot_prefix: &str,
        topic_prefix: &str,
        end: Lsn,
        sink: Sink,
    ) -> Result<(f64, Option<u64>, Cpu)> {
        let rss_reset = reset_own_peak_rss();
        let cpu_before = self.cpu_now();
        let started = Instant::now();
        let reader = self.start_reader(slot_prefix, topic_prefix, sink);
        let deadline = started + Duration::from_secs(1800);
        let mut walsender = None;
        loop {
            if walsender.is_none() {
                walsender = client
                    .query_opt(
                        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                        &[&reader.slot],
                    )
                    .await
                    .map_err(pg("reading pg_replication_slots"))?
                    .and_then(|r| r.get::<_, Option<i32>>(0));
            }
            let confirmed: Option<String> = client
                .query_opt(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                    &[&reader.slot],
                )
                .await
                .map_err(pg("reading pg_replication_slots"))?
                .and_then(|r| r.get(0));
            if let Some(c) = confirmed
                && c.parse::<Lsn>()? >= end
            {
                break;
            }
            if reader.handle.is_finished() {
                return Err(reader.stop().await.err().unwrap_or_else(|| {
                    Error::Run(format!("the reader stopped before confirming {end}"))
                }));
            }
            if Instant::now() > deadline {
                return Err(Error::Run(format!(
                    "the reader did not confirm {end} within 30 minutes"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let peak = rss_reset.then(|| own_status_kib("VmHWM")).flatten();
        let mut cpu = self.cpu_now().since(cpu_before);
        // The walsender started with the reader: all its CPU is this run's.
        cpu.walsender = walsender.and_then(|pid| cpu_secs(pid as u32));
        reader.stop().await?;
        Ok((secs, peak, cpu))
    }

    /// CPU seconds so far of this process and of the broker.
    pub(super) fn cpu_now(&self) -> Cpu {
        Cpu {
            reader: own_cpu_secs().unwrap_or(0.0),
            broker: cpu_secs(self.broker_pid).unwrap_or(0.0),
            walsender: None,
        }
    }

    /// Times the reader's snapshot of the loaded table from a fresh slot,
    /// from start until it is recorded complete.
    pub(super) async fn time_snapshot(
        &self,
        client: &tokio_postgres::Client,
        slot_prefix: &str,
        topic_prefix: &str,
        sink: Sink,
    ) -> Result<(f64, Option<u64>, Cpu)> {
        let rss_reset = reset_own_peak_rss();
        let cpu_before = self.cpu_now();
        let started_wall = SystemTime::now();
        let started = Instant::now();
        let reader = self.start_reader(slot_prefix, topic_prefix, sink);
        let completed = wait_snapshot(client, &reader.slot, &reader.handle).await?;
        let peak = rss_reset.then(|| own_status_kib("VmHWM")).flatten();
        let cpu = self.cpu_now().since(cpu_before);
        reader.stop().await?;
        // The completion time is the server's clock on this same machine: no
        // polling interval in the measurement.
        let secs = SystemTime::from(completed)
            .duration_since(started_wall)
            .map(|d| d.as_secs_f64())
            .unwrap_or_else(|_| started.elapsed().as_secs_f64());
        Ok((secs, peak, cpu))
    }
}

pub(super) struct RunningReader {
    pub(super) slot: String,
    shutdown: CancellationToken,
    pub(super) handle: JoinHandle<tributary_cdc::Result<()>>,
}

impl RunningReader {
    /// Stops the reader and returns how it ended.
    pub(super) async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(60), self.handle).await {
            Ok(Ok(r)) => Ok(r?),
            Ok(Err(e)) => Err(Error::Internal(format!("the CDC reader task: {e}"))),
            Err(_) => Err(Error::Run("the CDC reader did not stop within 60 s".into())),
        }
    }
}

/// Waits until the reader reports `slot`'s snapshot complete;
/// returns when, by the server's clock.
pub(super) async fn wait_snapshot(
    client: &tokio_postgres::Client,
    slot: &str,
    reader: &JoinHandle<tributary_cdc::Result<()>>,
) -> Result<chrono::DateTime<chrono::Utc>> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        if let Some(at) = tributary_cdc::slot_status(client, slot)
            .await?
            .snapshot_completed_at
        {
            return Ok(at);
        }
        if reader.is_finished() {
            return Err(Error::Run(
                "the CDC reader stopped before its snapshot completed (see its log above)".into(),
            ));
        }
        if Instant::now() > deadline {
            return Err(Error::Run(format!(
                "the snapshot of slot {slot} did not complete within 30 minutes"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The metrics of this process (its readers'), as Prometheus text.
fn cdc_metrics() -> String {
    tributary_metrics::render()
}

/// The reader's events written so far on the bench table (all ops), from
/// its metrics: the readers run in this process.
pub(super) fn metric_events() -> u64 {
    scrape::sum(
        &cdc_metrics(),
        "tributary_cdc_events_total",
        &[("table", TABLE)],
    ) as u64
}

/// The reader's mean event payload so far, from its metrics.
pub(super) fn mean_event_bytes() -> Option<usize> {
    let metrics = cdc_metrics();
    let sum = |name: &str| scrape::sum(&metrics, name, &[("table", TABLE)]) as u64;
    let (bytes, events) = (
        sum("tributary_cdc_bytes_total"),
        sum("tributary_cdc_events_total"),
    );
    (events > 0).then(|| (bytes / events) as usize)
}
