//! A run from start to end: pins the sources, reads the last run's
//! watermark and chooses the [`Mode`] (incremental, or full and why), finds
//! what changed and registers the inputs, then hands over to the dimensions
//! ([`super::dims`]), the facts ([`super::facts`]), the data tests
//! ([`super::checks`]) and the commits ([`super::commit`]). Also the
//! options a run takes and the report it gives.

use std::fmt;
use std::time::Instant;

use datafusion::prelude::SessionContext;
use tributary_lake::Lake;

use super::checks::{self, DataTestReport};
use super::commit::{self, MartTable};
use super::models::{self, GOLD, SOURCES, TABLES};
use super::session;
use super::watermark::{self, Source, Watermark};
use super::{dims, facts};
use crate::{Error, Result};

/// How to run a build.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Rebuild every table from all of bronze and silver.
    pub full_refresh: bool,
    /// Fault injection for tests: fail the run after this many gold commits
    /// (0 = after the data tests, before the first commit).
    #[doc(hidden)]
    pub fail_after_commits: Option<usize>,
}

/// Why a run was incremental or full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Rebuilt what changed since run `since`.
    Incremental { since: i64 },
    /// Rebuilt everything, for the reason given.
    Full { reason: String },
}

/// What a build read and wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MartsReport {
    /// The run's number, recorded in every gold commit.
    pub run: i64,
    pub mode: Mode,
    /// `(layer.table, version read)`.
    pub sources: Vec<(String, Option<u64>)>,
    /// Gold tables in commit order.
    pub tables: Vec<MartTable>,
    pub tests_passed: usize,
    pub elapsed_ms: u64,
}

impl MartsReport {
    /// Rows in `table` after the build.
    pub fn rows(&self, table: &str) -> Option<usize> {
        self.tables.iter().find(|t| t.name == table).map(|t| t.rows)
    }

    /// Rows the build wrote to `table`.
    pub fn written(&self, table: &str) -> Option<usize> {
        self.tables
            .iter()
            .find(|t| t.name == table)
            .map(|t| t.written)
    }
}

impl fmt::Display for MartsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mode {
            Mode::Incremental { since } => writeln!(
                f,
                "marts run {}: incremental since run {since}, {} ms",
                self.run, self.elapsed_ms
            )?,
            Mode::Full { reason } => writeln!(
                f,
                "marts run {}: full refresh ({reason}), {} ms",
                self.run, self.elapsed_ms
            )?,
        }
        let sources: Vec<String> = self
            .sources
            .iter()
            .map(|(name, v)| {
                format!(
                    "{name}@v{}",
                    v.map_or_else(|| "-".into(), |v| v.to_string())
                )
            })
            .collect();
        writeln!(f, "read: {}", sources.join(", "))?;
        let width = self.tables.iter().map(|t| t.name.len()).max().unwrap_or(0) + "gold.".len();
        for t in &self.tables {
            let name = format!("gold.{}", t.name);
            let version = t.version.map_or_else(|| "?".into(), |v| v.to_string());
            writeln!(
                f,
                "{name:<width$}  {:>10} rows  {:>8} written  (version {version})",
                t.rows, t.written
            )?;
        }
        write!(f, "data tests: {} passed", self.tests_passed)
    }
}

/// Builds the marts incrementally (see the module docs of [`crate::marts`]).
pub async fn build_marts(lake: &Lake) -> Result<MartsReport> {
    build_marts_with(lake, &BuildOptions::default()).await
}

/// Runs the data tests over the gold tables as they are in the lake.
pub async fn test_marts(lake: &Lake) -> Result<DataTestReport> {
    let ctx = session::new()?;
    for s in pin(lake, &["silver"]).await? {
        session::register(&ctx, s.layer, s.table, s.current().await?)?;
    }
    register_gold(&ctx, lake, GOLD).await?;
    checks::run(&ctx).await
}

/// Builds the marts; see [`BuildOptions`].
pub async fn build_marts_with(lake: &Lake, options: &BuildOptions) -> Result<MartsReport> {
    let started = Instant::now();
    let ctx = session::new()?;

    // 1. Pin the sources and read the last run's watermark.
    let mut sources = pin(lake, &["bronze", "silver"]).await?;
    let previous = watermark::read(lake, &TABLES).await?;
    let definition = models::definition_hash();
    let mut mode = match (&previous, options.full_refresh) {
        (_, true) => Mode::Full {
            reason: "--full-refresh".into(),
        },
        (Err(reason), _) => Mode::Full {
            reason: reason.clone(),
        },
        (Ok(w), _) if w.definition != definition => Mode::Full {
            reason: "model definitions changed".into(),
        },
        (Ok(w), _) => Mode::Incremental { since: w.run },
    };
    let run = previous.as_ref().map_or(0, |w| w.run) + 1;

    // 2. What changed since the watermark; a source whose history cannot be
    //    read that far back turns the run into a full refresh.
    if let (Mode::Incremental { .. }, Ok(w)) = (&mode, &previous) {
        for s in &mut sources {
            if let Err(reason) = s.diff(w.version(s.name())).await {
                mode = Mode::Full { reason };
                break;
            }
        }
    }
    let full = matches!(mode, Mode::Full { .. });
    tracing::info!(run, mode = ?mode, "marts run started");
    register_inputs(&ctx, lake, &sources, full).await?;

    // 3. Dimensions, then facts, then the calendar.
    let mut outputs = dims::build(&ctx, full).await?;
    outputs.extend(facts::build(&ctx, full).await?);
    outputs.push(dims::calendar(&ctx).await?);

    // 4. Data tests over the new state; nothing is written when one fails.
    let report = checks::run(&ctx).await?;
    if !report.ok() {
        return Err(Error::DataTests(report));
    }

    // 5. One commit per table, each carrying the run's watermark.
    let watermark = Watermark {
        run,
        definition,
        versions: sources
            .iter()
            .filter_map(|s| s.version().map(|v| (s.name(), v as i64)))
            .collect(),
    };
    let tables =
        commit::commit_all(lake, outputs, full, &watermark, options.fail_after_commits).await?;
    let report = MartsReport {
        run,
        mode,
        sources: sources.iter().map(|s| (s.name(), s.version())).collect(),
        tables,
        tests_passed: report.passed,
        elapsed_ms: started.elapsed().as_millis() as u64,
    };
    tracing::info!(run, elapsed_ms = report.elapsed_ms, "marts built");
    Ok(report)
}

