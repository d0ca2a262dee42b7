//! The fault suite of docs/reliability.md: a failure injected at each stage of a run — read,
//! decode, merge, stage, commit — by a fail point in the test build's `trueup` (set through
//! `FAILPOINTS`, so each injection is its own process), as an error and as a panic, never
//! resolves a violation: the run fails, exits 2, and the ledger is as it was.

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

#[tokio::test]
async fn a_failure_injected_at_any_stage_of_a_run_fails_it_and_resolves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let config = project(tmp.path()).await;
    let first = trueup_cli(&config, "tester").arg("check").output().unwrap();
    assert_eq!(first.status.code(), Some(1), "{}", combined_output(&first));
    let store = trueup::store::open(&SecretUrl::new(sqlite_url(&tmp.path().join("trueup.db"))))
        .await
        .unwrap();
    assert_eq!(active(store.as_ref()).await, 11);

    // Repair everything: from now on, any run that completes resolves all eleven.
    repair(tmp.path()).await;

    let mut table = Vec::new();
    for point in RUN_POINTS {
        for action in ["return", "panic"] {
            let out = trueup_cli(&config, "tester")
                .arg("check")
                .env("FAILPOINTS", format!("{point}={action}"))
                .output()
                .unwrap();
            let text = combined_output(&out);
            let open = active(store.as_ref()).await;
            let last = store.runs(Some("events-recorded"), 1).await.unwrap();
            table.push(format!(
                "{point:<14} {action:<7} exit {:?}  run {:?}  still open {open}/11",
                out.status.code(),
                last[0].status
            ));
            assert_eq!(out.status.code(), Some(2), "{point}={action}: {text}");
            assert_eq!(open, 11, "{point}={action} resolved something: {text}");
            assert_eq!(
                last[0].status,
                RunStatus::Failed,
                "{point}={action}: {text}"
            );
            let error = last[0].error.as_deref().unwrap_or_default();
            assert!(
                error.contains("injected")
                    || error.contains("panicked")
                    || error.contains("did not finish"),
                "{point}={action}: the run says why it failed: {error}"
            );
        }
    }
    println!("{}", table.join("\n"));
    println!(
        "{} injections ({} points × return/panic): 0 resolved",
        table.len(),
        RUN_POINTS.len()
    );
    // The same run without a fault resolves all eleven: the faults were all that held them.
    let clean = trueup_cli(&config, "tester").arg("check").output().unwrap();
    assert_eq!(clean.status.code(), Some(0), "{}", combined_output(&clean));
    assert_eq!(active(store.as_ref()).await, 0);
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

