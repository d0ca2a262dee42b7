//! Fault injection along deliveries: an apply killed at ten points, webhooks and SMTP behind a
//! failing network, notice delivery killed at four points.

use super::*;

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
