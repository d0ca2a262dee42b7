//! Stream targets: approved actions published to a JetStream subject (`Nats-Msg-Id`) and
//! appended to a Redis stream (`XADD` with a marker in one script), each exactly once across
//! plans; a stream that cannot take them fails the action, saying why.

use super::*;
use crate::helpers::{NATS_URL, REDIS_URL, TestRedis, TestStream};

/// Upstream events 1..=6; the downstream table misses 2, 4 and 6: three `missing`
/// violations, each compensated by `action` (YAML under `missing:`).
async fn scenario(dir: &Path, targets: &str, action: &str) -> (TestPg, App) {
    let pg = TestPg::new().await;
    pg.exec(
        "CREATE TABLE events (id BIGINT PRIMARY KEY, amount NUMERIC(10,2) NOT NULL);
         INSERT INTO events SELECT g, g * 1.25 FROM generate_series(1, 6) g;
         CREATE TABLE records (event_id BIGINT NOT NULL);
         INSERT INTO records VALUES (1), (3), (5);",
    )
    .await;
    let config = write_config(
        dir,
        &format!(
            "store: {}\nsources:\n  shop: {{url: \"{}\"}}\ntargets:\n{targets}",
            sqlite_url(&dir.join("trueup.db")),
            pg.reader_url,
        ),
        &format!(
            r#"invariants:
  - name: events-published
    severity: low
    reconcile:
      left: {{source: shop, query: "SELECT id AS event_id, amount FROM events"}}
      right: {{source: shop, query: "SELECT event_id FROM records"}}
      key: event_id
    compensate:
      missing:
{action}"#
        ),
    );
    (pg, open(&config).await)
}

/// Runs the check (which proposes a plan), approves the plan and returns its id and actions'
/// idempotency keys by event id.
async fn approved_plan(
    app: &App,
    approver: &str,
) -> (i64, std::collections::BTreeMap<i64, String>) {
    app.check(&[], &Actor::local("test"), false).await.unwrap();
    let who = actor("proposer", Role::Approver);
    let id = match plan::propose(
        app.store.as_ref(),
        &app.config,
        &app.invariants[0],
        &who,
        None,
        Utc::now(),
    )
    .await
    .unwrap()
    {
        Proposal::Created { plan, .. } | Proposal::Unchanged { plan } => plan,
        other => panic!("{other:?}"),
    };
    plan::approve(
        app.store.as_ref(),
        id,
        app.invariants.first(),
        &actor(approver, Role::Approver),
        None,
        Utc::now(),
    )
    .await
    .unwrap();
    let keys = app
        .store
        .plan_actions(id, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.key[0].as_i64().unwrap(), a.idempotency_key))
        .collect();
    (id, keys)
}

async fn apply_all(app: &App, targets: &Targets, id: i64) -> trueup::plan::apply::ApplyReport {
    let who = actor("alice", Role::Approver);
    apply_plan(
        &env(app, targets, &who, "events-published", "w"),
        id,
        &unlimited(),
    )
    .await
    .unwrap()
}

/// Every message on the stream: (subject, Nats-Msg-Id, payload).
async fn messages(stream: &TestStream) -> Vec<(String, String, serde_json::Value)> {
    stream
        .messages()
        .await
        .into_iter()
        .map(|m| {
            let id = m
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.to_string())
                .unwrap_or_default();
            let payload = serde_json::from_slice(&m.payload).unwrap();
            (m.subject.to_string(), id, payload)
        })
        .collect()
}

