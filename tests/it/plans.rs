//! Compensation plans end to end, against real databases: propose, approve (bound to the
//! content hash, distinct identities), dry run, apply (re-check, idempotency, rate, crashes,
//! racing applies), staleness and the audit trail.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use trueup::app::App;
use trueup::config::Config;
use trueup::domain::Actor;
use trueup::domain::Role;
use trueup::domain::{ActionStatus, PlanState};
use trueup::plan::apply::{self, ApplyEnv, ApplyOptions, Outcome, Rate};
use trueup::plan::targets::Targets;
use trueup::plan::{self, PlanError, Proposal};
use trueup::store::Store;

use crate::helpers::{TestPg, sqlite_file, sqlite_url};

fn actor(name: &str, role: Role) -> Actor {
    Actor {
        name: name.into(),
        role,
    }
}

/// Writes trueup.yaml and one invariant file into `dir`; returns the config's path.
fn write_config(dir: &Path, config: &str, invariants: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("invariants")).unwrap();
    std::fs::write(dir.join("invariants/rules.yaml"), invariants).unwrap();
    let path = dir.join("trueup.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

async fn open(config: &Path) -> App {
    App::with_config(Config::load(config).unwrap())
        .await
        .unwrap()
}

fn env<'a>(
    app: &'a App,
    targets: &'a Targets,
    who: &'a Actor,
    plan_invariant: &str,
    worker: &str,
) -> ApplyEnv<'a> {
    ApplyEnv {
        store: app.store.as_ref(),
        sources: &app.sources,
        targets,
        invariant: app
            .invariants
            .iter()
            .find(|i| i.name.as_str() == plan_invariant),
        actor: who,
        worker: worker.into(),
    }
}

/// Applies (or dry-runs) a plan to the end, without a progress display.
async fn apply_plan(
    env: &ApplyEnv<'_>,
    id: i64,
    opts: &ApplyOptions,
) -> Result<trueup::plan::apply::ApplyReport, PlanError> {
    apply::apply(env, id, opts, &CancellationToken::new(), &|_| {}).await
}

fn unlimited() -> ApplyOptions {
    ApplyOptions {
        rate: Rate::Unlimited,
        ..ApplyOptions::default()
    }
}

const EVENTS_RULES: &str = r#"invariants:
  - name: events-delivered
    severity: critical
    reconcile:
      left: {source: upstream, query: "SELECT id AS event_id, amount FROM events"}
      right: {source: downstream, query: "SELECT event_id, amount FROM records"}
      key: event_id
    compensate:
      missing:
        sql:
          target: downstream-writer
          statement: INSERT INTO records (event_id, amount) VALUES ({{key.event_id}}, {{left.amount}})
      mismatch:
        sql:
          target: downstream-writer
          statement: UPDATE records SET amount = {{left.amount}} WHERE event_id = {{key.event_id}}
      extra:
        sql:
          target: downstream-writer
          statement: DELETE FROM records WHERE event_id = {{key.event_id}}
"#;

/// Upstream events 1..=20; downstream misses 3, 7 and 11, has a wrong amount for 5 and a
/// stray record 99: five violations, each with an SQL compensation.
async fn events_scenario(dir: &Path, store: &str, extra_config: &str) -> PathBuf {
    let mut up =
        String::from("CREATE TABLE events (id INTEGER PRIMARY KEY, amount INTEGER NOT NULL);");
    let mut down =
        String::from("CREATE TABLE records (event_id INTEGER NOT NULL, amount INTEGER NOT NULL);");
    for id in 1..=20 {
        up.push_str(&format!("INSERT INTO events VALUES ({id}, {});", id * 100));
        if ![3, 7, 11].contains(&id) {
            let amount = if id == 5 { 1 } else { id * 100 };
            down.push_str(&format!("INSERT INTO records VALUES ({id}, {amount});"));
        }
    }
    down.push_str("INSERT INTO records VALUES (99, 9900);");
    sqlite_file(&dir.join("upstream.db"), &up).await;
    sqlite_file(&dir.join("downstream.db"), &down).await;
    let config = format!(
        "store: {store}\nsources:\n  upstream: {{url: {}}}\n  downstream: {{url: {}}}\ntargets:\n  downstream-writer: {{url: {}}}\n{extra_config}",
        sqlite_url(&dir.join("upstream.db")),
        sqlite_url(&dir.join("downstream.db")),
        sqlite_url(&dir.join("downstream.db")),
    );
    write_config(dir, &config, EVENTS_RULES)
}

async fn records(dir: &Path) -> Vec<(i64, i64)> {
    let mut c = <sqlx::SqliteConnection as sqlx::Connection>::connect(&sqlite_url(
        &dir.join("downstream.db"),
    ))
    .await
    .unwrap();
    sqlx::query_as("SELECT event_id, amount FROM records ORDER BY event_id")
        .fetch_all(&mut c)
        .await
        .unwrap()
}

