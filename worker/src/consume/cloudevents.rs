//! CloudEvents in (`events.format: cloudEvents`): each record is a CloudEvent (1.0) as Kafka's
//! protocol binding writes it, in either mode:
//!
//! - **binary**: the context attributes are `ce_`-prefixed headers (`ce_specversion`, `ce_id`,
//!   `ce_source`, `ce_type`, `ce_time`, extensions...), `content-type` is `datacontenttype`,
//!   and the value is the data;
//! - **structured**: the value is one JSON object (`content-type:
//!   application/cloudevents+json`) holding the attributes and `data` (JSON) or
//!   `data_base64` (bytes).
//!
//! A record is binary when it has a `ce_specversion` header, structured otherwise. The event
//! type is the `type` attribute; a schema checks the data, the PostgreSQL sink maps the data's
//! fields; the HTTP sink sends the event's own attributes on (docs/consumer.md).

use std::collections::BTreeSet;
use std::fmt;

use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::events::Record;

/// The attributes every CloudEvent has.
const REQUIRED: [&str; 4] = ["specversion", "id", "source", "type"];
/// The binary mode's header prefix in Kafka.
const HEADER_PREFIX: &str = "ce_";

/// A CloudEvent read from a record.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudEvent {
    /// The context attributes (not the data), in the order read: strings, or the JSON number
    /// or boolean of an extension in structured mode.
    pub attributes: Vec<(String, serde_json::Value)>,
    /// The data: JSON text as it was written (`data`, or a binary value whose content type
    /// is JSON), or bytes (`data_base64` decoded, or another binary value).
    pub data: Option<Data>,
}

/// A CloudEvent's data.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// JSON text, byte for byte as the record held it.
    Json(Vec<u8>),
    /// Bytes.
    Bytes(Vec<u8>),
}

impl CloudEvent {
    /// Reads the CloudEvent of `record`; `Err` says why it is none.
    pub fn read(record: &Record) -> Result<CloudEvent, String> {
        let binary = record
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("ce_specversion"));
        let event = if binary {
            binary_mode(record)?
        } else {
            structured_mode(record)?
        };
        for name in REQUIRED {
            match event.attribute(name) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => {}
                _ => return Err(format!("a CloudEvent needs a non-empty string {name:?}")),
            }
        }
        if event.text("specversion") != Some("1.0") {
            return Err(format!(
                "specversion {:?}: only CloudEvents 1.0 is read",
                event.text("specversion").unwrap_or_default()
            ));
        }
        // Attribute names are lower-case ASCII letters and digits (the spec's rule; they
        // become `ce-<name>` HTTP headers).
        if let Some((name, _)) = event.attributes.iter().find(|(name, _)| {
            name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        }) {
            return Err(format!(
                "the attribute name {name:?} is not lower-case letters and digits"
            ));
        }
        Ok(event)
    }

    pub fn attribute(&self, name: &str) -> Option<&serde_json::Value> {
        self.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// A string attribute.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.attribute(name).and_then(|v| v.as_str())
    }

    /// The event type (`type`; [`CloudEvent::read`] checked it is there).
    pub fn event_type(&self) -> &str {
        self.text("type").unwrap_or_default()
    }

    /// The data as a JSON value, for a schema or a sink that maps fields (`null` when there
    /// is no data); `Err` when the data is not JSON.
    pub fn data_value(&self) -> Result<serde_json::Value, String> {
        match &self.data {
            None => Ok(serde_json::Value::Null),
            Some(Data::Json(text)) => {
                serde_json::from_slice(text).map_err(|e| format!("the data is not JSON: {e}"))
            }
            Some(Data::Bytes(_)) => Err(format!(
                "the data is not JSON (datacontenttype {:?})",
                self.text("datacontenttype").unwrap_or("none")
            )),
        }
    }
}

/// Whether a media type is JSON (`application/json`, `text/json`, `...+json`).
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

