//! The HTTP API of the order and catalog services.

mod body;
mod clicks;
mod customers;
mod orders;
mod products;
pub mod trace;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tributary_kafka::KafkaConfig;

use crate::cache::ProductCache;
use crate::clickstream::Clickstream;
use crate::config::{CacheConfig, OltpConfig, Topology};
use crate::error::{Error, Result};
use crate::metrics;
use crate::migrate::migrate;
use crate::pool::Pool;
use crate::replica::{ReadFrom, Replica};
use crate::routing::Router;

/// Entries kept in the customer-directory cache before it is reset; the
/// directory in the catalog stays the source of truth.
const DIRECTORY_CACHE_MAX: usize = 1_000_000;

pub(crate) struct AppState {
    pub(crate) catalog: Pool,
    pub(crate) shards: Vec<Pool>,
    pub(crate) router: Router,
    directory: RwLock<HashMap<i64, usize>>,
    /// `None`: no broker configured; the click endpoints answer 503.
    pub(crate) clickstream: Option<Clickstream>,
    /// `None`: product reads go to PostgreSQL.
    pub(crate) cache: Option<Arc<ProductCache>>,
    /// Each shard's standby, where it has one (see [`crate::replica`]).
    pub(crate) replicas: Vec<Option<Replica>>,
    /// `[oltp] replica_max_lag_ms`; zero: no read goes to a standby.
    pub(crate) replica_bound: Duration,
}

pub(crate) type Shared = Arc<AppState>;

/// One read-only query of [`AppState::read`], on whichever node it runs.
pub(crate) type ReadQuery<'c, T> =
    std::pin::Pin<Box<dyn Future<Output = Result<Option<T>>> + Send + 'c>>;

impl AppState {
    /// The shard holding `customer`, from the cache or the catalog directory.
    pub(crate) async fn customer_shard(&self, customer: i64) -> Result<Option<usize>> {
        if let Some(s) = self
            .directory
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&customer)
        {
            return Ok(Some(*s));
        }
        let row = self
            .catalog
            .get()
            .await?
            .query_opt(
                "SELECT shard FROM customer_directory WHERE customer_id = $1",
                &[&customer],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let shard: i32 = row.get(0);
        let shard = usize::try_from(shard)
            .ok()
            .filter(|s| *s < self.shards.len())
            .ok_or_else(|| {
                Error::Internal(format!(
                    "customer directory places customer {customer} on shard {shard}, which is not configured"
                ))
            })?;
        self.remember(customer, shard);
        Ok(Some(shard))
    }

    pub(crate) fn remember(&self, customer: i64, shard: usize) {
        let mut cache = self.directory.write().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= DIRECTORY_CACHE_MAX {
            cache.clear();
        }
        cache.insert(customer, shard);
    }

    /// The pool of the shard that allocated `id`, or `None` for an id no
    /// configured shard can have produced.
    pub(crate) fn shard_for_id(&self, id: i64) -> Option<(usize, &Pool)> {
        let shard = crate::routing::shard_of_id(id);
        self.shards.get(shard).map(|p| (shard, p))
    }

    /// A read-only query on `shard`: on its standby while that is certified
    /// within the bound, else (and when the standby fails or finds nothing)
    /// on the primary. Says where it was answered.
    pub(crate) async fn read<T>(
        &self,
        shard: usize,
        query: impl for<'c> Fn(&'c tokio_postgres::Client) -> ReadQuery<'c, T>,
    ) -> Result<(Option<T>, ReadFrom)> {
        let mut from = ReadFrom::Primary;
        if let Some(replica) = self
            .replicas
            .get(shard)
            .and_then(Option::as_ref)
            .filter(|r| !self.replica_bound.is_zero() && r.fresh_within(self.replica_bound))
        {
            match replica.pool.get().await {
                Ok(conn) => match query(&conn).await {
                    Ok(Some(found)) => {
                        ReadFrom::Standby.count(shard);
                        return Ok((Some(found), ReadFrom::Standby));
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(shard, %error, "a read on the standby failed; asking the primary")
                    }
                },
                Err(error) => {
                    tracing::warn!(shard, %error, "no connection to the standby; asking the primary")
                }
            }
            from = ReadFrom::PrimaryFallback;
        }
        let found = query(&*self.shards[shard].get().await?).await?;
        from.count(shard);
        Ok((found, from))
    }
}

/// The order and catalog HTTP service, bound and ready to serve.
pub struct Server {
    listener: TcpListener,
    state: Shared,
    addr: SocketAddr,
}

