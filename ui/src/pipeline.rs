//! The pipeline, live: every component's health (what `status` reads), per
//! table how far silver is behind, who holds its lease, the consumer lag,
//! the change rate and the dead letters over the last 15 minutes, the
//! slots' lag, the alerts, and the lineage from source to gold.
//!
//! Rates and lags come from the local stack's Prometheus (`up --observe`);
//! without it those columns say so and the rest still shows. The page
//! fetches `/pipeline/live` every few seconds and swaps it in.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use tributary_model::domain::{TABLES, topic_of};
use tributary_stack::observe::{self, ObserveState};

use crate::html::{self, esc};

/// The window of the small charts, and their step.
const WINDOW: Duration = Duration::from_secs(15 * 60);
const STEP: Duration = Duration::from_secs(15);
/// Samples the page keeps itself (one per refresh, every 5 s while a
/// page is open): 15 minutes.
const SAMPLES: usize = 180;

/// Per table: how far silver is behind (s) and silver's Delta version.
type Sample = BTreeMap<&'static str, (Option<f64>, Option<f64>)>;

/// What the console sampled itself, each time the pipeline was shown, so
/// freshness and commits chart without Prometheus too.
#[derive(Default)]
pub(crate) struct Samples(Mutex<VecDeque<(f64, Sample)>>);

impl Samples {
    fn push(&self, at: f64, sample: Sample) {
        let mut q = self.0.lock().expect("samples lock");
        // Two pages open at once refresh twice as often: keep one a second.
        if q.back().is_some_and(|(t, _)| at - t < 1.0) {
            q.pop_back();
        }
        q.push_back((at, sample));
        while q.len() > SAMPLES {
            q.pop_front();
        }
    }

    /// One table's series of `pick` (0: behind, 1: version).
    fn series(&self, table: &str, pick: usize) -> Vec<(f64, f64)> {
        let q = self.0.lock().expect("samples lock");
        q.iter()
            .filter_map(|(t, s)| {
                let v = s.get(table)?;
                let v = if pick == 0 { v.0 } else { v.1 };
                v.map(|v| (*t, v))
            })
            .collect()
    }
}

pub(crate) async fn page(State(state): State<crate::State>) -> Response {
    let live = fragment(&state).await;
    let lineage = lineage(&state);
    let body = format!(
        r#"<h1>Pipeline</h1>
<div id="live" data-refresh="/pipeline/live" aria-live="polite">{live}</div>
<h2>Lineage</h2>
<p class="muted">Each source table's changes go to one topic, to its change log in bronze and its current state in silver; the gold models name what they read.</p>
{lineage}"#
    );
    html::page("Pipeline", "pipeline", &body).into_response()
}

pub(crate) async fn live(State(state): State<crate::State>) -> Response {
    Html(fragment(&state).await).into_response()
}

