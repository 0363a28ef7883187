//! The PostgreSQL wire server (`tributary sql serve`): psql, JDBC tools and
//! Python drivers query the lake through the [`Session`].
//!
//! - Protocol: pgwire; simple and extended query (Parse/Bind/Execute with
//!   `$n` parameters, named prepared statements).
//! - Authentication: SCRAM-SHA-256 for the one configured user; with TLS,
//!   SCRAM-SHA-256-PLUS (channel binding) too.
//! - Per statement: a timeout, and CancelRequest (psql's Ctrl-C), both of
//!   which drop the running query; an error answers that statement only.
//!
//! Results are collected before they are sent, so the timeout and a cancel
//! cover the whole statement; the memory pool bounds what a query may hold.

pub(crate) mod catalog;
pub(crate) mod encode;
pub(crate) mod handler;
pub(crate) mod names;
pub(crate) mod pg_catalog;
pub(crate) mod rewrite;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{Sink, SinkExt};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::{ScramAuth, gen_salted_password};
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::{ClientInfo, ConnectionManager, METADATA_USER, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::TlsAcceptor;
use pgwire::tokio::tokio_rustls::rustls;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::SqlConfig;
use crate::session::Session;
use crate::{Error, Result};

use handler::Handler;

/// PBKDF2 rounds for the stored SCRAM secret (PostgreSQL's default).
const SCRAM_ITERATIONS: usize = 4096;
/// The database name the server answers to (`current_database()`).
const DATABASE: &str = "lake";
/// How long open connections may finish their statement at shutdown.
const DRAIN: Duration = Duration::from_secs(5);

/// A bound, not yet serving, wire server.
pub struct Server {
    listener: TcpListener,
    handlers: Arc<Handlers>,
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listen", &self.listener.local_addr().ok())
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds `config.listen` (or `listen` when given). Fails without a
    /// password, or when TLS files are given but unreadable.
    pub async fn bind(
        session: Session,
        config: &SqlConfig,
        listen: Option<&str>,
    ) -> Result<Server> {
        let password = config.password.as_ref().ok_or_else(|| {
            Error::Config(
                "the wire server needs a password: set `password` in [sql] or TRIBUTARY__SQL__PASSWORD".into(),
            )
        })?;
        let (tls, cert_pem) = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let (acceptor, pem) = tls_acceptor(cert, key)?;
                (Some(acceptor), Some(pem))
            }
            (None, None) => (None, None),
            _ => {
                return Err(Error::Config(
                    "TLS needs both `tls_cert` and `tls_key` in [sql]".into(),
                ));
            }
        };
        let listen = listen.unwrap_or(&config.listen);
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| Error::Server(format!("binding {listen}: {e}")))?;
        let secret = Arc::new(Secret::new(&config.user, password.expose_secret()));
        let manager = Arc::new(ConnectionManager::new());
        let timeout = config.statement_timeout();
        let settings = pg_catalog::settings(timeout.map(|t| t.as_millis()));
        pg_catalog::register(
            session.context(),
            session.layer_schemas(),
            pg_catalog::Identity {
                user: config.user.clone(),
                database: DATABASE.into(),
                settings: settings.clone(),
            },
        )?;
        let handler = Arc::new(Handler {
            session: Arc::new(session),
            timeout,
            settings: Arc::new(settings),
        });
        Ok(Server {
            listener,
            tls,
            handlers: Arc::new(Handlers {
                handler,
                secret,
                cert_pem,
                cancel: Arc::new(DefaultCancelHandler::new(manager.clone())),
                manager,
            }),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(Error::Io)
    }

    /// Whether clients may (and by sslmode, must) use TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves connections until `shutdown`; then stops accepting, lets open
    /// connections finish for a few seconds and closes the rest.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => {
                    let (socket, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and the like: wait, go on.
                            tracing::warn!(error = %e, "accepting a connection");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let _nodelay = socket.set_nodelay(true);
                    let handlers = self.handlers.clone();
                    let tls = self.tls.clone();
                    connections.spawn(async move {
                        tracing::debug!(%peer, "connection opened");
                        if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                // Reap finished connections so the set does not grow.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        let drained = tokio::time::timeout(DRAIN, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::info!(open = connections.len(), "closing connections still open");
            connections.abort_all();
        }
        Ok(())
    }
}

/// Reads the PEM certificate chain and key into a rustls acceptor; returns
/// the certificate PEM too, for SCRAM channel binding.
fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<(TlsAcceptor, Vec<u8>)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| Error::Config(format!("reading {}: {e}", path.display())))
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("certificate {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(Error::Config(format!(
            "no certificate in {}",
            cert.display()
        )));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| Error::Config(format!("private key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key_der))
        .map_err(|e| Error::Config(format!("TLS setup: {e}")))?;
    Ok((TlsAcceptor::from(Arc::new(config)), cert_pem))
}

/// The configured user's SCRAM secret, salted once at start.
#[derive(Debug)]
struct Secret {
    user: String,
    salt: Vec<u8>,
    salted: Vec<u8>,
}

impl Secret {
    fn new(user: &str, password: &str) -> Secret {
        let salt = random_bytes();
        let salted = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
        Secret {
            user: user.to_string(),
            salt,
            salted,
        }
    }
}

fn random_bytes() -> Vec<u8> {
    rand::random::<[u8; 16]>().to_vec()
}

#[async_trait]
impl AuthSource for Secret {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        if login.user() == Some(self.user.as_str()) {
            return Ok(Password::new(Some(self.salt.clone()), self.salted.clone()));
        }
        // An unknown user gets a secret nobody knows, so the exchange fails
        // the same way as a wrong password and does not reveal who exists.
        let salt = random_bytes();
        let salted = gen_salted_password(
            &String::from_utf8_lossy(&random_bytes()),
            &salt,
            SCRAM_ITERATIONS,
        );
        Ok(Password::new(Some(salt), salted))
    }
}

