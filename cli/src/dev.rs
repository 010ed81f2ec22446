//! The local all-in-one: launcher, dispatcher, reconciler, backends, callback service and local
//! identity in one process on embedded defaults. `runway dev` runs it until Ctrl-C; end-to-end
//! tests start it on port 0 against SQLite or PostgreSQL.
//!
//! The local identity is a metadata-server look-alike, so jobs fetch their ID token exactly as
//! on Cloud Run (`GCE_METADATA_HOST`), and the callback service verifies it exactly as it
//! verifies Google's: the only difference is the trusted issuer.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use runway_identity::{TokenVerifier, TrustedIssuer, VerifierConfig, metadata_router};
use runway_launcher::config::{LauncherArgs, WorkerArgs};
use runway_launcher::local::{self, LocalArgs};
use runway_launcher::workers::{RunningWorkers, WorkerConfig, Workers};
use runway_service::config::CommonConfig;
use runway_service::health::Dependencies;
use runway_service::server;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Settings of the all-in-one.
#[derive(Debug, Clone, clap::Args)]
pub struct DevConfig {
    /// Launcher address.
    #[arg(long, env = "RUNWAY_LAUNCHER_ADDR", default_value = "127.0.0.1:8080")]
    pub launcher_listen: SocketAddr,
    /// Callback service address.
    #[arg(long, env = "RUNWAY_CALLBACK_ADDR", default_value = "127.0.0.1:8081")]
    pub callback_listen: SocketAddr,
    /// The callback URL written into envelopes, when jobs reach the callback service another
    /// way than at its address (a proxy, a container network); ID tokens are then asked for
    /// and checked with its origin as the audience. Default: `http://<callback address>/v1/callbacks`.
    #[arg(long, env = "RUNWAY_JOB_CALLBACK_URL")]
    pub job_callback_url: Option<String>,
    /// Where to write, on shutdown, the round trips of the mock jobs' callbacks (a JSON array
    /// of microseconds; `runway bench` reads it).
    #[arg(long, hide = true)]
    pub callback_times_file: Option<std::path::PathBuf>,
    /// Local identity and mock backend settings.
    #[command(flatten)]
    pub local: LocalArgs,
    /// Dispatcher and reconciler settings.
    #[command(flatten)]
    pub workers: WorkerArgs,
    /// Validators and the callback nonce key.
    #[command(flatten)]
    pub launcher: LauncherArgs,
    /// How long callback receipts are kept.
    #[command(flatten)]
    pub retention: runway_callback::config::RetentionArgs,
    /// Run store, object storage and logging.
    #[command(flatten)]
    pub common: CommonConfig,
}

impl DevConfig {
    /// Every service on a free 127.0.0.1 port, state under `data_dir`, everything else as the
    /// command line defaults it (tests and `runway bench` start from this).
    pub fn on_free_ports(data_dir: &std::path::Path) -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Args {
            #[command(flatten)]
            config: DevConfig,
        }
        let data_dir = data_dir.to_string_lossy();
        Args::parse_from([
            "runway-dev",
            "--launcher-listen",
            "127.0.0.1:0",
            "--callback-listen",
            "127.0.0.1:0",
            "--identity-listen",
            "127.0.0.1:0",
            "--data-dir",
            &data_dir,
        ])
        .config
    }
}

/// The all-in-one, running.
#[derive(Debug)]
pub struct Running {
    /// Launcher base URL.
    pub launcher_url: String,
    /// Callback service base URL.
    pub callback_url: String,
    /// Local identity base URL.
    pub identity_url: String,
    /// The run store (for tests' assertions).
    pub deps: Dependencies,
    /// The workers as built (tests read the mock backend's counters and the reconciler).
    pub workers: Arc<Workers>,
    callback_times_file: Option<std::path::PathBuf>,
    stop_http: CancellationToken,
    running: RunningWorkers,
    servers: Vec<JoinHandle<std::io::Result<()>>>,
}

