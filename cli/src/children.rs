//! The processes `feral demo` starts: each writes its output to a log file, runs in its own
//! process group (so a Ctrl-C reaches only `feral`, which then stops them in order), and
//! is stopped when [`Children`] is stopped or dropped: SIGTERM, then SIGKILL after a grace
//! period.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tracing::{debug, warn};

/// How long a child may take to exit after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(5);

/// One started process.
struct Running {
    name: String,
    log: PathBuf,
    child: Child,
    /// Set once the process is known to have exited.
    exited: Option<ExitStatus>,
}

/// A child that has exited on its own while it should have been running.
#[derive(Debug)]
pub struct Exited {
    pub name: String,
    pub log: PathBuf,
    pub status: ExitStatus,
}

impl std::fmt::Display for Exited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} exited unexpectedly ({}); see {}", self.name, self.status, self.log.display())
    }
}

/// The started processes, stopped in reverse start order.
#[derive(Default)]
pub struct Children {
    running: Vec<Running>,
}

impl Children {
    /// Starts `program` with `args` and `env`, stdout and stderr going to `log` (truncated).
    pub fn spawn(&mut self, name: &str, program: &Path, args: &[String], env: &[(&str, &str)], log: &Path) -> anyhow::Result<()> {
        let stdout = File::create(log).with_context(|| format!("cannot create log file {}", log.display()))?;
        let stderr = stdout.try_clone().with_context(|| format!("cannot share log file {}", log.display()))?;
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null()).stdout(stdout).stderr(stderr).process_group(0);
        command.env_remove("FERAL_CONFIG");
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().with_context(|| format!("cannot start {name} ({})", program.display()))?;
        debug!(name, pid = child.id(), "started child process");
        self.running.push(Running { name: name.to_owned(), log: log.to_path_buf(), child, exited: None });
        Ok(())
    }

    /// Children that have exited since the last call.
    pub fn newly_exited(&mut self) -> Vec<Exited> {
        let mut exited = Vec::new();
        for running in self.running.iter_mut().filter(|r| r.exited.is_none()) {
            if let Ok(Some(status)) = running.child.try_wait() {
                running.exited = Some(status);
                exited.push(Exited { name: running.name.clone(), log: running.log.clone(), status });
            }
        }
        exited
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Stops every child still running, newest first, and forgets them all.
    pub fn stop(&mut self) {
        while let Some(mut running) = self.running.pop() {
            if running.exited.is_some() {
                continue;
            }
            terminate(&mut running);
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGTERM, wait up to [`GRACE`], then SIGKILL.
fn terminate(running: &mut Running) {
    let pid = running.child.id().to_string();
    let asked = Command::new("kill").args(["-TERM", &pid]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if asked.is_ok_and(|status| status.success()) {
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline {
            match running.child.try_wait() {
                Ok(Some(status)) => {
                    debug!(name = %running.name, %status, "child process stopped");
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => break,
            }
        }
        warn!(name = %running.name, "child process ignored SIGTERM; killing it");
    }
    if let Err(error) = running.child.kill() {
        debug!(name = %running.name, %error, "could not kill child process (already gone?)");
    }
    let _ = running.child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_terminates_children_and_exits_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut children = Children::default();
        let sleep = Path::new("sleep");
        children.spawn("sleeper", sleep, &["30".to_owned()], &[], &dir.path().join("sleeper.log")).expect("spawn sleep");
        children.spawn("quick", Path::new("true"), &[], &[], &dir.path().join("quick.log")).expect("spawn true");
        let started = Instant::now();
        let mut exited = Vec::new();
        while exited.is_empty() && started.elapsed() < Duration::from_secs(5) {
            exited = children.newly_exited();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(exited.len(), 1);
        assert_eq!(exited[0].name, "quick");
        assert!(exited[0].to_string().contains("quick.log"), "{}", exited[0]);
        assert!(children.newly_exited().is_empty(), "an exit is reported once");
        children.stop();
        assert!(children.is_empty());
        assert!(started.elapsed() < GRACE, "sleep stops on SIGTERM without waiting for the grace period");
    }
}
