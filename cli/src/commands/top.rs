//! `tributary top`: a terminal dashboard of the running platform, redrawn
//! every few seconds: every component's health (as `status` reads it),
//! per table how far silver is behind, who writes it, the consumer lag,
//! the change rate and the dead letters, the slots' lag, the alerts firing
//! and the fraud alerts raised, and the scheduler's newest runs.
//!
//! Rates, lags, dead letters and alerts come from the local stack's
//! Prometheus and Alertmanager (`tributary up --observe`); without them
//! those columns show `–` and everything else still shows. Plain ANSI
//! (clear, home, bold, colour): no terminal library, and `--once` prints
//! one frame for scripts and tests.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use anyhow::Result;
use tributary::shutdown_on_signals;
use tributary_model::domain::TABLES;
use tributary_stack::observe::{self, ObserveState};
use tributary_stack::{ComponentStatus, Config, Platform};
use tributary_workflows::history::History;

pub async fn run(config: Config, every: Duration, once: bool) -> Result<()> {
    let platform = Platform::load(config)?;
    let shutdown = shutdown_on_signals();
    let colour = !once;
    // One connection to the run history for the dashboard's life.
    let history = match platform.lake_config().coordinator_dsn.as_deref() {
        Some(dsn) => Some(History::connect(dsn).await.map_err(|e| e.to_string())),
        None => None,
    };
    loop {
        let frame = frame(&platform, history.as_ref(), colour, every).await?;
        let mut out = std::io::stdout().lock();
        if once {
            write!(out, "{frame}")?;
            return Ok(());
        }
        // Home, clear, then the frame.
        write!(out, "\x1b[H\x1b[2J{frame}")?;
        out.flush()?;
        drop(out);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

fn bold(s: &str, colour: bool) -> String {
    if colour {
        format!("\x1b[1m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

fn health(ok: bool, colour: bool) -> String {
    match (ok, colour) {
        (true, true) => "\x1b[32mok\x1b[0m  ".into(),
        (false, true) => "\x1b[31mDOWN\x1b[0m".into(),
        (true, false) => "ok  ".into(),
        (false, false) => "DOWN".into(),
    }
}

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut c: String = s.chars().take(n.saturating_sub(1)).collect();
        c.push('…');
        c
    }
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

async fn frame(
    platform: &Platform,
    history: Option<&std::result::Result<History, String>>,
    colour: bool,
    every: Duration,
) -> Result<String> {
    let mut f = String::new();
    let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC");
    writeln!(
        f,
        "{}  {now}  (every {:.0?}; Ctrl-C quits)",
        bold("tributary top", colour),
        every
    )?;
    let status: Vec<ComponentStatus> = tributary_stack::status(platform).await?;

    writeln!(f, "\n{}", bold("COMPONENTS", colour))?;
    for s in status
        .iter()
        .filter(|s| !s.component.starts_with("silver.") && !s.component.starts_with("lake writer "))
    {
        writeln!(
            f,
            "  {} {:<26} {}",
            health(s.healthy, colour),
            cut(&s.component, 26),
            cut(&s.detail, 100)
        )?;
    }

    let observe = ObserveState::load(&platform.config().state_dir)
        .ok()
        .flatten();
    let client = observe::http();
    let prom = observe.as_ref().map(|o| o.prometheus_url());
    let q = |query: &'static str, label: &'static str| {
        let (client, prom) = (client.clone(), prom.clone());
        async move {
            match prom {
                Some(p) => observe::query_by_label(&client, &p, query, label).await,
                None => None,
            }
        }
    };
    let lag = q(
        "sum by (table) (tributary_lake_consumer_lag_messages)",
        "table",
    )
    .await;
    let rate = q(
        "sum by (table) (rate(tributary_lake_silver_changes_total[1m]))",
        "table",
    )
    .await;
    let dead = q(
        "sum by (table) (tributary_lake_dead_letters_total)",
        "table",
    )
    .await;
    let get = |m: &Option<BTreeMap<String, f64>>, t: &str| {
        m.as_ref().map(|m| m.get(t).copied().unwrap_or(0.0))
    };

    writeln!(f, "\n{}", bold("TABLES", colour))?;
    writeln!(
        f,
        "  {:<20} {:>10} {:>12} {:>10} {:>8}  writer",
        "table", "behind s", "consumer lag", "changes/s", "dead"
    )?;
    for t in TABLES {
        let (behind, writer) = tributary_stack::table_status(&status, t.name);
        let writer = writer.split(" (").next().unwrap_or(writer);
        writeln!(
            f,
            "  {:<20} {:>10} {:>12} {:>10} {:>8}  {}",
            t.name,
            num(behind, 1),
            num(get(&lag, t.name), 0),
            num(get(&rate, t.name), 1),
            num(get(&dead, t.name), 0),
            cut(writer, 40)
        )?;
    }

    writeln!(f, "\n{}", bold("ALERTS", colour))?;
    match &prom {
        None => writeln!(
            f,
            "  – (start the monitoring with `tributary up --observe` for lags, rates and alerts)"
        )?,
        Some(p) => {
            let firing: Vec<String> = observe::alerts(&client, p)
                .await
                .unwrap_or_default()
                .iter()
                .map(|a| {
                    let l = &a["labels"];
                    let what = ["table", "job", "source", "slot_name"]
                        .iter()
                        .find_map(|k| l[*k].as_str())
                        .unwrap_or("");
                    format!(
                        "{} {} {} ({})",
                        a["state"].as_str().unwrap_or("?"),
                        l["alertname"].as_str().unwrap_or("?"),
                        what,
                        l["severity"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            if firing.is_empty() {
                writeln!(f, "  none pending or firing")?;
            }
            for a in firing {
                writeln!(f, "  {a}")?;
            }
            if let Some(fraud) = observe::query_by_label(
                &client,
                p,
                "sum by (rule) (tributary_live_fraud_alerts_total)",
                "rule",
            )
            .await
                && !fraud.is_empty()
            {
                let rules: Vec<String> = fraud.iter().map(|(r, n)| format!("{r} {n:.0}")).collect();
                writeln!(f, "  fraud alerts raised: {}", rules.join(", "))?;
            }
        }
    }

    writeln!(f, "\n{}", bold("SCHEDULER RUNS", colour))?;
    match history {
        None => writeln!(f, "  – (no catalog database)")?,
        Some(history) => match history {
            Err(e) => writeln!(f, "  – ({e})")?,
            Ok(history) => {
                let runs = history.recent(None, 8).await.unwrap_or_default();
                if runs.is_empty() {
                    writeln!(f, "  no runs yet")?;
                }
                for r in runs {
                    let took = match (r.started_at, r.ended_at) {
                        (Some(s), Some(e)) => {
                            format!("{:.1} s", (e - s).num_milliseconds() as f64 / 1e3)
                        }
                        (Some(_), None) => "running".into(),
                        _ => "waiting".into(),
                    };
                    writeln!(
                        f,
                        "  {:<18} {:<10} attempt {:<2} {:>9}  {}",
                        cut(&r.job, 18),
                        r.state,
                        r.attempts,
                        took,
                        cut(r.error.as_deref().unwrap_or(""), 60)
                    )?;
                }
            }
        },
    }
    Ok(f)
}
