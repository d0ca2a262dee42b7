//! Values a source sends that trueup cannot compare: refused by column, the run failed, the
//! connection never pooled.

use super::*;
use crate::helpers::sql_source;

#[tokio::test]
async fn a_postgres_value_the_driver_cannot_decode_fails_the_run_and_resolves_nothing() {
    let db = TestPg::new().await;
    db.exec(
        "CREATE TABLE pay (id int PRIMARY KEY, captured_at timestamp, on_day date, at timestamptz);
         INSERT INTO pay VALUES (1, '2026-01-01', '2026-01-01', '2026-01-01'),
                                (2, '2026-01-02', '2026-01-02', '2026-01-02'),
                                (3, '2026-01-03', '2026-01-03', '2026-01-03');
         CREATE TABLE ledger (id int PRIMARY KEY, captured_at timestamp, on_day date, at timestamptz);",
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let config = project(
        tmp.path(),
        &db.reader_url,
        r#"invariants:
  - name: pay-listed
    check:
      source: pg
      query: "SELECT id, captured_at, on_day, at FROM pay"
      key: id
  - name: pay-in-ledger
    reconcile:
      left: {source: pg, query: "SELECT id, captured_at, on_day, at FROM ledger"}
      right: {source: pg, query: "SELECT id, captured_at, on_day, at FROM pay"}
      key: id
      compare: [captured_at, on_day, at]
"#,
    );
    let (code, first, text) = check_json(&config);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(first[0]["change"]["new"], 3, "{text}");
    assert_eq!(first[1]["change"]["new"], 3, "three rows are extra: {text}");

    // Each value the driver used to panic on (and return "no rows" for), in each column type.
    for (column, value, says) in [
        ("captured_at", "'infinity'", "holds `infinity`"),
        ("captured_at", "'-infinity'", "holds `-infinity`"),
        (
            "captured_at",
            "'294276-12-31 23:59:59'",
            "outside the dates and times",
        ),
        ("on_day", "'infinity'", "holds `infinity`"),
        ("on_day", "'5874897-12-31'", "outside the dates and times"),
        ("at", "'infinity'", "holds `infinity`"),
        ("at", "'-infinity'", "holds `-infinity`"),
    ] {
        db.exec(&format!(
            "INSERT INTO pay (id, {column}) VALUES (4, {value})"
        ))
        .await;
        let (code, runs, text) = check_json(&config);
        assert_eq!(
            code,
            Some(2),
            "{column} = {value}: a failed run exits 2: {text}"
        );
        for run in runs.as_array().unwrap() {
            assert_eq!(run["status"], "failed", "{column} = {value}: {text}");
            assert_eq!(run["change"], serde_json::Value::Null, "{text}");
            let error = run["error"].as_str().unwrap();
            assert!(
                error.contains(&format!("column `{column}`")) && error.contains(says),
                "{column} = {value}: the error names the column and the value: {error}"
            );
            assert!(
                error.contains("isfinite") || error.contains("AS TEXT"),
                "the error says what to write in the query: {error}"
            );
        }
        db.exec("DELETE FROM pay WHERE id = 4").await;
    }

    // Nothing was resolved by the failed runs: the next good run finds the same three still
    // open, none new, none reopened.
    let (code, runs, text) = check_json(&config);
    assert_eq!(code, Some(1), "{text}");
    for run in runs.as_array().unwrap() {
        assert_eq!(run["status"], "succeeded", "{text}");
        assert_eq!(run["change"]["new"], 0, "{text}");
        assert_eq!(run["change"]["reopened"], 0, "{text}");
        assert_eq!(run["change"]["resolved"], 0, "{text}");
        assert_eq!(run["open_after"], 3, "{text}");
    }
}

#[tokio::test]
async fn a_value_that_fails_to_decode_does_not_leave_its_connection_in_the_pool() {
    let db = TestPg::new().await;
    let mut cfg = sql_source("pg", &db.reader_url);
    cfg.pool_size = 1;
    let src = Source::open(&cfg.clone().into()).unwrap();
    for query in [
        "SELECT 1 AS id, 'infinity'::timestamp AS t",
        "SELECT 1 AS id, '-infinity'::date AS d",
        "SELECT 1 AS id, '24:00:00'::time AS t",
        "SELECT 1 AS id, 'NaN'::numeric AS n",
        "SELECT 1 AS id, 'Infinity'::numeric AS n",
        "SELECT 1 AS id, 1e40::numeric AS n",
    ] {
        let err = read_all(&src, query)
            .await
            .expect_err("a value trueup cannot compare fails the read");
        let SourceError::Decode {
            column, message, ..
        } = &err
        else {
            panic!("{query}: {err}");
        };
        assert_ne!(column, "id", "{query}: {err}");
        assert!(!message.is_empty(), "{query}");
        // The one connection was closed, not pooled mid-transaction: the next read works.
        let rows = read_all(&src, "SELECT 2 AS id, '2026-01-01'::timestamp AS t")
            .await
            .unwrap_or_else(|e| panic!("after {query}: {e}"));
        assert_eq!(rows.len(), 1);
    }
    // The edges that are values are read as values.
    let rows = read_all(
        &src,
        "SELECT '4713-01-01 BC'::date AS d, '262142-12-31'::date AS late, \
                '23:59:59.999999'::time AS t, 'NaN'::float8 AS f",
    )
    .await
    .unwrap();
    assert_eq!(rows[0][0].to_string(), "-4712-01-01");
    assert_eq!(rows[0][1].to_string(), "+262142-12-31");
    assert_eq!(rows[0][2].to_string(), "23:59:59.999999");
}

#[tokio::test]
async fn mysql_zero_dates_read_as_null_and_a_time_past_a_day_fails_with_its_column() {
    let db = TestMysql::new().await;
    db.exec(
        "SET SESSION sql_mode = '';
         CREATE TABLE pay (id int PRIMARY KEY, on_day date, at datetime, took time);
         INSERT INTO pay VALUES (1, '0000-00-00', '0000-00-00 00:00:00', '838:59:59'),
                                (2, '2026-01-01', '2026-01-01 10:00:00', '-01:00:00');",
    )
    .await;
    let src = Source::open(&source("my", &db.reader_url)).unwrap();
    // MySQL's zero date is its stand-in for "no date": it reads as NULL, like NULLIF would.
    let rows = read_all(&src, "SELECT id, on_day, at FROM pay ORDER BY id")
        .await
        .unwrap();
    assert_eq!(rows[0][1..], [Value::Null, Value::Null]);
    assert_eq!(rows[1][1].to_string(), "2026-01-01");
    for query in [
        "SELECT id, took FROM pay WHERE id = 1",
        "SELECT id, took FROM pay WHERE id = 2",
    ] {
        let err = read_all(&src, query).await.expect_err("not a time of day");
        let SourceError::Decode {
            column, message, ..
        } = &err
        else {
            panic!("{query}: {err}")
        };
        assert_eq!(column, "took", "{err}");
        assert!(
            message.contains("not a time of day") && message.contains("CAST(took AS CHAR)"),
            "{err}"
        );
    }
}
