//! Choosing a replica: pools with traffic weights, a policy within a pool,
//! and each replica's state (active health, passive ejection, draining,
//! requests in flight).
//!
//! A replica takes new requests when its last health checks passed, it is
//! not ejected and not draining. The pool is chosen first: by the request's
//! customer when it has one (the same customer always lands in the same
//! pool at the same weights, so a canary sees whole customers), otherwise
//! by smooth weighted round robin, which keeps the split exact over any
//! window of requests. A pool at weight 0 takes traffic only when no pool
//! with weight has a replica to take it. Within the pool the policy picks;
//! a retry leaves out the replicas this request already tried while
//! another one is available.
//!
//! A [`Balancer`] is one generation of the replica set. When a pool's DNS
//! name resolves to other addresses, [`Routing`] swaps in a new generation
//! that shares the state of every replica it keeps (health, ejection,
//! draining, requests in flight) and the pools' weights; a request keeps
//! the generation it started with, so its retries index the same set.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use serde::Serialize;

use crate::config::{EjectionConfig, GatewayConfig, Policy, Target};

/// Milliseconds since the gateway started (the clock of ejections).
fn now_ms() -> u64 {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    EPOCH.elapsed().as_millis() as u64
}

pub struct Backend {
    pub addr: SocketAddr,
    pub pool: usize,
    /// The verdict of the active health checks.
    healthy: AtomicBool,
    /// Consecutive checks against the current verdict (only the checker
    /// touches it).
    streak: AtomicU32,
    /// Consecutive failed requests (passive).
    failures: AtomicU32,
    /// Left out until this [`now_ms`].
    ejected_until: AtomicU64,
    draining: AtomicBool,
    inflight: AtomicU64,
    requests: AtomicU64,
}

pub struct Pool {
    pub name: String,
    /// Shared by every generation of the balancer.
    weight: Arc<AtomicU32>,
    /// Indexes into [`Balancer::backends`].
    members: Vec<usize>,
    next: AtomicUsize,
}

/// What `/admin/backends` shows of a replica.
#[derive(Debug, Serialize, serde::Deserialize, Clone, PartialEq)]
pub struct BackendView {
    pub addr: String,
    pub pool: String,
    pub healthy: bool,
    pub ejected: bool,
    pub draining: bool,
    pub available: bool,
    pub inflight: u64,
    pub requests: u64,
}

#[derive(Debug, Serialize, serde::Deserialize, Clone)]
pub struct PoolView {
    pub name: String,
    pub weight: u32,
}

pub struct Balancer {
    /// Shared with the other generations that have the same replica.
    pub backends: Vec<Arc<Backend>>,
    pub pools: Vec<Pool>,
    policy: Policy,
    ejection: EjectionConfig,
    /// Smooth weighted round robin's running weights, one per pool.
    current: Mutex<Vec<i64>>,
}

/// A request in flight on a replica; counts it until dropped.
pub struct Inflight {
    balancer: Arc<Balancer>,
    pub index: usize,
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.balancer.backends[self.index]
            .inflight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The current generation of the balancer.
pub struct Routing {
    current: RwLock<Arc<Balancer>>,
}

impl Routing {
    pub fn new(balancer: Balancer) -> Routing {
        Routing {
            current: RwLock::new(Arc::new(balancer)),
        }
    }

