//! `tributary`: one binary for the whole platform. This file sets up
//! logging and hands the parsed command line ([`args`]) to its command
//! group ([`commands`]).

mod args;
mod commands;

use clap::Parser;

use crate::args::Cli;

/// `extra`: directives added to the default filter (not to `TRIBUTARY_LOG`).
fn init_tracing(json: bool, extra: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("TRIBUTARY_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!(
                "warn,tributary=info,tributary_cdc=info,tributary_lake=info,tributary_oltp=info,tributary_etl=info,tributary_query=info,tributary_bench=info,tributary_stack=info,deltalake_core=error{extra}"
            ))
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // A benchmark's in-process schedulers start thousands of runs: their
    // lines would bury its progress.
    let extra = match &cli.command {
        args::Command::Bench { .. } => ",tributary_workflows=warn",
        _ => "",
    };
    init_tracing(cli.log_json, extra);
    match commands::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
