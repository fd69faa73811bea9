//! One leader at a time when the apiserver freezes: two operator processes on the real
//! apiserver, which is then stopped with SIGSTOP for twice the lease duration. Its
//! connections stay open and nothing answers — the leader's renewals hang, as they would
//! behind a network partition — so only a bounded renew lets the leader notice. The follower's
//! reads hang as well; after SIGCONT it finds the record it saw before the freeze and, by its
//! own clock, takes over at once.
//!
//! The record: each operator logs (JSON) the wall-clock time at which it sent every
//! successful acquire and renew of the Lease, and for each reconcile a `reconcile ended` line
//! with its `started` and `ended` times; every request a reconcile sends lies between them,
//! and a reconcile cut off by the step-down ends with the step-down. Both processes run on
//! this machine, so their times come from one clock.
//!
//! In a test binary of its own because it freezes the environment's shared apiserver: cargo
//! runs test binaries one at a time.

mod common;

use std::time::Duration;

use common::{LEASE_DURATION, Operator, WAIT, install_crds};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use pipewright_crds::EventConsumer;
use pipewright_testenv::{Frozen, TestEnv, TestNamespace, create_topic, eventually, kube_client};
use serde_json::{Value, json};

const STEPPED_DOWN: &str = "could not renew the lease within the renew deadline: stepping down";

fn consumer(name: &str, topic: &str) -> EventConsumer {
    serde_json::from_value(json!({
        "apiVersion": "pipewright.io/v1alpha1",
        "kind": "EventConsumer",
        "metadata": {"name": name},
        "spec": {
            "kafka": {"bootstrapServers": [TestEnv::get().kafka_bootstrap_servers]},
            "topics": [topic],
            "processing": {"deadLetterTopic": format!("{topic}.dlq")},
            "sink": {"log": {}},
        },
    }))
    .unwrap()
}

fn message(event: &Value) -> &str {
    event["fields"]["message"].as_str().unwrap_or_default()
}

fn time(value: &Value) -> Timestamp {
    value
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("not a timestamp: {value}"))
}

/// One reconcile of an operator, from its `reconcile ended` line.
#[derive(Debug)]
struct Reconcile {
    name: String,
    started: Timestamp,
    ended: Timestamp,
    outcome: String,
}

fn reconciles(operator: &Operator) -> Vec<Reconcile> {
    operator
        .log_events()
        .iter()
        .filter(|e| message(e) == "reconcile ended")
        .map(|e| Reconcile {
            name: e["fields"]["name"].as_str().unwrap_or_default().into(),
            started: time(&e["fields"]["started"]),
            ended: time(&e["fields"]["ended"]),
            outcome: e["fields"]["outcome"].as_str().unwrap_or_default().into(),
        })
        .collect()
}

/// When the operator sent each acquire and renew of the Lease that succeeded.
fn lease_writes(operator: &Operator) -> Vec<Timestamp> {
    operator
        .log_events()
        .iter()
        .filter(|e| matches!(message(e), "became the leader" | "renewed the lease"))
        .map(|e| time(&e["fields"]["sent"]))
        .collect()
}

/// The time of the first log line with `text`, once there is one.
fn logged(operator: &Operator, text: &str) -> Option<Timestamp> {
    operator
        .log_events()
        .iter()
        .find(|e| message(e) == text)
        .map(|e| time(&e["timestamp"]))
}

