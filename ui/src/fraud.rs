//! The fraud team's page: the alerts as they are raised, an alert's
//! evidence, the rules in force and how often each one fires.
//!
//! One consumer per server follows the alerts topic (as `fraud tail` does,
//! each alert id once) and fans out to every open page through server-sent
//! events; the page starts from the newest alerts of `gold.fraud_alerts`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast;
use tributary_live::fraud::alerts_topic;
use tributary_live::fraud::rules::{DEFAULT_RULES, Rules};

use crate::html::{self, esc};
use crate::lake::result_table;

/// Alerts shown when the page opens.
const NEWEST: usize = 50;
/// After a failure of the alerts consumer, the next try.
const RETRY: Duration = Duration::from_secs(5);

/// Alerts (as JSON) to every open page.
pub(crate) struct Feed {
    sender: broadcast::Sender<String>,
}

impl Feed {
    pub fn new() -> Feed {
        Feed {
            sender: broadcast::channel(1024).0,
        }
    }
}

/// Follows the alerts topic until shutdown, from now on (the page reads
/// the older ones from the lake).
pub(crate) fn follow(state: crate::State) {
    tokio::spawn(async move {
        let kafka = match state.platform.kafka() {
            Ok(k) => k,
            Err(e) => {
                tracing::info!(error = %e, "no broker: the fraud page shows the lake's alerts only");
                return;
            }
        };
        loop {
            let sender = state.alerts.sender.clone();
            let result = tributary_live::fraud::tail::tail(
                kafka,
                false,
                state.shutdown.clone(),
                move |_alert, json| {
                    // No page open is not an error.
                    let _ = sender.send(String::from_utf8_lossy(json).into_owned());
                },
            )
            .await;
            if state.shutdown.is_cancelled() {
                return;
            }
            if let Err(e) = result {
                tracing::warn!(topic = %alerts_topic(&kafka.topic_prefix), error = %tributary_model::error_chain(&e), "following the fraud alerts; trying again in 5 s");
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => {}
                _ = state.shutdown.cancelled() => return,
            }
        }
    });
}

