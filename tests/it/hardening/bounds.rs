//! Evidence and memory stay bounded: long values capped or digested, rows over the limit refused,
//! memory flat under large values.

use super::*;

#[tokio::test]
async fn ten_megabyte_values_are_capped_in_evidence_and_a_run_stays_bounded_in_memory() {
    const MB10: usize = 10 << 20;
    let db = TestPg::new().await;
    // Values differ only in their last characters: past any prefix evidence keeps.
    db.exec(&format!(
        "CREATE TABLE big (id int PRIMARY KEY, body text);
         INSERT INTO big SELECT g, repeat('x', {MB10}) || g FROM generate_series(1, 5) g;
         CREATE TABLE sent (id int PRIMARY KEY, body text);
         CREATE TABLE got (id int PRIMARY KEY, body text);
         INSERT INTO sent SELECT g, repeat('y', {MB10}) || g FROM generate_series(1, 10) g;
         INSERT INTO got SELECT g, repeat('y', {MB10}) || (g + 1) FROM generate_series(1, 10) g;
         -- Equal long values are no mismatch.
         INSERT INTO sent VALUES (11, repeat('y', {MB10}) || 'same');
         INSERT INTO got VALUES (11, repeat('y', {MB10}) || 'same');"
    ))
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let config = project(
        tmp.path(),
        &db.reader_url,
        r#"invariants:
  - name: big-listed
    check:
      source: pg
      query: "SELECT id, body FROM big"
      key: id
  - name: sent-got
    reconcile:
      left: {source: pg, query: "SELECT id, body FROM sent"}
      right: {source: pg, query: "SELECT id, body FROM got"}
      key: id
      compare: [body]
"#,
    );
    // One invariant at a time, as the probes ran them (`check` evaluates up to four at once,
    // each with its own streams).
    let mut runs = Vec::new();
    // ~55-65 MiB measured; the issue's bound is 150.
    for (invariant, bound_mib) in [("big-listed", 100.0), ("sent-got", 100.0)] {
        let (out, peak_mib) =
            check_with_peak_rss(&config, &["check", "-i", invariant, "--format", "json"]);
        let text = combined_output(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            &text[..text.len().min(2000)]
        );
        println!("peak RSS of `check -i {invariant}` over values of 10 MiB: {peak_mib:.1} MiB");
        assert!(
            peak_mib < bound_mib,
            "{invariant}: peak RSS {peak_mib:.1} MiB"
        );
        assert!(
            out.stdout.len() < 1 << 20,
            "the JSON report is {} bytes",
            out.stdout.len()
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        runs.push(report[0].clone());
    }
    assert_eq!(runs[0]["change"]["new"], 5, "{runs:?}");
    assert_eq!(runs[1]["change"]["new"], 10, "{runs:?}");
    // Evidence keeps the start, the whole length and a digest of each long value; the
    // mismatch is still found, by comparing the whole values.
    let sample = &runs[1]["samples"][0]["evidence"];
    let left = &sample["diff"][0]["left"]["$capped"];
    let right = &sample["diff"][0]["right"]["$capped"];
    assert_eq!(left["bytes"], MB10 + 1, "{sample}");
    assert_eq!(left["prefix"].as_str().unwrap().len(), 4096);
    assert_eq!(left["prefix"], right["prefix"]);
    assert_ne!(left["sha256"], right["sha256"]);
    // The digest PostgreSQL computed is the one trueup computes of the same value.
    let id = sample_id(&runs[1]["samples"][0]);
    let whole = format!("{}{id}", "y".repeat(MB10));
    assert_eq!(
        *left,
        trueup::domain::Value::Text(whole.into()).to_evidence_json()["$capped"],
        "{sample}"
    );
    let store_bytes = std::fs::metadata(tmp.path().join("trueup.db"))
        .unwrap()
        .len()
        + std::fs::metadata(tmp.path().join("trueup.db-wal")).map_or(0, |m| m.len());
    assert!(store_bytes < 8 << 20, "the store holds {store_bytes} bytes");

    // Row 11's equal values were no mismatch.
    assert_eq!(runs[1]["open_after"], 10, "{runs:?}");
}

#[tokio::test]
async fn evidence_keeps_whole_the_columns_a_compensation_writes_and_caps_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let note = "n".repeat(10_000);
    let blob = "b".repeat(10_000);
    crate::helpers::sqlite_file(
        &dir.join("up.db"),
        &format!(
            "CREATE TABLE events (id INTEGER PRIMARY KEY, note TEXT, blob TEXT);
             INSERT INTO events VALUES (1, '{note}', '{blob}');"
        ),
    )
    .await;
    crate::helpers::sqlite_file(
        &dir.join("down.db"),
        "CREATE TABLE records (id INTEGER, note TEXT);",
    )
    .await;
    let config = dir.join("trueup.yaml");
    std::fs::write(
        &config,
        format!(
            "store: sqlite://{d}/trueup.db\nsources:\n  up: {{url: sqlite://{d}/up.db}}\n  down: {{url: sqlite://{d}/down.db}}\ntargets:\n  writer: {{url: sqlite://{d}/down.db}}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("invariants")).unwrap();
    std::fs::write(
        dir.join("invariants/e.yaml"),
        r#"invariants:
  - name: events-recorded
    reconcile:
      left: {source: up, query: "SELECT id, note, blob FROM events"}
      right: {source: down, query: "SELECT id, note FROM records"}
      key: id
    compensate:
      missing:
        sql:
          target: writer
          statement: INSERT INTO records (id, note) VALUES ({{key.id}}, {{left.NOTE}})
"#,
    )
    .unwrap();
    let (code, runs, text) = check_json(&config);
    assert_eq!(code, Some(1), "{text}");
    let left = &runs[0]["samples"][0]["evidence"]["left"];
    assert_eq!(left["note"], note.as_str(), "the written column is whole");
    assert_eq!(left["blob"]["$capped"]["bytes"], 10_000, "{left}");
    let shown = trueup_cli(&config, "tester")
        .args(["plan", "show", "1", "--format", "json"])
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&shown.stdout)
        .unwrap_or_else(|_| panic!("{}", combined_output(&shown)));
    let params = &plan["actions"][0]["spec"]["params"];
    assert_eq!(params[1], note.as_str(), "{}", plan["actions"][0]);
}

#[tokio::test]
async fn a_long_value_read_as_a_digest_on_postgres_compares_with_the_whole_value_from_sqlite() {
    let db = TestPg::new().await;
    let long = |c: char, tail: &str| format!("{}{tail}", c.to_string().repeat(200_000));
    db.exec(&format!(
        "CREATE TABLE docs (id int PRIMARY KEY, body text);
         INSERT INTO docs VALUES (1, '{}'), (2, '{}'), (3, 'short');",
        long('a', "1"),
        long('a', "2")
    ))
    .await;
    let tmp = tempfile::tempdir().unwrap();
    crate::helpers::sqlite_file(
        &tmp.path().join("copy.db"),
        &format!(
            "CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT);
             INSERT INTO docs VALUES (1, '{}'), (2, '{}'), (3, 'short');",
            long('a', "1"),
            long('a', "X")
        ),
    )
    .await;
    let config = tmp.path().join("trueup.yaml");
    std::fs::write(
        &config,
        format!(
            "store: sqlite://{d}/trueup.db\nsources:\n  pg: {{url: \"{}\"}}\n  copy: {{url: sqlite://{d}/copy.db}}\n",
            db.reader_url,
            d = tmp.path().display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(tmp.path().join("invariants")).unwrap();
    std::fs::write(
        tmp.path().join("invariants/docs.yaml"),
        r#"invariants:
  - name: docs-copied
    reconcile:
      left: {source: pg, query: "SELECT id, body FROM docs"}
      right: {source: copy, query: "SELECT id, body FROM docs"}
      key: id
      compare: [body]
"#,
    )
    .unwrap();
    // On PostgreSQL the long values arrive as digests (computed there), multi-byte text and
    // bytea included; a query naming a column twice reads it whole.
    db.exec(
        "CREATE TABLE more (id int PRIMARY KEY, t text, b bytea);
         INSERT INTO more VALUES (1, repeat('é', 40000), decode(repeat('ff', 70000), 'hex'));",
    )
    .await;
    let src = Source::open(&source("pg", &db.reader_url)).unwrap();
    let digested = |query: &str| {
        let mut req = read_request(query);
        req.digest_long_except = Some(Vec::new());
        req
    };
    let mut stream = src
        .read(digested("SELECT id, t, b FROM more"))
        .await
        .unwrap();
    let row = stream.next_batch().await.unwrap().unwrap().remove(0);
    let whole_t = "é".repeat(40000);
    let whole_b = vec![0xffu8; 70000];
    assert!(
        matches!(&row[1], Value::Digest(d) if d.bytes == 80000),
        "{:?}",
        row[1]
    );
    assert!(
        matches!(&row[2], Value::Digest(d) if d.bytes == 70000),
        "{:?}",
        row[2]
    );
    assert!(row[1].same_as(&Value::Text(whole_t.as_str().into())));
    assert!(row[2].same_as(&Value::Bytes(whole_b)));
    assert_eq!(
        row[1].to_evidence_json(),
        Value::Text(whole_t.into()).to_evidence_json()
    );
    let mut stream = src
        .read(digested("SELECT id, t, t FROM more"))
        .await
        .unwrap();
    let row = stream.next_batch().await.unwrap().unwrap().remove(0);
    assert!(
        matches!(&row[1], Value::Text(t) if t.len() == 80000),
        "read whole"
    );

    let (code, runs, text) = check_json(&config);
    assert_eq!(code, Some(1), "{text}");
    // Only row 2 differs: the digest of row 1 equals the whole value SQLite returned.
    assert_eq!(runs[0]["change"]["new"], 1, "{text}");
    assert_eq!(sample_id(&runs[0]["samples"][0]), 2, "{text}");
}

#[tokio::test]
async fn a_row_over_the_limit_read_whole_fails_the_read_naming_its_column() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("big.db");
    // 65 MiB of text in one value, read whole (a SQLite file has no digests to send).
    crate::helpers::sqlite_file(
        &path,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT);
         INSERT INTO t VALUES (1, replace(hex(zeroblob(34078720)), '00', 'zz'));",
    )
    .await;
    let src = Source::open(&source("lite", &crate::helpers::sqlite_url(&path))).unwrap();
    let err = read_all(&src, "SELECT id, body FROM t").await.unwrap_err();
    let SourceError::RowTooLarge { column, bytes, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(column, "body");
    assert!(*bytes > 64 << 20, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("md5(body)") && text.contains("a row holds"),
        "{text}"
    );
}

#[tokio::test]
async fn two_hundred_violations_with_half_a_megabyte_values_stay_bounded_in_memory() {
    // 200 rows of 512 KiB read whole from SQLite (100 MiB in all), each a violation whose
    // evidence keeps the value's start and digest.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    crate::helpers::sqlite_file(
        &dir.join("up.db"),
        "CREATE TABLE events (id INTEGER PRIMARY KEY, payload TEXT);
         WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 200)
         INSERT INTO events SELECT i, i || replace(hex(zeroblob(262144)), '00', 'ab') FROM g;",
    )
    .await;
    crate::helpers::sqlite_file(&dir.join("down.db"), "CREATE TABLE records (id INTEGER);").await;
    let config = dir.join("trueup.yaml");
    std::fs::write(
        &config,
        format!(
            "store: sqlite://{d}/trueup.db\nsources:\n  up: {{url: sqlite://{d}/up.db}}\n  down: {{url: sqlite://{d}/down.db}}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("invariants")).unwrap();
    std::fs::write(
        dir.join("invariants/e.yaml"),
        r#"invariants:
  - name: events-recorded
    reconcile:
      left: {source: up, query: "SELECT id, payload FROM events"}
      right: {source: down, query: "SELECT id FROM records"}
      key: id
"#,
    )
    .unwrap();
    let (out, peak_mib) = check_with_peak_rss(&config, &["check", "--format", "json"]);
    let text = combined_output(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        &text[..text.len().min(2000)]
    );
    println!("peak RSS over 200 violations with 512 KiB values: {peak_mib:.1} MiB");
    assert!(peak_mib < 150.0, "peak RSS {peak_mib:.1} MiB");
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs[0]["change"]["new"], 200, "{runs}");
}

#[tokio::test]
async fn a_pool_whose_connections_all_stay_busy_says_so_not_only_that_it_timed_out() {
    let db = TestPg::new().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_millis(300))
        .connect_lazy(&db.reader_url)
        .unwrap();
    let held = trueup::connect::acquire(&pool, "the database")
        .await
        .unwrap();
    let Err(err) = trueup::connect::acquire(&pool, "the database").await else {
        panic!("the only connection is held, yet another was had");
    };
    assert_eq!(
        err.to_string(),
        "cannot connect to the database: no connection of its pool came free within 300ms: all 1 stayed in use"
    );
    // A source adds what to change (its `pool_size`), which the store or a target has not.
    assert!(err.pool_busy);
    drop(held);
    pool.close().await;
}

