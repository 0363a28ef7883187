//! The scheduler's jobs, their DAG, the timeline of recent runs, a run's
//! attempts, and trigger and backfill (queued in the run history exactly
//! as `tributary workflows trigger` and `backfill` queue them; the leading
//! scheduler starts them).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{NaiveDate, Utc};
use serde::Deserialize;
use serde_json::json;
use tributary_workflows::history::{History, NewRun, trigger as why};
use tributary_workflows::{Dag, Job, timeline};

use crate::html::{self, esc};

/// Runs shown in the table and the timeline.
const RECENT: i64 = 30;
/// A backfill asks for at most this many dates at once.
const MAX_BACKFILL_DAYS: i64 = 366;

fn load(state: &crate::AppState) -> Result<Dag, String> {
    Dag::load(&state.jobs_dir).map_err(|e| {
        format!(
            "loading the jobs of {}: {}",
            state.jobs_dir.display(),
            tributary_model::error_chain(&e)
        )
    })
}

async fn history(state: &crate::AppState) -> Result<History, String> {
    let dsn = state
        .catalog_dsn
        .as_deref()
        .ok_or("no catalog database: configure [sources] or start the local stack")?;
    History::connect(dsn)
        .await
        .map_err(|e| tributary_model::error_chain(&e))
}

