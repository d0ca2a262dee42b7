//! The same ledger story against both store backends.

use std::sync::Arc;

use chrono::Utc;
use serde_json::json;
use trueup::config::SecretUrl;
use trueup::domain::{InvariantName, Value, Violation, ViolationKind};
use trueup::domain::{RunStats, RunStatus, ViolationStatus};
use trueup::store::{self, StatusFilter, Store, StoreError, ViolationFilter};

use crate::helpers::TestPg;

fn violation(kind: ViolationKind, key: i64) -> Violation {
    Violation {
        kind,
        key: vec![Value::Int(key)],
        discriminator: None,
        event_at: None,
        evidence: json!({"left": {"id": key}}),
    }
}

/// Runs `inv` once, seeing exactly `seen`, and completes the run.
pub(crate) async fn run_with(
    store: &dyn Store,
    inv: &InvariantName,
    seen: &[Violation],
) -> trueup::domain::LedgerChange {
    let run = store.begin_run(inv, Utc::now()).await.unwrap();
    store.observe(run, inv, 0, seen).await.unwrap();
    let stats = RunStats {
        observed: seen.len() as u64,
        ..Default::default()
    };
    store
        .complete_run(run, inv, &stats, Utc::now(), None)
        .await
        .unwrap()
}

async fn status_of(store: &dyn Store, inv: &InvariantName, key: i64) -> Option<ViolationStatus> {
    store
        .violations(&ViolationFilter {
            invariants: vec![inv.to_string()],
            status: StatusFilter::All,
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .find(|v| v.key == json!([key]))
        .map(|v| v.status)
}

/// The lifecycle every backend must implement identically.
async fn ledger_story(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let inv = InvariantName::parse("payments-ledger").unwrap();
    let other = InvariantName::parse("other").unwrap();
    use ViolationKind::*;

    // Run 1 sees three violations: all new.
    let change = run_with(
        store,
        &inv,
        &[
            violation(Missing, 1),
            violation(Extra, 2),
            violation(Mismatch, 3),
        ],
    )
    .await;
    assert_eq!(
        (
            change.new,
            change.still_open,
            change.reopened,
            change.resolved
        ),
        (3, 0, 0, 0)
    );
    // Another invariant's runs never touch this one's violations.
    run_with(store, &other, &[violation(Missing, 1)]).await;

    // Run 2 no longer sees key 3: it resolves; 1 and 2 are still open.
    let change = run_with(store, &inv, &[violation(Missing, 1), violation(Extra, 2)]).await;
    assert_eq!(
        (
            change.new,
            change.still_open,
            change.reopened,
            change.resolved
        ),
        (0, 2, 0, 1)
    );
    assert_eq!(
        status_of(store, &inv, 3).await,
        Some(ViolationStatus::Resolved)
    );
    assert_eq!(
        status_of(store, &other, 1).await,
        Some(ViolationStatus::Open)
    );

    // Run 3: key 3 is back (reopened), key 2 is gone (resolved), key 4 is new.
    let change = run_with(
        store,
        &inv,
        &[
            violation(Missing, 1),
            violation(Mismatch, 3),
            violation(Missing, 4),
        ],
    )
    .await;
    assert_eq!(
        (
            change.new,
            change.still_open,
            change.reopened,
            change.resolved
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(
        status_of(store, &inv, 3).await,
        Some(ViolationStatus::Reopened)
    );
    let reopened = store
        .violations(&ViolationFilter {
            invariants: vec![inv.to_string()],
            status: StatusFilter::Only(ViolationStatus::Reopened),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reopened.len(), 1);
    assert_eq!(reopened[0].times_reopened, 1);
    assert!(reopened[0].resolved_at.is_none());
    // The keys a checksummed run looks up first: this invariant's open and reopened ones
    // (not the resolved 2, nor the other invariant's), each once, as many as asked for.
    let mut open = store.open_keys(inv.as_str(), 100).await.unwrap();
    open.sort_by_key(|k| k[0].as_i64());
    assert_eq!(open, vec![json!([1]), json!([3]), json!([4])]);
    assert_eq!(
        store.open_keys(other.as_str(), 100).await.unwrap(),
        vec![json!([1])]
    );
    assert_eq!(store.open_keys(inv.as_str(), 2).await.unwrap().len(), 2);

    // A failed run stages a violation, then fails: the ledger is exactly as before.
    let run = store.begin_run(&inv, Utc::now()).await.unwrap();
    store
        .observe(run, &inv, 0, &[violation(Duplicate, 9)])
        .await
        .unwrap();
    store
        .abandon_run(
            run,
            RunStatus::Failed,
            "source `ledger`: connection refused",
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(status_of(store, &inv, 9).await, None);
    assert_eq!(status_of(store, &inv, 1).await, Some(ViolationStatus::Open));
    let runs = store.runs(Some("payments-ledger"), 1).await.unwrap();
    assert_eq!(runs[0].status, RunStatus::Failed);
    assert_eq!(
        runs[0].error.as_deref(),
        Some("source `ledger`: connection refused")
    );
    // A run that ended cannot be completed afterwards.
    let late = store
        .complete_run(run, &inv, &RunStats::default(), Utc::now(), None)
        .await;
    assert!(matches!(late, Err(StoreError::NoSuchRun(_))), "{late:?}");

    // A truncated run (over its violation budget) resolves nothing it did not store.
    let run = store.begin_run(&inv, Utc::now()).await.unwrap();
    store
        .observe(run, &inv, 0, &[violation(Missing, 1)])
        .await
        .unwrap();
    let stats = RunStats {
        observed: 50_000,
        truncated: true,
        ..Default::default()
    };
    let change = store
        .complete_run(run, &inv, &stats, Utc::now(), None)
        .await
        .unwrap();
    assert_eq!(change.resolved, 0);
    assert_eq!(status_of(store, &inv, 4).await, Some(ViolationStatus::Open));
    let runs = store.runs(Some("payments-ledger"), 1).await.unwrap();
    assert!(runs[0].stats.truncated);
    assert_eq!(runs[0].stats.observed, 50_000);

    // Listing: by kind, and paged by id.
    let missing = store
        .violations(&ViolationFilter {
            invariants: vec![inv.to_string()],
            kind: Some(Missing),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(missing.len(), 2);
    let first_page = store
        .violations(&ViolationFilter {
            status: StatusFilter::All,
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    let second_page = store
        .violations(&ViolationFilter {
            status: StatusFilter::All,
            limit: 100,
            after_id: Some(first_page[1].id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(first_page.len() + second_page.len(), 5);
    assert!(second_page.iter().all(|v| v.id > first_page[1].id));
    store.close().await;
}

#[tokio::test]
async fn the_sqlite_store_keeps_the_violation_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let url = SecretUrl::new(format!(
        "sqlite://{}",
        dir.path().join("trueup.db").display()
    ));
    ledger_story(store::open(&url).await.unwrap()).await;
}

#[tokio::test]
async fn the_postgres_store_keeps_the_violation_lifecycle() {
    let db = TestPg::new().await;
    ledger_story(store::open(&SecretUrl::new(db.url.clone())).await.unwrap()).await;
}

#[tokio::test]
async fn reopening_a_store_keeps_its_ledger_and_migrates_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = SecretUrl::new(format!(
        "sqlite://{}",
        dir.path().join("trueup.db").display()
    ));
    let inv = InvariantName::parse("x").unwrap();
    let s = store::open(&url).await.unwrap();
    run_with(s.as_ref(), &inv, &[violation(ViolationKind::Check, 1)]).await;
    s.close().await;
    let s = store::open(&url).await.unwrap();
    let change = run_with(s.as_ref(), &inv, &[violation(ViolationKind::Check, 1)]).await;
    assert_eq!(change.still_open, 1);
    s.close().await;
}

async fn audit_story(store: &dyn Store) {
    let at = Utc::now();
    let first = store
        .audit("otto", "run.requested", "invariant:x", &json!({}), at)
        .await
        .unwrap();
    let second = store
        .audit(
            "ada",
            "plan.approved",
            "plan:7",
            &json!({"hash": "abc"}),
            at,
        )
        .await
        .unwrap();
    assert!(second > first);
    let all = store
        .audit_log(
            &trueup::store::AuditFilter::default(),
            trueup::store::AuditPage::After(None),
            10,
        )
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].details, json!({"hash": "abc"}));
    let for_plan = store
        .audit_log(
            &trueup::store::AuditFilter::target("plan:7"),
            trueup::store::AuditPage::After(None),
            10,
        )
        .await
        .unwrap();
    assert_eq!(for_plan.len(), 1);
    assert!(
        store
            .audit_log(
                &trueup::store::AuditFilter::default(),
                trueup::store::AuditPage::After(Some(second)),
                10
            )
            .await
            .unwrap()
            .is_empty()
    );
    // Newest first, and the page before an entry.
    let newest = store
        .audit_log(
            &trueup::store::AuditFilter::default(),
            trueup::store::AuditPage::Before(None),
            10,
        )
        .await
        .unwrap();
    assert_eq!(
        newest.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![second, first]
    );
    let older = store
        .audit_log(
            &trueup::store::AuditFilter::default(),
            trueup::store::AuditPage::Before(Some(second)),
            10,
        )
        .await
        .unwrap();
    assert_eq!(older.iter().map(|e| e.id).collect::<Vec<_>>(), vec![first]);
    // By actor, and decisions only (each action's own record left out).
    let action_record = store
        .audit("ada", "action.applied", "plan:7", &json!({"seq": 1}), at)
        .await
        .unwrap();
    let ids =
        |entries: Vec<trueup::store::AuditEntry>| entries.iter().map(|e| e.id).collect::<Vec<_>>();
    let by_ada = store
        .audit_log(
            &trueup::store::AuditFilter {
                actor: Some("ada".into()),
                ..Default::default()
            },
            trueup::store::AuditPage::Before(None),
            10,
        )
        .await
        .unwrap();
    assert_eq!(ids(by_ada), vec![action_record, second]);
    let decisions = store
        .audit_log(
            &trueup::store::AuditFilter {
                target: Some("plan:7".into()),
                decisions_only: true,
                ..Default::default()
            },
            trueup::store::AuditPage::Before(None),
            10,
        )
        .await
        .unwrap();
    assert_eq!(ids(decisions), vec![second]);
    // The latest entry of one action on one target.
    let third = store
        .audit(
            "otto",
            "plan.approved",
            "plan:7",
            &json!({"hash": "def"}),
            at,
        )
        .await
        .unwrap();
    let last = store.last_audit("plan:7", "plan.approved").await.unwrap();
    assert_eq!(last.map(|e| (e.id, e.actor)), Some((third, "otto".into())));
    assert_eq!(
        store.last_audit("plan:7", "plan.rejected").await.unwrap(),
        None
    );
    assert_eq!(
        store.last_audit("plan:8", "plan.approved").await.unwrap(),
        None
    );
}

#[tokio::test]
async fn the_audit_log_is_append_only_on_both_backends() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trueup.db");
    let sqlite = store::open(&SecretUrl::new(format!("sqlite://{}", path.display())))
        .await
        .unwrap();
    audit_story(sqlite.as_ref()).await;
    sqlite.close().await;
    let mut raw = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    for tamper in [
        "UPDATE audit_log SET actor = 'mallory'",
        "DELETE FROM audit_log",
    ] {
        let err = sqlx::query(tamper)
            .execute(&mut raw)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("append-only"), "{err}");
    }

    let db = TestPg::new().await;
    let pg = store::open(&SecretUrl::new(db.url.clone())).await.unwrap();
    audit_story(pg.as_ref()).await;
    pg.close().await;
    let mut raw = db.connect().await;
    for tamper in [
        "UPDATE audit_log SET actor = 'mallory'",
        "DELETE FROM audit_log",
    ] {
        let err = sqlx::query(tamper)
            .execute(&mut raw)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("append-only"), "{err}");
    }
}

async fn outbox_story(store: Arc<dyn Store>) {
    use trueup::domain::Delivery;
    use trueup::domain::{Alert, AlertState};
    use trueup::store::QueuedNotice;
    let now = Utc::now();
    assert_eq!(store.alert("inv").await.unwrap(), Alert::inactive());
    let firing = Alert {
        state: AlertState::Firing,
        active_since: Some(now),
        last_violating_at: Some(now),
        last_notified_at: Some(now),
    };
    // Six notices, each in a group of its own with no wait: each goes out as it is.
    let messages: Vec<QueuedNotice> = (0..6)
        .map(|i| QueuedNotice {
            invariant: "inv".into(),
            notice: "firing".into(),
            delivery: Delivery {
                channel: "ops".into(),
                group_key: format!("ops/0/{{invariant=inv-{i}}}"),
                group_labels: Default::default(),
                group_wait: chrono::TimeDelta::zero(),
                group_interval: chrono::TimeDelta::zero(),
                alone: false,
            },
            payload: json!({"i": i, "dedup_key": format!("inv:firing:{i}"), "invariant": "inv"}),
            held_by: None,
        })
        .collect();
    store
        .record_alert("inv", &firing, &messages, now)
        .await
        .unwrap();
    // Recording the same notices again (a retried transaction) queues nothing twice.
    store
        .record_alert("inv", &firing, &messages, now)
        .await
        .unwrap();
    store
        .record_alert("inv", &Alert::inactive(), &[], now)
        .await
        .unwrap();
    // Each change of state (and only a change) is in the audit log, for incident timelines.
    let transitions: Vec<(String, serde_json::Value)> = store
        .audit_trail(&["invariant:inv".to_owned()], now, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.details["from"].clone()))
        .collect();
    assert_eq!(
        transitions,
        [
            ("alert.firing".to_owned(), json!("inactive")),
            ("alert.inactive".to_owned(), json!("firing"))
        ]
    );
    store
        .record_alert("inv", &firing, &messages, now)
        .await
        .unwrap();
    let back = store.alert("inv").await.unwrap();
    assert_eq!(back.state, AlertState::Firing);
    assert_eq!(
        back.active_since.map(|t| t.timestamp_millis()),
        Some(now.timestamp_millis())
    );

    // The notices move to the outbox, each once, whoever moves them.
    let (a, b) = tokio::join!(
        trueup::serve::outbox::dispatch(store.as_ref(), now),
        trueup::serve::outbox::dispatch(store.as_ref(), now)
    );
    a.unwrap();
    b.unwrap();
    let queued = store.outbox(20).await.unwrap();
    assert_eq!(queued.len(), 6, "{queued:#?}");
    assert!(
        queued
            .iter()
            .all(|m| m.message.dedup_key.starts_with("inv:firing:"))
    );

    // Two workers claiming at once get disjoint messages; together, all six.
    let lease = chrono::TimeDelta::seconds(30);
    let (a, b) = tokio::join!(
        store.claim_outbox(now, lease, 4),
        store.claim_outbox(now, lease, 4)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut ids: Vec<i64> = a.iter().chain(&b).map(|i| i.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "a={a:?} b={b:?}");
    assert_eq!(a.len() + b.len(), 6);
    // Claimed messages are not handed out again while their lease holds...
    assert!(store.claim_outbox(now, lease, 10).await.unwrap().is_empty());
    // ...and are once it has ended (the worker died).
    let later = now + chrono::TimeDelta::seconds(31);
    let reclaimed = store.claim_outbox(later, lease, 10).await.unwrap();
    assert_eq!(reclaimed.len(), 6);

    store
        .outbox_delivered(reclaimed[0].id, later)
        .await
        .unwrap();
    store
        .outbox_failed(
            reclaimed[1].id,
            "connection refused",
            later + chrono::TimeDelta::seconds(60),
        )
        .await
        .unwrap();
    let much_later = later + chrono::TimeDelta::seconds(120);
    let due = store.claim_outbox(much_later, lease, 10).await.unwrap();
    assert_eq!(due.len(), 5, "the delivered one is never due again");
    let retried = due.iter().find(|i| i.id == reclaimed[1].id).unwrap();
    assert_eq!(retried.attempts, 1);
    assert_eq!(retried.last_error.as_deref(), Some("connection refused"));
    let all = store.outbox(10).await.unwrap();
    assert_eq!(all.iter().filter(|i| i.delivered_at.is_some()).count(), 1);
    store.close().await;
}

#[tokio::test]
async fn the_outbox_claims_retries_and_delivers_once_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = SecretUrl::new(format!(
        "sqlite://{}",
        dir.path().join("trueup.db").display()
    ));
    outbox_story(store::open(&url).await.unwrap()).await;
}

#[tokio::test]
async fn the_outbox_claims_retries_and_delivers_once_on_postgres() {
    let db = TestPg::new().await;
    outbox_story(store::open(&SecretUrl::new(db.url.clone())).await.unwrap()).await;
}

/// Claims, leases and their rescue, approvals and state changes of plans.
async fn plan_story(store: Arc<dyn Store>) {
    use trueup::domain::ActionSpec;
    use trueup::domain::{ActionStatus, PlanState};
    use trueup::store::{NewAction, NewPlan, Transition};
    let t0 = Utc::now();
    let action = |n: i64| NewAction {
        fingerprint: format!("fp{n}"),
        violation_kind: ViolationKind::Missing,
        key: json!([n]),
        evidence: json!({"left": {"id": n}}),
        spec: ActionSpec::Manual {
            instructions: format!("fix {n}"),
        },
        idempotency_key: format!("key-{n}"),
        partition: String::new(),
        event_at: None,
    };
    let new_plan = NewPlan {
        kind: trueup::domain::PlanKind::Compensation,
        meta: json!({}),
        invariant: "inv".into(),
        definition_hash: "d".into(),
        content_hash: "c".into(),
        severity: "high".into(),
        approvals_required: 1,
        has_manual: true,
        proposed_by: "otto".into(),
        proposed_at: t0,
        expires_at: t0 + chrono::TimeDelta::hours(1),
        source_run_id: None,
        counts: json!({}),
    };
    let id = store
        .create_plan(&new_plan, &[action(1), action(2), action(3)])
        .await
        .unwrap();
    let lease = chrono::TimeDelta::seconds(10);
    let change = |from: &'static [PlanState], to| Transition {
        from,
        to,
        by: "otto",
        reason: None,
        at: t0,
        audit_action: "plan.test",
        details: json!({}),
    };
    // A proposed plan hands out nothing: an apply moves it to applying first.
    assert!(
        store
            .claim_action(id, "w1", t0, t0 + lease)
            .await
            .unwrap()
            .is_none(),
        "proposed"
    );
    assert!(
        store
            .transition_plan(id, &change(&[PlanState::Proposed], PlanState::Applying))
            .await
            .unwrap()
    );
    let a = store
        .claim_action(id, "w1", t0, t0 + lease)
        .await
        .unwrap()
        .unwrap();
    let b = store
        .claim_action(id, "w2", t0, t0 + lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((a.seq, b.seq), (1, 2));
    assert_eq!(a.spec, action(1).spec);
    // Another worker cannot record an action it does not hold.
    assert!(
        !store
            .finish_action(id, 1, "w2", "otto", ActionStatus::Applied, &json!({}), t0)
            .await
            .unwrap()
    );
    // w1 dies: after its lease, its action is taken over first, with a second attempt.
    let later = t0 + chrono::TimeDelta::seconds(11);
    let rescued = store
        .claim_action(id, "w3", later, later + lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((rescued.seq, rescued.attempts), (1, 2));
    assert!(
        !store
            .finish_action(
                id,
                1,
                "w1",
                "otto",
                ActionStatus::Applied,
                &json!({}),
                later
            )
            .await
            .unwrap()
    );
    assert!(
        store
            .finish_action(
                id,
                1,
                "w3",
                "otto",
                ActionStatus::Applied,
                &json!({"result": "applied"}),
                later
            )
            .await
            .unwrap()
    );
    assert!(
        store
            .finish_action(
                id,
                2,
                "w2",
                "otto",
                ActionStatus::Failed,
                &json!({"result": "failed"}),
                later
            )
            .await
            .unwrap()
    );
    let c = store
        .claim_action(id, "w2", later, later + lease)
        .await
        .unwrap()
        .unwrap();
    store.release_action(id, c.seq, "w2").await.unwrap();
    let progress = store.action_progress(id).await.unwrap();
    assert_eq!(progress.get(&ActionStatus::Applied), Some(&1));
    assert_eq!(progress.get(&ActionStatus::Failed), Some(&1));
    assert_eq!(progress.get(&ActionStatus::Pending), Some(&1));
    assert_eq!(store.retry_failed_actions(id).await.unwrap(), 1);
    assert_eq!(
        store
            .action_progress(id)
            .await
            .unwrap()
            .get(&ActionStatus::Pending),
        Some(&2)
    );
    assert!(store.applied_elsewhere("key-1", id + 1).await.unwrap());
    assert!(!store.applied_elsewhere("key-1", id).await.unwrap());

    // One approval per identity.
    assert!(store.approve_plan(id, "alice", "c", t0).await.unwrap());
    assert!(!store.approve_plan(id, "alice", "c", t0).await.unwrap());
    assert_eq!(store.plan(id).await.unwrap().unwrap().approvals.len(), 1);
    // A state change happens only from the states it names.
    assert!(
        !store
            .transition_plan(id, &change(&[PlanState::Proposed], PlanState::Applied))
            .await
            .unwrap()
    );
    // A newer plan supersedes a proposed one, not one being applied.
    let newer = store.create_plan(&new_plan, &[action(1)]).await.unwrap();
    assert_eq!(
        store.plan(id).await.unwrap().unwrap().state,
        PlanState::Applying
    );
    let third = store.create_plan(&new_plan, &[action(1)]).await.unwrap();
    assert_eq!(
        store.plan(newer).await.unwrap().unwrap().state,
        PlanState::Superseded
    );
    let listed: Vec<i64> = store
        .plans(Some("inv"), 10)
        .await
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(listed, vec![third, newer, id]);
    let audit = store
        .audit_log(
            &trueup::store::AuditFilter::target(format!("plan:{id}")),
            trueup::store::AuditPage::After(None),
            50,
        )
        .await
        .unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "plan.propose",
            "plan.test",
            "action.applied",
            "action.failed",
            "plan.approve",
            "plan.approve"
        ]
    );

    // A replay: one worker per partition, a partition's actions in order; a replay plan does
    // not supersede the compensation plan of the same invariant.
    let replay = NewPlan {
        kind: trueup::domain::PlanKind::Replay,
        meta: json!({"from": "2026-11-20T00:00:00Z"}),
        ..new_plan.clone()
    };
    let in_partition = |n: i64, p: &str| NewAction {
        partition: p.into(),
        ..action(n)
    };
    let r = store
        .create_plan(
            &replay,
            &[
                in_partition(1, "a"),
                in_partition(2, "b"),
                in_partition(3, "a"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        store.plan(third).await.unwrap().unwrap().state,
        PlanState::Proposed
    );
    assert!(
        store
            .transition_plan(r, &change(&[PlanState::Proposed], PlanState::Applying))
            .await
            .unwrap()
    );
    let p1 = store
        .claim_partition(r, "w1", t0, t0 + lease)
        .await
        .unwrap();
    let p2 = store
        .claim_partition(r, "w2", t0, t0 + lease)
        .await
        .unwrap();
    assert_eq!((p1.as_deref(), p2.as_deref()), (Some("a"), Some("b")));
    assert_eq!(
        store
            .claim_partition(r, "w3", t0, t0 + lease)
            .await
            .unwrap(),
        None
    );
    assert!(
        store
            .claim_in_partition(r, "a", "w2", t0 + lease)
            .await
            .unwrap()
            .is_none()
    );
    let first = store
        .claim_in_partition(r, "a", "w1", t0 + lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.seq, 1);
    store
        .finish_action(r, 1, "w1", "otto", ActionStatus::Parked, &json!({}), t0)
        .await
        .unwrap();
    let next = store
        .claim_in_partition(r, "a", "w1", t0 + lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.seq, 3);
    // w1 dies holding partition a and action 3: after the lease another worker gets both.
    let p3 = store
        .claim_partition(r, "w3", later, later + lease)
        .await
        .unwrap();
    assert_eq!(p3.as_deref(), Some("a"));
    assert!(
        !store
            .renew_partition(r, "a", "w1", later + lease)
            .await
            .unwrap()
    );
    let again = store
        .claim_in_partition(r, "a", "w3", later + lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.seq, again.attempts), (3, 2));
    store.release_partition(r, "a", "w3").await.unwrap();
    // Paused (or cancelled), a plan hands out nothing more, not even to a worker that still
    // holds a partition's lease: a pause stops applies when it is recorded, not a second later.
    // Resumed, it hands out again.
    let held = store
        .claim_partition(r, "w4", later, later + lease)
        .await
        .unwrap();
    assert_eq!(held.as_deref(), Some("a"));
    let pause = change(&[PlanState::Applying], PlanState::Paused);
    assert!(store.transition_plan(r, &pause).await.unwrap());
    let in_a = store.claim_in_partition(r, "a", "w4", later + lease).await;
    assert!(in_a.unwrap().is_none(), "paused");
    let other = store.claim_partition(r, "w5", later, later + lease).await;
    assert_eq!(other.unwrap(), None, "paused");
    let any = store.claim_action(r, "w5", later, later + lease).await;
    assert!(any.unwrap().is_none(), "paused");
    let resume = change(&[PlanState::Paused], PlanState::Applying);
    assert!(store.transition_plan(r, &resume).await.unwrap());
    let in_a = store
        .claim_in_partition(r, "a", "w4", later + lease)
        .await
        .unwrap()
        .expect("resumed: the next action of a");
    assert_eq!(in_a.seq, 3);
    store.release_action(r, 3, "w4").await.unwrap();
    store.release_partition(r, "a", "w4").await.unwrap();
    let other = store
        .claim_partition(r, "w5", later, later + lease)
        .await
        .unwrap()
        .expect("resumed: a partition with work left");
    store.release_partition(r, &other, "w5").await.unwrap();
    // Stopped by one apply, a second apply still under way goes on; rejected, it gets
    // nothing more.
    let stop = change(&[PlanState::Applying], PlanState::Stopped);
    assert!(store.transition_plan(r, &stop).await.unwrap());
    let going_on = store
        .claim_partition(r, "w5", later, later + lease)
        .await
        .unwrap()
        .expect("stopped: a partition with work left");
    store.release_partition(r, &going_on, "w5").await.unwrap();
    let reject = change(&[PlanState::Stopped], PlanState::Rejected);
    assert!(store.transition_plan(r, &reject).await.unwrap());
    let any = store.claim_action(r, "w5", later, later + lease).await;
    assert!(any.unwrap().is_none(), "rejected");
    assert_eq!(
        store.retry_failed_actions(r).await.unwrap(),
        1,
        "the parked action"
    );
    store.close().await;
}

#[tokio::test]
async fn plans_claim_rescue_and_approve_the_same_way_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = SecretUrl::new(format!(
        "sqlite://{}",
        dir.path().join("trueup.db").display()
    ));
    plan_story(store::open(&url).await.unwrap()).await;
}

#[tokio::test]
async fn plans_claim_rescue_and_approve_the_same_way_on_postgres() {
    let db = TestPg::new().await;
    plan_story(store::open(&SecretUrl::new(db.url.clone())).await.unwrap()).await;
}

/// What a consistency objective reads: each completed run records since when its oldest
/// still-open violation has been open (a reopened one since it reopened), failed runs are
/// kept as failed, and the window's measure follows from them.
async fn slo_story(store: &dyn Store) {
    use chrono::{TimeDelta, TimeZone};
    let inv = InvariantName::parse("payments-ledger").unwrap();
    let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let at = |minutes: i64| t0 + TimeDelta::minutes(minutes);
    let run_at = |minute: i64, keys: &'static [i64]| {
        let inv = inv.clone();
        async move {
            let run = store
                .begin_run(&inv, at(minute) - TimeDelta::seconds(5))
                .await
                .unwrap();
            let seen: Vec<Violation> = keys
                .iter()
                .map(|k| violation(ViolationKind::Missing, *k))
                .collect();
            store.observe(run, &inv, 0, &seen).await.unwrap();
            let stats = RunStats {
                observed: seen.len() as u64,
                ..Default::default()
            };
            store
                .complete_run(run, &inv, &stats, at(minute), None)
                .await
                .unwrap();
        }
    };
    run_at(0, &[1]).await;
    run_at(30, &[1, 2]).await;
    let failed = store.begin_run(&inv, at(90)).await.unwrap();
    store
        .abandon_run(
            failed,
            RunStatus::Failed,
            "source `ledger`: timed out",
            at(90),
        )
        .await
        .unwrap();
    run_at(120, &[2]).await; // 1 resolves
    run_at(150, &[1, 2]).await; // 1 reopens
    run_at(180, &[1]).await; // 2 resolves: the oldest open is 1, since it reopened

    let history = store
        .slo_observations("payments-ledger", at(60), at(200))
        .await
        .unwrap();
    let seed = history.seed.unwrap();
    assert_eq!((seed.at, seed.oldest_open_since), (at(30), Some(at(0))));
    let seen: Vec<_> = history
        .runs
        .iter()
        .map(|r| (r.at, r.completed, r.oldest_open_since))
        .collect();
    assert_eq!(
        seen,
        vec![
            (at(90), false, None),
            (at(120), true, Some(at(30))),
            (at(150), true, Some(at(30))),
            (at(180), true, Some(at(150))),
        ]
    );

    let objective = trueup::domain::Objective {
        target: trueup::domain::SloTarget::parse("99%").unwrap(),
        max_open: trueup::domain::HumanDuration::parse("1h").unwrap(),
        window: trueup::domain::HumanDuration::parse("30d").unwrap(),
    };
    let m = trueup::slo::over(store, "payments-ledger", &objective, at(60), at(200))
        .await
        .unwrap();
    // Key 1 was open past the hour from 60 to the run at 120; key 2 (open since 30) from 120
    // to the run at 180; key 1 again only from 210.
    assert_eq!(m.breach, TimeDelta::minutes(120));
    assert_eq!(m.unverified, TimeDelta::minutes(30));
    assert_eq!(m.measured, TimeDelta::minutes(140));
    assert!(!m.breaching);
    // Another invariant's runs are its own.
    let none = store
        .slo_observations("other", at(0), at(200))
        .await
        .unwrap();
    assert_eq!(none, trueup::store::SloHistory::default());
}

#[tokio::test]
async fn runs_record_what_a_consistency_objective_needs_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let url = SecretUrl::new(format!(
        "sqlite://{}",
        dir.path().join("trueup.db").display()
    ));
    let sqlite = store::open(&url).await.unwrap();
    slo_story(sqlite.as_ref()).await;
    sqlite.close().await;
    let db = TestPg::new().await;
    let pg = store::open(&SecretUrl::new(db.url.clone())).await.unwrap();
    slo_story(pg.as_ref()).await;
    pg.close().await;
}

/// Groups, silences and their release: what every backend must do identically.
async fn notice_story(store: Arc<dyn Store>) {
    use chrono::TimeDelta;
    use trueup::domain::{Alert, AlertState, NewSilence, Route};
    use trueup::serve::outbox::dispatch;
    use trueup::store::{QueuedNotice, SilenceExpiry};
    let t0 = Utc::now();
    let route = {
        let mut r = Route::every_channel(vec!["mail".into()]);
        r.group_by = trueup::domain::GroupBy::Labels(vec!["owner".into()]);
        r.group_wait = TimeDelta::seconds(30);
        r.group_interval = TimeDelta::minutes(5);
        r
    };
    let firing = Alert {
        state: AlertState::Firing,
        active_since: Some(t0),
        last_violating_at: Some(t0),
        last_notified_at: Some(t0),
    };
    let notice = |invariant: &str, kind: &str, run: u32, held_by: Option<i64>| {
        let labels = trueup::domain::AlertLabels(
            [
                ("invariant", invariant),
                ("owner", "payments"),
                ("severity", "high"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        );
        QueuedNotice {
            invariant: invariant.into(),
            notice: kind.into(),
            delivery: route.deliveries(&labels).remove(0),
            payload: json!({"kind": "notice", "dedup_key": format!("{invariant}:{kind}:run-{run}:mail"),
                "invariant": invariant, "owner": "payments", "severity": "high", "notice": kind}),
            held_by,
        }
    };
    // A silence on `c` only.
    let silence = store
        .create_silence(
            &NewSilence::parse(
                &["invariant=c".into()],
                TimeDelta::hours(1),
                "ledger maintenance",
                t0,
            )
            .unwrap(),
            "cli:ana",
            t0,
        )
        .await
        .unwrap();
    assert_eq!(
        store.silences(t0, false, 10).await.unwrap(),
        std::slice::from_ref(&silence)
    );
    for (name, held) in [("a", None), ("b", None), ("c", Some(silence.id))] {
        store
            .record_alert(name, &firing, &[notice(name, "firing", 1, held)], t0)
            .await
            .unwrap();
    }
    // Within group_wait nothing goes out; at its end, a and b together; c is held.
    dispatch(store.as_ref(), t0 + TimeDelta::seconds(29))
        .await
        .unwrap();
    assert!(store.outbox(10).await.unwrap().is_empty());
    let t1 = t0 + TimeDelta::seconds(30);
    dispatch(store.as_ref(), t1).await.unwrap();
    let out = store.outbox(10).await.unwrap();
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].message.payload["kind"], "group");
    assert_eq!(out[0].message.payload["invariants"], json!(["a", "b"]));
    // Another notice of the group waits for group_interval after the last one.
    store
        .record_alert(
            "b",
            &firing,
            &[notice("b", "updated", 2, None)],
            t1 + TimeDelta::seconds(1),
        )
        .await
        .unwrap();
    dispatch(store.as_ref(), t1 + TimeDelta::minutes(4))
        .await
        .unwrap();
    assert_eq!(store.outbox(10).await.unwrap().len(), 1);
    dispatch(store.as_ref(), t1 + TimeDelta::minutes(5))
        .await
        .unwrap();
    let out = store.outbox(10).await.unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(
        out[0].message.dedup_key, "b:updated:run-2:mail",
        "alone, as it is"
    );

    // The silence ends early; c still fires: its held notices become one summary.
    let t2 = t1 + TimeDelta::minutes(10);
    let expired = store
        .expire_silence(silence.id, "cli:bo", t2)
        .await
        .unwrap();
    assert!(
        matches!(&expired, SilenceExpiry::Expired(s) if s.expired_by.as_deref() == Some("cli:bo"))
    );
    assert!(matches!(
        store
            .expire_silence(silence.id, "cli:bo", t2)
            .await
            .unwrap(),
        SilenceExpiry::AlreadyEnded(_)
    ));
    assert_eq!(
        store.expire_silence(9999, "cli:bo", t2).await.unwrap(),
        SilenceExpiry::NotFound
    );
    assert!(store.silences(t2, false, 10).await.unwrap().is_empty());
    assert_eq!(store.silences(t2, true, 10).await.unwrap().len(), 1);
    dispatch(store.as_ref(), t2).await.unwrap();
    let out = store.outbox(10).await.unwrap();
    assert_eq!(out.len(), 3, "{out:#?}");
    let summary = &out[0].message.payload;
    assert_eq!(summary["invariant"], "c");
    assert_eq!(summary["held"]["notices"], 1);
    assert_eq!(summary["held"]["silence"], silence.id);
    // Released once: a second pass finds nothing to settle.
    dispatch(store.as_ref(), t2 + TimeDelta::seconds(1))
        .await
        .unwrap();
    assert_eq!(store.outbox(10).await.unwrap().len(), 3);

    // A silence over an alert that stops firing: its held notices are dropped, not sent.
    let t3 = t2 + TimeDelta::minutes(1);
    let second = store
        .create_silence(
            &NewSilence::parse(&["invariant=d".into()], TimeDelta::minutes(5), "deploy", t3)
                .unwrap(),
            "cli:ana",
            t3,
        )
        .await
        .unwrap();
    store
        .record_alert(
            "d",
            &firing,
            &[notice("d", "firing", 1, Some(second.id))],
            t3,
        )
        .await
        .unwrap();
    store
        .record_alert(
            "d",
            &Alert::inactive(),
            &[notice("d", "resolved", 2, Some(second.id))],
            t3,
        )
        .await
        .unwrap();
    dispatch(store.as_ref(), t3 + TimeDelta::minutes(6))
        .await
        .unwrap();
    assert_eq!(store.outbox(10).await.unwrap().len(), 3, "nothing about d");

    let audit: Vec<(String, String)> = store
        .audit_trail(
            &[
                format!("silence:{}", silence.id),
                format!("silence:{}", second.id),
                "invariant:c".into(),
                "invariant:d".into(),
                "channel:mail".into(),
            ],
            t0 - TimeDelta::seconds(1),
            50,
        )
        .await
        .unwrap()
        .into_iter()
        .filter(|e| !e.action.starts_with("alert."))
        .map(|e| (e.action, e.target))
        .collect();
    assert_eq!(
        audit,
        [
            (
                "silence.create".to_owned(),
                format!("silence:{}", silence.id)
            ),
            ("notice.held".to_owned(), "invariant:c".to_owned()),
            ("notice.grouped".to_owned(), "channel:mail".to_owned()),
            (
                "silence.expire".to_owned(),
                format!("silence:{}", silence.id)
            ),
            ("silence.end".to_owned(), format!("silence:{}", silence.id)),
            (
                "silence.create".to_owned(),
                format!("silence:{}", second.id)
            ),
            ("notice.held".to_owned(), "invariant:d".to_owned()),
            ("notice.held".to_owned(), "invariant:d".to_owned()),
            ("silence.end".to_owned(), format!("silence:{}", second.id)),
        ]
    );

    // A notice queued "held" by a silence that has ended meanwhile is not held: it would
    // never be settled.
    let t4 = t3 + TimeDelta::minutes(10);
    store
        .record_alert(
            "d",
            &firing,
            &[notice("d", "firing", 3, Some(second.id))],
            t4,
        )
        .await
        .unwrap();
    dispatch(store.as_ref(), t4 + TimeDelta::minutes(6))
        .await
        .unwrap();
    let out = store.outbox(10).await.unwrap();
    assert_eq!(out.len(), 4);
    assert_eq!(out[0].message.dedup_key, "d:firing:run-3:mail");

    // An alert people heard fire before the silence and that resolved during it: its resolve
    // goes out when the silence ends (PagerDuty closes what it opened).
    let t5 = t4 + TimeDelta::hours(1);
    let third = store
        .create_silence(
            &NewSilence::parse(
                &["invariant=d".into()],
                TimeDelta::minutes(5),
                "cleanup",
                t5,
            )
            .unwrap(),
            "cli:ana",
            t5,
        )
        .await
        .unwrap();
    store
        .record_alert(
            "d",
            &Alert::inactive(),
            &[notice("d", "resolved", 4, Some(third.id))],
            t5,
        )
        .await
        .unwrap();
    dispatch(store.as_ref(), t5 + TimeDelta::minutes(6))
        .await
        .unwrap();
    let out = store.outbox(10).await.unwrap();
    assert_eq!(out.len(), 5, "{out:#?}");
    assert_eq!(out[0].message.payload["notice"], "resolved");
    assert_eq!(out[0].message.payload["held"]["still_firing"], false);
    store.close().await;
}

#[tokio::test]
async fn notices_group_and_silences_hold_and_release_them_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = SecretUrl::new(format!(
        "sqlite://{}",
        dir.path().join("trueup.db").display()
    ));
    notice_story(store::open(&url).await.unwrap()).await;
}

#[tokio::test]
async fn notices_group_and_silences_hold_and_release_them_on_postgres() {
    let db = TestPg::new().await;
    notice_story(store::open(&SecretUrl::new(db.url.clone())).await.unwrap()).await;
}

/// Two runs of one invariant overlapping (a verification run beside a scheduled one): each
/// violation takes the word of the run that began last, whichever completes last.
async fn overlapping_runs_story(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let inv = InvariantName::parse("orders-shipped").unwrap();
    use ViolationKind::*;
    let full = |seen: usize| RunStats {
        observed: seen as u64,
        ..Default::default()
    };
    // Key 1 is open before either run.
    run_with(store, &inv, &[violation(Missing, 1)]).await;
    // An older run A begins (a long full pass), then B; B sees key 2 appear, and key 1 gone.
    let a = store.begin_run(&inv, Utc::now()).await.unwrap();
    let b = store.begin_run(&inv, Utc::now()).await.unwrap();
    store
        .observe(b, &inv, 0, &[violation(Missing, 2)])
        .await
        .unwrap();
    let by_b = store
        .complete_run(b, &inv, &full(1), Utc::now(), None)
        .await
        .unwrap();
    assert_eq!((by_b.new, by_b.resolved), (1, 1));
    // A, which read before key 2 appeared and still saw key 1, completes last: it neither
    // resolves key 2 nor reopens key 1.
    store
        .observe(a, &inv, 0, &[violation(Missing, 1)])
        .await
        .unwrap();
    let by_a = store
        .complete_run(a, &inv, &full(1), Utc::now(), None)
        .await
        .unwrap();
    assert_eq!(
        (by_a.new, by_a.reopened, by_a.still_open, by_a.resolved),
        (0, 0, 0, 0),
        "{by_a:?}"
    );
    // Key 2, which B saw, is open after A all the same: A never reads as 'holds'.
    assert_eq!((by_a.uncovered, by_a.open_after()), (1, 1), "{by_a:?}");
    assert_eq!(status_of(store, &inv, 2).await, Some(ViolationStatus::Open));
    assert_eq!(
        status_of(store, &inv, 1).await,
        Some(ViolationStatus::Resolved)
    );
    // The next run speaks for both again.
    let next = run_with(store, &inv, &[violation(Missing, 1)]).await;
    assert_eq!((next.reopened, next.resolved), (1, 1), "{next:?}");
}

/// A run that finds one violation twice in one batch (a check whose query gives one key
/// twice) records it once, on either backend.
async fn found_twice_story(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let inv = InvariantName::parse("order-lines-priced").unwrap();
    let twice = [
        violation(ViolationKind::Missing, 7),
        violation(ViolationKind::Missing, 8),
        violation(ViolationKind::Missing, 7),
    ];
    let change = run_with(store, &inv, &twice).await;
    assert_eq!((change.new, change.still_open), (2, 0), "{change:?}");
    let change = run_with(store, &inv, &twice).await;
    assert_eq!((change.new, change.still_open), (0, 2), "{change:?}");
}

#[tokio::test]
async fn a_violation_found_twice_in_one_batch_is_recorded_once_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = SecretUrl::new(format!(
        "sqlite://{}",
        dir.path().join("trueup.db").display()
    ));
    found_twice_story(store::open(&url).await.unwrap()).await;
}