#[tokio::test]
async fn a_leader_cut_off_by_a_frozen_apiserver_stops_reconciling_before_the_follower_takes_over_after_the_lease_duration()
 {
    let client = kube_client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "op-freeze").await;
    let topic = create_topic("op-freeze", 1).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let holder = || async {
        leases
            .get_opt("pipewright-operator")
            .await
            .ok()
            .flatten()?
            .spec?
            .holder_identity
    };

    let mut first = Operator::candidate(&ns.name);
    eventually("the first operator to hold the lease", WAIT, || async {
        (holder().await? == first.identity).then_some(())
    })
    .await;
    let second = Operator::candidate(&ns.name);
    eventually(
        "the second operator to see the lease held",
        WAIT,
        || async { logged(&second, "the lease is held by another process") },
    )
    .await;
    let ecs: Api<EventConsumer> = Api::namespaced(client.clone(), &ns.name);
    for name in ["a", "b"] {
        ecs.create(&PostParams::default(), &consumer(name, &topic))
            .await
            .unwrap();
    }
    // Reconciles going on (a requeue every 2 s status period) when the apiserver freezes.
    eventually("the leader to reconcile both, twice", WAIT, || async {
        let done = reconciles(&first);
        ["a", "b"]
            .iter()
            .all(|n| done.iter().filter(|r| r.name == *n).count() >= 2)
            .then_some(())
    })
    .await;

    let resumed = {
        let _frozen = Frozen::service("kube-apiserver");
        let frozen_at = tokio::time::Instant::now();
        eventually("the leader to step down", WAIT, || async {
            logged(&first, STEPPED_DOWN)
        })
        .await;
        // Frozen for longer than the lease duration: the follower's last sight of the
        // record is older than that when the apiserver answers again.
        tokio::time::sleep_until(frozen_at + 2 * LEASE_DURATION).await;
        // Leaving this block drops `_frozen`: SIGCONT (also when a wait above panics).
        Timestamp::now()
    };

    eventually("the second operator to take the lease", WAIT, || async {
        (holder().await? == second.identity).then_some(())
    })
    .await;
    let status = eventually("the first operator to exit", WAIT, || {
        std::future::ready(first.exited())
    })
    .await;
    assert_eq!(
        status.code(),
        Some(1),
        "a leader that lost the lease exits 1"
    );
    eventually("the new leader to reconcile both", WAIT, || async {
        let done = reconciles(&second);
        ["a", "b"]
            .iter()
            .all(|n| done.iter().any(|r| r.name == *n && r.outcome == "Ok"))
            .then_some(())
    })
    .await;

    let first_writes = lease_writes(&first);
    let second_writes = lease_writes(&second);
    let last_renew = *first_writes.iter().max().unwrap();
    let taken_over = *second_writes.iter().min().unwrap();
    let stepped_down = logged(&first, STEPPED_DOWN).unwrap();
    let lease = SignedDuration::try_from(LEASE_DURATION).unwrap();
    assert!(
        taken_over - lease >= last_renew,
        "the follower took over at {taken_over}, within the lease duration ({LEASE_DURATION:?}) \
         of the leader's last renew sent at {last_renew}"
    );
    assert!(
        stepped_down < taken_over,
        "the leader stepped down at {stepped_down}, after the takeover at {taken_over}"
    );
    let before = reconciles(&first);
    let after = reconciles(&second);
    let last_by_first = before.iter().map(|r| r.ended).max().unwrap();
    let first_by_second = after.iter().map(|r| r.started).min().unwrap();
    // The old leader stopped reconciling while cut off: the reconciles in flight when the
    // apiserver froze were abandoned, not finished once it answered again.
    assert!(
        last_by_first < resumed,
        "the old leader's last reconcile ended at {last_by_first}, after the apiserver was \
         resumed at {resumed}"
    );
    // Every reconcile of the old leader ended before any of the new leader's started.
    assert!(
        last_by_first < taken_over && last_by_first < first_by_second,
        "reconciles overlap: the old leader's last ended at {last_by_first}, the takeover was at \
         {taken_over} and the new leader's first started at {first_by_second}"
    );
    println!(
        "old leader: {} reconciles ({} cut off by the step-down), last renew sent {last_renew}, \
         stepped down {stepped_down}; new leader: took over {taken_over} ({:?} after the last \
         renew), {} reconciles",
        before.len(),
        before.iter().filter(|r| r.outcome == "NotLeading").count(),
        Duration::try_from(taken_over.duration_since(last_renew)).unwrap_or_default(),
        after.len(),
    );
    ns.delete().await;
}
