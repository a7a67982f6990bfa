//! [`Process`]: a started program whose stdout and stderr are appended to a log file, and
//! that is killed (SIGKILL, then reaped) when dropped, so a failing test or run leaves
//! nothing behind.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("opening the log {}: {source}", path.display())]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting {program}: {source}")]
    Start {
        program: String,
        source: std::io::Error,
    },
    #[error("kill {signal} {pid}: {why}")]
    Signal {
        signal: String,
        pid: u32,
        why: String,
    },
}

/// A running (or exited, not yet reaped) child process.
#[derive(Debug)]
pub struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `cmd` with its stdout and stderr appended to `log` (created if missing), and
    /// `RUST_LOG=info` unless `cmd` sets `RUST_LOG` itself.
    pub fn spawn(cmd: &mut Command, log: &Path) -> Result<Process, SpawnError> {
        let open = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|source| SpawnError::Log {
                    path: log.to_path_buf(),
                    source,
                })
        };
        let (out, err) = (open()?, open()?);
        if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|source| SpawnError::Start {
                program: cmd.get_program().to_string_lossy().into_owned(),
                source,
            })?;
        Ok(Process {
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file its output goes to.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Whether it has exited by itself (a killed process is dropped, not asked).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Sends `signal` (`-STOP`, `-CONT`, ...) with kill(1).
    pub fn signal(&self, signal: &str) -> Result<(), SpawnError> {
        let pid = self.pid();
        let failed = |why: String| SpawnError::Signal {
            signal: signal.to_string(),
            pid,
            why,
        };
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .map_err(|e| failed(e.to_string()))?;
        if !status.success() {
            return Err(failed(status.to_string()));
        }
        Ok(())
    }

    /// `kill -9`, and waits until it is gone (its ports and files are free again).
    pub fn kill(self) {
        drop(self);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_goes_to_the_log_and_drop_kills() {
        let dir = std::env::temp_dir().join(format!("miniku-harness-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("p.log");
        let mut p = Process::spawn(
            Command::new("sh").args(["-c", "echo $RUST_LOG; echo err >&2"]),
            &log,
        )
        .unwrap();
        while !p.has_exited() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "info\nerr\n");
        let mut sleeper = Process::spawn(Command::new("sleep").arg("100"), &log).unwrap();
        assert!(!sleeper.has_exited());
        let pid = sleeper.pid();
        sleeper.kill();
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
