//! `tributary bench gateway`: the gateway against HAProxy (Debian's) on the
//! same replicas and the same open-model load, and the curve of throughput
//! against p99 for 1, 2 and 3 replicas.
//!
//! On a stack of its own it runs `replicas` order-API processes behind a
//! `tributary gateway` process (`tributary_stack::serving`, as `up
//! --replicas` does) and an HAProxy with the same balancing (round robin,
//! health checks, keep-alive to the replicas). Each load is open-model:
//! arrivals at a fixed rate, latency measured from each request's intended
//! send time, so a slow proxy cannot hide its queue. The reads are
//! `GET /products/{id}` over a small catalog (cache hits on the replicas),
//! so the replicas do little and the proxies' share shows.
//!
//! Per target: latency p50/p99/p99.9, errors, and the proxy process's CPU
//! seconds per 10,000 requests (from `/proc`). "Added" latency is against
//! the same load sent straight to the replicas (round robin in the client).
//! The curve drains replicas at the gateway to serve with 1, 2 or 3.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tributary_stack::serving::Launcher;
use tributary_stack::{Config, Platform};

use crate::children::{free_port, on_own_stack};
use crate::process::cpu_secs;
use crate::{Error, Result, io};

#[derive(Clone, Debug)]
pub struct Options {
    pub replicas: usize,
    /// Requests per second of the comparison.
    pub rate: f64,
    /// Each run's length.
    pub duration: Duration,
    /// Rates of the throughput-against-p99 curve.
    pub curve_rates: Vec<f64>,
    /// Threads of each proxy (the gateway's and HAProxy's, the same).
    pub threads: usize,
    pub keep: bool,
    /// This program, to start the replicas and the gateway.
    pub exe: std::path::PathBuf,
}

/// One open-model run against one target.
#[derive(Debug, Serialize, Clone)]
pub struct Run {
    pub target: String,
    pub replicas: usize,
    pub rate: f64,
    pub achieved: f64,
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// The proxy process's CPU seconds per 10k requests (none for direct).
    pub cpu_per_10k: Option<f64>,
}

/// Load through the gateway while something breaks.
#[derive(Debug, Serialize, Clone)]
pub struct Fault {
    /// `kill` (one replica SIGKILLed) or `rollout`.
    pub fault: String,
    pub run: Run,
    /// Failed requests in percent (goal: < 0.1 for a kill, 0 for a rollout).
    pub failed_pct: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub comparison: Vec<Run>,
    pub faults: Vec<Fault>,
    pub curve: Vec<Run>,
}

