//! Outputs to an HTTP endpoint, at least once, with retries.
//!
//! Each output is one `POST` of its JSON with the header
//! `Idempotency-Key: <id>`, so a receiver that saw it already (a retry, a
//! replay after a restart) can drop it. Delivery runs in a task of its own
//! behind a bounded queue: a slow or failing endpoint never holds the job
//! back. A request that fails (connection error, 5xx, 429) is retried with
//! backoff up to `attempts` times; a 4xx other than 429 is not retried.
//! What is given up on, or finds the queue full, is counted
//! (`tributary_live_sink_failures_total{sink="webhook"}`) and logged with
//! its id. The URL is logged without its path and query, which may hold a
//! token.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tributary_model::backoff::Backoff;

use crate::metrics::SINK_FAILURES;

pub struct Webhook {
    queue: mpsc::Sender<(String, Vec<u8>)>,
    task: JoinHandle<()>,
}

/// Scheme, host and port only.
fn shown(url: &reqwest::Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or("?"),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    )
}

impl Webhook {
    pub fn start(url: &str, attempts: u32) -> crate::Result<Webhook> {
        let parsed = reqwest::Url::parse(url).map_err(|e| crate::Error::Webhook {
            url: "(the configured webhook URL)".into(),
            reason: format!("not a URL: {e}"),
        })?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| crate::Error::Webhook {
                url: shown(&parsed),
                reason: e.to_string(),
            })?;
        let (queue, mut rx) = mpsc::channel::<(String, Vec<u8>)>(10_000);
        let task = tokio::spawn(async move {
            let host = shown(&parsed);
            while let Some((id, body)) = rx.recv().await {
                let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let sent = client
                        .post(parsed.clone())
                        .header("Idempotency-Key", &id)
                        .header("Content-Type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    let retry = match &sent {
                        Ok(r) if r.status().is_success() => break,
                        Ok(r) => r.status().is_server_error() || r.status().as_u16() == 429,
                        Err(_) => true,
                    };
                    if !retry || attempt >= attempts {
                        SINK_FAILURES.with_label_values(&["webhook"]).inc();
                        let why = match sent {
                            Ok(r) => format!("status {}", r.status()),
                            Err(e) => format!("{}", e.without_url()),
                        };
                        tracing::error!(webhook = %host, id = %id, attempts = attempt, reason = %why, "giving up on a webhook delivery");
                        break;
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        });
        Ok(Webhook { queue, task })
    }

    /// Queues `(id, json)` for delivery; never waits.
    pub fn send(&self, id: &str, json: Vec<u8>) {
        if self.queue.try_send((id.to_string(), json)).is_err() {
            SINK_FAILURES.with_label_values(&["webhook"]).inc();
            tracing::error!(id = %id, "webhook queue full; dropping a delivery");
        }
    }

    /// Waits until everything queued was delivered or given up on.
    pub async fn drain(self) {
        drop(self.queue);
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;

    use super::*;

    #[tokio::test]
    async fn retries_until_accepted_with_the_id_as_idempotency_key() {
        // Fails twice with 503, then accepts; a 400 is not retried.
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let s = seen.clone();
        let app = axum::Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: String| {
                let s = s.clone();
                async move {
                    let id = headers["idempotency-key"].to_str().unwrap().to_string();
                    let mut seen = s.lock().unwrap();
                    seen.push(id.clone());
                    assert!(body.starts_with('{'));
                    if id == "bad" {
                        return StatusCode::BAD_REQUEST;
                    }
                    if seen.iter().filter(|x| **x == id).count() <= 2 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let hook = Webhook::start(&format!("http://{addr}/hook?token=secret"), 5).unwrap();
        hook.send("a1", b"{\"x\":1}".to_vec());
        hook.send("bad", b"{}".to_vec());
        hook.drain().await;
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, vec!["a1", "a1", "a1", "bad"]);
    }

    #[test]
    fn the_url_is_shown_without_its_token() {
        let url = reqwest::Url::parse("https://hooks.example:8443/x/T0KEN?sig=abc").unwrap();
        assert_eq!(shown(&url), "https://hooks.example:8443");
    }
}