    pub fn get(&self) -> Arc<Balancer> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Swaps in a generation with these addresses per pool; `false` (and
    /// nothing swapped) when they are what the pools have.
    pub fn set_members(&self, members: &[Vec<SocketAddr>]) -> bool {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if current.members() == members {
            return false;
        }
        *current = Arc::new(current.with_members(members));
        true
    }
}

/// A 64-bit FNV-1a hash, then a finalizer so that nearby inputs spread.
pub fn hash64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

impl Backend {
    fn new(addr: SocketAddr, pool: usize) -> Backend {
        Backend {
            addr,
            pool,
            healthy: AtomicBool::new(true),
            streak: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            inflight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }
    }
}

impl Balancer {
    /// The first generation: each pool's fixed addresses (its DNS names
    /// join with [`Balancer::with_members`] once resolved).
    pub fn new(config: &GatewayConfig) -> Balancer {
        let members: Vec<Vec<SocketAddr>> = config
            .pools
            .iter()
            .map(|p| {
                p.targets()
                    .into_iter()
                    .filter_map(|t| match t {
                        Target::Addr(a) => Some(a),
                        Target::Name { .. } => None,
                    })
                    .collect()
            })
            .collect();
        let pools = config
            .pools
            .iter()
            .map(|p| (p.name.clone(), Arc::new(AtomicU32::new(p.weight))))
            .collect();
        Balancer::build(pools, &members, &[], config.policy, config.ejection.clone())
    }

    fn build(
        pools: Vec<(String, Arc<AtomicU32>)>,
        members: &[Vec<SocketAddr>],
        previous: &[Arc<Backend>],
        policy: Policy,
        ejection: EjectionConfig,
    ) -> Balancer {
        let mut backends: Vec<Arc<Backend>> = Vec::new();
        let pools: Vec<Pool> = pools
            .into_iter()
            .zip(members)
            .enumerate()
            .map(|(p, ((name, weight), addrs))| {
                let mut indexes = Vec::new();
                for addr in addrs {
                    let kept = previous
                        .iter()
                        .find(|b| b.pool == p && b.addr == *addr)
                        .cloned();
                    indexes.push(backends.len());
                    backends.push(kept.unwrap_or_else(|| Arc::new(Backend::new(*addr, p))));
                }
                Pool {
                    name,
                    weight,
                    members: indexes,
                    next: AtomicUsize::new(0),
                }
            })
            .collect();
        Balancer {
            current: Mutex::new(vec![0; pools.len()]),
            backends,
            pools,
            policy,
            ejection,
        }
    }

    /// Each pool's replica addresses, in order.
    pub fn members(&self) -> Vec<Vec<SocketAddr>> {
        self.pools
            .iter()
            .map(|p| p.members.iter().map(|i| self.backends[*i].addr).collect())
            .collect()
    }

    /// The next generation, with these addresses per pool: a replica it
    /// keeps keeps its state; a new one starts healthy.
    pub fn with_members(&self, members: &[Vec<SocketAddr>]) -> Balancer {
        let pools = self
            .pools
            .iter()
            .map(|p| (p.name.clone(), p.weight.clone()))
            .collect();
        Balancer::build(
            pools,
            members,
            &self.backends,
            self.policy,
            self.ejection.clone(),
        )
    }

    fn available(&self, i: usize, now: u64) -> bool {
        let b = &self.backends[i];
        b.healthy.load(Ordering::Relaxed)
            && !b.draining.load(Ordering::Relaxed)
            && b.ejected_until.load(Ordering::Relaxed) <= now
    }

    /// The replica for a request with customer hash `key`, leaving out
    /// `tried` while another is available; `None` when no replica is.
    pub fn pick(&self, key: Option<u64>, tried: &[usize]) -> Option<usize> {
        let now = now_ms();
        let usable = |i: &usize| self.available(*i, now);
        // Replicas of pool p this try may use: untried first.
        let candidates = |p: usize| -> Vec<usize> {
            let all: Vec<usize> = self.pools[p]
                .members
                .iter()
                .copied()
                .filter(usable)
                .collect();
            let fresh: Vec<usize> = all.iter().copied().filter(|i| !tried.contains(i)).collect();
            if fresh.is_empty() { all } else { fresh }
        };
        let with_replicas: Vec<usize> = (0..self.pools.len())
            .filter(|p| !candidates(*p).is_empty())
            .collect();
        if with_replicas.is_empty() {
            return None;
        }
        let weighted: Vec<usize> = with_replicas
            .iter()
            .copied()
            .filter(|p| self.pools[*p].weight.load(Ordering::Relaxed) > 0)
            .collect();
        let pool = if weighted.is_empty() {
            with_replicas[0]
        } else {
            self.pick_pool(&weighted, key)
        };
        let c = candidates(pool);
        let next = || self.pools[pool].next.fetch_add(1, Ordering::Relaxed);
        let chosen = match (self.policy, key) {
            (Policy::ConsistentHash, Some(k)) => *c
                .iter()
                .max_by_key(|i| {
                    hash64(&[
                        &k.to_le_bytes(),
                        self.backends[**i].addr.to_string().as_bytes(),
                    ])
                })
                .expect("candidates are not empty"),
            (Policy::LeastConnections, _) => {
                // Fewest in flight; ties go round robin so that an idle
                // gateway still spreads.
                let start = next();
                (0..c.len())
                    .map(|o| c[(start + o) % c.len()])
                    .min_by_key(|i| self.backends[*i].inflight.load(Ordering::Relaxed))
                    .expect("candidates are not empty")
            }
            _ => c[next() % c.len()],
        };
        Some(chosen)
    }

