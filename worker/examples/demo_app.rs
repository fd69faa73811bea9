//! The `make demo` application: an order service that writes a business row and its typed
//! event in ONE transaction, at a steady rate, forever (until SIGINT/SIGTERM).
//!
//! ```sh
//! eval "$(tests/env/up)"
//! psql "$DATABASE_URL" -c 'CREATE DATABASE pipewright_demo'
//! cargo run -p pipewright-worker --example demo_app -- \
//!     --database-url "${DATABASE_URL%/*}/pipewright_demo" --rate 20
//! ```
//!
//! What it does:
//! - runs the outbox migration (`pipewright_worker::outbox::MIGRATOR`), which creates the table
//!   `outbox` in the first schema of the `search_path` (`public.outbox` here: the demo's Outbox
//!   resource names that table), and creates its business table `orders`;
//! - keeps `--orders` orders open at once (default 50, so 50 aggregates interleave); every tick
//!   picks one of them at random and moves it on: a new order is placed (`INSERT`), a placed one
//!   paid, a paid one shipped (`UPDATE`), a shipped one leaves and a new order takes its place.
//!   Each change writes the `orders` row and the event (`OrderPlaced`, `OrderPaid`,
//!   `OrderShipped`) with `outbox::enqueue` in the same transaction: both commit or neither;
//! - every event carries `seq`, the order's own sequence number (1, 2, 3: the `orders.seq` the
//!   same transaction wrote), so a sink can show that per-aggregate order is kept;
//! - prints one line every `--report-every`: changes written, rate, and (with
//!   `--kafka-bootstrap-servers` and `--dlq-topic`) the records in the dead-letter topic.
//!
//! Restarting it continues the open orders where they were (their state is in `orders`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use pipewright_worker::outbox::{self, OutboxEvent};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;
use sqlx::postgres::PgPoolOptions;
use tokio::signal::unix::{SignalKind, signal};

/// The pipewright demo's order service: writes an `orders` row and its outbox event in one
/// transaction, at a steady rate, until SIGINT/SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "demo_app")]
struct Args {
    /// PostgreSQL URL of the demo database (its `public.outbox` is the Outbox resource's table).
    /// Never printed.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Order changes (= transactions = events) per second.
    #[arg(long, env = "DEMO_RATE", default_value_t = 20.0)]
    rate: f64,
    /// Orders open at once: the number of aggregates whose events interleave.
    #[arg(long, env = "DEMO_ORDERS", default_value_t = 50)]
    orders: usize,
    /// How often to print a progress line.
    #[arg(long, env = "DEMO_REPORT_EVERY", default_value = "5s", value_parser = humantime::parse_duration)]
    report_every: Duration,
    /// Stop after this many changes (0: run until SIGINT/SIGTERM).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Kafka bootstrap servers, to report the number of records in --dlq-topic.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
    kafka_bootstrap_servers: Option<String>,
    /// Dead-letter topic of the demo's EventConsumer, counted in each progress line.
    #[arg(long, env = "DEMO_DLQ_TOPIC")]
    dlq_topic: Option<String>,
}

/// The order service's events. The tag `event_type` becomes the outbox row's `type` and the
/// EventConsumer's declared type; the other fields are the columns the read model keeps.
#[derive(Debug, Serialize)]
#[serde(tag = "event_type")]
#[allow(clippy::enum_variant_names)] // the variant names are the event types on the wire
enum OrderEvent {
    OrderPlaced {
        order_id: i64,
        seq: i64,
        customer: String,
        total_cents: i64,
        occurred_at: chrono::DateTime<chrono::Utc>,
    },
    OrderPaid {
        order_id: i64,
        seq: i64,
        total_cents: i64,
        occurred_at: chrono::DateTime<chrono::Utc>,
    },
    OrderShipped {
        order_id: i64,
        seq: i64,
        carrier: String,
        occurred_at: chrono::DateTime<chrono::Utc>,
    },
}

