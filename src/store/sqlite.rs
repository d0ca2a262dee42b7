use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::config::SecretUrl;

use super::StoreError;

/// The embedded default: one file, WAL journal, nothing to install.
pub struct SqliteStore {
    pub(super) pool: SqlitePool,
}

impl SqliteStore {
    pub async fn open(url: &SecretUrl) -> Result<Self, StoreError> {
        let open_err = |e: sqlx::Error| StoreError::Open {
            url: url.redacted(),
            message: e.to_string(),
        };
        let opts = SqliteConnectOptions::from_str(url.expose())
            .map_err(open_err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk when it returns. Feeds acknowledge (NATS, Redis) and
            // webhooks answer 201 right after theirs; under NORMAL an OS crash or power loss
            // could roll back events their senders were told were stored (PostgreSQL's
            // default, synchronous_commit on, already waits).
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(open_err)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migrate {
                url: url.redacted(),
                message: e.to_string(),
            })?;
        Ok(Self { pool })
    }
}

super::sessions::impl_session_store!(SqliteStore, "BEGIN IMMEDIATE");

super::incidents::impl_incident_store!(SqliteStore, sqlx::Sqlite, "BEGIN IMMEDIATE");

// SQLite's one writer (`BEGIN IMMEDIATE`) orders claims and a pause: no lock to take.
super::actions::impl_action_store!(SqliteStore, sqlx::Sqlite, "BEGIN IMMEDIATE", "", "", "");

super::plans::impl_plan_store!(SqliteStore, sqlx::Sqlite, "BEGIN IMMEDIATE", "", "");

super::ledger::impl_store!(
    SqliteStore,
    sqlx::Sqlite,
    "sqlite",
    "BEGIN IMMEDIATE",
    "",
    false
);

super::replicas::impl_replica_store!(
    SqliteStore,
    sqlx::Sqlite,
    "sqlite",
    "BEGIN IMMEDIATE",
    "",
    false
);

super::notices::impl_notice_store!(SqliteStore, sqlx::Sqlite, "BEGIN IMMEDIATE");

super::alerts::impl_alert_store!(
    SqliteStore,
    sqlx::Sqlite,
    "sqlite",
    "BEGIN IMMEDIATE",
    "",
    false
);

super::segments::impl_segment_store!(
    SqliteStore,
    sqlx::Sqlite,
    "sqlite",
    "BEGIN IMMEDIATE",
    "",
    false
);

super::logs::impl_event_log_store!(SqliteStore, sqlx::Sqlite, "BEGIN IMMEDIATE", false);
super::logs::impl_log_reader!(SqliteStore);
super::outcomes::impl_outcome_store!(SqliteStore, sqlx::Sqlite, "BEGIN IMMEDIATE");
super::trace::impl_trace_store!(SqliteStore);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_commit_is_on_disk_when_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let url = SecretUrl::new(format!(
            "sqlite://{}",
            dir.path().join("trueup.db").display()
        ));
        let store = SqliteStore::open(&url).await.unwrap();
        // Every pooled connection: synchronous is set per connection.
        for _ in 0..4 {
            let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&store.pool)
                .await
                .unwrap();
            assert_eq!(level, 2, "FULL");
        }
        store.pool.close().await;
    }
}
