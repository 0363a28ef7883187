//! `tributary gateway`: the edge in front of the order API's replicas, on
//! Cloudflare's pingora proxy framework.
//!
//! - L7 load balancing over replica pools ([`balance`]): round robin,
//!   least connections, or consistent hashing by customer; traffic weights
//!   between pools (canary, blue/green) changed at runtime; active health
//!   checks and passive ejection; draining.
//! - Retries on another replica, only where safe; per-try and total
//!   timeouts ([`proxy`]).
//! - The edge ([`edge`]): API keys, per-client token-bucket rate limits
//!   (`429` with `Retry-After`), request ids carried to the replicas' logs,
//!   body size limits and JSON validation before a replica sees a byte.
//! - A backend-for-frontend endpoint for the storefront ([`bff`]).
//! - An admin API with `/metrics` on a second address ([`admin`]).
//!
//! pingora's own server (`Server::run_forever`) owns the process, its
//! signals and its runtimes; tributary runs the proxy service inside its
//! own tokio runtime instead, so the gateway starts and stops like every
//! other tributary component and a test can run it in-process.

pub mod admin;
pub mod balance;
mod bff;
pub mod config;
pub mod edge;
mod metrics;
mod proxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora_core::server::configuration::ServerConf;
use pingora_core::services::Service as _;
use tokio_util::sync::CancellationToken;

pub use admin::{AdminClient, GatewayState};
pub use config::{GatewayConfig, Policy};
pub use edge::key_hash;

use crate::balance::{Balancer, Routing};
use crate::config::Target;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration {field}: {reason}")]
    Config { field: String, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("gateway admin API at {url}: {reason}")]
    Admin { url: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A gateway with its addresses bound, ready to serve.
pub struct Gateway {
    config: GatewayConfig,
    listen: SocketAddr,
    admin: tokio::net::TcpListener,
    admin_addr: SocketAddr,
    routing: Arc<Routing>,
}

fn bind_error(addr: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Bind {
        addr: addr.to_owned(),
        source,
    }
}

impl Gateway {
    /// Validates `config` and binds the admin address. The proxy address
    /// is bound by pingora when the gateway runs; it is tried here first,
    /// so that a taken port is a clear error now (and port 0 gets a port).
    pub async fn bind(config: GatewayConfig) -> Result<Gateway> {
        config.validate()?;
        let probe =
            std::net::TcpListener::bind(&config.listen).map_err(bind_error(&config.listen))?;
        let listen = probe.local_addr().map_err(bind_error(&config.listen))?;
        drop(probe);
        let admin = tokio::net::TcpListener::bind(&config.admin)
            .await
            .map_err(bind_error(&config.admin))?;
        let admin_addr = admin.local_addr().map_err(bind_error(&config.admin))?;
        let routing = Arc::new(Routing::new(Balancer::new(&config)));
        resolve(&config, &routing).await;
        Ok(Gateway {
            routing,
            config,
            listen,
            admin,
            admin_addr,
        })
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Serves until `shutdown`; then stops accepting, and waits up to
    /// `drain_timeout_s` for the requests in flight.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Gateway {
            config,
            listen,
            admin,
            admin_addr,
            routing,
        } = self;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(32)
            .build()
            .unwrap_or_default();
        let resolver = tokio::spawn(follow_dns(
            routing.clone(),
            config.clone(),
            shutdown.clone(),
        ));
        let health = tokio::spawn(check_health(
            routing.clone(),
            config.clone(),
            http.clone(),
            shutdown.clone(),
        ));
        let admin_app = admin::router(admin::Admin {
            routing: routing.clone(),
            listen: listen.to_string(),
            policy: config.policy,
        });
        let admin_task = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                axum::serve(admin, admin_app)
                    .with_graceful_shutdown(shutdown.cancelled_owned())
                    .await
            })
        };
        let server_conf = Arc::new(ServerConf {
            // Tries in all: pingora stops retrying at this many.
            max_retries: config.retries as usize + 1,
            ..ServerConf::default()
        });
        let proxy = proxy::Proxy {
            routing: routing.clone(),
            edge: edge::Edge::new(&config),
            config: config.clone(),
            http,
        };
        let mut service =
            pingora_proxy::http_proxy_service_with_name(&server_conf, proxy, "tributary-gateway");
        service.add_tcp(&listen.to_string());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        // The proxy runs on threads of its own, each a single-threaded
        // runtime that keeps a connection for its life: no worker wakes
        // another to steal a request, which in tributary's shared runtime
        // cost a futex wake-up and a context switch per request.
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let runtime = pingora_runtime::Runtime::new_no_steal(threads, "gateway");
        let mut serving = runtime.get_handle().spawn(async move {
            service.start_service(None, stopped, 1).await;
        });
        tracing::info!(%listen, admin = %admin_addr, policy = ?config.policy, threads,
            replicas = routing.get().backends.len(), "gateway serving");
        tokio::select! {
            _ = shutdown.cancelled() => {}
            ended = &mut serving => {
                // pingora's listener failed (it panics on a bind error).
                let reason = match ended {
                    Err(e) if e.is_panic() => "the proxy service panicked".to_owned(),
                    _ => "the proxy service ended".to_owned(),
                };
                health.abort();
                resolver.abort();
                shut_down(runtime).await;
                return Err(Error::Bind { addr: listen.to_string(), source: std::io::Error::other(reason) });
            }
        }
        let _ = stop.send(true);
        let deadline = Instant::now() + Duration::from_secs(config.drain_timeout_s);
        while routing.get().inflight_total() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = routing.get().inflight_total();
        if left > 0 {
            tracing::warn!(left, "gateway stopped with requests still in flight");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), serving).await;
        shut_down(runtime).await;
        health.abort();
        resolver.abort();
        let _ = admin_task.await;
        tracing::info!(%listen, "gateway stopped");
        Ok(())
    }
}

