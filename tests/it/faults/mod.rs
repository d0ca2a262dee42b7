//! The fault suite of docs/reliability.md: a failure injected at each stage of a run — read,
//! decode, merge, stage, commit — by a fail point in the test build's `trueup` (set through
//! `FAILPOINTS`, so each injection is its own process), as an error and as a panic, never
//! resolves a violation: the run fails, exits 2, and the ledger is as it was.

mod delivery;
mod runs;

use std::path::Path;

use sqlx::Connection;
use trueup::config::SecretUrl;
use trueup::domain::RunStatus;
use trueup::store::{StatusFilter, Store, ViolationFilter};

use crate::helpers::{combined_output, sqlite_file, sqlite_url, trueup_cli};

/// Every fail point on the path of a run, in the order a run meets them.
pub const RUN_POINTS: [&str; 6] = [
    "source.read",
    "source.batch",
    "source.decode",
    "engine.merge",
    "runner.stage",
    "store.commit",
];

async fn active(store: &dyn Store) -> usize {
    store
        .violations(&ViolationFilter {
            status: StatusFilter::Active,
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .len()
}

/// Two SQLite sources and a reconcile that finds 10 missing rows and 1 mismatch.
async fn project(dir: &Path) -> std::path::PathBuf {
    project_with(dir, "", "").await
}

/// [`project`], with `config_extra` appended to trueup.yaml and `schedule` (if not empty) as
/// the invariant's schedule.
async fn project_with(dir: &Path, config_extra: &str, schedule: &str) -> std::path::PathBuf {
    let mut up = String::from("CREATE TABLE events (id INTEGER PRIMARY KEY, amount INTEGER);");
    let mut down =
        String::from("CREATE TABLE records (event_id INTEGER PRIMARY KEY, amount INTEGER);");
    for id in 1..=20 {
        up.push_str(&format!("INSERT INTO events VALUES ({id}, {});", id * 100));
        if id <= 10 {
            let amount = if id == 3 { 1 } else { id * 100 };
            down.push_str(&format!("INSERT INTO records VALUES ({id}, {amount});"));
        }
    }
    sqlite_file(&dir.join("up.db"), &up).await;
    sqlite_file(&dir.join("down.db"), &down).await;
    let config = dir.join("trueup.yaml");
    std::fs::write(
        &config,
        format!(
            "store: {}\nsources:\n  up: {{url: {}}}\n  down: {{url: {}}}\n{config_extra}",
            sqlite_url(&dir.join("trueup.db")),
            sqlite_url(&dir.join("up.db")),
            sqlite_url(&dir.join("down.db")),
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("invariants")).unwrap();
    std::fs::write(
        dir.join("invariants/events.yaml"),
        format!(
            r#"invariants:
  - name: events-recorded
{schedule}    reconcile:
      left: {{source: up, query: "SELECT id, amount FROM events"}}
      right: {{source: down, query: "SELECT event_id AS id, amount FROM records"}}
      key: id
      compare: [amount]
"#
        ),
    )
    .unwrap();
    config
}

/// Makes the downstream agree with the upstream: a run that completes now resolves all.
async fn repair(dir: &Path) {
    let mut fix = String::from("UPDATE records SET amount = 300 WHERE event_id = 3;");
    for id in 11..=20 {
        fix.push_str(&format!("INSERT INTO records VALUES ({id}, {});", id * 100));
    }
    sqlite_file(&dir.join("down.db"), &fix).await;
}

/// A child process killed when dropped, so a failed assertion leaves nothing running.
struct Killed(std::process::Child);

impl Killed {
    fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()
    }
    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `trueup serve` as its own process, with `faults` as its FAILPOINTS.
fn serve(dir: &Path, faults: &str, log: &str) -> Killed {
    Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_trueup"))
            .args([
                "--config",
                "trueup.yaml",
                "--log",
                "info",
                "serve",
                "--listen",
                "127.0.0.1:0",
            ])
            .current_dir(dir)
            .env("FAILPOINTS", faults)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join(log)).unwrap())
            .spawn()
            .unwrap(),
    )
}

async fn wait_for(what: &str, dir: &Path, log: &str, mut done: impl AsyncFnMut() -> bool) {
    // Long enough for a notice claimed by a killed process to be claimed again (its lease).
    let until = std::time::Instant::now() + std::time::Duration::from_secs(75);
    while !done().await {
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting for {what}\n{}",
            std::fs::read_to_string(dir.join(log)).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn succeeded_runs(store: &dyn Store) -> usize {
    store
        .runs(Some("events-recorded"), 1000)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.status == RunStatus::Succeeded)
        .count()
}

/// The test PostgreSQL server's address (`TRUEUP_TEST_PG` may move it).
fn pg_address() -> std::net::SocketAddr {
    let server = crate::helpers::pg_server();
    let host_port = server.rsplit('@').next().unwrap().trim_end_matches('/');
    std::net::ToSocketAddrs::to_socket_addrs(host_port)
        .unwrap()
        .next()
        .unwrap()
}

/// `trueup check`, waited for off the test's runtime (which runs the proxy).
async fn check_off_runtime(config: &Path) -> std::process::Output {
    let mut cmd = trueup_cli(config, "tester");
    cmd.arg("check");
    crate::helpers::output_off_runtime(cmd).await
}

/// A PostgreSQL source behind a [`FaultProxy`], read by a reader role with two connections (one
/// per side: a stalled one that went back to the pool would hang the next run) and
/// a 2 s statement timeout; a reconcile over 50,000 rows that finds 10 missing, then repaired.
async fn network_project(
    dir: &Path,
    db: &crate::helpers::TestPg,
    proxy: &crate::proxy::FaultProxy,
    extra: &str,
) -> std::path::PathBuf {
    db.exec(
        "CREATE TABLE events (id int PRIMARY KEY, note text);
         INSERT INTO events SELECT g, repeat('n', 60) FROM generate_series(1, 50000) g;
         CREATE TABLE ledger (id int PRIMARY KEY);
         INSERT INTO ledger SELECT g FROM generate_series(11, 50000) g;",
    )
    .await;
    let config = dir.join("trueup.yaml");
    std::fs::write(
        &config,
        format!(
            "store: {}\nsources:\n  pg:\n    url: {}\n    pool_size: 2\n    statement_timeout: 2s\n{extra}",
            sqlite_url(&dir.join("trueup.db")),
            proxy.url(&db.reader_url)
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("invariants")).unwrap();
    std::fs::write(
        dir.join("invariants/events.yaml"),
        r#"invariants:
  - name: events-booked
    reconcile:
      left: {source: pg, query: "SELECT id, note FROM events"}
      right: {source: pg, query: "SELECT id FROM ledger"}
      key: id
      mode: stream
"#,
    )
    .unwrap();
    config
}
