//! MySQL's bulk read (src/source/mysql_bulk.rs): the same values as sqlx reads, its
//! connection gone with the read, and a read cut off or abandoned never taken for a whole one.
//! Every read here is of a statement without parameters: the first test shows such a read is
//! the bulk one (its connection closes with it).

use std::time::{Duration, Instant};

use super::*;
use crate::helpers::sql_source;

/// Two hundred million rows: read to the end, they would take minutes.
const ENDLESS: &str = "SELECT seq AS n FROM seq_1_to_200000000";
/// What a statement running [`ENDLESS`] mentions.
const ENDLESS_TABLE: &str = "seq_1_to_200000000";
/// No row for 30 s: the reading thread waits on the server, not on its channel.
const SLEEPING: &str = "SELECT SLEEP(30) AS slept";

/// The ids of the reader's connections whose statement mentions `text`, as root sees them.
async fn running(db: &TestMysql, text: &str) -> Vec<i64> {
    let mut admin = db.connect().await;
    sqlx::query_scalar(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ? AND INFO LIKE CONCAT('%', ?, '%')",
    )
    .bind(format!("{}_r", db.name))
    .bind(text)
    .fetch_all(&mut admin)
    .await
    .unwrap()
}

/// Whether connection `id` is still open.
async fn open(db: &TestMysql, id: i64) -> bool {
    let mut admin = db.connect().await;
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?")
            .bind(id)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    n > 0
}

/// Whether, within 5 s, no connection of the reader runs a statement mentioning `text`.
async fn none_running(db: &TestMysql, text: &str) -> bool {
    within_5s(|| async { running(db, text).await.is_empty() }).await
}

/// Waits up to 5 s for `done`.
async fn within_5s<F: std::future::Future<Output = bool>>(mut done: impl FnMut() -> F) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// [`ENDLESS`] read by `src`, its first batch taken, its query running on `db`.
async fn endless_read_under_way(db: &TestMysql, src: &Source) -> trueup::source::RowStream {
    let mut stream = src.read(read_request(ENDLESS)).await.unwrap();
    let first = stream.next_batch().await.unwrap().unwrap();
    assert!(!first.is_empty());
    assert_eq!(running(db, ENDLESS_TABLE).await.len(), 1);
    stream
}

/// Reads `query` (its first column `CONNECTION_ID()`) on `src`, whose pool holds one
/// connection, and asserts that it read on that pooled connection: a second read gets the
/// same one (a bulk read's connection is new each time, and closed after it), still open.
async fn read_on_the_pool(db: &TestMysql, src: &Source, query: &str) -> Vec<Vec<Value>> {
    let rows = read_all(src, query).await.unwrap();
    let id = connection_id(&rows);
    let again = connection_id(&read_all(src, query).await.unwrap());
    assert_eq!(
        id, again,
        "two reads took two connections: not the pool's one"
    );
    assert!(
        open(db, id).await,
        "the read's connection {id} was not the pool's"
    );
    rows
}

/// A source reading `db` as its reader, its pool holding one connection.
fn one_connection_source(db: &TestMysql) -> Source {
    let mut config = sql_source("my", &db.reader_url);
    config.pool_size = 1;
    Source::open(&config.into()).unwrap()
}

fn connection_id(rows: &[Vec<Value>]) -> i64 {
    match &rows[0][0] {
        Value::Int(i) => *i,
        other => panic!("CONNECTION_ID() read as {other:?}"),
    }
}

