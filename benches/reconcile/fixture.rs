//! The benchmark's tables: one left table and, per case, a right table with planted
//! differences whose exact counts the case knows. The same rows are generated in PostgreSQL
//! and MariaDB by the same formulas, so every tool and every engine sees the same data.

use sqlx::{Connection, Executor};

/// What a case plants on the right side, relative to the left table `l` (ids 1..=N).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// 0.1 % of the left rows missing, 0.05 % mismatched, 0.02 % extra, spread uniformly.
    Uniform,
    /// The same rows on both sides.
    Identical,
    /// 10,000 consecutive keys missing in the middle (an outage), nothing else.
    Outage,
}

pub const OUTAGE_KEYS: u64 = 10_000;

impl Case {
    pub fn label(self) -> &'static str {
        match self {
            Case::Uniform => "uniform",
            Case::Identical => "identical",
            Case::Outage => "outage",
        }
    }

    pub fn table(self) -> String {
        format!("r_{}", self.label())
    }

    /// The violations a correct reconcile reports: (missing, mismatch, extra).
    pub fn expected(self, n: u64) -> (u64, u64, u64) {
        match self {
            Case::Uniform => (n / 1000, n / 2000, n / 5000),
            Case::Identical => (0, 0, 0),
            Case::Outage => (OUTAGE_KEYS, 0, 0),
        }
    }

    /// The right table's rows as a SELECT over the left table `l` (both engines).
    fn right_rows(self, n: u64) -> String {
        let lo = n / 2;
        let hi = lo + OUTAGE_KEYS;
        match self {
            Case::Uniform => {
                "SELECT id, amount + CASE WHEN id % 2000 = 2 THEN 0.01 ELSE 0 END, currency \
                 FROM l WHERE id % 1000 <> 1"
                    .to_owned()
            }
            Case::Identical => "SELECT id, amount, currency FROM l".to_owned(),
            Case::Outage => {
                format!("SELECT id, amount, currency FROM l WHERE id < {lo} OR id >= {hi}")
            }
        }
    }

    /// Rows only the right side has (uniform: 0.02 % past the left's last id).
    fn extra_rows(self, n: u64) -> Option<(u64, u64)> {
        (self == Case::Uniform).then_some((n + 1, n + n / 5000))
    }
}

pub const CASES: [Case; 3] = [Case::Uniform, Case::Identical, Case::Outage];

/// The incremental case: `li` and `ri`, the same rows as `l` with a change column
/// (`changed_at`, indexed, a second apart, long ago). Each round then changes this many rows:
/// as many keys on both sides (a change the downstream took), spread over the key range,
/// a second apart, a day after the last round's; on 1 key in 100 the right row is touched but
/// keeps its old amount ([`INCREMENTAL_MISMATCHES`] mismatches a round).
pub const INCREMENTAL_CHANGED: u64 = 10_000;
pub const INCREMENTAL_MISMATCHES: u64 = INCREMENTAL_CHANGED / 2 / 100;

/// The keys round `round` of the incremental case changes (on both sides).
pub fn incremental_keys(n: u64, round: u64) -> Vec<u64> {
    let keys = INCREMENTAL_CHANGED / 2;
    let spacing = n / keys;
    (0..keys).map(|k| 1 + round * 7 + k * spacing).collect()
}

/// A database created for one size, dropped when the benchmark is done with it.
pub struct Fixture {
    pub pg_url: String,
    pub maria_url: Option<String>,
    pg_server: String,
    maria_server: Option<String>,
    db: String,
}