impl OutboxEvent for OrderEvent {
    fn aggregate_type(&self) -> &str {
        "order"
    }
    /// The Kafka key: all events of one order land in one partition, in order.
    fn aggregate_id(&self) -> String {
        match self {
            OrderEvent::OrderPlaced { order_id, .. }
            | OrderEvent::OrderPaid { order_id, .. }
            | OrderEvent::OrderShipped { order_id, .. } => order_id.to_string(),
        }
    }
}

/// Where an open order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Placed,
    Paid,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS orders (
    order_id bigserial PRIMARY KEY,
    customer text NOT NULL,
    total_cents bigint NOT NULL,
    status text NOT NULL CHECK (status IN ('placed', 'paid', 'shipped')),
    seq bigint NOT NULL,
    carrier text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
)";

const CUSTOMERS: [&str; 8] = [
    "ada", "grace", "edsger", "barbara", "donald", "frances", "tony", "leslie",
];
const CARRIERS: [&str; 3] = ["dhl", "ups", "postnl"];

/// xorshift64*: enough randomness to interleave the orders, no extra dependency.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Rng(nanos | 1)
    }
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

/// One order change: the `orders` row and its event, in one transaction.
async fn step(
    pool: &sqlx::PgPool,
    slot: &mut Option<(i64, Status)>,
    rng: &mut Rng,
) -> anyhow::Result<&'static str> {
    let now = chrono::Utc::now();
    let mut tx = pool.begin().await?;
    let (event, next) = match *slot {
        None => {
            let customer = CUSTOMERS[rng.below(CUSTOMERS.len())].to_string();
            let total_cents = 500 + rng.below(20_000) as i64;
            let order_id: i64 = sqlx::query_scalar(
                "INSERT INTO orders (customer, total_cents, status, seq) \
                 VALUES ($1, $2, 'placed', 1) RETURNING order_id",
            )
            .bind(&customer)
            .bind(total_cents)
            .fetch_one(&mut *tx)
            .await?;
            let event = OrderEvent::OrderPlaced {
                order_id,
                seq: 1,
                customer,
                total_cents,
                occurred_at: now,
            };
            (event, Some((order_id, Status::Placed)))
        }
        Some((order_id, Status::Placed)) => {
            let (seq, total_cents): (i64, i64) = sqlx::query_as(
                "UPDATE orders SET status = 'paid', seq = seq + 1, updated_at = now() \
                 WHERE order_id = $1 RETURNING seq, total_cents",
            )
            .bind(order_id)
            .fetch_one(&mut *tx)
            .await?;
            let event = OrderEvent::OrderPaid {
                order_id,
                seq,
                total_cents,
                occurred_at: now,
            };
            (event, Some((order_id, Status::Paid)))
        }
        Some((order_id, Status::Paid)) => {
            let carrier = CARRIERS[rng.below(CARRIERS.len())].to_string();
            let seq: i64 = sqlx::query_scalar(
                "UPDATE orders SET status = 'shipped', seq = seq + 1, carrier = $2, \
                 updated_at = now() WHERE order_id = $1 RETURNING seq",
            )
            .bind(order_id)
            .bind(&carrier)
            .fetch_one(&mut *tx)
            .await?;
            let event = OrderEvent::OrderShipped {
                order_id,
                seq,
                carrier,
                occurred_at: now,
            };
            (event, None)
        }
    };
    outbox::enqueue(&mut tx, &event).await?;
    // The business row and the event commit together, or neither does.
    tx.commit().await?;
    *slot = next;
    Ok(match event {
        OrderEvent::OrderPlaced { .. } => "placed",
        OrderEvent::OrderPaid { .. } => "paid",
        OrderEvent::OrderShipped { .. } => "shipped",
    })
}