fn when(t: Option<chrono::DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

pub(crate) async fn page(State(state): State<crate::State>) -> Response {
    let mut body = String::from("<h1>Workflows</h1>");
    let dag = load(&state);
    match &dag {
        Err(e) => body.push_str(&format!(r#"<p class="error">{}</p>"#, esc(e))),
        Ok(dag) => {
            body.push_str(r#"<h2>Jobs</h2><div class="grid-wrap"><table class="grid jobs"><thead><tr><th>job</th><th>task</th><th>schedule</th><th>after</th><th>retries</th><th></th></tr></thead><tbody>"#);
            for job in dag.jobs.values() {
                let schedule = job
                    .schedule
                    .as_ref()
                    .map(|s| format!("{} ({})", s.expr, s.tz.name()))
                    .unwrap_or_else(|| {
                        if job.continuous {
                            "continuous".into()
                        } else {
                            "–".into()
                        }
                    });
                let date = if job.partitioned {
                    r#"<input type="date" name="date" aria-label="logical date">"#
                } else {
                    ""
                };
                let backfill = if job.partitioned {
                    r#" <details class="inline"><summary>Backfill</summary><form class="backfill"><input type="date" name="from" required aria-label="from"> – <input type="date" name="to" required aria-label="to"> <input type="number" name="parallel" value="1" min="1" max="8" aria-label="parallel"> <button type="submit">Backfill</button></form></details>"#
                } else {
                    ""
                };
                body.push_str(&format!(
                    r#"<tr data-job="{n}"><td title="{d}">{n}</td><td>{task}</td><td>{schedule}</td><td>{after}</td><td>{retries}</td><td><form class="trigger">{date}<button type="submit">Trigger</button></form>{backfill}</td></tr>"#,
                    n = esc(&job.name),
                    d = esc(&job.description),
                    task = esc(job.task.kind()),
                    schedule = esc(&schedule),
                    after = esc(&job.depends_on.join(", ")),
                    retries = job.retry.attempts.saturating_sub(1),
                ));
            }
            body.push_str("</tbody></table></div>");
            for e in &dag.errors {
                body.push_str(&format!(
                    r#"<p class="error">refused: {}</p>"#,
                    esc(&tributary_model::error_chain(e))
                ));
            }
            body.push_str(&format!(
                r#"<h2>DAG</h2><pre class="dag">{}</pre>"#,
                esc(&dag.render())
            ));
        }
    }
    body.push_str(r#"<p id="workflows-message" class="muted" role="status"></p>"#);
    match history(&state).await {
        Err(e) => body.push_str(&format!(r#"<p class="error">{}</p>"#, esc(&e))),
        Ok(history) => match history.recent(None, RECENT).await {
            Err(e) => body.push_str(&format!(
                r#"<p class="error">{}</p>"#,
                esc(&tributary_model::error_chain(&e))
            )),
            Ok(runs) => {
                let now = Utc::now();
                let mut rows = Vec::new();
                for r in runs.iter().rev() {
                    let attempts = history.attempts(r.id).await.unwrap_or_default();
                    rows.push((r.run_key.clone(), timeline::segments(r, &attempts, now)));
                }
                body.push_str("<h2>Timeline</h2>");
                match timeline::Chart::new(rows) {
                    Some(chart) => {
                        body.push_str(&format!(r#"<div class="timeline">{}</div>"#, chart.svg()))
                    }
                    None => body.push_str(r#"<p class="muted">no runs yet</p>"#),
                }
                body.push_str(r#"<h2>Recent runs</h2><div class="grid-wrap"><table class="grid runs"><thead><tr><th>run</th><th>state</th><th>trigger</th><th class="num">attempts</th><th>started</th><th>ended</th><th>error</th></tr></thead><tbody>"#);
                for r in &runs {
                    body.push_str(&format!(
                        r#"<tr data-job="{job}"><td><a href="/workflows/runs/{id}">{key}</a></td><td><span class="badge {state}">{state}</span></td><td>{trigger}</td><td class="num">{attempts}</td><td>{start}</td><td>{end}</td><td class="detail">{error}</td></tr>"#,
                        job = esc(&r.job),
                        id = r.id,
                        key = esc(&r.run_key),
                        state = esc(&r.state),
                        trigger = esc(&r.trigger),
                        attempts = r.attempts,
                        start = when(r.started_at),
                        end = when(r.ended_at),
                        error = esc(r.error.as_deref().unwrap_or("")),
                    ));
                }
                body.push_str("</tbody></table></div>");
            }
        },
    }
    html::page("Workflows", "workflows", &body).into_response()
}

pub(crate) async fn run(State(state): State<crate::State>, Path(id): Path<i64>) -> Response {
    let page = |status: StatusCode, body: String| {
        (status, html::page("Run", "workflows", &body)).into_response()
    };
    let history = match history(&state).await {
        Ok(h) => h,
        Err(e) => {
            return page(
                StatusCode::BAD_GATEWAY,
                format!(r#"<p class="error">{}</p>"#, esc(&e)),
            );
        }
    };
    let run = match history.run(id).await {
        Ok(Some(r)) => r,
        Ok(None) => return page(StatusCode::NOT_FOUND, format!("<p>no run {id}</p>")),
        Err(e) => {
            return page(
                StatusCode::BAD_GATEWAY,
                format!(
                    r#"<p class="error">{}</p>"#,
                    esc(&tributary_model::error_chain(&e))
                ),
            );
        }
    };
    let attempts = history.attempts(id).await.unwrap_or_default();
    let mut body = format!(
        r#"<p><a href="/workflows">Workflows</a> › {job}</p><h1>{key}</h1>
<dl class="facts"><dt>state</dt><dd><span class="badge {state}">{state}</span></dd><dt>trigger</dt><dd>{trigger}</dd><dt>logical time</dt><dd>{lt}</dd><dt>due</dt><dd>{due}</dd><dt>started</dt><dd>{start}</dd><dt>ended</dt><dd>{end}</dd><dt>scheduler</dt><dd>{sched} (epoch {epoch})</dd></dl>"#,
        job = esc(&run.job),
        key = esc(&run.run_key),
        state = esc(&run.state),
        trigger = esc(&run.trigger),
        lt = when(Some(run.logical_time)),
        due = when(Some(run.due_at)),
        start = when(run.started_at),
        end = when(run.ended_at),
        sched = esc(run.scheduler.as_deref().unwrap_or("–")),
        epoch = run.epoch.map_or("–".into(), |e| e.to_string()),
    );
    if let Some(summary) = &run.summary {
        body.push_str(&format!(
            r#"<h2>Output</h2><pre class="log">{}</pre>"#,
            esc(summary)
        ));
    }
    if let Some(error) = &run.error {
        body.push_str(&format!(
            r#"<h2>Error</h2><pre class="log error">{}</pre>"#,
            esc(error)
        ));
    }
    body.push_str(r#"<h2>Attempts</h2><div class="grid-wrap"><table class="grid"><thead><tr><th class="num">attempt</th><th>state</th><th>started</th><th>ended</th><th>scheduler</th><th>error</th></tr></thead><tbody>"#);
    for a in &attempts {
        body.push_str(&format!(
            r#"<tr><td class="num">{n}</td><td><span class="badge {s}">{s}</span></td><td>{start}</td><td>{end}</td><td>{sched} ({epoch})</td><td><pre class="log">{err}</pre></td></tr>"#,
            n = a.attempt,
            s = esc(&a.state),
            start = when(Some(a.started_at)),
            end = when(a.ended_at),
            sched = esc(&a.scheduler),
            epoch = a.epoch,
            err = esc(a.error.as_deref().unwrap_or("")),
        ));
    }
    body.push_str("</tbody></table></div>");
    page(StatusCode::OK, body)
}

#[derive(Deserialize)]
pub(crate) struct TriggerRequest {
    job: String,
    date: Option<String>,
}

fn date(s: &str, field: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|e| format!("{field} {s:?}: {e} (expected YYYY-MM-DD)"))
}

/// A queuing request's answer: its JSON, or `400 {error}`.
fn reply(result: Result<serde_json::Value, String>) -> Response {
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))).into_response(),
    }
}

/// The job of that name, from the job folder as it is now.
fn job(state: &crate::AppState, name: &str) -> Result<Job, String> {
    load(state)?
        .jobs
        .remove(name)
        .ok_or_else(|| format!("no job {name:?}"))
}

fn chain(e: &dyn std::error::Error) -> String {
    tributary_model::error_chain(e)
}

pub(crate) async fn trigger(
    State(state): State<crate::State>,
    Json(request): Json<TriggerRequest>,
) -> Response {
    reply(queue_one(&state, request).await)
}

async fn queue_one(
    state: &crate::AppState,
    request: TriggerRequest,
) -> Result<serde_json::Value, String> {
    let job = job(state, &request.job)?;
    let day = request
        .date
        .as_deref()
        .filter(|d| !d.is_empty())
        .map(|d| date(d, "date"))
        .transpose()?;
    let history = history(state).await?;
    let run = NewRun::manual(&job, day, why::MANUAL, "manual", 0, None).map_err(|e| chain(&e))?;
    history.enqueue(&run).await.map_err(|e| chain(&e))?;
    Ok(json!({ "queued": [run.run_key] }))
}

#[derive(Deserialize)]
pub(crate) struct BackfillRequest {
    job: String,
    from: String,
    to: String,
    parallel: Option<i32>,
}

pub(crate) async fn backfill(
    State(state): State<crate::State>,
    Json(request): Json<BackfillRequest>,
) -> Response {
    reply(queue_dates(&state, request).await)
}

async fn queue_dates(
    state: &crate::AppState,
    request: BackfillRequest,
) -> Result<serde_json::Value, String> {
    let job = job(state, &request.job)?;
    let (from, to) = (date(&request.from, "from")?, date(&request.to, "to")?);
    if to < from {
        return Err(format!("to {to} is before from {from}"));
    }
    if (to - from).num_days() >= MAX_BACKFILL_DAYS {
        return Err(format!(
            "a backfill of more than {MAX_BACKFILL_DAYS} days: use `tributary workflows backfill`"
        ));
    }
    let history = history(state).await?;
    let batch = format!("backfill-{}", uuid_like());
    let parallel = request.parallel.unwrap_or(1).clamp(1, 8);
    let mut queued = Vec::new();
    let (mut d, mut order) = (from, 0);
    while d <= to {
        let run = NewRun::manual(&job, Some(d), why::BACKFILL, &batch, order, Some(parallel))
            .map_err(|e| chain(&e))?;
        if history
            .enqueue(&run)
            .await
            .map_err(|e| chain(&e))?
            .is_some()
        {
            queued.push(run.run_key);
        }
        order += 1;
        d = d.succ_opt().expect("a date after");
    }
    Ok(json!({ "batch": batch, "queued": queued }))
}

/// Eight hex digits for a backfill's batch name.
fn uuid_like() -> String {
    format!("{:08x}", rand::random::<u32>())
}
