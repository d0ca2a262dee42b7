//! The PostgreSQL store keeps each event log's days apart: `log_events` is partitioned by
//! (log, ingested_at), one partition per log and UTC day, so that retention drops a day
//! whole instead of deleting its rows one by one (migration 0018). `trueup serve` makes
//! today's and tomorrow's partitions ready before the feeds start and then once a minute;
//! an event whose day has no partition yet goes to the default partition, and a day with
//! events there already gets none (PostgreSQL refuses a partition for rows the default
//! holds): its rows are purged one by one, as SQLite's always are.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use sha2::{Digest, Sha256};

use super::{PgStore, SqliteStore, StoreError};

#[async_trait]
pub trait LogDays: Send + Sync {
    /// Makes ready where `log`'s events of today and tomorrow (UTC, from `now`) will be
    /// kept; how many days it made ready.
    async fn prepare_log_days(&self, log: &str, now: DateTime<Utc>) -> Result<u32, StoreError>;

    /// Drops each whole day of `log` that ended by `before` and holds no event that
    /// happened at or after `before`, with its events' ids, duplicate deliveries and
    /// outcomes; how many events went.
    async fn drop_log_days(&self, log: &str, before: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// SQLite keeps a log in one table; retention deletes its rows in batches.
#[async_trait]
impl LogDays for SqliteStore {
    async fn prepare_log_days(&self, _: &str, _: DateTime<Utc>) -> Result<u32, StoreError> {
        Ok(0)
    }

    async fn drop_log_days(&self, _: &str, _: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(0)
    }
}

/// How long making or dropping a partition waits for its lock on `log_events` (ingest and
/// reads hold it briefly) before it gives up until the next round.
const LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '5s'";
/// One replica at a time makes or drops partitions.
const ONE_AT_A_TIME: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended('trueup.log_partitions', 0))";

/// A partition's name: the log by a digest (any log name fits, and two never meet), the day.
fn partition_name(log: &str, day: NaiveDate) -> String {
    let digest = hex::encode(&Sha256::digest(log.as_bytes())[..8]);
    format!("log_events_{digest}_{}", day.format("%Y%m%d"))
}

/// `text` as an SQL string literal (partition bounds cannot be bound parameters).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn day_start(day: NaiveDate) -> DateTime<Utc> {
    day.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc()
}

/// Whether `e` is PostgreSQL giving up on a lock (`lock_timeout`): the work waits for the
/// next round.
fn lock_timed_out(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

/// Whether `log` has events of `day` in the default partition (then the day gets no
/// partition: PostgreSQL refuses one for rows the default holds).
async fn in_default(
    conn: &mut sqlx::PgConnection,
    log: &str,
    day: NaiveDate,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM log_events_default \
         WHERE log = $1 AND ingested_at >= $2 AND ingested_at < $3)",
    )
    .bind(log)
    .bind(day_start(day))
    .bind(day_start(day + TimeDelta::days(1)))
    .fetch_one(conn)
    .await
}

