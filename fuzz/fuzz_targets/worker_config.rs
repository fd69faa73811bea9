//! The worker's configuration files (`consume` and `outbox`, what the operator renders into the
//! ConfigMap) from arbitrary text: parsing never panics, and a file that parses renders back
//! to text that parses to the same configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipewright_crds::worker_config::{self, Consume, Outbox};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(consume) = worker_config::from_json::<Consume>(text) {
        let again: Consume = worker_config::from_json(&worker_config::to_json(&consume))
            .expect("a rendered consume configuration parses");
        assert_eq!(again, consume);
    }
    if let Ok(outbox) = worker_config::from_json::<Outbox>(text) {
        let again: Outbox = worker_config::from_json(&worker_config::to_json(&outbox))
            .expect("a rendered outbox configuration parses");
        assert_eq!(again, outbox);
    }
});
