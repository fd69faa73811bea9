//! Measures rdkafka's two consumer APIs on the same topic, as the consume mode's choice of
//! `StreamConsumer` over `BaseConsumer` asks: each run consumes every record of a topic from
//! the start with a fresh group (no commits), alternating the APIs, and prints the median
//! time of each and their ratio.
//!
//! `cargo run --example consumer_api -p pipewright-worker -- <bootstrap> [records] [runs]`
//! (creates its own topic; needs a broker, e.g. `eval "$(tests/env/up)"`).

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message};

fn config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

fn consumer_config(bootstrap: &str) -> ClientConfig {
    let mut c = config(bootstrap);
    c.set("group.id", format!("api-bench-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    c
}

fn base(bootstrap: &str, topic: &str, records: usize) -> Duration {
    let consumer: BaseConsumer = consumer_config(bootstrap).create().expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let start = Instant::now();
    let mut seen = 0;
    while seen < records {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.expect("record");
            std::hint::black_box(m.payload());
            seen += 1;
        }
    }
    start.elapsed()
}

async fn stream(bootstrap: &str, topic: &str, records: usize) -> Duration {
    let consumer: StreamConsumer = consumer_config(bootstrap).create().expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let start = Instant::now();
    for _ in 0..records {
        let m = consumer.recv().await.expect("record");
        std::hint::black_box(m.payload());
    }
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let bootstrap = args
        .next()
        .expect("usage: consumer_api <bootstrap> [records] [runs]");
    let records: usize = args.next().map_or(200_000, |a| a.parse().expect("records"));
    let runs: usize = args.next().map_or(5, |a| a.parse().expect("runs"));
    let topic = format!("api-bench-{}", uuid::Uuid::new_v4());

    let admin: AdminClient<DefaultClientContext> = config(&bootstrap).create().expect("admin");
    admin
        .create_topics(
            &[NewTopic::new(&topic, 4, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topic");
    let producer: FutureProducer = config(&bootstrap)
        .set("linger.ms", "20")
        .create()
        .expect("producer");
    let payload = br#"{"event_type":"order.created","order_id":"o-000000","amount":4200}"#;
    for i in 0..records {
        let key = format!("k{}", i % 1000);
        let mut record = FutureRecord::to(&topic).key(&key).payload(&payload[..]);
        loop {
            match producer.send_result(record) {
                Ok(_) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");

    let (mut b, mut s) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (bs, t) = (bootstrap.clone(), topic.clone());
        b.push(
            tokio::task::spawn_blocking(move || base(&bs, &t, records))
                .await
                .unwrap(),
        );
        s.push(stream(&bootstrap, &topic, records).await);
    }
    let (mb, ms) = (median(b.clone()), median(s.clone()));
    println!("records per run: {records}, runs: {runs} (alternating), group join included");
    println!(
        "BaseConsumer   median {mb:?}  ({:.0} records/s)  runs {b:?}",
        records as f64 / mb.as_secs_f64()
    );
    println!(
        "StreamConsumer median {ms:?}  ({:.0} records/s)  runs {s:?}",
        records as f64 / ms.as_secs_f64()
    );
    println!(
        "StreamConsumer / BaseConsumer time ratio: {:.2}",
        ms.as_secs_f64() / mb.as_secs_f64()
    );
}
