//! The local stack's Redis: the order service's product cache. Debian's
//! `redis-server` on a loopback port, detached like the broker
//! ([`crate::daemon`]), with no persistence: a cache that restarts empty
//! holds nothing stale (see `tributary_oltp::cache`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{Error, Result, io};

/// Memory the local cache may use; past it the least recently used keys
/// with a TTL (the products, never the stream's offsets) go first.
const MAXMEMORY: &str = "64mb";

/// The Redis of the stack.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RedisInstance {
    pub port: u16,
    pub data_dir: PathBuf,
}

impl RedisInstance {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        crate::daemon::alive(&self.data_dir)
    }
}

/// `configured` (`stack.redis_bin`) when given, else `redis-server` on
/// `PATH` or in `/usr/bin`.
pub fn binary(configured: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = configured {
        return Ok(p.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
        .ok_or(Error::RedisNotInstalled)
}

/// A Redis on `127.0.0.1:<port>`, working in `dir`, logging to
/// `<dir>/redis.log`: no snapshots, no append-only file.
pub fn command(bin: &Path, port: u16, dir: &Path) -> Result<Command> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let mut c = Command::new(bin);
    c.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--maxmemory", MAXMEMORY])
        .args(["--maxmemory-policy", "volatile-lru"])
        .args(["--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok(c)
}

/// Starts the stack's Redis unless it answers already, and waits up to
/// 10 s for it.
pub(crate) async fn start_detached(bin: &Path, redis: &RedisInstance) -> Result<()> {
    if ping(redis.port).is_ok() {
        return Ok(());
    }
    crate::daemon::spawn(command(bin, redis.port, &redis.data_dir)?, &redis.data_dir)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = ping(redis.port) {
        if Instant::now() > deadline {
            return Err(Error::RedisNotReady {
                url: redis.url(),
                log: redis.data_dir.join("redis.log").display().to_string(),
                reason: e.to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// One inline command to Redis on `127.0.0.1:<port>`, its reply line.
fn call(port: u16, command: &str) -> std::io::Result<String> {
    let timeout = Duration::from_millis(500);
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(format!("{command}\r\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

/// Whether Redis answers `PING` on `port`.
pub fn ping(port: u16) -> std::io::Result<()> {
    match call(port, "PING")?.as_str() {
        "+PONG" => Ok(()),
        other => Err(std::io::Error::other(format!("PING answered {other:?}"))),
    }
}

/// `status`: whether it answers, and how many keys it holds.
pub(crate) fn describe(redis: &RedisInstance) -> (bool, String) {
    match ping(redis.port).and_then(|()| call(redis.port, "DBSIZE")) {
        Ok(size) => (
            true,
            format!(
                "{} keys; pid {}; log {}",
                size.trim_start_matches(':'),
                redis
                    .pid()
                    .map_or_else(|| "not started by `up`".into(), |p| p.to_string()),
                redis.data_dir.join("redis.log").display()
            ),
        ),
        Err(e) => (false, format!("not answering: {e}")),
    }
}
