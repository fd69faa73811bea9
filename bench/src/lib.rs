//! `make bench`: pipewright's worker measured against peers in the same invocation, on the
//! same topic, as ratios (docs/benchmarks.md says why and what limits each figure).
//!
//! Part 1, consume throughput ([`consume`]): a topic of typed JSON events is written once;
//! Kafka's Java `ConsumerPerformance`, librdkafka's `rdkafka_performance`, a raw rust-rdkafka
//! loop and the worker in several configurations each read all of it, in rounds, and every
//! figure is the median of the rounds. Progress goes to stderr as `[bench] ...` lines.
//!
//! Part 2, key-ordered concurrency with a slow handler ([`ordered`]): the worker against
//! Confluent Parallel Consumer, as a fraction of the ideal rate.
//!
//! Part 3, the outbox relay ([`outbox`]): pipewright's outbox worker against Debezium's
//! embedded engine on the same table, database and Kafka.
//!
//! Parts 4 and 5, the operator and memory ([`operator`]): its reaction against the built-in
//! deployment controller, a cold start with many resources, and resident memory.

pub mod contenders;
pub mod operator;
pub mod ordered;
pub mod outbox;
pub mod process;
pub mod profile;
pub mod report;
pub mod workload;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, ensure};

use crate::contenders::{Contender, Run, Setup, Topic};
use crate::profile::Profile;
use crate::report::{ContenderResult, Figures, Machine, Results, Versions, Workload};

/// The variables `tests/env/up` prints, which the harness needs.
pub const HOW_TO_START: &str = "start the test environment first: `eval \"$(tests/env/up)\"` \
     from the repository root (or run `make bench`, which does it for you)";

/// A progress line on stderr.
pub fn progress(message: &str) {
    eprintln!("[bench] {message}");
}

/// The sections of docs/benchmarks.md after part 1, each rendered (in order) when its results
/// file lies in `results_dir` beside part 1's: the markdown to append to part 1's. Their plots
/// (with `plot_beside`, part 1's plot) go beside it as `bench-<name>.png`, linked relative to
/// `markdown_dir`.
pub fn render_further_sections(
    results_dir: &Path,
    plot_beside: Option<&Path>,
    markdown_dir: &Path,
    worker_load_rss_mib: Option<f64>,
) -> Result<String> {
    let plot_path = |name: &str| plot_beside.map(|p| p.with_file_name(format!("bench-{name}.png")));
    let link = |png: &Path| {
        png.strip_prefix(markdown_dir)
            .unwrap_or(png)
            .display()
            .to_string()
    };
    let mut md = String::new();
    let ordered = results_dir.join("ordered.json");
    if ordered.is_file() {
        let results = ordered::report::OrderedResults::read(&ordered)?;
        let png = plot_path("ordered");
        if let Some(png) = &png {
            ordered::report::plot(&results, png)?;
            progress(&format!("plot: {}", png.display()));
        }
        md.push('\n');
        md.push_str(&ordered::report::markdown(
            &results,
            png.as_deref().map(link).as_deref(),
        ));
    }
    let outbox = results_dir.join("outbox.json");
    if outbox.is_file() {
        let results = outbox::report::OutboxResults::read(&outbox)?;
        let png = plot_path("outbox");
        if let Some(png) = &png {
            outbox::report::plot(&results, png)?;
            progress(&format!("plot: {}", png.display()));
        }
        md.push('\n');
        md.push_str(&outbox::report::markdown(
            &results,
            png.as_deref().map(link).as_deref(),
        ));
    }
    let operator = results_dir.join("operator.json");
    if operator.is_file() {
        let results = operator::report::OperatorResults::read(&operator)?;
        md.push('\n');
        md.push_str(&operator::report::markdown(&results, worker_load_rss_mib));
    }
    Ok(md)
}

/// The binaries and services, from the environment of `tests/env/up` and the paths given.
pub fn setup_from_env(
    worker: PathBuf,
    worker_args: Vec<String>,
    raw_consumer: PathBuf,
    work_dir: PathBuf,
) -> Result<Setup> {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .with_context(|| format!("{name} is not set: {HOW_TO_START}"))
    };
    for (what, path) in [("worker", &worker), ("raw consumer", &raw_consumer)] {
        ensure!(
            path.is_file(),
            "the {what} binary {} does not exist (build it: cargo build --release --locked \
             -p pipewright-worker -p pipewright-bench)",
            path.display()
        );
    }
    std::fs::create_dir_all(&work_dir).with_context(|| format!("create {}", work_dir.display()))?;
    Ok(Setup {
        bootstrap: var("KAFKA_BOOTSTRAP_SERVERS")?,
        database_url: var("DATABASE_URL")?,
        kafka_classpath: var("PIPEWRIGHT_KAFKA_CLASSPATH")?,
        java: PathBuf::from(std::env::var("JAVA").unwrap_or_else(|_| "java".into())),
        worker,
        worker_args,
        raw_consumer,
        rdkafka_performance: PathBuf::from(env!("PIPEWRIGHT_RDKAFKA_PERFORMANCE")),
        work_dir,
    })
}

