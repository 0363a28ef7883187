//! `tributary up --observe`: the local stack's monitoring. A real
//! Prometheus (Debian's package) scrapes every tributary process, one
//! PostgreSQL exporter per node (a shard's primary and its standby each
//! have one, labelled `cluster` and `node`, so the metrics follow a
//! failover: whichever node is the primary reports the slots and the
//! replication, and `tributary_node_primary` says which it is) and a Redis
//! exporter for the product cache, evaluates the alert rules of
//! `deploy/prometheus/rules/tributary.yml` (the same file the Kubernetes
//! deployment loads, compiled into the binary) and sends what fires to a
//! real Alertmanager, which routes it to `[observe] alert_webhook`.
//!
//! Processes find Prometheus, not the other way round: a long-running
//! command started with `--metrics ADDR` (and `oltp serve`, whose API
//! serves `/metrics`) writes a target file under
//! `<state>/observe/targets/` while it runs ([`announce`]), which
//! Prometheus's file discovery picks up within seconds. The file is named
//! after the job and the address, and removed when the process stops
//! cleanly; a process that is killed leaves it behind, so Prometheus keeps
//! scraping the dead address and `ProcessDown` fires: a process that was
//! running and is not any more is what that alert is for.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::local::{PgNode, Ports, StackState};
use crate::status::ComponentStatus;
use crate::{Error, Result, io};

/// The alert rules, as shipped in `deploy/prometheus/rules/`.
pub const RULES: &str = include_str!("../../deploy/prometheus/rules/tributary.yml");
/// Alertmanager's routing, as shipped in `deploy/prometheus/`.
pub const ALERTMANAGER: &str = include_str!("../../deploy/prometheus/alertmanager.yml");
/// The PostgreSQL exporter's extra queries (replication slots).
pub const PG_QUERIES: &str = include_str!("../../deploy/prometheus/postgres-queries.yml");

/// `[observe]`: the local stack's monitoring.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObserveConfig {
    /// `tributary up` starts the monitoring without `--observe`.
    #[serde(default)]
    pub enabled: bool,
    /// Alertmanager posts alerts here (its webhook format); without one,
    /// alerts are kept in Alertmanager (`/api/v2/alerts`, `tributary top`).
    #[serde(default)]
    pub alert_webhook: Option<String>,
    /// How long Prometheus keeps samples, e.g. `7d`.
    #[serde(default = "default_retention")]
    pub retention: String,
    /// An OpenTelemetry collector (OTLP/HTTP, e.g. `http://127.0.0.1:4318`):
    /// the order API, the change reader and the ingester send it their
    /// spans (`tributary_metrics::otlp`). Without one, `tributary trace`
    /// reads what the lake recorded.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
}

fn default_retention() -> String {
    "7d".into()
}

/// One exporter of the stack: which cluster and node, on which port.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Exporter {
    pub cluster: String,
    /// The node's name (its data folder's: `shard0`, `shard0-b`); a node
    /// keeps its name and port across failovers, only its role changes.
    #[serde(default)]
    pub node: String,
    pub port: u16,
}

/// Every node of the stack with its cluster's name, in a stable order.
fn nodes(stack: &StackState) -> Vec<(String, PgNode)> {
    stack
        .all_pg()
        .flat_map(|pg| {
            let mut nodes: Vec<PgNode> = std::iter::once(pg.primary())
                .chain(pg.standby.clone())
                .collect();
            nodes.sort_by_key(PgNode::name);
            nodes.into_iter().map(|n| (pg.name.clone(), n))
        })
        .collect()
}

/// What `up --observe` made, kept in `<state>/observe/observe.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ObserveState {
    pub prometheus_port: u16,
    pub alertmanager_port: u16,
    pub exporters: Vec<Exporter>,
    /// The Redis exporter's port, when the stack has a Redis.
    #[serde(default)]
    pub redis_exporter_port: Option<u16>,
}

