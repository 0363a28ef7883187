//! A small connection pool: a bounded number of `tokio-postgres` clients per
//! database, connected lazily and handed out exclusively so that a
//! transaction owns its connection.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::{Client, NoTls};

use crate::error::{Error, Result};

/// How long a request waits for a free connection before failing.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Pool {
    dsn: String,
    /// A log-safe name for the database: never the DSN, which may hold a password.
    pub(crate) label: String,
    idle: Mutex<Vec<Client>>,
    permits: Semaphore,
}

impl Pool {
    pub(crate) fn new(dsn: String, label: String, size: usize) -> Pool {
        Pool {
            dsn,
            label,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.max(1)),
        }
    }

    /// Checks out a connection, opening one when none is idle.
    pub(crate) async fn get(&self) -> Result<Conn<'_>> {
        let permit = tokio::time::timeout(CHECKOUT_TIMEOUT, self.permits.acquire())
            .await
            .map_err(|_| Error::PoolTimeout {
                database: self.label.clone(),
            })?
            .map_err(|_| Error::Internal("pool semaphore closed".into()))?;
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let mut found = None;
            while let Some(c) = idle.pop() {
                if !c.is_closed() {
                    found = Some(c);
                    break;
                }
            }
            found
        };
        let client = match reused {
            Some(c) => c,
            None => connect(&self.dsn, &self.label).await?,
        };
        Ok(Conn {
            client: Some(client),
            pool: self,
            _permit: permit,
        })
    }
}

/// Opens one connection and drives it on its own task.
pub(crate) async fn connect(dsn: &str, label: &str) -> Result<Client> {
    let mut config: tokio_postgres::Config = dsn.parse().map_err(|source| Error::Connect {
        database: label.to_owned(),
        source,
    })?;
    // The service's tables live in `public`. Without this, a schema named
    // after the role (`$user`, first in the default search_path) would
    // silently receive new tables and shadow the real ones.
    config.options("-c search_path=public");
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|source| Error::Connect {
            database: label.to_owned(),
            source,
        })?;
    let label = label.to_owned();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(database = %label, %error, "database connection closed");
        }
    });
    Ok(client)
}

/// A checked-out connection; it returns to the pool on drop unless closed.
pub(crate) struct Conn<'a> {
    client: Option<Client>,
    pool: &'a Pool,
    _permit: SemaphorePermit<'a>,
}

impl Deref for Conn<'_> {
    type Target = Client;

    fn deref(&self) -> &Client {
        self.client.as_ref().expect("client present until drop")
    }
}

impl DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("client present until drop")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        // A dropped, uncommitted transaction has already queued its ROLLBACK
        // on this client, so the next user starts outside any transaction.
        if let Some(client) = self.client.take()
            && !client.is_closed()
        {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(client);
        }
    }
}
