//! The results of parts 4 and 5 (`bench/results/operator.json`) and their section of
//! docs/benchmarks.md.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::profile::Profile;
use crate::report::median;

/// Everything the operator part measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorResults {
    pub profile: Profile,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub duration_s: f64,
    /// `git describe` of the tree the operator was built from.
    pub operator_git: String,
    pub status_period_s: f64,
    pub reaction: Reaction,
    pub scale: Scale,
    pub memory: Memory,
}

/// Create → child seen, in milliseconds: the operator's EventConsumer → Deployment and the
/// built-in Deployment → ReplicaSet, alternating, one object at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reaction {
    pub rounds: usize,
    pub applies_per_round: usize,
    pub pipewright: Latencies,
    pub builtin: Latencies,
    /// The target: pipewright p99 ≤ 2 × the built-in p99 (and p95 for issue 14).
    pub p99_ratio: f64,
    pub p95_ratio: f64,
    /// Of each figure above, the create request itself (sent → the apiserver's answer): the
    /// apiserver's admission and validation of the object, before any controller can see it.
    /// Absent from runs before it was recorded.
    #[serde(default)]
    pub pipewright_create: Option<Latencies>,
    #[serde(default)]
    pub builtin_create: Option<Latencies>,
}

/// One round's samples, in milliseconds.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// EventConsumer create sent → its Deployment seen.
    pub pipewright: Vec<f64>,
    /// Deployment create sent → its ReplicaSet seen.
    pub builtin: Vec<f64>,
    /// The EventConsumer's create request alone.
    pub pipewright_create: Vec<f64>,
    /// The Deployment's create request alone.
    pub builtin_create: Vec<f64>,
}

/// Percentiles over every apply of every round, and the spread of the per-round p50.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latencies {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The median of the rounds' p50, and their range.
    pub round_p50_median_ms: f64,
    pub round_p50_min_ms: f64,
    pub round_p50_max_ms: f64,
    pub samples_ms: Vec<f64>,
}

impl Latencies {
    fn of(rounds: &[Vec<f64>]) -> Latencies {
        let all: Vec<f64> = rounds.iter().flatten().copied().collect();
        let p50s: Vec<f64> = rounds.iter().map(|r| percentile(r, 50.0)).collect();
        Latencies {
            p50_ms: percentile(&all, 50.0),
            p95_ms: percentile(&all, 95.0),
            p99_ms: percentile(&all, 99.0),
            max_ms: all.iter().copied().fold(0.0, f64::max),
            round_p50_median_ms: median(p50s.clone()),
            round_p50_min_ms: p50s.iter().copied().fold(f64::INFINITY, f64::min),
            round_p50_max_ms: p50s.iter().copied().fold(0.0, f64::max),
            samples_ms: all,
        }
    }
}

impl Reaction {
    /// From each round's samples.
    pub fn from_rounds(rounds: Vec<Round>) -> Reaction {
        let of = |f: fn(&Round) -> &Vec<f64>| {
            Latencies::of(&rounds.iter().map(|r| f(r).clone()).collect::<Vec<_>>())
        };
        let pipewright = of(|r| &r.pipewright);
        let builtin = of(|r| &r.builtin);
        Reaction {
            rounds: rounds.len(),
            applies_per_round: rounds.first().map_or(0, |r| r.pipewright.len()),
            p99_ratio: pipewright.p99_ms / builtin.p99_ms.max(f64::EPSILON),
            p95_ratio: pipewright.p95_ms / builtin.p95_ms.max(f64::EPSILON),
            pipewright,
            builtin,
            pipewright_create: Some(of(|r| &r.pipewright_create)),
            builtin_create: Some(of(|r| &r.builtin_create)),
        }
    }
}

/// `total[i] - part[i]` for every sample.
fn differences(total: &[f64], part: &[f64]) -> Vec<f64> {
    total.iter().zip(part).map(|(t, p)| t - p).collect()
}

/// A cold start with many resources, then the steady state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scale {
    pub event_consumers: usize,
    pub outboxes: usize,
    /// How long the harness waited for the cold start.
    pub limit_s: f64,
    /// Operator start → every Deployment exists (`None`: not within the limit).
    pub all_applied_s: Option<f64>,
    /// Operator start → every status has observedGeneration = generation (`None`: not
    /// within the limit).
    pub all_status_s: Option<f64>,
    /// Deployments and written statuses when the wait ended.
    pub applied_at_end: usize,
    pub written_at_end: usize,
    pub peak_rss_bytes: u64,
    pub steady_window_s: f64,
    pub steady_cpu_percent: f64,
    /// New TCP connections to the Kafka broker per minute (a lower bound, see the module).
    pub kafka_connections_per_minute: f64,
    /// New PostgreSQL sessions per minute (`pg_stat_database.sessions`, exact).
    pub postgres_connections_per_minute: f64,
    /// New sockets to PostgreSQL seen on the operator (cross-check of the above).
    pub postgres_sockets_seen_per_minute: f64,
}

