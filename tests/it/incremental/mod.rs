//! Incremental reconciles: after a full pass, a run reads only the keys whose rows changed,
//! resolves only what it covered, and leaves the rest of the ledger as it was.

use chrono::{TimeZone, Utc};
use trueup::config::SecretUrl;
use trueup::domain::InvariantName;
use trueup::store::{StatusFilter, Store, ViolationFilter};

use crate::helpers::{combined_output, sqlite_file, sqlite_url, trueup_cli};

mod ledger;
mod random;

async fn active(store: &dyn Store) -> usize {
    store
        .violations(&ViolationFilter {
            status: StatusFilter::Active,
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .len()
}

/// Two SQLite files (instants kept as text, in two forms), the CLI, a failure at each step of
/// an incremental run, and `--full`.
#[tokio::test]
async fn an_incremental_check_reads_only_changed_keys_and_leaves_the_violations_it_did_not_read() {
    let tmp = tempfile::tempdir().unwrap();
    // 5,000 events a minute apart; the ledger lacks every 1,000th.
    let (config, store_url, app, ledger) = crate::helpers::app_and_ledger_project(
        tmp.path(),
        "CREATE TABLE events (id INTEGER PRIMARY KEY, amount INTEGER, changed_at DATETIME NOT NULL);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
         INSERT INTO events SELECT i, i * 10, datetime('2026-01-01', '+' || (i * 60) || ' seconds') FROM n;",
        "CREATE TABLE records (event_id INTEGER PRIMARY KEY, amount INTEGER, recorded_at DATETIME NOT NULL);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
         INSERT INTO records SELECT i, i * 10, datetime('2026-01-01', '+' || (i * 60) || ' seconds')
           FROM n WHERE i % 1000 <> 0;",
    )
    .await;
    std::fs::write(
        tmp.path().join("invariants/events.yaml"),
        r#"invariants:
  - name: events-recorded
    reconcile:
      left: {source: app, query: "SELECT id, amount, changed_at FROM events"}
      right: {source: ledger, query: "SELECT event_id AS id, amount, recorded_at FROM records"}
      key: id
      incremental:
        column: {left: changed_at, right: recorded_at}
        lookback: 30s
"#,
    )
    .unwrap();
    let check = |extra: &[&str], failpoints: Option<&str>| {
        let mut cmd = trueup_cli(&config, "tester");
        cmd.arg("check").args(extra);
        if let Some(f) = failpoints {
            cmd.env("FAILPOINTS", f);
        }
        let out = cmd.output().unwrap();
        (out.status.code(), combined_output(&out))
    };

    // The first run has no watermark: a full pass.
    let (code, text) = check(&[], None);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("read 5000 left / 4995 right rows"), "{text}");
    assert!(!text.contains("incremental"), "{text}");
    assert!(text.contains("5 violations open: 5 new"), "{text}");
    let store = trueup::store::open(&SecretUrl::new(store_url.clone()))
        .await
        .unwrap();
    let name = InvariantName::parse("events-recorded").unwrap();
    let mark = store.watermark(&name).await.unwrap().expect("a watermark");
    let minute =
        |m: i64| Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::TimeDelta::minutes(m);
    assert_eq!(
        (mark.marks.left, mark.marks.right),
        (Some(minute(5000)), Some(minute(4999)))
    );

    // Changes, written the way SQLite's own clock writes them (`T`, fraction, `Z`): a
    // repair, a new mismatch, a new event; and a ledger row deleted, which changes nothing
    // an incremental run can see.
    let now = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";
    sqlite_file(
        &ledger,
        &format!(
            "INSERT INTO records VALUES (1000, 10000, {now});
             UPDATE records SET amount = 421, recorded_at = {now} WHERE event_id = 42;
             DELETE FROM records WHERE event_id = 7;"
        ),
    )
    .await;
    sqlite_file(
        &app,
        &format!("INSERT INTO events VALUES (6000, 60000, {now});"),
    )
    .await;
    let (code, text) = check(&[], None);
    assert_eq!(code, Some(1), "{text}");
    // Covered: 42 and 1000 (the ledger's changes) and 4999 (its last mark, less the lookback,
    // is 4999's minute); 6000 and 5000 (likewise the events').
    assert!(text.contains("read 5 left / 3 right rows"), "{text}");
    assert!(
        text.contains("incremental: only the 5 keys of rows changed (left since 2026-01-04 11:19:30 UTC, right since 2026-01-04 11:18:30 UTC)"),
        "{text}"
    );
    assert!(
        text.contains("6 violations open: 2 new, 1 still open, 0 reopened, 3 left as they were (on keys this run did not read, past its violation budget, or seen by a run begun after it); 1 resolved"),
        "{text}"
    );
    assert_eq!(active(store.as_ref()).await, 6);
    let mark = store.watermark(&name).await.unwrap().unwrap();
    assert_eq!(mark.marks.left.map(|t| t > minute(6000)), Some(true));

    // A run that fails anywhere — reading, merging, committing — changes neither the ledger
    // nor the watermark.
    sqlite_file(
        &ledger,
        &format!("UPDATE records SET amount = 420, recorded_at = {now} WHERE event_id = 42;"),
    )
    .await;
    for point in ["source.read", "engine.merge", "store.commit"] {
        for action in ["return", "panic"] {
            let (code, text) = check(&[], Some(&format!("{point}={action}")));
            assert_eq!(code, Some(2), "{point}={action}: {text}");
            assert_eq!(active(store.as_ref()).await, 6, "{point}={action}: {text}");
            assert_eq!(
                store.watermark(&name).await.unwrap().unwrap(),
                mark,
                "{point}={action}"
            );
        }
    }
    let (code, text) = check(&[], None);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("1 resolved"), "{text}");

    // A full pass sees the deleted ledger row.
    let (code, text) = check(&["--full"], None);
    assert_eq!(code, Some(1), "{text}");
    assert!(!text.contains("incremental"), "{text}");
    assert!(text.contains("read 5001 left / 4995 right rows"), "{text}");
    assert!(
        text.contains("6 violations open: 1 new, 5 still open, 0 reopened; 0 resolved"),
        "{text}"
    );
    store.close().await;
}

