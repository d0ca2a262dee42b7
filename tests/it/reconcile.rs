//! Reconcile across engines: PostgreSQL ↔ MariaDB, with planted differences of every kind.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use trueup::config::SecretUrl;
use trueup::domain::ViolationStatus;
use trueup::domain::{
    ColumnName, CompareMethod, Coverage, HumanDuration, Incremental, Invariant, InvariantSpec,
    ReconcileMode, ViolationKind,
};
use trueup::engine::{self, Collect, EngineError};
use trueup::runner::{RunLimits, run_invariant, run_invariant_limited};
use trueup::store::{self, StatusFilter, ViolationFilter};

use crate::helpers::{
    MODES, TestMysql, TestPg, evaluate_in, reconcile_invariant, reconcile_spec, sources,
};

fn reconcile(left: &str, right: &str, key: &[&str], compare: Option<&[&str]>) -> Invariant {
    let mut inv = reconcile_invariant("pg-mysql", ("pg", left), ("my", right), key);
    inv.violation_budget = 100_000;
    reconcile_spec(&mut inv).compare =
        compare.map(|c| c.iter().map(|k| ColumnName::parse(k).unwrap()).collect());
    inv
}

const ROWS: i64 = 100_000;

/// Keys planted per kind; disjoint.
fn planted() -> BTreeMap<&'static str, BTreeSet<i64>> {
    BTreeMap::from([
        ("missing", (1..=ROWS).filter(|i| i % 2711 == 0).collect()),
        ("extra", (ROWS + 1..=ROWS + 13).collect()),
        ("duplicate", [5, 55_555, 99_999].into()),
        // amount off by a cent, currency in another case, a NULL against a value, a timestamp
        // a second off
        ("mismatch", [7, 1_001, 42_042, 77_777, 88_888].into()),
    ])
}

