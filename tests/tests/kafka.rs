//! The local Kafka broker is real: rdkafka produces to it and consumes from it, and it runs
//! with automatic topic creation off (as production clusters should).

use std::time::Duration;

use futures::StreamExt;
use pipewright_testenv::{create_topic, kafka_config, unique_name};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

const RECORDS: usize = 200;

#[tokio::test]
async fn records_produced_with_rdkafka_are_consumed_in_order() {
    let topic = create_topic("env-roundtrip", 1).await;
    let producer: FutureProducer = kafka_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for i in 0..RECORDS {
        let payload = format!("record-{i}");
        producer
            .send(
                FutureRecord::to(&topic).key("k").payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce record {i}: {e}"));
    }

    let consumer: StreamConsumer = kafka_config()
        .set("group.id", unique_name("env-group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let received: Vec<String> = consumer
        .stream()
        .take(RECORDS)
        .map(|m| {
            let m = m.expect("consume");
            String::from_utf8(m.payload().unwrap().to_vec()).unwrap()
        })
        .collect()
        .await;
    let expected: Vec<String> = (0..RECORDS).map(|i| format!("record-{i}")).collect();
    assert_eq!(received, expected);
}

#[tokio::test]
async fn topics_are_not_created_automatically() {
    // Ensures the broker answers (and fails with how to start it if not) before probing.
    create_topic("env-reachable", 1).await;
    let topic = unique_name("env-missing");
    let producer: FutureProducer = kafka_config().create().unwrap();
    // A producer's metadata request asks the broker to auto-create the topic; with
    // auto.create.topics.enable=false the broker answers UnknownTopicOrPartition instead.
    let metadata = producer
        .client()
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .unwrap();
    let entry = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .expect("the broker answers for the requested topic");
    assert_eq!(
        entry.error().map(RDKafkaErrorCode::from),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = producer
        .client()
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    assert!(all.topics().iter().all(|t| t.name() != topic));
}
