//! The monitoring kit, checked by Prometheus' own tool: the chart's alerting rules
//! (charts/pipewright/files/prometheus-rules.yaml) pass `promtool check rules` and the unit
//! tests of tests/monitoring/alerts.test.yaml (`promtool test rules`); every alert has a unit
//! test; every metric the rules use is one docs/metrics.md documents (the registries check
//! that file against what is exposed); the chart's PrometheusRule carries the file unchanged and
//! its PodMonitor selects the worker pods; every query of the Grafana dashboard parses as
//! PromQL (promtool) over documented metrics, and the chart ships the dashboard unchanged.
//! `promtool` is built from the Prometheus Go module pinned in tests/env/prometheus/go.mod
//! (`$PROMTOOL`, set by tests/env/up).

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{repo, run, var};

const RULES: &str = "charts/pipewright/files/prometheus-rules.yaml";
const UNIT_TESTS: &str = "tests/monitoring/alerts.test.yaml";

fn promtool(args: &[&str]) -> String {
    let out = Command::new(var("PROMTOOL"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run promtool ($PROMTOOL, built by tests/env/build)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// The words after `key:` on lines that hold it (`- alert: X`, `alertname: X`).
fn values_of(text: &str, key: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.trim_start().trim_start_matches("- ").strip_prefix(key))
        .map(|v| v.trim().to_string())
        .collect()
}

#[test]
fn the_alerting_rules_pass_promtool_check_and_their_unit_tests() {
    let checked = promtool(&["check", "rules", RULES]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", UNIT_TESTS]);
    assert!(tested.contains("SUCCESS"), "{tested}");

    let rules = std::fs::read_to_string(repo().join(RULES)).unwrap();
    let tests = std::fs::read_to_string(repo().join(UNIT_TESTS)).unwrap();
    let alerts = values_of(&rules, "alert:");
    assert!(alerts.len() >= 8, "{alerts:?}");
    let tested: BTreeSet<String> = values_of(&tests, "alertname:");
    let untested: Vec<&String> = alerts.difference(&tested).collect();
    assert!(
        untested.is_empty(),
        "alerts without a unit test: {untested:?}"
    );

    // Every metric an expression uses is documented (and so exposed: docs/metrics.md is
    // checked against the registries).
    let documented = std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap();
    let used: BTreeSet<&str> = rules
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            l.starts_with("expr:") || !(l.starts_with('#') || l.contains(':'))
        })
        .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| w.starts_with("pipewright_"))
        .collect();
    assert!(!used.is_empty());
    for metric in used {
        assert!(
            documented.contains(&format!("| `{metric}` |")),
            "{metric} is used by an alert but has no row in docs/metrics.md"
        );
    }
}

#[test]
fn the_charts_prometheus_rule_is_the_checked_file_and_its_pod_monitor_selects_the_workers() {
    let chart = repo().join("charts/pipewright");
    let show = |template: &str| {
        run(
            &var("HELM"),
            &[
                "template",
                "x",
                chart.to_str().unwrap(),
                "--set",
                "podMonitor.enabled=true",
                "--set",
                "prometheusRule.enabled=true",
                "--show-only",
                template,
            ],
        )
    };
    let rule = show("templates/prometheusrule.yaml");
    let spec: Vec<&str> = rule
        .lines()
        .skip_while(|l| *l != "spec:")
        .skip(1)
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect();
    let file = std::fs::read_to_string(repo().join(RULES)).unwrap();
    assert_eq!(
        spec.join("\n").trim_end(),
        file.trim_end(),
        "the PrometheusRule's spec is the rules file"
    );
    let monitor = show("templates/podmonitor.yaml");
    assert!(monitor.contains("kind: PodMonitor"), "{monitor}");
    // The worker pods' label, as the operator sets it (and the e2e tests select pods by).
    assert!(
        monitor.contains("app.kubernetes.io/name: pipewright-worker"),
        "{monitor}"
    );
    assert!(monitor.contains("- port: metrics"), "{monitor}");
    // Off by default: nothing is rendered.
    let none = run(&var("HELM"), &["template", "x", chart.to_str().unwrap()]);
    assert!(!none.contains("kind: PrometheusRule") && !none.contains("kind: PodMonitor"));
}

const DASHBOARD: &str = "charts/pipewright/files/grafana-dashboard.json";

#[test]
fn the_dashboards_queries_are_valid_promql_over_documented_metrics_and_the_chart_ships_it() {
    let text = std::fs::read_to_string(repo().join(DASHBOARD)).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "pipewright");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            exprs.push((panel["id"].as_i64().unwrap(), expr.to_string()));
        }
    }
    assert!(exprs.len() >= 12, "{exprs:?}");
    // Each query as a recording rule, Grafana's variables replaced by what they expand to,
    // for promtool to parse.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, (panel, expr)) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$namespace", ".*")
            .replace("$__rate_interval", "5m");
        rules.push_str(&format!(
            "      - record: pipewright:dashboard:panel{panel}_{n}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let file = std::env::temp_dir().join(pipewright_testenv::unique_name("pw-dashboard-rules"));
    std::fs::write(&file, rules).unwrap();
    let checked = promtool(&["check", "rules", file.to_str().unwrap()]);
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{checked}"
    );
    let documented = std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap();
    for (_, expr) in &exprs {
        for metric in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("pipewright_"))
        {
            let family = metric.trim_end_matches("_bucket");
            assert!(
                documented.contains(&format!("| `{family}` |")),
                "{metric} (dashboard) has no row in docs/metrics.md"
            );
        }
    }

    // The chart's ConfigMap carries the file unchanged, labelled for Grafana's sidecar.
    let chart = repo().join("charts/pipewright");
    let rendered = run(
        &var("HELM"),
        &[
            "template",
            "x",
            chart.to_str().unwrap(),
            "--set",
            "grafanaDashboard.enabled=true",
            "--show-only",
            "templates/dashboard.yaml",
        ],
    );
    assert!(rendered.contains("grafana_dashboard: \"1\""), "{rendered}");
    let shipped: String = rendered
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("pipewright.json: |-"))
        .skip(1)
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let shipped: serde_json::Value = serde_json::from_str(&shipped).expect("the shipped JSON");
    assert_eq!(shipped, dashboard);
}
