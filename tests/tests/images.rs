//! The operator and worker images that `tests/env/images` assembles for the local node from the
//! built binaries (no Docker, no registry), against what they stand in for:
//!
//! - the config has the Dockerfile runtime stage's ENTRYPOINT, USER, EXPOSE and WORKDIR (the
//!   Dockerfiles are parsed here, independently of the script's own parser);
//! - the image is named `<chart repository>:<chart appVersion>`, and every digest verifies;
//! - the binary is built by the Dockerfile's own build command (release, one package);
//! - the layer is distroless-like: the binary (the current `target/release` build, by its GNU
//!   build id) at the COPY destination, executable; every library the binary and its libraries
//!   need, plus the ELF interpreter, at a path the dynamic loader searches; the CA bundle;
//!   `/etc/passwd` and `/etc/group` with nonroot 65532; `/tmp` (1777), `/home/nonroot` (owned
//!   65532); and nothing else.
//!
//! These tests run the real script with `--no-build --no-import`: they need no node and build
//! nothing, but they need the release binaries (`tests/env/images`, which `make test` runs
//! first, builds them); without them they fail saying how to build them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The command that builds a component's binary: its Dockerfile's build stage runs it, and
/// `tests/env/images` runs the same (checked below).
fn build_command(component: &str) -> String {
    format!("cargo build --release --locked -p pipewright-{component}")
}

/// The base image's config values the Dockerfiles inherit (distroless cc-debian12:nonroot).
const BASE_WORKDIR: &str = "/home/nonroot";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `<target>/release`, where the images' binaries are: this test runs as
/// `<target>/debug/deps/images-*`.
fn target_release() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("release")
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile's runtime stage, parsed here (not by the script).

#[derive(Debug, Default, PartialEq, Eq)]
struct RuntimeStage {
    from: String,
    copy_destinations: Vec<String>,
    entrypoint: Option<Vec<String>>,
    user: Option<String>,
    expose: BTreeSet<String>,
    workdir: Option<String>,
}

/// The last stage of a Dockerfile: continuation lines joined, comment lines dropped.
fn runtime_stage(dockerfile: &str) -> RuntimeStage {
    let mut logical: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (current.is_empty() && trimmed.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current).trim().to_string());
            }
        }
    }
    let instruction = |line: &str| -> (String, String) {
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        (word.to_ascii_uppercase(), rest.trim().to_string())
    };
    let start = logical
        .iter()
        .rposition(|line| instruction(line).0 == "FROM")
        .expect("the Dockerfile has no FROM");
    let mut stage = RuntimeStage::default();
    for line in &logical[start..] {
        let (word, rest) = instruction(line);
        match word.as_str() {
            "FROM" => stage.from = rest.split_whitespace().next().unwrap().to_string(),
            "COPY" => stage
                .copy_destinations
                .push(rest.split_whitespace().last().unwrap().to_string()),
            "ENTRYPOINT" => {
                stage.entrypoint = Some(serde_json::from_str(&rest).unwrap_or_else(|e| {
                    panic!("ENTRYPOINT is not in exec (JSON) form: {rest}: {e}")
                }))
            }
            "USER" => stage.user = Some(rest),
            "WORKDIR" => stage.workdir = Some(rest),
            "EXPOSE" => {
                for port in rest.split_whitespace() {
                    let port = if port.contains('/') {
                        port.to_string()
                    } else {
                        format!("{port}/tcp")
                    };
                    stage.expose.insert(port);
                }
            }
            _ => {}
        }
    }
    stage
}

fn dockerfile_stage(component: &str) -> RuntimeStage {
    let path = repo_root().join(component).join("Dockerfile");
    runtime_stage(&std::fs::read_to_string(&path).unwrap())
}

