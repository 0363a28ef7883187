//! `tributary etl …`: the warehouse jobs.

use anyhow::Result;
use tributary_stack::{Config, Platform};

use crate::args::{EtlCommand, EtlTarget, ProfileEngine};
use tributary_etl::profile::{self, Engine, ProfileOptions};

pub async fn run(config: Config, command: EtlCommand) -> Result<()> {
    match command {
        EtlCommand::Run {
            target: EtlTarget::RiskProfile,
            engine,
            as_of,
            ..
        } => {
            let lake = Platform::load(config)?.lake()?;
            let as_of = as_of
                .map(|t| {
                    chrono::DateTime::parse_from_rfc3339(&t)
                        .map(|t| t.to_utc())
                        .map_err(|e| {
                            anyhow::anyhow!(
                                "--as-of {t:?}: {e} (expected RFC 3339, e.g. 2026-12-01T00:00:00Z)"
                            )
                        })
                })
                .transpose()?;
            let options = ProfileOptions {
                engine: match engine {
                    ProfileEngine::Polars => Engine::Polars,
                    ProfileEngine::Datafusion => Engine::DataFusion,
                },
                as_of,
            };
            println!("{}", profile::build_risk_profile(&lake, &options).await?);
        }
        EtlCommand::Run {
            target: EtlTarget::Marts,
            full_refresh,
            follow: true,
            every,
            ..
        } => {
            let lake = Platform::load(config)?.lake()?;
            let options = tributary_etl::BuildOptions {
                full_refresh,
                ..Default::default()
            };
            let every = tributary::parse_duration(&every)?;
            let shutdown = tributary::shutdown_on_signals();
            eprintln!(
                "following bronze and silver: the marts are built whenever they move (Ctrl-C stops)"
            );
            tributary_etl::follow_marts(&lake, &options, every, shutdown, |report| {
                println!("{}", report.to_string().lines().next().unwrap_or(""));
            })
            .await?;
        }
        EtlCommand::Run {
            target: EtlTarget::Marts,
            full_refresh,
            ..
        } => {
            let lake = Platform::load(config)?.lake()?;
            let options = tributary_etl::BuildOptions {
                full_refresh,
                ..Default::default()
            };
            let report = tributary_etl::build_marts_with(&lake, &options).await?;
            println!("{report}");
        }
        EtlCommand::List => {
            for m in tributary_etl::models() {
                println!(
                    "{:<24} {:<5} <- {}\n{:<30} {}",
                    m.name,
                    m.kind.as_str(),
                    m.depends_on.join(", "),
                    "",
                    m.grain
                );
            }
        }
        EtlCommand::Test {
            target: EtlTarget::Marts,
        } => {
            let lake = Platform::load(config)?.lake()?;
            let report = tributary_etl::test_marts(&lake).await?;
            println!("{report}");
            anyhow::ensure!(report.ok(), "data tests failed");
        }
        EtlCommand::Test {
            target: EtlTarget::RiskProfile,
        } => {
            let lake = Platform::load(config)?.lake()?;
            let inputs = profile::Inputs::open(&lake, chrono::Utc::now()).await?;
            let polars = profile::compute(&inputs, Engine::Polars).await?;
            let reference = profile::compute(&inputs, Engine::DataFusion).await?;
            let differ = polars.len() != reference.len()
                || polars.iter().zip(&reference).any(|(a, b)| !a.same_as(b));
            anyhow::ensure!(
                !differ,
                "polars and DataFusion disagree: {} and {} profiles",
                polars.len(),
                reference.len()
            );
            println!(
                "risk profiles: polars and DataFusion agree on {} customers",
                polars.len()
            );
        }
    }
    Ok(())
}
