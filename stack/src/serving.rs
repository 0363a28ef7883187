//! The serving side of the local stack: `tributary up --replicas N` runs N
//! order-API replicas (`tributary oltp serve`, each its own process) and a
//! gateway in front of them (`tributary gateway run`), detached like the
//! broker, under `<state>/serving`; `down` stops them; `rollout` restarts
//! the replicas one at a time behind the gateway.
//!
//! The processes take the user's configuration file and get their
//! addresses from `TRIBUTARY__*` variables (`oltp.listen`, and the
//! gateway's `listen`, `admin` and `pools`), so everything else a user
//! configured (policy, keys, limits, cache) applies to them too.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tributary_gateway::{AdminClient, GatewayState};

use crate::config::Config;
use crate::local::Ports;
use crate::{Error, Result, daemon, io};

/// How long a replica or the gateway gets to answer its health check.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a draining replica gets to finish its requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped process gets before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// What `up --replicas N` started, as kept in `<state>/serving/serving.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Serving {
    pub replicas: Vec<Replica>,
    pub gateway: GatewayInstance,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Replica {
    pub port: u16,
    pub dir: PathBuf,
}

impl Replica {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GatewayInstance {
    pub port: u16,
    pub admin_port: u16,
    pub dir: PathBuf,
}

impl GatewayInstance {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn admin(&self) -> AdminClient {
        AdminClient::new(&format!("127.0.0.1:{}", self.admin_port))
    }
}

/// `<state>/serving`.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("serving")
}

impl Serving {
    fn path(state_dir: &Path) -> PathBuf {
        dir(state_dir).join("serving.json")
    }

    /// What `up --replicas` left; `None` when it never ran (or `down` ran).
    pub fn load(state_dir: &Path) -> Result<Option<Serving>> {
        let p = Self::path(state_dir);
        if !p.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).map_err(io(format!("reading {}", p.display())))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| Error::StateFile {
                path: p.display().to_string(),
                source,
            })
    }

    fn save(&self, state_dir: &Path) -> Result<()> {
        let p = Self::path(state_dir);
        let text = serde_json::to_string_pretty(self).map_err(|source| Error::StateFile {
            path: p.display().to_string(),
            source,
        })?;
        std::fs::write(&p, text).map_err(io(format!("writing {}", p.display())))
    }

    /// The gateway's pools setting for these replicas: one pool, `stable`.
    fn pools(&self, config: &Config) -> String {
        let weight = config
            .gateway
            .pools
            .first()
            .map(|p| p.weight)
            .unwrap_or(100);
        let backends: Vec<String> = self
            .replicas
            .iter()
            .map(|r| format!("\"{}\"", r.addr()))
            .collect();
        format!(
            "[{{name = \"stable\", weight = {weight}, backends = [{}]}}]",
            backends.join(", ")
        )
    }
}

/// How to start a tributary process: the binary and the config file.
#[derive(Clone, Debug)]
pub struct Launcher {
    pub exe: PathBuf,
    pub config_file: Option<PathBuf>,
    /// Settings for the started processes on top of the file's, as
    /// `TRIBUTARY__SECTION__KEY` variables (the benches turn limits off).
    pub env: Vec<(String, String)>,
}