/// `<repository>:<tag>` for the chart value block `key` (`image`, `workerImage`): the tag
/// defaults to the chart's appVersion.
fn chart_ref(key: &str) -> String {
    let chart = repo_root().join("charts/pipewright");
    let unquote = |s: &str| s.trim().trim_matches('"').to_string();
    let values = std::fs::read_to_string(chart.join("values.yaml")).unwrap();
    let mut block = BTreeMap::new();
    let mut inside = false;
    for line in values.lines() {
        if !line.starts_with([' ', '#']) && !line.is_empty() {
            inside = line.trim_end() == format!("{key}:");
        } else if inside && let Some((k, v)) = line.trim().split_once(':') {
            block.entry(k.to_string()).or_insert_with(|| unquote(v));
        }
    }
    let chart_yaml = std::fs::read_to_string(chart.join("Chart.yaml")).unwrap();
    let app_version = chart_yaml
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .map(unquote)
        .expect("Chart.yaml has an appVersion");
    let repository = block
        .get("repository")
        .unwrap_or_else(|| panic!("values.yaml has no {key}.repository"));
    let tag = block
        .get("tag")
        .filter(|t| !t.is_empty())
        .unwrap_or(&app_version);
    format!("{repository}:{tag}")
}

/// The images hold what a Docker build would: each Dockerfile's build stage runs
/// [`build_command`], and `tests/env/images` builds with the same command (its `build_cmd`).
#[test]
fn images_are_built_by_the_dockerfiles_release_build_command() {
    let script = std::fs::read_to_string(repo_root().join("tests/env/images")).unwrap();
    assert!(
        script.contains(&build_command("$1")),
        "tests/env/images does not build with `{}`",
        build_command("<component>")
    );
    for component in ["operator", "worker"] {
        let dockerfile =
            std::fs::read_to_string(repo_root().join(component).join("Dockerfile")).unwrap();
        let joined = dockerfile.replace("\\\n", " ");
        let words: Vec<&str> = joined.split_whitespace().collect();
        let expected = build_command(component);
        let expected: Vec<&str> = expected.split_whitespace().collect();
        assert!(
            words
                .windows(expected.len())
                .any(|w| w == expected.as_slice()),
            "{component}/Dockerfile does not build with `{}`",
            expected.join(" ")
        );
    }
}

#[test]
fn dockerfile_parser_reads_only_the_last_stage() {
    let stage = runtime_stage(
        "# comment\nFROM rust:1 AS build\nUSER builder\nEXPOSE 1\nRUN a \\\n  && b\n\n\
         FROM base:nonroot\n# EXPOSE 9\nCOPY --from=build /out/x \\\n  /usr/local/bin/x\n\
         USER 65532:65532\nEXPOSE 8080 8081 53/udp\nWORKDIR /w\nENTRYPOINT [\"/usr/local/bin/x\", \"run\"]\n",
    );
    assert_eq!(
        stage,
        RuntimeStage {
            from: "base:nonroot".into(),
            copy_destinations: vec!["/usr/local/bin/x".into()],
            entrypoint: Some(vec!["/usr/local/bin/x".into(), "run".into()]),
            user: Some("65532:65532".into()),
            expose: ["8080/tcp", "8081/tcp", "53/udp"].map(String::from).into(),
            workdir: Some("/w".into()),
        }
    );
}

// ---------------------------------------------------------------------------------------------
// The archives, assembled once per test binary by the real script.

#[derive(Debug)]
struct Entry {
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: Option<String>,
    data: Vec<u8>,
}

