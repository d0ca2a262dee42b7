//! The floor: both sides read in key order as cheaply as each engine sends them, and thrown
//! away. PostgreSQL by `COPY (...) TO STDOUT (FORMAT binary)`, MariaDB by its text protocol
//! through the synchronous `mysql` client (it has no COPY). A reconcile cannot be faster than
//! reading its two sides.

use std::time::Instant;

use futures_util::TryStreamExt;
use sqlx::Connection;

/// Where one side of a case is read from.
pub enum Side {
    Postgres { url: String, table: String },
    MariaDb { url: String, table: String },
}

impl Side {
    fn query(table: &str) -> String {
        format!("SELECT id, amount, currency FROM {table} ORDER BY id")
    }

    /// Reads the side whole; returns the rows it sent.
    async fn drain(&self) -> anyhow::Result<u64> {
        match self {
            Side::Postgres { url, table } => {
                let mut c = sqlx::PgConnection::connect(url).await?;
                let rows = {
                    let mut copy = c
                        .copy_out_raw(&format!(
                            "COPY ({}) TO STDOUT (FORMAT binary)",
                            Side::query(table)
                        ))
                        .await?;
                    // One CopyData message per row; the header rides on the first and the
                    // trailer comes alone.
                    let mut messages = 0u64;
                    while copy.try_next().await?.is_some() {
                        messages += 1;
                    }
                    messages.saturating_sub(1)
                };
                c.close().await?;
                Ok(rows)
            }
            Side::MariaDb { url, table } => {
                // The synchronous `mysql` client, the cheapest receive of the Rust clients
                // measured (docs/scale.md), on a thread of its own as trueup's bulk read.
                let (url, query) = (url.clone(), Side::query(table));
                tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
                    use mysql::prelude::Queryable;
                    let opts = mysql::OptsBuilder::from_opts(mysql::Opts::from_url(&url)?)
                        .prefer_socket(false);
                    let mut c = mysql::Conn::new(opts)?;
                    let mut rows = 0u64;
                    for row in c.query_iter(query)? {
                        row?;
                        rows += 1;
                    }
                    Ok(rows)
                })
                .await?
            }
        }
    }
}

/// Both sides read at once, as a reconcile reads them; seconds and rows read.
pub async fn floor(left: &Side, right: &Side) -> anyhow::Result<(f64, u64)> {
    let t = Instant::now();
    let (l, r) = tokio::try_join!(left.drain(), right.drain())?;
    Ok((t.elapsed().as_secs_f64(), l + r))
}
