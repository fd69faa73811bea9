//! The operator part of the benchmark harness (parts 4 and 5) end to end at smoke size, so
//! that `make test` catches a harness that no longer works: 3 timed creates of each kind, 5
//! EventConsumers and 2 Outboxes from a cold start, a 2 s steady window; no thresholds. The
//! operator is the release binary `tests/env/images` builds (`make test` runs it first), the
//! worker the test build's. Outputs go to a temporary directory, never over bench/results.

use std::path::Path;
use std::process::Command;

use pipewright_bench::operator::report::OperatorResults;

#[test]
fn bench_smoke_operator_reaction_scale_and_memory_are_measured_and_rendered() {
    let bench = Path::new(env!("CARGO_BIN_EXE_pipewright-bench"));
    let worker = bench.with_file_name("pipewright-worker");
    // <target>/debug/pipewright-bench → <target>/release/pipewright-operator
    let operator = bench
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("release/pipewright-operator");
    assert!(
        operator.is_file(),
        "{} is missing: build it with `tests/env/images` (make test runs it first)",
        operator.display()
    );
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-smoke-operator-{}", std::process::id()));
    let (results_path, markdown) = (dir.join("operator.json"), dir.join("benchmarks.md"));
    let output = Command::new(bench)
        .arg("operator")
        .args(["--profile", "smoke"])
        .arg("--operator")
        .arg(&operator)
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
        "pipewright-bench operator --profile smoke failed ({}):\n{stderr}",
        output.status
    );
    let r = OperatorResults::read(&results_path).unwrap();
    assert_eq!(r.reaction.pipewright.samples_ms.len(), 3);
    assert_eq!(r.reaction.builtin.samples_ms.len(), 3);
    assert!(r.reaction.pipewright.samples_ms.iter().all(|ms| *ms > 0.0));
    assert_eq!((r.scale.event_consumers, r.scale.outboxes), (5, 2));
    assert_eq!(
        (r.scale.applied_at_end, r.scale.written_at_end),
        (7, 7),
        "the cold start converged: {:?}",
        r.scale
    );
    assert!(r.scale.peak_rss_bytes > 0 && r.memory.worker_idle_rss_bytes > 0);
    let text = std::fs::read_to_string(&markdown).unwrap();
    assert!(text.contains("## 4. Operator") && text.contains("## 5. Memory"));
    let _ = std::fs::remove_dir_all(&dir);
}
