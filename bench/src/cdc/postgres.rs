//! The PostgreSQL side of the CDC bench: the write load, pg_recvlogical,
//! COPY, and the scratch database's slots.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::{StreamExt, pin_mut};
use tributary_cdc::decode::{PgOutput, decode};
use tributary_model::lsn::Lsn;

use super::{Bench, DATABASE, LOAD_TX_ROWS, PUBLICATION, TABLE};
use crate::{Error, Result, io, pg};

/// Ids 1 to `last` in ranges of [`LOAD_TX_ROWS`], one transaction each:
/// `(first, last)` of each range, both included.
fn id_ranges(last: i64) -> impl Iterator<Item = (i64, i64)> {
    let step = LOAD_TX_ROWS as i64;
    (1..=last)
        .step_by(LOAD_TX_ROWS as usize)
        .map(move |from| (from, (from + step - 1).min(last)))
}

impl Bench<'_> {
    /// Writes the backlog: `rows` inserts, then updates of the first half,
    /// in large transactions. Returns the WAL positions before and after.
    pub(super) async fn load(&self, client: &tokio_postgres::Client) -> Result<(Lsn, Lsn)> {
        let start = current_lsn(client).await?;
        let rows = self.options.rows as i64;
        for (from, to) in id_ranges(rows) {
            client
                .execute(
                    &format!(
                        "INSERT INTO {TABLE}
                         SELECT g, 1 + g % 10007,
                                (ARRAY['pending','paid','shipped','delivered'])[1 + g % 4],
                                'USD', 1 + (g % 7)::int, (g % 100000) / 100.0,
                                CASE WHEN g % 5 = 0 THEN 5.00 END,
                                timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second',
                                now()
                         FROM generate_series($1::int8, $2::int8) g"
                    ),
                    &[&from, &to],
                )
                .await
                .map_err(pg("inserting the backlog"))?;
        }
        for (from, to) in id_ranges(rows / 2) {
            client
                .execute(
                    &format!(
                        "UPDATE {TABLE} SET status = 'shipped', quantity = quantity + 1,
                                total = total + 1, updated_at = now()
                         WHERE id BETWEEN $1 AND $2"
                    ),
                    &[&from, &to],
                )
                .await
                .map_err(pg("updating the backlog"))?;
        }
        Ok((start, current_lsn(client).await?))
    }

    /// Times pg_recvlogical from start until it exits at `end`.
    pub(super) async fn time_recvlogical(&self, bin: &Path, slot: &str, end: Lsn) -> Result<f64> {
        let output = self
            .options
            .recvlogical_output
            .clone()
            .unwrap_or_else(|| PathBuf::from("/dev/null"));
        if self.options.recvlogical_output.is_some() {
            // pg_recvlogical appends: each run counts its own output.
            std::fs::File::create(&output).map_err(io(format!("emptying {}", output.display())))?;
        }
        let started = Instant::now();
        let out = tokio::process::Command::new(bin)
            .arg("-d")
            .arg(&self.dsn)
            .args(["--slot", slot, "--start", "--no-loop"])
            .arg(format!("--endpos={end}"))
            .args(["-o", "proto_version=1"])
            .arg("-o")
            .arg(format!("publication_names={PUBLICATION}"))
            // No fsync: the point is the protocol's rate, and /dev/null
            // cannot be synced.
            .args(["-F", "0", "-f"])
            .arg(&output)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(1800), out)
            .await
            .map_err(|_| {
                Error::Run("pg_recvlogical did not reach the end position within 30 minutes".into())
            })?
            .map_err(io(format!("running {}", bin.display())))?;
        let secs = started.elapsed().as_secs_f64();
        if !out.status.success() {
            return Err(Error::Run(format!(
                "pg_recvlogical failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(secs)
    }
}

/// Times `COPY … TO STDOUT` of the bench table, reading every byte.
pub(super) async fn time_copy(client: &tokio_postgres::Client) -> Result<(f64, u64)> {
    let started = Instant::now();
    let stream = client
        .copy_out(&format!("COPY public.{TABLE} TO STDOUT"))
        .await
        .map_err(pg("COPY"))?;
    pin_mut!(stream);
    // COPY text escapes newlines inside values: one newline per row.
    let mut rows = 0u64;
    while let Some(chunk) = stream.next().await {
        rows += chunk
            .map_err(pg("COPY"))?
            .iter()
            .filter(|b| **b == b'\n')
            .count() as u64;
    }
    Ok((started.elapsed().as_secs_f64(), rows))
}

pub(super) async fn current_lsn(client: &tokio_postgres::Client) -> Result<Lsn> {
    let lsn: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(pg("reading the WAL position"))?
        .get(0);
    Ok(lsn.parse()?)
}

/// Drops the bench's slots, stopping whoever still streams from them (a
/// pg_recvlogical or reader left over by an interrupted bench).
pub(super) async fn drop_slots(client: &tokio_postgres::Client) -> Result<()> {
    for attempt in 0.. {
        let rows = client
            .query(
                "SELECT slot_name::text, active_pid FROM pg_replication_slots WHERE database = $1",
                &[&DATABASE],
            )
            .await
            .map_err(pg("reading pg_replication_slots"))?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut last_error = None;
        for row in rows {
            let (slot, pid): (String, Option<i32>) = (row.get(0), row.get(1));
            if let Some(pid) = pid {
                let _ = client
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await;
                continue;
            }
            if let Err(e) = client
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await
            {
                last_error = Some(e);
            }
        }
        if attempt == 100 {
            return Err(match last_error {
                Some(e) => pg("dropping the bench's slots")(e),
                None => Error::Run("dropping the bench's slots: they stay active".into()),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!("the loop returns")
}

/// Drops the scratch database and its slots, if any.
pub(super) async fn drop_scratch(admin: &tokio_postgres::Client) -> Result<()> {
    drop_slots(admin).await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
        .await
        .map_err(pg("dropping the bench database"))
}

/// Messages in pgoutput output, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PgOutputCounts {
    pub inserts: u64,
    pub updates: u64,
    pub deletes: u64,
    pub commits: u64,
}

impl PgOutputCounts {
    pub fn changes(&self) -> u64 {
        self.inserts + self.updates + self.deletes
    }
}

/// Counts the messages in pg_recvlogical's pgoutput output. It writes a
/// newline after each message, but a message may itself hold newline bytes:
/// a message ends at the first newline before which it decodes completely
/// (a strict prefix never does: the decoder wants every announced byte and
/// refuses trailing ones).
pub fn count_pgoutput_changes(out: &[u8]) -> Result<PgOutputCounts> {
    let mut counts = PgOutputCounts::default();
    let mut start = 0;
    while start < out.len() {
        let mut search = start;
        loop {
            let nl = out[search..]
                .iter()
                .position(|b| *b == b'\n')
                .map(|p| search + p)
                .ok_or_else(|| {
                    Error::Run(format!("pgoutput message at byte {start} does not decode"))
                })?;
            if let Ok(msg) = decode(&out[start..nl].to_vec().into()) {
                match msg {
                    PgOutput::Insert { .. } => counts.inserts += 1,
                    PgOutput::Update { .. } => counts.updates += 1,
                    PgOutput::Delete { .. } => counts.deletes += 1,
                    PgOutput::Commit { .. } => counts.commits += 1,
                    _ => {}
                }
                start = nl + 1;
                break;
            }
            search = nl + 1;
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_ranges_cover_every_id_once_in_transaction_sized_ranges() {
        let step = LOAD_TX_ROWS as i64;
        let ranges: Vec<_> = id_ranges(2 * step + 3).collect();
        assert_eq!(
            ranges,
            [
                (1, step),
                (step + 1, 2 * step),
                (2 * step + 1, 2 * step + 3)
            ]
        );
        assert_eq!(id_ranges(0).count(), 0);
    }

    fn message(tag: u8, body: &[&[u8]]) -> Vec<u8> {
        let mut m = vec![tag];
        for part in body {
            m.extend_from_slice(part);
        }
        m
    }

    #[test]
    fn counts_messages_that_contain_newlines() {
        let text = |s: &[u8]| {
            let mut v = vec![b't'];
            v.extend_from_slice(&(s.len() as i32).to_be_bytes());
            v.extend_from_slice(s);
            v
        };
        // A final LSN and a relation id made of newline bytes.
        let begin = message(
            b'B',
            &[
                &0x0a0a_u64.to_be_bytes(),
                &0i64.to_be_bytes(),
                &7u32.to_be_bytes(),
            ],
        );
        let tuple = [&1i16.to_be_bytes()[..], &text(b"a\nb\n")].concat();
        let insert = message(b'I', &[&0x0a_u32.to_be_bytes(), b"N", &tuple]);
        let update = message(b'U', &[&0x0a_u32.to_be_bytes(), b"N", &tuple]);
        let commit = message(
            b'C',
            &[
                &[0],
                &0x0a_u64.to_be_bytes(),
                &0x0a0a_u64.to_be_bytes(),
                &0i64.to_be_bytes(),
            ],
        );
        let mut out = Vec::new();
        for m in [&begin, &insert, &insert, &update, &commit] {
            out.extend_from_slice(m);
            out.push(b'\n');
        }
        let counts = count_pgoutput_changes(&out).unwrap();
        assert_eq!(
            counts,
            PgOutputCounts {
                inserts: 2,
                updates: 1,
                deletes: 0,
                commits: 1
            }
        );
        // A cut-off message is an error, not a smaller count.
        assert!(count_pgoutput_changes(&out[..out.len() - 3]).is_err());
    }
}
