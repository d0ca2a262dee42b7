//! Fault injection along a run: at every stage, when recording the alert or its notice, a source
//! behind a failing network, a stalled source under serve.

use super::*;

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

    // Violated: the alert fires and its notice arrives, and the outbox records it delivered
    // (killed between the two, the next serve sends it again: delivery is at least once).
    let mut child = serve(dir, "", "serve-1.log");
    wait_for(
        "the firing notice, recorded delivered",
        dir,
        "serve-1.log",
        async || {
            notices() == ["firing"]
                && store
                    .outbox(10)
                    .await
                    .unwrap()
                    .iter()
                    .all(|i| i.delivered_at.is_some())
        },
    )
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
    // Checksummed, a run moves a few kilobytes (the faults above are sized for a stream's
    // megabytes); a source that stops answering fails it all the same.
    let invariant = tmp.path().join("invariants/events.yaml");
    let text = std::fs::read_to_string(&invariant).unwrap();
    std::fs::write(&invariant, text.replace("mode: stream", "mode: checksum")).unwrap();
    proxy.set(Fault::Blackhole);
    let started = Instant::now();
    let out = check_off_runtime(&config).await;
    let took = started.elapsed();
    let text = combined_output(&out);
    table.push(format!(
        "Blackhole, checksummed: exit {:?} after {took:.1?}",
        out.status.code()
    ));
    assert_eq!(out.status.code(), Some(2), "checksummed: {text}");
    assert_eq!(active(store.as_ref()).await, 10, "checksummed: {text}");
    assert!(
        took < Duration::from_secs(20),
        "checksummed took {took:?}: {text}"
    );

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

/// sqlx pings a connection as it goes back to its pool, with no deadline: one released just as
/// its network stalls kept `close` waiting for as long as the stall lasted (an apply hung at
/// exit in CI). Closing is bounded now.
#[tokio::test]
async fn closing_a_pool_whose_released_connection_stalled_ends_within_its_deadline() {
    use crate::proxy::{Fault, FaultProxy};
    use sqlx::Executor;
    let data = crate::helpers::TestPg::new().await;
    let server = crate::helpers::pg_server();
    let host_port = server.rsplit('@').next().unwrap().trim_end_matches('/');
    let upstream = std::net::ToSocketAddrs::to_socket_addrs(host_port)
        .unwrap()
        .next()
        .unwrap();
    let proxy = FaultProxy::start(upstream).await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&proxy.url(&data.url))
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    conn.execute("SELECT 1").await.unwrap();
    proxy.set(Fault::Blackhole);
    // Released: its return to the pool (a task sqlx spawns) pings through the stalled
    // network. On this test's single-threaded runtime, yielding lets that task send its ping
    // and wait for the answer that never comes.
    drop(conn);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        pool.num_idle(),
        0,
        "the released connection is still being pinged"
    );
    let started = std::time::Instant::now();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        trueup::connect::close_within(&pool, std::time::Duration::from_secs(2), "the proxy"),
    )
    .await
    .expect("closing is bounded by its deadline, never by the stall");
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(1900) && took < std::time::Duration::from_secs(5),
        "closed after {took:?}: the stalled connection held the pool until the deadline, no longer"
    );
    proxy.set(Fault::None);
}

#[tokio::test]
async fn under_serve_a_run_whose_commit_fails_drops_health_to_zero_and_counts_a_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    project_with(
        dir,
        &crate::serve::tokens_yaml(""),
        "    schedule: \"* * * * * *\"\n",
    )
    .await;
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    // The first run commits; every later commit fails (the store is what failed, so the run
    // cannot even be recorded as failed): only the metrics can say so.
    let _child = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_trueup"))
            .args(["--config", "trueup.yaml", "--log", "info", "serve"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .current_dir(dir)
            .env("FAILPOINTS", "store.commit=1*off->return")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("serve.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let healthy = "trueup_invariant_healthy{invariant=\"events-recorded\"}";
    let failures = "trueup_invariant_evaluation_failures_total{invariant=\"events-recorded\"}";
    // One run succeeded (health was 1 then), and the attempts since could not be recorded.
    let succeeded =
        "trueup_invariant_runs_total{invariant=\"events-recorded\",status=\"succeeded\"}";
    wait_for(
        "health 0 after a failed commit",
        dir,
        "serve.log",
        async || {
            let Ok(r) = reqwest::Client::new()
                .get(&metrics)
                .bearer_auth(crate::serve::VIEWER)
                .send()
                .await
            else {
                return false;
            };
            let text = r.text().await.unwrap_or_default();
            crate::serve::sample(&text, succeeded) == Some(1.0)
                && crate::serve::sample(&text, healthy) == Some(0.0)
                && crate::serve::sample(&text, failures).is_some_and(|n| n >= 1.0)
        },
    )
    .await;
    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap();
    assert!(log.contains("cannot record the run"), "{log}");
}
