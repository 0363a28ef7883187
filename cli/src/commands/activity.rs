//! `tributary activity run | top`: live product activity.

use anyhow::Result;
use tributary::shutdown_on_signals;
use tributary_live::activity::{self, top_products_sql};
use tributary_stack::{Config, Platform};

use crate::args::ActivityCommand;

pub async fn run(config: Config, command: ActivityCommand) -> Result<()> {
    let platform = Platform::load(config)?;
    match command {
        ActivityCommand::Run { metrics } => {
            let kafka = platform.kafka()?.clone();
            let lake = platform.lake()?;
            let shards = platform.sources()?.shards.len() as u32;
            let shutdown = shutdown_on_signals();
            let _announced =
                super::serve_metrics(platform.config(), "activity", metrics, &shutdown).await?;
            activity::run(&kafka, &lake, shards, &platform.config().live, shutdown).await?;
        }
        ActivityCommand::Top { limit } => {
            let session = tributary_query::Session::new(platform.lake()?).await?;
            tributary_query::run_one_shot(
                &session,
                &top_products_sql(limit),
                tributary_query::Format::Table,
            )
            .await?;
        }
    }
    Ok(())
}
