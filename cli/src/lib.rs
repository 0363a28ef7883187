//! The library of the `tributary` binary. What the commands do lives in
//! the crates they call (the local stack and the configuration in
//! `tributary_stack`, the benchmarks in `tributary_bench`, …); this library
//! holds only what the binary adds on top:
//!
//! - [`demo`]: `tributary demo`, the whole platform end to end in one
//!   process tree, and its reconciliation of source, silver and gold.
//! - [`tasks`]: tributary's own tasks for the workflows scheduler.
//! - [`parse_duration`] and [`shutdown_on_signals`]: the command line's
//!   durations and SIGINT/SIGTERM handling.
//! - [`spawn_detached`] and [`start_ui`]: processes `up` and the demo leave
//!   running (the scheduler, the HA supervisor, the web console).
//!
//! `main.rs` parses arguments (`args.rs`) and runs one module per command
//! group (`commands/`).

pub mod demo;
pub mod tasks;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tributary_stack::{Config, daemon};

/// Parses `90s`, `2m`, `1h`, `500ms` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid duration {s:?}: expected e.g. 60s, 2m, 500ms"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("invalid duration {s:?}: unit must be ms, s, m or h"),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Cancels the token on SIGINT or SIGTERM: stop intake, flush, confirm, exit.
pub fn shutdown_on_signals() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
        t.cancel();
    });
    token
}

/// Starts `tributary ARGS` detached with its pid in `dir` and its output
/// in `dir/log`; an immediate exit is an error with the log's end.
pub async fn spawn_detached(
    config_file: Option<&Path>,
    dir: &Path,
    log: &str,
    args: &[&str],
    what: &str,
) -> Result<u32> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = dir.join(log);
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut command = std::process::Command::new(std::env::current_exe()?);
    if let Some(file) = config_file {
        command.arg("--config").arg(std::path::absolute(file)?);
    }
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let pid = daemon::spawn(command, dir)?;
    // A process that cannot start (a bad config, no catalog) exits at
    // once: say so here rather than in a log nobody reads.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if daemon::alive(dir).is_none() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        bail!(
            "the {what} (pid {pid}) exited at once; the end of {}:\n{}",
            log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(pid)
}

/// The web console, detached like the scheduler (`down` stops it), unless
/// one runs or `[ui] enabled = false`. Without `[sql] password` the stack
/// makes one and says where it is.
pub async fn start_ui(config: &Config, config_file: Option<&Path>) -> Result<()> {
    if !config.ui.enabled {
        return Ok(());
    }
    let dir = tributary_stack::ui_dir(config);
    if let Some(pid) = daemon::alive(&dir) {
        println!(
            "web console already runs (pid {pid}) on http://{}",
            config.ui.listen
        );
        return Ok(());
    }
    tributary_stack::ui_password(config, true)?;
    let jobs = std::path::absolute(&config.stack.jobs)?;
    let jobs = jobs.display().to_string();
    let pid = spawn_detached(
        config_file,
        &dir,
        "ui.log",
        &["ui", "--jobs", &jobs],
        "web console",
    )
    .await?;
    let login = if config.sql.password.is_some() {
        "[sql] password".to_string()
    } else {
        format!("password in {}", dir.join("password").display())
    };
    println!(
        "web console started (pid {pid}): http://{} (user {}, {login})",
        config.ui.listen, config.sql.user
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert!(parse_duration("5 parsecs").is_err());
    }
}
