//! `tributary cdc run` and `cdc resnapshot`: the change data capture readers.

use anyhow::Result;
use tributary::{parse_duration, shutdown_on_signals};
use tributary_stack::{Config, Platform};

use crate::args::CdcCommand;

pub async fn run(config: Config, command: CdcCommand) -> Result<()> {
    let platform = Platform::load(config)?;
    match command {
        CdcCommand::Run { metrics } => {
            let sources = platform.sources()?;
            let kafka = platform.kafka()?.clone();
            let shutdown = shutdown_on_signals();
            let _announced =
                super::serve_metrics(platform.config(), "cdc", metrics, &shutdown).await?;
            tributary_cdc::run(
                platform.config().cdc.clone(),
                kafka,
                sources.cdc_sources(),
                shutdown,
            )
            .await?;
        }
        CdcCommand::Resnapshot {
            table,
            no_wait,
            timeout,
        } => {
            let sources = platform.sources()?;
            let wait = (!no_wait).then(|| parse_duration(&timeout)).transpose()?;
            match tributary_cdc::request_resnapshot(&sources.cdc_sources(), &table, wait).await? {
                Some(rows) => println!("resnapshot of {table} done: {rows} rows copied"),
                None => println!(
                    "resnapshot of {table} requested; the running readers copy it at their next heartbeat"
                ),
            }
        }
    }
    Ok(())
}