/// Runs the consume benchmark: fills a topic, runs every contender of `profile` once per
/// round, and returns the results (medians and targets computed). Fails on the first run that
/// fails or does not consume every record.
pub fn consume(profile: Profile, setup: &Setup) -> Result<Results> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let started_at = chrono::Utc::now();
    let clock = Instant::now();
    let invocation = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let topic = Topic {
        name: format!("bench-consume-{invocation}"),
        records: profile.records(),
    };
    let contenders = profile.contenders();
    progress(&format!(
        "consume throughput, {} profile: {} records, {} contenders × {} runs; logs in {}",
        profile.name(),
        topic.records,
        contenders.len(),
        profile.consume_runs(),
        setup.work_dir.display()
    ));

    rt.block_on(workload::create_topic(
        &setup.bootstrap,
        &topic.name,
        workload::PARTITIONS,
    ))?;
    let result: Result<(Workload, Vec<Vec<Run>>)> = (|| {
        let fill = Instant::now();
        progress(&format!(
            "writing {} records to {}",
            topic.records, topic.name
        ));
        workload::fill(&setup.bootstrap, &topic.name, topic.records)?;
        let workload = workload_of(&topic, fill.elapsed().as_secs_f64());
        progress(&format!("written in {:.1} s", workload.fill_s));
        let runs = rounds(
            profile,
            setup,
            &topic,
            &workload,
            &contenders,
            &invocation,
            &rt,
        )?;
        Ok((workload, runs))
    })();
    rt.block_on(workload::delete_topics(&setup.bootstrap, &[&topic.name]));
    let (workload, mut runs) = result?;

    let contenders: Vec<ContenderResult> = contenders
        .iter()
        .zip(runs.iter_mut())
        .map(|(c, runs)| ContenderResult::new(*c, std::mem::take(runs), &workload))
        .collect();
    let targets = report::targets(&contenders);
    Ok(Results {
        benchmark: "consume".into(),
        profile,
        started_at: started_at.format("%Y-%m-%d %H:%M").to_string(),
        duration_s: clock.elapsed().as_secs_f64(),
        machine: machine(),
        versions: versions(setup),
        workload,
        runs_per_contender: profile.consume_runs(),
        worker_extra_args: setup.worker_args.clone(),
        contenders,
        targets,
    })
}

/// Every contender once per round; the order rotates by one per round.
fn rounds(
    profile: Profile,
    setup: &Setup,
    topic: &Topic,
    workload: &Workload,
    contenders: &[Contender],
    invocation: &str,
    rt: &tokio::runtime::Runtime,
) -> Result<Vec<Vec<Run>>> {
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); contenders.len()];
    let total = contenders.len() * profile.consume_runs();
    let mut done = 0;
    for round in 0..profile.consume_runs() {
        for k in 0..contenders.len() {
            let i = (k + round) % contenders.len();
            let contender = &contenders[i];
            done += 1;
            let run_id = format!("{invocation}-{}-r{round}", contender.id());
            let clock = Instant::now();
            let run = contenders::run_once(setup, topic, contender, round, &run_id, rt)
                .with_context(|| format!("{} (run {run_id})", contender.label()))?;
            let f = Figures::of_run(&run, workload);
            progress(&format!(
                "{done:>3}/{total} round {}/{} {:<45} {:>9.0} records/s {:>6.1} MB/s {:>6.2} CPU s/M {:>5.2} cores {:>5.0} MiB  ({:.1} s)",
                round + 1,
                profile.consume_runs(),
                contender.label(),
                f.records_per_s,
                f.mb_per_s,
                f.cpu_s_per_m_records,
                f.cores_busy,
                f.peak_rss_mib,
                clock.elapsed().as_secs_f64()
            ));
            runs[i].push(run);
        }
    }
    Ok(runs)
}

fn workload_of(topic: &Topic, fill_s: f64) -> Workload {
    Workload {
        records: topic.records,
        partitions: workload::PARTITIONS,
        keys: workload::KEYS,
        key_bytes: workload::KEY_BYTES,
        value_bytes: workload::VALUE_BYTES,
        event_types: workload::EVENT_TYPES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        compression: "none".into(),
        fill_s,
    }
}

/// The machine, for the results.
pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".into(), |(_, v)| v.trim().to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        memory_gib: (mem_kib / (1024.0 * 1024.0)).round(),
    }
}

/// The first line a command prints (stdout, then stderr); `None` when it cannot run.
pub fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    text.lines().next().map(|l| l.trim().to_string())
}

/// `git describe --always --dirty` of the current directory: what the binaries were built from.
pub fn git_describe() -> String {
    command_output("git", &["describe", "--always", "--dirty"]).unwrap_or_else(|| "unknown".into())
}

/// The versions of what ran, for the results.
pub fn versions(setup: &Setup) -> Versions {
    let kafka = kafka_version(&setup.kafka_classpath).unwrap_or_else(|| "unknown".into());
    Versions {
        worker_git: git_describe(),
        librdkafka: rdkafka::util::get_rdkafka_version().1,
        kafka,
        java: command_output(&setup.java.to_string_lossy(), &["-version"])
            .unwrap_or_else(|| "unknown".into()),
    }
}

/// The version in the name of the `kafka-clients-<version>.jar` on the classpath.
fn kafka_version(classpath: &str) -> Option<String> {
    classpath.split(':').find_map(|entry| {
        let dir = Path::new(entry.trim_end_matches('*'));
        let names: Vec<String> = if dir.is_dir() {
            std::fs::read_dir(dir)
                .ok()?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        } else {
            vec![dir.file_name()?.to_string_lossy().to_string()]
        };
        names.iter().find_map(|n| {
            n.strip_prefix("kafka-clients-")?
                .strip_suffix(".jar")
                .map(str::to_string)
        })
    })
}
