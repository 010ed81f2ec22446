//! The Docker backend: one hardened container of the validator's image per attempt, through
//! the Docker Engine API (bollard, version negotiated with the engine).
//!
//! Every container runs as the job user (uid 1000, as in Validibot's images) with all
//! capabilities dropped, `no-new-privileges`, a read-only root file system with a tmpfs at
//! `/scratch` (the runner's working directory and `TMPDIR`; not `/tmp`, where the attempt's
//! files may be mounted), and the validator's CPU, memory and pids limits;
//! it carries the run, attempt, validator and deadline as labels. With `file://` storage only
//! the attempt's own files are mounted, at the paths their URIs name: each input and resource
//! file read-only, the attempt's folder (handed to the job user by the dispatcher) writable.
//!
//! Two network modes, per validator:
//! - **connected**: the container is on a network where the callback service, the local
//!   identity (its metadata server) and storage are reachable; it calls back itself;
//! - **sealed** (`network: none`, for untrusted models): nothing is reachable; the envelope
//!   asks for no callback, and the reconciler salvages the output when the container exits.
//!
//! A finished container is removed once its exit code and log tail are read (kept in memory
//! for the reconciler); cancel kills it; `sweep` removes labelled containers of attempts no
//! longer active (at start-up: what a previous launcher left).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, ContainerStateStatusEnum, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use runway_runs::{AttemptId, BackendKind};

use super::{Backend, JobSpec, JobState, LaunchError, Launched, labels};
use crate::registry::{Network, ValidatorConfig};

/// Lines of a container's log kept as its log tail.
const LOG_TAIL_LINES: &str = "50";
/// The label naming the deployment a container belongs to.
pub const SCOPE_LABEL: &str = "runway.scope";
/// The container's writable scratch space (a tmpfs).
const SCRATCH: &str = "/scratch";
/// Longest a single Docker API call may take before a launch is called ambiguous.
const API_TIMEOUT: Duration = Duration::from_secs(60);

/// How the Docker backend starts containers.
#[derive(Debug, Clone)]
pub struct DockerSettings {
    /// The network connected containers join (a user-defined bridge where the services are
    /// reachable; `bridge` by default).
    pub network: String,
    /// `uid:gid` containers run as.
    pub user: String,
    /// Variables every container gets besides the job's own (storage options).
    pub env: BTreeMap<String, String>,
    /// The `runway.scope` label of this launcher's containers: sweeping touches only its own
    /// (several Runway deployments, or test systems, may share one engine).
    pub scope: String,
}

impl Default for DockerSettings {
    fn default() -> Self {
        Self {
            network: "bridge".to_owned(),
            user: "1000:1000".to_owned(),
            env: BTreeMap::new(),
            scope: "default".to_owned(),
        }
    }
}

/// Runs each attempt as a Docker container.
#[derive(Debug)]
pub struct DockerBackend {
    docker: Docker,
    settings: DockerSettings,
    /// Containers already read after they ended (and removed).
    ended: Ended,
}

type Ended = Arc<Mutex<HashMap<String, (AttemptId, JobState)>>>;

/// Reads an ended container's exit code, end time and log tail into `ended`, then removes
/// the container.
async fn collect(
    docker: &Docker,
    ended: &Ended,
    id: &str,
    attempt: AttemptId,
    code: Option<i64>,
    finished: Option<String>,
) -> JobState {
    let options = LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .tail(LOG_TAIL_LINES)
        .build();
    let mut logs = docker.logs(id, Some(options));
    let mut tail = String::new();
    while let Some(Ok(chunk)) = logs.next().await {
        tail.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
    }
    let state = JobState::Exited {
        code: code.and_then(|c| i32::try_from(c).ok()),
        log_tail: Some(tail.trim_end().to_owned()),
        finished_at: finished
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc)),
    };
    ended
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id.to_owned(), (attempt, state.clone()));
    let remove = RemoveContainerOptionsBuilder::new().force(true).build();
    if let Err(e) = docker.remove_container(id, Some(remove)).await
        && status_of(&e) != Some(404)
    {
        tracing::warn!(container = id, error = %e, "cannot remove a finished container");
    }
    state
}

