//! `tributary capacity`: how many shards, partitions, readers, ingesters
//! and query replicas a load needs, and how much storage per day, from the
//! per-core rates the benchmarks measured (`docs/capacity-rates.toml`,
//! rewritten by `tributary bench lake --rates` and `tributary bench query
//! --rates`). `docs/capacity.md` explains the model and works one example
//! by hand; the test below checks the arithmetic against it.
//!
//! The model sizes every part for the peak (the average times
//! `peak_factor`) at a target utilisation (`utilization`: 0.6 leaves 40 %
//! headroom for what the benchmarks did not see), and storage for the
//! average. Each figure comes with the formula that produced it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The rates file shipped with the binary (the repository's
/// `docs/capacity-rates.toml` at build time).
pub const SHIPPED_RATES: &str = include_str!("../../docs/capacity-rates.toml");

/// What the benchmarks measured, and what the model assumes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rates {
    pub pipeline: PipelineRates,
    pub query: QueryRates,
    pub assumed: Assumed,
}

/// From `tributary bench lake`: the whole pipeline under a steady load.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineRates {
    /// How the figures were measured (command, commit, build, machine,
    /// load average, date).
    pub source: String,
    /// Row changes per order of the load (an order, its lines, a payment,
    /// status updates).
    pub changes_per_order: f64,
    /// Row changes per CPU second of the PostgreSQL clusters (backends,
    /// WAL writer, the walsenders that decode for the CDC reader).
    pub postgres_changes_per_core_second: f64,
    /// Row changes per CPU second of `tributary cdc run`.
    pub cdc_changes_per_core_second: f64,
    /// Row changes per CPU second of `tributary lake ingest`.
    pub ingest_changes_per_core_second: f64,
    /// Row changes per CPU second of the local broker (tansu; MSK's brokers
    /// are sized by bytes instead, see `kafka_bytes_per_change`).
    pub broker_changes_per_core_second: f64,
    /// Payload bytes per change event in Kafka (one copy).
    pub kafka_bytes_per_change: f64,
    /// Bytes of bronze (Parquet, compressed) per change.
    pub bronze_bytes_per_change: f64,
    /// Bytes of silver per change that added a row (current state grows by
    /// inserts; updates replace).
    pub silver_bytes_per_change: f64,
    /// Share of all changes per table (the busiest table bounds one
    /// ingester: a table is written by one lease holder).
    pub table_share: BTreeMap<String, f64>,
}

/// From `tributary bench query`: the star queries, hot.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRates {
    pub source: String,
    /// Core seconds per analyst query (an SSB SF1 query's mean time times
    /// the cores it ran on).
    pub core_seconds_per_query: f64,
}

/// Planning constants the benchmarks cannot measure here, each with its
/// reason in the file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assumed {
    /// Change events per second one partition of a topic takes.
    pub partition_changes_per_second: f64,
    /// Cores of one shard instance, one ingester pod, one query replica,
    /// one CDC reader pod.
    pub shard_cores: f64,
    pub ingester_cores: f64,
    pub query_replica_cores: f64,
    pub cdc_cores: f64,
    /// Copies of each Kafka partition.
    pub kafka_replication: f64,
}

impl Rates {
    /// The shipped rates.
    pub fn shipped() -> Result<Rates> {
        Rates::parse(SHIPPED_RATES, "the shipped docs/capacity-rates.toml")
    }

    pub fn parse(text: &str, origin: &str) -> Result<Rates> {
        let rates: Rates =
            toml::from_str(text).map_err(|e| Error::Options(format!("{origin}: {e}")))?;
        rates.check(origin)?;
        Ok(rates)
    }