/// The source tables of `layers` at their current versions; a required one
/// that does not exist is an error.
/// The current version of every table the marts read, as a run's report
/// names them.
pub async fn source_versions(lake: &Lake) -> Result<Vec<(String, Option<u64>)>> {
    Ok(pin(lake, &["bronze", "silver"])
        .await?
        .iter()
        .map(|s| (s.name(), s.version()))
        .collect())
}

/// Builds the marts whenever a table they read has a new version, checked
/// every `every`, until `shutdown`: gold trails the lake by a round and a
/// build instead of a schedule. Each build is incremental, so its work
/// grows with the change, not with the tables. `on_run` sees every report.
/// A transient failure (store unavailable, a concurrent commit) is logged
/// and the round is tried again; any other stops it.
pub async fn follow_marts(
    lake: &Lake,
    options: &BuildOptions,
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
    mut on_run: impl FnMut(&MartsReport),
) -> Result<()> {
    let mut built: Option<Vec<(String, Option<u64>)>> = None;
    let mut first = options.clone();
    // A failure that repeats round after round is logged once.
    let mut last_error: Option<String> = None;
    loop {
        let round = async {
            let now = source_versions(lake).await?;
            if built.as_ref() == Some(&now) {
                return Ok(None);
            }
            let report = build_marts_with(lake, &first).await?;
            Ok::<_, Error>(Some((now, report)))
        };
        match round.await {
            Ok(Some((versions, report))) => {
                last_error = None;
                on_run(&report);
                // The build read these versions or newer ones; the next
                // round rebuilds only if something moved since.
                built = Some(versions);
                first.full_refresh = false;
            }
            Ok(None) => {}
            Err(e) if e.is_transient() || matches!(e, Error::MissingSource { .. }) => {
                let text = tributary_model::error_chain(&e);
                if last_error.as_ref() != Some(&text) {
                    tracing::warn!(error = %text, "marts round failed; trying again each round");
                    last_error = Some(text);
                }
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
    }
}

async fn pin(lake: &Lake, layers: &[&str]) -> Result<Vec<Source>> {
    let mut sources = Vec::new();
    for (layer, table, required) in SOURCES {
        if !layers.contains(layer) {
            continue;
        }
        let t = session::open(lake, layer, table).await?;
        if t.is_none() && *required {
            return Err(Error::MissingSource { layer, table });
        }
        sources.push(Source::new(layer, table, t));
    }
    Ok(sources)
}

/// Registers what the models read: `bronze.*` and its new rows as `new.*`,
/// `silver.*` and its changed ids as `changed.*`, gold as the last run left
/// it as `prev.*` (incremental runs), and `stage.orders`.
async fn register_inputs(
    ctx: &SessionContext,
    lake: &Lake,
    sources: &[Source],
    full: bool,
) -> Result<()> {
    for s in sources {
        session::register(ctx, s.layer, s.table, s.current().await?)?;
        match s.layer {
            "bronze" => session::register(ctx, "new", s.table, s.added(full).await?)?,
            _ => session::register(ctx, "changed", s.table, s.changed(full).await?)?,
        }
    }
    if !full {
        register_gold(ctx, lake, "prev").await?;
    }
    let (schema, orders) = session::sql(ctx, "stage.orders", models::STAGE_ORDERS).await?;
    session::register_batches(ctx, "stage", "orders", schema, orders)
}

/// Registers every gold table as it is in the lake as `<schema>.*`.
async fn register_gold(ctx: &SessionContext, lake: &Lake, schema: &str) -> Result<()> {
    for table in TABLES {
        let t = session::open(lake, GOLD, table)
            .await?
            .ok_or(Error::MissingSource { layer: GOLD, table })?;
        session::register(ctx, schema, table, session::provider(&t, table).await?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lists_tables_with_rows() {
        let report = MartsReport {
            run: 2,
            mode: Mode::Incremental { since: 1 },
            sources: vec![("silver.orders".into(), Some(3))],
            tables: vec![MartTable {
                name: "dim_date",
                rows: 4,
                written: 1,
                version: Some(0),
            }],
            tests_passed: 30,
            elapsed_ms: 5,
        };
        let text = report.to_string();
        assert!(text.contains("incremental since run 1"), "{text}");
        assert!(text.contains("silver.orders@v3"), "{text}");
        assert!(text.contains("gold.dim_date"), "{text}");
        assert!(text.contains("4 rows"), "{text}");
    }
}