/// Waits for a container this launcher started to end, then collects and removes it.
async fn watch(docker: Docker, ended: Ended, id: String, attempt: AttemptId) {
    let mut wait =
        docker.wait_container(&id, None::<bollard::query_parameters::WaitContainerOptions>);
    // A non-zero exit arrives as an error carrying the code; the state is read below anyway.
    let _ = wait.next().await;
    match docker.inspect_container(&id, None).await {
        Ok(inspected) => {
            let state = inspected.state.unwrap_or_default();
            if matches!(
                state.status,
                Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD)
            ) {
                collect(
                    &docker,
                    &ended,
                    &id,
                    attempt,
                    state.exit_code,
                    state.finished_at,
                )
                .await;
            }
        }
        Err(e) => {
            tracing::debug!(container = id, error = %e, "the container went before it was read")
        }
    }
}

fn status_of(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

impl DockerBackend {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket) and negotiates the
    /// API version.
    pub async fn connect(settings: DockerSettings) -> anyhow::Result<Self> {
        let docker = Docker::connect_with_local_defaults()
            .context("cannot connect to the Docker engine")?
            .negotiate_version()
            .await
            .context(
                "the Docker engine does not answer (is it running, and is its socket readable?)",
            )?;
        Ok(Self {
            docker,
            settings,
            ended: Arc::default(),
        })
    }

    /// The Docker client (tests inspect containers with it).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    fn ended(&self) -> std::sync::MutexGuard<'_, HashMap<String, (AttemptId, JobState)>> {
        self.ended.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The container's spec for `job`.
    fn body(
        &self,
        job: &JobSpec,
        image: &str,
        network: Network,
    ) -> anyhow::Result<ContainerCreateBody> {
        let mut env: BTreeMap<String, String> = self.settings.env.clone();
        env.extend(job.env.clone());
        env.insert("TMPDIR".to_owned(), SCRATCH.to_owned());
        env.insert("RUNWAY_WORK_DIR".to_owned(), SCRATCH.to_owned());
        env.insert("HOME".to_owned(), SCRATCH.to_owned());
        let mut binds = Vec::new();
        let context = &job.envelope.context;
        let host_path = |uri: &str| uri.strip_prefix("file://").map(str::to_owned);
        if let Some(folder) = host_path(context.execution_bundle_uri.as_str()) {
            binds.push(format!("{folder}:{folder}:rw"));
            let files = job
                .envelope
                .input_files
                .iter()
                .map(|f| f.uri.as_str())
                .chain(job.envelope.resource_files.iter().map(|f| f.uri.as_str()));
            for uri in files {
                let path = host_path(uri)
                    .with_context(|| format!("{uri} is not in the attempt's file:// storage"))?;
                anyhow::ensure!(
                    Path::new(&path).is_absolute() && !path.contains(':'),
                    "{path} cannot be mounted"
                );
                binds.push(format!("{path}:{path}:ro"));
            }
        }
        let limits = job.limits;
        let memory = i64::from(limits.memory_mb) * 1024 * 1024;
        let host_config = HostConfig {
            binds: Some(binds),
            network_mode: Some(match network {
                Network::Connected => self.settings.network.clone(),
                Network::Sealed => "none".to_owned(),
            }),
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
            readonly_rootfs: Some(true),
            // exec: an FMU's shared library is extracted there and loaded (Docker's tmpfs is
            // noexec by default).
            tmpfs: Some(HashMap::from([(
                SCRATCH.to_owned(),
                format!("rw,exec,nosuid,nodev,size={}m,mode=1777", limits.memory_mb),
            )])),
            pids_limit: Some(i64::from(limits.pids)),
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some((limits.cpus * 1e9) as i64),
            init: Some(true),
            ..Default::default()
        };
        Ok(ContainerCreateBody {
            image: Some(image.to_owned()),
            user: Some(self.settings.user.clone()),
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            cmd: Some(vec![
                job.env
                    .get(super::ENV_INPUT_URI)
                    .cloned()
                    .unwrap_or_default(),
            ]),
            labels: Some(
                job.labels
                    .clone()
                    .into_iter()
                    .chain([(SCOPE_LABEL.to_owned(), self.settings.scope.clone())])
                    .collect(),
            ),
            // Not the tmpfs: a working directory there is re-created 0755 root-owned over it.
            working_dir: Some("/".to_owned()),
            network_disabled: Some(network == Network::Sealed),
            host_config: Some(host_config),
            ..Default::default()
        })
    }

    async fn collect(
        &self,
        id: &str,
        attempt: AttemptId,
        code: Option<i64>,
        finished: Option<String>,
    ) -> JobState {
        collect(&self.docker, &self.ended, id, attempt, code, finished).await
    }

    /// Labelled containers (all states), as (id, attempt).
    async fn labelled(&self, attempt: Option<AttemptId>) -> anyhow::Result<Vec<(String, String)>> {
        let filter = match attempt {
            Some(a) => format!("{}={a}", labels::ATTEMPT),
            None => labels::ATTEMPT.to_owned(),
        };
        let scope = format!("{SCOPE_LABEL}={}", self.settings.scope);
        let filters = HashMap::from([("label", vec![filter, scope])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .context("cannot list containers")?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let attempt = c.labels.as_ref()?.get(labels::ATTEMPT)?.clone();
                Some((c.id?, attempt))
            })
            .collect())
    }
}

