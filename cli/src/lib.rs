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
//!
//! `main.rs` parses arguments (`args.rs`) and runs one module per command
//! group (`commands/`).

pub mod demo;
pub mod tasks;

use std::time::Duration;

use anyhow::{Result, bail};

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