#[derive(Debug)]
struct Image {
    archive: PathBuf,
    index: Value,
    manifest: Value,
    config: Value,
    /// The layer's entries by absolute path (`/`, `/etc`, ...).
    layer: BTreeMap<String, Entry>,
    /// Problems found while following the digests (empty when all verify).
    digest_errors: Vec<String>,
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Lexically normalised absolute path (`.`/`..` resolved, no trailing slash).
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

fn load_image(archive: &Path) -> Image {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut outer = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for entry in outer.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        files.insert(path.trim_end_matches('/').to_string(), data);
    }
    let mut digest_errors = Vec::new();
    let mut blob = |descriptor: &Value| -> Vec<u8> {
        let digest = descriptor["digest"].as_str().unwrap_or_default();
        let hex = digest.strip_prefix("sha256:").unwrap_or_default();
        let Some(data) = files.get(&format!("blobs/sha256/{hex}")) else {
            digest_errors.push(format!("no blob for {digest}"));
            return Vec::new();
        };
        if sha256_hex(data) != hex {
            digest_errors.push(format!("blob {digest} has another sha256"));
        }
        if descriptor["size"].as_u64() != Some(data.len() as u64) {
            digest_errors.push(format!(
                "blob {digest}: size {} in its descriptor",
                descriptor["size"]
            ));
        }
        data.clone()
    };
    let index: Value = serde_json::from_slice(
        files
            .get("index.json")
            .unwrap_or_else(|| panic!("{} has no index.json", archive.display())),
    )
    .unwrap();
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    assert_eq!(manifests.len(), 1, "one manifest in index.json: {index}");
    let manifest: Value = serde_json::from_slice(&blob(&manifests[0])).unwrap();
    let config: Value = serde_json::from_slice(&blob(&manifest["config"])).unwrap();
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    assert_eq!(layers.len(), 1, "one layer: {manifest}");
    assert_eq!(
        layers[0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip",
        "layer media type"
    );
    let compressed = blob(&layers[0]);
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(compressed.as_slice())
        .read_to_end(&mut tar_bytes)
        .unwrap();
    let diff_id = format!("sha256:{}", sha256_hex(&tar_bytes));
    if config["rootfs"]["diff_ids"] != serde_json::json!([diff_id]) {
        digest_errors.push(format!(
            "config rootfs.diff_ids {} is not the uncompressed layer's {diff_id}",
            config["rootfs"]["diff_ids"]
        ));
    }
    let mut layer = BTreeMap::new();
    for entry in tar::Archive::new(tar_bytes.as_slice()).entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = normalize(&entry.path().unwrap().to_string_lossy());
        let header = entry.header();
        let kind = header.entry_type();
        let (mode, uid, gid, mtime) = (
            header.mode().unwrap(),
            header.uid().unwrap(),
            header.gid().unwrap(),
            header.mtime().unwrap(),
        );
        let link = entry
            .link_name()
            .unwrap()
            .map(|l| l.to_string_lossy().into_owned());
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        let previous = layer.insert(
            path.clone(),
            Entry {
                kind,
                mode,
                uid,
                gid,
                mtime,
                link,
                data,
            },
        );
        assert!(previous.is_none(), "{path} is twice in the layer");
    }
    Image {
        archive: archive.to_path_buf(),
        index,
        manifest,
        config,
        layer,
        digest_errors,
    }
}

fn chart_key(component: &str) -> &'static str {
    match component {
        "operator" => "image",
        "worker" => "workerImage",
        other => panic!("no component {other}"),
    }
}

/// Runs `tests/env/images --no-build --no-import` once and loads both archives.
fn images() -> &'static BTreeMap<String, Image> {
    static IMAGES: OnceLock<BTreeMap<String, Image>> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let bin_dir = target_release();
        for component in ["operator", "worker"] {
            let bin = bin_dir.join(format!("pipewright-{component}"));
            assert!(
                bin.is_file(),
                "{} is missing: build it with `{}` from the repository root, or run \
                 `tests/env/images` (`make test` does), which builds both and assembles the images",
                bin.display(),
                build_command(component)
            );
        }
        let script = repo_root().join("tests/env/images");
        let out = Command::new(&script)
            .args(["--no-build", "--no-import"])
            .env("CARGO_TARGET_DIR", bin_dir.parent().unwrap())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} --no-build --no-import failed:\n{stdout}\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let printed: BTreeMap<&str, &str> =
            stdout.lines().filter_map(|l| l.split_once(' ')).collect();
        ["operator", "worker"]
            .into_iter()
            .map(|component| {
                let reference = chart_ref(chart_key(component));
                let archive = printed.get(reference.as_str()).unwrap_or_else(|| {
                    panic!("tests/env/images printed no archive for {reference}:\n{stdout}")
                });
                (component.to_string(), load_image(Path::new(archive)))
            })
            .collect()
    })
}

fn image(component: &str) -> &'static Image {
    &images()[component]
}

// ---------------------------------------------------------------------------------------------
// ELF facts, from binutils' readelf.

#[derive(Debug, Default)]
struct Elf {
    needed: Vec<String>,
    runpath: Vec<String>,
    interpreter: Option<String>,
    build_id: Option<String>,
}

