//! Checksum mode (PostgreSQL ↔ PostgreSQL, and what `auto` does across engines): every mode finds exactly what a plain stream
//! finds, reading only the segments that differ.

use std::collections::BTreeSet;

use chrono::Utc;
use trueup::config::SecretUrl;
use trueup::domain::{
    CompareMethod, Invariant, InvariantSpec, ReconcileMode, RunStats, SourceName, Value,
    ViolationKind,
};
use trueup::engine::{self, Collect};
use trueup::runner::run_invariant;
use trueup::source::Sources;

use crate::helpers::{MODES, TestPg, evaluate_in, reconcile_invariant, reconcile_spec, sources};

mod random;

fn invariant(left: &str, right: &str, mode: ReconcileMode) -> Invariant {
    let mut inv = reconcile_invariant("checksummed", ("pg", left), ("pg", right), &["id"]);
    reconcile_spec(&mut inv).mode = mode;
    inv
}

type Found = BTreeSet<(ViolationKind, i64)>;

async fn evaluate(inv: &Invariant, srcs: &Sources) -> (Found, RunStats) {
    let (violations, stats) = evaluate_in(inv.clone(), mode_of(inv), srcs).await;
    let found = violations
        .iter()
        .map(|v| match v.key.as_slice() {
            [Value::Int(k)] => (v.kind, *k),
            other => panic!("key {other:?}"),
        })
        .collect();
    (found, stats)
}

fn mode_of(inv: &Invariant) -> ReconcileMode {
    match &inv.spec {
        InvariantSpec::Reconcile(r) => r.mode,
        _ => unreachable!(),
    }
}

const ROWS: i64 = 100_000;

/// Left: one table; right: the same rows in other column types that compare equal
/// (`numeric` without scale, `text` for `char(3)`, `timestamp` for `timestamptz`, `smallint`
/// for `boolean`), then the planted differences.
async fn planted_tables(pg: &TestPg) {
    pg.exec(&format!(
        "CREATE TABLE l (id bigint, amount numeric(12,2), currency text, code char(3),
                         flag boolean, big bigint, at timestamptz, day date, note varchar(20));
         INSERT INTO l SELECT i, (i % 1000) + 0.5, CASE WHEN i % 3 = 0 THEN 'EUR' ELSE 'USD' END,
                'C' || (i % 10), i % 2 = 0, i::bigint * 1000003, timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second',
                date '2026-01-01' + (i % 365), CASE WHEN i % 2 = 0 THEN 'n' || i END
           FROM generate_series(1, {ROWS}) AS i;
         CREATE INDEX ON l (id);
         CREATE TABLE r (id bigint, amount numeric, currency text, code text, flag smallint,
                         big bigint, at timestamp, day date, note varchar(20));
         INSERT INTO r SELECT id, amount, currency, rtrim(code), flag::int, big, at AT TIME ZONE 'UTC',
                day, note FROM l;
         CREATE INDEX ON r (id);
         -- missing: three single keys and an outage of 50
         DELETE FROM r WHERE id IN (11, 55555, 99998) OR id BETWEEN 70001 AND 70050;
         -- extra: past both ends of the left's keys
         INSERT INTO r SELECT id + {ROWS}, amount, currency, code, flag, big, at, day, note FROM r WHERE id <= 3;
         INSERT INTO r SELECT -7, amount, currency, code, flag, big, at, day, note FROM r WHERE id = 5;
         -- duplicate: the same row twice on both sides, and twice on the right only
         INSERT INTO l SELECT * FROM l WHERE id = 31337;
         INSERT INTO r SELECT * FROM r WHERE id IN (31337, 4242);
         -- mismatch: a sign, a case, NULL against a value, NULLs in two other columns, a
         -- bigint whose hash folds to 0's, a microsecond, a day, a flag
         UPDATE l SET amount = 5 WHERE id = 7;
         UPDATE r SET amount = -5 WHERE id = 7;
         UPDATE r SET currency = 'usd' WHERE id = 1001;
         UPDATE r SET note = 'x' WHERE id = 20001;
         UPDATE l SET note = NULL, code = 'ABC' WHERE id = 20002;
         UPDATE r SET note = 'ABC', code = NULL WHERE id = 20002;
         UPDATE l SET big = 4294967297 WHERE id = 30000;
         UPDATE r SET big = 0 WHERE id = 30000;
         UPDATE r SET at = at + interval '1 microsecond' WHERE id = 40000;
         UPDATE r SET day = day + 1 WHERE id = 50000;
         UPDATE r SET flag = 1 - flag WHERE id = 60000;
         -- a NUMERIC NULL against 0 (hashed as 0 under a seed of its own)
         UPDATE l SET amount = 0 WHERE id = 60001;
         UPDATE r SET amount = NULL WHERE id = 60001;
         -- the same values written differently: not differences
         UPDATE l SET amount = 10.50 WHERE id = 80000;
         UPDATE r SET amount = 10.5 WHERE id = 80000;
         -- a NULL key on each side: counted, never compared
         INSERT INTO l (id, amount) VALUES (NULL, 1);
         INSERT INTO r (id, amount) VALUES (NULL, 2);
         ANALYZE l; ANALYZE r;"
    ))
    .await;
}