/// With `grace`, a row not yet due at the last run is read once due, though it did not change
/// since: key 1 was written two days ago and is dated two seconds ahead (a payment dated
/// ahead of when it was written), far before the watermark key 2 sets, less the lookback.
/// Key 3, dated a day ahead, is not due yet and not read. A PostgreSQL side whose time column
/// is a date is read as before (by its changes only).
#[tokio::test]
async fn a_row_that_became_due_since_the_last_run_is_read_though_it_did_not_change() {
    use trueup::domain::{ColumnName, Coverage, HumanDuration, Incremental};
    let dir = tempfile::tempdir().unwrap();
    let (app, ledger) = (dir.path().join("app.db"), dir.path().join("ledger.db"));
    sqlite_file(
        &app,
        "CREATE TABLE payments (id INTEGER PRIMARY KEY, amount INTEGER, changed_at DATETIME, due_at DATETIME);
         INSERT INTO payments VALUES
           (1, 10, datetime('now', '-2 days'), datetime('now', '+2 seconds')),
           (2, 20, datetime('now', '-1 minute'), datetime('now', '-1 day')),
           (3, 30, datetime('now', '-2 days'), datetime('now', '+1 day'));",
    )
    .await;
    sqlite_file(
        &ledger,
        "CREATE TABLE records (id INTEGER PRIMARY KEY, amount INTEGER, recorded_at DATETIME);
         INSERT INTO records VALUES (2, 20, datetime('now', '-1 minute'));",
    )
    .await;
    let srcs =
        crate::helpers::sources(&[("app", &sqlite_url(&app)), ("ledger", &sqlite_url(&ledger))])
            .await;
    let mut inv = crate::helpers::reconcile_invariant(
        "due-later",
        ("app", "SELECT id, amount, changed_at, due_at FROM payments"),
        ("ledger", "SELECT id, amount, recorded_at FROM records"),
        &["id"],
    );
    let column = |c: &str| ColumnName::parse(c).unwrap();
    let duration = |d: &str| HumanDuration::parse(d).unwrap();
    inv.time_column = Some(column("due_at"));
    inv.grace = Some(duration("1s"));
    crate::helpers::reconcile_spec(&mut inv).incremental = Some(Incremental {
        left: Some(column("changed_at")),
        right: Some(column("recorded_at")),
        lookback: duration("1s"),
        full_every: duration("1d"),
    });
    let store = trueup::store::open(&SecretUrl::new(format!(
        "sqlite://{}",
        dir.path().join("store.db").display()
    )))
    .await
    .unwrap();
    let first = trueup::runner::run_invariant(&inv, &srcs, store.as_ref())
        .await
        .unwrap();
    assert_eq!(first.stats.coverage, Coverage::Full);
    assert_eq!((first.stats.observed, first.stats.not_yet_due), (0, 2));

    // The next run begins 3.5 s later by its own clock, when key 1 is due (nothing to wait
    // for: the run takes its time from when it begins).
    let at = chrono::Utc::now() + chrono::TimeDelta::milliseconds(3500);
    let begun = trueup::runner::Begun {
        id: store.begin_run(&inv.name, at).await.unwrap(),
        at,
    };
    let limits = trueup::runner::RunLimits {
        begun: Some(begun),
        ..Default::default()
    };
    let second = trueup::runner::run_invariant_limited(&inv, &srcs, store.as_ref(), &limits)
        .await
        .unwrap();
    assert!(
        matches!(second.stats.coverage, Coverage::Changed { keys: 2, .. }),
        "{:?}",
        second.stats.coverage
    );
    assert_eq!((second.stats.observed, second.stats.not_yet_due), (1, 0));
    let open = store
        .violations(&ViolationFilter {
            status: StatusFilter::Active,
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let got: Vec<(&str, Option<i64>)> = open
        .iter()
        .map(|v| (v.kind.as_str(), v.key[0].as_i64()))
        .collect();
    assert_eq!(got, [("missing", Some(1))]);
    srcs.close().await;

    let pg = crate::helpers::TestPg::new().await;
    pg.exec(
        "CREATE TABLE l (id bigint PRIMARY KEY, amount int, changed_at timestamptz, day date);
         CREATE TABLE r (id bigint PRIMARY KEY, amount int, changed_at timestamptz, day date);
         INSERT INTO l VALUES (1, 10, now() - interval '1 minute', current_date - 1);
         INSERT INTO r VALUES (1, 10, now() - interval '1 minute', current_date - 1);",
    )
    .await;
    let srcs = crate::helpers::sources(&[("pg", &pg.reader_url)]).await;
    let mut dated = inv.clone();
    dated.name = trueup::domain::InvariantName::parse("dated").unwrap();
    dated.time_column = Some(column("day"));
    let spec = crate::helpers::reconcile_spec(&mut dated);
    spec.left.source = trueup::domain::SourceName::parse("pg").unwrap();
    spec.right.source = trueup::domain::SourceName::parse("pg").unwrap();
    spec.left.query = trueup::domain::Read::Sql("SELECT id, amount, changed_at, day FROM l".into());
    spec.right.query =
        trueup::domain::Read::Sql("SELECT id, amount, changed_at, day FROM r".into());
    spec.incremental.as_mut().unwrap().right = Some(column("changed_at"));
    for pass in ["full", "incremental"] {
        let outcome = trueup::runner::run_invariant(&dated, &srcs, store.as_ref())
            .await
            .unwrap_or_else(|e| panic!("{pass}: {e}"));
        assert_eq!(outcome.stats.observed, 0, "{pass}");
        assert_eq!(
            matches!(outcome.stats.coverage, Coverage::Changed { .. }),
            pass == "incremental"
        );
    }
    srcs.close().await;
    store.close().await;
}

/// A compound key of text and integer, across PostgreSQL and MariaDB: the changed keys are
/// read back as typed parameters, text compared byte-wise on both sides.
#[tokio::test]
async fn an_incremental_run_reads_back_compound_text_keys_on_both_engines() {
    use crate::helpers::{TestMysql, TestPg, reconcile_invariant, reconcile_spec, sources};
    use trueup::domain::{ColumnName, Coverage, HumanDuration, Incremental};
    use trueup::runner::run_invariant;
    let (pg, my) = (TestPg::new().await, TestMysql::new().await);
    pg.exec(
        "CREATE TABLE orders (tenant text, id int, total int, changed_at timestamptz NOT NULL);
         INSERT INTO orders SELECT t, i, i * 3, timestamptz '2020-01-01 00:00:00+00' + i * interval '1 minute'
           FROM unnest(ARRAY['acme', 'Acme', 'é-corp', 'o''brien']) AS t, generate_series(1, 500) AS i;",
    )
    .await;
    my.exec(
        "CREATE TABLE orders (tenant VARCHAR(20), id INT, total INT, changed_at DATETIME(6) NOT NULL, KEY (tenant, id));
         CREATE TABLE digits (d INT); INSERT INTO digits VALUES (0),(1),(2),(3),(4),(5),(6),(7),(8),(9);
         INSERT INTO orders SELECT t.n, i.i, i.i * 3, TIMESTAMP '2020-01-01 00:00:00' + INTERVAL i.i MINUTE
           FROM (SELECT 'acme' AS n UNION ALL SELECT 'Acme' UNION ALL SELECT 'é-corp' UNION ALL SELECT 'o''brien') t,
                (SELECT a.d + 10 * b.d + 100 * c.d + 1 AS i FROM digits a, digits b, digits c) i
           WHERE i.i <= 500;",
    )
    .await;
    let srcs = sources(&[("pg", &pg.reader_url), ("my", &my.reader_url)]).await;
    let mut inv = reconcile_invariant(
        "orders-booked",
        ("pg", "SELECT tenant, id, total, changed_at FROM orders"),
        ("my", "SELECT tenant, id, total FROM orders"),
        &["tenant", "id"],
    );
    reconcile_spec(&mut inv).incremental = Some(Incremental {
        left: Some(ColumnName::parse("changed_at").unwrap()),
        right: None,
        lookback: HumanDuration::parse("1s").unwrap(),
        full_every: HumanDuration::parse("1d").unwrap(),
    });
    let dir = tempfile::tempdir().unwrap();
    let store = trueup::store::open(&SecretUrl::new(sqlite_url(&dir.path().join("s.db"))))
        .await
        .unwrap();
    let first = run_invariant(&inv, &srcs, store.as_ref()).await.unwrap();
    assert_eq!((first.stats.observed, first.error), (0, None));

    // Left changes on keys that differ only in case, accent or a quote; the right moved
    // 'Acme' 7's total earlier (a right change without a change column: unseen) and keeps
    // the others.
    pg.exec(
        "UPDATE orders SET total = total + 1, changed_at = now()
          WHERE (tenant, id) IN (('acme', 7), ('é-corp', 499), ('o''brien', 1));",
    )
    .await;
    my.exec("UPDATE orders SET total = 0 WHERE tenant = 'Acme' AND id = 7;")
        .await;
    let second = run_invariant(&inv, &srcs, store.as_ref()).await.unwrap();
    assert_eq!(second.error, None);
    let Coverage::Changed { keys, .. } = second.stats.coverage else {
        panic!("{:?}", second.stats.coverage)
    };
    // The three changed keys, and the left's last rows at its old mark (one per tenant).
    assert_eq!(keys, 3 + 4, "{:?}", second.stats);
    let found: std::collections::BTreeSet<String> = store
        .violations(&ViolationFilter {
            status: StatusFilter::Active,
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|v| format!("{} {}", v.kind, v.key))
        .collect();
    assert_eq!(
        found,
        [
            r#"mismatch ["acme",7]"#,
            r#"mismatch ["o'brien",1]"#,
            r#"mismatch ["é-corp",499]"#,
        ]
        .map(str::to_owned)
        .into(),
    );
    srcs.close().await;
    store.close().await;
}

/// A change column says when a row was written, not what it holds: one both sides return
/// under the same name is not compared unless `compare` lists it.
#[tokio::test]
async fn change_columns_are_not_compared_unless_listed() {
    use crate::helpers::{reconcile_invariant, reconcile_spec, sources};
    use trueup::domain::{ColumnName, HumanDuration, Incremental};
    use trueup::engine::{self, Collect};
    let tmp = tempfile::tempdir().unwrap();
    let (l, r) = (tmp.path().join("l.db"), tmp.path().join("r.db"));
    sqlite_file(
        &l,
        "CREATE TABLE t (id INTEGER, amount INTEGER, updated_at DATETIME);
         INSERT INTO t VALUES (1, 10, '2026-01-01 00:00:00'), (2, 20, '2026-01-01 00:00:00');",
    )
    .await;
    sqlite_file(
        &r,
        "CREATE TABLE t (id INTEGER, amount INTEGER, updated_at DATETIME);
         INSERT INTO t VALUES (1, 10, '2026-01-02 09:30:00'), (2, 20, '2026-01-02 09:31:00');",
    )
    .await;
    let srcs = sources(&[("l", &sqlite_url(&l)), ("r", &sqlite_url(&r))]).await;
    let mut inv = reconcile_invariant(
        "changes",
        ("l", "SELECT * FROM t"),
        ("r", "SELECT * FROM t"),
        &["id"],
    );
    reconcile_spec(&mut inv).incremental = Some(Incremental {
        left: Some(ColumnName::parse("updated_at").unwrap()),
        right: Some(ColumnName::parse("updated_at").unwrap()),
        lookback: HumanDuration::parse("1m").unwrap(),
        full_every: HumanDuration::parse("1d").unwrap(),
    });
    let mut found = Collect::default();
    engine::evaluate(&inv, &srcs, Utc::now(), &mut found)
        .await
        .unwrap();
    assert!(found.0.is_empty(), "{:?}", found.0);
    reconcile_spec(&mut inv).compare = Some(vec![
        ColumnName::parse("amount").unwrap(),
        ColumnName::parse("updated_at").unwrap(),
    ]);
    let mut found = Collect::default();
    engine::evaluate(&inv, &srcs, Utc::now(), &mut found)
        .await
        .unwrap();
    assert_eq!(found.0.len(), 2, "listed, it is compared: {:?}", found.0);
    srcs.close().await;
}
