//! A worker pod as the operator renders it, run as a local process: the container's arguments,
//! its ConfigMap and Secret volumes written under a directory of their own (stand-ins for the
//! referenced Secrets and ConfigMaps), the configuration file's paths moved under it, and the
//! real `pipewright-worker` binary started on them with no environment but `HOSTNAME` (the pod
//! name, as the kubelet sets it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::KeyToPath;
use pipewright_crds::worker_config::{CONFIG_DIR, CONFIG_FILE};
use pipewright_operator::workload::{WorkerPlan, desired};
use pipewright_testenv::{eventually, unique_name};

use super::consume::free_addr;
use super::http_get;

/// How long a pod gets to become ready.
pub const WAIT: Duration = Duration::from_secs(120);

/// The objects a pod's volumes come from: Secrets and ConfigMaps by name, each key to value.
#[derive(Debug, Default, Clone)]
pub struct Objects {
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
}

/// A running worker pod.
#[derive(Debug)]
pub struct Pod {
    child: Child,
    pub addr: SocketAddr,
    pub root: PathBuf,
    log: PathBuf,
}

fn write_volume(dir: &Path, data: &BTreeMap<String, String>, items: Option<&Vec<KeyToPath>>) {
    std::fs::create_dir_all(dir).unwrap();
    match items {
        Some(items) => {
            for item in items {
                let value = data
                    .get(&item.key)
                    .unwrap_or_else(|| panic!("the stand-in has no key {:?}", item.key));
                std::fs::write(dir.join(&item.path), value).unwrap();
            }
        }
        None => {
            for (key, value) in data {
                std::fs::write(dir.join(key), value).unwrap();
            }
        }
    }
}

impl Pod {
    /// Starts the worker of `plan` with the volumes `objects` provide.
    pub fn start(plan: &WorkerPlan, objects: &Objects) -> Pod {
        let d = desired(plan);
        let root = std::env::temp_dir().join(unique_name("pw-pod"));
        let pod = d.deployment.spec.template.spec.expect("a pod spec");
        let container = &pod.containers[0];
        assert_eq!(container.env, None, "the worker gets no environment");
        let volumes = pod.volumes.clone().unwrap_or_default();
        let own = d.config_map.metadata.name.clone().unwrap();
        let mut mount_paths = Vec::new();
        for mount in container.volume_mounts.clone().unwrap_or_default() {
            let volume = volumes.iter().find(|v| v.name == mount.name).unwrap();
            let dir = root.join(mount.mount_path.trim_start_matches('/'));
            if let Some(cm) = &volume.config_map {
                let data = if cm.name == own {
                    d.config_map.data.clone().unwrap()
                } else {
                    objects.config_maps[&cm.name].clone()
                };
                write_volume(&dir, &data, cm.items.as_ref());
            } else if let Some(secret) = &volume.secret {
                let name = secret.secret_name.clone().unwrap();
                let data = objects
                    .secrets
                    .get(&name)
                    .unwrap_or_else(|| panic!("no stand-in for Secret {name:?}"));
                write_volume(&dir, data, secret.items.as_ref());
            } else {
                std::fs::create_dir_all(&dir).unwrap();
                continue;
            }
            mount_paths.push(mount.mount_path.clone());
        }
        // The file names mounted paths; move them under the pod's directory.
        let config = root
            .join(CONFIG_DIR.trim_start_matches('/'))
            .join(CONFIG_FILE);
        let mut text = std::fs::read_to_string(&config).expect("the configuration is mounted");
        for path in &mount_paths {
            text = text.replace(&format!("\"{path}"), &format!("\"{}{path}", root.display()));
        }
        std::fs::write(&config, text).unwrap();

        let addr = free_addr();
        let mut args = container.args.clone().unwrap();
        for i in 1..args.len() {
            match args[i - 1].as_str() {
                "--listen" => args[i] = addr.to_string(),
                "--config" => args[i] = config.display().to_string(),
                _ => {}
            }
        }
        let log = root.join("worker.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pipewright-worker"))
            .env_clear()
            .env("HOSTNAME", unique_name("pod"))
            .env("PIPEWRIGHT_TERMINATION_LOG", root.join("termination-log"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start pipewright-worker");
        Pod {
            child,
            addr,
            root,
            log,
        }
    }

    /// The worker's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for /readyz; panics with the log if the worker exits first.
    pub async fn wait_ready(&mut self, what: &str) {
        let addr = self.addr;
        let ready = eventually(&format!("{what}: the worker's /readyz"), WAIT, || {
            let exited = self.child.try_wait().ok().flatten();
            async move {
                if let Some(status) = exited {
                    return Some(Err(status));
                }
                let code = http_get(addr, "/readyz").await.map(|r| r.0);
                (code == Some(200)).then_some(Ok(()))
            }
        })
        .await;
        if let Err(status) = ready {
            panic!(
                "{what}: the worker refused the operator's configuration ({status}):\n{}",
                self.log_text()
            );
        }
    }

    /// The sum of a metric's samples.
    pub async fn counter(&self, name: &str) -> f64 {
        let body = http_get(self.addr, "/metrics")
            .await
            .map(|r| r.1)
            .unwrap_or_default();
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
