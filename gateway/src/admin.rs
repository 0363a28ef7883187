//! The admin API, on its own address: `/healthz`, `/metrics`, and
//!
//! - `GET /admin/state`: the policy, the pools with their weights, each
//!   replica with its health, ejection, draining and requests in flight;
//! - `PUT /admin/pools/{pool}/weight` with `{"weight": N}`: canary and
//!   blue/green shifts, at once, without a restart;
//! - `POST /admin/backends/{addr}/drain` and `/undrain`: a draining replica
//!   takes no new request and finishes those it has (`tributary rollout`
//!   waits for its in-flight count to reach zero).
//!
//! The client half ([`AdminClient`]) is what the CLI and the stack use.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::balance::{BackendView, PoolView, Routing};
use crate::config::Policy;
use crate::metrics::{
    BACKEND_DRAINING_GAUGE, BACKEND_INFLIGHT_GAUGE, BACKEND_REQUESTS_GAUGE, BACKEND_UP_GAUGE,
    POOL_WEIGHT_GAUGE,
};
use crate::{Error, Result};

/// What `GET /admin/state` answers.
#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct GatewayState {
    pub listen: String,
    pub policy: Policy,
    pub pools: Vec<PoolView>,
    pub backends: Vec<BackendView>,
}

#[derive(Clone)]
pub(crate) struct Admin {
    pub(crate) routing: Arc<Routing>,
    pub(crate) listen: String,
    pub(crate) policy: Policy,
}

impl Admin {
    fn state(&self) -> GatewayState {
        let (pools, backends) = self.routing.get().view();
        GatewayState {
            listen: self.listen.clone(),
            policy: self.policy,
            pools,
            backends,
        }
    }
}

pub(crate) fn router(admin: Admin) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(render_metrics))
        .route("/admin/state", get(state))
        .route("/admin/pools/{pool}/weight", put(set_weight))
        .route("/admin/backends/{addr}/drain", post(drain))
        .route("/admin/backends/{addr}/undrain", post(undrain))
        .with_state(admin)
}

async fn render_metrics(State(admin): State<Admin>) -> Response {
    let s = admin.state();
    for p in &s.pools {
        POOL_WEIGHT_GAUGE
            .with_label_values(&[p.name.as_str()])
            .set(i64::from(p.weight));
    }
    // Replicas that DNS no longer names leave the series.
    for g in [
        &BACKEND_UP_GAUGE,
        &BACKEND_DRAINING_GAUGE,
        &BACKEND_INFLIGHT_GAUGE,
        &BACKEND_REQUESTS_GAUGE,
    ] {
        g.reset();
    }
    for b in &s.backends {
        let labels = [b.addr.as_str(), b.pool.as_str()];
        BACKEND_UP_GAUGE
            .with_label_values(&labels)
            .set(i64::from(b.available));
        BACKEND_DRAINING_GAUGE
            .with_label_values(&labels)
            .set(i64::from(b.draining));
        BACKEND_INFLIGHT_GAUGE
            .with_label_values(&labels)
            .set(b.inflight as i64);
        BACKEND_REQUESTS_GAUGE
            .with_label_values(&labels)
            .set(b.requests as i64);
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        tributary_metrics::render(),
    )
        .into_response()
}

async fn state(State(admin): State<Admin>) -> Json<GatewayState> {
    Json(admin.state())
}

#[derive(Deserialize)]
struct Weight {
    weight: u32,
}

fn problem(status: StatusCode, message: String, field: &str) -> Response {
    (status, Json(json!({"error": message, "field": field}))).into_response()
}

async fn set_weight(
    State(admin): State<Admin>,
    Path(pool): Path<String>,
    body: Option<Json<Weight>>,
) -> Response {
    let Some(Json(Weight { weight })) = body else {
        return problem(
            StatusCode::BAD_REQUEST,
            "expected {\"weight\": <0 or more>}".into(),
            "weight",
        );
    };
    if !admin.routing.get().set_weight(&pool, weight) {
        return problem(StatusCode::NOT_FOUND, format!("no pool {pool:?}"), "pool");
    }
    tracing::info!(pool, weight, "pool weight changed");
    Json(admin.state()).into_response()
}

async fn drain(State(admin): State<Admin>, Path(addr): Path<String>) -> Response {
    set_draining(admin, addr, true)
}

async fn undrain(State(admin): State<Admin>, Path(addr): Path<String>) -> Response {
    set_draining(admin, addr, false)
}

fn set_draining(admin: Admin, addr: String, draining: bool) -> Response {
    let balancer = admin.routing.get();
    let Some(i) = balancer.index_of(&addr) else {
        return problem(
            StatusCode::NOT_FOUND,
            format!("no replica {addr:?} behind this gateway"),
            "backend",
        );
    };
    balancer.set_draining(i, draining);
    tracing::info!(backend = %addr, draining, "replica drain changed");
    Json(admin.state()).into_response()
}

/// Calls a gateway's admin API.
#[derive(Clone)]
pub struct AdminClient {
    base: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// `admin` is the gateway's admin address (`host:port`) or URL.
    pub fn new(admin: &str) -> AdminClient {
        let base = if admin.starts_with("http://") || admin.starts_with("https://") {
            admin.trim_end_matches('/').to_owned()
        } else {
            format!("http://{admin}")
        };
        AdminClient {
            base,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        }
    }

    async fn call(&self, request: reqwest::RequestBuilder, what: &str) -> Result<GatewayState> {
        let failed = |reason: String| Error::Admin {
            url: self.base.clone(),
            reason: format!("{what}: {reason}"),
        };
        let resp = request.send().await.map_err(|e| failed(e.to_string()))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| failed(e.to_string()))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| status.to_string());
            return Err(failed(message));
        }
        serde_json::from_slice(&body).map_err(|e| failed(format!("unexpected answer: {e}")))
    }

    pub async fn state(&self) -> Result<GatewayState> {
        self.call(
            self.http.get(format!("{}/admin/state", self.base)),
            "reading the state",
        )
        .await
    }

    pub async fn set_weight(&self, pool: &str, weight: u32) -> Result<GatewayState> {
        self.call(
            self.http
                .put(format!("{}/admin/pools/{pool}/weight", self.base))
                .json(&json!({ "weight": weight })),
            &format!("setting the weight of pool {pool}"),
        )
        .await
    }

    pub async fn drain(&self, backend: &str, draining: bool) -> Result<GatewayState> {
        let verb = if draining { "drain" } else { "undrain" };
        self.call(
            self.http
                .post(format!("{}/admin/backends/{backend}/{verb}", self.base)),
            &format!("{verb}ing {backend}"),
        )
        .await
    }
}
