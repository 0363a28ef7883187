//! PostgreSQL on this machine: finding the installed programs, running the
//! server's tools (as the `postgres` OS user when we are root: `initdb` and
//! the server refuse to run as root), the local stack's clusters, and the
//! one way tributary's tools connect for SQL.
//!
//! ```no_run
//! use tributary_stack::postgres::PgTools;
//! let tools = PgTools::find(None).unwrap();
//! let status = tools.command("pg_ctl").arg("--version").status().unwrap();
//! assert!(status.success());
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tributary_model::dsn::describe;

use crate::{Error, Result, pg};

/// The programs of one PostgreSQL installation (`initdb`, `pg_ctl`,
/// `postgres`, `pg_recvlogical`, …).
#[derive(Clone, Debug)]
pub struct PgTools {
    dir: PathBuf,
}

impl PgTools {
    /// `configured` (`stack.pg_bin`) when given; else `pg_config --bindir`
    /// when it holds `pg_ctl`; else the newest `/usr/lib/postgresql/*/bin`
    /// (Debian's layout) that does.
    pub fn find(configured: Option<&Path>) -> Result<PgTools> {
        if let Some(dir) = configured {
            return Ok(PgTools { dir: dir.into() });
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("pg_ctl").exists() {
                return Ok(PgTools { dir });
            }
        }
        let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path().join("bin"))
                    .filter(|p| p.join("pg_ctl").exists())
                    .collect()
            })
            .unwrap_or_default();
        candidates.sort();
        let dir = candidates.pop().ok_or(Error::PostgresNotInstalled)?;
        Ok(PgTools { dir })
    }

    /// The folder that holds the programs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of `program`; an error when this installation lacks it.
    pub fn program(&self, program: &str) -> Result<PathBuf> {
        let path = self.dir.join(program);
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error::PostgresToolMissing {
                program: program.into(),
                dir: self.dir.display().to_string(),
            })
        }
    }

    /// Runs a server tool (`initdb`, `pg_ctl`, `postgres`), as the
    /// `postgres` user when we are root.
    pub fn command(&self, program: &str) -> Command {
        let exe = self.dir.join(program);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    /// Creates a cluster in `data`: `tributary` as superuser, trusted on
    /// every local connection, UTF8 without a locale.
    pub fn initdb(&self, data: &Path) -> Result<()> {
        run(
            self.command("initdb").arg("-D").arg(data).args([
                "-U",
                "tributary",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
            ]),
            "initdb",
        )
    }
}

pub(crate) fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Gives `path` (recursively) to the `postgres` user when we are root, so
/// the server run by [`PgTools::command`] can use it.
pub fn chown_to_server_user(path: &Path) -> Result<()> {
    if is_root() {
        run(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(path),
            "chown to postgres",
        )?;
    }
    Ok(())
}

/// Runs `cmd` to completion; its output is the error when it fails.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            what: what.into(),
            program: format!("{:?}", cmd.get_program()),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::CommandFailed {
            what: what.into(),
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(())
}

/// Connects for SQL with the session settings tributary's checks rely on
/// (UTC, floats with every digit). The DSN reaches errors without its
/// password.
pub async fn connect(dsn: &str) -> Result<tokio_postgres::Client> {
    let mut cfg: tokio_postgres::Config = dsn.parse().map_err(Error::InvalidDsn)?;
    cfg.options("-c TimeZone=UTC -c extra_float_digits=1");
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(pg(format!("connecting to {}", describe(dsn))))?;
    tokio::spawn(conn);
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_connection_names_the_database_without_its_password() {
        // Nothing listens on port 1.
        let dsn = "host=127.0.0.1 port=1 user=u password=hunter2 dbname=orders connect_timeout=2";
        let err = tributary_model::error_chain(&connect(dsn).await.unwrap_err());
        assert!(err.contains("host=127.0.0.1 port=1 user=u"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let url = "postgres://u:hunter2@127.0.0.1:1/orders?connect_timeout=2";
        let err = tributary_model::error_chain(&connect(url).await.unwrap_err());
        assert!(err.contains("postgres://u@127.0.0.1:1/orders"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}
