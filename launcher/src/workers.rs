//! The launcher's background work, built once at start-up: every backend the registry names,
//! the dispatcher feeding them and the reconciler watching them. `runway-launcher` and
//! `runway dev` both start it here, and stop it in the order that loses nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::backends::cloud_run::CloudRunBackend;
use crate::backends::docker::{DockerBackend, DockerSettings};
use crate::backends::mock::{MockBackend, MockSettings};
use crate::backends::process::{ProcessBackend, ProcessSettings};
use crate::backends::{
    Backend, Backends, ENV_DEPLOYMENT_TARGET, ENV_METADATA_HOST, ENV_METADATA_IP,
};
use crate::config::WorkerArgs;
use crate::dispatch::{DispatchSettings, Dispatcher, DispatcherParts};
use crate::local::LocalArgs;
use crate::reconcile::{ReconcileSettings, Reconciler, ReconcilerParts};
use crate::registry::BackendKind;

/// How long shutdown waits for dispatches and jobs in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What the workers need to know about the services around them.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The local identity (metadata server) as jobs reach it, `host:port`.
    pub metadata_host: String,
    /// Dispatcher and reconciler settings.
    pub workers: WorkerArgs,
    /// Mock and process backend settings.
    pub local: LocalArgs,
    /// The data directory (the process backend keeps its job folders there).
    pub data_dir: std::path::PathBuf,
    /// How jobs on this machine reach GCS, when storage is `gs://`.
    pub gcs: runway_storage::GcsOptions,
    /// How the Cloud Run backend reaches the Admin API.
    pub cloud_run: crate::config::CloudRunArgs,
    /// How webhooks are delivered.
    pub webhooks: crate::webhooks::DeliverySettings,
    /// Mints attempt-scoped GCS tokens for Cloud Run jobs; `None` when they are off.
    pub attempt_tokens: Option<Arc<runway_storage::capability::Minter>>,
}

/// How a job on this machine reaches GCS, as the runner reads it.
fn storage_env(gcs: &runway_storage::GcsOptions) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if let Some(endpoint) = &gcs.endpoint {
        env.insert("RUNWAY_GCS_ENDPOINT".to_owned(), endpoint.clone());
    }
    if gcs.anonymous {
        env.insert("RUNWAY_GCS_ANONYMOUS".to_owned(), "true".to_owned());
    }
    env
}

/// The backends, the dispatcher and the reconciler, built and not yet running.
#[derive(Debug)]
pub struct Workers {
    /// Every backend the registry names.
    pub backends: Backends,
    /// The dispatcher.
    pub dispatcher: Arc<Dispatcher>,
    /// The reconciler.
    pub reconciler: Arc<Reconciler>,
    /// The webhook deliverer.
    pub deliverer: Arc<crate::webhooks::Deliverer>,
    /// The mock backend, when a validator uses it (tests read its counters).
    pub mock: Option<Arc<MockBackend>>,
    /// Where wake-ups from other replicas come from, and whom they wake.
    store: Arc<dyn runway_runs::RunStore>,
    wake: Arc<tokio::sync::Notify>,
    events: Arc<tokio::sync::Notify>,
}

impl Workers {
    /// Builds every backend the registry names (refusing, with a sentence, one that cannot be
    /// built here), the dispatcher and the reconciler.
    pub async fn build(
        state: &AppState,
        config: &WorkerConfig,
        reconcile: ReconcileSettings,
    ) -> anyhow::Result<Self> {
        let mut built: Vec<Arc<dyn Backend>> = Vec::new();
        let mut mock = None;
        let mut kinds: Vec<BackendKind> = state.registry.iter().map(|v| v.backend).collect();
        kinds.sort_by_key(|k| k.as_str());
        kinds.dedup();
        for kind in kinds {
            match kind {
                BackendKind::Mock => {
                    let backend = Arc::new(MockBackend::new(
                        state.deps.storage.clone(),
                        MockSettings {
                            delay: Duration::from_millis(config.local.mock_delay_ms),
                            metadata_host: config.metadata_host.clone(),
                        },
                        state.clock.clone(),
                    )?);
                    mock = Some(backend.clone());
                    built.push(backend);
                }
                BackendKind::Docker => {
                    built.push(Arc::new(
                        DockerBackend::connect(DockerSettings {
                            network: config.local.docker_network.clone(),
                            user: format!("{0}:{0}", config.local.job_uid),
                            env: storage_env(&config.gcs),
                            scope: config.local.docker_scope.clone(),
                        })
                        .await?,
                    ));
                }
                BackendKind::Process => {
                    let mut env = storage_env(&config.gcs);
                    if let Some(exe) = &config.local.energyplus {
                        env.insert("RUNWAY_ENERGYPLUS".to_owned(), exe.display().to_string());
                    }
                    if let Some(python) = &config.local.fmu_python {
                        env.insert("RUNWAY_FMU_PYTHON".to_owned(), python.display().to_string());
                    }
                    built.push(Arc::new(ProcessBackend::new(ProcessSettings {
                        runner: config
                            .local
                            .process_runner
                            .clone()
                            .unwrap_or_else(ProcessSettings::default_runner),
                        jobs_dir: config.data_dir.join("process-jobs"),
                        env,
                        run_as: config
                            .local
                            .job_owner()
                            .filter(|_| config.local.process_as_job_user),
                    })?));
                }
                BackendKind::CloudRun => {
                    built.push(Arc::new(
                        CloudRunBackend::new(config.cloud_run.settings(&state.registry))
                            .await?
                            .with_metrics(state.metrics.clone()),
                    ));
                }
            }
        }
        let backends = Backends::new(&state.registry, built)?;
        for backend in backends.iter() {
            let validators: Vec<&crate::registry::ValidatorConfig> = state
                .registry
                .iter()
                .filter(|v| v.backend == backend.kind())
                .collect();
            backend.check(&validators).await?;
        }
        let dispatcher = Arc::new(Dispatcher::new(
            DispatcherParts {
                store: state.deps.store.clone(),
                storage: state.deps.storage.clone(),
                registry: state.registry.clone(),
                backends: backends.clone(),
                nonce_key: state.nonce_key.clone(),
                wake: state.wake.clone(),
                clock: state.clock.clone(),
                metrics: state.metrics.clone(),
            },
            DispatchSettings {
                callback_url: state.callback_url.clone(),
                max_in_flight: config.workers.max_in_flight,
                poll_interval: Duration::from_millis(config.workers.dispatch_poll_ms.max(1)),
                drain_timeout: DRAIN_TIMEOUT,
                // Images that call back the production way (Validibot's) do so against the
                // local identity.
                job_env: BTreeMap::from([
                    (ENV_METADATA_HOST.to_owned(), config.metadata_host.clone()),
                    (ENV_METADATA_IP.to_owned(), config.metadata_host.clone()),
                    (ENV_DEPLOYMENT_TARGET.to_owned(), "gcp".to_owned()),
                ]),
                job_owner: config.local.job_owner(),
                attempt_tokens: config.attempt_tokens.clone(),
            },
        ));
        let reconciler = Arc::new(Reconciler::new(
            ReconcilerParts {
                store: state.deps.store.clone(),
                storage: state.deps.storage.clone(),
                registry: state.registry.clone(),
                backends: backends.clone(),
                clock: state.clock.clone(),
                metrics: state.metrics.clone(),
            },
            reconcile,
        ));
        // The first reconciler built for this state is the one its dashboard shows.
        let _ = state.reconciler.set(reconciler.clone());
        let deliverer = Arc::new(
            crate::webhooks::Deliverer::new(
                state.deps.store.clone(),
                state.clock.clone(),
                config.webhooks.clone(),
            )?
            .with_metrics(state.metrics.clone()),
        );
        Ok(Self {
            backends,
            dispatcher,
            reconciler,
            deliverer,
            mock,
            store: state.deps.store.clone(),
            wake: state.wake.clone(),
            events: state.events.clone(),
        })
    }