    pub fn load(path: &Path) -> Result<Rates> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            context: format!("reading {}", path.display()),
            source,
        })?;
        Rates::parse(&text, &path.display().to_string())
    }

    fn check(&self, origin: &str) -> Result<()> {
        let p = &self.pipeline;
        let a = &self.assumed;
        for (name, v) in [
            ("pipeline.changes_per_order", p.changes_per_order),
            (
                "pipeline.postgres_changes_per_core_second",
                p.postgres_changes_per_core_second,
            ),
            (
                "pipeline.cdc_changes_per_core_second",
                p.cdc_changes_per_core_second,
            ),
            (
                "pipeline.ingest_changes_per_core_second",
                p.ingest_changes_per_core_second,
            ),
            (
                "query.core_seconds_per_query",
                self.query.core_seconds_per_query,
            ),
            (
                "assumed.partition_changes_per_second",
                a.partition_changes_per_second,
            ),
            ("assumed.shard_cores", a.shard_cores),
            ("assumed.ingester_cores", a.ingester_cores),
            ("assumed.query_replica_cores", a.query_replica_cores),
            ("assumed.cdc_cores", a.cdc_cores),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::Options(format!(
                    "{origin}: {name} must be a positive number, not {v}"
                )));
            }
        }
        Ok(())
    }

    /// Rewrites `path` with `pipeline` measured anew, keeping the rest.
    pub fn record_pipeline(path: &Path, pipeline: PipelineRates) -> Result<()> {
        let mut rates = Rates::load(path)?;
        rates.pipeline = pipeline;
        rates.save(path)
    }

    /// Rewrites `path` with `query` measured anew, keeping the rest.
    pub fn record_query(path: &Path, query: QueryRates) -> Result<()> {
        let mut rates = Rates::load(path)?;
        rates.query = query;
        rates.save(path)
    }

    fn save(&self, path: &Path) -> Result<()> {
        let body = toml::to_string_pretty(self)
            .map_err(|e| Error::Options(format!("writing {}: {e}", path.display())))?;
        let text = format!(
            "# Rates for `tributary capacity` (docs/capacity.md). [pipeline] is\n\
             # rewritten by `tributary bench lake --rates <this file>`, [query] by\n\
             # `tributary bench query --rates <this file>`; [assumed] is edited by\n\
             # hand, each value with its reason in docs/capacity.md.\n\n{body}"
        );
        std::fs::write(path, text).map_err(|source| Error::Io {
            context: format!("writing {}", path.display()),
            source,
        })
    }
}

/// The load to plan for.
#[derive(Clone, Debug, Serialize)]
pub struct Load {
    /// Orders per second on an average day.
    pub orders_per_sec: f64,
    /// Days of data to hold in the lake.
    pub days: f64,
    /// Peak over average (a promotion day: 10).
    pub peak_factor: f64,
    /// Share of each part's capacity the peak may use (0.6: 40 % headroom).
    pub utilization: f64,
    /// Analyst queries per second at the peak.
    pub queries_per_sec: f64,
    /// Days the change topics keep their events.
    pub kafka_retention_days: f64,
}

impl Load {
    pub fn check(&self) -> Result<()> {
        for (name, v) in [
            ("--orders-per-sec", self.orders_per_sec),
            ("--days", self.days),
            ("--peak-factor", self.peak_factor),
            ("--queries-per-sec", self.queries_per_sec),
            ("--kafka-retention-days", self.kafka_retention_days),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::Options(format!(
                    "{name} must be a number ≥ 0, not {v}"
                )));
            }
        }
        if !(self.utilization > 0.0 && self.utilization <= 1.0) {
            return Err(Error::Options(format!(
                "--utilization must be in (0, 1], not {}",
                self.utilization
            )));
        }
        if self.peak_factor < 1.0 {
            return Err(Error::Options(format!(
                "--peak-factor must be at least 1, not {}",
                self.peak_factor
            )));
        }
        Ok(())
    }
}

/// One figure of the plan and how it was reached.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub part: &'static str,
    pub value: f64,
    pub unit: &'static str,
    pub how: String,
}

/// The answer.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub load: Load,
    pub changes_per_sec: f64,
    pub peak_changes_per_sec: f64,
    pub shards: u64,
    pub readers: u64,
    pub cdc_processes: u64,
    pub partitions_per_topic: u64,
    pub ingesters: u64,
    pub query_replicas: u64,
    pub kafka_gb: f64,
    pub lake_gb_per_day: f64,
    pub lake_gb_total: f64,
    pub figures: Vec<Figure>,
    /// Limits the load runs into (a table too busy for one ingester).
    pub warnings: Vec<String>,
    pub rates_source: String,
}