/// `GET /api/fraud/stream`: `alert` events with the alert's JSON.
pub(crate) async fn stream(
    State(state): State<crate::State>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = state.alerts.sender.subscribe();
    let stream = futures::stream::unfold(receiver, |mut r| async move {
        loop {
            match r.recv().await {
                Ok(json) => return Some((Ok(Event::default().event("alert").data(json)), r)),
                // A slow page skips what it missed; the lake has every alert.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

pub(crate) async fn page(State(state): State<crate::State>) -> Response {
    let mut body = String::from(
        r#"<h1>Fraud</h1>
<h2>Alerts <span id="feed-state" class="badge">connecting</span></h2>
<div class="grid-wrap"><table class="grid alerts-feed"><thead><tr><th>event time</th><th>rule</th><th>customer</th><th>order</th><th>detail</th><th></th></tr></thead><tbody id="alerts">"#,
    );
    let newest = format!(
        "SELECT alert_id, rule, customer_id, order_id, detail, source_commit_ts \
         FROM gold.fraud_alerts ORDER BY source_commit_ts DESC LIMIT {NEWEST}"
    );
    let mut note = String::new();
    match state.session.sql(&newest).await {
        Ok(batches) => {
            for row in rows(&batches) {
                body.push_str(&alert_row(&row));
            }
        }
        Err(e) => {
            let text = e.report();
            note = if text.contains("not found") {
                "no alerts in the lake yet (gold.fraud_alerts does not exist)".into()
            } else {
                text
            };
        }
    }
    body.push_str("</tbody></table></div>");
    if !note.is_empty() {
        body.push_str(&format!(r#"<p class="muted">{}</p>"#, esc(&note)));
    }

    body.push_str("<h2>Rules and hit rates</h2>");
    let rules_path = state.platform.config().live.fraud.rules.clone();
    let (text, origin) = match &rules_path {
        Some(p) => (
            std::fs::read_to_string(p).unwrap_or_else(|e| format!("# cannot read: {e}")),
            p.display().to_string(),
        ),
        None => (DEFAULT_RULES.to_string(), "built-in rules".into()),
    };
    let rules = Rules::parse(&text, &origin).unwrap_or_default();
    let hits = state
        .session
        .sql("SELECT rule, count(*) AS alerts, count(DISTINCT customer_id) AS customers, max(source_commit_ts) AS newest FROM gold.fraud_alerts GROUP BY rule ORDER BY rule")
        .await
        .map(|b| rows(&b))
        .unwrap_or_default();
    body.push_str(r#"<div class="grid-wrap"><table class="grid rules"><thead><tr><th>rule</th><th>on</th><th class="num">alerts</th><th class="num">customers</th><th>newest</th></tr></thead><tbody>"#);
    for rule in tributary_live::fraud::rules::RuleName::ALL {
        let name = rule.as_str();
        let hit = hits.iter().find(|r| r[0].as_deref() == Some(name));
        let cell = |i: usize| hit.and_then(|r| r[i].clone()).unwrap_or_else(|| "0".into());
        body.push_str(&format!(
            r#"<tr><td>{n}</td><td>{on}</td><td class="num">{a}</td><td class="num">{c}</td><td>{t}</td></tr>"#,
            n = esc(name),
            on = if rules.enabled().contains(&rule) { "yes" } else { "off" },
            a = esc(&cell(1)),
            c = esc(&cell(2)),
            t = esc(&hit.and_then(|r| r[3].clone()).unwrap_or_default()),
        ));
    }
    body.push_str(&format!(
        r#"</tbody></table></div><details><summary>Rules file ({})</summary><pre class="log">{}</pre></details>"#,
        esc(&origin),
        esc(&text)
    ));
    html::page("Fraud", "fraud", &body).into_response()
}

/// Every row as display text.
fn rows(batches: &[arrow::record_batch::RecordBatch]) -> Vec<Vec<Option<String>>> {
    crate::sql::cells(batches, usize::MAX).unwrap_or_default()
}

/// An alert row: id, rule, customer, order, detail, time.
fn alert_row(r: &[Option<String>]) -> String {
    let get = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
    format!(
        r#"<tr><td>{t}</td><td>{rule}</td><td>{c}</td><td>{o}</td><td class="detail">{d}</td><td><a href="/fraud/alert?id={id}">evidence</a></td></tr>"#,
        t = esc(&get(5)),
        rule = esc(&get(1)),
        c = esc(&get(2)),
        o = esc(&get(3)),
        d = esc(&get(4)),
        id = html::url_encode(&get(0)),
    )
}

#[derive(Deserialize)]
pub(crate) struct AlertQuery {
    id: String,
}

/// SQL text literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `GET /fraud/alert?id=…`: the alert, and the customer's orders and
/// payments inside its window (the events the rule saw).
pub(crate) async fn alert(
    State(state): State<crate::State>,
    Query(q): Query<AlertQuery>,
) -> Response {
    let id = literal(&q.id);
    let mut body = format!(
        r#"<p><a href="/fraud">Fraud</a> › alert</p><h1>{}</h1>"#,
        esc(&q.id)
    );
    let found = state
        .session
        .sql_with_schema(&format!(
            "SELECT alert_id, rule, customer_id, order_id, window_start, window_end, detail, source_commit_ts, detected_at FROM gold.fraud_alerts WHERE alert_id = {id}"
        ))
        .await;
    let (schema, batches) = match found {
        Ok(r) if r.1.iter().any(|b| b.num_rows() > 0) => r,
        Ok(_) => {
            body.push_str(r#"<p class="error">no such alert in gold.fraud_alerts</p>"#);
            return (StatusCode::NOT_FOUND, html::page("Alert", "fraud", &body)).into_response();
        }
        Err(e) => {
            body.push_str(&format!(r#"<p class="error">{}</p>"#, esc(&e.report())));
            return (StatusCode::BAD_GATEWAY, html::page("Alert", "fraud", &body)).into_response();
        }
    };
    body.push_str(&result_table(&schema, &batches));
    let window = format!(
        "(SELECT customer_id, window_start, window_end FROM gold.fraud_alerts WHERE alert_id = {id})"
    );
    let evidence = [
        (
            "Orders in the window",
            format!(
                "SELECT o.* FROM silver.orders o, {window} a \
                 WHERE o.customer_id = a.customer_id AND o.created_at >= a.window_start AND o.created_at <= a.window_end \
                 ORDER BY o.created_at"
            ),
        ),
        (
            "Payments of those orders",
            format!(
                "SELECT p.* FROM silver.payments p JOIN silver.orders o ON p.order_id = o.id, {window} a \
                 WHERE o.customer_id = a.customer_id AND o.created_at >= a.window_start AND o.created_at <= a.window_end \
                 ORDER BY p.order_id"
            ),
        ),
    ];
    for (title, sql) in evidence {
        body.push_str(&format!(
            r#"<h2>{title}</h2><p><a href="/sql?q={}">open in SQL</a></p>"#,
            html::url_encode(&sql)
        ));
        match state.session.sql_with_schema(&sql).await {
            Ok((schema, batches)) => body.push_str(&result_table(&schema, &batches)),
            Err(e) => body.push_str(&format!(r#"<p class="error">{}</p>"#, esc(&e.report()))),
        }
    }
    html::page("Alert", "fraud", &body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_ids_are_quoted_for_sql() {
        assert_eq!(literal("velocity/customer/1/2"), "'velocity/customer/1/2'");
        assert_eq!(literal("x' OR '1'='1"), "'x'' OR ''1''=''1'");
    }

    #[test]
    fn an_alert_row_escapes_its_detail() {
        let row: Vec<Option<String>> = vec![
            Some("r/customer/1/2".into()),
            Some("velocity".into()),
            Some("1".into()),
            None,
            Some("<script>alert(1)</script>".into()),
            Some("2026-12-07T20:00:00Z".into()),
        ];
        let html = alert_row(&row);
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(html.contains("id=r/customer/1/2"), "{html}");
    }
}