impl Report {
    fn run(&self, target: &str) -> Option<&Run> {
        self.comparison.iter().find(|r| r.target == target)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let row = |f: &mut std::fmt::Formatter<'_>, r: &Run| {
            writeln!(
                f,
                "{:<10} {:>3} {:>8.0} {:>9.1} {:>8} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>10}",
                r.target,
                r.replicas,
                r.rate,
                r.achieved,
                r.requests,
                r.errors,
                r.p50_ms,
                r.p99_ms,
                r.p999_ms,
                r.cpu_per_10k
                    .map(|c| format!("{c:.2}"))
                    .unwrap_or_else(|| "-".into())
            )
        };
        let header = |f: &mut std::fmt::Formatter<'_>| {
            writeln!(
                f,
                "{:<10} {:>3} {:>8} {:>9} {:>8} {:>6} {:>8} {:>8} {:>8} {:>10}",
                "target",
                "rep",
                "rate/s",
                "achieved",
                "requests",
                "errors",
                "p50 ms",
                "p99 ms",
                "p99.9 ms",
                "cpu s/10k"
            )
        };
        writeln!(
            f,
            "gateway against HAProxy, same replicas, same open-model load"
        )?;
        header(f)?;
        for r in &self.comparison {
            row(f, r)?;
        }
        if let (Some(d), Some(g), Some(h)) =
            (self.run("direct"), self.run("gateway"), self.run("haproxy"))
        {
            writeln!(
                f,
                "added latency p50/p99: gateway {:+.2}/{:+.2} ms, haproxy {:+.2}/{:+.2} ms",
                g.p50_ms - d.p50_ms,
                g.p99_ms - d.p99_ms,
                h.p50_ms - d.p50_ms,
                h.p99_ms - d.p99_ms
            )?;
            if let (Some(gc), Some(hc)) = (g.cpu_per_10k, h.cpu_per_10k) {
                writeln!(
                    f,
                    "CPU per request: gateway {:.2}x HAProxy's (goal <= 1.2x)",
                    gc / hc.max(1e-9)
                )?;
            }
        }
        if !self.faults.is_empty() {
            writeln!(f, "\nfaults under load through the gateway")?;
            writeln!(
                f,
                "{:<10} {:>8} {:>8} {:>6} {:>9} {:>8}",
                "fault", "rate/s", "requests", "errors", "failed %", "p99 ms"
            )?;
            for x in &self.faults {
                writeln!(
                    f,
                    "{:<10} {:>8.0} {:>8} {:>6} {:>9.3} {:>8.2}",
                    x.fault, x.run.rate, x.run.requests, x.run.errors, x.failed_pct, x.run.p99_ms
                )?;
            }
            writeln!(f, "goals: kill < 0.1% failed, rollout 0")?;
        }
        if !self.curve.is_empty() {
            writeln!(f, "\nthroughput against p99 through the gateway")?;
            header(f)?;
            for r in &self.curve {
                row(f, r)?;
            }
        }
        Ok(())
    }
}

pub async fn run(config: &Config, options: &Options) -> Result<Report> {
    if options.replicas == 0
        || options.rate <= 0.0
        || options.duration.is_zero()
        || options.threads == 0
    {
        return Err(Error::Options(
            "replicas, rate, duration and threads must be above 0".into(),
        ));
    }
    let haproxy = which("haproxy").ok_or_else(|| {
        Error::Options(
            "haproxy not found: install Debian's haproxy (scripts/bootstrap.sh does)".into(),
        )
    })?;
    on_own_stack(config, "gateway", options.keep, |cfg, dir| async move {
        bench(cfg, &dir, &haproxy, options).await
    })
    .await
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

struct HaProxy(Child);

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_haproxy(
    bin: &Path,
    dir: &Path,
    port: u16,
    threads: usize,
    replicas: &[String],
) -> Result<HaProxy> {
    let servers: String = replicas
        .iter()
        .enumerate()
        .map(|(i, a)| format!("    server r{i} {a} check inter 1s fall 2 rise 2\n"))
        .collect();
    // The gateway's defaults, in HAProxy's words: round robin, health
    // checks on /healthz, keep-alive to the replicas, two retries on
    // another replica; as many threads as the gateway.
    let cfg = format!(
        "global\n    maxconn 4096\n    nbthread {threads}\n\ndefaults\n    mode http\n    timeout connect 500ms\n    \
         timeout client 30s\n    timeout server 5s\n    option http-keep-alive\n    \
         retries 2\n    option redispatch\n\nfrontend fe\n    bind 127.0.0.1:{port}\n    \
         default_backend replicas\n\nbackend replicas\n    balance roundrobin\n    \
         option httpchk GET /healthz\n    http-reuse safe\n{servers}"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).map_err(io(format!("writing {}", path.display())))?;
    let log = std::fs::File::create(dir.join("haproxy.log")).map_err(io("haproxy log"))?;
    let child = Command::new(bin)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(io("haproxy log"))?)
        .stderr(log)
        .spawn()
        .map_err(io("starting haproxy"))?;
    Ok(HaProxy(child))
}

async fn wait_ok(url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if reqwest::get(url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::Run(format!("{url} did not answer within 30 s")))
}

