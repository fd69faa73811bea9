//! The bad-input catalogue of records (issue 15): every kind of record a producer can write
//! that is not a valid event, and the unusual ones that are, through the worker binary with
//! declared types, a schema, a size limit, a dead-letter topic and the Kafka sink. Each bad
//! record is dead-lettered once with its reason and its bytes unchanged, each valid one is
//! delivered once, and nothing is lost: outputs + dead letters = records produced, offset by
//! offset. `make chaos` writes the table of what was observed into docs/reliability.md.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::consume::{ConsumeWorker, TopicReader, group_reaches};
use pipewright_testenv::{create_topic, kafka_config, unique_name};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// One input: what it is, its key, value and headers, and the answer expected (`None`:
/// delivered; `Some(kind)`: dead-lettered with that `pipewright.error.kind`).
struct Case {
    what: &'static str,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    expect: Option<&'static str>,
}

fn case(what: &'static str, value: &[u8], expect: Option<&'static str>) -> Case {
    Case {
        what,
        key: Some(b"k".to_vec()),
        value: Some(value.to_vec()),
        headers: vec![],
        expect,
    }
}

const PLACED: &[u8] = br#"{"event_type":"order.placed","order_id":"o1","amount":10}"#;

fn cases() -> Vec<Case> {
    let deep = format!(
        r#"{{"event_type":"order.placed","order_id":"o1","x":{}1{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let long_type = format!(r#"{{"event_type":"{}"}}"#, "t".repeat(3_000));
    let oversized = format!(
        r#"{{"event_type":"order.placed","order_id":"o1","pad":"{}"}}"#,
        "x".repeat(5_000)
    );
    vec![
        // Valid, if unusual: delivered.
        case("a valid event", PLACED, None),
        Case {
            key: None,
            ..case("no key (null)", PLACED, None)
        },
        Case {
            key: Some(vec![0xff, 0xfe, 0x00]),
            ..case("a key that is not UTF-8", PLACED, None)
        },
        Case {
            headers: vec![("x-huge".into(), vec![b'h'; 64 * 1024])],
            ..case("a 64 KiB header", PLACED, None)
        },
        case(
            "non-ASCII text (emoji, right-to-left)",
            r#"{"event_type":"order.placed","order_id":"ø🦀عربي","amount":1}"#.as_bytes(),
            None,
        ),
        case(
            "fields the schema does not name",
            br#"{"event_type":"order.placed","order_id":"o1","extra":{"a":[1,2]}}"#,
            None,
        ),
        case(
            "whitespace and newlines around the object",
            b"\n\t {\"event_type\":\"order.placed\",\"order_id\":\"o1\"} \n",
            None,
        ),
        case(
            "a declared type without a schema",
            br#"{"event_type":"order.shipped"}"#,
            None,
        ),
        // Not an event: dead-lettered with the reason.
        case(
            "truncated JSON",
            br#"{"event_type":"order.pla"#,
            Some("malformed"),
        ),
        case("a JSON array", b"[1,2]", Some("malformed")),
        case("a JSON string", br#""order.placed""#, Some("malformed")),
        case("a JSON number", b"42", Some("malformed")),
        case("JSON null", b"null", Some("malformed")),
        case("no event_type", br#"{"order_id":"o1"}"#, Some("malformed")),
        case(
            "event_type a number",
            br#"{"event_type":7}"#,
            Some("malformed"),
        ),
        case(
            "event_type null",
            br#"{"event_type":null}"#,
            Some("malformed"),
        ),
        case(
            "event_type twice",
            br#"{"event_type":"order.placed","event_type":"order.shipped"}"#,
            Some("malformed"),
        ),
        case(
            "an undeclared type",
            br#"{"event_type":"order.cancelled"}"#,
            Some("unknown_type"),
        ),
        case(
            "an empty type",
            br#"{"event_type":""}"#,
            Some("unknown_type"),
        ),
        case(
            "a type of 3,000 characters",
            long_type.as_bytes(),
            Some("unknown_type"),
        ),
        case(
            "a type with control characters",
            br#"{"event_type":"order.placed\u0000\n"}"#,
            Some("unknown_type"),
        ),
        case(
            "a required field missing (schema)",
            br#"{"event_type":"order.placed","amount":1}"#,
            Some("schema_invalid"),
        ),
        case(
            "a field of the wrong type (schema)",
            br#"{"event_type":"order.placed","order_id":"o1","amount":"ten"}"#,
            Some("schema_invalid"),
        ),
        case(
            "over processing.maxRecordBytes (4096)",
            oversized.as_bytes(),
            Some("oversized"),
        ),
        case("an empty value", b"", Some("malformed")),
        Case {
            value: None,
            ..case("no value (a tombstone)", b"", Some("malformed"))
        },
        case(
            "binary bytes",
            &[0xff, 0xfe, 0x00, 0x01, 0x80],
            Some("malformed"),
        ),
        case(
            "a string that is not UTF-8",
            b"{\"event_type\":\"order.placed\",\"order_id\":\"\xe1\x80\"}",
            Some("malformed"),
        ),
        case(
            "text after the object",
            br#"{"event_type":"order.placed","order_id":"o1"} trailing"#,
            Some("malformed"),
        ),
        case(
            "two objects in one value",
            br#"{"event_type":"order.placed","order_id":"o1"}{"event_type":"order.placed"}"#,
            Some("malformed"),
        ),
        case("nested 200 deep", deep.as_bytes(), Some("malformed")),
        case(
            "NaN, which JSON has not",
            br#"{"event_type":"order.placed","order_id":"o1","amount":NaN}"#,
            Some("malformed"),
        ),
        case(
            "a UTF-8 byte-order mark first",
            b"\xef\xbb\xbf{\"event_type\":\"order.placed\",\"order_id\":\"o1\"}",
            Some("malformed"),
        ),
        case(
            "single quotes",
            b"{'event_type':'order.placed'}",
            Some("malformed"),
        ),
        case(
            "a comment",
            b"{\"event_type\":\"order.placed\",\"order_id\":\"o1\"} // ok",
            Some("malformed"),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_bad_input_catalogue_each_bad_record_is_dead_lettered_once_with_its_reason_each_valid_one_delivered_once_nothing_lost()
 {
    let topic = create_topic("ec-catalogue", 1).await;
    let dlq = create_topic("ec-catalogue-dlq", 1).await;
    let out = create_topic("ec-catalogue-out", 1).await;
    let group = unique_name("ec-catalogue");
    let cases = cases();
    let producer: FutureProducer = kafka_config()
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for c in &cases {
        let mut record = FutureRecord::<[u8], [u8]>::to(&topic);
        if let Some(k) = &c.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &c.value {
            record = record.payload(v.as_slice());
        }
        let mut headers = OwnedHeaders::new();
        for (k, v) in &c.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_slice()),
            });
        }
        record = record.headers(headers);
        producer
            .send(record, Duration::from_secs(30))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce {}: {e}", c.what));
    }
    let dead = TopicReader::start(&dlq, "read_committed");
    let delivered = TopicReader::start(&out, "read_committed");

    let schema = r#"{"order.placed": {"inline": {"type": "object", "required": ["order_id"],
        "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}}}}}"#;
    let sink = ["--sink", "kafka", "--sink-kafka-topic", &out];
    let args = [
        "--event-types",
        "order.placed,order.shipped",
        "--event-schemas",
        schema,
        "--max-record-bytes",
        "4096",
        "--dead-letter-topic",
        &dlq,
    ];
    let mut worker = ConsumeWorker::start_with(&topic, &group, &sink, &args, &[]);
    let total = cases.len() as i64;
    group_reaches(&group, &topic, 1, total).await;
    assert_eq!(worker.sigterm_and_wait().await, 0);
    let bad = cases.iter().filter(|c| c.expect.is_some()).count();
    let good = cases.len() - bad;
    // Outputs and dead letters are acknowledged before their offsets are committed: every
    // record is out, once, as one or the other (which, the table says).
    dead.caught_up().await;
    delivered.caught_up().await;
    let (letters, outputs) = (dead.snapshot(), delivered.snapshot());
    // Where each offset went: the dead letters by their original offset, the outputs by
    // their `pipewright.source` header.
    let mut letter_at: BTreeMap<i64, Vec<_>> = BTreeMap::new();
    for l in &letters {
        let offset: i64 = l.headers["pipewright.original.offset"].parse().unwrap();
        letter_at.entry(offset).or_default().push(l);
    }
    let mut output_at: BTreeMap<i64, Vec<_>> = BTreeMap::new();
    for o in &outputs {
        let offset: i64 = o.headers["pipewright.source"]
            .rsplit('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        output_at.entry(offset).or_default().push(o);
    }
    let mut table = String::from(
        "| # | record | answer | reason (`pipewright.error.message`, cut to 100 characters) |\n\
         |---:|---|---|---|\n",
    );
    let mut wrong = Vec::new();
    for (offset, c) in cases.iter().enumerate() {
        let offset = offset as i64;
        let letters = letter_at.remove(&offset).unwrap_or_default();
        let outputs = output_at.remove(&offset).unwrap_or_default();
        let (answer, reason) = match (c.expect, letters.as_slice(), outputs.as_slice()) {
            (None, [], [o]) => {
                if o.value != c.value || o.key_bytes != c.key {
                    wrong.push(format!("{}: delivered with other bytes", c.what));
                }
                ("delivered".to_string(), String::new())
            }
            (Some(kind), [l], []) => {
                if l.headers["pipewright.error.kind"] != kind {
                    wrong.push(format!(
                        "{}: dead-lettered as {}, expected {kind}",
                        c.what, l.headers["pipewright.error.kind"]
                    ));
                }
                if l.value != c.value || l.key_bytes != c.key {
                    wrong.push(format!("{}: dead-lettered with other bytes", c.what));
                }
                let message: String = l.headers["pipewright.error.message"]
                    .chars()
                    .take(100)
                    .collect();
                (
                    format!("dead-lettered: `{}`", l.headers["pipewright.error.kind"]),
                    message.replace('|', "\\|").replace('\n', " "),
                )
            }
            (_, letters, outputs) => {
                wrong.push(format!(
                    "{}: {} dead letters, {} outputs",
                    c.what,
                    letters.len(),
                    outputs.len()
                ));
                continue;
            }
        };
        table.push_str(&format!(
            "| {offset} | {} | {answer} | {reason} |\n",
            c.what
        ));
    }
    assert!(
        letter_at.is_empty() && output_at.is_empty(),
        "records of no case"
    );
    println!("{table}");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    pipewright_testenv::catalogue(
        "bad-input-records",
        &format!(
            "{} records, {good} delivered and {bad} dead-lettered, each once, every offset \
             committed: nothing lost.\n\n{table}",
            cases.len()
        ),
    );
}
