//! The tansu broker (a Kafka-API broker from crates.io): finding it,
//! starting one on a loopback port with a storage engine, stopping it.
//!
//! The local stack's broker runs in its own process group with a pid file,
//! so it outlives the command that started it
//! ([`BrokerInstance`](crate::BrokerInstance)); a benchmark's broker is a
//! child that dies with it ([`command`] and [`wait_listening`]).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result, io};

/// The storage engine of the local stack's broker: sqlite in the broker's
/// folder (a relative path keeps it there, on disk).
pub const STACK_STORAGE: &str = "sqlite://tansu.db";

/// `configured` (`stack.broker_bin`) when given, else `tansu` on `PATH` or
/// in `~/.cargo/bin`.
pub fn binary(configured: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = configured {
        return Ok(p.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("tansu"))
        .find(|p| p.is_file())
        .ok_or(Error::BrokerNotInstalled)
}

/// A broker listening (and advertising itself) on `127.0.0.1:<port>`,
/// working in `dir` (where a relative storage path points), its output
/// appended to `<dir>/broker.log`.
pub fn command(bin: &Path, port: u16, storage: &str, dir: &Path) -> Result<Command> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let log_path = dir.join("broker.log");
    let log =
        std::fs::File::create(&log_path).map_err(io(format!("creating {}", log_path.display())))?;
    let log2 = log
        .try_clone()
        .map_err(io(format!("opening {}", log_path.display())))?;
    let url = format!("tcp://127.0.0.1:{port}");
    let mut c = Command::new(bin);
    c.args([
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
    ])
    .args(["--storage-engine", storage])
    .current_dir(dir)
    .stdin(Stdio::null())
    .stdout(log2)
    .stderr(log);
    Ok(c)
}

/// Whether something accepts connections on `127.0.0.1:<port>`.
pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300)).is_ok()
}

/// Waits up to 30 s for the broker at `port` (working in `dir`) to listen.
pub async fn wait_listening(port: u16, dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !port_open(port) {
        if Instant::now() > deadline {
            return Err(Error::BrokerNotListening {
                url: format!("tcp://127.0.0.1:{port}"),
                log: dir.join("broker.log").display().to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Starts a broker on `port` in `dir` with the stack's storage unless
/// something listens there already, detached ([`crate::daemon`]).
pub(crate) async fn start_detached(bin: &Path, port: u16, dir: &Path) -> Result<()> {
    if port_open(port) {
        return Ok(());
    }
    crate::daemon::spawn(command(bin, port, STACK_STORAGE, dir)?, dir)?;
    wait_listening(port, dir).await
}
