//! What the end-to-end benches share: a stack of their own in a temporary
//! folder, and the platform's processes run as children of the `tributary`
//! binary (as in production), each with its log in the state folder.

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tributary_stack::Config;

use crate::{Error, Result, io};

/// Runs `bench` on a stack of its own under a temporary folder (`config`
/// with its `state_dir` moved there), then takes the stack down and removes
/// the folder, unless `keep`. `name` is the bench's, for messages.
pub(crate) async fn on_own_stack<T, F, Fut>(
    config: &Config,
    name: &str,
    keep: bool,
    bench: F,
) -> Result<T>
where
    F: FnOnce(Config, PathBuf) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    if config.sources.is_some() || config.kafka.is_some() || config.lake.is_some() {
        return Err(Error::Options(format!(
            "bench {name} runs on a stack of its own: leave [sources], [kafka] and [lake] unset"
        )));
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("tributary-bench-{name}-"))
        .tempdir()
        .map_err(io("creating the bench folder"))?;
    let mut cfg = config.clone();
    cfg.state_dir = dir.path().join("state");
    // The benches measure the pipeline, as they did before shards had
    // standbys; the drills turn them back on.
    cfg.stack.standbys = false;
    eprintln!("bench stack in {}", cfg.state_dir.display());
    let report = bench(cfg.clone(), dir.path().to_path_buf()).await;
    if keep {
        let kept = dir.keep();
        eprintln!("kept the bench stack in {}", kept.display());
    } else {
        tributary_stack::down(&cfg, true)?;
    }
    report
}

/// A free port on loopback.
pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(io("finding a free port"))?
        .port())
}

/// Child processes of the `tributary` binary, by name.
pub(crate) struct Children {
    exe: PathBuf,
    env: Vec<(String, String)>,
    logs: PathBuf,
    running: Vec<(&'static str, Vec<String>, Child)>,
}

impl Children {
    /// Children of `exe` with `env` set, logging to `<logs>/<name>.log`.
    pub(crate) fn new(exe: PathBuf, env: Vec<(String, String)>, logs: PathBuf) -> Self {
        Children {
            exe,
            env,
            logs,
            running: Vec::new(),
        }
    }

    /// Starts `tributary <args>` as `name`; its log is appended to, so a
    /// restarted child keeps its history.
    pub(crate) fn spawn(&mut self, name: &'static str, args: &[&str]) -> Result<()> {
        let path = self.log_path(name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(io(format!("opening {}", path.display())))?;
        let child = Command::new(&self.exe)
            .args(args)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log2)
            .stderr(log)
            .spawn()
            .map_err(io(format!("starting {name} ({})", self.exe.display())))?;
        let args = args.iter().map(|a| a.to_string()).collect();
        self.running.push((name, args, child));
        Ok(())
    }

    /// SIGKILLs a child and starts it again with the same arguments.
    pub(crate) fn kill_and_restart(&mut self, name: &'static str) -> Result<()> {
        let args = self.kill(name)?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn(name, &args)
    }

    /// SIGKILLs a child and reaps it; returns its arguments.
    pub(crate) fn kill(&mut self, name: &'static str) -> Result<Vec<String>> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let i = self
            .running
            .iter()
            .position(|(n, _, _)| *n == name)
            .ok_or_else(|| Error::Internal(format!("no child {name}")))?;
        let (_, args, mut child) = self.running.remove(i);
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let _ = child.wait();
        Ok(args)
    }

    /// Waits until `GET {url}/products` answers (the order service is up),
    /// failing when a child exits or after 120 s.
    pub(crate) async fn wait_http(&mut self, url: &str) -> Result<()> {
        let products = format!("{url}/products");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            self.check()?;
            if let Ok(r) = reqwest::get(&products).await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Run(format!(
                    "the order service did not answer on {products}; see {}",
                    self.log_path("oltp").display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub(crate) fn log_path(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// An error naming the first child that exited, and its log.
    pub(crate) fn check(&mut self) -> Result<()> {
        for (name, _, child) in &mut self.running {
            if let Some(status) = child
                .try_wait()
                .map_err(io(format!("waiting for {name}")))?
            {
                return Err(Error::Run(format!(
                    "{name} exited with {status}; see {}",
                    self.logs.join(format!("{name}.log")).display()
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn pid(&self, name: &str) -> Option<u32> {
        self.running
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, c)| c.id())
    }

    /// `(name, pid)` of every running child.
    pub(crate) fn pids(&self) -> impl Iterator<Item = (&'static str, u32)> + '_ {
        self.running.iter().map(|(n, _, c)| (*n, c.id()))
    }

    /// SIGTERM, a few seconds to drain, then SIGKILL.
    pub(crate) fn stop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        for (_, _, c) in &self.running {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (_, _, c) in &mut self.running {
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
