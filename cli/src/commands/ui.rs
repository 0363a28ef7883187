//! `tributary ui`: the web console.

use std::path::PathBuf;

use anyhow::Result;
use tributary::shutdown_on_signals;
use tributary_stack::{Config, Platform};
use tributary_ui::Ui;

pub async fn run(config: Config, listen: Option<String>, jobs: Option<PathBuf>) -> Result<()> {
    let jobs = jobs.unwrap_or_else(|| config.stack.jobs.clone());
    let password = tributary_stack::ui_password(&config, false)?;
    let platform = Platform::load(config)?;
    let shutdown = shutdown_on_signals();
    let ui = Ui::bind(platform, password, jobs, listen.as_deref(), shutdown).await?;
    eprintln!("web console on http://{}", ui.local_addr()?);
    ui.run().await?;
    Ok(())
}
