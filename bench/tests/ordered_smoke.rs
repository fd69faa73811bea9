//! Part 2 of the benchmark harness end to end at smoke size, so that `make test` catches a
//! harness that no longer works: two cells (1 ms at c=16, 1–20 ms at c=64), 200 records each,
//! one run of the worker and one of Confluent Parallel Consumer (fetched and compiled by its
//! build script on first use, as on a fresh CI machine), no thresholds. Debug binaries (the
//! test build's): the figures mean nothing, only that each contender handled every record,
//! measured its handler time, and the section renders. Outputs go to a temporary directory,
//! never over bench/results.

use std::path::Path;
use std::process::Command;

use pipewright_bench::ordered::report::OrderedResults;
use pipewright_bench::ordered::{self, Who};
use pipewright_bench::profile::Profile;

#[test]
fn bench_ordered_smoke_the_worker_and_parallel_consumer_handle_every_record_and_the_section_renders()
 {
    let bench = Path::new(env!("CARGO_BIN_EXE_pipewright-bench"));
    let worker = bench.with_file_name("pipewright-worker");
    assert!(
        worker.is_file(),
        "{} is missing: the smoke run uses the worker of the workspace's test build \
         (`cargo test --workspace --locked --no-run`, which `make test` runs)",
        worker.display()
    );
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-ordered-smoke-{}", std::process::id()));
    let results_path = dir.join("ordered.json");
    let output = Command::new(bench)
        .arg("ordered")
        .args(["--profile", "smoke"])
        .arg("--worker")
        .arg(&worker)
        .arg("--work-dir")
        .arg(dir.join("runs"))
        .arg("--results")
        .arg(&results_path)
        .output()
        .expect("run pipewright-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "pipewright-bench ordered --profile smoke failed ({}):\n{stderr}",
        output.status
    );

    let results = OrderedResults::read(&results_path).unwrap();
    let cells: Vec<ordered::Cell> = results.cells.iter().map(|c| c.cell).collect();
    assert_eq!(cells, ordered::cells(Profile::Smoke), "every cell ran");
    assert!(
        results.peer.starts_with("parallel-consumer-core 0."),
        "{}",
        results.peer
    );
    for cell in &results.cells {
        let who: Vec<Who> = cell.contenders.iter().map(|c| c.who).collect();
        assert_eq!(who, Who::ALL.to_vec(), "{}", cell.cell.label());
        for contender in &cell.contenders {
            assert_eq!(contender.runs.len(), 1);
            for run in &contender.runs {
                assert_eq!(run.records, 200, "{:?} handled every record", contender.who);
                assert!(run.window_s > 0.0, "{:?}: {run:?}", contender.who);
                // Each call takes at least its delay: a mean below it means the handler's
                // time was not measured (or not taken).
                assert!(
                    ordered::report::handler_mean_ms(run)
                        >= cell.cell.handler.delay_us as f64 / 1_000.0,
                    "{:?}: {run:?}",
                    contender.who
                );
            }
        }
    }
    assert_eq!(
        results.targets.len(),
        2 * results.cells.len(),
        "both targets of every cell"
    );

    // The render step finds the results file beside part 1's and appends the section.
    let text = pipewright_bench::render_further_sections(&dir, None, &dir, None).unwrap();
    assert!(text.contains("## 2. Key-ordered concurrency with a slow handler"));
    for cell in &results.cells {
        assert!(
            text.contains(&format!("| {} |", cell.cell.label())),
            "{} in the table",
            cell.cell.label()
        );
    }
    assert!(text.contains("| Parallel Consumer |"));
    assert!(text.contains("### What limits each figure"));
    let _ = std::fs::remove_dir_all(&dir);
}