/// Stops the proxy's threads (a runtime cannot be dropped inside another).
async fn shut_down(runtime: pingora_runtime::Runtime) {
    let _ =
        tokio::task::spawn_blocking(move || runtime.shutdown_timeout(Duration::from_secs(1))).await;
}

/// Resolves the pools' DNS names and swaps in the replicas they name now.
/// A pool with a name that does not resolve keeps the replicas it has, so
/// a DNS failure takes none out of rotation (health checks still do).
async fn resolve(config: &GatewayConfig, routing: &Routing) {
    let current = routing.get().members();
    let mut members = Vec::with_capacity(config.pools.len());
    for (p, pool) in config.pools.iter().enumerate() {
        let mut addrs = Vec::new();
        let mut failed = false;
        for target in pool.targets() {
            match target {
                Target::Addr(a) => addrs.push(a),
                Target::Name { host, port } => {
                    let lookup = tokio::net::lookup_host((host.as_str(), port));
                    match tokio::time::timeout(Duration::from_secs(5), lookup).await {
                        Ok(Ok(found)) => addrs.extend(found),
                        Ok(Err(error)) => {
                            tracing::warn!(pool = %pool.name, name = %host, %error,
                                "resolving a backend name failed; the pool keeps its replicas");
                            failed = true;
                        }
                        Err(_) => {
                            tracing::warn!(pool = %pool.name, name = %host,
                                "resolving a backend name timed out; the pool keeps its replicas");
                            failed = true;
                        }
                    }
                }
            }
        }
        if failed {
            addrs = current[p].clone();
        } else {
            addrs.sort();
            addrs.dedup();
        }
        members.push(addrs);
    }
    if routing.set_members(&members) {
        for ((pool, was), now) in config.pools.iter().zip(&current).zip(&members) {
            let added: Vec<String> = now
                .iter()
                .filter(|a| !was.contains(a))
                .map(|a| a.to_string())
                .collect();
            let removed: Vec<String> = was
                .iter()
                .filter(|a| !now.contains(a))
                .map(|a| a.to_string())
                .collect();
            if !added.is_empty() || !removed.is_empty() {
                tracing::info!(pool = %pool.name, ?added, ?removed, replicas = now.len(),
                    "pool replicas changed (DNS)");
            }
        }
    }
}

/// Resolves the DNS names among the backends every `resolve_interval_ms`.
async fn follow_dns(routing: Arc<Routing>, config: GatewayConfig, shutdown: CancellationToken) {
    let named = config
        .pools
        .iter()
        .flat_map(|p| p.targets())
        .any(|t| matches!(t, Target::Name { .. }));
    if !named {
        return;
    }
    // `bind` resolved once already: the first tick is one period later.
    let period = Duration::from_millis(config.resolve_interval_ms);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => resolve(&config, &routing).await,
        }
    }
}

/// Active health checks: every replica, every interval, at once.
async fn check_health(
    routing: Arc<Routing>,
    config: GatewayConfig,
    http: reqwest::Client,
    shutdown: CancellationToken,
) {
    let h = &config.health;
    let timeout = Duration::from_millis(h.timeout_ms);
    let mut tick = tokio::time::interval(Duration::from_millis(h.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let balancer = routing.get();
        let checks = balancer.backends.iter().enumerate().map(|(i, b)| {
            let url = format!("http://{}{}", b.addr, h.path);
            let http = http.clone();
            async move {
                let passed = match http.get(&url).timeout(timeout).send().await {
                    Ok(r) => r.status().is_success(),
                    Err(_) => false,
                };
                (i, passed)
            }
        });
        for (i, passed) in futures::future::join_all(checks).await {
            if let Some(now) = balancer.checked(i, passed, h.unhealthy_after, h.healthy_after) {
                let addr = balancer.backends[i].addr;
                if now {
                    tracing::info!(backend = %addr, "replica healthy: back in rotation");
                } else {
                    tracing::warn!(backend = %addr, "replica failed its health checks: out of rotation");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolConfig;

    fn config(backends: &[&str]) -> GatewayConfig {
        GatewayConfig {
            pools: vec![PoolConfig {
                name: "stable".into(),
                weight: 100,
                backends: backends.iter().map(|b| (*b).to_owned()).collect(),
            }],
            ..GatewayConfig::default()
        }
    }

    #[tokio::test]
    async fn dns_names_become_replicas_and_a_failed_lookup_keeps_them() {
        let c = config(&["127.0.0.2:9001", "localhost:9002"]);
        c.validate().unwrap();
        let routing = Routing::new(Balancer::new(&c));
        let fixed: SocketAddr = "127.0.0.2:9001".parse().unwrap();
        assert_eq!(routing.get().members(), vec![vec![fixed]]);
        resolve(&c, &routing).await;
        let members = routing.get().members();
        assert!(members[0].contains(&fixed), "{members:?}");
        assert!(
            members[0].contains(&"127.0.0.1:9002".parse().unwrap()),
            "localhost resolved: {members:?}"
        );
        // The same name, now unresolvable (`.invalid` never resolves): the
        // pool keeps its replicas.
        let broken = config(&["127.0.0.2:9001", "no-such-host.invalid:9002"]);
        resolve(&broken, &routing).await;
        assert_eq!(routing.get().members(), members);
    }
}
