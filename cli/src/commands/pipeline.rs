//! `tributary wait` and `tributary verify`: whether the pipeline has caught
//! up, and whether silver equals the sources.

use anyhow::Result;
use tributary::parse_duration;
use tributary_stack::{Config, Platform, checks};

pub async fn wait(config: Config, timeout: &str) -> Result<()> {
    let platform = Platform::load(config)?;
    checks::wait_caught_up(&platform, parse_duration(timeout)?).await?;
    println!("caught up");
    Ok(())
}

pub async fn verify(config: Config) -> Result<()> {
    let platform = Platform::load(config)?;
    let sources = platform.sources()?;
    let session = tributary_query::Session::new(platform.lake()?).await?;
    let results = checks::compare_silver(sources, &session).await?;
    let mut ok = true;
    for c in &results {
        println!(
            "{:<14} source {:>7}  silver {:>7}  {}",
            c.table,
            c.source_rows,
            c.silver_rows,
            if c.equal() { "equal" } else { "DIFFERENT" }
        );
        for m in &c.missing {
            println!("    missing from silver: {m}");
        }
        for x in &c.extra {
            println!("    extra in silver:     {x}");
        }
        ok &= c.equal();
    }
    anyhow::ensure!(ok, "silver differs from the source");
    Ok(())
}
