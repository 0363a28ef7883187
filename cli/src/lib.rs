//! The library of the `tributary` binary. What the commands do lives in
//! the crates they call (the local stack and the configuration in
//! `tributary_stack`, the benchmarks in `tributary_bench`, …); this library
//! holds only what the binary adds on top:
//!
//! - [`demo`]: `tributary demo`, the whole platform end to end in one
//!   process tree, and its reconciliation of source, silver and gold.
//! - [`parse_duration`] and [`shutdown_on_signals`]: the command line's
//!   durations and SIGINT/SIGTERM handling.
//! - [`config`], [`pipeline`] and [`stack`]: the paths the end-to-end tests
//!   (`cli/tests`) use, kept over `tributary_stack`; new code uses
//!   [`tributary_stack::Platform`] directly.
//!
//! `main.rs` parses arguments (`args.rs`) and runs one module per command
//! group (`commands/`).

pub mod demo;

use std::time::Duration;

use anyhow::{Result, bail};

pub use tributary_stack::config;

/// The tests' names for the pipeline checks (see [`tributary_stack::checks`]).
pub mod pipeline {
    use std::time::Duration;

    use tributary_kafka::KafkaConfig;
    use tributary_lake::LakeConfig;
    pub use tributary_stack::Sources;
    pub use tributary_stack::checks::{TableCheck, bronze_duplicates, compare_silver};
    use tributary_stack::{Config, Platform, Result};

    /// The lake settings of `config` resolved against its local stack.
    pub fn lake_config(config: &Config) -> LakeConfig {
        let platform = match Platform::load(config.clone()) {
            Ok(p) => p,
            // An unreadable stack file: the lake without the stack's coordinator.
            Err(_) => Platform::resolve(config.clone(), None),
        };
        platform.lake_config().clone()
    }

    /// [`tributary_stack::checks::wait_caught_up`] for these sources and
    /// this broker.
    pub async fn wait_caught_up(
        config: &Config,
        sources: &Sources,
        kafka: &KafkaConfig,
        timeout: Duration,
    ) -> Result<()> {
        let platform = Platform::load(config.clone())?
            .with_sources(sources.clone())
            .with_kafka(kafka.clone());
        tributary_stack::checks::wait_caught_up(&platform, timeout).await
    }
}

/// The tests' names for the local stack (see [`tributary_stack`]).
pub mod stack {
    use tributary_kafka::KafkaConfig;
    use tributary_stack::{Config, Platform};
    pub use tributary_stack::{PgInstance, StackState, down};

    /// The broker of `config`: `[kafka]`, else the stack's.
    pub fn kafka_config(config: &Config, state: &StackState) -> KafkaConfig {
        Platform::resolve(config.clone(), Some(state.clone()))
            .kafka()
            .cloned()
            .expect("a local stack always has a broker")
    }
}

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
