//! Property tests: seeded random tables with random differences, on one engine and across
//! engines; every mode finds what a plain stream finds. Seeds are fixed (a failure prints
//! its seed), so a failure reproduces.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// Evaluates the invariant `reconcile` gives for a mode as a plain stream, then in checksum
/// and auto mode: each finds what the stream finds and reads the same rows. The stats of the
/// checksum and auto runs, for a test's own checks.
async fn every_mode_finds_what_a_stream_finds(
    reconcile: impl Fn(ReconcileMode) -> Invariant,
    srcs: &Sources,
    context: &str,
) -> Vec<(ReconcileMode, RunStats)> {
    let (stream, stream_stats) = evaluate(&reconcile(ReconcileMode::Stream), srcs).await;
    let mut out = Vec::new();
    for mode in [ReconcileMode::Checksum, ReconcileMode::Auto] {
        let (found, stats) = evaluate(&reconcile(mode), srcs).await;
        assert_eq!(found, stream, "{context}, {mode:?}: {:?}", stats.compared);
        assert_eq!(
            (stats.rows_left, stats.rows_right, stats.null_keys),
            (
                stream_stats.rows_left,
                stream_stats.rows_right,
                stream_stats.null_keys
            ),
            "{context}, {mode:?}"
        );
        out.push((mode, stats));
    }
    out
}

/// A sink that hints `open` as the invariant's open violations' keys (as the ledger would):
/// a checksum looks there first, which must change nothing it finds.
struct Hinted {
    found: Collect,
    open: Vec<serde_json::Value>,
}

#[async_trait::async_trait]
impl engine::ViolationSink for Hinted {
    async fn accept(&mut self, v: trueup::domain::Violation) -> Result<(), engine::EngineError> {
        self.found.accept(v).await
    }

    async fn open_keys(
        &mut self,
        limit: u32,
    ) -> Result<Vec<serde_json::Value>, engine::EngineError> {
        Ok(self.open.iter().take(limit as usize).cloned().collect())
    }
}

