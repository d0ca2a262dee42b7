//! Issue 12's probes, kept: a failed read never looks like an empty table, dangerous source
//! roles are refused, approvals bind to the whole hash, secrets stay out of messages.

mod access;
mod bounds;
mod decode;
mod mysql_bulk;

use std::path::Path;
use std::process::Output;

use trueup::domain::Value;
use trueup::source::{Source, SourceError};

use crate::helpers::{TestMysql, TestPg, combined_output, read_request, source, trueup_cli};

async fn read_all(src: &Source, query: &str) -> Result<Vec<Vec<Value>>, SourceError> {
    let mut stream = src.read(read_request(query)).await?;
    let mut rows = Vec::new();
    while let Some(batch) = stream.next_batch().await {
        rows.extend(batch?);
    }
    Ok(rows)
}

/// A project folder whose one source is `url`, with `invariants` as its invariant file.
fn project(dir: &Path, url: &str, invariants: &str) -> std::path::PathBuf {
    let config = dir.join("trueup.yaml");
    std::fs::write(
        &config,
        format!(
            "store: sqlite://{}/trueup.db\nsources:\n  pg:\n    url: {url}\n",
            dir.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("invariants")).unwrap();
    std::fs::write(dir.join("invariants/pay.yaml"), invariants).unwrap();
    config
}

fn check_json(config: &Path) -> (Option<i32>, serde_json::Value, String) {
    let out: Output = trueup_cli(config, "tester")
        .args(["check", "--format", "json"])
        .output()
        .unwrap();
    let text = combined_output(&out);
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), json, text)
}

/// A project with one source `src` at `url` (with `extra` source settings) and a `check` over
/// table `t`.
fn one_check_project(dir: &Path, url: &str, extra: &str) -> std::path::PathBuf {
    let config = dir.join("trueup.yaml");
    std::fs::write(
        &config,
        format!(
            "store: sqlite://{}/trueup.db\nsources:\n  src:\n    url: {url}\n{extra}",
            dir.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("invariants")).unwrap();
    std::fs::write(
        dir.join("invariants/t.yaml"),
        "invariants:\n  - name: t-listed\n    check: {source: src, query: \"SELECT id FROM t\", key: id}\n",
    )
    .unwrap();
    config
}

fn check(config: &Path) -> (Option<i32>, String) {
    let out = trueup_cli(config, "tester").arg("check").output().unwrap();
    (out.status.code(), combined_output(&out))
}

fn sample_id(sample: &serde_json::Value) -> i64 {
    sample["key"][0].as_i64().unwrap()
}

/// Runs `trueup --config <config> <args>` under a Python parent whose only child it is, and
/// gives its output and its peak resident memory in MiB (the child's `ru_maxrss`).
fn check_with_peak_rss(config: &Path, args: &[&str]) -> (Output, f64) {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import resource, subprocess, sys\n\
             p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)\n\
             sys.stdout.buffer.write(p.stdout)\n\
             sys.stderr.buffer.write(p.stderr)\n\
             sys.stderr.write('\\nPEAK_RSS_KIB=%d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
             sys.exit(p.returncode)",
        )
        .arg(env!("CARGO_BIN_EXE_trueup"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("TRUEUP_ACTOR", "tester")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let kib: f64 = stderr
        .rsplit("PEAK_RSS_KIB=")
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in: {stderr}"));
    (out, kib / 1024.0)
}
