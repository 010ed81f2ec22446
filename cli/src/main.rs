//! `runway`: the local all-in-one and operator commands.
//!
//! - `runway dev` runs the launcher, dispatcher, mock backend, callback service and local
//!   identity in one process on embedded defaults (a SQLite file and local object storage under
//!   `.runway/`), prints their URLs and runs until Ctrl-C.
//! - `runway migrate` applies the run store's migrations and exits.
//! - `runway submit FILE` creates a run from a model file and follows it to its result;
//!   `runway status|watch|cancel|retry ID` read, follow, cancel or retry a run; `runway runs`
//!   and `runway validators` list them.
//!
//! Exit codes are shared by every command ([`runway_cli::exit`]); every error is one line on
//! stderr.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use runway_cli::bench::{self, BenchArgs};
use runway_cli::client::{self, ClientConfig, Output, RetryArgs, RunsArgs, SubmitArgs};
use runway_cli::dev::DevConfig;
use runway_cli::exit;
use runway_service::config::{CommonConfig, redact};
use runway_service::server;

#[derive(Debug, Parser)]
#[command(
    name = "runway",
    version,
    about = "Launch validation jobs in containers and receive their results."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run launcher, dispatcher, mock backend, callback service and local identity locally.
    Dev {
        #[command(flatten)]
        config: Box<DevConfig>,
    },
    /// Apply the run store's migrations, then exit.
    Migrate {
        #[command(flatten)]
        common: CommonConfig,
    },
    /// Submit a model file and follow the run to its result (`--no-wait`: print its id).
    Submit {
        #[command(flatten)]
        client: ClientConfig,
        #[command(flatten)]
        args: SubmitArgs,
    },
    /// Print a run's state and result.
    Status {
        /// The run id.
        id: String,
        #[command(flatten)]
        client: ClientConfig,
        #[command(flatten)]
        output: Output,
    },
    /// Follow a run until it completes; exit 0 if it passed, 1 if not.
    Watch {
        /// The run id.
        id: String,
        #[command(flatten)]
        client: ClientConfig,
        #[command(flatten)]
        output: Output,
    },
    /// List runs, newest first: id, validator, state, result, created, duration.
    Runs {
        #[command(flatten)]
        client: ClientConfig,
        #[command(flatten)]
        args: RunsArgs,
    },
    /// Run an ended run again as a new run (same validator, inputs and files); print its id.
    Retry {
        #[command(flatten)]
        client: ClientConfig,
        #[command(flatten)]
        args: RetryArgs,
    },
    /// List the launcher's validators.
    Validators {
        #[command(flatten)]
        client: ClientConfig,
        #[command(flatten)]
        output: Output,
    },
    /// Measure throughput and latency of runs through the HTTP API in mock mode.
    Bench {
        #[command(flatten)]
        args: BenchArgs,
    },
    /// Cancel a run.
    Cancel {
        /// The run id.
        id: String,
        #[command(flatten)]
        client: ClientConfig,
        #[command(flatten)]
        output: Output,
    },
    /// Webhook subscriptions and dead deliveries (in the run store the launcher uses).
    Webhook {
        #[command(subcommand)]
        action: WebhookAction,
        #[command(flatten)]
        common: CommonConfig,
    },
    /// Create, list and revoke the launcher's API keys (in the run store it uses).
    ApiKey {
        #[command(subcommand)]
        action: ApiKeyAction,
        #[command(flatten)]
        common: CommonConfig,
    },
}

