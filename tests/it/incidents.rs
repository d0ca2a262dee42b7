//! Incidents: window, scope, phase marks and notes, through the library on both stores, the
//! CLI and the API.

use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use trueup::config::SecretUrl;
use trueup::domain::Actor;
use trueup::domain::Role;
use trueup::incident::{self, IncidentError};
use trueup::store::{self, Store};

use crate::helpers::TestPg;

/// No invariant loaded: these incidents name none.
const NONE_LOADED: &[trueup::domain::Invariant] = &[];

fn actor(name: &str) -> Actor {
    Actor {
        name: name.into(),
        role: Role::Operator,
    }
}

async fn incident_story(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let t0 = Utc::now();
    let opened = incident::open(
        s,
        NONE_LOADED,
        "2026-11-25-billing-outage",
        t0 - TimeDelta::hours(6),
        Some(t0),
        &[],
        Some("the billing consumer was down"),
        &actor("olga"),
        t0,
    )
    .await
    .unwrap();
    assert!(opened.invariants.is_empty());
    let again = incident::open(
        s,
        NONE_LOADED,
        "2026-11-25-billing-outage",
        t0,
        None,
        &[],
        None,
        &actor("olga"),
        t0,
    )
    .await;
    assert!(
        matches!(again, Err(IncidentError::Exists(ref n)) if n == "2026-11-25-billing-outage"),
        "{again:?}"
    );
    let unknown = incident::open(
        s,
        NONE_LOADED,
        "other",
        t0,
        None,
        &["payments-ledgr".into()],
        None,
        &actor("olga"),
        t0,
    )
    .await;
    assert!(
        matches!(unknown, Err(IncidentError::Invalid(m)) if m.contains("no invariant named `payments-ledgr`"))
    );
    let backwards = incident::open(
        s,
        NONE_LOADED,
        "other",
        t0,
        Some(t0 - TimeDelta::hours(1)),
        &[],
        None,
        &actor("olga"),
        t0,
    )
    .await;
    assert!(matches!(backwards, Err(IncidentError::Invalid(_))));

    let name = "2026-11-25-billing-outage";
    incident::mark_phase(
        s,
        name,
        "contain",
        Some("consumer paused"),
        &actor("olga"),
        t0 + TimeDelta::minutes(5),
    )
    .await
    .unwrap();
    incident::add_note(
        s,
        name,
        "upstream kept the events",
        &actor("ravi"),
        t0 + TimeDelta::minutes(6),
    )
    .await
    .unwrap();
    incident::mark_phase(
        s,
        name,
        "restore",
        None,
        &actor("ravi"),
        t0 + TimeDelta::minutes(20),
    )
    .await
    .unwrap();
    let bad = incident::mark_phase(s, name, "fix", None, &actor("ravi"), t0).await;
    assert!(
        matches!(bad, Err(IncidentError::Invalid(m)) if m.contains("contain, restore, reconcile or verify"))
    );
    assert!(matches!(
        incident::add_note(s, "nope", "x", &actor("ravi"), t0).await,
        Err(IncidentError::NotFound(_))
    ));

    let view = incident::view(s, name).await.unwrap();
    let phases: Vec<(&str, &str)> = view
        .phases
        .iter()
        .map(|m| (m.phase.as_str(), m.by.as_str()))
        .collect();
    assert_eq!(phases, [("contain", "olga"), ("restore", "ravi")]);
    assert_eq!(view.events.len(), 3);
    assert_eq!(
        view.events[1].text.as_deref(),
        Some("upstream kept the events")
    );
    let audit: Vec<String> = s
        .audit_log(
            &trueup::store::AuditFilter::target(format!("incident:{name}")),
            trueup::store::AuditPage::After(None),
            10,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|e| format!("{} {}", e.actor, e.action))
        .collect();
    assert_eq!(
        audit,
        [
            "olga incident.open",
            "olga incident.phase",
            "ravi incident.note",
            "ravi incident.phase"
        ]
    );
    assert_eq!(s.incidents(10).await.unwrap().len(), 1);

    // Nothing in scope, nothing blocks: it closes, once, and its report is frozen.
    let approver = Actor {
        name: "april".into(),
        role: Role::Approver,
    };
    let closed = incident::close(
        s,
        NONE_LOADED,
        name,
        None,
        &approver,
        t0 + TimeDelta::hours(1),
    )
    .await
    .unwrap();
    assert!(closed.verdict.ready);
    let again = incident::close(s, NONE_LOADED, name, None, &approver, t0).await;
    assert!(matches!(again, Err(IncidentError::Closed(_))));
    let record = incident::load(s, name).await.unwrap();
    let frozen = s.frozen_report(record.id).await.unwrap().unwrap();
    assert_eq!(incident::content_hash(&frozen.report), frozen.report_hash);
    assert_eq!(
        closed.content_hash.as_deref(),
        Some(frozen.report_hash.as_str())
    );
    assert_eq!(record.closed_by.as_deref(), Some("april"));
    assert_eq!(
        incident::report(s, NONE_LOADED, name).await.unwrap(),
        closed
    );
    let late = incident::mark_phase(s, name, "verify", None, &approver, t0).await;
    assert!(matches!(late, Err(IncidentError::Closed(_))));
    store.close().await;
}

