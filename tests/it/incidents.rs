//! Incidents: window, scope, phase marks and notes, through the library on both stores, the
//! CLI and the API.

use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use trueup::config::SecretUrl;
use trueup::domain::Role;
use trueup::incident::{self, IncidentError};
use trueup::plan::Actor;
use trueup::store::{self, Store};

use crate::helpers::TestPg;

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
        &[],
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
        &[],
        "2026-11-25-billing-outage",
        t0,
        None,
        &[],
        None,
        &actor("olga"),
        t0,
    )
    .await;
    assert!(matches!(again, Err(IncidentError::Invalid(m)) if m.contains("exists already")));
    let unknown = incident::open(
        s,
        &[],
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
        &[],
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
        .audit_log(Some(&format!("incident:{name}")), None, 10)
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
    store.close().await;
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

    let (base, stop, task, _store) = crate::serve::start(config).await;
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
    assert_eq!(status, 400, "{body}");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
