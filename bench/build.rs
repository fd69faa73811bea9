//! Compiles librdkafka's own consumer benchmark, `examples/rdkafka_performance.c`, from the
//! librdkafka tree that rdkafka-sys configured and built for this workspace (its
//! `DEP_RDKAFKA_ROOT`), against that tree's `src/librdkafka.a`: the same source, version,
//! configure flags and library that the worker links. The binary's path reaches the harness as
//! `PIPEWRIGHT_RDKAFKA_PERFORMANCE`. Any failure fails the build: the peer is never skipped.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let root = PathBuf::from(env::var("DEP_RDKAFKA_ROOT").expect(
        "DEP_RDKAFKA_ROOT is not set: pipewright-bench must depend on rdkafka-sys directly \
         (without the dynamic-linking feature) so that its librdkafka tree is visible",
    ));
    let source = root.join("examples/rdkafka_performance.c");
    let library = root.join("src/librdkafka.a");
    for needed in [&source, &library] {
        assert!(
            needed.exists(),
            "{} is missing: rdkafka-sys did not leave a built librdkafka tree",
            needed.display()
        );
        println!("cargo:rerun-if-changed={}", needed.display());
    }
    let config = root.join("Makefile.config");
    println!("cargo:rerun-if-changed={}", config.display());
    let link_flags = makefile_value(&config, "LIBS");
    let ld_flags = makefile_value(&config, "LDFLAGS");

    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let binary = out.join("rdkafka_performance");
    let compiler = env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let mut cc = Command::new(&compiler);
    cc.arg("-O2")
        .arg("-I")
        .arg(root.join("src"))
        .arg(&source)
        .arg("-o")
        .arg(&binary)
        .arg(&library)
        .args(ld_flags.split_whitespace())
        .args(link_flags.split_whitespace());
    let status = cc
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {compiler:?}: {e}"));
    assert!(
        status.success(),
        "compiling rdkafka_performance failed ({status}): {cc:?}"
    );
    println!(
        "cargo:rustc-env=PIPEWRIGHT_RDKAFKA_PERFORMANCE={}",
        binary.display()
    );
}

/// The value of `NAME= value` (or `NAME+= value`, appended) in mklove's Makefile.config.
fn makefile_value(config: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(config)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", config.display()));
    let mut value = String::new();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once('=') else {
            continue;
        };
        let (key, append) = match key.trim().strip_suffix('+') {
            Some(k) => (k.trim(), true),
            None => (key.trim(), false),
        };
        if key == name {
            if !append {
                value.clear();
            }
            value.push(' ');
            value.push_str(rest.trim());
        }
    }
    value
}