#[tokio::test]
async fn a_violation_found_twice_in_one_batch_is_recorded_once_on_postgres() {
    let db = TestPg::new().await;
    found_twice_story(store::open(&SecretUrl::new(db.url.clone())).await.unwrap()).await;
}

#[tokio::test]
async fn a_run_that_began_before_another_never_overrules_it_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = SecretUrl::new(format!(
        "sqlite://{}",
        dir.path().join("trueup.db").display()
    ));
    overlapping_runs_story(store::open(&url).await.unwrap()).await;
}

#[tokio::test]
async fn a_run_that_began_before_another_never_overrules_it_on_postgres() {
    let db = TestPg::new().await;
    overlapping_runs_story(store::open(&SecretUrl::new(db.url.clone())).await.unwrap()).await;
}

/// A windowed run resolves the violations it did not see whose event time lies in its
/// window, and leaves older ones (and ones without a time) as they were.
async fn window_story(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let inv = InvariantName::parse("charges-booked").unwrap();
    let now = Utc::now();
    let at = |days: i64, key: i64| Violation {
        event_at: Some(now - chrono::TimeDelta::days(days)),
        ..violation(ViolationKind::Missing, key)
    };
    // 1 and 2 are recent, 3 is three weeks old, 4 has no time.
    let seen = [
        at(1, 1),
        at(2, 2),
        at(21, 3),
        violation(ViolationKind::Extra, 4),
    ];
    run_with(store, &inv, &seen).await;

    // A ten-day window sees 1 again, not 2 (repaired), not 3 or 4 (not covered).
    let run = store.begin_run(&inv, now).await.unwrap();
    store.observe(run, &inv, 0, &[at(1, 1)]).await.unwrap();
    let stats = RunStats {
        observed: 1,
        coverage: trueup::domain::Coverage::Window {
            from: now - chrono::TimeDelta::days(10),
        },
        ..Default::default()
    };
    let change = store
        .complete_run(run, &inv, &stats, Utc::now(), None)
        .await
        .unwrap();
    assert_eq!((change.resolved, change.uncovered), (1, 2), "{change:?}");
    for (key, want) in [
        (1, ViolationStatus::Open),
        (2, ViolationStatus::Resolved),
        (3, ViolationStatus::Open),
        (4, ViolationStatus::Open),
    ] {
        assert_eq!(status_of(store, &inv, key).await, Some(want), "{key}");
    }
    let runs = store.runs(Some(inv.as_str()), 1).await.unwrap();
    assert_eq!(
        runs[0].stats.coverage.window_from(),
        stats.coverage.window_from()
    );
    store.close().await;
}