fn expected() -> Found {
    let mut want = Found::new();
    for k in [11, 55555, 99998].into_iter().chain(70001..=70050) {
        want.insert((ViolationKind::Missing, k));
    }
    for k in [ROWS + 1, ROWS + 2, ROWS + 3, -7] {
        want.insert((ViolationKind::Extra, k));
    }
    for k in [31337, 4242] {
        want.insert((ViolationKind::Duplicate, k));
    }
    for k in [7, 1001, 20001, 20002, 30000, 40000, 50000, 60000, 60001] {
        want.insert((ViolationKind::Mismatch, k));
    }
    want
}

#[tokio::test]
async fn every_mode_finds_exactly_the_planted_differences_and_checksums_read_only_the_segments_that_hold_them()
 {
    let pg = TestPg::new().await;
    planted_tables(&pg).await;
    let srcs = sources(&[("pg", &pg.reader_url)]).await;
    let (left, right) = ("SELECT * FROM l", "SELECT * FROM r");

    let mut stats_by_mode = Vec::new();
    for mode in MODES {
        let (found, stats) = evaluate(&invariant(left, right, mode), &srcs).await;
        assert_eq!(found, expected(), "{mode:?}");
        stats_by_mode.push((mode, stats));
    }
    let (_, stream) = &stats_by_mode[0];
    let rows = (ROWS + 2) as u64; // a duplicate and a NULL key
    assert_eq!(
        (stream.rows_left, stream.null_keys),
        (rows, 2),
        "{stream:?}"
    );
    let streamed = stream.compared.as_ref().unwrap();
    assert_eq!(streamed.method, CompareMethod::Stream);
    assert_eq!(streamed.streamed_because, None);
    for (mode, stats) in &stats_by_mode[1..] {
        // The same counts as the stream's, from the summaries.
        assert_eq!(
            (stats.rows_left, stats.rows_right, stats.null_keys),
            (stream.rows_left, stream.rows_right, stream.null_keys),
            "{mode:?}"
        );
        let c = stats.compared.as_ref().unwrap();
        assert_eq!(c.method, CompareMethod::Checksum, "{mode:?}: {c:?}");
        // The differences sit in 12 to 15 segments of ~128 keys (100,000 keys in ~780
        // segments of about half a leaf's rows each, read without splitting them again;
        // -7, 7 and 11 share one, the outage straddles one or two): about 1,500 rows per
        // side cross the network, not 100,000.
        assert!((12..=15).contains(&c.segments_streamed), "{mode:?}: {c:?}");
        assert!(c.rows_streamed < 4_000, "{mode:?}: {c:?}");
        assert!(c.segments > 64 + 32, "{mode:?}: {c:?}");
    }
    srcs.close().await;
}