impl Launcher {
    /// The command, with `state_dir` (a caller may have moved it from what
    /// the file and the environment say, as the benches do).
    fn command(&self, args: &[&str], log: &Path, state_dir: &Path) -> Result<Command> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io(format!("opening {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io(format!("opening {}", log.display())))?;
        let mut command = Command::new(&self.exe);
        if let Some(file) = &self.config_file {
            command.arg("--config").arg(file);
        }
        command
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("TRIBUTARY__STATE_DIR", state_dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        Ok(command)
    }
}

/// Starts what is missing of `replicas` replicas and their gateway, and
/// waits until the gateway has them all in rotation. With another count
/// than last time, the old ones are stopped first.
pub async fn up(config: &Config, launcher: &Launcher, replicas: usize) -> Result<Serving> {
    let state_dir = &config.state_dir;
    let serving = match Serving::load(state_dir)? {
        Some(s) if s.replicas.len() == replicas => s,
        old => {
            if old.is_some() {
                down(state_dir);
            }
            let base = dir(state_dir);
            let mut ports = Ports::new();
            let s = Serving {
                replicas: (0..replicas)
                    .map(|i| {
                        Ok(Replica {
                            port: ports.next()?,
                            dir: base.join(format!("replica{i}")),
                        })
                    })
                    .collect::<Result<_>>()?,
                gateway: GatewayInstance {
                    port: ports.next()?,
                    admin_port: ports.next()?,
                    dir: base.join("gateway"),
                },
            };
            std::fs::create_dir_all(&base).map_err(io(format!("creating {}", base.display())))?;
            s.save(state_dir)?;
            s
        }
    };
    for r in &serving.replicas {
        start_replica(launcher, r, state_dir).await?;
    }
    start_gateway(config, launcher, &serving).await?;
    wait_in_rotation(&serving, None).await?;
    Ok(serving)
}

async fn start_replica(launcher: &Launcher, r: &Replica, state_dir: &Path) -> Result<()> {
    if daemon::alive(&r.dir).is_some() {
        return Ok(());
    }
    std::fs::create_dir_all(&r.dir).map_err(io(format!("creating {}", r.dir.display())))?;
    let log = r.dir.join("replica.log");
    let mut command = launcher.command(&["oltp", "serve"], &log, state_dir)?;
    command.env("TRIBUTARY__OLTP__LISTEN", r.addr());
    daemon::spawn(command, &r.dir)?;
    wait_healthy(
        &format!("order API replica {}", r.addr()),
        &format!("http://{}/healthz", r.addr()),
        &r.dir,
        &log,
    )
    .await
}

async fn start_gateway(config: &Config, launcher: &Launcher, s: &Serving) -> Result<()> {
    let g = &s.gateway;
    if daemon::alive(&g.dir).is_some() {
        return Ok(());
    }
    std::fs::create_dir_all(&g.dir).map_err(io(format!("creating {}", g.dir.display())))?;
    let log = g.dir.join("gateway.log");
    let mut command = launcher.command(&["gateway", "run"], &log, &config.state_dir)?;
    command
        .env(
            "TRIBUTARY__GATEWAY__LISTEN",
            format!("127.0.0.1:{}", g.port),
        )
        .env(
            "TRIBUTARY__GATEWAY__ADMIN",
            format!("127.0.0.1:{}", g.admin_port),
        )
        .env("TRIBUTARY__GATEWAY__POOLS", s.pools(config));
    daemon::spawn(command, &g.dir)?;
    wait_healthy(
        "the gateway",
        &format!("http://127.0.0.1:{}/healthz", g.admin_port),
        &g.dir,
        &log,
    )
    .await
}

/// Waits until `url` answers 200, failing early when the process exits.
async fn wait_healthy(what: &str, url: &str, dir: &Path, log: &Path) -> Result<()> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let ok = http
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return Ok(());
        }
        if daemon::alive(dir).is_none() || Instant::now() > deadline {
            return Err(Error::ServingNotReady {
                what: what.to_owned(),
                url: url.to_owned(),
                log: log.display().to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the gateway has every replica (or just `only`) available.
async fn wait_in_rotation(s: &Serving, only: Option<&str>) -> Result<GatewayState> {
    let admin = s.gateway.admin();
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let state = admin.state().await.map_err(Error::Gateway)?;
        let ready = state
            .backends
            .iter()
            .filter(|b| only.is_none_or(|o| o == b.addr))
            .all(|b| b.available);
        if ready {
            return Ok(state);
        }
        if Instant::now() > deadline {
            return Err(Error::ServingNotReady {
                what: format!("the gateway's replicas ({})", only.unwrap_or("all of them")),
                url: s.gateway.url(),
                log: s.gateway.dir.join("gateway.log").display().to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops the gateway (it drains its requests), then the replicas.
pub fn down(state_dir: &Path) {
    let Ok(Some(s)) = Serving::load(state_dir) else {
        return;
    };
    daemon::stop(&s.gateway.dir, STOP_GRACE);
    for r in &s.replicas {
        daemon::stop(&r.dir, STOP_GRACE);
    }
    // The next `up` starts replicas only when told to again.
    let _ = std::fs::remove_file(Serving::path(state_dir));
}

/// One replica's restart in a rollout.
#[derive(Debug, Serialize)]
pub struct RolloutStep {
    pub replica: String,
    pub drained_in: Duration,
    pub restarted_in: Duration,
    pub back_in: Duration,
}

/// Restarts the replicas one at a time: drain it at the gateway, wait for
/// its requests to finish, stop it, start it, wait until it is healthy and
/// the gateway has it back, then the next one. The other replicas take the
/// traffic meanwhile, so clients see no failure.
pub async fn rollout(
    config: &Config,
    launcher: &Launcher,
    mut progress: impl FnMut(&RolloutStep),
) -> Result<Vec<RolloutStep>> {
    let s = Serving::load(&config.state_dir)?.ok_or_else(|| Error::Rollout {
        reason: "no replicas: run `tributary up --replicas N` first".into(),
    })?;
    if s.replicas.len() < 2 {
        return Err(Error::Rollout {
            reason: format!(
                "{} replica: a rollout needs at least 2, or every request would fail while it restarts",
                s.replicas.len()
            ),
        });
    }
    let admin = s.gateway.admin();
    wait_in_rotation(&s, None).await?;
    let mut steps = Vec::new();
    for r in &s.replicas {
        let addr = r.addr();
        let t = Instant::now();
        admin.drain(&addr, true).await.map_err(Error::Gateway)?;
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let state = admin.state().await.map_err(Error::Gateway)?;
            let inflight = state
                .backends
                .iter()
                .find(|b| b.addr == addr)
                .map_or(0, |b| b.inflight);
            if inflight == 0 {
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!(replica = %addr, inflight, "drain timed out; restarting anyway");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let drained_in = t.elapsed();
        let t = Instant::now();
        daemon::stop(&r.dir, STOP_GRACE);
        start_replica(launcher, r, &config.state_dir).await?;
        let restarted_in = t.elapsed();
        let t = Instant::now();
        admin.drain(&addr, false).await.map_err(Error::Gateway)?;
        wait_in_rotation(&s, Some(&addr)).await?;
        let step = RolloutStep {
            replica: addr,
            drained_in,
            restarted_in,
            back_in: t.elapsed(),
        };
        progress(&step);
        steps.push(step);
    }
    Ok(steps)
}

/// `status` lines: the gateway, then each replica as the gateway sees it.
pub(crate) async fn status(state_dir: &Path) -> Vec<crate::ComponentStatus> {
    let Ok(Some(s)) = Serving::load(state_dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let gateway = s.gateway.admin().state().await;
    let pid = |dir: &Path| {
        daemon::alive(dir)
            .map(|p| format!("pid {p}"))
            .unwrap_or_else(|| "not running".into())
    };
    out.push(crate::ComponentStatus {
        component: "gateway".into(),
        address: s.gateway.url(),
        healthy: gateway.is_ok(),
        detail: match &gateway {
            Ok(g) => format!(
                "{:?}, {}/{} replicas in rotation, admin 127.0.0.1:{}, {}",
                g.policy,
                g.backends.iter().filter(|b| b.available).count(),
                g.backends.len(),
                s.gateway.admin_port,
                pid(&s.gateway.dir)
            ),
            Err(e) => e.to_string(),
        },
        freshness_seconds: None,
    });
    for (i, r) in s.replicas.iter().enumerate() {
        let seen = gateway
            .as_ref()
            .ok()
            .and_then(|g| g.backends.iter().find(|b| b.addr == r.addr()).cloned());
        let alive = daemon::alive(&r.dir).is_some();
        let (healthy, state) = match &seen {
            Some(b) if b.available => (alive, "in rotation".to_owned()),
            Some(b) if b.draining => (alive, "draining".to_owned()),
            Some(b) if b.ejected => (false, "ejected".to_owned()),
            Some(_) => (false, "failing health checks".to_owned()),
            None => (alive, "not seen by the gateway".to_owned()),
        };
        out.push(crate::ComponentStatus {
            component: format!("order API replica {i}"),
            address: format!("http://{}", r.addr()),
            healthy,
            detail: format!(
                "{state}, {} in flight, {}",
                seen.map_or(0, |b| b.inflight),
                pid(&r.dir)
            ),
            freshness_seconds: None,
        });
    }
    out
}
