//! Writes the CRD YAML of every pipewright kind into a directory, one file per CRD
//! (`<plural>.<group>.yaml`), or with `--check` verifies that the files there are current.
//!
//! ```text
//! crdgen charts/pipewright/crds            # write
//! crdgen --check charts/pipewright/crds    # exit 1 when a file is missing or stale
//! ```
//!
//! Two arguments do not need an argument parser; the usage line says all there is.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "usage: crdgen [--check] <output-dir>";

fn main() -> ExitCode {
    let mut check = false;
    let mut dir: Option<PathBuf> = None;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ if dir.is_none() && !arg.starts_with('-') => dir = Some(PathBuf::from(arg)),
            _ => {
                eprintln!("crdgen: unexpected argument {arg:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(dir) = dir else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = if check {
        check_dir(&dir)
    } else {
        write_dir(&dir)
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("crdgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Every CRD as (file name, YAML).
fn rendered() -> Result<Vec<(String, String)>, String> {
    pipewright_crds::crds()
        .iter()
        .map(|crd| {
            let yaml = pipewright_crds::crd_yaml(crd)
                .map_err(|e| format!("render {}: {e}", pipewright_crds::crd_file_name(crd)))?;
            Ok((pipewright_crds::crd_file_name(crd), yaml))
        })
        .collect()
}

fn write_dir(dir: &Path) -> Result<ExitCode, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    for (name, yaml) in rendered()? {
        let path = dir.join(&name);
        let current = std::fs::read_to_string(&path).ok();
        if current.as_deref() == Some(yaml.as_str()) {
            println!("unchanged {}", path.display());
            continue;
        }
        std::fs::write(&path, yaml).map_err(|e| format!("write {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn check_dir(dir: &Path) -> Result<ExitCode, String> {
    let mut stale = Vec::new();
    for (name, yaml) in rendered()? {
        let path = dir.join(&name);
        match std::fs::read_to_string(&path) {
            Ok(current) if current == yaml => {}
            Ok(current) => stale.push(format!(
                "{} is stale (first difference at line {})",
                path.display(),
                first_difference(&current, &yaml)
            )),
            Err(e) => stale.push(format!("{} cannot be read: {e}", path.display())),
        }
    }
    if stale.is_empty() {
        println!("CRDs in {} are up to date", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    for line in &stale {
        eprintln!("crdgen: {line}");
    }
    eprintln!(
        "crdgen: the checked-in CRDs differ from the Rust types; run `make generate` and commit \
         the result (`git diff {}` shows what changed)",
        dir.display()
    );
    Ok(ExitCode::FAILURE)
}

/// 1-based number of the first line where `a` and `b` differ.
fn first_difference(a: &str, b: &str) -> usize {
    let mut a_lines = a.lines();
    let mut b_lines = b.lines();
    let mut n = 1;
    loop {
        match (a_lines.next(), b_lines.next()) {
            (Some(x), Some(y)) if x == y => n += 1,
            (None, None) => return n,
            _ => return n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_crds_match_the_rust_types() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/pipewright/crds");
        for (name, yaml) in rendered().unwrap() {
            let path = dir.join(&name);
            let current = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}; run `make generate`", path.display()));
            assert!(
                current == yaml,
                "{} is stale at line {}; run `make generate`",
                path.display(),
                first_difference(&current, &yaml)
            );
        }
    }

    #[test]
    fn first_difference_counts_lines_from_one() {
        assert_eq!(first_difference("a\nb\nc", "a\nx\nc"), 2);
        assert_eq!(first_difference("a", "a\nb"), 2);
    }
}
