//! Property tests: random tables, a full pass, then random changes that each move the changed
//! row's change column — anything but a deletion, which an incremental run cannot see by
//! design — and an incremental run. Its ledger then holds exactly what a full stream finds,
//! with PostgreSQL, MariaDB and SQLite sides. Seeds are fixed (a failure prints its seed).

use std::collections::BTreeSet;
use std::path::PathBuf;

use chrono::Utc;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use trueup::config::SecretUrl;
use trueup::domain::{ColumnName, Coverage, HumanDuration, Incremental, Value};
use trueup::engine::{self, Collect};
use trueup::runner::run_invariant;
use trueup::store::{StatusFilter, ViolationFilter};

use crate::helpers::{
    TestMysql, TestPg, reconcile_invariant, reconcile_spec, sources, sqlite_file, sqlite_url,
};

/// One side's database: its table's DDL, its clock, how to write to it.
enum Db<'a> {
    Pg(&'a TestPg),
    My(&'a TestMysql),
    Lite(PathBuf),
}

impl Db<'_> {
    fn create(&self, table: &str, change: &str) -> String {
        match self {
            Db::Pg(_) => format!(
                "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id bigint, amount bigint, label text, {change} timestamptz NOT NULL);"
            ),
            Db::My(_) => format!(
                "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id BIGINT, amount BIGINT, label VARCHAR(40), {change} DATETIME(6) NOT NULL, KEY (id), KEY ({change}));"
            ),
            Db::Lite(_) => format!(
                "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id INTEGER, amount INTEGER, label TEXT, {change} DATETIME NOT NULL);"
            ),
        }
    }

    /// The database's clock as a UTC instant of the change column's type.
    fn now(&self) -> &'static str {
        match self {
            Db::Pg(_) => "clock_timestamp()",
            Db::My(_) => "UTC_TIMESTAMP(6)",
            Db::Lite(_) => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        }
    }

    async fn exec(&self, sql: &str) {
        match self {
            Db::Pg(db) => db.exec(sql).await,
            Db::My(db) => db.exec(sql).await,
            Db::Lite(path) => sqlite_file(path, sql).await,
        }
    }

    fn url(&self) -> String {
        match self {
            Db::Pg(db) => db.reader_url.clone(),
            Db::My(db) => db.reader_url.clone(),
            Db::Lite(path) => sqlite_url(path),
        }
    }
}

type Found = BTreeSet<(String, i64)>;

/// Row `i`'s amount and label, the same on both sides until a change.
fn row(i: i64) -> (i64, String) {
    ((i * 7919) % 100_000, format!("l{}", i % 97))
}