fn readelf(path: &Path) -> Elf {
    let out = Command::new("readelf")
        .args(["--wide", "--dynamic", "--program-headers", "--notes"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("readelf (apt-get install binutils): {e}"));
    assert!(
        out.status.success(),
        "readelf {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let bracketed = |line: &str, after: &str| -> Option<String> {
        let rest = &line[line.find(after)? + after.len()..];
        let rest = rest.trim_start().strip_prefix('[')?;
        Some(rest[..rest.find(']')?].to_string())
    };
    let mut elf = Elf::default();
    for line in text.lines() {
        if line.contains("(NEEDED)") {
            elf.needed.extend(bracketed(line, "Shared library:"));
        } else if line.contains("(RUNPATH)") || line.contains("(RPATH)") {
            let paths = bracketed(line, "path:").unwrap_or_default();
            elf.runpath.extend(paths.split(':').map(String::from));
        } else if let Some(at) = line.find("[Requesting program interpreter:") {
            let rest = &line[at + "[Requesting program interpreter:".len()..];
            elf.interpreter = rest.split(']').next().map(|p| p.trim().to_string());
        } else if let Some(at) = line.find("Build ID:") {
            elf.build_id = Some(line[at + "Build ID:".len()..].trim().to_string());
        }
    }
    elf
}

/// readelf of bytes from the layer (written to a temporary file).
fn readelf_bytes(data: &[u8]) -> Elf {
    let path = std::env::temp_dir().join(format!("pipewright-images-{}", uuid::Uuid::new_v4()));
    std::fs::write(&path, data).unwrap();
    let elf = readelf(&path);
    std::fs::remove_file(&path).unwrap();
    elf
}

impl Image {
    fn entry(&self, path: &str) -> &Entry {
        self.layer
            .get(path)
            .unwrap_or_else(|| panic!("{path} is not in {}", self.archive.display()))
    }

    /// Follows symlinks (in any component) inside the layer. Returns every entry passed
    /// through, the regular file last; None when the path does not lead to a regular file.
    fn resolve(&self, path: &str) -> Option<Vec<String>> {
        let mut visited = Vec::new();
        let mut path = normalize(path);
        'restart: for _ in 0..40 {
            let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
            let mut prefix = String::new();
            for (i, component) in components.iter().enumerate() {
                prefix = format!("{prefix}/{component}");
                let entry = self.layer.get(&prefix)?;
                if entry.kind == tar::EntryType::Symlink {
                    let target = entry.link.clone()?;
                    visited.push(prefix.clone());
                    let parent = prefix.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
                    let base = if target.starts_with('/') {
                        target
                    } else {
                        format!("{parent}/{target}")
                    };
                    path = normalize(&format!("{base}/{}", components[i + 1..].join("/")));
                    continue 'restart;
                }
            }
            let entry = self.layer.get(&path)?;
            if entry.kind != tar::EntryType::Regular {
                return None;
            }
            visited.push(path);
            return Some(visited);
        }
        None
    }

    /// Finds a library by soname where the dynamic loader looks (RUNPATH, then the default
    /// directories of a Debian multiarch system); the entries passed through.
    fn find_library(&self, soname: &str, runpath: &[String]) -> Option<Vec<String>> {
        let multiarch = format!("{}-linux-gnu", std::env::consts::ARCH);
        let defaults = [
            format!("/lib/{multiarch}"),
            format!("/usr/lib/{multiarch}"),
            "/lib64".to_string(),
            "/usr/lib64".to_string(),
            "/lib".to_string(),
            "/usr/lib".to_string(),
        ];
        runpath
            .iter()
            .chain(defaults.iter())
            .find_map(|dir| self.resolve(&format!("{dir}/{soname}")))
    }
}

// ---------------------------------------------------------------------------------------------
// The checks, per component.

