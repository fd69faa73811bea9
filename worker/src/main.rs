//! `pipewright-worker`: the thin binary over the library. Exit codes: 0 after a graceful
//! shutdown, 2 for invalid configuration (flags, environment, database URL), 1 for any other
//! error that ended the worker (e.g. the outbox table does not exist).

use std::process::ExitCode;

use clap::Parser;
use pipewright_worker::config::{Cli, Command, DatabaseUrl};
use pipewright_worker::outbox::{OutboxMetrics, Poller};
use pipewright_worker::{Chain, Error, Health, http, shutdown, telemetry};
use prometheus_client::registry::Registry;
use tracing::{error, info};

const EXIT_CONFIG: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %Chain(&e), "pipewright-worker stopped");
            eprintln!("pipewright-worker: {}", Chain(&e));
            if matches!(
                e,
                Error::InvalidConfig { .. }
                    | Error::InvalidTableName { .. }
                    | Error::DatabaseUrlFile { .. }
                    | Error::DatabaseUrlMissing
                    | Error::DatabaseUrlInvalid(_)
            ) {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    let Command::Outbox(args) = cli.command;
    let config = args.into_config()?;
    let connect = DatabaseUrl::from_env()?.connect_options()?;
    let mut registry = Registry::default();
    let metrics = OutboxMetrics::register(&mut registry);
    let health = Health::default();
    let poller = Poller::new(config, connect, metrics, health.clone())?;

    let shutdown = shutdown::on_signals().map_err(|e| Error::InvalidConfig {
        field: "signals",
        reason: e.to_string(),
    })?;
    let listener = http::bind(cli.listen).await?;
    info!(listen = %cli.listen, "serving /metrics, /healthz, /readyz");
    let server = tokio::spawn(http::serve(listener, registry, health, shutdown.clone()));
    let result = poller.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = server.await;
    result
}