/// Random PostgreSQL tables with random planted differences, among them outages (a block of
/// keys one side lacks); each checksum mode is run again with the ledger's hint of open keys
/// (some that differ, some that do not, some outside every range).
#[tokio::test]
async fn random_tables_with_random_differences_give_the_same_violations_in_every_mode() {
    let pg = TestPg::new().await;
    let srcs = sources(&[("pg", &pg.reader_url)]).await;
    for seed in 0..10u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let rows: i64 = rng.random_range(1_000..40_000);
        // Keys with gaps, and sometimes negative or far apart.
        let stride: i64 = rng.random_range(1..4) * if rng.random_bool(0.2) { 1 << 33 } else { 1 };
        let offset: i64 =
            rng.random_range(-50_000..50_000) * if rng.random_bool(0.2) { 1 << 33 } else { 1 };
        pg.exec(&format!(
            "DROP TABLE IF EXISTS l, r;
             CREATE TABLE l (id bigint, amount numeric(14,3), label text, at timestamptz, flag boolean,
                             fee numeric(18,4));
             INSERT INTO l SELECT {offset} + i * {stride}, ((i * 7919) % 100000) / 1000.0,
                    CASE WHEN i % 11 = 0 THEN NULL ELSE md5(i::text) END,
                    timestamptz '2025-06-01 00:00:00+00' + i * interval '1 minute', i % 3 = 0,
                    CASE WHEN i % 13 = 0 THEN NULL WHEN i % 17 = 0 THEN 0 ELSE ((i * 7919) % 100000) / 2000.0 END
               FROM generate_series(1, {rows}) AS i;
             CREATE INDEX ON l (id);
             CREATE TABLE r AS SELECT * FROM l;
             CREATE INDEX ON r (id);"
        ))
        .await;
        let key = |rng: &mut StdRng| offset + rng.random_range(1..=rows) * stride;
        let mut sql = Vec::new();
        // Sparse or dense differences, or an outage alone (with a value changed elsewhere, at
        // times): what totals locate.
        let outage = rng.random_bool(0.4);
        let changes = if outage {
            let (side, from) = (rng.random_bool(0.5), key(&mut rng));
            sql.push(format!(
                "DELETE FROM {} WHERE id BETWEEN {from} AND {};",
                if side { "l" } else { "r" },
                from + rng.random_range(0..2_000) * stride
            ));
            usize::from(rng.random_bool(0.5))
        } else if rng.random_bool(0.3) {
            rng.random_range(200..2_000)
        } else {
            rng.random_range(0..30)
        };
        for _ in 0..changes {
            let k = key(&mut rng);
            sql.push(match if outage { 2 } else { rng.random_range(0..11) } {
                0 => format!("DELETE FROM r WHERE id = {k};"),
                1 => format!("DELETE FROM l WHERE id = {k};"),
                2 => format!("UPDATE r SET amount = -amount - 1 WHERE id = {k};"),
                3 => format!("UPDATE r SET label = NULL WHERE id = {k};"),
                4 => format!("UPDATE r SET at = at + interval '1 microsecond' WHERE id = {k};"),
                5 => format!("UPDATE r SET flag = NOT flag WHERE id = {k};"),
                6 => format!("INSERT INTO r SELECT * FROM r WHERE id = {k};"),
                7 => format!(
                    "INSERT INTO l SELECT * FROM l WHERE id = {k}; INSERT INTO r SELECT * FROM r WHERE id = {k};"
                ),
                8 if rng.random_bool(0.5) => format!("UPDATE r SET id = NULL WHERE id = {k};"),
                8 => format!(
                    "DELETE FROM {} WHERE id BETWEEN {k} AND {};",
                    if rng.random_bool(0.5) { "l" } else { "r" },
                    k + rng.random_range(1..500) * stride
                ),
                // Two NUMERICs scaled alike (their hashes change alike), or NULL against 0.
                9 => format!("UPDATE r SET amount = amount * 10000, fee = fee * 10000 WHERE id = {k};"),
                _ => format!(
                    "UPDATE r SET fee = CASE WHEN fee IS NULL THEN 0 WHEN fee = 0 THEN NULL ELSE fee END WHERE id = {k};"
                ),
            });
        }
        sql.push("ANALYZE l; ANALYZE r;".into());
        pg.exec(&sql.join("\n")).await;

        let context = format!(
            "seed {seed}, {rows} rows, stride {stride}, {} {changes} changes",
            if outage { "an outage and" } else { "" }
        );
        let unhinted = every_mode_finds_what_a_stream_finds(
            |mode| invariant("SELECT * FROM l", "SELECT * FROM r", mode),
            &srcs,
            &context,
        )
        .await;

        let (stream, streamed) = evaluate(
            &invariant("SELECT * FROM l", "SELECT * FROM r", ReconcileMode::Stream),
            &srcs,
        )
        .await;
        // Every key found, or some of them and others that do not differ.
        let every: Vec<serde_json::Value> =
            stream.iter().map(|(_, k)| serde_json::json!([k])).collect();
        let mut some: Vec<serde_json::Value> = every
            .iter()
            .filter(|_| rng.random_bool(0.7))
            .cloned()
            .collect();
        some.extend((0..rng.random_range(0..50)).map(|_| serde_json::json!([key(&mut rng)])));
        some.push(serde_json::json!([offset - 1_000_000]));
        some.push(serde_json::json!(["not a number"]));
        // An outage alone is located by the totals: one range read.
        if outage && changes == 0 {
            let c = unhinted[0].1.compared.as_ref().unwrap();
            assert_eq!(c.segments_streamed, 1, "{context}: {c:?}");
        }
        // Hinted with every key found (no key repeats in an outage's seed), the keys are
        // read and nothing else: as many ranges as runs of consecutive keys.
        let runs = stream
            .iter()
            .map(|(_, k)| *k)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .fold((0, None), |(runs, last): (u64, Option<i64>), k| {
                (runs + u64::from(last != Some(k - 1)), Some(k))
            })
            .0;
        for (mode, open, is_every) in [
            (ReconcileMode::Checksum, every.clone(), true),
            (ReconcileMode::Checksum, some.clone(), false),
            (ReconcileMode::Auto, every, true),
            (ReconcileMode::Auto, some, false),
        ] {
            let mut sink = Hinted {
                found: Collect::default(),
                open,
            };
            let inv = invariant("SELECT * FROM l", "SELECT * FROM r", mode);
            let stats = engine::evaluate(&inv, &srcs, Utc::now(), &mut sink)
                .await
                .unwrap_or_else(|e| panic!("{context}, {mode:?} hinted: {e}"));
            let found: Found = sink
                .found
                .0
                .iter()
                .map(|v| match v.key.as_slice() {
                    [Value::Int(k)] => (v.kind, *k),
                    other => panic!("key {other:?}"),
                })
                .collect();
            assert_eq!(
                found, stream,
                "{context}, {mode:?} hinted: {:?}",
                stats.compared
            );
            assert_eq!(
                (stats.rows_left, stats.rows_right, stats.null_keys),
                (streamed.rows_left, streamed.rows_right, streamed.null_keys),
                "{context}, {mode:?} hinted"
            );
            if outage && is_every && mode == ReconcileMode::Checksum {
                let c = stats.compared.as_ref().unwrap();
                assert_eq!(c.segments_streamed, runs, "{context}, hinted: {c:?}");
            }
        }
    }
    srcs.close().await;
}

