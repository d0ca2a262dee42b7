//! reladiff, the peer (`pip install 'reladiff[postgresql,mysql]'`), run on the same tables
//! with its defaults and its hash-diff algorithm, under `/usr/bin/time` for its peak RSS.

use std::process::Command;
use std::time::Instant;

pub struct PeerRun {
    pub secs: f64,
    pub peak_rss_mib: Option<f64>,
    /// Its own summary line(s) (`--stats`).
    pub said: String,
}

/// `None` when reladiff is not installed (the table says so).
pub fn installed() -> Option<String> {
    let out = Command::new("reladiff").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// reladiff's URL for a sqlx one (`postgres://` → `postgresql://`).
pub fn url(sqlx_url: &str) -> String {
    sqlx_url.strip_prefix("postgres://").map_or_else(
        || sqlx_url.to_owned(),
        |rest| format!("postgresql://{rest}"),
    )
}

pub fn run(left: (&str, &str), right: (&str, &str)) -> anyhow::Result<PeerRun> {
    let timed = std::path::Path::new("/usr/bin/time").exists();
    let mut cmd = if timed {
        let mut c = Command::new("/usr/bin/time");
        c.args(["-f", "trueup-bench-peak-rss-kib %M", "reladiff"]);
        c
    } else {
        Command::new("reladiff")
    };
    cmd.args([left.0, left.1, right.0, right.1])
        .args(["-k", "id", "-c", "amount", "-c", "currency"])
        .args(["--algorithm", "hashdiff", "--stats"]);
    let t = Instant::now();
    let out = cmd.output()?;
    let secs = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        out.status.success(),
        "reladiff failed ({}):\n{stderr}",
        out.status
    );
    let peak_rss_mib = stderr
        .lines()
        .find_map(|l| l.strip_prefix("trueup-bench-peak-rss-kib "))
        .and_then(|k| k.trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0);
    let said = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    Ok(PeerRun {
        secs,
        peak_rss_mib,
        said,
    })
}
