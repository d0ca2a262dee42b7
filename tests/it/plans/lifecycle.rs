//! A plan's life end to end: proposed, approved, re-checked and applied on both stores, through
//! the library and the API; typed key reads; templates that cannot render.

use super::*;

async fn the_plan_lifecycle(store_url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = events_scenario(dir.path(), store_url, "").await;
    let app = open(&config).await;
    let targets = Targets::open(&app.config).unwrap();
    let store = app.store.as_ref();

    // A run proposes a plan: one action per violation.
    let outcomes = app
        .check(&[], &trueup::domain::Actor::local("test"), false)
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
        .check(&[], &trueup::domain::Actor::local("test"), false)
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
        .check(&[], &trueup::domain::Actor::local("test"), false)
        .await
        .unwrap();
    assert_eq!(after[0].run.open_after, 0, "{:?}", after[0]);

    // The audit log tells the whole story; an applied plan is not applied again.
    let audit: Vec<String> = store
        .audit_log(
            &trueup::store::AuditFilter::target(format!("plan:{id}")),
            trueup::store::AuditPage::After(None),
            100,
        )
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
                query: trueup::domain::Read::Sql("SELECT * FROM t".into()),
                needed: Vec::new(),
                order_by: Vec::new(),
                filter,
                digest_long_except: None,
                key_ranges: None,
                keys: None,
                changed_since: None,
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
    // The plan says what to do about it, as a route.
    let shown = get_json_as(&format!("{base}/api/v1/plans/{id}"), OPERATOR).await;
    assert_eq!(
        shown["next_step"],
        format!("resume it (POST /api/v1/plans/{id}/resume)"),
        "{shown}"
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
        .check(&[], &trueup::domain::Actor::local("test"), false)
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