#[tokio::test]
async fn a_windowed_run_resolves_only_what_its_window_covers_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = SecretUrl::new(format!(
        "sqlite://{}",
        dir.path().join("trueup.db").display()
    ));
    window_story(store::open(&url).await.unwrap()).await;
}

#[tokio::test]
async fn a_windowed_run_resolves_only_what_its_window_covers_on_postgres() {
    let db = TestPg::new().await;
    window_story(store::open(&SecretUrl::new(db.url.clone())).await.unwrap()).await;
}

fn delivery(
    id: &str,
    source: &str,
    position: Option<&str>,
    body: &str,
) -> trueup::domain::CapturedEvent {
    trueup::domain::CapturedEvent {
        identity: trueup::domain::EventIdentity {
            event_id: id.into(),
            event_at: Some(Utc::now()),
        },
        source: source.into(),
        position: position.map(str::to_owned),
        headers: serde_json::Map::from_iter([(
            "content-type".to_owned(),
            json!("application/json"),
        )]),
        payload: body.as_bytes().to_vec(),
    }
}

/// An event log keeps each id once; a duplicate is counted once per delivery, a redelivery of
/// a delivery already stored or counted (same feed and position) neither stored nor counted.
async fn event_log_story(store: Arc<dyn Store>) {
    use trueup::domain::{Intake, LogName};
    let store = store.as_ref();
    let orders = LogName::parse("orders").unwrap();
    let other = LogName::parse("other").unwrap();
    let first = store
        .ingest(
            &orders,
            &[
                delivery("a", "nats:ORDERS", Some("1"), r#"{"id":"a"}"#),
                delivery("b", "nats:ORDERS", Some("2"), r#"{"id":"b"}"#),
                // Published twice upstream, within one batch.
                delivery("a", "nats:ORDERS", Some("3"), r#"{"id":"a","again":true}"#),
                delivery("c", "webhook", None, r#"{"id":"c"}"#),
            ],
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(
        first,
        [
            Intake::Stored,
            Intake::Stored,
            Intake::Duplicate { deliveries: 2 },
            Intake::Stored
        ]
    );
    // After a crash before the acknowledgement, the same messages come again; the webhook
    // is retried by its sender, which is a delivery of its own.
    let again = store
        .ingest(
            &orders,
            &[
                delivery("a", "nats:ORDERS", Some("1"), r#"{"id":"a"}"#),
                delivery("a", "nats:ORDERS", Some("3"), r#"{"id":"a","again":true}"#),
                delivery("c", "webhook", None, r#"{"id":"c"}"#),
                delivery("a", "nats:ORDERS", Some("9"), r#"{"id":"a"}"#),
            ],
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(
        again,
        [
            Intake::Redelivered,
            Intake::Redelivered,
            Intake::Duplicate { deliveries: 2 },
            Intake::Duplicate { deliveries: 3 }
        ]
    );
    // The same id in another log is another event.
    assert_eq!(
        store
            .ingest(&other, &[delivery("a", "webhook", None, "{}")], Utc::now())
            .await
            .unwrap(),
        [Intake::Stored]
    );
    let a = store.logged_event("orders", "a").await.unwrap().unwrap();
    assert_eq!(
        (a.deliveries, a.source.as_str(), a.position.as_deref()),
        (3, "nats:ORDERS", Some("1"))
    );
    // The first delivery's payload and headers are what the log keeps.
    assert_eq!(a.payload, br#"{"id":"a"}"#);
    assert_eq!(a.headers, json!({"content-type": "application/json"}));
    assert!(a.event_at.is_some() && a.last_delivered_at >= a.ingested_at);
    assert!(store.logged_event("orders", "zzz").await.unwrap().is_none());
    let counts = store.log_counts("orders").await.unwrap();
    assert_eq!((counts.events, counts.duplicates), (3, 3));
    let page = store.logged_events("orders", None, 2).await.unwrap();
    let ids: Vec<&str> = page.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    let rest = store
        .logged_events("orders", Some(page[1].id), 10)
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(),
        ["c"]
    );
    store.close().await;
}

#[tokio::test]
async fn an_event_log_keeps_each_id_once_and_counts_true_duplicates_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = SecretUrl::new(format!(
        "sqlite://{}",
        dir.path().join("trueup.db").display()
    ));
    event_log_story(store::open(&url).await.unwrap()).await;
}

#[tokio::test]
async fn an_event_log_keeps_each_id_once_and_counts_true_duplicates_on_postgres() {
    let db = TestPg::new().await;
    event_log_story(store::open(&SecretUrl::new(db.url.clone())).await.unwrap()).await;
}

/// What became of a log's events: first outcomes once, changes by key, a replay that stays.
async fn event_outcome_story(store: std::sync::Arc<dyn store::Store>) {
    use trueup::domain::{EventOutcome, LogName};
    use trueup::store::{DecidedOutcome, OutcomeQuery, OutcomeWrite};
    let store = store.as_ref();
    let orders = LogName::parse("orders").unwrap();
    let events: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|id| delivery(id, "webhook", None, &format!(r#"{{"id":"{id}"}}"#)))
        .collect();
    store.ingest(&orders, &events, Utc::now()).await.unwrap();
    let end = store.log_end("orders").await.unwrap();
    assert_eq!(store.outcome_mark("orders", "fulfilled").await.unwrap(), 0);
    let decided = |id: &str, outcome| DecidedOutcome {
        event_id: id.into(),
        key: format!(r#"["{id}"]"#),
        outcome,
        target_record_id: (outcome == EventOutcome::Processed).then(|| id.to_owned()),
    };
    let at = Utc::now();
    let violated = [
        (r#"["b"]"#.to_owned(), EventOutcome::Missing),
        (r#"["c"]"#.to_owned(), EventOutcome::Mismatched),
    ];
    let first = [
        decided("a", EventOutcome::Processed),
        decided("b", EventOutcome::Missing),
        decided("c", EventOutcome::Mismatched),
    ];
    // `d` is still inside its grace period: judged by a later run.
    let counts = store
        .write_outcomes(&OutcomeWrite {
            log: "orders",
            invariant: "fulfilled",
            run: 1,
            started_at: at,
            at,
            decided: &first,
            violated: &violated,
            healed: &[],
            through: end - 1,
        })
        .await
        .unwrap();
    assert_eq!((counts.first, counts.changed), (3, 0));
    assert_eq!(
        store.outcome_mark("orders", "fulfilled").await.unwrap(),
        end - 1
    );
    let lines = |outcome| async move {
        store
            .event_lines(&OutcomeQuery {
                log: "orders".into(),
                invariant: Some("fulfilled".into()),
                outcome,
                after: 0,
                limit: 10,
            })
            .await
            .unwrap()
            .into_iter()
            .map(|l| {
                (
                    l.event_id,
                    l.outcome.map(|o| o.as_str()),
                    l.target_record_id,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        lines(None).await,
        [
            ("a".into(), Some("processed"), Some("a".into())),
            ("b".into(), Some("missing"), None),
            ("c".into(), Some("mismatched"), None),
            ("d".into(), None, None),
        ]
    );
    assert_eq!(
        lines(Some(EventOutcome::Missing)).await,
        [("b".into(), Some("missing"), None)]
    );
    assert_eq!(
        store
            .unsettled_outcomes("orders", "fulfilled")
            .await
            .unwrap(),
        [
            ("b".to_owned(), r#"["b"]"#.to_owned()),
            ("c".to_owned(), r#"["c"]"#.to_owned())
        ]
    );
    // A run begins; `b` is replayed meanwhile. The run, which saw `b` missing, leaves the
    // replay be; it finds `a` gone downstream, `c` corrected, `d` processed.
    let begun = Utc::now();
    let replayed = store
        .mark_replayed(
            "orders",
            "fulfilled",
            r#"["b"]"#,
            (7, 1),
            Some("b"),
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(replayed, 1);
    let later = Utc::now();
    let healed = |id: &str| trueup::store::HealedOutcome {
        event_id: id.into(),
        target_record_id: id.into(),
    };
    let counts = store
        .write_outcomes(&OutcomeWrite {
            log: "orders",
            invariant: "fulfilled",
            run: 2,
            started_at: begun,
            at: later,
            decided: &[
                decided("a", EventOutcome::Processed),
                decided("d", EventOutcome::Processed),
            ],
            violated: &[
                (r#"["a"]"#.to_owned(), EventOutcome::Missing),
                (r#"["b"]"#.to_owned(), EventOutcome::Missing),
            ],
            healed: &[healed("c")],
            through: end,
        })
        .await
        .unwrap();
    // d first; a violated now, c healed, b left replayed.
    assert_eq!((counts.first, counts.changed), (1, 2));
    assert_eq!(
        lines(None).await,
        [
            ("a".into(), Some("missing"), None),
            ("b".into(), Some("replayed"), Some("b".into())),
            ("c".into(), Some("processed"), Some("c".into())),
            ("d".into(), Some("processed"), Some("d".into())),
        ]
    );
    // The next run still finds `b` missing (the downstream takes the replay in later): missing,
    // its replay kept; once found through, it is `replayed` again.
    for (run, violated, healed) in [
        (
            3,
            vec![(r#"["b"]"#.to_owned(), EventOutcome::Missing)],
            vec![],
        ),
        (4, vec![], vec![healed("b")]),
    ] {
        store
            .write_outcomes(&OutcomeWrite {
                log: "orders",
                invariant: "fulfilled",
                run,
                started_at: Utc::now(),
                at: Utc::now(),
                decided: &[],
                violated: &violated,
                healed: &healed,
                through: end,
            })
            .await
            .unwrap();
        let b = store.event_outcomes("orders", "b").await.unwrap();
        let expected = if run == 3 {
            EventOutcome::Missing
        } else {
            EventOutcome::Replayed
        };
        assert_eq!(
            (b[0].outcome, b[0].plan_id),
            (expected, Some(7)),
            "run {run}"
        );
    }
    let b = store.event_outcomes("orders", "b").await.unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(
        (b[0].outcome, b[0].plan_id, b[0].action_seq, b[0].run_id),
        (EventOutcome::Replayed, Some(7), Some(1), Some(4))
    );
    let c = store.event_outcomes("orders", "c").await.unwrap();
    // (PostgreSQL keeps microseconds.)
    assert_eq!(
        (c[0].run_id, c[0].processed_at.timestamp_micros()),
        (Some(2), later.timestamp_micros())
    );
    // A page holds whole events: the second page starts after the first's last event.
    let page = store
        .event_lines(&OutcomeQuery {
            log: "orders".into(),
            invariant: None,
            outcome: None,
            after: 0,
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|l| l.event_id.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    // Purging an event takes its outcomes along.
    store
        .purge_log("orders", Utc::now() + chrono::TimeDelta::hours(1), 1)
        .await
        .unwrap();
    assert!(
        store
            .event_outcomes("orders", "a")
            .await
            .unwrap()
            .is_empty()
    );
    store.close().await;
}

#[tokio::test]
async fn a_log_events_outcomes_are_written_once_then_changed_by_their_keys_violation_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = SecretUrl::new(format!(
        "sqlite://{}",
        dir.path().join("trueup.db").display()
    ));
    event_outcome_story(store::open(&url).await.unwrap()).await;
}

#[tokio::test]
async fn a_log_events_outcomes_are_written_once_then_changed_by_their_keys_violation_on_postgres() {
    let db = TestPg::new().await;
    event_outcome_story(store::open(&SecretUrl::new(db.url.clone())).await.unwrap()).await;
}

/// A log's days: made ready ahead, dropped whole once past retention (the PostgreSQL store's
/// partitions), the rest purged row by row; ids stay unique across days either way.
async fn log_days_story(store: std::sync::Arc<dyn store::Store>, pg: Option<&str>) {
    use trueup::domain::{Intake, LogName};
    let store = store.as_ref();
    let orders = LogName::parse("orders").unwrap();
    let now = Utc::now();
    let day = chrono::TimeDelta::days(1);
    let made = store.prepare_log_days("orders", now).await.unwrap();
    assert_eq!(made, if pg.is_some() { 2 } else { 0 }, "today and tomorrow");
    assert_eq!(store.prepare_log_days("orders", now).await.unwrap(), 0);
    let at = |id: &str, event_at: chrono::DateTime<Utc>| {
        let mut d = delivery(id, "webhook", None, &format!(r#"{{"id":"{id}"}}"#));
        d.identity.event_at = Some(event_at);
        d
    };
    // Today, into today's day; three days ago (no day made ready then), to the default.
    assert_eq!(
        store
            .ingest(&orders, &[at("a", now), at("needed", now + day * 10)], now)
            .await
            .unwrap(),
        [Intake::Stored, Intake::Stored]
    );
    assert_eq!(
        store
            .ingest(&orders, &[at("old", now - day * 3)], now - day * 3)
            .await
            .unwrap(),
        [Intake::Stored]
    );
    // Delivered again tomorrow: one event, whichever day holds it.
    assert_eq!(
        store
            .ingest(&orders, &[at("a", now)], now + day)
            .await
            .unwrap(),
        [Intake::Duplicate { deliveries: 2 }]
    );
    if let Some(url) = pg {
        let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(url)
            .await
            .unwrap();
        let homes: Vec<(String, String)> = sqlx::query_as(
            "SELECT event_id, tableoid::regclass::text FROM log_events ORDER BY event_id",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        let today = now.format("%Y%m%d").to_string();
        assert_eq!(homes.len(), 3);
        assert!(homes[0].1.ends_with(&today), "{homes:?}");
        assert!(homes[1].1.ends_with(&today), "{homes:?}");
        assert_eq!(homes[2].1, "log_events_default");
        // A log whose event came before its day was made ready: that day stays in the default
        // partition (PostgreSQL refuses a partition for rows it holds); tomorrow is made.
        let late = LogName::parse("late").unwrap();
        store.ingest(&late, &[at("x", now)], now).await.unwrap();
        assert_eq!(store.prepare_log_days("late", now).await.unwrap(), 1);
        sqlx::Connection::close(c).await.unwrap();
    }
    // Past retention: the day holding `needed` (it happens after the cut) stays, the rest
    // goes: on PostgreSQL nothing by whole days here, all by rows.
    let cut = now + day * 3;
    let dropped = store.drop_log_days("orders", cut).await.unwrap();
    let purged = store.purge_log("orders", cut, 100).await.unwrap();
    assert_eq!((dropped, dropped + purged), (0, 2));
    assert!(
        store
            .logged_event("orders", "needed")
            .await
            .unwrap()
            .is_some()
    );
    assert!(store.logged_event("orders", "a").await.unwrap().is_none());
    // Once `needed` is gone by rows too, its day is dropped whole (with nothing left in it);
    // a new day's events then drop with their day.
    let later = now + day * 20;
    store.purge_log("orders", later, 100).await.unwrap();
    assert_eq!(
        store.prepare_log_days("orders", later).await.unwrap(),
        if pg.is_some() { 2 } else { 0 }
    );
    store
        .ingest(&orders, &[at("future", later), at("future2", later)], later)
        .await
        .unwrap();
    let dropped = store
        .drop_log_days("orders", later + day * 2)
        .await
        .unwrap();
    assert_eq!(dropped, if pg.is_some() { 2 } else { 0 });
    let purged = store
        .purge_log("orders", later + day * 2, 100)
        .await
        .unwrap();
    assert_eq!(dropped + purged, 2);
    // Its id gone with it, an event id is new again.
    assert_eq!(
        store.ingest(&orders, &[at("a", now)], now).await.unwrap(),
        [Intake::Stored]
    );
    assert_eq!(store.log_counts("orders").await.unwrap().events, 1);
    store.close().await;
}

#[tokio::test]
async fn a_logs_days_are_made_ready_ahead_and_dropped_whole_past_retention_on_postgres() {
    let db = TestPg::new().await;
    let store = store::open(&SecretUrl::new(db.url.clone())).await.unwrap();
    log_days_story(store, Some(&db.url)).await;
}

#[tokio::test]
async fn a_logs_events_are_purged_by_rows_past_retention_and_ids_stay_unique_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = SecretUrl::new(format!(
        "sqlite://{}",
        dir.path().join("trueup.db").display()
    ));
    log_days_story(store::open(&url).await.unwrap(), None).await;
}

#[tokio::test]
async fn upgrading_a_postgresql_store_moves_each_logged_day_into_a_partition_of_its_own() {
    use sqlx::Connection;
    let db = TestPg::new().await;
    let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let (before, after): (Vec<_>, Vec<_>) = files
        .iter()
        .partition(|p| p.file_name().unwrap().to_str().unwrap() < "0018");
    for f in &before {
        sqlx::raw_sql(&std::fs::read_to_string(f).unwrap())
            .execute(&mut c)
            .await
            .unwrap();
    }
    // A store with events of two logs over two days, one delivered twice.
    sqlx::raw_sql(
        "INSERT INTO log_events (log, event_id, event_at, ingested_at, source, deliveries, last_delivered_at, headers, payload) VALUES
           ('orders', 'a', NULL, '2026-11-30T23:59:59Z', 'webhook', 2, '2026-12-01T00:10:00Z', '{}', '\\x7b7d'),
           ('orders', 'b', NULL, '2026-12-01T00:00:00Z', 'webhook', 1, '2026-12-01T00:00:00Z', '{}', '\\x7b7d'),
           ('refunds', 'a', NULL, '2026-12-01T08:00:00Z', 'webhook', 1, '2026-12-01T08:00:00Z', '{}', '\\x7b7d');
         INSERT INTO log_duplicates (log, event_id, source, delivered_at) VALUES ('orders', 'a', 'webhook', '2026-12-01T00:10:00Z');",
    )
    .execute(&mut c)
    .await
    .unwrap();
    assert_eq!(after.len(), files.len() - before.len());
    let upgrade = after
        .iter()
        .find(|p| p.to_str().unwrap().contains("0018"))
        .unwrap();
    sqlx::raw_sql(&std::fs::read_to_string(upgrade).unwrap())
        .execute(&mut c)
        .await
        .unwrap();
    let homes: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT log || '/' || event_id, tableoid::regclass::text, id FROM log_events ORDER BY id",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    let registry: Vec<(String, chrono::NaiveDate, String)> =
        sqlx::query_as("SELECT log, day, name FROM log_partitions ORDER BY log, day")
            .fetch_all(&mut c)
            .await
            .unwrap();
    let day =
        |d: u32| chrono::NaiveDate::from_ymd_opt(2026, if d == 30 { 11 } else { 12 }, d).unwrap();
    assert_eq!(
        registry
            .iter()
            .map(|(l, d, _)| (l.as_str(), *d))
            .collect::<Vec<_>>(),
        [("orders", day(30)), ("orders", day(1)), ("refunds", day(1))]
    );
    // Each event in its day's partition (by UTC day), none in the default one.
    assert_eq!(homes.len(), 3);
    assert_eq!(
        (homes[0].0.as_str(), homes[0].1.as_str()),
        ("orders/a", registry[0].2.as_str())
    );
    assert_eq!(
        (homes[1].0.as_str(), homes[1].1.as_str()),
        ("orders/b", registry[1].2.as_str())
    );
    assert_eq!(
        (homes[2].0.as_str(), homes[2].1.as_str()),
        ("refunds/a", registry[2].2.as_str())
    );
    // Named as `serve` names the days it makes ready (the first 8 bytes of the log's SHA-256).
    use sha2::Digest;
    let digest = hex::encode(&sha2::Sha256::digest(b"orders")[..8]);
    assert_eq!(registry[0].2, format!("log_events_{digest}_20261130"));
    // The ids deduplicate from now on; the sequence goes on after the old rows.
    let ids: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM log_event_ids")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(ids, 3);
    let next: i64 = sqlx::query_scalar("SELECT nextval('log_events_id_seq')")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert!(next > homes[2].2);
    c.close().await.unwrap();
}
