//! `tributary`: one binary for the whole platform. This file sets up
//! logging and hands the parsed command line ([`args`]) to its command
//! group ([`commands`]).

mod args;
mod commands;

use clap::Parser;

use crate::args::Cli;

fn init_tracing(json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("TRIBUTARY_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(
                "warn,tributary=info,tributary_cdc=info,tributary_lake=info,tributary_oltp=info,tributary_etl=info,tributary_query=info,tributary_bench=info,tributary_stack=info,deltalake_core=error",
            )
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
    init_tracing(cli.log_json);
    match commands::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