fn check_config_matches_dockerfile(component: &str) {
    let stage = dockerfile_stage(component);
    let image = image(component);
    let config = &image.config["config"];
    assert!(
        stage
            .from
            .starts_with("gcr.io/distroless/cc-debian12:nonroot"),
        "the image reproduces a distroless cc-debian12:nonroot runtime stage, the Dockerfile's is FROM {}",
        stage.from
    );
    let entrypoint = stage.entrypoint.expect("the Dockerfile has an ENTRYPOINT");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(entrypoint),
        "Entrypoint"
    );
    assert_eq!(
        config["User"].as_str(),
        Some(stage.user.as_deref().unwrap_or("65532")),
        "User"
    );
    let ports: BTreeSet<String> = config["ExposedPorts"]
        .as_object()
        .map(|o| {
            for (port, value) in o {
                assert_eq!(value, &serde_json::json!({}), "ExposedPorts[{port}]");
            }
            o.keys().cloned().collect()
        })
        .unwrap_or_default();
    assert_eq!(ports, stage.expose, "ExposedPorts");
    assert_eq!(
        config["WorkingDir"].as_str(),
        Some(stage.workdir.as_deref().unwrap_or(BASE_WORKDIR)),
        "WorkingDir (the Dockerfile's WORKDIR, else the base image's)"
    );
    assert_eq!(image.config["os"], "linux");
    // The entrypoint is the binary the Dockerfile copies in.
    assert_eq!(
        stage.copy_destinations,
        vec![entrypoint[0].clone()],
        "the runtime stage copies exactly the entrypoint binary"
    );
    // What the base image sets and the binaries rely on (TLS roots for OpenSSL and rustls).
    let env: Vec<&str> = config["Env"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        env.contains(&"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt")
            && env.iter().any(|e| e.starts_with("PATH=")),
        "Env has the base image's PATH and SSL_CERT_FILE: {env:?}"
    );
}

