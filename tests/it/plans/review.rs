//! Review and approval: a plan bound to its content, staleness, who may approve, manual steps.

use super::*;

#[tokio::test]
async fn an_approved_plan_whose_actions_change_is_refused_and_a_fresh_one_proposed() {
    let dir = tempfile::tempdir().unwrap();
    let store_url = sqlite_url(&dir.path().join("trueup.db"));
    let config = events_scenario(dir.path(), &store_url, "").await;
    let app = open(&config).await;
    let targets = Targets::open(&app.config).unwrap();
    let outcomes = app
        .check(&[], &trueup::domain::Actor::local("test"), false)
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
        .check(&[], &trueup::domain::Actor::local("test"), false)
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
