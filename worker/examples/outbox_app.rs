//! An application that writes a business row and its event in one transaction.
//!
//! ```sh
//! eval "$(tests/env/up)"
//! cargo run -p pipewright-worker --example outbox_app
//! ```
//! Then run the poller: `pipewright-worker outbox --topic orders --kafka-bootstrap-servers ...`
//! with `PIPEWRIGHT_DATABASE_URL` set.

use pipewright_worker::outbox::{self, OutboxEvent};
use serde::Serialize;

/// The application's events: `event_type` is the tag, the row's `type`.
#[derive(Debug, Serialize)]
#[serde(tag = "event_type")]
enum OrderEvent {
    OrderPlaced { order_id: i64, total_cents: i64 },
}

impl OutboxEvent for OrderEvent {
    fn aggregate_type(&self) -> &str {
        "order"
    }
    fn aggregate_id(&self) -> String {
        let OrderEvent::OrderPlaced { order_id, .. } = self;
        order_id.to_string()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")?;
    let pool = sqlx::PgPool::connect(&url).await?;
    outbox::MIGRATOR.run(&pool).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS orders (id bigserial PRIMARY KEY, total_cents bigint)")
        .execute(&pool)
        .await?;

    let mut tx = pool.begin().await?;
    let order_id: i64 =
        sqlx::query_scalar("INSERT INTO orders (total_cents) VALUES ($1) RETURNING id")
            .bind(4200_i64)
            .fetch_one(&mut *tx)
            .await?;
    let event = OrderEvent::OrderPlaced {
        order_id,
        total_cents: 4200,
    };
    let id = outbox::enqueue(&mut tx, &event).await?;
    // Both rows commit together, or neither does.
    tx.commit().await?;
    println!("order {order_id} placed; outbox row {id}");
    Ok(())
}
