//! Sources are read-only for real: every known way around a read-only transaction leaves the
//! source unchanged, and the next query on the same pooled connection is still read-only.

use std::collections::BTreeMap;

use sqlx::Executor;
use trueup::config::{PrivilegedPolicy, WritablePolicy};
use trueup::domain::{ColumnName, SourceName, Value};
use trueup::source::{ReadRequest, Source, SourceError, Sources};

use crate::helpers::{
    TestMysql, TestPg, read_request, source, sql_source, sqlite_file, sqlite_url,
};

/// Reads every row of `query`, or the first error.
async fn read_all(src: &Source, query: &str) -> Result<Vec<Vec<Value>>, SourceError> {
    let mut stream = src.read(read_request(query)).await?;
    let mut rows = Vec::new();
    while let Some(batch) = stream.next_batch().await {
        rows.extend(batch?);
    }
    Ok(rows)
}

async fn scalar(src: &Source, query: &str) -> Value {
    let rows = read_all(src, query)
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"));
    rows[0][0].clone()
}

/// A source with a one-connection pool, so every query runs on the same session.
fn single_connection(name: &str, url: &str) -> Source {
    let mut cfg = sql_source(name, url);
    cfg.pool_size = 1;
    Source::open(&cfg.clone().into()).unwrap()
}

#[tokio::test]
async fn postgres_bypasses_leave_the_source_unchanged_and_the_session_read_only() {
    let db = TestPg::new().await;
    let suffix = db.name.rsplit('_').next().unwrap().to_owned();
    let (ro, rw) = (format!("trueup_ro_{suffix}"), format!("trueup_rw_{suffix}"));
    db.exec(&format!(
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10);
         CREATE ROLE {rw} NOLOGIN; GRANT SELECT, INSERT, UPDATE, DELETE ON t TO {rw};
         CREATE ROLE {ro} LOGIN IN ROLE {rw} NOINHERIT; GRANT SELECT ON t TO {ro};"
    ))
    .await;
    let url = format!(
        "{}/{}",
        crate::helpers::pg_server().replace("postgres@", &format!("{ro}@")),
        db.name
    );
    let src = single_connection("pg", &url);

    let attempts = [
        // The session default flipped from inside a function call.
        "SELECT set_config('default_transaction_read_only', 'off', false) AS x",
        // The transaction itself flipped.
        "SELECT set_config('transaction_read_only', 'off', false) AS x",
        // Several statements in one string.
        "SELECT 1 AS id; COMMIT; DELETE FROM t",
        "SELECT 1 AS id; COMMIT; SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        // Escalating to a role that may write, as a statement and through set_config.
        &format!("SET ROLE {rw}"),
        &format!("SELECT set_config('role', '{rw}', false) AS x"),
        // Writes disguised as reads.
        "WITH d AS (DELETE FROM t RETURNING id) SELECT id FROM d",
        "DELETE FROM t RETURNING id",
        "COMMIT",
    ];
    for attempt in attempts {
        let _ = read_all(&src, attempt).await;
        // Whatever the attempt did, the next query on the same connection is still guarded.
        assert_eq!(
            scalar(&src, "SELECT current_setting('transaction_read_only') AS v").await,
            Value::Text("on".into()),
            "after {attempt}"
        );
        assert_eq!(
            scalar(
                &src,
                "SELECT current_setting('default_transaction_read_only') AS v"
            )
            .await,
            Value::Text("on".into()),
            "after {attempt}"
        );
        assert_eq!(
            scalar(&src, "SELECT current_user::text AS u").await,
            Value::Text(ro.as_str().into()),
            "after {attempt}"
        );
        // And a write through the guarded path still fails.
        assert!(
            read_all(
                &src,
                "WITH d AS (DELETE FROM t RETURNING id) SELECT id FROM d"
            )
            .await
            .is_err()
        );
    }
    let mut admin = db.connect().await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(left, 10, "the source table must be untouched");
    src.close().await;

    // The role could write through its membership: trueup says so, and refuses when asked to.
    let mut cfg = sql_source(
        "pg",
        &url.replace(&ro, &rw)
            .replace(&format!("{rw}@"), "postgres@"),
    );
    cfg.on_writable = WritablePolicy::Refuse;
    let err = Sources::open_all(&BTreeMap::from([(
        SourceName::parse("pg").unwrap(),
        cfg.into(),
    )]))
    .await
    .err()
    .expect("a superuser source must be refused under on_writable: refuse");
    assert!(err.to_string().contains("superuser"), "{err}");
    let ro_src = Source::open(&source("pg", &url)).unwrap();
    let caps = ro_src.audit_role().await.unwrap().writable;
    assert!(
        caps.iter()
            .any(|c| c.contains(&format!("SET ROLE to {rw}"))),
        "{caps:?}"
    );
    ro_src.close().await;
    admin
        .execute(format!("DROP OWNED BY {ro}, {rw}; DROP ROLE {ro}; DROP ROLE {rw};").as_str())
        .await
        .unwrap();
}

