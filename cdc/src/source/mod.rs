//! The source databases and the connections to them: what a [`SourceDb`]
//! is, its slot's name, and the SQL and replication connections, with TLS
//! as the DSN's `sslmode` asks ([`tls`]).
//!
//! A leaf of the crate: it knows nothing of slots' state, snapshots or the
//! stream, which all connect through it. tokio-postgres parses the DSN
//! except for the TLS settings it does not know ([`dsn`]); both connections
//! then run over rustls.

mod dsn;
mod tls;

use tokio::net::TcpStream;
use tokio_postgres::config::Host;

use crate::protocol::{ReplicationConnection, Startup};
use crate::{Error, Result, pg};

pub(crate) use tls::tls_rejected;

/// The `application_name` of every connection of the reader.
pub(crate) const APPLICATION_NAME: &str = "tributary-cdc";

/// One source database to capture. Its `Debug` output shows the DSN
/// without the password.
#[derive(Clone)]
pub struct SourceDb {
    /// Logical database name (`orders`, `catalog`).
    pub db: String,
    /// Shard index (0 for unsharded databases).
    pub shard: u32,
    /// libpq-style connection string (key-value or URL). TLS as libpq
    /// reads it: `sslmode` (`disable`, `prefer` (default), `require`,
    /// `verify-ca`, `verify-full`) and `sslrootcert`.
    pub dsn: String,
    /// Tables (schema `public`) to publish.
    pub tables: Vec<String>,
}

impl std::fmt::Debug for SourceDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceDb")
            .field("db", &self.db)
            .field("shard", &self.shard)
            .field("dsn", &tributary_model::dsn::describe(&self.dsn))
            .field("tables", &self.tables)
            .finish()
    }
}

impl SourceDb {
    /// This database's replication slot:
    /// [`tributary_model::domain::slot_name`].
    pub(crate) fn slot_name(&self, prefix: &str) -> String {
        tributary_model::domain::slot_name(prefix, &self.db, self.shard)
    }

    /// `db.shard`, the `source` label of the metrics.
    pub(crate) fn label(&self) -> String {
        format!("{}.{}", self.db, self.shard)
    }
}

/// An SQL connection with the session settings the reader relies on (UTC,
/// ISO dates, exact floats).
pub(crate) async fn connect_sql(dsn: &str) -> Result<tokio_postgres::Client> {
    let dsn::Dsn {
        mut config,
        tls,
        shown,
    } = dsn::Dsn::parse(dsn)?;
    config.options("-c TimeZone=UTC -c DateStyle=ISO -c extra_float_digits=3");
    config.application_name(APPLICATION_NAME);
    let (client, conn) = config
        .connect(tls.make_connect()?)
        .await
        .map_err(|source| {
            // The TLS mode matters to most connection errors: say it when
            // the DSN leaves it to the default.
            let mode = if shown.contains("sslmode") {
                String::new()
            } else {
                format!(" (sslmode={})", tls.mode().as_str())
            };
            Error::Postgres {
                context: format!("connecting to {shown}{mode}"),
                source,
            }
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "source connection closed");
        }
    });
    Ok(client)
}

/// A connection inside a REPEATABLE READ transaction whose snapshot it
/// exported, for copy workers to import.
pub(crate) async fn export_snapshot(dsn: &str) -> Result<(tokio_postgres::Client, String)> {
    let client = connect_sql(dsn).await?;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(pg("starting a snapshot transaction"))?;
    let name = client
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(pg("exporting a snapshot"))?
        .get(0);
    Ok((client, name))
}

/// A walsender connection in logical replication mode (`replication=database`)
/// to the DSN's first TCP host, or, when it names several (a primary and
/// its standbys), to the first that takes writes: logical slots live on
/// the primary only.
pub(crate) async fn connect_replication(dsn: &str) -> Result<ReplicationConnection> {
    let dsn::Dsn { config, tls, shown } = dsn::Dsn::parse(dsn)?;
    let (host, port) = match config.get_hosts().len() {
        0 | 1 => (
            match config.get_hosts().first() {
                Some(Host::Tcp(h)) => h.clone(),
                _ => "127.0.0.1".to_string(),
            },
            config.get_ports().first().copied().unwrap_or(5432),
        ),
        _ => writable_host(&config, &tls, &shown).await?,
    };
    let user = config
        .get_user()
        .ok_or_else(|| Error::Config(format!("DSN {shown} has no user")))?;
    let database = config.get_dbname().unwrap_or(user);
    let target = format!("{host}:{port}/{database}");
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|source| Error::Connect {
            target: target.clone(),
            source,
        })?;
    tcp.set_nodelay(true).ok();
    let direct = config.get_ssl_negotiation() == tokio_postgres::config::SslNegotiation::Direct;
    let (read, write) = tls::negotiate(tcp, &tls, &host, direct, &target).await?;
    ReplicationConnection::start(
        read,
        write,
        target,
        Startup {
            user,
            database,
            password: config.get_password(),
            application_name: APPLICATION_NAME,
        },
    )
    .await
}