#[tokio::test]
async fn the_store_refuses_to_change_a_closed_incident_on_both_backends() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("trueup.db");
    let pg = TestPg::new().await;
    for url in [format!("sqlite://{}", file.display()), pg.url.clone()] {
        let store = store::open(&SecretUrl::new(url.clone())).await.unwrap();
        let t0 = Utc::now();
        incident::open(
            store.as_ref(),
            NONE_LOADED,
            "closed-one",
            t0,
            None,
            &[],
            None,
            &actor("olga"),
            t0,
        )
        .await
        .unwrap();
        let admin = Actor {
            name: "ada".into(),
            role: Role::Admin,
        };
        incident::close(store.as_ref(), NONE_LOADED, "closed-one", None, &admin, t0)
            .await
            .unwrap();
        store.close().await;
        let tamper =
            "UPDATE incidents SET report = '{}', report_hash = 'x' WHERE name = 'closed-one'";
        let refused = if url.starts_with("sqlite") {
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query(tamper).execute(&mut c).await.map(|_| ())
        } else {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query(tamper).execute(&mut c).await.map(|_| ())
        };
        let err = refused
            .expect_err("a closed incident must not change")
            .to_string();
        assert!(err.contains("a closed incident does not change"), "{err}");
    }
}

#[tokio::test]
async fn incidents_keep_their_window_phases_and_notes_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = SecretUrl::new(format!(
        "sqlite://{}",
        dir.path().join("trueup.db").display()
    ));
    incident_story(store::open(&url).await.unwrap()).await;
}

#[tokio::test]
async fn incidents_keep_their_window_phases_and_notes_on_postgres() {
    let db = TestPg::new().await;
    incident_story(store::open(&SecretUrl::new(db.url.clone())).await.unwrap()).await;
}

