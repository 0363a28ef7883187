//! `tributary oltp serve` and `tributary load`: the order and catalog
//! services, and traffic through them.

use anyhow::Result;
use tributary::{parse_duration, shutdown_on_signals};
use tributary_stack::{Config, Platform};

use crate::args::OltpCommand;

pub async fn run(config: Config, command: OltpCommand) -> Result<()> {
    match command {
        OltpCommand::Serve => {
            let platform = Platform::load(config)?;
            let shutdown = shutdown_on_signals();
            let mut server =
                tributary_oltp::Server::bind(platform.config().oltp.clone(), platform.topology()?)
                    .await?;
            // Product views and add-to-carts go to the platform's broker;
            // without one the click endpoints answer 503.
            if let Ok(kafka) = platform.kafka() {
                server = server.with_clickstream(kafka).await?;
                // Product reads through Redis, invalidated by the change
                // stream on the same broker.
                if let Some(url) = platform.redis_url() {
                    server = server.with_cache(&url, kafka, &platform.config().oltp.cache)?;
                }
            }
            eprintln!("order and catalog API on http://{}", server.local_addr());
            // Its /metrics, to the local stack's Prometheus.
            let _announced = tributary_stack::observe::announce(
                &platform.config().state_dir,
                "oltp",
                server.local_addr(),
            )?;
            server.run(shutdown).await?;
        }
    }
    Ok(())
}

pub async fn load(
    config: &Config,
    rate: f64,
    duration: &str,
    url: Option<String>,
    concurrency: usize,
    seed: u64,
) -> Result<()> {
    let base_url = url.unwrap_or_else(|| format!("http://{}", config.oltp.listen));
    let shutdown = shutdown_on_signals();
    let report = tributary_oltp::run_load(
        tributary_oltp::LoadConfig {
            base_url,
            rate,
            duration: parse_duration(duration)?,
            concurrency,
            seed,
            ..Default::default()
        },
        shutdown,
    )
    .await?;
    println!("{report}");
    Ok(())
}