#[tokio::test]
async fn a_nats_target_publishes_each_action_once_and_a_repeat_counts_as_already_applied() {
    let stream = TestStream::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (_pg, app) = scenario(
        dir.path(),
        &format!("  bus: {{url: \"{NATS_URL}\", stream: {}}}\n", stream.name),
        &format!(
            "        nats:\n          target: bus\n          subject: {}.records.{{{{key.event_id}}}}\n          headers: {{Event-Type: record.missing}}\n          body: {{event_id: \"{{{{key.event_id}}}}\", amount: \"{{{{left.amount}}}}\"}}\n",
            stream.prefix
        ),
    )
    .await;
    let targets = Targets::open(&app.config).unwrap();
    let (id, keys) = approved_plan(&app, "bob").await;
    assert_eq!(keys.len(), 3);
    // A worker published event 4's message and died before recording it.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, keys[&4].as_str());
    stream
        .js
        .publish_with_headers(
            format!("{}.records.4", stream.prefix),
            headers,
            serde_json::to_vec(&serde_json::json!({"event_id": 4, "amount": 5.0}))
                .unwrap()
                .into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let report = apply_all(&app, &targets, id).await;
    assert_eq!(report.counts.get(&Outcome::Applied), Some(&2), "{report:?}");
    assert_eq!(
        report.counts.get(&Outcome::SkippedAlreadyApplied),
        Some(&1),
        "{report:?}"
    );
    // The server's duplicate ack: recorded as applied, so that trueup remembers it after the
    // stream's duplicate window has passed.
    let detail = |actions: &[trueup::store::ActionRecord], event: i64| {
        let a = actions.iter().find(|a| a.key[0] == event).unwrap();
        (
            a.status,
            a.outcome
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        )
    };
    let stored = app.store.plan_actions(id, None, 10).await.unwrap();
    let (status, outcome) = detail(&stored, 4);
    assert_eq!(status, ActionStatus::Applied, "{outcome}");
    assert!(
        outcome.contains(&format!(
            "stream `{}` already held this Nats-Msg-Id (an earlier attempt stored it at sequence 1); recorded as applied",
            stream.name
        )),
        "{outcome}"
    );
    let published = messages(&stream).await;
    let by_subject: Vec<(&str, &str)> = published
        .iter()
        .map(|(s, id, _)| (s.rsplit('.').next().unwrap(), id.as_str()))
        .collect();
    assert_eq!(
        by_subject,
        [
            ("4", keys[&4].as_str()),
            ("2", keys[&2].as_str()),
            ("6", keys[&6].as_str())
        ]
    );
    // The amount as the evidence holds a decimal: exact, as text where it has a fraction.
    assert_eq!(
        published[1].2,
        serde_json::json!({"event_id": 2, "amount": "2.5"})
    );
    let (status, outcome) = detail(&stored, 2);
    assert_eq!(status, ActionStatus::Applied);
    assert!(
        outcome.contains(&format!("\"stream\":\"{}\"", stream.name)),
        "{outcome}"
    );

    // The downstream still lacks them, so a second plan holds the same three actions: trueup's
    // own records know all three, the one the server deduplicated included.
    let (again, again_keys) = approved_plan(&app, "carol").await;
    assert_ne!(again, id);
    assert_eq!(again_keys, keys);
    let second = apply_all(&app, &targets, again).await;
    assert_eq!(
        second.counts.get(&Outcome::SkippedAlreadyApplied),
        Some(&3),
        "{second:?}"
    );
    let stored = app.store.plan_actions(again, None, 10).await.unwrap();
    for event in [2, 4, 6] {
        let (status, outcome) = detail(&stored, event);
        assert_eq!(status, ActionStatus::Skipped, "{event}: {outcome}");
        assert!(
            outcome.contains("applied by another plan (same idempotency key)"),
            "{event}: {outcome}"
        );
    }
    assert_eq!(messages(&stream).await.len(), 3);
    targets.close().await;
    app.close().await;
}

#[tokio::test]
async fn a_redis_target_appends_each_action_once_with_its_marker_in_the_same_script() {
    let redis = TestRedis::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (_pg, app) = scenario(
        dir.path(),
        &format!(
            "  cache: {{url: \"{REDIS_URL}\", marker_key: \"{}\"}}\n",
            redis.key("applied")
        ),
        &format!(
            "        redis:\n          target: cache\n          stream: {}\n          fields: {{event_id: \"{{{{key.event_id}}}}\", payload: {{amount: \"{{{{left.amount}}}}\"}}}}\n",
            redis.key("records")
        ),
    )
    .await;
    let targets = Targets::open(&app.config).unwrap();
    let (id, keys) = approved_plan(&app, "bob").await;
    // Event 6 was appended by an earlier attempt that died before recording it.
    let mut con = redis.con.clone();
    redis::cmd("HSET")
        .arg(redis.key("applied"))
        .arg(&keys[&6])
        .arg("1-1")
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    let dry = apply_plan(
        &env(
            &app,
            &targets,
            &actor("alice", Role::Approver),
            "events-published",
            "w",
        ),
        id,
        &ApplyOptions {
            dry_run: true,
            ..unlimited()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (
            dry.counts.get(&Outcome::WouldApply),
            dry.counts.get(&Outcome::WouldSkipAlreadyApplied)
        ),
        (Some(&2), Some(&1)),
        "the dry run reads the marker: {dry:?}"
    );
    let report = apply_all(&app, &targets, id).await;
    assert_eq!(report.counts.get(&Outcome::Applied), Some(&2), "{report:?}");
    assert_eq!(
        report.counts.get(&Outcome::SkippedAlreadyApplied),
        Some(&1),
        "{report:?}"
    );
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(redis.key("records"))
        .arg("-")
        .arg("+")
        .query_async(&mut con)
        .await
        .unwrap();
    let fields: Vec<&Vec<(String, String)>> = entries.iter().map(|(_, f)| f).collect();
    assert_eq!(
        fields,
        [
            &vec![
                ("event_id".to_owned(), "2".to_owned()),
                ("payload".to_owned(), r#"{"amount":"2.5"}"#.to_owned())
            ],
            &vec![
                ("event_id".to_owned(), "4".to_owned()),
                ("payload".to_owned(), r#"{"amount":5}"#.to_owned())
            ],
        ]
    );
    // The marker holds each key with the entry it added.
    let marker: std::collections::BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(redis.key("applied"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(marker[&keys[&2]], entries[0].0);
    assert_eq!(marker[&keys[&4]], entries[1].0);

    let (again, _) = approved_plan(&app, "carol").await;
    let second = apply_all(&app, &targets, again).await;
    assert_eq!(
        second.counts.get(&Outcome::SkippedAlreadyApplied),
        Some(&3),
        "{second:?}"
    );
    let len: i64 = redis::cmd("XLEN")
        .arg(redis.key("records"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(len, 2);
    targets.close().await;
    app.close().await;
}

/// The failure detail of every action of plan `id`'s apply.
fn failures(report: &trueup::plan::apply::ApplyReport) -> Vec<String> {
    report
        .samples
        .get(&Outcome::Failed)
        .map(|s| s.iter().filter_map(|s| s.detail.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_stream_that_cannot_take_the_actions_fails_each_saying_why() {
    let stream = TestStream::new().await;
    let other = TestStream::new().await;
    let redis = TestRedis::new().await;
    let mut con = redis.con.clone();
    redis::cmd("SET")
        .arg(redis.key("not-a-stream"))
        .arg("x")
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    let nats_action = |subject: &str| {
        format!(
            "        nats: {{target: bus, subject: \"{subject}.{{{{key.event_id}}}}\", body: {{id: \"{{{{key.event_id}}}}\"}}}}\n"
        )
    };
    let cases = [
        (
            format!(
                "  bus: {{url: \"{NATS_URL}\", stream: NO_SUCH_STREAM_{}}}\n",
                stream.name
            ),
            nats_action(&stream.prefix),
            format!(
                "stream `NO_SUCH_STREAM_{}` does not exist; create it",
                stream.name
            ),
        ),
        (
            format!("  bus: {{url: \"{NATS_URL}\", stream: {}}}\n", stream.name),
            nats_action("elsewhere"),
            format!(
                "no stream takes this subject; add it to stream `{}`'s subjects",
                stream.name
            ),
        ),
        (
            format!("  bus: {{url: \"{NATS_URL}\", stream: {}}}\n", stream.name),
            nats_action(&other.prefix),
            format!(
                "the subject belongs to another stream, not `{}`",
                stream.name
            ),
        ),
        (
            format!(
                "  bus: {{url: \"nats://127.0.0.1:1\", stream: {}, timeout: 2s}}\n",
                stream.name
            ),
            nats_action(&stream.prefix),
            "target `bus`: cannot connect to nats://127.0.0.1:1".to_owned(),
        ),
        (
            format!(
                "  cache: {{url: \"{REDIS_URL}\", marker_key: \"{}\"}}\n",
                redis.key("m")
            ),
            format!(
                "        redis: {{target: cache, stream: \"{}\", fields: {{id: \"{{{{key.event_id}}}}\"}}}}\n",
                redis.key("not-a-stream")
            ),
            "WRONGTYPE".to_owned(),
        ),
    ];
    for (targets_yaml, action, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (_pg, app) = scenario(dir.path(), &targets_yaml, &action).await;
        let targets = Targets::open(&app.config).unwrap();
        let (id, _) = approved_plan(&app, "bob").await;
        let report = apply_all(&app, &targets, id).await;
        assert_eq!(
            report.counts.get(&Outcome::Failed),
            Some(&3),
            "{want}: {report:?}"
        );
        assert_eq!(
            report.counts.get(&Outcome::Applied),
            None,
            "{want}: {report:?}"
        );
        let details = failures(&report);
        assert!(
            !details.is_empty() && details.iter().all(|d| d.contains(&want)),
            "{want}: {details:#?}"
        );
        targets.close().await;
        app.close().await;
    }
    assert!(messages(&stream).await.is_empty());
    assert!(
        messages(&other).await.is_empty(),
        "nothing stored in another stream"
    );
    assert!(
        !redis::cmd("EXISTS")
            .arg(redis.key("m"))
            .query_async::<bool>(&mut con)
            .await
            .unwrap(),
        "a failed XADD records no marker"
    );
}

/// The console page of plan `id`, signed in as a viewer.
async fn plan_page(config: Config, id: i64) -> String {
    let server = crate::helpers::TestServer::start(config).await;
    let base = server.base.clone();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = client
        .post(format!("{base}/ui/login"))
        .header("origin", &base)
        .form(&[("token", crate::serve::VIEWER), ("next", "/ui/")])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status().as_u16(), 303);
    let session = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    client
        .get(format!("{base}/ui/plans/{id}"))
        .header("cookie", session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_each_stream_action_as_it_will_be_sent() {
    let stream = TestStream::new().await;
    let redis = TestRedis::new().await;
    let serve = crate::serve::tokens_yaml("");
    for (targets, action, expected) in [
        (
            format!(
                "  bus: {{url: \"{NATS_URL}\", stream: {}}}\n{serve}",
                stream.name
            ),
            format!(
                "        nats:\n          target: bus\n          subject: {}.records.{{{{key.event_id}}}}\n          headers: {{Event-Type: record.missing}}\n          body: {{event_id: \"{{{{key.event_id}}}}\"}}\n",
                stream.prefix
            ),
            vec![
                format!("publish {}.records.2   (target bus)", stream.prefix),
                "Nats-Msg-Id: ".to_owned(),
                "Event-Type: record.missing".to_owned(),
                "\"event_id\": 2".to_owned(),
            ],
        ),
        (
            format!(
                "  cache: {{url: \"{REDIS_URL}\", marker_key: \"{}\"}}\n{serve}",
                redis.key("applied")
            ),
            format!(
                "        redis: {{target: cache, stream: \"{}\", fields: {{event_id: \"{{{{key.event_id}}}}\"}}}}\n",
                redis.key("records")
            ),
            vec![
                format!("XADD {}   (target cache)", redis.key("records")),
                "marker: ".to_owned(),
                "event_id = 2".to_owned(),
            ],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (_pg, app) = scenario(dir.path(), &targets, &action).await;
        let (id, keys) = approved_plan(&app, "bob").await;
        let config = app.config.clone();
        app.close().await;
        let page = plan_page(config, id).await;
        for text in expected
            .iter()
            .cloned()
            .chain([keys[&2].clone(), keys[&6].clone()])
        {
            assert!(page.contains(&text), "{text}: {page}");
        }
    }
}