fn binary_mode(record: &Record) -> Result<CloudEvent, String> {
    let mut attributes = Vec::new();
    let mut seen = BTreeSet::new();
    for (key, value) in &record.headers {
        let lower = key.to_ascii_lowercase();
        let name = if let Some(name) = lower.strip_prefix(HEADER_PREFIX) {
            name.to_string()
        } else if lower == "content-type" {
            "datacontenttype".to_string()
        } else {
            continue;
        };
        let value = value
            .as_deref()
            .map(std::str::from_utf8)
            .transpose()
            .map_err(|_| format!("the header {key:?} is not UTF-8"))?
            .unwrap_or_default();
        if !seen.insert(name.clone()) {
            return Err(format!("the attribute {name:?} is given twice"));
        }
        attributes.push((name, serde_json::Value::String(value.to_string())));
    }
    let data = record.payload.clone().map(|bytes| {
        let json = attributes
            .iter()
            .find(|(k, _)| k == "datacontenttype")
            .and_then(|(_, v)| v.as_str())
            .is_some_and(is_json);
        if json {
            Data::Json(bytes)
        } else {
            Data::Bytes(bytes)
        }
    });
    if let Some(Data::Json(text)) = &data {
        serde_json::from_slice::<serde::de::IgnoredAny>(text)
            .map_err(|e| format!("the data is declared JSON but is not: {e}"))?;
    }
    Ok(CloudEvent { attributes, data })
}

fn structured_mode(record: &Record) -> Result<CloudEvent, String> {
    let payload = record
        .payload
        .as_deref()
        .ok_or("no value (a tombstone), and no ce_ headers")?;
    let text = std::str::from_utf8(payload).map_err(|e| format!("not JSON: not UTF-8: {e}"))?;
    let members = serde_json::from_str::<Members>(text)
        .map_err(|e| format!("not a structured CloudEvent (a JSON object): {e}"))?
        .0;
    let mut attributes = Vec::new();
    let mut data = None;
    for (name, raw) in members {
        let json = raw.get();
        match name.as_str() {
            "data" if json != "null" => data = Some(Data::Json(json.as_bytes().to_vec())),
            "data_base64" if json != "null" => {
                let encoded: String = serde_json::from_str(json)
                    .map_err(|_| "data_base64 is not a string".to_string())?;
                let bytes = BASE64_STANDARD
                    .decode(encoded.as_bytes())
                    .map_err(|e| format!("data_base64 is not base64: {e}"))?;
                data = Some(Data::Bytes(bytes));
            }
            "data" | "data_base64" => {}
            _ => {
                let value: serde_json::Value =
                    serde_json::from_str(json).map_err(|e| e.to_string())?;
                match value {
                    serde_json::Value::Null => {}
                    serde_json::Value::String(_)
                    | serde_json::Value::Number(_)
                    | serde_json::Value::Bool(_) => attributes.push((name, value)),
                    _ => {
                        return Err(format!(
                            "the attribute {name:?} is an object or an array (attributes are strings, numbers or booleans)"
                        ));
                    }
                }
            }
        }
    }
    Ok(CloudEvent { attributes, data })
}