/// Authentication that names the user in a failed login, as PostgreSQL
/// does. libpq leaves the SCRAM user name empty (the server knows it from
/// the startup message), so pgwire's own error would say `user ""`.
struct NamedUser<H>(H);

#[async_trait]
impl<H: StartupHandler> StartupHandler for NamedUser<H> {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match self.0.on_startup(client, message).await {
            Err(PgWireError::InvalidPassword(_)) => {
                let user = client
                    .metadata()
                    .get(METADATA_USER)
                    .cloned()
                    .unwrap_or_default();
                let info = ErrorInfo::new(
                    "FATAL".into(),
                    "28P01".into(),
                    format!("password authentication failed for user \"{user}\""),
                );
                // Sent and closed here, as PostgreSQL does: pgwire's error
                // path would follow a startup error with ReadyForQuery,
                // which clients (asyncpg) take for a protocol violation.
                client
                    .send(PgWireBackendMessage::ErrorResponse(info.into()))
                    .await?;
                client.close().await?;
                Ok(())
            }
            other => other,
        }
    }
}

/// Everything pgwire asks for, per connection.
struct Handlers {
    handler: Arc<Handler>,
    secret: Arc<Secret>,
    cert_pem: Option<Vec<u8>>,
    manager: Arc<ConnectionManager>,
    cancel: Arc<DefaultCancelHandler>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.handler.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.handler.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        let mut scram = ScramAuth::new(self.secret.clone());
        scram.set_iterations(SCRAM_ITERATIONS);
        if let Some(pem) = &self.cert_pem
            && let Err(e) = scram.configure_certificate(pem)
        {
            tracing::warn!(error = %e, "SCRAM channel binding off: certificate not usable");
        }
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = format!("{} (tributary)", pg_catalog::SERVER_VERSION);
        parameters.search_path = pg_catalog::SEARCH_PATH.join(", ");
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        Arc::new(NamedUser(
            SASLAuthStartupHandler::new(Arc::new(parameters))
                .with_scram(scram)
                .with_connection_manager(self.manager.clone()),
        ))
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancel.clone()
    }
}