    fn pick_pool(&self, pools: &[usize], key: Option<u64>) -> usize {
        let weights: Vec<i64> = pools
            .iter()
            .map(|p| i64::from(self.pools[*p].weight.load(Ordering::Relaxed)))
            .collect();
        let total: i64 = weights.iter().sum();
        if let Some(k) = key {
            // The customer's place on the weight line, fixed per customer.
            let mut point = (hash64(&[b"pool", &k.to_le_bytes()]) % total as u64) as i64;
            for (p, w) in pools.iter().zip(&weights) {
                if point < *w {
                    return *p;
                }
                point -= w;
            }
        }
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut best = pools[0];
        for (p, w) in pools.iter().zip(&weights) {
            current[*p] += w;
            if current[*p] > current[best] {
                best = *p;
            }
        }
        current[best] -= total;
        best
    }

    /// Counts a request on replica `i` until the guard drops.
    pub fn start(self: &Arc<Self>, i: usize) -> Inflight {
        let b = &self.backends[i];
        b.inflight.fetch_add(1, Ordering::Relaxed);
        b.requests.fetch_add(1, Ordering::Relaxed);
        Inflight {
            balancer: self.clone(),
            index: i,
        }
    }

    /// A request on `i` failed; returns `true` when that ejected it.
    pub fn failed(&self, i: usize) -> bool {
        let b = &self.backends[i];
        let n = b.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.ejection.consecutive_failures {
            b.failures.store(0, Ordering::Relaxed);
            b.ejected_until
                .store(now_ms() + self.ejection.eject_ms, Ordering::Relaxed);
            return true;
        }
        false
    }

    pub fn succeeded(&self, i: usize) {
        self.backends[i].failures.store(0, Ordering::Relaxed);
    }

