//! Running a simulator as a child process under a deadline.
//!
//! The child leads a process group of its own, so that everything it starts (EnergyPlus's
//! helpers, a Python interpreter's children, an FMU's threads) goes with it: at the deadline
//! the whole group is killed with SIGKILL, and so is what is left of it once the child ends.
//! Its stdout and stderr go to files in the working directory (never through memory), and the
//! caller gets their tails.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use tokio::process::Command;
use tokio::time::Instant;

/// How many bytes of a log's end are kept for reports.
pub const LOG_TAIL_BYTES: u64 = 8 * 1024;

/// How a child ended.
#[derive(Debug)]
pub struct ChildEnd {
    /// Its exit status; `None` when it was killed at the deadline.
    pub status: Option<ExitStatus>,
    /// Wall-clock time from spawn to end.
    pub elapsed: Duration,
    /// Where its stdout went.
    pub stdout: PathBuf,
    /// Where its stderr went.
    pub stderr: PathBuf,
}

impl ChildEnd {
    /// Whether the deadline killed it.
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    /// Its exit code, or `128 + signal` when a signal ended it (as a shell reports it).
    pub fn code(&self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let status = self.status?;
        status.code().or_else(|| status.signal().map(|s| 128 + s))
    }

    /// The end of its stdout.
    pub fn stdout_tail(&self) -> String {
        tail_of(&self.stdout, LOG_TAIL_BYTES)
    }

    /// The end of its stderr.
    pub fn stderr_tail(&self) -> String {
        tail_of(&self.stderr, LOG_TAIL_BYTES)
    }
}

/// Runs `command` in `dir` as the leader of a new process group, its output logged to
/// `<dir>/<name>.stdout` and `.stderr`, and kills the group at `deadline`.
pub async fn run(
    mut command: Command,
    dir: &Path,
    name: &str,
    deadline: Instant,
) -> anyhow::Result<ChildEnd> {
    let stdout = dir.join(format!("{name}.stdout"));
    let stderr = dir.join(format!("{name}.stderr"));
    let out = std::fs::File::create(&stdout)
        .with_context(|| format!("cannot create {}", stdout.display()))?;
    let err = std::fs::File::create(&stderr)
        .with_context(|| format!("cannot create {}", stderr.display()))?;
    command
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let pid = child.id().context("the child has no pid")?;
    let status = tokio::select! {
        status = child.wait() => Some(status.with_context(|| format!("cannot wait for {name}"))?),
        () = tokio::time::sleep_until(deadline) => None,
    };
    // Whatever the child left running in its group goes too (and at the deadline, the child).
    kill_group(pid);
    if status.is_none() {
        let _ = child.wait().await;
    }
    Ok(ChildEnd {
        status,
        elapsed: started.elapsed(),
        stdout,
        stderr,
    })
}

/// Sends SIGKILL to the process group led by `pid`; a group that is gone is not an error.
pub fn kill_group(pid: u32) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// The last `max` bytes of the file at `path` (from a line start where one is near), as text;
/// empty when it cannot be read.
pub fn tail_of(path: &Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    let _ = file.take(max).read_to_end(&mut bytes);
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if start > 0
        && let Some(newline) = text.find('\n')
    {
        text.drain(..=newline);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_deadline_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        let mut command = Command::new("sh");
        command.arg("-c").arg(format!(
            "sleep 600 & echo $! > {}; echo started; wait",
            pidfile.display()
        ));
        let deadline = Instant::now() + Duration::from_secs(2);
        let end = run(command, dir.path(), "sh", deadline).await.unwrap();
        assert!(end.timed_out());
        assert_eq!(end.stdout_tail().trim(), "started");
        let grandchild: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild was in the group: it dies (SIGKILL takes effect asynchronously), and
        // is gone or a zombie about to be reaped by init.
        let started = std::time::Instant::now();
        loop {
            let state =
                std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
            if state.is_empty() || state.contains(") Z ") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "grandchild still alive: {state}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn an_exit_code_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("sh");
        command.arg("-c").arg("echo oops >&2; exit 3");
        let end = run(
            command,
            dir.path(),
            "sh",
            Instant::now() + Duration::from_secs(30),
        )
        .await
        .unwrap();
        assert_eq!(end.code(), Some(3));
        assert_eq!(end.stderr_tail().trim(), "oops");
    }

    #[test]
    fn a_tail_starts_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "first line\nsecond\nthird\n").unwrap();
        assert_eq!(tail_of(&path, 12), "third\n");
        assert_eq!(tail_of(&path, 1000), "first line\nsecond\nthird\n");
    }
}
