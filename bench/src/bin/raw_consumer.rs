//! The raw rust-rdkafka peer: one `BaseConsumer` in a poll loop that decodes each value with
//! serde_json into the typed `#[serde(tag = "event_type")]` enum, and nothing else (no
//! pipeline, no commit other than librdkafka's auto-commit, no sink). It stops after
//! `--records` records and prints one JSON line: the records and bytes it read and the wall
//! clock of its first and last record.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use pipewright_bench::workload::{self, EVENT_TYPES, Event};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// Consume a topic with a bare BaseConsumer loop, decoding each value.
#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    bootstrap_servers: String,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    group_id: String,
    /// Stop after this many records.
    #[arg(long)]
    records: u64,
    /// A librdkafka setting, `key=value` (repeatable).
    #[arg(long = "config")]
    config: Vec<String>,
    /// Give up when no record arrives for this many seconds.
    #[arg(long, default_value_t = 60)]
    idle_timeout_secs: u64,
}

fn unix_nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut config = workload::kafka_config(&args.bootstrap_servers);
    config
        .set("group.id", &args.group_id)
        .set("auto.offset.reset", "earliest");
    for entry in &args.config {
        let (key, value) = entry
            .split_once('=')
            .with_context(|| format!("--config {entry:?} is not key=value"))?;
        config.set(key, value);
    }
    let consumer: BaseConsumer = config.create().context("Kafka consumer")?;
    consumer
        .subscribe(&[&args.topic])
        .with_context(|| format!("subscribe to {}", args.topic))?;

    let mut per_type = [0u64; EVENT_TYPES.len()];
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut first = None;
    let mut last_record = Instant::now();
    while records < args.records {
        match consumer.poll(Duration::from_millis(100)) {
            None if last_record.elapsed().as_secs() >= args.idle_timeout_secs => bail!(
                "no record for {} s after {records} of {}",
                args.idle_timeout_secs,
                args.records
            ),
            None => {}
            Some(Err(e)) => bail!("consume {}: {e}", args.topic),
            Some(Ok(message)) => {
                if first.is_none() {
                    first = Some(SystemTime::now());
                }
                let value = message.payload().unwrap_or_default();
                let event: Event = serde_json::from_slice(value).with_context(|| {
                    format!(
                        "decode {}/{}@{}",
                        message.topic(),
                        message.partition(),
                        message.offset()
                    )
                })?;
                per_type[event.type_index()] += 1;
                bytes += (value.len() + message.key().map_or(0, <[u8]>::len)) as u64;
                records += 1;
                last_record = Instant::now();
            }
        }
    }
    let last = SystemTime::now();
    let first = first.unwrap_or(last);
    let report = serde_json::json!({
        "records": records,
        "bytes": bytes,
        "first_unix_ns": unix_nanos(first).to_string(),
        "last_unix_ns": unix_nanos(last).to_string(),
        "per_type": EVENT_TYPES.iter().zip(per_type).map(|(t, n)| (t.to_string(), n.into())).collect::<serde_json::Map<_, _>>(),
    });
    println!("{report}");
    Ok(())
}
