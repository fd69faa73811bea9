//! The event decoder on arbitrary record values: it never panics, a record it accepts is a
//! JSON object whose `event_type` is the type it reports, and the fast path (the type only,
//! used when no sink needs the body) accepts exactly what the full parse accepts, with the
//! same type and the same kind of rejection; the typed decoder (a `#[serde(tag =
//! "event_type")]` enum) accepts only what the generic one accepts.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pipewright_worker::consume::events::{
    DeclaredTypes, JsonSchema, Record, decode_tagged, parse_event,
};

/// A typed application's events, as `decode_tagged` reads them.
#[derive(Debug, serde::Deserialize)]
#[serde(tag = "event_type")]
#[allow(dead_code)]
enum Typed {
    #[serde(rename = "a")]
    A { n: Option<u32> },
    #[serde(rename = "b")]
    B { n: u32 },
}

fn declared() -> &'static DeclaredTypes {
    static TYPES: OnceLock<DeclaredTypes> = OnceLock::new();
    TYPES.get_or_init(|| {
        let schema = serde_json::json!({
            "type": "object", "required": ["n"],
            "properties": {"n": {"type": "integer", "minimum": 0}}
        });
        DeclaredTypes::names(["a".to_string(), "b".to_string()])
            .with_schema("b", Box::new(JsonSchema::compile(&schema).unwrap()))
    })
}

fn check(types: &DeclaredTypes, record: &Record) {
    let fast = types.decode(record, false);
    let full = types.decode(record, true);
    match (&fast, &full) {
        (Ok(f), Ok(b)) => {
            assert_eq!(
                f.event_type, b.event_type,
                "fast and full decode disagree on the type"
            );
            let body = b.body.as_ref().expect("the full decode keeps the body");
            assert_eq!(body["event_type"].as_str(), Some(b.event_type.as_str()));
        }
        (Err(f), Err(b)) => assert_eq!(f.kind, b.kind, "fast and full decode reject differently"),
        _ => panic!("fast and full decode disagree: {fast:?} against {full:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let record = Record {
        topic: "t".into(),
        partition: 0,
        offset: 0,
        key: None,
        payload: Some(data.to_vec()),
        headers: Vec::new(),
        timestamp_ms: None,
        trace: None,
    };
    if let Ok((event_type, value)) = parse_event(&record) {
        assert!(value.is_object());
        assert_eq!(value["event_type"].as_str(), Some(event_type.as_str()));
    }
    // The typed decoder accepts only what the generic one accepts, with the same type.
    if let Ok(typed) = decode_tagged::<Typed>(&record) {
        let (event_type, _) = parse_event(&record).expect("a typed event is a generic one");
        let expected = match typed {
            Typed::A { .. } => "a",
            Typed::B { .. } => "b",
        };
        assert_eq!(event_type, expected);
    }
    check(&DeclaredTypes::any(), &record);
    check(declared(), &record);
});
