//! A relay from a PostgreSQL outbox to JetStream lost six hours of events; trueup sees the
//! gap on the stream, replays it into the stream's subjects, is killed with SIGKILL midway and
//! resumed: every event ends up on the stream exactly once, in order within each account.

use super::*;
use crate::helpers::{NATS_URL, TestStream};

const EVENTS: i64 = 20_000;
const ACCOUNTS: i64 = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_replayed_into_jetstream_across_a_sigkill_lands_each_event_once_in_order_per_account()
 {
    let outbox = TestPg::new().await;
    let stream = TestStream::new().await;
    // 20,000 events over 48 hours, each account numbering its own; the relay lost the six
    // hours from 2026-11-20T10:00 to 16:00.
    outbox
        .exec(&format!(
            "CREATE TABLE outbox (id BIGINT PRIMARY KEY, account TEXT NOT NULL, seq BIGINT NOT NULL,
                                  created_at TIMESTAMPTZ NOT NULL, amount BIGINT NOT NULL);
             INSERT INTO outbox
               SELECT g, 'acct-' || (g % {ACCOUNTS}), g / {ACCOUNTS},
                      TIMESTAMPTZ '2026-11-19T16:00:00Z' + (g * 8640) * INTERVAL '1 millisecond', g % 997
               FROM generate_series(1, {EVENTS}) g;"
        ))
        .await;
    let lost_from: DateTime<Utc> = "2026-11-20T10:00:00Z".parse().unwrap();
    let lost_to: DateTime<Utc> = "2026-11-20T16:00:00Z".parse().unwrap();
    let at = |id: i64| {
        "2026-11-19T16:00:00Z".parse::<DateTime<Utc>>().unwrap()
            + TimeDelta::milliseconds(id * 8640)
    };
    let lost: Vec<i64> = (1..=EVENTS)
        .filter(|id| (lost_from..lost_to).contains(&at(*id)))
        .collect();
    assert!((2400..2600).contains(&lost.len()), "{} lost", lost.len());
    let body = |id: i64| serde_json::json!({"id": id, "account": format!("acct-{}", id % ACCOUNTS), "seq": id / ACCOUNTS});
    let relayed: Vec<crate::helpers::TestMessage> = (1..=EVENTS)
        .filter(|id| !lost.contains(id))
        .map(|id| {
            (
                format!("events.{id}"),
                vec![("Nats-Msg-Id".to_owned(), format!("evt-{id}"))],
                body(id),
            )
        })
        .collect();
    stream.publish_all(&relayed).await;

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("invariants")).unwrap();
    let prefix = &stream.prefix;
    std::fs::write(
        dir.path().join("invariants/outbox.yaml"),
        format!(
            r#"invariants:
  - name: outbox-published
    severity: high
    time_column: created_at
    reconcile:
      left: {{source: outbox, query: "SELECT id AS event_id, account, seq, amount, created_at FROM outbox"}}
      right:
        source: bus
        stream:
          name: {name}
          subject: "{prefix}.events.>"
          columns:
            event_id: {{path: id, type: int}}
          lookup: {{subject: "{prefix}.events.{{{{key.event_id}}}}"}}
      key: event_id
    replay:
      nats:
        target: bus
        subject: "{prefix}.events.{{{{key.event_id}}}}"
        headers: {{Event-Type: outbox.replayed}}
        body: {{id: "{{{{key.event_id}}}}", account: "{{{{left.account}}}}", seq: "{{{{left.seq}}}}"}}
      idempotency_key: evt-{{{{key.event_id}}}}
      partition: account
      max_window: 6h
"#,
            name = stream.name
        ),
    )
    .unwrap();
    let config = dir.path().join("trueup.yaml");
    std::fs::write(
        &config,
        format!(
            "store: {}\nsources:\n  outbox: {{url: \"{}\"}}\n  bus: {{url: \"{NATS_URL}\"}}\ntargets:\n  bus: {{url: \"{NATS_URL}\", stream: {}}}\n",
            sqlite_url(&dir.path().join("trueup.db")),
            outbox.reader_url,
            stream.name
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut c = trueup(&config);
        c.args(args);
        c
    };

    let checked = output(run(&["check"])).await;
    assert_eq!(checked.status.code(), Some(1), "{}", text(&checked));
    assert!(
        text(&checked).contains(&format!("missing {}", lost.len())),
        "{}",
        text(&checked)
    );
    let window = [
        "--from",
        "2026-11-20T10:00:00Z",
        "--to",
        "2026-11-20T16:00:00Z",
    ];
    let dry = output({
        let mut c = run(&["replay", "-i", "outbox-published", "-f", "json"]);
        c.args(window);
        c
    })
    .await;
    assert!(dry.status.success(), "{}", text(&dry));
    let dry: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(dry["would_replay"], lost.len(), "{dry}");
    assert_eq!(dry["outside_window"], 0, "{dry}");
    let proposed = output({
        let mut c = run(&["replay", "-i", "outbox-published", "--execute"]);
        c.args(window);
        c
    })
    .await;
    assert!(
        text(&proposed).contains(&format!("proposed replay plan 1: {} event(s)", lost.len())),
        "{}",
        text(&proposed)
    );
    let approved = output(run(&["plan", "approve", "1"])).await;
    assert!(approved.status.success(), "{}", text(&approved));
    // The plan shows what each action publishes, and where.
    let shown = output(run(&["plan", "show", "1", "--limit", "1"])).await;
    assert!(
        text(&shown).contains(&format!("nats on bus: publish to {prefix}.events.")),
        "{}",
        text(&shown)
    );

    // Killed with SIGKILL a third of the way, while publishes are in flight.
    let store = trueup::store::open(&trueup::config::SecretUrl::new(sqlite_url(
        &dir.path().join("trueup.db"),
    )))
    .await
    .unwrap();
    let mut child = run(&[
        "apply",
        "1",
        "--rate",
        "400/s",
        "--concurrency",
        "6",
        "--lease",
        "2s",
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    kill_at(&mut child, store.as_ref(), 1, lost.len() as u64 / 3).await;

    let resumed = output(run(&[
        "apply",
        "1",
        "--rate",
        "unlimited",
        "--concurrency",
        "6",
    ]))
    .await;
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert!(
        text(&resumed).contains("plan 1 is applied"),
        "{}",
        text(&resumed)
    );
    let plan = store.plan(1).await.unwrap().unwrap();
    assert_eq!(
        plan.verification.as_ref().unwrap()["remaining_in_window"],
        0,
        "{:?}",
        plan.verification
    );
    let progress = store.action_progress(1).await.unwrap();
    assert_eq!(
        progress.get(&trueup::domain::ActionStatus::Parked),
        None,
        "{progress:?}"
    );

    // Every event on the stream once; the replayed ones in order within each account.
    let stored = stream.messages().await;
    let mut seen = std::collections::BTreeMap::<i64, u32>::new();
    let mut last_seq_of = std::collections::BTreeMap::<String, i64>::new();
    let mut out_of_order = Vec::new();
    for m in &stored {
        let payload: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let id = payload["id"].as_i64().unwrap();
        *seen.entry(id).or_default() += 1;
        assert_eq!(m.subject.as_str(), format!("{prefix}.events.{id}"));
        if m.headers.get("Event-Type").is_some() {
            assert_eq!(payload, body(id));
            let account = payload["account"].as_str().unwrap().to_owned();
            let seq = payload["seq"].as_i64().unwrap();
            if let Some(before) = last_seq_of.insert(account.clone(), seq)
                && before >= seq
            {
                out_of_order.push((account, before, seq));
            }
        }
    }
    assert!(
        out_of_order.is_empty(),
        "{:?}",
        &out_of_order[..out_of_order.len().min(5)]
    );
    assert_eq!(seen.len() as i64, EVENTS);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "{:?}", &twice[..twice.len().min(5)]);
    assert_eq!(stored.len() as i64, EVENTS, "no message stored twice");
    let replayed: usize = last_seq_of.len();
    assert_eq!(replayed as i64, ACCOUNTS);

    // The next run sees the stream whole: every missing event resolved.
    let again = output(run(&["check"])).await;
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    let open =
        crate::helpers::keys_by_kind(store.as_ref(), "outbox-published", StatusFilter::Active)
            .await;
    assert!(open.is_empty(), "{open:?}");
    store.close().await;
}