#[tokio::test]
async fn incidents_are_opened_and_marked_through_the_cli_and_the_api() {
    use crate::serve::{OPERATOR, VIEWER};
    let dir = tempfile::tempdir().unwrap();
    let config = crate::helpers::demo_with(dir.path(), None, &crate::serve::tokens_yaml("")).await;
    let path = config.file.clone().unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_trueup"))
            .arg("--config")
            .arg(&path)
            .env("TRUEUP_ACTOR", "olga")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, text) = cli(&[
        "incident",
        "open",
        "ledger-gap",
        "--from",
        "2026-11-25T01:00:00Z",
        "-i",
        "payments-ledger",
        "--summary",
        "ledger writer stalled",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("opened incident `ledger-gap`"), "{text}");
    let (code, text) = cli(&[
        "incident",
        "open",
        "Ledger Gap",
        "--from",
        "2026-11-25T01:00:00Z",
    ]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("incident name"), "{text}");
    let (code, text) = cli(&[
        "incident",
        "phase",
        "ledger-gap",
        "contain",
        "--note",
        "writer restarted",
    ]);
    assert_eq!(code, Some(0), "{text}");
    let (_, text) = cli(&["incident", "show", "ledger-gap"]);
    assert!(
        text.contains("contain:") && text.contains("writer restarted"),
        "{text}"
    );

    let server = crate::helpers::TestServer::start(config).await;
    let base = server.base.clone();
    let post = |url: String, token: &'static str, body: serde_json::Value| async move {
        let r = reqwest::Client::new()
            .post(url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    };
    let (status, _) = post(
        format!("{base}/api/v1/incidents"),
        VIEWER,
        serde_json::json!({"name": "x", "from": "2026-11-25T01:00:00Z"}),
    )
    .await;
    assert_eq!(status, 403, "a viewer cannot open an incident");
    let (status, body) = post(
        format!("{base}/api/v1/incidents/ledger-gap/phases"),
        OPERATOR,
        serde_json::json!({"phase": "restore", "note": "writer caught up"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["phases"][1]["phase"], "restore");
    assert_eq!(view["phases"][1]["by"], "otto");
    let (status, body) = post(
        format!("{base}/api/v1/incidents/ledger-gap/phases"),
        OPERATOR,
        serde_json::json!({"phase": "celebrate"}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("unknown variant `celebrate`"), "{body}");

    // The report, verification and closing.
    let get = |url: String, token: &'static str| async move {
        let r = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let kind = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, kind, r.text().await.unwrap())
    };
    let (status, body) = post(
        format!("{base}/api/v1/incidents/ledger-gap/verify"),
        OPERATOR,
        serde_json::json!({"fresh_within": "1s"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let verified: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        verified["runs"][0]["invariant"], "payments-ledger",
        "{verified}"
    );
    assert_eq!(verified["verdict"]["ready"], false, "{verified}");
    let (status, kind, html) = get(
        format!("{base}/api/v1/incidents/ledger-gap/report?format=html"),
        VIEWER,
    )
    .await;
    assert_eq!(status, 200, "{html}");
    assert_eq!(kind, "text/html; charset=utf-8");
    assert!(html.contains("Verdict: not ready to close"), "{html}");
    let (status, _, body) = get(
        format!("{base}/api/v1/incidents/ledger-gap/report?format=pdf"),
        VIEWER,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(
        format!("{base}/api/v1/incidents/ledger-gap/close"),
        OPERATOR,
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let refused: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        refused["blockers"][0]["kind"], "open_violations",
        "{refused}"
    );
    assert_eq!(refused["blockers"][0]["invariant"], "payments-ledger");
    let (status, body) = post(
        format!("{base}/api/v1/incidents/ledger-gap/close"),
        OPERATOR,
        serde_json::json!({"override_reason": "tracked in BILL-123"}),
    )
    .await;
    assert_eq!(status, 403, "an operator cannot override: {body}");
    let (status, body) = post(
        format!("{base}/api/v1/incidents/ledger-gap/close"),
        crate::serve::APPROVER,
        serde_json::json!({"override_reason": "tracked in BILL-123"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let closed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_matches_schema(&closed);
    assert_eq!(closed["closure"]["overridden"], true);
    assert_eq!(closed["closure"]["override_reason"], "tracked in BILL-123");
    assert_eq!(closed["closure"]["closed_by"], "april");
    let (status, kind, md) = get(
        format!("{base}/api/v1/incidents/ledger-gap/report?format=md"),
        VIEWER,
    )
    .await;
    assert_eq!(
        (status, kind.as_str()),
        (200, "text/markdown; charset=utf-8")
    );
    assert!(
        md.contains("**with blockers overridden**: tracked in BILL-123"),
        "{md}"
    );
    let (status, _, json) = get(format!("{base}/api/v1/incidents/ledger-gap/report"), VIEWER).await;
    assert_eq!(status, 200);
    let frozen: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        frozen, closed,
        "the frozen report is the one closing returned"
    );
    server.stop().await;
}

/// Validates a JSON report against the documented schema.
pub fn assert_matches_schema(report: &serde_json::Value) {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/incident-report.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(report)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

/// The story of a closure: the report shows the gap and refuses to close, the repair and a
/// fresh evaluation make it ready, closing freezes it, and later violations do not change it.
async fn an_incident_closes_on_evidence_and_its_report_is_frozen(store: &str) {
    use crate::helpers::{combined_output as text, trueup_cli};
    let dir = tempfile::tempdir().unwrap();
    let config = crate::replay::outage(dir.path(), store, true).await;
    let run = |args: &[&str]| {
        let out = trueup_cli(&config, "olga").args(args).output().unwrap();
        (out.status.code(), text(&out), out.stdout)
    };
    let (code, out, _) = run(&["check"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("proposed plan 1"), "{out}");
    let (code, out, _) = run(&[
        "incident",
        "open",
        "consumer-outage",
        "--from",
        "2026-11-20T02:00:00Z",
        "--to",
        "2026-11-20T02:30:00Z",
        "--summary",
        "the consumer was down | events lost",
    ]);
    assert_eq!(code, Some(0), "{out}");
    run(&[
        "incident",
        "phase",
        "consumer-outage",
        "contain",
        "--note",
        "consumer restarted",
    ]);

    // Before the repair: the exact gap, and blockers.
    let (code, out, json) = run(&["incident", "report", "consumer-outage", "-f", "json"]);
    assert_eq!(code, Some(0), "{out}");
    let report: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_matches_schema(&report);
    assert_eq!(
        report["incident"]["scope"],
        serde_json::json!(["events-processed"])
    );
    let inv = &report["invariants"][0];
    assert_eq!(inv["violations"]["by_kind"][0]["kind"], "missing");
    assert_eq!(inv["violations"]["by_kind"][0]["count"], 30);
    assert_eq!(
        inv["violations"]["by_kind"][0]["event_from"],
        "2026-11-20T02:00:00Z"
    );
    assert_eq!(
        inv["violations"]["by_kind"][0]["event_to"],
        "2026-11-20T02:29:00Z"
    );
    assert_eq!(report["verdict"]["ready"], false);
    let kinds: Vec<&str> = report["verdict"]["blockers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["open_violations", "unapproved_plan"], "{report:#}");
    let (code, out, _) = run(&["incident", "close", "consumer-outage"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("not ready to close")
            && out.contains("30 violation(s) in the window are still open (missing 30)")
            && out.contains("plan 1 awaits approval"),
        "{out}"
    );

    // The repair; the report evaluates again, since nothing has run since.
    let (code, out, _) = run(&["plan", "approve", "1"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out, _) = run(&["apply", "1", "--rate", "unlimited"]);
    assert_eq!(code, Some(0), "{out}");
    run(&["incident", "phase", "consumer-outage", "reconcile"]);
    let (code, out, json) = run(&["incident", "report", "consumer-outage", "-f", "json"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("verified `events-processed`: run 2 succeeded, 0 open"),
        "{out}"
    );
    let report: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_matches_schema(&report);
    let inv = &report["invariants"][0];
    assert_eq!(report["verdict"]["ready"], true, "{report:#}");
    assert_eq!(report["verdict"]["summary"], "ready to close");
    assert_eq!(inv["violations"]["by_kind"][0]["resolved"], 30);
    assert_eq!(inv["compensation"]["applied"], 30);
    assert_eq!(inv["verification"]["result"], "holds");
    assert_eq!(inv["verification"]["run"]["id"], 2);
    assert_eq!(inv["consistency"]["parity_pct"], 100.0);
    // Without a new evaluation it is the same report, byte for byte.
    let (_, _, again) = run(&["incident", "report", "consumer-outage", "-f", "json"]);
    assert_eq!(json, again, "same store content, same report");

    let (code, out, _) = run(&["incident", "close", "consumer-outage"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("closed incident `consumer-outage`: ready to close"),
        "{out}"
    );
    let reports = |suffix: &str| -> Vec<Vec<u8>> {
        ["md", "html", "json"]
            .iter()
            .map(|f| {
                let file = dir.path().join(format!("report-{suffix}.{f}"));
                let (code, out, _) = run(&[
                    "incident",
                    "report",
                    "consumer-outage",
                    "-f",
                    f,
                    "-o",
                    file.to_str().unwrap(),
                ]);
                assert_eq!(code, Some(0), "{out}");
                std::fs::read(&file).unwrap()
            })
            .collect()
    };
    let frozen = reports("closed");
    let report: serde_json::Value = serde_json::from_slice(&frozen[2]).unwrap();
    assert_matches_schema(&report);
    assert_eq!(report["incident"]["state"], "closed");
    assert_eq!(report["closure"]["closed_by"], "cli:olga");
    assert_eq!(report["closure"]["overridden"], false);
    let md = String::from_utf8(frozen[0].clone()).unwrap();
    assert!(
        md.contains("**Verdict: closed, ready: every check held**"),
        "{md}"
    );
    assert!(md.contains("the consumer was down \\| events lost"), "{md}");
    assert!(md.contains("| contain |"), "{md}");

    // New violations, in the window and out of it: the closed report does not move.
    std::fs::remove_file(dir.path().join("down.db")).unwrap();
    crate::helpers::sqlite_file(
        &dir.path().join("down.db"),
        "CREATE TABLE processed (event_id INTEGER PRIMARY KEY); INSERT INTO processed VALUES (1);",
    )
    .await;
    let (code, out, _) = run(&["check"]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        reports("later"),
        frozen,
        "a closed incident's report is frozen"
    );
    let (code, out, _) = run(&["incident", "note", "consumer-outage", "late note"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("is closed"), "{out}");

    // The HTML report renders in a real browser, verdict and all.
    let html = dir.path().join("report-closed.html");
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let dom = crate::helpers::render_in_chromium(
        &html,
        &shots.join(format!(
            "incident-report-{}.png",
            store.split(':').next().unwrap()
        )),
    )
    .await;
    assert!(
        dom.contains("Verdict: closed, ready: every check held"),
        "{dom}"
    );
    assert!(dom.contains("class=\"verdict ready\""), "{dom}");
    assert!(
        !dom.contains("http://") && !dom.contains("https://"),
        "no external assets"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_closes_on_evidence_and_its_report_is_frozen_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::helpers::sqlite_url(&dir.path().join("trueup.db"));
    an_incident_closes_on_evidence_and_its_report_is_frozen(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_closes_on_evidence_and_its_report_is_frozen_on_postgres() {
    let db = TestPg::new().await;
    an_incident_closes_on_evidence_and_its_report_is_frozen(&db.url).await;
}