#[tokio::test]
async fn a_mysql_read_gives_every_type_the_same_values_in_bulk_as_through_sqlx() {
    let db = TestMysql::new().await;
    db.exec(
        "CREATE TABLE t (id INT PRIMARY KEY, flag TINYINT(1), uflag TINYINT(1) UNSIGNED, tiny TINYINT, small SMALLINT UNSIGNED,
           medium MEDIUMINT, big BIGINT, ubig BIGINT UNSIGNED, y YEAR, num DECIMAL(30,10), f FLOAT,
           d DOUBLE, vc VARCHAR(40), ch CHAR(5), tx TEXT, en ENUM('a','b'), st SET('x','y'), js JSON,
           bi BINARY(3), vb VARBINARY(8), bl BLOB, dt DATE, tm TIME(6), dtm DATETIME(6), ts TIMESTAMP(6) NULL);
         INSERT INTO t VALUES
           (1, 1, 200, -128, 65535, -8388608, -9223372036854775808, 18446744073709551615, 2024,
            12345678901234567.0123456789, 0.1, 0.1, 'héllo 🦀', 'ab', REPEAT('x', 300), 'b', 'x,y',
            '{\"a\": [1, 2]}', 'abc', X'00FF', X'DEADBEEF', '2026-02-28', '23:59:59.999999',
            '2026-02-28 12:34:56.789012', '2026-02-28 12:34:56.789012'),
           (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
           (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL, NULL, NULL, NULL, NULL, NULL, '0000-00-00', NULL, '0000-00-00 00:00:00', '0000-00-00 00:00:00');
         CREATE TABLE bt (id INT PRIMARY KEY, bits BIT(3));
         INSERT INTO bt VALUES (1, b'101');",
    )
    .await;
    let bulk = Source::open(&source("my", &db.reader_url)).unwrap();
    // A character set in the URL is a setting the bulk connection does not reproduce: this
    // source reads every row through sqlx.
    let through_sqlx =
        Source::open(&source("my", &format!("{}?charset=utf8mb4", db.reader_url))).unwrap();

    let query = "SELECT * FROM t ORDER BY id";
    let rows = read_all(&bulk, query).await.unwrap();
    assert_eq!(rows, read_all(&through_sqlx, query).await.unwrap());
    let shown: Vec<String> = rows[0].iter().map(Value::to_string).collect();
    assert_eq!(
        shown,
        [
            "1",
            "1",
            "200",
            "-128",
            "65535",
            "-8388608",
            "-9223372036854775808",
            "18446744073709551615",
            "2024",
            "12345678901234567.0123456789",
            "0.10000000149011612",
            "0.1",
            "héllo 🦀",
            "ab",
            &"x".repeat(300),
            "b",
            "x,y",
            // MariaDB's JSON is LONGTEXT in a binary collation: its bytes.
            "\\x7b2261223a205b312c20325d7d",
            "\\x616263",
            "\\x00ff",
            "\\xdeadbeef",
            "2026-02-28",
            "23:59:59.999999",
            "2026-02-28T12:34:56.789012Z",
            "2026-02-28T12:34:56.789012Z",
        ]
    );
    assert!(
        rows[1][1..].iter().all(|v| *v == Value::Null),
        "{:?}",
        rows[1]
    );
    // Zero dates are MySQL's stand-in for none.
    assert!(
        rows[2][1..].iter().all(|v| *v == Value::Null),
        "{:?}",
        rows[2]
    );

    // A column trueup cannot read is refused from the first row: no rows, nothing refused.
    let no_rows = "SELECT id, bits FROM bt WHERE id = 0";
    for src in [&bulk, &through_sqlx] {
        assert_eq!(
            read_all(src, no_rows).await.unwrap(),
            Vec::<Vec<Value>>::new()
        );
        let err = read_all(src, "SELECT id, bits FROM bt WHERE id = 1")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, SourceError::UnsupportedType { column, .. } if column == "bits"),
            "{err:?}"
        );
    }

    // A negative duration is refused alike, its sign said.
    for src in [&bulk, &through_sqlx] {
        let err = read_all(src, "SELECT CAST('-01:00:00' AS TIME) AS took")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the duration -1:00:00, not a time of day"),
            "{err}"
        );
    }

    // The bulk read's connection closes with the read; sqlx's goes back to its pool.
    let id = "SELECT CONNECTION_ID() AS id";
    let bulk_id = connection_id(&read_all(&bulk, id).await.unwrap());
    let pooled_id = connection_id(&read_all(&through_sqlx, id).await.unwrap());
    assert!(
        within_5s(|| async { !open(&db, bulk_id).await }).await,
        "the bulk read's connection {bulk_id} is still open"
    );
    assert!(
        open(&db, pooled_id).await,
        "sqlx's connection {pooled_id} was closed"
    );
    bulk.close().await;
    through_sqlx.close().await;
}

