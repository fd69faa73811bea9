//! The benchmark harness end to end at smoke size, so that `make test` catches a harness that
//! no longer works: 3,000 records, one run of every contender (Java ConsumerPerformance,
//! rdkafka_performance, the raw Rust loop, the worker in every ordering × concurrency with the
//! no-op sink and with every other sink), no thresholds, no plot. Debug binaries (the test
//! build's); the figures mean nothing, only that each contender consumed every record and the
//! results and markdown were written. Outputs go to a temporary directory, never over
//! bench/results.

use std::path::Path;
use std::process::Command;

use pipewright_bench::contenders::Contender;
use pipewright_bench::profile::Profile;
use pipewright_bench::report::Results;

#[test]
fn bench_smoke_every_contender_consumes_every_record_and_the_report_is_written() {
    let bench = Path::new(env!("CARGO_BIN_EXE_pipewright-bench"));
    let worker = bench.with_file_name("pipewright-worker");
    assert!(
        worker.is_file(),
        "{} is missing: the smoke run uses the worker of the workspace's test build \
         (`cargo test --workspace --locked --no-run`, which `make test` runs)",
        worker.display()
    );
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-smoke-{}", std::process::id()));
    let (results_path, markdown) = (dir.join("consume.json"), dir.join("benchmarks.md"));
    let output = Command::new(bench)
        .arg("consume")
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
        "pipewright-bench consume --profile smoke failed ({}):\n{stderr}",
        output.status
    );

    let results = Results::read(&results_path).unwrap();
    let expected = Profile::Smoke.contenders();
    let ran: Vec<Contender> = results.contenders.iter().map(|c| c.contender).collect();
    assert_eq!(ran, expected, "every contender of the smoke profile ran");
    assert!(expected.contains(&Contender::JavaConsumerPerformance));
    assert!(expected.contains(&Contender::RdkafkaPerformance));
    assert!(expected.contains(&Contender::RawRust));
    for contender in &results.contenders {
        assert_eq!(contender.runs.len(), 1, "{}", contender.label);
        for run in &contender.runs {
            assert_eq!(
                run.records, 3_000,
                "{} consumed every record",
                contender.label
            );
            assert!(run.window_s > 0.0, "{}: {run:?}", contender.label);
            assert!(run.peak_rss_bytes > 0, "{}: {run:?}", contender.label);
        }
    }
    assert_eq!(results.targets.len(), 3, "every target has both sides");

    let text = std::fs::read_to_string(&markdown).unwrap();
    for c in &results.contenders {
        assert!(
            text.contains(&format!("| {} |", c.label)),
            "{} in the table",
            c.label
        );
    }
    assert!(text.contains("### Targets"));
    assert!(text.contains("### What limits each figure"));
    let _ = std::fs::remove_dir_all(&dir);
}