async fn incremental_finds_what_a_full_stream_finds(left: Db<'_>, right: Db<'_>, seed_base: u64) {
    let store_dir = tempfile::tempdir().unwrap();
    for seed in seed_base..seed_base + 4 {
        let mut rng = StdRng::seed_from_u64(seed);
        let rows: i64 = rng.random_range(500..6_000);
        let mut values = Vec::new();
        for i in 1..=rows {
            let (amount, label) = row(i);
            // Initial change times years back, a second apart.
            let at = chrono::DateTime::from_timestamp(1_577_836_800 + i, 0).unwrap();
            values.push(format!(
                "({i}, {amount}, '{label}', '{}')",
                at.format("%Y-%m-%d %H:%M:%S")
            ));
        }
        let (mut l_sql, mut r_sql) = (
            left.create("l", "l_changed"),
            right.create("r", "r_changed"),
        );
        for chunk in values.chunks(1000) {
            l_sql.push_str(&format!("INSERT INTO l VALUES {};", chunk.join(",")));
            r_sql.push_str(&format!("INSERT INTO r VALUES {};", chunk.join(",")));
        }
        // Differences before the full pass, deletions included.
        for _ in 0..rng.random_range(0..40) {
            let k = rng.random_range(1..=rows);
            match rng.random_range(0..4) {
                0 => r_sql.push_str(&format!("DELETE FROM r WHERE id = {k};")),
                1 => l_sql.push_str(&format!("DELETE FROM l WHERE id = {k};")),
                2 => r_sql.push_str(&format!("UPDATE r SET amount = amount + 1 WHERE id = {k};")),
                _ => r_sql.push_str(&format!(
                    "INSERT INTO r (id, amount, label, r_changed) SELECT id, amount, label, r_changed FROM (SELECT * FROM r WHERE id = {k}) AS c;"
                )),
            }
        }
        left.exec(&l_sql).await;
        right.exec(&r_sql).await;

        let srcs = sources(&[("left", &left.url()), ("right", &right.url())]).await;
        let mut inv = reconcile_invariant(
            "random-incremental",
            ("left", "SELECT * FROM l"),
            ("right", "SELECT * FROM r"),
            &["id"],
        );
        reconcile_spec(&mut inv).incremental = Some(Incremental {
            left: Some(ColumnName::parse("l_changed").unwrap()),
            right: Some(ColumnName::parse("r_changed").unwrap()),
            lookback: HumanDuration::parse("1s").unwrap(),
            full_every: HumanDuration::parse("1d").unwrap(),
        });
        let store = trueup::store::open(&SecretUrl::new(sqlite_url(
            &store_dir.path().join(format!("s{seed}.db")),
        )))
        .await
        .unwrap();
        let full = run_invariant(&inv, &srcs, store.as_ref()).await.unwrap();
        assert!(full.error.is_none(), "seed {seed}: {:?}", full.error);
        assert_eq!(full.stats.coverage, Coverage::Full);

        // Changes after it, each moving its row's change column: edits and repairs on both
        // sides, new rows on either, repeated keys.
        let (l_now, r_now) = (left.now(), right.now());
        let (mut l_sql, mut r_sql) = (String::new(), String::new());
        let changes = rng.random_range(0..60);
        for _ in 0..changes {
            let k = rng.random_range(1..=rows + 20);
            let (amount, label) = row(k);
            match rng.random_range(0..6) {
                0 => l_sql.push_str(&format!(
                    "UPDATE l SET amount = amount + 1, l_changed = {l_now} WHERE id = {k};"
                )),
                1 => r_sql.push_str(&format!(
                    "UPDATE r SET amount = {amount}, label = '{label}', r_changed = {r_now} WHERE id = {k};"
                )),
                2 => r_sql.push_str(&format!(
                    "UPDATE r SET label = 'x', r_changed = {r_now} WHERE id = {k};"
                )),
                3 => r_sql.push_str(&format!(
                    "INSERT INTO r VALUES ({k}, {amount}, '{label}', {r_now});"
                )),
                4 => l_sql.push_str(&format!(
                    "INSERT INTO l VALUES ({k}, {amount}, '{label}', {l_now});"
                )),
                _ => {
                    l_sql.push_str(&format!(
                        "UPDATE l SET label = 'y', l_changed = {l_now} WHERE id = {k};"
                    ));
                    r_sql.push_str(&format!(
                        "UPDATE r SET label = 'y', r_changed = {r_now} WHERE id = {k};"
                    ));
                }
            }
        }
        if !l_sql.is_empty() {
            left.exec(&l_sql).await;
        }
        if !r_sql.is_empty() {
            right.exec(&r_sql).await;
        }

        let incremental = run_invariant(&inv, &srcs, store.as_ref()).await.unwrap();
        assert!(
            incremental.error.is_none(),
            "seed {seed}: {:?}",
            incremental.error
        );
        let Coverage::Changed { keys, .. } = incremental.stats.coverage else {
            panic!("seed {seed}: {:?}", incremental.stats.coverage)
        };
        assert!(
            keys <= 2 * changes,
            "seed {seed}: {keys} keys for {changes} changes"
        );

        let mut stream = Collect::default();
        engine::evaluate(&inv, &srcs, Utc::now(), &mut stream)
            .await
            .unwrap();
        let want: Found = stream
            .0
            .iter()
            .map(|v| match v.key.as_slice() {
                [Value::Int(k)] => (v.kind.as_str().to_owned(), *k),
                other => panic!("key {other:?}"),
            })
            .collect();
        let ledger: Found = store
            .violations(&ViolationFilter {
                status: StatusFilter::Active,
                limit: 100_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|v| (v.kind, v.key[0].as_i64().unwrap()))
            .collect();
        assert_eq!(
            ledger, want,
            "seed {seed}: {rows} rows, {changes} changes, {keys} keys covered"
        );
        srcs.close().await;
        store.close().await;
    }
}

#[tokio::test]
async fn incremental_runs_over_random_postgres_tables_leave_the_ledger_a_full_stream_would() {
    let pg = TestPg::new().await;
    incremental_finds_what_a_full_stream_finds(Db::Pg(&pg), Db::Pg(&pg), 3000).await;
}

#[tokio::test]
async fn incremental_runs_across_postgres_and_mariadb_leave_the_ledger_a_full_stream_would() {
    let (pg, my) = (TestPg::new().await, TestMysql::new().await);
    incremental_finds_what_a_full_stream_finds(Db::Pg(&pg), Db::My(&my), 3100).await;
}

#[tokio::test]
async fn incremental_runs_across_sqlite_and_postgres_leave_the_ledger_a_full_stream_would() {
    let pg = TestPg::new().await;
    let tmp = tempfile::tempdir().unwrap();
    incremental_finds_what_a_full_stream_finds(
        Db::Lite(tmp.path().join("left.db")),
        Db::Pg(&pg),
        3200,
    )
    .await;
}