#[tokio::test]
async fn mysql_bypasses_leave_the_source_unchanged_and_the_session_read_only() {
    let db = TestMysql::new().await;
    db.exec(
        "CREATE TABLE t (id INT PRIMARY KEY);
         INSERT INTO t VALUES (1),(2),(3),(4),(5),(6),(7),(8),(9),(10);
         CREATE FUNCTION wipe() RETURNS INT MODIFIES SQL DATA BEGIN DELETE FROM t; RETURN 1; END",
    )
    .await;
    // As root, accepted with `allow_privileged_role`: the guards hold even for a user who
    // could lift them.
    let mut cfg = sql_source("my", &db.url);
    cfg.pool_size = 1;
    cfg.on_privileged = PrivilegedPolicy::Allow;
    let src = Source::open(&cfg.clone().into()).unwrap();
    let attempts = [
        "SELECT 1 AS id; DELETE FROM t",
        "SET SESSION TRANSACTION READ WRITE",
        "SELECT 1 AS id; COMMIT; DELETE FROM t",
        "DELETE FROM t",
        // A function that writes, called from a SELECT.
        "SELECT wipe() AS id",
        "COMMIT",
    ];
    for attempt in attempts {
        let _ = read_all(&src, attempt).await;
        assert_eq!(
            scalar(&src, "SELECT @@session.tx_read_only AS v").await,
            Value::Int(1),
            "after {attempt}"
        );
        assert!(
            read_all(&src, "SELECT wipe() AS id").await.is_err(),
            "after {attempt}"
        );
    }
    let mut admin = db.connect().await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(left, 10, "the source table must be untouched");
    src.close().await;
}

#[tokio::test]
async fn sqlite_sources_are_opened_read_only_and_refuse_several_statements() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.db");
    sqlite_file(
        &path,
        "CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1),(2),(3);",
    )
    .await;
    let src = single_connection("shop", &sqlite_url(&path));
    for attempt in [
        "DELETE FROM t",
        "SELECT 1 AS id); DELETE FROM t; SELECT (1",
        "SELECT 1 AS id; PRAGMA query_only = OFF",
        "SELECT 1 AS id; ATTACH DATABASE 'other.db' AS o",
        "WITH d AS (DELETE FROM t RETURNING id) SELECT id FROM d",
    ] {
        let err = read_all(&src, attempt).await.err();
        assert!(err.is_some(), "{attempt} must fail");
        assert_eq!(
            scalar(&src, "SELECT query_only FROM pragma_query_only()").await,
            Value::Int(1),
            "after {attempt}"
        );
    }
    let err = read_all(&src, "SELECT 1 AS id; DELETE FROM t")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than one statement"), "{err}");
    assert_eq!(scalar(&src, "SELECT count(*) FROM t").await, Value::Int(3));
    src.close().await;
}