/// Starts everything; returns once all listeners are bound.
pub async fn start(config: DevConfig) -> anyhow::Result<Running> {
    let common = &config.common;
    let deps = Dependencies {
        store: common.open_store().await?,
        storage: common.open_storage().await?,
    };
    let registry = config.launcher.registry()?;
    std::fs::create_dir_all(&common.data_dir)
        .with_context(|| format!("cannot create {}", common.data_dir.display()))?;
    let nonce_key = config.launcher.nonce_key(common)?;

    let bind = |addr: SocketAddr, what: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for the {what}"))
    };
    let identity = bind(config.local.identity_listen, "local identity").await?;
    let callback = bind(config.callback_listen, "callback service").await?;
    let launcher = bind(config.launcher_listen, "launcher").await?;
    let identity_addr = identity.local_addr()?;
    let identity_url = format!("http://{identity_addr}");
    let callback_url = format!("http://{}", callback.local_addr()?);
    let launcher_url = format!("http://{}", launcher.local_addr()?);

    let envelope_callback_url = runway_launcher::config::parse_callback_url(
        config
            .job_callback_url
            .as_deref()
            .unwrap_or(&format!("{callback_url}/v1/callbacks")),
    )
    .map_err(anyhow::Error::msg)?;
    let issuer = local::local_issuer(&common.data_dir, &identity_url)?;
    let verifier = Arc::new(TokenVerifier::new(VerifierConfig {
        trusted_issuers: vec![TrustedIssuer {
            issuer: issuer.issuer().to_owned(),
            jwks_uri: issuer.jwks_uri(),
        }],
        audience: envelope_callback_url.origin(),
        allowed_emails: vec![issuer.email().to_owned()],
    })?);

    let state = runway_launcher::AppState::new(
        deps.clone(),
        registry,
        nonce_key.clone(),
        envelope_callback_url,
    );
    let workers = Arc::new(
        Workers::build(
            &state,
            &WorkerConfig {
                metadata_host: identity_addr.to_string(),
                workers: config.workers.clone(),
                local: config.local.clone(),
                data_dir: common.data_dir.clone(),
                gcs: common.gcs_options(),
                cloud_run: Default::default(),
                webhooks: Default::default(),
                attempt_tokens: None,
            },
            config.workers.reconcile(),
        )
        .await?,
    );

    let stop_http = CancellationToken::new();
    let serve = |listener, app| {
        tokio::spawn(server::serve(
            listener,
            app,
            stop_http.clone().cancelled_owned(),
        ))
    };
    let mut servers = vec![
        serve(identity, metadata_router(issuer)),
        serve(
            callback,
            runway_callback::router(runway_callback::AppState {
                deps: deps.clone(),
                verifier,
                attempt_tokens: None,
                metrics: Default::default(),
            }),
        ),
        serve(launcher, runway_launcher::router(state)),
    ];
    servers.push(tokio::spawn({
        let (store, retention, stop) = (
            deps.store.clone(),
            config.retention.retention(),
            stop_http.clone(),
        );
        async move {
            runway_callback::receipts::purge_until_stopped(store, retention, stop).await;
            Ok(())
        }
    }));
    let running = workers.start().await?;
    Ok(Running {
        launcher_url,
        callback_url,
        identity_url,
        deps,
        workers,
        callback_times_file: config.callback_times_file.clone(),
        stop_http,
        running,
        servers,
    })
}

impl Running {
    /// Stops in the order that loses nothing: no new dispatches (in-flight ones finish), jobs
    /// finish and call back, then the servers stop (in-flight requests finish).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.running.shutdown().await?;
        self.stop_http.cancel();
        for server in self.servers {
            server.await.context("server task")??;
        }
        if let Some(path) = &self.callback_times_file {
            let micros = self
                .workers
                .mock
                .as_ref()
                .map(|mock| mock.callback_times().micros())
                .unwrap_or_default();
            std::fs::write(path, serde_json::to_vec(&micros)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }
}