#[derive(Debug, Subcommand)]
enum WebhookAction {
    /// Subscribe an org's URL to events; the signing secret is printed once.
    Create {
        /// The org whose events are delivered.
        #[arg(long)]
        org: String,
        /// Where they are POSTed (http or https).
        #[arg(long)]
        url: String,
        /// Event types (repeat): `run.started`, `attempt.progress`, `attempt.failed`, `run.completed`; default
        /// `run.completed`.
        #[arg(long = "event", default_value = "run.completed")]
        events: Vec<String>,
    },
    /// List subscriptions (without their secrets).
    List {
        /// Only this org's.
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        output: Output,
    },
    /// Start a secret rotation: a new secret is printed, and deliveries are signed with the new
    /// and the old one until `finish-rotation`.
    Rotate {
        /// The subscription's id.
        id: String,
    },
    /// End a rotation: only the newest secret signs.
    FinishRotation {
        /// The subscription's id.
        id: String,
    },
    /// Stop a subscription.
    Disable {
        /// The subscription's id.
        id: String,
    },
    /// List events whose delivery was given up.
    Dead {
        #[command(flatten)]
        output: Output,
    },
    /// Deliver a dead event again (same webhook-id), its attempts counted from zero.
    Replay {
        /// The event's id (its webhook-id, from `dead`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ApiKeyAction {
    /// Create a key for an org; its secret is printed once, never stored.
    Create {
        /// The org whose runs the key may create and see.
        #[arg(long)]
        org: String,
        /// What the key is for (shown in listings).
        #[arg(long)]
        name: String,
    },
    /// List keys (of one org).
    List {
        /// Only this org's keys.
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        output: Output,
    },
    /// Revoke a key by its id; requests with it are refused from then on.
    Revoke {
        /// The key's id (from `create` or `list`).
        id: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    // Usage errors exit here with clap's own code, 2 (`exit::BAD_INPUT`).
    match run(Cli::parse().command).await {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => exit::report(&e),
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Dev { config } => dev(*config).await,
        Command::Migrate { common } => {
            let _telemetry = common.init_telemetry();
            common.open_store().await?;
            println!("migrated {}", redact(&common.database_url()));
            Ok(())
        }
        Command::Submit { client, args } => client::submit(&client, &args).await.map(drop),
        Command::Status { id, client, output } => client::status(&client, &id, &output).await,
        Command::Watch { id, client, output } => client::watch(&client, &id, &output).await,
        Command::Cancel { id, client, output } => client::cancel(&client, &id, &output).await,
        Command::Runs { client, args } => client::runs(&client, &args).await,
        Command::Retry { client, args } => client::retry(&client, &args).await.map(drop),
        Command::Validators { client, output } => client::validators(&client, &output).await,
        Command::Bench { args } => bench::run(args).await,
        // What these refuse (bad ids, names, URLs) is the caller's input; a store that cannot
        // be opened or fails is the service's fault (its error is in the chain: exit 3).
        Command::ApiKey { action, common } => {
            api_key(action, &common).await.map_err(exit::as_bad_input)
        }
        Command::Webhook { action, common } => {
            webhook(action, &common).await.map_err(exit::as_bad_input)
        }
    }
}

async fn webhook(action: WebhookAction, common: &CommonConfig) -> anyhow::Result<()> {
    use runway_launcher::webhooks;
    let store = common.open_store().await?;
    let subscription_id = |id: &str| -> anyhow::Result<runway_runs::SubscriptionId> {
        id.parse().map_err(|_| {
            anyhow::anyhow!("{id:?} is not a subscription id (see runway webhook list)")
        })
    };
    match action {
        WebhookAction::Create { org, url, events } => {
            let sub = webhooks::subscribe(store.as_ref(), &org, &url, &events).await?;
            eprintln!("created webhook subscription {sub}; its signing secret is shown once:");
            println!("{}", sub.secrets[0]);
        }
        WebhookAction::List { org, output } => {
            let subs = store.list_subscriptions(org.as_deref()).await?;
            if output.json {
                // Never the secrets: only how many sign (two while rotating).
                let list: Vec<serde_json::Value> = subs
                    .iter()
                    .map(|sub| {
                        serde_json::json!({
                            "id": sub.id.to_string(),
                            "org_id": sub.org_id,
                            "url": sub.url,
                            "events": sub.events,
                            "created_at": sub.created_at,
                            "disabled_at": sub.disabled_at,
                            "disabled_reason": sub.disabled_reason,
                            "signing_secrets": sub.secrets.len(),
                        })
                    })
                    .collect();
                client::print_json(&serde_json::Value::from(list));
                return Ok(());
            }
            for sub in subs {
                let state = match (&sub.disabled_at, &sub.disabled_reason) {
                    (Some(at), reason) => format!(
                        "disabled {} ({})",
                        at.to_rfc3339(),
                        reason.as_deref().unwrap_or("")
                    ),
                    (None, _) if sub.secrets.len() > 1 => "active, rotating".to_owned(),
                    (None, _) => "active".to_owned(),
                };
                println!("{sub}  {state}");
            }
        }
        WebhookAction::Rotate { id } => {
            let sub = webhooks::rotate_secret(store.as_ref(), subscription_id(&id)?).await?;
            eprintln!(
                "rotating {sub}: deliveries are signed with the new and the old secret until finish-rotation; the new one:"
            );
            println!("{}", sub.secrets[0]);
        }
        WebhookAction::FinishRotation { id } => {
            let sub = webhooks::finish_rotation(store.as_ref(), subscription_id(&id)?).await?;
            println!("{sub}: signed with its newest secret only");
        }
        WebhookAction::Disable { id } => {
            let sub = store
                .disable_subscription(
                    subscription_id(&id)?,
                    chrono::Utc::now(),
                    "disabled by an operator",
                )
                .await?
                .ok_or_else(|| anyhow::anyhow!("there is no webhook subscription {id}"))?;
            println!("disabled {sub}");
        }
        WebhookAction::Dead { output } => {
            let dead = store.dead_outbox(None, 1000).await?;
            if output.json {
                let list: Vec<serde_json::Value> = dead
                    .iter()
                    .map(|event| {
                        serde_json::json!({
                            "id": event.id.to_string(),
                            "event": event.event,
                            "run_id": event.run_id.to_string(),
                            "deliveries": event.attempts,
                            "created_at": event.created_at,
                            "dead_at": event.dead_at,
                            "last_error": event.last_error,
                            "payload": event.payload,
                        })
                    })
                    .collect();
                client::print_json(&serde_json::Value::from(list));
                return Ok(());
            }
            for event in dead {
                println!(
                    "{}  {}  run {}  {} deliveries  dead {}  {}",
                    event.id,
                    event.event,
                    event.run_id,
                    event.attempts,
                    event.dead_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                    event.last_error.unwrap_or_default()
                );
            }
        }
        WebhookAction::Replay { id } => {
            let event: runway_runs::OutboxId = id.parse().map_err(|_| {
                anyhow::anyhow!("{id:?} is not an event id (see runway webhook dead)")
            })?;
            anyhow::ensure!(
                store.replay_outbox(event, None, chrono::Utc::now()).await?,
                "event {id} is not dead (delivered, still being delivered, or unknown)"
            );
            println!("event {id} will be delivered again");
        }
    }
    Ok(())
}

async fn api_key(action: ApiKeyAction, common: &CommonConfig) -> anyhow::Result<()> {
    let store = common.open_store().await?;
    match action {
        ApiKeyAction::Create { org, name } => {
            let (key, secret) =
                runway_launcher::auth::create_api_key(store.as_ref(), &org, &name).await?;
            eprintln!(
                "created API key {} for org {} ({}); the key is shown once, store it now:",
                key.id, key.org_id, key.name
            );
            println!("{secret}");
        }
        ApiKeyAction::List { org, output } => {
            let keys = store.list_api_keys(org.as_deref()).await?;
            if output.json {
                // Only what identifies a key; its secret is not stored at all.
                let list: Vec<serde_json::Value> = keys
                    .iter()
                    .map(|key| {
                        serde_json::json!({
                            "id": key.id.to_string(),
                            "prefix": key.prefix,
                            "org_id": key.org_id,
                            "name": key.name,
                            "created_at": key.created_at,
                            "revoked_at": key.revoked_at,
                        })
                    })
                    .collect();
                client::print_json(&serde_json::Value::from(list));
                return Ok(());
            }
            for key in keys {
                let state = key.revoked_at.map_or("active".to_owned(), |at| {
                    format!("revoked {}", at.to_rfc3339())
                });
                println!(
                    "{}  {}…  org {}  {}  created {}  {state}",
                    key.id,
                    key.prefix,
                    key.org_id,
                    key.name,
                    key.created_at.to_rfc3339()
                );
            }
        }
        ApiKeyAction::Revoke { id } => {
            let parsed = id.parse().map_err(|_| {
                anyhow::anyhow!("{id:?} is not an API key id (see runway api-key list)")
            })?;
            let key = store
                .revoke_api_key(parsed, chrono::Utc::now())
                .await?
                .ok_or_else(|| anyhow::anyhow!("there is no API key {id}"))?;
            println!(
                "revoked API key {} ({}, org {}) at {}",
                key.id,
                key.name,
                key.org_id,
                key.revoked_at.map(|t| t.to_rfc3339()).unwrap_or_default()
            );
        }
    }
    Ok(())
}

async fn dev(config: DevConfig) -> anyhow::Result<()> {
    // Dropped last, so that the spans of the whole shutdown are exported.
    let _telemetry = config.common.init_telemetry();
    let database = redact(&config.common.database_url());
    let storage = config.common.storage_uri()?;
    let running = runway_cli::dev::start(config).await?;
    // A closed stdout (`runway dev | head`) must not take the servers down: ignore write errors.
    let banner = format!(
        "Runway is running (Ctrl-C to stop)\n  launcher:  {}\n  callback:  {}\n  identity:  {}\n  run store: {database}\n  storage:   {storage}\n  api:       open (a local mode: no credentials are asked for)\n",
        running.launcher_url, running.callback_url, running.identity_url,
    );
    let mut stdout = std::io::stdout();
    let _ = stdout
        .write_all(banner.as_bytes())
        .and_then(|()| stdout.flush());
    server::shutdown_signal().await;
    running.shutdown().await
}
