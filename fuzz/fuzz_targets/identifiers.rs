//! Identifiers and messages that cross a boundary as text, from arbitrary strings: outbox
//! table names (into SQL), record coordinates and the worker's termination message (worker →
//! operator). Parsing never panics; what parses renders back to the same value; a table name
//! that parses quotes into one SQL identifier per part.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipewright_crds::termination::{RecordRef, Termination};
use pipewright_worker::outbox::Table;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(table) = Table::parse(text) {
        let quoted = table.quoted();
        // Each part is one double-quoted identifier: no quote of the input survives unescaped.
        let inner: Vec<&str> = quoted.split("\".\"").collect();
        assert!(inner.len() <= 2, "{quoted}");
        assert!(quoted.starts_with('"') && quoted.ends_with('"'), "{quoted}");
        for part in inner {
            let part = part.trim_matches('"');
            assert!(!part.replace("\"\"", "").contains('"'), "{quoted}");
        }
    }
    if let Ok(record) = text.parse::<RecordRef>() {
        assert_eq!(record.to_string().parse::<RecordRef>(), Ok(record));
    }
    if let Some(t) = Termination::parse(text) {
        assert_eq!(Termination::parse(&t.message()), Some(t));
    }
});