/// Records in the dead-letter topic (sum over partitions of high - low watermark).
async fn dlq_records(bootstrap: String, topic: String) -> anyhow::Result<i64> {
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "pipewright-demo-app-dlq-counter")
            .create()?;
        let timeout = Duration::from_secs(3);
        let metadata = consumer.fetch_metadata(Some(&topic), timeout)?;
        let mut total = 0;
        for t in metadata.topics() {
            for p in t.partitions() {
                let (low, high) = consumer.fetch_watermarks(&topic, p.id(), timeout)?;
                total += high - low;
            }
        }
        Ok(total)
    })
    .await?
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.rate > 0.0 && args.rate <= 10_000.0,
        "--rate must be in (0, 10000]"
    );
    anyhow::ensure!(
        (1..=10_000).contains(&args.orders),
        "--orders must be in [1, 10000]"
    );

    // The URL is never printed: a connection error names the cause, not the URL.
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&args.database_url)
        .await
        .context("connecting to the demo database (--database-url / DATABASE_URL)")?;
    outbox::MIGRATOR
        .run(&pool)
        .await
        .context("running the outbox migration")?;
    sqlx::query(SCHEMA)
        .execute(&pool)
        .await
        .context("creating the orders table")?;

    // Open orders left by a previous run continue where they were.
    let open: Vec<(i64, String)> = sqlx::query_as(
        "SELECT order_id, status FROM orders WHERE status <> 'shipped' \
         ORDER BY order_id LIMIT $1",
    )
    .bind(args.orders as i64)
    .fetch_all(&pool)
    .await?;
    let mut slots: Vec<Option<(i64, Status)>> = vec![None; args.orders];
    for (slot, (order_id, status)) in slots.iter_mut().zip(open) {
        let status = if status == "paid" {
            Status::Paid
        } else {
            Status::Placed
        };
        *slot = Some((order_id, status));
    }
    println!(
        "[demo-app] writing {} order changes/s over {} open orders into orders + public.outbox (one transaction each); Ctrl-C stops",
        args.rate, args.orders
    );

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report = tokio::time::interval(args.report_every);
    report.tick().await;
    let mut rng = Rng::seeded();
    let mut counts: HashMap<&'static str, u64> = HashMap::new();
    let (mut written, mut last_written, mut failures) = (0_u64, 0_u64, 0_u64);
    let mut last_report = Instant::now();
    // The dead-letter count is measured beside the writes, never in their way.
    let dlq = Arc::new(Mutex::new(None::<String>));
    if let Some((servers, topic)) = args
        .kafka_bootstrap_servers
        .clone()
        .zip(args.dlq_topic.clone())
    {
        let dlq = dlq.clone();
        let every = args.report_every;
        tokio::spawn(async move {
            loop {
                let shown = match dlq_records(servers.clone(), topic.clone()).await {
                    Ok(n) => format!(" dlq={n}"),
                    Err(e) => format!(" dlq=? ({e})"),
                };
                *dlq.lock().unwrap() = Some(shown);
                tokio::time::sleep(every).await;
            }
        });
    }

    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = report.tick() => {
                let secs = last_report.elapsed().as_secs_f64();
                let rate = (written - last_written) as f64 / secs.max(0.001);
                let dlq_part = dlq.lock().unwrap().clone().unwrap_or_default();
                println!(
                    "[demo-app] written={written} ({rate:.1}/s) placed={} paid={} shipped={} failed={failures}{dlq_part}",
                    counts.get("placed").unwrap_or(&0),
                    counts.get("paid").unwrap_or(&0),
                    counts.get("shipped").unwrap_or(&0),
                );
                last_written = written;
                last_report = Instant::now();
            }
            _ = tick.tick() => {
                let i = rng.below(slots.len());
                match step(&pool, &mut slots[i], &mut rng).await {
                    Ok(kind) => {
                        written += 1;
                        *counts.entry(kind).or_default() += 1;
                    }
                    // A failed transaction rolled back both rows: nothing to publish. Go on.
                    Err(e) => {
                        failures += 1;
                        eprintln!("[demo-app] transaction rolled back: {e:#}");
                    }
                }
                if args.count > 0 && written >= args.count {
                    break;
                }
            }
        }
    }
    pool.close().await;
    println!("[demo-app] stopped: written={written} failed={failures}");
    Ok(())
}