#[async_trait]
impl Backend for DockerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Docker
    }

    async fn launch(&self, job: &JobSpec) -> Result<Launched, LaunchError> {
        let image = job.image.clone().ok_or_else(|| {
            LaunchError::Permanent(anyhow::anyhow!(
                "validator {} has no image for the Docker backend",
                job.validator_id
            ))
        })?;
        let body = self
            .body(job, &image, job.network)
            .map_err(LaunchError::Permanent)?;
        let name = format!("runway-{}", job.attempt_id);
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = tokio::time::timeout(
            API_TIMEOUT,
            self.docker.create_container(Some(options), body),
        )
        .await;
        let id = match created {
            Err(_) => {
                return Err(LaunchError::Ambiguous(anyhow::anyhow!(
                    "creating the container timed out after {} s",
                    API_TIMEOUT.as_secs()
                )));
            }
            Ok(Ok(created)) => created.id,
            // A container of this name: a launch of this attempt got that far before.
            Ok(Err(e)) if status_of(&e) == Some(409) => {
                return Err(LaunchError::Ambiguous(anyhow::anyhow!(
                    "container {name} already exists: {e}"
                )));
            }
            Ok(Err(e)) if status_of(&e) == Some(404) => {
                return Err(LaunchError::Permanent(anyhow::anyhow!(
                    "image {image} is not on this Docker engine: {e}"
                )));
            }
            Ok(Err(e)) if status_of(&e).is_some_and(|s| (400..500).contains(&s)) => {
                return Err(LaunchError::Permanent(
                    anyhow::Error::new(e).context("the engine refused the container"),
                ));
            }
            Ok(Err(e)) => {
                return Err(LaunchError::Retryable(
                    anyhow::Error::new(e).context("cannot create the container"),
                ));
            }
        };
        match tokio::time::timeout(API_TIMEOUT, self.docker.start_container(&id, None)).await {
            Ok(Ok(())) => {
                tokio::spawn(watch(
                    self.docker.clone(),
                    self.ended.clone(),
                    id.clone(),
                    job.attempt_id,
                ));
                // The local image id the container runs (what a tag named at launch time was),
                // for the record; the job is started whether or not the engine tells.
                let image =
                    tokio::time::timeout(API_TIMEOUT, self.docker.inspect_container(&id, None))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .and_then(|inspected| inspected.image);
                Ok(Launched { id, image })
            }
            Err(_) => Err(LaunchError::Ambiguous(anyhow::anyhow!(
                "starting container {id} timed out"
            ))),
            Ok(Err(e)) => {
                let remove = RemoveContainerOptionsBuilder::new().force(true).build();
                let _ = self.docker.remove_container(&id, Some(remove)).await;
                Err(LaunchError::Retryable(
                    anyhow::Error::new(e).context("the container did not start"),
                ))
            }
        }
    }

    async fn observe(&self, id: &str) -> anyhow::Result<JobState> {
        if let Some((_, state)) = self.ended().get(id) {
            return Ok(state.clone());
        }
        let inspected = match self.docker.inspect_container(id, None).await {
            Ok(i) => i,
            Err(e) if status_of(&e) == Some(404) => return Ok(JobState::Gone),
            Err(e) => return Err(anyhow::Error::new(e).context("cannot inspect the container")),
        };
        let attempt = inspected
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(labels::ATTEMPT))
            .and_then(|a| a.parse().ok());
        let state = inspected.state.unwrap_or_default();
        Ok(match state.status {
            Some(ContainerStateStatusEnum::CREATED) => JobState::Pending,
            Some(
                ContainerStateStatusEnum::RUNNING
                | ContainerStateStatusEnum::PAUSED
                | ContainerStateStatusEnum::RESTARTING
                | ContainerStateStatusEnum::STOPPING,
            ) => JobState::Running,
            Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD) => {
                match attempt {
                    Some(attempt) => {
                        self.collect(id, attempt, state.exit_code, state.finished_at)
                            .await
                    }
                    None => JobState::Exited {
                        code: state.exit_code.and_then(|c| i32::try_from(c).ok()),
                        log_tail: None,
                        finished_at: None,
                    },
                }
            }
            _ => JobState::Gone,
        })
    }

    async fn find(
        &self,
        attempt_id: AttemptId,
        _validator: &ValidatorConfig,
    ) -> anyhow::Result<Option<String>> {
        if let Some((id, _)) = self.ended().iter().find(|(_, (a, _))| *a == attempt_id) {
            return Ok(Some(id.clone()));
        }
        Ok(self
            .labelled(Some(attempt_id))
            .await?
            .into_iter()
            .next()
            .map(|(id, _)| id))
    }

    async fn cancel(&self, id: &str) -> anyhow::Result<()> {
        let kill = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
        match self.docker.kill_container(id, Some(kill)).await {
            Ok(()) => Ok(()),
            // Gone, or not running any more.
            Err(e) if matches!(status_of(&e), Some(404 | 409)) => Ok(()),
            Err(e) => Err(anyhow::Error::new(e).context("cannot kill the container")),
        }
    }

    async fn sweep(&self, live: &HashSet<AttemptId>) -> anyhow::Result<usize> {
        let mut removed = 0;
        for (id, attempt) in self.labelled(None).await? {
            if attempt.parse().is_ok_and(|a| live.contains(&a)) {
                continue;
            }
            let remove = RemoveContainerOptionsBuilder::new().force(true).build();
            match self.docker.remove_container(&id, Some(remove)).await {
                Ok(()) => removed += 1,
                Err(e) if status_of(&e) == Some(404) => {}
                Err(e) => {
                    return Err(
                        anyhow::Error::new(e).context("cannot remove an orphaned container")
                    );
                }
            }
        }
        self.ended()
            .retain(|_, (attempt, _)| live.contains(attempt));
        Ok(removed)
    }

    async fn drain(&self, _timeout: Duration) {
        // Containers run on their own and are found again by a restarted launcher.
    }
}
