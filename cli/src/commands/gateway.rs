//! `tributary gateway` and `tributary rollout`: the edge in front of the
//! order API's replicas, and restarting them behind it.

use std::path::Path;

use anyhow::{Context, Result};
use tributary::shutdown_on_signals;
use tributary_gateway::{AdminClient, Gateway, GatewayState};
use tributary_stack::Config;
use tributary_stack::serving::{Launcher, Serving};

use super::print_json;
use crate::args::GatewayCommand;

pub async fn run(config: Config, command: GatewayCommand) -> Result<()> {
    match command {
        GatewayCommand::Run => {
            let shutdown = shutdown_on_signals();
            let gateway = Gateway::bind(config.gateway.clone()).await?;
            eprintln!(
                "gateway on http://{} (admin and /metrics on http://{})",
                gateway.listen_addr(),
                gateway.admin_addr()
            );
            let _announced = tributary_stack::observe::announce(
                &config.state_dir,
                "gateway",
                gateway.admin_addr(),
            )?;
            gateway.run(shutdown).await?;
        }
        GatewayCommand::State { admin, json } => {
            let state = admin_client(&config, admin)?.state().await?;
            if json {
                return print_json(&state, "gateway state");
            }
            print_state(&state);
        }
        GatewayCommand::Weight {
            pool,
            weight,
            admin,
        } => {
            let state = admin_client(&config, admin)?
                .set_weight(&pool, weight)
                .await?;
            print_state(&state);
        }
        GatewayCommand::Drain {
            backend,
            undo,
            admin,
        } => {
            let state = admin_client(&config, admin)?.drain(&backend, !undo).await?;
            print_state(&state);
        }
        GatewayCommand::Key { name, rate } => {
            let key = format!(
                "trb_{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            println!("API key for {name} (shown once; give it to the client):\n  {key}\n");
            println!("Add to the configuration:\n");
            println!(
                "[[gateway.api_keys]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\nrate = {rate:?}\nburst = {:?}",
                tributary_gateway::key_hash(&key),
                (rate * 2.0).max(1.0)
            );
        }
    }
    Ok(())
}

/// The stack's gateway when `up --replicas` started one, else `[gateway] admin`.
fn admin_client(config: &Config, admin: Option<String>) -> Result<AdminClient> {
    let addr = match admin {
        Some(a) => a,
        None => match Serving::load(&config.state_dir)? {
            Some(s) => format!("127.0.0.1:{}", s.gateway.admin_port),
            None => config.gateway.admin.clone(),
        },
    };
    Ok(AdminClient::new(&addr))
}

fn print_state(state: &GatewayState) {
    println!("gateway http://{}  policy {:?}", state.listen, state.policy);
    for p in &state.pools {
        println!("pool {:<12} weight {}", p.name, p.weight);
    }
    println!(
        "{:<22} {:<10} {:<10} {:>9} {:>10}",
        "replica", "pool", "state", "in flight", "requests"
    );
    for b in &state.backends {
        let what = if b.available {
            "up"
        } else if b.draining {
            "draining"
        } else if b.ejected {
            "ejected"
        } else {
            "unhealthy"
        };
        println!(
            "{:<22} {:<10} {:<10} {:>9} {:>10}",
            b.addr, b.pool, what, b.inflight, b.requests
        );
    }
}

/// `tributary rollout`.
pub async fn rollout(config: Config, config_file: Option<&Path>) -> Result<()> {
    let launcher = launcher(config_file)?;
    let steps = tributary_stack::serving::rollout(&config, &launcher, |s| {
        println!(
            "{:<22} drained in {:>6.2}s, restarted in {:>6.2}s, back in rotation in {:>6.2}s",
            s.replica,
            s.drained_in.as_secs_f64(),
            s.restarted_in.as_secs_f64(),
            s.back_in.as_secs_f64()
        );
    })
    .await?;
    println!(
        "rollout done: {} replicas restarted one at a time",
        steps.len()
    );
    Ok(())
}

/// This binary and the config file, for the processes the stack starts.
pub fn launcher(config_file: Option<&Path>) -> Result<Launcher> {
    Ok(Launcher {
        exe: std::env::current_exe().context("finding this program's path")?,
        config_file: config_file.map(std::path::absolute).transpose()?,
        env: Vec::new(),
    })
}
