//! Processes the local stack leaves running (the broker, the scheduler):
//! each in its own process group, so Ctrl-C on the command that started it
//! does not stop it, with its pid in `<dir>/pid` for `status` and `down`.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Result, io};

/// Starts `command` detached and records its pid in `<dir>/pid`.
pub fn spawn(mut command: Command, dir: &Path) -> Result<u32> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let child = command
        .process_group(0)
        .spawn()
        .map_err(io(format!("starting {:?}", command.get_program())))?;
    let pid_file = dir.join("pid");
    std::fs::write(&pid_file, child.id().to_string())
        .map_err(io(format!("writing {}", pid_file.display())))?;
    Ok(child.id())
}

/// The pid recorded in `<dir>/pid` by [`spawn`].
pub fn pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The recorded pid, when that process is alive.
pub fn alive(dir: &Path) -> Option<u32> {
    let pid = pid(dir)?;
    let p = nix::unistd::Pid::from_raw(pid as i32);
    // Reap it first if it was our child and has exited.
    let _ = nix::sys::wait::waitpid(p, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    nix::sys::signal::kill(p, None).is_ok().then_some(pid)
}

/// Stops the process recorded in `<dir>/pid`: SIGTERM, up to `grace`,
/// then SIGKILL.
pub fn stop(dir: &Path, grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let Some(pid) = pid(dir) else {
        return;
    };
    let pid = Pid::from_raw(pid as i32);
    if kill(pid, Signal::SIGTERM).is_ok() {
        let deadline = Instant::now() + grace;
        while kill(pid, None).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        }
        let _ = kill(pid, Signal::SIGKILL);
    }
    let _ = std::fs::remove_file(dir.join("pid"));
}
