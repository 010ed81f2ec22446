//! The process backend: one `runway-validator-runner` child per attempt on this machine, for a
//! machine without Docker. The child leads its own process group (so cancel takes EnergyPlus
//! or Python with it), runs with only the contract's environment and the simulators' paths,
//! and — when the launcher runs as root and `RUNWAY_PROCESS_AS_JOB_USER` is set — as the job
//! user (uid 1000 by default, the user of Validibot's images), who alone may write the
//! attempt's folder.
//!
//! Each job has a folder `<data-dir>/process-jobs/<attempt>/` holding its `log` (stdout and
//! stderr), `pid` (pid and the process's start time, so a reused pid is never mistaken for
//! it) and, once it ended, `exit` (its code). The job id is the attempt id. A launcher that
//! restarts finds its jobs there: a runner still alive is observed as running (and killed by
//! cancel), one that ended while nobody waited for it as exited without a code. Jobs outlive a
//! launcher shutdown (they have their own deadlines); `sweep` removes the folders (and kills
//! the processes) of attempts no longer active.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runway_runs::{AttemptId, BackendKind};

use super::{Backend, JobSpec, JobState, LaunchError, Launched};
use crate::registry::ValidatorConfig;

/// Bytes of a job's log kept as its log tail.
const LOG_TAIL_BYTES: u64 = 4 * 1024;
/// The exit code recorded for a job killed by a signal: 128 + the signal, as a shell says.
const SIGNAL_BASE: i32 = 128;

/// How the process backend starts runners.
#[derive(Debug, Clone)]
pub struct ProcessSettings {
    /// The `runway-validator-runner` executable.
    pub runner: PathBuf,
    /// Where job folders live.
    pub jobs_dir: PathBuf,
    /// Variables every runner gets besides the job's own (simulator paths, storage options).
    pub env: BTreeMap<String, String>,
    /// The user and group runners run as when the launcher is root; `None` to keep the
    /// launcher's.
    pub run_as: Option<(u32, u32)>,
}

impl ProcessSettings {
    /// The runner next to the current executable if it is there, else `runway-validator-runner`
    /// from `PATH`.
    pub fn default_runner() -> PathBuf {
        const NAME: &str = "runway-validator-runner";
        std::env::current_exe()
            .ok()
            .and_then(|exe| {
                // Test binaries live one folder below the binaries (target/debug/deps).
                let dir = exe.parent()?;
                [dir.join(NAME), dir.parent()?.join(NAME)]
                    .into_iter()
                    .find(|p| p.is_file())
            })
            .unwrap_or_else(|| PathBuf::from(NAME))
    }
}

#[derive(Debug)]
struct Entry {
    state: JobState,
    pid: Option<u32>,
}

type Jobs = Arc<Mutex<HashMap<String, Entry>>>;

fn lock(jobs: &Jobs) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
    jobs.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs each attempt as a local `validator-runner` process.
#[derive(Debug)]
pub struct ProcessBackend {
    settings: ProcessSettings,
    jobs: Jobs,
}

impl ProcessBackend {
    /// A backend with these settings; creates the jobs folder.
    pub fn new(settings: ProcessSettings) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&settings.jobs_dir).with_context(|| {
            format!(
                "cannot create the process jobs folder {}",
                settings.jobs_dir.display()
            )
        })?;
        Ok(Self {
            settings,
            jobs: Arc::default(),
        })
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.settings.jobs_dir.join(id)
    }

    /// The pid of a job's runner while it is alive (its start time checked).
    fn live_pid(&self, id: &str) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir(id).join("pid")).ok()?;
        let (pid, started) = text.trim().split_once(' ')?;
        let pid: u32 = pid.parse().ok()?;
        (start_time(pid)?.as_str() == started && !is_zombie(pid)).then_some(pid)
    }

    /// What the job folder says of a job this process is not waiting for.
    fn state_from_disk(&self, id: &str) -> JobState {
        let dir = self.dir(id);
        if !dir.is_dir() {
            return JobState::Gone;
        }
        let log_tail = Some(tail(&dir.join("log")));
        if let Ok(code) = std::fs::read_to_string(dir.join("exit")) {
            let finished_at = std::fs::metadata(dir.join("exit"))
                .and_then(|m| m.modified())
                .ok()
                .map(DateTime::<Utc>::from);
            return JobState::Exited {
                code: code.trim().parse().ok(),
                log_tail,
                finished_at,
            };
        }
        if self.live_pid(id).is_some() {
            return JobState::Running;
        }
        JobState::Exited {
            code: None,
            log_tail,
            finished_at: None,
        }
    }
}

/// The start time of process `pid` (field 22 of `/proc/<pid>/stat`), to tell it from a later
/// process given the same pid.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split(' ').nth(19).map(str::to_owned)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .unwrap_or(true)
}

