//! A custom worker image: the `consume` mode with the application's own typed handler instead
//! of a configured sink. It takes the same `--config` file (as the operator renders it) or
//! flags as `pipewright-worker consume`; the sink settings are ignored.
//!
//! ```sh
//! eval "$(tests/env/up)"
//! cargo run -p pipewright-worker --example consume_app -- consume --topics orders \
//!     --group-id orders-app --sink log --on-unknown-type skip \
//!     --kafka-bootstrap-servers "$KAFKA_BOOTSTRAP_SERVERS"
//! ```

use std::process::ExitCode;

use clap::Parser;
use pipewright_worker::app;
use pipewright_worker::config::{Cli, Command};
use pipewright_worker::consume::{Handler, HandlerError, Record};
use pipewright_worker::telemetry;
use tracing::info;

/// The events this worker understands; any other `event_type` is an unknown type.
#[derive(Debug, serde::Deserialize)]
#[serde(tag = "event_type")]
enum OrderEvent {
    OrderPlaced { order_id: i64, total_cents: i64 },
    OrderShipped { order_id: i64 },
}

#[derive(Debug)]
struct Orders;

impl Handler for Orders {
    type Event = OrderEvent;

    async fn handle(&self, event: &OrderEvent, record: &Record) -> Result<(), HandlerError> {
        // Exhaustive: a new variant does not compile until it is handled.
        match event {
            OrderEvent::OrderPlaced {
                order_id,
                total_cents,
            } => info!(
                order_id,
                total_cents,
                offset = record.offset,
                "order placed"
            ),
            OrderEvent::OrderShipped { order_id } => info!(order_id, "order shipped"),
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let Command::Consume(args) = cli.command else {
        eprintln!("this worker only consumes");
        return ExitCode::from(app::EXIT_CONFIG);
    };
    app::exit_code(app::consume_with(cli.listen, args, Orders).await)
}