async fn fragment(state: &crate::AppState) -> String {
    let mut f = String::new();
    let now = chrono::Utc::now().format("%H:%M:%S UTC");
    f.push_str(&format!(r#"<p class="muted">as of {now}</p>"#));
    let status = match tributary_stack::status(&state.platform).await {
        Ok(s) => s,
        Err(e) => {
            f.push_str(&format!(
                r#"<p class="error">{}</p>"#,
                esc(&tributary_model::error_chain(&e))
            ));
            Vec::new()
        }
    };

    // This refresh's sample: silver's freshness and version per table.
    let mut sample = Sample::new();
    for t in TABLES {
        let (behind, _) = tributary_stack::table_status(&status, t.name);
        let version = match state.session.lake().open("silver", t.name).await {
            Ok(Some(table)) => table.version().map(|v| v as f64),
            _ => None,
        };
        sample.insert(t.name, (behind, version));
    }
    let now_s = chrono::Utc::now().timestamp_millis() as f64 / 1e3;
    state.samples.push(now_s, sample);

    f.push_str(r#"<h2>Components</h2><div class="grid-wrap"><table class="grid components"><thead><tr><th>health</th><th>component</th><th>address</th><th>detail</th></tr></thead><tbody>"#);
    for s in status
        .iter()
        .filter(|s| !s.component.starts_with("silver.") && !s.component.starts_with("lake writer "))
    {
        f.push_str(&format!(
            r#"<tr><td><span class="badge {cls}">{h}</span></td><td>{c}</td><td>{a}</td><td class="detail">{d}</td></tr>"#,
            cls = if s.healthy { "ok" } else { "down" },
            h = if s.healthy { "ok" } else { "DOWN" },
            c = esc(&s.component),
            a = esc(&s.address),
            d = esc(&s.detail),
        ));
    }
    f.push_str("</tbody></table></div>");

    let observe = ObserveState::load(&state.platform.config().state_dir)
        .ok()
        .flatten();
    let prom = observe.as_ref().map(ObserveState::prometheus_url);
    let range = |query: &'static str, label: &'static str| {
        let (client, prom) = (state.http.clone(), prom.clone());
        async move {
            match prom {
                Some(p) => observe::range_by_label(&client, &p, query, label, WINDOW, STEP)
                    .await
                    .unwrap_or_default(),
                None => BTreeMap::new(),
            }
        }
    };
    let behind_series = range(
        "max by (table) (tributary_lake_silver_freshness_seconds)",
        "table",
    )
    .await;
    let lag = range(
        "sum by (table) (tributary_lake_consumer_lag_messages)",
        "table",
    )
    .await;
    let rate = range(
        "sum by (table) (rate(tributary_lake_silver_changes_total[1m]))",
        "table",
    )
    .await;
    let dead = range(
        "sum by (table) (tributary_lake_dead_letters_total)",
        "table",
    )
    .await;
    let slots = range("max by (slot) (tributary_cdc_lag_bytes)", "slot").await;
    if prom.is_none() {
        f.push_str(r#"<p class="muted">Lags, rates and alerts need the monitoring: <code>tributary up --observe</code>.</p>"#);
    }

    f.push_str(r#"<h2>Tables</h2><div class="grid-wrap"><table class="grid tables"><thead><tr><th>table</th><th>silver behind (s)</th><th>silver version</th><th>consumer lag</th><th>changes/s</th><th>dead letters</th><th>lease held by</th></tr></thead><tbody>"#);
    let spark = |m: &BTreeMap<String, Vec<(f64, f64)>>, t: &str, digits| {
        html::sparkline(m.get(t).map(Vec::as_slice).unwrap_or(&[]), digits)
    };
    for t in TABLES {
        let (behind, writer) = tributary_stack::table_status(&status, t.name);
        f.push_str(&format!(
            r#"<tr data-table="{n}"><td><a href="/lake/silver/{n}">{n}</a></td><td class="behind">{b}</td><td class="version">{v}</td><td>{l}</td><td>{r}</td><td>{d}</td><td class="detail">{w}</td></tr>"#,
            n = esc(t.name),
            b = match behind_series.get(t.name) {
                Some(points) if !points.is_empty() => html::sparkline(points, 1),
                _ => {
                    let sampled = state.samples.series(t.name, 0);
                    if sampled.is_empty() {
                        behind.map_or("–".into(), |b| format!("{b:.1}"))
                    } else {
                        html::sparkline(&sampled, 1)
                    }
                }
            },
            v = html::sparkline_of_counter(&state.samples.series(t.name, 1), 0),
            l = spark(&lag, t.name, 0),
            r = spark(&rate, t.name, 1),
            d = spark(&dead, t.name, 0),
            w = esc(writer),
        ));
    }
    f.push_str("</tbody></table></div>");

    if !slots.is_empty() {
        f.push_str(r#"<h2>Replication slots</h2><div class="grid-wrap"><table class="grid"><thead><tr><th>slot</th><th>lag (bytes)</th></tr></thead><tbody>"#);
        for (slot, points) in &slots {
            f.push_str(&format!(
                "<tr><td>{}</td><td>{}</td></tr>",
                esc(slot),
                html::sparkline(points, 0)
            ));
        }
        f.push_str("</tbody></table></div>");
    }

    if let Some(p) = &prom {
        let alerts = observe::alerts(&state.http, p).await.unwrap_or_default();
        f.push_str("<h2>Alerts</h2>");
        if alerts.is_empty() {
            f.push_str(r#"<p class="muted">none pending or firing</p>"#);
        } else {
            f.push_str("<ul class=\"alerts\">");
            for a in alerts {
                let l = &a["labels"];
                let what = ["table", "job", "source", "slot_name"]
                    .iter()
                    .find_map(|k| l[*k].as_str())
                    .unwrap_or("");
                f.push_str(&format!(
                    r#"<li><span class="badge {s}">{s}</span> {n} {w} ({sev}) <span class="muted">{sum}</span></li>"#,
                    s = esc(a["state"].as_str().unwrap_or("?")),
                    n = esc(l["alertname"].as_str().unwrap_or("?")),
                    w = esc(what),
                    sev = esc(l["severity"].as_str().unwrap_or("?")),
                    sum = esc(a["annotations"]["summary"].as_str().unwrap_or("")),
                ));
            }
            f.push_str("</ul>");
        }
    }
    f
}

/// Source table → topic → bronze → silver → the gold models reading it.
fn lineage(state: &crate::AppState) -> String {
    let prefix = state
        .platform
        .kafka()
        .map(|k| k.topic_prefix.clone())
        .unwrap_or_else(|_| "tributary".into());
    let models = tributary_etl::models();
    let mut out = String::from(
        r#"<div class="grid-wrap"><table class="grid lineage"><thead><tr><th>source table</th><th>topic</th><th>bronze</th><th>silver</th><th>gold</th></tr></thead><tbody>"#,
    );
    for t in TABLES {
        let bronze = format!("bronze.{}", t.name);
        let silver = format!("silver.{}", t.name);
        let readers: Vec<String> = models
            .iter()
            .filter(|m| m.depends_on.iter().any(|d| *d == bronze || *d == silver))
            .map(|m| format!(r#"<a href="/lake/gold/{n}">gold.{n}</a>"#, n = esc(m.name)))
            .collect();
        out.push_str(&format!(
            r#"<tr><td>{db}.public.{n} (every shard)</td><td>{topic}</td><td><a href="/lake/bronze/{n}">{bronze}</a></td><td><a href="/lake/silver/{n}">{silver}</a></td><td>{gold}</td></tr>"#,
            db = esc(t.db.name()),
            n = esc(t.name),
            topic = esc(&topic_of(&prefix, t)),
            bronze = esc(&bronze),
            silver = esc(&silver),
            gold = if readers.is_empty() {
                "–".into()
            } else {
                readers.join(", ")
            },
        ));
    }
    out.push_str("</tbody></table></div>");
    out
}