impl Fixture {
    /// Creates `l` and every case's right table in PostgreSQL, and, given a MariaDB server,
    /// `l` and the uniform case's right table there.
    pub async fn create(
        pg_server: &str,
        maria_server: Option<&str>,
        n: u64,
    ) -> anyhow::Result<Self> {
        let db = format!("trueup_bench_{n}_{}", std::process::id());
        let fixture = Fixture {
            pg_url: format!("{pg_server}/{db}"),
            maria_url: maria_server.map(|s| format!("{s}/{db}")),
            pg_server: pg_server.to_owned(),
            maria_server: maria_server.map(str::to_owned),
            db,
        };
        let mut admin = sqlx::PgConnection::connect(&format!("{pg_server}/postgres")).await?;
        admin
            .execute(format!("CREATE DATABASE {}", fixture.db).as_str())
            .await?;
        admin.close().await?;
        let mut c = sqlx::PgConnection::connect(&fixture.pg_url).await?;
        let table = |name: &str| {
            format!(
                "CREATE UNLOGGED TABLE {name} (id bigint PRIMARY KEY, amount numeric(12,2) NOT NULL, currency text NOT NULL)"
            )
        };
        c.execute(table("l").as_str()).await?;
        c.execute(
            format!(
                "INSERT INTO l SELECT i, (i % 100000) / 100.0, CASE WHEN i % 3 = 0 THEN 'EUR' ELSE 'USD' END \
                 FROM generate_series(1, {n}) i"
            )
            .as_str(),
        )
        .await?;
        for case in CASES {
            let t = case.table();
            c.execute(table(&t).as_str()).await?;
            c.execute(format!("INSERT INTO {t} {}", case.right_rows(n)).as_str())
                .await?;
            if let Some((from, to)) = case.extra_rows(n) {
                c.execute(
                    format!(
                        "INSERT INTO {t} SELECT i, (i % 100000) / 100.0, 'USD' FROM generate_series({from}, {to}) i"
                    )
                    .as_str(),
                )
                .await?;
            }
        }
        for t in ["li", "ri"] {
            c.execute(
                format!(
                    "CREATE UNLOGGED TABLE {t} (id bigint PRIMARY KEY, amount numeric(12,2) NOT NULL, currency text NOT NULL, changed_at timestamptz NOT NULL)"
                )
                .as_str(),
            )
            .await?;
            c.execute(
                format!(
                    "INSERT INTO {t} SELECT id, amount, currency, timestamptz '2020-01-01 00:00:00+00' + id * interval '1 second' FROM l"
                )
                .as_str(),
            )
            .await?;
            c.execute(format!("CREATE INDEX ON {t} (changed_at)").as_str())
                .await?;
        }
        // VACUUM refuses to run inside the implicit transaction of a multi-statement string.
        for t in ["l", "li", "ri"]
            .map(str::to_owned)
            .into_iter()
            .chain(CASES.map(Case::table))
        {
            c.execute(format!("VACUUM ANALYZE {t}").as_str()).await?;
        }
        c.close().await?;

        if let Some(server) = maria_server {
            let mut m = sqlx::MySqlConnection::connect(server).await?;
            m.execute(format!("CREATE DATABASE {}", fixture.db).as_str())
                .await?;
            m.execute(format!("USE {}", fixture.db).as_str()).await?;
            let table = |name: &str| {
                format!(
                    "CREATE TABLE {name} (id BIGINT PRIMARY KEY, amount DECIMAL(12,2) NOT NULL, currency VARCHAR(3) NOT NULL) ENGINE=InnoDB"
                )
            };
            let uniform = Case::Uniform;
            m.execute(table("l").as_str()).await?;
            // MariaDB's Sequence engine generates the ids (`seq_1_to_N`), in the same formulas.
            m.execute(
                format!(
                    "INSERT INTO l SELECT seq, (seq % 100000) / 100.0, CASE WHEN seq % 3 = 0 THEN 'EUR' ELSE 'USD' END \
                     FROM seq_1_to_{n}"
                )
                .as_str(),
            )
            .await?;
            m.execute(table(&uniform.table()).as_str()).await?;
            m.execute(
                format!("INSERT INTO {} {}", uniform.table(), uniform.right_rows(n)).as_str(),
            )
            .await?;
            if let Some((from, to)) = uniform.extra_rows(n) {
                m.execute(
                    format!(
                        "INSERT INTO {} SELECT seq, (seq % 100000) / 100.0, 'USD' FROM seq_{from}_to_{to}",
                        uniform.table()
                    )
                    .as_str(),
                )
                .await?;
            }
            m.execute(format!("ANALYZE TABLE l, {}", uniform.table()).as_str())
                .await?;
            m.close().await?;
        }
        Ok(fixture)
    }

    /// Round `round` of the incremental case: its keys' amounts moved by one on both sides
    /// (but for the `k % 100 = 50`th key's right row, touched without it), the change column
    /// set a second apart from the round's day (2027-01-01 + `round` days).
    pub async fn change(&self, n: u64, round: u64) -> anyhow::Result<()> {
        let list: Vec<String> = incremental_keys(n, round)
            .iter()
            .map(u64::to_string)
            .collect();
        let mut c = sqlx::PgConnection::connect(&self.pg_url).await?;
        for (table, parity, amount) in [
            ("li", 0, "amount + 1"),
            (
                "ri",
                1,
                "CASE WHEN c.k % 100 = 50 THEN amount ELSE amount + 1 END",
            ),
        ] {
            c.execute(
                format!(
                    "UPDATE {table} SET amount = {amount}, \
                       changed_at = timestamptz '2027-01-01 00:00:00+00' + {round} * interval '1 day' \
                                    + (2 * c.k + {parity}) * interval '1 second' \
                     FROM unnest(ARRAY[{}]::bigint[]) WITH ORDINALITY AS c(id, k) \
                     WHERE {table}.id = c.id",
                    list.join(",")
                )
                .as_str(),
            )
            .await?;
        }
        c.close().await?;
        Ok(())
    }

    pub async fn drop_all(self) -> anyhow::Result<()> {
        let mut admin =
            sqlx::PgConnection::connect(&format!("{}/postgres", self.pg_server)).await?;
        admin
            .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db).as_str())
            .await?;
        if let Some(server) = &self.maria_server {
            let mut m = sqlx::MySqlConnection::connect(server).await?;
            m.execute(format!("DROP DATABASE IF EXISTS {}", self.db).as_str())
                .await?;
        }
        Ok(())
    }
}