impl Server {
    /// Validates the configuration, migrates every database, builds the
    /// connection pools and the shard router, and binds the listener.
    pub async fn bind(config: OltpConfig, topology: Topology) -> Result<Server> {
        if config.pool_size == 0 {
            return Err(Error::Config {
                field: "oltp.pool_size",
                reason: "must be at least 1".into(),
            });
        }
        let router = Router::new(&config.sharding, topology.shards.len())?;
        migrate(&topology).await?;
        let shards = topology
            .shards
            .iter()
            .enumerate()
            .map(|(i, dsn)| Pool::new(dsn.clone(), format!("shard{i}"), config.pool_size))
            .collect();
        let replicas = (0..topology.shards.len())
            .map(|i| {
                let dsn = topology.replicas.get(i)?.as_ref()?;
                Some(Replica::new(Pool::new(
                    dsn.clone(),
                    format!("shard{i} standby"),
                    config.pool_size,
                )))
            })
            .collect();
        let state = Arc::new(AppState {
            catalog: Pool::new(topology.catalog.clone(), "catalog".into(), config.pool_size),
            shards,
            router,
            directory: RwLock::new(HashMap::new()),
            clickstream: None,
            cache: None,
            replicas,
            replica_bound: Duration::from_millis(config.replica_max_lag_ms),
        });
        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen.clone(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen.clone(),
            source,
        })?;
        tracing::info!(%addr, shards = state.shards.len(), "order service bound");
        Ok(Server {
            listener,
            state,
            addr,
        })
    }

    /// Publishes product views and add-to-carts (`POST /products/{id}/view`,
    /// `/cart`) to the clickstream topic of `kafka`, creating it. Without
    /// this the click endpoints answer 503. A broker that does not answer
    /// is not an error: orders never need it, and clicks are best effort.
    pub async fn with_clickstream(mut self, kafka: &KafkaConfig) -> Result<Server> {
        let clickstream = Clickstream::open(kafka).await?;
        Arc::get_mut(&mut self.state)
            .ok_or_else(|| Error::Internal("server state shared before it serves".into()))?
            .clickstream = Some(clickstream);
        Ok(self)
    }

    /// Serves product reads through the Redis at `redis_url`, invalidated
    /// by the products change topic on `kafka` (see [`crate::cache`]).
    /// Redis need not answer now: until it does, reads go to PostgreSQL.
    pub fn with_cache(
        mut self,
        redis_url: &str,
        kafka: &KafkaConfig,
        config: &CacheConfig,
    ) -> Result<Server> {
        let cache = ProductCache::new(redis_url, kafka, config)?;
        Arc::get_mut(&mut self.state)
            .ok_or_else(|| Error::Internal("server state shared before it serves".into()))?
            .cache = Some(Arc::new(cache));
        tracing::info!(redis = %tributary_model::dsn::describe(redis_url), "product cache on");
        Ok(self)
    }

    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` is cancelled, then drains in-flight requests.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let addr = self.addr;
        let state = self.state.clone();
        let topic = {
            let (state, shutdown) = (state.clone(), shutdown.clone());
            tokio::spawn(async move {
                if let Some(c) = &state.clickstream {
                    c.ensure_topic_until(shutdown).await;
                }
            })
        };
        let invalidator = state.cache.as_ref().map(|cache| {
            tokio::spawn(crate::cache::invalidate::run(
                cache.clone(),
                shutdown.clone(),
            ))
        });
        let certifier = {
            let (state, shutdown) = (state.clone(), shutdown.clone());
            tokio::spawn(async move {
                let shards: Vec<_> = state
                    .replicas
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| Some((i, &state.shards[i], r.as_ref()?)))
                    .collect();
                if !shards.is_empty() && !state.replica_bound.is_zero() {
                    tracing::info!(
                        standbys = shards.len(),
                        max_lag_ms = state.replica_bound.as_millis() as u64,
                        "read-only routes read from the standbys within the bound"
                    );
                    crate::replica::certify(shards, shutdown).await;
                }
            })
        };
        let served = axum::serve(self.listener, app(self.state))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await
            .map_err(|source| Error::Serve { addr, source });
        topic.abort();
        certifier.abort();
        if let Some(invalidator) = invalidator {
            invalidator.abort();
        }
        if state.clickstream.is_some() {
            let flushing = tokio::task::spawn_blocking(move || {
                if let Some(c) = &state.clickstream {
                    c.flush(Duration::from_secs(2));
                }
            });
            if let Err(error) = flushing.await {
                tracing::warn!(%error, "flushing the clickstream failed");
            }
        }
        served?;
        tracing::info!(%addr, "order service stopped");
        Ok(())
    }
}

fn app(state: Shared) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::render))
        .route("/customers", post(customers::create))
        .route(
            "/customers/{id}",
            get(customers::fetch).patch(customers::update),
        )
        .route("/products", get(products::list).post(products::create))
        .route("/products/{id}", get(products::fetch))
        .route("/products/{id}/price", patch(products::change_price))
        .route("/products/{id}/view", post(clicks::view))
        .route("/products/{id}/cart", post(clicks::add_to_cart))
        .route("/orders", post(orders::create))
        .route("/orders/{id}", get(orders::fetch).delete(orders::delete))
        .route("/orders/{id}/shipment", get(orders::shipment))
        .route("/orders/{id}/pay", post(orders::pay))
        .route("/orders/{id}/ship", post(orders::ship))
        .route("/orders/{id}/deliver", post(orders::deliver))
        .route("/orders/{id}/cancel", post(orders::cancel))
        .route("/orders/{id}/refund", post(orders::refund))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(axum::middleware::from_fn(trace::context))
        .with_state(state)
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "no such route", "path")
}

async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
        "method",
    )
}

/// Checks that every database answers.
async fn healthz(State(state): State<Shared>) -> Response {
    let mut report = serde_json::Map::new();
    let mut healthy = true;
    for pool in std::iter::once(&state.catalog).chain(state.shards.iter()) {
        let probe = async {
            let conn = pool.get().await?;
            conn.simple_query("SELECT 1").await?;
            Ok::<_, Error>(())
        };
        let status = match tokio::time::timeout(Duration::from_secs(2), probe).await {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(error)) => {
                tracing::warn!(database = %pool.label, %error, "health check failed");
                healthy = false;
                error.to_string()
            }
            Err(_) => {
                healthy = false;
                "timed out".to_owned()
            }
        };
        report.insert(pool.label.clone(), Value::String(status));
    }
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let status = if healthy { "ok" } else { "degraded" };
    (code, Json(json!({"status": status, "databases": report}))).into_response()
}

fn error_response(status: StatusCode, message: &str, field: &str) -> Response {
    (status, Json(json!({"error": message, "field": field}))).into_response()
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, field) = match &self {
            Error::BadRequest { field, .. } => (StatusCode::BAD_REQUEST, field.clone()),
            Error::Unprocessable { field, .. } => (StatusCode::UNPROCESSABLE_ENTITY, field.clone()),
            Error::NotFound { .. } => (StatusCode::NOT_FOUND, "id".to_owned()),
            Error::Conflict { field, .. } => (StatusCode::CONFLICT, field.clone()),
            Error::Unavailable { field, .. } => (StatusCode::SERVICE_UNAVAILABLE, field.clone()),
            Error::PoolTimeout { .. } | Error::Connect { .. } => {
                tracing::error!(error = %self, "database unavailable");
                return error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database unavailable, retry later",
                    "",
                );
            }
            Error::Database(e) => {
                // Only the SQLSTATE and the message: the detail field of a
                // server error can quote row values, which never go to logs.
                let db = e.as_db_error();
                tracing::error!(
                    sqlstate = db.map(|d| d.code().code()),
                    message = db.map(|d| d.message()),
                    closed = e.is_closed(),
                    "database statement failed"
                );
                return error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error", "");
            }
            _ => {
                tracing::error!(error = %self, "request failed");
                return error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error", "");
            }
        };
        error_response(status, &self.to_string(), &field)
    }
}

/// Whether a database error is the violation of constraint class `state`.
pub(crate) fn is_sql_state(
    error: &tokio_postgres::Error,
    state: &tokio_postgres::error::SqlState,
) -> bool {
    error.code() == Some(state)
}

/// A JSON response with a status.
pub(crate) type JsonResponse = Result<(StatusCode, Json<Value>)>;
/// The response header saying where a read-only request was answered:
/// `standby`, `primary` or `primary_fallback`.
pub(crate) const READ_FROM: &str = "x-read-from";
/// A read-only answer, with where it was read ([`READ_FROM`]).
pub(crate) type ReadResponse = Result<(StatusCode, [(&'static str, &'static str); 1], Json<Value>)>;