/// The members of a JSON object in order, their values as raw text; a member named twice is
/// an error (a reader keeping the first and one keeping the last would see two events).
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Members, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut out: Vec<(String, Box<RawValue>)> = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, Box<RawValue>>()? {
                    if out.iter().any(|(k, _)| *k == key) {
                        return Err(serde::de::Error::custom(format!(
                            "the member {key:?} is given twice"
                        )));
                    }
                    out.push((key, value));
                }
                Ok(Members(out))
            }
        }
        deserializer.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn record(payload: Option<&[u8]>, headers: &[(&str, &str)]) -> Record {
        Record {
            topic: Arc::from("t"),
            partition: 0,
            offset: 7,
            key: None,
            payload: payload.map(<[u8]>::to_vec),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), Some(v.as_bytes().to_vec())))
                .collect(),
            timestamp_ms: None,
            trace: None,
        }
    }

    #[test]
    fn a_structured_cloudevent_gives_its_attributes_and_its_data_byte_for_byte() {
        let value = br#"{"specversion":"1.0","id":"a-1","source":"urn:shop","type":"order.placed",
            "time":"2026-12-03T10:00:00Z","traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "sequence":42,"datacontenttype":"application/json","data":{"order_id": "o-1" , "n":1.50}}"#;
        let event = CloudEvent::read(&record(Some(value), &[])).unwrap();
        assert_eq!(event.event_type(), "order.placed");
        assert_eq!(event.text("id"), Some("a-1"));
        assert_eq!(event.attribute("sequence"), Some(&serde_json::json!(42)));
        assert_eq!(
            event.data,
            Some(Data::Json(br#"{"order_id": "o-1" , "n":1.50}"#.to_vec())),
            "the data's text as it was"
        );
        assert_eq!(event.data_value().unwrap()["order_id"], "o-1");
        assert_eq!(event.attribute("data"), None);
    }

    #[test]
    fn a_binary_cloudevent_reads_the_ce_headers_and_the_value_as_data() {
        let headers = [
            ("ce_specversion", "1.0"),
            ("ce_id", "b-1"),
            ("ce_source", "/orders"),
            ("ce_type", "order.paid"),
            ("ce_partitionkey", "o-1"),
            ("content-type", "application/json; charset=utf-8"),
            ("other", "not an attribute"),
        ];
        let event = CloudEvent::read(&record(Some(br#"{"order_id":"o-1"}"#), &headers)).unwrap();
        assert_eq!(event.event_type(), "order.paid");
        assert_eq!(event.text("partitionkey"), Some("o-1"));
        assert_eq!(
            event.text("datacontenttype"),
            Some("application/json; charset=utf-8")
        );
        assert_eq!(event.attribute("other"), None);
        assert_eq!(
            event.data,
            Some(Data::Json(br#"{"order_id":"o-1"}"#.to_vec()))
        );
        let bytes = CloudEvent::read(&record(
            Some(&[0, 159, 146, 150]),
            &[
                ("ce_specversion", "1.0"),
                ("ce_id", "b-2"),
                ("ce_source", "/s"),
                ("ce_type", "blob"),
                ("content-type", "application/octet-stream"),
            ],
        ))
        .unwrap();
        assert_eq!(bytes.data, Some(Data::Bytes(vec![0, 159, 146, 150])));
        assert!(
            bytes.data_value().is_err(),
            "bytes are not JSON to a schema"
        );
    }

    #[test]
    fn data_base64_is_decoded_and_null_attributes_are_unset() {
        let value = br#"{"specversion":"1.0","id":"c","source":"s","type":"t","subject":null,"data_base64":"AJ+Slg=="}"#;
        let event = CloudEvent::read(&record(Some(value), &[])).unwrap();
        assert_eq!(event.data, Some(Data::Bytes(vec![0, 159, 146, 150])));
        assert_eq!(event.attribute("subject"), None);
    }

    #[test]
    fn what_is_not_a_cloudevent_is_refused_with_the_reason() {
        let cases: [(&[u8], &str); 9] = [
            (
                br#"{"specversion":"1.0","id":"1","source":"s","type":"t","Bad Name":"x"}"#,
                "lower-case",
            ),
            (br#"{"id":"1","source":"s","type":"t"}"#, "specversion"),
            (
                br#"{"specversion":"1.0","source":"s","type":"t"}"#,
                "\"id\"",
            ),
            (
                br#"{"specversion":"1.0","id":"1","source":"s","type":""}"#,
                "\"type\"",
            ),
            (
                br#"{"specversion":"0.3","id":"1","source":"s","type":"t"}"#,
                "1.0",
            ),
            (
                br#"{"specversion":"1.0","id":"1","source":"s","type":"t","type":"u"}"#,
                "twice",
            ),
            (
                br#"{"specversion":"1.0","id":"1","source":"s","type":"t","ext":{"a":1}}"#,
                "object",
            ),
            (
                br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"!"}"#,
                "base64",
            ),
            (br#"["specversion"]"#, "JSON object"),
        ];
        for (value, reason) in cases {
            let err = CloudEvent::read(&record(Some(value), &[])).unwrap_err();
            assert!(
                err.contains(reason),
                "{}: {err}",
                String::from_utf8_lossy(value)
            );
        }
        let err = CloudEvent::read(&record(None, &[])).unwrap_err();
        assert!(err.contains("tombstone"), "{err}");
        let declared_json = [
            ("ce_specversion", "1.0"),
            ("ce_id", "1"),
            ("ce_source", "s"),
            ("ce_type", "t"),
            ("content-type", "application/json"),
        ];
        let err = CloudEvent::read(&record(Some(b"{not json"), &declared_json)).unwrap_err();
        assert!(err.contains("declared JSON"), "{err}");
    }
}