/// With the user of `url` allowed one connection and a session of its own ending 300 ms in
/// (the scenario: a session the server still counts, not a wait for an event), an empty
/// pool's connection is had (the probe's refusal is tried again); with the pool's connection
/// held, another pool is refused after [`trueup::connect::LIMIT_WAIT`], in the server's words
/// (`server_says`) and saying how often it refused.
async fn the_connection_limit_is_waited_out_for_a_moment<DB: sqlx::Database>(
    url: &str,
    server_says: &str,
) {
    use sqlx::Connection;
    let held = DB::Connection::connect(url).await.unwrap();
    let one_connection = || {
        sqlx::pool::PoolOptions::<DB>::new()
            .max_connections(1)
            .connect_lazy(url)
            .unwrap()
    };
    let closing = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        held.close().await.unwrap();
    });
    let started = std::time::Instant::now();
    let pool = one_connection();
    let conn = trueup::connect::acquire(&pool, "the database")
        .await
        .expect("the connection, once the other session ended");
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    closing.await.unwrap();

    let other = one_connection();
    let started = std::time::Instant::now();
    let Err(refused) = trueup::connect::acquire(&other, "the database").await else {
        panic!("a second connection was had where the user may have one");
    };
    let waited = started.elapsed();
    assert!(
        waited >= trueup::connect::LIMIT_WAIT - std::time::Duration::from_millis(300)
            && waited < trueup::connect::LIMIT_WAIT + std::time::Duration::from_secs(2),
        "refused after {waited:?}"
    );
    let refused = refused.to_string();
    assert!(
        refused.starts_with("cannot connect to the database: ")
            && refused.contains(server_says)
            && refused.contains(" (refused ")
            && refused.contains(" times over "),
        "{refused}"
    );
    drop(conn);
    pool.close().await;
    other.close().await;
}