#[tokio::test]
async fn a_checksummed_run_opens_and_resolves_violations_in_the_ledger_as_a_stream_does() {
    let pg = TestPg::new().await;
    planted_tables(&pg).await;
    let srcs = sources(&[("pg", &pg.reader_url)]).await;
    let dir = tempfile::tempdir().unwrap();
    let store = trueup::store::open(&SecretUrl::new(format!(
        "sqlite://{}",
        dir.path().join("t.db").display()
    )))
    .await
    .unwrap();
    let inv = invariant(
        "SELECT * FROM l",
        "SELECT * FROM r",
        ReconcileMode::Checksum,
    );
    let first = run_invariant(&inv, &srcs, store.as_ref()).await.unwrap();
    assert!(first.error.is_none(), "{:?}", first.error);
    assert_eq!(first.change.unwrap().new, expected().len() as u64);

    // Repair a missing row, an extra one and a mismatch: exactly those resolve.
    pg.exec(
        "INSERT INTO r SELECT id, amount, currency, rtrim(code), flag::int, big, at AT TIME ZONE 'UTC', day, note FROM l WHERE id = 11;
         DELETE FROM r WHERE id = -7;
         UPDATE r SET amount = 5 WHERE id = 7;",
    )
    .await;
    let second = run_invariant(&inv, &srcs, store.as_ref()).await.unwrap();
    assert!(second.error.is_none(), "{:?}", second.error);
    let change = second.change.unwrap();
    assert_eq!(
        (change.new, change.resolved, change.still_open),
        (0, 3, expected().len() as u64 - 3)
    );
    srcs.close().await;
    store.close().await;
}

#[tokio::test]
async fn a_column_without_a_checksum_form_fails_checksum_mode_saying_why_and_auto_streams_it() {
    let pg = TestPg::new().await;
    pg.exec(
        "CREATE TABLE l (id bigint PRIMARY KEY, ratio double precision);
         INSERT INTO l SELECT i, i / 3.0 FROM generate_series(1, 1000) AS i;
         CREATE TABLE r AS SELECT * FROM l;
         UPDATE r SET ratio = ratio + 1 WHERE id = 500;",
    )
    .await;
    let srcs = sources(&[("pg", &pg.reader_url)]).await;
    let (left, right) = ("SELECT * FROM l", "SELECT * FROM r");

    let mut sink = Collect::default();
    let err = engine::evaluate(
        &invariant(left, right, ReconcileMode::Checksum),
        &srcs,
        Utc::now(),
        &mut sink,
    )
    .await
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "this invariant says `reconcile.mode: checksum`, but it cannot be checksummed: column `ratio`: floating-point values have no exact form both sides hash alike. Set `mode: auto` to checksum where it can and stream otherwise, or `mode: stream`"
    );
    assert!(sink.0.is_empty());

    let (found, stats) = evaluate(&invariant(left, right, ReconcileMode::Auto), &srcs).await;
    assert_eq!(found, Found::from([(ViolationKind::Mismatch, 500)]));
    let c = stats.compared.unwrap();
    assert_eq!(c.method, CompareMethod::Stream);
    assert_eq!(
        c.streamed_because.as_deref(),
        Some("column `ratio`: floating-point values have no exact form both sides hash alike")
    );
    srcs.close().await;
}