/// Resident memory and image sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Peak RSS of the operator through the reaction part (a handful of resources).
    pub operator_idle_rss_bytes: u64,
    pub operator_scale_peak_rss_bytes: u64,
    /// RSS of a worker consuming an empty topic.
    pub worker_idle_rss_bytes: u64,
    /// (image, bytes of the OCI archive: the gzip-compressed layer, config and manifest).
    pub image_archive_bytes: Vec<(String, u64)>,
}

impl OperatorResults {
    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("write {}", path.display()))
    }

    pub fn read(path: &Path) -> Result<OperatorResults> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }
}

/// The `p`-th percentile (nearest rank); 0 for none.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

/// Sections 4 and 5 of docs/benchmarks.md; `worker_load_rss_mib`: the worker's peak RSS under
/// load from part 1 (key order, c=256, no-op), when its results are there.
pub fn markdown(r: &OperatorResults, worker_load_rss_mib: Option<f64>) -> String {
    let mut md = String::new();
    let re = &r.reaction;
    let met = |ok: bool| if ok { "met" } else { "**not met**" };
    let _ = writeln!(md, "## 4. Operator\n");
    let _ = writeln!(
        md,
        "Run: `{}` profile, {} UTC, {:.0} s; operator built from `{}` (release, the image's \
         binary), run on the host with the test environment's admin kubeconfig, watching one \
         namespace, leader election off, status period {:.0} s (its default).\n",
        r.profile.name(),
        r.started_at.format("%Y-%m-%d %H:%M"),
        r.duration_s,
        r.operator_git,
        r.status_period_s
    );
    let _ = writeln!(
        md,
        "### 4a. Reaction: create → child exists\n\n{} rounds of {} creates each, one object at \
         a time, alternating: an EventConsumer, timed until its Deployment is seen, then a \
         Deployment, timed until the built-in deployment controller's ReplicaSet is seen. Both \
         are seen through a watch opened before the first create (so its delay is in both), \
         every object has `replicas: 0` (no pod starts), and one warm-up object of each is not \
         counted. Between two creates the harness waits until the controller-manager has made \
         the ReplicaSet of the operator's Deployment and pauses 300 ms, so that neither figure \
         waits behind the controller-manager's work for the other; before it starts, it waits \
         until the namespaces of earlier runs are deleted (their garbage collection kept the \
         controller-manager's rate-limited client so busy that a ReplicaSet took 20–100 s). \
         Percentiles are over all {} creates; the per-round p50 shows the spread.\n",
        re.rounds,
        re.applies_per_round,
        re.rounds * re.applies_per_round
    );
    let _ = writeln!(
        md,
        "| controller | p50 ms | p95 ms | p99 ms | max ms | per-round p50 (median, range) | \
         of which the create request, p50 / p99 ms |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for (what, l, create) in [
        (
            "pipewright: EventConsumer → Deployment",
            &re.pipewright,
            &re.pipewright_create,
        ),
        (
            "built-in: Deployment → ReplicaSet",
            &re.builtin,
            &re.builtin_create,
        ),
    ] {
        let _ = writeln!(
            md,
            "| {what} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} ({:.0}–{:.0}) | {} |",
            l.p50_ms,
            l.p95_ms,
            l.p99_ms,
            l.max_ms,
            l.round_p50_median_ms,
            l.round_p50_min_ms,
            l.round_p50_max_ms,
            create.as_ref().map_or("not recorded".into(), |c| format!(
                "{:.1} / {:.1}",
                c.p50_ms, c.p99_ms
            ))
        );
    }
    if let (Some(ours), Some(theirs)) = (&re.pipewright_create, &re.builtin_create) {
        let after = |total: &Latencies, create: &Latencies| {
            differences(&total.samples_ms, &create.samples_ms)
        };
        let _ = writeln!(
            md,
            "\nThe create request is the apiserver's work before any controller sees the \
             object: an EventConsumer is decoded, defaulted and validated against its CRD's \
             schema and CEL rules as an unstructured object ({:.1} ms p50), a Deployment by \
             compiled-in code ({:.1} ms p50; at p99 {:.1} against {:.1} ms{}). After the \
             create's answer, the operator took {:.0} ms (p50 of the differences; p99 {:.0}) \
             and the built-in controller {:.0} ms (p99 {:.0}).",
            ours.p50_ms,
            theirs.p50_ms,
            ours.p99_ms,
            theirs.p99_ms,
            if ours.p99_ms > theirs.p99_ms {
                ": the custom resource's create has the longer tail, before the operator \
                 sees anything"
            } else {
                ""
            },
            percentile(&after(&re.pipewright, ours), 50.0),
            percentile(&after(&re.pipewright, ours), 99.0),
            percentile(&after(&re.builtin, theirs), 50.0),
            percentile(&after(&re.builtin, theirs), 99.0),
        );
    }
    let _ = writeln!(
        md,
        "\nTargets: p99 ≤ 2 × the built-in p99 (issue 13): **{:.2}×**, {}; p95 ≤ 2 × the \
         built-in p95 (issue 14): **{:.2}×**, {}. How much one run says: with the reconcile \
         that applied the ServiceAccount and ConfigMap before the Deployment, the p99 ratio \
         of seven full runs of this part on 2026-12-04 ranged from 1.21 to 2.69 and the p95 \
         ratio from 2.02 to 2.32, and one more run of that binary, right before the committed \
         ones, gave p99 2.04 and p95 1.93; with the children of a new resource in one step, \
         three full runs on 2026-12-04 gave p99 2.40, 1.55 and 2.01, p95 1.95, 1.79 and \
         2.09 (one more, run while 900 EventConsumers of another test were being garbage \
         collected, is left out: the built-in p99 was 1.7 s in it), and the run committed on \
         2026-12-05 (the same reconcile) p99 2.81, p95 2.08. With a new resource's children \
         created rather than applied (4847713), two full runs alternating with the binary \
         before (which gave p99 2.76 and 2.13, p95 1.99 and 1.98) gave p99 1.59 and 1.25, \
         p95 1.61 and 1.63, a third full run (its tree held an uncommitted edit of this \
         report's text) p99 1.67, p95 1.66, and the committed run the figures above. The p99 \
         of 210 creates is their third-slowest, so it moves with a few slow creates of either \
         kind: both targets are met in each of these four runs, the p99 ratio ranging \
         1.25–1.89, a spread as wide as that of the runs before (1.21–2.81), so a run above \
         2.0 remains possible on this machine.\n",
        re.p99_ratio,
        met(re.p99_ratio <= 2.0),
        re.p95_ratio,
        met(re.p95_ratio <= 2.0)
    );
    let s = &r.scale;
    let _ = writeln!(
        md,
        "### 4b. Scale: {} EventConsumers and {} Outboxes from a cold start\n\nAll created \
         while no operator runs (EventConsumers on one 6-partition topic, Outboxes on one \
         outbox table, `replicas: 0`); then the operator starts. Then a steady-state window of \
         {:.0} s with nothing changing.\n",
        s.event_consumers, s.outboxes, s.steady_window_s
    );
    let _ = writeln!(md, "| figure | value | target |");
    let _ = writeln!(md, "|---|---:|---|");
    let total = s.event_consumers + s.outboxes;
    let within = |t: Option<f64>, done: usize| match t {
        Some(t) => (format!("{t:.1} s"), met(t < 60.0)),
        None => (
            format!("> {:.0} s ({done}/{total} by then)", s.limit_s),
            met(false),
        ),
    };
    let (v, m) = within(s.all_applied_s, s.applied_at_end);
    let _ = writeln!(
        md,
        "| start → every Deployment applied | {v} | < 60 s: {m} |"
    );
    let (v, m) = within(s.all_status_s, s.written_at_end);
    let _ = writeln!(
        md,
        "| start → every status written (`observedGeneration`) | {v} | < 60 s: {m} |"
    );
    let _ = writeln!(
        md,
        "| operator peak RSS | {} MiB | < 64 MiB: {} |",
        mib(s.peak_rss_bytes),
        met(s.peak_rss_bytes < 64 * 1024 * 1024)
    );
    let _ = writeln!(
        md,
        "| steady state CPU | {:.1} % of a core | — |",
        s.steady_cpu_percent
    );
    let _ = writeln!(
        md,
        "| Kafka connections opened per minute (≥, sampled) | {:.1} | one pooled client per cluster: {} |",
        s.kafka_connections_per_minute,
        met(s.kafka_connections_per_minute <= 2.0)
    );
    let _ = writeln!(
        md,
        "| PostgreSQL sessions opened per minute | {:.1} | one pool per database: {} |",
        s.postgres_connections_per_minute,
        met(s.postgres_connections_per_minute <= 2.0)
    );
    let _ = writeln!(
        md,
        "\nConnections: PostgreSQL sessions are `pg_stat_database.sessions` before and after \
         the window (exact; the harness opens none in it; the operator's own sockets seen: \
         {:.1}/min). Kafka connections are the operator's sockets to the broker port, from \
         `/proc/<pid>/fd` and its TCP table every 20 ms: a socket opened and closed between two \
         samples is missed, so the figure is a lower bound. \"Not growing with the number of \
         resources\" is the target; ≤ 2 per minute stands for it here.\n",
        s.postgres_sockets_seen_per_minute
    );
    let _ = writeln!(
        md,
        "**Where the time goes, and what would reach the targets.** Reaction: a reconcile \
         reads its Deployment and worker pods from the stores of the watches that trigger it \
         (`operator/src/children.rs`) and each referenced Secret from the apiserver, then \
         applies the ServiceAccount, ConfigMap and Deployment, then the Service and \
         PodDisruptionBudget: one round trip before a new resource's Deployment exists, as \
         the built-in controller reads its informer cache and makes one create. \
         Profiled on 2026-12-04 (the apiserver's `/debug/pprof/profile` over 25 s of this \
         part, the test apiserver restarted by hand with `--profiling=true`; the operator's \
         requests timed from its own log with \
         `PIPEWRIGHT_BENCH_OPERATOR_LOG=info,kube_client=debug`): the apiserver was busy 16 % \
         of one core, so it is not saturated, but each request waits for a core it shares \
         with the broker, etcd and the controllers; updates (server-side applies, status \
         patches) are 28 % of its samples, all creates together 10 % (the EventConsumer's \
         CEL rules are not a visible cost). The apiserver works the requests of one step side \
         by side on the same 2 cores, so every child sent before the Deployment delays it: \
         with all four children sent before the Deployment, the slowest of them returned \
         after 15 ms (p50) and the Deployment's apply took 14 ms more. **Fix** \
         (`Children::apply`, 2026-12-04): the Service and PodDisruptionBudget, which select \
         the pods by label whenever they come, are applied after the Deployment: p50 29–35 → \
         20–23 ms, p95 ÷ built-in 4.3–4.6 → 2.2 (quick profile, the old and the new operator \
         binary alternating, 2 runs each); the binary of before the fix, run in full once \
         more right after the committed run: p99 ÷ built-in 3.90, p95 3.56, cold start \
         45.4 s. Tried and not kept: a ConfigMap that does not exist \
         yet sent after the Deployment as well (the kubelet waits for a missing ConfigMap \
         volume): p50 ÷ built-in 2.05–2.17 against 2.23–2.28, within the noise, since the \
         ServiceAccount still went first. **A further fix** (`Children::apply`, 2026-12-04): a \
         resource whose Deployment and ConfigMap do not exist yet gets its ServiceAccount, \
         ConfigMap and Deployment in one step (no pod exists that could start on old data; \
         the account, sent first, is written well before the first pod is admitted two \
         controller hops later, and the apiserver's ServiceAccount admission asks etcd when \
         its cache lacks it; should it ever lose that race, the pod is refused once and the \
         ReplicaSet controller creates it again), while a ConfigMap that exists is still \
         written before the Deployment. From the first child request to the Deployment's \
         answer, in the operator's log (`PIPEWRIGHT_BENCH_OPERATOR_LOG=info,kube_client=debug`, \
         60 creates each): p50 9.2 → 6.4 ms, p90 14.3 → 8.7 ms. Quick profile, the old and \
         the new binary alternating, 2 runs each: p50 14.9 / 15.9 → 14.7 / 12.9 ms, after the \
         create's answer p90 17.2 / 16.0 → 12.6 / 11.4 ms, p95 ÷ built-in 1.90 / 2.38 → \
         1.96 / 1.84 (60 creates a run, so their p99 is their maximum and says little). In \
         full runs the end-to-end p50 moved less than the runs differ (14.6 before, \
         14.0–14.8 after). The race, checked: `a_new_resources_first_pod_is_admitted_at_once_…` \
         (`operator/tests/operator.rs`) sees the first pod admitted at its first create and a \
         changed ConfigMap written before the new pod template; by hand, 900 new \
         EventConsumers created in two bursts (16 and 32 concurrent clients, the node \
         cordoned so that pods are admitted but never started) gave 900 ReplicaSets with \
         `SuccessfulCreate` and no `FailedCreate`. What is left: about 3 ms (p50) between \
         the create's answer and the first child request plus the bench's watch seeing the \
         Deployment. **Profiled (2026-12-05):** 2.1 ms of it (p50; p90 2.3, 61 creates, a \
         debug line at the watch event and at the reconcile's start, not committed) is \
         kube-runtime's scheduler (5.0.0, `scheduler.rs`): every trigger, also one due now, \
         goes through a tokio-util `DelayQueue`, which rounds its deadline up to its next \
         millisecond and then waits for tokio's timer, itself on millisecond ticks. With the \
         scheduler patched locally (a request due now, with no debounce, is made ready at \
         once instead of queued; not committed: it belongs upstream, and the operator does \
         not carry a fork) the same gap was 0.10–0.11 ms, and in quick runs alternating with \
         the unpatched binary the reaction p50 went 13.7 / 12.5 → 12.6 / 11.5 ms (p99 ÷ \
         built-in 2.43 / 1.75 → 2.14 / 1.86: 60 creates, noise). The operator's own code \
         cannot avoid it (`Controller` has no trigger path around the scheduler); the change \
         to propose upstream is those few lines. Then the apiserver's own work, from its \
         `apiserver_request_duration_seconds` over the reaction phase of a quick run (61 \
         creates of each kind, 2026-12-05): server-side apply of the operator's new \
         Deployment 6.5 ms mean (its ServiceAccount 5.2 and ConfigMap 5.4 beside it), the \
         harness's plain create of the reference Deployment 3.0 ms, the built-in controller's \
         ReplicaSet create 5.2 ms; in the slowest creates of the instrumented runs, the \
         operator's first child request → the Deployment's answer took 7–24 ms, the \
         operator's own code 0.2 ms. **Creates for new children** (`operator/src/handover.rs`, \
         2026-12-05): a child the operator's store does not have is created (POST) instead of \
         server-side applied; the create's `Update` entry of `managedFields` is handed to the \
         operator's `Apply` entry at the child's first apply (a JSON patch, then the apply \
         again), so a child created and never changed costs one request. The apiserver's \
         cost, the operator's own Deployment body sent by a plain HTTP client to the test \
         apiserver, 150 of each alternating: create 4.2 ms mean (p50 3.6), server-side apply \
         that creates 5.8 ms (p50 5.1), the hand-over patch 5.5 ms. Full runs of this part, \
         the binary before (4847713^) and after alternating, 2 runs each: reaction p50 13.9 / \
         13.9 → 11.4 / 12.4 ms, p99 29.6 / 27.0 → 19.2 / 19.9 ms, p99 ÷ built-in 2.76 / 2.13 \
         → 1.59 / 1.25, p95 ÷ built-in 1.99 / 1.98 → 1.61 / 1.63; cold start (every status \
         written) 29.9 / 32.8 → 30.6 / 29.8 s, peak RSS 59.9 / 59.7 → 60.1 / 59.3 MiB \
         (unchanged within the noise). \
         Handing the fields over right after each create instead (tried first) would add a \
         request per child on every cold start. The workers' Service is \
         headless since 004c618: with a cluster IP it was the slowest child (mean apply \
         114–124 ms over a run, an `IPAddress` object per Service; cold start of 240 \
         resources 7.6 / 10.7 s before, 7.1 / 5.7 s after, alternating runs). Cold start: children are applied before \
         anything is measured; the reconciles the operator's own applies trigger reuse the \
         figures, and apply nothing when the children are as last applied (same object, same \
         `generation` or `resourceVersion`; the run committed in 77cbc82, which read the \
         Deployment and listed the pods with a request each and applied every child on every \
         reconcile, did not converge in 180 s). Connections: every measurement uses one pooled \
         librdkafka client per Kafka cluster (the committed offsets of any group through \
         librdkafka's admin `ListConsumerGroupOffsets`, `kafka-admin/`) and one PostgreSQL pool \
         per database (at most 4 connections), each closed after 10 idle minutes \
         (`operator/src/measure/`): {:.1} Kafka connections and {:.1} PostgreSQL sessions \
         opened per minute in this run, where a client per measurement opened 1,641 and 399 \
         (the run committed in 353a794, same sizes). Peak RSS ({} MiB): \
         profiled with heaptrack on 2026-12-04 (this part in full, the operator started \
         under `heaptrack` through `--operator`): the heap peaked at 46 MB during the cold \
         start, and the largest single allocation was kube's event `Recorder`, which keeps \
         every Event of the last six minutes whole (the object, its note, a key of owned \
         strings) in a map that never shrinks: 11.8 MB for the few thousand condition \
         transitions of 1,200 new resources, held for the life of the process. **Fix** \
         (`operator/src/events.rs`, 2026-12-04): the operator's own recorder, which sends \
         the same Events and series patches but keeps per event only its name, count and \
         last time, and drops what left the window once a minute: heap peak 46 → 34 MB, \
         peak RSS 74.3 → 61.8 MiB (full runs of this part, old and new binaries; \
         `MALLOC_ARENA_MAX=2` on the old one changed nothing, 74.3 MiB, so it was not the \
         allocator's arenas). The heap's peak after that fix (34 MB), by call path: the metric \
         families kept per resource 8.0 MB (a series per condition, two per partition for \
         lag, each with its own copies of the namespace, name, group and topic, and the same \
         again in the record of what was exported), the reflector stores 8.1 MB (1,200 \
         resources, their 6,000 children and the worker pods, each reduced to what a \
         reconcile reads), the HTTP client's buffers 2.7 MB, the recorder 2.0 MB, the apply \
         records 1.9 MB, librdkafka 0.8 MB. **Second fix** (`operator/src/metrics.rs`, \
         2026-12-04): those label values are `Arc<str>`, one per resource shared by all of \
         its series: peak RSS 61.8 and 63.8 MiB (two full runs before) → 57.6 MiB (the \
         committed run) and 57.3 MiB (a second run). The rest of the RSS is the binary's own pages, about 19 MB \
         (`/proc/<pid>/smaps`: nearly all of its 17.5 MB of code is paged in), thread stacks \
         and librdkafka's clients. It was 62.3 MiB in the full run of 2026-12-02 (operator at \
         6e99dd2, kube's recorder already in it); what came since (the metrics per condition \
         and per partition, lag in seconds, more watched kinds) added about 12 MiB. Tried and \
         not kept: the operator's crate at `opt-level = \"s\"` (.text 17.5 → 14.6 MB), one \
         full run before the second fix: peak 59.5 MiB, idle 27.0 MiB, but steady-state CPU \
         9.5 % of a core against 7.8–8.6 % and reaction p50 21.2 ms against 18.3–20.6 ms.\n",
        s.kafka_connections_per_minute,
        s.postgres_connections_per_minute,
        mib(s.peak_rss_bytes)
    );
    if s.all_applied_s.is_none() || s.all_status_s.is_none() {
        let _ = writeln!(
            md,
            "**Cold start not converged in this run** ({} of {} Deployments after {:.0} s; \
             the built-in controller's p50 reaction above: {:.0} ms, a measure of how busy the \
             control plane was). The operator's `pipewright_operator_reconcile_duration_seconds` \
             and `pipewright_operator_child_applies_total` show where its reconciles went.\n",
            s.applied_at_end,
            s.event_consumers + s.outboxes,
            s.limit_s,
            r.reaction.builtin.p50_ms
        );
    }
    let m = &r.memory;
    let _ = writeln!(md, "## 5. Memory\n");
    let _ = writeln!(md, "| what | value |");
    let _ = writeln!(md, "|---|---:|");
    let _ = writeln!(
        md,
        "| operator, peak RSS through 4a (a few hundred resources at most) | {} MiB |",
        mib(m.operator_idle_rss_bytes)
    );
    let _ = writeln!(
        md,
        "| operator, peak RSS at 4b ({} resources) | {} MiB |",
        s.event_consumers + s.outboxes,
        mib(m.operator_scale_peak_rss_bytes)
    );
    let _ = writeln!(
        md,
        "| worker, RSS idle (joined, empty topic) | {} MiB |",
        mib(m.worker_idle_rss_bytes)
    );
    if let Some(load) = worker_load_rss_mib {
        let _ = writeln!(
            md,
            "| worker, peak RSS under load (part 1: key order, c=256, no-op; median) | {load:.1} MiB |"
        );
    }
    for (name, bytes) in &m.image_archive_bytes {
        let _ = writeln!(
            md,
            "| image `{name}` (OCI archive, compressed layer; `tests/env/images`) | {} MiB |",
            mib(*bytes)
        );
    }
    md.push('\n');
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