async fn the_plan_lifecycle(store_url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = events_scenario(dir.path(), store_url, "").await;
    let app = open(&config).await;
    let targets = Targets::open(&app.config).unwrap();
    let store = app.store.as_ref();

    // A run proposes a plan: one action per violation.
    let outcomes = app
        .check(&[], &trueup::domain::Actor::local("test"))
        .await
        .unwrap();
    let Some(Proposal::Created { plan: id, actions }) = outcomes[0].proposal.clone() else {
        panic!("no plan proposed: {:?}", outcomes[0].proposal)
    };
    assert_eq!(actions, 5);
    let inv = app.invariants.first();
    // Checking again finds nothing new, so proposes nothing; asking for a plan gets the open
    // one, which holds exactly these actions.
    let again = app
        .check(&[], &trueup::domain::Actor::local("test"))
        .await
        .unwrap();
    assert_eq!(again[0].proposal, None);
    let asked = plan::propose(
        store,
        &app.config,
        &app.invariants[0],
        &actor("otto", Role::Operator),
        None,
        Utc::now(),
    )
    .await
    .unwrap();
    assert_eq!(asked, Proposal::Unchanged { plan: id });

    // Critical: two distinct approvers. The same identity twice still counts once.
    let alice = actor("alice", Role::Approver);
    let first = plan::approve(store, id, inv, &alice, None, Utc::now())
        .await
        .unwrap();
    assert!(first.counted && !first.approved, "{first:?}");
    let twice = plan::approve(store, id, inv, &alice, None, Utc::now())
        .await
        .unwrap();
    assert!(!twice.counted && !twice.approved, "{twice:?}");
    assert_eq!(twice.approvers, vec!["alice".to_owned()]);

    // A dry run works before approval and changes nothing.
    let before = records(dir.path()).await;
    let dry = apply_plan(
        &env(&app, &targets, &alice, "events-delivered", "w1"),
        id,
        &ApplyOptions {
            dry_run: true,
            ..unlimited()
        },
    )
    .await
    .unwrap();
    assert_eq!(dry.counts.get(&Outcome::WouldApply), Some(&5), "{dry:?}");
    assert_eq!(records(dir.path()).await, before);

    // Live apply of an unapproved plan is refused, with no effect.
    let refused = apply_plan(
        &env(&app, &targets, &alice, "events-delivered", "w1"),
        id,
        &unlimited(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(refused.contains("not approved: 1 of 2"), "{refused}");
    assert_eq!(records(dir.path()).await, before);

    let bob = actor("bob", Role::Approver);
    let second = plan::approve(store, id, inv, &bob, None, Utc::now())
        .await
        .unwrap();
    assert!(second.approved, "{second:?}");

    // Someone fixes event 7 by hand between approval and apply: its action is skipped.
    sqlx::raw_sql("INSERT INTO records VALUES (7, 700)")
        .execute(
            &mut <sqlx::SqliteConnection as sqlx::Connection>::connect(&sqlite_url(
                &dir.path().join("downstream.db"),
            ))
            .await
            .unwrap(),
        )
        .await
        .unwrap();
    let report = apply_plan(
        &env(&app, &targets, &bob, "events-delivered", "w1"),
        id,
        &unlimited(),
    )
    .await
    .unwrap();
    assert_eq!(report.counts.get(&Outcome::Applied), Some(&4), "{report:?}");
    assert_eq!(
        report.counts.get(&Outcome::SkippedResolved),
        Some(&1),
        "{report:?}"
    );
    assert_eq!(
        report.samples[&Outcome::SkippedResolved][0].key,
        serde_json::json!([7])
    );
    assert_eq!(report.state, PlanState::Applied);
    let verified = report.verification.unwrap();
    assert_eq!(
        (verified.checked, verified.closed, verified.still_open),
        (4, 4, 0)
    );
    let expected: Vec<(i64, i64)> = (1..=20).map(|id| (id, id * 100)).collect();
    assert_eq!(records(dir.path()).await, expected);
    let skipped = store.plan_actions(id, None, 10).await.unwrap();
    let seven = skipped
        .iter()
        .find(|a| a.key == serde_json::json!([7]))
        .unwrap();
    assert_eq!(seven.status, ActionStatus::Skipped);

    // The ledger agrees at the next run.
    let after = app
        .check(&[], &trueup::domain::Actor::local("test"))
        .await
        .unwrap();
    assert_eq!(after[0].run.open_after, 0, "{:?}", after[0]);

    // The audit log tells the whole story; an applied plan is not applied again.
    let audit: Vec<String> = store
        .audit_log(Some(&format!("plan:{id}")), None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| format!("{} {}", e.actor, e.action))
        .collect();
    for expected in [
        "cli:",
        "alice plan.approve",
        "bob plan.approve",
        "bob plan.apply.start",
        "bob action.applied",
        "bob action.skipped",
        "bob plan.apply.finish",
        "bob plan.verify",
    ] {
        assert!(
            audit.iter().any(|a| a.contains(expected)),
            "{expected}: {audit:#?}"
        );
    }
    assert_eq!(
        audit.iter().filter(|a| a.ends_with("plan.approve")).count(),
        3
    );
    assert_eq!(audit.iter().filter(|a| a.contains("action.")).count(), 5);
    let again = apply_plan(
        &env(&app, &targets, &bob, "events-delivered", "w1"),
        id,
        &unlimited(),
    )
    .await
    .unwrap_err();
    assert!(
        again.to_string().contains("already been applied"),
        "{again}"
    );
    targets.close().await;
    app.close().await;
}

#[tokio::test]
async fn a_plan_is_proposed_approved_rechecked_and_applied_on_the_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    the_plan_lifecycle(&sqlite_url(&dir.path().join("trueup.db"))).await;
}

#[tokio::test]
async fn a_plan_is_proposed_approved_rechecked_and_applied_on_the_postgres_store() {
    let pg = TestPg::new().await;
    the_plan_lifecycle(&pg.url).await;
}

#[tokio::test]
async fn an_approved_plan_whose_actions_change_is_refused_and_a_fresh_one_proposed() {
    let dir = tempfile::tempdir().unwrap();
    let store_url = sqlite_url(&dir.path().join("trueup.db"));
    let config = events_scenario(dir.path(), &store_url, "").await;
    let app = open(&config).await;
    let targets = Targets::open(&app.config).unwrap();
    let outcomes = app
        .check(&[], &trueup::domain::Actor::local("test"))
        .await
        .unwrap();
    let Some(Proposal::Created { plan: id, .. }) = outcomes[0].proposal.clone() else {
        panic!("no plan")
    };
    let inv = app.invariants.first();
    for who in ["alice", "bob"] {
        plan::approve(
            app.store.as_ref(),
            id,
            inv,
            &actor(who, Role::Approver),
            None,
            Utc::now(),
        )
        .await
        .unwrap();
    }
    // Someone with access to the store edits an approved action.
    let mut db = <sqlx::SqliteConnection as sqlx::Connection>::connect(&store_url)
        .await
        .unwrap();
    sqlx::query("UPDATE plan_actions SET spec = json_set(spec, '$.params[1]', 1) WHERE plan_id = ? AND seq = 1")
        .bind(id)
        .execute(&mut db)
        .await
        .unwrap();
    let before = records(dir.path()).await;
    let err = apply_plan(
        &env(
            &app,
            &targets,
            &actor("bob", Role::Approver),
            "events-delivered",
            "w",
        ),
        id,
        &unlimited(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("actions changed after it was proposed"),
        "{err}"
    );
    assert_eq!(records(dir.path()).await, before, "nothing applied");
    // Proposing again makes a new plan (the tampered one cannot be reused) with no approvals.
    let fresh = plan::propose(
        app.store.as_ref(),
        &app.config,
        &app.invariants[0],
        &actor("carol", Role::Operator),
        None,
        Utc::now(),
    )
    .await
    .unwrap();
    let Proposal::Created { plan: new_id, .. } = fresh else {
        panic!("{fresh:?}")
    };
    let view = plan::view(
        app.store.as_ref(),
        plan::load(app.store.as_ref(), new_id).await.unwrap(),
        inv,
        Utc::now(),
    )
    .await
    .unwrap();
    assert!(
        view.approvers.is_empty() && view.status == "proposed",
        "{view:?}"
    );
    assert_eq!(
        app.store.plan(id).await.unwrap().unwrap().state,
        PlanState::Superseded
    );
    targets.close().await;
    app.close().await;
}

#[tokio::test]
async fn a_plan_goes_stale_when_its_invariant_changes_or_its_ttl_ends() {
    let dir = tempfile::tempdir().unwrap();
    let store_url = sqlite_url(&dir.path().join("trueup.db"));
    let config = events_scenario(
        dir.path(),
        &store_url,
        "plans:\n  ttl: 2s\n  approvals: {critical: 1}\n",
    )
    .await;
    let app = open(&config).await;
    let outcomes = app
        .check(&[], &trueup::domain::Actor::local("test"))
        .await
        .unwrap();
    let Some(Proposal::Created { plan: id, .. }) = outcomes[0].proposal.clone() else {
        panic!("no plan")
    };
    let alice = actor("alice", Role::Approver);
    plan::approve(
        app.store.as_ref(),
        id,
        app.invariants.first(),
        &alice,
        None,
        Utc::now(),
    )
    .await
    .unwrap();
    app.close().await;

    // The definition changes (another statement for mismatches): the plan is stale.
    std::fs::write(
        dir.path().join("invariants/rules.yaml"),
        EVENTS_RULES.replace(
            "SET amount = {{left.amount}}",
            "SET amount = {{left.amount}} + 0",
        ),
    )
    .unwrap();
    let app = open(&config).await;
    let targets = Targets::open(&app.config).unwrap();
    let err = apply_plan(
        &env(&app, &targets, &alice, "events-delivered", "w"),
        id,
        &unlimited(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("stale") && err.contains("changed since"),
        "{err}"
    );
    let view = plan::view(
        app.store.as_ref(),
        plan::load(app.store.as_ref(), id).await.unwrap(),
        app.invariants.first(),
        Utc::now(),
    )
    .await
    .unwrap();
    assert_eq!(view.status, "stale");

    // A fresh plan under the new definition expires after the TTL.
    let Proposal::Created { plan: fresh, .. } = plan::propose(
        app.store.as_ref(),
        &app.config,
        &app.invariants[0],
        &alice,
        None,
        Utc::now(),
    )
    .await
    .unwrap() else {
        panic!("no fresh plan")
    };
    // Approved 2.1 s later (the clock is a parameter): past the TTL.
    let err = plan::approve(
        app.store.as_ref(),
        fresh,
        app.invariants.first(),
        &alice,
        None,
        Utc::now() + chrono::TimeDelta::milliseconds(2100),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("expired"), "{err}");
    assert!(records(dir.path()).await.len() == 18, "nothing applied");
    targets.close().await;
    app.close().await;
}

#[tokio::test]
async fn who_may_approve_is_enforced_by_role_identity_and_manual_steps() {
    let dir = tempfile::tempdir().unwrap();
    let store_url = sqlite_url(&dir.path().join("trueup.db"));
    let config = events_scenario(dir.path(), &store_url, "").await;
    std::fs::write(
        dir.path().join("invariants/rules.yaml"),
        EVENTS_RULES.replace(
            "      extra:\n        sql:\n          target: downstream-writer\n          statement: DELETE FROM records WHERE event_id = {{key.event_id}}\n",
            "      extra:\n        manual: Ask the consumer team whether record {{key.event_id}} may go\n",
        ),
    )
    .unwrap();
    let app = open(&config).await;
    let inv = &app.invariants[0];
    let proposer = actor("otto", Role::Approver);
    trueup::runner::run_invariant(inv, &app.sources, app.store.as_ref())
        .await
        .unwrap();
    let Proposal::Created { plan: id, .. } = plan::propose(
        app.store.as_ref(),
        &app.config,
        inv,
        &proposer,
        None,
        Utc::now(),
    )
    .await
    .unwrap() else {
        panic!("no plan")
    };
    let now = Utc::now();
    let viewer = plan::approve(
        app.store.as_ref(),
        id,
        Some(inv),
        &actor("vera", Role::Viewer),
        None,
        now,
    )
    .await;
    assert!(
        matches!(viewer, Err(PlanError::Forbidden { .. })),
        "{viewer:?}"
    );
    let operator = plan::approve(
        app.store.as_ref(),
        id,
        Some(inv),
        &actor("oscar", Role::Operator),
        None,
        now,
    )
    .await;
    assert!(
        matches!(operator, Err(PlanError::Forbidden { .. })),
        "{operator:?}"
    );
    let own = plan::approve(app.store.as_ref(), id, Some(inv), &proposer, None, now).await;
    let Err(PlanError::Forbidden { reason, .. }) = own else {
        panic!("{own:?}")
    };
    assert!(reason.contains("manual steps"), "{reason}");
    // The hash the approver reviewed must be the plan's.
    let wrong = plan::approve(
        app.store.as_ref(),
        id,
        Some(inv),
        &actor("alice", Role::Approver),
        Some(&plan::ReviewedHash::prefix("deadbeefdeadbeef").unwrap()),
        now,
    )
    .await;
    assert!(wrong.unwrap_err().to_string().contains("review it again"));
    let p = plan::load(app.store.as_ref(), id).await.unwrap();
    let ok = plan::approve(
        app.store.as_ref(),
        id,
        Some(inv),
        &actor("alice", Role::Approver),
        Some(&plan::ReviewedHash::prefix(&p.content_hash[..12]).unwrap()),
        now,
    )
    .await
    .unwrap();
    assert_eq!(ok.approvers, vec!["alice".to_owned()]);
    // Rejection needs a reason and ends the plan.
    assert!(
        plan::reject(
            app.store.as_ref(),
            id,
            &actor("bob", Role::Approver),
            " ",
            now
        )
        .await
        .is_err()
    );
    plan::reject(
        app.store.as_ref(),
        id,
        &actor("bob", Role::Approver),
        "wrong window",
        now,
    )
    .await
    .unwrap();
    let after = plan::approve(
        app.store.as_ref(),
        id,
        Some(inv),
        &actor("carl", Role::Admin),
        None,
        now,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(after.contains("rejected by bob (wrong window)"), "{after}");
    app.close().await;
}

fn trueup(config: &Path) -> Command {
    crate::helpers::trueup_cli(config, "ci")
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = crate::helpers::combined_output(&out);
    assert!(out.status.success(), "{cmd:?}: {text}");
    text
}

#[tokio::test]
async fn a_ten_thousand_action_sql_plan_killed_three_times_applies_each_action_exactly_once() {
    use rand::Rng;
    let data = TestPg::new().await;
    let ledger = TestPg::new().await;
    data.exec(
        "CREATE TABLE payments (id BIGINT PRIMARY KEY, amount NUMERIC(12,2) NOT NULL);
         INSERT INTO payments SELECT g, 10 + g / 100.0 FROM generate_series(1, 10000) g;
         -- No unique key: an action applied twice would show as a second row.
         CREATE TABLE ledger_entries (payment_id BIGINT NOT NULL, amount NUMERIC(12,2) NOT NULL);",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "store: {}\nsources:\n  shop: {{url: \"{}\"}}\ntargets:\n  ledger-writer: {{url: \"{}\"}}\n",
            ledger.url, data.reader_url, data.url
        ),
        r#"invariants:
  - name: payments-booked
    severity: high
    reconcile:
      left: {source: shop, query: "SELECT id AS payment_id, amount FROM payments"}
      right: {source: shop, query: "SELECT payment_id, amount FROM ledger_entries"}
      key: payment_id
    compensate:
      missing:
        sql:
          target: ledger-writer
          statement: INSERT INTO ledger_entries (payment_id, amount) VALUES ({{key.payment_id}}, {{left.amount}})
"#,
    );
    let checked = trueup(&config).arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&checked.stdout);
    assert!(text.contains("proposed plan 1: 10000 actions"), "{text}");
    run_ok(trueup(&config).args(["plan", "approve", "1"]));

    let store = trueup::store::open(&trueup::config::SecretUrl::new(ledger.url.clone()))
        .await
        .unwrap();
    let finished = |store: Arc<dyn Store>| async move {
        store
            .action_progress(1)
            .await
            .unwrap()
            .iter()
            .filter(|(s, _)| s.is_final())
            .map(|(_, n)| *n)
            .sum::<u64>()
    };
    let mut rng = rand::rng();
    let points = [
        rng.random_range(500..3000),
        rng.random_range(3500..6000),
        rng.random_range(6500..9000),
    ];
    for point in points {
        let mut child = trueup(&config)
            .args(["apply", "1", "--rate", "unlimited", "--lease", "2s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while finished(Arc::clone(&store)).await < point {
            assert!(
                started.elapsed() < Duration::from_secs(240),
                "apply made no progress"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "apply ended before the kill point"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let out = run_ok(trueup(&config).args(["apply", "1", "--rate", "unlimited", "--lease", "2s"]));
    assert!(out.contains("plan 1 is applied"), "{out}");

    let mut db = data.connect().await;
    let (rows, distinct, wrong): (i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT payment_id), \
                COUNT(*) FILTER (WHERE l.amount <> p.amount) \
         FROM ledger_entries l JOIN payments p ON p.id = l.payment_id",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(
        (rows, distinct, wrong),
        (10_000, 10_000, 0),
        "killed at {points:?}"
    );
    let markers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM trueup_applied_actions")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(markers, 10_000);
    let progress = store.action_progress(1).await.unwrap();
    assert_eq!(progress.get(&ActionStatus::Failed), None, "{progress:?}");
    assert_eq!(
        progress.get(&ActionStatus::Applied).copied().unwrap_or(0)
            + progress.get(&ActionStatus::Skipped).copied().unwrap_or(0),
        10_000,
        "{progress:?}"
    );
    // Every action was claimed by a worker: the ones a killed worker held were taken over.
    let relaunched = store
        .plan_actions(1, None, 10_000)
        .await
        .unwrap()
        .iter()
        .filter(|a| a.attempts > 1)
        .count();
    assert!(
        relaunched <= 3,
        "{relaunched} actions needed a second attempt"
    );
    store.close().await;
}

#[tokio::test]
async fn a_rate_of_50_per_second_spreads_500_actions_over_at_least_10_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let mut up =
        String::from("CREATE TABLE events (id INTEGER PRIMARY KEY, amount INTEGER NOT NULL);");
    for id in 1..=500 {
        up.push_str(&format!("INSERT INTO events VALUES ({id}, {id});"));
    }
    sqlite_file(&dir.path().join("upstream.db"), &up).await;
    sqlite_file(
        &dir.path().join("downstream.db"),
        "CREATE TABLE records (event_id INTEGER NOT NULL, amount INTEGER NOT NULL);",
    )
    .await;
    let config = write_config(
        dir.path(),
        &format!(
            "sources:\n  upstream: {{url: {}}}\n  downstream: {{url: {}}}\ntargets:\n  downstream-writer: {{url: {}}}\nplans:\n  approvals: {{critical: 1}}\n",
            sqlite_url(&dir.path().join("upstream.db")),
            sqlite_url(&dir.path().join("downstream.db")),
            sqlite_url(&dir.path().join("downstream.db")),
        ),
        EVENTS_RULES,
    );
    // Exit 1: violations are open (and a plan is proposed).
    let checked = trueup(&config)
        .arg("check")
        .env("TRUEUP_ACTOR", "proposer")
        .output()
        .unwrap();
    assert_eq!(checked.status.code(), Some(1));
    // `--hash` takes the hash a person reviewed: 12 characters at least, hex only; a prefix of
    // other content is refused. None of it counts as an approval.
    let shown = run_ok(trueup(&config).args(["plan", "show", "1", "--format", "json"]));
    let hash = serde_json::from_str::<serde_json::Value>(&shown).unwrap()["plan"]["content_hash"]
        .as_str()
        .unwrap()
        .to_owned();
    for (sent, says) in [
        ("", "the content hash is empty"),
        (&hash[..11], "has 11 characters; give at least 12"),
        ("zzzzzzzzzzzzzz", "`z`, which is not a hexadecimal digit"),
        ("000000000000", "review it again"),
    ] {
        let out = trueup(&config)
            .args(["plan", "approve", "1", "--hash", sent])
            .output()
            .unwrap();
        let text = crate::helpers::combined_output(&out);
        assert_eq!(out.status.code(), Some(2), "{sent:?}: {text}");
        assert!(text.contains(says), "{sent:?}: {text}");
    }
    run_ok(trueup(&config).args(["plan", "approve", "1", "--hash", &hash[..12]]));
    let started = Instant::now();
    let out = run_ok(trueup(&config).args(["apply", "1", "--rate", "50/s"]));
    let took = started.elapsed();
    assert!(out.contains("plan 1 is applied"), "{out}");
    assert!(
        took >= Duration::from_secs(10),
        "500 actions at 50/s took {took:?}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert_eq!(records(dir.path()).await.len(), 500);
}

/// A receiver that counts requests per Idempotency-Key and books each key's effect once,
/// in PostgreSQL (as a real consumer would).
mod receiver {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::extract::{Path, State};
    use axum::http::HeaderMap;

    #[derive(Clone)]
    pub struct Receiver {
        pub requests: Arc<Mutex<HashMap<String, u32>>>,
        pub db: sqlx::PgPool,
    }

    async fn deliver(
        State(r): State<Receiver>,
        Path(id): Path<i64>,
        headers: HeaderMap,
        body: String,
    ) -> (axum::http::StatusCode, String) {
        let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) else {
            return (
                axum::http::StatusCode::BAD_REQUEST,
                "no Idempotency-Key".into(),
            );
        };
        let first = {
            let mut seen = r.requests.lock().unwrap();
            let n = seen.entry(key.to_owned()).or_default();
            *n += 1;
            *n == 1
        };
        if first {
            let amount: serde_json::Value = serde_json::from_str(&body).unwrap();
            sqlx::query(
                "INSERT INTO deliveries (event_id, amount, idempotency_key) VALUES ($1, $2, $3)",
            )
            .bind(id)
            .bind(amount["amount"].as_i64().unwrap())
            .bind(key)
            .execute(&r.db)
            .await
            .unwrap();
        }
        (axum::http::StatusCode::OK, "{\"ok\":true}".into())
    }

    pub async fn start(r: Receiver) -> String {
        let app = axum::Router::new()
            .route("/deliveries/{id}", axum::routing::post(deliver))
            .with_state(r);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/")
    }
}

#[tokio::test]
async fn a_thousand_http_actions_raced_by_fifty_applies_have_one_effect_per_idempotency_key() {
    let data = TestPg::new().await;
    let ledger = TestPg::new().await;
    data.exec(
        "CREATE TABLE events (id BIGINT PRIMARY KEY, amount BIGINT NOT NULL);
         INSERT INTO events SELECT g, g * 3 FROM generate_series(1, 1000) g;
         CREATE TABLE deliveries (event_id BIGINT NOT NULL, amount BIGINT NOT NULL, idempotency_key TEXT NOT NULL);",
    )
    .await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&data.url)
        .await
        .unwrap();
    let receiver = receiver::Receiver {
        requests: Default::default(),
        db: pool.clone(),
    };
    let base = receiver::start(receiver.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let rules = r#"invariants:
  - name: events-delivered
    severity: high
    reconcile:
      left: {source: upstream, query: "SELECT id AS event_id, amount FROM events"}
      right: {source: upstream, query: "SELECT event_id, amount FROM deliveries"}
      key: event_id
    compensate:
      missing:
        http:
          target: consumer
          method: POST
          path: deliveries/{{key.event_id}}
          headers: {X-Trueup-Invariant: "{{violation.invariant}}"}
          body: {event_id: "{{key.event_id}}", amount: "{{left.amount}}"}
  - name: events-delivered-guarded
    severity: high
    reconcile:
      left: {source: upstream, query: "SELECT id AS event_id, amount FROM events WHERE id <= 3"}
      right: {source: upstream, query: "SELECT event_id, amount FROM deliveries WHERE event_id <= 3"}
      key: event_id
    compensate:
      missing:
        http: {target: guarded, path: "deliveries/{{key.event_id}}", body: {amount: "{{left.amount}}"}}
"#;
    let config = write_config(
        dir.path(),
        &format!(
            "store: {}\nsources:\n  upstream: {{url: \"{}\", pool_size: 8}}\ntargets:\n  consumer:\n    base_url: {base}\n    allow_private_network: true\n  guarded:\n    base_url: {}\n",
            ledger.url,
            data.reader_url,
            base.replace("127.0.0.1", "localhost")
        ),
        rules,
    );
    let app = Arc::new(open(&config).await);
    let targets = Arc::new(Targets::open(&app.config).unwrap());
    let outcomes = app
        .check(
            &["events-delivered".into()],
            &trueup::domain::Actor::local("test"),
        )
        .await
        .unwrap();
    let Some(Proposal::Created { plan: id, actions }) = outcomes[0].proposal.clone() else {
        panic!("no plan: {:?}", outcomes[0])
    };
    assert_eq!(actions, 1000);
    plan::approve(
        app.store.as_ref(),
        id,
        app.invariants.first(),
        &actor("alice", Role::Approver),
        None,
        Utc::now(),
    )
    .await
    .unwrap();

    let mut racers = tokio::task::JoinSet::new();
    for n in 0..50 {
        let app = Arc::clone(&app);
        let targets = Arc::clone(&targets);
        racers.spawn(async move {
            let who = actor("alice", Role::Approver);
            let env = env(
                &app,
                &targets,
                &who,
                "events-delivered",
                &format!("racer-{n}"),
            );
            match apply::apply(&env, id, &unlimited(), &CancellationToken::new(), &|_| {}).await {
                Ok(report) => Some(report),
                // A racer that starts after the others finished finds nothing to do.
                Err(e) if e.to_string().contains("already been applied") => None,
                Err(e) => panic!("racer {n}: {e}"),
            }
        });
    }
    let mut applied = 0;
    let mut verified = 0;
    while let Some(report) = racers.join_next().await {
        let Some(report) = report.unwrap() else {
            continue;
        };
        applied += report.counts.get(&Outcome::Applied).copied().unwrap_or(0);
        verified += report.verification.map_or(0, |v| v.closed);
    }
    assert_eq!(applied, 1000, "each action applied by exactly one racer");
    assert_eq!(
        verified, 1000,
        "the one racer that finished the plan verified every action"
    );
    let requests = receiver.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1000);
    assert!(requests.values().all(|n| *n == 1), "a key was sent twice");
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT idempotency_key) FROM deliveries")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((rows, distinct), (1000, 1000));
    // The keys the receiver saw are the plan's, stable per action.
    let stored = app.store.plan_actions(id, None, 1000).await.unwrap();
    assert!(
        stored
            .iter()
            .all(|a| requests.contains_key(&a.idempotency_key))
    );

    // A target on a name that resolves to loopback is refused before any request is sent.
    sqlx::query("DELETE FROM deliveries WHERE event_id <= 3")
        .execute(&pool)
        .await
        .unwrap();
    let outcomes = app
        .check(
            &["events-delivered-guarded".into()],
            &trueup::domain::Actor::local("test"),
        )
        .await
        .unwrap();
    let Some(Proposal::Created { plan: guarded, .. }) = outcomes[0].proposal.clone() else {
        panic!("no plan: {:?}", outcomes[0])
    };
    plan::approve(
        app.store.as_ref(),
        guarded,
        app.invariants.get(1),
        &actor("alice", Role::Approver),
        None,
        Utc::now(),
    )
    .await
    .unwrap();
    let who = actor("alice", Role::Approver);
    let report = apply_plan(
        &env(&app, &targets, &who, "events-delivered-guarded", "w"),
        guarded,
        &unlimited(),
    )
    .await
    .unwrap();
    assert_eq!(report.counts.get(&Outcome::Failed), Some(&3), "{report:?}");
    let why = report.samples[&Outcome::Failed][0].detail.clone().unwrap();
    assert!(
        why.contains("loopback") && why.contains("allow_private_network"),
        "{why}"
    );
    assert_eq!(report.state, PlanState::Stopped);
    assert_eq!(
        receiver.requests.lock().unwrap().len(),
        1000,
        "no request reached the receiver"
    );
    targets.close().await;
    app.close().await;
}

#[tokio::test]
async fn a_keyed_read_finds_one_row_by_typed_key_on_every_engine() {
    use trueup::domain::ColumnName;
    use trueup::source::{ReadRequest, Source};
    let pg = TestPg::new().await;
    pg.exec(
        "CREATE TABLE t (id INT, code VARCHAR(20), at TIMESTAMPTZ, amount NUMERIC(10,2), u UUID, b BYTEA);
         INSERT INTO t VALUES (1, 'a', '2026-01-01T00:00:00Z', 1.50, '6f1c2d3e-0000-4000-8000-000000000001', '\\x0102'),
                              (2, 'b', '2026-01-02T00:00:00Z', 2.50, '6f1c2d3e-0000-4000-8000-000000000002', '\\x0a0b');",
    )
    .await;
    let my = crate::helpers::TestMysql::new().await;
    my.exec(
        "CREATE TABLE t (id INT, code VARCHAR(20), at DATETIME, amount DECIMAL(10,2), b VARBINARY(4), big BIGINT UNSIGNED);
         INSERT INTO t VALUES (1, 'a', '2026-01-01 00:00:00', 1.50, 0x0102, 18446744073709551615),
                              (2, 'b', '2026-01-02 00:00:00', 2.50, 0x0a0b, 7);",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let lite = dir.path().join("t.db");
    sqlite_file(
        &lite,
        "CREATE TABLE t (id INTEGER, code TEXT, amount REAL);
         INSERT INTO t VALUES (1, 'a', 1.5), (2, 'b', 2.5);",
    )
    .await;
    let col = |c: &str| ColumnName::parse(c).unwrap();
    let read = |src: Source, filter: Vec<(ColumnName, serde_json::Value)>| async move {
        let mut stream = src
            .read(ReadRequest {
                query: "SELECT * FROM t".into(),
                needed: Vec::new(),
                order_by: Vec::new(),
                filter,
                digest_long_except: None,
            })
            .await
            .unwrap();
        let mut rows = Vec::new();
        while let Some(batch) = stream.next_batch().await {
            rows.extend(batch.unwrap());
        }
        src.close().await;
        rows.len()
    };
    let open = |url: &str| Source::open(&crate::helpers::source("s", url)).unwrap();
    use serde_json::json;
    for (filter, want) in [
        (vec![(col("id"), json!(2))], 1),
        (vec![(col("code"), json!("a"))], 1),
        (vec![(col("at"), json!("2026-01-02T00:00:00Z"))], 1),
        (vec![(col("amount"), json!("1.5"))], 1),
        (
            vec![(col("u"), json!("6f1c2d3e-0000-4000-8000-000000000002"))],
            1,
        ),
        // Bytes keys, as `Value::to_json` writes them.
        (vec![(col("b"), json!("\\x0a0b"))], 1),
        (vec![(col("id"), json!(1)), (col("code"), json!("b"))], 0),
    ] {
        assert_eq!(
            read(open(&pg.reader_url), filter.clone()).await,
            want,
            "postgres {filter:?}"
        );
    }
    for (filter, want) in [
        (vec![(col("id"), json!(2))], 1),
        (vec![(col("code"), json!("a"))], 1),
        (vec![(col("at"), json!("2026-01-02T00:00:00Z"))], 1),
        (vec![(col("amount"), json!("1.5"))], 1),
        (vec![(col("b"), json!("\\x0102"))], 1),
        (vec![(col("big"), json!("18446744073709551615"))], 1),
        (vec![(col("big"), json!(7))], 1),
        (vec![(col("id"), json!(3))], 0),
    ] {
        assert_eq!(
            read(open(&my.reader_url), filter.clone()).await,
            want,
            "mysql {filter:?}"
        );
    }
    for (filter, want) in [
        (vec![(col("id"), json!(2))], 1),
        (vec![(col("code"), json!("a"))], 1),
        (vec![(col("code"), json!("zz"))], 0),
    ] {
        assert_eq!(
            read(open(&sqlite_url(&lite)), filter.clone()).await,
            want,
            "sqlite {filter:?}"
        );
    }
}

async fn post_json(url: &str, token: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

async fn get_json(url: &str) -> serde_json::Value {
    let (status, body) =
        crate::serve::call(reqwest::Method::GET, url, Some(crate::serve::VIEWER)).await;
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn whoever_requests_the_run_that_proposes_a_plan_with_manual_steps_cannot_approve_it() {
    use crate::serve::{ADMIN, APPROVER};
    let dir = tempfile::tempdir().unwrap();
    let config = crate::helpers::demo_with(dir.path(), None, &crate::serve::tokens_yaml("")).await;
    let server = crate::helpers::TestServer::start(config).await;
    let base = server.base.clone();
    // april (an approver) asks for the run that proposes the demo's plan, which has manual
    // steps.
    let (status, body) = crate::serve::call(
        reqwest::Method::POST,
        &format!("{base}/api/v1/invariants/payments-ledger/runs"),
        Some(APPROVER),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let plans = get_json(&format!("{base}/api/v1/plans?invariant=payments-ledger")).await;
    let plan = &plans["items"][0];
    assert_eq!(plan["proposed_by"], "april", "{plan}");
    assert_eq!(plan["has_manual"], true, "{plan}");
    let id = plan["id"].as_i64().unwrap();
    let hash = plan["content_hash"].as_str().unwrap().to_owned();
    let approve = format!("{base}/api/v1/plans/{id}/approve");
    let (status, body) = post_json(
        &approve,
        APPROVER,
        serde_json::json!({"content_hash": hash}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("`april` proposed this plan and it has manual steps"),
        "{body}"
    );
    // Someone else can.
    let (status, body) =
        post_json(&approve, ADMIN, serde_json::json!({"content_hash": hash})).await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn through_the_api_approvals_are_the_token_identities_and_apply_reports_progress() {
    use crate::serve::{ADMIN, APPROVER, OPERATOR, VIEWER};
    let dir = tempfile::tempdir().unwrap();
    let config = crate::helpers::demo_with(dir.path(), None, &crate::serve::tokens_yaml("")).await;
    let server = crate::helpers::TestServer::start(config).await;
    let base = server.base.clone();

    // A requested run proposes the demo's payments-ledger plan (critical: two approvers).
    let (status, body) = crate::serve::call(
        reqwest::Method::POST,
        &format!("{base}/api/v1/invariants/payments-ledger/runs"),
        Some(OPERATOR),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let plans = get_json(&format!("{base}/api/v1/plans?invariant=payments-ledger")).await;
    let plan = &plans["items"][0];
    let id = plan["id"].as_i64().unwrap();
    let hash = plan["content_hash"].as_str().unwrap().to_owned();
    assert_eq!(plan["status"], "proposed");
    assert_eq!(plan["approvals_required"], 2);
    // The plan is the one who asked for the run, not the scheduler.
    assert_eq!(plan["proposed_by"], "otto");
    let actions = get_json(&format!("{base}/api/v1/plans/{id}/actions")).await;
    assert_eq!(actions["items"].as_array().unwrap().len(), 8);

    let approve = format!("{base}/api/v1/plans/{id}/approve");
    // A viewer cannot approve, and neither can an operator.
    for token in [VIEWER, OPERATOR] {
        let (status, body) =
            post_json(&approve, token, serde_json::json!({"content_hash": hash})).await;
        assert_eq!(status, 403, "{body}");
    }
    // Approval binds to the whole content hash reviewed: empty, short, prefixes and non-hex
    // are refused with what to send (422); a whole hash of other content conflicts (409).
    for sent in [
        String::new(),
        hash[..1].to_owned(),
        hash[..12].to_owned(),
        hash[..63].to_owned(),
        format!("{hash}0"),
        format!("{}g", &hash[..63]),
    ] {
        let (status, body) = post_json(
            &approve,
            APPROVER,
            serde_json::json!({"content_hash": sent}),
        )
        .await;
        assert_eq!(status, 422, "{sent:?}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("Send the whole `content_hash`"),
            "{sent:?}: {message}"
        );
    }
    let (status, body) = post_json(
        &approve,
        APPROVER,
        serde_json::json!({"content_hash": "0".repeat(64)}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("review it again"),
        "{body}"
    );
    // Nothing of that counted.
    let shown = get_json(&format!("{base}/api/v1/plans/{id}")).await;
    assert_eq!(shown["plan"]["approvals"], serde_json::json!([]), "{shown}");
    // One identity approving twice still needs a second approver.
    for _ in 0..2 {
        let (status, body) = post_json(
            &approve,
            APPROVER,
            serde_json::json!({"content_hash": hash}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["approved"], false, "{body}");
        assert_eq!(body["approvers"], serde_json::json!(["april"]));
    }
    let apply_url = format!("{base}/api/v1/plans/{id}/apply");
    let (status, body) = post_json(&apply_url, OPERATOR, serde_json::json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("not approved: 1 of 2"),
        "{body}"
    );
    let (status, body) =
        post_json(&approve, ADMIN, serde_json::json!({"content_hash": hash})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["approved"], true, "{body}");

    // Dry run answers with the report; the live apply runs in the background.
    let (status, dry) = post_json(&apply_url, OPERATOR, serde_json::json!({"dry_run": true})).await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["counts"]["would_apply"], 6, "{dry}");
    assert_eq!(dry["counts"]["manual"], 2, "{dry}");
    // Paused, it is not applied; resumed, it is.
    let (status, body) = post_json(
        &format!("{base}/api/v1/plans/{id}/pause"),
        OPERATOR,
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        post_json(&apply_url, OPERATOR, serde_json::json!({"rate": "100/s"})).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("paused"),
        "{body}"
    );
    let (status, body) = post_json(
        &format!("{base}/api/v1/plans/{id}/resume"),
        OPERATOR,
        serde_json::json!({"rate": "100/s"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    // The apply that finishes a plan marks it applied, then records its verification.
    crate::helpers::wait_for(
        "the plan applied and verified",
        Duration::from_secs(20),
        || {
            let url = format!("{base}/api/v1/plans/{id}");
            async move {
                let plan = get_json(&url).await;
                plan["plan"]["status"] == "applied" && !plan["plan"]["verification"].is_null()
            }
        },
    )
    .await;
    let done = get_json(&format!("{base}/api/v1/plans/{id}")).await;
    assert_eq!(done["plan"]["progress"]["applied"], 6, "{done}");
    assert_eq!(done["plan"]["progress"]["manual"], 2, "{done}");
    assert_eq!(done["plan"]["verification"]["closed"], 6, "{done}");
    // The same figures in /metrics, read from the store every few seconds.
    crate::helpers::wait_for("plan progress in /metrics", Duration::from_secs(15), || {
        let url = format!("{base}/metrics");
        async move {
            let (_, text) = crate::serve::call(reqwest::Method::GET, &url, Some(VIEWER)).await;
            text.contains(&format!(
                "trueup_plan_actions{{invariant=\"payments-ledger\",kind=\"compensation\",plan=\"{id}\",status=\"applied\"}} 6"
            ))
        }
    })
    .await;

    // The next run resolves what the plan repaired; the manual steps' violations stay open.
    let (_, body) = crate::serve::call(
        reqwest::Method::POST,
        &format!("{base}/api/v1/invariants/payments-ledger/runs"),
        Some(OPERATOR),
    )
    .await;
    let run: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(run["change"]["resolved"], 6, "{run}");
    assert_eq!(run["open_after"], 2, "{run}");
    let audit = get_json_as(&format!("{base}/api/v1/audit?target=plan:{id}"), ADMIN).await;
    let actors: Vec<(String, String)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        actors.contains(&("april".into(), "plan.approve".into())),
        "{actors:?}"
    );
    assert!(
        actors.contains(&("ada".into(), "plan.approve".into())),
        "{actors:?}"
    );
    assert!(
        actors.contains(&("otto".into(), "plan.apply.start".into())),
        "{actors:?}"
    );
    for action in ["plan.pause", "plan.resume"] {
        assert!(
            actors.contains(&("otto".into(), action.into())),
            "{action}: {actors:?}"
        );
    }
    server.stop().await;
}

async fn get_json_as(url: &str, token: &str) -> serde_json::Value {
    let (status, body) = crate::serve::call(reqwest::Method::GET, url, Some(token)).await;
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn a_template_naming_a_column_the_query_lacks_proposes_nothing_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let store_url = sqlite_url(&dir.path().join("trueup.db"));
    let config = events_scenario(dir.path(), &store_url, "").await;
    std::fs::write(
        dir.path().join("invariants/rules.yaml"),
        EVENTS_RULES.replace(
            "VALUES ({{key.event_id}}, {{left.amount}})",
            "VALUES ({{key.event_id}}, {{left.amont}})",
        ),
    )
    .unwrap();
    let app = open(&config).await;
    let outcomes = app
        .check(&[], &trueup::domain::Actor::local("test"))
        .await
        .unwrap();
    let Some(Proposal::Failed { error }) = &outcomes[0].proposal else {
        panic!("{:?}", outcomes[0].proposal)
    };
    assert!(
        error.contains("cannot build 3 action(s)")
            && error.contains(
                "{{left.amont}}: the left row has no column `amont` (it has: event_id, amount)"
            ),
        "{error}"
    );
    assert!(app.store.plans(None, 10).await.unwrap().is_empty());
    app.close().await;
}

#[tokio::test]
async fn eight_apply_processes_racing_on_one_http_plan_send_each_key_once() {
    let data = TestPg::new().await;
    let ledger = TestPg::new().await;
    data.exec(
        "CREATE TABLE events (id BIGINT PRIMARY KEY, amount BIGINT NOT NULL);
         INSERT INTO events SELECT g, g FROM generate_series(1, 300) g;
         CREATE TABLE deliveries (event_id BIGINT NOT NULL, amount BIGINT NOT NULL, idempotency_key TEXT NOT NULL);",
    )
    .await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&data.url)
        .await
        .unwrap();
    let receiver = receiver::Receiver {
        requests: Default::default(),
        db: pool.clone(),
    };
    let base = receiver::start(receiver.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "store: {}\nsources:\n  upstream: {{url: \"{}\"}}\ntargets:\n  consumer:\n    base_url: {base}\n    allow_private_network: true\n",
            ledger.url, data.reader_url
        ),
        r#"invariants:
  - name: events-delivered
    severity: high
    reconcile:
      left: {source: upstream, query: "SELECT id AS event_id, amount FROM events"}
      right: {source: upstream, query: "SELECT event_id, amount FROM deliveries"}
      key: event_id
    compensate:
      missing:
        http: {target: consumer, path: "deliveries/{{key.event_id}}", body: {amount: "{{left.amount}}"}}
"#,
    );
    let checked = trueup(&config).arg("check").output().unwrap();
    assert!(String::from_utf8_lossy(&checked.stdout).contains("proposed plan 1: 300 actions"));
    run_ok(trueup(&config).args(["plan", "approve", "1"]));
    let racers: Vec<std::process::Child> = (0..8)
        .map(|_| {
            trueup(&config)
                .args(["apply", "1", "--rate", "unlimited", "-f", "json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut applied = 0;
    for racer in racers {
        let out = tokio::task::spawn_blocking(move || racer.wait_with_output().unwrap())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if let Ok(report) = serde_json::from_str::<serde_json::Value>(&stdout) {
            applied += report["counts"]["applied"].as_u64().unwrap_or(0);
        } else {
            // A racer that started after the plan was done is refused, and says so.
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("already been applied"), "{stdout}{stderr}");
        }
    }
    assert_eq!(applied, 300);
    let requests = receiver.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 300);
    assert!(requests.values().all(|n| *n == 1), "a key was sent twice");
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 300);
}

#[tokio::test]
async fn a_mysql_target_applies_each_action_once_with_its_marker() {
    let my = crate::helpers::TestMysql::new().await;
    my.exec(
        "CREATE TABLE events (id BIGINT PRIMARY KEY, amount DECIMAL(10,2) NOT NULL, at DATETIME NOT NULL);
         INSERT INTO events VALUES (1, 1.50, '2026-11-20 10:00:00'), (2, 2.50, '2026-11-20 10:01:00'), (3, 3.50, '2026-11-20 10:02:00');
         CREATE TABLE records (event_id BIGINT NOT NULL, amount DECIMAL(10,2) NOT NULL, at DATETIME NOT NULL);
         INSERT INTO records VALUES (2, 2.50, '2026-11-20 10:01:00');",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "store: {}\nsources:\n  shop: {{url: \"{}\"}}\ntargets:\n  writer: {{url: \"{}\"}}\n",
            sqlite_url(&dir.path().join("trueup.db")),
            my.reader_url,
            my.url
        ),
        r#"invariants:
  - name: events-recorded
    severity: low
    reconcile:
      left: {source: shop, query: "SELECT id AS event_id, amount, at FROM events"}
      right: {source: shop, query: "SELECT event_id, amount, at FROM records"}
      key: event_id
    compensate:
      missing:
        sql:
          target: writer
          statement: INSERT INTO records (event_id, amount, at) VALUES ({{key.event_id}}, {{left.amount}}, {{left.at}})
"#,
    );
    let app = open(&config).await;
    let targets = Targets::open(&app.config).unwrap();
    let outcomes = app
        .check(&[], &trueup::domain::Actor::local("test"))
        .await
        .unwrap();
    let Some(Proposal::Created { plan: id, actions }) = outcomes[0].proposal.clone() else {
        panic!("{:?}", outcomes[0])
    };
    assert_eq!(actions, 2);
    let who = actor("alice", Role::Approver);
    plan::approve(
        app.store.as_ref(),
        id,
        app.invariants.first(),
        &who,
        None,
        Utc::now(),
    )
    .await
    .unwrap();
    let report = apply_plan(
        &env(&app, &targets, &who, "events-recorded", "w"),
        id,
        &unlimited(),
    )
    .await
    .unwrap();
    assert_eq!(report.counts.get(&Outcome::Applied), Some(&2), "{report:?}");
    assert_eq!(report.verification.unwrap().closed, 2);
    // The record goes missing again before any run saw the violation resolved: the same
    // occurrence, so a second plan finds the marker and applies nothing twice.
    let mut c = my.connect().await;
    sqlx::query("DELETE FROM records WHERE event_id = 3")
        .execute(&mut c)
        .await
        .unwrap();
    let (rows, markers): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM records), (SELECT COUNT(*) FROM trueup_applied_actions)",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!((rows, markers), (2, 2));
    app.check(&[], &trueup::domain::Actor::local("test"))
        .await
        .unwrap();
    let Proposal::Created { plan: again, .. } = plan::propose(
        app.store.as_ref(),
        &app.config,
        &app.invariants[0],
        &who,
        None,
        Utc::now(),
    )
    .await
    .unwrap() else {
        panic!("no second plan")
    };
    plan::approve(
        app.store.as_ref(),
        again,
        app.invariants.first(),
        &actor("bob", Role::Approver),
        None,
        Utc::now(),
    )
    .await
    .unwrap();
    let second = apply_plan(
        &env(&app, &targets, &who, "events-recorded", "w"),
        again,
        &unlimited(),
    )
    .await
    .unwrap();
    assert_eq!(
        second.counts.get(&Outcome::SkippedAlreadyApplied),
        Some(&1),
        "{second:?}"
    );
    targets.close().await;
    app.close().await;
}

#[tokio::test]
async fn an_http_target_behind_a_failing_network_fails_actions_within_its_timeout_and_applies_each_once_after()
 {
    use crate::proxy::{Fault, FaultProxy};
    let data = TestPg::new().await;
    data.exec(
        "CREATE TABLE events (id BIGINT PRIMARY KEY, amount BIGINT NOT NULL);
         INSERT INTO events SELECT g, g * 3 FROM generate_series(1, 200) g;
         CREATE TABLE deliveries (event_id BIGINT NOT NULL, amount BIGINT NOT NULL, idempotency_key TEXT NOT NULL);",
    )
    .await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&data.url)
        .await
        .unwrap();
    let receiver = receiver::Receiver {
        requests: Default::default(),
        db: pool.clone(),
    };
    let base = receiver::start(receiver.clone()).await;
    let upstream: std::net::SocketAddr = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let proxy = FaultProxy::start(upstream).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "store: {}\nsources:\n  upstream: {{url: \"{}\"}}\ntargets:\n  consumer:\n    base_url: http://{}/\n    allow_private_network: true\n    timeout: 1s\n",
            sqlite_url(&dir.path().join("trueup.db")),
            data.reader_url,
            proxy.addr
        ),
        r#"invariants:
  - name: events-delivered
    reconcile:
      left: {source: upstream, query: "SELECT id AS event_id, amount FROM events"}
      right: {source: upstream, query: "SELECT event_id FROM deliveries"}
      key: event_id
    compensate:
      missing:
        http: {target: consumer, path: "deliveries/{{key.event_id}}", body: {amount: "{{left.amount}}"}}
"#,
    );
    let run = |args: &'static [&'static str]| {
        let mut c = trueup(&config);
        c.args(args);
        crate::helpers::output_off_runtime(c)
    };
    let checked = run(&["check"]).await;
    assert!(
        crate::helpers::combined_output(&checked).contains("proposed plan 1: 200 actions"),
        "{}",
        crate::helpers::combined_output(&checked)
    );
    let approved = run(&["plan", "approve", "1"]).await;
    assert!(
        approved.status.success(),
        "{}",
        crate::helpers::combined_output(&approved)
    );

    // Blackholed, then answers cut by a reset: the apply stops after its failures, each
    // attempt ending at the target's 1 s timeout, and applies nothing it cannot confirm.
    for fault in [Fault::Blackhole, Fault::ResetAfter(0)] {
        proxy.set(fault);
        let started = Instant::now();
        let out = run(&[
            "apply",
            "1",
            "--rate",
            "unlimited",
            "--max-failures",
            "3",
            "--retry-failed",
        ])
        .await;
        let took = started.elapsed();
        let text = crate::helpers::combined_output(&out);
        println!("{fault:?}: apply stopped after {took:.1?}");
        assert!(!out.status.success(), "{fault:?}: {text}");
        assert!(
            took < Duration::from_secs(30),
            "{fault:?} took {took:?}: {text}"
        );
    }
    // The network recovers: the rest is applied, each event's effect booked once (an attempt
    // whose answer was cut after it reached the receiver is found done by the re-check).
    proxy.set(Fault::None);
    let out = run(&["apply", "1", "--rate", "unlimited", "--retry-failed"]).await;
    let text = crate::helpers::combined_output(&out);
    assert!(text.contains("plan 1 is applied"), "{text}");
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM deliveries")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((rows, distinct), (200, 200));
    let requests = receiver.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 200);
    println!(
        "{} requests for 200 keys ({} keys sent more than once, booked once)",
        requests.values().sum::<u32>(),
        requests.values().filter(|n| **n > 1).count()
    );
}

#[tokio::test]
async fn a_sql_target_that_stalls_mid_apply_fails_within_its_deadline_and_each_action_lands_once() {
    use crate::proxy::{Fault, FaultProxy};
    let data = TestPg::new().await;
    data.exec(
        "CREATE TABLE payments (id BIGINT PRIMARY KEY, amount BIGINT NOT NULL);
         INSERT INTO payments SELECT g, g * 5 FROM generate_series(1, 100) g;
         -- No unique key: an action applied twice would be a second row.
         CREATE TABLE ledger_entries (payment_id BIGINT NOT NULL, amount BIGINT NOT NULL);",
    )
    .await;
    let server = crate::helpers::pg_server();
    let host_port = server.rsplit('@').next().unwrap().trim_end_matches('/');
    let upstream = std::net::ToSocketAddrs::to_socket_addrs(host_port)
        .unwrap()
        .next()
        .unwrap();
    let proxy = FaultProxy::start(upstream).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "store: {}\nsources:\n  shop: {{url: \"{}\"}}\ntargets:\n  ledger-writer: {{url: \"{}\", statement_timeout: 1s}}\n",
            sqlite_url(&dir.path().join("trueup.db")),
            data.reader_url,
            proxy.url(&data.url)
        ),
        r#"invariants:
  - name: payments-booked
    reconcile:
      left: {source: shop, query: "SELECT id AS payment_id, amount FROM payments"}
      right: {source: shop, query: "SELECT payment_id, amount FROM ledger_entries"}
      key: payment_id
    compensate:
      missing:
        sql:
          target: ledger-writer
          statement: INSERT INTO ledger_entries (payment_id, amount) VALUES ({{key.payment_id}}, {{left.amount}})
"#,
    );
    let rows = async || -> (i64, i64) {
        let mut c = data.connect().await;
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT payment_id) FROM ledger_entries")
            .fetch_one(&mut c)
            .await
            .unwrap()
    };
    for args in [&["check"][..], &["plan", "approve", "1"]] {
        let mut c = trueup(&config);
        c.args(args);
        let out = crate::helpers::output_off_runtime(c).await;
        assert!(
            out.status.code().is_some_and(|c| c <= 1),
            "{}",
            crate::helpers::combined_output(&out)
        );
    }
    // The apply runs; mid-way the target's connection stalls.
    let mut apply = trueup(&config);
    apply.args(["apply", "1", "--rate", "20/s", "--max-failures", "2"]);
    let running = tokio::task::spawn_blocking(move || apply.output().unwrap());
    let started = Instant::now();
    while rows().await.0 < 20 {
        assert!(started.elapsed() < Duration::from_secs(30), "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.set(Fault::Blackhole);
    let stalled = Instant::now();
    let out = running.await.unwrap();
    let took = stalled.elapsed();
    let text = crate::helpers::combined_output(&out);
    println!("the apply stopped {took:.1?} after the target stalled");
    assert!(!out.status.success(), "{text}");
    // Each of the two failed actions waits out the target's deadline (1 s + 5 s), no more.
    assert!(
        (Duration::from_secs(10)..Duration::from_secs(20)).contains(&took),
        "{took:?}: {text}"
    );
    assert!(text.contains("failed                      2"), "{text}");
    // Back: every action lands exactly once, the one cut mid-flight included.
    proxy.set(Fault::None);
    let mut again = trueup(&config);
    again.args(["apply", "1", "--rate", "unlimited", "--retry-failed"]);
    let out = crate::helpers::output_off_runtime(again).await;
    let text = crate::helpers::combined_output(&out);
    assert!(text.contains("plan 1 is applied"), "{text}");
    assert_eq!(rows().await, (100, 100));
}