const GB: f64 = 1e9;

fn ceil(x: f64) -> u64 {
    // Guard against 2.0000000001 from float noise.
    (x - 1e-9).ceil().max(0.0) as u64
}

/// Plans for `load` with `rates`.
pub fn plan(load: &Load, rates: &Rates) -> Result<Plan> {
    load.check()?;
    let p = &rates.pipeline;
    let a = &rates.assumed;
    let u = load.utilization;
    let c = load.orders_per_sec * p.changes_per_order;
    let peak = c * load.peak_factor;
    let mut figures = Vec::new();
    let mut warnings = Vec::new();

    // Shards: PostgreSQL CPU for the peak's writes (and their decoding).
    let pg_cores = peak / (p.postgres_changes_per_core_second * u);
    let shards = ceil(pg_cores / a.shard_cores).max(1);
    figures.push(Figure {
        part: "order shards",
        value: shards as f64,
        unit: "",
        how: format!(
            "{peak:.0} changes/s at peak / ({:.0} changes per PostgreSQL core-second × {u}) = {pg_cores:.2} cores, / {} cores per shard",
            p.postgres_changes_per_core_second, a.shard_cores
        ),
    });

    // Readers: one replication slot (one reader) per shard database and
    // one for the catalog, in as many CDC processes as their CPU needs.
    let readers = shards + 1;
    let cdc_cores = peak / (p.cdc_changes_per_core_second * u);
    let cdc_processes = ceil(cdc_cores / a.cdc_cores).max(1);
    figures.push(Figure {
        part: "CDC readers (slots)",
        value: readers as f64,
        unit: "",
        how: format!("one per shard database + one for the catalog; {cdc_cores:.2} cores at peak ({peak:.0} / ({:.0} × {u})) in {cdc_processes} process(es) of {} cores", p.cdc_changes_per_core_second, a.cdc_cores),
    });

    // Partitions: the busiest topic's peak over what one partition takes,
    // never fewer than the default 3.
    let busiest = p
        .table_share
        .iter()
        .max_by(|x, y| x.1.total_cmp(y.1))
        .map(|(t, s)| (t.clone(), *s))
        .unwrap_or_else(|| ("all".into(), 1.0));
    let busiest_peak = peak * busiest.1;
    let partitions = ceil(busiest_peak / a.partition_changes_per_second).max(3);
    figures.push(Figure {
        part: "partitions per topic",
        value: partitions as f64,
        unit: "",
        how: format!(
            "busiest topic ({}, {:.0} % of changes) at peak: {busiest_peak:.0} changes/s / {:.0} per partition, at least 3",
            busiest.0,
            busiest.1 * 100.0,
            a.partition_changes_per_second
        ),
    });

    // Ingesters: CPU for the peak, at least two (the second is the hot
    // standby of every table's lease).
    let ingest_cores = peak / (p.ingest_changes_per_core_second * u);
    let ingesters = ceil(ingest_cores / a.ingester_cores).max(2);
    figures.push(Figure {
        part: "ingesters",
        value: ingesters as f64,
        unit: "",
        how: format!(
            "{peak:.0} / ({:.0} changes per ingest core-second × {u}) = {ingest_cores:.2} cores, / {} cores each, at least 2 (hot standby)",
            p.ingest_changes_per_core_second, a.ingester_cores
        ),
    });
    let one_ingester = p.ingest_changes_per_core_second * a.ingester_cores * u;
    if busiest_peak > one_ingester {
        warnings.push(format!(
            "{} alone needs {busiest_peak:.0} changes/s at peak, more than one ingester takes ({one_ingester:.0}/s): a table is written by one lease holder, so this load needs per-partition leases or a larger ingester",
            busiest.0
        ));
    }

    // Query replicas: core-seconds of the peak's queries.
    let q_cores = load.queries_per_sec * rates.query.core_seconds_per_query / u;
    let query_replicas = ceil(q_cores / a.query_replica_cores).max(2);
    figures.push(Figure {
        part: "query replicas",
        value: query_replicas as f64,
        unit: "",
        how: format!(
            "{} queries/s × {:.3} core-s each / {u} = {q_cores:.2} cores, / {} cores each, at least 2",
            load.queries_per_sec, rates.query.core_seconds_per_query, a.query_replica_cores
        ),
    });

    // Storage, for the average day.
    let day = 86_400.0;
    let kafka_gb =
        c * day * load.kafka_retention_days * p.kafka_bytes_per_change * a.kafka_replication / GB;
    figures.push(Figure {
        part: "Kafka storage",
        value: kafka_gb,
        unit: "GB",
        how: format!(
            "{c:.0} changes/s × 86,400 s × {} days × {:.0} B × {} copies",
            load.kafka_retention_days, p.kafka_bytes_per_change, a.kafka_replication
        ),
    });
    let bronze_day = c * day * p.bronze_bytes_per_change / GB;
    let silver_day = c * day * p.silver_bytes_per_change / GB;
    let lake_gb_per_day = bronze_day + silver_day;
    figures.push(Figure {
        part: "lake growth per day",
        value: lake_gb_per_day,
        unit: "GB",
        how: format!(
            "{c:.0} changes/s × 86,400 s × ({:.1} B bronze + {:.1} B silver) per change",
            p.bronze_bytes_per_change, p.silver_bytes_per_change
        ),
    });
    let lake_gb_total = lake_gb_per_day * load.days;
    figures.push(Figure {
        part: "lake after the period",
        value: lake_gb_total,
        unit: "GB",
        how: format!(
            "{lake_gb_per_day:.2} GB/day × {} days (gold is small beside them)",
            load.days
        ),
    });

    Ok(Plan {
        load: load.clone(),
        changes_per_sec: c,
        peak_changes_per_sec: peak,
        shards,
        readers,
        cdc_processes,
        partitions_per_topic: partitions,
        ingesters,
        query_replicas,
        kafka_gb,
        lake_gb_per_day,
        lake_gb_total,
        figures,
        warnings,
        rates_source: format!("{}; {}", p.source, rates.query.source),
    })
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.load;
        writeln!(
            f,
            "capacity for {} orders/s ({:.0} row changes/s), peak ×{} ({:.0} changes/s), {} days, utilisation {} at peak",
            l.orders_per_sec,
            self.changes_per_sec,
            l.peak_factor,
            self.peak_changes_per_sec,
            l.days,
            l.utilization
        )?;
        writeln!(f)?;
        writeln!(f, "| part | need | how |")?;
        writeln!(f, "|---|---:|---|")?;
        for fig in &self.figures {
            let value = if fig.unit.is_empty() {
                format!("{:.0}", fig.value)
            } else {
                format!("{:.1} {}", fig.value, fig.unit)
            };
            writeln!(f, "| {} | {value} | {} |", fig.part, fig.how)?;
        }
        for w in &self.warnings {
            writeln!(f, "\nlimit: {w}")?;
        }
        writeln!(f, "\nrates: {}", self.rates_source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of docs/capacity.md.
    fn example_rates() -> Rates {
        Rates {
            pipeline: PipelineRates {
                source: "example".into(),
                changes_per_order: 5.0,
                postgres_changes_per_core_second: 4_000.0,
                cdc_changes_per_core_second: 50_000.0,
                ingest_changes_per_core_second: 10_000.0,
                broker_changes_per_core_second: 7_000.0,
                kafka_bytes_per_change: 900.0,
                bronze_bytes_per_change: 120.0,
                silver_bytes_per_change: 80.0,
                table_share: [
                    ("order_items".to_string(), 0.4),
                    ("orders".to_string(), 0.3),
                ]
                .into_iter()
                .collect(),
            },
            query: QueryRates {
                source: "example".into(),
                core_seconds_per_query: 0.5,
            },
            assumed: Assumed {
                partition_changes_per_second: 5_000.0,
                shard_cores: 4.0,
                ingester_cores: 2.0,
                query_replica_cores: 2.0,
                cdc_cores: 2.0,
                kafka_replication: 3.0,
            },
        }
    }

    fn example_load() -> Load {
        Load {
            orders_per_sec: 1_000.0,
            days: 30.0,
            peak_factor: 10.0,
            utilization: 0.6,
            queries_per_sec: 4.0,
            kafka_retention_days: 7.0,
        }
    }

    #[test]
    fn the_worked_example_of_the_docs() {
        let plan = plan(&example_load(), &example_rates()).unwrap();
        // 1,000 orders/s × 5 = 5,000 changes/s; ×10 = 50,000 at peak.
        assert_eq!(plan.changes_per_sec, 5_000.0);
        assert_eq!(plan.peak_changes_per_sec, 50_000.0);
        // 50,000 / (4,000 × 0.6) = 20.83 cores → / 4 = 5.2 → 6 shards.
        assert_eq!(plan.shards, 6);
        assert_eq!(plan.readers, 7);
        // 50,000 / (50,000 × 0.6) = 1.67 cores → one 2-core process.
        assert_eq!(plan.cdc_processes, 1);
        // order_items: 40 % of 50,000 = 20,000 / 5,000 = 4 partitions.
        assert_eq!(plan.partitions_per_topic, 4);
        // 50,000 / (10,000 × 0.6) = 8.33 cores → / 2 = 4.17 → 5 ingesters.
        assert_eq!(plan.ingesters, 5);
        // One ingester takes 10,000 × 2 × 0.6 = 12,000/s < 20,000/s.
        assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
        assert!(plan.warnings[0].starts_with("order_items alone needs 20000"));
        // 4 × 0.5 / 0.6 = 3.33 cores → / 2 = 1.67 → at least 2 replicas.
        assert_eq!(plan.query_replicas, 2);
        // 5,000 × 86,400 × 7 × 900 × 3 / 1e9 = 8,164.8 GB.
        assert!((plan.kafka_gb - 8_164.8).abs() < 1e-6, "{}", plan.kafka_gb);
        // 5,000 × 86,400 × 200 / 1e9 = 86.4 GB/day; × 30 = 2,592 GB.
        assert!((plan.lake_gb_per_day - 86.4).abs() < 1e-9);
        assert!((plan.lake_gb_total - 2_592.0).abs() < 1e-6);
    }

    #[test]
    fn a_small_load_keeps_the_floors() {
        let mut load = example_load();
        load.orders_per_sec = 1.0;
        load.queries_per_sec = 0.0;
        let plan = plan(&load, &example_rates()).unwrap();
        assert_eq!(
            (
                plan.shards,
                plan.partitions_per_topic,
                plan.ingesters,
                plan.query_replicas
            ),
            (1, 3, 2, 2)
        );
        assert!(plan.warnings.is_empty());
    }

    #[test]
    fn bad_input_is_named() {
        let mut load = example_load();
        load.utilization = 1.5;
        let err = plan(&load, &example_rates()).unwrap_err().to_string();
        assert!(err.contains("--utilization"), "{err}");
        let mut rates = example_rates();
        rates.pipeline.ingest_changes_per_core_second = 0.0;
        let text = toml::to_string(&rates).unwrap();
        let err = Rates::parse(&text, "r.toml").unwrap_err().to_string();
        assert!(
            err.contains("r.toml") && err.contains("ingest_changes_per_core_second"),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_rates_parse_and_round_trip() {
        let rates = Rates::shipped().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rates.toml");
        std::fs::write(&path, SHIPPED_RATES).unwrap();
        let mut pipeline = rates.pipeline.clone();
        pipeline.cdc_changes_per_core_second = 12_345.0;
        Rates::record_pipeline(&path, pipeline).unwrap();
        let again = Rates::load(&path).unwrap();
        assert_eq!(again.pipeline.cdc_changes_per_core_second, 12_345.0);
        assert_eq!(
            again.query.core_seconds_per_query,
            rates.query.core_seconds_per_query
        );
    }
}