async fn bench(cfg: Config, dir: &Path, haproxy_bin: &Path, options: &Options) -> Result<Report> {
    let platform = Platform::start(cfg).await?;
    let launcher = Launcher {
        exe: options.exe.clone(),
        config_file: None,
        // HAProxy limits nothing here, so neither does the gateway: the
        // anonymous rate limit (200/s per address by default) would
        // otherwise refuse most of the load.
        env: vec![
            ("TRIBUTARY__GATEWAY__ANONYMOUS__RATE".into(), "0".into()),
            (
                "TRIBUTARY__GATEWAY__THREADS".into(),
                options.threads.to_string(),
            ),
        ],
    };
    eprintln!("starting {} replicas and the gateway", options.replicas);
    let serving = tributary_stack::serving::up(platform.config(), &launcher, options.replicas)
        .await
        .map_err(|e| Error::Run(format!("starting the replicas: {e}")))?;
    let replicas: Vec<String> = serving.replicas.iter().map(|r| r.addr()).collect();
    let hp_port = free_port()?;
    let hp = start_haproxy(haproxy_bin, dir, hp_port, options.threads, &replicas)?;
    let hp_url = format!("http://127.0.0.1:{hp_port}");
    let gw_url = serving.gateway.url();
    let gw_pid = tributary_stack::daemon::pid(&serving.gateway.dir)
        .ok_or_else(|| Error::Run("the gateway has no pid".into()))?;
    let products = seed_products(&replicas[0]).await?;
    wait_ok(&format!("{hp_url}/products/{}", products[0])).await?;
    // Warm every path (connections, the replicas' caches).
    for base in [&gw_url, &hp_url] {
        load(
            std::slice::from_ref(base),
            &products,
            options.rate / 2.0,
            Duration::from_secs(2),
            None,
        )
        .await;
    }
    let direct: Vec<String> = replicas.iter().map(|a| format!("http://{a}")).collect();
    let mut comparison = Vec::new();
    for (target, urls, pid) in [
        ("direct", direct.clone(), None),
        ("gateway", vec![gw_url.clone()], Some(gw_pid)),
        ("haproxy", vec![hp_url.clone()], Some(hp.0.id())),
    ] {
        eprintln!(
            "{target}: {} requests/s for {:?}",
            options.rate, options.duration
        );
        let mut run = load(&urls, &products, options.rate, options.duration, pid).await;
        run.target = target.into();
        run.replicas = options.replicas;
        comparison.push(run);
    }
    drop(hp);
    let faults = faults(platform.config(), &launcher, &serving, &products, options).await?;
    let mut curve = Vec::new();
    let admin = serving.gateway.admin();
    for n in 1..=options.replicas {
        // Serve with the first n replicas: drain the others.
        for (i, r) in serving.replicas.iter().enumerate() {
            admin
                .drain(&r.addr(), i >= n)
                .await
                .map_err(|e| Error::Run(e.to_string()))?;
        }
        for rate in &options.curve_rates {
            eprintln!("gateway, {n} replicas: {rate} requests/s");
            let mut run = load(
                std::slice::from_ref(&gw_url),
                &products,
                *rate,
                options.duration,
                Some(gw_pid),
            )
            .await;
            run.target = "gateway".into();
            run.replicas = n;
            curve.push(run);
        }
    }
    Ok(Report {
        comparison,
        faults,
        curve,
    })
}

