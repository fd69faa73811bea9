//! `pipewright-operator`: runs the EventConsumer and Outbox controllers while it holds the
//! leader Lease, serves `/metrics`, `/healthz` and `/readyz`, and shuts down gracefully on
//! SIGTERM/SIGINT (running reconciles finish, the Lease is released). Exit codes: 0 after a
//! graceful shutdown, 1 when leadership was lost or the operator could not start.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kube::runtime::events::Reporter;
use pipewright_crds::{EventConsumer, Outbox};
use pipewright_operator::context::{Context, Settings};
use pipewright_operator::error::Chain;
use pipewright_operator::leader::{self, LeaseSettings};
use pipewright_operator::metrics::Metrics;
use pipewright_operator::{MANAGER, controller, http, telemetry};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// pipewright's operator.
#[derive(Debug, Parser)]
#[command(name = "pipewright-operator", version, about)]
struct Cli {
    /// Address of /metrics.
    #[arg(
        long,
        env = "PIPEWRIGHT_METRICS_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    metrics_listen: SocketAddr,
    /// Address of /healthz and /readyz.
    #[arg(long, env = "PIPEWRIGHT_HEALTH_LISTEN", default_value = "0.0.0.0:8081")]
    health_listen: SocketAddr,
    /// Elect a leader through a Lease (disable only when one replica runs).
    #[arg(long, env = "PIPEWRIGHT_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the leader Lease (default: the pod's namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    leader_election_namespace: String,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "PIPEWRIGHT_LEASE_NAME",
        default_value = "pipewright-operator"
    )]
    lease_name: String,
    /// Lease duration: how long a follower waits after the leader's last renewal.
    #[arg(long, env = "PIPEWRIGHT_LEASE_DURATION", default_value = "15s")]
    lease_duration: humantime::Duration,
    /// This process's identity in the Lease and in Events (default: pod name, else a random one).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How often measured figures (lag, backlog) are refreshed.
    #[arg(long, env = "PIPEWRIGHT_STATUS_PERIOD", default_value = "30s")]
    status_period: humantime::Duration,
    /// The autoscaler waits this long after a change before it scales down.
    #[arg(long, env = "PIPEWRIGHT_SCALE_COOLDOWN", default_value = "2m")]
    scale_cooldown: humantime::Duration,
    /// Deadline of one Kafka or PostgreSQL measurement.
    #[arg(long, env = "PIPEWRIGHT_MEASURE_TIMEOUT", default_value = "10s")]
    measure_timeout: humantime::Duration,
    /// Reconciles running at once, per kind (EventConsumer, Outbox).
    #[arg(long, env = "PIPEWRIGHT_RECONCILE_CONCURRENCY", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    reconcile_concurrency: u16,
    /// The cluster's DNS domain: a sink's Service reference resolves to
    /// `<name>.<namespace>.svc.<domain>`.
    #[arg(
        long,
        env = "PIPEWRIGHT_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    cluster_domain: String,
    /// Worker image for resources that name none.
    #[arg(
        long,
        env = "PIPEWRIGHT_WORKER_IMAGE",
        default_value = "pipewright-worker:latest"
    )]
    worker_image: String,
    /// Watch only this namespace (default: all).
    #[arg(long, env = "PIPEWRIGHT_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Log as JSON lines.
    #[arg(long, env = "PIPEWRIGHT_LOG_JSON", default_value_t = false, action = clap::ArgAction::Set)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_json);
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            error!(error = %Chain(e.as_ref()), "pipewright-operator stopped");
            ExitCode::FAILURE
        }
    }
}

fn on_signals() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = int.recv() => info!("SIGINT: shutting down"),
        }
        t.cancel();
    });
    Ok(token)
}

async fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error + Send + Sync>> {
    let shutdown = on_signals()?;
    let client = pipewright_operator::client::connect().await?;
    let identity = cli.identity.clone().unwrap_or_else(|| {
        let id = uuid::Uuid::new_v4().simple().to_string();
        format!("{MANAGER}-{}", &id[..8])
    });

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let health = http::Health::default();
    let metrics_listener = http::bind(cli.metrics_listen).await?;
    let health_listener = http::bind(cli.health_listen).await?;
    info!(metrics = %cli.metrics_listen, health = %cli.health_listen, %identity, "serving");
    let servers_stop = CancellationToken::new();
    let metrics_server = tokio::spawn(http::serve_metrics(
        metrics_listener,
        Arc::new(registry),
        servers_stop.clone(),
    ));
    let health_server = tokio::spawn(http::serve_health(
        health_listener,
        health.clone(),
        servers_stop.clone(),
    ));

    client.apiserver_version().await?;
    health.set_ready(true);

    let settings = Settings {
        worker_image: cli.worker_image.clone(),
        status_period: cli.status_period.into(),
        scale_cooldown: cli.scale_cooldown.into(),
        measure_timeout: cli.measure_timeout.into(),
        concurrency: cli.reconcile_concurrency,
        cluster_domain: cli.cluster_domain.clone(),
    };
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: Some(identity.clone()),
    };
    // Cancelled when this process stops leading; reconciles in flight end at once.
    let leadership = CancellationToken::new();
    let ctx = Arc::new(Context::new(
        client.clone(),
        settings,
        metrics.clone(),
        reporter,
        leadership.clone(),
    ));

    let (leading_tx, mut leading) = watch::channel(!cli.leader_election);
    let election_stop = CancellationToken::new();
    let election = cli.leader_election.then(|| {
        tokio::spawn(leader::run(
            client.clone(),
            LeaseSettings {
                namespace: cli.leader_election_namespace.clone(),
                name: cli.lease_name.clone(),
                identity: identity.clone(),
                duration: Duration::from(cli.lease_duration),
            },
            leading_tx,
            election_stop.clone(),
        ))
    });

    let mut code = ExitCode::SUCCESS;
    // Follower: wait for the lease (or shutdown).
    let became_leader = tokio::select! {
        r = leading.wait_for(|l| *l) => r.is_ok(),
        () = shutdown.cancelled() => false,
    };
    if became_leader {
        metrics.leader.set(1);
        info!("leading: starting the controllers");
        let stop = CancellationToken::new();
        // Losing the lease (also while draining after SIGTERM) aborts the running reconciles;
        // SIGTERM alone lets them finish.
        let on_lost = {
            let mut leading = leading.clone();
            let (stop, leadership) = (stop.clone(), leadership.clone());
            tokio::spawn(async move {
                if leading.wait_for(|l| !*l).await.is_ok() {
                    leadership.cancel();
                    stop.cancel();
                }
            })
        };
        let on_shutdown = {
            let (stop, shutdown) = (stop.clone(), shutdown.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                stop.cancel();
            })
        };
        tokio::join!(
            controller::run::<EventConsumer>(
                ctx.clone(),
                cli.namespace.clone(),
                stop.clone().cancelled_owned()
            ),
            controller::run::<Outbox>(
                ctx.clone(),
                cli.namespace.clone(),
                stop.clone().cancelled_owned()
            ),
        );
        on_lost.abort();
        on_shutdown.abort();
        metrics.leader.set(0);
        if leadership.is_cancelled() {
            error!("lost the leader lease: exiting so that a restart starts as a follower");
            code = ExitCode::FAILURE;
        }
    }
    election_stop.cancel();
    if let Some(election) = election {
        let _ = election.await;
    }
    servers_stop.cancel();
    let _ = tokio::join!(metrics_server, health_server);
    info!("stopped");
    Ok(code)
}
