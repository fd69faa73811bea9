//! The peer of part 2: Confluent Parallel Consumer (`io.confluent.parallelconsumer:
//! parallel-consumer-core`, the version pinned in `bench/java/parallel-consumer/pom.xml`), run
//! by a small Java program (`ParallelConsumerPeer.java` beside that pom): KEY ordering,
//! `maxConcurrency` = the cell's concurrency, a handler that blocks its thread for the cell's
//! time, the library's defaults otherwise. `bench/java/parallel-consumer/build` fetches it
//! with Maven into the cache and compiles the program (once per version of those files).
//!
//! Its window is its own: from its first handler call's start to its last one's end (wall
//! clock, printed); CPU is read from `/proc` over the same window, peak RSS is `VmHWM`. A run
//! counts only when it handled every record and the group's committed offsets reach the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use serde::Deserialize;

use super::Cell;
use crate::contenders::{self, Run, Setup, Topic};
use crate::process::{Proc, tail};

/// The main class of the peer program.
const MAIN_CLASS: &str = "io.pipewright.bench.ParallelConsumerPeer";

/// The built peer.
#[derive(Debug, Clone)]
pub struct Peer {
    classpath: String,
}

/// The line the peer prints when it is done.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PeerReport {
    pub records: u64,
    pub handler_calls: u64,
    pub window_s: f64,
    pub first_epoch_ms: f64,
    pub last_epoch_ms: f64,
    pub handler_mean_ms: f64,
    /// The times its handler was set to take, summed (nanoseconds).
    pub set_wait_ns: u64,
}

impl PeerReport {
    /// The last line of the peer's stdout that is its JSON report.
    pub fn parse(out: &str) -> Result<PeerReport> {
        let line = out
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .context("no JSON report line")?;
        serde_json::from_str(line).with_context(|| format!("unexpected report {line:?}"))
    }
}

/// `bench/java/parallel-consumer/`.
fn java_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("java/parallel-consumer")
}

impl Peer {
    /// Fetches and compiles the peer (its build script; a no-op when the cache is current).
    pub fn build(setup: &Setup) -> Result<Peer> {
        let script = java_dir().join("build");
        let log = setup.work_dir.join("parallel-consumer-build.log");
        let stderr = std::fs::File::create(&log)?;
        let out = Command::new(&script)
            .stderr(stderr)
            .output()
            .with_context(|| format!("run {}", script.display()))?;
        ensure!(
            out.status.success(),
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            tail(&log, 30)
        );
        let classpath = String::from_utf8(out.stdout)?.trim().to_string();
        ensure!(
            !classpath.is_empty(),
            "{} printed no classpath",
            script.display()
        );
        Ok(Peer { classpath })
    }

    /// `parallel-consumer-core <version> (kafka-clients <version>)`, from the jars' names.
    pub fn version(&self) -> String {
        let jar = |prefix: &str| -> Option<String> {
            let dir = self.classpath.split(':').find(|e| e.ends_with("lib/*"))?;
            let dir = Path::new(dir.trim_end_matches('*'));
            std::fs::read_dir(dir).ok()?.find_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let version = name.strip_prefix(prefix)?.strip_suffix(".jar")?;
                version
                    .starts_with(|c: char| c.is_ascii_digit())
                    .then(|| version.to_string())
            })
        };
        format!(
            "parallel-consumer-core {} (kafka-clients {})",
            jar("parallel-consumer-core-").unwrap_or_else(|| "unknown".into()),
            jar("kafka-clients-").unwrap_or_else(|| "unknown".into())
        )
    }

    /// One run on `topic` in a fresh group.
    pub fn run(
        &self,
        setup: &Setup,
        topic: &Topic,
        cell: Cell,
        round: usize,
        run_id: &str,
    ) -> Result<Run> {
        let group = format!("bench-{run_id}");
        let log = setup.work_dir.join(format!("{run_id}.log"));
        let stdout = setup.work_dir.join(format!("{run_id}.out"));
        let timeout = contenders::run_timeout(topic);
        let mut command = Command::new(&setup.java);
        contenders::env_java_opts(&mut command);
        command
            .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
            .arg("-cp")
            .arg(&self.classpath)
            .arg(MAIN_CLASS)
            .args(["--bootstrap", &setup.bootstrap])
            .args(["--topic", &topic.name])
            .args(["--group", &group])
            .args(["--records", &topic.records.to_string()])
            .args(["--concurrency", &cell.concurrency.to_string()])
            .args(["--delay-us", &cell.handler.delay_us.to_string()])
            .args(["--jitter-us", &cell.handler.jitter_us.to_string()])
            .args(["--timeout-s", &timeout.as_secs().to_string()]);
        let mut proc = Proc::spawn("Parallel Consumer", command, Some(&stdout), &log)?;
        let status = proc.wait_sampling(timeout + Duration::from_secs(30))?;
        let out = std::fs::read_to_string(&stdout).unwrap_or_default();
        ensure!(
            status.success(),
            "the Parallel Consumer peer failed ({status}):\n{out}\n{}",
            tail(&log, 20)
        );
        let report = PeerReport::parse(&out)?;
        ensure!(
            report.records == topic.records && report.handler_calls == topic.records,
            "the Parallel Consumer peer handled {} records ({} calls) of {}",
            report.records,
            report.handler_calls,
            topic.records
        );
        let set = cell.handler.set_total(topic.records);
        ensure!(
            u128::from(report.set_wait_ns) == set.as_nanos(),
            "the Parallel Consumer peer was set to wait {} ns in all, the worker {} ns for the \
             same records: jitterOf (ParallelConsumerPeer.java) and jitter_of (the worker's \
             discard sink) differ",
            report.set_wait_ns,
            set.as_nanos()
        );
        contenders::check_committed(setup, topic, &group)?;
        let at = |ms: f64| UNIX_EPOCH + Duration::from_secs_f64(ms / 1_000.0);
        let (first, last) = (at(report.first_epoch_ms), at(report.last_epoch_ms));
        let mut extra = BTreeMap::new();
        extra.insert("handler_mean_s".into(), report.handler_mean_ms / 1_000.0);
        Ok(Run {
            round,
            records: report.records,
            window_s: report.window_s,
            cpu_s: proc.cpu_at(last) - proc.cpu_at(first),
            cpu_scope: "window".into(),
            cpu_process_s: proc.cpu_at(last),
            peak_rss_bytes: proc.peak_rss_bytes(),
            extra,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_is_the_last_json_line() {
        let out = "some log line\n{\"records\": 2000, \"handler_calls\": 2000, \"window_s\": 1.5, \
                   \"first_epoch_ms\": 1000.0, \"last_epoch_ms\": 2500.0, \"handler_mean_ms\": 1.061, \
                   \"set_wait_ns\": 2000000000}\n";
        let r = PeerReport::parse(out).unwrap();
        assert_eq!(r.records, 2000);
        assert_eq!(r.handler_mean_ms, 1.061);
        assert!(PeerReport::parse("no report\n").is_err());
    }
}