impl ObserveState {
    pub fn prometheus_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.prometheus_port)
    }

    pub fn alertmanager_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.alertmanager_port)
    }

    /// Reads the state of an earlier `up --observe`; `None` before one.
    pub fn load(state_dir: &Path) -> Result<Option<ObserveState>> {
        let p = dir(state_dir).join("observe.json");
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
        let p = dir(state_dir).join("observe.json");
        let text = serde_json::to_string_pretty(self).map_err(|source| Error::StateFile {
            path: p.display().to_string(),
            source,
        })?;
        std::fs::write(&p, text).map_err(io(format!("writing {}", p.display())))
    }
}

/// `<state>/observe`.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("observe")
}

fn targets_dir(state_dir: &Path) -> PathBuf {
    dir(state_dir).join("targets")
}

/// A running process's entry in Prometheus's file discovery; removed on
/// drop (see the module documentation).
#[derive(Debug)]
pub struct Announcement {
    path: PathBuf,
}

impl Drop for Announcement {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Announces that the process `job` (`cdc`, `ingest`, `oltp`, ...) serves
/// `/metrics` at `addr`, as the Prometheus job `tributary-<job>`. A
/// wildcard address is announced as loopback.
pub fn announce(state_dir: &Path, job: &str, addr: std::net::SocketAddr) -> Result<Announcement> {
    let addr = if addr.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let dir = targets_dir(state_dir);
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let name = format!("{job}-{}_{}", addr.ip(), addr.port());
    let path = dir.join(format!("{name}.json"));
    let body = serde_json::json!([{
        "targets": [addr.to_string()],
        "labels": {"job": format!("tributary-{job}"), "pid": std::process::id().to_string()},
    }]);
    // Written aside and renamed, so discovery never reads half a file.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, body.to_string()).map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io(format!("writing {}", path.display())))?;
    Ok(Announcement { path })
}

/// Prometheus's configuration for the local stack.
pub fn prometheus_config(state_dir: &Path, state: &ObserveState) -> String {
    let d = dir(state_dir);
    let exporters: String = state
        .exporters
        .iter()
        .map(|e| {
            format!(
                "      - targets: [\"127.0.0.1:{}\"]\n        labels: {{cluster: \"{}\", node: \"{}\"}}\n",
                e.port, e.cluster, e.node
            )
        })
        .collect();
    let redis = state
        .redis_exporter_port
        .map(|port| {
            format!(
                "\x20 - job_name: redis\n    static_configs:\n      - targets: [\"127.0.0.1:{port}\"]\n"
            )
        })
        .unwrap_or_default();
    format!(
        "# Written by `tributary up --observe` (stack/src/observe.rs); rewritten on every up.\n\
         global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n\
         rule_files:\n  - {rules}\n\
         alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [\"127.0.0.1:{am}\"]\n\
         scrape_configs:\n\
         \x20 - job_name: tributary\n    file_sd_configs:\n      - files: [\"{targets}/*.json\"]\n        refresh_interval: 5s\n\
         \x20 - job_name: postgres\n    static_configs:\n{exporters}{redis}\
         \x20 - job_name: prometheus\n    static_configs:\n      - targets: [\"127.0.0.1:{prom}\"]\n\
         \x20 - job_name: alertmanager\n    static_configs:\n      - targets: [\"127.0.0.1:{am}\"]\n",
        rules = d.join("rules").join("tributary.yml").display(),
        targets = targets_dir(state_dir).display(),
        am = state.alertmanager_port,
        prom = state.prometheus_port,
    )
}

/// Alertmanager's configuration: the routing and inhibitions of
/// `deploy/prometheus/alertmanager.yml` (the same file the cluster uses),
/// with its receivers pointed at `[observe] alert_webhook` and a short
/// first wait, so a local alert arrives within seconds.
pub fn alertmanager_config(config: &ObserveConfig) -> String {
    let (routing, _) = ALERTMANAGER
        .split_once("\nreceivers:\n")
        .expect("deploy/prometheus/alertmanager.yml ends with its receivers");
    assert!(
        routing.contains("group_wait: 30s"),
        "the shipped routing changed"
    );
    let routing = routing.replace("group_wait: 30s", "group_wait: 1s");
    let receiver = |name: &str| match &config.alert_webhook {
        Some(url) => format!(
            "  - name: {name}\n    webhook_configs:\n      - url: {}\n        send_resolved: true\n",
            serde_json::Value::String(url.clone())
        ),
        None => format!("  - name: {name}\n"),
    };
    format!(
        "# Written by `tributary up --observe` (stack/src/observe.rs) from\n\
         # deploy/prometheus/alertmanager.yml; rewritten on every up.\n{routing}\nreceivers:\n{}{}",
        receiver("pager"),
        receiver("team")
    )
}

/// The first of `names` on `PATH`.
fn find(names: &[&str]) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::ObserveToolMissing {
            program: names[0].to_string(),
        })
}

