//! ListConsumerGroupOffsets against the test environment's broker: one client without a
//! `group.id` reads the committed offsets of several groups, including one that committed
//! nothing and one that does not exist.

use std::time::Duration;

use pipewright_testenv::{create_topic, kafka_config, unique_name};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

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
async fn one_client_without_a_group_reads_the_committed_offsets_of_any_group() {
    let topic = create_topic("admin-offsets", 3).await;
    let (a, b, none) = (
        unique_name("group-a"),
        unique_name("group-b"),
        unique_name("group-none"),
    );
    tokio::task::spawn_blocking(move || {
        commit(&a, &topic, &[(0, 5), (1, 7)]);
        commit(&b, &topic, &[(2, 11)]);
        let client: BaseConsumer = kafka_config().create().expect("client without group.id");
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