#[tokio::test]
async fn a_query_without_a_needed_column_names_what_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    sqlite_file(&path, "CREATE TABLE t (id INTEGER, amount INTEGER);").await;
    let src = Source::open(&source("shop", &sqlite_url(&path))).unwrap();
    let err = src
        .read(ReadRequest {
            query: trueup::domain::Read::Sql("SELECT id AS payment_id, amount FROM t".into()),
            needed: Vec::new(),
            order_by: vec![ColumnName::parse("id").unwrap()],
            filter: Vec::new(),
            digest_long_except: None,
            key_ranges: None,
            keys: None,
            changed_since: None,
        })
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no column `id`"), "{err}");
    assert!(err.contains("payment_id, amount"), "{err}");
    src.close().await;
}

#[tokio::test]
async fn a_query_over_the_statement_timeout_is_stopped() {
    let db = TestPg::new().await;
    let mut cfg = sql_source("pg", &db.reader_url);
    cfg.statement_timeout = trueup::domain::HumanDuration::parse("300ms").unwrap();
    let src = Source::open(&cfg.clone().into()).unwrap();
    let started = std::time::Instant::now();
    let err = read_all(&src, "SELECT pg_sleep(5)::text AS x")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("statement timeout"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    src.close().await;

    let my = TestMysql::new().await;
    let mut cfg = sql_source("my", &my.reader_url);
    cfg.statement_timeout = trueup::domain::HumanDuration::parse("300ms").unwrap();
    let src = Source::open(&cfg.clone().into()).unwrap();
    let started = std::time::Instant::now();
    let result = read_all(
        &src,
        "SELECT COUNT(*) AS n FROM information_schema.COLUMNS a, information_schema.COLUMNS b, information_schema.COLUMNS c",
    )
    .await;
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("max_statement_time") || err.contains("interrupted"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    src.close().await;
}

#[tokio::test]
async fn postgres_numerics_read_exactly_as_their_text_says() {
    let db = TestPg::new().await;
    let src = Source::open(&source("pg", &db.reader_url)).unwrap();
    let literals = [
        "0",
        "1",
        "-1",
        "0.5",
        "-0.5",
        "10.50",
        "0.0001",
        "0.00010",
        "12345.6789",
        "9999.9999",
        "10000",
        "100000000",
        "123456789012345678.1234567890",
        "-98765.4321000",
        "0.000000000000000000000000001",
        "79228162514264337593543950335",
        "1e20",
        "5e-3",
        "1.000000000000000000000000000",
    ];
    let values: Vec<String> = literals.iter().map(|l| format!("({l}::numeric)")).collect();
    let rows = read_all(
        &src,
        &format!(
            "SELECT v, v::text AS t FROM (VALUES {}) AS x(v)",
            values.join(",")
        ),
    )
    .await
    .unwrap();
    assert_eq!(rows.len(), literals.len());
    for row in rows {
        let Value::Text(t) = &row[1] else {
            panic!("{row:?}")
        };
        let want = rust_decimal::Decimal::from_str_exact(t).unwrap();
        assert_eq!(row[0], Value::Decimal(want), "{t}");
        let Value::Decimal(got) = &row[0] else {
            unreachable!()
        };
        assert_eq!(got.to_string(), want.to_string(), "scale kept for {t}");
    }
    // A display scale past a Decimal's 28 places, or a scaled value past its 96 bits, reads as
    // its significant digits (the scale's trailing zeros dropped).
    let rows = read_all(
        &src,
        "SELECT 1.5::numeric(40,30) AS a, 100000000000::numeric(36,18) AS b, \
         -0.00000123::numeric(50,40) AS c",
    )
    .await
    .unwrap();
    assert_eq!(
        rows[0],
        vec![
            Value::Decimal(rust_decimal::Decimal::new(15, 1)),
            Value::Decimal(rust_decimal::Decimal::new(100_000_000_000, 0)),
            Value::Decimal(rust_decimal::Decimal::new(-123, 8)),
        ]
    );
    // Beyond what a Decimal holds: a clear error, not a wrong number.
    let err = read_all(
        &src,
        "SELECT 0.1234567890123456789012345678901::numeric AS v",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("more digits than trueup's decimals hold"),
        "{err}"
    );
    let err = read_all(&src, "SELECT 'NaN'::numeric AS v")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("column `v`"), "{err}");
    src.close().await;
}
