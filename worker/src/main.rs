//! `pipewright-worker`: the thin binary over the library. Exit codes: 0 after a graceful
//! shutdown, 2 for invalid configuration (flags, environment, database URL), 1 for any other
//! error that ended the worker (e.g. the outbox table does not exist).

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use pipewright_worker::app::{self, serve_http, signals};
use pipewright_worker::config::{Cli, Command, ConsumeArgs, DatabaseUrl, OutboxArgs};
use pipewright_worker::consume::sinks::SinkHandler;
use pipewright_worker::consume::{self, ConsumerMetrics};
use pipewright_worker::outbox::{OutboxMetrics, Poller};
use pipewright_worker::report::Reporter;
use pipewright_worker::{Error, Health, telemetry, traces};
use prometheus_client::registry::Registry;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    app::exit_code(run(cli).await)
}

async fn run(cli: Cli) -> Result<(), Error> {
    // Off unless the OTEL_* environment asks for traces (docs/tracing.md).
    let traces = traces::init()?;
    let result = match cli.command {
        Command::Outbox(args) => run_outbox(cli.listen, args).await,
        Command::Consume(args) => run_consume(cli.listen, args).await,
    };
    if let Some(traces) = traces {
        // The last spans (the drained records') go out before the process ends.
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    }
    result
}

async fn run_consume(listen: SocketAddr, args: ConsumeArgs) -> Result<(), Error> {
    let (config, sink, types) = args.into_config()?;
    let (sink, transaction) = sink.build(&config).await?;
    let handler = SinkHandler { types, sink };
    let mut registry = Registry::default();
    let metrics = ConsumerMetrics::register(&mut registry);
    let health = Health::default();
    let shutdown = signals()?;
    let reporter = Reporter::consumer(&metrics);
    let server = serve_http(listen, registry, health.clone(), reporter, &shutdown).await?;
    // On a worker thread of the runtime, not on main's `block_on` thread: a record that ends
    // in a task wakes the fetch loop, which then runs on the same worker (no hop to another
    // thread and back per record; measured with a slow handler, docs/benchmarks.md part 2).
    let result = tokio::spawn(consume::run_with_transaction(
        config,
        handler,
        transaction,
        metrics,
        health,
        shutdown.clone(),
    ))
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    shutdown.cancel();
    let _ = server.await;
    result
}

async fn run_outbox(listen: SocketAddr, args: OutboxArgs) -> Result<(), Error> {
    let (config, url_file) = args.into_config()?;
    let connect = DatabaseUrl::load(url_file.as_deref())?.connect_options()?;
    let mut registry = Registry::default();
    let metrics = OutboxMetrics::register(&mut registry);
    let health = Health::default();
    let reporter = Reporter::outbox(&metrics);
    let poller = Poller::new(config, connect, metrics, health.clone())?;

    let shutdown = signals()?;
    let server = serve_http(listen, registry, health, reporter, &shutdown).await?;
    let result = poller.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = server.await;
    result
}