#[tokio::test]
async fn a_postgres_role_at_its_connection_limit_connects_once_a_session_ends_and_is_refused_after_the_wait_if_none_does()
 {
    let db = TestPg::new().await;
    let role = format!("{}_reader", db.name);
    db.exec(&format!("ALTER ROLE \"{role}\" CONNECTION LIMIT 1"))
        .await;
    the_connection_limit_is_waited_out_for_a_moment::<sqlx::Postgres>(
        &db.reader_url,
        &format!("too many connections for role \"{role}\""),
    )
    .await;
}

#[tokio::test]
async fn a_mariadb_user_at_its_connection_limit_connects_once_a_session_ends_and_is_refused_after_the_wait_if_none_does()
 {
    let db = TestMysql::new().await;
    let user = format!("{}_r", db.name);
    db.exec(&format!(
        "ALTER USER '{user}'@'%' WITH MAX_USER_CONNECTIONS 1"
    ))
    .await;
    the_connection_limit_is_waited_out_for_a_moment::<sqlx::MySql>(
        &db.reader_url,
        &format!("1226 (42000): User '{user}' has exceeded the 'max_user_connections' resource"),
    )
    .await;
}

#[tokio::test]
async fn a_pool_the_mariadb_user_limit_refuses_another_connection_takes_the_one_handed_back() {
    let db = TestMysql::new().await;
    db.exec(&format!(
        "ALTER USER '{}_r'@'%' WITH MAX_USER_CONNECTIONS 1",
        db.name
    ))
    .await;
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(2)
        .connect_lazy(&db.reader_url)
        .unwrap();
    let first = trueup::connect::acquire(&pool, "the database")
        .await
        .unwrap();
    // The pool may open a second connection, which the server refuses (1226, not retried by
    // sqlx): the refusal is tried again until the first comes back 300 ms in.
    let handing_back = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        drop(first);
    });
    let started = std::time::Instant::now();
    let second = trueup::connect::acquire(&pool, "the database")
        .await
        .expect("the connection handed back");
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    handing_back.await.unwrap();
    assert_eq!(pool.size(), 1, "one connection, as the user may have");
    drop(second);
    pool.close().await;
}

#[tokio::test]
async fn a_mariadb_user_out_of_its_hourly_connections_is_refused_at_once_not_retried() {
    let db = TestMysql::new().await;
    db.exec(&format!(
        "ALTER USER '{}_r'@'%' WITH MAX_CONNECTIONS_PER_HOUR 1",
        db.name
    ))
    .await;
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect_lazy(&db.reader_url)
        .unwrap();
    // The probe takes the hour's one connection; the pool's is refused with the same code as a
    // limit on connections at once (1226), which no moment lifts.
    let started = std::time::Instant::now();
    let Err(refused) = trueup::connect::acquire(&pool, "the database").await else {
        panic!("a second connection was had within the hour");
    };
    let refused = refused.to_string();
    assert!(
        refused.contains("has exceeded the 'max_connections_per_hour' resource")
            && !refused.contains("(refused "),
        "{refused}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "refused after {:?}",
        started.elapsed()
    );
    pool.close().await;
}