/// A replica SIGKILLed a third into a load, then (once `up` has restarted
/// it) a rollout under load, as `tributary rollout` does it.
async fn faults(
    config: &Config,
    launcher: &Launcher,
    serving: &tributary_stack::serving::Serving,
    products: &[i64],
    options: &Options,
) -> Result<Vec<Fault>> {
    let urls = vec![serving.gateway.url()];
    let fault = |name: &str, mut run: Run| {
        run.target = "gateway".into();
        run.replicas = options.replicas;
        Fault {
            fault: name.into(),
            failed_pct: run.errors as f64 * 100.0 / run.requests.max(1) as f64,
            run,
        }
    };
    eprintln!(
        "kill: one replica SIGKILLed under {} requests/s",
        options.rate
    );
    let victim = tributary_stack::daemon::pid(&serving.replicas[0].dir)
        .ok_or_else(|| Error::Run("replica 0 has no pid".into()))?;
    let kill = async {
        tokio::time::sleep(options.duration / 3).await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
    };
    let (run, killed) = tokio::join!(
        load(&urls, products, options.rate, options.duration, None),
        kill
    );
    killed.map_err(|e| Error::Run(format!("killing replica pid {victim}: {e}")))?;
    let mut out = vec![fault("kill", run)];
    tributary_stack::serving::up(config, launcher, options.replicas)
        .await
        .map_err(|e| Error::Run(format!("restarting the killed replica: {e}")))?;
    // Long enough to hold the whole rollout (about 2 s a replica here).
    let window = options
        .duration
        .max(Duration::from_secs(3 * options.replicas as u64 + 5));
    eprintln!(
        "rollout: {} replicas one at a time under {} requests/s",
        options.replicas, options.rate
    );
    let rollout = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tributary_stack::serving::rollout(config, launcher, |_| {}).await
    };
    let (run, steps) = tokio::join!(load(&urls, products, options.rate, window, None), rollout);
    steps.map_err(|e| Error::Run(format!("rollout: {e}")))?;
    out.push(fault("rollout", run));
    Ok(out)
}

async fn seed_products(replica: &str) -> Result<Vec<i64>> {
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..50 {
        let r = client
            .post(format!("http://{replica}/products"))
            .json(&serde_json::json!({
                "sku": format!("GWB-{i}-{}", std::process::id()),
                "name": format!("bench product {i}"),
                "category": "bench",
                "price": 10.0 + i as f64,
            }))
            .send()
            .await
            .map_err(|e| Error::Run(format!("creating bench products: {e}")))?;
        let v: serde_json::Value = r
            .json()
            .await
            .map_err(|e| Error::Run(format!("creating bench products: {e}")))?;
        ids.push(
            v["id"]
                .as_i64()
                .ok_or_else(|| Error::Run(format!("creating bench products: {v}")))?,
        );
    }
    Ok(ids)
}

/// Most requests in flight; an arrival beyond it counts as an error.
const MAX_INFLIGHT: u64 = 2_000;

/// Open model: request n is due at start + n / rate, whatever happened to
/// the others; its latency runs from then to its answer.
async fn load(
    urls: &[String],
    products: &[i64],
    rate: f64,
    duration: Duration,
    pid: Option<u32>,
) -> Run {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let hist = Arc::new(std::sync::Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
    ));
    let errors = Arc::new(AtomicU64::new(0));
    let inflight = Arc::new(AtomicU64::new(0));
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let cpu_before = pid.and_then(cpu_secs);
    let start = Instant::now() + Duration::from_millis(10);
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        let due = start + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        if inflight.load(Ordering::Relaxed) >= MAX_INFLIGHT {
            errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let url = format!(
            "{}/products/{}",
            urls[n as usize % urls.len()],
            products[(n as usize * 7) % products.len()]
        );
        let (client, hist, errors, inflight) = (
            client.clone(),
            hist.clone(),
            errors.clone(),
            inflight.clone(),
        );
        inflight.fetch_add(1, Ordering::Relaxed);
        tasks.push(tokio::spawn(async move {
            let ok = match client.get(&url).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            let us = due.elapsed().as_micros() as u64;
            inflight.fetch_sub(1, Ordering::Relaxed);
            if ok {
                let _ = hist
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .record(us.max(1));
            } else {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = match (cpu_before, pid.and_then(cpu_secs)) {
        (Some(a), Some(b)) => Some((b - a) / total.max(1) as f64 * 10_000.0),
        _ => None,
    };
    let h = hist.lock().unwrap_or_else(|p| p.into_inner());
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Run {
        target: String::new(),
        replicas: 0,
        rate,
        achieved: h.len() as f64 / elapsed,
        requests: total,
        errors: errors.load(Ordering::Relaxed),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        cpu_per_10k: cpu,
    }
}