    /// A health check's result; returns the new verdict when it changed.
    pub fn checked(&self, i: usize, passed: bool, fails: u32, passes: u32) -> Option<bool> {
        let b = &self.backends[i];
        let healthy = b.healthy.load(Ordering::Relaxed);
        if passed == healthy {
            b.streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = b.streak.fetch_add(1, Ordering::Relaxed) + 1;
        if streak >= if healthy { fails } else { passes } {
            b.streak.store(0, Ordering::Relaxed);
            b.healthy.store(passed, Ordering::Relaxed);
            if passed {
                // Back from a failure: no ejection carries over.
                b.ejected_until.store(0, Ordering::Relaxed);
                b.failures.store(0, Ordering::Relaxed);
            }
            return Some(passed);
        }
        None
    }

    /// Finds a replica by its address.
    pub fn index_of(&self, addr: &str) -> Option<usize> {
        self.backends
            .iter()
            .position(|b| b.addr.to_string() == addr)
    }

    pub fn set_draining(&self, i: usize, draining: bool) {
        self.backends[i].draining.store(draining, Ordering::Relaxed);
    }

    /// Sets a pool's weight; `false` when there is no such pool.
    pub fn set_weight(&self, pool: &str, weight: u32) -> bool {
        match self.pools.iter().find(|p| p.name == pool) {
            Some(p) => {
                p.weight.store(weight, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    pub fn inflight_total(&self) -> u64 {
        self.backends
            .iter()
            .map(|b| b.inflight.load(Ordering::Relaxed))
            .sum()
    }

    pub fn view(&self) -> (Vec<PoolView>, Vec<BackendView>) {
        let now = now_ms();
        let pools = self
            .pools
            .iter()
            .map(|p| PoolView {
                name: p.name.clone(),
                weight: p.weight.load(Ordering::Relaxed),
            })
            .collect();
        let backends = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| BackendView {
                addr: b.addr.to_string(),
                pool: self.pools[b.pool].name.clone(),
                healthy: b.healthy.load(Ordering::Relaxed),
                ejected: b.ejected_until.load(Ordering::Relaxed) > now,
                draining: b.draining.load(Ordering::Relaxed),
                available: self.available(i, now),
                inflight: b.inflight.load(Ordering::Relaxed),
                requests: b.requests.load(Ordering::Relaxed),
            })
            .collect();
        (pools, backends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolConfig;

    fn balancer(policy: Policy, pools: &[(&str, u32, usize)]) -> Arc<Balancer> {
        let mut port = 9000;
        let pools = pools
            .iter()
            .map(|(name, weight, n)| PoolConfig {
                name: (*name).into(),
                weight: *weight,
                backends: (0..*n)
                    .map(|_| {
                        port += 1;
                        format!("127.0.0.1:{port}")
                    })
                    .collect(),
            })
            .collect();
        Arc::new(Balancer::new(&GatewayConfig {
            policy,
            pools,
            ..GatewayConfig::default()
        }))
    }

    fn counts(b: &Balancer, picks: impl Iterator<Item = usize>) -> Vec<usize> {
        let mut n = vec![0; b.backends.len()];
        for i in picks {
            n[i] += 1;
        }
        n
    }

    #[test]
    fn round_robin_spreads_evenly_and_skips_what_is_out() {
        let b = balancer(Policy::RoundRobin, &[("stable", 100, 3)]);
        let n = counts(&b, (0..300).map(|_| b.pick(None, &[]).unwrap()));
        assert_eq!(n, vec![100, 100, 100]);
        b.set_draining(1, true);
        for _ in 0..2 {
            b.checked(2, false, 2, 2);
        }
        let n = counts(&b, (0..50).map(|_| b.pick(None, &[]).unwrap()));
        assert_eq!(n, vec![50, 0, 0]);
        b.set_draining(0, true);
        assert_eq!(b.pick(None, &[]), None);
    }

    #[test]
    fn passive_failures_eject_and_health_checks_bring_back() {
        let b = balancer(Policy::RoundRobin, &[("stable", 100, 2)]);
        assert!(!b.failed(0));
        b.succeeded(0);
        assert!(!b.failed(0));
        assert!(!b.failed(0));
        assert!(b.failed(0), "the third failure in a row ejects");
        assert!((0..10).all(|_| b.pick(None, &[]) == Some(1)));
        // A failed check then two passes: healthy again, ejection cleared.
        assert_eq!(b.checked(0, false, 2, 2), None);
        assert_eq!(b.checked(0, false, 2, 2), Some(false));
        assert_eq!(b.checked(0, true, 2, 2), None);
        assert_eq!(b.checked(0, true, 2, 2), Some(true));
        assert!((0..10).any(|_| b.pick(None, &[]) == Some(0)));
    }

    #[test]
    fn retries_go_to_another_replica_while_there_is_one() {
        let b = balancer(Policy::ConsistentHash, &[("stable", 100, 3)]);
        let first = b.pick(Some(42), &[]).unwrap();
        assert_eq!(b.pick(Some(42), &[]), Some(first), "a customer sticks");
        let second = b.pick(Some(42), &[first]).unwrap();
        assert_ne!(second, first);
        let third = b.pick(Some(42), &[first, second]).unwrap();
        assert!(third != first && third != second);
        assert!(b.pick(Some(42), &[0, 1, 2]).is_some(), "all tried: any");
    }

    #[test]
    fn consistent_hashing_moves_only_the_lost_replicas_customers() {
        let b = balancer(Policy::ConsistentHash, &[("stable", 100, 3)]);
        let before: Vec<usize> = (0..3000).map(|k| b.pick(Some(k), &[]).unwrap()).collect();
        let n = counts(&b, before.iter().copied());
        assert!(n.iter().all(|c| *c > 800), "spread: {n:?}");
        b.set_draining(2, true);
        for (k, was) in before.iter().enumerate() {
            let now = b.pick(Some(k as u64), &[]).unwrap();
            if *was != 2 {
                assert_eq!(now, *was, "customer {k} moved without cause");
            }
        }
    }

    #[test]
    fn least_connections_prefers_the_idle_replica() {
        let b = balancer(Policy::LeastConnections, &[("stable", 100, 2)]);
        let busy: Vec<Inflight> = (0..3).map(|_| b.start(0)).collect();
        assert!((0..10).all(|_| b.pick(None, &[]) == Some(1)));
        drop(busy);
        let n = counts(&b, (0..10).map(|_| b.pick(None, &[]).unwrap()));
        assert_eq!(n, vec![5, 5]);
    }

    #[test]
    fn a_new_generation_keeps_the_state_of_the_replicas_it_keeps() {
        let routing = Routing::new(
            Arc::into_inner(balancer(
                Policy::RoundRobin,
                &[("stable", 90, 2), ("canary", 10, 1)],
            ))
            .unwrap(),
        );
        let old = routing.get();
        let (a, b, c) = (
            old.backends[0].addr,
            old.backends[1].addr,
            old.backends[2].addr,
        );
        old.set_draining(1, true);
        assert!(old.set_weight("canary", 30));
        let busy = old.start(0);
        let d: SocketAddr = "127.0.0.1:9100".parse().unwrap();
        assert!(!routing.set_members(&[vec![a, b], vec![c]]), "same set");
        assert!(routing.set_members(&[vec![b, d], vec![c]]));
        let new = routing.get();
        assert_eq!(new.members(), vec![vec![b, d], vec![c]]);
        let (pools, view) = new.view();
        assert_eq!(pools[1].weight, 30, "weights carry over");
        assert!(view[0].draining, "b stays drained");
        assert!(view[1].available, "d starts in rotation");
        assert_eq!(new.index_of(&a.to_string()), None);
        // A request of the old generation still counts on its replica.
        assert_eq!(old.inflight_total(), 1);
        drop(busy);
        assert_eq!(old.inflight_total(), 0);
        let n = counts(&new, (0..90).map(|_| new.pick(None, &[]).unwrap()));
        assert_eq!(n[0], 0, "b is drained: {n:?}");
    }

    #[test]
    fn pool_weights_split_traffic_exactly_and_change_at_runtime() {
        let b = balancer(Policy::RoundRobin, &[("stable", 90, 2), ("canary", 10, 1)]);
        let n = counts(&b, (0..1000).map(|_| b.pick(None, &[]).unwrap()));
        assert_eq!(n[2], 100, "{n:?}");
        // By customer: about the weight, and a customer keeps its pool.
        let canary = (0..10_000u64)
            .filter(|k| b.pick(Some(*k), &[]) == Some(2))
            .count();
        assert!((800..1200).contains(&canary), "{canary}");
        assert!(b.set_weight("canary", 0));
        assert!(!b.set_weight("nope", 1));
        assert!((0..100).all(|_| b.pick(None, &[]) != Some(2)));
        // A weight-0 pool still serves when the weighted one cannot.
        b.set_draining(0, true);
        b.set_draining(1, true);
        assert_eq!(b.pick(None, &[]), Some(2));
    }
}