    /// Sweeps jobs of no active attempt (left by an earlier process), then starts the
    /// dispatcher and the reconciler. A sweep that fails (the database restarting) does not
    /// stop the start: the reconciler sweeps again every `sweep_every` passes.
    pub async fn start(&self) -> anyhow::Result<RunningWorkers> {
        if let Err(e) = self.reconciler.sweep().await {
            tracing::warn!(
                error = %format!("{e:#}"),
                "the start-up sweep of orphaned jobs failed; the reconciler sweeps again later"
            );
        }
        let stop_dispatch = CancellationToken::new();
        let stop_reconcile = CancellationToken::new();
        Ok(RunningWorkers {
            listener: tokio::spawn(forward_wakeups(
                self.store.clone(),
                self.wake.clone(),
                self.events.clone(),
            )),
            deliverer: tokio::spawn(
                self.deliverer
                    .clone()
                    .run_until_stopped(stop_reconcile.clone()),
            ),
            dispatcher: tokio::spawn(
                self.dispatcher
                    .clone()
                    .run_until_stopped(stop_dispatch.clone()),
            ),
            reconciler: tokio::spawn(
                self.reconciler
                    .clone()
                    .run_until_stopped(stop_reconcile.clone()),
            ),
            stop_dispatch,
            stop_reconcile,
            backends: self.backends.clone(),
        })
    }
}

/// The dispatcher and the reconciler, running.
#[derive(Debug)]
pub struct RunningWorkers {
    listener: JoinHandle<()>,
    deliverer: JoinHandle<()>,
    dispatcher: JoinHandle<()>,
    reconciler: JoinHandle<()>,
    stop_dispatch: CancellationToken,
    stop_reconcile: CancellationToken,
    backends: Backends,
}

impl RunningWorkers {
    /// Stops in the order that loses nothing: no new dispatches (in-flight ones finish), jobs
    /// finish and call back, then the reconciler stops. The HTTP servers (the callback service
    /// above all) must still be up while this runs.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop_dispatch.cancel();
        self.dispatcher.await.context("dispatcher task")?;
        for backend in self.backends.iter() {
            backend.drain(DRAIN_TIMEOUT).await;
        }
        self.stop_reconcile.cancel();
        self.reconciler.await.context("reconciler task")?;
        self.deliverer.await.context("webhook deliverer task")?;
        self.listener.abort();
        Ok(())
    }
}

/// Turns the store's wake-ups (other replicas' new attempts and events, on PostgreSQL) into
/// this process's: the dispatcher's and the event streams'. Listening is retried until it
/// works; a store without wake-ups (SQLite) leaves everyone to their polling.
async fn forward_wakeups(
    store: Arc<dyn runway_runs::RunStore>,
    wake: Arc<tokio::sync::Notify>,
    events: Arc<tokio::sync::Notify>,
) {
    use futures::StreamExt;
    loop {
        match store.listen().await {
            Ok(Some(mut wakes)) => {
                while let Some(w) = wakes.next().await {
                    match w {
                        runway_runs::Wake::Due => wake.notify_one(),
                        runway_runs::Wake::Events => events.notify_waiters(),
                    }
                }
            }
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for wake-ups yet; polling meanwhile");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
