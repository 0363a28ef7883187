//! `tributary etl …`: the warehouse jobs.

use anyhow::Result;
use tributary_stack::{Config, Platform};

use crate::args::{EtlCommand, EtlTarget};

pub async fn run(config: Config, command: EtlCommand) -> Result<()> {
    match command {
        EtlCommand::Run {
            target: EtlTarget::Marts,
            full_refresh,
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
    }
    Ok(())
}