/// The same random rows in PostgreSQL and MariaDB (written in each engine's own types:
/// `numeric`/`DECIMAL`, `timestamptz`/`DATETIME(6)`, `boolean`/`BOOLEAN`), texts with the
/// separators of the canonical form in them, then random differences on either side: every
/// mode finds what a plain stream finds, and checksums agree on the rows left equal.
#[tokio::test]
async fn random_tables_across_postgres_and_mariadb_give_the_same_violations_in_every_mode() {
    use crate::helpers::TestMysql;
    let (pg, my) = (TestPg::new().await, TestMysql::new().await);
    let srcs = sources(&[("pg", &pg.reader_url), ("my", &my.reader_url)]).await;
    let texts = ["", "a|b", "~", "3:abc", "ü ✓", "x y", "N", "0"];
    for seed in 0..6u64 {
        let mut rng = StdRng::seed_from_u64(1000 + seed);
        let rows: i64 = rng.random_range(500..15_000);
        let stride: i64 = rng.random_range(1..5);
        let offset: i64 = rng.random_range(-1_000_000..1_000_000);
        let mut values = Vec::new();
        for i in 1..=rows {
            let amount = format!(
                "{}{}.{:03}",
                if rng.random_bool(0.2) { "-" } else { "" },
                rng.random_range(0..100_000),
                rng.random_range(0..1000) / if rng.random_bool(0.5) { 10 } else { 1 }
            );
            let label = if rng.random_bool(0.1) {
                "NULL".to_owned()
            } else {
                format!("'{}{}'", texts[rng.random_range(0..texts.len())], i % 97)
            };
            let at = format!(
                "'2026-{:02}-{:02} {:02}:{:02}:{:02}.{:06}'",
                rng.random_range(1..13),
                rng.random_range(1..29),
                rng.random_range(0..24),
                rng.random_range(0..60),
                rng.random_range(0..60),
                if rng.random_bool(0.3) {
                    0
                } else {
                    rng.random_range(0..1_000_000)
                }
            );
            let flag = if rng.random_bool(0.5) {
                "TRUE"
            } else {
                "FALSE"
            };
            values.push(format!(
                "({}, {amount}, {label}, {at}, {flag})",
                offset + i * stride
            ));
        }
        let mut pg_sql = String::from(
            "DROP TABLE IF EXISTS l; CREATE TABLE l (id bigint, amount numeric(14,3), label text, at timestamptz, flag boolean);",
        );
        let mut my_sql = String::from(
            "DROP TABLE IF EXISTS r; CREATE TABLE r (id BIGINT NULL, amount DECIMAL(16,4), label VARCHAR(64), at DATETIME(6), flag BOOLEAN, KEY (id));",
        );
        for chunk in values.chunks(2000) {
            pg_sql.push_str(&format!("INSERT INTO l VALUES {};", chunk.join(",")));
            my_sql.push_str(&format!("INSERT INTO r VALUES {};", chunk.join(",")));
        }
        pg_sql.push_str("CREATE INDEX ON l (id);");
        let changes = if rng.random_bool(0.3) {
            rng.random_range(100..600)
        } else {
            rng.random_range(0..20)
        };
        for _ in 0..changes {
            let k = offset + rng.random_range(1..=rows) * stride;
            match rng.random_range(0..8) {
                0 => my_sql.push_str(&format!("DELETE FROM r WHERE id = {k};")),
                1 => pg_sql.push_str(&format!("DELETE FROM l WHERE id = {k};")),
                2 => my_sql.push_str(&format!(
                    "UPDATE r SET amount = -amount - 0.001 WHERE id = {k};"
                )),
                3 => my_sql.push_str(&format!(
                    "UPDATE r SET label = CONCAT(label, '|') WHERE id = {k};"
                )),
                4 => my_sql.push_str(&format!(
                    "UPDATE r SET at = at + INTERVAL 1 MICROSECOND WHERE id = {k};"
                )),
                5 => my_sql.push_str(&format!("UPDATE r SET flag = NOT flag WHERE id = {k};")),
                6 => {
                    pg_sql.push_str(&format!("INSERT INTO l SELECT * FROM l WHERE id = {k};"));
                    my_sql.push_str(&format!(
                        "INSERT INTO r SELECT * FROM (SELECT * FROM r WHERE id = {k}) AS c;"
                    ));
                }
                _ => my_sql.push_str(&format!("UPDATE r SET id = NULL WHERE id = {k};")),
            }
        }
        pg.exec(&pg_sql).await;
        my.exec(&my_sql).await;

        let reconcile = |mode| {
            let mut inv = invariant("SELECT * FROM l", "SELECT * FROM r", mode);
            if let InvariantSpec::Reconcile(spec) = &mut inv.spec {
                spec.right.source = SourceName::parse("my").unwrap();
            }
            inv
        };
        let context = format!("seed {seed}, {rows} rows, {changes} changes");
        for (mode, stats) in every_mode_finds_what_a_stream_finds(reconcile, &srcs, &context).await
        {
            // With few differences, few rows are read: equal rows checksum alike.
            if mode == ReconcileMode::Checksum && changes < 20 {
                let c = stats.compared.unwrap();
                assert!(
                    c.rows_streamed <= (changes as u64 + 1) * 2 * 600,
                    "{context}: {c:?}"
                );
            }
        }
    }
    srcs.close().await;
}