async fn keys_by_kind(
    store: &dyn trueup::store::Store,
    status: StatusFilter,
) -> BTreeMap<String, BTreeSet<i64>> {
    let list = store
        .violations(&ViolationFilter {
            invariants: vec!["pg-mysql".into()],
            status,
            limit: 100_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for v in list {
        out.entry(v.kind)
            .or_default()
            .insert(v.key[0].as_i64().unwrap());
    }
    out
}

#[tokio::test]
async fn postgres_to_mariadb_finds_exactly_the_planted_keys_and_resolves_exactly_the_fixed_ones() {
    planted_keys_found_and_fixed_ones_resolved(ReconcileMode::Stream, false, None).await;
}

#[tokio::test]
async fn postgres_to_mariadb_by_checksum_finds_exactly_the_planted_keys_and_resolves_exactly_the_fixed_ones()
 {
    planted_keys_found_and_fixed_ones_resolved(ReconcileMode::Checksum, false, None).await;
}

#[tokio::test]
async fn postgres_to_mariadb_in_auto_mode_finds_exactly_the_planted_keys_and_resolves_exactly_the_fixed_ones()
 {
    planted_keys_found_and_fixed_ones_resolved(ReconcileMode::Auto, false, None).await;
}

#[tokio::test]
async fn postgres_to_mariadb_incrementally_finds_exactly_the_planted_keys_and_resolves_the_fixed_ones_it_covers()
 {
    planted_keys_found_and_fixed_ones_resolved(ReconcileMode::Auto, true, None).await;
}

#[tokio::test]
async fn postgres_to_mariadb_split_into_segments_finds_exactly_the_planted_keys_and_resolves_exactly_the_fixed_ones()
 {
    planted_keys_found_and_fixed_ones_resolved(ReconcileMode::Stream, false, Some(8)).await;
}

#[tokio::test]
async fn postgres_to_mariadb_split_into_checksummed_segments_finds_exactly_the_planted_keys_and_resolves_the_fixed_ones()
 {
    planted_keys_found_and_fixed_ones_resolved(ReconcileMode::Checksum, true, Some(7)).await;
}

/// With `incremental`, each side has a change column (the left's set by hand, the right's
/// moved by MariaDB on every write) and runs after the first read only what changed. With
/// `segments`, every full pass is split into that many segments of the key range (this
/// process the only worker).
async fn planted_keys_found_and_fixed_ones_resolved(
    mode: ReconcileMode,
    incremental: bool,
    segments: Option<u32>,
) {
    let (pg, my) = (TestPg::new().await, TestMysql::new().await);
    pg.exec(&format!(
        "CREATE TABLE payments (id bigint PRIMARY KEY, amount numeric(12,2) NOT NULL, currency text NOT NULL,
                                note varchar(20), captured_at timestamptz NOT NULL,
                                changed_at timestamptz NOT NULL);
         INSERT INTO payments
           SELECT i, (i % 1000) + 0.5, CASE WHEN i % 3 = 0 THEN 'EUR' ELSE 'USD' END,
                  CASE WHEN i % 2 = 0 THEN 'n' || i END,
                  timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second',
                  timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second'
           FROM generate_series(1, {ROWS}) AS i;"
    ))
    .await;
    // The right side is built independently in MariaDB, from a digits table.
    my.exec(&format!(
        "CREATE TABLE digits (d INT);
         INSERT INTO digits VALUES (0),(1),(2),(3),(4),(5),(6),(7),(8),(9);
         CREATE TABLE entries (payment_id BIGINT NOT NULL, amount DECIMAL(14,3) NOT NULL,
                               currency VARCHAR(3) NOT NULL, note TEXT, captured_at DATETIME(6) NOT NULL,
                               updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
                               KEY (payment_id), KEY (updated_at));
         INSERT INTO entries
           SELECT n, (n % 1000) + 0.5, IF(n % 3 = 0, 'EUR', 'USD'), IF(n % 2 = 0, CONCAT('n', n), NULL),
                  TIMESTAMP '2026-01-01 00:00:00' + INTERVAL n SECOND,
                  TIMESTAMP '2026-01-01 00:00:00' + INTERVAL n SECOND
           FROM (SELECT a.d + 10*b.d + 100*c.d + 1000*e.d + 10000*f.d + 1 AS n
                 FROM digits a, digits b, digits c, digits e, digits f) s
           WHERE n <= {ROWS};"
    ))
    .await;
    let p = planted();
    let list = |k: &str| {
        p[k].iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    my.exec(&format!(
        "DELETE FROM entries WHERE payment_id IN ({missing});
         INSERT INTO entries (payment_id, amount, currency, note, captured_at)
           SELECT payment_id + {ROWS}, amount, currency, note, captured_at FROM entries WHERE payment_id <= 13;
         INSERT INTO entries (payment_id, amount, currency, note, captured_at)
           SELECT payment_id, amount, currency, note, captured_at FROM entries WHERE payment_id IN ({dup});
         UPDATE entries SET amount = amount + 0.01 WHERE payment_id = 7;
         UPDATE entries SET currency = LOWER(currency) WHERE payment_id = 1001;
         UPDATE entries SET note = NULL WHERE payment_id = 42042;
         UPDATE entries SET note = 'x' WHERE payment_id = 77777;
         UPDATE entries SET captured_at = captured_at + INTERVAL 1 SECOND WHERE payment_id = 88888;",
        missing = list("missing"),
        dup = list("duplicate"),
    ))
    .await;

    let srcs = sources(&[("pg", &pg.reader_url), ("my", &my.reader_url)]).await;
    let (left, right) = if incremental {
        (
            "SELECT id AS payment_id, amount, currency, note, captured_at, changed_at FROM payments",
            "SELECT payment_id, amount, currency, note, captured_at, updated_at FROM entries",
        )
    } else {
        (
            "SELECT id AS payment_id, amount, currency, note, captured_at FROM payments",
            "SELECT payment_id, amount, currency, note, captured_at FROM entries",
        )
    };
    let mut inv = reconcile(left, right, &["payment_id"], None);
    if let InvariantSpec::Reconcile(spec) = &mut inv.spec {
        spec.mode = mode;
        // Each side's change column is its own: neither is compared.
        spec.incremental = incremental.then(|| Incremental {
            left: Some(ColumnName::parse("changed_at").unwrap()),
            right: Some(ColumnName::parse("updated_at").unwrap()),
            lookback: HumanDuration::parse("1s").unwrap(),
            full_every: HumanDuration::parse("1d").unwrap(),
        });
        spec.segments = segments;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(&SecretUrl::new(format!(
        "sqlite://{}",
        dir.path().join("t.db").display()
    )))
    .await
    .unwrap();

    let first = run_invariant(&inv, &srcs, store.as_ref()).await.unwrap();
    assert!(first.error.is_none(), "{:?}", first.error);
    // Checksummed, the 46 planted keys sit in a few dozen segments of about a leaf (256
    // rows of 100,000): nearly nine rows in ten are compared where they are, never read.
    // `auto` streams: across engines rows hash alike only by a canonical text's MD5, which
    // costs the servers more than sending the rows.
    let compared = first.stats.compared.clone().unwrap();
    match mode {
        ReconcileMode::Checksum => {
            assert_eq!(compared.method, CompareMethod::Checksum, "{compared:?}");
            assert!(compared.rows_streamed < 25_000, "{compared:?}");
        }
        ReconcileMode::Auto => {
            assert_eq!(compared.method, CompareMethod::Stream, "{compared:?}");
            assert_eq!(
                compared.streamed_because.as_deref(),
                Some(
                    "sources `pg` and `my` could hash rows alike only by the MD5 of a canonical text, which costs more to compute than the rows cost to send: streaming costs less (`mode: checksum` summarises anyway, where the network is scarcer than CPU)"
                ),
            );
        }
        ReconcileMode::Stream => {}
    }
    if let Some(n) = segments {
        let split = first.stats.split.clone().expect("a split run");
        assert_eq!(split.segments, n);
        assert_eq!((split.workers.len(), split.taken_over), (1, 0), "{split:?}");
    } else {
        assert_eq!(first.stats.split, None);
    }
    assert_eq!(first.stats.rows_left, ROWS as u64);
    assert_eq!(first.stats.rows_right, (ROWS - 36 + 13 + 3) as u64);
    let found = keys_by_kind(store.as_ref(), StatusFilter::Active).await;
    for (kind, keys) in &p {
        assert_eq!(found.get(*kind), Some(keys), "{kind}");
    }
    assert_eq!(found.len(), 4, "{:?}", found.keys());
    // The evidence says which column differs, with both values.
    let mismatches = store
        .violations(&ViolationFilter {
            invariants: vec!["pg-mysql".into()],
            kind: Some(ViolationKind::Mismatch),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let by_key: BTreeMap<i64, serde_json::Value> = mismatches
        .iter()
        .map(|v| (v.key[0].as_i64().unwrap(), v.evidence["diff"].clone()))
        .collect();
    assert_eq!(
        by_key[&7],
        json!([{"column": "amount", "left": "7.5", "right": "7.51"}])
    );
    assert_eq!(
        by_key[&1001],
        json!([{"column": "currency", "left": "USD", "right": "usd"}])
    );
    assert_eq!(
        by_key[&42042],
        json!([{"column": "note", "left": "n42042", "right": null}])
    );

    // Repair some rows on the right; the next run resolves exactly those.
    my.exec(&format!(
        "INSERT INTO entries (payment_id, amount, currency, note, captured_at)
           VALUES (2711, 711.5, 'USD', NULL, TIMESTAMP '2026-01-01 00:00:00' + INTERVAL 2711 SECOND);
         DELETE FROM entries WHERE payment_id = {};
         UPDATE entries SET amount = 7.5 WHERE payment_id = 7;",
        ROWS + 1
    ))
    .await;
    let second = run_invariant(&inv, &srcs, store.as_ref()).await.unwrap();
    assert!(second.error.is_none(), "{:?}", second.error);
    let change = second.change.unwrap();
    let resolved = if incremental {
        // The repaired keys changed and are resolved; the deleted extra row left no changed
        // row, so its violation waits, open, with the 35 missing keys nothing changed (57
        // planted, 2 resolved).
        let Coverage::Changed { keys, .. } = second.stats.coverage else {
            panic!("{:?}", second.stats.coverage)
        };
        assert!(keys < 100, "only the changed keys are read: {keys}");
        assert_eq!((change.resolved, change.uncovered), (2, 36), "{change:?}");
        assert_eq!(second.open_after, 57 - 2);
        // A full pass sees the deleted row.
        let limits = RunLimits {
            full_pass: true,
            ..RunLimits::default()
        };
        let full = run_invariant_limited(&inv, &srcs, store.as_ref(), &limits)
            .await
            .unwrap();
        assert_eq!(full.stats.coverage, Coverage::Full);
        assert_eq!(full.stats.split.is_some(), segments.is_some());
        let full_change = full.change.unwrap();
        assert_eq!(
            (full_change.resolved, full_change.new, full_change.uncovered),
            (1, 0, 0)
        );
        change.resolved + full_change.resolved
    } else {
        change.resolved
    };
    assert_eq!(resolved, 3);
    assert_eq!(change.new, 0);
    let resolved = keys_by_kind(
        store.as_ref(),
        StatusFilter::Only(ViolationStatus::Resolved),
    )
    .await;
    assert_eq!(
        resolved,
        BTreeMap::from([
            ("missing".to_owned(), BTreeSet::from([2711])),
            ("extra".to_owned(), BTreeSet::from([ROWS + 1])),
            ("mismatch".to_owned(), BTreeSet::from([7])),
        ])
    );
    srcs.close().await;
    store.close().await;
}

#[tokio::test]
async fn text_keys_merge_byte_wise_despite_case_insensitive_and_locale_collations() {
    let (pg, my) = (TestPg::new().await, TestMysql::new().await);
    // Keys that collations order differently: case, accents, trailing spaces, punctuation.
    let keys = [
        "a",
        "A",
        "b",
        "B",
        "ab",
        "a b",
        "a-b",
        "a_b",
        "Z",
        "z",
        "é",
        "e",
        "É",
        "ä",
        "ß",
        "ss",
        "10",
        "9",
        "a ",
        "x\u{2028}",
        "",
        "Ω",
        "_",
        "-",
        "~",
    ];
    let values: Vec<String> = keys
        .iter()
        .map(|k| format!("('{}')", k.replace('\'', "''")))
        .collect();
    pg.exec(&format!(
        "CREATE TABLE l (k text COLLATE \"en-US-x-icu\"); INSERT INTO l VALUES {};",
        values.join(",")
    ))
    .await;
    // MariaDB's default collation is case- and accent-insensitive and pads spaces.
    my.exec(&format!(
        "CREATE TABLE r (k VARCHAR(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci);
         INSERT INTO r VALUES {};
         DELETE FROM r WHERE k = BINARY 'ß';",
        values.join(",")
    ))
    .await;
    let srcs = sources(&[("pg", &pg.reader_url), ("my", &my.reader_url)]).await;
    let inv = reconcile("SELECT k FROM l", "SELECT k FROM r", &["k"], None);
    let mut found = Collect::default();
    let stats = engine::evaluate(&inv, &srcs, chrono::Utc::now(), &mut found)
        .await
        .unwrap();
    assert_eq!(stats.rows_left, keys.len() as u64);
    let got: Vec<(ViolationKind, serde_json::Value)> =
        found.0.iter().map(|v| (v.kind, v.key_json())).collect();
    assert_eq!(got, vec![(ViolationKind::Missing, json!(["ß"]))]);
    srcs.close().await;
}

#[tokio::test]
async fn keys_of_different_types_on_each_side_are_refused_not_misreported() {
    let (pg, my) = (TestPg::new().await, TestMysql::new().await);
    pg.exec("CREATE TABLE l (id int); INSERT INTO l VALUES (1), (2);")
        .await;
    my.exec("CREATE TABLE r (id VARCHAR(5)); INSERT INTO r VALUES ('1'), ('2');")
        .await;
    let srcs = sources(&[("pg", &pg.reader_url), ("my", &my.reader_url)]).await;
    let inv = reconcile("SELECT id FROM l", "SELECT id FROM r", &["id"], None);
    let err = engine::evaluate(&inv, &srcs, chrono::Utc::now(), &mut Collect::default())
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::KeyTypeMismatch { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("number on the left and text on the right"),
        "{err}"
    );
    srcs.close().await;
}

/// sqlx does not say a MariaDB column's collation, so text in a binary collation
/// (`utf8mb4_bin`) reads as bytes: compared with PostgreSQL text it is the same text, not a
/// mismatch on every row, whichever way the rows are compared; as a key it is refused with
/// the cast that reads it as text.
#[tokio::test]
async fn mariadb_utf8mb4_bin_text_equals_postgres_text_in_every_mode_and_a_key_names_the_cast() {
    let (pg, my) = (TestPg::new().await, TestMysql::new().await);
    pg.exec(
        "CREATE TABLE l (id bigint PRIMARY KEY, note text);
         INSERT INTO l VALUES (1, 'x'), (2, 'Zürich'), (3, 'a'), (4, NULL), (5, 'b '), (6, '');
         INSERT INTO l SELECT i, 'ü-' || i FROM generate_series(101, 4100) i;",
    )
    .await;
    my.exec(
        "CREATE TABLE r (id BIGINT PRIMARY KEY,
                         note VARCHAR(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin);
         INSERT INTO r VALUES (1, 'x'), (2, 'Zürich'), (3, 'A'), (4, NULL), (5, 'b'), (6, '');
         INSERT INTO r SELECT seq, CONCAT('ü-', seq) FROM seq_101_to_4100;",
    )
    .await;
    // The same bytes in PostgreSQL (hashed by its typed functions against text) and in a
    // SQLite BLOB (hashed by trueup, as the other engine writes text).
    pg.exec(
        "CREATE TABLE rb (id bigint PRIMARY KEY, note bytea);
         INSERT INTO rb VALUES (1, 'x'), (2, convert_to('Zürich', 'UTF8')), (3, 'A'),
                               (4, NULL), (5, 'b'), (6, '');
         INSERT INTO rb SELECT i, convert_to('ü-' || i, 'UTF8') FROM generate_series(101, 4100) i;",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs.db");
    crate::helpers::sqlite_file(
        &blobs,
        "CREATE TABLE r (id INTEGER PRIMARY KEY, note BLOB);
         INSERT INTO r VALUES (1, CAST('x' AS BLOB)), (2, CAST('Zürich' AS BLOB)),
                              (3, CAST('A' AS BLOB)), (4, NULL), (5, CAST('b' AS BLOB)),
                              (6, CAST('' AS BLOB));
         WITH RECURSIVE n(i) AS (SELECT 101 UNION ALL SELECT i + 1 FROM n WHERE i < 4100)
         INSERT INTO r SELECT i, CAST('ü-' || i AS BLOB) FROM n;",
    )
    .await;
    let srcs = sources(&[
        ("pg", &pg.reader_url),
        ("my", &my.reader_url),
        ("lite", &crate::helpers::sqlite_url(&blobs)),
    ])
    .await;
    for (right, query) in [
        ("my", "SELECT id, note FROM r"),
        ("pg", "SELECT id, note FROM rb"),
        ("lite", "SELECT id, note FROM r"),
    ] {
        for mode in MODES {
            let inv = reconcile_invariant(
                "text-bytes",
                ("pg", "SELECT id, note FROM l"),
                (right, query),
                &["id"],
            );
            let (found, stats) = evaluate_in(inv, mode, &srcs).await;
            if mode == ReconcileMode::Checksum {
                // Both forms hash alike: the equal rows' segments are not read.
                let compared = stats.compared.unwrap();
                assert_eq!(compared.method, CompareMethod::Checksum, "{right}");
                assert!(
                    compared.rows_streamed < 2_000,
                    "{right}: {} rows read",
                    compared.rows_streamed
                );
            }
            let got: Vec<(ViolationKind, serde_json::Value)> =
                found.iter().map(|v| (v.kind, v.key_json())).collect();
            assert_eq!(
                got,
                vec![
                    (ViolationKind::Mismatch, json!([3])),
                    (ViolationKind::Mismatch, json!([5]))
                ],
                "{right} {mode:?}"
            );
        }
    }
    let inv = reconcile(
        "SELECT note AS k FROM l",
        "SELECT note AS k FROM r",
        &["k"],
        None,
    );
    let err = engine::evaluate(&inv, &srcs, chrono::Utc::now(), &mut Collect::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(
            "text on the left and bytes on the right; both sides must return the same type (cast one side in its query; a MySQL/MariaDB text column in a binary collation such as utf8mb4_bin reads as bytes: on the right, `CAST(<column> AS CHAR) AS k` reads it as text)"
        ),
        "{err}"
    );
    let inv = reconcile(
        "SELECT note AS k FROM l WHERE note IS NOT NULL",
        "SELECT CAST(note AS CHAR) AS k FROM r WHERE note IS NOT NULL",
        &["k"],
        None,
    );
    let mut found = Collect::default();
    engine::evaluate(&inv, &srcs, chrono::Utc::now(), &mut found)
        .await
        .unwrap();
    let got: BTreeSet<(ViolationKind, String)> = found
        .0
        .iter()
        .map(|v| (v.kind, v.key_json().to_string()))
        .collect();
    let want = [
        (ViolationKind::Missing, json!(["a"])),
        (ViolationKind::Missing, json!(["b "])),
        (ViolationKind::Extra, json!(["A"])),
        (ViolationKind::Extra, json!(["b"])),
    ];
    assert_eq!(
        got,
        want.into_iter().map(|(k, v)| (k, v.to_string())).collect()
    );
    srcs.close().await;
}

/// A latin1_bin column reads as bytes, converted to the session's utf8mb4: a checksum
/// hashes those bytes, not the stored latin1 ones, or it would call equal what a stream
/// calls different (key 1: the stored bytes are PostgreSQL's, the bytes read are not; in a
/// segment of its own, apart from key 1000, whose stored bytes differ and read alike).
#[tokio::test]
async fn a_mysql_binary_collation_of_another_charset_checksums_the_bytes_it_reads_as() {
    let (pg, my) = (TestPg::new().await, TestMysql::new().await);
    pg.exec(
        "CREATE TABLE l (id bigint PRIMARY KEY, b bytea, t text);
         INSERT INTO l VALUES (1, '\\xc3a9', 'x'), (1000, convert_to('é', 'UTF8'), 'é');",
    )
    .await;
    my.exec(
        "CREATE TABLE r (id BIGINT PRIMARY KEY,
                         b VARCHAR(10) CHARACTER SET latin1 COLLATE latin1_bin,
                         t VARCHAR(10) CHARACTER SET latin1 COLLATE latin1_bin);
         INSERT INTO r VALUES (1, 'Ã©', 'x'), (1000, 'é', 'é');",
    )
    .await;
    let srcs = sources(&[("pg", &pg.reader_url), ("my", &my.reader_url)]).await;
    for mode in MODES {
        let inv = reconcile(
            "SELECT id, b, t FROM l",
            "SELECT id, b, t FROM r",
            &["id"],
            None,
        );
        let (found, stats) = evaluate_in(inv, mode, &srcs).await;
        if mode == ReconcileMode::Checksum {
            // Key 1000's segment summed alike on both sides and was not read.
            let compared = stats.compared.unwrap();
            assert_eq!(compared.method, CompareMethod::Checksum);
            assert_eq!(compared.rows_streamed, 2);
        }
        let got: Vec<(ViolationKind, serde_json::Value, serde_json::Value)> = found
            .iter()
            .map(|v| (v.kind, v.key_json(), v.evidence["diff"].clone()))
            .collect();
        assert_eq!(
            got,
            vec![(
                ViolationKind::Mismatch,
                json!([1]),
                json!([{"column": "b", "left": "\\xc3a9", "right": "\\xc383c2a9"}])
            )],
            "{mode:?}"
        );
    }
    srcs.close().await;
}

/// MySQL's string functions give NULL, not an error, for a result longer than
/// `max_allowed_packet` (16 MiB on MariaDB): the hex of an 8.5 MB value. A checksum must not
/// take two such values for equal (key 1), nor one for a NULL (key 1000), nor drop from its
/// sum a row whose values only together are that long (key 2000); two equal long values
/// still sum alike on MySQL (key 3000: not read there). The same for text, whose form
/// overflows with its UTF-8 (a latin1 `é` is one byte stored and two read), and for text
/// against bytes. (Values under 10 MB: InnoDB refuses a transaction of long values past a
/// tenth of its redo log, 96 MiB by default.)
#[tokio::test]
async fn values_too_long_for_mysql_string_functions_still_differ_in_a_checksum() {
    let (pg, left, right) = (
        TestPg::new().await,
        TestMysql::new().await,
        TestMysql::new().await,
    );
    let limit: u64 = sqlx::query_scalar("SELECT @@max_allowed_packet")
        .fetch_one(&mut left.connect().await)
        .await
        .unwrap();
    assert!(
        limit <= 16 << 20,
        "this test overflows a max_allowed_packet of at most 16 MiB, not {limit}"
    );
    // `n` copies of a character (its code in latin1, as MySQL writes it), as each engine
    // writes it.
    let my_long = |c: char, n: u32| format!("REPEAT(_latin1 X'{:02X}', {n})", c as u32);
    let pg_long = |c: char, n: u32| format!("convert_to(repeat('{c}', {n}), 'UTF8')");
    let rows = |long: &dyn Fn(char, u32) -> String, a: char, x: Option<char>, b: char| {
        [
            format!("(1, {}, NULL)", long(a, 8_500_000)),
            format!(
                "(1000, {}, NULL)",
                x.map_or("NULL".to_owned(), |x| long(x, 8_500_000))
            ),
            format!("(2000, {}, {})", long('c', 4_500_000), long(b, 4_500_000)),
            format!("(3000, {}, NULL)", long('e', 8_500_000)),
        ]
    };
    let both = async |sql: &str| {
        left.exec(sql).await;
        right.exec(sql).await;
    };
    both(
        "CREATE TABLE t (id BIGINT PRIMARY KEY, a LONGBLOB, b LONGBLOB);
          CREATE TABLE lt (id BIGINT PRIMARY KEY, t LONGTEXT CHARACTER SET latin1);
          CREATE TABLE rb (id BIGINT PRIMARY KEY, b LONGBLOB);",
    )
    .await;
    pg.exec("CREATE TABLE t (id bigint PRIMARY KEY, a bytea, b bytea);")
        .await;
    // One row a statement, for the redo log.
    let (lefts, rights) = (
        rows(&my_long, 'a', None, 'd'),
        rows(&my_long, 'b', Some('x'), 'D'),
    );
    for ((l, r), p) in lefts
        .iter()
        .zip(&rights)
        .zip(rows(&pg_long, 'a', None, 'd'))
    {
        left.exec(&format!("INSERT INTO t VALUES {l}")).await;
        right.exec(&format!("INSERT INTO t VALUES {r}")).await;
        pg.exec(&format!("INSERT INTO t VALUES {p}")).await;
    }
    // Text: 8.4M `é` is 16.8 MB of UTF-8. Text against bytes: 4.2M is 16.8 MB of hex.
    for (side, text) in [(&left, 'é'), (&right, 'è')] {
        side.exec(&format!(
            "INSERT INTO lt VALUES (1, {})",
            my_long(text, 8_400_000)
        ))
        .await;
        side.exec(&format!(
            "INSERT INTO lt VALUES (1000, {})",
            my_long('é', 8_400_000)
        ))
        .await;
        side.exec(&format!(
            "INSERT INTO lt VALUES (2000, {})",
            my_long('é', 4_200_000)
        ))
        .await;
        side.exec(&format!(
            "INSERT INTO lt VALUES (3000, {})",
            my_long(text, 4_200_000)
        ))
        .await;
    }
    for (id, utf8) in [(2000, "C3A9"), (3000, "C3A8")] {
        right
            .exec(&format!(
                "INSERT INTO rb VALUES ({id}, REPEAT(X'{utf8}', 4200000))"
            ))
            .await;
    }
    let srcs = sources(&[
        ("pg", &pg.reader_url),
        ("my", &left.reader_url),
        ("my2", &right.reader_url),
    ])
    .await;
    for (left, query, right_query, differing, rows_read) in [
        (
            "my",
            "SELECT id, a, b FROM t",
            "SELECT id, a, b FROM t",
            &[1, 1000, 2000][..],
            6,
        ),
        (
            "pg",
            "SELECT id, a, b FROM t",
            "SELECT id, a, b FROM t",
            &[1, 1000, 2000],
            8,
        ),
        // As text: keys 1 (too long) and 3000 (fits) differ.
        (
            "my",
            "SELECT id, t FROM lt",
            "SELECT id, t FROM lt",
            &[1, 3000],
            4,
        ),
        // Keys 2000 and 3000, as latin1 text against UTF-8 bytes.
        (
            "my",
            "SELECT id, t FROM lt WHERE id >= 2000",
            "SELECT id, b AS t FROM rb",
            &[3000],
            2,
        ),
    ] {
        for mode in MODES {
            let inv = reconcile_invariant("too-long", (left, query), ("my2", right_query), &["id"]);
            let (found, stats) = evaluate_in(inv, mode, &srcs).await;
            if mode == ReconcileMode::Checksum {
                let compared = stats.compared.unwrap();
                assert_eq!(compared.method, CompareMethod::Checksum, "{left} {query}");
                assert_eq!(compared.rows_streamed, rows_read, "{left} {query}");
            }
            let got: Vec<(ViolationKind, serde_json::Value)> =
                found.iter().map(|v| (v.kind, v.key_json())).collect();
            let want: Vec<_> = differing
                .iter()
                .map(|k| (ViolationKind::Mismatch, json!([k])))
                .collect();
            assert_eq!(got, want, "{left} {query} {mode:?}");
        }
    }
    srcs.close().await;
}

/// Values that differ are never read alike, in any mode: a decimal with more digits than the
/// float it is compared with (key 2), an integer past a double's 2^53 (key 3), a SQLite
/// BOOLEAN holding 2 (key 4) and a SQLite DATE not written in full (key 5). Key 1 holds the
/// same values written as each engine writes them, key 6 numbers a double holds exactly.
#[tokio::test]
async fn values_that_differ_past_a_doubles_precision_or_in_form_are_never_read_alike() {
    let pg = TestPg::new().await;
    pg.exec(
        "CREATE TABLE l (id bigint PRIMARY KEY, amount numeric, big bigint, flag boolean, day date);
         INSERT INTO l VALUES
           (1, 0.1, 9007199254740992, true, '2026-03-01'),
           (2, 0.100000000000000000001, 1, false, '2026-03-01'),
           (3, 0.3, 9007199254740993, false, '2026-03-01'),
           (4, 0.3, 1, true, '2026-03-01'),
           (5, 0.3, 1, false, '2026-03-01'),
           (6, 2.5, -7, false, '2026-12-31');",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let lite = dir.path().join("r.db");
    crate::helpers::sqlite_file(
        &lite,
        "CREATE TABLE r (id INTEGER PRIMARY KEY, amount REAL, big REAL, flag BOOLEAN, day DATE);
         INSERT INTO r VALUES
           (1, 0.1, 9007199254740992.0, 1, '2026-03-01'),
           (2, 0.1, 1.0, 0, '2026-03-01'),
           (3, 0.3, 9007199254740992.0, 0, '2026-03-01'),
           (4, 0.3, 1.0, 2, '2026-03-01'),
           (5, 0.3, 1.0, 0, '2026-3-1'),
           (6, 2.5, -7.0, 0, '2026-12-31');",
    )
    .await;
    let srcs = sources(&[
        ("pg", &pg.reader_url),
        ("lite", &crate::helpers::sqlite_url(&lite)),
    ])
    .await;
    for mode in MODES {
        let inv = reconcile_invariant(
            "precise",
            ("pg", "SELECT id, amount, big, flag, day FROM l"),
            ("lite", "SELECT id, amount, big, flag, day FROM r"),
            &["id"],
        );
        let (found, _) = evaluate_in(inv, mode, &srcs).await;
        let got: Vec<(ViolationKind, serde_json::Value, serde_json::Value)> = found
            .iter()
            .map(|v| {
                let columns = v.evidence["diff"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d["column"].clone())
                    .collect();
                (v.kind, v.key_json(), columns)
            })
            .collect();
        assert_eq!(
            got,
            [(2, "amount"), (3, "big"), (4, "flag"), (5, "day")].map(|(k, c)| (
                ViolationKind::Mismatch,
                json!([k]),
                json!([c])
            )),
            "{mode:?}"
        );
    }
    srcs.close().await;
}

/// JSON compares by value (`1 = 1.0`, members in any order), never through a double: text
/// holding `0.1000000000000000001` differs from `0.1` (key 2), and JSON holding it fails the
/// read, saying how to compare it as written, rather than read as the double nearest it. An
/// object with a member twice, which MariaDB reads by the first and PostgreSQL by the last,
/// equals no JSON (key 5).
#[tokio::test]
async fn json_numbers_compare_by_value_and_one_a_double_does_not_keep_is_never_rounded() {
    let (pg, my) = (TestPg::new().await, TestMysql::new().await);
    pg.exec(
        r#"CREATE TABLE l (id bigint PRIMARY KEY, doc jsonb);
           INSERT INTO l VALUES (1, '{"a": 1.0, "b": [2.50, 3]}'), (2, '{"a": 0.1}'),
                                (3, '{"a": 12345678901234567890}'), (5, '{"a": 2}');"#,
    )
    .await;
    // MariaDB's JSON is text in utf8mb4_bin: it reads as bytes holding JSON.
    my.exec(
        r#"CREATE TABLE r (id BIGINT PRIMARY KEY, doc JSON);
           INSERT INTO r VALUES (1, '{"b": [2.5, 3.0], "a": 1}'), (2, '{"a": 0.1000000000000000001}'),
                                (3, '{"a": 12345678901234567890}'), (5, '{"a": 1, "a": 2}');"#,
    )
    .await;
    let srcs = sources(&[("pg", &pg.reader_url), ("my", &my.reader_url)]).await;
    let inv = || {
        reconcile(
            "SELECT id, doc FROM l",
            "SELECT id, doc FROM r",
            &["id"],
            None,
        )
    };
    // (JSON has no checksum form: such an invariant streams.)
    for mode in [ReconcileMode::Stream, ReconcileMode::Auto] {
        let (found, _) = evaluate_in(inv(), mode, &srcs).await;
        let got: Vec<(ViolationKind, serde_json::Value)> =
            found.iter().map(|v| (v.kind, v.key_json())).collect();
        assert_eq!(
            got,
            [2, 5].map(|k| (ViolationKind::Mismatch, json!([k]))),
            "{mode:?}"
        );
    }
    pg.exec(r#"INSERT INTO l VALUES (4, '[0.1000000000000000001]')"#)
        .await;
    let err = engine::evaluate(&inv(), &srcs, chrono::Utc::now(), &mut Collect::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("holds JSON with the number 0.1000000000000000001, which has more digits than trueup's JSON numbers keep (a double's), so two different values would compare equal; compare it as written, reading it as text with `CAST(doc AS TEXT) AS doc`"),
        "{err}"
    );
    srcs.close().await;
}

/// With `expect: at_least_one`, a key with several right rows holds when one of them matches
/// its left row (keys 1, 2, 6; and 10, whose right rows come right after the missing 9), and
/// is a mismatch when none does (key 3, whose evidence shows the first and says how many
/// there were), as with one right row (key 4).
#[tokio::test]
async fn at_least_one_right_row_must_match_and_a_key_none_of_whose_rows_match_is_a_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let (l, r) = (dir.path().join("l.db"), dir.path().join("r.db"));
    crate::helpers::sqlite_file(
        &l,
        "CREATE TABLE orders (id INTEGER, amount INTEGER);
         INSERT INTO orders VALUES (1, 10), (2, 20), (3, 30), (4, 40), (6, 60), (9, 90), (10, 100);",
    )
    .await;
    crate::helpers::sqlite_file(
        &r,
        "CREATE TABLE shipments (id INTEGER, amount INTEGER);
         INSERT INTO shipments VALUES (1, 10), (1, 10), (2, 21), (2, 20), (3, 31), (3, 32),
                                      (4, 41), (5, 50), (6, 60), (6, 61), (10, 101), (10, 100);",
    )
    .await;
    let srcs = sources(&[
        ("pg", &crate::helpers::sqlite_url(&l)),
        ("my", &crate::helpers::sqlite_url(&r)),
    ])
    .await;
    let mut inv = reconcile(
        "SELECT id, amount FROM orders",
        "SELECT id, amount FROM shipments",
        &["id"],
        None,
    );
    reconcile_spec(&mut inv).expect = trueup::domain::Expect::AtLeastOne;
    let (found, _) = evaluate_in(inv, ReconcileMode::Stream, &srcs).await;
    let got: Vec<(ViolationKind, serde_json::Value, serde_json::Value)> = found
        .iter()
        .map(|v| (v.kind, v.key_json(), v.evidence["right_rows"].clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (ViolationKind::Mismatch, json!([3]), json!(2)),
            (ViolationKind::Mismatch, json!([4]), serde_json::Value::Null),
            (ViolationKind::Extra, json!([5]), serde_json::Value::Null),
            (ViolationKind::Missing, json!([9]), serde_json::Value::Null),
        ]
    );
    srcs.close().await;
}

#[tokio::test]
async fn beyond_the_violation_budget_violations_are_counted_not_stored_and_nothing_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let (l, r) = (dir.path().join("l.db"), dir.path().join("r.db"));
    crate::helpers::sqlite_file(
        &l,
        "CREATE TABLE t (id INTEGER); INSERT INTO t VALUES (1),(2),(3),(4),(5),(6);",
    )
    .await;
    crate::helpers::sqlite_file(&r, "CREATE TABLE t (id INTEGER); INSERT INTO t VALUES (6);").await;
    let srcs = sources(&[
        ("pg", &crate::helpers::sqlite_url(&l)),
        ("my", &crate::helpers::sqlite_url(&r)),
    ])
    .await;
    let mut inv = reconcile("SELECT id FROM t", "SELECT id FROM t", &["id"], None);
    inv.violation_budget = 2;
    let store = store::open(&SecretUrl::new(format!(
        "sqlite://{}",
        dir.path().join("s.db").display()
    )))
    .await
    .unwrap();
    let outcome = run_invariant(&inv, &srcs, store.as_ref()).await.unwrap();
    assert_eq!(outcome.stats.observed, 5);
    assert!(outcome.stats.truncated);
    assert_eq!(outcome.change.unwrap().new, 2);
    // The stored ones are the first in key order.
    let stored = keys_by_kind(store.as_ref(), StatusFilter::Active).await;
    assert_eq!(
        stored,
        BTreeMap::from([("missing".to_owned(), BTreeSet::from([1, 2]))])
    );
    // A truncated run cannot tell what it did not store, so it resolves nothing.
    inv.violation_budget = 1;
    crate::helpers::sqlite_file(&r, "INSERT INTO t VALUES (1);").await;
    let outcome = run_invariant(&inv, &srcs, store.as_ref()).await.unwrap();
    assert_eq!(outcome.change.unwrap().resolved, 0);
    srcs.close().await;
    store.close().await;
}

#[tokio::test]
async fn grace_keeps_recent_rows_out_of_the_report_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let (l, r) = (dir.path().join("l.db"), dir.path().join("r.db"));
    crate::helpers::sqlite_file(
        &l,
        "CREATE TABLE t (id INTEGER, v INTEGER, at DATETIME);
         INSERT INTO t VALUES (1, 1, datetime('now', '-2 hours')), (2, 1, datetime('now', '-1 minutes')),
                              (3, 1, datetime('now', '-2 hours')), (4, 1, datetime('now', '-1 minutes'));",
    )
    .await;
    crate::helpers::sqlite_file(
        &r,
        "CREATE TABLE t (id INTEGER, v INTEGER, at DATETIME);
         INSERT INTO t VALUES (3, 2, datetime('now', '-2 hours')), (4, 2, datetime('now', '-1 minutes')),
                              (5, 1, datetime('now', '-2 hours')), (6, 1, datetime('now', '-1 minutes'));",
    )
    .await;
    let srcs = sources(&[
        ("pg", &crate::helpers::sqlite_url(&l)),
        ("my", &crate::helpers::sqlite_url(&r)),
    ])
    .await;
    let mut inv = reconcile(
        "SELECT id, v, at FROM t",
        "SELECT id, v, at FROM t",
        &["id"],
        Some(&["v"]),
    );
    inv.time_column = Some(ColumnName::parse("at").unwrap());
    inv.grace = Some(trueup::domain::HumanDuration::parse("15m").unwrap());
    let mut found = Collect::default();
    let stats = engine::evaluate(&inv, &srcs, chrono::Utc::now(), &mut found)
        .await
        .unwrap();
    let got: Vec<(ViolationKind, serde_json::Value)> =
        found.0.iter().map(|v| (v.kind, v.key_json())).collect();
    assert_eq!(
        got,
        vec![
            (ViolationKind::Missing, json!([1])),
            (ViolationKind::Mismatch, json!([3])),
            (ViolationKind::Extra, json!([5])),
        ]
    );
    assert_eq!(stats.not_yet_due, 3);
    // The event time travels with the violation.
    assert!(found.0[0].event_at.is_some());
    srcs.close().await;
}

#[tokio::test]
async fn both_sides_on_one_source_of_one_connection_fail_at_once_saying_to_raise_its_pool_size() {
    let pg = TestPg::new().await;
    pg.exec(
        "CREATE TABLE l (id int PRIMARY KEY); INSERT INTO l SELECT generate_series(1, 20000);
         CREATE TABLE r (id int PRIMARY KEY); INSERT INTO r SELECT id FROM l WHERE id <> 777;",
    )
    .await;
    let open = |pool_size: u32| {
        let mut cfg = crate::helpers::sql_source("pg", &pg.reader_url);
        cfg.pool_size = pool_size;
        let configs = BTreeMap::from([(cfg.name.clone(), cfg.into())]);
        async move { trueup::source::Sources::open_all(&configs).await.unwrap() }
    };
    let mut inv = reconcile_invariant(
        "one-source",
        ("pg", "SELECT id FROM l"),
        ("pg", "SELECT id FROM r"),
        &["id"],
    );
    for mode in [ReconcileMode::Stream, ReconcileMode::Checksum] {
        reconcile_spec(&mut inv).mode = mode;
        // One connection: the second side's read would wait on the first until the pool gave
        // up (15 s, "pool timed out"); it is refused before anything is read.
        let srcs = open(1).await;
        let started = std::time::Instant::now();
        let err = engine::evaluate(&inv, &srcs, chrono::Utc::now(), &mut Collect::default())
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{mode:?}"
        );
        assert_eq!(
            err.to_string(),
            "source `pg` has pool_size 1, and this reconcile reads both of its sides from it at once, each on a connection of its own: set `pool_size: 2` or more on it",
            "{mode:?}"
        );
        srcs.close().await;
        // Two: it runs, and finds the one missing key.
        let srcs = open(2).await;
        let mut found = Collect::default();
        engine::evaluate(&inv, &srcs, chrono::Utc::now(), &mut found)
            .await
            .unwrap();
        let keys: Vec<String> = found.0.iter().map(|v| v.key_json().to_string()).collect();
        assert_eq!(keys, vec!["[777]"], "{mode:?}");
        srcs.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconciles_at_once_on_the_same_databases_wait_their_turn_instead_of_holding_half_a_pair() {
    let (pg, my) = (TestPg::new().await, TestMysql::new().await);
    // Enough rows that a side read alone fills its channel and waits for the merge.
    pg.exec(
        "CREATE TABLE l (id int PRIMARY KEY, note text);
         INSERT INTO l SELECT g, repeat('x', 40) FROM generate_series(1, 60000) g;
         CREATE TABLE r (id int PRIMARY KEY, note text);
         INSERT INTO r SELECT id, note FROM l WHERE id <> 777;",
    )
    .await;
    my.exec(
        "CREATE TABLE m (id INT PRIMARY KEY, note TEXT);
         INSERT INTO m SELECT seq, REPEAT('x', 40) FROM seq_1_to_60000 WHERE seq <> 888;",
    )
    .await;
    let mut configs = BTreeMap::new();
    for (name, url, pool_size) in [
        ("pg", &pg.reader_url, 2),
        ("pga", &pg.reader_url, 1),
        ("my", &my.reader_url, 1),
    ] {
        let mut cfg = crate::helpers::sql_source(name, url);
        cfg.pool_size = pool_size;
        configs.insert(cfg.name.clone(), cfg.into());
    }
    let srcs = trueup::source::Sources::open_all(&configs).await.unwrap();
    let invariant = |name: &str, left: (&str, &str), right: (&str, &str)| {
        let mut inv = reconcile_invariant(name, left, right, &["id"]);
        reconcile_spec(&mut inv).mode = ReconcileMode::Stream;
        inv
    };
    // Four runs wanting both of a source's two connections, and two reading two sources of
    // one connection each the other way round: without turns, each could hold one connection
    // and wait for another until the pool gave up (15 s).
    let runs = [
        invariant("pg-1", ("pg", "SELECT * FROM l"), ("pg", "SELECT * FROM r")),
        invariant("pg-2", ("pg", "SELECT * FROM l"), ("pg", "SELECT * FROM r")),
        invariant("pg-3", ("pg", "SELECT * FROM l"), ("pg", "SELECT * FROM r")),
        invariant("pg-4", ("pg", "SELECT * FROM l"), ("pg", "SELECT * FROM r")),
        invariant(
            "pga-my",
            ("pga", "SELECT * FROM l"),
            ("my", "SELECT * FROM m"),
        ),
        invariant(
            "my-pga",
            ("my", "SELECT * FROM m"),
            ("pga", "SELECT * FROM l"),
        ),
    ];
    // (A run that waited for a connection until the pool gave up ends in its error here.)
    // Each run on a task of its own, as the scheduler's loops are, on four threads.
    let srcs = std::sync::Arc::new(srcs);
    let found = futures_util::future::join_all(runs.into_iter().map(|inv| {
        let srcs = std::sync::Arc::clone(&srcs);
        tokio::spawn(async move {
            let srcs = &*srcs;
            let inv = &inv;
            let mut found = Collect::default();
            engine::evaluate(inv, srcs, chrono::Utc::now(), &mut found)
                .await
                .map(|_| {
                    found
                        .0
                        .iter()
                        .map(|v| (v.kind.as_str().to_owned(), v.key_json().to_string()))
                        .collect::<Vec<_>>()
                })
                .map_err(|e| e.to_string())
        })
    }))
    .await
    .into_iter()
    .map(|joined| joined.expect("no run panics"))
    .collect::<Vec<_>>();
    let missing = |key: &str| Ok(vec![("missing".to_owned(), key.to_owned())]);
    let extra = |key: &str| Ok(vec![("extra".to_owned(), key.to_owned())]);
    assert_eq!(
        found,
        vec![
            missing("[777]"),
            missing("[777]"),
            missing("[777]"),
            missing("[777]"),
            missing("[888]"),
            extra("[888]"),
        ]
    );
    srcs.close().await;
}

/// Sources holding one PostgreSQL source `pg` of two connections (with this statement
/// timeout, if given), the database it reads and the source's name.
async fn one_source_of_two_connections(
    statement_timeout: Option<&str>,
) -> (TestPg, trueup::source::Sources, trueup::domain::SourceName) {
    let pg = TestPg::new().await;
    let mut cfg = crate::helpers::sql_source("pg", &pg.reader_url);
    cfg.pool_size = 2;
    if let Some(t) = statement_timeout {
        cfg.statement_timeout = trueup::domain::HumanDuration::parse(t).unwrap();
    }
    let configs = BTreeMap::from([(cfg.name.clone(), cfg.into())]);
    let srcs = trueup::source::Sources::open_all(&configs).await.unwrap();
    (pg, srcs, trueup::domain::SourceName::parse("pg").unwrap())
}

#[tokio::test]
async fn a_reconcile_waiting_for_its_turn_fails_at_once_when_the_sources_close() {
    let (_pg, srcs, pg_name) = one_source_of_two_connections(None).await;
    // One reconcile holds both connections' turns; a second, polled once, queues for them
    // (no sleep: the poll itself is what puts it in the queue).
    let held = srcs.for_reconcile(&pg_name, &pg_name).await.unwrap();
    let waiting = srcs.for_reconcile(&pg_name, &pg_name);
    tokio::pin!(waiting);
    assert!(
        futures_util::FutureExt::now_or_never(waiting.as_mut()).is_none(),
        "the second waits its turn"
    );
    srcs.close().await;
    let err = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("closing ends the wait at once")
        .err()
        .expect("a closed source gives no turn");
    assert_eq!(
        err.to_string(),
        "source `pg`: cannot connect: the source was closed (trueup is shutting down)"
    );
    drop(held);
}

#[tokio::test]
async fn a_reconcile_waits_for_a_connection_another_read_holds_instead_of_taking_the_pool_short() {
    let (_pg, srcs, pg_name) = one_source_of_two_connections(None).await;
    // A check's read: its connection is out (and its turn taken) until its query ends.
    let mut check = srcs
        .get(&pg_name)
        .unwrap()
        .read(crate::helpers::read_request(
            "SELECT 1 AS id FROM pg_sleep(1)",
        ))
        .await
        .unwrap();
    // A reconcile reading both sides there needs both connections: it waits for the check,
    // holding none, instead of taking one and waiting on the pool for the other (which gave
    // up after 15 s when the check ran longer).
    let reconcile = srcs.for_reconcile(&pg_name, &pg_name);
    tokio::pin!(reconcile);
    assert!(
        futures_util::FutureExt::now_or_never(reconcile.as_mut()).is_none(),
        "one of the two connections is the check's"
    );
    let mut rows = 0;
    while let Some(batch) = check.next_batch().await {
        rows += batch.unwrap().len();
    }
    assert_eq!(rows, 1);
    let view = tokio::time::timeout(std::time::Duration::from_secs(5), reconcile)
        .await
        .expect("the turn comes once the check's connection is back")
        .unwrap();
    drop(view);
    srcs.close().await;
}

#[tokio::test]
async fn a_read_queued_behind_a_reconcile_waits_its_turn_past_its_own_deadline_instead_of_failing_as_stalled()
 {
    // A read's deadline: 300 ms and 5 s more (see `Source::read`).
    let (_pg, srcs, pg_name) = one_source_of_two_connections(Some("300ms")).await;
    // A reconcile holds both turns for longer than a read's deadline.
    let reconcile = srcs.for_reconcile(&pg_name, &pg_name).await.unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(6500)).await;
        drop(reconcile);
    });
    let queued = std::time::Instant::now();
    let mut check = srcs
        .get(&pg_name)
        .unwrap()
        .read(crate::helpers::read_request("SELECT 7 AS id"))
        .await
        .expect("a read waiting for its turn is queued, not stalled");
    assert!(queued.elapsed() >= std::time::Duration::from_secs(6));
    let mut rows = Vec::new();
    while let Some(batch) = check.next_batch().await {
        rows.extend(batch.unwrap());
    }
    assert_eq!(rows, vec![vec![trueup::domain::Value::Int(7)]]);
    release.await.unwrap();
    srcs.close().await;
}