fn tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).trim_end().to_owned()
}

fn kill_group(pid: u32) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// Writes `contents` to `path` through a temporary file, so a reader sees all or nothing.
fn write_atomic(path: &Path, contents: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(tmp, path)
}

#[async_trait]
impl Backend for ProcessBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Process
    }

    async fn launch(&self, job: &JobSpec) -> Result<Launched, LaunchError> {
        let id = job.attempt_id.to_string();
        let dir = self.dir(&id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            // A folder means a runner was (or may have been) started for this attempt.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(LaunchError::Ambiguous(anyhow::anyhow!(
                    "{} already exists: a runner was already started for this attempt",
                    dir.display()
                )));
            }
            Err(e) => {
                return Err(LaunchError::Retryable(
                    anyhow::Error::new(e).context(format!("cannot create {}", dir.display())),
                ));
            }
        }
        let log = std::fs::File::create(dir.join("log"))
            .and_then(|log| Ok((log.try_clone()?, log)))
            .map_err(|e| LaunchError::Retryable(e.into()));
        let (out, err) = match log {
            Ok(pair) => pair,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let mut command = tokio::process::Command::new(&self.settings.runner);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&self.settings.env)
            .envs(&job.env)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        if let Some((uid, gid)) = self.settings.run_as {
            command.uid(uid).gid(gid).env("HOME", "/tmp");
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                let e = anyhow::Error::new(e)
                    .context(format!("cannot start {}", self.settings.runner.display()));
                return Err(LaunchError::Permanent(e));
            }
        };
        let pid = child.id().unwrap_or(0);
        let started = start_time(pid).unwrap_or_default();
        if let Err(e) = write_atomic(&dir.join("pid"), &format!("{pid} {started}\n")) {
            tracing::warn!(error = %e, "cannot record the runner's pid");
        }
        lock(&self.jobs).insert(
            id.clone(),
            Entry {
                state: JobState::Running,
                pid: Some(pid),
            },
        );
        let jobs = self.jobs.clone();
        let job_id = id.clone();
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    status
                        .code()
                        .or_else(|| status.signal().map(|s| SIGNAL_BASE + s))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot wait for a runner");
                    None
                }
            };
            // Whatever the runner left in its group goes with it.
            kill_group(pid);
            if let Some(code) = code {
                let _ = write_atomic(&dir.join("exit"), &format!("{code}\n"));
            }
            let state = JobState::Exited {
                code,
                log_tail: Some(tail(&dir.join("log"))),
                finished_at: Some(Utc::now()),
            };
            if let Some(entry) = lock(&jobs).get_mut(&job_id) {
                entry.state = state;
                entry.pid = None;
            }
        });
        Ok(id.into())
    }

    async fn observe(&self, id: &str) -> anyhow::Result<JobState> {
        if let Some(entry) = lock(&self.jobs).get(id) {
            return Ok(entry.state.clone());
        }
        Ok(self.state_from_disk(id))
    }

    async fn find(
        &self,
        attempt_id: AttemptId,
        _validator: &ValidatorConfig,
    ) -> anyhow::Result<Option<String>> {
        let id = attempt_id.to_string();
        Ok(self.dir(&id).is_dir().then_some(id))
    }

    async fn cancel(&self, id: &str) -> anyhow::Result<()> {
        let pid = lock(&self.jobs)
            .get(id)
            .and_then(|e| e.pid)
            .or_else(|| self.live_pid(id));
        if let Some(pid) = pid {
            kill_group(pid);
        }
        Ok(())
    }

    async fn sweep(&self, live: &HashSet<AttemptId>) -> anyhow::Result<usize> {
        let live: HashSet<String> = live.iter().map(ToString::to_string).collect();
        let mut removed = 0;
        let entries = std::fs::read_dir(&self.settings.jobs_dir)
            .with_context(|| format!("cannot list {}", self.settings.jobs_dir.display()))?;
        for entry in entries {
            let entry = entry?;
            let id = entry.file_name().to_string_lossy().into_owned();
            if live.contains(&id) || !entry.path().is_dir() {
                continue;
            }
            if let Some(pid) = lock(&self.jobs)
                .get(&id)
                .and_then(|e| e.pid)
                .or_else(|| self.live_pid(&id))
            {
                kill_group(pid);
            }
            std::fs::remove_dir_all(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
            lock(&self.jobs).remove(&id);
            removed += 1;
        }
        Ok(removed)
    }

    async fn drain(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let running = lock(&self.jobs)
                .values()
                .filter(|e| e.state == JobState::Running)
                .count();
            if running == 0 {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    running,
                    "runners still running at shutdown; they go on and are found again at restart"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