fn check_name_and_digests(component: &str) {
    let image = image(component);
    let reference = chart_ref(chart_key(component));
    let annotations = &image.index["manifests"][0]["annotations"];
    assert_eq!(annotations["io.containerd.image.name"], reference.as_str());
    assert_eq!(
        annotations["org.opencontainers.image.ref.name"],
        reference.as_str()
    );
    assert!(
        image.digest_errors.is_empty(),
        "{}: {:?}",
        image.archive.display(),
        image.digest_errors
    );
    assert_eq!(
        image.manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
}

fn check_entrypoint_is_current_binary(component: &str) {
    let image = image(component);
    let entrypoint = dockerfile_stage(component).entrypoint.unwrap()[0].clone();
    let entry = image.entry(&entrypoint);
    let built = readelf(&target_release().join(format!("pipewright-{component}")));
    let packed = readelf_bytes(&entry.data);
    assert!(
        built.build_id.is_some(),
        "the built binary has a GNU build id"
    );
    assert_eq!(
        packed.build_id, built.build_id,
        "{entrypoint} in the image is not the current target/release binary; \
         tests/env/images re-assembles when the binary changes"
    );
}

fn check_layer_contents(component: &str) {
    let image = image(component);
    let stage = dockerfile_stage(component);
    let entrypoint = stage.entrypoint.unwrap()[0].clone();

    // The binary: a regular file owned by root that anyone may execute and only root write.
    let binary = image.entry(&entrypoint);
    assert_eq!(
        binary.kind,
        tar::EntryType::Regular,
        "{entrypoint} is a regular file"
    );
    assert_eq!(
        binary.mode & 0o111,
        0o111,
        "{entrypoint} is executable: {:o}",
        binary.mode
    );
    assert_eq!(
        binary.mode & 0o022,
        0,
        "{entrypoint} is writable by root only"
    );

    // The libraries: every DT_NEEDED of the binary (as built) and, transitively, of each
    // library, found where the loader looks; the interpreter at its exact path.
    let built = readelf(&target_release().join(format!("pipewright-{component}")));
    let interpreter = built
        .interpreter
        .clone()
        .expect("the binary is dynamically linked");
    let mut allowed: BTreeSet<String> = BTreeSet::new();
    let interp_path = image
        .resolve(&interpreter)
        .unwrap_or_else(|| panic!("the ELF interpreter {interpreter} is not in the layer"));
    allowed.extend(interp_path);
    let mut missing = Vec::new();
    let mut seen = BTreeSet::new();
    let mut queue: VecDeque<(String, Elf)> = VecDeque::from([(entrypoint.clone(), built)]);
    while let Some((who, elf)) = queue.pop_front() {
        for soname in &elf.needed {
            match image.find_library(soname, &elf.runpath) {
                Some(path) => {
                    let file = path.last().unwrap().clone();
                    allowed.extend(path);
                    if seen.insert(file.clone()) {
                        queue.push_back((file.clone(), readelf_bytes(&image.entry(&file).data)));
                    }
                }
                None => missing.push(format!("{soname} (needed by {who})")),
            }
        }
    }
    assert!(
        missing.is_empty(),
        "libraries missing from the layer: {missing:?}"
    );
    for lib in ["libc.so.6", "libssl.so.3", "libcrypto.so.3"] {
        assert!(
            seen.iter().any(|p| p.ends_with(&format!("/{lib}"))),
            "{lib} is among the libraries: {seen:?}"
        );
    }

    // Users and groups like distroless: root and nonroot (65532).
    let passwd = String::from_utf8(image.entry("/etc/passwd").data.clone()).unwrap();
    let users: Vec<Vec<&str>> = passwd.lines().map(|l| l.split(':').collect()).collect();
    assert!(
        users
            .iter()
            .any(|u| u.len() == 7 && u[..4] == ["root", "x", "0", "0"]),
        "/etc/passwd has root: {passwd}"
    );
    assert!(
        users.iter().any(|u| u.len() == 7
            && u[..4] == ["nonroot", "x", "65532", "65532"]
            && u[5] == "/home/nonroot"),
        "/etc/passwd maps 65532 to nonroot with home /home/nonroot: {passwd}"
    );
    let group = String::from_utf8(image.entry("/etc/group").data.clone()).unwrap();
    assert!(
        group.lines().any(|l| l.starts_with("nonroot:x:65532:")),
        "/etc/group maps 65532 to nonroot: {group}"
    );
    // The USER resolves in them.
    let user = stage.user.unwrap_or_else(|| "65532".into());
    let (uid, gid) = user.split_once(':').unwrap_or((&user, ""));
    assert!(
        users.iter().any(|u| u[0] == uid || u.get(2) == Some(&uid)),
        "USER {user} is in /etc/passwd"
    );
    assert!(
        gid.is_empty()
            || group
                .lines()
                .any(|l| l.split(':').take(3).any(|f| f == gid)),
        "USER {user}: group in /etc/group"
    );

    // The CA bundle.
    let ca = image.entry("/etc/ssl/certs/ca-certificates.crt");
    let certs = String::from_utf8_lossy(&ca.data)
        .matches("-----BEGIN CERTIFICATE-----")
        .count();
    assert!(
        certs >= 10,
        "/etc/ssl/certs/ca-certificates.crt holds CA certificates ({certs})"
    );

    // Writable places: /tmp for everyone (sticky), /home/nonroot for 65532 only.
    let tmp = image.entry("/tmp");
    assert_eq!(
        (tmp.kind, tmp.mode & 0o7777, tmp.uid),
        (tar::EntryType::Directory, 0o1777, 0),
        "/tmp"
    );
    let home = image.entry("/home/nonroot");
    assert_eq!(
        (home.kind, home.mode & 0o7777, home.uid, home.gid),
        (tar::EntryType::Directory, 0o700, 65532, 65532),
        "/home/nonroot"
    );

    // Nothing else: the fixed files, the binary, the libraries and their symlinks, and the
    // directories that hold them.
    allowed.extend(
        [
            "/etc/passwd",
            "/etc/group",
            "/etc/ssl/certs/ca-certificates.crt",
            "/tmp",
            "/home/nonroot",
        ]
        .map(String::from),
    );
    allowed.insert(entrypoint.clone());
    for path in allowed.clone() {
        let mut dir = path.as_str();
        while let Some((parent, _)) = dir.rsplit_once('/') {
            allowed.insert(if parent.is_empty() {
                "/".into()
            } else {
                parent.to_string()
            });
            dir = parent;
        }
    }
    let extra: Vec<&String> = image
        .layer
        .keys()
        .filter(|p| !allowed.contains(*p))
        .collect();
    assert!(
        extra.is_empty(),
        "the layer holds more than it should: {extra:?}"
    );

    // Deterministic and owned by root, /home/nonroot aside; only files, directories, symlinks.
    for (path, entry) in &image.layer {
        assert_eq!(entry.mtime, 0, "{path}: mtime");
        if path != "/home/nonroot" {
            assert_eq!((entry.uid, entry.gid), (0, 0), "{path}: owner");
        }
        assert!(
            matches!(
                entry.kind,
                tar::EntryType::Regular | tar::EntryType::Directory | tar::EntryType::Symlink
            ),
            "{path}: {:?}",
            entry.kind
        );
    }
}

#[test]
fn operator_image_config_has_the_dockerfile_entrypoint_user_ports_and_workdir() {
    check_config_matches_dockerfile("operator");
}

#[test]
fn worker_image_config_has_the_dockerfile_entrypoint_user_ports_and_workdir() {
    check_config_matches_dockerfile("worker");
}

#[test]
fn operator_image_is_named_by_the_chart_at_app_version_and_its_digests_verify() {
    check_name_and_digests("operator");
}

#[test]
fn worker_image_is_named_by_the_chart_at_app_version_and_its_digests_verify() {
    check_name_and_digests("worker");
}

#[test]
fn operator_image_entrypoint_is_the_current_target_release_binary() {
    check_entrypoint_is_current_binary("operator");
}

#[test]
fn worker_image_entrypoint_is_the_current_target_release_binary() {
    check_entrypoint_is_current_binary("worker");
}

#[test]
fn operator_image_layer_holds_binary_libraries_ca_bundle_users_and_nothing_else() {
    check_layer_contents("operator");
}

#[test]
fn worker_image_layer_holds_binary_libraries_ca_bundle_users_and_nothing_else() {
    check_layer_contents("worker");
}

// ---------------------------------------------------------------------------------------------
// The two release builds share their dependencies.

/// Every dependency as `name version` → its features, as Cargo resolves them for one package
/// alone (what `cargo build --release -p <package>` compiles), over the dependency `edges`:
/// `normal,no-proc-macro` are the units built for the target; `normal,build` adds those built
/// for the host (proc macros, build scripts), merged with the target's by name.
fn resolved_features(package: &str, edges: &str) -> BTreeMap<String, BTreeSet<String>> {
    let out = Command::new(env!("CARGO"))
        .current_dir(repo_root())
        .args(["tree", "--locked", "--offline", "-p", package])
        .args(["-e", edges, "--prefix", "none", "-f", "{p}|{f}"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut features: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let Some((package, enabled)) = line.split_once('|') else {
            continue;
        };
        // `name vX.Y.Z (path)` → `name vX.Y.Z`; a repeated subtree ends in ` (*)`.
        let id: Vec<&str> = package.split_whitespace().take(2).collect();
        let enabled = enabled.trim_end_matches(" (*)");
        features.entry(id.join(" ")).or_default().extend(
            enabled
                .split(',')
                .filter(|f| !f.is_empty())
                .map(str::to_string),
        );
    }
    features
}

/// The images are built one package each (the Dockerfiles' command), so Cargo resolves the
/// features of each build alone; where they differ for a shared dependency, it and everything
/// above it is compiled twice (minutes of every cold `make test`). `workspace-hack` lists the
/// union; this names what it misses.
#[test]
fn operator_and_worker_release_builds_resolve_the_same_features_for_every_shared_dependency() {
    for edges in ["normal,no-proc-macro", "normal,build"] {
        same_features_for_shared_dependencies(edges);
    }
}

fn same_features_for_shared_dependencies(edges: &str) {
    let operator = resolved_features("pipewright-operator", edges);
    let worker = resolved_features("pipewright-worker", edges);
    assert!(operator.contains_key("pipewright-workspace-hack v0.1.0"));
    assert!(worker.contains_key("pipewright-workspace-hack v0.1.0"));
    let differing: Vec<String> = operator
        .iter()
        .filter_map(|(id, op)| {
            let wk = worker.get(id)?;
            (op != wk).then(|| {
                format!(
                    "{id}: operator only {:?}, worker only {:?}",
                    op.difference(wk).collect::<Vec<_>>(),
                    wk.difference(op).collect::<Vec<_>>()
                )
            })
        })
        .collect();
    let shared = operator
        .keys()
        .filter(|id| worker.contains_key(*id))
        .count();
    assert!(
        shared > 100,
        "only {shared} shared dependencies: is the tree parsed?"
    );
    assert!(
        differing.is_empty(),
        "shared dependencies with different features over `{edges}` edges (add the union to \
         workspace-hack/Cargo.toml):\n{}",
        differing.join("\n")
    );
}
