//! Several `trueup serve` processes on one PostgreSQL store: every tick evaluated once, a
//! killed replica's tick taken over after its lease; a second process on SQLite refused; a
//! serve signalled the moment it starts stops or reloads gracefully.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use trueup::config::SecretUrl;
use trueup::domain::RunStatus;
use trueup::store;

use crate::helpers::TestPg;

pub(crate) struct Replica(pub(crate) Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn spawn_serve(dir: &Path, n: usize) -> Replica {
    let log = std::fs::File::create(dir.join(format!("replica-{n}.log"))).unwrap();
    Replica(
        Command::new(env!("CARGO_BIN_EXE_trueup"))
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
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

pub(crate) fn terminate(replica: &mut Replica) {
    let pid = replica.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = replica.0.try_wait() {
            assert!(status.success(), "SIGTERM must exit 0, got {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("replica {pid} did not stop on SIGTERM");
}

/// A project in `dir` whose invariants `names` each run every second, reading `db` through a
/// query that takes `run_secs`; replicas hold ticks under a 2 s lease.
fn slow_project(dir: &Path, db: &TestPg, names: &[&str], run_secs: f64) {
    std::fs::create_dir(dir.join("invariants")).unwrap();
    let mut yaml = String::from("invariants:\n");
    for name in names {
        yaml.push_str(&format!(
            "  - name: {name}\n    schedule: \"* * * * * *\"\n    check:\n      source: pg\n      query: SELECT i AS id FROM (SELECT pg_sleep({run_secs})) AS s, generate_series(1, 2) AS i\n      key: id\n"
        ));
    }
    std::fs::write(dir.join("invariants/slow.yaml"), yaml).unwrap();
    std::fs::write(
        dir.join("trueup.yaml"),
        format!(
            "store: {url}\nsources:\n  pg:\n    url: {reader}\nserve:\n  lease: 2s\n  run_timeout: 10s\n",
            url = db.url,
            reader = db.reader_url
        ),
    )
    .unwrap();
}

#[tokio::test]
async fn three_replicas_evaluate_each_tick_once_and_take_over_a_killed_ones_tick() {
    let db = TestPg::new().await;
    db.exec("CREATE TABLE items (id int)").await;
    let dir = tempfile::tempdir().unwrap();
    slow_project(dir.path(), &db, &["alpha", "beta", "gamma"], 0.4);
    // Migrate once up front so the three processes do not race on an empty database.
    let store = store::open(&SecretUrl::new(db.url.clone())).await.unwrap();

    let mut replicas: Vec<Replica> = (0..3).map(|n| spawn_serve(dir.path(), n)).collect();

    // Kill (SIGKILL) a replica while it holds a tick in flight.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (victim, held) = loop {
        assert!(
            Instant::now() < deadline,
            "no replica was seen running a tick"
        );
        let mut found = None;
        for name in ["alpha", "beta", "gamma"] {
            for t in store.ticks(name, 10_000).await.unwrap() {
                if !t.finished
                    && let Some(i) = replicas
                        .iter()
                        .position(|r| t.owner.contains(&format!("-{}-", r.0.id())))
                {
                    found = Some((i, t));
                }
            }
        }
        if let Some(f) = found {
            break f;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut killed = replicas.remove(victim);
    killed.0.kill().unwrap();
    killed.0.wait().unwrap();
    let killed_at = chrono::Utc::now();

    // The killed replica's tick is taken over by another once its lease (2 s) ends, and
    // finished.
    let taken_over = || async {
        let ticks = store.ticks(&held.invariant, 10_000).await.unwrap();
        ticks.into_iter().find(|t| t.fire_at == held.fire_at)
    };
    crate::helpers::wait_for(
        "the killed replica's tick, taken over",
        Duration::from_secs(20),
        || async {
            taken_over()
                .await
                .is_some_and(|t| t.finished && t.taken_over)
        },
    )
    .await;
    let taken = taken_over().await.unwrap();
    assert_ne!(taken.owner, held.owner);
    // The schedule goes on: enough finished ticks of each invariant to judge it by.
    crate::helpers::wait_for(
        "five finished ticks of each invariant",
        Duration::from_secs(20),
        || async {
            let mut enough = true;
            for name in ["alpha", "beta", "gamma"] {
                let ticks = store.ticks(name, 10_000).await.unwrap();
                enough &= ticks.iter().filter(|t| t.finished).count() >= 5;
            }
            enough
        },
    )
    .await;
    for r in &mut replicas {
        terminate(r);
    }

    for name in ["alpha", "beta", "gamma"] {
        let ticks = store.ticks(name, 10_000).await.unwrap();
        assert!(
            ticks.len() >= 5,
            "{name}: only {} ticks: {ticks:#?}\n{}",
            ticks.len(),
            std::fs::read_to_string(dir.path().join("replica-1.log")).unwrap_or_default()
        );
        assert!(
            ticks.iter().all(|t| t.finished),
            "{name}: unfinished ticks after shutdown"
        );
        // Each tick evaluated once: one run per tick, and every succeeded run belongs to one.
        let runs = store.runs(Some(name), 10_000).await.unwrap();
        let succeeded: Vec<i64> = runs
            .iter()
            .filter(|r| r.status == RunStatus::Succeeded)
            .map(|r| r.id)
            .collect();
        let mut tick_runs: Vec<i64> = ticks.iter().filter_map(|t| t.run_id).collect();
        tick_runs.sort();
        tick_runs.dedup();
        assert_eq!(
            tick_runs.len(),
            ticks.iter().filter(|t| t.run_id.is_some()).count(),
            "{name}: a run serves two ticks"
        );
        let mut succeeded_sorted = succeeded.clone();
        succeeded_sorted.sort();
        let mut ran: Vec<i64> = tick_runs
            .iter()
            .copied()
            .filter(|id| succeeded.contains(id))
            .collect();
        ran.sort();
        assert_eq!(
            ran, succeeded_sorted,
            "{name}: every succeeded run answers one tick"
        );
        // One run of an invariant at a time, across replicas.
        let mut by_start = runs.clone();
        by_start.sort_by_key(|r| r.started_at);
        for w in by_start.windows(2) {
            if let Some(end) = w[0].finished_at {
                assert!(
                    end <= w[1].started_at || w[0].status == RunStatus::Failed,
                    "{name}: runs {} and {} overlap",
                    w[0].id,
                    w[1].id
                );
            }
        }
        // No tick lost beyond the lease: the schedule's gaps stay within lease + a tick.
        for w in ticks.windows(2) {
            let gap = w[1].fire_at - w[0].fire_at;
            assert!(
                gap <= chrono::TimeDelta::seconds(4),
                "{name}: gap of {gap} after {} (kill at {killed_at})",
                w[0].fire_at
            );
        }
        // The killed replica's run is failed, not left running.
        assert!(
            runs.iter().all(|r| r.status != RunStatus::Running),
            "{name}: a run left running"
        );
    }
    store.close().await;
}

#[test]
fn a_second_serve_on_one_sqlite_store_is_refused_with_a_clear_message() {
    let dir = sqlite_project();
    let mut first = spawn_serve(dir.path(), 0);
    // Serving means holding the store's lock.
    wait_for_log(dir.path(), 0, "trueup is serving");
    let second = Command::new(env!("CARGO_BIN_EXE_trueup"))
        .args([
            "--config",
            "trueup.yaml",
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("SQLite supports a single replica"), "{err}");
    assert!(err.contains("PostgreSQL"), "{err}");
    terminate(&mut first);
}

/// Slow runs on three replicas, one of them killed (SIGKILL) mid-run ten times and replaced:
/// every fire time of each invariant has exactly one outcome (a run, or a recorded miss), no
/// two runs of an invariant overlap, and the only failed runs are the killed replicas' own.
#[tokio::test]
async fn replicas_killed_mid_run_ten_times_leave_one_outcome_per_fire_time_and_fail_only_their_own_runs()
 {
    let db = TestPg::new().await;
    let dir = tempfile::tempdir().unwrap();
    let names = ["alpha", "beta"];
    slow_project(dir.path(), &db, &names, 0.7);
    let store = store::open(&SecretUrl::new(db.url.clone())).await.unwrap();
    let mut spawned = 0;
    let mut replicas: Vec<Replica> = (0..3)
        .map(|_| {
            spawned += 1;
            spawn_serve(dir.path(), spawned)
        })
        .collect();

    // Each kill: a replica seen holding a tick whose run has begun; its run is the one that
    // may fail.
    let mut killed_runs = std::collections::BTreeSet::new();
    for kill in 0..10 {
        let deadline = Instant::now() + Duration::from_secs(20);
        let (victim, run) = loop {
            assert!(Instant::now() < deadline, "kill {kill}: no run in flight");
            let mut found = None;
            for name in names {
                for t in store.ticks(name, 100_000).await.unwrap() {
                    if let (false, Some(run)) = (t.finished, t.run_id)
                        && let Some(i) = replicas
                            .iter()
                            .position(|r| t.owner.contains(&format!("-{}-", r.0.id())))
                    {
                        found = Some((i, run));
                    }
                }
            }
            if let Some(f) = found {
                break f;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut dead = replicas.remove(victim);
        let pid = dead.0.id();
        dead.0.kill().unwrap();
        dead.0.wait().unwrap();
        // Every run the dead replica had begun (it may hold a tick of each invariant): its
        // ticks keep it as their owner until their leases run out.
        killed_runs.insert(run);
        for name in names {
            for t in store.ticks(name, 100_000).await.unwrap() {
                if !t.finished && t.owner.contains(&format!("-{pid}-")) {
                    killed_runs.extend(t.run_id);
                }
            }
        }
        spawned += 1;
        replicas.push(spawn_serve(dir.path(), spawned));
        // The dead replica's tick is taken over before the next kill.
        crate::helpers::wait_for(
            "the killed replica's run, failed by the takeover",
            Duration::from_secs(20),
            || async {
                let runs = store.runs(None, 100_000).await.unwrap();
                runs.iter()
                    .any(|r| r.id == run && r.status == RunStatus::Failed)
            },
        )
        .await;
    }
    // The schedule goes on after the last takeover: three more ticks of each invariant run.
    let ran = |ticks: &[trueup::store::Tick]| ticks.iter().filter(|t| t.run_id.is_some()).count();
    let mut before = Vec::new();
    for name in names {
        before.push(ran(&store.ticks(name, 100_000).await.unwrap()));
    }
    crate::helpers::wait_for(
        "three more runs of each invariant",
        Duration::from_secs(20),
        || async {
            let mut enough = true;
            for (name, n) in names.iter().zip(&before) {
                enough &= ran(&store.ticks(name, 100_000).await.unwrap()) >= n + 3;
            }
            enough
        },
    )
    .await;
    for r in &mut replicas {
        terminate(r);
    }

    let log = || {
        (1..=spawned)
            .map(|n| {
                std::fs::read_to_string(dir.path().join(format!("replica-{n}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    let mut failed_seen = std::collections::BTreeSet::new();
    for name in names {
        let ticks = store.ticks(name, 100_000).await.unwrap();
        assert!(ticks.len() >= 20, "{name}: {} ticks", ticks.len());
        // One outcome per fire time, and no fire time without one (every second).
        for t in &ticks {
            assert!(t.finished, "{name}: tick {} left unfinished", t.fire_at);
            assert!(
                t.missed != t.run_id.is_some(),
                "{name}: tick {} has {} (missed: {})",
                t.fire_at,
                t.run_id.map_or("no run".into(), |r| format!("run {r}")),
                t.missed
            );
        }
        for w in ticks.windows(2) {
            assert_eq!(
                w[1].fire_at - w[0].fire_at,
                chrono::TimeDelta::seconds(1),
                "{name}: no outcome for the fire times between {} and {}\n{}",
                w[0].fire_at,
                w[1].fire_at,
                log()
            );
        }
        // The runs the ticks record succeeded, each for one tick.
        let runs = store.runs(Some(name), 100_000).await.unwrap();
        let mut tick_runs: Vec<i64> = ticks.iter().filter_map(|t| t.run_id).collect();
        let count = tick_runs.len();
        tick_runs.sort();
        tick_runs.dedup();
        assert_eq!(tick_runs.len(), count, "{name}: a run answers two ticks");
        for id in &tick_runs {
            let run = runs.iter().find(|r| r.id == *id).unwrap();
            assert_eq!(
                run.status,
                RunStatus::Succeeded,
                "{name}: run {id}: {:?}",
                run.error
            );
        }
        // No two runs of the invariant overlap, failed ones included.
        let mut by_start = runs.clone();
        by_start.sort_by_key(|r| r.started_at);
        for w in by_start.windows(2) {
            let end = w[0].finished_at.expect("every run ended");
            assert!(
                end <= w[1].started_at,
                "{name}: run {} ({:?}, until {end}) overlaps run {} (from {})",
                w[0].id,
                w[0].status,
                w[1].id,
                w[1].started_at
            );
        }
        for r in runs.iter().filter(|r| r.status != RunStatus::Succeeded) {
            assert!(
                r.error
                    .as_deref()
                    .is_some_and(|e| e.contains("stopped answering")),
                "{name}: run {} {:?}: {:?}",
                r.id,
                r.status,
                r.error
            );
            failed_seen.insert(r.id);
        }
    }
    // Only the killed replicas' runs failed: no live replica's run was.
    assert_eq!(failed_seen, killed_runs, "{}", log());
    store.close().await;
}

/// A project with no invariants on a SQLite store.
fn sqlite_project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("invariants")).unwrap();
    std::fs::write(
        dir.path().join("trueup.yaml"),
        "store: sqlite://trueup.db\n",
    )
    .unwrap();
    dir
}

/// Waits (polling closely, so that a signal can follow at once) until the log of `serve`
/// number `n` in `dir` holds `text`.
fn wait_for_log(dir: &Path, n: usize, text: &str) {
    let log = dir.join(format!("replica-{n}.log"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains(text)) {
        assert!(Instant::now() < deadline, "serve {n} did not log {text:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The signal handlers exist before `serve` says it is serving: a SIGTERM or SIGHUP sent the
/// moment the announcement appears gets a graceful shutdown or a reload, never the signal's
/// default action (which kills the process).
#[test]
fn a_serve_signalled_the_moment_it_announces_itself_reloads_or_shuts_down_gracefully() {
    let dir = sqlite_project();
    for n in 0..5 {
        let mut serve = spawn_serve(dir.path(), n);
        wait_for_log(dir.path(), n, "trueup serving on");
        terminate(&mut serve);
    }
    let n = 5;
    let mut serve = spawn_serve(dir.path(), n);
    wait_for_log(dir.path(), n, "trueup serving on");
    let pid = serve.0.id().to_string();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    let log = dir.path().join(format!("replica-{n}.log"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("reloaded the invariants")) {
        assert!(
            serve.0.try_wait().unwrap().is_none(),
            "SIGHUP killed serve: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "no reload after SIGHUP");
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("reloaded the invariants") && l.contains("SIGHUP")),
        "{text}"
    );
    terminate(&mut serve);
}
