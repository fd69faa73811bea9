//! `pipewright-bench`: runs the benchmarks and renders docs/benchmarks.md and the plot from
//! the results file. `make bench` (through `bench/run`) is the usual way in.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use pipewright_bench::operator::{OperatorSetup, image_archives};
use pipewright_bench::outbox::{self, OutboxSetup};
use pipewright_bench::profile::Profile;
use pipewright_bench::report::{self, Results};
use pipewright_bench::{HOW_TO_START, progress, setup_from_env, workload};

/// pipewright's benchmarks: ratios against peers measured in the same invocation.
#[derive(Debug, Parser)]
#[command(name = "pipewright-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Consume throughput: fill a topic, run every contender, write the results, render.
    /// Needs the test environment's variables (`eval "$(tests/env/up)"`).
    Consume {
        #[arg(long, value_enum, default_value = "full")]
        profile: Profile,
        /// The worker binary (default: `pipewright-worker` beside this one).
        #[arg(long)]
        worker: Option<PathBuf>,
        /// What the worker was built from, for the results (default: `git describe --always
        /// --dirty` of the current directory).
        #[arg(long)]
        worker_git: Option<String>,
        /// An extra flag for every worker run (repeatable), e.g.
        /// `--worker-arg=--commit-interval=500ms`; recorded in the results.
        #[arg(long = "worker-arg", allow_hyphen_values = true)]
        worker_args: Vec<String>,
        /// Logs of every run.
        #[arg(long, default_value = "target/bench")]
        work_dir: PathBuf,
        #[command(flatten)]
        output: Output,
    },
    /// Key-ordered concurrency with a slow handler (part 2): the worker against Confluent
    /// Parallel Consumer. Writes its results file; `render` (or the next `consume`) renders
    /// it into the markdown with the others. Needs the test environment's variables.
    Ordered {
        #[arg(long, value_enum, default_value = "full")]
        profile: Profile,
        /// The worker binary (default: `pipewright-worker` beside this one).
        #[arg(long)]
        worker: Option<PathBuf>,
        /// An extra flag for every worker run (repeatable); recorded in the results.
        #[arg(long = "worker-arg", allow_hyphen_values = true)]
        worker_args: Vec<String>,
        /// Logs of every run.
        #[arg(long, default_value = "target/bench")]
        work_dir: PathBuf,
        /// The results file.
        #[arg(long, default_value = "bench/results/ordered.json")]
        results: PathBuf,
    },
    /// Outbox relay (part 3): pipewright's outbox worker against Debezium's embedded engine,
    /// drain and commit → ack latency. Writes its results file; `render` (or the next
    /// `consume`) renders it into the markdown with the others. Needs the test environment's
    /// variables.
    Outbox {
        #[arg(long, value_enum, default_value = "full")]
        profile: Profile,
        /// The worker binary (default: `pipewright-worker` beside this one).
        #[arg(long)]
        worker: Option<PathBuf>,
        /// Logs of every run.
        #[arg(long, default_value = "target/bench")]
        work_dir: PathBuf,
        /// The results file.
        #[arg(long, default_value = "bench/results/outbox.json")]
        results: PathBuf,
        /// Also write this part's section alone to this file.
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
    /// Parts 4 and 5: the operator's reaction against the built-in deployment controller, a
    /// cold start with many resources and its steady state, and memory. Writes its results
    /// file; `render` renders it into the markdown with the others. Needs the test
    /// environment's variables and the release operator (`tests/env/images` builds it).
    Operator {
        #[arg(long, value_enum, default_value = "full")]
        profile: Profile,
        /// The operator binary (default: `pipewright-operator` beside this one).
        #[arg(long)]
        operator: Option<PathBuf>,
        /// The worker binary (default: `pipewright-worker` beside this one).
        #[arg(long)]
        worker: Option<PathBuf>,
        /// Logs of every run.
        #[arg(long, default_value = "target/bench")]
        work_dir: PathBuf,
        /// The results file of this part.
        #[arg(long, default_value = "bench/results/operator.json")]
        results: PathBuf,
        /// Also write this part's sections alone to this markdown file.
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
    /// Create a topic and write the benchmark's records to it, and keep it (for looking into
    /// one contender by hand). Needs the test environment's variables.
    Fill {
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 100_000)]
        records: u64,
        #[arg(long, default_value_t = workload::PARTITIONS)]
        partitions: i32,
        /// Distinct keys (round robin).
        #[arg(long, default_value_t = workload::KEYS)]
        keys: u64,
    },
    /// Render the markdown (and the plot) from an existing results file.
    Render {
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, clap::Args)]
struct Output {
    /// The results file.
    #[arg(long, default_value = "bench/results/consume.json")]
    results: PathBuf,
    /// The markdown to write.
    #[arg(long, default_value = "docs/benchmarks.md")]
    markdown: PathBuf,
    /// The PNG to draw (with gnuplot); its path relative to the markdown's directory is
    /// linked from the markdown.
    #[arg(long)]
    plot: Option<PathBuf>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Consume {
            profile,
            worker,
            worker_git,
            worker_args,
            work_dir,
            output,
        } => {
            let clock = Instant::now();
            let here = std::env::current_exe().context("this binary's path")?;
            let dir = here.parent().context("this binary's directory")?;
            let worker = worker.unwrap_or_else(|| dir.join("pipewright-worker"));
            let raw = dir.join("pipewright-bench-raw-consumer");
            let setup = setup_from_env(worker, worker_args, raw, work_dir)?;
            let mut results = pipewright_bench::consume(profile, &setup)?;
            if let Some(git) = worker_git {
                results.versions.worker_git = git;
            }
            results.write(&output.results)?;
            progress(&format!("results: {}", output.results.display()));
            render(&results, &output)?;
            for t in &results.targets {
                progress(&format!(
                    "target: {} = {:.2} (≥ {:.1}: {})",
                    t.what,
                    t.value,
                    t.target,
                    if t.met { "met" } else { "NOT MET" }
                ));
            }
            progress(&format!("done in {:.0} s", clock.elapsed().as_secs_f64()));
            Ok(())
        }
        Cmd::Ordered {
            profile,
            worker,
            worker_args,
            work_dir,
            results,
        } => {
            let here = std::env::current_exe().context("this binary's path")?;
            let dir = here.parent().context("this binary's directory")?;
            let worker = worker.unwrap_or_else(|| dir.join("pipewright-worker"));
            let raw = dir.join("pipewright-bench-raw-consumer");
            let setup = setup_from_env(worker, worker_args, raw, work_dir)?;
            let out = pipewright_bench::ordered::run(profile, &setup)?;
            out.write(&results)?;
            progress(&format!("results: {}", results.display()));
            for t in &out.targets {
                progress(&format!(
                    "target: {} = {:.2} (≥ {:.1}: {})",
                    t.what,
                    t.value,
                    t.target,
                    if t.met { "met" } else { "NOT MET" }
                ));
            }
            Ok(())
        }
        Cmd::Fill {
            topic,
            records,
            partitions,
            keys,
        } => {
            let bootstrap = std::env::var("KAFKA_BOOTSTRAP_SERVERS")
                .with_context(|| format!("KAFKA_BOOTSTRAP_SERVERS: {HOW_TO_START}"))?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(workload::create_topic(&bootstrap, &topic, partitions))?;
            workload::fill_keyed(&bootstrap, &topic, records, keys)?;
            progress(&format!("{records} records in {topic}"));
            Ok(())
        }
        Cmd::Outbox {
            profile,
            worker,
            work_dir,
            results,
            markdown,
        } => {
            let clock = Instant::now();
            let here = std::env::current_exe().context("this binary's path")?;
            let dir = here.parent().context("this binary's directory")?;
            let worker = worker.unwrap_or_else(|| dir.join("pipewright-worker"));
            let setup = OutboxSetup::from_env(worker, work_dir)?;
            let measured = outbox::run(profile, &setup)?;
            measured.write(&results)?;
            progress(&format!("results: {}", results.display()));
            if let Some(markdown) = markdown {
                std::fs::write(&markdown, outbox::report::markdown(&measured, None))
                    .with_context(|| format!("write {}", markdown.display()))?;
            }
            for t in &measured.targets {
                progress(&format!(
                    "target: {} = {:.2} ({} {:.1}: {})",
                    t.what,
                    t.value,
                    t.op,
                    t.target,
                    if t.met { "met" } else { "NOT MET" }
                ));
            }
            progress(&format!("done in {:.0} s", clock.elapsed().as_secs_f64()));
            Ok(())
        }
        Cmd::Operator {
            profile,
            operator,
            worker,
            work_dir,
            results,
            markdown,
        } => {
            let clock = Instant::now();
            let here = std::env::current_exe().context("this binary's path")?;
            let dir = here.parent().context("this binary's directory")?;
            std::fs::create_dir_all(&work_dir)?;
            let var = |name: &str| {
                std::env::var(name)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .with_context(|| format!("{name} is not set: {HOW_TO_START}"))
            };
            let setup = OperatorSetup {
                operator: operator.unwrap_or_else(|| dir.join("pipewright-operator")),
                worker: worker.unwrap_or_else(|| dir.join("pipewright-worker")),
                bootstrap: var("KAFKA_BOOTSTRAP_SERVERS")?,
                database_url: var("DATABASE_URL")?,
                images: var("PIPEWRIGHT_STATE")
                    .map(|s| image_archives(std::path::Path::new(&s)))
                    .unwrap_or_default(),
                work_dir,
            };
            let measured = pipewright_bench::operator::run(profile, &setup)?;
            measured.write(&results)?;
            progress(&format!("results: {}", results.display()));
            if let Some(markdown) = markdown {
                std::fs::write(
                    &markdown,
                    pipewright_bench::operator::report::markdown(&measured, None),
                )
                .with_context(|| format!("write {}", markdown.display()))?;
            }
            progress(&format!("done in {:.0} s", clock.elapsed().as_secs_f64()));
            Ok(())
        }
        Cmd::Render { output } => {
            let results = Results::read(&output.results)?;
            render(&results, &output)
        }
    }
}

fn render(results: &Results, output: &Output) -> Result<()> {
    let link = match &output.plot {
        Some(png) => {
            report::plot(results, png)?;
            progress(&format!("plot: {}", png.display()));
            let base = output.markdown.parent().unwrap_or(std::path::Path::new(""));
            Some(png.strip_prefix(base).unwrap_or(png).display().to_string())
        }
        None => None,
    };
    if let Some(dir) = output.markdown.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut text = report::markdown(results, link.as_deref());
    text.push_str(&pipewright_bench::render_further_sections(
        output.results.parent().unwrap_or(std::path::Path::new("")),
        output.plot.as_deref(),
        output.markdown.parent().unwrap_or(std::path::Path::new("")),
        results.worker_peak_rss_mib(),
    )?);
    std::fs::write(&output.markdown, text)
        .with_context(|| format!("write {}", output.markdown.display()))?;
    progress(&format!("markdown: {}", output.markdown.display()));
    Ok(())
}