fn log_files(dir: &Path, name: &str) -> Result<(std::fs::File, std::fs::File)> {
    let path = dir.join(format!("{name}.log"));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io(format!("opening {}", path.display())))?;
    let err = out
        .try_clone()
        .map_err(io(format!("opening {}", path.display())))?;
    Ok((out, err))
}

/// Starts (idempotently) Prometheus, Alertmanager and an exporter per
/// PostgreSQL cluster of `stack`, each detached like the broker, and
/// waits until they answer.
pub async fn up(config: &Config, stack: &StackState) -> Result<ObserveState> {
    let prometheus = find(&["prometheus"])?;
    let alertmanager = find(&["prometheus-alertmanager", "alertmanager"])?;
    let exporter = find(&["prometheus-postgres-exporter", "postgres_exporter"])?;
    let d = dir(&config.state_dir);
    for sub in ["rules", "targets", "prometheus", "alertmanager"] {
        std::fs::create_dir_all(d.join(sub))
            .map_err(io(format!("creating {}", d.join(sub).display())))?;
    }
    let mut ports = Ports::new();
    let nodes = nodes(stack);
    let same_nodes = |s: &ObserveState| {
        s.exporters.len() == nodes.len()
            && s.exporters
                .iter()
                .zip(&nodes)
                .all(|(e, (cluster, n))| e.cluster == *cluster && e.node == n.name())
    };
    let mut state = match ObserveState::load(&config.state_dir)? {
        Some(s) if same_nodes(&s) => s,
        old => {
            // Exporters of another layout (a stack that gained standbys)
            // make way for the new ones.
            if let Some(old) = old {
                for e in &old.exporters {
                    let e_dir = d.join(exporter_dir(e));
                    crate::daemon::stop(&e_dir, Duration::from_secs(5));
                }
            }
            ObserveState {
                prometheus_port: ports.next()?,
                alertmanager_port: ports.next()?,
                exporters: nodes
                    .iter()
                    .map(|(cluster, n)| {
                        Ok(Exporter {
                            cluster: cluster.clone(),
                            node: n.name(),
                            port: ports.next()?,
                        })
                    })
                    .collect::<Result<_>>()?,
                redis_exporter_port: None,
            }
        }
    };
    if stack.redis.is_some() && state.redis_exporter_port.is_none() {
        state.redis_exporter_port = Some(ports.next()?);
    }
    // Free the ports for the processes that are to listen on them.
    drop(ports);
    state.save(&config.state_dir)?;
    let write = |path: PathBuf, text: &str| {
        std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))
    };
    write(d.join("rules").join("tributary.yml"), RULES)?;
    write(d.join("postgres-queries.yml"), PG_QUERIES)?;
    write(
        d.join("prometheus.yml"),
        &prometheus_config(&config.state_dir, &state),
    )?;
    write(
        d.join("alertmanager.yml"),
        &alertmanager_config(&config.observe),
    )?;

    let am_dir = d.join("alertmanager");
    if crate::daemon::alive(&am_dir).is_none() {
        let (out, err) = log_files(&am_dir, "alertmanager")?;
        let mut c = Command::new(&alertmanager);
        c.arg(format!(
            "--config.file={}",
            d.join("alertmanager.yml").display()
        ))
        .arg(format!("--storage.path={}", am_dir.join("data").display()))
        .arg(format!(
            "--web.listen-address=127.0.0.1:{}",
            state.alertmanager_port
        ))
        // No gossip with other Alertmanagers (it would listen on every
        // interface).
        .arg("--cluster.listen-address=")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
        crate::daemon::spawn(c, &am_dir)?;
    }
    for (e, (_, node)) in state.exporters.iter().zip(&nodes) {
        let e_dir = d.join(exporter_dir(e));
        if crate::daemon::alive(&e_dir).is_some() {
            continue;
        }
        std::fs::create_dir_all(&e_dir).map_err(io(format!("creating {}", e_dir.display())))?;
        let (out, err) = log_files(&e_dir, "exporter")?;
        let mut c = Command::new(&exporter);
        c.env("DATA_SOURCE_NAME", exporter_dsn(node))
            .arg(format!("--web.listen-address=127.0.0.1:{}", e.port))
            .arg(format!(
                "--extend.query-path={}",
                d.join("postgres-queries.yml").display()
            ))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        crate::daemon::spawn(c, &e_dir)?;
    }
    if let (Some(redis), Some(port)) = (&stack.redis, state.redis_exporter_port) {
        let r_dir = d.join("exporter-redis");
        if crate::daemon::alive(&r_dir).is_none() {
            let exporter = find(&["prometheus-redis-exporter", "redis_exporter"])?;
            std::fs::create_dir_all(&r_dir).map_err(io(format!("creating {}", r_dir.display())))?;
            let (out, err) = log_files(&r_dir, "exporter")?;
            let mut c = Command::new(&exporter);
            c.arg(format!("-redis.addr={}", redis.url()))
                .arg(format!("-web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            crate::daemon::spawn(c, &r_dir)?;
        }
    }
    let p_dir = d.join("prometheus");
    if crate::daemon::alive(&p_dir).is_none() {
        let (out, err) = log_files(&p_dir, "prometheus")?;
        let mut c = Command::new(&prometheus);
        c.arg(format!(
            "--config.file={}",
            d.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            p_dir.join("data").display()
        ))
        .arg(format!(
            "--storage.tsdb.retention.time={}",
            config.observe.retention
        ))
        .arg(format!(
            "--web.listen-address=127.0.0.1:{}",
            state.prometheus_port
        ))
        // `up` rewrites the configuration; a running Prometheus reloads
        // it on POST /-/reload.
        .arg("--web.enable-lifecycle")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
        crate::daemon::spawn(c, &p_dir)?;
    } else {
        let _ = http()
            .post(format!("{}/-/reload", state.prometheus_url()))
            .send()
            .await;
    }
    for (what, url, log) in [
        (
            "Alertmanager",
            format!("{}/-/ready", state.alertmanager_url()),
            am_dir.join("alertmanager.log"),
        ),
        (
            "Prometheus",
            format!("{}/-/ready", state.prometheus_url()),
            p_dir.join("prometheus.log"),
        ),
    ] {
        wait_ready(what, &url, &log).await?;
    }
    Ok(state)
}

/// The exporter's connection: the node's `postgres` database over TCP
/// as the stack's superuser (trust on loopback).
fn exporter_dsn(node: &PgNode) -> String {
    format!(
        "postgresql://tributary@127.0.0.1:{}/postgres?sslmode=disable",
        node.port
    )
}

/// An exporter's folder under `<state>/observe`.
fn exporter_dir(e: &Exporter) -> String {
    if e.node.is_empty() {
        format!("exporter-{}", e.cluster)
    } else {
        format!("exporter-{}", e.node)
    }
}

/// `GET url` as JSON; `None` when it does not answer with a 2xx and JSON.
pub async fn get_json(client: &reqwest::Client, url: &str) -> Option<serde_json::Value> {
    let r = client.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// Prometheus's instant value of `query` per value of `label`; `None` when
/// Prometheus does not answer.
pub async fn query_by_label(
    client: &reqwest::Client,
    prom: &str,
    query: &str,
    label: &str,
) -> Option<std::collections::BTreeMap<String, f64>> {
    let url = reqwest::Url::parse_with_params(&format!("{prom}/api/v1/query"), [("query", query)])
        .ok()?;
    let body = get_json(client, url.as_str()).await?;
    Some(
        body["data"]["result"]
            .as_array()?
            .iter()
            .filter_map(|r| {
                let key = r["metric"][label].as_str().unwrap_or("").to_string();
                let v = r["value"][1].as_str()?.parse::<f64>().ok()?;
                Some((key, v))
            })
            .collect(),
    )
}

/// Prometheus's values of `query` over the last `window` at `step`, per
/// value of `label`, as `(unix seconds, value)`; `None` when Prometheus does
/// not answer.
pub async fn range_by_label(
    client: &reqwest::Client,
    prom: &str,
    query: &str,
    label: &str,
    window: Duration,
    step: Duration,
) -> Option<std::collections::BTreeMap<String, Vec<(f64, f64)>>> {
    let end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    let start = end - window.as_secs_f64();
    let url = reqwest::Url::parse_with_params(
        &format!("{prom}/api/v1/query_range"),
        [
            ("query", query.to_string()),
            ("start", format!("{start:.3}")),
            ("end", format!("{end:.3}")),
            ("step", format!("{}", step.as_secs().max(1))),
        ],
    )
    .ok()?;
    let body = get_json(client, url.as_str()).await?;
    Some(
        body["data"]["result"]
            .as_array()?
            .iter()
            .map(|r| {
                let key = r["metric"][label].as_str().unwrap_or("").to_string();
                let points = r["values"]
                    .as_array()
                    .map(|vs| {
                        vs.iter()
                            .filter_map(|p| {
                                Some((p[0].as_f64()?, p[1].as_str()?.parse::<f64>().ok()?))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (key, points)
            })
            .collect(),
    )
}

/// The alerts Prometheus holds (pending and firing), with their labels.
pub async fn alerts(client: &reqwest::Client, prom: &str) -> Option<Vec<serde_json::Value>> {
    get_json(client, &format!("{prom}/api/v1/alerts")).await?["data"]["alerts"]
        .as_array()
        .cloned()
}

/// A client for the local monitoring (short timeouts: everything is on
/// loopback).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap_or_default()
}

async fn wait_ready(what: &str, url: &str, log: &Path) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http().get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::ObserveNotReady {
                what: what.to_string(),
                url: url.to_string(),
                log: log.display().to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops the monitoring processes; the targets of processes that are gone
/// go with them.
pub fn down(state_dir: &Path) {
    let d = dir(state_dir);
    let Ok(entries) = std::fs::read_dir(&d) else {
        return;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        if p.join("pid").exists() {
            crate::daemon::stop(&p, Duration::from_secs(5));
        }
    }
    let _ = std::fs::remove_dir_all(targets_dir(state_dir));
}

/// `status` lines: Prometheus (with its targets' health and the alerts
/// firing), Alertmanager and each exporter. Empty when `up --observe` never
/// ran.
pub async fn status(state_dir: &Path) -> Vec<ComponentStatus> {
    let Ok(Some(state)) = ObserveState::load(state_dir) else {
        return vec![];
    };
    let client = http();
    let mut out = Vec::new();
    let prom = state.prometheus_url();
    let targets = get_json(&client, &format!("{prom}/api/v1/targets")).await;
    let (healthy, detail) = match &targets {
        Some(t) => {
            let active = t["data"]["activeTargets"].as_array().cloned();
            let active = active.unwrap_or_default();
            let down: Vec<String> = active
                .iter()
                .filter(|t| t["health"] != "up")
                .map(|t| {
                    format!(
                        "{} {}",
                        t["labels"]["job"].as_str().unwrap_or("?"),
                        t["labels"]["instance"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            let firing = alerts(&client, &prom)
                .await
                .unwrap_or_default()
                .iter()
                .filter(|a| a["state"] == "firing")
                .filter_map(|a| a["labels"]["alertname"].as_str().map(String::from))
                .collect::<Vec<_>>();
            (
                true,
                format!(
                    "{} targets, {} down{}; alerts firing: {}",
                    active.len(),
                    down.len(),
                    if down.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", down.join(", "))
                    },
                    if firing.is_empty() {
                        "none".to_string()
                    } else {
                        firing.join(", ")
                    }
                ),
            )
        }
        None => (false, "not answering".to_string()),
    };
    out.push(ComponentStatus {
        component: "prometheus".into(),
        address: state.prometheus_url(),
        healthy,
        detail,
        freshness_seconds: None,
    });
    let am = get_json(
        &client,
        &format!("{}/api/v2/status", state.alertmanager_url()),
    )
    .await;
    out.push(ComponentStatus {
        component: "alertmanager".into(),
        address: state.alertmanager_url(),
        healthy: am.is_some(),
        detail: if am.is_some() {
            "routing alerts".into()
        } else {
            "not answering".into()
        },
        freshness_seconds: None,
    });
    for e in &state.exporters {
        let url = format!("http://127.0.0.1:{}/metrics", e.port);
        let body = match client.get(&url).send().await {
            Ok(r) => r.text().await.ok(),
            Err(_) => None,
        };
        let role = |b: &str| {
            let primary = b
                .lines()
                .any(|l| l.starts_with("tributary_node_primary") && l.trim_end().ends_with(" 1"));
            if primary { "primary" } else { "standby" }
        };
        let (healthy, detail) = match body {
            Some(b) if b.lines().any(|l| l.trim() == "pg_up 1") => {
                (true, format!("exporting {} ({})", e.node, role(&b)))
            }
            Some(_) => (false, format!("cannot reach {}", e.node)),
            None => (false, "not answering".into()),
        };
        out.push(ComponentStatus {
            component: format!("postgres exporter {}", e.node),
            address: url,
            healthy,
            detail,
            freshness_seconds: None,
        });
    }
    if let Some(port) = state.redis_exporter_port {
        let url = format!("http://127.0.0.1:{port}/metrics");
        let body = match client.get(&url).send().await {
            Ok(r) => r.text().await.ok(),
            Err(_) => None,
        };
        let (healthy, detail) = match body {
            Some(b) if b.lines().any(|l| l.trim() == "redis_up 1") => {
                (true, "exporting the product cache's Redis".to_string())
            }
            Some(_) => (false, "cannot reach Redis".into()),
            None => (false, "not answering".into()),
        };
        out.push(ComponentStatus {
            component: "redis exporter".into(),
            address: url,
            healthy,
            detail,
            freshness_seconds: None,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_are_files_that_go_with_the_process() {
        let tmp = tempfile::tempdir().unwrap();
        let a = announce(tmp.path(), "cdc", "0.0.0.0:9101".parse().unwrap()).unwrap();
        let path = targets_dir(tmp.path()).join("cdc-127.0.0.1_9101.json");
        let body: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(body[0]["targets"][0], "127.0.0.1:9101");
        assert_eq!(body[0]["labels"]["job"], "tributary-cdc");
        drop(a);
        assert!(!path.exists(), "the target outlived its announcement");
    }

    #[test]
    fn the_configurations_pass_promtool_and_amtool() {
        let tmp = tempfile::tempdir().unwrap();
        let state = ObserveState {
            prometheus_port: 19090,
            alertmanager_port: 19093,
            exporters: vec![Exporter {
                cluster: "shard0".into(),
                node: "shard0-b".into(),
                port: 19187,
            }],
            redis_exporter_port: Some(19121),
        };
        let d = dir(tmp.path());
        std::fs::create_dir_all(d.join("rules")).unwrap();
        std::fs::write(d.join("rules").join("tributary.yml"), RULES).unwrap();
        let prom = d.join("prometheus.yml");
        std::fs::write(&prom, prometheus_config(tmp.path(), &state)).unwrap();
        let am = d.join("alertmanager.yml");
        let config = ObserveConfig {
            alert_webhook: Some("http://127.0.0.1:1/hook".into()),
            ..Default::default()
        };
        let am_text = alertmanager_config(&config);
        // The shipped routing and inhibitions, with the local receivers.
        for kept in [
            r#"matchers: ['severity="critical"']"#,
            r#"source_matchers: ['alertname="IngestStopped"']"#,
            "group_wait: 1s",
            "http://127.0.0.1:1/hook",
        ] {
            assert!(am_text.contains(kept), "{kept} missing from:\n{am_text}");
        }
        std::fs::write(&am, am_text).unwrap();
        for (tool, args) in [
            ("promtool", vec!["check", "config"]),
            ("amtool", vec!["check-config"]),
        ] {
            let file = if tool == "promtool" { &prom } else { &am };
            let out = Command::new(tool)
                .args(&args)
                .arg(file)
                .output()
                .unwrap_or_else(|e| {
                    panic!("{tool} (Debian's prometheus packages, scripts/bootstrap.sh): {e}")
                });
            assert!(
                out.status.success(),
                "{tool} refused {}:\n{}{}\n{}",
                file.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(file).unwrap()
            );
        }
    }
}
