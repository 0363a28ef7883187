//! `tributary up`, `down` and `status`: the local stack.

use anyhow::Result;
use tributary_stack::{Config, Platform};

use super::print_json;

pub async fn up(config: Config) -> Result<()> {
    let platform = Platform::start(config).await?;
    if let Some(s) = platform.stack() {
        println!(
            "stack is up ({} shards + catalog, broker at {})",
            s.shards.len(),
            s.broker.address()
        );
    }
    print_status(&platform, false).await
}

pub fn down(config: &Config, purge: bool) -> Result<()> {
    tributary_stack::down(config, purge)?;
    println!(
        "stack is down{}",
        if purge { " and its data deleted" } else { "" }
    );
    Ok(())
}

pub async fn status(config: Config, json: bool) -> Result<()> {
    print_status(&Platform::load(config)?, json).await
}

async fn print_status(platform: &Platform, json: bool) -> Result<()> {
    let status = tributary_stack::status(platform).await?;
    if json {
        return print_json(&status, "status");
    }
    for s in &status {
        println!(
            "{:<22} {:<7} {:<60} {}",
            s.component,
            if s.healthy { "healthy" } else { "DOWN" },
            s.address,
            s.detail
        );
    }
    Ok(())
}
