//! Section 3 of the benchmark (outbox relay) end to end at smoke size, so that `make test`
//! catches a harness that no longer works: a drain of 2,000 rows by pipewright's worker,
//! Debezium's embedded engine and the SQL claim loop, and 1 s of 200 rows/s from 8 writers for
//! each latency contender; one run each, no thresholds, no plot. Debug binaries (the test
//! build's); the figures mean nothing, only that every relay published every row as the same
//! record (key, payload, headers: the harness checks each) and the results and markdown were
//! written. Needs the test environment, with the Debezium jars it fetches
//! (`PIPEWRIGHT_DEBEZIUM_CLASSPATH`); without them the harness fails, it never skips. Outputs
//! go to a temporary directory, never over bench/results.

use std::path::Path;
use std::process::Command;

use pipewright_bench::outbox::relays::Relay;
use pipewright_bench::outbox::report::OutboxResults;
use pipewright_bench::outbox::{DRAIN, LATENCY, drain_rows};
use pipewright_bench::profile::Profile;

#[test]
fn bench_outbox_smoke_every_relay_publishes_every_row_and_the_section_is_written() {
    let bench = Path::new(env!("CARGO_BIN_EXE_pipewright-bench"));
    let worker = bench.with_file_name("pipewright-worker");
    assert!(
        worker.is_file(),
        "{} is missing: the smoke run uses the worker of the workspace's test build \
         (`cargo test --workspace --locked --no-run`, which `make test` runs)",
        worker.display()
    );
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-outbox-smoke-{}", std::process::id()));
    let (results_path, markdown) = (dir.join("outbox.json"), dir.join("benchmarks.md"));
    let output = Command::new(bench)
        .arg("outbox")
        .args(["--profile", "smoke"])
        .arg("--worker")
        .arg(&worker)
        .arg("--work-dir")
        .arg(dir.join("runs"))
        .arg("--results")
        .arg(&results_path)
        .arg("--markdown")
        .arg(&markdown)
        .output()
        .expect("run pipewright-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "pipewright-bench outbox --profile smoke failed ({}):\n{stderr}",
        output.status
    );

    let results = OutboxResults::read(&results_path).unwrap();
    let drained: Vec<Relay> = results.drain.iter().map(|d| d.relay).collect();
    assert_eq!(drained, DRAIN, "every drain contender ran");
    assert!(drained.contains(&Relay::Debezium));
    for d in &results.drain {
        assert_eq!(d.runs.len(), 1, "{}", d.label);
        assert_eq!(d.runs[0].rows, drain_rows(Profile::Smoke), "{}", d.label);
        assert!(d.runs[0].window_s > 0.0, "{}: {:?}", d.label, d.runs[0]);
    }
    let timed: Vec<Relay> = results.latency.iter().map(|l| l.relay).collect();
    assert_eq!(timed, LATENCY, "every latency contender ran");
    for l in &results.latency {
        assert_eq!(l.runs.len(), 1, "{}", l.label);
        assert!(l.runs[0].rows > 0, "{}: {:?}", l.label, l.runs[0]);
    }
    // Drain ÷ Debezium, drain ÷ SQL ceiling, p99 ÷ Debezium (5 ms), p99 with NOTIFY and with
    // NOTIFY and linger.ms=0 against 20 ms.
    assert_eq!(results.targets.len(), 5, "every target has both sides");

    let text = std::fs::read_to_string(&markdown).unwrap();
    assert!(text.contains("## 3. Outbox relay"));
    for label in results.drain.iter().map(|d| &d.label) {
        assert!(
            text.contains(&format!("| {label} |")),
            "{label} in the table"
        );
    }
    assert!(text.contains("### What limits each figure"));
    let _ = std::fs::remove_dir_all(&dir);
}
