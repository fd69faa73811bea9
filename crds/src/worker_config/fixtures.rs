//! Configurations that set every field (one per sink, one per outbox destination): for the
//! tests that keep the flags, the operator's rendering and docs/worker-config.md complete.

use super::*;

fn kafka() -> Kafka {
    Kafka {
        bootstrap_servers: vec!["k:9092".into()],
        config: [("linger.ms".to_string(), "5".to_string())].into(),
        secret_dir: Some("/s/kafka".into()),
        security: [("security.protocol".to_string(), "SASL_SSL".to_string())].into(),
        secret_files: [(
            "sasl.password".to_string(),
            "/s/kafka-sasl-password/sasl.password".into(),
        )]
        .into(),
    }
}

/// Every field of [`Consume`], once with each sink.
pub fn every_field_consume() -> Vec<Consume> {
    let base = |sink| Consume {
        kafka: kafka(),
        topics: vec!["a".into()],
        group_id: "g".into(),
        group_instance_id: Some("i".into()),
        initial_offset: InitialOffset::Latest,
        events: Events {
            types: vec![
                EventType {
                    name: "x".into(),
                    schema: Some(SchemaSource::File("/s/x.json".into())),
                },
                EventType {
                    name: "y".into(),
                    schema: Some(SchemaSource::Inline(serde_json::json!({"type": "object"}))),
                },
            ],
            on_unknown_type: UnknownTypePolicy::Skip,
            type_from: Some(EventTypeFrom {
                header: Some("type".into()),
                field: None,
            }),
            format: EventFormat::Json,
        },
        processing: Processing {
            dead_letter_topic: Some("d".into()),
            ..Processing::default()
        },
        sink,
    };
    let mut every = vec![
        base(Sink::Log(LogSink { payload: false })),
        base(Sink::Http(HttpSink {
            url: "http://h/".into(),
            method: HttpMethod::Put,
            timeout: Duration::from_secs(1),
            headers: [("X-A".to_string(), "1".to_string())].into(),
            headers_secret_dir: Some("/s/h".into()),
            idempotency_header: "X-Id".into(),
            content_mode: ContentMode::Structured,
            ce_source: Some("urn:s".into()),
            ce_type: Some("t".into()),
            forward_headers: vec!["traceparent".into()],
        })),
        base(Sink::Kafka(KafkaSink {
            topic: "o".into(),
            transactional: true,
            transactional_id: Some("tx".into()),
        })),
        base(Sink::Postgres(PostgresSink {
            dsn_file: Some("/s/db".into()),
            table: "t".into(),
            upsert_key: vec!["a".into()],
            offsets_table: "o".into(),
        })),
        base(Sink::Discard(DiscardSink {
            delay: Duration::from_millis(1),
            jitter: Duration::from_millis(2),
        })),
    ];
    // Values delivered as they are, typed by the header (no schemas: they are not JSON):
    // with the discard sink.
    every[4].events.format = EventFormat::Raw;
    for t in &mut every[4].events.types {
        t.schema = None;
    }
    // Dead letters over HTTP instead of to a topic (at most one of the two): with the HTTP
    // sink.
    every[1].processing.dead_letter_topic = None;
    every[1].processing.dead_letter_http = Some(DeadLetterHttp {
        url: "http://d/".into(),
        timeout: Duration::from_secs(2),
        headers_secret_dir: Some("/s/d".into()),
    });
    // The other way to name the type (exactly one is set): with the PostgreSQL sink.
    every[3].events.type_from = Some(EventTypeFrom {
        header: None,
        field: Some("kind".into()),
    });
    every
}

/// Every field of [`Outbox`], once with each destination.
pub fn every_field_outbox() -> Vec<Outbox> {
    let base = Outbox {
        database: Database {
            url_file: Some("/s/db".into()),
        },
        table: "t".into(),
        topic: Some("o".into()),
        topic_template: None,
        kafka: kafka(),
        poll: Poll::default(),
        cleanup: Cleanup {
            policy: CleanupPolicy::MarkPublished,
            retention: Some(Duration::from_secs(3600)),
        },
        lock_retry_interval: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(30),
    };
    vec![
        base.clone(),
        Outbox {
            topic: None,
            topic_template: Some("o.{aggregatetype}".into()),
            ..base
        },
    ]
}
