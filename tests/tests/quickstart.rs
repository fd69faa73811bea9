//! docs/quickstart.md, run as written: every fenced `sh` block, in order, in one `bash -euo
//! pipefail` against the local environment, with what step 0 asks the reader to set (`KAFKA`,
//! `DATABASE_URL`: here a fresh database of the test PostgreSQL) and `kubectl`, `helm` and
//! `kafka-topics.sh` on the PATH (the last a two-line launcher of the same Kafka tool from the
//! environment's Kafka jars). The doc's own step 6 waits for the event in the consumer's log;
//! the test checks the output and the resources on top.

mod common;

use std::path::Path;
use std::process::Command;

use common::{NODE, repo, require_node_and_images, var};
use pipewright_testenv::{TestEnv, unique_name};

/// The `sh` blocks of a Markdown file, in order.
fn sh_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an unclosed code block");
    blocks
}

fn dir_of(program: &str) -> String {
    Path::new(program)
        .parent()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Deletes what an earlier, interrupted run may have left (the doc's fixed names).
fn clean_up(env: &[(&str, String)]) {
    let script = "kubectl delete namespace shop --ignore-not-found --wait; \
                  helm uninstall pipewright --namespace pipewright-system --wait 2>/dev/null || true";
    let _ = Command::new("bash")
        .args(["-c", script])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .status();
}

#[tokio::test]
async fn quickstart_every_step_runs_as_written() {
    let _node = NODE.lock().await;
    require_node_and_images();
    let doc = std::fs::read_to_string(repo().join("docs/quickstart.md")).unwrap();
    let blocks = sh_blocks(&doc);
    assert!(blocks.len() >= 7, "the quickstart's steps: {blocks:#?}");

    // A database of its own: the doc's table is public.outbox.
    let env_url = &TestEnv::get().database_url;
    let database = unique_name("quickstart").replace('-', "_");
    let admin = sqlx::PgPool::connect(env_url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&admin)
        .await
        .unwrap();
    let (base, _) = env_url.rsplit_once('/').unwrap();
    let database_url = format!("{base}/{database}");

    // kafka-topics.sh from the environment's Kafka jars.
    let bin = std::env::temp_dir().join(unique_name("pw-quickstart-bin"));
    std::fs::create_dir_all(&bin).unwrap();
    let launcher = bin.join("kafka-topics.sh");
    std::fs::write(
        &launcher,
        "#!/bin/sh\nexec java -cp \"$PIPEWRIGHT_KAFKA_CLASSPATH\" org.apache.kafka.tools.TopicCommand \"$@\"\n",
    )
    .unwrap();
    let mut permissions = std::fs::metadata(&launcher).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&launcher, permissions).unwrap();
    let path = format!(
        "{}:{}:{}:{}",
        bin.display(),
        dir_of(&var("KUBECTL")),
        dir_of(&var("HELM")),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = vec![
        ("PATH", path),
        ("KAFKA", TestEnv::get().kafka_bootstrap_servers.clone()),
        ("DATABASE_URL", database_url),
    ];
    clean_up(&env);

    let script = format!("set -euo pipefail\n{}", blocks.join("\n"));
    let out = Command::new("bash")
        .args(["-c", &script])
        .current_dir(repo())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    let delivered = stdout
        .lines()
        .any(|l| l.contains("o-1001") && l.contains("OrderPlaced"));
    let listed = stdout.lines().any(|l| l.contains("orders-log"))
        && stdout
            .lines()
            .any(|l| l.starts_with("outbox.pipewright.io/orders"));
    if !out.status.success() || !delivered || !listed {
        clean_up(&env);
    }
    assert!(
        out.status.success(),
        "the quickstart failed:\n{stdout}\n{stderr}"
    );
    assert!(delivered, "the consumer's log shows the event:\n{stdout}");
    assert!(listed, "kubectl get pipewright lists both:\n{stdout}");

    admin.close().await;
    let admin = sqlx::PgPool::connect(env_url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();
}
