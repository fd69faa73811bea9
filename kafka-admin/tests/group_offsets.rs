//! ListConsumerGroupOffsets against the test environment's broker: one client (whose own
//! `group.id` it never joins) reads the committed offsets of several groups, including one that
//! committed nothing and one that does not exist. Against librdkafka's mock cluster: the
//! broker's coordinator errors, which crash a client without `group.id` (librdkafka issue
//! 5040), are asked again, and such a client is refused before anything is sent.

use std::time::Duration;

use pipewright_testenv::{create_topic, kafka_config, unique_name};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Commits `offsets` (partition, offset) for `group` from outside the group.
fn commit(group: &str, topic: &str, offsets: &[(i32, i64)]) {
    let consumer: BaseConsumer = kafka_config()
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for (p, o) in offsets {
        list.add_partition_offset(topic, *p, Offset::Offset(*o))
            .unwrap();
    }
    consumer.commit(&list, CommitMode::Sync).expect("commit");
}

#[tokio::test]
async fn one_client_reads_the_committed_offsets_of_any_group() {
    let topic = create_topic("admin-offsets", 3).await;
    let (a, b, none) = (
        unique_name("group-a"),
        unique_name("group-b"),
        unique_name("group-none"),
    );
    tokio::task::spawn_blocking(move || {
        commit(&a, &topic, &[(0, 5), (1, 7)]);
        commit(&b, &topic, &[(2, 11)]);
        let client: BaseConsumer = kafka_config()
            .set("group.id", unique_name("measure"))
            .create()
            .expect("client");
        let mut partitions = TopicPartitionList::new();
        for p in 0..3 {
            partitions.add_partition(&topic, p);
        }
        let read = |group: &str| {
            let c = pipewright_kafka_admin::committed(&client, group, &partitions, TIMEOUT)
                .expect("ListConsumerGroupOffsets");
            (0..3)
                .map(|p| c.get(&(topic.clone(), p)).copied().flatten())
                .collect::<Vec<_>>()
        };
        assert_eq!(read(&a), vec![Some(5), Some(7), None]);
        assert_eq!(read(&b), vec![None, None, Some(11)]);
        assert_eq!(read(&none), vec![None, None, None]);
        // The same client, again: nothing about it is tied to one group.
        assert_eq!(read(&a), vec![Some(5), Some(7), None]);
    })
    .await
    .unwrap();
}

/// A mock cluster with topic `t` (1 partition) whose next OffsetFetch answers are `errors`,
/// and a client of it (with a `group.id`, or without).
fn mock(
    errors: &[RDKafkaRespErr],
    group_id: bool,
) -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    BaseConsumer,
    TopicPartitionList,
) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("t", 1, 1).expect("topic");
    cluster.request_errors(RDKafkaApiKey::OffsetFetch, errors);
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", cluster.bootstrap_servers());
    if group_id {
        config.set("group.id", "measure");
    }
    let client: BaseConsumer = config.create().expect("client");
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition("t", 0);
    (cluster, client, partitions)
}

#[test]
fn coordinator_errors_during_a_coordinator_move_are_asked_again_and_do_not_crash_the_process() {
    use RDKafkaRespErr::*;
    let (_cluster, client, partitions) = mock(
        &[
            RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
            RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
        ],
        true,
    );
    let committed = pipewright_kafka_admin::committed(&client, "g", &partitions, TIMEOUT)
        .expect("answered after the coordinator errors");
    assert_eq!(committed.get(&("t".to_string(), 0)), Some(&None));
}

#[test]
fn coordinator_errors_until_the_timeout_are_an_error() {
    let errors = [RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR; 100];
    let (_cluster, client, partitions) = mock(&errors, true);
    let result =
        pipewright_kafka_admin::committed(&client, "g", &partitions, Duration::from_millis(500));
    assert!(
        matches!(
            result,
            Err(KafkaError::AdminOp(RDKafkaErrorCode::NotCoordinator))
        ),
        "{result:?}"
    );
}

#[test]
fn a_client_without_a_group_id_is_refused_before_anything_is_sent() {
    // Asked, the broker's answer would crash the process.
    let (_cluster, client, partitions) =
        mock(&[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR], false);
    let result = pipewright_kafka_admin::committed(&client, "g", &partitions, TIMEOUT);
    assert!(
        matches!(
            result,
            Err(KafkaError::AdminOp(RDKafkaErrorCode::InvalidArgument))
        ),
        "{result:?}"
    );
}
