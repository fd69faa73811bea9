//! What a worker binary does around a mode: the HTTP endpoints, the shutdown signal, the exit
//! code. The `pipewright-worker` binary and custom worker images (a small `main` with their own
//! [`Handler`]) share it.

use std::net::SocketAddr;
use std::process::ExitCode;

use pipewright_crds::termination::Termination;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::ConsumeArgs;
use crate::consume::{self, ConsumerMetrics, Handler};
use crate::report::Reporter;
use crate::{Chain, Error, Health, http, shutdown};

/// Exit code of an invalid configuration.
pub const EXIT_CONFIG: u8 = 2;

/// Environment variable naming the file a poison message is reported in when the worker
/// stops for one; default `/dev/termination-log`, which the kubelet copies into the pod's
/// container status (`terminated.message`), where the operator reads it and sets the
/// resource's `Degraded` condition with reason `PoisonMessage`.
pub const TERMINATION_LOG_ENV: &str = "PIPEWRIGHT_TERMINATION_LOG";

/// Reports why the worker stopped where Kubernetes picks it up: a poison message (its
/// coordinates, the kind of failure and the error; never the record's payload) or a refused
/// configuration (the error as logged, which never holds a secret value), capped at 1 KiB;
/// the format is [`Termination`]'s, which the operator parses.
/// Best effort: a missing or read-only file only loses the report, not the exit code.
fn report_stop(e: &Error, config: bool) {
    let text = match e {
        Error::PoisonMessage {
            record,
            kind,
            message,
        } => Termination::poison(record.clone(), kind, message).message(),
        _ if config => Termination::ConfigRejected(Chain(e).to_string()).message(),
        Error::TableMissing { .. }
        | Error::TableColumns { .. }
        | Error::TableColumnTypes { .. }
        | Error::TableNotStamped { .. } => {
            Termination::TableRefused(Chain(e).to_string()).message()
        }
        _ => return,
    };
    // The default file exists only in a container (the kubelet mounts it): never create it
    // on a host.
    let (path, create) = match std::env::var(TERMINATION_LOG_ENV) {
        Ok(path) => (path, true),
        Err(_) => ("/dev/termination-log".to_string(), false),
    };
    let written = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(create)
        .open(&path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()));
    if let Err(write) = written {
        error!(%path, error = %write, "cannot write the termination message");
    }
}

/// The process exit code for the outcome of a mode: 0, 2 for invalid configuration (flags,
/// environment, database URL), 1 for anything else (logged and printed on stderr).
pub fn exit_code(result: Result<(), Error>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %Chain(&e), "pipewright-worker stopped");
            eprintln!("pipewright-worker: {}", Chain(&e));
            let config = matches!(
                e,
                Error::InvalidConfig { .. }
                    | Error::ConfigFile { .. }
                    | Error::InvalidConfigFile(_)
                    | Error::InvalidTableName { .. }
                    | Error::DatabaseUrlFile { .. }
                    | Error::DatabaseUrlMissing
                    | Error::DatabaseUrlInvalid(_)
            );
            report_stop(&e, config);
            if config {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Serves `/metrics`, `/healthz`, `/readyz` and `/report` on `listen` until `shutdown`.
pub async fn serve_http(
    listen: SocketAddr,
    registry: Registry,
    health: Health,
    reporter: Reporter,
    shutdown: &CancellationToken,
) -> Result<tokio::task::JoinHandle<Result<(), Error>>, Error> {
    let listener = http::bind(listen).await?;
    info!(listen = %listen, "serving /metrics, /healthz, /readyz, /report");
    Ok(tokio::spawn(http::serve(
        listener,
        registry,
        health,
        reporter,
        shutdown.clone(),
    )))
}

/// The token cancelled by SIGTERM/SIGINT.
pub fn signals() -> Result<CancellationToken, Error> {
    shutdown::on_signals().map_err(|e| Error::InvalidConfig {
        field: "signals",
        reason: e.to_string(),
    })
}

/// Runs `consume` with a custom handler: the settings of `pipewright-worker consume` (as the
/// operator renders them; the sink settings are ignored, `handler` is the sink), metrics,
/// probes, graceful shutdown.
pub async fn consume_with<H: Handler>(
    listen: SocketAddr,
    args: ConsumeArgs,
    handler: H,
) -> Result<(), Error> {
    let (config, _sink, _types) = args.into_config()?;
    let mut registry = Registry::default();
    let metrics = ConsumerMetrics::register(&mut registry);
    let health = Health::default();
    let shutdown = signals()?;
    let reporter = Reporter::consumer(&metrics);
    let server = serve_http(listen, registry, health.clone(), reporter, &shutdown).await?;
    let result = consume::run(config, handler, metrics, health, shutdown.clone()).await;
    shutdown.cancel();
    let _ = server.await;
    result
}
