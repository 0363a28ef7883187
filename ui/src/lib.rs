//! The web console (`tributary ui`): one server in the one binary, for the
//! three kinds of users.
//!
//! - **SQL** ([`sql`]): the same [`Session`] as the console and the wire
//!   server, read-only, with `[sql]`'s timeout and memory pool; a running
//!   query can be cancelled; results as a grid and charts, CSV and Parquet.
//! - **Lake** ([`lake`]): tables with their columns, rows, versions, sizes
//!   and files; a table's commits and a preview of any version.
//! - **Pipeline** ([`pipeline`]): what `tributary top` shows, live, with the
//!   lags and rates as small time-series charts from Prometheus, and the
//!   lineage from source table to gold.
//! - **Workflows** ([`workflows`]): jobs, the DAG, the run timeline, a run's
//!   attempts, trigger and backfill.
//! - **Fraud** ([`fraud`]): the alerts as they are raised (server-sent
//!   events from the alerts topic), an alert's evidence, the rules and
//!   their hit rates.
//!
//! How it is built, and why (`docs/ui.md`): pages are rendered on the
//! server, every value escaped ([`html::esc`]); one small script
//! (`assets/app.js`, no framework, no build step, no Node.js for the Rust
//! build) adds the editor, the grid, the charts and the live parts. Every
//! asset is compiled into the binary. A Content-Security-Policy allows
//! scripts from the server only, so a value that slipped through escaping
//! still could not run. Login is `[sql]`'s user and password; the session
//! cookie is `HttpOnly` and `SameSite=Strict`, and every state-changing
//! request must also carry a header a cross-site form cannot send.

mod assets;
pub mod auth;
mod fraud;
pub mod html;
mod lake;
mod pipeline;
pub mod sql;
mod workflows;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tributary_query::Session;
use tributary_stack::Platform;

/// Errors of the web console.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the web console needs a password: set `password` in [sql] or TRIBUTARY__SQL__PASSWORD \
         (`tributary up` makes one for the local stack)"
    )]
    NoPassword,
    #[error("binding {listen}")]
    Bind {
        listen: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serving")]
    Serve(#[source] std::io::Error),
    #[error("query session")]
    Query(#[source] Box<tributary_query::Error>),
    #[error("opening the lake")]
    Lake(#[source] Box<tributary_stack::Error>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What every handler reads.
pub(crate) struct AppState {
    pub platform: Platform,
    pub session: Session,
    pub auth: auth::Auth,
    /// `[sql] statement_timeout_ms`.
    pub timeout: Option<Duration>,
    /// Running queries by the id the page gave them, for Cancel.
    pub running: Mutex<HashMap<String, CancellationToken>>,
    /// The scheduler's job files.
    pub jobs_dir: PathBuf,
    /// The catalog database (run history, leases), when there is one.
    pub catalog_dsn: Option<String>,
    pub http: reqwest::Client,
    /// The pipeline page's own samples (freshness, versions).
    pub samples: pipeline::Samples,
    /// Fraud alerts as they arrive, for every open feed.
    pub alerts: fraud::Feed,
    /// Ends the server.
    pub shutdown: CancellationToken,
}

pub(crate) type State = Arc<AppState>;

/// A bound, not yet serving, web console.
pub struct Ui {
    listener: TcpListener,
    state: State,
}

impl std::fmt::Debug for Ui {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ui")
            .field("listen", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Ui {
    /// Opens the SQL session and binds `listen` (else `[ui] listen`).
    /// `password` is `[sql]`'s, or the one the local stack made.
    pub async fn bind(
        platform: Platform,
        password: Option<SecretString>,
        jobs_dir: PathBuf,
        listen: Option<&str>,
        shutdown: CancellationToken,
    ) -> Result<Ui> {
        let config = platform.config();
        let password = password
            .or_else(|| config.sql.password.clone())
            .ok_or(Error::NoPassword)?;
        let lake = platform.lake().map_err(|e| Error::Lake(Box::new(e)))?;
        let session = Session::with_config(lake, &config.sql)
            .await
            .map_err(|e| Error::Query(Box::new(e)))?;
        let catalog_dsn = platform.lake_config().coordinator_dsn.clone();
        if let Some(dsn) = &catalog_dsn {
            tributary_workflows::sql::register(session.context(), dsn)
                .map_err(|e| Error::Query(Box::new(e.into())))?;
        }
        let listen = listen.unwrap_or(&config.ui.listen).to_string();
        let listener = TcpListener::bind(&listen)
            .await
            .map_err(|source| Error::Bind {
                listen: listen.clone(),
                source,
            })?;
        let auth = auth::Auth::new(
            config.sql.user.clone(),
            password,
            Duration::from_secs(config.ui.session_hours.max(1) * 3600),
        );
        let timeout = config.sql.statement_timeout();
        let alerts = fraud::Feed::new();
        let state = Arc::new(AppState {
            platform,
            session,
            auth,
            timeout,
            running: Mutex::new(HashMap::new()),
            jobs_dir,
            catalog_dsn,
            http: tributary_stack::observe::http(),
            samples: pipeline::Samples::default(),
            alerts,
            shutdown,
        });
        Ok(Ui { listener, state })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the shutdown token given to [`Ui::bind`] is cancelled.
    pub async fn run(self) -> Result<()> {
        let state = self.state.clone();
        fraud::follow(state.clone());
        let shutdown = state.shutdown.clone();
        axum::serve(self.listener, router(state))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(Error::Serve)
    }
}

fn router(state: State) -> Router {
    let pages = Router::new()
        .route("/", get(|| async { axum::response::Redirect::to("/sql") }))
        .route("/sql", get(sql::page))
        .route("/api/query", post(sql::query))
        .route("/api/cancel", post(sql::cancel))
        .route("/api/download", post(sql::download))
        .route("/api/schema", get(sql::schema))
        .route("/lake", get(lake::index))
        .route("/lake/{layer}/{table}", get(lake::table))
        .route("/pipeline", get(pipeline::page))
        .route("/pipeline/live", get(pipeline::live))
        .route("/workflows", get(workflows::page))
        .route("/workflows/runs/{id}", get(workflows::run))
        .route("/api/workflows/trigger", post(workflows::trigger))
        .route("/api/workflows/backfill", post(workflows::backfill))
        .route("/fraud", get(fraud::page))
        .route("/fraud/alert", get(fraud::alert))
        .route("/api/fraud/stream", get(fraud::stream))
        .route("/logout", post(auth::logout))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ));
    Router::new()
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/static/{file}", get(assets::serve))
        .route("/healthz", get(|| async { "ok" }))
        .merge(pages)
        .layer(axum::middleware::from_fn(html::security_headers))
        .with_state(state)
}