/// Holds `log_events` for making or dropping a partition: one replica at a time, and the
/// table exclusively before anything else (a partition needs that lock; taken first, no
/// ingest or purge holding a weaker one waits on us while we wait on it, and none adds a
/// delivery, an outcome or an id of a day being dropped). Gives up after `LOCK_TIMEOUT`.
async fn hold_log_events(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(LOCK_TIMEOUT).execute(&mut *conn).await?;
    sqlx::query(ONE_AT_A_TIME).execute(&mut *conn).await?;
    sqlx::query("LOCK TABLE log_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Whether `log`'s `day` has its partition.
async fn registered(
    conn: &mut sqlx::PgConnection,
    log: &str,
    day: NaiveDate,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM log_partitions WHERE log = $1 AND day = $2)")
        .bind(log)
        .bind(day)
        .fetch_one(conn)
        .await
}

impl PgStore {
    /// Makes `days` of `log` ready in one transaction, holding `log_events` for the moment
    /// it takes.
    async fn make_days(&self, log: &str, days: &[NaiveDate]) -> Result<u32, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        hold_log_events(&mut tx).await?;
        let mut count = 0;
        for &day in days {
            // Another replica may have made it, or an event may have come meanwhile.
            if registered(&mut tx, log, day).await? || in_default(&mut tx, log, day).await? {
                continue;
            }
            let name = partition_name(log, day);
            sqlx::query(&format!(
                "CREATE TABLE {name} PARTITION OF log_events FOR VALUES FROM ({l}, {f}) TO ({l}, {t})",
                l = literal(log),
                f = literal(&day_start(day).to_rfc3339()),
                t = literal(&day_start(day + TimeDelta::days(1)).to_rfc3339()),
            ))
            .execute(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO log_partitions (log, day, name) VALUES ($1, $2, $3)")
                .bind(log)
                .bind(day)
                .bind(&name)
                .execute(&mut *tx)
                .await?;
            count += 1;
        }
        tx.commit().await?;
        Ok(count)
    }

    /// Drops the day of `log` kept in partition `name`, unless an event in it happened at or
    /// after `before`; how many events went (`None`: kept).
    async fn drop_day(
        &self,
        log: &str,
        day: NaiveDate,
        name: &str,
        before: DateTime<Utc>,
    ) -> Result<Option<u64>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        hold_log_events(&mut tx).await?;
        // Another replica may have dropped it meanwhile.
        if !registered(&mut tx, log, day).await? {
            return Ok(None);
        }
        // An event of the day that happened at or after `before` may still be needed: the
        // day stays, and the row purge takes the rest of it.
        let needed: bool = sqlx::query_scalar(&format!(
            "SELECT EXISTS (SELECT 1 FROM {name} WHERE event_at >= $1)"
        ))
        .bind(before)
        .fetch_one(&mut *tx)
        .await?;
        if needed {
            return Ok(None);
        }
        let events: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {name}"))
            .fetch_one(&mut *tx)
            .await?;
        for table in ["log_duplicates", "log_outcomes", "log_event_ids"] {
            sqlx::query(&format!(
                "DELETE FROM {table} t USING {name} e WHERE t.log = $1 AND t.event_id = e.event_id"
            ))
            .bind(log)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(&format!("DROP TABLE {name}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM log_partitions WHERE log = $1 AND day = $2")
            .bind(log)
            .bind(day)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(events as u64))
    }
}

#[async_trait]
impl LogDays for PgStore {
    async fn prepare_log_days(&self, log: &str, now: DateTime<Utc>) -> Result<u32, StoreError> {
        let today = now.date_naive();
        let wanted = [today, today + TimeDelta::days(1)];
        let made: Vec<NaiveDate> =
            sqlx::query_scalar("SELECT day FROM log_partitions WHERE log = $1 AND day = ANY($2)")
                .bind(log)
                .bind(&wanted[..])
                .fetch_all(&self.pool)
                .await?;
        // A day whose events are in the default partition already is left there, without
        // taking any lock (this runs every minute).
        let mut missing = Vec::new();
        for day in wanted.into_iter().filter(|d| !made.contains(d)) {
            let mut conn = self.pool.acquire().await?;
            if !in_default(&mut conn, log, day).await? {
                missing.push(day);
            }
        }
        if missing.is_empty() {
            return Ok(0);
        }
        match self.make_days(log, &missing).await {
            Ok(n) => Ok(n),
            Err(e) if lock_timed_out(&e) => {
                tracing::info!(log, "the log's next days wait for the next round: {e}");
                Ok(0)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn drop_log_days(&self, log: &str, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let days: Vec<(NaiveDate, String)> =
            sqlx::query_as("SELECT day, name FROM log_partitions WHERE log = $1 ORDER BY day")
                .bind(log)
                .fetch_all(&self.pool)
                .await?;
        let mut dropped = 0;
        for (day, name) in days {
            if day_start(day + TimeDelta::days(1)) > before {
                break;
            }
            match self.drop_day(log, day, &name, before).await {
                Ok(Some(n)) => dropped += n,
                Ok(None) => {}
                // Busy now: the day goes in a later round, the row purge goes on.
                Err(e) if lock_timed_out(&e) => {
                    tracing::info!(log, %day, "the day waits for the next round: {e}");
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_name_fits_any_log_name_and_says_its_day() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 5).unwrap();
        let long = "o".repeat(200);
        let name = partition_name(&long, day);
        assert!(name.len() <= 63, "{name}");
        assert!(name.starts_with("log_events_") && name.ends_with("_20261205"));
        assert_ne!(
            partition_name("orders", day),
            partition_name("orders2", day)
        );
        assert_eq!(literal("it's"), "'it''s'");
    }
}