#[tokio::test]
async fn a_failure_recording_the_alert_or_delivering_its_notice_never_sends_resolved() {
    use trueup::domain::AlertState;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (url, received) = crate::notify::webhook_listener().await;
    project_with(
        dir,
        &format!("notifications:\n  channels:\n    ops:\n      webhook: {{url: \"{url}\"}}\n"),
        "    schedule: \"* * * * * *\"\n",
    )
    .await;
    let store = trueup::store::open(&SecretUrl::new(sqlite_url(&dir.join("trueup.db"))))
        .await
        .unwrap();
    let notices = || -> Vec<String> {
        received
            .lock()
            .unwrap()
            .iter()
            .map(|(_, p)| p["notice"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let alert = async || store.alert("events-recorded").await.unwrap().state;

    // Violated: the alert fires and its notice arrives.
    let mut child = serve(dir, "", "serve-1.log");
    wait_for("the firing notice", dir, "serve-1.log", async || {
        notices() == ["firing"]
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();

    // Repaired; recording the alert fails (an error, then a panic): runs succeed and resolve
    // the violations, the alert stays firing, nothing is sent.
    repair(dir).await;
    for (n, fault) in [(2, "serve.alert=return"), (3, "serve.alert=panic")] {
        let log = format!("serve-{n}.log");
        let before = succeeded_runs(store.as_ref()).await;
        let mut child = serve(dir, fault, &log);
        wait_for("three runs under the fault", dir, &log, async || {
            succeeded_runs(store.as_ref()).await >= before + 3
        })
        .await;
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(alert().await, AlertState::Firing, "{fault}");
        assert_eq!(
            active(store.as_ref()).await,
            0,
            "{fault}: the runs themselves completed"
        );
        assert_eq!(notices(), ["firing"], "{fault}");
    }

    // The alert resolves, but its notice cannot be delivered (an error, then a panic in the
    // channel): it stays queued, unsent, and is tried again.
    for (n, fault, says) in [
        (4, "notify.deliver=return", "injected"),
        (5, "notify.deliver=panic", "panicked"),
    ] {
        let log = format!("serve-{n}.log");
        let mut child = serve(dir, fault, &log);
        wait_for(
            "a failed delivery of the resolved notice",
            dir,
            &log,
            async || {
                store.outbox(10).await.unwrap().iter().any(|i| {
                    i.delivered_at.is_none()
                        && i.last_error.as_deref().is_some_and(|e| e.contains(says))
                })
            },
        )
        .await;
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(alert().await, AlertState::Inactive, "{fault}");
        assert_eq!(notices(), ["firing"], "{fault}");
    }

    // Without faults, the queued notice goes out once; nothing else is sent.
    let mut child = serve(dir, "", "serve-6.log");
    // Recorded delivered: no attempt of it is left, so whatever the receiver has now is all
    // it will get.
    wait_for(
        "the resolved notice, delivered",
        dir,
        "serve-6.log",
        async || {
            let outbox = store.outbox(10).await.unwrap();
            outbox.len() == 2 && outbox.iter().all(|i| i.delivered_at.is_some())
        },
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(notices(), ["firing", "resolved"]);
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
"#,
    )
    .unwrap();
    config
}

#[tokio::test]
async fn a_source_behind_a_failing_network_fails_the_run_within_its_deadline_and_resolves_nothing()
{
    use crate::proxy::{Fault, FaultProxy};
    use std::time::{Duration, Instant};
    let db = crate::helpers::TestPg::new().await;
    let proxy = FaultProxy::start(pg_address()).await;
    let tmp = tempfile::tempdir().unwrap();
    let config = network_project(tmp.path(), &db, &proxy, "").await;
    let first = check_off_runtime(&config).await;
    assert_eq!(first.status.code(), Some(1), "{}", combined_output(&first));
    let store = trueup::store::open(&SecretUrl::new(sqlite_url(&tmp.path().join("trueup.db"))))
        .await
        .unwrap();
    assert_eq!(active(store.as_ref()).await, 10);
    db.exec("INSERT INTO ledger SELECT g FROM generate_series(1, 10) g")
        .await;

    // Each fault fails the run, within the statement timeout (2 s), the reader's grace (5 s)
    // and the connection probe (5 s), and leaves the ten open.
    let mut table = Vec::new();
    for fault in [
        Fault::ResetAfter(64 * 1024),
        Fault::Blackhole,
        Fault::Bandwidth(100 * 1024),
    ] {
        proxy.set(fault);
        let started = Instant::now();
        let out = check_off_runtime(&config).await;
        let took = started.elapsed();
        let text = combined_output(&out);
        let open = active(store.as_ref()).await;
        table.push(format!(
            "{fault:?}: exit {:?} after {took:.1?}, still open {open}/10",
            out.status.code()
        ));
        assert_eq!(out.status.code(), Some(2), "{fault:?}: {text}");
        assert_eq!(open, 10, "{fault:?}: {text}");
        assert!(
            took < Duration::from_secs(20),
            "{fault:?} took {took:?}: {text}"
        );
    }
    // Slow but whole: latency delays the run, which completes and resolves the ten.
    proxy.set(Fault::Latency(Duration::from_millis(5)));
    let out = check_off_runtime(&config).await;
    assert_eq!(out.status.code(), Some(0), "{}", combined_output(&out));
    assert_eq!(active(store.as_ref()).await, 0);
    println!("{}", table.join("\n"));
}

#[tokio::test]
async fn under_serve_a_stalled_source_fails_its_runs_and_the_next_tick_after_it_recovers_succeeds()
{
    use crate::proxy::{Fault, FaultProxy};
    use std::time::{Duration, Instant};
    let db = crate::helpers::TestPg::new().await;
    let proxy = FaultProxy::start(pg_address()).await;
    let tmp = tempfile::tempdir().unwrap();
    let config = network_project(tmp.path(), &db, &proxy, "serve:\n  run_timeout: 20s\n").await;
    std::fs::write(
        tmp.path().join("invariants/events.yaml"),
        std::fs::read_to_string(tmp.path().join("invariants/events.yaml"))
            .unwrap()
            .replace(
                "  - name: events-booked\n",
                "  - name: events-booked\n    schedule: \"*/2 * * * * *\"\n",
            ),
    )
    .unwrap();
    let config = trueup::config::Config::load(&config).unwrap();
    let server = crate::helpers::TestServer::start(config).await;
    let store = std::sync::Arc::clone(&server.store);
    let runs = async |status: RunStatus| {
        store
            .runs(Some("events-booked"), 1000)
            .await
            .unwrap()
            .iter()
            .filter(|r| r.status == status)
            .count()
    };
    crate::helpers::wait_for("a first run", Duration::from_secs(20), || async {
        runs(RunStatus::Succeeded).await >= 1
    })
    .await;
    assert_eq!(active(store.as_ref()).await, 10);
    db.exec("INSERT INTO ledger SELECT g FROM generate_series(1, 10) g")
        .await;
    // The one pooled connection stalls mid-use: runs fail (the reader's deadline, not the
    // run timeout), nothing resolves.
    proxy.set(Fault::Blackhole);
    let failed_before = runs(RunStatus::Failed).await;
    crate::helpers::wait_for("two failed runs", Duration::from_secs(40), || async {
        runs(RunStatus::Failed).await >= failed_before + 2
    })
    .await;
    assert_eq!(active(store.as_ref()).await, 10);
    // Back to normal: a stalled connection was closed, not pooled, so the next tick succeeds.
    proxy.set(Fault::None);
    let recovered = Instant::now();
    crate::helpers::wait_for(
        "a run that resolves the ten",
        Duration::from_secs(20),
        || async { active(store.as_ref()).await == 0 },
    )
    .await;
    println!(
        "recovered {:.1?} after the network did",
        recovered.elapsed()
    );
    assert!(
        recovered.elapsed() < Duration::from_secs(12),
        "{:?}",
        recovered.elapsed()
    );
    server.stop().await;
}

#[tokio::test]
async fn an_apply_killed_at_ten_points_applies_each_action_exactly_once() {
    use std::time::{Duration, Instant};
    use trueup::domain::ActionStatus;
    const N: i64 = 3000;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut up = String::from("CREATE TABLE events (id INTEGER PRIMARY KEY, amount INTEGER);");
    up.push_str(&format!(
        "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {N}) \
         INSERT INTO events SELECT i, i * 7 FROM g;"
    ));
    sqlite_file(&dir.join("up.db"), &up).await;
    // No unique key: an action applied twice would be a second row.
    sqlite_file(
        &dir.join("down.db"),
        "CREATE TABLE ledger (event_id INTEGER NOT NULL, amount INTEGER NOT NULL);",
    )
    .await;
    let config = dir.join("trueup.yaml");
    std::fs::write(
        &config,
        format!(
            "store: {}\nsources:\n  up: {{url: {}}}\n  down: {{url: {}}}\ntargets:\n  writer: {{url: {}}}\n",
            sqlite_url(&dir.join("trueup.db")),
            sqlite_url(&dir.join("up.db")),
            sqlite_url(&dir.join("down.db")),
            sqlite_url(&dir.join("down.db")),
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("invariants")).unwrap();
    std::fs::write(
        dir.join("invariants/ledger.yaml"),
        r#"invariants:
  - name: events-booked
    reconcile:
      left: {source: up, query: "SELECT id, amount FROM events"}
      right: {source: down, query: "SELECT event_id AS id, amount FROM ledger"}
      key: id
    compensate:
      missing:
        sql:
          target: writer
          statement: INSERT INTO ledger (event_id, amount) VALUES ({{key.id}}, {{left.amount}})
"#,
    )
    .unwrap();
    let checked = check_off_runtime(&config).await;
    assert!(
        combined_output(&checked).contains(&format!("proposed plan 1: {N} actions")),
        "{}",
        combined_output(&checked)
    );
    let mut approve = trueup_cli(&config, "approver");
    approve.args(["plan", "approve", "1"]);
    let approved = crate::helpers::output_off_runtime(approve).await;
    assert!(approved.status.success(), "{}", combined_output(&approved));

    let store = trueup::store::open(&SecretUrl::new(sqlite_url(&dir.join("trueup.db"))))
        .await
        .unwrap();
    let finished = async || -> u64 {
        store
            .action_progress(1)
            .await
            .unwrap()
            .iter()
            .filter(|(s, _)| s.is_final())
            .map(|(_, n)| *n)
            .sum()
    };
    let step = N as u64 / 11;
    let mut killed_at = Vec::new();
    for k in 1..=10u64 {
        let point = k * step;
        let mut child = Killed(
            trueup_cli(&config, "approver")
                .args(["apply", "1", "--rate", "unlimited", "--lease", "1s"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let started = Instant::now();
        while finished().await < point {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "apply made no progress"
            );
            assert!(
                child.0.try_wait().unwrap().is_none(),
                "apply ended before the kill point {point}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        killed_at.push(finished().await);
    }
    let mut last = trueup_cli(&config, "approver");
    last.args(["apply", "1", "--rate", "unlimited", "--lease", "1s"]);
    let out = crate::helpers::output_off_runtime(last).await;
    assert!(
        combined_output(&out).contains("plan 1 is applied"),
        "{}",
        combined_output(&out)
    );
    let mut down = sqlx::SqliteConnection::connect(&sqlite_url(&dir.join("down.db")))
        .await
        .unwrap();
    let (rows, distinct, wrong): (i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT event_id), SUM(amount <> event_id * 7) FROM ledger",
    )
    .fetch_one(&mut down)
    .await
    .unwrap();
    println!("killed with {killed_at:?} of {N} actions done: {rows} rows, {distinct} distinct");
    assert_eq!(
        (rows, distinct, wrong),
        (N, N, 0),
        "killed at {killed_at:?}"
    );
    let progress = store.action_progress(1).await.unwrap();
    assert_eq!(progress.get(&ActionStatus::Failed), None, "{progress:?}");
    // An action whose effect committed just before a kill is found done by the next worker
    // (its marker row) and recorded as skipped: done once either way.
    assert_eq!(
        progress.get(&ActionStatus::Applied).copied().unwrap_or(0)
            + progress.get(&ActionStatus::Skipped).copied().unwrap_or(0),
        N as u64,
        "{progress:?}"
    );
}

#[tokio::test]
async fn a_webhook_behind_a_failing_network_gets_its_notice_once_when_the_network_recovers() {
    use crate::proxy::{Fault, FaultProxy};
    use std::time::{Duration, Instant};
    let (url, received) = crate::notify::webhook_listener().await;
    let upstream: std::net::SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches("/hook")
        .parse()
        .unwrap();
    let proxy = FaultProxy::start(upstream).await;
    proxy.set(Fault::Blackhole);
    let tmp = tempfile::tempdir().unwrap();
    let config = project_with(
        tmp.path(),
        &format!(
            "notifications:\n  channels:\n    ops:\n      webhook: {{url: \"http://{}/hook\"}}\n",
            proxy.addr
        ),
        "    schedule: \"* * * * * *\"\n",
    )
    .await;
    let config = trueup::config::Config::load(&config).unwrap();
    let server = crate::helpers::TestServer::start(config).await;
    let store = std::sync::Arc::clone(&server.store);
    // Blackholed: the attempt ends at the webhook's 15 s deadline, the notice stays queued,
    // the schedule goes on.
    let queued = Instant::now();
    crate::helpers::wait_for("a timed-out delivery", Duration::from_secs(30), || async {
        store
            .outbox(10)
            .await
            .unwrap()
            .iter()
            .any(|i| i.attempts >= 1 && i.delivered_at.is_none())
    })
    .await;
    let took = queued.elapsed();
    println!("blackholed webhook attempt ended after {took:.1?}");
    // The webhook's 15 s deadline, not sooner (it waited) and not much later.
    assert!(
        (Duration::from_secs(14)..Duration::from_secs(25)).contains(&took),
        "{took:?}"
    );
    let error = store.outbox(10).await.unwrap()[0]
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(
        error.contains("timed out") || error.contains("timeout"),
        "{error}"
    );
    assert!(received.lock().unwrap().is_empty());
    assert!(succeeded_runs(store.as_ref()).await >= 5);
    // The answer is cut by a reset: the receiver may have the notice, trueup cannot know, so
    // it tries again with the same Idempotency-Key.
    proxy.set(Fault::ResetAfter(0));
    crate::helpers::wait_for("a reset delivery", Duration::from_secs(30), || async {
        store
            .outbox(10)
            .await
            .unwrap()
            .iter()
            .any(|i| i.attempts >= 2)
    })
    .await;
    // The network recovers: the notice is recorded delivered, and every copy the receiver
    // saw carries one key, so a receiver that honours it acts once.
    proxy.set(Fault::None);
    crate::helpers::wait_for("the delivered notice", Duration::from_secs(30), || async {
        store
            .outbox(10)
            .await
            .unwrap()
            .iter()
            .all(|i| i.delivered_at.is_some())
    })
    .await;
    assert_eq!(store.outbox(10).await.unwrap().len(), 1);
    // Stopped, the outbox worker has ended: every copy the receiver will ever see is in.
    server.stop().await;
    let got = received.lock().unwrap().clone();
    println!("the receiver saw {} copies of the one notice", got.len());
    assert!(!got.is_empty());
    let mut keys: Vec<Option<String>> = got.iter().map(|(k, _)| k.clone()).collect();
    keys.dedup();
    assert_eq!(keys.len(), 1, "{got:?}");
    assert!(keys[0].is_some(), "{got:?}");
    assert!(got.iter().all(|(_, p)| p["notice"] == "firing"), "{got:?}");
}

#[tokio::test]
async fn an_smtp_server_behind_a_failing_network_gets_the_notice_once_when_the_network_recovers() {
    use crate::proxy::{Fault, FaultProxy};
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let port = crate::notify::free_port();
    let smtp = crate::notify::SmtpServer::start(port, &tmp.path().join("mail"));
    let proxy = FaultProxy::start(([127, 0, 0, 1], port).into()).await;
    // The server's greeting is cut: each attempt fails at once.
    proxy.set(Fault::ResetAfter(0));
    let config = project_with(
        tmp.path(),
        &format!(
            "notifications:\n  channels:\n    oncall:\n      email: {{smtp: \"smtp://{}\", from: trueup@example.com, to: [oncall@example.com]}}\n",
            proxy.addr
        ),
        "    schedule: \"* * * * * *\"\n",
    )
    .await;
    let config = trueup::config::Config::load(&config).unwrap();
    let server = crate::helpers::TestServer::start(config).await;
    let store = std::sync::Arc::clone(&server.store);
    crate::helpers::wait_for("a failed delivery", Duration::from_secs(30), || async {
        store
            .outbox(10)
            .await
            .unwrap()
            .iter()
            .any(|i| i.attempts >= 1)
    })
    .await;
    // Blackholed: the next attempt ends at the SMTP client's 20 s deadline.
    proxy.set(Fault::Blackhole);
    let attempts = store.outbox(10).await.unwrap()[0].attempts;
    let since = Instant::now();
    crate::helpers::wait_for("a timed-out delivery", Duration::from_secs(60), || async {
        store.outbox(10).await.unwrap()[0].attempts > attempts
    })
    .await;
    let took = since.elapsed();
    println!("blackholed SMTP attempt ended {took:.1?} after the fault was set");
    assert!(took < Duration::from_secs(40), "{took:?}");
    assert!(smtp.messages().is_empty());
    // The network recovers: one message.
    proxy.set(Fault::None);
    crate::helpers::wait_for(
        "the message, delivered",
        Duration::from_secs(60),
        || async { store.outbox(10).await.unwrap()[0].delivered_at.is_some() },
    )
    .await;
    // Stopped, the outbox worker has ended: no copy can still be on its way.
    server.stop().await;
    assert_eq!(smtp.messages().len(), 1);
}

#[tokio::test]
async fn notification_delivery_killed_at_four_points_loses_no_notice() {
    use crate::proxy::{Fault, FaultProxy};
    use std::time::Duration;
    let (url, received) = crate::notify::webhook_listener().await;
    let upstream: std::net::SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches("/hook")
        .parse()
        .unwrap();
    // Each delivery takes a while, so the kills land between and during them.
    let proxy = FaultProxy::start(upstream).await;
    proxy.set(Fault::Latency(Duration::from_millis(150)));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    project_with(
        dir,
        &format!(
            "notifications:\n  channels:\n    ops:\n      webhook: {{url: \"http://{}/hook\"}}\n",
            proxy.addr
        ),
        "    schedule: \"* * * * * *\"\n",
    )
    .await;
    // Five invariants, all violated: five firing notices.
    let one = std::fs::read_to_string(dir.join("invariants/events.yaml")).unwrap();
    let body = one.trim_start_matches("invariants:\n");
    let mut all = String::from("invariants:\n");
    for n in 1..=5 {
        all.push_str(&body.replace(
            "name: events-recorded",
            &format!("name: events-recorded-{n}"),
        ));
    }
    std::fs::write(dir.join("invariants/events.yaml"), all).unwrap();
    let count = || received.lock().unwrap().len();
    let mut killed_at = Vec::new();
    for k in 1..=4 {
        let log = format!("serve-{k}.log");
        let mut child = serve(dir, "", &log);
        wait_for("a delivery", dir, &log, async || count() >= k).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        killed_at.push(count());
    }
    let _last = serve(dir, "", "serve-5.log");
    let store = trueup::store::open(&SecretUrl::new(sqlite_url(&dir.join("trueup.db"))))
        .await
        .unwrap();
    wait_for("every notice delivered", dir, "serve-5.log", async || {
        let outbox = store.outbox(100).await.unwrap();
        outbox.len() == 5 && outbox.iter().all(|i| i.delivered_at.is_some())
    })
    .await;
    let got = received.lock().unwrap().clone();
    let mut keys: Vec<String> = got
        .iter()
        .map(|(_, p)| p["dedup_key"].as_str().unwrap().to_owned())
        .collect();
    let copies = keys.len();
    keys.sort();
    keys.dedup();
    println!(
        "killed after {killed_at:?} deliveries: 5 notices, {copies} requests ({} sent again after a kill, same key)",
        copies - keys.len()
    );
    assert_eq!(keys.len(), 5, "no notice lost: {got:?}");
    assert!(got.iter().all(|(_, p)| p["notice"] == "firing"), "{got:?}");
}