/// A SQLite side is summarised by trueup itself from its rows, in the canonical text the
/// other engine writes: random rows in a SQLite file and in PostgreSQL, random differences on
/// either side, and every mode finds what a plain stream finds.
#[tokio::test]
async fn random_tables_across_sqlite_and_postgres_give_the_same_violations_in_every_mode() {
    use crate::helpers::{sqlite_file, sqlite_url};
    let pg = TestPg::new().await;
    let tmp = tempfile::tempdir().unwrap();
    for seed in 0..4u64 {
        let mut rng = StdRng::seed_from_u64(2000 + seed);
        let file = tmp.path().join(format!("left{seed}.db"));
        let rows: i64 = rng.random_range(500..8_000);
        let offset: i64 = rng.random_range(-100_000..100_000);
        let texts = ["", "a|b", "~", "3:abc", "ü ✓"];
        let mut values = Vec::new();
        for i in 1..=rows {
            let label = if rng.random_bool(0.1) {
                "NULL".to_owned()
            } else {
                format!("'{}{}'", texts[rng.random_range(0..texts.len())], i % 13)
            };
            values.push(format!(
                "({}, {}, {label}, '2026-03-{:02} {:02}:{:02}:{:02}.{:06}', {})",
                offset + i * 2,
                rng.random_range(-100_000..100_000),
                rng.random_range(1..29),
                rng.random_range(0..24),
                rng.random_range(0..60),
                rng.random_range(0..60),
                rng.random_range(0..1_000_000),
                if rng.random_bool(0.5) {
                    "TRUE"
                } else {
                    "FALSE"
                },
            ));
        }
        let mut lite = String::from(
            "CREATE TABLE l (id INTEGER, amount INTEGER, label TEXT, at DATETIME, flag BOOLEAN);",
        );
        let mut pg_sql = String::from(
            "DROP TABLE IF EXISTS r; CREATE TABLE r (id bigint, amount bigint, label text, at timestamptz, flag boolean);",
        );
        for chunk in values.chunks(1000) {
            lite.push_str(&format!("INSERT INTO l VALUES {};", chunk.join(",")));
            pg_sql.push_str(&format!("INSERT INTO r VALUES {};", chunk.join(",")));
        }
        pg_sql.push_str("CREATE INDEX ON r (id);");
        let changes = rng.random_range(0..25);
        for _ in 0..changes {
            let k = offset + rng.random_range(1..=rows) * 2;
            match rng.random_range(0..6) {
                0 => lite.push_str(&format!("DELETE FROM l WHERE id = {k};")),
                1 => pg_sql.push_str(&format!("DELETE FROM r WHERE id = {k};")),
                2 => pg_sql.push_str(&format!(
                    "UPDATE r SET amount = -amount - 1 WHERE id = {k};"
                )),
                3 => pg_sql.push_str(&format!(
                    "UPDATE r SET at = at + interval '1 microsecond' WHERE id = {k};"
                )),
                4 => pg_sql.push_str(&format!("INSERT INTO r SELECT * FROM r WHERE id = {k};")),
                _ => lite.push_str(&format!("UPDATE l SET id = NULL WHERE id = {k};")),
            }
        }
        sqlite_file(&file, &lite).await;
        pg.exec(&pg_sql).await;
        let srcs = sources(&[("lite", &sqlite_url(&file)), ("pg", &pg.reader_url)]).await;
        let reconcile = |mode| {
            let mut inv = invariant("SELECT * FROM l", "SELECT * FROM r", mode);
            if let InvariantSpec::Reconcile(spec) = &mut inv.spec {
                spec.left.source = SourceName::parse("lite").unwrap();
            }
            inv
        };
        let context = format!("seed {seed}, {rows} rows, {changes} changes");
        for (mode, stats) in every_mode_finds_what_a_stream_finds(reconcile, &srcs, &context).await
        {
            if mode == ReconcileMode::Checksum {
                let c = stats.compared.unwrap();
                assert_eq!(c.method, CompareMethod::Checksum, "{context}: {c:?}");
                assert!(
                    c.rows_streamed <= (changes as u64 + 1) * 2 * 300,
                    "{context}: {c:?}"
                );
            }
        }
        srcs.close().await;
    }
}