#[tokio::test]
async fn an_abandoned_mysql_bulk_read_stops_its_query_at_once() {
    let db = TestMysql::new().await;
    let src = Source::open(&source("my", &db.reader_url)).unwrap();
    let stream = endless_read_under_way(&db, &src).await;
    drop(stream);
    assert!(
        none_running(&db, ENDLESS_TABLE).await,
        "the abandoned read's query still runs"
    );
    src.close().await;
}

#[tokio::test]
async fn a_mysql_bulk_read_cut_off_mid_result_fails_rather_than_ending_short() {
    let db = TestMysql::new().await;
    let src = Source::open(&source("my", &db.reader_url)).unwrap();
    let mut stream = src.read(read_request(ENDLESS)).await.unwrap();
    let mut rows = stream.next_batch().await.unwrap().unwrap().len();
    let [reading] = running(&db, ENDLESS_TABLE).await[..] else {
        panic!("one connection reads the rows")
    };
    let mut admin = db.connect().await;
    sqlx::query(&format!("KILL {reading}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let err = loop {
        match stream.next_batch().await {
            Some(Ok(batch)) => rows += batch.len(),
            Some(Err(e)) => break e,
            None => panic!("the read ended after {rows} rows as if that were all of them"),
        }
    };
    assert!(rows < 200_000_000, "{rows}");
    let SourceError::Query { source_name, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(source_name.as_str(), "my", "{err}");
    src.close().await;
}

#[tokio::test]
async fn a_value_that_fails_to_decode_in_a_mysql_bulk_read_fails_it_at_once_and_stops_its_query() {
    let db = TestMysql::new().await;
    let src = Source::open(&source("my", &db.reader_url)).unwrap();
    let started = Instant::now();
    // The 1,000th row holds a duration past a day, not a time of day.
    let err = read_all(
        &src,
        "SELECT seq AS n, IF(seq = 1000, CAST('25:00:00' AS TIME), CAST('01:00:00' AS TIME)) AS took \
         FROM seq_1_to_200000000",
    )
    .await
    .unwrap_err();
    let SourceError::Decode {
        column, message, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(column, "took", "{err}");
    assert!(
        message.contains("the duration 25:00:00, not a time of day"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        none_running(&db, ENDLESS_TABLE).await,
        "the failed read's query still runs"
    );
    src.close().await;
}

#[tokio::test]
async fn a_mysql_bulk_read_dropped_while_the_server_is_still_busy_stops_its_query_at_once() {
    let db = TestMysql::new().await;
    let src = Source::open(&source("my", &db.reader_url)).unwrap();
    let stream = src.read(read_request(SLEEPING)).await.unwrap();
    assert!(
        within_5s(|| async { running(&db, "SLEEP(30)").await.len() == 1 }).await,
        "the query never started"
    );
    drop(stream);
    assert!(
        none_running(&db, "SLEEP(30)").await,
        "the dropped read's query still runs"
    );
    src.close().await;
}

#[tokio::test]
async fn a_mysql_bulk_read_dropped_while_its_thread_connects_never_leaves_its_statement_running() {
    let db = TestMysql::new().await;
    let src = Source::open(&source("my", &db.reader_url)).unwrap();
    let stream = src.read(read_request(SLEEPING)).await.unwrap();
    // At once: the reading thread is still opening its connection.
    drop(stream);
    // Nothing to wait for when it works: the time a thread that missed the drop would take to
    // connect and start its statement, so that the check below would see it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        none_running(&db, "SLEEP(30)").await,
        "the dropped read's statement runs"
    );
    src.close().await;
}

#[tokio::test]
async fn a_mysql_statement_with_a_colon_word_reads_through_sqlx_with_the_same_rows() {
    let db = TestMysql::new().await;
    let src = one_connection_source(&db);
    // The `mysql` client would take `:30` for no parameter but `:name` for one; this statement
    // reads through sqlx, its connection pooled, and gives its literal back unchanged.
    let rows = read_on_the_pool(
        &db,
        &src,
        "SELECT CONNECTION_ID() AS id, 'at :noon' AS said",
    )
    .await;
    assert_eq!(rows[0][1], Value::Text("at :noon".into()));
    src.close().await;
}

#[tokio::test]
async fn a_mysql_read_whose_second_connection_the_server_refuses_reads_its_rows_on_the_pooled_one()
{
    let db = TestMysql::new().await;
    db.exec(&format!(
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10));
         INSERT INTO t VALUES (1, 'a'), (2, NULL), (3, 'c');
         ALTER USER '{}_r'@'%' WITH MAX_USER_CONNECTIONS 1;",
        db.name
    ))
    .await;
    // One connection for the user, and the pool holds it: the bulk read's own is refused.
    let src = one_connection_source(&db);
    for _ in 0..2 {
        let rows = read_all(&src, "SELECT id, v FROM t ORDER BY id")
            .await
            .unwrap();
        assert_eq!(
            rows,
            [
                vec![Value::Int(1), Value::Text("a".into())],
                vec![Value::Int(2), Value::Null],
                vec![Value::Int(3), Value::Text("c".into())],
            ]
        );
    }
    read_on_the_pool(&db, &src, "SELECT CONNECTION_ID() AS id").await;
    src.close().await;
}

#[tokio::test]
async fn an_abandoned_mysql_bulk_read_whose_query_cannot_be_killed_still_stops_it() {
    let db = TestMysql::new().await;
    let src = Source::open(&source("my", &db.reader_url)).unwrap();
    let stream = endless_read_under_way(&db, &src).await;
    // The user can open no connection any more, so none can KILL the query: the read closes
    // its own instead of reading the other 200M rows to let go of the result.
    let reader = format!("'{}_r'@'%'", db.name);
    db.exec(&format!("ALTER USER {reader} ACCOUNT LOCK")).await;
    drop(stream);
    let stopped = none_running(&db, ENDLESS_TABLE).await;
    db.exec(&format!("ALTER USER {reader} ACCOUNT UNLOCK"))
        .await;
    assert!(stopped, "the abandoned read's query still runs");
    src.close().await;
}

#[tokio::test]
async fn a_mysql_decimal_is_read_exactly_or_refused_on_both_paths_never_rounded() {
    let db = TestMysql::new().await;
    db.exec(
        "CREATE TABLE d (id INT PRIMARY KEY, v DECIMAL(65,30));
         INSERT INTO d VALUES (1, 1), (2, -0.000001230), (3, 12345678901234567890.12345678),
           (4, 0.1234567890123456789012345678), (5, 0.123456789012345678901234567891),
           (6, 12345678901234567890123456789012345.5);",
    )
    .await;
    let bulk = Source::open(&source("my", &db.reader_url)).unwrap();
    let through_sqlx =
        Source::open(&source("my", &format!("{}?charset=utf8mb4", db.reader_url))).unwrap();
    for src in [&bulk, &through_sqlx] {
        // Its whole scale written out, each value is still the number it holds.
        let rows = read_all(src, "SELECT v FROM d WHERE id <= 4 ORDER BY id")
            .await
            .unwrap();
        let shown: Vec<String> = rows.iter().map(|r| r[0].to_string()).collect();
        assert_eq!(
            shown,
            [
                "1",
                "-0.00000123",
                "12345678901234567890.12345678",
                "0.1234567890123456789012345678"
            ]
        );
        // One digit more than a decimal holds, after the point or before it: refused with
        // the value and the column, not rounded into another number.
        for (id, digits) in [
            (5, "0.123456789012345678901234567891"),
            (6, "12345678901234567890123456789012345.5"),
        ] {
            let err = read_all(src, &format!("SELECT v FROM d WHERE id = {id}"))
                .await
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!(
                    "DECIMAL {digits} has more digits than trueup's decimals hold"
                )) && err.contains("`v`"),
                "{err}"
            );
        }
    }
    bulk.close().await;
    through_sqlx.close().await;
}