/// The first of the DSN's hosts that is not in recovery, asked one at a
/// time over SQL (each within the DSN's `connect_timeout`, else 5 s).
async fn writable_host(
    config: &tokio_postgres::Config,
    tls: &tls::TlsSettings,
    shown: &str,
) -> Result<(String, u16)> {
    let ports = config.get_ports();
    let timeout = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(std::time::Duration::from_secs(5));
    let mut tried = Vec::new();
    for (i, host) in config.get_hosts().iter().enumerate() {
        let Host::Tcp(h) = host else { continue };
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        // A Config keeps every host it was given: build a one-host one.
        let mut single = tokio_postgres::Config::new();
        single.host(h).port(port).ssl_mode(config.get_ssl_mode());
        if let Some(u) = config.get_user() {
            single.user(u);
        }
        if let Some(p) = config.get_password() {
            single.password(p);
        }
        if let Some(d) = config.get_dbname() {
            single.dbname(d);
        }
        let ask = async {
            let (client, conn) = single
                .connect(tls.make_connect()?)
                .await
                .map_err(pg("connecting"))?;
            tokio::spawn(conn);
            let recovery: bool = client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .map_err(pg("asking pg_is_in_recovery()"))?
                .get(0);
            Ok::<_, Error>(recovery)
        };
        match tokio::time::timeout(timeout, ask).await {
            Ok(Ok(false)) => return Ok((h.clone(), port)),
            Ok(Ok(true)) => tried.push(format!("{h}:{port} is a standby")),
            Ok(Err(e)) => tried.push(format!("{h}:{port}: {e}")),
            Err(_) => tried.push(format!("{h}:{port}: no answer within {timeout:?}")),
        }
    }
    // Transient: during a failover no node takes writes for a moment.
    Err(Error::Connect {
        target: shown.to_string(),
        source: std::io::Error::other(format!("no host takes writes ({})", tried.join("; "))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A listener that answers the SSLRequest with `N` (a server without
    /// TLS) and then closes.
    async fn server_without_tls() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut request = [0u8; 8];
                if s.read_exact(&mut request).await.is_ok() {
                    let _ = s.write_all(b"N").await;
                }
            }
        });
        port
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let source = SourceDb {
            db: "orders".into(),
            shard: 1,
            dsn: "host=db1 user=cdc password=hunter2secret".into(),
            tables: vec!["orders".into()],
        };
        let shown = format!("{source:?}");
        assert!(
            !shown.contains("hunter2secret") && shown.contains("db1"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn connection_failures_never_show_the_password() {
        // Nothing listens on a port just freed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        for dsn in [
            format!("host=127.0.0.1 port={port} user=cdc password=hunter2secret dbname=orders"),
            format!("postgres://cdc:hunter2secret@127.0.0.1:{port}/orders?sslmode=require"),
            "host=127.0.0.1 password=hunter2secret sslmode=verify-full".to_string(),
            "host=127.0.0.1 password='hunter2secret".to_string(),
        ] {
            for e in [
                connect_sql(&dsn).await.unwrap_err(),
                connect_replication(&dsn).await.err().unwrap(),
            ] {
                let text = format!("{} | {e:?}", tributary_model::error_chain(&e));
                assert!(!text.contains("hunter2secret"), "{dsn}: {text}");
            }
        }
    }

    #[tokio::test]
    async fn a_server_refusing_required_tls_is_a_permanent_error() {
        let port = server_without_tls().await;
        let dsn = format!("host=127.0.0.1 port={port} user=cdc dbname=orders sslmode=require");
        let sql = connect_sql(&dsn).await.unwrap_err();
        assert!(
            !sql.is_transient(),
            "{}",
            tributary_model::error_chain(&sql)
        );
        let repl = connect_replication(&dsn).await.err().unwrap();
        assert!(matches!(repl, Error::Tls { .. }), "{repl:?}");
        assert!(!repl.is_transient());
        assert!(
            tributary_model::error_chain(&repl).contains("does not accept TLS"),
            "{repl}"
        );
        // Refused TLS under `prefer` goes on in plaintext: the server here
        // then closes, a transient connection failure.
        let prefer = format!("host=127.0.0.1 port={port} user=cdc dbname=orders");
        assert!(connect_sql(&prefer).await.unwrap_err().is_transient());
        assert!(
            connect_replication(&prefer)
                .await
                .err()
                .unwrap()
                .is_transient()
        );
    }
}