/// Against MariaDB or a SQLite file rows hash alike only by a canonical text's MD5, which
/// costs more than sending the rows: `auto` streams and says so, or, where a column has no
/// checksum form at all, says that; `mode: checksum` still summarises.
#[tokio::test]
async fn across_engines_auto_streams_saying_why_and_checksum_mode_still_summarises() {
    use crate::helpers::{TestMysql, sqlite_file, sqlite_url};
    let (pg, my) = (TestPg::new().await, TestMysql::new().await);
    pg.exec(
        "CREATE TABLE l (id bigint PRIMARY KEY, amount numeric(12,2), ratio double precision);
         INSERT INTO l SELECT i, i / 100.0, i::float8 / 3 FROM generate_series(1, 2000) AS i;",
    )
    .await;
    my.exec(
        "CREATE TABLE r (id BIGINT PRIMARY KEY, amount DECIMAL(12,2), ratio DOUBLE);
         INSERT INTO r SELECT seq, seq / 100, seq / 3e0 FROM seq_1_to_2000 WHERE seq <> 700;",
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("r.db");
    sqlite_file(
        &file,
        "CREATE TABLE r (id INTEGER PRIMARY KEY, amount NUMERIC, ratio REAL);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 2000)
         INSERT INTO r SELECT i, i / 100.0, i / 3.0 FROM s WHERE i <> 700;",
    )
    .await;
    let srcs = sources(&[
        ("pg", &pg.reader_url),
        ("my", &my.reader_url),
        ("lite", &sqlite_url(&file)),
    ])
    .await;
    for right in ["my", "lite"] {
        let reconcile = |columns: &str, mode| {
            let mut inv = reconcile_invariant(
                "across",
                ("pg", &format!("SELECT id, {columns} FROM l")),
                (right, &format!("SELECT id, {columns} FROM r")),
                &["id"],
            );
            reconcile_spec(&mut inv).mode = mode;
            inv
        };
        let missing = Found::from([(ViolationKind::Missing, 700)]);
        let (found, stats) = evaluate(&reconcile("amount", ReconcileMode::Auto), &srcs).await;
        assert_eq!(found, missing, "{right}");
        let c = stats.compared.unwrap();
        assert_eq!(c.method, CompareMethod::Stream, "{right}");
        assert_eq!(
            c.streamed_because.unwrap(),
            format!(
                "sources `pg` and `{right}` could hash rows alike only by the MD5 of a canonical text, which costs more to compute than the rows cost to send: streaming costs less (`mode: checksum` summarises anyway, where the network is scarcer than CPU)"
            )
        );
        let (found, stats) = evaluate(&reconcile("amount", ReconcileMode::Checksum), &srcs).await;
        assert_eq!(found, missing, "{right}");
        assert_eq!(stats.compared.unwrap().method, CompareMethod::Checksum);
        // A column no checksum can take: that is the reason given, not the cost.
        let (found, stats) =
            evaluate(&reconcile("amount, ratio", ReconcileMode::Auto), &srcs).await;
        assert_eq!(found, missing, "{right}");
        assert_eq!(
            stats.compared.unwrap().streamed_because.as_deref(),
            Some("column `ratio`: floating-point values have no exact form both sides hash alike"),
            "{right}"
        );
    }
    srcs.close().await;
}

#[tokio::test]
async fn auto_streams_when_sampled_segments_mostly_differ() {
    let pg = TestPg::new().await;
    pg.exec(
        "CREATE TABLE l (id bigint PRIMARY KEY, amount int);
         INSERT INTO l SELECT i, i FROM generate_series(1, 20000) AS i;
         CREATE TABLE r AS SELECT * FROM l;
         UPDATE r SET amount = amount + 1 WHERE id % 5 = 0;",
    )
    .await;
    let srcs = sources(&[("pg", &pg.reader_url)]).await;
    let (left, right) = ("SELECT * FROM l", "SELECT * FROM r");
    let (auto, stats) = evaluate(&invariant(left, right, ReconcileMode::Auto), &srcs).await;
    assert_eq!(auto.len(), 4000);
    let c = stats.compared.unwrap();
    assert_eq!(c.method, CompareMethod::Stream);
    assert_eq!(
        c.streamed_because.as_deref(),
        Some(
            "8 of 8 sampled segments differ, and about 94% of the rows lie in their differing buckets of 16: streaming costs less"
        )
    );
    // Told to checksum, it does, and finds the same.
    let (checksum, stats) = evaluate(&invariant(left, right, ReconcileMode::Checksum), &srcs).await;
    assert_eq!(checksum, auto);
    assert_eq!(stats.compared.unwrap().method, CompareMethod::Checksum);
    srcs.close().await;
}

/// Differences in every part of the table but rare per row (one key in 400 missing, extra or
/// changed, over 400,000 rows): one fine split in each database — a bucket per ~16 rows —
/// and only the differing buckets' rows read, by their keys; exactly what a stream finds.
#[tokio::test]
async fn differences_everywhere_but_rare_per_row_are_found_by_one_fine_split_reading_only_their_buckets()
 {
    let pg = TestPg::new().await;
    pg.exec(
        "CREATE TABLE l (id bigint PRIMARY KEY, amount numeric(12,2), label text);
         INSERT INTO l SELECT i, i / 100.0, md5(i::text) FROM generate_series(1, 400000) AS i;
         CREATE TABLE r (id bigint PRIMARY KEY, amount numeric(12,2), label text);
         INSERT INTO r SELECT * FROM l WHERE id % 1200 <> 1;
         UPDATE r SET amount = amount + 0.01 WHERE id % 1200 = 401;
         DELETE FROM l WHERE id % 1200 = 801;
         ANALYZE l; ANALYZE r;",
    )
    .await;
    let srcs = sources(&[("pg", &pg.reader_url)]).await;
    let (left, right) = ("SELECT * FROM l", "SELECT * FROM r");
    let (stream, _) = evaluate(&invariant(left, right, ReconcileMode::Stream), &srcs).await;
    let count = |kind| stream.iter().filter(|(k, _)| *k == kind).count();
    assert_eq!(
        (
            count(ViolationKind::Missing),
            count(ViolationKind::Mismatch),
            count(ViolationKind::Extra)
        ),
        (334, 333, 333)
    );
    for mode in [ReconcileMode::Auto, ReconcileMode::Checksum] {
        let (found, stats) = evaluate(&invariant(left, right, mode), &srcs).await;
        assert_eq!(found, stream, "{mode:?}");
        assert_eq!((stats.rows_left, stats.rows_right), (399_667, 399_666));
        let c = stats.compared.unwrap();
        assert_eq!(c.method, CompareMethod::Checksum, "{mode:?}: {c:?}");
        // 25,000 buckets of 16 keys (and the sample's), a thousand of which differ: about
        // 32,000 rows read of 800,000.
        assert!(c.segments > 25_000, "{mode:?}: {c:?}");
        assert_eq!(c.segments_streamed, 1_000, "{mode:?}: {c:?}");
        assert!(c.rows_streamed < 32_000, "{mode:?}: {c:?}");
    }
    srcs.close().await;
}

/// Through the CLI, from an invariant file that says `mode: checksum`: it prints how it
/// compared; a failure in a summary or in a differing segment's merge fails the run and
/// resolves nothing; without the fault, the same run resolves the repaired rows.
#[tokio::test]
async fn a_failure_while_checksumming_fails_the_run_and_resolves_nothing() {
    use crate::helpers::{combined_output, sqlite_url, trueup_cli};
    let pg = TestPg::new().await;
    pg.exec(
        "CREATE TABLE events (id bigint PRIMARY KEY, amount int);
         INSERT INTO events SELECT i, i * 100 FROM generate_series(1, 50000) AS i;
         CREATE TABLE records AS SELECT id AS event_id, amount FROM events WHERE id % 10000 <> 0;
         CREATE INDEX ON records (event_id);",
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("trueup.yaml");
    std::fs::write(
        &config,
        format!(
            "store: {}\nsources:\n  pg: {{url: \"{}\"}}\n",
            sqlite_url(&tmp.path().join("trueup.db")),
            pg.reader_url
        ),
    )
    .unwrap();
    std::fs::create_dir_all(tmp.path().join("invariants")).unwrap();
    std::fs::write(
        tmp.path().join("invariants/events.yaml"),
        r#"invariants:
  - name: events-recorded
    reconcile:
      left: {source: pg, query: "SELECT id, amount FROM events"}
      right: {source: pg, query: "SELECT event_id AS id, amount FROM records"}
      key: id
      mode: checksum
"#,
    )
    .unwrap();
    let first = trueup_cli(&config, "tester").arg("check").output().unwrap();
    let text = combined_output(&first);
    assert_eq!(first.status.code(), Some(1), "{text}");
    assert!(
        text.contains("compared 50000 left / 49995 right rows by checksum (")
            && text.contains(" segments summarised, 5 read: "),
        "{text}"
    );

    // Four repaired; the fifth keeps the table differing. The ledger holds all five open, so
    // a run totals their keys apart, finds the rest alike on both sides, and reads just them.
    pg.exec("INSERT INTO records SELECT id, amount FROM events WHERE id IN (10000, 20000, 30000, 40000);")
        .await;
    let store = trueup::store::open(&SecretUrl::new(sqlite_url(&tmp.path().join("trueup.db"))))
        .await
        .unwrap();
    let open = || async {
        store
            .violations(&trueup::store::ViolationFilter {
                status: trueup::store::StatusFilter::Active,
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .len()
    };
    assert_eq!(open().await, 5);
    for point in ["source.summarize", "source.totals", "engine.merge"] {
        for action in ["return", "panic"] {
            let out = trueup_cli(&config, "tester")
                .arg("check")
                .env("FAILPOINTS", format!("{point}={action}"))
                .output()
                .unwrap();
            let text = combined_output(&out);
            assert_eq!(out.status.code(), Some(2), "{point}={action}: {text}");
            assert_eq!(
                open().await,
                5,
                "{point}={action} resolved something: {text}"
            );
        }
    }
    let clean = trueup_cli(&config, "tester").arg("check").output().unwrap();
    let text = combined_output(&clean);
    assert_eq!(clean.status.code(), Some(1), "{text}");
    assert!(text.contains(" segments summarised, 5 read: "), "{text}");
    assert!(text.contains(": 9 rows)"), "{text}");
    assert!(text.contains("4 resolved"), "{text}");
    assert_eq!(open().await, 1);
    store.close().await;
}

/// A key repeated identically on both sides sums alike; only counting repeats finds it. A
/// unique index spares the count only where it covers every row the query returns: not
/// through a join, not for an inherited table's children (unless the query says `ONLY`).
#[tokio::test]
async fn a_key_repeated_on_both_sides_is_found_unless_a_unique_index_covers_every_row_read() {
    let pg = TestPg::new().await;
    let mut setup = String::new();
    for side in ["l", "r"] {
        setup.push_str(&format!(
            "CREATE TABLE {side} (id bigint PRIMARY KEY, amount int);
             INSERT INTO {side} SELECT i, i FROM generate_series(1, 5000) AS i;
             CREATE TABLE {side}_twice (id bigint);
             INSERT INTO {side}_twice SELECT i FROM generate_series(1, 5000) AS i;
             INSERT INTO {side}_twice VALUES (7);
             CREATE TABLE {side}_child () INHERITS ({side});
             INSERT INTO {side}_child VALUES (4000, 4000);"
        ));
    }
    pg.exec(&setup).await;
    let srcs = sources(&[("pg", &pg.reader_url)]).await;
    let cases = [
        // A join repeats key 7 on both sides.
        (
            "SELECT t.id, t.amount FROM ONLY {s} t JOIN {s}_twice w ON w.id = t.id",
            Found::from([(ViolationKind::Duplicate, 7)]),
        ),
        // The child's row repeats key 4000 under the parent's name.
        (
            "SELECT id, amount FROM {s}",
            Found::from([(ViolationKind::Duplicate, 4000)]),
        ),
        // Read alone, the parent's rows are all under its primary key.
        ("SELECT id, amount FROM ONLY {s}", Found::new()),
    ];
    for (query, want) in cases {
        let (left, right) = (query.replace("{s}", "l"), query.replace("{s}", "r"));
        for mode in MODES {
            let (found, stats) = evaluate(&invariant(&left, &right, mode), &srcs).await;
            assert_eq!(found, want, "{query} {mode:?}: {:?}", stats.compared);
        }
    }
    srcs.close().await;
}

/// PostgreSQL's numeric hash XORs in the number's weight, so `v` and `v × 10⁴` hash nearly
/// alike: without a non-linear mix after it, many such rows in a segment cancel in its
/// sum, and two such columns of one row cancel each other in the row's hash, as could a
/// weight change (× 10⁸) and a sign flip in the next column. A column shifted by 10⁴ on
/// every row, two columns shifted alike, or one shifted by 10⁸ beside a sign flipped, are
/// found on every row.
#[tokio::test]
async fn numeric_columns_off_by_ten_thousand_on_every_row_are_found_on_every_row() {
    let pg = TestPg::new().await;
    pg.exec(
        "CREATE TABLE l (id bigint PRIMARY KEY, amount numeric(20,2), fee numeric(20,3));
         INSERT INTO l SELECT i, (i % 997) + 0.25, (i % 997) + 0.5 FROM generate_series(1, 20000) AS i;
         CREATE TABLE r AS SELECT id, amount * 10000 AS amount, fee * 10000 AS fee FROM l;
         CREATE UNIQUE INDEX ON r (id);
         CREATE TABLE ls AS SELECT id, ((id % 7) + 1)::numeric AS amount, (-((id % 5) + 1))::numeric AS fee FROM l;
         CREATE UNIQUE INDEX ON ls (id);
         CREATE TABLE rs AS SELECT id, amount * 100000000 AS amount, -fee AS fee FROM ls;
         CREATE UNIQUE INDEX ON rs (id);",
    )
    .await;
    let srcs = sources(&[("pg", &pg.reader_url)]).await;
    for (columns, left, right) in [
        ("id, amount", "l", "r"),
        ("id, amount, fee", "l", "r"),
        ("id, amount, fee", "ls", "rs"),
    ] {
        let (found, stats) = evaluate(
            &invariant(
                &format!("SELECT {columns} FROM {left}"),
                &format!("SELECT {columns} FROM {right}"),
                ReconcileMode::Checksum,
            ),
            &srcs,
        )
        .await;
        assert_eq!(
            found.len(),
            20_000,
            "{columns} of {left}: {:?}",
            stats.compared
        );
        assert!(
            found
                .iter()
                .all(|(kind, _)| *kind == ViolationKind::Mismatch),
            "{columns}"
        );
    }
    srcs.close().await;
}

/// Between two PostgreSQL servers with few differences, each side is totalled whole first. An
/// outage is then located by the key sums of what one side lacks, and only its window is
/// read; the next run looks up the violations the ledger holds open by key instead of
/// splitting the table again; differences that cannot be located so (a value changed in
/// place, a key repeated) are found by the split, as before; once everything is repaired,
/// equal totals resolve every violation without reading a row. Keys 2^33 apart (places
/// shifted, each key's hash in two halves) locate an outage as well.
#[tokio::test]
async fn an_outage_is_located_by_the_totals_and_open_violations_are_looked_up_by_their_keys() {
    let pg = TestPg::new().await;
    pg.exec(&format!(
        "CREATE TABLE l (id bigint, amount numeric(12,2), currency text);
         INSERT INTO l SELECT i, (i % 1000) + 0.5, CASE WHEN i % 3 = 0 THEN 'EUR' ELSE 'USD' END
           FROM generate_series(1, {ROWS}) AS i;
         CREATE INDEX ON l (id);
         CREATE TABLE r AS SELECT * FROM l WHERE id NOT BETWEEN 40001 AND 40500;
         CREATE INDEX ON r (id);
         CREATE TABLE wl AS SELECT id * 8589934592 - 9000000000000000000 AS id, amount, currency FROM l;
         CREATE UNIQUE INDEX ON wl (id);
         CREATE TABLE wr AS SELECT * FROM wl
           WHERE id NOT BETWEEN 70001 * 8589934592 - 9000000000000000000
                            AND 70300 * 8589934592 - 9000000000000000000;
         CREATE UNIQUE INDEX ON wr (id);
         ANALYZE l; ANALYZE r; ANALYZE wl; ANALYZE wr;"
    ))
    .await;
    let srcs = sources(&[("pg", &pg.reader_url)]).await;
    let dir = tempfile::tempdir().unwrap();
    let store = trueup::store::open(&SecretUrl::new(crate::helpers::sqlite_url(
        &dir.path().join("t.db"),
    )))
    .await
    .unwrap();
    let run = |inv: Invariant| {
        let (srcs, store) = (&srcs, &store);
        async move {
            let out = run_invariant(&inv, srcs, store.as_ref()).await.unwrap();
            assert!(out.error.is_none(), "{:?}", out.error);
            let compared = out.stats.compared.clone().unwrap();
            assert_eq!(compared.method, CompareMethod::Checksum, "{compared:?}");
            (out.change.unwrap(), compared)
        }
    };
    let inv = || {
        invariant(
            "SELECT * FROM l",
            "SELECT * FROM r",
            ReconcileMode::Checksum,
        )
    };
    let open = || {
        crate::helpers::keys_by_kind(
            store.as_ref(),
            "checksummed",
            trueup::store::StatusFilter::Active,
        )
    };
    let missing = |keys: std::ops::RangeInclusive<i64>| {
        std::collections::BTreeMap::from([("missing".to_owned(), keys.collect::<BTreeSet<i64>>())])
    };

    // The outage: 500 keys one side lacks, located around their mean (±2σ, ~580 keys): one
    // range read, not the ~4 segments of ~128 keys a split reads, nor any split's summaries
    // past the sample.
    let (change, c) = run(inv()).await;
    assert_eq!(change.new, 500);
    assert_eq!(open().await, missing(40001..=40500));
    assert_eq!(c.segments_streamed, 1, "{c:?}");
    assert!((500..=800).contains(&c.rows_streamed), "{c:?}");
    let sampled = c.segments - 2;

    // Nothing changed: the open keys are totalled apart, the rest is alike, they are read.
    let (change, c) = run(inv()).await;
    assert_eq!((change.new, change.still_open), (0, 500));
    assert_eq!(
        (c.segments, c.segments_streamed, c.rows_streamed),
        (sampled + 2, 1, 500)
    );

    // Half the outage repaired, and a value changed in place elsewhere: the rest of the
    // table differs, with counts that locate nothing, so it is split.
    pg.exec(
        "INSERT INTO r SELECT * FROM l WHERE id BETWEEN 40001 AND 40250;
         UPDATE r SET currency = 'usd' WHERE id = 90001;",
    )
    .await;
    let (change, c) = run(inv()).await;
    assert_eq!(
        (change.new, change.resolved, change.still_open),
        (1, 250, 250)
    );
    let mut want = missing(40251..=40500);
    want.insert("mismatch".to_owned(), [90001].into());
    assert_eq!(open().await, want);
    assert!(c.segments > sampled + 3, "{c:?}");

    // Nothing changed: both differences are looked up by their keys.
    let (change, c) = run(inv()).await;
    assert_eq!((change.new, change.still_open), (0, 251));
    assert_eq!(
        (c.segments, c.segments_streamed, c.rows_streamed),
        (sampled + 2, 2, 250 + 2), // the missing rows, and the mismatch on both sides
        "{c:?}"
    );

    // A new outage elsewhere: the open keys are totalled apart, the rest still differs, by
    // 100 rows lacking, and a range around them is set apart too: three ranges read.
    pg.exec("DELETE FROM r WHERE id BETWEEN 20001 AND 20100;")
        .await;
    let (change, c) = run(inv()).await;
    assert_eq!((change.new, change.still_open), (100, 251));
    assert_eq!((c.segments, c.segments_streamed), (sampled + 3, 3), "{c:?}");

    // A key repeated on both sides: its count must be 0 wherever it lies, which the totals
    // do not take apart, so the range is split; the open keys are found there as well.
    pg.exec(
        "INSERT INTO l SELECT * FROM l WHERE id = 95000;
         INSERT INTO r SELECT * FROM r WHERE id = 95000;",
    )
    .await;
    let (change, c) = run(inv()).await;
    assert_eq!((change.new, change.still_open), (1, 351));
    assert!(c.segments > sampled + 3, "{c:?}");

    // Everything repaired: the totals are equal, every violation resolves, no row is read.
    pg.exec(
        "INSERT INTO r SELECT * FROM l WHERE id BETWEEN 40251 AND 40500 OR id BETWEEN 20001 AND 20100;
         UPDATE r SET currency = 'USD' WHERE id = 90001;
         DELETE FROM l WHERE id = 95000;
         DELETE FROM r WHERE id = 95000;
         INSERT INTO l SELECT 95000, (95000 % 1000) + 0.5, 'USD';
         INSERT INTO r SELECT 95000, (95000 % 1000) + 0.5, 'USD';",
    )
    .await;
    let (change, c) = run(inv()).await;
    assert_eq!(
        (change.resolved, change.still_open, change.new),
        (352, 0, 0)
    );
    assert_eq!(
        (c.segments, c.segments_streamed, c.rows_streamed),
        (sampled + 1, 0, 0)
    );
    assert!(open().await.is_empty());

    // Keys 2^33 apart over ~2^50: 300 lacking are located as one range all the same.
    let mut wide = invariant(
        "SELECT * FROM wl",
        "SELECT * FROM wr",
        ReconcileMode::Checksum,
    );
    wide.name = trueup::domain::InvariantName::parse("wide-keys").unwrap();
    let (change, c) = run(wide).await;
    assert_eq!(change.new, 300);
    assert_eq!(c.segments_streamed, 1, "{c:?}");
    assert!((300..=600).contains(&c.rows_streamed), "{c:?}");
    srcs.close().await;
    store.close().await;
}
